// The CUDA tests' main: without a usable CUDA device every test exits 77, which CTest reports as
// skipped (SKIP_RETURN_CODE), with the reason on its output. Listing the tests (CTest's discovery
// at build time) needs no device.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  bool listing = false;
  for (int i = 1; i < argc; ++i)
    listing = listing || std::strstr(argv[i], "-list") != nullptr || std::strcmp(argv[i], "-ltc") == 0 ||
              std::strcmp(argv[i], "-lts") == 0 || std::strcmp(argv[i], "-h") == 0 || std::strcmp(argv[i], "--help") == 0;
  if (!listing) {
    int devices = 0;
    const cudaError_t status = cudaGetDeviceCount(&devices);
    if (status != cudaSuccess || devices == 0) {
      std::printf("SKIPPED: no usable CUDA device (%s: %s); the CUDA tests need a GPU (scripts/gpu-check.sh)\n",
                  cudaGetErrorName(status), status == cudaSuccess ? "0 devices" : cudaGetErrorString(status));
      return 77;
    }
    cudaDeviceProp properties{};
    if (cudaGetDeviceProperties(&properties, 0) == cudaSuccess)
      std::printf("device 0: %s (compute capability %d.%d)\n", properties.name, properties.major, properties.minor);
  }
  doctest::Context context(argc, argv);
  return context.run();
}
