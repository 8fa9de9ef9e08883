#pragma once
//! @file cuda/fused_update.cuh
//! `zero::cuda::fused_update`: one kernel launch that updates a rank's whole shard, however
//! many separate runs (segments) it is made of. Per element: the gradient times the step's one
//! factor (average, unscale, clip), the rule's update in fp32, the new value rounded to the
//! stored type, its model-precision copy written to `out` (the buffer the all-gather sends),
//! and optionally the gradient's square added to a sum of squares.
//!
//! The arithmetic is `zero::detail::updated_value` and `value_rounding`, the very functions the
//! host update runs, so host and device agree bit for bit in fp32, provided the device code is
//! compiled with `--fmad=false` (`zero::cuda` adds it; a fused multiply-add rounds once where
//! the host rounds twice). The segment table is uploaded once, at construction; a launch
//! allocates nothing and never synchronizes the host.
//!
//! Layout of a launch: the segments are cut into chunks of `chunk_elements`; block b takes
//! chunks b, b + grid, ... (grid at most 2048 blocks) and finds each chunk's segment by binary
//! search in the table. A segment whose arrays (values, grads, out, every state slot) all start
//! 16-byte aligned moves in 16-byte vectors (8 elements per thread and step), its ragged end and
//! every other segment element by element. Element-wise rules only; tensor-wise rules (lamb)
//! run in `zero/cuda/tensorwise_update.cuh`.
//!
//! Needs nvcc (include it from a .cu file); link `zero::cuda`.

#if !defined(__CUDACC__)
#error "zero/cuda/fused_update.cuh contains kernels: include it from a .cu file compiled by nvcc (link zero::cuda)"
#endif

#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "zero/backend.hpp"  // with zero/detail/update_element.hpp, the element update shared with the host
#include "zero/cuda/device_buffer.hpp"
#include "zero/cuda/error.hpp"
#include "zero/cuda/kernels.cuh"
#include "zero/error.hpp"
#include "zero/types.hpp"
#include "zero/update_rule.hpp"

namespace zero::cuda {

//! One contiguous run of the update, in device memory: the engine's `update_run` (backend.hpp):
//! {values (master weights, or the parameters without a master copy), grads, state_offset (the
//! offset into every state slot; plus `first_id`, the element's id), out (where the
//! model-precision values go; null: nowhere), count, group (whose constants update it)}.
template <class Value, class Accum, class Param>
using update_segment = update_run<Value, Accum, Param>;

//! What varies between launches besides the rule's constants.
struct update_controls {
  float factor = 1;  //!< multiplies every gradient: 1 / (ranks * loss scale * micro-steps) * clip
  //! When set, the factor is read from this device float instead (computed on the device, so
  //! that the host need not wait for the norm).
  const float* device_factor = nullptr;
  //! When set and the device word is nonzero when the kernel runs, the launch changes nothing
  //! (an overflow skips the step) and does not write `sum_of_squares`.
  const std::uint32_t* skip = nullptr;
  //! When set, receives (device memory, overwritten) the sum of double(float(grad))^2 over every
  //! element updated: the fused norm. Deterministic for a given segment table (block partials
  //! added in a fixed order); another order than the host's, so equal within double rounding.
  double* sum_of_squares = nullptr;
};

namespace detail {

inline constexpr std::size_t chunk_elements = static_cast<std::size_t>(block_threads) * pack * 4;
//! State slots a vectorized element keeps in registers (every shipped element-wise rule has at
//! most 3); rules with more take the element-by-element path.
inline constexpr std::size_t register_slots = 3;
inline constexpr std::size_t max_state_slots = 8;
//! Parameter groups a launch carries the constants of (in its arguments).
inline constexpr std::size_t max_groups = 32;

//! Each group's constants, as a launch's arguments carry them.
template <class Rule>
struct group_constants {
  typename Rule::constants of[max_groups];

