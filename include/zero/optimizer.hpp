#pragma once
//! @file optimizer.hpp
//! `zero::optimizer`: the four policies composed into one ZeRO engine, on the host.
//!
//! One step (see docs/design.md):
//!  1. The framework reports each parameter's gradient (`gradient_ready`), in any order, over
//!     one or more micro-steps (`end_micro_step()` between them). Stages 0 and 1 add it into a
//!     full accumulation buffer. Stage 2 reduces the gradients unit by unit (constant-size
//!     reduce-scatters, in unit order on every rank) as soon as all parameters of the next unit
//!     have been reported, and keeps only its own shard.
//!  2. `step()` reduces what is left (a parameter never reported counts as zero), exchanges
//!     each rank's sum of squares and overflow findings (one small all-gather), skips the step
//!     on every rank together if any gradient was not finite, or else updates this rank's shard
//!     of master weights and optimizer state with the averaged, unscaled and clipped gradients
//!     (one factor), writes the new model-precision values, and all-gathers them into every
//!     rank's parameters.
//!
//! With `layout.staging_buffers` >= 2 and a communicator that has non-blocking forms, the
//! reductions and the all-gather are pipelined: a unit's collective stays in flight while the
//! framework goes on with backward (or the engine packs or unpacks the next unit), and the
//! engine waits for it only before it reuses that unit's staging buffer.

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory_resource>
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
#include "zero/error.hpp"
#include "zero/loss_scaler.hpp"
#include "zero/memory.hpp"
#include "zero/partitioner.hpp"
#include "zero/precision.hpp"
#include "zero/thread_communicator.hpp"
#include "zero/types.hpp"
#include "zero/update_rule.hpp"

namespace zero {

namespace detail {

//! The request a blocking communicator "returns": complete from the start.
struct completed_request {
  void wait() noexcept {}
  bool done() const noexcept { return true; }
};
template <class Comm>
struct request_of {
  using type = completed_request;
};
template <nonblocking_communicator Comm>
struct request_of<Comm> {
  using type = decltype(std::declval<Comm&>().ireduce_scatter(std::declval<const float*>(), std::declval<float*>(),
                                                               std::size_t{}, reduce_op::sum));
};

}  // namespace detail

//! A parameter the framework registers: its values (model precision, framework-owned).
template <class T>
struct parameter {
  std::string name;           //!< used in messages; empty means "#index"
  raw_span<T> values;         //!< @pre non-null, non-empty, not overlapping another parameter
  std::uint32_t reports = 1;  //!< gradient reports per micro-step: the uses of a shared weight (>= 1)
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

//! Run-time options of the engine.
template <update_rule Rule>
struct optimizer_options {
  typename Rule::hyperparameters hyperparameters{};
  layout_options layout{};
  double max_grad_norm = 0;  //!< clip the global gradient norm to this (PyTorch's rule); <= 0: no clipping
  loss_scale_options loss_scale{};
  nonfinite_policy on_nonfinite = nonfinite_policy::automatic;
  rounding value_rounding = rounding::nearest_even;
  std::uint64_t seed = 0;  //!< seeds stochastic rounding
  //! Threads that split this rank's update and norm passes (the calling thread included); 0: the
  //! hardware's count. Shards under 32768 elements are done by the calling thread alone. (Host
  //! backend.)
  unsigned threads = 0;
  //! Where every persistent buffer is allocated, once, at construction. (Host backend.)
  std::pmr::memory_resource* memory = std::pmr::new_delete_resource();
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
  //! (during backward in stage 2, and at the step), the norm and update, the all-gather.
  double reduce_seconds = 0, update_seconds = 0, gather_seconds = 0;
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
template <stage Stage, precision_bundle Precision = bf16_mixed, update_rule Rule = adamw,
          partitioner Partitioner = contiguous_partitioner, communicator Comm = thread_communicator,
          activation_checkpointer Checkpointer = passthrough_checkpointer>
class optimizer {
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
  static constexpr zero::stage stage_value = Stage;
  static constexpr std::size_t max_state_slots = detail::max_update_slots;
  //! 64-bit words each rank contributes to the one all-gather of per-step statistics.
  static constexpr std::size_t statistics_words = 4;

  //! Registers the parameters and allocates every buffer. Collective: every rank of `comm`
  //! constructs its engine with the same layout and options; a rank whose layout differs, or
  //! whose input is refused, makes every rank throw the same error naming it.
  //! Reads the parameters' values (to initialize the master weights); writes nothing of them.
  optimizer(Comm& comm, std::span<const parameter<param_type>> params, options_type options = {})
      : comm_(&comm), options_(options), rank_(comm.rank()), world_(comm.world_size()),
        backend_(comm, backend_options{options.threads, options.memory}) {
    std::string refusal;
    std::uint64_t digest = 0;
    try {
      validate_locally(params);
      std::vector<std::size_t> sizes(params.size());
      for (std::size_t i = 0; i < params.size(); ++i) sizes[i] = params[i].values.size;
      plan_ = Partitioner{}.plan(sizes, {world_, options_.layout.alignment, options_.layout.bucket_elements});
      validate_plan(plan_, sizes, world_);
      digest = layout_digest(params);
    } catch (const usage_error& e) {
      refusal = e.what();
    }
    agree_across_ranks(digest, refusal);
    register_parameters(params);
    allocate_and_initialize();
  }

  optimizer(const optimizer&) = delete;
  optimizer& operator=(const optimizer&) = delete;

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
    return {slots_.data() + plan_.param_offset[param], plan_.param_size[param]};
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
    if (!local_accumulation_) {
      if (reports_[param] == 1) add_record(param, slots_.data() + plan_.param_offset[param]);
      guarded([&] {
        note_reported(param);
        progress();
      });
    }
  }

