#pragma once
//! @file optimizer.hpp
//! `zero::optimizer`: the four policies composed into one ZeRO engine.
//!
//! One step (see docs/design.md):
//!  1. The framework reports each parameter's gradient (`gradient_ready`), in any order, over
//!     one or more micro-steps (`end_micro_step()` between them). Stages 0 and 1 add it into a
//!     full accumulation buffer at once. Stage 2 reduces the gradients unit by unit (constant
//!     size, in unit order on every rank) as soon as every gradient of the next unit is in, keeps
//!     only its own shard, and tells the framework which gradients it will not read again.
//!  2. `step()` reduces what is left (a parameter never reported counts as zero; under
//!     `unreported_gradients::skip` the ranks first agree which parameters anyone reported,
//!     and the others are left untouched, as torch.optim leaves a parameter whose grad is None), exchanges
//!     each rank's sum of squares and overflow findings (one small all-gather), skips the step
//!     on every rank together if any gradient was not finite, or else updates this rank's shard
//!     of master weights and optimizer state with the averaged, unscaled and clipped gradients
//!     (one factor), writes the new model-precision values, and all-gathers them into every
//!     rank's parameters.
//!
//! The jobs, one header each (`zero/engine/`):
//!  * `registration.hpp`: what a rank checks of its own parameters and layout options;
//!  * `rank_agreement.hpp`: the ranks agree on their input and layout at construction, and on a
//!    learned layout order;
//!  * `reduction_schedule.hpp`: which unit is reduced next, the arrival order, and when a
//!    gradient is released;
//!  * `gradient_records.hpp`: where the reported gradients are until they are taken in;
//!  * `staging_ring.hpp`: the staging buffers and the collectives in flight on them;
//!  * `unit_collectives.hpp`: which collective reduces (and gathers) each unit;
//!  * `step_statistics.hpp`: norm, overflow and clip factor from the exchanged words.
//! This file composes them: the framework's calls, packing units, the update, the all-gather.

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory_resource>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "zero/activation_checkpointer.hpp"
#include "zero/backend.hpp"
#include "zero/communicator.hpp"
#include "zero/engine/gradient_records.hpp"
#include "zero/engine/rank_agreement.hpp"
#include "zero/engine/reduction_schedule.hpp"
#include "zero/engine/registration.hpp"
#include "zero/engine/staging_ring.hpp"
#include "zero/engine/step_statistics.hpp"
#include "zero/engine/unit_collectives.hpp"
#include "zero/error.hpp"
#include "zero/loss_scaler.hpp"
#include "zero/memory.hpp"
#include "zero/partitioner.hpp"
#include "zero/policy_checks.hpp"
#include "zero/precision.hpp"
#include "zero/thread_communicator.hpp"
#include "zero/types.hpp"
#include "zero/update_rule.hpp"

namespace zero {

//! A parameter the framework registers: its values (model precision, framework-owned).
template <class T>
struct parameter {
  std::string name;           //!< used in messages; empty means "#index"
  //! @pre non-empty, not overlapping another parameter; non-null, but at stage 3, where null
  //! registers the size alone (the values start at 0: `optimizer::initialize_parameters`)
  raw_span<T> values;
  std::uint32_t reports = 1;  //!< gradient reports per micro-step: the uses of a shared weight (>= 1)
  //! The parameter group whose hyperparameters update it (`optimizer_options::add_group`; 0:
  //! the first group, `optimizer_options::hyperparameters`).
  std::uint32_t group = 0;
  //! Stage 3: the gather group it belongs to (a layer, a block), gathered and released together
  //! (`optimizer::gather`); groups are numbered 0, 1, ... with none empty. Ignored by stages 0-2.
  std::uint32_t gather_group = 0;
};

//! What to do when a gradient is not finite (inf or NaN) on some rank.
enum class nonfinite_policy : std::uint8_t {
  automatic,  //!< skip the step when the loss is scaled (fp16), propagate otherwise
  skip_step,  //!< every rank skips the step together; nothing changes but the loss scale
  propagate,  //!< no check: the update sees the values (as plain data parallelism would)
};

//! How the new model-precision values are rounded when there are no master weights.
enum class rounding : std::uint8_t {
  nearest_even,  //!< round to nearest, ties to even
  stochastic,    //!< bf16 without master weights: round up with probability of the remainder
};

//! What a step does with a parameter no rank reported a gradient for in any of its micro-steps
//! (`gradient_unused` is not a report).
enum class unreported_gradients : std::uint8_t {
  //! DeepSpeed's behaviour: it counts as a zero gradient. The update runs on it (weight decay,
  //! momentum and moment decay), and every parameter's step count is the optimizer's.
  zero,
  //! torch.optim's behaviour for a parameter whose `grad` is None: its values, master weights and
  //! optimizer state are untouched by the step (no weight decay either), and it keeps its own
  //! count of the updates it received (torch's per-parameter `state['step']`), which its bias
  //! corrections, Adagrad's lr_decay and SGD's first momentum step (buf = g) use. A parameter
  //! counts as reported when any rank reported it in any micro-step of the step: the ranks
  //! exchange a bitmap of their reports at `step()` (one all-gather of a word per 64
  //! parameters), so every rank skips the same parameters.
  skip,
};

//! Run-time options of the engine.
template <update_rule Rule>
struct optimizer_options {
  using hyperparameters_type = typename Rule::hyperparameters;
  //! The hyperparameters of parameter group 0: every parameter's unless it names another group.
  hyperparameters_type hyperparameters{};
  //! The hyperparameters of parameter groups 1, 2, ... (`torch.optim`'s param_groups after the
  //! first): group g has `extra_groups[g - 1]`. `add_group` appends one.
  std::vector<hyperparameters_type> extra_groups{};
  layout_options layout{};
  double max_grad_norm = 0;  //!< clip the global gradient norm to this (PyTorch's rule); <= 0: no clipping
  loss_scale_options loss_scale{};
  nonfinite_policy on_nonfinite = nonfinite_policy::automatic;
  rounding value_rounding = rounding::nearest_even;
  std::uint64_t seed = 0;  //!< seeds stochastic rounding
  //! DeepSpeed's `gradient_predivide_factor`: each rank's gradients are divided by this before
  //! the reduction sums them, and the sum by world size / factor after it, so that 16-bit
  //! reductions do not overflow where the average fits (> 0; 1: the whole average after).
  double gradient_predivide_factor = 1;
  //! What a parameter no rank reported in a step gets: a zero gradient (DeepSpeed, the default)
  //! or no update at all (torch.optim's `grad is None`). Every rank sets the same.
  unreported_gradients unreported = unreported_gradients::zero;
  //! Called on the rank's thread, from inside `gradient_ready`, `end_micro_step` or `step`, with
  //! the indices of the parameters whose reported gradients the engine will not read again this
  //! micro-step (see `optimizer::gradient_released`); the framework may then free or reuse that
  //! memory (on a device engine, after its stream waits for `optimizer::release_event()`). It
  //! must not call the engine.
  std::function<void(std::span<const std::size_t>)> on_gradients_released{};
  //! Threads that split this rank's update and norm passes (the calling thread included); 0: the
  //! hardware's count. Shards under 32768 elements are done by the calling thread alone. (Host
  //! backend.)
  unsigned threads = 0;
  //! Where every persistent buffer is allocated, once, at construction (host backend), and
  //! where the activation checkpointer keeps its device-side bytes.
  std::pmr::memory_resource* memory = std::pmr::new_delete_resource();
  //! How the engine builds its activation checkpointer (`make_checkpointer`): host memory for
  //! offloaded checkpoints, the plan of a contiguous arena, the largest checkpoint.
  activation_options activations{};

  //! Adds a parameter group with hyperparameters `h`; returns its index, for `parameter::group`.
  std::uint32_t add_group(const hyperparameters_type& h) {
    extra_groups.push_back(h);
    return static_cast<std::uint32_t>(extra_groups.size());
  }
  //! Parameter groups: 1 + `extra_groups.size()`.
  std::size_t group_count() const noexcept { return 1 + extra_groups.size(); }
  //! The hyperparameters of group g. @pre g < group_count()
  const hyperparameters_type& group(std::size_t g) const { return g == 0 ? hyperparameters : extra_groups.at(g - 1); }
  hyperparameters_type& group(std::size_t g) { return g == 0 ? hyperparameters : extra_groups.at(g - 1); }
};

//! What `step()` did. Every field is equal on every rank.
struct step_report {
  static constexpr std::size_t no_parameter = static_cast<std::size_t>(-1);

  std::uint64_t step = 0;     //!< optimizer steps taken so far (a skipped step does not count)
  bool skipped = false;       //!< true when a gradient was not finite and the step was skipped
  double grad_norm = 0;       //!< L2 norm of the averaged, unscaled gradient, before clipping
  double clip_factor = 1;     //!< what clipping multiplied the gradient by (1: no clipping)
  double loss_scale = 1;      //!< the scale this step's gradients carried
  std::uint32_t micro_steps = 1;
  //! The first non-finite gradient found (lowest rank, first in that rank's reduction order):
  int nonfinite_rank = -1;
  std::size_t nonfinite_parameter = no_parameter;
  std::string_view nonfinite_parameter_name;  //!< valid while the optimizer lives
  //! Where this rank's time went since the previous step (seconds, steady clock): reductions
  //! (during backward in stage 2, and at the step), the norm and update, the all-gather (stage
  //! 3: the time spent in `gather()` since the previous step, the framework waiting for groups).
  double reduce_seconds = 0, update_seconds = 0, gather_seconds = 0;
  //! Stage 3: the `gather()` calls since the previous step, and how many of them found their
  //! group prefetched (`layout_options::prefetch_groups`).
  std::uint32_t gathers = 0, prefetched_gathers = 0;
};

//! The ZeRO engine: stage, precision and policies fixed at compile time; sizes and
//! hyperparameters at run time. One object per rank, used by that rank's thread only.
//! @tparam Stage        what is partitioned (`stage0`, `stage1`, `stage2`)
//! @tparam Precision    a `zero::precision` bundle
//! @tparam Rule         the update rule (`adamw`, `adam`, `sgd`, `lion`, `adagrad`, `lamb` or a
//!                      user-written rule)
//! @tparam Partitioner  `contiguous_partitioner`, `bucketed_partitioner` or a user-written one
//! @tparam Comm         the communicator type; the engine uses the caller's object
//! @tparam Checkpointer the activation checkpointer the engine carries for the framework
//! The backend (where the buffers live, what runs the passes) is the communicator's: see
//! `backend.hpp` (`backend_of<Comm>`).
//! The policies are checked in the class (`policy_checks.hpp`), not in its template parameter
//! list, so that a policy missing part of its concept gets an error naming the concept and
//! what is missing.
template <stage Stage, class Precision = bf16_mixed, class Rule = adamw, class Partitioner = contiguous_partitioner,
          class Comm = thread_communicator, class Checkpointer = passthrough_checkpointer>
class optimizer {
  static_assert(check_precision_bundle<Precision>());
  static_assert(check_update_rule<Rule>());
  static_assert(check_partitioner<Partitioner>());
  static_assert(check_communicator<Comm>());
  static_assert(check_activation_checkpointer<Checkpointer>());

 public:
  using precision_type = Precision;
  using param_type = typename Precision::param_type;
  using grad_type = typename Precision::grad_type;
  using value_type = typename Precision::value_type;  // what the update reads and writes
  using accum_type = typename Precision::accum_type;
  using comm_type = typename Precision::comm_type;
  using rule_type = Rule;
  using partitioner_type = Partitioner;
  using hyperparameters_type = typename Rule::hyperparameters;
  using options_type = optimizer_options<Rule>;
  using communicator_type = Comm;
  using checkpointer_type = Checkpointer;
  using backend_type = typename backend_of<Comm>::type;
  static_assert(backend<backend_type>,
                "zero::optimizer: the communicator's backend_type is not a zero::backend (a CUDA communicator: include "
                "<zero/cuda/backend.cuh> and compile the engine with nvcc)");
  static_assert(!std::is_same_v<typename Precision::master_type, double>,
                "zero::optimizer: double master weights are not supported: the update computes in fp32, so double "
                "master weights would be rounded to fp32 at every step; use float master weights");
  static constexpr zero::stage stage_value = Stage;
  static constexpr std::size_t max_state_slots = detail::max_update_slots;
  //! Parameter groups the backend's update takes (a device backend passes their constants in
  //! its launch's arguments; the host backend has no limit).
  static constexpr std::size_t max_groups = [] {
    if constexpr (requires { backend_type::max_groups; }) return std::size_t{backend_type::max_groups};
    else return static_cast<std::size_t>(-1);
  }();
  //! 64-bit words each rank contributes to the one all-gather of per-step statistics.
  static constexpr std::size_t statistics_words = engine::statistics_words;

  //! Registers the parameters and allocates every buffer. Collective: every rank of `comm`
  //! constructs its engine with the same layout and options; a rank whose layout differs, or
  //! whose input is refused, makes every rank throw the same error naming it.
  //! Reads the parameters' values (to initialize the master weights); writes nothing of them.
  //! @pre `comm` outlives the engine (the engine keeps its address and uses it until destroyed)
  optimizer(Comm& comm, std::span<const parameter<param_type>> params, options_type options = {})
      : optimizer(delegated{}, comm, std::move(options)) {
    construct(params, [&] { checkpointer_.emplace(build_checkpointer{{comm, options_.memory, options_.activations}}); });
  }
  //! The same, with an activation checkpointer the framework built: one over another group than
  //! the engine's (a partitioned checkpointer splits activations across the ranks that hold
  //! them alike: the model-parallel group), or built some other way.
  optimizer(Comm& comm, std::span<const parameter<param_type>> params, options_type options, Checkpointer checkpointer)
    requires std::move_constructible<Checkpointer>
      : optimizer(delegated{}, comm, std::move(options)) {
    construct(params, [&] { checkpointer_.emplace(std::move(checkpointer)); });
  }

  optimizer(const optimizer&) = delete;
  optimizer& operator=(const optimizer&) = delete;

  //! After a failed collective on a communicator that may still complete what it abandoned
  //! (MPI cannot cancel a collective: `abandoned_collectives()`), the buffers collectives were
  //! given (staging buffers, gradient shard and slots, parameter shard, step words, stage 3's
  //! gather buffers and words) are not
  //! freed but kept until the process exits, so that a late write lands in memory nobody else
  //! uses. Everything else is freed as usual.
  ~optimizer() {
    if (broken_) keep_collective_buffers();
  }

  // ---- gradients ---------------------------------------------------------------------------

  //! The loss scale: multiply the loss by it before backward (1 unless loss scaling is on).
  double loss_scale() const noexcept { return scaler_.scale(); }

  //! The engine-owned slot the framework writes (or accumulates) parameter `param`'s gradient
  //! into; zeroed at construction and after every micro-step. Needs `layout.gradient_slots`.
  raw_span<grad_type> grad_slot(std::size_t param) {
    check_index(param, "grad_slot");
    if (!options_.layout.gradient_slots)
      throw usage_error("zero: grad_slot(" + name_of(param) + ") on rank " + std::to_string(rank_) +
                        ": gradient slots are off; set options.layout.gradient_slots = true");
    return {slots_.data() + slot_offset_[param], sizes_[param]};
  }

