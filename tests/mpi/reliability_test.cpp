// Faults across processes: a process that exits, a rank that never arrives, ranks calling
// different collectives (the debug mode), ranks registering different layouts. Each gives every
// surviving rank a clear exception within the deadline, never a hang. Run with
// OMPI_MCA_orte_allowed_exit_without_sync=1, so that Open MPI lets a process exit without
// MPI_Finalize and leaves the others to notice through their deadlines.
#include <doctest/doctest.h>
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory_resource>
#include <string>
#include <thread>
#include <vector>

#include "test_main.hpp"
#include "zero/mpi/communicator.hpp"
#include "zero/optimizer.hpp"
#include "zero/thread_communicator.hpp"

namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

struct outcome {
  std::string kind;  // "", "usage", "mismatch", "timeout", "communicator", "other"
  std::string message;
  double seconds = 0;
};

template <class F>
outcome attempt(F&& fn) {
  outcome o;
  const auto start = clock_type::now();
  try {
    fn();
  } catch (const zero::usage_error& e) {
    o = {"usage", e.what()};
  } catch (const zero::mismatch_error& e) {
    o = {"mismatch", e.what()};
  } catch (const zero::timeout_error& e) {
    o = {"timeout", e.what()};
  } catch (const zero::communicator_error& e) {
    o = {"communicator", e.what()};
  } catch (const std::exception& e) {
    o = {"other", e.what()};
  }
  o.seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  return o;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

//! Whether every rank of MPI_COMM_WORLD holds the same text (all ranks alive and here).
bool same_on_every_rank(const std::string& text) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : text) h = (h ^ c) * 0x100000001b3ull;
  std::vector<std::uint64_t> all(static_cast<std::size_t>(world_size()));
  MPI_Allgather(&h, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD);
  for (auto x : all)
    if (x != all[0]) return false;
  return true;
}

//! Ends this process the way a crashed or killed rank would look to its peers: no MPI_Finalize,
//! no destructors. (Exit status 0: mpiexec would otherwise end the whole job at once.)
[[noreturn]] void leave_now() {
  std::fflush(nullptr);
  std::cout.flush();
  std::_Exit(0);
}

constexpr auto deadline = 2000ms;

zero::mpi_communicator_options with_deadline(bool checked = false) { return {deadline, checked}; }

//! What the survivors of a timeout must see.
void check_timeout(const outcome& o, const std::string& collective, std::uint64_t sequence) {
  MESSAGE(o.kind << " after " << o.seconds << " s: " << o.message);
  CHECK(o.kind == "timeout");
  CHECK(contains(o.message, "mpi_communicator " + collective + " #" + std::to_string(sequence) + " timed out after "));
  CHECK(contains(o.message, " ms (deadline 2000 ms) on rank " + std::to_string(world_rank())));
  CHECK(o.seconds >= 1.9);
  CHECK(o.seconds < 10.0);  // the deadline plus scheduling on an oversubscribed machine
}

//! Runs `body(comm)` on every rank with the debug mode on, where ranks disagree; checks every
//! rank threw the same mismatch_error and returns it.
template <class F>
std::string debug_mismatch(F&& body) {
  zero::mpi_communicator comm(MPI_COMM_WORLD, with_deadline(true));
  comm.barrier();  // call #1 agrees
  const auto o = attempt([&] { body(comm); });
  MESSAGE(o.kind << ": " << o.message);
  CHECK(o.kind == "mismatch");
  CHECK(same_on_every_rank(o.message));
  CHECK(comm.broken());
  CHECK_THROWS_AS(comm.barrier(), zero::communicator_error);  // out of step: unusable
  return o.message;
}

//! new_delete_resource, counting the bytes it has handed out and not got back.
struct counting_resource final : std::pmr::memory_resource {
  std::size_t live = 0;
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    void* p = std::pmr::new_delete_resource()->allocate(bytes, alignment);
    live += bytes;
    return p;
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override {
    live -= bytes;
    std::pmr::new_delete_resource()->deallocate(p, bytes, alignment);
  }
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override { return this == &other; }
};

