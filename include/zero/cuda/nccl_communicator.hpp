#pragma once
//! @file cuda/nccl_communicator.hpp
//! `zero::nccl_communicator`: ranks as GPUs (one per process), communicating over NCCL. A
//! Communicator (see `zero/communicator.hpp`) whose buffers are device memory. Plain C++ over
//! the CUDA runtime and NCCL (no nvcc needed); link `zero::nccl`.
//!
//! * Streams. Collectives run on the communicator's own stream, ordered after the work the
//!   compute stream (the caller's, `set_compute_stream`) has enqueued so far, through an event.
//!   A blocking collective then makes the compute stream wait for it (an event again): it
//!   returns once enqueued, the host does not wait, and work enqueued on the compute stream
//!   afterwards sees the result. A non-blocking form (`ireduce_scatter`, `iall_gather`,
//!   `iall_reduce`, `ireduce`, `ibroadcast`) returns an `nccl_request` instead; its `wait()`
//!   makes the compute stream wait, so the collective overlaps the compute work enqueued in
//!   between (the bucket reductions overlapping backward). `synchronize()` and `nccl_request::synchronize()` make
//!   the host wait, with the deadline.
//! * Where the host waits (documented exceptions to "never synchronizes"): construction (NCCL
//!   initialization), `barrier()`, `synchronize()`, a collective on host memory (staged through
//!   a device buffer, then waited for: the engine's small statistics exchanges), and a
//!   collective started while `max_in_flight` are still running (it waits for the oldest).
//! * Faults. Each collective has a deadline from the call that enqueues it. Every call polls the
//!   collectives in flight and NCCL's asynchronous error (`ncclCommGetAsyncError`): a collective
//!   past its deadline aborts the NCCL communicator (`ncclCommAbort`, which also ends its
//!   kernels on this GPU) and throws `timeout_error` naming the collective, its sequence number
//!   and the time elapsed; an NCCL error aborts and throws `nccl_error`. Either leaves the
//!   communicator unusable (`communicator_error` from then on). A host blocked in its own
//!   `cudaStreamSynchronize` is not watched: wait through `synchronize()`.
//! * Results. Sums are NCCL's: the order in which ranks add is NCCL's (not rank order), and
//!   bf16/fp16 are added in 16 bits (ncclBfloat16 / ncclHalf), so results can differ in the last
//!   bits from `thread_communicator` for more than one rank. Max is `ncclMax` (how a NaN
//!   propagates is NCCL's). A group of one copies.
//!
//! Traffic is counted as by every communicator (see `zero/communicator.hpp`), when a collective
//! is enqueued. One communicator is used by one host thread at a time, with the device that was
//! current at construction current.

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "zero/communicator.hpp"
#include "zero/cuda/bootstrap.hpp"
#include "zero/cuda/device_buffer.hpp"
#include "zero/cuda/error.hpp"
#include "zero/error.hpp"
#include "zero/types.hpp"

namespace zero {

//! An NCCL call failed. `code()` is the `ncclResult_t`.
class nccl_error : public communicator_error {
 public:
  nccl_error(const std::string& what, ncclResult_t code) : communicator_error(what), code_(code) {}
  ncclResult_t code() const noexcept { return code_; }

