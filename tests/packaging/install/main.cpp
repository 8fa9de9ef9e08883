// Consumer of an installed zero (find_package): two thread ranks take one ZeRO-2 step over one
// fp32 parameter and must end with identical parameters, changed by the step.
#include <zero/zero.hpp>

#include <cstddef>
#include <cstdio>
#include <exception>
#include <vector>

int main() {
  constexpr int world = 2;
  constexpr std::size_t n = 37;  // not a multiple of the world size: the shards are padded
  std::vector<std::vector<float>> weights(world, std::vector<float>(n));
  for (auto& w : weights)
    for (std::size_t i = 0; i < n; ++i) w[i] = 0.5f - 0.01f * static_cast<float>(i);
  const std::vector<float> initial = weights[0];

  try {
    zero::thread_group group(world);
    group.run([&](zero::thread_communicator& c) {
      std::vector<float>& w = weights[static_cast<std::size_t>(c.rank())];
      std::vector<zero::parameter<float>> params{{"w", {w.data(), w.size()}}};
      zero::optimizer<zero::stage2, zero::fp32_precision> opt(c, params, {});
      std::vector<float> grad(n);
      for (std::size_t i = 0; i < n; ++i) grad[i] = 0.1f * static_cast<float>(c.rank() + 1) + 0.001f * static_cast<float>(i);
      opt.gradient_ready(0, {grad.data(), grad.size()});
      opt.step();
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zero consumer: %s\n", e.what());
    return 1;
  }

  if (weights[0] != weights[1]) {
    std::fprintf(stderr, "zero consumer: the ranks' parameters differ after step()\n");
    return 1;
  }
  if (weights[0] == initial) {
    std::fprintf(stderr, "zero consumer: step() left the parameters unchanged\n");
    return 1;
  }
  std::printf("zero consumer: ok (w[0] = %g -> %g)\n", static_cast<double>(initial[0]), static_cast<double>(weights[0][0]));
  return 0;
}
