// A character-level language model trained with ZeRO: it reads the English word list of
// Debian's `wamerican` package (/usr/share/dict/words) and learns to predict the next letter of
// a word from the four before it (an MLP language model in the manner of Bengio et al. 2003:
// embedding -> hidden tanh layers -> softmax over 26 letters and the word boundary).
//
// Data-parallel over N thread ranks, each computing forward and backward (Eigen) on its own
// slice of every batch; ZeRO stage 2 by default (gradients reduced bucket by bucket while
// backward runs, each rank keeping 1/N of the gradients, master weights and AdamW state);
// bf16 parameters with fp32 master weights; global gradient-norm clipping; a warmup + cosine
// learning-rate schedule; activation checkpointing (each hidden layer's input kept in one
// contiguous arena, the layer recomputed in backward). With --stage 3 each rank keeps 1/N of the
// parameters too: forward gathers each layer before it computes with it and releases it after,
// backward gathers them again, last layer first. It prints a progress bar, words sampled from the
// trained model, and the per-rank memory of stages 0 to 3 as the engine measures it beside the
// closed form, with the bytes communicated per step.
//
//   zero_example_train [--world N] [--stage 0|1|2|3] [--steps S] [--seed X]
//                      [--summary-json PATH] [--words PATH] [--samples K]

#include <Eigen/Dense>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numbers>
#include <random>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "word_data.hpp"
#include "zero/zero.hpp"

namespace {

using matrix = Eigen::MatrixXf;  // one column per example
using bf16 = zero::bf16;

// ---- the model's shape and the training recipe ------------------------------------------------

using zero_examples::context;
using zero_examples::symbols;
constexpr int embedding = 16;  // per letter
constexpr int hidden = 192;    // width of each hidden layer
constexpr int layers = 3;      // hidden tanh layers
constexpr int batch = 256;     // examples per step, all ranks together
constexpr double peak_lr = 1e-2, final_lr = 1e-3, weight_decay = 0.01, max_grad_norm = 1.0;
constexpr int warmup_steps = 100;
constexpr std::size_t bucket_elements = 32768;  // a few buckets, so that stage 2 reduces during backward
using zero_examples::default_words;
using zero_examples::dataset;
using zero_examples::example;
using zero_examples::progress;
using zero_examples::batch_index;
using zero_examples::slice_of;

struct settings {
  int world = 4;
  int stage = 2;
  int steps = 5000;
  unsigned seed = 1;
  int samples = 12;
  std::string words = default_words;
  std::string summary_json;
};

// ---- the model ------------------------------------------------------------------------------

// The framework's parameters, in bf16, in model order (the embedding first, the output layer
// last), as a framework lists them; backward produces their gradients in the reverse order, the
// order the engine lays its buckets out in by default, so that they fill up while backward runs.
struct model {
  struct tensor {
    std::string name;
    int rows, cols;
    std::vector<bf16> values;
  };
  std::vector<tensor> tensors;

  // indices into `tensors`
  static constexpr int embed = 0;
  static constexpr int hidden_w(int l) { return 1 + 2 * l; }
  static constexpr int hidden_b(int l) { return hidden_w(l) + 1; }
  static constexpr int out_w = 1 + 2 * layers, out_b = out_w + 1;

  static int width_in(int l) { return l == 0 ? context * embedding : hidden; }

  static model make(unsigned seed) {
    model m;
    m.tensors.resize(3 + 2 * layers);
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    // drawn from the generator from the output layer down (the values every run starts from)
    auto add = [&](int k, std::string name, int rows, int cols, float scale) {
      tensor t{std::move(name), rows, cols, std::vector<bf16>(static_cast<std::size_t>(rows * cols))};
      for (auto& v : t.values) v = bf16(scale * normal(rng));
      m.tensors[static_cast<std::size_t>(k)] = std::move(t);
    };
    add(out_w, "out.W", symbols, hidden, 0.1f / std::sqrt(float(hidden)));  // small: the first prediction is near uniform
    add(out_b, "out.b", symbols, 1, 0.0f);
    for (int l = layers; l-- > 0;) {
      add(hidden_w(l), "hidden" + std::to_string(l) + ".W", hidden, width_in(l), (5.0f / 3.0f) / std::sqrt(float(width_in(l))));
      add(hidden_b(l), "hidden" + std::to_string(l) + ".b", hidden, 1, 0.0f);
    }
    add(embed, "embed", embedding, symbols, 1.0f);
    return m;
  }

