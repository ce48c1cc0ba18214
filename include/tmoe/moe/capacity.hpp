#pragma once
// Capacity policies: whether an expert's load per micro-batch is limited.
//   Dropless        every routed (token, expert) pair is processed.
//   CapacityFactor  expert capacity C = ceil(model.capacity_factor · N · k / E) (at most N);
//                   an expert routed more than C tokens keeps C of them, chosen by
//                   model.drop_policy:
//                     probability  the C largest gates (ties: earlier token, earlier slot)
//                     position     the C earliest (token, slot) pairs in token order
//                   A dropped pair contributes nothing; a token whose every pair is dropped
//                   passes through the block's residual connection unchanged. The number
//                   dropped per expert is reported in MoEStats.
// ExpertChoice routing fills every expert to exactly C by construction, so it needs
// CapacityFactor (for C) and MoE rejects it with Dropless at compile time.
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace tmoe {

struct Dropless {
  static constexpr const char* name = "dropless";
  static constexpr bool drops = false;
};

struct CapacityFactor {
  static constexpr const char* name = "capacity_factor";
  static constexpr bool drops = true;
};

// C = ceil(factor · n · k / e), clamped to [1, n] (0 for an empty batch).
inline std::int64_t expert_capacity(double factor, std::int64_t n, std::int64_t k, std::int64_t e) {
  if (n <= 0) return 0;
  const double c = std::ceil(factor * static_cast<double>(n) * static_cast<double>(k) / static_cast<double>(e) - 1e-9);
  return std::clamp<std::int64_t>(static_cast<std::int64_t>(c), 1, std::max<std::int64_t>(n, 1));
}

}  // namespace tmoe

#include "tmoe/core/concepts.hpp"
static_assert(tmoe::CapacityPolicy<tmoe::Dropless>);
static_assert(tmoe::CapacityPolicy<tmoe::CapacityFactor>);
