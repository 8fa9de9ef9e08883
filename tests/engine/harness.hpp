#pragma once
// The equivalence harness: runs a zero::optimizer configuration with N thread ranks on a small
// model whose parameter sizes do not divide evenly, each rank reporting its own gradients in
// its own random order (or in backward order, last parameter first), and compares every step
// with a plain double-precision reference applied to the rank-averaged gradients.
//
// Framework mode (`run_options::framework`, on by default: every equivalence test runs in it)
// drives the engine as a training framework does: the parameters are registered in model order,
// each gradient lives in a buffer of its own from the moment backward produces it, and the moment
// the engine releases it (`on_gradients_released`) the buffer is overwritten with NaN and handed
// to the next gradient of that parameter, so that any later read by the engine shows up as a
// wrong result. The harness counts the gradient bytes the framework holds between the engine's
// calls and reports the peak. With `declare_unused`, a parameter a rank does not report in a
// micro-step is declared unused (`gradient_unused`), as a framework that knows does; without,
// it is simply never reported (it counts as zero either way).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "zero/zero.hpp"

namespace harness {

// 12 parameters, 511 elements: 1-element ones, ones smaller than any world size > 3, primes.
inline const std::vector<std::size_t> model_sizes = {1, 3, 17, 1, 64, 5, 129, 2, 31, 7, 250, 1};

inline std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// A deterministic value in [-1, 1) for (step, rank, param, element).
inline float noise(std::uint64_t a, std::uint64_t b, std::uint64_t c, std::uint64_t d) {
  const std::uint64_t h = mix(mix(mix(mix(a) ^ b) ^ c) ^ d);
  return static_cast<float>(static_cast<double>(h >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

// Initial parameter values, magnitude in [0.5, 1.5] so relative errors are meaningful.
inline float initial_value(std::size_t param, std::size_t i) {
  const float u = noise(0xfeed, 0, param, i);
  return (u < 0 ? -1.0f : 1.0f) * (1.0f + 0.5f * std::fabs(u) * 2.0f - 0.5f);
}

// The gradient rank r reports for element i of parameter p at step t (micro-step m, use u of
// a shared weight), multiplied by the loss scale, in the gradient type.
template <class G>
G gradient(int step, int rank, std::size_t param, std::size_t i, int micro = 0, int use = 0, double scale = 1) {
  const std::uint64_t t = static_cast<std::uint64_t>(step) + 1 + 1000u * static_cast<std::uint64_t>(micro) +
                          100000u * static_cast<std::uint64_t>(use);
  return G(static_cast<float>(noise(t, static_cast<std::uint64_t>(rank), param, i) * scale));
}

// ---- double-precision references of the update rules (PyTorch's algorithms) ----------------

struct reference_state {
  std::vector<double> p, m, v, vmax, buf;
};

// Adam and AdamW differ only in where weight decay goes: L2 into the gradient, or decoupled.
template <class H>
void reference_adam(const H& h, std::uint64_t t, reference_state& s, const std::vector<double>& grad, bool decoupled) {
  for (std::size_t i = 0; i < s.p.size(); ++i) {
    double g = h.maximize ? -grad[i] : grad[i];
    if (decoupled) s.p[i] *= 1 - h.lr * h.weight_decay;
    else g += h.weight_decay * s.p[i];
    s.m[i] = h.beta1 * s.m[i] + (1 - h.beta1) * g;
    s.v[i] = h.beta2 * s.v[i] + (1 - h.beta2) * g * g;
    s.vmax[i] = std::max(s.vmax[i], s.v[i]);
    const double second = h.amsgrad ? s.vmax[i] : s.v[i];
    const double bc1 = 1 - std::pow(h.beta1, static_cast<double>(t));
    const double bc2 = 1 - std::pow(h.beta2, static_cast<double>(t));
    s.p[i] -= h.lr / bc1 * s.m[i] / (std::sqrt(second) / std::sqrt(bc2) + h.eps);
  }
}

inline void reference_update(const zero::adamw::hyperparameters& h, std::uint64_t t, reference_state& s,
                             const std::vector<double>& grad) {
  reference_adam(h, t, s, grad, true);
}

inline void reference_update(const zero::adam::hyperparameters& h, std::uint64_t t, reference_state& s,
                             const std::vector<double>& grad) {
  reference_adam(h, t, s, grad, false);
}

inline void reference_update(const zero::sgd::hyperparameters& h, std::uint64_t t, reference_state& s,
                             const std::vector<double>& grad) {
  for (std::size_t i = 0; i < s.p.size(); ++i) {
    double g = h.maximize ? -grad[i] : grad[i];
    g += h.weight_decay * s.p[i];
    if (h.momentum != 0) {
      s.buf[i] = t == 1 ? g : h.momentum * s.buf[i] + (1 - h.dampening) * g;
      g = h.nesterov ? g + h.momentum * s.buf[i] : s.buf[i];
    }
    s.p[i] -= h.lr * g;
  }
}

inline void reference_update(const zero::lion::hyperparameters& h, std::uint64_t, reference_state& s,
                             const std::vector<double>& grad) {
  for (std::size_t i = 0; i < s.p.size(); ++i) {
    const double c = h.beta1 * s.m[i] + (1 - h.beta1) * grad[i];
    s.p[i] = s.p[i] * (1 - h.lr * h.weight_decay) - h.lr * (c > 0 ? 1.0 : c < 0 ? -1.0 : 0.0);
    s.m[i] = h.beta2 * s.m[i] + (1 - h.beta2) * grad[i];
  }
}

inline void reference_update(const zero::adagrad::hyperparameters& h, std::uint64_t t, reference_state& s,
                             const std::vector<double>& grad) {
  if (t == 1) s.v.assign(s.p.size(), h.initial_accumulator_value);
  for (std::size_t i = 0; i < s.p.size(); ++i) {
    double g = h.maximize ? -grad[i] : grad[i];
    g += h.weight_decay * s.p[i];
    s.v[i] += g * g;
    s.p[i] -= h.lr / (1 + static_cast<double>(t - 1) * h.lr_decay) * g / (std::sqrt(s.v[i]) + h.eps);
  }
}

inline void reference_update(const zero::lamb::hyperparameters& h, std::uint64_t t, reference_state& s,
                             const std::vector<double>& grad) {
  const double bc1 = 1 - std::pow(h.beta1, static_cast<double>(t));
  const double bc2 = 1 - std::pow(h.beta2, static_cast<double>(t));
  std::vector<double> u(s.p.size());
  double p_norm = 0, u_norm = 0;
  for (std::size_t i = 0; i < s.p.size(); ++i) {
    s.m[i] = h.beta1 * s.m[i] + (1 - h.beta1) * grad[i];
    s.v[i] = h.beta2 * s.v[i] + (1 - h.beta2) * grad[i] * grad[i];
    u[i] = (s.m[i] / bc1) / (std::sqrt(s.v[i] / bc2) + h.eps) + h.weight_decay * s.p[i];
    p_norm += s.p[i] * s.p[i];
    u_norm += u[i] * u[i];
  }
  p_norm = std::sqrt(p_norm);
  u_norm = std::sqrt(u_norm);
  const double trust = p_norm > 0 && u_norm > 0 ? p_norm / u_norm : 1.0;
  for (std::size_t i = 0; i < s.p.size(); ++i) s.p[i] -= h.lr * trust * u[i];
}

// ---- the configurations the equivalence tests sweep ----------------------------------------
// Named types: doctest prints them in test names (no commas, which CTest's label discovery
// cannot handle).

template <zero::stage S, class Partitioner, class Precision>
struct config {
  using optimizer = zero::optimizer<S, Precision, zero::adamw, Partitioner>;
};

// Precision tags, so that a configuration's printed name is e.g.
// "harness::stage2_bucketed<harness::bf16_mixed_run>".
struct fp32_run {
  using precision = zero::fp32_precision;
};
struct bf16_mixed_run {
  using precision = zero::bf16_mixed;
};

template <class Run>
struct stage0_contiguous : config<zero::stage0, zero::contiguous_partitioner, typename Run::precision> {};
template <class Run>
struct stage1_contiguous : config<zero::stage1, zero::contiguous_partitioner, typename Run::precision> {};
template <class Run>
struct stage2_contiguous : config<zero::stage2, zero::contiguous_partitioner, typename Run::precision> {};
template <class Run>
struct stage0_bucketed : config<zero::stage0, zero::bucketed_partitioner, typename Run::precision> {};
template <class Run>
struct stage1_bucketed : config<zero::stage1, zero::bucketed_partitioner, typename Run::precision> {};
template <class Run>
struct stage2_bucketed : config<zero::stage2, zero::bucketed_partitioner, typename Run::precision> {};

inline zero::adamw::hyperparameters adamw_hyperparameters() {
  zero::adamw::hyperparameters h;
  h.lr = 1e-2;
  h.weight_decay = 0.1;
  return h;
}

// Every rule's hyperparameters as the rule sweeps use them: lr 1e-2, weight decay 0.05, SGD
// with momentum 0.9, Adagrad starting from 0.1.
template <class Rule>
typename Rule::hyperparameters rule_hyperparameters() {
  typename Rule::hyperparameters h;
  h.lr = 1e-2;
  if constexpr (requires { h.weight_decay; }) h.weight_decay = 0.05;
  if constexpr (std::is_same_v<Rule, zero::sgd>) h.momentum = 0.9;
  if constexpr (std::is_same_v<Rule, zero::adagrad>) h.initial_accumulator_value = 0.1;
  return h;
}

// ---- one configuration ---------------------------------------------------------------------

//! The order a rank reports its gradients in, every micro-step.
enum class report_order {
  random,    //!< each rank its own random order, different every micro-step
  backward,  //!< the last parameter first, as backward produces them (shared uses back to back)
};

struct run_options {
  int world = 1;
  int steps = 20;
  std::size_t bucket_elements = 1u << 22;
  std::size_t alignment = 16;
  bool slots = false;            // write gradients into engine slots instead of handing spans
  bool skip_some = false;        // rank-dependent: leave a parameter unreported in some steps
  std::uint64_t order_seed = 1;  // seeds each rank's random report order
  int micro_steps = 1;           // gradient accumulation: micro-steps per step
  bool defer_reduction = false;  // stage 2: reduce once at the step instead of every micro-step
  double max_grad_norm = 0;      // clip (0: off)
  double loss_scale = 0;         // a fixed loss scale (0: the engine's default for the precision)
  bool shared_weight = false;    // parameter 4 is used twice per micro-step (reported twice)
  std::size_t staging_buffers = 1;  // >= 2: reductions and all-gathers pipelined (queued collectives)
  bool stochastic_rounding = false;  // values without master weights rounded stochastically (bf16_pure)
  report_order reports = report_order::random;
  bool framework = true;        // gradients in buffers of their own, poisoned and recycled when released
  bool declare_unused = false;  // a parameter not reported in a micro-step is declared unused
  zero::gradient_order order = zero::gradient_order::reverse;  // the engine's layout order
  bool copy_on_report = false;                                  // stage 2: copy gradients into staging at once
  double predivide = 1;                                         // gradient_predivide_factor
  bool read_in_update = false;  // stage 2 at one rank: the update reads the gradients where they are
};

// The engine options `o` sets: layout, clipping, rounding, a fixed loss scale.
template <class Options>
void apply(const run_options& o, Options& options) {
  options.layout.bucket_elements = o.bucket_elements;
  options.layout.alignment = o.alignment;
  options.layout.gradient_slots = o.slots;
  options.layout.defer_reduction = o.defer_reduction;
  options.layout.staging_buffers = o.staging_buffers;
  options.layout.order = o.order;
  options.layout.copy_on_report = o.copy_on_report;
  options.layout.read_gradients_in_update = o.read_in_update;
  options.max_grad_norm = o.max_grad_norm;
  options.gradient_predivide_factor = o.predivide;
  if (o.stochastic_rounding) options.value_rounding = zero::rounding::stochastic;
  if (o.loss_scale > 0) {
    options.loss_scale.kind = zero::loss_scale_options::mode::fixed;
    options.loss_scale.fixed_scale = o.loss_scale;
  }
}

// Whether rank r reports parameter p at micro-step t (counted over the run) under `skip_some`
// (a gradient never reported counts as zero).
inline bool reported(const run_options& o, int t, int r, std::size_t p) {
  return !o.skip_some || (mix(static_cast<std::uint64_t>(t) * 131 + static_cast<std::uint64_t>(r) * 17 + p) % 5) != 0;
}

struct run_result {
  std::vector<std::vector<double>> reference;  // final reference parameters
  // per rank: final framework parameters (as float) and master/updated values (as float)
  std::vector<std::vector<std::vector<float>>> params;
  std::vector<std::vector<float>> values;  // the full updated values, reassembled from all ranks
  double max_value_error = 0;              // max relative error of updated values, all steps
  double max_param_error = 0;              // max relative error of framework params vs reference
  std::size_t param_rounding_mismatches = 0;  // framework param != param_type(updated value)
  std::size_t rank_disagreements = 0;         // framework params differ between ranks
  double max_norm_error = 0;                  // max relative error of the reported gradient norm
  std::size_t norm_disagreements = 0;         // ranks reporting different norms or factors
  zero::traffic_counters step_traffic;        // rank 0, one step
  zero::memory_report memory;                 // rank 0
  // framework mode
  std::size_t framework_peak = 0;      // most gradient bytes held between calls, any rank (the micro-step that
                                       // learns the layout order left out)
  std::size_t learning_peak = 0;       // the same during the micro-step that learns the order
  std::size_t gradient_bytes = 0;      // bytes of one micro-step's gradients on one rank (every report)
  std::size_t released_early = 0;      // releases before the micro-step ended, all ranks
  std::size_t unreleased = 0;          // gradients still held when a micro-step had ended
  std::size_t release_mismatches = 0;  // gradient_released(p) disagreeing with the notifications
};

// Parameter groups for `run`, as torch.optim's param_groups: group 0 has the run's
// hyperparameters, group g >= 1 has extra[g - 1]; parameter p is in membership[p] (empty: every
// parameter in group 0); before step t (from 0) `schedule(t, g, h)` may change group g's
// hyperparameters, in the reference and, through set_hyperparameters, in the engine.
template <class H>
struct group_setup {
  std::vector<H> extra;
  std::vector<std::uint32_t> membership;
  std::function<void(int, std::size_t, H&)> schedule;
};

template <class Optimizer>
run_result run(const run_options& o, const typename Optimizer::hyperparameters_type& h = {},
               const group_setup<typename Optimizer::hyperparameters_type>& groups = {}) {
  using H = typename Optimizer::hyperparameters_type;
  using P = typename Optimizer::param_type;
  using G = typename Optimizer::grad_type;
  const auto& sizes = model_sizes;
  const std::size_t n_params = sizes.size();
  const int world = o.world;
  const int steps = o.steps;

  // whether rank r reports parameter p at step t (a never-reported gradient counts as zero)
  auto reported = [&](int t, int r, std::size_t p) { return harness::reported(o, t, r, p); };

  // each group's hyperparameters, and each parameter's group
  std::vector<H> group_h{h};
  group_h.insert(group_h.end(), groups.extra.begin(), groups.extra.end());
  auto group_of = [&](std::size_t p) -> std::uint32_t { return groups.membership.empty() ? 0u : groups.membership[p]; };
  // group g's hyperparameters at step t, after the schedule's changes of steps 0..t
  auto scheduled = [&](int t) {
    std::vector<H> now = group_h;
    if (groups.schedule)
      for (int s = 0; s <= t; ++s)
        for (std::size_t g = 0; g < now.size(); ++g) groups.schedule(s, g, now[g]);
    return now;
  };

  // reference trajectory
  std::vector<reference_state> ref(n_params);
  for (std::size_t p = 0; p < n_params; ++p) {
    auto& s = ref[p];
    s.p.resize(sizes[p]);
    for (std::size_t i = 0; i < sizes[p]; ++i) s.p[i] = static_cast<double>(static_cast<float>(P(initial_value(p, i))));
    s.m.assign(sizes[p], 0);
    s.v.assign(sizes[p], 0);
    s.vmax.assign(sizes[p], 0);
    s.buf.assign(sizes[p], 0);
  }
  // the scale the gradients carry (fp16: a fixed loss scale the engine is told about)
  const double scale = o.loss_scale > 0 ? o.loss_scale : 1.0;
  const int uses_of_shared = o.shared_weight ? 2 : 1;
  auto uses = [&](std::size_t p) { return p == 4 ? uses_of_shared : 1; };
  std::vector<std::vector<std::vector<double>>> trajectory(static_cast<std::size_t>(steps));
  std::vector<double> reference_norms;
  for (int t = 0; t < steps; ++t) {
    // the gradient averaged over ranks and micro-steps, summed over the uses of a shared weight,
    // exactly as the engine receives it (rounded to the gradient type, then unscaled)
    std::vector<std::vector<double>> avg(n_params);
    double norm = 0;
    for (std::size_t p = 0; p < n_params; ++p) {
      avg[p].assign(sizes[p], 0.0);
      for (int r = 0; r < world; ++r)
        for (int m = 0; m < o.micro_steps; ++m)
          if (reported(t * o.micro_steps + m, r, p))
            for (int u = 0; u < uses(p); ++u)
              for (std::size_t i = 0; i < sizes[p]; ++i)
                avg[p][i] += static_cast<double>(static_cast<float>(gradient<G>(t, r, p, i, m, u, scale))) / scale;
      for (auto& a : avg[p]) {
        a /= world * o.micro_steps;
        norm += a * a;
      }
    }
    norm = std::sqrt(norm);
    reference_norms.push_back(norm);
    const double clip = o.max_grad_norm > 0 ? std::min(1.0, o.max_grad_norm / (norm + 1e-6)) : 1.0;
    const std::vector<H> step_h = scheduled(t);
    for (std::size_t p = 0; p < n_params; ++p) {
      for (auto& a : avg[p]) a *= clip;
      reference_update(step_h[group_of(p)], static_cast<std::uint64_t>(t) + 1, ref[p], avg[p]);
      trajectory[static_cast<std::size_t>(t)].push_back(ref[p].p);
    }
  }

  run_result result;
  result.params.resize(static_cast<std::size_t>(world));
  result.values.resize(n_params);
  for (std::size_t p = 0; p < n_params; ++p) result.values[p].assign(sizes[p], 0.0f);
  std::mutex lock;
  std::vector<double> shared_norms(static_cast<std::size_t>(steps), -1.0);
  auto relative = [](double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-30); };

  zero::thread_group group(world, {std::chrono::seconds(60)});
  group.run([&](zero::thread_communicator& comm) {
    const int rank = comm.rank();
    std::vector<std::vector<P>> storage(n_params);
    std::vector<zero::parameter<P>> params;
    for (std::size_t p = 0; p < n_params; ++p) {
      storage[p].resize(sizes[p]);
      for (std::size_t i = 0; i < sizes[p]; ++i) storage[p][i] = P(initial_value(p, i));
    }
    for (std::size_t p = 0; p < n_params; ++p)
      params.push_back({"p" + std::to_string(p), {storage[p].data(), storage[p].size()},
                        static_cast<std::uint32_t>(uses(p)), group_of(p)});
    typename Optimizer::options_type options;
    options.hyperparameters = h;
    for (const H& extra : groups.extra) options.add_group(extra);
    apply(o, options);
    // framework mode: each reported gradient in a buffer of its own until released
    std::vector<std::unique_ptr<std::vector<G>>> buffers;
    std::vector<std::vector<std::vector<G>*>> held(n_params), spare(n_params);
    std::vector<bool> notified(n_params, false);
    std::size_t live = 0, peak = 0, learning_peak = 0, released_early = 0, unreleased = 0, mismatches = 0;
    bool inside_micro_step = false;
    auto produce = [&](std::size_t p) -> std::vector<G>& {  // backward writes a new gradient
      if (spare[p].empty()) {
        buffers.push_back(std::make_unique<std::vector<G>>(sizes[p]));
        spare[p].push_back(buffers.back().get());
      }
      std::vector<G>* b = spare[p].back();
      spare[p].pop_back();
      held[p].push_back(b);
      live += sizes[p] * sizeof(G);
      return *b;
    };
    auto release = [&](std::span<const std::size_t> released) {
      for (std::size_t p : released) {
        for (std::vector<G>* b : held[p]) {
          std::fill(b->begin(), b->end(), G(std::numeric_limits<float>::quiet_NaN()));
          live -= sizes[p] * sizeof(G);
          spare[p].push_back(b);
        }
        held[p].clear();
        notified[p] = true;
        if (inside_micro_step) ++released_early;
      }
    };
    if (o.framework && !o.slots) options.on_gradients_released = release;
    Optimizer opt(comm, params, options);
    double norm_error = 0;
    std::size_t norm_disagreements = 0;

    std::vector<std::vector<G>> grads(2 * n_params);
    std::vector<std::size_t> order(n_params);
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 rng(o.order_seed * 1000 + static_cast<std::uint64_t>(rank));
    double value_error = 0, param_error = 0;
    std::size_t rounding = 0;
    zero::traffic_counters traffic;
    for (int t = 0; t < steps; ++t) {
      const auto before = comm.traffic();  // stage 2 reduces while gradients are reported
      for (int m = 0; m < o.micro_steps; ++m) {
        if (m > 0) {
          inside_micro_step = false;
          opt.end_micro_step();
          if (live != 0) ++unreleased;
        }
        inside_micro_step = true;
        std::fill(notified.begin(), notified.end(), false);
        const bool learning = t == 0 && m == 0 && o.order == zero::gradient_order::learned;
        if (o.reports == report_order::random) std::shuffle(order.begin(), order.end(), rng);
        else std::iota(order.rbegin(), order.rend(), 0);
        for (std::size_t p : order) {
          if (!reported(t * o.micro_steps + m, rank, p)) {
            // a framework that knows its unused parameters says so, and the units need not wait
            if (o.declare_unused) opt.gradient_unused(p);
            continue;
          }
          for (int u = 0; u < uses(p); ++u) {
            auto& g = o.framework && !o.slots ? produce(p) : grads[p * 2 + static_cast<std::size_t>(u)];
            g.resize(sizes[p]);
            for (std::size_t i = 0; i < sizes[p]; ++i) g[i] = gradient<G>(t, rank, p, i, m, u, scale);
            if (o.slots) {  // a slot holds the sum of a shared weight's uses
              auto slot = opt.grad_slot(p);
              for (std::size_t i = 0; i < sizes[p]; ++i)
                slot[i] = u == 0 ? g[i] : G(static_cast<float>(slot[i]) + static_cast<float>(g[i]));
              opt.gradient_ready(p);
            } else {
              opt.gradient_ready(p, {g.data(), g.size()});
            }
            if (o.framework && !o.slots) {
              (learning ? learning_peak : peak) = std::max(learning ? learning_peak : peak, live);
              if (opt.gradient_released(p) != notified[p]) ++mismatches;
            }
          }
        }
      }
      inside_micro_step = false;
      if (groups.schedule) {
        const std::vector<H> now = scheduled(t);
        if (now.size() == 1) opt.set_hyperparameters(now[0]);
        else
          for (std::size_t g = 0; g < now.size(); ++g) opt.set_hyperparameters(g, now[g]);
      }
      const zero::step_report report = opt.step();
      if (live != 0) ++unreleased;
      norm_error = std::max(norm_error, relative(report.grad_norm, reference_norms[static_cast<std::size_t>(t)]));
      if (report.skipped || report.step != static_cast<std::uint64_t>(t) + 1) ++norm_disagreements;
      // every rank reports the same norm: compare with rank 0's through a shared slot
      {
        std::lock_guard guard(lock);
        auto& seen = shared_norms[static_cast<std::size_t>(t)];
        if (seen < 0) seen = report.grad_norm;
        else if (seen != report.grad_norm) ++norm_disagreements;
      }
      if (t == 0) traffic = comm.traffic() - before;
      // the values this rank updates, against the reference
      const auto values = opt.values();
      for (const auto& piece : opt.owned_pieces()) {
        const std::size_t at = Optimizer::stage_value == zero::stage0 ? piece.flat_offset : piece.shard_offset;
        for (std::size_t i = 0; i < piece.count; ++i) {
          const double expected = trajectory[static_cast<std::size_t>(t)][piece.param][piece.param_offset + i];
          double got;
          if constexpr (Optimizer::precision_type::has_master || Optimizer::stage_value != zero::stage0)
            got = static_cast<double>(static_cast<float>(values[at + i]));
          else
            got = static_cast<double>(static_cast<float>(storage[piece.param][piece.param_offset + i]));
          value_error = std::max(value_error, relative(got, expected));
          if constexpr (Optimizer::precision_type::has_master || Optimizer::stage_value != zero::stage0) {
            if (!(P(static_cast<float>(values[at + i])) == storage[piece.param][piece.param_offset + i])) ++rounding;
          }
        }
      }
      // the framework's parameters, all of them, against the reference
      for (std::size_t p = 0; p < n_params; ++p)
        for (std::size_t i = 0; i < sizes[p]; ++i) {
          const double expected = static_cast<double>(static_cast<float>(P(static_cast<float>(trajectory[static_cast<std::size_t>(t)][p][i]))));
          param_error = std::max(param_error, relative(static_cast<double>(static_cast<float>(storage[p][i])), expected));
        }
    }
    std::vector<std::vector<float>> final_params(n_params);
    for (std::size_t p = 0; p < n_params; ++p)
      for (auto v : storage[p]) final_params[p].push_back(static_cast<float>(v));
    std::lock_guard guard(lock);
    result.max_value_error = std::max(result.max_value_error, value_error);
    result.max_param_error = std::max(result.max_param_error, param_error);
    result.param_rounding_mismatches += rounding;
    result.max_norm_error = std::max(result.max_norm_error, norm_error);
    result.norm_disagreements += norm_disagreements;
    result.framework_peak = std::max(result.framework_peak, peak);
    result.learning_peak = std::max(result.learning_peak, learning_peak);
    result.released_early += released_early;
    result.unreleased += unreleased;
    result.release_mismatches += mismatches;
    result.params[static_cast<std::size_t>(rank)] = std::move(final_params);
    const auto values = opt.values();
    for (const auto& piece : opt.owned_pieces()) {
      const std::size_t at = Optimizer::stage_value == zero::stage0 ? piece.flat_offset : piece.shard_offset;
      for (std::size_t i = 0; i < piece.count; ++i)
        result.values[piece.param][piece.param_offset + i] =
            Optimizer::precision_type::has_master || Optimizer::stage_value != zero::stage0
                ? static_cast<float>(values[at + i])
                : static_cast<float>(storage[piece.param][piece.param_offset + i]);
    }
    if (rank == 0) {
      result.step_traffic = traffic;
      result.memory = opt.memory();
    }
  });
  for (int r = 1; r < world; ++r)
    if (result.params[static_cast<std::size_t>(r)] != result.params[0]) ++result.rank_disagreements;
  for (std::size_t p = 0; p < n_params; ++p) result.gradient_bytes += sizes[p] * static_cast<std::size_t>(uses(p)) * sizeof(G);
  for (std::size_t p = 0; p < n_params; ++p) result.reference.push_back(ref[p].p);
  return result;
}

}  // namespace harness
