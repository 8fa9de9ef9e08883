#pragma once
//! @file libtorch/data_parallel.hpp
//! ZeRO for libtorch (PyTorch's C++ frontend) programs: a `torch::nn::Module`'s parameters
//! registered with a `zero::optimizer`, and every gradient reported to it from autograd the
//! moment it has been accumulated. Optional: only programs that use libtorch include it; the rest
//! of `zero` never includes a torch header.
//!
//! ```cpp
//! using Engine = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw>;
//! zero::optimizer_options<zero::adamw> o;
//! o.hyperparameters = {.lr = 3e-4, .weight_decay = 0.1};
//! auto groups = zero::libtorch::no_weight_decay_for_vectors(o);  // biases, norm weights: group 1
//! zero::libtorch::data_parallel<Engine> dp(*model, comm, o, groups);
//! for (...) {
//!   auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);  // this rank's slice
//!   loss.backward();  // every gradient goes to the engine as autograd accumulates it
//!   dp.step();        // averaged over ranks, clipped, updated, all-gathered into the model
//! }
//! ```
//!
//! Contract (the engine's, seen from libtorch):
//! * The module's parameters that require a gradient are registered in `named_parameters()`
//!   order (model order), each tensor once (a tied weight under two names is registered under
//!   its first). The engine reads and writes their storage in place: keep the module and its
//!   parameters alive, contiguous, and on the engine's side (CPU for a host engine) while the
//!   adapter lives; the adapter holds references to the tensors.
//! * Each parameter's dtype is the engine's `param_type` (torch accumulates a gradient in its
//!   parameter's dtype, so the engine's `grad_type` must be the same type).
//! * One `backward()` per micro-step, on the rank's own thread (the engine is used by that
//!   thread only); `end_micro_step()` between the micro-steps of one step (gradient
//!   accumulation), `step()` after the last.
//! * A gradient is reported from the parameter's post-accumulate-grad hook, so the engine reduces
//!   while backward still runs (stage 2), and it is handed back to torch as soon as the engine
//!   released it: `.grad` is freed (`gradient_release::free`, the default), or zeroed in place
//!   for the next micro-step to accumulate into (`gradient_release::zero_in_place`). After
//!   `step()` returns, no gradient is held.

#include <ATen/ATen.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/nn/module.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

#include "zero/engine/rank_agreement.hpp"
#include "zero/error.hpp"
#include "zero/optimizer.hpp"
#include "zero/types.hpp"

namespace zero::libtorch {

//! The torch dtype of an element type of `zero`.
template <class T>
constexpr c10::ScalarType scalar_type_of() noexcept {
  if constexpr (std::is_same_v<T, float>) return c10::ScalarType::Float;
  else if constexpr (std::is_same_v<T, double>) return c10::ScalarType::Double;
  else if constexpr (std::is_same_v<T, bf16>) return c10::ScalarType::BFloat16;
  else if constexpr (std::is_same_v<T, fp16>) return c10::ScalarType::Half;
  else static_assert(sizeof(T) == 0, "zero::libtorch: no torch dtype for this element type");
}

//! Which parameter group a tensor belongs to, from its name in `named_parameters()` and the
//! tensor itself. An empty function puts every parameter in group 0.
using group_function = std::function<std::uint32_t(const std::string& name, const at::Tensor& tensor)>;

//! The usual grouping of transformers and MLPs: matrices (and higher) in group 0, with
//! `o.hyperparameters`; vectors and scalars (biases, norm weights) in a new group with the same
//! hyperparameters but no weight decay. Adds that group to `o` and returns the function.
template <class Options>
  requires requires(Options o) {
    o.hyperparameters.weight_decay = 0.0;
    o.add_group(o.hyperparameters);
  }
group_function no_weight_decay_for_vectors(Options& o) {
  auto h = o.hyperparameters;
  h.weight_decay = 0;
  const std::uint32_t no_decay = o.add_group(h);
  return [no_decay](const std::string&, const at::Tensor& t) -> std::uint32_t { return t.dim() >= 2 ? 0 : no_decay; };
}

//! What becomes of a gradient once the engine no longer reads it.
enum class gradient_release {
  free,           //!< `.grad` is reset: its memory goes back to torch's allocator
  zero_in_place,  //!< `.grad` is zeroed and kept: the next backward accumulates into it, no allocation
};

//! How the ranks' replicas come to start from the same values (replicas that start apart would
//! train apart without a word).
enum class replica_start {
  broadcast_from_rank0,  //!< every parameter is broadcast from rank 0 at construction, as DDP does
  check,                 //!< a digest of every parameter is compared across the ranks (one all-gather of
                         //!< a word per parameter); where a replica differs, every rank throws the same
                         //!< mismatch_error naming the parameter and the rank
  as_given,              //!< nothing: the framework guarantees it
};

//! Options of the adapter itself (the engine's are `Engine::options_type`).
struct adapter_options {
  gradient_release release = gradient_release::free;
  replica_start start = replica_start::broadcast_from_rank0;
};

//! A libtorch module trained by a `zero` engine: registers the module's parameters, builds the
//! engine over them, reports each gradient from autograd, releases it when the engine allows,
//! and steps. Neither copyable nor movable (autograd's hooks and the engine keep its address).
//! @tparam Engine a `zero::optimizer` on a host backend whose `param_type` is `grad_type`
template <class Engine>
class data_parallel {
 public:
  using engine_type = Engine;
  using param_type = typename Engine::param_type;
  using grad_type = typename Engine::grad_type;
  using options_type = typename Engine::options_type;
  using communicator_type = typename Engine::communicator_type;

