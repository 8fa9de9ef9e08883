// Stage 3 driven as a framework drives it: layers registered in model order, each layer a gather
// group; every step gathers each layer for forward and again, in reverse, for backward, computes
// each gradient from the gathered values (so a wrong gather changes every later step), reports
// the layer's gradients in a random order per rank and releases the layer; each gradient buffer
// is poisoned with NaN the moment the engine releases it. Against stage 2 run the same way on
// the framework's own parameters: bitwise the same parameters after every step, every precision
// bundle and every rule, both partitioners, worlds 1 to 8, odd sizes and small buckets (parameters cut
// across units and ranks). Also: memory() equals expected_memory, the bytes the communicator
// moves (2 gathers of every parameter per step on top of stage 2's reductions), and the errors
// of a framework that gathers out of turn, touches a group it did not gather or forgets a release.
#include <doctest/doctest.h>

#include <mutex>
#include <string>
#include <vector>

#include "engine/stage3_driver.hpp"

namespace {

using namespace stage3_driver;

// Every rank's run on thread ranks: rank 0's values, and how many ranks differ from them.
struct run_result {
  rank_result first;
  std::size_t disagreements = 0;
  std::size_t poisoned_reads = 0;
  std::size_t initialized_elements = 0;  // over every rank
};

template <class Optimizer>
run_result run(const run_options& o, const typename Optimizer::hyperparameters_type& h) {
  run_result result;
  std::vector<rank_result> ranks(static_cast<std::size_t>(o.world));
  zero::thread_group group(o.world, {std::chrono::seconds(60)});
  group.run([&](zero::thread_communicator& comm) {
    ranks[static_cast<std::size_t>(comm.rank())] = run_rank<Optimizer>(comm, o, h);
  });
  for (const rank_result& r : ranks) {
    // every rank the same values, and the same gathers prefetched (the ranks agree on each)
    if (!same_bits(r.values, ranks[0].values) || r.prefetched != ranks[0].prefetched) ++result.disagreements;
    result.poisoned_reads += r.poisoned_reads;
    result.initialized_elements += r.initialized_elements;
  }
  result.first = std::move(ranks[0]);
  return result;
}

// Stage 3 against stage 2 (and stages 0 and 1) with the same precision, rule and partitioner,
// over worlds 1 to 8.
template <class Precision, class Rule, class Partitioner>
void check_against_stage2(const typename Rule::hyperparameters& h, double max_grad_norm = 0, double loss_scale = 0) {
  using S2 = zero::optimizer<zero::stage2, Precision, Rule, Partitioner>;
  using S3 = zero::optimizer<zero::stage3, Precision, Rule, Partitioner>;
  for (int world : {1, 2, 3, 4, 5, 7, 8}) {
    CAPTURE(world);
    run_options o;
    o.world = world;
    o.seed = static_cast<std::uint64_t>(world);
    o.max_grad_norm = max_grad_norm;
    o.loss_scale = loss_scale;
    const run_result two = run<S2>(o, h);
    const run_result three = run<S3>(o, h);
    // and stages 0 and 1 (stage 0 also keeps its gradients whole: the same sums, in rank order)
    CHECK(same_bits(run<zero::optimizer<zero::stage0, Precision, Rule, Partitioner>>(o, h).first.values, two.first.values));
    CHECK(same_bits(run<zero::optimizer<zero::stage1, Precision, Rule, Partitioner>>(o, h).first.values, two.first.values));
    CHECK(three.disagreements == 0);
    CHECK(two.disagreements == 0);
    CHECK(three.poisoned_reads == 0);
    CHECK(same_bits(three.first.values, two.first.values));
    // the parameters moved: the test would see a gather of stale values
    CHECK(three.first.values.front() != three.first.values.back());
    CHECK(three.first.memory == three.first.expected);
    CHECK(three.first.memory.of(zero::memory_kind::parameter_shard) > 0);
    if (world > 1) {
      // forward and backward each broadcast every parameter element once; the reductions are
      // stage 2's (the after-step gathers of the test come after the count)
      const std::size_t psi = model(run_options{}.layers).elements();
      using P = typename S3::param_type;
      CHECK(three.first.step_traffic.bytes_of(zero::collective::broadcast) == 2 * psi * sizeof(P));
      for (auto c : {zero::collective::reduce_scatter, zero::collective::reduce, zero::collective::all_reduce})
        CHECK(three.first.step_traffic.bytes_of(c) == two.first.step_traffic.bytes_of(c));
    }
  }
}


}  // namespace

