#pragma once
//! @file plan.hpp
//! The memory planner: the per-rank bytes of a ZeRO configuration chosen at run time (a
//! precision and an optimizer named by value, as a command line names them), and the largest
//! model that fits a per-device budget. `zero-plan` (tools/) is this header on a command line.
//!
//! The engine's part is `expected_memory` itself, reached through a small dispatch from the
//! run-time choices to the compile-time precision bundles and rules: the planner cannot
//! disagree with the engine (tests/plan shows it equal to `optimizer::memory()`). On top of it
//! the planner counts the framework's parameters, which ZeRO-2 leaves whole on every rank.
//! Stage 3 partitions them too.
//!
//! The kinds, per rank, for Ψ parameters over N ranks (Ψ_p: Ψ padded to a multiple of
//! alignment x N):
//! * `parameters`: the framework's model-precision parameters, Ψ x sizeof(Param), on every rank;
//!   in stage 3 the engine's shard of them, Ψ_p / N x sizeof(Param), their only copy.
//! * `gradients`: the gradients the engine holds for the update, in the accumulation type: the
//!   whole padded buffer in stages 0 and 1 (and stage 2 with deferred reduction), one shard
//!   Ψ_p / N in stage 2; plus the gradient slots (Ψ x sizeof(Grad)) when the framework writes
//!   its gradients into engine-owned slots.
//! * `master_weights`: the fp32 copy of the elements this rank updates (Ψ, or Ψ_p / N when
//!   sharded); 0 without master weights.
//! * `optimizer_state`: the rule's state slots for those elements (K slots of 4 bytes each).
//! * `buffers`: the engine's model-precision shard that the all-gather sends (stages 1, 2) and
//!   its constant-size reduction buckets; in stage 3 the buckets and the gather buffers that
//!   hold the parameter groups the framework computes with (`layout.gather_buffers` x
//!   `layout.gather_buffer_elements` x sizeof(Param)).
//! * `framework_gradients`: the most gradient bytes the framework itself must hold at once
//!   (stage 2 reading spans: one reduction unit plus the largest parameter's gradient, as
//!   `memory_report::framework_gradients`; 0 where the engine reads every span at once).
//! `model_states_bytes()` is parameters + gradients + framework gradients + master weights +
//! optimizer state (the ZeRO paper's "model states"); `total()` adds the buffers. Not counted:
//! activations, the framework's temporaries and the allocator's overhead.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <type_traits>

#include "zero/activation_checkpointer.hpp"
#include "zero/memory.hpp"
#include "zero/offloaded_checkpointer.hpp"
#include "zero/partitioned_checkpointer.hpp"
#include "zero/thread_communicator.hpp"
#include "zero/precision.hpp"
#include "zero/update_rule.hpp"

