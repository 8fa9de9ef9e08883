#pragma once
//! @file checkpoint_format.hpp
//! The on-disk format of `zero` checkpoints (docs/checkpoint.md describes it byte by byte): the
//! CRC32C that protects every part, the header of a rank file (encoding and a parser that
//! refuses anything malformed with the reason), the commit marker, and the `file_writer`
//! through which every byte is written (POSIX by default; injectable for tests).
//!
//! A checkpoint directory holds `step-<n>/rank-<r>-of-<N>.zck` (rank r's shard of the saved
//! partition plan), `step-<n>/COMMITTED` (written only after every rank's file is durable) and
//! `latest` (advisory: names the newest committed step). `checkpoint.hpp` saves and loads them.
//!
//! POSIX only (open, pread, fsync, rename).

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "zero/error.hpp"
#include "zero/loss_scaler.hpp"
#include "zero/partitioner.hpp"

namespace zero {

// ---- CRC32C ----------------------------------------------------------------------------------

namespace detail {
constexpr std::array<std::uint32_t, 256> make_crc32c_table() noexcept {
  std::array<std::uint32_t, 256> table{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) != 0 ? (c >> 1) ^ 0x82F63B78u : c >> 1;  // reflected Castagnoli
    table[i] = c;
  }
  return table;
}
inline constexpr std::array<std::uint32_t, 256> crc32c_table = make_crc32c_table();
}  // namespace detail

//! CRC32C (Castagnoli, reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF),
//! continued from `crc` (the result of a previous call over the preceding bytes; 0 to start).
//! `crc32c("123456789") == 0xE3069283`. Table-driven software implementation.
constexpr std::uint32_t crc32c(std::span<const std::byte> bytes, std::uint32_t crc = 0) noexcept {
  crc = ~crc;
  for (std::byte b : bytes) crc = detail::crc32c_table[(crc ^ static_cast<std::uint32_t>(b)) & 0xffu] ^ (crc >> 8);
  return ~crc;
}
constexpr std::uint32_t crc32c(std::string_view text, std::uint32_t crc = 0) noexcept {
  crc = ~crc;
  for (char c : text) crc = detail::crc32c_table[(crc ^ static_cast<unsigned char>(c)) & 0xffu] ^ (crc >> 8);
  return ~crc;
}
static_assert(crc32c(std::string_view("123456789")) == 0xE3069283u, "CRC32C check value");

// ---- errors ----------------------------------------------------------------------------------

//! A checkpoint could not be written or read. `what()` names the file (and section) and says
//! what is wrong; `reason()` classifies it.
class checkpoint_error : public error {
 public:
  enum class kind : std::uint8_t {
    io,            //!< the operating system refused (open, write, fsync, rename, read)
    not_found,     //!< no checkpoint where one was expected
    torn,          //!< not committed, truncated or incomplete: a save that did not finish
    corrupted,     //!< a checksum or the structure does not match
    unsupported,   //!< a newer format version, or another byte order
    incompatible,  //!< of a different model, precision or update rule than the optimizer
    failed_rank,   //!< saving failed on some rank; nothing was committed
    exists,        //!< a committed checkpoint of this step already exists
  };
  checkpoint_error(kind k, const std::string& what) : error(what), kind_(k) {}
  kind reason() const noexcept { return kind_; }

 private:
  kind kind_;
};

// ---- constants -------------------------------------------------------------------------------

namespace checkpoint_format {
inline constexpr std::array<char, 8> magic = {'Z', 'E', 'R', 'O', 'C', 'K', 'P', 'T'};
//! The newest format this build reads and writes. Version 2 added each reduction unit's owner
//! (units owned whole by one rank); version 1 files load as units shared by every rank.
//! Version 3 added the parameter groups: each group's hyperparameters and each parameter's
//! group; older files load as one group whose hyperparameters were not saved.
//! Version 4 added what the optimizer does with unreported gradients and each parameter's own
//! update count (`optimizer::step_of`); older files load with every count equal to the step.
inline constexpr std::uint32_t version = 4;
inline constexpr std::uint32_t byte_order_mark = 0x01020304u;  //!< stored little-endian: bytes 04 03 02 01
inline constexpr std::size_t preamble_bytes = 32;
inline constexpr std::size_t section_alignment = 64;  //!< sections start at multiples of this
inline constexpr std::uint64_t max_header_bytes = std::uint64_t{1} << 30;
inline constexpr std::uint32_t max_string_bytes = 1u << 16;
inline constexpr std::uint32_t max_state_count = 64;
inline constexpr std::uint32_t max_group_count = 1u << 16;
inline constexpr std::uint32_t max_field_count = 256;  //!< hyperparameters per group
inline constexpr std::uint32_t max_world_size = 1u << 24;
inline constexpr std::string_view marker_name = "COMMITTED";
inline constexpr std::string_view latest_name = "latest";
inline constexpr std::string_view marker_first_line = "zero checkpoint 1";

inline std::string step_directory_name(std::uint64_t step) { return "step-" + std::to_string(step); }
inline std::string rank_file_name(std::uint32_t rank, std::uint32_t world) {
  return "rank-" + std::to_string(rank) + "-of-" + std::to_string(world) + ".zck";
}
//! Bytes per element of a stored element type ("fp32", "fp64", "bf16", "fp16"); 0 if unknown.
constexpr std::size_t element_size(std::string_view type) noexcept {
  if (type == "fp32") return 4;
  if (type == "fp64") return 8;
  if (type == "bf16" || type == "fp16") return 2;
  return 0;
}
}  // namespace checkpoint_format

