#pragma once
// A pre-norm transformer block:  h = x + attn(norm1(x));  y = h + ffn(norm2(h)),
// where ffn is Dense<Expert> or MoE<Expert, Router, ...>. The norm kind comes from the model.
// With an MoE ffn, the model's layers that ModelConfig::is_moe_layer marks dense (the first
// moe_first_dense, then all but every moe_every-th) use the MoE policy's dense_policy
// (Dense<Expert>, hidden width model.d_ff) instead: one block type, two feed-forward kinds.
// In training, model.dropout drops elements of the attention output and of the feed-forward
// output before each residual add (GPT-2's resid_pdrop): h = x + drop(attn(..)), y = h +
// drop(ffn(..)), keyed (layer, kAttnOut / kFfnOut, global token, channel) (layers/dropout.hpp).
#include <cstdint>

#include "tmoe/core/macros.hpp"
#include <string>

#include "tmoe/core/concepts.hpp"
#include "tmoe/core/config.hpp"
#include "tmoe/layers/dropout.hpp"
#include "tmoe/moe/routing.hpp"
#include "tmoe/tensor/tensor.hpp"

namespace tmoe {

template <class Attn, class Ffn>
struct TransformerBlock {
  static_assert(AttentionPolicy<Attn>, "tmoe: TransformerBlock<Attention, Ffn>: the first argument is not an attention "
                                       "policy such as CausalAttention<Rope> (see docs/concepts/attention.md)");
  static_assert(FfnPolicy<Ffn>, "tmoe: TransformerBlock<Attention, Ffn>: the second argument is not a feed-forward "
                                "policy such as Dense<SwiGLU> or MoE<SwiGLU, TopK> (see docs/concepts/ffn.md)");
  static constexpr const char* name = "transformer_block";
  using attention = Attn;
  using ffn_policy = Ffn;

  template <class T, class B, class Norm>
  struct impl {
    typename Norm::template impl<T, B> norm1, norm2;
    typename Attn::template impl<T, B> attn;
    typename Ffn::template impl<T, B> ffn;
    typename Ffn::dense_policy::template impl<T, B> dense;  // used when this layer is dense
    bool moe = Ffn::is_moe;  // this layer runs `ffn` (MoE) rather than `dense`
    BackendTensor<B, T> h1, a, mid, h2, f, dtmp, dmid;  // (N, C)
    std::int64_t c = 0, bsz = 0, len = 0;
    double dropout = 0;                  // model.dropout
    DropoutMask drop_a, drop_f;          // of the last forward (inactive outside training)
    std::int64_t tok0 = 0;               // global index of the last forward's first token

    // layer: the block's index in the model, which decides dense vs MoE; -1 (a block on its
    // own, as in the layer tests) keeps the Ffn policy's kind.
    void declare(ParamRegistry& r, const std::string& name, const ModelConfig& cfg, std::int64_t layer = -1) {
      c = cfg.d_model;
      dropout = cfg.dropout;
      moe = Ffn::is_moe && (layer < 0 || cfg.is_moe_layer(layer));
      norm1.declare(r, name + ".attn_norm", c, cfg.norm_eps);
      attn.declare(r, name + ".attn", cfg);
      norm2.declare(r, name + ".ffn_norm", c, cfg.norm_eps);
      if (moe) ffn.declare(r, name + ".moe", cfg);
      else if constexpr (Ffn::is_moe) dense.declare(r, name + ".ffn", cfg);
      else ffn.declare(r, name + ".ffn", cfg);
    }
    void bind(const ParamRegistry& r, T* p, T* g) {
      norm1.bind(r, p, g);
      attn.bind(r, p, g);
      norm2.bind(r, p, g);
      if (uses_dense()) dense.bind(r, p, g);
      else ffn.bind(r, p, g);
    }
    bool uses_dense() const { return Ffn::is_moe && !moe; }

