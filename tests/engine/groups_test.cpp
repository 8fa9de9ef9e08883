// Parameter groups, as torch.optim's param_groups (fp32, and bf16 with fp32 master weights): two
// and three groups with their own
// hyperparameters (no weight decay for the small "bias" parameters, other learning rates, betas,
// momentum, amsgrad in one group only), a schedule changing every group's learning rate before
// every step, every rule, every stage, both partitioners, worlds 1, 2, 3 and 5, each rank
// reporting in its own random order: equal to the double reference (each parameter updated with
// its group's values) and bitwise equal across ranks. Then the errors: a parameter in no group,
// bad values naming the group, and ranks whose hyperparameters differ, at construction and after
// a schedule set them differently on one rank (mismatch_error naming the rank and the group and the field).
#include <doctest/doctest.h>

#include "engine/harness.hpp"

namespace {

// as training_step_test: 20 steps, at most two fp32 roundings per step, 2^-24 each
constexpr double fp32_bound = 20 * 2 * 0x1.0p-24;

// Groups 1 and 2 of rule R (group 0: harness::rule_hyperparameters<R>()).
template <class Rule>
std::vector<typename Rule::hyperparameters> extra_groups(std::size_t count) {
  using H = typename Rule::hyperparameters;
  H no_decay = harness::rule_hyperparameters<Rule>();  // biases and norm weights: no weight decay, another lr
  no_decay.lr *= 2;
  if constexpr (requires { no_decay.weight_decay; }) no_decay.weight_decay = 0;
  if constexpr (std::is_same_v<Rule, zero::sgd>) no_decay.momentum = 0;  // a group with no state at all
  H other = harness::rule_hyperparameters<Rule>();
  other.lr *= 0.5;
  if constexpr (requires { other.amsgrad; }) other.amsgrad = true, other.beta1 = 0.8, other.beta2 = 0.99;  // 3 slots, one group
  if constexpr (std::is_same_v<Rule, zero::sgd>) other.momentum = 0.5, other.nesterov = true;
  if constexpr (std::is_same_v<Rule, zero::lion>) other.beta1 = 0.95, other.weight_decay = 0.1;
  if constexpr (std::is_same_v<Rule, zero::adagrad>) other.lr_decay = 0.01, other.initial_accumulator_value = 0.3;
  if constexpr (std::is_same_v<Rule, zero::lamb>) other.eps = 1e-4, other.beta1 = 0.8;
  std::vector<H> out{no_decay, other};
  out.resize(count);
  return out;
}

// Two groups: the parameters under 8 elements (the "biases") in group 1. Three groups: then every
// third parameter of the rest in group 2, so that groups alternate along each shard.
std::vector<std::uint32_t> membership(std::size_t groups) {
  std::vector<std::uint32_t> m;
  for (std::size_t p = 0; p < harness::model_sizes.size(); ++p)
    m.push_back(harness::model_sizes[p] < 8 ? 1u : (groups == 3 && p % 3 == 0 ? 2u : 0u));
  return m;
}

template <class Rule, zero::stage S, class Partitioner, class Precision = zero::fp32_precision>
void check_groups(std::initializer_list<int> worlds = {1, 2, 3, 5}) {
  using O = zero::optimizer<S, Precision, Rule, Partitioner>;
  using H = typename Rule::hyperparameters;
  for (std::size_t groups : {std::size_t{2}, std::size_t{3}}) {
    for (int world : worlds) {
      CAPTURE(groups);
      CAPTURE(world);
      harness::run_options o;
      o.world = world;
      o.bucket_elements = 61;
      o.alignment = 4;
      o.order_seed = 11 + static_cast<std::uint64_t>(world);
      harness::group_setup<H> setup;
      setup.extra = extra_groups<Rule>(groups - 1);
      setup.membership = membership(groups);
      // a schedule: every group's learning rate decays, each at its own rate
      setup.schedule = [](int t, std::size_t g, H& h) {
        if (t > 0) h.lr *= 1.0 - 0.01 * static_cast<double>(g + 1);
      };
      const auto r = harness::run<O>(o, harness::rule_hyperparameters<Rule>(), setup);
      CHECK(r.max_value_error < fp32_bound);  // the fp32 values (master weights with bf16 parameters)
      if constexpr (std::is_same_v<Precision, zero::fp32_precision>) CHECK(r.max_param_error < fp32_bound);
      else CHECK(r.max_param_error <= 0x1.0p-7);  // bf16(reference) may round one ulp the other way
      CHECK(r.param_rounding_mismatches == 0);
      CHECK(r.rank_disagreements == 0);
      CHECK(r.norm_disagreements == 0);
      // and the groups matter: the same run with every parameter in group 0 ends elsewhere
      harness::group_setup<H> one;
      one.extra = setup.extra;
      one.schedule = setup.schedule;
      const auto single = harness::run<O>(o, harness::rule_hyperparameters<Rule>(), one);
      CHECK(single.params[0] != r.params[0]);
    }
  }
}

template <class Rule>
void check_every_stage() {
  check_groups<Rule, zero::stage0, zero::bucketed_partitioner>();
  check_groups<Rule, zero::stage1, zero::bucketed_partitioner>();
  check_groups<Rule, zero::stage2, zero::bucketed_partitioner>();
  check_groups<Rule, zero::stage1, zero::contiguous_partitioner>();
  check_groups<Rule, zero::stage2, zero::contiguous_partitioner>();
  // bf16 parameters and gradients with fp32 master weights: the reference sees the same bf16
  // gradients; the master weights hold the fp32 bound, the parameters are them rounded
  check_groups<Rule, zero::stage2, zero::bucketed_partitioner, zero::bf16_mixed>({2, 3});
  check_groups<Rule, zero::stage1, zero::contiguous_partitioner, zero::bf16_mixed>({3});
}

struct model {
  std::vector<std::vector<float>> storage{std::vector<float>(5, 1.0f), std::vector<float>(7, 1.0f), std::vector<float>(3, 1.0f)};
  std::vector<zero::parameter<float>> params(std::vector<std::uint32_t> groups) {
    std::vector<zero::parameter<float>> out;
    for (std::size_t p = 0; p < storage.size(); ++p)
      out.push_back({"w" + std::to_string(p), {storage[p].data(), storage[p].size()}, 1, groups[p]});
    return out;
  }
};

}  // namespace

