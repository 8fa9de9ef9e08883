// Must not compile: the update computes in fp32, so double master weights would silently be
// rounded to fp32 at every step. tests/CMakeLists.txt compiles this file and expects the
// optimizer's static_assert message (unit.double_master_weights_refused).
#include "zero/optimizer.hpp"

using double_master = zero::precision<float, float, double, float, float, float>;
template class zero::optimizer<zero::stage2, double_master>;

int main() { return 0; }
