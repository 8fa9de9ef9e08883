// The fused update on the GPU against the device's copy bandwidth, measured in the same run.
//
//   fused_adamw_<precision>/<params>: zero::cuda::fused_update of AdamW over one shard of
//       <params> elements (one segment, 16-byte aligned), timed with CUDA events (manual time).
//       Bytes per parameter moved: fp32: 4 (grad read) + 3 x 8 (value, m, v read and written) = 28;
//       bf16 (fp32 master, fp32 grads): 28 + 2 (the bf16 copy written) = 30.
//       Counters: bytes_per_second (the update's bytes / time), copy_bytes_per_second (a
//       cudaMemcpyAsync device to device moving the same bytes: bytes / 2 copied, each byte read
//       and written), copy_ratio (update / copy: the goal is >= 0.9), params_per_second.
//
//   zero_bench_cuda_update --benchmark_format=json --benchmark_out=cuda-update.json
//
// Without a usable CUDA device it prints why and exits 77 (skipped).

#include <benchmark/benchmark.h>

#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "zero/cuda/device_buffer.hpp"
#include "zero/cuda/error.hpp"
#include "zero/cuda/fused_update.cuh"
#include "zero/cuda/kernels.cuh"
#include "zero/update_rule.hpp"

namespace {

using zero::bf16;

//! Mean seconds of `runs` launches of f on `stream`, after one warm-up, by CUDA events.
template <class F>
double time_on_stream(cudaStream_t stream, int runs, F&& f) {
  cudaEvent_t start, stop;
  zero::cuda::check(cudaEventCreate(&start), "cudaEventCreate");
  zero::cuda::check(cudaEventCreate(&stop), "cudaEventCreate");
  f();
  zero::cuda::check(cudaEventRecord(start, stream), "cudaEventRecord");
  for (int r = 0; r < runs; ++r) f();
  zero::cuda::check(cudaEventRecord(stop, stream), "cudaEventRecord");
  zero::cuda::check(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0;
  zero::cuda::check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
  return static_cast<double>(ms) / 1000.0 / runs;
}

//! Device-to-device copy bandwidth for a copy moving `bytes` (bytes / 2 read and written).
double copy_bandwidth(std::size_t bytes, cudaStream_t stream) {
  const std::size_t half = bytes / 2;
  zero::cuda::device_buffer<unsigned char> from(half, stream), to(half, stream);
  const double seconds = time_on_stream(stream, 10, [&] {
    zero::cuda::check(cudaMemcpyAsync(to.data(), from.data(), half, cudaMemcpyDeviceToDevice, stream), "cudaMemcpyAsync");
  });
  return static_cast<double>(2 * half) / seconds;
}

template <class Param>
void fused_adamw(benchmark::State& state) {
  constexpr bool with_out = !std::is_same_v<Param, float>;
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  const std::size_t bytes_per_param = 28 + (with_out ? sizeof(Param) : 0);
  const std::size_t bytes = n * bytes_per_param;
  cudaStream_t stream = nullptr;
  zero::cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  {
    zero::cuda::device_buffer<float> values(n, stream), grads(n, stream), moments(2 * n, stream);
    zero::cuda::device_buffer<Param> out(with_out ? n : 0, stream);
    zero::cuda::fill(values.data(), n, 1.0f, stream);
    zero::cuda::fill(grads.data(), n, 1e-3f, stream);
    const std::vector<zero::cuda::update_segment<float, float, Param>> segments = {
        {values.data(), grads.data(), 0, with_out ? out.data() : nullptr, n}};
    zero::cuda::fused_update<zero::adamw, float, float, Param> update(segments, moments.data(), n, 2);
    const auto constants = zero::adamw::prepare({}, 1);
    zero::cuda::update_controls controls;
    controls.factor = 1.0f;
    const double copy = copy_bandwidth(bytes, stream);
    double total_seconds = 0;
    for (auto _ : state) {
      const double seconds = time_on_stream(stream, 5, [&] { update(constants, controls, {}, 0, stream); });
      state.SetIterationTime(seconds);
      total_seconds += seconds;
    }
    const double iterations = static_cast<double>(state.iterations());
    const double rate = static_cast<double>(bytes) * iterations / total_seconds;
    state.counters["bytes_per_second"] = rate;
    state.counters["copy_bytes_per_second"] = copy;
    state.counters["copy_ratio"] = rate / copy;
    state.counters["params_per_second"] = static_cast<double>(n) * iterations / total_seconds;
    state.counters["bytes_per_param"] = static_cast<double>(bytes_per_param);
  }
  zero::cuda::check(cudaStreamDestroy(stream), "cudaStreamDestroy");
}

void sizes(benchmark::internal::Benchmark* b) {
  for (long long n : {1ll << 24, 1ll << 26, 1ll << 28}) b->Arg(n);
  b->UseManualTime()->Unit(benchmark::kMillisecond);
}

BENCHMARK_TEMPLATE(fused_adamw, float)->Name("fused_adamw_fp32")->Apply(sizes);
BENCHMARK_TEMPLATE(fused_adamw, bf16)->Name("fused_adamw_bf16")->Apply(sizes);

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no usable CUDA device (%s)\n", status == cudaSuccess ? "0 devices" : cudaGetErrorString(status));
    return 77;
  }
  cudaDeviceProp properties{};
  zero::cuda::check(cudaGetDeviceProperties(&properties, 0), "cudaGetDeviceProperties");
  benchmark::AddCustomContext("cuda_device", properties.name);
  benchmark::AddCustomContext("cuda_compute_capability", std::to_string(properties.major) + "." + std::to_string(properties.minor));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
