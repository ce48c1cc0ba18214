#pragma once
// Activation recomputation (gradient checkpointing). The recompute role's members share one
// code path, so the mode is a run-time field, model.recompute (DESIGN.md principle 1):
//   none       every layer keeps what its backward needs (fastest, most memory);
//   full       each block keeps only its input (the residual stream, which the model holds
//              anyway); its saved activations are freed after its forward, and backward
//              re-runs the block's forward just before the block's backward. Peak: one
//              block's activations instead of all of them, for ~one extra forward;
//   selective  attention keeps no (B, H, T, T) probabilities — backward recomputes them
//              from q and k — and routed experts rebuild their hidden activations in
//              backward, one expert at a time (Megatron's selective recomputation of the
//              attention core, extended to the MoE's largest buffers).
// Every recomputation repeats the same fixed-shape products, the same Philox masks and the
// same routing, so gradients are bitwise those of `none` (tests/unit/test_recompute.cpp);
// a recomputed forward counts no statistics twice (RouteContext::recompute).
#include <string>

#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"

namespace tmoe {

enum class RecomputeMode { kNone, kFull, kSelective };

inline RecomputeMode recompute_mode(const ModelConfig& m) {
  if (m.recompute == "none") return RecomputeMode::kNone;
  if (m.recompute == "full") return RecomputeMode::kFull;
  if (m.recompute == "selective") return RecomputeMode::kSelective;
  throw Error("recompute is '" + m.recompute + "'", "model.recompute", "none, full or selective");
}

inline const char* recompute_name(RecomputeMode r) {
  return r == RecomputeMode::kFull ? "full" : r == RecomputeMode::kSelective ? "selective" : "none";
}

}  // namespace tmoe
