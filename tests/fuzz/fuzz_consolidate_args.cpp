// Fuzz target of zero-consolidate's command line (tools/consolidate_cli.hpp): the input is the
// argument list, NUL-separated, and also one string the safetensors header would quote (a
// tensor name: checkpoints carry the names users registered). Built with clang
// -fsanitize=fuzzer,address,undefined (cmake/zeroFuzz.cmake) and, always, into the g++ replay
// test (replay_test.cpp).
//
// Properties checked on every input:
//  * the arguments are accepted exactly when they are `<in> <out> [--optimizer-state]`, and then
//    taken as given; otherwise the usage names the program;
//  * `json_string` writes a JSON string literal (no raw control character, every escape valid)
//    that reads back as exactly the input bytes.
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "consolidate_cli.hpp"
#include "fuzz_input.hpp"

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A strict reader of the JSON string literals json_string writes (\u escapes below 0x20 only,
// which is all it writes); none on anything else.
std::optional<std::string> read_json_string(std::string_view s) {
  if (s.size() < 2 || s.front() != '"' || s.back() != '"') return std::nullopt;
  std::string out;
  for (std::size_t i = 1; i + 1 < s.size(); ++i) {
    const char c = s[i];
    if (static_cast<unsigned char>(c) < 0x20 || c == '"') return std::nullopt;
    if (c != '\\') {
      out += c;
      continue;
    }
    if (++i + 1 >= s.size()) return std::nullopt;
    if (s[i] == '"' || s[i] == '\\') {
      out += s[i];
    } else if (s[i] == 'u' && i + 4 < s.size() - 1) {
      int v = 0;
      for (int k = 1; k <= 4; ++k) {
        const int h = hex(s[i + static_cast<std::size_t>(k)]);
        if (h < 0) return std::nullopt;
        v = v * 16 + h;
      }
      if (v >= 0x20) return std::nullopt;
      out += static_cast<char>(v);
      i += 4;
    } else {
      return std::nullopt;
    }
  }
  return out;
}

}  // namespace

int zero_fuzz_consolidate_args(const std::uint8_t* data, std::size_t size) {
  const std::vector<std::string> words = fuzz::arguments(data, size);
  const std::vector<std::string_view> args = fuzz::views(words);
  const auto parsed = zero_consolidate::parse_arguments(args);
  const bool valid = (args.size() == 2 || args.size() == 3) && (args.size() == 2 || args[2] == "--optimizer-state");
  require(parsed.has_value() == valid);
  if (parsed) {
    require(parsed->in == std::filesystem::path(words[0]) && parsed->out == std::filesystem::path(words[1]));
    require(parsed->with_state == (args.size() == 3));
  } else {
    const std::string program = words.empty() ? "zero-consolidate" : words[0];
    const std::string usage = zero_consolidate::usage(program);
    require(usage.starts_with("usage: " + program + " <checkpoint dir>"));
  }
  const std::string_view raw(reinterpret_cast<const char*>(data), size);
  const std::optional<std::string> back = read_json_string(zero_consolidate::json_string(raw));
  require(back.has_value() && *back == raw);
  return 0;
}

#ifdef ZERO_LIBFUZZER
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return zero_fuzz_consolidate_args(data, size);
}
#endif
