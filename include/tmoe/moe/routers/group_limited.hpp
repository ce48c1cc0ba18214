#pragma once
// GroupLimited<Inner>: node-/device-limited routing (DeepSeek-V2/V3). The E experts form
// model.n_groups groups of E/G consecutive experts. A group's score is the sum of its two
// largest selection keys (its largest alone when a group holds one expert); only the
// model.top_groups best groups (ties: lower group index) stay eligible, the keys of every
// other expert become -inf, and Inner's top-k runs on what is left. Probabilities, gates and
// gradients are Inner's: the group mask only changes which experts can be selected.
// DeepSeek-V3's routing is GroupLimited<SigmoidBias>.
#include <cstdint>
#include <limits>

#include "tmoe/core/macros.hpp"
#include "tmoe/moe/routing.hpp"

namespace tmoe {

template <class Inner>
struct GroupLimited {
  static_assert(Inner::kind == RouterKind::kTokenChoice,
                "tmoe: GroupLimited<Inner>: Inner must be a token-choice router such as TopK or SigmoidBias; expert "
                "choice and hash routing do not rank experts per token, so there is nothing to limit to groups");
  static constexpr const char* name = "group_limited";
  static constexpr RouterKind kind = RouterKind::kTokenChoice;
  static constexpr bool learned = Inner::learned;
  static constexpr bool has_bias = Inner::has_bias;
  using inner = Inner;

  template <class T>
  TMOE_HOST_DEVICE static T group_score(const T* sel, std::int64_t first, std::int64_t size) {
    T a = sel[first], b = -std::numeric_limits<T>::infinity();
    for (std::int64_t i = first + 1; i < first + size; ++i) {
      if (sel[i] > a) {
        b = a;
        a = sel[i];
      } else if (sel[i] > b) {
        b = sel[i];
      }
    }
    return size == 1 ? a : a + b;
  }

  template <class T>
  TMOE_HOST_DEVICE static void scores_token(const RouterParams& rp, const T* logits, const T* bias, T* probs, T* sel) {
    Inner::scores_token(rp, logits, bias, probs, sel);
    const std::int64_t g = rp.n_groups, size = rp.n_experts / rp.n_groups;
    if (g <= 1 || rp.top_groups >= g) return;
    // Group q is eligible when fewer than top_groups groups rank above it. Every decision
    // is taken on the unmasked keys (a 64-bit mask, so G <= 64: ModelConfig checks), then
    // the ineligible groups are masked. Scores are recomputed, not stored: G is small.
    std::uint64_t masked = 0;
    for (std::int64_t q = 0; q < g; ++q) {
      const T sq = group_score(sel, q * size, size);
      std::int64_t above = 0;
      for (std::int64_t o = 0; o < g; ++o) {
        if (o == q) continue;
        const T so = group_score(sel, o * size, size);
        above += (so > sq || (so == sq && o < q)) ? 1 : 0;
      }
      if (above >= rp.top_groups) masked |= std::uint64_t{1} << q;
    }
    for (std::int64_t q = 0; q < g; ++q)
      if (masked >> q & 1u)
        for (std::int64_t i = q * size; i < (q + 1) * size; ++i) sel[i] = -std::numeric_limits<T>::infinity();
  }

  template <class T>
  TMOE_HOST_DEVICE static void gates_token(const RouterParams& rp, const T* logits, const T* probs,
                                           const std::int32_t* ids, T* gates) {
    Inner::gates_token(rp, logits, probs, ids, gates);
  }
  template <class T>
  TMOE_HOST_DEVICE static void backward_token(const RouterParams& rp, const T* logits, const T* probs,
                                              const std::int32_t* ids, const T* gates, const T* dgates,
                                              const T* dprobs, T* dlogits) {
    Inner::backward_token(rp, logits, probs, ids, gates, dgates, dprobs, dlogits);
  }
};

}  // namespace tmoe

#include "tmoe/core/concepts.hpp"
#include "tmoe/moe/routers/sigmoid_bias.hpp"
#include "tmoe/moe/routers/topk.hpp"
static_assert(tmoe::Router<tmoe::GroupLimited<tmoe::SigmoidBias>>);
static_assert(tmoe::Router<tmoe::GroupLimited<tmoe::TopK>>);
