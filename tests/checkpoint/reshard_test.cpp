// Resharding: a checkpoint saved at N ranks loads at M ranks (any N, M; either partitioner;
// stages 0 to 3; other bucket sizes and alignments), holds exactly the saved state, and
// training on from it gives the same result as a run that never stopped: fp32 bitwise with
// gradients whose global sum is exact (fixture.hpp), and within a stated tolerance with the
// engine's own averaging, whose rounding depends on the world size.
#include "fixture.hpp"

#include <type_traits>

namespace {

using ckpt::layout;
using ckpt::session;

constexpr int saved_at = 3;  // steps before the save
constexpr int total = 7;     // steps of the whole run

// Trains [0, saved_at) on n ranks with configuration A, saves, loads on m ranks with
// configuration B, trains [saved_at, total); compares with [0, total) on m ranks with B.
template <class OptA, class OptB>
void check_resharding(int n, int m, layout a = {64, 4}, layout b = {48, 8}) {
  CAPTURE(n);
  CAPTURE(m);
  ckpt::temp_dir dir;
  const auto before = ckpt::run<OptA>({.world = n, .shape = a, .first = 0, .last = saved_at, .save_to = dir.path});
  const auto after = ckpt::run<OptB>({.world = m, .shape = b, .first = saved_at, .last = total, .load_from = dir.path});
  const auto uninterrupted = ckpt::run<OptB>({.world = m, .shape = b, .first = 0, .last = total});
  for (const auto& info : after.load_info) {
    CHECK(info.step == saved_at);
    CHECK(info.saved_world_size == static_cast<std::uint32_t>(n));
  }
  // what was loaded is what was saved, bit for bit (values, every state slot, parameters on every rank)
  ckpt::check_same(before.final, after.loaded);
  // and training on is training that never stopped
  ckpt::check_same(uninterrupted.final, after.final);
}

template <zero::stage S, class Part>
using adamw32 = zero::optimizer<S, zero::fp32_precision, zero::adamw, Part>;
using contiguous = zero::contiguous_partitioner;
using bucketed = zero::bucketed_partitioner;

template <zero::stage S, class Part>
void check_pair_one_config(int n, int m) {
  check_resharding<adamw32<S, Part>, adamw32<S, Part>>(n, m);
}

void check_pair(int n, int m) {
  check_pair_one_config<zero::stage1, contiguous>(n, m);
  check_pair_one_config<zero::stage1, bucketed>(n, m);
  check_pair_one_config<zero::stage2, contiguous>(n, m);
  check_pair_one_config<zero::stage2, bucketed>(n, m);
}

}  // namespace

