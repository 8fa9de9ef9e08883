// doctest under MPI: every rank runs the same test cases (mpiexec hands every rank the same
// arguments, e.g. --test-case=<name>); rank 0 prints its report as usual; another rank's report
// is printed, prefixed with its rank, only if that rank failed. Every rank exits with its own
// status, so that a failure on any rank makes mpiexec, and the CTest test, fail. A run that
// matches no test case fails too (a renamed test must not pass silently).
//
// Listing test cases and suites (what test discovery does at build time) needs no MPI. A test
// case after which MPI_Finalize could hang (a peer died) sets mpi_test::skip_finalize.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>

#include "test_main.hpp"

namespace {

int test_cases_run = 0;

struct count_test_cases : doctest::IReporter {
  explicit count_test_cases(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData&) override { ++test_cases_run; }
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

bool only_lists(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    for (std::string_view q : {"--list", "-ltc", "-lts", "-lr", "--help", "-h", "-?", "--version", "-v", "--count", "-c"})
      if (a.substr(0, q.size()) == q && (a.size() == q.size() || a[q.size()] == '-' || a[q.size()] == '=')) return true;
  }
  return false;
}

}  // namespace

DOCTEST_REGISTER_LISTENER("zero_mpi_count", 1, count_test_cases);

int main(int argc, char** argv) {
  if (only_lists(argc, argv)) {
    doctest::Context context(argc, argv);
    return context.run();
  }
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);

  doctest::Context context;
  context.setOption("no-colors", true);  // mpiexec forwards output through a pseudo-terminal
  context.applyCommandLine(argc, argv);
  std::ostringstream report;
  if (rank != 0) context.setCout(&report);
  int status = context.run();
  if (status == 0 && test_cases_run == 0) {
    std::fprintf(stderr, "[rank %d] no test case matched the filters\n", rank);
    status = 1;
  }
  if (rank != 0 && status != 0) {
    std::istringstream lines(report.str());
    for (std::string line; std::getline(lines, line);) std::cerr << "[rank " << rank << "] " << line << '\n';
  }
  std::cout.flush();
  std::cerr.flush();
  if (mpi_test::skip_finalize) {
    std::fflush(nullptr);
    std::_Exit(status);
  }
  MPI_Finalize();
  return status;
}
