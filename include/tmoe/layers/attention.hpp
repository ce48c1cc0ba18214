#pragma once
// Causal multi-head self-attention: qkv = x Wqkvᵀ (+b), RoPE on q and k (when the position
// policy is rotary), softmax(q kᵀ / √hd) with a causal mask, y = att v, out = y Woᵀ (+b).
#include <cmath>
#include <cstdint>
#include <string>

#include "tmoe/core/config.hpp"
#include "tmoe/layers/linear.hpp"
#include "tmoe/layers/positions.hpp"
#include "tmoe/tensor/tensor.hpp"

namespace tmoe {

template <class Pos = Rope>
struct CausalAttention {
  static constexpr const char* name = "causal_attention";
  using positions = Pos;

  template <class T, class B>
  struct impl {
    std::int64_t c = 0, h = 0;
    double rope_base = 10000.0;
    layers::Linear<T, B> qkv_proj, out_proj;
    Tensor<T> qkv, att, y, dqkv, dy;  // saved activations (B,T,3C), (B,H,T,T), (B,T,C)
    Tensor<T> cos_t, sin_t;           // (T, hd/2)
    const T* x = nullptr;
    std::int64_t bsz = 0, len = 0;

    void declare(ParamRegistry& r, const std::string& name, const ModelConfig& cfg) {
      c = cfg.d_model;
      h = cfg.n_heads;
      rope_base = cfg.rope_base;
      const double out_std = cfg.init_std / std::sqrt(2.0 * static_cast<double>(cfg.n_layers));
      qkv_proj.declare(r, name + ".qkv", c, 3 * c, cfg.linear_bias, kTagAttention, cfg.init_std);
      out_proj.declare(r, name + ".out", c, c, cfg.linear_bias, kTagAttention, out_std);
    }
    void bind(const ParamRegistry& r, T* p, T* g) {
      qkv_proj.bind(r, p, g);
      out_proj.bind(r, p, g);
    }

    void prepare(std::int64_t b, std::int64_t t) {
      const std::int64_t n = b * t;
      if (bsz == b && len == t) return;
      bsz = b;
      len = t;
      qkv.resize(Shape{n, 3 * c});
      dqkv.resize(Shape{n, 3 * c});
      att.resize(Shape{b, h, t, t});
      y.resize(Shape{n, c});
      dy.resize(Shape{n, c});
      if constexpr (Pos::rotary) {
        const std::int64_t half = c / h / 2;
        cos_t.resize(Shape{t, half});
        sin_t.resize(Shape{t, half});
        for (std::int64_t p = 0; p < t; ++p)
          for (std::int64_t i = 0; i < half; ++i) {
            const double theta = std::pow(rope_base, -2.0 * static_cast<double>(i) / static_cast<double>(2 * half));
            cos_t[p * half + i] = static_cast<T>(std::cos(static_cast<double>(p) * theta));
            sin_t[p * half + i] = static_cast<T>(std::sin(static_cast<double>(p) * theta));
          }
      }
    }

    // in, out: (B, T, C)
    void forward(const T* in, T* out, std::int64_t b, std::int64_t t) {
      prepare(b, t);
      x = in;
      const std::int64_t n = b * t;
      qkv_proj.forward(in, qkv.data(), n);
      if constexpr (Pos::rotary) B::rope_apply(qkv.data(), cos_t.data(), sin_t.data(), b, t, c, h, T(1));
      B::attention_forward(qkv.data(), att.data(), y.data(), b, t, c, h);
      out_proj.forward(y.data(), out, n);
    }

    void backward(const T* dout, T* dx, bool accumulate_dx) {
      const std::int64_t n = bsz * len;
      out_proj.backward(y.data(), dout, dy.data(), n, false);
      B::attention_backward(dy.data(), qkv.data(), att.data(), dqkv.data(), bsz, len, c, h);
      if constexpr (Pos::rotary) B::rope_apply(dqkv.data(), cos_t.data(), sin_t.data(), bsz, len, c, h, T(-1));
      // qkv_proj's weight gradient needs its input x; q and k were rotated in place, but the
      // projection's input is x itself, so nothing else is needed.
      qkv_proj.backward(x, dqkv.data(), dx, n, accumulate_dx);
    }

    // Matrix FLOPs per token, forward + backward (DESIGN.md performance model counts the
    // projections in N_active and attention separately).
    std::int64_t weights_per_token() const { return 4 * c * c; }
  };
};

}  // namespace tmoe

#include "tmoe/core/concepts.hpp"
static_assert(tmoe::AttentionPolicy<tmoe::CausalAttention<tmoe::Rope>>);
static_assert(tmoe::AttentionPolicy<tmoe::CausalAttention<tmoe::LearnedPositions>>);