  static_assert(std::is_same_v<param_type, grad_type>,
                "zero::libtorch::data_parallel: torch accumulates a gradient in its parameter's dtype, so the engine's "
                "grad_type must be its param_type (e.g. zero::fp32_precision, zero::bf16_mixed, zero::fp16_mixed)");
  static_assert(Engine::stage_value != stage::stage3,
                "zero::libtorch::data_parallel: stage 3 keeps the parameters in the engine's shards, and torch's modules "
                "would have to gather each one around its forward and backward (not done by this adapter); use stage 0, 1 or 2");
  static_assert(Engine::buffers_on_host,
                "zero::libtorch::data_parallel: a host engine only (CPU tensors); a device engine would also need "
                "torch's CUDA stream to wait for the engine's release_event() before a gradient is freed");

  //! Registers `model`'s parameters that require a gradient and builds the engine (collective:
  //! every rank of `comm` constructs its adapter alike). `options.on_gradients_released`, when
  //! set, is called after the adapter released the gradients.
  //! With `replica_start::broadcast_from_rank0` (the default) every rank's module holds rank 0's
  //! values when it returns.
  //! @throws usage_error naming the parameter and the rank: a parameter of another dtype than
  //!   the engine's, not on the CPU, not contiguous, or that already has a post-accumulate-grad
  //!   hook; on every other rank a usage_error naming that rank
  //! @throws mismatch_error: the ranks' modules have other parameters, or (with
  //!   `replica_start::check`) other values
  data_parallel(torch::nn::Module& model, communicator_type& comm, options_type options = {}, const group_function& groups = {},
                adapter_options adapter = {})
      : adapter_(adapter),
        tensors_(agreed(model, comm, adapter.start)),
        user_released_(std::move(options.on_gradients_released)),
        engine_(comm, registration(tensors_, groups), with_release(std::move(options))) {
    if (adapter_.start == replica_start::check) check_replicas();
    for (std::size_t i = 0; i < tensors_.size(); ++i)
      torch::autograd::impl::set_post_acc_grad_hooks(tensors_[i].tensor, std::make_unique<report_hook>(this, i));
  }

  data_parallel(const data_parallel&) = delete;
  data_parallel& operator=(const data_parallel&) = delete;

  //! Removes the hooks; the module and its gradients stay as they are.
  ~data_parallel() {
    for (auto& t : tensors_) torch::autograd::impl::set_post_acc_grad_hooks(t.tensor, nullptr);
  }

  Engine& engine() noexcept { return engine_; }
  const Engine& engine() const noexcept { return engine_; }

  //! The registered parameters, in registration (model) order: index i is the engine's
  //! parameter i.
  std::size_t size() const noexcept { return tensors_.size(); }
  const std::string& name(std::size_t i) const { return tensors_.at(i).name; }
  const at::Tensor& tensor(std::size_t i) const { return tensors_.at(i).tensor; }

  //! Gradients reported and not yet released (held by torch for the engine).
  std::size_t gradients_held() const noexcept { return held_; }
  //! The most gradients held at once since construction, and their bytes.
  std::size_t peak_gradients_held() const noexcept { return peak_held_; }
  std::size_t peak_gradient_bytes_held() const noexcept { return peak_held_bytes_; }

  //! Ends a micro-step that is not the last of the step (gradient accumulation).
  void end_micro_step() { engine_.end_micro_step(); }

