#pragma once
//! @file cuda/device_thread_communicator.cuh
//! `zero::device_thread_communicator`: N ranks as threads of one process on one GPU, each with
//! its own stream, exchanging device memory. NCCL refuses two ranks on one device; this lets
//! the multi-rank equivalence tests run on a single GPU, with results bitwise equal to
//! `thread_communicator`'s (sums in rank order 0..n-1, bf16/fp16 added in float and rounded
//! once, NaN-propagating max: the same arithmetic on the device).
//!
//! It composes a `thread_communicator` (the caller's, of a `thread_group`), whose collectives
//! serve as the rendezvous: each device collective first all-gathers, on the host, every rank's
//! signature (kind, element type, count, operation, root), buffers and events. So ranks that
//! call different collectives all throw the same `mismatch_error` before any memory is touched,
//! a rank that never arrives makes the others throw `timeout_error`, and one that leaves makes
//! them throw `communicator_error`, as with thread ranks. Then each rank's stream waits (with
//! events, not the host) for the others' streams to reach the collective, runs its part of the
//! result with a kernel or copies, and, after a second rendezvous, waits for the others to
//! finish reading its buffers. The host waits only at the rendezvous; device work stays in
//! stream order. Collectives on host memory are run by the composed `thread_communicator`; the
//! rooted `reduce` on host memory (which `thread_communicator` does not offer) meets the others
//! through it as on the device, and its root reduces on the host with `thread_communicator`'s
//! arithmetic (`zero::detail::reduce_ranks`).
//!
//! The non-blocking forms (`ireduce_scatter`, `iall_gather`, `iall_reduce`, `ireduce`,
//! `ibroadcast`) run the collective at once (stream-ordered) and return a completed
//! request: they satisfy the interface and overlap nothing.
//!
//! Needs nvcc (include it from a .cu file); link `zero::cuda`.
//! @pre every rank's thread has the same device current; at most 64 ranks

#if !defined(__CUDACC__)
#error "zero/cuda/device_thread_communicator.cuh contains kernels: include it from a .cu file compiled by nvcc (link zero::cuda)"
#endif

#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "zero/communicator.hpp"
#include "zero/cuda/error.hpp"
#include "zero/error.hpp"
#include "zero/thread_communicator.hpp"
#include "zero/types.hpp"

namespace zero {
namespace cuda {
class device_backend;  // zero/cuda/backend.cuh
}  // namespace cuda
namespace cuda::detail {

inline constexpr int max_device_thread_ranks = 64;

template <class T>
struct rank_inputs {
  const T* in[max_device_thread_ranks];
};

//! thread_communicator's combine (communicator.hpp), on the device: the same operations.
template <class W>
__device__ __forceinline__ W combine_ranks(W acc, W value, reduce_op op) {
  if (op == reduce_op::sum) return static_cast<W>(acc + value);
  if constexpr (std::is_floating_point_v<W>) {
    if (value != value) return value;
    if (acc != acc) return acc;
  }
  return value > acc ? value : acc;
}

//! out[i] = op over r = 0..world-1 of in[r][offset + i], in rank order; 16-bit floats widened
//! to float and rounded once (detail::reduce_ranks).
template <class T>
__global__ void __launch_bounds__(256) reduce_ranks_kernel(T* out, rank_inputs<T> inputs, std::size_t offset,
                                                           std::size_t count, int world, reduce_op op) {
  using wide = std::conditional_t<std::is_same_v<T, bf16> || std::is_same_v<T, fp16>, float, T>;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    wide acc = static_cast<wide>(inputs.in[0][offset + i]);
    for (int r = 1; r < world; ++r) acc = combine_ranks<wide>(acc, static_cast<wide>(inputs.in[r][offset + i]), op);
    if constexpr (std::is_same_v<wide, T>) out[i] = acc;
    else out[i] = T(acc);
  }
}

}  // namespace cuda::detail

//! A collective of `device_thread_communicator`'s non-blocking forms: already run (in stream
//! order) when returned.
struct device_thread_request {
  void wait() noexcept {}
  bool done() const noexcept { return true; }
};

//! One rank's endpoint on the device, over a rank's `thread_communicator`. Satisfies
//! `zero::communicator`. @pre `host` outlives this object and is not used for other
//! collectives while a device collective runs
class device_thread_communicator {
 public:
  //! An engine over this communicator keeps its buffers in device memory and runs its passes
  //! as kernels: include <zero/cuda/backend.cuh> where you instantiate the engine.
  using backend_type = cuda::device_backend;