namespace zero {

//! A precision bundle named at run time.
enum class precision_kind : std::uint8_t {
  fp32,             //!< `fp32_precision`: fp32 everywhere, no separate master copy
  bf16,             //!< `bf16_mixed`: bf16 params and gradients, fp32 master, state, accumulation, reduction
  fp16,             //!< `fp16_mixed`: fp16 params and gradients, fp32 master, state, accumulation, reduction
  bf16_bf16_comm,   //!< `bf16_mixed_bf16_comm`: as bf16, gradients reduced in bf16
  bf16_bf16_accum,  //!< `bf16_mixed_bf16_accum`: as bf16, gradients accumulated in bf16
  bf16_pure,        //!< `bf16_pure`: bf16 params, no master copy
};
inline constexpr precision_kind precision_kinds[] = {precision_kind::fp32,           precision_kind::bf16,
                                                     precision_kind::fp16,           precision_kind::bf16_bf16_comm,
                                                     precision_kind::bf16_bf16_accum, precision_kind::bf16_pure};

//! An update rule (with the hyperparameters that change its state) named at run time.
enum class optimizer_kind : std::uint8_t {
  adam,           //!< `adam`: 2 state slots (m, v)
  adamw,          //!< `adamw`: 2 state slots (m, v)
  adam_amsgrad,   //!< `adam` or `adamw` with amsgrad: 3 state slots (m, v, v_max)
  sgd,            //!< `sgd` without momentum: no state
  sgd_momentum,   //!< `sgd` with momentum: 1 state slot
  lion,           //!< `lion`: 1 state slot
  adagrad,        //!< `adagrad`: 1 state slot
  lamb,           //!< `lamb`: 2 state slots
};
inline constexpr optimizer_kind optimizer_kinds[] = {
    optimizer_kind::adam, optimizer_kind::adamw,   optimizer_kind::adam_amsgrad, optimizer_kind::sgd,
    optimizer_kind::sgd_momentum, optimizer_kind::lion, optimizer_kind::adagrad, optimizer_kind::lamb};

//! A shipped partitioner named at run time.
enum class partitioner_kind : std::uint8_t {
  contiguous,  //!< `contiguous_partitioner` (DeepSpeed's layout)
  bucketed,    //!< `bucketed_partitioner` (Megatron's layout)
};

//! The name `zero-plan` uses: "contiguous", "bucketed".
constexpr std::string_view to_string(partitioner_kind p) noexcept { return p == partitioner_kind::bucketed ? "bucketed" : "contiguous"; }
//! The partitioner named `name`, or none.
constexpr std::optional<partitioner_kind> partitioner_from_string(std::string_view name) noexcept {
  if (name == "contiguous") return partitioner_kind::contiguous;
  if (name == "bucketed") return partitioner_kind::bucketed;
  return std::nullopt;
}

//! The name `zero-plan` uses: "fp32", "bf16", "fp16", "bf16-comm", "bf16-accum", "bf16-pure".
constexpr std::string_view to_string(precision_kind p) noexcept {
  constexpr std::string_view names[] = {"fp32", "bf16", "fp16", "bf16-comm", "bf16-accum", "bf16-pure"};
  return names[static_cast<std::size_t>(p)];
}
//! The name `zero-plan` uses: "adam", "adamw", "adam-amsgrad", "sgd", "sgd-momentum", "lion",
//! "adagrad", "lamb".
constexpr std::string_view to_string(optimizer_kind o) noexcept {
  constexpr std::string_view names[] = {"adam", "adamw", "adam-amsgrad", "sgd", "sgd-momentum", "lion", "adagrad", "lamb"};
  return names[static_cast<std::size_t>(o)];
}
//! The precision named `name` (as `to_string` writes it), or none.
constexpr std::optional<precision_kind> precision_from_string(std::string_view name) noexcept {
  for (auto p : precision_kinds)
    if (to_string(p) == name) return p;
  return std::nullopt;
}
//! The optimizer named `name` (as `to_string` writes it), or none.
constexpr std::optional<optimizer_kind> optimizer_from_string(std::string_view name) noexcept {
  for (auto o : optimizer_kinds)
    if (to_string(o) == name) return o;
  return std::nullopt;
}

//! Calls `f(std::type_identity<Bundle>{})` with the precision bundle `p` names.
template <class F>
constexpr decltype(auto) visit_precision(precision_kind p, F&& f) {
  switch (p) {
    case precision_kind::fp32: return f(std::type_identity<fp32_precision>{});
    case precision_kind::fp16: return f(std::type_identity<fp16_mixed>{});
    case precision_kind::bf16_bf16_comm: return f(std::type_identity<bf16_mixed_bf16_comm>{});
    case precision_kind::bf16_bf16_accum: return f(std::type_identity<bf16_mixed_bf16_accum>{});
    case precision_kind::bf16_pure: return f(std::type_identity<bf16_pure>{});
    case precision_kind::bf16: break;
  }
  return f(std::type_identity<bf16_mixed>{});
}

//! The state slots per element of the rule `o` names: the rule's own `state_count`.
constexpr std::size_t state_count(optimizer_kind o) noexcept {
  switch (o) {
    case optimizer_kind::adam: return adam::state_count({});
    case optimizer_kind::adamw: return adamw::state_count({});
    case optimizer_kind::adam_amsgrad: {
      adam::hyperparameters h;
      h.amsgrad = true;
      return adam::state_count(h);
    }
    case optimizer_kind::sgd: return sgd::state_count({});
    case optimizer_kind::sgd_momentum: {
      sgd::hyperparameters h;
      h.momentum = 0.9;
      return sgd::state_count(h);
    }
    case optimizer_kind::lion: return lion::state_count({});
    case optimizer_kind::adagrad: return adagrad::state_count({});
    case optimizer_kind::lamb: break;
  }
  return lamb::state_count({});
}

//! Per-rank bytes of one configuration, by the kinds of the file comment.
struct memory_plan {
  std::size_t parameters = 0;       //!< the model-precision parameters: whole on every rank, a shard in stage 3
  std::size_t gradients = 0;        //!< the engine's gradients and gradient slots
  std::size_t master_weights = 0;   //!< the engine's master weights
  std::size_t optimizer_state = 0;  //!< the engine's optimizer state
  std::size_t buffers = 0;          //!< the engine's parameter shard (stages 1, 2) and its buckets (and gather buffers)
  std::size_t framework_gradients = 0;  //!< the framework's own gradients at their peak (see the file comment)
  memory_report engine;             //!< what the engine's `memory()` reports (`expected_memory`)

