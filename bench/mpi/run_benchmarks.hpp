#pragma once
// What every MPI benchmark's main() ends with: every rank runs the same benchmarks (so that all
// ranks issue the same collectives), rank 0 alone reports them.
#include <benchmark/benchmark.h>

#include <vector>

namespace zero_bench {

//! A reporter for the ranks other than 0: they run the benchmarks and print nothing.
class silent_reporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

//! Runs the registered benchmarks on this rank (`rank`): rank 0 with the command line's
//! reporters, the others silently.
inline void run_benchmarks_on_every_rank(int rank) {
  if (rank == 0) {
    benchmark::RunSpecifiedBenchmarks();
  } else {
    silent_reporter quiet;
    benchmark::RunSpecifiedBenchmarks(&quiet);
  }
}

}  // namespace zero_bench
