// Fuzz target of the registration of parameter layouts: random parameter counts and sizes,
// alignments, bucket sizes and world sizes (zero, one, primes, powers of two, the largest values
// a size_t holds) through both partitioners, `validate_plan`, `expected_memory`, and real
// `zero::optimizer`s (stages 0, 1, 2; 1 to 3 staging buffers) on a `single_rank_communicator` or
// a thread group of 2 to 4 ranks. Built with clang -fsanitize=fuzzer,address,undefined (cmake/zeroFuzz.cmake) and,
// always, into the g++ replay test (replay_test.cpp).
//
// Properties checked on every input:
//  * a partitioner either refuses the layout with a `zero::usage_error` (exactly when the world
//    size, alignment or bucket size is below 1 or the padded buffer would pass
//    `zero::max_flat_elements`) or returns a plan that `validate_plan` accepts, whose sizes are
//    the exact arithmetic's, whose pieces cover every parameter once, and whose shard and slice
//    sizes are those `expected_memory` assumes;
//  * an engine either refuses its parameters with a `zero::usage_error` (exactly for no
//    parameters, a null or empty span, overlapping spans, zero reports, a refused layout, or no
//    staging buffer or several without non-blocking collectives) or
//    is built with exactly `expected_memory` bytes from its memory resource, takes a step, and
//    leaves every rank with the same finite parameters;
//  * nothing crashes, overflows, reads out of bounds or allocates beyond what the layout needs
//    (sizes are fictional in the partitioner half, so it runs only where the plan's own arrays
//    stay small; engines are built only where expected_memory says a few MiB).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory_resource>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "fuzz_input.hpp"
#include "zero/zero.hpp"

struct layout_fuzz_counts {
  std::size_t plans = 0, plans_refused = 0, engines_built = 0, engines_refused = 0;
};