    // x, y: (B, T, C); x must stay alive until backward.
    void forward(const T* x, T* y, std::int64_t b, std::int64_t t, const RouteContext& ctx = {}) {
      const std::int64_t n = b * t;
      bsz = b;
      len = t;
      for (auto* buf : {&h1, &a, &mid, &h2, &f, &dtmp, &dmid}) buf->ensure(Shape{n, c});
      const bool drop = ctx.training && dropout > 0;
      drop_a = drop ? DropoutMask::make(dropout, ctx.seed, ctx.step, dropout_site(ctx.layer, DropoutUse::kAttnOut))
                    : DropoutMask{};
      drop_f = drop ? DropoutMask::make(dropout, ctx.seed, ctx.step, dropout_site(ctx.layer, DropoutUse::kFfnOut))
                    : DropoutMask{};
      tok0 = ctx.token_offset;
      norm1.forward(x, h1.data(), n);
      attn.forward(h1.data(), a.data(), b, t, ctx);
      if (drop_a.active()) layers::dropout_add<B>(drop_a, tok0, x, a.data(), mid.data(), n, c);
      else add(x, a.data(), mid.data(), n * c);
      norm2.forward(mid.data(), h2.data(), n);
      RouteContext rc = ctx;
      rc.batch = b;
      rc.seq_len = t;
      if (uses_dense()) dense.forward(h2.data(), f.data(), n);
      else ffn.forward(h2.data(), f.data(), n, rc);
      if (drop_f.active()) layers::dropout_add<B>(drop_f, tok0, mid.data(), f.data(), y, n, c);
      else add(mid.data(), f.data(), y, n * c);
    }

    // dy (N, C) -> dx (N, C), overwritten.
    void backward(const T* dy, T* dx, double grad_scale) {
      const std::int64_t n = bsz * len;
      // y = mid + drop(f): dmid = dy + (∂f/∂mid)ᵀ drop(dy), the mask regenerated from its keys;
      // f and a are not needed by backward otherwise and hold the masked output gradients.
      const T* df = dy;
      if (drop_f.active()) {
        layers::dropout_rows<B>(drop_f, tok0, nullptr, 0, dy, f.data(), n, c);
        df = f.data();
      }
      if (uses_dense()) dense.backward(df, dtmp.data(), false, grad_scale);
      else ffn.backward(df, dtmp.data(), false, grad_scale);
      copy(dy, dmid.data(), n * c);
      norm2.backward(dtmp.data(), dmid.data(), n, true);
      // mid = x + drop(a)
      const T* da = dmid.data();
      if (drop_a.active()) {
        layers::dropout_rows<B>(drop_a, tok0, nullptr, 0, dmid.data(), a.data(), n, c);
        da = a.data();
      }
      attn.backward(da, dtmp.data(), false);
      copy(dmid.data(), dx, n * c);
      norm1.backward(dtmp.data(), dx, n, true);
    }

    double loss() const { return uses_dense() ? 0.0 : ffn.loss(); }

    // Activation recomputation (models/recompute.hpp): selective keeps no attention
    // probabilities and rebuilds routed experts' hidden activations in backward; release()
    // drops everything forward saved, for full recomputation.
    void set_selective(bool on) {
      attn.store_probs = !on;
      if (uses_dense()) dense.set_selective(on);
      else ffn.set_selective(on);
    }
    void release() {
      for (auto* t : {&h1, &a, &mid, &h2, &f, &dtmp, &dmid}) t->release();
      norm1.release();
      norm2.release();
      attn.release();
      if (uses_dense()) dense.release();
      else ffn.release();
    }
    // Predicted bytes of this block's buffers for a forward + backward over (b, t).
    std::int64_t activation_bytes(std::int64_t b, std::int64_t t) const {
      const std::int64_t n = b * t;
      const bool selective = !attn.store_probs;
      return 7 * n * c * static_cast<std::int64_t>(sizeof(T)) + 2 * Norm::template impl<T, B>::activation_bytes(n) +
             attn.activation_bytes(b, t) + (uses_dense() ? dense.activation_bytes(n, selective) : ffn.activation_bytes(n, selective));
    }
    std::int64_t ffn_active_weights() const { return uses_dense() ? dense.active_weights() : ffn.active_weights(); }

    // Public: nvcc's extended lambdas (TMOE_LAMBDA) may not sit in private members.
    static void add(const T* a, const T* b, T* out, std::int64_t count) {
      B::for_rows(count / 1024 + 1, [=] TMOE_LAMBDA (std::int64_t blk) {
        const std::int64_t i1 = std::min(count, (blk + 1) * 1024);
        for (std::int64_t i = blk * 1024; i < i1; ++i) out[i] = a[i] + b[i];
      });
    }
    static void copy(const T* a, T* out, std::int64_t count) {
      B::for_rows(count / 1024 + 1, [=] TMOE_LAMBDA (std::int64_t blk) {
        const std::int64_t i1 = std::min(count, (blk + 1) * 1024);
        for (std::int64_t i = blk * 1024; i < i1; ++i) out[i] = a[i];
      });
    }
  };
};

}  // namespace tmoe
