#pragma once
// Backend-neutral tags of the 16-bit storage types (DESIGN.md "Precision"): `bf16` and
// `fp16`. Each tag says how a value is rounded into its type: round-to-nearest-even,
// overflow to ±inf, NaN kept, fp16 subnormals kept (no flush to zero), exactly as a
// hardware conversion does. A backend maps a tag to its storage: the CPU backend holds the
// rounded values in fp32 words (backend/stored.hpp); a GPU backend holds the 16-bit type.
#include <bit>
#include <cmath>
#include <concepts>
#include <cstdint>

#include "tmoe/core/macros.hpp"

namespace tmoe {

// bfloat16: 8 exponent bits like fp32, 7 stored mantissa bits.
struct bf16 {
  static constexpr const char* name = "bf16";
  static constexpr int bytes = 2;
  static constexpr double epsilon = 0.0078125;  // 2^-7: spacing of values in [1, 2)
  TMOE_HOST_DEVICE static float round(float x) {
    std::uint32_t u = std::bit_cast<std::uint32_t>(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return x;  // inf and NaN unchanged
    u += 0x7fffu + ((u >> 16) & 1u);                 // ties to even; may carry into inf
    return std::bit_cast<float>(u & 0xffff0000u);
  }
};

// IEEE binary16: 5 exponent bits (largest finite 65504), 10 stored mantissa bits,
// subnormals down to 2^-24.
struct fp16 {
  static constexpr const char* name = "fp16";
  static constexpr int bytes = 2;
  static constexpr double epsilon = 0.0009765625;  // 2^-10
  static constexpr float max = 65504.0f;
  TMOE_HOST_DEVICE static float round(float x) {
    const std::uint32_t u = std::bit_cast<std::uint32_t>(x);
    const std::uint32_t mag = u & 0x7fffffffu;
    if (mag >= 0x7f800000u) return x;  // inf, NaN
    // 65520 = 65504 + half a unit in the last place: from there on the nearest is inf.
    if (mag >= 0x477ff000u) return std::bit_cast<float>((u & 0x80000000u) | 0x7f800000u);
    if (mag >= 0x38800000u) {  // >= 2^-14: a normal fp16 value; drop 13 mantissa bits
      const std::uint32_t r = (u + 0xfffu + ((u >> 13) & 1u)) & 0xffffe000u;
      return std::bit_cast<float>(r);
    }
    // Subnormal range: multiples of 2^-24. x·2^24 is exact; nearbyint rounds ties to even.
    const float q = std::nearbyint(x * 16777216.0f);
    return std::copysign(q * 5.9604644775390625e-8f, x);
  }
};

template <class S>
concept NarrowStorage = requires(float x) {
  { S::round(x) } -> std::same_as<float>;
  { S::bytes } -> std::convertible_to<int>;
};

}  // namespace tmoe
