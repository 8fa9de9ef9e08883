// The whole engine on the device (label cuda): zero::optimizer over device communicators keeps
// its buffers in device memory and runs every pass as a kernel (zero::cuda::device_backend).
// The host engine on thread ranks (tests/engine/harness.hpp), which the host equivalence tests
// hold to the double-precision references, is what the device runs are compared with; each
// host run here is also checked against its reference again.
//
//  * AdamW over thread ranks on one GPU (device_thread_communicator): worlds 1, 2, 3, stages 0,
//    1, 2, both partitioners, fp32 and bf16 with fp32 master, buckets of a prime and larger than
//    the model, blocking and pipelined: after 10 steps every rank's parameters are bitwise equal
//    to the host engine's. Bitwise, because the device runs the host's per-element functions
//    (zero::exact_float: explicitly rounded operations) and sums ranks in the same order; the norm may differ in its last bits.
//  * Every other element-wise rule (Adam with AMSGrad, SGD with Nesterov momentum, Lion,
//    Adagrad) in fp32, bf16 and fp16 (fixed loss scale), stages 0 and 2, with unreported
//    gradients: bitwise; bf16 without master weights, rounded stochastically: bitwise.
//  * The training step's features: micro-step accumulation (reduced every micro-step or once),
//    a shared weight reported twice: bitwise; clipping: within 1e-6 (the clip factor comes from
//    the norm, which the device adds in another order).
//  * LAMB (tensor-wise, zero::cuda::tensorwise_update), stages 0, 1, 2, fp32 and bf16: within
//    1e-6 of the host (the per-tensor sums add in another order) and within the host's bound of
//    the double reference.
//  * Dynamic loss scaling in fp16 with overflows (from the scale and injected): every report
//    (skipped, scale, rank and parameter named) and the parameters equal the host engine's.
//  * Checkpoints: saved by a device engine and resumed by the host engine, and the reverse,
//    bitwise equal to an uninterrupted host run (shards with master weights; stage 0 whose
//    values are the framework's parameters).
//  * NCCL with one rank: AdamW and LAMB, as above.
//  * The release contract on a device: a framework stream that waits for the engine's release
//    event before it overwrites released gradients leaves the result bitwise the host engine's.
//  * Stage 3 (tests/engine/stage3_driver.hpp): layers gathered into device buffers for forward
//    and backward, gradients computed from the gathered values, the framework's own parameters
//    freed after construction: bitwise the host stage-3 engine (which equals stage 2), worlds 1
//    to 3, fp32 contiguous and bf16 with fp32 master bucketed; memory() equals expected_memory.
// Without a GPU the executable exits 77 (skipped) before running anything (device_main.cpp).
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <span>
#include <type_traits>
#include <vector>

#include "engine/harness.hpp"
#include "engine/mirror.hpp"
#include "engine/stage3_driver.hpp"
#include "zero/cuda/backend.cuh"
#include "zero/cuda/device_thread_communicator.cuh"
#if defined(ZERO_TEST_WITH_NCCL)
#include "zero/cuda/nccl_communicator.hpp"
#endif

