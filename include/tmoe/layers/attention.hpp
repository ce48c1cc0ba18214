#pragma once
// Causal multi-head self-attention: qkv = x Wqkvᵀ (+b), RoPE on q and k (when the position
// policy is rotary), softmax(q kᵀ / √hd) with a causal mask, y = att v, out = y Woᵀ (+b).
// In training, model.attn_dropout drops attention probabilities (layers/dropout.hpp): the
// mask of query token g (global index), head hi, key j is keyed (layer, kAttnProbs, g,
// hi · model.context + j). store_probs = false keeps no (B, H, T, T) buffer (the backward
// recomputes the probabilities; for selective recomputation).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/layers/dropout.hpp"
#include "tmoe/layers/tensor_group.hpp"
#include "tmoe/layers/linear.hpp"
#include "tmoe/layers/positions.hpp"
#include "tmoe/moe/routing.hpp"
#include "tmoe/tensor/tensor.hpp"

namespace tmoe {

template <class Pos = Rope>
struct CausalAttention {
  static constexpr const char* name = "causal_attention";
  using positions = Pos;

  template <class T, class B>
  struct impl {
    std::int64_t c = 0, h = 0;        // model width and this rank's heads
    std::int64_t cl = 0, head0 = 0;   // this rank's share of the width (h · head dim), first head
    TensorGroup<T>* tg = nullptr;     // tensor parallelism: heads split over the group
    double rope_base = 10000.0;
    double attn_dropout = 0;
    std::int64_t context = 0;
    bool store_probs = true;          // false: backward recomputes the probabilities
    AttentionOptions opt;             // of the last forward
    layers::Linear<T, B> qkv_proj, out_proj;
    BackendTensor<B, T> qkv, att, y, dqkv, dy;  // saved activations (B,T,3C), (B,H,T,T), (B,T,C)
    BackendTensor<B, T> cos_t, sin_t;           // (T, hd/2)
    BackendTensor<B, T> dxs;                    // a partial input gradient to add (tensor parallelism)
    const T* x = nullptr;
    std::int64_t bsz = 0, len = 0;

    void declare(ParamRegistry& r, const std::string& name, const ModelConfig& cfg) {
      c = cfg.d_model;
      const int tp = static_cast<int>(cfg.tp_size), tr = static_cast<int>(cfg.tp_rank);
      if (cfg.n_heads % tp != 0)
        throw Error(detail::cat("model.n_heads = ", cfg.n_heads, " is not divisible by parallel.tensor = ", tp),
                    "parallel.tensor", "a tensor-parallel size that divides the number of heads");
      h = cfg.n_heads / tp;
      cl = c / tp;
      head0 = h * tr;
      rope_base = cfg.rope_base;
      attn_dropout = cfg.attn_dropout;
      context = cfg.context;
      const double out_std = cfg.init_std / std::sqrt(2.0 * static_cast<double>(cfg.n_layers));
      using layers::TensorSplit;
      // q, k and v: each split by heads (three blocks); the output projection by its inputs.
      qkv_proj.declare(r, name + ".qkv", c, 3 * c, cfg.linear_bias, kTagAttention, cfg.init_std,
                       TensorSplit{TensorSplit::kColumn, tp, tr, 3});
      out_proj.declare(r, name + ".out", c, c, cfg.linear_bias, kTagAttention, out_std, TensorSplit{TensorSplit::kRow, tp, tr});
    }
    void set_tensor_group(TensorGroup<T>* g) { tg = g; }
    void bind(const ParamRegistry& r, T* p, T* g) {
      qkv_proj.bind(r, p, g);
      out_proj.bind(r, p, g);
    }

    // Drops the saved activations (full recomputation); the next forward allocates them again.
    void release() {
      for (auto* t : {&qkv, &att, &y, &dqkv, &dy}) t->release();
      bsz = len = 0;
    }
    // Bytes of the buffers above for a (b, t) batch; the (B, H, T, T) probabilities only when
    // stored (selective recomputation recomputes them in backward).
    std::int64_t activation_bytes(std::int64_t b, std::int64_t t) const {
      const std::int64_t n = b * t;
      return static_cast<std::int64_t>(sizeof(T)) * (8 * n * cl + (store_probs ? b * h * t * t : 0) + t * (cl / h));
    }

