#pragma once
//! @file checkpoint.hpp
//! Checkpoints of a `zero::optimizer` that survive crashes and world-size changes
//! (docs/checkpoint.md has the format byte by byte and how resharding works).
//!
//! * `save_checkpoint(opt, dir)`: every rank writes its shard (values, each state slot, the
//!   step, each parameter's own update count (`optimizer::step_of`), the loss scaler's state,
//!   the options and the whole partition plan) to
//!   `dir/step-<n>/rank-<r>-of-<N>.zck` through a temporary name, fsync and rename; only when
//!   every rank succeeded does rank 0 write `dir/step-<n>/COMMITTED` the same way, then the
//!   advisory `dir/latest`. A failure on any rank makes every rank throw the same error naming
//!   it, and nothing is committed. Earlier checkpoints are never touched.
//! * `load_checkpoint(opt, path)`: `path` is a checkpoint directory (the newest committed step
//!   is loaded) or one `step-<n>` directory. Checks the marker, every file's size, checksums,
//!   version and layout, and refuses a torn, corrupted or mismatched checkpoint with an error
//!   that names the file (and section) and says what is wrong, on every rank, leaving the
//!   optimizer unchanged. Any saved world size, partitioner, stage, bucket size and alignment
//!   loads into any other: each rank copies the pieces it owns under its own plan from the saved
//!   shards that hold them.
//! * `consolidate_checkpoint(path)`: the full fp32 parameters (and optionally the optimizer
//!   state) of a checkpoint, without an optimizer; the `zero-consolidate` tool writes them as
//!   safetensors.
//!
//! Both `save_checkpoint` and `load_checkpoint` are collective over the optimizer's
//! communicator, are called between steps, and assume every rank sees the same file system.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <istream>
#include <ostream>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "zero/checkpoint_format.hpp"
#include "zero/error.hpp"
#include "zero/loss_scaler.hpp"
#include "zero/optimizer.hpp"
#include "zero/partitioner.hpp"
#include "zero/precision.hpp"
#include "zero/types.hpp"

