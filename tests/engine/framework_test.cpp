// Stage 2 driven as a training framework drives it: parameters registered in model order,
// gradients reported in backward order (and in random orders), each gradient in a buffer of its
// own that is overwritten with NaN and recycled the moment the engine releases it. Against the
// double-precision reference, every precision, both partitioners, worlds 1 to 8; the gradient
// bytes the framework must hold stay within the engine's stated bound; units are reduced as
// soon as they fill; a learned or given layout order; copy on report.
#include <doctest/doctest.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "engine/harness.hpp"

namespace {

// fp32 against the double reference over 20 steps: each step rounds a value at most twice
// (decay, then the update), each rounding within 2^-24 relative.
constexpr double fp32_bound = 20 * 2 * 0x1.0p-24;

// Precisions, each with the bound its values keep against the double reference over 20 AdamW
// steps (lr 1e-2) and the loss scale its gradients carry.
struct fp32_run {
  using precision = zero::fp32_precision;
  static constexpr double bound = fp32_bound, loss_scale = 0;
};
struct bf16_mixed_run {  // bf16 gradients (the reference rounds them too), fp32 master weights
  using precision = zero::bf16_mixed;
  static constexpr double bound = fp32_bound, loss_scale = 0;
};
struct fp16_mixed_run {  // fp16 gradients scaled by a fixed 1024, fp32 master weights
  using precision = zero::fp16_mixed;
  static constexpr double bound = fp32_bound, loss_scale = 1024;
};
struct bf16_comm_run {  // sums rounded to bf16 (8 bits) before the average: lr * steps * 2^-8
  using precision = zero::bf16_mixed_bf16_comm;
  static constexpr double bound = 2e-3, loss_scale = 0;
};
struct bf16_accum_run {  // the shard kept in bf16: as above
  using precision = zero::bf16_mixed_bf16_accum;
  static constexpr double bound = 2e-3, loss_scale = 0;
};
struct bf16_pure_run {  // the values themselves in bf16: each step rounds to 2^-8 relative
  using precision = zero::bf16_pure;
  static constexpr double bound = 20 * 0x1.0p-8, loss_scale = 0;
};

template <class Run>
struct contiguous : harness::config<zero::stage2, zero::contiguous_partitioner, typename Run::precision>, Run {};
template <class Run>
struct bucketed : harness::config<zero::stage2, zero::bucketed_partitioner, typename Run::precision>, Run {};

// One configuration in framework mode, checked against the reference and the release contract.
template <class Config>
harness::run_result check_framework(const harness::run_options& o) {
  auto with = o;
  with.framework = true;
  with.loss_scale = Config::loss_scale;
  const auto r = harness::run<typename Config::optimizer>(with, harness::adamw_hyperparameters());
  CHECK(r.max_value_error < Config::bound);
  CHECK(r.rank_disagreements == 0);
  CHECK(r.norm_disagreements == 0);
  CHECK(r.unreleased == 0);          // everything reported is released when the micro-step ends
  CHECK(r.release_mismatches == 0);  // gradient_released agrees with the notifications
  if (o.reports == harness::report_order::backward) {
    // the bound docs/design.md derives: one unit being filled plus the largest parameter's reports
    CHECK(r.framework_peak <= r.memory.framework_gradients);
    CHECK(r.framework_peak < r.gradient_bytes);  // some gradients were freed before backward ended
    CHECK(r.released_early > 0);
  }
  return r;
}

template <class Config>
void check_worlds() {
  for (int world = 1; world <= 8; ++world) {
    CAPTURE(world);
    harness::run_options o;
    o.world = world;
    o.bucket_elements = 64;  // several units at every world size
    o.alignment = world % 2 == 0 ? 4 : 1;
    o.order_seed = 11 + static_cast<std::uint64_t>(world);
    o.shared_weight = world % 3 == 0;
    o.skip_some = world % 4 == 1;  // with the unused parameters declared: the units need not wait for them
    o.declare_unused = true;
    // backward order, one staging buffer, blocking: reduced as each unit fills
    o.reports = harness::report_order::backward;
    const auto backward = check_framework<Config>(o);
    // backward order, pipelined through two buffers, gradients copied into them at once
    o.staging_buffers = 2;
    o.copy_on_report = true;
    const auto copied = check_framework<Config>(o);
    // a random order on every rank and every micro-step
    o.reports = harness::report_order::random;
    o.staging_buffers = 1 + static_cast<std::size_t>(world % 2);
    o.copy_on_report = world % 2 == 0;
    const auto shuffled = check_framework<Config>(o);
    // the same sums in the same rank order, whatever the report order, buffering and copying
    CHECK(copied.params == backward.params);
    CHECK(shuffled.params == backward.params);
    CHECK(copied.values == backward.values);
    CHECK(shuffled.values == backward.values);
    // copying into free staging buffers at once frees the framework's gradients sooner
    CHECK(copied.framework_peak <= backward.framework_peak);
  }
}

// Stage 2 at one rank with `layout.read_gradients_in_update`: the update reads the framework's
// gradients where they are, which are therefore held until the step; bitwise the run that copies
// them into the gradient buffer during backward, in every case the option covers (backward and
// random orders, unused and skipped parameters, clipping, slots) and the ones it hands back to
// the copy (a parameter reported twice, accumulation, a predivide factor, the overflow check).
template <class Config>
void check_read_in_update() {
  struct variant {
    const char* what;
    void (*set)(harness::run_options&);
  };
  const variant variants[] = {
      {"backward", [](harness::run_options&) {}},
      {"random", [](harness::run_options& o) { o.reports = harness::report_order::random; }},
      {"skipped and declared unused", [](harness::run_options& o) { o.skip_some = o.declare_unused = true; }},
      {"skipped, never declared", [](harness::run_options& o) { o.skip_some = true; }},
      {"clipped", [](harness::run_options& o) { o.max_grad_norm = 0.05; }},
      {"slots", [](harness::run_options& o) { o.slots = true; }},
      {"one unit per parameter", [](harness::run_options& o) { o.bucket_elements = 8; }},
      {"a weight reported twice", [](harness::run_options& o) { o.shared_weight = true; }},
      {"two micro-steps", [](harness::run_options& o) { o.micro_steps = 2; }},
      {"a predivide factor", [](harness::run_options& o) { o.predivide = 2; }},
      {"learned order", [](harness::run_options& o) { o.order = zero::gradient_order::learned; }},
  };
  for (const auto& v : variants) {
    const std::string what = v.what;
    CAPTURE(what);
    harness::run_options o;
    o.world = 1;
    o.bucket_elements = 64;
    o.alignment = 4;
    o.reports = harness::report_order::backward;
    o.loss_scale = Config::loss_scale;
    v.set(o);
    const auto copied = harness::run<typename Config::optimizer>(o, harness::adamw_hyperparameters());
    o.read_in_update = true;
    const auto read = harness::run<typename Config::optimizer>(o, harness::adamw_hyperparameters());
    CHECK(read.max_value_error < Config::bound);
    CHECK(read.params == copied.params);
    CHECK(read.values == copied.values);
    CHECK(read.max_norm_error == copied.max_norm_error);
    CHECK(read.unreleased == 0);
    CHECK(read.release_mismatches == 0);
    CHECK(read.memory.bytes == copied.memory.bytes);  // the engine's buffers are the same
    if (!o.slots && o.micro_steps == 1 && !o.shared_weight) {
      // held until the step: nothing released early, every gradient counted in the bound
      CHECK(read.released_early == 0);
      CHECK(read.framework_peak <= read.memory.framework_gradients);
      CHECK(read.memory.framework_gradients >= read.gradient_bytes);
    }
  }
}

// The reduce-scatters (or reduces to the owner) done after each report of eight layers of
// 1024 elements on two ranks, four reduction units, in backward order.
template <class Partitioner>
std::vector<std::uint64_t> reductions_after_each_report(zero::gradient_order order, std::size_t staging_buffers = 1) {
  constexpr std::size_t layers = 8, size = 1024;
  std::vector<std::uint64_t> counts;
  zero::thread_group group(2, {std::chrono::seconds(30)});
  group.run([&](zero::thread_communicator& comm) {
    std::vector<std::vector<float>> w(layers, std::vector<float>(size, 1.0f)), g(layers, std::vector<float>(size, 0.5f));
    std::vector<zero::parameter<float>> params;
    for (auto& v : w) params.push_back({"", {v.data(), v.size()}});
    using O = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, Partitioner>;
    typename O::options_type options;
    options.threads = 1;
    options.layout.bucket_elements = layers * size / 4;
    options.layout.staging_buffers = staging_buffers;
    options.layout.order = order;
    O opt(comm, params, options);
    REQUIRE(opt.plan().units.size() == 4u);
    auto reductions = [&] {
      const auto t = comm.traffic();
      return t.calls_of(zero::collective::reduce_scatter) + t.calls_of(zero::collective::reduce) +
             t.calls_of(zero::collective::all_reduce);
    };
    std::vector<std::uint64_t> mine;
    for (int step = 0; step < 2; ++step) {
      const auto before = reductions();
      for (std::size_t i = 0; i < layers; ++i) {
        const std::size_t p = layers - 1 - i;  // backward: the last layer first
        opt.gradient_ready(p, {g[p].data(), g[p].size()});
        if (step == 1) mine.push_back(reductions() - before);  // step 0 may be the one that learns the order
      }
      opt.step();
    }
    if (comm.rank() == 0) counts = mine;
  });
  return counts;
}

}  // namespace

