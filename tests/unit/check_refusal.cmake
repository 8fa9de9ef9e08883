# cmake -DCXX=<compiler> -DINCLUDE=<include dir> -DSOURCE=<file> -DEXPECT=<regex> -P check_refusal.cmake
# Passes when the compiler refuses SOURCE and its first error matches EXPECT (the message that
# names the concept and what is missing, before any error that follows from it).
execute_process(COMMAND "${CXX}" -std=c++20 -fsyntax-only "-I${INCLUDE}" "${SOURCE}"
                RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(status EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled; it must be refused")
endif()
string(REGEX MATCH "error: [^\n]*" first "${err}")
if(NOT first MATCHES "${EXPECT}")
  message(FATAL_ERROR "${SOURCE} was refused, but its first error is not the expected one.\nexpected: ${EXPECT}\nfirst error: ${first}\n\n${err}")
endif()
message(STATUS "refused with: ${first}")
