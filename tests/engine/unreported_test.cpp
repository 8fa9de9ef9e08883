// Unreported gradients (issue 17): a parameter no rank reported in a step. Under
// `unreported_gradients::skip` it is left untouched, as torch.optim leaves a parameter whose grad
// is None, and keeps its own step count (bias corrections, Adagrad's lr_decay, SGD's first
// momentum step); under the default `zero` it counts as a zero gradient (DeepSpeed).
//
// The engine is driven as a framework drives it: parameters registered in model order, gradients
// reported in backward order or in each rank's own random order, over one or two micro-steps,
// with a pattern where some parameters are unreported by every rank at some steps, one is first
// reported at step 4, one is reported by one rank only at some steps (it counts as reported,
// zero from the others), one is reported by all ranks but one, and one only in the second
// micro-step; even ranks declare what they do not report unused (`gradient_unused`, which is not
// a report). Every rule, every stage, both partitioners, worlds 1, 2, 3, 5, fp32 and bf16 with
// fp32 master weights, 12 steps, against a plain double-precision loop with torch.optim's
// semantics (per-parameter step, None = untouched) or the zero-gradient semantics; every rank's
// parameters bitwise equal.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <mutex>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <random>
#include <string>
#include <vector>

#include "engine/harness.hpp"

namespace {

using harness::model_sizes;

// as the other equivalence tests: at most two fp32 roundings per step, 2^-24 each (20 steps' worth)
constexpr double fp32_bound = 20 * 2 * 0x1.0p-24;

struct pattern {
  int world = 1;
  int steps = 12;
  int micro_steps = 1;
  harness::report_order order = harness::report_order::random;
  std::uint64_t seed = 1;
  double max_grad_norm = 0;
  zero::unreported_gradients mode = zero::unreported_gradients::skip;
};

constexpr std::size_t late_param = 5;      // first reported at step 4 (t = 3)
constexpr std::size_t one_rank_param = 8;  // some steps: reported by one rank only
constexpr std::size_t all_but_one = 9;     // some steps: every rank but one reports it
constexpr std::size_t second_micro = 2;    // with two micro-steps: reported in the second only

// Whether rank r reports parameter p in micro-step m of step t.
bool reports(const pattern& o, int t, int m, int r, std::size_t p) {
  const auto ut = static_cast<std::uint64_t>(t);
  if (p == late_param) return t >= 3;
  if (p == one_rank_param && t % 3 == 1) return r == t % o.world;
  if (p == all_but_one && o.world > 1 && t % 4 == 2) return r != (t + 1) % o.world;
  if (p == second_micro && o.micro_steps > 1) return m == o.micro_steps - 1;
  if (p == 1 || p == 6 || p == 10 || p == 11) return harness::mix(ut * 7 + p) % 3 != 0;  // no rank at some steps
  return true;
}

struct outcome {
  double max_value_error = 0, max_param_error = 0;
  std::size_t rank_disagreements = 0, step_count_errors = 0;
  std::vector<std::vector<std::vector<float>>> params;  // [rank][param]
};

// The double reference of `mode` (torch.optim's semantics for skip, zero gradients otherwise):
// trajectory[t][p] after step t.
template <class Rule, class G>
std::vector<std::vector<std::vector<double>>> reference(const pattern& o, const typename Rule::hyperparameters& h,
                                                        zero::unreported_gradients mode, std::vector<std::uint64_t>& own) {
  using P = G;  // parameters have the gradient type in the precisions tested here
  const std::size_t n = model_sizes.size();
  std::vector<harness::reference_state> ref(n);
  for (std::size_t p = 0; p < n; ++p) {
    auto& s = ref[p];
    for (std::size_t i = 0; i < model_sizes[p]; ++i)
      s.p.push_back(static_cast<double>(static_cast<float>(P(harness::initial_value(p, i)))));
    s.m.assign(model_sizes[p], 0);
    s.v.assign(model_sizes[p], 0);
    s.vmax.assign(model_sizes[p], 0);
    s.buf.assign(model_sizes[p], 0);
  }
  own.assign(n, 0);
  std::vector<std::vector<std::vector<double>>> trajectory;
  for (int t = 0; t < o.steps; ++t) {
    std::vector<std::vector<double>> avg(n);
    std::vector<bool> any(n, false);
    double norm = 0;
    for (std::size_t p = 0; p < n; ++p) {
      avg[p].assign(model_sizes[p], 0.0);
      for (int r = 0; r < o.world; ++r)
        for (int m = 0; m < o.micro_steps; ++m) {
          if (!reports(o, t, m, r, p)) continue;
          any[p] = true;
          for (std::size_t i = 0; i < model_sizes[p]; ++i)
            avg[p][i] += static_cast<double>(static_cast<float>(harness::gradient<G>(t, r, p, i, m)));
        }
      for (auto& a : avg[p]) {
        a /= o.world * o.micro_steps;
        norm += a * a;
      }
    }
    norm = std::sqrt(norm);
    const double clip = o.max_grad_norm > 0 ? std::min(1.0, o.max_grad_norm / (norm + 1e-6)) : 1.0;
    for (std::size_t p = 0; p < n; ++p) {
      for (auto& a : avg[p]) a *= clip;
      if (mode == zero::unreported_gradients::skip) {
        if (any[p]) harness::reference_update(h, ++own[p], ref[p], avg[p]);  // grad None: untouched
      } else {
        harness::reference_update(h, static_cast<std::uint64_t>(t) + 1, ref[p], avg[p]);
        own[p] = static_cast<std::uint64_t>(t) + 1;
      }
    }
    trajectory.emplace_back();
    for (std::size_t p = 0; p < n; ++p) trajectory.back().push_back(ref[p].p);
  }
  return trajectory;
}

// Runs the engine under o.mode with the pattern, against the reference of `semantics`.
template <class O>
outcome run(const pattern& o, const typename O::hyperparameters_type& h, zero::unreported_gradients semantics) {
  using P = typename O::param_type;
  using G = typename O::grad_type;
  std::vector<std::uint64_t> own;
  const auto trajectory = reference<typename O::rule_type, G>(o, h, semantics, own);
  const std::size_t n = model_sizes.size();
  outcome result;
  result.params.resize(static_cast<std::size_t>(o.world));
  std::mutex lock;
  auto relative = [](double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-30); };
  zero::thread_group group(o.world, {std::chrono::seconds(60)});
  group.run([&](zero::thread_communicator& base) {
    // an engine over another communicator type (another backend) gets an endpoint of its own
    using Comm = typename O::communicator_type;
    std::optional<Comm> separate;
    Comm* endpoint;
    if constexpr (std::is_same_v<Comm, zero::thread_communicator>) endpoint = &base;
    else endpoint = &separate.emplace(group, base.rank());
    Comm& comm = *endpoint;
    const int rank = comm.rank();
    std::vector<std::vector<P>> storage(n);
    std::vector<zero::parameter<P>> params;
    for (std::size_t p = 0; p < n; ++p) {
      for (std::size_t i = 0; i < model_sizes[p]; ++i) storage[p].push_back(P(harness::initial_value(p, i)));
      params.push_back({"p" + std::to_string(p), {storage[p].data(), storage[p].size()}});
    }
    typename O::options_type options;
    options.hyperparameters = h;
    options.layout.bucket_elements = 61;
    options.layout.alignment = 4;
    options.max_grad_norm = o.max_grad_norm;
    options.unreported = o.mode;
    O opt(comm, params, options);
    std::vector<std::vector<G>> grads(n);
    std::vector<std::size_t> order(n);
    std::mt19937_64 rng(o.seed * 1000 + static_cast<std::uint64_t>(rank));
    double value_error = 0, param_error = 0;
    for (int t = 0; t < o.steps; ++t) {
      for (int m = 0; m < o.micro_steps; ++m) {
        if (m > 0) opt.end_micro_step();
        std::iota(order.begin(), order.end(), 0);
        if (o.order == harness::report_order::random) std::shuffle(order.begin(), order.end(), rng);
        else std::reverse(order.begin(), order.end());
        for (std::size_t p : order) {
          if (!reports(o, t, m, rank, p)) {
            if (rank % 2 == 0) opt.gradient_unused(p);  // not a report
            continue;
          }
          grads[p].resize(model_sizes[p]);
          for (std::size_t i = 0; i < model_sizes[p]; ++i) grads[p][i] = harness::gradient<G>(t, rank, p, i, m);
          opt.gradient_ready(p, {grads[p].data(), grads[p].size()});
        }
      }
      opt.step();
      const auto& expected = trajectory[static_cast<std::size_t>(t)];
      for (const auto& piece : opt.owned_pieces()) {
        const std::size_t at = O::stage_value == zero::stage0 ? piece.flat_offset : piece.shard_offset;
        for (std::size_t i = 0; i < piece.count; ++i) {
          // stage 0 without master weights updates the parameters themselves
          const float got = opt.values().empty() ? static_cast<float>(storage[piece.param][piece.param_offset + i])
                                                 : static_cast<float>(opt.values()[at + i]);
          value_error = std::max(value_error, relative(static_cast<double>(got), expected[piece.param][piece.param_offset + i]));
        }
      }
      for (std::size_t p = 0; p < n; ++p)
        for (std::size_t i = 0; i < model_sizes[p]; ++i)
          param_error = std::max(param_error, relative(static_cast<double>(static_cast<float>(storage[p][i])),
                                                       static_cast<double>(static_cast<float>(P(static_cast<float>(expected[p][i]))))));
    }
    std::size_t count_errors = 0;
    for (std::size_t p = 0; p < n; ++p)
      if (opt.step_of(p) != own[p]) ++count_errors;
    if (opt.step_count() != static_cast<std::uint64_t>(o.steps)) ++count_errors;
    std::vector<std::vector<float>> final_params(n);
    for (std::size_t p = 0; p < n; ++p)
      for (auto v : storage[p]) final_params[p].push_back(static_cast<float>(v));
    std::lock_guard guard(lock);
    result.max_value_error = std::max(result.max_value_error, value_error);
    result.max_param_error = std::max(result.max_param_error, param_error);
    result.step_count_errors += count_errors;
    result.params[static_cast<std::size_t>(rank)] = std::move(final_params);
  });
  for (int r = 1; r < o.world; ++r)
    if (result.params[static_cast<std::size_t>(r)] != result.params[0]) ++result.rank_disagreements;
  return result;
}

