// Collectives of the MPI communicator, across processes: algorithm bandwidth (bytes / time) and
// bus bandwidth (x (n-1)/n for reduce-scatter and all-gather, x 2(n-1)/n for all-reduce), as
// nccl-tests reports them, with a count of wrong results (every element of every result on
// every rank is checked). Both reductions: `rank_ordered` (zero's default: all-to-all and a sum
// in rank order, bitwise equal to thread_communicator) and `native` (MPI's own algorithms).
//
//   mpirun -np 4 zero_bench_mpi_collectives --benchmark_format=json
//
// Rank 0 runs Google Benchmark; before each iteration it tells the other ranks what to run.
// Each iteration: all ranks meet at a barrier, then rank 0 times one collective (the time of
// the collective alone: filling the inputs and checking the results are outside it).
// Arguments of each benchmark: bytes (the buffer: reduce-scatter input, all-gather output,
// all-reduce buffer), reduction (0 rank_ordered, 1 native).
#include <benchmark/benchmark.h>
#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <vector>

#include "zero/mpi/communicator.hpp"

namespace {

enum class kind : std::int64_t { reduce_scatter, all_gather, all_reduce };

// What rank 0 tells the others before each iteration; kind -1 ends a benchmark, -2 the program.
struct command {
  std::int64_t what = -1;
  std::int64_t bytes = 0;
  std::int64_t reduction = 0;
};

int world = 1, rank = 0;

// One rank's side of the current benchmark: its communicator and buffers.
struct runner {
  std::unique_ptr<zero::mpi_communicator> comm;
  std::int64_t reduction = -1;
  std::size_t count = 0, per_rank = 0;
  std::vector<float> send, recv;
  std::uint64_t wrong = 0;

  void prepare(const command& c) {
    if (!comm || reduction != c.reduction) {
      comm.reset();
      comm = std::make_unique<zero::mpi_communicator>(
          MPI_COMM_WORLD, zero::mpi_communicator_options{std::chrono::minutes(2), false,
                                                         c.reduction == 0 ? zero::mpi_reduction::rank_ordered
                                                                          : zero::mpi_reduction::native});
      reduction = c.reduction;
    }
    const std::size_t n = static_cast<std::size_t>(world);
    const std::size_t want = static_cast<std::size_t>(c.bytes) / sizeof(float) / n * n;
    if (want != count) {
      count = want;
      per_rank = count / n;
      send.assign(count, 0.0f);
      recv.assign(count, 0.0f);
    }
  }

  // fill, run, check; returns the seconds of the collective alone
  double iterate(kind k) {
    const float me = static_cast<float>(rank + 1);
    const std::size_t inputs = k == kind::all_gather ? per_rank : count;
    for (std::size_t i = 0; i < inputs; ++i) send[i] = me;
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = std::chrono::steady_clock::now();
    if (k == kind::reduce_scatter) comm->reduce_scatter(send.data(), recv.data(), per_rank);
    if (k == kind::all_gather) comm->all_gather(send.data(), recv.data(), per_rank);
    if (k == kind::all_reduce) comm->all_reduce(send.data(), recv.data(), count);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const float sum = static_cast<float>(world * (world + 1) / 2);
    if (k == kind::all_gather) {
      for (std::size_t i = 0; i < count; ++i) wrong += recv[i] != static_cast<float>(i / per_rank + 1);
    } else {
      const std::size_t n = k == kind::reduce_scatter ? per_rank : count;
      for (std::size_t i = 0; i < n; ++i) wrong += recv[i] != sum;
    }
    return seconds;
  }

  // the wrong results of every rank, summed on rank 0
  std::uint64_t collect_wrong() {
    std::uint64_t total = 0;
    MPI_Reduce(&wrong, &total, 1, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
    wrong = 0;
    return total;
  }
};

runner the_runner;

void send_command(command c) { MPI_Bcast(&c, 3, MPI_INT64_T, 0, MPI_COMM_WORLD); }

template <kind K>
void collective(benchmark::State& state) {
  const command c{static_cast<std::int64_t>(K), state.range(0), state.range(1)};
  send_command(c);  // the others prepare too
  the_runner.prepare(c);
  double seconds = 0;
  for (auto _ : state) {
    send_command(c);
    const double t = the_runner.iterate(K);
    state.SetIterationTime(t);
    seconds += t;
  }
  send_command({-1, 0, 0});
  const std::uint64_t wrong = the_runner.collect_wrong();
  const double n = world;
  const double factor = K == kind::all_reduce ? 2 * (n - 1) / n : (n - 1) / n;
  const double bytes = static_cast<double>(the_runner.count * sizeof(float));
  const double algbw = bytes * static_cast<double>(state.iterations()) / seconds;
  state.counters["ranks"] = n;
  state.counters["algbw_GBps"] = algbw / 1e9;
  state.counters["busbw_GBps"] = algbw * factor / 1e9;
  state.counters["wrong"] = static_cast<double>(wrong);
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes) * state.iterations());
  state.SetLabel(c.reduction == 0 ? "rank_ordered" : "native");
}

// The other ranks: run what rank 0 says until it says stop.
void follow() {
  command current;
  for (;;) {
    command c;
    MPI_Bcast(&c, 3, MPI_INT64_T, 0, MPI_COMM_WORLD);
    if (c.what == -2) return;
    if (c.what == -1) {
      the_runner.collect_wrong();
      current = {};
      continue;
    }
    if (current.what == -1) {  // the first command of a benchmark: prepare, then iterate
      current = c;
      the_runner.prepare(c);
      continue;
    }
    the_runner.iterate(static_cast<kind>(c.what));
  }
}

void sizes(benchmark::internal::Benchmark* b) {
  for (std::int64_t reduction : {0, 1})
    for (std::int64_t bytes = 4096; bytes <= (std::int64_t{256} << 20); bytes *= 16) b->Args({bytes, reduction});
  b->ArgNames({"bytes", "native"})->UseManualTime()->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK(collective<kind::reduce_scatter>)->Apply(sizes);
BENCHMARK(collective<kind::all_gather>)->Apply([](benchmark::internal::Benchmark* b) {
  for (std::int64_t bytes = 4096; bytes <= (std::int64_t{256} << 20); bytes *= 16) b->Args({bytes, 0});
  b->ArgNames({"bytes", "native"})->UseManualTime()->Unit(benchmark::kMicrosecond);
});
BENCHMARK(collective<kind::all_reduce>)->Apply(sizes);

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int status = 0;
  if (rank == 0) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) status = 1;
    else benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    send_command({-2, 0, 0});
  } else {
    follow();
  }
  the_runner.comm.reset();  // before MPI_Finalize
  MPI_Finalize();
  return status;
}
