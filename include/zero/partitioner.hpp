#pragma once
//! @file partitioner.hpp
//! The Partitioner policy: where each parameter lives in one flat buffer, and which rank owns
//! which slice of it. Ships `contiguous_partitioner` (DeepSpeed's layout: rank r owns one
//! range) and `bucketed_partitioner` (Megatron's layout: fixed-size buckets, each split evenly
//! across the ranks).
//!
//! The parameters lie in the flat buffer in the order their gradients are expected to arrive
//! (`partition_options::order`; the engine passes the reverse of registration order by
//! default, as backward produces gradients last layer first), so that the buffer fills from
//! its start while backward runs.
//!
//! A partition is described by *reduction units*, reduced one after the other in unit order.
//! A unit shared by every rank (`owner == every_rank`) holds `world_size` slices of `slice`
//! elements; rank r's slice starts at flat index `flat_begin + r * rank_stride`, and one
//! reduce-scatter leaves each rank the sum of its own slice. A unit owned whole by rank `owner`
//! is one run of `slice` elements at `flat_begin`, reduced to that rank alone (a rooted reduce)
//! and sent back from it (a broadcast). Each rank's shard is the concatenation of its slices in
//! unit order (`shard_begin` is where a unit's slice starts in the shard of every rank that has
//! one). Units keep every reduction buffer at a constant size.

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "zero/error.hpp"

namespace zero {

//! Run-time choices of a partition.
struct partition_options {
  int world_size = 1;                     //!< ranks sharing the optimizer state; >= 1
  std::size_t alignment = 16;             //!< every slice is a multiple of this many elements; >= 1
  std::size_t bucket_elements = 1u << 22;  //!< elements reduced per collective (all ranks together); >= 1
  //! The parameters' order in the flat buffer, first to last: a permutation of 0..P-1 (the
  //! order their gradients are expected to arrive in). Empty: registration order 0, 1, ...
  std::span<const std::size_t> order = {};
};

//! `reduction_unit::owner` of a unit that every rank holds a slice of.
inline constexpr int every_rank = -1;

//! One collective's worth of the flat buffer (see the file comment).
struct reduction_unit {
  std::size_t flat_begin = 0;   //!< flat index of rank 0's slice (of the owner's run)
  std::size_t rank_stride = 0;  //!< distance between consecutive ranks' slices (unused when owned whole)
  std::size_t slice = 0;        //!< elements per rank that holds a slice
  std::size_t shard_begin = 0;  //!< where this unit's slice starts in the shard of each rank holding one
  int owner = every_rank;       //!< every_rank, or the one rank that owns the whole unit

  //! Whether rank `rank` holds a slice of this unit.
  constexpr bool held_by(int rank) const noexcept { return owner == every_rank || owner == rank; }
  //! Flat index of element i of the slice rank `rank` holds. @pre held_by(rank)
  constexpr std::size_t flat_index(int rank, std::size_t i) const noexcept {
    return owner == every_rank ? flat_begin + static_cast<std::size_t>(rank) * rank_stride + i : flat_begin + i;
  }
  //! Where element i of rank `rank`'s slice lies in the unit's reduction buffer (the slices of
  //! the ranks holding one, in rank order). @pre held_by(rank)
  constexpr std::size_t buffer_index(int rank, std::size_t i) const noexcept {
    return owner == every_rank ? static_cast<std::size_t>(rank) * slice + i : i;
  }
  //! Elements of the unit's reduction buffer: every rank's slice, or the owner's one.
  constexpr std::size_t elements(int world_size) const noexcept {
    return owner == every_rank ? static_cast<std::size_t>(world_size) * slice : slice;
  }
  friend constexpr bool operator==(const reduction_unit&, const reduction_unit&) = default;
};

//! A piece of one parameter that lies in one rank's slice of one unit.
struct owned_piece {
  std::size_t param = 0;         //!< index of the parameter
  std::size_t unit = 0;          //!< index of the reduction unit
  int rank = 0;                  //!< the rank that owns it
  std::size_t param_offset = 0;  //!< first element, counted within the parameter
  std::size_t flat_offset = 0;   //!< first element, counted in the flat buffer
  std::size_t shard_offset = 0;  //!< first element, counted in the owner's shard
  std::size_t count = 0;         //!< elements
  friend constexpr bool operator==(const owned_piece&, const owned_piece&) = default;
};

//! The complete answer of a partitioner for one layout and world size.
struct partition_plan {
  int world_size = 1;
  std::vector<std::size_t> param_offset;  //!< flat index of each parameter's first element
  std::vector<std::size_t> param_size;    //!< elements of each parameter
  std::size_t element_count = 0;          //!< sum of the parameter sizes
  std::size_t padded_size = 0;            //!< flat buffer size, padding included
  std::size_t shard_size = 0;             //!< elements each rank owns (padded_size / world_size)
  std::vector<reduction_unit> units;

