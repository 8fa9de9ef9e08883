// The subject of the activation tests: an N-layer MLP on the host (Eigen, float; tanh, one
// dropout layer) whose backward either keeps every activation (the reference) or recomputes each
// layer's forward from a checkpoint restored by a zero checkpointer.
#pragma once

#include <Eigen/Dense>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "zero/zero.hpp"

namespace act {

using matrix = Eigen::MatrixXf;  // one column per example
using vector = Eigen::VectorXf;

// A counter-based generator, as Philox is in PyTorch and cuRAND: the n-th number of a state
// depends only on (seed, offset + n), so a saved state replays the same numbers.
inline std::uint64_t draw(const zero::generator_state& s, std::uint64_t n) {
  std::uint64_t z = s.seed * 0x9e3779b97f4a7c15ull + (s.offset + n) + 0x632be59bd9b4e019ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

struct mlp {
  std::vector<int> widths;  // widths[0] inputs; layer l maps widths[l] to widths[l + 1]
  int dropout_layer = -1;   // the layer whose output goes through dropout
  float keep = 0.75f;       // dropout's keep probability
  std::vector<matrix> w;
  std::vector<vector> b;

  int layers() const { return static_cast<int>(widths.size()) - 1; }

  static mlp make(std::vector<int> widths, int dropout_layer, unsigned seed) {
    mlp m{std::move(widths), dropout_layer, 0.75f, {}, {}};
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int l = 0; l < m.layers(); ++l) {
      const int in = m.widths[static_cast<std::size_t>(l)], out = m.widths[static_cast<std::size_t>(l) + 1];
      const float scale = 1.5f / std::sqrt(static_cast<float>(in));
      m.w.emplace_back(matrix::NullaryExpr(out, in, [&] { return scale * normal(rng); }));
      m.b.emplace_back(vector::NullaryExpr(out, [&] { return 0.1f * normal(rng); }));
    }
    return m;
  }
};

// Everything the backward of one layer reads: its input, its tanh output, and dropout's
// scale (mask / keep) for the dropout layer (empty elsewhere).
struct layer_state {
  matrix x, h, scale;
  matrix output() const { return scale.size() != 0 ? matrix(h.cwiseProduct(scale)) : h; }
};

inline layer_state forward_layer(const mlp& m, int l, const matrix& x, const zero::generator_state& rng) {
  const auto ul = static_cast<std::size_t>(l);
  layer_state s{x, ((m.w[ul] * x).colwise() + m.b[ul]).array().tanh().matrix(), {}};
  if (l == m.dropout_layer) {
    s.scale.resize(s.h.rows(), s.h.cols());
    const auto threshold = static_cast<std::uint64_t>(static_cast<double>(m.keep) * 16777216.0);
    for (Eigen::Index i = 0; i < s.scale.size(); ++i)
      s.scale.data()[i] = (draw(rng, static_cast<std::uint64_t>(i)) >> 40) < threshold ? 1.0f / m.keep : 0.0f;
  }
  return s;
}

struct gradients {
  std::vector<matrix> dw;
  std::vector<vector> db;

