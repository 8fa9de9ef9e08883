#pragma once
//! @file cuda/kernels.cuh
//! The element-wise device operations the engine needs around the fused update, each enqueued
//! on the caller's stream and none synchronizing the host:
//!
//!   fill(data, n, value, s)                  data[i] = value
//!   convert_copy(to, from, n, s)             to[i] = convert<To>(from[i])
//!   convert_add(to, from, n, s)              to[i] = To(float(to[i]) + float(from[i]))
//!   flag_nonfinite(data, n, flag, s)         *flag = 1 when some data[i] is inf or NaN
//!   note_first_nonfinite(data, n, k, first, s)
//!                                            *first = min(*first, k) when some data[i] is inf or NaN
//!   sum_of_squares_reducer<T>                *result = sum of double(float(data[i]))^2 (CUB)
//!
//! Each computes what the host engine computes for the same element (the same `convert<>`, the
//! same float arithmetic), so results are bitwise equal to the host's; only the sum of squares
//! adds in another order (equal within double rounding). Arrays whose addresses are 16-byte
//! aligned move in 16-byte vectors, the rest (and the ragged end) element by element.
//!
//! Needs nvcc (include it from a .cu file); link `zero::cuda`.
//! @pre pointers address device memory of the current device (or managed memory), n elements

#if !defined(__CUDACC__)
#error "zero/cuda/kernels.cuh contains kernels: include it from a .cu file compiled by nvcc (link zero::cuda)"
#endif

#include <cuda_runtime.h>

#include <cub/device/device_reduce.cuh>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "zero/config.hpp"
#include "zero/cuda/device_buffer.hpp"
#include "zero/cuda/error.hpp"
#include "zero/types.hpp"

namespace zero::cuda {
namespace detail {

inline constexpr int block_threads = 256;
//! Elements per thread per vector step: 16 bytes of 16-bit values, 32 of floats.
inline constexpr int pack = 8;
//! Most blocks of a launch; larger ranges are walked grid-stride. Fixed (not from the device),
//! so that block-partial sums add in the same order on every device.
inline constexpr unsigned max_blocks = 2048;

inline unsigned blocks_for(std::size_t items) {
  const std::size_t blocks = (items + block_threads - 1) / block_threads;
  return blocks == 0 ? 1u : (blocks < max_blocks ? static_cast<unsigned>(blocks) : max_blocks);
}

inline bool aligned16(const void* p) noexcept { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

//! `pack` consecutive elements, moved as 16-byte words: float4 / uint4 / double2 through the
//! streaming intrinsics (__ldcs, __stcs: each element is touched once per pass), which always
//! become 128-bit memory instructions.
template <class T>
struct elements {
  T v[pack];
};

//! @pre p is 16-byte aligned
template <class T>
__device__ __forceinline__ elements<T> load_pack(const T* p) {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8, "elements of 2, 4 or 8 bytes");
  elements<T> e;
  if constexpr (sizeof(T) == 2) {
    const uint4 w = __ldcs(reinterpret_cast<const uint4*>(p));
    const unsigned int words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      e.v[2 * k] = zero::bit_cast<T>(static_cast<std::uint16_t>(words[k] & 0xffffu));
      e.v[2 * k + 1] = zero::bit_cast<T>(static_cast<std::uint16_t>(words[k] >> 16));
    }
  } else if constexpr (sizeof(T) == 4) {
    const float4* q = reinterpret_cast<const float4*>(p);
#pragma unroll
    for (int k = 0; k < pack / 4; ++k) {
      const float4 w = __ldcs(q + k);
      e.v[4 * k] = zero::bit_cast<T>(w.x);
      e.v[4 * k + 1] = zero::bit_cast<T>(w.y);
      e.v[4 * k + 2] = zero::bit_cast<T>(w.z);
      e.v[4 * k + 3] = zero::bit_cast<T>(w.w);
    }
  } else {
    const double2* q = reinterpret_cast<const double2*>(p);
#pragma unroll
    for (int k = 0; k < pack / 2; ++k) {
      const double2 w = __ldcs(q + k);
      e.v[2 * k] = zero::bit_cast<T>(w.x);
      e.v[2 * k + 1] = zero::bit_cast<T>(w.y);
    }
  }
  return e;
}

//! @pre p is 16-byte aligned
template <class T>
__device__ __forceinline__ void store_pack(T* p, const elements<T>& e) {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8, "elements of 2, 4 or 8 bytes");
  if constexpr (sizeof(T) == 2) {
    unsigned int words[4];
#pragma unroll
    for (int k = 0; k < 4; ++k)
      words[k] = static_cast<unsigned int>(zero::bit_cast<std::uint16_t>(e.v[2 * k])) |
                 (static_cast<unsigned int>(zero::bit_cast<std::uint16_t>(e.v[2 * k + 1])) << 16);
    __stcs(reinterpret_cast<uint4*>(p), make_uint4(words[0], words[1], words[2], words[3]));
  } else if constexpr (sizeof(T) == 4) {
    float4* q = reinterpret_cast<float4*>(p);
#pragma unroll
    for (int k = 0; k < pack / 4; ++k)
      __stcs(q + k, make_float4(zero::bit_cast<float>(e.v[4 * k]), zero::bit_cast<float>(e.v[4 * k + 1]),
                                zero::bit_cast<float>(e.v[4 * k + 2]), zero::bit_cast<float>(e.v[4 * k + 3])));
  } else {
    double2* q = reinterpret_cast<double2*>(p);
#pragma unroll
    for (int k = 0; k < pack / 2; ++k)
      __stcs(q + k, make_double2(zero::bit_cast<double>(e.v[2 * k]), zero::bit_cast<double>(e.v[2 * k + 1])));
  }
}

