// Collectives of the thread communicator: algorithm bandwidth (bytes / time) and bus bandwidth
// (x (n-1)/n for reduce-scatter and all-gather, x 2(n-1)/n for all-reduce), as nccl-tests
// reports them, with a count of wrong results (every element of every result is checked).
//
//   zero_bench_collectives --benchmark_format=json
#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <vector>

#include "zero/thread_communicator.hpp"

namespace {

enum class kind { reduce_scatter, all_gather, all_reduce };

// One benchmark iteration = one collective on every rank; bytes = the buffer of `count` floats.
template <kind K>
void collective(benchmark::State& state) {
  const int world = static_cast<int>(state.range(0));
  const std::size_t bytes = static_cast<std::size_t>(state.range(1));
  const std::size_t count = bytes / sizeof(float) / static_cast<std::size_t>(world) * static_cast<std::size_t>(world);
  const std::size_t per_rank = count / static_cast<std::size_t>(world);
  zero::thread_group group(world);
  std::atomic<std::size_t> wrong{0};
  double seconds = 0;
  std::int64_t iterations = 0;
  // rank 0 is driven by the benchmark loop; the others follow as long as it goes on
  auto body = [&](zero::thread_communicator& c, std::vector<float>& send, std::vector<float>& recv) {
    const float me = static_cast<float>(c.rank() + 1);
    for (std::size_t i = 0; i < count; ++i) send[i] = me;
    if constexpr (K == kind::reduce_scatter) c.reduce_scatter(send.data(), recv.data(), per_rank);
    if constexpr (K == kind::all_gather) c.all_gather(send.data(), recv.data(), per_rank);
    if constexpr (K == kind::all_reduce) c.all_reduce(send.data(), recv.data(), count);
    const float sum = static_cast<float>(world * (world + 1) / 2);
    std::size_t bad = 0;
    if constexpr (K == kind::all_gather) {
      for (std::size_t i = 0; i < count; ++i) bad += recv[i] != static_cast<float>(i / per_rank + 1);
    } else {
      const std::size_t n = K == kind::reduce_scatter ? per_rank : count;
      for (std::size_t i = 0; i < n; ++i) bad += recv[i] != sum;
    }
    wrong += bad;
  };
  group.run([&](zero::thread_communicator& c) {
    std::vector<float> send(count), recv(count);
    // rank 0 is driven by the benchmark loop and tells the others, before each iteration,
    // whether there is one
    std::uint64_t more = 1;
    if (c.rank() == 0) {
      for (auto _ : state) {
        c.broadcast(&more, 1, 0);
        const auto t0 = std::chrono::steady_clock::now();
        body(c, send, recv);
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        ++iterations;
      }
      more = 0;
      c.broadcast(&more, 1, 0);
    } else {
      for (;;) {
        c.broadcast(&more, 1, 0);
        if (more == 0) break;
        body(c, send, recv);
      }
    }
  });
  const double n = world;
  const double factor = K == kind::all_reduce ? 2 * (n - 1) / n : (n - 1) / n;
  const double algbw = static_cast<double>(count * sizeof(float)) * static_cast<double>(iterations) / seconds;
  state.counters["algbw_GBps"] = algbw / 1e9;
  state.counters["busbw_GBps"] = algbw * factor / 1e9;
  state.counters["wrong"] = static_cast<double>(wrong.load());
  state.SetBytesProcessed(static_cast<std::int64_t>(count * sizeof(float)) * state.iterations());
}

void sizes(benchmark::internal::Benchmark* b) {
  for (int world : {2, 4, 8})
    for (std::int64_t bytes : {std::int64_t{4096}, std::int64_t{1} << 20, std::int64_t{16} << 20}) b->Args({world, bytes});
  b->UseRealTime()->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK(collective<kind::reduce_scatter>)->Apply(sizes);
BENCHMARK(collective<kind::all_gather>)->Apply(sizes);
BENCHMARK(collective<kind::all_reduce>)->Apply(sizes);
BENCHMARK_MAIN();
