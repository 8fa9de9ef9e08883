// Stored activation bytes per policy, measured to the byte: the checkpointer's own report equals
// what its memory resources saw, and the relationships ZeRO-R promises hold exactly (given the
// padding rule). Prints the table (run with `ctest -V -R bytes` or the executable directly).
// The contiguous arena allocates once, at construction; save, restore and release allocate
// nothing, alone or combined.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <new>
#include <numeric>
#include <string>

#include "fixture.hpp"

namespace {

// Heap allocations made by the current thread (every operator new of this executable).
thread_local std::size_t thread_allocations = 0;

using act::batches;
using act::counting_resource;
using act::model;

struct measurement {
  std::string policy;
  int ranks = 1;
  zero::checkpoint_memory peak;  // the checkpointer's report: each field's maximum
};

// Runs every batch through `c` (still bitwise right), checks that its report matches what its
// device-side and host resources saw, now and at the peak, and returns its peaks.
template <class C>
zero::checkpoint_memory run_and_measure(C& c, const counting_resource& device, const counting_resource& host) {
  for (const auto& d : batches()) REQUIRE(bitwise_equal(act::checkpointed_step(model(), d, c), act::reference_step(model(), d)));
  CHECK(device.outstanding == c.memory().device());
  CHECK(host.outstanding == c.memory().host);
  CHECK(device.peak == c.peak_memory().device());
  CHECK(host.peak == c.peak_memory().host);
  CHECK(c.peak_bytes_held() == c.peak_memory().total());
  return c.peak_memory();
}

// The same on `world` thread ranks; every rank must measure the same; returns rank 0's.
template <class Make>
zero::checkpoint_memory run_and_measure_on_ranks(int world, Make make) {
  zero::thread_group group(world);
  std::vector<zero::checkpoint_memory> peaks(static_cast<std::size_t>(world));
  group.run([&](zero::thread_communicator& comm) {
    counting_resource device, host;
    auto c = make(comm, device, host);
    peaks[static_cast<std::size_t>(comm.rank())] = run_and_measure(c, device, host);
  });
  for (const auto& p : peaks) CHECK(p == peaks.front());
  return peaks.front();
}

std::size_t sum(const std::vector<std::size_t>& v) { return std::accumulate(v.begin(), v.end(), std::size_t{0}); }

// What one rank stores of every layer input when partitioned over `world` ranks.
std::vector<std::size_t> slices(int world) {
  std::vector<std::size_t> s;
  for (std::size_t size : act::checkpoint_sizes()) s.push_back(zero::partition_slice_bytes(size, world));
  return s;
}

// The gather buffer: room for the largest checkpoint whose size is not a multiple of 8 x world.
std::size_t gather_bytes(int world) {
  std::size_t largest = 0;
  for (std::size_t size : act::checkpoint_sizes())
    if (zero::partition_slice_bytes(size, world) * static_cast<std::size_t>(world) != size)
      largest = std::max(largest, zero::partition_slice_bytes(size, world) * static_cast<std::size_t>(world));
  return largest;
}

void print(const std::vector<measurement>& rows, std::size_t plain_device) {
  std::printf("\nStored activation bytes per rank, at the peak (%d layers, batch %d; layer inputs %zu bytes in all)\n",
              model().layers(), static_cast<int>(act::batch), sum(act::checkpoint_sizes()));
  std::printf("%-52s %5s %14s %14s %10s %13s %9s\n", "policy", "ranks", "device stored", "device flight", "host",
              "device total", "vs plain");
  for (const auto& r : rows)
    std::printf("%-52s %5d %14zu %14zu %10zu %13zu %8.3fx\n", r.policy.c_str(), r.ranks, r.peak.stored, r.peak.in_flight,
                r.peak.host, r.peak.device(), static_cast<double>(r.peak.device()) / static_cast<double>(plain_device));
  std::fflush(stdout);
}

}  // namespace

