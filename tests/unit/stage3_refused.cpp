// Must not compile: stage 3 has a memory plan (zero::plan_memory, zero-plan --stage 3) but no
// engine yet, so zero::optimizer refuses it with the reason. tests/CMakeLists.txt compiles this
// file and expects the optimizer's static_assert message (unit.stage3_engine_refused).
#include "zero/optimizer.hpp"

template class zero::optimizer<zero::stage3>;

int main() { return 0; }
