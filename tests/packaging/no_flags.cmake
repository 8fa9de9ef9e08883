# Included by both consumer projects after zero's targets exist: a header-only library must not
# change how its users' own code compiles. zero's targets carry include directories, link
# libraries and compile features (C++20), and no compile options or definitions; the one allowed
# option is -std=c++20 for CUDA sources where CMake does not know the toolkit's compile features
# (cmake/zeroCUDA.cmake), which is a compile feature by another name.
foreach(zero_target IN ITEMS zero::zero zero::mpi zero::cuda zero::nccl)
  if(NOT TARGET ${zero_target})
    continue()
  endif()
  foreach(property IN ITEMS INTERFACE_COMPILE_OPTIONS INTERFACE_COMPILE_DEFINITIONS)
    get_target_property(values ${zero_target} ${property})
    if(NOT values)
      continue()
    endif()
    list(REMOVE_ITEM values "$<$<COMPILE_LANGUAGE:CUDA>:-std=c++20>")
    if(values)
      message(FATAL_ERROR "${zero_target} adds ${property} to every program that links it: '${values}'")
    endif()
  endforeach()
  message(STATUS "${zero_target}: no compile options or definitions for its users")
endforeach()
