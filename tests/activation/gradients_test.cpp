// Every checkpointer, alone and combined, gives the gradients of the run without checkpointing,
// bitwise: the model's backward recomputes each layer (dropout included) from what the
// checkpointer restores, with the generator state it saved.
#include <doctest/doctest.h>

#include <numeric>

#include "fixture.hpp"

namespace {

using act::batches;
using act::model;

// Three steps through one checkpointer (ids are reused after their release), each compared
// with the reference.
template <class C>
void check_steps(C& checkpointer, act::step_options options = {}) {
  for (const auto& d : batches()) {
    CHECK(bitwise_equal(act::checkpointed_step(model(), d, checkpointer, options), act::reference_step(model(), d)));
    CHECK(checkpointer.peak_bytes_held() >= checkpointer.bytes_held());
  }
}

// The same on `world` thread ranks, each with the checkpointer `make(comm)` builds.
template <class Make>
void check_steps_on_ranks(int world, Make make, act::step_options options = {}) {
  CAPTURE(world);
  zero::thread_group group(world);
  group.run([&](zero::thread_communicator& comm) {
    auto checkpointer = make(comm);
    check_steps(checkpointer, options);
  });
}

}  // namespace

TEST_SUITE("activation") {
  TEST_CASE("gradients: the reference depends on the dropout mask and the data") {
    const auto a = act::reference_step(model(), batches()[0]);
    auto other = batches()[0];
    other.rng.offset += 1;  // another mask, same data
    CHECK_FALSE(bitwise_equal(a, act::reference_step(model(), other)));
    CHECK_FALSE(bitwise_equal(a, act::reference_step(model(), batches()[1])));
    CHECK(bitwise_equal(a, act::reference_step(model(), batches()[0])));
  }

  TEST_CASE("gradients: keep-everything equals the run without checkpointing bitwise") {
    zero::keep_everything_checkpointer<> c;
    check_steps(c);
    CHECK(c.peak_bytes_held() > act::layer_input_plan().arena_bytes());
  }

  TEST_CASE("gradients: keep-everything in a contiguous arena equals the run without checkpointing bitwise") {
    zero::keep_everything_checkpointer<zero::contiguous_arena> c(zero::contiguous_arena({act::checkpoint_sizes(false)}));
    check_steps(c);
  }

  TEST_CASE("gradients: plain checkpointing equals the run without checkpointing bitwise") {
    zero::plain_checkpointer<> c;
    check_steps(c);
  }

  TEST_CASE("gradients: pass-through checkpointing equals the run without checkpointing bitwise") {
    zero::passthrough_checkpointer c;
    check_steps(c);
  }

  TEST_CASE("gradients: recomputing with the generator's current state instead of the saved one differs") {
    zero::plain_checkpointer<> c;
    act::step_options wrong;
    wrong.use_saved_generator = false;
    const auto& d = batches()[0];
    CHECK_FALSE(bitwise_equal(act::checkpointed_step(model(), d, c, wrong), act::reference_step(model(), d)));
  }

  TEST_CASE("gradients: a contiguous arena equals the run without checkpointing bitwise") {
    zero::contiguous_checkpointer c(zero::contiguous_arena(act::layer_input_plan()));
    check_steps(c);
  }

  TEST_CASE("gradients: offloaded equals the run without checkpointing bitwise and prefetches") {
    zero::offloaded_checkpointer<> c;
    check_steps(c);
    // per step the first restore comes from host memory, the five after it from staging
    CHECK(c.direct_restores() == 3);
    CHECK(c.prefetched_restores() == 15);
    // every checkpoint went out once and came back once; all but the first through staging
    const auto sizes = act::checkpoint_sizes();
    const std::size_t all = std::accumulate(sizes.begin(), sizes.end(), std::size_t{0});
    CHECK(c.engine().bytes_to_host() == 3 * all);
    CHECK(c.engine().bytes_to_device() == 3 * all);
    CHECK(c.engine().bytes_within_device() == 3 * (all - sizes.back()));
  }

  TEST_CASE("gradients: offloaded with prefetch hints or without prefetching equals the run without checkpointing") {
    zero::offloaded_checkpointer<> hinted;
    act::step_options hints;
    hints.hint_prefetch = true;
    check_steps(hinted, hints);
    CHECK(hinted.direct_restores() == 3);
    CHECK(hinted.prefetched_restores() == 15);

    zero::offloaded_options off;
    off.prefetch = false;
    zero::offloaded_checkpointer<> direct(zero::heap_storage{}, off);
    check_steps(direct);
    CHECK(direct.direct_restores() == 18);
    CHECK(direct.prefetched_restores() == 0);
  }

  TEST_CASE("gradients: offloaded into a contiguous host arena equals the run without checkpointing bitwise") {
    zero::offloaded_options o;
    o.max_checkpoint_bytes = act::largest_checkpoint();
    zero::offloaded_checkpointer<zero::contiguous_arena> c(zero::contiguous_arena(act::layer_input_plan()), o);
    check_steps(c);
    CHECK(c.prefetched_restores() == 15);
  }

  TEST_CASE("gradients: partitioned over 1 to 4 thread ranks equals the run without checkpointing bitwise") {
    for (int world : {1, 2, 3, 4})
      check_steps_on_ranks(world, [](zero::thread_communicator& comm) { return zero::partitioned_checkpointer<zero::thread_communicator>(comm); });
  }

  TEST_CASE("gradients: partitioned into a contiguous arena over 2 and 3 thread ranks equals the run without checkpointing") {
    for (int world : {2, 3})
      check_steps_on_ranks(world, [](zero::thread_communicator& comm) {
        const auto plan = zero::partitioned_plan(act::layer_input_plan(), comm.world_size());
        zero::partitioned_options o;
        o.max_checkpoint_bytes = act::largest_checkpoint();
        return zero::partitioned_checkpointer<zero::thread_communicator, zero::contiguous_checkpointer>(
            comm, zero::contiguous_checkpointer(zero::contiguous_arena(plan)), o);
      });
  }

  TEST_CASE("gradients: partitioned and offloaded over 2 and 3 thread ranks equals the run without checkpointing") {
    for (int world : {2, 3})
      check_steps_on_ranks(world, [](zero::thread_communicator& comm) {
        return zero::partitioned_checkpointer<zero::thread_communicator, zero::offloaded_checkpointer<>>(comm);
      });
  }

  TEST_CASE("gradients: partitioned and offloaded into a contiguous host arena over 3 thread ranks with hints") {
    act::step_options hints;
    hints.hint_prefetch = true;
    check_steps_on_ranks(
        3,
        [](zero::thread_communicator& comm) {
          using offloaded = zero::offloaded_checkpointer<zero::contiguous_arena>;
          const auto plan = zero::partitioned_plan(act::layer_input_plan(), comm.world_size());
          zero::offloaded_options o;
          o.max_checkpoint_bytes = plan.largest();
          return zero::partitioned_checkpointer<zero::thread_communicator, offloaded>(comm, offloaded(zero::contiguous_arena(plan), o));
        },
        hints);
  }

  TEST_CASE("gradients: partitioned keep-everything over 2 thread ranks equals the run without checkpointing") {
    using partitioned = zero::partitioned_checkpointer<zero::thread_communicator, zero::keep_everything_checkpointer<>>;
    static_assert(!zero::recomputes_v<partitioned>);
    check_steps_on_ranks(2, [](zero::thread_communicator& comm) { return partitioned(comm); });
  }
}
