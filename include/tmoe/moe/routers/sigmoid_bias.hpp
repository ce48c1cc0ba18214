#pragma once
// SigmoidBias router (DeepSeek-V3). For one token with logits l (E):
//   affinities  s_i = σ(l_i)
//   select      the k largest s_i + b_i, where b is a per-expert bias that is not trained
//               by the gradient: the BiasUpdate balancing policy moves it after each step
//               (b_i += γ sign(mean load − load_i)), the "auxiliary-loss-free" balancing
//   gates       renormalised: g_j = s_j / Σ_selected s   (unnormalised: g_j = s_j); the layer
//               multiplies by model.route_scale
//   probs       p_i = s_i / Σ_all s, the normalised affinities DeepSeek-V3's sequence-wise
//               balance loss uses
// Both ratios are formed in log space (log σ is finite for every finite logit), so they stay
// exact when every σ underflows (logits of -1e4).
//   ∂g_j/∂l_m (renormalised) = g_j (1 − s_m)(δ_jm − g_m),  ∂p_i/∂l_m likewise with p.
#include <cmath>
#include <cstdint>

#include "tmoe/core/macros.hpp"
#include "tmoe/moe/routing.hpp"

namespace tmoe {

struct SigmoidBias {
  static constexpr const char* name = "sigmoid_bias";
  static constexpr RouterKind kind = RouterKind::kTokenChoice;
  static constexpr bool learned = true;
  static constexpr bool has_bias = true;  // the layer keeps a per-expert selection bias

  template <class T>
  TMOE_HOST_DEVICE static void scores_token(const RouterParams& rp, const T* logits, const T* bias, T* probs, T* sel) {
    const std::int64_t e = rp.n_experts;
    double mx = -1e300;
    for (std::int64_t i = 0; i < e; ++i) {
      const double ls = detail::log_sigmoid(static_cast<double>(logits[i]));
      mx = ls > mx ? ls : mx;
    }
    double z = 0;
    for (std::int64_t i = 0; i < e; ++i) z += std::exp(detail::log_sigmoid(static_cast<double>(logits[i])) - mx);
    for (std::int64_t i = 0; i < e; ++i) {
      probs[i] = static_cast<T>(std::exp(detail::log_sigmoid(static_cast<double>(logits[i])) - mx) / z);
      sel[i] = static_cast<T>(detail::sigmoid(static_cast<double>(logits[i])) + (bias ? static_cast<double>(bias[i]) : 0.0));
    }
  }

  template <class T>
  TMOE_HOST_DEVICE static void gates_token(const RouterParams& rp, const T* logits, const T*, const std::int32_t* ids,
                                           T* gates) {
    const std::int64_t k = rp.k;
    if (rp.renormalize) {
      double mx = -1e300;
      for (std::int64_t j = 0; j < k; ++j) {
        const double ls = detail::log_sigmoid(static_cast<double>(logits[ids[j]]));
        mx = ls > mx ? ls : mx;
      }
      double z = 0;
      for (std::int64_t j = 0; j < k; ++j) z += std::exp(detail::log_sigmoid(static_cast<double>(logits[ids[j]])) - mx);
      for (std::int64_t j = 0; j < k; ++j)
        gates[j] = static_cast<T>(std::exp(detail::log_sigmoid(static_cast<double>(logits[ids[j]])) - mx) / z);
    } else {
      for (std::int64_t j = 0; j < k; ++j) gates[j] = static_cast<T>(detail::sigmoid(static_cast<double>(logits[ids[j]])));
    }
  }

  template <class T>
  TMOE_HOST_DEVICE static void backward_token(const RouterParams& rp, const T* logits, const T* probs,
                                              const std::int32_t* ids, const T* gates, const T* dgates,
                                              const T* dprobs, T* dlogits) {
    const std::int64_t e = rp.n_experts, k = rp.k;
    // probs: dl_m = (1 − s_m) p_m (dp_m − Σ_i dp_i p_i)
    double pdot = 0;
    if (dprobs)
      for (std::int64_t i = 0; i < e; ++i) pdot += static_cast<double>(dprobs[i]) * static_cast<double>(probs[i]);
    for (std::int64_t i = 0; i < e; ++i) {
      const double one_minus_s = detail::sigmoid(-static_cast<double>(logits[i]));
      dlogits[i] = dprobs ? static_cast<T>(one_minus_s * static_cast<double>(probs[i]) *
                                           (static_cast<double>(dprobs[i]) - pdot))
                          : T(0);
    }
    if (rp.renormalize) {  // dl_m += (1 − s_m) g_m (dg_m − Σ_j dg_j g_j)
      double gdot = 0;
      for (std::int64_t j = 0; j < k; ++j) gdot += static_cast<double>(gates[j]) * static_cast<double>(dgates[j]);
      for (std::int64_t j = 0; j < k; ++j) {
        const double one_minus_s = detail::sigmoid(-static_cast<double>(logits[ids[j]]));
        dlogits[ids[j]] += static_cast<T>(one_minus_s * static_cast<double>(gates[j]) *
                                          (static_cast<double>(dgates[j]) - gdot));
      }
    } else {  // g_j = s_j: dl_j += dg_j s_j (1 − s_j)
      for (std::int64_t j = 0; j < k; ++j) {
        const double x = static_cast<double>(logits[ids[j]]);
        dlogits[ids[j]] += static_cast<T>(static_cast<double>(dgates[j]) * detail::sigmoid(x) * detail::sigmoid(-x));
      }
    }
  }
};

}  // namespace tmoe

#include "tmoe/core/concepts.hpp"
static_assert(tmoe::Router<tmoe::SigmoidBias>);
