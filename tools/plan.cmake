# zero-plan: the command-line memory planner (include/zero/plan.hpp), installed with the
# library: `zero-plan --params 7.5B --world 64 --stage 2 --precision fp16`.
add_executable(zero-plan ${CMAKE_CURRENT_LIST_DIR}/zero-plan.cpp)
target_link_libraries(zero-plan PRIVATE zero::zero)
target_compile_options(zero-plan PRIVATE -Wall -Wextra -Wpedantic)
install(TARGETS zero-plan RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
