#pragma once
// An expert that is itself a small transformer: `depth` pre-norm layers over the token rows
// routed to it. For each layer l,
//   h = x + Attn_l(RmsNorm_l1(x)),   y = h + Inner_l(RmsNorm_l2(h)),
//   Attn(u) = concat_heads( softmax_causal(q kᵀ / √hd) v ) Woᵀ,   [q k v] = u Wqkvᵀ,
// with RoPE (rotate halves, backend/cpu/attention.hpp) on q and k, and Inner a feed-forward
// Expert policy (SwiGLU by default) of width shape.hidden.
//
// Sequences: the rows an expert receives are grouped by sequence, each group contiguous and
// in position order; set_segments() gives the group boundaries before every forward.
// Attention runs within a group only (a token sees the earlier routed tokens of its own
// sequence and itself), and the RoPE position of a token is its index within its group:
// relative distances are counted in routed tokens, not in positions of the full sequence.
// Each group's result depends on that group's rows alone (bitwise).
//
// Dropout (training, set by the MoE layer through set_dropout; layers/dropout.hpp): the
// inner FFN of layer l drops hidden units as a routed expert does, its elements offset by
// l · hidden; the attention drops probabilities (model.attn_dropout) keyed by the routed
// row's global token, element attn_element_offset + (l · heads + hi) · stride + j, j the key's
// index within the segment.
//
// Parameters under `name`: layers.{l}.attn_norm.weight, layers.{l}.attn.qkv.weight (3C, C),
// layers.{l}.attn.out.weight (C, C), layers.{l}.ffn_norm.weight, layers.{l}.ffn.* (whatever
// Inner declares). No attention biases.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <string>
#include <utility>
#include <vector>

#include "tmoe/core/concepts.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/registry.hpp"
#include "tmoe/layers/dropout.hpp"
#include "tmoe/layers/linear.hpp"
#include "tmoe/layers/norm.hpp"
#include "tmoe/tensor/tensor.hpp"

#include "tmoe/moe/experts/expert_shape.hpp"
#include "tmoe/moe/experts/swiglu.hpp"

namespace tmoe {

template <class Inner = SwiGLU>
struct TransformerExpert {
  static_assert(Expert<Inner>, "tmoe: TransformerExpert<Inner>: Inner is not an Expert policy such as SwiGLU or "
                               "GeluFFN (see docs/concepts/expert.md)");
  static constexpr const char* name = "transformer_expert";
  // Weight matrices per layer: the fused qkv projection (one (3C, C) tensor), the output
  // projection, and Inner's. A whole expert has depth × matrices.
  static constexpr int matrices = 2 + Inner::matrices;
  // The MoE layer must call set_segments() before each forward.
  static constexpr bool sequence_aware = true;
  // What a dense layer or a shared expert uses in this expert's place.
  using dense_equivalent = Inner;

  template <class T, class B>
  struct impl {
    static_assert(std::is_same_v<typename B::Space, HostSpace>,
                  "tmoe: TransformerExpert<...> on a device backend (backend::Cuda): TransformerExpert is not ported to "
                  "the GPU yet; use SwiGLU or GeluFFN experts there, or backend::Cpu");
    struct Layer {
      typename RmsNorm::template impl<T, B> attn_norm, ffn_norm;
      layers::Linear<T, B> qkv, out;
      typename Inner::template impl<T, B> ffn;
      // Saved for backward: the normed input (n, C), rotated qkv (n, 3C), the attention
      // probabilities (segment after segment, H·len² each), and, (n, C) each, the attention
      // output before Wo, the residual h, its norm and the layer output (unused by the last
      // layer, which writes y).
      Tensor<T> h1, qkvb, att, ya, mid, h2, yout;
    };

    std::string name_;
    std::int64_t c = 0, heads = 0, hd = 0, hidden = 0;
    ExpertDropout drop;                  // for the next forward and its backward
    double rope_base = 10000.0;
    std::vector<Layer> layers_;
    std::vector<std::int64_t> next_;     // offsets from set_segments, waiting for forward
    bool have_next = false;
    std::vector<std::int64_t> seg_;      // offsets of the last forward
    std::vector<std::int64_t> att_off_;  // start of each segment's probabilities in att
    std::int64_t n = 0;
    Tensor<T> cos_t, sin_t;              // (table_len, hd/2), positions 0..table_len-1
    std::int64_t table_len = 0;
    Tensor<T> dh2, dmid, dya, dqkv, dh1, dnext[2], dsink;  // backward scratch

