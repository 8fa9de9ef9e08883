// The optimizer step at the memory limit.
//
//   limit/<params>/<threads>/<bytes per element>: a kernel with the update's access pattern
//       (the gradient read; master, m and v read and written in place; the model-precision copy
//       written) and trivial arithmetic, compiled for the best instruction set the CPU has
//       (AVX-512 or AVX2 with FMA, chosen at run time; the build's target otherwise, or with
//       Clang): its bandwidth is the limit of this machine for this pattern, measured in the
//       same run; its label names what it ran on.
//   fused_adamw_<precision>/<params>/<threads>: zero's fused AdamW update over a shard (the
//       kernel step() runs), reporting bytes_per_second, params_per_second and limit_ratio
//       (achieved bandwidth / the limit measured above with the same bytes per element).
//   stage2_step/<params>/<ranks>: a whole stage-2 step with thread ranks: gradients reported,
//       reduced, the norm, the update, the all-gather; time split into reduce/update/gather.
//   state_gap/<params>/<gap>: the update with both AdamW slots in one buffer, `gap` floats
//       between them beyond the shard size (the host backend's layout has none).
//   groups_<precision>/<params>/<threads>: the engine's update pass (host_backend::update) over
//       a transformer-like shard with one parameter group, then with three (weights with decay;
//       biases and norm weights without; the embedding at another learning rate), alternating in
//       each iteration; three_over_one is the three-group speed over the one-group speed.
//
//   zero_bench_update --benchmark_format=json --benchmark_out=update.json
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "update_harness.hpp"
#include "zero/zero.hpp"

using zero_bench::filled;
using zero_bench::fused_adamw;
using zero_bench::limit;

namespace {

// The update with AdamW's two state slots in one buffer, as the host backend lays them out
// (slot k at k * stride), the stride being the shard size plus `gap` floats: with no gap, m and v
// lie a large power of two apart at power-of-two shard sizes, and the pass runs at less than half
// the speed it has with a gap of a page and a cache line (1040 floats). One thread, the backend's
// blocks of 16K elements, the norm on the way, fp32 master with bf16 copies.
void state_gap(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0)), gap = static_cast<std::size_t>(state.range(1));
  auto values = filled<float>(n, 1.0f);
  auto grads = filled<float>(n, 1e-3f);
  auto slots = filled<float>(2 * n + gap, 0.0f);
  auto out = filled<zero::bf16>(n, 0.0f);
  const zero::adamw::hyperparameters h;
  const zero::detail::value_rounding<float> round{};
  std::uint64_t step = 0;
  constexpr std::size_t block = 1u << 14;
  for (auto _ : state) {
    const auto c = zero::adamw::prepare(h, ++step);
    for (std::size_t b = 0; b < n; b += block) {
      const std::size_t e = std::min(n, b + block);
      float* s[2] = {slots.data() + b, slots.data() + n + gap + b};
      benchmark::DoNotOptimize(zero::detail::update_elements<zero::adamw>(c, values.data() + b, grads.data() + b, s, 2, out.data() + b,
                                                                          e - b, 1.0f, round, b, true));
    }
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n) * (4 + 2 * 4 + 2 * 8 + 2));
}

