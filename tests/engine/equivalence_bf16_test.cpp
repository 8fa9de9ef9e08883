// Stages 0, 1, 2 x both partitioners x world sizes 1, 2, 3, 4, 5, 8, bf16 parameters and
// gradients with fp32 master weights: the master weights equal (1e-6 relative) plain
// data-parallel AdamW in double precision on the same bf16 gradients; the framework's bf16
// parameters are the master weights rounded to nearest even; runs are bitwise reproducible.
#include <doctest/doctest.h>

#include "engine/harness.hpp"

namespace {

using harness::bf16_mixed_run;

}  // namespace

TEST_SUITE("equivalence") {
  TEST_CASE_TEMPLATE("bf16 with fp32 master: AdamW equals the double reference over 20 steps / all world sizes", C,
                     harness::stage0_contiguous<bf16_mixed_run>, harness::stage1_contiguous<bf16_mixed_run>,
                     harness::stage2_contiguous<bf16_mixed_run>, harness::stage0_bucketed<bf16_mixed_run>, harness::stage1_bucketed<bf16_mixed_run>,
                     harness::stage2_bucketed<bf16_mixed_run>) {
    using O = typename C::optimizer;
    for (int world : {1, 2, 3, 4, 5, 8}) {
      for (std::size_t bucket : {std::size_t{1}, std::size_t{37}, std::size_t{1} << 20}) {
        CAPTURE(world);
        CAPTURE(bucket);
        harness::run_options o;
        o.world = world;
        o.bucket_elements = bucket;
        o.alignment = bucket == 1 ? 1 : 8;
        o.order_seed = 11 + static_cast<std::uint64_t>(world);
        const auto r = harness::run<O>(o, harness::adamw_hyperparameters());
        CHECK(r.max_value_error < 1e-6);
        CHECK(r.param_rounding_mismatches == 0);
        CHECK(r.max_param_error <= 0x1.0p-7);  // bf16(reference) may round one ulp the other way
        CHECK(r.rank_disagreements == 0);
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

  TEST_CASE("bf16 reduced in bf16: stage 2 moves the same bytes as stage 0 and stays close to the reference") {
    using P = zero::bf16_mixed_bf16_comm;
    for (int world : {2, 3, 5}) {
      CAPTURE(world);
      harness::run_options o;
      o.world = world;
      o.bucket_elements = 64;
      const auto s0 = harness::run<zero::optimizer<zero::stage0, P>>(o, harness::adamw_hyperparameters());
      const auto s2 = harness::run<zero::optimizer<zero::stage2, P>>(o, harness::adamw_hyperparameters());
      CHECK(s2.step_traffic.total_bytes() == s0.step_traffic.total_bytes());
      // gradient sums rounded to bf16 before averaging: AdamW's normalized step keeps the
      // master weights close to the reference, not within 1e-6
      CHECK(s0.max_value_error < 1e-3);
      CHECK(s2.max_value_error < 1e-3);
      CHECK(s2.rank_disagreements == 0);
    }
  }

  TEST_CASE("bf16 with fp32 reduction: stage 2 moves fp32 gradients and bf16 parameters / 2 * 4 * padded vs 6 * padded bytes") {
    harness::run_options o;
    o.world = 4;
    o.steps = 1;
    const auto s0 = harness::run<zero::optimizer<zero::stage0, zero::bf16_mixed>>(o);
    const auto s2 = harness::run<zero::optimizer<zero::stage2, zero::bf16_mixed>>(o);
    const std::uint64_t padded = s0.memory.of(zero::memory_kind::gradients) / sizeof(float);
    const std::uint64_t statistics = 8 * zero::optimizer<zero::stage0, zero::bf16_mixed>::statistics_words * 4;
    CHECK(s0.step_traffic.bytes_of(zero::collective::all_reduce) == 2 * padded * 4);
    CHECK(s0.step_traffic.total_bytes() == 2 * padded * 4 + statistics);
    // reduce-scatters (or reduces to an owner) of fp32 gradients, all-gathers (or broadcasts) of bf16
    const auto& t = s2.step_traffic;
    CHECK(t.bytes_of(zero::collective::reduce_scatter) + t.bytes_of(zero::collective::reduce) == padded * 4);
    CHECK(t.bytes_of(zero::collective::all_gather) + t.bytes_of(zero::collective::broadcast) == padded * 2 + statistics);
  }
}
