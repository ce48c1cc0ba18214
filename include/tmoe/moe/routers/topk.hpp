#pragma once
// TopK softmax router. For one token with router logits l (E):
//   renormalised (the seed's gate):  pick the k largest logits, gates = softmax over those k;
//   unnormalised (Switch/GShard):    p = softmax(l) over all experts, gates = p at the k picks.
// The renormalised gate equals softmax-then-top-k renormalised by Σ_selected p (tested).
// Ties pick the lower expert index, so selection never depends on anything but the logits.
// Probabilities p over all experts are always produced: the balancing losses need them.
// Router math is per token and pointwise, written once for the CPU loop and a GPU kernel.
#include <cmath>
#include <cstdint>

#include "tmoe/core/macros.hpp"

namespace tmoe {

struct RouterParams {
  std::int64_t n_experts = 0;
  std::int64_t k = 0;
  bool renormalize = true;
};

struct TopK {
  static constexpr const char* name = "topk";

  // ids (k), gates (k), probs (E), *lse = log Σ exp(l)
  template <class T>
  TMOE_HOST_DEVICE static void forward_token(const RouterParams& rp, const T* logits, std::int32_t* ids, T* gates,
                                             T* probs, T* lse) {
    const std::int64_t e = rp.n_experts, k = rp.k;
    T mx = logits[0];
    for (std::int64_t i = 1; i < e; ++i) mx = logits[i] > mx ? logits[i] : mx;
    double s = 0;
    for (std::int64_t i = 0; i < e; ++i) s += std::exp(static_cast<double>(logits[i] - mx));
    for (std::int64_t i = 0; i < e; ++i) probs[i] = static_cast<T>(std::exp(static_cast<double>(logits[i] - mx)) / s);
    *lse = static_cast<T>(std::log(s) + static_cast<double>(mx));
    // Selection: k passes over the logits; strict '>' keeps the lower index on ties.
    for (std::int64_t j = 0; j < k; ++j) {
      std::int32_t best = -1;
      for (std::int64_t i = 0; i < e; ++i) {
        bool taken = false;
        for (std::int64_t q = 0; q < j; ++q) taken = taken || ids[q] == i;
        if (!taken && (best < 0 || logits[i] > logits[best])) best = static_cast<std::int32_t>(i);
      }
      ids[j] = best;
    }
    if (rp.renormalize) {
      // softmax over the selected logits; ids[0] holds the largest.
      double z = 0;
      for (std::int64_t j = 0; j < k; ++j) z += std::exp(static_cast<double>(logits[ids[j]] - logits[ids[0]]));
      for (std::int64_t j = 0; j < k; ++j)
        gates[j] = static_cast<T>(std::exp(static_cast<double>(logits[ids[j]] - logits[ids[0]])) / z);
    } else {
      for (std::int64_t j = 0; j < k; ++j) gates[j] = probs[ids[j]];
    }
  }

  // dlogits (E) from dgates (k), dprobs (E: gradients of losses that use the full softmax,
  // such as the load-balancing loss) and dlse (the z-loss).
  template <class T>
  TMOE_HOST_DEVICE static void backward_token(const RouterParams& rp, const std::int32_t* ids, const T* gates,
                                              const T* probs, const T* dgates, const T* dprobs, T dlse,
                                              T* dlogits) {
    const std::int64_t e = rp.n_experts, k = rp.k;
    // Full-softmax path: dp = dprobs (+ dgates scattered when gates are the full probs).
    double dot = 0;
    for (std::int64_t i = 0; i < e; ++i) {
      double dp = dprobs ? static_cast<double>(dprobs[i]) : 0.0;
      if (!rp.renormalize)
        for (std::int64_t j = 0; j < k; ++j) dp += ids[j] == i ? static_cast<double>(dgates[j]) : 0.0;
      dlogits[i] = static_cast<T>(dp);
      dot += dp * static_cast<double>(probs[i]);
    }
    for (std::int64_t i = 0; i < e; ++i)
      dlogits[i] = static_cast<T>(static_cast<double>(probs[i]) *
                                  (static_cast<double>(dlogits[i]) - dot + static_cast<double>(dlse)));
    if (rp.renormalize) {
      double gdot = 0;
      for (std::int64_t j = 0; j < k; ++j) gdot += static_cast<double>(gates[j]) * static_cast<double>(dgates[j]);
      for (std::int64_t j = 0; j < k; ++j)
        dlogits[ids[j]] += static_cast<T>(static_cast<double>(gates[j]) * (static_cast<double>(dgates[j]) - gdot));
    }
  }
};

}  // namespace tmoe

#include "tmoe/core/concepts.hpp"
static_assert(tmoe::Router<tmoe::TopK>);
