#pragma once
// Shared by the per-layer gradient checks (tests/gradcheck/test_layers_*.cpp).
//
// Each check runs a layer in fp64 on random inputs and parameters, takes the scalar
//   L = Σ (output ⊙ R) (+ the layer's own loss(), for MoE layers and blocks)
// with a fixed random R, runs the layer's backward with dL/doutput = R, and compares every
// input-gradient and parameter-gradient element (or a random subset of `subset` elements
// for tensors larger than `all_up_to`) with the central difference
//   (L(θ + ε) − L(θ − ε)) / 2ε,  ε = 1e-6.
// An element passes when |fd − analytic| ≤ rtol · max(|analytic|, max_tensor |analytic|),
// rtol = 1e-6: a relative bound per element, floored by the tensor's gradient scale so
// elements whose gradient is ~0 are not held to an impossible relative bound. Elements
// whose ±ε step changes a routing decision (the loss is not differentiable there) are
// skipped and counted; at most a few percent may be skipped.
//
// The analytic pass runs with tmoe's default thread count; the many forwards of the finite
// differences run on one thread (results do not depend on the thread count, and these tiny
// forwards are faster without any fork/join).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../support/tiny.hpp"

namespace gc {

using namespace tmoe;
using Cpu = backend::Cpu;
using test::max_abs;
using test::max_abs_diff;
using test::randn;

// y (n, out) = x Wᵀ + b (b may be null), the naive double reference of a linear layer.
inline std::vector<double> linear_ref(const double* x, const double* w, const double* b, std::int64_t n,
                                      std::int64_t in, std::int64_t out) {
  std::vector<double> y(n * out);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t o = 0; o < out; ++o) {
      double s = b ? b[o] : 0.0;
      for (std::int64_t j = 0; j < in; ++j) s += x[i * in + j] * w[o * in + j];
      y[i * out + o] = s;
    }
  return y;
}

// Random parameters: norm weights near 1, biases small, router rows `router_std` (large, so
// the top-k choice is far from a tie), every other matrix `std`.
inline void fill_params(const ParamRegistry& r, std::vector<double>& p, unsigned seed, double std = 0.3,
                        double router_std = 0.6) {
  std::fill(p.begin(), p.end(), 0.0);
  for (int i = 0; i < r.size(); ++i) {
    const ParamInfo& pi = r[i];
    const bool bias = pi.has(kTagBias), norm = pi.has(kTagNorm);
    const double mean = norm && !bias ? 1.0 : 0.0;
    const double s = norm || bias ? 0.1 : pi.has(kTagRouter) ? router_std : std;
    const auto v = randn(static_cast<std::size_t>(pi.numel()), seed * 1000 + static_cast<unsigned>(i), s, mean);
    std::copy(v.begin(), v.end(), p.begin() + pi.offset);
  }
}

struct Target {
  std::string name;
  double* value;              // perturbed in place
  std::int64_t numel;
  std::vector<double> grad;   // analytic gradient (a snapshot)
};

inline std::vector<Target> param_targets(const ParamRegistry& r, double* p, const double* g) {
  std::vector<Target> t;
  for (const ParamInfo& pi : r.params())
    t.push_back({pi.name, p + pi.offset, pi.numel(), std::vector<double>(g + pi.offset, g + pi.offset + pi.numel())});
  return t;
}

struct Options {
  double eps = 1e-6;
  double rtol = 1e-6;
  std::int64_t all_up_to = 4096;  // tensors up to this size are checked element by element
  std::int64_t subset = 256;      // random elements of larger tensors
  unsigned seed = 1;
  double max_skip_fraction = 0.05;
  bool allow_zero_grad = false;   // a tensor may have no gradient at all (an expert with no tokens)
  std::vector<std::string> full;  // tensors checked element by element whatever their size
};

struct NoRoute {
  std::vector<std::int32_t> operator()() const { return {}; }
};

struct Summary {
  std::int64_t checked = 0, skipped = 0;
};