  //! Reports the gradient of `param` as a span the engine reads (span mode). Each report is one
  //! contribution: a shared parameter is reported once per use and the uses are summed.
  //! Stages 0 and 1 read the span during this call; stage 2 reads it when the reduction unit
  //! holding `param` is reduced.
  //! @pre stage 2: `grad` stays valid and unchanged until the micro-step ends
  //!      (`end_micro_step()` or `step()` returns).
  void gradient_ready(std::size_t param, raw_span<const grad_type> grad) {
    check_usable();
    check_index(param, "gradient_ready");
    if (options_.layout.gradient_slots)
      throw usage_error("zero: gradient_ready(" + name_of(param) + ", span) on rank " + std::to_string(rank_) +
                        ": gradient slots are on; write into grad_slot() and call gradient_ready(index)");
    if (grad.data == nullptr)
      throw usage_error("zero: gradient of parameter " + name_of(param) + " on rank " + std::to_string(rank_) +
                        " is a null span");
    if (grad.size != plan_.param_size[param])
      throw usage_error("zero: gradient of parameter " + name_of(param) + " on rank " + std::to_string(rank_) + " has " +
                        std::to_string(grad.size) + " elements; the parameter has " +
                        std::to_string(plan_.param_size[param]));
    count_report(param);
    if (local_accumulation_) {
      accumulate(param, grad.data);
    } else {
      add_record(param, grad.data);
      guarded([&] {
        note_reported(param);
        progress();
      });
    }
  }

  //! Ends a micro-step that is not the last of the step (gradient accumulation): the
  //! gradients reported so far are kept (stage 2: reduced now, as DeepSpeed does, unless
  //! `layout.defer_reduction`), and every parameter may be reported again. Collective in stage 2.
  void end_micro_step() {
    check_usable();
    guarded([&] { finish_micro_step(); });
    ++micro_steps_;
  }

  // ---- the step ----------------------------------------------------------------------------

  //! Ends the last micro-step, reduces the gradients not yet reduced, and either skips the step
  //! (a non-finite gradient on any rank, with `on_nonfinite` skipping) or updates this rank's
  //! shard with the gradients averaged over ranks and micro-steps, unscaled and clipped, and
  //! leaves every rank's parameters holding the full updated values. Collective. Allocates
  //! nothing. @throws loss_scale_error when a step overflows at the minimum loss scale (the
  //! step is skipped and the gradients cleared first).
  step_report step() {
    check_usable();
    step_report report;
    using clock = std::chrono::steady_clock;
    guarded([&] {
      auto t0 = clock::now();
      finish_micro_step();
      if (local_accumulation_) {
        for (std::size_t k = 0; k < plan_.units.size(); ++k) reduce_unit(k);
        complete_all();
      }
      auto t1 = clock::now();
      if (norm_needed_before_update()) {
        report = exchange_statistics(local_sum_of_squares());
        if (!report.skipped) update_shard(static_cast<float>(inverse_average_ * report.clip_factor), nullptr);
      } else {
        // no clipping and no overflow check: the norm is only reported, so the update pass
        // computes it on the way (one pass over the gradients fewer)
        double sum_of_squares = 0;
        inverse_average_ = 1.0 / (static_cast<double>(world_) * scaler_.scale() * static_cast<double>(micro_steps_));
        update_shard(static_cast<float>(inverse_average_), &sum_of_squares);
        report = exchange_statistics(sum_of_squares);
      }
      auto t2 = clock::now();
      if (!report.skipped && Stage != stage::stage0) gather_parameters();
      auto t3 = clock::now();
      report.reduce_seconds = reduce_seconds_ + std::chrono::duration<double>(t1 - t0).count();
      report.update_seconds = std::chrono::duration<double>(t2 - t1).count();
      report.gather_seconds = std::chrono::duration<double>(t3 - t2).count();
      reduce_seconds_ = 0;
    });
    reset_step();
    if (report.skipped) {
      scaler_.update(true);
    } else {
      scaler_.update(false);
      report.step = ++step_;
    }
    if (report.skipped) report.step = step_;
    return report;
  }

  // ---- hyperparameters and state -----------------------------------------------------------

  const hyperparameters_type& hyperparameters() const noexcept { return options_.hyperparameters; }
  //! Sets the hyperparameters of the next steps. @throws usage_error if invalid or if they
  //! change the number of state slots (e.g. turning amsgrad on mid-training).
  void set_hyperparameters(const hyperparameters_type& h) {
    Rule::validate(h);
    if (Rule::state_count(h) != state_count_)
      throw usage_error("zero: new " + std::string(Rule::name) + " hyperparameters need " +
                        std::to_string(Rule::state_count(h)) + " state slots; the engine was built with " +
                        std::to_string(state_count_));
    options_.hyperparameters = h;
  }

