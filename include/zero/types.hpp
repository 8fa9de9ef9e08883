#pragma once
//! @file types.hpp
//! Element types (fp32, bf16, fp16) usable on the host, their conversions, and `raw_span`,
//! the (pointer, count) view through which a framework hands its memory to `zero`.
//!
//! Conversions from float round to nearest, ties to even; NaN stays NaN (quieted, sign and the
//! leading payload bits kept) and infinities stay infinities. The bit layouts are those of
//! CUDA's `__nv_bfloat16` and `__half`, so a device backend can reinterpret them.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>

#include "zero/config.hpp"

namespace zero {

using fp32 = float;

//! Round-to-nearest-even conversion of a float to bfloat16 bits. Branch-free (both candidates
//! computed, one selected), so loops over it vectorize.
ZERO_HOST_DEVICE constexpr std::uint16_t bf16_bits_from_float(float value) noexcept {
  const std::uint32_t u = bit_cast<std::uint32_t>(value);
  const std::uint32_t quiet_nan = (u >> 16) | 0x0040u;  // NaN: keep sign and top payload, force quiet
  const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<std::uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

//! Exact conversion of bfloat16 bits to float.
ZERO_HOST_DEVICE constexpr float float_from_bf16_bits(std::uint16_t bits) noexcept {
  return bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

//! Round-to-nearest-even conversion of a float to IEEE binary16 bits, subnormals included.
//! Branch-free: every candidate is computed and one selected, so loops over it vectorize.
ZERO_HOST_DEVICE constexpr std::uint16_t fp16_bits_from_float(float value) noexcept {
  const std::uint32_t u = bit_cast<std::uint32_t>(value);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t a = u & 0x7fffffffu;
  // NaN: quiet, keep the leading payload bits
  const std::uint32_t nan = 0x7e00u | ((a >> 13) & 0x3ffu);
  // >= 65520 (max half + half an ulp) rounds to infinity
  const std::uint32_t infinity = 0x7c00u;
  // normal half: rebias the exponent (127 -> 15) and round the mantissa to nearest even
  const std::uint32_t normal = (a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13;
  // subnormal half (or zero): adding 0.5f aligns the value so that the float adder rounds it to
  // nearest even at the half subnormal's last bit; the low bits are then the half's bits
  const std::uint32_t subnormal = bit_cast<std::uint32_t>(bit_cast<float>(a) + 0.5f) - 0x3f000000u;
  const std::uint32_t magnitude = a > 0x7f800000u   ? nan
                                  : a >= 0x477ff000u ? infinity
                                  : a >= 0x38800000u ? normal
                                                     : subnormal;
  return static_cast<std::uint16_t>(sign | (magnitude & 0x7fffu));
}

//! Exact conversion of IEEE binary16 bits to float.
ZERO_HOST_DEVICE constexpr float float_from_fp16_bits(std::uint16_t bits) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  const std::uint32_t exponent = (bits >> 10) & 0x1fu;
  const std::uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1fu) return bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) return bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  // zero or subnormal: mantissa * 2^-24 is exact in float
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return bit_cast<float>(sign | bit_cast<std::uint32_t>(magnitude));
}

//! bfloat16: 1 sign, 8 exponent, 7 mantissa bits. Layout-compatible with `__nv_bfloat16`.
struct bf16 {
  std::uint16_t bits = 0;

  bf16() = default;
  ZERO_HOST_DEVICE constexpr explicit bf16(float value) noexcept : bits(bf16_bits_from_float(value)) {}
  ZERO_HOST_DEVICE constexpr explicit operator float() const noexcept { return float_from_bf16_bits(bits); }
  ZERO_HOST_DEVICE static constexpr bf16 from_bits(std::uint16_t b) noexcept {
    bf16 v;
    v.bits = b;
    return v;
  }
  friend constexpr bool operator==(bf16, bf16) = default;  //!< bitwise equality
};

//! IEEE binary16: 1 sign, 5 exponent, 10 mantissa bits. Layout-compatible with `__half`.
struct fp16 {
  std::uint16_t bits = 0;

  fp16() = default;
  ZERO_HOST_DEVICE constexpr explicit fp16(float value) noexcept : bits(fp16_bits_from_float(value)) {}
  ZERO_HOST_DEVICE constexpr explicit operator float() const noexcept { return float_from_fp16_bits(bits); }
  ZERO_HOST_DEVICE static constexpr fp16 from_bits(std::uint16_t b) noexcept {
    fp16 v;
    v.bits = b;
    return v;
  }
  friend constexpr bool operator==(fp16, fp16) = default;  //!< bitwise equality
};

static_assert(sizeof(bf16) == 2 && alignof(bf16) == 2);
static_assert(sizeof(fp16) == 2 && alignof(fp16) == 2);

//! The element types `zero` stores, reduces and converts.
template <class T>
concept element_type = std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, bf16> ||
                       std::is_same_v<T, fp16>;

//! Converts between element types through float (double stays double).
template <element_type To, element_type From>
ZERO_HOST_DEVICE constexpr To convert(From value) noexcept {
  if constexpr (std::is_same_v<To, From>) {
    return value;
  } else if constexpr (std::is_same_v<To, double> || std::is_same_v<From, double>) {
    return static_cast<To>(static_cast<double>(static_cast<float>(value)));
  } else {
    return To(static_cast<float>(value));
  }
}

//! The name of an element type, as it appears in messages and checkpoint headers.
template <class T>
constexpr std::string_view type_name() noexcept {
  if constexpr (std::is_same_v<T, float>) return "fp32";
  else if constexpr (std::is_same_v<T, double>) return "fp64";
  else if constexpr (std::is_same_v<T, bf16>) return "bf16";
  else if constexpr (std::is_same_v<T, fp16>) return "fp16";
  else if constexpr (std::is_same_v<T, std::uint64_t>) return "u64";
  else if constexpr (std::is_same_v<T, std::int64_t>) return "i64";
  else if constexpr (std::is_same_v<T, std::uint32_t>) return "u32";
  else if constexpr (std::is_same_v<T, std::int32_t>) return "i32";
  else if constexpr (std::is_void_v<T>) return "none";
  else return "user";
}

//! A view of memory that a framework hands over: a pointer and an element count. Unlike
//! `std::span` it may hold a null pointer with a non-zero count, so that `zero` can refuse it
//! with a clear error instead of the behaviour being undefined.
template <class T>
struct raw_span {
  T* data = nullptr;
  std::size_t size = 0;

  constexpr raw_span() noexcept = default;
  constexpr raw_span(T* pointer, std::size_t count) noexcept : data(pointer), size(count) {}
  template <class U, std::size_t E>
    requires std::is_convertible_v<U (*)[], T (*)[]>
  constexpr raw_span(std::span<U, E> s) noexcept : data(s.data()), size(s.size()) {}
  template <class U>
    requires(std::is_convertible_v<U (*)[], T (*)[]> && !std::is_same_v<U, T>)
  constexpr raw_span(raw_span<U> s) noexcept : data(s.data), size(s.size) {}

  constexpr T& operator[](std::size_t i) const noexcept { return data[i]; }
  constexpr T* begin() const noexcept { return data; }
  constexpr T* end() const noexcept { return data + size; }
  constexpr bool empty() const noexcept { return size == 0; }
  constexpr std::size_t size_bytes() const noexcept { return size * sizeof(T); }
  constexpr std::span<T> to_span() const noexcept { return {data, size}; }
};

template <class T>
raw_span(T*, std::size_t) -> raw_span<T>;

}  // namespace zero
