// zero::libtorch::data_parallel over MPI processes: the libtorch tests' model
// (tests/libtorch/torch_training.hpp) trained by one process per rank with ZeRO stage 2 over
// mpi_communicator, against torch::optim::AdamW on the global batch (which every process also
// runs, alone): within 1e-6 of torch per tensor, and every process bitwise equal to every other.

#include "libtorch/torch_training.hpp"  // torch before doctest (c10's CHECK)

#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#include "zero/mpi/communicator.hpp"

namespace {

// FNV-1a over every value's bits.
std::uint64_t digest(const std::vector<torch::Tensor>& values) {
  std::uint64_t h = 1469598103934665603ull;
  for (const auto& t : values) {
    const auto c = t.contiguous();
    const auto* bytes = static_cast<const unsigned char*>(c.data_ptr());
    for (std::size_t i = 0; i < static_cast<std::size_t>(c.numel()) * c.element_size(); ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  }
  return h;
}

template <zero::stage S, class Partitioner>
void check_over_mpi(const char* what) {
  using namespace std::chrono_literals;
  torch::set_num_threads(1);
  zero::mpi_communicator comm(MPI_COMM_WORLD, {60s});
  using engine = zero::optimizer<S, zero::fp32_precision, zero::adamw, Partitioner, zero::mpi_communicator>;
  const auto [values, peak] = libtorch_test::train_rank<engine>(comm, {}, libtorch_test::initial_values(false), zero::libtorch::gradient_release::free,
                                                                zero::unreported_gradients::zero);
  const double error = libtorch_test::worst_relative_error(values, libtorch_test::train_with_torch({}, torch::kFloat));
  if (comm.rank() == 0) std::printf("%s over %d processes: against torch fp32 %.3g\n", what, comm.world_size(), error);
  CHECK(error <= 1e-6);
  const std::uint64_t mine = digest(values);
  std::vector<std::uint64_t> all(static_cast<std::size_t>(comm.world_size()));
  MPI_Allgather(&mine, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD);
  for (int r = 1; r < comm.world_size(); ++r) {
    CAPTURE(r);
    CHECK(all[static_cast<std::size_t>(r)] == all[0]);
  }
  CHECK(peak >= 1);
}

}  // namespace

TEST_SUITE("libtorch") {
  TEST_CASE("libtorch.mpi_stage2_bucketed") { check_over_mpi<zero::stage2, zero::bucketed_partitioner>("stage 2 bucketed"); }
  TEST_CASE("libtorch.mpi_stage1_contiguous") { check_over_mpi<zero::stage1, zero::contiguous_partitioner>("stage 1 contiguous"); }
}
