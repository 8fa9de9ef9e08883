#pragma once
//! @file activation_checkpointer.hpp
//! The ActivationCheckpointer policy (ZeRO-R's activation side): during forward a layer hands
//! the checkpointer the tensor it will need to recompute from, with an id and the state of its
//! random generator; during backward the checkpointer restores it into a buffer for
//! recomputation, gives back the generator state (so dropout sees the same randomness), and
//! then releases it. A checkpointer reports the bytes it holds now and at its peak.
//!
//! Ships `passthrough_checkpointer`, which copies nothing: it remembers where the framework
//! keeps each checkpoint and copies from there on restore.

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <unordered_map>

#include "zero/error.hpp"
#include "zero/types.hpp"

namespace zero {

using checkpoint_id = std::uint64_t;

//! The framework's random-generator state at a checkpoint (e.g. a Philox seed and offset).
struct generator_state {
  std::uint64_t seed = 0;
  std::uint64_t offset = 0;
  friend constexpr bool operator==(const generator_state&, const generator_state&) = default;
};

//! An ActivationCheckpointer.
//! `save(id, data, rng)`: keep what is needed to restore `data` later. @pre id not held.
//! `restore(id, out)`: write the saved bytes into `out` (same size) and return the generator
//! state saved with them. `release(id)`: forget it. Each throws `usage_error` on an unknown id
//! or a size that does not match.
template <class C>
concept activation_checkpointer =
    requires(C& c, const C& cc, checkpoint_id id, raw_span<const std::byte> data, raw_span<std::byte> out,
             generator_state rng) {
      c.save(id, data, rng);
      { c.restore(id, out) } -> std::same_as<generator_state>;
      c.release(id);
      { cc.bytes_held() } -> std::convertible_to<std::size_t>;
      { cc.peak_bytes_held() } -> std::convertible_to<std::size_t>;
    };

//! Keeps no copy: the framework keeps each checkpointed tensor alive until it is released.
//! Holds no activation bytes of its own (bytes_held() is 0); restore copies from the
//! framework's memory. The baseline the real checkpointers are measured against.
class passthrough_checkpointer {
 public:
  void save(checkpoint_id id, raw_span<const std::byte> data, generator_state rng = {}) {
    if (data.data == nullptr && data.size != 0) throw usage_error("zero: checkpoint " + std::to_string(id) + ": null data");
    if (!saved_.emplace(id, entry{data, rng}).second)
      throw usage_error("zero: checkpoint " + std::to_string(id) + " saved twice without release");
  }
  generator_state restore(checkpoint_id id, raw_span<std::byte> out) {
    const auto it = saved_.find(id);
    if (it == saved_.end()) throw usage_error("zero: restore of checkpoint " + std::to_string(id) + ", which is not saved");
    if (out.size != it->second.data.size)
      throw usage_error("zero: restore of checkpoint " + std::to_string(id) + " into " + std::to_string(out.size) +
                        " bytes; it holds " + std::to_string(it->second.data.size));
    if (out.size != 0 && out.data != it->second.data.data) std::memmove(out.data, it->second.data.data, out.size);
    return it->second.rng;
  }
  void release(checkpoint_id id) {
    if (saved_.erase(id) == 0) throw usage_error("zero: release of checkpoint " + std::to_string(id) + ", which is not saved");
  }
  std::size_t bytes_held() const noexcept { return 0; }
  std::size_t peak_bytes_held() const noexcept { return 0; }

 private:
  struct entry {
    raw_span<const std::byte> data;
    generator_state rng;
  };
  std::unordered_map<checkpoint_id, entry> saved_;
};

static_assert(activation_checkpointer<passthrough_checkpointer>);

}  // namespace zero
