// What the activation tests share: the model, its batches, the checkpoint plan of its layer
// inputs, and a memory resource that counts what passes through it.
#pragma once

#include <cstddef>
#include <memory_resource>
#include <vector>

#include "mlp.hpp"

namespace act {

// Six layers of uneven widths (so that checkpoint sizes rarely divide by 8 x ranks), tanh,
// dropout after the third.
inline const mlp& model() {
  static const mlp m = mlp::make({13, 24, 17, 32, 20, 9, 5}, 2, 7);
  return m;
}
inline constexpr Eigen::Index batch = 7;

inline const std::vector<batch_data>& batches() {
  static const std::vector<batch_data> b = {batch_data::make(model(), batch, 1), batch_data::make(model(), batch, 2),
                                            batch_data::make(model(), batch, 3)};
  return b;
}

// The bytes of each layer's checkpoint, in save order.
inline std::vector<std::size_t> checkpoint_sizes(bool recomputes = true) {
  std::vector<std::size_t> sizes;
  for (int l = 0; l < model().layers(); ++l) sizes.push_back(checkpoint_bytes(model(), l, batch, recomputes));
  return sizes;
}
inline zero::checkpoint_plan layer_input_plan() { return {checkpoint_sizes()}; }
inline std::size_t largest_checkpoint() { return layer_input_plan().largest(); }

// Counts the bytes and calls that pass through it, and the peak of the bytes outstanding.
class counting_resource : public std::pmr::memory_resource {
 public:
  std::size_t allocated = 0, outstanding = 0, peak = 0, calls = 0;

 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    allocated += bytes;
    outstanding += bytes;
    peak = std::max(peak, outstanding);
    ++calls;
    return std::pmr::new_delete_resource()->allocate(bytes, alignment);
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override {
    outstanding -= bytes;
    std::pmr::new_delete_resource()->deallocate(p, bytes, alignment);
  }
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override { return this == &other; }
};

}  // namespace act
