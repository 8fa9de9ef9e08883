#pragma once
//! @file activation_checkpointer.hpp
//! The ActivationCheckpointer policy (ZeRO-R's activation side): during forward a layer hands
//! the checkpointer the tensor it will need to recompute from, with an id and the state of its
//! random generator; during backward the checkpointer restores it into a buffer for
//! recomputation, gives back the generator state (so dropout sees the same randomness), and
//! then releases it. A checkpointer reports the bytes it holds now and at its peak.
//!
//! This header holds the concept, the vocabulary every checkpointer shares, the storages a
//! checkpointer keeps its bytes in (`heap_storage`, `contiguous_arena`), and the checkpointers
//! that keep whole copies in device-side memory (`plain_checkpointer`,
//! `keep_everything_checkpointer`) or none at all (`passthrough_checkpointer`).
//! `partitioned_checkpointer.hpp` (P_a) and `offloaded_checkpointer.hpp` (P_a+cpu) compose with
//! them. See docs/activation.md.
//!
//! Memory spaces. A checkpointer takes its memory from `std::pmr::memory_resource`s: a
//! *device-side* one (where recomputation reads from: GPU memory on a GPU backend) and, for
//! offloading, a *host* one. On the host path both are ordinary memory; keeping them apart is
//! what lets every byte be measured where it lives.

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory_resource>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "zero/error.hpp"
#include "zero/memory.hpp"
#include "zero/types.hpp"

namespace zero {

using checkpoint_id = std::uint64_t;

//! The framework's random-generator state at a checkpoint (e.g. a Philox seed and offset).
struct generator_state {
  std::uint64_t seed = 0;
  std::uint64_t offset = 0;
  friend constexpr bool operator==(const generator_state&, const generator_state&) = default;
};

//! An ActivationCheckpointer. The life of one id is save -> restore -> release; after the
//! release the id may be saved again (the next step).
//! * `save(id, data, rng)` keeps what is needed to restore `data`. @pre `id` is not held.
//! * `restore(id, out)` writes the saved bytes into `out` (`out.size` == the saved size) and
//!   returns the generator state saved with them. A checkpoint is restored once: a second
//!   restore of the same id is an error (save it again to recompute again).
//! * `release(id)` forgets it, after its restore or instead of it (a checkpoint not needed).
//! * `bytes_held()`, `peak_bytes_held()`: activation bytes it holds now and at its peak.
//! The shipped checkpointers throw `usage_error` on an id that is not held, a second restore, a
//! second save, a size that does not match or a null buffer, and change nothing when they do.
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

//! The bytes a checkpointer holds, by where they live (device-side or host).
struct checkpoint_memory {
  std::size_t stored = 0;     //!< checkpoints kept in device-side memory
  std::size_t in_flight = 0;  //!< device-side buffers that carry checkpoints in and out (staging, gathering)
  std::size_t host = 0;       //!< checkpoints kept in host memory (offloaded)

