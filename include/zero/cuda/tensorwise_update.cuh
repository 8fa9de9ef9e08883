#pragma once
//! @file cuda/tensorwise_update.cuh
//! `zero::cuda::tensorwise_update`: a tensor-wise rule (`zero::lamb`) over a rank's pieces of
//! parameters, in two launches around the exchange of per-tensor sums the engine does:
//!
//!   first_pass   per element: the state (`Rule::first_pass`, the gradient times the step's
//!                factor) and the element's contributions to its tensor's two sums; per
//!                chunk a block sum, then per piece the chunk sums in chunk order; the piece
//!                sums are copied to the host (the host waits: a documented sync point)
//!   second_pass  per element: `Rule::second_pass` with its piece's trust factor, the new value
//!                rounded to the stored type, its model-precision copy written to `out`
//!
//! The per-element arithmetic is the rule's own host-and-device functions, so the state and the
//! update agree with the host backend bit for bit given the same sums; the sums themselves add
//! in another order than the host's element-by-element loop (equal within double rounding), so
//! a trust factor may differ from the host's in its last bit.
//!
//! Elements move one at a time (no 16-byte vectors): the rule reads each element's state twice
//! and the passes are bound by memory either way.
//!
//! Needs nvcc (include it from a .cu file); link `zero::cuda`.

#if !defined(__CUDACC__)
#error "zero/cuda/tensorwise_update.cuh contains kernels: include it from a .cu file compiled by nvcc (link zero::cuda)"
#endif

#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "zero/cuda/fused_update.cuh"