  std::uint64_t step_count() const noexcept { return step_; }
  int rank() const noexcept { return rank_; }
  int world_size() const noexcept { return world_; }
  const partition_plan& plan() const noexcept { return plan_; }
  const options_type& options() const noexcept { return options_; }
  const loss_scaler& scaler() const noexcept { return scaler_; }
  Comm& communicator() noexcept { return *comm_; }
  Checkpointer& checkpointer() noexcept { return checkpointer_; }
  const std::string& parameter_name(std::size_t i) const { return names_.at(i); }

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
    return {state_.data() + k * updated_count(), updated_count()};
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
    return {state_.data() + k * updated_count(), updated_count()};
  }
  //! The framework's values of parameter `p`, as registered.
  raw_span<param_type> parameter_values(std::size_t p) const {
    check_index(p, "parameter_values");
    return params_[p];
  }
  //! Sets the step count and the loss scaler's state (as saved by a checkpoint).
  void restore_progress(std::uint64_t step, const loss_scaler::state& scaler) noexcept {
    step_ = step;
    scaler_.restore(scaler);
  }
  //! Writes the model-precision value of every element this rank updates and, in stages 1 and
  //! 2, all-gathers them into every rank's parameters. Collective. Clears pending gradients.
  void synchronize_parameters() {
    check_usable();
    guarded([&] {
      for (const auto& s : segments_)
        if (s.out != nullptr) backend_.convert(s.out, s.values, s.count);
      if constexpr (Stage != stage::stage0) gather_parameters();
    });
    forget_reports();
    reset_step();
  }

  //! Bytes the engine's backend holds in the engine's memory space besides `memory()`: 0 on the
  //! host; on a GPU the statistics words and the update's tables (a few KiB). `memory().total()
  //! + backend_bytes()` is every byte the engine allocated there.
  std::size_t backend_bytes() const noexcept { return backend_.bytes(); }

  //! Bytes this rank's engine allocated, by kind; equals `expected_memory` for the shipped
  //! partitioners.
  memory_report memory() const noexcept {
    memory_report r;
    r[memory_kind::master_weights] = master_.bytes();
    r[memory_kind::optimizer_state] = state_.bytes();
    r[memory_kind::gradients] = gradients_.bytes();
    r[memory_kind::gradient_slots] = slots_.bytes();
    r[memory_kind::parameter_shard] = param_shard_.bytes();
    r[memory_kind::buckets] = staging_.bytes();
    return r;
  }

 private:
  static constexpr bool sharded = Stage != stage::stage0;
  static constexpr std::size_t none = static_cast<std::size_t>(-1);
  static constexpr bool pipelined = nonblocking_communicator<Comm>;
  using request_type = typename detail::request_of<Comm>::type;

  // The collective a staging buffer holds until it is taken out.
  struct flight {
    request_type request{};
    std::size_t unit = none;  // none: the buffer is free
    bool gather = false;      // an all-gather of parameters, or a reduction of gradients
  };

  // A contiguous run of elements the update walks (`update_run`): values, gradients, state and
  // output (null when the values are the parameters themselves).
  using segment = update_run<value_type, accum_type, param_type>;

  // ---- construction ------------------------------------------------------------------------

  std::string name_of(std::size_t i) const {
    std::string text;
    if (i < names_.size() && !names_[i].empty()) text.append("'").append(names_[i]).append("' (");
    text.append("#").append(std::to_string(i));
    if (i < names_.size() && !names_[i].empty()) text.append(")");
    return text;
  }

  void validate_locally(std::span<const parameter<param_type>> params) {
    const std::string where = " on rank " + std::to_string(rank_);
    names_.clear();
    for (const auto& p : params) names_.push_back(p.name);
    if (params.empty()) throw usage_error("zero: no parameters registered" + where);
    for (std::size_t i = 0; i < params.size(); ++i) {
      const auto& p = params[i];
      if (p.values.data == nullptr) throw usage_error("zero: parameter " + name_of(i) + where + " has a null values pointer");
      if (p.values.size == 0) throw usage_error("zero: parameter " + name_of(i) + where + " has zero elements");
      if (p.reports < 1) throw usage_error("zero: parameter " + name_of(i) + where + " expects 0 gradient reports per step; use >= 1");
    }
    std::vector<std::size_t> order(params.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    auto begin_of = [&](std::size_t i) { return reinterpret_cast<std::uintptr_t>(params[i].values.data); };
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return begin_of(a) < begin_of(b); });
    for (std::size_t k = 1; k < order.size(); ++k) {
      const std::size_t a = order[k - 1], b = order[k];
      if (begin_of(a) + params[a].values.size_bytes() > begin_of(b))
        throw usage_error("zero: parameters " + name_of(a) + " and " + name_of(b) + where + " overlap in memory");
    }
    Rule::validate(options_.hyperparameters);
    state_count_ = Rule::state_count(options_.hyperparameters);
    if (state_count_ > max_state_slots)
      throw usage_error("zero: rule " + std::string(Rule::name) + " needs " + std::to_string(state_count_) +
                        " state slots; at most " + std::to_string(max_state_slots) + " are supported");
    if (std::isnan(options_.max_grad_norm)) throw usage_error("zero: max_grad_norm is NaN" + where);
    if (options_.layout.staging_buffers < 1) throw usage_error("zero: layout.staging_buffers is 0" + where + "; use >= 1");
    if (options_.layout.staging_buffers > 1 && !pipelined)
      throw usage_error("zero: layout.staging_buffers = " + std::to_string(options_.layout.staging_buffers) + where +
                        " needs a communicator with non-blocking collectives (zero::nonblocking_communicator); " +
                        typeid(Comm).name() + " has none: use 1");
    if (options_.value_rounding == rounding::stochastic && !(std::is_same_v<value_type, bf16> && !Precision::has_master))
      throw usage_error("zero: stochastic rounding needs bf16 parameters without master weights (e.g. zero::bf16_pure)" + where);
    scaler_ = loss_scaler(options_.loss_scale, std::is_same_v<param_type, fp16>);
    local_accumulation_ = Stage != stage::stage2 || options_.layout.defer_reduction;
    check_nonfinite_ = options_.on_nonfinite == nonfinite_policy::skip_step ||
                       (options_.on_nonfinite == nonfinite_policy::automatic && scaler_.active());
  }

