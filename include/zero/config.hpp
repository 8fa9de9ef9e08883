#pragma once
//! @file config.hpp
//! Version, the host/device function macro and the bit cast used by every other header.
//! This header is plain C++: it needs no CUDA header, and under nvcc it marks the shared
//! element-wise functions as callable from both host and device.

#define ZERO_VERSION_MAJOR 0
#define ZERO_VERSION_MINOR 1
#define ZERO_VERSION_PATCH 0

#if defined(__CUDACC__)
#define ZERO_HOST_DEVICE __host__ __device__
#else
#define ZERO_HOST_DEVICE
#endif

namespace zero {

//! Reinterprets the bytes of `from` as a `To` of the same size (usable in constant expressions
//! and in device code, where `std::bit_cast` may not be).
template <class To, class From>
ZERO_HOST_DEVICE constexpr To bit_cast(const From& from) noexcept {
  static_assert(sizeof(To) == sizeof(From), "zero::bit_cast needs types of the same size");
  return __builtin_bit_cast(To, from);
}

}  // namespace zero
