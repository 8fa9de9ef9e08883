#pragma once
// The soak run: the stage-2 engine trained for many steps on a small model (harness::model_sizes,
// 511 elements in 12 parameters), each rank reporting its gradients in its own random order per
// step, some parameters left unreported (zero gradients), some steps in two micro-steps, and, for
// fp16, a non-finite gradient now and then (every rank skips that step together). Optionally a
// random delay inside every collective on every rank (the communicators' test hook), so that
// the ranks meet every interleaving. The run's outcome is every rank's parameters, its updated
// values and optimizer state, bit for bit: a run with delays must give exactly the run without.
//
// Used by the thread soak test (soak_test.cpp), the planted-bug program (soak_main.cpp) and the
// MPI soak test (tests/mpi/soak_test.cpp).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/harness.hpp"
#include "zero/zero.hpp"

namespace soak {

struct config {
  std::string name = "soak";
  int steps = 1000;
  std::size_t bucket_elements = 1;
  std::size_t alignment = 1;
  std::size_t staging_buffers = 1;  //!< >= 2: pipelined reductions (non-blocking collectives)
  bool bucketed = true;             //!< bucketed_partitioner, else contiguous_partitioner
  bool fp16 = false;                //!< fp16_mixed with dynamic loss scaling, else bf16_mixed
  std::uint64_t seed = 1;           //!< report orders, skipped reports, delays
  int delay_percent = 0;            //!< chance that a rank sleeps inside a collective (0: no delays)
  int max_delay_us = 100;           //!< the longest sleep
};

// The three configurations both soaks (thread ranks and MPI processes) run, at their own step
// counts: a bucket of 1 element, a prime bucket pipelined with fp16 overflows, a bucket larger
// than the model.
inline config bucket_of_one(int steps) {
  config c;
  c.name = "bucket 1, alignment 1, bucketed, bf16";
  c.steps = steps;
  c.bucket_elements = 1;
  c.alignment = 1;
  c.seed = 11;
  return c;
}
inline config prime_bucket_pipelined(int steps) {
  config c;
  c.name = "bucket 61 (a prime), alignment 4, contiguous, fp16 with overflows, 2 staging buffers";
  c.steps = steps;
  c.bucket_elements = 61;
  c.alignment = 4;
  c.staging_buffers = 2;
  c.bucketed = false;
  c.fp16 = true;
  c.seed = 23;
  return c;
}
inline config bucket_larger_than_model(int steps) {
  config c;
  c.name = "bucket 4096 (more than the model's 511), bucketed, bf16, 3 staging buffers";
  c.steps = steps;
  c.bucket_elements = 4096;
  c.alignment = 16;
  c.staging_buffers = 3;
  c.seed = 37;
  return c;
}

//! Everything a rank holds at the end, as raw bytes.
using outcome = std::vector<std::uint8_t>;

inline void append(outcome& out, const void* data, std::size_t bytes) {
  const auto* b = static_cast<const std::uint8_t*>(data);
  out.insert(out.end(), b, b + bytes);
}

//! FNV-1a of all ranks' outcomes, to print.
inline std::uint64_t digest(const std::vector<outcome>& ranks) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (const auto& r : ranks)
    for (std::uint8_t b : r) h = (h ^ b) * 0x100000001b3ull;
  return h;
}

//! A rank's delays: the hook both communicators call inside each collective. Each rank draws
//! from its own generator on its own thread.
class delays {
 public:
  delays(const config& c, int world) {
    for (int r = 0; r < world; ++r) rng_.emplace_back(c.seed * 1000003u + static_cast<std::uint64_t>(r));
    percent_ = c.delay_percent;
    max_us_ = c.max_delay_us;
  }
  void operator()(int rank) {
    auto& g = rng_[static_cast<std::size_t>(rank)];
    const auto roll = static_cast<int>(g() % 100);
    if (roll >= percent_) return;
    if (roll % 4 == 0) {
      std::this_thread::yield();
      return;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(1 + static_cast<int>(g() % static_cast<unsigned>(max_us_))));
  }

 private:
  std::vector<std::mt19937_64> rng_;
  int percent_ = 0, max_us_ = 1;
};