  std::uint64_t layout_digest(std::span<const parameter<param_type>> params) const {
    std::uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
    auto mix_bytes = [&](const void* data, std::size_t n) {
      for (std::size_t i = 0; i < n; ++i) {
        h ^= static_cast<const unsigned char*>(data)[i];
        h *= 0x100000001b3ull;
      }
    };
    auto mix = [&](std::uint64_t v) { mix_bytes(&v, sizeof v); };
    auto mix_real = [&](double v) { mix(std::bit_cast<std::uint64_t>(v)); };
    auto mix_text = [&](std::string_view s) {
      mix(s.size());
      mix_bytes(s.data(), s.size());
    };
    mix(static_cast<std::uint64_t>(world_));
    mix(static_cast<std::uint64_t>(Stage));
    for (auto t : {type_name<param_type>(), type_name<grad_type>(), type_name<typename Precision::master_type>(),
                   type_name<typename Precision::state_type>(), type_name<accum_type>(), type_name<comm_type>()})
      mix_text(t);
    mix_text(Rule::name);
    mix(state_count_);
    mix_text(typeid(Partitioner).name());
    const auto& l = options_.layout;
    for (std::uint64_t v : {std::uint64_t{l.alignment}, std::uint64_t{l.bucket_elements}, std::uint64_t{l.gradient_slots},
                            std::uint64_t{l.defer_reduction}, std::uint64_t{l.staging_buffers}})
      mix(v);
    mix_real(options_.max_grad_norm);
    const auto& ls = scaler_.options();
    mix(static_cast<std::uint64_t>(ls.kind));
    mix_real(ls.fixed_scale);
    mix(static_cast<std::uint64_t>(ls.initial_scale_power));
    mix(ls.window);
    mix(ls.hysteresis);
    mix_real(ls.min_scale);
    mix(static_cast<std::uint64_t>(options_.on_nonfinite));
    mix(static_cast<std::uint64_t>(options_.value_rounding));
    mix(options_.seed);
    mix(params.size());
    for (const auto& p : params) {
      mix(p.values.size);
      mix(p.reports);
      mix_text(p.name);
    }
    return h;
  }

  //! Every rank learns whether every other rank accepted its input and registered the same
  //! layout, so that all throw the same error instead of some waiting forever.
  void agree_across_ranks(std::uint64_t digest, const std::string& refusal) {
    const std::uint64_t mine[2] = {digest, refusal.empty() ? 1u : 0u};
    std::vector<std::uint64_t> all(2 * static_cast<std::size_t>(world_));
    backend_.all_gather_words(*comm_, mine, all.data(), 2);
    if (!refusal.empty()) throw usage_error(refusal);
    std::string refused;
    for (int r = 0; r < world_; ++r)
      if (all[2 * static_cast<std::size_t>(r) + 1] == 0) refused += (refused.empty() ? "" : ", ") + std::to_string(r);
    if (!refused.empty())
      throw usage_error("zero: rank(s) " + refused + " refused their parameters (see the error on those ranks); rank " +
                        std::to_string(rank_) + " stops too");
    // the digest most ranks share is the intended one (ties: the lowest rank's)
    std::uint64_t common = all[0];
    int best = 0;
    for (int r = 0; r < world_; ++r) {
      int votes = 0;
      for (int q = 0; q < world_; ++q) votes += all[2 * static_cast<std::size_t>(q)] == all[2 * static_cast<std::size_t>(r)];
      if (votes > best) best = votes, common = all[2 * static_cast<std::size_t>(r)];
    }
    std::string differ, agree;
    for (int r = 0; r < world_; ++r)
      (all[2 * static_cast<std::size_t>(r)] == common ? agree : differ) +=
          std::string(all[2 * static_cast<std::size_t>(r)] == common ? (agree.empty() ? "" : ", ") : (differ.empty() ? "" : ", ")) +
          std::to_string(r);
    if (!differ.empty())
      throw mismatch_error("zero: rank(s) " + differ +
                           " registered a parameter layout, precision, stage or options different from rank(s) " + agree);
  }

  void register_parameters(std::span<const parameter<param_type>> params) {
    params_.reserve(params.size());
    expected_reports_.reserve(params.size());
    for (const auto& p : params) {
      params_.push_back(p.values);
      expected_reports_.push_back(p.reports);
    }
    reports_.assign(params.size(), 0);
    const auto pieces = plan_.pieces();
    // pieces grouped by unit (already ordered so), and the units each parameter touches
    unit_pieces_begin_.assign(plan_.units.size() + 1, 0);
    for (const auto& piece : pieces) ++unit_pieces_begin_[piece.unit + 1];
    for (std::size_t k = 0; k < plan_.units.size(); ++k) unit_pieces_begin_[k + 1] += unit_pieces_begin_[k];
    unit_pieces_ = pieces;
    std::vector<std::vector<std::size_t>> touched(params.size());
    for (const auto& piece : pieces) {
      auto& t = touched[piece.param];
      if (t.empty() || t.back() != piece.unit) t.push_back(piece.unit);
    }
    param_units_begin_.assign(params.size() + 1, 0);
    pending_initial_.assign(plan_.units.size(), 0);
    for (std::size_t p = 0; p < params.size(); ++p) {
      param_units_begin_[p + 1] = param_units_begin_[p] + touched[p].size();
      for (std::size_t k : touched[p]) {
        param_units_.push_back(k);
        pending_initial_[k] += expected_reports_[p];
      }
    }
    pending_ = pending_initial_;
    // what this rank updates
    if constexpr (sharded) {
      for (const auto& piece : pieces)
        if (piece.rank == rank_) owned_.push_back(piece);
    } else {
      for (std::size_t p = 0; p < params.size(); ++p)
        owned_.push_back({p, 0, rank_, 0, plan_.param_offset[p], plan_.param_offset[p], plan_.param_size[p]});
    }
  }

