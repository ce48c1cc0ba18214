#pragma once
// Hash router (Roller et al. 2021, "Hash Layers For Large Sparse Models"): a token's experts
// are a fixed function of its token id, nothing is learned and there is no router matrix.
// Expert j of token id v is drawn from a Philox stream keyed by v alone (never by the run's
// seed, so the map is the same in every run and after every resume); a draw equal to an
// earlier pick is replaced by the next draw of the stream, so the k picks are distinct.
// Each pick has gate 1/k (times model.route_scale). The balancing losses still report their
// values (probs are the gates spread over the picks), with no gradient to give.
#include <cstdint>

#include "tmoe/core/macros.hpp"
#include "tmoe/core/philox.hpp"
#include "tmoe/moe/routing.hpp"

namespace tmoe {

struct Hash {
  static constexpr const char* name = "hash";
  static constexpr RouterKind kind = RouterKind::kHash;
  static constexpr bool learned = false;
  static constexpr bool has_bias = false;
  static constexpr std::uint64_t kKey = 0x48617368526f7574ull;  // fixed: "HashRout"

  // ids (k), gates (k), probs (E) for token id `token`.
  template <class T>
  TMOE_HOST_DEVICE static void route_token(const RouterParams& rp, std::int32_t token, std::int32_t* ids, T* gates,
                                           T* probs) {
    const std::int64_t e = rp.n_experts, k = rp.k;
    const RngKey key{kKey, 0, site_id(Site::kRouterNoise, 0xFFFFu), static_cast<std::uint32_t>(token)};
    std::uint64_t draw = 0;
    for (std::int64_t j = 0; j < k; ++j) {
      std::int32_t pick = 0;
      for (bool fresh = false; !fresh;) {
        pick = static_cast<std::int32_t>(key.bits(draw++) % static_cast<std::uint32_t>(e));
        fresh = true;
        for (std::int64_t q = 0; q < j; ++q) fresh = fresh && ids[q] != pick;
      }
      ids[j] = pick;
    }
    for (std::int64_t i = 0; i < e; ++i) probs[i] = T(0);
    for (std::int64_t j = 0; j < k; ++j) {
      gates[j] = static_cast<T>(1.0 / static_cast<double>(k));
      probs[ids[j]] = gates[j];
    }
  }
};

}  // namespace tmoe

#include "tmoe/core/concepts.hpp"
static_assert(tmoe::Router<tmoe::Hash>);
