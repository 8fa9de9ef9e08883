// Round trips at the same world size: what is loaded is bitwise what was saved (values, every
// state slot, the step, the loss scaler's state, every rank's parameters), and training on from
// it is bitwise the run that never stopped, for every stage, both partitioners, several
// precisions (with and without master weights) and update rules.
#include "fixture.hpp"

namespace {

using ckpt::session;

template <class Opt>
void check_round_trip(int world, ckpt::gradients kind = ckpt::gradients::exact, typename Opt::options_type options = {}) {
  CAPTURE(world);
  ckpt::temp_dir dir;
  const auto before = ckpt::run<Opt>({.world = world, .first = 0, .last = 4, .save_to = dir.path, .kind = kind}, options);
  const auto after = ckpt::run<Opt>({.world = world, .first = 4, .last = 8, .load_from = dir.path, .kind = kind}, options);
  const auto uninterrupted = ckpt::run<Opt>({.world = world, .first = 0, .last = 8, .kind = kind}, options);
  ckpt::check_same(before.final, after.loaded, true, true);
  ckpt::check_same(uninterrupted.final, after.final, true, true);
  // the files are where the layout says
  const auto step_dir = dir.path / ("step-" + std::to_string(before.final.step));
  CHECK(before.saved[0].path == step_dir);
  CHECK(std::filesystem::exists(step_dir / "COMMITTED"));
  for (int r = 0; r < world; ++r)
    CHECK(std::filesystem::exists(step_dir / ("rank-" + std::to_string(r) + "-of-" + std::to_string(world) + ".zck")));
  CHECK(ckpt::read_bytes(dir.path / "latest") == std::vector<char>{'s', 't', 'e', 'p', '-', static_cast<char>('0' + before.final.step), '\n'});
}

template <zero::stage S, class Precision = zero::fp32_precision, class Rule = zero::adamw, class Part = zero::contiguous_partitioner>
using opt = zero::optimizer<S, Precision, Rule, Part>;

}  // namespace

TEST_SUITE("checkpoint") {
  TEST_CASE("round trip at the same world size is bitwise for fp32 in stages 0 1 and 2") {
    check_round_trip<opt<zero::stage0>>(3);
    check_round_trip<opt<zero::stage1>>(3);
    check_round_trip<opt<zero::stage2>>(3);
    check_round_trip<opt<zero::stage1, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>>(4);
    check_round_trip<opt<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>>(4);
    check_round_trip<opt<zero::stage2>>(1);
  }

  TEST_CASE("round trip at the same world size is bitwise for bf16 with and without master weights") {
    check_round_trip<opt<zero::stage2, zero::bf16_mixed, zero::adamw, zero::bucketed_partitioner>>(4, ckpt::gradients::noisy);
    check_round_trip<opt<zero::stage1, zero::bf16_mixed>>(2, ckpt::gradients::noisy);
    check_round_trip<opt<zero::stage0, zero::bf16_mixed>>(2, ckpt::gradients::noisy);
    check_round_trip<opt<zero::stage2, zero::bf16_pure>>(3, ckpt::gradients::noisy);
  }

  TEST_CASE("round trip keeps the dynamic loss scaler's state with fp16") {
    // gradients up to 2 times a scale of 2^16 overflow fp16: the first steps are skipped and the
    // scale falls; the scaler's scale, hysteresis and counters must come back exactly
    check_round_trip<opt<zero::stage2, zero::fp16_mixed>>(2, ckpt::gradients::noisy);
  }

  TEST_CASE("round trip is bitwise for other update rules and amsgrad") {
    typename opt<zero::stage2, zero::fp32_precision, zero::adamw>::options_type ams;
    ams.hyperparameters.amsgrad = true;
    check_round_trip<opt<zero::stage2, zero::fp32_precision, zero::adamw>>(3, ckpt::gradients::exact, ams);
    typename opt<zero::stage2, zero::fp32_precision, zero::sgd>::options_type momentum;
    momentum.hyperparameters.momentum = 0.9;
    check_round_trip<opt<zero::stage2, zero::fp32_precision, zero::sgd>>(2, ckpt::gradients::exact, momentum);
    check_round_trip<opt<zero::stage1, zero::fp32_precision, zero::adagrad>>(3);
    check_round_trip<opt<zero::stage2, zero::fp32_precision, zero::lion>>(2);
  }
}