  friend bool bitwise_equal(const gradients& a, const gradients& c) {
    if (a.dw.size() != c.dw.size()) return false;
    for (std::size_t l = 0; l < a.dw.size(); ++l) {
      if (a.dw[l].size() != c.dw[l].size() || a.db[l].size() != c.db[l].size()) return false;
      if (std::memcmp(a.dw[l].data(), c.dw[l].data(), sizeof(float) * static_cast<std::size_t>(a.dw[l].size())) != 0) return false;
      if (std::memcmp(a.db[l].data(), c.db[l].data(), sizeof(float) * static_cast<std::size_t>(a.db[l].size())) != 0) return false;
    }
    return true;
  }
};

// Writes layer l's parameter gradients and returns the gradient of its input.
inline matrix backward_layer(const mlp& m, int l, const layer_state& s, const matrix& dy, gradients& g) {
  const auto ul = static_cast<std::size_t>(l);
  const matrix dh = s.scale.size() != 0 ? matrix(dy.cwiseProduct(s.scale)) : dy;
  const matrix dz = dh.array() * (1.0f - s.h.array().square());
  g.dw[ul] = dz * s.x.transpose();
  g.db[ul] = dz.rowwise().sum();
  return m.w[ul].transpose() * dz;
}

// The framework's generator: the dropout layer takes as many numbers as it has elements, and
// the state moves past them.
struct framework_generator {
  zero::generator_state state;
  zero::generator_state for_layer(const mlp& m, int l, Eigen::Index batch) {
    const zero::generator_state at = state;
    if (l == m.dropout_layer) state.offset += static_cast<std::uint64_t>(m.widths[static_cast<std::size_t>(l) + 1] * batch);
    return at;
  }
};

// One batch: inputs and regression targets.
struct batch_data {
  matrix x, target;
  zero::generator_state rng;  // the generator's state when the forward pass starts
  static batch_data make(const mlp& m, Eigen::Index batch, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    return {matrix::NullaryExpr(m.widths.front(), batch, [&] { return u(rng); }),
            matrix::NullaryExpr(m.widths.back(), batch, [&] { return u(rng); }), {seed * 7919u + 1u, 1000u * seed}};
  }
};

inline gradients empty_gradients(const mlp& m) {
  return {std::vector<matrix>(static_cast<std::size_t>(m.layers())), std::vector<vector>(static_cast<std::size_t>(m.layers()))};
}

// Loss 0.5 * sum((y - target)^2) / batch; returns dloss/dy.
inline matrix loss_gradient(const matrix& y, const matrix& target) { return (y - target) / static_cast<float>(y.cols()); }

// The reference: no checkpointer, every layer's state kept from forward to backward.
inline gradients reference_step(const mlp& m, const batch_data& d) {
  framework_generator gen{d.rng};
  std::vector<layer_state> states;
  matrix x = d.x;
  for (int l = 0; l < m.layers(); ++l) {
    states.push_back(forward_layer(m, l, x, gen.for_layer(m, l, x.cols())));
    x = states.back().output();
  }
  gradients g = empty_gradients(m);
  matrix dy = loss_gradient(x, d.target);
  for (int l = m.layers(); l-- > 0;) dy = backward_layer(m, l, states[static_cast<std::size_t>(l)], dy, g);
  return g;
}

inline zero::raw_span<const std::byte> bytes_of(const matrix& x) {
  return {reinterpret_cast<const std::byte*>(x.data()), sizeof(float) * static_cast<std::size_t>(x.size())};
}
inline zero::raw_span<std::byte> bytes_of(matrix& x) {
  return {reinterpret_cast<std::byte*>(x.data()), sizeof(float) * static_cast<std::size_t>(x.size())};
}

// What a checkpointer holds of layer l: its input, or, when it does not recompute, its whole state.
inline std::size_t checkpoint_bytes(const mlp& m, int l, Eigen::Index batch, bool recomputes) {
  const auto ul = static_cast<std::size_t>(l);
  const auto in = static_cast<std::size_t>(m.widths[ul]), out = static_cast<std::size_t>(m.widths[ul + 1]);
  const std::size_t floats = recomputes ? in : in + out + (l == m.dropout_layer ? out : 0);
  return floats * static_cast<std::size_t>(batch) * sizeof(float);
}

struct step_options {
  bool use_saved_generator = true;  // false: recompute with the generator's current state (wrong)
  bool hint_prefetch = false;       // tell the checkpointer which checkpoint comes next
};

// One training step through a checkpointer: forward saves layer l as checkpoint l and keeps
// only the layer's output; backward restores, recomputes (unless the checkpointer keeps
// everything), computes the layer's gradients and releases the checkpoint.
template <zero::activation_checkpointer C>
gradients checkpointed_step(const mlp& m, const batch_data& d, C& checkpointer, step_options o = {}) {
  constexpr bool recomputes = zero::recomputes_v<C>;
  // a pass-through checkpointer copies nothing: the framework keeps the inputs alive
  constexpr bool keep_inputs_alive = std::is_same_v<C, zero::passthrough_checkpointer>;
  std::vector<matrix> alive(keep_inputs_alive ? static_cast<std::size_t>(m.layers()) : 0);
  const Eigen::Index batch = d.x.cols();
  framework_generator gen{d.rng};
  matrix x = d.x;
  for (int l = 0; l < m.layers(); ++l) {
    const zero::generator_state rng = gen.for_layer(m, l, batch);
    layer_state s = forward_layer(m, l, x, rng);
    if constexpr (keep_inputs_alive) {
      alive[static_cast<std::size_t>(l)] = x;
      checkpointer.save(static_cast<zero::checkpoint_id>(l), bytes_of(alive[static_cast<std::size_t>(l)]), rng);
    } else if constexpr (recomputes) {
      checkpointer.save(static_cast<zero::checkpoint_id>(l), bytes_of(x), rng);
    } else {
      matrix all(s.x.rows() + s.h.rows() + s.scale.rows(), batch);  // x, h and scale stacked
      all.topRows(s.x.rows()) = s.x;
      all.middleRows(s.x.rows(), s.h.rows()) = s.h;
      if (s.scale.size() != 0) all.bottomRows(s.scale.rows()) = s.scale;
      checkpointer.save(static_cast<zero::checkpoint_id>(l), bytes_of(all), rng);
    }
    x = s.output();
  }
  gradients g = empty_gradients(m);
  matrix dy = loss_gradient(x, d.target);
  for (int l = m.layers(); l-- > 0;) {
    const auto ul = static_cast<std::size_t>(l);
    const auto id = static_cast<zero::checkpoint_id>(l);
    if (o.hint_prefetch && l > 0) zero::prefetch(checkpointer, id - 1);
    layer_state s;
    if constexpr (recomputes) {
      matrix input(m.widths[ul], batch);
      const zero::generator_state rng = checkpointer.restore(id, bytes_of(input));
      s = forward_layer(m, l, input, o.use_saved_generator ? rng : gen.state);
    } else {
      const int in = m.widths[ul], out = m.widths[ul + 1], dropped = l == m.dropout_layer ? out : 0;
      matrix all(in + out + dropped, batch);
      checkpointer.restore(id, bytes_of(all));
      s = {all.topRows(in), all.middleRows(in, out), all.bottomRows(dropped)};
    }
    checkpointer.release(id);
    dy = backward_layer(m, l, s, dy, g);
  }
  return g;
}

}  // namespace act
