#pragma once
// Dropout as regularisation, training only (docs/regularisation.md). Every mask is a pure
// function of Philox keyed (DESIGN.md principle 5) as
//   key     = seed
//   counter = (step, site, global token index, element index)
// with site = site_id(Site::kDropout, 8 · layer + use): `use` names which dropout of the
// layer (DropoutUse below), the token is the GLOBAL index of the row's token in the step
// (RouteContext::token_offset + local row, or + the routed row's token for an expert), and
// the element index says which value of that token's stream. So no mask depends on threads,
// batch composition or ranks, and a backward regenerates the mask it needs from the same
// keys instead of storing it.
//
// A value is kept when its 32-bit Philox word is >= threshold = ⌊p · 2³²⌋ (P(drop) = p to
// within 2⁻³²); kept values are scaled by 1/(1 − p) (inverted dropout), so evaluation is the
// identity. The mask math is TMOE_HOST_DEVICE so a CUDA kernel can run the same code.
#include <algorithm>
#include <cstdint>

#include "tmoe/core/macros.hpp"
#include "tmoe/core/philox.hpp"

namespace tmoe {

// Which dropout of a layer a site names; site_id keeps 16 bits of 8 · layer + use, so
// layers up to 8191 have distinct sites.
enum class DropoutUse : std::uint32_t {
  kAttnOut = 0,          // model.dropout on the attention output (block residual)
  kFfnOut = 1,           // model.dropout on the feed-forward output (block residual)
  kAttnProbs = 2,        // model.attn_dropout in the block's attention
  kExpertHidden = 3,     // model.expert_dropout on a routed expert's hidden units
  kExpertDrop = 4,       // model.expert_drop_rate: a (token, expert) assignment
  kExpertAttnProbs = 5,  // model.attn_dropout inside a TransformerExpert
};
inline constexpr std::uint32_t kDropoutUses = 8;

TMOE_HOST_DEVICE constexpr std::uint32_t dropout_site(std::int64_t layer, DropoutUse use) {
  return site_id(Site::kDropout, static_cast<std::uint32_t>(layer) * kDropoutUses + static_cast<std::uint32_t>(use));
}

// The keep/drop decisions and the scale of one dropout: which of them a (token, element)
// gets is kept(token, element). Default constructed (or rate 0, or not training): inactive,
// and every caller skips it once per call, not per element.
struct DropoutMask {
  std::uint64_t seed = 0;
  std::uint32_t step = 0, site = 0;
  std::uint32_t threshold = 0;  // keep iff word >= threshold; 0: keep everything
  double scale = 1;             // 1 / (1 − p)

  static DropoutMask make(double rate, std::uint64_t seed, std::int64_t step, std::uint32_t site) {
    DropoutMask m;
    m.seed = seed;
    m.step = static_cast<std::uint32_t>(step);
    m.site = site;
    m.threshold = threshold_of(rate);
    m.scale = m.threshold ? 1.0 / (1.0 - rate) : 1.0;
    return m;
  }
  TMOE_HOST_DEVICE static std::uint32_t threshold_of(double rate) {
    if (!(rate > 0)) return 0;
    const double t = rate * 4294967296.0;
    return t >= 4294967295.0 ? 0xffffffffu : static_cast<std::uint32_t>(t);
  }
  TMOE_HOST_DEVICE bool active() const { return threshold != 0; }

  // Philox block `block` of a token's stream: the counter layout of RngKey::bits, so word
  // e % 4 of block e / 4 is RngKey{seed, step, site, token}.bits(e).
  TMOE_HOST_DEVICE Philox4x32::Block block(std::uint32_t token, std::uint64_t block) const {
    return Philox4x32::generate(seed, {step, site, token ^ static_cast<std::uint32_t>(block >> 32),
                                       static_cast<std::uint32_t>(block)});
  }
  TMOE_HOST_DEVICE bool kept(std::uint64_t token, std::uint64_t element) const {
    return block(static_cast<std::uint32_t>(token), element >> 2)[element & 3] >= threshold;
  }

