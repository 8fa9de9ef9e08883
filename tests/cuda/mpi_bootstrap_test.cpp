// zero/cuda/mpi_bootstrap.hpp under mpiexec: rank 0's id (any 128 bytes here) reaches every rank.
// A plain program (no doctest): exits 0 when every rank holds rank 0's id.
#include <mpi.h>

#include <cstdio>

#include "zero/cuda/mpi_bootstrap.hpp"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  zero::cuda::bootstrap_id expected;
  for (std::size_t i = 0; i < expected.bytes.size(); ++i) expected.bytes[i] = static_cast<std::uint8_t>(i * 13 + 5);
  zero::cuda::bootstrap_id mine;  // zeros on every rank but 0
  if (rank == 0) mine = expected;
  const zero::cuda::bootstrap_id got = zero::cuda::exchange_id(MPI_COMM_WORLD, 0, mine);
  int ok = got == expected ? 1 : 0, all_ok = 0;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (rank == 0) std::printf("%d ranks: %s\n", size, all_ok != 0 ? "every rank holds rank 0's id" : "FAILED");
  MPI_Finalize();
  return all_ok != 0 ? 0 : 1;
}
