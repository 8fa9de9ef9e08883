// The device kernels against the host code they mirror, on fresh random inputs with the outputs
// poisoned (NaN-filled) before each run:
//  * the fused update of every element-wise rule: values, state and model-precision copies
//    bitwise equal to the host's fused update (detail::update_elements) in fp32, over segments
//    that are vectorized, misaligned (element by element), ragged, empty, and longer than a
//    chunk; bf16 master-less values with stochastic rounding; the factor read from the device;
//    the skip flag; the fused sum of squares within double rounding of the host's;
//  * fill, convert_copy and convert_add bitwise equal to convert<> and the engine's accumulation;
//    flag_nonfinite equal to detail::any_nonfinite, note_first_nonfinite naming the first range
//    that holds one; the norm over the update's segments alone equal bit for bit to the fused
//    norm; the CUB sum of squares within double rounding of detail::sum_of_squares; none of
//    them allocating.
// Needs a GPU: without one the test main exits 77 (skipped).

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#define ZERO_DETAIL_INCLUDE_ALLOWED
#include "zero/detail/host_update.hpp"
#undef ZERO_DETAIL_INCLUDE_ALLOWED

#include "device_fixture.hpp"
#include "zero/cuda/fused_update.cuh"
#include "zero/cuda/kernels.cuh"
#include "zero/update_rule.hpp"

namespace {

using namespace zero_test;
using zero::bf16;
using zero::fp16;

// ---- the fused update ------------------------------------------------------------------------

//! Where each segment lies in the flat test arrays (also its state offset, as in the engine).
struct segment_layout {
  std::size_t offset, count;
  bool with_out;
};

//! Vectorized and crossing a chunk (8192) with a ragged end; misaligned by 3 elements (element
//! by element); empty; aligned without an output; tiny; aligned and two chunks long.
const std::vector<segment_layout> layouts = {
    {0, 10000, true}, {10003, 777, true}, {11000, 0, true}, {12000, 20000, false}, {40000, 5, true}, {40008, 16384, true}};
constexpr std::size_t total = 40008 + 16384 + 8;

template <class Rule, class Value, class Accum, class Param>
void check_update(const typename Rule::hyperparameters& h, bool stochastic, const std::string& name,
                  bool factor_on_device = false) {
  CAPTURE(name);
  const std::size_t state_count = Rule::state_count(h);
  std::vector<Value> values = random_vector<Value>(total, 1);
  std::vector<float> state(total * state_count);
  for (std::size_t k = 0; k < state_count; ++k) {
    // slot 0 is a signed momentum for adam, sgd and lion; sums of squares are non-negative
    const bool nonnegative = k > 0 || Rule::name == std::string_view("adagrad");
    const auto slot = random_vector<float>(total, 10 + k, nonnegative);
    std::copy(slot.begin(), slot.end(), state.begin() + static_cast<std::ptrdiff_t>(k * total));
  }
  std::vector<Param> out(total, poison<Param>());

  device_vector<Value> d_values(values);
  device_vector<float> d_state(state);
  device_vector<Param> d_out(total);
  device_vector<Accum> d_grads(total);
  device_vector<double> d_norm(1), d_norm_alone(1);
  device_vector<float> d_factor(1);

  std::vector<zero::cuda::update_segment<Value, Accum, Param>> segments;
  for (const auto& l : layouts)
    segments.push_back({d_values.data() + l.offset, d_grads.data() + l.offset, l.offset,
                        l.with_out ? d_out.data() + l.offset : nullptr, l.count});
  zero::cuda::fused_update<Rule, Value, Accum, Param> update(segments, d_state.data(), total, state_count);
  CHECK(update.elements() == 10000 + 777 + 20000 + 5 + 16384);
  CHECK(update.vectorized_elements() == (state_count <= 3 ? 10000 + 20000 + 5 + 16384 : 0));
  CHECK(update.segments() == 5);

  const std::uint64_t first_id = 1000;
  for (std::uint64_t step = 1; step <= 3; ++step) {
    CAPTURE(step);
    const auto grads = random_vector<Accum>(total, 100 + step);
    const float factor = 0.75f + 0.125f * static_cast<float>(step);
    const auto constants = Rule::prepare(h, step);
    const zero::detail::value_rounding<Value> rounding{stochastic, 0x5eed, step};

    // host: the engine's fused update, segment by segment
    double host_norm = 0;
    for (const auto& l : layouts) {
      float* slots[8] = {};
      for (std::size_t k = 0; k < state_count; ++k) slots[k] = state.data() + k * total + l.offset;
      host_norm += zero::detail::update_elements<Rule>(constants, values.data() + l.offset, grads.data() + l.offset, slots,
                                                       state_count, l.with_out ? out.data() + l.offset : nullptr, l.count,
                                                       factor, rounding, first_id + l.offset, true);
    }

    // device: the same inputs, outputs poisoned
    d_grads.upload(grads);
    d_out.poison_all();
    d_norm.poison_all();
    zero::cuda::update_controls controls;
    controls.sum_of_squares = d_norm.data();
    if (factor_on_device) {
      d_factor.upload({factor});
      controls.factor = 123.0f;  // ignored: the device's value wins
      controls.device_factor = d_factor.data();
    } else {
      controls.factor = factor;
    }
    d_norm_alone.poison_all();
    const auto before = zero::cuda::allocated();
    update.sum_of_squares(d_norm_alone.data(), nullptr);  // the norm alone (before the update: same gradients)
    update(constants, controls, rounding, first_id, nullptr);
    CHECK(zero::cuda::allocated().allocations == before.allocations);
    wait_device();

    check_bitwise(d_values.download(), values, name + ": values");
    check_bitwise(d_state.download(), state, name + ": state");
    check_bitwise(d_out.download(), out, name + ": model-precision copies (untouched positions stay poisoned)");
    const double device_norm = d_norm.download()[0];
    CHECK(device_norm == doctest::Approx(host_norm).epsilon(1e-12));
    check_bitwise(d_norm_alone.download(), std::vector<double>{device_norm}, name + ": the norm alone equals the fused norm");
  }
}

}  // namespace