 private:
  ncclResult_t code_;
};

namespace cuda {

//! "ncclSystemError (unhandled system error ...)".
inline std::string describe(ncclResult_t result) {
  constexpr std::string_view names[] = {"ncclSuccess",       "ncclUnhandledCudaError", "ncclSystemError",
                                        "ncclInternalError", "ncclInvalidArgument",    "ncclInvalidUsage",
                                        "ncclRemoteError",   "ncclInProgress"};
  const auto index = static_cast<std::size_t>(result);
  const std::string name = index < std::size(names) ? std::string(names[index]) : "ncclResult " + std::to_string(index);
  const char* text = ncclGetErrorString(result);
  return name + " (" + (text != nullptr ? text : "no description") + ")";
}

//! A new NCCL unique id, for rank 0 to share with a bootstrap (`exchange_id`).
//! @throws nccl_error
inline bootstrap_id nccl_unique_id() {
  static_assert(sizeof(ncclUniqueId) == bootstrap_id_bytes, "an NCCL unique id is 128 bytes");
  ncclUniqueId id;
  const ncclResult_t result = ncclGetUniqueId(&id);
  if (result != ncclSuccess) throw nccl_error("zero: ncclGetUniqueId failed: " + describe(result), result);
  bootstrap_id out;
  std::memcpy(out.bytes.data(), &id, bootstrap_id_bytes);
  return out;
}

namespace detail {
//! The NCCL type that reduces T.
template <class T>
constexpr ncclDataType_t nccl_type() noexcept {
  if constexpr (std::is_same_v<T, float>) return ncclFloat32;
  else if constexpr (std::is_same_v<T, double>) return ncclFloat64;
  else if constexpr (std::is_same_v<T, bf16>) return ncclBfloat16;
  else if constexpr (std::is_same_v<T, fp16>) return ncclFloat16;
  else if constexpr (std::is_same_v<T, std::uint64_t>) return ncclUint64;
  else if constexpr (std::is_same_v<T, std::int64_t>) return ncclInt64;
  else if constexpr (std::is_same_v<T, std::uint32_t>) return ncclUint32;
  else if constexpr (std::is_same_v<T, std::int32_t>) return ncclInt32;
  else return ncclUint8;  // moved as bytes (all-gather, broadcast)
}
template <class T>
constexpr std::size_t nccl_scale = nccl_type<T>() == ncclUint8 ? sizeof(T) : 1;
}  // namespace detail
}  // namespace cuda

//! Run-time options of an `nccl_communicator`.
struct nccl_communicator_options {
  //! Deadline of each collective, from the call that enqueues it; also of the initialization.
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
  //! Device bytes for collectives on host memory (send and receive together).
  std::size_t host_staging_bytes = std::size_t{1} << 16;
  //! Collectives that may be in flight; starting one more first waits (host) for the oldest.
  std::size_t max_in_flight = 256;
};

class nccl_communicator;
namespace cuda {
class device_backend;  // zero/cuda/backend.cuh
}  // namespace cuda

//! A collective started by a non-blocking form of `nccl_communicator`. Move-only. Destroying it
//! without `wait()` leaves the compute stream unordered after the collective.
class nccl_request {
 public:
  nccl_request() = default;
  nccl_request(nccl_request&& o) noexcept : comm_(std::exchange(o.comm_, nullptr)), sequence_(o.sequence_) {}
  nccl_request& operator=(nccl_request&& o) noexcept {
    comm_ = std::exchange(o.comm_, nullptr);
    sequence_ = o.sequence_;
    return *this;
  }
  nccl_request(const nccl_request&) = delete;
  nccl_request& operator=(const nccl_request&) = delete;

  //! Orders the compute stream after the collective (the host does not wait).
  //! @throws as the blocking collectives do (a deadline passed, an NCCL error)
  inline void wait();
  //! Makes the host wait for the collective, with its deadline.
  inline void synchronize();
  //! Whether the collective has completed on the device (or the request is empty).
  inline bool done() const noexcept;

 private:
  friend class nccl_communicator;
  nccl_request(nccl_communicator* comm, std::uint64_t sequence) : comm_(comm), sequence_(sequence) {}
  nccl_communicator* comm_ = nullptr;
  std::uint64_t sequence_ = 0;
};

//! One rank's endpoint of an NCCL communicator. Satisfies `zero::communicator`; buffers are
//! device memory (host memory is staged, see the file comment).
class nccl_communicator {
 public:
  //! An engine over this communicator keeps its buffers in device memory and runs its passes
  //! as kernels: include <zero/cuda/backend.cuh> (nvcc) where you instantiate the engine.
  using backend_type = cuda::device_backend;

 public:
  using clock = std::chrono::steady_clock;

