#pragma once
//! @file partitioned_checkpointer.hpp
//! ZeRO-R's P_a: an activation replicated over a group of M ranks (a tensor-parallel group) is
//! checkpointed as M slices, each rank keeping one, and all-gathered on restore. Each rank
//! stores 1/M of every checkpoint, up to padding: a checkpoint of B bytes becomes M slices of
//! `partition_slice_bytes(B, M)` bytes (B / M rounded up to whole 8-byte words), the last ones
//! ending in zeros. Sizes that do not divide are padded, never refused.
//!
//! The slices go to an inner checkpointer, so partitioning composes with every other policy:
//! `partitioned_checkpointer<Comm>` keeps them in device-side memory,
//! `partitioned_checkpointer<Comm, contiguous_checkpointer>` in a planned arena (size it with
//! `partitioned_plan`), `partitioned_checkpointer<Comm, offloaded_checkpointer<>>` in host
//! memory (P_a+cpu).
//!
//! Saving communicates nothing (every rank has the whole activation); restoring is one
//! all-gather, which every rank of the group must call for the same checkpoints in the same
//! order, as for any collective.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory_resource>
#include <string>
#include <utility>

#include "zero/activation_checkpointer.hpp"
#include "zero/communicator.hpp"
#include "zero/memory.hpp"

namespace zero {

//! The unit slices are cut in and gathered as: the Communicator concept moves element types,
//! not bytes.
using partition_word = std::uint64_t;

//! Bytes each of `world_size` ranks keeps of a checkpoint of `bytes` bytes: `bytes / world_size`
//! rounded up to whole `partition_word`s. @pre world_size >= 1
constexpr std::size_t partition_slice_bytes(std::size_t bytes, int world_size) noexcept {
  const std::size_t quantum = sizeof(partition_word) * static_cast<std::size_t>(world_size);
  return (bytes + quantum - 1) / quantum * sizeof(partition_word);
}

//! What one rank stores of a plan of whole checkpoints partitioned over `world_size` ranks: the
//! plan to give the inner `contiguous_arena`. @pre world_size >= 1
inline checkpoint_plan partitioned_plan(const checkpoint_plan& whole, int world_size) {
  checkpoint_plan slices;
  slices.sizes.reserve(whole.count());
  for (std::size_t s : whole.sizes) slices.sizes.push_back(partition_slice_bytes(s, world_size));
  return slices;
}

struct partitioned_options {
  //! Allocate the gather buffer at construction for checkpoints of up to this many bytes, and
  //! refuse larger ones; 0: grow it when a larger checkpoint that needs it is saved.
  std::size_t max_checkpoint_bytes = 0;
  //! Device-side memory for the gather buffer.
  std::pmr::memory_resource* device = std::pmr::get_default_resource();
};

//! Keeps this rank's slice of each checkpoint in `Inner` and all-gathers the whole on restore.
//!
//! A checkpoint whose size is a multiple of 8·M bytes is gathered straight into the
//! framework's buffer (when that is 8-byte aligned). Any other needs room for its padding: a
//! gather buffer of M · slice bytes, device-side, in flight, sized to the largest such
//! checkpoint when it is saved (or at construction, see `partitioned_options`), never at restore
//! unless the framework's buffer is misaligned.
//! @tparam Comm the group over which the activation is replicated
//! @tparam Inner where this rank's slices are kept
template <communicator Comm, activation_checkpointer Inner = plain_checkpointer<>>
  requires std::move_constructible<Inner>
class partitioned_checkpointer {
 public:
  static constexpr bool recomputes = recomputes_v<Inner>;

  partitioned_checkpointer(Comm& comm, Inner inner, partitioned_options options = {})
      : comm_(&comm), inner_(std::move(inner)), options_(options), ledger_("partitioned_checkpointer", detail::max_checkpoints_of(inner_)) {
    if (comm.world_size() < 1) throw usage_error("zero: partitioned_checkpointer: a group of " + std::to_string(comm.world_size()) + " ranks");
    if (options_.max_checkpoint_bytes != 0) reserve_gather(whole_bytes(options_.max_checkpoint_bytes));
    meter_.record(memory());
  }
  explicit partitioned_checkpointer(Comm& comm, partitioned_options options = {})
    requires std::default_initializable<Inner>
      : partitioned_checkpointer(comm, Inner{}, options) {}
  //! Built by an engine over `ctx.comm`: the inner checkpointer built for this rank's slices (a
  //! declared plan and `max_checkpoint_bytes` become the slices' sizes), the gather buffer on
  //! the engine's memory.
  template <class EngineComm>
    requires std::convertible_to<EngineComm&, Comm&>
  static partitioned_checkpointer make(const checkpointer_context<EngineComm>& ctx) {
    Comm& comm = ctx.comm;
    const int world = comm.world_size();
    activation_options slices = ctx.options;
    slices.plan = partitioned_plan(ctx.options.plan, world);
    if (slices.max_checkpoint_bytes != 0) slices.max_checkpoint_bytes = partition_slice_bytes(slices.max_checkpoint_bytes, world);
    const checkpointer_context<Comm> inner{comm, ctx.memory, slices};
    return partitioned_checkpointer(comm, make_checkpointer<Inner>(inner), partitioned_options{ctx.options.max_checkpoint_bytes, ctx.memory});
  }
  //! `Inner` holding this rank's slices of `plan` (its own expectation, on the slices' plan), and
  //! the gather buffer in flight: the whole of `max_checkpoint_bytes` (reserved at
  //! construction), or else of the largest checkpoint whose size is not a multiple of
  //! 8 x `world` bytes (`expected_checkpoint_memory`).
  static checkpoint_memory expected_memory(const checkpoint_plan& plan, int world, const activation_options& options) {
    activation_options slices = options;
    slices.plan = partitioned_plan(plan, world);
    if (options.max_checkpoint_bytes != 0) slices.max_checkpoint_bytes = partition_slice_bytes(options.max_checkpoint_bytes, world);
    checkpoint_memory m = expected_checkpoint_memory<Inner>(slices.plan, world, slices);
    const auto whole = [&](std::size_t bytes) { return partition_slice_bytes(bytes, world) * static_cast<std::size_t>(world); };
    std::size_t gather = options.max_checkpoint_bytes != 0 ? whole(options.max_checkpoint_bytes) : 0;
    for (std::size_t size : plan.sizes)
      if (whole(size) != size) gather = std::max(gather, whole(size));
    m.in_flight += gather;
    return m;
  }
  partitioned_checkpointer(partitioned_checkpointer&&) noexcept = default;
  partitioned_checkpointer& operator=(partitioned_checkpointer&&) = delete;

