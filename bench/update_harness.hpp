#pragma once
// What the update benchmarks share (update_bench.cpp, side_by_side_bench.cpp): the limit kernel
// (the update's access pattern with trivial arithmetic, compiled for the best instruction set
// the CPU has) and zero's fused AdamW over one shard with its ratio to that limit, measured in
// the same run.
#include <benchmark/benchmark.h>

#include <chrono>
#include <new>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "zero/zero.hpp"

#define ZERO_DETAIL_INCLUDE_ALLOWED
#include "zero/detail/host_update.hpp"
#include "zero/detail/worker_pool.hpp"
#undef ZERO_DETAIL_INCLUDE_ALLOWED

namespace zero_bench {

// Vectors on 64-byte boundaries, as the engine allocates its buffers (memory.hpp): a large
// std::vector from glibc's malloc starts 16 bytes past a page, so that AVX loads would straddle
// cache lines where the engine's never do.
template <class T>
struct aligned_allocator {
  using value_type = T;
  aligned_allocator() = default;
  template <class U>
  aligned_allocator(const aligned_allocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64})); }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t{64}); }
  template <class U>
  bool operator==(const aligned_allocator<U>&) const noexcept { return true; }
};
template <class T>
using aligned_vector = std::vector<T, aligned_allocator<T>>;

template <class T>
aligned_vector<T> filled(std::size_t n, float value) {
  return aligned_vector<T>(n, T(value));
}

// The access pattern of the update with trivial arithmetic: g read; p, m, v read and written;
// out written (Out = void: no output, as in fp32 where the parameters are the master weights).
template <class Out>
struct limit_kernel {
  std::size_t n;
  aligned_vector<float> g, p, m, v;
  aligned_vector<std::conditional_t<std::is_void_v<Out>, float, Out>> out;
  static constexpr std::int64_t bytes_per_element = 4 + 3 * 8 + (std::is_void_v<Out> ? 0 : 2);

  explicit limit_kernel(std::size_t count)
      : n(count), g(filled<float>(n, 1e-3f)), p(filled<float>(n, 1.0f)), m(filled<float>(n, 0.0f)),
        v(filled<float>(n, 0.0f)), out(std::is_void_v<Out> ? 0 : n) {}

  using out_type = std::conditional_t<std::is_void_v<Out>, float, Out>;

  static void pass(float* __restrict pp, float* __restrict mm, float* __restrict vv, const float* __restrict gg,
                   out_type* __restrict oo, std::size_t b, std::size_t e) {
    for (std::size_t i = b; i < e; ++i) {
      const float x = gg[i];
      pp[i] = pp[i] - x;
      mm[i] = mm[i] + x;
      vv[i] = vv[i] + x;
      if constexpr (!std::is_void_v<Out>) oo[i] = Out(pp[i]);
    }
  }
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  // The limit is the best this machine can do for the pattern, whatever the build's target: the
  // same loop compiled for AVX-512 or AVX2 where the CPU has them, chosen at run time.
  [[gnu::target("avx512f,avx512bw,avx512vl,avx2,fma"), gnu::flatten]] static void pass_avx512(
      float* __restrict pp, float* __restrict mm, float* __restrict vv, const float* __restrict gg, out_type* __restrict oo,
      std::size_t b, std::size_t e) {
    pass(pp, mm, vv, gg, oo, b, e);
  }
  [[gnu::target("avx2,fma"), gnu::flatten]] static void pass_avx2(float* __restrict pp, float* __restrict mm, float* __restrict vv,
                                                                  const float* __restrict gg, out_type* __restrict oo,
                                                                  std::size_t b, std::size_t e) {
    pass(pp, mm, vv, gg, oo, b, e);
  }
#endif
  //! The instruction set the limit runs on ("avx512", "avx2" or "build target").
  static const char* isa() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
      return "avx512";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
#endif
    return "build target";
  }

  void operator()(unsigned t, unsigned k) {
    const auto [b, e] = zero::detail::share(n, t, k);
    static const std::string_view chosen = isa();
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    if (chosen == "avx512") return pass_avx512(p.data(), m.data(), v.data(), g.data(), out.data(), b, e);
    if (chosen == "avx2") return pass_avx2(p.data(), m.data(), v.data(), g.data(), out.data(), b, e);
#endif
    pass(p.data(), m.data(), v.data(), g.data(), out.data(), b, e);
  }

  // mean bandwidth (bytes/s) over `runs` runs after one warm-up: measured as the update is
  double bandwidth(zero::detail::worker_pool& pool, int runs = 10) {
    pool.run(*this);
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < runs; ++r) pool.run(*this);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return static_cast<double>(n) * bytes_per_element * runs / s;
  }
};

