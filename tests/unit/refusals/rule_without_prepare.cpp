// An update rule without `prepare`.
#include "common.hpp"
struct rule : plain_sgd {
  struct hyperparameters {};
  static std::size_t state_count(const hyperparameters&) { return 0; }
  static void validate(const hyperparameters&) {}
  static constants prepare(const hyperparameters&) { return {}; }  // the step is missing
};
int main() { return use<zero::optimizer<zero::stage2, zero::fp32_precision, rule>>(); }
