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
//!   gradient predivision             zero::cuda::scale
//!   gradients released               cudaEventRecord of the release event (`release_event()`)
//!   non-finite check (per report)    zero::cuda::note_first_nonfinite (one device word: the first check that found one)
//!   sum of squares                   zero::cuda::fused_update::sum_of_squares (one launch, the update's own norm)
//!   the update                       zero::cuda::fused_update: one launch for the whole shard
//!   a tensor-wise rule (lamb)        zero::cuda::tensorwise_update: two launches around the
//!                                    exchange of per-tensor sums
//!
//! Where the host waits (documented sync points), always first through the communicator's
//! `synchronize()` when it has one (NCCL: the collectives in flight, under their deadlines), then
//! for the stream: once per step to read the statistics the
//! ranks exchange (sum of squares and non-finite flags, a few words copied to the host, as
//! DeepSpeed reads the overflow flag and the norm), and at construction; with a tensor-wise
//! rule also twice more per step: to read the per-piece sums of pass 1, and in the exchange of
//! the per-tensor sums. Nothing else synchronizes the host; nothing in a step allocates.
//!
//! One difference from the host backend (docs/cuda.md): the sum of squares adds in another
//! order (equal within double rounding); the update itself is bitwise the host's in fp32, and
//! the non-finite report names the same parameter (the first one checked that had one).
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
#include "zero/cuda/tensorwise_update.cuh"

namespace zero::cuda {

class device_backend {
 public:
  static constexpr std::size_t none = static_cast<std::size_t>(-1);
  //! Most 64-bit words a rank contributes to one collective of an exchange (longer exchanges
  //! take several).
  static constexpr std::size_t max_words = 8;
  //! Parameter groups the update's launches carry the constants of.
  static constexpr std::size_t max_groups = detail::max_groups;
  //! The engine's buffers are device memory: the host reads and writes them with `to_host` and
  //! `from_host`.
  static constexpr bool host_accessible = false;

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
      : pin_(comm),
        stream_(stream_of(comm), comm.rank()),
        world_(static_cast<std::size_t>(comm.world_size())),
        words_((world_ + 1) * max_words, comm.rank()),
        received_(world_ * max_words),
        first_(1, comm.rank()),
        squares_(1, comm.rank()),
        release_event_(make_event(comm.rank())) {
    if constexpr (requires { comm.synchronize(); }) {
      comm_ = &comm;
      settle_ = [](void* c) { static_cast<Comm*>(c)->synchronize(); };
    }
  }

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
  void scale(T* data, std::size_t n, float factor) {
    if (n != 0) cuda::scale(data, n, factor, stream_);
  }

  //! Records the release event on the engine's stream, after every read of the gradients the
  //! engine releases now (packing kernels enqueued so far): the framework's stream waits for it
  //! (cudaStreamWaitEvent) before it reuses released memory.
  void mark_released() {
    check(cudaEventRecord(release_event_.get(), stream_.stream), "cudaEventRecord (gradients released)", stream_.rank);
  }
  //! The event `mark_released` records (the latest record is the one a wait waits for).
  cudaEvent_t release_event() const noexcept { return release_event_.get(); }

  //! Each check gets an order (a count of checks, shifted, with the parameter's index below it),
  //! and the device word keeps the lowest order that found a non-finite value.
  template <class T>
  void check_finite(std::size_t param, const T* data, std::size_t n) {
    if (n == 0) return;
    const unsigned long long order = (static_cast<unsigned long long>(checks_++) << 32) | static_cast<unsigned long long>(param);
    cuda::note_first_nonfinite(data, n, order, first_.data(), stream_);
  }
  //! The parameter of the first check that found a non-finite value since the last
  //! `clear_nonfinite()`. Waits for the stream (a documented sync point).
  std::size_t first_nonfinite() {
    unsigned long long first = 0;
    settle();
    check(cudaMemcpyAsync(&first, first_.data(), sizeof first, cudaMemcpyDeviceToHost, stream_.stream),
          "cudaMemcpyAsync (first non-finite check)", stream_.rank);
    check(cudaStreamSynchronize(stream_.stream), "cudaStreamSynchronize (first non-finite check)", stream_.rank);
    return first == ~0ull ? none : static_cast<std::size_t>(first & 0xffffffffull);
  }
  void clear_nonfinite() {
    check(cudaMemsetAsync(first_.data(), 0xff, sizeof(unsigned long long), stream_.stream), "cudaMemsetAsync (non-finite word)",
          stream_.rank);
    checks_ = 0;
  }

