// Element types: bf16 / fp16 conversions (edge values, exhaustive and sampled comparisons with
// independent references), zero::convert, type_name, constexpr use and raw_span.

#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "zero/precision.hpp"
#include "zero/types.hpp"

namespace {

std::uint32_t bits_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
float float_of(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
bool is_nan_bits32(std::uint32_t u) { return (u & 0x7fffffffu) > 0x7f800000u; }
bool is_nan_bf16(std::uint16_t b) { return (b & 0x7fffu) > 0x7f80u; }
bool is_nan_fp16(std::uint16_t b) { return (b & 0x7fffu) > 0x7c00u; }

std::uint16_t bf16_of(float f) { return zero::bf16(f).bits; }
std::uint16_t fp16_of(float f) { return zero::fp16(f).bits; }
float from_bf16(std::uint16_t b) { return static_cast<float>(zero::bf16::from_bits(b)); }
float from_fp16(std::uint16_t b) { return static_cast<float>(zero::fp16::from_bits(b)); }

std::string hex(std::uint32_t v) {
  static const char* digits = "0123456789abcdef";
  std::string s = "0x";
  bool started = false;
  for (int shift = 28; shift >= 0; shift -= 4) {
    const unsigned d = (v >> shift) & 0xfu;
    if (d != 0 || started || shift == 0) {
      s += digits[d];
      started = true;
    }
  }
  return s;
}

// ---- independent references ----------------------------------------------------------------

//! bf16 reference: the two bf16 values bracketing |x| are found by truncation; the nearer one is
//! chosen with exact double arithmetic, ties to the even mantissa. Overflow: the value past the
//! largest finite bf16 is 2^128 (which rounds to infinity).
std::uint16_t bf16_reference(float x) {
  const std::uint32_t u = bits_of(x);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return 0;  // NaN: not handled here
  if (a == 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7f80u);
  const double mag = std::fabs(static_cast<double>(x));
  const std::uint16_t lo_bits = static_cast<std::uint16_t>(a >> 16);  // truncation toward zero
  const double lo = static_cast<double>(float_of(static_cast<std::uint32_t>(lo_bits) << 16));
  const std::uint16_t hi_bits = static_cast<std::uint16_t>(lo_bits + 1);
  const double hi = hi_bits == 0x7f80u ? std::ldexp(1.0, 128) : static_cast<double>(float_of(static_cast<std::uint32_t>(hi_bits) << 16));
  const double below = mag - lo, above = hi - mag;  // exact in double
  std::uint16_t pick;
  if (below < above) pick = lo_bits;
  else if (above < below) pick = hi_bits;
  else pick = (lo_bits & 1u) == 0 ? lo_bits : hi_bits;
  return static_cast<std::uint16_t>(sign | pick);
}

//! All non-negative finite half values, ascending by value (bits 0x0000..0x7bff), computed from
//! the binary16 definition with std::ldexp.
const std::vector<double>& half_values() {
  static const std::vector<double> values = [] {
    std::vector<double> v;
    for (std::uint32_t b = 0; b < 0x7c00u; ++b) {
      const std::uint32_t e = b >> 10, m = b & 0x3ffu;
      v.push_back(e == 0 ? std::ldexp(static_cast<double>(m), -24) : std::ldexp(1.0 + static_cast<double>(m) / 1024.0, static_cast<int>(e) - 15));
    }
    return v;
  }();
  return values;
}

//! fp16 reference by table search: nearest representable value, ties to even; at or past
//! 65504 + 16 (half an ulp of the largest finite half) the result is infinity.
std::uint16_t fp16_reference(float x) {
  const std::uint32_t u = bits_of(x);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const double mag = std::fabs(static_cast<double>(x));
  if (std::isinf(x) || mag >= 65520.0) return static_cast<std::uint16_t>(sign | 0x7c00u);
  const auto& v = half_values();
  // first half value > mag
  std::size_t lo = 0, hi = v.size();
  while (lo < hi) {
    const std::size_t mid = (lo + hi) / 2;
    if (v[mid] <= mag) lo = mid + 1;
    else hi = mid;
  }
  const std::size_t below = lo - 1;  // v[below] <= mag (v[0] == 0)
  std::size_t pick = below;
  if (lo < v.size()) {
    const double d_below = mag - v[below], d_above = v[lo] - mag;
    if (d_above < d_below || (d_above == d_below && (lo & 1u) == 0)) pick = lo;
  } else if (mag - v[below] >= 16.0) {
    return static_cast<std::uint16_t>(sign | 0x7c00u);
  }
  return static_cast<std::uint16_t>(sign | pick);
}

//! Float bit patterns to sample: every 997th pattern of the whole 32-bit space, plus every
//! pattern in windows around the interesting boundaries of both formats (both signs).
std::vector<std::uint32_t> sample_patterns(std::initializer_list<std::uint32_t> centres, std::uint32_t radius) {
  std::vector<std::uint32_t> out;
  out.reserve((std::uint64_t{1} << 32) / 997 + centres.size() * 4 * radius + 16);
  for (std::uint64_t p = 0; p < (std::uint64_t{1} << 32); p += 997) out.push_back(static_cast<std::uint32_t>(p));
  for (std::uint32_t c : centres) {
    const std::uint32_t begin = c > radius ? c - radius : 0;
    for (std::uint32_t p = begin; p <= c + radius; ++p) {
      out.push_back(p);
      out.push_back(p | 0x80000000u);
    }
  }
  return out;
}

}  // namespace

// ---- constexpr usability ---------------------------------------------------------------------

static_assert(zero::bf16(1.0f).bits == 0x3f80u);
static_assert(zero::bf16(-2.0f).bits == 0xc000u);
static_assert(static_cast<float>(zero::bf16::from_bits(0x3fc0u)) == 1.5f);
static_assert(zero::fp16(1.0f).bits == 0x3c00u);
static_assert(zero::fp16(65520.0f).bits == 0x7c00u);
static_assert(zero::fp16(5.9604644775390625e-8f).bits == 0x0001u);  // smallest subnormal, via the subnormal path
static_assert(static_cast<float>(zero::fp16::from_bits(0x0001u)) == 5.9604644775390625e-8f);
static_assert(static_cast<float>(zero::fp16::from_bits(0x7bffu)) == 65504.0f);
static_assert(zero::convert<float>(zero::bf16::from_bits(0x4049u)) == 3.140625f);
static_assert(zero::convert<zero::fp16>(zero::bf16(0.5f)).bits == 0x3800u);
static_assert(zero::convert<double>(zero::fp16::from_bits(0x3555u)) == 0.333251953125);
static_assert(zero::element_type<float> && zero::element_type<double> && zero::element_type<zero::bf16> &&
              zero::element_type<zero::fp16>);
static_assert(!zero::element_type<int> && !zero::element_type<std::uint16_t> && !zero::element_type<long double>);
static_assert(std::is_trivially_copyable_v<zero::bf16> && std::is_trivially_copyable_v<zero::fp16>);
static_assert(std::is_standard_layout_v<zero::bf16> && std::is_standard_layout_v<zero::fp16>);
static_assert(!std::is_convertible_v<float, zero::bf16> && !std::is_convertible_v<zero::bf16, float>,
              "conversions must be explicit");

TEST_SUITE("unit") {

// ---- bf16 edge values --------------------------------------------------------------------------

TEST_CASE("bf16: signed zeros and infinities") {
  CHECK(bf16_of(0.0f) == 0x0000u);
  CHECK(bf16_of(-0.0f) == 0x8000u);
  CHECK(bf16_of(std::numeric_limits<float>::infinity()) == 0x7f80u);
  CHECK(bf16_of(-std::numeric_limits<float>::infinity()) == 0xff80u);
  CHECK(bits_of(from_bf16(0x8000u)) == 0x80000000u);
  CHECK(std::isinf(from_bf16(0x7f80u)));
  CHECK(from_bf16(0xff80u) < 0);
}

TEST_CASE("bf16: NaNs stay NaN with sign and leading payload") {
  struct nan_case { std::uint32_t in; std::uint16_t expected; };
  const nan_case cases[] = {
      {0x7fc00000u, 0x7fc0u},  // default quiet NaN
      {0xffc00000u, 0xffc0u},  // negative quiet NaN
      {0x7f800001u, 0x7fc0u},  // signalling NaN, payload only in the lowest bit: must not become inf
      {0x7f80ffffu, 0x7fc0u},  // signalling NaN, payload only in the dropped 16 bits
      {0xff800001u, 0xffc0u},  // negative signalling NaN
      {0x7fa00000u, 0x7fe0u},  // signalling NaN with a leading payload bit: kept, quieted
      {0x7fffffffu, 0x7fffu},  // all payload bits set: must not carry into the sign
      {0xffffffffu, 0xffffu},
      {0x7f810000u, 0x7fc1u},  // payload in the kept bits
  };
  for (const auto& c : cases) {
    CAPTURE(hex(c.in));
    const std::uint16_t b = bf16_of(float_of(c.in));
    CHECK(is_nan_bf16(b));
    CHECK(b == c.expected);
    CHECK(std::isnan(from_bf16(b)));
  }
  // every float NaN with payload only in the dropped low bits stays NaN of the same sign
  for (std::uint32_t low = 1; low < 0x10000u; ++low) {
    const std::uint16_t p = bf16_of(float_of(0x7f800000u | low));
    const std::uint16_t n = bf16_of(float_of(0xff800000u | low));
    if (!is_nan_bf16(p) || !is_nan_bf16(n) || (p & 0x8000u) != 0 || (n & 0x8000u) == 0) {
      FAIL("float NaN " << hex(0x7f800000u | low) << " became bf16 " << hex(p));
    }
  }
}

TEST_CASE("bf16: overflow threshold and largest finite value") {
  CHECK(from_bf16(0x7f7fu) == 3.38953139e38f);
  CHECK(bf16_of(3.38953139e38f) == 0x7f7fu);
  CHECK(bf16_of(float_of(0x7f7f7fffu)) == 0x7f7fu);  // just below max + half an ulp
  CHECK(bf16_of(float_of(0x7f7f8000u)) == 0x7f80u);  // exactly max + half an ulp: ties to even = inf
  CHECK(bf16_of(float_of(0x7f7fffffu)) == 0x7f80u);  // FLT_MAX overflows to inf
  CHECK(bf16_of(float_of(0xff7f7fffu)) == 0xff7fu);
  CHECK(bf16_of(float_of(0xff7f8000u)) == 0xff80u);
  CHECK(bf16_of(-std::numeric_limits<float>::max()) == 0xff80u);
}

TEST_CASE("bf16: smallest normal and subnormals") {
  CHECK(bf16_of(std::numeric_limits<float>::min()) == 0x0080u);
  CHECK(from_bf16(0x0080u) == std::numeric_limits<float>::min());
  CHECK(from_bf16(0x0001u) == float_of(0x00010000u));  // smallest bf16 subnormal
  CHECK(bf16_of(float_of(0x00000001u)) == 0x0000u);     // smallest float subnormal rounds to zero
  CHECK(bf16_of(float_of(0x00008000u)) == 0x0000u);     // tie between 0 and the smallest subnormal: even
  CHECK(bf16_of(float_of(0x00008001u)) == 0x0001u);
  CHECK(bf16_of(float_of(0x00018000u)) == 0x0002u);     // tie between 1 and 2: even (up)
  CHECK(bf16_of(float_of(0x007f8000u)) == 0x0080u);     // largest subnormal + half ulp: tie rounds up to the smallest normal
  CHECK(bf16_of(float_of(0x807f7fffu)) == 0x807fu);
}

TEST_CASE("bf16: round to nearest even on ties in both directions") {
  CHECK(bf16_of(float_of(0x3f808000u)) == 0x3f80u);  // 1 + 2^-8: tie, even is down
  CHECK(bf16_of(float_of(0x3f818000u)) == 0x3f82u);  // tie, even is up
  CHECK(bf16_of(float_of(0x3f808001u)) == 0x3f81u);  // just above the tie
  CHECK(bf16_of(float_of(0x3f817fffu)) == 0x3f81u);  // just below the tie
  CHECK(bf16_of(float_of(0xbf808000u)) == 0xbf80u);  // negative ties
  CHECK(bf16_of(float_of(0xbf818000u)) == 0xbf82u);
  CHECK(bf16_of(float_of(0x3fffffffu)) == 0x4000u);  // mantissa carry into the exponent
  CHECK(bf16_of(-1.0f / 3.0f) == 0xbeabu);
  CHECK(bf16_of(3.14159265f) == 0x4049u);
  CHECK(bf16_of(1e10f) == 0x5015u);
}

TEST_CASE("bf16: every bf16 value converts to float exactly") {
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const float f = from_bf16(static_cast<std::uint16_t>(b));
    const std::uint32_t expected = b << 16;
    if (is_nan_bf16(static_cast<std::uint16_t>(b))) {
      if (!std::isnan(f) || (bits_of(f) >> 31) != (b >> 15)) FAIL("bf16 NaN " << hex(b) << " gave " << hex(bits_of(f)));
    } else if (bits_of(f) != expected) {
      FAIL("bf16 " << hex(b) << " gave " << hex(bits_of(f)));
    }
    // and back: a bf16 value round-trips bitwise (NaN: stays NaN)
    const std::uint16_t back = bf16_of(f);
    if (is_nan_bf16(static_cast<std::uint16_t>(b)) ? !is_nan_bf16(back) : back != b)
      FAIL("bf16 " << hex(b) << " did not round-trip: " << hex(back));
  }
}

TEST_CASE("bf16: float to bf16 matches a nearest-candidate reference on sampled bit patterns") {
  const auto patterns = sample_patterns(
      {
          0x00000000u, 0x00800000u,  // zero / float subnormals, the smallest normal
          0x3f800000u, 0x3f808000u,  // 1.0 and its first tie
          0x7f7f0000u, 0x7f7f8000u,  // the overflow threshold
          0x7f800000u,               // inf and the NaNs next to it
      },
      0x10000u);
  std::size_t checked = 0, mismatches = 0;
  std::uint32_t first_bad = 0;
  for (std::uint32_t p : patterns) {
    const std::uint16_t got = bf16_of(float_of(p));
    bool ok;
    if (is_nan_bits32(p)) ok = is_nan_bf16(got) && (got >> 15) == (p >> 31);
    else ok = got == bf16_reference(float_of(p));
    if (!ok && mismatches++ == 0) first_bad = p;
    ++checked;
  }
  CAPTURE(checked);
  CAPTURE(hex(first_bad));
  CHECK(checked > 4000000u);
  CHECK(mismatches == 0u);
}

TEST_CASE("bf16: the reference itself rounds known values correctly") {
  // guards the bf16 reference against being a copy of the implementation's mistakes
  CHECK(bf16_reference(float_of(0x3f808000u)) == 0x3f80u);
  CHECK(bf16_reference(float_of(0x3f818000u)) == 0x3f82u);
  CHECK(bf16_reference(float_of(0x7f7f8000u)) == 0x7f80u);
  CHECK(bf16_reference(float_of(0x7f7f7fffu)) == 0x7f7fu);
  CHECK(bf16_reference(float_of(0x80008000u)) == 0x8000u);
  CHECK(bf16_reference(1.0f / 3.0f) == 0x3eabu);
}

// ---- fp16 edge values -------------------------------------------------------------------------

TEST_CASE("fp16: signed zeros and infinities") {
  CHECK(fp16_of(0.0f) == 0x0000u);
  CHECK(fp16_of(-0.0f) == 0x8000u);
  CHECK(fp16_of(std::numeric_limits<float>::infinity()) == 0x7c00u);
  CHECK(fp16_of(-std::numeric_limits<float>::infinity()) == 0xfc00u);
  CHECK(bits_of(from_fp16(0x8000u)) == 0x80000000u);
  CHECK(bits_of(from_fp16(0x7c00u)) == 0x7f800000u);
  CHECK(bits_of(from_fp16(0xfc00u)) == 0xff800000u);
}

TEST_CASE("fp16: NaNs stay NaN with sign and leading payload") {
  struct nan_case { std::uint32_t in; std::uint16_t expected; };
  const nan_case cases[] = {
      {0x7fc00000u, 0x7e00u}, {0xffc00000u, 0xfe00u},
      {0x7f800001u, 0x7e00u},  // signalling NaN, payload only in the lowest bit: must not become inf
      {0x7f801fffu, 0x7e00u},  // payload only in the 13 dropped bits
      {0xff800001u, 0xfe00u},
      {0x7fa00000u, 0x7f00u},  // leading payload bit kept, quieted
      {0x7fffffffu, 0x7fffu},
      {0x7f802000u, 0x7e01u},  // lowest kept payload bit
  };
  for (const auto& c : cases) {
    CAPTURE(hex(c.in));
    const std::uint16_t h = fp16_of(float_of(c.in));
    CHECK(is_nan_fp16(h));
    CHECK(h == c.expected);
  }
  for (std::uint32_t low = 1; low < 0x2000u; ++low) {
    const std::uint16_t p = fp16_of(float_of(0x7f800000u | low));
    const std::uint16_t n = fp16_of(float_of(0xff800000u | low));
    if (!is_nan_fp16(p) || !is_nan_fp16(n) || (p & 0x8000u) != 0 || (n & 0x8000u) == 0)
      FAIL("float NaN " << hex(0x7f800000u | low) << " became fp16 " << hex(p));
  }
  // half NaNs (signalling ones included) widen to float NaNs of the same sign
  for (std::uint16_t h : {std::uint16_t{0x7c01u}, std::uint16_t{0x7e00u}, std::uint16_t{0x7dffu}, std::uint16_t{0xfc01u},
                          std::uint16_t{0xffffu}}) {
    CAPTURE(hex(h));
    const float f = from_fp16(h);
    CHECK(std::isnan(f));
    CHECK(std::signbit(f) == ((h & 0x8000u) != 0));
  }
}

TEST_CASE("fp16: overflow threshold and largest finite value") {
  CHECK(fp16_of(65504.0f) == 0x7bffu);
  CHECK(from_fp16(0x7bffu) == 65504.0f);
  CHECK(fp16_of(float_of(0x477fefffu)) == 0x7bffu);  // just below 65520
  CHECK(fp16_of(65520.0f) == 0x7c00u);               // max + half an ulp: ties to even = inf
  CHECK(fp16_of(float_of(0x477ff001u)) == 0x7c00u);
  CHECK(fp16_of(65536.0f) == 0x7c00u);
  CHECK(fp16_of(1e30f) == 0x7c00u);
  CHECK(fp16_of(-65504.0f) == 0xfbffu);
  CHECK(fp16_of(-65519.0f) == 0xfbffu);
  CHECK(fp16_of(-65520.0f) == 0xfc00u);
  CHECK(fp16_of(65519.0f) == 0x7bffu);
  CHECK(fp16_of(65505.0f) == 0x7bffu);
}

TEST_CASE("fp16: smallest normal and subnormals") {
  const float tiny = 5.9604644775390625e-8f;  // 2^-24, the smallest subnormal half
  CHECK(fp16_of(6.103515625e-05f) == 0x0400u);  // 2^-14, the smallest normal
  CHECK(from_fp16(0x0400u) == 6.103515625e-05f);
  CHECK(fp16_of(tiny) == 0x0001u);
  CHECK(from_fp16(0x0001u) == tiny);
  CHECK(fp16_of(tiny / 2) == 0x0000u);                         // tie between 0 and 2^-24: even
  CHECK(fp16_of(-tiny / 2) == 0x8000u);                        // ... keeping the sign
  CHECK(fp16_of(float_of(bits_of(tiny / 2) + 1)) == 0x0001u);  // just above the tie
  CHECK(fp16_of(tiny * 1.5f) == 0x0002u);                      // tie between 1 and 2: even (up)
  CHECK(fp16_of(tiny * 2.5f) == 0x0002u);                      // tie between 2 and 3: even (down)
  CHECK(fp16_of(tiny * 1023.0f) == 0x03ffu);                   // largest subnormal
  CHECK(from_fp16(0x03ffu) == tiny * 1023.0f);
  CHECK(fp16_of(tiny * 1023.5f) == 0x0400u);                   // tie into the smallest normal
  CHECK(fp16_of(float_of(bits_of(tiny * 1023.5f) - 1)) == 0x03ffu);
  CHECK(fp16_of(-tiny * 3.0f) == 0x8003u);
  CHECK(fp16_of(std::numeric_limits<float>::denorm_min()) == 0x0000u);
  CHECK(fp16_of(-std::numeric_limits<float>::denorm_min()) == 0x8000u);
  CHECK(fp16_of(std::numeric_limits<float>::min()) == 0x0000u);
}

TEST_CASE("fp16: round to nearest even on ties in both directions") {
  const float ulp = 1.0f / 1024.0f;  // ulp of [1, 2)
  CHECK(fp16_of(1.0f + ulp / 2) == 0x3c00u);       // tie, even is down
  CHECK(fp16_of(1.0f + 3 * ulp / 2) == 0x3c02u);   // tie, even is up
  CHECK(fp16_of(-1.0f - ulp / 2) == 0xbc00u);
  CHECK(fp16_of(-1.0f - 3 * ulp / 2) == 0xbc02u);
  CHECK(fp16_of(float_of(bits_of(1.0f + ulp / 2) + 1)) == 0x3c01u);
  CHECK(fp16_of(2.0f - ulp / 4) == 0x4000u);       // carry into the exponent
  CHECK(fp16_of(1.0f / 3.0f) == 0x3555u);
  CHECK(fp16_of(-3.14159265f) == 0xc248u);
  CHECK(fp16_of(2049.0f) == 0x6800u);  // 2048 + 1: tie at ulp 2, even down
  CHECK(fp16_of(2051.0f) == 0x6802u);  // 2050 + 1: tie, even up
}

TEST_CASE("fp16: every half converts to float exactly") {
  // against the binary16 definition (independent of any compiler support)
  const auto& v = half_values();
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const std::uint16_t h = static_cast<std::uint16_t>(b);
    const float f = from_fp16(h);
    const bool neg = (b & 0x8000u) != 0;
    const std::uint32_t mag = b & 0x7fffu;
    bool ok;
    if (mag > 0x7c00u) ok = std::isnan(f) && std::signbit(f) == neg;
    else if (mag == 0x7c00u) ok = std::isinf(f) && std::signbit(f) == neg;
    else ok = static_cast<double>(f) == (neg ? -v[mag] : v[mag]) && std::signbit(f) == neg;
    if (!ok) FAIL("half " << hex(b) << " gave float " << hex(bits_of(f)));
  }
}