//! Runs op.packed(i) for each whole pack (when `vectorized`) and op.single(i) for the rest.
template <class Op>
__global__ void __launch_bounds__(block_threads) elementwise_kernel(Op op, std::size_t n, bool vectorized) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  const std::size_t first = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::size_t packs = vectorized ? n / pack : 0;
  for (std::size_t p = first; p < packs; p += stride) op.packed(p * pack);
  for (std::size_t i = packs * pack + first; i < n; i += stride) op.single(i);
}

template <class Op>
void launch_elementwise(const Op& op, std::size_t n, bool vectorized, const char* name, stream_ref s) {
  if (n == 0) return;
  const std::size_t items = vectorized ? n / pack + n % pack : n;
  elementwise_kernel<<<blocks_for(items), block_threads, 0, s.stream>>>(op, n, vectorized);
  check_launch(name, s.rank);
}

template <class T>
struct fill_op {
  T* data;
  T value;
  __device__ void single(std::size_t i) const { data[i] = value; }
  __device__ void packed(std::size_t i) const {
    elements<T> e;
#pragma unroll
    for (int k = 0; k < pack; ++k) e.v[k] = value;
    store_pack(data + i, e);
  }
};

template <class To, class From>
struct convert_copy_op {
  To* to;
  const From* from;
  __device__ void single(std::size_t i) const { to[i] = convert<To>(from[i]); }
  __device__ void packed(std::size_t i) const {
    const elements<From> a = load_pack(from + i);
    elements<To> b;
#pragma unroll
    for (int k = 0; k < pack; ++k) b.v[k] = convert<To>(a.v[k]);
    store_pack(to + i, b);
  }
};

//! The engine's accumulation: through float, rounded once to To.
template <class To, class From>
__device__ __forceinline__ To add_through_float(To to, From from) {
  return convert<To>(static_cast<float>(to) + static_cast<float>(from));
}

template <class To, class From>
struct convert_add_op {
  To* to;
  const From* from;
  __device__ void single(std::size_t i) const { to[i] = add_through_float(to[i], from[i]); }
  __device__ void packed(std::size_t i) const {
    const elements<From> a = load_pack(from + i);
    elements<To> b = load_pack(to + i);
#pragma unroll
    for (int k = 0; k < pack; ++k) b.v[k] = add_through_float(b.v[k], a.v[k]);
    store_pack(to + i, b);
  }
};