  //! Joins the NCCL communicator of `world_size` ranks that share `id` (see bootstrap.hpp), on
  //! the current device. Collective: every rank constructs with the same id and world size.
  //! @param compute_stream the stream whose work collectives are ordered after (and before)
  //! @throws usage_error (bad rank), timeout_error (initialization past the deadline: a rank
  //!         missing or given another id), nccl_error, cuda_error
  nccl_communicator(const cuda::bootstrap_id& id, int rank, int world_size, cudaStream_t compute_stream,
                    nccl_communicator_options options = {})
      : options_(options), rank_(rank), world_(world_size), compute_(compute_stream) {
    if (world_size < 1 || rank < 0 || rank >= world_size)
      throw usage_error("zero: nccl_communicator rank " + std::to_string(rank) + " outside a group of " +
                        std::to_string(world_size));
    if (options.timeout.count() <= 0) throw usage_error("zero: nccl_communicator timeout must be positive");
    if (options.max_in_flight < 1) throw usage_error("zero: nccl_communicator max_in_flight must be >= 1");
    try {
      cuda::check(cudaGetDevice(&device_), "cudaGetDevice", rank);
      cuda::check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags", rank);
      cuda::check(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming), "cudaEventCreateWithFlags", rank);
      ring_.resize(options.max_in_flight);
      for (auto& o : ring_)
        cuda::check(cudaEventCreateWithFlags(&o.done, cudaEventDisableTiming), "cudaEventCreateWithFlags", rank);
      staging_ = cuda::device_buffer<unsigned char>(options.host_staging_bytes < 16 ? 16 : options.host_staging_bytes, rank);
      initialize(id);
    } catch (...) {
      release();
      throw;
    }
  }

  nccl_communicator(const nccl_communicator&) = delete;
  nccl_communicator& operator=(const nccl_communicator&) = delete;

  //! Waits for the collectives in flight (with their deadlines), then finalizes and destroys
  //! the NCCL communicator; aborts it instead when that fails. Never throws.
  ~nccl_communicator() {
    if (comm_ != nullptr && broken_.empty()) {
      try {
        synchronize();
        finalize();
      } catch (...) {
        abort_quietly();
      }
    }
    release();
  }

  int rank() const noexcept { return rank_; }
  int world_size() const noexcept { return world_; }
  const traffic_counters& traffic() const noexcept { return traffic_; }
  //! Collectives enqueued so far.
  std::uint64_t sequence() const noexcept { return sequence_; }
  int device() const noexcept { return device_; }
  cudaStream_t compute_stream() const noexcept { return compute_; }
  cudaStream_t communication_stream() const noexcept { return stream_; }
  ncclComm_t native_handle() const noexcept { return comm_; }
  //! The stream later collectives are ordered after and before. Only while no engine is built
  //! on this communicator: an engine orders its buffers and kernels on the compute stream it
  //! found at construction, and NCCL would otherwise read them before that stream's work ends.
  //! @throws usage_error while an engine built on this communicator is alive
  void set_compute_stream(cudaStream_t stream) {
    if (pins_ != 0)
      throw usage_error("zero: nccl_communicator::set_compute_stream on rank " + std::to_string(rank_) + " while " +
                        std::to_string(pins_) +
                        " engine(s) built on this communicator are alive: an engine keeps the compute stream it was "
                        "built with; set the stream before building the engine");
    compute_ = stream;
  }
  //! Held by each engine built on this communicator for its lifetime (see `set_compute_stream`).
  void pin_stream() noexcept { ++pins_; }
  void unpin_stream() noexcept { --pins_; }

  //! recv[i] = op over ranks of send_r[rank * count + i]. In place: recv == send + rank * count.
  template <reducible T>
  void reduce_scatter(const T* send, T* recv, std::size_t count, reduce_op op = reduce_op::sum) {
    finish(start_reduce_scatter(send, recv, count, op));
  }
  //! recv[r * count + i] = send_r[i]. In place: send == recv + rank * count.
  template <class T>
  void all_gather(const T* send, T* recv, std::size_t count) {
    finish(start_all_gather(send, recv, count));
  }
  //! recv[i] = op over ranks of send_r[i]. In place: send == recv.
  template <reducible T>
  void all_reduce(const T* send, T* recv, std::size_t count, reduce_op op = reduce_op::sum) {
    finish(start_all_reduce(send, recv, count, op));
  }
  //! data on every rank = data on `root`.
  template <class T>
  void broadcast(T* data, std::size_t count, int root) {
    finish(start_broadcast(data, count, root));
  }
  //! On rank `root`: recv[i] = op over ranks of send_r[i] (ncclReduce). Nothing is written on the
  //! other ranks; their `recv` may be null. In place: send == recv.
  template <reducible T>
  void reduce(const T* send, T* recv, std::size_t count, reduce_op op, int root) {
    finish(start_reduce(send, recv, count, op, root));
  }
  //! Every rank has reached this point, and the collectives before it have completed: the host
  //! waits (a one-word all-reduce).
  void barrier() {
    const std::uint64_t s = start(collective::barrier, nullptr, nullptr, 0, 0, 0, [&](const void*, void*, cudaStream_t stream) {
      return ncclAllReduce(staging_.data(), staging_.data(), 1, ncclInt32, ncclSum, comm_, stream);
    });
    wait_host(s);
  }