TEST_CASE("fp16: float to half matches a table-search reference on sampled bit patterns") {
  const auto patterns = sample_patterns({0x33000000u, 0x33800000u, 0x387fc000u, 0x38800000u, 0x3f800000u, 0x477fe000u,
                                         0x477ff000u, 0x7f800000u},
                                        0x4000u);
  std::size_t mismatches = 0;
  std::uint32_t first_bad = 0;
  for (std::uint32_t p : patterns) {
    const std::uint16_t got = fp16_of(float_of(p));
    const bool ok = is_nan_bits32(p) ? is_nan_fp16(got) && (got >> 15) == (p >> 31) : got == fp16_reference(float_of(p));
    if (!ok && mismatches++ == 0) first_bad = p;
  }
  CAPTURE(hex(first_bad));
  CHECK(mismatches == 0u);
}

#if defined(__FLT16_MAX__)

TEST_CASE("fp16: all 65536 halves widen exactly like the compiler's _Float16") {
  std::size_t mismatches = 0;
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const std::uint16_t h = static_cast<std::uint16_t>(b);
    _Float16 native;
    std::memcpy(&native, &h, sizeof native);
    const float expected = static_cast<float>(native);
    const float got = from_fp16(h);
    const bool ok = std::isnan(expected) ? std::isnan(got) && std::signbit(got) == std::signbit(expected)
                                         : bits_of(got) == bits_of(expected);
    if (!ok && mismatches++ < 5) FAIL_CHECK("half " << hex(b) << ": got " << hex(bits_of(got)) << ", _Float16 gives " << hex(bits_of(expected)));
  }
  CHECK(mismatches == 0u);
}

