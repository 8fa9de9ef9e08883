#pragma once
//! @file communicator.hpp
//! The Communicator policy: one rank's endpoint of a group of ranks, with the blocking
//! collectives ZeRO needs. Ships `single_rank_communicator`; `thread_communicator.hpp` runs N
//! ranks as threads of one process.
//!
//! Every communicator counts the bytes it moves per kind of collective, per rank, as the
//! payload the collective carries on this rank: a reduce-scatter counts its whole input, an
//! all-gather its whole output, an all-reduce twice its buffer (a reduce-scatter followed by an
//! all-gather), a broadcast its buffer, a reduce (to one root) its input. With these counts one ZeRO stage-2 step (reduce-scatter
//! of the gradients, all-gather of the parameters) moves what one plain data-parallel
//! all-reduce moves, as in the ZeRO paper. Multiply by (n-1)/n for nccl-tests' bus bytes.

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "zero/error.hpp"
#include "zero/types.hpp"

namespace zero {

//! How a reduction combines the ranks' values.
enum class reduce_op : std::uint8_t {
  sum,  //!< in rank order 0, 1, ..., n-1, so results are bitwise reproducible
  max,  //!< NaN-propagating: a NaN on any rank gives NaN
};

//! The kinds of collective a communicator counts.
enum class collective : std::uint8_t { reduce_scatter, all_gather, all_reduce, broadcast, barrier, reduce };
inline constexpr std::size_t collective_kinds = 6;

constexpr std::string_view to_string(collective c) noexcept {
  constexpr std::string_view names[] = {"reduce_scatter", "all_gather", "all_reduce", "broadcast", "barrier", "reduce"};
  return names[static_cast<std::size_t>(c)];
}

//! Bytes and calls per kind of collective, on one rank (see the file comment for the counting rule).
struct traffic_counters {
  std::array<std::uint64_t, collective_kinds> bytes{};
  std::array<std::uint64_t, collective_kinds> calls{};

