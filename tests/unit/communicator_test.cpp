// Communicators: single_rank_communicator and thread_communicator. Collectives are checked
// bitwise against plain references (sums in rank order 0..n-1, 16-bit floats summed in float and
// rounded once), in-place forms, count 0, traffic counters, reproducibility under random thread
// timing, and the failure modes (timeouts, mismatches, ranks that leave, usage errors). The
// rooted reduce is checked against the root's slice of a reduce_scatter of the same data, and
// its non-blocking form (with ibroadcast) against the blocking bits.

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "zero/communicator.hpp"
#include "zero/error.hpp"
#include "zero/thread_communicator.hpp"
#include "zero/types.hpp"

namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;
using zero::bf16;
using zero::collective;
using zero::fp16;
using zero::reduce_op;

const int world_sizes[] = {1, 2, 3, 4, 5, 8};

std::uint64_t mix(std::uint64_t z) {  // splitmix64 finalizer: deterministic, portable
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
std::uint64_t hash(std::uint64_t a, std::uint64_t b, std::uint64_t c, std::uint64_t d = 0) {
  return mix(mix(mix(mix(a) ^ b) ^ c) ^ d);
}

template <class T>
constexpr bool is_half = std::is_same_v<T, bf16> || std::is_same_v<T, fp16>;
template <class T>
constexpr bool is_float_like = is_half<T> || std::is_floating_point_v<T>;
template <class T>
using wide_t = std::conditional_t<is_half<T>, float, T>;

template <class T>
wide_t<T> widen(T v) {
  if constexpr (is_half<T>) return static_cast<float>(v);
  else return v;
}
template <class T>
T narrow(wide_t<T> v) {
  if constexpr (is_half<T>) return T(v);
  else return v;
}

//! Values of mixed magnitudes and signs, so that the order of a sum shows in its bits.
template <class T>
T make_value(std::uint64_t h) {
  if constexpr (std::is_same_v<T, std::uint64_t>) {
    return h;
  } else {
    const double sign = (h & 1u) ? -1.0 : 1.0;
    const int max_exp = std::is_same_v<T, fp16> ? 6 : 8;
    const int e = static_cast<int>((h >> 1) % static_cast<std::uint64_t>(max_exp + 9)) - 8;
    const double mantissa = 1.0 + static_cast<double>(h >> 12) / 4503599627370496.0;  // 52 bits
    const double v = sign * std::ldexp(mantissa, e);
    if constexpr (std::is_same_v<T, double>) return v;
    else if constexpr (std::is_same_v<T, float>) return static_cast<float>(v);
    else return T(static_cast<float>(v));
  }
}

template <class T>
T quiet_nan() {
  if constexpr (std::is_same_v<T, bf16>) return bf16::from_bits(0x7fc0u);
  else if constexpr (std::is_same_v<T, fp16>) return fp16::from_bits(0x7e00u);
  else return std::numeric_limits<T>::quiet_NaN();
}

template <class T>
bool is_nan(T v) {
  if constexpr (is_float_like<T>) {
    const auto w = widen(v);
    return w != w;
  } else {
    return false;
  }
}

template <class T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

//! Bitwise equal, except that any NaN matches any NaN.
template <class T>
bool same_value(const T& a, const T& b) {
  if (is_nan(a) || is_nan(b)) return is_nan(a) && is_nan(b);
  return same_bits(a, b);
}

//! The plain reference: op over ranks 0..n-1 of in[r][offset + i], in rank order, in the wide
//! type, rounded once.
template <class T>
T reference(const std::vector<std::vector<T>>& in, std::size_t index, reduce_op op) {
  wide_t<T> acc = widen(in[0][index]);
  for (std::size_t r = 1; r < in.size(); ++r) {
    const wide_t<T> v = widen(in[r][index]);
    if (op == reduce_op::sum) {
      acc = static_cast<wide_t<T>>(acc + v);
    } else {
      bool v_nan = false, acc_nan = false;
      if constexpr (is_float_like<T>) v_nan = v != v, acc_nan = acc != acc;
      if (v_nan) acc = v;
      else if (!acc_nan && v > acc) acc = v;
    }
  }
  return narrow<T>(acc);
}

//! Sleeps a deterministic pseudo-random 0..250 us, so ranks reach collectives in varying order.
void jitter(std::uint64_t seed, int rank, std::uint64_t call) {
  if (seed == 0) return;
  std::this_thread::sleep_for(std::chrono::microseconds(hash(seed, static_cast<std::uint64_t>(rank), call) % 250));
}

constexpr std::size_t count = 37;  // not a multiple of any world size > 1 used here

//! Every rank's inputs of one scenario.
template <class T>
struct inputs {
  int n;
  std::vector<std::vector<T>> rs, rs_max, ag, ar, ar_max, bc;

  explicit inputs(int world) : n(world) {
    const std::size_t un = static_cast<std::size_t>(world);
    for (int r = 0; r < world; ++r) {
      const auto ur = static_cast<std::uint64_t>(r);
      auto fill = [&](std::size_t size, std::uint64_t tag, bool nans) {
        std::vector<T> v(size);
        for (std::size_t i = 0; i < size; ++i) {
          v[i] = make_value<T>(hash(tag, ur, i));
          // NaN on one rank at every 5th element (the rank varies with the element)
          if (nans && i % 5 == 0 && static_cast<int>((i / 5) % un) == r) v[i] = quiet_nan<T>();
        }
        return v;
      };
      rs.push_back(fill(count * un, 1, false));
      rs_max.push_back(fill(count * un, 2, is_float_like<T>));
      ag.push_back(fill(count, 3, false));
      ar.push_back(fill(count, 4, false));
      ar_max.push_back(fill(count, 5, is_float_like<T>));
      bc.push_back(fill(count, 6, false));
    }
  }
};

//! Every rank's outputs of one scenario.
template <class T>
struct outputs {
  std::vector<T> rs, rs_max, ag, ar, ar_max, rs_inplace, ag_inplace, ar_inplace;
  std::vector<std::vector<T>> bc;  // per root
  std::vector<T> zero_count_sentinels;
  zero::traffic_counters traffic, expected_traffic;
  std::uint64_t sequence = 0;
};

//! The collectives one rank runs: every kind, every broadcast root, in-place forms and count 0.
template <class T, class Comm>
void rank_body(Comm& c, const inputs<T>& in, outputs<T>& out, std::uint64_t seed) {
  const int r = c.rank(), n = c.world_size();
  const std::size_t ur = static_cast<std::size_t>(r), un = static_cast<std::size_t>(n);
  std::uint64_t call = 0;
  zero::traffic_counters& expect = out.expected_traffic;
  const std::uint64_t sz = sizeof(T);

  out.rs.assign(count, T{});
  jitter(seed, r, call++);
  c.reduce_scatter(in.rs[ur].data(), out.rs.data(), count, reduce_op::sum);
  expect.add(collective::reduce_scatter, count * un * sz);

  out.rs_max.assign(count, T{});
  jitter(seed, r, call++);
  c.reduce_scatter(in.rs_max[ur].data(), out.rs_max.data(), count, reduce_op::max);
  expect.add(collective::reduce_scatter, count * un * sz);

  out.ag.assign(count * un, T{});
  jitter(seed, r, call++);
  c.all_gather(in.ag[ur].data(), out.ag.data(), count);
  expect.add(collective::all_gather, count * un * sz);

  out.ar.assign(count, T{});
  jitter(seed, r, call++);
  c.all_reduce(in.ar[ur].data(), out.ar.data(), count, reduce_op::sum);
  expect.add(collective::all_reduce, 2 * count * sz);

  out.ar_max.assign(count, T{});
  jitter(seed, r, call++);
  c.all_reduce(in.ar_max[ur].data(), out.ar_max.data(), count, reduce_op::max);
  expect.add(collective::all_reduce, 2 * count * sz);

  out.bc.assign(un, {});
  for (int root = 0; root < n; ++root) {
    out.bc[static_cast<std::size_t>(root)] = in.bc[ur];
    jitter(seed, r, call++);
    c.broadcast(out.bc[static_cast<std::size_t>(root)].data(), count, root);
    expect.add(collective::broadcast, count * sz);
  }

  jitter(seed, r, call++);
  c.barrier();
  expect.add(collective::barrier, 0);

  // in place: reduce_scatter with recv == send + rank * count
  std::vector<T> rs_buf = in.rs[ur];
  jitter(seed, r, call++);
  c.reduce_scatter(rs_buf.data(), rs_buf.data() + ur * count, count, reduce_op::sum);
  expect.add(collective::reduce_scatter, count * un * sz);
  out.rs_inplace.assign(rs_buf.begin() + static_cast<std::ptrdiff_t>(ur * count), rs_buf.begin() + static_cast<std::ptrdiff_t>((ur + 1) * count));

  // in place: all_gather with send == recv + rank * count
  out.ag_inplace.assign(count * un, T{});
  std::copy(in.ag[ur].begin(), in.ag[ur].end(), out.ag_inplace.begin() + static_cast<std::ptrdiff_t>(ur * count));
  jitter(seed, r, call++);
  c.all_gather(out.ag_inplace.data() + ur * count, out.ag_inplace.data(), count);
  expect.add(collective::all_gather, count * un * sz);

  // in place: all_reduce with send == recv
  out.ar_inplace = in.ar[ur];
  jitter(seed, r, call++);
  c.all_reduce(out.ar_inplace.data(), out.ar_inplace.data(), count, reduce_op::sum);
  expect.add(collective::all_reduce, 2 * count * sz);

  // count 0: nothing is read or written
  out.zero_count_sentinels.assign(4, make_value<T>(hash(99, ur, 0)));
  const std::vector<T> send(2, make_value<T>(hash(98, ur, 0)));
  T* s = out.zero_count_sentinels.data();
  c.reduce_scatter(send.data(), s, 0, reduce_op::sum);
  c.all_gather(send.data(), s + 1, 0);
  c.all_reduce(send.data(), s + 2, 0, reduce_op::max);
  c.broadcast(s + 3, 0, n - 1);
  expect.add(collective::reduce_scatter, 0);
  expect.add(collective::all_gather, 0);
  expect.add(collective::all_reduce, 0);
  expect.add(collective::broadcast, 0);

  out.traffic = c.traffic();
  if constexpr (std::is_same_v<Comm, zero::thread_communicator>) out.sequence = c.sequence();
}

// 5 collectives, n broadcasts, a barrier, 3 in-place forms and 4 with count 0
std::size_t collectives_per_rank(int n) { return 13 + static_cast<std::size_t>(n); }

//! Checks every rank's outputs against the references; returns "" or the first failure.
template <class T>
std::string check_outputs(const inputs<T>& in, const std::vector<outputs<T>>& out, bool thread) {
  const int n = in.n;
  const std::size_t un = static_cast<std::size_t>(n);
  auto where = [](const char* what, int r, std::size_t i) {
    return std::string(what) + " rank " + std::to_string(r) + " element " + std::to_string(i);
  };
  for (int r = 0; r < n; ++r) {
    const std::size_t ur = static_cast<std::size_t>(r);
    const auto& o = out[ur];
    for (std::size_t i = 0; i < count; ++i) {
      const std::size_t at = ur * count + i;
      if (!same_bits(o.rs[i], reference(in.rs, at, reduce_op::sum))) return where("reduce_scatter sum", r, i);
      if (!same_value(o.rs_max[i], reference(in.rs_max, at, reduce_op::max))) return where("reduce_scatter max", r, i);
      if (!same_bits(o.ar[i], reference(in.ar, i, reduce_op::sum))) return where("all_reduce sum", r, i);
      if (!same_value(o.ar_max[i], reference(in.ar_max, i, reduce_op::max))) return where("all_reduce max", r, i);
      if (!same_bits(o.rs_inplace[i], reference(in.rs, at, reduce_op::sum))) return where("in-place reduce_scatter", r, i);
      if (!same_bits(o.ar_inplace[i], reference(in.ar, i, reduce_op::sum))) return where("in-place all_reduce", r, i);
      for (std::size_t q = 0; q < un; ++q) {
        if (!same_bits(o.ag[q * count + i], in.ag[q][i])) return where("all_gather", r, q * count + i);
        if (!same_bits(o.ag_inplace[q * count + i], in.ag[q][i])) return where("in-place all_gather", r, q * count + i);
        if (!same_bits(o.bc[q][i], in.bc[q][i])) return where(("broadcast from root " + std::to_string(q) + ":").c_str(), r, i);
      }
    }
    for (const T& s : o.zero_count_sentinels)
      if (!same_bits(s, make_value<T>(hash(99, ur, 0)))) return "a collective with count 0 wrote memory on rank " + std::to_string(r);
    for (std::size_t k = 0; k < zero::collective_kinds; ++k) {
      const auto kind = static_cast<collective>(k);
      if (o.traffic.bytes_of(kind) != o.expected_traffic.bytes_of(kind))
        return "rank " + std::to_string(r) + " counted " + std::to_string(o.traffic.bytes_of(kind)) + " bytes of " +
               std::string(zero::to_string(kind)) + ", expected " + std::to_string(o.expected_traffic.bytes_of(kind));
      if (o.traffic.calls_of(kind) != o.expected_traffic.calls_of(kind))
        return "rank " + std::to_string(r) + " counted " + std::to_string(o.traffic.calls_of(kind)) + " calls of " +
               std::string(zero::to_string(kind));
    }
    if (o.traffic.total_bytes() != o.expected_traffic.total_bytes()) return "total_bytes differs";
    if (thread && o.sequence != collectives_per_rank(n)) return "sequence() is " + std::to_string(o.sequence) + " on rank " + std::to_string(r);
  }
  return "";
}

template <class T>
std::vector<outputs<T>> run_threads(const inputs<T>& in, std::uint64_t seed) {
  std::vector<outputs<T>> out(static_cast<std::size_t>(in.n));
  zero::thread_group g(in.n, {20s});
  g.run([&](zero::thread_communicator& c) { rank_body<T>(c, in, out[static_cast<std::size_t>(c.rank())], seed); });
  return out;
}

template <class T>
bool outputs_identical(const std::vector<outputs<T>>& a, const std::vector<outputs<T>>& b) {
  auto same = [](const std::vector<T>& x, const std::vector<T>& y) {
    return x.size() == y.size() && (x.empty() || std::memcmp(x.data(), y.data(), x.size() * sizeof(T)) == 0);
  };
  for (std::size_t r = 0; r < a.size(); ++r) {
    const auto &x = a[r], &y = b[r];
    if (!same(x.rs, y.rs) || !same(x.rs_max, y.rs_max) || !same(x.ag, y.ag) || !same(x.ar, y.ar) || !same(x.ar_max, y.ar_max) ||
        !same(x.rs_inplace, y.rs_inplace) || !same(x.ag_inplace, y.ag_inplace) || !same(x.ar_inplace, y.ar_inplace))
      return false;
    for (std::size_t q = 0; q < x.bc.size(); ++q)
      if (!same(x.bc[q], y.bc[q])) return false;
  }
  return true;
}

template <class T>
void check_thread_collectives() {
  for (int n : world_sizes) {
    CAPTURE(n);
    CAPTURE(zero::type_name<T>());
    const inputs<T> in(n);
    const auto first = run_threads<T>(in, 1);   // one timing pattern
    const auto second = run_threads<T>(in, 2);  // another
    CHECK(check_outputs<T>(in, first, true) == "");
    CHECK(check_outputs<T>(in, second, true) == "");
    CHECK(outputs_identical<T>(first, second));
  }
}

template <class T>
void check_single_rank_collectives() {
  CAPTURE(zero::type_name<T>());
  const inputs<T> in(1);
  std::vector<outputs<T>> out(1);
  zero::single_rank_communicator c;
  CHECK(c.rank() == 0);
  CHECK(c.world_size() == 1);
  rank_body<T>(c, in, out[0], 0);
  CHECK(check_outputs<T>(in, out, false) == "");
}

//! A scenario for the failure tests: each rank's result as text, and how long it took.
struct rank_result {
  std::string error;  // "" when the rank returned normally
  std::string message;
  double seconds = 0;
};

template <class F>
std::vector<rank_result> run_recording(zero::thread_group& g, F&& body, std::string* run_error = nullptr) {
  std::vector<rank_result> results(static_cast<std::size_t>(g.world_size()));
  try {
    g.run([&](zero::thread_communicator& c) {
      auto& res = results[static_cast<std::size_t>(c.rank())];
      const auto start = clock_type::now();
      auto record = [&](const char* kind, const char* what) {
        res.error = kind;
        res.message = what;
        res.seconds = std::chrono::duration<double>(clock_type::now() - start).count();
      };
      try {
        body(c);
        res.seconds = std::chrono::duration<double>(clock_type::now() - start).count();
      } catch (const zero::timeout_error& e) {
        record("timeout_error", e.what());
        throw;
      } catch (const zero::mismatch_error& e) {
        record("mismatch_error", e.what());
        throw;
      } catch (const zero::communicator_error& e) {
        record("communicator_error", e.what());
        throw;
      } catch (const zero::usage_error& e) {
        record("usage_error", e.what());
        throw;
      } catch (const std::exception& e) {
        record("std::exception", e.what());
        throw;
      }
    });
    if (run_error) *run_error = "";
  } catch (const zero::timeout_error& e) {
    if (run_error) *run_error = std::string("timeout_error: ") + e.what();
  } catch (const zero::mismatch_error& e) {
    if (run_error) *run_error = std::string("mismatch_error: ") + e.what();
  } catch (const zero::communicator_error& e) {
    if (run_error) *run_error = std::string("communicator_error: ") + e.what();
  } catch (const zero::usage_error& e) {
    if (run_error) *run_error = std::string("usage_error: ") + e.what();
  } catch (const std::exception& e) {
    if (run_error) *run_error = std::string("std::exception: ") + e.what();
  }
  return results;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

//! Runs a body in which ranks disagree; checks every rank threw the same mismatch_error before
//! touching `recv` (filled with 7s); returns that message.
template <class F>
std::string mismatch_message(int n, F&& body) {
  zero::thread_group g(n, {10s});
  std::string run_error;
  const auto results = run_recording(g, body, &run_error);
  CHECK(starts_with(run_error, "mismatch_error: "));
  for (int r = 0; r < n; ++r) {
    CAPTURE(r);
    CHECK(results[static_cast<std::size_t>(r)].error == "mismatch_error");
    CHECK(results[static_cast<std::size_t>(r)].message == results[0].message);  // the same text on every rank
  }
  return results[0].message;
}

//! One rank's results of rooted reduces to every root, and what the same data gives through
//! reduce_scatter and all_reduce on the same group.
template <class T>
struct reduce_outputs {
  std::vector<std::vector<T>> sum, sum_inplace, max;  // per root; written on the root only
  std::vector<T> rs, ar, ar_max;  // this rank's reduce_scatter slice of the all-reduce inputs repeated n times; all_reduce sum and max
  T zero_count = T{};             // recv of a reduce with count 0
  zero::traffic_counters delta;   // what the reduces counted
};

template <class T>
T reduce_sentinel() {
  return make_value<T>(hash(97, 0, 0));
}

//! Reduces to every root on n thread ranks: sum, sum in place, max (NaN on one rank per
//! element). Odd ranks that are not the root pass a null recv; the others a buffer of sentinels.
template <class T>
std::vector<reduce_outputs<T>> run_thread_reduce(const inputs<T>& in) {
  const int n = in.n;
  const std::size_t un = static_cast<std::size_t>(n);
  std::vector<reduce_outputs<T>> out(un);
  zero::thread_group g(n, {20s});
  g.run([&](zero::thread_communicator& c) {
    const int r = c.rank();
    const std::size_t ur = static_cast<std::size_t>(r);
    auto& o = out[ur];
    std::vector<T> repeated;
    for (int q = 0; q < n; ++q) repeated.insert(repeated.end(), in.ar[ur].begin(), in.ar[ur].end());
    o.rs.assign(count, T{});
    o.ar.assign(count, T{});
    o.ar_max.assign(count, T{});
    c.reduce_scatter(repeated.data(), o.rs.data(), count, reduce_op::sum);
    c.all_reduce(in.ar[ur].data(), o.ar.data(), count, reduce_op::sum);
    c.all_reduce(in.ar_max[ur].data(), o.ar_max.data(), count, reduce_op::max);
    const auto before = c.traffic();
    o.sum.assign(un, std::vector<T>(count, reduce_sentinel<T>()));
    o.max.assign(un, std::vector<T>(count, reduce_sentinel<T>()));
    o.sum_inplace.assign(un, in.ar[ur]);
    for (int root = 0; root < n; ++root) {
      const std::size_t uq = static_cast<std::size_t>(root);
      const bool null_recv = r != root && r % 2 == 1;
      c.reduce(in.ar[ur].data(), null_recv ? static_cast<T*>(nullptr) : o.sum[uq].data(), count, reduce_op::sum, root);
      c.reduce(o.sum_inplace[uq].data(), o.sum_inplace[uq].data(), count, reduce_op::sum, root);
      c.reduce(in.ar_max[ur].data(), null_recv ? static_cast<T*>(nullptr) : o.max[uq].data(), count, reduce_op::max, root);
    }
    o.zero_count = reduce_sentinel<T>();
    c.reduce(in.ar[ur].data(), &o.zero_count, 0, reduce_op::sum, n - 1);
    o.delta = c.traffic() - before;
  });
  return out;
}

//! "" or the first result that is not the rank-order reduction on the root (bitwise the root's
//! reduce_scatter slice and all_reduce result), or that was written on another rank.
template <class T>
std::string check_reduce_outputs(const inputs<T>& in, const std::vector<reduce_outputs<T>>& out) {
  const int n = in.n;
  const std::size_t un = static_cast<std::size_t>(n);
  for (int r = 0; r < n; ++r) {
    const std::size_t ur = static_cast<std::size_t>(r);
    const auto& o = out[ur];
    for (int root = 0; root < n; ++root) {
      const std::size_t uq = static_cast<std::size_t>(root);
      const std::string at = " on rank " + std::to_string(r) + " with root " + std::to_string(root) + " element ";
      for (std::size_t i = 0; i < count; ++i) {
        const std::string where = at + std::to_string(i);
        if (r == root) {
          const T sum = reference(in.ar, i, reduce_op::sum), max = reference(in.ar_max, i, reduce_op::max);
          if (!same_bits(o.sum[uq][i], sum)) return "reduce sum" + where;
          if (!same_bits(o.sum[uq][i], o.rs[i]) || !same_bits(o.sum[uq][i], o.ar[i])) return "reduce sum differs from reduce_scatter" + where;
          if (!same_bits(o.sum_inplace[uq][i], sum)) return "in-place reduce" + where;
          if (!same_value(o.max[uq][i], max)) return "reduce max" + where;
          if (!same_bits(o.max[uq][i], o.ar_max[i])) return "reduce max differs from all_reduce" + where;
        } else {
          if (!same_bits(o.sum[uq][i], reduce_sentinel<T>())) return "reduce sum wrote" + where;
          if (!same_bits(o.sum_inplace[uq][i], in.ar[ur][i])) return "in-place reduce wrote" + where;
          if (!same_bits(o.max[uq][i], reduce_sentinel<T>())) return "reduce max wrote" + where;
        }
      }
    }
    if (!same_bits(o.zero_count, reduce_sentinel<T>())) return "a reduce with count 0 wrote memory on rank " + std::to_string(r);
    const std::uint64_t bytes = 3 * un * count * sizeof(T);
    if (o.delta.bytes_of(collective::reduce) != bytes || o.delta.calls_of(collective::reduce) != 3 * un + 1 ||
        o.delta.total_bytes() != bytes)
      return "rank " + std::to_string(r) + " counted " + std::to_string(o.delta.bytes_of(collective::reduce)) + " bytes in " +
             std::to_string(o.delta.calls_of(collective::reduce)) + " reduces (" + std::to_string(o.delta.total_bytes()) +
             " bytes in all), expected " + std::to_string(bytes) + " in " + std::to_string(3 * un + 1);
  }
  return "";
}

template <class T>
void check_thread_reduce() {
  for (int n : {1, 2, 3, 4, 5}) {
    CAPTURE(n);
    CAPTURE(zero::type_name<T>());
    const inputs<T> in(n);
    const auto out = run_thread_reduce<T>(in);
    CHECK(check_reduce_outputs<T>(in, out) == "");
    if constexpr (is_float_like<T>) CHECK(is_nan(out[0].max[0][0]));  // NaN on rank 0 alone propagates
  }
}

//! One rank's results of a mix of collectives with rooted ones among them.
template <class T>
struct mixed_outputs {
  std::vector<T> rs, red, ag, bc, ar, red_inplace, red_max, bc_last;
  zero::traffic_counters traffic;
  std::uint64_t sequence = 0;
  std::string trouble;  // "" unless a request misbehaved
};

//! reduce_scatter, reduce, all_gather, broadcast, all_reduce (blocking in the non-blocking run,
//! which runs what is queued before it), reduce in place, reduce max and broadcast, blocking or
//! started as requests and waited in reverse order.
template <class T>
void mixed_body(zero::thread_communicator& c, const inputs<T>& in, mixed_outputs<T>& o, bool nonblocking) {
  const int r = c.rank(), n = c.world_size();
  const std::size_t ur = static_cast<std::size_t>(r), un = static_cast<std::size_t>(n);
  const int root_a = n - 1, root_b = n / 2;
  o.rs.assign(count, T{});
  o.red.assign(count, reduce_sentinel<T>());
  o.ag.assign(count * un, T{});
  o.bc = in.bc[ur];
  o.ar.assign(count, T{});
  o.red_inplace = in.ar[ur];
  o.red_max.assign(count, reduce_sentinel<T>());
  o.bc_last = in.ag[ur];
  T* max_recv = r == root_a ? o.red_max.data() : nullptr;
  if (!nonblocking) {
    c.reduce_scatter(in.rs[ur].data(), o.rs.data(), count, reduce_op::sum);
    c.reduce(in.ar[ur].data(), o.red.data(), count, reduce_op::sum, root_a);
    c.all_gather(in.ag[ur].data(), o.ag.data(), count);
    c.broadcast(o.bc.data(), count, root_b);
    c.all_reduce(in.ar[ur].data(), o.ar.data(), count, reduce_op::sum);
    c.reduce(o.red_inplace.data(), o.red_inplace.data(), count, reduce_op::sum, root_b);
    c.reduce(in.ar_max[ur].data(), max_recv, count, reduce_op::max, root_a);
    c.broadcast(o.bc_last.data(), count, root_a);
  } else {
    std::vector<zero::thread_request> q;
    q.push_back(c.ireduce_scatter(in.rs[ur].data(), o.rs.data(), count, reduce_op::sum));
    q.push_back(c.ireduce(in.ar[ur].data(), o.red.data(), count, reduce_op::sum, root_a));
    q.push_back(c.iall_gather(in.ag[ur].data(), o.ag.data(), count));
    q.push_back(c.ibroadcast(o.bc.data(), count, root_b));
    if (c.queued_count() != 4) o.trouble = "4 started, " + std::to_string(c.queued_count()) + " queued";
    c.all_reduce(in.ar[ur].data(), o.ar.data(), count, reduce_op::sum);
    for (const auto& x : q)
      if (!x.done()) o.trouble = "a request started before a blocking collective has not run";
    q.push_back(c.ireduce(o.red_inplace.data(), o.red_inplace.data(), count, reduce_op::sum, root_b));
    q.push_back(c.ireduce(in.ar_max[ur].data(), max_recv, count, reduce_op::max, root_a));
    q.push_back(c.ibroadcast(o.bc_last.data(), count, root_a));
    if (q.back().done() || c.queued_count() != 3) o.trouble = "requests ran before they were waited";
    for (auto it = q.rbegin(); it != q.rend(); ++it) it->wait();
    if (c.queued_count() != 0) o.trouble = "requests left after waiting";
  }
  o.traffic = c.traffic();
  o.sequence = c.sequence();
}

template <class T>
std::vector<mixed_outputs<T>> run_mixed(const inputs<T>& in, bool nonblocking) {
  std::vector<mixed_outputs<T>> out(static_cast<std::size_t>(in.n));
  zero::thread_group g(in.n, {20s});
  g.run([&](zero::thread_communicator& c) { mixed_body<T>(c, in, out[static_cast<std::size_t>(c.rank())], nonblocking); });
  return out;
}

template <class T>
bool same_vector(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

template <class T>
void check_mixed_requests() {
  for (int n : {1, 2, 3, 4, 5}) {
    CAPTURE(n);
    CAPTURE(zero::type_name<T>());
    const inputs<T> in(n);
    const auto blocking = run_mixed<T>(in, false);
    const auto started = run_mixed<T>(in, true);
    const int root_a = n - 1, root_b = n / 2;
    for (int r = 0; r < n; ++r) {
      CAPTURE(r);
      const std::size_t ur = static_cast<std::size_t>(r);
      const auto &b = blocking[ur], &s = started[ur];
      CHECK(s.trouble == "");
      CHECK(same_vector(s.rs, b.rs));
      CHECK(same_vector(s.red, b.red));
      CHECK(same_vector(s.ag, b.ag));
      CHECK(same_vector(s.bc, b.bc));
      CHECK(same_vector(s.ar, b.ar));
      CHECK(same_vector(s.red_inplace, b.red_inplace));
      CHECK(same_vector(s.red_max, b.red_max));
      CHECK(same_vector(s.bc_last, b.bc_last));
      CHECK(s.traffic.bytes == b.traffic.bytes);
      CHECK(s.traffic.calls == b.traffic.calls);
      CHECK(s.sequence == 8u);
      CHECK(s.traffic.calls_of(collective::reduce) == 3u);
      CHECK(s.traffic.bytes_of(collective::reduce) == 3u * count * sizeof(T));
      CHECK(s.traffic.calls_of(collective::broadcast) == 2u);
      // and the blocking results are right: the reductions on their roots, sentinels elsewhere
      std::size_t wrong = 0;
      for (std::size_t i = 0; i < count; ++i) {
        wrong += !same_bits(b.red[i], r == root_a ? reference(in.ar, i, reduce_op::sum) : reduce_sentinel<T>());
        wrong += !same_bits(b.red_inplace[i], r == root_b ? reference(in.ar, i, reduce_op::sum) : in.ar[ur][i]);
        wrong += !same_value(b.red_max[i], r == root_a ? reference(in.ar_max, i, reduce_op::max) : reduce_sentinel<T>());
        wrong += !same_bits(b.bc[i], in.bc[static_cast<std::size_t>(root_b)][i]);
        wrong += !same_bits(b.bc_last[i], in.ag[static_cast<std::size_t>(root_a)][i]);
        wrong += !same_bits(b.rs[i], reference(in.rs, ur * count + i, reduce_op::sum));
      }
      CHECK(wrong == 0);
    }
  }
}

}  // namespace

static_assert(zero::communicator<zero::single_rank_communicator>);
static_assert(zero::communicator<zero::thread_communicator>);
static_assert(zero::rooted_communicator<zero::single_rank_communicator>);
static_assert(zero::nonblocking_rooted_communicator<zero::thread_communicator>);
static_assert(zero::reducible<std::int32_t> && zero::reducible<bf16> && !zero::reducible<char>);

// An engine and the requests in flight keep the communicator's address: a copy or a move of the
// endpoint would leave them pointing at the old one, so the shipped communicators allow neither.
template <class C>
constexpr bool stays_put = !std::is_copy_constructible_v<C> && !std::is_move_constructible_v<C> &&
                           !std::is_copy_assignable_v<C> && !std::is_move_assignable_v<C>;
static_assert(stays_put<zero::single_rank_communicator>);
static_assert(stays_put<zero::thread_communicator>);
static_assert(stays_put<zero::thread_group>);
static_assert(!std::is_copy_constructible_v<zero::thread_request> && std::is_move_constructible_v<zero::thread_request>);

TEST_SUITE("unit") {

TEST_CASE("thread_communicator: collectives match rank-order references for fp32") { check_thread_collectives<float>(); }
TEST_CASE("thread_communicator: collectives match rank-order references for fp64") { check_thread_collectives<double>(); }
TEST_CASE("thread_communicator: collectives match rank-order references for bf16") { check_thread_collectives<bf16>(); }
TEST_CASE("thread_communicator: collectives match rank-order references for fp16") { check_thread_collectives<fp16>(); }
TEST_CASE("thread_communicator: collectives match rank-order references for u64") { check_thread_collectives<std::uint64_t>(); }

TEST_CASE("single_rank_communicator: collectives copy and count traffic") {
  check_single_rank_collectives<float>();
  check_single_rank_collectives<double>();
  check_single_rank_collectives<bf16>();
  check_single_rank_collectives<fp16>();
  check_single_rank_collectives<std::uint64_t>();
}

TEST_CASE("communicator: the test data makes rank order and single rounding visible") {
  // Guards the bitwise checks above: with these inputs a sum in another order, or a 16-bit sum
  // rounded at every step, gives different bits for some elements.
  auto order_sensitive = [](const auto& in) {
    using T = std::remove_cvref_t<decltype(in.ar[0][0])>;
    int differ = 0;
    for (std::size_t i = 0; i < count; ++i) {
      wide_t<T> reversed = widen(in.ar.back()[i]);
      for (std::size_t r = in.ar.size() - 1; r-- > 0;) reversed = reversed + widen(in.ar[r][i]);
      differ += !same_bits(narrow<T>(reversed), reference(in.ar, i, reduce_op::sum));
    }
    return differ;
  };
  CHECK(order_sensitive(inputs<float>(8)) > 0);
  CHECK(order_sensitive(inputs<double>(8)) > 0);
  CHECK(order_sensitive(inputs<float>(3)) > 0);
  auto rounded_each_step = [](const auto& in) {
    using T = std::remove_cvref_t<decltype(in.ar[0][0])>;
    int differ = 0;
    for (std::size_t i = 0; i < count; ++i) {
      T acc = in.ar[0][i];
      for (std::size_t r = 1; r < in.ar.size(); ++r) acc = T(static_cast<float>(acc) + static_cast<float>(in.ar[r][i]));
      differ += !same_bits(acc, reference(in.ar, i, reduce_op::sum));
    }
    return differ;
  };
  CHECK(rounded_each_step(inputs<bf16>(8)) > 0);
  CHECK(rounded_each_step(inputs<fp16>(8)) > 0);
  CHECK(rounded_each_step(inputs<bf16>(3)) > 0);
  // and the max inputs do hold NaNs
  const inputs<float> f(4);
  CHECK(std::isnan(reference(f.ar_max, 0, reduce_op::max)));
  CHECK_FALSE(std::isnan(reference(f.ar_max, 1, reduce_op::max)));
}

TEST_CASE("thread_communicator: max propagates NaN from any rank and handles infinities") {
  for (int n : {2, 3, 5}) {
    CAPTURE(n);
    const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
    std::vector<std::vector<float>> out(static_cast<std::size_t>(n));
    zero::thread_group g(n, {20s});
    g.run([&](zero::thread_communicator& c) {
      const int r = c.rank();
      // element k: NaN only on rank k % n; element n: -inf everywhere but 1 on the last rank;
      // element n + 1: +inf on rank 0
      std::vector<float> send(static_cast<std::size_t>(n) + 2, static_cast<float>(-r));
      send[static_cast<std::size_t>(r)] = nan;
      send[static_cast<std::size_t>(n)] = r == n - 1 ? 1.0f : -inf;
      send[static_cast<std::size_t>(n) + 1] = r == 0 ? inf : 2.0f;
      auto& recv = out[static_cast<std::size_t>(r)];
      recv.assign(send.size(), 0.0f);
      c.all_reduce(send.data(), recv.data(), send.size(), reduce_op::max);
    });
    for (int r = 0; r < n; ++r) {
      const auto& recv = out[static_cast<std::size_t>(r)];
      for (int k = 0; k < n; ++k) CHECK(std::isnan(recv[static_cast<std::size_t>(k)]));
      CHECK(recv[static_cast<std::size_t>(n)] == 1.0f);
      CHECK(recv[static_cast<std::size_t>(n) + 1] == inf);
    }
  }
}

TEST_CASE("thread_communicator: traffic counters follow the documented byte rule") {
  // explicit numbers, for world 4 and fp32 (the rule: reduce_scatter count*world*size,
  // all_gather count*world*size, all_reduce 2*count*size, broadcast count*size, reduce count*size)
  std::vector<zero::traffic_counters> t(4), before(4);
  zero::thread_group g(4, {20s});
  g.run([&](zero::thread_communicator& c) {
    std::vector<float> a(40, 1.0f), b(40);
    c.barrier();
    before[static_cast<std::size_t>(c.rank())] = c.traffic();
    c.reduce_scatter(a.data(), b.data(), 10);
    c.reduce_scatter(a.data(), b.data(), 10, reduce_op::max);
    c.all_gather(a.data(), b.data(), 10);
    c.all_reduce(a.data(), b.data(), 40);
    c.broadcast(a.data(), 5, 3);
    c.reduce(a.data(), c.rank() == 1 ? b.data() : nullptr, 6, reduce_op::sum, 1);
    c.barrier();
    std::vector<std::uint64_t> u(8, 1), v(32);
    c.all_gather(u.data(), v.data(), 8);
    t[static_cast<std::size_t>(c.rank())] = c.traffic();
  });
  for (int r = 0; r < 4; ++r) {
    CAPTURE(r);
    const auto& x = t[static_cast<std::size_t>(r)];
    CHECK(x.bytes_of(collective::reduce_scatter) == 2u * 10u * 4u * 4u);
    CHECK(x.calls_of(collective::reduce_scatter) == 2u);
    CHECK(x.bytes_of(collective::all_gather) == 10u * 4u * 4u + 8u * 4u * 8u);
    CHECK(x.calls_of(collective::all_gather) == 2u);
    CHECK(x.bytes_of(collective::all_reduce) == 2u * 40u * 4u);
    CHECK(x.calls_of(collective::all_reduce) == 1u);
    CHECK(x.bytes_of(collective::broadcast) == 5u * 4u);
    CHECK(x.calls_of(collective::broadcast) == 1u);
    CHECK(x.bytes_of(collective::reduce) == 6u * 4u);  // on the root and off it
    CHECK(x.calls_of(collective::reduce) == 1u);
    CHECK(x.bytes_of(collective::barrier) == 0u);
    CHECK(x.calls_of(collective::barrier) == 2u);
    CHECK(x.total_bytes() == 320u + 416u + 320u + 20u + 24u);
    const auto delta = x - before[static_cast<std::size_t>(r)];
    CHECK(delta.calls_of(collective::barrier) == 1u);
    CHECK(delta.total_bytes() == x.total_bytes());
  }
  // a ZeRO-2 step (reduce-scatter + all-gather of n elements) moves what one all-reduce moves
  zero::single_rank_communicator s;
  std::vector<float> a(8), b(8);
  s.reduce_scatter(a.data(), b.data(), 8);
  s.all_gather(a.data(), b.data(), 8);
  const auto zero2 = s.traffic();
  s.all_reduce(a.data(), b.data(), 8);
  CHECK((s.traffic() - zero2).total_bytes() == zero2.total_bytes());
  CHECK(s.traffic().calls_of(collective::all_reduce) == 1u);
  s.barrier();
  CHECK(s.traffic().calls_of(collective::barrier) == 1u);
  CHECK(zero::to_string(collective::reduce_scatter) == "reduce_scatter");
  CHECK(zero::to_string(collective::barrier) == "barrier");
  CHECK(zero::to_string(collective::reduce) == "reduce");
}

TEST_CASE("thread_communicator: eight ranks on two cores run 2000 small collectives quickly") {
  // A waiting rank must sleep, not spin: with 8 threads on few cores, spinning waiters steal the
  // time slices of the ranks they wait for.
  zero::thread_group g(8, {20s});
  std::vector<float> last(8);
  const auto start = clock_type::now();
  g.run([&](zero::thread_communicator& c) {
    std::vector<float> send(4 * 8, static_cast<float>(c.rank())), recv(4 * 8);
    for (int i = 0; i < 500; ++i) {
      c.all_reduce(send.data(), recv.data(), 4);
      c.reduce_scatter(send.data(), recv.data(), 4);
      c.all_gather(send.data(), recv.data(), 4);
      c.barrier();
    }
    c.all_reduce(send.data(), recv.data(), 1);
    last[static_cast<std::size_t>(c.rank())] = recv[0];
  });
  const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  MESSAGE("2000 collectives on 8 ranks took " << seconds << " s");
  for (float v : last) CHECK(v == 28.0f);
  CHECK(seconds < 4.0);
}

TEST_CASE("thread_communicator: group and endpoint accessors") {
  zero::thread_group g(3, {123ms});
  CHECK(g.world_size() == 3);
  CHECK(g.options().timeout == 123ms);
  auto c = g.communicator(2);
  CHECK(c.rank() == 2);
  CHECK(c.world_size() == 3);
  CHECK(c.sequence() == 0u);
  CHECK(c.traffic().total_bytes() == 0u);
  zero::thread_group one(1);
  auto solo = one.communicator(0);
  float x = 3.0f, y = 0.0f;
  solo.all_reduce(&x, &y, 1);
  solo.barrier();
  CHECK(y == 3.0f);
  CHECK(solo.sequence() == 2u);
}

TEST_CASE("thread_communicator: reduce to every root matches reduce_scatter bitwise for fp32") { check_thread_reduce<float>(); }
TEST_CASE("thread_communicator: reduce to every root matches reduce_scatter bitwise for fp64") { check_thread_reduce<double>(); }
TEST_CASE("thread_communicator: reduce to every root matches reduce_scatter bitwise for bf16") { check_thread_reduce<bf16>(); }
TEST_CASE("thread_communicator: reduce to every root matches reduce_scatter bitwise for fp16") { check_thread_reduce<fp16>(); }
TEST_CASE("thread_communicator: reduce to every root matches reduce_scatter bitwise for u64") { check_thread_reduce<std::uint64_t>(); }

TEST_CASE("thread_communicator: ireduce and ibroadcast among other requests give the blocking bits") {
  check_mixed_requests<float>();
  check_mixed_requests<bf16>();
  check_mixed_requests<fp16>();
  check_mixed_requests<double>();
}

TEST_CASE("single_rank_communicator: reduce copies and counts its input") {
  zero::single_rank_communicator s;
  std::vector<bf16> a(6), b(6);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = make_value<bf16>(hash(5, 0, i));
  s.reduce(a.data(), b.data(), a.size(), reduce_op::sum, 0);
  CHECK(same_vector(a, b));
  s.reduce(a.data(), a.data(), a.size(), reduce_op::max, 0);
  CHECK(same_vector(a, b));
  CHECK(s.traffic().bytes_of(collective::reduce) == 2u * 6u * sizeof(bf16));
  CHECK(s.traffic().calls_of(collective::reduce) == 2u);
  CHECK(s.traffic().total_bytes() == 2u * 6u * sizeof(bf16));
}

}  // TEST_SUITE("unit")

TEST_SUITE("reliability") {

TEST_CASE("thread_communicator: a rank that never joins makes the others time out") {
  zero::thread_group g(4, {200ms});
  std::string run_error;
  const auto results = run_recording(
      g,
      [](zero::thread_communicator& c) {
        c.barrier();                 // collective #1 completes
        if (c.rank() == 3) return;   // rank 3 leaves without a word
        std::vector<float> a(4, 1.0f), b(4);
        c.all_reduce(a.data(), b.data(), 4);  // collective #2
      },
      &run_error);
  CHECK(starts_with(run_error, "timeout_error: "));
  for (int r = 0; r < 3; ++r) {
    CAPTURE(r);
    const auto& res = results[static_cast<std::size_t>(r)];
    CHECK(res.error == "timeout_error");
    CHECK(contains(res.message, "all_reduce"));
    CHECK(contains(res.message, "#2"));
    CHECK(contains(res.message, "rank(s) 3 never arrived"));
    CHECK(res.seconds > 0.15);
    CHECK(res.seconds < 2.0);
  }
  CHECK(results[3].error == "");
}

TEST_CASE("thread_communicator: a rank that sleeps past the deadline times out the others") {
  zero::thread_group g(3, {200ms});
  std::string run_error;
  const auto results = run_recording(
      g,
      [](zero::thread_communicator& c) {
        std::vector<double> a(6, 1.0), b(2);
        if (c.rank() == 1) std::this_thread::sleep_for(600ms);
        c.reduce_scatter(a.data(), b.data(), 2);
      },
      &run_error);
  CHECK(starts_with(run_error, "timeout_error: "));
  for (int r : {0, 2}) {
    CAPTURE(r);
    const auto& res = results[static_cast<std::size_t>(r)];
    CHECK(res.error == "timeout_error");
    CHECK(contains(res.message, "reduce_scatter"));
    CHECK(contains(res.message, "#1"));
    CHECK(contains(res.message, "rank(s) 1 never arrived"));
    CHECK(res.seconds > 0.15);
    CHECK(res.seconds < 0.55);  // did not wait for the sleeper
  }
  // the late rank finds the group broken and fails at once instead of waiting its own deadline
  const auto& late = results[1];
  CHECK((late.error == "timeout_error" || late.error == "communicator_error"));
  CHECK(late.seconds < 0.6 + 0.15);
}

TEST_CASE("thread_communicator: a rank that times out may reuse its buffers at once: a slow peer finishes its copy first") {
  // rank 1 is slow inside the all-gather's data phase (after both published their buffers);
  // rank 0 copies, reaches the closing barrier and times out there, then overwrites its send
  // buffer the moment its call throws. Rank 1 must still gather rank 0's data, not the poison:
  // rank 0's throw waits until rank 1 no longer reads its buffers
  zero::thread_group_options options;
  options.timeout = 200ms;
  options.inside_collective = [](int rank, zero::collective, std::uint64_t) {
    if (rank == 1) std::this_thread::sleep_for(600ms);
  };
  zero::thread_group g(2, options);
  std::vector<std::vector<float>> gathered(2);
  const auto results = run_recording(g, [&](zero::thread_communicator& c) {
    std::vector<float> send(3, static_cast<float>(c.rank() + 1)), recv(6, -1.0f);
    try {
      c.all_gather(send.data(), recv.data(), 3);
    } catch (...) {
      std::fill(send.begin(), send.end(), std::numeric_limits<float>::quiet_NaN());  // reused at once
      gathered[static_cast<std::size_t>(c.rank())] = recv;
      throw;
    }
  });
  CHECK(results[0].error == "timeout_error");
  CHECK(contains(results[0].message, "all_gather"));
  CHECK(results[0].seconds > 0.55);  // held until rank 1 was done reading its send buffer
  CHECK(results[1].error != "");     // rank 1 finds the group broken at the closing barrier
  CHECK(gathered[1] == std::vector<float>{1, 1, 1, 2, 2, 2});
  CHECK(gathered[0] == std::vector<float>{1, 1, 1, 2, 2, 2});
}

TEST_CASE("thread_communicator: a timeout names every missing rank") {
  zero::thread_group g(5, {200ms});
  const auto results = run_recording(g, [](zero::thread_communicator& c) {
    if (c.rank() == 1 || c.rank() == 3) return;
    std::vector<fp16> a(2), b(10);
    c.all_gather(a.data(), b.data(), 2);
  });
  for (int r : {0, 2, 4}) {
    CAPTURE(r);
    CHECK(results[static_cast<std::size_t>(r)].error == "timeout_error");
    CHECK(contains(results[static_cast<std::size_t>(r)].message, "all_gather #1"));
    CHECK(contains(results[static_cast<std::size_t>(r)].message, "rank(s) 1, 3 never arrived"));
  }
}

TEST_CASE("thread_communicator: a different collective kind is a mismatch on every rank") {
  std::vector<std::vector<float>> recv(4, std::vector<float>(16, 7.0f));
  const std::string m = mismatch_message(4, [&](zero::thread_communicator& c) {
    std::vector<float> send(4, 1.0f);
    auto& out = recv[static_cast<std::size_t>(c.rank())];
    c.barrier();
    if (c.rank() == 2) c.all_gather(send.data(), out.data(), 4);
    else c.all_reduce(send.data(), out.data(), 4);
  });
  CHECK(contains(m, "call #2"));
  CHECK(contains(m, "most ranks call all_reduce<fp32>(count 4, sum)"));
  CHECK(contains(m, "rank 2 calls all_gather<fp32>(count 4)"));
  CHECK_FALSE(contains(m, "rank 0 calls"));
  for (const auto& v : recv)
    for (float x : v) CHECK(x == 7.0f);  // nothing was written
}

TEST_CASE("thread_communicator: a different count is a mismatch naming the diverging rank") {
  const std::string m = mismatch_message(3, [](zero::thread_communicator& c) {
    std::vector<float> a(5, 1.0f), b(5);
    c.all_reduce(a.data(), b.data(), c.rank() == 1 ? 5 : 4);
  });
  CHECK(contains(m, "rank 1 calls all_reduce<fp32>(count 5, sum)"));
  CHECK(contains(m, "most ranks call all_reduce<fp32>(count 4, sum)"));
}

TEST_CASE("thread_communicator: a different element type is a mismatch naming the diverging rank") {
  const std::string m = mismatch_message(4, [](zero::thread_communicator& c) {
    if (c.rank() == 3) {
      std::vector<double> a(4, 1.0), b(4);
      c.all_reduce(a.data(), b.data(), 4);
    } else {
      std::vector<float> a(4, 1.0f), b(4);
      c.all_reduce(a.data(), b.data(), 4);
    }
  });
  CHECK(contains(m, "rank 3 calls all_reduce<fp64>(count 4, sum)"));
}

TEST_CASE("thread_communicator: a different broadcast root is a mismatch naming the diverging rank") {
  std::vector<std::vector<bf16>> data(4, std::vector<bf16>(4, bf16(static_cast<float>(5))));
  for (int r = 0; r < 4; ++r) data[static_cast<std::size_t>(r)][0] = bf16(static_cast<float>(r));
  const std::string m = mismatch_message(4, [&](zero::thread_communicator& c) {
    c.broadcast(data[static_cast<std::size_t>(c.rank())].data(), 4, c.rank() == 0 ? 1 : 0);
  });
  CHECK(contains(m, "rank 0 calls broadcast<bf16>(count 4, root 1)"));
  CHECK(contains(m, "most ranks call broadcast<bf16>(count 4, root 0)"));
  for (int r = 0; r < 4; ++r) CHECK(static_cast<float>(data[static_cast<std::size_t>(r)][0]) == static_cast<float>(r));
}

TEST_CASE("thread_communicator: a different reduce operation is a mismatch") {
  const std::string m = mismatch_message(3, [](zero::thread_communicator& c) {
    std::vector<std::uint64_t> a(6, 1), b(2);
    c.reduce_scatter(a.data(), b.data(), 2, c.rank() == 2 ? reduce_op::max : reduce_op::sum);
  });
  CHECK(contains(m, "rank 2 calls reduce_scatter<u64>(count 2, max)"));
}

TEST_CASE("thread_communicator: a two-rank mismatch takes rank 0's call as intended") {
  const std::string m = mismatch_message(2, [](zero::thread_communicator& c) {
    std::vector<float> a(2), b(2);
    if (c.rank() == 0) c.all_reduce(a.data(), b.data(), 2);
    else c.barrier();
  });
  CHECK(contains(m, "most ranks call all_reduce<fp32>(count 2, sum)"));
  CHECK(contains(m, "rank 1 calls barrier"));
}

TEST_CASE("thread_communicator: a rank that throws makes the others fail fast") {
  zero::thread_group g(4, {10s});
  std::string run_error;
  const auto results = run_recording(
      g,
      [](zero::thread_communicator& c) {
        c.barrier();
        if (c.rank() == 2) {
          std::this_thread::sleep_for(20ms);  // let the others start waiting
          throw std::runtime_error("boom on rank 2");
        }
        std::vector<float> a(4), b(4);
        c.all_reduce(a.data(), b.data(), 4);
      },
      &run_error);
  CHECK(run_error == "std::exception: boom on rank 2");  // run rethrows the root cause
  for (int r : {0, 1, 3}) {
    CAPTURE(r);
    const auto& res = results[static_cast<std::size_t>(r)];
    CHECK(res.error == "communicator_error");
    CHECK(contains(res.message, "rank 2"));
    CHECK(contains(res.message, "boom on rank 2"));
    CHECK(res.seconds < 2.0);  // far below the 10 s deadline
  }
}

TEST_CASE("thread_communicator: ranks failing together report the lowest-rank root cause") {
  // Ranks 1..7 throw at the same moment while rank 0 waits; run must rethrow rank 1's error
  // ("the first root-cause exception (lowest rank) is rethrown"). The ranks record their root
  // causes concurrently: under -fsanitize=thread this test reports a data race if that record
  // is not thread-safe (std::vector<bool> packs neighbouring ranks' flags into one word).
  zero::thread_group g(8, {10s});
  std::string run_error;
  const auto results = run_recording(
      g,
      [](zero::thread_communicator& c) {
        c.barrier();
        if (c.rank() == 0) c.barrier();  // waits, then fails as a consequence
        throw std::runtime_error("root cause on rank " + std::to_string(c.rank()));
      },
      &run_error);
  CHECK(run_error == "std::exception: root cause on rank 1");
  CHECK(results[0].error == "communicator_error");
  for (int r = 1; r < 8; ++r) CHECK(results[static_cast<std::size_t>(r)].error == "std::exception");
}

TEST_CASE("thread_communicator: run rethrows a root cause not derived from std::exception") {
  zero::thread_group g(3, {10s});
  const auto start = clock_type::now();
  CHECK_THROWS_AS(g.run([](zero::thread_communicator& c) {
                    if (c.rank() == 1) throw 42;
                    c.barrier();
                  }),
                  int);
  CHECK(std::chrono::duration<double>(clock_type::now() - start).count() < 2.0);
}

TEST_CASE("thread_communicator: a broken group keeps failing") {
  SUBCASE("after a rank left") {
    zero::thread_group g(3, {10s});
    CHECK_THROWS_AS(g.run([](zero::thread_communicator& c) {
                      if (c.rank() == 0) throw std::logic_error("first failure");
                      c.barrier();
                    }),
                    std::logic_error);
    const auto start = clock_type::now();
    std::string run_error;
    const auto results = run_recording(g, [](zero::thread_communicator& c) { c.barrier(); }, &run_error);
    CHECK(starts_with(run_error, "communicator_error: "));
    for (const auto& res : results) {
      CHECK(res.error == "communicator_error");
      CHECK(contains(res.message, "first failure"));
    }
    auto c = g.communicator(1);
    float x = 1.0f;
    CHECK_THROWS_AS(c.broadcast(&x, 1, 0), zero::communicator_error);
    CHECK(std::chrono::duration<double>(clock_type::now() - start).count() < 2.0);
  }
  SUBCASE("after a timeout") {
    zero::thread_group g(2, {150ms});
    const auto first = run_recording(g, [](zero::thread_communicator& c) {
      if (c.rank() == 0) c.barrier();
    });
    CHECK(first[0].error == "timeout_error");
    const auto start = clock_type::now();
    std::string run_error;
    const auto again = run_recording(g, [](zero::thread_communicator& c) { c.barrier(); }, &run_error);
    for (const auto& res : again) CHECK((res.error == "timeout_error" || res.error == "communicator_error"));
    CHECK_FALSE(run_error.empty());
    CHECK(std::chrono::duration<double>(clock_type::now() - start).count() < 0.14);  // no new wait
  }
}

TEST_CASE("thread_communicator: a mismatch leaves the group unusable") {
  // error.hpp: communicator_error is thrown by "a communicator that an earlier failure (timeout,
  // mismatch, a rank that left) made unusable". Here the ranks run on their own threads (not
  // through thread_group::run, which marks the group broken when a rank throws), catch the
  // mismatch and try another collective: it must not succeed.
  zero::thread_group g(2, {2s});
  std::vector<std::string> first(2), second(2);
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < 2; ++r) {
      threads.emplace_back([&, r] {
        auto c = g.communicator(r);
        std::vector<float> a(4, 1.0f), b(8);
        try {
          if (r == 0) c.all_reduce(a.data(), b.data(), 4);
          else c.all_gather(a.data(), b.data(), 4);
          first[static_cast<std::size_t>(r)] = "ok";
        } catch (const zero::mismatch_error&) {
          first[static_cast<std::size_t>(r)] = "mismatch_error";
        } catch (const std::exception& e) {
          first[static_cast<std::size_t>(r)] = e.what();
        }
        try {
          c.barrier();
          second[static_cast<std::size_t>(r)] = "ok";
        } catch (const zero::communicator_error&) {
          second[static_cast<std::size_t>(r)] = "communicator_error";
        } catch (const std::exception& e) {
          second[static_cast<std::size_t>(r)] = e.what();
        }
      });
    }
  }
  for (int r = 0; r < 2; ++r) {
    CAPTURE(r);
    CHECK(first[static_cast<std::size_t>(r)] == "mismatch_error");
    CHECK(second[static_cast<std::size_t>(r)] == "communicator_error");
  }
}

TEST_CASE("thread_communicator: invalid world size rank timeout and root are usage errors") {
  CHECK_THROWS_WITH_AS(zero::thread_group(0), doctest::Contains("world_size must be >= 1, got 0"), zero::usage_error);
  CHECK_THROWS_WITH_AS(zero::thread_group(-2), doctest::Contains("got -2"), zero::usage_error);
  CHECK_THROWS_WITH_AS(zero::thread_group(2, {0ms}), doctest::Contains("timeout"), zero::usage_error);
  CHECK_THROWS_AS(zero::thread_group(2, {-5ms}), zero::usage_error);
  zero::thread_group g(3, {2s});
  CHECK_THROWS_WITH_AS(g.communicator(3), doctest::Contains("rank 3 outside a group of 3"), zero::usage_error);
  CHECK_THROWS_WITH_AS(g.communicator(-1), doctest::Contains("rank -1"), zero::usage_error);
  CHECK_THROWS_AS(zero::thread_communicator(g, 7), zero::usage_error);
  // every rank passes the same invalid root: every rank refuses it, before any waiting
  for (int root : {3, -1}) {
    zero::thread_group h(3, {10s});
    std::string run_error;
    const auto start = clock_type::now();
    const auto results = run_recording(
        h,
        [root](zero::thread_communicator& c) {
          float x = 1.0f;
          c.broadcast(&x, 1, root);
        },
        &run_error);
    CHECK(starts_with(run_error, "usage_error: "));
    CHECK(contains(run_error, "root " + std::to_string(root)));
    for (const auto& res : results) CHECK(res.error == "usage_error");
    CHECK(std::chrono::duration<double>(clock_type::now() - start).count() < 2.0);
  }
  zero::single_rank_communicator s;
  float x = 0.0f;
  CHECK_THROWS_WITH_AS(s.broadcast(&x, 1, 1), doctest::Contains("root 1"), zero::usage_error);
  CHECK_THROWS_AS(s.broadcast(&x, 1, -1), zero::usage_error);
  CHECK_NOTHROW(s.broadcast(&x, 1, 0));
}

TEST_CASE("thread_communicator: a different reduce root is a mismatch naming the diverging rank") {
  std::vector<std::vector<float>> recv(4, std::vector<float>(4, 7.0f));
  const std::string m = mismatch_message(4, [&](zero::thread_communicator& c) {
    const std::vector<float> send(4, 1.0f);
    c.reduce(send.data(), recv[static_cast<std::size_t>(c.rank())].data(), 4, reduce_op::sum, c.rank() == 0 ? 1 : 0);
  });
  CHECK(contains(m, "call #1"));
  CHECK(contains(m, "most ranks call reduce<fp32>(count 4, root 0, sum)"));
  CHECK(contains(m, "rank 0 calls reduce<fp32>(count 4, root 1, sum)"));
  CHECK_FALSE(contains(m, "rank 1 calls"));
  for (const auto& v : recv)
    for (float x : v) CHECK(x == 7.0f);  // nothing was written, on either root
}

TEST_CASE("thread_communicator: a reduce with a different count / type / operation or kind is a mismatch") {
  std::string m = mismatch_message(3, [](zero::thread_communicator& c) {
    std::vector<float> a(5, 1.0f), b(5);
    c.reduce(a.data(), b.data(), c.rank() == 1 ? 5 : 4, reduce_op::sum, 2);
  });
  CHECK(contains(m, "rank 1 calls reduce<fp32>(count 5, root 2, sum)"));
  CHECK(contains(m, "most ranks call reduce<fp32>(count 4, root 2, sum)"));
  m = mismatch_message(4, [](zero::thread_communicator& c) {
    if (c.rank() == 3) {
      std::vector<double> a(4, 1.0), b(4);
      c.reduce(a.data(), b.data(), 4, reduce_op::sum, 0);
    } else {
      std::vector<float> a(4, 1.0f), b(4);
      c.reduce(a.data(), b.data(), 4, reduce_op::sum, 0);
    }
  });
  CHECK(contains(m, "rank 3 calls reduce<fp64>(count 4, root 0, sum)"));
  m = mismatch_message(3, [](zero::thread_communicator& c) {
    std::vector<std::uint64_t> a(2, 1), b(2);
    c.reduce(a.data(), b.data(), 2, c.rank() == 2 ? reduce_op::max : reduce_op::sum, 1);
  });
  CHECK(contains(m, "rank 2 calls reduce<u64>(count 2, root 1, max)"));
  m = mismatch_message(3, [](zero::thread_communicator& c) {
    std::vector<float> a(2, 1.0f), b(2);
    if (c.rank() == 1) c.all_reduce(a.data(), b.data(), 2);
    else c.reduce(a.data(), b.data(), 2, reduce_op::sum, 1);
  });
  CHECK(contains(m, "most ranks call reduce<fp32>(count 2, root 1, sum)"));
  CHECK(contains(m, "rank 1 calls all_reduce<fp32>(count 2, sum)"));
  m = mismatch_message(2, [](zero::thread_communicator& c) {
    std::vector<float> a(2, 1.0f), b(2);
    if (c.rank() == 0) c.reduce(a.data(), b.data(), 2, reduce_op::sum, 1);
    else c.broadcast(a.data(), 2, 1);
  });
  CHECK(contains(m, "most ranks call reduce<fp32>(count 2, root 1, sum)"));
  CHECK(contains(m, "rank 1 calls broadcast<fp32>(count 2, root 1)"));
}

TEST_CASE("thread_communicator: ireduce and ibroadcast with different roots are mismatches when waited") {
  std::string m = mismatch_message(3, [](zero::thread_communicator& c) {
    std::vector<bf16> a(3, bf16(1.0f)), b(3);
    auto q = c.ireduce(a.data(), b.data(), 3, reduce_op::sum, c.rank() == 2 ? 0 : 2);
    q.wait();
  });
  CHECK(contains(m, "rank 2 calls reduce<bf16>(count 3, root 0, sum)"));
  CHECK(contains(m, "most ranks call reduce<bf16>(count 3, root 2, sum)"));
  m = mismatch_message(4, [](zero::thread_communicator& c) {
    std::vector<fp16> a(3, fp16(1.0f)), b(3);
    auto first = c.ireduce(a.data(), b.data(), 3, reduce_op::sum, 1);  // agrees
    auto second = c.ibroadcast(a.data(), 3, c.rank() == 3 ? 3 : 1);
    second.wait();
  });
  CHECK(contains(m, "call #2"));
  CHECK(contains(m, "rank 3 calls broadcast<fp16>(count 3, root 3)"));
  CHECK(contains(m, "most ranks call broadcast<fp16>(count 3, root 1)"));
}

TEST_CASE("thread_communicator: a reduce root outside the group is a usage error naming the root and rank") {
  for (int root : {3, -1}) {
    CAPTURE(root);
    zero::thread_group g(3, {10s});
    std::string run_error;
    const auto results = run_recording(
        g,
        [root](zero::thread_communicator& c) {
          float x = 1.0f, y = 0.0f;
          c.reduce(&x, &y, 1, reduce_op::sum, root);
        },
        &run_error);
    CHECK(starts_with(run_error, "usage_error: "));
    for (int r = 0; r < 3; ++r) {
      CAPTURE(r);
      const auto& res = results[static_cast<std::size_t>(r)];
      CHECK(res.error == "usage_error");
      CHECK(contains(res.message, "reduce root " + std::to_string(root) + " on rank " + std::to_string(r) + " outside a group of 3"));
    }
  }
  // the non-blocking forms refuse it at the call, and queue nothing
  zero::thread_group g(2, {10s});
  auto c = g.communicator(1);
  float x = 1.0f, y = 0.0f;
  CHECK_THROWS_WITH_AS((void)c.ireduce(&x, &y, 1, reduce_op::sum, 2), doctest::Contains("reduce root 2 on rank 1"), zero::usage_error);
  CHECK_THROWS_WITH_AS((void)c.ibroadcast(&x, 1, -1), doctest::Contains("broadcast root -1 on rank 1"), zero::usage_error);
  CHECK(c.queued_count() == 0u);
  CHECK(c.sequence() == 0u);
  zero::single_rank_communicator s;
  CHECK_THROWS_WITH_AS(s.reduce(&x, &y, 1, reduce_op::sum, 1), doctest::Contains("reduce root 1"), zero::usage_error);
  CHECK_THROWS_AS(s.reduce(&x, &y, 1, reduce_op::sum, -1), zero::usage_error);
  CHECK_NOTHROW(s.reduce(&x, &y, 1, reduce_op::sum, 0));
  CHECK(y == 1.0f);
}

TEST_CASE("thread_communicator: a rank that never arrives at a reduce makes the others time out") {
  for (bool nonblocking : {false, true}) {
    CAPTURE(nonblocking);
    zero::thread_group g(4, {200ms});
    std::string run_error;
    const auto results = run_recording(
        g,
        [nonblocking](zero::thread_communicator& c) {
          c.barrier();                // collective #1 completes
          if (c.rank() == 3) return;  // rank 3, the root, leaves without a word
          std::vector<float> a(4, 1.0f);
          if (nonblocking) {
            auto q = c.ireduce(a.data(), static_cast<float*>(nullptr), 4, reduce_op::sum, 3);  // collective #2
            q.wait();
          } else {
            c.reduce(a.data(), static_cast<float*>(nullptr), 4, reduce_op::sum, 3);
          }
        },
        &run_error);
    CHECK(starts_with(run_error, "timeout_error: "));
    for (int r = 0; r < 3; ++r) {
      CAPTURE(r);
      const auto& res = results[static_cast<std::size_t>(r)];
      CHECK(res.error == "timeout_error");
      CHECK(contains(res.message, "reduce #2"));
      CHECK(contains(res.message, "rank(s) 3 never arrived"));
    }
    CHECK(results[3].error == "");
  }
}

}  // TEST_SUITE("reliability")