namespace {

__extension__ typedef unsigned __int128 wide;

void require(bool ok) {
  if (!ok) std::abort();
}

// ---- the exact arithmetic of a layout ----------------------------------------------------------

struct prediction {
  bool refused = false;
  wide total = 0, padded = 0, shard = 0, slice = 0, units = 0;
  wide run = 0, runs = 0;  // the contiguous partitioner: units owned whole, `runs` per rank,
  bool one_bucket = false;  // or one unit shared by every rank
};

prediction predict(const std::vector<std::size_t>& sizes, int world, std::size_t alignment, std::size_t bucket) {
  prediction p;
  if (world < 1 || alignment < 1 || bucket < 1) return {true};
  const wide n = static_cast<wide>(world), max = zero::max_flat_elements;
  for (std::size_t s : sizes) p.total += s;
  const wide quantum = wide{alignment} * n;
  p.padded = (p.total + quantum - 1) / quantum * quantum;
  if (quantum > max || p.total > max || p.padded > max) return {true};
  p.shard = p.padded / n;
  const wide per_rank = (wide{bucket} + n - 1) / n;
  p.slice = std::min((per_rank + alignment - 1) / alignment * alignment, p.shard);
  p.units = p.slice == 0 ? 0 : (p.shard + p.slice - 1) / p.slice;
  p.one_bucket = wide{bucket} >= p.padded;  // the contiguous partitioner: one unit shared by every rank
  p.run = wide{bucket} >= p.shard ? p.shard : std::min((wide{bucket} + alignment - 1) / alignment * alignment, p.shard);
  p.runs = p.run == 0 ? 0 : (p.shard + p.run - 1) / p.run;
  return p;
}

// The layout to give expected_memory: the same (its closed form cuts slices as the partitioners
// do, without wrapping for buckets near 2^64).
zero::layout_options closed_form_layout(std::size_t alignment, std::size_t bucket, zero::layout_options layout = {}) {
  layout.alignment = alignment;
  layout.bucket_elements = bucket;
  return layout;
}

// ---- the partitioner half ----------------------------------------------------------------------

template <class Partitioner>
void check_partitioner(const std::vector<std::size_t>& sizes, const zero::partition_options& o, const prediction& expect) {
  zero::partition_plan plan;
  try {
    plan = Partitioner{}.plan(sizes, o);
  } catch (const zero::usage_error& e) {
    require(expect.refused && std::strlen(e.what()) > 0);
    return;
  }
  require(!expect.refused);
  zero::validate_plan(plan, sizes, o.world_size);  // a usage_error here is a bug: abort via terminate
  require(plan.element_count == expect.total && plan.padded_size == expect.padded && plan.shard_size == expect.shard);
  const std::size_t n = static_cast<std::size_t>(o.world_size);
  if constexpr (std::is_same_v<Partitioner, zero::contiguous_partitioner>) {
    if (expect.one_bucket)
      require(plan.units.size() == (expect.shard == 0 ? 0 : 1) && plan.max_slice() == expect.shard &&
              plan.max_unit_elements() == expect.padded);
    else
      require(plan.units.size() == expect.runs * n && plan.max_slice() == expect.run && plan.max_unit_elements() == expect.run);
  } else {
    require(plan.units.size() == expect.units && plan.max_slice() == expect.slice && plan.max_unit_elements() == n * expect.slice);
  }
  // every element of every parameter in exactly one piece, each piece where the plan says
  std::vector<wide> covered(sizes.size(), 0);
  for (const zero::owned_piece& piece : plan.pieces()) {
    require(piece.param < sizes.size() && piece.unit < plan.units.size() && piece.count > 0);
    require(piece.param_offset + wide{piece.count} <= sizes[piece.param]);
    require(piece.flat_offset == plan.param_offset[piece.param] + piece.param_offset);
    const zero::reduction_unit& u = plan.units[piece.unit];
    require(u.held_by(piece.rank));
    const std::size_t lo = u.flat_index(piece.rank, 0);
    require(piece.flat_offset >= lo && piece.flat_offset + wide{piece.count} <= lo + wide{u.slice});
    require(piece.shard_offset == u.shard_begin + (piece.flat_offset - lo));
    covered[piece.param] += piece.count;
  }
  for (std::size_t p = 0; p < sizes.size(); ++p) require(covered[p] == sizes[p]);
  // the closed form agrees on the shard, the padded buffer and the bucket slice
  const zero::layout_options layout = closed_form_layout(o.alignment, o.bucket_elements);
  for (zero::stage s : {zero::stage0, zero::stage1, zero::stage2}) {
    const auto m = zero::expected_memory<zero::fp32_precision, Partitioner>(plan.element_count, o.world_size, s, 2, layout);
    const std::size_t grads = s == zero::stage2 ? plan.shard_size : plan.padded_size;
    require(m.of(zero::memory_kind::gradients) == grads * sizeof(float));
    require(m.of(zero::memory_kind::buckets) == plan.max_unit_elements() * sizeof(float));
    require(m.of(zero::memory_kind::parameter_shard) == (s == zero::stage0 ? 0 : plan.shard_size * sizeof(float)));
  }
}

// ---- the engine half ---------------------------------------------------------------------------

// A memory resource that counts what the engine takes from it.
class counting_resource : public std::pmr::memory_resource {
 public:
  std::size_t allocated = 0;

 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    allocated += bytes;
    return std::pmr::new_delete_resource()->allocate(bytes, alignment);
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override {
    std::pmr::new_delete_resource()->deallocate(p, bytes, alignment);
  }
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override { return this == &other; }
};

struct engine_case {
  std::vector<std::size_t> sizes;
  int world = 1;
  zero::layout_options layout;
  int stage = 2;
  bool bucketed = false;
  bool null_span = false, overlap = false, zero_reports = false;  // each makes the input invalid
  std::size_t broken = 0;                                       // the parameter they break
  std::uint64_t order_seed = 0;                                 // gradient order, skipped reports
};

using precision = zero::bf16_mixed;
using param_t = precision::param_type;

// One rank: registers the case's parameters, checks the memory, takes one step. Returns the
// parameters after the step.
template <zero::stage S, class Partitioner, class Comm>
std::vector<param_t> run_rank(Comm& comm, const engine_case& c) {
  using engine = zero::optimizer<S, precision, zero::adamw, Partitioner, Comm>;
  std::size_t total = 0;
  for (std::size_t s : c.sizes) total += s;
  std::vector<param_t> storage(total + 1);
  std::vector<param_t> grads(total + 1);
  for (std::size_t i = 0; i < storage.size(); ++i) {
    storage[i] = param_t(0.5f + 0.001f * static_cast<float>(i % 97));
    grads[i] = param_t(0.01f * static_cast<float>(static_cast<int>((i * 7 + static_cast<std::size_t>(comm.rank())) % 13) - 6));
  }
  std::vector<zero::parameter<param_t>> params;
  std::vector<std::size_t> offset;
  std::size_t at = 0;
  for (std::size_t p = 0; p < c.sizes.size(); ++p) {
    offset.push_back(at);
    params.push_back({"p" + std::to_string(p), {storage.data() + at, c.sizes[p]}});
    at += c.sizes[p];
  }
  if (!params.empty()) {
    auto& b = params[c.broken % params.size()];
    if (c.null_span) b.values.data = nullptr;
    if (c.overlap && c.broken % params.size() > 0) b.values.data = params[c.broken % params.size() - 1].values.data;
    if (c.zero_reports) b.reports = 0;
  }
  counting_resource resource;
  typename engine::options_type options;
  options.layout = c.layout;
  options.memory = &resource;
  options.threads = 1;
  engine opt(comm, params, options);
  // exactly what the closed form says, all of it from the resource
  std::size_t largest = 0;
  for (std::size_t s : c.sizes) largest = std::max(largest, s);
  const auto expected = zero::expected_memory<precision, Partitioner>(
      total, c.world, S, opt.state_count(), closed_form_layout(c.layout.alignment, c.layout.bucket_elements, c.layout), largest);
  require(opt.memory() == expected && resource.allocated == expected.total());
  // gradients in an order of this rank's own, some parameters not reported at all
  std::vector<std::size_t> order(params.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::uint64_t x = c.order_seed ^ (0x9e3779b97f4a7c15ull * static_cast<std::uint64_t>(comm.rank() + 1));
  for (std::size_t i = order.size(); i > 1; --i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    std::swap(order[i - 1], order[(x >> 33) % i]);
  }
  for (std::size_t p : order) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    if ((x >> 60) == 0) continue;  // about one in sixteen: never reported, counts as zero
    if (c.layout.gradient_slots) {
      const auto slot = opt.grad_slot(p);
      std::memcpy(slot.data, grads.data() + offset[p], slot.size * sizeof(param_t));
      opt.gradient_ready(p);
    } else {
      opt.gradient_ready(p, {grads.data() + offset[p], c.sizes[p]});
    }
  }
  const zero::step_report report = opt.step();
  require(report.step == 1 && !report.skipped && std::isfinite(report.grad_norm));
  storage.resize(total);
  for (param_t v : storage) require(std::isfinite(static_cast<float>(v)));
  return storage;
}

template <zero::stage S, class Partitioner>
void run_engine(const engine_case& c) {
  if (c.world == 1) {
    zero::single_rank_communicator comm;
    run_rank<S, Partitioner>(comm, c);
    return;
  }
  zero::thread_group_options group_options;
  group_options.timeout = std::chrono::seconds(60);
  zero::thread_group group(c.world, group_options);
  std::vector<std::vector<param_t>> results(static_cast<std::size_t>(c.world));
  group.run([&](zero::thread_communicator& comm) {
    results[static_cast<std::size_t>(comm.rank())] = run_rank<S, Partitioner>(comm, c);
  });
  for (const auto& r : results)  // every rank holds the same updated parameters
    require(r.size() == results[0].size() && std::memcmp(r.data(), results[0].data(), r.size() * sizeof(param_t)) == 0);
}

template <class Partitioner>
void run_engine_stage(const engine_case& c) {
  if (c.stage == 0) run_engine<zero::stage0, Partitioner>(c);
  else if (c.stage == 1) run_engine<zero::stage1, Partitioner>(c);
  else run_engine<zero::stage2, Partitioner>(c);
}

void check_engine(const engine_case& c, const prediction& layout, layout_fuzz_counts& counts) {
  bool invalid = c.sizes.empty() || layout.refused || c.zero_reports || c.null_span;
  // no staging buffer, or several on a communicator without non-blocking collectives
  invalid = invalid || c.layout.staging_buffers == 0 || (c.layout.staging_buffers > 1 && c.world == 1);
  for (std::size_t s : c.sizes) invalid = invalid || s == 0;
  if (c.overlap && c.sizes.size() > 1 && c.broken % c.sizes.size() > 0) invalid = true;
  try {
    if (c.bucketed) run_engine_stage<zero::bucketed_partitioner>(c);
    else run_engine_stage<zero::contiguous_partitioner>(c);
  } catch (const zero::usage_error& e) {
    require(invalid && std::strlen(e.what()) > 0);
    ++counts.engines_refused;
    return;
  }
  require(!invalid);
  ++counts.engines_built;
}

}  // namespace