TEST_CASE("fp16: float to half is bitwise equal to _Float16 on every 997th pattern and the boundaries") {
  // boundaries: half's smallest subnormal and its half (2^-24, 2^-25), the subnormal / normal
  // boundary (2^-14), 1.0, the overflow threshold (65520) and inf / NaN
  const auto patterns = sample_patterns({0x33000000u, 0x33800000u, 0x387fe000u, 0x38800000u, 0x3f800000u, 0x477fe000u,
                                         0x477ff000u, 0x477ff000u + 0x10000u, 0x7f800000u},
                                        0x10000u);
  std::size_t mismatches = 0;
  for (std::uint32_t p : patterns) {
    const float f = float_of(p);
    const volatile float vf = f;  // keep the compiler from folding the reference conversion
    const _Float16 native = static_cast<_Float16>(vf);
    std::uint16_t expected;
    std::memcpy(&expected, &native, sizeof expected);
    const std::uint16_t got = fp16_of(f);
    const bool ok = is_nan_bits32(p) ? is_nan_fp16(got) && is_nan_fp16(expected) && (got >> 15) == (p >> 31)
                                     : got == expected;
    if (!ok && mismatches++ < 5) FAIL_CHECK("float " << hex(p) << ": got " << hex(got) << ", _Float16 gives " << hex(expected));
  }
  CHECK(patterns.size() > 4000000u);
  CHECK(mismatches == 0u);
}

