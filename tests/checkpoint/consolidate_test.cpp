// Consolidation: the installed zero-consolidate tool turns a checkpoint saved at any world size
// into safetensors; the file is read back here with an independent small parser and compared
// with the master weights (and the optimizer state) the optimizer held.
#include <sys/wait.h>

#include <cstdlib>
#include <map>

#include "fixture.hpp"

namespace {

// ---- a small, independent safetensors reader -------------------------------------------------

struct json {
  enum class type { object, array, string, number } kind = type::object;
  std::string text;
  double number = 0;
  std::vector<json> items;
  std::vector<std::pair<std::string, json>> members;  // in file order
  const json& operator[](const std::string& key) const {
    for (const auto& [k, v] : members)
      if (k == key) return v;
    throw std::runtime_error("no key " + key);
  }
};

struct json_parser {
  std::string_view s;
  std::size_t at = 0;
  void space() {
    while (at < s.size() && (s[at] == ' ' || s[at] == '\n' || s[at] == '\t' || s[at] == '\r')) ++at;
  }
  void expect(char c) {
    space();
    if (at >= s.size() || s[at] != c) throw std::runtime_error(std::string("expected ") + c + " at " + std::to_string(at));
    ++at;
  }
  std::string string() {
    expect('"');
    std::string out;
    while (at < s.size() && s[at] != '"') {
      if (s[at] == '\\') {
        ++at;
        if (s[at] == 'u') {
          out += static_cast<char>(std::stoi(std::string(s.substr(at + 1, 4)), nullptr, 16));
          at += 5;
          continue;
        }
      }
      out += s[at++];
    }
    expect('"');
    return out;
  }
  json value() {
    space();
    json v;
    if (s[at] == '{') {
      ++at;
      v.kind = json::type::object;
      space();
      if (s[at] == '}') return ++at, v;
      for (;;) {
        std::string key = string();
        expect(':');
        v.members.emplace_back(key, value());
        space();
        if (s[at] == ',') ++at;
        else return expect('}'), v;
      }
    }
    if (s[at] == '[') {
      ++at;
      v.kind = json::type::array;
      space();
      if (s[at] == ']') return ++at, v;
      for (;;) {
        v.items.push_back(value());
        space();
        if (s[at] == ',') ++at;
        else return expect(']'), v;
      }
    }
    if (s[at] == '"') {
      v.kind = json::type::string;
      v.text = string();
      return v;
    }
    v.kind = json::type::number;
    const std::size_t begin = at;
    while (at < s.size() && (std::isdigit(static_cast<unsigned char>(s[at])) || s[at] == '-')) ++at;
    v.number = std::stod(std::string(s.substr(begin, at - begin)));
    return v;
  }
};

struct safetensors {
  json header;
  std::vector<std::string> order;                   // tensor names, in header order
  std::map<std::string, std::vector<float>> tensors;
};

safetensors read_safetensors(const std::filesystem::path& path) {
  const auto bytes = ckpt::read_bytes(path);
  REQUIRE(bytes.size() >= 8);
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)])) << (8 * i);
  REQUIRE(8 + n <= bytes.size());
  safetensors out;
  json_parser parser{std::string_view(bytes.data() + 8, n)};
  out.header = parser.value();
  const std::size_t data = 8 + n;
  for (const auto& [name, info] : out.header.members) {
    if (name == "__metadata__") continue;
    out.order.push_back(name);
    CHECK(info["dtype"].text == "F32");
    const auto b = static_cast<std::size_t>(info["data_offsets"].items.at(0).number);
    const auto e = static_cast<std::size_t>(info["data_offsets"].items.at(1).number);
    REQUIRE(data + e <= bytes.size());
    CHECK((e - b) / 4 == static_cast<std::size_t>(info["shape"].items.at(0).number));
    std::vector<float> values((e - b) / 4);
    for (std::size_t i = 0; i < values.size(); ++i) {
      std::uint32_t u = 0;
      for (int k = 0; k < 4; ++k) u |= static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[data + b + 4 * i + static_cast<std::size_t>(k)])) << (8 * k);
      values[i] = std::bit_cast<float>(u);
    }
    out.tensors[name] = std::move(values);
  }
  return out;
}

