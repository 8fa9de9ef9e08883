// Stage 3 over MPI processes: how much of the parameters' all-gather hides behind forward and
// backward when the engine prefetches the next layer. Driven as a framework drives the engine:
// `layers` fully connected layers registered in model order, each a gather group. Forward
// gathers each layer, computes Y = X W (Eigen) and releases it; backward gathers each layer
// again, last first, computes the weight gradient (X^T dY) and the gradient it passes down
// (dY W^T), reports the weight gradient and releases the layer. Then `step()`.
//
//   mpirun -np 2 zero_bench_mpi_gather --benchmark_format=json --benchmark_out=gather.json
//
// Benchmarks, in this order (each run's figures feed the next ones' counters):
//   compute_only          the arithmetic alone, on the framework's own weights: no engine
//   gathers_only          every gather and release of a step and the step, no arithmetic:
//                         `wait_ms` is the all-gather's time, with nothing to hide it behind
//   train/P/B             the whole step with `layout.prefetch_groups` = P and
//                         `layout.gather_buffers` = B: P = 0 gathers each layer when asked (the
//                         framework waits for all of it); B = 1 leaves no buffer to prefetch into
// The time of an iteration is the slowest rank's. Counters: `step_ms` (forward + backward +
// step), `wait_ms` (this rank's time in gather(), from step_report::gather_seconds),
// `prefetched` (the share of gathers that found their group prefetched), and `hidden_share` =
// (train/0/2's step_ms - this step_ms) / gathers_only's wait_ms: the share of the all-gather's
// time that prefetching hid (0 when none, 1 when all). Each engine trains one step before the
// timed ones, so that it has learned the order of the gathers. Every rank runs the same
// benchmarks with fixed iterations, so all ranks issue the same collectives; rank 0 reports.
#include <benchmark/benchmark.h>
#include <mpi.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "run_benchmarks.hpp"
#include "zero/mpi/communicator.hpp"
#include "zero/optimizer.hpp"

