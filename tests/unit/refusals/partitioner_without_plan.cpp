// A partitioner whose `plan` takes the wrong arguments.
#include "common.hpp"
struct partitioner {
  zero::partition_plan plan(std::span<const std::size_t> sizes) const { return zero::bucketed_partitioner{}.plan(sizes, {}); }
};
int main() { return use<zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, partitioner>>(); }