  //! Ends the step's last micro-step and updates: every rank's module holds the new parameters
  //! when it returns, and no gradient is held. Parameters that got no gradient count as the
  //! engine's `options.unreported` says (zero, or skipped as torch.optim skips `grad is None`).
  step_report step() { return engine_.step(); }

 private:
  struct registered {
    std::string name;
    at::Tensor tensor;
    bool held = false;
  };

  // Autograd calls it on the backward thread once the parameter's .grad holds this backward's
  // accumulated gradient.
  struct report_hook final : torch::autograd::PostAccumulateGradHook {
    report_hook(data_parallel* owner, std::size_t index) : owner_(owner), index_(index) {}
    void operator()(const torch::autograd::Variable& parameter) override { owner_->report(index_, parameter); }

   private:
    data_parallel* owner_;
    std::size_t index_;
  };

  static std::string where(const std::string& name, int rank) {
    return "parameter '" + name + "' (rank " + std::to_string(rank) + ")";
  }

  static std::vector<registered> collect(torch::nn::Module& model, int rank) {
    std::vector<registered> out;
    std::unordered_set<const void*> seen;  // a tied tensor under two names: registered once
    for (const auto& item : model.named_parameters(/*recurse=*/true)) {
      const at::Tensor& t = item.value();
      if (!t.requires_grad()) continue;
      if (!seen.insert(t.unsafeGetTensorImpl()).second) continue;
      const std::string& name = item.key();
      if (t.scalar_type() != scalar_type_of<param_type>())
        throw usage_error("zero::libtorch: " + where(name, rank) + " is " + std::string(c10::toString(t.scalar_type())) +
                          " but the engine's parameters are " + std::string(c10::toString(scalar_type_of<param_type>())) +
                          ": convert the module (module->to(...)) or choose the engine's precision to match");
      if (!t.device().is_cpu())
        throw usage_error("zero::libtorch: " + where(name, rank) + " is on " + t.device().str() +
                          ", but this engine keeps its buffers in host memory: its parameters must be CPU tensors");
      if (t.is_sparse() || !t.is_contiguous())
        throw usage_error("zero::libtorch: " + where(name, rank) +
                          " is not a dense contiguous tensor: the engine reads and writes it as one span (.contiguous() it first)");
      if (t.numel() == 0) continue;  // nothing to train
      if (torch::autograd::impl::post_acc_grad_hooks(t) != nullptr)
        throw usage_error("zero::libtorch: " + where(name, rank) +
                          " already has a post-accumulate-grad hook (another adapter?): torch keeps one per tensor");
      out.push_back({name, t});
    }
    if (out.empty()) throw usage_error("zero::libtorch: the module has no parameter that requires a gradient (rank " + std::to_string(rank) + ")");
    return out;
  }

  // collect() on every rank, agreed on by all of them before anything else is collective (the
  // engine's own agreement: one all-gather of two words per rank, whether it refused and a
  // digest of the names, sizes and dtypes), so that a refusal or another layout on one rank is an
  // error on every rank, never a hang or a broadcast of mismatched sizes. Then, with
  // broadcast_from_rank0, rank 0's values everywhere.
  static std::vector<registered> agreed(torch::nn::Module& model, communicator_type& comm, replica_start start) {
    std::vector<registered> tensors;
    std::string refusal;
    try {
      tensors = collect(model, comm.rank());
    } catch (const usage_error& e) {
      refusal = e.what();
    }
    engine::digest layout;
    layout.word(tensors.size());
    for (const auto& t : tensors) {
      layout.text(t.name);
      layout.word(static_cast<std::uint64_t>(t.tensor.numel()));
      layout.word(static_cast<std::uint64_t>(t.tensor.scalar_type()));
    }
    auto gather = [&](const std::uint64_t* mine, std::uint64_t* all, std::size_t n) { comm.all_gather(mine, all, n); };
    engine::agree_on_input(gather, comm.rank(), comm.world_size(), layout.value(), refusal,
                           "a module with other parameters (names, sizes or dtypes of those that require a gradient)");
    if (start == replica_start::broadcast_from_rank0)
      for (auto& t : tensors) comm.broadcast(reinterpret_cast<param_type*>(t.tensor.data_ptr()), static_cast<std::size_t>(t.tensor.numel()), 0);
    return tensors;
  }

  static std::vector<parameter<param_type>> registration(std::vector<registered>& tensors, const group_function& groups) {
    std::vector<parameter<param_type>> params;
    params.reserve(tensors.size());
    for (auto& t : tensors) {
      parameter<param_type> p;
      p.name = t.name;
      p.values = {reinterpret_cast<param_type*>(t.tensor.data_ptr()), static_cast<std::size_t>(t.tensor.numel())};
      p.group = groups ? groups(t.name, t.tensor) : 0;  // the engine refuses a group it does not have
      params.push_back(std::move(p));
    }
    return params;
  }

