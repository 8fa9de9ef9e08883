// Unreported gradients through checkpoints (issue 17): under `unreported_gradients::skip` each
// parameter keeps its own update count (`step_of`), which format version 4 saves. Saved at world 3
// stage 2 with some parameters behind the optimizer's step, loaded at world 2 stage 1 (another
// partitioner) and at world 3 stage 2, the continued run is bitwise the run that never stopped
// (gradients exact at every world size: tests/checkpoint/fixture.hpp); the same run with the
// counts dropped is not. A version 3 file (no counts) and a default-mode file load into skip with
// every count equal to the step; a skip file loads into the default mode.
#include <doctest/doctest.h>

#include <cstring>
#include <mutex>
#include <optional>
#include <vector>

#include "checkpoint/fixture.hpp"

namespace {

using ckpt::model_sizes;
constexpr auto skip = zero::unreported_gradients::skip;
constexpr auto zero_mode = zero::unreported_gradients::zero;

// Whether rank r reports parameter p at step t. The global gradient does not depend on the world
// size: a parameter is reported by every rank or by none, or (parameter 8, some steps) by rank 0
// alone with the whole batch's sum.
bool reports(int t, int r, std::size_t p) {
  if (p == 5) return t >= 3;  // first reported at step 4
  if (p == 8 && t % 3 == 1) return r == 0;
  if (p == 1 || p == 6 || p == 10) return ckpt::mix(static_cast<std::uint64_t>(t) * 7 + p) % 3 != 0;
  return true;
}

struct session {
  int world = 1;
  int first = 0, last = 0;
  zero::unreported_gradients mode = skip;
  std::optional<ckpt::fs::path> load_from{}, save_to{};
  const std::vector<std::vector<std::byte>>* load_bytes = nullptr;  // every saved rank's bytes (load_state)
  std::vector<std::vector<std::byte>>* save_bytes = nullptr;        // save_state, per rank
  bool forget_counts = false;  // after loading, every parameter's count set to the step (as without the counts)
};

struct result {
  ckpt::snapshot final;
  std::vector<std::vector<std::uint64_t>> loaded_steps, final_steps;  // [rank][param]: step_of
};

template <class Opt>
result run(const session& s) {
  using Param = typename Opt::param_type;
  using Grad = typename Opt::grad_type;
  result out;
  out.loaded_steps.resize(static_cast<std::size_t>(s.world));
  out.final_steps.resize(static_cast<std::size_t>(s.world));
  if (s.save_bytes != nullptr) s.save_bytes->assign(static_cast<std::size_t>(s.world), {});
  std::mutex lock;
  typename Opt::options_type options;
  options.layout.bucket_elements = 64;
  options.layout.alignment = 4;
  options.loss_scale.kind = zero::loss_scale_options::mode::fixed;  // cancels the 1/world average exactly
  options.loss_scale.fixed_scale = 1.0 / s.world;
  options.unreported = s.mode;
  options.hyperparameters = {.lr = 1e-2, .weight_decay = 0.1};
  zero::thread_group group(s.world, {std::chrono::seconds(60)});
  group.run([&](zero::thread_communicator& comm) {
    const int rank = comm.rank();
    const auto ur = static_cast<std::size_t>(rank);
    std::vector<std::vector<Param>> storage(model_sizes.size());
    std::vector<zero::parameter<Param>> params;
    for (std::size_t p = 0; p < model_sizes.size(); ++p) {
      for (std::size_t i = 0; i < model_sizes[p]; ++i) storage[p].push_back(Param(ckpt::initial_value(p, i)));
      params.push_back({"layer" + std::to_string(p), {storage[p].data(), storage[p].size()}});
    }
    Opt opt(comm, params, options);
    if (s.load_from) zero::load_checkpoint(opt, *s.load_from);
    if (s.load_bytes != nullptr) {
      std::vector<std::span<const std::byte>> all(s.load_bytes->begin(), s.load_bytes->end());
      zero::load_state(opt, std::span<const std::span<const std::byte>>(all));
    }
    if (s.forget_counts) opt.restore_parameter_steps(std::vector<std::uint64_t>(model_sizes.size(), opt.step_count()));
    for (std::size_t p = 0; p < model_sizes.size(); ++p) out.loaded_steps[ur].push_back(opt.step_of(p));
    std::vector<std::vector<Grad>> grads(model_sizes.size());
    for (int t = s.first; t < s.last; ++t) {
      for (std::size_t q = model_sizes.size(); q-- > 0;) {  // backward order
        if (!reports(t, rank, q)) continue;
        auto& g = grads[q];
        g.resize(model_sizes[q]);
        const bool alone = q == 8 && t % 3 == 1;  // rank 0 reports the whole batch
        for (std::size_t i = 0; i < g.size(); ++i) {
          float v = 0;
          if (alone)
            for (int r = 0; r < s.world; ++r) v += ckpt::rank_gradient(t, r, s.world, q, i);
          else
            v = ckpt::rank_gradient(t, rank, s.world, q, i);
          g[i] = Grad(v);
        }
        opt.gradient_ready(q, {g.data(), g.size()});
      }
      opt.step();
    }
    if (s.save_to) zero::save_checkpoint(opt, *s.save_to);
    if (s.save_bytes != nullptr) (*s.save_bytes)[ur] = zero::save_state(opt);
    for (std::size_t p = 0; p < model_sizes.size(); ++p) out.final_steps[ur].push_back(opt.step_of(p));
    ckpt::take_snapshot(opt, out.final, lock);
  });
  return out;
}

// The same rank file as a version 3 writer wrote it: no unreported mode, no per-parameter counts.
std::vector<std::byte> as_version3(const std::vector<std::byte>& v4) {
  zero::checkpoint_header h = zero::parse_header(v4, "v4.zck");
  REQUIRE(h.version == 4);
  const auto saved = h.sections;
  h.version = 3;
  h.param_steps.clear();
  h.unreported = 0;
  std::uint64_t next = zero::first_section_offset(zero::encode_header_body(h).size());
  for (auto& s : h.sections) {
    s.offset = next;
    next = (s.offset + s.bytes + 63) / 64 * 64;
  }
  std::vector<std::byte> out = zero::encode_header(h);
  out.resize(h.sections.back().offset + h.sections.back().bytes, std::byte{0});
  for (std::size_t k = 0; k < saved.size(); ++k)
    std::memcpy(out.data() + h.sections[k].offset, v4.data() + saved[k].offset, saved[k].bytes);
  return out;
}

using O32 = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>;
using O21 = zero::optimizer<zero::stage1, zero::fp32_precision, zero::adamw, zero::contiguous_partitioner>;
using O21b = zero::optimizer<zero::stage1, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>;

void check_values_and_state(const ckpt::snapshot& a, const ckpt::snapshot& b) {
  CHECK(a.step == b.step);
  CHECK(ckpt::same_bits(a.values, b.values));
  REQUIRE(a.state.size() == b.state.size());
  for (std::size_t k = 0; k < a.state.size(); ++k) CHECK(ckpt::same_bits(a.state[k], b.state[k]));
  for (const auto& r : a.params) CHECK(ckpt::same_bits(r, b.params[0]));  // every rank's parameters
}

}  // namespace