template <class T>
struct scale_op {
  T* data;
  float factor;
  __device__ void single(std::size_t i) const { data[i] = convert<T>(static_cast<float>(data[i]) * factor); }
  __device__ void packed(std::size_t i) const {
    elements<T> e = load_pack(data + i);
#pragma unroll
    for (int k = 0; k < pack; ++k) e.v[k] = convert<T>(static_cast<float>(e.v[k]) * factor);
    store_pack(data + i, e);
  }
};

//! Whether float(x) is inf or NaN: the host's test (exponent bits all ones).
template <class T>
__device__ __forceinline__ std::uint32_t nonfinite(T x) {
  return static_cast<std::uint32_t>((zero::bit_cast<std::uint32_t>(static_cast<float>(x)) & 0x7f800000u) == 0x7f800000u);
}

//! Found a non-finite value: *flag = 1 (when flag), *first_found = min(*first_found, order)
//! (when first_found).
template <class T>
__global__ void __launch_bounds__(block_threads) nonfinite_kernel(const T* data, std::size_t n, bool vectorized,
                                                                  std::uint32_t* flag, unsigned long long* first_found,
                                                                  unsigned long long order) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  const std::size_t first = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::size_t packs = vectorized ? n / pack : 0;
  std::uint32_t bad = 0;
  for (std::size_t p = first; p < packs; p += stride) {
    const elements<T> e = load_pack(data + p * pack);
#pragma unroll
    for (int k = 0; k < pack; ++k) bad |= nonfinite(e.v[k]);
  }
  for (std::size_t i = packs * pack + first; i < n; i += stride) bad |= nonfinite(data[i]);
  if (__syncthreads_or(static_cast<int>(bad)) != 0 && threadIdx.x == 0) {
    if (flag != nullptr) *flag = 1u;  // every writer writes 1
    if (first_found != nullptr) atomicMin(first_found, order);
  }
}

template <class T>
void launch_nonfinite(const T* data, std::size_t n, std::uint32_t* flag, unsigned long long* first, unsigned long long order,
                      const char* name, stream_ref s) {
  if (n == 0) return;
  const bool vectorized = aligned16(data);
  const std::size_t items = vectorized ? n / pack + n % pack : n;
  nonfinite_kernel<<<blocks_for(items), block_threads, 0, s.stream>>>(data, n, vectorized, flag, first, order);
  check_launch(name, s.rank);
}

//! The square of float(x), exact in double (as the host's sum of squares).
template <class T>
struct square_in_double {
  __host__ __device__ double operator()(const T& x) const {
    const double g = static_cast<double>(static_cast<float>(x));
    return g * g;
  }
};

struct add_doubles {
  __host__ __device__ double operator()(double a, double b) const { return a + b; }
};

}  // namespace detail

//! data[i] = value for i in [0, n). Enqueued on `s`.
template <element_type T>
void fill(T* data, std::size_t n, T value, stream_ref s) {
  detail::launch_elementwise(detail::fill_op<T>{data, value}, n, detail::aligned16(data), "zero::cuda::fill", s);
}

//! to[i] = convert<To>(from[i]) for i in [0, n) (through float, as `zero::convert`).
//! @pre the ranges do not overlap, unless to == from with To == From
template <element_type To, element_type From>
void convert_copy(To* to, const From* from, std::size_t n, stream_ref s) {
  detail::launch_elementwise(detail::convert_copy_op<To, From>{to, from}, n,
                             detail::aligned16(to) && detail::aligned16(from), "zero::cuda::convert_copy", s);
}

//! to[i] = convert<To>(float(to[i]) + float(from[i])) for i in [0, n): the engine's gradient
//! accumulation. @pre the ranges do not overlap
template <element_type To, element_type From>
void convert_add(To* to, const From* from, std::size_t n, stream_ref s) {
  detail::launch_elementwise(detail::convert_add_op<To, From>{to, from}, n,
                             detail::aligned16(to) && detail::aligned16(from), "zero::cuda::convert_add", s);
}

//! data[i] = T(float(data[i]) * factor) for i in [0, n), rounded once (the host backend's `scale`).
template <element_type T>
void scale(T* data, std::size_t n, float factor, stream_ref s) {
  detail::launch_elementwise(detail::scale_op<T>{data, factor}, n, detail::aligned16(data), "zero::cuda::scale", s);
}