    void prepare(std::int64_t b, std::int64_t t) {
      const std::int64_t n = b * t;
      if (store_probs && (att.numel() != b * h * t * t || bsz != b || len != t)) att.resize(Shape{b, h, t, t});
      if (bsz == b && len == t) return;
      bsz = b;
      len = t;
      qkv.resize(Shape{n, 3 * cl});
      dqkv.resize(Shape{n, 3 * cl});
      y.resize(Shape{n, cl});
      dy.resize(Shape{n, cl});
      if constexpr (Pos::rotary) {
        const std::int64_t half = cl / h / 2;
        cos_t.resize(Shape{t, half});
        sin_t.resize(Shape{t, half});
        // The angle tables are made on the host and copied to the backend's memory.
        std::vector<T> ct(static_cast<std::size_t>(t * half)), st(ct.size());
        for (std::int64_t p = 0; p < t; ++p)
          for (std::int64_t i = 0; i < half; ++i) {
            const double theta = std::pow(rope_base, -2.0 * static_cast<double>(i) / static_cast<double>(2 * half));
            ct[static_cast<std::size_t>(p * half + i)] = static_cast<T>(std::cos(static_cast<double>(p) * theta));
            st[static_cast<std::size_t>(p * half + i)] = static_cast<T>(std::sin(static_cast<double>(p) * theta));
          }
        B::copy_from_host(ct.data(), t * half, cos_t.data());
        B::copy_from_host(st.data(), t * half, sin_t.data());
      }
    }

    // in, out: (B, T, C); ctx: training mode and the Philox coordinates of the dropout.
    void forward(const T* in, T* out, std::int64_t b, std::int64_t t, const RouteContext& ctx = {}) {
      prepare(b, t);
      opt = AttentionOptions{};
      opt.store_probs = store_probs;
      if (ctx.training && attn_dropout > 0) {
        opt.dropout = attn_dropout;
        opt.seed = ctx.seed;
        opt.step = ctx.step;
        opt.site = dropout_site(ctx.layer, DropoutUse::kAttnProbs);
        opt.token_offset = ctx.token_offset;
        opt.head_stride = std::max(context, t);
        opt.element_offset = static_cast<std::uint64_t>(head0 * opt.head_stride);  // heads keep their global keys
      }
      x = in;
      const std::int64_t n = b * t;
      qkv_proj.forward(in, qkv.data(), n);
      if constexpr (Pos::rotary) B::rope_apply(qkv.data(), cos_t.data(), sin_t.data(), b, t, cl, h, T(1));
      B::attention_forward(qkv.data(), store_probs ? att.data() : nullptr, y.data(), b, t, cl, h, opt);
      out_proj.forward(y.data(), out, n);
      tensor_allreduce(tg, out, n * c);  // the heads' partial outputs
    }

    void backward(const T* dout, T* dx, bool accumulate_dx) {
      const std::int64_t n = bsz * len;
      out_proj.backward(y.data(), dout, dy.data(), n, false);
      B::attention_backward(dy.data(), qkv.data(), opt.store_probs ? att.data() : nullptr, dqkv.data(), bsz, len, cl, h, opt);
      if constexpr (Pos::rotary) B::rope_apply(dqkv.data(), cos_t.data(), sin_t.data(), bsz, len, cl, h, T(-1));
      // qkv_proj's weight gradient needs its input x; q and k were rotated in place, but the
      // projection's input is x itself, so nothing else is needed.
      if (!tg || tg->size() == 1) return qkv_proj.backward(x, dqkv.data(), dx, n, accumulate_dx);
      // Tensor parallelism: this rank's heads give a partial input gradient, summed over the
      // group (before it is added, when accumulating).
      T* target = dx;
      if (accumulate_dx) {
        dxs.ensure(Shape{n, c});
        target = dxs.data();
      }
      qkv_proj.backward(x, dqkv.data(), target, n, false);
      tensor_allreduce(tg, target, n * c);
      if (accumulate_dx) layers::add_into<B>(target, dx, n * c);
    }

    // Matrix FLOPs per token, forward + backward (DESIGN.md performance model counts the
    // projections in N_active and attention separately).
    std::int64_t weights_per_token() const { return 4 * c * cl; }
  };
};

}  // namespace tmoe

#include "tmoe/core/concepts.hpp"
static_assert(tmoe::AttentionPolicy<tmoe::CausalAttention<tmoe::Rope>>);
static_assert(tmoe::AttentionPolicy<tmoe::CausalAttention<tmoe::LearnedPositions>>);