#endif  // __FLT16_MAX__

// ---- convert, type_name -------------------------------------------------------------------------

TEST_CASE("convert: between element types through float") {
  using zero::bf16;
  using zero::convert;
  using zero::fp16;
  // same type: identity, bitwise (NaN payloads included)
  CHECK(convert<bf16>(bf16::from_bits(0x7f81u)).bits == 0x7f81u);
  CHECK(convert<fp16>(fp16::from_bits(0x7c01u)).bits == 0x7c01u);
  CHECK(bits_of(convert<float>(float_of(0x7f800001u))) == 0x7f800001u);
  // widening is exact
  CHECK(convert<float>(bf16::from_bits(0xbeabu)) == float_of(0xbeab0000u));
  CHECK(convert<double>(bf16::from_bits(0xbeabu)) == static_cast<double>(float_of(0xbeab0000u)));
  CHECK(convert<float>(fp16::from_bits(0x03ffu)) == 1023.0f * 5.9604644775390625e-8f);
  CHECK(convert<double>(2.5f) == 2.5);
  // narrowing rounds like the constructors
  CHECK(convert<bf16>(1.0f / 3.0f).bits == 0x3eabu);
  CHECK(convert<fp16>(1.0f / 3.0f).bits == 0x3555u);
  CHECK(convert<fp16>(70000.0f).bits == 0x7c00u);
  CHECK(convert<float>(0.1) == 0.1f);
  // between the 16-bit types: through float
  CHECK(convert<fp16>(bf16::from_bits(0x3eabu)).bits == fp16(float_of(0x3eab0000u)).bits);
  CHECK(convert<bf16>(fp16::from_bits(0x3555u)).bits == bf16(from_fp16(0x3555u)).bits);
  CHECK(convert<fp16>(bf16(1e6f)).bits == 0x7c00u);       // out of half's range
  CHECK(convert<bf16>(fp16::from_bits(0xfc00u)).bits == 0xff80u);
  CHECK(std::isnan(static_cast<float>(convert<bf16>(fp16::from_bits(0x7e00u)))));
  CHECK(std::isnan(static_cast<float>(convert<fp16>(bf16::from_bits(0xffc1u)))));
  CHECK(std::signbit(static_cast<float>(convert<fp16>(bf16::from_bits(0xffc1u)))));
  // from double: documented as going through float (so double rounding can occur)
  const double just_above_tie = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40);
  CHECK(convert<bf16>(just_above_tie).bits == bf16(static_cast<float>(just_above_tie)).bits);
  CHECK(convert<fp16>(-0.333251953125).bits == 0xb555u);
  CHECK(convert<double>(fp16::from_bits(0x7bffu)) == 65504.0);
}

