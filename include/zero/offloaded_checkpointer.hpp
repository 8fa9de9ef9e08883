#pragma once
//! @file offloaded_checkpointer.hpp
//! ZeRO-R's P_a+cpu: checkpoints are copied to host memory at save and brought back before
//! recomputation, so that device-side memory holds only the in-flight buffers: two staging
//! buffers of the largest checkpoint. Restoring checkpoint k brings k back and starts bringing
//! back the next one backward will ask for (the latest saved one not restored yet, or the one
//! named by `prefetch(id)`) into the other staging buffer.
//!
//! The copies go through a CopyEngine, the seam for the GPU backend. `host_copy_engine` copies
//! synchronously with memcpy (the host path, where "device-side" and host memory are both
//! ordinary memory, told apart by their memory resources). A CUDA engine (a later issue) will
//! copy asynchronously on a side stream, its events ordering the compute stream after them, with
//! pinned host memory as the host storage's memory resource; this class does not change.

#include <cstddef>
#include <cstring>
#include <memory_resource>
#include <string>
#include <utility>

#include "zero/activation_checkpointer.hpp"
#include "zero/memory.hpp"

namespace zero {

//! A CopyEngine: moves bytes between device-side and host memory. Each copy returns an event;
//! after `wait(event)`, work issued on the compute stream (the host, for a synchronous engine)
//! sees the copy complete; waiting on a default-constructed event does nothing. Copies to the
//! host and to the device run in the order issued (one side stream), so a copy back of a
//! checkpoint always follows its copy out.
template <class E>
concept copy_engine =
    std::move_constructible<E> && std::default_initializable<typename E::event> && requires(E& e, std::byte* to, const std::byte* from, std::size_t n, const typename E::event& done) {
      { e.to_host(to, from, n) } -> std::same_as<typename E::event>;        // device-side -> host
      { e.to_device(to, from, n) } -> std::same_as<typename E::event>;      // host -> device-side
      { e.within_device(to, from, n) } -> std::same_as<typename E::event>;  // device-side -> device-side
      e.wait(done);
    };

//! The host path's engine: each copy is a memcpy, complete when it returns. Counts the bytes it
//! moves in each direction.
class host_copy_engine {
 public:
  struct event {};

  event to_host(std::byte* to, const std::byte* from, std::size_t n) noexcept { return copy(to, from, n, to_host_); }
  event to_device(std::byte* to, const std::byte* from, std::size_t n) noexcept { return copy(to, from, n, to_device_); }
  event within_device(std::byte* to, const std::byte* from, std::size_t n) noexcept { return copy(to, from, n, within_device_); }
  void wait(const event&) noexcept {}

  std::size_t bytes_to_host() const noexcept { return to_host_; }
  std::size_t bytes_to_device() const noexcept { return to_device_; }
  std::size_t bytes_within_device() const noexcept { return within_device_; }

 private:
  static event copy(std::byte* to, const std::byte* from, std::size_t n, std::size_t& counter) noexcept {
    if (n != 0) std::memcpy(to, from, n);
    counter += n;
    return {};
  }
  std::size_t to_host_ = 0, to_device_ = 0, within_device_ = 0;
};

static_assert(copy_engine<host_copy_engine>);

struct offloaded_options {
  //! Allocate the staging buffers at construction for checkpoints of up to this many bytes,
  //! and refuse larger ones; 0: grow them when a larger checkpoint is saved.
  std::size_t max_checkpoint_bytes = 0;
  //! Device-side memory for the two staging buffers.
  std::pmr::memory_resource* device = std::pmr::get_default_resource();
  //! Start bringing back the next checkpoint when one is restored.
  bool prefetch = true;
};

//! Keeps checkpoints in `HostStorage` (host memory) and two device-side staging buffers.
//! `offloaded_checkpointer<contiguous_arena>` keeps them in one planned host arena (on the GPU
//! path: one pinned allocation, which is expensive to make per step).
//! @tparam HostStorage `heap_storage` or `contiguous_arena`, built on the host memory resource
//! @tparam Engine how bytes move (see `copy_engine`)
template <checkpoint_storage HostStorage = heap_storage, copy_engine Engine = host_copy_engine>
class offloaded_checkpointer {
 public:
  static constexpr bool recomputes = true;

