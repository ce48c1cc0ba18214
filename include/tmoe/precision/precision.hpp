#pragma once
// Precision policies: which types hold weights, activations, master weights, gradients and
// optimizer state, and whether the loss is scaled. Later issues add MixedBf16/MixedFp16
// (backend-neutral tags mapped to storage types by each backend).
#include "tmoe/core/concepts.hpp"

namespace tmoe {

struct Fp32 {
  static constexpr const char* name = "fp32";
  using storage = float;
  using compute = float;
  using master = float;
  using grad = float;
  using state = float;
  static constexpr bool loss_scaling = false;
};
static_assert(PrecisionPolicy<Fp32>);

// Everything in double: gradient checks and exact parity with a reference.
struct Fp64 {
  static constexpr const char* name = "fp64";
  using storage = double;
  using compute = double;
  using master = double;
  using grad = double;
  using state = double;
  static constexpr bool loss_scaling = false;
};
static_assert(PrecisionPolicy<Fp64>);

}  // namespace tmoe