//! Trains one rank through `c.steps` steps and returns what it holds at the end.
template <class Precision, class Partitioner, class Comm>
outcome train_rank(Comm& comm, const config& c) {
  using engine = zero::optimizer<zero::stage2, Precision, zero::adamw, Partitioner, Comm>;
  using P = typename Precision::param_type;
  using G = typename Precision::grad_type;
  const auto& sizes = harness::model_sizes;
  const int rank = comm.rank();
  std::vector<std::vector<P>> storage;
  std::vector<zero::parameter<P>> params;
  for (std::size_t p = 0; p < sizes.size(); ++p) {
    storage.emplace_back(sizes[p]);
    for (std::size_t i = 0; i < sizes[p]; ++i) storage[p][i] = P(harness::initial_value(p, i));
  }
  for (std::size_t p = 0; p < sizes.size(); ++p) params.push_back({"p" + std::to_string(p), {storage[p].data(), sizes[p]}});
  typename engine::options_type options;
  options.hyperparameters = harness::adamw_hyperparameters();
  options.hyperparameters.lr = 1e-3;
  options.layout.bucket_elements = c.bucket_elements;
  options.layout.alignment = c.alignment;
  options.layout.staging_buffers = c.staging_buffers;
  options.max_grad_norm = 1.0;
  options.threads = 1;
  engine opt(comm, params, options);

  std::vector<std::vector<G>> grads(sizes.size());
  for (std::size_t p = 0; p < sizes.size(); ++p) grads[p].resize(sizes[p]);
  std::vector<std::size_t> order(sizes.size());
  std::mt19937_64 rng(c.seed * 7919u + static_cast<std::uint64_t>(rank));  // this rank's orders and skips
  std::uint64_t skipped = 0;
  for (int step = 0; step < c.steps; ++step) {
    const int micro_steps = step % 5 == 4 ? 2 : 1;
    for (int m = 0; m < micro_steps; ++m) {
      for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
      std::shuffle(order.begin(), order.end(), rng);
      const double scale = opt.loss_scale();
      for (std::size_t p : order) {
        if (rng() % 16 == 0) continue;  // never reported this micro-step: a zero gradient
        for (std::size_t i = 0; i < sizes[p]; ++i) grads[p][i] = harness::gradient<G>(step, rank, p, i, m, 0, scale);
        // fp16: an overflow on one rank now and then; every rank must skip that step together
        if (c.fp16 && step % 97 == 13 && rank == step % comm.world_size() && p == 6 && m == 0)
          grads[p][0] = G(std::numeric_limits<float>::infinity());
        opt.gradient_ready(p, {grads[p].data(), sizes[p]});
      }
      if (m + 1 < micro_steps) opt.end_micro_step();
    }
    const zero::step_report report = opt.step();
    skipped += report.skipped ? 1 : 0;
  }

  outcome out;
  for (const auto& s : storage) append(out, s.data(), s.size() * sizeof(P));
  const auto values = opt.values();
  append(out, values.data(), values.size_bytes());
  for (std::size_t k = 0; k < opt.state_count(); ++k) {
    const auto state = opt.state(k);
    append(out, state.data(), state.size_bytes());
  }
  const std::uint64_t progress[2] = {opt.step_count(), skipped};
  append(out, progress, sizeof progress);
  const double scale = opt.loss_scale();
  append(out, &scale, sizeof scale);
  return out;
}

//! Calls `f.template operator()<Precision, Partitioner>()` with the types `c` names.
template <class F>
outcome with_types(const config& c, F&& f) {
  if (c.fp16) {
    if (c.bucketed) return f.template operator()<zero::fp16_mixed, zero::bucketed_partitioner>();
    return f.template operator()<zero::fp16_mixed, zero::contiguous_partitioner>();
  }
  if (c.bucketed) return f.template operator()<zero::bf16_mixed, zero::bucketed_partitioner>();
  return f.template operator()<zero::bf16_mixed, zero::contiguous_partitioner>();
}

//! The soak on `world` thread ranks: every rank's outcome.
inline std::vector<outcome> run_threads(const config& c, int world) {
  zero::thread_group_options group_options;
  group_options.timeout = std::chrono::seconds(120);
  auto hook = std::make_shared<delays>(c, world);
  if (c.delay_percent > 0)
    group_options.inside_collective = [hook](int rank, zero::collective, std::uint64_t) { (*hook)(rank); };
  zero::thread_group group(world, group_options);
  std::vector<outcome> ranks(static_cast<std::size_t>(world));
  group.run([&](zero::thread_communicator& comm) {
    ranks[static_cast<std::size_t>(comm.rank())] =
        with_types(c, [&]<class Precision, class Partitioner>() { return train_rank<Precision, Partitioner>(comm, c); });
  });
  return ranks;
}

}  // namespace soak