  //! Reports that the gradient of `param` is in its slot (slot mode). A shared parameter is
  //! reported once per use; its slot holds the sum of all uses.
  void gradient_ready(std::size_t param) {
    check_usable();
    check_index(param, "gradient_ready");
    if (!options_.layout.gradient_slots)
      throw usage_error("zero: gradient_ready(" + name_of(param) + ") without a gradient on rank " +
                        std::to_string(rank_) + ": gradient slots are off; pass the gradient span");
    count_report(param);
    note_reported(param);
    if (!local_accumulation_ && schedule_.reports(param) == 0) records_.add(param, slots_.data() + slot_offset_[param]);
    schedule_.note_report(param);
    if (streaming()) guarded([&] { advance(); });
    notify_released();
  }

  //! Reports the gradient of `param` as a span the engine reads (span mode). Each report is one
  //! contribution: a shared parameter is reported once per use and the uses are summed.
  //! Stages 0 and 1 read the span during this call; stage 2 reads it when the reduction unit
  //! holding `param` is packed (at once with `layout.copy_on_report` where the unit's staging
  //! buffer is free), and tells when through `gradient_released` and `on_gradients_released`.
  //! @pre the span stays valid and unchanged until it is released (at the latest when the
  //!      micro-step ends: `end_micro_step()` or `step()` returns).
  void gradient_ready(std::size_t param, raw_span<const grad_type> grad) {
    check_usable();
    check_index(param, "gradient_ready");
    if (options_.layout.gradient_slots)
      throw usage_error("zero: gradient_ready(" + name_of(param) + ", span) on rank " + std::to_string(rank_) +
                        ": gradient slots are on; write into grad_slot() and call gradient_ready(index)");
    if (grad.data == nullptr)
      throw usage_error("zero: gradient of parameter " + name_of(param) + " on rank " + std::to_string(rank_) +
                        " is a null span");
    if (grad.size != sizes_[param])
      throw usage_error("zero: gradient of parameter " + name_of(param) + " on rank " + std::to_string(rank_) + " has " +
                        std::to_string(grad.size) + " elements; the parameter has " + std::to_string(sizes_[param]));
    count_report(param);
    note_reported(param);
    if (local_accumulation_ && !learning_) {
      accumulate(param, grad.data);  // read now: released at once
      schedule_.note_report(param);
      schedule_.release_now(param, released_);
    } else {
      records_.add(param, grad.data);
      schedule_.note_report(param);
      if (streaming()) guarded([&] {
          if (options_.layout.copy_on_report) take_in(param);
          advance();
        });
    }
    notify_released();
  }

  //! Declares that `param` gets no (further) gradient this micro-step: an unused parameter, as
  //! DDP's `find_unused_parameters` finds them. Its reductions need not wait for it (stage 2
  //! reduces a unit as soon as its other gradients are in); it counts as zero, as a parameter
  //! never reported does (and is not a report: under `unreported_gradients::skip` a parameter
  //! no rank reported is left untouched). A shared parameter reported j < k times gets no more reports.
  //! @throws usage_error when every report of `param` is in already this micro-step
  void gradient_unused(std::size_t param) {
    check_usable();
    check_index(param, "gradient_unused");
    count_report(param);
    while (!schedule_.all_reported(param)) schedule_.note_report(param);
    if (streaming()) guarded([&] {
        schedule_.release_if_consumed(param, released_);
        advance();
      });
    notify_released();
  }

  //! Whether every gradient reported for `param` in this micro-step has been read for the last
  //! time: the framework may free or reuse that memory (on a device engine, once its stream has
  //! waited for `release_event()`). False for a parameter not reported yet; everything
  //! reported is released when the micro-step ends, and the flags restart with the next one.
  bool gradient_released(std::size_t param) const {
    check_index(param, "gradient_released");
    return schedule_.released(param);
  }

  //! A device engine: the event recorded on the engine's stream after the last read of the
  //! gradients released so far; a framework computing on another stream makes it wait for
  //! this event (cudaStreamWaitEvent) before it reuses released memory. (The host engine reads
  //! before it releases; it has no event.)
  auto release_event() const noexcept
    requires requires(const backend_type& b) { b.release_event(); }
  {
    return backend_.release_event();
  }

  //! Ends a micro-step that is not the last of the step (gradient accumulation): the
  //! gradients reported so far are kept (stage 2: reduced now, as DeepSpeed does, unless
  //! `layout.defer_reduction`), and every parameter may be reported again. Collective in stage 2
  //! (and in every stage while the layout order is being learned).
  void end_micro_step() {
    check_usable();
    guarded([&] { finish_micro_step(); });
    ++micro_steps_;
    notify_released();
  }

  // ---- the step ----------------------------------------------------------------------------

  //! Ends the last micro-step, reduces the gradients not yet reduced, and either skips the step
  //! (a non-finite gradient on any rank, with `on_nonfinite` skipping) or updates this rank's
  //! shard with the gradients averaged over ranks and micro-steps, unscaled and clipped, and
  //! leaves every rank's parameters holding the full updated values. Collective. Allocates
  //! nothing (but in the step that learns the layout order). @throws loss_scale_error when a
  //! step overflows at the minimum loss scale (the step is skipped and the gradients cleared first).
  step_report step() {
    check_usable();
    // stage 3: a group still gathered holds values the update is about to make stale; it is
    // released, the step goes on (it is collective), and the error comes after it
    const std::string held = partitions_parameters ? release_all_gathered() : std::string();
    step_report report;
    using clock = std::chrono::steady_clock;
    const bool direct = direct_step();
    guarded([&] {
      if constexpr (partitions_parameters) end_gather_step();
      auto t0 = clock::now();
      if (direct) build_direct_runs();  // nothing to reduce: the update reads the gradients
      else finish_micro_step();
      if (local_accumulation_) reduce_remaining_units();
      if (skip_unreported_) {
        // the non-finite finding first: a device backend's prepare (plan_skip_update) clears it
        noted_nonfinite_ = check_nonfinite_ ? backend_.first_nonfinite() : none;
        agree_on_reports();
        plan_skip_update();
      }
      auto t1 = clock::now();
      if (norm_needed_before_update()) {
        report = exchange_statistics(direct ? backend_.sum_of_squares(std::span<const direct_segment>(direct_runs_)) : local_sum_of_squares());
        if (!report.skipped) update_shard(static_cast<float>(inverse_average_ * report.clip_factor), nullptr, direct);
      } else {
        // no clipping and no overflow check: the norm is only reported, so the update pass
        // computes it on the way (one pass over the gradients fewer)
        double sum_of_squares = 0;
        inverse_average_ = engine::inverse_average(statistics_inputs());
        update_shard(static_cast<float>(inverse_average_), &sum_of_squares, direct);
        report = exchange_statistics(sum_of_squares);
      }
      if (direct) {  // the micro-step ends: the gradients were read for the last time
        schedule_.release_all_reported(released_);
        forget_reports();
      }
      auto t2 = clock::now();
      if (!report.skipped && Stage != stage::stage0 && !partitions_parameters) gather_parameters();
      auto t3 = clock::now();
      report.reduce_seconds = reduce_seconds_ + std::chrono::duration<double>(t1 - t0).count();
      report.update_seconds = std::chrono::duration<double>(t2 - t1).count();
      report.gather_seconds = partitions_parameters ? gather_seconds_ : std::chrono::duration<double>(t3 - t2).count();
      report.gathers = gathers_;
      report.prefetched_gathers = prefetched_gathers_;
      reduce_seconds_ = gather_seconds_ = 0;
      gathers_ = prefetched_gathers_ = 0;
    });
    reset_step();
    notify_released();
    if (report.skipped) {
      scaler_.update(true);
    } else {
      scaler_.update(false);
      report.step = ++step_;
      if (skip_unreported_)
        for (std::size_t p = 0; p < param_steps_.size(); ++p)
          if (reported_anywhere(p)) ++param_steps_[p];
    }
    if (report.skipped) report.step = step_;
    if (!held.empty())
      throw usage_error("zero: step() on rank " + std::to_string(rank_) + " with gather group(s) " + held +
                        " still gathered: release each group after its backward (the step ran, and released them)");
    return report;
  }

  // ---- stage 3: gathered parameter groups --------------------------------------------------

  //! Stage 3: the gather groups (`parameter::gather_group`: 0 to count - 1).
  std::size_t gather_group_count() const noexcept { return gather_runs_.size(); }
  //! Stage 3: the gather group of parameter `param`.
  std::uint32_t gather_group_of(std::size_t param) const {
    check_index(param, "gather_group_of");
    return gather_group_[param];
  }
  //! Stage 3: whether group `g` is gathered (between `gather(g)` and `release(g)`).
  bool gathered(std::uint32_t g) const noexcept { return g < gather_slot_.size() && gather_slot_[g] != no_slot; }

  //! Stage 3: gathers the full model-precision values of gather group `g` into one of the
  //! engine's gather buffers; until `release(g)`, `parameter_values(p)` of each of its
  //! parameters is a span over them. Collective: every rank gathers the same groups in the same
  //! order. A rank that gathers another group, or whose gather is refused, makes every rank
  //! throw before any value moves (`mismatch_error` on the others, naming it), and nothing
  //! changes. The values are the parameters after the last step; writing into the span changes
  //! nothing the engine keeps (the engine's shard is the parameters). With
  //! `layout.prefetch_groups`, the call also starts gathering the groups that follow `g` in
  //! `layout.gather_order` (or the last step's order) into free buffers, and returns at once
  //! for a group it prefetched, once that gather is complete.
  //! @throws usage_error for no such group, a group gathered already, or no free gather buffer
  //!         (`layout.gather_buffers` groups are gathered: release one)
  void gather(std::uint32_t g) {
    check_usable();
    if constexpr (!partitions_parameters) {
      throw usage_error("zero: gather(" + std::to_string(g) + ") on rank " + std::to_string(rank_) +
                        ": only stage 3 gathers parameters (stages 0-2 leave them whole in the framework)");
    } else {
      // what this rank can do, decided before any rank moves a value: a refusal on one rank is
      // an error on every rank (never a hang), and nothing is changed
      const auto began = std::chrono::steady_clock::now();
      const bool hit = !prefetch_.empty() && prefetch_.front().group == g;  // prefetched for this call
      const std::string refusal = gather_refusal(g, hit);
      const std::size_t cursor = refusal.empty() ? order_cursor_after(g) : 0;
      const std::uint64_t ahead = refusal.empty() ? prefetchable(g, hit, cursor) : 0;
      const std::uint64_t mine = std::uint64_t{g} | (ahead << 32) | (refusal.empty() ? 0 : refused_bit);
      guarded([&] { backend_.all_gather_words(*comm_, &mine, gather_words_.data(), 1); });
      check_gather_agreement(g, refusal);
      std::uint64_t agreed = ahead;  // groups every rank can prefetch now
      for (std::uint64_t w : gather_words_) agreed = std::min(agreed, (w & ~refused_bit) >> 32);
      guarded([&] {
        std::size_t slot = no_slot;
        if (hit) {
          slot = prefetch_.front().slot;
          prefetch_.erase(prefetch_.begin());
        } else {
          drop_prefetched();  // off the order: what was prefetched is not what the framework asks for
          slot = free_gather_buffer();
          start_group_gather(g, slot);
        }
        gather_holder_[slot] = g;
        gather_slot_[g] = slot;
        order_cursor_ = cursor;
        for (std::uint64_t k = 0; k < agreed; ++k) {
          const std::uint32_t next = gather_order_[order_cursor_ + prefetch_.size()];
          const std::size_t into = free_gather_buffer();
          gather_holder_[into] = prefetching;
          prefetch_.push_back({next, into});
          start_group_gather(next, into);
        }
        finish_group_gather(slot);  // the next groups' gathers stay in flight
      });
      if (options_.layout.gather_order.empty() && gathers_seen_.size() < max_remembered_gathers())
        gathers_seen_.push_back(g);
      ++gathers_;
      prefetched_gathers_ += hit ? 1 : 0;
      gather_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    }
  }

  //! Stage 3, for a model no rank can hold whole: sets the values of the elements this rank's
  //! shard holds, without any rank reading the whole model. For each piece of a parameter in
  //! this rank's shard, `fill(param, offset, out)` writes the model-precision values of
  //! parameter `param` (its registration index) from its element `offset` on into `out` (host
  //! memory, `out.size()` elements); the engine takes them as construction takes the framework's
  //! values (the master weights widened from them). Register the parameters without values (a
  //! null `values.data`, the size alone), then call this on every rank before the first gather.
  //! Local: nothing is exchanged. A prefetched group is dropped (its values change).
  //! @throws usage_error before stage 3, or with a group gathered; what `fill` throws (the
  //!         pieces before it are set)
  template <class Fill>
  void initialize_parameters(Fill&& fill) {
    static_assert(std::invocable<Fill&, std::size_t, std::size_t, std::span<param_type>>,
                  "zero: initialize_parameters(fill): fill(std::size_t param, std::size_t offset, std::span<param_type> out)");
    check_usable();
    if constexpr (!partitions_parameters) {
      throw usage_error("zero: initialize_parameters on rank " + std::to_string(rank_) +
                        ": only stage 3 (stages 0-2 take the values of the framework's parameters)");
    } else {
      if (const std::string held = gathered_list(); !held.empty())
        throw usage_error("zero: initialize_parameters on rank " + std::to_string(rank_) + " with gather group(s) " + held +
                          " gathered: release them first");
      guarded([&] { drop_prefetched(); });
      std::vector<param_type> host;
      for (const auto& piece : owned_) {
        host.assign(piece.count, param_type(0.0f));
        fill(piece.param, piece.param_offset, std::span<param_type>(host));
        param_type* shard = param_shard_.data() + piece.shard_offset;
        backend_.from_host(shard, host.data(), piece.count);
        if constexpr (Precision::has_master) backend_.convert(master_.data() + piece.shard_offset, shard, piece.count);
      }
    }
  }

  //! Stage 3: gives group `g`'s gather buffer back; its parameters' spans are no longer valid.
  //! Local (no collective). @throws usage_error for a group not gathered
  void release(std::uint32_t g) {
    if (!gathered(g))
      throw usage_error("zero: release(" + std::to_string(g) + ") on rank " + std::to_string(rank_) +
                        ": the group is not gathered" + (g >= gather_runs_.size() ? " (there is no such group)" : ""));
    gather_holder_[gather_slot_[g]] = no_group;
    gather_slot_[g] = no_slot;
    if constexpr (pipelined)
      if (!prefetch_.empty() && !broken_) guarded([&] { comm_->progress(); });  // let a prefetch in flight move
  }

  // ---- hyperparameters and state -----------------------------------------------------------