  //! Keeps this rank's slice; communicates nothing.
  void save(checkpoint_id id, raw_span<const std::byte> data, generator_state rng = {}) {
    ledger_.check_save(id, data);
    if (options_.max_checkpoint_bytes != 0 && data.size > options_.max_checkpoint_bytes)
      throw usage_error("zero: partitioned_checkpointer: checkpoint " + std::to_string(id) + " (" + std::to_string(data.size) +
                        " bytes) exceeds partitioned_options::max_checkpoint_bytes (" +
                        std::to_string(options_.max_checkpoint_bytes) + ")");
    const std::size_t slice = slice_bytes(data.size), begin = static_cast<std::size_t>(comm_->rank()) * slice;
    if (whole_bytes(data.size) != data.size) reserve_gather(whole_bytes(data.size));
    raw_span<const std::byte> mine{data.data + (begin < data.size ? begin : data.size), slice};
    if (begin + slice > data.size) {  // the slice reaches into the padding: stage it, zero-filled
      const std::size_t real = begin < data.size ? data.size - begin : 0;
      if (real != 0) std::memcpy(gather_.data(), data.data + begin, real);
      std::memset(gather_.data() + real, 0, slice - real);
      mine = {gather_.data(), slice};
    }
    inner_.save(id, mine, rng);
    try {
      ledger_.add(id, data.size, {}, rng);
    } catch (...) {
      inner_.release(id);
      throw;
    }
    meter_.record(memory());
  }

  //! Restores this rank's slice from `Inner` and all-gathers the whole checkpoint into `out`.
  generator_state restore(checkpoint_id id, raw_span<std::byte> out) {
    auto& e = ledger_.check_restore(id, out);
    const std::size_t slice = slice_bytes(e.size), whole = whole_bytes(e.size);
    const bool direct = whole == e.size && reinterpret_cast<std::uintptr_t>(out.data) % alignof(partition_word) == 0;
    if (!direct) reserve_gather(whole);
    std::byte* target = direct ? out.data : gather_.data();
    std::byte* mine = target + static_cast<std::size_t>(comm_->rank()) * slice;
    const generator_state rng = inner_.restore(id, {mine, slice});
    comm_->all_gather(reinterpret_cast<const partition_word*>(mine), reinterpret_cast<partition_word*>(target),
                      slice / sizeof(partition_word));
    if (!direct && e.size != 0) std::memcpy(out.data, target, e.size);
    e.restored = true;
    meter_.record(memory());
    return rng;
  }

  void release(checkpoint_id id) {
    ledger_.check_release(id);
    inner_.release(id);
    ledger_.erase(id);
    meter_.record(memory());
  }

  //! Passes the hint on to `Inner` (an offloaded inner starts bringing the slice back).
  void prefetch(checkpoint_id id) {
    if (ledger_.find(id) == nullptr)
      throw usage_error("zero: partitioned_checkpointer: checkpoint " + std::to_string(id) + ": prefetch of a checkpoint that is not held");
    zero::prefetch(inner_, id);
  }

  //! `Inner`'s memory (this rank's slices) plus the gather buffer, in flight.
  checkpoint_memory memory() const {
    checkpoint_memory m = detail::memory_of(inner_);
    m.in_flight += gather_.bytes();
    return m;
  }
  checkpoint_memory peak_memory() const noexcept { return meter_.peak(); }
  std::size_t bytes_held() const { return memory().total(); }
  std::size_t peak_bytes_held() const noexcept { return meter_.peak_total(); }
  std::size_t max_checkpoints() const { return detail::max_checkpoints_of(inner_); }

  //! Bytes this rank keeps of a checkpoint of `bytes` bytes.
  std::size_t slice_bytes(std::size_t bytes) const noexcept { return partition_slice_bytes(bytes, comm_->world_size()); }
  const Inner& inner() const noexcept { return inner_; }
  Inner& inner() noexcept { return inner_; }

 private:
  std::size_t whole_bytes(std::size_t bytes) const noexcept {
    return slice_bytes(bytes) * static_cast<std::size_t>(comm_->world_size());
  }
  //! The gather buffer is scratch: growing it frees the old one first.
  void reserve_gather(std::size_t bytes) {
    if (gather_.bytes() >= bytes) return;
    gather_ = {};
    gather_ = detail::owned_buffer<std::byte>(bytes, options_.device);
  }

  Comm* comm_;
  Inner inner_;
  partitioned_options options_;
  detail::checkpoint_ledger<> ledger_;
  detail::owned_buffer<std::byte> gather_;
  detail::memory_meter meter_;
};

static_assert(measured_checkpointer<partitioned_checkpointer<single_rank_communicator>>);
static_assert(measured_checkpointer<partitioned_checkpointer<single_rank_communicator, contiguous_checkpointer>>);

}  // namespace zero
