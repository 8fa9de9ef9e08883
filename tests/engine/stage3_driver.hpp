#pragma once
// The stage-3 test driver (tests/engine/stage3_test.cpp on thread ranks, tests/mpi/stage3_test.cpp
// on MPI processes): a model of layers, each a gather group, trained the way a framework trains
// it. `run_rank` is one rank's whole run, on any communicator: stage 3 gathers each layer for
// forward and again for backward and computes the layer's gradients from the gathered values;
// stage 2 computes them from the framework's own parameters. Each gradient buffer is poisoned
// with NaN the moment the engine releases it.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "engine/mirror.hpp"
#include "zero/zero.hpp"

namespace stage3_driver {


// The model: `layers` layers of a weight and a bias, sizes odd and unequal.
struct model {
  std::vector<std::size_t> sizes;
  std::vector<std::uint32_t> layer_of;
  std::uint32_t layers = 0;
  explicit model(std::uint32_t n_layers) : layers(n_layers) {
    for (std::uint32_t l = 0; l < n_layers; ++l) {
      sizes.push_back(37 + 29 * l + (l % 3) * 101);  // weight
      layer_of.push_back(l);
      sizes.push_back(5 + 2 * l);  // bias
      layer_of.push_back(l);
    }
  }
  std::size_t elements() const { return std::accumulate(sizes.begin(), sizes.end(), std::size_t{0}); }
  std::size_t largest() const { return *std::max_element(sizes.begin(), sizes.end()); }
};

inline float initial_value(std::size_t p, std::size_t i) { return 0.5f * std::sin(0.37f * static_cast<float>(p * 131 + i)) + 0.01f; }

// The gradient backward computes from the parameter's current value: depends on the value, the
// rank, the step and the element (an exact function, the same in every run).
inline float gradient_of(float value, int rank, int step, std::size_t p, std::size_t i) {
  const float noise = 0.05f * std::cos(0.11f * static_cast<float>(i * 7 + p * 13 + static_cast<std::size_t>(step) * 17 +
                                                                   static_cast<std::size_t>(rank) * 29));
  return 0.3f * value + noise;
}

struct run_options {
  int world = 1;
  int steps = 6;
  std::size_t bucket_elements = 96;
  std::size_t alignment = 8;
  std::uint32_t layers = 5;
  std::uint64_t seed = 1;
  double max_grad_norm = 0;
  double loss_scale = 0;  // a fixed loss scale (0: the precision's default)
  // stage 3's gather buffers and prefetching (layout options), and the order it is given
  std::size_t gather_buffers = 2;
  std::size_t prefetch_groups = 1;
  std::vector<std::uint32_t> gather_order{};
  // forward visits the layers in an order drawn anew each step (the same on every rank), off
  // any order the engine learned or was given
  bool shuffle_forward = false;
  std::size_t staging_buffers = 1;  // 2: reductions in flight during backward
  int micro_steps = 1;              // forward and backward this many times per step
  // stage 3: the framework registers sizes alone and each rank fills in its own pieces
  // (`initialize_parameters`): no rank ever holds the whole model
  bool without_values = false;
};

template <class Optimizer>
typename Optimizer::options_type options_for(const run_options& o, const typename Optimizer::hyperparameters_type& h) {
  typename Optimizer::options_type options;
  options.hyperparameters = h;
  options.layout.bucket_elements = o.bucket_elements;
  options.layout.alignment = o.alignment;
  options.layout.gather_buffers = o.gather_buffers;
  options.layout.prefetch_groups = o.prefetch_groups;
  options.layout.gather_order = o.gather_order;
  options.layout.staging_buffers = o.staging_buffers;
  options.max_grad_norm = o.max_grad_norm;
  if (o.loss_scale > 0) {
    options.loss_scale.kind = zero::loss_scale_options::mode::fixed;
    options.loss_scale.fixed_scale = o.loss_scale;
  }
  return options;
}

// One rank's values after each step ([step][param][element]) and what it measured.
struct rank_result {
  std::vector<std::vector<std::vector<float>>> values;
  std::size_t poisoned_reads = 0;  // NaN in the values: a gradient read after its release
  zero::memory_report memory;
  zero::memory_report expected;
  zero::traffic_counters step_traffic;  // the last step's, without the test's own gathers after it
  std::vector<std::uint32_t> gathers, prefetched;  // each step's report: gathers, and those prefetched
  // stage 3, the whole run: the bytes of the groups the framework gathered, and the bytes
  // broadcast (once the engine is gone, with nothing left in flight)
  std::size_t asked_bytes = 0, broadcast_bytes = 0;
  std::size_t initialized_elements = 0;  // stage 3 without values: the elements this rank filled
};

// The layers in the order forward visits them in step `step`.
inline std::vector<std::uint32_t> forward_order(const run_options& o, int step) {
  std::vector<std::uint32_t> layers(o.layers);
  std::iota(layers.begin(), layers.end(), 0u);
  if (o.shuffle_forward) {
    std::mt19937_64 draw(o.seed * 7919 + static_cast<std::uint64_t>(step));  // no rank in it: every rank alike
    std::shuffle(layers.begin(), layers.end(), draw);
  }
  return layers;
}

// The order a step gathers in without shuffling: forward, then backward (last layer first).
inline std::vector<std::uint32_t> step_order(std::uint32_t layers) {
  std::vector<std::uint32_t> order;
  for (std::uint32_t l = 0; l < layers; ++l) order.push_back(l);
  for (std::uint32_t l = layers; l-- > 0;) order.push_back(l);
  return order;
}

// One rank's run over `comm`, the framework's parameters and gradients in `Memory` (host memory, or
// the device memory of tests/cuda/engine_test.cu): stage 2
// computes from the framework's parameters, stage 3 from gathered groups (and frees its own
// parameters once the engine is built).
template <class Optimizer, class Memory = mirror::host_memory, class Comm>
rank_result run_rank(Comm& comm, const run_options& o, const typename Optimizer::hyperparameters_type& h,
                     typename Memory::stream_type stream = {}) {
  using P = typename Optimizer::param_type;
  using G = typename Optimizer::grad_type;
  constexpr bool stage3 = Optimizer::stage_value == zero::stage3;
  const model m(o.layers);
  const std::size_t n = m.sizes.size();
  const int rank = comm.rank();
  rank_result result;
  std::vector<P*> storage(n, nullptr);
  std::vector<G*> grads(n, nullptr);
  std::vector<zero::parameter<P>> params;
  const bool without_values = stage3 && o.without_values;
  for (std::size_t p = 0; p < n; ++p) {
    std::vector<P> initial(m.sizes[p]);
    for (std::size_t i = 0; i < m.sizes[p]; ++i) initial[i] = P(initial_value(p, i));
    if (!without_values) storage[p] = Memory::upload(initial, stream);
    grads[p] = Memory::upload(std::vector<G>(m.sizes[p], G(0.0f)), stream);
    zero::parameter<P> param{"layer" + std::to_string(m.layer_of[p]) + (p % 2 == 0 ? ".weight" : ".bias"),
                             {storage[p], m.sizes[p]}};
    param.gather_group = m.layer_of[p];
    params.push_back(param);
  }
  auto options = options_for<Optimizer>(o, h);
  options.layout.gather_buffer_elements = 0;  // the largest layer exactly
  for (std::uint32_t l = 0; l < m.layers; ++l)
    options.layout.gather_buffer_elements = std::max(options.layout.gather_buffer_elements, m.sizes[2 * l] + m.sizes[2 * l + 1]);
  // each gradient in a buffer of its own, poisoned the moment the engine releases it
  options.on_gradients_released = [&](std::span<const std::size_t> released) {
    for (std::size_t p : released) Memory::write(grads[p], std::vector<G>(m.sizes[p], G(std::numeric_limits<float>::quiet_NaN())), stream);
  };
  const zero::traffic_counters at_start = comm.traffic();
  {
    Optimizer opt(comm, params, options);
    if constexpr (stage3)
      if (without_values)  // each rank its own pieces, computed where they are needed
        opt.initialize_parameters([&](std::size_t p, std::size_t offset, std::span<P> out) {
          result.initialized_elements += out.size();
          for (std::size_t i = 0; i < out.size(); ++i) out[i] = P(initial_value(p, offset + i));
        });
    if constexpr (stage3)  // the engine's shards are the parameters now: the framework frees its own
      for (P*& s : storage) {
        Memory::release(s);
        s = nullptr;
      }
    std::mt19937_64 order(o.seed * 1000 + static_cast<std::uint64_t>(rank));
    auto gather = [&](std::uint32_t l) {
      opt.gather(l);
      result.asked_bytes += (m.sizes[2 * l] + m.sizes[2 * l + 1]) * sizeof(P);
    };
    // parameter p's values as the framework sees them: gathered (stage 3) or its own
    auto values_of = [&](std::size_t p) -> std::vector<float> {
      if constexpr (stage3) return Memory::download(opt.parameter_values(p).data, m.sizes[p], stream);
      else return Memory::download(storage[p], m.sizes[p], stream);
    };
    for (int step = 0; step < o.steps; ++step) {
      const zero::traffic_counters before = comm.traffic();
      for (int micro = 0; micro < o.micro_steps; ++micro) {
      if (micro > 0) opt.end_micro_step();
      const int draw = step * o.micro_steps + micro;  // what the gradients depend on
      // forward: every layer gathered, read, released
      for (std::uint32_t l : forward_order(o, draw)) {
        if constexpr (stage3) gather(l);
        double sum = 0;
        for (std::size_t p : {2 * l, 2 * l + 1})
          for (float x : values_of(p)) sum += x;
        if (!std::isfinite(sum)) ++result.poisoned_reads;
        if constexpr (stage3) opt.release(l);
      }
      // backward: last layer first, its gradients from its values, in a random order
      for (std::uint32_t l = m.layers; l-- > 0;) {
        if constexpr (stage3) gather(l);
        std::vector<std::size_t> ps{2 * l, 2 * l + 1};
        std::shuffle(ps.begin(), ps.end(), order);
        for (std::size_t p : ps) {
          const std::vector<float> v = values_of(p);
          const float scale = static_cast<float>(opt.loss_scale());  // (the loss multiplied by it: fp16)
          std::vector<G> g(m.sizes[p]);
          for (std::size_t i = 0; i < m.sizes[p]; ++i) g[i] = G(scale * gradient_of(v[i], rank, draw, p, i));
          Memory::write(grads[p], g, stream);
          opt.gradient_ready(p, zero::raw_span<const G>(grads[p], m.sizes[p]));
        }
        if constexpr (stage3) opt.release(l);
      }
      }
      const zero::step_report report = opt.step();
      result.step_traffic = comm.traffic() - before;
      result.gathers.push_back(report.gathers);
      result.prefetched.push_back(report.prefetched_gathers);
      // the values after the step (stage 3: gathered again, each layer)
      std::vector<std::vector<float>> mine(n);
      for (std::uint32_t l = 0; l < m.layers; ++l) {
        if constexpr (stage3) gather(l);
        for (std::size_t p : {2 * l, 2 * l + 1}) {
          mine[p] = values_of(p);
          for (float x : mine[p])
            if (std::isnan(x)) ++result.poisoned_reads;
        }
        if constexpr (stage3) opt.release(l);
      }
      result.values.push_back(std::move(mine));
    }
    result.memory = opt.memory();
    result.expected = zero::expected_memory<typename Optimizer::precision_type, typename Optimizer::partitioner_type>(
        m.elements(), comm.world_size(), Optimizer::stage_value, opt.state_count(), options.layout, m.largest());
  }
  result.broadcast_bytes = (comm.traffic() - at_start).bytes_of(zero::collective::broadcast);
  for (P* s : storage)
    if (s != nullptr) Memory::release(s);
  for (G* g : grads) Memory::release(g);
  return result;
}

//! Whether two runs' values are the same bits.
inline bool same_bits(const std::vector<std::vector<std::vector<float>>>& a, const std::vector<std::vector<std::vector<float>>>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t s = 0; s < a.size(); ++s) {
    if (a[s].size() != b[s].size()) return false;
    for (std::size_t p = 0; p < a[s].size(); ++p) {
      if (a[s][p].size() != b[s][p].size()) return false;
      for (std::size_t i = 0; i < a[s][p].size(); ++i)
        if (std::bit_cast<std::uint32_t>(a[s][p][i]) != std::bit_cast<std::uint32_t>(b[s][p][i])) return false;
    }
  }
  return true;
}

inline zero::adamw::hyperparameters adamw_h() {
  zero::adamw::hyperparameters h;
  h.lr = 1e-2;
  h.weight_decay = 0.1;
  return h;
}

}  // namespace stage3_driver