TEST_SUITE("checkpoint") {
  TEST_CASE("unreported gradients: per-parameter step counts survive a save at world 3 stage 2 and a load at world 2 stage 1") {
    const result whole = run<O32>({.world = 3, .first = 0, .last = 12});
    ckpt::temp_dir dir;
    const result first = run<O32>({.world = 3, .first = 0, .last = 6, .save_to = dir.path});
    // some parameters are behind the optimizer's 6 steps (parameter 5 was first reported at step 4)
    CHECK(first.final_steps[0][5] == 3);
    CHECK(first.final_steps[0][0] == 6);
    const zero::checkpoint_header h = zero::detail::read_file(dir.path / "step-6" / "rank-1-of-3.zck").header();
    CHECK(h.version == zero::checkpoint_format::version);
    CHECK(h.unreported == 1);
    CHECK(h.param_steps == first.final_steps[0]);

    SUBCASE("at world 2 stage 1 under the contiguous partitioner") {
      const result resumed = run<O21>({.world = 2, .first = 6, .last = 12, .load_from = dir.path});
      for (const auto& steps : resumed.loaded_steps) CHECK(steps == first.final_steps[0]);
      for (const auto& steps : resumed.final_steps) CHECK(steps == whole.final_steps[0]);
      check_values_and_state(resumed.final, whole.final);
    }
    SUBCASE("at the same world and stage") {
      const result resumed = run<O32>({.world = 3, .first = 6, .last = 12, .load_from = dir.path});
      for (const auto& steps : resumed.final_steps) CHECK(steps == whole.final_steps[0]);
      check_values_and_state(resumed.final, whole.final);
    }
    SUBCASE("without the counts the continued run differs") {
      const result resumed = run<O21>({.world = 2, .first = 6, .last = 12, .load_from = dir.path, .forget_counts = true});
      CHECK(!ckpt::same_bits(resumed.final.values, whole.final.values));
    }
  }

  TEST_CASE("unreported gradients: a version 3 or default-mode checkpoint loads with every count equal to the step") {
    std::vector<std::vector<std::byte>> skip_bytes, zero_bytes;
    const result skipped = run<O21b>({.world = 2, .first = 0, .last = 6, .save_bytes = &skip_bytes});
    const result zeroed = run<O21b>({.world = 2, .first = 0, .last = 6, .mode = zero_mode, .save_bytes = &zero_bytes});
    CHECK(skipped.final_steps[0][5] == 3);
    for (auto n : zeroed.final_steps[0]) CHECK(n == 6);
    const zero::checkpoint_header hz = zero::parse_header(zero_bytes[0], "zero.zck");
    CHECK(hz.unreported == 0);
    CHECK(hz.param_steps == std::vector<std::uint64_t>(model_sizes.size(), 6));

    SUBCASE("version 3 into skip: the values and state, every count the step") {
      std::vector<std::vector<std::byte>> v3;
      for (const auto& b : skip_bytes) v3.push_back(as_version3(b));
      CHECK(zero::parse_header(v3[0], "v3.zck").param_steps.empty());
      const result loaded = run<O21b>({.world = 2, .first = 6, .last = 6, .load_bytes = &v3});
      for (const auto& steps : loaded.loaded_steps) CHECK(steps == std::vector<std::uint64_t>(model_sizes.size(), 6));
      check_values_and_state(loaded.final, skipped.final);
    }
    SUBCASE("the default mode's file into skip") {
      const result loaded = run<O21b>({.world = 2, .first = 6, .last = 6, .load_bytes = &zero_bytes});
      for (const auto& steps : loaded.loaded_steps) CHECK(steps == std::vector<std::uint64_t>(model_sizes.size(), 6));
      check_values_and_state(loaded.final, zeroed.final);
    }
    SUBCASE("a skip file into the default mode: the counts are the step from then on") {
      const result loaded = run<O21b>({.world = 2, .first = 6, .last = 6, .mode = zero_mode, .load_bytes = &skip_bytes});
      for (const auto& steps : loaded.loaded_steps) CHECK(steps == std::vector<std::uint64_t>(model_sizes.size(), 6));
      check_values_and_state(loaded.final, skipped.final);
    }
    SUBCASE("a count above the step is refused") {
      zero::checkpoint_header h = zero::parse_header(skip_bytes[0], "skip.zck");
      h.param_steps[2] = 7;
      const auto bytes = zero::encode_header(h);
      CHECK_THROWS_WITH_AS(zero::parse_header(bytes, "bad.zck"), doctest::Contains("parameter #2 has 7 updates, more than the 6 steps taken"),
                           zero::checkpoint_error);
    }
  }
}
