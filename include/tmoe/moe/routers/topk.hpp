#pragma once
// TopK softmax router. For one token with router logits l (E) (already divided by the
// temperature by the MoE layer):
//   probs  p = softmax(l) over all experts (what the balancing losses see)
//   select the k largest logits (ties: lower expert index)
//   gates  renormalised (the seed's gate):  softmax over the k selected logits
//          unnormalised (Switch/GShard):    p at the k picks
// The renormalised gate equals softmax-then-top-k renormalised by Σ_selected p (tested).
#include <cmath>
#include <cstdint>

#include "tmoe/core/macros.hpp"
#include "tmoe/moe/routing.hpp"

namespace tmoe {

struct TopK {
  static constexpr const char* name = "topk";
  static constexpr RouterKind kind = RouterKind::kTokenChoice;
  static constexpr bool learned = true;   // has a router matrix
  static constexpr bool has_bias = false; // no selection bias to update

  // probs (E), sel (E): selection keys. bias is unused (may be null).
  template <class T>
  TMOE_HOST_DEVICE static void scores_token(const RouterParams& rp, const T* logits, const T*, T* probs, T* sel) {
    const std::int64_t e = rp.n_experts;
    T mx = logits[0];
    for (std::int64_t i = 1; i < e; ++i) mx = logits[i] > mx ? logits[i] : mx;
    double s = 0;
    for (std::int64_t i = 0; i < e; ++i) s += std::exp(static_cast<double>(logits[i] - mx));
    for (std::int64_t i = 0; i < e; ++i) {
      probs[i] = static_cast<T>(std::exp(static_cast<double>(logits[i] - mx)) / s);
      sel[i] = logits[i];
    }
  }

  template <class T>
  TMOE_HOST_DEVICE static void gates_token(const RouterParams& rp, const T* logits, const T* probs,
                                           const std::int32_t* ids, T* gates) {
    const std::int64_t k = rp.k;
    if (rp.renormalize) {  // softmax over the selected logits; ids[0] holds the largest
      double z = 0;
      for (std::int64_t j = 0; j < k; ++j) z += std::exp(static_cast<double>(logits[ids[j]] - logits[ids[0]]));
      for (std::int64_t j = 0; j < k; ++j)
        gates[j] = static_cast<T>(std::exp(static_cast<double>(logits[ids[j]] - logits[ids[0]])) / z);
    } else {
      for (std::int64_t j = 0; j < k; ++j) gates[j] = probs[ids[j]];
    }
  }

  // dlogits (E), overwritten, from dgates (k) and dprobs (E; may be null).
  template <class T>
  TMOE_HOST_DEVICE static void backward_token(const RouterParams& rp, const T*, const T* probs,
                                              const std::int32_t* ids, const T* gates, const T* dgates,
                                              const T* dprobs, T* dlogits) {
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
      dlogits[i] = static_cast<T>(static_cast<double>(probs[i]) * (static_cast<double>(dlogits[i]) - dot));
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