namespace {

constexpr int layers = 12;
constexpr Eigen::Index width = 512;  // each layer a width x width weight: 262,144 parameters, 1 MiB of fp32
constexpr Eigen::Index batch = 64;   // rows of this rank's micro-batch
constexpr auto layer_elements = static_cast<std::size_t>(width * width);
int iterations = 12;  // ZERO_GATHER_ITERATIONS overrides (the smoke test runs 1)

int world = 1, rank = 0;

using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using engine = zero::optimizer<zero::stage3, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner, zero::mpi_communicator>;

// One rank's activations: each layer's input (kept for backward), the gradient from above.
struct activations {
  std::vector<matrix> inputs;
  matrix top;
  matrix grad;
  activations() {
    std::srand(static_cast<unsigned>(1 + rank));
    inputs.assign(layers + 1, matrix::Random(batch, width));
    top = matrix::Random(batch, width);
    grad = matrix::Zero(width, width);
  }
};

using weight_map = Eigen::Map<const matrix>;

// Layer l's forward: its output is layer l + 1's input.
void forward_layer(activations& a, int l, const float* w) {
  a.inputs[static_cast<std::size_t>(l + 1)].noalias() = a.inputs[static_cast<std::size_t>(l)] * weight_map(w, width, width);
}
// Layer l's backward: dW = X^T dY into a.grad, and dY for the layer below = dY W^T.
void backward_layer(activations& a, int l, const float* w, matrix& dy) {
  a.grad.noalias() = a.inputs[static_cast<std::size_t>(l)].transpose() * dy;
  matrix below = dy * weight_map(w, width, width).transpose();
  dy.swap(below);
}

double slowest(double mine) {
  double out = 0;
  MPI_Allreduce(&mine, &out, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return out;
}

// Figures of earlier runs: the all-gather's time alone, the step without prefetching.
double gather_alone_ms = 0, blocking_step_ms = 0;

enum class mode { compute_only, gathers_only, train };

// One training step (or its gathers alone, or its arithmetic alone); the engine's report.
zero::step_report step(engine& opt, activations& a, mode m, const std::vector<std::vector<float>>& own) {
  const bool compute = m != mode::gathers_only;
  const auto weights = [&](int l) {
    return m == mode::compute_only ? own[static_cast<std::size_t>(l)].data() : opt.parameter_values(static_cast<std::size_t>(l)).data;
  };
  for (int l = 0; l < layers; ++l) {
    if (m != mode::compute_only) opt.gather(static_cast<std::uint32_t>(l));
    if (compute) forward_layer(a, l, weights(l));
    if (m != mode::compute_only) opt.release(static_cast<std::uint32_t>(l));
  }
  matrix dy = a.top;
  for (int l = layers; l-- > 0;) {
    if (m != mode::compute_only) opt.gather(static_cast<std::uint32_t>(l));
    if (compute) backward_layer(a, l, weights(l), dy);
    if (m != mode::compute_only) {
      opt.gradient_ready(static_cast<std::size_t>(l), {a.grad.data(), layer_elements});
      opt.release(static_cast<std::uint32_t>(l));
    }
  }
  benchmark::DoNotOptimize(dy.data());
  return m == mode::compute_only ? zero::step_report{} : opt.step();
}

void run(benchmark::State& state, mode m) {
  const auto prefetch = static_cast<std::size_t>(state.range(0));
  const auto buffers = static_cast<std::size_t>(state.range(1));
  zero::mpi_communicator comm(MPI_COMM_WORLD, {std::chrono::minutes(2)});
  activations a;
  std::vector<std::vector<float>> own(layers, std::vector<float>(layer_elements, 0.01f));
  std::vector<zero::parameter<float>> params;  // model order, a layer a gather group
  for (int l = 0; l < layers; ++l) {
    zero::parameter<float> p{"W" + std::to_string(l), {own[static_cast<std::size_t>(l)].data(), layer_elements}};
    p.gather_group = static_cast<std::uint32_t>(l);
    params.push_back(p);
  }
  engine::options_type options;
  options.threads = 1;
  options.hyperparameters.lr = 1e-6f;
  options.layout.bucket_elements = layer_elements;
  options.layout.gather_buffers = buffers;
  options.layout.gather_buffer_elements = layer_elements;
  options.layout.prefetch_groups = prefetch;
  engine opt(comm, params, options);
  step(opt, a, m, own);  // learns the order of the gathers

  double total = 0, wait = 0, gathers = 0, prefetched = 0;
  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = std::chrono::steady_clock::now();
    const zero::step_report report = step(opt, a, m, own);
    const double t = slowest(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    state.SetIterationTime(t);
    total += t;
    wait += report.gather_seconds;
    gathers += report.gathers;
    prefetched += report.prefetched_gathers;
  }
  const double n = static_cast<double>(state.iterations());
  const double step_ms = total / n * 1e3, wait_ms = wait / n * 1e3;
  if (m == mode::gathers_only) gather_alone_ms = wait_ms;
  if (m == mode::train && prefetch == 0 && buffers == 2) blocking_step_ms = step_ms;
  state.counters["ranks"] = world;
  state.counters["prefetch_groups"] = static_cast<double>(prefetch);
  state.counters["gather_buffers"] = static_cast<double>(buffers);
  state.counters["step_ms"] = step_ms;
  state.counters["wait_ms"] = wait_ms;
  state.counters["gather_alone_ms"] = gather_alone_ms;
  state.counters["prefetched"] = gathers > 0 ? prefetched / gathers : 0;
  if (m == mode::train && blocking_step_ms > 0 && gather_alone_ms > 0)
    state.counters["hidden_share"] = (blocking_step_ms - step_ms) / gather_alone_ms;
}

void compute_only(benchmark::State& state) { run(state, mode::compute_only); }
void gathers_only(benchmark::State& state) { run(state, mode::gathers_only); }
void train(benchmark::State& state) { run(state, mode::train); }

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  Eigen::setNbThreads(1);
  if (const char* n = std::getenv("ZERO_GATHER_ITERATIONS")) iterations = std::max(1, std::atoi(n));
  auto with = [](benchmark::internal::Benchmark* b) {
    b->Iterations(iterations)->UseManualTime()->Unit(benchmark::kMillisecond)->ArgNames({"prefetch", "buffers"});
  };
  with(benchmark::RegisterBenchmark("compute_only", compute_only)->Args({0, 2}));
  with(benchmark::RegisterBenchmark("gathers_only", gathers_only)->Args({0, 2}));
  // no prefetching (2 and 1 buffers), then one group ahead (1 buffer: nothing to prefetch into;
  // 2 buffers), then two groups ahead (3 buffers)
  with(benchmark::RegisterBenchmark("train", train)->Args({0, 2})->Args({0, 1})->Args({1, 1})->Args({1, 2})->Args({2, 3}));
  benchmark::Initialize(&argc, argv);
  zero_bench::run_benchmarks_on_every_rank(rank);
  benchmark::Shutdown();
  MPI_Finalize();
  return 0;
}
