// The lifecycle every checkpointer shares (save -> restore -> release), partitioning's padding,
// and the errors: exceeding a plan, restoring an id never saved, restoring twice.
#include <doctest/doctest.h>

#include <numeric>
#include <string>
#include <vector>

#include "zero/zero.hpp"

namespace {

using bytes = std::vector<std::byte>;

bytes pattern(std::size_t n, unsigned seed) {
  bytes b(n);
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::byte>((i * 131 + seed * 17 + 3) & 0xff);
  return b;
}
zero::raw_span<const std::byte> in(const bytes& b) { return {b.data(), b.size()}; }
zero::raw_span<std::byte> out(bytes& b) { return {b.data(), b.size()}; }

// The message of the usage_error `f` throws ("" if it throws none).
template <class F>
std::string usage_error_of(F&& f) {
  try {
    f();
  } catch (const zero::usage_error& e) {
    return e.what();
  }
  return "";
}
bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Calls f(name, checkpointer) for every shipped policy and combination, on one rank.
template <class F>
void for_each_policy(F&& f) {
  zero::single_rank_communicator comm;
  const auto plan = zero::checkpoint_plan::uniform(4, 64);
  {
    zero::plain_checkpointer<> c;
    f("plain_checkpointer", c);
  }
  {
    zero::keep_everything_checkpointer<> c;
    f("keep_everything_checkpointer", c);
  }
  {
    zero::passthrough_checkpointer c;
    f("passthrough_checkpointer", c);
  }
  {
    zero::contiguous_checkpointer c{zero::contiguous_arena(plan)};
    f("plain_checkpointer", c);
  }
  {
    zero::offloaded_checkpointer<> c;
    f("offloaded_checkpointer", c);
  }
  {
    zero::offloaded_checkpointer<zero::contiguous_arena> c{zero::contiguous_arena(plan)};
    f("offloaded_checkpointer", c);
  }
  {
    zero::partitioned_checkpointer<zero::single_rank_communicator> c(comm);
    f("partitioned_checkpointer", c);
  }
  {
    zero::partitioned_checkpointer<zero::single_rank_communicator, zero::offloaded_checkpointer<zero::contiguous_arena>> c(
        comm, zero::offloaded_checkpointer<zero::contiguous_arena>(zero::contiguous_arena(plan)));
    f("partitioned_checkpointer", c);
  }
}

}  // namespace

TEST_SUITE("activation") {
  TEST_CASE("lifecycle: save restore release for every policy and ids reused after release") {
    for_each_policy([](const std::string& name, auto& c) {
      CAPTURE(name);
      const bytes a = pattern(40, 1), b = pattern(0, 2), d = pattern(64, 3);
      for (std::uint64_t step = 0; step < 2; ++step) {
        c.save(1, in(a), {11, step});
        c.save(2, in(b), {22, step});
        c.save(3, in(d), {33, step});
        bytes ra(a.size()), rb(b.size()), rd(d.size());
        zero::prefetch(c, 2);
        CHECK(c.restore(3, out(rd)) == zero::generator_state{33, step});
        CHECK(c.restore(2, out(rb)) == zero::generator_state{22, step});
        c.release(3);
        c.release(2);
        c.release(1);  // released without being restored: a checkpoint not needed
        CHECK(rd == d);
        CHECK(rb == b);
        CHECK(ra == bytes(a.size()));
      }
      CHECK(c.peak_bytes_held() >= c.bytes_held());
    });
  }

  TEST_CASE("lifecycle: the shipped checkpointers satisfy the concepts and say whether to recompute") {
    using comm = zero::thread_communicator;
    static_assert(zero::measured_checkpointer<zero::partitioned_checkpointer<comm, zero::offloaded_checkpointer<>>>);
    static_assert(zero::checkpoint_storage<zero::contiguous_arena>);
    static_assert(zero::copy_engine<zero::host_copy_engine>);
    static_assert(zero::recomputes_v<zero::plain_checkpointer<>>);
    static_assert(zero::recomputes_v<zero::passthrough_checkpointer>);
    static_assert(zero::recomputes_v<zero::partitioned_checkpointer<comm, zero::offloaded_checkpointer<>>>);
    static_assert(!zero::recomputes_v<zero::keep_everything_checkpointer<zero::contiguous_arena>>);
    static_assert(!zero::recomputes_v<zero::partitioned_checkpointer<comm, zero::keep_everything_checkpointer<>>>);
    CHECK(zero::partition_slice_bytes(0, 3) == 0);
    CHECK(zero::partition_slice_bytes(1, 3) == 8);
    CHECK(zero::partition_slice_bytes(48, 3) == 16);
    CHECK(zero::partition_slice_bytes(49, 3) == 24);
    CHECK(zero::checkpoint_plan{{1, 64, 65}}.arena_bytes() == 64 + 64 + 128);
  }

  TEST_CASE("lifecycle: partitioned over 1 to 4 thread ranks restores every size exactly and pads with zeros") {
    for (int world : {1, 2, 3, 4}) {
      CAPTURE(world);
      zero::thread_group group(world);
      group.run([&](zero::thread_communicator& comm) {
        zero::partitioned_checkpointer<zero::thread_communicator> c(comm);
        std::size_t stored = 0;
        for (std::size_t n = 0; n <= 70; ++n) {
          const bytes data = pattern(n, static_cast<unsigned>(n));
          c.save(n, in(data), {n, 0});
          stored += zero::partition_slice_bytes(n, world);
          CHECK(c.memory().stored == stored);
        }
        for (std::size_t n = 71; n-- > 0;) {
          // restore into a misaligned buffer as well as an aligned one
          bytes restored(n + 1);
          const zero::raw_span<std::byte> target{restored.data() + (n % 2), n};
          CHECK(c.restore(n, target) == zero::generator_state{n, 0});
          CHECK(bytes(target.begin(), target.end()) == pattern(n, static_cast<unsigned>(n)));
          c.release(n);
        }
        CHECK(c.memory().stored == 0);
      });
    }
  }

  TEST_CASE("lifecycle: a partitioned rank keeps its slice zero-padded") {
    zero::thread_group group(3);
    group.run([&](zero::thread_communicator& comm) {
      zero::partitioned_checkpointer<zero::thread_communicator, zero::keep_everything_checkpointer<>> c(comm);
      const bytes data = pattern(20, 5);  // slices of 8 bytes: rank 2 keeps 4 real bytes and 4 of padding
      c.save(0, in(data), {});
      bytes slice(8);
      c.inner().restore(0, out(slice));
      for (std::size_t i = 0; i < 8; ++i) {
        const std::size_t at = static_cast<std::size_t>(comm.rank()) * 8 + i;
        CHECK(slice[i] == (at < data.size() ? data[at] : std::byte{0}));
      }
    });
  }
}

