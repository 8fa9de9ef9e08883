#pragma once
#if !defined(ZERO_DETAIL_INCLUDE_ALLOWED)
#error "zero/detail/host_update.hpp is internal: include <zero/optimizer.hpp> (or <zero/zero.hpp>)"
#endif
// The fused host update: one pass over a run of a rank's shard that scales the gradient by the
// step's one factor (average, unscale, clip), applies the rule in fp32, stores the new value
// and writes the model-precision copy the all-gather sends. Written so that GCC and Clang
// vectorize it for whatever instruction set the translation unit targets: the shipped rules run
// on host vectors (zero::float_lanes, whose square root is the vector instruction: a scalar sqrtf
// may set errno, which stops GCC vectorizing), constants copied into a local, no branch on
// whether there is an output (see docs/performance.md).

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "zero/arithmetic.hpp"
#include "zero/detail/update_element.hpp"
#include "zero/types.hpp"
#include "zero/update_rule.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ZERO_HOST_STREAMING_STORES 1
#endif

ZERO_VECTOR_ABI_QUIET_BEGIN
namespace zero::detail {

//! A sum of squares in eight lanes of double (each square is exact in double): element `i` of a
//! numbering (the shard position) goes to lane i % 8, and each lane adds its elements in order.
//! So the sum of a range does not depend on where the range is cut into runs or blocks, and its
//! rounding does not depend on the instruction set.
struct square_lanes {
  double lane[8] = {};
  double total() const noexcept {
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  }
};

//! Adds the squares of grads[0, n) to `s`, grads[i] being element `first + i` of the numbering.
template <class Accum>
void add_squares(square_lanes& s, const Accum* grads, std::size_t n, std::uint64_t first) noexcept {
  auto square = [&](std::size_t i) {
    const double g = static_cast<double>(static_cast<float>(grads[i]));
    return g * g;
  };
  std::size_t i = 0;
  for (; i < n && (first + i) % 8 != 0; ++i) s.lane[(first + i) % 8] += square(i);
  double lanes[8];  // a local copy, so that the loop vectorizes
  for (std::size_t l = 0; l < 8; ++l) lanes[l] = s.lane[l];
  for (; i + 8 <= n; i += 8)
    for (std::size_t l = 0; l < 8; ++l) lanes[l] += square(i + l);
  for (std::size_t l = 0; i < n; ++i, ++l) lanes[l] += square(i);
  for (std::size_t l = 0; l < 8; ++l) s.lane[l] = lanes[l];
}

//! Sum of squares of grads[0, n) in double, in lanes numbered from grads[0].
template <class Accum>
double sum_of_squares(const Accum* grads, std::size_t n) noexcept {
  square_lanes s;
  add_squares(s, grads, n, 0);
  return s.total();
}

//! The instruction sets the host update runs on.
enum class host_isa : std::uint8_t {
  baseline,  //!< the translation unit's own target (SSE2 on x86-64 unless the build says more)
  avx2,      //!< AVX2 (8-lane vectors, no FMA), chosen at run time (ZERO_HOST_AVX2_DISPATCH)
  avx512,    //!< AVX-512 F, BW and VL (16-lane vectors, nothing contracted), chosen at run time
};

//! The instruction set's name, as ZERO_HOST_ISA spells it.
inline const char* to_string(host_isa isa) noexcept {
  return isa == host_isa::avx512 ? "avx512" : isa == host_isa::avx2 ? "avx2" : "baseline";
}

//! Whether this build has the AVX2 update and this CPU can run it.
inline bool host_isa_available(host_isa isa) noexcept {
  if (isa == host_isa::baseline) return true;
#if defined(ZERO_HOST_AVX2_DISPATCH)
  if (isa == host_isa::avx2) return __builtin_cpu_supports("avx2");
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

//! The choice, made once: the best of AVX-512, AVX2 and the baseline this CPU has, or at most
//! what the environment names (ZERO_HOST_ISA=baseline, avx2 or avx512).
inline std::atomic<host_isa>& host_isa_choice() noexcept {
  static std::atomic<host_isa> choice = [] {
    const char* forced = std::getenv("ZERO_HOST_ISA");
    host_isa most = host_isa::avx512;
    if (forced != nullptr && std::strcmp(forced, "baseline") == 0) most = host_isa::baseline;
    if (forced != nullptr && std::strcmp(forced, "avx2") == 0) most = host_isa::avx2;
    for (host_isa isa : {host_isa::avx512, host_isa::avx2})
      if (isa <= most && host_isa_available(isa)) return isa;
    return host_isa::baseline;
  }();
  return choice;
}

//! The instruction set the host update runs on now.
inline host_isa current_host_isa() noexcept { return host_isa_choice().load(std::memory_order_relaxed); }

//! Makes the host update run on `isa` (tests run every path the machine has); false, and no
//! change, where this build or CPU has no such path.
inline bool set_host_isa(host_isa isa) noexcept {
  if (!host_isa_available(isa)) return false;
  host_isa_choice().store(isa, std::memory_order_relaxed);
  return true;
}

#if defined(ZERO_HOST_LANES)
//! The state slots of consecutive elements, as vectors V (loaded before the rule, stored after
//! it).
template <class V>
struct lane_state {
  V* slots;
  V& operator[](std::size_t k) const noexcept { return slots[k]; }
};

//! Whether Rule's update is written over its number type and takes vectors V.
template <class Rule, class V>
concept lane_rule = requires(const typename Rule::constants& c, V& value, const V& grad, lane_state<V> s) {
  Rule::update(c, value, grad, s);
};

// (vectors by reference only: no vector crosses a call whose ends may be compiled for
// different targets)
template <class V, class T>
inline void load_lanes(V& v, const T* from) noexcept {
  if constexpr (std::is_same_v<T, float>) std::memcpy(&v, from, sizeof v);
  else {
    float converted[sizeof(V) / sizeof(float)];
    for (std::size_t l = 0; l < sizeof(V) / sizeof(float); ++l) converted[l] = static_cast<float>(from[l]);
    std::memcpy(&v, converted, sizeof v);
  }
}

template <class V, class T>
inline void store_lanes(T* to, const V& v) noexcept {
  if constexpr (std::is_same_v<T, float>) std::memcpy(to, &v, sizeof v);
  else
    for (std::size_t l = 0; l < sizeof(V) / sizeof(float); ++l) to[l] = convert<T>(v[l]);
}
#endif

//! `update_elements` with vectors V (a `float_lanes` type; `float`: element by element only).
template <class V, elementwise_rule Rule, class Value, class Accum, class Param>
void update_elements_on(const typename Rule::constants& constants, Value* __restrict values, const Accum* __restrict grads,
                          float* const* state, std::size_t state_count, Param* __restrict out, std::size_t n, float factor,
                        const value_rounding<Value>& round, std::uint64_t first_id, square_lanes* squares) {
  float* slots[max_update_slots] = {};
  if (state_count > max_update_slots) state_count = max_update_slots;
  for (std::size_t k = 0; k < state_count; ++k) slots[k] = state[k];
  const bool exact_store = std::is_same_v<Value, float> || !round.stochastic;
  constexpr std::size_t block = 1024;
  auto loop = [&](const typename Rule::constants& fixed) {
    const typename Rule::constants c = fixed;  // a local copy: invariant for the optimizer
    // the new values of elements [b, e) into to[0, e - b): the stored values, or floats that
    // the stochastic rounding stores after
    auto update = [&](std::size_t b, std::size_t e, auto* __restrict to) {
      using To = std::remove_cvref_t<decltype(*to)>;
      std::size_t i = b;
#if defined(ZERO_HOST_LANES)
      if constexpr (lane_rule<Rule, V>) {
        constexpr std::size_t width = sizeof(V) / sizeof(float);
        // the state count as a constant where it is small, so that the slots stay in registers
        auto lanes_loop = [&]<std::size_t Slots>(std::integral_constant<std::size_t, Slots>) {
          const std::size_t count = Slots < max_update_slots ? Slots : (state_count < Slots ? state_count : Slots);
          V lane_slots[max_update_slots] = {};  // (slots past `count` are never read)
          const typename Rule::constants k_c = c;  // a copy the stores cannot alias: it stays in registers
          for (; i + width <= e; i += width) {
            for (std::size_t k = 0; k < count; ++k) load_lanes(lane_slots[k], slots[k] + i);
            V v, g;
            load_lanes(v, values + i);
            load_lanes(g, grads + i);
            const V scaled = g * factor;
            Rule::update(k_c, v, scaled, lane_state<V>{lane_slots});
            for (std::size_t k = 0; k < count; ++k) store_lanes(slots[k] + i, lane_slots[k]);
            store_lanes(to + (i - b), v);
          }
        };
        switch (state_count) {
          case 1: lanes_loop(std::integral_constant<std::size_t, 1>{}); break;
          case 2: lanes_loop(std::integral_constant<std::size_t, 2>{}); break;
          case 3: lanes_loop(std::integral_constant<std::size_t, 3>{}); break;
          default: lanes_loop(std::integral_constant<std::size_t, max_update_slots>{}); break;
        }
      }
#endif
      for (; i < e; ++i) to[i - b] = convert<To>(updated_value<Rule>(c, values[i], grads[i], factor, state_ref{slots, i}));
    };
    float fresh[block];  // (stochastic rounding only)
    // update a block, then write its model-precision copy (and sum its squares) while the
    // block is still in L1: simple loops vectorize where one fused loop does not
    for (std::size_t b = 0; b < n; b += block) {
      const std::size_t e = b + block < n ? b + block : n;
      if (squares != nullptr) add_squares(*squares, grads + b, e - b, first_id + b);
      if (exact_store) update(b, e, values + b);
      else {
        update(b, e, fresh);
        for (std::size_t i = b; i < e; ++i) values[i] = round(fresh[i - b], first_id + i);
      }
      if (out != nullptr)
        for (std::size_t i = b; i < e; ++i) out[i] = convert<Param>(static_cast<float>(values[i]));
    }
  };
  if constexpr (requires { Rule::specialize(constants, loop); }) Rule::specialize(constants, loop);
  else loop(constants);
}

#if defined(ZERO_HOST_AVX2_DISPATCH)
//! `update_elements_on` with 8-lane vectors, compiled for AVX2 (no FMA: nothing is contracted),
//! everything it calls inlined into it.
template <elementwise_rule Rule, class Value, class Accum, class Param>
[[gnu::target("avx2"), gnu::flatten]] void update_elements_avx2(const typename Rule::constants& constants, Value* __restrict values,
                                                                const Accum* __restrict grads, float* const* state,
                                                                std::size_t state_count, Param* __restrict out, std::size_t n,
                                                                float factor, const value_rounding<Value>& round,
                                                                std::uint64_t first_id, square_lanes* squares) {
  update_elements_on<float_lanes_avx2, Rule>(constants, values, grads, state, state_count, out, n, factor, round, first_id, squares);
}

//! `update_elements_on` with 16-lane vectors, compiled for AVX-512 with contraction off (its
//! fused multiply-adds would change the bits), everything it calls inlined into it.
template <elementwise_rule Rule, class Value, class Accum, class Param>
[[gnu::target("avx512f,avx512bw,avx512vl,avx2"), gnu::optimize("fp-contract=off"), gnu::flatten]] void update_elements_avx512(
    const typename Rule::constants& constants, Value* __restrict values, const Accum* __restrict grads, float* const* state,
    std::size_t state_count, Param* __restrict out, std::size_t n, float factor, const value_rounding<Value>& round,
    std::uint64_t first_id, square_lanes* squares) {
  update_elements_on<float_lanes_avx512, Rule>(constants, values, grads, state, state_count, out, n, factor, round, first_id,
                                               squares);
}
#endif

//! values[i], state[i] = Rule(values[i], factor * grads[i], state[i]) for i in [0, n); when
//! `out` is not null, out[i] = Param(new value). When `squares` is not null, adds the squares of
//! grads[0, n) to it (element i numbered `first_id + i`; computed block by block while the block
//! is in L1). A rule written over its number type runs on whole host vectors (`float_lanes`, or
//! 8-lane AVX2 or 16-lane AVX-512 vectors where the CPU has them and the build dispatches:
//! `current_host_isa()`), the rest of a run element by element: the same operations in the same
//! order, so the same bits on every path.
template <elementwise_rule Rule, class Value, class Accum, class Param>
void update_elements(const typename Rule::constants& constants, Value* __restrict values, const Accum* __restrict grads,
                     float* const* state, std::size_t state_count, Param* __restrict out, std::size_t n, float factor,
                     const value_rounding<Value>& round, std::uint64_t first_id, square_lanes* squares) {
#if defined(ZERO_HOST_AVX2_DISPATCH)
  if constexpr (lane_rule<Rule, float_lanes_avx512>)
    if (current_host_isa() == host_isa::avx512)
      return update_elements_avx512<Rule>(constants, values, grads, state, state_count, out, n, factor, round, first_id, squares);
  if constexpr (lane_rule<Rule, float_lanes_avx2>)
    if (current_host_isa() != host_isa::baseline)
      return update_elements_avx2<Rule>(constants, values, grads, state, state_count, out, n, factor, round, first_id, squares);
#endif
#if defined(ZERO_HOST_LANES)
  using V = float_lanes;
#else
  using V = float;
#endif
  update_elements_on<V, Rule>(constants, values, grads, state, state_count, out, n, factor, round, first_id, squares);
}

//! `update_elements` returning the sum of squares of grads[0, n) when `with_norm` (else 0).
template <elementwise_rule Rule, class Value, class Accum, class Param>
double update_elements(const typename Rule::constants& constants, Value* __restrict values, const Accum* __restrict grads,
                       float* const* state, std::size_t state_count, Param* __restrict out, std::size_t n, float factor,
                       const value_rounding<Value>& round, std::uint64_t first_id, bool with_norm = false) {
  square_lanes squares;
  update_elements<Rule>(constants, values, grads, state, state_count, out, n, factor, round, first_id,
                        with_norm ? &squares : nullptr);
  return squares.total();
}

//! Whether data[0, n) holds an infinity or a NaN (one vectorizable pass over the exponent bits).
template <class T>
bool any_nonfinite(const T* data, std::size_t n) noexcept {
  std::uint32_t bad = 0;
  for (std::size_t i = 0; i < n; ++i)
    bad |= static_cast<std::uint32_t>((bit_cast<std::uint32_t>(static_cast<float>(data[i])) & 0x7f800000u) == 0x7f800000u);
  return bad != 0;
}

// ---- the host backend's other passes over elements, on the chosen instruction set ----------

//! From this many elements (4 MiB) a conversion into floats writes with streaming stores, past
//! the caches: the engine converts whole reports into a unit's buffer or the gradient shard,
//! which it reads again only after far more has been written, and a plain store would first
//! read each line it overwrites (at one rank, 12 ms instead of 20 for 64M bf16 gradients).
inline constexpr std::size_t streaming_threshold = std::size_t{1} << 20;

//! to[i] = convert<To>(from[i]): the same values whatever the stores.
struct convert_pass {
  template <class To, class From>
  static void run(To* __restrict to, const From* __restrict from, std::size_t n) noexcept {
    std::size_t i = 0;
#if defined(ZERO_HOST_STREAMING_STORES)
    if constexpr (std::is_same_v<To, float>)
      if (n >= streaming_threshold) {
        for (; i < n && (reinterpret_cast<std::uintptr_t>(to + i) & 63) != 0; ++i) to[i] = convert<To>(from[i]);
        for (; i + 16 <= n; i += 16) {
          alignas(64) float line[16];
          for (std::size_t l = 0; l < 16; ++l) line[l] = convert<float>(from[i + l]);
          for (std::size_t l = 0; l < 16; l += 4) _mm_stream_ps(to + i + l, _mm_load_ps(line + l));
        }
        _mm_sfence();  // visible before anything stored after: another rank's thread may read them next
      }
#endif
    for (; i < n; ++i) to[i] = convert<To>(from[i]);
  }
};
//! to[i] = To(float(to[i]) + float(from[i])).
struct add_pass {
  template <class To, class From>
  static void run(To* to, const From* from, std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) to[i] = convert<To>(static_cast<float>(to[i]) + static_cast<float>(from[i]));
  }
};
//! data[i] = T(float(data[i]) * factor).
struct scale_pass {
  template <class T>
  static void run(T* data, std::size_t n, float factor) noexcept {
    for (std::size_t i = 0; i < n; ++i) data[i] = convert<T>(static_cast<float>(data[i]) * factor);
  }
};
//! any_nonfinite(data, n).
struct nonfinite_pass {
  template <class T>
  static bool run(const T* data, std::size_t n) noexcept {
    return any_nonfinite(data, n);
  }
};
//! add_squares(*s, grads, n, first).
struct squares_pass {
  template <class Accum>
  static void run(square_lanes* s, const Accum* grads, std::size_t n, std::uint64_t first) noexcept {
    add_squares(*s, grads, n, first);
  }
};

#if defined(ZERO_HOST_AVX2_DISPATCH)
template <class Pass, class... Args>
[[gnu::target("avx2"), gnu::flatten]] auto run_pass_avx2(Args... args) noexcept {
  return Pass::run(args...);
}
template <class Pass, class... Args>
[[gnu::target("avx512f,avx512bw,avx512vl,avx2"), gnu::optimize("fp-contract=off"), gnu::flatten]] auto run_pass_avx512(
    Args... args) noexcept {
  return Pass::run(args...);
}
#endif

//! `Pass::run(args...)` (pointers and counts in, no vector crosses the call) compiled for the
//! instruction set the host update runs on (`current_host_isa()`): the same operations on every
//! one, so the same bits.
template <class Pass, class... Args>
auto run_pass(Args... args) noexcept {
#if defined(ZERO_HOST_AVX2_DISPATCH)
  const host_isa isa = current_host_isa();
  if (isa == host_isa::avx512) return run_pass_avx512<Pass>(args...);
  if (isa == host_isa::avx2) return run_pass_avx2<Pass>(args...);
#endif
  return Pass::run(args...);
}

}  // namespace zero::detail
ZERO_VECTOR_ABI_QUIET_END