  //! Copies between device memory (the engine's buffers, the framework's parameters) and host
  //! memory; each waits for the stream (used between steps, by checkpoints).
  template <class T>
  void to_host(T* to, const T* from, std::size_t n) {
    copy(to, from, n, cudaMemcpyDeviceToHost, "cudaMemcpyAsync (device to host)");
  }
  template <class T>
  void from_host(T* to, const T* from, std::size_t n) {
    copy(to, from, n, cudaMemcpyHostToDevice, "cudaMemcpyAsync (host to device)");
  }

  //! A word exchange (the per-step statistics, checkpoints' outcomes): every rank's `n` words
  //! (host memory) into `all` in rank order, through the communicator's all-gather on device
  //! memory, `max_words` at a time. The host waits for each.
  template <class Comm>
  void all_gather_words(Comm& comm, const std::uint64_t* mine, std::uint64_t* all, std::size_t n) {
    std::uint64_t* send = words_.data();
    std::uint64_t* receive = words_.data() + max_words;
    for (std::size_t at = 0; at < n; at += max_words) {
      const std::size_t count = n - at < max_words ? n - at : max_words;
      check(cudaMemcpyAsync(send, mine + at, count * sizeof(std::uint64_t), cudaMemcpyHostToDevice, stream_.stream),
            "cudaMemcpyAsync (words to the device)", stream_.rank);
      comm.all_gather(send, receive, count);
      settle();
      check(cudaMemcpyAsync(received_.data(), receive, world_ * count * sizeof(std::uint64_t), cudaMemcpyDeviceToHost,
                            stream_.stream),
            "cudaMemcpyAsync (words to the host)", stream_.rank);
      check(cudaStreamSynchronize(stream_.stream), "cudaStreamSynchronize (word exchange)", stream_.rank);
      for (std::size_t r = 0; r < world_; ++r)
        for (std::size_t k = 0; k < count; ++k) all[r * n + at + k] = received_[r * count + k];
    }
  }

  //! At the engine's construction: the non-finite flags, the update's segment table (the fused
  //! update's, or a tensor-wise rule's piece table and a table for the norm) and the norm's
  //! storage. Synchronizes the stream once.
  template <update_rule Rule, class Value, class Accum, class Param>
  void prepare(std::size_t parameters, std::span<const update_run<Value, Accum, Param>> runs,
               std::span<const update_run<Value, Accum, Param>> pieces, float* state, std::size_t state_stride,
               std::size_t state_count) {
    using run = update_run<Value, Accum, Param>;
    if constexpr (elementwise_rule<Rule>) {
      (void)parameters;
      (void)pieces;
      auto update = std::make_shared<fused_update<Rule, Value, Accum, Param>>(runs, state, state_stride, state_count, stream_);
      prepared_bytes_ = update->bytes();
      norm_target_ = update.get();
      norm_ = [](void* u, double* result, stream_ref s) {
        static_cast<fused_update<Rule, Value, Accum, Param>*>(u)->sum_of_squares(result, s);
      };
      update_ = std::move(update);
    } else {
      auto norm = std::make_shared<detail::segment_table<Value, Accum, Param>>(
          runs, [](const run& r) { return detail::aligned16(r.grads); }, stream_, "device_backend norm");
      auto update = std::make_shared<tensorwise_update<Rule, Value, Accum, Param>>(pieces, state, state_stride, state_count,
                                                                                   stream_);
      tensor_words_ = device_buffer<double>(2 * parameters, stream_.rank);
      prepared_bytes_ = norm->bytes() + update->bytes() + tensor_words_.bytes();
      norm_target_ = norm.get();
      norm_ = [](void* t, double* result, stream_ref s) {
        static_cast<const detail::segment_table<Value, Accum, Param>*>(t)->sum_of_squares(result, s);
      };
      norm_owner_ = std::move(norm);
      update_ = std::move(update);
    }
    clear_nonfinite();
    check(cudaStreamSynchronize(stream_.stream), "cudaStreamSynchronize (engine construction)", stream_.rank);
  }

