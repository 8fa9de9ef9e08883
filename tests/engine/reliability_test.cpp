// Bad input and faults: each gives a clear exception that names what is wrong and where, on
// every rank, never a hang; nothing the caller gave is modified by a refused call.
#include <doctest/doctest.h>

#include <bit>
#include <chrono>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "zero/zero.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

struct outcome {
  std::string kind;  // "", "usage", "mismatch", "timeout", "communicator"
  std::string message;
};

// Runs fn(comm) on every rank of a fresh group, each on its own thread, and records what each
// rank threw (unlike thread_group::run, a failing rank does not make the others fail fast).
template <class F>
std::vector<outcome> run_each(int world, F fn, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  zero::thread_group group(world, {timeout});
  std::vector<outcome> out(static_cast<std::size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      auto& o = out[static_cast<std::size_t>(r)];
      try {
        auto comm = group.communicator(r);
        fn(comm);
      } catch (const zero::usage_error& e) {
        o = {"usage", e.what()};
      } catch (const zero::mismatch_error& e) {
        o = {"mismatch", e.what()};
      } catch (const zero::timeout_error& e) {
        o = {"timeout", e.what()};
      } catch (const zero::communicator_error& e) {
        o = {"communicator", e.what()};
      }
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

using fp32_stage2 = zero::optimizer<zero::stage2, zero::fp32_precision>;

struct model {
  std::vector<float> a = std::vector<float>(10, 1.0f);
  std::vector<float> b = std::vector<float>(7, 2.0f);
  std::vector<zero::parameter<float>> params() { return {{"a", {a.data(), a.size()}}, {"b", {b.data(), b.size()}}}; }
};

}  // namespace

TEST_SUITE("reliability") {
  TEST_CASE("a null parameter span is refused on every rank / naming the parameter and the rank") {
    const auto out = run_each(3, [](zero::thread_communicator& comm) {
      model m;
      auto params = m.params();
      if (comm.rank() == 1) params[1].values.data = nullptr;
      fp32_stage2 opt(comm, params);
    });
    CHECK(out[1].kind == "usage");
    CHECK(contains(out[1].message, "'b' (#1)"));
    CHECK(contains(out[1].message, "rank 1"));
    CHECK(contains(out[1].message, "null"));
    for (int r : {0, 2}) {
      CHECK(out[static_cast<std::size_t>(r)].kind == "usage");
      CHECK(contains(out[static_cast<std::size_t>(r)].message, "rank(s) 1 refused"));
    }
  }

  TEST_CASE("a zero-length parameter span is refused / naming the parameter") {
    const auto out = run_each(2, [](zero::thread_communicator& comm) {
      model m;
      auto params = m.params();
      params[0].values.size = 0;
      fp32_stage2 opt(comm, params);
    });
    for (const auto& o : out) {
      CHECK(o.kind == "usage");
      CHECK(contains(o.message, "'a' (#0)"));
      CHECK(contains(o.message, "zero elements"));
    }
  }

  TEST_CASE("overlapping parameter spans are refused / naming both parameters") {
    const auto out = run_each(2, [](zero::thread_communicator& comm) {
      std::vector<float> storage(20, 1.0f);
      std::vector<zero::parameter<float>> params{{"first", {storage.data(), 12}}, {"second", {storage.data() + 8, 12}}};
      fp32_stage2 opt(comm, params);
    });
    for (const auto& o : out) {
      CHECK(o.kind == "usage");
      CHECK(contains(o.message, "'first' (#0)"));
      CHECK(contains(o.message, "'second' (#1)"));
      CHECK(contains(o.message, "overlap"));
    }
  }

  TEST_CASE("a rank registering a different layout makes every rank throw the same error naming it") {
    const auto out = run_each(4, [](zero::thread_communicator& comm) {
      model m;
      auto params = m.params();
      if (comm.rank() == 2) params[1].values.size = 6;
      fp32_stage2 opt(comm, params);
    });
    for (const auto& o : out) {
      CHECK(o.kind == "mismatch");
      CHECK(contains(o.message, "rank(s) 2 registered"));
      CHECK(o.message == out[0].message);
    }
  }

  TEST_CASE("a rank choosing a different stage or bucket size is named too") {
    const auto out = run_each(3, [](zero::thread_communicator& comm) {
      model m;
      fp32_stage2::options_type options;
      if (comm.rank() == 0) options.layout.bucket_elements = 5;
      fp32_stage2 opt(comm, m.params(), options);
    });
    for (const auto& o : out) {
      CHECK(o.kind == "mismatch");
      CHECK(contains(o.message, "rank(s) 0 registered"));
    }
  }

  TEST_CASE("a gradient span of the wrong length / a null one or a bad index is refused and changes nothing") {
    // Train two steps while making bad calls in between; the result equals a clean run.
    auto train = [](bool with_bad_calls) {
      std::vector<std::vector<float>> finals(2);
      zero::thread_group group(2);
      group.run([&](zero::thread_communicator& comm) {
        model m;
        fp32_stage2 opt(comm, m.params());
        std::vector<float> ga(10, 0.5f), gb(7, -0.25f), too_long(11, 9.0f);
        for (int step = 0; step < 2; ++step) {
          if (with_bad_calls) {
            try {
              opt.gradient_ready(0, {too_long.data(), too_long.size()});
              FAIL("a gradient of 11 elements for a 10-element parameter was accepted");
            } catch (const zero::usage_error& e) {
              CHECK(contains(e.what(), "'a' (#0)"));
              CHECK(contains(e.what(), "has 11 elements; the parameter has 10"));
              CHECK(contains(e.what(), "rank " + std::to_string(comm.rank())));
            }
            CHECK_THROWS_AS(opt.gradient_ready(1, {static_cast<const float*>(nullptr), 7}), zero::usage_error);
            CHECK_THROWS_WITH_AS(opt.gradient_ready(2, {gb.data(), gb.size()}), doctest::Contains("out of range"),
                                 zero::usage_error);
          }
          opt.gradient_ready(1, {gb.data(), gb.size()});
          opt.gradient_ready(0, {ga.data(), ga.size()});
          opt.step();
        }
        std::vector<float> all(m.a);
        all.insert(all.end(), m.b.begin(), m.b.end());
        finals[static_cast<std::size_t>(comm.rank())] = all;
      });
      return finals;
    };
    CHECK(train(true) == train(false));
  }

  TEST_CASE("a gradient reported more often than registered is refused and a shared weight reported per use is summed") {
    for (int stage = 0; stage < 3; ++stage) {
      CAPTURE(stage);
      zero::single_rank_communicator comm;
      auto check = [&](auto tag) {
        using O = zero::optimizer<decltype(tag)::value, zero::fp32_precision, zero::sgd, zero::contiguous_partitioner,
                                  zero::single_rank_communicator>;
        std::vector<float> w(3, 0.0f), once(1, 0.0f);
        std::vector<zero::parameter<float>> params{{"shared", {w.data(), w.size()}, 2}, {"once", {once.data(), 1}}};
        typename O::options_type options;
        options.hyperparameters.lr = 1.0;
        O opt(comm, params, options);
        std::vector<float> g1{1, 2, 3}, g2{10, 20, 30}, g3{100};
        opt.gradient_ready(0, {g1.data(), 3});
        opt.gradient_ready(1, {g3.data(), 1});
        opt.gradient_ready(0, {g2.data(), 3});
        CHECK_THROWS_WITH_AS(opt.gradient_ready(1, {g3.data(), 1}), doctest::Contains("reported 2 times"), zero::usage_error);
        opt.step();
        CHECK(w == std::vector<float>{-11, -22, -33});
        CHECK(once[0] == -100);
      };
      if (stage == 0) check(std::integral_constant<zero::stage, zero::stage0>{});
      if (stage == 1) check(std::integral_constant<zero::stage, zero::stage1>{});
      if (stage == 2) check(std::integral_constant<zero::stage, zero::stage2>{});
    }
  }

  TEST_CASE("a rank that never joins the step makes the others throw within the deadline / naming it") {
    const auto started = clock_type::now();
    const auto out = run_each(
        3,
        [](zero::thread_communicator& comm) {
          model m;
          fp32_stage2 opt(comm, m.params());
          std::vector<float> ga(10, 0.5f), gb(7, -0.25f);
          opt.gradient_ready(0, {ga.data(), ga.size()});
          opt.gradient_ready(1, {gb.data(), gb.size()});
          if (comm.rank() == 2) return;  // never calls step()
          try {
            opt.step();
          } catch (const zero::timeout_error&) {
            // the engine is unusable afterwards, and says so
            CHECK_THROWS_AS(opt.step(), zero::communicator_error);
            throw;
          }
        },
        std::chrono::milliseconds(300));
    const auto elapsed = clock_type::now() - started;
    CHECK(elapsed < std::chrono::seconds(5));
    CHECK(out[2].kind.empty());
    for (int r : {0, 1}) {
      const auto& o = out[static_cast<std::size_t>(r)];
      CHECK(o.kind == "timeout");
      CHECK(contains(o.message, "all_gather"));
      CHECK(contains(o.message, "rank(s) 2 never arrived"));
    }
  }

  TEST_CASE("a rank that never constructs its optimizer makes the others throw at construction / naming it") {
    const auto out = run_each(
        4,
        [](zero::thread_communicator& comm) {
          if (comm.rank() == 3) return;
          model m;
          fp32_stage2 opt(comm, m.params());
        },
        std::chrono::milliseconds(200));
    for (int r : {0, 1, 2}) {
      CHECK(out[static_cast<std::size_t>(r)].kind == "timeout");
      CHECK(contains(out[static_cast<std::size_t>(r)].message, "rank(s) 3 never arrived"));
    }
  }

  TEST_CASE("invalid hyperparameters and layout options are refused with the value named") {
    zero::single_rank_communicator comm;
    using O = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::contiguous_partitioner,
                              zero::single_rank_communicator>;
    model m;
    O::options_type bad_lr;
    bad_lr.hyperparameters.lr = -1;
    CHECK_THROWS_WITH_AS(O(comm, m.params(), bad_lr), doctest::Contains("lr = -1"), zero::usage_error);
    O::options_type bad_beta;
    bad_beta.hyperparameters.beta2 = 1.0;
    CHECK_THROWS_WITH_AS(O(comm, m.params(), bad_beta), doctest::Contains("beta2"), zero::usage_error);
    O::options_type bad_alignment;
    bad_alignment.layout.alignment = 0;
    CHECK_THROWS_WITH_AS(O(comm, m.params(), bad_alignment), doctest::Contains("alignment"), zero::usage_error);
    CHECK_THROWS_WITH_AS(O(comm, std::vector<zero::parameter<float>>{}), doctest::Contains("no parameters"), zero::usage_error);

    O opt(comm, m.params());
    auto h = opt.hyperparameters();
    h.amsgrad = true;
    CHECK_THROWS_WITH_AS(opt.set_hyperparameters(h), doctest::Contains("state slots"), zero::usage_error);
    h.amsgrad = false;
    h.lr = 0.5;
    opt.set_hyperparameters(h);
    CHECK(opt.hyperparameters().lr == 0.5);
  }

  TEST_CASE("slot and span modes refuse each other's calls") {
    zero::single_rank_communicator comm;
    using O = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::contiguous_partitioner,
                              zero::single_rank_communicator>;
    model m;
    std::vector<float> ga(10, 0.5f);
    O spans(comm, m.params());
    CHECK_THROWS_WITH_AS(spans.grad_slot(0), doctest::Contains("gradient slots are off"), zero::usage_error);
    CHECK_THROWS_AS(spans.gradient_ready(0), zero::usage_error);
    O::options_type options;
    options.layout.gradient_slots = true;
    model m2;
    O slots(comm, m2.params(), options);
    CHECK(slots.grad_slot(1).size == 7);
    CHECK_THROWS_WITH_AS(slots.gradient_ready(0, {ga.data(), ga.size()}), doctest::Contains("gradient slots are on"),
                         zero::usage_error);
  }
}

TEST_SUITE("reliability") {
  TEST_CASE("gradient_unused lets the units go on without the parameter and is refused once the parameter is reported") {
    zero::thread_group group(2);
    group.run([&](zero::thread_communicator& comm) {
      using O = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>;
      std::vector<std::vector<float>> w(4, std::vector<float>(32, 1.0f)), g = w;
      std::vector<zero::parameter<float>> params;
      for (auto& v : w) params.push_back({"w" + std::to_string(params.size()), {v.data(), v.size()}});
      O::options_type options;
      options.layout.bucket_elements = 64;  // two parameters a unit
      O opt(comm, params, options);
      const auto before = comm.traffic().calls_of(zero::collective::reduce_scatter);
      opt.gradient_ready(3, {g[3].data(), g[3].size()});
      opt.gradient_unused(2);  // the first unit holds parameters 3 and 2: it is reduced now
      CHECK(comm.traffic().calls_of(zero::collective::reduce_scatter) - before == 1);
      CHECK_THROWS_WITH_AS(opt.gradient_unused(3), doctest::Contains("parameter 'w3' (#3) on rank"), zero::usage_error);
      CHECK_THROWS_WITH_AS(opt.gradient_ready(2, {g[2].data(), g[2].size()}), doctest::Contains("'w2' (#2)"), zero::usage_error);
      opt.gradient_ready(1, {g[1].data(), g[1].size()});
      const auto report = opt.step();
      // parameters 2 and 0 counted as zero gradients: the norm is that of 3 and 1
      CHECK(report.grad_norm == doctest::Approx(std::sqrt(2.0 * 32)));
    });
  }

  TEST_CASE("stage 0 reports the same step on every rank whatever each rank's thread count") {
    // 3 ranks with 1, 2 and 3 threads; more elements than one thread takes alone (32768), and
    // clipping on, so the norm enters the update
    constexpr std::size_t n = 70001;
    auto run = [&](auto threads_of) {
      std::vector<std::vector<zero::step_report>> reports(3);
      std::vector<std::vector<float>> finals(3);
      zero::thread_group group(3);
      group.run([&](zero::thread_communicator& comm) {
        const auto r = static_cast<std::size_t>(comm.rank());
        std::vector<float> w(n), g(n);
        for (std::size_t i = 0; i < n; ++i) w[i] = 1.0f + 1e-3f * static_cast<float>(i % 97);
        std::vector<zero::parameter<float>> params{{"w", {w.data(), n}}};
        zero::optimizer<zero::stage0, zero::fp32_precision>::options_type options;
        options.threads = threads_of(comm.rank());
        options.max_grad_norm = 1.0;
        zero::optimizer<zero::stage0, zero::fp32_precision> opt(comm, params, options);
        for (int step = 0; step < 4; ++step) {
          for (std::size_t i = 0; i < n; ++i) g[i] = 0.01f * static_cast<float>((i * 7919 + r * 31 + static_cast<std::size_t>(step)) % 201) - 1.0f;
          opt.gradient_ready(0, {g.data(), n});
          reports[r].push_back(opt.step());
        }
        finals[r] = w;
      });
      return std::pair{reports, finals};
    };
    const auto [mixed, mixed_final] = run([](int rank) { return static_cast<unsigned>(rank + 1); });
    for (std::size_t r = 1; r < 3; ++r) {
      CAPTURE(r);
      for (std::size_t s = 0; s < mixed[r].size(); ++s) {
        CHECK(std::bit_cast<std::uint64_t>(mixed[r][s].grad_norm) == std::bit_cast<std::uint64_t>(mixed[0][s].grad_norm));
        CHECK(std::bit_cast<std::uint64_t>(mixed[r][s].clip_factor) == std::bit_cast<std::uint64_t>(mixed[0][s].clip_factor));
        CHECK(mixed[r][s].step == mixed[0][s].step);
        CHECK(mixed[r][s].skipped == mixed[0][s].skipped);
      }
      CHECK(mixed_final[r] == mixed_final[0]);
    }
    CHECK(mixed[0].back().clip_factor < 1.0);  // clipping took part
    // and a rank's own sum does not depend on its threads: one thread everywhere gives the same bits
    const auto [single, single_final] = run([](int) { return 1u; });
    for (std::size_t s = 0; s < single[0].size(); ++s)
      CHECK(std::bit_cast<std::uint64_t>(single[0][s].grad_norm) == std::bit_cast<std::uint64_t>(mixed[0][s].grad_norm));
    CHECK(single_final[0] == mixed_final[0]);
  }

  TEST_CASE("gradient_predivide_factor keeps an fp16 sum from overflowing where the average fits") {
    // four ranks each send 20000 in fp16 (largest finite 65504): the sum overflows, the average does not
    using fp16_comm = zero::precision<zero::fp16, zero::fp16, float, float, float, zero::fp16>;
    using O = zero::optimizer<zero::stage2, fp16_comm, zero::sgd, zero::bucketed_partitioner>;
    auto run = [&](double predivide) {
      std::vector<zero::step_report> reports(4);
      std::vector<float> final_values;
      zero::thread_group group(4);
      group.run([&](zero::thread_communicator& comm) {
        std::vector<zero::fp16> w(40, zero::fp16(1.0f)), g(40, zero::fp16(20000.0f));
        std::vector<zero::parameter<zero::fp16>> params{{"w", {w.data(), w.size()}}};
        O::options_type options;
        options.hyperparameters.lr = 1e-5;
        options.loss_scale.kind = zero::loss_scale_options::mode::fixed;
        options.loss_scale.fixed_scale = 1;
        options.on_nonfinite = zero::nonfinite_policy::skip_step;
        options.gradient_predivide_factor = predivide;
        O opt(comm, params, options);
        opt.gradient_ready(0, {g.data(), g.size()});
        reports[static_cast<std::size_t>(comm.rank())] = opt.step();
        if (comm.rank() == 0)
          for (auto v : w) final_values.push_back(static_cast<float>(v));
      });
      return std::pair{reports, final_values};
    };
    const auto [summed, unchanged] = run(1);
    for (const auto& r : summed) CHECK(r.skipped);  // 80000 is inf in fp16
    CHECK(unchanged == std::vector<float>(40, 1.0f));
    const auto [predivided, updated] = run(4);
    for (const auto& r : predivided) {
      CHECK_FALSE(r.skipped);
      CHECK(r.grad_norm == doctest::Approx(20000.0 * std::sqrt(40.0)));  // 5000 x 4 ranks x 4 / 4
    }
    // p - lr * 20000 = 1 - 0.2 = 0.8, in fp16
    CHECK(updated == std::vector<float>(40, static_cast<float>(zero::fp16(0.8f))));
    // a factor that is not a finite positive number is refused
    zero::single_rank_communicator single;
    std::vector<float> v(4, 1.0f);
    zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::contiguous_partitioner, zero::single_rank_communicator>::options_type bad;
    bad.gradient_predivide_factor = 0;
    CHECK_THROWS_WITH_AS((zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::contiguous_partitioner,
                                          zero::single_rank_communicator>(single, std::vector<zero::parameter<float>>{{"v", {v.data(), 4}}}, bad)),
                         doctest::Contains("gradient_predivide_factor"), zero::usage_error);
  }
}
