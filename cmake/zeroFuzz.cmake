# libFuzzer targets of the parsers of outside input (tests/checkpoint, tests/fuzz). Each target is
# one source that defines `LLVMFuzzerTestOneInput` at least when built with -DZERO_LIBFUZZER (the
# g++ replay may call it by another name). Every target gets two tests:
#  * reliability.fuzz_<name>_libfuzzer: the target under libFuzzer with AddressSanitizer and
#    UBSan (clang, -O1), run briefly (bounded runs and seconds) on its committed seed corpus;
#    reported SKIPPED (exit 77, with the reason) when clang with libFuzzer is missing or
#    ZERO_BUILD_FUZZERS is OFF;
#  * the g++ replay: the same source compiled into a doctest executable whose test feeds it the
#    corpus and deterministic mutations (the caller adds that source to its test executable).
#
# Debian packages for the libFuzzer half: clang-14 libclang-rt-14-dev (scripts/deps.sh installs them).
include_guard(GLOBAL)

option(ZERO_BUILD_FUZZERS "Build the libFuzzer targets with clang (when found) and run them briefly as tests" ON)
find_program(ZERO_FUZZ_CLANGXX NAMES clang++-14 clang++ DOC "clang++ with libFuzzer, for the fuzz targets")

# Found once per configure (include_guard), for every directory: hence cache variables.
set(zero_fuzz_ok OFF)
set(zero_fuzz_why "")
if(NOT ZERO_BUILD_FUZZERS)
  set(zero_fuzz_why "the libFuzzer targets are off (ZERO_BUILD_FUZZERS=OFF): only the g++ corpus replay ran")
elseif(NOT ZERO_FUZZ_CLANGXX)
  set(zero_fuzz_why "clang++ not found (Debian: clang-14 libclang-rt-14-dev): only the g++ corpus replay ran")
else()
  # Does this clang link -fsanitize=fuzzer? (libclang-rt-14-dev holds libFuzzer)
  set(zero_fuzz_probe_dir ${PROJECT_BINARY_DIR}/zero_fuzz_probe)
  file(WRITE ${zero_fuzz_probe_dir}/probe.cpp
       "#include <cstdint>\n#include <cstddef>\nextern \"C\" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t) { return 0; }\n")
  execute_process(COMMAND ${ZERO_FUZZ_CLANGXX} -std=c++20 -fsanitize=fuzzer,address,undefined
                          ${zero_fuzz_probe_dir}/probe.cpp -o ${zero_fuzz_probe_dir}/probe
                  RESULT_VARIABLE zero_fuzz_probe_status OUTPUT_QUIET ERROR_QUIET)
  if(zero_fuzz_probe_status EQUAL 0)
    set(zero_fuzz_ok ON)
  else()
    set(zero_fuzz_why "${ZERO_FUZZ_CLANGXX} cannot link -fsanitize=fuzzer (Debian: libclang-rt-14-dev): only the g++ corpus replay ran")
  endif()
endif()
set(ZERO_FUZZ_OK ${zero_fuzz_ok} CACHE INTERNAL "clang with libFuzzer builds the fuzz targets")
set(ZERO_FUZZ_WHY "${zero_fuzz_why}" CACHE INTERNAL "why the fuzz targets are not built")
if(NOT ZERO_FUZZ_OK)
  message(STATUS "zero: libFuzzer targets not built: ${ZERO_FUZZ_WHY}")
endif()

