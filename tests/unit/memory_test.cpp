// Memory accounted to the byte: the engine's report equals the closed-form expectation and the
// bytes it took from the memory resource; reporting gradients and step() allocate nothing.
#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#include "zero/zero.hpp"

namespace {

// Heap allocations made by the current thread (counts every operator new in this binary).
thread_local std::size_t thread_allocations = 0;

// A memory resource that counts what passes through it.
class counting_resource : public std::pmr::memory_resource {
 public:
  std::size_t allocated = 0, outstanding = 0, calls = 0;

 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    allocated += bytes;
    outstanding += bytes;
    ++calls;
    return std::pmr::new_delete_resource()->allocate(bytes, alignment);
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override {
    outstanding -= bytes;
    std::pmr::new_delete_resource()->deallocate(p, bytes, alignment);
  }
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override { return this == &other; }
};

const std::vector<std::size_t> sizes = {1, 3, 17, 1, 64, 5, 129, 2, 31, 7, 250, 1};  // 511 elements

template <zero::stage S, class P, class Partitioner = zero::contiguous_partitioner>
void check_accounting(int world, const zero::layout_options& layout) {
  using O = zero::optimizer<S, P, zero::adamw, Partitioner>;
  using T = typename P::param_type;
  using G = typename P::grad_type;
  zero::thread_group group(world);
  std::vector<counting_resource> resources(static_cast<std::size_t>(world));
  group.run([&](zero::thread_communicator& comm) {
    auto& resource = resources[static_cast<std::size_t>(comm.rank())];
    std::vector<std::vector<T>> storage;
    std::vector<std::vector<G>> grads;
    std::vector<zero::parameter<T>> params;
    for (std::size_t s : sizes) {
      storage.emplace_back(s, T(0.5f));
      grads.emplace_back(s, G(0.25f));
    }
    for (auto& s : storage) params.push_back({"", {s.data(), s.size()}});
    typename O::options_type options;
    options.layout = layout;
    options.memory = &resource;
    {
      O opt(comm, params, options);
      const auto report = opt.memory();
      const auto expected = zero::expected_memory<P, Partitioner>(511, world, S, 2, layout, 250);
      for (std::size_t k = 0; k < zero::memory_kinds; ++k) {
        CAPTURE(zero::to_string(static_cast<zero::memory_kind>(k)));
        CHECK(report.bytes[k] == expected.bytes[k]);
      }
      CHECK(report.framework_gradients == expected.framework_gradients);
      CHECK(report == expected);
      CHECK(resource.allocated == report.total());

      // every persistent buffer exists already: reporting gradients and stepping allocate nothing
      // (but in the step that learns the layout order, which lays the buffers out anew)
      const std::size_t calls_before = resource.calls;
      const bool learning = layout.order == zero::gradient_order::learned;
      for (int step = 0; step < 3; ++step) {
        const std::size_t heap_before = thread_allocations;
        for (std::size_t p = sizes.size(); p-- > 0;) {
          if (layout.gradient_slots) {
            auto slot = opt.grad_slot(p);
            std::copy(grads[p].begin(), grads[p].end(), slot.data);
            opt.gradient_ready(p);
          } else {
            opt.gradient_ready(p, {grads[p].data(), grads[p].size()});
          }
        }
        opt.step();
        if (!learning || step > 0) CHECK(thread_allocations == heap_before);
      }
      CHECK(resource.calls == calls_before);
      CHECK(opt.memory() == report);
    }
    CHECK(resource.outstanding == 0);
  });
}

}  // namespace

// The replaced global allocation functions pair malloc with free; GCC cannot see that they are
// replacements of each other and warns that free() meets operator new's pointer.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t bytes) {
  ++thread_allocations;
  if (void* p = std::malloc(bytes == 0 ? 1 : bytes)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t bytes, const std::nothrow_t&) noexcept {  // std::stable_sort's buffers, for one
  ++thread_allocations;
  return std::malloc(bytes == 0 ? 1 : bytes);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }

TEST_SUITE("unit") {
  TEST_CASE("memory: the engine's report equals expected_memory and the resource's bytes / stages 0-2") {
    for (int world : {1, 2, 3, 5, 8}) {
      for (std::size_t bucket : {std::size_t{37}, std::size_t{1} << 20}) {
        for (bool slots : {false, true}) {
          CAPTURE(world);
          CAPTURE(bucket);
          CAPTURE(slots);
          const zero::layout_options layout{8, bucket, slots};
          check_accounting<zero::stage0, zero::fp32_precision>(world, layout);
          check_accounting<zero::stage1, zero::fp32_precision>(world, layout);
          check_accounting<zero::stage2, zero::fp32_precision>(world, layout);
          check_accounting<zero::stage0, zero::bf16_mixed>(world, layout);
          check_accounting<zero::stage1, zero::bf16_mixed>(world, layout);
          check_accounting<zero::stage2, zero::bf16_mixed>(world, layout);
          check_accounting<zero::stage2, zero::bf16_mixed_bf16_comm>(world, layout);
          check_accounting<zero::stage0, zero::bf16_mixed, zero::bucketed_partitioner>(world, layout);
          check_accounting<zero::stage1, zero::bf16_mixed, zero::bucketed_partitioner>(world, layout);
          check_accounting<zero::stage2, zero::bf16_mixed, zero::bucketed_partitioner>(world, layout);
          check_accounting<zero::stage2, zero::fp32_precision, zero::bucketed_partitioner>(world, layout);
          check_accounting<zero::stage2, zero::bf16_pure>(world, layout);
          check_accounting<zero::stage0, zero::bf16_pure>(world, layout);
          check_accounting<zero::stage2, zero::bf16_mixed_bf16_accum>(world, layout);
          zero::layout_options deferred = layout;
          deferred.defer_reduction = true;
          check_accounting<zero::stage2, zero::bf16_mixed>(world, deferred);
          zero::layout_options held = layout;  // (one rank: every gradient held until the step)
          held.read_gradients_in_update = true;
          check_accounting<zero::stage2, zero::bf16_mixed>(world, held);
          check_accounting<zero::stage2, zero::fp32_precision, zero::bucketed_partitioner>(world, held);
          zero::layout_options learned = layout;
          learned.order = zero::gradient_order::learned;
          check_accounting<zero::stage2, zero::bf16_mixed>(world, learned);
          check_accounting<zero::stage1, zero::bf16_mixed, zero::bucketed_partitioner>(world, learned);
          if (!slots) {
            zero::layout_options copying = layout;
            copying.copy_on_report = true;
            check_accounting<zero::stage2, zero::bf16_mixed>(world, copying);
            check_accounting<zero::stage2, zero::fp32_precision, zero::bucketed_partitioner>(world, copying);
          }
        }
      }
    }
  }

  TEST_CASE("memory: state slots of 1 MiB or more lie a page and a half apart and update as slots back to back do") {
    // 700,001 elements: one rank updates them all and each of 2 ranks 350,008 (slots padded
    // apart), each of 4 ranks 175,004 (back to back). Every rank reports the same bf16 gradients, whose sums over 2 and
    // 4 ranks and averages are exact: every world must give the same bits.
    const std::vector<std::size_t> sizes{400'000, 300'001};
    using O = zero::optimizer<zero::stage2, zero::bf16_mixed, zero::adamw>;
    auto train = [&](int world) {
      std::vector<float> values;
      zero::thread_group group(world);
      group.run([&](zero::thread_communicator& comm) {
        std::vector<std::vector<zero::bf16>> w(sizes.size()), g(sizes.size());
        std::vector<zero::parameter<zero::bf16>> params;
        for (std::size_t t = 0; t < sizes.size(); ++t) {
          for (std::size_t i = 0; i < sizes[t]; ++i) {
            w[t].push_back(zero::bf16(static_cast<float>(i % 97) * 0x1.0p-7f - 0.375f));
            g[t].push_back(zero::bf16(static_cast<float>(i % 31) * 0x1.0p-9f - 0.03125f));
          }
          params.push_back({"", {w[t].data(), w[t].size()}});
        }
        typename O::options_type options;
        options.threads = 1;
        O opt(comm, params, options);
        const std::size_t updated = opt.values().size(), stride = zero::state_stride(updated, 2);
        CHECK(opt.memory() == zero::expected_memory<zero::bf16_mixed>(700'001, world, zero::stage2, 2, {}, 400'000));
        CHECK(opt.memory().of(zero::memory_kind::optimizer_state) == 2 * stride * sizeof(float));
        CHECK(static_cast<std::size_t>(opt.state(1).data() - opt.state(0).data()) == stride);
        if (updated * sizeof(float) >= (std::size_t{1} << 20)) {
          CHECK(stride * sizeof(float) % 4096 == 2048);
        } else {
          CHECK(stride == updated);
        }
        for (int step = 0; step < 3; ++step) {
          for (std::size_t t = sizes.size(); t-- > 0;) opt.gradient_ready(t, {g[t].data(), g[t].size()});
          opt.step();
        }
        if (comm.rank() == 0)
          for (const auto& t : w)
            for (zero::bf16 x : t) values.push_back(static_cast<float>(x));
      });
      return values;
    };
    const auto padded = train(2), back_to_back = train(4);
    REQUIRE(padded.size() == 700'001u);
    CHECK(padded == back_to_back);
    CHECK(train(1) == padded);  // one rank: padded, and the update writes the parameters itself
  }

  TEST_CASE("memory: stage 2 keeps (4 + 8 + 4 + 2) / N bytes per parameter for bf16 AdamW / as ZeRO's model says") {
    // Per rank, for psi parameters: stage 0 keeps fp32 master (4), Adam m and v (8), fp32
    // gradients (4); stage 1 divides master and state by N; stage 2 also the gradients, and adds
    // the bf16 shard the all-gather sends (2) where there is more than one rank. Buckets are
    // constant: they do not grow with psi. The state slots are padded apart (zero::state_stride)
    // by less than 1536 elements each.
    const std::size_t psi = 1'000'000'000;
    const zero::layout_options layout{16, 1u << 24, false};
    for (int n : {1, 8, 64}) {
      CAPTURE(n);
      const std::size_t un = static_cast<std::size_t>(n);
      const auto s0 = zero::expected_memory<zero::bf16_mixed>(psi, n, zero::stage0, 2, layout);
      const auto s1 = zero::expected_memory<zero::bf16_mixed>(psi, n, zero::stage1, 2, layout);
      const auto s2 = zero::expected_memory<zero::bf16_mixed>(psi, n, zero::stage2, 2, layout);
      const std::size_t padded = (psi + 16 * un - 1) / (16 * un) * 16 * un;
      CHECK(s0.of(zero::memory_kind::master_weights) == 4 * psi);
      const std::size_t pad0 = zero::state_stride(psi, 2) - psi, shard = padded / un;
      const std::size_t pad = zero::state_stride(shard, 2) - shard;
      CHECK(pad0 < 1536);
      CHECK(pad < 1536);
      CHECK(s0.of(zero::memory_kind::optimizer_state) == 8 * (psi + pad0));
      CHECK(s0.of(zero::memory_kind::gradients) == 4 * padded);
      CHECK(s1.of(zero::memory_kind::master_weights) == 4 * padded / un);
      CHECK(s1.of(zero::memory_kind::optimizer_state) == 8 * (shard + pad));
      CHECK(s1.of(zero::memory_kind::gradients) == 4 * padded);
      CHECK(s2.total() - s2.of(zero::memory_kind::buckets) == (n == 1 ? 16 : 18) * shard + 8 * pad);
      CHECK(s2.of(zero::memory_kind::buckets) <= std::size_t{1 << 24} * 4 + 16 * 4 * un);
    }
  }
}
