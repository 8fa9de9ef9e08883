#pragma once
// The MPI side of the equivalence tests: one rank of harness::run (tests/engine/harness.hpp)
// with a zero::mpi_communicator, so that a configuration can be run as separate processes and
// compared bitwise with the same configuration on thread ranks.

#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/harness.hpp"
#include "zero/mpi/communicator.hpp"

namespace mpi_harness {

// What one MPI rank ends with.
struct rank_result {
  std::vector<std::vector<float>> params;  // final framework parameters, as float
  std::vector<std::vector<float>> values;  // the values this rank updates, per parameter (others 0)
  std::vector<std::vector<char>> owned;    // which elements of `values` this rank updates
  zero::traffic_counters step_traffic;     // the first step
  zero::memory_report memory;
};

// The rank body of harness::run with this rank's communicator: same initial values, same
// gradients, same per-rank random report order.
template <class Optimizer>
rank_result run(zero::mpi_communicator& comm, const harness::run_options& o,
                const typename Optimizer::hyperparameters_type& h = {}) {
  using P = typename Optimizer::param_type;
  using G = typename Optimizer::grad_type;
  const auto& sizes = harness::model_sizes;
  const std::size_t n_params = sizes.size();
  const int rank = comm.rank();
  auto reported = [&](int t, int r, std::size_t p) {
    return !o.skip_some || (harness::mix(static_cast<std::uint64_t>(t * 131 + r * 17) + p) % 5) != 0;
  };

  std::vector<std::vector<P>> storage(n_params);
  std::vector<zero::parameter<P>> params;
  for (std::size_t p = 0; p < n_params; ++p) {
    storage[p].resize(sizes[p]);
    for (std::size_t i = 0; i < sizes[p]; ++i) storage[p][i] = P(harness::initial_value(p, i));
  }
  for (std::size_t p = 0; p < n_params; ++p) params.push_back({"p" + std::to_string(p), {storage[p].data(), storage[p].size()}});
  typename Optimizer::options_type options;
  options.hyperparameters = h;
  options.layout.bucket_elements = o.bucket_elements;
  options.layout.alignment = o.alignment;
  options.layout.gradient_slots = o.slots;
  options.layout.staging_buffers = o.staging_buffers;
  Optimizer opt(comm, params, options);

  rank_result result;
  std::vector<std::vector<G>> grads(n_params);
  std::vector<std::size_t> order(n_params);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(o.order_seed * 1000 + static_cast<std::uint64_t>(rank));
  for (int t = 0; t < o.steps; ++t) {
    const auto before = comm.traffic();
    std::shuffle(order.begin(), order.end(), rng);
    for (std::size_t p : order) {
      if (!reported(t, rank, p)) continue;
      grads[p].resize(sizes[p]);
      for (std::size_t i = 0; i < sizes[p]; ++i) grads[p][i] = harness::gradient<G>(t, rank, p, i);
      if (o.slots) {
        auto slot = opt.grad_slot(p);
        std::copy(grads[p].begin(), grads[p].end(), slot.data);
        opt.gradient_ready(p);
      } else {
        opt.gradient_ready(p, {grads[p].data(), grads[p].size()});
      }
    }
    opt.step();
    if (t == 0) result.step_traffic = comm.traffic() - before;
  }
  for (std::size_t p = 0; p < n_params; ++p) {
    result.params.emplace_back();
    for (auto v : storage[p]) result.params.back().push_back(static_cast<float>(v));
    result.values.emplace_back(sizes[p], 0.0f);
    result.owned.emplace_back(sizes[p], 0);
  }
  constexpr bool has_values = Optimizer::precision_type::has_master || Optimizer::stage_value != zero::stage0;
  const auto values = opt.values();
  for (const auto& piece : opt.owned_pieces()) {
    const std::size_t at = Optimizer::stage_value == zero::stage0 ? piece.flat_offset : piece.shard_offset;
    for (std::size_t i = 0; i < piece.count; ++i) {
      result.values[piece.param][piece.param_offset + i] =
          has_values ? static_cast<float>(values[at + i]) : static_cast<float>(storage[piece.param][piece.param_offset + i]);
      result.owned[piece.param][piece.param_offset + i] = 1;
    }
  }
  result.memory = opt.memory();
  return result;
}

// Bitwise comparison of float vectors (NaN payloads included).
inline bool same_bits(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t p = 0; p < a.size(); ++p) {
    if (a[p].size() != b[p].size()) return false;
    for (std::size_t i = 0; i < a[p].size(); ++i)
      if (zero::bit_cast<std::uint32_t>(a[p][i]) != zero::bit_cast<std::uint32_t>(b[p][i])) return false;
  }
  return true;
}

// Elements this rank updates whose value differs (bitwise) from the thread run's.
inline std::size_t owned_value_mismatches(const rank_result& mine, const harness::run_result& threads) {
  std::size_t bad = 0;
  for (std::size_t p = 0; p < mine.values.size(); ++p)
    for (std::size_t i = 0; i < mine.values[p].size(); ++i)
      if (mine.owned[p][i] && zero::bit_cast<std::uint32_t>(mine.values[p][i]) != zero::bit_cast<std::uint32_t>(threads.values[p][i])) ++bad;
  return bad;
}

// 1 on every rank when `ok` holds on every rank of MPI_COMM_WORLD (a plain blocking MPI call:
// used only after the checked code finished on every rank).
inline bool all_ranks(bool ok) {
  int mine = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

}  // namespace mpi_harness
