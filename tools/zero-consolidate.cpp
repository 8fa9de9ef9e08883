// zero-consolidate: turns a zero checkpoint (saved at any world size) into the full fp32
// parameters in one safetensors file (an 8-byte little-endian header length, a JSON header,
// then raw little-endian data), optionally with the optimizer state.
//
//   zero-consolidate <checkpoint dir> <out.safetensors> [--optimizer-state]
//
// <checkpoint dir> is a checkpoint directory (its newest committed step) or one step-<n>
// directory. Tensors: one F32 tensor per parameter, named as registered ("param.<i>" when
// unnamed); with --optimizer-state also "optimizer.<slot>.<parameter>" per state slot (PyTorch's
// slot names: exp_avg, exp_avg_sq, max_exp_avg_sq, momentum_buffer, sum). "__metadata__" holds
// the step, the rule and where the checkpoint came from; with --optimizer-state also
// "param_groups": torch.optim's param_groups as JSON text (each group's parameter names under
// "params" and its hyperparameters; bools as 0 or 1), for checkpoints of format version 3. Exit status: 0 done, 1 the checkpoint
// or the output failed (the message says which file and why), 2 bad arguments. The command line
// itself is tools/consolidate_cli.hpp.

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "zero/checkpoint.hpp"

#include "consolidate_cli.hpp"

namespace {

using zero_consolidate::json_string;

struct tensor {
  std::string name;
  const std::vector<float>* data;
};

//! torch.optim's param_groups of the checkpoint, as JSON: [{"params": [names], "lr": ..., ...}].
//! (Built with append: GCC 12 reports false -Wrestrict positives in chains of operator+.)
std::string param_groups_json(const zero::consolidated_checkpoint& c) {
  std::string text = "[";
  for (std::size_t g = 0; g < c.header.groups.size(); ++g) {
    text.append(g == 0 ? "{" : ",{").append("\"params\":[");
    bool first = true;
    for (std::size_t p = 0; p < c.names.size(); ++p) {
      if (c.header.param_groups[p] != g) continue;
      if (!first) text.append(",");
      text.append(json_string(c.names[p]));
      first = false;
    }
    text.append("]");
    for (const auto& f : c.header.groups[g]) {
      char number[32];
      const auto end = std::to_chars(number, number + sizeof number, f.value).ptr;  // shortest, round trips
      text.append(",").append(json_string(f.name)).append(":").append(number, end);
    }
    text.append("}");
  }
  text.append("]");
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string_view> args(argv + std::min(argc, 1), argv + argc);
  const std::optional<zero_consolidate::arguments> parsed = zero_consolidate::parse_arguments(args);
  if (!parsed) {
    std::fputs(zero_consolidate::usage(argc > 0 ? argv[0] : "zero-consolidate").c_str(), stderr);
    return 2;
  }
  const std::filesystem::path &in = parsed->in, &out = parsed->out;
  const bool with_state = parsed->with_state;
  try {
    const zero::consolidated_checkpoint c = zero::consolidate_checkpoint(in, with_state);
    std::vector<tensor> tensors;
    for (std::size_t p = 0; p < c.names.size(); ++p) tensors.push_back({c.names[p], &c.values[p]});
    for (std::size_t k = 0; k < c.state.size(); ++k)
      for (std::size_t p = 0; p < c.names.size(); ++p) tensors.push_back({"optimizer." + c.state_names[k] + "." + c.names[p], &c.state[k][p]});
    std::set<std::string> seen;
    for (const auto& t : tensors) {
      if (t.name == "__metadata__" || !seen.insert(t.name).second) {
        std::fprintf(stderr, "zero-consolidate: %s: tensor name '%s' occurs twice; safetensors needs unique names\n", in.c_str(), t.name.c_str());
        return 1;
      }
    }
    std::string header = "{\"__metadata__\":{\"format\":\"zero-consolidated\",\"step\":" + json_string(std::to_string(c.header.step)) +
                         ",\"rule\":" + json_string(c.header.rule) + ",\"value_type\":" + json_string(c.header.value_type) +
                         ",\"saved_world_size\":" + json_string(std::to_string(c.header.world_size)) +
                         ",\"saved_stage\":" + json_string(std::to_string(c.header.stage)) +
                         ",\"checkpoint\":" + json_string(c.path.string());
    if (with_state && !c.header.groups.empty()) header += ",\"param_groups\":" + json_string(param_groups_json(c));
    header += "}";
    std::uint64_t offset = 0;
    for (const auto& t : tensors) {
      const std::uint64_t bytes = t.data->size() * sizeof(float);
      header += "," + json_string(t.name) + ":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(t.data->size()) +
                "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + bytes) + "]}";
      offset += bytes;
    }
    header += "}";
    while (header.size() % 8 != 0) header += ' ';  // the data starts 8-byte aligned

    zero::posix_file_writer writer;
    const auto dir = out.has_parent_path() ? out.parent_path() : std::filesystem::path(".");
    zero::detail::write_durably(writer, dir, out.filename().string(), zero::detail::random_save_id(), [&](zero::file_writer& w) {
      std::array<std::byte, 8> length{};
      for (int i = 0; i < 8; ++i) length[static_cast<std::size_t>(i)] = static_cast<std::byte>(header.size() >> (8 * i));
      w.write(length);
      w.write(std::as_bytes(std::span<const char>(header.data(), header.size())));
      for (const auto& t : tensors)
        zero::detail::for_each_little_endian_chunk(t.data->data(), t.data->size(), [&](std::span<const std::byte> b) { w.write(b); });
    });
    std::printf("zero-consolidate: %s (step %llu, saved by %u ranks) -> %s: %zu tensors, %llu bytes of data\n", c.path.c_str(),
                static_cast<unsigned long long>(c.header.step), c.header.world_size, out.c_str(), tensors.size(),
                static_cast<unsigned long long>(offset));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zero-consolidate: %s\n", e.what());
    return 1;
  }
}
