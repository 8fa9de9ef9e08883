#pragma once
//! @file cuda/device_buffer.hpp
//! `zero::cuda::device_buffer<T>`: device memory allocated once (cudaMalloc, at construction),
//! zero-filled on a stream, freed when the buffer is destroyed. Every buffer counts its bytes,
//! and a process-wide count of the device bytes `zero` holds and of its cudaMalloc calls lets a
//! caller (and the tests) check that a step allocates nothing. Plain C++ over the runtime API.
//!
//! cudaMalloc and cudaFree may synchronize the device: allocate before the training loop.

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include "zero/cuda/error.hpp"
#include "zero/error.hpp"

namespace zero::cuda {

//! Device memory held by `zero` in this process, and how many times it called cudaMalloc.
struct device_allocations {
  std::size_t live_bytes = 0;
  std::uint64_t allocations = 0;
};

namespace detail {
inline std::atomic<std::size_t>& live_bytes() noexcept {
  static std::atomic<std::size_t> bytes{0};
  return bytes;
}
inline std::atomic<std::uint64_t>& allocation_calls() noexcept {
  static std::atomic<std::uint64_t> calls{0};
  return calls;
}
}  // namespace detail

//! The process-wide counts (all devices, all threads).
inline device_allocations allocated() noexcept {
  return {detail::live_bytes().load(std::memory_order_relaxed), detail::allocation_calls().load(std::memory_order_relaxed)};
}

//! `count` elements of T in device memory of the current device. Move-only.
//! @tparam T trivially copyable (the buffer never runs constructors on the device)
template <class T>
class device_buffer {
  static_assert(std::is_trivially_copyable_v<T>, "zero::cuda::device_buffer holds trivially copyable elements only");

 public:
  device_buffer() = default;

  //! Allocates `count` elements (none for 0), not initialized. `rank` is named in errors.
  //! @throws cuda_error when cudaMalloc fails (naming the bytes asked for)
  explicit device_buffer(std::size_t count, int rank = -1) {
    if (count == 0) return;
    if (count > static_cast<std::size_t>(-1) / sizeof(T))
      throw usage_error("zero: device_buffer of " + std::to_string(count) + " elements overflows size_t");
    const std::size_t bytes = count * sizeof(T);
    void* pointer = nullptr;
    check(cudaMalloc(&pointer, bytes), "cudaMalloc(" + std::to_string(bytes) + " bytes)", rank);
    data_ = static_cast<T*>(pointer);
    size_ = count;
    detail::live_bytes().fetch_add(bytes, std::memory_order_relaxed);
    detail::allocation_calls().fetch_add(1, std::memory_order_relaxed);
  }
  //! Allocates `count` elements and enqueues a zero fill on `zero_on`: the memory is zero in
  //! that stream's order (other streams must wait on it).
  device_buffer(std::size_t count, stream_ref zero_on) : device_buffer(count, zero_on.rank) { zero(zero_on); }

  device_buffer(device_buffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  device_buffer& operator=(device_buffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer() { release(); }

  T* data() noexcept { return data_; }
  const T* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  std::size_t bytes() const noexcept { return size_ * sizeof(T); }
  bool empty() const noexcept { return size_ == 0; }

  //! Enqueues a zero fill of the whole buffer on `s` (no host synchronization).
  void zero(stream_ref s) {
    if (size_ != 0) check(cudaMemsetAsync(data_, 0, bytes(), s.stream), "cudaMemsetAsync (device_buffer::zero)", s.rank);
  }

 private:
  void release() noexcept {
    if (data_ == nullptr) return;
    // cudaFree waits for work using the memory; its error (a failed context) cannot be thrown here
    (void)cudaFree(data_);
    detail::live_bytes().fetch_sub(bytes(), std::memory_order_relaxed);
    data_ = nullptr;
    size_ = 0;
  }

  T* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace zero::cuda
