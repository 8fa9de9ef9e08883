// optimizer_with given a type that is no policy at all.
#include "common.hpp"
int main() { return use<zero::optimizer_with<zero::stage2, zero::bucketed_partitioner, double>>(); }