namespace zero::cuda {
namespace detail {

//! Rule's first pass over one element, in exact_float where the rule is written over its number
//! type (no contraction whatever the user's --fmad; arithmetic.hpp), else in float.
template <class Rule>
__device__ __forceinline__ void first_pass_of(const typename Rule::constants& c, float value, float grad, float factor, state_ref s,
                                              zero::tensor_sums& sums) {
  if constexpr (requires(exact_float& v, zero::detail::exact_state_ref e) { Rule::first_pass(c, v, exact_float(grad), e, sums); }) {
    exact_float v = value;
    Rule::first_pass(c, v, exact_float(grad) * factor, zero::detail::exact_state_ref{s}, sums);
  } else {
    Rule::first_pass(c, value, grad * factor, s, sums);
  }
}

//! Rule's second pass over one element (as `first_pass_of`); returns the new value.
template <class Rule>
__device__ __forceinline__ float second_pass_of(const typename Rule::constants& c, float value, state_ref s, float trust) {
  if constexpr (requires(exact_float& v, zero::detail::exact_state_ref e) { Rule::second_pass(c, v, e, trust); }) {
    exact_float v = value;
    Rule::second_pass(c, v, zero::detail::exact_state_ref{s}, trust);
    return to_float(v);
  } else {
    Rule::second_pass(c, value, s, trust);
    return value;
  }
}

template <class Rule, class Value, class Accum, class Param>
struct tensor_arguments {
  const device_segment<Value, Accum, Param>* segments;
  std::uint32_t segment_count;
  std::size_t chunk_count;
  state_slots state;
  group_constants<Rule> constants;
  float factor;              // pass 1: multiplies every gradient
  double* chunk_sums;        // pass 1: two per chunk
  const float* trust;        // pass 2: one per segment
  zero::detail::value_rounding<Value> rounding;
  std::uint64_t first_id;
};

//! Pass 1: the state of every element, and per chunk the two block sums.
template <class Rule, class Value, class Accum, class Param>
__global__ void __launch_bounds__(block_threads) tensor_first_pass_kernel(const tensor_arguments<Rule, Value, Accum, Param> a) {
  using block_reduce = cub::BlockReduce<double, block_threads>;
  __shared__ typename block_reduce::TempStorage storage;
  for (std::size_t chunk = blockIdx.x; chunk < a.chunk_count; chunk += gridDim.x) {
    const device_segment<Value, Accum, Param> seg = segment_of(a.segments, a.segment_count, chunk);
    float* slots[max_state_slots];
    a.state.of_segment(seg.state_offset, slots);
    std::size_t begin = 0, end = 0;
    chunk_range(seg, chunk, begin, end);
    zero::tensor_sums sums;
    for (std::size_t i = begin + threadIdx.x; i < end; i += blockDim.x)
      first_pass_of<Rule>(a.constants.of[seg.group], static_cast<float>(seg.values[i]), static_cast<float>(seg.grads[i]), a.factor,
                          state_ref{slots, i}, sums);
    const double first = block_reduce(storage).Sum(sums.a);
    __syncthreads();  // the storage is reused
    const double second = block_reduce(storage).Sum(sums.b);
    if (threadIdx.x == 0) {
      a.chunk_sums[2 * chunk] = first;
      a.chunk_sums[2 * chunk + 1] = second;
    }
    __syncthreads();
  }
}

//! Per segment: its chunks' sums added in chunk order.
template <class Value, class Accum, class Param>
__global__ void tensor_segment_sums_kernel(const device_segment<Value, Accum, Param>* segments, std::uint32_t segment_count,
                                           std::size_t chunk_count, const double* chunk_sums, double* segment_sums) {
  for (std::size_t e = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; e < segment_count;
       e += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const std::size_t first = segments[e].first_chunk;
    const std::size_t last = e + 1 < segment_count ? segments[e + 1].first_chunk : chunk_count;
    double sa = 0, sb = 0;
    for (std::size_t c = first; c < last; ++c) {
      sa += chunk_sums[2 * c];
      sb += chunk_sums[2 * c + 1];
    }
    segment_sums[2 * e] = sa;
    segment_sums[2 * e + 1] = sb;
  }
}

//! Pass 2: every element with its segment's trust factor.
template <class Rule, class Value, class Accum, class Param>
__global__ void __launch_bounds__(block_threads) tensor_second_pass_kernel(const tensor_arguments<Rule, Value, Accum, Param> a) {
  for (std::size_t chunk = blockIdx.x; chunk < a.chunk_count; chunk += gridDim.x) {
    const std::uint32_t index = segment_index(a.segments, a.segment_count, chunk);
    const device_segment<Value, Accum, Param> seg = a.segments[index];
    const float trust = a.trust[index];
    float* slots[max_state_slots];
    a.state.of_segment(seg.state_offset, slots);
    std::size_t begin = 0, end = 0;
    chunk_range(seg, chunk, begin, end);
    for (std::size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const float value = second_pass_of<Rule>(a.constants.of[seg.group], static_cast<float>(seg.values[i]), state_ref{slots, i}, trust);
      seg.values[i] = a.rounding(value, a.first_id + seg.state_offset + i);
      if (seg.out != nullptr) seg.out[i] = convert<Param>(value);
    }
  }
}

}  // namespace detail

//! A tensor-wise rule `Rule` over a fixed table of pieces (one run per owned piece of a
//! parameter), in the engine's state layout (slot k of the element at `state_offset + i` is
//! `state[k * state_stride + state_offset + i]`).
template <tensorwise_rule Rule, element_type Value, element_type Accum, element_type Param>
class tensorwise_update {
 public:
  using piece = update_run<Value, Accum, Param>;
  static constexpr std::size_t max_state_slots = detail::max_state_slots;

  tensorwise_update() = default;

  //! Uploads the piece table on `on` (and waits for it: call it at setup) and allocates the
  //! sums and trust factors.
  //! @pre every pointer addresses device memory that outlives this object
  //! @throws usage_error for more than 8 state slots or a null pointer in a non-empty piece
  tensorwise_update(std::span<const piece> pieces, float* state, std::size_t state_stride, std::size_t state_count,
                    stream_ref on = {})
      : pieces_(pieces.size()),
        state_(detail::make_state_slots(pieces, state, state_stride, state_count, "tensorwise_update")),
        rank_(on.rank) {
    const int rank = on.rank;
    table_ = detail::segment_table<Value, Accum, Param>(pieces, [](const piece&) { return false; }, on, "tensorwise_update");
    if (table_.count() != 0) {
      chunk_sums_ = device_buffer<double>(2 * table_.chunks(), rank);
      segment_sums_ = device_buffer<double>(2 * table_.count(), rank);
      trust_ = device_buffer<float>(table_.count(), rank);
    }
    host_sums_.assign(2 * table_.count(), 0.0);
    host_trust_.assign(table_.count(), 1.0f);
  }

