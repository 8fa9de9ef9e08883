// A precision given as an element type instead of a zero::precision bundle.
#include "common.hpp"
int main() { return use<zero::optimizer<zero::stage2, float>>(); }