TEST_SUITE("equivalence") {
  TEST_CASE("stage 3: bitwise stage 2 / fp32 AdamW contiguous") {
    check_against_stage2<zero::fp32_precision, zero::adamw, zero::contiguous_partitioner>(adamw_h());
  }
  TEST_CASE("stage 3: bitwise stage 2 / fp32 AdamW bucketed with clipping") {
    check_against_stage2<zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>(adamw_h(), 0.5);
  }
  TEST_CASE("stage 3: bitwise stage 2 / bf16 with fp32 master AdamW contiguous with clipping") {
    check_against_stage2<zero::bf16_mixed, zero::adamw, zero::contiguous_partitioner>(adamw_h(), 0.5);
  }
  TEST_CASE("stage 3: bitwise stage 2 / bf16 with fp32 master AdamW bucketed") {
    check_against_stage2<zero::bf16_mixed, zero::adamw, zero::bucketed_partitioner>(adamw_h());
  }
  TEST_CASE("stage 3: bitwise stage 2 / fp16 with fp32 master SGD momentum contiguous") {
    zero::sgd::hyperparameters h;
    h.lr = 1e-2;
    h.momentum = 0.9;
    check_against_stage2<zero::fp16_mixed, zero::sgd, zero::contiguous_partitioner>(h, 0, 1024);
  }
  TEST_CASE("stage 3: bitwise stage 2 / bf16 pure Lion bucketed") {
    zero::lion::hyperparameters h;
    h.lr = 1e-3;
    check_against_stage2<zero::bf16_pure, zero::lion, zero::bucketed_partitioner>(h);
  }
  TEST_CASE("stage 3: bitwise stage 2 / bf16 with fp32 master LAMB contiguous") {
    zero::lamb::hyperparameters h;
    h.lr = 1e-2;
    check_against_stage2<zero::bf16_mixed, zero::lamb, zero::contiguous_partitioner>(h);
  }
  TEST_CASE("stage 3: bitwise stage 2 / bf16 with fp32 master and bf16 reductions Adam with AMSGrad bucketed with clipping") {
    zero::adam::hyperparameters h;
    h.lr = 1e-2;
    h.weight_decay = 0.01;
    h.amsgrad = true;
    check_against_stage2<zero::bf16_mixed_bf16_comm, zero::adam, zero::bucketed_partitioner>(h, 0.5);
  }
  TEST_CASE("stage 3: bitwise stage 2 / bf16 with fp32 master and bf16 gradient shards Adagrad contiguous") {
    zero::adagrad::hyperparameters h;
    h.lr = 1e-2;
    h.lr_decay = 0.01;
    h.initial_accumulator_value = 0.1;
    check_against_stage2<zero::bf16_mixed_bf16_accum, zero::adagrad, zero::contiguous_partitioner>(h);
  }
}