TEST_SUITE("reliability") {
  TEST_CASE("checkpointer errors: restoring a checkpoint never saved names it for every policy") {
    for_each_policy([](const std::string& name, auto& c) {
      CAPTURE(name);
      bytes buffer(16);
      const auto message = usage_error_of([&] { c.restore(42, out(buffer)); });
      CHECK(contains(message, "zero: " + name + ": checkpoint 42: restore of a checkpoint that is not held (never saved, or released)"));
      // released: gone
      const bytes data = pattern(16, 1);
      c.save(42, in(data), {});
      c.release(42);
      CHECK(contains(usage_error_of([&] { c.restore(42, out(buffer)); }), "not held"));
    });
  }

  TEST_CASE("checkpointer errors: restoring twice is an error for every policy and changes nothing") {
    for_each_policy([](const std::string& name, auto& c) {
      CAPTURE(name);
      const bytes data = pattern(24, 2);
      bytes first(24), second(24, std::byte{9});
      c.save(5, in(data), {1, 2});
      c.restore(5, out(first));
      const std::size_t held = c.bytes_held();
      const auto message = usage_error_of([&] { c.restore(5, out(second)); });
      CHECK(contains(message, "zero: " + name + ": checkpoint 5: restored twice: a checkpoint is restored once, then released"));
      CHECK(second == bytes(24, std::byte{9}));
      CHECK(c.bytes_held() == held);
      c.release(5);
      CHECK(first == data);
    });
  }

  TEST_CASE("checkpointer errors: a second save a release not held a wrong size and a null buffer are refused") {
    for_each_policy([](const std::string& name, auto& c) {
      CAPTURE(name);
      const bytes data = pattern(32, 3);
      c.save(7, in(data), {});
      const std::size_t held = c.bytes_held();
      CHECK(contains(usage_error_of([&] { c.save(7, in(data), {}); }), "checkpoint 7: saved twice"));
      CHECK(contains(usage_error_of([&] { c.release(8); }), "checkpoint 8: release of a checkpoint that is not held"));
      bytes small(31);
      CHECK(contains(usage_error_of([&] { c.restore(7, out(small)); }), "checkpoint 7: restore into 31 bytes; it holds 32"));
      CHECK(contains(usage_error_of([&] { c.restore(7, {nullptr, 32}); }), "null buffer of 32 bytes"));
      CHECK(contains(usage_error_of([&] { c.save(9, {nullptr, 4}, {}); }), "checkpoint 9: save of a null buffer of 4 bytes"));
      CHECK(c.bytes_held() == held);
      bytes restored(32);
      c.restore(7, out(restored));  // still restorable after the refusals
      CHECK(restored == data);
      c.release(7);
    });
  }

  TEST_CASE("checkpointer errors: exceeding the contiguous plan names the checkpoint its size and the plan") {
    zero::contiguous_checkpointer c{zero::contiguous_arena({{64, 128}})};
    const bytes hundred = pattern(100, 1), sixty = pattern(60, 2), one = pattern(1, 3);
    c.save(0, in(hundred), {});  // best fit: the 128-byte slot
    CHECK(usage_error_of([&] { c.save(1, in(hundred), {}); }) ==
          "zero: contiguous_arena: checkpoint 1 (100 bytes) exceeds the plan: its largest free slot holds 64 bytes "
          "(plan: 2 checkpoints of at most 128 bytes, arena of 192 bytes). Declare it in the checkpoint_plan, or release "
          "checkpoints first");
    c.save(1, in(sixty), {});
    CHECK(contains(usage_error_of([&] { c.save(2, in(one), {}); }),
                   "checkpoint 2 (1 bytes) exceeds the plan: all 2 of its checkpoints are held (plan: 2 checkpoints"));
    CHECK(c.storage().slots_held() == 2);
    CHECK(c.bytes_held() == 192);
    bytes r0(100), r1(60);
    c.restore(0, out(r0));
    c.restore(1, out(r1));
    CHECK(r0 == hundred);
    CHECK(r1 == sixty);
    c.release(0);
    c.save(2, in(one), {});  // a slot is free again
    c.release(1);
    c.release(2);
    CHECK(c.storage().slots_held() == 0);
  }

  TEST_CASE("checkpointer errors: exceeding a plan offloaded or partitioned is refused and holds nothing new") {
    const bytes big = pattern(200, 1), small = pattern(50, 2);
    {
      zero::offloaded_checkpointer<zero::contiguous_arena> c{zero::contiguous_arena(zero::checkpoint_plan::uniform(1, 64))};
      c.save(0, in(small), {});
      CHECK(contains(usage_error_of([&] { c.save(1, in(small), {}); }), "checkpoint 1 (50 bytes) exceeds the plan"));
      c.release(0);
      c.save(1, in(small), {});  // 1 was not held: it can be saved now
      c.release(1);
    }
    {
      zero::offloaded_options o;
      o.max_checkpoint_bytes = 64;
      zero::offloaded_checkpointer<> c(zero::heap_storage{}, o);
      CHECK(usage_error_of([&] { c.save(3, in(big), {}); }) ==
            "zero: offloaded_checkpointer: checkpoint 3 (200 bytes) exceeds offloaded_options::max_checkpoint_bytes (64)");
      CHECK(c.memory() == zero::checkpoint_memory{0, 128, 0});
    }
    {
      zero::single_rank_communicator comm;
      zero::partitioned_options o;
      o.max_checkpoint_bytes = 64;
      zero::partitioned_checkpointer<zero::single_rank_communicator> c(comm, o);
      CHECK(usage_error_of([&] { c.save(4, in(big), {}); }) ==
            "zero: partitioned_checkpointer: checkpoint 4 (200 bytes) exceeds partitioned_options::max_checkpoint_bytes (64)");
      zero::partitioned_checkpointer<zero::single_rank_communicator, zero::contiguous_checkpointer> arena(
          comm, zero::contiguous_checkpointer(zero::contiguous_arena(zero::checkpoint_plan::uniform(1, 48))));
      CHECK(contains(usage_error_of([&] { arena.save(5, in(small), {}); }), "checkpoint 5 (56 bytes) exceeds the plan"));
      CHECK(arena.memory().stored == 64);  // the arena (56 rounded up to 64), nothing held
      CHECK(contains(usage_error_of([&] { arena.restore(5, {}); }), "not held"));
    }
  }

  TEST_CASE("checkpointer errors: prefetching a checkpoint not held is an error and a hint otherwise") {
    zero::single_rank_communicator comm;
    zero::offloaded_checkpointer<> off;
    zero::partitioned_checkpointer<zero::single_rank_communicator, zero::offloaded_checkpointer<>> part(comm);
    CHECK(contains(usage_error_of([&] { off.prefetch(3); }), "zero: offloaded_checkpointer: checkpoint 3: prefetch of a checkpoint that is not held"));
    CHECK(contains(usage_error_of([&] { part.prefetch(3); }), "zero: partitioned_checkpointer: checkpoint 3: prefetch of a checkpoint that is not held"));
    zero::plain_checkpointer<> plain;
    zero::prefetch(plain, 3);  // a checkpointer that does not prefetch ignores the hint
    const bytes data = pattern(16, 4);
    off.save(3, in(data), {});
    off.prefetch(3);
    off.prefetch(3);  // staged already: nothing more
    bytes r(16);
    off.restore(3, out(r));
    CHECK(r == data);
    CHECK(off.prefetched_restores() == 1);
    off.prefetch(3);  // restored already: nothing to bring back
    off.release(3);
  }

  TEST_CASE("checkpointer errors: partitioned over 3 thread ranks fails on every rank before communicating") {
    zero::thread_group group(3);
    group.run([&](zero::thread_communicator& comm) {
      zero::partitioned_checkpointer<zero::thread_communicator> c(comm);
      const bytes data = pattern(30, 6);
      bytes r(30);
      CHECK(contains(usage_error_of([&] { c.restore(1, out(r)); }), "checkpoint 1: restore of a checkpoint that is not held"));
      c.save(1, in(data), {});
      c.restore(1, out(r));
      CHECK(contains(usage_error_of([&] { c.restore(1, out(r)); }), "checkpoint 1: restored twice"));
      const auto sequence = comm.sequence();
      c.release(1);
      // the refusals issued no collective: the ranks are still in step
      c.save(1, in(data), {});
      bytes again(30);
      c.restore(1, out(again));
      CHECK(comm.sequence() == sequence + 1);
      CHECK(again == data);
      CHECK(r == data);
    });
  }
}