//! What the inputs so far reached (the g++ replay prints it).
layout_fuzz_counts zero_fuzz_layout_counts;

int zero_fuzz_layout(const std::uint8_t* data, std::size_t size) {
  fuzz::reader in(data, size);
  const std::uint8_t shape = in.byte();
  // the world size: usually 1 to 8, sometimes below 1 or very large
  int world = static_cast<int>(in.byte() % 8) + 1;
  if (shape & 0x01) world = static_cast<int>(static_cast<std::int32_t>(in.bits(4)));
  std::size_t alignment = in.size(), bucket = in.size();
  if (shape & 0x02) alignment = in.byte() % 32 + 1;  // mostly usable alignments
  const std::size_t count = in.byte() % 40;
  std::vector<std::size_t> sizes;
  for (std::size_t i = 0; i < count; ++i) sizes.push_back(in.size());
  const prediction expect = predict(sizes, world, alignment, bucket);

  // partitioners, on fictional sizes: only where the plan's own arrays stay small
  if (expect.refused || expect.units * static_cast<wide>(world) + sizes.size() <= 4096) {
    const zero::partition_options o{world, alignment, bucket};
    check_partitioner<zero::contiguous_partitioner>(sizes, o, expect);
    check_partitioner<zero::bucketed_partitioner>(sizes, o, expect);
    ++(expect.refused ? zero_fuzz_layout_counts.plans_refused : zero_fuzz_layout_counts.plans);
  }

  // real engines, on real memory: only small layouts and at most 4 ranks
  engine_case c;
  c.sizes = sizes;
  c.world = world;
  c.layout.alignment = alignment;
  c.layout.bucket_elements = bucket;
  const std::uint8_t mode = in.byte();
  c.stage = mode % 3;
  c.bucketed = (mode & 0x04) != 0;
  c.layout.gradient_slots = (mode & 0x08) != 0;
  c.layout.defer_reduction = (mode & 0x10) != 0;
  const int staging = mode >> 5;  // pipelined reductions: 1 to 3 staging buffers, or 0 (refused)
  c.layout.staging_buffers = staging == 7 ? 0 : 1 + static_cast<std::size_t>(staging % 3);
  const std::uint8_t faults = in.byte();
  c.null_span = faults == 1;
  c.overlap = faults == 2;
  c.zero_reports = faults == 3;
  c.broken = in.byte();
  c.order_seed = in.bits(8);
  wide elements = 0;
  for (std::size_t s : sizes) elements += s;
  if (world < 1 || world > 4 || elements > 20000) return 0;
  if (!expect.refused) {
    if (alignment > 4096 || expect.padded > (wide{1} << 20)) return 0;
    const auto m = zero::expected_memory<precision, zero::bucketed_partitioner>(static_cast<std::size_t>(expect.total), world,
                                                                                zero::stage0, 2, closed_form_layout(alignment, bucket, c.layout));
    if (m.total() > (std::size_t{8} << 20)) return 0;
  }
  check_engine(c, expect, zero_fuzz_layout_counts);
  return 0;
}

#ifdef ZERO_LIBFUZZER
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) { return zero_fuzz_layout(data, size); }
#endif
