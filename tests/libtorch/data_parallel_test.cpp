// zero::libtorch::data_parallel against torch's own optimizer: a torch::nn model trained on one
// process by torch::optim::AdamW (libtorch's port of torch.optim.AdamW) on the global batch, and
// by zero on 2 and 3 thread ranks, each rank on its slice of the batch, with its gradients
// reported from autograd's hooks. Stages 0, 1 and 2, both partitioners, fp32, two parameter
// groups (no weight decay for vectors), a learning-rate schedule and gradient clipping.
//
// Checked: every rank ends bitwise equal to every other; each tensor's largest difference from
// torch's, over the tensor's largest magnitude, is at most 1e-6 (both are fp32 computations of
// the same training; the difference comes from the order of the gradient sums and of the
// update's operations). A double-precision run of torch's own optimizer gives the exact
// training: zero must be no farther from it than twice torch's own fp32 run is (over 200 steps
// both are about 1.3e-6 from it, which is why 1e-6 against torch is as tight as is meaningful).

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
#include <vector>

#include <unistd.h>

#include "zero/libtorch/data_parallel.hpp"
#include "zero/zero.hpp"

namespace {

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
};

double learning_rate(int step) { return peak_lr * (step < 5 ? (step + 1) / 5.0 : 1.0 - 0.5 * (step - 5) / steps); }
bool aux_used(const recipe& r, int step) { return r.with_aux && step % 2 == 0; }

// The batch of a step: contexts and the symbol that follows them (a function of the context
// the model can learn).
struct batch_data {
  torch::Tensor x, y;
};
batch_data batch_of(int step) {
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
std::vector<torch::Tensor> initial_values(bool with_aux) {
  torch::manual_seed(7);
  Net net(with_aux);
  std::vector<torch::Tensor> out;
  for (const auto& p : net->parameters()) out.push_back(p.detach().clone());
  return out;
}

Net make_net(const recipe& r, const std::vector<torch::Tensor>& init, torch::Dtype dtype) {
  Net net(r.with_aux);
  net->to(dtype);
  torch::NoGradGuard no_grad;
  auto params = net->parameters();
  for (std::size_t i = 0; i < params.size(); ++i) params[i].copy_(init[i]);
  return net;
}

std::vector<torch::Tensor> snapshot(Net& net) {
  std::vector<torch::Tensor> out;
  for (const auto& p : net->parameters()) out.push_back(p.detach().to(torch::kDouble).clone());
  return out;
}

// torch::optim::AdamW on the whole batch, in `dtype`: the reference.
std::vector<torch::Tensor> train_with_torch(const recipe& r, torch::Dtype dtype) {
  Net net = make_net(r, initial_values(r.with_aux), dtype);
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& p : net->parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(peak_lr).weight_decay(weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(peak_lr).weight_decay(0)));
  torch::optim::AdamW opt(std::move(groups), torch::optim::AdamWOptions(peak_lr));
  for (int step = 0; step < steps; ++step) {
    for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(learning_rate(step));
    opt.zero_grad();  // grads to None: a parameter without a gradient is skipped
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

// zero on `world` thread ranks: every rank's final values.
template <class Engine>
std::vector<std::vector<torch::Tensor>> train_with_zero(const recipe& r, int world, zero::libtorch::gradient_release release,
                                                        zero::unreported_gradients unreported = zero::unreported_gradients::zero,
                                                        std::size_t* peak_held = nullptr) {
  const auto init = initial_values(r.with_aux);
  std::vector<std::vector<torch::Tensor>> finals(static_cast<std::size_t>(world));
  std::vector<std::size_t> peaks(static_cast<std::size_t>(world));
  zero::thread_group group(world, {std::chrono::seconds(60)});
  group.run([&](zero::thread_communicator& comm) {
    const int rank = comm.rank();
    Net net = make_net(r, init, torch::kFloat);
    typename Engine::options_type o;
    o.hyperparameters = {.lr = peak_lr, .weight_decay = weight_decay};
    const auto groups = zero::libtorch::no_weight_decay_for_vectors(o);
    o.max_grad_norm = max_grad_norm;
    o.unreported = unreported;
    o.layout.bucket_elements = 512;  // several units: stage 2 reduces while backward runs
    o.layout.order = r.order;
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
    peaks[static_cast<std::size_t>(rank)] = dp.peak_gradients_held();
    finals[static_cast<std::size_t>(rank)] = snapshot(net);
  });
  if (peak_held) *peak_held = peaks[0];
  return finals;
}

// Each tensor's largest difference over its largest magnitude.
double worst_relative_error(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double diff = (a[i] - b[i]).abs().max().item<double>();
    const double scale = b[i].abs().max().item<double>();
    worst = std::max(worst, scale > 0 ? diff / scale : diff);
  }
  return worst;
}

bool bitwise_equal(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!torch::equal(a[i], b[i])) return false;
  return true;
}

