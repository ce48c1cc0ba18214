#pragma once
// SGD, heavy-ball momentum and Nesterov momentum with torch.optim.SGD's semantics, the
// choice made by run-time fields (train.momentum, train.dampening, train.nesterov):
//   d ← g + wd·θ                                 (coupled weight decay, an L2 gradient)
//   b ← d at step 1, else μ·b + (1 − τ)·d        (momentum μ > 0, dampening τ)
//   d ← d + μ·b (Nesterov), else d ← b
//   θ ← θ − lr·d
// With μ = 0 it is plain SGD and uses no state (used_slots() = 0). Each element is
// computed with torch's roundings (its add with alpha is a fused multiply-add where the CPU
// has one), so the two agree bitwise (tests/reference/test_optim_parity.py).
#include <algorithm>
#include <cstdint>

#include "tmoe/core/concepts.hpp"
#include "tmoe/core/config.hpp"
#include "tmoe/core/macros.hpp"
#include "tmoe/optim/elementwise.hpp"

namespace tmoe {

struct Sgd {
  static constexpr const char* name = "sgd";
  static constexpr int slots = 1;
  static constexpr const char* slot_names[slots] = {"momentum_buffer"};
  double momentum = 0, dampening = 0;
  bool nesterov = false;

  static Sgd from_config(const TrainConfig& t) { return Sgd{t.momentum, t.dampening, t.nesterov}; }
  int used_slots() const { return momentum > 0 ? 1 : 0; }
  const char* slot_name(int s) const { return slot_names[s]; }
  const char* active_name() const { return name; }

  // One element's update with the constants of one step (TMOE_HOST_DEVICE: update() below
  // and the CUDA kernel of backend/cuda/optim.cuh run it); every add with alpha is fused,
  // as torch's. plain(): μ = 0, no buffer; momentum(): b is the momentum buffer.
  template <class T>
  struct Step {
    T w, rate, mu, keep;
    bool first, nest;
    TMOE_HOST_DEVICE void plain(T& p, T g) const { p = detail::fmadd(detail::fmadd(p, w, g), -rate, p); }
    TMOE_HOST_DEVICE void momentum(T& p, T g, T& b) const {
      const T d = detail::fmadd(p, w, g);
      const T bi = first ? d : detail::fmadd(d, keep, b * mu);
      b = bi;
      p = detail::fmadd(nest ? detail::fmadd(bi, mu, d) : bi, -rate, p);
    }
  };
  template <class T>
  Step<T> step_rule(double lr, double wd, std::int64_t step) const {
    return Step<T>{static_cast<T>(wd), static_cast<T>(lr), static_cast<T>(momentum), static_cast<T>(1.0 - dampening),
                   step == 1, nesterov};
  }

  // p, g, state[0] = momentum buffer (unused, may be null, when momentum is 0): n elements.
  template <class T>
  void update(T* p, const T* g, T** state, std::int64_t n, double lr, double wd, std::int64_t step) const {
    const Step<T> rule = step_rule<T>(lr, wd, step);
    const bool heavy = momentum > 0;
    T* buf = heavy ? state[0] : nullptr;
    detail::for_chunks(n, [&](std::int64_t i0, std::int64_t i1) {
      T* __restrict pp = p;
      const T* __restrict gg = g;
      T* __restrict bb = buf;
      if (!heavy) {
        for (std::int64_t i = i0; i < i1; ++i) rule.plain(pp[i], gg[i]);
        return;
      }
      for (std::int64_t i = i0; i < i1; ++i) rule.momentum(pp[i], gg[i], bb[i]);
    });
  }
};
static_assert(Optimizer<Sgd>);

}  // namespace tmoe
