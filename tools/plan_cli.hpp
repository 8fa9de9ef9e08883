#pragma once
// zero-plan's command line (tools/zero-plan.cpp is main() around it): parsing the arguments,
// and the text or JSON it prints, as functions a fuzz target (tests/fuzz/fuzz_plan_args.cpp) and
// tests can call. Not installed: a part of the tool, not of the library.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "zero/plan.hpp"

namespace zero_plan {

constexpr std::uint64_t max_params = 1'000'000'000'000'000;  // 1000T: far beyond any model
constexpr std::uint64_t max_budget = 10'000'000'000'000'000;  // 10 PB: below plan.hpp's 2^56
constexpr int max_world = 1 << 20;
constexpr std::uint64_t max_gather_elements = std::uint64_t{1} << 40;  // x 1024 buffers x 4 bytes: far below 2^64

__extension__ typedef unsigned __int128 wide;  // exact arithmetic while parsing "7.5B"

constexpr std::string_view usage_text =
    "usage: zero-plan --params N --world W[,W...] [--stage 0|1|2|3] [--precision P] [--optimizer O]\n"
    "                 [--partitioner contiguous|bucketed] [--largest-param N] [--json]\n"
    "                 [--gather-buffers K] [--gather-elements N]\n"
    "                 [--checkpoint-bytes BYTES --layers L [--model-parallel M]]\n"
    "       zero-plan --fit BYTES --world W[,W...] [same options]\n"
    "       zero-plan --help\n";

constexpr std::string_view help_text = R"(
Per-rank memory of data-parallel training with zero's ZeRO engine (stages 0 to 3), computed by
zero::plan_memory (include/zero/plan.hpp), which the engine's own accounting equals.