// ---- the header ------------------------------------------------------------------------------

//! One stored array of a rank file: `element_count` little-endian elements at `offset`.
struct checkpoint_section {
  std::string name;          //!< "values", "state.0", "state.1", ...
  std::string element_type;  //!< "fp32", "fp64", "bf16", "fp16"
  std::uint64_t element_count = 0;
  std::uint64_t offset = 0;  //!< byte offset in the file, a multiple of section_alignment
  std::uint64_t bytes = 0;   //!< element_count * element size
  std::uint32_t crc32c = 0;  //!< of the section's bytes
  friend bool operator==(const checkpoint_section&, const checkpoint_section&) = default;
};

//! One saved hyperparameter of a parameter group (a bool as 0 or 1).
struct checkpoint_field {
  std::string name;
  double value = 0;
  friend bool operator==(const checkpoint_field&, const checkpoint_field&) = default;
};

//! Everything a rank file says about itself (docs/checkpoint.md lists the encoding in order).
struct checkpoint_header {
  std::uint32_t version = checkpoint_format::version;
  std::uint64_t save_id = 0;  //!< random, the same in every file of one save and in its marker
  std::uint32_t rank = 0;
  std::uint32_t world_size = 1;
  std::uint32_t stage = 0;
  std::uint64_t step = 0;
  // element types (names as `zero::type_name`; "none" for no master copy)
  std::string param_type, grad_type, master_type, state_type, accum_type, comm_type, value_type;
  std::string rule;
  std::uint32_t state_count = 0;
  std::string partitioner;  //!< "contiguous", "bucketed" or "user" (informational)
  // options
  std::uint64_t alignment = 0, bucket_elements = 0;
  std::uint8_t gradient_slots = 0, defer_reduction = 0;
  double max_grad_norm = 0;
  std::uint8_t loss_scale_kind = 0;
  double fixed_scale = 1;
  std::int32_t initial_scale_power = 0;
  std::uint32_t window = 0, hysteresis = 0;
  double min_scale = 1;
  std::uint8_t on_nonfinite = 0, value_rounding = 0;
  std::uint64_t seed = 0;
  //! Version 4: `unreported_gradients` (0 zero, 1 skip); older versions: 0.
  std::uint8_t unreported = 0;
  loss_scaler::state scaler{};
  //! Version 3: each parameter group's hyperparameters, by name, and each parameter's group
  //! (`param_groups`, indexed like `param_names`). Older versions: both empty.
  std::vector<std::vector<checkpoint_field>> groups;
  std::vector<std::uint32_t> param_groups;
  //! Version 4: each parameter's own update count (`optimizer::step_of`), indexed like
  //! `param_names`, at most `step`. Older versions: empty (every count is `step`).
  std::vector<std::uint64_t> param_steps;
  // the global parameter layout and the saved plan
  std::vector<std::string> param_names;
  partition_plan plan;
  std::uint64_t layout_hash = 0;
  std::vector<checkpoint_section> sections;

  //! The section named `name`, or null.
  const checkpoint_section* section(std::string_view name) const noexcept {
    for (const auto& s : sections)
      if (s.name == name) return &s;
    return nullptr;
  }
};

//! FNV-1a (64-bit) of the model's identity, independent of world size and partitioner: the
//! parameter count, then each parameter's element count and name (u64 little-endian counts).
inline std::uint64_t layout_hash(std::span<const std::size_t> sizes, std::span<const std::string> names) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  auto mix_byte = [&](unsigned char b) {
    h ^= b;
    h *= 0x100000001b3ull;
  };
  auto mix = [&](std::uint64_t v) {
    for (int i = 0; i < 8; ++i) mix_byte(static_cast<unsigned char>(v >> (8 * i)));
  };
  mix(sizes.size());
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    mix(sizes[i]);
    const std::string_view name = i < names.size() ? std::string_view(names[i]) : std::string_view();
    mix(name.size());
    for (char c : name) mix_byte(static_cast<unsigned char>(c));
  }
  return h;
}