template <class O>
void check_against(const pattern& o, const typename O::hyperparameters_type& h, bool show_the_difference) {
  CAPTURE(o.world);
  CAPTURE(o.micro_steps);
  CAPTURE(o.max_grad_norm);
  const outcome r = run<O>(o, h, o.mode);
  CHECK(r.max_value_error < fp32_bound);  // the fp32 values (master weights with bf16 parameters)
  if constexpr (std::is_same_v<typename O::param_type, float>) CHECK(r.max_param_error < fp32_bound);
  else CHECK(r.max_param_error <= 0x1.0p-7);  // bf16(reference) may round one ulp the other way
  CHECK(r.rank_disagreements == 0);
  CHECK(r.step_count_errors == 0);
  if (show_the_difference) {
    // the other semantics' reference is far from this run: the test tells the two apart
    pattern other = o;
    other.mode = o.mode == zero::unreported_gradients::skip ? zero::unreported_gradients::zero : zero::unreported_gradients::skip;
    const outcome crossed = run<O>(o, h, other.mode);
    CHECK(crossed.max_value_error > 1e-4);
  }
}

// Every stage and partitioner, worlds 1, 2, 3, 5 (backward order at odd worlds, two micro-steps
// at world 3, clipping in stage 1 contiguous), and bf16 with fp32 master weights.
template <class Rule>
void check_every_stage(const typename Rule::hyperparameters& h, zero::unreported_gradients mode) {
  auto sweep = [&]<zero::stage S, class Part, class Prec>(std::initializer_list<int> worlds, double clip) {
    using O = zero::optimizer<S, Prec, Rule, Part>;
    bool first = true;
    for (int world : worlds) {
      pattern o;
      o.world = world;
      o.mode = mode;
      o.seed = 7 + static_cast<std::uint64_t>(world);
      o.order = world % 2 == 1 ? harness::report_order::backward : harness::report_order::random;
      o.micro_steps = world == 3 ? 2 : 1;
      o.max_grad_norm = clip;
      check_against<O>(o, h, first);
      first = false;
    }
  };
  using zero::stage0, zero::stage1, zero::stage2;
  using B = zero::bucketed_partitioner;
  using C = zero::contiguous_partitioner;
  using F = zero::fp32_precision;
  sweep.template operator()<stage0, B, F>({1, 2, 3, 5}, 0.0);
  sweep.template operator()<stage1, B, F>({1, 2, 3, 5}, 0.0);
  sweep.template operator()<stage2, B, F>({1, 2, 3, 5}, 0.0);
  sweep.template operator()<stage1, C, F>({2, 3, 5}, 1.0);
  sweep.template operator()<stage2, C, F>({2, 3, 5}, 0.0);
  sweep.template operator()<stage2, B, zero::bf16_mixed>({2, 3}, 0.0);
  sweep.template operator()<stage1, C, zero::bf16_mixed>({3}, 0.0);
}