  //! The hyperparameters of parameter group 0 (the only group unless groups were added).
  const hyperparameters_type& hyperparameters() const noexcept { return options_.hyperparameters; }
  //! The hyperparameters of parameter group `group`. @throws usage_error for no such group
  const hyperparameters_type& hyperparameters(std::size_t group) const {
    check_group(group, "hyperparameters");
    return options_.group(group);
  }
  //! Parameter groups (`optimizer_options::group_count`).
  std::size_t group_count() const noexcept { return options_.group_count(); }
  //! The group of parameter `param`.
  std::uint32_t group_of(std::size_t param) const {
    check_index(param, "group_of");
    return group_of_[param];
  }
  //! Sets the hyperparameters of the next steps, with one parameter group. Every rank sets the
  //! same: the next step checks it (in the words it exchanges anyway). @throws usage_error if
  //! invalid, if they need more state slots than the engine was built with (amsgrad turned on),
  //! or if there are several groups (name the group)
  void set_hyperparameters(const hyperparameters_type& h) {
    if (group_count() != 1)
      throw usage_error("zero: set_hyperparameters(h) on rank " + std::to_string(rank_) + " with " +
                        std::to_string(group_count()) + " parameter groups; call set_hyperparameters(group, h)");
    set_hyperparameters(0, h);
  }
  //! Sets the hyperparameters of parameter group `group` for the next steps (a schedule's
  //! learning rate, say). Every rank sets the same: the next step throws `mismatch_error`
  //! naming the rank, group and field that differ. @throws usage_error for no such group, invalid
  //! values, or more state slots than the engine was built with (turning amsgrad on)
  void set_hyperparameters(std::size_t group, const hyperparameters_type& h) {
    check_group(group, "set_hyperparameters");
    validate_group(group, h);
    if (Rule::state_count(h) > state_count_)
      throw usage_error("zero: new " + std::string(Rule::name) + " hyperparameters of parameter group " + std::to_string(group) +
                        " on rank " + std::to_string(rank_) + " need " + std::to_string(Rule::state_count(h)) +
                        " state slots; the engine was built with " + std::to_string(state_count_));
    options_.group(group) = h;
  }

  //! Optimizer steps taken (a skipped step does not count).
  std::uint64_t step_count() const noexcept { return step_; }
  //! The updates parameter `param` received: torch.optim's per-parameter `state['step']`. Under
  //! `unreported_gradients::zero` every parameter is updated at every step: `step_count()`.
  std::uint64_t step_of(std::size_t param) const {
    check_index(param, "step_of");
    return skip_unreported_ ? param_steps_[param] : step_;
  }
  //! What a parameter no rank reported in a step gets (`optimizer_options::unreported`).
  unreported_gradients unreported() const noexcept { return options_.unreported; }
  int rank() const noexcept { return rank_; }
  int world_size() const noexcept { return world_; }
  //! The partition in use: the parameters in flat-buffer order (`plan().order()`), the units.
  const partition_plan& plan() const noexcept { return plan_; }
  const options_type& options() const noexcept { return options_; }
  const loss_scaler& scaler() const noexcept { return scaler_; }
  Comm& communicator() noexcept { return *comm_; }
  //! The activation checkpointer, built by the engine on its communicator and memory
  //! (`make_checkpointer`, `options.activations`), for the framework's forward and backward.
  Checkpointer& checkpointer() noexcept { return *checkpointer_; }
  const Checkpointer& checkpointer() const noexcept { return *checkpointer_; }
  const std::string& parameter_name(std::size_t i) const { return names_.at(i); }

  // ---- the layout order --------------------------------------------------------------------

  //! Whether the layout order is still to be learned (`gradient_order::learned`, before the
  //! first micro-step has ended).
  bool order_pending() const noexcept { return learning_; }
  //! The plan the partitioner gives for the parameters laid out in `order` (first to last).
  //! @throws usage_error when `order` is not a permutation of the parameters
  partition_plan plan_for_order(std::span<const std::size_t> order) const {
    partition_plan plan = Partitioner{}.plan(sizes_, {world_, options_.layout.alignment, options_.layout.bucket_elements, order});
    validate_plan(plan, sizes_, world_);
    return plan;
  }
  //! Fixes the order that is still to be learned to `order` (a checkpoint loader passes the
  //! saved plan's order). Not collective; every rank passes the same order. The master weights
  //! and state are laid out anew from the parameters. @throws usage_error when the order is
  //! not pending, a gradient was reported this micro-step, or `order` is not a permutation
  void fix_order(std::span<const std::size_t> order) {
    check_usable();
    if (!learning_) throw usage_error("zero: fix_order on rank " + std::to_string(rank_) + ": the layout order is already fixed");
    for (std::size_t p = 0; p < sizes_.size(); ++p)
      if (schedule_.reports(p) != 0)
        throw usage_error("zero: fix_order on rank " + std::to_string(rank_) + ": parameter " + name_of(p) +
                          " was reported in this micro-step; fix the order between steps");
    relayout(order);
    learning_ = false;
  }

  //! The pieces of parameters this rank updates (stage 0: every parameter, whole).
  std::span<const owned_piece> owned_pieces() const noexcept { return owned_; }
  //! The values this rank updates: its shard (stages 1, 2, indexed by `shard_offset`) or all
  //! parameters back to back (stage 0, indexed by `flat_offset`). Empty in stage 0 without
  //! master weights, where the update runs on the framework's parameters themselves.
  std::span<const value_type> values() const noexcept {
    if (value_base() == nullptr) return {};
    return {value_base(), updated_count()};
  }
  //! State slot `k` of the values this rank updates, indexed like `values()`.
  std::span<const float> state(std::size_t k) const {
    if (k >= state_count_) throw usage_error("zero: state slot " + std::to_string(k) + " of " + std::to_string(state_count_));
    return {state_.data() + k * state_stride(), updated_count()};
  }
  std::size_t state_count() const noexcept { return state_count_; }

  //! Whether `values()`, `state(k)` and the registered parameters are host memory (the host
  //! backend), or device memory (a device backend, such as the CUDA one). `copy_to_host` and
  //! `copy_from_host` move them either way.
  static constexpr bool buffers_on_host = backend_type::host_accessible;
  //! Copies `n` elements of the engine's memory or the framework's registered memory to host
  //! memory `to` (a plain copy on the host backend; on a device it waits for the engine's
  //! stream). For use between steps.
  template <class T>
  void copy_to_host(T* to, const T* from, std::size_t n) {
    backend_.to_host(to, from, n);
  }
  //! Copies `n` elements of host memory `from` into the engine's or the framework's memory.
  template <class T>
  void copy_from_host(T* to, const T* from, std::size_t n) {
    backend_.from_host(to, from, n);
  }
  //! Every rank's `n` words (host memory), in rank order, into `all`: an all-gather through the
  //! engine's communicator, whatever memory it works on. Collective; between steps.
  void all_gather_words(const std::uint64_t* mine, std::uint64_t* all, std::size_t n) {
    backend_.all_gather_words(*comm_, mine, all, n);
  }

  // ---- restoring saved state (checkpoints) -------------------------------------------------
  // A checkpoint loader writes the values and state slots this rank updates (indexed like
  // `values()` / `state(k)`, through `owned_pieces()`), the framework's parameters, and the
  // progress; then `synchronize_parameters()` makes every rank's model-precision copies agree.

  //! Writable `values()`. Empty in stage 0 without master weights (write `parameter_values(p)`).
  std::span<value_type> mutable_values() noexcept {
    if (value_base() == nullptr) return {};
    return {value_base(), updated_count()};
  }
  //! Writable `state(k)`.
  std::span<float> mutable_state(std::size_t k) {
    if (k >= state_count_) throw usage_error("zero: state slot " + std::to_string(k) + " of " + std::to_string(state_count_));
    return {state_.data() + k * state_stride(), updated_count()};
  }
  //! The framework's values of parameter `p`, as registered.
  //! Stage 3: the span in its group's gather buffer while the group is gathered.
  //! @throws usage_error at stage 3 for a parameter whose group is not gathered
  raw_span<param_type> parameter_values(std::size_t p) const {
    check_index(p, "parameter_values");
    if constexpr (partitions_parameters) {
      const std::uint32_t g = gather_group_[p];
      if (!gathered(g))
        throw usage_error("zero: parameter_values(" + name_of(p) + ") on rank " + std::to_string(rank_) + ": its gather group " +
                          std::to_string(g) + " is not gathered (stage 3: gather(" + std::to_string(g) + ") first)");
      return {gather_pool_.data() + gather_slot_[g] * options_.layout.gather_buffer_elements + gather_at_[p], sizes_[p]};
    }
    return params_[p];
  }
  //! Sets the step count and the loss scaler's state (as saved by a checkpoint), and every
  //! parameter's own update count (`step_of`) to `step` (`restore_parameter_steps` sets them
  //! one by one).
  void restore_progress(std::uint64_t step, const loss_scaler::state& scaler) noexcept {
    step_ = step;
    scaler_.restore(scaler);
    std::fill(param_steps_.begin(), param_steps_.end(), step);
  }
  //! Sets each parameter's own update count (`step_of`, registration order), as saved by a
  //! checkpoint; after `restore_progress`. Under `unreported_gradients::zero` every parameter
  //! steps with the optimizer, and the counts are not kept (checked, then dropped).
  //! @throws usage_error for another number of counts, or a count above `step_count()`
  void restore_parameter_steps(std::span<const std::uint64_t> steps) {
    if (steps.size() != sizes_.size())
      throw usage_error("zero: restore_parameter_steps on rank " + std::to_string(rank_) + ": " + std::to_string(steps.size()) +
                        " counts for " + std::to_string(sizes_.size()) + " parameters");
    for (std::size_t p = 0; p < steps.size(); ++p)
      if (steps[p] > step_)
        throw usage_error("zero: restore_parameter_steps on rank " + std::to_string(rank_) + ": parameter " + name_of(p) +
                          " has " + std::to_string(steps[p]) + " updates, more than the optimizer's " +
                          std::to_string(step_) + " steps");
    if (skip_unreported_) std::copy(steps.begin(), steps.end(), param_steps_.begin());
  }
  //! Writes the model-precision value of every element this rank updates and, in stages 1 and
  //! 2, all-gathers them into every rank's parameters. Collective. Clears pending gradients.
  void synchronize_parameters() {
    check_usable();
    guarded([&] {
      if constexpr (partitions_parameters) drop_prefetched();  // they hold the values before these
      for (const auto& s : segments_)
        if (s.out != nullptr) backend_.convert(s.out, s.values, s.count);
      if constexpr (Stage != stage::stage0 && !partitions_parameters) gather_parameters();
    });
    forget_reports();
    reset_step();
  }

  //! Bytes the engine's backend holds in the engine's memory space besides `memory()`: 0 on the
  //! host; on a GPU the statistics words and the update's tables (a few KiB). `memory().total()
  //! + backend_bytes()` is every byte the engine allocated there.
  std::size_t backend_bytes() const noexcept { return backend_.bytes(); }

  //! Bytes this rank's engine allocated, by kind, the framework's gradient bound (these equal
  //! `expected_memory` for the shipped partitioners), and the activation checkpointer's peak.
  memory_report memory() const noexcept {
    memory_report r;
    r[memory_kind::master_weights] = master_.bytes();
    r[memory_kind::optimizer_state] = state_.bytes();
    r[memory_kind::gradients] = gradients_.bytes();
    r[memory_kind::gradient_slots] = slots_.bytes();
    r[memory_kind::parameter_shard] = param_shard_.bytes();
    r[memory_kind::buckets] = ring_.memory().bytes() + gather_pool_.bytes();
    if ((Stage == stage::stage2 || partitions_parameters) && !local_accumulation_ && !options_.layout.gradient_slots)
      r.framework_gradients = reads_gradients_in_update() ? plan_.element_count * sizeof(grad_type)  // held until the step
                                                          : (plan_.max_unit_elements() + largest_gradient_) * sizeof(grad_type);
    if constexpr (measured_checkpointer<Checkpointer>) {
      r.activations = checkpointer_->peak_memory().device();
      r.activations_host = checkpointer_->peak_memory().host;
    } else {
      r.activations = checkpointer_->peak_bytes_held();
    }
    return r;
  }

 private:
  static constexpr bool sharded = Stage != stage::stage0;
  static constexpr bool partitions_parameters = Stage == stage::stage3;  // the engine's shard is the parameters
  static constexpr std::size_t none = static_cast<std::size_t>(-1);
  using collectives = engine::unit_collectives<Comm>;
  using request_type = typename collectives::request;
  static constexpr bool pipelined = collectives::nonblocking;
  using byte_buffer = typename backend_type::template buffer<std::byte>;

  // A contiguous run of elements the update walks (`update_run`): values, gradients, state and
  // output (null when the values are the parameters themselves).
  using segment = update_run<value_type, accum_type, param_type>;
  using direct_segment = update_run<value_type, grad_type, param_type>;  // over the framework's gradients
  // unreported_gradients::skip: a reported parameter's owned piece and the index of its constants,
  // and a batch of the update (at most max_groups constants, the runs and pieces that use them)
  struct active_piece {
    std::size_t key;    // index into keys_ (and constants_)
    std::size_t owned;  // index into owned_
  };
  struct update_batch {
    std::size_t first_key, runs_begin, runs_end, pieces_begin, pieces_end;
  };

  // ---- construction ------------------------------------------------------------------------

  std::string name_of(std::size_t i) const { return engine::describe_parameter(names_, i); }

  struct delegated {};
  optimizer(delegated, Comm& comm, options_type&& options)
      : comm_(&comm), options_(std::move(options)), rank_(comm.rank()), world_(comm.world_size()),
        backend_(comm, backend_options{options_.threads, options_.memory}) {}

  //! Registers the parameters, agrees with the other ranks, allocates (the constructors' body);
  //! `make_checkpointer()` puts the activation checkpointer in place.
  template <class MakeCheckpointer>
  void construct(std::span<const parameter<param_type>> params, MakeCheckpointer&& make_checkpointer) {
    std::string refusal;
    std::uint64_t digest = 0;
    try {
      validate_locally(params);
      for (const auto& p : params) sizes_.push_back(p.values.size);
      plan_ = plan_for_order(engine::initial_order(options_.layout, sizes_.size()));
      digest = layout_digest(params);
      make_checkpointer();
    } catch (const usage_error& e) {
      refusal = e.what();
    }
    engine::agree_on_input(gather_words(), rank_, world_, digest, refusal,
                           "a parameter layout, precision, stage or options");
    agree_on_hyperparameters();
    register_parameters(params);
    allocate_and_initialize();
    if constexpr (partitions_parameters)  // read for the initial values only: the framework may free them now
      for (auto& p : params_) p.data = nullptr;
  }

  // Builds the checkpointer in place (it need not be movable): `optional::emplace` converts this.
  struct build_checkpointer {
    checkpointer_context<Comm> context;
    operator Checkpointer() const { return make_checkpointer<Checkpointer>(context); }
  };

  auto gather_words() {
    return [this](const std::uint64_t* mine, std::uint64_t* all, std::size_t n) { backend_.all_gather_words(*comm_, mine, all, n); };
  }

