// Trains a small MLP regressor data-parallel over N thread ranks with ZeRO (stage 2 by
// default): bf16 parameters and gradients, fp32 master weights, AdamW. Each rank computes the
// forward and backward pass (Eigen) on its own slice of every batch and hands its gradients to
// zero; after each step every rank holds the same updated bf16 parameters.
//
//   zero_example_train [--world N] [--stage 0|1|2] [--steps S] [--seed X]

#include <Eigen/Dense>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "zero/zero.hpp"

namespace {

struct settings {
  int world = 4;
  int stage = 2;
  int steps = 1000;
  unsigned seed = 1;
};

constexpr int inputs = 8, hidden = 64, batch = 64;

using matrix = Eigen::MatrixXf;
using bf16 = zero::bf16;

// The target function the model learns.
float target(const float* x) { return std::sin(2 * x[0]) + std::cos(x[1] * x[2]) + 0.5f * x[3] - x[4] * x[5]; }

// Rank-independent data: batch b, example i.
void example(unsigned seed, int b, int i, float* x, float& y) {
  std::mt19937 rng(seed * 1'000'003u + static_cast<unsigned>(b) * 997u + static_cast<unsigned>(i));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int k = 0; k < inputs; ++k) x[k] = u(rng);
  y = target(x);
}

matrix to_matrix(const std::vector<bf16>& v, int rows, int cols) {
  matrix m(rows, cols);
  for (int j = 0; j < cols; ++j)
    for (int i = 0; i < rows; ++i) m(i, j) = static_cast<float>(v[static_cast<std::size_t>(j * rows + i)]);
  return m;
}

void to_bf16(const matrix& m, std::vector<bf16>& out) {
  out.resize(static_cast<std::size_t>(m.size()));
  for (Eigen::Index k = 0; k < m.size(); ++k) out[static_cast<std::size_t>(k)] = bf16(m.data()[k]);
}