  // ---- non-blocking forms ---------------------------------------------------------------

  //! As `reduce_scatter`; the compute stream is ordered after it by the request's `wait()`.
  //! @pre the buffers stay valid, and `send` unchanged, until the collective completes
  template <reducible T>
  [[nodiscard]] nccl_request ireduce_scatter(const T* send, T* recv, std::size_t count, reduce_op op = reduce_op::sum) {
    return {this, start_reduce_scatter(send, recv, count, op)};
  }
  template <class T>
  [[nodiscard]] nccl_request iall_gather(const T* send, T* recv, std::size_t count) {
    return {this, start_all_gather(send, recv, count)};
  }
  template <reducible T>
  [[nodiscard]] nccl_request iall_reduce(const T* send, T* recv, std::size_t count, reduce_op op = reduce_op::sum) {
    return {this, start_all_reduce(send, recv, count, op)};
  }
  //! As `reduce`; the request completes on every rank (the root's `recv` is then written).
  template <reducible T>
  [[nodiscard]] nccl_request ireduce(const T* send, T* recv, std::size_t count, reduce_op op, int root) {
    return {this, start_reduce(send, recv, count, op, root)};
  }
  template <class T>
  [[nodiscard]] nccl_request ibroadcast(T* data, std::size_t count, int root) {
    return {this, start_broadcast(data, count, root)};
  }

  //! Retires completed collectives; checks deadlines and NCCL's asynchronous error.
  //! @throws timeout_error, nccl_error (the communicator is then aborted)
  void progress() { poll(); }

  //! The host waits until every collective enqueued so far has completed.
  //! @throws timeout_error at a collective's deadline, nccl_error
  void synchronize() {
    if (sequence_ > 0) wait_host(sequence_);
  }

 private:
  friend class nccl_request;

  struct in_flight {
    collective kind{};
    std::uint64_t sequence = 0;
    clock::time_point start{}, deadline{};
    cudaEvent_t done = nullptr;
  };

  std::string where() const { return "rank " + std::to_string(rank_) + " of " + std::to_string(world_); }

  void check_usable() const {
    if (!broken_.empty())
      throw communicator_error("zero: nccl_communicator on " + where() + " is unusable after an earlier failure: " + broken_);
  }

  void check_nccl(ncclResult_t result, std::string_view call) {
    if (result == ncclSuccess || result == ncclInProgress) return;
    std::string message = "zero: " + std::string(call) + " failed on " + where() + ": " + cuda::describe(result);
    if (comm_ != nullptr) {
      const char* last = ncclGetLastError(comm_);
      if (last != nullptr && *last != '\0') message += ": " + std::string(last);
    }
    fail(message);
    throw nccl_error(message, result);
  }

  //! Marks the communicator broken and aborts the NCCL communicator.
  void fail(const std::string& message) {
    if (broken_.empty()) broken_ = message;
    abort_quietly();
  }

  void abort_quietly() noexcept {
    if (comm_ != nullptr) (void)ncclCommAbort(comm_);
    comm_ = nullptr;
  }

