# Device arithmetic stays exact under the user's own flags (include/zero/arithmetic.hpp).
# Compiles SOURCE (every update kernel zero ships) and CONTROL (plain a * x + y) to PTX with
# nvcc's defaults (--fmad=true) and with --use_fast_math, and fails if zero's kernels hold
#  * a single-precision multiply-add (fma.*f32), or a multiply without an explicit rounding
#    mode (ptxas may fuse an unrounded mul.f32 with the add that reads it);
#  * under --use_fast_math, an approximate operation (.approx, div.full, rcp, rsqrt).
# (Double-precision multiply-adds of squared floats are allowed: a float's square is exact in
# double, so fused or not the sum is the same.) The control must show the multiply-add, so that
# the pattern is known to find one. Arguments: NVCC, ARCH (e.g. 90), INCLUDE, SOURCE, CONTROL,
# WORK_DIR.
file(MAKE_DIRECTORY "${WORK_DIR}")

function(zero_ptx source out)
  execute_process(COMMAND "${NVCC}" -std=c++20 -arch=sm_${ARCH} "-I${INCLUDE}" ${ARGN} --ptx "${source}" -o "${out}"
                  RESULT_VARIABLE rc ERROR_VARIABLE err OUTPUT_VARIABLE out_text)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "nvcc --ptx ${source} ${ARGN} failed (${rc}):\n${err}${out_text}")
  endif()
endfunction()

set(contracted "[ \t](fma\\.[a-z.]*f32|mul(\\.ftz)?(\\.sat)?\\.f32)[ \t]")
set(approximate "[ \t]([a-z0-9]+\\.approx[a-z.]*|div\\.full[a-z.]*|rcp\\.[a-z.]*|rsqrt\\.[a-z.]*)[ \t]")

zero_ptx("${CONTROL}" "${WORK_DIR}/control.ptx")
file(STRINGS "${WORK_DIR}/control.ptx" control_hits REGEX "${contracted}")
if(NOT control_hits)
  message(FATAL_ERROR "the control's a * x + y shows no multiply-add in its PTX: the pattern '${contracted}' finds nothing")
endif()

foreach(mode IN ITEMS default fast_math)
  if(mode STREQUAL "fast_math")
    set(flags --use_fast_math)
  else()
    set(flags)
  endif()
  zero_ptx("${SOURCE}" "${WORK_DIR}/zero_${mode}.ptx" ${flags})
  file(STRINGS "${WORK_DIR}/zero_${mode}.ptx" entries REGEX "^\\.visible \\.entry ")
  list(LENGTH entries entry_count)
  if(entry_count LESS 30)
    message(FATAL_ERROR "${mode}: only ${entry_count} kernels in the PTX: the update kernels were not instantiated")
  endif()
  file(STRINGS "${WORK_DIR}/zero_${mode}.ptx" hits REGEX "${contracted}")
  if(mode STREQUAL "fast_math")
    file(STRINGS "${WORK_DIR}/zero_${mode}.ptx" approx_hits REGEX "${approximate}")
    list(APPEND hits ${approx_hits})
  endif()
  if(hits)
    list(LENGTH hits hit_count)
    list(GET hits 0 first)
    message(FATAL_ERROR "${mode} (nvcc ${flags}): ${hit_count} contractible or approximate single-precision "
                        "instructions in zero's update kernels, the first: ${first} (see ${WORK_DIR}/zero_${mode}.ptx)")
  endif()
  message(STATUS "${mode}: ${entry_count} kernels, every single-precision multiply explicitly rounded, none approximate")
endforeach()
