// The extension points: a user-written policy of each kind plugs into zero::optimizer, and types
// that are not policies are rejected by the concepts.
#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <vector>

#include "zero/zero.hpp"

namespace {

// ---- a user-written Partitioner: lays parameters out last first (the order backward produces
// their gradients, so the first bucket completes early), in Megatron-style buckets ----------
struct backward_order_partitioner {
  zero::partition_plan plan(std::span<const std::size_t> sizes, const zero::partition_options& o) const {
    zero::partition_plan plan = zero::bucketed_partitioner{}.plan(sizes, o);
    std::size_t at = 0;
    for (std::size_t p = sizes.size(); p-- > 0;) {
      plan.param_offset[p] = at;
      at += sizes[p];
    }
    return plan;
  }
};
static_assert(zero::partitioner<backward_order_partitioner>);

// A partitioner whose plan leaves a hole: the engine must refuse it at construction.
struct broken_partitioner {
  zero::partition_plan plan(std::span<const std::size_t> sizes, const zero::partition_options& o) const {
    zero::partition_plan plan = zero::bucketed_partitioner{}.plan(sizes, o);
    plan.units.back().flat_begin += 1;  // leaves element flat_begin uncovered
    return plan;
  }
};

// ---- a user-written Communicator: wraps another one and logs the collectives --------------
template <class Inner>
struct logging_communicator {
  Inner& inner;  // communicators stay put: a wrapper refers to one
  std::vector<zero::collective> log;

  int rank() const { return inner.rank(); }
  int world_size() const { return inner.world_size(); }
  const zero::traffic_counters& traffic() const { return inner.traffic(); }
  template <class T>
  void reduce_scatter(const T* s, T* r, std::size_t n, zero::reduce_op op = zero::reduce_op::sum) {
    log.push_back(zero::collective::reduce_scatter);
    inner.reduce_scatter(s, r, n, op);
  }
  template <class T>
  void all_gather(const T* s, T* r, std::size_t n) {
    log.push_back(zero::collective::all_gather);
    inner.all_gather(s, r, n);
  }
  template <class T>
  void all_reduce(const T* s, T* r, std::size_t n, zero::reduce_op op = zero::reduce_op::sum) {
    log.push_back(zero::collective::all_reduce);
    inner.all_reduce(s, r, n, op);
  }
  template <class T>
  void broadcast(T* d, std::size_t n, int root) {
    log.push_back(zero::collective::broadcast);
    inner.broadcast(d, n, root);
  }
  void barrier() {
    log.push_back(zero::collective::barrier);
    inner.barrier();
  }
};
static_assert(zero::communicator<logging_communicator<zero::thread_communicator>>);

// ---- a user-written update rule: signSGD with momentum ------------------------------------
struct sign_sgd {
  static constexpr std::string_view name = "sign_sgd";
  struct hyperparameters {
    double lr = 0.1, momentum = 0.5;
  };
  struct constants {
    float lr, momentum;
  };
  static constexpr std::size_t state_count(const hyperparameters&) { return 1; }
  static void validate(const hyperparameters& h) {
    if (h.lr < 0) throw zero::usage_error("sign_sgd: lr < 0");
  }
  static constants prepare(const hyperparameters& h, std::uint64_t) {
    return {static_cast<float>(h.lr), static_cast<float>(h.momentum)};
  }
  static void update(const constants& c, float& p, float g, zero::state_ref s) {
    s[0] = c.momentum * s[0] + g;
    p -= c.lr * (s[0] > 0 ? 1.0f : s[0] < 0 ? -1.0f : 0.0f);
  }
};
static_assert(zero::update_rule<sign_sgd>);

// ---- a user-written ActivationCheckpointer: keeps copies ----------------------------------
class copying_checkpointer {
 public:
  void save(zero::checkpoint_id id, zero::raw_span<const std::byte> data, zero::generator_state rng) {
    held_ += data.size;
    peak_ = std::max(peak_, held_);
    saved_[id] = {std::vector<std::byte>(data.begin(), data.end()), rng};
  }
  zero::generator_state restore(zero::checkpoint_id id, zero::raw_span<std::byte> out) {
    const auto& e = saved_.at(id);
    std::copy(e.bytes.begin(), e.bytes.end(), out.data);
    return e.rng;
  }
  void release(zero::checkpoint_id id) {
    held_ -= saved_.at(id).bytes.size();
    saved_.erase(id);
  }
  std::size_t bytes_held() const { return held_; }
  std::size_t peak_bytes_held() const { return peak_; }

 private:
  struct entry {
    std::vector<std::byte> bytes;
    zero::generator_state rng;
  };
  std::map<zero::checkpoint_id, entry> saved_;
  std::size_t held_ = 0, peak_ = 0;
};
static_assert(zero::activation_checkpointer<copying_checkpointer>);

// ---- things that are not policies ----------------------------------------------------------
struct not_a_partitioner {
  int plan(int) const { return 0; }
};
struct rule_without_state_count {
  struct hyperparameters {};
  struct constants {};
  static constexpr std::string_view name = "x";
  static void validate(const hyperparameters&) {}
  static constants prepare(const hyperparameters&, std::uint64_t) { return {}; }
  static void update(const constants&, float&, float, zero::state_ref) {}
};
struct communicator_without_all_gather {
  int rank() const { return 0; }
  int world_size() const { return 1; }
  zero::traffic_counters traffic() const { return {}; }
  void barrier() {}
};
static_assert(!zero::partitioner<not_a_partitioner>);
static_assert(!zero::update_rule<rule_without_state_count>);
static_assert(!zero::communicator<communicator_without_all_gather>);
static_assert(!zero::activation_checkpointer<not_a_partitioner>);
static_assert(!zero::precision_bundle<float>);

// optimizer_with: the policies in any order, recognized by their concepts, defaults for the rest
static_assert(std::is_same_v<zero::optimizer_with<zero::stage2>, zero::optimizer<zero::stage2>>);
static_assert(std::is_same_v<zero::optimizer_with<zero::stage1, zero::bucketed_partitioner, zero::fp32_precision>,
                             zero::optimizer<zero::stage1, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>>);
static_assert(std::is_same_v<zero::optimizer_with<zero::stage2, zero::single_rank_communicator, sign_sgd, copying_checkpointer>,
                             zero::optimizer<zero::stage2, zero::bf16_mixed, sign_sgd, zero::contiguous_partitioner,
                                             zero::single_rank_communicator, copying_checkpointer>>);

}  // namespace

