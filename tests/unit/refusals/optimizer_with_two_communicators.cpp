// optimizer_with given two communicators.
#include "common.hpp"
int main() { return use<zero::optimizer_with<zero::stage2, zero::thread_communicator, zero::single_rank_communicator>>(); }