// Count every heap allocation of the current thread, aligned ones included (memory resources
// allocate with 64-byte alignment). GCC cannot see that the replacements pair malloc with free.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t bytes) {
  ++thread_allocations;
  if (void* p = std::malloc(bytes == 0 ? 1 : bytes)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t bytes, std::align_val_t alignment) {
  ++thread_allocations;
  const auto a = static_cast<std::size_t>(alignment);
  if (void* p = std::aligned_alloc(a, (std::max<std::size_t>(bytes, 1) + a - 1) / a * a)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

TEST_SUITE("activation") {
  TEST_CASE("bytes: stored activation bytes per policy are measured to the byte and printed") {
    using comm_t = zero::thread_communicator;
    const auto inputs = act::checkpoint_sizes();
    const std::size_t total = sum(inputs), largest = act::largest_checkpoint();
    const std::size_t layers = inputs.size();
    const auto plan = act::layer_input_plan();
    std::vector<measurement> rows;

    {  // keep everything: what training without checkpointing keeps
      counting_resource device, host;
      zero::keep_everything_checkpointer<> c{zero::heap_storage(&device)};
      rows.push_back({"keep-everything (no checkpointing)", 1, run_and_measure(c, device, host)});
      CHECK(rows.back().peak == zero::checkpoint_memory{sum(act::checkpoint_sizes(false)), 0, 0});
    }
    {  // plain checkpointing stores only the layer inputs
      counting_resource device, host;
      zero::plain_checkpointer<> c{zero::heap_storage(&device)};
      rows.push_back({"plain", 1, run_and_measure(c, device, host)});
      CHECK(rows.back().peak == zero::checkpoint_memory{total, 0, 0});
      CHECK(total < sum(act::checkpoint_sizes(false)));
    }
    {  // the contiguous arena is the plan, allocated once
      counting_resource device, host;
      zero::contiguous_checkpointer c{zero::contiguous_arena(plan, &device)};
      rows.push_back({"contiguous arena", 1, run_and_measure(c, device, host)});
      CHECK(rows.back().peak == zero::checkpoint_memory{plan.arena_bytes(), 0, 0});
      CHECK(c.storage().bytes_reserved() == plan.arena_bytes());
      CHECK(device.calls == 1);
      CHECK(device.allocated == plan.arena_bytes());
    }
    {  // offloading leaves only the two staging buffers device-side
      counting_resource device, host;
      zero::offloaded_options o;
      o.device = &device;
      zero::offloaded_checkpointer<> c{zero::heap_storage(&host), o};
      rows.push_back({"offloaded", 1, run_and_measure(c, device, host)});
      CHECK(rows.back().peak == zero::checkpoint_memory{0, 2 * largest, total});
    }
    {
      counting_resource device, host;
      zero::offloaded_options o;
      o.device = &device;
      o.max_checkpoint_bytes = largest;
      zero::offloaded_checkpointer<zero::contiguous_arena> c{zero::contiguous_arena(plan, &host), o};
      rows.push_back({"offloaded + contiguous host arena", 1, run_and_measure(c, device, host)});
      CHECK(rows.back().peak == zero::checkpoint_memory{0, 2 * largest, plan.arena_bytes()});
      CHECK(device.calls == 2);
      CHECK(host.calls == 1);
    }
    for (int world : {1, 2, 3, 4}) {  // partitioning divides what each rank stores by M, up to padding
      const auto peak = run_and_measure_on_ranks(world, [](comm_t& comm, counting_resource& device, counting_resource&) {
        zero::partitioned_options o;
        o.device = &device;
        return zero::partitioned_checkpointer<comm_t>(comm, zero::plain_checkpointer<>(zero::heap_storage(&device)), o);
      });
      rows.push_back({"partitioned", world, peak});
      const auto stored = sum(slices(world)), m = static_cast<std::size_t>(world);
      CHECK(peak == zero::checkpoint_memory{stored, gather_bytes(world), 0});
      CHECK(stored * m >= total);                   // every byte is kept somewhere
      CHECK(stored * m < total + 8 * m * layers);   // padding: under 8 bytes per rank and checkpoint
    }
    for (int world : {2, 3}) {
      const auto peak = run_and_measure_on_ranks(world, [&](comm_t& comm, counting_resource& device, counting_resource&) {
        zero::partitioned_options o;
        o.device = &device;
        o.max_checkpoint_bytes = largest;
        const auto slice_plan = zero::partitioned_plan(plan, comm.world_size());
        return zero::partitioned_checkpointer<comm_t, zero::contiguous_checkpointer>(
            comm, zero::contiguous_checkpointer(zero::contiguous_arena(slice_plan, &device)), o);
      });
      rows.push_back({"partitioned + contiguous arena", world, peak});
      // declared up front, the gather buffer has room for the largest checkpoint the plan allows
      const std::size_t gather = zero::partition_slice_bytes(largest, world) * static_cast<std::size_t>(world);
      CHECK(peak == zero::checkpoint_memory{zero::partitioned_plan(plan, world).arena_bytes(), gather, 0});
    }
    for (int world : {2, 3}) {  // P_a+cpu: slices in host memory, device-side only what is in flight
      const auto peak = run_and_measure_on_ranks(world, [](comm_t& comm, counting_resource& device, counting_resource& host) {
        zero::partitioned_options p;
        p.device = &device;
        zero::offloaded_options o;
        o.device = &device;
        return zero::partitioned_checkpointer<comm_t, zero::offloaded_checkpointer<>>(
            comm, zero::offloaded_checkpointer<>(zero::heap_storage(&host), o), p);
      });
      rows.push_back({"partitioned + offloaded", world, peak});
      const auto s = slices(world);
      CHECK(peak == zero::checkpoint_memory{0, 2 * *std::max_element(s.begin(), s.end()) + gather_bytes(world), sum(s)});
    }
    {
      constexpr int world = 3;
      const auto peak = run_and_measure_on_ranks(world, [&](comm_t& comm, counting_resource& device, counting_resource& host) {
        using offloaded = zero::offloaded_checkpointer<zero::contiguous_arena>;
        const auto slice_plan = zero::partitioned_plan(plan, comm.world_size());
        zero::partitioned_options p;
        p.device = &device;
        p.max_checkpoint_bytes = largest;
        zero::offloaded_options o;
        o.device = &device;
        o.max_checkpoint_bytes = slice_plan.largest();
        return zero::partitioned_checkpointer<comm_t, offloaded>(comm, offloaded(zero::contiguous_arena(slice_plan, &host), o), p);
      });
      rows.push_back({"partitioned + offloaded + contiguous host arena", world, peak});
      const auto slice_plan = zero::partitioned_plan(plan, world);
      const std::size_t gather = zero::partition_slice_bytes(largest, world) * static_cast<std::size_t>(world);
      CHECK(peak == zero::checkpoint_memory{0, 2 * slice_plan.largest() + gather, slice_plan.arena_bytes()});
    }
    print(rows, total);
  }

  TEST_CASE("bytes: the contiguous arena allocates once and save restore and release allocate nothing") {
    const auto sizes = act::checkpoint_sizes();
    const auto plan = act::layer_input_plan();
    // the framework's tensors, made before counting
    std::vector<std::vector<std::byte>> tensors;
    for (std::size_t l = 0; l < sizes.size(); ++l) tensors.emplace_back(sizes[l], static_cast<std::byte>(l + 1));
    // three steps of save, restore, release; no assertion inside (doctest may allocate)
    const auto check_no_allocation = [&](auto& c, const counting_resource& device, const counting_resource& host) {
      std::vector<std::vector<std::byte>> outs;
      for (std::size_t s : sizes) outs.emplace_back(s);
      std::vector<zero::generator_state> rngs(sizes.size());
      const std::size_t heap = thread_allocations, device_calls = device.calls, host_calls = host.calls;
      for (std::uint64_t step = 0; step < 3; ++step) {
        for (std::size_t l = 0; l < sizes.size(); ++l) c.save(l, {tensors[l].data(), sizes[l]}, {step, l});
        for (std::size_t l = sizes.size(); l-- > 0;) {
          rngs[l] = c.restore(l, {outs[l].data(), sizes[l]});
          c.release(l);
        }
      }
      const std::size_t allocations = thread_allocations - heap;
      CHECK(allocations == 0);
      CHECK(device.calls == device_calls);
      CHECK(host.calls == host_calls);
      CHECK(outs == tensors);
      for (std::size_t l = 0; l < sizes.size(); ++l) CHECK(rngs[l] == zero::generator_state{2, l});
    };

    SUBCASE("alone") {
      counting_resource device, host;
      zero::contiguous_checkpointer c{zero::contiguous_arena(plan, &device)};
      CHECK(device.calls == 1);
      check_no_allocation(c, device, host);
    }
    SUBCASE("offloaded into a host arena") {
      counting_resource device, host;
      zero::offloaded_options o;
      o.device = &device;
      o.max_checkpoint_bytes = plan.largest();
      zero::offloaded_checkpointer<zero::contiguous_arena> c{zero::contiguous_arena(plan, &host), o};
      CHECK(host.calls == 1);
      CHECK(device.calls == 2);  // the two staging buffers
      check_no_allocation(c, device, host);
    }
    SUBCASE("partitioned over 3 thread ranks into an arena and offloaded into a host arena") {
      zero::thread_group group(3);
      group.run([&](zero::thread_communicator& comm) {
        counting_resource device, host;
        const auto slice_plan = zero::partitioned_plan(plan, 3);
        zero::contiguous_checkpointer inner{zero::contiguous_arena(slice_plan, &device)};
        zero::partitioned_options p;
        p.device = &device;
        p.max_checkpoint_bytes = plan.largest();
        zero::partitioned_checkpointer<zero::thread_communicator, zero::contiguous_checkpointer> c(comm, std::move(inner), p);
        check_no_allocation(c, device, host);

        {  // as docs/activation.md shows it
          using Comm = zero::thread_communicator;
          auto& tp_group = comm;
          auto &device_memory = device, &host_memory = host;
          // P_a+cpu over a tensor-parallel group, slices in a host arena, nothing allocated after construction
          using offloaded = zero::offloaded_checkpointer<zero::contiguous_arena>;
          const auto slices = zero::partitioned_plan(plan, tp_group.world_size());
          zero::offloaded_options o{.max_checkpoint_bytes = slices.largest(), .device = &device_memory};
          zero::partitioned_checkpointer<Comm, offloaded> c(tp_group, offloaded(zero::contiguous_arena(slices, &host_memory), o),
                                                            {.max_checkpoint_bytes = plan.largest(), .device = &device_memory});
          check_no_allocation(c, device, host);
        }
      });
    }
  }
}
