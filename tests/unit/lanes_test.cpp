// The host update on vectors (zero::float_lanes, include/zero/arithmetic.hpp) gives the bits of
// the element-by-element loop (NaNs as NaN): every shipped element-wise rule and its variants, fp32 and bf16
// values, fp32 and bf16 gradients, with and without a model-precision copy, rounded to nearest
// and stochastically, over runs of several blocks with a tail, on inputs that include NaN,
// infinities, signed zeros, subnormals and negative second moments, on the translation unit's
// own vectors and on the AVX2 ones chosen at run time. Compiled twice: for the
// default target (SSE2, 4 lanes) and with -mavx (8 lanes; skipped, exit 77, where the CPU has no
// AVX). ZERO_LANES_NAME names the build in the test names.

#include <doctest/doctest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "zero/optimizer.hpp"

#ifndef ZERO_LANES_NAME
#define ZERO_LANES_NAME "default target"
#endif

#if defined(ZERO_HOST_LANES)

namespace {

std::uint64_t mix(std::uint64_t z) {  // splitmix64
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

//! A value for element i of stream `seed`: mostly ordinary, sometimes special.
float sample(std::uint64_t seed, std::size_t i, bool nonnegative) {
  const std::uint64_t h = mix(seed * 0x1000003ull + i);
  const float ordinary = static_cast<float>(static_cast<double>(h >> 40) / 16777216.0 * 2.0 - 1.0);
  float v;
  switch (h % 41) {
    case 0: v = std::numeric_limits<float>::quiet_NaN(); break;
    case 1: v = std::numeric_limits<float>::infinity(); break;
    case 2: v = -std::numeric_limits<float>::infinity(); break;
    case 3: v = 0.0f; break;
    case 4: v = -0.0f; break;
    case 5: v = 1e-41f * ordinary; break;  // subnormal
    case 6: v = 3e38f * ordinary; break;
    default: v = ordinary * (h % 7 == 0 ? 1e-3f : 1.0f); break;
  }
  return nonnegative && h % 53 != 0 ? (v < 0 ? -v : v) : v;  // a few negative second moments stay
}

std::uint32_t bits(float v) { return zero::bit_cast<std::uint32_t>(v); }
std::uint16_t bits(zero::bf16 v) { return v.bits; }
std::uint16_t bits(zero::fp16 v) { return v.bits; }

//! The same bits, where any NaN equals any NaN: IEEE leaves the sign and payload of a NaN that
//! an operation on two NaNs returns to the hardware and the order the compiler puts the
//! operands in, which differs between any two compilations of the same expression.
template <class T>
bool same(T a, T b) {
  const float fa = static_cast<float>(a), fb = static_cast<float>(b);
  return bits(a) == bits(b) || (fa != fa && fb != fb);
}

//! One rule configuration through `update_elements` against the element loop, for Value, Accum
//! and Param, over n elements: every value, state and copy bit for bit.
template <class Rule, class Value, class Accum, class Param>
void check(const typename Rule::hyperparameters& h, std::uint64_t step, bool stochastic, bool with_out, const std::string& what) {
  CAPTURE(what);
  CAPTURE(step);
  CAPTURE(stochastic);
  CAPTURE(with_out);
  constexpr std::size_t n = 2 * 1024 + 37;  // two whole blocks, then a tail no vector fills
  const std::size_t slots = Rule::state_count(h);
  std::vector<Value> values(n);
  std::vector<Accum> grads(n);
  std::vector<std::vector<float>> state(slots, std::vector<float>(n));
  for (std::size_t i = 0; i < n; ++i) {
    values[i] = zero::convert<Value>(sample(1, i, false));
    grads[i] = zero::convert<Accum>(sample(2, i, false));
    for (std::size_t k = 0; k < slots; ++k) state[k][i] = sample(3 + k, i, k == 1 || std::string_view(Rule::name) == "adagrad");
  }
  std::vector<Value> expect_values = values;
  std::vector<std::vector<float>> expect_state = state;
  std::vector<Param> out(n), expect_out(n);
  const auto c = Rule::prepare(h, step);
  const float factor = 0.75f;
  const zero::detail::value_rounding<Value> round{stochastic, 1234, step};
  const std::uint64_t first_id = 99;

  // the element loop: updated_value on floats, one element at a time
  for (std::size_t i = 0; i < n; ++i) {
    float* slot_ptrs[zero::detail::max_update_slots] = {};
    for (std::size_t k = 0; k < slots; ++k) slot_ptrs[k] = expect_state[k].data();
    const float v = zero::detail::updated_value<Rule>(c, expect_values[i], grads[i], factor, zero::state_ref{slot_ptrs, i});
    expect_values[i] = round(v, first_id + i);
    expect_out[i] = zero::convert<Param>(static_cast<float>(expect_values[i]));
  }

  float* state_ptrs[zero::detail::max_update_slots] = {};
  for (std::size_t k = 0; k < slots; ++k) state_ptrs[k] = state[k].data();
  zero::detail::update_elements<Rule>(c, values.data(), grads.data(), state_ptrs, slots, with_out ? out.data() : nullptr, n, factor,
                                      round, first_id, true);

  std::size_t differ = 0, first = n;
  for (std::size_t i = 0; i < n; ++i) {
    bool equal = same(values[i], expect_values[i]);
    for (std::size_t k = 0; k < slots; ++k) equal = equal && same(state[k][i], expect_state[k][i]);
    if (with_out) equal = equal && same(out[i], expect_out[i]);
    if (!equal && differ++ == 0) first = i;
  }
  CAPTURE(first);
  if (differ != 0) {
    std::printf("element %zu: value %08x, element loop %08x (grad %08x)", first, unsigned(bits(values[first])),
                unsigned(bits(expect_values[first])), unsigned(bits(static_cast<float>(grads[first]))));
    for (std::size_t k = 0; k < slots; ++k)
      std::printf(", state %zu: %08x vs %08x", k, unsigned(bits(state[k][first])), unsigned(bits(expect_state[k][first])));
    std::printf("\n");
  }
  CHECK_MESSAGE(differ == 0, differ << " of " << n << " elements differ from the element loop");
}

template <class Rule, class Value, class Accum, class Param>
void check_steps(const typename Rule::hyperparameters& h, const std::string& what) {
  for (std::uint64_t step : {1u, 2u, 7u})
    for (bool with_out : {false, true}) {
      check<Rule, Value, Accum, Param>(h, step, false, with_out, what);
      if constexpr (std::is_same_v<Value, zero::bf16>) check<Rule, Value, Accum, Param>(h, step, true, with_out, what);
    }
}

template <class Value, class Accum, class Param>
void check_every_rule() {
  check_steps<zero::adamw, Value, Accum, Param>({}, "adamw");
  check_steps<zero::adamw, Value, Accum, Param>({.lr = 3e-3, .weight_decay = 0.1, .amsgrad = true, .maximize = true},
                                                "adamw amsgrad maximize");
  check_steps<zero::adam, Value, Accum, Param>({.eps = 1e-3, .weight_decay = 0.01}, "adam l2");
  check_steps<zero::adam, Value, Accum, Param>({.amsgrad = true}, "adam amsgrad");
  check_steps<zero::sgd, Value, Accum, Param>({.lr = 0.1}, "sgd");
  check_steps<zero::sgd, Value, Accum, Param>({.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .weight_decay = 1e-4},
                                              "sgd momentum dampening");
  check_steps<zero::sgd, Value, Accum, Param>({.lr = 0.1, .momentum = 0.9, .nesterov = true, .maximize = true},
                                              "sgd nesterov maximize");
  check_steps<zero::lion, Value, Accum, Param>({.weight_decay = 0.1}, "lion");
  check_steps<zero::adagrad, Value, Accum, Param>({.lr_decay = 0.01, .weight_decay = 0.01, .initial_accumulator_value = 0.1},
                                                  "adagrad");
}

//! Exits 77 (CTest: skipped) with the reason where this build's vectors need AVX and the CPU has
//! none.
void skip_without_avx() {
#if defined(ZERO_LANES_NEED_AVX)
  if (!__builtin_cpu_supports("avx")) {
    std::puts("skipped: this CPU has no AVX (the 8-lane build needs it)");
    std::exit(77);
  }
#endif
}

//! Runs the host update on `isa` for the rest of the test case, or exits 77 (skipped) saying why
//! it cannot.
void use_isa(zero::detail::host_isa isa) {
  skip_without_avx();
  if (!zero::detail::set_host_isa(isa)) {
#if defined(ZERO_HOST_AVX2_DISPATCH)
    std::printf("skipped: this CPU has no %s\n", isa == zero::detail::host_isa::avx2 ? "AVX2" : "AVX-512 F, BW and VL");
#else
    std::puts("skipped: this build does not choose AVX2 or AVX-512 at run time (GCC, optimized, a target without AVX)");
#endif
    std::exit(77);
  }
  REQUIRE(zero::detail::current_host_isa() == isa);
}

void check_fp32_values() {
  check_every_rule<float, float, float>();
  check_every_rule<float, float, zero::bf16>();
  check_every_rule<float, float, zero::fp16>();
}

void check_bf16_values() {
  check_every_rule<zero::bf16, float, zero::bf16>();
  check_every_rule<float, zero::bf16, zero::bf16>();
}

// The update's sum of squares over n elements cut into runs at `cuts` (element k numbered
// first + k, as the engine numbers a shard's elements).
double norm_with_cuts(const std::vector<float>& grads, const std::vector<std::size_t>& cuts, std::uint64_t first) {
  const std::size_t n = grads.size();
  std::vector<float> values(n, 0.5f), m(n, 0.0f), v(n, 0.0f);
  const zero::adamw::hyperparameters h;
  const auto c = zero::adamw::prepare(h, 1);
  const zero::detail::value_rounding<float> round{};
  zero::detail::square_lanes squares;
  std::size_t at = 0;
  for (std::size_t k = 0; k <= cuts.size(); ++k) {
    const std::size_t cut = k < cuts.size() ? cuts[k] : n;
    float* slots[2] = {m.data() + at, v.data() + at};
    zero::detail::update_elements<zero::adamw>(c, values.data() + at, grads.data() + at, slots, 2, static_cast<float*>(nullptr), cut - at,
                                               1.0f, round, first + at, &squares);
    at = cut;
  }
  return squares.total();
}

void check_norm_cuts() {
  constexpr std::size_t n = 3 * 1024 + 45;
  std::vector<float> grads(n);
  std::uint64_t x = 99;
  for (auto& g : grads) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    g = static_cast<float>(static_cast<std::int64_t>(x >> 40) - (1 << 23)) * 0x1.0p-20f;
  }
  double exact = 0;  // in lanes of the element numbers mod 8, each in order
  for (std::uint64_t first : {0u, 3u, 13u}) {
    double lanes[8] = {};
    for (std::size_t i = 0; i < n; ++i) lanes[(first + i) % 8] += static_cast<double>(grads[i]) * grads[i];
    exact = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    CAPTURE(first);
    CHECK(norm_with_cuts(grads, {}, first) == exact);
    CHECK(norm_with_cuts(grads, {1, 2, 9, 1024, 1031, 2050}, first) == exact);
    CHECK(norm_with_cuts(grads, {5, 777, 1500, 1501, 3000}, first) == exact);
  }
}

// A conversion into floats long enough to be streamed past the caches gives, bit for bit, the
// element-by-element conversion: every bf16 or fp16 pattern (NaNs, infinities, subnormals),
// into destinations at every float offset from a cache line, with a tail.
template <class From>
void check_streamed_conversion() {
  const std::size_t n = zero::detail::streaming_threshold + 37;
  std::vector<From> from(n);
  for (std::size_t i = 0; i < n; ++i) from[i] = From::from_bits(static_cast<std::uint16_t>(i * 40503u + (i >> 16)));
  std::vector<float> expected(n);
  for (std::size_t i = 0; i < n; ++i) expected[i] = zero::convert<float>(from[i]);
  std::vector<float> to(n + 16);
  for (std::size_t offset : {0u, 1u, 5u, 15u}) {
    CAPTURE(offset);
    std::fill(to.begin(), to.end(), -7.0f);
    zero::detail::run_pass<zero::detail::convert_pass>(to.data() + offset, from.data(), n);
    CHECK(std::memcmp(to.data() + offset, expected.data(), n * sizeof(float)) == 0);
    CHECK(to[offset + n] == -7.0f);  // nothing past the end
    if (offset != 0) CHECK(to[offset - 1] == -7.0f);
  }
}

void check_streamed_conversions() {
  check_streamed_conversion<zero::bf16>();
  check_streamed_conversion<zero::fp16>();
}

//! Runs `check` on the baseline, then on every instruction set the machine and build choose from.
void on_every_isa(void (*check)()) {
  use_isa(zero::detail::host_isa::baseline);
  check();
  for (auto isa : {zero::detail::host_isa::avx2, zero::detail::host_isa::avx512})
    if (zero::detail::host_isa_available(isa)) {
      use_isa(isa);
      check();
    }
}

}  // namespace

