// Non-finite gradients, loss scaling and stochastic rounding: every rank skips an overflowing
// step together with its state bitwise unchanged and the culprit named; the loss scale follows
// DeepSpeed's trajectory; an overflow at the minimum scale raises; stochastic rounding moves bf16
// parameters by updates far below half an ulp.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "zero/zero.hpp"

namespace {

// DeepSpeed's DynamicLossScaler.update_scale, transcribed as plainly as possible: the reference
// the engine's scaler is compared with.
struct deepspeed_scaler {
  double cur_scale, min_scale;
  int cur_iter = 0, last_overflow_iter = -1, scale_window, delayed_shift, cur_hysteresis;
  bool raised = false;
  deepspeed_scaler(int power, int window, int hysteresis, double min)
      : cur_scale(std::ldexp(1.0, power)), min_scale(min), scale_window(window), delayed_shift(hysteresis),
        cur_hysteresis(hysteresis) {}
  void update(bool overflow) {
    if (overflow) {
      if (delayed_shift == 1 || cur_hysteresis == 1) {
        if (cur_scale == min_scale) {
          raised = true;
          return;
        }
        cur_scale = std::max(cur_scale / 2, min_scale);
      } else {
        cur_hysteresis -= 1;
      }
      last_overflow_iter = cur_iter;
    } else if ((cur_iter - last_overflow_iter) % scale_window == 0) {
      cur_hysteresis = delayed_shift;
      cur_scale *= 2;
    }
    cur_iter += 1;
  }
};

// A small model: three parameters per rank, gradients chosen per (step, rank).
template <class T>
struct model {
  std::vector<T> a = std::vector<T>(7, T(0.5f)), b = std::vector<T>(13, T(-0.25f)), c = std::vector<T>(2, T(1.0f));
  std::vector<zero::parameter<T>> params() {
    return {{"a", {a.data(), a.size()}}, {"b", {b.data(), b.size()}}, {"c", {c.data(), c.size()}}};
  }
  std::vector<T> all() const {
    std::vector<T> v(a);
    v.insert(v.end(), b.begin(), b.end());
    v.insert(v.end(), c.begin(), c.end());
    return v;
  }
};

template <class T>
bool bitwise_equal(const std::vector<T>& x, const std::vector<T>& y) {
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(T)) == 0;
}

// A step report kept after its optimizer is gone: the report's nonfinite_parameter_name views
// the optimizer's own copy of the name, so the name is copied here and the view cleared.
struct kept_report : zero::step_report {
  std::string parameter_name;
};

// Runs `steps` steps with `world` ranks; `poison(step, rank)` says which gradient element (of
// parameter b, element 3) to set to `bad` on that rank. Checks every skipped step leaves the
// state bitwise unchanged, and returns rank 0's reports.
template <zero::stage S, class Precision>
std::vector<kept_report> train(int world, int steps, typename zero::optimizer<S, Precision>::options_type options,
                               auto poison, float bad) {
  using O = zero::optimizer<S, Precision>;
  using T = typename O::param_type;
  std::vector<kept_report> reports;
  std::mutex lock;
  zero::thread_group group(world);
  group.run([&](zero::thread_communicator& comm) {
    model<T> m;
    O opt(comm, m.params(), options);
    for (int step = 0; step < steps; ++step) {
      const float scale = static_cast<float>(opt.loss_scale());
      std::vector<std::vector<T>> grads;
      for (std::size_t p = 0; p < 3; ++p) {
        const std::size_t n = p == 0 ? 7 : p == 1 ? 13 : 2;
        grads.emplace_back(n);
        for (std::size_t i = 0; i < n; ++i)
          grads[p][i] = T(scale * 0.01f * static_cast<float>((i + 1) * (static_cast<std::size_t>(comm.rank()) + 1)));
      }
      if (poison(step, comm.rank())) grads[1][3] = T(bad);
      const auto params_before = m.all();
      const std::vector<typename O::value_type> values_before(opt.values().begin(), opt.values().end());
      std::vector<std::vector<float>> state_before;
      for (std::size_t k = 0; k < opt.state_count(); ++k) state_before.emplace_back(opt.state(k).begin(), opt.state(k).end());
      const auto steps_before = opt.step_count();
      for (std::size_t p : {2u, 0u, 1u}) opt.gradient_ready(p, {grads[p].data(), grads[p].size()});
      zero::step_report report;
      try {
        report = opt.step();
      } catch (const zero::loss_scale_error&) {
        CHECK(bitwise_equal(m.all(), params_before));
        throw;
      }
      if (report.skipped) {
        CHECK(bitwise_equal(m.all(), params_before));
        CHECK(bitwise_equal(std::vector<typename O::value_type>(opt.values().begin(), opt.values().end()), values_before));
        for (std::size_t k = 0; k < opt.state_count(); ++k)
          CHECK(std::vector<float>(opt.state(k).begin(), opt.state(k).end()) == state_before[k]);
        CHECK(opt.step_count() == steps_before);
        CHECK(report.step == steps_before);
      } else {
        CHECK(report.step == steps_before + 1);
      }
      std::lock_guard guard(lock);
      if (comm.rank() == 0) {
        reports.push_back({report, std::string(report.nonfinite_parameter_name)});
        reports.back().nonfinite_parameter_name = {};
      }
    }
  });
  return reports;
}