namespace zero {

//! How `save_checkpoint` writes.
struct checkpoint_options {
  //! Where every byte goes; null: a `posix_file_writer` (open, write, fsync, rename, fsync of
  //! the directory). One writer per rank.
  file_writer* writer = nullptr;
  //! Whether rank 0 rewrites `<dir>/latest` after the commit.
  bool update_latest = true;
};

//! How `load_checkpoint` loads.
struct load_options {
  //! Whether every parameter group's hyperparameters become the saved ones (as
  //! `torch.optim.Optimizer.load_state_dict` restores its param_groups); false keeps the
  //! optimizer's own. Files of format version 2 and older saved none: the optimizer keeps its own.
  bool restore_hyperparameters = true;
};

//! What was saved or loaded.
struct checkpoint_info {
  std::filesystem::path path;           //!< the `step-<n>` directory
  std::uint64_t step = 0;               //!< the optimizer's step count at the save
  std::uint32_t saved_world_size = 0;   //!< ranks that saved it
  std::uint32_t saved_stage = 0;
};

namespace detail {

template <class Opt>
struct checkpoint_traits;
template <stage S, precision_bundle P, update_rule R, partitioner Part, communicator C, activation_checkpointer K>
struct checkpoint_traits<optimizer<S, P, R, Part, C, K>> {
  static constexpr std::string_view partitioner_name = std::is_same_v<Part, contiguous_partitioner> ? "contiguous"
                                                       : std::is_same_v<Part, bucketed_partitioner>  ? "bucketed"
                                                                                                     : "user";
};

//! Converts `n` elements of `size` bytes between host and little-endian order, in place.
inline void host_little_endian(std::byte* bytes, std::size_t n, std::size_t size) noexcept {
  if constexpr (std::endian::native == std::endian::big) {
    for (std::size_t i = 0; i < n; ++i) std::reverse(bytes + i * size, bytes + (i + 1) * size);
  } else {
    (void)bytes, (void)n, (void)size;
  }
}

//! Calls f(bytes) with the little-endian bytes of data[0, n), in pieces.
template <class T, class F>
void for_each_little_endian_chunk(const T* data, std::size_t n, F&& f) {
  if constexpr (std::endian::native == std::endian::little) {
    f(std::as_bytes(std::span<const T>(data, n)));
  } else {
    constexpr std::size_t chunk = (std::size_t{1} << 20) / sizeof(T);
    std::vector<T> buffer(std::min(n, chunk));
    for (std::size_t at = 0; at < n; at += chunk) {
      const std::size_t m = std::min(chunk, n - at);
      std::copy(data + at, data + at + m, buffer.begin());
      host_little_endian(reinterpret_cast<std::byte*>(buffer.data()), m, sizeof(T));
      f(std::as_bytes(std::span<const T>(buffer.data(), m)));
    }
  }
}

inline std::string hex64(std::uint64_t v) {
  std::string s(16, '0');
  for (int i = 0; i < 16; ++i) s[static_cast<std::size_t>(i)] = "0123456789abcdef"[(v >> (60 - 4 * i)) & 0xf];
  return s;
}

inline std::uint64_t random_save_id() {
  std::random_device device;
  std::uint64_t id = (static_cast<std::uint64_t>(device()) << 32) ^ device();
  id ^= static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) * 0x9e3779b97f4a7c15ull;
  return id == 0 ? 1 : id;
}

//! Writes `dir/name` durably: a temporary name, fsync, rename, fsync of the directory. On
//! failure the temporary file is removed (best effort) and the error rethrown.
template <class F>
void write_durably(file_writer& w, const std::filesystem::path& dir, const std::string& name, std::uint64_t nonce, F&& body) {
  const std::filesystem::path temporary = dir / (name + ".tmp-" + hex64(nonce));
  try {
    w.open(temporary);
    body(w);
    w.sync();
    w.close();
    w.rename(temporary, dir / name);
    w.sync_directory(dir);
  } catch (...) {
    w.remove(temporary);
    throw;
  }
}

//! One rank's outcome of a local phase, exchanged so that every rank can throw the same error.
struct rank_outcome {
  std::uint64_t code = 0;   // 0: success; else 1 + checkpoint_error::kind
  std::uint64_t value = 0;  // what the rank found (a file size, a step)
  std::string message;
};

template <class F>
rank_outcome run_local(F&& f) {
  rank_outcome out;
  try {
    out.value = f();
  } catch (const checkpoint_error& e) {
    out.code = 1 + static_cast<std::uint64_t>(e.reason());
    out.message = e.what();
  } catch (const std::exception& e) {
    out.code = 1 + static_cast<std::uint64_t>(checkpoint_error::kind::io);
    out.message = e.what();
  }
  return out;
}

//! Every rank's outcome, on every rank (two word exchanges at most; the same calls on all
//! ranks), through the optimizer's communicator.
template <class Opt>
std::vector<rank_outcome> exchange_outcomes(Opt& opt, const rank_outcome& mine) {
  const std::size_t n = static_cast<std::size_t>(opt.world_size());
  const std::string text = mine.message.substr(0, 2000);
  const std::uint64_t head[3] = {mine.code, mine.value, text.size()};
  std::vector<std::uint64_t> heads(3 * n);
  opt.all_gather_words(head, heads.data(), 3);
  std::vector<rank_outcome> all(n);
  std::uint64_t longest = 0;
  for (std::size_t r = 0; r < n; ++r) {
    all[r].code = heads[3 * r];
    all[r].value = heads[3 * r + 1];
    longest = std::max(longest, heads[3 * r + 2]);
  }
  if (longest > 0) {
    const std::size_t words = static_cast<std::size_t>((longest + 7) / 8);
    std::vector<std::uint64_t> my_words(words, 0), words_of_all(words * n);
    std::memcpy(my_words.data(), text.data(), text.size());
    opt.all_gather_words(my_words.data(), words_of_all.data(), words);
    for (std::size_t r = 0; r < n; ++r)
      all[r].message.assign(reinterpret_cast<const char*>(words_of_all.data() + r * words), static_cast<std::size_t>(heads[3 * r + 2]));
  }
  return all;
}

//! Throws, on every rank alike, if any rank failed: the failing ranks and their messages.
//! The error's kind is the failing ranks' common kind when `keep_kind(kind)` holds for it, and
//! `failed_rank` otherwise.
template <class KeepKind>
void throw_if_any_failed(const std::vector<rank_outcome>& all, const std::string& what, const std::string& consequence,
                         KeepKind&& keep_kind) {
  std::string ranks, details;
  std::uint64_t first_code = 0;
  bool same_kind = true, same_message = true;
  int failed = 0;
  for (std::size_t r = 0; r < all.size(); ++r) {
    if (all[r].code == 0) continue;
    if (first_code == 0) first_code = all[r].code;
    same_kind = same_kind && all[r].code == first_code;
    ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
    ++failed;
  }
  if (failed == 0) return;
  auto message_of = [](const std::string& m) { return m.rfind("zero: ", 0) == 0 ? m.substr(6) : m; };
  std::string first_message;
  for (const auto& o : all)
    if (o.code != 0) {
      if (first_message.empty()) first_message = o.message;
      same_message = same_message && o.message == first_message;
    }
  if (same_message) {
    details = message_of(first_message);
  } else {
    int shown = 0;
    for (std::size_t r = 0; r < all.size() && shown < 4; ++r)
      if (all[r].code != 0) {
        details += (shown++ == 0 ? "" : "; ") + ("rank " + std::to_string(r) + ": " + message_of(all[r].message));
      }
    if (failed > shown) details += "; ...";
  }
  const auto common = static_cast<checkpoint_error::kind>(first_code - 1);
  const auto kind = same_kind && keep_kind(common) ? common : checkpoint_error::kind::failed_rank;
  throw checkpoint_error(kind, "zero: " + what + " failed on rank(s) " + ranks + ": " + details + consequence);
}

//! The elements of shard `rank` of `plan`, gathered from flat-indexed `flat(p, param_offset)`.
template <class T, class FlatOf>
std::vector<T> gather_shard(const partition_plan& plan, int rank, FlatOf&& flat) {
  std::vector<T> shard(plan.shard_size, T(0.0f));
  for (const auto& piece : plan.pieces())
    if (piece.rank == rank)
      for (std::size_t i = 0; i < piece.count; ++i) shard[piece.shard_offset + i] = flat(piece, i);
  return shard;
}

//! `s` (engine or framework memory of `opt`) readable on the host: itself when the engine's
//! buffers are host memory, else a copy in `copy`.
template <class Opt, class T>
std::span<const T> host_view(Opt& opt, std::span<const T> s, std::vector<T>& copy) {
  if constexpr (Opt::buffers_on_host) {
    return s;
  } else {
    copy.resize(s.size());
    opt.copy_to_host(copy.data(), s.data(), s.size());
    return copy;
  }
}

//! Writes this rank's file and returns its size in bytes.
template <class Opt>
std::uint64_t write_rank_file(Opt& opt, file_writer& w, const std::filesystem::path& dir, const std::string& name,
                              std::uint64_t save_id) {
  using P = typename Opt::precision_type;
  using value_type = typename Opt::value_type;
  using param_type = typename Opt::param_type;
  constexpr bool sharded = Opt::stage_value != stage::stage0;
  const partition_plan& plan = opt.plan();
  const int rank = opt.rank();

  // the shard of the saved plan this rank stores: its own (stages 1, 2) or cut from the full
  // copy every rank holds (stage 0), so that every file holds one shard whatever the stage
  std::vector<value_type> value_copy;
  std::vector<std::vector<float>> state_copy(opt.state_count());
  std::span<const value_type> values;
  std::vector<std::span<const float>> states;
  if constexpr (sharded) {
    values = host_view(opt, opt.values(), value_copy);
    for (std::size_t k = 0; k < opt.state_count(); ++k) states.push_back(host_view(opt, opt.state(k), state_copy[k]));
  } else {
    std::vector<value_type> flat_copy;
    const auto flat_values = host_view(opt, opt.values(), flat_copy);
    // without master weights the values are the framework's parameters
    std::vector<std::vector<param_type>> parameter_copies(flat_values.empty() ? plan.param_size.size() : 0);
    std::vector<std::span<const param_type>> parameters;
    for (std::size_t p = 0; p < parameter_copies.size(); ++p) {
      const auto registered = opt.parameter_values(p);
      parameters.push_back(host_view(opt, std::span<const param_type>(registered.data, registered.size), parameter_copies[p]));
    }
    value_copy = gather_shard<value_type>(plan, rank, [&](const owned_piece& piece, std::size_t i) -> value_type {
      if (!flat_values.empty()) return flat_values[piece.flat_offset + i];
      if constexpr (std::is_same_v<value_type, param_type>) return parameters[piece.param][piece.param_offset + i];
      else return value_type(0.0f);  // unreachable: without master weights the values are the parameters
    });
    values = value_copy;
    for (std::size_t k = 0; k < opt.state_count(); ++k) {
      std::vector<float> flat_state_copy;
      const auto flat_state = host_view(opt, opt.state(k), flat_state_copy);
      state_copy[k] = gather_shard<float>(plan, rank, [&](const owned_piece& piece, std::size_t i) {
        return flat_state[piece.flat_offset + i];
      });
      states.push_back(state_copy[k]);
    }
  }
  if (values.size() != plan.shard_size) throw usage_error("zero: save_checkpoint: values hold " + std::to_string(values.size()) + " elements, not the shard's " + std::to_string(plan.shard_size));

  checkpoint_header h;
  h.save_id = save_id;
  h.rank = static_cast<std::uint32_t>(rank);
  h.world_size = static_cast<std::uint32_t>(opt.world_size());
  h.stage = static_cast<std::uint32_t>(Opt::stage_value);
  h.step = opt.step_count();
  h.param_type = type_name<typename P::param_type>();
  h.grad_type = type_name<typename P::grad_type>();
  h.master_type = type_name<typename P::master_type>();
  h.state_type = type_name<typename P::state_type>();
  h.accum_type = type_name<typename P::accum_type>();
  h.comm_type = type_name<typename P::comm_type>();
  h.value_type = type_name<value_type>();
  h.rule = Opt::rule_type::name;
  h.state_count = static_cast<std::uint32_t>(opt.state_count());
  h.partitioner = checkpoint_traits<Opt>::partitioner_name;
  const auto& o = opt.options();
  h.alignment = o.layout.alignment;
  h.bucket_elements = o.layout.bucket_elements;
  h.gradient_slots = o.layout.gradient_slots ? 1 : 0;
  h.defer_reduction = o.layout.defer_reduction ? 1 : 0;
  h.max_grad_norm = o.max_grad_norm;
  const auto& ls = opt.scaler().options();
  h.loss_scale_kind = static_cast<std::uint8_t>(ls.kind);
  h.fixed_scale = ls.fixed_scale;
  h.initial_scale_power = ls.initial_scale_power;
  h.window = ls.window;
  h.hysteresis = ls.hysteresis;
  h.min_scale = ls.min_scale;
  h.on_nonfinite = static_cast<std::uint8_t>(o.on_nonfinite);
  h.value_rounding = static_cast<std::uint8_t>(o.value_rounding);
  h.seed = o.seed;
  h.unreported = static_cast<std::uint8_t>(o.unreported);
  h.scaler = opt.scaler().current();
  for (std::size_t g = 0; g < opt.group_count(); ++g) {
    auto& saved = h.groups.emplace_back();
    for (const auto& f : fields_of<typename Opt::rule_type>(opt.hyperparameters(g))) saved.push_back({std::string(f.name), f.value});
  }
  h.plan = plan;
  for (std::size_t p = 0; p < plan.param_size.size(); ++p) {
    h.param_names.push_back(opt.parameter_name(p));
    h.param_groups.push_back(opt.group_of(p));
    h.param_steps.push_back(opt.step_of(p));
  }
  h.layout_hash = layout_hash(plan.param_size, h.param_names);

  // the section table needs the checksums first; the header's size does not depend on them
  auto section_of = [&](std::string section_name, std::string_view type, std::size_t count, std::size_t size, auto data) {
    checkpoint_section s;
    s.name = std::move(section_name);
    s.element_type = type;
    s.element_count = count;
    s.bytes = count * size;
    for_each_little_endian_chunk(data, count, [&](std::span<const std::byte> b) { s.crc32c = crc32c(b, s.crc32c); });
    return s;
  };
  h.sections.push_back(section_of("values", h.value_type, values.size(), sizeof(value_type), values.data()));
  for (std::size_t k = 0; k < states.size(); ++k)
    h.sections.push_back(section_of("state." + std::to_string(k), "fp32", states[k].size(), sizeof(float), states[k].data()));
  const std::uint64_t body_bytes = encode_header_body(h).size();
  std::uint64_t at = first_section_offset(body_bytes);
  for (auto& s : h.sections) {
    s.offset = at;
    at = (at + s.bytes + checkpoint_format::section_alignment - 1) / checkpoint_format::section_alignment * checkpoint_format::section_alignment;
  }
  const std::vector<std::byte> header = encode_header(h);
  const std::uint64_t file_size = expected_file_size(h);

  write_durably(w, dir, name, save_id ^ (static_cast<std::uint64_t>(rank) * 0x9e3779b97f4a7c15ull), [&](file_writer& out) {
    std::uint64_t written = 0;
    const std::array<std::byte, checkpoint_format::section_alignment> zeros{};
    auto pad_to = [&](std::uint64_t offset) {
      out.write(std::span<const std::byte>(zeros.data(), static_cast<std::size_t>(offset - written)));
      written = offset;
    };
    out.write(header);
    written = header.size();
    auto emit = [&](const checkpoint_section& s, const auto* data) {
      pad_to(s.offset);
      for_each_little_endian_chunk(data, static_cast<std::size_t>(s.element_count), [&](std::span<const std::byte> b) { out.write(b); });
      written += s.bytes;
    };
    emit(h.sections[0], values.data());
    for (std::size_t k = 0; k < states.size(); ++k) emit(h.sections[k + 1], states[k].data());
  });
  return file_size;
}

// ---- reading a checkpoint --------------------------------------------------------------------

//! A committed checkpoint, its files checked against the marker and each other.
struct checkpoint_set {
  std::filesystem::path directory;
  commit_marker marker;
  std::vector<std::filesystem::path> files;        //!< the rank files of a directory, or
  std::vector<std::span<const std::byte>> bytes;   //!< rank files in memory (empty: that rank's not given)
  std::vector<checkpoint_header> headers;          //!< per saved rank (where not given: a given one's)
  std::uint32_t first = 0;                         //!< the lowest saved rank whose file is at hand

