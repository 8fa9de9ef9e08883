// The ActivationCheckpointer composed into the optimizer type: the engine builds its checkpointer
// (make_checkpointer) on its own communicator and memory resource and the host memory and plan
// of `options.activations`, hands it out as `opt.checkpointer()`, and reports its bytes in
// `memory()`; or takes one the framework built (on a model-parallel group). Every shipped
// checkpointer and the combinations plug in: the MLP trained on three thread ranks through
// `opt.checkpointer()` gets gradients bitwise equal to the reference (no checkpointing) and ends
// with the same parameters on every rank as the reference run; every byte the checkpointer holds
// comes from the engine's resources and equals `expected_checkpoint_memory`. A partitioned checkpointer splits an activation that every
// rank of its group holds alike (ZeRO-R partitions across the model-parallel group): where it is
// built on the engine's group, the ranks here train on the same batch.
#include <doctest/doctest.h>

#include <mutex>

#include "fixture.hpp"

namespace {

constexpr int world = 3;
constexpr int steps = 3;

struct outcome {
  std::vector<std::vector<float>> params;  // rank 0's final parameters, per tensor
  std::size_t mismatched_gradients = 0;    // checkpointed gradients != reference gradients
  std::size_t rank_disagreements = 0;
  std::size_t memory_mismatches = 0;       // memory() against the resources' counts
};

// Trains act::model() for `steps` steps on `world` ranks (rank r's batch: act::batches()[r]),
// gradients from the checkpointer the engine built (or from the reference, for passthrough).
template <class Checkpointer>
inline constexpr bool partitioned = false;
template <class C, class I>
inline constexpr bool partitioned<zero::partitioned_checkpointer<C, I>> = true;

template <class Checkpointer>
outcome train(bool reference = false, bool same_batch = partitioned<Checkpointer>) {
  using O = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner, zero::thread_communicator,
                            Checkpointer>;
  outcome out;
  std::vector<std::vector<std::vector<float>>> finals(world);
  std::mutex lock;
  zero::thread_group group(world);
  group.run([&](zero::thread_communicator& comm) {
    act::counting_resource device, host;
    act::mlp m = act::model();
    std::vector<zero::parameter<float>> params;  // model order: w0, b0, w1, b1, ...
    for (int l = 0; l < m.layers(); ++l) {
      const auto ul = static_cast<std::size_t>(l);
      params.push_back({"w" + std::to_string(l), {m.w[ul].data(), static_cast<std::size_t>(m.w[ul].size())}});
      params.push_back({"b" + std::to_string(l), {m.b[ul].data(), static_cast<std::size_t>(m.b[ul].size())}});
    }
    typename O::options_type options;
    options.hyperparameters.lr = 1e-2;
    options.layout.bucket_elements = 97;
    options.layout.alignment = 1;
    options.memory = &device;
    options.activations.host_memory = &host;
    options.activations.plan = act::layer_input_plan();
    O opt(comm, params, options);
    std::size_t mismatched = 0, memory_mismatches = 0;
    const act::batch_data& d = act::batches()[same_batch ? 0 : static_cast<std::size_t>(comm.rank())];
    for (int t = 0; t < steps; ++t) {
      const act::gradients expected = act::reference_step(m, d);
      const act::gradients g = reference ? expected : act::checkpointed_step(m, d, opt.checkpointer());
      if (!bitwise_equal(g, expected)) ++mismatched;
      for (int l = m.layers(); l-- > 0;) {  // backward order: the last layer's bias first
        const auto ul = static_cast<std::size_t>(l);
        opt.gradient_ready(2 * ul + 1, {g.db[ul].data(), static_cast<std::size_t>(g.db[ul].size())});
        opt.gradient_ready(2 * ul, {g.dw[ul].data(), static_cast<std::size_t>(g.dw[ul].size())});
      }
      opt.step();
    }
    // every byte the checkpointer held came from the engine's resources, as memory() says
    const zero::memory_report r = opt.memory();
    if (device.peak != r.total() + r.activations) ++memory_mismatches;
    if (host.peak != r.activations_host) ++memory_mismatches;
    if (r.activations + r.activations_host != opt.checkpointer().peak_bytes_held()) ++memory_mismatches;
    // and what the closed form expects for the checkpoints a step saves
    const zero::checkpoint_plan saved{act::checkpoint_sizes(zero::recomputes_v<Checkpointer>)};
    const zero::checkpoint_memory expected = zero::expected_checkpoint_memory<Checkpointer>(saved, world, options.activations);
    if (reference ? r.activations != 0 : r.activations != expected.device() || r.activations_host != expected.host) ++memory_mismatches;
    std::vector<std::vector<float>> mine;
    for (const auto& p : params) mine.emplace_back(p.values.data, p.values.data + p.values.size);
    std::lock_guard guard(lock);
    finals[static_cast<std::size_t>(comm.rank())] = std::move(mine);
    out.mismatched_gradients += mismatched;
    out.memory_mismatches += memory_mismatches;
  });
  for (int r = 1; r < world; ++r) out.rank_disagreements += finals[static_cast<std::size_t>(r)] != finals[0] ? 1 : 0;
  out.params = finals[0];
  return out;
}

template <class Checkpointer>
void check_composed() {
  const outcome reference = train<zero::passthrough_checkpointer>(true, partitioned<Checkpointer>);
  const outcome got = train<Checkpointer>();
  CHECK(got.mismatched_gradients == 0);
  CHECK(got.rank_disagreements == 0);
  CHECK(got.memory_mismatches == 0);
  CHECK(got.params == reference.params);
}

using comm = zero::thread_communicator;

}  // namespace