//! Sets the device word *flag to 1 when some float(data[i]), i in [0, n), is inf or NaN, and
//! leaves it unchanged otherwise, so that one flag can collect several ranges (zero it first,
//! e.g. with `fill`). Reading it needs the stream's work done: nothing here waits.
template <element_type T>
void flag_nonfinite(const T* data, std::size_t n, std::uint32_t* flag, stream_ref s) {
  detail::launch_nonfinite(data, n, flag, nullptr, 0, "zero::cuda::flag_nonfinite", s);
}

//! Lowers the device word *first to `order` (atomicMin) when some float(data[i]), i in [0, n),
//! is inf or NaN. Checks made with increasing orders (the engine's reduction order, or the
//! parameter's index) leave in *first the order of the first check that found one, which is
//! what the host backend's `check_finite` notes; start it at ~0ull (none), e.g. with `fill`.
template <element_type T>
void note_first_nonfinite(const T* data, std::size_t n, unsigned long long order, unsigned long long* first, stream_ref s) {
  detail::launch_nonfinite(data, n, nullptr, first, order, "zero::cuda::note_first_nonfinite", s);
}

//! Sums of squares in double of ranges of up to `max_count` elements of T, with CUB's
//! DeviceReduce. Its temporary storage is sized for `max_count` and allocated once, at
//! construction; a sum allocates nothing. Sums are run-to-run deterministic on one device;
//! they add in another order than the host's eight lanes (equal within double rounding).
template <element_type T>
class sum_of_squares_reducer {
 public:
  sum_of_squares_reducer() = default;
  //! @throws cuda_error when CUB cannot size its storage or the allocation fails
  explicit sum_of_squares_reducer(std::size_t max_count, int rank = -1) : max_count_(max_count), rank_(rank) {
    std::size_t bytes = 0;
    check(query(max_count, bytes, nullptr), "cub::DeviceReduce::TransformReduce (sizing)", rank);
    storage_ = device_buffer<unsigned char>(bytes == 0 ? 1 : bytes, rank);
  }

  //! Enqueues *result = sum over i in [0, n) of double(float(data[i]))^2 on `s`.
  //! @param result device memory (one double), overwritten
  //! @throws usage_error when n > max_count
  //! @pre no other sum of this reducer is in flight on another stream (they share the storage:
  //!      use one reducer per stream)
  void operator()(const T* data, std::size_t n, double* result, stream_ref s) {
    if (n > max_count_)
      throw usage_error("zero: sum_of_squares_reducer sized for " + std::to_string(max_count_) + " elements, asked for " +
                        std::to_string(n));
    std::size_t bytes = 0;
    check(query(n, bytes, data, result), "cub::DeviceReduce::TransformReduce (sizing)", s.rank >= 0 ? s.rank : rank_);
    if (bytes > storage_.bytes())
      throw usage_error("zero: sum_of_squares_reducer: CUB asks " + std::to_string(bytes) + " bytes of temporary storage for " +
                        std::to_string(n) + " elements, more than the " + std::to_string(storage_.bytes()) +
                        " sized for " + std::to_string(max_count_));
    check(cub::DeviceReduce::TransformReduce(storage_.data(), bytes, data, result,
                                             static_cast<std::int64_t>(n), detail::add_doubles{},
                                             detail::square_in_double<T>{}, 0.0, s.stream),
          "cub::DeviceReduce::TransformReduce", s.rank >= 0 ? s.rank : rank_);
  }

  std::size_t max_count() const noexcept { return max_count_; }
  //! Device bytes of CUB's temporary storage.
  std::size_t bytes() const noexcept { return storage_.bytes(); }

 private:
  static cudaError_t query(std::size_t n, std::size_t& bytes, const T* data, double* result = nullptr) {
    return cub::DeviceReduce::TransformReduce(nullptr, bytes, data, result, static_cast<std::int64_t>(n),
                                              detail::add_doubles{}, detail::square_in_double<T>{}, 0.0, cudaStream_t{});
  }

  std::size_t max_count_ = 0;
  int rank_ = -1;
  device_buffer<unsigned char> storage_;
};

}  // namespace zero::cuda
