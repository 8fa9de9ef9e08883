// The engine's equivalence tests as separate processes: stages 0, 1, 2 x fp32 and bf16 (fp32
// master) x both partitioners, each with buckets of 1 element per rank, a prime and one larger
// than the model, 20 steps. Every rank's parameters and updated values are bitwise equal to
// the same configuration run on thread ranks of the same world size (in this process), which
// in turn equals the double-precision reference (checked here too); traffic per step is equal;
// with the collectives pipelined (two staging buffers, non-blocking MPI) the bits are the same.
#include <doctest/doctest.h>

#include <cstdint>

#include "mpi_harness.hpp"

namespace {

template <zero::stage S, class Precision, class Partitioner>
struct config {
  using threads = zero::optimizer<S, Precision, zero::adamw, Partitioner>;
  using mpi = zero::optimizer<S, Precision, zero::adamw, Partitioner, zero::mpi_communicator>;
  static constexpr bool bf16 = std::is_same_v<Precision, zero::bf16_mixed>;
};

}  // namespace

// Named configurations: doctest prints them in the test names (no commas: CTest names).
namespace mpi_config {
struct fp32_stage0_contiguous : config<zero::stage0, zero::fp32_precision, zero::contiguous_partitioner> {};
struct fp32_stage1_contiguous : config<zero::stage1, zero::fp32_precision, zero::contiguous_partitioner> {};
struct fp32_stage2_contiguous : config<zero::stage2, zero::fp32_precision, zero::contiguous_partitioner> {};
struct fp32_stage0_bucketed : config<zero::stage0, zero::fp32_precision, zero::bucketed_partitioner> {};
struct fp32_stage1_bucketed : config<zero::stage1, zero::fp32_precision, zero::bucketed_partitioner> {};
struct fp32_stage2_bucketed : config<zero::stage2, zero::fp32_precision, zero::bucketed_partitioner> {};
struct bf16_stage0_contiguous : config<zero::stage0, zero::bf16_mixed, zero::contiguous_partitioner> {};
struct bf16_stage1_contiguous : config<zero::stage1, zero::bf16_mixed, zero::contiguous_partitioner> {};
struct bf16_stage2_contiguous : config<zero::stage2, zero::bf16_mixed, zero::contiguous_partitioner> {};
struct bf16_stage0_bucketed : config<zero::stage0, zero::bf16_mixed, zero::bucketed_partitioner> {};
struct bf16_stage1_bucketed : config<zero::stage1, zero::bf16_mixed, zero::bucketed_partitioner> {};
struct bf16_stage2_bucketed : config<zero::stage2, zero::bf16_mixed, zero::bucketed_partitioner> {};
}  // namespace mpi_config

namespace {

zero::adamw::hyperparameters adamw_h() {
  zero::adamw::hyperparameters h;
  h.lr = 1e-2;
  h.weight_decay = 0.1;
  return h;
}

}  // namespace

