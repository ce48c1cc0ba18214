#pragma once
// The seed article's rule, "adaptive moment estimation fused with momentum, with a sign
// function enhancing sparsity" (docs/concepts/optimizer.md defines and motivates it):
//   c ← β1ᴸ·m + (1 − β1ᴸ)·g                      Lion's interpolated momentum
//   v ← β2·v + (1 − β2)·g²;  v̂ ← v / (1 − β2ᵗ)   Adam's bias-corrected second moment
//   r ← |c| / (√v̂ + ε)                           per-coordinate signal-to-noise ratio
//   u ← sign(c)·min(1, r)·[r ≥ τ]                step ≤ lr; below the threshold τ: none
//   θ ← θ(1 − lr·wd) − lr·u
//   m ← β2ᴸ·m + (1 − β2ᴸ)·g
// β1ᴸ, β2ᴸ: train.lion_beta1, train.lion_beta2; β2, ε: train.beta2, train.adam_eps;
// τ: train.sign_threshold. With τ = 0 and v̂ → 0 it is Lion.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "tmoe/core/concepts.hpp"
#include "tmoe/core/config.hpp"
#include "tmoe/core/macros.hpp"
#include "tmoe/optim/elementwise.hpp"

namespace tmoe {

struct SignMomentum {
  static constexpr const char* name = "sign_momentum";
  static constexpr int slots = 2;
  static constexpr const char* slot_names[slots] = {"exp_avg", "exp_avg_sq"};
  double beta1 = 0.9, beta2 = 0.99;  // of the momentum m (Lion's)
  double beta2_sq = 0.95;            // of the second moment v (Adam's beta2)
  double eps = 1e-8;
  double threshold = 0;

  static SignMomentum from_config(const TrainConfig& t) {
    return SignMomentum{t.lion_beta1, t.lion_beta2, t.beta2, t.adam_eps, t.sign_threshold};
  }
  int used_slots() const { return slots; }
  const char* slot_name(int s) const { return slot_names[s]; }
  const char* active_name() const { return name; }

  // One element's update with the constants of one step, elementwise in T as AdamW
  // (TMOE_HOST_DEVICE: update() below and the CUDA kernel of backend/cuda/optim.cuh run it).
  // Each β·x + (1 − β)·y fuses its first product with the add, and θ(1 − lr·wd) − lr·u
  // fuses lr·u: written out, so that every compiler computes the same roundings.
  template <class T>
  struct Step {
    T b1, c1, b2, c2, bv, cv, bc, e, tau, rate, dk;
    TMOE_HOST_DEVICE void operator()(T& p, T g, T& m, T& v) const {
      const T mi = m;
      const T c = detail::fmadd(b1, mi, c1 * g);
      const T vi = detail::fmadd(bv, v, cv * (g * g));
      v = vi;
      const T r = detail::div_rn(std::abs(c), detail::sqrt_rn(detail::div_rn(vi, bc)) + e);
      // Written so that a NaN r passes through to the weights rather than vanishing.
      const T mag = r < tau ? T(0) : (r > T(1) ? T(1) : r);
      p = detail::fmadd(-rate, c < T(0) ? -mag : mag, p * dk);
      m = detail::fmadd(b2, mi, c2 * g);
    }
  };
  // The constants of step `step` (from 1): the bias correction in double, then rounded to T.
  template <class T>
  Step<T> step_rule(double lr, double wd, std::int64_t step) const {
    const double bc2 = 1.0 - std::pow(beta2_sq, static_cast<double>(step));
    return Step<T>{static_cast<T>(beta1),     static_cast<T>(1.0 - beta1),    static_cast<T>(beta2),
                   static_cast<T>(1.0 - beta2), static_cast<T>(beta2_sq),     static_cast<T>(1.0 - beta2_sq),
                   static_cast<T>(bc2),       static_cast<T>(eps),            static_cast<T>(threshold),
                   static_cast<T>(lr),        static_cast<T>(1.0 - lr * wd)};
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
static_assert(Optimizer<SignMomentum>);

}  // namespace tmoe
