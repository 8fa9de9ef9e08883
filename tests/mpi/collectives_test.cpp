// mpi_communicator's collectives, run as separate processes: bitwise equal to rank-order
// references and to thread_communicator (a thread group of the same world size inside each
// process) for every element type, blocking and non-blocking, in place and count 0, with and
// without the debug mode; traffic counted as the thread communicator counts it; native MPI
// reductions (user-defined MPI_Ops for bf16/fp16); the rooted reduce and ireduce to every root
// in both reduction modes (bitwise the root's slice of a rank-ordered reduce-scatter), and its
// root checked by the debug mode; sub-communicators; usage errors.
#include <doctest/doctest.h>
#include <mpi.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "zero/mpi/communicator.hpp"
#include "zero/thread_communicator.hpp"

namespace {

using namespace std::chrono_literals;
using zero::bf16;
using zero::collective;
using zero::fp16;
using zero::reduce_op;

std::uint64_t mix(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
std::uint64_t hash(std::uint64_t a, std::uint64_t b, std::uint64_t c) { return mix(mix(mix(a) ^ b) ^ c); }

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

//! Values of mixed magnitudes and signs, so that the order of a sum shows in its bits.
template <class T>
T make_value(std::uint64_t h) {
  if constexpr (std::is_integral_v<T>) {
    return static_cast<T>(h >> 8);  // integers wrap around the same way in any order
  } else {
    const double sign = (h & 1u) ? -1.0 : 1.0;
    const int max_exp = std::is_same_v<T, fp16> ? 6 : 8;
    const int e = static_cast<int>((h >> 1) % static_cast<std::uint64_t>(max_exp + 9)) - 8;
    const double v = sign * std::ldexp(1.0 + static_cast<double>(h >> 12) / 4503599627370496.0, e);
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
template <class T>
bool same_value(const T& a, const T& b) {
  if (is_nan(a) || is_nan(b)) return is_nan(a) && is_nan(b);
  return same_bits(a, b);
}

//! op over ranks 0..n-1 of in[r][index], in rank order, in the wide type, rounded once.
template <class T>
T reference(const std::vector<std::vector<T>>& in, std::size_t index, reduce_op op) {
  wide_t<T> acc = widen(in[0][index]);
  for (std::size_t r = 1; r < in.size(); ++r) acc = zero::detail::combine<wide_t<T>>(acc, widen(in[r][index]), op);
  if constexpr (is_half<T>) return T(acc);
  else return acc;
}

//! Every rank's inputs (each process computes all of them: they are deterministic).
template <class T>
struct inputs {
  std::size_t count;
  std::vector<std::vector<T>> rs, rs_max, ag, ar, ar_max, bc;

  inputs(int world, std::size_t n) : count(n) {
    const std::size_t un = static_cast<std::size_t>(world);
    for (int r = 0; r < world; ++r) {
      const auto ur = static_cast<std::uint64_t>(r);
      auto fill = [&](std::size_t size, std::uint64_t tag, bool nans) {
        std::vector<T> v(size);
        for (std::size_t i = 0; i < size; ++i) {
          v[i] = make_value<T>(hash(tag, ur, i));
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

template <class T>
struct outputs {
  std::vector<T> rs, rs_max, ag, ar, ar_max, rs_inplace, ag_inplace, ar_inplace;
  std::vector<std::vector<T>> bc;
  std::vector<T> sentinels;
  zero::traffic_counters traffic;
};

enum class style { blocking, nonblocking_reverse, nonblocking_polled };

//! Every kind of collective, every broadcast root, the in-place forms and count 0. The MPI
//! communicator can run them non-blocking: all started first, then waited in reverse order, or
//! completed by polling test() and progress().
template <class T, class Comm>
void rank_body(Comm& c, const inputs<T>& in, outputs<T>& out, style how = style::blocking) {
  const int r = c.rank(), n = c.world_size();
  const std::size_t ur = static_cast<std::size_t>(r), un = static_cast<std::size_t>(n), count = in.count;
  out.rs.assign(count, T{});
  out.rs_max.assign(count, T{});
  out.ag.assign(count * un, T{});
  out.ar.assign(count, T{});
  out.ar_max.assign(count, T{});
  out.bc.assign(un, {});
  for (int root = 0; root < n; ++root) out.bc[static_cast<std::size_t>(root)] = in.bc[ur];
  std::vector<T> rs_buf = in.rs[ur];
  out.ag_inplace.assign(count * un, T{});
  std::copy(in.ag[ur].begin(), in.ag[ur].end(), out.ag_inplace.begin() + static_cast<std::ptrdiff_t>(ur * count));
  out.ar_inplace = in.ar[ur];
  out.sentinels.assign(4, make_value<T>(hash(99, ur, 0)));
  const std::vector<T> send(2, make_value<T>(hash(98, ur, 0)));
  T* s = out.sentinels.data();

  if constexpr (std::is_same_v<Comm, zero::mpi_communicator>) {
    if (how != style::blocking) {
      std::vector<zero::mpi_request> requests;
      requests.push_back(c.ireduce_scatter(in.rs[ur].data(), out.rs.data(), count, reduce_op::sum));
      requests.push_back(c.ireduce_scatter(in.rs_max[ur].data(), out.rs_max.data(), count, reduce_op::max));
      requests.push_back(c.iall_gather(in.ag[ur].data(), out.ag.data(), count));
      requests.push_back(c.iall_reduce(in.ar[ur].data(), out.ar.data(), count, reduce_op::sum));
      requests.push_back(c.iall_reduce(in.ar_max[ur].data(), out.ar_max.data(), count, reduce_op::max));
      for (int root = 0; root < n; ++root) requests.push_back(c.ibroadcast(out.bc[static_cast<std::size_t>(root)].data(), count, root));
      requests.push_back(c.ibarrier());
      requests.push_back(c.ireduce_scatter(rs_buf.data(), rs_buf.data() + ur * count, count, reduce_op::sum));
      requests.push_back(c.iall_gather(out.ag_inplace.data() + ur * count, out.ag_inplace.data(), count));
      requests.push_back(c.iall_reduce(out.ar_inplace.data(), out.ar_inplace.data(), count, reduce_op::sum));
      requests.push_back(c.ireduce_scatter(send.data(), s, 0, reduce_op::sum));
      requests.push_back(c.iall_gather(send.data(), s + 1, 0));
      requests.push_back(c.iall_reduce(send.data(), s + 2, 0, reduce_op::max));
      requests.push_back(c.ibroadcast(s + 3, 0, n - 1));
      if (how == style::nonblocking_reverse) {
        for (auto it = requests.rbegin(); it != requests.rend(); ++it) it->wait();
      } else {
        for (bool all_done = false; !all_done;) {
          c.progress();
          all_done = true;
          for (std::size_t k = requests.size(); k-- > 0;) all_done = requests[k].test() && all_done;
        }
      }
      for (const auto& q : requests) CHECK(q.done());
      out.rs_inplace.assign(rs_buf.begin() + static_cast<std::ptrdiff_t>(ur * count), rs_buf.begin() + static_cast<std::ptrdiff_t>((ur + 1) * count));
      out.traffic = c.traffic();
      return;
    }
  }
  c.reduce_scatter(in.rs[ur].data(), out.rs.data(), count, reduce_op::sum);
  c.reduce_scatter(in.rs_max[ur].data(), out.rs_max.data(), count, reduce_op::max);
  c.all_gather(in.ag[ur].data(), out.ag.data(), count);
  c.all_reduce(in.ar[ur].data(), out.ar.data(), count, reduce_op::sum);
  c.all_reduce(in.ar_max[ur].data(), out.ar_max.data(), count, reduce_op::max);
  for (int root = 0; root < n; ++root) c.broadcast(out.bc[static_cast<std::size_t>(root)].data(), count, root);
  c.barrier();
  c.reduce_scatter(rs_buf.data(), rs_buf.data() + ur * count, count, reduce_op::sum);
  c.all_gather(out.ag_inplace.data() + ur * count, out.ag_inplace.data(), count);
  c.all_reduce(out.ar_inplace.data(), out.ar_inplace.data(), count, reduce_op::sum);
  c.reduce_scatter(send.data(), s, 0, reduce_op::sum);
  c.all_gather(send.data(), s + 1, 0);
  c.all_reduce(send.data(), s + 2, 0, reduce_op::max);
  c.broadcast(s + 3, 0, n - 1);
  out.rs_inplace.assign(rs_buf.begin() + static_cast<std::ptrdiff_t>(ur * count), rs_buf.begin() + static_cast<std::ptrdiff_t>((ur + 1) * count));
  out.traffic = c.traffic();
}

//! "" or the first element of rank r's outputs that differs from the rank-order reference.
template <class T>
std::string check_reference(const inputs<T>& in, const outputs<T>& o, int r, int n) {
  const std::size_t ur = static_cast<std::size_t>(r), count = in.count;
  auto where = [&](const char* what, std::size_t i) { return std::string(what) + " element " + std::to_string(i); };
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t at = ur * count + i;
    if (!same_bits(o.rs[i], reference(in.rs, at, reduce_op::sum))) return where("reduce_scatter sum", i);
    if (!same_value(o.rs_max[i], reference(in.rs_max, at, reduce_op::max))) return where("reduce_scatter max", i);
    if (!same_bits(o.ar[i], reference(in.ar, i, reduce_op::sum))) return where("all_reduce sum", i);
    if (!same_value(o.ar_max[i], reference(in.ar_max, i, reduce_op::max))) return where("all_reduce max", i);
    if (!same_bits(o.rs_inplace[i], reference(in.rs, at, reduce_op::sum))) return where("in-place reduce_scatter", i);
    if (!same_bits(o.ar_inplace[i], reference(in.ar, i, reduce_op::sum))) return where("in-place all_reduce", i);
    for (std::size_t q = 0; q < static_cast<std::size_t>(n); ++q) {
      if (!same_bits(o.ag[q * count + i], in.ag[q][i])) return where("all_gather", q * count + i);
      if (!same_bits(o.ag_inplace[q * count + i], in.ag[q][i])) return where("in-place all_gather", q * count + i);
      if (!same_bits(o.bc[q][i], in.bc[q][i])) return where("broadcast", i);
    }
  }
  for (const T& s : o.sentinels)
    if (!same_bits(s, make_value<T>(hash(99, ur, 0)))) return "a collective with count 0 wrote memory";
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

int mpi_world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

template <class T>
bool identical(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

template <class T>
bool identical(const outputs<T>& x, const outputs<T>& y) {
  if (!identical(x.rs, y.rs) || !identical(x.rs_max, y.rs_max) || !identical(x.ag, y.ag) || !identical(x.ar, y.ar) ||
      !identical(x.ar_max, y.ar_max) || !identical(x.rs_inplace, y.rs_inplace) || !identical(x.ag_inplace, y.ag_inplace) ||
      !identical(x.ar_inplace, y.ar_inplace) || x.bc.size() != y.bc.size())
    return false;
  for (std::size_t q = 0; q < x.bc.size(); ++q)
    if (!identical(x.bc[q], y.bc[q])) return false;
  return x.traffic.bytes == y.traffic.bytes && x.traffic.calls == y.traffic.calls;
}

template <class T>
void check_against_threads() {
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  // counts: none, fewer than the ranks (empty all-reduce chunks), uneven, larger
  for (std::size_t count : {std::size_t{1}, std::size_t{37}, std::size_t{1000}}) {
    CAPTURE(count);
    CAPTURE(zero::type_name<T>());
    const inputs<T> in(world, count);
    std::vector<outputs<T>> threads(static_cast<std::size_t>(world));
    zero::thread_group group(world, {30s});
    group.run([&](zero::thread_communicator& c) { rank_body<T>(c, in, threads[static_cast<std::size_t>(c.rank())]); });
    const auto& expected = threads[static_cast<std::size_t>(rank)];
    REQUIRE(check_reference<T>(in, expected, rank, world) == "");

    for (bool checked : {false, true}) {
      CAPTURE(checked);
      zero::mpi_communicator comm(MPI_COMM_WORLD, {30s, checked});
      CHECK(comm.rank() == rank);
      CHECK(comm.world_size() == world);
      for (style how : {style::blocking, style::nonblocking_reverse, style::nonblocking_polled}) {
        CAPTURE(static_cast<int>(how));
        outputs<T> mine;
        const auto before = comm.traffic();
        rank_body<T>(comm, in, mine, how);
        mine.traffic = mine.traffic - before;
        CHECK(check_reference<T>(in, mine, rank, world) == "");
        CHECK(identical(mine, expected));  // bitwise, traffic counters included
      }
      CHECK(comm.sequence() == 3 * (13 + static_cast<std::uint64_t>(world)));
      CHECK_FALSE(comm.broken());
    }
  }
}

//! This rank's results of rooted reduces to every root: sum (odd ranks other than the root pass
//! a null recv, the others a buffer of sentinels), sum in place, max (NaN on one rank per element).
template <class T>
struct reduce_outputs {
  std::vector<std::vector<T>> sum, sum_inplace, max;  // per root
  zero::traffic_counters delta;
};

template <class T>
T reduce_sentinel(int rank) {
  return make_value<T>(hash(97, static_cast<std::uint64_t>(rank), 0));
}

//! Reduces to every root, blocking; or started as requests among an ireduce_scatter, an
//! ibroadcast and an iall_reduce per root, then waited in reverse order or polled.
template <class T>
reduce_outputs<T> run_reduce(zero::mpi_communicator& c, const inputs<T>& in, style how) {
  const int r = c.rank(), n = c.world_size();
  const std::size_t ur = static_cast<std::size_t>(r), un = static_cast<std::size_t>(n), count = in.count;
  reduce_outputs<T> o;
  o.sum.assign(un, std::vector<T>(count, reduce_sentinel<T>(r)));
  o.max.assign(un, std::vector<T>(count, reduce_sentinel<T>(r)));
  o.sum_inplace.assign(un, in.ar[ur]);
  std::vector<std::vector<T>> rs(un, std::vector<T>(count)), ar(un, std::vector<T>(count)), bc(un, in.bc[ur]);
  const auto before = c.traffic();
  std::vector<zero::mpi_request> requests;
  for (int root = 0; root < n; ++root) {
    const std::size_t uq = static_cast<std::size_t>(root);
    T* sum_recv = r != root && r % 2 == 1 ? nullptr : o.sum[uq].data();
    T* max_recv = r != root && r % 2 == 1 ? nullptr : o.max[uq].data();
    if (how == style::blocking) {
      c.reduce(in.ar[ur].data(), sum_recv, count, reduce_op::sum, root);
      c.reduce(o.sum_inplace[uq].data(), o.sum_inplace[uq].data(), count, reduce_op::sum, root);
      c.reduce(in.ar_max[ur].data(), max_recv, count, reduce_op::max, root);
    } else {
      requests.push_back(c.ireduce(in.ar[ur].data(), sum_recv, count, reduce_op::sum, root));
      requests.push_back(c.ireduce_scatter(in.rs[ur].data(), rs[uq].data(), count, reduce_op::sum));
      requests.push_back(c.ireduce(o.sum_inplace[uq].data(), o.sum_inplace[uq].data(), count, reduce_op::sum, root));
      requests.push_back(c.ibroadcast(bc[uq].data(), count, root));
      requests.push_back(c.ireduce(in.ar_max[ur].data(), max_recv, count, reduce_op::max, root));
      requests.push_back(c.iall_reduce(in.ar[ur].data(), ar[uq].data(), count, reduce_op::sum));
    }
  }
  if (how == style::nonblocking_reverse) {
    for (auto it = requests.rbegin(); it != requests.rend(); ++it) it->wait();
  } else if (how == style::nonblocking_polled) {
    for (bool all_done = false; !all_done;) {
      c.progress();
      all_done = true;
      for (std::size_t k = requests.size(); k-- > 0;) all_done = requests[k].test() && all_done;
    }
  }
  for (const auto& q : requests) CHECK(q.done());
  // the other collectives among them are right too
  std::size_t wrong = 0;
  for (std::size_t q = 0; q < (how == style::blocking ? 0 : un); ++q)
    for (std::size_t i = 0; i < count; ++i)
      wrong += !same_bits(bc[q][i], in.bc[q][i]) ||
               (c.options().reduction == zero::mpi_reduction::rank_ordered &&
                (!same_bits(rs[q][i], reference(in.rs, ur * count + i, reduce_op::sum)) || !same_bits(ar[q][i], reference(in.ar, i, reduce_op::sum))));
  CHECK(wrong == 0);
  o.delta = c.traffic() - before;
  if (how != style::blocking) {
    // take out what the other collectives counted
    o.delta.bytes[static_cast<std::size_t>(collective::reduce_scatter)] -= un * count * un * sizeof(T);
    o.delta.bytes[static_cast<std::size_t>(collective::broadcast)] -= un * count * sizeof(T);
    o.delta.bytes[static_cast<std::size_t>(collective::all_reduce)] -= un * 2 * count * sizeof(T);
  }
  return o;
}

//! Whether `got` is the sum of element `at` over the ranks to within `tolerance` times the sum
//! of the magnitudes (MPI's own reductions may add in any order, rounding partial sums).
template <class T>
bool close_to_sum(T got, const std::vector<std::vector<T>>& all, std::size_t at, double tolerance) {
  double magnitude = 0;
  for (const auto& v : all) magnitude += std::fabs(static_cast<double>(widen(v[at])));
  const double want = static_cast<double>(widen(reference(all, at, reduce_op::sum)));
  return std::fabs(static_cast<double>(widen(got)) - want) <= tolerance * magnitude;
}

//! "" or the first wrong result of `run_reduce` on this rank. On the root, rank-ordered results
//! are bitwise the reference and the root's slice of a rank-ordered reduce-scatter (`rs`,
//! `rs_max`: this rank's slices of the all-reduce inputs repeated n times); native sums are
//! within `tolerance`, native max and integer sums exact. Other ranks' memory is untouched.
template <class T>
std::string check_reduce(const inputs<T>& in, const reduce_outputs<T>& o, const std::vector<T>& rs, const std::vector<T>& rs_max,
                         int r, int n, bool native, double tolerance) {
  const std::size_t ur = static_cast<std::size_t>(r), count = in.count;
  for (int root = 0; root < n; ++root) {
    const std::size_t uq = static_cast<std::size_t>(root);
    const std::string at = " with root " + std::to_string(root) + " element ";
    for (std::size_t i = 0; i < count; ++i) {
      const std::string where = at + std::to_string(i);
      if (r == root) {
        const T sum = reference(in.ar, i, reduce_op::sum);
        if (!native || std::is_integral_v<T>) {
          if (!same_bits(o.sum[uq][i], sum) || !same_bits(o.sum_inplace[uq][i], sum)) return "reduce sum" + where;
          if (!same_bits(o.sum[uq][i], rs[i])) return "reduce sum differs from reduce_scatter" + where;
        } else if (!close_to_sum(o.sum[uq][i], in.ar, i, tolerance) || !close_to_sum(o.sum_inplace[uq][i], in.ar, i, tolerance)) {
          return "native reduce sum" + where;
        }
        if (!same_value(o.max[uq][i], reference(in.ar_max, i, reduce_op::max)) || !same_value(o.max[uq][i], rs_max[i]))
          return "reduce max" + where;
        if (!native && !same_bits(o.max[uq][i], rs_max[i])) return "reduce max differs from reduce_scatter" + where;
      } else {
        if (!same_bits(o.sum[uq][i], reduce_sentinel<T>(r))) return "reduce sum wrote" + where;
        if (!same_bits(o.sum_inplace[uq][i], in.ar[ur][i])) return "in-place reduce wrote" + where;
        if (!same_bits(o.max[uq][i], reduce_sentinel<T>(r))) return "reduce max wrote" + where;
      }
    }
  }
  const std::uint64_t calls = 3 * static_cast<std::uint64_t>(n), bytes = calls * count * sizeof(T);
  if (o.delta.calls_of(collective::reduce) != calls || o.delta.bytes_of(collective::reduce) != bytes || o.delta.total_bytes() != bytes)
    return "counted " + std::to_string(o.delta.bytes_of(collective::reduce)) + " bytes in " + std::to_string(o.delta.calls_of(collective::reduce)) +
           " reduces (" + std::to_string(o.delta.total_bytes()) + " bytes in all), expected " + std::to_string(bytes) + " in " +
           std::to_string(calls);
  return "";
}

//! Reduces to every root in one reduction mode, with and without the debug mode, blocking and
//! non-blocking, for counts on both sides of the one-gather limit (rank-ordered mode).
template <class T>
void check_reduce_mode(zero::mpi_reduction reduction, double tolerance = 0.0) {
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  const std::size_t un = static_cast<std::size_t>(world), ur = static_cast<std::size_t>(rank);
  const std::size_t large = zero::detail::mpi_gather_reduce_bytes / sizeof(T) + 37;  // reduce-scatter, then gather
  static_assert(1000 * sizeof(double) <= zero::detail::mpi_gather_reduce_bytes);     // one gather
  zero::mpi_communicator ordered(MPI_COMM_WORLD, {30s});  // the rank-ordered reduce-scatter to compare with
  for (std::size_t count : {std::size_t{0}, std::size_t{1}, std::size_t{37}, std::size_t{1000}, large}) {
    CAPTURE(count);
    CAPTURE(zero::type_name<T>());
    const inputs<T> in(world, count);
    std::vector<T> repeated, repeated_max, rs(count), rs_max(count);
    for (std::size_t q = 0; q < un; ++q) {
      repeated.insert(repeated.end(), in.ar[ur].begin(), in.ar[ur].end());
      repeated_max.insert(repeated_max.end(), in.ar_max[ur].begin(), in.ar_max[ur].end());
    }
    ordered.reduce_scatter(repeated.data(), rs.data(), count, reduce_op::sum);
    ordered.reduce_scatter(repeated_max.data(), rs_max.data(), count, reduce_op::max);
    for (bool checked : {false, true}) {
      CAPTURE(checked);
      zero::mpi_communicator comm(MPI_COMM_WORLD, {30s, checked, reduction});
      std::vector<reduce_outputs<T>> results;
      for (style how : {style::blocking, style::nonblocking_reverse, style::nonblocking_polled}) {
        CAPTURE(static_cast<int>(how));
        results.push_back(run_reduce<T>(comm, in, how));
        CHECK(check_reduce<T>(in, results.back(), rs, rs_max, rank, world, reduction == zero::mpi_reduction::native, tolerance) == "");
      }
      if (reduction == zero::mpi_reduction::rank_ordered)
        for (std::size_t k = 1; k < results.size(); ++k)
          for (std::size_t q = 0; q < un; ++q) {
            CHECK(identical(results[k].sum[q], results[0].sum[q]));
            CHECK(identical(results[k].sum_inplace[q], results[0].sum_inplace[q]));
            CHECK(identical(results[k].max[q], results[0].max[q]));
          }
      CHECK(comm.sequence() == 3 * un + 2 * 6 * un);
      CHECK_FALSE(comm.broken());
    }
  }
}

//! A communicator with the debug mode, in which the ranks disagree at call #2: every rank
//! must throw the same mismatch_error, and the communicator is unusable after it.
template <class F>
std::string reduce_mismatch(F&& body) {
  zero::mpi_communicator comm(MPI_COMM_WORLD, {30s, true});
  comm.barrier();  // call #1 agrees
  std::string message;
  try {
    body(comm);
  } catch (const zero::mismatch_error& e) {
    message = e.what();
  }
  REQUIRE_FALSE(message.empty());
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : message) h = (h ^ ch) * 0x100000001b3ull;
  std::vector<std::uint64_t> all(static_cast<std::size_t>(comm.world_size()));
  MPI_Allgather(&h, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD);
  for (auto x : all) CHECK(x == all[0]);  // the same text on every rank
  CHECK(comm.broken());
  CHECK_THROWS_AS(comm.barrier(), zero::communicator_error);
  return message;
}

}  // namespace

static_assert(zero::communicator<zero::mpi_communicator>);
static_assert(zero::nonblocking_communicator<zero::mpi_communicator>);
static_assert(zero::nonblocking_rooted_communicator<zero::mpi_communicator>);
// an engine and the requests in flight keep the communicator's address: neither copy nor move
static_assert(!std::is_copy_constructible_v<zero::mpi_communicator> && !std::is_move_constructible_v<zero::mpi_communicator> &&
              !std::is_copy_assignable_v<zero::mpi_communicator> && !std::is_move_assignable_v<zero::mpi_communicator>);

TEST_SUITE("mpi") {
  TEST_CASE("mpi_communicator: collectives equal thread_communicator bitwise for fp32") { check_against_threads<float>(); }
  TEST_CASE("mpi_communicator: collectives equal thread_communicator bitwise for fp64") { check_against_threads<double>(); }
  TEST_CASE("mpi_communicator: collectives equal thread_communicator bitwise for bf16") { check_against_threads<bf16>(); }
  TEST_CASE("mpi_communicator: collectives equal thread_communicator bitwise for fp16") { check_against_threads<fp16>(); }
  TEST_CASE("mpi_communicator: collectives equal thread_communicator bitwise for u64 and i32") {
    check_against_threads<std::uint64_t>();
    check_against_threads<std::int32_t>();
  }

  TEST_CASE("mpi_communicator: reduce and ireduce to every root equal the rank-ordered reduce-scatter bitwise") {
    check_reduce_mode<float>(zero::mpi_reduction::rank_ordered);
    check_reduce_mode<double>(zero::mpi_reduction::rank_ordered);
    check_reduce_mode<bf16>(zero::mpi_reduction::rank_ordered);
    check_reduce_mode<fp16>(zero::mpi_reduction::rank_ordered);
    check_reduce_mode<std::uint64_t>(zero::mpi_reduction::rank_ordered);
  }

  TEST_CASE("mpi_communicator: native reduce and ireduce to every root hand the sum to MPI") {
    const double n = static_cast<double>(zero::mpi_communicator(MPI_COMM_WORLD, {30s}).world_size());
    check_reduce_mode<float>(zero::mpi_reduction::native, 1e-6);
    check_reduce_mode<double>(zero::mpi_reduction::native, 1e-14);
    check_reduce_mode<bf16>(zero::mpi_reduction::native, n * 0x1.0p-8);
    check_reduce_mode<fp16>(zero::mpi_reduction::native, n * 0x1.0p-11);
    check_reduce_mode<std::uint64_t>(zero::mpi_reduction::native);
  }

  TEST_CASE("mpi_communicator: reduce equals thread_communicator's reduce bitwise") {
    int rank = 0, world = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    const std::size_t count = zero::detail::mpi_gather_reduce_bytes / sizeof(float) + 5;
    for (std::size_t n : {std::size_t{37}, count}) {
      CAPTURE(n);
      const inputs<float> in(world, n);
      const int root = world - 1;
      std::vector<float> threads(n), mine(n);
      zero::thread_group group(world, {30s});
      group.run([&](zero::thread_communicator& c) {
        const auto ur = static_cast<std::size_t>(c.rank());
        c.reduce(in.ar[ur].data(), c.rank() == root ? threads.data() : nullptr, n, reduce_op::sum, root);
      });
      zero::mpi_communicator comm(MPI_COMM_WORLD, {30s});
      comm.reduce(in.ar[static_cast<std::size_t>(rank)].data(), mine.data(), n, reduce_op::sum, root);
      if (rank == root) CHECK(identical(mine, threads));
      else CHECK(identical(mine, std::vector<float>(n)));
    }
  }

  TEST_CASE("mpi_communicator: the debug mode names a rank that reduces to a different root") {
    const int last = mpi_world_size() - 1;
    std::vector<float> recv(8, 7.0f);
    std::string message = reduce_mismatch([&](zero::mpi_communicator& c) {
      const std::vector<float> send(8, 1.0f);
      c.reduce(send.data(), recv.data(), 8, reduce_op::sum, c.rank() == last ? 1 : 0);
    });
    CHECK(contains(message, "collective mismatch at call #2"));
    CHECK(contains(message, "most ranks call reduce<fp32>(count 8, root 0, sum)"));
    CHECK(contains(message, "rank " + std::to_string(last) + " calls reduce<fp32>(count 8, root 1, sum)"));
    for (float x : recv) CHECK(x == 7.0f);  // no data moved
    // non-blocking: checked at the call
    message = reduce_mismatch([&](zero::mpi_communicator& c) {
      std::vector<bf16> data(4);
      auto q = c.ireduce(data.data(), data.data(), 4, c.rank() == last ? reduce_op::max : reduce_op::sum, 0);
      q.wait();
    });
    CHECK(contains(message, "rank " + std::to_string(last) + " calls reduce<bf16>(count 4, root 0, max)"));
    message = reduce_mismatch([&](zero::mpi_communicator& c) {
      std::vector<double> data(4);
      if (c.rank() == 0) c.broadcast(data.data(), 4, 0);
      else c.reduce(data.data(), data.data(), 4, reduce_op::sum, 0);
    });
    if (mpi_world_size() > 2) CHECK(contains(message, "most ranks call reduce<fp64>(count 4, root 0, sum); rank 0 calls broadcast<fp64>(count 4, root 0)"));
    else CHECK(contains(message, "most ranks call broadcast<fp64>(count 4, root 0); rank 1 calls reduce<fp64>(count 4, root 0, sum)"));
  }

  TEST_CASE("mpi_communicator: native reductions use MPI with user-defined ops for bf16 and fp16") {
    zero::mpi_communicator comm(MPI_COMM_WORLD, {30s, false, zero::mpi_reduction::native});
    const int r = comm.rank(), n = comm.world_size();
    const std::size_t un = static_cast<std::size_t>(n), count = 37;
    auto run = [&](auto tag, double tolerance) {
      using T = decltype(tag);
      CAPTURE(zero::type_name<T>());
      const inputs<T> in(n, count);
      const std::size_t ur = static_cast<std::size_t>(r);
      std::vector<T> rs(count), rs_max(count), ar(count), ar_max(count), ar_inplace = in.ar[ur], rs_inplace = in.rs[ur];
      comm.reduce_scatter(in.rs[ur].data(), rs.data(), count, reduce_op::sum);
      comm.reduce_scatter(in.rs_max[ur].data(), rs_max.data(), count, reduce_op::max);
      auto q1 = comm.iall_reduce(in.ar[ur].data(), ar.data(), count, reduce_op::sum);
      auto q2 = comm.iall_reduce(in.ar_max[ur].data(), ar_max.data(), count, reduce_op::max);
      q2.wait();
      q1.wait();
      comm.all_reduce(ar_inplace.data(), ar_inplace.data(), count);
      comm.reduce_scatter(rs_inplace.data(), rs_inplace.data() + ur * count, count);
      std::size_t far = 0, wrong_max = 0;
      auto close = [&](T got, const std::vector<std::vector<T>>& all, std::size_t at) {
        // bound: tolerance x the sum of magnitudes (MPI may add in any order, rounding partial sums)
        double magnitude = 0;
        for (const auto& v : all) magnitude += std::fabs(static_cast<double>(widen(v[at])));
        const double want = static_cast<double>(widen(reference(all, at, reduce_op::sum)));
        return std::fabs(static_cast<double>(widen(got)) - want) <= tolerance * magnitude;
      };
      for (std::size_t i = 0; i < count; ++i) {
        far += !close(rs[i], in.rs, ur * count + i) + !close(ar[i], in.ar, i) + !close(ar_inplace[i], in.ar, i) +
               !close(rs_inplace[ur * count + i], in.rs, ur * count + i);
        wrong_max += !same_value(rs_max[i], reference(in.rs_max, ur * count + i, reduce_op::max)) +
                     !same_value(ar_max[i], reference(in.ar_max, i, reduce_op::max));
      }
      CHECK(far == 0);
      CHECK(wrong_max == 0);  // max is exact, and NaN from any rank propagates
    };
    run(float{}, 1e-6);
    run(double{}, 1e-14);
    run(bf16{}, static_cast<double>(un) * 0x1.0p-8);
    run(fp16{}, static_cast<double>(un) * 0x1.0p-11);
    run(std::uint64_t{}, 0.0);
    CHECK(comm.traffic().calls_of(collective::all_reduce) == 5u * 3u);
  }

  TEST_CASE("mpi_communicator: two-phase collectives waited in different orders on different ranks complete") {
    // all-reduce runs two MPI collectives; their second phases must start in the same order on
    // every rank whatever order each rank waits in
    zero::mpi_communicator comm(MPI_COMM_WORLD, {30s});
    const int r = comm.rank(), n = comm.world_size();
    constexpr int k = 12;
    std::vector<std::vector<float>> bufs(k);
    std::vector<zero::mpi_request> requests;
    for (int j = 0; j < k; ++j) {
      bufs[static_cast<std::size_t>(j)].assign(static_cast<std::size_t>(100 + j), static_cast<float>(r + j));
      auto& b = bufs[static_cast<std::size_t>(j)];
      requests.push_back(comm.iall_reduce(b.data(), b.data(), b.size()));
    }
    // odd ranks wait backwards, even ranks forwards; a blocking collective in between
    float x = 1.0f, y = 0.0f;
    if (r % 2 == 1) {
      for (int j = k; j-- > k / 2;) requests[static_cast<std::size_t>(j)].wait();
      comm.all_reduce(&x, &y, 1);
      for (int j = k / 2; j-- > 0;) requests[static_cast<std::size_t>(j)].wait();
    } else {
      comm.all_reduce(&x, &y, 1);
      for (auto& q : requests) q.wait();
    }
    CHECK(y == static_cast<float>(n));
    const float ranks = static_cast<float>(n * (n - 1) / 2);
    std::size_t wrong = 0;
    for (int j = 0; j < k; ++j)
      for (float v : bufs[static_cast<std::size_t>(j)]) wrong += v != ranks + static_cast<float>(n * j);
    CHECK(wrong == 0);
    // a request destroyed before it is waited completes in its destructor; a moved one moves
    std::vector<float> a(10, 1.0f), b(10, 2.0f);
    {
      auto q = comm.iall_reduce(a.data(), a.data(), a.size());
      zero::mpi_request moved = std::move(q);
      CHECK(q.done());
      auto other = comm.iall_gather(b.data() + r, b.data(), 1);
      moved = std::move(other);  // the first completes here
      CHECK(a[0] == static_cast<float>(n));
    }
    CHECK(b[0] == 2.0f);
    CHECK_FALSE(comm.broken());
  }

  TEST_CASE("mpi_communicator: works on a sub-communicator the user passes in") {
    int world_rank = 0, world = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    MPI_Comm half = MPI_COMM_NULL;
    MPI_Comm_split(MPI_COMM_WORLD, world_rank % 2, world_rank, &half);
    {
      zero::mpi_communicator comm(half, {30s, true});
      const int expected_size = (world + (world_rank % 2 == 0 ? 1 : 0)) / 2;
      CHECK(comm.world_size() == expected_size);
      CHECK(comm.rank() == world_rank / 2);
      // sum of the world ranks in my half, and the half's bf16 all-gather
      std::uint64_t mine = static_cast<std::uint64_t>(world_rank), sum = 0;
      comm.all_reduce(&mine, &sum, 1);
      std::uint64_t want = 0;
      for (int q = world_rank % 2; q < world; q += 2) want += static_cast<std::uint64_t>(q);
      CHECK(sum == want);
      const bf16 me(static_cast<float>(world_rank));
      std::vector<bf16> all(static_cast<std::size_t>(comm.world_size()));
      comm.all_gather(&me, all.data(), 1);
      for (int q = 0; q < comm.world_size(); ++q) CHECK(static_cast<float>(all[static_cast<std::size_t>(q)]) == static_cast<float>(2 * q + world_rank % 2));
      // the caller's communicator is untouched: its own collectives still work alongside
      int one = 1, count = 0;
      MPI_Allreduce(&one, &count, 1, MPI_INT, MPI_SUM, half);
      CHECK(count == expected_size);
    }
    MPI_Comm_free(&half);
  }

  TEST_CASE("mpi_communicator: bad arguments are usage errors that leave it usable") {
    CHECK_THROWS_AS(zero::mpi_communicator(MPI_COMM_NULL), zero::usage_error);
    CHECK_THROWS_AS(zero::mpi_communicator(MPI_COMM_WORLD, {0ms}), zero::usage_error);
    zero::mpi_communicator comm(MPI_COMM_WORLD, {30s});
    float x = 1.0f;
    CHECK_THROWS_WITH_AS(comm.broadcast(&x, 1, comm.world_size()), doctest::Contains("broadcast root"), zero::usage_error);
    CHECK_THROWS_WITH_AS(comm.broadcast(&x, 1, -1), doctest::Contains("outside a group of"), zero::usage_error);
    const std::string on_rank = " on rank " + std::to_string(comm.rank());
    const std::string too_large = "reduce root " + std::to_string(comm.world_size()) + on_rank, negative = "reduce root -1" + on_rank;
    CHECK_THROWS_WITH_AS(comm.reduce(&x, &x, 1, reduce_op::sum, comm.world_size()), doctest::Contains(too_large.c_str()), zero::usage_error);
    CHECK_THROWS_WITH_AS((void)comm.ireduce(&x, &x, 1, reduce_op::max, -1), doctest::Contains(negative.c_str()), zero::usage_error);
    const std::size_t huge = static_cast<std::size_t>(std::numeric_limits<int>::max()) + 1;
    CHECK_THROWS_WITH_AS(comm.all_reduce(&x, &x, huge), doctest::Contains("MPI's int counts"), zero::usage_error);
    CHECK_FALSE(comm.broken());
    comm.all_reduce(&x, &x, 1);
    CHECK(x == static_cast<float>(comm.world_size()));
    CHECK(comm.sequence() == 1u);
    CHECK(comm.native_handle() != MPI_COMM_NULL);
    CHECK(comm.options().timeout == 30s);
    CHECK(zero::detail::mpi_error_text(MPI_ERR_TRUNCATE).find("code") != std::string::npos);
  }
}
