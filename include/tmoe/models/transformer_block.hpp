#pragma once
// A pre-norm transformer block:  h = x + attn(norm1(x));  y = h + ffn(norm2(h)),
// where ffn is Dense<Expert> or MoE<Expert, Router>. The norm kind comes from the model.
#include <cstdint>
#include <string>

#include "tmoe/core/concepts.hpp"
#include "tmoe/core/config.hpp"
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
    Tensor<T> h1, a, mid, h2, f, dtmp, dmid;  // (N, C)
    std::int64_t c = 0, bsz = 0, len = 0;

    void declare(ParamRegistry& r, const std::string& name, const ModelConfig& cfg) {
      c = cfg.d_model;
      norm1.declare(r, name + ".attn_norm", c, cfg.norm_eps);
      attn.declare(r, name + ".attn", cfg);
      norm2.declare(r, name + ".ffn_norm", c, cfg.norm_eps);
      ffn.declare(r, name + (Ffn::is_moe ? ".moe" : ".ffn"), cfg);
    }
    void bind(const ParamRegistry& r, T* p, T* g) {
      norm1.bind(r, p, g);
      attn.bind(r, p, g);
      norm2.bind(r, p, g);
      ffn.bind(r, p, g);
    }

    // x, y: (B, T, C); x must stay alive until backward.
    void forward(const T* x, T* y, std::int64_t b, std::int64_t t) {
      const std::int64_t n = b * t;
      bsz = b;
      len = t;
      for (auto* buf : {&h1, &a, &mid, &h2, &f, &dtmp, &dmid}) buf->ensure(Shape{n, c});
      norm1.forward(x, h1.data(), n);
      attn.forward(h1.data(), a.data(), b, t);
      add(x, a.data(), mid.data(), n * c);
      norm2.forward(mid.data(), h2.data(), n);
      ffn.forward(h2.data(), f.data(), n);
      add(mid.data(), f.data(), y, n * c);
    }

    // dy (N, C) -> dx (N, C), overwritten.
    void backward(const T* dy, T* dx, double grad_scale) {
      const std::int64_t n = bsz * len;
      // y = mid + f: dmid = dy + ∂f/∂mid
      ffn.backward(dy, dtmp.data(), false, grad_scale);
      copy(dy, dmid.data(), n * c);
      norm2.backward(dtmp.data(), dmid.data(), n, true);
      // mid = x + a
      attn.backward(dmid.data(), dtmp.data(), false);
      copy(dmid.data(), dx, n * c);
      norm1.backward(dtmp.data(), dx, n, true);
    }

    double loss() const { return ffn.loss(); }

   private:
    static void add(const T* a, const T* b, T* out, std::int64_t count) {
      B::for_rows(count / 1024 + 1, [=](std::int64_t blk) {
        const std::int64_t i1 = std::min(count, (blk + 1) * 1024);
        for (std::int64_t i = blk * 1024; i < i1; ++i) out[i] = a[i] + b[i];
      });
    }
    static void copy(const T* a, T* out, std::int64_t count) {
      B::for_rows(count / 1024 + 1, [=](std::int64_t blk) {
        const std::int64_t i1 = std::min(count, (blk + 1) * 1024);
        for (std::int64_t i = blk * 1024; i < i1; ++i) out[i] = a[i];
      });
    }
  };
};

}  // namespace tmoe
