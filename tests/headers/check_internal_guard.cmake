# cmake -DZERO_INCLUDE_DIR=<include/> -P check_internal_guard.cmake
# Fails unless zero/backend.hpp is the only header under include/zero that defines
# ZERO_DETAIL_INCLUDE_ALLOWED, and it undefines it again after its internal includes.
file(GLOB_RECURSE headers RELATIVE "${ZERO_INCLUDE_DIR}" "${ZERO_INCLUDE_DIR}/zero/*.hpp" "${ZERO_INCLUDE_DIR}/zero/*.cuh")
set(openers "")
foreach(header IN LISTS headers)
  file(STRINGS "${ZERO_INCLUDE_DIR}/${header}" defines REGEX "^[ \t]*#[ \t]*define[ \t]+ZERO_DETAIL_INCLUDE_ALLOWED")
  if(defines)
    list(APPEND openers "${header}")
  endif()
endforeach()
if(NOT openers STREQUAL "zero/backend.hpp")
  message(FATAL_ERROR "the internal-header guard is opened by: ${openers} (only zero/backend.hpp may define "
                      "ZERO_DETAIL_INCLUDE_ALLOWED; include zero/backend.hpp instead of the internal header)")
endif()
file(STRINGS "${ZERO_INCLUDE_DIR}/zero/backend.hpp" undefines REGEX "^[ \t]*#[ \t]*undef[ \t]+ZERO_DETAIL_INCLUDE_ALLOWED")
if(NOT undefines)
  message(FATAL_ERROR "zero/backend.hpp defines ZERO_DETAIL_INCLUDE_ALLOWED and never undefines it")
endif()
message(STATUS "the internal-header guard is opened only by zero/backend.hpp, and closed again")