  //! Pass 1 on `s`, then the sums of piece q into `sums[2q]`, `sums[2q + 1]` (host memory,
  //! overwritten; 0 for an empty piece). Waits for the stream.
  //! @param constants one per parameter group (a piece of group g takes `constants[g]`)
  void first_pass(std::span<const typename Rule::constants> constants, float factor, double* sums, stream_ref s) {
    const int rank = s.rank >= 0 ? s.rank : rank_;
    for (std::size_t q = 0; q < 2 * pieces_; ++q) sums[q] = 0;
    if (table_.count() == 0) return;
    auto a = arguments(constants);
    a.factor = factor;
    a.chunk_sums = chunk_sums_.data();
    detail::tensor_first_pass_kernel<<<table_.grid(), detail::block_threads, 0, s.stream>>>(a);
    check_launch("zero::cuda::tensorwise_update<" + std::string(Rule::name) + "> pass 1", rank);
    detail::tensor_segment_sums_kernel<<<detail::blocks_for(table_.count()), detail::block_threads, 0, s.stream>>>(
        table_.data(), table_.count(), table_.chunks(), chunk_sums_.data(), segment_sums_.data());
    check_launch("zero::cuda::tensorwise_update<" + std::string(Rule::name) + "> piece sums", rank);
    check(cudaMemcpyAsync(host_sums_.data(), segment_sums_.data(), host_sums_.size() * sizeof(double), cudaMemcpyDeviceToHost,
                          s.stream),
          "cudaMemcpyAsync (tensorwise_update sums)", rank);
    check(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize (tensorwise_update sums)", rank);
    const auto sources = table_.sources();
    for (std::size_t e = 0; e < sources.size(); ++e) {
      sums[2 * sources[e]] = host_sums_[2 * e];
      sums[2 * sources[e] + 1] = host_sums_[2 * e + 1];
    }
  }

  //! Enqueues pass 2 on `s`: piece q updated with `trust[q]` (host memory, read before this
  //! returns). Does not wait for the stream.
  void second_pass(std::span<const typename Rule::constants> constants, const float* trust,
                   const zero::detail::value_rounding<Value>& rounding, std::uint64_t first_id, stream_ref s) {
    const int rank = s.rank >= 0 ? s.rank : rank_;
    if (table_.count() == 0) return;
    const auto sources = table_.sources();
    for (std::size_t e = 0; e < sources.size(); ++e) host_trust_[e] = trust[sources[e]];
    // from pageable memory: the call returns once the source has been read
    check(cudaMemcpyAsync(trust_.data(), host_trust_.data(), host_trust_.size() * sizeof(float), cudaMemcpyHostToDevice, s.stream),
          "cudaMemcpyAsync (tensorwise_update trust factors)", rank);
    auto a = arguments(constants);
    a.trust = trust_.data();
    a.rounding = rounding;
    a.first_id = first_id;
    detail::tensor_second_pass_kernel<<<table_.grid(), detail::block_threads, 0, s.stream>>>(a);
    check_launch("zero::cuda::tensorwise_update<" + std::string(Rule::name) + "> pass 2", rank);
  }

  std::size_t elements() const noexcept { return table_.elements(); }
  //! Device bytes this object holds (the table, the chunk and piece sums, the trust factors).
  std::size_t bytes() const noexcept { return table_.bytes() + chunk_sums_.bytes() + segment_sums_.bytes() + trust_.bytes(); }

 private:
  detail::tensor_arguments<Rule, Value, Accum, Param> arguments(std::span<const typename Rule::constants> constants) const {
    static_assert(sizeof(detail::tensor_arguments<Rule, Value, Accum, Param>) <= 4096,
                  "zero::cuda::tensorwise_update: the rule's constants for detail::max_groups parameter groups exceed the 4 "
                  "KiB of a kernel's arguments");
    detail::tensor_arguments<Rule, Value, Accum, Param> a{};
    a.segments = table_.data();
    a.segment_count = table_.count();
    a.chunk_count = table_.chunks();
    a.state = state_;
    a.constants = detail::group_constants<Rule>::from(constants, "tensorwise_update");
    return a;
  }

  std::size_t pieces_ = 0;
  detail::state_slots state_{};
  int rank_ = -1;
  detail::segment_table<Value, Accum, Param> table_;
  device_buffer<double> chunk_sums_;
  device_buffer<double> segment_sums_;
  device_buffer<float> trust_;
  std::vector<double> host_sums_;
  std::vector<float> host_trust_;
};

}  // namespace zero::cuda
