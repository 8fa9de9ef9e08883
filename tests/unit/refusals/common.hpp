// Shared by the compile-fail cases: each case defines a policy that misses one part of its
// concept and names the optimizer type with it; the test passes only when the compiler refuses
// the file and its first error names the concept and what is missing (check_refusal.cmake).
#pragma once
#include <zero/zero.hpp>

// A complete element-wise rule, for the cases to take apart.
struct plain_sgd {
  static constexpr std::string_view name = "plain_sgd";
  struct hyperparameters {
    double lr = 0.1;
  };
  struct constants {
    float lr;
  };
  static std::size_t state_count(const hyperparameters&) { return 0; }
  static void validate(const hyperparameters&) {}
  static constants prepare(const hyperparameters& h, std::uint64_t) { return {static_cast<float>(h.lr)}; }
  static void update(const constants& c, float& p, float g, zero::state_ref) { p -= c.lr * g; }
};
static_assert(zero::update_rule<plain_sgd>);

template <class Optimizer>
int use() {
  return sizeof(Optimizer) > 0 ? 0 : 1;
}