  //! The largest slice of any unit.
  std::size_t max_slice() const noexcept {
    std::size_t m = 0;
    for (const auto& u : units) m = std::max(m, u.slice);
    return m;
  }
  //! Elements of the largest unit's reduction buffer (sizes the constant staging buffers).
  std::size_t max_unit_elements() const noexcept {
    std::size_t m = 0;
    for (const auto& u : units) m = std::max(m, u.elements(world_size));
    return m;
  }

  //! The parameters in flat-buffer order (the order the layout expects their gradients in).
  std::vector<std::size_t> order() const {
    std::vector<std::size_t> out(param_offset.size());
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = i;
    std::sort(out.begin(), out.end(), [&](std::size_t a, std::size_t b) {
      if (param_offset[a] != param_offset[b]) return param_offset[a] < param_offset[b];
      return param_size[a] != param_size[b] ? param_size[a] < param_size[b] : a < b;
    });
    return out;
  }

  //! Every piece of every parameter, ordered by unit, then rank, then flat offset.
  std::vector<owned_piece> pieces() const {
    std::vector<owned_piece> out;
    // params sorted by flat offset, so each slice is matched by a forward sweep
    std::vector<std::size_t> order(param_offset.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    // by offset, then size: an empty parameter sorts before the one starting where it does
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return param_offset[a] != param_offset[b] ? param_offset[a] < param_offset[b] : param_size[a] < param_size[b];
    });
    for (std::size_t k = 0; k < units.size(); ++k) {
      const auto& u = units[k];
      for (int r = 0; r < world_size; ++r) {
        if (!u.held_by(r)) continue;
        const std::size_t lo = u.flat_index(r, 0), hi = lo + u.slice;
        // first parameter that ends after lo
        auto it = std::partition_point(order.begin(), order.end(), [&](std::size_t p) {
          return param_offset[p] + param_size[p] <= lo;
        });
        for (; it != order.end() && param_offset[*it] < hi; ++it) {
          const std::size_t p = *it;
          const std::size_t b = std::max(lo, param_offset[p]);
          const std::size_t e = std::min(hi, param_offset[p] + param_size[p]);
          if (b >= e) continue;
          out.push_back({p, k, r, b - param_offset[p], b, u.shard_begin + (b - lo), e - b});
        }
      }
    }
    return out;
  }

  //! Which ranks own which pieces of parameter `param`.
  std::vector<owned_piece> pieces_of(std::size_t param) const {
    std::vector<owned_piece> all = pieces();
    std::erase_if(all, [&](const owned_piece& p) { return p.param != param; });
    return all;
  }
};

//! The largest flat buffer (elements, padding included) a plan may describe: 2^56, far beyond
//! any model, and small enough that its size in bytes of any element type fits in a size_t.
inline constexpr std::size_t max_flat_elements = std::size_t{1} << 56;