TEST_SUITE("checkpoint") {
  TEST_CASE("resharding 1 to 4 continues training bitwise (stages 1 and 2 and both partitioners)") { check_pair(1, 4); }
  TEST_CASE("resharding 4 to 1 continues training bitwise (stages 1 and 2 and both partitioners)") { check_pair(4, 1); }
  TEST_CASE("resharding 3 to 5 continues training bitwise (stages 1 and 2 and both partitioners)") { check_pair(3, 5); }
  TEST_CASE("resharding 8 to 2 continues training bitwise (stages 1 and 2 and both partitioners)") { check_pair(8, 2); }
  TEST_CASE("resharding 5 to 3 and 2 to 8 continue training bitwise (stage 2 bucketed)") {
    check_pair_one_config<zero::stage2, bucketed>(5, 3);
    check_pair_one_config<zero::stage2, bucketed>(2, 8);
  }

  TEST_CASE("resharding across partitioners and stages continues training bitwise") {
    check_resharding<adamw32<zero::stage1, contiguous>, adamw32<zero::stage2, bucketed>>(3, 4);
    check_resharding<adamw32<zero::stage2, bucketed>, adamw32<zero::stage1, contiguous>>(5, 2);
    check_resharding<adamw32<zero::stage2, contiguous>, adamw32<zero::stage2, bucketed>>(4, 4, {16, 1}, {1u << 20, 16});
    check_resharding<adamw32<zero::stage0, contiguous>, adamw32<zero::stage2, bucketed>>(4, 3);
    check_resharding<adamw32<zero::stage2, bucketed>, adamw32<zero::stage0, contiguous>>(3, 2);
    check_resharding<adamw32<zero::stage1, bucketed>, adamw32<zero::stage0, bucketed>>(2, 1);
  }

  TEST_CASE("stage 3 checkpoints load at stages 0 1 and 2 and other world sizes and the reverse / continuing bitwise") {
    check_resharding<adamw32<zero::stage3, contiguous>, adamw32<zero::stage2, bucketed>>(3, 4);
    check_resharding<adamw32<zero::stage2, contiguous>, adamw32<zero::stage3, bucketed>>(4, 3);
    check_resharding<adamw32<zero::stage3, bucketed>, adamw32<zero::stage3, contiguous>>(5, 2);
    check_resharding<adamw32<zero::stage0, contiguous>, adamw32<zero::stage3, contiguous>>(2, 5);
    check_resharding<adamw32<zero::stage3, contiguous>, adamw32<zero::stage1, contiguous>>(3, 1);
    check_resharding<adamw32<zero::stage3, bucketed>, adamw32<zero::stage0, bucketed>>(1, 2);
    check_resharding<adamw32<zero::stage3, contiguous>, adamw32<zero::stage3, contiguous>>(1, 1);
  }

  TEST_CASE("a checkpoint loads under another layout order and an order still to be learned takes the saved one") {
    for (bool owned_units : {false, true}) {
      CAPTURE(owned_units);
      auto check = [&]<class O>(std::type_identity<O>) {
        typename O::options_type registration, reverse, learned;
        registration.layout.order = zero::gradient_order::registration;
        learned.layout.order = zero::gradient_order::learned;
        ckpt::temp_dir dir;
        const auto before = ckpt::run<O>({.world = 3, .first = 0, .last = saved_at, .save_to = dir.path}, registration);
        CHECK(before.final.order == std::vector<std::size_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
        // saved in registration order, loaded in the (default) reverse order at another world size
        const auto after = ckpt::run<O>({.world = 4, .first = saved_at, .last = total, .load_from = dir.path}, reverse);
        CHECK(after.loaded.order == std::vector<std::size_t>{11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0});
        ckpt::check_same(before.final, after.loaded);
        const auto uninterrupted = ckpt::run<O>({.world = 4, .first = 0, .last = total}, reverse);
        ckpt::check_same(uninterrupted.final, after.final);
        // an engine still to learn its order takes the saved one, and keeps it
        const auto adopted = ckpt::run<O>({.world = 2, .first = saved_at, .last = total, .load_from = dir.path}, learned);
        CHECK(adopted.loaded.order == before.final.order);
        CHECK(adopted.final.order == before.final.order);
        ckpt::check_same(before.final, adopted.loaded);
        ckpt::check_same(ckpt::run<O>({.world = 2, .first = 0, .last = total}, learned).final, adopted.final);
      };
      if (owned_units) check(std::type_identity<adamw32<zero::stage2, contiguous>>{});
      else check(std::type_identity<adamw32<zero::stage2, bucketed>>{});
    }
  }

  TEST_CASE("resharding bf16 mixed precision restores the fp32 master weights bitwise") {
    // bf16 gradients of a rank's share round differently at another world size, so only the
    // restored state is compared bitwise here; the continued run is compared with a tolerance
    using A = zero::optimizer<zero::stage2, zero::bf16_mixed, zero::adamw, bucketed>;
    using B = zero::optimizer<zero::stage1, zero::bf16_mixed, zero::adamw, contiguous>;
    ckpt::temp_dir dir;
    const auto before = ckpt::run<A>({.world = 3, .first = 0, .last = saved_at, .save_to = dir.path});
    const auto after = ckpt::run<B>({.world = 5, .shape = {32, 8}, .first = saved_at, .last = total, .load_from = dir.path});
    ckpt::check_same(before.final, after.loaded);
    const auto uninterrupted = ckpt::run<B>({.world = 5, .shape = {32, 8}, .first = 0, .last = total});
    const double difference = ckpt::max_relative(after.final.values, uninterrupted.final.values);
    MESSAGE("bf16 3 -> 5: largest relative difference of the master weights after " << total << " steps: " << difference);
    CHECK(difference < 1e-2);
  }

  TEST_CASE("resharding with the engine's own averaging stays within 1e-5 of an uninterrupted run") {
    // Without the exact-sum design each step's gradient is rounded after a 1/N average at N
    // ranks and a 1/M average at M ranks: results differ by rounding only.
    using O = adamw32<zero::stage2, contiguous>;
    ckpt::temp_dir dir;
    const auto before = ckpt::run<O>({.world = 3, .first = 0, .last = saved_at, .save_to = dir.path, .cancel_average = false});
    const auto after = ckpt::run<O>({.world = 5, .first = saved_at, .last = total, .load_from = dir.path, .cancel_average = false});
    const auto uninterrupted = ckpt::run<O>({.world = 5, .first = 0, .last = total, .cancel_average = false});
    ckpt::check_same(before.final, after.loaded);
    const double difference = ckpt::max_relative(after.final.values, uninterrupted.final.values);
    MESSAGE("fp32 3 -> 5 with 1/N averaging: largest relative difference after " << total << " steps: " << difference);
    CHECK(difference < 1e-5);
  }
}

namespace {

// Three parameter groups: decay, no decay (a higher learning rate), and amsgrad with other betas.
zero::optimizer_options<zero::adamw> three_groups(double lr_scale) {
  zero::optimizer_options<zero::adamw> o;
  o.hyperparameters = {.lr = 1e-2 * lr_scale, .weight_decay = 0.1};
  o.add_group({.lr = 2e-2 * lr_scale, .weight_decay = 0});
  o.add_group({.lr = 5e-3 * lr_scale, .beta1 = 0.8, .beta2 = 0.99, .weight_decay = 0.05, .amsgrad = true});
  return o;
}
const std::vector<std::uint32_t> membership = {1, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1};

}  // namespace

TEST_SUITE("checkpoint") {
  TEST_CASE("parameter groups reshard with the checkpoint and their hyperparameters are restored as torch.optim restores them") {
    using A = adamw32<zero::stage2, bucketed>;
    using B = adamw32<zero::stage1, contiguous>;
    ckpt::temp_dir dir;
    const auto before = ckpt::run<A>({.world = 3, .first = 0, .last = saved_at, .save_to = dir.path, .groups = membership},
                                     three_groups(1));
    // every rank's file records the groups
    const zero::checkpoint_header h = zero::detail::read_file(dir.path / "step-3" / "rank-2-of-3.zck").header();
    REQUIRE(h.groups.size() == 3);
    CHECK(h.param_groups == membership);
    CHECK(h.groups[1][0].name == "lr");
    CHECK(h.groups[1][0].value == 2e-2);
    CHECK(h.groups[2][5].name == "amsgrad");
    CHECK(h.groups[2][5].value == 1);
    // loaded at 5 ranks, stage 1, the other partitioner, by an optimizer built with other learning
    // rates: the saved ones are restored, and training on equals a run that never stopped
    const auto after = ckpt::run<B>({.world = 5, .shape = {48, 8}, .first = saved_at, .last = total, .load_from = dir.path,
                                     .groups = membership},
                                    three_groups(7));
    const auto uninterrupted =
        ckpt::run<B>({.world = 5, .shape = {48, 8}, .first = 0, .last = total, .groups = membership}, three_groups(1));
    CHECK(after.loaded.group_lr == std::vector<double>{1e-2, 2e-2, 5e-3});
    ckpt::check_same(before.final, after.loaded);
    ckpt::check_same(uninterrupted.final, after.final);
    // restore_hyperparameters = false keeps the optimizer's own
    const auto kept = ckpt::run<B>({.world = 2, .first = saved_at, .last = saved_at, .load_from = dir.path, .groups = membership,
                                    .load = {.restore_hyperparameters = false}},
                                   three_groups(7));
    CHECK(kept.loaded.group_lr == std::vector<double>{1e-2 * 7, 2e-2 * 7, 5e-3 * 7});
    ckpt::check_same(before.final, kept.loaded);
    // a parameter in another group than it was saved in, or another number of groups: refused,
    // naming the parameter, and the optimizer unchanged
    auto moved = membership;
    moved[4] = 0;
    CHECK_THROWS_WITH_AS(ckpt::run<B>({.world = 2, .first = saved_at, .last = saved_at, .load_from = dir.path, .groups = moved},
                                      three_groups(1)),
                         doctest::Contains("parameter 'layer4' (#4) is in parameter group 2 there and in group 0 here"),
                         zero::checkpoint_error);
    auto two = three_groups(1);
    two.extra_groups.pop_back();
    two.extra_groups[0].amsgrad = true;  // the same state slots, one group fewer
    auto no_third = membership;
    for (auto& g : no_third) g = g == 2 ? 0 : g;
    CHECK_THROWS_WITH_AS(ckpt::run<B>({.world = 2, .first = saved_at, .last = saved_at, .load_from = dir.path, .groups = no_third},
                                      two),
                         doctest::Contains("saved with 3 parameter group(s); this optimizer has 2"), zero::checkpoint_error);
  }
}