std::size_t equal_tensors(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) n += torch::equal(a[i], b[i]) ? 1 : 0;
  return n;
}

template <class Engine>
void check_against_torch(const char* what, const recipe& r = {},
                         zero::libtorch::gradient_release release = zero::libtorch::gradient_release::free,
                         zero::unreported_gradients unreported = zero::unreported_gradients::zero) {
  torch::set_num_threads(1);
  const auto reference = train_with_torch(r, torch::kFloat);
  const auto exact = train_with_torch(r, torch::kDouble);
  const double torch_error = worst_relative_error(reference, exact);
  for (const int world : {2, 3}) {
    CAPTURE(world);
    const auto finals = train_with_zero<Engine>(r, world, release, unreported);
    for (int rank = 1; rank < world; ++rank) {
      CAPTURE(rank);
      CHECK(bitwise_equal(finals[static_cast<std::size_t>(rank)], finals[0]));
    }
    const double error = worst_relative_error(finals[0], reference);
    const double zero_exact = worst_relative_error(finals[0], exact);
    std::printf("%s, world %d: against torch fp32 %.3g, against fp64 %.3g (torch fp32 against fp64 %.3g); %zu of %zu tensors bitwise torch's\n",
                what, world, error, zero_exact, torch_error, equal_tensors(finals[0], reference), reference.size());
    CHECK(error <= 1e-6);
    CHECK(zero_exact <= 2 * torch_error);  // no farther from the exact training than torch's own fp32 run
    CHECK(error > 0.0);  // zero's sums run in another order: equal bits would mean the comparison compared nothing
  }
}

template <zero::stage S, class Partitioner>
using fp32_engine = zero::optimizer<S, zero::fp32_precision, zero::adamw, Partitioner>;

}  // namespace