  bool available(std::uint32_t f) const noexcept { return bytes.empty() || !bytes[f].empty(); }
  std::string name(std::uint32_t f) const {
    return bytes.empty() ? files[f].string() : "the in-memory state of rank " + std::to_string(f);
  }
  read_file open(std::uint32_t f) const { return bytes.empty() ? read_file(files[f]) : read_file(bytes[f], name(f)); }
};

//! Whether two rank files of one save describe the same model, plan, types, rule and groups.
inline bool same_save_layout(const checkpoint_header& h, const checkpoint_header& h0) {
  return h.plan.param_size == h0.plan.param_size && h.plan.param_offset == h0.plan.param_offset &&
         h.plan.padded_size == h0.plan.padded_size && h.plan.units == h0.plan.units && h.param_names == h0.param_names &&
         h.value_type == h0.value_type && h.state_type == h0.state_type && h.state_count == h0.state_count &&
         h.rule == h0.rule && h.stage == h0.stage && h.groups == h0.groups && h.param_groups == h0.param_groups &&
         h.param_steps == h0.param_steps;
}

//! Whether `name` is `step-<n>` with n in decimal (as `step_directory_name` writes it) and
//! representable in 64 bits; then `step` = n. A number past 2^64 - 1 names no step.
inline bool parse_step_name(const std::string& name, std::uint64_t& step) {
  if (name.size() <= 5 || name.compare(0, 5, "step-") != 0 || name.size() > 25) return false;
  std::uint64_t n = 0;
  for (std::size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return false;
    const auto digit = static_cast<std::uint64_t>(name[i] - '0');
    if (n > (std::numeric_limits<std::uint64_t>::max() - digit) / 10) return false;
    n = n * 10 + digit;
  }
  step = n;
  return true;
}

//! The `step-<n>` directory `path` names: itself if it is one, else its newest committed step.
inline std::filesystem::path resolve_checkpoint(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  using k = checkpoint_error::kind;
  std::error_code ec;
  if (fs::is_regular_file(path / checkpoint_format::marker_name, ec)) return path;
  if (!fs::is_directory(path, ec)) throw checkpoint_error(k::not_found, "zero: checkpoint " + path.string() + ": no such directory");
  std::uint64_t step = 0;
  bool has_rank_files = false;
  for (const auto& entry : fs::directory_iterator(path, ec))
    if (entry.path().extension() == ".zck") has_rank_files = true;
  if (parse_step_name(path.filename().string(), step) || has_rank_files)
    throw checkpoint_error(k::torn, "zero: checkpoint " + path.string() + ": no commit marker " +
                                        std::string(checkpoint_format::marker_name) +
                                        ": the save of this step did not finish on every rank (torn); load an earlier step");
  bool found = false;
  std::uint64_t newest = 0;
  std::size_t uncommitted = 0;
  std::error_code list_error;  // only the listing's own failure counts; a missing marker is an answer
  for (const auto& entry : fs::directory_iterator(path, list_error)) {
    std::uint64_t s = 0;
    if (!entry.is_directory(ec) || !parse_step_name(entry.path().filename().string(), s)) continue;
    if (!fs::is_regular_file(entry.path() / checkpoint_format::marker_name, ec)) {
      ++uncommitted;
      continue;
    }
    if (!found || s > newest) newest = s, found = true;
  }
  if (list_error) throw checkpoint_error(k::io, "zero: checkpoint " + path.string() + ": cannot list: " + list_error.message());
  if (!found)
    throw checkpoint_error(k::not_found, "zero: checkpoint " + path.string() + ": no committed checkpoint" +
                                             (uncommitted ? " (" + std::to_string(uncommitted) + " step directories without a commit marker: saves that did not finish)" : std::string()));
  return path / checkpoint_format::step_directory_name(newest);
}

//! Opens and checks a committed checkpoint: the marker, and every rank file's size and header,
//! against the marker and against rank 0's file.
inline checkpoint_set open_checkpoint(const std::filesystem::path& path) {
  using k = checkpoint_error::kind;
  checkpoint_set set;
  set.directory = resolve_checkpoint(path);
  const std::filesystem::path marker_path = set.directory / checkpoint_format::marker_name;
  {
    detail::read_file marker(marker_path);
    set.marker = parse_commit_marker(marker.read_all(std::uint64_t{1} << 30), marker_path.string());
  }
  const auto& m = set.marker;
  for (std::uint32_t r = 0; r < m.world_size; ++r) {
    const std::filesystem::path file = set.directory / m.files[r].first;
    const std::string where = file.string();
    detail::read_file f(file);
    if (f.size() != m.files[r].second)
      throw checkpoint_error(k::torn, where + ": " + std::to_string(f.size()) + " bytes; the commit marker records " +
                                          std::to_string(m.files[r].second) + " (truncated or replaced)");
    checkpoint_header h = f.header();
    if (h.save_id != m.save_id)
      throw checkpoint_error(k::torn, where + ": belongs to another save (save_id " + hex64(h.save_id) + ", the marker's is " + hex64(m.save_id) + ")");
    if (h.rank != r || h.world_size != m.world_size)
      throw checkpoint_error(k::corrupted, where + ": header says rank " + std::to_string(h.rank) + " of " + std::to_string(h.world_size));
    if (h.step != m.step)
      throw checkpoint_error(k::corrupted, where + ": header says step " + std::to_string(h.step) + "; the marker says " + std::to_string(m.step));
    if (expected_file_size(h) != f.size())
      throw checkpoint_error(k::torn, where + ": " + std::to_string(f.size()) + " bytes; its sections end at byte " +
                                          std::to_string(expected_file_size(h)));
    if (r > 0 && !same_save_layout(h, set.headers[0]))
      throw checkpoint_error(k::corrupted, where + ": layout, plan, types, rule or parameter groups differ from " + set.files[0].string());
    set.files.push_back(file);
    set.headers.push_back(std::move(h));
  }
  return set;
}

//! The saved rank files `given` (each what `save_state` returned on some rank, any order; at least
//! one), checked as `open_checkpoint` checks a directory's: one save, one world size, each rank
//! at most once, every size and header.
inline checkpoint_set open_state_bytes(std::span<const std::span<const std::byte>> given) {
  using k = checkpoint_error::kind;
  checkpoint_set set;
  if (given.empty()) throw checkpoint_error(k::torn, "no in-memory state was given");
  for (std::size_t i = 0; i < given.size(); ++i) {
    const std::string where = "in-memory state #" + std::to_string(i);
    if (given[i].empty()) throw checkpoint_error(k::torn, where + ": no bytes");
    checkpoint_header h = read_file(given[i], where).header();
    if (expected_file_size(h) != given[i].size())
      throw checkpoint_error(k::torn, where + ": " + std::to_string(given[i].size()) + " bytes; its sections end at byte " +
                                          std::to_string(expected_file_size(h)));
    if (set.bytes.empty()) {
      set.bytes.resize(h.world_size);
      set.headers.assign(h.world_size, h);
      set.first = h.rank;
    } else {
      const checkpoint_header& h0 = set.headers[set.first];
      if (h.save_id != h0.save_id || h.world_size != h0.world_size || h.step != h0.step)
        throw checkpoint_error(k::torn, where + " (rank " + std::to_string(h.rank) + " of " + std::to_string(h.world_size) +
                                            ", step " + std::to_string(h.step) + ") belongs to another save than " +
                                            set.name(set.first));
      if (!same_save_layout(h, h0))
        throw checkpoint_error(k::corrupted, where + ": layout, plan, types, rule or parameter groups differ from " + set.name(set.first));
      if (!set.bytes[h.rank].empty()) throw checkpoint_error(k::corrupted, where + ": rank " + std::to_string(h.rank) + " is given twice");
      set.first = std::min(set.first, h.rank);
    }
    set.bytes[h.rank] = given[i];
    set.headers[h.rank] = std::move(h);
  }
  return set;
}

//! A `file_writer` that keeps what is written in memory (`save_state`); the file operations
//! around the writes do nothing.
class memory_writer : public file_writer {
 public:
  void open(const std::filesystem::path&) override { bytes.clear(); }
  void write(std::span<const std::byte> b) override { bytes.insert(bytes.end(), b.begin(), b.end()); }
  void sync() override {}
  void close() override {}
  void rename(const std::filesystem::path&, const std::filesystem::path&) override {}
  void sync_directory(const std::filesystem::path&) override {}
  void remove(const std::filesystem::path&) noexcept override {}
  std::vector<std::byte> bytes;
};

//! A run of elements to copy out of a saved section: `count` elements from element `source`
//! of the section, to the caller's position `target`.
struct copy_range {
  std::uint64_t source = 0;
  std::uint64_t count = 0;
  std::uint64_t target = 0;
};

//! Reads section `s` of `file` whole, in chunks, checking its CRC32C, and hands every part of
//! `ranges` (sorted by source, disjoint) to `sink(target, little-endian bytes, count)`.
//! @throws checkpoint_error naming the file and the section on a checksum mismatch
template <class Sink>
void stream_section(const detail::read_file& file, const checkpoint_section& s, std::span<const copy_range> ranges, Sink&& sink) {
  const std::size_t size = checkpoint_format::element_size(s.element_type);
  const std::size_t chunk_elements = (std::size_t{4} << 20) / size;
  std::vector<std::byte> buffer(static_cast<std::size_t>(std::min<std::uint64_t>(s.element_count, chunk_elements)) * size);
  std::uint32_t crc = 0;
  std::size_t next = 0;
  for (std::uint64_t first = 0; first < s.element_count; first += chunk_elements) {
    const std::uint64_t n = std::min<std::uint64_t>(chunk_elements, s.element_count - first);
    const std::span<std::byte> bytes(buffer.data(), static_cast<std::size_t>(n) * size);
    file.read(s.offset + first * size, bytes);
    crc = crc32c(bytes, crc);
    const std::uint64_t last = first + n;
    while (next < ranges.size() && ranges[next].source < last) {
      const auto& r = ranges[next];
      const std::uint64_t b = std::max(r.source, first), e = std::min(r.source + r.count, last);
      if (b < e) sink(r.target + (b - r.source), bytes.data() + (b - first) * size, static_cast<std::size_t>(e - b));
      if (r.source + r.count > last) break;
      ++next;
    }
  }
  if (crc != s.crc32c)
    throw checkpoint_error(checkpoint_error::kind::corrupted,
                           file.path() + ": section '" + s.name + "': checksum mismatch (CRC32C): the file is corrupted");
}

//! Converts `n` little-endian elements of a stored type to float.
inline void decode_to_float(std::string_view type, const std::byte* bytes, std::size_t n, float* out) {
  for (std::size_t i = 0; i < n; ++i) {
    const std::byte* b = bytes + i * checkpoint_format::element_size(type);
    if (type == "fp32") {
      out[i] = std::bit_cast<float>(read_u32_le(b));
    } else if (type == "fp64") {
      out[i] = static_cast<float>(std::bit_cast<double>(read_u64_le(b)));
    } else {
      const auto bits = static_cast<std::uint16_t>(static_cast<unsigned>(b[0]) | (static_cast<unsigned>(b[1]) << 8));
      out[i] = type == "bf16" ? float_from_bf16_bits(bits) : float_from_fp16_bits(bits);
    }
  }
}

//! Refuses a checkpoint whose model, precision or rule differ from the optimizer's.
template <class Opt>
void check_compatible(const Opt& opt, const checkpoint_header& h, const std::string& file) {
  using k = checkpoint_error::kind;
  using P = typename Opt::precision_type;
  const auto& plan = opt.plan();
  std::vector<std::string> names;
  for (std::size_t p = 0; p < plan.param_size.size(); ++p) names.push_back(opt.parameter_name(p));
  if (layout_hash(plan.param_size, names) != h.layout_hash) {
    std::string what;
    if (h.plan.param_size.size() != plan.param_size.size()) {
      what = "it has " + std::to_string(h.plan.param_size.size()) + " parameters, this optimizer " + std::to_string(plan.param_size.size());
    } else {
      for (std::size_t p = 0; p < plan.param_size.size() && what.empty(); ++p)
        if (h.plan.param_size[p] != plan.param_size[p] || h.param_names[p] != names[p])
          what = "parameter #" + std::to_string(p) + " is '" + h.param_names[p] + "' with " + std::to_string(h.plan.param_size[p]) +
                 " elements there and '" + names[p] + "' with " + std::to_string(plan.param_size[p]) + " elements here";
    }
    throw checkpoint_error(k::incompatible, file + ": a checkpoint of a different model: " + what);
  }
  auto same_type = [&](const std::string& saved, std::string_view here, const char* what) {
    if (saved != here)
      throw checkpoint_error(k::incompatible, file + ": saved with " + what + " type " + saved + "; this optimizer's is " + std::string(here));
  };
  same_type(h.param_type, type_name<typename P::param_type>(), "parameter");
  same_type(h.value_type, type_name<typename Opt::value_type>(), "value (master weight)");
  same_type(h.master_type, type_name<typename P::master_type>(), "master");
  same_type(h.state_type, type_name<typename P::state_type>(), "state");
  if (h.rule != Opt::rule_type::name || h.state_count != opt.state_count())
    throw checkpoint_error(k::incompatible, file + ": saved by update rule " + h.rule + " with " + std::to_string(h.state_count) +
                                                " state slot(s); this optimizer runs " + std::string(Opt::rule_type::name) + " with " +
                                                std::to_string(opt.state_count()));
  if (h.version >= 3) {
    if (h.groups.size() != opt.group_count())
      throw checkpoint_error(k::incompatible, file + ": saved with " + std::to_string(h.groups.size()) +
                                                  " parameter group(s); this optimizer has " + std::to_string(opt.group_count()));
    for (std::size_t p = 0; p < h.param_groups.size(); ++p)
      if (h.param_groups[p] != opt.group_of(p))
        throw checkpoint_error(k::incompatible, file + ": parameter " + engine::describe_parameter(names, p) + " is in parameter group " +
                                                    std::to_string(h.param_groups[p]) + " there and in group " +
                                                    std::to_string(opt.group_of(p)) + " here");
  }
}

//! The hyperparameters of every parameter group a version-3 header saved (the optimizer's own
//! where a header saved none). @throws checkpoint_error (incompatible) for a field the rule does
//! not have or values the rule refuses
template <class Opt>
std::vector<typename Opt::hyperparameters_type> saved_hyperparameters(const Opt& opt, const checkpoint_header& h,
                                                                      const std::string& file) {
  using Rule = typename Opt::rule_type;
  std::vector<typename Opt::hyperparameters_type> out;
  for (std::size_t g = 0; g < opt.group_count(); ++g) {
    auto hp = opt.hyperparameters(g);
    if (g < h.groups.size()) {
      for (const auto& f : h.groups[g])
        if (!set_field<Rule>(hp, f.name, f.value))
          throw checkpoint_error(checkpoint_error::kind::incompatible, file + ": parameter group " + std::to_string(g) +
                                                                           " has hyperparameter '" + f.name + "', which " +
                                                                           std::string(Rule::name) + " does not have");
      try {
        Rule::validate(hp);
      } catch (const usage_error& e) {
        throw checkpoint_error(checkpoint_error::kind::incompatible,
                               file + ": parameter group " + std::to_string(g) + " was saved with hyperparameters " +
                                   std::string(Rule::name) + " refuses: " + e.what());
      }
    }
    out.push_back(hp);
  }
  return out;
}

//! For each saved rank file, the runs that carry the pieces of `wanted` (param, param_offset,
//! count, target) out of that file's shard, sorted by source.
inline std::vector<std::vector<copy_range>> plan_copies(const partition_plan& saved, std::span<const owned_piece> wanted,
                                                        bool target_is_flat) {
  std::vector<std::vector<owned_piece>> by_param(saved.param_size.size());
  for (const auto& piece : saved.pieces()) by_param[piece.param].push_back(piece);
  for (auto& v : by_param)
    std::sort(v.begin(), v.end(), [](const owned_piece& a, const owned_piece& b) { return a.param_offset < b.param_offset; });
  std::vector<std::vector<copy_range>> out(static_cast<std::size_t>(saved.world_size));
  for (const auto& w : wanted) {
    const auto& old = by_param[w.param];
    const std::size_t lo = w.param_offset, hi = w.param_offset + w.count;
    auto it = std::upper_bound(old.begin(), old.end(), lo, [](std::size_t v, const owned_piece& p) { return v < p.param_offset; });
    if (it != old.begin()) --it;
    const std::size_t target = target_is_flat ? w.flat_offset : w.shard_offset;
    for (; it != old.end() && it->param_offset < hi; ++it) {
      const std::size_t b = std::max(lo, it->param_offset), e = std::min(hi, it->param_offset + it->count);
      if (b >= e) continue;
      out[static_cast<std::size_t>(it->rank)].push_back({it->shard_offset + (b - it->param_offset), e - b, target + (b - lo)});
    }
  }
  for (auto& v : out) std::sort(v.begin(), v.end(), [](const copy_range& a, const copy_range& b) { return a.source < b.source; });
  return out;
}

}  // namespace detail

