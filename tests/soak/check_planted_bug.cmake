# Shows that the planted bug (zero_soak_planted: thread_communicator built with
# ZERO_TEST_ONLY_SKIP_END_BARRIER) is caught; passes only when it is.
#   MODE=soak: CORRECT (the soak built as is), PLANTED, STEPS. The correct build without delays
#              gives the reference digest; the planted build with delays must fail or differ.
#   MODE=tsan: PLANTED (built with -fsanitize=thread), STEPS. ThreadSanitizer must report a data
#              race and fail the run.
cmake_minimum_required(VERSION 3.20)

if(MODE STREQUAL "soak")
  execute_process(COMMAND ${CORRECT} --steps ${STEPS} OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  message("${out}${err}")
  if(NOT rc EQUAL 0 OR NOT out MATCHES "digest ([0-9a-f]+)")
    message(FATAL_ERROR "the correct soak failed (exit ${rc}): no reference to compare with")
  endif()
  set(reference ${CMAKE_MATCH_1})
  execute_process(COMMAND ${PLANTED} --steps ${STEPS} --delays 30 OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  message("${out}${err}")
  if(NOT rc EQUAL 0)
    message("soak caught the planted bug: the run with the bug failed (exit ${rc})")
  elseif(out MATCHES "digest ([0-9a-f]+)" AND NOT CMAKE_MATCH_1 STREQUAL reference)
    message("soak caught the planted bug: digest ${CMAKE_MATCH_1} differs from the correct run's ${reference}")
  else()
    message(FATAL_ERROR "the soak did NOT catch the planted bug: the run with it ends with the correct digest ${reference}")
  endif()
elseif(MODE STREQUAL "tsan")
  execute_process(COMMAND ${PLANTED} --steps ${STEPS} OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  # the report's first lines: what raced, and where
  string(FIND "${err}" "WARNING: ThreadSanitizer: data race" at)
  set(report "")
  if(at GREATER_EQUAL 0)
    string(SUBSTRING "${err}" ${at} 3000 report)
  endif()
  if(rc EQUAL 0 OR NOT report)
    message("${out}${err}")
    message(FATAL_ERROR "ThreadSanitizer did NOT catch the planted bug (exit ${rc})")
  endif()
  message("${report}\n...")
  message("ThreadSanitizer caught the planted bug: a data race, and the run failed (exit ${rc})")
else()
  message(FATAL_ERROR "MODE must be soak or tsan")
endif()