  //! @param host   this rank's thread communicator (the rendezvous)
  //! @param stream this rank's stream: collectives are ordered in it
  device_thread_communicator(thread_communicator& host, cudaStream_t stream) : host_(&host), stream_(stream) {
    if (host.world_size() > cuda::detail::max_device_thread_ranks)
      throw usage_error("zero: device_thread_communicator supports at most " +
                        std::to_string(cuda::detail::max_device_thread_ranks) + " ranks, not " + std::to_string(host.world_size()));
    table_.resize(static_cast<std::size_t>(host.world_size()) * words);
    for (auto* e : {&ready_, &phase_one_, &phase_two_})
      cuda::check(cudaEventCreateWithFlags(e, cudaEventDisableTiming), "cudaEventCreateWithFlags", host.rank());
  }
  device_thread_communicator(const device_thread_communicator&) = delete;
  device_thread_communicator& operator=(const device_thread_communicator&) = delete;
  //! Meets the other ranks first (a host barrier), so that no rank destroys its events while
  //! another may still be making its stream wait for them after the last collective.
  ~device_thread_communicator() {
    try {
      host_->barrier();
    } catch (...) {  // a broken or timed-out group: the others are not coming
    }
    for (auto* e : {&ready_, &phase_one_, &phase_two_})
      if (*e != nullptr) (void)cudaEventDestroy(*e);
  }

  int rank() const noexcept { return host_->rank(); }
  int world_size() const noexcept { return host_->world_size(); }
  const traffic_counters& traffic() const noexcept { return traffic_; }
  cudaStream_t stream() const noexcept { return stream_; }
  //! The stream later collectives are ordered in. Only while no engine is built on this
  //! communicator: an engine orders its buffers and kernels on the stream it found at
  //! construction. @throws usage_error while an engine built on this communicator is alive
  void set_stream(cudaStream_t stream) {
    if (pins_ != 0)
      throw usage_error("zero: device_thread_communicator::set_stream on rank " + std::to_string(rank()) + " while " +
                        std::to_string(pins_) +
                        " engine(s) built on this communicator are alive: an engine keeps the stream it was built with; "
                        "set the stream before building the engine");
    stream_ = stream;
  }
  //! Held by each engine built on this communicator for its lifetime (see `set_stream`).
  void pin_stream() noexcept { ++pins_; }
  void unpin_stream() noexcept { --pins_; }

  //! recv[i] = op over ranks of send_r[rank * count + i]. In place: recv == send + rank * count.
  template <reducible T>
  void reduce_scatter(const T* send, T* recv, std::size_t count, reduce_op op = reduce_op::sum) {
    if (on_host(send, recv, count)) {
      host_->reduce_scatter(send, recv, count, op);
    } else {
      meet<T>(collective::reduce_scatter, send, recv, count, op, 0);
      reduce_into(recv, static_cast<std::size_t>(rank()) * count, count, op);
      finish(phase_one_);
    }
    traffic_.add(collective::reduce_scatter, count * sizeof(T) * world());
  }

  //! recv[r * count + i] = send_r[i]. In place: send == recv + rank * count.
  template <class T>
  void all_gather(const T* send, T* recv, std::size_t count) {
    if (on_host(send, recv, count)) {
      host_->all_gather(send, recv, count);
    } else {
      meet<T>(collective::all_gather, send, recv, count, reduce_op::sum, 0);
      for (int r = 0; r < world_size(); ++r) {
        const T* from = static_cast<const T*>(send_of(r));
        T* to = recv + static_cast<std::size_t>(r) * count;
        if (from != to && count != 0)
          cuda::check(cudaMemcpyAsync(to, from, count * sizeof(T), cudaMemcpyDeviceToDevice, stream_),
                      "cudaMemcpyAsync (device_thread_communicator all_gather)", rank());
      }
      finish(phase_one_);
    }
    traffic_.add(collective::all_gather, count * sizeof(T) * world());
  }