//! Saves `opt`'s state as `directory/step-<step_count()>` (see the file comment). Collective:
//! every rank of the optimizer's communicator calls it, between steps, with the same directory.
//! Returns the committed step directory.
//! @throws checkpoint_error on every rank alike when any rank failed (kind `failed_rank`,
//!         naming the rank(s) and their errors; nothing is committed), when a committed
//!         checkpoint of this step already exists (`exists`), or when the commit failed.
template <class Opt>
checkpoint_info save_checkpoint(Opt& opt, const std::filesystem::path& directory, const checkpoint_options& options = {}) {
  namespace fs = std::filesystem;
  auto& comm = opt.communicator();
  const int rank = comm.rank(), world = comm.world_size();
  posix_file_writer default_writer;
  file_writer& writer = options.writer != nullptr ? *options.writer : default_writer;
  // rank 0's random id, on every rank
  const std::uint64_t my_id = rank == 0 ? detail::random_save_id() : 0;
  std::vector<std::uint64_t> ids(static_cast<std::size_t>(world));
  opt.all_gather_words(&my_id, ids.data(), 1);
  const std::uint64_t save_id = ids[0];
  const std::uint64_t step = opt.step_count();
  const fs::path step_dir = directory / checkpoint_format::step_directory_name(step);
  const std::string name = checkpoint_format::rank_file_name(static_cast<std::uint32_t>(rank), static_cast<std::uint32_t>(world));

  const auto written = detail::exchange_outcomes(opt, detail::run_local([&]() -> std::uint64_t {
    std::error_code ec;
    if (fs::exists(step_dir / checkpoint_format::marker_name, ec))
      throw checkpoint_error(checkpoint_error::kind::exists, "a committed checkpoint " + step_dir.string() +
                                                                 " already exists (step " + std::to_string(step) + "); it is left as it is");
    fs::create_directories(step_dir, ec);
    if (ec && !fs::is_directory(step_dir)) throw checkpoint_error(checkpoint_error::kind::io, "cannot create " + step_dir.string() + ": " + ec.message());
    return detail::write_rank_file(opt, writer, step_dir, name, save_id);
  }));
  detail::throw_if_any_failed(written, "saving checkpoint " + step_dir.string(),
                              "; nothing was committed (earlier checkpoints are untouched)",
                              [](checkpoint_error::kind k) { return k == checkpoint_error::kind::exists; });

  const auto committed = detail::exchange_outcomes(opt, detail::run_local([&]() -> std::uint64_t {
    if (rank != 0) return 0;
    commit_marker m;
    m.step = step;
    m.world_size = static_cast<std::uint32_t>(world);
    m.save_id = save_id;
    for (int r = 0; r < world; ++r)
      m.files.emplace_back(checkpoint_format::rank_file_name(static_cast<std::uint32_t>(r), static_cast<std::uint32_t>(world)),
                           written[static_cast<std::size_t>(r)].value);
    const std::string text = encode_commit_marker(m);
    writer.sync_directory(directory);  // the step directory's own entry is durable before the commit
    detail::write_durably(writer, step_dir, std::string(checkpoint_format::marker_name), save_id ^ 0xc0ffee, [&](file_writer& out) {
      out.write(std::as_bytes(std::span<const char>(text.data(), text.size())));
    });
    if (options.update_latest) {
      const std::string latest = step_dir.filename().string() + "\n";
      try {
        detail::write_durably(writer, directory, std::string(checkpoint_format::latest_name), save_id ^ 0x1a7e57, [&](file_writer& out) {
          out.write(std::as_bytes(std::span<const char>(latest.data(), latest.size())));
        });
      } catch (const std::exception& e) {
        throw checkpoint_error(checkpoint_error::kind::io, std::string(e.what()) + " (the checkpoint is committed; only the advisory '" +
                                                               std::string(checkpoint_format::latest_name) + "' was not updated)");
      }
    }
    return 0;
  }));
  detail::throw_if_any_failed(committed, "committing checkpoint " + step_dir.string(), "", [](checkpoint_error::kind) { return false; });
  return {step_dir, step, static_cast<std::uint32_t>(world), static_cast<std::uint32_t>(Opt::stage_value)};
}

