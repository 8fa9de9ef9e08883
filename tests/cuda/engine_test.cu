// The whole engine on the device (label cuda): zero::optimizer over device communicators keeps
// its buffers in device memory and runs every pass as a kernel (zero::cuda::device_backend).
//
//  * thread ranks on one GPU (device_thread_communicator), worlds 1, 2, 3, stages 0, 1, 2, both
//    partitioners, fp32 and bf16 with fp32 master, buckets of a prime and larger than the model,
//    blocking and pipelined: after 10 AdamW steps every rank's parameters are bitwise equal to
//    the host engine's on thread ranks (tests/engine/harness.hpp), which the host equivalence
//    tests hold to the double-precision reference. Bitwise, because the device runs the host's
//    per-element functions (--fmad=false) and sums in the same rank order; the norm (only
//    reported here) may differ in the last bits and is compared to 1e-12.
//  * NCCL with one rank: the same, world 1.
//  * an overflow on the device skips the step on every rank, names the parameter, and leaves
//    the parameters bitwise unchanged.
// Without a GPU the executable exits 77 (skipped) before running anything (device_main.cpp).
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <vector>

#include "engine/harness.hpp"
#include "zero/cuda/backend.cuh"
#include "zero/cuda/device_thread_communicator.cuh"
#if defined(ZERO_TEST_WITH_NCCL)
#include "zero/cuda/nccl_communicator.hpp"
#endif

