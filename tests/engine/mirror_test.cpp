// The device tests' runner (mirror.hpp) on host memory against the harness: bitwise equal for
// every kind of configuration tests/cuda/engine_test.cu runs on the GPU, so that a failure
// there is the device's and not the runner's; and the dynamic loss-scaling schedule it runs
// does overflow, rescale and name the injected values.
#include <doctest/doctest.h>

#include "engine/harness.hpp"
#include "engine/mirror.hpp"

namespace {

template <class Engine>
void check_mirror(const harness::run_options& o, const typename Engine::hyperparameters_type& h) {
  const auto expected = harness::run<Engine>(o, h);
  const auto mirrored = mirror::train_group<Engine, mirror::host_memory>(o, mirror::options_with<Engine>(h));
  for (int r = 0; r < o.world; ++r) {
    CAPTURE(r);
    const auto& record = mirrored[static_cast<std::size_t>(r)];
    CHECK(record.params == expected.params[static_cast<std::size_t>(r)]);
    CHECK(record.memory_as_expected);
    CHECK(record.reports.size() == static_cast<std::size_t>(o.steps));
  }
}

template <zero::stage S, class Precision, class Rule = zero::adamw, class Partitioner = zero::contiguous_partitioner>
using engine = zero::optimizer<S, Precision, Rule, Partitioner>;

template <class Rule>
void check_rule() {
  const auto h = harness::rule_hyperparameters<Rule>();
  for (const auto& o : mirror::rule_runs(0)) {
    CAPTURE(o.world);
    check_mirror<engine<zero::stage0, zero::fp32_precision, Rule, zero::bucketed_partitioner>>(o, h);
    check_mirror<engine<zero::stage2, zero::bf16_mixed, Rule, zero::bucketed_partitioner>>(o, h);
  }
  for (const auto& o : mirror::rule_runs(1024)) {
    CAPTURE(o.world);
    check_mirror<engine<zero::stage2, zero::fp16_mixed, Rule, zero::bucketed_partitioner>>(o, h);
  }
}

}  // namespace

TEST_SUITE("equivalence") {
  TEST_CASE("the device tests' runner on host memory equals the harness bitwise / AdamW layouts") {
    for (const auto& o : mirror::adamw_runs()) {
      CAPTURE(o.world);
      CAPTURE(o.bucket_elements);
      CAPTURE(o.staging_buffers);
      const auto h = harness::adamw_hyperparameters();
      check_mirror<engine<zero::stage0, zero::fp32_precision>>(o, h);
      check_mirror<engine<zero::stage1, zero::fp32_precision>>(o, h);
      check_mirror<engine<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>>(o, h);
      check_mirror<engine<zero::stage2, zero::bf16_mixed>>(o, h);
    }
  }

  TEST_CASE_TEMPLATE("the device tests' runner on host memory equals the harness bitwise / rules", Rule, zero::adam, zero::sgd,
                     zero::lion, zero::adagrad) {
    check_rule<Rule>();
  }

  TEST_CASE("the device tests' runner on host memory equals the harness bitwise / accumulation clipping LAMB stochastic rounding") {
    const auto h = harness::adamw_hyperparameters();
    for (const auto& o : mirror::accumulation_runs()) {
      CAPTURE(o.defer_reduction);
      CAPTURE(o.shared_weight);
      check_mirror<engine<zero::stage2, zero::fp32_precision>>(o, h);
      check_mirror<engine<zero::stage1, zero::bf16_mixed>>(o, h);
    }
    harness::run_options o;
    o.world = 3;
    o.bucket_elements = 61;
    o.max_grad_norm = 0.5;
    check_mirror<engine<zero::stage2, zero::fp32_precision>>(o, h);
    o.max_grad_norm = 0;
    o.bucket_elements = 37;
    o.stochastic_rounding = true;
    check_mirror<engine<zero::stage2, zero::bf16_pure>>(o, h);
    o.stochastic_rounding = false;
    zero::lamb::hyperparameters lamb;
    lamb.lr = 5e-3;
    o.alignment = 1;
    o.bucket_elements = 64;
    check_mirror<engine<zero::stage2, zero::fp32_precision, zero::lamb>>(o, lamb);
    check_mirror<engine<zero::stage2, zero::bf16_mixed, zero::lamb>>(o, lamb);
  }

  TEST_CASE("the device tests' runner on host memory resumes from a checkpoint bitwise") {
    harness::run_options o;
    o.world = 3;
    o.steps = 10;
    o.bucket_elements = 37;
    const auto h = harness::adamw_hyperparameters();
    using sharded = engine<zero::stage2, zero::bf16_mixed>;
    using whole = engine<zero::stage0, zero::bf16_pure>;
    const auto expected = harness::run<sharded>(o, h);
    const auto resumed = mirror::train_resumed<sharded, mirror::host_memory, sharded, mirror::host_memory>(
        o, 5, mirror::options_with<sharded>(h), mirror::options_with<sharded>(h));
    o.world = 2;
    const auto expected_whole = harness::run<whole>(o, h);
    const auto resumed_whole = mirror::train_resumed<whole, mirror::host_memory, whole, mirror::host_memory>(
        o, 5, mirror::options_with<whole>(h), mirror::options_with<whole>(h));
    for (std::size_t r = 0; r < 3; ++r) {
      CHECK(resumed[r].params == expected.params[r]);
      CHECK(resumed[r].reports.size() == 5);
    }
    for (std::size_t r = 0; r < 2; ++r) CHECK(resumed_whole[r].params == expected_whole.params[r]);
  }

  TEST_CASE("the device tests' dynamic loss-scaling schedule overflows rescales and names the injected values") {
    using E = engine<zero::stage2, zero::fp16_mixed>;
    const auto o = mirror::dynamic_scaling_run();
    const auto records =
        mirror::train_group<E, mirror::host_memory>(o, mirror::dynamic_scaling_options<E>(), mirror::dynamic_scaling_schedule());
    for (const auto& r : records) {  // every rank reports the same steps
      REQUIRE(r.reports.size() == records[0].reports.size());
      for (std::size_t t = 0; t < r.reports.size(); ++t) {
        CHECK(r.reports[t].skipped == records[0].reports[t].skipped);
        CHECK(r.reports[t].loss_scale == records[0].reports[t].loss_scale);
      }
    }
    const auto& reports = records[0].reports;
    // the scale alone overflows at first (2^17 times gradients near 1 exceed fp16's 65504)
    CHECK(reports[0].skipped);
    CHECK(reports[0].loss_scale == 131072.0);
    // it falls, and grows back after a window of clean steps
    bool fell = false, rose = false;
    for (std::size_t t = 1; t < reports.size(); ++t) {
      fell = fell || reports[t].loss_scale < reports[t - 1].loss_scale;
      rose = rose || reports[t].loss_scale > reports[t - 1].loss_scale;
    }
    CHECK(fell);
    CHECK(rose);
    std::size_t clean = 0;
    for (const auto& r : reports) clean += !r.skipped;
    CHECK(clean >= reports.size() / 2);
    // each injected value skips its step and is named (rank, parameter)
    for (const auto& x : mirror::dynamic_scaling_schedule().poisons) {
      CAPTURE(x.step);
      const auto& r = reports[static_cast<std::size_t>(x.step)];
      CHECK(r.skipped);
      CHECK(r.nonfinite_rank == x.rank);
      CHECK(r.nonfinite_parameter == x.param);
    }
  }
}