// loss(): runs the forward and returns the scalar; route(): the routing decisions of the
// forward just run (empty for layers without a router).
template <class Loss, class Route = NoRoute>
Summary check(std::vector<Target>& targets, Loss&& loss, Route&& route = Route{}, const Options& o = {}) {
  std::mt19937 rng(o.seed);
  struct OneThread {
    int saved = thread_count_ref();
    OneThread() { set_threads(1); }
    ~OneThread() { set_threads(saved); }
  } one_thread;
  const double l0 = loss();
  const auto r0 = route();
  std::int64_t total_checked = 0, total_skipped = 0;
  for (Target& t : targets) {
    std::vector<std::int64_t> idx(static_cast<std::size_t>(t.numel));
    std::iota(idx.begin(), idx.end(), 0);
    if (t.numel > o.all_up_to && std::find(o.full.begin(), o.full.end(), t.name) == o.full.end()) {
      std::shuffle(idx.begin(), idx.end(), rng);
      idx.resize(static_cast<std::size_t>(o.subset));
    }
    const double gscale = max_abs(t.grad);
    double worst = 0, worst_fd = 0, worst_an = 0;
    std::int64_t worst_i = -1, skipped = 0;
    for (std::int64_t i : idx) {
      const double v0 = t.value[i];
      t.value[i] = v0 + o.eps;
      const double lp = loss();
      const bool same_p = route() == r0;
      t.value[i] = v0 - o.eps;
      const double lm = loss();
      const bool same_m = route() == r0;
      t.value[i] = v0;
      if (!same_p || !same_m) {
        ++skipped;
        continue;
      }
      const double fd = (lp - lm) / (2 * o.eps), an = t.grad[static_cast<std::size_t>(i)];
      const double bound = o.rtol * std::max({std::abs(an), gscale, 1e-300});
      const double ratio = std::abs(fd - an) / bound;
      if (ratio > worst) worst = ratio, worst_fd = fd, worst_an = an, worst_i = i;
    }
    const auto checked = static_cast<std::int64_t>(idx.size()) - skipped;
    total_checked += checked;
    total_skipped += skipped;
    BOOST_TEST_MESSAGE("  " << t.name << ": " << checked << "/" << t.numel << " checked, " << skipped
                            << " skipped, max|g| " << gscale << ", worst |fd-an|/bound " << worst);
    BOOST_TEST(worst <= 1.0, t.name << "[" << worst_i << "]: numeric " << worst_fd << " analytic " << worst_an
                                    << " (|diff| = " << std::abs(worst_fd - worst_an) << ", " << worst
                                    << " x the bound; max|grad| of the tensor " << gscale << ")");
    if (!o.allow_zero_grad) BOOST_TEST(gscale > 0.0, t.name << ": gradient identically zero, nothing was checked");
  }
  BOOST_TEST(static_cast<double>(total_skipped) <= o.max_skip_fraction * static_cast<double>(total_checked + total_skipped),
             total_skipped << " of " << total_checked + total_skipped << " elements skipped (routing changed)");
  // The perturbations were undone exactly.
  BOOST_TEST(loss() == l0);
  BOOST_TEST((route() == r0));
  return {total_checked, total_skipped};
}

inline double dot(const std::vector<double>& a, const double* b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// The usual harness for a layer that maps an (in_numel) input to an (out_numel) output.
//   fwd(x, y)            forward
//   bwd(dy, dx, acc)     backward (acc: accumulate into dx); parameter gradients accumulate
//   extra()              the layer's own loss after a forward (0 for most layers)
//   route()              routing decisions after a forward
//   x                    the input (random N(0, 1) when empty)
// Also checks the accumulation contracts: with acc, dx = dx_before + ∂L/∂x; a second
// backward doubles the parameter gradients.
template <class Fwd, class Bwd, class Extra, class Route = NoRoute>
Summary run_layer(const std::string& what, const ParamRegistry& reg, std::vector<double>& p, std::vector<double>& g,
               std::int64_t in_numel, std::int64_t out_numel, Fwd&& fwd, Bwd&& bwd, Extra&& extra,
               Route&& route = Route{}, const Options& o = {}, bool has_accumulate = true, unsigned seed = 7,
               std::vector<double> x = {}) {
  BOOST_TEST_MESSAGE(what);
  if (x.empty()) x = randn(static_cast<std::size_t>(in_numel), seed);
  const auto r = randn(static_cast<std::size_t>(out_numel), seed + 1);
  std::vector<double> y(static_cast<std::size_t>(out_numel)), dx(static_cast<std::size_t>(in_numel), 99.0);
  std::fill(g.begin(), g.end(), 0.0);
  fwd(x.data(), y.data());
  bwd(r.data(), dx.data(), false);
  const std::vector<double> g1 = g;
  if (has_accumulate) {
    auto d0 = randn(static_cast<std::size_t>(in_numel), seed + 2), dxa = d0;
    fwd(x.data(), y.data());
    bwd(r.data(), dxa.data(), true);
    double e = 0, s = 0;
    for (std::size_t i = 0; i < dx.size(); ++i)
      e = std::max(e, std::abs(dxa[i] - (d0[i] + dx[i]))), s = std::max(s, std::abs(dx[i]));
    BOOST_TEST(e <= 1e-12 * (1 + s), what << ": accumulate_dx does not add ∂L/∂x (" << e << ")");
    double eg = 0, sg = 0;
    for (std::size_t i = 0; i < g.size(); ++i)
      eg = std::max(eg, std::abs(g[i] - 2 * g1[i])), sg = std::max(sg, std::abs(g1[i]));
    BOOST_TEST(eg <= 1e-12 * (1 + sg), what << ": parameter gradients do not accumulate (" << eg << ")");
  }
  std::vector<Target> targets;
  targets.push_back({"input", x.data(), in_numel, dx});
  for (auto& t : param_targets(reg, p.data(), g1.data())) targets.push_back(std::move(t));
  return check(
      targets,
      [&] {
        fwd(x.data(), y.data());
        return dot(r, y.data()) + extra();
      },
      route, o);
}

// A registry and flat buffers for one layer.
struct Buffers {
  ParamRegistry reg;
  std::vector<double> p, g;
  template <class Layer>
  void bind(Layer& layer, unsigned seed, double std = 0.3, double router_std = 0.6) {
    p.assign(static_cast<std::size_t>(reg.total()), 0.0);
    g.assign(static_cast<std::size_t>(reg.total()), 0.0);
    fill_params(reg, p, seed, std, router_std);
    layer.bind(reg, p.data(), g.data());
  }
};

}  // namespace gc
