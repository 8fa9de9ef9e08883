// An activation checkpointer whose restore returns nothing (it must return the generator state).
#include "common.hpp"
struct checkpointer {
  void save(zero::checkpoint_id, zero::raw_span<const std::byte>, zero::generator_state) {}
  void restore(zero::checkpoint_id, zero::raw_span<std::byte>) {}
  void release(zero::checkpoint_id) {}
  std::size_t bytes_held() const { return 0; }
  std::size_t peak_bytes_held() const { return 0; }
};
int main() {
  return use<zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner,
                             zero::thread_communicator, checkpointer>>();
}
