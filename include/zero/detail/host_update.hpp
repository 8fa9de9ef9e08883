#pragma once
#if !defined(ZERO_DETAIL_INCLUDE_ALLOWED)
#error "zero/detail/host_update.hpp is internal: include <zero/optimizer.hpp> (or <zero/zero.hpp>)"
#endif
// The fused host update: one pass over a run of a rank's shard that scales the gradient by the
// step's one factor (average, unscale, clip), applies the rule in fp32, stores the new value
// and writes the model-precision copy the all-gather sends. Written so that GCC and Clang
// vectorize it for whatever instruction set the translation unit targets: constants copied into
// a local, state slots hoisted into locals, no branch on whether there is an output, and a sqrt
// that cannot set errno (zero::zero compiles with -fno-math-errno; see docs/performance.md).

#include <cstddef>
#include <cstdint>

#include "zero/detail/update_element.hpp"
#include "zero/types.hpp"
#include "zero/update_rule.hpp"

namespace zero::detail {

//! Sum of squares of grads[0, n) in double (each square is exact in double), over eight fixed
//! lanes so that it vectorizes and its rounding does not depend on the instruction set.
template <class Accum>
double sum_of_squares(const Accum* grads, std::size_t n) noexcept {
  double lanes[8] = {};
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (std::size_t l = 0; l < 8; ++l) {
      const double g = static_cast<double>(static_cast<float>(grads[i + l]));
      lanes[l] += g * g;
    }
  for (std::size_t l = 0; i < n; ++i, ++l) {
    const double g = static_cast<double>(static_cast<float>(grads[i]));
    lanes[l] += g * g;
  }
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

//! values[i], state[i] = Rule(values[i], factor * grads[i], state[i]) for i in [0, n); when
//! `out` is not null, out[i] = Param(new value). Returns the sum of squares of grads[0, n) when
//! `with_norm` (computed block by block while the block is in L1), else 0.
template <elementwise_rule Rule, class Value, class Accum, class Param>
double update_elements(const typename Rule::constants& constants, Value* __restrict values, const Accum* __restrict grads,
                       float* const* state, std::size_t state_count, Param* __restrict out, std::size_t n, float factor,
                       const value_rounding<Value>& round, std::uint64_t first_id, bool with_norm = false) {
  double norm = 0;
  float* slots[8] = {};
  for (std::size_t k = 0; k < state_count && k < 8; ++k) slots[k] = state[k];
  const bool exact_store = std::is_same_v<Value, float> || !round.stochastic;
  auto loop = [&](const typename Rule::constants& fixed) {
    const typename Rule::constants c = fixed;  // a local copy: invariant for the optimizer
    auto update = [&](std::size_t begin, std::size_t end) {
      for (std::size_t i = begin; i < end; ++i) {
        values[i] = convert<Value>(updated_value<Rule>(c, values[i], grads[i], factor, state_ref{slots, i}));
      }
    };
    if (out != nullptr || with_norm) {
      // update a block, then write its model-precision copy (and sum its squares) while the
      // block is still in L1: simple loops vectorize where one fused loop does not
      constexpr std::size_t block = 1024;
      for (std::size_t b = 0; b < n; b += block) {
        const std::size_t e = b + block < n ? b + block : n;
        if (with_norm) norm += sum_of_squares(grads + b, e - b);
        if (exact_store) update(b, e);
        else
          for (std::size_t i = b; i < e; ++i) {
            values[i] = round(updated_value<Rule>(c, values[i], grads[i], factor, state_ref{slots, i}), first_id + i);
          }
        if (out != nullptr)
          for (std::size_t i = b; i < e; ++i) out[i] = convert<Param>(static_cast<float>(values[i]));
      }
    } else if (exact_store) {
      update(0, n);
    } else {
      for (std::size_t i = 0; i < n; ++i) {
        values[i] = round(updated_value<Rule>(c, values[i], grads[i], factor, state_ref{slots, i}), first_id + i);
      }
    }
  };
  if constexpr (requires { Rule::specialize(constants, loop); }) Rule::specialize(constants, loop);
  else loop(constants);
  return norm;
}

//! Whether data[0, n) holds an infinity or a NaN (one vectorizable pass over the exponent bits).
template <class T>
bool any_nonfinite(const T* data, std::size_t n) noexcept {
  std::uint32_t bad = 0;
  for (std::size_t i = 0; i < n; ++i)
    bad |= static_cast<std::uint32_t>((bit_cast<std::uint32_t>(static_cast<float>(data[i])) & 0x7f800000u) == 0x7f800000u);
  return bad != 0;
}

}  // namespace zero::detail
