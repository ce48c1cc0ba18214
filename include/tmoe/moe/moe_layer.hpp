#pragma once
// The MoE layer, as DESIGN.md's five steps:
//   route    router logits = x Wrᵀ (E per token); the Router policy picks k experts and gates
//   plan     a stable counting sort of (token, slot) pairs by expert: for each expert its rows
//            in token order, and offsets — the order never depends on threads
//   dispatch gather each routed token row into one contiguous buffer, expert by expert
//   experts  each expert runs its GEMMs once over its contiguous slice
//   combine  each token sums its k weighted expert outputs in slot order
// Balancing terms (per micro-batch of N tokens, E experts, k slots):
//   load-balancing (Switch/GShard): aux = E Σ_e f_e P_e, f_e = count_e / (N k),
//                                    P_e = (1/N) Σ_t p_te (full softmax); 1 at perfect balance
//   router z-loss (ST-MoE):          z = (1/N) Σ_t (log Σ_e exp l_te)²
// The layer adds aux_loss_weight·aux + z_loss_weight·z to the model's loss.
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tmoe/core/concepts.hpp"
#include "tmoe/core/config.hpp"
#include "tmoe/layers/linear.hpp"
#include "tmoe/moe/experts/expert_shape.hpp"
#include "tmoe/moe/routers/topk.hpp"
#include "tmoe/tensor/tensor.hpp"

namespace tmoe {

// The routing plan of one micro-batch (step 2): rows of the dispatch buffer grouped by
// expert. pos[t k + j] is the dispatch row of token t's j-th choice; row_token[r] its token.
struct RoutingPlan {
  std::vector<std::int64_t> counts, offsets;  // (E), (E + 1)
  std::vector<std::int32_t> pos, row_token;   // (N k), (N k)