TEST_SUITE("libtorch") {
  TEST_CASE("libtorch.adamw_stage0_contiguous") { check_against_torch<fp32_engine<zero::stage0, zero::contiguous_partitioner>>("stage 0 contiguous"); }
  TEST_CASE("libtorch.adamw_stage1_contiguous") { check_against_torch<fp32_engine<zero::stage1, zero::contiguous_partitioner>>("stage 1 contiguous"); }
  TEST_CASE("libtorch.adamw_stage2_contiguous") { check_against_torch<fp32_engine<zero::stage2, zero::contiguous_partitioner>>("stage 2 contiguous"); }
  TEST_CASE("libtorch.adamw_stage0_bucketed") { check_against_torch<fp32_engine<zero::stage0, zero::bucketed_partitioner>>("stage 0 bucketed"); }
  TEST_CASE("libtorch.adamw_stage1_bucketed") { check_against_torch<fp32_engine<zero::stage1, zero::bucketed_partitioner>>("stage 1 bucketed"); }
  TEST_CASE("libtorch.adamw_stage2_bucketed") { check_against_torch<fp32_engine<zero::stage2, zero::bucketed_partitioner>>("stage 2 bucketed"); }

  TEST_CASE("libtorch.stage2_gradient_accumulation_zero_in_place") {
    check_against_torch<fp32_engine<zero::stage2, zero::bucketed_partitioner>>("stage 2, 2 micro-steps, zeroed in place", {.micro_steps = 2},
                                                                              zero::libtorch::gradient_release::zero_in_place);
  }

  // the layout order autograd really produces, learned in the first micro-step
  TEST_CASE("libtorch.stage2_learned_order") {
    check_against_torch<fp32_engine<zero::stage2, zero::bucketed_partitioner>>("stage 2, learned order", {.order = zero::gradient_order::learned});
  }

  // A head used on even steps only: torch.optim skips a parameter whose grad is None, and so does
  // the engine under unreported_gradients::skip (its own step count drives its bias corrections).
  TEST_CASE("libtorch.unused_parameters_skipped_as_torch_does") {
    check_against_torch<fp32_engine<zero::stage2, zero::contiguous_partitioner>>("stage 2, head used every other step", {.with_aux = true},
                                                                                 zero::libtorch::gradient_release::free,
                                                                                 zero::unreported_gradients::skip);
  }

  // Stage 2 with small units frees gradients while backward still runs: at no point does the
  // framework hold every gradient.
  TEST_CASE("libtorch.stage2_frees_gradients_during_backward") {
    torch::set_num_threads(1);
    std::size_t peak = 0;
    train_with_zero<fp32_engine<zero::stage2, zero::bucketed_partitioner>>({}, 2, zero::libtorch::gradient_release::free,
                                                                          zero::unreported_gradients::zero, &peak);
    const std::size_t tensors = Net(false)->parameters().size();
    CAPTURE(tensors);
    CHECK(peak >= 1);
    CHECK(peak < tensors);
  }

  // Saved at 2 ranks after 120 steps: resumed at 2 ranks it continues bitwise as if never
  // stopped; resumed at 3 ranks (the shards cut anew) it still ends within fp32 noise of torch.
  TEST_CASE("libtorch.checkpoint_resumed_at_another_world_size") {
    torch::set_num_threads(1);
    using engine = fp32_engine<zero::stage2, zero::bucketed_partitioner>;
    const auto free = zero::libtorch::gradient_release::free;
    const auto dir = std::filesystem::temp_directory_path() / ("zero_libtorch_ckpt_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    const auto whole = train_with_zero<engine>({}, 2, free);
    train_with_zero<engine>({.last_step = 120, .save = dir.string()}, 2, free);
    const auto resumed = train_with_zero<engine>({.first_step = 120, .load = dir.string()}, 2, free);
    CHECK(bitwise_equal(resumed[0], whole[0]));
    CHECK(bitwise_equal(resumed[1], whole[0]));
    const auto resharded = train_with_zero<engine>({.first_step = 120, .load = dir.string()}, 3, free);
    CHECK(bitwise_equal(resharded[1], resharded[0]));
    CHECK(bitwise_equal(resharded[2], resharded[0]));
    const double error = worst_relative_error(resharded[0], train_with_torch({}, torch::kFloat));
    std::printf("saved at 2 ranks, resumed at 3: against torch fp32 %.3g\n", error);
    CHECK(error <= 1e-6);
    std::filesystem::remove_all(dir);
  }

  // A tensor registered under two names (a tied weight) is one parameter, reported once: autograd
  // sums its uses before it accumulates.
  TEST_CASE("libtorch.tied_weight_registered_once") {
    torch::set_num_threads(1);
    Net net(false);
    net->register_parameter("tied_fc2_weight", net->fc2->weight);
    REQUIRE(net->named_parameters().size() == 8);
    zero::single_rank_communicator comm;
    using engine = zero::optimizer<zero::stage2, zero::fp32_precision, zero::sgd, zero::contiguous_partitioner, zero::single_rank_communicator>;
    typename engine::options_type o;
    o.hyperparameters.lr = 0.5;
    const auto data = batch_of(0);
    torch::nn::functional::cross_entropy(net->forward(data.x, false), data.y).backward();  // torch alone
    const auto grad = net->fc2->weight.grad().detach().clone();
    net->zero_grad();
    const auto before = net->fc2->weight.detach().clone();
    zero::libtorch::data_parallel<engine> dp(*net, comm, o);
    CHECK(dp.size() == 7);
    CHECK(dp.name(0) == "tied_fc2_weight");  // the module's own parameters come before its children's
    for (std::size_t i = 1; i < dp.size(); ++i) CHECK(dp.name(i) != "fc2.weight");
    torch::nn::functional::cross_entropy(net->forward(data.x, false), data.y).backward();
    dp.step();
    CHECK(torch::allclose(net->fc2->weight, before - 0.5 * grad));
  }

  TEST_CASE("libtorch.wrong_dtype_refused") {
    Net net(false);  // fp32
    zero::single_rank_communicator comm;
    using bf16_engine = zero::optimizer<zero::stage2, zero::bf16_mixed, zero::adamw, zero::contiguous_partitioner, zero::single_rank_communicator>;
    CHECK_THROWS_WITH_AS((zero::libtorch::data_parallel<bf16_engine>(*net, comm)),
                         doctest::Contains("parameter 'embed.weight' (rank 0) is Float but the engine's parameters are BFloat16"),
                         zero::usage_error);
    // nothing was hooked: a plain backward still works
    auto loss = net->forward(torch::zeros({2, context}, torch::kLong), false).sum();
    loss.backward();
    CHECK(net->parameters()[0].grad().defined());
  }

  TEST_CASE("libtorch.second_backward_in_a_micro_step_refused") {
    Net net(false);
    zero::single_rank_communicator comm;
    using engine = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::contiguous_partitioner, zero::single_rank_communicator>;
    typename engine::options_type o;
    o.layout.bucket_elements = 1u << 20;  // one unit: nothing is released before the step
    zero::libtorch::data_parallel<engine> dp(*net, comm, o);
    const auto x = torch::zeros({2, context}, torch::kLong);
    net->forward(x, false).sum().backward();
    // refused by the adapter (the first gradient still held) or by the engine (already read and
    // released): either way an error naming the parameter, never a gradient counted twice
    std::string message;
    try {
      net->forward(x, false).sum().backward();
    } catch (const std::exception& e) {
      message = e.what();
    }
    CAPTURE(message);
    CHECK(message.find("'fc2.bias'") != std::string::npos);
    CHECK(message.find("micro-step") != std::string::npos);
  }
}
