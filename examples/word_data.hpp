#pragma once
// The data side the character-level examples share (train_charlm.cpp on Eigen,
// libtorch/train_charlm.cpp on torch::nn): the words of Debian's English word list cut into
// (context, next letter) examples, the batches every rank and every stage draws alike, each
// rank's slice of a batch, and the progress line.

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numbers>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace zero_examples {

constexpr int symbols = 27;  // '.' (the word boundary) and a..z
constexpr int context = 4;   // letters of context
constexpr const char* default_words = "/usr/share/dict/words";

// ---- data ---------------------------------------------------------------------------------

// One training example: `context` symbols, and the symbol that follows them.
struct example {
  std::uint8_t before[context];
  std::uint8_t next;
};

// The context after `next` (a symbol the model predicted or the data gave) is appended.
inline void push_symbol(example& e, int next) {
  std::copy(e.before + 1, e.before + context, e.before);
  e.before[context - 1] = static_cast<std::uint8_t>(next);
}

struct dataset {
  std::vector<std::string> words;  // every lowercase a-z word of the list
  std::vector<example> train, validation;
};

inline void add_examples(const std::string& word, std::vector<example>& out) {
  example e{};  // the context starts as word boundaries
  for (std::size_t i = 0; i <= word.size(); ++i) {
    e.next = i < word.size() ? static_cast<std::uint8_t>(word[i] - 'a' + 1) : 0;
    out.push_back(e);
    push_symbol(e, e.next);
  }
}

// The words of `path` made only of a-z, shuffled by `seed`; 90% train, 10% validation. Exits
// with a message naming `program` when the list cannot be read.
inline dataset load(const std::string& path, unsigned seed, const char* program) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr,
                 "%s: cannot read the word list %s.\n"
                 "It comes with Debian's `wamerican` package: sudo apt-get install wamerican "
                 "(scripts/deps.sh installs it), or pass --words PATH to another list, one word a line.\n",
                 program, path.c_str());
    std::exit(1);
  }
  dataset d;
  for (std::string w; std::getline(in, w);)
    if (!w.empty() && std::all_of(w.begin(), w.end(), [](char c) { return c >= 'a' && c <= 'z'; })) d.words.push_back(w);
  if (d.words.size() < 100) {
    std::fprintf(stderr, "%s: %s has %zu lowercase a-z words; the example needs at least 100\n", program, path.c_str(),
                 d.words.size());
    std::exit(1);
  }
  std::vector<std::string> order = d.words;
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  const std::size_t split = order.size() * 9 / 10;
  for (std::size_t i = 0; i < order.size(); ++i) add_examples(order[i], i < split ? d.train : d.validation);
  return d;
}

// The training example at position i of step `step`'s batch: the same on every rank and for
// every stage, so that the runs of different stages see the same data.
inline std::size_t batch_index(unsigned seed, int step, int i, std::size_t n) {
  std::uint64_t z = (static_cast<std::uint64_t>(seed) << 40) ^ (static_cast<std::uint64_t>(step) << 16) ^ static_cast<std::uint64_t>(i);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return static_cast<std::size_t>((z ^ (z >> 31)) % n);
}

// The examples [first, first + count) of a contiguous slice split over `world` ranks.
// Linear warmup to `peak` over `warmup` steps, then cosine decay to `final` at `steps`.
inline double warmup_cosine(int step, int steps, int warmup, double peak, double final) {
  if (step < warmup) return peak * (step + 1) / warmup;
  const double progress = static_cast<double>(step - warmup) / std::max(1, steps - warmup);
  return final + 0.5 * (peak - final) * (1 + std::cos(std::numbers::pi * progress));
}

inline std::pair<std::size_t, std::size_t> slice_of(std::size_t total, int world, int rank) {
  const std::size_t n = static_cast<std::size_t>(world), r = static_cast<std::size_t>(rank);
  return {r * (total / n) + std::min(r, total % n), total / n + (r < total % n ? 1 : 0)};
}

// ---- progress ------------------------------------------------------------------------------

// A single line redrawn in place on a terminal; a line every 10% of the steps otherwise.
class progress {
 public:
  explicit progress(int steps) : steps_(steps), terminal_(isatty(fileno(stdout)) != 0), start_(clock::now()) {}

  //! Starts the clock (at the first step).
  void start() { start_ = clock::now(); }

  void update(int done, double loss) {
    smoothed_ = done == 1 ? loss : 0.95 * smoothed_ + 0.05 * loss;
    const auto now = clock::now();
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double rate = done / std::max(elapsed, 1e-9);
    const int left = static_cast<int>((steps_ - done) / rate + 0.5);
    if (terminal_) {
      if (done != steps_ && now - last_ < std::chrono::milliseconds(100)) return;
      last_ = now;
      constexpr int width = 30;
      const int filled = static_cast<int>(static_cast<long>(width) * done / steps_);
      std::printf("\r[%s%s] %5d/%d  loss %.3f  %5.1f steps/s  %d:%02d left ", std::string(static_cast<std::size_t>(filled), '#').c_str(),
                  std::string(static_cast<std::size_t>(width - filled), '.').c_str(), done, steps_, smoothed_, rate, left / 60,
                  left % 60);
      if (done == steps_) std::printf("\n");
      std::fflush(stdout);
    } else if (done == 1) {
      std::printf("step %5d/%d  loss %.3f\n", done, steps_, smoothed_);
      std::fflush(stdout);
    } else if (done == steps_ || done % std::max(1, steps_ / 10) == 0) {
      std::printf("step %5d/%d  loss %.3f  %5.1f steps/s  %d:%02d left\n", done, steps_, smoothed_, rate, left / 60, left % 60);
      std::fflush(stdout);
    }
  }

 private:
  using clock = std::chrono::steady_clock;
  int steps_;
  bool terminal_;
  clock::time_point start_, last_{};
  double smoothed_ = 0;
};

}  // namespace zero_examples