namespace detail {

//! `load_checkpoint` and `load_state`: the saved rank files from `open_set()`; `what` begins
//! every error.
template <class Opt, class OpenSet>
checkpoint_info load_saved(Opt& opt, OpenSet&& open_set, const std::string& what, const load_options& load) {
  using value_type = typename Opt::value_type;
  constexpr bool sharded = Opt::stage_value != stage::stage0;
  auto& comm = opt.communicator();
  const int rank = comm.rank(), world = comm.world_size();
  const std::size_t state_count = opt.state_count();
  // stage 0 without master weights: the values are the framework's parameters (flat order)
  constexpr bool values_are_parameters = !Opt::precision_type::has_master && !sharded;
  const std::size_t updated = sharded ? opt.plan().shard_size : opt.plan().element_count;

  std::vector<value_type> values;
  std::vector<float> state;
  checkpoint_info info;
  loss_scaler::state saved_scaler{};
  bool saved_dynamic = false;
  // a layout order still to be learned becomes the saved one (the order the saving run learned)
  const bool adopt_order = opt.order_pending();
  std::vector<std::size_t> saved_order;
  std::vector<typename Opt::hyperparameters_type> hyperparameters;
  std::vector<std::uint64_t> param_steps;  // version 4: each parameter's own update count
  const auto outcome = detail::exchange_outcomes(opt, detail::run_local([&]() -> std::uint64_t {
    const detail::checkpoint_set set = open_set();
    const checkpoint_header& h0 = set.headers[set.first];
    detail::check_compatible(opt, h0, set.name(set.first));
    if (load.restore_hyperparameters) hyperparameters = detail::saved_hyperparameters(opt, h0, set.name(set.first));
    info = {set.directory, h0.step, h0.world_size, h0.stage};
    saved_scaler = h0.scaler;
    param_steps = h0.param_steps;
    saved_dynamic = h0.loss_scale_kind == static_cast<std::uint8_t>(loss_scale_options::mode::dynamic);

    // what this rank will update: under its plan, or under the plan of the saved order
    std::vector<owned_piece> wanted(opt.owned_pieces().begin(), opt.owned_pieces().end());
    if (adopt_order) {
      saved_order = h0.plan.order();
      const partition_plan target = opt.plan_for_order(saved_order);
      wanted.clear();
      if constexpr (sharded) {
        for (const auto& piece : target.pieces())
          if (piece.rank == rank) wanted.push_back(piece);
      } else {
        for (std::size_t p = 0; p < target.param_size.size(); ++p)
          wanted.push_back({p, 0, rank, 0, target.param_offset[p], target.param_offset[p], target.param_size[p]});
      }
    }
    values.assign(updated, value_type(0.0f));
    state.assign(state_count * updated, 0.0f);
    if (!adopt_order) {
      if constexpr (values_are_parameters) {
        for (const auto& piece : opt.owned_pieces()) {
          const auto p = opt.parameter_values(piece.param);
          opt.copy_to_host(values.data() + piece.flat_offset, p.data + piece.param_offset, piece.count);
        }
      } else {
        opt.copy_to_host(values.data(), opt.values().data(), updated);
      }
      for (std::size_t k = 0; k < state_count; ++k) opt.copy_to_host(state.data() + k * updated, opt.state(k).data(), updated);
    }

    const auto copies = detail::plan_copies(h0.plan, wanted, !sharded);
    for (std::uint32_t f = 0; f < h0.world_size; ++f) {
      // each file is read by the ranks that need it, and by rank f mod world in any case, so
      // that every section of every file is verified by some rank
      if (!set.available(f)) {
        if (copies[f].empty()) continue;
        throw checkpoint_error(checkpoint_error::kind::incompatible,
                               "rank " + std::to_string(rank) + " needs the state saved by rank " + std::to_string(f) + " of " +
                                   std::to_string(h0.world_size) +
                                   ", which was not given (another world size or plan, or stage 0, reads other ranks' shards: "
                                   "give load_state every saved rank's bytes)");
      }
      if (copies[f].empty() && static_cast<int>(f % static_cast<std::uint32_t>(world)) != rank) continue;
      const detail::read_file file = set.open(f);
      const auto& h = set.headers[f];
      detail::stream_section(file, h.sections[0], copies[f], [&](std::uint64_t target, const std::byte* bytes, std::size_t n) {
        std::memcpy(values.data() + target, bytes, n * sizeof(value_type));
        detail::host_little_endian(reinterpret_cast<std::byte*>(values.data() + target), n, sizeof(value_type));
      });
      for (std::size_t k = 0; k < state_count; ++k) {
        float* slot = state.data() + k * updated;
        detail::stream_section(file, h.sections[k + 1], copies[f], [&](std::uint64_t target, const std::byte* bytes, std::size_t n) {
          std::memcpy(slot + target, bytes, n * sizeof(float));
          detail::host_little_endian(reinterpret_cast<std::byte*>(slot + target), n, sizeof(float));
        });
      }
    }
    return h0.save_id;
  }));
  detail::throw_if_any_failed(outcome, what, "; the optimizer is unchanged", [](checkpoint_error::kind) { return true; });
  for (std::size_t r = 1; r < outcome.size(); ++r)
    if (outcome[r].value != outcome[0].value)
      throw checkpoint_error(checkpoint_error::kind::corrupted, "zero: " + what + ": rank " + std::to_string(r) + " read save " +
                                                                    hex64(outcome[r].value) + ", rank 0 save " + hex64(outcome[0].value) +
                                                                    " (a save committed meanwhile, or ranks given different saves)");

  // every rank succeeded: commit what was read
  if (adopt_order) opt.fix_order(saved_order);
  for (std::size_t g = 0; g < hyperparameters.size(); ++g) opt.set_hyperparameters(g, hyperparameters[g]);
  if constexpr (values_are_parameters) {
    for (const auto& piece : opt.owned_pieces())
      opt.copy_from_host(opt.parameter_values(piece.param).data + piece.param_offset, values.data() + piece.flat_offset, piece.count);
  } else {
    opt.copy_from_host(opt.mutable_values().data(), values.data(), updated);
  }
  for (std::size_t k = 0; k < state_count; ++k) opt.copy_from_host(opt.mutable_state(k).data(), state.data() + k * updated, updated);
  // the dynamic scaler's progress carries over; a fixed or absent scale is configuration
  opt.restore_progress(info.step, saved_dynamic && opt.scaler().dynamic() ? saved_scaler : opt.scaler().current());
  // each parameter's own count (older files: every count is the step, as restore_progress set)
  if (!param_steps.empty()) opt.restore_parameter_steps(param_steps);
  opt.synchronize_parameters();
  return info;
}

}  // namespace detail