TEST_CASE("type_name: names of element and index types") {
  CHECK(zero::type_name<float>() == "fp32");
  CHECK(zero::type_name<double>() == "fp64");
  CHECK(zero::type_name<zero::bf16>() == "bf16");
  CHECK(zero::type_name<zero::fp16>() == "fp16");
  CHECK(zero::type_name<std::uint64_t>() == "u64");
  CHECK(zero::type_name<std::int64_t>() == "i64");
  CHECK(zero::type_name<std::uint32_t>() == "u32");
  CHECK(zero::type_name<std::int32_t>() == "i32");
  CHECK(zero::type_name<void>() == "none");
  CHECK(zero::type_name<char>() == "user");
  struct custom {};
  CHECK(zero::type_name<custom>() == "user");
  static_assert(zero::type_name<zero::fp32>() == "fp32");
}

// ---- raw_span ------------------------------------------------------------------------------------

TEST_CASE("raw_span: construction from std::span and pointer plus count") {
  std::array<float, 5> a{1, 2, 3, 4, 5};
  const zero::raw_span<float> dyn(std::span<float>(a.data(), a.size()));
  CHECK(dyn.data == a.data());
  CHECK(dyn.size == 5u);
  const zero::raw_span<float> fixed{std::span<float, 5>(a)};
  CHECK(fixed.data == a.data());
  CHECK(fixed.size == 5u);
  const zero::raw_span<const float> from_mutable{std::span<float>(a)};
  CHECK(from_mutable.data == a.data());
  const zero::raw_span deduced(a.data() + 1, 3);
  static_assert(std::is_same_v<std::remove_const_t<decltype(deduced)>, zero::raw_span<float>>);
  CHECK(deduced[0] == 2.0f);
  CHECK(deduced.size == 3u);
  deduced[2] = 40.0f;  // writes through
  CHECK(a[3] == 40.0f);
  float sum = 0;
  for (float x : deduced) sum += x;
  CHECK(sum == 2.0f + 3.0f + 40.0f);
  CHECK(deduced.end() - deduced.begin() == 3);
  const auto s = deduced.to_span();
  CHECK(s.data() == a.data() + 1);
  CHECK(s.size() == 3u);
  // null with a count is representable (so it can be refused with an error)
  const zero::raw_span<float> null_span(nullptr, 7);
  CHECK(null_span.data == nullptr);
  CHECK(null_span.size == 7u);
  CHECK_FALSE(null_span.empty());
  const zero::raw_span<float> empty;
  CHECK(empty.empty());
  CHECK(empty.data == nullptr);
  static_assert(!std::is_constructible_v<zero::raw_span<float>, std::span<const float>>);
  static_assert(!std::is_constructible_v<zero::raw_span<double>, std::span<float>>);
}

