// The NCCL id bootstraps (zero/cuda/bootstrap.hpp) are host code: shown here with any 128-byte
// id, ranks as threads, on the local file system and on loopback. No GPU, no CUDA, no NCCL.

#include <doctest/doctest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "free_port.hpp"
#include "zero/cuda/bootstrap.hpp"
#include "zero/error.hpp"

namespace {

using namespace std::chrono_literals;
using zero::cuda::bootstrap_id;

bootstrap_id make_id(std::uint8_t seed) {
  bootstrap_id id;
  for (std::size_t i = 0; i < id.bytes.size(); ++i) id.bytes[i] = static_cast<std::uint8_t>(seed * 31u + i * 7u + 1u);
  return id;
}

//! A fresh directory under the system's temporary directory, removed at the end.
struct scratch_directory {
  std::filesystem::path path;
  scratch_directory() {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("zero-bootstrap-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~scratch_directory() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
};

using zero_test::free_port;

//! Runs f(rank) on `world` threads; returns each rank's exception (null when it returned).
template <class F>
std::vector<std::exception_ptr> run_ranks(int world, F f) {
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        f(r);
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

std::string message_of(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  }
  return {};
}

}  // namespace

TEST_SUITE("unit") {
  TEST_CASE("file bootstrap: every rank gets rank 0's id") {
    scratch_directory dir;
    const bootstrap_id id = make_id(7);
    std::vector<bootstrap_id> got(4);
    const auto errors = run_ranks(4, [&](int r) {
      if (r == 0) std::this_thread::sleep_for(50ms);  // the readers wait for the file
      zero::cuda::file_bootstrap f{dir.path / "nccl-id", "job-42", r, 10s, 5ms};
      got[static_cast<std::size_t>(r)] = zero::cuda::exchange_id(f, r == 0 ? id : bootstrap_id{});
    });
    for (const auto& e : errors) CHECK_FALSE(e);
    for (const auto& g : got) CHECK(g == id);
    // no temporary file is left beside it
    std::size_t files = 0;
    for (const auto& entry : std::filesystem::directory_iterator(dir.path)) {
      CHECK(entry.path().filename() == "nccl-id");
      ++files;
    }
    CHECK(files == 1);
  }

  TEST_CASE("file bootstrap: a stale file from another job is never read") {
    scratch_directory dir;
    const auto path = dir.path / "nccl-id";
    const bootstrap_id stale = make_id(1), fresh = make_id(2);
    zero::cuda::exchange_id(zero::cuda::file_bootstrap{path, "job-old", 0, 1s, 5ms}, stale);
    std::vector<bootstrap_id> got(3);
    const auto errors = run_ranks(3, [&](int r) {
      if (r == 0) std::this_thread::sleep_for(150ms);  // the readers see only the stale file first
      zero::cuda::file_bootstrap f{path, "job-new", r, 10s, 5ms};
      got[static_cast<std::size_t>(r)] = zero::cuda::exchange_id(f, r == 0 ? fresh : bootstrap_id{});
    });
    for (const auto& e : errors) CHECK_FALSE(e);
    for (const auto& g : got) CHECK(g == fresh);
  }

  TEST_CASE("file bootstrap: torn and foreign files are ignored") {
    scratch_directory dir;
    const auto path = dir.path / "nccl-id";
    { std::ofstream(path) << "not an id file"; }
    const bootstrap_id id = make_id(3);
    bootstrap_id got;
    const auto errors = run_ranks(2, [&](int r) {
      if (r == 0) {
        std::this_thread::sleep_for(50ms);
        zero::cuda::exchange_id(zero::cuda::file_bootstrap{path, "n", 0, 5s, 5ms}, id);
      } else {
        got = zero::cuda::exchange_id(zero::cuda::file_bootstrap{path, "n", 1, 5s, 5ms}, {});
      }
    });
    CHECK_FALSE(errors[0]);
    CHECK_FALSE(errors[1]);
    CHECK(got == id);
  }

  TEST_CASE("file bootstrap: an empty nonce is refused") {
    CHECK_THROWS_AS(zero::cuda::exchange_id(zero::cuda::file_bootstrap{"/tmp/x", "", 1, 1s, 5ms}, {}), zero::usage_error);
  }

  TEST_CASE("TCP bootstrap: 3 ranks on loopback") {
    const std::uint16_t port = free_port();
    const bootstrap_id id = make_id(9);
    std::vector<bootstrap_id> got(3);
    const auto errors = run_ranks(3, [&](int r) {
      if (r == 0) std::this_thread::sleep_for(100ms);  // peers connect before rank 0 listens: they retry
      zero::cuda::tcp_bootstrap t{"127.0.0.1", port, r, 3, 10s};
      got[static_cast<std::size_t>(r)] = zero::cuda::exchange_id(t, r == 0 ? id : bootstrap_id{});
    });
    for (const auto& e : errors) CHECK_FALSE(e);
    for (const auto& g : got) CHECK(g == id);
  }

  TEST_CASE("TCP bootstrap: by host name and a world of one without the network") {
    const std::uint16_t port = free_port();
    const bootstrap_id id = make_id(4);
    std::vector<bootstrap_id> got(2);
    const auto errors = run_ranks(2, [&](int r) {
      got[static_cast<std::size_t>(r)] =
          zero::cuda::exchange_id(zero::cuda::tcp_bootstrap{"localhost", port, r, 2, 10s}, r == 0 ? id : bootstrap_id{});
    });
    CHECK_FALSE(errors[0]);
    CHECK_FALSE(errors[1]);
    CHECK(got[1] == id);
    CHECK(zero::cuda::exchange_id(zero::cuda::tcp_bootstrap{"nowhere.invalid", 1, 0, 1, 1s}, id) == id);
  }

  TEST_CASE("TCP bootstrap: settings from torchrun's environment") {
    ::setenv("MASTER_ADDR", "10.1.2.3", 1);
    ::setenv("MASTER_PORT", "29500", 1);
    ::setenv("RANK", "3", 1);
    ::setenv("WORLD_SIZE", "8", 1);
    const auto t = zero::cuda::tcp_bootstrap_from_environment(2s);
    CHECK(t.address == "10.1.2.3");
    CHECK(t.port == 29500);
    CHECK(t.rank == 3);
    CHECK(t.world_size == 8);
    CHECK(t.timeout == 2s);
    ::setenv("RANK", "8", 1);
    CHECK_THROWS_WITH_AS(zero::cuda::tcp_bootstrap_from_environment(), doctest::Contains("RANK='8'"), zero::usage_error);
    ::setenv("MASTER_PORT", "http", 1);
    CHECK_THROWS_WITH_AS(zero::cuda::tcp_bootstrap_from_environment(), doctest::Contains("MASTER_PORT"), zero::usage_error);
    ::unsetenv("MASTER_ADDR");
    CHECK_THROWS_WITH_AS(zero::cuda::tcp_bootstrap_from_environment(), doctest::Contains("MASTER_ADDR is not set"),
                         zero::usage_error);
    ::unsetenv("MASTER_PORT");
    ::unsetenv("RANK");
    ::unsetenv("WORLD_SIZE");
  }
}

TEST_SUITE("reliability") {
  TEST_CASE("file bootstrap: the timeout names the path and the stale nonce") {
    scratch_directory dir;
    const auto path = dir.path / "nccl-id";
    const auto start = std::chrono::steady_clock::now();
    CHECK_THROWS_WITH_AS(zero::cuda::exchange_id(zero::cuda::file_bootstrap{path, "job-1", 2, 200ms, 5ms}, {}),
                         doctest::Contains(path.string().c_str()), zero::timeout_error);
    CHECK(std::chrono::steady_clock::now() - start < 5s);
    zero::cuda::exchange_id(zero::cuda::file_bootstrap{path, "job-0", 0, 1s, 5ms}, make_id(5));
    CHECK_THROWS_WITH_AS(zero::cuda::exchange_id(zero::cuda::file_bootstrap{path, "job-1", 1, 200ms, 5ms}, {}),
                         doctest::Contains("nonce 'job-0': stale"), zero::timeout_error);
  }

  TEST_CASE("TCP bootstrap: a peer without rank 0 times out naming the address") {
    const std::uint16_t port = free_port();
    const std::string endpoint = "127.0.0.1:" + std::to_string(port);
    CHECK_THROWS_WITH_AS(zero::cuda::exchange_id(zero::cuda::tcp_bootstrap{"127.0.0.1", port, 1, 2, 300ms}, {}),
                         doctest::Contains(endpoint.c_str()), zero::timeout_error);
  }

  TEST_CASE("TCP bootstrap: rank 0 names the ranks that never connect") {
    const std::uint16_t port = free_port();
    const auto errors = run_ranks(2, [&](int r) {
      zero::cuda::exchange_id(zero::cuda::tcp_bootstrap{"127.0.0.1", port, r, 4, r == 0 ? 1500ms : 5s},
                              r == 0 ? make_id(1) : bootstrap_id{});
    });
    CHECK_FALSE(errors[1]);  // rank 1 got its id
    REQUIRE(errors[0]);
    CHECK_THROWS_AS(std::rethrow_exception(errors[0]), zero::timeout_error);
    CHECK(message_of(errors[0]).find("rank(s) 2, 3 of 4") != std::string::npos);
  }

  TEST_CASE("TCP bootstrap: ranks that disagree on the world size both throw mismatch_error") {
    const std::uint16_t port = free_port();
    const auto errors = run_ranks(2, [&](int r) {
      zero::cuda::exchange_id(zero::cuda::tcp_bootstrap{"127.0.0.1", port, r, r == 0 ? 2 : 3, 5s},
                              r == 0 ? make_id(1) : bootstrap_id{});
    });
    REQUIRE(errors[0]);
    REQUIRE(errors[1]);
    CHECK_THROWS_AS(std::rethrow_exception(errors[0]), zero::mismatch_error);
    CHECK_THROWS_AS(std::rethrow_exception(errors[1]), zero::mismatch_error);
    CHECK(message_of(errors[0]).find("WORLD_SIZE 3") != std::string::npos);
  }
}