namespace {

// Stage 3 with prefetching set up as `o` says, against stage 2 run the same way (forward
// order, micro-steps, staging buffers): the same bits after every step; returns stage 3's run.
template <class Precision, class Partitioner>
rank_result check_prefetching(const run_options& o) {
  using S2 = zero::optimizer<zero::stage2, Precision, zero::adamw, Partitioner>;
  using S3 = zero::optimizer<zero::stage3, Precision, zero::adamw, Partitioner>;
  const run_result two = run<S2>(o, adamw_h());
  const run_result three = run<S3>(o, adamw_h());
  // registered without values: every element filled once, by the rank holding it
  CHECK(three.initialized_elements == (o.without_values ? model(o.layers).elements() : 0));
  CHECK(three.disagreements == 0);
  CHECK(three.poisoned_reads == 0);
  CHECK(same_bits(three.first.values, two.first.values));
  CHECK(three.first.values.front() != three.first.values.back());
  CHECK(three.first.memory == three.first.expected);
  if (o.world > 1) {
    using P = typename S3::param_type;
    const model m(o.layers);
    // a step moves what its gathers ask for: every parameter twice a micro-step (forward and
    // backward; prefetches may start before the step's first gather, so only without them)
    if (o.prefetch_groups == 0 || o.gather_buffers == 1)
      CHECK(three.first.step_traffic.bytes_of(zero::collective::broadcast) == 2 * static_cast<std::size_t>(o.micro_steps) * m.elements() * sizeof(P));
    // over the whole run, prefetching moves no more than the gathers asked for, but for the groups
    // still prefetched when the run ended (at most prefetch_groups) and, off the order, the
    // groups dropped
    std::size_t largest_group = 0;
    for (std::uint32_t l = 0; l < o.layers; ++l) largest_group = std::max(largest_group, m.sizes[2 * l] + m.sizes[2 * l + 1]);
    CHECK(three.first.broadcast_bytes >= three.first.asked_bytes);
    if (!o.shuffle_forward) CHECK(three.first.broadcast_bytes <= three.first.asked_bytes + o.prefetch_groups * largest_group * sizeof(P));
  }
  REQUIRE(three.first.gathers.size() == static_cast<std::size_t>(o.steps));
  return three.first;
}

// Each step gathers every layer three times (the test reading the values after the previous
// step, forward, backward); the first step has no reads before it.
std::uint32_t gathers_in_step(const run_options& o, int step) {
  return (step == 0 ? 2 : 3) * o.layers * static_cast<std::uint32_t>(o.micro_steps) - (step == 0 ? 0 : o.layers * (o.micro_steps - 1));
}

}  // namespace

