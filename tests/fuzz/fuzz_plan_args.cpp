// Fuzz target of zero-plan's command line (tools/plan_cli.hpp): the input is the argument list,
// NUL-separated. Built with clang -fsanitize=fuzzer,address,undefined (cmake/zeroFuzz.cmake) and,
// always, into the g++ replay test (replay_test.cpp).
//
// Properties checked on every input:
//  * the tool exits 0 with its table, JSON or help on standard output and nothing on standard
//    error, or exits 2 with "zero-plan: <why>" and the usage on standard error and nothing on
//    standard output; it never crashes or throws anything else;
//  * every memory plan it prints adds up without wrapping around (the total is the exact sum of
//    its parts, the parameters' bytes are exact);
//  * `--fit B` answers the boundary: that many parameters fit in B bytes, one more does not
//    (where more than zero::max_planned_parameters would fit, stage 3 over many ranks, the tool
//    refuses with exit 2).
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "fuzz_input.hpp"
#include "plan_cli.hpp"

namespace {

__extension__ typedef unsigned __int128 wide;

void require(bool ok) {
  if (!ok) std::abort();
}

void check_plan(const zero::memory_plan& p, std::uint64_t params, zero::precision_kind precision, zero::stage stage) {
  const wide parts = wide{p.parameters} + p.gradients + p.framework_gradients + p.master_weights + p.optimizer_state + p.buffers;
  require(parts == p.total());
  const wide param_bytes = wide{params} * (precision == zero::precision_kind::fp32 ? 4 : 2);
  if (stage == zero::stage3) require(p.parameters == p.engine.of(zero::memory_kind::parameter_shard));  // the only copy
  else require(param_bytes == p.parameters);
  wide engine = 0;
  for (std::size_t b : p.engine.bytes) engine += b;
  require(engine == p.engine.total());
}

}  // namespace

int zero_fuzz_plan_args(const std::uint8_t* data, std::size_t size) {
  const std::vector<std::string> words = fuzz::arguments(data, size);
  const std::vector<std::string_view> args = fuzz::views(words);
  const zero_plan::outcome o = zero_plan::run_command_line(args);
  if (o.status == 0) {
    require(!o.out.empty() && o.err.empty());
  } else {
    require(o.status == 2 && o.out.empty() && o.err.starts_with("zero-plan: ") &&
            o.err.find(zero_plan::usage_text) != std::string::npos);
    return 0;
  }
  for (std::string_view a : args)
    if (a == "-h" || a == "--help") return 0;
  // the same settings again, to check the numbers printed
  const zero_plan::settings s = zero_plan::parse(args);
  for (int w : s.worlds) {
    if (s.fit) {
      const std::uint64_t n =
          zero::largest_fitting(*s.fit, w, s.stage, s.precision, s.optimizer, s.layout, s.partitioner, s.largest_param);
      const auto total = [&](std::uint64_t count) {
        const zero::memory_plan p =
            zero::plan_memory(count, w, s.stage, s.precision, s.optimizer, s.layout, s.partitioner, s.largest_param);
        check_plan(p, count, s.precision, s.stage);
        return p.total();
      };
      if (n > 0) require(total(n) <= *s.fit);
      require(total(n + 1) > *s.fit);
    } else {
      check_plan(zero::plan_memory(*s.params, w, s.stage, s.precision, s.optimizer, s.layout, s.partitioner, s.largest_param),
                 *s.params, s.precision, s.stage);
    }
  }
  return 0;
}

#ifdef ZERO_LIBFUZZER
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) { return zero_fuzz_plan_args(data, size); }
#endif