    void declare(ParamRegistry& r, const std::string& name, const ExpertShape& s) {
      TMOE_CHECK(s.depth >= 1, "model.expert_depth", detail::cat("expert depth is ", s.depth), "at least 1");
      TMOE_CHECK(s.heads >= 1, "model.expert_heads", detail::cat("expert heads is ", s.heads), "at least 1");
      TMOE_CHECK(s.d_model % s.heads == 0, "model.expert_heads",
                 detail::cat("d_model ", s.d_model, " is not divisible by expert_heads ", s.heads),
                 "expert_heads dividing d_model");
      TMOE_CHECK((s.d_model / s.heads) % 2 == 0, "model.expert_heads",
                 detail::cat("head size d_model / expert_heads = ", s.d_model / s.heads, " is odd"),
                 "an even head size (RoPE rotates pairs)");
      name_ = name;
      c = s.d_model;
      heads = s.heads;
      hd = c / heads;
      hidden = s.hidden;
      rope_base = s.rope_base;
      layers_.clear();
      layers_.resize(static_cast<std::size_t>(s.depth));
      for (std::int64_t l = 0; l < s.depth; ++l) {
        Layer& L = layers_[static_cast<std::size_t>(l)];
        const std::string p = name + ".layers." + std::to_string(l);
        L.attn_norm.declare(r, p + ".attn_norm", c, s.norm_eps);
        L.qkv.declare(r, p + ".attn.qkv", c, 3 * c, false, s.tags, s.std);
        L.out.declare(r, p + ".attn.out", c, c, false, s.tags, s.out_std);
        L.ffn_norm.declare(r, p + ".ffn_norm", c, s.norm_eps);
        L.ffn.declare(r, p + ".ffn", s);
      }
      if (s.context > 0) grow_rope(s.context);  // so forward does not allocate it
    }

    void bind(const ParamRegistry& r, T* p, T* g) {
      for (Layer& L : layers_) {
        L.attn_norm.bind(r, p, g);
        L.qkv.bind(r, p, g);
        L.out.bind(r, p, g);
        L.ffn_norm.bind(r, p, g);
        L.ffn.bind(r, p, g);
      }
    }

    void set_dropout(const ExpertDropout& d) { drop = d; }
    void release() {
      for (Layer& L : layers_) {
        for (auto* t : {&L.h1, &L.qkvb, &L.att, &L.ya, &L.mid, &L.h2, &L.yout}) t->release();
        L.attn_norm.release();
        L.ffn_norm.release();
        L.ffn.release();
      }
      for (auto* t : {&dh2, &dmid, &dya, &dqkv, &dh1, &dnext[0], &dnext[1], &dsink}) t->release();
    }
    // Activation floats per routed row, without the per-segment attention probabilities
    // (heads · len² per routed sequence, which depend on the routing).
    static std::int64_t floats_per_row(const ExpertShape& s) {
      return s.depth * (8 * s.d_model + Inner::template impl<T, B>::floats_per_row(s)) + 8 * s.d_model;
    }

    // Rows [offsets[s], offsets[s+1]) are the routed tokens of one sequence, in position
    // order; offsets[0] = 0, offsets[n_segments] = the rows of the next forward. Copied.
    void set_segments(const std::int64_t* offsets, std::int64_t n_segments) {
      const std::string where = name_ + " (TransformerExpert::set_segments)";
      TMOE_CHECK(n_segments >= 0, where, detail::cat("negative segment count ", n_segments), "n_segments >= 0");
      TMOE_CHECK(offsets != nullptr, where, "null offsets", "n_segments + 1 offsets");
      TMOE_CHECK(offsets[0] == 0, where, detail::cat("offsets start at ", offsets[0]), "offsets[0] = 0");
      for (std::int64_t s = 0; s < n_segments; ++s)
        TMOE_CHECK(offsets[s + 1] >= offsets[s], where,
                   detail::cat("offsets decrease at segment ", s, ": ", offsets[s], " -> ", offsets[s + 1]),
                   "non-decreasing offsets");
      next_.assign(offsets, offsets + n_segments + 1);
      have_next = true;
    }