namespace {

using namespace std::chrono_literals;

// 20 steps of fp32 rounding, two per step, each within 2^-24 (tests/engine/training_step_test.cpp).
constexpr double fp32_bound = 20 * 2 * 0x1.0p-24;

// Framework buffers in device memory; each thread rank on GPU 0 with its own stream and a
// device_thread_communicator (tests/engine/mirror.hpp has the other half of the policy).
struct device_memory {
  using stream_type = cudaStream_t;
  template <class T>
  static T* upload(const std::vector<T>& host, cudaStream_t stream) {
    void* p = nullptr;
    zero::cuda::check(cudaMalloc(&p, std::max<std::size_t>(host.size(), 1) * sizeof(T)), "cudaMalloc (test)");
    write(static_cast<T*>(p), host, stream);
    return static_cast<T*>(p);
  }
  template <class T>
  static void write(T* to, const std::vector<T>& host, cudaStream_t stream) {
    zero::cuda::check(cudaMemcpyAsync(to, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
    zero::cuda::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  }
  template <class T>
  static std::vector<float> download(const T* from, std::size_t n, cudaStream_t stream) {
    std::vector<T> host(n);
    zero::cuda::check(cudaMemcpyAsync(host.data(), from, n * sizeof(T), cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
    zero::cuda::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    std::vector<float> out;
    for (const T& v : host) out.push_back(static_cast<float>(v));
    return out;
  }
  template <class T>
  static void release(T* p) {
    (void)cudaFree(p);
  }
  static std::size_t allocations() { return zero::cuda::allocated().allocations; }
  static std::size_t live_bytes() { return zero::cuda::allocated().live_bytes; }
  template <class F>
  static void with_rank(zero::thread_communicator& rendezvous, F&& f) {
    zero::cuda::check(cudaSetDevice(0), "cudaSetDevice");
    cudaStream_t stream = nullptr;
    zero::cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    {
      zero::device_thread_communicator comm(rendezvous, stream);
      f(comm, stream);
    }
    (void)cudaStreamDestroy(stream);
  }
};

using mirror::host_memory;
using mirror::options_with;
using mirror::train;
using mirror::train_group;

// The device run's own checks: no device allocation while stepping, memory as expected, and
// every device byte the group's engines allocated is in their reports (memory() plus the
// backends' bytes), to the byte.
void check_device_records(const std::vector<mirror::run_record>& records) {
  std::size_t reported = 0;
  for (const auto& r : records) {
    CHECK_FALSE(r.allocated_while_stepping);
    CHECK(r.memory_as_expected);
    CHECK(r.construction_bytes == records[0].construction_bytes);
    reported += r.engine_bytes;
  }
  CHECK(reported == records[0].construction_bytes);
}

// The host engine over thread ranks and the same engine over device thread ranks.
template <zero::stage S, class Precision, class Rule, class Partitioner = zero::contiguous_partitioner>
struct engines {
  using host = zero::optimizer<S, Precision, Rule, Partitioner>;
  using device = zero::optimizer<S, Precision, Rule, Partitioner, zero::device_thread_communicator>;
};

// The host engine's run of `o` (held to its reference here too) and the device's, rank by rank:
// bitwise, or within `tolerance` relative.
template <class Engines>
void check_against_host(const harness::run_options& o, const typename Engines::host::hyperparameters_type& h,
                        double tolerance = 0, double reference_bound = fp32_bound) {
  const auto host = harness::run<typename Engines::host>(o, h);
  CHECK(host.rank_disagreements == 0);
  if (reference_bound > 0) CHECK(host.max_value_error < reference_bound);
  const auto device = train_group<typename Engines::device, device_memory>(o, options_with<typename Engines::device>(h));
  check_device_records(device);
  for (int r = 0; r < o.world; ++r) {
    CAPTURE(r);
    const auto& mine = device[static_cast<std::size_t>(r)].params;
    const auto& theirs = host.params[static_cast<std::size_t>(r)];
    if (tolerance == 0) {
      CHECK(mine == theirs);
      continue;
    }
    double worst = 0;
    for (std::size_t p = 0; p < mine.size(); ++p)
      for (std::size_t i = 0; i < mine[p].size(); ++i)
        worst = std::max(worst, std::fabs(static_cast<double>(mine[p][i]) - theirs[p][i]) /
                                    std::max(std::fabs(static_cast<double>(theirs[p][i])), 1e-30));
    CAPTURE(worst);
    CHECK(worst <= tolerance);
  }
}

template <class Engines>
void check_adamw_sweep() {
  for (const auto& o : mirror::adamw_runs()) {
    CAPTURE(o.world);
    CAPTURE(o.bucket_elements);
    CAPTURE(o.staging_buffers);
    check_against_host<Engines>(o, harness::adamw_hyperparameters());
  }
}

template <class Rule, zero::stage S, class Precision>
void check_rule(double loss_scale) {
  for (const auto& o : mirror::rule_runs(loss_scale)) {
    CAPTURE(o.world);
    check_against_host<engines<S, Precision, Rule, zero::bucketed_partitioner>>(o, harness::rule_hyperparameters<Rule>());
  }
}

template <class Rule>
void check_rule_everywhere() {
  check_rule<Rule, zero::stage0, zero::fp32_precision>(0);
  check_rule<Rule, zero::stage2, zero::fp32_precision>(0);
  check_rule<Rule, zero::stage0, zero::bf16_mixed>(0);
  check_rule<Rule, zero::stage2, zero::bf16_mixed>(0);
  check_rule<Rule, zero::stage2, zero::fp16_mixed>(1024);
}

template <zero::stage S, class Precision>
void check_lamb(double tolerance) {
  zero::lamb::hyperparameters h;
  h.lr = 5e-3;  // as the host's partitioned-LAMB test: keep |p| away from 0
  for (int world : {1, 2, 3}) {
    CAPTURE(world);
    harness::run_options o;
    o.world = world;
    o.alignment = 1;
    o.bucket_elements = 64;  // tensors straddle ranks
    check_against_host<engines<S, Precision, zero::lamb>>(o, h, tolerance);
  }
}

// Stage 3 on the device against stage 3 on the host, each rank's values after every step.
template <class Precision, class Partitioner>
void check_stage3() {
  using host = zero::optimizer<zero::stage3, Precision, zero::adamw, Partitioner>;
  using device = zero::optimizer<zero::stage3, Precision, zero::adamw, Partitioner, zero::device_thread_communicator>;
  for (int world : {1, 2, 3}) {
    CAPTURE(world);
    stage3_driver::run_options o;
    o.world = world;
    o.steps = 4;
    std::vector<stage3_driver::rank_result> on_host(static_cast<std::size_t>(world)), on_device(on_host.size());
    zero::thread_group(world, {std::chrono::seconds(60)}).run([&](zero::thread_communicator& comm) {
      on_host[static_cast<std::size_t>(comm.rank())] = stage3_driver::run_rank<host>(comm, o, stage3_driver::adamw_h());
    });
    zero::thread_group(world, {std::chrono::seconds(60)}).run([&](zero::thread_communicator& rendezvous) {
      device_memory::with_rank(rendezvous, [&](zero::device_thread_communicator& comm, cudaStream_t stream) {
        on_device[static_cast<std::size_t>(comm.rank())] =
            stage3_driver::run_rank<device, device_memory>(comm, o, stage3_driver::adamw_h(), stream);
      });
    });
    for (std::size_t r = 0; r < on_host.size(); ++r) {
      CAPTURE(r);
      CHECK(on_device[r].poisoned_reads == 0);
      CHECK(stage3_driver::same_bits(on_device[r].values, on_host[r].values));
      CHECK(on_device[r].memory == on_device[r].expected);
    }
  }
}

}  // namespace

// Named configurations (doctest prints them; no commas: CTest names).
namespace device_config {
struct fp32_stage0 : engines<zero::stage0, zero::fp32_precision, zero::adamw> {};
struct fp32_stage1 : engines<zero::stage1, zero::fp32_precision, zero::adamw> {};
struct fp32_stage2_contiguous : engines<zero::stage2, zero::fp32_precision, zero::adamw> {};
struct fp32_stage2_bucketed : engines<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner> {};
struct bf16_stage1 : engines<zero::stage1, zero::bf16_mixed, zero::adamw, zero::bucketed_partitioner> {};
struct bf16_stage2 : engines<zero::stage2, zero::bf16_mixed, zero::adamw> {};
}  // namespace device_config

TEST_SUITE("cuda") {
  TEST_CASE_TEMPLATE("engine on the device over thread ranks equals the host engine bitwise / 10 AdamW steps", C,
                     device_config::fp32_stage0, device_config::fp32_stage1, device_config::fp32_stage2_contiguous,
                     device_config::fp32_stage2_bucketed, device_config::bf16_stage1, device_config::bf16_stage2) {
    check_adamw_sweep<C>();
  }

  TEST_CASE_TEMPLATE("engine on the device: every element-wise rule equals the host engine bitwise / fp32 bf16 fp16", Rule,
                     zero::adam, zero::sgd, zero::lion, zero::adagrad) {
    check_rule_everywhere<Rule>();
  }

  TEST_CASE("engine on the device: bf16 without master weights rounded stochastically equals the host engine bitwise") {
    harness::run_options o;
    o.world = 3;
    o.bucket_elements = 37;
    o.stochastic_rounding = true;
    check_against_host<engines<zero::stage2, zero::bf16_pure, zero::adamw>>(o, harness::adamw_hyperparameters(), 0, 0);
    check_against_host<engines<zero::stage0, zero::bf16_pure, zero::adamw>>(o, harness::adamw_hyperparameters(), 0, 0);
  }

  TEST_CASE("engine on the device: micro-step accumulation and a shared weight equal the host engine bitwise") {
    for (const auto& o : mirror::accumulation_runs()) {
      CAPTURE(o.defer_reduction);
      CAPTURE(o.shared_weight);
      check_against_host<engines<zero::stage2, zero::fp32_precision, zero::adamw>>(o, harness::adamw_hyperparameters());
      check_against_host<engines<zero::stage1, zero::bf16_mixed, zero::adamw>>(o, harness::adamw_hyperparameters(), 0, 0);
    }
  }

  TEST_CASE("engine on the device: clipping by the global norm equals the host engine within 1e-6") {
    for (int world : {1, 3}) {
      CAPTURE(world);
      harness::run_options o;
      o.world = world;
      o.bucket_elements = 61;
      o.max_grad_norm = 0.5;
      check_against_host<engines<zero::stage2, zero::fp32_precision, zero::adamw>>(o, harness::adamw_hyperparameters(), 1e-6);
      check_against_host<engines<zero::stage0, zero::fp32_precision, zero::adamw>>(o, harness::adamw_hyperparameters(), 1e-6);
    }
  }

  TEST_CASE("engine on the device: LAMB equals the host engine within 1e-6 and the reference / fp32") {
    check_lamb<zero::stage0, zero::fp32_precision>(1e-6);
    check_lamb<zero::stage1, zero::fp32_precision>(1e-6);
    check_lamb<zero::stage2, zero::fp32_precision>(1e-6);
  }

  TEST_CASE("engine on the device: LAMB equals the host engine within one bf16 step / bf16 with fp32 master") {
    // a trust factor one float bit off the host's can move a master weight across a bf16
    // rounding boundary: one bf16 step, 2^-7 relative at most
    check_lamb<zero::stage2, zero::bf16_mixed>(0x1.0p-7);
  }

  TEST_CASE("engine on the device: dynamic loss scaling in fp16 skips and rescales exactly as the host engine") {
    using E = engines<zero::stage2, zero::fp16_mixed, zero::adamw>;
    const auto o = mirror::dynamic_scaling_run();
    const auto plan = mirror::dynamic_scaling_schedule();
    const auto host = train_group<typename E::host, host_memory>(o, mirror::dynamic_scaling_options<typename E::host>(), plan);
    const auto device = train_group<typename E::device, device_memory>(o, mirror::dynamic_scaling_options<typename E::device>(), plan);
    check_device_records(device);
    std::size_t skipped = 0;
    for (int r = 0; r < o.world; ++r) {
      CAPTURE(r);
      const auto& h = host[static_cast<std::size_t>(r)];
      const auto& d = device[static_cast<std::size_t>(r)];
      CHECK(d.params == h.params);
      REQUIRE(d.reports.size() == h.reports.size());
      for (std::size_t t = 0; t < h.reports.size(); ++t) {
        CAPTURE(t);
        CHECK(d.reports[t].skipped == h.reports[t].skipped);
        CHECK(d.reports[t].loss_scale == h.reports[t].loss_scale);
        CHECK(d.reports[t].nonfinite_rank == h.reports[t].nonfinite_rank);
        CHECK(d.reports[t].nonfinite_parameter == h.reports[t].nonfinite_parameter);
        skipped += h.reports[t].skipped;
      }
    }
    // the schedule did what it is for: some steps overflowed, and the injected ones were named
    CHECK(skipped >= 3 * 3);
    CHECK(host[0].reports[6].skipped);
    CHECK(host[0].reports[6].nonfinite_rank == 1);
    CHECK(host[0].reports[6].nonfinite_parameter == 10);
  }

  TEST_CASE("engine on the device: checkpoints resume bitwise from the device on the host and from the host on the device") {
    const auto h = harness::adamw_hyperparameters();
    auto check_both_ways = [&]<class E>(E, const harness::run_options& o) {
      using host_engine = typename E::host;
      using device_engine = typename E::device;
      const auto expected = harness::run<host_engine>(o, h);
      const auto on_host = mirror::train_resumed<device_engine, device_memory, host_engine, host_memory>(
          o, 5, options_with<device_engine>(h), options_with<host_engine>(h));
      const auto on_device = mirror::train_resumed<host_engine, host_memory, device_engine, device_memory>(
          o, 5, options_with<host_engine>(h), options_with<device_engine>(h));
      check_device_records(on_device);
      for (std::size_t r = 0; r < static_cast<std::size_t>(o.world); ++r) {
        CAPTURE(r);
        CHECK(on_host[r].params == expected.params[r]);
        CHECK(on_device[r].params == expected.params[r]);
      }
    };
    harness::run_options o;
    o.steps = 10;
    o.bucket_elements = 37;
    o.world = 3;
    check_both_ways(engines<zero::stage2, zero::bf16_mixed, zero::adamw>{}, o);  // shards of master weights and state
    o.world = 2;
    check_both_ways(engines<zero::stage0, zero::bf16_pure, zero::adamw>{}, o);  // the values are the framework's parameters
  }

  TEST_CASE("engine on the device: a non-finite gradient skips the step on every rank and changes nothing") {
    using engine = zero::optimizer<zero::stage2, zero::bf16_mixed, zero::adamw, zero::contiguous_partitioner,
                                   zero::device_thread_communicator>;
    zero::thread_group group(2, {120s});
    group.run([&](zero::thread_communicator& rendezvous) {
      zero::cuda::check(cudaSetDevice(0), "cudaSetDevice");
      cudaStream_t stream = nullptr;
      zero::cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
      {
        zero::device_thread_communicator comm(rendezvous, stream);
        const std::size_t n = 300;
        std::vector<zero::bf16> initial(n, zero::bf16(0.5f));
        auto* a = device_memory::upload(initial, stream);
        auto* b = device_memory::upload(initial, stream);
        std::vector<zero::bf16> g(n, zero::bf16(0.25f));
        if (comm.rank() == 1) g[17] = zero::bf16(std::numeric_limits<float>::infinity());
        auto* ga = device_memory::upload(std::vector<zero::bf16>(n, zero::bf16(0.25f)), stream);
        auto* gb = device_memory::upload(g, stream);
        const std::vector<zero::parameter<zero::bf16>> registered{{"a", {a, n}}, {"b", {b, n}}};
        engine::options_type options;
        options.on_nonfinite = zero::nonfinite_policy::skip_step;
        options.layout.bucket_elements = 64;
        engine opt(comm, registered, options);
        opt.gradient_ready(0, {ga, n});
        opt.gradient_ready(1, {gb, n});
        const auto report = opt.step();
        CHECK(report.skipped);
        CHECK(report.nonfinite_rank == 1);
        CHECK(report.nonfinite_parameter == 1);
        CHECK(device_memory::download(a, n, stream) == std::vector<float>(n, 0.5f));
        CHECK(device_memory::download(b, n, stream) == std::vector<float>(n, 0.5f));
        for (auto* p : {a, b, ga, gb}) device_memory::release(p);
      }
      (void)cudaStreamDestroy(stream);
    });
  }

  TEST_CASE("engine on the device: a framework stream that waits for the release event may overwrite released gradients") {
    // stage 2 in model order, gradients reported in backward order from device buffers; the
    // moment the engine releases one, a second stream (the framework's) waits for the engine's
    // release event and fills the gradient with NaN: the result equals the host engine's, bitwise
    constexpr std::size_t layers = 8, size = 100;
    auto gradient = [](int step, int rank, std::size_t p, std::size_t i) {
      return harness::gradient<float>(step, rank, p, i);
    };
    auto initial = [](std::size_t p, std::size_t i) { return harness::initial_value(p, i); };
    using device_engine = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner,
                                          zero::device_thread_communicator>;
    using host_engine = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>;
    std::vector<std::vector<std::vector<float>>> device_result(2), host_result(2);
    std::vector<std::size_t> releases(2, 0);
    zero::thread_group group(2, {120s});
    group.run([&](zero::thread_communicator& rendezvous) {
      const int rank = rendezvous.rank();
      device_memory::with_rank(rendezvous, [&](zero::device_thread_communicator& comm, cudaStream_t stream) {
        cudaStream_t framework = nullptr;
        zero::cuda::check(cudaStreamCreateWithFlags(&framework, cudaStreamNonBlocking), "cudaStreamCreate (framework)");
        std::vector<float*> values(layers), grads(layers);
        std::vector<zero::parameter<float>> registered;
        for (std::size_t p = 0; p < layers; ++p) {
          std::vector<float> v(size);
          for (std::size_t i = 0; i < size; ++i) v[i] = initial(p, i);
          values[p] = device_memory::upload(v, stream);
          grads[p] = device_memory::upload(std::vector<float>(size), stream);
          registered.push_back({"", {values[p], size}});
        }
        device_engine::options_type options;
        options.hyperparameters = harness::adamw_hyperparameters();
        options.layout.bucket_elements = 2 * size;
        options.layout.staging_buffers = 2;
        device_engine* engine = nullptr;
        options.on_gradients_released = [&](std::span<const std::size_t> released) {
          zero::cuda::check(cudaStreamWaitEvent(framework, engine->release_event(), 0), "cudaStreamWaitEvent");
          for (std::size_t p : released) {
            zero::cuda::check(cudaMemsetAsync(grads[p], 0xff, size * sizeof(float), framework), "cudaMemsetAsync (poison)");
            ++releases[static_cast<std::size_t>(rank)];
          }
        };
        device_engine opt(comm, registered, options);
        engine = &opt;
        for (int step = 0; step < 5; ++step) {
          for (std::size_t i = 0; i < layers; ++i) {
            const std::size_t p = layers - 1 - i;
            std::vector<float> g(size);
            for (std::size_t k = 0; k < size; ++k) g[k] = gradient(step, rank, p, k);
            // the framework writes the next gradient on its own stream, after what it did before
            zero::cuda::check(cudaMemcpyAsync(grads[p], g.data(), size * sizeof(float), cudaMemcpyHostToDevice, framework),
                              "cudaMemcpyAsync (gradient)");
            zero::cuda::check(cudaStreamSynchronize(framework), "cudaStreamSynchronize (framework)");
            opt.gradient_ready(p, {grads[p], size});
          }
          opt.step();
        }
        for (std::size_t p = 0; p < layers; ++p) device_result[static_cast<std::size_t>(rank)].push_back(device_memory::download(values[p], size, stream));
        zero::cuda::check(cudaStreamSynchronize(framework), "cudaStreamSynchronize (framework)");
        for (std::size_t p = 0; p < layers; ++p) {
          device_memory::release(values[p]);
          device_memory::release(grads[p]);
        }
        (void)cudaStreamDestroy(framework);
      });
    });
    zero::thread_group host_group(2, {120s});
    host_group.run([&](zero::thread_communicator& comm) {
      const int rank = comm.rank();
      std::vector<std::vector<float>> values(layers, std::vector<float>(size)), grads(layers, std::vector<float>(size));
      std::vector<zero::parameter<float>> registered;
      for (std::size_t p = 0; p < layers; ++p) {
        for (std::size_t i = 0; i < size; ++i) values[p][i] = initial(p, i);
        registered.push_back({"", {values[p].data(), size}});
      }
      host_engine::options_type options;
      options.hyperparameters = harness::adamw_hyperparameters();
      options.layout.bucket_elements = 2 * size;
      host_engine opt(comm, registered, options);
      for (int step = 0; step < 5; ++step) {
        for (std::size_t i = 0; i < layers; ++i) {
          const std::size_t p = layers - 1 - i;
          for (std::size_t k = 0; k < size; ++k) grads[p][k] = gradient(step, rank, p, k);
          opt.gradient_ready(p, {grads[p].data(), size});
        }
        opt.step();
      }
      host_result[static_cast<std::size_t>(rank)] = values;
    });
    for (std::size_t r = 0; r < 2; ++r) {
      CAPTURE(r);
      CHECK(releases[r] == 5 * layers);
      CHECK(device_result[r] == host_result[r]);
    }
  }

  TEST_CASE("engine on the device: stage 3 gathers layers on the device and equals the host stage-3 engine bitwise") {
    check_stage3<zero::fp32_precision, zero::contiguous_partitioner>();
    check_stage3<zero::bf16_mixed, zero::bucketed_partitioner>();
  }

  TEST_CASE("engine on the device: the communicator refuses a new stream while an engine built on it is alive") {
    // the engine orders its buffers and kernels on the stream it found at construction: a
    // stream changed under it would let collectives read staging buffers before the pack
    // kernels end, so set_stream (set_compute_stream for NCCL) is a usage_error naming the call
    zero::thread_group group(1, {60s});
    group.run([&](zero::thread_communicator& rendezvous) {
      device_memory::with_rank(rendezvous, [&](zero::device_thread_communicator& comm, cudaStream_t stream) {
        cudaStream_t other = nullptr;
        zero::cuda::check(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking), "cudaStreamCreate (other)");
        float* values = device_memory::upload(std::vector<float>(64, 1.0f), stream);
        using engine = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner,
                                       zero::device_thread_communicator>;
        {
          engine opt(comm, std::vector<zero::parameter<float>>{{"w", {values, 64}}});
          CHECK_THROWS_WITH_AS(comm.set_stream(other),
                               doctest::Contains("device_thread_communicator::set_stream on rank 0 while 1 engine(s)"),
                               zero::usage_error);
          CHECK(comm.stream() == stream);  // unchanged by the refusal
        }
        comm.set_stream(other);  // no engine now: allowed
        CHECK(comm.stream() == other);
        comm.set_stream(stream);
        zero::cuda::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
        device_memory::release(values);
        (void)cudaStreamDestroy(other);
      });
    });
#if defined(ZERO_TEST_WITH_NCCL)
    zero::cuda::check(cudaSetDevice(0), "cudaSetDevice");
    cudaStream_t stream = nullptr, other = nullptr;
    zero::cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    zero::cuda::check(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking), "cudaStreamCreate (other)");
    {
      zero::nccl_communicator_options comm_options;
      comm_options.timeout = std::chrono::seconds(60);
      zero::nccl_communicator comm(zero::cuda::nccl_unique_id(), 0, 1, stream, comm_options);
      float* values = device_memory::upload(std::vector<float>(64, 1.0f), stream);
      using engine = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner,
                                     zero::nccl_communicator>;
      {
        engine opt(comm, std::vector<zero::parameter<float>>{{"w", {values, 64}}});
        CHECK_THROWS_WITH_AS(comm.set_compute_stream(other),
                             doctest::Contains("nccl_communicator::set_compute_stream on rank 0 while 1 engine(s)"),
                             zero::usage_error);
        CHECK(comm.compute_stream() == stream);
      }
      comm.set_compute_stream(other);
      CHECK(comm.compute_stream() == other);
      comm.set_compute_stream(stream);
      zero::cuda::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
      device_memory::release(values);
    }
    (void)cudaStreamDestroy(other);
    (void)cudaStreamDestroy(stream);
#endif
  }

#if defined(ZERO_TEST_WITH_NCCL)
  TEST_CASE("engine on the device over NCCL with one rank equals the host engine / AdamW bitwise and LAMB within 1e-6") {
    zero::cuda::check(cudaSetDevice(0), "cudaSetDevice");
    cudaStream_t stream = nullptr;
    zero::cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    {
      harness::run_options o;
      o.steps = 10;
      o.bucket_elements = 37;
      o.alignment = 8;
      zero::nccl_communicator_options comm_options;
      comm_options.timeout = std::chrono::seconds(60);
      zero::nccl_communicator comm(zero::cuda::nccl_unique_id(), 0, 1, stream, comm_options);

      using adamw_engine = zero::optimizer<zero::stage2, zero::bf16_mixed, zero::adamw, zero::contiguous_partitioner,
                                           zero::nccl_communicator>;
      const auto host = harness::run<zero::optimizer<zero::stage2, zero::bf16_mixed>>(o, harness::adamw_hyperparameters());
      adamw_engine::options_type options;
      options.hyperparameters = harness::adamw_hyperparameters();
      const auto adamw_device = train<adamw_engine, device_memory>(comm, stream, o, options);
      CHECK(adamw_device.params == host.params[0]);
      check_device_records({adamw_device});

      using lamb_engine = zero::optimizer<zero::stage2, zero::fp32_precision, zero::lamb, zero::contiguous_partitioner,
                                          zero::nccl_communicator>;
      zero::lamb::hyperparameters h;
      h.lr = 5e-3;
      const auto lamb_host = harness::run<zero::optimizer<zero::stage2, zero::fp32_precision, zero::lamb>>(o, h);
      lamb_engine::options_type lamb_options;
      lamb_options.hyperparameters = h;
      const auto lamb_device = train<lamb_engine, device_memory>(comm, stream, o, lamb_options);
      check_device_records({lamb_device});
      for (std::size_t p = 0; p < lamb_device.params.size(); ++p)
        for (std::size_t i = 0; i < lamb_device.params[p].size(); ++i)
          CHECK(lamb_device.params[p][i] == doctest::Approx(lamb_host.params[0][p][i]).epsilon(1e-6));
    }
    (void)cudaStreamDestroy(stream);
  }
#endif
}
