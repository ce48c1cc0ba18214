#pragma once
// ExpertChoice router (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing").
// Token-to-expert scores are p = softmax(l) over experts, per token. Each expert then picks
// the C tokens of the micro-batch with the largest p[t, e] (ties: lower token index), with
// C = ceil(model.capacity_factor · N · k / E) clamped to N, so every expert is exactly full
// and a token may be processed by any number of experts, none included. The gate of a pick
// is p[t, e] (times model.route_scale). The per-expert column selection is done by the MoE
// layer; this struct holds the per-token part.
//
// Causality. Which tokens an expert picks depends on every token of the micro-batch, later
// positions included, so in a causal LM a token's output can depend on future tokens
// through the competition for capacity (never through its values). Training and evaluation
// both route over the whole micro-batch, so the validation loss is measured the way the
// model was trained and shares that leak. Generation runs the model on the window of tokens
// produced so far: the last position competes only with the past, so no future token is
// involved, but a position's routing can change as the window grows.
#include <cmath>
#include <cstdint>

#include "tmoe/core/macros.hpp"
#include "tmoe/moe/routing.hpp"

namespace tmoe {

struct ExpertChoice {
  static constexpr const char* name = "expert_choice";
  static constexpr RouterKind kind = RouterKind::kExpertChoice;
  static constexpr bool learned = true;
  static constexpr bool has_bias = false;

  template <class T>
  TMOE_HOST_DEVICE static void scores_token(const RouterParams& rp, const T* logits, const T*, T* probs, T* sel) {
    const std::int64_t e = rp.n_experts;
    T mx = logits[0];
    for (std::int64_t i = 1; i < e; ++i) mx = logits[i] > mx ? logits[i] : mx;
    double s = 0;
    for (std::int64_t i = 0; i < e; ++i) s += std::exp(static_cast<double>(logits[i] - mx));
    for (std::int64_t i = 0; i < e; ++i) sel[i] = probs[i] = static_cast<T>(std::exp(static_cast<double>(logits[i] - mx)) / s);
  }

  // dlogits (E) from dprobs (E): the gates' gradients arrive through dprobs, because every
  // gate is an entry of p.
  template <class T>
  TMOE_HOST_DEVICE static void backward_token(const RouterParams& rp, const T*, const T* probs, const T* dprobs,
                                              T* dlogits) {
    const std::int64_t e = rp.n_experts;
    double dot = 0;
    for (std::int64_t i = 0; i < e; ++i) dot += static_cast<double>(dprobs[i]) * static_cast<double>(probs[i]);
    for (std::int64_t i = 0; i < e; ++i)
      dlogits[i] = static_cast<T>(static_cast<double>(probs[i]) * (static_cast<double>(dprobs[i]) - dot));
  }
};

}  // namespace tmoe

#include "tmoe/core/concepts.hpp"
static_assert(tmoe::Router<tmoe::ExpertChoice>);
