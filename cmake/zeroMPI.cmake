# The MPI backend: target zero_mpi (alias zero::mpi) = zero::zero + MPI::MPI_CXX, for
# include/zero/mpi/communicator.hpp. Included from the top-level CMakeLists.txt after the zero
# target. ZERO_WITH_MPI defaults to ON when MPI is found; turning it ON without MPI is an error.
#
# Sets for tests, examples and benchmarks: ZERO_MPI_STATUS (a sentence saying why the backend is
# or is not built), ZERO_MPIEXEC (the launcher), ZERO_MPIEXEC_FLAGS (the flags this MPI needs to
# run N ranks on one machine, as root too, plus MPIEXEC_PREFLAGS), ZERO_MPIEXEC_POSTFLAGS,
# ZERO_MPIEXEC_ENVIRONMENT (loopback-only settings) and ZERO_MPI_IS_OPEN_MPI.

# The C++ bindings of MPI-2 (deprecated, removed in MPI-3) are not needed: mpi.h alone.
if(NOT DEFINED MPI_CXX_SKIP_MPICXX)
  set(MPI_CXX_SKIP_MPICXX ON)
endif()
find_package(MPI COMPONENTS CXX QUIET)

if(MPI_CXX_FOUND)
  set(zero_mpi_default ON)
else()
  set(zero_mpi_default OFF)
endif()
option(ZERO_WITH_MPI "Build the MPI communicator (zero::mpi)" ${zero_mpi_default})

if(NOT ZERO_WITH_MPI)
  if(MPI_CXX_FOUND)
    set(ZERO_MPI_STATUS "the MPI backend is off (ZERO_WITH_MPI=OFF)")
  else()
    set(ZERO_MPI_STATUS "MPI was not found (install libopenmpi-dev and openmpi-bin, or set MPI_HOME)")
  endif()
  message(STATUS "zero: MPI backend not built: ${ZERO_MPI_STATUS}")
  return()
endif()
if(NOT MPI_CXX_FOUND)
  message(FATAL_ERROR "zero: ZERO_WITH_MPI=ON but MPI (C++) was not found: install libopenmpi-dev and openmpi-bin, "
                      "or point MPI_HOME at an MPI installation")
endif()

add_library(zero_mpi INTERFACE)
add_library(zero::mpi ALIAS zero_mpi)
target_link_libraries(zero_mpi INTERFACE zero::zero MPI::MPI_CXX)
set_target_properties(zero_mpi PROPERTIES EXPORT_NAME mpi)

# Installed in its own export set, so that zeroTargets.cmake never needs MPI; zeroConfig.cmake
# loads zeroMPITargets.cmake when MPI is found on the consumer's side (see zeroConfig.cmake.in).
install(TARGETS zero_mpi EXPORT zeroMPITargets)
install(EXPORT zeroMPITargets NAMESPACE zero:: DESTINATION ${CMAKE_INSTALL_DATADIR}/cmake/zero)

# How to launch N ranks on this machine. Open MPI refuses to run as root without
# --allow-run-as-root and more ranks than cores without --oversubscribe; other MPIs (MPICH)
# allow both and reject those flags.
set(ZERO_MPI_IS_OPEN_MPI OFF)
set(ZERO_MPIEXEC "")
if(MPIEXEC_EXECUTABLE)
  execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE zero_mpiexec_version
                  ERROR_VARIABLE zero_mpiexec_version RESULT_VARIABLE zero_mpiexec_status)
  if(zero_mpiexec_version MATCHES "Open MPI|OpenRTE")
    set(ZERO_MPI_IS_OPEN_MPI ON)
  endif()
  set(ZERO_MPIEXEC ${MPIEXEC_EXECUTABLE})
endif()
# Loopback only: shared memory between the ranks (btl self,vader), the runtime on lo. Ignored
# by MPIs other than Open MPI.
set(ZERO_MPIEXEC_ENVIRONMENT
  OMPI_MCA_btl=self,vader
  OMPI_MCA_btl_tcp_if_include=lo
  OMPI_MCA_oob_tcp_if_include=lo
  OMPI_MCA_btl_base_warn_component_unused=0)
# A test runs: ${ZERO_MPIEXEC} ${MPIEXEC_NUMPROC_FLAG} N ${ZERO_MPIEXEC_FLAGS} <exe> ${ZERO_MPIEXEC_POSTFLAGS} <args>
separate_arguments(ZERO_MPIEXEC_FLAGS UNIX_COMMAND "${MPIEXEC_PREFLAGS}")
separate_arguments(ZERO_MPIEXEC_POSTFLAGS UNIX_COMMAND "${MPIEXEC_POSTFLAGS}")
if(ZERO_MPI_IS_OPEN_MPI)
  list(PREPEND ZERO_MPIEXEC_FLAGS --oversubscribe --allow-run-as-root)
endif()

if(MPIEXEC_EXECUTABLE)
  string(REGEX REPLACE "[\r\n].*" "" zero_mpiexec_version "${zero_mpiexec_version}")
  set(ZERO_MPI_STATUS "MPI ${MPI_CXX_VERSION}, launcher ${MPIEXEC_EXECUTABLE} (${zero_mpiexec_version})")
else()
  set(ZERO_MPI_STATUS "MPI ${MPI_CXX_VERSION} found but no mpiexec (install openmpi-bin)")
endif()
message(STATUS "zero: MPI backend zero::mpi: ${ZERO_MPI_STATUS}")
