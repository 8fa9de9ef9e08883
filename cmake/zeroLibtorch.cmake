# libtorch for zero's own libtorch tests and example (never for zero::zero, which needs no torch).
#
# Looks for a torch installation with the C++ headers and libraries: ZERO_LIBTORCH_DIR (the
# `torch` folder of a PyPI wheel, or an unpacked libtorch archive), else the project's own
# virtual environment that scripts/setup-libtorch.sh makes (.venv-libtorch). Defines the
# imported target zero_torch (headers as system headers; libtorch_cpu and c10 only, so that a
# CUDA build of the wheel loads without libtorch_cuda's libraries; its libtorch_cpu still needs
# CUDA's runtime, which ldd must find) and sets ZERO_LIBTORCH_FOUND, or ZERO_LIBTORCH_MISSING to
# the reason it is not there.

option(ZERO_WITH_LIBTORCH "Build the libtorch tests and example where torch is found" ON)
set(ZERO_LIBTORCH_DIR "" CACHE PATH "torch installation for the libtorch tests and example (the torch folder of a PyPI wheel, or a libtorch archive)")
set(ZERO_LIBTORCH_FOUND OFF)
set(ZERO_LIBTORCH_MISSING "")

set(_zero_torch_dir "${ZERO_LIBTORCH_DIR}")
if(NOT _zero_torch_dir)
  file(GLOB _zero_torch_candidates "${PROJECT_SOURCE_DIR}/.venv-libtorch/lib/python3*/site-packages/torch")
  if(_zero_torch_candidates)
    list(GET _zero_torch_candidates 0 _zero_torch_dir)
  endif()
endif()

if(NOT ZERO_WITH_LIBTORCH)
  set(ZERO_LIBTORCH_MISSING "ZERO_WITH_LIBTORCH is OFF")
elseif(NOT _zero_torch_dir)
  set(ZERO_LIBTORCH_MISSING "no torch found: run scripts/setup-libtorch.sh (PyPI's torch wheel into .venv-libtorch), or set ZERO_LIBTORCH_DIR")
elseif(NOT EXISTS "${_zero_torch_dir}/include/torch/csrc/api/include/torch/torch.h")
  set(ZERO_LIBTORCH_MISSING "${_zero_torch_dir} has no C++ headers (include/torch/csrc/api/include/torch/torch.h)")
else()
  find_library(_zero_torch_cpu NAMES torch_cpu PATHS "${_zero_torch_dir}/lib" NO_DEFAULT_PATH NO_CACHE)
  find_library(_zero_c10 NAMES c10 PATHS "${_zero_torch_dir}/lib" NO_DEFAULT_PATH NO_CACHE)
  # what libtorch_cpu needs must load: the CUDA wheel's links CUDA's runtime and CUPTI
  # (libcudart, libcupti), which a machine without the CUDA toolkit lacks
  set(_zero_torch_unloadable "")
  find_program(_zero_ldd ldd)
  if(_zero_torch_cpu AND _zero_ldd)
    execute_process(COMMAND "${_zero_ldd}" "${_zero_torch_cpu}" OUTPUT_VARIABLE _zero_ldd_out ERROR_QUIET)
    string(REGEX MATCHALL "[^\n\t ]+ => not found" _zero_torch_unloadable "${_zero_ldd_out}")
    list(TRANSFORM _zero_torch_unloadable REPLACE " => not found" "")
    list(JOIN _zero_torch_unloadable ", " _zero_torch_unloadable)
  endif()
  if(NOT _zero_torch_cpu OR NOT _zero_c10)
    set(ZERO_LIBTORCH_MISSING "${_zero_torch_dir}/lib has no libtorch_cpu and libc10")
  elseif(_zero_torch_unloadable)
    set(ZERO_LIBTORCH_MISSING "${_zero_torch_cpu} needs ${_zero_torch_unloadable}, which the loader does not find (the CUDA wheel's libtorch_cpu links CUDA's runtime: install the CUDA toolkit, or PyPI's nvidia-cuda-runtime and nvidia-cuda-cupti, or point ZERO_LIBTORCH_DIR at a CPU build of libtorch)")
  else()
    add_library(zero_torch INTERFACE IMPORTED)
    set_target_properties(zero_torch PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${_zero_torch_dir}/include;${_zero_torch_dir}/include/torch/csrc/api/include"
      INTERFACE_LINK_LIBRARIES "${_zero_torch_cpu};${_zero_c10}"
      INTERFACE_LINK_OPTIONS "LINKER:-rpath,${_zero_torch_dir}/lib")
    set(ZERO_LIBTORCH_FOUND ON)
    message(STATUS "zero: libtorch from ${_zero_torch_dir}")
  endif()
endif()
if(NOT ZERO_LIBTORCH_FOUND)
  message(STATUS "zero: the libtorch tests and example are skipped: ${ZERO_LIBTORCH_MISSING}")
endif()