// Named policies: doctest prints the type in each test's name, and CTest's label discovery
// cannot take the commas of a template argument list.
namespace policy {
struct plain {
  using type = zero::plain_checkpointer<>;
};
struct contiguous {
  using type = zero::contiguous_checkpointer;
};
struct keep_everything {
  using type = zero::keep_everything_checkpointer<>;
};
struct partitioned {
  using type = zero::partitioned_checkpointer<comm>;
};
struct partitioned_contiguous {
  using type = zero::partitioned_checkpointer<comm, zero::contiguous_checkpointer>;
};
struct offloaded {
  using type = zero::offloaded_checkpointer<>;
};
struct offloaded_to_arena {
  using type = zero::offloaded_checkpointer<zero::contiguous_arena>;
};
struct partitioned_offloaded {
  using type = zero::partitioned_checkpointer<comm, zero::offloaded_checkpointer<>>;
};
}  // namespace policy

TEST_SUITE("activation") {
  TEST_CASE_TEMPLATE("the optimizer builds its checkpointer and trains through it bitwise / every shipped policy", P, policy::plain,
                     policy::contiguous, policy::keep_everything, policy::partitioned, policy::partitioned_contiguous,
                     policy::offloaded, policy::offloaded_to_arena, policy::partitioned_offloaded) {
    check_composed<typename P::type>();
  }

  TEST_CASE("the optimizer's checkpointer: the engine's memory resources hold what each policy keeps") {
    // a partitioned checkpointer keeps one third of each layer input on each rank; offloading
    // moves everything but the staging buffers to host memory
    zero::thread_group group(world);
    group.run([&](zero::thread_communicator& c) {
      act::counting_resource device, host;
      act::mlp m = act::model();
      std::vector<zero::parameter<float>> params;
      for (int l = 0; l < m.layers(); ++l)
        params.push_back({"", {m.w[static_cast<std::size_t>(l)].data(), static_cast<std::size_t>(m.w[static_cast<std::size_t>(l)].size())}});
      using O = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner, comm,
                                zero::partitioned_checkpointer<comm, zero::contiguous_checkpointer>>;
      O::options_type options;
      options.memory = &device;
      options.activations.host_memory = &host;
      options.activations.plan = act::layer_input_plan();
      O opt(c, params, options);
      // the inner arena was cut for this rank's slices of the declared plan, from the engine's memory
      const std::size_t arena = zero::partitioned_plan(act::layer_input_plan(), world).arena_bytes();
      CHECK(opt.memory().activations == arena);
      CHECK(device.outstanding == opt.memory().total() + arena);
      CHECK(host.peak == 0);
    });
  }

  TEST_CASE("the optimizer takes a checkpointer the framework built on its model-parallel group") {
    // two data-parallel ranks, each its own model-parallel group of one: the engine's group is
    // not the checkpointer's, so the framework builds the checkpointer and hands it over
    zero::thread_group group(2);
    std::vector<std::size_t> mismatched(2, 0);
    group.run([&](zero::thread_communicator& data_parallel) {
      zero::single_rank_communicator model_parallel;
      act::mlp m = act::model();
      std::vector<zero::parameter<float>> params;
      for (int l = 0; l < m.layers(); ++l)
        params.push_back({"", {m.w[static_cast<std::size_t>(l)].data(), static_cast<std::size_t>(m.w[static_cast<std::size_t>(l)].size())}});
      using K = zero::partitioned_checkpointer<zero::single_rank_communicator>;
      using O = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner, comm, K>;
      O opt(data_parallel, params, {}, K(model_parallel));
      const act::batch_data& d = act::batches()[static_cast<std::size_t>(data_parallel.rank())];
      if (!bitwise_equal(act::checkpointed_step(m, d, opt.checkpointer()), act::reference_step(m, d)))
        ++mismatched[static_cast<std::size_t>(data_parallel.rank())];
    });
    CHECK(mismatched == std::vector<std::size_t>{0, 0});
  }

  TEST_CASE("the optimizer's checkpointer: a contiguous arena without a plan is refused on every rank with the reason") {
    zero::thread_group group(2);
    std::vector<std::string> errors(2);
    group.run([&](zero::thread_communicator& c) {
      std::vector<float> w(10, 1.0f);
      std::vector<zero::parameter<float>> params{{"w", {w.data(), w.size()}}};
      using O = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner, comm,
                                zero::contiguous_checkpointer>;
      O::options_type options;
      if (c.rank() == 1) options.activations.plan = zero::checkpoint_plan::uniform(2, 64);  // rank 0 declares none
      try {
        O opt(c, params, options);
      } catch (const zero::usage_error& e) {
        errors[static_cast<std::size_t>(c.rank())] = e.what();
      }
    });
    CHECK(errors[0].find("activations.plan declares no checkpoints") != std::string::npos);
    CHECK(errors[1].find("rank(s) 0 refused their parameters") != std::string::npos);
  }
}