template <zero::stage S>
void check_one_rank_overflow() {
  typename zero::optimizer<S, zero::fp16_mixed>::options_type options;
  options.loss_scale.initial_scale_power = 8;
  options.layout.bucket_elements = 8;
  const float inf = std::numeric_limits<float>::infinity();
  // step 1 clean; step 2 rank 1 overflows in parameter b; step 3 clean
  const auto reports = train<S, zero::fp16_mixed>(3, 3, options, [](int step, int rank) { return step == 1 && rank == 1; }, inf);
  REQUIRE(reports.size() == 3);
  CHECK(!reports[0].skipped);
  CHECK(reports[1].skipped);
  CHECK(reports[1].nonfinite_rank == 1);
  CHECK(reports[1].nonfinite_parameter == 1);
  CHECK(reports[1].parameter_name == "b");
  CHECK(reports[1].step == 1);
  CHECK(!reports[2].skipped);
  CHECK(reports[2].step == 2);
  // the first overflow uses up the hysteresis (2): the scale stays
  CHECK(reports[2].loss_scale == reports[1].loss_scale);
}

}  // namespace

TEST_SUITE("reliability") {
  TEST_CASE("overflow on one rank only: every rank skips with its state bitwise unchanged and the report names rank and parameter") {
    check_one_rank_overflow<zero::stage0>();
    check_one_rank_overflow<zero::stage1>();
    check_one_rank_overflow<zero::stage2>();
  }

  TEST_CASE("overflow on all ranks: NaN and infinity are both caught and the lowest rank is named") {
    zero::optimizer<zero::stage2, zero::fp16_mixed>::options_type options;
    options.loss_scale.initial_scale_power = 8;
    options.loss_scale.hysteresis = 1;
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
      const auto reports = train<zero::stage2, zero::fp16_mixed>(4, 2, options, [](int step, int) { return step == 0; }, bad);
      CHECK(reports[0].skipped);
      CHECK(reports[0].nonfinite_rank == 0);
      CHECK(reports[0].loss_scale == 256);
      CHECK(reports[1].loss_scale == 128);  // hysteresis 1: halved at once
      CHECK(!reports[1].skipped);
    }
  }

  TEST_CASE("no overflow: nothing is skipped and the scale doubles after each clean window") {
    zero::optimizer<zero::stage1, zero::fp16_mixed>::options_type options;
    options.loss_scale.initial_scale_power = 4;
    options.loss_scale.window = 3;
    const auto reports = train<zero::stage1, zero::fp16_mixed>(2, 7, options, [](int, int) { return false; }, 0);
    const double expected[] = {16, 16, 16, 32, 32, 32, 64};
    for (std::size_t i = 0; i < reports.size(); ++i) {
      CHECK(!reports[i].skipped);
      CHECK(reports[i].loss_scale == expected[i]);
    }
  }

  TEST_CASE("the loss-scale trajectory over a scripted sequence of overflows matches DeepSpeed's step by step") {
    const bool script[] = {false, true, false, true, true, false, false, false, false, true, true, true,
                           false, false, false, false, false, false, false, true, false, false, false, false};
    // the scaler alone, against the transcription of DeepSpeed's algorithm
    for (int hysteresis : {1, 2, 3}) {
      CAPTURE(hysteresis);
      zero::loss_scale_options o;
      o.kind = zero::loss_scale_options::mode::dynamic;
      o.initial_scale_power = 6;
      o.window = 4;
      o.hysteresis = static_cast<std::uint32_t>(hysteresis);
      o.min_scale = 0.5;
      zero::loss_scaler scaler(o, true);
      deepspeed_scaler reference(6, 4, hysteresis, 0.5);
      for (bool overflow : script) {
        CHECK(scaler.scale() == reference.cur_scale);
        scaler.update(overflow);
        reference.update(overflow);
      }
      CHECK(scaler.scale() == reference.cur_scale);
    }
    // through the engine: step i overflows on rank 1 when script[i]
    zero::optimizer<zero::stage2, zero::fp16_mixed>::options_type options;
    options.loss_scale.initial_scale_power = 6;
    options.loss_scale.window = 4;
    const auto reports = train<zero::stage2, zero::fp16_mixed>(
        2, static_cast<int>(std::size(script)), options, [&](int step, int rank) { return rank == 1 && script[step]; },
        std::numeric_limits<float>::infinity());
    deepspeed_scaler reference(6, 4, 2, 1.0);
    for (std::size_t i = 0; i < reports.size(); ++i) {
      CAPTURE(i);
      CHECK(reports[i].loss_scale == reference.cur_scale);
      CHECK(reports[i].skipped == script[i]);
      reference.update(script[i]);
    }
  }

  TEST_CASE("an overflow at the minimum loss scale raises a clear error and changes nothing") {
    zero::optimizer<zero::stage2, zero::fp16_mixed>::options_type options;
    options.loss_scale.initial_scale_power = 1;
    options.loss_scale.hysteresis = 1;
    options.loss_scale.min_scale = 1;
    CHECK_THROWS_WITH_AS(
        (train<zero::stage2, zero::fp16_mixed>(2, 3, options, [](int, int rank) { return rank == 0; },
                                               std::numeric_limits<float>::infinity())),
        doctest::Contains("minimum loss scale"), zero::loss_scale_error);
  }

  TEST_CASE("bf16 opts into the same skip / by default a NaN propagates as in plain data parallelism") {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    zero::optimizer<zero::stage2, zero::bf16_mixed>::options_type options;
    options.on_nonfinite = zero::nonfinite_policy::skip_step;
    auto reports = train<zero::stage2, zero::bf16_mixed>(3, 2, options, [](int step, int rank) { return step == 0 && rank == 2; }, nan);
    CHECK(reports[0].skipped);
    CHECK(reports[0].nonfinite_rank == 2);
    CHECK(reports[0].loss_scale == 1);
    CHECK(!reports[1].skipped);
    options.on_nonfinite = zero::nonfinite_policy::automatic;
    reports = train<zero::stage2, zero::bf16_mixed>(3, 1, options, [](int, int rank) { return rank == 2; }, nan);
    CHECK(!reports[0].skipped);
    CHECK(std::isnan(reports[0].grad_norm));
  }
}

