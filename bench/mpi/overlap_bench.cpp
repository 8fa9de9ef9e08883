// How much of the stage-2 reduction hides behind backward? A real backward over MPI processes,
// driven as a framework drives the engine: `layers` fully connected layers registered in model
// order; backward computes, last layer first, each layer's weight gradient (X^T dY) and the
// gradient it passes down (dY W^T), two matrix products (Eigen), and reports the weight
// gradient the moment it exists. Then `step()`.
//
//   mpirun -np 2 zero_bench_mpi_overlap --benchmark_format=json --benchmark_out=overlap.json
//
// Benchmarks, per partitioner, in this order (each run's figures feed the next ones' counters):
//   compute_only        the backward's arithmetic alone, no engine
//   at_step             backward first, then every gradient reported and step(): nothing of the
//                       reduction overlaps backward (DDP without bucketing); `reduce_ms` is the
//                       time of the reports (the reductions) measured there
//   overlap/1           gradients reported as produced, one staging buffer: each unit reduced
//                       (blocking) as soon as its last gradient arrives
//   overlap/2           the same with two staging buffers: a unit's reduction in flight while
//                       backward goes on (non-blocking collectives, progressed at each report)
// The time of an iteration is the slowest rank's. Counters: `step_ms` (backward + step),
// `exposed_ms` = step_ms - compute_only's step_ms, and `hidden_share` = (at_step's step_ms -
// this step_ms) / at_step's reduce_ms: the share of the reduction that overlapping hid (0 when
// none did, 1 when all of it did; at_step is 0 by definition). Every rank runs the same
// benchmarks with fixed iterations, so all ranks issue the same collectives; rank 0 reports.
#include <benchmark/benchmark.h>
#include <mpi.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "run_benchmarks.hpp"
#include "zero/mpi/communicator.hpp"
#include "zero/optimizer.hpp"

