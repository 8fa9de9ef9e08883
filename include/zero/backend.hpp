#pragma once
//! @file backend.hpp
//! The Backend policy: where the engine's buffers live and what runs its element passes. The
//! engine (`optimizer.hpp`) decides what moves where and when; its backend does the moving:
//! allocating and zeroing buffers, converting, adding, filling, checking for non-finite values,
//! the sum of squares and the fused update over the engine's runs of elements, and the
//! exchange of the per-step statistics words through the communicator.
//!
//! `host_backend` runs these on the CPU (worker threads, loops the compiler vectorizes). A
//! communicator over device memory names the backend the engine must use
//! (`Comm::backend_type`, for example the CUDA backend of `zero/cuda/`): the engine's buffers
//! then live where that communicator reads and writes. Every other communicator gets
//! `host_backend`.

#include <algorithm>
#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory_resource>
#include <span>
#include <type_traits>
#include <vector>

#define ZERO_DETAIL_INCLUDE_ALLOWED
#include "zero/detail/host_update.hpp"
#include "zero/detail/worker_pool.hpp"
#undef ZERO_DETAIL_INCLUDE_ALLOWED

#include "zero/communicator.hpp"
#include "zero/memory.hpp"
#include "zero/types.hpp"
#include "zero/update_rule.hpp"

namespace zero {

//! A contiguous run of elements the update walks: values, their gradients, their offset in
//! every state slot (also their element id for stochastic rounding, plus a rank offset), where
//! their model-precision copy goes (null: nowhere), how many there are, and the index of the
//! constants that update them in the span the update is given (`group`: the parameter group's
//! index; under `unreported_gradients::skip`, where each parameter has its own step count, the
//! index of its (group, own step) constants in that call's span).
template <class Value, class Accum, class Param>
struct update_run {
  Value* values;
  const Accum* grads;
  std::size_t state_offset;
  Param* out;
  std::size_t count;
  std::uint32_t group = 0;
};

//! What a backend is built from (the engine's options).
struct backend_options {
  unsigned threads = 0;  //!< host: threads of the update and norm passes (0: the hardware's count)
  std::pmr::memory_resource* memory = std::pmr::new_delete_resource();  //!< host: where buffers come from
};

//! The operations the engine needs of a backend (checked for fp32 buffers; the engine
//! instantiates them for its precision's types).
template <class B>
concept backend = requires(B& b, float* to, const float* from, std::size_t n) {
  typename B::template buffer<float>;
  { B::host_accessible } -> std::convertible_to<bool>;
  b.to_host(to, from, n);
  b.from_host(to, from, n);
  { b.template allocate<float>(n) } -> std::same_as<typename B::template buffer<float>>;
  b.fill(to, n, 0.0f);
  b.convert(to, from, n);
  b.add(to, from, n);
  b.scale(to, n, 1.0f);
  b.check_finite(n, from, n);
  { b.first_nonfinite() } -> std::convertible_to<std::size_t>;
  b.clear_nonfinite();
  { b.bytes() } -> std::convertible_to<std::size_t>;
};

//! The CPU backend: buffers from a `std::pmr::memory_resource`, passes on worker threads.
class host_backend {
 public:
  template <class T>
  using buffer = detail::owned_buffer<T>;
  static constexpr std::size_t none = static_cast<std::size_t>(-1);
  //! The engine's buffers (and the framework's) are host memory.
  static constexpr bool host_accessible = true;

  explicit host_backend(const backend_options& o) : memory_(o.memory), pool_(o.threads) {}
  //! Built by the engine for its communicator (the host backend needs nothing of it).
  template <class Comm>
  host_backend(Comm&, const backend_options& o) : host_backend(o) {}

  //! A zeroed buffer of n elements.
  template <class T>
  buffer<T> allocate(std::size_t n) {
    return buffer<T>(n, memory_);
  }
  template <class T>
  void fill(T* to, std::size_t n, T value) noexcept {
    std::fill(to, to + n, value);
  }
  //! to[i] = convert<To>(from[i]) (a copy when the types agree). @pre no overlap
  template <class To, class From>
  void convert(To* to, const From* from, std::size_t n) noexcept {
    if constexpr (std::is_same_v<To, From>) {
      if (n != 0) std::memcpy(static_cast<void*>(to), static_cast<const void*>(from), n * sizeof(To));
    } else {
      detail::run_pass<detail::convert_pass>(to, from, n);
    }
  }
  //! to[i] = To(float(to[i]) + float(from[i])): the engine's accumulation, rounded once.
  template <class To, class From>
  void add(To* to, const From* from, std::size_t n) noexcept {
    detail::run_pass<detail::add_pass>(to, from, n);
  }
  //! data[i] = T(float(data[i]) * factor), rounded once.
  template <class T>
  void scale(T* data, std::size_t n, float factor) noexcept {
    detail::run_pass<detail::scale_pass>(data, n, factor);
  }

