#pragma once
//! @file cuda/mpi_bootstrap.hpp
//! The NCCL unique id by MPI broadcast, for jobs that run under MPI anyway. Apart from
//! `zero/cuda/bootstrap.hpp` so that NCCL users without MPI need no MPI header; link `zero::mpi`.
//! Plain C++ over MPI: no CUDA, no GPU (the id is any 128 bytes here).

#include <mpi.h>

#include <string>

#include "zero/cuda/bootstrap.hpp"
#include "zero/error.hpp"

namespace zero::cuda {

//! The id every rank of `comm` shares: `root` broadcasts its `id` (the others' `id` is ignored).
//! Collective over `comm`, blocking (MPI_Bcast). @pre MPI is initialized
//! @throws communicator_error naming the MPI error (under MPI_ERRORS_RETURN on `comm`; with
//!         MPI's default handler an error ends the job instead)
inline bootstrap_id exchange_id(MPI_Comm comm, int root, const bootstrap_id& id) {
  int rank = -1;
  MPI_Comm_rank(comm, &rank);
  bootstrap_id shared = id;
  const int status = MPI_Bcast(shared.bytes.data(), static_cast<int>(bootstrap_id_bytes), MPI_BYTE, root, comm);
  if (status != MPI_SUCCESS) {
    char text[MPI_MAX_ERROR_STRING] = {};
    int length = 0;
    MPI_Error_string(status, text, &length);
    throw communicator_error("zero: MPI_Bcast of the NCCL unique id from rank " + std::to_string(root) +
                             " failed on rank " + std::to_string(rank) + ": " + std::string(text, static_cast<std::size_t>(length)));
  }
  return shared;
}

}  // namespace zero::cuda