TEST_SUITE("equivalence") {
  TEST_CASE("stage 3 prefetching: the same bits with prefetching off and on / every gather but two per step prefetched") {
    for (int world : {1, 2, 3, 5, 8}) {
      CAPTURE(world);
      run_options o;
      o.world = world;
      o.seed = static_cast<std::uint64_t>(world) + 40;
      o.max_grad_norm = 0.5;
      o.prefetch_groups = 0;  // off
      rank_result off = check_prefetching<zero::bf16_mixed, zero::contiguous_partitioner>(o);
      for (int t = 0; t < o.steps; ++t) {
        CHECK(off.gathers[static_cast<std::size_t>(t)] == gathers_in_step(o, t));
        CHECK(off.prefetched[static_cast<std::size_t>(t)] == 0);
      }
      o.prefetch_groups = 1;  // on (the default), in the order the last step gathered in
      const rank_result on = check_prefetching<zero::bf16_mixed, zero::contiguous_partitioner>(o);
      CHECK(on.prefetched[0] == 0);  // nothing learned before the first step
      // from the third step on the order repeats: every gather is prefetched but the step's first
      // and backward's first (the group forward just released: it cannot be in two buffers)
      for (int t = 2; t < o.steps; ++t) CHECK(on.prefetched[static_cast<std::size_t>(t)] == on.gathers[static_cast<std::size_t>(t)] - 2);
      o.gather_buffers = 1;  // no buffer free while the framework holds one: nothing prefetched
      const rank_result one = check_prefetching<zero::bf16_mixed, zero::contiguous_partitioner>(o);
      for (std::uint32_t n : one.prefetched) CHECK(n == 0);
    }
  }

  TEST_CASE("stage 3 prefetching: a given order prefetches from the first step / deeper prefetching") {
    for (int world : {2, 3, 7}) {
      CAPTURE(world);
      run_options o;
      o.world = world;
      o.seed = static_cast<std::uint64_t>(world) + 50;
      o.gather_order = step_order(o.layers);  // forward, then backward
      const rank_result given = check_prefetching<zero::fp32_precision, zero::bucketed_partitioner>(o);
      CHECK(given.prefetched[0] == given.gathers[0] - 2);
      o.gather_order.clear();
      o.gather_buffers = 4;
      o.prefetch_groups = 3;  // three groups ahead
      const rank_result deep = check_prefetching<zero::fp32_precision, zero::bucketed_partitioner>(o);
      for (int t = 2; t < o.steps; ++t) CHECK(deep.prefetched[static_cast<std::size_t>(t)] == deep.gathers[static_cast<std::size_t>(t)] - 2);
    }
  }

  TEST_CASE("stage 3 prefetching: forward off the learned order every step / prefetched groups dropped and the same bits") {
    for (int world : {1, 3, 4, 6}) {
      CAPTURE(world);
      run_options o;
      o.world = world;
      o.seed = static_cast<std::uint64_t>(world) + 60;
      o.steps = 8;
      o.shuffle_forward = true;
      o.gather_buffers = 3;
      o.prefetch_groups = 2;
      const rank_result r = check_prefetching<zero::bf16_mixed, zero::bucketed_partitioner>(o);
      std::uint32_t missed = 0;
      for (int t = 1; t < o.steps; ++t) missed += r.gathers[static_cast<std::size_t>(t)] - r.prefetched[static_cast<std::size_t>(t)];
      CHECK(missed > 2 * static_cast<std::uint32_t>(o.steps - 1));  // the shuffles cost prefetches
      std::uint32_t hits = 0;
      for (std::uint32_t n : r.prefetched) hits += n;
      CHECK(hits > 0);
    }
  }

  TEST_CASE("stage 3 registered without values: each rank fills in its own pieces / the same bits as stage 2") {
    for (int world : {1, 2, 3, 5, 8}) {
      CAPTURE(world);
      run_options o;
      o.world = world;
      o.seed = static_cast<std::uint64_t>(world) + 80;
      o.without_values = true;
      o.max_grad_norm = 0.5;
      check_prefetching<zero::bf16_mixed, zero::contiguous_partitioner>(o);
      o.bucket_elements = 41;
      check_prefetching<zero::fp32_precision, zero::bucketed_partitioner>(o);
    }
  }

  TEST_CASE("stage 3 prefetching: pipelined reductions and micro-steps / the same bits") {
    for (int world : {2, 3, 5}) {
      CAPTURE(world);
      run_options o;
      o.world = world;
      o.seed = static_cast<std::uint64_t>(world) + 70;
      o.staging_buffers = 2;
      o.micro_steps = 3;
      o.bucket_elements = 53;
      const rank_result r = check_prefetching<zero::bf16_mixed, zero::contiguous_partitioner>(o);
      for (int t = 0; t < o.steps; ++t) CHECK(r.gathers[static_cast<std::size_t>(t)] == gathers_in_step(o, t));
      // not prefetched: each micro-step's first forward gather (but the first micro-step's, which
      // follows the test's reads) and first backward gather, and the step's first
      for (int t = 2; t < o.steps; ++t)
        CHECK(r.prefetched[static_cast<std::size_t>(t)] == r.gathers[static_cast<std::size_t>(t)] - 2 * static_cast<std::uint32_t>(o.micro_steps));
    }
  }
}

