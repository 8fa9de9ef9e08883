#pragma once
//! @file engine/staging_ring.hpp
//! The staging buffers and the collectives in flight on them.
//!
//! `layout.staging_buffers` (B) buffers of one reduction unit each, allocated once. Unit k of a
//! phase (the reductions of a micro-step, or the all-gather after the update) always uses
//! buffer k mod B. A buffer is free, being *filled* with a unit's gradients (copy on report),
//! or holds a unit's collective *in flight*; before a buffer is reused, its collective is
//! waited for and its result taken out (into the gradient shard or the framework's
//! parameters) by the caller's `take`. With B = 1, or a communicator without non-blocking
//! forms, every collective completes before the engine goes on.

#include <cstddef>
#include <utility>
#include <vector>

namespace zero::engine {

//! What a staging buffer holds.
enum class flight_kind : unsigned char {
  none,       //!< free
  filling,    //!< a unit being packed, its collective not yet started
  reduction,  //!< a unit's reduction in flight
  gather,     //!< a unit's all-gather (or broadcast) of updated parameters in flight
};

//! The ring of staging buffers. @tparam Buffer the backend's byte buffer; @tparam Request the
//! communicator's request type (a completed one for blocking communicators)
template <class Buffer, class Request>
class staging_ring {
 public:
  static constexpr std::size_t none = static_cast<std::size_t>(-1);

  staging_ring() = default;
  //! @param memory `buffers` buffers of `bytes` each, back to back
  staging_ring(Buffer memory, std::size_t buffers, std::size_t bytes)
      : memory_(std::move(memory)), bytes_(bytes), flights_(buffers) {}

  std::size_t buffers() const noexcept { return flights_.size(); }
  std::size_t buffer_bytes() const noexcept { return bytes_; }
  const Buffer& memory() const noexcept { return memory_; }

  //! The buffer unit k of a phase uses.
  std::size_t buffer_of(std::size_t unit) const noexcept { return unit % flights_.size(); }
  template <class T>
  T* data(std::size_t b) const noexcept {
    return reinterpret_cast<T*>(memory_.data() + b * bytes_);
  }

  flight_kind kind(std::size_t b) const noexcept { return flights_[b].kind; }
  std::size_t unit(std::size_t b) const noexcept { return flights_[b].unit; }
  //! Whether the result of buffer b's reduction was written straight into its destination.
  bool direct(std::size_t b) const noexcept { return flights_[b].direct; }

  //! Waits for buffer b's collective, if any, and lets `take(unit, kind, b)` take its result
  //! out; the buffer is free afterwards. @pre b is not being filled
  template <class Take>
  void complete(std::size_t b, Take&& take) {
    flight& f = flights_[b];
    if (f.kind == flight_kind::none || f.kind == flight_kind::filling) return;
    f.request.wait();
    const flight_kind k = f.kind;
    f.kind = flight_kind::none;
    take(f.unit, k, b);
    f.unit = none;
  }
  //! Completes every collective in flight, oldest first (units in order).
  template <class Take>
  void complete_all(Take&& take) {
    std::size_t oldest = 0;
    for (std::size_t b = 1; b < flights_.size(); ++b)
      if (flights_[b].kind != flight_kind::none && (flights_[oldest].kind == flight_kind::none || flights_[b].unit < flights_[oldest].unit))
        oldest = b;
    for (std::size_t i = 0; i < flights_.size(); ++i) complete((oldest + i) % flights_.size(), take);
  }

  //! Marks buffer b as being filled with unit `unit`. @pre free
  void fill(std::size_t b, std::size_t unit) noexcept {
    flights_[b].kind = flight_kind::filling;
    flights_[b].unit = unit;
  }
  //! Buffer b's collective for `unit` has run to completion: `take(unit, kind, b)` takes its
  //! result out (`direct(b)` answers for it) and the buffer is free afterwards.
  template <class Take>
  void finish(std::size_t b, std::size_t unit, flight_kind kind, bool direct, Take&& take) {
    flight& f = flights_[b];
    f.kind = flight_kind::none;
    f.unit = unit;
    f.direct = direct;
    take(unit, kind, b);
    f.unit = none;
  }
  //! Records that buffer b's collective for `unit` has started (`request` completes it).
  void start(std::size_t b, std::size_t unit, flight_kind kind, Request request, bool direct) {
    flight& f = flights_[b];
    f.request = std::move(request);
    f.unit = unit;
    f.kind = kind;
    f.direct = direct;
  }

 private:
  struct flight {
    Request request{};
    std::size_t unit = none;
    flight_kind kind = flight_kind::none;
    bool direct = false;
  };

  Buffer memory_{};
  std::size_t bytes_ = 0;
  std::vector<flight> flights_;
};

}  // namespace zero::engine
