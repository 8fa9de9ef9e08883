// A framework's training loop on GPUs with zero: one process per GPU, NCCL between them, ZeRO
// stage 2 with bf16 parameters and gradients, fp32 master weights and AdamW state in device
// memory. The "framework" is two hand-written kernels: a linear layer y = W x + b learning a
// fixed teacher from synthetic data, each rank on its own examples. Backward reports each
// gradient to zero as soon as its kernel is enqueued (b, then W); zero reduce-scatters it on its
// NCCL stream while the next kernel runs, updates the shard and all-gathers the parameters.
//
//   zero_example_cuda [--steps S]                       # one process, one GPU
//   MASTER_ADDR=host MASTER_PORT=29500 RANK=r WORLD_SIZE=n [LOCAL_RANK=g] zero_example_cuda
//                                                       # as torchrun starts it: n processes
//
// Exit status: 0 when the loss fell below a hundredth of where it started, 1 otherwise, 77 when
// there is no usable GPU (CTest: skipped).

#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "zero/cuda/backend.cuh"
#include "zero/cuda/bootstrap.hpp"
#include "zero/cuda/error.hpp"
#include "zero/cuda/nccl_communicator.hpp"
#include "zero/optimizer.hpp"

namespace {

constexpr int inputs = 64, outputs = 16, batch = 256;
using bf16 = zero::bf16;

// A deterministic value in [-1, 1) for (a, b, c, d): the data and the teacher.
__host__ __device__ unsigned long long mix(unsigned long long x, unsigned v) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull + v;
  return (x ^ (x >> 27)) * 0x94d049bb133111ebull;
}
__host__ __device__ float noise(unsigned a, unsigned b, unsigned c, unsigned d) {
  unsigned long long x = mix(mix(mix(0x9e3779b97f4a7c15ull ^ a, b), c), d);
  x ^= x >> 31;
  return static_cast<float>(static_cast<double>(x >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

__device__ float input(int rank, int step, int e, int i) { return noise(1, rank * 1000003 + step, e, i); }

// Forward and the loss's gradient for the outputs: one thread per (example, output).
__global__ void forward(const bf16* w, const bf16* b, int rank, int step, float* residual) {
  const int e = blockIdx.x, o = threadIdx.x;
  float y = static_cast<float>(b[o]), target = noise(3, 0, o, 0);
  for (int i = 0; i < inputs; ++i) {
    const float x = input(rank, step, e, i);
    y += static_cast<float>(w[o * inputs + i]) * x;
    target += noise(2, 0, o, i) * x;
  }
  residual[e * outputs + o] = y - target;  // d(0.5 (y - target)^2) / dy
}

// Backward: db[o] = mean over examples of the residual; dW[o][i] = mean of residual * x[i].
__global__ void bias_gradient(const float* residual, bf16* db) {
  const int o = threadIdx.x;
  float sum = 0;
  for (int e = 0; e < batch; ++e) sum += residual[e * outputs + o];
  db[o] = bf16(sum / batch);
}

__global__ void weight_gradient(const float* residual, int rank, int step, bf16* dw) {
  const int o = blockIdx.x, i = threadIdx.x;
  float sum = 0;
  for (int e = 0; e < batch; ++e) sum += residual[e * outputs + o] * input(rank, step, e, i);
  dw[o * inputs + i] = bf16(sum / batch);
}

int environment_integer(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::atoi(value) : fallback;
}

}  // namespace

int main(int argc, char** argv) {
  using zero::cuda::check;
  int steps = 300;
  for (int a = 1; a < argc; ++a)
    if (std::strcmp(argv[a], "--steps") == 0 && a + 1 < argc) steps = std::atoi(argv[++a]);

  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no usable CUDA device\n");
    return 77;
  }
  try {
    // Who we are: torchrun's variables, or one process alone.
    const bool launched = std::getenv("MASTER_ADDR") != nullptr;
    const zero::cuda::tcp_bootstrap meeting = launched ? zero::cuda::tcp_bootstrap_from_environment() : zero::cuda::tcp_bootstrap{};
    const int rank = launched ? meeting.rank : 0, world = launched ? meeting.world_size : 1;
    check(cudaSetDevice(environment_integer("LOCAL_RANK", rank) % devices), "cudaSetDevice");
    cudaStream_t stream = nullptr;
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");

    // Rank 0's NCCL id reaches every rank over TCP (a single process needs no meeting).
    const zero::cuda::bootstrap_id id = rank == 0 ? zero::cuda::nccl_unique_id() : zero::cuda::bootstrap_id{};
    zero::nccl_communicator comm(launched ? zero::cuda::exchange_id(meeting, id) : id, rank, world, stream);

    // The framework's memory: parameters and gradients, on the device.
    std::vector<bf16> initial(outputs * inputs + outputs);
    for (std::size_t k = 0; k < initial.size(); ++k) initial[k] = bf16(0.1f * noise(4, 0, 0, static_cast<unsigned>(k)));
    bf16 *w = nullptr, *b = nullptr, *dw = nullptr, *db = nullptr;
    float* residual = nullptr;
    check(cudaMalloc(&w, sizeof(bf16) * outputs * inputs), "cudaMalloc");
    check(cudaMalloc(&b, sizeof(bf16) * outputs), "cudaMalloc");
    check(cudaMalloc(&dw, sizeof(bf16) * outputs * inputs), "cudaMalloc");
    check(cudaMalloc(&db, sizeof(bf16) * outputs), "cudaMalloc");
    check(cudaMalloc(&residual, sizeof(float) * batch * outputs), "cudaMalloc");
    check(cudaMemcpy(w, initial.data(), sizeof(bf16) * outputs * inputs, cudaMemcpyHostToDevice), "cudaMemcpy");
    check(cudaMemcpy(b, initial.data() + outputs * inputs, sizeof(bf16) * outputs, cudaMemcpyHostToDevice), "cudaMemcpy");

    using engine = zero::optimizer<zero::stage2, zero::bf16_mixed, zero::adamw, zero::bucketed_partitioner, zero::nccl_communicator>;
    engine::options_type options;
    options.hyperparameters.lr = 1e-2;
    options.hyperparameters.weight_decay = 0;
    options.layout.bucket_elements = 512;  // W and b in separate reduce-scatters
    options.layout.staging_buffers = 2;    // b's reduce-scatter in flight while W's gradient is computed
    const std::vector<zero::parameter<bf16>> parameters{{"weight", {w, std::size_t{outputs * inputs}}},
                                                         {"bias", {b, std::size_t{outputs}}}};
    double first_loss = -1, loss = 0;
    {
      engine opt(comm, parameters, options);
      std::vector<float> host_residual(batch * outputs);
      for (int step = 0; step < steps; ++step) {
        forward<<<batch, outputs, 0, stream>>>(w, b, rank, step, residual);
        bias_gradient<<<1, outputs, 0, stream>>>(residual, db);
        opt.gradient_ready(1, {db, std::size_t{outputs}});  // enqueued: zero packs it and starts its reduce-scatter
        weight_gradient<<<outputs, inputs, 0, stream>>>(residual, rank, step, dw);
        opt.gradient_ready(0, {dw, std::size_t{outputs * inputs}});
        check(cudaGetLastError(), "a kernel launch");
        if (step == 0 || step == steps - 1) {  // this rank's loss (a sync, only twice)
          check(cudaMemcpyAsync(host_residual.data(), residual, sizeof(float) * host_residual.size(), cudaMemcpyDeviceToHost, stream),
                "cudaMemcpyAsync");
          check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
          loss = 0;
          for (float r : host_residual) loss += 0.5 * r * r / batch;
          if (first_loss < 0) first_loss = loss;
        }
        const zero::step_report report = opt.step();
        if (rank == 0 && (step % 100 == 0 || step == steps - 1))
          std::printf("step %4d  gradient norm %.5f%s\n", step, report.grad_norm, report.skipped ? "  (skipped)" : "");
      }
      if (rank == 0)
        std::printf("rank 0 of %d: loss %.6f -> %.6f; zero holds %zu bytes of model state on this GPU\n", world, first_loss,
                    loss, opt.memory().total());
    }  // the engine goes before the memory it was given
    for (void* p : {static_cast<void*>(w), static_cast<void*>(b), static_cast<void*>(dw), static_cast<void*>(db),
                    static_cast<void*>(residual)})
      (void)cudaFree(p);
    (void)cudaStreamDestroy(stream);
    return loss < 0.01 * first_loss ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zero_example_cuda: %s\n", e.what());
    return 1;
  }
}