namespace {

// An engine of `world` thread ranks over the test model, each rank running `body(opt, rank)`;
// the parameters' storage outlives the engine.
template <class Optimizer, class Body>
void on_ranks(int world, Body&& body, std::uint32_t gather_buffers = 2, std::vector<std::uint32_t> gather_order = {}) {
  using P = typename Optimizer::param_type;
  const model m(5);
  zero::thread_group group(world, {std::chrono::seconds(60)});
  group.run([&](zero::thread_communicator& comm) {
    std::vector<std::vector<P>> storage(m.sizes.size());
    std::vector<zero::parameter<P>> params;
    for (std::size_t p = 0; p < m.sizes.size(); ++p) {
      storage[p].assign(m.sizes[p], P(initial_value(p, 0)));
      zero::parameter<P> param{"p" + std::to_string(p), {storage[p].data(), storage[p].size()}};
      param.gather_group = m.layer_of[p];
      params.push_back(param);
    }
    typename Optimizer::options_type options;
    options.layout.bucket_elements = 64;
    options.layout.gather_buffers = gather_buffers;
    options.layout.gather_buffer_elements = 1024;
    options.layout.gather_order = gather_order;
    Optimizer opt(comm, params, options);
    body(opt, comm.rank(), m);
  });
}

using S3 = zero::optimizer<zero::stage3, zero::bf16_mixed, zero::adamw, zero::contiguous_partitioner>;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_SUITE("reliability") {
  TEST_CASE("stage 3: a group not gathered or gathered twice or one too many is a usage_error naming it") {
    on_ranks<S3>(3, [](S3& opt, int rank, const model& m) {
      CHECK(opt.gather_group_count() == m.layers);
      CHECK(opt.gather_group_of(3) == 1);
      try {
        (void)opt.parameter_values(2);
        FAIL("parameter_values of a group not gathered");
      } catch (const zero::usage_error& e) {
        CHECK(contains(e.what(), "parameter_values('p2' (#2)) on rank " + std::to_string(rank) + ": its gather group 1 is not gathered"));
      }
      CHECK_THROWS_WITH_AS(opt.gather(99), doctest::Contains("there are 5 gather groups"), zero::usage_error);
      CHECK_THROWS_WITH_AS(opt.release(1), doctest::Contains("release(1) on rank"), zero::usage_error);
      opt.gather(0);
      CHECK(opt.gathered(0));
      CHECK_THROWS_WITH_AS(opt.gather(0), doctest::Contains("the group is gathered already"), zero::usage_error);
      opt.gather(1);
      CHECK_THROWS_WITH_AS(opt.gather(2), doctest::Contains("all 2 gather buffers hold groups (0, 1)"), zero::usage_error);
      // the spans: the registered values, back to back in one buffer per group
      const auto w = opt.parameter_values(2), b = opt.parameter_values(3);
      CHECK(w.size == m.sizes[2]);
      CHECK(static_cast<float>(w.data[0]) == static_cast<float>(zero::bf16(initial_value(2, 0))));
      CHECK(static_cast<float>(b.data[b.size - 1]) == static_cast<float>(zero::bf16(initial_value(3, 0))));
      opt.release(0);
      opt.release(1);
      CHECK(!opt.gathered(0));
      opt.gather(2);  // (a buffer is free again)
      opt.release(2);
    });
  }

  TEST_CASE("stage 3: a rank gathering out of turn makes every rank throw mismatch_error / no hang and nothing changed") {
    on_ranks<S3>(3, [](S3& opt, int rank, const model&) {
      const std::uint32_t g = rank == 1 ? 1 : 0;
      try {
        opt.gather(g);
        FAIL("gathered out of turn");
      } catch (const zero::mismatch_error& e) {
        CHECK(contains(e.what(), "ranks gather different groups"));
        CHECK(contains(e.what(), "gathers group 1"));
      }
      CHECK(!opt.gathered(g));
      opt.gather(0);  // the engine goes on: the next gather in turn works
      CHECK(static_cast<float>(opt.parameter_values(0).data[0]) == static_cast<float>(zero::bf16(initial_value(0, 0))));
      opt.release(0);
    });
  }

  TEST_CASE("stage 3: a gather refused on one rank is an error on every rank / no hang and nothing changed") {
    on_ranks<S3>(3, [](S3& opt, int rank, const model&) {
      opt.gather(0);
      // rank 1 forgot to release group 0 and gathers it again while the others gather group 1
      if (rank == 1) {
        CHECK_THROWS_WITH_AS(opt.gather(0), doctest::Contains("the group is gathered already"), zero::usage_error);
      } else {
        CHECK_THROWS_WITH_AS(opt.gather(1), doctest::Contains("rank 1 could not gather group 0"), zero::mismatch_error);
        CHECK(!opt.gathered(1));
      }
      opt.gather(1);  // every rank goes on
      CHECK(static_cast<float>(opt.parameter_values(2).data[0]) == static_cast<float>(zero::bf16(initial_value(2, 0))));
      // rank 0 keeps both buffers; the others free one: rank 0 cannot gather the next group
      if (rank != 0) opt.release(1);
      if (rank == 0) {
        CHECK_THROWS_WITH_AS(opt.gather(2), doctest::Contains("all 2 gather buffers hold groups (0, 1)"), zero::usage_error);
      } else {
        CHECK_THROWS_WITH_AS(opt.gather(2), doctest::Contains("rank 0 could not gather group 2"), zero::mismatch_error);
      }
      if (rank == 0) opt.release(1);
      opt.release(0);
      opt.gather(2);
      CHECK(static_cast<float>(opt.parameter_values(4).data[0]) == static_cast<float>(zero::bf16(initial_value(4, 0))));
      opt.release(2);
    });
  }

  TEST_CASE("stage 3 prefetching: a gather out of turn with a prefetch in flight changes nothing / the prefetch is used") {
    on_ranks<S3>(
        3,
        [](S3& opt, int rank, const model& m) {
          opt.gather(0);  // starts gathering group 1, next in the given order
          opt.release(0);
          CHECK(!opt.gathered(1));  // (prefetched is not gathered: the framework may not read it)
          CHECK_THROWS_AS((void)opt.parameter_values(2), zero::usage_error);
          CHECK_THROWS_WITH_AS(opt.gather(rank == 2 ? 3 : 1), doctest::Contains("ranks gather different groups"), zero::mismatch_error);
          opt.gather(1);
          CHECK(static_cast<float>(opt.parameter_values(3).data[0]) == static_cast<float>(zero::bf16(initial_value(3, 0))));
          opt.release(1);
          std::vector<std::vector<zero::bf16>> grads(m.sizes.size());
          for (std::size_t p = 0; p < m.sizes.size(); ++p) {
            grads[p].assign(m.sizes[p], zero::bf16(0.25f));
            opt.gradient_ready(p, zero::raw_span<const zero::bf16>(grads[p].data(), grads[p].size()));
          }
          const zero::step_report report = opt.step();  // (drops group 2, prefetched by gather(1))
          CHECK(report.gathers == 2);
          CHECK(report.prefetched_gathers == 1);
          opt.gather(0);  // the values after the step, not the prefetched ones before it
          CHECK(static_cast<float>(opt.parameter_values(0).data[0]) != static_cast<float>(zero::bf16(initial_value(0, 0))));
          opt.release(0);
          opt.gather(1);  // (prefetched by gather(0) after the step)
          CHECK(static_cast<float>(opt.parameter_values(2).data[0]) != static_cast<float>(zero::bf16(initial_value(2, 0))));
          opt.release(1);
        },
        2, {0, 1, 2, 3, 4});
  }

  TEST_CASE("stage 3: a step with a group still gathered is an error after the step / the group released") {
    on_ranks<S3>(2, [](S3& opt, int, const model& m) {
      std::vector<std::vector<zero::bf16>> grads(m.sizes.size());
      for (std::size_t p = 0; p < m.sizes.size(); ++p) {
        grads[p].assign(m.sizes[p], zero::bf16(0.25f));
        opt.gradient_ready(p, zero::raw_span<const zero::bf16>(grads[p].data(), grads[p].size()));
      }
      opt.gather(4);
      CHECK_THROWS_WITH_AS(opt.step(), doctest::Contains("with gather group(s) 4 still gathered"), zero::usage_error);
      CHECK(!opt.gathered(4));
      CHECK(opt.step_count() == 1);  // the step ran on every rank
      opt.gather(0);
      CHECK(static_cast<float>(opt.parameter_values(0).data[0]) != static_cast<float>(zero::bf16(initial_value(0, 0))));
      opt.release(0);
    });
  }

  TEST_CASE("stage 3: gather groups that skip a number or overflow a gather buffer or a gather order naming no group are refused at construction") {
    using P = zero::bf16;
    zero::thread_group group(2, {std::chrono::seconds(60)});
    group.run([&](zero::thread_communicator& comm) {
      std::vector<P> a(100), b(50), c(10);
      std::vector<zero::parameter<P>> params{{"a", {a.data(), a.size()}}, {"b", {b.data(), b.size()}}, {"c", {c.data(), c.size()}}};
      params[1].gather_group = 2;  // (group 1 empty)
      S3::options_type options;
      options.layout.gather_buffer_elements = 1000;
      CHECK_THROWS_WITH_AS(S3(comm, params, options), doctest::Contains("gather group 1 on rank"), zero::usage_error);
      params[1].gather_group = 1;
      params[2].gather_group = 1;
      options.layout.gather_buffer_elements = 60;
      CHECK_THROWS_WITH_AS(S3(comm, params, options),
                           doctest::Contains("has 100 elements, more than a gather buffer holds (layout.gather_buffer_elements = 60)"),
                           zero::usage_error);
      options.layout.gather_buffer_elements = 100;
      options.layout.order = zero::gradient_order::learned;
      CHECK_THROWS_WITH_AS(S3(comm, params, options), doctest::Contains("gradient_order::learned"), zero::usage_error);
      options.layout.order = zero::gradient_order::reverse;
      params[1].gather_group = 4'000'000'000u;  // (not a vector of four billion groups)
      CHECK_THROWS_WITH_AS(S3(comm, params, options), doctest::Contains("parameter 'b' (#1) on rank"), zero::usage_error);
      params[1].gather_group = 1;
      options.layout.gather_buffers = std::size_t{1} << 20;  // x 2^40 elements: past any buffer, and wrapping in 64 bits
      options.layout.gather_buffer_elements = std::size_t{1} << 40;
      CHECK_THROWS_WITH_AS(S3(comm, params, options), doctest::Contains("more elements than a buffer may hold"), zero::usage_error);
      options.layout.gather_buffers = 2;
      options.layout.gather_buffer_elements = 100;
      options.layout.gather_order = {0, 1, 7};
      CHECK_THROWS_WITH_AS(S3(comm, params, options), doctest::Contains("layout.gather_order[2] on rank"), zero::usage_error);
      CHECK_THROWS_WITH_AS(S3(comm, params, options), doctest::Contains("is group 7, but there are 2 gather groups"), zero::usage_error);
      options.layout.gather_order = {0, 1, 1, 0};
      S3 fine(comm, params, options);
      CHECK(fine.gather_group_count() == 2);
      // stage 2 has nothing to gather, nor parameters without values
      zero::optimizer<zero::stage2, zero::bf16_mixed> two(comm, params);
      CHECK_THROWS_WITH_AS(two.gather(0), doctest::Contains("only stage 3 gathers parameters"), zero::usage_error);
      auto fill = [](std::size_t, std::size_t, std::span<P> out) { std::fill(out.begin(), out.end(), P(1.0f)); };
      CHECK_THROWS_WITH_AS(two.initialize_parameters(fill), doctest::Contains("initialize_parameters on rank"), zero::usage_error);
      auto sized = params;
      sized[0].values.data = nullptr;
      CHECK_THROWS_WITH_AS((zero::optimizer<zero::stage2, zero::bf16_mixed>(comm, sized)),
                           doctest::Contains("has a null values pointer (only stage 3 registers parameters without values)"),
                           zero::usage_error);
      // stage 3: 'a' by its size alone (it starts at 0), the others with values; then filled in
      options.layout.gather_order = {};
      S3 three(comm, sized, options);
      three.gather(0);
      CHECK(static_cast<float>(three.parameter_values(0).data[99]) == 0.0f);
      CHECK_THROWS_WITH_AS(three.initialize_parameters(fill), doctest::Contains("with gather group(s) 0 gathered"), zero::usage_error);
      three.release(0);
      three.initialize_parameters(fill);
      three.gather(0);
      CHECK(static_cast<float>(three.parameter_values(0).data[0]) == 1.0f);
      CHECK(static_cast<float>(three.parameter_values(0).data[99]) == 1.0f);
      three.release(0);
    });
  }
}
