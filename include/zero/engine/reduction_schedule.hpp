#pragma once
//! @file engine/reduction_schedule.hpp
//! When a reduction unit is reduced, and when a gradient is released.
//!
//! The schedule of one micro-step, on one rank. Parameters report their gradients (each
//! `reports` times per micro-step) in any order; units are *opened* (their staging buffer
//! packed with every contribution reported so far), then *launched* (their collective started),
//! strictly in unit order on every rank, so that all ranks issue the same collectives in the
//! same order whatever order their gradients arrive in. A unit is launched as soon as every
//! report it waits for is in and every unit before it has been launched. A parameter's
//! gradients are *released* (the engine will not read them again this micro-step) once all of
//! its reports are in and the last unit it touches has been opened. The schedule also records
//! the order parameters complete their reports (the arrival order a learned layout follows).
//!
//! Pure bookkeeping: no memory of the model, no collectives; the engine (`optimizer.hpp`) asks
//! it what to do next and does it.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "zero/partitioner.hpp"

namespace zero::engine {

//! The units and pieces of a plan, indexed for the engine: the pieces of each unit, the units
//! each parameter touches, and the last of them.
struct unit_index {
  std::vector<owned_piece> pieces;             //!< every piece of every parameter, grouped by unit
  std::vector<std::size_t> unit_pieces_begin;  //!< unit k's pieces: [begin[k], begin[k + 1])
  std::vector<std::size_t> param_units;        //!< the units each parameter touches, ascending
  std::vector<std::size_t> param_units_begin;  //!< parameter p's units: [begin[p], begin[p + 1])
  std::vector<std::size_t> last_unit_params;   //!< parameters grouped by the last unit they touch
  std::vector<std::size_t> last_unit_params_begin;
  std::vector<std::size_t> param_pieces;       //!< indices into `pieces` grouped by parameter, in unit order
  std::vector<std::size_t> param_pieces_begin;

  explicit unit_index(const partition_plan& plan = {}) {
    const std::size_t units = plan.units.size(), params = plan.param_size.size();
    pieces = plan.pieces();  // ordered by unit, rank, flat offset
    unit_pieces_begin.assign(units + 1, 0);
    for (const auto& piece : pieces) ++unit_pieces_begin[piece.unit + 1];
    for (std::size_t k = 0; k < units; ++k) unit_pieces_begin[k + 1] += unit_pieces_begin[k];
    std::vector<std::vector<std::size_t>> touched(params);
    for (const auto& piece : pieces) {
      auto& t = touched[piece.param];
      if (t.empty() || t.back() != piece.unit) t.push_back(piece.unit);
    }
    param_units_begin.assign(params + 1, 0);
    last_unit_params_begin.assign(units + 1, 0);
    for (std::size_t p = 0; p < params; ++p) {
      param_units_begin[p + 1] = param_units_begin[p] + touched[p].size();
      param_units.insert(param_units.end(), touched[p].begin(), touched[p].end());
      if (!touched[p].empty()) ++last_unit_params_begin[touched[p].back() + 1];
    }
    for (std::size_t k = 0; k < units; ++k) last_unit_params_begin[k + 1] += last_unit_params_begin[k];
    last_unit_params.assign(last_unit_params_begin[units], 0);
    std::vector<std::size_t> at(last_unit_params_begin.begin(), last_unit_params_begin.end() - 1);
    for (std::size_t p = 0; p < params; ++p)
      if (!touched[p].empty()) last_unit_params[at[touched[p].back()]++] = p;
    param_pieces_begin.assign(params + 1, 0);
    for (const auto& piece : pieces) ++param_pieces_begin[piece.param + 1];
    for (std::size_t p = 0; p < params; ++p) param_pieces_begin[p + 1] += param_pieces_begin[p];
    param_pieces.assign(pieces.size(), 0);
    std::vector<std::size_t> next(param_pieces_begin.begin(), param_pieces_begin.end() - 1);
    for (std::size_t i = 0; i < pieces.size(); ++i) param_pieces[next[pieces[i].param]++] = i;
  }

  std::span<const owned_piece> pieces_of_unit(std::size_t k) const noexcept {
    return std::span<const owned_piece>(pieces).subspan(unit_pieces_begin[k], unit_pieces_begin[k + 1] - unit_pieces_begin[k]);
  }
  std::span<const std::size_t> units_of(std::size_t p) const noexcept {
    return std::span<const std::size_t>(param_units).subspan(param_units_begin[p], param_units_begin[p + 1] - param_units_begin[p]);
  }
  //! Indices into `pieces` of parameter p's pieces, in unit order.
  std::span<const std::size_t> pieces_of(std::size_t p) const noexcept {
    return std::span<const std::size_t>(param_pieces).subspan(param_pieces_begin[p], param_pieces_begin[p + 1] - param_pieces_begin[p]);
  }
  std::span<const std::size_t> params_ending_in(std::size_t k) const noexcept {
    return std::span<const std::size_t>(last_unit_params)
        .subspan(last_unit_params_begin[k], last_unit_params_begin[k + 1] - last_unit_params_begin[k]);
  }
};

//! One rank's reports, units and releases in the current micro-step (see the file comment).
class reduction_schedule {
 public:
  static constexpr std::size_t none = static_cast<std::size_t>(-1);

