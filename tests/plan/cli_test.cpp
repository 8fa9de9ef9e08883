// zero-plan on the command line: its parsing (suffixes, lists, bad arguments), its table, its
// JSON and --fit, checked against plan.hpp's functions. ZERO_PLAN_EXE is the built executable.
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <cstdio>
#include <string>
#include <vector>

#include "zero/plan.hpp"

namespace {

using zero::optimizer_kind;
using zero::precision_kind;

struct result {
  int status = -1;
  std::string out;  // stdout and stderr together
};

result plan(const std::string& args) {
  const std::string command = std::string(ZERO_PLAN_EXE) + " " + args + " 2>&1";
  result r;
  std::FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buffer[4096];
  for (std::size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) r.out.append(buffer, n);
  const int status = pclose(pipe);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// The unsigned number after "key": in the k-th JSON object of text (no nesting of the key).
std::size_t field(const std::string& text, const std::string& key, std::size_t k = 0) {
  std::size_t at = 0;
  for (std::size_t i = 0; i <= k; ++i) {
    at = text.find("\"" + key + "\": ", at);
    REQUIRE_MESSAGE(at != std::string::npos, "no field " << key << " #" << k << " in: " << text);
    at += key.size() + 4;
  }
  return std::stoull(text.substr(at));
}

std::size_t count_of(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_SUITE("unit") {
  TEST_CASE("zero-plan: --params takes whole numbers and the suffixes K M B T") {
    const std::pair<const char*, std::size_t> cases[] = {
        {"124000000", 124'000'000}, {"2K", 2'000},        {"350M", 350'000'000},   {"7.5B", 7'500'000'000},
        {"1.2T", 1'200'000'000'000}, {"0.5K", 500},       {"175B", 175'000'000'000}, {"1.25M", 1'250'000}};
    for (const auto& [text, count] : cases) {
      CAPTURE(text);
      const result r = plan(std::string("--params ") + text + " --world 8 --json");
      REQUIRE(r.status == 0);
      CHECK(field(r.out, "params") == count);
    }
  }

  TEST_CASE("zero-plan: --fit takes decimal and binary byte units") {
    const std::pair<const char*, std::size_t> cases[] = {
        {"80GB", 80'000'000'000}, {"80GiB", std::size_t{80} << 30}, {"40000000000", 40'000'000'000},
        {"512MiB", std::size_t{512} << 20}, {"1.5TB", 1'500'000'000'000}, {"2048B", 2048}};
    for (const auto& [text, bytes] : cases) {
      CAPTURE(text);
      const result r = plan(std::string("--fit ") + text + " --world 8 --json");
      REQUIRE(r.status == 0);
      CHECK(field(r.out, "fit_bytes") == bytes);
    }
  }

  TEST_CASE("zero-plan: a bad argument exits 2 with the problem and the usage") {
    const char* bad[] = {"",
                         "--params 7.5B",                      // no --world
                         "--world 8",                          // no --params
                         "--params 7.5X --world 8",            // unknown suffix
                         "--params 1.5 --world 8",             // not whole
                         "--params 0.0001K --world 8",         // not whole
                         "--params B --world 8",               // no number
                         "--params 7. --world 8",              // no decimals
                         "--params -3 --world 8",              // negative
                         "--params 0 --world 8",               // nothing
                         "--params 99999999T --world 8",       // too large
                         "--params 1B --world 0",              // no ranks
                         "--params 1B --world 8,,16",          // empty item
                         "--params 1B --world 8,",             // empty item
                         "--params 1B --world 8,x",            // not a number
                         "--params 1B --world 8 --stage 4",    // no such stage
                         "--fit 9000TB --world 1024 --stage 3",  // more than zero-plan counts fit
                         "--params 1B --world 8 --stage two",  // not a stage
                         "--params 1B --world 8 --precision fp8",
                         "--params 1B --world 8 --optimizer rmsprop",
                         "--params 1B --fit 80GB --world 8",  // both
                         "--fit 80XB --world 8",
                         "--params 1B --world 8 --bogus",
                         "--params 1B --world"};  // a missing value
    for (const char* args : bad) {
      CAPTURE(args);
      const result r = plan(args);
      CHECK(r.status == 2);
      CHECK(r.out.find("zero-plan: ") == 0);
      CHECK(r.out.find("usage: zero-plan --params N --world W") != std::string::npos);
    }
  }

  TEST_CASE("zero-plan: --help explains every kind and exits 0") {
    const result r = plan("--help");
    CHECK(r.status == 0);
    for (const char* word : {"parameters", "gradients", "framework_gradients", "master_weights", "optimizer_state",
                             "model_states_bytes", "buffers", "total", "--fit", "--params", "--world", "--partitioner",
                             "--largest-param", "Not counted"})
      CHECK(r.out.find(word) != std::string::npos);
  }

  TEST_CASE("zero-plan: the table has a column per world size and a row per kind") {
    const result r = plan("--params 7.5B --world 8,64,1024 --stage 2 --precision fp16");
    REQUIRE(r.status == 0);
    CHECK(r.out.find("7,500,000,000 parameters (7.50B), ZeRO stage 2, precision fp16, optimizer adam") != std::string::npos);
    for (const char* column : {"world 8", "world 64", "world 1024"}) CHECK(r.out.find(column) != std::string::npos);
    for (const char* kind : {"\nparameters ", "\ngradients ", "\nframework_gradients ", "\nmaster_weights ",
                             "\noptimizer_state ", "\nmodel_states_bytes ", "\nbuffers ", "\ntotal "})
      CHECK(count_of(r.out, kind) == 1);
    // 7.5B fp16 parameters are 13.97 GiB on every rank, whatever the world size
    CHECK(count_of(r.out, "13.97 GiB") == 3);
    // stage 2 over 8 ranks: 2 + 16/8 bytes per parameter of model states (27.94 GiB), and the one
    // 4Mi-element bucket of fp16 gradients the framework holds (8 MiB) = 27.95 GiB
    CHECK(r.out.find("27.95 GiB") != std::string::npos);
    CHECK(count_of(r.out, "8.00 MiB") == 3);
  }

  TEST_CASE("zero-plan: --json gives plan_memory's exact bytes") {
    struct config {
      const char* args;
      std::size_t params;
      int world;
      zero::stage stage;
      precision_kind precision;
      optimizer_kind optimizer;
    };
    const config configs[] = {
        {"--params 7.5B --world 64 --stage 2 --precision fp16", 7'500'000'000, 64, zero::stage2, precision_kind::fp16,
         optimizer_kind::adam},
        {"--params 7.5B --world 64 --stage 2 --precision fp16 --optimizer adam", 7'500'000'000, 64, zero::stage2,
         precision_kind::fp16, optimizer_kind::adam},
        {"--params 1.3B --world 3 --stage 0 --precision bf16 --optimizer adamw", 1'300'000'000, 3, zero::stage0,
         precision_kind::bf16, optimizer_kind::adamw},
        {"--params 350M --world 16 --stage 1 --precision fp32 --optimizer sgd-momentum", 350'000'000, 16, zero::stage1,
         precision_kind::fp32, optimizer_kind::sgd_momentum},
        {"--params 13B --world 1024 --precision bf16-pure --optimizer lion", 13'000'000'000, 1024, zero::stage2,
         precision_kind::bf16_pure, optimizer_kind::lion},
        {"--params 70B --world 512 --precision bf16-accum --optimizer adam-amsgrad", 70'000'000'000, 512, zero::stage2,
         precision_kind::bf16_bf16_accum, optimizer_kind::adam_amsgrad},
        {"--params 70B --world 96 --stage 3 --precision bf16", 70'000'000'000, 96, zero::stage3, precision_kind::bf16,
         optimizer_kind::adam},
        {"--params 7.5B --world 1 --stage 3 --precision fp32 --optimizer sgd", 7'500'000'000, 1, zero::stage3,
         precision_kind::fp32, optimizer_kind::sgd},
    };
    for (const auto& c : configs) {
      CAPTURE(c.args);
      const result r = plan(std::string(c.args) + " --json");
      REQUIRE(r.status == 0);
      const auto p = zero::plan_memory(c.params, c.world, c.stage, c.precision, c.optimizer);
      CHECK(r.out.front() == '{');
      CHECK(field(r.out, "params") == c.params);
      CHECK(field(r.out, "world") == static_cast<std::size_t>(c.world));
      CHECK(field(r.out, "stage") == static_cast<std::size_t>(c.stage));
      CHECK(r.out.find("\"precision\": \"" + std::string(zero::to_string(c.precision)) + "\"") != std::string::npos);
      CHECK(r.out.find("\"optimizer\": \"" + std::string(zero::to_string(c.optimizer)) + "\"") != std::string::npos);
      CHECK(field(r.out, "parameters") == p.parameters);
      CHECK(field(r.out, "gradients") == p.gradients);
      CHECK(field(r.out, "master_weights") == p.master_weights);
      CHECK(field(r.out, "optimizer_state") == p.optimizer_state);
      CHECK(field(r.out, "buffers") == p.buffers);
      CHECK(field(r.out, "model_states_bytes") == p.model_states_bytes());
      CHECK(field(r.out, "total") == p.total());
      CHECK(field(r.out, "buckets") == p.engine.of(zero::memory_kind::buckets));
      CHECK(field(r.out, "parameter_shard") == p.engine.of(zero::memory_kind::parameter_shard));
    }
  }

  TEST_CASE("zero-plan: layout options reach the plan") {
    zero::layout_options layout;
    layout.bucket_elements = 1'000'000;
    layout.alignment = 64;
    layout.gradient_slots = true;
    layout.defer_reduction = true;
    const result r = plan("--params 1B --world 8 --bucket 1M --alignment 64 --gradient-slots --defer-reduction --json");
    REQUIRE(r.status == 0);
    const auto p = zero::plan_memory(1'000'000'000, 8, zero::stage2, precision_kind::bf16, optimizer_kind::adam, layout);
    CHECK(field(r.out, "gradients") == p.gradients);
    CHECK(field(r.out, "gradient_slots") == 2'000'000'000);
    CHECK(field(r.out, "buckets") == p.engine.of(zero::memory_kind::buckets));
    CHECK(field(r.out, "total") == p.total());
  }

  TEST_CASE("zero-plan: stage 3 takes the gather buffers' count and size") {
    zero::layout_options layout;
    layout.gather_buffers = 3;
    layout.gather_buffer_elements = 50'000'000;
    const result r = plan("--params 70B --world 64 --stage 3 --gather-buffers 3 --gather-elements 50M --json");
    REQUIRE(r.status == 0);
    const auto p = zero::plan_memory(70'000'000'000, 64, zero::stage3, precision_kind::bf16, optimizer_kind::adam, layout);
    CHECK(field(r.out, "parameters") == p.parameters);
    CHECK(field(r.out, "buckets") == p.engine.of(zero::memory_kind::buckets));
    CHECK(p.buffers == p.engine.of(zero::memory_kind::buckets));
    CHECK(field(r.out, "total") == p.total());
    // the three buffers of 50M bf16 elements are all that changed against the defaults (two of 16Mi)
    CHECK(p.total() - zero::plan_memory(70'000'000'000, 64, zero::stage3, precision_kind::bf16, optimizer_kind::adam).total() ==
          3 * 50'000'000 * 2 - 2 * (std::size_t{1} << 24) * 2);
    const result t = plan("--params 70B --world 64 --stage 3");
    REQUIRE(t.status == 0);
    CHECK(t.out.find("ZeRO stage 3") != std::string::npos);
    CHECK(t.out.find("2 gather buffers of 16,777,216 elements") != std::string::npos);
    CHECK(plan("--params 70B --world 64 --stage 3 --gather-buffers 0").status == 2);
    CHECK(plan("--params 70B --world 64 --stage 3 --gather-elements 0").status == 2);
  }

  TEST_CASE("zero-plan: the partitioner and the largest parameter reach the plan / the framework's gradients counted") {
    const result r = plan("--params 1B --world 8 --partitioner bucketed --largest-param 50M --json");
    REQUIRE(r.status == 0);
    const auto p = zero::plan_memory(1'000'000'000, 8, zero::stage2, precision_kind::bf16, optimizer_kind::adam, {},
                                     zero::partitioner_kind::bucketed, 50'000'000);
    CHECK(r.out.find("\"partitioner\": \"bucketed\"") != std::string::npos);
    CHECK(field(r.out, "largest_param") == 50'000'000);
    CHECK(field(r.out, "framework_gradients") == p.framework_gradients);
    CHECK(p.framework_gradients == 2 * ((std::size_t{1} << 22) + 50'000'000));  // one bucket and the largest, bf16
    CHECK(field(r.out, "model_states_bytes") == p.model_states_bytes());
    CHECK(field(r.out, "total") == p.total());
    // stage 1 reads every gradient at once: nothing held by the framework
    const result s1 = plan("--params 1B --world 8 --stage 1 --largest-param 50M --json");
    REQUIRE(s1.status == 0);
    CHECK(field(s1.out, "framework_gradients") == 0);
    const result text = plan("--params 1B --world 8");
    CHECK(text.out.find("\nframework_gradients ") != std::string::npos);
    CHECK(text.out.find("--largest-param N adds the largest parameter") != std::string::npos);
    CHECK(plan("--params 1B --world 8 --partitioner round-robin").status == 2);
    CHECK(plan("--params 1M --world 8 --largest-param 2M").status == 2);
  }

  TEST_CASE("zero-plan: a world list gives a JSON array with one object per world size") {
    const result r = plan("--params 7.5B --world 1,8,64 --json");
    REQUIRE(r.status == 0);
    CHECK(r.out.front() == '[');
    CHECK(count_of(r.out, "\"world\": ") == 3);
    const int worlds[] = {1, 8, 64};
    for (std::size_t k = 0; k < 3; ++k) {
      CHECK(field(r.out, "world", k) == static_cast<std::size_t>(worlds[k]));
      CHECK(field(r.out, "total", k) ==
            zero::plan_memory(7'500'000'000, worlds[k], zero::stage2, precision_kind::bf16, optimizer_kind::adam).total());
    }
  }

  TEST_CASE("zero-plan: --fit answers the largest count that fits for each world size") {
    const result r = plan("--fit 80GB --world 1,8,64 --precision fp16 --json");
    REQUIRE(r.status == 0);
    const int worlds[] = {1, 8, 64};
    for (std::size_t k = 0; k < 3; ++k) {
      CAPTURE(worlds[k]);
      const std::size_t n = field(r.out, "params", k);
      CHECK(n == zero::largest_fitting(80'000'000'000, worlds[k], zero::stage2, precision_kind::fp16, optimizer_kind::adam));
      CHECK(field(r.out, "total", k) <= 80'000'000'000);
      CHECK(zero::plan_memory(n + 1, worlds[k], zero::stage2, precision_kind::fp16, optimizer_kind::adam).total() >
            80'000'000'000);
    }
    // more ranks, more parameters: stage 2 partitions all but the parameters themselves
    CHECK(field(r.out, "params", 0) < field(r.out, "params", 1));
    CHECK(field(r.out, "params", 1) < field(r.out, "params", 2));
    CHECK(field(r.out, "params", 2) < 40'000'000'000);  // never past budget / 2 bytes of parameters

    const result text = plan("--fit 80GB --world 1,8 --precision fp16");
    REQUIRE(text.status == 0);
    CHECK(text.out.find("largest parameter count whose per-rank total fits in 80,000,000,000 bytes") != std::string::npos);
    // one rank: 2 + 4 + 8 + 4 bytes per parameter (no parameter shard there: the update writes
    // the parameters), so about 80 GB / 18 less the buckets
    CHECK(text.out.find("4,443,045,888 (4.44B)") != std::string::npos);
  }

  TEST_CASE("zero-plan: --fit with a budget too small for one parameter answers 0") {
    const result r = plan("--fit 1B --world 4 --json");
    REQUIRE(r.status == 0);
    CHECK(field(r.out, "params") == 0);
  }
}

TEST_SUITE("activation") {
  TEST_CASE("zero-plan: --checkpoint-bytes and --layers print each activation policy's bytes per rank") {
    // 10 checkpoints of 1000 bytes over 4 model-parallel ranks: slices of 256 bytes (1000 / 4
    // rounded up to whole 8-byte words), a gather buffer of 4 x 256 (1000 is no multiple of 32)
    const result r = plan("--params 1B --world 8 --checkpoint-bytes 1000 --layers 10 --model-parallel 4 --json");
    REQUIRE(r.status == 0);
    const std::string a = r.out.substr(r.out.find("\"activations\""));
    CHECK(field(a, "checkpoint_bytes") == 1000);
    CHECK(field(a, "layers") == 10);
    CHECK(field(a, "model_parallel") == 4);
    const std::size_t device[] = {10000, 10240, 10 * 256 + 4 * 256, 2 * 1000, 2 * 256 + 4 * 256};
    const std::size_t host[] = {0, 0, 0, 10000, 10 * 256};
    for (std::size_t k = 0; k < 5; ++k) {
      CAPTURE(k);
      CHECK(field(a, "device", k) == device[k]);
      CHECK(field(a, "host", k) == host[k]);
    }
    // the same numbers as the library's plan (the engine's checkpointers' own expectation)
    const zero::activation_plan p = zero::plan_activations(1000, 10, 4);
    CHECK(p.partitioned.device() == device[2]);
    CHECK(p.partitioned_offloaded.host == host[4]);
    // ZeRO-R: P_a divides the checkpoints by the model-parallel degree (a size that divides
    // evenly needs no gather buffer); offloading leaves two staging buffers device-side
    const zero::activation_plan big = zero::plan_activations(std::size_t{1} << 30, 48, 8);
    CHECK(big.partitioned.device() * 8 == big.plain.device());
    CHECK(big.offloaded.device() == 2 * (std::size_t{1} << 30));
    CHECK(big.partitioned_offloaded.host == big.partitioned.device());
    // the table
    const result t = plan("--params 7.5B --world 64 --checkpoint-bytes 1GiB --layers 48 --model-parallel 8");
    REQUIRE(t.status == 0);
    CHECK(t.out.find("activation checkpoints per rank: 48 layers x 1.00 GiB, model-parallel group of 8") != std::string::npos);
    CHECK(t.out.find("partitioned (P_a)         6.00 GiB") != std::string::npos);
    CHECK(t.out.find("P_a+cpu                 256.00 MiB      6.00 GiB") != std::string::npos);
    // one without the other
    const result bad = plan("--params 1B --world 8 --layers 10");
    CHECK(bad.status == 2);
    CHECK(bad.out.find("give --checkpoint-bytes and --layers together") != std::string::npos);
  }
}