//! Packs parameters back to back and pads the total to a multiple of alignment * world size.
//! The starting point of both shipped partitioners, and of user-written ones.
//! @throws usage_error for a world size, alignment or bucket size below 1, or a padded total
//!         above `max_flat_elements`.
inline partition_plan flat_layout(std::span<const std::size_t> sizes, const partition_options& options) {
  if (options.world_size < 1) throw usage_error("zero: partition world_size must be >= 1, got " + std::to_string(options.world_size));
  if (options.alignment < 1) throw usage_error("zero: partition alignment must be >= 1 element");
  if (options.bucket_elements < 1) throw usage_error("zero: partition bucket_elements must be >= 1");
  // The flat buffer's size, padding included, is refused beyond max_flat_elements, so that every
  // buffer size the engine derives from it (elements x bytes per element) fits in a size_t.
  const std::size_t n = static_cast<std::size_t>(options.world_size);
  if (options.alignment > max_flat_elements / n)
    throw usage_error("zero: partition alignment " + std::to_string(options.alignment) + " x world_size " +
                      std::to_string(n) + " exceeds the largest flat buffer (2^56 elements)");
  const std::size_t quantum = options.alignment * n;
  if (!options.order.empty()) {
    if (options.order.size() != sizes.size())
      throw usage_error("zero: the layout order names " + std::to_string(options.order.size()) + " parameters; " +
                        std::to_string(sizes.size()) + " are registered");
    std::vector<bool> seen(sizes.size(), false);
    for (std::size_t i = 0; i < options.order.size(); ++i) {
      const std::size_t p = options.order[i];
      if (p >= sizes.size())
        throw usage_error("zero: the layout order names parameter #" + std::to_string(p) + " at position " +
                          std::to_string(i) + "; only " + std::to_string(sizes.size()) + " are registered");
      if (seen[p])
        throw usage_error("zero: the layout order names parameter #" + std::to_string(p) + " twice (again at position " +
                          std::to_string(i) + ")");
      seen[p] = true;
    }
  }
  partition_plan plan;
  plan.world_size = options.world_size;
  plan.param_offset.assign(sizes.size(), 0);
  plan.param_size.assign(sizes.begin(), sizes.end());
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const std::size_t p = options.order.empty() ? i : options.order[i];
    plan.param_offset[p] = plan.element_count;
    if (sizes[p] > max_flat_elements - plan.element_count)
      throw usage_error("zero: the parameters laid out up to #" + std::to_string(p) + " hold more than 2^56 elements together");
    plan.element_count += sizes[p];
  }
  const std::size_t quanta = plan.element_count / quantum + (plan.element_count % quantum != 0 ? 1 : 0);
  if (quanta > max_flat_elements / quantum)
    throw usage_error("zero: " + std::to_string(plan.element_count) + " elements padded to a multiple of alignment " +
                      std::to_string(options.alignment) + " x world_size " + std::to_string(n) +
                      " exceed the largest flat buffer (2^56 elements)");
  plan.padded_size = quanta * quantum;
  plan.shard_size = plan.padded_size / static_cast<std::size_t>(options.world_size);
  return plan;
}

//! Elements per rank in one unit: the bucket split across the ranks, rounded up to the
//! alignment, never more than a whole shard.
constexpr std::size_t unit_slice(std::size_t shard_size, const partition_options& options) noexcept {
  const std::size_t n = static_cast<std::size_t>(options.world_size);
  // written so that nothing overflows, whatever bucket_elements is (a flat_layout shard is at
  // most 2^56 elements, and so is its alignment)
  const std::size_t per_rank = options.bucket_elements / n + (options.bucket_elements % n != 0 ? 1 : 0);
  if (per_rank >= shard_size) return shard_size;
  const std::size_t aligned = (per_rank + options.alignment - 1) / options.alignment * options.alignment;
  return std::min(aligned, shard_size);
}

namespace detail {

//! Each rank's next shard element while a plan's units are walked in order: the elements of the
//! units every rank holds a slice of (`shared`) plus, per owner, those of the units it owns
//! whole. Stored per owner only, so that a plan of a huge world size costs no memory.
class shard_cursors {
 public:
  explicit shard_cursors(std::uint64_t world_size) : world_(world_size) {}

  //! A rank holding a slice of u whose shard does not continue at `u.shard_begin`, or -1.
  long long first_not_continued(const reduction_unit& u) const {
    if (u.owner != every_rank) return at(static_cast<std::uint64_t>(u.owner)) == u.shard_begin ? -1 : u.owner;
    if (owned_.size() < world_ && shared_ != u.shard_begin) return static_cast<long long>(first_without_owned());
    for (const auto& [q, n] : owned_)
      if (shared_ + n != u.shard_begin) return static_cast<long long>(q);
    return -1;
  }
  //! Adds u's slice to the shard of every rank holding one. @pre no overflow (the caller checks)
  void advance(const reduction_unit& u) {
    if (u.owner == every_rank) shared_ += u.slice;
    else owned_[static_cast<std::uint64_t>(u.owner)] += u.slice;
  }
  //! Rank q's next shard element.
  std::uint64_t at(std::uint64_t q) const {
    const auto it = owned_.find(q);
    return shared_ + (it == owned_.end() ? 0 : it->second);
  }
  //! A rank whose shard the units do not fill up to `shard_size`, or -1.
  long long first_not_filled(std::uint64_t shard_size) const {
    if (owned_.size() < world_ && shared_ != shard_size) return static_cast<long long>(first_without_owned());
    for (const auto& [q, n] : owned_)
      if (shared_ + n != shard_size) return static_cast<long long>(q);
    return -1;
  }

