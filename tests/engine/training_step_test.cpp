// A complete training step: every rule x stage x world size x precision against its double
// reference, with and without clipping; gradient accumulation with both reduction timings; a
// shared weight reported twice; partitioned LAMB equal to unpartitioned LAMB.
#include <doctest/doctest.h>

#include "engine/harness.hpp"

namespace {

// fp32 against the double reference over 20 steps: each step rounds a parameter at most twice
// (decay, then the update), each rounding within 2^-24 relative: 20 * 2 * 2^-24 = 2.4e-6.
constexpr double fp32_bound = 20 * 2 * 0x1.0p-24;

// fp32 everywhere; bf16 and fp16 parameters and gradients with fp32 master weights (fp16 with a
// fixed loss scale of 1024, which the harness multiplies into the gradients).
template <class Rule, zero::stage S, class Precision>
void check_rule(double loss_scale) {
  using O = zero::optimizer<S, Precision, Rule, zero::bucketed_partitioner>;
  for (int world : {1, 2, 3, 5}) {
    for (double clip : {0.0, 0.5}) {
      CAPTURE(world);
      CAPTURE(clip);
      harness::run_options o;
      o.world = world;
      o.bucket_elements = 61;
      o.alignment = 4;
      o.max_grad_norm = clip;
      o.loss_scale = loss_scale;
      o.order_seed = 3 + static_cast<std::uint64_t>(world);
      const auto r = harness::run<O>(o, harness::rule_hyperparameters<Rule>());
      CHECK(r.max_value_error < fp32_bound);
      CHECK(r.max_norm_error < 1e-6);
      CHECK(r.norm_disagreements == 0);
      CHECK(r.param_rounding_mismatches == 0);
      CHECK(r.rank_disagreements == 0);
    }
  }
}

template <class Rule>
void check_rule_everywhere() {
  check_rule<Rule, zero::stage0, zero::fp32_precision>(0);
  check_rule<Rule, zero::stage1, zero::fp32_precision>(0);
  check_rule<Rule, zero::stage2, zero::fp32_precision>(0);
  check_rule<Rule, zero::stage0, zero::bf16_mixed>(0);
  check_rule<Rule, zero::stage1, zero::bf16_mixed>(0);
  check_rule<Rule, zero::stage2, zero::bf16_mixed>(0);
  check_rule<Rule, zero::stage0, zero::fp16_mixed>(1024);
  check_rule<Rule, zero::stage1, zero::fp16_mixed>(1024);
  check_rule<Rule, zero::stage2, zero::fp16_mixed>(1024);
}

}  // namespace

