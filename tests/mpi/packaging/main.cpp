// Consumer of an installed zero::mpi: compiles and links the MPI communicator, and (run
// without mpiexec, before MPI_Init) checks that it refuses to work rather than initialize MPI.
#include <zero/mpi/communicator.hpp>
#include <zero/zero.hpp>

#include <cstdio>

int main() {
  using engine = zero::optimizer<zero::stage2, zero::bf16_mixed, zero::adamw, zero::bucketed_partitioner, zero::mpi_communicator>;
  static_assert(zero::communicator<engine::communicator_type>);
  try {
    zero::mpi_communicator comm(MPI_COMM_WORLD);
  } catch (const zero::usage_error& e) {
    std::printf("zero consumer (mpi): ok (%s)\n", e.what());
    return 0;
  }
  std::fprintf(stderr, "zero consumer (mpi): constructed a communicator before MPI_Init\n");
  return 1;
}
