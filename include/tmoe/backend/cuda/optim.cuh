#pragma once
// The optimizer update rules on the device: one grid-stride kernel per rule that calls the
// rule's own per-element Step (optim/adamw.hpp, sgd.hpp, lion.hpp, sign_momentum.hpp), the
// same TMOE_HOST_DEVICE function the CPU loop calls, built on the host from (lr, wd, step)
// by the rule's step_rule<T>. So the GPU computes the CPU's roundings, and the two agree
// bit for bit wherever their fused multiply-adds agree: the device always fuses
// detail::fmadd; the host fuses where it has FMA (__FMA__, e.g. -march=native on x86-64)
// or when TMOE_FUSED_FMADD is defined, and not otherwise (then the results differ by an
// ulp or so per step). Elements are float or double, the master-weight types of the CPU.
//
//   OptimOps::update(opt, p, g, state, n, lr, wd, step)
// p, g: n-element device arrays; state: a host array of opt.used_slots() device pointers
// (slot order as the CPU's: AdamW/SignMomentum m, v; Lion m; Sgd the momentum buffer,
// none when momentum is 0). Runs on Context::current().stream(); elements are
// independent, so the result does not depend on the launch shape.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>
#include <variant>

#include "tmoe/backend/cuda/check.hpp"
#include "tmoe/backend/cuda/launch.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/optim/adamw.hpp"
#include "tmoe/optim/choice.hpp"
#include "tmoe/optim/lion.hpp"
#include "tmoe/optim/sgd.hpp"
#include "tmoe/optim/sign_momentum.hpp"

namespace tmoe::backend::cuda {

namespace detail {

template <class>
inline constexpr bool is_optimizer_choice_v = false;
template <class... Opts>
inline constexpr bool is_optimizer_choice_v<OptimizerChoice<Opts...>> = true;

// Rules with two state arrays (m, v): AdamW, SignMomentum.
template <class T, class Rule>
struct TwoSlotUpdate {
  Rule rule;
  T* p;
  const T* g;
  T* m;
  T* v;
  __device__ void operator()(std::int64_t i) const { rule(p[i], g[i], m[i], v[i]); }
};
// Rules with one state array: Lion.
template <class T, class Rule>
struct OneSlotUpdate {
  Rule rule;
  T* p;
  const T* g;
  T* m;
  __device__ void operator()(std::int64_t i) const { rule(p[i], g[i], m[i]); }
};
// Sgd: plain (no buffer) or with momentum.
template <class T>
struct SgdPlainUpdate {
  Sgd::Step<T> rule;
  T* p;
  const T* g;
  __device__ void operator()(std::int64_t i) const { rule.plain(p[i], g[i]); }
};
template <class T>
struct SgdMomentumUpdate {
  Sgd::Step<T> rule;
  T* p;
  const T* g;
  T* b;
  __device__ void operator()(std::int64_t i) const { rule.momentum(p[i], g[i], b[i]); }
};

}  // namespace detail

struct OptimOps {
  // One update step of rule `opt` (any of the four rules, an OptimizerChoice of them, or a
  // rule of the same shape: a step_rule<T>(lr, wd, step) whose Step takes (p, g, m, v) or
  // (p, g, m)); step counts from 1.
  template <class Opt, class T>
  static void update(const Opt& opt, T* p, const T* g, T** state, std::int64_t n, double lr, double wd, std::int64_t step) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "tmoe: OptimOps::update runs on float or double master weights (as the CPU rules do)");
    if constexpr (detail::is_optimizer_choice_v<Opt>) {
      std::visit([&](const auto& o) { update(o, p, g, state, n, lr, wd, step); }, opt.rule);
    } else {
      if (n <= 0) return;
      if constexpr (std::is_same_v<Opt, Sgd>) {
        const auto rule = opt.template step_rule<T>(lr, wd, step);
        if (opt.momentum > 0) {
          check_slots(state, 1, Opt::name);
          elementwise(n, detail::SgdMomentumUpdate<T>{rule, p, g, state[0]});
        } else {
          elementwise(n, detail::SgdPlainUpdate<T>{rule, p, g});
        }
      } else if constexpr (requires(const typename Opt::template Step<T>& r, T& x, T y) { r(x, y, x, x); }) {
        check_slots(state, 2, Opt::name);
        using Rule = typename Opt::template Step<T>;
        elementwise(n, detail::TwoSlotUpdate<T, Rule>{opt.template step_rule<T>(lr, wd, step), p, g, state[0], state[1]});
      } else if constexpr (requires(const typename Opt::template Step<T>& r, T& x, T y) { r(x, y, x); }) {
        check_slots(state, 1, Opt::name);
        using Rule = typename Opt::template Step<T>;
        elementwise(n, detail::OneSlotUpdate<T, Rule>{opt.template step_rule<T>(lr, wd, step), p, g, state[0]});
      } else {
        static_assert(tmoe::dependent_false<Opt>,
                      "tmoe: OptimOps::update needs a rule with a TMOE_HOST_DEVICE per-element Step<T> and step_rule<T>(lr, wd, "
                      "step), as optim/adamw.hpp has");
      }
    }
  }

 private:
  template <class T>
  static void check_slots(T** state, int slots, const char* name) {
    bool ok = state != nullptr;
    for (int s = 0; ok && s < slots; ++s) ok = state[s] != nullptr;
    if (!ok)
      throw Error(std::string("optimizer '") + name + "' was given no device array for one of its " + std::to_string(slots) +
                      " state slot(s)",
                  "tmoe::backend::cuda::OptimOps::update", "one device pointer per used slot");
  }
};

}  // namespace tmoe::backend::cuda