template <class Rule>
typename Rule::hyperparameters hyperparameters() {
  auto h = harness::rule_hyperparameters<Rule>();  // lr 1e-2, weight decay 0.05, SGD momentum 0.9
  if constexpr (std::is_same_v<Rule, zero::sgd>) h.dampening = 0.1;  // buf = g on the first step, (1 - 0.1) g after
  if constexpr (std::is_same_v<Rule, zero::adagrad>) h.lr_decay = 0.05;
  return h;
}

constexpr auto skip = zero::unreported_gradients::skip;

// The host backend taking at most two constants per update call, as a device backend takes
// `max_groups`: it refuses more, and counts its calls.
std::atomic<int> limited_calls{0};
struct two_constants_backend : zero::host_backend {
  static constexpr std::size_t max_groups = 2;
  using host_backend::host_backend;
  template <class C, class Run>
  static void check(const C& c, const Run& runs) {
    if (c.size() > max_groups) throw std::logic_error("update given " + std::to_string(c.size()) + " constants");
    for (const auto& r : runs)
      if (r.group >= c.size()) throw std::logic_error("a run names constants " + std::to_string(r.group) + " of " + std::to_string(c.size()));
    ++limited_calls;
  }
  template <zero::elementwise_rule Rule, class V, class A, class P>
  double update(std::span<const typename Rule::constants> c, std::span<const zero::update_run<V, A, P>> runs, float factor,
                const zero::detail::value_rounding<V>& round, std::uint64_t id_base, bool with_norm) {
    check(c, runs);
    return host_backend::update<Rule>(c, runs, factor, round, id_base, with_norm);
  }
  template <zero::tensorwise_rule Rule, class V, class A, class P>
  void tensor_sums(std::span<const typename Rule::constants> c, std::span<const zero::update_run<V, A, P>> pieces, float factor,
                   double* sums) {
    check(c, pieces);
    host_backend::tensor_sums<Rule>(c, pieces, factor, sums);
  }
  template <zero::tensorwise_rule Rule, class V, class A, class P>
  void tensor_update(std::span<const typename Rule::constants> c, std::span<const zero::update_run<V, A, P>> pieces,
                     const float* trust, const zero::detail::value_rounding<V>& round, std::uint64_t id_base) {
    check(c, pieces);
    host_backend::tensor_update<Rule>(c, pieces, trust, round, id_base);
  }
};
struct two_constants_communicator : zero::thread_communicator {
  using thread_communicator::thread_communicator;
  using backend_type = two_constants_backend;
};