namespace {

constexpr int layers = 12;
constexpr Eigen::Index width = 512;  // each layer a width x width weight: 262,144 parameters, 1 MiB of fp32
constexpr Eigen::Index batch = 64;   // rows of this rank's micro-batch
int iterations = 12;  // ZERO_OVERLAP_ITERATIONS overrides (the smoke test runs 1)

int world = 1, rank = 0;

using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// What one rank's backward works on: each layer's input X_l and weight W_l, and the gradient
// arriving from above.
struct model {
  std::vector<matrix> inputs, weights, weight_grads;
  matrix top;
  model() {
    std::srand(static_cast<unsigned>(1 + rank));
    for (int l = 0; l < layers; ++l) {
      inputs.push_back(matrix::Random(batch, width));
      weights.push_back(matrix::Random(width, width) * 0.05f);
      weight_grads.push_back(matrix::Zero(width, width));
    }
    top = matrix::Random(batch, width);
  }
  //! Layer l's backward: dW_l = X_l^T dY, and dY for the layer below = dY W_l^T.
  void backward_layer(int l, matrix& dy) {
    weight_grads[static_cast<std::size_t>(l)].noalias() = inputs[static_cast<std::size_t>(l)].transpose() * dy;
    matrix below = dy * weights[static_cast<std::size_t>(l)].transpose();
    dy.swap(below);
  }
};

double slowest(double mine) {
  double out = 0;
  MPI_Allreduce(&mine, &out, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return out;
}

// Figures of earlier runs, per partitioner (0: contiguous, 1: bucketed).
double compute_ms[2] = {0, 0}, at_step_ms[2] = {0, 0}, at_step_reduce_ms[2] = {0, 0};

enum class mode { compute_only, at_step, overlap };

template <class Partitioner>
void run(benchmark::State& state, mode m) {
  constexpr int which = std::is_same_v<Partitioner, zero::bucketed_partitioner> ? 1 : 0;
  const auto buffers = static_cast<std::size_t>(state.range(0));
  using engine = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, Partitioner, zero::mpi_communicator>;
  zero::mpi_communicator comm(MPI_COMM_WORLD, {std::chrono::minutes(2)});
  model net;
  std::vector<matrix> values(layers, matrix::Constant(width, width, 0.01f));
  std::vector<zero::parameter<float>> params;  // model order
  for (int l = 0; l < layers; ++l)
    params.push_back({"W" + std::to_string(l), {values[static_cast<std::size_t>(l)].data(), static_cast<std::size_t>(width * width)}});
  typename engine::options_type options;
  options.threads = 1;
  options.hyperparameters.lr = 1e-6f;
  options.layout.bucket_elements = static_cast<std::size_t>(width * width);  // about a layer a unit
  options.layout.staging_buffers = buffers;
  engine opt(comm, params, options);

  double total = 0, reduce = 0, update = 0, gather = 0;
  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = std::chrono::steady_clock::now();
    matrix dy = net.top;
    double reports = 0;
    for (int l = layers; l-- > 0;) {
      net.backward_layer(l, dy);
      if (m == mode::overlap) {
        auto& g = net.weight_grads[static_cast<std::size_t>(l)];
        opt.gradient_ready(static_cast<std::size_t>(l), {g.data(), static_cast<std::size_t>(g.size())});
      }
    }
    if (m == mode::at_step) {
      const auto r0 = std::chrono::steady_clock::now();
      for (int l = layers; l-- > 0;) {
        auto& g = net.weight_grads[static_cast<std::size_t>(l)];
        opt.gradient_ready(static_cast<std::size_t>(l), {g.data(), static_cast<std::size_t>(g.size())});
      }
      reports = std::chrono::duration<double>(std::chrono::steady_clock::now() - r0).count();
    }
    if (m != mode::compute_only) {
      const auto report = opt.step();
      update += report.update_seconds;
      gather += report.gather_seconds;
    }
    benchmark::DoNotOptimize(dy.data());
    const double t = slowest(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    state.SetIterationTime(t);
    total += t;
    reduce += slowest(reports);
  }
  const double n = static_cast<double>(state.iterations());
  const double step_ms = total / n * 1e3;
  if (m == mode::compute_only) compute_ms[which] = step_ms;
  if (m == mode::at_step) {
    at_step_ms[which] = step_ms;
    at_step_reduce_ms[which] = reduce / n * 1e3;
  }
  state.counters["ranks"] = world;
  state.counters["staging_buffers"] = static_cast<double>(buffers);
  state.counters["step_ms"] = step_ms;
  state.counters["compute_ms"] = compute_ms[which];
  state.counters["exposed_ms"] = step_ms - compute_ms[which];
  state.counters["update_ms"] = update / n * 1e3;
  state.counters["gather_ms"] = gather / n * 1e3;
  if (m == mode::at_step) state.counters["reduce_ms"] = at_step_reduce_ms[which];
  if (m == mode::overlap && at_step_reduce_ms[which] > 0)
    state.counters["hidden_share"] = (at_step_ms[which] - step_ms) / at_step_reduce_ms[which];
}

template <class Partitioner>
void compute_only(benchmark::State& state) {
  run<Partitioner>(state, mode::compute_only);
}
template <class Partitioner>
void at_step(benchmark::State& state) {
  run<Partitioner>(state, mode::at_step);
}
template <class Partitioner>
void overlap(benchmark::State& state) {
  run<Partitioner>(state, mode::overlap);
}

}  // namespace

namespace {

template <class P>
void register_benchmarks(const std::string& partitioner) {
  auto with = [](benchmark::internal::Benchmark* b) {
    b->Iterations(iterations)->UseManualTime()->Unit(benchmark::kMillisecond);
  };
  with(benchmark::RegisterBenchmark(("compute_only/" + partitioner).c_str(), compute_only<P>)->Arg(1));
  with(benchmark::RegisterBenchmark(("at_step/" + partitioner).c_str(), at_step<P>)->Arg(1));
  with(benchmark::RegisterBenchmark(("overlap/" + partitioner).c_str(), overlap<P>)->Arg(1)->Arg(2));
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  Eigen::setNbThreads(1);
  if (const char* n = std::getenv("ZERO_OVERLAP_ITERATIONS")) iterations = std::max(1, std::atoi(n));
  register_benchmarks<zero::contiguous_partitioner>("contiguous");
  register_benchmarks<zero::bucketed_partitioner>("bucketed");
  benchmark::Initialize(&argc, argv);
  zero_bench::run_benchmarks_on_every_rank(rank);
  benchmark::Shutdown();
  MPI_Finalize();
  return 0;
}