  //! recv[i] = op over ranks of send_r[i]. In place: send == recv.
  template <reducible T>
  void all_reduce(const T* send, T* recv, std::size_t count, reduce_op op = reduce_op::sum) {
    if (on_host(send, recv, count)) {
      host_->all_reduce(send, recv, count, op);
      traffic_.add(collective::all_reduce, 2 * count * sizeof(T));
      return;
    }
    meet<T>(collective::all_reduce, send, recv, count, op, 0);
    // phase 1: this rank reduces its chunk into its own recv (nobody else reads that chunk of it)
    const auto [lo, hi] = chunk(count, rank());
    reduce_into(recv + lo, lo, hi - lo, op);
    finish(phase_one_);
    // phase 2: copy every other rank's finished chunk from its recv
    for (int r = 0; r < world_size(); ++r) {
      if (r == rank()) continue;
      const auto [b, e] = chunk(count, r);
      if (e > b)
        cuda::check(cudaMemcpyAsync(recv + b, static_cast<const T*>(recv_of(r)) + b, (e - b) * sizeof(T),
                                    cudaMemcpyDeviceToDevice, stream_),
                    "cudaMemcpyAsync (device_thread_communicator all_reduce)", rank());
    }
    finish(phase_two_);
    traffic_.add(collective::all_reduce, 2 * count * sizeof(T));
  }

  //! data on every rank = data on `root`.
  template <class T>
  void broadcast(T* data, std::size_t count, int root) {
    if (root < 0 || root >= world_size())
      throw usage_error("zero: broadcast root " + std::to_string(root) + " outside a group of " + std::to_string(world_size()));
    if (on_host(data, data, count)) {
      host_->broadcast(data, count, root);
    } else {
      meet<T>(collective::broadcast, data, data, count, reduce_op::sum, root);
      if (rank() != root && count != 0)
        cuda::check(cudaMemcpyAsync(data, recv_of(root), count * sizeof(T), cudaMemcpyDeviceToDevice, stream_),
                    "cudaMemcpyAsync (device_thread_communicator broadcast)", rank());
      finish(phase_one_);
    }
    traffic_.add(collective::broadcast, count * sizeof(T));
  }

  //! On rank `root`: recv[i] = op over ranks of send_r[i], in rank order (the arithmetic of
  //! `reduce_scatter`). Nothing is written on the other ranks; their `recv` may be null (it is not
  //! looked at, nor its kind of memory). In place: send == recv. On host memory the ranks meet
  //! through the thread communicator as on the device (the same agreement checks, the root
  //! included, and whether the memory is the host's), and the root reduces on the host.
  template <reducible T>
  void reduce(const T* send, T* recv, std::size_t count, reduce_op op, int root) {
    if (root < 0 || root >= world_size())
      throw usage_error("zero: reduce root " + std::to_string(root) + " outside a group of " + std::to_string(world_size()) +
                        " ranks (device_thread_communicator on rank " + std::to_string(rank()) + ")");
    const bool at_root = rank() == root;
    T* const out = at_root ? recv : nullptr;
    if (on_host(send, at_root ? recv : send, count)) {
      exchange<T>(collective::reduce, send, out, count, op, root, true);
      if (at_root && count != 0)
        zero::detail::reduce_ranks(out, count, world_size(), [&](int r) { return static_cast<const T*>(send_of(r)); }, op);
      host_->barrier();  // the others' send buffers are read until here
    } else {
      meet<T>(collective::reduce, send, out, count, op, root);
      if (at_root) reduce_into(out, 0, count, op);
      finish(phase_one_);
    }
    traffic_.add(collective::reduce, count * sizeof(T));
  }

  //! Every rank's host and stream reach this point: the streams wait for each other.
  void barrier() {
    check_usable();
    meet<void>(collective::barrier, nullptr, nullptr, 0, reduce_op::sum, 0);
    finish(phase_one_);
    traffic_.add(collective::barrier, 0);
  }

  template <reducible T>
  [[nodiscard]] device_thread_request ireduce_scatter(const T* send, T* recv, std::size_t count, reduce_op op = reduce_op::sum) {
    reduce_scatter(send, recv, count, op);
    return {};
  }
  template <class T>
  [[nodiscard]] device_thread_request iall_gather(const T* send, T* recv, std::size_t count) {
    all_gather(send, recv, count);
    return {};
  }
  template <reducible T>
  [[nodiscard]] device_thread_request iall_reduce(const T* send, T* recv, std::size_t count, reduce_op op = reduce_op::sum) {
    all_reduce(send, recv, count, op);
    return {};
  }
  template <reducible T>
  [[nodiscard]] device_thread_request ireduce(const T* send, T* recv, std::size_t count, reduce_op op, int root) {
    reduce(send, recv, count, op, root);
    return {};
  }
  template <class T>
  [[nodiscard]] device_thread_request ibroadcast(T* data, std::size_t count, int root) {
    broadcast(data, count, root);
    return {};
  }
  void progress() noexcept {}

