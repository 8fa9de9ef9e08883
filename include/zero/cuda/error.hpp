#pragma once
//! @file cuda/error.hpp
//! CUDA runtime failures as exceptions: `zero::cuda_error` names the call, the error's name and
//! text, the device and the rank. Plain C++ over the CUDA runtime API (no nvcc needed); every
//! other header of the CUDA backend reports through `zero::cuda::check`.
//!
//! Kernels launched by `zero` are checked at launch (`cudaGetLastError`: a bad configuration
//! throws at once). A kernel that fails while running is reported, as by CUDA itself, by the
//! first checked call after it: the exception then names that call and says so.

#include <cuda_runtime_api.h>

#include <string>
#include <string_view>

#include "zero/error.hpp"

namespace zero {

//! A CUDA runtime call failed. `code()` is the `cudaError_t`.
class cuda_error : public error {
 public:
  cuda_error(const std::string& what, cudaError_t code) : error(what), code_(code) {}
  cudaError_t code() const noexcept { return code_; }

 private:
  cudaError_t code_;
};

namespace cuda {

//! Where device work runs: a stream (0: the legacy default stream), and the rank that issues
//! it, which error messages name (-1: not part of a group). Converts from a bare `cudaStream_t`.
struct stream_ref {
  cudaStream_t stream = nullptr;
  int rank = -1;

  stream_ref() = default;
  stream_ref(cudaStream_t s, int r = -1) noexcept : stream(s), rank(r) {}  // NOLINT: implicit on purpose
};

//! "cudaErrorMemoryAllocation (out of memory)".
inline std::string describe(cudaError_t status) {
  const char* name = cudaGetErrorName(status);
  const char* text = cudaGetErrorString(status);
  return std::string(name != nullptr ? name : "cudaError?") + " (" + (text != nullptr ? text : "no description") + ")";
}

//! Throws `cuda_error` when `status` is not `cudaSuccess`: "zero: <call> failed on rank R
//! (device D): cudaErrorX (text)". Clears CUDA's last error, so that it is reported once.
inline void check(cudaError_t status, std::string_view call, int rank = -1) {
  if (status == cudaSuccess) return;
  (void)cudaGetLastError();
  int device = -1;
  const bool known_device = cudaGetDevice(&device) == cudaSuccess;
  std::string message = "zero: " + std::string(call) + " failed";
  if (rank >= 0) message += " on rank " + std::to_string(rank);
  if (known_device) message += " (device " + std::to_string(device) + ")";
  message += ": " + describe(status);
  throw cuda_error(message, status);
}

//! After a kernel launch: a launch error, or an earlier kernel's failure that CUDA reports now.
inline void check_launch(std::string_view kernel, int rank = -1) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess)
    check(status, "launch of " + std::string(kernel) + " (or an earlier asynchronous failure)", rank);
}

//! Whether `pointer` is memory the device can address as device memory (allocated by
//! cudaMalloc or cudaMallocManaged). Host memory, pinned or not, and null answer false.
inline bool is_device_pointer(const void* pointer) {
  if (pointer == nullptr) return false;
  cudaPointerAttributes attributes{};
  const cudaError_t status = cudaPointerGetAttributes(&attributes, pointer);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // older runtimes: an unregistered host pointer is an error
    return false;
  }
  return attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged;
}

}  // namespace cuda
}  // namespace zero