  --params N        the parameter count: a whole number or one with a suffix K (10^3), M (10^6),
                    B (10^9), T (10^12): 124000000, 350M, 7.5B, 1.2T
  --world W[,W...]  data-parallel ranks; a comma-separated list gives one column per world size
  --fit BYTES       instead of --params: the largest parameter count whose per-rank total fits in
                    BYTES, per world size. Units: B, KB, MB, GB, TB (powers of 1000), KiB, MiB,
                    GiB, TiB (powers of 1024): 80GB, 80GiB, 40000000000
  --stage S         0 (plain data parallelism), 1 (optimizer state and master weights
                    partitioned), 2 (gradients too), 3 (parameters too). Default 2
  --precision P     fp32        fp32 everywhere, no separate master copy
                    bf16        bf16 params and gradients; fp32 master, state, accumulation (default)
                    fp16        fp16 params and gradients; fp32 master, state, accumulation
                    bf16-comm   as bf16, gradients reduced in bf16
                    bf16-accum  as bf16, gradients accumulated in bf16
                    bf16-pure   bf16 params, no master copy
  --optimizer O     adam (default), adamw (2 fp32 state slots per parameter), adam-amsgrad (3),
                    sgd (0), sgd-momentum (1), lion (1), adagrad (1), lamb (2)
  --partitioner K   contiguous (DeepSpeed's layout, default) or bucketed (Megatron's): their
                    reduction units, and so their buckets, differ in size
  --largest-param N the largest parameter's elements (times its uses, for a shared weight):
                    stage 2 reading gradient spans, the framework holds at most one reduction
                    unit plus this many gradients at once. Default 0: that parameter not counted
  --bucket N        elements per reduction bucket, all ranks together (default 4194304 = 4Mi;
                    suffixes as --params)
  --alignment N     elements every shard slice is a multiple of (default 16)
  --gather-buffers K  stage 3: the buffers gathered parameter groups are handed over in
                    (default 2: one gathers while the framework computes with the other)
  --gather-elements N  stage 3: model-precision elements per gather buffer, all ranks' parts
                    of a group together (default 16777216 = 16Mi; suffixes as --params)
  --gradient-slots  the framework writes its gradients into engine-owned slots
  --defer-reduction stage 2 with gradient accumulation: keep a full local gradient buffer and
                    reduce it once per step
  --checkpoint-bytes BYTES  with --layers: one activation checkpoint per layer of BYTES (a
                    layer's input: batch x sequence x hidden x 2 bytes in bf16); prints each
                    activation policy's bytes per rank, device-side and host (units as --fit)
  --layers L        the number of checkpoints a step holds (one per layer)
  --model-parallel M  the ranks that hold each activation alike, across which the partitioned
                    policies (P_a, P_a+cpu) split it. Default 1
  --json            one JSON object (one world size) or an array of them (a list); exact bytes
  -h, --help        this text

What each kind counts, per rank, for P parameters over W ranks (P_pad: P rounded up to a
multiple of alignment x W):
  parameters        the framework's model-precision parameters: P x 2 bytes (4 for fp32), whole
                    on every rank (ZeRO-2 does not partition them); stage 3: the engine's shard
                    of them, P_pad / W x 2 bytes
  gradients         the gradients the engine holds for the update, in the accumulation type
                    (fp32; bf16 for bf16-accum): P_pad elements in stages 0 and 1, P_pad / W in
                    stages 2 and 3; plus P x 2 bytes of slots with --gradient-slots
  master_weights    the fp32 master copy of the parameters this rank updates: P (stage 0) or
                    P_pad / W (stages 1 to 3) x 4 bytes; 0 for fp32 and bf16-pure
  optimizer_state   the optimizer's fp32 state slots for the same elements
  framework_gradients  the gradients the framework itself holds at their peak: stages 2, 3 (spans,
                    reduced while backward runs) one reduction unit plus --largest-param
                    gradients, in the gradient type; 0 in stages 0 and 1, with
                    --defer-reduction and with --gradient-slots (the engine reads each
                    gradient at once, or the framework writes into the engine's slots)
  model_states_bytes  parameters + gradients + framework_gradients + master_weights +
                    optimizer_state
  buffers           the engine's model-precision shard for the all-gather (stages 1, 2) and its
                    constant-size reduction buckets; stage 3: the buckets and the gather
                    buffers, K x N x 2 bytes
  total             model_states_bytes + buffers; --fit compares this with BYTES
Activation checkpoints per rank, with --checkpoint-bytes B and --layers L over M model-parallel
ranks (zero::plan_activations, the engine's checkpointers' own expectation; S = B / M rounded up
to whole 8-byte words):
  plain             L x B device-side (plain_checkpointer)
  contiguous (MD)   L x B rounded up to 64 bytes each, one arena (contiguous_checkpointer)
  partitioned (P_a) L x S, plus a gather buffer of M x S when B is not a multiple of 8 x M
  offloaded (cpu)   L x B in host memory, two staging buffers of B device-side
  P_a+cpu           L x S in host memory; device-side two staging buffers of S and the gather
Not counted: activations other than the checkpoints, the framework's temporaries, allocator
overhead. The ZeRO
paper counts 16-bit gradients (2 + 2 + 12 = 16 bytes per parameter in stage 0 with Adam); zero
accumulates them in fp32 (18 bytes), as DeepSpeed issues #1800 and #2768 advise.

Exit status: 0, or 2 with a message and the usage line on a bad argument.
)";

struct bad_argument {
  std::string message;
};

struct settings {
  std::optional<std::uint64_t> params;
  std::optional<std::uint64_t> fit;
  std::vector<int> worlds;
  zero::stage stage = zero::stage2;
  zero::precision_kind precision = zero::precision_kind::bf16;
  zero::optimizer_kind optimizer = zero::optimizer_kind::adam;
  zero::partitioner_kind partitioner = zero::partitioner_kind::contiguous;
  std::uint64_t largest_param = 0;
  zero::layout_options layout;
  bool json = false;
  std::uint64_t checkpoint_bytes = 0, layers = 0;  // activation checkpoints (0: not asked)
  int model_parallel = 1;
};

struct unit {
  std::string_view name;
  std::uint64_t factor;
};
constexpr unit count_units[] = {{"", 1}, {"K", 1'000}, {"M", 1'000'000}, {"B", 1'000'000'000}, {"T", 1'000'000'000'000}};
constexpr unit byte_units[] = {{"", 1},
                               {"B", 1},
                               {"KB", 1'000},
                               {"MB", 1'000'000},
                               {"GB", 1'000'000'000},
                               {"TB", 1'000'000'000'000},
                               {"KiB", 1ull << 10},
                               {"MiB", 1ull << 20},
                               {"GiB", 1ull << 30},
                               {"TiB", 1ull << 40}};

//! "7.5B" -> 7500000000: digits, an optional fraction, an optional unit; the result must be a
//! whole number no larger than `max`.
template <std::size_t N>
std::uint64_t parse_scaled(std::string_view option, std::string_view text, const unit (&units)[N], std::uint64_t max) {
  const auto fail = [&](const std::string& why) {
    return bad_argument{std::string(option) + " '" + std::string(text) + "': " + why};
  };
  std::size_t i = 0;
  wide whole = 0, fraction = 0, fraction_scale = 1;
  const std::size_t digits_begin = i;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
    whole = whole * 10 + static_cast<unsigned>(text[i] - '0');
    if (whole > max) throw fail("too large (at most " + std::to_string(max) + ")");
  }
  const bool has_whole = i > digits_begin;
  bool has_fraction = false;
  if (i < text.size() && text[i] == '.') {
    ++i;
    for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
      if (fraction_scale < 1'000'000'000'000'000ull) {
        fraction = fraction * 10 + static_cast<unsigned>(text[i] - '0');
        fraction_scale *= 10;
      } else if (text[i] != '0') {
        throw fail("too many decimals");
      }
      has_fraction = true;
    }
    if (!has_fraction) throw fail("a decimal point needs digits after it");
  }
  if (!has_whole && !has_fraction) throw fail("not a number");
  const std::string_view suffix = text.substr(i);
  for (const auto& u : units) {
    if (u.name != suffix) continue;
    const wide scaled_fraction = fraction * u.factor;
    if (scaled_fraction % fraction_scale != 0) throw fail("not a whole number");
    const wide value = whole * u.factor + scaled_fraction / fraction_scale;
    if (value > max) throw fail("too large (at most " + std::to_string(max) + ")");
    return static_cast<std::uint64_t>(value);
  }
  std::string known;
  for (const auto& u : units)
    if (!u.name.empty()) known += (known.empty() ? "" : ", ") + std::string(u.name);
  throw fail("unknown suffix '" + std::string(suffix) + "' (known: " + known + ")");
}

inline std::vector<int> parse_worlds(std::string_view text) {
  std::vector<int> worlds;
  std::size_t begin = 0;
  while (true) {
    const std::size_t end = std::min(text.find(',', begin), text.size());
    const std::string_view item = text.substr(begin, end - begin);
    if (item.empty()) throw bad_argument{"--world '" + std::string(text) + "': an empty world size"};
    const std::uint64_t w = parse_scaled("--world", item, count_units, max_world);
    if (w < 1) throw bad_argument{"--world '" + std::string(text) + "': world sizes are at least 1"};
    worlds.push_back(static_cast<int>(w));
    if (end == text.size()) return worlds;
    begin = end + 1;
  }
}

//! The settings the arguments (without the program name) give. @throws bad_argument
inline settings parse(std::span<const std::string_view> args) {
  settings s;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string_view arg = args[i];
    const auto value = [&]() -> std::string_view {
      if (i + 1 >= args.size()) throw bad_argument{std::string(arg) + " needs a value"};
      return args[++i];
    };
    if (arg == "--params") {
      s.params = parse_scaled(arg, value(), count_units, max_params);
      if (*s.params == 0) throw bad_argument{"--params: at least 1 parameter"};
    } else if (arg == "--fit") {
      s.fit = parse_scaled(arg, value(), byte_units, max_budget);
    } else if (arg == "--world") {
      s.worlds = parse_worlds(value());
    } else if (arg == "--stage") {
      const std::string_view v = value();
      if (v == "0") s.stage = zero::stage0;
      else if (v == "1") s.stage = zero::stage1;
      else if (v == "2") s.stage = zero::stage2;
      else if (v == "3") s.stage = zero::stage3;
      else throw bad_argument{"--stage '" + std::string(v) + "': 0, 1, 2 or 3"};
    } else if (arg == "--precision") {
      const std::string_view v = value();
      const auto p = zero::precision_from_string(v);
      if (!p) throw bad_argument{"--precision '" + std::string(v) + "': fp32, bf16, fp16, bf16-comm, bf16-accum or bf16-pure"};
      s.precision = *p;
    } else if (arg == "--optimizer") {
      const std::string_view v = value();
      const auto o = zero::optimizer_from_string(v);
      if (!o)
        throw bad_argument{"--optimizer '" + std::string(v) +
                           "': adam, adamw, adam-amsgrad, sgd, sgd-momentum, lion, adagrad or lamb"};
      s.optimizer = *o;
    } else if (arg == "--partitioner") {
      const std::string_view v = value();
      const auto p = zero::partitioner_from_string(v);
      if (!p) throw bad_argument{"--partitioner '" + std::string(v) + "': contiguous or bucketed"};
      s.partitioner = *p;
    } else if (arg == "--largest-param") {
      s.largest_param = parse_scaled(arg, value(), count_units, max_params);
    } else if (arg == "--bucket") {
      s.layout.bucket_elements = parse_scaled(arg, value(), count_units, max_params);
      if (s.layout.bucket_elements == 0) throw bad_argument{"--bucket: at least 1 element"};
    } else if (arg == "--alignment") {
      s.layout.alignment = parse_scaled(arg, value(), count_units, 1u << 20);
      if (s.layout.alignment == 0) throw bad_argument{"--alignment: at least 1 element"};
    } else if (arg == "--gather-buffers") {
      s.layout.gather_buffers = parse_scaled(arg, value(), count_units, 1024);
      if (s.layout.gather_buffers == 0) throw bad_argument{"--gather-buffers: at least 1 buffer"};
    } else if (arg == "--gather-elements") {
      s.layout.gather_buffer_elements = parse_scaled(arg, value(), count_units, max_gather_elements);
      if (s.layout.gather_buffer_elements == 0) throw bad_argument{"--gather-elements: at least 1 element"};
    } else if (arg == "--gradient-slots") {
      s.layout.gradient_slots = true;
    } else if (arg == "--defer-reduction") {
      s.layout.defer_reduction = true;
    } else if (arg == "--checkpoint-bytes") {
      s.checkpoint_bytes = parse_scaled(arg, value(), byte_units, max_budget);
      if (s.checkpoint_bytes == 0) throw bad_argument{"--checkpoint-bytes: at least 1 byte"};
    } else if (arg == "--layers") {
      s.layers = parse_scaled(arg, value(), count_units, 1'000'000);
      if (s.layers == 0) throw bad_argument{"--layers: at least 1 layer"};
    } else if (arg == "--model-parallel") {
      const std::uint64_t m = parse_scaled(arg, value(), count_units, max_world);
      if (m < 1) throw bad_argument{"--model-parallel: at least 1 rank"};
      s.model_parallel = static_cast<int>(m);
    } else if (arg == "--json") {
      s.json = true;
    } else {
      throw bad_argument{"unknown argument '" + std::string(arg) + "'"};
    }
  }
  if (s.params && s.fit) throw bad_argument{"give --params or --fit, not both"};
  if (!s.params && !s.fit) throw bad_argument{"give --params N (or --fit BYTES)"};
  if (s.worlds.empty()) throw bad_argument{"give --world W (or a list: --world 8,16,64)"};
  if ((s.checkpoint_bytes == 0) != (s.layers == 0)) throw bad_argument{"give --checkpoint-bytes and --layers together"};
  if (s.params && s.largest_param > *s.params)
    throw bad_argument{"--largest-param " + std::to_string(s.largest_param) + " is more than --params " + std::to_string(*s.params)};
  return s;
}

// ---- output -----------------------------------------------------------------------------------

inline std::string grouped(std::uint64_t n) {  // 7500000000 -> 7,500,000,000
  std::string digits = std::to_string(n), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i != 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

inline std::string format(const char* f, double v, const char* suffix) {
  char text[64];
  std::snprintf(text, sizeof text, f, v, suffix);
  return text;
}

inline std::string human_bytes(std::uint64_t b) {  // binary units, three significant digits or more
  const char* names[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(b);
  std::size_t k = 0;
  while (v >= 1024 && k + 1 < std::size(names)) v /= 1024, ++k;
  return k == 0 ? grouped(b) + " B" : format("%.2f %s", v, names[k]);
}

inline std::string human_count(std::uint64_t n) {  // 7500000000 -> 7.50B
  if (n < 1000) return std::to_string(n);
  const char* names[] = {"K", "M", "B", "T"};
  double v = static_cast<double>(n) / 1000;
  std::size_t k = 0;
  while (v >= 1000 && k + 1 < std::size(names)) v /= 1000, ++k;
  return format("%.2f%s", v, names[k]);
}

inline std::string describe(const settings& s) {
  return "ZeRO stage " + std::to_string(static_cast<int>(s.stage)) + ", precision " +
         std::string(zero::to_string(s.precision)) + ", optimizer " + std::string(zero::to_string(s.optimizer)) + " (" +
         std::to_string(zero::state_count(s.optimizer)) + " fp32 state slots per parameter), " +
         std::string(zero::to_string(s.partitioner)) + " partitioner" +
         (s.stage == zero::stage3 ? ", " + std::to_string(s.layout.gather_buffers) + " gather buffers of " +
                                        grouped(s.layout.gather_buffer_elements) + " elements"
                                  : std::string());
}

struct row {
  std::string_view name;
  std::uint64_t bytes;
};

inline std::vector<row> rows_of(const zero::memory_plan& p) {
  return {{"parameters", p.parameters},
          {"gradients", p.gradients},
          {"framework_gradients", p.framework_gradients},
          {"master_weights", p.master_weights},
          {"optimizer_state", p.optimizer_state},
          {"model_states_bytes", p.model_states_bytes()},
          {"buffers", p.buffers},
          {"total", p.total()}};
}

struct activation_row {
  std::string_view key, name;
  zero::checkpoint_memory bytes;
};

inline std::vector<activation_row> activation_rows(const settings& s) {
  const zero::activation_plan a = zero::plan_activations(s.checkpoint_bytes, s.layers, s.model_parallel);
  return {{"plain", "plain", a.plain},
          {"contiguous", "contiguous (MD)", a.contiguous},
          {"partitioned", "partitioned (P_a)", a.partitioned},
          {"offloaded", "offloaded (cpu)", a.offloaded},
          {"partitioned_offloaded", "P_a+cpu", a.partitioned_offloaded}};
}

inline std::string json_object(const settings& s, int world, std::uint64_t params, const zero::memory_plan& p) {
  std::string o = "{";
  if (s.fit) o += "\"fit_bytes\": " + std::to_string(*s.fit) + ", ";
  o += "\"params\": " + std::to_string(params) + ", \"world\": " + std::to_string(world) +
       ", \"stage\": " + std::to_string(static_cast<int>(s.stage)) + ", \"precision\": \"" +
       std::string(zero::to_string(s.precision)) + "\", \"optimizer\": \"" + std::string(zero::to_string(s.optimizer)) +
       "\", \"state_slots\": " + std::to_string(zero::state_count(s.optimizer)) + ", \"partitioner\": \"" +
       std::string(zero::to_string(s.partitioner)) + "\", \"largest_param\": " + std::to_string(s.largest_param);
  for (const auto& r : rows_of(p)) o += ", \"" + std::string(r.name) + "\": " + std::to_string(r.bytes);
  o += ", \"engine\": {";
  for (std::size_t k = 0; k < zero::memory_kinds; ++k)
    o += std::string(k == 0 ? "" : ", ") + "\"" + std::string(zero::to_string(static_cast<zero::memory_kind>(k))) +
         "\": " + std::to_string(p.engine.bytes[k]);
  o += "}";
  if (s.layers != 0) {
    o += ", \"activations\": {\"checkpoint_bytes\": " + std::to_string(s.checkpoint_bytes) + ", \"layers\": " +
         std::to_string(s.layers) + ", \"model_parallel\": " + std::to_string(s.model_parallel);
    for (const auto& a : activation_rows(s))
      o += ", \"" + std::string(a.key) + "\": {\"device\": " + std::to_string(a.bytes.device()) +
           ", \"host\": " + std::to_string(a.bytes.host) + "}";
    o += "}";
  }
  return o + "}";
}

inline std::string pad(std::string text, std::size_t width, bool right) {
  if (text.size() >= width) return text;
  return right ? std::string(width - text.size(), ' ') + text : text + std::string(width - text.size(), ' ');
}

//! What zero-plan prints for `s` on standard output.
inline std::string render(const settings& s) {
  std::vector<std::uint64_t> counts;
  std::vector<zero::memory_plan> plans;
  for (int w : s.worlds) {
    const std::uint64_t n = s.fit ? zero::largest_fitting(*s.fit, w, s.stage, s.precision, s.optimizer, s.layout,
                                                          s.partitioner, s.largest_param)
                                  : *s.params;
    if (s.fit && n >= zero::max_planned_parameters)
      throw bad_argument{"--fit " + grouped(*s.fit) + " bytes at world " + std::to_string(w) + ": " +
                         grouped(zero::max_planned_parameters) + " parameters or more fit, beyond what zero-plan counts"};
    counts.push_back(n);
    plans.push_back(zero::plan_memory(n, w, s.stage, s.precision, s.optimizer, s.layout, s.partitioner, s.largest_param));
  }

  std::string out;
  if (s.json) {
    if (s.worlds.size() > 1) out += "[";
    for (std::size_t i = 0; i < s.worlds.size(); ++i)
      out += (i == 0 ? "" : ",\n ") + json_object(s, s.worlds[i], counts[i], plans[i]);
    if (s.worlds.size() > 1) out += "]";
    out += "\n";
  } else if (s.fit) {
    out += "largest parameter count whose per-rank total fits in " + grouped(*s.fit) + " bytes (" + human_bytes(*s.fit) +
           "), " + describe(s) + "\n";
    out += pad("world", 8, true) + "  " + pad("parameters", 32, false) + pad("total bytes per rank", 22, true) + "\n";
    for (std::size_t i = 0; i < s.worlds.size(); ++i)
      out += pad(std::to_string(s.worlds[i]), 8, true) + "  " +
             pad(counts[i] == 0 ? "0 (not even one fits)" : grouped(counts[i]) + " (" + human_count(counts[i]) + ")", 32,
                 false) +
             pad(grouped(plans[i].total()), 22, true) + "\n";
  } else {
    out += "per-rank bytes of " + grouped(*s.params) + " parameters (" + human_count(*s.params) + "), " + describe(s) + "\n";
    constexpr std::size_t first = 20, column = 14;
    out += pad("", first, false);
    for (int w : s.worlds) out += pad("world " + std::to_string(w), column, true);
    out += "\n";
    const std::size_t kinds = rows_of(plans.front()).size();
    for (std::size_t r = 0; r < kinds; ++r) {
      out += pad(std::string(rows_of(plans.front())[r].name), first, false);
      for (const auto& p : plans) out += pad(human_bytes(rows_of(p)[r].bytes), column, true);
      out += "\n";
    }
    out += s.layers != 0 ? "(activation checkpoints below; zero-plan --help says what each kind holds)\n"
                         : "(activations not counted; zero-plan --help says what each kind holds)\n";
    if ((s.stage == zero::stage2 || s.stage == zero::stage3) && !s.layout.defer_reduction && !s.layout.gradient_slots && s.largest_param == 0)
      out += "(framework_gradients counts one reduction unit; --largest-param N adds the largest parameter's gradient)\n";
  }
  if (s.layers != 0 && !s.json) {
    out += "activation checkpoints per rank: " + grouped(s.layers) + " layers x " + human_bytes(s.checkpoint_bytes) +
           ", model-parallel group of " + std::to_string(s.model_parallel) + "\n";
    constexpr std::size_t first = 20, column = 14;
    out += pad("", first, false) + pad("device", column, true) + pad("host", column, true) + "\n";
    for (const auto& a : activation_rows(s))
      out += pad(std::string(a.name), first, false) + pad(human_bytes(a.bytes.device()), column, true) +
             pad(human_bytes(a.bytes.host), column, true) + "\n";
  }
  return out;
}

//! The whole program on its arguments (without the program name): what it prints on standard
//! output and on standard error, and its exit status (0, or 2 on a bad argument).
struct outcome {
  int status = 0;
  std::string out, err;
};

inline outcome run_command_line(std::span<const std::string_view> args) {
  for (const std::string_view arg : args) {
    if (arg == "-h" || arg == "--help") return {0, std::string(usage_text) + std::string(help_text), ""};
  }
  try {
    return {0, render(parse(args)), ""};
  } catch (const bad_argument& e) {
    return {2, "", "zero-plan: " + e.message + "\n" + std::string(usage_text) + "(zero-plan --help explains every option)\n"};
  }
}

}  // namespace zero_plan
