#pragma once
//! @file optimizer.hpp
//! `zero::optimizer`: the four policies composed into one ZeRO engine, on the host.
//!
//! One step (see docs/design.md):
//!  1. The framework reports each parameter's gradient (`gradient_ready`), in any order.
//!     Stages 0 and 1 add it into a full accumulation buffer. Stage 2 reduces the gradients
//!     unit by unit (constant-size reduce-scatters, in unit order on every rank) as soon as all
//!     parameters of the next unit have been reported, and keeps only its own shard.
//!  2. `step()` reduces what is left (a parameter never reported counts as zero), updates the
//!     rank's shard of master weights and optimizer state with the averaged gradients, writes
//!     the new model-precision values, and all-gathers them into every rank's parameters.

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory_resource>
#include <span>
#include <string>
#include <typeinfo>
#include <vector>

#include "zero/activation_checkpointer.hpp"
#include "zero/communicator.hpp"
#include "zero/error.hpp"
#include "zero/memory.hpp"
#include "zero/partitioner.hpp"
#include "zero/precision.hpp"
#include "zero/thread_communicator.hpp"
#include "zero/types.hpp"
#include "zero/update_rule.hpp"

namespace zero {

//! A parameter the framework registers: its values (model precision, framework-owned).
template <class T>
struct parameter {
  std::string name;            //!< used in messages; empty means "#index"
  raw_span<T> values;          //!< @pre non-null, non-empty, not overlapping another parameter
  std::uint32_t reports = 1;   //!< gradient reports per step: the uses of a shared weight (>= 1)
};

//! Run-time options of the engine.
template <update_rule Rule>
struct optimizer_options {
  typename Rule::hyperparameters hyperparameters{};
  layout_options layout{};
  //! Where every persistent buffer is allocated, once, at construction.
  std::pmr::memory_resource* memory = std::pmr::new_delete_resource();
};

//! What `step()` did.
struct step_report {
  std::uint64_t step = 0;  //!< optimizer steps taken so far (this one included)
};

//! The ZeRO engine: stage, precision and policies fixed at compile time; sizes and
//! hyperparameters at run time. One object per rank, used by that rank's thread only.
//! @tparam Stage        what is partitioned (`stage0`, `stage1`, `stage2`)
//! @tparam Precision    a `zero::precision` bundle
//! @tparam Rule         the update rule (`adamw`, `adam`, `sgd` or a user-written rule)
//! @tparam Partitioner  `contiguous_partitioner`, `bucketed_partitioner` or a user-written one
//! @tparam Comm         the communicator type; the engine uses the caller's object
//! @tparam Checkpointer the activation checkpointer the engine carries for the framework
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
  using hyperparameters_type = typename Rule::hyperparameters;
  using options_type = optimizer_options<Rule>;
  using communicator_type = Comm;
  using checkpointer_type = Checkpointer;
  static constexpr zero::stage stage_value = Stage;
  static constexpr std::size_t max_state_slots = 8;

  //! Registers the parameters and allocates every buffer. Collective: every rank of `comm`
  //! constructs its engine with the same layout and options; a rank whose layout differs, or
  //! whose input is refused, makes every rank throw the same error naming it.
  //! Reads the parameters' values (to initialize the master weights); writes nothing of them.
  optimizer(Comm& comm, std::span<const parameter<param_type>> params, options_type options = {})
      : comm_(&comm), options_(options), rank_(comm.rank()), world_(comm.world_size()) {
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

  //! The engine-owned slot the framework writes (or accumulates) parameter `param`'s gradient
  //! into; zeroed at construction and after every step. Needs `layout.gradient_slots`.
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
    if constexpr (Stage == stage::stage2) {
      if (reports_[param] == 1) add_record(param, slots_.data() + plan_.param_offset[param]);
      note_reported(param);
    }
  }

