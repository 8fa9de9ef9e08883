#pragma once
#if !defined(ZERO_DETAIL_INCLUDE_ALLOWED)
#error "zero/detail/update_element.hpp is internal: include <zero/optimizer.hpp> (or <zero/cuda/fused_update.cuh>)"
#endif
// One element of the fused update, shared by the host loop (detail/host_update.hpp) and the
// CUDA kernel (zero/cuda/fused_update.cuh): the same source, so that the host tests cover the
// arithmetic the device runs and the two agree bit for bit in fp32: in device code a rule written
// over its number type computes with zero::exact_float (arithmetic.hpp), whose operations the
// compiler never contracts, whatever the user's --fmad.

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "zero/arithmetic.hpp"
#include "zero/config.hpp"
#include "zero/types.hpp"
#include "zero/update_rule.hpp"

namespace zero::detail {

inline constexpr std::size_t max_update_slots = 8;  //!< state slots an element-wise update can carry

//! Rounds the new fp32 value to the stored type: to nearest even, or (bf16 only) stochastically
//! with a counter-based generator keyed by (seed, step, element id).
template <class Value>
struct value_rounding {
  bool stochastic = false;
  std::uint64_t seed = 0;
  std::uint64_t step = 0;

  ZERO_HOST_DEVICE Value operator()(float value, std::uint64_t id) const noexcept {
    if constexpr (std::is_same_v<Value, bf16>) {
      if (stochastic) {
        std::uint64_t x = seed ^ (step * 0x9e3779b97f4a7c15ull) ^ (id * 0xbf58476d1ce4e5b9ull);
        x = (x ^ (x >> 31)) * 0x94d049bb133111ebull;
        x ^= x >> 29;
        // add 16 random bits below bf16's last bit, then truncate: rounds away from zero with
        // probability equal to the remainder. Non-finite values round to nearest.
        const std::uint32_t bits = bit_cast<std::uint32_t>(value);
        const bool finite = (bits & 0x7f800000u) != 0x7f800000u;
        const std::uint32_t noisy = bits + (finite ? static_cast<std::uint32_t>(x & 0xffffu) : 0u);
        return finite ? bf16::from_bits(static_cast<std::uint16_t>(noisy >> 16)) : bf16(value);
      }
    }
    return convert<Value>(value);
  }
};

#if defined(__CUDACC__)
//! An element's state slots as `exact_float`s (the same memory).
struct exact_state_ref {
  state_ref s;
  ZERO_HOST_DEVICE exact_float& operator[](std::size_t k) const noexcept { return reinterpret_cast<exact_float&>(s[k]); }
};

//! Whether Rule's update is written over its number type and takes `exact_float`s.
template <class Rule>
concept exact_rule = requires(const typename Rule::constants& c, exact_float& value, exact_float grad, exact_state_ref s) {
  Rule::update(c, value, grad, s);
};
#endif

//! The element's new value in fp32: Rule's update of `value` with gradient `factor * grad`,
//! which also updates the element's state `s`. The caller stores the result (rounded by a
//! `value_rounding`) and, where there is one, its model-precision copy.
template <elementwise_rule Rule, class Value, class Accum>
ZERO_HOST_DEVICE inline float updated_value(const typename Rule::constants& c, const Value& value, const Accum& grad, float factor,
                                            state_ref s) noexcept {
#if defined(__CUDA_ARCH__)
  if constexpr (exact_rule<Rule>) {
    exact_float v = static_cast<float>(value);
    Rule::update(c, v, exact_float(static_cast<float>(grad)) * factor, exact_state_ref{s});
    return v.v;
  }
#endif
  float v = static_cast<float>(value);
  Rule::update(c, v, static_cast<float>(grad) * factor, s);
  return v;
}

}  // namespace zero::detail
