// Does pipelining the stage-2 reductions (layout.staging_buffers >= 2) hide communication
// behind backward? A simulated backward over MPI processes: `layers` layers, each a fixed
// amount of real arithmetic followed by `gradient_ready` for that layer's parameters, then
// `step()`. Each rank's compute per layer varies at random (+0..50%, per layer, rank and
// iteration), as real ranks drift. With blocking reductions every unit waits for the slowest
// rank of that unit; pipelined, a reduction waits only when its buffer is needed again.
//
//   mpirun -np 4 zero_bench_mpi_overlap --benchmark_format=json
//
// Every rank runs the same benchmarks with fixed iterations, so all ranks issue the same
// collectives; rank 0 reports. Counters: `backward_over_compute` is the time of backward plus
// step divided by the time of the same computation with no engine at all (measured in the
// same run: `compute_only`); 1.0 would hide all communication and the update.
#include <benchmark/benchmark.h>
#include <mpi.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "zero/mpi/communicator.hpp"
#include "zero/optimizer.hpp"

namespace {

constexpr std::size_t layers = 16;
constexpr std::size_t layer_elements = 1u << 18;  // 1 MiB of fp32 per layer
constexpr int iterations = 20;

int world = 1, rank = 0;
double compute_only_seconds = 0;  // per iteration, from the compute_only benchmark

// Real arithmetic on a private buffer; `work` scales it.
float compute(std::vector<float>& scratch, double work) {
  const std::size_t passes = static_cast<std::size_t>(work * 48.0);
  float acc = 0;
  for (std::size_t p = 0; p < passes; ++p)
    for (std::size_t i = 0; i < scratch.size(); ++i) {
      scratch[i] = scratch[i] * 0.999f + 0.001f * std::sqrt(static_cast<float>(i + p));
      acc += scratch[i];
    }
  return acc;
}

double jitter(std::mt19937_64& rng) { return 1.0 + 0.5 * std::uniform_real_distribution<double>(0, 1)(rng); }

void compute_only(benchmark::State& state) {
  std::vector<float> scratch(1u << 15, 1.0f);
  std::mt19937_64 rng(static_cast<std::uint64_t>(rank) * 7919 + 1);
  float sink = 0;
  double total = 0;
  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t l = 0; l < layers; ++l) sink += compute(scratch, jitter(rng));
    const double mine = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double slowest = 0;  // the iteration ends when the slowest rank is done
    MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    state.SetIterationTime(slowest);
    total += slowest;
  }
  benchmark::DoNotOptimize(sink);
  compute_only_seconds = total / static_cast<double>(state.iterations());
}

void backward_and_step(benchmark::State& state) {
  const auto buffers = static_cast<std::size_t>(state.range(0));
  using engine = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner,
                                 zero::mpi_communicator>;
  zero::mpi_communicator comm(MPI_COMM_WORLD, {std::chrono::minutes(2)});
  std::vector<std::vector<float>> values(layers, std::vector<float>(layer_elements, 0.5f));
  std::vector<std::vector<float>> grads(layers, std::vector<float>(layer_elements, 1e-3f));
  std::vector<zero::parameter<float>> params;
  for (auto& v : values) params.push_back({"", {v.data(), v.size()}});
  engine::options_type options;
  options.threads = 1;
  options.layout.bucket_elements = layer_elements;  // a unit per layer
  options.layout.staging_buffers = buffers;
  engine opt(comm, params, options);

  std::vector<float> scratch(1u << 15, 1.0f);
  std::mt19937_64 rng(static_cast<std::uint64_t>(rank) * 7919 + 1);  // the same draws as compute_only
  float sink = 0;
  double total = 0;
  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t l = layers; l-- > 0;) {  // backward: last layer first
      sink += compute(scratch, jitter(rng));
      opt.gradient_ready(l, {grads[l].data(), grads[l].size()});
    }
    opt.step();
    const double mine = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double slowest = 0;
    MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    state.SetIterationTime(slowest);
    total += slowest;
  }
  benchmark::DoNotOptimize(sink);
  state.counters["staging_buffers"] = static_cast<double>(buffers);
  state.counters["ranks"] = world;
  state.counters["compute_only_ms"] = compute_only_seconds * 1e3;
  state.counters["backward_over_compute"] = total / static_cast<double>(state.iterations()) / compute_only_seconds;
}

// A reporter for ranks other than 0: they run the same benchmarks and print nothing.
class silent_reporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

BENCHMARK(compute_only)->Iterations(iterations)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(backward_and_step)->Arg(1)->Arg(2)->Arg(3)->Iterations(iterations)->UseManualTime()->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  benchmark::Initialize(&argc, argv);
  if (rank == 0) {
    benchmark::RunSpecifiedBenchmarks();
  } else {
    silent_reporter quiet;
    benchmark::RunSpecifiedBenchmarks(&quiet);
  }
  benchmark::Shutdown();
  MPI_Finalize();
  return 0;
}
