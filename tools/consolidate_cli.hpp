#pragma once
// zero-consolidate's command line (tools/zero-consolidate.cpp is main() around it): the
// arguments and the JSON strings of the safetensors header, as functions a fuzz target
// (tests/fuzz/fuzz_consolidate_args.cpp) can call. Not installed: a part of the tool.

#include <cstdio>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace zero_consolidate {

struct arguments {
  std::filesystem::path in;   //!< a checkpoint directory or one step-<n> directory
  std::filesystem::path out;  //!< the safetensors file to write
  bool with_state = false;    //!< --optimizer-state
};

//! The arguments (without the program name): `<checkpoint dir> <out.safetensors>
//! [--optimizer-state]`; none when they are not that (the tool then prints `usage` and exits 2).
inline std::optional<arguments> parse_arguments(std::span<const std::string_view> args) {
  if (args.size() < 2 || args.size() > 3) return std::nullopt;
  arguments a{std::filesystem::path(args[0]), std::filesystem::path(args[1]), false};
  if (args.size() == 3) {
    if (args[2] != "--optimizer-state") return std::nullopt;
    a.with_state = true;
  }
  return a;
}

//! The usage text printed on standard error for a bad command line.
inline std::string usage(std::string_view program) {
  return "usage: " + std::string(program) +
         " <checkpoint dir> <out.safetensors> [--optimizer-state]\n"
         "  Writes the full fp32 parameters of a zero checkpoint (any saved world size) as safetensors.\n"
         "  <checkpoint dir>     a checkpoint directory (its newest committed step) or a step-<n> directory\n"
         "  --optimizer-state    also write each state slot as optimizer.<slot>.<parameter>\n";
}

//! `s` as a JSON string literal: quotes, backslashes and control characters escaped.
inline std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"') out += "\\\"";
    else if (c == '\\') out += "\\\\";
    else if (u < 0x20) {
      char buffer[8];
      std::snprintf(buffer, sizeof buffer, "\\u%04x", u);
      out += buffer;
    } else out += c;
  }
  return out + "\"";
}

}  // namespace zero_consolidate