TEST_SUITE("unit") {
  TEST_CASE("policies: a user-written partitioner / communicator / rule and checkpointer compose into one optimizer") {
    using O = zero::optimizer<zero::stage2, zero::fp32_precision, sign_sgd, backward_order_partitioner,
                              logging_communicator<zero::thread_communicator>, copying_checkpointer>;
    constexpr int world = 3;
    const std::vector<std::size_t> sizes = {5, 1, 12, 2};
    zero::thread_group group(world);
    std::vector<std::vector<float>> finals(world);
    group.run([&](zero::thread_communicator& inner) {
      logging_communicator<zero::thread_communicator> comm{inner, {}};
      std::vector<std::vector<float>> storage;
      std::vector<zero::parameter<float>> params;
      for (std::size_t s : sizes) storage.emplace_back(s, 1.0f);
      for (auto& s : storage) params.push_back({"", {s.data(), s.size()}});
      O::options_type options;
      options.layout.alignment = 1;
      options.layout.bucket_elements = 4;
      O opt(comm, params, options);
      // the last parameter comes first in the flat buffer; pieces follow the user's layout
      CHECK(opt.plan().param_offset[3] == 0);
      CHECK(opt.plan().param_offset[0] == 15);
      for (const auto& piece : opt.owned_pieces()) {
        CHECK(piece.rank == comm.rank());
        CHECK(piece.flat_offset == opt.plan().param_offset[piece.param] + piece.param_offset);
      }
      // the rule: gradient of element i of param p is (i + p + rank) - 3, averaged over ranks
      std::vector<std::vector<float>> grads;
      for (std::size_t p = 0; p < sizes.size(); ++p) {
        grads.emplace_back(sizes[p]);
        for (std::size_t i = 0; i < sizes[p]; ++i) grads[p][i] = static_cast<float>(i + p + static_cast<std::size_t>(comm.rank())) - 3.0f;
      }
      for (int step = 0; step < 2; ++step) {
        for (std::size_t p = 0; p < sizes.size(); ++p) opt.gradient_ready(p, {grads[p].data(), grads[p].size()});
        opt.step();
      }
      // the checkpointer travels with the optimizer
      std::vector<float> activation{1, 2, 3}, restored(3);
      opt.checkpointer().save(7, {reinterpret_cast<const std::byte*>(activation.data()), 12}, {42, 1});
      CHECK(opt.checkpointer().bytes_held() == 12);
      CHECK(opt.checkpointer().restore(7, {reinterpret_cast<std::byte*>(restored.data()), 12}) == zero::generator_state{42, 1});
      CHECK(restored == activation);
      opt.checkpointer().release(7);
      CHECK(opt.checkpointer().bytes_held() == 0);
      CHECK(opt.checkpointer().peak_bytes_held() == 12);
      // the communicator saw the collectives: construction's all-gather, then per step
      // reduce-scatters and all-gathers, one per unit
      CHECK(comm.log.front() == zero::collective::all_gather);
      const auto reduce_scatters = std::count(comm.log.begin(), comm.log.end(), zero::collective::reduce_scatter);
      CHECK(static_cast<std::size_t>(reduce_scatters) == 2 * opt.plan().units.size());
      std::vector<float> all;
      for (auto& s : storage) all.insert(all.end(), s.begin(), s.end());
      finals[static_cast<std::size_t>(comm.rank())] = all;
    });
    // expected, element by element: average gradient g = (i + p + 1) - 3 (ranks 0, 1, 2);
    // momentum buffer after step 1: g, after step 2: 1.5 g; each step moves by -0.1 sign(buf)
    std::vector<float> expected;
    for (std::size_t p = 0; p < sizes.size(); ++p)
      for (std::size_t i = 0; i < sizes[p]; ++i) {
        const float g = static_cast<float>(i + p + 1) - 3.0f;
        const float sign = g > 0 ? 1.0f : g < 0 ? -1.0f : 0.0f;
        expected.push_back(1.0f - 0.1f * sign - 0.1f * sign);
      }
    for (const auto& f : finals) {
      REQUIRE(f.size() == expected.size());
      for (std::size_t i = 0; i < f.size(); ++i) CHECK(f[i] == doctest::Approx(expected[i]).epsilon(1e-6));
    }
  }

  TEST_CASE("policies: a partitioner whose plan does not tile the buffer is refused with the reason") {
    zero::single_rank_communicator comm;
    std::vector<float> w(40, 1.0f);
    std::vector<zero::parameter<float>> params{{"w", {w.data(), w.size()}}};
    using O = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, broken_partitioner, zero::single_rank_communicator>;
    CHECK_THROWS_WITH_AS(O(comm, params), doctest::Contains("invalid partition plan: slices do not tile the flat buffer"), zero::usage_error);
  }
}