    // x (rows, C) -> y (rows, C); x must stay alive until backward.
    void forward(const T* x, T* y, std::int64_t rows) {
      const std::string where = name_ + " (TransformerExpert::forward)";
      TMOE_CHECK(have_next, where, "forward without set_segments since the last forward",
                 "set_segments(offsets, n) before every forward");
      TMOE_CHECK(next_.back() == rows, where,
                 detail::cat("segments cover ", next_.back(), " rows but forward got ", rows),
                 "offsets[n_segments] = rows");
      have_next = false;
      seg_.swap(next_);
      n = rows;
      const std::size_t nseg = seg_.size() - 1;
      att_off_.assign(nseg + 1, 0);
      std::int64_t longest = 0;
      for (std::size_t s = 0; s < nseg; ++s) {
        const std::int64_t len = seg_[s + 1] - seg_[s];
        att_off_[s + 1] = att_off_[s] + heads * len * len;
        longest = std::max(longest, len);
      }
      grow_rope(longest);
      const T* in = x;
      for (std::size_t l = 0; l < layers_.size(); ++l) {
        Layer& L = layers_[l];
        ExpertDropout inner = drop;
        inner.element_offset = drop.element_offset + static_cast<std::uint64_t>(l) * static_cast<std::uint64_t>(hidden);
        if constexpr (requires { L.ffn.set_dropout(inner); }) L.ffn.set_dropout(inner);
        T* out = y;
        if (l + 1 < layers_.size()) {  // an inner layer's output is the next one's saved input
          L.yout.ensure(Shape{rows, c});
          out = L.yout.data();
        }
        layer_forward(L, in, out);
        in = out;
      }
    }

    // Over the rows and segments of the last forward; dx overwritten or added to (or null:
    // parameter gradients only); parameter gradients are added.
    void backward(const T* dy, T* dx, bool accumulate_dx) {
      for (auto* t : {&dh2, &dmid, &dya, &dh1, &dnext[0], &dnext[1]}) t->ensure(Shape{n, c});
      dqkv.ensure(Shape{n, 3 * c});
      if (!dx) {  // the caller wants parameter gradients only
        dsink.ensure(Shape{n, c});
        dx = dsink.data();
        accumulate_dx = false;
      }
      const T* g = dy;
      for (std::size_t l = layers_.size(); l-- > 0;) {
        // Layer l writes its input gradient where layer l-1 reads it; neighbours alternate.
        T* din = l == 0 ? dx : dnext[l & 1].data();
        layer_backward(layers_[l], g, din, l == 0 && accumulate_dx);
        g = din;
      }
    }

    // Weights one token is multiplied by (attention's q·k and p·v products depend on the
    // segment lengths and are not counted).
    static std::int64_t weights(const ExpertShape& s) {
      return s.depth * (4 * s.d_model * s.d_model + Inner::template impl<T, B>::weights(s));
    }

   private:
    // Attention options of segment s (rows from r0) in inner layer l.
    AttentionOptions attn_options(std::size_t l, std::int64_t r0) const {
      AttentionOptions o;
      if (drop.attn_rate > 0) {
        o.dropout = drop.attn_rate;
        o.seed = drop.seed;
        o.step = drop.step;
        o.site = drop.attn_site;
        o.token_offset = drop.token_offset;
        o.tokens = drop.tokens ? drop.tokens + r0 : nullptr;
        if (!drop.tokens) o.token_offset += r0;
        o.head_stride = drop.attn_head_stride;
        o.element_offset = drop.attn_element_offset +
                           static_cast<std::uint64_t>(l) * static_cast<std::uint64_t>(heads * drop.attn_head_stride);
      }
      return o;
    }

    std::size_t layer_index(const Layer& L) const { return static_cast<std::size_t>(&L - layers_.data()); }

