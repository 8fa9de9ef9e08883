#pragma once
// The checkpoint tests' driver: a small model whose parameter sizes do not divide evenly, trained
// data-parallel on thread ranks, saved, loaded at another world size (another partitioner,
// stage, bucket size, alignment) and trained on.
//
// Gradients are designed so that "continued training equals an uninterrupted run" is a bitwise
// statement at any world sizes: every step has a global batch of 120 examples (divisible by 1,
// 2, 3, 4, 5, 8); an example's gradient is a multiple of 2^-12 below 1/2 in magnitude, so every
// partial sum is exact in fp32; rank r of W reports the sum over its 120/W examples, and the
// engine's 1/W average is cancelled exactly by a fixed loss scale of 1/W (W * fl(1/W) == 1 in
// double for these W). The update therefore sees the same global gradient, bit for bit, at every
// world size, and any difference is the checkpoint's fault.

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include "zero/checkpoint.hpp"
#include "zero/zero.hpp"

namespace ckpt {

namespace fs = std::filesystem;

// 12 parameters, 511 elements.
inline const std::vector<std::size_t> model_sizes = {1, 3, 17, 1, 64, 5, 129, 2, 31, 7, 250, 1};
inline constexpr int global_batch = 120;

inline std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
inline std::uint64_t hash(std::uint64_t a, std::uint64_t b, std::uint64_t c, std::uint64_t d) {
  return mix(mix(mix(mix(a) ^ b) ^ c) ^ d);
}

inline float initial_value(std::size_t param, std::size_t i) {
  const std::uint64_t h = hash(0xfeed, 7, param, i);
  return static_cast<float>(static_cast<double>(h >> 11) * 0x1.0p-53 * 2.0 - 1.0) + (h & 1 ? 0.5f : -0.5f);
}

// The gradient example e contributes to element i of parameter p at step t: k * 2^-12, |k| < 2048.
inline float example_gradient(int step, int example, std::size_t param, std::size_t i) {
  const std::uint64_t h = hash(static_cast<std::uint64_t>(step) + 1, static_cast<std::uint64_t>(example), param, i);
  return static_cast<float>(static_cast<int>(h % 4095) - 2047) * 0x1.0p-12f;
}

// What rank `rank` of `world` reports: the sum over its share of the global batch (exact).
inline float rank_gradient(int step, int rank, int world, std::size_t param, std::size_t i) {
  const int per = global_batch / world;
  float sum = 0;
  for (int e = rank * per; e < (rank + 1) * per; ++e) sum += example_gradient(step, e, param, i);
  return sum;
}

// A unique directory under the system's temporary directory, removed at scope exit.
struct temp_dir {
  fs::path path;
  temp_dir() {
    static std::atomic<int> counter{0};
    std::random_device device;
    path = fs::temp_directory_path() / ("zero-checkpoint-test-" + std::to_string(::getpid()) + "-" +
                                        std::to_string(counter++) + "-" + std::to_string(device()));
    fs::create_directories(path);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
};

// Everything a run ends with, assembled over ranks in full-parameter order.
struct snapshot {
  std::uint64_t step = 0;
  zero::loss_scaler::state scaler{};
  std::vector<std::vector<float>> values;                 // per parameter (value type, widened)
  std::vector<std::vector<std::vector<float>>> state;     // [slot][parameter]
  std::vector<std::vector<std::vector<float>>> params;    // [rank][parameter] framework values
  std::vector<std::size_t> order;                         // the layout order (rank 0's plan)
  std::vector<double> group_lr;                           // each parameter group's learning rate (rank 0)
  bool empty() const { return values.empty(); }
};

inline bool same_bits(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t p = 0; p < a.size(); ++p) {
    if (a[p].size() != b[p].size()) return false;
    if (!a[p].empty() && std::memcmp(a[p].data(), b[p].data(), a[p].size() * sizeof(float)) != 0) return false;
  }
  return true;
}

// The largest relative difference, for the tolerance-based checks.
inline double max_relative(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  double worst = 0;
  for (std::size_t p = 0; p < a.size(); ++p)
    for (std::size_t i = 0; i < a[p].size(); ++i) {
      const double x = a[p][i], y = b[p][i];
      worst = std::max(worst, std::fabs(x - y) / std::max(std::fabs(y), 1e-3));
    }
  return worst;
}

// Checks two snapshots agree bit for bit; `with_params`: the framework's values on every rank too.
inline void check_same(const snapshot& a, const snapshot& b, bool with_params = true, bool with_scaler = false) {
  CHECK(a.step == b.step);
  if (with_scaler) {
    CHECK(a.scaler.scale == b.scaler.scale);
    CHECK(a.scaler.hysteresis_left == b.scaler.hysteresis_left);
    CHECK(a.scaler.iteration == b.scaler.iteration);
    CHECK(a.scaler.last_overflow == b.scaler.last_overflow);
  }
  CHECK(same_bits(a.values, b.values));
  REQUIRE(a.state.size() == b.state.size());
  for (std::size_t k = 0; k < a.state.size(); ++k) CHECK(same_bits(a.state[k], b.state[k]));
  if (with_params) {
    REQUIRE(!a.params.empty());
    REQUIRE(!b.params.empty());
    for (const auto& r : b.params) CHECK(same_bits(a.params[0], r));
  }
}

enum class gradients { exact, noisy };

struct layout {
  std::size_t bucket_elements = 64;
  std::size_t alignment = 4;
};

// One session on `world` thread ranks: optionally load, train steps [first, last), optionally
// save. Returns the snapshot after loading (or construction) and the final one.
struct session {
  int world = 1;
  layout shape{};
  int first = 0, last = 0;
  std::optional<fs::path> load_from{};
  std::optional<fs::path> save_to{};
  gradients kind = gradients::exact;
  // exact gradients: a fixed loss scale of 1/world (see the file comment); false: each rank
  // reports world/120 times its sum, so that the engine's 1/world average gives the global mean
  bool cancel_average = true;
  bool catch_save_errors = false;  // record save errors per rank instead of failing the run
  std::function<void(int rank, zero::checkpoint_options&)> configure_save{};  // e.g. inject a writer
  std::vector<std::uint32_t> groups{};  // each parameter's group (empty: all in group 0)
  zero::load_options load{};
};

struct session_result {
  snapshot loaded;  // right after construction and load
  snapshot final;   // after the last step (and the save)
  std::vector<zero::checkpoint_info> saved, load_info;
  std::vector<std::string> save_errors;  // per rank, when catch_save_errors ("" if it succeeded)
  std::vector<int> save_error_kinds;     // per rank: -1 or the checkpoint_error kind
};

template <class Opt>
void take_snapshot(Opt& opt, snapshot& into, std::mutex& lock) {
  using P = typename Opt::precision_type;
  constexpr bool sharded = Opt::stage_value != zero::stage0;
  const auto& plan = opt.plan();
  // the parameters as this rank sees them (stage 3: each gathered, a collective, so before the lock)
  std::vector<std::vector<float>> parameters(plan.param_size.size());
  for (std::size_t p = 0; p < plan.param_size.size(); ++p) {
    if constexpr (Opt::stage_value == zero::stage3) opt.gather(opt.gather_group_of(p));  // (each its own group)
    const auto span = opt.parameter_values(p);
    for (std::size_t i = 0; i < span.size; ++i) parameters[p].push_back(static_cast<float>(span[i]));
    if constexpr (Opt::stage_value == zero::stage3) opt.release(opt.gather_group_of(p));
  }
  std::lock_guard guard(lock);
  if (into.values.empty()) {
    into.values.resize(plan.param_size.size());
    for (std::size_t p = 0; p < plan.param_size.size(); ++p) into.values[p].assign(plan.param_size[p], 0.0f);
    into.state.assign(opt.state_count(), into.values);
  }
  into.step = opt.step_count();
  into.scaler = opt.scaler().current();
  if (opt.rank() == 0) {
    into.order = plan.order();
    into.group_lr.clear();
    for (std::size_t g = 0; g < opt.group_count(); ++g) into.group_lr.push_back(opt.hyperparameters(g).lr);
  }
  for (const auto& piece : opt.owned_pieces()) {
    const std::size_t at = sharded ? piece.shard_offset : piece.flat_offset;
    for (std::size_t i = 0; i < piece.count; ++i) {
      float v;
      if constexpr (P::has_master || sharded) v = static_cast<float>(opt.values()[at + i]);
      else v = static_cast<float>(opt.parameter_values(piece.param)[piece.param_offset + i]);
      into.values[piece.param][piece.param_offset + i] = v;
      for (std::size_t k = 0; k < opt.state_count(); ++k) into.state[k][piece.param][piece.param_offset + i] = opt.state(k)[at + i];
    }
  }
  into.params.resize(static_cast<std::size_t>(opt.world_size()));
  auto& mine = into.params[static_cast<std::size_t>(opt.rank())];
  mine = std::move(parameters);
}

template <class Opt>
session_result run(const session& s, typename Opt::options_type options = {}) {
  using Param = typename Opt::param_type;
  using Grad = typename Opt::grad_type;
  session_result result;
  result.saved.resize(static_cast<std::size_t>(s.world));
  result.load_info.resize(static_cast<std::size_t>(s.world));
  std::mutex lock;
  options.layout.bucket_elements = s.shape.bucket_elements;
  options.layout.alignment = s.shape.alignment;
  result.save_errors.resize(static_cast<std::size_t>(s.world));
  result.save_error_kinds.assign(static_cast<std::size_t>(s.world), -1);
  if (s.kind == gradients::exact && s.cancel_average) {
    options.loss_scale.kind = zero::loss_scale_options::mode::fixed;
    options.loss_scale.fixed_scale = 1.0 / s.world;
  }
  if constexpr (Opt::stage_value == zero::stage3)  // set before the ranks start: they share `options`
    options.layout.gather_buffer_elements = *std::max_element(model_sizes.begin(), model_sizes.end());
  zero::thread_group group(s.world, {std::chrono::seconds(60)});
  group.run([&](zero::thread_communicator& comm) {
    const int rank = comm.rank();
    std::vector<std::vector<Param>> storage(model_sizes.size());
    std::vector<zero::parameter<Param>> params;
    for (std::size_t p = 0; p < model_sizes.size(); ++p) {
      for (std::size_t i = 0; i < model_sizes[p]; ++i) storage[p].push_back(Param(initial_value(p, i)));
      params.push_back({"layer" + std::to_string(p), {storage[p].data(), storage[p].size()}, 1,
                        s.groups.empty() ? 0u : s.groups[p]});
      params.back().gather_group = static_cast<std::uint32_t>(p);  // stage 3: each layer gathered alone
    }
    Opt opt(comm, params, options);
    if (s.load_from) result.load_info[static_cast<std::size_t>(rank)] = zero::load_checkpoint(opt, *s.load_from, s.load);
    take_snapshot(opt, result.loaded, lock);
    std::vector<std::vector<Grad>> grads(model_sizes.size());
    for (int t = s.first; t < s.last; ++t) {
      for (std::size_t q = model_sizes.size(); q-- > 0;) {  // backward order
        auto& g = grads[q];
        g.resize(model_sizes[q]);
        for (std::size_t i = 0; i < g.size(); ++i) {
          if (s.kind == gradients::exact && s.cancel_average) {
            g[i] = Grad(rank_gradient(t, rank, s.world, q, i));
          } else if (s.kind == gradients::exact) {  // the rank's share of the global mean, rounded
            g[i] = Grad(rank_gradient(t, rank, s.world, q, i) * (static_cast<float>(s.world) / global_batch));
          } else {  // a rank's own noise, scaled by the loss scale (fp16: overflows some steps)
            const std::uint64_t h = hash(static_cast<std::uint64_t>(t) + 99, static_cast<std::uint64_t>(rank), q, i);
            const double u = static_cast<double>(h >> 11) * 0x1.0p-53 * 4.0 - 2.0;
            g[i] = Grad(static_cast<float>(u * opt.loss_scale()));
          }
        }
        opt.gradient_ready(q, {g.data(), g.size()});
      }
      opt.step();
    }
    if (s.save_to) {
      zero::checkpoint_options save_options;
      if (s.configure_save) s.configure_save(rank, save_options);
      try {
        result.saved[static_cast<std::size_t>(rank)] = zero::save_checkpoint(opt, *s.save_to, save_options);
      } catch (const zero::checkpoint_error& e) {
        if (!s.catch_save_errors) throw;
        result.save_errors[static_cast<std::size_t>(rank)] = e.what();
        result.save_error_kinds[static_cast<std::size_t>(rank)] = static_cast<int>(e.reason());
      }
    }
    take_snapshot(opt, result.final, lock);
  });
  return result;
}

// Reads a whole file / writes it back (to corrupt, truncate or patch it).
inline std::vector<char> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
inline void write_bytes(const fs::path& p, const std::vector<char>& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace ckpt