  //! The sum of squares of the runs' gradients: one launch over the prepared runs (the same
  //! bits as the update's fused norm). Waits for the stream.
  template <class Value, class Accum, class Param>
  double sum_of_squares(std::span<const update_run<Value, Accum, Param>>) {
    norm_(norm_target_, squares_.data(), stream_);
    return read_squares();
  }

  //! The fused update (one launch); with `with_norm` the kernel also sums the squares, and the
  //! host waits to read them.
  template <elementwise_rule Rule, class Value, class Accum, class Param>
  double update(std::span<const typename Rule::constants> c, std::span<const update_run<Value, Accum, Param>>, float factor,
                const zero::detail::value_rounding<Value>& round, std::uint64_t id_base, bool with_norm) {
    auto& launch = *static_cast<fused_update<Rule, Value, Accum, Param>*>(update_.get());
    update_controls controls;
    controls.factor = factor;
    controls.sum_of_squares = with_norm ? squares_.data() : nullptr;
    launch(c, controls, round, id_base, stream_);
    return with_norm ? read_squares() : 0.0;
  }

  //! Pass 1 of a tensor-wise rule over the prepared pieces; the sums of piece q into
  //! `sums[2q]`, `sums[2q + 1]` (host memory). Waits for the stream.
  template <tensorwise_rule Rule, class Value, class Accum, class Param>
  void tensor_sums(std::span<const typename Rule::constants> c, std::span<const update_run<Value, Accum, Param>>, float factor,
                   double* sums) {
    settle();
    static_cast<tensorwise_update<Rule, Value, Accum, Param>*>(update_.get())->first_pass(c, factor, sums, stream_);
  }

  //! Every rank's `n` per-tensor sums added, in place (host memory): to the device, through the
  //! communicator's all-reduce, and back (the host waits for them).
  template <class Comm>
  void all_reduce_sums(Comm& comm, double* sums, std::size_t n) {
    if (n > tensor_words_.size())
      throw usage_error("zero: device_backend exchanges " + std::to_string(tensor_words_.size()) + " per-tensor sums, asked " +
                        std::to_string(n));
    if (n == 0) return;
    check(cudaMemcpyAsync(tensor_words_.data(), sums, n * sizeof(double), cudaMemcpyHostToDevice, stream_.stream),
          "cudaMemcpyAsync (per-tensor sums to the device)", stream_.rank);
    comm.all_reduce(tensor_words_.data(), tensor_words_.data(), n, reduce_op::sum);
    settle();
    check(cudaMemcpyAsync(sums, tensor_words_.data(), n * sizeof(double), cudaMemcpyDeviceToHost, stream_.stream),
          "cudaMemcpyAsync (per-tensor sums to the host)", stream_.rank);
    check(cudaStreamSynchronize(stream_.stream), "cudaStreamSynchronize (per-tensor sums)", stream_.rank);
  }

  //! Pass 2 of a tensor-wise rule: piece q updated with `trust[q]` (host memory). Enqueued; does
  //! not wait.
  template <tensorwise_rule Rule, class Value, class Accum, class Param>
  void tensor_update(std::span<const typename Rule::constants> c, std::span<const update_run<Value, Accum, Param>>, const float* trust,
                     const zero::detail::value_rounding<Value>& round, std::uint64_t id_base) {
    static_cast<tensorwise_update<Rule, Value, Accum, Param>*>(update_.get())->second_pass(c, trust, round, id_base, stream_);
  }

  //! Device bytes the backend holds besides the engine's buffers (flags, statistics words, the
  //! update's segment table, the norm's storage).
  std::size_t bytes() const noexcept {
    return first_.bytes() + words_.bytes() + squares_.bytes() + prepared_bytes_;
  }