TEST_SUITE("framework") {
  TEST_CASE_TEMPLATE("framework: stage 2 in model order with backward and random reports and poisoned releases / worlds 1-8",
                     Config, contiguous<fp32_run>, bucketed<fp32_run>, contiguous<bf16_mixed_run>, bucketed<bf16_mixed_run>,
                     contiguous<fp16_mixed_run>, bucketed<fp16_mixed_run>, contiguous<bf16_comm_run>, bucketed<bf16_comm_run>,
                     contiguous<bf16_accum_run>, bucketed<bf16_accum_run>, contiguous<bf16_pure_run>, bucketed<bf16_pure_run>) {
    check_worlds<Config>();
  }

  TEST_CASE_TEMPLATE("framework: at one rank the update may read the gradients where they are / bitwise the copying step",
                     Config, contiguous<fp32_run>, bucketed<fp32_run>, contiguous<bf16_mixed_run>, bucketed<bf16_mixed_run>,
                     contiguous<fp16_mixed_run>, bucketed<bf16_accum_run>, contiguous<bf16_pure_run>) {
    check_read_in_update<Config>();
  }

  TEST_CASE_TEMPLATE("framework: a unit is reduced as soon as its last gradient arrives / 0 1 1 2 2 3 3 4", Partitioner,
                     zero::contiguous_partitioner, zero::bucketed_partitioner) {
    const std::vector<std::uint64_t> as_they_fill{0, 1, 1, 2, 2, 3, 3, 4};
    // the default layout: the reverse of registration (model) order, the order backward reports in
    CHECK(reductions_after_each_report<Partitioner>(zero::gradient_order::reverse) == as_they_fill);
    // learned from the first step's reports
    CHECK(reductions_after_each_report<Partitioner>(zero::gradient_order::learned) == as_they_fill);
    // laid out in registration order, nothing can be reduced before the last gradient arrives
    CHECK(reductions_after_each_report<Partitioner>(zero::gradient_order::registration) ==
          std::vector<std::uint64_t>{0, 0, 0, 0, 0, 0, 0, 4});
  }

  TEST_CASE("framework: gradient accumulation releases every micro-step's gradients / stages 0 1 2") {
    for (int micro : {2, 4}) {
      for (int world : {1, 3, 4}) {
        CAPTURE(micro);
        CAPTURE(world);
        harness::run_options o;
        o.world = world;
        o.micro_steps = micro;
        o.bucket_elements = 37;
        o.skip_some = true;
        o.declare_unused = true;
        o.shared_weight = true;
        o.reports = harness::report_order::backward;
        check_framework<contiguous<fp32_run>>(o);
        check_framework<bucketed<bf16_mixed_run>>(o);
        o.copy_on_report = true;
        o.staging_buffers = 2;
        check_framework<bucketed<fp32_run>>(o);
        o.defer_reduction = true;  // accumulated locally: every span is read during its report
        o.framework = true;
        const auto deferred = harness::run<zero::optimizer<zero::stage2, zero::fp32_precision>>(o, harness::adamw_hyperparameters());
        CHECK(deferred.max_value_error < fp32_bound);
        CHECK(deferred.framework_peak == 0);
        CHECK(deferred.unreleased == 0);
        CHECK(deferred.memory.framework_gradients == 0);
        o.defer_reduction = false;
        for (const auto& r : {harness::run<zero::optimizer<zero::stage0, zero::fp32_precision>>(o, harness::adamw_hyperparameters()),
                              harness::run<zero::optimizer<zero::stage1, zero::bf16_mixed>>(o, harness::adamw_hyperparameters())}) {
          CHECK(r.max_value_error < fp32_bound);
          CHECK(r.framework_peak == 0);  // stages 0 and 1 read each span before gradient_ready returns
          CHECK(r.unreleased == 0);
          CHECK(r.release_mismatches == 0);
        }
      }
    }
  }

  TEST_CASE("framework: a learned order is rank 0's arrival order and every rank takes it / every stage") {
    for (int world : {1, 2, 3, 5}) {
      CAPTURE(world);
      harness::run_options o;
      o.world = world;
      o.bucket_elements = 61;
      o.framework = true;
      o.order = zero::gradient_order::learned;
      o.reports = harness::report_order::random;  // every rank its own order: rank 0's wins
      o.shared_weight = true;
      o.micro_steps = 2;
      const auto s2 = harness::run<zero::optimizer<zero::stage2, zero::fp32_precision>>(o, harness::adamw_hyperparameters());
      const auto s1 = harness::run<zero::optimizer<zero::stage1, zero::fp32_precision>>(o, harness::adamw_hyperparameters());
      const auto s0 = harness::run<zero::optimizer<zero::stage0, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>>(
          o, harness::adamw_hyperparameters());
      for (const auto* r : {&s0, &s1, &s2}) {
        CHECK(r->max_value_error < fp32_bound);
        CHECK(r->rank_disagreements == 0);
        CHECK(r->unreleased == 0);
        CHECK(r->release_mismatches == 0);
      }
      // the micro-step that learns holds every gradient until it ends; later ones stream
      CHECK(s2.learning_peak == s2.gradient_bytes);
    }
    // the plan follows rank 0's first arrival order on every rank
    zero::thread_group group(3);
    std::vector<std::vector<std::size_t>> orders(3);
    group.run([&](zero::thread_communicator& comm) {
      std::vector<std::vector<float>> w(6, std::vector<float>(40, 1.0f)), g = w;
      std::vector<zero::parameter<float>> params;
      for (auto& v : w) params.push_back({"w" + std::to_string(params.size()), {v.data(), v.size()}});
      zero::optimizer<zero::stage2, zero::fp32_precision>::options_type options;
      options.layout.order = zero::gradient_order::learned;
      options.layout.bucket_elements = 40;
      zero::optimizer<zero::stage2, zero::fp32_precision> opt(comm, params, options);
      CHECK(opt.order_pending());
      // rank 0 reports 2 5 0 3 and leaves 1 and 4 out; the others report in another order
      const std::vector<std::size_t> mine = comm.rank() == 0 ? std::vector<std::size_t>{2, 5, 0, 3} : std::vector<std::size_t>{0, 1, 2, 3, 4, 5};
      for (std::size_t p : mine) opt.gradient_ready(p, {g[p].data(), g[p].size()});
      opt.step();
      CHECK_FALSE(opt.order_pending());
      orders[static_cast<std::size_t>(comm.rank())] = opt.plan().order();
    });
    const std::vector<std::size_t> expected{2, 5, 0, 3, 4, 1};  // the unreported last, in reverse registration order
    for (const auto& order : orders) CHECK(order == expected);
  }

  TEST_CASE("framework: a given order lays the parameters out and a wrong one is refused naming the rank") {
    zero::thread_group group(2);
    group.run([&](zero::thread_communicator& comm) {
      std::vector<std::vector<float>> w(4, std::vector<float>(10, 1.0f));
      std::vector<zero::parameter<float>> params;
      for (auto& v : w) params.push_back({"w" + std::to_string(params.size()), {v.data(), v.size()}});
      using O = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>;
      O::options_type options;
      options.layout.order = zero::gradient_order::given;
      options.layout.given_order = {1, 3, 0, 2};
      O opt(comm, params, options);
      CHECK(opt.plan().order() == options.layout.given_order);
      options.layout.given_order = comm.rank() == 1 ? std::vector<std::size_t>{1, 3, 3, 2} : std::vector<std::size_t>{1, 3, 0, 2};
      if (comm.rank() == 1)
        CHECK_THROWS_WITH_AS(O(comm, params, options), doctest::Contains("layout.given_order on rank 1 names parameter 'w3' (#3) twice"),
                             zero::usage_error);
      else
        CHECK_THROWS_WITH_AS(O(comm, params, options), doctest::Contains("rank(s) 1 refused"), zero::usage_error);
      options.layout.order = zero::gradient_order::reverse;  // given_order without order = given
      CHECK_THROWS_WITH_AS(O(comm, params, options), doctest::Contains("layout.order is not gradient_order::given"),
                           zero::usage_error);
      // ranks with different orders build different layouts: every rank throws, naming them
      options.layout.order = zero::gradient_order::given;
      options.layout.given_order = comm.rank() == 1 ? std::vector<std::size_t>{0, 1, 2, 3} : std::vector<std::size_t>{1, 3, 0, 2};
      CHECK_THROWS_AS(O(comm, params, options), zero::mismatch_error);
    });
  }

  TEST_CASE("framework: with copy on report a span whose unit has a free staging buffer is released before the call returns") {
    zero::thread_group group(2);
    group.run([&](zero::thread_communicator& comm) {
      constexpr std::size_t layers = 8, size = 100;
      std::vector<std::vector<float>> w(layers, std::vector<float>(size, 1.0f)), g = w;
      std::vector<zero::parameter<float>> params;
      for (auto& v : w) params.push_back({"", {v.data(), v.size()}});
      using O = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>;
      O::options_type options;
      options.layout.bucket_elements = 2 * size;  // about two layers a unit
      options.layout.copy_on_report = true;
      std::vector<std::size_t> released;
      options.on_gradients_released = [&](std::span<const std::size_t> ps) { released.insert(released.end(), ps.begin(), ps.end()); };
      O opt(comm, params, options);
      for (std::size_t i = 0; i < layers; ++i) {
        const std::size_t p = layers - 1 - i;
        opt.gradient_ready(p, {g[p].data(), g[p].size()});
        // a layer lies in at most two units: the one filling and the next, whose buffer is the
        // filling one's until that is reduced; all of it is copied unless it reaches into the next
        const auto pieces = opt.plan().pieces_of(p);
        const bool within_one_unit = pieces.front().unit == pieces.back().unit;
        if (within_one_unit) CHECK(opt.gradient_released(p));
        CHECK(opt.gradient_released(p) == (std::find(released.begin(), released.end(), p) != released.end()));
      }
      opt.step();
      CHECK(released.size() == layers);
    });
  }
}
