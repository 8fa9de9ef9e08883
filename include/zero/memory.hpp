#pragma once
//! @file memory.hpp
//! Memory accounted to the byte: the kinds of buffer the engine owns, its per-rank report, the
//! closed-form expectation of that report, and the owning buffer the engine allocates with.
//!
//! The engine owns no part of the model: the framework keeps its parameters (and, where it
//! hands gradients over as spans, its gradients). Everything the engine owns is allocated
//! once, at construction, from the `std::pmr::memory_resource` the caller chooses.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>
#include <memory_resource>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "zero/partitioner.hpp"
#include "zero/precision.hpp"

namespace zero {

//! What a buffer of the engine holds.
enum class memory_kind : std::uint8_t {
  master_weights,   //!< fp32 (master-type) copy of the parameters this rank updates
  optimizer_state,  //!< the rule's state slots for the elements this rank updates
  gradients,        //!< accumulated gradients: the whole flat buffer (stages 0, 1) or the shard (stage 2)
  gradient_slots,   //!< grad-type slots handed to the framework (only with `gradient_slots`)
  parameter_shard,  //!< model-precision values of this rank's shard, which the all-gather sends
  buckets,          //!< constant-size reduction and all-gather buffers
};
inline constexpr std::size_t memory_kinds = 6;

constexpr std::string_view to_string(memory_kind k) noexcept {
  constexpr std::string_view names[] = {"master_weights", "optimizer_state", "gradients",
                                        "gradient_slots", "parameter_shard", "buckets"};
  return names[static_cast<std::size_t>(k)];
}

//! Bytes per kind on one rank: what the engine allocated, and the most gradient bytes the
//! framework must keep alive for it.
struct memory_report {
  std::array<std::size_t, memory_kinds> bytes{};
  //! Not allocated by the engine: the most bytes of reported gradients the framework must keep
  //! alive at once between the engine's calls (reported and not yet released), when gradients
  //! arrive in the layout's order (docs/design.md derives it). Stage 2 reading spans: one
  //! reduction unit plus the largest parameter's gradients; stages 0 and 1, deferred reduction
  //! and gradient slots: 0 (every gradient is read before its call returns, or lives in a slot).
  std::size_t framework_gradients = 0;
  //! Not in `total()` either: the engine's activation checkpointer (`optimizer::checkpointer()`)
  //! at its peak so far, device-side (checkpoints stored and buffers in flight) and in host
  //! memory (offloaded checkpoints); a checkpointer that does not say where its bytes live
  //! counts them device-side. 0 for `expected_memory`, which covers the model states.
  std::size_t activations = 0, activations_host = 0;

