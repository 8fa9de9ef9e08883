#pragma once
// The libtorch tests' model, data, torch::optim reference and zero training loop, shared by the
// thread-rank tests (data_parallel_test.cpp) and the MPI ones (tests/mpi/libtorch_test.cpp).

// torch first: c10's logging defines CHECK, CHECK_EQ, ... (fatal checks), which doctest's
// assertions must replace
#include <torch/torch.h>
#undef CHECK
#undef CHECK_EQ
#undef CHECK_NE
#undef CHECK_LT
#undef CHECK_LE
#undef CHECK_GT
#undef CHECK_GE
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include "zero/libtorch/data_parallel.hpp"
#include "zero/zero.hpp"

namespace libtorch_test {

constexpr int symbols = 27, context = 4, embedding = 8, hidden = 45;
constexpr int batch = 24;  // global batch: 12 per rank on 2 ranks, 8 on 3
constexpr int steps = 200;
constexpr double peak_lr = 3e-3, weight_decay = 0.1, max_grad_norm = 1.0;

// A small MLP language model with odd tensor sizes (3,033 parameters), a LayerNorm, and an
// auxiliary head used only where `aux` is on.
struct NetImpl : torch::nn::Module {
  torch::nn::Embedding embed{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, aux{nullptr};
  torch::nn::LayerNorm norm{nullptr};

  explicit NetImpl(bool with_aux) {
    embed = register_module("embed", torch::nn::Embedding(symbols, embedding));
    fc1 = register_module("fc1", torch::nn::Linear(context * embedding, hidden));
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, symbols));
    if (with_aux) aux = register_module("aux", torch::nn::Linear(hidden, symbols));
  }

  torch::Tensor forward(const torch::Tensor& x, bool use_aux) {
    auto h = torch::tanh(norm(fc1(embed(x).view({x.size(0), context * embedding}))));
    auto logits = fc2(h);
    if (use_aux) logits = logits + aux(h);
    return logits;
  }
};
TORCH_MODULE(Net);

struct recipe {
  bool with_aux = false;  // the auxiliary head exists, and is used on even steps only
  int micro_steps = 1;    // gradient accumulation: the batch in this many micro-batches
  zero::gradient_order order = zero::gradient_order::reverse;  // the engine's layout order
  // zero only: train steps [first_step, last_step), after loading the checkpoint `load` (when
  // set), then save one under `save` (when set)
  int first_step = 0, last_step = steps;
  std::string load = {}, save = {};
  // torch only: zero_grad() sets gradients to None (a parameter without one is skipped) or to
  // zeros (it is updated with a zero gradient, as DeepSpeed and zero's default treat it)
  bool grads_to_none = true;
  // zero only: layout.read_gradients_in_update (at one rank the update reads torch's gradients)
  bool read_in_update = false;
};

inline double learning_rate(int step) { return peak_lr * (step < 5 ? (step + 1) / 5.0 : 1.0 - 0.5 * (step - 5) / steps); }
inline bool aux_used(const recipe& r, int step) { return r.with_aux && step % 2 == 0; }

// The batch of a step: contexts and the symbol that follows them (a function of the context
// the model can learn).
struct batch_data {
  torch::Tensor x, y;
};
inline batch_data batch_of(int step) {
  std::mt19937 rng(1000u + static_cast<unsigned>(step));
  std::uniform_int_distribution<int> pick(0, symbols - 1);
  std::vector<std::int64_t> x(batch * context), y(batch);
  for (int i = 0; i < batch; ++i) {
    for (int t = 0; t < context; ++t) x[static_cast<std::size_t>(i * context + t)] = pick(rng);
    y[static_cast<std::size_t>(i)] = (x[static_cast<std::size_t>(i * context)] + 2 * x[static_cast<std::size_t>(i * context + 3)]) % symbols;
  }
  return {torch::tensor(x).view({batch, context}), torch::tensor(y)};
}

// The initial values every run starts from (torch's default initialization, seeded).
inline std::vector<torch::Tensor> initial_values(bool with_aux) {
  torch::manual_seed(7);
  Net net(with_aux);
  std::vector<torch::Tensor> out;
  for (const auto& p : net->parameters()) out.push_back(p.detach().clone());
  return out;
}

inline Net make_net(const recipe& r, const std::vector<torch::Tensor>& init, torch::Dtype dtype) {
  Net net(r.with_aux);
  net->to(dtype);
  torch::NoGradGuard no_grad;
  auto params = net->parameters();
  for (std::size_t i = 0; i < params.size(); ++i) params[i].copy_(init[i]);
  return net;
}