TEST_SUITE("equivalence") {
  TEST_CASE("parameter groups: AdamW equals the double reference / every stage with two and three groups") {
    check_every_stage<zero::adamw>();
  }
  TEST_CASE("parameter groups: Adam equals the double reference / every stage with two and three groups") {
    check_every_stage<zero::adam>();
  }
  TEST_CASE("parameter groups: SGD equals the double reference / every stage with two and three groups") {
    check_every_stage<zero::sgd>();
  }
  TEST_CASE("parameter groups: Lion equals the double reference / every stage with two and three groups") {
    check_every_stage<zero::lion>();
  }
  TEST_CASE("parameter groups: Adagrad equals the double reference / every stage with two and three groups") {
    check_every_stage<zero::adagrad>();
  }
  TEST_CASE("parameter groups: LAMB equals the double reference / every stage with two and three groups") {
    check_every_stage<zero::lamb>();
  }
}

TEST_SUITE("reliability") {
  TEST_CASE("parameter groups: refusals name the parameter and the group and the rank") {
    zero::single_rank_communicator comm;
    using O = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner,
                              zero::single_rank_communicator>;
    model m;
    O::options_type options;
    const std::uint32_t no_decay = options.add_group({.lr = 1e-3, .weight_decay = 0});
    CHECK(no_decay == 1);
    CHECK(options.group_count() == 2);
    // a parameter in a group that was never added
    CHECK_THROWS_WITH_AS(O(comm, m.params({0, 1, 2}), options), doctest::Contains("'w2' (#2) on rank 0 is in parameter group 2"),
                         zero::usage_error);
    // a bad value names its group
    O::options_type bad = options;
    bad.group(1).beta2 = 1.5;
    CHECK_THROWS_WITH_AS(O(comm, m.params({0, 1, 1}), bad), doctest::Contains("beta2 = 1.5 must be in [0, 1) (parameter group 1, rank 0)"),
                         zero::usage_error);

    O opt(comm, m.params({0, 1, 1}), options);
    CHECK(opt.group_count() == 2);
    CHECK(opt.group_of(2) == 1);
    CHECK(opt.hyperparameters(1).weight_decay == 0);
    auto h = opt.hyperparameters(1);
    h.lr = 5e-4;
    CHECK_THROWS_WITH_AS(opt.set_hyperparameters(h), doctest::Contains("call set_hyperparameters(group, h)"), zero::usage_error);
    CHECK_THROWS_WITH_AS(opt.set_hyperparameters(2, h), doctest::Contains("parameter group 2 on rank 0 is out of range"),
                         zero::usage_error);
    h.amsgrad = true;  // more state slots than the engine was built with
    CHECK_THROWS_WITH_AS(opt.set_hyperparameters(1, h), doctest::Contains("need 3 state slots"), zero::usage_error);
    h.amsgrad = false;
    opt.set_hyperparameters(1, h);
    CHECK(opt.hyperparameters(1).lr == 5e-4);
    CHECK(opt.hyperparameters(0).lr == options.hyperparameters.lr);
  }

  TEST_CASE("parameter groups: ranks holding other hyperparameters / mismatch_error naming the rank and the group and the field") {
    using O = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>;
    // at construction: rank 2's group 1 has another weight decay
    {
      zero::thread_group group(3, {std::chrono::seconds(30)});
      std::vector<std::string> errors(3);
      group.run([&](zero::thread_communicator& comm) {
        model m;
        O::options_type options;
        options.add_group({.weight_decay = comm.rank() == 2 ? 0.1 : 0.0});
        try {
          O opt(comm, m.params({0, 1, 1}), options);
        } catch (const zero::mismatch_error& e) {
          errors[static_cast<std::size_t>(comm.rank())] = e.what();
        }
      });
      for (const auto& e : errors) {
        CHECK(e.find("at construction: rank 2 has weight_decay = 0.1 in parameter group 1, rank 0 has 0") != std::string::npos);
        CHECK(e == errors[0]);
      }
    }
    // at a step: rank 1's schedule set another learning rate for group 0; with clipping (the
    // norm is exchanged before the update) and without (the update computes it on the way)
    for (double clip : {0.0, 1.0}) {
      CAPTURE(clip);
      zero::thread_group group(3, {std::chrono::seconds(30)});
      std::vector<std::string> errors(3);
      std::vector<int> later_refused(3, 0);
      group.run([&](zero::thread_communicator& comm) {
        model m;
        O::options_type options;
        options.max_grad_norm = clip;
        options.add_group({.weight_decay = 0});
        O opt(comm, m.params({0, 1, 1}), options);
        std::vector<float> g(7, 0.5f);
        auto report_all = [&] {
          for (std::size_t p = 3; p-- > 0;) opt.gradient_ready(p, {g.data(), m.storage[p].size()});
        };
        report_all();
        opt.step();
        auto h = opt.hyperparameters(0);
        h.lr = comm.rank() == 1 ? 2e-3 : 1e-3;
        opt.set_hyperparameters(0, h);
        report_all();
        try {
          opt.step();
        } catch (const zero::mismatch_error& e) {
          errors[static_cast<std::size_t>(comm.rank())] = e.what();
        }
        try {
          report_all();
        } catch (const zero::communicator_error&) {
          later_refused[static_cast<std::size_t>(comm.rank())] = 1;
        }
      });
      for (std::size_t r = 0; r < 3; ++r) {
        CHECK(errors[r].find("at step 2") != std::string::npos);
        CHECK(errors[r].find("rank 1 has lr = 0.002 in parameter group 0, rank 0 has 0.001") != std::string::npos);
        CHECK(errors[r] == errors[0]);
        CHECK(later_refused[r] == 1);
      }
    }
  }
}
