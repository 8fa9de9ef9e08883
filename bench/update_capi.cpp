// The limit kernel and zero's fused AdamW as a C library, for bench/side_by_side.py to run in the
// same Python process as torch.optim.AdamW(fused=True) and DeepSpeed's DeepSpeedCPUAdam, on the
// same torch tensors' memory (ctypes): every row of its same-process table then shares one
// address space, one allocator and one set of pages, which separate processes on this VM do not
// (their bandwidth differs by up to 40% for the same kernel).
//
//   void* zero_capi_create(unsigned threads);      (worker threads, the calling one included)
//   void zero_capi_destroy(void*);
//   const char* zero_capi_isa(void);               (the instruction set zero's update runs on)
//   const char* zero_capi_limit_isa(void);         (the instruction set of the limit kernel)
//   void zero_capi_limit(void*, float* p, float* m, float* v, const float* g, size_t n);
//   void zero_capi_adamw(void*, float* p, float* m, float* v, const float* g, size_t n, uint64_t step,
//                        double lr, double beta1, double beta2, double eps, double weight_decay);
//
// zero_capi_adamw is one fp32 AdamW step (torch.optim.AdamW's meaning, decoupled weight decay)
// of zero's host update over p with state m and v, split across the threads as step() splits it.
#include <cstddef>
#include <cstdint>

#include "update_harness.hpp"

namespace {

struct context {
  explicit context(unsigned threads) : pool(threads) {}
  zero::detail::worker_pool pool;
};

// The limit kernel's pass over memory it does not own.
struct borrowed_limit {
  float *p, *m, *v;
  const float* g;
  std::size_t n;
  void operator()(unsigned t, unsigned k) const {
    using kernel = zero_bench::limit_kernel<void>;
    const auto [b, e] = zero::detail::share(n, t, k);
    float* none = nullptr;
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    static const std::string_view chosen = kernel::isa();
    if (chosen == "avx512") return kernel::pass_avx512(p, m, v, g, none, b, e);
    if (chosen == "avx2") return kernel::pass_avx2(p, m, v, g, none, b, e);
#endif
    kernel::pass(p, m, v, g, none, b, e);
  }
};

}  // namespace

extern "C" {

void* zero_capi_create(unsigned threads) { return new context(threads); }

void zero_capi_destroy(void* c) { delete static_cast<context*>(c); }

const char* zero_capi_isa(void) { return zero::detail::to_string(zero::detail::current_host_isa()); }

const char* zero_capi_limit_isa(void) { return zero_bench::limit_kernel<void>::isa(); }

void zero_capi_limit(void* c, float* p, float* m, float* v, const float* g, std::size_t n) {
  borrowed_limit job{p, m, v, g, n};
  static_cast<context*>(c)->pool.run(job);
}

void zero_capi_adamw(void* c, float* p, float* m, float* v, const float* g, std::size_t n, std::uint64_t step, double lr,
                     double beta1, double beta2, double eps, double weight_decay) {
  zero::adamw::hyperparameters h;
  h.lr = lr;
  h.beta1 = beta1;
  h.beta2 = beta2;
  h.eps = eps;
  h.weight_decay = weight_decay;
  const auto constants = zero::adamw::prepare(h, step);
  const zero::detail::value_rounding<float> round{};
  auto job = [&](unsigned t, unsigned k) {
    const auto [b, e] = zero::detail::share(n, t, k);
    float* slots[2] = {m + b, v + b};
    zero::detail::update_elements<zero::adamw>(constants, p + b, g + b, slots, 2, static_cast<float*>(nullptr), e - b, 1.0f,
                                               round, b);
  };
  static_cast<context*>(c)->pool.run(job);
}

}  // extern "C"