TEST_SUITE("mpi") {
  TEST_CASE_TEMPLATE("mpi: the engine over MPI processes equals thread ranks bitwise / 20 AdamW steps", C,
                     mpi_config::fp32_stage0_contiguous, mpi_config::fp32_stage1_contiguous, mpi_config::fp32_stage2_contiguous,
                     mpi_config::fp32_stage0_bucketed, mpi_config::fp32_stage1_bucketed, mpi_config::fp32_stage2_bucketed,
                     mpi_config::bf16_stage0_contiguous, mpi_config::bf16_stage1_contiguous, mpi_config::bf16_stage2_contiguous,
                     mpi_config::bf16_stage0_bucketed, mpi_config::bf16_stage1_bucketed, mpi_config::bf16_stage2_bucketed) {
    zero::mpi_communicator comm(MPI_COMM_WORLD, {std::chrono::seconds(60)});
    const int world = comm.world_size(), rank = comm.rank();
    for (std::size_t bucket : {std::size_t{1}, std::size_t{37}, std::size_t{1} << 20}) {
      CAPTURE(world);
      CAPTURE(rank);
      CAPTURE(bucket);
      harness::run_options o;
      o.world = world;
      o.bucket_elements = bucket;
      o.alignment = bucket == 1 ? 1 : (C::bf16 ? 8 : 4);
      o.order_seed = 7 + static_cast<std::uint64_t>(world);
      const auto threads = harness::run<typename C::threads>(o, adamw_h());
      // another report order on the MPI ranks: the result must not depend on it
      o.order_seed += 1000;
      const auto mine = mpi_harness::run<typename C::mpi>(comm, o, adamw_h());

      // the thread run is right (as tests/engine checks), so bitwise equality makes this one right
      CHECK(threads.max_value_error < 1e-6);
      CHECK(threads.param_rounding_mismatches == 0);
      CHECK(threads.rank_disagreements == 0);
      if constexpr (C::bf16) CHECK(threads.max_param_error <= 0x1.0p-7);
      else CHECK(threads.max_param_error < 1e-6);

      CHECK(mpi_harness::same_bits(mine.params, threads.params[static_cast<std::size_t>(rank)]));
      CHECK(mpi_harness::owned_value_mismatches(mine, threads) == 0);
      for (std::size_t k = 0; k < zero::collective_kinds; ++k) {
        const auto kind = static_cast<zero::collective>(k);
        CAPTURE(zero::to_string(kind));
        CHECK(mine.step_traffic.bytes_of(kind) == threads.step_traffic.bytes_of(kind));
        CHECK(mine.step_traffic.calls_of(kind) == threads.step_traffic.calls_of(kind));
      }
      CHECK(mine.memory.total() == threads.memory.total());

      // pipelined: reductions and all-gathers in flight through two staging buffers (MPI's
      // non-blocking collectives, progressed while gradients are reported): the same bits
      if (bucket == 37) {
        o.staging_buffers = 2;
        const auto pipelined = mpi_harness::run<typename C::mpi>(comm, o, adamw_h());
        CHECK(mpi_harness::same_bits(pipelined.params, threads.params[static_cast<std::size_t>(rank)]));
        CHECK(mpi_harness::owned_value_mismatches(pipelined, threads) == 0);
        CHECK(pipelined.memory.of(zero::memory_kind::buckets) == 2 * mine.memory.of(zero::memory_kind::buckets));
      }
    }
    CHECK_FALSE(comm.broken());
  }

  TEST_CASE("mpi: parameters never reported and gradient slots give the thread result too") {
    zero::mpi_communicator comm(MPI_COMM_WORLD, {std::chrono::seconds(60)});
    harness::run_options o;
    o.world = comm.world_size();
    o.bucket_elements = 37;
    o.skip_some = true;
    const auto t2 = harness::run<zero::optimizer<zero::stage2, zero::bf16_mixed, zero::adamw, zero::bucketed_partitioner>>(o, adamw_h());
    const auto m2 = mpi_harness::run<zero::optimizer<zero::stage2, zero::bf16_mixed, zero::adamw, zero::bucketed_partitioner,
                                                     zero::mpi_communicator>>(comm, o, adamw_h());
    CHECK(mpi_harness::same_bits(m2.params, t2.params[static_cast<std::size_t>(comm.rank())]));
    CHECK(mpi_harness::owned_value_mismatches(m2, t2) == 0);
    o.skip_some = false;
    o.slots = true;
    const auto t1 = harness::run<zero::optimizer<zero::stage1, zero::fp32_precision>>(o, adamw_h());
    const auto m1 = mpi_harness::run<zero::optimizer<zero::stage1, zero::fp32_precision, zero::adamw, zero::contiguous_partitioner,
                                                     zero::mpi_communicator>>(comm, o, adamw_h());
    CHECK(mpi_harness::same_bits(m1.params, t1.params[static_cast<std::size_t>(comm.rank())]));
    CHECK(mpi_harness::owned_value_mismatches(m1, t1) == 0);
  }
}
