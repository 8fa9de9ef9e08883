// The MPI soak (labels mpi, reliability; 4 processes): the stage-2 engine over
// zero::mpi_communicator for hundreds of steps per configuration, with random delays inside
// every collective (the communicator's inside_collective hook), random per-rank gradient orders
// and bucket sizes of 1 element, a prime, and more than the whole model, ends bitwise where the
// same run without delays ends, on every process. ZERO_SOAK_STEPS=<n> runs n steps instead.
#include <doctest/doctest.h>
#include <mpi.h>

#include <chrono>
#include <cstdlib>
#include <memory>

#include "soak/soak.hpp"
#include "zero/mpi/communicator.hpp"

namespace {

int steps_or(int fallback) {
  const char* env = std::getenv("ZERO_SOAK_STEPS");
  return env != nullptr && std::atoi(env) > 0 ? std::atoi(env) : fallback;
}

soak::outcome train(const soak::config& c) {
  zero::mpi_communicator_options options;
  options.timeout = std::chrono::seconds(120);
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  auto hook = std::make_shared<soak::delays>(c, world);
  if (c.delay_percent > 0)
    options.inside_collective = [hook](int r, zero::collective, std::uint64_t) { (*hook)(r); };
  zero::mpi_communicator comm(MPI_COMM_WORLD, options);
  return soak::with_types(c, [&]<class Precision, class Partitioner>() {
    return soak::train_rank<Precision, Partitioner>(comm, c);
  });
}

void soak_mpi(soak::config c) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const soak::outcome calm = train(c);
  const auto t1 = clock::now();
  c.delay_percent = 10;
  const soak::outcome delayed = train(c);
  const auto t2 = clock::now();
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MESSAGE(c.name << ": " << c.steps << " steps on " << world << " MPI processes, "
                 << std::chrono::duration<double>(t1 - t0).count() << " s without delays, "
                 << std::chrono::duration<double>(t2 - t1).count() << " s with");
  CHECK(calm.size() == delayed.size());
  CHECK(calm == delayed);  // bitwise, on every process
}

}  // namespace

TEST_SUITE("reliability") {
  TEST_CASE("mpi soak: random delays in collectives end bitwise equal / bucket of 1 element") {
    soak_mpi(soak::bucket_of_one(steps_or(40)));
  }

  TEST_CASE("mpi soak: random delays in collectives end bitwise equal / bucket of 61 elements pipelined") {
    soak_mpi(soak::prime_bucket_pipelined(steps_or(300)));
  }

  TEST_CASE("mpi soak: random delays in collectives end bitwise equal / bucket larger than the model") {
    soak_mpi(soak::bucket_larger_than_model(steps_or(500)));
  }
}
