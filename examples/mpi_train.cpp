// Trains a small MLP regressor data-parallel over MPI processes with ZeRO stage 2 (by default):
// bf16 parameters and gradients, fp32 master weights, AdamW. Each process is one rank: it
// computes the forward and backward pass (Eigen) on its own slice of every batch and hands its
// gradients to zero, which reduce-scatters them across the processes, updates the rank's shard
// and all-gathers the new parameters. Rank 0 prints the loss of the whole batch.
//
//   mpirun -np 4 zero_example_mpi_train [--stage 0|1|2] [--steps S] [--seed X] [--timeout-ms T]
//
// zero never calls MPI_Init: the program does, and hands zero MPI_COMM_WORLD (any
// communicator would do). zero works on its own duplicate of it, with a deadline on every
// collective: a process that dies makes the others throw instead of hanging, and this program
// then ends the job with MPI_Abort.

#include <mpi.h>

#include <Eigen/Dense>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "zero/mpi/communicator.hpp"
#include "zero/zero.hpp"

namespace {

struct settings {
  int stage = 2;
  int steps = 1000;
  unsigned seed = 1;
  long timeout_ms = 60'000;
};

constexpr int inputs = 8, hidden = 64, batch = 64;

using matrix = Eigen::MatrixXf;
using bf16 = zero::bf16;

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
  using optimizer = zero::optimizer<Stage, zero::bf16_mixed, zero::adamw, zero::bucketed_partitioner, zero::mpi_communicator>;
  zero::mpi_communicator comm(MPI_COMM_WORLD, {std::chrono::milliseconds(s.timeout_ms)});
  const int rank = comm.rank(), world = comm.world_size();

