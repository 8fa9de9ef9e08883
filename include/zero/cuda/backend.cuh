#pragma once
//! @file cuda/backend.cuh
//! `zero::cuda::device_backend`: the engine's Backend (`zero/backend.hpp`) on an NVIDIA GPU. A
//! `zero::optimizer` over a device communicator (`zero::nccl_communicator`,
//! `zero::cuda::device_thread_communicator`) gets it through the communicator's `backend_type`:
//! master weights, optimizer state, gradient shard, slots, parameter shard and staging buffers
//! then live in device memory, allocated once at construction, and every pass of the engine is
//! a kernel on the communicator's compute stream:
//!
//!   engine pass                      kernel
//!   zeroing, fills                   cudaMemsetAsync, zero::cuda::fill
//!   packing and accumulation         zero::cuda::convert_copy, zero::cuda::convert_add
//!   non-finite check (per report)    zero::cuda::flag_nonfinite (one device word per parameter)
//!   sum of squares                   zero::cuda::sum_of_squares_reducer (CUB DeviceReduce)
//!   the update                       zero::cuda::fused_update: one launch for the whole shard
//!
//! Where the host waits (documented sync points): once per step to read the statistics the
//! ranks exchange (sum of squares and non-finite flags, a few words copied to the host, as
//! DeepSpeed reads the overflow flag and the norm), and at construction. Nothing else
//! synchronizes the host; nothing in a step allocates.
//!
//! Differences from the host backend, both documented in docs/cuda.md: the sum of squares adds
//! in another order (equal within double rounding; the update itself is bitwise the host's in
//! fp32), and the non-finite report names the lowest-numbered parameter with a non-finite
//! gradient on the rank rather than the first one reduced.
//!
//! Needs nvcc (include it from a .cu file compiled with `zero::cuda`'s flags).

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "zero/backend.hpp"
#include "zero/cuda/device_buffer.hpp"
#include "zero/cuda/error.hpp"
#include "zero/cuda/fused_update.cuh"
#include "zero/cuda/kernels.cuh"

namespace zero::cuda {

class device_backend {
 public:
  static constexpr std::size_t none = static_cast<std::size_t>(-1);
  //! Most 64-bit words a rank contributes to one statistics exchange.
  static constexpr std::size_t max_words = 8;

  //! A device buffer the engine owns: zeroed on the backend's stream when allocated and by
  //! `zero()`.
  template <class T>
  class buffer {
   public:
    buffer() = default;
    buffer(std::size_t count, stream_ref s) : memory_(count, s), stream_(s) {}
    T* data() const noexcept { return const_cast<T*>(memory_.data()); }
    std::size_t size() const noexcept { return memory_.size(); }
    std::size_t bytes() const noexcept { return memory_.bytes(); }
    void zero() { memory_.zero(stream_); }

   private:
    device_buffer<T> memory_;
    stream_ref stream_;
  };

  //! Runs on the communicator's compute stream (`compute_stream()` or `stream()`).
  template <class Comm>
  device_backend(Comm& comm, const backend_options&)
      : stream_(stream_of(comm), comm.rank()),
        world_(static_cast<std::size_t>(comm.world_size())),
        words_((world_ + 1) * max_words, comm.rank()) {}

  device_backend(const device_backend&) = delete;
  device_backend& operator=(const device_backend&) = delete;

  cudaStream_t stream() const noexcept { return stream_.stream; }

  template <class T>
  buffer<T> allocate(std::size_t n) {
    return buffer<T>(n, stream_);
  }
  template <class T>
  void fill(T* to, std::size_t n, T value) {
    if (n != 0) cuda::fill(to, n, value, stream_);
  }
  template <class To, class From>
  void convert(To* to, const From* from, std::size_t n) {
    if (n != 0) cuda::convert_copy(to, from, n, stream_);
  }
  template <class To, class From>
  void add(To* to, const From* from, std::size_t n) {
    if (n != 0) cuda::convert_add(to, from, n, stream_);
  }

  template <class T>
  void check_finite(std::size_t param, const T* data, std::size_t n) {
    if (n != 0) cuda::flag_nonfinite(data, n, flags_.data() + param, stream_);
  }
  //! The lowest-numbered parameter flagged since the last `clear_nonfinite()`. Waits for the
  //! stream (a documented sync point).
  std::size_t first_nonfinite() {
    if (host_flags_.empty()) return none;
    check(cudaMemcpyAsync(host_flags_.data(), flags_.data(), flags_.bytes(), cudaMemcpyDeviceToHost, stream_.stream),
          "cudaMemcpyAsync (non-finite flags)", stream_.rank);
    check(cudaStreamSynchronize(stream_.stream), "cudaStreamSynchronize (non-finite flags)", stream_.rank);
    for (std::size_t p = 0; p < host_flags_.size(); ++p)
      if (host_flags_[p] != 0) return p;
    return none;
  }
  void clear_nonfinite() { flags_.zero(stream_); }