  constexpr std::size_t device() const noexcept { return stored + in_flight; }
  constexpr std::size_t total() const noexcept { return device() + host; }
  friend constexpr bool operator==(const checkpoint_memory&, const checkpoint_memory&) = default;
};

//! A checkpointer that says where its bytes live: `memory()` now, `peak_memory()` the maximum
//! of each field over its life (the maxima of different fields need not be simultaneous;
//! `peak_bytes_held()` is the maximum of the total).
template <class C>
concept measured_checkpointer = activation_checkpointer<C> && requires(const C& cc) {
  { cc.memory() } -> std::same_as<checkpoint_memory>;
  { cc.peak_memory() } -> std::same_as<checkpoint_memory>;
};

//! Whether the framework recomputes a layer from its checkpoint (the default), or hands the
//! checkpointer every activation its backward needs and recomputes nothing (a checkpointer
//! with `static constexpr bool recomputes = false`, such as `keep_everything_checkpointer`).
template <class C>
inline constexpr bool recomputes_v = [] {
  if constexpr (requires { { C::recomputes } -> std::convertible_to<bool>; }) return static_cast<bool>(C::recomputes);
  else return true;
}();

//! Tells `c` that checkpoint `id` will be restored soon, so that it can start bringing it back
//! (an offloaded checkpointer copies it toward device-side memory). Does nothing for a
//! checkpointer without a `prefetch(id)` member. Checkpointers that prefetch also guess on
//! their own: restoring checkpoint k starts bringing back the latest one saved before it.
template <activation_checkpointer C>
void prefetch(C& c, checkpoint_id id) {
  if constexpr (requires { c.prefetch(id); }) c.prefetch(id);
}

// ---- storages -------------------------------------------------------------------------------

struct checkpoint_plan;

//! A CheckpointStorage: the memory, in one memory space, that a checkpointer keeps its bytes in.
//! * `allocate(id, bytes)` returns a region of exactly `bytes` bytes for checkpoint `id`, or
//!   throws `usage_error` when it cannot (a plan exceeded), holding nothing new.
//! * `deallocate(id, region)` gives back what `allocate(id, ...)` returned.
//! * `bytes_reserved()`: bytes it holds from its memory resource now.
//! * `max_checkpoints()`: how many checkpoints it can hold at once (0: no limit).
template <class S>
concept checkpoint_storage =
    std::move_constructible<S> && requires(S& s, const S& cs, checkpoint_id id, std::size_t n, raw_span<std::byte> region) {
      { s.allocate(id, n) } -> std::same_as<raw_span<std::byte>>;
      s.deallocate(id, region);
      { cs.bytes_reserved() } -> std::convertible_to<std::size_t>;
      { cs.max_checkpoints() } -> std::convertible_to<std::size_t>;
    };

//! One allocation from the memory resource per checkpoint, given back at its release: the
//! plain way, whose mix of long-lived checkpoints and short-lived tensors fragments memory.
class heap_storage {
 public:
  static constexpr std::size_t alignment = 64;  //!< of every region

  explicit heap_storage(std::pmr::memory_resource* resource = std::pmr::get_default_resource()) noexcept
      : resource_(resource) {}

  raw_span<std::byte> allocate(checkpoint_id, std::size_t bytes) {
    if (bytes == 0) return {};
    auto* region = static_cast<std::byte*>(resource_->allocate(bytes, alignment));
    reserved_ += bytes;
    return {region, bytes};
  }
  void deallocate(checkpoint_id, raw_span<std::byte> region) noexcept {
    if (region.size == 0) return;
    resource_->deallocate(region.data, region.size, alignment);
    reserved_ -= region.size;
  }
  std::size_t bytes_reserved() const noexcept { return reserved_; }
  std::size_t max_checkpoints() const noexcept { return 0; }
  //! What it reserves holding every checkpoint of `plan` at once: their sizes, summed.
  static std::size_t expected_bytes(const checkpoint_plan& plan) noexcept;

 private:
  std::pmr::memory_resource* resource_;
  std::size_t reserved_ = 0;
};

//! The checkpoints a step holds at once, declared up front: `sizes[k]` bytes for the k-th.
struct checkpoint_plan {
  static constexpr std::size_t alignment = 64;  //!< every slot of an arena starts at a multiple of this

  std::vector<std::size_t> sizes;

  //! `count` checkpoints of up to `bytes` bytes each.
  static checkpoint_plan uniform(std::size_t count, std::size_t bytes) { return {std::vector<std::size_t>(count, bytes)}; }

