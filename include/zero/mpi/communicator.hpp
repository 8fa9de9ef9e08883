#pragma once
//! @file mpi/communicator.hpp
//! `zero::mpi_communicator`: ranks as MPI processes, across processes and machines. A
//! Communicator (see `zero/communicator.hpp`) over a communicator the caller passes in, for
//! example MPI_COMM_WORLD or a sub-communicator of it. It never calls MPI_Init or MPI_Finalize:
//! the caller initializes MPI before constructing it and finalizes MPI after destroying it.
//!
//! * Determinism. By default (`mpi_reduction::rank_ordered`) no sum is left to MPI: a
//!   reduce-scatter is an all-to-all (MPI_Ialltoallv: each rank receives its slice from every
//!   other rank) followed by a local sum in rank order 0..n-1 on the rank that owns the slice
//!   (`detail::reduce_ranks`, bf16/fp16 widened to float and rounded once); an all-reduce is
//!   that reduce-scatter over uneven chunks followed by an all-gather (MPI_Iallgatherv). Results are bitwise equal
//!   to `thread_communicator`'s for the same world size, and the bytes each rank sends are the
//!   bus bytes of a ring algorithm: (n-1)/n of the buffer per reduce-scatter or all-gather.
//!   A rooted reduce of up to `detail::mpi_gather_reduce_bytes` per rank gathers every input
//!   to the root (MPI_Igatherv into the communicator's staging), which sums in rank order; a
//!   larger one is a reduce-scatter over chunks followed by a gather of the summed chunks
//!   into the root's `recv`, so the root receives 2(n-1)/n of the buffer, not n-1 times it.
//!   `mpi_reduction::native` hands reductions to MPI instead (MPI_Ireduce_scatter_block,
//!   MPI_Iallreduce, MPI_Ireduce) with user-defined MPI_Ops for bf16/fp16 and for a
//!   NaN-propagating max.
//! * Faults. The communicator works on its own duplicates of the caller's communicator, with
//!   MPI_ERRORS_RETURN: an MPI error becomes a `communicator_error` naming the MPI call, the
//!   error and the rank. Every collective runs non-blocking and is polled (MPI_Test, then
//!   yields and short sleeps) until it completes or its deadline passes; a rank that died or
//!   never arrives makes the others throw a `timeout_error` naming the collective, its sequence
//!   number and the elapsed time. Either failure leaves the communicator unusable.
//! * Mismatch detection. With `check_collectives` on, every collective first exchanges a
//!   signature (kind, element type, count, operation, root) and every rank throws the same
//!   `mismatch_error` naming the rank that diverges, before any data moves.
//! * Non-blocking forms. `ireduce_scatter`, `iall_gather`, `iall_reduce`, `ireduce`,
//!   `ibroadcast` and `ibarrier` return an `mpi_request`; `wait()` completes it. MPI advances
//!   requests only inside MPI calls: call `progress()` (or `test()`) now and then to overlap
//!   communication with computation.
//!
//! Traffic is counted as by every communicator (see `zero/communicator.hpp`), when a
//! collective completes. One communicator is used by one thread at a time; MPI_THREAD_SINGLE
//! or MPI_THREAD_FUNNELED suffice when that thread is the one that called MPI_Init.

#include <mpi.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "zero/communicator.hpp"
#include "zero/error.hpp"
#include "zero/types.hpp"

namespace zero {

//! Who reduces: `zero` in rank order (bitwise reproducible), or MPI's own algorithms.
enum class mpi_reduction : std::uint8_t {
  //! All-to-all (or a gather, for a small rooted reduce), then a sum in rank order 0..n-1 on
  //! the owning rank: results are bitwise equal to `thread_communicator`'s for the same world
  //! size. The default.
  rank_ordered,
  //! MPI_Ireduce_scatter_block / MPI_Iallreduce / MPI_Ireduce with MPI_SUM (fp32, fp64,
  //! integers), MPI_MAX (integers) and user-defined MPI_Ops (bf16/fp16 sums in float,
  //! NaN-propagating max). MPI may combine partial sums in any order, and 16-bit sums are
  //! rounded at every partial sum: results can differ in the last bits from `rank_ordered` and
  //! between world sizes.
  native,
};

constexpr std::string_view to_string(mpi_reduction r) noexcept {
  return r == mpi_reduction::rank_ordered ? "rank_ordered" : "native";
}

//! Run-time options of an `mpi_communicator`. Every rank passes the same `check_collectives`
//! and `reduction` (checked at construction); timeouts may differ.
struct mpi_communicator_options {
  //! Deadline of each collective, from the call that starts it; also of the construction.
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
  //! Debug mode: before every collective, all ranks check that they call the same collective
  //! (kind, element type, count, operation, root); a rank that diverges is named in a
  //! `mismatch_error` thrown on every rank. Costs one small all-gather per collective, and a
  //! non-blocking collective waits at its call until every rank has made it.
  bool check_collectives = false;
  mpi_reduction reduction = mpi_reduction::rank_ordered;
  //! Testing hook: when set, this rank calls it inside every collective, each time a phase's
  //! data has arrived and before this rank reads it or starts the next phase (for example to
  //! sleep a random time, so that soak tests meet other interleavings of the processes).
  //! Not compared between ranks.
  std::function<void(int rank, collective kind, std::uint64_t sequence)> inside_collective{};
};

class mpi_communicator;

namespace detail {

using mpi_clock = std::chrono::steady_clock;

//! "MPI_ERR_TRUNCATE: message truncated" style text for an MPI error code.
inline std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error code " + std::to_string(code);
  int error_class = 0;
  std::string out(text, static_cast<std::size_t>(std::max(length, 0)));
  if (MPI_Error_class(code, &error_class) == MPI_SUCCESS && error_class != code)
    out += " (error class " + std::to_string(error_class) + ")";
  return out + " (code " + std::to_string(code) + ")";
}

//! The MPI datatype that moves `T` (16-bit floats move as MPI_UINT16_T; other trivially
//! copyable types as bytes, `mpi_scale<T>` bytes per element).
template <class T>
MPI_Datatype mpi_type() noexcept {
  if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
  else if constexpr (std::is_same_v<T, double>) return MPI_DOUBLE;
  else if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, fp16>) return MPI_UINT16_T;
  else if constexpr (std::is_same_v<T, std::uint64_t>) return MPI_UINT64_T;
  else if constexpr (std::is_same_v<T, std::int64_t>) return MPI_INT64_T;
  else if constexpr (std::is_same_v<T, std::uint32_t>) return MPI_UINT32_T;
  else if constexpr (std::is_same_v<T, std::int32_t>) return MPI_INT32_T;
  else return MPI_BYTE;
}
//! A number for each element type, exchanged by the debug mode's signature check.
template <class T>
constexpr std::uint64_t type_code() noexcept {
  if constexpr (std::is_same_v<T, float>) return 1;
  else if constexpr (std::is_same_v<T, double>) return 2;
  else if constexpr (std::is_same_v<T, bf16>) return 3;
  else if constexpr (std::is_same_v<T, fp16>) return 4;
  else if constexpr (std::is_same_v<T, std::uint64_t>) return 5;
  else if constexpr (std::is_same_v<T, std::int64_t>) return 6;
  else if constexpr (std::is_same_v<T, std::uint32_t>) return 7;
  else if constexpr (std::is_same_v<T, std::int32_t>) return 8;
  else return 9;
}
//! Elements MPI counts per element of `T`: 1, or sizeof(T) for types moved as bytes.
template <class T>
constexpr std::size_t mpi_scale = type_code<T>() == 9 ? sizeof(T) : 1;

