// The thread soak (label reliability): the stage-2 engine on 8 thread ranks for thousands of
// steps in all, with random delays inside every collective, random per-rank gradient orders and
// bucket sizes of 1 element, a prime, and more than the whole model, ends bitwise where the same
// run without delays ends. ZERO_SOAK_STEPS=<n> runs each configuration for n steps instead.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "soak.hpp"

namespace {

int steps_or(int fallback) {
  const char* env = std::getenv("ZERO_SOAK_STEPS");
  return env != nullptr && std::atoi(env) > 0 ? std::atoi(env) : fallback;
}

std::string hex(std::uint64_t v) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(v));
  return text;
}

void soak_threads(soak::config c) {
  constexpr int world = 8;
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const auto calm = soak::run_threads(c, world);
  const auto t1 = clock::now();
  c.delay_percent = 10;
  const auto delayed = soak::run_threads(c, world);
  const auto t2 = clock::now();
  MESSAGE(c.name << ": " << c.steps << " steps on " << world << " thread ranks, "
                 << std::chrono::duration<double>(t1 - t0).count() << " s without delays, "
                 << std::chrono::duration<double>(t2 - t1).count() << " s with; digests " << hex(soak::digest(calm))
                 << " / " << hex(soak::digest(delayed)));
  REQUIRE(calm.size() == delayed.size());
  for (int r = 0; r < world; ++r) {
    CAPTURE(r);
    CHECK(calm[static_cast<std::size_t>(r)].size() == delayed[static_cast<std::size_t>(r)].size());
    CHECK(calm[static_cast<std::size_t>(r)] == delayed[static_cast<std::size_t>(r)]);  // bitwise
  }
}

}  // namespace

TEST_SUITE("reliability") {
  TEST_CASE("soak: 8 thread ranks with random delays in collectives end bitwise equal / bucket of 1 element") {
    soak_threads(soak::bucket_of_one(steps_or(150)));
  }

  TEST_CASE("soak: 8 thread ranks with random delays in collectives end bitwise equal / bucket of 61 elements pipelined") {
    soak_threads(soak::prime_bucket_pipelined(steps_or(600)));
  }

  TEST_CASE("soak: 8 thread ranks with random delays in collectives end bitwise equal / bucket larger than the model") {
    soak_threads(soak::bucket_larger_than_model(steps_or(1500)));
  }
}
