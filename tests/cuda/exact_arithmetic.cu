// Compiled to PTX only, by tests/cuda/check_exact_ptx.cmake, with nvcc's default flags
// (--fmad=true) and with --use_fast_math: every update kernel zero ships, for every shipped rule
// and every model precision, so that the check sees the arithmetic the engine runs on a GPU.
// Not linked into any program.
#include <zero/cuda/fused_update.cuh>
#include <zero/cuda/tensorwise_update.cuh>

#define ZERO_EXACT_RULE(rule)                                                   \
  template class zero::cuda::fused_update<zero::rule, float, float, float>;     \
  template class zero::cuda::fused_update<zero::rule, float, float, zero::bf16>; \
  template class zero::cuda::fused_update<zero::rule, float, float, zero::fp16>; \
  template class zero::cuda::fused_update<zero::rule, zero::bf16, float, zero::bf16>;

ZERO_EXACT_RULE(adamw)
ZERO_EXACT_RULE(adam)
ZERO_EXACT_RULE(sgd)
ZERO_EXACT_RULE(lion)
ZERO_EXACT_RULE(adagrad)

template class zero::cuda::tensorwise_update<zero::lamb, float, float, float>;
template class zero::cuda::tensorwise_update<zero::lamb, float, float, zero::bf16>;
template class zero::cuda::tensorwise_update<zero::lamb, zero::bf16, float, zero::bf16>;
