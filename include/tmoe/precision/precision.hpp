#pragma once
// Precision policies: which types hold weights and activations (storage), run the
// arithmetic (compute), hold the master weights the optimizer updates (master), the
// gradients (grad) and the optimizer state (state), and whether the loss is scaled.
// `storage` is a real type (float, double) or a backend-neutral narrow tag (bf16, fp16 from
// precision/narrow.hpp) that each backend maps to its storage (backend/stored.hpp on the
// CPU). docs/concepts/precision.md.
#include "tmoe/core/concepts.hpp"
#include "tmoe/precision/narrow.hpp"

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

// bf16 weights and activations (rounded to nearest even), fp32 products, fp32 master weights,
// gradients and optimizer state; the router and the losses in fp32. bf16 has fp32's exponent
// range, so no loss scaling.
struct MixedBf16 {
  static constexpr const char* name = "mixed_bf16";
  using storage = bf16;
  using compute = float;
  using master = float;
  using grad = float;
  using state = float;
  static constexpr bool loss_scaling = false;
};
static_assert(PrecisionPolicy<MixedBf16>);

// fp16 weights and activations with the same fp32 arithmetic, plus loss scaling: fp16's
// smallest subnormal is 2^-24, so small activation gradients underflow to zero unless the
// loss is scaled up first (train.loss_scaling: dynamic as PyTorch's GradScaler, or static).
struct MixedFp16 {
  static constexpr const char* name = "mixed_fp16";
  using storage = fp16;
  using compute = float;
  using master = float;
  using grad = float;
  using state = float;
  static constexpr bool loss_scaling = true;
};
static_assert(PrecisionPolicy<MixedFp16>);

template <class P>
inline constexpr bool narrow_storage_v = NarrowStorage<typename P::storage>;

// Bytes of one stored weight/activation as the policy names it (a GPU backend's footprint;
// the CPU backend keeps narrow values in fp32 words, see backend/stored.hpp).
template <class P>
constexpr int storage_bytes() {
  if constexpr (narrow_storage_v<P>) return P::storage::bytes;
  else return static_cast<int>(sizeof(typename P::storage));
}

// How close a policy's gradients and losses come to an fp64 reference on the tiny test
// shapes: relative L2 error of the whole gradient vector, relative error of the loss, and the
// margin of a short training run's final loss against Fp32 (tests/unit/test_precision_numerics.cpp).
// Measured: gradients fp32 3.3e-7, bf16 2.2e-2, fp16 9.0e-4; loss fp32 1.5e-9, bf16 3.4e-5,
// fp16 8.1e-6; final loss vs fp32 after 40
// steps bf16 0.7%, fp16 0.2%. The bounds leave about 3x headroom.
template <class P>
struct Tolerances;
template <>
struct Tolerances<Fp64> {
  static constexpr double grad_rel = 1e-12, loss_rel = 1e-13, train_loss_rel = 1e-12;
};
template <>
struct Tolerances<Fp32> {
  static constexpr double grad_rel = 1e-5, loss_rel = 1e-8, train_loss_rel = 1e-3;
};
template <>
struct Tolerances<MixedBf16> {
  static constexpr double grad_rel = 6e-2, loss_rel = 1e-4, train_loss_rel = 2e-2;
};
template <>
struct Tolerances<MixedFp16> {
  static constexpr double grad_rel = 3e-3, loss_rel = 3e-5, train_loss_rel = 5e-3;
};

}  // namespace tmoe