  //! Polls NCCL's state until it is no longer in progress (non-blocking communicators), or the
  //! deadline: then aborts and throws.
  void settle(std::string_view call, clock::time_point start, clock::time_point deadline) {
    for (;;) {
      ncclResult_t state = ncclSuccess;
      check_nccl(ncclCommGetAsyncError(comm_, &state), "ncclCommGetAsyncError");
      if (state == ncclSuccess) return;
      check_nccl(state, call);
      if (clock::now() >= deadline) {
        const std::string message = "zero: nccl_communicator " + std::string(call) + " on " + where() +
                                    " did not complete within " + std::to_string(elapsed_ms(start)) +
                                    " ms; the NCCL communicator was aborted (a rank missing, or given another id?)";
        fail(message);
        throw timeout_error(message);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

  static long long elapsed_ms(clock::time_point since) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - since).count();
  }

  void initialize(const cuda::bootstrap_id& id) {
    ncclUniqueId unique;
    std::memcpy(&unique, id.bytes.data(), sizeof unique);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // initialization and calls return at once; `settle` polls, with the deadline
    const auto start = clock::now();
    check_nccl(ncclCommInitRankConfig(&comm_, world_, unique, rank_, &config), "ncclCommInitRankConfig");
    settle("ncclCommInitRankConfig", start, start + options_.timeout);
  }

  void finalize() {
    const auto start = clock::now();
    check_nccl(ncclCommFinalize(comm_), "ncclCommFinalize");
    settle("ncclCommFinalize", start, start + options_.timeout);
    (void)ncclCommDestroy(comm_);
    comm_ = nullptr;
  }

  void release() noexcept {
    abort_quietly();
    for (auto& o : ring_)
      if (o.done != nullptr) (void)cudaEventDestroy(o.done);
    ring_.clear();
    if (ready_ != nullptr) (void)cudaEventDestroy(ready_);
    ready_ = nullptr;
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
    stream_ = nullptr;
  }

  in_flight& slot(std::uint64_t sequence) noexcept { return ring_[sequence % ring_.size()]; }

  [[noreturn]] void fail_timeout(const in_flight& o) {
    const std::string message = "zero: nccl_communicator " + std::string(to_string(o.kind)) + " #" +
                                std::to_string(o.sequence) + " on " + where() + " did not complete within " +
                                std::to_string(options_.timeout.count()) + " ms (elapsed " + std::to_string(elapsed_ms(o.start)) +
                                " ms); the NCCL communicator was aborted (a rank that died or never made this call?)";
    fail(message);
    throw timeout_error(message);
  }

  //! Retires completed collectives in order, checks the oldest one's deadline and NCCL's
  //! asynchronous error.
  void poll() {
    check_usable();
    while (retired_ < sequence_) {
      const in_flight& o = slot(retired_ + 1);
      const cudaError_t status = cudaEventQuery(o.done);
      if (status == cudaSuccess) {
        ++retired_;
        continue;
      }
      if (status != cudaErrorNotReady) {
        fail("a CUDA error while " + std::string(to_string(o.kind)) + " #" + std::to_string(o.sequence) + " ran");
        cuda::check(status, "cudaEventQuery (nccl_communicator, a collective in flight)", rank_);
      }
      if (clock::now() >= o.deadline) fail_timeout(o);
      break;  // later collectives run after this one on the same stream
    }
    ncclResult_t state = ncclSuccess;
    check_nccl(ncclCommGetAsyncError(comm_, &state), "ncclCommGetAsyncError");
    check_nccl(state, "an NCCL collective (asynchronous error)");
  }

  //! The host waits until collective `sequence` has completed.
  void wait_host(std::uint64_t sequence) {
    for (;;) {
      poll();
      if (retired_ >= sequence) return;
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  //! Enqueues one collective: `call(send, recv, stream)` on the communication stream after the
  //! compute stream's work. Host memory is staged through a device buffer (`send_bytes` in,
  //! `recv_bytes` out) and waited for. Returns the collective's sequence number.
  template <class Call>
  std::uint64_t start(collective kind, const void* send, void* recv, std::size_t send_bytes, std::size_t recv_bytes,
                      std::uint64_t traffic_bytes, Call&& call) {
    poll();
    if (sequence_ - retired_ >= ring_.size()) wait_host(retired_ + 1);  // the ring is full: the oldest must finish
    const bool staged = (send_bytes != 0 && !cuda::is_device_pointer(send)) || (recv_bytes != 0 && !cuda::is_device_pointer(recv));
    const std::string_view name = to_string(kind);
    in_flight& o = slot(sequence_ + 1);
    o.kind = kind;
    o.sequence = sequence_ + 1;
    o.start = clock::now();
    o.deadline = o.start + options_.timeout;
    cuda::check(cudaEventRecord(ready_, compute_), "cudaEventRecord (on the compute stream, before a collective)", rank_);
    cuda::check(cudaStreamWaitEvent(stream_, ready_, 0), "cudaStreamWaitEvent (before a collective)", rank_);
    const void* s = send;
    void* r = recv;
    if (staged) {
      // In-place forms (the buffers overlap): stage their union, keeping the offsets. Otherwise
      // the send buffer, then the receive buffer at the next 256-byte boundary.
      const auto sb = reinterpret_cast<std::uintptr_t>(send), rb = reinterpret_cast<std::uintptr_t>(recv);
      const bool overlap = send_bytes != 0 && recv_bytes != 0 && sb < rb + recv_bytes && rb < sb + send_bytes;
      unsigned char* base = staging_.data();
      std::size_t needed;
      if (overlap) {
        const std::uintptr_t lo = sb < rb ? sb : rb, hi = sb + send_bytes > rb + recv_bytes ? sb + send_bytes : rb + recv_bytes;
        needed = hi - lo;
        s = base + (sb - lo);
        r = base + (rb - lo);
        if (needed <= staging_.bytes())
          cuda::check(cudaMemcpyAsync(base, reinterpret_cast<const void*>(lo), needed, cudaMemcpyDefault, stream_),
                      "cudaMemcpyAsync (staging a collective on host memory)", rank_);
      } else {
        const std::size_t recv_at = (send_bytes + 255) / 256 * 256;
        needed = recv_at + recv_bytes;
        s = base;
        r = base + recv_at;
        if (needed <= staging_.bytes() && send_bytes != 0)
          cuda::check(cudaMemcpyAsync(base, send, send_bytes, cudaMemcpyDefault, stream_),
                      "cudaMemcpyAsync (staging a collective on host memory)", rank_);
      }
      if (needed > staging_.bytes())
        throw usage_error("zero: nccl_communicator " + std::string(name) + " on host memory needs " + std::to_string(needed) +
                          " staging bytes; options.host_staging_bytes is " + std::to_string(staging_.bytes()) +
                          " (pass device memory, or raise it)");
      check_nccl(call(s, r, stream_), name);
      settle(name, o.start, o.deadline);
    } else {
      check_nccl(call(s, r, stream_), name);
      settle(name, o.start, o.deadline);
    }
    cuda::check(cudaEventRecord(o.done, stream_), "cudaEventRecord (after a collective)", rank_);
    ++sequence_;
    traffic_.add(kind, traffic_bytes);
    if (staged) {
      // the collective first, under its deadline; only then the copy back, which (into pageable
      // memory) would block the host in the CUDA runtime, unwatched, until the collective ended
      wait_host(sequence_);
      if (recv_bytes != 0) {
        cuda::check(cudaMemcpyAsync(recv, r, recv_bytes, cudaMemcpyDefault, stream_),
                    "cudaMemcpyAsync (results of a collective on host memory)", rank_);
        cuda::check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (results of a collective on host memory)", rank_);
      }
    }
    return sequence_;
  }

  //! The compute stream waits for collective `sequence` (when it has not completed already).
  void order_after(std::uint64_t sequence) {
    check_usable();
    if (sequence <= retired_) return;
    const in_flight& o = slot(sequence);
    if (o.sequence != sequence) return;  // recycled: it completed long ago
    cuda::check(cudaStreamWaitEvent(compute_, o.done, 0), "cudaStreamWaitEvent (the compute stream, after a collective)", rank_);
  }

  void finish(std::uint64_t sequence) { order_after(sequence); }

  bool completed(std::uint64_t sequence) const noexcept {
    if (sequence <= retired_) return true;
    const in_flight& o = ring_[sequence % ring_.size()];
    return o.sequence != sequence || cudaEventQuery(o.done) == cudaSuccess;
  }

  static ncclRedOp_t nccl_op(reduce_op op) noexcept { return op == reduce_op::sum ? ncclSum : ncclMax; }

  template <class T>
  std::uint64_t start_reduce_scatter(const T* send, T* recv, std::size_t count, reduce_op op) {
    const std::size_t all = count * static_cast<std::size_t>(world_) * sizeof(T);
    return start(collective::reduce_scatter, send, recv, all, count * sizeof(T), all, [&](const void* s, void* r, cudaStream_t stream) {
      return ncclReduceScatter(s, r, count, cuda::detail::nccl_type<T>(), nccl_op(op), comm_, stream);
    });
  }
  template <class T>
  std::uint64_t start_all_gather(const T* send, T* recv, std::size_t count) {
    const std::size_t all = count * static_cast<std::size_t>(world_) * sizeof(T);
    const std::size_t n = count * cuda::detail::nccl_scale<T>;
    return start(collective::all_gather, send, recv, count * sizeof(T), all, all, [&](const void* s, void* r, cudaStream_t stream) {
      return ncclAllGather(s, r, n, cuda::detail::nccl_type<T>(), comm_, stream);
    });
  }
  template <class T>
  std::uint64_t start_all_reduce(const T* send, T* recv, std::size_t count, reduce_op op) {
    return start(collective::all_reduce, send, recv, count * sizeof(T), count * sizeof(T), 2 * count * sizeof(T),
                 [&](const void* s, void* r, cudaStream_t stream) {
                   return ncclAllReduce(s, r, count, cuda::detail::nccl_type<T>(), nccl_op(op), comm_, stream);
                 });
  }
  template <class T>
  std::uint64_t start_broadcast(T* data, std::size_t count, int root) {
    check_root(root, "broadcast");
    const std::size_t n = count * cuda::detail::nccl_scale<T>;
    return start(collective::broadcast, data, data, count * sizeof(T), count * sizeof(T), count * sizeof(T),
                 [&](const void* s, void* r, cudaStream_t stream) {
                   return ncclBroadcast(s, r, n, cuda::detail::nccl_type<T>(), root, comm_, stream);
                 });
  }
  //! The receive buffer exists on the root only: elsewhere it is neither staged nor checked, and
  //! NCCL gets null ("recvbuff may be NULL on all calls except for root device").
  template <class T>
  std::uint64_t start_reduce(const T* send, T* recv, std::size_t count, reduce_op op, int root) {
    check_root(root, "reduce");
    const bool at_root = rank_ == root;
    return start(collective::reduce, send, at_root ? recv : nullptr, count * sizeof(T), at_root ? count * sizeof(T) : 0,
                 count * sizeof(T), [&](const void* s, void* r, cudaStream_t stream) {
                   return ncclReduce(s, at_root ? r : nullptr, count, cuda::detail::nccl_type<T>(), nccl_op(op), root, comm_,
                                     stream);
                 });
  }
  void check_root(int root, std::string_view what) const {
    if (root < 0 || root >= world_)
      throw usage_error("zero: " + std::string(what) + " root " + std::to_string(root) + " outside a group of " +
                        std::to_string(world_) + " ranks (nccl_communicator on " + where() + ")");
  }

  nccl_communicator_options options_;
  int rank_;
  int world_;
  cudaStream_t compute_;
  int pins_ = 0;  // engines alive on this communicator (they keep compute_)
  int device_ = -1;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  std::vector<in_flight> ring_;
  cuda::device_buffer<unsigned char> staging_;
  std::uint64_t sequence_ = 0;  // collectives enqueued
  std::uint64_t retired_ = 0;   // collectives known complete (in order)
  std::string broken_;
  traffic_counters traffic_;
};

static_assert(communicator<nccl_communicator>);
static_assert(nonblocking_communicator<nccl_communicator>);
static_assert(nonblocking_rooted_communicator<nccl_communicator>);

inline void nccl_request::wait() {
  if (comm_ != nullptr) comm_->order_after(sequence_);
}
inline void nccl_request::synchronize() {
  if (comm_ != nullptr) comm_->wait_host(sequence_);
}
inline bool nccl_request::done() const noexcept { return comm_ == nullptr || comm_->completed(sequence_); }

}  // namespace zero
