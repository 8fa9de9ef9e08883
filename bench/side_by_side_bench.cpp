// zero's host AdamW beside PyTorch's, in one process: the limit kernel, zero's fused update and
// torch's fused CPU AdamW (the kernel torch.optim.AdamW(fused=True) runs on CPU tensors,
// at::_fused_adamw_), on the same sizes and thread counts, each with its ratio to the limit
// measured in the same run. fp32: parameters, gradients and both moments in fp32 (28 bytes per
// parameter), the one layout both libraries update in place. Built where libtorch is found
// (cmake/zeroLibtorch.cmake); not part of the tests but for a smoke run.
//
//   limit_fp32/<params>/<threads>                  (update_harness.hpp)
//   zero_adamw_fp32/<params>/<threads>             zero's update, threads of its own pool
//   torch_fused_adamw_fp32/<params>/<threads>      at::_fused_adamw_, torch::set_num_threads(threads)
//
//   zero_bench_side_by_side --benchmark_format=json --benchmark_out=side_by_side.json
//   (bench/side_by_side.py runs it and DeepSpeed's CPU Adam where installed, and writes one table)
#include <benchmark/benchmark.h>
#include <ATen/Version.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <string>

#include "update_harness.hpp"

namespace {

void torch_fused_adamw(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  double limit_bandwidth;
  {
    zero::detail::worker_pool pool(static_cast<unsigned>(threads));
    zero_bench::limit_kernel<void> kernel(static_cast<std::size_t>(n));
    limit_bandwidth = kernel.bandwidth(pool);
  }
  torch::set_num_threads(threads);
  torch::NoGradGuard no_grad;
  auto p = torch::full({n}, 1.0f), g = torch::full({n}, 1e-3f), m = torch::zeros({n}), v = torch::zeros({n});
  auto step = torch::zeros({}, torch::kFloat);  // torch.optim keeps a float step tensor per parameter
  const zero::adamw::hyperparameters h;         // the same hyperparameters as zero's run
  const std::vector<torch::Tensor> ps{p}, gs{g}, ms{m}, vs{v}, steps{step};
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    step.add_(1);  // as torch.optim does before the fused kernel
    at::_fused_adamw_(ps, gs, ms, vs, {}, steps, h.lr, h.beta1, h.beta2, h.weight_decay, h.eps, false, false);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::ClobberMemory();
  }
  zero_bench::report_update(state, static_cast<std::size_t>(n), 4 + 3 * 8, seconds, limit_bandwidth);
  state.SetLabel("torch " TORCH_VERSION ", " + std::string(at::get_cpu_capability()) + ", limit on " +
                 zero_bench::limit_kernel<void>::isa());
}

}  // namespace

BENCHMARK(zero_bench::limit<void>)->ArgsProduct({{16 << 20, 64 << 20}, {1, 2}})->UseRealTime()->Unit(benchmark::kMillisecond)->Name("limit_fp32");
BENCHMARK(zero_bench::fused_adamw<zero::fp32_precision>)->ArgsProduct({{16 << 20, 64 << 20}, {1, 2}})->UseRealTime()->Unit(benchmark::kMillisecond)->Name("zero_adamw_fp32");
BENCHMARK(torch_fused_adamw)->ArgsProduct({{16 << 20, 64 << 20}, {1, 2}})->UseRealTime()->Unit(benchmark::kMillisecond)->Name("torch_fused_adamw_fp32");
BENCHMARK_MAIN();