 private:
  std::uint64_t first_without_owned() const {
    std::uint64_t q = 0;
    for (const auto& entry : owned_) {
      if (entry.first != q) break;
      ++q;
    }
    return q;
  }
  std::uint64_t world_;
  std::uint64_t shared_ = 0;
  std::map<std::uint64_t, std::uint64_t> owned_;
};

}  // namespace detail

//! Checks that a plan covers its layout: every flat element in exactly one slice, shards
//! consistent, parameters inside the buffer. Throws `usage_error` naming the first violation.
inline void validate_plan(const partition_plan& plan, std::span<const std::size_t> sizes, int world_size) {
  auto fail = [](const std::string& what) { throw usage_error("zero: invalid partition plan: " + what); };
  if (plan.world_size != world_size) fail("world_size " + std::to_string(plan.world_size) + " != communicator's " + std::to_string(world_size));
  if (plan.param_size.size() != sizes.size() || plan.param_offset.size() != sizes.size()) fail("parameter count differs from the layout");
  if (plan.padded_size != plan.shard_size * static_cast<std::size_t>(world_size)) fail("padded_size != shard_size * world_size");
  std::size_t count = 0;
  for (std::size_t p = 0; p < sizes.size(); ++p) {
    if (plan.param_size[p] != sizes[p]) fail("size of parameter #" + std::to_string(p) + " differs from the layout");
    if (plan.param_offset[p] + sizes[p] > plan.padded_size) fail("parameter #" + std::to_string(p) + " lies outside the flat buffer");
    count += sizes[p];
  }
  if (plan.element_count != count) fail("element_count differs from the sum of the sizes");
  // parameters must not overlap in the flat buffer
  std::vector<std::size_t> order(sizes.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return plan.param_offset[a] != plan.param_offset[b] ? plan.param_offset[a] < plan.param_offset[b] : sizes[a] < sizes[b];
  });
  for (std::size_t i = 1; i < order.size(); ++i) {
    if (plan.param_offset[order[i - 1]] + sizes[order[i - 1]] > plan.param_offset[order[i]])
      fail("parameters #" + std::to_string(order[i - 1]) + " and #" + std::to_string(order[i]) + " overlap in the flat buffer");
  }
  // slices must tile [0, padded_size) and each rank's slices must tile its shard in unit order
  struct interval { std::size_t begin, end; };
  std::vector<interval> slices;
  detail::shard_cursors cursors(static_cast<std::uint64_t>(world_size));
  for (std::size_t k = 0; k < plan.units.size(); ++k) {
    const auto& u = plan.units[k];
    const std::string which = "unit " + std::to_string(k);
    if (u.slice == 0) fail(which + " is empty");
    if (u.owner != every_rank && (u.owner < 0 || u.owner >= world_size))
      fail(which + " is owned by rank " + std::to_string(u.owner) + ", outside a group of " + std::to_string(world_size));
    if (const long long r = cursors.first_not_continued(u); r >= 0)
      fail(which + " does not continue the shard of rank " + std::to_string(r));
    cursors.advance(u);
    for (int r = 0; r < world_size; ++r)
      if (u.held_by(r)) slices.push_back({u.flat_index(r, 0), u.flat_index(r, u.slice)});
  }
  if (const long long r = cursors.first_not_filled(plan.shard_size); r >= 0)
    fail("units cover " + std::to_string(cursors.at(static_cast<std::uint64_t>(r))) + " shard elements of rank " + std::to_string(r) +
         ", not " + std::to_string(plan.shard_size));
  std::sort(slices.begin(), slices.end(), [](interval a, interval b) { return a.begin < b.begin; });
  std::size_t at = 0;
  for (const auto& s : slices) {
    if (s.begin != at) fail("slices do not tile the flat buffer at element " + std::to_string(at));
    at = s.end;
  }
  if (at != plan.padded_size) fail("slices end at " + std::to_string(at) + ", not at padded_size " + std::to_string(plan.padded_size));
}