  std::size_t updated_count() const noexcept { return sharded ? plan_.shard_size : plan_.element_count; }

  value_type* value_base() const noexcept {
    if constexpr (Precision::has_master) return master_.data();
    else if constexpr (sharded) return param_shard_.data();
    else return nullptr;  // stage 0 without master: the update runs on the parameters themselves
  }

  void allocate_and_initialize() {
    auto& b = backend_;
    const std::size_t updated = updated_count();
    const std::size_t n = static_cast<std::size_t>(world_);
    if constexpr (Precision::has_master) master_ = b.template allocate<value_type>(updated);
    state_ = b.template allocate<float>(state_count_ * updated);
    gradients_ = b.template allocate<accum_type>(local_accumulation_ ? plan_.padded_size : plan_.shard_size);
    if (options_.layout.gradient_slots) slots_ = b.template allocate<grad_type>(plan_.element_count);
    if constexpr (sharded) param_shard_ = b.template allocate<param_type>(plan_.shard_size);
    const std::size_t staging_element = sharded ? std::max(sizeof(comm_type), sizeof(param_type)) : sizeof(comm_type);
    staging_bytes_ = n * plan_.max_slice() * staging_element;
    staging_ = b.template allocate<std::byte>(options_.layout.staging_buffers * staging_bytes_);
    flights_ = std::vector<flight>(options_.layout.staging_buffers);

    // metadata of the step (ordinary heap, not accounted as engine buffers)
    std::size_t report_capacity = 0;
    for (auto r : expected_reports_) report_capacity += r;
    record_data_.assign(report_capacity, nullptr);
    record_next_.assign(report_capacity, none);
    record_head_.assign(params_.size(), none);
    statistics_.assign(statistics_words * n, 0);
    if constexpr (tensorwise_rule<Rule>) {
      tensor_sums_.assign(2 * params_.size(), 0.0);
      piece_sums_.assign(2 * owned_.size(), 0.0);
      trust_.assign(owned_.size(), 1.0f);
    }

    for (std::size_t k = 0; k < state_count_; ++k) {
      const float start = static_cast<float>(initial_state<Rule>(options_.hyperparameters, k));
      b.fill(state_.data() + k * updated, updated, start);
    }
    // initial values: the parameters this rank updates, widened to the value type
    for (const auto& piece : owned_) {
      const param_type* from = params_[piece.param].data + piece.param_offset;
      const std::size_t at = sharded ? piece.shard_offset : piece.flat_offset;
      if constexpr (Precision::has_master) b.convert(master_.data() + at, from, piece.count);
      if constexpr (sharded) b.convert(param_shard_.data() + at, from, piece.count);
    }
    build_segments();
    b.template prepare<Rule>(params_.size(), std::span<const segment>(segments_), std::span<const segment>(piece_segments_),
                             state_.data(), updated, state_count_);
  }

  //! The run of the update for one owned piece of a parameter.
  segment piece_segment(const owned_piece& piece) const {
    const std::size_t at = sharded ? piece.shard_offset : piece.flat_offset;
    const accum_type* grads = gradients_.data() + (local_accumulation_ ? piece.flat_offset : piece.shard_offset);
    value_type* values;
    param_type* out = nullptr;
    if constexpr (Precision::has_master) {
      values = master_.data() + at;
      out = sharded ? param_shard_.data() + at : params_[piece.param].data + piece.param_offset;
    } else if constexpr (sharded) {
      values = param_shard_.data() + at;
    } else {
      values = params_[piece.param].data + piece.param_offset;
    }
    return {values, grads, at, out, piece.count};
  }

  //! Element-wise rules walk whole units (padding included), merged where contiguous;
  //! tensor-wise rules walk the pieces of each parameter.
  void build_segments() {
    for (const auto& piece : owned_) piece_segments_.push_back(piece_segment(piece));
    if constexpr (!sharded) {
      segments_ = piece_segments_;
    } else {
      for (const auto& u : plan_.units) {
        const accum_type* grads = gradients_.data() + (local_accumulation_ ? u.flat_index(rank_, 0) : u.shard_begin);
        param_type* out = Precision::has_master ? param_shard_.data() + u.shard_begin : nullptr;
        const segment s{value_base() + u.shard_begin, grads, u.shard_begin, out, u.slice};
        if (!segments_.empty() && segments_.back().values + segments_.back().count == s.values &&
            segments_.back().grads + segments_.back().count == s.grads)
          segments_.back().count += s.count;
        else
          segments_.push_back(s);
      }
    }
  }

  // ---- gradients ---------------------------------------------------------------------------

  void check_usable() const {
    if (broken_)
      throw communicator_error("zero: the optimizer on rank " + std::to_string(rank_) +
                               " is unusable after an earlier failure of a collective");
  }

  //! Runs f; a failure inside a collective leaves the ranks out of step, so the engine refuses
  //! further use.
  template <class F>
  void guarded(F&& f) {
    try {
      f();
    } catch (...) {
      broken_ = true;
      throw;
    }
  }

