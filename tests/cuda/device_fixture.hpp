#pragma once
// Helpers of the CUDA tests: deterministic random inputs, device copies of host vectors,
// poisoned (NaN-filled) outputs, bitwise comparisons.

#include <doctest/doctest.h>

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "zero/cuda/device_buffer.hpp"
#include "zero/cuda/error.hpp"
#include "zero/types.hpp"

namespace zero_test {

inline std::uint64_t mix(std::uint64_t z) {  // splitmix64
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
inline double unit(std::uint64_t h) { return static_cast<double>(h >> 11) / 9007199254740992.0; }  // [0, 1)

//! A value of roughly normal shape, magnitude spread over 2^-8 .. 2^2, either sign.
inline float random_value(std::uint64_t seed, std::size_t i) {
  const std::uint64_t h = mix(seed * 0x100000001b3ull ^ mix(i));
  const double normalish = unit(h) + unit(mix(h)) + unit(mix(h + 1)) - 1.5;
  return static_cast<float>(std::ldexp(normalish, static_cast<int>(mix(h + 2) % 11) - 8));
}

template <class T>
std::vector<T> random_vector(std::size_t n, std::uint64_t seed, bool nonnegative = false) {
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    const float x = random_value(seed, i);
    v[i] = zero::convert<T>(nonnegative ? std::fabs(x) : x);
  }
  return v;
}

//! A quiet NaN of T (the poison outputs are filled with before each run).
template <class T>
T poison() {
  if constexpr (std::is_same_v<T, float>) return zero::bit_cast<float>(0x7fc00001u);
  else if constexpr (std::is_same_v<T, double>) return zero::bit_cast<double>(0x7ff8000000000001ull);
  else if constexpr (std::is_same_v<T, zero::bf16>) return zero::bf16::from_bits(0x7fc1);
  else if constexpr (std::is_same_v<T, zero::fp16>) return zero::fp16::from_bits(0x7e01);
  else return static_cast<T>(0xdeadbeefdeadbeefull);
}

inline void wait_device() { zero::cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize (test)"); }

//! A device copy of a host vector (synchronous copies: tests only).
template <class T>
struct device_vector {
  zero::cuda::device_buffer<T> buffer;
  device_vector() = default;
  explicit device_vector(const std::vector<T>& host) : buffer(host.size()) { upload(host); }
  explicit device_vector(std::size_t n) : buffer(n) {}
  //! Synchronous: a pageable cudaMemcpy may return before its DMA lands, on the legacy stream,
  //! which other (non-blocking) streams do not wait for.
  void upload(const std::vector<T>& host) {
    REQUIRE(host.size() == buffer.size());
    if (!host.empty())
      zero::cuda::check(cudaMemcpy(buffer.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
    wait_device();
  }
  //! @pre the streams that wrote the buffer are synchronized
  std::vector<T> download() const {
    std::vector<T> host(buffer.size());
    if (!host.empty())
      zero::cuda::check(cudaMemcpy(host.data(), buffer.data(), host.size() * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy");
    return host;
  }
  void poison_all() { upload(std::vector<T>(buffer.size(), poison<T>())); }
  T* data() { return buffer.data(); }
  std::size_t size() const { return buffer.size(); }
};

//! The first index where a and b differ bitwise, or -1.
template <class T>
long long first_difference(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) return static_cast<long long>(i);
  return -1;
}

template <class T>
std::string bits_of(const T& x) {
  std::uint64_t b = 0;
  std::memcpy(&b, &x, sizeof(T));
  char text[32];
  std::snprintf(text, sizeof text, "0x%llx", static_cast<unsigned long long>(b));
  return text;
}

//! CHECKs that a and b are bitwise equal, naming the first difference.
template <class T>
void check_bitwise(const std::vector<T>& device, const std::vector<T>& host, const std::string& what) {
  const long long at = first_difference(device, host);
  std::string detail = what;
  if (at >= 0 && static_cast<std::size_t>(at) < device.size() && device.size() == host.size())
    detail += "; first difference at " + std::to_string(at) + ": device " + bits_of(device[static_cast<std::size_t>(at)]) +
              ", host " + bits_of(host[static_cast<std::size_t>(at)]);
  INFO(detail);
  CHECK(device.size() == host.size());
  CHECK(at == -1);
}

}  // namespace zero_test
