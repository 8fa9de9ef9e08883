# zero-consolidate: a checkpoint's full fp32 parameters (and optionally the optimizer state) as
# one safetensors file. Installed beside the headers: `zero-consolidate <checkpoint dir>
# <out.safetensors> [--optimizer-state]`.
add_executable(zero-consolidate ${CMAKE_CURRENT_LIST_DIR}/zero-consolidate.cpp)
target_link_libraries(zero-consolidate PRIVATE zero::zero)
target_compile_options(zero-consolidate PRIVATE -Wall -Wextra -Wpedantic -Werror)
install(TARGETS zero-consolidate RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