  std::size_t count() const noexcept { return sizes.size(); }
  std::size_t largest() const noexcept { return sizes.empty() ? 0 : *std::max_element(sizes.begin(), sizes.end()); }
  //! The bytes of the arena slot that holds a checkpoint of `bytes` bytes.
  static constexpr std::size_t slot_bytes(std::size_t bytes) noexcept { return (bytes + alignment - 1) / alignment * alignment; }
  //! The size of the arena that holds this plan: the sum of its slots.
  std::size_t arena_bytes() const noexcept {
    std::size_t total = 0;
    for (std::size_t s : sizes) total += slot_bytes(s);
    return total;
  }
};

inline std::size_t heap_storage::expected_bytes(const checkpoint_plan& plan) noexcept {
  std::size_t total = 0;
  for (std::size_t s : plan.sizes) total += s;
  return total;
}

//! ZeRO-R's MD (memory defragmentation) for checkpoints: one allocation of
//! `plan.arena_bytes()` at construction, cut into one slot per planned checkpoint. A
//! checkpoint takes the smallest free slot that fits it (ties: the first); save, restore and
//! release allocate nothing. A checkpoint that no free slot fits is refused with a
//! `usage_error` naming it, its size and the plan's limits.
class contiguous_arena {
 public:
  explicit contiguous_arena(checkpoint_plan plan, std::pmr::memory_resource* resource = std::pmr::get_default_resource())
      : plan_(std::move(plan)), arena_(plan_.arena_bytes(), resource) {
    slots_.reserve(plan_.count());
    std::size_t offset = 0;
    for (std::size_t s : plan_.sizes) {
      slots_.push_back({offset, s, 0, false});
      offset += checkpoint_plan::slot_bytes(s);
    }
  }

  raw_span<std::byte> allocate(checkpoint_id id, std::size_t bytes) {
    slot* best = nullptr;
    for (auto& s : slots_)
      if (!s.held && s.capacity >= bytes && (best == nullptr || s.capacity < best->capacity)) best = &s;
    if (best == nullptr) throw usage_error(refusal(id, bytes));
    best->held = true;
    best->id = id;
    return {arena_.data() + best->offset, bytes};
  }
  void deallocate(checkpoint_id id, raw_span<std::byte>) noexcept {
    for (auto& s : slots_)
      if (s.held && s.id == id) s.held = false;
  }
  //! The whole arena, held from construction to destruction: `plan().arena_bytes()`.
  std::size_t bytes_reserved() const noexcept { return arena_.bytes(); }
  std::size_t max_checkpoints() const noexcept { return plan_.count(); }
  std::size_t slots_held() const noexcept {
    return static_cast<std::size_t>(std::count_if(slots_.begin(), slots_.end(), [](const slot& s) { return s.held; }));
  }
  const checkpoint_plan& plan() const noexcept { return plan_; }
  //! What it reserves for `plan`, whatever it holds: the arena.
  static std::size_t expected_bytes(const checkpoint_plan& plan) noexcept { return plan.arena_bytes(); }

 private:
  struct slot {
    std::size_t offset, capacity;
    checkpoint_id id;
    bool held;
  };

  std::string refusal(checkpoint_id id, std::size_t bytes) const {
    std::string why;
    if (slots_held() == slots_.size()) {
      why = "all " + std::to_string(slots_.size()) + " of its checkpoints are held";
    } else {
      std::size_t largest_free = 0;
      for (const auto& s : slots_)
        if (!s.held) largest_free = std::max(largest_free, s.capacity);
      why = "its largest free slot holds " + std::to_string(largest_free) + " bytes";
    }
    return "zero: contiguous_arena: checkpoint " + std::to_string(id) + " (" + std::to_string(bytes) +
           " bytes) exceeds the plan: " + why + " (plan: " + std::to_string(plan_.count()) +
           " checkpoints of at most " + std::to_string(plan_.largest()) + " bytes, arena of " +
           std::to_string(arena_.bytes()) + " bytes). Declare it in the checkpoint_plan, or release checkpoints first";
  }