    void layer_forward(Layer& L, const T* in, T* out) {
      const std::int64_t rows = n;
      for (auto* t : {&L.h1, &L.ya, &L.mid, &L.h2}) t->ensure(Shape{rows, c});
      L.qkvb.ensure(Shape{rows, 3 * c});
      L.att.ensure(Shape{att_off_.back()});
      L.attn_norm.forward(in, L.h1.data(), rows);
      L.qkv.forward(L.h1.data(), L.qkvb.data(), rows);
      // Segment by segment, as a batch of one sequence of length len: positions restart at
      // 0 and no query sees another segment's keys.
      for (std::size_t s = 0; s + 1 < seg_.size(); ++s) {
        const std::int64_t r0 = seg_[s], len = seg_[s + 1] - r0;
        if (len == 0) continue;
        T* q = L.qkvb.data() + r0 * 3 * c;
        B::rope_apply(q, cos_t.data(), sin_t.data(), 1, len, c, heads, T(1));
        B::attention_forward(q, L.att.data() + att_off_[s], L.ya.data() + r0 * c, 1, len, c, heads,
                             attn_options(layer_index(L), r0));
      }
      L.out.forward(L.ya.data(), L.mid.data(), rows);
      add_into(L.mid.data(), in, rows);  // h = x + attn
      L.ffn_norm.forward(L.mid.data(), L.h2.data(), rows);
      L.ffn.forward(L.h2.data(), out, rows);
      add_into(out, L.mid.data(), rows);  // y = h + ffn
    }

    void layer_backward(Layer& L, const T* g, T* din, bool accumulate) {
      const std::int64_t rows = n;
      // y = h + ffn(norm2(h)):  dh = g + norm2ᵀ(ffnᵀ(g))
      L.ffn.backward(g, dh2.data(), false);
      copy(g, dmid.data(), rows);
      L.ffn_norm.backward(dh2.data(), dmid.data(), rows, true);
      // h = x + Wo·attn(rope(Wqkv norm1(x))):  dx (+)= dh + norm1ᵀ(Wqkvᵀ(rope⁻¹(attnᵀ(Woᵀ dh))))
      L.out.backward(L.ya.data(), dmid.data(), dya.data(), rows, false);
      for (std::size_t s = 0; s + 1 < seg_.size(); ++s) {
        const std::int64_t r0 = seg_[s], len = seg_[s + 1] - r0;
        if (len == 0) continue;
        T* dq = dqkv.data() + r0 * 3 * c;
        B::attention_backward(dya.data() + r0 * c, L.qkvb.data() + r0 * 3 * c, L.att.data() + att_off_[s], dq, 1,
                              len, c, heads, attn_options(layer_index(L), r0));
        // A rotation's transpose is its inverse.
        B::rope_apply(dq, cos_t.data(), sin_t.data(), 1, len, c, heads, T(-1));
      }
      L.qkv.backward(L.h1.data(), dqkv.data(), dh1.data(), rows, false);
      if (accumulate) add_into(din, dmid.data(), rows);
      else copy(dmid.data(), din, rows);
      L.attn_norm.backward(dh1.data(), din, rows, true);
    }

    // cos/sin of position p · base^(-2i/hd) for p < len; entries depend on (p, i) alone, so
    // growing the table leaves earlier rows bitwise unchanged.
    void grow_rope(std::int64_t len) {
      if (len <= table_len) return;
      const std::int64_t half = hd / 2;
      Tensor<T> cs(Shape{len, half}), sn(Shape{len, half});
      for (std::int64_t p = 0; p < len; ++p)
        for (std::int64_t i = 0; i < half; ++i) {
          const double freq = std::pow(rope_base, -static_cast<double>(2 * i) / static_cast<double>(hd));
          const double a = static_cast<double>(p) * freq;
          cs[p * half + i] = static_cast<T>(std::cos(a));
          sn[p * half + i] = static_cast<T>(std::sin(a));
        }
      cos_t = std::move(cs);
      sin_t = std::move(sn);
      table_len = len;
    }

    void add_into(T* acc, const T* v, std::int64_t rows) const {
      const std::int64_t w = c;
      B::for_rows(rows, [=](std::int64_t i) {
        for (std::int64_t j = i * w; j < (i + 1) * w; ++j) acc[j] += v[j];
      });
    }
    void copy(const T* v, T* dst, std::int64_t rows) const {
      const std::int64_t w = c;
      B::for_rows(rows, [=](std::int64_t i) {
        for (std::int64_t j = i * w; j < (i + 1) * w; ++j) dst[j] = v[j];
      });
    }
  };
};

}  // namespace tmoe

static_assert(tmoe::Expert<tmoe::TransformerExpert<>>);
