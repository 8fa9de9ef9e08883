# The CUDA backend: targets zero_cuda (alias zero::cuda) = zero::zero + the CUDA runtime, for
# include/zero/cuda/ (kernels, the fused update, device buffers, the device thread communicator),
# and zero_nccl (alias zero::nccl) = zero::cuda + NCCL, for zero/cuda/nccl_communicator.hpp.
# Included from the top-level CMakeLists.txt after the zero target.
#
# CUDA is optional: without nvcc (or with ZERO_WITH_CUDA=OFF) nothing here is built and every
# host-side target builds and passes as before. As the top-level project, zero enables CUDA
# itself when nvcc is found, with an explicit architecture list (never `native`: CI machines
# have no GPU):
#   ZERO_CUDA_ARCHITECTURES (cache, default "80;90") unless CMAKE_CUDA_ARCHITECTURES is given.
# As a subproject (add_subdirectory), the consumer's project decides its languages: zero::cuda
# is defined when the consumer has enabled CUDA before add_subdirectory(zero), and zero never
# enables a language in the consumer's project.
#
# Sets for tests and benchmarks: ZERO_CUDA_STATUS (a sentence saying why the backend is or is not
# built) and ZERO_NCCL_STATUS.

get_property(zero_enabled_languages GLOBAL PROPERTY ENABLED_LANGUAGES)
if(ZERO_IS_TOP_LEVEL)
  include(CheckLanguage)
  check_language(CUDA)
  set(zero_cuda_available "${CMAKE_CUDA_COMPILER}")
  set(zero_cuda_missing "no CUDA compiler was found (install the CUDA toolkit, or set CMAKE_CUDA_COMPILER)")
elseif("CUDA" IN_LIST zero_enabled_languages)
  set(zero_cuda_available ON)
else()
  set(zero_cuda_available OFF)
  set(zero_cuda_missing "the project that adds zero has not enabled CUDA (project(... LANGUAGES CXX CUDA) or "
                        "enable_language(CUDA) before add_subdirectory(zero))")
endif()

if(zero_cuda_available)
  set(zero_cuda_default ON)
else()
  set(zero_cuda_default OFF)
endif()
option(ZERO_WITH_CUDA "Build the CUDA backend (zero::cuda, zero::nccl)" ${zero_cuda_default})
set(ZERO_NCCL_STATUS "the CUDA backend is not built")

if(NOT ZERO_WITH_CUDA)
  if(zero_cuda_available)
    set(ZERO_CUDA_STATUS "the CUDA backend is off (ZERO_WITH_CUDA=OFF)")
  else()
    string(CONCAT ZERO_CUDA_STATUS ${zero_cuda_missing})
  endif()
  message(STATUS "zero: CUDA backend not built: ${ZERO_CUDA_STATUS}")
  return()
endif()
if(NOT zero_cuda_available)
  string(CONCAT zero_cuda_missing ${zero_cuda_missing})
  message(FATAL_ERROR "zero: ZERO_WITH_CUDA=ON but ${zero_cuda_missing}")
endif()

set(ZERO_CUDA_ARCHITECTURES "80;90" CACHE STRING
    "CUDA architectures to compile for when CMAKE_CUDA_ARCHITECTURES is not set (e.g. 90, or 80;90)")
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
  set(CMAKE_CUDA_ARCHITECTURES ${ZERO_CUDA_ARCHITECTURES})
endif()
if(ZERO_IS_TOP_LEVEL)
  enable_language(CUDA)
endif()
find_package(CUDAToolkit REQUIRED)

add_library(zero_cuda INTERFACE)
add_library(zero::cuda ALIAS zero_cuda)
target_link_libraries(zero_cuda INTERFACE zero::zero CUDA::cudart)
# C++20 in CUDA TUs. CMake releases older than the toolkit (3.25 with CUDA 13) do not know its
# compile features: then the flag itself.
if("cuda_std_20" IN_LIST CMAKE_CUDA_COMPILE_FEATURES)
  target_compile_features(zero_cuda INTERFACE cuda_std_20)
else()
  target_compile_options(zero_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20>)
endif()
# No --fmad=false or other arithmetic flags: zero's kernels compute with explicitly rounded
# intrinsics (zero::exact_float, include/zero/arithmetic.hpp), so they agree with the host bit for
# bit whatever the user's flags, and the user's own kernels keep their multiply-adds.
set_target_properties(zero_cuda PROPERTIES EXPORT_NAME cuda)

# NCCL: in the toolkit (as with the CUDA 13 containers) or the system's libnccl-dev.
find_path(ZERO_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV NCCL_HOME PATH_SUFFIXES include)
find_library(ZERO_NCCL_LIBRARY NAMES nccl libnccl.so.2 HINTS ${CUDAToolkit_LIBRARY_DIR} ENV NCCL_HOME PATH_SUFFIXES lib lib64)
if(ZERO_NCCL_INCLUDE_DIR AND ZERO_NCCL_LIBRARY)
  add_library(zero_nccl INTERFACE)
  add_library(zero::nccl ALIAS zero_nccl)
  target_include_directories(zero_nccl INTERFACE ${ZERO_NCCL_INCLUDE_DIR})
  target_link_libraries(zero_nccl INTERFACE zero_cuda ${ZERO_NCCL_LIBRARY})
  set_target_properties(zero_nccl PROPERTIES EXPORT_NAME nccl)
  file(STRINGS "${ZERO_NCCL_INCLUDE_DIR}/nccl.h" zero_nccl_version REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) ")
  string(REGEX REPLACE "[^0-9;]" "" zero_nccl_version "${zero_nccl_version}")
  string(REPLACE ";" "." zero_nccl_version "${zero_nccl_version}")
  set(ZERO_NCCL_STATUS "NCCL ${zero_nccl_version} (${ZERO_NCCL_LIBRARY})")
else()
  set(ZERO_NCCL_STATUS "NCCL was not found (nccl.h and libnccl: install libnccl-dev, or set NCCL_HOME)")
endif()

# Installed in their own export set, so that zeroTargets.cmake never needs CUDA; zeroConfig.cmake
# loads zeroCUDATargets.cmake when the consumer has the CUDA toolkit (see zeroConfig.cmake.in).
# zero::nccl records the NCCL library's absolute path found here.
install(TARGETS zero_cuda EXPORT zeroCUDATargets)
if(TARGET zero_nccl)
  install(TARGETS zero_nccl EXPORT zeroCUDATargets)
endif()
install(EXPORT zeroCUDATargets NAMESPACE zero:: DESTINATION ${CMAKE_INSTALL_DATADIR}/cmake/zero)

set(ZERO_CUDA_STATUS "CUDA ${CUDAToolkit_VERSION} (${CMAKE_CUDA_COMPILER}), architectures ${CMAKE_CUDA_ARCHITECTURES}")
message(STATUS "zero: CUDA backend zero::cuda: ${ZERO_CUDA_STATUS}; zero::nccl: ${ZERO_NCCL_STATUS}")