# zero_add_fuzz_test(<name> SOURCE <file> CORPUS <dir> [RUNS n] [SECONDS s] [MAX_LEN bytes]
#                    [INCLUDES dirs...] [DEFINES defs...] [DEPENDS files...] [NEEDS_HEADER header])
# Adds the libFuzzer build of SOURCE and the test reliability.fuzz_<name>_libfuzzer (or its
# skipped stand-in). The run stops at RUNS inputs or SECONDS seconds, whichever comes first;
# what libFuzzer finds goes to a work folder in the build tree, the committed corpus is only read.
# NEEDS_HEADER: a zero header the target includes that this clang must compile (checked when
# configuring); if it cannot, the test is skipped with clang's first error, since the g++ build
# is the library's own.
function(zero_add_fuzz_test name)
  cmake_parse_arguments(arg "" "SOURCE;CORPUS;RUNS;SECONDS;MAX_LEN;NEEDS_HEADER" "INCLUDES;DEFINES;DEPENDS" ${ARGN})
  if(NOT arg_RUNS)
    set(arg_RUNS 200000)
  endif()
  if(NOT arg_SECONDS)
    set(arg_SECONDS 10)
  endif()
  if(NOT arg_MAX_LEN)
    set(arg_MAX_LEN 4096)
  endif()
  set(test_name "reliability.fuzz_${name}_libfuzzer")
  set(skip OFF)
  if(NOT ZERO_FUZZ_OK)
    set(skip ON)
  endif()
  set(why "${ZERO_FUZZ_WHY}")
  if(ZERO_FUZZ_OK AND arg_NEEDS_HEADER)
    set(probe ${PROJECT_BINARY_DIR}/zero_fuzz_probe/${name}.cpp)
    file(WRITE ${probe} "#include <${arg_NEEDS_HEADER}>\n")
    execute_process(COMMAND ${ZERO_FUZZ_CLANGXX} -std=c++20 -fsyntax-only -I${PROJECT_SOURCE_DIR}/include ${probe}
                    RESULT_VARIABLE status ERROR_VARIABLE errors OUTPUT_QUIET)
    if(NOT status EQUAL 0)
      string(REGEX MATCH "[^\n]*error:[^\n]*" first_error "${errors}")
      string(REPLACE "${PROJECT_SOURCE_DIR}/" "" first_error "${first_error}")
      set(why "${ZERO_FUZZ_CLANGXX} cannot compile <${arg_NEEDS_HEADER}> (${first_error}): only the g++ corpus replay ran")
      message(WARNING "zero: the ${name} fuzz target is skipped: ${why}")
      set(skip ON)
    endif()
  endif()
  if(skip)
    add_test(NAME ${test_name} COMMAND sh -c "echo \"$0\"; exit 77" "${why}")
    set_tests_properties(${test_name} PROPERTIES LABELS reliability SKIP_RETURN_CODE 77)
    return()
  endif()
  file(GLOB headers CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/include/zero/*.hpp ${PROJECT_SOURCE_DIR}/include/zero/*/*.hpp)
  set(fuzzer ${CMAKE_CURRENT_BINARY_DIR}/zero_fuzz_${name}_libfuzzer)
  set(flags -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
            -DZERO_LIBFUZZER -I${PROJECT_SOURCE_DIR}/include)
  foreach(dir IN LISTS arg_INCLUDES)
    list(APPEND flags -I${dir})
  endforeach()
  foreach(def IN LISTS arg_DEFINES)
    list(APPEND flags -D${def})
  endforeach()
  add_custom_command(OUTPUT ${fuzzer}
    COMMAND ${ZERO_FUZZ_CLANGXX} ${flags} ${arg_SOURCE} -o ${fuzzer}
    DEPENDS ${arg_SOURCE} ${headers} ${arg_DEPENDS}
    COMMENT "Building the ${name} fuzz target with libFuzzer (clang)"
    VERBATIM)
  add_custom_target(zero_fuzz_${name} ALL DEPENDS ${fuzzer})
  set(work ${CMAKE_CURRENT_BINARY_DIR}/fuzz_work_${name})
  file(MAKE_DIRECTORY ${work})
  add_test(NAME ${test_name}
           COMMAND ${fuzzer} -runs=${arg_RUNS} -max_total_time=${arg_SECONDS} -seed=1 -max_len=${arg_MAX_LEN}
                   -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_funcs=0 -print_final_stats=1 ${work} ${arg_CORPUS})
  math(EXPR timeout "${arg_SECONDS} * 6 + 60")
  set_tests_properties(${test_name} PROPERTIES LABELS reliability TIMEOUT ${timeout})
endfunction()