TEST_CASE("raw_span: conversion to const and size_bytes") {
  std::vector<zero::bf16> v(6);
  const zero::raw_span<zero::bf16> m(v.data(), v.size());
  const zero::raw_span<const zero::bf16> c = m;  // implicit conversion to const
  CHECK(c.data == v.data());
  CHECK(c.size == 6u);
  CHECK(c.size_bytes() == 12u);
  CHECK(m.size_bytes() == 12u);
  double d[3] = {};
  CHECK(zero::raw_span<double>(d, 3).size_bytes() == 24u);
  CHECK(zero::raw_span<float>(nullptr, 0).size_bytes() == 0u);
  CHECK(zero::raw_span<zero::fp16>(nullptr, 5).size_bytes() == 10u);
  static_assert(std::is_convertible_v<zero::raw_span<float>, zero::raw_span<const float>>);
  static_assert(!std::is_convertible_v<zero::raw_span<const float>, zero::raw_span<float>>);
  static_assert(!std::is_convertible_v<zero::raw_span<float>, zero::raw_span<double>>);
  constexpr zero::raw_span<const int> ce(nullptr, 4);
  static_assert(ce.size_bytes() == 4 * sizeof(int) && !ce.empty());
}

// ---- precision bundles -----------------------------------------------------------------------------

TEST_CASE("precision: shipped bundles name their buffer types") {
  static_assert(!zero::fp32_precision::has_master);
  static_assert(std::is_same_v<zero::fp32_precision::value_type, float>);
  static_assert(zero::bf16_mixed::has_master);
  static_assert(std::is_same_v<zero::bf16_mixed::value_type, float>);
  static_assert(std::is_same_v<zero::bf16_mixed::param_type, zero::bf16>);
  static_assert(std::is_same_v<zero::bf16_mixed_bf16_comm::comm_type, zero::bf16>);
  static_assert(std::is_same_v<zero::fp16_mixed::grad_type, zero::fp16>);
  static_assert(std::is_same_v<zero::precision<zero::bf16, zero::bf16, void>::value_type, zero::bf16>);
  static_assert(zero::precision_bundle<zero::bf16_mixed> && !zero::precision_bundle<float>);
  CHECK(static_cast<int>(zero::stage2) == 2);
}

}  // TEST_SUITE("unit")