  //! Notes `param` as the first non-finite input of the step unless one was noted already.
  template <class T>
  void check_finite(std::size_t param, const T* data, std::size_t n) noexcept {
    if (first_nonfinite_ == none && detail::run_pass<detail::nonfinite_pass>(data, n)) first_nonfinite_ = param;
  }
  std::size_t first_nonfinite() const noexcept { return first_nonfinite_; }
  void clear_nonfinite() noexcept { first_nonfinite_ = none; }

  //! Copies between the engine's memory and host memory (here both are host memory).
  template <class T>
  void to_host(T* to, const T* from, std::size_t n) {
    if (n != 0) std::memcpy(static_cast<void*>(to), static_cast<const void*>(from), n * sizeof(T));
  }
  template <class T>
  void from_host(T* to, const T* from, std::size_t n) {
    to_host(to, from, n);
  }

  //! Every rank's `n` words of statistics, in rank order, into `all` (host memory both).
  template <class Comm>
  void all_gather_words(Comm& comm, const std::uint64_t* mine, std::uint64_t* all, std::size_t n) {
    comm.all_gather(mine, all, n);
  }

  //! Called once, at the engine's construction: `parameters` registered, the runs the
  //! element-wise passes walk (the same every step), the pieces a tensor-wise rule walks (one
  //! run per owned piece of a parameter), and the state slots (slot k of element
  //! `state_offset + i` at `state[k * state_stride + state_offset + i]`).
  template <class Rule, class Value, class Accum, class Param>
  void prepare(std::size_t parameters, std::span<const update_run<Value, Accum, Param>> runs,
               std::span<const update_run<Value, Accum, Param>> pieces, float* state, std::size_t state_stride,
               std::size_t state_count) {
    (void)parameters;
    (void)pieces;
    run_elements_ = 0;
    for (const auto& r : runs) run_elements_ += r.count;
    block_sums_.assign((run_elements_ + norm_block - 1) / norm_block, detail::square_lanes{});
    state_ = state;
    state_stride_ = state_stride;
    state_count_ = state_count;
  }

  //! The sum of squares of the runs' gradients (as float, squared and added in double). The
  //! runs are summed in blocks of `norm_block` elements, each by one thread, and the blocks'
  //! sums added in order: the result does not depend on the number of threads.
  template <class Value, class Accum, class Param>
  double sum_of_squares(std::span<const update_run<Value, Accum, Param>> runs) {
    auto job = [&](unsigned t, unsigned n) {
      for_each_block_piece(runs, t, n, [&](const auto& r, std::size_t begin, std::size_t end, std::size_t block) {
        detail::run_pass<detail::squares_pass>(&block_sums_[block], r.grads + begin, end - begin, std::uint64_t{r.state_offset + begin});
      });
    };
    run_split(job);
    return total_of_blocks();
  }

  //! The fused update of the prepared runs with element-wise rule `Rule`: values and state
  //! slots, the gradients times `factor`, new values rounded by `round` (element ids from
  //! `id_base`), model-precision copies into `out`; each run with the constants of its group
  //! (`c[run.group]`). Returns the gradients' sum of squares when `with_norm` (else 0), added as
  //! `sum_of_squares` adds them.
  template <elementwise_rule Rule, class Value, class Accum, class Param>
  double update(std::span<const typename Rule::constants> c, std::span<const update_run<Value, Accum, Param>> runs, float factor,
                const detail::value_rounding<Value>& round, std::uint64_t id_base, bool with_norm) {
    auto job = [&](unsigned t, unsigned n) {
      for_each_block_piece(runs, t, n, [&](const auto& r, std::size_t begin, std::size_t end, std::size_t block) {
        const auto slots = state_slots(r.state_offset + begin);
        detail::update_elements<Rule>(c[r.group], r.values + begin, r.grads + begin, slots.data(), state_count_,
                                      r.out == nullptr ? nullptr : r.out + begin, end - begin, factor, round,
                                      id_base + r.state_offset + begin, with_norm ? &block_sums_[block] : nullptr);
      });
    };
    run_split(job);
    return with_norm ? total_of_blocks() : 0.0;
  }

  // ---- tensor-wise rules (lamb): two passes around an exchange of per-tensor sums ----------

  //! Pass 1 of a tensor-wise rule over `pieces`: the state of every element (its gradient
  //! times `factor`) and each piece's sums (`Rule::first_pass`, with its group's constants
  //! `c[piece.group]`), into `sums[2q]`, `sums[2q+1]` for piece q (host memory, overwritten).
  //! Each piece adds its elements in order.
  template <tensorwise_rule Rule, class Value, class Accum, class Param>
  void tensor_sums(std::span<const typename Rule::constants> c, std::span<const update_run<Value, Accum, Param>> pieces, float factor,
                   double* sums) {
    for (std::size_t q = 0; q < pieces.size(); ++q) {
      const auto& s = pieces[q];
      const auto slots = state_slots(s.state_offset);
      zero::tensor_sums piece;
      for (std::size_t i = 0; i < s.count; ++i) {
        float value = static_cast<float>(s.values[i]);
        Rule::first_pass(c[s.group], value, static_cast<float>(s.grads[i]) * factor, state_ref{slots.data(), i}, piece);
      }
      sums[2 * q] = piece.a;
      sums[2 * q + 1] = piece.b;
    }
  }