  //! Parameters + gradients (the engine's and the framework's) + master weights + optimizer
  //! state (without the buffers).
  constexpr std::size_t model_states_bytes() const noexcept {
    return parameters + gradients + framework_gradients + master_weights + optimizer_state;
  }
  //! Everything counted: the model states and the buffers.
  constexpr std::size_t total() const noexcept { return model_states_bytes() + buffers; }
  friend constexpr bool operator==(const memory_plan&, const memory_plan&) = default;
};

//! The per-rank bytes of `param_count` parameters trained over `world_size` ranks with ZeRO
//! stage `s`, precision `p` and optimizer `o`, the engine laid out by `layout` with
//! `Partitioner`; `largest_parameter` (elements times reports; 0: not counted) enters the
//! framework's gradient peak. @pre world_size >= 1; param_count small enough that its bytes fit
//! in std::size_t (below 2^58 parameters always does).
template <precision_bundle P, class Partitioner = contiguous_partitioner>
constexpr memory_plan plan_memory(std::size_t param_count, int world_size, stage s, std::size_t state_slots,
                                  const layout_options& layout = {}, std::size_t largest_parameter = 0) noexcept {
  memory_plan plan;
  plan.engine = expected_memory<P, Partitioner>(param_count, world_size, s, state_slots, layout, largest_parameter);
  plan.framework_gradients = plan.engine.framework_gradients;
  const std::size_t shard = plan.engine.of(memory_kind::parameter_shard);
  const bool partitioned = s == stage::stage3;  // the shard is the parameters' only copy
  plan.parameters = partitioned ? shard : param_count * sizeof(typename P::param_type);
  plan.gradients = plan.engine.of(memory_kind::gradients) + plan.engine.of(memory_kind::gradient_slots);
  plan.master_weights = plan.engine.of(memory_kind::master_weights);
  plan.optimizer_state = plan.engine.of(memory_kind::optimizer_state);
  plan.buffers = (partitioned ? 0 : shard) + plan.engine.of(memory_kind::buckets);
  return plan;
}

//! `plan_memory` for a precision, an optimizer and a partitioner named at run time.
constexpr memory_plan plan_memory(std::size_t param_count, int world_size, stage s, precision_kind p, optimizer_kind o,
                                  const layout_options& layout = {}, partitioner_kind partitioner = partitioner_kind::contiguous,
                                  std::size_t largest_parameter = 0) noexcept {
  return visit_precision(p, [&]<class P>(std::type_identity<P>) {
    if (partitioner == partitioner_kind::bucketed)
      return plan_memory<P, bucketed_partitioner>(param_count, world_size, s, state_count(o), layout, largest_parameter);
    return plan_memory<P, contiguous_partitioner>(param_count, world_size, s, state_count(o), layout, largest_parameter);
  });
}

//! The most parameters `largest_fitting` answers: 2^58, whose bytes of any kind fit in a size_t.
inline constexpr std::size_t max_planned_parameters = std::size_t{1} << 58;

//! The largest parameter count whose `plan_memory(...).total()` is at most `budget_bytes` per
//! rank (0 when not even one parameter fits), at most `max_planned_parameters` (which stage 3
//! over many ranks can reach: then more may fit). The total never decreases as the
//! count grows, so a binary search finds it. @pre world_size >= 1; budget_bytes < 2^56 (64 PiB).
constexpr std::size_t largest_fitting(std::size_t budget_bytes, int world_size, stage s, precision_kind p,
                                      optimizer_kind o, const layout_options& layout = {},
                                      partitioner_kind partitioner = partitioner_kind::contiguous,
                                      std::size_t largest_parameter = 0) noexcept {
  auto fits = [&](std::size_t count) {
    return plan_memory(count, world_size, s, p, o, layout, partitioner, largest_parameter).total() <= budget_bytes;
  };
  // every parameter costs at least its own 2 bytes on every rank (stages 0 to 2), or on one
  // rank of the world (stage 3): hi never fits
  constexpr std::size_t most = max_planned_parameters;
  const std::size_t per_rank = budget_bytes / 2 + 1, ranks = static_cast<std::size_t>(world_size);
  std::size_t lo = 0, hi = s != stage::stage3 ? per_rank : (per_rank > most / ranks ? most : per_rank * ranks);
  if (!fits(1)) return 0;
  if (fits(hi)) return hi;  // (stage 3 over many ranks: the count is capped)
  lo = 1;
  while (hi - lo > 1) {
    const std::size_t mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo;
}

//! Activation checkpoint bytes per rank under each shipped policy (`expected_checkpoint_memory`),
//! for `layers` checkpoints of `bytes_per_layer` bytes each (one per layer's input, as ZeRO-R
//! checkpoints a transformer) and a model-parallel group of `model_parallel` ranks, across which
//! the partitioned policies split each checkpoint.
struct activation_plan {
  checkpoint_memory plain;                  //!< a copy of each checkpoint, device-side
  checkpoint_memory contiguous;             //!< the same in one arena (ZeRO-R's MD): each slot rounded up to 64 bytes
  checkpoint_memory partitioned;            //!< P_a: 1/M of each, plus the gather buffer
  checkpoint_memory offloaded;              //!< every checkpoint in host memory, two staging buffers device-side
  checkpoint_memory partitioned_offloaded;  //!< P_a+cpu: 1/M of each in host memory, staging and gather device-side
  friend bool operator==(const activation_plan&, const activation_plan&) = default;
};

//! `activation_plan` of `layers` checkpoints of `bytes_per_layer` over `model_parallel` ranks.
//! @pre model_parallel >= 1
inline activation_plan plan_activations(std::size_t bytes_per_layer, std::size_t layers, int model_parallel) {
  using comm = thread_communicator;  // the type only: the expectations do not communicate
  const checkpoint_plan plan = checkpoint_plan::uniform(layers, bytes_per_layer);
  return {expected_checkpoint_memory<plain_checkpointer<>>(plan, model_parallel),
          expected_checkpoint_memory<contiguous_checkpointer>(plan, model_parallel),
          expected_checkpoint_memory<partitioned_checkpointer<comm>>(plan, model_parallel),
          expected_checkpoint_memory<offloaded_checkpointer<>>(plan, model_parallel),
          expected_checkpoint_memory<partitioned_checkpointer<comm, offloaded_checkpointer<>>>(plan, model_parallel)};
}

}  // namespace zero
