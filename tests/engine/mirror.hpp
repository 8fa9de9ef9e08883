#pragma once
// The harness's schedule (harness.hpp) run by one function whatever memory the framework's
// buffers live in: `mirror::train` registers the model, reports the harness's gradients (the
// same values, micro-steps, shared weight and unreported parameters; each micro-step in
// reverse order, which must not change the result) and steps. With `host_memory` it runs here;
// tests/cuda/engine_test.cu gives it device memory and a device communicator, and compares
// with the host engine. tests/engine/mirror_test.cpp holds the host runs to `harness::run`
// bitwise, so that a device failure is the device's, not the mirror's.
//
// A Memory policy says where buffers live:
//   stream_type                        what its copies are ordered on
//   upload(host, s) / write(to, host, s) / download(from, n, s) / release(p)
//   allocations(), live_bytes()        allocations so far (stepping must add none) and the bytes
//                                      they hold (process-wide)
//   with_rank(rendezvous, f)           calls f(comm, stream) on one thread rank

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "engine/harness.hpp"

namespace mirror {

struct host_memory {
  using stream_type = std::nullptr_t;
  template <class T>
  static T* upload(const std::vector<T>& host, stream_type) {
    T* p = new T[std::max<std::size_t>(host.size(), 1)];
    std::copy(host.begin(), host.end(), p);
    return p;
  }
  template <class T>
  static void write(T* to, const std::vector<T>& host, stream_type) {
    std::copy(host.begin(), host.end(), to);
  }
  template <class T>
  static std::vector<float> download(const T* from, std::size_t n, stream_type) {
    std::vector<float> out;
    for (std::size_t i = 0; i < n; ++i) out.push_back(static_cast<float>(from[i]));
    return out;
  }
  template <class T>
  static void release(T* p) {
    delete[] p;
  }
  static std::size_t allocations() { return 0; }
  static std::size_t live_bytes() { return 0; }
  template <class F>
  static void with_rank(zero::thread_communicator& rendezvous, F&& f) {
    f(rendezvous, nullptr);
  }
};

// A non-finite gradient element injected at (step, rank, parameter, element), first micro-step.
struct poison {
  int step;
  int rank;
  std::size_t param;
  std::size_t element;
};

// What the ranks do besides the harness's options.
struct schedule {
  std::vector<poison> poisons;
  bool scale_by_engine = false;  // gradients carry the engine's current loss scale (dynamic scaling)
  int first_step = 0;                // steps [first_step, o.steps) run
  std::filesystem::path load_from;   // when set: load_checkpoint from it before the first step
  std::filesystem::path save_to;     // when set: save_checkpoint into it after the last step
};

struct run_record {
  std::vector<std::vector<float>> params;  // the framework's parameters after the last step
  std::vector<zero::step_report> reports;  // one per step
  bool allocated_while_stepping = false;
  bool memory_as_expected = false;     // memory() == expected_memory
  std::size_t engine_bytes = 0;        // memory().total() + backend_bytes()
  std::size_t construction_bytes = 0;  // live bytes the group's engines added while they were built
};

// One rank's training. The layout, clipping, rounding and a fixed loss scale come from `o`
// (harness::apply), everything else from `options`.
template <class Engine, class Memory, class Comm>
run_record train(Comm& comm, typename Memory::stream_type stream, const harness::run_options& o,
                 typename Engine::options_type options, const schedule& plan = {}) {
  using P = typename Engine::param_type;
  using G = typename Engine::grad_type;
  const auto& sizes = harness::model_sizes;
  const int rank = comm.rank();
  auto uses = [&](std::size_t p) { return o.shared_weight && p == 4 ? 2 : 1; };
  std::vector<P*> values(sizes.size());
  std::vector<G*> grads(2 * sizes.size());  // one buffer per use: the engine may hold both until the unit reduces
  std::vector<zero::parameter<P>> registered;
  for (std::size_t p = 0; p < sizes.size(); ++p) {
    std::vector<P> initial(sizes[p]);
    for (std::size_t i = 0; i < sizes[p]; ++i) initial[i] = P(harness::initial_value(p, i));
    values[p] = Memory::upload(initial, stream);
    for (std::size_t u = 0; u < 2; ++u) grads[2 * p + u] = Memory::upload(std::vector<G>(sizes[p]), stream);
    registered.push_back({"p" + std::to_string(p), {values[p], sizes[p]}, static_cast<std::uint32_t>(uses(p))});
  }
  if (o.slots) throw zero::usage_error("mirror::train reports spans; gradient slots are the harness's alone");
  harness::apply(o, options);
  run_record result;
  comm.barrier();  // every rank's buffers are uploaded: the group's engines alone allocate until the next barrier
  const std::size_t before = Memory::live_bytes();
  comm.barrier();
  {
    Engine opt(comm, registered, options);
    comm.barrier();
    result.construction_bytes = Memory::live_bytes() - before;
    result.engine_bytes = opt.memory().total() + opt.backend_bytes();
    if (!plan.load_from.empty()) zero::load_checkpoint(opt, plan.load_from);
    comm.barrier();  // every rank's engine is built: a process-wide count stays put from here
    const std::size_t allocations = Memory::allocations();
    for (int t = plan.first_step; t < o.steps; ++t) {
      const double scale = o.loss_scale > 0 ? o.loss_scale : plan.scale_by_engine ? opt.scaler().scale() : 1.0;
      for (int m = 0; m < o.micro_steps; ++m) {
        if (m > 0) opt.end_micro_step();
        for (std::size_t p = sizes.size(); p-- > 0;) {
          if (!harness::reported(o, t * o.micro_steps + m, rank, p)) continue;
          for (int u = 0; u < uses(p); ++u) {
            std::vector<G> g(sizes[p]);
            for (std::size_t i = 0; i < sizes[p]; ++i) g[i] = harness::gradient<G>(t, rank, p, i, m, u, scale);
            for (const poison& x : plan.poisons)
              if (x.step == t && x.rank == rank && x.param == p && m == 0 && u == 0)
                g[x.element] = G(std::numeric_limits<float>::infinity());
            G* to = grads[2 * p + static_cast<std::size_t>(u)];
            Memory::write(to, g, stream);
            opt.gradient_ready(p, {to, sizes[p]});
          }
        }
      }
      result.reports.push_back(opt.step());
    }
    comm.barrier();
    result.allocated_while_stepping = Memory::allocations() != allocations;
    if (!plan.save_to.empty()) zero::save_checkpoint(opt, plan.save_to);
    std::size_t largest = 0;  // the most elements one parameter's reports hold
    for (std::size_t p = 0; p < sizes.size(); ++p) largest = std::max(largest, sizes[p] * static_cast<std::size_t>(uses(p)));
    result.memory_as_expected =
        opt.memory() == zero::expected_memory<typename Engine::precision_type, typename Engine::partitioner_type>(
                            511, comm.world_size(), Engine::stage_value, opt.state_count(), options.layout, largest);
  }
  for (std::size_t p = 0; p < sizes.size(); ++p) {
    result.params.push_back(Memory::download(values[p], sizes[p], stream));
    Memory::release(values[p]);
    Memory::release(grads[2 * p]);
    Memory::release(grads[2 * p + 1]);
  }
  return result;
}

// `train` on every rank of a group of `o.world` thread ranks; `Memory::with_rank` gives each its
// communicator and stream.
template <class Engine, class Memory>
std::vector<run_record> train_group(const harness::run_options& o, const typename Engine::options_type& options,
                                    const schedule& plan = {}) {
  std::vector<run_record> records(static_cast<std::size_t>(o.world));
  std::mutex lock;
  zero::thread_group group(o.world, {std::chrono::seconds(120)});
  group.run([&](zero::thread_communicator& rendezvous) {
    run_record mine;
    Memory::with_rank(rendezvous, [&](auto& comm, typename Memory::stream_type stream) {
      mine = train<Engine, Memory>(comm, stream, o, options, plan);
    });
    std::lock_guard guard(lock);
    records[static_cast<std::size_t>(rendezvous.rank())] = std::move(mine);
  });
  return records;
}

// A fresh directory under the system's temporary one, removed with this object.
class scratch_directory {
 public:
  explicit scratch_directory(const std::string& name) {
    static std::atomic<unsigned> count{0};
    path_ = std::filesystem::temp_directory_path() /
            ("zero-" + name + "-" + std::to_string(std::random_device{}()) + "-" + std::to_string(count++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~scratch_directory() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  scratch_directory(const scratch_directory&) = delete;
  scratch_directory& operator=(const scratch_directory&) = delete;
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
};

// Trains `First` for the first `split` steps of `o` and saves, then loads into `Second` (a new
// group) and trains the rest: the second group's records.
template <class First, class FirstMemory, class Second, class SecondMemory>
std::vector<run_record> train_resumed(const harness::run_options& o, int split, const typename First::options_type& first,
                                      const typename Second::options_type& second) {
  scratch_directory directory("mirror-resume");
  harness::run_options before = o;
  before.steps = split;
  schedule save;
  save.save_to = directory.path();
  train_group<First, FirstMemory>(before, first, save);
  schedule load;
  load.first_step = split;
  load.load_from = directory.path();
  return train_group<Second, SecondMemory>(o, second, load);
}

// The AdamW layouts the device test sweeps and its host check runs: 1 to 3 ranks, buckets of a
// prime and larger than the model, blocking and pipelined, 10 steps.
inline std::vector<harness::run_options> adamw_runs() {
  std::vector<harness::run_options> runs;
  for (int world : {1, 2, 3})
    for (std::size_t bucket : {std::size_t{37}, std::size_t{1} << 20})
      for (std::size_t staging : {std::size_t{1}, std::size_t{2}}) {
        harness::run_options o;
        o.world = world;
        o.steps = 10;
        o.bucket_elements = bucket;
        o.alignment = 8;
        o.staging_buffers = staging;
        runs.push_back(o);
      }
  return runs;
}

// The runs of every rule, for the device test and its host check: 1 to 3 ranks, buckets of 61,
// some gradients unreported, the gradients carrying `loss_scale` (fp16: fixed; 0: none).
inline std::vector<harness::run_options> rule_runs(double loss_scale) {
  std::vector<harness::run_options> runs;
  for (int world : {1, 2, 3}) {
    harness::run_options o;
    o.world = world;
    o.bucket_elements = 61;
    o.alignment = 4;
    o.loss_scale = loss_scale;
    o.skip_some = true;
    runs.push_back(o);
  }
  return runs;
}

// The accumulation configurations both the device test and its host check run: 3 ranks, 3
// micro-steps, some gradients unreported, reduced every micro-step or once, with and without a
// shared weight reported twice.
inline std::vector<harness::run_options> accumulation_runs() {
  std::vector<harness::run_options> runs;
  for (bool defer : {false, true})
    for (bool shared : {false, true}) {
      harness::run_options o;
      o.world = 3;
      o.micro_steps = 3;
      o.bucket_elements = 37;
      o.skip_some = true;
      o.defer_reduction = defer;
      o.shared_weight = shared;
      runs.push_back(o);
    }
  return runs;
}

template <class Engine>
typename Engine::options_type options_with(const typename Engine::hyperparameters_type& h) {
  typename Engine::options_type options;
  options.hyperparameters = h;
  return options;
}

// The dynamic loss-scaling schedule the device test runs: fp16 gradients carrying a scale of
// 2^17 overflow until the scale drops, a window of 3 grows it back into overflow, and three
// injected infinities (the first: step 6, rank 1, parameter 10).
template <class Engine>
typename Engine::options_type dynamic_scaling_options() {
  auto options = options_with<Engine>(harness::adamw_hyperparameters());
  options.loss_scale.kind = zero::loss_scale_options::mode::dynamic;
  options.loss_scale.initial_scale_power = 17;
  options.loss_scale.window = 3;
  options.loss_scale.hysteresis = 2;
  return options;
}

inline schedule dynamic_scaling_schedule() {
  schedule plan;
  plan.scale_by_engine = true;
  plan.poisons = {{6, 1, 10, 5}, {7, 2, 0, 0}, {11, 0, 6, 100}};
  return plan;
}

inline harness::run_options dynamic_scaling_run() {
  harness::run_options o;
  o.world = 3;
  o.steps = 16;
  o.bucket_elements = 37;
  return o;
}

}  // namespace mirror