  checkpoint_plan plan_;
  detail::owned_buffer<std::byte> arena_;
  std::vector<slot> slots_;
};

static_assert(checkpoint_storage<heap_storage>);
static_assert(checkpoint_storage<contiguous_arena>);

// ---- built by the engine ---------------------------------------------------------------------

//! What the optimizer's options say about the activation checkpointer it builds.
struct activation_options {
  //! Host memory for offloaded checkpoints (`offloaded_checkpointer`'s storage).
  std::pmr::memory_resource* host_memory = std::pmr::new_delete_resource();
  //! The checkpoints a step holds at once: what a `contiguous_arena` is cut into (ZeRO-R's MD).
  //! Required by checkpointers that store in a `contiguous_arena`; unused otherwise.
  checkpoint_plan plan{};
  //! Reserve the gather and staging buffers (partitioned and offloaded checkpointers) at
  //! construction for checkpoints of up to this many bytes, and refuse larger ones; 0: grow them
  //! when a larger checkpoint is saved.
  std::size_t max_checkpoint_bytes = 0;
};

//! What the engine hands `make_checkpointer`: its communicator, the memory resource of its
//! device-side buffers (`optimizer_options::memory`), and the activation options.
template <class Comm>
struct checkpointer_context {
  Comm& comm;
  std::pmr::memory_resource* memory;
  const activation_options& options;
};

//! A storage built on `memory` (host or device-side) for `options`: `heap_storage` on the
//! memory resource, a `contiguous_arena` of `options.plan` (refused without one), or a
//! user-written storage with `static S make(std::pmr::memory_resource*, const activation_options&)`
//! or a default constructor.
template <checkpoint_storage S>
S make_storage(std::pmr::memory_resource* memory, const activation_options& options) {
  if constexpr (requires { S::make(memory, options); }) {
    return S::make(memory, options);
  } else if constexpr (std::is_same_v<S, heap_storage>) {
    return heap_storage(memory);
  } else if constexpr (std::is_same_v<S, contiguous_arena>) {
    if (options.plan.count() == 0)
      throw usage_error("zero: the activation checkpointer stores in a contiguous_arena, and "
                        "optimizer_options::activations.plan declares no checkpoints: declare the checkpoints a step holds");
    return contiguous_arena(options.plan, memory);
  } else {
    static_assert(std::default_initializable<S>,
                  "zero::make_storage: the checkpoint storage has neither a static make(std::pmr::memory_resource*, const "
                  "zero::activation_options&) nor a default constructor");
    return S{};
  }
}

//! The checkpointer `K` an engine over `ctx.comm` builds: `K::make(ctx)` where it has one (every
//! shipped checkpointer), else `K(ctx.comm)`, else `K{}`.
template <class K, class Comm>
K make_checkpointer(const checkpointer_context<Comm>& ctx) {
  if constexpr (requires { K::make(ctx); }) {
    return K::make(ctx);
  } else if constexpr (std::constructible_from<K, Comm&>) {
    return K(ctx.comm);
  } else {
    static_assert(std::default_initializable<K>,
                  "zero::make_checkpointer: the optimizer cannot build its activation checkpointer: give it a static "
                  "make(const zero::checkpointer_context<Comm>&), a constructor from the communicator, or a default "
                  "constructor");
    return K{};
  }
}

//! The bytes checkpointer K holds at its peak (each field's maximum, as `peak_memory()`) in a step
//! that saves every checkpoint of `plan` before it restores any, as forward then backward do,
//! when an engine built it on a group of `world` ranks with `options` (the plan the checkpoints
//! were declared with, `max_checkpoint_bytes`): `K::expected_memory(plan, world, options)`, which
//! every shipped checkpointer has. `optimizer::memory()` reports the measured peak
//! (`activations`, `activations_host`); the activation tests check that they agree.
template <class K>
checkpoint_memory expected_checkpoint_memory(const checkpoint_plan& plan, int world = 1, const activation_options& options = {}) {
  static_assert(requires { { K::expected_memory(plan, world, options) } -> std::same_as<checkpoint_memory>; },
                "zero::expected_checkpoint_memory: the checkpointer has no static expected_memory(const checkpoint_plan&, int, "
                "const activation_options&) (every shipped one has)");
  return K::expected_memory(plan, world, options);
}

namespace detail {

//! The checkpoints a checkpointer holds, and the lifecycle checks every checkpointer shares.
//! A short vector searched linearly (a model has tens to hundreds of checkpoints), reserved up
//! front where the storage knows its count, so that saving allocates nothing once it is warm.
struct no_extra {};

template <class Extra = no_extra>
class checkpoint_ledger {
 public:
  struct entry {
    checkpoint_id id = 0;
    std::size_t size = 0;            //!< bytes saved (the whole checkpoint)
    raw_span<std::byte> region;      //!< where the owner keeps them, if it does
    generator_state rng;
    std::uint64_t order = 0;         //!< saves before this one, over the ledger's life
    bool restored = false;
    Extra extra{};                   //!< whatever else the owner keeps per checkpoint
  };