  //! This rank's own checks of its registration (engine/registration.hpp), and the settings
  //! that follow from the options.
  void validate_locally(std::span<const parameter<param_type>> params) {
    const std::string where = " on rank " + std::to_string(rank_);
    names_ = engine::check_parameters(params, rank_, partitions_parameters);
    const std::size_t groups = options_.group_count();
    if (groups > max_groups)
      throw usage_error("zero: " + std::to_string(groups) + " parameter groups" + where + "; at most " +
                        std::to_string(max_groups) + " are supported");
    state_count_ = 0;
    for (std::size_t g = 0; g < groups; ++g) {
      validate_group(g, options_.group(g));
      state_count_ = std::max(state_count_, Rule::state_count(options_.group(g)));  // the most any group needs
    }
    if (state_count_ > max_state_slots)
      throw usage_error("zero: rule " + std::string(Rule::name) + " needs " + std::to_string(state_count_) +
                        " state slots; at most " + std::to_string(max_state_slots) + " are supported");
    group_of_.clear();
    for (std::size_t p = 0; p < params.size(); ++p) {
      if (params[p].group >= groups)
        throw usage_error("zero: parameter " + engine::describe_parameter(names_, p) + where + " is in parameter group " +
                          std::to_string(params[p].group) + ", but there are " + std::to_string(groups) +
                          " (add them with options.add_group)");
      group_of_.push_back(params[p].group);
    }
    if (std::isnan(options_.max_grad_norm)) throw usage_error("zero: max_grad_norm is NaN" + where);
    const double f = options_.gradient_predivide_factor;
    if (!(f > 0) || !std::isfinite(f))
      throw usage_error("zero: gradient_predivide_factor is " + std::to_string(f) + where + "; use a finite value > 0");
    engine::check_layout(options_.layout, names_, rank_, pipelined, typeid(Comm).name());
    if (options_.layout.read_gradients_in_update && !backend_type::host_accessible)
      throw usage_error("zero: layout.read_gradients_in_update" + where + ": the update reads the framework's gradients on the host only");
    if (options_.value_rounding == rounding::stochastic && !(std::is_same_v<value_type, bf16> && !Precision::has_master))
      throw usage_error("zero: stochastic rounding needs bf16 parameters without master weights (e.g. zero::bf16_pure)" + where);
    if (options_.unreported != unreported_gradients::zero && options_.unreported != unreported_gradients::skip)
      throw usage_error("zero: options.unreported is " + std::to_string(static_cast<unsigned>(options_.unreported)) + where +
                        "; use unreported_gradients::zero or unreported_gradients::skip");
    skip_unreported_ = options_.unreported == unreported_gradients::skip;
    scaler_ = loss_scaler(options_.loss_scale, std::is_same_v<param_type, fp16>);
    local_accumulation_ = (Stage != stage::stage2 && !partitions_parameters) || options_.layout.defer_reduction;
    learning_ = options_.layout.order == gradient_order::learned;
    if constexpr (partitions_parameters) validate_gather_groups(params);
    check_nonfinite_ = options_.on_nonfinite == nonfinite_policy::skip_step ||
                       (options_.on_nonfinite == nonfinite_policy::automatic && scaler_.active());
  }

  std::uint64_t layout_digest(std::span<const parameter<param_type>> params) const {
    engine::digest d;
    d.word(static_cast<std::uint64_t>(world_));
    d.word(static_cast<std::uint64_t>(Stage));
    for (auto t : {type_name<param_type>(), type_name<grad_type>(), type_name<typename Precision::master_type>(),
                   type_name<typename Precision::state_type>(), type_name<accum_type>(), type_name<comm_type>()})
      d.text(t);
    d.text(Rule::name);
    d.word(state_count_);
    d.word(options_.group_count());
    for (std::uint32_t g : group_of_) d.word(g);
    d.text(typeid(Partitioner).name());
    const auto& l = options_.layout;
    for (std::uint64_t v : {std::uint64_t{l.alignment}, std::uint64_t{l.bucket_elements}, std::uint64_t{l.gradient_slots},
                            std::uint64_t{l.defer_reduction}, std::uint64_t{l.staging_buffers}, std::uint64_t{l.copy_on_report},
                            std::uint64_t{l.read_gradients_in_update},
                            static_cast<std::uint64_t>(l.order)})
      d.word(v);
    d.real(options_.max_grad_norm);
    d.real(options_.gradient_predivide_factor);
    const auto& ls = scaler_.options();
    d.word(static_cast<std::uint64_t>(ls.kind));
    d.real(ls.fixed_scale);
    d.word(static_cast<std::uint64_t>(ls.initial_scale_power));
    d.word(ls.window);
    d.word(ls.hysteresis);
    d.real(ls.min_scale);
    d.word(static_cast<std::uint64_t>(options_.on_nonfinite));
    d.word(static_cast<std::uint64_t>(options_.value_rounding));
    d.word(options_.seed);
    d.word(static_cast<std::uint64_t>(options_.unreported));
    if constexpr (partitions_parameters) {
      d.word(l.gather_buffers);
      d.word(l.gather_buffer_elements);
      d.word(l.prefetch_groups);
      d.word(l.gather_order.size());
      for (std::uint32_t g : l.gather_order) d.word(g);
      for (const auto& p : params) d.word(p.gather_group);
    }
    d.word(params.size());
    for (const auto& p : params) {
      d.word(p.values.size);
      d.word(p.reports);
      d.text(p.name);
    }
    // the plan itself: the order and whatever the partitioner made of it
    for (std::size_t p = 0; p < plan_.param_offset.size(); ++p) d.word(plan_.param_offset[p]);
    for (const auto& u : plan_.units)
      for (std::uint64_t v : {std::uint64_t{u.flat_begin}, std::uint64_t{u.rank_stride}, std::uint64_t{u.slice},
                              std::uint64_t{u.shard_begin}, static_cast<std::uint64_t>(static_cast<std::int64_t>(u.owner))})
        d.word(v);
    return d.value();
  }

  void register_parameters(std::span<const parameter<param_type>> params) {
    params_.reserve(params.size());
    expected_reports_.reserve(params.size());
    slot_offset_.reserve(params.size());
    std::size_t slot_at = 0;
    for (const auto& p : params) {
      params_.push_back(p.values);
      expected_reports_.push_back(p.reports);
      slot_offset_.push_back(slot_at);  // slots in registration order, whatever the layout
      slot_at += p.values.size;
      largest_gradient_ = std::max<std::size_t>(largest_gradient_, p.values.size * p.reports);
    }
    records_ = engine::gradient_records<grad_type>(expected_reports_);
    released_.reserve(params.size());
    constants_.reserve(options_.group_count());
    if (skip_unreported_) {
      const std::size_t words = (params.size() + 63) / 64;
      param_steps_.assign(params.size(), 0);
      reported_mine_.assign(words, 0);
      reported_union_.assign(words, 0);
      reported_all_.assign(words * static_cast<std::size_t>(world_), 0);
    }
  }

  // ---- hyperparameters agreed by every rank ------------------------------------------------

  //! A digest of every group's hyperparameters (the fields the rule lists; none when it lists
  //! none). Allocates nothing.
  std::uint64_t hyperparameter_digest() const noexcept {
    engine::digest d;
    if constexpr (lists_fields<Rule>)
      for (std::size_t g = 0; g < group_count(); ++g) Rule::fields(options_.group(g), [&](std::string_view, double v) { d.real(v); });
    return d.value();
  }

  //! At construction: every rank's hyperparameter digest exchanged (one word); where they
  //! differ, every rank throws the same `mismatch_error` naming the field. Collective.
  void agree_on_hyperparameters() {
    if constexpr (lists_fields<Rule>) {
      const std::uint64_t mine = hyperparameter_digest();
      std::vector<std::uint64_t> all(static_cast<std::size_t>(world_));
      backend_.all_gather_words(*comm_, &mine, all.data(), 1);
      for (int r = 1; r < world_; ++r)
        if (all[static_cast<std::size_t>(r)] != all[0]) throw_hyperparameter_mismatch("at construction");
    }
  }

  //! Called by every rank alike when the ranks' hyperparameter digests differ: every rank's
  //! fields exchanged (one all-gather, only on this error path), then the same `mismatch_error`
  //! on every rank naming the lowest rank that differs from rank 0, the group and the field.
  [[noreturn]] void throw_hyperparameter_mismatch(const std::string& when) {
    std::vector<std::uint64_t> mine;
    std::vector<std::string_view> names;
    for (std::size_t g = 0; g < group_count(); ++g)
      for (const auto& f : fields_of<Rule>(options_.group(g))) {
        mine.push_back(std::bit_cast<std::uint64_t>(f.value));
        if (g == 0) names.push_back(f.name);
      }
    const std::size_t n = mine.size();
    std::vector<std::uint64_t> all(n * static_cast<std::size_t>(world_));
    backend_.all_gather_words(*comm_, mine.data(), all.data(), n);
    const std::string advice = "; every rank must hold the same hyperparameters (call set_hyperparameters alike on every rank)";
    for (int r = 1; r < world_; ++r)
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint64_t theirs = all[static_cast<std::size_t>(r) * n + i];
        if (theirs == all[i]) continue;
        const std::size_t group = i / names.size();
        throw mismatch_error("zero: " + std::string(Rule::name) + " hyperparameters differ between ranks " + when + ": rank " +
                             std::to_string(r) + " has " + std::string(names[i % names.size()]) + " = " +
                             detail::format(std::bit_cast<double>(theirs)) + " in parameter group " + std::to_string(group) +
                             ", rank 0 has " + detail::format(std::bit_cast<double>(all[i])) + advice);
      }
    throw mismatch_error("zero: " + std::string(Rule::name) + " hyperparameters differ between ranks " + when + advice);
  }

  std::size_t updated_count() const noexcept { return sharded ? plan_.shard_size : plan_.element_count; }
  //! Whether the update writes the new model-precision values straight into the framework's
  //! parameters rather than into the parameter shard that the all-gather then copies out: at one
  //! rank (the shard is the whole model), with master weights. No parameter shard is
  //! allocated then (`expected_memory` says so too).
  bool writes_parameters_directly() const noexcept {
    return sharded && Precision::has_master && world_ == 1 && !partitions_parameters;
  }
  //! Elements from one state slot to the next (`zero::state_stride`).
  std::size_t state_stride() const noexcept { return zero::state_stride(updated_count(), state_count_); }

  value_type* value_base() const noexcept {
    if constexpr (Precision::has_master) return master_.data();
    else if constexpr (sharded) return param_shard_.data();
    else return nullptr;  // stage 0 without master: the update runs on the parameters themselves
  }

  void allocate_and_initialize() {
    auto& b = backend_;
    const std::size_t updated = updated_count();
    if constexpr (Precision::has_master) master_ = b.template allocate<value_type>(updated);
    state_ = b.template allocate<float>(state_count_ * state_stride());
    gradients_ = b.template allocate<accum_type>(local_accumulation_ ? plan_.padded_size : plan_.shard_size);
    if (options_.layout.gradient_slots) slots_ = b.template allocate<grad_type>(plan_.element_count);
    if constexpr (sharded)
      if (!writes_parameters_directly()) param_shard_ = b.template allocate<param_type>(plan_.shard_size);
    if constexpr (partitions_parameters) {
      gather_pool_ = b.template allocate<param_type>(options_.layout.gather_buffers * options_.layout.gather_buffer_elements);
      gather_holder_.assign(options_.layout.gather_buffers, no_group);
      gather_slot_.assign(gather_runs_.size(), no_slot);
      gather_words_.assign(static_cast<std::size_t>(world_), 0);
      gather_requests_.resize(options_.layout.gather_buffers);
      prefetch_.reserve(options_.layout.gather_buffers);
      gather_order_ = options_.layout.gather_order;
      gathers_seen_.reserve(options_.layout.gather_order.empty() ? 2 * gather_runs_.size() + 16 : 0);
      gather_order_.reserve(options_.layout.gather_order.empty() ? 2 * gather_runs_.size() + 16 : 0);
    }
    const std::size_t staging_element = sharded ? std::max(sizeof(comm_type), sizeof(param_type)) : sizeof(comm_type);
    staging_capacity_ = plan_.max_unit_elements();
    const std::size_t bytes = staging_capacity_ * staging_element;
    ring_ = engine::staging_ring<byte_buffer, request_type>(b.template allocate<std::byte>(options_.layout.staging_buffers * bytes),
                                                           options_.layout.staging_buffers, bytes);
    // metadata of the step (ordinary heap, not accounted as engine buffers)
    statistics_.assign(statistics_words * static_cast<std::size_t>(world_), 0);
    install_layout();
  }

  //! Derives everything that depends on the plan: the unit index and schedule, what this rank
  //! updates, the update's runs; and initializes the values and state (from the parameters).
  void install_layout() {
    index_ = engine::unit_index(plan_);
    schedule_ = engine::reduction_schedule(index_, expected_reports_);
    owned_.clear();
    if constexpr (sharded) {
      for (const auto& piece : index_.pieces)
        if (piece.rank == rank_) owned_.push_back(piece);
    } else {
      for (std::size_t p = 0; p < sizes_.size(); ++p)
        owned_.push_back({p, 0, rank_, 0, plan_.param_offset[p], plan_.param_offset[p], sizes_[p]});
    }
    if (skip_unreported_) {  // what plan_skip_update fills every step, at most one entry per owned piece
      keys_.reserve(owned_.size());
      active_.reserve(owned_.size());
      reported_runs_.reserve(owned_.size());
      reported_pieces_.reserve(owned_.size());
      batches_.reserve(owned_.size());
      constants_.reserve(options_.group_count() + owned_.size());
    }
    if constexpr (tensorwise_rule<Rule>) {
      tensor_sums_.assign(2 * sizes_.size(), 0.0);
      piece_sums_.assign(2 * owned_.size(), 0.0);
      trust_.assign(owned_.size(), 1.0f);
    }
    auto& b = backend_;
    const std::size_t updated = updated_count();
    build_segments();
    prepare_direct_runs();
    if constexpr (partitions_parameters) build_gather_runs();
    for (std::size_t k = 0; k < state_count_; ++k) {  // each group's elements start at its value
      const float start = static_cast<float>(initial_state<Rule>(options_.hyperparameters, k));
      b.fill(state_.data() + k * state_stride(), updated, start);
      for (const auto& s : segments_) {
        const float own = static_cast<float>(initial_state<Rule>(options_.group(s.group), k));
        if (own != start) b.fill(state_.data() + k * state_stride() + s.state_offset, s.count, own);
      }
    }
    // initial values: the parameters this rank updates, widened to the value type
    for (const auto& piece : owned_) {
      const std::size_t at = sharded ? piece.shard_offset : piece.flat_offset;
      if (params_[piece.param].data == nullptr) {  // stage 3, registered without values: 0
        if constexpr (Precision::has_master) b.fill(master_.data() + at, piece.count, value_type(0.0f));
        if constexpr (sharded) b.fill(param_shard_.data() + at, piece.count, param_type(0.0f));
        continue;
      }
      const param_type* from = params_[piece.param].data + piece.param_offset;
      if constexpr (Precision::has_master) b.convert(master_.data() + at, from, piece.count);
      if constexpr (sharded)
        if (!writes_parameters_directly()) b.convert(param_shard_.data() + at, from, piece.count);
    }
    prepare_backend(segments_, piece_segments_);
  }

  //! Prepares the backend's update for these runs (element-wise passes and norm) and pieces
  //! (tensor-wise passes); under `skip`, remembers them (`ensure_prepared`).
  void prepare_backend(std::span<const segment> runs, std::span<const segment> pieces) {
    backend_.template prepare<Rule>(sizes_.size(), runs, pieces, state_.data(), state_stride(), state_count_);
    if (skip_unreported_) {
      prepared_runs_.assign(runs.begin(), runs.end());
      prepared_pieces_.assign(pieces.begin(), pieces.end());
    }
  }