  void check_index(std::size_t param, const char* call) const {
    if (param >= params_.size())
      throw usage_error(std::string("zero: ") + call + ": parameter index " + std::to_string(param) + " on rank " +
                        std::to_string(rank_) + " is out of range (" + std::to_string(params_.size()) + " registered)");
  }

  void count_report(std::size_t param) {
    if (reports_[param] >= expected_reports_[param])
      throw usage_error("zero: gradient of parameter " + name_of(param) + " on rank " + std::to_string(rank_) +
                        " reported " + std::to_string(reports_[param] + 1) + " times in one micro-step; it was registered with " +
                        std::to_string(expected_reports_[param]) +
                        " report(s) (set parameter::reports to the number of uses of a shared weight)");
    ++reports_[param];
  }

  //! Notes the first non-finite gradient this rank saw this step (checked before reduction).
  template <class T>
  void check_finite(std::size_t param, const T* data, std::size_t n) {
    if (check_nonfinite_) backend_.check_finite(param, data, n);
  }

  //! Stages 0 and 1 (and stage 2 with deferred reduction): add a gradient into the full buffer.
  void accumulate(std::size_t param, const grad_type* from) {
    const std::size_t n = plan_.param_size[param];
    check_finite(param, from, n);
    backend_.add(gradients_.data() + plan_.param_offset[param], from, n);
  }

  void add_record(std::size_t param, const grad_type* data) {
    const std::size_t r = records_used_++;
    record_data_[r] = data;
    record_next_[r] = none;
    // append, so contributions are summed in the order they were reported
    std::size_t* link = &record_head_[param];
    while (*link != none) link = &record_next_[*link];
    *link = r;
  }