// A whole stage-2 step with `ranks` thread ranks over a model of `params` parameters in 16
// tensors (bf16 parameters and gradients, fp32 master, AdamW), one update thread per rank,
// `read_gradients_in_update` off (0) or on (1; it matters at one rank). Reports the time split
// measured by the engine (rank 0) and the ratio of the whole step (gradients reported, then
// `step()`) to the engine's update pass.
void stage2_step(benchmark::State& state) {
  const std::size_t params = static_cast<std::size_t>(state.range(0));
  const int ranks = static_cast<int>(state.range(1));
  const bool read_in_update = state.range(2) != 0;
  using O = zero::optimizer<zero::stage2, zero::bf16_mixed, zero::adamw, zero::bucketed_partitioner>;
  constexpr std::size_t tensors = 16;
  double reduce = 0, update = 0, gather = 0, total = 0;
  std::int64_t steps = 0;
  zero::thread_group group(ranks);
  std::mutex lock;
  group.run([&](zero::thread_communicator& comm) {
    std::vector<std::vector<zero::bf16>> w(tensors), g(tensors);
    std::vector<zero::parameter<zero::bf16>> registered;
    for (std::size_t t = 0; t < tensors; ++t) {
      w[t].assign(params / tensors, zero::bf16(0.5f));
      g[t].assign(params / tensors, zero::bf16(1e-3f * static_cast<float>(comm.rank() + 1)));
      registered.push_back({"", {w[t].data(), w[t].size()}});
    }
    O::options_type options;
    options.threads = 1;
    options.layout.bucket_elements = 1u << 24;
    options.layout.read_gradients_in_update = read_in_update;
    O opt(comm, registered, options);
    std::uint64_t more = 1;
    for (;;) {
      if (comm.rank() == 0) more = state.KeepRunning() ? 1 : 0;
      comm.broadcast(&more, 1, 0);
      if (more == 0) break;
      const auto t0 = std::chrono::steady_clock::now();
      for (std::size_t t = tensors; t-- > 0;) opt.gradient_ready(t, {g[t].data(), g[t].size()});
      const auto report = opt.step();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (comm.rank() == 0) {
        reduce += report.reduce_seconds;
        update += report.update_seconds;
        gather += report.gather_seconds;
        total += s;
        ++steps;
      }
    }
  });
  const double n = static_cast<double>(steps);
  state.counters["step_seconds"] = total / n;
  state.counters["reduce_seconds"] = reduce / n;
  state.counters["update_seconds"] = update / n;
  state.counters["gather_seconds"] = gather / n;
  state.counters["step_over_update"] = total / update;
  state.counters["params_per_second"] = static_cast<double>(params) * n / total;
}

// A transformer-like model of about `params` elements: an embedding (group 2), then layers of
// [norm weight, norm bias, qkv weight, qkv bias, proj weight, proj bias, norm weight, norm bias,
// fc weight, fc bias, fc2 weight, fc2 bias] (matrices in group 0, vectors in group 1), d = 512.
struct grouped_model {
  std::vector<std::size_t> sizes;
  std::vector<std::uint32_t> groups;
  explicit grouped_model(std::size_t params) {
    constexpr std::size_t d = 512;
    const std::size_t embedding = params / 16 / d * d;
    sizes.push_back(embedding);
    groups.push_back(2);
    const std::size_t per_layer = 12 * d * d + 13 * d;
    for (std::size_t total = embedding; total + per_layer <= params; total += per_layer)
      for (std::size_t s : {d, d, 3 * d * d, 3 * d, d * d, d, d, d, 4 * d * d, 4 * d, 4 * d * d, d}) {
        sizes.push_back(s);
        groups.push_back(s > 4 * d ? 0u : 1u);
      }
  }
};