  //! Lays the parameters out in `order`: the partitioner's plan for it, which must have the
  //! sizes the buffers were allocated for (the shipped partitioners' do, whatever the order).
  void relayout(std::span<const std::size_t> order) {
    partition_plan next = plan_for_order(order);
    if (next.padded_size != plan_.padded_size || next.shard_size != plan_.shard_size || next.max_unit_elements() > staging_capacity_)
      throw usage_error("zero: the partitioner's plan for the new layout order on rank " + std::to_string(rank_) +
                        " has other sizes (padded " + std::to_string(next.padded_size) + ", shard " +
                        std::to_string(next.shard_size) + ", largest unit " + std::to_string(next.max_unit_elements()) +
                        ") than the buffers were allocated for");
    plan_ = std::move(next);
    install_layout();
  }

  //! The run of the update for one owned piece of a parameter.
  segment piece_segment(const owned_piece& piece) const {
    const std::size_t at = sharded ? piece.shard_offset : piece.flat_offset;
    const accum_type* grads = gradients_.data() + (local_accumulation_ ? piece.flat_offset : piece.shard_offset);
    value_type* values;
    param_type* out = nullptr;
    if constexpr (Precision::has_master) {
      values = master_.data() + at;
      out = sharded && !writes_parameters_directly() ? param_shard_.data() + at : params_[piece.param].data + piece.param_offset;
    } else if constexpr (sharded) {
      values = param_shard_.data() + at;
    } else {
      values = params_[piece.param].data + piece.param_offset;
    }
    return {values, grads, at, out, piece.count, group_of_[piece.param]};
  }

  //! Element-wise rules walk this rank's slices of the units (padding included), cut where
  //! the parameter group changes and merged where contiguous in one group; tensor-wise rules
  //! walk the pieces of each parameter. (Padding goes with the group before it: its values,
  //! gradients and state stay 0 under every rule.)
  void build_segments() {
    piece_segments_.clear();
    segments_.clear();
    for (const auto& piece : owned_) piece_segments_.push_back(piece_segment(piece));
    if constexpr (!sharded) {
      segments_ = piece_segments_;
    } else if (writes_parameters_directly()) {
      build_direct_segments();
    } else {
      std::vector<std::pair<std::size_t, std::uint32_t>> starts;  // where each owned piece starts in the shard, its group
      for (const auto& piece : owned_) starts.emplace_back(piece.shard_offset, group_of_[piece.param]);
      std::sort(starts.begin(), starts.end());
      for (const auto& u : plan_.units) {
        if (!u.held_by(rank_)) continue;
        const accum_type* grads = gradients_.data() + (local_accumulation_ ? u.flat_index(rank_, 0) : u.shard_begin);
        param_type* out = Precision::has_master ? param_shard_.data() + u.shard_begin : nullptr;
        const std::size_t begin = u.shard_begin, end = u.shard_begin + u.slice;
        auto next = std::upper_bound(starts.begin(), starts.end(), std::pair{begin, std::numeric_limits<std::uint32_t>::max()});
        std::uint32_t group = next != starts.begin() ? std::prev(next)->second : (next != starts.end() ? next->second : 0u);
        for (std::size_t at = begin; at < end;) {
          while (next != starts.end() && next->first < end && next->second == group) ++next;
          const std::size_t cut = next != starts.end() && next->first < end ? next->first : end;
          append_segment({value_base() + at, grads + (at - begin), at, out == nullptr ? nullptr : out + (at - begin), cut - at, group});
          at = cut;
          if (cut < end) group = next->second;
        }
      }
    }
  }

  //! At one rank the update writes the framework's parameters (`writes_parameters_directly`):
  //! the unit slices in shard order, cut where an owned piece starts or ends, each piece's run
  //! writing its parameter and the padding between (its group the piece's before) writing nothing.
  void build_direct_segments() {
    std::vector<const owned_piece*> by_shard;
    for (const auto& piece : owned_) by_shard.push_back(&piece);
    std::sort(by_shard.begin(), by_shard.end(), [](const owned_piece* a, const owned_piece* b) { return a->shard_offset < b->shard_offset; });
    auto next = by_shard.begin();
    std::uint32_t group = by_shard.empty() ? 0u : group_of_[by_shard.front()->param];
    for (const auto& u : plan_.units) {
      if (!u.held_by(rank_)) continue;
      const accum_type* grads = gradients_.data() + u.shard_begin;
      const std::size_t begin = u.shard_begin, end = u.shard_begin + u.slice;
      for (std::size_t at = begin; at < end;) {
        while (next != by_shard.end() && (*next)->shard_offset + (*next)->count <= at) ++next;
        param_type* out = nullptr;
        std::size_t cut = end;
        if (next != by_shard.end() && (*next)->shard_offset <= at) {  // inside a piece
          const owned_piece& piece = **next;
          group = group_of_[piece.param];
          out = params_[piece.param].data + piece.param_offset + (at - piece.shard_offset);
          cut = std::min(end, piece.shard_offset + piece.count);
        } else if (next != by_shard.end()) {  // padding before the next piece
          cut = std::min(end, (*next)->shard_offset);
        }
        append_segment({value_base() + at, grads + (at - begin), at, out, cut - at, group});
        at = cut;
      }
    }
  }

  //! Appends run s to the element-wise runs, merged into the last one when it continues it in the
  //! same group (its values, gradients and copies).
  void append_segment(const segment& s) {
    if (s.count == 0) return;
    if (!segments_.empty()) {
      segment& last = segments_.back();
      const bool copies_continue = last.out == nullptr ? s.out == nullptr : s.out == last.out + last.count;
      if (last.group == s.group && last.values + last.count == s.values && last.grads + last.count == s.grads && copies_continue) {
        last.count += s.count;
        return;
      }
    }
    segments_.push_back(s);
  }

  // ---- gradients ---------------------------------------------------------------------------

  void check_usable() const {
    if (broken_)
      throw communicator_error("zero: the optimizer on rank " + std::to_string(rank_) +
                               " is unusable after an earlier failure of a collective (" + broken_reason_ +
                               "); build a new communicator and engine, or load a checkpoint into them");
  }

