// A libtorch program trained data-parallel with ZeRO: the character-level language model of the
// quick start (predict the next letter of a word from the four before it, on Debian's English
// word list), written with torch::nn and trained by torch's autograd on N thread ranks, each with
// its own replica and its slice of every batch. zero::libtorch::data_parallel registers the
// module's parameters with a ZeRO stage 2 engine (stage 0 or 1 on request), reports every
// gradient from autograd's hooks while backward runs, frees it as soon as the engine has read
// it, and writes the updated parameters back into every replica.
//
// Model: embedding(27, 16) per letter -> [linear -> LayerNorm -> tanh] x 2 (width 192) ->
// linear(27). bf16 parameters with fp32 master weights (or fp32 throughout), AdamW with no
// weight decay on biases and norm weights, clipping at 1.0, warmup + cosine schedule.
//
//   zero_example_libtorch [--world N] [--stage 0|1|2] [--precision bf16|fp32] [--steps S]
//                         [--seed X] [--samples K] [--words PATH]
//
// The exit status says whether the validation loss fell.

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numbers>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "../word_data.hpp"
#include "zero/libtorch/data_parallel.hpp"
#include "zero/zero.hpp"

namespace {

using zero_examples::context;
using zero_examples::example;
using zero_examples::symbols;

constexpr int embedding = 16, hidden = 192;
constexpr int batch = 256;  // examples per step, all ranks together
constexpr double peak_lr = 1e-2, final_lr = 1e-3, weight_decay = 0.1, max_grad_norm = 1.0;
constexpr int warmup_steps = 100;
constexpr std::size_t bucket_elements = 32768;  // a few units: stage 2 reduces while backward runs

struct settings {
  int world = 4;
  int stage = 2;
  bool bf16 = true;
  int steps = 5000;
  unsigned seed = 1;
  int samples = 12;
  std::string words = zero_examples::default_words;
};

struct CharMLPImpl : torch::nn::Module {
  torch::nn::Embedding embed{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, out{nullptr};
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};

  CharMLPImpl() {
    embed = register_module("embed", torch::nn::Embedding(symbols, embedding));
    fc1 = register_module("fc1", torch::nn::Linear(context * embedding, hidden));
    norm1 = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, hidden));
    norm2 = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})));
    out = register_module("out", torch::nn::Linear(hidden, symbols));
  }

  // x: [n, context] letters; the logits, in fp32 whatever the parameters' dtype
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = embed(x).view({x.size(0), context * embedding});
    h = torch::tanh(norm1(fc1(h)));
    h = torch::tanh(norm2(fc2(h)));
    return out(h).to(torch::kFloat);
  }
};
TORCH_MODULE(CharMLP);

// The contexts and next letters of `ex` as tensors.
std::pair<torch::Tensor, torch::Tensor> tensors_of(const example* ex, std::size_t n) {
  std::vector<std::int64_t> x(n * context), y(n);
  for (std::size_t i = 0; i < n; ++i) {
    for (int t = 0; t < context; ++t) x[i * context + static_cast<std::size_t>(t)] = ex[i].before[t];
    y[i] = ex[i].next;
  }
  return {torch::tensor(x).view({static_cast<std::int64_t>(n), context}), torch::tensor(y)};
}

