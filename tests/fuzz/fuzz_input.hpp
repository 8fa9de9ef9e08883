#pragma once
// What the fuzz targets of tests/fuzz share: a reader that turns the fuzzer's bytes into values
// (each read past the end gives zeros, so every input decodes), and the split of an input into
// command-line arguments.
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace fuzz {

class reader {
 public:
  reader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  bool empty() const noexcept { return at_ >= size_; }
  std::uint8_t byte() noexcept { return at_ < size_ ? data_[at_++] : 0; }
  std::uint64_t bits(int bytes) noexcept {
    std::uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= static_cast<std::uint64_t>(byte()) << (8 * i);
    return v;
  }
  bool flag() noexcept { return (byte() & 1) != 0; }

  //! A size as layouts meet them: mostly small, sometimes 0, a power of two, a prime, or one of
  //! the largest values a size_t holds.
  std::size_t size() noexcept {
    const std::uint8_t kind = byte();
    switch (kind % 16) {
      case 0: return 0;
      case 1: return 1;
      case 2: return std::size_t{1} << (byte() % 64);
      case 3: return (std::size_t{1} << (byte() % 64)) + 1;
      case 4: return std::numeric_limits<std::size_t>::max() - byte();
      case 5: return static_cast<std::size_t>(bits(2));
      case 6: return static_cast<std::size_t>(bits(8));
      case 7: {
        constexpr std::size_t primes[] = {2, 3, 5, 7, 11, 13, 31, 127, 251, 509, 1021, 4093, 65521};
        return primes[byte() % std::size(primes)];
      }
      default: return byte() % 64 + 1;  // the common case
    }
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t at_ = 0;
};

//! The input as command-line arguments: NUL bytes separate them (at most 64 arguments).
inline std::vector<std::string> arguments(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> args;
  if (size == 0) return args;
  std::string current;
  for (std::size_t i = 0; i < size && args.size() < 64; ++i) {
    if (data[i] == 0) {
      args.push_back(std::move(current));
      current.clear();
    } else {
      current += static_cast<char>(data[i]);
    }
  }
  if (args.size() < 64 && (!current.empty() || data[size - 1] != 0)) args.push_back(std::move(current));
  return args;
}

inline std::vector<std::string_view> views(const std::vector<std::string>& args) {
  return {args.begin(), args.end()};
}

}  // namespace fuzz