  // parameters: W1 (hidden x inputs), b1, W2 (1 x hidden), b2; same initialization on every rank
  std::mt19937 init(s.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::vector<bf16>> w(4);
  const int shapes[4][2] = {{hidden, inputs}, {hidden, 1}, {1, hidden}, {1, 1}};
  const float scales[4] = {1.0f / std::sqrt(float(inputs)), 0.0f, 1.0f / std::sqrt(float(hidden)), 0.0f};
  const char* names[4] = {"W1", "b1", "W2", "b2"};
  std::vector<zero::parameter<bf16>> params;
  for (int p = 0; p < 4; ++p) {
    w[p].resize(static_cast<std::size_t>(shapes[p][0] * shapes[p][1]));
    for (auto& v : w[p]) v = bf16(scales[p] * normal(init));
  }
  for (int p = 0; p < 4; ++p) params.push_back({names[p], {w[p].data(), w[p].size()}});

  typename optimizer::options_type options;
  options.hyperparameters.lr = 3e-3;
  options.hyperparameters.weight_decay = 1e-4;
  options.layout.bucket_elements = 256;
  options.layout.staging_buffers = 2;  // each bucket's reduce-scatter in flight while backward goes on
  optimizer opt(comm, params, options);  // collective: every rank checks the others' layout

  const int per_rank = batch / world + (rank < batch % world ? 1 : 0);
  const int first = rank * (batch / world) + std::min(rank, batch % world);
  std::vector<std::vector<bf16>> grads(4);
  double first_loss = 0, last_loss = 0;
  const auto start = std::chrono::steady_clock::now();
  const auto before = comm.traffic();
  for (int step = 0; step < s.steps; ++step) {
    matrix x(inputs, per_rank), y(1, per_rank);
    for (int i = 0; i < per_rank; ++i) example(s.seed, step, first + i, x.col(i).data(), y(0, i));
    const matrix W1 = to_matrix(w[0], hidden, inputs), b1 = to_matrix(w[1], hidden, 1);
    const matrix W2 = to_matrix(w[2], 1, hidden), b2 = to_matrix(w[3], 1, 1);
    const matrix pre = (W1 * x).colwise() + b1.col(0);
    const matrix h = pre.array().tanh().matrix();
    const matrix out = (W2 * h).array() + b2(0, 0);
    const matrix diff = out - y;
    // backward of the mean over the whole batch: zero averages over ranks, so scale by world
    const matrix dout = diff * (2.0f * static_cast<float>(world) / batch);
    const matrix dW2 = dout * h.transpose();
    const matrix db2 = dout.rowwise().sum();
    const matrix dh = W2.transpose() * dout;
    const matrix dpre = (dh.array() * (1.0f - h.array().square())).matrix();
    const matrix dW1 = dpre * x.transpose();
    const matrix db1 = dpre.rowwise().sum();
    to_bf16(db2, grads[3]);
    opt.gradient_ready(3, {grads[3].data(), grads[3].size()});
    to_bf16(dW2, grads[2]);
    opt.gradient_ready(2, {grads[2].data(), grads[2].size()});
    to_bf16(db1, grads[1]);
    opt.gradient_ready(1, {grads[1].data(), grads[1].size()});
    to_bf16(dW1, grads[0]);
    opt.gradient_ready(0, {grads[0].data(), grads[0].size()});
    opt.step();

    if (step % 100 == 0 || step == s.steps - 1) {
      // the loss of the whole batch: every rank's squared errors, summed in rank order
      double loss = diff.squaredNorm() / batch;
      comm.all_reduce(&loss, &loss, 1);
      if (step == 0) first_loss = loss;
      last_loss = loss;
      if (rank == 0) std::printf("step %4d  loss %.5f\n", step, loss);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto traffic = comm.traffic() - before;

  // every rank holds the same parameters: compare a checksum of their bits
  std::uint64_t sum = 0;
  for (const auto& p : w)
    for (bf16 v : p) sum = sum * 1099511628211ull + v.bits;
  std::vector<std::uint64_t> sums(static_cast<std::size_t>(world));
  comm.all_gather(&sum, sums.data(), 1);
  bool identical = true;
  for (auto x : sums) identical = identical && x == sums[0];

  if (rank == 0) {
    std::printf("\n%d steps on %d MPI ranks, ZeRO stage %d, bf16 params + fp32 master, AdamW: %.2f s\n", s.steps, world,
                static_cast<int>(Stage), seconds);
    std::printf("loss %.5f -> %.5f; parameters identical on every rank: %s\n\nengine memory on rank 0 (bytes):\n", first_loss,
                last_loss, identical ? "yes" : "NO");
    const auto memory = opt.memory();
    for (std::size_t k = 0; k < zero::memory_kinds; ++k)
      std::printf("  %-16s %8zu\n", std::string(zero::to_string(static_cast<zero::memory_kind>(k))).c_str(), memory.bytes[k]);
    std::printf("  %-16s %8zu\n", "total", memory.total());
    std::printf("communicated per step per rank: %.0f bytes\n", static_cast<double>(traffic.total_bytes()) / s.steps);
  }
  return last_loss < first_loss && identical ? 0 : 1;
}

int usage(const char* argv0) {
  std::fprintf(stderr, "usage: mpirun -np N %s [--stage 0|1|2] [--steps S>=1] [--seed X] [--timeout-ms T>0]\n", argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  settings s;
  int status = 0;
  for (int i = 1; i < argc && status == 0; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) {
      status = usage(argv[0]);
      break;
    }
    char* end = nullptr;
    const long value = std::strtol(argv[++i], &end, 10);
    if (*end != '\0') status = usage(argv[0]);
    else if (arg == "--stage" && value >= 0 && value <= 2) s.stage = static_cast<int>(value);
    else if (arg == "--steps" && value >= 1) s.steps = static_cast<int>(value);
    else if (arg == "--seed" && value >= 0) s.seed = static_cast<unsigned>(value);
    else if (arg == "--timeout-ms" && value >= 1) s.timeout_ms = value;
    else status = usage(argv[0]);
  }
  if (status == 0) {
    try {
      switch (s.stage) {
        case 0: status = train<zero::stage0>(s); break;
        case 1: status = train<zero::stage1>(s); break;
        default: status = train<zero::stage2>(s); break;
      }
    } catch (const zero::error& e) {
      // a timeout or a mismatch: the ranks are out of step, so end the whole job
      std::fprintf(stderr, "%s\n", e.what());
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
  }
  MPI_Finalize();
  return status;
}
