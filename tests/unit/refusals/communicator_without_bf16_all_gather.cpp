// A communicator whose all_gather takes float only (the engine also gathers bf16, fp16, ...).
#include "common.hpp"
struct communicator {
  int rank() const { return 0; }
  int world_size() const { return 1; }
  zero::traffic_counters traffic() const { return {}; }
  void barrier() {}
  template <class T>
  void reduce_scatter(const T*, T*, std::size_t, zero::reduce_op) {}
  void all_gather(const float*, float*, std::size_t) {}
  template <class T>
  void all_reduce(const T*, T*, std::size_t, zero::reduce_op) {}
  template <class T>
  void broadcast(T*, std::size_t, int) {}
};
int main() {
  return use<zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner, communicator>>();
}
