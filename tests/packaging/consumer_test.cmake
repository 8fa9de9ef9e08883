# Builds and runs one consumer project of zero; run with `cmake -P` by the packaging tests.
#
#   -DMODE=subdir|install     add_subdirectory(zero) consumer, or find_package(zero) consumer
#   -DCONSUMER_DIR=<dir>      the consumer project's sources (subdir/ or install/)
#   -DWORK_DIR=<dir>          scratch directory, wiped first
#   -DZERO_SOURCE_DIR=<dir>   (subdir)  the zero source tree given to add_subdirectory
#   -DZERO_BINARY_DIR=<dir>   (install) the configured and built zero build tree to install
#   -DGENERATOR=<name> [-DGENERATOR_PLATFORM=..] [-DGENERATOR_TOOLSET=..] [-DMAKE_PROGRAM=..]
#   -DCXX_COMPILER=<path>  -DBUILD_TYPE=<config>
cmake_minimum_required(VERSION 3.20)

foreach(var MODE CONSUMER_DIR WORK_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "consumer_test.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT BUILD_TYPE)
  set(BUILD_TYPE Release)
endif()

# Runs a command, echoing it; stops the test with its output if it fails.
function(run_step what)
  string(REPLACE ";" " " shown "${ARGN}")
  message(STATUS "[${MODE}] ${what}: ${shown}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "[${MODE}] ${what} failed (${rc}):\n${out}")
  endif()
  message("${out}")
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(build_dir "${WORK_DIR}/build")

set(configure_args
  -S "${CONSUMER_DIR}" -B "${build_dir}" -G "${GENERATOR}"
  "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON
  # Never pick zero up from a user or system package registry.
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
if(GENERATOR_PLATFORM)
  list(APPEND configure_args -A "${GENERATOR_PLATFORM}")
endif()
if(GENERATOR_TOOLSET)
  list(APPEND configure_args -T "${GENERATOR_TOOLSET}")
endif()
if(MAKE_PROGRAM)
  list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()

if(MODE STREQUAL "subdir")
  if(NOT IS_DIRECTORY "${ZERO_SOURCE_DIR}")
    message(FATAL_ERROR "consumer_test.cmake: -DZERO_SOURCE_DIR=<zero source tree> is required")
  endif()
  list(APPEND configure_args "-DZERO_SOURCE_DIR=${ZERO_SOURCE_DIR}")
elseif(MODE STREQUAL "install")
  if(NOT EXISTS "${ZERO_BINARY_DIR}/cmake_install.cmake")
    message(FATAL_ERROR "consumer_test.cmake: -DZERO_BINARY_DIR=<configured zero build tree> is required")
  endif()
  set(prefix "${WORK_DIR}/prefix")
  run_step("install zero" "${CMAKE_COMMAND}" --install "${ZERO_BINARY_DIR}" --prefix "${prefix}" --config "${BUILD_TYPE}")

  # zeroConfigVersion.cmake: another minor or major version must be refused. (The accepted
  # `find_package(zero 0.1 REQUIRED)` is the consumer project's own.)
  foreach(wrong 0.2 1.0)
    unset(zero_DIR CACHE)
    find_package(zero ${wrong} CONFIG QUIET NO_DEFAULT_PATH PATHS "${prefix}")
    if(zero_FOUND)
      message(FATAL_ERROR "[install] find_package(zero ${wrong}) accepted version ${zero_VERSION}")
    endif()
    if(NOT zero_CONSIDERED_VERSIONS MATCHES "^0\\.1\\.")
      message(FATAL_ERROR "[install] find_package(zero ${wrong}) considered no installed zero 0.1.x "
                          "(configs: '${zero_CONSIDERED_CONFIGS}', versions: '${zero_CONSIDERED_VERSIONS}')")
    endif()
    message(STATUS "[install] find_package(zero ${wrong}) refuses the installed ${zero_CONSIDERED_VERSIONS}: ok")
  endforeach()

  list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${prefix}" "-DZERO_EXPECTED_PREFIX=${prefix}")
else()
  message(FATAL_ERROR "consumer_test.cmake: MODE must be subdir or install, got '${MODE}'")
endif()

run_step("configure" "${CMAKE_COMMAND}" ${configure_args})
run_step("build" "${CMAKE_COMMAND}" --build "${build_dir}" --config "${BUILD_TYPE}")

# Single-config generators put the executable in the build dir, multi-config ones in <config>/.
set(exe "")
foreach(candidate "${build_dir}/zero_consumer" "${build_dir}/${BUILD_TYPE}/zero_consumer"
                  "${build_dir}/zero_consumer.exe" "${build_dir}/${BUILD_TYPE}/zero_consumer.exe")
  if(EXISTS "${candidate}")
    set(exe "${candidate}")
    break()
  endif()
endforeach()
if(NOT exe)
  message(FATAL_ERROR "[${MODE}] the consumer executable was not built in ${build_dir}")
endif()
# The consumer's own compile command holds none of the flags that change the meaning or speed of
# its code (zero's targets add none: no_flags.cmake checks their properties at configure time).
if(EXISTS "${build_dir}/compile_commands.json")
  file(READ "${build_dir}/compile_commands.json" commands)
  foreach(flag -fno-math-errno -ffast-math -ffp-contract --fmad -funsafe-math-optimizations -march)
    string(FIND "${commands}" "${flag}" at)
    if(NOT at EQUAL -1)
      message(FATAL_ERROR "[${MODE}] the consumer's compile commands contain ${flag}, which it did not ask for:\n${commands}")
    endif()
  endforeach()
  message(STATUS "[${MODE}] the consumer's compile commands carry no arithmetic flags")
endif()
run_step("run" "${exe}")
message(STATUS "[${MODE}] passed")