  offloaded_checkpointer()
    requires std::default_initializable<HostStorage> && std::default_initializable<Engine>
      : offloaded_checkpointer(HostStorage{}) {}
  explicit offloaded_checkpointer(HostStorage host, offloaded_options options = {}, Engine engine = {})
      : host_(std::move(host)), engine_(std::move(engine)), options_(options), ledger_("offloaded_checkpointer", host_.max_checkpoints()) {
    if (options_.max_checkpoint_bytes != 0) reserve_staging(options_.max_checkpoint_bytes);
    meter_.record(memory());
  }
  //! Built by an engine: the host storage on `ctx.options.host_memory`, the staging buffers on
  //! the engine's memory.
  template <class Comm>
    requires std::default_initializable<Engine>
  static offloaded_checkpointer make(const checkpointer_context<Comm>& ctx) {
    return offloaded_checkpointer(make_storage<HostStorage>(ctx.options.host_memory, ctx.options),
                                  offloaded_options{ctx.options.max_checkpoint_bytes, ctx.memory, true}, Engine{});
  }
  //! Every checkpoint of `plan` in host memory (`HostStorage`'s bytes for the plan) and two
  //! staging buffers of the largest checkpoint, or of `max_checkpoint_bytes` when it was given
  //! (`expected_checkpoint_memory`).
  static checkpoint_memory expected_memory(const checkpoint_plan& plan, int, const activation_options& options) {
    const std::size_t staging = options.max_checkpoint_bytes != 0 ? std::max(options.max_checkpoint_bytes, plan.largest()) : plan.largest();
    return {0, 2 * staging, HostStorage::expected_bytes(plan)};
  }
  offloaded_checkpointer(offloaded_checkpointer&&) noexcept = default;
  offloaded_checkpointer& operator=(offloaded_checkpointer&&) = delete;
  ~offloaded_checkpointer() {
    for (auto& e : ledger_.entries()) {
      engine_.wait(e.extra);
      host_.deallocate(e.id, e.region);
    }
  }

  //! Copies `data` to host memory. With an asynchronous engine the framework keeps `data`
  //! unchanged until the copy's event has completed on its stream.
  void save(checkpoint_id id, raw_span<const std::byte> data, generator_state rng = {}) {
    ledger_.check_save(id, data);
    if (options_.max_checkpoint_bytes != 0 && data.size > options_.max_checkpoint_bytes)
      throw usage_error("zero: offloaded_checkpointer: checkpoint " + std::to_string(id) + " (" + std::to_string(data.size) +
                        " bytes) exceeds offloaded_options::max_checkpoint_bytes (" +
                        std::to_string(options_.max_checkpoint_bytes) + ")");
    const raw_span<std::byte> region = host_.allocate(id, data.size);
    event copied{};
    try {
      reserve_staging(data.size);
      copied = engine_.to_host(region.data, data.data, data.size);
      ledger_.add(id, data.size, region, rng, copied);
    } catch (...) {
      engine_.wait(copied);
      host_.deallocate(id, region);
      throw;
    }
    meter_.record(memory());
  }

  //! Copies checkpoint `id` into `out`: from its staging buffer when it was prefetched, else
  //! straight from host memory; then starts bringing back the next one.
  generator_state restore(checkpoint_id id, raw_span<std::byte> out) {
    auto& e = ledger_.check_restore(id, out);
    const int from = staged_index(id);
    if (from >= 0) {
      engine_.wait(staged_[from].ready);
      engine_.wait(engine_.within_device(out.data, staging_[from].data(), e.size));
      staged_[from].full = false;
      ++prefetched_restores_;
    } else {
      engine_.wait(engine_.to_device(out.data, e.region.data, e.size));
      ++direct_restores_;
    }
    e.restored = true;
    const generator_state rng = e.rng;
    if (options_.prefetch) {
      auto* next = ledger_.latest_unrestored([&](const auto& x) { return staged_index(x.id) < 0; });
      if (next != nullptr) stage(*next, from >= 0 ? 1 - from : 0);
    }
    return rng;
  }

