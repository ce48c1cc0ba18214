#pragma once
// Philox4x32-10 counter-based generator (Salmon et al., "Parallel random numbers: as easy
// as 1, 2, 3", SC'11). A draw is a pure function of (key, counter), so no random number
// depends on threads, ranks or batch composition (DESIGN.md principle 5). tmoe keys it as
//   key     = seed (64 bits)
//   counter = (step, site, global token index, global element index)
// where `site` names the use (see Site below).
#include <array>
#include <cmath>
#include <cstdint>

#include "tmoe/core/macros.hpp"

namespace tmoe {

// Named uses of randomness; a site value is mixed with a layer index where needed.
enum class Site : std::uint32_t {
  kInit = 1,        // parameter initialisation: token = parameter index
  kBatch = 2,       // choice of training windows: token = row in the global batch
  kSample = 3,      // text sampling
  kRouterNoise = 4,
  kDropout = 5,
  kAugment = 6,     // data augmentation noise: token = record index
  kTest = 100,
};

TMOE_HOST_DEVICE constexpr std::uint32_t site_id(Site s, std::uint32_t index = 0) {
  return (static_cast<std::uint32_t>(s) << 16) ^ index;
}

struct Philox4x32 {
  using Block = std::array<std::uint32_t, 4>;

  TMOE_HOST_DEVICE static constexpr Block generate(std::uint64_t seed, Block ctr) {
    std::uint32_t k0 = static_cast<std::uint32_t>(seed), k1 = static_cast<std::uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r) {
      const std::uint64_t p0 = std::uint64_t{0xD2511F53u} * ctr[0];
      const std::uint64_t p1 = std::uint64_t{0xCD9E8D57u} * ctr[2];
      const std::uint32_t hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
      const std::uint32_t hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
      ctr = {hi1 ^ ctr[1] ^ k0, lo1, hi0 ^ ctr[3] ^ k1, lo0};
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    return ctr;
  }
};

// A stream of draws for one (seed, step, site, token); `element` indexes the value.
// Four 32-bit words come from one Philox block, so element e uses block e/4, word e%4.
struct RngKey {
  std::uint64_t seed = 0;
  std::uint32_t step = 0;
  std::uint32_t site = 0;
  std::uint32_t token = 0;

  TMOE_HOST_DEVICE std::uint32_t bits(std::uint64_t element) const {
    // The element index takes the fourth counter word; blocks beyond 2^32 words fold the
    // high part into the token word (token streams longer than 16 Gi values do not occur).
    const std::uint64_t block = element >> 2;
    const auto b = Philox4x32::generate(
        seed, {step, site, token ^ static_cast<std::uint32_t>(block >> 32), static_cast<std::uint32_t>(block)});
    return b[element & 3];
  }
  // Uniform in (0, 1): 24 random bits, never exactly 0 or 1.
  TMOE_HOST_DEVICE double uniform(std::uint64_t element) const {
    return (static_cast<double>(bits(element) >> 8) + 0.5) * (1.0 / 16777216.0);
  }
  // Standard normal by Box-Muller over elements (2e, 2e+1) of a paired stream.
  TMOE_HOST_DEVICE double normal(std::uint64_t element) const {
    const double u1 = uniform(2 * element), u2 = uniform(2 * element + 1);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

}  // namespace tmoe