  //! @throws usage_error for no groups or more than `max_groups`
  static group_constants from(std::span<const typename Rule::constants> c, const char* owner) {
    if (c.empty() || c.size() > max_groups)
      throw usage_error(std::string("zero: ") + owner + " takes 1 to " + std::to_string(max_groups) +
                        " parameter groups' constants, not " + std::to_string(c.size()));
    group_constants g{};
    for (std::size_t i = 0; i < c.size(); ++i) g.of[i] = c[i];
    return g;
  }
};

template <class Value, class Accum, class Param>
struct device_segment {
  Value* values;
  const Accum* grads;
  Param* out;
  std::size_t count;
  std::size_t state_offset;
  std::size_t first_chunk;
  std::uint32_t vectorized;
  std::uint32_t group;
};

//! The engine's state slots as the kernels see them (in their arguments): slot k of element e
//! is slots[k][e], for k < count.
struct state_slots {
  float* slots[max_state_slots];
  std::uint32_t count;

  //! The slots of one segment: slot k of its element i at out[k][i] (null past `count`).
  __device__ __forceinline__ void of_segment(std::size_t state_offset, float* (&out)[max_state_slots]) const {
#pragma unroll
    for (std::size_t k = 0; k < max_state_slots; ++k) out[k] = k < count ? slots[k] + state_offset : nullptr;
  }
};

//! `count` slots of `state`, `stride` elements apart, for the runs of `owner` (named in errors).
//! @throws usage_error for more than `max_state_slots` slots, or a null `state` with slots and
//!         a non-empty run
template <class Run>
state_slots make_state_slots(std::span<const Run> runs, float* state, std::size_t stride, std::size_t count,
                             const std::string& owner) {
  if (count > max_state_slots)
    throw usage_error("zero: " + owner + " supports at most " + std::to_string(max_state_slots) + " state slots, not " +
                      std::to_string(count));
  if (count > 0 && state == nullptr)
    for (std::size_t s = 0; s < runs.size(); ++s)
      if (runs[s].count != 0)
        throw usage_error("zero: " + owner + " segment " + std::to_string(s) + " (" + std::to_string(runs[s].count) +
                          " elements) has a null state pointer");
  state_slots out{};
  out.count = static_cast<std::uint32_t>(count);
  for (std::size_t k = 0; k < count; ++k) out.slots[k] = state + k * stride;
  return out;
}

template <class Rule, class Value, class Accum, class Param>
struct update_arguments {
  const device_segment<Value, Accum, Param>* segments;
  std::uint32_t segment_count;
  std::size_t chunk_count;
  state_slots state;
  group_constants<Rule> constants;
  update_controls controls;
  zero::detail::value_rounding<Value> rounding;
  std::uint64_t first_id;
  double* partials;          // one per block
  std::uint32_t* arrivals;   // blocks done (the last one adds the partials, then resets it)
};

template <class Rule, class Value, class Accum, class Param>
__device__ __forceinline__ double update_scalar(const update_arguments<Rule, Value, Accum, Param>& a,
                                                const device_segment<Value, Accum, Param>& seg, std::size_t i, float factor) {
  float* slots[max_state_slots];
  a.state.of_segment(seg.state_offset, slots);
  const Accum g = seg.grads[i];
  const float v = zero::detail::updated_value<Rule>(a.constants.of[seg.group], seg.values[i], g, factor, state_ref{slots, i});
  const Value stored = a.rounding(v, a.first_id + seg.state_offset + i);
  seg.values[i] = stored;
  if (seg.out != nullptr) seg.out[i] = convert<Param>(static_cast<float>(stored));
  const double gd = static_cast<double>(static_cast<float>(g));
  return gd * gd;
}

//! Elements [i, i + pack) of a vectorized segment: 16-byte loads and stores, state in registers.
template <class Rule, class Value, class Accum, class Param>
__device__ __forceinline__ double update_packed(const update_arguments<Rule, Value, Accum, Param>& a,
                                                const device_segment<Value, Accum, Param>& seg, std::size_t i, float factor) {
  elements<Value> values = load_pack(seg.values + i);
  const elements<Accum> grads = load_pack(seg.grads + i);
  float state[register_slots][pack] = {};
#pragma unroll
  for (std::size_t k = 0; k < register_slots; ++k)
    if (k < a.state.count) {
      const elements<float> s = load_pack(a.state.slots[k] + seg.state_offset + i);
#pragma unroll
      for (int j = 0; j < pack; ++j) state[k][j] = s.v[j];
    }
  float* slots[register_slots];
#pragma unroll
  for (std::size_t k = 0; k < register_slots; ++k) slots[k] = state[k];
  double squares = 0;
  elements<Param> out;
#pragma unroll
  for (int j = 0; j < pack; ++j) {
    const float v = zero::detail::updated_value<Rule>(a.constants.of[seg.group], values.v[j], grads.v[j], factor,
                                                      state_ref{slots, static_cast<std::size_t>(j)});
    values.v[j] = a.rounding(v, a.first_id + seg.state_offset + i + static_cast<std::size_t>(j));
    out.v[j] = convert<Param>(static_cast<float>(values.v[j]));
    const double gd = static_cast<double>(static_cast<float>(grads.v[j]));
    squares += gd * gd;
  }
  store_pack(seg.values + i, values);
#pragma unroll
  for (std::size_t k = 0; k < register_slots; ++k)
    if (k < a.state.count) {
      elements<float> s;
#pragma unroll
      for (int j = 0; j < pack; ++j) s.v[j] = state[k][j];
      store_pack(a.state.slots[k] + seg.state_offset + i, s);
    }
  if (seg.out != nullptr) store_pack(seg.out + i, out);
  return squares;
}

//! The index of the segment of `chunk`: the last one starting at or before it (binary search
//! in the table).
template <class Value, class Accum, class Param>
__device__ __forceinline__ std::uint32_t segment_index(const device_segment<Value, Accum, Param>* segments,
                                                       std::uint32_t segment_count, std::size_t chunk) {
  std::uint32_t lo = 0, hi = segment_count;
  while (hi - lo > 1) {
    const std::uint32_t mid = lo + (hi - lo) / 2;
    if (segments[mid].first_chunk <= chunk) lo = mid;
    else hi = mid;
  }
  return lo;
}

template <class Value, class Accum, class Param>
__device__ __forceinline__ device_segment<Value, Accum, Param> segment_of(const device_segment<Value, Accum, Param>* segments,
                                                                          std::uint32_t segment_count, std::size_t chunk) {
  return segments[segment_index(segments, segment_count, chunk)];
}

//! Elements [begin, end) of `chunk` within its segment `seg`.
template <class Value, class Accum, class Param>
__device__ __forceinline__ void chunk_range(const device_segment<Value, Accum, Param>& seg, std::size_t chunk, std::size_t& begin,
                                            std::size_t& end) {
  begin = (chunk - seg.first_chunk) * chunk_elements;
  end = begin + chunk_elements < seg.count ? begin + chunk_elements : seg.count;
}

//! Walks this block's chunks: packed(seg, i) for each whole pack of a vectorized segment,
//! single(seg, i) for every other element; returns the sum of what they return, in the order
//! they ran (the same order for the update and for the norm alone).
template <class Value, class Accum, class Param, class Packed, class Single>
__device__ __forceinline__ double for_each_chunk(const device_segment<Value, Accum, Param>* segments, std::uint32_t segment_count,
                                                 std::size_t chunk_count, Packed&& packed, Single&& single) {
  double squares = 0;
  for (std::size_t chunk = blockIdx.x; chunk < chunk_count; chunk += gridDim.x) {
    const device_segment<Value, Accum, Param> seg = segment_of(segments, segment_count, chunk);
    std::size_t begin = 0, end = 0;
    chunk_range(seg, chunk, begin, end);
    std::size_t scalar_begin = begin;
    if (seg.vectorized != 0) {
      const std::size_t packed_end = begin + (end - begin) / pack * pack;
      for (std::size_t i = begin + static_cast<std::size_t>(threadIdx.x) * pack; i < packed_end; i += blockDim.x * pack)
        squares += packed(seg, i);
      scalar_begin = packed_end;
    }
    for (std::size_t i = scalar_begin + threadIdx.x; i < end; i += blockDim.x) squares += single(seg, i);
  }
  return squares;
}

//! The norm's last step: block partials, then the last block to finish adds them in block order
//! into *result and resets the arrival count for the next launch.
__device__ __forceinline__ void finish_sum(double squares, double* partials, std::uint32_t* arrivals, double* result) {
  using block_reduce = cub::BlockReduce<double, block_threads>;
  __shared__ typename block_reduce::TempStorage storage;
  __shared__ bool last;
  const double block_sum = block_reduce(storage).Sum(squares);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = block_sum;
    __threadfence();
    last = atomicAdd(arrivals, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  double mine = 0;
  for (unsigned b = threadIdx.x; b < gridDim.x; b += blockDim.x) mine += __ldcg(partials + b);
  const double total = block_reduce(storage).Sum(mine);
  if (threadIdx.x == 0) {
    *result = total;
    *arrivals = 0;
  }
}

template <class Rule, class Value, class Accum, class Param>
__global__ void __launch_bounds__(block_threads) fused_update_kernel(const update_arguments<Rule, Value, Accum, Param> a) {
  if (a.controls.skip != nullptr && *a.controls.skip != 0) return;
  const float factor = a.controls.device_factor != nullptr ? *a.controls.device_factor : a.controls.factor;
  using segment = device_segment<Value, Accum, Param>;
  const double squares = for_each_chunk(
      a.segments, a.segment_count, a.chunk_count, [&](const segment& seg, std::size_t i) { return update_packed(a, seg, i, factor); },
      [&](const segment& seg, std::size_t i) { return update_scalar(a, seg, i, factor); });
  if (a.controls.sum_of_squares != nullptr) finish_sum(squares, a.partials, a.arrivals, a.controls.sum_of_squares);
}

//! The gradients' sum of squares alone, over the same chunks in the same order as the update.
template <class Value, class Accum, class Param>
__global__ void __launch_bounds__(block_threads) segments_sum_of_squares_kernel(const device_segment<Value, Accum, Param>* segments,
                                                                                std::uint32_t segment_count, std::size_t chunk_count,
                                                                                double* partials, std::uint32_t* arrivals,
                                                                                double* result) {
  using segment = device_segment<Value, Accum, Param>;
  const double squares = for_each_chunk(
      segments, segment_count, chunk_count,
      [](const segment& seg, std::size_t i) {
        const elements<Accum> grads = load_pack(seg.grads + i);
        double sum = 0;
#pragma unroll
        for (int j = 0; j < pack; ++j) {
          const double gd = static_cast<double>(static_cast<float>(grads.v[j]));
          sum += gd * gd;
        }
        return sum;
      },
      [](const segment& seg, std::size_t i) {
        const double gd = static_cast<double>(static_cast<float>(seg.grads[i]));
        return gd * gd;
      });
  finish_sum(squares, partials, arrivals, result);
}

//! The segments of a launch, uploaded once: the non-empty runs in order, each cut into chunks
//! of `chunk_elements`, with the grid that walks them and the sum of squares' block partials.
template <class Value, class Accum, class Param>
class segment_table {
 public:
  using run = update_run<Value, Accum, Param>;
  using entry = device_segment<Value, Accum, Param>;

  segment_table() = default;

  //! Uploads the table on `on` and waits for it (call it at setup): launches on that stream (or
  //! any other, after this returns) see it whole.
  //! @param vectorize  whether a run may move in 16-byte vectors (its arrays are aligned)
  //! @param owner      names the object in errors
  //! @throws usage_error for a null values or grads pointer in a non-empty run
  template <class Vectorize>
  segment_table(std::span<const run> runs, Vectorize&& vectorize, stream_ref on, const std::string& owner) {
    const int rank = on.rank;
    std::vector<entry> table;
    for (std::size_t s = 0; s < runs.size(); ++s) {
      const run& r = runs[s];
      if (r.count == 0) continue;
      if (r.values == nullptr || r.grads == nullptr)
        throw usage_error("zero: " + owner + " segment " + std::to_string(s) + " (" + std::to_string(r.count) +
                          " elements) has a null values or grads pointer");
      if (r.group >= max_groups)
        throw usage_error("zero: " + owner + " segment " + std::to_string(s) + " is in parameter group " +
                          std::to_string(r.group) + "; at most " + std::to_string(max_groups) + " groups are supported");
      const bool vectorized = vectorize(r);
      table.push_back({r.values, r.grads, r.out, r.count, r.state_offset, chunk_count_, vectorized ? 1u : 0u, r.group});
      sources_.push_back(s);
      elements_ += r.count;
      vectorized_elements_ += vectorized ? r.count : 0;
      chunk_count_ += (r.count + chunk_elements - 1) / chunk_elements;
    }
    if (table.size() > 0xffffffffu) throw usage_error("zero: " + owner + ": more than 2^32 - 1 segments");
    grid_ = chunk_count_ < max_blocks ? static_cast<unsigned>(chunk_count_) : max_blocks;
    if (!table.empty()) {
      table_ = device_buffer<entry>(table.size(), rank);
      check(cudaMemcpyAsync(table_.data(), table.data(), table.size() * sizeof(entry), cudaMemcpyHostToDevice, on.stream),
            "cudaMemcpyAsync (" + owner + " segment table)", rank);
      partials_ = device_buffer<double>(grid_, rank);
      arrivals_ = device_buffer<std::uint32_t>(1, rank);
      check(cudaMemsetAsync(arrivals_.data(), 0, sizeof(std::uint32_t), on.stream), "cudaMemsetAsync (" + owner + " arrivals)",
            rank);
      // `table` is about to go, and a launch on another stream must find the table written
      check(cudaStreamSynchronize(on.stream), "cudaStreamSynchronize (" + owner + " segment table)", rank);
    }
  }

  const entry* data() const noexcept { return table_.data(); }
  std::uint32_t count() const noexcept { return static_cast<std::uint32_t>(sources_.size()); }
  //! The run each entry came from (empty runs have none).
  std::span<const std::size_t> sources() const noexcept { return sources_; }
  std::size_t chunks() const noexcept { return chunk_count_; }
  unsigned grid() const noexcept { return grid_; }
  std::size_t elements() const noexcept { return elements_; }
  std::size_t vectorized_elements() const noexcept { return vectorized_elements_; }
  double* partials() const noexcept { return const_cast<double*>(partials_.data()); }
  std::uint32_t* arrivals() const noexcept { return const_cast<std::uint32_t*>(arrivals_.data()); }
  std::size_t bytes() const noexcept { return table_.bytes() + partials_.bytes() + arrivals_.bytes(); }

  //! Enqueues *result = the sum of double(float(grad))^2 over every segment (device memory,
  //! overwritten): one launch, chunks and order as the fused update's own norm.
  //! @pre no other launch using this table's partials is in flight on another stream
  void sum_of_squares(double* result, stream_ref s) const {
    if (chunk_count_ == 0) {
      check(cudaMemsetAsync(result, 0, sizeof(double), s.stream), "cudaMemsetAsync (sum of squares of no elements)", s.rank);
      return;
    }
    segments_sum_of_squares_kernel<<<grid_, block_threads, 0, s.stream>>>(data(), count(), chunk_count_, partials(), arrivals(),
                                                                         result);
    check_launch("zero::cuda sum of squares over a segment table", s.rank);
  }

 private:
  std::vector<std::size_t> sources_;
  std::size_t chunk_count_ = 0;
  std::size_t elements_ = 0;
  std::size_t vectorized_elements_ = 0;
  unsigned grid_ = 0;
  device_buffer<entry> table_;
  device_buffer<double> partials_;
  device_buffer<std::uint32_t> arrivals_;
};

}  // namespace detail

//! The fused update of one rank's shard with rule `Rule`, over a fixed table of segments.
//! @tparam Value  the type the update reads and writes (fp32 master weights, or bf16 without)
//! @tparam Accum  the gradients' type
//! @tparam Param  the model-precision type written to `out`
template <update_rule Rule, element_type Value, element_type Accum, element_type Param>
class fused_update {
  static_assert(elementwise_rule<Rule>,
                "zero::cuda::fused_update runs element-wise rules (adamw, adam, sgd, lion, adagrad); a tensor-wise "
                "rule such as lamb runs in zero::cuda::tensorwise_update (zero/cuda/tensorwise_update.cuh)");

