#pragma once
//! @file arithmetic.hpp
//! The numbers an update rule computes with, so that one rule source gives the same bits
//! everywhere without compile flags imposed on the user's code:
//!
//!  * `float` on the host, one element at a time (and the tail of a host run);
//!  * `zero::float_lanes` on the host: a vector of `lanes` floats (GCC and Clang vector
//!    extensions; 4 lanes with SSE, 8 where the translation unit targets AVX). The host update
//!    runs a rule written as a template over its number type on whole vectors, so its square
//!    root is the vector instruction without `-fno-math-errno` (a scalar `sqrtf` may set
//!    `errno`, and GCC then does not vectorize a loop that calls it);
//!  * `zero::exact_float` in CUDA device code: every operation an explicitly rounded intrinsic
//!    (`__fadd_rn`, `__fmul_rn`, `__fdiv_rn`, `__fsqrt_rn`, ...), which the compiler never fuses
//!    into a multiply-add and `--use_fast_math` does not approximate, so device results equal the
//!    host's bit for bit under the user's own `--fmad` and precision flags.
//!
//! Every operation is a single IEEE operation rounded to nearest, in the order the source
//! writes it, so the three agree bit for bit (x86 SSE and AVX have no contraction either: the
//! host vector code has no multiply-add unless the user's flags allow contraction, see
//! docs/performance.md). A rule uses `+ - * /`, `sqrt_nonnegative`, `max_of`, `sign_of` and
//! `to_float`; it may mix its `float` constants with its number type.

#include <cstddef>
#include <cstdint>

#include "zero/config.hpp"

namespace zero {

// ---- host vectors ----------------------------------------------------------------------

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDA_ARCH__) && \
    defined(__SSE2__)
#define ZERO_HOST_LANES 1
#if defined(__AVX__)
//! Floats in one host vector: 8 where the translation unit targets AVX, else 4 (SSE2).
inline constexpr std::size_t lanes = 8;
#else
inline constexpr std::size_t lanes = 4;
#endif
//! `lanes` floats, operated on element by element (`+ - * /` with another vector or a float).
typedef float float_lanes __attribute__((vector_size(lanes * sizeof(float))));
//! A comparison's result: each lane all ones (true) or zero.
typedef std::int32_t mask_lanes __attribute__((vector_size(lanes * sizeof(float))));

//! sqrt(|x|) in each lane: the vector square root (IEEE, rounded to nearest).
inline float_lanes sqrt_nonnegative(float_lanes x) noexcept {
  const float_lanes a = (float_lanes)((mask_lanes)x & 0x7fffffff);
#if defined(__AVX__)
  return __builtin_ia32_sqrtps256(a);
#else
  return __builtin_ia32_sqrtps(a);
#endif
}
//! a > b ? a : b in each lane (b where either is NaN).
inline float_lanes max_of(float_lanes a, float_lanes b) noexcept {
  const mask_lanes greater = a > b;
  return (float_lanes)((greater & (mask_lanes)a) | (~greater & (mask_lanes)b));
}
//! 1, -1 or 0 in each lane as x > 0, x < 0 or neither (NaN and zeros: 0).
inline float_lanes sign_of(float_lanes x) noexcept {
  const mask_lanes ones = (mask_lanes)(float_lanes{} + 1.0f);
  return (float_lanes)((x > 0.0f) & ones) - (float_lanes)((x < 0.0f) & ones);
}
inline float_lanes to_float(float_lanes x) noexcept { return x; }

// AVX2 chosen at run time (GCC, optimized builds whose target has no AVX): the update has a
// second instantiation on 8-lane vectors inside a function compiled for AVX2 (without FMA, so
// that nothing is contracted), which every call inside it is inlined into (`flatten`), and
// which the host update calls where the CPU has AVX2 (detail/host_update.hpp). Unoptimized
// builds do not inline, and a vector passed between functions compiled for different targets
// changes its calling convention: they, and Clang (which refuses such a call outright) and
// nvcc's host pass, keep the translation unit's own vectors.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__) && defined(__OPTIMIZE__) && !defined(__AVX__)
#define ZERO_HOST_AVX2_DISPATCH 1
//! 8 floats, in the functions compiled for AVX2 that the host update picks at run time.
typedef float float_lanes_avx2 __attribute__((vector_size(32)));
typedef std::int32_t mask_lanes_avx2 __attribute__((vector_size(32)));
[[gnu::target("avx")]] inline float_lanes_avx2 sqrt_nonnegative(float_lanes_avx2 x) noexcept {
  return __builtin_ia32_sqrtps256((float_lanes_avx2)((mask_lanes_avx2)x & 0x7fffffff));
}
[[gnu::target("avx")]] inline float_lanes_avx2 max_of(float_lanes_avx2 a, float_lanes_avx2 b) noexcept {
  const mask_lanes_avx2 greater = a > b;
  return (float_lanes_avx2)((greater & (mask_lanes_avx2)a) | (~greater & (mask_lanes_avx2)b));
}
[[gnu::target("avx")]] inline float_lanes_avx2 sign_of(float_lanes_avx2 x) noexcept {
  const mask_lanes_avx2 ones = (mask_lanes_avx2)(float_lanes_avx2{} + 1.0f);
  return (float_lanes_avx2)((x > 0.0f) & ones) - (float_lanes_avx2)((x < 0.0f) & ones);
}
// AVX-512 (F, BW, VL) the same way, on 16-lane vectors; its function also turns contraction off
// (AVX-512F has fused multiply-adds of its own, which GCC would otherwise contract into).
#define ZERO_HOST_AVX512_DISPATCH 1
//! 16 floats, in the functions compiled for AVX-512 that the host update picks at run time.
typedef float float_lanes_avx512 __attribute__((vector_size(64)));
typedef std::int32_t mask_lanes_avx512 __attribute__((vector_size(64)));
[[gnu::target("avx512f")]] inline float_lanes_avx512 sqrt_nonnegative(float_lanes_avx512 x) noexcept {
  const float_lanes_avx512 a = (float_lanes_avx512)((mask_lanes_avx512)x & 0x7fffffff);
  return __builtin_ia32_sqrtps512_mask(a, a, static_cast<unsigned short>(0xffff), 4);  // 4: the current rounding (nearest)
}
[[gnu::target("avx512f")]] inline float_lanes_avx512 max_of(float_lanes_avx512 a, float_lanes_avx512 b) noexcept {
  const mask_lanes_avx512 greater = a > b;
  return (float_lanes_avx512)((greater & (mask_lanes_avx512)a) | (~greater & (mask_lanes_avx512)b));
}
[[gnu::target("avx512f")]] inline float_lanes_avx512 sign_of(float_lanes_avx512 x) noexcept {
  const mask_lanes_avx512 ones = (mask_lanes_avx512)(float_lanes_avx512{} + 1.0f);
  return (float_lanes_avx512)((x > 0.0f) & ones) - (float_lanes_avx512)((x < 0.0f) & ones);
}
#endif
#endif