//! Loads a checkpoint into `opt`: `path` is a checkpoint directory (its newest committed step)
//! or a `step-<n>` directory. Any saved world size, partitioner, stage (0, 1, 2), bucket size
//! and alignment load; the model (parameter names and sizes), the parameter, master and state
//! types and the update rule must match. Restores the values, the state slots, the step count,
//! each parameter's own update count (format 3 and older saved none: every count is the step;
//! an optimizer under `unreported_gradients::zero` drops them) and (when both are dynamic) the loss scaler's state, then makes every rank's parameters
//! agree (`synchronize_parameters`). Collective; call it between steps. On failure every rank
//! throws the same `checkpoint_error` (naming the file, the section and what is wrong) and the
//! optimizer is unchanged. Holds one extra copy of the rank's values and state while loading.
//! The saved layout order need not be the optimizer's (each rank takes what it owns, parameter
//! by parameter); an optimizer whose order is still to be learned (`gradient_order::learned`,
//! before its first micro-step has ended) takes the saved order, the one the saving run had.
template <class Opt>
checkpoint_info load_checkpoint(Opt& opt, const std::filesystem::path& path, const load_options& load = {}) {
  return detail::load_saved(opt, [&] { return detail::open_checkpoint(path); }, "loading checkpoint " + path.string(), load);
}

