// The header fuzz target built by g++ (so the parser's robustness is exercised even where clang's
// libFuzzer is missing): the committed seed corpus, seeds freshly made from real checkpoints,
// and deterministic mutations of each (every truncation, byte flips everywhere, random
// overwrites); fuzz_header.cpp also reparses each with its checksums fixed.
#include <cstdint>
#include <filesystem>
#include <random>
#include <vector>

#include "fixture.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

std::vector<std::vector<std::uint8_t>> seeds_in(const std::filesystem::path& dir) {
  std::vector<std::vector<std::uint8_t>> seeds;
  std::vector<std::filesystem::path> paths;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file()) paths.push_back(e.path());
  std::sort(paths.begin(), paths.end());
  for (const auto& p : paths) {
    const auto bytes = ckpt::read_bytes(p);
    seeds.emplace_back(bytes.begin(), bytes.end());
  }
  return seeds;
}

// Writes the header of each file of a real checkpoint (and its marker) to `out` as seeds.
void make_seeds(const std::filesystem::path& out) {
  ckpt::temp_dir dir;
  ckpt::run<zero::optimizer<zero::stage2, zero::bf16_mixed, zero::adamw, zero::bucketed_partitioner>>(
      {.world = 3, .first = 0, .last = 2, .save_to = dir.path});
  ckpt::run<zero::optimizer<zero::stage0, zero::fp32_precision, zero::sgd>>({.world = 1, .first = 0, .last = 1, .save_to = dir.path / "b"});
  int n = 0;
  for (const auto& p : {dir.path / "step-2" / "rank-0-of-3.zck", dir.path / "step-2" / "rank-2-of-3.zck", dir.path / "b" / "step-1" / "rank-0-of-1.zck"}) {
    const zero::detail::read_file f(p);
    const auto h = f.header();
    auto bytes = ckpt::read_bytes(p);
    bytes.resize(static_cast<std::size_t>(h.sections[0].offset));  // preamble, header and padding
    ckpt::write_bytes(out / ("header-" + std::to_string(n++)), bytes);
  }
  ckpt::write_bytes(out / "marker-0", ckpt::read_bytes(dir.path / "step-2" / "COMMITTED"));
}

}  // namespace

TEST_SUITE("reliability") {
  TEST_CASE("the committed fuzz seeds are valid headers of the current format") {
    int headers = 0;
    for (const auto& seed : seeds_in(ZERO_FUZZ_CORPUS)) {
      if (seed.size() < 8 || std::memcmp(seed.data(), "ZEROCKPT", 8) != 0) continue;
      ++headers;
      // a seed that no longer parses means the format changed: regenerate the seeds
      CHECK_NOTHROW(zero::parse_header(std::as_bytes(std::span<const std::uint8_t>(seed)), "seed"));
    }
    CHECK(headers >= 2);
  }

  TEST_CASE("fuzz target replays the seed corpus and deterministic mutations of it") {
    make_seeds(ZERO_FUZZ_GENERATED);
    auto seeds = seeds_in(ZERO_FUZZ_CORPUS);
    for (auto& s : seeds_in(ZERO_FUZZ_GENERATED)) seeds.push_back(std::move(s));
    REQUIRE(seeds.size() >= 4);
    std::mt19937_64 rng(42);
    std::size_t runs = 0;
    for (const auto& seed : seeds) {
      LLVMFuzzerTestOneInput(seed.data(), seed.size()), ++runs;
      for (std::size_t n = 0; n < seed.size(); ++n) LLVMFuzzerTestOneInput(seed.data(), n), ++runs;  // every truncation
      std::vector<std::uint8_t> m = seed;
      for (std::size_t i = 0; i < m.size(); ++i)
        for (std::uint8_t flip : {std::uint8_t{0x01}, std::uint8_t{0x80}, std::uint8_t{0xff}}) {
          m[i] ^= flip;
          LLVMFuzzerTestOneInput(m.data(), m.size()), ++runs;
          m[i] ^= flip;
        }
      for (int trial = 0; trial < 2000; ++trial) {  // a few random bytes overwritten
        m = seed;
        const int changes = 1 + static_cast<int>(rng() % 4);
        for (int c = 0; c < changes && !m.empty(); ++c) m[rng() % m.size()] = static_cast<std::uint8_t>(rng());
        LLVMFuzzerTestOneInput(m.data(), m.size()), ++runs;
      }
    }
    MESSAGE("fuzz replay (g++): " << seeds.size() << " seeds, " << runs << " inputs, each parsed raw and with fixed checksums");
  }
}
