#pragma once
//! @file engine/rank_agreement.hpp
//! How the ranks agree before they exchange anything large: on their input at construction
//! (every rank learns whether every other rank accepted its parameters and built the same
//! layout, so that all throw the same error naming the rank that differs instead of some
//! waiting forever), and on a learned layout order (rank 0's, taken by every rank).
//!
//! The exchanges go through a `gather(mine, all, n)` callable: every rank's `n` words, in rank
//! order (the engine passes its backend's word all-gather over its communicator).

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "zero/error.hpp"

namespace zero::engine {

//! A 64-bit FNV-1a digest of the values mixed into it.
class digest {
 public:
  void bytes(const void* data, std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) {
      h_ ^= static_cast<const unsigned char*>(data)[i];
      h_ *= 0x100000001b3ull;
    }
  }
  void word(std::uint64_t v) noexcept { bytes(&v, sizeof v); }
  void real(double v) noexcept { word(std::bit_cast<std::uint64_t>(v)); }
  void text(std::string_view s) noexcept {
    word(s.size());
    bytes(s.data(), s.size());
  }
  std::uint64_t value() const noexcept { return h_; }

 private:
  std::uint64_t h_ = 0xcbf29ce484222325ull;
};

//! "'name' (#i)", or "#i" for an unnamed parameter.
inline std::string describe_parameter(std::span<const std::string> names, std::size_t i) {
  std::string text;
  const bool named = i < names.size() && !names[i].empty();
  if (named) text.append("'").append(names[i]).append("' (");
  text.append("#").append(std::to_string(i));
  if (named) text.append(")");
  return text;
}

//! Every rank's `digest` and whether it accepted its input (`refusal` empty), exchanged; then
//! every rank throws alike: the refusing rank its own `usage_error`, the others a `usage_error`
//! naming the refusing ranks; or, when the digests differ, a `mismatch_error` naming the ranks
//! that differ from the most common digest (ties: the lowest rank's).
template <class Gather>
void agree_on_input(Gather&& gather, int rank, int world, std::uint64_t digest_value, const std::string& refusal,
                    std::string_view what) {
  const std::uint64_t mine[2] = {digest_value, refusal.empty() ? 1u : 0u};
  std::vector<std::uint64_t> all(2 * static_cast<std::size_t>(world));
  gather(mine, all.data(), 2);
  if (!refusal.empty()) throw usage_error(refusal);
  auto digest_of = [&](int r) { return all[2 * static_cast<std::size_t>(r)]; };
  auto list = [](std::string& to, int r) { to += (to.empty() ? "" : ", ") + std::to_string(r); };
  std::string refused;
  for (int r = 0; r < world; ++r)
    if (all[2 * static_cast<std::size_t>(r) + 1] == 0) list(refused, r);
  if (!refused.empty())
    throw usage_error("zero: rank(s) " + refused + " refused their parameters (see the error on those ranks); rank " +
                      std::to_string(rank) + " stops too");
  std::uint64_t common = digest_of(0);
  int best = 0;
  for (int r = 0; r < world; ++r) {
    int votes = 0;
    for (int q = 0; q < world; ++q) votes += digest_of(q) == digest_of(r);
    if (votes > best) best = votes, common = digest_of(r);
  }
  std::string differ, agree;
  for (int r = 0; r < world; ++r) list(digest_of(r) == common ? agree : differ, r);
  if (!differ.empty())
    throw mismatch_error("zero: rank(s) " + differ + " registered " + std::string(what) + " different from rank(s) " + agree);
}

//! Rank 0's `order` (a permutation of the parameters), on every rank.
template <class Gather>
std::vector<std::size_t> rank0_order(Gather&& gather, int world, std::span<const std::size_t> order) {
  const std::size_t n = order.size();
  std::vector<std::uint64_t> mine(order.begin(), order.end());
  std::vector<std::uint64_t> all(n * static_cast<std::size_t>(world));
  gather(mine.data(), all.data(), n);
  return std::vector<std::size_t>(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(n));
}

}  // namespace zero::engine