  explicit checkpoint_ledger(std::string_view owner, std::size_t capacity = 0) : owner_(owner) { entries_.reserve(capacity); }

  entry* find(checkpoint_id id) noexcept {
    for (auto& e : entries_)
      if (e.id == id) return &e;
    return nullptr;
  }

  void check_save(checkpoint_id id, raw_span<const std::byte> data) {
    if (data.data == nullptr && data.size != 0)
      throw usage_error(prefix(id) + "save of a null buffer of " + std::to_string(data.size) + " bytes");
    if (find(id) != nullptr)
      throw usage_error(prefix(id) + "saved twice: it is held already; release it before saving it again");
  }
  entry& check_restore(checkpoint_id id, raw_span<std::byte> out) {
    entry* e = find(id);
    if (e == nullptr) throw usage_error(prefix(id) + "restore of a checkpoint that is not held (never saved, or released)");
    if (e->restored)
      throw usage_error(prefix(id) + "restored twice: a checkpoint is restored once, then released; save it again to recompute again");
    if (out.size != e->size)
      throw usage_error(prefix(id) + "restore into " + std::to_string(out.size) + " bytes; it holds " + std::to_string(e->size));
    if (out.data == nullptr && out.size != 0)
      throw usage_error(prefix(id) + "restore into a null buffer of " + std::to_string(out.size) + " bytes");
    return *e;
  }
  entry& check_release(checkpoint_id id) {
    entry* e = find(id);
    if (e == nullptr) throw usage_error(prefix(id) + "release of a checkpoint that is not held (never saved, or released already)");
    return *e;
  }

  entry& add(checkpoint_id id, std::size_t size, raw_span<std::byte> region, generator_state rng, Extra extra = {}) {
    entries_.push_back({id, size, region, rng, saves_++, false, extra});
    return entries_.back();
  }
  void erase(checkpoint_id id) noexcept {
    entry* e = find(id);
    if (e == nullptr) return;
    *e = entries_.back();
    entries_.pop_back();
  }

  //! The latest saved checkpoint that is not restored yet and passes `eligible`: the one
  //! backward, which goes in reverse, restores next.
  template <class Pred>
  entry* latest_unrestored(Pred&& eligible) noexcept {
    entry* latest = nullptr;
    for (auto& e : entries_)
      if (!e.restored && eligible(e) && (latest == nullptr || e.order > latest->order)) latest = &e;
    return latest;
  }

  std::vector<entry>& entries() noexcept { return entries_; }

 private:
  std::string prefix(checkpoint_id id) const { return "zero: " + std::string(owner_) + ": checkpoint " + std::to_string(id) + ": "; }

