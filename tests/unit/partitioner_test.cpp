// Partitioners: contiguous_partitioner and bucketed_partitioner over many layouts, checked by an
// independent brute-force ownership map; validate_plan on good and hand-corrupted plans;
// flat_layout's option checks.

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "zero/error.hpp"
#include "zero/partitioner.hpp"

namespace {

using sizes_t = std::vector<std::size_t>;

//! Deterministic layouts: tiny and 1-element parameters, parameters smaller than most world
//! sizes, odd sizes, one large parameter, and a pseudo-random layout from a fixed seed.
std::vector<sizes_t> layouts() {
  std::vector<sizes_t> out = {
      {1},
      {1, 1, 1},
      {3},
      {2, 1},
      {5, 1, 2},
      {7, 13, 1, 64, 3},
      {100},
      {16, 16, 16, 16},
      {1000, 1, 17, 256, 255, 2},
  };
  std::uint64_t state = 0x9e3779b97f4a7c15ull;  // fixed seed (splitmix64)
  auto next = [&] {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  sizes_t random_layout;
  for (int i = 0; i < 24; ++i) random_layout.push_back(1 + next() % (i % 3 == 0 ? 7 : 300));
  out.push_back(random_layout);
  return out;
}

const int world_sizes[] = {1, 2, 3, 4, 5, 7, 8};
const std::size_t alignments[] = {1, 4, 16};
const std::size_t bucket_sizes[] = {1, 13, 97, std::size_t{1} << 22};  // 1, primes, larger than any model here

std::string describe(const sizes_t& sizes, const zero::partition_options& o) {
  std::ostringstream s;
  s << "sizes {";
  for (std::size_t i = 0; i < sizes.size(); ++i) s << (i ? " " : "") << sizes[i];
  s << "} world " << o.world_size << " alignment " << o.alignment << " bucket " << o.bucket_elements;
  return s.str();
}

enum class kind { contiguous, bucketed };

//! Brute-force checks of one plan; returns "" when every property holds, else the first failure.
std::string check_plan(const zero::partition_plan& plan, const sizes_t& sizes, const zero::partition_options& o, kind k) {
  std::ostringstream err;
  const std::size_t n = static_cast<std::size_t>(o.world_size);
  try {
    zero::validate_plan(plan, sizes, o.world_size);
  } catch (const zero::usage_error& e) {
    return std::string("validate_plan refused the plan: ") + e.what();
  }
  // sizes and padding
  std::size_t count = 0;
  for (std::size_t s : sizes) count += s;
  if (plan.world_size != o.world_size) return "world_size differs";
  if (plan.element_count != count) return "element_count differs";
  if (plan.param_size != sizes) return "param_size differs";
  std::size_t at = 0;
  for (std::size_t p = 0; p < sizes.size(); ++p) {
    if (plan.param_offset[p] != at) return "parameters are not packed back to back";
    at += sizes[p];
  }
  const std::size_t quantum = o.alignment * n;
  if (plan.padded_size % quantum != 0) return "padded_size is not a multiple of alignment * world";
  if (plan.padded_size < count) return "padded_size < element_count";
  if (plan.padded_size >= count + quantum) return "padded_size is not the smallest multiple >= element_count";
  if (plan.shard_size * n != plan.padded_size) return "shard_size * world != padded_size";

  // units: slices aligned, each rank's shard tiled in order, constant size (except shorter last ones)
  if (k == kind::contiguous && o.bucket_elements / n >= plan.shard_size) {
    // a bucket holding the whole buffer: one unit, each rank's slice its whole range
    if (plan.shard_size != 0 && (plan.units.size() != 1 || plan.units[0] != zero::reduction_unit{0, plan.shard_size, plan.shard_size, 0}))
      return "contiguous plan of one bucket is not one shared unit of whole ranges";
  } else if (k == kind::contiguous) {
    // rank r's range [r * shard, (r + 1) * shard) cut into runs of the bucket (aligned), each
    // unit owned whole by r, in flat order
    std::size_t run = o.bucket_elements >= plan.shard_size ? plan.shard_size
                                                           : (o.bucket_elements + o.alignment - 1) / o.alignment * o.alignment;
    if (run > plan.shard_size) run = plan.shard_size;
    std::size_t u = 0;
    for (int r = 0; r < o.world_size; ++r)
      for (std::size_t at = 0; at < plan.shard_size; at += run, ++u) {
        if (u >= plan.units.size()) return "contiguous plan has too few units";
        const auto& unit = plan.units[u];
        const std::size_t expected = std::min(run, plan.shard_size - at);
        if (unit.owner != r) return "contiguous unit " + std::to_string(u) + " is not owned by rank " + std::to_string(r);
        if (unit.flat_begin != static_cast<std::size_t>(r) * plan.shard_size + at || unit.shard_begin != at || unit.slice != expected)
          return "contiguous unit " + std::to_string(u) + " is not the next run of rank " + std::to_string(r) + "'s range";
      }
    if (u != plan.units.size()) return "contiguous plan has too many units";
    if (!plan.units.empty() && plan.max_unit_elements() != zero::contiguous_partitioner::largest_unit(plan.shard_size, o))
      return "largest_unit differs from the plan's largest unit";
  } else {
    std::size_t expected_slice = (o.bucket_elements + n - 1) / n;
    expected_slice = (expected_slice + o.alignment - 1) / o.alignment * o.alignment;
    if (expected_slice > plan.shard_size) expected_slice = plan.shard_size;
    std::size_t shard_at = 0;
    for (std::size_t u = 0; u < plan.units.size(); ++u) {
      const auto& unit = plan.units[u];
      const bool last = u + 1 == plan.units.size();
      if (unit.owner != zero::every_rank) return "bucketed unit " + std::to_string(u) + " is not shared by every rank";
      if (unit.slice == 0) return "unit " + std::to_string(u) + " is empty";
      if (unit.slice % o.alignment != 0 && unit.shard_begin + unit.slice != plan.shard_size)
        return "unit " + std::to_string(u) + " slice " + std::to_string(unit.slice) + " is not a multiple of the alignment";
      if (!last && unit.slice != expected_slice) return "unit " + std::to_string(u) + " slice differs from the bucket's";
      if (last && unit.slice > expected_slice) return "last unit larger than the bucket's slice";
      if (unit.shard_begin != shard_at) return "unit " + std::to_string(u) + " does not continue the shard";
      shard_at += unit.slice;
      // one contiguous bucket per unit, right after the previous one
      if (unit.rank_stride != unit.slice) return "bucketed unit " + std::to_string(u) + " is not contiguous";
      if (unit.flat_begin != unit.shard_begin * n) return "bucketed unit " + std::to_string(u) + " does not follow the previous one";
    }
    if (shard_at != plan.shard_size) return "units do not cover the shard";
    if (!plan.units.empty() && plan.max_unit_elements() != zero::bucketed_partitioner::largest_unit(plan.shard_size, o))
      return "largest_unit differs from the plan's largest unit";
  }
  // units follow each other in the flat buffer (the order gradients fill it in)
  for (std::size_t u = 1; u < plan.units.size(); ++u)
    if (plan.units[u].flat_begin <= plan.units[u - 1].flat_begin) return "units are not in flat order";

  // ownership map: every flat element in exactly one (unit, rank, i) slot
  struct slot { long unit = -1; int rank = -1; std::size_t i = 0; };
  std::vector<slot> owner(plan.padded_size);
  std::vector<std::vector<int>> shard_hits(n, std::vector<int>(plan.shard_size, 0));
  for (std::size_t u = 0; u < plan.units.size(); ++u) {
    const auto& unit = plan.units[u];
    for (int r = 0; r < o.world_size; ++r) {
      if (!unit.held_by(r)) continue;
      for (std::size_t i = 0; i < unit.slice; ++i) {
        const std::size_t f = unit.flat_index(r, i);
        if (f >= plan.padded_size) return "unit " + std::to_string(u) + " reaches past padded_size";
        if (owner[f].unit != -1) return "flat element " + std::to_string(f) + " is in two slots";
        owner[f] = {static_cast<long>(u), r, i};
        ++shard_hits[static_cast<std::size_t>(r)][unit.shard_begin + i];
      }
    }
  }
  for (std::size_t f = 0; f < plan.padded_size; ++f) {
    if (owner[f].unit == -1) return "flat element " + std::to_string(f) + " is in no slot";
    if (k == kind::contiguous) {
      const std::size_t r = f / plan.shard_size;
      const auto& unit = plan.units[static_cast<std::size_t>(owner[f].unit)];
      if (static_cast<std::size_t>(owner[f].rank) != r || unit.shard_begin + owner[f].i != f % plan.shard_size)
        return "contiguous element " + std::to_string(f) + " is not owned by rank f / shard at f % shard";
    }
  }
  for (std::size_t r = 0; r < n; ++r)
    for (std::size_t s = 0; s < plan.shard_size; ++s)
      if (shard_hits[r][s] != 1) return "shard element " + std::to_string(s) + " of rank " + std::to_string(r) + " is not covered once";

  // pieces agree with the map, are ordered by (unit, rank, flat offset) and cover every
  // parameter element exactly once and no padding
  const auto pieces = plan.pieces();
  std::vector<int> covered(plan.padded_size, 0);
  for (std::size_t j = 0; j < pieces.size(); ++j) {
    const auto& pc = pieces[j];
    if (pc.count == 0) return "an empty piece";
    if (pc.param >= sizes.size()) return "a piece of an unknown parameter";
    if (pc.param_offset + pc.count > sizes[pc.param]) return "a piece reaches past its parameter";
    if (pc.flat_offset != plan.param_offset[pc.param] + pc.param_offset) return "piece flat_offset disagrees with param_offset";
    if (j > 0) {
      const auto& prev = pieces[j - 1];
      const bool ordered = prev.unit < pc.unit || (prev.unit == pc.unit && (prev.rank < pc.rank || (prev.rank == pc.rank && prev.flat_offset < pc.flat_offset)));
      if (!ordered) return "pieces are not ordered by unit, rank, flat offset";
    }
    for (std::size_t i = 0; i < pc.count; ++i) {
      const std::size_t f = pc.flat_offset + i;
      const slot& s = owner[f];
      const auto& unit = plan.units[static_cast<std::size_t>(s.unit)];
      if (static_cast<std::size_t>(s.unit) != pc.unit || s.rank != pc.rank || unit.shard_begin + s.i != pc.shard_offset + i)
        return "piece of parameter " + std::to_string(pc.param) + " disagrees with the ownership map at flat " + std::to_string(f);
      ++covered[f];
    }
  }
  for (std::size_t f = 0; f < plan.padded_size; ++f) {
    const int expected = f < count ? 1 : 0;
    if (covered[f] != expected) return "flat element " + std::to_string(f) + " covered by " + std::to_string(covered[f]) + " pieces";
  }

  // pieces_of(p): exactly the pieces of p, covering it once, owners consistent with the layout
  for (std::size_t p = 0; p < sizes.size(); ++p) {
    const auto mine = plan.pieces_of(p);
    std::vector<int> hit(sizes[p], 0);
    std::size_t expected_pieces = 0;
    for (const auto& pc : pieces) expected_pieces += pc.param == p;
    if (mine.size() != expected_pieces) return "pieces_of(" + std::to_string(p) + ") returns a different number of pieces";
    for (const auto& pc : mine) {
      if (pc.param != p) return "pieces_of(" + std::to_string(p) + ") returns another parameter's piece";
      for (std::size_t i = 0; i < pc.count; ++i) ++hit[pc.param_offset + i];
      if (k == kind::contiguous) {
        const std::size_t first = pc.flat_offset, last = pc.flat_offset + pc.count - 1;
        const std::size_t r = static_cast<std::size_t>(pc.rank);
        if (first / plan.shard_size != r || last / plan.shard_size != r)
          return "contiguous piece of parameter " + std::to_string(p) + " is not inside its owner's range";
        if (pc.shard_offset != first - r * plan.shard_size) return "contiguous piece shard_offset is wrong";
      } else {
        const auto& unit = plan.units[pc.unit];
        const std::size_t lo = unit.flat_index(pc.rank, 0);
        if (pc.flat_offset < lo || pc.flat_offset + pc.count > lo + unit.slice)
          return "bucketed piece of parameter " + std::to_string(p) + " is not inside its owner's slice";
      }
    }
    for (std::size_t i = 0; i < sizes[p]; ++i)
      if (hit[i] != 1) return "element " + std::to_string(i) + " of parameter " + std::to_string(p) + " covered " + std::to_string(hit[i]) + " times";
  }
  // max_slice, max_unit_elements
  std::size_t m = 0, e = 0;
  for (const auto& u : plan.units) {
    m = u.slice > m ? u.slice : m;
    const std::size_t elements = u.owner == zero::every_rank ? n * u.slice : u.slice;
    e = elements > e ? elements : e;
  }
  if (plan.max_slice() != m) return "max_slice is not the largest slice";
  if (plan.max_unit_elements() != e) return "max_unit_elements is not the largest unit";
  (void)err;
  return "";
}

template <class Partitioner>
void check_all_layouts(kind k) {
  int plans = 0;
  for (const auto& sizes : layouts()) {
    for (int world : world_sizes) {
      for (std::size_t alignment : alignments) {
        for (std::size_t bucket : bucket_sizes) {
          const zero::partition_options o{world, alignment, bucket};
          const zero::partition_plan plan = Partitioner{}.plan(sizes, o);
          const std::string problem = check_plan(plan, sizes, o, k);
          if (!problem.empty()) FAIL_CHECK(describe(sizes, o) << ": " << problem);
          ++plans;
        }
      }
    }
  }
  CHECK(plans == 10 * 7 * 3 * 4);
}

//! A layout whose plan is used by the corruption tests: world 2, 3 units of 4 elements per rank.
struct corrupt_fixture {
  sizes_t sizes{5, 9, 3, 7};  // 24 elements
  zero::partition_options options{2, 4, 8};
  zero::partition_plan plan = zero::bucketed_partitioner{}.plan(sizes, options);
};

//! The same layout with units owned whole: ranks 0 and 1 own runs of 8 and 4 elements.
struct owned_fixture {
  sizes_t sizes{5, 9, 3, 7};
  zero::partition_plan plan = zero::contiguous_partitioner{}.plan(sizes, {2, 4, 8});
};

std::string validation_error(const zero::partition_plan& plan, const sizes_t& sizes, int world) {
  try {
    zero::validate_plan(plan, sizes, world);
  } catch (const zero::usage_error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_SUITE("unit") {

TEST_CASE("partitioner: contiguous plans tile the buffer over many layouts") {
  check_all_layouts<zero::contiguous_partitioner>(kind::contiguous);
}

TEST_CASE("partitioner: bucketed plans tile the buffer over many layouts") {
  check_all_layouts<zero::bucketed_partitioner>(kind::bucketed);
}

TEST_CASE("partitioner: known contiguous plan") {
  // 24 elements, world 2, alignment 4: padded 24, shard 12; bucket 8: runs of 8 and 4 per rank,
  // each owned whole by its rank
  const sizes_t sizes{5, 9, 3, 7};
  const auto plan = zero::contiguous_partitioner{}.plan(sizes, {2, 4, 8});
  CHECK(plan.padded_size == 24u);
  CHECK(plan.shard_size == 12u);
  REQUIRE(plan.units.size() == 4u);
  CHECK(plan.units[0] == zero::reduction_unit{0, 0, 8, 0, 0});
  CHECK(plan.units[1] == zero::reduction_unit{8, 0, 4, 8, 0});
  CHECK(plan.units[2] == zero::reduction_unit{12, 0, 8, 0, 1});
  CHECK(plan.units[3] == zero::reduction_unit{20, 0, 4, 8, 1});
  CHECK(plan.max_slice() == 8u);
  CHECK(plan.max_unit_elements() == 8u);
  // parameter 1 occupies [5, 14): rank 0 owns [5, 12) in units 0 and 1, rank 1 owns [12, 14) in unit 2
  const auto p1 = plan.pieces_of(1);
  REQUIRE(p1.size() == 3u);
  CHECK(p1[0] == zero::owned_piece{1, 0, 0, 0, 5, 5, 3});
  CHECK(p1[1] == zero::owned_piece{1, 1, 0, 3, 8, 8, 4});
  CHECK(p1[2] == zero::owned_piece{1, 2, 1, 7, 12, 0, 2});
}

TEST_CASE("partitioner: a contiguous bucket holding the whole buffer is one unit shared by every rank") {
  const sizes_t sizes{5, 9, 3, 7};  // 24 elements, world 2, alignment 4: shard 12
  const auto one = zero::contiguous_partitioner{}.plan(sizes, {2, 4, 24});
  REQUIRE(one.units.size() == 1u);
  CHECK(one.units[0] == zero::reduction_unit{0, 12, 12, 0});  // rank r's slice: its whole range
  CHECK(one.max_unit_elements() == 24u);
  CHECK(zero::contiguous_partitioner::largest_unit(12, {2, 4, 24}) == 24u);
  // one element less: each rank's range is a unit of its own
  const auto runs = zero::contiguous_partitioner{}.plan(sizes, {2, 4, 23});
  REQUIRE(runs.units.size() == 2u);
  CHECK(runs.units[0] == zero::reduction_unit{0, 0, 12, 0, 0});
  CHECK(runs.units[1] == zero::reduction_unit{12, 0, 12, 0, 1});
  CHECK(zero::contiguous_partitioner::largest_unit(12, {2, 4, 23}) == 12u);
}

TEST_CASE("partitioner: the layout order places the parameters and the plan reports it") {
  const sizes_t sizes{5, 9, 3, 7};
  const std::vector<std::size_t> reverse{3, 2, 1, 0};
  for (kind k : {kind::contiguous, kind::bucketed}) {
    for (int world : {1, 2, 3}) {
      CAPTURE(world);
      const zero::partition_options o{world, 4, 8, reverse};
      const auto plan = k == kind::contiguous ? zero::contiguous_partitioner{}.plan(sizes, o) : zero::bucketed_partitioner{}.plan(sizes, o);
      CHECK(validation_error(plan, sizes, world) == "");
      CHECK(plan.param_offset == std::vector<std::size_t>{19, 10, 7, 0});
      CHECK(plan.order() == reverse);
      const zero::partition_options registration{world, 4, 8};
      const auto plain = k == kind::contiguous ? zero::contiguous_partitioner{}.plan(sizes, registration)
                                               : zero::bucketed_partitioner{}.plan(sizes, registration);
      CHECK(plain.order() == std::vector<std::size_t>{0, 1, 2, 3});
      // the order moves parameters, not the units: the same buffers serve every order
      CHECK(plain.units == plan.units);
      CHECK(plain.padded_size == plan.padded_size);
    }
  }
}

TEST_CASE("partitioner: a layout order that is not a permutation is refused naming the parameter") {
  const sizes_t sizes{5, 9, 3};
  const std::vector<std::size_t> twice{0, 2, 2}, missing{0, 1}, outside{0, 1, 7};
  CHECK_THROWS_WITH_AS(zero::flat_layout(sizes, {2, 4, 8, twice}), doctest::Contains("#2 twice"), zero::usage_error);
  CHECK_THROWS_WITH_AS(zero::flat_layout(sizes, {2, 4, 8, missing}), doctest::Contains("names 2 parameters; 3"), zero::usage_error);
  CHECK_THROWS_WITH_AS(zero::flat_layout(sizes, {2, 4, 8, outside}), doctest::Contains("#7 at position 2"), zero::usage_error);
}

TEST_CASE("partitioner: known bucketed plan") {
  // 10 elements, world 3, alignment 1, bucket 7 -> slice 3; padded 12, shard 4 -> units of 3 and 1
  const sizes_t sizes{4, 6};
  const auto plan = zero::bucketed_partitioner{}.plan(sizes, {3, 1, 7});
  CHECK(plan.padded_size == 12u);
  CHECK(plan.shard_size == 4u);
  REQUIRE(plan.units.size() == 2u);
  CHECK(plan.units[0] == zero::reduction_unit{0, 3, 3, 0});
  CHECK(plan.units[1] == zero::reduction_unit{9, 1, 1, 3});
  const auto p0 = plan.pieces_of(0);  // [0, 4): rank 0 [0, 3), rank 1 [3, 4)
  REQUIRE(p0.size() == 2u);
  CHECK(p0[0] == zero::owned_piece{0, 0, 0, 0, 0, 0, 3});
  CHECK(p0[1] == zero::owned_piece{0, 0, 1, 3, 3, 0, 1});
  const auto p1 = plan.pieces_of(1);  // [4, 10): rank 1 [4, 6), rank 2 [6, 9), unit 1 rank 0 [9, 10)
  REQUIRE(p1.size() == 3u);
  CHECK(p1[0] == zero::owned_piece{1, 0, 1, 0, 4, 1, 2});
  CHECK(p1[1] == zero::owned_piece{1, 0, 2, 2, 6, 0, 3});
  CHECK(p1[2] == zero::owned_piece{1, 1, 0, 5, 9, 3, 1});
}

TEST_CASE("partitioner: empty layout gives an empty plan") {
  const sizes_t none;
  for (int world : world_sizes) {
    const auto c = zero::contiguous_partitioner{}.plan(none, {world, 4, 16});
    const auto b = zero::bucketed_partitioner{}.plan(none, {world, 4, 16});
    CHECK(c.padded_size == 0u);
    CHECK(c.units.empty());
    CHECK(b.units.empty());
    CHECK(c.pieces().empty());
    CHECK_NOTHROW(zero::validate_plan(c, none, world));
    CHECK_NOTHROW(zero::validate_plan(b, none, world));
  }
}

TEST_CASE("partitioner: pieces and validate_plan with empty parameters among many") {
  // flat_layout and validate_plan accept zero-sized parameters; one shares its flat offset with
  // the next parameter. More than 16 parameters, so the offset sort is not an insertion sort.
  sizes_t sizes(40, 1);
  for (std::size_t i = 0; i < sizes.size(); i += 2) sizes[i] = 0;
  for (int world : {1, 2, 3}) {
    const zero::partition_options o{world, 1, 1};
    for (kind k : {kind::contiguous, kind::bucketed}) {
      CAPTURE(world);
      const auto plan = k == kind::contiguous ? zero::contiguous_partitioner{}.plan(sizes, o) : zero::bucketed_partitioner{}.plan(sizes, o);
      CHECK(validation_error(plan, sizes, world) == "");
      std::size_t covered = 0;
      for (const auto& pc : plan.pieces()) covered += pc.count;
      CHECK(covered == plan.element_count);
      for (std::size_t p = 1; p < sizes.size(); p += 2) {
        std::size_t c = 0;
        for (const auto& pc : plan.pieces_of(p)) c += pc.count;
        if (c != 1) FAIL_CHECK("parameter " << p << " has " << c << " owned elements, not 1");
      }
    }
  }
}

TEST_CASE("partitioner: validate_plan accepts a plan from a user-written partitioner") {
  // parameters in reverse flat order, one unit per rank's whole shard, world 2
  const sizes_t sizes{3, 5};
  zero::partition_plan plan;
  plan.world_size = 2;
  plan.param_size = sizes;
  plan.param_offset = {5, 0};
  plan.element_count = 8;
  plan.padded_size = 8;
  plan.shard_size = 4;
  plan.units = {{0, 4, 4, 0}};
  CHECK(validation_error(plan, sizes, 2) == "");
  const auto p0 = plan.pieces_of(0);  // [5, 8): rank 1
  REQUIRE(p0.size() == 1u);
  CHECK(p0[0] == zero::owned_piece{0, 0, 1, 0, 5, 1, 3});
  const auto p1 = plan.pieces_of(1);  // [0, 5): rank 0 [0, 4), rank 1 [4, 5)
  REQUIRE(p1.size() == 2u);
  CHECK(p1[0] == zero::owned_piece{1, 0, 0, 0, 0, 0, 4});
  CHECK(p1[1] == zero::owned_piece{1, 0, 1, 4, 4, 0, 1});
}

TEST_CASE("partitioner: flat_layout rejects zero world size alignment and bucket") {
  const sizes_t sizes{4, 4};
  CHECK_THROWS_WITH_AS(zero::flat_layout(sizes, {0, 4, 16}), doctest::Contains("world_size"), zero::usage_error);
  CHECK_THROWS_WITH_AS(zero::flat_layout(sizes, {-3, 4, 16}), doctest::Contains("-3"), zero::usage_error);
  CHECK_THROWS_WITH_AS(zero::flat_layout(sizes, {2, 0, 16}), doctest::Contains("alignment"), zero::usage_error);
  CHECK_THROWS_WITH_AS(zero::flat_layout(sizes, {2, 4, 0}), doctest::Contains("bucket"), zero::usage_error);
  CHECK_THROWS_AS(zero::contiguous_partitioner{}.plan(sizes, {0, 4, 16}), zero::usage_error);
  CHECK_THROWS_AS(zero::bucketed_partitioner{}.plan(sizes, {2, 0, 16}), zero::usage_error);
  CHECK_THROWS_AS(zero::bucketed_partitioner{}.plan(sizes, {2, 4, 0}), zero::usage_error);
  CHECK_NOTHROW(zero::flat_layout(sizes, {1, 1, 1}));
}

// Found by the layout fuzz target (tests/fuzz/fuzz_layout.cpp): sizes near 2^64 used to wrap
// around (a bucket of SIZE_MAX elements gave slices of 0 elements, and the partitioners looped
// forever adding empty units; huge alignments gave a flat buffer whose size in bytes wrapped).
TEST_CASE("partitioner: sizes near 2^64 are refused or handled and never wrap around") {
  constexpr std::size_t max = std::numeric_limits<std::size_t>::max();
  const sizes_t sizes{4, 4};
  for (int world : {1, 2, 3, 8}) {
    CAPTURE(world);
    for (std::size_t bucket : {max, max - 1, max - 7, zero::max_flat_elements + 1}) {
      const auto plan = zero::bucketed_partitioner{}.plan(sizes, {world, 4, bucket});
      CHECK(plan.units.size() == 1);  // one bucket holds everything
      CHECK(plan.max_slice() == plan.shard_size);
      CHECK_NOTHROW(zero::validate_plan(plan, sizes, world));
      CHECK(zero::contiguous_partitioner{}.plan(sizes, {world, 4, bucket}).units.size() == 1);
    }
    CHECK_THROWS_WITH_AS(zero::flat_layout(sizes, {world, max, 16}), doctest::Contains("alignment"), zero::usage_error);
    CHECK_THROWS_WITH_AS(zero::flat_layout(sizes, {world, zero::max_flat_elements / static_cast<std::size_t>(world) + 1, 16}),
                         doctest::Contains("2^56"), zero::usage_error);
    CHECK_THROWS_WITH_AS(zero::flat_layout(sizes_t{max, 2}, {world, 1, 16}), doctest::Contains("2^56"), zero::usage_error);
    CHECK_THROWS_WITH_AS(zero::flat_layout(sizes_t{zero::max_flat_elements, 1}, {world, 1, 16}), doctest::Contains("#1"),
                         zero::usage_error);
    // the elements fit, their padding to a multiple of 3 x world would not
    CHECK_THROWS_WITH_AS(zero::flat_layout(sizes_t{zero::max_flat_elements}, {world, 3, 16}), doctest::Contains("padded"),
                         zero::usage_error);
  }
  const auto largest = zero::flat_layout(sizes_t{zero::max_flat_elements - 16, 16}, {1, 16, max});
  CHECK(largest.padded_size == zero::max_flat_elements);
}

}  // TEST_SUITE("unit")

TEST_SUITE("reliability") {

TEST_CASE("partitioner: validate_plan rejects a wrong world size") {
  corrupt_fixture f;
  CHECK(validation_error(f.plan, f.sizes, 2) == "");
  CHECK(contains(validation_error(f.plan, f.sizes, 3), "world_size"));
  f.plan.world_size = 4;
  CHECK(contains(validation_error(f.plan, f.sizes, 2), "world_size 4"));
}

TEST_CASE("partitioner: validate_plan rejects overlapping slices") {
  corrupt_fixture f;
  f.plan.units[1].flat_begin -= 1;  // rank 0's second slice overlaps its first
  CHECK(contains(validation_error(f.plan, f.sizes, 2), "do not tile"));
  corrupt_fixture g;
  g.plan.units[0].rank_stride = 2;  // rank 1's slice of unit 0 overlaps rank 0's
  CHECK(contains(validation_error(g.plan, g.sizes, 2), "do not tile"));
}

TEST_CASE("partitioner: validate_plan rejects a gap between slices") {
  corrupt_fixture f;
  f.plan.units[1].flat_begin += 1;  // leaves element 8 in no slice
  const std::string e = validation_error(f.plan, f.sizes, 2);
  CHECK(contains(e, "do not tile"));
  CHECK(contains(e, "element 8"));
  corrupt_fixture g;
  g.plan.units.pop_back();  // the last unit is missing
  CHECK(contains(validation_error(g.plan, g.sizes, 2), "units cover 8 shard elements of rank 0, not 12"));
}

TEST_CASE("partitioner: validate_plan rejects a wrong shard size") {
  corrupt_fixture f;
  f.plan.shard_size = 10;
  CHECK(contains(validation_error(f.plan, f.sizes, 2), "padded_size != shard_size * world_size"));
  corrupt_fixture g;  // consistent padded/shard sizes, but larger than the units cover
  g.plan.shard_size = 16;
  g.plan.padded_size = 32;
  CHECK(contains(validation_error(g.plan, g.sizes, 2), "units cover 12 shard elements of rank 0, not 16"));
}

TEST_CASE("partitioner: validate_plan rejects a unit not continuing the shard") {
  corrupt_fixture f;
  f.plan.units[2].shard_begin = 4;
  CHECK(contains(validation_error(f.plan, f.sizes, 2), "unit 2 does not continue the shard"));
  corrupt_fixture g;
  g.plan.units[1].slice = 0;
  CHECK(contains(validation_error(g.plan, g.sizes, 2), "unit 1 is empty"));
}

TEST_CASE("partitioner: validate_plan checks units owned whole by one rank") {
  owned_fixture f;
  CHECK(validation_error(f.plan, f.sizes, 2) == "");
  owned_fixture g;
  g.plan.units[2].owner = 2;  // no rank 2 in a group of 2
  CHECK(contains(validation_error(g.plan, g.sizes, 2), "unit 2 is owned by rank 2, outside a group of 2"));
  owned_fixture h;
  h.plan.units[1].owner = 1;  // rank 1 then holds 16 shard elements and rank 0 only 8
  CHECK(contains(validation_error(h.plan, h.sizes, 2), "does not continue the shard of rank 1"));
  owned_fixture i;
  i.plan.units[3].flat_begin = 16;  // overlaps the run before it
  CHECK(contains(validation_error(i.plan, i.sizes, 2), "do not tile"));
  owned_fixture j;
  j.plan.units[0].owner = zero::every_rank;  // a shared unit of 8 per rank overlaps rank 1's runs
  CHECK(validation_error(j.plan, j.sizes, 2) != "");
}

TEST_CASE("partitioner: validate_plan rejects parameters that disagree with the layout") {
  corrupt_fixture f;
  CHECK(contains(validation_error(f.plan, {5, 9, 3}, 2), "parameter count"));
  CHECK(contains(validation_error(f.plan, {5, 9, 4, 7}, 2), "parameter #2"));
  corrupt_fixture g;
  g.plan.param_offset[1] = 4;  // overlaps parameter 0
  CHECK(contains(validation_error(g.plan, g.sizes, 2), "overlap"));
  corrupt_fixture h;
  h.plan.param_offset[3] = 20;  // [20, 27) lies past padded_size 24
  CHECK(contains(validation_error(h.plan, h.sizes, 2), "parameter #3 lies outside the flat buffer"));
  corrupt_fixture i;
  i.plan.element_count = 23;
  CHECK(contains(validation_error(i.plan, i.sizes, 2), "element_count"));
}

}  // TEST_SUITE("reliability")
