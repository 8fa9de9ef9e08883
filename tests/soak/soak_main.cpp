// The soak as a program, for the planted-bug tests (tests/soak/CMakeLists.txt): trains 8 thread
// ranks (bucket 1, alignment 1) and prints a digest of every rank's final parameters, values
// and optimizer state. Built twice: as is, and with ZERO_TEST_ONLY_SKIP_END_BARRIER (the planted
// bug: thread_communicator skips its closing barrier). check_planted_bug.cmake compares the
// planted build's digest with delays against the correct build's without.
//
//   zero_soak [--steps N] [--delays PERCENT] [--seed S]
//
// Prints "soak: ... digest <hex>" and exits 0, or prints "soak: error: <what>" and exits 1.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>

#include "soak.hpp"

int main(int argc, char** argv) {
  soak::config c;
  c.name = "bucket 1, alignment 1, bucketed, bf16";
  c.steps = 200;
  c.seed = 11;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string_view a = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (a == "--steps") c.steps = v;
    else if (a == "--delays") c.delay_percent = v;
    else if (a == "--seed") c.seed = static_cast<std::uint64_t>(v);
    else {
      std::fprintf(stderr, "usage: %s [--steps N] [--delays PERCENT] [--seed S]\n", argv[0]);
      return 2;
    }
  }
#ifdef ZERO_TEST_ONLY_SKIP_END_BARRIER
  const char* build = "planted bug (thread_communicator skips its closing barrier)";
#else
  const char* build = "correct";
#endif
  try {
    const auto ranks = soak::run_threads(c, 8);
    std::printf("soak: %s build, %s, %d steps, 8 thread ranks, delays %d%%: digest %016llx\n", build, c.name.c_str(),
                c.steps, c.delay_percent, static_cast<unsigned long long>(soak::digest(ranks)));
    return 0;
  } catch (const std::exception& e) {
    std::printf("soak: %s build: error: %s\n", build, e.what());
    return 1;
  }
}