  std::string_view owner_;
  std::vector<entry> entries_;
  std::uint64_t saves_ = 0;
};

//! Keeps a checkpointer's `checkpoint_memory` now and the peak of each field and of the total.
class memory_meter {
 public:
  void record(const checkpoint_memory& now) noexcept {
    now_ = now;
    peak_.stored = std::max(peak_.stored, now.stored);
    peak_.in_flight = std::max(peak_.in_flight, now.in_flight);
    peak_.host = std::max(peak_.host, now.host);
    peak_total_ = std::max(peak_total_, now.total());
  }
  const checkpoint_memory& now() const noexcept { return now_; }
  const checkpoint_memory& peak() const noexcept { return peak_; }
  std::size_t peak_total() const noexcept { return peak_total_; }

 private:
  checkpoint_memory now_, peak_;
  std::size_t peak_total_ = 0;
};

//! The `checkpoint_memory` of any checkpointer: its own report, or, for one that does not say
//! where its bytes live, all of them counted as stored in device-side memory.
template <activation_checkpointer C>
checkpoint_memory memory_of(const C& c) {
  if constexpr (measured_checkpointer<C>) return c.memory();
  else return {static_cast<std::size_t>(c.bytes_held()), 0, 0};
}

//! How many checkpoints `c` can hold at once, where it knows (0: no limit, or unknown).
template <class C>
std::size_t max_checkpoints_of(const C& c) {
  if constexpr (requires { { c.max_checkpoints() } -> std::convertible_to<std::size_t>; }) return c.max_checkpoints();
  else return 0;
}

}  // namespace detail

// ---- checkpointers that keep whole copies in device-side memory ------------------------------

//! Plain activation checkpointing: keeps a copy of each checkpointed tensor (a layer's input)
//! in `Storage`, device-side, until its release; the framework recomputes the rest.
//! `plain_checkpointer<contiguous_arena>` (alias `contiguous_checkpointer`) is ZeRO-R's MD.
//! @tparam Storage `heap_storage` (one allocation per checkpoint) or `contiguous_arena`
template <checkpoint_storage Storage = heap_storage>
class plain_checkpointer {
 public:
  static constexpr bool recomputes = true;

  plain_checkpointer()
    requires std::default_initializable<Storage>
      : plain_checkpointer(Storage{}) {}
  explicit plain_checkpointer(Storage storage) : plain_checkpointer(std::move(storage), "plain_checkpointer") {}
  //! Built by an engine: its storage on the engine's memory (`make_storage`).
  template <class Comm>
  static plain_checkpointer make(const checkpointer_context<Comm>& ctx) {
    return plain_checkpointer(make_storage<Storage>(ctx.memory, ctx.options));
  }
  //! Every checkpoint of `plan` stored device-side at once (`expected_checkpoint_memory`).
  static checkpoint_memory expected_memory(const checkpoint_plan& plan, int, const activation_options&) {
    return {Storage::expected_bytes(plan), 0, 0};
  }
  plain_checkpointer(plain_checkpointer&&) noexcept = default;
  plain_checkpointer& operator=(plain_checkpointer&&) = delete;
  ~plain_checkpointer() {
    for (auto& e : ledger_.entries()) storage_.deallocate(e.id, e.region);
  }

  void save(checkpoint_id id, raw_span<const std::byte> data, generator_state rng = {}) {
    ledger_.check_save(id, data);
    const raw_span<std::byte> region = storage_.allocate(id, data.size);
    try {
      ledger_.add(id, data.size, region, rng);
    } catch (...) {
      storage_.deallocate(id, region);
      throw;
    }
    if (data.size != 0) std::memcpy(region.data, data.data, data.size);
    meter_.record(memory());
  }
  generator_state restore(checkpoint_id id, raw_span<std::byte> out) {
    auto& e = ledger_.check_restore(id, out);
    if (out.size != 0) std::memcpy(out.data, e.region.data, out.size);
    e.restored = true;
    return e.rng;
  }
  void release(checkpoint_id id) {
    auto& e = ledger_.check_release(id);
    storage_.deallocate(id, e.region);
    ledger_.erase(id);
    meter_.record(memory());
  }