  //! Every rank's `n` per-tensor sums added, in place (host memory).
  template <class Comm>
  void all_reduce_sums(Comm& comm, double* sums, std::size_t n) {
    comm.all_reduce(sums, sums, n, reduce_op::sum);
  }

  //! Pass 2 of a tensor-wise rule: every element of piece q updated with `trust[q]` (host
  //! memory) and its group's constants, rounded by `round`, its model-precision copy written to
  //! the piece's `out`.
  template <tensorwise_rule Rule, class Value, class Accum, class Param>
  void tensor_update(std::span<const typename Rule::constants> c, std::span<const update_run<Value, Accum, Param>> pieces,
                     const float* trust, const detail::value_rounding<Value>& round, std::uint64_t id_base) {
    for (std::size_t q = 0; q < pieces.size(); ++q) {
      const auto& s = pieces[q];
      const auto slots = state_slots(s.state_offset);
      for (std::size_t i = 0; i < s.count; ++i) {
        float value = static_cast<float>(s.values[i]);
        Rule::second_pass(c[s.group], value, state_ref{slots.data(), i}, trust[q]);
        s.values[i] = round(value, id_base + s.state_offset + i);
        if (s.out != nullptr) s.out[i] = zero::convert<Param>(value);
      }
    }
  }

  //! Bytes of the engine's memory space the backend holds besides the engine's buffers: none
  //! (its per-thread partial sums are ordinary heap, like the engine's bookkeeping).
  std::size_t bytes() const noexcept { return 0; }

  //! Threads the passes use (the calling thread included).
  unsigned threads() const noexcept { return split_threads(); }

 private:
  static constexpr std::size_t threading_threshold = 1u << 15;  // elements below which one thread works
  static constexpr std::size_t norm_block = 1u << 14;           // elements per block of the norm's sum

  unsigned split_threads() const noexcept { return run_elements_ < threading_threshold ? 1u : pool_.size(); }

  template <class Job>
  void run_split(Job& job) {
    if (split_threads() == 1) job(0u, 1u);
    else pool_.run(job);
  }

  std::array<float*, detail::max_update_slots> state_slots(std::size_t offset) const noexcept {
    std::array<float*, detail::max_update_slots> slots{};
    for (std::size_t k = 0; k < state_count_ && k < slots.size(); ++k) slots[k] = state_ + k * state_stride_ + offset;
    return slots;
  }

  double total_of_blocks() const noexcept {
    double total = 0;
    for (const auto& b : block_sums_) total += b.total();
    return total;
  }

  //! Calls f(run, begin, end, block) for the runs' elements (all of them back to back) in the
  //! blocks thread t of n takes, cut at block boundaries, in order; zeroes those blocks' sums
  //! first.
  template <class Run, class F>
  void for_each_block_piece(std::span<const Run> runs, unsigned t, unsigned n, F&& f) {
    const auto [first, last] = detail::share(block_sums_.size(), t, n);
    for (std::size_t b = first; b < last; ++b) block_sums_[b] = {};
    const std::size_t lo = first * norm_block, hi = std::min(last * norm_block, run_elements_);
    std::size_t at = 0;
    for (const auto& r : runs) {
      const std::size_t run_begin = at, run_end = at + r.count;
      at = run_end;
      if (run_end <= lo) continue;
      if (run_begin >= hi) break;
      for (std::size_t b = std::max(lo, run_begin), e = std::min(hi, run_end); b < e;) {
        const std::size_t block = b / norm_block;
        const std::size_t cut = std::min(e, (block + 1) * norm_block);
        f(r, b - run_begin, cut - run_begin, block);
        b = cut;
      }
    }
  }

  std::pmr::memory_resource* memory_;
  detail::worker_pool pool_;
  std::vector<detail::square_lanes> block_sums_;  // the norm's sum, one per block of norm_block elements
  std::size_t run_elements_ = 0;
  float* state_ = nullptr;
  std::size_t state_stride_ = 0, state_count_ = 0;
  std::size_t first_nonfinite_ = none;
};

static_assert(backend<host_backend>);

//! The backend an engine over communicator `Comm` uses: `Comm::backend_type` when the
//! communicator names one (its collectives read and write that backend's memory), else
//! `host_backend`.
template <class Comm>
struct backend_of {
  using type = host_backend;
};
template <class Comm>
  requires requires { typename Comm::backend_type; }
struct backend_of<Comm> {
  using type = typename Comm::backend_type;
};

}  // namespace zero