  constexpr std::size_t of(memory_kind k) const noexcept { return bytes[static_cast<std::size_t>(k)]; }
  constexpr std::size_t& operator[](memory_kind k) noexcept { return bytes[static_cast<std::size_t>(k)]; }
  //! Bytes the engine allocated.
  constexpr std::size_t total() const noexcept {
    std::size_t t = 0;
    for (auto b : bytes) t += b;
    return t;
  }
  //! What a rank holds for the optimizer: the engine's bytes and the framework's gradients.
  constexpr std::size_t with_framework_gradients() const noexcept { return total() + framework_gradients; }
  friend constexpr bool operator==(const memory_report&, const memory_report&) = default;
};

//! The order the parameters lie in the flat buffer, which should be the order their gradients
//! arrive in: a reduction unit is reduced as soon as its gradients are in, in unit order.
enum class gradient_order : std::uint8_t {
  reverse,       //!< the reverse of registration order: register in model order, backward reports the last layer first
  registration,  //!< registration order
  given,         //!< `layout_options::given_order`
  learned,       //!< the order rank 0's gradients arrive in during the first micro-step, agreed by every rank and
                 //!< fixed before the first update (as DDP rebuilds its buckets after the first iteration)
};

//! The run-time choices that shape the engine's buffers.
struct layout_options {
  std::size_t alignment = 16;              //!< every shard slice is a multiple of this many elements
  std::size_t bucket_elements = 1u << 22;  //!< elements per reduction (all ranks together)
  bool gradient_slots = false;             //!< hand out engine-owned gradient slots (see optimizer::grad_slot)
  //! Stage 2 with gradient accumulation: accumulate the micro-steps in a full local buffer and
  //! reduce once, at the step (DDP's no_sync), instead of reducing every micro-step (DeepSpeed).
  //! Costs a full gradient buffer; saves (micro-steps - 1) reductions.
  bool defer_reduction = false;
  //! Staging buffers (each one reduction unit) that the reductions and the all-gather rotate
  //! through, >= 1. With 2 or more and a communicator with non-blocking forms
  //! (`nonblocking_communicator`, such as `zero::mpi_communicator`), a unit's reduce-scatter is
  //! in flight while the framework goes on with backward and the next unit is packed, and the
  //! all-gather of one unit while the previous one is copied into the parameters; the engine
  //! waits for a buffer's collective only before reusing the buffer. 1: every collective
  //! completes before the engine goes on. Each buffer adds its size to `buckets`.
  std::size_t staging_buffers = 1;
  //! Stage 3: the buffers that gathered parameter groups are handed to the framework in
  //! (`optimizer::gather`), as many groups gathered at once, each buffer
  //! `gather_buffer_elements` model-precision elements, at least the largest group's (all
  //! ranks' parts of a group together). Counted in `buckets`; stages 0-2 ignore them.
  std::size_t gather_buffers = 2;
  std::size_t gather_buffer_elements = std::size_t{1} << 24;
  //! Stage 3: how many groups ahead of the framework the engine gathers (prefetches) into free
  //! gather buffers, following `gather_order`; 0: none (each group is gathered when asked for).
  //! A gather is started, not waited for: with a communicator that has `ibroadcast`
  //! (`nonblocking_rooted_communicator`) it moves while the framework computes, and `gather` of
  //! a prefetched group waits for it. Needs a buffer the framework does not hold: with one
  //! gather buffer nothing is prefetched.
  std::size_t prefetch_groups = 1;
  //! Stage 3: the order the framework gathers its groups in during a step (forward, then
  //! backward; a group may appear more than once), which prefetching follows. Empty (the
  //! default): the order of the previous step's gathers (nothing is prefetched before the first
  //! step). A gather off the order drops what was prefetched and goes on from that group's next
  //! place in the order.
  std::vector<std::uint32_t> gather_order{};
  //! The order of the parameters in the flat buffer (see `gradient_order`).
  gradient_order order = gradient_order::reverse;
  //! With `order == gradient_order::given`: every parameter's index once, in the order their
  //! gradients arrive.
  std::vector<std::size_t> given_order{};
  //! Stage 2 (DeepSpeed's `contiguous_gradients`): `gradient_ready(p, span)` copies the gradient
  //! into the staging buffers of its units right away when they are free, so that the span is
  //! released before the call returns; a piece whose unit's buffer is still busy (the unit lies
  //! more than `staging_buffers` units ahead) is read later, as without the option.
  bool copy_on_report = false;
  //! Stage 2 at one rank on the host: keep each reported gradient until the step and let the
  //! update read it where it is, instead of copying it into the engine's gradient buffer while
  //! backward runs. The framework's gradients are then released when `step()` returns (held
  //! through backward, as in stage 0: `framework_gradients` counts each once), and the step costs
  //! the update alone. A step of several micro-steps, with a parameter reported more than once,
  //! with the overflow check, a predivide factor, `unreported_gradients::skip` or a tensor-wise
  //! rule copies the gradients as without the option. No effect at more than one rank.
  bool read_gradients_in_update = false;
};

//! Elements from one state slot to the next in the engine's state buffer (slot k of element i at
//! `k * state_stride + i`). With the stride equal to `updated`, the slots of one element lie a
//! large power of two bytes apart at power-of-two shard sizes, and the update over 64M elements
//! ran at 0.43x the speed it has with the slots apart by anything else (bench/update_bench.cpp,
//! `state_gap`). So from 1 MiB per slot the stride is a whole number of pages plus half a page:
//! no two slots are then within 2 KiB of a multiple of any power of two of 4 KiB or more. Below
//! that (or with one slot) the slots are back to back.
constexpr std::size_t state_stride(std::size_t updated, std::size_t state_count) noexcept {
  constexpr std::size_t page = 4096 / sizeof(float), padded_from = (std::size_t{1} << 20) / sizeof(float);
  if (state_count < 2 || updated < padded_from) return updated;
  return (updated + page - 1) / page * page + page / 2;
}

//! The engine's per-rank bytes, in closed form, for the shipped partitioners: `param_count`
//! elements in total, `state_count` state slots per element (the rule's `state_count`), and for
//! `framework_gradients` the largest parameter's elements times its reports per micro-step
//! (`largest_parameter`; 0 leaves the parameter out of that bound). Stage 3
//! holds what stage 2 holds, its parameter shard at every world size (the only copy of the
//! parameters), and in `buckets` also its gather buffers (`layout.gather_buffers` of
//! `layout.gather_buffer_elements` model-precision elements).
template <precision_bundle P, class Partitioner = contiguous_partitioner>
constexpr memory_report expected_memory(std::size_t param_count, int world_size, stage s, std::size_t state_count,
                                        const layout_options& o = {}, std::size_t largest_parameter = 0) noexcept {
  static_assert(requires(std::size_t shard, const partition_options& po) {
    { Partitioner::largest_unit(shard, po) } -> std::convertible_to<std::size_t>;
  }, "zero::expected_memory: the partitioner has no static largest_unit(shard, options) (the shipped ones have)");
  using param = typename P::param_type;
  using comm = typename P::comm_type;
  const std::size_t n = static_cast<std::size_t>(world_size);
  const std::size_t quantum = o.alignment * n;
  const std::size_t padded = (param_count + quantum - 1) / quantum * quantum;
  const std::size_t shard = padded / n;
  const std::size_t unit = Partitioner::largest_unit(shard, {world_size, o.alignment, o.bucket_elements});
  const bool sharded = s != stage::stage0;
  const std::size_t updated = sharded ? shard : param_count;  // elements this rank updates

  memory_report r;
  if constexpr (P::has_master) r[memory_kind::master_weights] = updated * sizeof(typename P::master_type);
  r[memory_kind::optimizer_state] = state_count * state_stride(updated, state_count) * sizeof(typename P::state_type);
  const bool partitions_parameters = s == stage::stage3;
  const bool streaming = (s == stage::stage2 || partitions_parameters) && !o.defer_reduction;  // reduced while backward runs
  r[memory_kind::gradients] = (streaming ? shard : padded) * sizeof(typename P::accum_type);
  r[memory_kind::gradient_slots] = o.gradient_slots ? param_count * sizeof(typename P::grad_type) : 0;
  // at one rank with master weights the update writes the framework's parameters itself (in
  // stage 3 the shard is the parameters)
  const bool writes_parameters = P::has_master && n == 1 && !partitions_parameters;
  r[memory_kind::parameter_shard] = sharded && !writes_parameters ? shard * sizeof(param) : 0;
  const std::size_t staging_element = sharded ? std::max(sizeof(comm), sizeof(param)) : sizeof(comm);
  r[memory_kind::buckets] = std::max<std::size_t>(o.staging_buffers, 1) * unit * staging_element;
  if (partitions_parameters) r[memory_kind::buckets] += o.gather_buffers * o.gather_buffer_elements * sizeof(param);
  const bool held = s == stage::stage2 && streaming && o.read_gradients_in_update && n == 1;  // read by the update
  if (held && !o.gradient_slots) r.framework_gradients = param_count * sizeof(typename P::grad_type);
  else if (streaming && !o.gradient_slots && param_count != 0)
    r.framework_gradients = (unit + largest_parameter) * sizeof(typename P::grad_type);
  return r;
}

namespace detail {

//! An owning, zero-initialized array of trivially copyable T from a memory resource, aligned to
//! 64 bytes; the byte count it reports is exactly what it allocated.
template <class T>
class owned_buffer {
 public:
  owned_buffer() = default;
  owned_buffer(std::size_t count, std::pmr::memory_resource* resource) : resource_(resource), count_(count) {
    if (count_ != 0) {
      data_ = static_cast<T*>(resource_->allocate(count_ * sizeof(T), 64));
      std::memset(static_cast<void*>(data_), 0, count_ * sizeof(T));
    }
  }
  owned_buffer(owned_buffer&& o) noexcept
      : resource_(o.resource_), data_(std::exchange(o.data_, nullptr)), count_(std::exchange(o.count_, 0)) {}
  owned_buffer& operator=(owned_buffer&& o) noexcept {
    if (this != &o) {
      release();
      resource_ = o.resource_;
      data_ = std::exchange(o.data_, nullptr);
      count_ = std::exchange(o.count_, 0);
    }
    return *this;
  }
  ~owned_buffer() { release(); }

  T* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return count_; }
  std::size_t bytes() const noexcept { return count_ * sizeof(T); }
  T& operator[](std::size_t i) const noexcept { return data_[i]; }
  void zero() noexcept {
    if (count_ != 0) std::memset(static_cast<void*>(data_), 0, bytes());
  }

 private:
  void release() noexcept {
    if (data_ != nullptr) resource_->deallocate(data_, count_ * sizeof(T), 64);
    data_ = nullptr;
  }
  std::pmr::memory_resource* resource_ = nullptr;
  T* data_ = nullptr;
  std::size_t count_ = 0;
};

}  // namespace detail
}  // namespace zero