  checkpoint_memory memory() const noexcept { return {storage_.bytes_reserved(), 0, 0}; }
  checkpoint_memory peak_memory() const noexcept { return meter_.peak(); }
  std::size_t bytes_held() const noexcept { return memory().total(); }
  std::size_t peak_bytes_held() const noexcept { return meter_.peak_total(); }
  std::size_t max_checkpoints() const noexcept { return storage_.max_checkpoints(); }
  const Storage& storage() const noexcept { return storage_; }

 protected:
  plain_checkpointer(Storage storage, std::string_view name)
      : storage_(std::move(storage)), ledger_(name, storage_.max_checkpoints()) {
    meter_.record(memory());
  }

 private:
  Storage storage_;
  detail::checkpoint_ledger<> ledger_;
  detail::memory_meter meter_;
};

//! The baseline without checkpointing: the framework hands over every activation its backward
//! needs (inputs and intermediates of every layer, dropout masks) and recomputes nothing
//! (`recomputes_v` is false). Stores like `plain_checkpointer`; what it holds is the activation
//! memory of training without checkpointing.
template <checkpoint_storage Storage = heap_storage>
class keep_everything_checkpointer : public plain_checkpointer<Storage> {
 public:
  static constexpr bool recomputes = false;

  keep_everything_checkpointer()
    requires std::default_initializable<Storage>
      : keep_everything_checkpointer(Storage{}) {}
  explicit keep_everything_checkpointer(Storage storage)
      : plain_checkpointer<Storage>(std::move(storage), "keep_everything_checkpointer") {}
  //! Built by an engine: its storage on the engine's memory (`make_storage`).
  template <class Comm>
  static keep_everything_checkpointer make(const checkpointer_context<Comm>& ctx) {
    return keep_everything_checkpointer(make_storage<Storage>(ctx.memory, ctx.options));
  }
};

using contiguous_checkpointer = plain_checkpointer<contiguous_arena>;

//! Keeps no copy: the framework keeps each checkpointed tensor alive, unchanged, until its
//! release; restore copies from the framework's memory. Holds no bytes of its own
//! (`bytes_held()` is 0), for frameworks that manage checkpoint memory themselves.
class passthrough_checkpointer {
 public:
  void save(checkpoint_id id, raw_span<const std::byte> data, generator_state rng = {}) {
    ledger_.check_save(id, data);
    ledger_.add(id, data.size, {const_cast<std::byte*>(data.data), data.size}, rng);
  }
  generator_state restore(checkpoint_id id, raw_span<std::byte> out) {
    auto& e = ledger_.check_restore(id, out);
    if (out.size != 0 && out.data != e.region.data) std::memmove(out.data, e.region.data, out.size);
    e.restored = true;
    return e.rng;
  }
  void release(checkpoint_id id) {
    ledger_.check_release(id);
    ledger_.erase(id);
  }
  checkpoint_memory memory() const noexcept { return {}; }
  checkpoint_memory peak_memory() const noexcept { return {}; }
  std::size_t bytes_held() const noexcept { return 0; }
  std::size_t peak_bytes_held() const noexcept { return 0; }
  //! Nothing (`expected_checkpoint_memory`).
  static checkpoint_memory expected_memory(const checkpoint_plan&, int, const activation_options&) noexcept { return {}; }

 private:
  detail::checkpoint_ledger<> ledger_{"passthrough_checkpointer"};
};

static_assert(measured_checkpointer<passthrough_checkpointer>);
static_assert(measured_checkpointer<plain_checkpointer<>>);
static_assert(measured_checkpointer<contiguous_checkpointer>);
static_assert(measured_checkpointer<keep_everything_checkpointer<>>);
static_assert(recomputes_v<plain_checkpointer<>> && !recomputes_v<keep_everything_checkpointer<>>);

}  // namespace zero