 public:
  using segment = update_segment<Value, Accum, Param>;
  static constexpr std::size_t max_state_slots = detail::max_state_slots;

  fused_update() = default;

  //! Uploads the segment table on `on` and waits for it (call it at setup), and allocates the
  //! norm's block partials. Slot k of the state of the element at `state_offset + i` of a segment is
  //! `state[k * state_stride + state_offset + i]` (the engine's layout).
  //! @pre every pointer addresses device memory that outlives this object
  //! @throws usage_error for more than 8 state slots or a null pointer in a non-empty segment
  fused_update(std::span<const segment> segments, float* state, std::size_t state_stride, std::size_t state_count,
               stream_ref on = {})
      : state_(detail::make_state_slots(segments, state, state_stride, state_count, "fused_update")), rank_(on.rank) {
    table_ = detail::segment_table<Value, Accum, Param>(
        segments,
        [&](const segment& seg) {
          bool vectorized = state_count <= detail::register_slots && detail::aligned16(seg.values) &&
                            detail::aligned16(seg.grads) && (seg.out == nullptr || detail::aligned16(seg.out));
          for (std::size_t k = 0; k < state_count; ++k)
            vectorized = vectorized && detail::aligned16(state_.slots[k] + seg.state_offset);
          return vectorized;
        },
        on, "fused_update");
  }