TEST_SUITE("unit") {
  TEST_CASE("host vectors (" ZERO_LANES_NAME "): the update's norm does not depend on where its runs are cut") {
    on_every_isa(check_norm_cuts);
  }
  TEST_CASE("host conversions (" ZERO_LANES_NAME "): streamed into floats they give the element loop's bits") {
    on_every_isa(check_streamed_conversions);
  }
  TEST_CASE("host vectors (" ZERO_LANES_NAME ") give the element loop's bits: fp32 values") {
    use_isa(zero::detail::host_isa::baseline);
    MESSAGE(ZERO_LANES_NAME ": " << zero::lanes << " lanes");
    check_fp32_values();
  }
  TEST_CASE("host vectors (" ZERO_LANES_NAME ") give the element loop's bits: bf16 values and gradients") {
    use_isa(zero::detail::host_isa::baseline);
    check_bf16_values();
  }
  TEST_CASE("host vectors (" ZERO_LANES_NAME ") chosen at run time: AVX2 gives the element loop's bits") {
    use_isa(zero::detail::host_isa::avx2);
    check_fp32_values();
    check_bf16_values();
  }
  TEST_CASE("host vectors (" ZERO_LANES_NAME ") chosen at run time: AVX-512 gives the element loop's bits") {
    use_isa(zero::detail::host_isa::avx512);
    check_fp32_values();
    check_bf16_values();
  }
}

#else
TEST_SUITE("unit") {
  TEST_CASE("host vectors (" ZERO_LANES_NAME ") give the element loop's bits: fp32 values") {
    std::puts("skipped: this target has no host vectors (zero::float_lanes: x86 with GCC or Clang)");
    std::exit(77);
  }
}
#endif
