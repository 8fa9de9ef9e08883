// Stages 0, 1, 2 x both partitioners x world sizes 1, 2, 3, 4, 5, 8, fp32: equal (1e-6 relative)
// to plain data-parallel AdamW in double precision, bitwise reproducible, and stage 2 moving the
// same bytes as stage 0.
#include <doctest/doctest.h>

#include "engine/harness.hpp"

namespace {

constexpr int worlds[] = {1, 2, 3, 4, 5, 8};

using harness::fp32_run;

}  // namespace

TEST_SUITE("equivalence") {
  TEST_CASE_TEMPLATE("fp32 AdamW equals the double reference over 20 steps / all world sizes", C,
                     harness::stage0_contiguous<fp32_run>, harness::stage1_contiguous<fp32_run>,
                     harness::stage2_contiguous<fp32_run>, harness::stage0_bucketed<fp32_run>, harness::stage1_bucketed<fp32_run>,
                     harness::stage2_bucketed<fp32_run>) {
    using O = typename C::optimizer;
    for (int world : worlds) {
      // buckets: 1 element per rank slice, a prime, larger than the model
      for (std::size_t bucket : {std::size_t{1}, std::size_t{37}, std::size_t{1} << 20}) {
        CAPTURE(world);
        CAPTURE(bucket);
        harness::run_options o;
        o.world = world;
        o.bucket_elements = bucket;
        o.alignment = bucket == 1 ? 1 : 4;
        o.order_seed = 7 + static_cast<std::uint64_t>(world);
        const auto r = harness::run<O>(o, harness::adamw_hyperparameters());
        CHECK(r.max_value_error < 1e-6);
        CHECK(r.max_param_error < 1e-6);
        CHECK(r.param_rounding_mismatches == 0);
        CHECK(r.rank_disagreements == 0);
        // two runs of the same configuration agree bitwise, whatever the report order
        // and with the collectives pipelined through 2 or 3 staging buffers
        o.order_seed += 1000;
        o.staging_buffers = 2 + static_cast<std::size_t>(world % 2);
        const auto again = harness::run<O>(o, harness::adamw_hyperparameters());
        CHECK(again.params == r.params);
        CHECK(again.values == r.values);
        CHECK(again.memory.of(zero::memory_kind::buckets) == o.staging_buffers * r.memory.of(zero::memory_kind::buckets));
      }
    }
  }

  TEST_CASE_TEMPLATE("fp32 stage 2 moves the same bytes per step as stage 0", Partitioner, zero::contiguous_partitioner,
                     zero::bucketed_partitioner) {
    for (int world : worlds) {
      CAPTURE(world);
      harness::run_options o;
      o.world = world;
      o.steps = 1;
      o.bucket_elements = 64;
      const auto s0 = harness::run<zero::optimizer<zero::stage0, zero::fp32_precision, zero::adamw, Partitioner>>(o);
      const auto s1 = harness::run<zero::optimizer<zero::stage1, zero::fp32_precision, zero::adamw, Partitioner>>(o);
      const auto s2 = harness::run<zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, Partitioner>>(o);
      const std::uint64_t padded = s0.memory.of(zero::memory_kind::gradients) / sizeof(float);
      // besides the gradients and parameters, every stage all-gathers the per-step statistics
      // (sum of squares, overflow, micro-steps): a few words per rank
      const std::uint64_t statistics = 8 * zero::optimizer<zero::stage0, zero::fp32_precision>::statistics_words * static_cast<std::uint64_t>(world);
      CHECK(s0.step_traffic.total_bytes() == 2 * padded * sizeof(float) + statistics);
      CHECK(s0.step_traffic.bytes_of(zero::collective::all_reduce) == 2 * padded * sizeof(float));
      CHECK(s2.step_traffic.total_bytes() == s0.step_traffic.total_bytes());
      // shared units: reduce-scatter and all-gather; units owned whole (contiguous): reduce to
      // the owner and broadcast from it; the same bytes
      const auto& t = s2.step_traffic;
      CHECK(t.bytes_of(zero::collective::reduce_scatter) + t.bytes_of(zero::collective::reduce) == padded * sizeof(float));
      CHECK(t.bytes_of(zero::collective::all_gather) + t.bytes_of(zero::collective::broadcast) == padded * sizeof(float) + statistics);
      if constexpr (std::is_same_v<Partitioner, zero::contiguous_partitioner>) CHECK(t.bytes_of(zero::collective::reduce_scatter) == 0);
      else CHECK(t.bytes_of(zero::collective::reduce) == 0);
      CHECK(s1.step_traffic.total_bytes() == s0.step_traffic.total_bytes());
      // same sums in the same rank order: stage 0 and stage 2 agree bitwise
      CHECK(s2.params == s0.params);
    }
  }

  TEST_CASE("fp32: parameters never reported in a step count as zero gradients / every stage") {
    harness::run_options o;
    o.skip_some = true;
    o.bucket_elements = 37;
    for (int world : {1, 3, 4}) {
      CAPTURE(world);
      o.world = world;
      const auto s0 = harness::run<zero::optimizer<zero::stage0, zero::fp32_precision>>(o, harness::adamw_hyperparameters());
      const auto s1 = harness::run<zero::optimizer<zero::stage1, zero::fp32_precision>>(o, harness::adamw_hyperparameters());
      const auto s2 = harness::run<zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>>(o, harness::adamw_hyperparameters());
      for (const auto* r : {&s0, &s1, &s2}) {
        CHECK(r->max_value_error < 1e-6);
        CHECK(r->max_param_error < 1e-6);
        CHECK(r->rank_disagreements == 0);
      }
    }
  }

  TEST_CASE("fp32: gradients written into engine slots give the same result as spans") {
    harness::run_options o;
    o.bucket_elements = 37;
    for (int world : {1, 2, 5}) {
      CAPTURE(world);
      o.world = world;
      o.slots = false;
      const auto spans = harness::run<zero::optimizer<zero::stage2, zero::fp32_precision>>(o, harness::adamw_hyperparameters());
      o.slots = true;
      const auto s0 = harness::run<zero::optimizer<zero::stage0, zero::fp32_precision>>(o, harness::adamw_hyperparameters());
      const auto s1 = harness::run<zero::optimizer<zero::stage1, zero::fp32_precision>>(o, harness::adamw_hyperparameters());
      const auto s2 = harness::run<zero::optimizer<zero::stage2, zero::fp32_precision>>(o, harness::adamw_hyperparameters());
      for (const auto* r : {&s0, &s1, &s2}) {
        CHECK(r->max_value_error < 1e-6);
        CHECK(r->rank_disagreements == 0);
      }
      CHECK(s2.params == spans.params);
    }
  }

  TEST_CASE("fp32 Adam (L2 / amsgrad / maximize) and SGD (momentum / dampening / nesterov) equal their references") {
    harness::run_options o;
    o.bucket_elements = 37;
    zero::adam::hyperparameters adam_h;
    adam_h.lr = 1e-2;
    adam_h.weight_decay = 0.05;
    adam_h.amsgrad = true;
    zero::adamw::hyperparameters adamw_ams = harness::adamw_hyperparameters();
    adamw_ams.amsgrad = true;
    adamw_ams.maximize = true;
    zero::sgd::hyperparameters sgd_plain;
    sgd_plain.lr = 1e-2;
    zero::sgd::hyperparameters sgd_momentum;
    sgd_momentum.lr = 1e-2;
    sgd_momentum.momentum = 0.9;
    sgd_momentum.dampening = 0.1;
    sgd_momentum.weight_decay = 0.01;
    zero::sgd::hyperparameters sgd_nesterov;
    sgd_nesterov.lr = 1e-2;
    sgd_nesterov.momentum = 0.8;
    sgd_nesterov.nesterov = true;
    sgd_nesterov.maximize = true;
    for (int world : {1, 3, 4}) {
      CAPTURE(world);
      o.world = world;
      const auto a = harness::run<zero::optimizer<zero::stage2, zero::fp32_precision, zero::adam>>(o, adam_h);
      const auto b = harness::run<zero::optimizer<zero::stage1, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>>(o, adamw_ams);
      const auto c = harness::run<zero::optimizer<zero::stage2, zero::fp32_precision, zero::sgd>>(o, sgd_plain);
      const auto d = harness::run<zero::optimizer<zero::stage2, zero::fp32_precision, zero::sgd, zero::bucketed_partitioner>>(o, sgd_momentum);
      const auto e = harness::run<zero::optimizer<zero::stage0, zero::fp32_precision, zero::sgd>>(o, sgd_nesterov);
      for (const auto* r : {&a, &b, &c, &d, &e}) {
        CHECK(r->max_value_error < 1e-6);
        CHECK(r->max_param_error < 1e-6);
        CHECK(r->rank_disagreements == 0);
      }
    }
  }
}