  std::uint64_t bytes_of(collective c) const noexcept { return bytes[static_cast<std::size_t>(c)]; }
  std::uint64_t calls_of(collective c) const noexcept { return calls[static_cast<std::size_t>(c)]; }
  std::uint64_t total_bytes() const noexcept {
    std::uint64_t t = 0;
    for (auto b : bytes) t += b;
    return t;
  }
  void add(collective c, std::uint64_t b) noexcept {
    bytes[static_cast<std::size_t>(c)] += b;
    calls[static_cast<std::size_t>(c)] += 1;
  }
  friend traffic_counters operator-(traffic_counters a, const traffic_counters& b) noexcept {
    for (std::size_t i = 0; i < collective_kinds; ++i) {
      a.bytes[i] -= b.bytes[i];
      a.calls[i] -= b.calls[i];
    }
    return a;
  }
};

//! Element types a communicator must reduce (sum and max) and move.
template <class T>
concept reducible = element_type<T> || std::same_as<T, std::uint64_t> || std::same_as<T, std::int64_t> ||
                    std::same_as<T, std::uint32_t> || std::same_as<T, std::int32_t>;

namespace detail {

//! Combines `value` into `acc`; 16-bit floats are combined in float by the caller.
template <class T>
constexpr T combine(T acc, T value, reduce_op op) noexcept {
  if (op == reduce_op::sum) return static_cast<T>(acc + value);
  if constexpr (std::is_floating_point_v<T>) {
    if (value != value) return value;  // NaN propagates
    if (acc != acc) return acc;
  }
  return value > acc ? value : acc;
}

//! out[i] = op over ranks r = 0..n-1 of in(r)[i], in rank order, for i in [0, count).
//! bf16 and fp16 are widened to float, combined, and rounded once.
template <class T, class InputOf>
void reduce_ranks(T* out, std::size_t count, int world_size, InputOf&& input_of, reduce_op op) {
  using wide = std::conditional_t<std::is_same_v<T, bf16> || std::is_same_v<T, fp16>, float, T>;
  if (world_size == 1) {  // a group of one: the input is the result
    const T* in = input_of(0);
    if (in != out && count != 0) std::memmove(static_cast<void*>(out), static_cast<const void*>(in), count * sizeof(T));
    return;
  }
  for (std::size_t i = 0; i < count; ++i) {
    wide acc = static_cast<wide>(input_of(0)[i]);
    for (int r = 1; r < world_size; ++r) acc = combine<wide>(acc, static_cast<wide>(input_of(r)[i]), op);
    if constexpr (std::is_same_v<wide, T>) out[i] = acc;
    else out[i] = T(acc);
  }
}

}  // namespace detail

//! A Communicator: one rank's endpoint of a group, with blocking collectives over raw memory.
//! @pre send and receive buffers hold the counts stated per function, and a receive buffer
//!      does not overlap another rank's buffers. In-place use is allowed where stated.
//! On failure a collective throws (`timeout_error`, `mismatch_error`, `communicator_error`); it
//! never hangs past its deadline.
template <class C, class T>
concept communicates = requires(C& c, const T* send, T* recv, std::size_t n, reduce_op op, int root) {
  c.reduce_scatter(send, recv, n, op);  // send: n * world_size elements, recv: n
  c.all_gather(send, recv, n);          // send: n, recv: n * world_size
  c.all_reduce(send, recv, n, op);      // n elements each; send == recv allowed
  c.broadcast(recv, n, root);
};

template <class C>
concept communicator = requires(C& c, const C& cc) {
  { cc.rank() } -> std::convertible_to<int>;
  { cc.world_size() } -> std::convertible_to<int>;
  { cc.traffic() } -> std::convertible_to<traffic_counters>;
  c.barrier();
} && communicates<C, float> && communicates<C, bf16> && communicates<C, fp16> && communicates<C, double> &&
                       communicates<C, std::uint64_t>;

//! A started collective: `wait()` completes it (and throws what the blocking form would throw),
//! `done()` says whether it has completed. Move-only types qualify.
template <class R>
concept collective_request = std::movable<R> && std::default_initializable<R> && requires(R& r, const R& cr) {
  r.wait();
  { cr.done() } -> std::convertible_to<bool>;
};

template <class C, class T>
concept starts_collectives = requires(C& c, const T* send, T* recv, std::size_t n, reduce_op op) {
  { c.ireduce_scatter(send, recv, n, op) } -> collective_request;
  { c.iall_gather(send, recv, n) } -> collective_request;
  { c.iall_reduce(send, recv, n, op) } -> collective_request;
};

//! A Communicator with non-blocking forms, which the engine uses to pipeline its reductions
//! and all-gathers (`layout_options::staging_buffers`). Each `i...` form starts the collective
//! and returns a request, all of one type; the buffers stay untouched by the caller until the
//! request completes. Every rank starts its collectives, blocking and non-blocking, in the
//! same order. `progress()` lets the communicator advance what is in flight; the engine calls
//! it while the framework reports gradients.
template <class C>
concept nonblocking_communicator =
    communicator<C> && starts_collectives<C, float> && starts_collectives<C, bf16> && starts_collectives<C, fp16> &&
    starts_collectives<C, double> && requires(C& c, const float* s, float* r, const bf16* sb, bf16* rb, std::size_t n) {
      c.progress();
      requires std::same_as<decltype(c.ireduce_scatter(s, r, n, reduce_op::sum)), decltype(c.iall_gather(sb, rb, n))>;
      requires std::same_as<decltype(c.ireduce_scatter(s, r, n, reduce_op::sum)),
                            decltype(c.iall_reduce(s, r, n, reduce_op::sum))>;
    };

template <class C, class T>
concept reduces_to_root = requires(C& c, const T* send, T* recv, std::size_t n, reduce_op op, int root) {
  c.reduce(send, recv, n, op, root);  // send: n elements on every rank; recv: n, written on `root` only
};

//! A Communicator with a rooted reduce: `reduce(send, recv, count, op, root)` leaves in `recv` on
//! rank `root` the reduction over all ranks of their `count` elements of `send` (a sum in rank
//! order, as every reduction), and writes nothing on the other ranks (their `recv` may be null);
//! `send == recv` is allowed. The engine reduces a unit that one rank owns whole (the contiguous
//! partitioner's buckets, DeepSpeed's reduce to the owning rank) with it; a communicator without
//! it has such a unit all-reduced instead, which moves twice the bytes.
template <class C>
concept rooted_communicator = communicator<C> && reduces_to_root<C, float> && reduces_to_root<C, bf16> &&
                              reduces_to_root<C, fp16> && reduces_to_root<C, double>;

template <class C, class T>
concept starts_rooted_collectives = requires(C& c, const T* send, T* recv, T* data, std::size_t n, reduce_op op, int root) {
  { c.ireduce(send, recv, n, op, root) } -> collective_request;
  { c.ibroadcast(data, n, root) } -> collective_request;
};

//! A non-blocking communicator whose rooted collectives have non-blocking forms too (`ireduce`,
//! `ibroadcast`), returning the request type of its other `i...` forms; the engine then pipelines
//! owner units as it pipelines the others.
template <class C>
concept nonblocking_rooted_communicator =
    nonblocking_communicator<C> && rooted_communicator<C> && starts_rooted_collectives<C, float> &&
    starts_rooted_collectives<C, bf16> && starts_rooted_collectives<C, fp16> && starts_rooted_collectives<C, double> &&
    requires(C& c, const float* s, float* r, const bf16* sb, bf16* rb, std::size_t n) {
      requires std::same_as<decltype(c.ireduce(s, r, n, reduce_op::sum, 0)), decltype(c.ireduce_scatter(s, r, n, reduce_op::sum))>;
      requires std::same_as<decltype(c.ibroadcast(rb, n, 0)), decltype(c.ireduce_scatter(s, r, n, reduce_op::sum))>;
      requires std::same_as<decltype(c.ireduce(sb, rb, n, reduce_op::sum, 0)), decltype(c.ireduce_scatter(s, r, n, reduce_op::sum))>;
    };

//! The communicator of a group of one: collectives copy, nothing is sent anywhere.
class single_rank_communicator {
 public:
  single_rank_communicator() = default;
  //! Neither copyable nor movable, like every shipped communicator: an engine keeps its address.
  single_rank_communicator(const single_rank_communicator&) = delete;
  single_rank_communicator& operator=(const single_rank_communicator&) = delete;