// More distinct (group, own step) constants than the backend takes: several update calls a step,
// each within the limit, equal to the reference and bitwise equal to one call.
template <class Rule, zero::stage S>
void check_split_updates() {
  using Limited = zero::optimizer<S, zero::fp32_precision, Rule, zero::bucketed_partitioner, two_constants_communicator>;
  using Unlimited = zero::optimizer<S, zero::fp32_precision, Rule, zero::bucketed_partitioner>;
  static_assert(Limited::max_groups == 2);
  for (int world : {1, 3}) {
    CAPTURE(world);
    pattern o;
    o.world = world;
    const auto h = hyperparameters<Rule>();
    limited_calls = 0;
    const outcome limited = run<Limited>(o, h, skip);
    CHECK(limited.max_value_error < fp32_bound);
    CHECK(limited.rank_disagreements == 0);
    CHECK(limited.step_count_errors == 0);
    CHECK(limited_calls > world * o.steps * (zero::tensorwise_rule<Rule> ? 2 : 1));  // more than one call a step on some rank
    const outcome unlimited = run<Unlimited>(o, h, skip);
    CHECK(limited.params == unlimited.params);
  }
}

}  // namespace

TEST_SUITE("equivalence") {
  TEST_CASE("unreported gradients: skip equals torch.optim's grad None semantics / AdamW") {
    check_every_stage<zero::adamw>(hyperparameters<zero::adamw>(), skip);
  }
  TEST_CASE("unreported gradients: skip equals torch.optim's grad None semantics / Adam") {
    check_every_stage<zero::adam>(hyperparameters<zero::adam>(), skip);
  }
  TEST_CASE("unreported gradients: skip equals torch.optim's grad None semantics / SGD with momentum and dampening") {
    check_every_stage<zero::sgd>(hyperparameters<zero::sgd>(), skip);
  }
  TEST_CASE("unreported gradients: skip equals torch.optim's grad None semantics / SGD with nesterov") {
    auto h = hyperparameters<zero::sgd>();
    h.dampening = 0;
    h.nesterov = true;
    check_every_stage<zero::sgd>(h, skip);
  }
  TEST_CASE("unreported gradients: skip equals torch.optim's grad None semantics / Lion") {
    check_every_stage<zero::lion>(hyperparameters<zero::lion>(), skip);
  }
  TEST_CASE("unreported gradients: skip equals torch.optim's grad None semantics / Adagrad with lr_decay") {
    check_every_stage<zero::adagrad>(hyperparameters<zero::adagrad>(), skip);
  }
  TEST_CASE("unreported gradients: skip equals torch.optim's grad None semantics / LAMB") {
    check_every_stage<zero::lamb>(hyperparameters<zero::lamb>(), skip);
  }

  TEST_CASE("unreported gradients: more constants than the backend takes are split across update calls") {
    check_split_updates<zero::adamw, zero::stage2>();
    check_split_updates<zero::adagrad, zero::stage1>();
    check_split_updates<zero::lamb, zero::stage2>();
    check_split_updates<zero::lamb, zero::stage0>();
  }

  TEST_CASE("unreported gradients: zero (the default) equals the zero-gradient reference / every rule") {
    constexpr auto zero_mode = zero::unreported_gradients::zero;
    auto default_is_zero = zero::optimizer_options<zero::adamw>{};
    CHECK(default_is_zero.unreported == zero_mode);
    auto some = [&]<class Rule>(const typename Rule::hyperparameters& h) {
      for (int world : {1, 3}) {
        pattern o;
        o.world = world;
        o.mode = zero_mode;
        o.micro_steps = world == 3 ? 2 : 1;
        check_against<zero::optimizer<zero::stage2, zero::fp32_precision, Rule, zero::bucketed_partitioner>>(o, h, world == 3);
        check_against<zero::optimizer<zero::stage1, zero::fp32_precision, Rule, zero::contiguous_partitioner>>(o, h, false);
        check_against<zero::optimizer<zero::stage0, zero::fp32_precision, Rule, zero::bucketed_partitioner>>(o, h, false);
      }
    };
    some.template operator()<zero::adamw>(hyperparameters<zero::adamw>());
    some.template operator()<zero::adam>(hyperparameters<zero::adam>());
    some.template operator()<zero::sgd>(hyperparameters<zero::sgd>());
    some.template operator()<zero::lion>(hyperparameters<zero::lion>());
    some.template operator()<zero::adagrad>(hyperparameters<zero::adagrad>());
    some.template operator()<zero::lamb>(hyperparameters<zero::lamb>());
  }
}

