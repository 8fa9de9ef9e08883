// What must never happen with checkpoints: a torn save that loads, a corrupted, truncated, newer
// or foreign checkpoint that loads silently, or a failure that leaves ranks disagreeing. Every
// refusal must name the file (and section) and say what is wrong, on every rank alike, leave the
// optimizer unchanged, and leave the previous checkpoint loadable.
#include "fixture.hpp"

namespace {

namespace fs = std::filesystem;
using kind = zero::checkpoint_error::kind;
using fp32_stage2 = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::contiguous_partitioner>;

// A writer that fails after `limit` bytes of a file, or in one call on a file
// whose name starts with `target`, like a disk that fills up or a process that dies mid-write.
class failing_writer : public zero::posix_file_writer {
 public:
  enum class at { write, sync, rename };
  explicit failing_writer(std::uint64_t limit, at where = at::write, std::string target = "") : limit_(limit), where_(where), target_(std::move(target)) {}
  void open(const fs::path& path) override {
    current_ = path.filename().string();
    written_ = 0;
    posix_file_writer::open(path);
  }
  void write(std::span<const std::byte> bytes) override {
    if (where_ == at::write && targeted() && written_ + bytes.size() > limit_) {
      posix_file_writer::write(bytes.first(static_cast<std::size_t>(limit_ - written_)));
      written_ = limit_;
      throw zero::checkpoint_error(kind::io, "injected failure after " + std::to_string(limit_) + " bytes writing " + current_);
    }
    written_ += bytes.size();
    posix_file_writer::write(bytes);
  }
  void sync() override {
    if (where_ == at::sync && targeted()) throw zero::checkpoint_error(kind::io, "injected fsync failure on " + current_);
    posix_file_writer::sync();
  }
  void rename(const fs::path& from, const fs::path& to) override {
    if (where_ == at::rename && targeted()) throw zero::checkpoint_error(kind::io, "injected rename failure on " + current_);
    posix_file_writer::rename(from, to);
  }

 private:
  bool targeted() const { return current_.rfind(target_, 0) == 0; }
  std::uint64_t limit_, written_ = 0;
  at where_;
  std::string target_;
  std::string current_;
};

struct load_attempt {
  std::vector<std::string> errors;  // per rank ("" when it loaded)
  std::vector<int> kinds;           // per rank, -1 when it loaded
  bool unchanged = true;            // every refusing rank's optimizer and parameters were untouched
  ckpt::snapshot loaded;            // after a successful load, or after the fallback load
};

// Tries to load `path` at `world` ranks into an optimizer of `sizes` and names "layer<i>"; on
// refusal checks that nothing changed, then loads `fallback` (if given) into the same optimizer.
template <class Opt>
load_attempt attempt_load(int world, const fs::path& path, const std::optional<fs::path>& fallback = {},
                          std::vector<std::size_t> sizes = ckpt::model_sizes, std::string prefix = "layer") {
  using Param = typename Opt::param_type;
  load_attempt out;
  out.errors.resize(static_cast<std::size_t>(world));
  out.kinds.assign(static_cast<std::size_t>(world), -1);
  std::mutex lock;
  zero::thread_group group(world, {std::chrono::seconds(60)});
  group.run([&](zero::thread_communicator& comm) {
    const auto r = static_cast<std::size_t>(comm.rank());
    std::vector<std::vector<Param>> storage(sizes.size());
    std::vector<zero::parameter<Param>> params;
    for (std::size_t p = 0; p < sizes.size(); ++p) {
      for (std::size_t i = 0; i < sizes[p]; ++i) storage[p].push_back(Param(ckpt::initial_value(p, i)));
      params.push_back({prefix + std::to_string(p), {storage[p].data(), storage[p].size()}});
    }
    Opt opt(comm, params);
    ckpt::snapshot before, after;
    ckpt::take_snapshot(opt, before, lock);
    try {
      zero::load_checkpoint(opt, path);
    } catch (const zero::checkpoint_error& e) {
      {
        std::lock_guard guard(lock);
        out.errors[r] = e.what();
        out.kinds[r] = static_cast<int>(e.reason());
      }
      ckpt::take_snapshot(opt, after, lock);
      const bool same = ckpt::same_bits(before.values, after.values) && before.step == after.step &&
                        ckpt::same_bits(before.params[r], after.params[r]);
      std::lock_guard guard(lock);
      out.unchanged = out.unchanged && same;
      if (!fallback) return;
    }
    if (out.kinds[r] >= 0) zero::load_checkpoint(opt, *fallback);
    ckpt::take_snapshot(opt, out.loaded, lock);
  });
  return out;
}

// Every rank refused with the same error, of kind `k`, mentioning each of `words`.
void check_refused(const load_attempt& a, kind k, std::initializer_list<std::string> words) {
  REQUIRE(!a.errors.empty());
  MESSAGE(a.errors[0]);
  for (std::size_t r = 0; r < a.errors.size(); ++r) {
    CHECK(a.kinds[r] == static_cast<int>(k));
    CHECK(a.errors[r] == a.errors[0]);
  }
  for (const auto& w : words) CHECK_MESSAGE(a.errors[0].find(w) != std::string::npos, "missing '" << w << "'");
  CHECK(a.unchanged);
}

// A checkpoint of 3 ranks at step 3, and its snapshot.
struct saved_checkpoint {
  ckpt::temp_dir dir;
  ckpt::snapshot at_save;
  fs::path step_dir;
  saved_checkpoint() {
    at_save = ckpt::run<fp32_stage2>({.world = 3, .first = 0, .last = 3, .save_to = dir.path}).final;
    step_dir = dir.path / "step-3";
  }
  fs::path file(int r) const { return step_dir / ("rank-" + std::to_string(r) + "-of-3.zck"); }
};

void check_previous_loads(const saved_checkpoint& s, int world = 2) {
  const auto a = attempt_load<fp32_stage2>(world, s.dir.path);
  for (const auto& e : a.errors) CHECK_MESSAGE(e.empty(), e);
  CHECK(a.loaded.step == 3);
  CHECK(ckpt::same_bits(a.loaded.values, s.at_save.values));
}

}  // namespace