  void build(const std::int32_t* ids, std::int64_t n, std::int64_t k, std::int64_t e) {
    counts.assign(static_cast<std::size_t>(e), 0);
    for (std::int64_t i = 0; i < n * k; ++i) ++counts[static_cast<std::size_t>(ids[i])];
    offsets.assign(static_cast<std::size_t>(e + 1), 0);
    for (std::int64_t x = 0; x < e; ++x) offsets[x + 1] = offsets[x] + counts[x];
    std::vector<std::int64_t> cursor(offsets.begin(), offsets.end() - 1);
    pos.resize(static_cast<std::size_t>(n * k));
    row_token.resize(static_cast<std::size_t>(n * k));
    for (std::int64_t i = 0; i < n * k; ++i) {  // token-major: stable within each expert
      const std::int64_t r = cursor[static_cast<std::size_t>(ids[i])]++;
      pos[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(r);
      row_token[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(i / k);
    }
  }
};

template <class ExpertP, class RouterP = TopK>
struct MoE {
  static_assert(Expert<ExpertP>,
                "tmoe: MoE<Expert, Router>: the Expert argument is not an Expert (an expert policy names itself, "
                "says how many matrices it has and provides impl<T, Backend> with weights(shape); see "
                "docs/concepts/expert.md)");
  static_assert(Router<RouterP>,
                "tmoe: MoE<Expert, Router>: the Router argument is not a Router (a router policy provides "
                "forward_token and backward_token over one token's router logits; see docs/concepts/router.md)");
  static constexpr const char* name = "moe";
  static constexpr bool is_moe = true;
  using expert_policy = ExpertP;
  using router_policy = RouterP;

  template <class T, class B>
  struct impl {
    using ExpertImpl = typename ExpertP::template impl<T, B>;
    RouterParams rp;
    std::int64_t c = 0;
    double aux_weight = 0, z_weight = 0;
    layers::Linear<T, B> router;
    std::vector<ExpertImpl> experts;
    ExpertShape eshape;

    // saved by forward for backward
    const T* x = nullptr;
    std::int64_t n = 0;
    Tensor<T> logits, probs, lse, gates;   // (N, E), (N, E), (N), (N, k)
    Tensor<std::int32_t> ids;              // (N, k)
    RoutingPlan plan;
    Tensor<T> xe, ye, dye, dxe;            // (N k, C)
    Tensor<T> dgates, dlogits;             // (N, k), (N, E)
    std::vector<double> mean_probs;        // P_e
    double aux = 0, z = 0;

    void declare(ParamRegistry& r, const std::string& name, const ModelConfig& cfg) {
      c = cfg.d_model;
      rp = RouterParams{cfg.n_experts, cfg.top_k, cfg.router_renormalize};
      aux_weight = cfg.aux_loss_weight;
      z_weight = cfg.z_loss_weight;
      router.declare(r, name + ".router", c, cfg.n_experts, false, kTagRouter, cfg.init_std);
      eshape = ExpertShape{cfg.d_model, cfg.d_expert, false, kTagExpert, cfg.init_std,
                           cfg.init_std / std::sqrt(2.0 * static_cast<double>(cfg.n_layers)), cfg.gelu_exact};
      experts.resize(static_cast<std::size_t>(cfg.n_experts));
      for (std::int64_t e = 0; e < cfg.n_experts; ++e)
        experts[static_cast<std::size_t>(e)].declare(r, name + ".experts." + std::to_string(e), eshape);
    }
    void bind(const ParamRegistry& r, T* p, T* g) {
      router.bind(r, p, g);
      for (auto& e : experts) e.bind(r, p, g);
    }

    // in, out: (N, C)
    void forward(const T* in, T* out, std::int64_t rows) {
      x = in;
      n = rows;
      const std::int64_t e = rp.n_experts, k = rp.k;
      logits.ensure(Shape{n, e});
      probs.ensure(Shape{n, e});
      lse.ensure(Shape{n});
      gates.ensure(Shape{n, k});
      ids.ensure(Shape{n, k});
      // 1. route
      router.forward(in, logits.data(), n);
      {
        const RouterParams p = rp;
        T *lg = logits.data(), *pr = probs.data(), *ls = lse.data(), *gt = gates.data();
        std::int32_t* id = ids.data();
        B::for_rows(n, [=](std::int64_t t) {
          RouterP::forward_token(p, lg + t * e, id + t * k, gt + t * k, pr + t * e, ls + t);
        });
      }
      // 2. plan
      plan.build(ids.data(), n, k, e);
      // balancing terms
      mean_probs.assign(static_cast<std::size_t>(e), 0.0);
      {
        std::vector<T> sum(static_cast<std::size_t>(e), T(0));
        const T* pr = probs.data();
        B::reduce_rows(n, e, sum.data(), [=](std::int64_t t, double* acc) {
          for (std::int64_t x2 = 0; x2 < e; ++x2) acc[x2] += pr[t * e + x2];
        });
        double a = 0;
        for (std::int64_t x2 = 0; x2 < e; ++x2) {
          mean_probs[x2] = static_cast<double>(sum[x2]) / static_cast<double>(n);
          a += static_cast<double>(plan.counts[x2]) / static_cast<double>(n * k) * mean_probs[x2];
        }
        aux = static_cast<double>(e) * a;
        double zs = 0;
        const T* ls = lse.data();
        B::reduce_rows(n, 1, &zs, [=](std::int64_t t, double* acc) {
          acc[0] += static_cast<double>(ls[t]) * static_cast<double>(ls[t]);
        });
        z = zs / static_cast<double>(n);
      }
      // 3. dispatch
      xe.ensure(Shape{n * k, c});
      ye.ensure(Shape{n * k, c});
      {
        const std::int32_t* rt = plan.row_token.data();
        T* dst = xe.data();
        const std::int64_t cc = c;
        B::for_rows(n * k, [=](std::int64_t r) {
          const T* src = in + static_cast<std::int64_t>(rt[r]) * cc;
          for (std::int64_t j = 0; j < cc; ++j) dst[r * cc + j] = src[j];
        });
      }
      // 4. experts, each over its contiguous slice
      for (std::int64_t x2 = 0; x2 < e; ++x2)
        experts[x2].forward(xe.data() + plan.offsets[x2] * c, ye.data() + plan.offsets[x2] * c, plan.counts[x2]);
      // 5. combine
      {
        const std::int32_t* ps = plan.pos.data();
        const T *y = ye.data(), *gt = gates.data();
        const std::int64_t cc = c;
        B::for_rows(n, [=](std::int64_t t) {
          T* o = out + t * cc;
          for (std::int64_t j = 0; j < cc; ++j) o[j] = T(0);
          for (std::int64_t s = 0; s < k; ++s) {
            const T g = gt[t * k + s];
            const T* src = y + static_cast<std::int64_t>(ps[t * k + s]) * cc;
            for (std::int64_t j = 0; j < cc; ++j) o[j] += g * src[j];
          }
        });
      }
    }

    // Weighted balancing loss of the last forward.
    double loss() const { return aux_weight * aux + z_weight * z; }

    // dout (N, C) -> dx (N, C); grad_scale multiplies the balancing losses' gradients (the
    // same factor the model applies to its loss, e.g. 1 / micro-batches).
    void backward(const T* dout, T* dx, bool accumulate_dx, double grad_scale) {
      const std::int64_t e = rp.n_experts, k = rp.k, cc = c;
      dye.ensure(Shape{n * k, c});
      dxe.ensure(Shape{n * k, c});
      dgates.ensure(Shape{n, k});
      dlogits.ensure(Shape{n, e});
      // combine backward
      {
        const std::int32_t* ps = plan.pos.data();
        const T *y = ye.data(), *gt = gates.data();
        T *dy = dye.data(), *dg = dgates.data();
        B::for_rows(n, [=](std::int64_t t) {
          const T* go = dout + t * cc;
          for (std::int64_t s = 0; s < k; ++s) {
            const std::int64_t r = ps[t * k + s];
            const T g = gt[t * k + s];
            double dot = 0;
            for (std::int64_t j = 0; j < cc; ++j) {
              dy[r * cc + j] = g * go[j];
              dot += static_cast<double>(go[j]) * static_cast<double>(y[r * cc + j]);
            }
            dg[t * k + s] = static_cast<T>(dot);
          }
        });
      }
      // experts backward
      for (std::int64_t x2 = 0; x2 < e; ++x2)
        experts[x2].backward(dye.data() + plan.offsets[x2] * c, dxe.data() + plan.offsets[x2] * c, false);
      // dispatch backward: each token gathers its k rows in slot order
      {
        const std::int32_t* ps = plan.pos.data();
        const T* dxr = dxe.data();
        B::for_rows(n, [=](std::int64_t t) {
          T* d = dx + t * cc;
          if (!accumulate_dx)
            for (std::int64_t j = 0; j < cc; ++j) d[j] = T(0);
          for (std::int64_t q = 0; q < k; ++q) {
            const T* src = dxr + static_cast<std::int64_t>(ps[t * k + q]) * cc;
            for (std::int64_t j = 0; j < cc; ++j) d[j] += src[j];
          }
        });
      }
      // route backward
      {
        std::vector<T> dprobs(static_cast<std::size_t>(e));
        for (std::int64_t x2 = 0; x2 < e; ++x2)
          dprobs[x2] = static_cast<T>(grad_scale * aux_weight * static_cast<double>(e) *
                                      (static_cast<double>(plan.counts[x2]) / static_cast<double>(n * k)) /
                                      static_cast<double>(n));
        const double zscale = grad_scale * z_weight * 2.0 / static_cast<double>(n);
        const RouterParams p = rp;
        const std::int32_t* id = ids.data();
        const T *gt = gates.data(), *pr = probs.data(), *dg = dgates.data(), *ls = lse.data(), *dp = dprobs.data();
        T* dl = dlogits.data();
        B::for_rows(n, [=](std::int64_t t) {
          RouterP::backward_token(p, id + t * k, gt + t * k, pr + t * e, dg + t * k, dp,
                                  static_cast<T>(zscale * static_cast<double>(ls[t])), dl + t * e);
        });
        router.backward(x, dlogits.data(), dx, n, true);
      }
    }

    std::span<const std::int64_t> expert_counts() const { return plan.counts; }
    // Weights a token multiplies: router + its k experts.
    std::int64_t active_weights() const {
      return c * rp.n_experts + rp.k * ExpertImpl::weights(eshape);
    }
  };
};

}  // namespace tmoe