  void release(checkpoint_id id) {
    auto& e = ledger_.check_release(id);
    if (const int b = staged_index(id); b >= 0) {
      engine_.wait(staged_[b].ready);
      staged_[b].full = false;
    }
    engine_.wait(e.extra);
    host_.deallocate(id, e.region);
    ledger_.erase(id);
    meter_.record(memory());
  }

  //! Starts bringing checkpoint `id` back into a free staging buffer (none free: does nothing).
  void prefetch(checkpoint_id id) {
    auto* e = ledger_.find(id);
    if (e == nullptr)
      throw usage_error("zero: offloaded_checkpointer: checkpoint " + std::to_string(id) + ": prefetch of a checkpoint that is not held");
    if (!e->restored && staged_index(id) < 0) stage(*e, 0);
  }

  //! Host: the host storage's bytes; device-side: only the two staging buffers, in flight.
  checkpoint_memory memory() const noexcept {
    return {0, staging_[0].bytes() + staging_[1].bytes(), host_.bytes_reserved()};
  }
  checkpoint_memory peak_memory() const noexcept { return meter_.peak(); }
  std::size_t bytes_held() const noexcept { return memory().total(); }
  std::size_t peak_bytes_held() const noexcept { return meter_.peak_total(); }
  std::size_t max_checkpoints() const noexcept { return host_.max_checkpoints(); }

  //! Restores served from a staging buffer (prefetched) and straight from host memory.
  std::size_t prefetched_restores() const noexcept { return prefetched_restores_; }
  std::size_t direct_restores() const noexcept { return direct_restores_; }
  const HostStorage& host_storage() const noexcept { return host_; }
  const Engine& engine() const noexcept { return engine_; }

 private:
  using event = typename Engine::event;
  struct staged {
    bool full = false;
    checkpoint_id id = 0;
    event ready{};
  };

  int staged_index(checkpoint_id id) const noexcept {
    for (int b = 0; b < 2; ++b)
      if (staged_[b].full && staged_[b].id == id) return b;
    return -1;
  }
  //! Copies `e` toward device-side memory, into staging buffer `preferred` or else the other.
  void stage(typename detail::checkpoint_ledger<event>::entry& e, int preferred) {
    const int b = !staged_[preferred].full ? preferred : !staged_[1 - preferred].full ? 1 - preferred : -1;
    if (b < 0) return;
    staged_[b] = {true, e.id, engine_.to_device(staging_[b].data(), e.region.data, e.size)};
  }
  //! Both staging buffers hold the largest checkpoint; growing them drops what they hold.
  void reserve_staging(std::size_t bytes) {
    if (staging_[0].bytes() >= bytes) return;
    for (int b = 0; b < 2; ++b) {
      engine_.wait(staged_[b].ready);
      staged_[b].full = false;
      staging_[b] = {};
    }
    for (auto& s : staging_) s = detail::owned_buffer<std::byte>(bytes, options_.device);
  }

  HostStorage host_;
  Engine engine_;
  offloaded_options options_;
  detail::checkpoint_ledger<event> ledger_;
  detail::owned_buffer<std::byte> staging_[2];
  staged staged_[2];
  detail::memory_meter meter_;
  std::size_t prefetched_restores_ = 0, direct_restores_ = 0;
};

static_assert(measured_checkpointer<offloaded_checkpointer<>>);
static_assert(measured_checkpointer<offloaded_checkpointer<contiguous_arena>>);

}  // namespace zero