  //! Enqueues the update of every segment on `s`: one kernel launch (none when there is nothing
  //! to update; a requested sum of squares is then set to 0).
  //! @param constants `Rule::prepare(hyperparameters, step)` of this step, one per parameter
  //!        group (a segment of group g takes `constants[g]`)
  //! @param rounding  how new values are rounded to `Value` (stochastic: bf16 only)
  //! @param first_id  added to `state_offset + i` to make the element id stochastic rounding uses
  //!                  (the engine's rank * shard size)
  //! @pre no other launch of this object is in flight on another stream (they share the norm's
  //!      partials)
  //! @throws usage_error for no constants or more than `detail::max_groups`
  void operator()(std::span<const typename Rule::constants> constants, const update_controls& controls,
                  const zero::detail::value_rounding<Value>& rounding, std::uint64_t first_id, stream_ref s) {
    const int rank = s.rank >= 0 ? s.rank : rank_;
    if (table_.chunks() == 0) {
      if (controls.sum_of_squares != nullptr)
        check(cudaMemsetAsync(controls.sum_of_squares, 0, sizeof(double), s.stream), "cudaMemsetAsync (fused_update norm)", rank);
      return;
    }
    static_assert(sizeof(detail::update_arguments<Rule, Value, Accum, Param>) <= 4096,
                  "zero::cuda::fused_update: the rule's constants for detail::max_groups parameter groups exceed the 4 KiB "
                  "of a kernel's arguments");
    detail::update_arguments<Rule, Value, Accum, Param> a{};
    a.segments = table_.data();
    a.segment_count = table_.count();
    a.chunk_count = table_.chunks();
    a.state = state_;
    a.constants = detail::group_constants<Rule>::from(constants, "fused_update");
    a.controls = controls;
    a.rounding = rounding;
    a.first_id = first_id;
    a.partials = table_.partials();
    a.arrivals = table_.arrivals();
    detail::fused_update_kernel<<<table_.grid(), detail::block_threads, 0, s.stream>>>(a);
    const cudaError_t launched = cudaGetLastError();
    if (launched != cudaSuccess)
      check(launched, "launch of zero::cuda::fused_update<" + std::string(Rule::name) + "> (or an earlier asynchronous failure)",
            rank);
  }

