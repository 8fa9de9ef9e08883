#pragma once
//! @file update_rule.hpp
//! The Optimizer policy (an update rule): how one element of the master weights moves given its
//! gradient and its optimizer state. Ships `adamw`, `adam`, `sgd` and `adagrad` with PyTorch's
//! semantics, `lion`, and the tensor-wise `lamb`.
//!
//! A rule has run-time `hyperparameters` (which may change between steps: schedulers live in
//! the framework), computes its per-step `constants` once per step (`prepare`: bias
//! corrections, decay factors), and applies `update` to each element. `update` is a
//! host-and-device function, so host tests cover the math a device backend runs.

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "zero/arithmetic.hpp"
#include "zero/config.hpp"
#include "zero/error.hpp"

ZERO_VECTOR_ABI_QUIET_BEGIN
namespace zero {

//! One element's optimizer state: slot k of element `index`, state stored slot by slot.
struct state_ref {
  float* const* slots;
  std::size_t index;
  ZERO_HOST_DEVICE float& operator[](std::size_t k) const noexcept { return slots[k][index]; }
};

//! What every update rule has: run-time hyperparameters, per-step constants computed once per
//! step (`prepare`, step counting from 1), a number of fp32 state slots per element, and a
//! validation that throws `usage_error` naming the bad value. A rule may also define
//! `initial_state(h, slot)`, the value a state slot starts at (0 otherwise), and
//! `fields(h, field)`, which calls `field(name, value)` for each hyperparameter (a reference to a
//! double or a bool, const when `h` is): the engine then checks that every rank holds the same values for every parameter
//! group, at construction and at every step, and names the field that differs (every shipped
//! rule lists its fields).
template <class R>
concept rule_common =
    requires { typename R::hyperparameters; typename R::constants; } &&
    std::default_initializable<typename R::hyperparameters> &&
    requires(const typename R::hyperparameters& h, std::uint64_t step) {
      { R::name } -> std::convertible_to<std::string_view>;
      { R::state_count(h) } -> std::convertible_to<std::size_t>;
      R::validate(h);
      { R::prepare(h, step) } -> std::same_as<typename R::constants>;
    };

//! An element-wise rule: each element moves given only its own gradient and state.
template <class R>
concept elementwise_rule = rule_common<R> && requires(const typename R::constants& c, float& value, float grad, state_ref s) {
  { R::update(c, value, grad, s) } -> std::same_as<void>;
};

//! Per-tensor sums a tensor-wise rule needs (e.g. LAMB's squared norms of p and of the update).
struct tensor_sums {
  double a = 0;
  double b = 0;
};

//! A tensor-wise rule (LAMB, LARS): the update of an element depends on norms over its whole
//! tensor. `first_pass` updates the state and adds the element's contributions to its tensor's
//! sums; the engine reduces the sums across the ranks that hold pieces of the tensor, so a
//! tensor split across ranks gets the norms of the whole tensor; `tensor_factor` turns the
//! totals into a factor, and `second_pass` applies the update with it.
template <class R>
concept tensorwise_rule =
    rule_common<R> && requires(const typename R::constants& c, float& value, float grad, state_ref s, tensor_sums& sums,
                               const tensor_sums& totals, float factor) {
      { R::first_pass(c, value, grad, s, sums) } -> std::same_as<void>;
      { R::tensor_factor(c, totals) } -> std::convertible_to<float>;
      { R::second_pass(c, value, s, factor) } -> std::same_as<void>;
    };

//! An update rule (the Optimizer policy): element-wise or tensor-wise.
template <class R>
concept update_rule = elementwise_rule<R> || tensorwise_rule<R>;

//! One hyperparameter of a rule, as `R::fields` lists it (a bool as 0 or 1).
struct hyperparameter_field {
  std::string_view name;
  double value;
};

namespace detail {
//! A visitor for `R::fields` that does nothing (a named type: nvcc's front end refuses lambdas in
//! a requires-expression).
struct field_probe {
  template <class T>
  void operator()(std::string_view, T&) const noexcept {}
};
}  // namespace detail

//! Whether rule R lists its hyperparameters (`R::fields`), for writing and for reading.
template <class R>
concept lists_fields = requires(typename R::hyperparameters& h, const typename R::hyperparameters& c, detail::field_probe f) {
  R::fields(h, f);
  R::fields(c, f);
};

//! The hyperparameters `h` of rule R, in the order `R::fields` lists them (empty when R does not).
template <update_rule R>
std::vector<hyperparameter_field> fields_of(const typename R::hyperparameters& h) {
  std::vector<hyperparameter_field> out;
  if constexpr (lists_fields<R>) R::fields(h, [&](std::string_view name, double value) { out.push_back({name, value}); });
  return out;
}

//! Sets field `name` of `h` to `value` (a bool: value != 0). Returns false when R lists no field
//! of that name.
template <update_rule R>
bool set_field(typename R::hyperparameters& h, std::string_view name, double value) {
  bool found = false;
  if constexpr (lists_fields<R>)
    R::fields(h, [&](std::string_view n, auto& field) {
      if (n != name) return;
      field = static_cast<std::remove_reference_t<decltype(field)>>(value);
      found = true;
    });
  return found;
}

//! The value state slot `slot` of rule R starts at.
template <update_rule R>
double initial_state(const typename R::hyperparameters& h, std::size_t slot) {
  if constexpr (requires { R::initial_state(h, slot); }) return R::initial_state(h, slot);
  else return 0.0;
}

namespace detail {
//! A double as it should read in a message: 1e-08, not 0.000000.
inline std::string format(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", value);
  return text;
}

inline void require(bool ok, std::string_view rule, const std::string& what) {
  if (!ok) throw usage_error("zero: invalid " + std::string(rule) + " hyperparameter: " + what);
}

//! Checks the hyperparameters Adam and AdamW share.
template <class H>
void validate_adam(const H& h, std::string_view rule) {
  require(h.lr >= 0, rule, "lr = " + format(h.lr) + " must be >= 0");
  require(h.eps >= 0, rule, "eps = " + format(h.eps) + " must be >= 0");
  require(h.beta1 >= 0 && h.beta1 < 1, rule, "beta1 = " + format(h.beta1) + " must be in [0, 1)");
  require(h.beta2 >= 0 && h.beta2 < 1, rule, "beta2 = " + format(h.beta2) + " must be in [0, 1)");
  require(h.weight_decay >= 0, rule, "weight_decay = " + format(h.weight_decay) + " must be >= 0");
}

//! Calls field(name, value) for each hyperparameter Adam and AdamW share.
template <class H, class F>
void adam_fields(H& h, F& field) {
  field("lr", h.lr), field("beta1", h.beta1), field("beta2", h.beta2), field("eps", h.eps);
  field("weight_decay", h.weight_decay), field("amsgrad", h.amsgrad), field("maximize", h.maximize);
}

//! Per-step constants of Adam and AdamW.
struct adam_constants {
  float lr, decay, weight_decay, beta1, beta2, one_minus_beta1, one_minus_beta2, step_size, bias2_sqrt, eps;
  bool amsgrad, maximize;
};

template <class H>
adam_constants prepare_adam(const H& h, std::uint64_t step, bool decoupled) {
  const double bias1 = 1.0 - std::pow(h.beta1, static_cast<double>(step));
  const double bias2 = 1.0 - std::pow(h.beta2, static_cast<double>(step));
  return {static_cast<float>(h.lr),
          decoupled ? static_cast<float>(1.0 - h.lr * h.weight_decay) : 1.0f,
          decoupled ? 0.0f : static_cast<float>(h.weight_decay),
          static_cast<float>(h.beta1),
          static_cast<float>(h.beta2),
          static_cast<float>(1.0 - h.beta1),
          static_cast<float>(1.0 - h.beta2),
          static_cast<float>(h.lr / bias1),
          static_cast<float>(std::sqrt(bias2)),
          static_cast<float>(h.eps),
          h.amsgrad,
          h.maximize};
}

//! Calls loop(k) with a copy of c whose amsgrad flag the compiler sees as a constant, so that the
//! element loop it runs has no branch (and a conditional store) in it and vectorizes.
template <class F>
void specialize_adam(const adam_constants& c, F& loop) {
  adam_constants k = c;
  if (c.amsgrad) {
    k.amsgrad = true;
    loop(k);
  } else {
    k.amsgrad = false;
    loop(k);
  }
}

//! The element update shared by Adam (L2 decay folded into g) and AdamW (decoupled decay), for
//! any number type of arithmetic.hpp.
template <class F, class State>
ZERO_HOST_DEVICE inline void adam_update(const adam_constants& c, F& p, const F& gradient, State s) noexcept {
  F g = gradient;
  if (c.maximize) g = -g;
  g = g + c.weight_decay * p;  // Adam's L2 term; 0 for AdamW
  p = p * c.decay;             // AdamW's decoupled decay; 1 for Adam
  F& m = s[0];
  F& v = s[1];
  m = c.beta1 * m + c.one_minus_beta1 * g;
  v = c.beta2 * v + c.one_minus_beta2 * (g * g);
  F second = v;
  if (c.amsgrad) {
    F& v_max = s[2];
    v_max = max_of(v_max, v);
    second = v_max;
  }
  const F denom = sqrt_nonnegative(second) / c.bias2_sqrt + c.eps;
  p = p - c.step_size * (m / denom);
}
}  // namespace detail

//! AdamW (Loshchilov & Hutter), as `torch.optim.AdamW`: p *= 1 - lr*wd; m, v moments;
//! p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps). amsgrad keeps max(v).
struct adamw {
  static constexpr std::string_view name = "adamw";
  struct hyperparameters {
    double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 1e-2;
    bool amsgrad = false, maximize = false;
  };
  using constants = detail::adam_constants;
  static constexpr std::size_t state_count(const hyperparameters& h) noexcept { return h.amsgrad ? 3 : 2; }
  static void validate(const hyperparameters& h) { detail::validate_adam(h, name); }
  template <class H, class F>
    requires std::same_as<std::remove_const_t<H>, hyperparameters>
  static void fields(H& h, F&& field) {
    detail::adam_fields(h, field);
  }
  static constants prepare(const hyperparameters& h, std::uint64_t step) { return detail::prepare_adam(h, step, true); }
  template <class F>
  static void specialize(const constants& c, F&& loop) { detail::specialize_adam(c, loop); }
  template <class F, class State>
  ZERO_HOST_DEVICE static void update(const constants& c, F& p, const F& g, State s) noexcept {
    detail::adam_update(c, p, g, s);
  }
};

//! Adam, as `torch.optim.Adam`: like AdamW, but weight decay is L2 (g += wd * p before the
//! moments).
struct adam {
  static constexpr std::string_view name = "adam";
  struct hyperparameters {
    double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
    bool amsgrad = false, maximize = false;
  };
  using constants = detail::adam_constants;
  static constexpr std::size_t state_count(const hyperparameters& h) noexcept { return h.amsgrad ? 3 : 2; }
  static void validate(const hyperparameters& h) { detail::validate_adam(h, name); }
  template <class H, class F>
    requires std::same_as<std::remove_const_t<H>, hyperparameters>
  static void fields(H& h, F&& field) {
    detail::adam_fields(h, field);
  }
  static constants prepare(const hyperparameters& h, std::uint64_t step) { return detail::prepare_adam(h, step, false); }
  template <class F>
  static void specialize(const constants& c, F&& loop) { detail::specialize_adam(c, loop); }
  template <class F, class State>
  ZERO_HOST_DEVICE static void update(const constants& c, F& p, const F& g, State s) noexcept {
    detail::adam_update(c, p, g, s);
  }
};

//! SGD, as `torch.optim.SGD`: g += wd * p; with momentum: buf = momentum * buf +
//! (1 - dampening) * g (first step: buf = g), g = nesterov ? g + momentum * buf : buf;
//! p -= lr * g.
struct sgd {
  static constexpr std::string_view name = "sgd";
  struct hyperparameters {
    double lr = 1e-3, momentum = 0, dampening = 0, weight_decay = 0;
    bool nesterov = false, maximize = false;
  };
  struct constants {
    float lr, momentum, one_minus_dampening, weight_decay;
    bool nesterov, maximize, first;
  };
  static constexpr std::size_t state_count(const hyperparameters& h) noexcept { return h.momentum != 0 ? 1 : 0; }
  static void validate(const hyperparameters& h) {
    detail::require(h.lr >= 0, name, "lr = " + detail::format(h.lr) + " must be >= 0");
    detail::require(h.momentum >= 0, name, "momentum = " + detail::format(h.momentum) + " must be >= 0");
    detail::require(h.weight_decay >= 0, name, "weight_decay = " + detail::format(h.weight_decay) + " must be >= 0");
    detail::require(!h.nesterov || (h.momentum > 0 && h.dampening == 0), name,
                    "nesterov needs momentum > 0 and dampening = 0");
  }
  template <class H, class F>
    requires std::same_as<std::remove_const_t<H>, hyperparameters>
  static void fields(H& h, F&& field) {
    field("lr", h.lr), field("momentum", h.momentum), field("dampening", h.dampening);
    field("weight_decay", h.weight_decay), field("nesterov", h.nesterov), field("maximize", h.maximize);
  }
  static constants prepare(const hyperparameters& h, std::uint64_t step) {
    return {static_cast<float>(h.lr), static_cast<float>(h.momentum), static_cast<float>(1.0 - h.dampening),
            static_cast<float>(h.weight_decay), h.nesterov, h.maximize, step == 1};
  }
  template <class F, class State>
  ZERO_HOST_DEVICE static void update(const constants& c, F& p, const F& gradient, State s) noexcept {
    F g = gradient;
  if (c.maximize) g = -g;
    g = g + c.weight_decay * p;
    if (c.momentum != 0) {
      F& buf = s[0];
      buf = c.first ? g : c.momentum * buf + c.one_minus_dampening * g;
      g = c.nesterov ? g + c.momentum * buf : buf;
    }
    p = p - c.lr * g;
  }
};

//! Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms"): c = beta1 m +
//! (1 - beta1) g; p = p (1 - lr wd) - lr sign(c); m = beta2 m + (1 - beta2) g.
struct lion {
  static constexpr std::string_view name = "lion";
  struct hyperparameters {
    double lr = 1e-4, beta1 = 0.9, beta2 = 0.99, weight_decay = 0;
  };
  struct constants {
    float lr, decay, beta1, one_minus_beta1, beta2, one_minus_beta2;
  };
  static constexpr std::size_t state_count(const hyperparameters&) noexcept { return 1; }
  static void validate(const hyperparameters& h) {
    detail::require(h.lr >= 0, name, "lr = " + detail::format(h.lr) + " must be >= 0");
    detail::require(h.beta1 >= 0 && h.beta1 <= 1, name, "beta1 = " + detail::format(h.beta1) + " must be in [0, 1]");
    detail::require(h.beta2 >= 0 && h.beta2 <= 1, name, "beta2 = " + detail::format(h.beta2) + " must be in [0, 1]");
    detail::require(h.weight_decay >= 0, name, "weight_decay = " + detail::format(h.weight_decay) + " must be >= 0");
  }
  template <class H, class F>
    requires std::same_as<std::remove_const_t<H>, hyperparameters>
  static void fields(H& h, F&& field) {
    field("lr", h.lr), field("beta1", h.beta1), field("beta2", h.beta2), field("weight_decay", h.weight_decay);
  }
  static constants prepare(const hyperparameters& h, std::uint64_t) {
    return {static_cast<float>(h.lr),         static_cast<float>(1.0 - h.lr * h.weight_decay),
            static_cast<float>(h.beta1),      static_cast<float>(1.0 - h.beta1),
            static_cast<float>(h.beta2),      static_cast<float>(1.0 - h.beta2)};
  }
  template <class F, class State>
  ZERO_HOST_DEVICE static void update(const constants& c, F& p, const F& g, State s) noexcept {
    F& m = s[0];
    const F direction = c.beta1 * m + c.one_minus_beta1 * g;
    p = p * c.decay - c.lr * sign_of(direction);
    m = c.beta2 * m + c.one_minus_beta2 * g;
  }
};

//! Adagrad, as `torch.optim.Adagrad`: g += wd p; s += g^2;
//! p -= lr / (1 + (t - 1) lr_decay) g / (sqrt(s) + eps); s starts at initial_accumulator_value.
struct adagrad {
  static constexpr std::string_view name = "adagrad";
  struct hyperparameters {
    double lr = 1e-2, lr_decay = 0, weight_decay = 0, initial_accumulator_value = 0, eps = 1e-10;
    bool maximize = false;
  };
  struct constants {
    float clr, weight_decay, eps;
    bool maximize;
  };
  static constexpr std::size_t state_count(const hyperparameters&) noexcept { return 1; }
  static double initial_state(const hyperparameters& h, std::size_t) noexcept { return h.initial_accumulator_value; }
  static void validate(const hyperparameters& h) {
    detail::require(h.lr >= 0, name, "lr = " + detail::format(h.lr) + " must be >= 0");
    detail::require(h.lr_decay >= 0, name, "lr_decay = " + detail::format(h.lr_decay) + " must be >= 0");
    detail::require(h.weight_decay >= 0, name, "weight_decay = " + detail::format(h.weight_decay) + " must be >= 0");
    detail::require(h.initial_accumulator_value >= 0, name,
                    "initial_accumulator_value = " + detail::format(h.initial_accumulator_value) + " must be >= 0");
    detail::require(h.eps >= 0, name, "eps = " + detail::format(h.eps) + " must be >= 0");
  }
  template <class H, class F>
    requires std::same_as<std::remove_const_t<H>, hyperparameters>
  static void fields(H& h, F&& field) {
    field("lr", h.lr), field("lr_decay", h.lr_decay), field("weight_decay", h.weight_decay);
    field("initial_accumulator_value", h.initial_accumulator_value), field("eps", h.eps), field("maximize", h.maximize);
  }
  static constants prepare(const hyperparameters& h, std::uint64_t step) {
    return {static_cast<float>(h.lr / (1.0 + static_cast<double>(step - 1) * h.lr_decay)),
            static_cast<float>(h.weight_decay), static_cast<float>(h.eps), h.maximize};
  }
  template <class F, class State>
  ZERO_HOST_DEVICE static void update(const constants& c, F& p, const F& gradient, State s) noexcept {
    F g = gradient;
  if (c.maximize) g = -g;
    g = g + c.weight_decay * p;
    F& sum = s[0];
    sum = sum + g * g;
    p = p - c.clr * (g / (sqrt_nonnegative(sum) + c.eps));
  }
};

//! LAMB (You et al.), with bias correction: m, v as Adam; u = m_hat / (sqrt(v_hat) + eps) +
//! wd p; r = |p| / |u| over the whole tensor (1 where either norm is 0); p -= lr r u.
//! Tensor-wise: a tensor split across ranks gets its norms from all of its pieces.
struct lamb {
  static constexpr std::string_view name = "lamb";
  struct hyperparameters {
    double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-6, weight_decay = 0.01;
  };
  struct constants {
    float lr, beta1, beta2, one_minus_beta1, one_minus_beta2, inverse_bias1, inverse_bias2, eps, weight_decay;
  };
  static constexpr std::size_t state_count(const hyperparameters&) noexcept { return 2; }
  static void validate(const hyperparameters& h) { detail::validate_adam(h, name); }
  template <class H, class F>
    requires std::same_as<std::remove_const_t<H>, hyperparameters>
  static void fields(H& h, F&& field) {
    field("lr", h.lr), field("beta1", h.beta1), field("beta2", h.beta2), field("eps", h.eps);
    field("weight_decay", h.weight_decay);
  }
  static constants prepare(const hyperparameters& h, std::uint64_t step) {
    const double bias1 = 1.0 - std::pow(h.beta1, static_cast<double>(step));
    const double bias2 = 1.0 - std::pow(h.beta2, static_cast<double>(step));
    return {static_cast<float>(h.lr),         static_cast<float>(h.beta1),       static_cast<float>(h.beta2),
            static_cast<float>(1.0 - h.beta1), static_cast<float>(1.0 - h.beta2), static_cast<float>(1.0 / bias1),
            static_cast<float>(1.0 / bias2),  static_cast<float>(h.eps),         static_cast<float>(h.weight_decay)};
  }
  template <class F, class State>
  ZERO_HOST_DEVICE static F direction(const constants& c, F p, State s) noexcept {
    const F m_hat = s[0] * c.inverse_bias1;
    const F v_hat = s[1] * c.inverse_bias2;
    return m_hat / (sqrt_nonnegative(v_hat) + c.eps) + c.weight_decay * p;
  }
  //! (The sums add squares of floats in double: exact products, so a fused multiply-add gives
  //! the same sum.)
  template <class F, class State>
  ZERO_HOST_DEVICE static void first_pass(const constants& c, F& p, const F& g, State s, tensor_sums& sums) noexcept {
    s[0] = c.beta1 * s[0] + c.one_minus_beta1 * g;
    s[1] = c.beta2 * s[1] + c.one_minus_beta2 * (g * g);
    const F u = direction(c, p, s);
    const double pd = to_float(p), ud = to_float(u);
    sums.a += pd * pd;
    sums.b += ud * ud;
  }
  static float tensor_factor(const constants&, const tensor_sums& totals) noexcept {
    const double p_norm = std::sqrt(totals.a), u_norm = std::sqrt(totals.b);
    return p_norm > 0 && u_norm > 0 ? static_cast<float>(p_norm / u_norm) : 1.0f;
  }
  template <class F, class State>
  ZERO_HOST_DEVICE static void second_pass(const constants& c, F& p, State s, float trust) noexcept {
    p = p - F(c.lr) * trust * direction(c, p, s);  // F: lr times trust rounded as F rounds
  }
};

static_assert(elementwise_rule<adamw> && update_rule<adamw>);
static_assert(elementwise_rule<adam> && update_rule<adam>);
static_assert(elementwise_rule<sgd> && update_rule<sgd>);
static_assert(elementwise_rule<lion> && update_rule<lion>);
static_assert(elementwise_rule<adagrad> && update_rule<adagrad>);
static_assert(tensorwise_rule<lamb> && update_rule<lamb> && !elementwise_rule<lamb>);
static_assert(lists_fields<adamw> && lists_fields<adam> && lists_fields<sgd> && lists_fields<lion> && lists_fields<adagrad> &&
              lists_fields<lamb>);

}  // namespace zero
ZERO_VECTOR_ABI_QUIET_END