  //! Runs f; a failure inside a collective leaves the ranks out of step, so the engine refuses
  //! further use.
  template <class F>
  void guarded(F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      broken_ = true;
      try {
        broken_reason_ = e.what();
      } catch (...) {  // out of memory: the refusal goes without the reason
      }
      throw;
    } catch (...) {
      broken_ = true;
      throw;
    }
  }

  //! See the destructor. Leaks on purpose: the communicator's late writes may land any time
  //! until the process ends (or, for MPI, until MPI_Finalize).
  void keep_collective_buffers() noexcept {
    if constexpr (requires(const Comm& c) {
                    { c.abandoned_collectives() } -> std::convertible_to<bool>;
                  }) {
      if (!comm_->abandoned_collectives()) return;
      struct kept {
        decltype(ring_) ring;
        decltype(gradients_) gradients;
        decltype(slots_) slots;
        decltype(param_shard_) param_shard;
        decltype(statistics_) statistics;
        decltype(gather_pool_) gather_pool;    // stage 3: the broadcasts' buffers
        decltype(gather_words_) gather_words;  // and the gathers' all-gathered words
        decltype(gather_requests_) gather_requests;  // and their broadcasts in flight
      };
      try {
        new kept{std::move(ring_),       std::move(gradients_),   std::move(slots_),       std::move(param_shard_),
                 std::move(statistics_), std::move(gather_pool_), std::move(gather_words_), std::move(gather_requests_)};
      } catch (...) {  // out of memory while failing: nothing better to do than free them
      }
    }
  }

  void check_group(std::size_t group, const char* call) const {
    if (group >= group_count())
      throw usage_error(std::string("zero: ") + call + ": parameter group " + std::to_string(group) + " on rank " +
                        std::to_string(rank_) + " is out of range (" + std::to_string(group_count()) + " groups)");
  }

  //! Rule::validate, its message naming the group and the rank.
  void validate_group(std::size_t group, const hyperparameters_type& h) const {
    try {
      Rule::validate(h);
    } catch (const usage_error& e) {
      if (group_count() == 1) throw usage_error(std::string(e.what()) + " (rank " + std::to_string(rank_) + ")");
      throw usage_error(std::string(e.what()) + " (parameter group " + std::to_string(group) + ", rank " + std::to_string(rank_) + ")");
    }
  }

  void check_index(std::size_t param, const char* call) const {
    if (param >= params_.size())
      throw usage_error(std::string("zero: ") + call + ": parameter index " + std::to_string(param) + " on rank " +
                        std::to_string(rank_) + " is out of range (" + std::to_string(params_.size()) + " registered)");
  }

  //! Stage 3's own checks of the registration: the gather groups (numbered from 0, none empty,
  //! each fitting a gather buffer) and the layout options stage 3 supports.
  void validate_gather_groups(std::span<const parameter<param_type>> params) {
    const std::string where = " on rank " + std::to_string(rank_);
    const auto& l = options_.layout;
    if (l.gather_buffers < 1) throw usage_error("zero: layout.gather_buffers is 0" + where + "; stage 3 needs >= 1");
    if (l.order == gradient_order::learned)
      throw usage_error("zero: layout.order is gradient_order::learned" + where +
                        "; stage 3 lays the parameters out at construction: use reverse, registration or given");
    if (l.read_gradients_in_update)
      throw usage_error("zero: layout.read_gradients_in_update" + where + " is for stage 2 at one rank, not stage 3");
    if (l.gather_buffer_elements > max_flat_elements / l.gather_buffers)
      throw usage_error("zero: layout.gather_buffers x layout.gather_buffer_elements" + where + " is " +
                        std::to_string(l.gather_buffers) + " x " + std::to_string(l.gather_buffer_elements) +
                        ", more elements than a buffer may hold (2^56)");
    std::size_t groups = 0;
    for (std::size_t q = 0; q < params.size(); ++q) {
      if (params[q].gather_group >= params.size())  // (groups are numbered from 0 with none empty)
        throw usage_error("zero: parameter " + engine::describe_parameter(names_, q) + where + " is in gather group " +
                          std::to_string(params[q].gather_group) + ", but there are " + std::to_string(params.size()) +
                          " parameters: number the groups 0, 1, ... with none empty");
      groups = std::max<std::size_t>(groups, std::size_t{params[q].gather_group} + 1);
    }
    std::vector<std::size_t> elements(groups, 0);
    for (const auto& p : params) elements[p.gather_group] += p.values.size;
    for (std::size_t g = 0; g < groups; ++g) {
      if (elements[g] == 0)
        throw usage_error("zero: gather group " + std::to_string(g) + where + " has no parameters (groups " +
                          std::to_string(groups) + " in all: number them 0, 1, ... with none empty)");
      if (elements[g] > l.gather_buffer_elements)
        throw usage_error("zero: gather group " + std::to_string(g) + where + " has " + std::to_string(elements[g]) +
                          " elements, more than a gather buffer holds (layout.gather_buffer_elements = " +
                          std::to_string(l.gather_buffer_elements) + ")");
    }
    for (std::size_t i = 0; i < l.gather_order.size(); ++i)
      if (l.gather_order[i] >= groups)
        throw usage_error("zero: layout.gather_order[" + std::to_string(i) + "]" + where + " is group " +
                          std::to_string(l.gather_order[i]) + ", but there are " + std::to_string(groups) + " gather groups");
    gather_group_.clear();
    for (const auto& p : params) gather_group_.push_back(p.gather_group);
    gather_runs_.assign(groups, {});
  }

  //! Stage 3: where each parameter lies in its group's gather buffer (the group's parameters
  //! back to back in layout order), and each group's runs: the pieces of its parameters, merged
  //! where one rank's shard and the buffer both continue, so that a group contiguous in the
  //! layout takes one broadcast per rank whose shard it crosses.
  void build_gather_runs() {
    const std::size_t groups = gather_runs_.size();
    std::vector<std::size_t> filled(groups, 0);
    gather_at_.assign(sizes_.size(), 0);
    for (std::size_t p : plan_.order()) {
      gather_at_[p] = filled[gather_group_[p]];
      filled[gather_group_[p]] += sizes_[p];
    }
    std::vector<owned_piece> pieces(index_.pieces.begin(), index_.pieces.end());
    std::sort(pieces.begin(), pieces.end(), [&](const owned_piece& a, const owned_piece& b) {
      const std::size_t at_a = gather_at_[a.param] + a.param_offset, at_b = gather_at_[b.param] + b.param_offset;
      return gather_group_[a.param] != gather_group_[b.param] ? gather_group_[a.param] < gather_group_[b.param] : at_a < at_b;
    });
    for (auto& runs : gather_runs_) runs.clear();
    for (const owned_piece& piece : pieces) {
      auto& runs = gather_runs_[gather_group_[piece.param]];
      const std::size_t at = gather_at_[piece.param] + piece.param_offset;
      if (!runs.empty() && runs.back().owner == piece.rank && runs.back().shard_offset + runs.back().count == piece.shard_offset &&
          runs.back().at + runs.back().count == at)
        runs.back().count += piece.count;
      else
        runs.push_back({piece.rank, piece.shard_offset, at, piece.count});
    }
    std::size_t most = 0;  // the broadcasts of one group: what a buffer's requests may hold
    for (const auto& runs : gather_runs_) most = std::max(most, runs.size());
    for (auto& requests : gather_requests_) requests.reserve(most);
  }

  //! Stage 3: releases every gathered group; their numbers, or empty when none was gathered.
  std::string release_all_gathered() noexcept {
    std::string held;
    try {
      held = gathered_list();
    } catch (...) {  // out of memory: the release goes on without the names
    }
    for (std::uint32_t& g : gather_holder_)
      if (g != no_group && g != prefetching) {
        gather_slot_[g] = no_slot;
        g = no_group;
      }
    return held;
  }

  //! The gathered groups, as "3, 5".
  std::string gathered_list() const {
    std::string list;
    for (std::uint32_t g : gather_holder_)
      if (g != no_group && g != prefetching) list += (list.empty() ? "" : ", ") + std::to_string(g);
    return list;
  }

  //! Why this rank cannot gather group `g` now (empty: it can). `hit`: g was prefetched.
  std::string gather_refusal(std::uint32_t g, bool hit) const {
    const auto call = [&] { return "zero: gather(" + std::to_string(g) + ") on rank " + std::to_string(rank_) + ": "; };
    if (g >= gather_runs_.size()) return call() + "there are " + std::to_string(gather_runs_.size()) + " gather groups";
    if (gathered(g)) return call() + "the group is gathered already (release it before gathering it again)";
    if (hit || free_gather_buffers() + prefetch_.size() > 0) return {};  // a gather off the order frees the prefetched
    return call() + "all " + std::to_string(gather_holder_.size()) + " gather buffers hold groups (" + gathered_list() +
           "); release one first, or set layout.gather_buffers higher";
  }

  //! After every rank's word of `gather(g)` is in: a refusal anywhere, or another group
  //! anywhere, is an error on every rank.
  void check_gather_agreement(std::uint32_t g, const std::string& refusal) const {
    if (!refusal.empty()) throw usage_error(refusal);
    for (int r = 0; r < world_; ++r)
      if (gather_words_[static_cast<std::size_t>(r)] & refused_bit)
        throw mismatch_error("zero: gather(" + std::to_string(g) + ") on rank " + std::to_string(rank_) + ": rank " +
                             std::to_string(r) + " could not gather group " +
                             std::to_string(gather_words_[static_cast<std::size_t>(r)] & group_bits) +
                             " (its usage_error says why); no rank gathered");
    for (int r = 0; r < world_; ++r)
      if ((gather_words_[static_cast<std::size_t>(r)] & group_bits) != g)
        throw mismatch_error("zero: ranks gather different groups: rank " + std::to_string(r) + " gathers group " +
                             std::to_string(gather_words_[static_cast<std::size_t>(r)] & group_bits) + ", rank " +
                             std::to_string(rank_) + " gathers group " + std::to_string(g) +
                             " (every rank gathers the same groups in the same order)");
  }

  std::size_t free_gather_buffers() const noexcept {
    return static_cast<std::size_t>(std::count(gather_holder_.begin(), gather_holder_.end(), no_group));
  }
  //! The first free gather buffer. @pre there is one
  std::size_t free_gather_buffer() const noexcept {
    return static_cast<std::size_t>(std::find(gather_holder_.begin(), gather_holder_.end(), no_group) - gather_holder_.begin());
  }

  //! Where the gather order goes on after a gather of `g`: just past its next place in the
  //! order (from the cursor on, else from the start); the order's end when g is not in it.
  std::size_t order_cursor_after(std::uint32_t g) const noexcept {
    const std::size_t n = gather_order_.size(), from = std::min(order_cursor_, n);
    for (std::size_t i = from; i < n; ++i)
      if (gather_order_[i] == g) return i + 1;
    for (std::size_t i = 0; i < from; ++i)
      if (gather_order_[i] == g) return i + 1;
    return n;
  }

  //! How many of the groups after `g` in the order this rank can prefetch now (every rank
  //! prefetches the least of the ranks' counts): each must be in no buffer, neither gathered
  //! by the framework nor prefetched, and take a free buffer, up to `layout.prefetch_groups`
  //! in flight. `hit`: g was prefetched; `cursor`: the order's place after g.
  std::uint64_t prefetchable(std::uint32_t g, bool hit, std::size_t cursor) const noexcept {
    const std::size_t depth = options_.layout.prefetch_groups;
    const std::size_t kept = hit ? prefetch_.size() - 1 : 0;  // at order places cursor, cursor + 1, ...
    // a hit takes its own buffer; a miss frees the prefetched ones and takes one
    const std::size_t free = free_gather_buffers() + (hit ? 0 : prefetch_.size() - 1);
    std::size_t count = 0;
    for (std::size_t at = cursor + kept; at < gather_order_.size() && kept + count < depth && count < free; ++at, ++count) {
      const std::uint32_t c = gather_order_[at];
      if (c == g || gathered(c) || std::find(gather_order_.begin() + static_cast<std::ptrdiff_t>(cursor),
                                             gather_order_.begin() + static_cast<std::ptrdiff_t>(at), c) !=
                                       gather_order_.begin() + static_cast<std::ptrdiff_t>(at))
        break;
    }
    return std::min<std::uint64_t>(count, 0x7fffffff);
  }

  //! Starts gathering group g into gather buffer `slot`: the owner of each run converts its
  //! part of the shard into the buffer and broadcasts it (started where the communicator can).
  void start_group_gather(std::uint32_t g, std::size_t slot) {
    param_type* buffer = gather_pool_.data() + slot * options_.layout.gather_buffer_elements;
    auto& requests = gather_requests_[slot];
    for (const gather_run& run : gather_runs_[g]) {
      if (run.owner == rank_) backend_.convert(buffer + run.at, param_shard_.data() + run.shard_offset, run.count);
      if (world_ > 1) {
        request_type request{};
        if (collectives::broadcast(*comm_, buffer + run.at, run.count, run.owner, &request)) requests.push_back(std::move(request));
      }
    }
  }
  //! Waits for what `start_group_gather` left in flight into buffer `slot`.
  void finish_group_gather(std::size_t slot) {
    auto& requests = gather_requests_[slot];
    for (auto& request : requests) request.wait();
    requests.clear();
  }
  //! Completes and forgets every prefetched group (its buffer is free again).
  void drop_prefetched() {
    for (const auto& p : prefetch_) {
      finish_group_gather(p.slot);
      gather_holder_[p.slot] = no_group;
    }
    prefetch_.clear();
  }
  //! Stage 3 at the step: the prefetched groups are dropped (the update makes them stale), and
  //! the gathers of this step become the order of the next (unless one is given).
  void end_gather_step() {
    drop_prefetched();
    if (options_.layout.gather_order.empty()) {
      gather_order_.swap(gathers_seen_);
      gathers_seen_.clear();
    }
    order_cursor_ = 0;
  }
  //! The gathers of one step remembered as the next step's order, at most.
  std::size_t max_remembered_gathers() const noexcept { return std::max<std::size_t>(4096, 64 * gather_runs_.size()); }

  void count_report(std::size_t param) const {
    if (!schedule_.accepts_report(param))
      throw usage_error("zero: gradient of parameter " + name_of(param) + " on rank " + std::to_string(rank_) +
                        " reported " + std::to_string(schedule_.reports(param) + 1) + " times in one micro-step; it was registered with " +
                        std::to_string(expected_reports_[param]) +
                        " report(s) (set parameter::reports to the number of uses of a shared weight)");
  }

  //! Whether reported gradients are reduced unit by unit while backward runs (stage 2, the
  //! layout fixed).
  bool streaming() const noexcept { return !local_accumulation_ && !learning_ && !reads_gradients_in_update(); }

  //! Whether the reported gradients wait for the step, where the update may read them
  //! (`layout.read_gradients_in_update` at one rank on the host).
  bool reads_gradients_in_update() const noexcept {
    return Stage == stage::stage2 && backend_type::host_accessible && options_.layout.read_gradients_in_update && world_ == 1 &&
           !local_accumulation_;
  }

  //! Whether this step's update reads the framework's gradients where they are
  //! (`reads_gradients_in_update`, and nothing that needs them summed, checked or scaled first).
  bool direct_step() const {
    if constexpr (!elementwise_rule<Rule>) return false;
    if (!reads_gradients_in_update() || learning_ || micro_steps_ != 1 || check_nonfinite_ || skip_unreported_ ||
        options_.gradient_predivide_factor != 1)
      return false;
    for (std::size_t p = 0; p < params_.size(); ++p) {
      int records = 0;
      records_.for_each(p, [&](const grad_type*, bool) { ++records; });
      if (records > 1) return false;  // summed first
    }
    return true;
  }

  //! The update's runs over the framework's gradients (`direct_step`): the element-wise runs in
  //! the same order, cut where an owned piece starts or ends; a piece not reported and the padding
  //! read zeros. The norm's blocks and lanes do not depend on the cuts, so the step is bitwise
  //! the step through the gradient buffer.
  void build_direct_runs() {
    std::fill(direct_grads_.begin(), direct_grads_.end(), nullptr);
    for (std::size_t i = 0; i < records_.size(); ++i) direct_grads_[records_.param(i)] = records_.data(i);
    direct_runs_.clear();
    auto next = by_shard_.begin();
    for (const auto& s : segments_) {
      for (std::size_t at = s.state_offset, end = s.state_offset + s.count; at < end;) {
        while (next != by_shard_.end() && owned_[*next].shard_offset + owned_[*next].count <= at) ++next;
        std::size_t cut = end;
        const grad_type* grads = nullptr;
        if (next != by_shard_.end() && owned_[*next].shard_offset <= at) {
          const owned_piece& piece = owned_[*next];
          cut = std::min(end, piece.shard_offset + piece.count);
          if (const grad_type* g = direct_grads_[piece.param]) grads = g + piece.param_offset + (at - piece.shard_offset);
        } else if (next != by_shard_.end()) {
          cut = std::min(end, owned_[*next].shard_offset);
        }
        if (grads == nullptr) {  // zeros, a chunk at a time
          cut = std::min(cut, at + zero_chunk);
          grads = zero_gradients().data();
        }
        const std::size_t d = at - s.state_offset;
        direct_runs_.push_back({s.values + d, grads, at, s.out == nullptr ? nullptr : s.out + d, cut - at, s.group});
        at = cut;
      }
    }
  }

  static constexpr std::size_t zero_chunk = 1u << 14;
  static const std::array<grad_type, zero_chunk>& zero_gradients() noexcept {
    static const std::array<grad_type, zero_chunk> zeros{};
    return zeros;
  }

  //! Sizes what `build_direct_runs` fills, so that a step allocates nothing.
  void prepare_direct_runs() {
    if (!reads_gradients_in_update()) return;
    direct_grads_.assign(params_.size(), nullptr);
    by_shard_.resize(owned_.size());
    for (std::size_t q = 0; q < owned_.size(); ++q) by_shard_[q] = q;
    std::sort(by_shard_.begin(), by_shard_.end(), [&](std::size_t a, std::size_t b) { return owned_[a].shard_offset < owned_[b].shard_offset; });
    direct_runs_.clear();
    // a run ends where a segment or an owned piece ends, where a piece starts, or a chunk into a
    // stretch of zeros (one per gap, which ends where a piece starts or a segment ends, plus a
    // run per chunk of the zeros in all)
    direct_runs_.reserve(2 * segments_.size() + 3 * owned_.size() + updated_count() / zero_chunk + 1);
  }

  //! Notes the first non-finite gradient this rank saw this step (checked before reduction).
  template <class T>
  void check_finite(std::size_t param, const T* data, std::size_t n) {
    if (check_nonfinite_) backend_.check_finite(param, data, n);
  }

  //! Stages 0 and 1 (and stage 2 with deferred reduction): add a gradient into the full buffer.
  void accumulate(std::size_t param, const grad_type* from) {
    const std::size_t n = sizes_[param];
    check_finite(param, from, n);
    backend_.add(gradients_.data() + plan_.param_offset[param], from, n);
  }

  //! Tells the framework what was released during the call (after the engine's reads of it are
  //! enqueued: a device engine records its release event first).
  void notify_released() {
    if (released_.empty()) return;
    if constexpr (requires(backend_type& b) { b.mark_released(); }) backend_.mark_released();
    if (options_.on_gradients_released) {
      try {
        options_.on_gradients_released(std::span<const std::size_t>(released_));
      } catch (...) {
        released_.clear();
        throw;
      }
    }
    released_.clear();
  }

  // ---- unreported_gradients::skip -----------------------------------------------------------

  //! Notes that this rank reported `param` this step (under `skip`).
  void note_reported(std::size_t param) noexcept {
    if (skip_unreported_) reported_mine_[param / 64] |= std::uint64_t{1} << (param % 64);
  }

  //! Whether any rank reported `param` this step (after `agree_on_reports`).
  bool reported_anywhere(std::size_t param) const noexcept {
    return ((reported_union_[param / 64] >> (param % 64)) & 1u) != 0;
  }

  //! Every rank's report bitmap (one all-gather of a word per 64 parameters), and their union:
  //! the parameters this step updates, the same on every rank. Collective.
  void agree_on_reports() {
    const std::size_t words = reported_mine_.size();
    backend_.all_gather_words(*comm_, reported_mine_.data(), reported_all_.data(), words);
    std::fill(reported_union_.begin(), reported_union_.end(), std::uint64_t{0});
    for (int r = 0; r < world_; ++r)
      for (std::size_t i = 0; i < words; ++i) reported_union_[i] |= reported_all_[static_cast<std::size_t>(r) * words + i];
  }

  //! The update of this step under `skip`: the constants of each (group, own step) pair among
  //! the reported parameters this rank holds pieces of; and the runs. When every parameter this
  //! rank holds was reported and each group's parameters have one own step, the layout's runs
  //! with one constants object per group (`layout_runs_`); else the runs of the reported
  //! parameters' pieces only, cut where the constants change, in batches of at most
  //! `max_groups` constants. Prepares the backend for the norm (the runs of the only batch, or
  //! the layout's when there are several).
  void plan_skip_update() {
    keys_.clear();
    bool every_one = true;
    for (const auto& piece : owned_) {
      if (!reported_anywhere(piece.param)) {
        every_one = false;
        continue;
      }
      keys_.emplace_back(group_of_[piece.param], param_steps_[piece.param] + 1);
    }
    std::sort(keys_.begin(), keys_.end());
    keys_.erase(std::unique(keys_.begin(), keys_.end()), keys_.end());
    bool one_step_per_group = true;
    for (std::size_t i = 1; i < keys_.size(); ++i)
      if (keys_[i].first == keys_[i - 1].first) one_step_per_group = false;
    constants_.clear();
    layout_runs_ = every_one && one_step_per_group;
    if (layout_runs_) {
      std::size_t k = 0;
      for (std::size_t g = 0; g < group_count(); ++g) {
        const bool held = k < keys_.size() && keys_[k].first == g;
        constants_.push_back(Rule::prepare(options_.group(g), held ? keys_[k].second : step_ + 1));
        if (held) ++k;
      }
      ensure_prepared(segments_, piece_segments_);
      return;
    }
    for (const auto& key : keys_) constants_.push_back(Rule::prepare(options_.group(key.first), key.second));
    // the reported pieces, by key (then by where they are)
    active_.clear();
    for (std::size_t q = 0; q < owned_.size(); ++q) {
      const std::size_t p = owned_[q].param;
      if (!reported_anywhere(p)) continue;
      const std::pair<std::uint32_t, std::uint64_t> key{group_of_[p], param_steps_[p] + 1};
      active_.push_back({static_cast<std::size_t>(std::lower_bound(keys_.begin(), keys_.end(), key) - keys_.begin()), q});
    }
    std::sort(active_.begin(), active_.end(), [&](const active_piece& a, const active_piece& b) {
      return a.key != b.key ? a.key < b.key : piece_segments_[a.owned].state_offset < piece_segments_[b.owned].state_offset;
    });
    reported_runs_.clear();
    reported_pieces_.clear();
    batches_.clear();
    const std::size_t per_batch = max_groups;  // constants one backend update takes
    for (const auto& a : active_) {
      if (batches_.empty() || a.key >= batches_.back().first_key + per_batch)
        batches_.push_back({a.key / per_batch * per_batch, reported_runs_.size(), reported_runs_.size(), reported_pieces_.size(),
                            reported_pieces_.size()});
      update_batch& b = batches_.back();
      segment s = piece_segments_[a.owned];
      s.group = static_cast<std::uint32_t>(a.key - b.first_key);  // an index into the batch's constants
      reported_pieces_.push_back(s);
      ++b.pieces_end;
      if (b.runs_end > b.runs_begin) {  // continues the last run with the same constants: one run
        segment& last = reported_runs_.back();
        if (last.group == s.group && last.values + last.count == s.values && last.grads + last.count == s.grads &&
            ((last.out == nullptr && s.out == nullptr) || (last.out != nullptr && last.out + last.count == s.out))) {
          last.count += s.count;
          continue;
        }
      }
      reported_runs_.push_back(s);
      ++b.runs_end;
    }
    if (batches_.size() == 1) prepare_batch(batches_[0]);
    else if (batches_.size() > 1) ensure_prepared(segments_, piece_segments_);  // the norm: unreported gradients are zero
    // no batch: nothing of this rank is updated; whatever is prepared holds only zero gradients
  }

  std::span<const segment> batch_runs(const update_batch& b) const noexcept {
    return std::span<const segment>(reported_runs_).subspan(b.runs_begin, b.runs_end - b.runs_begin);
  }
  std::span<const segment> batch_pieces(const update_batch& b) const noexcept {
    return std::span<const segment>(reported_pieces_).subspan(b.pieces_begin, b.pieces_end - b.pieces_begin);
  }
  std::span<const typename Rule::constants> batch_constants(const update_batch& b) const noexcept {
    return std::span<const typename Rule::constants>(constants_).subspan(b.first_key, std::min<std::size_t>(max_groups, constants_.size() - b.first_key));
  }
  void prepare_batch(const update_batch& b) { ensure_prepared(batch_runs(b), batch_pieces(b)); }

  //! Prepares the backend for these runs and pieces unless it is prepared for them already (a
  //! device backend builds its tables anew: only when the reported set or the counts change).
  void ensure_prepared(std::span<const segment> runs, std::span<const segment> pieces) {
    auto same = [](std::span<const segment> a, std::span<const segment> b) {
      if (a.size() != b.size()) return false;
      for (std::size_t i = 0; i < a.size(); ++i)
        if (a[i].values != b[i].values || a[i].grads != b[i].grads || a[i].state_offset != b[i].state_offset ||
            a[i].out != b[i].out || a[i].count != b[i].count || a[i].group != b[i].group)
          return false;
      return true;
    };
    if (same(runs, prepared_runs_) && same(pieces, prepared_pieces_)) return;
    prepare_backend(runs, pieces);
  }

  //! The update of the reported parameters' pieces only (`plan_skip_update`), batch by batch.
  void update_reported(float factor, double* sum_of_squares) {
    const std::size_t id_base = sharded ? static_cast<std::size_t>(rank_) * plan_.shard_size : 0;
    const auto round = step_rounding();
    const bool several = batches_.size() > 1;
    if constexpr (elementwise_rule<Rule>) {
      double sum = 0;
      for (const auto& b : batches_) {
        if (several) prepare_batch(b);
        sum += backend_.template update<Rule>(batch_constants(b), batch_runs(b), factor, round, id_base, sum_of_squares != nullptr);
      }
      if (sum_of_squares != nullptr) *sum_of_squares = sum;
    } else {
      std::fill(tensor_sums_.begin(), tensor_sums_.end(), 0.0);
      for (const auto& b : batches_) {
        if (several) prepare_batch(b);
        backend_.template tensor_sums<Rule>(batch_constants(b), batch_pieces(b), factor, piece_sums_.data() + 2 * b.pieces_begin);
      }
      for (std::size_t q = 0; q < active_.size(); ++q) {
        const std::size_t param = owned_[active_[q].owned].param;
        tensor_sums_[2 * param] += piece_sums_[2 * q];
        tensor_sums_[2 * param + 1] += piece_sums_[2 * q + 1];
      }
      // collective: every rank takes part, whatever it holds (an unreported tensor's sums are 0 everywhere)
      if constexpr (sharded) backend_.all_reduce_sums(*comm_, tensor_sums_.data(), tensor_sums_.size());
      for (std::size_t q = 0; q < active_.size(); ++q) {
        const std::size_t param = owned_[active_[q].owned].param;
        trust_[q] = Rule::tensor_factor(constants_[active_[q].key], {tensor_sums_[2 * param], tensor_sums_[2 * param + 1]});
      }
      for (const auto& b : batches_) {
        if (several) prepare_batch(b);
        backend_.template tensor_update<Rule>(batch_constants(b), batch_pieces(b), trust_.data() + b.pieces_begin, round, id_base);
      }
    }
  }

  // ---- reduction units: packing, launching, taking out ---------------------------------------

  //! Whether the gradient shard receives unit reductions directly: it has the communication
  //! type and holds nothing yet this step.
  bool reduces_directly() const noexcept {
    return std::is_same_v<comm_type, accum_type> && Stage == stage::stage2 && !local_accumulation_ && micro_steps_ == 1;
  }

  //! Where unit k is packed: its staging buffer, or (a group of one reducing directly) the
  //! gradient shard itself, reduced in place with no copy at all.
  comm_type* pack_target(std::size_t k) const noexcept {
    if constexpr (std::is_same_v<comm_type, accum_type>)
      if (world_ == 1 && reduces_directly()) return gradients_.data() + plan_.units[k].shard_begin;
    return ring_.template data<comm_type>(ring_.buffer_of(k));
  }

  //! Copy on report: the current report of `param` goes into the staging buffers of its units
  //! that are open or may open now (the next `staging_buffers` units); a unit further ahead
  //! keeps the report recorded until it opens. Releases `param` if nothing of it is left.
  void take_in(std::size_t param) {
    const bool first = schedule_.reports(param) == 1;
    const grad_type* data = records_.data(records_.size() - 1);
    std::size_t done_unit = none;
    for (std::size_t i : index_.pieces_of(param)) {
      const owned_piece& piece = index_.pieces[i];
      const std::size_t k = piece.unit;
      if (k >= schedule_.next_unit() + ring_.buffers()) break;  // its buffer is still another unit's
      if (k >= schedule_.opened_end()) {
        while (schedule_.opened_end() <= k) open_unit(schedule_.opened_end());  // packs this report too
        done_unit = k;
        continue;
      }
      if (k == done_unit) continue;
      const auto& u = plan_.units[k];
      comm_type* to = pack_target(k) + u.buffer_index(piece.rank, piece.shard_offset - u.shard_begin);
      if (first) backend_.convert(to, data + piece.param_offset, piece.count);
      else backend_.add(to, data + piece.param_offset, piece.count);
    }
    schedule_.release_if_consumed(param, released_);
  }

  //! Launches every unit that is complete, in unit order, and lets the communicator move what
  //! is in flight.
  void advance() {
    if (schedule_.next_ready()) {
      const auto start = std::chrono::steady_clock::now();
      while (schedule_.next_ready()) launch_unit(schedule_.next_unit());
      reduce_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    if constexpr (pipelined)
      if (ring_.buffers() > 1 || !prefetch_.empty()) comm_->progress();
  }

  //! Opens unit k (the next unit not yet opened): waits for its staging buffer, then packs into
  //! it every contribution reported so far (rank-major slices, comm type; local accumulation:
  //! the rank slices of the full buffer). Releases the gradients read for the last time.
  void open_unit(std::size_t k) {
    const auto& u = plan_.units[k];
    const std::size_t b = ring_.buffer_of(k);
    ring_.complete(b, taker());
    comm_type* target = pack_target(k);
    if (local_accumulation_) {
      for (int r = 0; r < world_; ++r)
        if (u.held_by(r)) backend_.convert(target + u.buffer_index(r, 0), gradients_.data() + u.flat_index(r, 0), u.slice);
    } else {
      // a reported piece is converted over whatever the buffer held; only the rest (parameters
      // not reported yet, padding) is filled with zeros. The pieces lie in buffer order (by
      // rank, then offset), so the rest is the gaps between the reported ones.
      std::size_t zero_from = 0;
      for (const auto& piece : index_.pieces_of_unit(k)) {
        const std::size_t at = u.buffer_index(piece.rank, piece.shard_offset - u.shard_begin);
        bool reported = false;
        records_.for_each(piece.param, [&](const grad_type* data, bool first) {
          if (first) backend_.convert(target + at, data + piece.param_offset, piece.count);
          else backend_.add(target + at, data + piece.param_offset, piece.count);
          reported = true;
        });
        if (!reported) continue;
        if (at > zero_from) backend_.fill(target + zero_from, at - zero_from, comm_type(0.0f));
        zero_from = at + piece.count;
      }
      if (u.elements(world_) > zero_from) backend_.fill(target + zero_from, u.elements(world_) - zero_from, comm_type(0.0f));
    }
    ring_.fill(b, k);
    schedule_.note_opened(released_);
  }

  //! Launches unit k (the next unit): opens it if it is not yet, checks its pieces for
  //! non-finite values (in reduction order), divides by the predivide factor, and starts its
  //! collective (stage 0: all-reduce; stages 1, 2: to the ranks holding it, see
  //! unit_collectives.hpp), or runs it and takes its result out.
  void launch_unit(std::size_t k) {
    if (schedule_.opened_end() <= k) open_unit(k);
    const auto& u = plan_.units[k];
    const std::size_t b = ring_.buffer_of(k);
    comm_type* buffer = pack_target(k);
    if (!local_accumulation_)
      for (const auto& piece : index_.pieces_of_unit(k))
        check_finite(piece.param, buffer + u.buffer_index(piece.rank, piece.shard_offset - u.shard_begin), piece.count);
    if (options_.gradient_predivide_factor != 1)
      backend_.scale(buffer, u.elements(world_), static_cast<float>(1.0 / options_.gradient_predivide_factor));
    comm_type* result = nullptr;
    if (u.held_by(rank_)) {
      if constexpr (std::is_same_v<comm_type, accum_type>)
        if (reduces_directly()) result = gradients_.data() + u.shard_begin;
      if (result == nullptr) result = buffer + u.buffer_index(rank_, 0);
    }
    request_type request{};
    const bool may_start = pipelined && ring_.buffers() > 1;
    const auto out = collectives::reduce(*comm_, u, world_, rank_, Stage == stage::stage0, buffer, result,
                                         may_start ? &request : nullptr);
    const bool direct = out.in_result && result != nullptr && result != buffer + u.buffer_index(rank_, 0);
    if (out.started) ring_.start(b, k, engine::flight_kind::reduction, std::move(request), direct);
    else ring_.finish(b, k, engine::flight_kind::reduction, direct, taker());
    schedule_.note_launched();
  }

  //! Stores unit k's completed reduction (in buffer b): into the full buffer (stage 0: every
  //! rank's slices; local accumulation: this rank's), or into or added to the gradient shard
  //! (stage 2, per micro-step).
  void take_reduction(std::size_t k, std::size_t b) {
    const auto& u = plan_.units[k];
    const comm_type* buffer = pack_target(k);
    if constexpr (Stage == stage::stage0) {
      for (int r = 0; r < world_; ++r)
        if (u.held_by(r)) backend_.convert(gradients_.data() + u.flat_index(r, 0), buffer + u.buffer_index(r, 0), u.slice);
    } else {
      if (!u.held_by(rank_) || ring_.direct(b)) return;  // nothing of it is ours, or already in the shard
      const comm_type* mine = buffer + u.buffer_index(rank_, 0);
      if (static_cast<const void*>(mine) == static_cast<const void*>(gradients_.data() + u.shard_begin)) return;  // reduced in place
      if (local_accumulation_) backend_.convert(gradients_.data() + u.flat_index(rank_, 0), mine, u.slice);
      else if (micro_steps_ == 1) backend_.convert(gradients_.data() + u.shard_begin, mine, u.slice);  // shard empty so far
      else backend_.add(gradients_.data() + u.shard_begin, mine, u.slice);
    }
  }

  auto taker() {
    return [this](std::size_t k, engine::flight_kind kind, std::size_t b) {
      if (kind == engine::flight_kind::gather) scatter_unit(k, b);
      else take_reduction(k, b);
    };
  }

  //! Launches every unit not yet launched (a unit still waiting for gradients gets what was
  //! reported: a parameter never reported counts as zero) and waits for all of them.
  void reduce_remaining_units() {
    while (schedule_.next_unit() < schedule_.units()) launch_unit(schedule_.next_unit());
    ring_.complete_all(taker());
    schedule_.start_micro_step();
  }

  //! Ends a micro-step: learns the layout order if it is pending; takes the slots or records
  //! in (local accumulation) or reduces the units not yet reduced (stage 2); releases every
  //! reported gradient and forgets the reports.
  void finish_micro_step() {
    if (learning_) learn_order();
    if (local_accumulation_) {
      if (options_.layout.gradient_slots) {
        for (std::size_t p = 0; p < params_.size(); ++p)
          if (schedule_.reports(p) != 0) accumulate(p, slots_.data() + slot_offset_[p]);
      } else {
        for (std::size_t i = 0; i < records_.size(); ++i) accumulate(records_.param(i), records_.data(i));  // learned order's first micro-step
      }
    } else {
      while (schedule_.next_unit() < schedule_.units()) launch_unit(schedule_.next_unit());
      ring_.complete_all(taker());
    }
    schedule_.release_all_reported(released_);
    forget_reports();
  }

  //! Forgets the micro-step's reports and records and clears the slots: every parameter may be
  //! reported again.
  void forget_reports() {
    records_.clear();
    schedule_.start_micro_step();
    slots_.zero();
  }

  //! The order rank 0's gradients arrived in during this first micro-step (parameters not
  //! reported in it last, in reverse registration order), taken by every rank; the layout
  //! follows it from now on. Collective.
  void learn_order() {
    const std::size_t n = sizes_.size();
    std::vector<std::size_t> order(schedule_.arrivals().begin(), schedule_.arrivals().end());
    std::vector<bool> arrived(n, false);
    for (std::size_t p : order) arrived[p] = true;
    for (std::size_t i = n; i-- > 0;)
      if (!arrived[i]) order.push_back(i);
    const std::vector<std::size_t> agreed = engine::rank0_order(gather_words(), world_, order);
    std::vector<std::uint32_t> reports(n);
    for (std::size_t p = 0; p < n; ++p) reports[p] = schedule_.reports(p);
    relayout(agreed);
    for (std::size_t p = 0; p < n; ++p)
      for (std::uint32_t r = 0; r < reports[p]; ++r) schedule_.note_report(p);
    learning_ = false;
  }

  // ---- statistics, update and all-gather ---------------------------------------------------

  //! Whether the norm must be known before the update (clipping, the overflow check, or a
  //! tensor-wise rule), rather than computed by the update pass on the way.
  bool norm_needed_before_update() const noexcept {
    return check_nonfinite_ || options_.max_grad_norm > 0 || tensorwise_rule<Rule>;
  }

  //! This rank's sum of squares of its (summed, scaled) gradients: one pass over the runs the
  //! backend was prepared with (under `skip`, those of this step's update when they are not the
  //! layout's: an unreported parameter's gradient is zero, so the sum is the same).
  double local_sum_of_squares() {
    if (skip_unreported_) return backend_.sum_of_squares(std::span<const segment>(prepared_runs_));
    return backend_.sum_of_squares(std::span<const segment>(segments_));
  }

  engine::statistics_inputs statistics_inputs() const noexcept {
    engine::statistics_inputs in;
    in.world_size = world_;
    in.rank = rank_;
    in.sharded = sharded;
    in.loss_scale = scaler_.scale();
    in.predivide_factor = options_.gradient_predivide_factor;
    in.micro_steps = micro_steps_;
    in.max_grad_norm = options_.max_grad_norm;
    in.skip_nonfinite = check_nonfinite_;
    return in;
  }

  //! One all-gather of `statistics_words` words per rank; every rank decides the same norm,
  //! overflow and clip factor from them (step_statistics.hpp).
  step_report exchange_statistics(double sum_of_squares) {
    engine::local_statistics mine;
    mine.sum_of_squares = sum_of_squares;
    mine.first_nonfinite = !check_nonfinite_ ? none : skip_unreported_ ? noted_nonfinite_ : backend_.first_nonfinite();
    mine.micro_steps = micro_steps_;
    mine.hyperparameters = hyperparameter_digest();
    std::uint64_t words[statistics_words];
    mine.encode(words);
    backend_.all_gather_words(*comm_, words, statistics_.data(), statistics_words);
    if (engine::hyperparameters_differ(statistics_, world_) >= 0)
      throw_hyperparameter_mismatch("at step " + std::to_string(step_ + 1) +
                                    (norm_needed_before_update() ? " (nothing was updated)"
                                                                 : " (each rank had already updated what it holds with its own values)"));
    const engine::step_decision d = engine::decide(statistics_, statistics_inputs());
    step_report report;
    report.loss_scale = scaler_.scale();
    report.micro_steps = micro_steps_;
    report.grad_norm = d.grad_norm;
    report.clip_factor = d.clip_factor;
    report.skipped = d.skipped;
    report.nonfinite_rank = d.nonfinite_rank;
    if (d.nonfinite_rank >= 0) {
      report.nonfinite_parameter = d.nonfinite_parameter;
      report.nonfinite_parameter_name = d.nonfinite_parameter < names_.size() ? std::string_view(names_[d.nonfinite_parameter]) : std::string_view();
    }
    inverse_average_ = d.inverse_average;
    return report;
  }

  //! How this step rounds new values to the stored type.
  detail::value_rounding<value_type> step_rounding() const noexcept {
    return {options_.value_rounding == rounding::stochastic, options_.seed, step_};
  }

  //! @param sum_of_squares when not null, receives this rank's sum of squares of the gradients,
  //!        computed by the update pass itself
  void update_shard(float factor, double* sum_of_squares, bool direct = false) {
    if (skip_unreported_) {
      if (!layout_runs_) return update_reported(factor, sum_of_squares);  // constants_ from plan_skip_update
    } else {
      constants_.clear();  // one per group (capacity reserved at construction: no allocation)
      for (std::size_t g = 0; g < group_count(); ++g) constants_.push_back(Rule::prepare(options_.group(g), step_ + 1));
    }
    const std::span<const typename Rule::constants> c(constants_);
    const std::size_t id_base = sharded ? static_cast<std::size_t>(rank_) * plan_.shard_size : 0;
    const auto round = step_rounding();
    if constexpr (elementwise_rule<Rule>) {
      const double sum = direct ? backend_.template update<Rule>(c, std::span<const direct_segment>(direct_runs_), factor, round,
                                                                  id_base, sum_of_squares != nullptr)
                                : backend_.template update<Rule>(c, std::span<const segment>(segments_), factor, round, id_base,
                                                                  sum_of_squares != nullptr);
      if (sum_of_squares != nullptr) *sum_of_squares = sum;
    } else {
      const std::span<const segment> pieces(piece_segments_);
      // pass 1: state and the sums of every piece this rank holds, added per tensor (in piece order)
      backend_.template tensor_sums<Rule>(c, pieces, factor, piece_sums_.data());
      std::fill(tensor_sums_.begin(), tensor_sums_.end(), 0.0);
      for (std::size_t q = 0; q < owned_.size(); ++q) {
        tensor_sums_[2 * owned_[q].param] += piece_sums_[2 * q];
        tensor_sums_[2 * owned_[q].param + 1] += piece_sums_[2 * q + 1];
      }
      // a tensor split across ranks gets the sums of all its pieces
      if constexpr (sharded) backend_.all_reduce_sums(*comm_, tensor_sums_.data(), tensor_sums_.size());
      // pass 2: the update with each tensor's factor
      for (std::size_t q = 0; q < owned_.size(); ++q) {
        const std::size_t param = owned_[q].param;
        trust_[q] = Rule::tensor_factor(c[group_of_[param]], {tensor_sums_[2 * param], tensor_sums_[2 * param + 1]});
      }
      backend_.template tensor_update<Rule>(c, pieces, trust_.data(), round, id_base);
    }
  }

  //! Sends every unit's updated slices to every rank (unit_collectives.hpp) and copies them into
  //! the framework's parameters.
  void gather_parameters() {
    if (writes_parameters_directly()) return;  // the update wrote them
    const bool may_start = pipelined && ring_.buffers() > 1;
    for (std::size_t k = 0; k < plan_.units.size(); ++k) {
      const auto& u = plan_.units[k];
      const std::size_t b = ring_.buffer_of(k);
      ring_.complete(b, taker());
      request_type request{};
      const bool started = collectives::gather(*comm_, u, rank_, param_shard_.data() + u.shard_begin,
                                               ring_.template data<param_type>(b), may_start ? &request : nullptr);
      if (started) ring_.start(b, k, engine::flight_kind::gather, std::move(request), false);
      else ring_.finish(b, k, engine::flight_kind::gather, false, taker());
    }
    ring_.complete_all(taker());
  }

  //! Copies unit k's gathered slices (buffer b, or this rank's own shard) into the framework's
  //! parameters.
  void scatter_unit(std::size_t k, std::size_t b) {
    const auto& u = plan_.units[k];
    const param_type* source =
        collectives::gather_source(u, rank_, param_shard_.data() + u.shard_begin, ring_.template data<param_type>(b));
    for (const auto& piece : index_.pieces_of_unit(k)) {
      const param_type* from = source + u.buffer_index(piece.rank, piece.shard_offset - u.shard_begin);
      backend_.convert(params_[piece.param].data + piece.param_offset, from, piece.count);
    }
  }

  //! Clears what one step accumulated (after an update, and when a step is skipped). The
  //! gradient buffer is cleared only where gradients accumulate in it (stages 0 and 1, deferred
  //! reduction): streaming the first micro-step of a step writes every element of the shard
  //! (each unit's pieces converted, the rest filled with zeros, or its reduction taken out over
  //! it), so nothing of the previous step is read.
  void reset_step() {
    std::fill(reported_mine_.begin(), reported_mine_.end(), std::uint64_t{0});
    if (local_accumulation_) gradients_.zero();
    micro_steps_ = 1;
    backend_.clear_nonfinite();
  }

  Comm* comm_;
  options_type options_;
  int rank_;
  int world_;
  std::optional<Checkpointer> checkpointer_;  // built at construction by make_checkpointer
  loss_scaler scaler_;
  std::size_t state_count_ = 0;
  std::uint64_t step_ = 0;
  std::uint32_t micro_steps_ = 1;
  bool broken_ = false;
  std::string broken_reason_;       // the failure that broke the engine
  bool local_accumulation_ = true;  // gradients accumulate in a full buffer, reduced at the step
  bool learning_ = false;           // the layout order is learned at the end of this micro-step
  bool check_nonfinite_ = false;
  double inverse_average_ = 1;  // the reduced sums' factor to the average unscaled gradient, this step
  double reduce_seconds_ = 0;   // time in reductions during backward since the last step
  backend_type backend_;        // before the buffers it allocates

  partition_plan plan_;
  engine::unit_index index_;
  engine::reduction_schedule schedule_;
  engine::gradient_records<grad_type> records_;
  std::vector<std::size_t> released_;  // released during the current call, not yet told
  std::vector<std::string> names_;
  std::vector<std::size_t> sizes_;
  std::vector<raw_span<param_type>> params_;
  std::vector<std::uint32_t> expected_reports_;
  std::vector<std::uint32_t> group_of_;                 // each parameter's group
  std::vector<typename Rule::constants> constants_;     // each group's constants, this step
  std::vector<std::size_t> slot_offset_;  // each parameter's gradient slot (registration order)
  std::size_t largest_gradient_ = 0;      // the most elements one parameter's reports hold
  std::vector<owned_piece> owned_;
  std::vector<segment> segments_;        // element-wise update: merged runs
  std::vector<segment> piece_segments_;  // tensor-wise update: one run per owned piece
  std::vector<std::uint64_t> statistics_;
  std::vector<double> tensor_sums_;  // tensor-wise rules: two sums per parameter,
  std::vector<double> piece_sums_;   // two per owned piece,
  std::vector<float> trust_;         // and each owned piece's factor

  // unreported_gradients::skip (all empty otherwise)
  bool skip_unreported_ = false;
  std::size_t noted_nonfinite_ = none;          // this step's first non-finite gradient, read before planning
  std::vector<std::uint64_t> param_steps_;      // each parameter's own update count
  std::vector<std::uint64_t> reported_mine_;    // this rank's reports this step, a bit per parameter
  std::vector<std::uint64_t> reported_all_;     // every rank's bitmaps, then
  std::vector<std::uint64_t> reported_union_;   // their union: the parameters reported this step
  bool layout_runs_ = true;                     // this step updates with the layout's runs (segments_)
  std::vector<std::pair<std::uint32_t, std::uint64_t>> keys_;  // (group, own step) of this step's constants
  std::vector<active_piece> active_;     // the owned pieces of reported parameters, by key
  std::vector<segment> reported_runs_;   // their element-wise runs (merged), by key
  std::vector<segment> reported_pieces_; // one run per active piece (tensor-wise rules), by key
  std::vector<update_batch> batches_;    // at most max_groups constants each
  std::vector<segment> prepared_runs_;   // what the backend was last prepared with
  // stage 3: each gather group's runs (one broadcast each), the parameters' places in a gather
  // buffer, the pool of buffers, which group each buffer holds and where each group is
  static constexpr std::size_t no_slot = static_cast<std::size_t>(-1);
  static constexpr std::uint32_t no_group = static_cast<std::uint32_t>(-1);
  static constexpr std::uint32_t prefetching = no_group - 1;  // a buffer a prefetched group is in
  // a gather's word: the group (low 32 bits), how many groups the rank can prefetch, a refusal
  static constexpr std::uint64_t group_bits = 0xffffffffu;
  static constexpr std::uint64_t refused_bit = std::uint64_t{1} << 63;
  struct prefetched {
    std::uint32_t group;
    std::size_t slot;
  };
  struct gather_run {
    int owner = 0;                 // the rank whose shard holds the run
    std::size_t shard_offset = 0;  // where, in that shard
    std::size_t at = 0;            // where it goes in the gather buffer
    std::size_t count = 0;
  };
  std::vector<std::uint32_t> gather_group_;  // per parameter
  std::vector<std::vector<gather_run>> gather_runs_;
  std::vector<std::size_t> gather_at_;  // per parameter: its first element in its group's buffer
  typename backend_type::template buffer<param_type> gather_pool_;
  std::vector<std::uint32_t> gather_holder_;  // per gather buffer: the group in it, or no_group
  std::vector<std::size_t> gather_slot_;      // per group: its gather buffer, or no_slot
  std::vector<std::uint64_t> gather_words_;   // every rank's group, exchanged by gather()
  std::vector<std::vector<request_type>> gather_requests_;  // per gather buffer: its broadcasts in flight
  std::vector<prefetched> prefetch_;           // the groups prefetched, in order (places order_cursor_, + 1, ...)
  std::vector<std::uint32_t> gather_order_;    // the order prefetching follows (given, or the last step's)
  std::vector<std::uint32_t> gathers_seen_;    // this step's gathers (the next step's order)
  std::size_t order_cursor_ = 0;               // the place in gather_order_ after the last gather
  std::uint32_t gathers_ = 0, prefetched_gathers_ = 0;  // since the last step (step_report)
  double gather_seconds_ = 0;                            // in gather() since the last step
  std::vector<direct_segment> direct_runs_;   // a direct step's update (build_direct_runs)
  std::vector<const grad_type*> direct_grads_;  // each parameter's reported gradient (a direct step)
  std::vector<std::size_t> by_shard_;          // owned_ indices in shard order
  std::vector<segment> prepared_pieces_;

  typename backend_type::template buffer<value_type> master_;
  typename backend_type::template buffer<float> state_;
  typename backend_type::template buffer<accum_type> gradients_;
  typename backend_type::template buffer<grad_type> slots_;
  typename backend_type::template buffer<param_type> param_shard_;
  std::size_t staging_capacity_ = 0;  // elements of one staging buffer
  engine::staging_ring<byte_buffer, request_type> ring_;
};