  reduction_schedule() = default;
  //! @param expected_reports each parameter's reports per micro-step (>= 1)
  reduction_schedule(const unit_index& index, std::span<const std::uint32_t> expected_reports)
      : index_(&index), expected_(expected_reports.begin(), expected_reports.end()) {
    const std::size_t units = index.unit_pieces_begin.size() - 1;
    waits_.assign(units, 0);
    for (std::size_t p = 0; p < expected_.size(); ++p)
      for (std::size_t k : index.units_of(p)) waits_[k] += expected_[p];
    reports_.assign(expected_.size(), 0);
    released_.assign(expected_.size(), 0);
    arrivals_.reserve(expected_.size());
    start_micro_step();
  }

  std::size_t units() const noexcept { return waits_.size(); }
  std::size_t parameters() const noexcept { return expected_.size(); }

  // ---- reports -------------------------------------------------------------------------------

  //! Whether parameter p may be reported once more this micro-step.
  bool accepts_report(std::size_t p) const noexcept { return reports_[p] < expected_[p]; }
  std::uint32_t reports(std::size_t p) const noexcept { return reports_[p]; }
  std::uint32_t expected_reports(std::size_t p) const noexcept { return expected_[p]; }
  bool all_reported(std::size_t p) const noexcept { return reports_[p] == expected_[p]; }

  //! Counts a report of p against every unit p touches. @pre accepts_report(p)
  void note_report(std::size_t p) {
    ++reports_[p];
    for (std::size_t k : index_->units_of(p)) --pending_[k];
    if (all_reported(p)) arrivals_.push_back(p);
  }

  //! Parameters in the order their last report came, this micro-step.
  std::span<const std::size_t> arrivals() const noexcept { return arrivals_; }

  // ---- units ---------------------------------------------------------------------------------

  //! The first unit not yet launched (all units before it are launched).
  std::size_t next_unit() const noexcept { return next_; }
  //! Units [0, opened_end()) have been opened (packed); opened_end() >= next_unit().
  std::size_t opened_end() const noexcept { return opened_; }
  //! Whether every report unit k waits for is in.
  bool complete(std::size_t k) const noexcept { return pending_[k] == 0; }
  //! Whether the next unit may be launched now (it is complete).
  bool next_ready() const noexcept { return next_ < waits_.size() && pending_[next_] == 0; }

  //! Marks unit opened_end() opened; the parameters that this releases are appended to `released`.
  void note_opened(std::vector<std::size_t>& released) {
    const std::size_t k = opened_++;
    for (std::size_t p : index_->params_ending_in(k))
      if (all_reported(p)) release(p, released);
  }
  //! Marks unit next_unit() launched. @pre it has been opened
  void note_launched() noexcept { ++next_; }

  // ---- releases ------------------------------------------------------------------------------

  //! Whether p's reported gradients will not be read again this micro-step.
  bool released(std::size_t p) const noexcept { return released_[p] != 0; }
  //! Releases p if all its reports are in and its last unit has been opened (a report that
  //! completes after that point: its data was taken in during the report).
  void release_if_consumed(std::size_t p, std::vector<std::size_t>& released) {
    if (released_[p] != 0 || !all_reported(p)) return;
    const auto units = index_->units_of(p);
    if (units.empty() || units.back() < opened_) release(p, released);
  }
  //! Releases p now (its gradients were read during its report: local accumulation).
  void release_now(std::size_t p, std::vector<std::size_t>& released) { release(p, released); }
  //! At the end of the micro-step: every parameter reported at least once is released.
  void release_all_reported(std::vector<std::size_t>& released) {
    for (std::size_t p = 0; p < reports_.size(); ++p)
      if (reports_[p] != 0 && released_[p] == 0) release(p, released);
  }

  //! Forgets the micro-step: every parameter may be reported again.
  void start_micro_step() {
    pending_ = waits_;
    std::fill(reports_.begin(), reports_.end(), 0u);
    std::fill(released_.begin(), released_.end(), std::uint8_t{0});
    arrivals_.clear();
    next_ = opened_ = 0;
  }

 private:
  void release(std::size_t p, std::vector<std::size_t>& released) {
    released_[p] = 1;
    released.push_back(p);
  }

  const unit_index* index_ = nullptr;
  std::vector<std::uint32_t> expected_;
  std::vector<std::uint32_t> waits_;    // reports each unit waits for
  std::vector<std::uint32_t> pending_;  // of which not yet in, this micro-step
  std::vector<std::uint32_t> reports_;
  std::vector<std::uint8_t> released_;
  std::vector<std::size_t> arrivals_;
  std::size_t next_ = 0, opened_ = 0;
};

}  // namespace zero::engine