  std::size_t largest_tensor() const {
    std::size_t n = 0;
    for (const auto& t : tensors) n = std::max(n, t.values.size());
    return n;
  }
  std::size_t parameter_count() const {
    std::size_t n = 0;
    for (const auto& t : tensors) n += t.values.size();
    return n;
  }
  matrix as_matrix(int k) const { return as_matrix(k, tensors[static_cast<std::size_t>(k)].values.data()); }
  // tensor k's shape over the bf16 values at `values`
  matrix as_matrix(int k, const bf16* values) const {
    const auto& t = tensors[static_cast<std::size_t>(k)];
    matrix m(t.rows, t.cols);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(values[i]);
    return m;
  }

  // Stage 3's gather groups: the embedding, each hidden layer (weights and bias), the output layer.
  static constexpr std::uint32_t gather_groups = layers + 2;
  static std::uint32_t gather_group_of(int k) {
    return k == embed ? 0u : k >= out_w ? static_cast<std::uint32_t>(layers + 1) : static_cast<std::uint32_t>(1 + (k - 1) / 2);
  }
  static std::vector<int> tensors_of(std::uint32_t g) {
    if (g == 0) return {embed};
    if (g == layers + 1) return {out_w, out_b};
    return {hidden_w(static_cast<int>(g) - 1), hidden_b(static_cast<int>(g) - 1)};
  }
  std::size_t largest_gather_group() const {
    std::size_t n = 0;
    for (std::uint32_t g = 0; g < gather_groups; ++g) {
      std::size_t elements = 0;
      for (int k : tensors_of(g)) elements += tensors[static_cast<std::size_t>(k)].values.size();
      n = std::max(n, elements);
    }
    return n;
  }
};

// The float copy of the parameters one forward/backward computes with.
struct weights {
  matrix out_w, out_b, embed;
  std::vector<matrix> w, b;

  weights() : w(layers), b(layers) {}
  explicit weights(const model& m) : weights() {
    for (int k = 0; k < static_cast<int>(m.tensors.size()); ++k) set(k, m.as_matrix(k));
  }
  // tensor k's float copy
  void set(int k, matrix value) {
    if (k == model::embed) embed = std::move(value);
    else if (k == model::out_w) out_w = std::move(value);
    else if (k == model::out_b) out_b = std::move(value);
    else ((k - 1) % 2 == 0 ? w : b)[static_cast<std::size_t>((k - 1) / 2)] = std::move(value);
  }