  //! Stage 2: counts the report against every unit the parameter touches and reduces, in unit
  //! order, every unit that is complete. Units are never reduced out of order, so every rank
  //! issues the same collectives in the same order whatever order its gradients arrive in.
  void note_reported(std::size_t param) {
    for (std::size_t i = param_units_begin_[param]; i < param_units_begin_[param + 1]; ++i) --pending_[param_units_[i]];
    if (next_unit_ < plan_.units.size() && pending_[next_unit_] == 0) {
      const auto start = std::chrono::steady_clock::now();
      while (next_unit_ < plan_.units.size() && pending_[next_unit_] == 0) reduce_unit(next_unit_++);
      reduce_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
  }

  //! Ends a micro-step: slot contents are taken in (local accumulation) or the units not yet
  //! reduced are reduced (stage 2), and the micro-step's reports are forgotten.
  void finish_micro_step() {
    if (local_accumulation_) {
      if (options_.layout.gradient_slots)
        for (std::size_t p = 0; p < params_.size(); ++p)
          if (reports_[p] != 0) accumulate(p, slots_.data() + plan_.param_offset[p]);
    } else {
      while (next_unit_ < plan_.units.size()) reduce_unit(next_unit_++);
      complete_all();
    }
    forget_reports();
  }

  //! Forgets the micro-step's reports (stage 2: its records and per-unit counts) and clears the
  //! slots: every parameter may be reported again.
  void forget_reports() {
    if (!local_accumulation_) {
      std::fill(record_head_.begin(), record_head_.end(), none);
      records_used_ = 0;
      next_unit_ = 0;
      std::copy(pending_initial_.begin(), pending_initial_.end(), pending_.begin());
    }
    std::fill(reports_.begin(), reports_.end(), 0u);
    slots_.zero();
  }

  // ---- staging buffers and the collectives in flight ----------------------------------------

  comm_type* staging_comm(std::size_t b) const noexcept {
    return reinterpret_cast<comm_type*>(staging_.data() + b * staging_bytes_);
  }
  param_type* staging_param(std::size_t b) const noexcept {
    return reinterpret_cast<param_type*>(staging_.data() + b * staging_bytes_);
  }

  //! The next staging buffer, round robin, once the collective it holds has completed.
  std::size_t take_buffer() {
    const std::size_t b = next_buffer_;
    next_buffer_ = (next_buffer_ + 1) % flights_.size();
    complete(b);
    return b;
  }

  //! Runs a unit's collective on buffer b: started (`start(comm)`, when pipelined) or run to
  //! completion (`blocking()`).
  template <class Blocking, class Start>
  void launch(std::size_t b, std::size_t unit, bool gather, Blocking&& blocking, [[maybe_unused]] Start&& start) {
    if constexpr (pipelined) {
      if (flights_.size() > 1) {
        flights_[b].request = start(*comm_);
        flights_[b].unit = unit;
        flights_[b].gather = gather;
        return;
      }
    }
    blocking();
    flights_[b].unit = unit;
    flights_[b].gather = gather;
    complete(b);
  }

  //! Waits for buffer b's collective and takes its result out (into the gradients or the
  //! framework's parameters).
  void complete(std::size_t b) {
    flight& f = flights_[b];
    if (f.unit == none) return;
    f.request.wait();
    const std::size_t k = f.unit;
    f.unit = none;
    if (f.gather) scatter_unit(k, staging_param(b));
    else take_reduction(k, staging_comm(b));
  }

  void complete_all() {
    for (std::size_t i = 0; i < flights_.size(); ++i) complete((next_buffer_ + i) % flights_.size());
  }

  //! Lets the communicator advance what is in flight while the framework runs backward.
  void progress() {
    if constexpr (pipelined)
      if (flights_.size() > 1) comm_->progress();
  }

  //! Whether the gradient shard receives unit reductions directly: it has the communication
  //! type and holds nothing yet this step.
  bool reduces_directly() const noexcept {
    return std::is_same_v<comm_type, accum_type> && Stage == stage::stage2 && !local_accumulation_ && micro_steps_ == 1;
  }

  //! Reduces unit k: fills a staging buffer (rank-major slices, comm type), then all-reduces it
  //! (stage 0) or reduce-scatters it in place (stages 1, 2); `take_reduction` stores the result
  //! once the collective has completed.
  void reduce_unit(std::size_t k) {
    const auto& u = plan_.units[k];
    const std::size_t n = static_cast<std::size_t>(world_);
    const std::size_t b = take_buffer();
    comm_type* staging = staging_comm(b);
    comm_type* shard_slice = nullptr;  // where a direct reduction lands
    if constexpr (std::is_same_v<comm_type, accum_type>) {
      if (reduces_directly()) {
        shard_slice = gradients_.data() + u.shard_begin;
        if (n == 1) staging = shard_slice;  // a group of one reduces in place: no copy at all
      }
    }
    const std::size_t count = n * u.slice;
    if (local_accumulation_) {
      for (std::size_t r = 0; r < n; ++r)
        backend_.convert(staging + r * u.slice, gradients_.data() + u.flat_index(static_cast<int>(r), 0), u.slice);
    } else {
      backend_.fill(staging, count, comm_type(0.0f));
      for (std::size_t i = unit_pieces_begin_[k]; i < unit_pieces_begin_[k + 1]; ++i) {
        const auto& piece = unit_pieces_[i];
        comm_type* to = staging + static_cast<std::size_t>(piece.rank) * u.slice + (piece.shard_offset - u.shard_begin);
        bool first = true;
        for (std::size_t r = record_head_[piece.param]; r != none; r = record_next_[r], first = false) {
          const grad_type* from = record_data_[r] + piece.param_offset;
          if (first) backend_.convert(to, from, piece.count);
          else backend_.add(to, from, piece.count);
        }
        check_finite(piece.param, to, piece.count);
      }
    }

    if constexpr (Stage == stage::stage0) {
      launch(
          b, k, false, [&] { comm_->all_reduce(staging, staging, count, reduce_op::sum); },
          [&](auto& c) { return c.iall_reduce(staging, staging, count, reduce_op::sum); });
    } else {
      comm_type* to = shard_slice != nullptr ? shard_slice : staging + static_cast<std::size_t>(rank_) * u.slice;
      launch(
          b, k, false, [&] { comm_->reduce_scatter(staging, to, u.slice, reduce_op::sum); },
          [&](auto& c) { return c.ireduce_scatter(staging, to, u.slice, reduce_op::sum); });
    }
  }

  //! Stores unit k's completed reduction (in `staging`): into the full buffer (local
  //! accumulation), or into or added to the gradient shard (stage 2, per micro-step).
  void take_reduction(std::size_t k, const comm_type* staging) {
    const auto& u = plan_.units[k];
    if constexpr (Stage == stage::stage0) {
      for (std::size_t r = 0; r < static_cast<std::size_t>(world_); ++r)
        backend_.convert(gradients_.data() + u.flat_index(static_cast<int>(r), 0), staging + r * u.slice, u.slice);
    } else {
      if (reduces_directly()) return;  // already in the shard
      const comm_type* mine = staging + static_cast<std::size_t>(rank_) * u.slice;
      if (local_accumulation_) backend_.convert(gradients_.data() + u.flat_index(rank_, 0), mine, u.slice);
      else if (micro_steps_ == 1) backend_.convert(gradients_.data() + u.shard_begin, mine, u.slice);  // shard empty so far
      else backend_.add(gradients_.data() + u.shard_begin, mine, u.slice);
    }
  }

  // ---- statistics, update and all-gather ---------------------------------------------------

  //! One all-gather of four words per rank: the rank's sum of squares of its (summed, scaled)
  //! gradients, whether and where it saw a non-finite input, and its micro-step count. Every
  //! rank computes the same norm, overflow decision and clip factor from them.
  bool norm_needed_before_update() const noexcept {
    return check_nonfinite_ || options_.max_grad_norm > 0 || tensorwise_rule<Rule>;
  }

  //! This rank's sum of squares of its (summed, scaled) gradients: one pass.
  double local_sum_of_squares() { return backend_.sum_of_squares(std::span<const segment>(segments_)); }

  step_report exchange_statistics(double sum_of_squares) {
    const std::size_t nonfinite = check_nonfinite_ ? backend_.first_nonfinite() : none;
    const std::uint64_t mine[statistics_words] = {std::bit_cast<std::uint64_t>(sum_of_squares), nonfinite != none ? 1u : 0u,
                                                  nonfinite, micro_steps_};
    backend_.all_gather_words(*comm_, mine, statistics_.data(), statistics_words);

    step_report report;
    report.loss_scale = scaler_.scale();
    report.micro_steps = micro_steps_;
    double total = 0;
    for (int r = 0; r < world_; ++r) {
      const std::uint64_t* theirs = statistics_.data() + statistics_words * static_cast<std::size_t>(r);
      if (theirs[3] != micro_steps_)
        throw mismatch_error("zero: rank " + std::to_string(r) + " ran " + std::to_string(theirs[3]) +
                             " micro-steps this step; rank " + std::to_string(rank_) + " ran " + std::to_string(micro_steps_));
      if (theirs[1] != 0 && report.nonfinite_rank < 0) {
        report.nonfinite_rank = r;
        report.nonfinite_parameter = static_cast<std::size_t>(theirs[2]);
        report.nonfinite_parameter_name = names_[report.nonfinite_parameter];
      }
      if (sharded || r == rank_) total += std::bit_cast<double>(theirs[0]);  // stage 0: every rank has it all
    }
    inverse_average_ = 1.0 / (static_cast<double>(world_) * report.loss_scale * static_cast<double>(micro_steps_));
    report.grad_norm = std::sqrt(total) * inverse_average_;
    const bool overflow = report.nonfinite_rank >= 0 || !std::isfinite(report.grad_norm);
    report.skipped = overflow && check_nonfinite_;
    if (options_.max_grad_norm > 0) report.clip_factor = std::min(1.0, options_.max_grad_norm / (report.grad_norm + 1e-6));
    return report;
  }

  //! How this step rounds new values to the stored type.
  detail::value_rounding<value_type> step_rounding() const noexcept {
    return {options_.value_rounding == rounding::stochastic, options_.seed, step_};
  }

  //! @param sum_of_squares when not null, receives this rank's sum of squares of the gradients,
  //!        computed by the update pass itself
  void update_shard(float factor, double* sum_of_squares) {
    const auto c = Rule::prepare(options_.hyperparameters, step_ + 1);
    const std::size_t id_base = sharded ? static_cast<std::size_t>(rank_) * plan_.shard_size : 0;
    const auto round = step_rounding();
    if constexpr (elementwise_rule<Rule>) {
      const double sum = backend_.template update<Rule>(c, std::span<const segment>(segments_), factor, round, id_base,
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
        trust_[q] = Rule::tensor_factor(c, {tensor_sums_[2 * param], tensor_sums_[2 * param + 1]});
      }
      backend_.template tensor_update<Rule>(c, pieces, trust_.data(), round, id_base);
    }
  }

  //! All-gathers every unit's updated slices and scatters them into the framework's parameters.
  void gather_parameters() {
    for (std::size_t k = 0; k < plan_.units.size(); ++k) {
      const auto& u = plan_.units[k];
      const std::size_t b = take_buffer();
      param_type* staging = staging_param(b);
      const param_type* mine = param_shard_.data() + u.shard_begin;
      launch(
          b, k, true, [&] { comm_->all_gather(mine, staging, u.slice); },
          [&](auto& c) { return c.iall_gather(mine, staging, u.slice); });
    }
    complete_all();
  }

  //! Copies unit k's all-gathered slices (in `staging`) into the framework's parameters.
  void scatter_unit(std::size_t k, const param_type* staging) {
    const auto& u = plan_.units[k];
    for (std::size_t i = unit_pieces_begin_[k]; i < unit_pieces_begin_[k + 1]; ++i) {
      const auto& piece = unit_pieces_[i];
      const param_type* from = staging + static_cast<std::size_t>(piece.rank) * u.slice + (piece.shard_offset - u.shard_begin);
      backend_.convert(params_[piece.param].data + piece.param_offset, from, piece.count);
    }
  }

  //! Clears what one step accumulated (after an update, and when a step is skipped).
  void reset_step() {
    gradients_.zero();
    micro_steps_ = 1;
    backend_.clear_nonfinite();
  }

  Comm* comm_;
  options_type options_;
  int rank_;
  int world_;
  Checkpointer checkpointer_{};
  loss_scaler scaler_;
  std::size_t state_count_ = 0;
  std::uint64_t step_ = 0;
  std::uint32_t micro_steps_ = 1;
  bool broken_ = false;
  bool local_accumulation_ = true;  // gradients accumulate in a full buffer, reduced at the step
  bool check_nonfinite_ = false;
  double inverse_average_ = 1;          // 1 / (world * loss scale * micro-steps), this step
  double reduce_seconds_ = 0;           // time in reductions during backward since the last step
  backend_type backend_;  // before the buffers it allocates

  partition_plan plan_;
  std::vector<std::string> names_;
  std::vector<raw_span<param_type>> params_;
  std::vector<std::uint32_t> expected_reports_;
  std::vector<std::uint32_t> reports_;
  std::vector<owned_piece> owned_;
  std::vector<owned_piece> unit_pieces_;        // all pieces, grouped by unit
  std::vector<std::size_t> unit_pieces_begin_;  // unit k's pieces: [begin[k], begin[k+1])
  std::vector<std::size_t> param_units_;        // the units each parameter touches
  std::vector<std::size_t> param_units_begin_;
  std::vector<std::uint32_t> pending_initial_;  // reports each unit waits for
  std::vector<std::uint32_t> pending_;
  std::size_t next_unit_ = 0;
  std::vector<const grad_type*> record_data_;   // stage 2: reported gradients, per parameter a list
  std::vector<std::size_t> record_next_;
  std::vector<std::size_t> record_head_;
  std::size_t records_used_ = 0;
  std::vector<segment> segments_;        // element-wise update: merged runs
  std::vector<segment> piece_segments_;  // tensor-wise update: one run per owned piece
  std::vector<std::uint64_t> statistics_;
  std::vector<double> tensor_sums_;  // tensor-wise rules: two sums per parameter,
  std::vector<double> piece_sums_;   // two per owned piece,
  std::vector<float> trust_;         // and each owned piece's factor

  typename backend_type::template buffer<value_type> master_;
  typename backend_type::template buffer<float> state_;
  typename backend_type::template buffer<accum_type> gradients_;
  typename backend_type::template buffer<grad_type> slots_;
  typename backend_type::template buffer<param_type> param_shard_;
  typename backend_type::template buffer<std::byte> staging_;
  std::size_t staging_bytes_ = 0;  // one staging buffer
  std::vector<flight> flights_;    // one per staging buffer
  std::size_t next_buffer_ = 0;
};

}  // namespace zero
