#pragma once
// What every router shares: its run-time numbers (RouterParams), the per-forward context the
// model hands an MoE layer (RouteContext), and the top-k selection all token-choice routers
// use. Router math is per token and written as TMOE_HOST_DEVICE functions, so the CPU loop
// and a GPU kernel run the same code (DESIGN.md).
//
// A token-choice router splits its work in three per-token steps, which is what lets a
// wrapper such as GroupLimited<Inner> change the selection without touching the gates:
//   scores   logits (E) -> probs (E): the distribution the balancing losses see, and
//            sel (E): the keys the top-k selection ranks
//   select   the k largest keys of sel -> ids (k)          (select_topk, shared)
//   gates    logits, probs, ids -> gates (k)
//   backward dgates (k), dprobs (E) -> dlogits (E)
// Temperature, jitter, noise and route_scale are applied by the MoE layer around these
// steps, identically for every router.
#include <cmath>
#include <cstdint>
#include <limits>

#include "tmoe/core/macros.hpp"

namespace tmoe {

enum class RouterKind {
  kTokenChoice,   // each token picks k experts
  kExpertChoice,  // each expert picks its C tokens
  kHash,          // a fixed function of the token id picks k experts; nothing learned
};

struct RouterParams {
  std::int64_t n_experts = 0;
  std::int64_t k = 0;
  bool renormalize = true;       // gates renormalised over the k selected experts
  std::int64_t n_groups = 1;     // GroupLimited
  std::int64_t top_groups = 1;   // GroupLimited
};

// Where an MoE layer's forward sits: the token ids (for Hash), the (B, T) shape (for the
// sequence-wise loss and TransformerExpert), and, in training, the Philox coordinates of
// its noise. The model fills one per forward.
struct RouteContext {
  const std::int32_t* tokens = nullptr;  // (B·T) token ids, or null
  std::int64_t batch = 0, seq_len = 0;   // 0: one sequence of all rows
  bool training = false;                 // noise and the bias-update load count only in training
  std::uint64_t seed = 0;
  std::int64_t step = 0;                 // optimizer step (0-based)
  std::int64_t token_offset = 0;         // global index of this forward's first token in the step
  std::int64_t layer = 0;
  bool recompute = false;                // a recomputation of an earlier forward (full activation
                                         // recompute): same results, no statistics counted twice
};

// ids (k) = indices of the k largest keys, largest first; ties keep the lower index, so the
// choice depends on the keys alone. Keys equal to -inf (masked) are never chosen unless
// fewer than k finite keys exist.
template <class T>
TMOE_HOST_DEVICE inline void select_topk(const T* keys, std::int64_t e, std::int64_t k, std::int32_t* ids) {
  std::int64_t have = 0;
  for (std::int64_t i = 0; i < e; ++i) {
    if (have == k && !(keys[i] > keys[ids[k - 1]])) continue;
    std::int64_t at = have < k ? have++ : k - 1;
    while (at > 0 && keys[i] > keys[ids[at - 1]]) {
      ids[at] = ids[at - 1];
      --at;
    }
    ids[at] = static_cast<std::int32_t>(i);
  }
}

namespace detail {
// log σ(x) = -softplus(-x), finite for every finite x.
TMOE_HOST_DEVICE inline double log_sigmoid(double x) {
  return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x));
}
TMOE_HOST_DEVICE inline double sigmoid(double x) {
  return x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x));
}
}  // namespace detail

}  // namespace tmoe