  //! Reports the gradient of `param` as a span the engine reads (span mode). Each report is one
  //! contribution: a shared parameter is reported once per use and the uses are summed.
  //! Stages 0 and 1 read the span during this call; stage 2 reads it when the reduction unit
  //! holding `param` is reduced.
  //! @pre stage 2: `grad` stays valid and unchanged until `step()` returns.
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
    if constexpr (Stage == stage::stage2) {
      add_record(param, grad.data);
      note_reported(param);
    } else {
      accum_type* to = gradients_.data() + plan_.param_offset[param];
      for (std::size_t i = 0; i < grad.size; ++i) to[i] = convert<accum_type>(static_cast<float>(to[i]) + static_cast<float>(grad.data[i]));
    }
  }

  // ---- the step ----------------------------------------------------------------------------

  //! Reduces the gradients not yet reduced, updates this rank's shard with their average over
  //! the ranks, and leaves every rank's parameters holding the full updated values. Collective.
  //! Allocates nothing.
  step_report step() {
    check_usable();
    try {
      reduce_gradients();
      update_shard();
      if constexpr (Stage != stage::stage0) gather_parameters();
    } catch (...) {
      broken_ = true;
      throw;
    }
    ++step_;
    reset_reports();
    return {step_};
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

  //! Bytes this rank's engine allocated, by kind; equals `expected_memory` for the shipped
  //! partitioners.
  memory_report memory() const noexcept {
    memory_report r;
    r[memory_kind::master_weights] = master_.bytes();
    r[memory_kind::optimizer_state] = state_.bytes();
    r[memory_kind::gradients] = gradients_.bytes();
    r[memory_kind::gradient_slots] = slots_.bytes();
    r[memory_kind::parameter_shard] = param_shard_.bytes();
    r[memory_kind::buckets] = staging_.bytes() + receive_.bytes();
    return r;
  }

 private:
  static constexpr bool sharded = Stage != stage::stage0;
  static constexpr std::size_t none = static_cast<std::size_t>(-1);

  // A contiguous run of elements the update walks: values, gradients, state and output.
  struct segment {
    value_type* values;
    const accum_type* grads;
    std::size_t state_offset;
    param_type* out;  // where the model-precision value goes; null when values are the parameters
    std::size_t count;
  };

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
    mix(options_.layout.alignment);
    mix(options_.layout.bucket_elements);
    mix(options_.layout.gradient_slots);
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
    comm_->all_gather(mine, all.data(), 2);
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
    auto* mr = options_.memory;
    const std::size_t updated = updated_count();
    const std::size_t slice = plan_.max_slice();
    const std::size_t n = static_cast<std::size_t>(world_);
    if constexpr (Precision::has_master) master_ = detail::owned_buffer<value_type>(updated, mr);
    state_ = detail::owned_buffer<float>(state_count_ * updated, mr);
    gradients_ = detail::owned_buffer<accum_type>(Stage == stage::stage2 ? plan_.shard_size : plan_.padded_size, mr);
    if (options_.layout.gradient_slots) slots_ = detail::owned_buffer<grad_type>(plan_.element_count, mr);
    if constexpr (sharded) param_shard_ = detail::owned_buffer<param_type>(plan_.shard_size, mr);
    const std::size_t staging_element = sharded ? std::max(sizeof(comm_type), sizeof(param_type)) : sizeof(comm_type);
    staging_ = detail::owned_buffer<std::byte>(n * slice * staging_element, mr);
    if constexpr (sharded && !std::is_same_v<comm_type, accum_type>) receive_ = detail::owned_buffer<comm_type>(slice, mr);
    std::size_t report_capacity = 0;
    for (auto r : expected_reports_) report_capacity += r;
    if constexpr (Stage == stage::stage2) {
      record_data_.assign(report_capacity, nullptr);
      record_next_.assign(report_capacity, none);
      record_head_.assign(params_.size(), none);
    }

    // initial values: the parameters this rank updates, widened to the value type
    for (const auto& piece : owned_) {
      const param_type* from = params_[piece.param].data + piece.param_offset;
      const std::size_t at = sharded ? piece.shard_offset : piece.flat_offset;
      if constexpr (Precision::has_master)
        for (std::size_t i = 0; i < piece.count; ++i) master_[at + i] = convert<value_type>(from[i]);
      if constexpr (sharded) std::copy(from, from + piece.count, param_shard_.data() + at);
    }
    build_segments();
  }

  void build_segments() {
    const std::size_t updated = updated_count();
    (void)updated;
    if constexpr (!sharded) {
      for (const auto& piece : owned_) {
        param_type* params = params_[piece.param].data;
        value_type* values;
        param_type* out = nullptr;
        if constexpr (Precision::has_master) values = master_.data() + piece.flat_offset, out = params;
        else values = params;
        segments_.push_back({values, gradients_.data() + piece.flat_offset, piece.flat_offset, out, piece.count});
      }
    } else {
      for (const auto& u : plan_.units) {
        const accum_type* grads = Stage == stage::stage2 ? gradients_.data() + u.shard_begin
                                                         : gradients_.data() + u.flat_index(rank_, 0);
        param_type* out = Precision::has_master ? param_shard_.data() + u.shard_begin : nullptr;
        segment s{value_base() + u.shard_begin, grads, u.shard_begin, out, u.slice};
        auto& last = segments_.empty() ? s : segments_.back();
        const bool extends = !segments_.empty() && last.values + last.count == s.values && last.grads + last.count == s.grads;
        if (extends) last.count += s.count;
        else segments_.push_back(s);
      }
    }
  }

  // ---- gradients ---------------------------------------------------------------------------

  void check_usable() const {
    if (broken_)
      throw communicator_error("zero: the optimizer on rank " + std::to_string(rank_) +
                               " is unusable after an earlier failure of a collective");
  }

  void check_index(std::size_t param, const char* call) const {
    if (param >= params_.size())
      throw usage_error(std::string("zero: ") + call + ": parameter index " + std::to_string(param) + " on rank " +
                        std::to_string(rank_) + " is out of range (" + std::to_string(params_.size()) + " registered)");
  }

  void count_report(std::size_t param) {
    if (reports_[param] >= expected_reports_[param])
      throw usage_error("zero: gradient of parameter " + name_of(param) + " on rank " + std::to_string(rank_) +
                        " reported " + std::to_string(reports_[param] + 1) + " times this step; it was registered with " +
                        std::to_string(expected_reports_[param]) +
                        " report(s) per step (set parameter::reports to the number of uses of a shared weight)");
    ++reports_[param];
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
    try {
      while (next_unit_ < plan_.units.size() && pending_[next_unit_] == 0) reduce_unit(next_unit_++);
    } catch (...) {
      broken_ = true;
      throw;
    }
  }

  comm_type* staging_comm() const noexcept { return reinterpret_cast<comm_type*>(staging_.data()); }
  param_type* staging_param() const noexcept { return reinterpret_cast<param_type*>(staging_.data()); }

  //! Reduces unit k: fills the staging buffer (rank-major slices, comm type), then all-reduce
  //! (stage 0) or reduce-scatter (stages 1, 2), and stores the result as accumulated gradients.
  void reduce_unit(std::size_t k) {
    const auto& u = plan_.units[k];
    const int n = world_;
    comm_type* staging = staging_comm();
    const std::size_t count = static_cast<std::size_t>(n) * u.slice;
    if constexpr (Stage == stage::stage2) {
      std::fill(staging, staging + count, comm_type(0.0f));
      for (std::size_t i = unit_pieces_begin_[k]; i < unit_pieces_begin_[k + 1]; ++i) {
        const auto& piece = unit_pieces_[i];
        comm_type* to = staging + static_cast<std::size_t>(piece.rank) * u.slice + (piece.shard_offset - u.shard_begin);
        bool first = true;
        for (std::size_t r = record_head_[piece.param]; r != none; r = record_next_[r], first = false) {
          const grad_type* from = record_data_[r] + piece.param_offset;
          if (first)
            for (std::size_t j = 0; j < piece.count; ++j) to[j] = convert<comm_type>(from[j]);
          else
            for (std::size_t j = 0; j < piece.count; ++j)
              to[j] = convert<comm_type>(static_cast<float>(to[j]) + static_cast<float>(from[j]));
        }
      }
    } else {
      for (int r = 0; r < n; ++r) {
        const accum_type* from = gradients_.data() + u.flat_index(r, 0);
        comm_type* to = staging + static_cast<std::size_t>(r) * u.slice;
        for (std::size_t j = 0; j < u.slice; ++j) to[j] = convert<comm_type>(from[j]);
      }
    }

    if constexpr (Stage == stage::stage0) {
      comm_->all_reduce(staging, staging, count, reduce_op::sum);
      for (int r = 0; r < n; ++r) {
        const comm_type* from = staging + static_cast<std::size_t>(r) * u.slice;
        accum_type* to = gradients_.data() + u.flat_index(r, 0);
        for (std::size_t j = 0; j < u.slice; ++j) to[j] = convert<accum_type>(from[j]);
      }
    } else {
      accum_type* to = Stage == stage::stage2 ? gradients_.data() + u.shard_begin : gradients_.data() + u.flat_index(rank_, 0);
      if constexpr (std::is_same_v<comm_type, accum_type>) {
        comm_->reduce_scatter(staging, to, u.slice, reduce_op::sum);
      } else {
        comm_->reduce_scatter(staging, receive_.data(), u.slice, reduce_op::sum);
        for (std::size_t j = 0; j < u.slice; ++j) to[j] = convert<accum_type>(receive_[j]);
      }
    }
  }

  void reduce_gradients() {
    if constexpr (Stage == stage::stage2) {
      while (next_unit_ < plan_.units.size()) reduce_unit(next_unit_++);
    } else {
      if (options_.layout.gradient_slots) {  // slot mode: read each reported slot once
        for (std::size_t p = 0; p < params_.size(); ++p) {
          if (reports_[p] == 0) continue;
          const grad_type* from = slots_.data() + plan_.param_offset[p];
          accum_type* to = gradients_.data() + plan_.param_offset[p];
          for (std::size_t i = 0; i < plan_.param_size[p]; ++i) to[i] = convert<accum_type>(static_cast<float>(to[i]) + static_cast<float>(from[i]));
        }
      }
      for (std::size_t k = 0; k < plan_.units.size(); ++k) reduce_unit(k);
    }
  }

  // ---- update and all-gather ---------------------------------------------------------------

  void update_shard() {
    const auto constants = Rule::prepare(options_.hyperparameters, step_ + 1);
    const float average = 1.0f / static_cast<float>(world_);
    const std::size_t updated = updated_count();
    for (const auto& s : segments_) {
      std::array<float*, max_state_slots> slots{};
      for (std::size_t k = 0; k < state_count_; ++k) slots[k] = state_.data() + k * updated + s.state_offset;
      for (std::size_t i = 0; i < s.count; ++i) {
        float value = static_cast<float>(s.values[i]);
        Rule::update(constants, value, static_cast<float>(s.grads[i]) * average, state_ref{slots.data(), i});
        s.values[i] = convert<value_type>(value);
        if (s.out != nullptr) s.out[i] = convert<param_type>(value);
      }
    }
  }

  //! All-gathers every unit's updated slices and scatters them into the framework's parameters.
  void gather_parameters() {
    param_type* staging = staging_param();
    for (std::size_t k = 0; k < plan_.units.size(); ++k) {
      const auto& u = plan_.units[k];
      comm_->all_gather(param_shard_.data() + u.shard_begin, staging, u.slice);
      for (std::size_t i = unit_pieces_begin_[k]; i < unit_pieces_begin_[k + 1]; ++i) {
        const auto& piece = unit_pieces_[i];
        const param_type* from = staging + static_cast<std::size_t>(piece.rank) * u.slice + (piece.shard_offset - u.shard_begin);
        std::copy(from, from + piece.count, params_[piece.param].data + piece.param_offset);
      }
    }
  }

  void reset_reports() {
    std::fill(reports_.begin(), reports_.end(), 0u);
    if constexpr (Stage == stage::stage2) {
      std::fill(record_head_.begin(), record_head_.end(), none);
      records_used_ = 0;
      next_unit_ = 0;
      std::copy(pending_initial_.begin(), pending_initial_.end(), pending_.begin());
    } else {
      gradients_.zero();
    }
    slots_.zero();
  }

  Comm* comm_;
  options_type options_;
  int rank_;
  int world_;
  Checkpointer checkpointer_{};
  std::size_t state_count_ = 0;
  std::uint64_t step_ = 0;
  bool broken_ = false;

  partition_plan plan_;
  std::vector<std::string> names_;
  std::vector<raw_span<param_type>> params_;
  std::vector<std::uint32_t> expected_reports_;
  std::vector<std::uint32_t> reports_;
  std::vector<owned_piece> owned_;
  std::vector<owned_piece> unit_pieces_;         // all pieces, grouped by unit
  std::vector<std::size_t> unit_pieces_begin_;   // unit k's pieces: [begin[k], begin[k+1])
  std::vector<std::size_t> param_units_;         // the units each parameter touches
  std::vector<std::size_t> param_units_begin_;
  std::vector<std::uint32_t> pending_initial_;   // reports each unit waits for
  std::vector<std::uint32_t> pending_;
  std::size_t next_unit_ = 0;
  std::vector<const grad_type*> record_data_;    // stage 2: reported gradients, per parameter a list
  std::vector<std::size_t> record_next_;
  std::vector<std::size_t> record_head_;
  std::size_t records_used_ = 0;
  std::vector<segment> segments_;

  detail::owned_buffer<value_type> master_;
  detail::owned_buffer<float> state_;
  detail::owned_buffer<accum_type> gradients_;
  detail::owned_buffer<grad_type> slots_;
  detail::owned_buffer<param_type> param_shard_;
  detail::owned_buffer<std::byte> staging_;
  detail::owned_buffer<comm_type> receive_;
};

}  // namespace zero
