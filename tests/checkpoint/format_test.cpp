// The format's building blocks: CRC32C, the header's encoding (byte offsets as docs/checkpoint.md
// documents them), the commit marker, and the directory layout of a save.
#include "fixture.hpp"

TEST_SUITE("checkpoint") {
  TEST_CASE("crc32c is the Castagnoli CRC with its check value and continues across calls") {
    const std::string_view text = "123456789";
    CHECK(zero::crc32c(text) == 0xE3069283u);
    CHECK(zero::crc32c(std::string_view()) == 0u);
    CHECK(zero::crc32c(text.substr(4), zero::crc32c(text.substr(0, 4))) == 0xE3069283u);
    // RFC 3720 (iSCSI) test vector: 32 bytes of zeros
    const std::vector<std::byte> zeros(32);
    CHECK(zero::crc32c(zeros) == 0x8A9136AAu);
  }

  TEST_CASE("a saved header parses back to what the optimizer holds with the documented layout") {
    ckpt::temp_dir dir;
    using O = zero::optimizer<zero::stage2, zero::bf16_mixed, zero::adamw, zero::bucketed_partitioner>;
    ckpt::run<O>({.world = 3, .first = 0, .last = 2, .save_to = dir.path});
    const auto file = dir.path / "step-2" / "rank-1-of-3.zck";
    const auto bytes = ckpt::read_bytes(file);
    REQUIRE(bytes.size() > 64);
    CHECK(std::string(bytes.data(), 8) == "ZEROCKPT");
    auto u32 = [&](std::size_t at) { return zero::detail::read_u32_le(reinterpret_cast<const std::byte*>(bytes.data()) + at); };
    CHECK(u32(8) == 4u);            // format version
    CHECK(u32(12) == 0x01020304u);  // byte order mark
    const zero::detail::read_file f(file);
    const zero::checkpoint_header h = f.header();
    CHECK(h.rank == 1);
    CHECK(h.world_size == 3);
    CHECK(h.stage == 2);
    CHECK(h.step == 2);
    CHECK(h.param_type == "bf16");
    CHECK(h.master_type == "fp32");
    CHECK(h.value_type == "fp32");
    CHECK(h.rule == "adamw");
    CHECK(h.state_count == 2);
    CHECK(h.partitioner == "bucketed");
    // one parameter group: AdamW's seven hyperparameters, every parameter in it
    REQUIRE(h.groups.size() == 1);
    REQUIRE(h.groups[0].size() == 7);
    CHECK(h.groups[0][0] == zero::checkpoint_field{"lr", zero::adamw::hyperparameters{}.lr});
    CHECK(h.groups[0][4] == zero::checkpoint_field{"weight_decay", zero::adamw::hyperparameters{}.weight_decay});
    CHECK(h.param_groups == std::vector<std::uint32_t>(ckpt::model_sizes.size(), 0u));
    // version 4: the default mode (a zero gradient for an unreported parameter), every parameter's count the step
    CHECK(h.unreported == 0);
    CHECK(h.param_steps == std::vector<std::uint64_t>(ckpt::model_sizes.size(), 2));
    CHECK(h.bucket_elements == 64);
    CHECK(h.alignment == 4);
    REQUIRE(h.param_names.size() == ckpt::model_sizes.size());
    CHECK(h.param_names[3] == "layer3");
    CHECK(h.plan.param_size == ckpt::model_sizes);
    CHECK(h.plan.world_size == 3);
    const auto expected_plan = zero::bucketed_partitioner{}.plan(ckpt::model_sizes, {3, 4, 64});
    CHECK(h.plan.units == expected_plan.units);
    CHECK(h.plan.shard_size == expected_plan.shard_size);
    REQUIRE(h.sections.size() == 3);
    CHECK(h.sections[0].name == "values");
    CHECK(h.sections[1].name == "state.0");
    CHECK(h.sections[2].name == "state.1");
    for (const auto& s : h.sections) {
      CHECK(s.offset % 64 == 0);
      CHECK(s.element_count == h.plan.shard_size);
      CHECK(s.crc32c == zero::crc32c(std::as_bytes(std::span<const char>(bytes.data() + s.offset, s.bytes))));
    }
    CHECK(zero::expected_file_size(h) == bytes.size());
    // the encoding is canonical: re-encoding gives the file's first bytes
    const auto again = zero::encode_header(h);
    CHECK(std::memcmp(again.data(), bytes.data(), again.size()) == 0);
  }

  TEST_CASE("units owned whole round trip and a version 1 header still parses with every unit shared") {
    ckpt::temp_dir dir;
    using O = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::contiguous_partitioner>;
    ckpt::run<O>({.world = 3, .first = 0, .last = 1, .save_to = dir.path});
    const auto file = dir.path / "step-1" / "rank-2-of-3.zck";
    const zero::checkpoint_header h = zero::detail::read_file(file).header();
    const auto expected_plan = zero::contiguous_partitioner{}.plan(ckpt::model_sizes, {3, 4, 64, h.plan.order()});
    CHECK(h.plan.units == expected_plan.units);
    bool owned = false;
    for (const auto& u : h.plan.units) owned = owned || u.owner != zero::every_rank;
    CHECK(owned);
    // what a version 1 writer wrote: the same fields without the owners (a bucketed plan's units)
    using B = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>;
    ckpt::temp_dir old;
    ckpt::run<B>({.world = 3, .first = 0, .last = 1, .save_to = old.path});
    zero::checkpoint_header v1 = zero::detail::read_file(old.path / "step-1" / "rank-0-of-3.zck").header();
    v1.version = 1;
    const auto body = zero::encode_header_body(v1);
    v1.version = 2;
    const std::size_t v2_bytes = zero::encode_header_body(v1).size();
    CHECK(v2_bytes == body.size() + 4 * v1.plan.units.size());  // one i32 owner a unit
    // version 3: the groups (a count, per group a field count and each field's name and value) and
    // each parameter's group
    v1.version = 3;
    std::size_t group_bytes = 4;
    for (const auto& g : v1.groups) {
      group_bytes += 4;
      for (const auto& f : g) group_bytes += 4 + f.name.size() + 8;
    }
    const std::size_t v3_bytes = zero::encode_header_body(v1).size();
    CHECK(v3_bytes == v2_bytes + group_bytes + 4 * v1.plan.param_size.size());
    // version 4: the unreported mode (u8) and each parameter's own update count (u64)
    v1.version = 4;
    CHECK(zero::encode_header_body(v1).size() == v3_bytes + 1 + 8 * v1.plan.param_size.size());
    v1.param_steps.clear();
    v1.groups.clear();
    v1.param_groups.clear();
    v1.version = 1;
    // sections as a version 1 writer placed them after its shorter header
    std::uint64_t next = zero::first_section_offset(body.size());
    for (auto& s : v1.sections) {
      s.offset = next;
      next = (s.offset + s.bytes + 63) / 64 * 64;
    }
    const auto bytes = zero::encode_header(v1);
    const zero::checkpoint_header back = zero::parse_header(bytes, "v1.zck");
    CHECK(back.version == 1);
    CHECK(back.groups.empty());
    CHECK(back.plan.units == v1.plan.units);
    for (const auto& u : back.plan.units) CHECK(u.owner == zero::every_rank);
  }

  TEST_CASE("the commit marker lists every rank file and round trips") {
    zero::commit_marker m;
    m.step = 12;
    m.world_size = 2;
    m.save_id = 0x0123456789abcdefull;
    m.files = {{"rank-0-of-2.zck", 100}, {"rank-1-of-2.zck", 200}};
    const std::string text = zero::encode_commit_marker(m);
    CHECK(text.rfind("zero checkpoint 1\nstep 12\nworld_size 2\nsave_id 0123456789abcdef\nfile rank-0-of-2.zck 100\n", 0) == 0);
    const auto back = zero::parse_commit_marker(text, "COMMITTED");
    CHECK(back.step == 12);
    CHECK(back.world_size == 2);
    CHECK(back.save_id == m.save_id);
    CHECK(back.files == m.files);
  }

  TEST_CASE("step directory names parse to 64-bit steps and a number past 2^64 - 1 names no step") {
    std::uint64_t step = 7;
    CHECK(zero::detail::parse_step_name("step-0", step));
    CHECK(step == 0);
    CHECK(zero::detail::parse_step_name(zero::checkpoint_format::step_directory_name(1234), step));
    CHECK(step == 1234);
    CHECK(zero::detail::parse_step_name("step-18446744073709551615", step));  // 2^64 - 1
    CHECK(step == 18446744073709551615ull);
    step = 7;
    for (const char* bad : {"step-18446744073709551616", "step-99999999999999999999", "step-20000000000000000000", "step-",
                            "step-12a", "step--1", "Step-1", "step-000000000000000000001"}) {
      CAPTURE(bad);
      CHECK_FALSE(zero::detail::parse_step_name(bad, step));
      CHECK(step == 7);  // untouched when refused
    }
  }

  TEST_CASE("save writes nothing but the step directory and latest and leaves no temporary files") {
    ckpt::temp_dir dir;
    using O = zero::optimizer<zero::stage1, zero::fp32_precision>;
    ckpt::run<O>({.world = 2, .first = 0, .last = 1, .save_to = dir.path});
    ckpt::run<O>({.world = 2, .first = 0, .last = 2, .save_to = dir.path});
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir.path))
      names.push_back(std::filesystem::relative(e.path(), dir.path).string());
    std::sort(names.begin(), names.end());
    CHECK(names == std::vector<std::string>{"latest", "step-1", "step-1/COMMITTED", "step-1/rank-0-of-2.zck", "step-1/rank-1-of-2.zck",
                                            "step-2", "step-2/COMMITTED", "step-2/rank-0-of-2.zck", "step-2/rank-1-of-2.zck"});
  }
}