// Summed cross-entropy of the model over `n` examples, in slices of 4096.
double summed_loss(CharMLP& model, const example* ex, std::size_t n) {
  torch::NoGradGuard no_grad;
  double total = 0;
  for (std::size_t first = 0; first < n; first += 4096) {
    const auto [x, y] = tensors_of(ex + first, std::min<std::size_t>(4096, n - first));
    total += torch::nn::functional::cross_entropy(model->forward(x), y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                 .item<double>();
  }
  return total;
}

double learning_rate(int step, int steps) { return zero_examples::warmup_cosine(step, steps, warmup_steps, peak_lr, final_lr); }

std::string sample_word(CharMLP& model, std::mt19937& rng) {
  torch::NoGradGuard no_grad;
  example e{};
  std::string word;
  while (word.size() < 30) {
    const auto [x, y] = tensors_of(&e, 1);
    const auto p = torch::softmax(model->forward(x), 1).contiguous();
    const float* q = p.data_ptr<float>();
    std::discrete_distribution<int> pick(q, q + symbols);
    const int next = pick(rng);
    if (next == 0) break;
    word += static_cast<char>('a' + next - 1);
    zero_examples::push_symbol(e, next);
  }
  return word;
}

template <zero::stage S, class Precision>
int train(const settings& s, const zero_examples::dataset& data) {
  using Engine = zero::optimizer<S, Precision, zero::adamw, zero::bucketed_partitioner>;
  const torch::Dtype dtype = zero::libtorch::scalar_type_of<typename Engine::param_type>();
  const std::size_t world = static_cast<std::size_t>(s.world);

  // the values every replica starts from (torch's default initialization, seeded)
  torch::manual_seed(s.seed);
  CharMLP initial;
  initial->to(dtype);
  std::int64_t parameters = 0;
  for (const auto& p : initial->parameters()) parameters += p.numel();
  std::printf("character-level language model on %zu words of %s (%zu training and %zu validation examples)\n",
              data.words.size(), s.words.c_str(), data.train.size(), data.validation.size());
  std::printf("torch::nn: embedding %d per letter x %d letters -> 2 x [linear, LayerNorm, tanh](%d) -> linear(%d): %lld parameters\n",
              embedding, context, hidden, symbols, static_cast<long long>(parameters));
  std::printf("%d thread ranks, ZeRO stage %d, %s, AdamW (no decay on vectors), clipping at %.1f, batch %d, %d steps\n\n", s.world,
              s.stage, s.bf16 ? "bf16 parameters + fp32 master weights" : "fp32", max_grad_norm, batch, s.steps);

  std::vector<double> step_loss(world * static_cast<std::size_t>(s.steps));  // [step][rank], summed over the rank's slice
  std::vector<double> validation(2 * world);                                   // [before/after][rank]
  zero::memory_report memory;
  std::size_t peak_gradients = 0, peak_gradient_bytes = 0, registered = 0;
  int clipped = 0;
  std::vector<std::string> samples;
  zero_examples::progress bar(s.steps);
  const auto start = std::chrono::steady_clock::now();

  torch::set_num_threads(1);  // one core per rank
  zero::thread_group group(s.world);
  group.run([&](zero::thread_communicator& comm) {
    const int rank = comm.rank();
    const std::size_t r = static_cast<std::size_t>(rank);
    CharMLP model;
    model->to(dtype);
    {
      torch::NoGradGuard no_grad;
      auto mine = model->parameters(), from = initial->parameters();
      for (std::size_t i = 0; i < mine.size(); ++i) mine[i].copy_(from[i]);
    }
    typename Engine::options_type o;
    o.hyperparameters = {.lr = 0, .weight_decay = weight_decay};  // lr: set every step by the schedule
    const auto groups = zero::libtorch::no_weight_decay_for_vectors(o);
    o.max_grad_norm = max_grad_norm;
    o.layout.bucket_elements = bucket_elements;
    zero::libtorch::data_parallel<Engine> dp(*model, comm, o, groups);

    const auto [first, count] = zero_examples::slice_of(batch, s.world, rank);
    const auto [val_first, val_count] = zero_examples::slice_of(data.validation.size(), s.world, rank);
    validation[r] = summed_loss(model, data.validation.data() + val_first, val_count);
    std::vector<example> ex(count);
    if (rank == 0) bar.start();
    for (int step = 0; step < s.steps; ++step) {
      for (std::size_t g = 0; g < dp.engine().group_count(); ++g) {
        auto h = dp.engine().hyperparameters(g);
        h.lr = learning_rate(step, s.steps);
        dp.engine().set_hyperparameters(g, h);
      }
      for (std::size_t i = 0; i < count; ++i)
        ex[i] = data.train[zero_examples::batch_index(s.seed, step, static_cast<int>(first + i), data.train.size())];
      const auto [x, y] = tensors_of(ex.data(), count);
      // the global batch's mean: the engine averages over the ranks, so each rank sums its slice
      // and scales by world / batch
      const auto loss = torch::nn::functional::cross_entropy(model->forward(x), y,
                                                             torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
      step_loss[static_cast<std::size_t>(step) * world + r] = loss.item<double>();
      (loss * (static_cast<double>(s.world) / batch)).backward();  // gradients go to the engine from autograd's hooks
      const zero::step_report report = dp.step();  // collective: every rank's loss is written before it returns
      if (rank == 0) {
        clipped += report.clip_factor < 1 ? 1 : 0;
        double total = 0;
        for (std::size_t q = 0; q < world; ++q) total += step_loss[static_cast<std::size_t>(step) * world + q];
        bar.update(step + 1, total / batch);
      }
    }
    validation[world + r] = summed_loss(model, data.validation.data() + val_first, val_count);
    if (rank == 0) {
      memory = dp.engine().memory();
      peak_gradients = dp.peak_gradients_held();
      peak_gradient_bytes = dp.peak_gradient_bytes_held();
      registered = dp.size();
      std::mt19937 rng(s.seed);
      for (int k = 0; k < s.samples; ++k) samples.push_back(sample_word(model, rng));
    }
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  double before = 0, after = 0;
  for (std::size_t q = 0; q < world; ++q) {
    before += validation[q];
    after += validation[world + q];
  }
  before /= static_cast<double>(data.validation.size());
  after /= static_cast<double>(data.validation.size());
  std::printf("\nvalidation loss %.3f -> %.3f (uniform guess: %.3f) in %.1f s; %d of %d steps clipped\n", before, after,
              std::log(static_cast<double>(symbols)), seconds, clipped, s.steps);
  if (!samples.empty()) {
    std::printf("words sampled from the trained model:");
    for (const auto& w : samples) std::printf(" %s", w.c_str());
    std::printf("\n");
  }
  std::printf("rank 0's engine holds %zu bytes:", memory.total());
  for (std::size_t k = 0; k < zero::memory_kinds; ++k) {
    const auto kind = static_cast<zero::memory_kind>(k);
    if (memory.of(kind) != 0) std::printf(" %s %zu", std::string(zero::to_string(kind)).c_str(), memory.of(kind));
  }
  std::printf("\ntorch held at most %zu of the %zu gradients at once (%zu bytes): each freed once the engine had read it\n", peak_gradients,
              registered, peak_gradient_bytes);
  return after < before ? 0 : 1;
}

template <zero::stage S>
int run(const settings& s, const zero_examples::dataset& data) {
  return s.bf16 ? train<S, zero::bf16_mixed>(s, data) : train<S, zero::fp32_precision>(s, data);
}

int usage(const char* argv0, const char* problem) {
  std::fprintf(stderr,
               "%s\nusage: %s [--world N] [--stage 0|1|2] [--precision bf16|fp32] [--steps S] [--seed X] [--samples K] "
               "[--words PATH]\n",
               problem, argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (i + 1 >= argc) return usage(argv[0], "every option takes a value");
    const char* value = argv[++i];
    try {
      if (arg == "--world") s.world = std::stoi(value);
      else if (arg == "--stage") s.stage = std::stoi(value);
      else if (arg == "--precision" && std::string_view(value) == "bf16") s.bf16 = true;
      else if (arg == "--precision" && std::string_view(value) == "fp32") s.bf16 = false;
      else if (arg == "--steps") s.steps = std::stoi(value);
      else if (arg == "--seed") s.seed = static_cast<unsigned>(std::stoul(value));
      else if (arg == "--samples") s.samples = std::stoi(value);
      else if (arg == "--words") s.words = value;
      else return usage(argv[0], ("unknown option or value: " + std::string(arg) + " " + value).c_str());
    } catch (const std::exception&) {
      return usage(argv[0], ("not a number: " + std::string(arg) + " " + value).c_str());
    }
  }
  if (s.world < 1 || s.world > batch || s.steps < 1 || s.samples < 0 || s.stage < 0 || s.stage > 2)
    return usage(argv[0], "--world must be 1..256, --steps >= 1, --samples >= 0, --stage 0, 1 or 2");
  const auto data = zero_examples::load(s.words, s.seed, "zero_example_libtorch");
  try {
    switch (s.stage) {
      case 0: return run<zero::stage0>(s, data);
      case 1: return run<zero::stage1>(s, data);
      default: return run<zero::stage2>(s, data);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zero_example_libtorch: %s\n", e.what());
    return 1;
  }
}
