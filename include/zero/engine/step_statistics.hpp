#pragma once
//! @file engine/step_statistics.hpp
//! The step's numbers, as a pure function of the words the ranks exchange.
//!
//! Each rank contributes `statistics_words` 64-bit words to one all-gather per step: the sum of
//! squares of its (summed, scaled) gradients, whether and where it first saw a non-finite
//! gradient, its micro-step count, and a digest of its hyperparameters (every group's), so that a
//! rank whose schedule set other values is found at no extra collective. From every rank's words each rank computes the same
//! gradient norm, overflow decision and clip factor: the inputs are the same words on every
//! rank and the arithmetic is the same, so every field of the decision is bitwise equal on
//! every rank.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "zero/error.hpp"

namespace zero::engine {

//! 64-bit words each rank contributes to the statistics all-gather.
inline constexpr std::size_t statistics_words = 5;

//! What one rank found this step.
struct local_statistics {
  static constexpr std::size_t none = static_cast<std::size_t>(-1);
  double sum_of_squares = 0;              //!< of this rank's gradients (the shard; stage 0: all of them)
  std::size_t first_nonfinite = none;     //!< the first parameter with a non-finite gradient, or none
  std::uint32_t micro_steps = 1;
  std::uint64_t hyperparameters = 0;      //!< a digest of every group's hyperparameters

  void encode(std::uint64_t* words) const noexcept {
    words[0] = std::bit_cast<std::uint64_t>(sum_of_squares);
    words[1] = first_nonfinite != none ? 1u : 0u;
    words[2] = first_nonfinite;
    words[3] = micro_steps;
    words[4] = hyperparameters;
  }
};

//! The lowest rank whose hyperparameter digest differs from rank 0's, or -1 when all agree.
inline int hyperparameters_differ(std::span<const std::uint64_t> words, int world_size) noexcept {
  for (int r = 1; r < world_size; ++r)
    if (words[statistics_words * static_cast<std::size_t>(r) + 4] != words[4]) return r;
  return -1;
}

//! How the ranks' gradients are combined this step.
struct statistics_inputs {
  int world_size = 1;
  int rank = 0;
  //! Whether each rank's sum covers only its shard (stages 1, 2: the total adds every rank's),
  //! or all the gradients (stage 0: every rank holds the same reduced gradients, and every rank
  //! takes rank 0's sum, so that the norm does not depend on how each rank split its sum).
  bool sharded = true;
  double loss_scale = 1;
  //! What the reduction already divided the gradients by (DeepSpeed's gradient_predivide_factor).
  double predivide_factor = 1;
  std::uint32_t micro_steps = 1;
  double max_grad_norm = 0;  //!< <= 0: no clipping
  bool skip_nonfinite = false;
};

//! What every rank decides from the exchanged words.
struct step_decision {
  double grad_norm = 0;       //!< of the averaged, unscaled gradient, before clipping
  double clip_factor = 1;
  bool skipped = false;
  int nonfinite_rank = -1;    //!< lowest rank that saw a non-finite gradient
  std::size_t nonfinite_parameter = local_statistics::none;
  //! What the reduced gradient sums are multiplied by: the average over ranks and micro-steps,
  //! the unscaling (and the predivision undone), not yet the clip factor.
  double inverse_average = 1;
};

//! The factor that turns the reduced sums into the average unscaled gradient.
inline double inverse_average(const statistics_inputs& in) noexcept {
  return in.predivide_factor / (static_cast<double>(in.world_size) * in.loss_scale * static_cast<double>(in.micro_steps));
}

//! The decision from every rank's words (`world_size * statistics_words`, in rank order).
//! @throws mismatch_error when a rank ran a different number of micro-steps, naming it
inline step_decision decide(std::span<const std::uint64_t> words, const statistics_inputs& in) {
  step_decision d;
  double total = 0;
  for (int r = 0; r < in.world_size; ++r) {
    const std::uint64_t* theirs = words.data() + statistics_words * static_cast<std::size_t>(r);
    if (theirs[3] != in.micro_steps)
      throw mismatch_error("zero: rank " + std::to_string(r) + " ran " + std::to_string(theirs[3]) +
                           " micro-steps this step; rank " + std::to_string(in.rank) + " ran " + std::to_string(in.micro_steps));
    if (theirs[1] != 0 && d.nonfinite_rank < 0) {
      d.nonfinite_rank = r;
      d.nonfinite_parameter = static_cast<std::size_t>(theirs[2]);
    }
    if (in.sharded || r == 0) total += std::bit_cast<double>(theirs[0]);
  }
  d.inverse_average = inverse_average(in);
  d.grad_norm = std::sqrt(total) * d.inverse_average;
  const bool overflow = d.nonfinite_rank >= 0 || !std::isfinite(d.grad_norm);
  d.skipped = overflow && in.skip_nonfinite;
  if (in.max_grad_norm > 0) d.clip_factor = std::min(1.0, in.max_grad_norm / (d.grad_norm + 1e-6));
  return d;
}

}  // namespace zero::engine
