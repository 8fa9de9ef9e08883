// An update rule with neither an element-wise `update` nor the tensor-wise passes.
#include "common.hpp"
struct rule {
  static constexpr std::string_view name = "no_update";
  using hyperparameters = plain_sgd::hyperparameters;
  using constants = plain_sgd::constants;
  static std::size_t state_count(const hyperparameters&) { return 0; }
  static void validate(const hyperparameters&) {}
  static constants prepare(const hyperparameters& h, std::uint64_t s) { return plain_sgd::prepare(h, s); }
};
int main() { return use<zero::optimizer<zero::stage2, zero::fp32_precision, rule>>(); }