template <class Out>
void limit(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  zero::detail::worker_pool pool(static_cast<unsigned>(state.range(1)));
  limit_kernel<Out> kernel(n);
  for (auto _ : state) {
    pool.run(kernel);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n) * limit_kernel<Out>::bytes_per_element);
  state.counters["bytes_per_element"] = static_cast<double>(limit_kernel<Out>::bytes_per_element);
  state.SetLabel(std::string("limit on ") + limit_kernel<Out>::isa());
}

// An update's counters: `n` elements of `bytes` each per iteration, `seconds` in all, and its
// ratio to the limit's bandwidth measured in the same run.
inline void report_update(benchmark::State& state, std::size_t n, std::size_t bytes, double seconds, double limit_bandwidth) {
  const double per_second = static_cast<double>(n) * static_cast<double>(state.iterations()) / seconds;
  state.counters["bytes_per_element"] = static_cast<double>(bytes);
  state.counters["bytes_per_second"] = per_second * static_cast<double>(bytes);
  state.counters["params_per_second"] = per_second;
  state.counters["limit_bytes_per_second"] = limit_bandwidth;
  state.counters["limit_ratio"] = per_second * static_cast<double>(bytes) / limit_bandwidth;
}

// zero's fused AdamW update over one shard, as step() runs it, split across the pool's threads.
// limit_ratio: its bandwidth over the limit kernel's, measured just before on the same sizes.
template <class Precision>
void fused_adamw(benchmark::State& state) {
  using value = typename Precision::value_type;
  using param = typename Precision::param_type;
  using accum = typename Precision::accum_type;
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  zero::detail::worker_pool pool(static_cast<unsigned>(state.range(1)));
  double limit_bandwidth;
  {
    limit_kernel<std::conditional_t<Precision::has_master, param, void>> kernel(n);
    limit_bandwidth = kernel.bandwidth(pool);
  }
  auto values = filled<value>(n, 1.0f);
  auto grads = filled<accum>(n, 1e-3f);
  auto m = filled<float>(n, 0.0f), v = filled<float>(n, 0.0f);
  aligned_vector<param> out(Precision::has_master ? n : 0);
  zero::adamw::hyperparameters h;
  std::uint64_t step = 0;
  const zero::detail::value_rounding<value> round{};
  double seconds = 0;
  for (auto _ : state) {
    const auto c = zero::adamw::prepare(h, ++step);
    auto job = [&](unsigned t, unsigned k) {
      const auto [b, e] = zero::detail::share(n, t, k);
      float* state_slots[2] = {m.data() + b, v.data() + b};
      zero::detail::update_elements<zero::adamw>(c, values.data() + b, grads.data() + b, state_slots, 2,
                                                  Precision::has_master ? out.data() + b : nullptr, e - b, 0.5f, round, b);
    };
    const auto t0 = std::chrono::steady_clock::now();
    pool.run(job);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::ClobberMemory();
  }
  report_update(state, n, sizeof(accum) + 2 * sizeof(value) + 2 * 8 + (Precision::has_master ? sizeof(param) : 0), seconds,
                limit_bandwidth);
  state.SetLabel(std::string("update on ") +
                 (zero::detail::current_host_isa() == zero::detail::host_isa::baseline ? "the build target"
                                                                                        : zero::detail::to_string(zero::detail::current_host_isa())) +
                 ", limit on " + limit_kernel<std::conditional_t<Precision::has_master, param, void>>::isa());
}

}  // namespace zero_bench