// ---- state in memory -------------------------------------------------------------------------

//! This rank's state (its shard of the values and of every state slot, the step, the loss
//! scaler, the options, the parameter groups and the whole plan) as the bytes of a rank file
//! (the format `save_checkpoint` writes, docs/checkpoint.md), for a framework that writes its
//! own checkpoints. Collective: every rank calls it between steps and gets its own bytes (one
//! save id on every rank). @throws checkpoint_error on every rank alike when any rank failed
template <class Opt>
std::vector<std::byte> save_state(Opt& opt) {
  const int rank = opt.rank(), world = opt.world_size();
  const std::uint64_t my_id = rank == 0 ? detail::random_save_id() : 0;
  std::vector<std::uint64_t> ids(static_cast<std::size_t>(world));
  opt.all_gather_words(&my_id, ids.data(), 1);
  detail::memory_writer writer;
  const auto written = detail::exchange_outcomes(opt, detail::run_local([&]() -> std::uint64_t {
    return detail::write_rank_file(opt, writer, {}, "state", ids[0]);
  }));
  detail::throw_if_any_failed(written, "saving the state in memory", "", [](checkpoint_error::kind) { return false; });
  return std::move(writer.bytes);
}

//! `save_state` written to `out`. Collective. @throws checkpoint_error (kind io) on every rank
//! alike when the stream failed on any rank
template <class Opt>
void save_state(Opt& opt, std::ostream& out) {
  const std::vector<std::byte> bytes = save_state(opt);
  const auto written = detail::exchange_outcomes(opt, detail::run_local([&]() -> std::uint64_t {
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) throw checkpoint_error(checkpoint_error::kind::io, "the output stream failed after " + std::to_string(bytes.size()) + " bytes");
    return bytes.size();
  }));
  detail::throw_if_any_failed(written, "saving the state to a stream", "", [](checkpoint_error::kind k) { return k == checkpoint_error::kind::io; });
}

