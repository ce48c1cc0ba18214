#pragma once
// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the sign of an
// interpolation between the momentum and the current gradient, with decoupled weight decay:
//   c ← β1·m + (1 − β1)·g
//   θ ← θ(1 − lr·wd) − lr·sign(c)                (sign(0) = 0)
//   m ← β2·m + (1 − β2)·g
// β1, β2 are train.lion_beta1, train.lion_beta2. Every coordinate moves by exactly lr (or
// not at all), so lr is typically 3-10x below AdamW's and wd 3-10x above it.
#include <algorithm>
#include <cstdint>

#include "tmoe/core/concepts.hpp"
#include "tmoe/core/config.hpp"
#include "tmoe/core/macros.hpp"
#include "tmoe/optim/elementwise.hpp"

namespace tmoe {

namespace detail {
// +1, -1, or x itself for ±0 and NaN (a NaN reaches the weights instead of being hidden).
template <class T>
TMOE_HOST_DEVICE inline T sign_or_self(T x) {
  return x > T(0) ? T(1) : x < T(0) ? T(-1) : x;
}
}  // namespace detail

struct Lion {
  static constexpr const char* name = "lion";
  static constexpr int slots = 1;
  static constexpr const char* slot_names[slots] = {"exp_avg"};
  double beta1 = 0.9, beta2 = 0.99;

  static Lion from_config(const TrainConfig& t) { return Lion{t.lion_beta1, t.lion_beta2}; }
  int used_slots() const { return slots; }
  const char* slot_name(int s) const { return slot_names[s]; }
  const char* active_name() const { return name; }

  // One element's update with the constants of one step (TMOE_HOST_DEVICE: update() below
  // and the CUDA kernel of backend/cuda/optim.cuh run it). The two interpolations fuse the
  // β·m product with the add; lr·sign(c) is exact, so θ(1 − lr·wd) − lr·sign(c) is the
  // same fused or not, and is written fused so that no compiler has a choice left.
  template <class T>
  struct Step {
    T b1, c1, b2, c2, rate, dk;
    TMOE_HOST_DEVICE void operator()(T& p, T g, T& m) const {
      const T mi = m;
      const T c = detail::fmadd(b1, mi, c1 * g);
      p = detail::fmadd(-rate, detail::sign_or_self(c), p * dk);
      m = detail::fmadd(b2, mi, c2 * g);
    }
  };
  template <class T>
  Step<T> step_rule(double lr, double wd, std::int64_t /*step*/) const {
    return Step<T>{static_cast<T>(beta1), static_cast<T>(1.0 - beta1), static_cast<T>(beta2), static_cast<T>(1.0 - beta2),
                   static_cast<T>(lr),    static_cast<T>(1.0 - lr * wd)};
  }

  // p, g, state[0] = m: n elements; step is unused (Lion has no bias correction).
  template <class T>
  void update(T* p, const T* g, T** state, std::int64_t n, double lr, double wd, std::int64_t step) const {
    T* m = state[0];
    const Step<T> rule = step_rule<T>(lr, wd, step);
    detail::for_chunks(n, [&](std::int64_t i0, std::int64_t i1) {
      T* __restrict pp = p;
      const T* __restrict gg = g;
      T* __restrict mm = m;
      for (std::int64_t i = i0; i < i1; ++i) rule(pp[i], gg[i], mm[i]);
    });
  }
};
static_assert(Optimizer<Lion>);

}  // namespace tmoe