template <class Precision>
void groups_update(benchmark::State& state) {
  using value = typename Precision::value_type;
  using param = typename Precision::param_type;
  using accum = typename Precision::accum_type;
  using run = zero::update_run<value, accum, param>;
  const grouped_model model(static_cast<std::size_t>(state.range(0)));
  std::size_t n = 0;
  for (std::size_t s : model.sizes) n += s;
  auto values = filled<value>(n, 1.0f);
  auto grads = filled<accum>(n, 1e-3f);
  std::vector<float> slots(2 * n, 0.0f);
  std::vector<param> out(Precision::has_master ? n : 0);
  // one group: the shard is one run; three groups: one run per stretch of parameters in one group
  std::vector<run> one{{values.data(), grads.data(), 0, Precision::has_master ? out.data() : nullptr, n, 0}}, three;
  std::size_t at = 0;
  for (std::size_t p = 0; p < model.sizes.size(); at += model.sizes[p++]) {
    if (!three.empty() && three.back().group == model.groups[p]) {
      three.back().count += model.sizes[p];
      continue;
    }
    three.push_back({values.data() + at, grads.data() + at, at, Precision::has_master ? out.data() + at : nullptr, model.sizes[p],
                     model.groups[p]});
  }
  const zero::backend_options options{static_cast<unsigned>(state.range(1))};
  zero::host_backend single(options), grouped(options);
  single.prepare<zero::adamw>(1, std::span<const run>(one), std::span<const run>(), slots.data(), n, 2);
  grouped.prepare<zero::adamw>(model.sizes.size(), std::span<const run>(three), std::span<const run>(), slots.data(), n, 2);
  zero::adamw::hyperparameters decay, no_decay, embedding;
  no_decay.weight_decay = 0;
  embedding.lr = 3e-4;
  std::uint64_t step = 0;
  double one_seconds = 0, three_seconds = 0;
  const zero::detail::value_rounding<value> round{};
  for (auto _ : state) {
    ++step;
    const std::array<zero::adamw::constants, 1> c1{zero::adamw::prepare(decay, step)};
    const std::array<zero::adamw::constants, 3> c3{zero::adamw::prepare(decay, step), zero::adamw::prepare(no_decay, step),
                                                   zero::adamw::prepare(embedding, step)};
    auto t0 = std::chrono::steady_clock::now();
    single.update<zero::adamw>(std::span<const zero::adamw::constants>(c1), std::span<const run>(one), 0.5f, round, 0, false);
    auto t1 = std::chrono::steady_clock::now();
    grouped.update<zero::adamw>(std::span<const zero::adamw::constants>(c3), std::span<const run>(three), 0.5f, round, 0, false);
    auto t2 = std::chrono::steady_clock::now();
    one_seconds += std::chrono::duration<double>(t1 - t0).count();
    three_seconds += std::chrono::duration<double>(t2 - t1).count();
    benchmark::ClobberMemory();
  }
  const double iterations = static_cast<double>(state.iterations());
  state.counters["elements"] = static_cast<double>(n);
  state.counters["runs_three_groups"] = static_cast<double>(three.size());
  state.counters["one_group_params_per_second"] = static_cast<double>(n) * iterations / one_seconds;
  state.counters["three_groups_params_per_second"] = static_cast<double>(n) * iterations / three_seconds;
  state.counters["three_over_one"] = one_seconds / three_seconds;
}

}  // namespace

// limit kernels: fp32 pattern (28 B/element) and bf16-with-fp32-master pattern (30 B/element)
BENCHMARK(limit<void>)->ArgsProduct({{1 << 20, 16 << 20, 64 << 20}, {1, 2}})->UseRealTime()->Unit(benchmark::kMillisecond)->Name("limit_fp32");
BENCHMARK(limit<zero::bf16>)->ArgsProduct({{1 << 20, 16 << 20, 64 << 20}, {1, 2}})->UseRealTime()->Unit(benchmark::kMillisecond)->Name("limit_bf16_master");
BENCHMARK(fused_adamw<zero::fp32_precision>)->ArgsProduct({{1 << 20, 16 << 20, 64 << 20}, {1, 2}})->UseRealTime()->Unit(benchmark::kMillisecond)->Name("fused_adamw_fp32");
BENCHMARK(fused_adamw<zero::bf16_mixed>)->ArgsProduct({{1 << 20, 16 << 20, 64 << 20}, {1, 2}})->UseRealTime()->Unit(benchmark::kMillisecond)->Name("fused_adamw_bf16_master");
BENCHMARK(groups_update<zero::fp32_precision>)->ArgsProduct({{16 << 20, 64 << 20}, {1, 2}})->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(10)->Name("groups_fp32");
BENCHMARK(groups_update<zero::bf16_mixed>)->ArgsProduct({{16 << 20, 64 << 20}, {1, 2}})->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(10)->Name("groups_bf16_master");
BENCHMARK(state_gap)->ArgsProduct({{1 << 20, 64 << 20}, {0, 16, 1040}})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(stage2_step)->ArgsProduct({{1 << 20, 64 << 20}, {1, 2, 4}, {0, 1}})->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(5);
BENCHMARK_MAIN();