  // fn(i, kept) for i < count: whether element e0 + i of `token` is kept, one Philox call
  // per four elements.
  template <class F>
  TMOE_HOST_DEVICE void for_each(std::uint64_t token, std::uint64_t e0, std::int64_t count, F&& fn) const {
    const auto tok = static_cast<std::uint32_t>(token);
    std::int64_t i = 0;
    while (i < count) {
      const std::uint64_t e = e0 + static_cast<std::uint64_t>(i);
      const Philox4x32::Block w = block(tok, e >> 2);
      for (std::uint64_t word = e & 3; word < 4 && i < count; ++word, ++i) fn(i, w[word] >= threshold);
    }
  }
  // y[i] = x[i] · scale if element e0 + i of `token` is kept, else 0, for i < count; x == y allowed.
  template <class T>
  TMOE_HOST_DEVICE void apply(std::uint64_t token, std::uint64_t e0, std::int64_t count, const T* x, T* y) const {
    const T s = static_cast<T>(scale);
    for_each(token, e0, count, [&](std::int64_t i, bool kept) { y[i] = kept ? x[i] * s : T(0); });
  }
  // f[i] = scale or 0: the factors apply() multiplies by.
  template <class T>
  TMOE_HOST_DEVICE void factors(std::uint64_t token, std::uint64_t e0, std::int64_t count, T* f) const {
    const T s = static_cast<T>(scale);
    for_each(token, e0, count, [&](std::int64_t i, bool kept) { f[i] = kept ? s : T(0); });
  }
};

// Options of the attention op (B::attention_forward / attention_backward). Defaults: no
// dropout, probabilities stored.
//   dropout        rate on the softmax probabilities: out = (P ⊙ M / (1 − p)) V
//   seed, step, site   the mask's Philox key
//   token_offset, tokens   global token of query row r of the (B·T) rows: token_offset + r,
//                  or token_offset + tokens[r] when tokens is given (routed rows)
//   element_offset, head_stride   element of (query, head hi, key j) in the query token's
//                  stream: element_offset + hi · head_stride + j (head_stride 0: T)
//   store_probs    false: `att` is not read or written; the backward recomputes the
//                  probabilities from q and k, bitwise as the forward made them
struct AttentionOptions {
  double dropout = 0;
  std::uint64_t seed = 0;
  std::int64_t step = 0;
  std::uint32_t site = 0;
  std::int64_t token_offset = 0;
  const std::int32_t* tokens = nullptr;
  std::uint64_t element_offset = 0;
  std::int64_t head_stride = 0;
  bool store_probs = true;

  DropoutMask mask() const { return DropoutMask::make(dropout, seed, step, site); }
  std::int64_t token(std::int64_t row) const { return token_offset + (tokens ? tokens[row] : row); }
};

// What a routed expert needs to drop its hidden units (model.expert_dropout) and, for a
// TransformerExpert, its attention probabilities (model.attn_dropout): the masks, the
// global token of each of its rows and where its values sit in a token's stream. The MoE
// layer sets it before every forward; dense FFNs and shared experts never get one.
struct ExpertDropout {
  DropoutMask hidden;                     // keyed (layer, kExpertHidden)
  std::int64_t token_offset = 0;          // global index of the micro-batch's token 0
  const std::int32_t* tokens = nullptr;   // (rows) local token of each row; null: row r is token r
  std::uint64_t element_offset = 0;       // this expert's first hidden element: expert · depth · hidden
  // TransformerExpert attention
  double attn_rate = 0;
  std::uint64_t seed = 0;
  std::int64_t step = 0;
  std::uint32_t attn_site = 0;            // (layer, kExpertAttnProbs)
  std::uint64_t attn_element_offset = 0;  // expert · depth · heads · head_stride
  std::int64_t attn_head_stride = 0;      // model.context

  std::int64_t token(std::int64_t row) const { return token_offset + (tokens ? tokens[row] : row); }
};

namespace layers {

// dst[i] += src[i] for n elements, in backend B's memory (blocks of 1024 per work item).
template <class B, class T>
void add_into(const T* src, T* dst, std::int64_t n) {
  B::for_rows((n + 1023) / 1024, [=] TMOE_LAMBDA (std::int64_t blk) {
    const std::int64_t i1 = n < (blk + 1) * 1024 ? n : (blk + 1) * 1024;
    for (std::int64_t i = blk * 1024; i < i1; ++i) dst[i] += src[i];
  });
}

// y (rows, width) = x with mask m applied to row r as token token_offset + (tokens ?
// tokens[r] : r), elements element0 + j; x == y allowed. For an active mask only.
template <class B, class T>
void dropout_rows(const DropoutMask& m, std::int64_t token_offset, const std::int32_t* tokens, std::uint64_t element0,
                  const T* x, T* y, std::int64_t rows, std::int64_t width) {
  B::for_rows(rows, [=] TMOE_LAMBDA (std::int64_t r) {
    const std::int64_t tok = token_offset + (tokens ? tokens[r] : r);
    m.apply(static_cast<std::uint64_t>(tok), element0, width, x + r * width, y + r * width);
  });
}

// out = a + mask(b) over (rows, width), row r being token token_offset + r, element j.
template <class B, class T>
void dropout_add(const DropoutMask& m, std::int64_t token_offset, const T* a, const T* b, T* out, std::int64_t rows,
                 std::int64_t width) {
  B::for_rows(rows, [=] TMOE_LAMBDA (std::int64_t r) {
    const T s = static_cast<T>(m.scale);
    const auto tok = static_cast<std::uint32_t>(token_offset + r);
    const T *ar = a + r * width, *br = b + r * width;
    T* o = out + r * width;
    for (std::int64_t j0 = 0; j0 < width; j0 += 4) {
      const Philox4x32::Block w = m.block(tok, static_cast<std::uint64_t>(j0) >> 2);
      for (std::int64_t j = j0; j < std::min(width, j0 + 4); ++j)
        o[j] = ar[j] + (w[static_cast<std::size_t>(j - j0)] >= m.threshold ? br[j] * s : T(0));
    }
  });
}

}  // namespace layers
}  // namespace tmoe