  int rank() const noexcept { return 0; }
  int world_size() const noexcept { return 1; }
  const traffic_counters& traffic() const noexcept { return traffic_; }

  template <reducible T>
  void reduce_scatter(const T* send, T* recv, std::size_t count, reduce_op = reduce_op::sum) {
    copy(send, recv, count);
    traffic_.add(collective::reduce_scatter, count * sizeof(T));
  }
  template <class T>
  void all_gather(const T* send, T* recv, std::size_t count) {
    copy(send, recv, count);
    traffic_.add(collective::all_gather, count * sizeof(T));
  }
  template <reducible T>
  void all_reduce(const T* send, T* recv, std::size_t count, reduce_op = reduce_op::sum) {
    copy(send, recv, count);
    traffic_.add(collective::all_reduce, 2 * count * sizeof(T));
  }
  template <class T>
  void broadcast(T*, std::size_t count, int root) {
    if (root != 0) throw usage_error("zero: broadcast root " + std::to_string(root) + " outside a group of 1 rank");
    traffic_.add(collective::broadcast, count * sizeof(T));
  }
  template <reducible T>
  void reduce(const T* send, T* recv, std::size_t count, reduce_op, int root) {
    if (root != 0) throw usage_error("zero: reduce root " + std::to_string(root) + " outside a group of 1 rank");
    copy(send, recv, count);
    traffic_.add(collective::reduce, count * sizeof(T));
  }
  void barrier() noexcept { traffic_.add(collective::barrier, 0); }

 private:
  template <class T>
  static void copy(const T* from, T* to, std::size_t count) noexcept {
    if (from != to && count != 0) std::memmove(to, from, count * sizeof(T));
  }
  traffic_counters traffic_;
};

static_assert(communicator<single_rank_communicator>);
static_assert(rooted_communicator<single_rank_communicator>);

}  // namespace zero