// Runs the installed tool; returns its exit status and what it printed.
int run_tool(const std::string& arguments, std::string* output = nullptr) {
  ckpt::temp_dir logs;
  const auto log = logs.path / "out.txt";
  const int status = std::system((std::string("\"") + ZERO_CONSOLIDATE + "\" " + arguments + " > \"" + log.string() + "\" 2>&1").c_str());
  if (output) {
    const auto bytes = ckpt::read_bytes(log);
    output->assign(bytes.begin(), bytes.end());
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

template <class Opt>
void check_consolidation(int world, ckpt::gradients kind) {
  CAPTURE(world);
  ckpt::temp_dir dir;
  const auto saved = ckpt::run<Opt>({.world = world, .first = 0, .last = 3, .save_to = dir.path, .kind = kind});
  const auto out = dir.path / "model.safetensors";
  std::string printed;
  REQUIRE(run_tool("\"" + dir.path.string() + "\" \"" + out.string() + "\" --optimizer-state", &printed) == 0);
  MESSAGE(printed);
  const safetensors st = read_safetensors(out);
  CHECK(st.header["__metadata__"]["step"].text == "3");
  CHECK(st.header["__metadata__"]["rule"].text == "adamw");
  CHECK(st.header["__metadata__"]["saved_world_size"].text == std::to_string(world));
  // torch.optim's param_groups: one group here, every parameter in it, AdamW's defaults
  const std::string groups = st.header["__metadata__"]["param_groups"].text;
  CHECK(groups.rfind("[{\"params\":[\"layer0\",\"layer1\",", 0) == 0);
  CHECK(groups.find("\"layer11\"],\"lr\":0.001,\"beta1\":0.9,\"beta2\":0.999,\"eps\":1e-08,\"weight_decay\":0.01,"
                    "\"amsgrad\":0,\"maximize\":0}]") != std::string::npos);
  REQUIRE(st.order.size() == 3 * ckpt::model_sizes.size());
  for (std::size_t p = 0; p < ckpt::model_sizes.size(); ++p) {
    const std::string name = "layer" + std::to_string(p);
    CHECK(st.order[p] == name);
    // bitwise: the master weights (or the fp32 parameters) the optimizer held at the save
    CHECK(std::memcmp(st.tensors.at(name).data(), saved.final.values[p].data(), 4 * ckpt::model_sizes[p]) == 0);
    CHECK(std::memcmp(st.tensors.at("optimizer.exp_avg." + name).data(), saved.final.state[0][p].data(), 4 * ckpt::model_sizes[p]) == 0);
    CHECK(std::memcmp(st.tensors.at("optimizer.exp_avg_sq." + name).data(), saved.final.state[1][p].data(), 4 * ckpt::model_sizes[p]) == 0);
  }
  // without --optimizer-state: the parameters only; the library call gives the same values
  REQUIRE(run_tool("\"" + (dir.path / "step-3").string() + "\" \"" + out.string() + "\"") == 0);
  const safetensors params_only = read_safetensors(out);
  CHECK(params_only.order.size() == ckpt::model_sizes.size());
  const auto c = zero::consolidate_checkpoint(dir.path);
  CHECK(ckpt::same_bits(c.values, saved.final.values));
  for (std::size_t p = 0; p < ckpt::model_sizes.size(); ++p) CHECK(params_only.tensors.at(c.names[p]) == c.values[p]);
}

}  // namespace

TEST_SUITE("checkpoint") {
  TEST_CASE("zero-consolidate writes safetensors equal to the master weights and state (bf16 stage 2 at 3 ranks)") {
    check_consolidation<zero::optimizer<zero::stage2, zero::bf16_mixed, zero::adamw, zero::bucketed_partitioner>>(3, ckpt::gradients::noisy);
  }
  TEST_CASE("zero-consolidate writes safetensors equal to the parameters (fp32 stage 0 and stage 1 at 4 ranks)") {
    check_consolidation<zero::optimizer<zero::stage0, zero::fp32_precision>>(2, ckpt::gradients::exact);
    check_consolidation<zero::optimizer<zero::stage1, zero::fp32_precision>>(4, ckpt::gradients::exact);
  }
  TEST_CASE("zero-consolidate refuses bad arguments and torn checkpoints") {
    std::string printed;
    CHECK(run_tool("", &printed) == 2);
    CHECK(printed.find("usage: ") != std::string::npos);
    CHECK(run_tool("a b --everything", &printed) == 2);
    ckpt::temp_dir dir;
    CHECK(run_tool("\"" + dir.path.string() + "\" \"" + (dir.path / "x.safetensors").string() + "\"", &printed) == 1);
    CHECK(printed.find("no committed checkpoint") != std::string::npos);
    CHECK(!std::filesystem::exists(dir.path / "x.safetensors"));
  }
}