 private:
  struct event_deleter {
    void operator()(CUevent_st* e) const noexcept { (void)cudaEventDestroy(e); }
  };
  using event_handle = std::unique_ptr<CUevent_st, event_deleter>;
  static event_handle make_event(int rank) {
    cudaEvent_t e = nullptr;
    check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreateWithFlags (release event)", rank);
    return event_handle(e);
  }

  template <class Comm>
  static cudaStream_t stream_of(Comm& comm) {
    if constexpr (requires { comm.compute_stream(); }) return comm.compute_stream();
    else return comm.stream();
  }

  template <class T>
  void copy(T* to, const T* from, std::size_t n, cudaMemcpyKind kind, const char* what) {
    if (n == 0) return;
    settle();
    check(cudaMemcpyAsync(to, from, n * sizeof(T), kind, stream_.stream), what, stream_.rank);
    check(cudaStreamSynchronize(stream_.stream), "cudaStreamSynchronize (copy between host and device)", stream_.rank);
  }

  //! Before the host waits for the stream: the host waits for the communicator's collectives
  //! in flight through the communicator (`synchronize()`, watched by its deadlines), so that a
  //! rank that died makes this one throw `timeout_error` instead of blocking in the CUDA runtime.
  //! The stream wait after it waits for this GPU's own work. (A reading from device memory into
  //! pageable host memory blocks the host until the stream reaches it.)
  void settle() {
    if (settle_ != nullptr) settle_(comm_);
  }

  double read_squares() {
    double total = 0;
    settle();
    check(cudaMemcpyAsync(&total, squares_.data(), sizeof total, cudaMemcpyDeviceToHost, stream_.stream),
          "cudaMemcpyAsync (sum of squares)", stream_.rank);
    check(cudaStreamSynchronize(stream_.stream), "cudaStreamSynchronize (sum of squares)", stream_.rank);
    return total;
  }

  //! Holds the communicator's stream fixed while the engine lives: the engine's buffers are
  //! ordered on the stream it found at construction, so the communicator refuses
  //! `set_compute_stream` / `set_stream` meanwhile (`pin_stream` / `unpin_stream`).
  class stream_pin {
   public:
    template <class Comm>
    explicit stream_pin(Comm& comm) noexcept {
      if constexpr (requires { comm.pin_stream(); comm.unpin_stream(); }) {
        comm.pin_stream();
        comm_ = &comm;
        unpin_ = [](void* c) noexcept { static_cast<Comm*>(c)->unpin_stream(); };
      }
    }
    stream_pin(const stream_pin&) = delete;
    stream_pin& operator=(const stream_pin&) = delete;
    ~stream_pin() {
      if (unpin_ != nullptr) unpin_(comm_);
    }

   private:
    void* comm_ = nullptr;
    void (*unpin_)(void*) noexcept = nullptr;
  };

  stream_pin pin_;  // first: released last
  stream_ref stream_;
  void* comm_ = nullptr;                 // the communicator, when it has a watched `synchronize()`
  void (*settle_)(void*) = nullptr;
  std::size_t world_;
  device_buffer<std::uint64_t> words_;
  std::vector<std::uint64_t> received_;  // one collective's words, every rank's, on the host
  device_buffer<unsigned long long> first_;  // the first non-finite check's order (~0: none)
  device_buffer<double> squares_;
  std::uint64_t checks_ = 0;                 // non-finite checks since the last clear
  // the update (fused_update or tensorwise_update), typed by the engine's rule and precision
  // (known at `prepare`), and what computes the norm (the fused update itself, or norm_owner_)
  std::shared_ptr<void> update_;
  std::shared_ptr<void> norm_owner_;
  void* norm_target_ = nullptr;
  void (*norm_)(void*, double*, stream_ref) = nullptr;
  device_buffer<double> tensor_words_;  // tensor-wise rules: the per-tensor sums' exchange
  std::size_t prepared_bytes_ = 0;
  event_handle release_event_;  // recorded after the reads of released gradients
};

static_assert(zero::backend<device_backend>);

}  // namespace zero::cuda
