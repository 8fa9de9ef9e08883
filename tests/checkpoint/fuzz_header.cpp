// Fuzz target of the checkpoint header parser (and the commit-marker parser). Built with
// clang -fsanitize=fuzzer,address,undefined when available (tests/checkpoint/CMakeLists.txt)
// and, always, into the g++ test executable, where fuzz_replay_test.cpp feeds it the seed
// corpus and deterministic mutations of it.
//
// Properties checked on every input:
//  * the parsers return or throw zero::checkpoint_error; nothing else (no crash, no other
//    exception, no read outside the input: AddressSanitizer);
//  * a header that parses encodes back to exactly the bytes it was parsed from.
// Each input is also parsed a second time with its checksums recomputed, so that mutations
// reach the structural checks behind the CRC32Cs.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

#include "zero/checkpoint_format.hpp"

namespace {

void parse_and_check(std::span<const std::byte> bytes) {
  try {
    const zero::checkpoint_header h = zero::parse_header(bytes, "fuzz input");
    const std::vector<std::byte> again = zero::encode_header(h);
    if (again.size() > bytes.size() || std::memcmp(again.data(), bytes.data(), again.size()) != 0) std::abort();
  } catch (const zero::checkpoint_error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  parse_and_check(bytes);
  try {
    (void)zero::parse_commit_marker(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz input");
  } catch (const zero::checkpoint_error&) {
  }
  // the same bytes with a header length covering the rest and both checksums fixed
  constexpr std::size_t preamble = zero::checkpoint_format::preamble_bytes;
  if (size >= preamble) {
    std::vector<std::byte> fixed(bytes.begin(), bytes.end());
    std::memcpy(fixed.data(), zero::checkpoint_format::magic.data(), 8);
    const std::uint64_t body = size - preamble;
    for (int i = 0; i < 8; ++i) fixed[16 + static_cast<std::size_t>(i)] = static_cast<std::byte>(body >> (8 * i));
    const std::uint32_t body_crc = zero::crc32c(std::span<const std::byte>(fixed).subspan(preamble));
    for (int i = 0; i < 4; ++i) fixed[24 + static_cast<std::size_t>(i)] = static_cast<std::byte>(body_crc >> (8 * i));
    const std::uint32_t preamble_crc = zero::crc32c(std::span<const std::byte>(fixed).first(28));
    for (int i = 0; i < 4; ++i) fixed[28 + static_cast<std::size_t>(i)] = static_cast<std::byte>(preamble_crc >> (8 * i));
    parse_and_check(fixed);
  }
  return 0;
}
