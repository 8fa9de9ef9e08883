// Update rules: adamw, adam and sgd element updates over many steps against double-precision
// references written from PyTorch's documented algorithms (torch.optim.AdamW / Adam / SGD),
// learning-rate changes between steps, hyperparameter validation and state counts.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "zero/error.hpp"
#include "zero/update_rule.hpp"

static_assert(zero::update_rule<zero::adamw>);
static_assert(zero::update_rule<zero::adam>);
static_assert(zero::update_rule<zero::sgd>);

namespace {

constexpr std::size_t elements = 300;
constexpr std::uint64_t steps = 50;
// fp32 rule vs double reference after 50 steps: the largest relative error measured on the
// parameters is 3.4e-6 (AdamW, whose decay multiply rounds every step; Adam and SGD stay below
// 1e-6; the states below 7e-7 of their largest magnitude). 1e-5 leaves a 3x margin and still
// catches formula errors (a missing bias correction, eps inside the square root or before the
// division by sqrt(1 - beta2^t) with the large-eps case, are off by far more).
constexpr double tolerance = 1e-5;

std::uint64_t mix(std::uint64_t z) {  // splitmix64: deterministic, portable
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
double unit(std::uint64_t h) { return static_cast<double>(h >> 11) / 9007199254740992.0; }  // [0, 1)

//! Initial parameter: magnitude in [1, 3), either sign; the runs below move parameters by much
//! less than 1, so they stay away from 0 and relative errors mean something.
float initial_param(std::size_t i) {
  const std::uint64_t h = mix(0x5eed0000u + i);
  const double mag = 1.0 + 2.0 * unit(h);
  return static_cast<float>((h & 1u) ? -mag : mag);
}

//! Gradient of element i at step t: roughly normal, magnitudes spread over 2^-6 .. 2^2.
float gradient(std::uint64_t t, std::size_t i) {
  const std::uint64_t h = mix(mix(t * 1000003u) ^ i);
  const double normalish = unit(h) + unit(mix(h)) + unit(mix(h + 1)) - 1.5;
  const int e = static_cast<int>(mix(h + 2) % 9) - 6;
  return static_cast<float>(std::ldexp(normalish, e));
}

//! A learning-rate schedule that changes every step (warm-up, then decay).
double scheduled_lr(double base, std::uint64_t t) {
  return t <= 10 ? base * static_cast<double>(t) / 10.0 : base * (1.0 - 0.015 * static_cast<double>(t - 10));
}

// ---- double-precision references, from PyTorch's documentation -------------------------------

struct adam_ref_state { double m = 0, v = 0, v_max = 0; };

//! torch.optim.Adam (decoupled = false) / AdamW (decoupled = true), one element, step t >= 1:
//!   g = -g if maximize
//!   Adam:  g = g + wd * p            AdamW: p = p - lr * wd * p
//!   m = b1 m + (1 - b1) g ; v = b2 v + (1 - b2) g^2
//!   m_hat = m / (1 - b1^t)
//!   amsgrad: v_max = max(v_max, v), v_hat = v_max / (1 - b2^t); else v_hat = v / (1 - b2^t)
//!   p = p - lr * m_hat / (sqrt(v_hat) + eps)
//! (PyTorch computes the denominator as sqrt(v) / sqrt(1 - b2^t) + eps: the same value.)
template <class H>
void adam_reference(const H& h, std::uint64_t t, bool decoupled, double& p, double g, adam_ref_state& s) {
  if (h.maximize) g = -g;
  if (decoupled) p = p - h.lr * h.weight_decay * p;
  else g = g + h.weight_decay * p;
  s.m = h.beta1 * s.m + (1 - h.beta1) * g;
  s.v = h.beta2 * s.v + (1 - h.beta2) * g * g;
  const double m_hat = s.m / (1 - std::pow(h.beta1, static_cast<double>(t)));
  double second = s.v;
  if (h.amsgrad) {
    s.v_max = std::max(s.v_max, s.v);
    second = s.v_max;
  }
  const double v_hat = second / (1 - std::pow(h.beta2, static_cast<double>(t)));
  p = p - h.lr * m_hat / (std::sqrt(v_hat) + h.eps);
}

struct sgd_ref_state { double buf = 0; bool has_buf = false; };

//! torch.optim.SGD, one element:
//!   g = -g if maximize ; g = g + wd * p
//!   momentum != 0: buf = g on the first step, else buf = momentum * buf + (1 - dampening) * g;
//!                  g = nesterov ? g + momentum * buf : buf
//!   p = p - lr * g
void sgd_reference(const zero::sgd::hyperparameters& h, double& p, double g, sgd_ref_state& s) {
  if (h.maximize) g = -g;
  g = g + h.weight_decay * p;
  if (h.momentum != 0) {
    if (!s.has_buf) {
      s.buf = g;
      s.has_buf = true;
    } else {
      s.buf = h.momentum * s.buf + (1 - h.dampening) * g;
    }
    g = h.nesterov ? g + h.momentum * s.buf : s.buf;
  }
  p = p - h.lr * g;
}

// ---- running the rules ---------------------------------------------------------------------------

struct run_result {
  double max_param_error = 0;  // relative
  double max_state_error = 0;  // relative to the state's largest magnitude
  std::vector<float> params;
  bool finite = true;
};

double rel(double got, double want) { return std::fabs(got - want) / std::fabs(want); }

//! Runs an Adam-family rule (fp32, the shipped update) and the double reference side by side.
template <class Rule>
run_result run_adam(typename Rule::hyperparameters h, bool decoupled, bool schedule) {
  const double base_lr = h.lr;
  const std::size_t slots = Rule::state_count(h);
  std::vector<std::vector<float>> state(slots, std::vector<float>(elements, 0.0f));
  std::vector<float*> slot_ptrs;
  for (auto& s : state) slot_ptrs.push_back(s.data());
  std::vector<float> p(elements);
  std::vector<double> ref_p(elements);
  std::vector<adam_ref_state> ref_s(elements);
  for (std::size_t i = 0; i < elements; ++i) p[i] = initial_param(i), ref_p[i] = static_cast<double>(p[i]);
  for (std::uint64_t t = 1; t <= steps; ++t) {
    if (schedule) h.lr = scheduled_lr(base_lr, t);
    Rule::validate(h);
    const auto c = Rule::prepare(h, t);
    for (std::size_t i = 0; i < elements; ++i) {
      const float g = gradient(t, i);
      Rule::update(c, p[i], g, zero::state_ref{slot_ptrs.data(), i});
      adam_reference(h, t, decoupled, ref_p[i], static_cast<double>(g), ref_s[i]);
    }
  }
  run_result r;
  double m_scale = 0, v_scale = 0;
  for (const auto& s : ref_s) m_scale = std::max(m_scale, std::fabs(s.m)), v_scale = std::max(v_scale, s.v);
  for (std::size_t i = 0; i < elements; ++i) {
    r.finite = r.finite && std::isfinite(p[i]);
    r.max_param_error = std::max(r.max_param_error, rel(p[i], ref_p[i]));
    r.max_state_error = std::max(r.max_state_error, std::fabs(state[0][i] - ref_s[i].m) / m_scale);
    r.max_state_error = std::max(r.max_state_error, std::fabs(state[1][i] - ref_s[i].v) / v_scale);
    if (h.amsgrad) r.max_state_error = std::max(r.max_state_error, std::fabs(state[2][i] - ref_s[i].v_max) / v_scale);
  }
  r.params = p;
  return r;
}

run_result run_sgd(zero::sgd::hyperparameters h, bool schedule) {
  const double base_lr = h.lr;
  const std::size_t slots = zero::sgd::state_count(h);
  std::vector<float> buf(elements, 0.0f);
  float* slot_ptrs[1] = {buf.data()};
  std::vector<float> p(elements);
  std::vector<double> ref_p(elements);
  std::vector<sgd_ref_state> ref_s(elements);
  for (std::size_t i = 0; i < elements; ++i) p[i] = initial_param(i), ref_p[i] = static_cast<double>(p[i]);
  for (std::uint64_t t = 1; t <= steps; ++t) {
    if (schedule) h.lr = scheduled_lr(base_lr, t);
    zero::sgd::validate(h);
    const auto c = zero::sgd::prepare(h, t);
    for (std::size_t i = 0; i < elements; ++i) {
      const float g = gradient(t, i);
      // with momentum 0 the rule has no state: it must not touch the (null) slots
      zero::sgd::update(c, p[i], g, zero::state_ref{slots ? slot_ptrs : nullptr, i});
      sgd_reference(h, ref_p[i], static_cast<double>(g), ref_s[i]);
    }
  }
  run_result r;
  double scale = 0;
  for (const auto& s : ref_s) scale = std::max(scale, std::fabs(s.buf));
  for (std::size_t i = 0; i < elements; ++i) {
    r.finite = r.finite && std::isfinite(p[i]);
    r.max_param_error = std::max(r.max_param_error, rel(p[i], ref_p[i]));
    if (slots) r.max_state_error = std::max(r.max_state_error, std::fabs(buf[i] - ref_s[i].buf) / scale);
  }
  r.params = p;
  return r;
}

//! Largest relative difference between two parameter vectors (to show a setting mattered).
double max_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, rel(a[i], b[i]));
  return d;
}

