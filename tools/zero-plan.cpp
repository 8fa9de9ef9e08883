// zero-plan: the per-rank memory of a ZeRO configuration, from zero::plan_memory (plan.hpp),
// the same computation the engine's own accounting equals. See `zero-plan --help`. The command
// line itself is tools/plan_cli.hpp.

#include <cstdio>
#include <string_view>
#include <vector>

#include "plan_cli.hpp"

int main(int argc, char** argv) {
  const std::vector<std::string_view> args(argv + 1, argv + argc);
  const zero_plan::outcome o = zero_plan::run_command_line(args);
  std::fwrite(o.out.data(), 1, o.out.size(), stdout);
  std::fwrite(o.err.data(), 1, o.err.size(), stderr);
  return o.status;
}