// A rule's body on 8-lane vectors is compiled outside the AVX2 function it is inlined into, so
// GCC would note that such vectors change the calling convention; none ever crosses a call
// (rules take them by reference), so headers that hold rules silence -Wpsabi between these.
#if defined(ZERO_HOST_AVX2_DISPATCH)
#define ZERO_VECTOR_ABI_QUIET_BEGIN _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wpsabi\"")
#define ZERO_VECTOR_ABI_QUIET_END _Pragma("GCC diagnostic pop")
#else
#define ZERO_VECTOR_ABI_QUIET_BEGIN
#define ZERO_VECTOR_ABI_QUIET_END
#endif

// ---- scalars ---------------------------------------------------------------------------

//! sqrt(|x|): the square root of a value known to be non-negative (|x| so that a negative zero
//! or a stray negative gives the same result everywhere). On the host `__builtin_sqrtf`: correct
//! for every input, vectorized only through `float_lanes` (or with the user's own
//! `-fno-math-errno`).
ZERO_HOST_DEVICE inline float sqrt_nonnegative(float x) noexcept {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(fabsf(x));
#else
  return __builtin_sqrtf(__builtin_fabsf(x));
#endif
}
ZERO_HOST_DEVICE constexpr float max_of(float a, float b) noexcept { return a > b ? a : b; }
ZERO_HOST_DEVICE constexpr float sign_of(float x) noexcept { return x > 0 ? 1.0f : (x < 0 ? -1.0f : 0.0f); }
ZERO_HOST_DEVICE constexpr float to_float(float x) noexcept { return x; }

// ---- device: explicitly rounded operations ---------------------------------------------

#if defined(__CUDACC__)
//! A float whose every operation in device code is an explicitly rounded intrinsic: never
//! contracted into a multiply-add, never approximated by `--use_fast_math`. On the host side of
//! a CUDA translation unit, the plain operations. Converts from float implicitly, to float with
//! `to_float`.
struct exact_float {
  float v;
  exact_float() = default;
  __host__ __device__ constexpr exact_float(float x) noexcept : v(x) {}
};

#if defined(__CUDA_ARCH__)
#define ZERO_EXACT_OP(op, intrinsic, plain) intrinsic
#else
#define ZERO_EXACT_OP(op, intrinsic, plain) plain
#endif
__host__ __device__ inline exact_float operator+(exact_float a, exact_float b) noexcept {
  return ZERO_EXACT_OP(+, __fadd_rn(a.v, b.v), a.v + b.v);
}
__host__ __device__ inline exact_float operator-(exact_float a, exact_float b) noexcept {
  return ZERO_EXACT_OP(-, __fsub_rn(a.v, b.v), a.v - b.v);
}
__host__ __device__ inline exact_float operator*(exact_float a, exact_float b) noexcept {
  return ZERO_EXACT_OP(*, __fmul_rn(a.v, b.v), a.v * b.v);
}
__host__ __device__ inline exact_float operator/(exact_float a, exact_float b) noexcept {
  return ZERO_EXACT_OP(/, __fdiv_rn(a.v, b.v), a.v / b.v);
}
#undef ZERO_EXACT_OP
__host__ __device__ constexpr exact_float operator-(exact_float a) noexcept { return -a.v; }
__host__ __device__ constexpr bool operator>(exact_float a, exact_float b) noexcept { return a.v > b.v; }
__host__ __device__ constexpr bool operator<(exact_float a, exact_float b) noexcept { return a.v < b.v; }
__host__ __device__ inline exact_float sqrt_nonnegative(exact_float x) noexcept { return sqrt_nonnegative(x.v); }
__host__ __device__ constexpr exact_float max_of(exact_float a, exact_float b) noexcept { return a.v > b.v ? a : b; }
__host__ __device__ constexpr exact_float sign_of(exact_float x) noexcept { return sign_of(x.v); }
__host__ __device__ constexpr float to_float(exact_float x) noexcept { return x.v; }
#endif

}  // namespace zero