inline std::string type_code_name(std::uint64_t code, std::uint64_t size) {
  constexpr std::string_view names[] = {"?", "fp32", "fp64", "bf16", "fp16", "u64", "i64", "u32", "i32"};
  if (code >= 1 && code <= 8) return std::string(names[code]);
  return "user(" + std::to_string(size) + " bytes)";
}

//! MPI user functions: inout[i] = in[i] op inout[i], 16-bit floats combined in float.
template <class T, reduce_op Op>
void mpi_user_reduce(void* in, void* inout, int* length, MPI_Datatype*) {
  using wide = std::conditional_t<std::is_same_v<T, bf16> || std::is_same_v<T, fp16>, float, T>;
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *length; ++i) {
    const wide v = combine<wide>(static_cast<wide>(a[i]), static_cast<wide>(b[i]), Op);
    if constexpr (std::is_same_v<wide, T>) b[i] = v;
    else b[i] = T(v);
  }
}

//! A rank-ordered reduce (to one root) of at most this many bytes per rank is one gather of
//! every input to the root; a larger one is a reduce-scatter and a gather of the sums (two
//! MPI collectives, but the root receives 2(n-1)/n of the buffer instead of n-1 times it and
//! the sum is spread over the ranks).
inline constexpr std::size_t mpi_gather_reduce_bytes = 32 * 1024;

//! Memory the communicator lends an operation (staging for all-to-all results, copies of
//! overlapping inputs); returned to the communicator's pool when the operation completes.
struct mpi_scratch {
  std::unique_ptr<std::byte[]> data;
  std::size_t bytes = 0;
};

//! One collective in flight: up to two phases, each one MPI request. Phases after the first
//! start in issue order across all operations (on a second duplicate), so that every rank
//! starts its MPI collectives in the same order whatever order it waits in.
struct mpi_operation {
  collective kind{};
  std::uint64_t sequence = 0;
  mpi_clock::time_point start{}, deadline{};
  MPI_Request request = MPI_REQUEST_NULL;
  int phase = 0;   // the phase running now
  int phases = 1;  // how many
  bool done = false;
  std::string failure;     // set when the communicator broke while this was in flight
  std::uint64_t bytes = 0;  // counted on completion
  const void* send = nullptr;
  void* recv = nullptr;
  std::size_t count = 0;
  reduce_op op = reduce_op::sum;
  int root = 0;                               // of a reduce
  mpi_scratch staging;                        // all-to-all or gather results
  mpi_scratch input;                          // a copy of an input that overlaps the output
  mpi_scratch partial;                        // a reduce's summed chunk on a rank other than the root
  std::vector<int> counts, displs, scounts, rcounts, rdispls;  // v-forms: must live until completion
  void (*complete_phase)(mpi_communicator&, mpi_operation&) = nullptr;  // ends the running phase

  bool in_last_phase() const noexcept { return done || phase + 1 >= phases; }
};

//! What MPI may still write into after a collective was abandoned (MPI cannot cancel a
//! collective): kept alive until the program ends, after MPI_Finalize.
inline void keep_until_exit(std::shared_ptr<void> what) {
  static std::mutex lock;
  static std::vector<std::shared_ptr<void>> kept;
  std::lock_guard guard(lock);
  kept.push_back(std::move(what));
}

//! Polling: MPI_Test at once, then yield, then sleep up to 200 us between tests, so that
//! oversubscribed ranks (more ranks than cores) leave the cores to the ranks they wait for.
class mpi_backoff {
 public:
  void pause() {
    ++polls_;
    if (polls_ < 64) return;
    if (polls_ < 512) {
      std::this_thread::yield();
      return;
    }
    sleep_ = std::min(sleep_ * 2 + std::chrono::microseconds(5), std::chrono::microseconds(200));
    std::this_thread::sleep_for(sleep_);
  }

 private:
  int polls_ = 0;
  std::chrono::microseconds sleep_{0};
};

}  // namespace detail

//! A collective in flight, started by one of `mpi_communicator`'s `i...` functions. Move-only.
//! Its buffers must stay valid and unchanged (send) or untouched (recv) until it completes.
//! A request destroyed before completion waits for it (any failure then shows at the
//! communicator's next call). @pre the communicator outlives its requests.
class mpi_request {
 public:
  mpi_request() = default;
  mpi_request(mpi_request&& other) noexcept : comm_(std::exchange(other.comm_, nullptr)), op_(std::move(other.op_)) {}
  mpi_request& operator=(mpi_request&& other) noexcept {
    if (this != &other) {
      finish_quietly();
      comm_ = std::exchange(other.comm_, nullptr);
      op_ = std::move(other.op_);
    }
    return *this;
  }
  mpi_request(const mpi_request&) = delete;
  mpi_request& operator=(const mpi_request&) = delete;
  ~mpi_request() { finish_quietly(); }

  //! Completes the collective. @throws timeout_error at its deadline, communicator_error if
  //! MPI failed or an earlier failure broke the communicator. A completed request waits no more.
  inline void wait();
  //! Advances every collective in flight; true when this one is complete. @throws as `wait`.
  inline bool test();
  //! Whether the collective has completed (or the request is empty).
  bool done() const noexcept { return op_ == nullptr || op_->done; }