inline std::vector<torch::Tensor> snapshot(Net& net) {
  std::vector<torch::Tensor> out;
  for (const auto& p : net->parameters()) out.push_back(p.detach().to(torch::kDouble).clone());
  return out;
}

// torch::optim::AdamW on the whole batch, in `dtype`: the reference.
inline std::vector<torch::Tensor> train_with_torch(const recipe& r, torch::Dtype dtype) {
  Net net = make_net(r, initial_values(r.with_aux), dtype);
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& p : net->parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(peak_lr).weight_decay(weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(peak_lr).weight_decay(0)));
  torch::optim::AdamW opt(std::move(groups), torch::optim::AdamWOptions(peak_lr));
  for (int step = 0; step < steps; ++step) {
    for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(learning_rate(step));
    opt.zero_grad(r.grads_to_none);
    const auto data = batch_of(step);
    const int micro = batch / r.micro_steps;
    for (int m = 0; m < r.micro_steps; ++m) {
      auto logits = net->forward(data.x.narrow(0, m * micro, micro), aux_used(r, step));
      auto loss = torch::nn::functional::cross_entropy(logits, data.y.narrow(0, m * micro, micro)) / r.micro_steps;
      loss.backward();
    }
    torch::nn::utils::clip_grad_norm_(net->parameters(), max_grad_norm);
    opt.step();
  }
  return snapshot(net);
}

// One rank's training by zero over `comm` from the values `init` (drawn once, outside the rank
// threads: torch's default generator is one per process, and ranks drawing from it at once would
// start from different values): its final values, and the most gradients torch held at once.
template <class Engine>
std::pair<std::vector<torch::Tensor>, std::size_t> train_rank(typename Engine::communicator_type& comm, const recipe& r,
                                                              const std::vector<torch::Tensor>& init,
                                                              zero::libtorch::gradient_release release,
                                                              zero::unreported_gradients unreported) {
  const int rank = comm.rank(), world = comm.world_size();
  Net net = make_net(r, init, torch::kFloat);
  typename Engine::options_type o;
  o.hyperparameters = {.lr = peak_lr, .weight_decay = weight_decay};
  const auto groups = zero::libtorch::no_weight_decay_for_vectors(o);
  o.max_grad_norm = max_grad_norm;
  o.unreported = unreported;
  o.layout.bucket_elements = 512;  // several units: stage 2 reduces while backward runs
  o.layout.order = r.order;
  o.layout.read_gradients_in_update = r.read_in_update;
  zero::libtorch::data_parallel<Engine> dp(*net, comm, o, groups, {.release = release});
  REQUIRE(dp.size() == net->parameters().size());

  if (!r.load.empty()) zero::load_checkpoint(dp.engine(), r.load);
  const int local = batch / world, micro = local / r.micro_steps;
  for (int step = r.first_step; step < r.last_step; ++step) {
    for (std::size_t g = 0; g < dp.engine().group_count(); ++g) {
      auto h = dp.engine().hyperparameters(g);
      h.lr = learning_rate(step);
      dp.engine().set_hyperparameters(g, h);
    }
    const auto data = batch_of(step);
    for (int m = 0; m < r.micro_steps; ++m) {
      const int first = rank * local + m * micro;
      auto logits = net->forward(data.x.narrow(0, first, micro), aux_used(r, step));
      torch::nn::functional::cross_entropy(logits, data.y.narrow(0, first, micro)).backward();
      if (m + 1 < r.micro_steps) dp.end_micro_step();
    }
    dp.step();
    REQUIRE(dp.gradients_held() == 0);
    for (const auto& p : net->parameters()) {
      if (release == zero::libtorch::gradient_release::free) {
        REQUIRE_FALSE(p.grad().defined());
      } else if (p.grad().defined()) {
        REQUIRE(p.grad().abs().max().item<float>() == 0.0f);
      }
    }
  }
  if (!r.save.empty()) zero::save_checkpoint(dp.engine(), r.save);
  return {snapshot(net), dp.peak_gradients_held()};
}

// Each tensor's largest difference over its largest magnitude.
inline double worst_relative_error(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double diff = (a[i] - b[i]).abs().max().item<double>();
    const double scale = b[i].abs().max().item<double>();
    worst = std::max(worst, scale > 0 ? diff / scale : diff);
  }
  return worst;
}

inline bool bitwise_equal(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!torch::equal(a[i], b[i])) return false;
  return true;
}

inline std::size_t equal_tensors(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) n += torch::equal(a[i], b[i]) ? 1 : 0;
  return n;
}

}  // namespace libtorch_test