//! A Partitioner maps a layout (parameter sizes) and options to a `partition_plan`.
//! The engine validates the plan (`validate_plan`), so a user-written partitioner that
//! returns an inconsistent plan is refused at construction with the reason.
template <class P>
concept partitioner = std::default_initializable<P> &&
                      requires(const P& p, std::span<const std::size_t> sizes, const partition_options& o) {
                        { p.plan(sizes, o) } -> std::same_as<partition_plan>;
                      };

//! DeepSpeed's layout: rank r owns the contiguous range [r * shard, (r + 1) * shard) of the
//! flat buffer. Each range is cut into runs of up to `bucket_elements` (rounded up to the
//! alignment), each a unit owned whole by that rank, in flat order: as the buffer fills in
//! arrival order, each run is reduced to its owner as soon as its gradients are in, as DeepSpeed
//! reduces its arrival-order buckets to the owning ranks. A bucket that holds the whole buffer
//! is one unit shared by every rank instead (each rank's slice its whole range): one
//! reduce-scatter, where runs would be one reduce per rank.
struct contiguous_partitioner {
  //! Elements of a unit owned whole (a run of one rank's range): the bucket rounded up to the
  //! alignment, never more than a shard.
  static constexpr std::size_t unit_run(std::size_t shard_size, const partition_options& options) noexcept {
    if (options.bucket_elements >= shard_size) return shard_size;
    const std::size_t aligned = (options.bucket_elements + options.alignment - 1) / options.alignment * options.alignment;
    return aligned < shard_size ? aligned : shard_size;
  }
  //! Whether the bucket holds the whole flat buffer (one shared unit).
  static constexpr bool one_bucket(std::size_t shard_size, const partition_options& options) noexcept {
    return options.bucket_elements / static_cast<std::size_t>(options.world_size) >= shard_size;
  }
  //! Elements of the largest unit's reduction buffer (`partition_plan::max_unit_elements`).
  static constexpr std::size_t largest_unit(std::size_t shard_size, const partition_options& options) noexcept {
    return one_bucket(shard_size, options) ? static_cast<std::size_t>(options.world_size) * shard_size
                                           : unit_run(shard_size, options);
  }

  partition_plan plan(std::span<const std::size_t> sizes, const partition_options& options) const {
    partition_plan plan = flat_layout(sizes, options);
    if (plan.shard_size == 0) return plan;
    if (one_bucket(plan.shard_size, options)) {
      plan.units.push_back({0, plan.shard_size, plan.shard_size, 0});
      return plan;
    }
    const std::size_t run = unit_run(plan.shard_size, options);
    for (int r = 0; r < options.world_size; ++r)
      for (std::size_t at = 0; at < plan.shard_size; at += run)
        plan.units.push_back({static_cast<std::size_t>(r) * plan.shard_size + at, 0, std::min(run, plan.shard_size - at), at, r});
    return plan;
  }
};

//! Megatron's layout: the flat buffer is cut into buckets of (world_size * slice) elements and
//! rank r owns the r-th slice of every bucket, so each bucket's reduction is one reduce-scatter
//! of contiguous memory and a bucket is ready as soon as the parameters inside it are.
struct bucketed_partitioner {
  //! Elements of the largest unit's reduction buffer (`partition_plan::max_unit_elements`).
  static constexpr std::size_t largest_unit(std::size_t shard_size, const partition_options& options) noexcept {
    return static_cast<std::size_t>(options.world_size) * unit_slice(shard_size, options);
  }

  partition_plan plan(std::span<const std::size_t> sizes, const partition_options& options) const {
    partition_plan plan = flat_layout(sizes, options);
    const std::size_t slice = unit_slice(plan.shard_size, options);
    const std::size_t n = static_cast<std::size_t>(options.world_size);
    for (std::size_t at = 0; at < plan.shard_size; at += slice) {
      const std::size_t s = std::min(slice, plan.shard_size - at);
      plan.units.push_back({at * n, s, s, at});
    }
    return plan;
  }
};

static_assert(partitioner<contiguous_partitioner>);
static_assert(partitioner<bucketed_partitioner>);

}  // namespace zero