TEST_SUITE("equivalence") {
  TEST_CASE("stochastic rounding moves bf16 parameters without master weights by updates far below half an ulp") {
    // SGD with lr * g = 1e-4 per step on parameters at 1.0, where half a bf16 ulp is 2^-8 ~ 3.9e-3
    constexpr std::size_t n = 20000;
    constexpr int steps = 100;
    auto run = [&](zero::rounding mode) {
      std::vector<zero::bf16> w(n, zero::bf16(1.0f)), g(n, zero::bf16(1.0f));
      zero::single_rank_communicator comm;
      using O = zero::optimizer<zero::stage2, zero::bf16_pure, zero::sgd, zero::contiguous_partitioner,
                                zero::single_rank_communicator>;
      O::options_type options;
      options.hyperparameters.lr = 1e-4;
      options.value_rounding = mode;
      options.seed = 12345;
      std::vector<zero::parameter<zero::bf16>> params{{"w", {w.data(), n}}};
      O opt(comm, params, options);
      for (int s = 0; s < steps; ++s) {
        opt.gradient_ready(0, {g.data(), n});
        opt.step();
      }
      double mean = 0;
      for (auto v : w) mean += static_cast<float>(v);
      return mean / n;
    };
    const double nearest = run(zero::rounding::nearest_even);
    const double stochastic = run(zero::rounding::stochastic);
    CHECK(nearest == 1.0);  // round to nearest never leaves 1.0
    // expected 1 - 100 * 1e-4 = 0.99; the standard deviation of the mean is about 1e-4
    MESSAGE("mean after " << steps << " steps: nearest " << nearest << ", stochastic " << stochastic << " (expected 0.99)");
    CHECK(stochastic == doctest::Approx(0.99).epsilon(5e-4));
    // and refuses a precision with master weights
    zero::single_rank_communicator comm;
    std::vector<zero::bf16> w(4, zero::bf16(1.0f));
    zero::optimizer<zero::stage2, zero::bf16_mixed, zero::adamw, zero::contiguous_partitioner, zero::single_rank_communicator>::options_type o;
    o.value_rounding = zero::rounding::stochastic;
    std::vector<zero::parameter<zero::bf16>> params{{"w", {w.data(), 4}}};
    CHECK_THROWS_WITH_AS((zero::optimizer<zero::stage2, zero::bf16_mixed, zero::adamw, zero::contiguous_partitioner,
                                          zero::single_rank_communicator>(comm, params, o)),
                         doctest::Contains("stochastic rounding needs"), zero::usage_error);
  }
}