TEST_SUITE("cuda") {
  TEST_CASE("fused update: every element-wise rule bitwise equal to the host in fp32") {
    zero::adamw::hyperparameters adamw;
    adamw.lr = 1e-2;
    check_update<zero::adamw, float, float, float>(adamw, false, "adamw");
    adamw.amsgrad = true;
    check_update<zero::adamw, float, float, float>(adamw, false, "adamw amsgrad");
    adamw.amsgrad = false;
    adamw.maximize = true;
    check_update<zero::adamw, float, float, float>(adamw, false, "adamw maximize", true);

    zero::adam::hyperparameters adam;
    adam.weight_decay = 0.1;
    adam.amsgrad = true;
    check_update<zero::adam, float, float, float>(adam, false, "adam L2 amsgrad");

    zero::sgd::hyperparameters sgd;
    sgd.lr = 0.1;
    sgd.momentum = 0.9;
    sgd.nesterov = true;
    sgd.weight_decay = 1e-3;
    check_update<zero::sgd, float, float, float>(sgd, false, "sgd nesterov");
    sgd.nesterov = false;
    sgd.dampening = 0.25;
    check_update<zero::sgd, float, float, float>(sgd, false, "sgd dampening");
    sgd.momentum = 0;
    sgd.dampening = 0;
    check_update<zero::sgd, float, float, float>(sgd, false, "sgd without state");

    zero::lion::hyperparameters lion;
    lion.weight_decay = 0.1;
    check_update<zero::lion, float, float, float>(lion, false, "lion");

    zero::adagrad::hyperparameters adagrad;
    adagrad.lr_decay = 0.01;
    adagrad.weight_decay = 0.05;
    check_update<zero::adagrad, float, float, float>(adagrad, false, "adagrad");
  }

  TEST_CASE("fused update: mixed precisions bitwise equal to the host") {
    zero::adamw::hyperparameters adamw;
    check_update<zero::adamw, float, float, bf16>(adamw, false, "adamw bf16 params, fp32 master and grads");
    check_update<zero::adamw, float, bf16, bf16>(adamw, false, "adamw bf16 params and grads, fp32 master");
    check_update<zero::adamw, bf16, float, bf16>(adamw, true, "adamw bf16 without master, stochastic rounding");
    check_update<zero::adamw, float, float, fp16>(adamw, false, "adamw fp16 params, fp32 master", true);
  }

  TEST_CASE("fused update: a set skip flag changes nothing") {
    const std::size_t n = 5000;
    device_vector<float> values(random_vector<float>(n, 1)), grads(random_vector<float>(n, 2)),
        state(random_vector<float>(2 * n, 3, true));
    device_vector<bf16> out(n);
    out.poison_all();
    device_vector<std::uint32_t> skip(std::vector<std::uint32_t>{1});
    device_vector<double> norm(std::vector<double>{-1.0});
    const std::vector<zero::cuda::update_segment<float, float, bf16>> segments = {
        {values.data(), grads.data(), 0, out.data(), n}};
    zero::cuda::fused_update<zero::adamw, float, float, bf16> update(segments, state.data(), n, 2);
    const auto v0 = values.download();
    const auto s0 = state.download();
    zero::cuda::update_controls controls;
    controls.skip = skip.data();
    controls.sum_of_squares = norm.data();
    update(zero::adamw::prepare({}, 1), controls, {}, 0, nullptr);
    wait_device();
    check_bitwise(values.download(), v0, "values");
    check_bitwise(state.download(), s0, "state");
    check_bitwise(out.download(), std::vector<bf16>(n, poison<bf16>()), "out");
    CHECK(norm.download()[0] == -1.0);
    // cleared: the same launch updates
    skip.upload({0});
    update(zero::adamw::prepare({}, 1), controls, {}, 0, nullptr);
    wait_device();
    CHECK(first_difference(values.download(), v0) >= 0);
    CHECK(norm.download()[0] > 0);
  }

  TEST_CASE("fused update: refuses more than 8 state slots and null segments") {
    device_vector<float> v(16);
    const std::vector<zero::cuda::update_segment<float, float, float>> bad = {{nullptr, v.data(), 0, nullptr, 16}};
    CHECK_THROWS_AS((zero::cuda::fused_update<zero::adamw, float, float, float>(bad, v.data(), 16, 2)), zero::usage_error);
    const std::vector<zero::cuda::update_segment<float, float, float>> good = {{v.data(), v.data(), 0, nullptr, 16}};
    CHECK_THROWS_AS((zero::cuda::fused_update<zero::adamw, float, float, float>(good, v.data(), 16, 9)), zero::usage_error);
    // nothing to update: no launch; a requested norm is 0
    zero::cuda::fused_update<zero::adamw, float, float, float> empty(
        std::span<const zero::cuda::update_segment<float, float, float>>{}, nullptr, 0, 2);
    device_vector<double> norm(std::vector<double>{-1.0});
    zero::cuda::update_controls controls;
    controls.sum_of_squares = norm.data();
    empty(zero::adamw::prepare({}, 1), controls, {}, 0, nullptr);
    wait_device();
    CHECK(norm.download()[0] == 0.0);
  }

  // ---- element-wise kernels ---------------------------------------------------------------

  TEST_CASE("fill at aligned and misaligned addresses") {
    device_vector<float> f(1003);
    f.poison_all();
    zero::cuda::fill(f.data() + 1, 1001, 2.5f, nullptr);
    device_vector<bf16> b(1003);
    b.poison_all();
    zero::cuda::fill(b.data(), 1003, bf16(-0.5f), nullptr);
    wait_device();
    std::vector<float> ef(1003, 2.5f);
    ef[0] = ef[1002] = poison<float>();
    check_bitwise(f.download(), ef, "fill fp32");
    check_bitwise(b.download(), std::vector<bf16>(1003, bf16(-0.5f)), "fill bf16");
  }

  TEST_CASE("convert_copy and convert_add bitwise equal to the host with special values") {
    const std::size_t n = 4099;
    auto source = random_vector<float>(n, 7);
    const float specials[] = {0.0f, -0.0f, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                              std::numeric_limits<float>::quiet_NaN(), 1e-40f, -3e-39f, 65504.0f, 65520.0f, 3.4e38f,
                              5.96e-8f, 1.0f + 1.0f / 256};
    for (std::size_t k = 0; k < std::size(specials); ++k) source[k * 331] = specials[k];
    device_vector<float> d_source(source);
    for (std::size_t shift : {std::size_t{0}, std::size_t{1}}) {  // vectorized, then element by element
      CAPTURE(shift);
      const std::size_t m = n - shift;
      device_vector<bf16> to_bf16(n);
      device_vector<fp16> to_fp16(n);
      to_bf16.poison_all();
      to_fp16.poison_all();
      zero::cuda::convert_copy(to_bf16.data() + shift, d_source.data(), m, nullptr);
      zero::cuda::convert_copy(to_fp16.data() + shift, d_source.data(), m, nullptr);
      wait_device();
      std::vector<bf16> eb(n, poison<bf16>());
      std::vector<fp16> eh(n, poison<fp16>());
      for (std::size_t i = 0; i < m; ++i) {
        eb[i + shift] = zero::convert<bf16>(source[i]);
        eh[i + shift] = zero::convert<fp16>(source[i]);
      }
      check_bitwise(to_bf16.download(), eb, "fp32 -> bf16");
      check_bitwise(to_fp16.download(), eh, "fp32 -> fp16");
      // back to float, and across 16-bit types
      device_vector<float> back(n);
      device_vector<bf16> across(n);
      back.poison_all();
      across.poison_all();
      zero::cuda::convert_copy(back.data(), to_bf16.data() + shift, m, nullptr);
      zero::cuda::convert_copy(across.data(), to_fp16.data() + shift, m, nullptr);
      wait_device();
      std::vector<float> ef(n, poison<float>());
      std::vector<bf16> ea(n, poison<bf16>());
      for (std::size_t i = 0; i < m; ++i) {
        ef[i] = zero::convert<float>(eb[i + shift]);
        ea[i] = zero::convert<bf16>(eh[i + shift]);
      }
      check_bitwise(back.download(), ef, "bf16 -> fp32");
      check_bitwise(across.download(), ea, "fp16 -> bf16");
    }
    // accumulation: to = To(float(to) + float(from))
    const auto acc32 = random_vector<float>(n, 8);
    const auto add16 = random_vector<bf16>(n, 9);
    const auto acc16 = random_vector<bf16>(n, 10);
    device_vector<float> d_acc32(acc32);
    device_vector<bf16> d_add16(add16), d_acc16(acc16);
    zero::cuda::convert_add(d_acc32.data(), d_add16.data(), n, nullptr);
    zero::cuda::convert_add(d_acc16.data() + 1, d_source.data(), n - 1, nullptr);
    wait_device();
    std::vector<float> e32 = acc32;
    std::vector<bf16> e16 = acc16;
    for (std::size_t i = 0; i < n; ++i) e32[i] = zero::convert<float>(static_cast<float>(e32[i]) + static_cast<float>(add16[i]));
    for (std::size_t i = 0; i + 1 < n; ++i)
      e16[i + 1] = zero::convert<bf16>(static_cast<float>(e16[i + 1]) + static_cast<float>(source[i]));
    check_bitwise(d_acc32.download(), e32, "fp32 += bf16");
    check_bitwise(d_acc16.download(), e16, "bf16 += fp32 (misaligned)");
  }

  TEST_CASE("flag_nonfinite agrees with the host's check wherever the bad value is") {
    const std::size_t n = 10007;
    const auto clean = random_vector<float>(n, 11);
    device_vector<float> data(clean);
    device_vector<std::uint32_t> flag(std::vector<std::uint32_t>{0});
    zero::cuda::flag_nonfinite(data.data(), n, flag.data(), nullptr);
    zero::cuda::flag_nonfinite(data.data() + 1, n - 1, flag.data(), nullptr);
    wait_device();
    CHECK(flag.download()[0] == 0);
    CHECK_FALSE(zero::detail::any_nonfinite(clean.data(), n));
    for (std::size_t at : {std::size_t{0}, std::size_t{4096}, n - 3, n - 1}) {
      for (float bad : {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
        CAPTURE(at);
        auto dirty = clean;
        dirty[at] = bad;
        data.upload(dirty);
        flag.upload({0});
        zero::cuda::flag_nonfinite(data.data(), n, flag.data(), nullptr);
        wait_device();
        CHECK(flag.download()[0] == 1);
        CHECK(zero::detail::any_nonfinite(dirty.data(), n));
      }
    }
    // bf16, and a flag that collects two ranges (set by the second)
    auto b = random_vector<bf16>(n, 12);
    b[n - 2] = bf16::from_bits(0x7f80);  // +inf
    device_vector<bf16> db(b);
    flag.upload({0});
    zero::cuda::flag_nonfinite(db.data(), n / 2, flag.data(), nullptr);
    wait_device();
    CHECK(flag.download()[0] == 0);
    zero::cuda::flag_nonfinite(db.data() + n / 2, n - n / 2, flag.data(), nullptr);
    wait_device();
    CHECK(flag.download()[0] == 1);
    // the first check (in order) that found one: ranges 0 and 2 are clean, 1 and 3 are not
    device_vector<unsigned long long> first(std::vector<unsigned long long>{~0ull});
    auto mixed = clean;
    mixed[4000] = std::numeric_limits<float>::quiet_NaN();
    mixed[9000] = std::numeric_limits<float>::infinity();
    data.upload(mixed);
    const std::size_t bounds[] = {0, 3000, 6000, 8000, n};
    for (unsigned long long k = 4; k-- > 0;)  // launched in reverse: the minimum does not depend on timing
      zero::cuda::note_first_nonfinite(data.data() + bounds[k], bounds[k + 1] - bounds[k], k, first.data(), nullptr);
    wait_device();
    CHECK(first.download()[0] == 1);
  }

  TEST_CASE("sum of squares (CUB) within double rounding of the host's and allocating nothing") {
    const std::size_t n = 1000003;
    const auto g32 = random_vector<float>(n, 13);
    const auto g16 = random_vector<bf16>(n, 14);
    device_vector<float> d32(g32);
    device_vector<bf16> d16(g16);
    device_vector<double> result(2);
    result.poison_all();
    zero::cuda::sum_of_squares_reducer<float> r32(n);
    zero::cuda::sum_of_squares_reducer<bf16> r16(n);
    CHECK(r32.bytes() > 0);
    const auto before = zero::cuda::allocated();
    r32(d32.data(), n, result.data(), nullptr);
    r16(d16.data() + 1, n - 1, result.data() + 1, nullptr);
    CHECK(zero::cuda::allocated().allocations == before.allocations);
    wait_device();
    const auto sums = result.download();
    CHECK(sums[0] == doctest::Approx(zero::detail::sum_of_squares(g32.data(), n)).epsilon(1e-12));
    CHECK(sums[1] == doctest::Approx(zero::detail::sum_of_squares(g16.data() + 1, n - 1)).epsilon(1e-12));
    CHECK_THROWS_AS(r32(d32.data(), n + 1, result.data(), nullptr), zero::usage_error);
  }
}