namespace detail {

//! Appends little-endian fields.
class byte_writer {
 public:
  void u8(std::uint8_t v) { bytes_.push_back(static_cast<std::byte>(v)); }
  void u32(std::uint32_t v) {
    for (int i = 0; i < 4; ++i) u8(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  void u64(std::uint64_t v) {
    for (int i = 0; i < 8; ++i) u8(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  void i32(std::int32_t v) { u32(static_cast<std::uint32_t>(v)); }
  void i64(std::int64_t v) { u64(static_cast<std::uint64_t>(v)); }
  void f64(double v) { u64(std::bit_cast<std::uint64_t>(v)); }
  void text(std::string_view s) {
    u32(static_cast<std::uint32_t>(s.size()));
    for (char c : s) u8(static_cast<std::uint8_t>(c));
  }
  void raw(std::span<const std::byte> b) { bytes_.insert(bytes_.end(), b.begin(), b.end()); }
  std::vector<std::byte>& bytes() noexcept { return bytes_; }

 private:
  std::vector<std::byte> bytes_;
};

//! Reads little-endian fields, refusing to read past the end with a message naming the field.
class byte_reader {
 public:
  byte_reader(std::span<const std::byte> bytes, std::string where) : bytes_(bytes), where_(std::move(where)) {}
  std::size_t position() const noexcept { return at_; }
  std::size_t remaining() const noexcept { return bytes_.size() - at_; }
  std::uint8_t u8(const char* field) {
    need(1, field);
    return static_cast<std::uint8_t>(bytes_[at_++]);
  }
  std::uint32_t u32(const char* field) {
    need(4, field);
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(bytes_[at_++]) << (8 * i);
    return v;
  }
  std::uint64_t u64(const char* field) {
    need(8, field);
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(bytes_[at_++]) << (8 * i);
    return v;
  }
  std::int32_t i32(const char* field) { return static_cast<std::int32_t>(u32(field)); }
  std::int64_t i64(const char* field) { return static_cast<std::int64_t>(u64(field)); }
  double f64(const char* field) { return std::bit_cast<double>(u64(field)); }
  std::string text(const char* field) {
    const std::uint32_t n = u32(field);
    if (n > checkpoint_format::max_string_bytes) fail(std::string(field) + " is " + std::to_string(n) + " bytes long");
    need(n, field);
    std::string s(reinterpret_cast<const char*>(bytes_.data() + at_), n);
    at_ += n;
    return s;
  }
  //! A count of items that take at least `min_bytes` each: refuses one the rest cannot hold.
  std::uint64_t count(const char* field, std::size_t min_bytes) {
    const std::uint64_t n = u64(field);
    if (n > remaining() / min_bytes) fail(std::string(field) + " = " + std::to_string(n) + " does not fit in the header");
    return n;
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw checkpoint_error(checkpoint_error::kind::corrupted,
                           where_ + ": header: " + what + " (at header byte " + std::to_string(at_) + ")");
  }

 private:
  void need(std::size_t n, const char* field) const {
    if (remaining() < n) fail(std::string("ends before ") + field);
  }
  std::span<const std::byte> bytes_;
  std::string where_;
  std::size_t at_ = 0;
};

inline bool add_overflows(std::uint64_t a, std::uint64_t b) noexcept { return a > std::numeric_limits<std::uint64_t>::max() - b; }
inline bool mul_overflows(std::uint64_t a, std::uint64_t b) noexcept { return b != 0 && a > std::numeric_limits<std::uint64_t>::max() / b; }

inline std::uint32_t read_u32_le(const std::byte* p) noexcept {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(p[i]) << (8 * i);
  return v;
}
inline std::uint64_t read_u64_le(const std::byte* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace detail

//! The header body: every field of `h` in the documented order, little-endian.
inline std::vector<std::byte> encode_header_body(const checkpoint_header& h) {
  detail::byte_writer w;
  w.u64(h.save_id);
  w.u32(h.rank);
  w.u32(h.world_size);
  w.u32(h.stage);
  w.u64(h.step);
  for (const std::string* t : {&h.param_type, &h.grad_type, &h.master_type, &h.state_type, &h.accum_type, &h.comm_type, &h.value_type})
    w.text(*t);
  w.text(h.rule);
  w.u32(h.state_count);
  w.text(h.partitioner);
  w.u64(h.alignment);
  w.u64(h.bucket_elements);
  w.u8(h.gradient_slots);
  w.u8(h.defer_reduction);
  w.f64(h.max_grad_norm);
  w.u8(h.loss_scale_kind);
  w.f64(h.fixed_scale);
  w.i32(h.initial_scale_power);
  w.u32(h.window);
  w.u32(h.hysteresis);
  w.f64(h.min_scale);
  w.u8(h.on_nonfinite);
  w.u8(h.value_rounding);
  w.u64(h.seed);
  if (h.version >= 4) w.u8(h.unreported);
  w.f64(h.scaler.scale);
  w.u32(h.scaler.hysteresis_left);
  w.u64(h.scaler.iteration);
  w.i64(h.scaler.last_overflow);
  if (h.version >= 3) {
    w.u32(static_cast<std::uint32_t>(h.groups.size()));
    for (const auto& g : h.groups) {
      w.u32(static_cast<std::uint32_t>(g.size()));
      for (const auto& f : g) {
        w.text(f.name);
        w.f64(f.value);
      }
    }
  }
  const auto& p = h.plan;
  w.u64(p.param_size.size());
  for (std::size_t i = 0; i < p.param_size.size(); ++i) {
    w.text(i < h.param_names.size() ? h.param_names[i] : std::string());
    w.u64(p.param_size[i]);
    w.u64(p.param_offset[i]);
    if (h.version >= 3) w.u32(i < h.param_groups.size() ? h.param_groups[i] : 0u);
    if (h.version >= 4) w.u64(i < h.param_steps.size() ? h.param_steps[i] : h.step);
  }
  w.u64(p.element_count);
  w.u64(p.padded_size);
  w.u64(p.shard_size);
  w.u64(p.units.size());
  for (const auto& u : p.units) {
    w.u64(u.flat_begin);
    w.u64(u.rank_stride);
    w.u64(u.slice);
    w.u64(u.shard_begin);
    if (h.version >= 2) w.i32(u.owner);
  }
  w.u64(h.layout_hash);
  w.u32(static_cast<std::uint32_t>(h.sections.size()));
  for (const auto& s : h.sections) {
    w.text(s.name);
    w.text(s.element_type);
    w.u64(s.element_count);
    w.u64(s.offset);
    w.u64(s.bytes);
    w.u32(s.crc32c);
  }
  return std::move(w.bytes());
}

//! The 32-byte preamble followed by the header body; sections start at `first_section_offset`.
inline std::vector<std::byte> encode_header(const checkpoint_header& h) {
  const std::vector<std::byte> body = encode_header_body(h);
  detail::byte_writer w;
  w.raw(std::as_bytes(std::span<const char>(checkpoint_format::magic)));
  w.u32(h.version);
  w.u32(checkpoint_format::byte_order_mark);
  w.u64(body.size());
  w.u32(crc32c(body));
  w.u32(crc32c(w.bytes()));
  w.raw(body);
  return std::move(w.bytes());
}

//! Where the first section of a file whose header body has `body_bytes` bytes starts.
constexpr std::uint64_t first_section_offset(std::uint64_t body_bytes) noexcept {
  const std::uint64_t a = checkpoint_format::section_alignment;
  return (checkpoint_format::preamble_bytes + body_bytes + a - 1) / a * a;
}

//! Parses and checks the preamble. Returns the header body's length.
//! @throws checkpoint_error naming `file` (corrupted, unsupported or torn)
inline std::uint64_t parse_preamble(std::span<const std::byte> bytes, const std::string& file) {
  using k = checkpoint_error::kind;
  namespace f = checkpoint_format;
  if (bytes.size() < f::preamble_bytes)
    throw checkpoint_error(k::torn, file + ": " + std::to_string(bytes.size()) + " bytes, shorter than the " +
                                        std::to_string(f::preamble_bytes) + "-byte preamble (truncated)");
  if (std::memcmp(bytes.data(), f::magic.data(), f::magic.size()) != 0)
    throw checkpoint_error(k::corrupted, file + ": preamble: not a zero checkpoint file (magic is not ZEROCKPT)");
  const std::uint32_t stored_crc = detail::read_u32_le(bytes.data() + 28);
  if (crc32c(bytes.first(28)) != stored_crc)
    throw checkpoint_error(k::corrupted, file + ": preamble: checksum mismatch (CRC32C)");
  const std::uint32_t version = detail::read_u32_le(bytes.data() + 8);
  if (version > f::version)
    throw checkpoint_error(k::unsupported, file + ": format version " + std::to_string(version) +
                                               " is newer than the newest this build of zero reads (" +
                                               std::to_string(f::version) + "); use a newer zero");
  if (version == 0) throw checkpoint_error(k::corrupted, file + ": preamble: format version 0 does not exist");
  const std::uint32_t mark = detail::read_u32_le(bytes.data() + 12);
  if (mark != f::byte_order_mark)
    throw checkpoint_error(k::unsupported, file + ": byte order mark " + std::to_string(mark) + " is not the little-endian mark");
  const std::uint64_t body = detail::read_u64_le(bytes.data() + 16);
  if (body > f::max_header_bytes)
    throw checkpoint_error(k::corrupted, file + ": preamble: header length " + std::to_string(body) + " is implausible");
  return body;
}

//! Parses a rank file's header from the file's first bytes (at least the preamble and the
//! header body) and checks everything that can be checked without the sections' data: the
//! magic, the version, the checksums, every field's bounds, the plan's consistency, the layout
//! hash and the section table. Refuses anything else with a `checkpoint_error` naming `file`
//! and what is wrong; never reads outside `bytes` and never allocates more than `bytes` implies.
inline checkpoint_header parse_header(std::span<const std::byte> bytes, const std::string& file) {
  using k = checkpoint_error::kind;
  namespace f = checkpoint_format;
  const std::uint64_t body_bytes = parse_preamble(bytes, file);
  if (bytes.size() - f::preamble_bytes < body_bytes)
    throw checkpoint_error(k::torn, file + ": header: the preamble announces " + std::to_string(body_bytes) + " header bytes; only " +
                                        std::to_string(bytes.size() - f::preamble_bytes) + " follow (truncated)");
  const auto body = bytes.subspan(f::preamble_bytes, static_cast<std::size_t>(body_bytes));
  if (crc32c(body) != detail::read_u32_le(bytes.data() + 24))
    throw checkpoint_error(k::corrupted, file + ": header: checksum mismatch (CRC32C)");

  checkpoint_header h;
  h.version = detail::read_u32_le(bytes.data() + 8);
  detail::byte_reader r(body, file);
  h.save_id = r.u64("save_id");
  h.rank = r.u32("rank");
  h.world_size = r.u32("world_size");
  if (h.world_size < 1 || h.world_size > f::max_world_size) r.fail("world_size " + std::to_string(h.world_size) + " is out of range");
  if (h.rank >= h.world_size) r.fail("rank " + std::to_string(h.rank) + " is not below world_size " + std::to_string(h.world_size));
  h.stage = r.u32("stage");
  if (h.stage > 3) r.fail("stage " + std::to_string(h.stage) + " is not 0, 1, 2 or 3");
  h.step = r.u64("step");
  for (std::string* t : {&h.param_type, &h.grad_type, &h.master_type, &h.state_type, &h.accum_type, &h.comm_type, &h.value_type})
    *t = r.text("element type");
  if (f::element_size(h.value_type) == 0) r.fail("value type '" + h.value_type + "' is not a stored element type");
  if (f::element_size(h.state_type) == 0) r.fail("state type '" + h.state_type + "' is not a stored element type");
  h.rule = r.text("rule");
  h.state_count = r.u32("state_count");
  if (h.state_count > f::max_state_count) r.fail("state_count " + std::to_string(h.state_count) + " is out of range");
  h.partitioner = r.text("partitioner");
  h.alignment = r.u64("alignment");
  h.bucket_elements = r.u64("bucket_elements");
  h.gradient_slots = r.u8("gradient_slots");
  h.defer_reduction = r.u8("defer_reduction");
  h.max_grad_norm = r.f64("max_grad_norm");
  h.loss_scale_kind = r.u8("loss_scale_kind");
  h.fixed_scale = r.f64("fixed_scale");
  h.initial_scale_power = r.i32("initial_scale_power");
  h.window = r.u32("window");
  h.hysteresis = r.u32("hysteresis");
  h.min_scale = r.f64("min_scale");
  h.on_nonfinite = r.u8("on_nonfinite");
  h.value_rounding = r.u8("value_rounding");
  h.seed = r.u64("seed");
  if (h.version >= 4) {
    h.unreported = r.u8("unreported");
    if (h.unreported > 1) r.fail("unreported " + std::to_string(h.unreported) + " is not 0 (zero) or 1 (skip)");
  }
  h.scaler.scale = r.f64("scaler.scale");
  h.scaler.hysteresis_left = r.u32("scaler.hysteresis_left");
  h.scaler.iteration = r.u64("scaler.iteration");
  h.scaler.last_overflow = r.i64("scaler.last_overflow");
  if (h.version >= 3) {
    const std::uint32_t groups = r.u32("group count");
    if (groups < 1 || groups > f::max_group_count) r.fail("group count " + std::to_string(groups) + " is out of range");
    h.groups.resize(groups);
    for (auto& g : h.groups) {
      const std::uint32_t fields = r.u32("field count");
      if (fields > f::max_field_count) r.fail("field count " + std::to_string(fields) + " is out of range");
      for (std::uint32_t i = 0; i < fields; ++i) {
        checkpoint_field field;
        field.name = r.text("field name");
        field.value = r.f64("field value");
        g.push_back(std::move(field));
      }
      if (g.size() != h.groups[0].size()) r.fail("parameter groups list different numbers of hyperparameters");
    }
  }

  auto& p = h.plan;
  p.world_size = static_cast<int>(h.world_size);
  const std::uint64_t params = r.count("parameter count", 4 + 8 + 8 + (h.version >= 3 ? 4 : 0) + (h.version >= 4 ? 8 : 0));
  if (params == 0) r.fail("no parameters");
  h.param_names.reserve(params);
  p.param_size.reserve(params);
  p.param_offset.reserve(params);
  for (std::uint64_t i = 0; i < params; ++i) {
    h.param_names.push_back(r.text("parameter name"));
    p.param_size.push_back(r.u64("parameter size"));
    p.param_offset.push_back(r.u64("parameter offset"));
    if (h.version >= 3) {
      h.param_groups.push_back(r.u32("parameter group"));
      if (h.param_groups.back() >= h.groups.size())
        r.fail("parameter #" + std::to_string(i) + " is in group " + std::to_string(h.param_groups.back()) + " of " +
               std::to_string(h.groups.size()));
    }
    if (h.version >= 4) {
      h.param_steps.push_back(r.u64("parameter step"));
      if (h.param_steps.back() > h.step)
        r.fail("parameter #" + std::to_string(i) + " has " + std::to_string(h.param_steps.back()) + " updates, more than the " +
               std::to_string(h.step) + " steps taken");
    }
  }
  p.element_count = r.u64("element_count");
  p.padded_size = r.u64("padded_size");
  p.shard_size = r.u64("shard_size");
  if (detail::mul_overflows(p.shard_size, h.world_size) || p.shard_size * h.world_size != p.padded_size)
    r.fail("padded_size " + std::to_string(p.padded_size) + " is not shard_size x world_size");
  std::uint64_t total = 0;
  for (std::uint64_t i = 0; i < params; ++i) {
    const std::string which = "parameter #" + std::to_string(i);
    if (p.param_size[i] == 0) r.fail(which + " has no elements");
    if (detail::add_overflows(p.param_offset[i], p.param_size[i]) || p.param_offset[i] + p.param_size[i] > p.padded_size)
      r.fail(which + " lies outside the flat buffer");
    if (detail::add_overflows(total, p.param_size[i])) r.fail("parameter sizes overflow");
    total += p.param_size[i];
  }
  if (total != p.element_count) r.fail("element_count " + std::to_string(p.element_count) + " is not the sum of the parameter sizes");
  {
    std::vector<std::size_t> order(params);
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return p.param_offset[a] < p.param_offset[b]; });
    for (std::size_t i = 1; i < order.size(); ++i)
      if (p.param_offset[order[i - 1]] + p.param_size[order[i - 1]] > p.param_offset[order[i]])
        r.fail("parameters #" + std::to_string(order[i - 1]) + " and #" + std::to_string(order[i]) + " overlap");
  }
  const std::uint64_t units = r.count("unit count", 32);
  if (units == 0 && p.shard_size != 0) r.fail("no reduction units");
  p.units.reserve(units);
  // each rank's slices tile its shard in unit order (kept per owner: a huge world size costs nothing)
  detail::shard_cursors cursors(h.world_size);
  for (std::uint64_t k = 0; k < units; ++k) {
    reduction_unit u;
    u.flat_begin = r.u64("unit flat_begin");
    u.rank_stride = r.u64("unit rank_stride");
    u.slice = r.u64("unit slice");
    u.shard_begin = r.u64("unit shard_begin");
    if (h.version >= 2) u.owner = r.i32("unit owner");
    const std::string which = "unit " + std::to_string(k);
    if (u.slice == 0) r.fail(which + " is empty");
    if (u.owner != every_rank && (u.owner < 0 || static_cast<std::uint64_t>(u.owner) >= h.world_size))
      r.fail(which + " is owned by rank " + std::to_string(u.owner) + ", outside the " + std::to_string(h.world_size) + " ranks");
    if (const long long q = cursors.first_not_continued(u); q >= 0)
      r.fail(which + " does not continue the shard of rank " + std::to_string(q));
    if (detail::add_overflows(u.shard_begin, u.slice)) r.fail(which + " overflows the shard");
    cursors.advance(u);
    // the last slice must end inside the flat buffer
    const std::uint64_t last = u.owner == every_rank ? h.world_size - 1 : 0;
    if (detail::mul_overflows(last, u.rank_stride) || detail::add_overflows(u.flat_begin, last * u.rank_stride) ||
        detail::add_overflows(u.flat_begin + last * u.rank_stride, u.slice) ||
        u.flat_begin + last * u.rank_stride + u.slice > p.padded_size)
      r.fail(which + " reaches outside the flat buffer");
    if (u.owner == every_rank && h.world_size > 1 && u.rank_stride < u.slice) r.fail(which + " has overlapping slices");
    p.units.push_back(u);
  }
  if (const long long q = cursors.first_not_filled(p.shard_size); q >= 0)
    r.fail("units cover " + std::to_string(cursors.at(static_cast<std::uint64_t>(q))) + " shard elements of rank " +
           std::to_string(q) + ", not " + std::to_string(p.shard_size));
  h.layout_hash = r.u64("layout_hash");
  if (h.layout_hash != layout_hash(p.param_size, h.param_names)) r.fail("layout_hash does not match the parameters");

  const std::uint32_t sections = r.u32("section count");
  if (sections != 1 + h.state_count)
    r.fail(std::to_string(sections) + " sections; expected " + std::to_string(1 + h.state_count) + " (values and each state slot)");
  std::uint64_t next = first_section_offset(body_bytes);
  for (std::uint32_t i = 0; i < sections; ++i) {
    checkpoint_section s;
    s.name = r.text("section name");
    s.element_type = r.text("section element type");
    s.element_count = r.u64("section element_count");
    s.offset = r.u64("section offset");
    s.bytes = r.u64("section bytes");
    s.crc32c = r.u32("section crc32c");
    const std::string expected_name = i == 0 ? "values" : "state." + std::to_string(i - 1);
    const std::string& expected_type = i == 0 ? h.value_type : h.state_type;
    if (s.name != expected_name) r.fail("section #" + std::to_string(i) + " is '" + s.name + "', expected '" + expected_name + "'");
    if (s.element_type != expected_type) r.fail("section " + s.name + " holds " + s.element_type + ", expected " + expected_type);
    if (s.element_count != p.shard_size) r.fail("section " + s.name + " holds " + std::to_string(s.element_count) + " elements, not shard_size");
    if (detail::mul_overflows(s.element_count, f::element_size(s.element_type)) ||
        s.bytes != s.element_count * f::element_size(s.element_type))
      r.fail("section " + s.name + " is " + std::to_string(s.bytes) + " bytes, not element_count x element size");
    if (s.offset != next) r.fail("section " + s.name + " starts at byte " + std::to_string(s.offset) + ", not " + std::to_string(next));
    if (detail::add_overflows(s.offset, s.bytes + f::section_alignment)) r.fail("section " + s.name + " overflows");
    next = (s.offset + s.bytes + f::section_alignment - 1) / f::section_alignment * f::section_alignment;
    h.sections.push_back(std::move(s));
  }
  if (r.remaining() != 0) r.fail(std::to_string(r.remaining()) + " unexpected bytes after the section table");
  return h;
}

//! The size a rank file with this header has: the end of its last section.
inline std::uint64_t expected_file_size(const checkpoint_header& h) noexcept {
  std::uint64_t end = 0;
  for (const auto& s : h.sections) end = std::max(end, s.offset + s.bytes);
  return end;
}

// ---- the commit marker -----------------------------------------------------------------------

//! What `step-<n>/COMMITTED` records: the save, and every rank file with its size.
struct commit_marker {
  std::uint64_t step = 0;
  std::uint32_t world_size = 0;
  std::uint64_t save_id = 0;
  std::vector<std::pair<std::string, std::uint64_t>> files;  //!< name, bytes (rank order)
};

inline std::string encode_commit_marker(const commit_marker& m) {
  char id[17];
  for (int i = 0; i < 16; ++i) id[i] = "0123456789abcdef"[(m.save_id >> (60 - 4 * i)) & 0xf];
  id[16] = 0;
  std::string text = std::string(checkpoint_format::marker_first_line) + "\nstep " + std::to_string(m.step) + "\nworld_size " +
                     std::to_string(m.world_size) + "\nsave_id " + id + "\n";
  for (const auto& [name, bytes] : m.files) text += "file " + name + " " + std::to_string(bytes) + "\n";
  char crc[9];
  const std::uint32_t c = crc32c(text);
  for (int i = 0; i < 8; ++i) crc[i] = "0123456789abcdef"[(c >> (28 - 4 * i)) & 0xf];
  crc[8] = 0;
  return text + "crc32c " + crc + "\n";
}

inline commit_marker parse_commit_marker(std::string_view text, const std::string& file) {
  auto fail = [&](const std::string& what) -> void {
    throw checkpoint_error(checkpoint_error::kind::corrupted, file + ": " + what);
  };
  auto number = [&](std::string_view s, int base, const char* field) {
    std::uint64_t v = 0;
    if (s.empty() || s.size() > 20) fail(std::string("bad ") + field);
    for (char c : s) {
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : 99;
      if (d >= base || detail::mul_overflows(v, static_cast<std::uint64_t>(base)) ||
          detail::add_overflows(v * static_cast<std::uint64_t>(base), static_cast<std::uint64_t>(d)))
        fail(std::string("bad ") + field);
      v = v * static_cast<std::uint64_t>(base) + static_cast<std::uint64_t>(d);
    }
    return v;
  };
  const std::size_t crc_at = text.rfind("crc32c ");
  if (crc_at == std::string_view::npos || (crc_at != 0 && text[crc_at - 1] != '\n')) fail("no crc32c line (truncated)");
  std::string_view crc_line = text.substr(crc_at + 7);
  if (!crc_line.empty() && crc_line.back() == '\n') crc_line.remove_suffix(1);
  if (number(crc_line, 16, "crc32c") != crc32c(text.substr(0, crc_at))) fail("checksum mismatch (CRC32C)");
  commit_marker m;
  std::string_view rest = text.substr(0, crc_at);
  int line_no = 0;
  bool have_step = false, have_world = false, have_id = false;
  while (!rest.empty()) {
    const std::size_t eol = rest.find('\n');
    if (eol == std::string_view::npos) fail("line " + std::to_string(line_no + 1) + " is not terminated");
    const std::string_view line = rest.substr(0, eol);
    rest.remove_prefix(eol + 1);
    if (line_no++ == 0) {
      if (line != checkpoint_format::marker_first_line) fail("first line is not '" + std::string(checkpoint_format::marker_first_line) + "'");
      continue;
    }
    const std::size_t sp = line.find(' ');
    if (sp == std::string_view::npos) fail("line " + std::to_string(line_no) + " has no value");
    const std::string_view key = line.substr(0, sp), value = line.substr(sp + 1);
    if (key == "step") m.step = number(value, 10, "step"), have_step = true;
    else if (key == "world_size") m.world_size = static_cast<std::uint32_t>(number(value, 10, "world_size")), have_world = true;
    else if (key == "save_id") m.save_id = number(value, 16, "save_id"), have_id = true;
    else if (key == "file") {
      const std::size_t sp2 = value.rfind(' ');
      if (sp2 == std::string_view::npos) fail("file line " + std::to_string(line_no) + " has no size");
      m.files.emplace_back(std::string(value.substr(0, sp2)), number(value.substr(sp2 + 1), 10, "file size"));
    } else fail("unknown key '" + std::string(key) + "'");
  }
  if (!have_step || !have_world || !have_id) fail("step, world_size or save_id is missing");
  if (m.world_size == 0 || m.world_size > checkpoint_format::max_world_size || m.files.size() != m.world_size)
    fail("lists " + std::to_string(m.files.size()) + " files for world_size " + std::to_string(m.world_size));
  for (std::uint32_t r = 0; r < m.world_size; ++r)
    if (m.files[r].first != checkpoint_format::rank_file_name(r, m.world_size))
      fail("file #" + std::to_string(r) + " is '" + m.files[r].first + "', expected " + checkpoint_format::rank_file_name(r, m.world_size));
  return m;
}

// ---- writing files ---------------------------------------------------------------------------

//! How a checkpoint writes its files: one file at a time per object (open, write..., sync,
//! close), then rename and sync the directory. Every failure throws (a `checkpoint_error` of
//! kind `io` for the shipped writer). Derive from it to inject failures or to write elsewhere.
class file_writer {
 public:
  virtual ~file_writer() = default;
  //! Creates `path` (truncating any file there) for writing.
  virtual void open(const std::filesystem::path& path) = 0;
  virtual void write(std::span<const std::byte> bytes) = 0;
  //! Makes what was written durable (fsync).
  virtual void sync() = 0;
  virtual void close() = 0;
  //! Atomically replaces `to` with `from`.
  virtual void rename(const std::filesystem::path& from, const std::filesystem::path& to) = 0;
  //! Makes the directory's entries (a rename) durable.
  virtual void sync_directory(const std::filesystem::path& directory) = 0;
  //! Best-effort removal of a partly written file (after a failure).
  virtual void remove(const std::filesystem::path& path) noexcept = 0;
};

//! The default writer: POSIX open/write/fsync/rename, fsync of the directory.
class posix_file_writer : public file_writer {
 public:
  posix_file_writer() = default;
  posix_file_writer(const posix_file_writer&) = delete;
  posix_file_writer& operator=(const posix_file_writer&) = delete;
  ~posix_file_writer() override {
    if (fd_ >= 0) ::close(fd_);
  }

  void open(const std::filesystem::path& path) override {
    if (fd_ >= 0) ::close(fd_);
    path_ = path;
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("open");
  }
  void write(std::span<const std::byte> bytes) override {
    while (!bytes.empty()) {
      const ::ssize_t n = ::write(fd_, bytes.data(), std::min<std::size_t>(bytes.size(), std::size_t{1} << 30));
      if (n < 0) {
        if (errno == EINTR) continue;
        fail("write");
      }
      bytes = bytes.subspan(static_cast<std::size_t>(n));
    }
  }
  void sync() override {
    if (::fsync(fd_) != 0) fail("fsync");
  }
  void close() override {
    const int fd = std::exchange(fd_, -1);
    if (fd >= 0 && ::close(fd) != 0) fail("close");
  }
  void rename(const std::filesystem::path& from, const std::filesystem::path& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      path_ = from;
      fail("rename to " + to.string() + " of");
    }
  }
  void sync_directory(const std::filesystem::path& directory) override {
    const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    path_ = directory;
    if (fd < 0) fail("open directory");
    const int status = ::fsync(fd);
    const int saved = errno;
    ::close(fd);
    errno = saved;
    if (status != 0) fail("fsync directory");
  }
  void remove(const std::filesystem::path& path) noexcept override {
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
    std::error_code ignored;
    std::filesystem::remove(path, ignored);
  }

 private:
  [[noreturn]] void fail(const std::string& call) const {
    throw checkpoint_error(checkpoint_error::kind::io, "zero: checkpoint: " + call + " " + path_.string() + ": " + std::strerror(errno));
  }
  int fd_ = -1;
  std::filesystem::path path_;
};

// ---- reading files ---------------------------------------------------------------------------

namespace detail {

//! A file opened for positional reads; every failure names the file.
class read_file {
 public:
  explicit read_file(const std::filesystem::path& path) : path_(path.string()) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      const int e = errno;
      throw checkpoint_error(e == ENOENT ? checkpoint_error::kind::torn : checkpoint_error::kind::io,
                             path_ + ": cannot open: " + std::strerror(e));
    }
    struct stat st {};
    if (::fstat(fd_, &st) != 0) fail("fstat");
    size_ = static_cast<std::uint64_t>(st.st_size);
  }
  //! A rank file held in memory (`load_state`): `bytes`, named `name` in errors. The bytes must
  //! outlive this object.
  read_file(std::span<const std::byte> bytes, std::string name)
      : path_(std::move(name)), size_(bytes.size()), memory_(bytes), in_memory_(true) {}
  read_file(const read_file&) = delete;
  read_file& operator=(const read_file&) = delete;
  read_file(read_file&& o) noexcept
      : fd_(std::exchange(o.fd_, -1)), path_(std::move(o.path_)), size_(o.size_), memory_(o.memory_), in_memory_(o.in_memory_) {}
  ~read_file() {
    if (fd_ >= 0) ::close(fd_);
  }
  std::uint64_t size() const noexcept { return size_; }
  const std::string& path() const noexcept { return path_; }

  //! Reads exactly `out.size()` bytes at `offset`.
  void read(std::uint64_t offset, std::span<std::byte> out) const {
    if (in_memory_) {
      if (offset > size_ || out.size() > size_ - offset)
        throw checkpoint_error(checkpoint_error::kind::torn, path_ + ": ends at byte " + std::to_string(size_) + " (truncated)");
      if (!out.empty()) std::memcpy(out.data(), memory_.data() + offset, out.size());
      return;
    }
    while (!out.empty()) {
      const ::ssize_t n = ::pread(fd_, out.data(), std::min<std::size_t>(out.size(), std::size_t{1} << 30), static_cast<::off_t>(offset));
      if (n < 0) {
        if (errno == EINTR) continue;
        fail("read");
      }
      if (n == 0)
        throw checkpoint_error(checkpoint_error::kind::torn, path_ + ": ends at byte " + std::to_string(offset) + " (truncated)");
      out = out.subspan(static_cast<std::size_t>(n));
      offset += static_cast<std::uint64_t>(n);
    }
  }

  //! The whole file as text (small files: the marker, `latest`).
  std::string read_all(std::uint64_t limit) const {
    if (size_ > limit) throw checkpoint_error(checkpoint_error::kind::corrupted, path_ + ": " + std::to_string(size_) + " bytes is implausibly large");
    std::string text(static_cast<std::size_t>(size_), '\0');
    read(0, std::as_writable_bytes(std::span<char>(text.data(), text.size())));
    return text;
  }

  //! The preamble and header of a rank file, parsed and checked.
  checkpoint_header header() const {
    std::array<std::byte, checkpoint_format::preamble_bytes> preamble{};
    if (size_ < preamble.size())
      throw checkpoint_error(checkpoint_error::kind::torn, path_ + ": " + std::to_string(size_) + " bytes, shorter than the preamble (truncated)");
    read(0, preamble);
    const std::uint64_t body = parse_preamble(preamble, path_);
    if (size_ - preamble.size() < body)
      throw checkpoint_error(checkpoint_error::kind::torn, path_ + ": header: the preamble announces " + std::to_string(body) +
                                                              " header bytes; the file ends before (truncated)");
    std::vector<std::byte> bytes(preamble.size() + static_cast<std::size_t>(body));
    read(0, bytes);
    return parse_header(bytes, path_);
  }

 private:
  [[noreturn]] void fail(const char* call) const {
    throw checkpoint_error(checkpoint_error::kind::io, path_ + ": " + call + ": " + std::strerror(errno));
  }
  int fd_ = -1;
  std::string path_;
  std::uint64_t size_ = 0;
  std::span<const std::byte> memory_{};
  bool in_memory_ = false;
};

}  // namespace detail

}  // namespace zero