TEST_SUITE("equivalence") {
  TEST_CASE_TEMPLATE("every rule / stage / world size / precision equals its double reference with and without clipping",
                     Rule, zero::adamw, zero::adam, zero::sgd, zero::lion, zero::adagrad, zero::lamb) {
    check_rule_everywhere<Rule>();
  }

  TEST_CASE("gradient accumulation over 1 2 and 4 micro-steps / reduced every micro-step or once / equals the reference") {
    using h_type = zero::adamw::hyperparameters;
    h_type h;
    h.lr = 1e-2;
    for (int world : {1, 3, 4}) {
      for (int micro : {1, 2, 4}) {
        CAPTURE(world);
        CAPTURE(micro);
        harness::run_options o;
        o.world = world;
        o.micro_steps = micro;
        o.bucket_elements = 37;
        o.skip_some = true;  // some parameters miss some micro-steps on some ranks
        const auto s0 = harness::run<zero::optimizer<zero::stage0, zero::fp32_precision>>(o, h);
        const auto s1 = harness::run<zero::optimizer<zero::stage1, zero::fp32_precision>>(o, h);
        const auto every = harness::run<zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>>(o, h);
        o.staging_buffers = 3;  // pipelined: the same sums in the same order
        const auto pipelined = harness::run<zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>>(o, h);
        CHECK(pipelined.values == every.values);
        CHECK(pipelined.params == every.params);
        o.staging_buffers = 1;
        o.defer_reduction = true;
        const auto once = harness::run<zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>>(o, h);
        o.slots = true;
        const auto once_slots = harness::run<zero::optimizer<zero::stage2, zero::fp32_precision>>(o, h);
        o.defer_reduction = false;
        const auto every_slots = harness::run<zero::optimizer<zero::stage2, zero::fp32_precision>>(o, h);
        for (const auto* r : {&s0, &s1, &every, &once, &once_slots, &every_slots}) {
          CHECK(r->max_value_error < fp32_bound);
          CHECK(r->max_norm_error < 1e-6);
          CHECK(r->rank_disagreements == 0);
        }
        // both timings give the same result (to rounding: the sums are grouped differently)
        for (std::size_t p = 0; p < every.values.size(); ++p)
          for (std::size_t i = 0; i < every.values[p].size(); ++i)
            CHECK(once.values[p][i] == doctest::Approx(every.values[p][i]).epsilon(1e-6));
        // deferring costs the full gradient buffer instead of the shard
        CHECK(once.memory.of(zero::memory_kind::gradients) == world * every.memory.of(zero::memory_kind::gradients));
      }
    }
  }

  TEST_CASE("accumulation in bf16 and reduction in bf16 stay close to the fp32 reference") {
    harness::run_options o;
    o.world = 3;
    o.micro_steps = 2;
    o.bucket_elements = 37;
    zero::adamw::hyperparameters h;
    h.lr = 1e-2;
    const auto accum = harness::run<zero::optimizer<zero::stage2, zero::bf16_mixed_bf16_accum>>(o, h);
    const auto comm = harness::run<zero::optimizer<zero::stage2, zero::bf16_mixed_bf16_comm>>(o, h);
    o.staging_buffers = 2;  // pipelined: bitwise the same
    CHECK(harness::run<zero::optimizer<zero::stage2, zero::bf16_mixed_bf16_accum>>(o, h).values == accum.values);
    CHECK(harness::run<zero::optimizer<zero::stage2, zero::bf16_mixed_bf16_comm>>(o, h).values == comm.values);
    // bf16 sums carry 8 bits: AdamW's normalized steps keep the master weights within about
    // lr * steps * 2^-8 of the reference
    CHECK(accum.max_value_error < 2e-3);
    CHECK(comm.max_value_error < 2e-3);
    CHECK(accum.memory.of(zero::memory_kind::gradients) * 2 ==
          zero::expected_memory<zero::bf16_mixed>(511, 3, zero::stage2, 2, {16, 37}).of(zero::memory_kind::gradients));
  }

  TEST_CASE("a shared weight reported twice per micro-step is accumulated / every stage / spans and slots") {
    zero::adamw::hyperparameters h;
    h.lr = 1e-2;
    for (bool slots : {false, true}) {
      CAPTURE(slots);
      harness::run_options o;
      o.world = 3;
      o.micro_steps = 2;
      o.shared_weight = true;
      o.slots = slots;
      o.bucket_elements = 37;
      const auto s0 = harness::run<zero::optimizer<zero::stage0, zero::fp32_precision>>(o, h);
      const auto s1 = harness::run<zero::optimizer<zero::stage1, zero::fp32_precision>>(o, h);
      const auto s2 = harness::run<zero::optimizer<zero::stage2, zero::fp32_precision>>(o, h);
      for (const auto* r : {&s0, &s1, &s2}) {
        CHECK(r->max_value_error < fp32_bound);
        CHECK(r->rank_disagreements == 0);
      }
    }
  }

  TEST_CASE("partitioned LAMB equals unpartitioned LAMB with tensors straddling ranks") {
    zero::lamb::hyperparameters h;
    h.lr = 5e-3;  // LAMB moves an element by about lr * sqrt(tensor size) per step: keep |p| away from 0
    harness::run_options o;
    o.alignment = 1;
    o.bucket_elements = 64;
    for (int world : {2, 3, 5}) {
      CAPTURE(world);
      o.world = world;
      // stage 0: every rank holds every tensor whole; stage 2: the tensors are split
      const auto whole = harness::run<zero::optimizer<zero::stage0, zero::fp32_precision, zero::lamb>>(o, h);
      const auto split = harness::run<zero::optimizer<zero::stage2, zero::fp32_precision, zero::lamb, zero::contiguous_partitioner>>(o, h);
      CHECK(whole.max_value_error < fp32_bound);
      CHECK(split.max_value_error < fp32_bound);
      for (std::size_t p = 0; p < whole.values.size(); ++p)
        for (std::size_t i = 0; i < whole.values[p].size(); ++i)
          CHECK(split.values[p][i] == doctest::Approx(whole.values[p][i]).epsilon(1e-6));
      // some tensors are held by more than one rank
      const auto plan = zero::contiguous_partitioner{}.plan(harness::model_sizes, {world, 1, 64});
      std::size_t straddling = 0;
      for (std::size_t p = 0; p < harness::model_sizes.size(); ++p) {
        const auto pieces = plan.pieces_of(p);
        straddling += pieces.front().rank != pieces.back().rank;
      }
      CHECK(straddling >= 1);
    }
  }
}
