// Pipelined collectives (layout.staging_buffers >= 2): a unit's reduce-scatter stays in flight
// while the framework goes on reporting gradients, and completes only before its staging
// buffer is reused; refused where the communicator cannot start collectives.
#include <doctest/doctest.h>

#include <vector>

#include "zero/optimizer.hpp"

namespace {

static_assert(zero::nonblocking_communicator<zero::thread_communicator>);
static_assert(!zero::nonblocking_communicator<zero::single_rank_communicator>);

// bucketed: a unit is a contiguous run of the flat buffer, here exactly one parameter; the
// parameters are laid out in reverse registration order, the order backward reports them in
using engine = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>;

}  // namespace

TEST_SUITE("unit") {
  TEST_CASE("pipelined stage 2: reductions stay queued during backward and complete before their buffer is reused") {
    constexpr std::size_t params = 5, size = 64;
    for (std::size_t buffers : {std::size_t{1}, std::size_t{2}, std::size_t{3}}) {
      CAPTURE(buffers);
      zero::thread_group group(2, {std::chrono::seconds(30)});
      group.run([&](zero::thread_communicator& comm) {
        std::vector<std::vector<float>> storage(params, std::vector<float>(size, 1.0f));
        std::vector<std::vector<float>> grads(params, std::vector<float>(size, 0.5f));
        std::vector<zero::parameter<float>> registered;
        for (auto& s : storage) registered.push_back({"", {s.data(), s.size()}});
        engine::options_type options;
        options.threads = 1;
        options.layout.bucket_elements = size;  // one parameter per unit
        options.layout.staging_buffers = buffers;
        engine opt(comm, registered, options);
        REQUIRE(opt.plan().units.size() == params);
        CHECK(opt.memory() ==
              zero::expected_memory<zero::fp32_precision, zero::bucketed_partitioner>(params * size, 2, zero::stage2, 2, options.layout, size));

        for (int step = 0; step < 2; ++step) {
          const auto before = comm.traffic().calls_of(zero::collective::reduce_scatter);
          for (std::size_t i = 0; i < params; ++i) {
            const std::size_t p = params - 1 - i;  // backward: the last layer first
            opt.gradient_ready(p, {grads[p].data(), grads[p].size()});
            // units 0..i are complete: reducing unit k first completes unit k - buffers, so the
            // last `buffers` units are still queued
            const std::size_t started = i + 1;
            const std::size_t run = buffers == 1 ? started : (started > buffers ? started - buffers : 0);
            CHECK(comm.queued_count() == started - run);
            CHECK(comm.traffic().calls_of(zero::collective::reduce_scatter) - before == run);
          }
          const auto report = opt.step();
          CHECK(comm.queued_count() == 0);
          CHECK(comm.traffic().calls_of(zero::collective::reduce_scatter) - before == params);
          CHECK(report.grad_norm == doctest::Approx(0.5 * std::sqrt(double(params * size))));
          for (const auto& s : storage) CHECK(s == storage[0]);
        }
      });
    }
  }

  TEST_CASE("staging_buffers of 0 is refused and so is 2 with a communicator that has no non-blocking collectives") {
    std::vector<float> values(100, 1.0f);
    const std::vector<zero::parameter<float>> registered{{"w", {values.data(), values.size()}}};
    zero::single_rank_communicator single;
    zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::contiguous_partitioner,
                    zero::single_rank_communicator>::options_type options;
    options.layout.staging_buffers = 0;
    using single_engine = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::contiguous_partitioner,
                                          zero::single_rank_communicator>;
    CHECK_THROWS_WITH_AS(single_engine(single, registered, options), doctest::Contains("staging_buffers is 0"),
                         zero::usage_error);
    options.layout.staging_buffers = 2;
    CHECK_THROWS_WITH_AS(single_engine(single, registered, options), doctest::Contains("non-blocking"), zero::usage_error);
    CHECK(values == std::vector<float>(100, 1.0f));  // nothing the user gave was touched
  }
}
