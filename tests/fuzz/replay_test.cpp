// The fuzz targets of tests/fuzz built by g++ (so the parsers' robustness is exercised even where
// clang's libFuzzer is missing): each target gets its committed seed corpus and deterministic
// mutations of it (every truncation, byte flips everywhere, random overwrites and insertions),
// plus random inputs. A property violation aborts, as it would under libFuzzer.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

int zero_fuzz_plan_args(const std::uint8_t* data, std::size_t size);
int zero_fuzz_consolidate_args(const std::uint8_t* data, std::size_t size);
int zero_fuzz_layout(const std::uint8_t* data, std::size_t size);
struct layout_fuzz_counts {
  std::size_t plans = 0, plans_refused = 0, engines_built = 0, engines_refused = 0;
};
extern layout_fuzz_counts zero_fuzz_layout_counts;

namespace {

using target = int (*)(const std::uint8_t*, std::size_t);
using bytes = std::vector<std::uint8_t>;

std::vector<bytes> seeds_in(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> paths;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file()) paths.push_back(e.path());
  std::sort(paths.begin(), paths.end());
  std::vector<bytes> seeds;
  for (const auto& p : paths) {
    std::ifstream f(p, std::ios::binary);
    seeds.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  return seeds;
}

// Runs `fuzz` on every seed of corpus/<name> and `mutations` mutations of each, plus `randoms`
// random inputs; returns the number of inputs run.
std::size_t replay(const char* name, target fuzz, int mutations, int randoms) {
  const auto seeds = seeds_in(std::filesystem::path(ZERO_FUZZ_CORPUS_DIR) / name);
  REQUIRE(seeds.size() >= 3);
  std::mt19937_64 rng(42);
  std::size_t runs = 0;
  auto run = [&](const bytes& b) {
    fuzz(b.data(), b.size());
    ++runs;
  };
  for (const bytes& seed : seeds) {
    run(seed);
    for (std::size_t n = 0; n < seed.size(); ++n) run(bytes(seed.begin(), seed.begin() + static_cast<std::ptrdiff_t>(n)));
    bytes m = seed;
    for (std::size_t i = 0; i < m.size(); ++i)
      for (std::uint8_t flip : {std::uint8_t{0x01}, std::uint8_t{0x80}, std::uint8_t{0xff}}) {
        m[i] ^= flip;
        run(m);
        m[i] ^= flip;
      }
    for (int trial = 0; trial < mutations; ++trial) {
      m = seed;
      const int changes = 1 + static_cast<int>(rng() % 4);
      for (int c = 0; c < changes; ++c) {
        if (!m.empty() && rng() % 2 == 0) m[rng() % m.size()] = static_cast<std::uint8_t>(rng());
        else m.insert(m.begin() + static_cast<std::ptrdiff_t>(m.empty() ? 0 : rng() % (m.size() + 1)), static_cast<std::uint8_t>(rng()));
      }
      run(m);
    }
  }
  for (int trial = 0; trial < randoms; ++trial) {
    bytes b(rng() % 64);
    for (auto& x : b) x = static_cast<std::uint8_t>(rng());
    run(b);
  }
  return runs;
}

}  // namespace

TEST_SUITE("reliability") {
  TEST_CASE("fuzz replay: zero-plan's command line") {
    const std::size_t runs = replay("plan_args", zero_fuzz_plan_args, 300, 2000);
    MESSAGE("zero-plan arguments (g++): " << runs << " inputs");
  }

  TEST_CASE("fuzz replay: zero-consolidate's command line") {
    const std::size_t runs = replay("consolidate_args", zero_fuzz_consolidate_args, 300, 2000);
    MESSAGE("zero-consolidate arguments (g++): " << runs << " inputs");
  }

  TEST_CASE("fuzz replay: parameter layouts through the partitioners and real engines") {
    const std::size_t runs = replay("layout", zero_fuzz_layout, 100, 2000);
    const layout_fuzz_counts& n = zero_fuzz_layout_counts;
    MESSAGE("parameter layouts (g++): " << runs << " inputs: " << n.plans << " plans made, " << n.plans_refused
            << " refused; " << n.engines_built << " engines built and stepped, " << n.engines_refused << " refused");
    CHECK(n.plans > 100);
    CHECK(n.plans_refused > 100);
    CHECK(n.engines_built > 100);
    CHECK(n.engines_refused > 100);
  }
}
