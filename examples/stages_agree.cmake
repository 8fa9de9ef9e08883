# Trains the language model with the same seed under ZeRO stages 0, 1, 2 and 3 and checks that
# every loss is bitwise the same: the engine sums gradients in rank order in every stage (stage
# 0's all-reduce, stages 1 to 3's reduce-scatter), so the updates are the same to the bit, and
# stage 3's gathered layers hold the values stage 2 all-gathers. The
# run is long enough for gradient clipping to act (checked), over 3 ranks so that the batch and
# the parameters split unevenly.
#
#   cmake -DTRAIN=<zero_example_train> -DWORK_DIR=<scratch dir> -P stages_agree.cmake
cmake_minimum_required(VERSION 3.20)
foreach(var TRAIN WORK_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "stages_agree.cmake: -D${var}=... is required")
  endif()
endforeach()
file(MAKE_DIRECTORY "${WORK_DIR}")

set(args --world 3 --steps 120 --seed 7 --samples 0)
foreach(stage 0 1 2 3)
  execute_process(COMMAND "${TRAIN}" ${args} --stage ${stage} --summary-json "${WORK_DIR}/stage${stage}.json"
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "stage ${stage} run failed (${rc}):\n${out}")
  endif()
  file(READ "${WORK_DIR}/stage${stage}.json" json${stage})
endforeach()

# the printed numbers carry 17 significant digits: equal text is equal doubles
string(JSON steps LENGTH "${json0}" train_losses)
math(EXPR last "${steps} - 1")
foreach(stage 1 2 3)
  foreach(key initial_loss final_loss clipped_steps)
    string(JSON a GET "${json0}" ${key})
    string(JSON b GET "${json${stage}}" ${key})
    if(NOT a STREQUAL b)
      message(FATAL_ERROR "${key}: stage 0 gives ${a}, stage ${stage} gives ${b}")
    endif()
  endforeach()
  foreach(i RANGE ${last})
    string(JSON a GET "${json0}" train_losses ${i})
    string(JSON b GET "${json${stage}}" train_losses ${i})
    if(NOT a STREQUAL b)
      message(FATAL_ERROR "step ${i}: stage 0's loss is ${a}, stage ${stage}'s is ${b}")
    endif()
  endforeach()
endforeach()
string(JSON clipped GET "${json0}" clipped_steps)
if(clipped EQUAL 0)
  message(FATAL_ERROR "no step was clipped: the comparison must cover clipping (train longer)")
endif()
string(JSON first GET "${json0}" train_losses 0)
string(JSON final GET "${json0}" final_loss)
message(STATUS "${steps} steps (${clipped} clipped), stages 0, 1, 2 and 3 bitwise equal: first training loss ${first}, "
               "final validation loss ${final}")