namespace detail {

// What kind of policy a type is, one predicate per policy concept.
struct precision_kind {
  template <class T>
  static constexpr bool test = precision_bundle<T>;
};
struct rule_kind {
  template <class T>
  static constexpr bool test = update_rule<T>;
};
struct partitioner_kind {
  template <class T>
  static constexpr bool test = partitioner<T>;
};
struct communicator_kind {
  template <class T>
  static constexpr bool test = communicator<T>;
};
struct checkpointer_kind {
  template <class T>
  static constexpr bool test = activation_checkpointer<T>;
};

//! The first of `Ps` of kind `Kind` (`Default` when none is), and how many are.
template <class Kind, class Default, class... Ps>
struct first_of_kind {
  using type = Default;
  static constexpr int count = 0;
};
template <class Kind, class Default, class P, class... Ps>
struct first_of_kind<Kind, Default, P, Ps...> {
  using rest = first_of_kind<Kind, Default, Ps...>;
  using type = std::conditional_t<Kind::template test<P>, P, typename rest::type>;
  static constexpr int count = (Kind::template test<P> ? 1 : 0) + rest::count;
};

template <class P>
inline constexpr int kinds_of = int{precision_kind::test<P>} + int{rule_kind::test<P>} + int{partitioner_kind::test<P>} +
                                int{communicator_kind::test<P>} + int{checkpointer_kind::test<P>};

template <stage Stage, class... Policies>
struct compose_optimizer {
  static_assert(((kinds_of<Policies> == 1) && ...),
                "zero::optimizer_with: one of the policies is none of a precision bundle, an update rule, a partitioner, a "
                "communicator and an activation checkpointer (name it in its place in zero::optimizer<Stage, Precision, Rule, "
                "Partitioner, Comm, Checkpointer> to learn which part of its concept it misses)");
  using precision = first_of_kind<precision_kind, bf16_mixed, Policies...>;
  using rule = first_of_kind<rule_kind, adamw, Policies...>;
  using parts = first_of_kind<partitioner_kind, contiguous_partitioner, Policies...>;
  using comm = first_of_kind<communicator_kind, thread_communicator, Policies...>;
  using checkpointer = first_of_kind<checkpointer_kind, passthrough_checkpointer, Policies...>;
  static_assert(precision::count <= 1, "zero::optimizer_with: two precision bundles given");
  static_assert(rule::count <= 1, "zero::optimizer_with: two update rules given");
  static_assert(parts::count <= 1, "zero::optimizer_with: two partitioners given");
  static_assert(comm::count <= 1, "zero::optimizer_with: two communicators given");
  static_assert(checkpointer::count <= 1, "zero::optimizer_with: two activation checkpointers given");
  using type = optimizer<Stage, typename precision::type, typename rule::type, typename parts::type, typename comm::type,
                         typename checkpointer::type>;
};

}  // namespace detail

//! The optimizer with the policies named in any order, each recognized by its concept, and
//! the defaults for the others (bf16_mixed, adamw, contiguous_partitioner, thread_communicator,
//! passthrough_checkpointer): `zero::optimizer_with<zero::stage2, zero::mpi_communicator>`,
//! `zero::optimizer_with<zero::stage2, zero::bucketed_partitioner, zero::fp32_precision>`.
template <stage Stage, class... Policies>
using optimizer_with = typename detail::compose_optimizer<Stage, Policies...>::type;

}  // namespace zero
