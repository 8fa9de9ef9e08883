#pragma once
// Shared between the MPI test main (main.cpp) and the test cases.

namespace mpi_test {

//! Set by a test case after which MPI_Finalize must not run: a peer process died, or a
//! collective was abandoned at its deadline. MPI_Finalize is collective over all connected
//! processes and must not run with collectives pending, so it could hang; the process exits with
//! its status without it instead (the tests run with OMPI_MCA_orte_allowed_exit_without_sync=1).
inline bool skip_finalize = false;

}  // namespace mpi_test