  //! The statistics exchange: the words go to the device, through the communicator's
  //! all-gather, and back (the host waits for them).
  template <class Comm>
  void all_gather_words(Comm& comm, const std::uint64_t* mine, std::uint64_t* all, std::size_t n) {
    if (n > max_words)
      throw usage_error("zero: device_backend exchanges at most " + std::to_string(max_words) + " words per rank, asked " +
                        std::to_string(n));
    std::uint64_t* send = words_.data();
    std::uint64_t* receive = words_.data() + max_words;
    check(cudaMemcpyAsync(send, mine, n * sizeof(std::uint64_t), cudaMemcpyHostToDevice, stream_.stream),
          "cudaMemcpyAsync (statistics to the device)", stream_.rank);
    comm.all_gather(send, receive, n);
    check(cudaMemcpyAsync(all, receive, world_ * n * sizeof(std::uint64_t), cudaMemcpyDeviceToHost, stream_.stream),
          "cudaMemcpyAsync (statistics to the host)", stream_.rank);
    check(cudaStreamSynchronize(stream_.stream), "cudaStreamSynchronize (statistics)", stream_.rank);
  }

  //! At the engine's construction: the non-finite flags, the fused update's segment table and
  //! the norm's storage. Synchronizes the stream once.
  template <class Rule, class Value, class Accum, class Param>
  void prepare(std::size_t parameters, std::span<const update_run<Value, Accum, Param>> runs, float* state,
               std::size_t state_stride, std::size_t state_count) {
    flags_ = device_buffer<std::uint32_t>(parameters, stream_);
    host_flags_.assign(parameters, 0);
    std::size_t longest = 0;
    for (const auto& r : runs) longest = r.count > longest ? r.count : longest;
    squares_ = device_buffer<double>(runs.size() + 1, stream_.rank);
    host_squares_.assign(runs.size() + 1, 0.0);
    auto reducer = std::make_shared<sum_of_squares_reducer<Accum>>(longest, stream_.rank);
    prepared_bytes_ = reducer->bytes();
    reducer_ = reducer;
    if constexpr (elementwise_rule<Rule>) {
      std::vector<update_segment<Value, Accum, Param>> table;
      for (const auto& r : runs) table.push_back({r.values, r.grads, r.state_offset, r.out, r.count});
      auto update = std::make_shared<fused_update<Rule, Value, Accum, Param>>(
          std::span<const update_segment<Value, Accum, Param>>(table), state, state_stride, state_count, stream_.rank);
      prepared_bytes_ += update->bytes();
      update_ = update;
    }
    check(cudaStreamSynchronize(stream_.stream), "cudaStreamSynchronize (engine construction)", stream_.rank);
  }

  //! The sum of squares of the runs' gradients: one CUB reduction per run, added on the host in
  //! run order. Waits for the stream.
  template <class Value, class Accum, class Param>
  double sum_of_squares(std::span<const update_run<Value, Accum, Param>> runs) {
    auto& reduce = *static_cast<sum_of_squares_reducer<Accum>*>(reducer_.get());
    for (std::size_t i = 0; i < runs.size(); ++i) reduce(runs[i].grads, runs[i].count, squares_.data() + i, stream_);
    return read_squares(runs.size());
  }

  //! The fused update (one launch); with `with_norm` the kernel also sums the squares, and the
  //! host waits to read them.
  template <elementwise_rule Rule, class Value, class Accum, class Param>
  double update(const typename Rule::constants& c, std::span<const update_run<Value, Accum, Param>>, float factor,
                const zero::detail::value_rounding<Value>& round, std::uint64_t id_base, bool with_norm) {
    auto& launch = *static_cast<fused_update<Rule, Value, Accum, Param>*>(update_.get());
    update_controls controls;
    controls.factor = factor;
    controls.sum_of_squares = with_norm ? squares_.data() : nullptr;
    launch(c, controls, round, id_base, stream_);
    return with_norm ? read_squares(1) : 0.0;
  }

  //! Device bytes the backend holds besides the engine's buffers (flags, statistics words, the
  //! update's segment table, the norm's storage).
  std::size_t bytes() const noexcept {
    return flags_.bytes() + words_.bytes() + squares_.bytes() + prepared_bytes_;
  }

 private:
  template <class Comm>
  static cudaStream_t stream_of(Comm& comm) {
    if constexpr (requires { comm.compute_stream(); }) return comm.compute_stream();
    else return comm.stream();
  }

  double read_squares(std::size_t n) {
    check(cudaMemcpyAsync(host_squares_.data(), squares_.data(), n * sizeof(double), cudaMemcpyDeviceToHost, stream_.stream),
          "cudaMemcpyAsync (sum of squares)", stream_.rank);
    check(cudaStreamSynchronize(stream_.stream), "cudaStreamSynchronize (sum of squares)", stream_.rank);
    double total = 0;
    for (std::size_t i = 0; i < n; ++i) total += host_squares_[i];
    return total;
  }

  stream_ref stream_;
  std::size_t world_;
  device_buffer<std::uint64_t> words_;
  device_buffer<std::uint32_t> flags_;
  std::vector<std::uint32_t> host_flags_;
  device_buffer<double> squares_;
  std::vector<double> host_squares_;
  // typed by the engine's precision and rule, known at `prepare`
  std::shared_ptr<void> reducer_;
  std::shared_ptr<void> update_;
  std::size_t prepared_bytes_ = 0;
};

static_assert(zero::backend<device_backend>);

}  // namespace zero::cuda