struct model {
  std::vector<float> a = std::vector<float>(10, 1.0f);
  std::vector<float> b = std::vector<float>(7, 2.0f);
  std::vector<zero::parameter<float>> params() { return {{"a", {a.data(), a.size()}}, {"b", {b.data(), b.size()}}}; }
};
using mpi_stage2 = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::contiguous_partitioner, zero::mpi_communicator>;

}  // namespace

TEST_SUITE("reliability") {
  TEST_CASE("mpi: a process that exits before a collective makes the others throw a timeout within the deadline") {
    const int last = world_size() - 1;
    zero::mpi_communicator comm(MPI_COMM_WORLD, with_deadline());
    std::vector<float> x(1000, 1.0f);
    comm.all_reduce(x.data(), x.data(), x.size());  // #1: everyone is here
    mpi_test::skip_finalize = true;  // a peer will be gone
    if (comm.rank() == last) leave_now();
    const auto o = attempt([&] { comm.all_reduce(x.data(), x.data(), x.size()); });  // #2
    check_timeout(o, "all_reduce", 2);
    CHECK(comm.broken());
    const auto later = attempt([&] { comm.barrier(); });
    CHECK(later.kind == "communicator");
    CHECK(contains(later.message, "unusable after an earlier failure"));
    CHECK(contains(later.message, "all_reduce #2 timed out"));
  }

  TEST_CASE("mpi: a rank that never makes a call times out the others and abandons their pending requests") {
    zero::mpi_communicator comm(MPI_COMM_WORLD, with_deadline());
    comm.barrier();  // #1
    mpi_test::skip_finalize = true;  // collectives will be pending
    if (comm.rank() != 1) {
      auto pending = comm.ibarrier();  // #2, never completes without rank 1
      // (an all-reduce needs every rank; a broadcast's root may finish once MPI buffered its data)
      std::vector<double> data(16, 3.0);
      const auto o = attempt([&] { comm.all_reduce(data.data(), data.data(), data.size()); });  // #3
      check_timeout(o, "all_reduce", 3);
      const auto abandoned = attempt([&] { pending.wait(); });
      CHECK(abandoned.kind == "communicator");
      CHECK(contains(abandoned.message, "barrier #2 on rank " + std::to_string(comm.rank()) + " abandoned"));
      CHECK(contains(abandoned.message, "all_reduce #3 timed out"));
      CHECK(attempt([&] { comm.progress(); }).kind == "communicator");
    } else {
      std::this_thread::sleep_for(deadline + 500ms);  // never calls #2 and #3
    }
    MPI_Barrier(MPI_COMM_WORLD);  // the caller's communicator is untouched by the failure
  }

  TEST_CASE("mpi: an engine step with a process gone throws a timeout and leaves the engine unusable") {
    // after the timeout: every later call of the engine is refused naming the failure, and the
    // buffers the abandoned collectives were given stay allocated after the engine is gone (MPI
    // may still write them until MPI_Finalize); the rest of its memory goes back to the resource
    const int last = world_size() - 1;
    zero::mpi_communicator comm(MPI_COMM_WORLD, with_deadline());
    counting_resource resource;
    model m;
    zero::optimizer_options<zero::adamw> options;
    options.layout.bucket_elements = 4;
    options.memory = &resource;
    std::size_t kept_bytes = 0;
    {
      mpi_stage2 opt(comm, m.params(), options);
      const auto report = opt.memory();
      using k = zero::memory_kind;
      kept_bytes = report.of(k::gradients) + report.of(k::gradient_slots) + report.of(k::parameter_shard) + report.of(k::buckets);
      CHECK(resource.live == report.total());
      CHECK(kept_bytes < report.total());  // master weights and optimizer state are not kept
      std::vector<float> ga(10, 0.5f), gb(7, 0.25f);
      opt.gradient_ready(0, {ga.data(), ga.size()});
      opt.gradient_ready(1, {gb.data(), gb.size()});
      opt.step();  // one good step
      CHECK_FALSE(comm.abandoned_collectives());
      mpi_test::skip_finalize = true;
      if (comm.rank() == last) leave_now();
      const auto o = attempt([&] {
        opt.gradient_ready(0, {ga.data(), ga.size()});
        opt.gradient_ready(1, {gb.data(), gb.size()});
        opt.step();
      });
      CHECK(o.kind == "timeout");
      CHECK(contains(o.message, "reduce #"));  // the contiguous layout reduces each unit to its owner
      CHECK(o.seconds < 10.0);
      CHECK(comm.abandoned_collectives());
      for (const auto& later : {attempt([&] { opt.step(); }), attempt([&] { opt.gradient_ready(0, {ga.data(), ga.size()}); })}) {
        CHECK(later.kind == "communicator");
        CHECK(contains(later.message, "optimizer on rank " + std::to_string(comm.rank()) + " is unusable after an earlier failure"));
        CHECK(contains(later.message, "timed out after"));  // the failure itself, named
      }
    }
    CHECK(resource.live == kept_bytes);  // kept for MPI's late writes; never returned
  }

  TEST_CASE("mpi: a rank that never constructs the communicator makes the others time out at construction") {
    const int last = world_size() - 1;
    mpi_test::skip_finalize = true;  // the others' MPI_Comm_idup will be pending
    if (world_rank() == last) return;  // no collective at all on this rank
    const auto o = attempt([&] { zero::mpi_communicator comm(MPI_COMM_WORLD, with_deadline()); });
    CHECK(o.kind == "timeout");
    CHECK(contains(o.message, "construction (MPI_Comm_idup) timed out after"));
    CHECK(o.seconds < 10.0);
  }

  TEST_CASE("mpi: the debug mode names a rank that calls a different collective") {
    const int last = world_size() - 1;
    const std::string message = debug_mismatch([&](zero::mpi_communicator& c) {
      std::vector<float> a(10 * static_cast<std::size_t>(c.world_size()), 1.0f), b(a.size());
      if (c.rank() == last) c.reduce_scatter(a.data(), b.data(), 10);
      else c.all_reduce(a.data(), b.data(), 10);
    });
    CHECK(contains(message, "collective mismatch at call #2 of an MPI communicator of " + std::to_string(world_size()) + " ranks"));
    CHECK(contains(message, "most ranks call all_reduce<fp32>(count 10, sum)"));
    CHECK(contains(message, "rank " + std::to_string(last) + " calls reduce_scatter<fp32>(count 10, sum)"));
  }

  TEST_CASE("mpi: the debug mode names a rank that calls with a different count") {
    const std::string message = debug_mismatch([&](zero::mpi_communicator& c) {
      std::vector<std::uint64_t> a(64, 1), b(64 * static_cast<std::size_t>(c.world_size()));
      c.all_gather(a.data(), b.data(), c.rank() == 1 ? 33 : 32);
    });
    CHECK(contains(message, "most ranks call all_gather<u64>(count 32)"));
    CHECK(contains(message, "rank 1 calls all_gather<u64>(count 33)"));
  }

  TEST_CASE("mpi: the debug mode names a different element type / root or operation") {
    const int last = world_size() - 1;
    std::string message = debug_mismatch([&](zero::mpi_communicator& c) {
      std::vector<float> f(8, 1.0f);
      std::vector<zero::bf16> h(8);
      if (c.rank() == last) c.all_reduce(h.data(), h.data(), 8);
      else c.all_reduce(f.data(), f.data(), 8);
    });
    CHECK(contains(message, "rank " + std::to_string(last) + " calls all_reduce<bf16>(count 8, sum)"));
    message = debug_mismatch([&](zero::mpi_communicator& c) {
      std::vector<double> d(8, 1.0);
      c.broadcast(d.data(), 8, c.rank() == last ? 1 : 0);
    });
    CHECK(contains(message, "rank " + std::to_string(last) + " calls broadcast<fp64>(count 8, root 1)"));
    message = debug_mismatch([&](zero::mpi_communicator& c) {
      std::vector<float> f(8 * static_cast<std::size_t>(c.world_size()), 1.0f), g(8);
      c.reduce_scatter(f.data(), g.data(), 8, c.rank() == last ? zero::reduce_op::max : zero::reduce_op::sum);
    });
    CHECK(contains(message, "rank " + std::to_string(last) + " calls reduce_scatter<fp32>(count 8, max)"));
  }

  TEST_CASE("mpi: the debug mode checks a non-blocking collective at its call") {
    const std::string message = debug_mismatch([&](zero::mpi_communicator& c) {
      std::vector<float> a(4 * static_cast<std::size_t>(c.world_size()), 1.0f), b(a.size());
      auto q = c.rank() == 0 ? c.iall_gather(a.data(), b.data(), 4) : c.ireduce_scatter(a.data(), b.data(), 4);
      q.wait();
    });
    if (world_size() == 2) CHECK(contains(message, "most ranks call all_gather<fp32>(count 4); rank 1 calls reduce_scatter<fp32>(count 4, sum)"));
    else CHECK(contains(message, "; rank 0 calls all_gather<fp32>(count 4)"));
  }

  TEST_CASE("mpi: the thread communicator always checks and words a divergence as the MPI debug mode does") {
    const int n = world_size(), last = n - 1;
    auto body = [&](auto& c) {
      std::vector<float> a(10 * static_cast<std::size_t>(n), 1.0f), b(a.size());
      c.barrier();
      if (c.rank() == last) c.reduce_scatter(a.data(), b.data(), 10);
      else c.all_reduce(a.data(), b.data(), 10);
    };
    // on thread ranks (no option: always on, it keeps the shared buffers safe)
    zero::thread_group group(n, {deadline});
    std::string thread_message;
    try {
      group.run([&](zero::thread_communicator& c) { body(c); });
    } catch (const zero::mismatch_error& e) {
      thread_message = e.what();
    }
    const std::string mpi_message = debug_mismatch([&](zero::mpi_communicator& c) { body(c); });
    auto after_colon = [](const std::string& m) { return m.substr(m.find(": most ranks")); };
    REQUIRE(contains(thread_message, ": most ranks"));
    CHECK(after_colon(thread_message) == after_colon(mpi_message));
  }

  TEST_CASE("mpi: ranks that construct the communicator with different options are named") {
    const int last = world_size() - 1;
    const auto o = attempt([&] { zero::mpi_communicator comm(MPI_COMM_WORLD, with_deadline(world_rank() == last)); });
    CHECK(o.kind == "mismatch");
    CHECK(contains(o.message, "rank(s) " + std::to_string(last) + " chose check_collectives/reduction different"));
    CHECK(same_on_every_rank(o.message));
  }

  TEST_CASE("mpi: a rank registering a different layout makes every rank throw the same error naming it") {
    const int last = world_size() - 1;
    zero::mpi_communicator comm(MPI_COMM_WORLD, with_deadline());
    model m;
    if (comm.rank() == last) m.b.resize(8, 2.0f);
    const auto o = attempt([&] { mpi_stage2 opt(comm, m.params()); });
    CHECK(o.kind == "mismatch");
    CHECK(contains(o.message, "rank(s) " + std::to_string(last) + " registered a parameter layout"));
    CHECK(same_on_every_rank(o.message));
    CHECK_FALSE(comm.broken());  // the agreement itself went well: the communicator is usable
    comm.barrier();
  }

  TEST_CASE("mpi: a parameter refused on one rank stops every rank / naming it") {
    zero::mpi_communicator comm(MPI_COMM_WORLD, with_deadline());
    model m;
    auto params = m.params();
    if (comm.rank() == 1) params[1].values.data = nullptr;
    const auto o = attempt([&] { mpi_stage2 opt(comm, params); });
    CHECK(o.kind == "usage");
    if (comm.rank() == 1) CHECK(contains(o.message, "'b' (#1) on rank 1 has a null values pointer"));
    else CHECK(contains(o.message, "rank(s) 1 refused their parameters"));
  }
}
