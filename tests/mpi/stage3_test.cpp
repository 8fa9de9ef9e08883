// Stage 3 over MPI processes (tests/engine/stage3_driver.hpp): layers gathered for forward and
// again for backward, gradients computed from the gathered values and reported in a random order
// per rank, each poisoned when released. Bitwise the same parameters as stage 2 over the same
// processes after every step, on every rank alike; the bytes moved per step are stage 2's
// reductions plus two broadcasts of every parameter element. Prefetching off, one and three
// groups ahead, and forward off the order (prefetched groups dropped): the same bits.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#include "engine/stage3_driver.hpp"
#include "zero/mpi/communicator.hpp"

namespace {

using namespace stage3_driver;

// A digest of a run's values (every bit), for comparing ranks.
std::uint64_t digest(const std::vector<std::vector<std::vector<float>>>& values) {
  std::uint64_t h = 1469598103934665603ull;
  for (const auto& step : values)
    for (const auto& param : step)
      for (float x : param) {
        std::uint32_t bits;
        std::memcpy(&bits, &x, sizeof bits);
        h = (h ^ bits) * 1099511628211ull;
      }
  return h;
}

template <class Precision, class Partitioner>
void check_mpi(double max_grad_norm, const run_options& base = {}) {
  using S2 = zero::optimizer<zero::stage2, Precision, zero::adamw, Partitioner, zero::mpi_communicator>;
  using S3 = zero::optimizer<zero::stage3, Precision, zero::adamw, Partitioner, zero::mpi_communicator>;
  zero::mpi_communicator comm(MPI_COMM_WORLD, {std::chrono::seconds(60)});
  for (std::size_t bucket : {std::size_t{1}, std::size_t{37}, std::size_t{1} << 20}) {
    CAPTURE(bucket);
    run_options o = base;
    o.world = comm.world_size();
    o.bucket_elements = bucket;
    o.max_grad_norm = max_grad_norm;
    const rank_result two = run_rank<S2>(comm, o, adamw_h());
    const rank_result three = run_rank<S3>(comm, o, adamw_h());
    CHECK(three.poisoned_reads == 0);
    CHECK(same_bits(three.values, two.values));
    CHECK(three.values.front() != three.values.back());
    CHECK(three.memory == three.expected);
    // every rank holds the same values
    const std::uint64_t mine = digest(three.values);
    std::vector<std::uint64_t> all(static_cast<std::size_t>(comm.world_size()));
    comm.all_gather(&mine, all.data(), 1);
    for (std::uint64_t theirs : all) CHECK(theirs == mine);
    using P = typename S3::param_type;
    const std::size_t psi = model(o.layers).elements();
    // a step's gathers move every parameter twice; a prefetch may start before the step's first
    // gather (at the reads after the last step), so the count is exact without prefetching, and
    // over the whole run with it (but for what is still prefetched at the end, or dropped)
    if (o.world > 1) {  // (one process broadcasts nothing)
      if (o.prefetch_groups == 0) CHECK(three.step_traffic.bytes_of(zero::collective::broadcast) == 2 * psi * sizeof(P));
      CHECK(three.broadcast_bytes >= three.asked_bytes);
      if (!o.shuffle_forward) CHECK(three.broadcast_bytes <= three.asked_bytes + o.prefetch_groups * psi * sizeof(P));
    }
    // every rank prefetched the same gathers, all but two a step once the order repeats
    std::vector<std::uint32_t> prefetched(three.prefetched.size() * static_cast<std::size_t>(comm.world_size()));
    comm.all_gather(three.prefetched.data(), prefetched.data(), three.prefetched.size());
    for (std::size_t i = 0; i < prefetched.size(); ++i) CHECK(prefetched[i] == three.prefetched[i % three.prefetched.size()]);
    if (o.prefetch_groups > 0 && !o.shuffle_forward)
      for (std::size_t t = 2; t < three.gathers.size(); ++t) CHECK(three.prefetched[t] == three.gathers[t] - 2);
    for (auto c : {zero::collective::reduce_scatter, zero::collective::reduce, zero::collective::all_reduce})
      CHECK(three.step_traffic.bytes_of(c) == two.step_traffic.bytes_of(c));
  }
}

}  // namespace

TEST_SUITE("equivalence") {
  TEST_CASE("mpi: stage 3 equals stage 2 bitwise over MPI processes / fp32 contiguous") {
    check_mpi<zero::fp32_precision, zero::contiguous_partitioner>(0);
  }
  TEST_CASE("mpi: stage 3 equals stage 2 bitwise over MPI processes / bf16 master bucketed clipped") {
    check_mpi<zero::bf16_mixed, zero::bucketed_partitioner>(0.5);
  }
  TEST_CASE("mpi: stage 3 equals stage 2 bitwise over MPI processes / prefetching off") {
    run_options o;
    o.prefetch_groups = 0;
    check_mpi<zero::fp32_precision, zero::bucketed_partitioner>(0, o);
  }
  TEST_CASE("mpi: stage 3 equals stage 2 bitwise over MPI processes / prefetching 3 ahead with pipelined reductions") {
    run_options o;
    o.gather_buffers = 4;
    o.prefetch_groups = 3;
    o.staging_buffers = 2;
    check_mpi<zero::bf16_mixed, zero::contiguous_partitioner>(0.5, o);
  }
  TEST_CASE("mpi: stage 3 equals stage 2 bitwise over MPI processes / forward off the learned order") {
    run_options o;
    o.shuffle_forward = true;
    o.gather_buffers = 3;
    o.prefetch_groups = 2;
    check_mpi<zero::fp32_precision, zero::contiguous_partitioner>(0, o);
  }
}