  // The first layer's input: the embeddings of the context, stacked.
  matrix embed_inputs(const example* ex, int count) const {
    matrix x(context * embedding, count);
    for (int j = 0; j < count; ++j)
      for (int t = 0; t < context; ++t) x.block(t * embedding, j, embedding, 1) = embed.col(ex[j].before[t]);
    return x;
  }
  matrix layer(int l, const matrix& x) const { return ((w[static_cast<std::size_t>(l)] * x).colwise() + b[static_cast<std::size_t>(l)].col(0)).array().tanh().matrix(); }
  matrix logits(const matrix& h) const { return (out_w * h).colwise() + out_b.col(0); }
};

// Softmax of each column, in place; returns the sum over columns of -log p[target].
double softmax_loss(matrix& logits, const example* ex) {
  double loss = 0;
  for (Eigen::Index j = 0; j < logits.cols(); ++j) {
    auto col = logits.col(j);
    const float top = col.maxCoeff();
    col = (col.array() - top).exp().matrix();
    const float sum = col.sum();
    loss += std::log(static_cast<double>(sum)) - std::log(static_cast<double>(col(ex[j].next)));
    col /= sum;
  }
  return loss;
}

// Sum of the losses of `count` examples, forward only, in chunks.
double evaluate(const model& m, const example* ex, std::size_t count) {
  const weights w(m);
  double loss = 0;
  constexpr std::size_t chunk = 1024;
  for (std::size_t begin = 0; begin < count; begin += chunk) {
    const int n = static_cast<int>(std::min(chunk, count - begin));
    matrix h = w.embed_inputs(ex + begin, n);
    for (int l = 0; l < layers; ++l) h = w.layer(l, h);
    matrix p = w.logits(h);
    loss += softmax_loss(p, ex + begin);
  }
  return loss;
}

zero::raw_span<std::byte> bytes_of(matrix& x) {
  return {reinterpret_cast<std::byte*>(x.data()), static_cast<std::size_t>(x.size()) * sizeof(float)};
}

// ---- training -------------------------------------------------------------------------------

// The engine's optimizer type for stage S: bf16 parameters and gradients, fp32 master weights,
// AdamW state, accumulation and reduction; Megatron's bucketed layout.
template <zero::stage S>
using engine = zero::optimizer<S, zero::bf16_mixed, zero::adamw, zero::bucketed_partitioner>;

template <zero::stage S>
typename engine<S>::options_type engine_options() {
  typename engine<S>::options_type o;
  o.hyperparameters.lr = 0;  // set every step by the schedule
  o.hyperparameters.weight_decay = weight_decay;
  o.max_grad_norm = max_grad_norm;
  o.layout.bucket_elements = bucket_elements;
  o.layout.gather_buffer_elements = model::make(0).largest_gather_group();  // (stage 3; the shapes do not depend on the seed)
  return o;
}

std::vector<zero::parameter<bf16>> registration(model& m) {
  std::vector<zero::parameter<bf16>> params;
  for (auto& t : m.tensors) params.push_back({t.name, {t.values.data(), t.values.size()}});
  for (std::size_t k = 0; k < params.size(); ++k) params[k].gather_group = model::gather_group_of(static_cast<int>(k));
  return params;
}

// The float copies of gather group g's tensors: from the rank's own replica (stages 0-2), or
// gathered from every rank's shard for the moment (stage 3).
template <zero::stage S>
void fetch(engine<S>& opt, const model& m, std::uint32_t g, weights& w) {
  if constexpr (S == zero::stage3) opt.gather(g);
  for (int k : model::tensors_of(g)) {
    if constexpr (S == zero::stage3) w.set(k, m.as_matrix(k, opt.parameter_values(static_cast<std::size_t>(k)).data));
    else w.set(k, m.as_matrix(k));
  }
  if constexpr (S == zero::stage3) opt.release(g);
}

double learning_rate(int step, int steps) { return zero_examples::warmup_cosine(step, steps, warmup_steps, peak_lr, final_lr); }


struct run_result {
  model trained;
  std::vector<double> losses;           // training loss of each step (global batch mean)
  double initial_loss = 0, final_loss = 0;  // validation loss before and after training
  double seconds = 0;
  zero::memory_report memory;           // rank 0's engine
  zero::traffic_counters traffic;       // rank 0's collectives during training
  int clipped_steps = 0;                // steps whose gradient norm was clipped
  std::size_t activation_peak = 0;      // rank 0's checkpoint arena at its peak
  std::size_t activation_everything = 0;  // what keeping every activation would hold (computed)
};

template <zero::stage S>
run_result train(const settings& s, const dataset& data) {
  const std::size_t world = static_cast<std::size_t>(s.world);
  run_result result;
  result.trained = model::make(s.seed);
  result.losses.assign(static_cast<std::size_t>(s.steps), 0.0);
  std::vector<double> step_loss(world * static_cast<std::size_t>(s.steps));  // [step][rank]
  std::vector<double> validation(2 * world);                                   // [before/after][rank]
  progress bar(s.steps);
  const auto start = std::chrono::steady_clock::now();

  zero::thread_group group(s.world);
  group.run([&](zero::thread_communicator& comm) {
    const int rank = comm.rank();
    const std::size_t r = static_cast<std::size_t>(rank);
    model m = result.trained;  // every rank its own replica, initialized alike
    engine<S> opt(comm, registration(m), engine_options<S>());

    const auto [first, count] = slice_of(batch, s.world, rank);
    const auto [val_first, val_count] = slice_of(data.validation.size(), s.world, rank);
    validation[r] = evaluate(m, data.validation.data() + val_first, val_count);

    // activation checkpoints: each hidden layer's input, in one arena allocated here (ZeRO-R's MD)
    std::vector<std::size_t> sizes;
    for (int l = 0; l < layers; ++l) sizes.push_back(static_cast<std::size_t>(model::width_in(l)) * count * sizeof(float));
    zero::contiguous_checkpointer checkpoints{zero::contiguous_arena(zero::checkpoint_plan{sizes})};

    std::vector<std::vector<bf16>> grads(m.tensors.size());
    for (std::size_t k = 0; k < grads.size(); ++k) grads[k].resize(m.tensors[k].values.size());
    auto hand_over = [&](int k, const matrix& g) {  // bf16 gradient, reported as soon as it exists
      auto& out = grads[static_cast<std::size_t>(k)];
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = bf16(g.data()[i]);
      opt.gradient_ready(static_cast<std::size_t>(k), {out.data(), out.size()});
    };
    // dloss/dlogit of the global batch mean; the engine averages over ranks, so each rank
    // scales its examples by world / batch
    const float scale = static_cast<float>(world) / batch;

    std::vector<example> ex(count);
    const auto traffic_before = comm.traffic();
    if (rank == 0) bar.start();
    for (int step = 0; step < s.steps; ++step) {
      auto h = opt.hyperparameters();
      h.lr = learning_rate(step, s.steps);
      opt.set_hyperparameters(h);
      for (std::size_t i = 0; i < count; ++i)
        ex[i] = data.train[batch_index(s.seed, step, static_cast<int>(first + i), data.train.size())];
      weights w;
      const int n = static_cast<int>(count);

      // forward: each layer's weights fetched as it runs (stage 3: gathered, then released);
      // keep each hidden layer's input as a checkpoint, drop everything else
      fetch(opt, m, 0, w);
      matrix x = w.embed_inputs(ex.data(), n);
      for (int l = 0; l < layers; ++l) {
        fetch(opt, m, static_cast<std::uint32_t>(1 + l), w);
        checkpoints.save(static_cast<zero::checkpoint_id>(l), bytes_of(x));
        x = w.layer(l, x);
      }
      fetch(opt, m, layers + 1, w);
      matrix p = w.logits(x);
      step_loss[static_cast<std::size_t>(step) * world + r] = softmax_loss(p, ex.data());

      // backward
      for (int j = 0; j < n; ++j) p(ex[static_cast<std::size_t>(j)].next, j) -= 1.0f;
      p *= scale;
      if constexpr (S == zero::stage3) fetch(opt, m, layers + 1, w);  // backward gathers each layer again
      hand_over(model::out_w, p * x.transpose());
      hand_over(model::out_b, p.rowwise().sum());
      matrix dh = w.out_w.transpose() * p;
      for (int l = layers; l-- > 0;) {
        if constexpr (S == zero::stage3) fetch(opt, m, static_cast<std::uint32_t>(1 + l), w);
        matrix input(model::width_in(l), n);
        checkpoints.restore(static_cast<zero::checkpoint_id>(l), bytes_of(input));
        const matrix out = w.layer(l, input);  // recomputed
        checkpoints.release(static_cast<zero::checkpoint_id>(l));
        const matrix dpre = (dh.array() * (1.0f - out.array().square())).matrix();
        hand_over(model::hidden_w(l), dpre * input.transpose());
        hand_over(model::hidden_b(l), dpre.rowwise().sum());
        dh = w.w[static_cast<std::size_t>(l)].transpose() * dpre;
      }
      matrix dembed = matrix::Zero(embedding, symbols);
      for (int j = 0; j < n; ++j)
        for (int t = 0; t < context; ++t) dembed.col(ex[static_cast<std::size_t>(j)].before[t]) += dh.block(t * embedding, j, embedding, 1);
      hand_over(model::embed, dembed);

      const zero::step_report report = opt.step();  // collective: every rank's loss is written before it returns
      if (rank == 0) {
        result.clipped_steps += report.clip_factor < 1 ? 1 : 0;
        double total = 0;
        for (std::size_t q = 0; q < world; ++q) total += step_loss[static_cast<std::size_t>(step) * world + q];
        result.losses[static_cast<std::size_t>(step)] = total / batch;
        bar.update(step + 1, total / batch);
      }
    }
    const auto traffic = comm.traffic() - traffic_before;
    if constexpr (S == zero::stage3)  // the trained values live in the shards: gather them into the replica
      for (std::uint32_t g = 0; g < model::gather_groups; ++g) {
        opt.gather(g);
        for (int k : model::tensors_of(g)) {
          const auto v = opt.parameter_values(static_cast<std::size_t>(k));
          std::copy(v.data, v.data + v.size, m.tensors[static_cast<std::size_t>(k)].values.begin());
        }
        opt.release(g);
      }
    validation[world + r] = evaluate(m, data.validation.data() + val_first, val_count);
    if (rank == 0) {
      result.memory = opt.memory();
      result.traffic = traffic;
      result.activation_peak = checkpoints.peak_bytes_held();
      result.trained = m;
    }
  });
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  for (std::size_t q = 0; q < world; ++q) {
    result.initial_loss += validation[q];
    result.final_loss += validation[world + q];
  }
  result.initial_loss /= static_cast<double>(data.validation.size());
  result.final_loss /= static_cast<double>(data.validation.size());
  // without checkpointing, backward would need each hidden layer's input and output (rank 0's slice)
  const std::size_t rank0 = slice_of(batch, s.world, 0).second;
  for (int l = 0; l < layers; ++l)
    result.activation_everything += static_cast<std::size_t>(model::width_in(l) + hidden) * rank0 * sizeof(float);
  return result;
}

// ---- sampling -------------------------------------------------------------------------------

std::string sample_word(const model& m, std::mt19937& rng) {
  const weights w(m);
  example e{};
  std::string word;
  while (word.size() < 30) {
    matrix h = w.embed_inputs(&e, 1);
    for (int l = 0; l < layers; ++l) h = w.layer(l, h);
    matrix p = w.logits(h);
    softmax_loss(p, &e);
    std::discrete_distribution<int> pick(p.data(), p.data() + symbols);
    const int next = pick(rng);
    if (next == 0) break;
    word += static_cast<char>('a' + next - 1);
    zero_examples::push_symbol(e, next);
  }
  return word;
}

// ---- the memory table -----------------------------------------------------------------------

struct stage_measurement {
  zero::memory_report measured, formula;
  std::uint64_t bytes_per_step = 0;  // rank 0's collectives in one step
};

// Builds stage S's engine on every rank over the trained parameters and takes one step (zero
// gradients): its memory() and its communicator's traffic in that step.
template <zero::stage S>
stage_measurement measure(const model& trained, int world) {
  stage_measurement out;
  zero::thread_group group(world);
  group.run([&](zero::thread_communicator& comm) {
    model m = trained;
    engine<S> opt(comm, registration(m), engine_options<S>());
    std::vector<std::vector<bf16>> zeros;
    for (const auto& t : m.tensors) zeros.emplace_back(t.values.size(), bf16(0.0f));
    const auto before = comm.traffic();
    weights w;
    if constexpr (S == zero::stage3)  // forward gathers every layer, and backward again
      for (int pass = 0; pass < 2; ++pass)
        for (std::uint32_t g = 0; g < model::gather_groups; ++g) fetch(opt, m, g, w);
    for (std::size_t k = 0; k < zeros.size(); ++k) opt.gradient_ready(k, {zeros[k].data(), zeros[k].size()});
    opt.step();
    if (comm.rank() == 0) {
      out.measured = opt.memory();
      out.bytes_per_step = (comm.traffic() - before).total_bytes();
    }
  });
  out.formula = zero::expected_memory<zero::bf16_mixed, zero::bucketed_partitioner>(
      trained.parameter_count(), world, S, zero::adamw::state_count(engine_options<S>().hyperparameters),
      engine_options<S>().layout, trained.largest_tensor());
  return out;
}

void print_memory_table(const model& trained, int world) {
  constexpr int stages = 4;
  const stage_measurement st[stages] = {measure<zero::stage0>(trained, world), measure<zero::stage1>(trained, world),
                                        measure<zero::stage2>(trained, world), measure<zero::stage3>(trained, world)};
  const std::size_t psi = trained.parameter_count();
  const double n = world, k = 12, p = static_cast<double>(psi);
  const double paper[stages] = {(2 + 2 + k) * p, 4 * p + k * p / n, 2 * p + (2 + k) * p / n, (2 + 2 + k) * p / n};

  std::printf("\nper-rank memory in bytes, %zu parameters (psi) over %d ranks; bf16 parameters, fp32 master weights,\n"
              "AdamW, fp32 gradient accumulation. engine = the engine's memory() after one step of each stage's engine\n"
              "built over the trained parameters; formula = zero::expected_memory\n\n",
              psi, world);
  std::printf("%-30s", "");
  for (int s = 0; s < stages; ++s) std::printf("          stage %d     ", s);
  std::printf("\n%-30s", "");
  for (int s = 0; s < stages; ++s) std::printf("   %10s %10s", "engine", "formula");
  std::printf("\n");
  auto line = [&](const char* name, auto value_of) {
    std::printf("%-30s", name);
    for (int s = 0; s < stages; ++s) std::printf("   %10zu %10zu", value_of(st[s].measured), value_of(st[s].formula));
    std::printf("\n");
  };
  for (std::size_t kind = 0; kind < zero::memory_kinds; ++kind) {
    const auto mk = static_cast<zero::memory_kind>(kind);
    if (mk == zero::memory_kind::gradient_slots) continue;  // unused: gradients are handed over as spans
    line(std::string(zero::to_string(mk)).c_str(), [&](const zero::memory_report& r) { return r.of(mk); });
  }
  line("engine total", [](const zero::memory_report& r) { return r.total(); });
  line("framework gradients (peak)", [](const zero::memory_report& r) { return r.framework_gradients; });
  std::printf("%-30s", "+ framework bf16 params (2psi)");  // (none in stage 3: the shard is the parameters)
  for (int s = 0; s < stages; ++s)
    std::printf("   %10zu %10zu", st[s].measured.with_framework_gradients() + (s < 3 ? 2 * psi : 0),
                st[s].formula.with_framework_gradients() + (s < 3 ? 2 * psi : 0));
  std::printf("\n");
  std::printf("%-30s", "ZeRO paper's formula, K = 12");
  for (int s = 0; s < stages; ++s) std::printf("   %10.0f %10s", paper[s], "");
  std::printf("\n%-30s", "");
  const char* formulas[stages] = {"(2 + 2 + K) psi", "4 psi + K psi / N", "2 psi + (2 + K) psi / N", "(2 + 2 + K) psi / N"};
  for (int s = 0; s < stages; ++s) std::printf("   %-21s", formulas[s]);
  std::printf("\n%-30s", "communicated per step");
  for (int s = 0; s < stages; ++s) std::printf("   %10llu %10s", static_cast<unsigned long long>(st[s].bytes_per_step), "");
  std::printf("\n\nThe paper counts 16-bit gradients (2 bytes per parameter); zero accumulates them in fp32 (4), pads psi\n"
              "to a multiple of 16 x N and adds constant reduction buckets. Communicated: stage 0 all-reduces fp32\n"
              "gradients (counted twice: a reduce-scatter and an all-gather); stages 1 and 2 reduce-scatter them and\n"
              "all-gather bf16 parameters; stage 3 reduce-scatters them and gathers each layer's bf16 parameters twice\n"
              "(forward and backward); all add one small all-gather of step statistics.\n"
              "zero-plan --params %zu --world %d --precision bf16 --optimizer adamw --bucket %zu --partitioner bucketed\n"
              "  --largest-param %zu plans the same bytes.\n",
              psi, world, bucket_elements, trained.largest_tensor());
  for (int s = 0; s < stages; ++s)
    if (st[s].measured != st[s].formula) std::printf("MISMATCH: stage %d's engine differs from expected_memory\n", s);
}

// ---- the summary ----------------------------------------------------------------------------

void write_summary(const settings& s, const run_result& r, const std::size_t params) {
  std::FILE* f = std::fopen(s.summary_json.c_str(), "w");
  if (f == nullptr) {
    std::fprintf(stderr, "zero_example_train: cannot write %s\n", s.summary_json.c_str());
    std::exit(1);
  }
  std::fprintf(f, "{\"initial_loss\": %.17g, \"final_loss\": %.17g, \"world_size\": %d, \"stage\": %d, \"steps\": %d,\n",
               r.initial_loss, r.final_loss, s.world, s.stage, s.steps);
  std::fprintf(f, " \"seed\": %u, \"parameters\": %zu, \"seconds\": %.3f, \"clipped_steps\": %d,\n \"bytes_per_rank\": {", s.seed,
               params, r.seconds, r.clipped_steps);
  const std::size_t framework_parameters = s.stage == 3 ? 0 : 2 * params;  // stage 3: the engine's shard is the parameters
  std::fprintf(f, "\"framework_parameters\": %zu", framework_parameters);
  for (std::size_t k = 0; k < zero::memory_kinds; ++k)
    std::fprintf(f, ", \"%s\": %zu", std::string(zero::to_string(static_cast<zero::memory_kind>(k))).c_str(), r.memory.bytes[k]);
  std::fprintf(f, ", \"framework_gradients\": %zu, \"engine_total\": %zu, \"total\": %zu, \"activation_checkpoints_peak\": %zu},\n",
               r.memory.framework_gradients, r.memory.total(), r.memory.with_framework_gradients() + framework_parameters,
               r.activation_peak);
  std::fprintf(f, " \"bytes_communicated_per_step\": %.17g,\n \"train_losses\": [",
               static_cast<double>(r.traffic.total_bytes()) / s.steps);
  for (std::size_t i = 0; i < r.losses.size(); ++i) std::fprintf(f, "%s%.17g", i == 0 ? "" : ", ", r.losses[i]);
  std::fprintf(f, "]}\n");
  std::fclose(f);
}

// ---- main -----------------------------------------------------------------------------------

template <zero::stage S>
int run(const settings& s) {
  const dataset data = zero_examples::load(s.words, s.seed, "zero_example_train");
  const std::size_t params = model::make(s.seed).parameter_count();
  std::printf("character-level language model on %zu words of %s (%zu training and %zu validation examples)\n",
              data.words.size(), s.words.c_str(), data.train.size(), data.validation.size());
  std::printf("%d letters of context -> embedding %d -> %d x tanh(%d) -> softmax(%d): %zu parameters\n", context, embedding,
              layers, hidden, symbols, params);
  std::printf("%d thread ranks, ZeRO stage %d, bf16 params + fp32 master weights, AdamW, clipping at %.1f, batch %d "
              "(%d per rank), %d steps\n\n",
              s.world, s.stage, max_grad_norm, batch, batch / s.world, s.steps);

  const run_result r = train<S>(s, data);
  std::printf("\nvalidation loss %.4f -> %.4f (uniform guess: %.4f) in %.1f s, %.1f steps/s\n", r.initial_loss, r.final_loss,
              std::log(double(symbols)), r.seconds, s.steps / r.seconds);
  std::printf("gradient norm clipped to %.1f in %d of %d steps\n", max_grad_norm, r.clipped_steps, s.steps);
  std::printf("activation checkpoints: %zu bytes at peak per rank (each hidden layer's input, one contiguous arena);\n"
              "keeping every activation instead would hold %zu\n",
              r.activation_peak, r.activation_everything);

  std::unordered_set<std::string> known(data.words.begin(), data.words.end());
  std::mt19937 rng(s.seed);
  std::printf("\nwords sampled from the model (* = in the word list):\n ");
  for (int i = 0; i < s.samples; ++i) {
    const std::string w = sample_word(r.trained, rng);
    std::printf(" %s%s", w.c_str(), known.count(w) != 0 ? "*" : "");
  }
  std::printf("\n");

  print_memory_table(r.trained, s.world);
  std::printf("communicated by rank 0 per training step (stage %d):", s.stage);
  const char* separator = " ";
  for (std::size_t k = 0; k < zero::collective_kinds; ++k) {
    const auto c = static_cast<zero::collective>(k);
    if (r.traffic.calls_of(c) == 0) continue;
    std::printf("%s%s %.0f bytes in %.0f calls", separator, std::string(zero::to_string(c)).c_str(),
                static_cast<double>(r.traffic.bytes_of(c)) / s.steps, static_cast<double>(r.traffic.calls_of(c)) / s.steps);
    separator = ", ";
  }
  std::printf("\n");

  if (!s.summary_json.empty()) write_summary(s, r, params);
  return r.final_loss < r.initial_loss ? 0 : 1;
}

int usage(const char* argv0, const char* problem) {
  std::FILE* to = problem != nullptr ? stderr : stdout;
  if (problem != nullptr) std::fprintf(stderr, "%s: %s\n", argv0, problem);
  std::fprintf(to,
               "usage: %s [--world N>=1] [--stage 0|1|2|3] [--steps S>=1] [--seed X] [--summary-json PATH]\n"
               "       [--words PATH] [--samples K]\n"
               "Trains a character-level language model on %s with ZeRO (defaults: --world 4 --stage 2\n"
               "--steps 5000 --seed 1). --summary-json writes the losses and per-rank bytes as JSON.\n",
               argv0, default_words);
  return problem != nullptr ? 2 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") return usage(argv[0], nullptr);
    if (i + 1 >= argc) return usage(argv[0], (std::string(arg) + " needs a value").c_str());
    const std::string value = argv[++i];
    char* end = nullptr;
    const long number = std::strtol(value.c_str(), &end, 10);
    const bool numeric = !value.empty() && *end == '\0';
    if (arg == "--world" && numeric && number >= 1 && number <= 64) s.world = static_cast<int>(number);
    else if (arg == "--stage" && numeric && number >= 0 && number <= 3) s.stage = static_cast<int>(number);
    else if (arg == "--steps" && numeric && number >= 1 && number <= 1'000'000) s.steps = static_cast<int>(number);
    else if (arg == "--seed" && numeric && number >= 0 && number <= 0xffffffffl) s.seed = static_cast<unsigned>(number);
    else if (arg == "--samples" && numeric && number >= 0 && number <= 1000) s.samples = static_cast<int>(number);
    else if (arg == "--summary-json") s.summary_json = value;
    else if (arg == "--words") s.words = value;
    else return usage(argv[0], ("bad argument: " + std::string(arg) + " " + value).c_str());
  }
  try {
    switch (s.stage) {
      case 0: return run<zero::stage0>(s);
      case 1: return run<zero::stage1>(s);
      case 3: return run<zero::stage3>(s);
      default: return run<zero::stage2>(s);
    }
  } catch (const zero::error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