void check_close(const run_result& r) {
  CHECK(r.finite);
  CHECK(r.max_param_error < tolerance);
  CHECK(r.max_state_error < tolerance);
}

template <class Rule>
std::string validation_message(const typename Rule::hyperparameters& h) {
  try {
    Rule::validate(h);
  } catch (const zero::usage_error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

//! The number the message shows after "<name> = ", parsed back.
double shown_value(const std::string& message, const std::string& name) {
  const auto at = message.find(name + " = ");
  if (at == std::string::npos) return std::nan("");
  return std::strtod(message.c_str() + at + name.size() + 3, nullptr);
}

//! Whether the message shows `value` for `name` to 3 significant digits.
bool shows(const std::string& message, const std::string& name, double value) {
  return std::fabs(shown_value(message, name) - value) <= 1e-3 * std::fabs(value);
}

}  // namespace

TEST_SUITE("unit") {

TEST_CASE("adamw: 50 steps match the PyTorch double reference") {
  SUBCASE("defaults (decoupled weight decay 1e-2)") { check_close(run_adam<zero::adamw>({}, true, false)); }
  SUBCASE("strong weight decay and beta1 0") {
    zero::adamw::hyperparameters h;
    h.lr = 3e-3, h.weight_decay = 0.1, h.beta1 = 0.0, h.beta2 = 0.99;
    check_close(run_adam<zero::adamw>(h, true, false));
  }
  SUBCASE("amsgrad") {
    zero::adamw::hyperparameters h;
    h.amsgrad = true;
    h.beta2 = 0.9;  // v decreases often, so the max matters
    check_close(run_adam<zero::adamw>(h, true, false));
  }
  SUBCASE("maximize") {
    zero::adamw::hyperparameters h;
    h.maximize = true;
    check_close(run_adam<zero::adamw>(h, true, false));
  }
  SUBCASE("large eps") {
    zero::adamw::hyperparameters h;
    h.eps = 1e-2;
    check_close(run_adam<zero::adamw>(h, true, false));
  }
}

TEST_CASE("adam: 50 steps match the PyTorch double reference") {
  SUBCASE("defaults (no weight decay)") { check_close(run_adam<zero::adam>({}, false, false)); }
  SUBCASE("L2 weight decay added to the gradient") {
    zero::adam::hyperparameters h;
    h.weight_decay = 0.05;
    check_close(run_adam<zero::adam>(h, false, false));
  }
  SUBCASE("amsgrad and maximize with weight decay") {
    zero::adam::hyperparameters h;
    h.amsgrad = true, h.maximize = true, h.weight_decay = 0.02, h.beta2 = 0.9;
    check_close(run_adam<zero::adam>(h, false, false));
  }
}

TEST_CASE("sgd: 50 steps match the PyTorch double reference") {
  zero::sgd::hyperparameters h;
  h.lr = 2e-3;
  SUBCASE("plain") { check_close(run_sgd(h, false)); }
  SUBCASE("weight decay") {
    h.weight_decay = 0.1;
    check_close(run_sgd(h, false));
  }
  SUBCASE("momentum") {
    h.momentum = 0.9;
    check_close(run_sgd(h, false));
  }
  SUBCASE("momentum with dampening (first step buf = g)") {
    h.momentum = 0.8, h.dampening = 0.5;
    check_close(run_sgd(h, false));
  }
  SUBCASE("nesterov with weight decay") {
    h.momentum = 0.9, h.nesterov = true, h.weight_decay = 0.01;
    check_close(run_sgd(h, false));
  }
  SUBCASE("maximize negates before weight decay") {
    h.maximize = true, h.weight_decay = 0.1, h.momentum = 0.5;
    check_close(run_sgd(h, false));
  }
}

TEST_CASE("update rules: changing lr between steps follows the schedule") {
  zero::adamw::hyperparameters aw;
  aw.weight_decay = 0.05;  // lr also scales AdamW's decay
  const auto aw_sched = run_adam<zero::adamw>(aw, true, true);
  check_close(aw_sched);
  CHECK(max_difference(aw_sched.params, run_adam<zero::adamw>(aw, true, false).params) > 1e-4);

  zero::adam::hyperparameters a;
  a.amsgrad = true;
  const auto a_sched = run_adam<zero::adam>(a, false, true);
  check_close(a_sched);
  CHECK(max_difference(a_sched.params, run_adam<zero::adam>(a, false, false).params) > 1e-4);

  zero::sgd::hyperparameters s;
  s.lr = 2e-3, s.momentum = 0.9, s.nesterov = true;
  const auto s_sched = run_sgd(s, true);
  check_close(s_sched);
  CHECK(max_difference(s_sched.params, run_sgd(s, false).params) > 1e-4);
}

TEST_CASE("update rules: settings change the result") {
  // guards the comparisons above against settings the rules ignore (the reference would then
  // agree only if the setting changed nothing)
  zero::adamw::hyperparameters base;
  auto with = [&](auto change) {
    auto h = base;
    change(h);
    return run_adam<zero::adamw>(h, true, false).params;
  };
  const auto plain = with([](auto&) {});
  CHECK(max_difference(plain, with([](auto& h) { h.amsgrad = true, h.beta2 = 0.9; })) > 1e-5);
  CHECK(max_difference(plain, with([](auto& h) { h.maximize = true; })) > 1e-3);
  CHECK(max_difference(plain, with([](auto& h) { h.weight_decay = 0.0; })) > 1e-6);
  zero::adam::hyperparameters l2;
  l2.weight_decay = 1e-2;  // same decay as adamw's default, but as L2: a different result
  CHECK(max_difference(plain, run_adam<zero::adam>(l2, false, false).params) > 1e-6);
  zero::sgd::hyperparameters s;
  s.lr = 2e-3, s.momentum = 0.9;
  auto d = s;
  d.dampening = 0.5;
  auto n = s;
  n.nesterov = true;
  CHECK(max_difference(run_sgd(s, false).params, run_sgd(d, false).params) > 1e-4);
  CHECK(max_difference(run_sgd(s, false).params, run_sgd(n, false).params) > 1e-4);
}

TEST_CASE("adamw: first step closed form") {
  // step 1 from zero state: m_hat = g, v_hat = g^2, so p = p (1 - lr wd) - lr g / (|g| + eps)
  zero::adamw::hyperparameters h;
  h.lr = 0.1, h.weight_decay = 0.5, h.eps = 1e-8;
  const auto c = zero::adamw::prepare(h, 1);
  float m = 0, v = 0;
  float* slots[2] = {&m, &v};
  float p = 2.0f;
  zero::adamw::update(c, p, -4.0f, zero::state_ref{slots, 0});
  CHECK(p == doctest::Approx(2.0 * (1 - 0.05) + 0.1).epsilon(1e-6));
  CHECK(m == doctest::Approx(-0.4));
  CHECK(v == doctest::Approx(0.016));
  // Adam with the same numbers: g = -4 + 0.5 * 2 = -3, so p = 2 + 0.1 * 3 / 3
  zero::adam::hyperparameters ha;
  ha.lr = 0.1, ha.weight_decay = 0.5;
  float ma = 0, va = 0;
  float* slots_a[2] = {&ma, &va};
  float pa = 2.0f;
  zero::adam::update(zero::adam::prepare(ha, 1), pa, -4.0f, zero::state_ref{slots_a, 0});
  CHECK(pa == doctest::Approx(2.1).epsilon(1e-6));
  CHECK(ma == doctest::Approx(-0.3));
}

TEST_CASE("sgd: first steps closed form") {
  zero::sgd::hyperparameters h;
  h.lr = 0.5, h.momentum = 0.9, h.dampening = 0.5, h.weight_decay = 0.25;
  float buf = 123.0f;  // garbage: the first step must overwrite it with g
  float* slots[1] = {&buf};
  float p = 2.0f;
  zero::sgd::update(zero::sgd::prepare(h, 1), p, 1.0f, zero::state_ref{slots, 0});
  CHECK(buf == 1.5f);       // g + wd p = 1 + 0.5
  CHECK(p == 1.25f);        // 2 - 0.5 * 1.5
  zero::sgd::update(zero::sgd::prepare(h, 2), p, 1.0f, zero::state_ref{slots, 0});
  // g = 1 + 0.25 * 1.25 = 1.3125; buf = 0.9 * 1.5 + 0.5 * 1.3125 = 2.00625; p = 1.25 - 0.5 * buf
  CHECK(buf == doctest::Approx(2.00625));
  CHECK(p == doctest::Approx(0.246875));
}

TEST_CASE("update rules: names and state counts") {
  CHECK(zero::adamw::name == "adamw");
  CHECK(zero::adam::name == "adam");
  CHECK(zero::sgd::name == "sgd");
  zero::adamw::hyperparameters aw;
  CHECK(zero::adamw::state_count(aw) == 2u);
  aw.amsgrad = true;
  CHECK(zero::adamw::state_count(aw) == 3u);
  zero::adam::hyperparameters a;
  CHECK(zero::adam::state_count(a) == 2u);
  a.amsgrad = true;
  CHECK(zero::adam::state_count(a) == 3u);
  zero::sgd::hyperparameters s;
  CHECK(zero::sgd::state_count(s) == 0u);
  s.momentum = 0.9;
  CHECK(zero::sgd::state_count(s) == 1u);
  // PyTorch's defaults
  CHECK(zero::adamw::hyperparameters{}.weight_decay == 1e-2);
  CHECK(zero::adam::hyperparameters{}.weight_decay == 0.0);
  CHECK(zero::adamw::hyperparameters{}.lr == 1e-3);
  CHECK(zero::adamw::hyperparameters{}.beta2 == 0.999);
}

TEST_CASE("update rules: valid edge hyperparameters are accepted") {
  zero::adamw::hyperparameters aw;
  aw.lr = 0, aw.beta1 = 0, aw.beta2 = 0, aw.eps = 0, aw.weight_decay = 0;
  CHECK_NOTHROW(zero::adamw::validate(aw));
  CHECK_NOTHROW(zero::adam::validate(zero::adam::hyperparameters{}));
  zero::sgd::hyperparameters s;
  s.momentum = 0.9, s.nesterov = true;
  CHECK_NOTHROW(zero::sgd::validate(s));
  s.nesterov = false, s.dampening = 0.3;
  CHECK_NOTHROW(zero::sgd::validate(s));
}

}  // TEST_SUITE("unit")

TEST_SUITE("reliability") {

TEST_CASE("adam family: invalid hyperparameters are usage errors naming the value") {
  auto check_adam = [](auto rule_tag, auto change, const std::string& name, const std::string& value) {
    using Rule = decltype(rule_tag);
    typename Rule::hyperparameters h;
    change(h);
    const std::string m = validation_message<Rule>(h);
    CAPTURE(m);
    CHECK(contains(m, std::string(Rule::name)));
    CHECK(contains(m, name + " = " + value));
    CHECK_THROWS_AS(Rule::validate(h), zero::usage_error);
  };
  for (int which = 0; which < 2; ++which) {
    auto run = [&](auto tag) {
      check_adam(tag, [](auto& h) { h.lr = -1e-3; }, "lr", "-0.001");
      check_adam(tag, [](auto& h) { h.beta1 = 1.0; }, "beta1", "1");
      check_adam(tag, [](auto& h) { h.beta1 = -0.5; }, "beta1", "-0.5");
      check_adam(tag, [](auto& h) { h.beta2 = 1.0; }, "beta2", "1");
      check_adam(tag, [](auto& h) { h.beta2 = 1.5; }, "beta2", "1.5");
      check_adam(tag, [](auto& h) { h.eps = -0.5; }, "eps", "-0.5");
      check_adam(tag, [](auto& h) { h.weight_decay = -0.25; }, "weight_decay", "-0.25");
    };
    if (which == 0) run(zero::adamw{});
    else run(zero::adam{});
  }
  zero::adamw::hyperparameters nan_lr;
  nan_lr.lr = std::nan("");
  CHECK_THROWS_AS(zero::adamw::validate(nan_lr), zero::usage_error);
}

TEST_CASE("sgd: invalid hyperparameters are usage errors naming the value") {
  zero::sgd::hyperparameters h;
  h.lr = -0.5;
  CHECK(contains(validation_message<zero::sgd>(h), "lr = -0.5"));
  h = {};
  h.momentum = -0.25;
  CHECK(contains(validation_message<zero::sgd>(h), "momentum = -0.25"));
  h = {};
  h.weight_decay = -2;
  CHECK(contains(validation_message<zero::sgd>(h), "weight_decay = -2"));
  h = {};
  h.nesterov = true, h.momentum = 0.9, h.dampening = 0.1;
  const std::string m = validation_message<zero::sgd>(h);
  CHECK(contains(m, "sgd"));
  CHECK(contains(m, "nesterov"));
  CHECK(contains(m, "dampening"));
  CHECK_THROWS_AS(zero::sgd::validate(h), zero::usage_error);
  h.dampening = 0, h.momentum = 0;
  CHECK(contains(validation_message<zero::sgd>(h), "nesterov"));
}

TEST_CASE("update rules: validation messages show small bad values faithfully") {
  // eps and weight decay are small numbers: a message must show the value the caller passed,
  // not a rounding of it (std::to_string(-1e-8) is "-0.000000").
  zero::adamw::hyperparameters h;
  h.eps = -1e-8;
  const std::string eps_message = validation_message<zero::adamw>(h);
  CAPTURE(eps_message);
  CHECK(shows(eps_message, "eps", -1e-8));
  zero::adam::hyperparameters a;
  a.weight_decay = -1e-7;
  const std::string wd_message = validation_message<zero::adam>(a);
  CAPTURE(wd_message);
  CHECK(shows(wd_message, "weight_decay", -1e-7));
  zero::sgd::hyperparameters s;
  s.lr = -1e-9;
  const std::string lr_message = validation_message<zero::sgd>(s);
  CAPTURE(lr_message);
  CHECK(shows(lr_message, "lr", -1e-9));
}

}  // TEST_SUITE("reliability")