template <zero::stage Stage>
int train(const settings& s) {
  using optimizer = zero::optimizer<Stage, zero::bf16_mixed, zero::adamw, zero::bucketed_partitioner>;
  zero::thread_group group(s.world);
  std::vector<double> losses(static_cast<std::size_t>(s.steps), 0.0);
  std::mutex lock;
  zero::memory_report memory;
  zero::traffic_counters traffic;
  const auto start = std::chrono::steady_clock::now();

  group.run([&](zero::thread_communicator& comm) {
    // parameters: W1 (hidden x inputs), b1, W2 (1 x hidden), b2; same initialization on every rank
    std::mt19937 init(s.seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<std::vector<bf16>> w(4);
    const int shapes[4][2] = {{hidden, inputs}, {hidden, 1}, {1, hidden}, {1, 1}};
    const float scales[4] = {1.0f / std::sqrt(float(inputs)), 0.0f, 1.0f / std::sqrt(float(hidden)), 0.0f};
    std::vector<zero::parameter<bf16>> params;
    const char* names[4] = {"W1", "b1", "W2", "b2"};
    for (int p = 0; p < 4; ++p) {
      w[p].resize(static_cast<std::size_t>(shapes[p][0] * shapes[p][1]));
      for (auto& v : w[p]) v = bf16(scales[p] * normal(init));
    }
    for (int p = 0; p < 4; ++p) params.push_back({names[p], {w[p].data(), w[p].size()}});

    typename optimizer::options_type options;
    options.hyperparameters.lr = 3e-3;
    options.hyperparameters.weight_decay = 1e-4;
    options.layout.bucket_elements = 256;
    optimizer opt(comm, params, options);

    const int per_rank = batch / s.world + (comm.rank() < batch % s.world ? 1 : 0);
    const int first = comm.rank() * (batch / s.world) + std::min(comm.rank(), batch % s.world);
    std::vector<std::vector<bf16>> grads(4);
    const auto before = comm.traffic();
    for (int step = 0; step < s.steps; ++step) {
      matrix x(inputs, per_rank), y(1, per_rank);
      for (int i = 0; i < per_rank; ++i) example(s.seed, step, first + i, x.col(i).data(), y(0, i));
      const matrix W1 = to_matrix(w[0], hidden, inputs), b1 = to_matrix(w[1], hidden, 1);
      const matrix W2 = to_matrix(w[2], 1, hidden), b2 = to_matrix(w[3], 1, 1);
      // forward: h = tanh(W1 x + b1), out = W2 h + b2; loss = mean over the whole batch of (out - y)^2
      const matrix pre = (W1 * x).colwise() + b1.col(0);
      const matrix h = pre.array().tanh().matrix();
      const matrix out = (W2 * h).array() + b2(0, 0);
      const matrix diff = out - y;
      const double local_loss = diff.squaredNorm();
      // backward of the global mean: each rank scales by world / batch so that zero's average
      // over ranks gives the gradient of the mean over the whole batch
      const matrix dout = diff * (2.0f * static_cast<float>(s.world) / batch);
      const matrix dW2 = dout * h.transpose();
      const matrix db2 = dout.rowwise().sum();
      const matrix dh = W2.transpose() * dout;
      const matrix dpre = (dh.array() * (1.0f - h.array().square())).matrix();
      const matrix dW1 = dpre * x.transpose();
      const matrix db1 = dpre.rowwise().sum();
      // report in backward order
      to_bf16(db2, grads[3]);
      opt.gradient_ready(3, {grads[3].data(), grads[3].size()});
      to_bf16(dW2, grads[2]);
      opt.gradient_ready(2, {grads[2].data(), grads[2].size()});
      to_bf16(db1, grads[1]);
      opt.gradient_ready(1, {grads[1].data(), grads[1].size()});
      to_bf16(dW1, grads[0]);
      opt.gradient_ready(0, {grads[0].data(), grads[0].size()});
      opt.step();
      std::lock_guard guard(lock);
      losses[static_cast<std::size_t>(step)] += local_loss / batch;
    }
    if (comm.rank() == 0) {
      memory = opt.memory();
      traffic = comm.traffic() - before;
    }
  });

  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (int step = 0; step < s.steps; ++step)
    if (step % 100 == 0 || step == s.steps - 1) std::printf("step %4d  loss %.5f\n", step, losses[static_cast<std::size_t>(step)]);
  std::printf("\n%d steps on %d thread ranks, ZeRO stage %d, bf16 params + fp32 master, AdamW: %.2f s\n", s.steps, s.world,
              s.stage, seconds);
  std::printf("loss %.5f -> %.5f\n\nengine memory on rank 0 (bytes):\n", losses.front(), losses.back());
  for (std::size_t k = 0; k < zero::memory_kinds; ++k)
    std::printf("  %-16s %8zu\n", std::string(zero::to_string(static_cast<zero::memory_kind>(k))).c_str(), memory.bytes[k]);
  std::printf("  %-16s %8zu\n", "total", memory.total());
  std::printf("communicated per step per rank: %.0f bytes\n", static_cast<double>(traffic.total_bytes()) / s.steps);
  return losses.back() < losses.front() ? 0 : 1;
}

int usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s [--world N>=1] [--stage 0|1|2] [--steps S>=1] [--seed X]\n", argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) return usage(argv[0]);
    char* end = nullptr;
    const long value = std::strtol(argv[++i], &end, 10);
    if (*end != '\0') return usage(argv[0]);
    if (arg == "--world" && value >= 1 && value <= 256) s.world = static_cast<int>(value);
    else if (arg == "--stage" && value >= 0 && value <= 2) s.stage = static_cast<int>(value);
    else if (arg == "--steps" && value >= 1) s.steps = static_cast<int>(value);
    else if (arg == "--seed" && value >= 0) s.seed = static_cast<unsigned>(value);
    else return usage(argv[0]);
  }
  try {
    switch (s.stage) {
      case 0: return train<zero::stage0>(s);
      case 1: return train<zero::stage1>(s);
      default: return train<zero::stage2>(s);
    }
  } catch (const zero::error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