TEST_SUITE("reliability") {
  TEST_CASE("unreported gradients: a step skipped for a non-finite gradient advances no parameter's count under skip") {
    using O = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>;
    zero::thread_group group(2, {std::chrono::seconds(30)});
    group.run([&](zero::thread_communicator& comm) {
      std::vector<std::vector<float>> storage{std::vector<float>(5, 1.0f), std::vector<float>(7, 1.0f), std::vector<float>(3, 1.0f)};
      std::vector<zero::parameter<float>> params;
      for (std::size_t p = 0; p < storage.size(); ++p) params.push_back({"w" + std::to_string(p), {storage[p].data(), storage[p].size()}});
      O::options_type options;
      options.unreported = skip;
      options.on_nonfinite = zero::nonfinite_policy::skip_step;
      O opt(comm, params, options);
      CHECK(opt.unreported() == skip);
      std::vector<float> g(7, 0.5f);
      auto report = [&](std::size_t p, float v) {
        std::fill(g.begin(), g.end(), v);
        opt.gradient_ready(p, {g.data(), storage[p].size()});
      };
      report(0, 0.5f);  // step 1: parameters 0 and 1 (2 on rank 1 only)
      report(1, 0.5f);
      if (comm.rank() == 1) report(2, 0.5f);
      CHECK(!opt.step().skipped);
      CHECK(opt.step_of(0) == 1);
      CHECK(opt.step_of(2) == 1);
      const auto before = storage;
      report(0, 0.5f);  // step 2: a NaN on rank 0: every rank skips, nothing advances
      if (comm.rank() == 0) report(1, std::numeric_limits<float>::quiet_NaN());
      const auto skipped = opt.step();
      CHECK(skipped.skipped);
      CHECK(opt.step_count() == 1);
      for (std::size_t p = 0; p < 3; ++p) CHECK(opt.step_of(p) == 1);
      CHECK(storage == before);
      report(0, 0.5f);  // step 3: parameter 0 only
      CHECK(!opt.step().skipped);
      CHECK(opt.step_of(0) == 2);
      CHECK(opt.step_of(1) == 1);
      CHECK(storage[1] == before[1]);  // untouched: no weight decay either
      CHECK(storage[0] != before[0]);
      CHECK_THROWS_WITH_AS(opt.step_of(3), doctest::Contains("step_of: parameter index 3 on rank"), zero::usage_error);
      CHECK_THROWS_WITH_AS(opt.restore_parameter_steps(std::vector<std::uint64_t>{1, 2, 9}),
                           doctest::Contains("parameter 'w2' (#2) has 9 updates, more than the optimizer's 2 steps"), zero::usage_error);
    });
  }
}