//! Loads state saved by `save_state`: `saved` holds the bytes of one or more saved ranks (any
//! order). Each rank needs the saved shards that hold what it updates: under the saving run's
//! world size and plan (stages 1 and 2), its own rank's bytes are enough; at another world size,
//! partitioner, bucket size or stage (stage 0 holds everything), give every saved rank's bytes.
//! Every check, refusal and guarantee of `load_checkpoint` holds (checksums, sizes, model,
//! types, rule, groups; every rank throws alike and the optimizer is unchanged). Collective.
template <class Opt>
checkpoint_info load_state(Opt& opt, std::span<const std::span<const std::byte>> saved, const load_options& load = {}) {
  return detail::load_saved(opt, [&] { return detail::open_state_bytes(saved); }, "loading the in-memory state", load);
}

//! `load_state` of this rank's own bytes alone.
template <class Opt>
checkpoint_info load_state(Opt& opt, std::span<const std::byte> mine, const load_options& load = {}) {
  const std::span<const std::byte> one[] = {mine};
  return load_state(opt, std::span<const std::span<const std::byte>>(one), load);
}

//! `load_state` of this rank's own bytes, read from `in` to its end.
template <class Opt>
checkpoint_info load_state(Opt& opt, std::istream& in, const load_options& load = {}) {
  std::vector<std::byte> bytes;
  char chunk[1 << 16];
  while (in.read(chunk, sizeof chunk) || in.gcount() > 0) {
    const auto* b = reinterpret_cast<const std::byte*>(chunk);
    bytes.insert(bytes.end(), b, b + in.gcount());
  }
  return load_state(opt, std::span<const std::byte>(bytes), load);
}

//! A checkpoint's full parameters (and optimizer state), in fp32, assembled from every shard.
struct consolidated_checkpoint {
  std::filesystem::path path;  //!< the step directory read
  checkpoint_header header;    //!< rank 0's header (step, types, rule, options)
  std::vector<std::string> names;
  std::vector<std::vector<float>> values;  //!< per parameter: the master weights (or the parameters)
  std::vector<std::string> state_names;    //!< per state slot (PyTorch's names for the shipped rules)
  std::vector<std::vector<std::vector<float>>> state;  //!< [slot][parameter], when asked for
};

//! The name PyTorch gives state slot `k` of `rule` ("exp_avg", ...), or "state<k>".
inline std::string state_slot_name(std::string_view rule, std::size_t k) {
  if (rule == "adamw" || rule == "adam" || rule == "lamb") {
    constexpr std::string_view names[] = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
    if (k < 3) return std::string(names[k]);
  }
  if (rule == "sgd" && k == 0) return "momentum_buffer";
  if (rule == "lion" && k == 0) return "exp_avg";
  if (rule == "adagrad" && k == 0) return "sum";
  return "state" + std::to_string(k);
}

//! Reads every shard of the checkpoint at `path` (a checkpoint directory or a `step-<n>`
//! directory) and assembles the full parameters in fp32, with the optimizer state if asked.
//! Checks what `load_checkpoint` checks (the state sections only when they are read).
inline consolidated_checkpoint consolidate_checkpoint(const std::filesystem::path& path, bool optimizer_state = false) {
  detail::checkpoint_set set = detail::open_checkpoint(path);
  consolidated_checkpoint out;
  out.path = set.directory;
  out.header = set.headers[0];
  const auto& plan = out.header.plan;
  const std::size_t n = plan.param_size.size();
  out.names = out.header.param_names;
  for (std::size_t p = 0; p < n; ++p)
    if (out.names[p].empty()) out.names[p] = "param." + std::to_string(p);
  std::vector<float> flat_values(plan.element_count);
  const std::size_t slots = optimizer_state ? out.header.state_count : 0;
  std::vector<std::vector<float>> flat_state(slots, std::vector<float>(plan.element_count));
  // every piece of every rank, to its flat position
  std::vector<owned_piece> wanted;
  for (std::size_t p = 0; p < n; ++p) wanted.push_back({p, 0, 0, 0, plan.param_offset[p], plan.param_offset[p], plan.param_size[p]});
  const auto copies = detail::plan_copies(plan, wanted, true);
  for (std::uint32_t f = 0; f < out.header.world_size; ++f) {
    const detail::read_file file(set.files[f]);
    const auto& h = set.headers[f];
    detail::stream_section(file, h.sections[0], copies[f], [&](std::uint64_t target, const std::byte* bytes, std::size_t count) {
      detail::decode_to_float(h.value_type, bytes, count, flat_values.data() + target);
    });
    for (std::size_t k = 0; k < slots; ++k)
      detail::stream_section(file, h.sections[k + 1], copies[f], [&](std::uint64_t target, const std::byte* bytes, std::size_t count) {
        detail::decode_to_float(h.state_type, bytes, count, flat_state[k].data() + target);
      });
  }
  auto split = [&](const std::vector<float>& flat) {
    std::vector<std::vector<float>> per(n);
    for (std::size_t p = 0; p < n; ++p)
      per[p].assign(flat.begin() + static_cast<std::ptrdiff_t>(plan.param_offset[p]),
                    flat.begin() + static_cast<std::ptrdiff_t>(plan.param_offset[p] + plan.param_size[p]));
    return per;
  };
  out.values = split(flat_values);
  for (std::size_t k = 0; k < slots; ++k) {
    out.state_names.push_back(state_slot_name(out.header.rule, k));
    out.state.push_back(split(flat_state[k]));
  }
  return out;
}

}  // namespace zero