 private:
  // one rank's row of the rendezvous table
  // (kind to memory: what every rank must agree on; memory is 1 for a collective on host memory)
  enum word : std::size_t { kind_word, type_word, count_word, op_word, root_word, memory_word, send_word, recv_word,
                            ready_word, phase_one_word, phase_two_word, words };

  std::size_t world() const noexcept { return static_cast<std::size_t>(world_size()); }
  const std::uint64_t* row(int r) const noexcept { return table_.data() + static_cast<std::size_t>(r) * words; }
  const void* send_of(int r) const noexcept { return reinterpret_cast<const void*>(static_cast<std::uintptr_t>(row(r)[send_word])); }
  void* recv_of(int r) const noexcept { return reinterpret_cast<void*>(static_cast<std::uintptr_t>(row(r)[recv_word])); }
  static cudaEvent_t event_of(std::uint64_t w) noexcept { return reinterpret_cast<cudaEvent_t>(static_cast<std::uintptr_t>(w)); }

  //! Whether this collective works on host memory (then the thread communicator runs it).
  //! Empty collectives take the device path (a rendezvous of the streams).
  template <class T>
  bool on_host(const T* send, const T* recv, std::size_t count) const {
    check_usable();
    if (count == 0) return false;
    const bool send_on_device = cuda::is_device_pointer(send), recv_on_device = cuda::is_device_pointer(recv);
    if (send_on_device != recv_on_device)
      throw usage_error("zero: device_thread_communicator on rank " + std::to_string(rank()) +
                        ": a collective's send and receive buffers must both be device memory or both host memory; send is " +
                        (send_on_device ? "device" : "host") + " memory, receive is " + (recv_on_device ? "device" : "host") +
                        " memory");
    return !send_on_device;
  }

  void check_usable() const {
    if (!broken_.empty())
      throw communicator_error("zero: device_thread_communicator on rank " + std::to_string(rank()) +
                               " is unusable after an earlier failure: " + broken_);
  }

  std::pair<std::size_t, std::size_t> chunk(std::size_t count, int r) const noexcept {
    const std::size_t n = world(), per = count / n, extra = count % n, ur = static_cast<std::size_t>(r);
    const std::size_t b = ur * per + (ur < extra ? ur : extra);
    return {b, b + per + (ur < extra ? 1 : 0)};
  }

  //! The element type, as exchanged: the index of its name, and its size for other types.
  template <class T>
  static std::uint64_t type_code() noexcept {
    const std::string_view name = type_name<T>();
    for (std::uint64_t k = 0; k < std::size(type_names); ++k)
      if (type_names[k] == name) return k;
    if constexpr (std::is_void_v<T>) return 0;
    else return 1000 + sizeof(T);
  }
  static std::string type_text(std::uint64_t code) {
    return code < std::size(type_names) ? std::string(type_names[code]) : std::to_string(code - 1000) + "-byte type";
  }
  static constexpr std::string_view type_names[] = {"fp32", "fp64", "bf16", "fp16", "u64", "i64", "u32", "i32", "none"};

  static std::string describe(const std::uint64_t* w) {
    const auto kind = static_cast<collective>(w[kind_word]);
    std::string d = std::string(to_string(kind)) + "<" + type_text(w[type_word]) + ">(count " + std::to_string(w[count_word]);
    if (kind == collective::broadcast || kind == collective::reduce) d += ", root " + std::to_string(w[root_word]);
    if (kind == collective::reduce_scatter || kind == collective::all_reduce || kind == collective::reduce)
      d += static_cast<reduce_op>(w[op_word]) == reduce_op::sum ? ", sum" : ", max";
    if (w[memory_word] != 0) d += ", host memory";
    return d + ")";
  }

