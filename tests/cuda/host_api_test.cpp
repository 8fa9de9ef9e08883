// The host side of the CUDA backend, which runs with or without a GPU: CUDA and NCCL failures
// as exceptions naming the call, the error and the rank; a real NCCL unique id shared by the TCP
// bootstrap; and, on a machine without a GPU, device allocations and the NCCL communicator
// refusing cleanly instead of crashing.

#include <doctest/doctest.h>

#include <cuda_runtime_api.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "free_port.hpp"
#include "zero/cuda/bootstrap.hpp"
#include "zero/cuda/device_buffer.hpp"
#include "zero/cuda/error.hpp"
#include "zero/cuda/nccl_communicator.hpp"

namespace {

using zero_test::free_port;

bool have_device() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  (void)cudaGetLastError();
  return ok;
}

}  // namespace

TEST_SUITE("unit") {
  TEST_CASE("CUDA errors name the call and the error and the rank") {
    try {
      zero::cuda::check(cudaErrorMemoryAllocation, "cudaMalloc(64 bytes)", 3);
      FAIL("no exception");
    } catch (const zero::cuda_error& e) {
      const std::string what = e.what();
      CHECK(what.find("cudaMalloc(64 bytes) failed on rank 3") != std::string::npos);
      CHECK(what.find("cudaErrorMemoryAllocation") != std::string::npos);
      CHECK(e.code() == cudaErrorMemoryAllocation);
    }
    CHECK_NOTHROW(zero::cuda::check(cudaSuccess, "cudaMemcpy"));
    const std::string nccl = zero::cuda::describe(ncclSystemError);
    CHECK(nccl.find("ncclSystemError") != std::string::npos);
    CHECK(zero::cuda::describe(static_cast<ncclResult_t>(42)).find("ncclResult 42") != std::string::npos);
    static_assert(std::is_base_of_v<zero::communicator_error, zero::nccl_error>);
    static_assert(std::is_base_of_v<zero::error, zero::cuda_error>);
    int on_host = 0;
    CHECK_FALSE(zero::cuda::is_device_pointer(&on_host));
    CHECK_FALSE(zero::cuda::is_device_pointer(nullptr));
  }

  TEST_CASE("a real NCCL unique id shared over the TCP bootstrap (no GPU needed)") {
    const auto id = zero::cuda::nccl_unique_id();
    CHECK(id != zero::cuda::bootstrap_id{});
    const std::uint16_t port = free_port();
    std::vector<zero::cuda::bootstrap_id> got(3);
    std::vector<std::exception_ptr> errors(3);
    std::vector<std::thread> ranks;
    for (int r = 0; r < 3; ++r)
      ranks.emplace_back([&, r] {
        try {
          got[static_cast<std::size_t>(r)] = zero::cuda::exchange_id(zero::cuda::tcp_bootstrap{"127.0.0.1", port, r, 3, std::chrono::seconds(20)},
                                                                     r == 0 ? id : zero::cuda::bootstrap_id{});
        } catch (...) {
          errors[static_cast<std::size_t>(r)] = std::current_exception();
        }
      });
    for (auto& t : ranks) t.join();
    for (const auto& e : errors) CHECK_FALSE(e);
    for (const auto& g : got) CHECK(g == id);
  }

  TEST_CASE("without a GPU allocations and the NCCL communicator refuse with a zero::error") {
    if (have_device()) {
      MESSAGE("a CUDA device is present: the refusals without one are not exercised here");
      return;
    }
    CHECK_THROWS_WITH_AS(zero::cuda::device_buffer<float>(16), doctest::Contains("cudaMalloc(64 bytes) failed"), zero::cuda_error);
    CHECK(zero::cuda::allocated().live_bytes == 0);
    CHECK_THROWS_AS(zero::nccl_communicator(zero::cuda::nccl_unique_id(), 0, 1, nullptr), zero::error);
    CHECK_THROWS_AS(zero::nccl_communicator(zero::cuda::bootstrap_id{}, 2, 2, nullptr), zero::usage_error);
  }
}