  // The bits of a tensor's values, folded into one word, eight bytes at a time (engine::digest
  // folds byte by byte: fine for layouts, slow for every value of a large model).
  static std::uint64_t digest(const at::Tensor& t) {
    const auto* bytes = static_cast<const unsigned char*>(t.const_data_ptr());
    const std::size_t n = static_cast<std::size_t>(t.numel()) * static_cast<std::size_t>(t.element_size());
    std::uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      std::uint64_t w;
      std::memcpy(&w, bytes + i, 8);
      h = (h ^ w) * 0xff51afd7ed558ccdull;
      h ^= h >> 29;
    }
    for (; i < n; ++i) h = (h ^ bytes[i]) * 0x100000001b3ull;
    return h;
  }

  // Collective: every rank gathers every rank's digests and throws the same error where they
  // differ, naming the first parameter and the lowest rank that differs from rank 0.
  void check_replicas() {
    const std::size_t n = tensors_.size();
    const auto world = static_cast<std::size_t>(engine_.world_size());
    std::vector<std::uint64_t> mine(n), all(n * world);
    for (std::size_t i = 0; i < n; ++i) mine[i] = digest(tensors_[i].tensor);
    engine_.all_gather_words(mine.data(), all.data(), n);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t r = 1; r < world; ++r)
        if (all[r * n + i] != all[i])
          throw mismatch_error("zero::libtorch: parameter '" + tensors_[i].name + "' holds other values on rank " + std::to_string(r) +
                               " than on rank 0: every rank's module must start from the same values (build the values once "
                               "and copy them into each replica; thread ranks share torch's default generator)");
  }

  options_type with_release(options_type o) {
    o.on_gradients_released = [this](std::span<const std::size_t> released) { release(released); };
    return o;
  }

  void report(std::size_t i, const at::Tensor& parameter) {
    auto& r = tensors_[i];
    const at::Tensor& g = parameter.grad();
    const int rank = engine_.rank();
    if (!g.defined()) return;  // nothing accumulated (autograd passed an undefined gradient)
    if (r.held)
      throw usage_error("zero::libtorch: " + where(r.name, rank) +
                        " got a second gradient before the engine released the first: one backward() per micro-step "
                        "(call end_micro_step() between micro-steps)");
    if (g.is_sparse() || !g.is_contiguous() || g.scalar_type() != scalar_type_of<grad_type>() || g.numel() != r.tensor.numel() ||
        !g.device().is_cpu())
      throw usage_error("zero::libtorch: " + where(r.name, rank) + "'s gradient is not a dense contiguous CPU " +
                        std::string(c10::toString(scalar_type_of<grad_type>())) + " tensor of " + std::to_string(r.tensor.numel()) +
                        " elements (a sparse embedding gradient, or a gradient layout the engine cannot read as one span)");
    r.held = true;
    ++held_;
    held_bytes_ += static_cast<std::size_t>(g.numel()) * sizeof(grad_type);
    if (held_ > peak_held_) peak_held_ = held_;
    if (held_bytes_ > peak_held_bytes_) peak_held_bytes_ = held_bytes_;
    engine_.gradient_ready(i, raw_span<const grad_type>(reinterpret_cast<const grad_type*>(g.const_data_ptr()), static_cast<std::size_t>(g.numel())));
  }

  // Called by the engine (from gradient_ready, end_micro_step or step) with what it released.
  void release(std::span<const std::size_t> released) {
    for (const std::size_t i : released) {
      auto& r = tensors_[i];
      if (!r.held) continue;  // released without a report of ours (gradient_unused)
      r.held = false;
      --held_;
      held_bytes_ -= static_cast<std::size_t>(r.tensor.numel()) * sizeof(grad_type);
      at::Tensor& g = r.tensor.mutable_grad();
      if (adapter_.release == gradient_release::zero_in_place && g.defined()) g.zero_();
      else g.reset();
    }
    if (user_released_) user_released_(released);
  }

  adapter_options adapter_;
  std::vector<registered> tensors_;
  std::function<void(std::span<const std::size_t>)> user_released_;
  std::size_t held_ = 0, held_bytes_ = 0, peak_held_ = 0, peak_held_bytes_ = 0;
  Engine engine_;  // last: built over tensors_, destroyed first
};

}  // namespace zero::libtorch