  //! Rendezvous 1: records this rank's ready event, exchanges the rows (`exchange`), and makes
  //! this stream wait for every rank's stream to reach it.
  template <class T>
  void meet(collective kind, const void* send, void* recv, std::size_t count, reduce_op op, int root) {
    cuda::check(cudaEventRecord(ready_, stream_), "cudaEventRecord (device_thread_communicator)", rank());
    exchange<T>(kind, send, recv, count, op, root, false);
    for (int r = 0; r < world_size(); ++r)
      if (r != rank())
        cuda::check(cudaStreamWaitEvent(stream_, event_of(row(r)[ready_word]), 0), "cudaStreamWaitEvent (device_thread_communicator)",
                    rank());
  }

  //! All-gathers every rank's row on the host and checks that all call the same collective (on
  //! the same kind of memory).
  template <class T>
  void exchange(collective kind, const void* send, void* recv, std::size_t count, reduce_op op, int root, bool host_memory) {
    const std::uint64_t mine[words] = {static_cast<std::uint64_t>(kind),
                                       type_code<T>(),
                                       count,
                                       static_cast<std::uint64_t>(op),
                                       static_cast<std::uint64_t>(root),
                                       host_memory ? 1u : 0u,
                                       reinterpret_cast<std::uintptr_t>(send),
                                       reinterpret_cast<std::uintptr_t>(recv),
                                       reinterpret_cast<std::uintptr_t>(ready_),
                                       reinterpret_cast<std::uintptr_t>(phase_one_),
                                       reinterpret_cast<std::uintptr_t>(phase_two_)};
    host_->all_gather(mine, table_.data(), words);
    for (int r = 0; r < world_size(); ++r) {
      const std::uint64_t* w = row(r);
      bool same = true;
      for (std::size_t k = 0; k <= memory_word; ++k) same = same && w[k] == row(0)[k];
      if (same) continue;
      // every rank sees the same table, so every rank throws the same error
      broken_ = "zero: device collective mismatch in a device_thread_communicator group of " +
                std::to_string(world_size()) + ": rank 0 calls " + describe(row(0)) + "; rank " + std::to_string(r) +
                " calls " + describe(w);
      throw mismatch_error(broken_);
    }
  }

  //! After this rank's part: records `event`, meets the others again (host), and makes this
  //! stream wait for every rank's `event`, so no rank reuses its buffers while another reads them.
  void finish(cudaEvent_t event) {
    cuda::check(cudaEventRecord(event, stream_), "cudaEventRecord (device_thread_communicator)", rank());
    host_->barrier();
    const std::size_t which = event == phase_one_ ? phase_one_word : phase_two_word;
    for (int r = 0; r < world_size(); ++r)
      if (r != rank())
        cuda::check(cudaStreamWaitEvent(stream_, event_of(row(r)[which]), 0), "cudaStreamWaitEvent (device_thread_communicator)",
                    rank());
  }

  //! out[i] = op over ranks of send_r[offset + i], i in [0, count).
  template <class T>
  void reduce_into(T* out, std::size_t offset, std::size_t count, reduce_op op) {
    if (count == 0) return;
    if (world_size() == 1) {  // a group of one: the input is the result
      const T* in = static_cast<const T*>(send_of(0)) + offset;
      if (in != out)
        cuda::check(cudaMemcpyAsync(out, in, count * sizeof(T), cudaMemcpyDeviceToDevice, stream_),
                    "cudaMemcpyAsync (device_thread_communicator)", rank());
      return;
    }
    cuda::detail::rank_inputs<T> inputs{};
    for (int r = 0; r < world_size(); ++r) inputs.in[r] = static_cast<const T*>(send_of(r));
    const std::size_t blocks = (count + 255) / 256;
    cuda::detail::reduce_ranks_kernel<T><<<static_cast<unsigned>(blocks < 4096 ? blocks : 4096), 256, 0, stream_>>>(
        out, inputs, offset, count, world_size(), op);
    cuda::check_launch("zero::device_thread_communicator reduction", rank());
  }

  thread_communicator* host_;
  cudaStream_t stream_;
  int pins_ = 0;  // engines alive on this communicator (they keep stream_)
  cudaEvent_t ready_ = nullptr, phase_one_ = nullptr, phase_two_ = nullptr;
  std::vector<std::uint64_t> table_;
  std::string broken_;
  traffic_counters traffic_;
};

static_assert(communicator<device_thread_communicator>);
static_assert(nonblocking_communicator<device_thread_communicator>);
static_assert(rooted_communicator<device_thread_communicator>);
static_assert(nonblocking_rooted_communicator<device_thread_communicator>);

}  // namespace zero