TEST_SUITE("reliability") {
  TEST_CASE("a writer that fails after k bytes on one rank refuses the new checkpoint and the previous one loads") {
    saved_checkpoint s;
    const auto file_size = fs::file_size(s.file(1));
    for (std::uint64_t k : {std::uint64_t{0}, std::uint64_t{5}, std::uint64_t{40}, std::uint64_t{300}, file_size / 2, file_size - 1}) {
      CAPTURE(k);
      auto failed = ckpt::run<fp32_stage2>({.world = 3, .first = 0, .last = 5, .save_to = s.dir.path, .catch_save_errors = true,
                                            .configure_save = [&](int rank, zero::checkpoint_options& o) {
                                              static thread_local std::unique_ptr<failing_writer> w;
                                              w = std::make_unique<failing_writer>(rank == 1 ? k : ~std::uint64_t{0});
                                              o.writer = w.get();
                                            }});
      for (int r = 0; r < 3; ++r) {
        CHECK(failed.save_errors[static_cast<std::size_t>(r)] == failed.save_errors[0]);
        CHECK(failed.save_error_kinds[static_cast<std::size_t>(r)] == static_cast<int>(kind::failed_rank));
      }
      MESSAGE(failed.save_errors[0]);
      CHECK(failed.save_errors[0].find("failed on rank(s) 1: ") != std::string::npos);
      CHECK(failed.save_errors[0].find("injected failure after " + std::to_string(k) + " bytes writing rank-1-of-3.zck") != std::string::npos);
      CHECK(failed.save_errors[0].find("nothing was committed") != std::string::npos);
      CHECK(!fs::exists(s.dir.path / "step-5" / "COMMITTED"));
      CHECK(!fs::exists(s.dir.path / "step-5" / "rank-1-of-3.zck"));
      for (const auto& e : fs::directory_iterator(s.dir.path / "step-5")) CHECK(e.path().string().find(".tmp-") == std::string::npos);
      CHECK(ckpt::read_bytes(s.dir.path / "latest") == std::vector<char>{'s', 't', 'e', 'p', '-', '3', '\n'});
    }
    check_previous_loads(s);
    // the torn step itself is refused, with the reason
    check_refused(attempt_load<fp32_stage2>(3, s.dir.path / "step-5"), kind::torn, {"step-5", "no commit marker"});
  }

  TEST_CASE("a failed fsync or rename on one rank or a failed commit on rank 0 commits nothing") {
    saved_checkpoint s;
    struct failure {
      int rank;
      failing_writer::at where;
      std::string target;
      std::string expected;
    };
    for (const auto& f : {failure{2, failing_writer::at::sync, "rank-", "injected fsync failure"},
                          failure{0, failing_writer::at::rename, "rank-", "injected rename failure"},
                          failure{0, failing_writer::at::write, "COMMITTED", "injected failure after 0 bytes writing COMMITTED"},
                          failure{0, failing_writer::at::rename, "COMMITTED", "injected rename failure on COMMITTED"}}) {
      CAPTURE(f.expected);
      auto failed = ckpt::run<fp32_stage2>({.world = 3, .first = 0, .last = 4, .save_to = s.dir.path, .catch_save_errors = true,
                                            .configure_save = [&](int rank, zero::checkpoint_options& o) {
                                              static thread_local std::unique_ptr<failing_writer> w;
                                              w = std::make_unique<failing_writer>(rank == f.rank ? 0 : ~std::uint64_t{0}, f.where, rank == f.rank ? f.target : "never");
                                              o.writer = w.get();
                                            }});
      MESSAGE(failed.save_errors[0]);
      for (int r = 0; r < 3; ++r) CHECK(failed.save_errors[static_cast<std::size_t>(r)] == failed.save_errors[0]);
      CHECK(failed.save_errors[0].find(f.expected) != std::string::npos);
      CHECK(failed.save_errors[0].find("rank(s) " + std::to_string(f.rank)) != std::string::npos);
      CHECK(!fs::exists(s.dir.path / "step-4" / "COMMITTED"));
    }
    check_previous_loads(s, 4);
  }

  TEST_CASE("one flipped byte in any section is refused naming the file and the section") {
    saved_checkpoint s;
    const fs::path fallback = s.dir.path;
    for (int r = 0; r < 3; ++r) {
      const zero::detail::read_file f(s.file(r));
      const auto h = f.header();
      const auto original = ckpt::read_bytes(s.file(r));
      for (const auto& section : h.sections) {
        CAPTURE(section.name);
        auto bytes = original;
        bytes[static_cast<std::size_t>(section.offset + section.bytes / 2)] ^= 0x10;
        ckpt::write_bytes(s.file(r), bytes);
        const auto a = attempt_load<fp32_stage2>(2, s.dir.path);
        check_refused(a, kind::corrupted, {"rank-" + std::to_string(r) + "-of-3.zck", "section '" + section.name + "'", "checksum mismatch"});
      }
      // the header and the preamble are checked too
      auto bytes = original;
      bytes[40] ^= 0x01;
      ckpt::write_bytes(s.file(r), bytes);
      check_refused(attempt_load<fp32_stage2>(2, s.dir.path), kind::corrupted, {"rank-" + std::to_string(r) + "-of-3.zck", "header: checksum mismatch"});
      bytes = original;
      bytes[17] ^= 0x01;
      ckpt::write_bytes(s.file(r), bytes);
      check_refused(attempt_load<fp32_stage2>(2, s.dir.path), kind::corrupted, {"rank-" + std::to_string(r) + "-of-3.zck", "preamble: checksum mismatch"});
      ckpt::write_bytes(s.file(r), original);
    }
    const auto marker = ckpt::read_bytes(s.step_dir / "COMMITTED");
    auto flipped = marker;
    flipped[20] ^= 0x01;
    ckpt::write_bytes(s.step_dir / "COMMITTED", flipped);
    check_refused(attempt_load<fp32_stage2>(3, s.dir.path), kind::corrupted, {"COMMITTED", "checksum mismatch"});
    ckpt::write_bytes(s.step_dir / "COMMITTED", marker);
    check_previous_loads(s);
  }

  TEST_CASE("a refused load leaves the optimizer usable: the good checkpoint loads into it") {
    saved_checkpoint s;
    const auto original = ckpt::read_bytes(s.file(1));
    auto bytes = original;
    bytes[bytes.size() - 3] ^= 0x01;  // the last state slot
    ckpt::write_bytes(s.file(1), bytes);
    ckpt::temp_dir copy;
    fs::copy(s.dir.path, copy.path, fs::copy_options::recursive);
    ckpt::write_bytes(s.file(1), original);
    const auto a = attempt_load<fp32_stage2>(4, copy.path, s.dir.path);
    check_refused(a, kind::corrupted, {"rank-1-of-3.zck", "section 'state.1'"});
    CHECK(a.loaded.step == 3);
    CHECK(ckpt::same_bits(a.loaded.values, s.at_save.values));
    CHECK(ckpt::same_bits(a.loaded.state[1], s.at_save.state[1]));
  }

  TEST_CASE("a truncated file is refused naming the file") {
    saved_checkpoint s;
    const auto original = ckpt::read_bytes(s.file(2));
    for (std::size_t n : {std::size_t{0}, std::size_t{16}, std::size_t{100}, original.size() / 2, original.size() - 1}) {
      CAPTURE(n);
      ckpt::write_bytes(s.file(2), std::vector<char>(original.begin(), original.begin() + static_cast<std::ptrdiff_t>(n)));
      check_refused(attempt_load<fp32_stage2>(3, s.dir.path), kind::torn, {"rank-2-of-3.zck", "truncated"});
    }
    ckpt::write_bytes(s.file(2), original);
    // a truncated marker, too
    const auto marker = ckpt::read_bytes(s.step_dir / "COMMITTED");
    ckpt::write_bytes(s.step_dir / "COMMITTED", std::vector<char>(marker.begin(), marker.begin() + 30));
    check_refused(attempt_load<fp32_stage2>(3, s.dir.path), kind::corrupted, {"COMMITTED"});
    ckpt::write_bytes(s.step_dir / "COMMITTED", marker);
    // a file of the right size whose header claims more than it holds is caught by the parser
    check_previous_loads(s);
  }

  TEST_CASE("a newer format version is refused with the version") {
    saved_checkpoint s;
    auto bytes = ckpt::read_bytes(s.file(0));
    // the next format version, with a valid preamble checksum, as a newer writer would make
    const std::uint32_t newer = zero::checkpoint_format::version + 1;
    bytes[8] = static_cast<char>(newer);
    const std::uint32_t crc = zero::crc32c(std::as_bytes(std::span<const char>(bytes.data(), 28)));
    for (int i = 0; i < 4; ++i) bytes[28 + static_cast<std::size_t>(i)] = static_cast<char>(crc >> (8 * i));
    ckpt::write_bytes(s.file(0), bytes);
    check_refused(attempt_load<fp32_stage2>(2, s.dir.path), kind::unsupported,
                  {"rank-0-of-3.zck", "format version " + std::to_string(newer) + " is newer"});
  }

  TEST_CASE("a checkpoint of a different model precision or rule is refused") {
    saved_checkpoint s;
    auto sizes = ckpt::model_sizes;
    sizes[4] = 65;
    check_refused(attempt_load<fp32_stage2>(2, s.dir.path, {}, sizes), kind::incompatible,
                  {"rank-0-of-3.zck", "different model", "parameter #4 is 'layer4' with 64 elements there and 'layer4' with 65"});
    sizes = ckpt::model_sizes;
    sizes.push_back(3);
    check_refused(attempt_load<fp32_stage2>(2, s.dir.path, {}, sizes), kind::incompatible, {"different model", "12 parameters"});
    check_refused(attempt_load<fp32_stage2>(2, s.dir.path, {}, ckpt::model_sizes, "w"), kind::incompatible, {"different model", "'layer0'", "'w0'"});
    check_refused(attempt_load<zero::optimizer<zero::stage2, zero::bf16_mixed>>(2, s.dir.path), kind::incompatible, {"parameter type fp32", "bf16"});
    check_refused(attempt_load<zero::optimizer<zero::stage2, zero::fp32_precision, zero::lion>>(2, s.dir.path), kind::incompatible,
                  {"update rule adamw with 2", "lion with 1"});
  }

  TEST_CASE("a rank file from another save is refused even at the right size") {
    saved_checkpoint s;
    ckpt::temp_dir other;
    ckpt::run<fp32_stage2>({.world = 3, .first = 0, .last = 3, .save_to = other.path});
    fs::copy_file(other.path / "step-3" / "rank-1-of-3.zck", s.file(1), fs::copy_options::overwrite_existing);
    check_refused(attempt_load<fp32_stage2>(3, s.dir.path), kind::torn, {"rank-1-of-3.zck", "belongs to another save"});
  }

  TEST_CASE("saving a step that is already committed is refused and leaves it untouched") {
    saved_checkpoint s;
    const auto before = ckpt::read_bytes(s.file(0));
    const auto failed = ckpt::run<fp32_stage2>({.world = 3, .first = 0, .last = 3, .save_to = s.dir.path, .catch_save_errors = true});
    CHECK(failed.save_error_kinds[0] == static_cast<int>(kind::exists));
    CHECK(failed.save_errors[0].find("already exists") != std::string::npos);
    CHECK(ckpt::read_bytes(s.file(0)) == before);
    check_previous_loads(s);
  }

  TEST_CASE("a directory without a committed checkpoint is refused") {
    ckpt::temp_dir empty;
    check_refused(attempt_load<fp32_stage2>(2, empty.path), kind::not_found, {"no committed checkpoint"});
    check_refused(attempt_load<fp32_stage2>(2, empty.path / "missing"), kind::not_found, {"no such directory"});
  }
}