namespace {

using namespace std::chrono_literals;

template <class T>
T* device_copy(const std::vector<T>& host, cudaStream_t stream) {
  void* p = nullptr;
  zero::cuda::check(cudaMalloc(&p, host.size() * sizeof(T)), "cudaMalloc (test)");
  zero::cuda::check(cudaMemcpyAsync(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
  zero::cuda::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  return static_cast<T*>(p);
}

template <class T>
std::vector<float> download_as_float(const T* device, std::size_t n, cudaStream_t stream) {
  std::vector<T> host(n);
  zero::cuda::check(cudaMemcpyAsync(host.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  zero::cuda::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  std::vector<float> out;
  for (const T& v : host) out.push_back(static_cast<float>(v));
  return out;
}

struct device_result {
  std::vector<std::vector<float>> params;  // the framework's parameters after the last step
  std::vector<double> norms;               // the norm each step reported
};

//! One rank's training on the device: `steps` AdamW steps with the harness's gradients,
//! reported in reverse order (the result must not depend on it).
template <class Engine, class Comm>
device_result train_on_device(Comm& comm, cudaStream_t stream, const harness::run_options& o) {
  using P = typename Engine::param_type;
  using G = typename Engine::grad_type;
  const auto& sizes = harness::model_sizes;
  const int rank = comm.rank();
  std::vector<P*> values(sizes.size());
  std::vector<G*> grads(sizes.size());
  std::vector<zero::parameter<P>> registered;
  for (std::size_t p = 0; p < sizes.size(); ++p) {
    std::vector<P> initial(sizes[p]);
    for (std::size_t i = 0; i < sizes[p]; ++i) initial[i] = P(harness::initial_value(p, i));
    values[p] = device_copy(initial, stream);
    grads[p] = device_copy(std::vector<G>(sizes[p]), stream);
    registered.push_back({"p" + std::to_string(p), {values[p], sizes[p]}});
  }
  typename Engine::options_type options;
  options.hyperparameters = harness::adamw_hyperparameters();
  options.layout.bucket_elements = o.bucket_elements;
  options.layout.alignment = o.alignment;
  options.layout.staging_buffers = o.staging_buffers;
  device_result result;
  {
    Engine opt(comm, registered, options);
    comm.barrier();  // every rank's engine is built: the process-wide count stays put from here
    const auto allocations = zero::cuda::allocated().allocations;
    for (int t = 0; t < o.steps; ++t) {
      for (std::size_t p = sizes.size(); p-- > 0;) {
        std::vector<G> g(sizes[p]);
        for (std::size_t i = 0; i < sizes[p]; ++i) g[i] = harness::gradient<G>(t, rank, p, i);
        zero::cuda::check(cudaMemcpyAsync(grads[p], g.data(), g.size() * sizeof(G), cudaMemcpyHostToDevice, stream),
                          "cudaMemcpyAsync (gradient)");
        zero::cuda::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
        opt.gradient_ready(p, {grads[p], sizes[p]});
      }
      const auto report = opt.step();
      CHECK_FALSE(report.skipped);
      result.norms.push_back(report.grad_norm);
    }
    comm.barrier();
    CHECK(zero::cuda::allocated().allocations == allocations);  // reporting and stepping allocate no device memory
    CHECK(opt.memory() == zero::expected_memory<typename Engine::precision_type>(511, comm.world_size(), Engine::stage_value,
                                                                                  opt.state_count(), options.layout));
  }
  for (std::size_t p = 0; p < sizes.size(); ++p) {
    result.params.push_back(download_as_float(values[p], sizes[p], stream));
    (void)cudaFree(values[p]);
    (void)cudaFree(grads[p]);
  }
  return result;
}

template <class Host, class Device>
void check_thread_ranks_on_device() {
  for (int world : {1, 2, 3}) {
    for (std::size_t bucket : {std::size_t{37}, std::size_t{1} << 20}) {
      for (std::size_t staging : {std::size_t{1}, std::size_t{2}}) {
        CAPTURE(world);
        CAPTURE(bucket);
        CAPTURE(staging);
        harness::run_options o;
        o.world = world;
        o.steps = 10;
        o.bucket_elements = bucket;
        o.alignment = 8;
        const auto host = harness::run<Host>(o, harness::adamw_hyperparameters());
        o.staging_buffers = staging;
        std::vector<device_result> device(static_cast<std::size_t>(world));
        std::mutex lock;
        zero::thread_group group(world, {120s});
        group.run([&](zero::thread_communicator& rendezvous) {
          zero::cuda::check(cudaSetDevice(0), "cudaSetDevice");
          cudaStream_t stream = nullptr;
          zero::cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
          {
            zero::device_thread_communicator comm(rendezvous, stream);
            auto mine = train_on_device<Device>(comm, stream, o);
            std::lock_guard guard(lock);
            device[static_cast<std::size_t>(rendezvous.rank())] = std::move(mine);
          }
          (void)cudaStreamDestroy(stream);
        });
        for (int r = 0; r < world; ++r) {
          CAPTURE(r);
          CHECK(device[static_cast<std::size_t>(r)].params == host.params[static_cast<std::size_t>(r)]);
        }
        CHECK(host.rank_disagreements == 0);  // the host run itself is held to the reference in tests/engine
      }
    }
  }
}

}  // namespace

// Named configurations (doctest prints them; no commas: CTest names).
namespace device_config {
template <zero::stage S, class Precision, class Partitioner>
struct config {
  using host = zero::optimizer<S, Precision, zero::adamw, Partitioner>;
  using device = zero::optimizer<S, Precision, zero::adamw, Partitioner, zero::device_thread_communicator>;
};
struct fp32_stage0 : config<zero::stage0, zero::fp32_precision, zero::contiguous_partitioner> {};
struct fp32_stage1 : config<zero::stage1, zero::fp32_precision, zero::contiguous_partitioner> {};
struct fp32_stage2_contiguous : config<zero::stage2, zero::fp32_precision, zero::contiguous_partitioner> {};
struct fp32_stage2_bucketed : config<zero::stage2, zero::fp32_precision, zero::bucketed_partitioner> {};
struct bf16_stage1 : config<zero::stage1, zero::bf16_mixed, zero::bucketed_partitioner> {};
struct bf16_stage2 : config<zero::stage2, zero::bf16_mixed, zero::contiguous_partitioner> {};
}  // namespace device_config

TEST_SUITE("cuda") {
  TEST_CASE_TEMPLATE("engine on the device over thread ranks equals the host engine bitwise / 10 AdamW steps", C,
                     device_config::fp32_stage0, device_config::fp32_stage1, device_config::fp32_stage2_contiguous,
                     device_config::fp32_stage2_bucketed, device_config::bf16_stage1, device_config::bf16_stage2) {
    check_thread_ranks_on_device<typename C::host, typename C::device>();
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
        auto* a = device_copy(initial, stream);
        auto* b = device_copy(initial, stream);
        std::vector<zero::bf16> g(n, zero::bf16(0.25f));
        if (comm.rank() == 1) g[17] = zero::bf16(std::numeric_limits<float>::infinity());
        auto* ga = device_copy(std::vector<zero::bf16>(n, zero::bf16(0.25f)), stream);
        auto* gb = device_copy(g, stream);
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
        CHECK(download_as_float(a, n, stream) == std::vector<float>(n, 0.5f));
        CHECK(download_as_float(b, n, stream) == std::vector<float>(n, 0.5f));
        for (auto* p : {a, b, ga, gb}) (void)cudaFree(p);
      }
      (void)cudaStreamDestroy(stream);
    });
  }

#if defined(ZERO_TEST_WITH_NCCL)
  TEST_CASE("engine on the device over NCCL with one rank equals the host engine bitwise") {
    zero::cuda::check(cudaSetDevice(0), "cudaSetDevice");
    cudaStream_t stream = nullptr;
    zero::cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    {
      harness::run_options o;
      o.steps = 10;
      o.bucket_elements = 37;
      o.alignment = 8;
      const auto host = harness::run<zero::optimizer<zero::stage2, zero::bf16_mixed>>(o, harness::adamw_hyperparameters());
      zero::nccl_communicator_options options;
      options.timeout = std::chrono::seconds(60);
      zero::nccl_communicator comm(zero::cuda::nccl_unique_id(), 0, 1, stream, options);
      const auto device = train_on_device<zero::optimizer<zero::stage2, zero::bf16_mixed, zero::adamw,
                                                          zero::contiguous_partitioner, zero::nccl_communicator>>(comm, stream, o);
      CHECK(device.params == host.params[0]);
    }
    (void)cudaStreamDestroy(stream);
  }
#endif
}