 private:
  friend class mpi_communicator;
  mpi_request(mpi_communicator* comm, std::shared_ptr<detail::mpi_operation> op) : comm_(comm), op_(std::move(op)) {}
  inline void finish_quietly() noexcept;

  mpi_communicator* comm_ = nullptr;
  std::shared_ptr<detail::mpi_operation> op_;
};

//! One rank's endpoint of a group of MPI processes. Satisfies `zero::communicator`,
//! `zero::nonblocking_communicator`, `zero::rooted_communicator` and
//! `zero::nonblocking_rooted_communicator`.
//! Construction and destruction are collective over the caller's communicator.
class mpi_communicator {
 public:
  //! Duplicates `comm` (twice: collectives with two phases run their second on the other) and
  //! checks that every rank passed the same `check_collectives` and `reduction`.
  //! @pre MPI is initialized and not finalized; `comm` is an intracommunicator this rank belongs to.
  //! @throws usage_error (MPI not initialized, null communicator, non-positive timeout),
  //!         mismatch_error (options differ between ranks), timeout_error (a rank never came).
  explicit mpi_communicator(MPI_Comm comm, mpi_communicator_options options = {}) : options_(options) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized)
      throw usage_error(std::string("zero: mpi_communicator needs MPI ") + (finalized ? "not yet finalized" : "initialized") +
                        ": call MPI_Init (or MPI_Init_thread) first and MPI_Finalize after destroying the communicator; "
                        "zero never calls either");
    if (comm == MPI_COMM_NULL) throw usage_error("zero: mpi_communicator needs a communicator, got MPI_COMM_NULL");
    if (options.timeout.count() <= 0) throw usage_error("zero: mpi_communicator timeout must be positive");
    int inter = 0;
    call(MPI_Comm_test_inter(comm, &inter), "MPI_Comm_test_inter", "construction");
    if (inter) throw usage_error("zero: mpi_communicator needs an intracommunicator, got an intercommunicator");
    call(MPI_Comm_rank(comm, &rank_), "MPI_Comm_rank", "construction");
    call(MPI_Comm_size(comm, &world_), "MPI_Comm_size", "construction");
    const auto deadline = detail::mpi_clock::now() + options_.timeout;
    duplicate(comm, data_, deadline);
    duplicate(data_, second_, deadline);
    agree_on_options(deadline);
  }

  mpi_communicator(const mpi_communicator&) = delete;
  mpi_communicator& operator=(const mpi_communicator&) = delete;

  //! Completes the collectives still in flight and frees the duplicates and MPI_Ops. After a
  //! failure it frees nothing that MPI may still use (a timed-out collective cannot be
  //! cancelled in MPI): those few buffers and handles are left to MPI_Finalize.
  ~mpi_communicator() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) {
      release_after_failure();
      return;
    }
    if (!broken_) {
      try {
        for (auto& op : std::deque<std::shared_ptr<detail::mpi_operation>>(in_flight_)) wait(*op);
      } catch (...) {  // broken now: handled below
      }
    }
    if (broken_) {
      release_after_failure();
      return;
    }
    for (MPI_Op& op : ops_)
      if (op != MPI_OP_NULL) MPI_Op_free(&op);
    if (second_ != MPI_COMM_NULL) MPI_Comm_free(&second_);
    if (data_ != MPI_COMM_NULL) MPI_Comm_free(&data_);
  }

  int rank() const noexcept { return rank_; }
  int world_size() const noexcept { return world_; }
  const traffic_counters& traffic() const noexcept { return traffic_; }
  //! Collectives this rank has started (the sequence number of the next one, minus one).
  std::uint64_t sequence() const noexcept { return sequence_; }
  const mpi_communicator_options& options() const noexcept { return options_; }
  //! The duplicate the collectives run on (for tools; do not run collectives on it yourself).
  MPI_Comm native_handle() const noexcept { return data_; }
  //! Whether an earlier failure (timeout, mismatch, MPI error) made the communicator unusable.
  bool broken() const noexcept { return broken_; }
  //! Whether a failure left collectives abandoned in flight: MPI cannot cancel them, so they may
  //! still read their send buffers and write their receive buffers (until MPI_Finalize).
  //! Their buffers must then stay allocated; an engine keeps its own (see `~optimizer`).
  bool abandoned_collectives() const noexcept { return abandoned_; }

  // ---- blocking collectives (the Communicator concept) ----------------------------------

  //! recv[i] = op over ranks of send_r[rank * count + i]. In place: recv == send + rank * count.
  template <reducible T>
  void reduce_scatter(const T* send, T* recv, std::size_t count, reduce_op op = reduce_op::sum) {
    auto pending = start_reduce_scatter(send, recv, count, op);
    wait(*pending);
  }
  //! recv[r * count + i] = send_r[i]. In place: send == recv + rank * count.
  template <class T>
  void all_gather(const T* send, T* recv, std::size_t count) {
    auto pending = start_all_gather(send, recv, count);
    wait(*pending);
  }
  //! recv[i] = op over ranks of send_r[i]. In place: send == recv.
  template <reducible T>
  void all_reduce(const T* send, T* recv, std::size_t count, reduce_op op = reduce_op::sum) {
    auto pending = start_all_reduce(send, recv, count, op);
    wait(*pending);
  }
  //! data on every rank = data on `root`.
  template <class T>
  void broadcast(T* data, std::size_t count, int root) {
    auto pending = start_broadcast(data, count, root);
    wait(*pending);
  }
  //! On rank `root`: recv[i] = op over ranks of send_r[i]; nothing is written on the other ranks
  //! (their `recv` may be null). In place: send == recv.
  //! @throws usage_error if root is outside [0, world_size), before anything starts
  template <reducible T>
  void reduce(const T* send, T* recv, std::size_t count, reduce_op op, int root) {
    auto pending = start_reduce(send, recv, count, op, root);
    wait(*pending);
  }
  void barrier() {
    auto pending = start_barrier();
    wait(*pending);
  }

  // ---- non-blocking collectives -------------------------------------------------------

  //! As `reduce_scatter`, completed by the request's `wait()`. Every rank starts its
  //! collectives, blocking and non-blocking, in the same order; they may be waited in any order.
  template <reducible T>
  [[nodiscard]] mpi_request ireduce_scatter(const T* send, T* recv, std::size_t count, reduce_op op = reduce_op::sum) {
    return {this, start_reduce_scatter(send, recv, count, op)};
  }
  template <class T>
  [[nodiscard]] mpi_request iall_gather(const T* send, T* recv, std::size_t count) {
    return {this, start_all_gather(send, recv, count)};
  }
  template <reducible T>
  [[nodiscard]] mpi_request iall_reduce(const T* send, T* recv, std::size_t count, reduce_op op = reduce_op::sum) {
    return {this, start_all_reduce(send, recv, count, op)};
  }
  template <reducible T>
  [[nodiscard]] mpi_request ireduce(const T* send, T* recv, std::size_t count, reduce_op op, int root) {
    return {this, start_reduce(send, recv, count, op, root)};
  }
  template <class T>
  [[nodiscard]] mpi_request ibroadcast(T* data, std::size_t count, int root) {
    return {this, start_broadcast(data, count, root)};
  }
  [[nodiscard]] mpi_request ibarrier() { return {this, start_barrier()}; }

  //! Lets MPI advance every collective in flight (and start the second phase of those whose
  //! first completed). Cheap; call it from long computations to overlap communication.
  //! @throws as `mpi_request::wait`, for a failure of any collective in flight.
  void progress() {
    check_usable();
    progress_all();
  }

 private:
  friend class mpi_request;
  using op_ptr = std::shared_ptr<detail::mpi_operation>;
  using time_point = detail::mpi_clock::time_point;
  static constexpr std::size_t user_op_count = 6;

  // ---- starting collectives -----------------------------------------------------------

  template <class T>
  op_ptr start_reduce_scatter(const T* send, T* recv, std::size_t count, reduce_op op) {
    const std::size_t n = static_cast<std::size_t>(world_);
    auto o = begin<T>(collective::reduce_scatter, count, op, 0, count * n);
    o->send = send;
    o->recv = recv;
    o->count = count;
    o->op = op;
    o->bytes = count * sizeof(T) * n;
    if (options_.reduction == mpi_reduction::native) {
      // MPI writes recv while it reads send: an overlapping (in-place) input is copied first
      const T* input = stable_input(*o, send, count * n, recv, count);
      o->complete_phase = &finish_simple;
      call(MPI_Ireduce_scatter_block(input, recv, mpi_int(count), detail::mpi_type<T>(), reduction_op<T>(op), data_, &o->request),
           "MPI_Ireduce_scatter_block", *o);
    } else {
      for (int r = 0; r < world_; ++r) {
        o->counts.push_back(mpi_int(count));
        o->displs.push_back(mpi_int(static_cast<std::size_t>(r) * count));
      }
      o->complete_phase = &finish_reduce_scatter<T>;
      start_exchange<T>(*o, send, count);
    }
    return o;
  }

  template <class T>
  op_ptr start_all_gather(const T* send, T* recv, std::size_t count) {
    static_assert(std::is_trivially_copyable_v<T>, "zero::mpi_communicator moves trivially copyable types only");
    const std::size_t n = static_cast<std::size_t>(world_);
    auto o = begin<T>(collective::all_gather, count, reduce_op::sum, 0, count * n);
    o->bytes = count * sizeof(T) * n;
    o->complete_phase = &finish_simple;
    const std::size_t scaled = count * detail::mpi_scale<T>;
    if (send == recv + static_cast<std::size_t>(rank_) * count) {
      call(MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, recv, mpi_int(scaled), detail::mpi_type<T>(), data_, &o->request),
           "MPI_Iallgather", *o);
    } else {
      const T* input = stable_input(*o, send, count, recv, count * n);
      call(MPI_Iallgather(input, mpi_int(scaled), detail::mpi_type<T>(), recv, mpi_int(scaled), detail::mpi_type<T>(), data_,
                          &o->request),
           "MPI_Iallgather", *o);
    }
    return o;
  }

  template <class T>
  op_ptr start_all_reduce(const T* send, T* recv, std::size_t count, reduce_op op) {
    auto o = begin<T>(collective::all_reduce, count, op, 0, count);
    o->send = send;
    o->recv = recv;
    o->count = count;
    o->op = op;
    o->bytes = 2 * count * sizeof(T);
    if (options_.reduction == mpi_reduction::native) {
      o->complete_phase = &finish_simple;
      const void* input = send == recv ? MPI_IN_PLACE : stable_input(*o, send, count, recv, count);
      call(MPI_Iallreduce(input, recv, mpi_int(count), detail::mpi_type<T>(), reduction_op<T>(op), data_, &o->request),
           "MPI_Iallreduce", *o);
      return o;
    }
    // phase 1: rank r receives every rank's chunk r (uneven chunks: the first count % n are one longer)
    o->phases = 2;
    for (int r = 0; r < world_; ++r) {
      const auto [lo, hi] = chunk(count, r);
      o->counts.push_back(mpi_int(hi - lo));
      o->displs.push_back(mpi_int(lo));
    }
    o->complete_phase = &finish_all_reduce<T>;
    const auto [my_lo, my_hi] = chunk(count, rank_);
    start_exchange<T>(*o, send, my_hi - my_lo);
    return o;
  }

  //! The all-to-all of a rank-ordered reduction: rank r receives chunk r (`o.counts`,
  //! `o.displs`) of every other rank's `send` into the staging buffer, `mine` elements from each,
  //! in rank order without itself (its own chunk is read from `send` when the sum is taken).
  //! MPI writes only the staging buffer, so an in-place `recv` is safe.
  template <class T>
  void start_exchange(detail::mpi_operation& o, const T* send, std::size_t mine) {
    const std::size_t n = static_cast<std::size_t>(world_), me = static_cast<std::size_t>(rank_);
    o.scounts = o.counts;
    o.scounts[me] = 0;
    o.rcounts.assign(n, mpi_int(mine));
    o.rcounts[me] = 0;
    o.rdispls.resize(n);
    for (std::size_t r = 0; r < n; ++r) o.rdispls[r] = mpi_int(staging_slot(static_cast<int>(r)) * mine);
    o.staging = acquire((n - 1) * mine * sizeof(T));
    call(MPI_Ialltoallv(send, o.scounts.data(), o.displs.data(), detail::mpi_type<T>(), o.staging.data.get(), o.rcounts.data(),
                        o.rdispls.data(), detail::mpi_type<T>(), data_, &o.request),
         "MPI_Ialltoallv", o);
  }

  //! Where rank r's contribution lies in the staging buffer, in units of one chunk.
  std::size_t staging_slot(int r) const noexcept { return static_cast<std::size_t>(r < rank_ ? r : r - 1); }

  template <class T>
  op_ptr start_broadcast(T* data, std::size_t count, int root) {
    static_assert(std::is_trivially_copyable_v<T>, "zero::mpi_communicator moves trivially copyable types only");
    check_usable();
    if (root < 0 || root >= world_)
      throw usage_error("zero: broadcast root " + std::to_string(root) + " outside a group of " + std::to_string(world_));
    auto o = begin<T>(collective::broadcast, count, reduce_op::sum, root, count);
    o->bytes = count * sizeof(T);
    o->complete_phase = &finish_simple;
    call(MPI_Ibcast(data, mpi_int(count * detail::mpi_scale<T>), detail::mpi_type<T>(), root, data_, &o->request), "MPI_Ibcast", *o);
    return o;
  }

  template <class T>
  op_ptr start_reduce(const T* send, T* recv, std::size_t count, reduce_op op, int root) {
    check_usable();
    if (root < 0 || root >= world_)
      throw usage_error("zero: reduce root " + std::to_string(root) + " on rank " + std::to_string(rank_) + " outside a group of " +
                        std::to_string(world_));
    auto o = begin<T>(collective::reduce, count, op, root, count);
    o->send = send;
    o->recv = recv;
    o->count = count;
    o->op = op;
    o->root = root;
    o->bytes = count * sizeof(T);
    const bool at_root = rank_ == root;
    if (options_.reduction == mpi_reduction::native) {
      // MPI writes the root's recv while it reads its input: in place, or a copy of an overlapping one
      const void* input = send;
      if (at_root) input = send == recv ? MPI_IN_PLACE : stable_input(*o, send, count, recv, count);
      o->complete_phase = &finish_simple;
      call(MPI_Ireduce(input, at_root ? recv : nullptr, mpi_int(count), detail::mpi_type<T>(), reduction_op<T>(op), root, data_,
                       &o->request),
           "MPI_Ireduce", *o);
      return o;
    }
    o->complete_phase = &finish_reduce<T>;
    if (count * sizeof(T) <= detail::mpi_gather_reduce_bytes) {
      // one phase: the root gathers every other rank's input into staging, in rank order without
      // itself (MPI writes only staging, so an in-place recv is safe)
      for (int r = 0; r < world_; ++r) {
        o->counts.push_back(r == root ? 0 : mpi_int(count));
        o->displs.push_back(r == root ? 0 : mpi_int(static_cast<std::size_t>(r < root ? r : r - 1) * count));
      }
      void* staging = nullptr;
      if (at_root) {
        o->staging = acquire((static_cast<std::size_t>(world_) - 1) * count * sizeof(T));
        staging = o->staging.data.get();
      }
      call(MPI_Igatherv(send, at_root ? 0 : mpi_int(count), detail::mpi_type<T>(), staging, o->counts.data(), o->displs.data(),
                        detail::mpi_type<T>(), root, data_, &o->request),
           "MPI_Igatherv", *o);
      return o;
    }
    // two phases: a reduce-scatter over the uneven chunks of all-reduce, then a gather of the
    // summed chunks into the root's recv
    o->phases = 2;
    for (int r = 0; r < world_; ++r) {
      const auto [lo, hi] = chunk(count, r);
      o->counts.push_back(mpi_int(hi - lo));
      o->displs.push_back(mpi_int(lo));
    }
    const auto [my_lo, my_hi] = chunk(count, rank_);
    start_exchange<T>(*o, send, my_hi - my_lo);
    return o;
  }

  op_ptr start_barrier() {
    auto o = begin<std::uint8_t>(collective::barrier, 0, reduce_op::sum, 0, 0);
    o->complete_phase = &finish_simple;
    call(MPI_Ibarrier(data_, &o->request), "MPI_Ibarrier", *o);
    return o;
  }

  //! Numbers a new collective, checks counts against MPI's int limits and, in debug mode,
  //! that every rank calls the same collective.
  template <class T>
  op_ptr begin(collective kind, std::size_t count, reduce_op op, int root, std::size_t largest) {
    check_usable();
    if (largest * detail::mpi_scale<T> > static_cast<std::size_t>(INT_MAX))
      throw usage_error("zero: " + std::string(to_string(kind)) + " of " + std::to_string(count) + " elements on " +
                        std::to_string(world_) + " ranks exceeds MPI's int counts (" + std::to_string(INT_MAX) +
                        " elements per buffer); split the buffer");
    auto o = std::make_shared<detail::mpi_operation>();
    o->kind = kind;
    o->sequence = ++sequence_;
    o->start = detail::mpi_clock::now();
    o->deadline = o->start + options_.timeout;
    if (options_.check_collectives)
      check_signature(*o, {kind == collective::barrier ? 0 : detail::type_code<T>(), sizeof(T), count, static_cast<std::uint64_t>(op),
                           static_cast<std::uint64_t>(root)});
    in_flight_.push_back(o);
    return o;
  }

  //! The input to hand MPI: `send` itself, or a copy when it overlaps the output (which MPI
  //! would write while still reading the input).
  template <class T>
  const T* stable_input(detail::mpi_operation& o, const T* send, std::size_t send_count, const T* recv, std::size_t recv_count) {
    const auto* s = reinterpret_cast<const std::byte*>(send);
    const auto* r = reinterpret_cast<const std::byte*>(recv);
    const std::size_t sb = send_count * sizeof(T), rb = recv_count * sizeof(T);
    const bool overlap = sb != 0 && rb != 0 && std::less<const std::byte*>{}(s, r + rb) && std::less<const std::byte*>{}(r, s + sb);
    if (!overlap) return send;
    o.input = acquire(sb);
    std::memcpy(o.input.data.get(), send, sb);
    return reinterpret_cast<const T*>(o.input.data.get());
  }

  // ---- completing collectives ---------------------------------------------------------

  static void finish_simple(mpi_communicator& c, detail::mpi_operation& o) { c.complete(o); }

  //! Sums in rank order 0..n-1: other ranks' chunks from staging, this rank's from its input
  //! (read element by element before the same element of an in-place output is written).
  template <class T>
  static void finish_reduce_scatter(mpi_communicator& c, detail::mpi_operation& o) {
    const T* staging = reinterpret_cast<const T*>(o.staging.data.get());
    const T* own = static_cast<const T*>(o.send) + static_cast<std::size_t>(c.rank_) * o.count;
    detail::reduce_ranks(static_cast<T*>(o.recv), o.count, c.world_,
                         [&](int r) { return r == c.rank_ ? own : staging + c.staging_slot(r) * o.count; }, o.op);
    c.complete(o);
  }

  template <class T>
  static void finish_all_reduce(mpi_communicator& c, detail::mpi_operation& o) {
    T* recv = static_cast<T*>(o.recv);
    if (o.phase == 0) {
      // every rank's copy of my chunk has arrived: sum it in rank order into my part of recv
      // plain variables, not a structured binding: the lambda below captures them (clang before 16
      // cannot capture bindings)
      const std::pair<std::size_t, std::size_t> mine = c.chunk(o.count, c.rank_);
      const std::size_t lo = mine.first, hi = mine.second;
      const T* staging = reinterpret_cast<const T*>(o.staging.data.get());
      const T* own = static_cast<const T*>(o.send) + lo;
      detail::reduce_ranks(recv + lo, hi - lo, c.world_,
                           [&](int r) { return r == c.rank_ ? own : staging + c.staging_slot(r) * (hi - lo); }, o.op);
      c.release(o.staging);
      c.release(o.input);
      o.phase = 1;
      call_on(c, MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, recv, o.counts.data(), o.displs.data(), detail::mpi_type<T>(),
                                 c.second_, &o.request),
              "MPI_Iallgatherv", o);
      return;
    }
    c.complete(o);
  }

  //! One phase: the root sums the gathered inputs in rank order, its own read from its input
  //! (element by element before the same element of an in-place recv is written). Two phases:
  //! every rank sums its chunk in rank order, into the root's recv on the root and into scratch
  //! elsewhere, then the chunks are gathered into the root's recv (the root's own in place).
  template <class T>
  static void finish_reduce(mpi_communicator& c, detail::mpi_operation& o) {
    const bool at_root = c.rank_ == o.root;
    if (o.phases == 1) {
      if (at_root) {
        const T* staging = reinterpret_cast<const T*>(o.staging.data.get());
        const T* own = static_cast<const T*>(o.send);
        detail::reduce_ranks(static_cast<T*>(o.recv), o.count, c.world_,
                             [&](int r) { return r == c.rank_ ? own : staging + c.staging_slot(r) * o.count; }, o.op);
      }
      c.complete(o);
      return;
    }
    if (o.phase == 0) {
      // plain variables, not a structured binding: the lambda below captures them
      const std::pair<std::size_t, std::size_t> mine = c.chunk(o.count, c.rank_);
      const std::size_t lo = mine.first, hi = mine.second;
      T* out = nullptr;
      if (at_root) {
        out = static_cast<T*>(o.recv) + lo;
      } else {
        o.partial = c.acquire((hi - lo) * sizeof(T));
        out = reinterpret_cast<T*>(o.partial.data.get());
      }
      const T* staging = reinterpret_cast<const T*>(o.staging.data.get());
      const T* own = static_cast<const T*>(o.send) + lo;
      detail::reduce_ranks(out, hi - lo, c.world_, [&](int r) { return r == c.rank_ ? own : staging + c.staging_slot(r) * (hi - lo); },
                           o.op);
      c.release(o.staging);
      o.phase = 1;
      if (at_root)
        call_on(c, MPI_Igatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, o.recv, o.counts.data(), o.displs.data(), detail::mpi_type<T>(),
                                o.root, c.second_, &o.request),
                "MPI_Igatherv", o);
      else
        call_on(c, MPI_Igatherv(out, mpi_int(hi - lo), detail::mpi_type<T>(), nullptr, o.counts.data(), o.displs.data(),
                                detail::mpi_type<T>(), o.root, c.second_, &o.request),
                "MPI_Igatherv", o);
      return;
    }
    c.complete(o);
  }

  void complete(detail::mpi_operation& o) {
    o.done = true;
    release(o.staging);
    release(o.input);
    release(o.partial);
    traffic_.add(o.kind, o.bytes);
  }

  //! Advances every operation in flight, in issue order; an operation's next phase starts only
  //! once every earlier operation runs its last phase (same start order on every rank).
  void progress_all() {
    bool earlier_in_last = true;
    for (auto it = in_flight_.begin(); it != in_flight_.end();) {
      detail::mpi_operation& o = **it;
      for (;;) {
        if (o.request != MPI_REQUEST_NULL) {
          int flag = 0;
          call(MPI_Test(&o.request, &flag, MPI_STATUS_IGNORE), "MPI_Test", o);
          if (!flag) break;
        }
        if (!o.in_last_phase() && !earlier_in_last) break;
        if (options_.inside_collective) options_.inside_collective(rank_, o.kind, o.sequence);
        o.complete_phase(*this, o);
        if (o.done) break;
      }
      earlier_in_last = earlier_in_last && o.in_last_phase();
      it = o.done ? in_flight_.erase(it) : std::next(it);
    }
  }

  void wait(detail::mpi_operation& o) {
    detail::mpi_backoff backoff;
    for (;;) {
      if (!o.failure.empty()) throw communicator_error(o.failure);
      if (o.done) return;
      check_usable();
      progress_all();
      if (o.done) return;
      const auto now = detail::mpi_clock::now();
      if (now >= o.deadline) fail_timeout(o, to_string(o.kind), now);
      backoff.pause();
    }
  }

  // ---- debug mode ----------------------------------------------------------------------

  static std::string describe(const std::array<std::uint64_t, 6>& s) {
    const auto kind = static_cast<collective>(s[0]);
    if (kind == collective::barrier) return "barrier()";
    std::string d = std::string(to_string(kind)) + "<" + detail::type_code_name(s[1], s[2]) + ">(count " + std::to_string(s[3]);
    if (kind == collective::broadcast || kind == collective::reduce) d += ", root " + std::to_string(s[5]);
    if (kind == collective::reduce_scatter || kind == collective::all_reduce || kind == collective::reduce)
      d += static_cast<reduce_op>(s[4]) == reduce_op::sum ? ", sum" : ", max";
    return d + ")";
  }

  //! Exchanges (kind, type, size, count, op, root) with every rank; all throw the same
  //! mismatch_error when they differ. The exchange has the collective's deadline.
  void check_signature(detail::mpi_operation& o, std::array<std::uint64_t, 5> rest) {
    const std::array<std::uint64_t, 6> mine = {static_cast<std::uint64_t>(o.kind), rest[0], rest[1], rest[2], rest[3], rest[4]};
    std::vector<std::uint64_t> all(6 * static_cast<std::size_t>(world_));
    exchange(mine.data(), all.data(), 6, o.deadline, o.start, "signature check before " + std::string(to_string(o.kind)), o.sequence);
    std::vector<std::array<std::uint64_t, 6>> calls(static_cast<std::size_t>(world_));
    bool same = true;
    for (int r = 0; r < world_; ++r) {
      auto& c = calls[static_cast<std::size_t>(r)];
      std::copy_n(all.begin() + 6 * r, 6, c.begin());
      if (c[0] == static_cast<std::uint64_t>(collective::barrier)) c = {c[0], 0, 0, 0, 0, 0};
      const auto kind = static_cast<collective>(c[0]);
      if (kind != collective::broadcast && kind != collective::reduce) c[5] = 0;
      if (kind != collective::reduce_scatter && kind != collective::all_reduce && kind != collective::reduce) c[4] = 0;
      same = same && c == calls[0];
    }
    if (same) return;
    std::map<std::string, std::vector<int>> by_call;
    for (int r = 0; r < world_; ++r) by_call[describe(calls[static_cast<std::size_t>(r)])].push_back(r);
    // the call most ranks make is taken as intended (ties: the one the lowest rank makes)
    const std::string expected = std::max_element(by_call.begin(), by_call.end(), [](const auto& a, const auto& b) {
                                   if (a.second.size() != b.second.size()) return a.second.size() < b.second.size();
                                   return a.second.front() > b.second.front();
                                 })->first;
    std::string message = "zero: collective mismatch at call #" + std::to_string(o.sequence) + " of an MPI communicator of " +
                          std::to_string(world_) + " ranks: most ranks call " + expected;
    for (const auto& [what, ranks] : by_call) {
      if (what == expected) continue;
      for (int r : ranks) message += "; rank " + std::to_string(r) + " calls " + what;
    }
    break_with(message);
    throw mismatch_error(message);
  }

  // ---- construction --------------------------------------------------------------------

  void duplicate(MPI_Comm from, MPI_Comm& to, time_point deadline) {
    auto cell = std::make_shared<MPI_Comm>(MPI_COMM_NULL);  // MPI writes it on completion, maybe late
    MPI_Request request = MPI_REQUEST_NULL;
    call(MPI_Comm_idup(from, cell.get(), &request), "MPI_Comm_idup", "construction");
    await(request, cell, deadline, deadline - options_.timeout, "construction (MPI_Comm_idup)", 0);
    to = *cell;
    call(MPI_Comm_set_errhandler(to, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler", "construction");
  }

  void agree_on_options(time_point deadline) {
    const std::uint64_t mine[2] = {options_.check_collectives ? 1u : 0u, static_cast<std::uint64_t>(options_.reduction)};
    std::vector<std::uint64_t> all(2 * static_cast<std::size_t>(world_));
    exchange(mine, all.data(), 2, deadline, deadline - options_.timeout, "construction (options check)", 0);
    std::string differ;
    for (int r = 0; r < world_; ++r)
      if (all[2 * static_cast<std::size_t>(r)] != all[0] || all[2 * static_cast<std::size_t>(r) + 1] != all[1])
        differ += (differ.empty() ? "" : ", ") + std::to_string(r);
    if (!differ.empty()) {
      const std::string message = "zero: mpi_communicator options differ between ranks: rank(s) " + differ +
                                  " chose check_collectives/reduction different from rank 0's (check_collectives " +
                                  (all[0] ? "on" : "off") + ", reduction " +
                                  std::string(to_string(static_cast<mpi_reduction>(all[1]))) + ")";
      break_with(message);
      throw mismatch_error(message);
    }
  }

  //! A blocking all-gather of `n` u64 per rank on the first duplicate, with a deadline.
  void exchange(const std::uint64_t* mine, std::uint64_t* all, int n, time_point deadline, time_point started, const std::string& what,
                std::uint64_t sequence) {
    const std::size_t un = static_cast<std::size_t>(n);
    // MPI may write the buffers after a timeout: they live on the heap, kept if abandoned
    auto buffers = std::make_shared<std::vector<std::uint64_t>>(un * (1 + static_cast<std::size_t>(world_)));
    std::copy_n(mine, un, buffers->data());
    MPI_Request request = MPI_REQUEST_NULL;
    call(MPI_Iallgather(buffers->data(), n, MPI_UINT64_T, buffers->data() + un, n, MPI_UINT64_T, data_, &request), "MPI_Iallgather",
         what);
    await(request, buffers, deadline, started, what, sequence);
    std::copy(buffers->begin() + static_cast<std::ptrdiff_t>(un), buffers->end(), all);
  }

  //! Polls one request until it completes or `deadline` passes; then `buffers` are kept alive.
  void await(MPI_Request& request, const std::shared_ptr<void>& buffers, time_point deadline, time_point started,
             const std::string& what, std::uint64_t sequence) {
    detail::mpi_backoff backoff;
    for (;;) {
      int flag = 0;
      call(MPI_Test(&request, &flag, MPI_STATUS_IGNORE), "MPI_Test", what);
      if (flag) return;
      const auto now = detail::mpi_clock::now();
      if (now >= deadline) {
        detail::keep_until_exit(buffers);
        fail_timeout_at(what, sequence, started, now);
      }
      backoff.pause();
    }
  }

  // ---- failures ------------------------------------------------------------------------

  void check_usable() const {
    if (broken_)
      throw communicator_error("zero: mpi_communicator on rank " + std::to_string(rank_) +
                               " is unusable after an earlier failure: " + broken_reason_);
  }

  //! Marks the communicator unusable; every collective in flight fails with `reason`.
  void break_with(const std::string& reason) {
    if (!broken_) {
      broken_ = true;
      broken_reason_ = reason;
    }
    if (!in_flight_.empty()) abandoned_ = true;
    for (auto& o : in_flight_) {
      o->failure = "zero: " + std::string(to_string(o->kind)) + " #" + std::to_string(o->sequence) + " on rank " +
                   std::to_string(rank_) + " abandoned: " + reason;
      detail::keep_until_exit(o);  // MPI cannot cancel a collective: its buffers stay allocated
    }
    in_flight_.clear();
  }

  [[noreturn]] void fail_timeout(detail::mpi_operation& o, std::string_view what, time_point now) {
    fail_timeout_at(std::string(what), o.sequence, o.start, now);
  }

  [[noreturn]] void fail_timeout_at(const std::string& what, std::uint64_t sequence, time_point started, time_point now) {
    const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(now - started).count();
    const std::string message = "zero: mpi_communicator " + what + (sequence != 0 ? " #" + std::to_string(sequence) : std::string()) +
                                " timed out after " + std::to_string(elapsed) + " ms (deadline " +
                                std::to_string(options_.timeout.count()) + " ms) on rank " + std::to_string(rank_) + " of " +
                                std::to_string(world_) +
                                ": a rank did not arrive (it left, died, or never made this call); the communicator is unusable";
    break_with(message);
    throw timeout_error(message);
  }

  void call(int code, const char* function, detail::mpi_operation& o) {
    if (code != MPI_SUCCESS) fail_mpi(code, function, std::string(to_string(o.kind)) + " #" + std::to_string(o.sequence));
  }
  void call(int code, const char* function, const std::string& what) {
    if (code != MPI_SUCCESS) fail_mpi(code, function, what);
  }
  static void call_on(mpi_communicator& c, int code, const char* function, detail::mpi_operation& o) { c.call(code, function, o); }

  [[noreturn]] void fail_mpi(int code, const char* function, const std::string& what) {
    const std::string message = std::string("zero: ") + function + " failed in " + what + " on rank " + std::to_string(rank_) + " of " +
                                std::to_string(world_) + ": " + detail::mpi_error_text(code);
    break_with(message);
    throw communicator_error(message);
  }

  void release_after_failure() noexcept {
    // the duplicates and MPI_Ops stay to MPI_Finalize; buffers MPI may still use stay too
    try {
      for (auto& o : in_flight_) detail::keep_until_exit(o);
    } catch (...) {  // out of memory while failing: leak instead
      for (auto& o : in_flight_) new op_ptr(std::move(o));
    }
    in_flight_.clear();
  }

  // ---- helpers -------------------------------------------------------------------------

  std::pair<std::size_t, std::size_t> chunk(std::size_t count, int r) const noexcept {
    const std::size_t n = static_cast<std::size_t>(world_);
    const std::size_t per = count / n, extra = count % n, ur = static_cast<std::size_t>(r);
    const std::size_t b = ur * per + std::min(ur, extra);
    return {b, b + per + (ur < extra ? 1 : 0)};
  }

  static int mpi_int(std::size_t v) noexcept { return static_cast<int>(v); }  // checked in begin()

  //! Scratch memory from the pool: the smallest free block that fits, or a new one.
  detail::mpi_scratch acquire(std::size_t bytes) {
    if (bytes == 0) bytes = 1;
    auto best = pool_.end();
    for (auto it = pool_.begin(); it != pool_.end(); ++it)
      if (it->bytes >= bytes && (best == pool_.end() || it->bytes < best->bytes)) best = it;
    if (best != pool_.end()) {
      detail::mpi_scratch s = std::move(*best);
      pool_.erase(best);
      return s;
    }
    return {std::unique_ptr<std::byte[]>(new std::byte[bytes]), bytes};
  }
  void release(detail::mpi_scratch& s) {
    if (s.data) pool_.push_back(std::move(s));
    s = {};
  }

  template <class T>
  MPI_Op reduction_op(reduce_op op) {
    if constexpr (std::is_integral_v<T>) {
      return op == reduce_op::sum ? MPI_SUM : MPI_MAX;
    } else {
      if (op == reduce_op::sum && (std::is_same_v<T, float> || std::is_same_v<T, double>)) return MPI_SUM;
      // MPI has no bf16/fp16, and MPI_MAX need not propagate NaN: user-defined operations
      std::size_t slot = 0;
      MPI_User_function* function = nullptr;
      if constexpr (std::is_same_v<T, bf16>) slot = op == reduce_op::sum ? 0 : 1;
      else if constexpr (std::is_same_v<T, fp16>) slot = op == reduce_op::sum ? 2 : 3;
      else if constexpr (std::is_same_v<T, float>) slot = 4;
      else slot = 5;
      if (op == reduce_op::sum) function = &detail::mpi_user_reduce<T, reduce_op::sum>;
      else function = &detail::mpi_user_reduce<T, reduce_op::max>;
      if (ops_[slot] == MPI_OP_NULL) call(MPI_Op_create(function, 1, &ops_[slot]), "MPI_Op_create", "a native reduction");
      return ops_[slot];
    }
  }

  mpi_communicator_options options_;
  int rank_ = 0;
  int world_ = 1;
  MPI_Comm data_ = MPI_COMM_NULL;    // first phases, signature checks
  MPI_Comm second_ = MPI_COMM_NULL;  // second phases (all-gather of an all-reduce, gather of a reduce)
  std::array<MPI_Op, user_op_count> ops_{MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL};
  std::uint64_t sequence_ = 0;
  traffic_counters traffic_;
  std::deque<op_ptr> in_flight_;
  std::vector<detail::mpi_scratch> pool_;
  bool broken_ = false;
  bool abandoned_ = false;  // a failure left collectives in flight
  std::string broken_reason_;
};

static_assert(communicator<mpi_communicator>);
static_assert(nonblocking_communicator<mpi_communicator>);
static_assert(rooted_communicator<mpi_communicator>);
static_assert(nonblocking_rooted_communicator<mpi_communicator>);

inline void mpi_request::wait() {
  if (op_ == nullptr || op_->done) return;
  comm_->wait(*op_);
}

inline bool mpi_request::test() {
  if (op_ == nullptr || op_->done) return true;
  if (!op_->failure.empty()) throw communicator_error(op_->failure);
  comm_->check_usable();
  comm_->progress_all();
  if (op_->done) return true;
  const auto now = detail::mpi_clock::now();
  if (now >= op_->deadline) comm_->fail_timeout(*op_, to_string(op_->kind), now);
  return false;
}

inline void mpi_request::finish_quietly() noexcept {
  if (op_ != nullptr && !op_->done && op_->failure.empty() && comm_ != nullptr && !comm_->broken()) {
    try {
      comm_->wait(*op_);
    } catch (...) {  // the communicator is broken now; its next call reports it
    }
  }
  op_.reset();
  comm_ = nullptr;
}

}  // namespace zero
