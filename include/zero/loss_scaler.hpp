#pragma once
//! @file loss_scaler.hpp
//! Loss scaling for fp16 training, with DeepSpeed's knobs and semantics: the framework
//! multiplies its loss by `scale()` before backward; the engine divides the gradients by it (in
//! the one unscale-and-clip factor of the update) and tells the scaler whether the step
//! overflowed.
//!
//! Dynamic scaling starts at 2^initial_scale_power. An overflow first uses up the hysteresis
//! (`hysteresis` - 1 overflows are tolerated without a change), then halves the scale (never below
//! `min_scale`); an overflow while the scale already is at its minimum raises
//! `loss_scale_error`. After `window` steps since the last overflow the scale doubles and the
//! hysteresis is restored.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "zero/error.hpp"

namespace zero {

//! An overflow happened while the loss scale already was at its minimum.
class loss_scale_error : public error {
 public:
  using error::error;
};

struct loss_scale_options {
  enum class mode : std::uint8_t {
    automatic,  //!< dynamic when the parameters are fp16, none otherwise
    dynamic,    //!< DeepSpeed's dynamic loss scaler
    fixed,      //!< always `fixed_scale`; overflowing steps are skipped, the scale stays
    none,       //!< scale 1
  };
  mode kind = mode::automatic;
  double fixed_scale = 1.0;
  int initial_scale_power = 16;
  std::uint32_t window = 1000;   //!< clean steps before the scale doubles
  std::uint32_t hysteresis = 2;  //!< overflows it takes to halve the scale (DeepSpeed's delayed_shift)
  double min_scale = 1.0;
};

//! Dynamic, fixed or no loss scaling, chosen at run time.
class loss_scaler {
 public:
  //! The serializable state of a scaler (for checkpoints).
  struct state {
    double scale = 1.0;
    std::uint32_t hysteresis_left = 0;
    std::uint64_t iteration = 0;
    std::int64_t last_overflow = -1;
  };

  loss_scaler() = default;
  //! @param fp16 whether the parameters are fp16 (what `mode::automatic` decides on)
  loss_scaler(const loss_scale_options& options, bool fp16) : options_(options) {
    using mode = loss_scale_options::mode;
    if (options_.kind == mode::automatic) options_.kind = fp16 ? mode::dynamic : mode::none;
    if (options_.kind == mode::fixed && !(options_.fixed_scale > 0 && std::isfinite(options_.fixed_scale)))
      throw usage_error("zero: fixed loss scale " + std::to_string(options_.fixed_scale) + " must be positive and finite");
    if (options_.kind == mode::dynamic) {
      if (options_.initial_scale_power < 0 || options_.initial_scale_power > 126)
        throw usage_error("zero: loss scale initial_scale_power " + std::to_string(options_.initial_scale_power) +
                          " must be in [0, 126]");
      if (options_.window < 1) throw usage_error("zero: loss scale window must be >= 1");
      if (options_.hysteresis < 1) throw usage_error("zero: loss scale hysteresis must be >= 1");
      if (!(options_.min_scale > 0)) throw usage_error("zero: min_scale must be positive");
    }
    state_.scale = options_.kind == mode::dynamic ? std::ldexp(1.0, options_.initial_scale_power)
                   : options_.kind == mode::fixed ? options_.fixed_scale
                                                  : 1.0;
    if (options_.kind == mode::dynamic) state_.scale = std::max(state_.scale, options_.min_scale);
    state_.hysteresis_left = options_.hysteresis;
  }

  double scale() const noexcept { return state_.scale; }
  bool dynamic() const noexcept { return options_.kind == loss_scale_options::mode::dynamic; }
  bool active() const noexcept { return options_.kind != loss_scale_options::mode::none; }
  const loss_scale_options& options() const noexcept { return options_; }
  const state& current() const noexcept { return state_; }
  void restore(const state& s) noexcept { state_ = s; }

  //! Records the outcome of one step (skipped or not).
  //! @throws loss_scale_error on an overflow at the minimum scale (the state is left as it was).
  void update(bool overflow) {
    if (!dynamic()) return;
    if (overflow) {
      if (state_.hysteresis_left <= 1) {
        if (state_.scale <= options_.min_scale)
          throw loss_scale_error("zero: gradients overflowed at the minimum loss scale " + std::to_string(options_.min_scale) +
                                 "; training cannot continue (lower the learning rate, check the data, or lower "
                                 "min_scale)");
        state_.scale = std::max(state_.scale / 2, options_.min_scale);
      } else {
        --state_.hysteresis_left;
      }
      state_.last_overflow = static_cast<std::int64_t>(state_.iteration);
    } else if ((static_cast<std::int64_t>(state_.iteration) - state_.last_overflow) % options_.window == 0) {
      state_.hysteresis_left = options_.hysteresis;
      state_.scale *= 2;
    }
    ++state_.iteration;
  }

 private:
  loss_scale_options options_{loss_scale_options::mode::none};
  state state_{};
};

}  // namespace zero