  //! The update with one parameter group's constants (every segment in group 0).
  void operator()(const typename Rule::constants& constants, const update_controls& controls,
                  const zero::detail::value_rounding<Value>& rounding, std::uint64_t first_id, stream_ref s) {
    (*this)(std::span<const typename Rule::constants>(&constants, 1), controls, rounding, first_id, s);
  }

  //! Enqueues *result = the sum of double(float(grad))^2 over every segment's gradients, alone
  //! (for a norm needed before the update): one launch, the same chunks and order as the
  //! update's fused norm, so both give the same bits.
  //! @param result device memory (one double), overwritten
  //! @pre no other launch of this object is in flight on another stream
  void sum_of_squares(double* result, stream_ref s) {
    table_.sum_of_squares(result, {s.stream, s.rank >= 0 ? s.rank : rank_});
  }

  std::size_t elements() const noexcept { return table_.elements(); }
  //! Elements in segments that move in 16-byte vectors.
  std::size_t vectorized_elements() const noexcept { return table_.vectorized_elements(); }
  std::size_t segments() const noexcept { return table_.count(); }
  //! Blocks per launch.
  unsigned grid() const noexcept { return table_.grid(); }
  //! Device bytes this object holds (the table and the norm's partials).
  std::size_t bytes() const noexcept { return table_.bytes(); }

 private:
  detail::state_slots state_{};
  int rank_ = -1;
  detail::segment_table<Value, Accum, Param> table_;
};

}  // namespace zero::cuda
