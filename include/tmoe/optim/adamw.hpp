#pragma once
// AdamW (Loshchilov & Hutter 2019) with decoupled weight decay, in PyTorch's order:
//   θ ← θ (1 − lr·wd);  m ← β1 m + (1 − β1) g;  v ← β2 v + (1 − β2) g²
//   θ ← θ − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
// State: two arrays (m, v) per parameter element. Weight decay is given per call, so the
// trainer applies it by parameter group (no decay on norms, biases, embeddings).
// Each element is computed with the roundings of torch.optim.AdamW (foreach=False) on a
// tensor of the same dtype, so the two agree bitwise (tests/reference/test_optim_parity.py).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "tmoe/core/concepts.hpp"
#include "tmoe/core/config.hpp"
#include "tmoe/core/macros.hpp"
#include "tmoe/optim/elementwise.hpp"

namespace tmoe {

struct AdamW {
  static constexpr const char* name = "adamw";
  static constexpr int slots = 2;
  // Checkpoint names of the state arrays (PyTorch's names for the same moments).
  static constexpr const char* slot_names[slots] = {"exp_avg", "exp_avg_sq"};
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;

  static AdamW from_config(const TrainConfig& t) { return AdamW{t.beta1, t.beta2, t.adam_eps}; }
  int used_slots() const { return slots; }
  const char* slot_name(int s) const { return slot_names[s]; }
  const char* active_name() const { return name; }

  // One element's update with the constants of one step, in T as PyTorch computes a tensor
  // of that dtype. TMOE_HOST_DEVICE: update() below runs it on the CPU, OptimOps::update of
  // backend/cuda/optim.cuh in a CUDA kernel, with the same roundings.
  template <class T>
  struct Step {
    T b1, c1, b2, c2, e, ss, bc2s, dk;
    TMOE_HOST_DEVICE void operator()(T& p, T g, T& m, T& v) const {
      // PyTorch: m.mul_(β1).add_(g, alpha=1−β1); v.mul_(β2).addcmul_(g, g, value=1−β2);
      // θ.mul_(1−lr·wd); θ.addcdiv_(m, √v/√bc2 + ε, value=−step_size).
      const T mi = detail::fmadd(g, c1, m * b1);
      const T vi = detail::fmadd(c2 * g, g, v * b2);
      m = mi;
      v = vi;
      // θ·(1−lr·wd) is rounded before the add, never fused with it.
      const T decayed = detail::mul_rn(p, dk);
      p = decayed + detail::div_rn(-ss * mi, detail::div_rn(detail::sqrt_rn(vi), bc2s) + e);
    }
  };
  // The constants of step `step` (from 1): the bias corrections in double, then rounded to T.
  template <class T>
  Step<T> step_rule(double lr, double wd, std::int64_t step) const {
    const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
    const double step_size = lr / bc1, bc2_sqrt = std::sqrt(bc2), decay = 1.0 - lr * wd;
    return Step<T>{static_cast<T>(beta1), static_cast<T>(1.0 - beta1), static_cast<T>(beta2), static_cast<T>(1.0 - beta2),
                   static_cast<T>(eps),   static_cast<T>(step_size),   static_cast<T>(bc2_sqrt), static_cast<T>(decay)};
  }

  // p, g, state[0] = m, state[1] = v: n elements; step counts from 1.
  template <class T>
  void update(T* p, const T* g, T** state, std::int64_t n, double lr, double wd, std::int64_t step) const {
    T* m = state[0];
    T* v = state[1];
    const Step<T> rule = step_rule<T>(lr, wd, step);
    detail::for_chunks(n, [&](std::int64_t i0, std::int64_t i1) {
      T* __restrict pp = p;
      const T* __restrict gg = g;
      T* __restrict mm = m;
      T* __restrict vv = v;
      for (std::int64_t i = i0; i < i1; ++i) rule(pp[i], gg[i], mm[i], vv[i]);
    });
  }
};
static_assert(Optimizer<AdamW>);

}  // namespace tmoe
