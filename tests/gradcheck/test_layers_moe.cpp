#define BOOST_TEST_MODULE layers_moe
// fp64 central-difference gradient checks (see test_layers_common.hpp) of MoE<SwiGLU, TopK>
// and MoE<GeluFFN, TopK>, renormalised and unnormalised routers, with the load-balancing
// and z-loss weights nonzero so that their gradients are checked too. The scalar is
// Σ(out ⊙ R) + layer.loss(), and the backward takes grad_scale = 1. Elements whose ±ε step
// changes a top-k choice are skipped (router rows are drawn large, so logits are well
// separated and this is rare). The forward, aux and z values are also compared with a
// naive double reference of conventions.md.
#include <boost/test/unit_test.hpp>
#include <functional>

#include "test_layers_common.hpp"

using namespace gc;

namespace {

struct MoeRef {
  std::vector<double> out;
  std::vector<std::int32_t> ids;
  double aux = 0, z = 0;
};

MoeRef moe_ref(bool swiglu, bool exact, const ParamRegistry& r, const std::vector<double>& p,
               const std::string& name, const std::vector<double>& x, const ModelConfig& cfg, std::int64_t n) {
  const std::int64_t c = cfg.d_model, e = cfg.n_experts, k = cfg.top_k, h = cfg.d_expert;
  auto w = [&](const std::string& s) { return p.data() + r.find(name + s)->offset; };
  const double* wr = w(".router.weight");
  MoeRef o;
  o.out.assign(n * c, 0.0);
  o.ids.assign(n * k, -1);
  std::vector<double> cnt(e, 0.0), psum(e, 0.0);
  for (std::int64_t t = 0; t < n; ++t) {
    const double* xt = &x[t * c];
    std::vector<double> l(e), pr(e);
    for (std::int64_t i = 0; i < e; ++i) {
      l[i] = 0;
      for (std::int64_t j = 0; j < c; ++j) l[i] += xt[j] * wr[i * c + j];
    }
    const double mx = *std::max_element(l.begin(), l.end());
    double zs = 0;
    for (std::int64_t i = 0; i < e; ++i) zs += std::exp(l[i] - mx);
    const double lse = mx + std::log(zs);
    for (std::int64_t i = 0; i < e; ++i) pr[i] = std::exp(l[i] - lse), psum[i] += pr[i];
    o.z += lse * lse / n;
    std::vector<std::int32_t> order(e);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) { return l[a] > l[b]; });
    double sel = 0;
    for (std::int64_t j = 0; j < k; ++j) sel += std::exp(l[order[j]] - l[order[0]]);
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int32_t ex = order[j];
      o.ids[t * k + j] = ex;
      cnt[ex] += 1;
      const double gate = cfg.router_renormalize ? std::exp(l[ex] - l[order[0]]) / sel : pr[ex];
      const std::string en = ".experts." + std::to_string(ex);
      const double *w1 = w(en + ".w1.weight"), *w2 = w(en + ".w2.weight");
      const double* w3 = swiglu ? w(en + ".w3.weight") : nullptr;
      std::vector<double> hid(h);
      for (std::int64_t q = 0; q < h; ++q) {
        double a1 = 0, a3 = 0;
        for (std::int64_t j2 = 0; j2 < c; ++j2) {
          a1 += xt[j2] * w1[q * c + j2];
          if (w3) a3 += xt[j2] * w3[q * c + j2];
        }
        hid[q] = swiglu ? a1 / (1 + std::exp(-a1)) * a3
                 : exact ? 0.5 * a1 * std::erfc(-a1 / std::sqrt(2.0))
                         : 0.5 * a1 * (1 + std::tanh(std::sqrt(2 / M_PI) * (a1 + 0.044715 * a1 * a1 * a1)));
      }
      for (std::int64_t j2 = 0; j2 < c; ++j2) {
        double s = 0;
        for (std::int64_t q = 0; q < h; ++q) s += hid[q] * w2[j2 * h + q];
        o.out[t * c + j2] += gate * s;
      }
    }
  }
  for (std::int64_t i = 0; i < e; ++i) o.aux += static_cast<double>(e) * cnt[i] / (n * k) * psum[i] / n;
  return o;
}

ModelConfig moe_cfg(bool renorm, std::int64_t k) {
  auto cfg = test::tiny_model();
  cfg.router_renormalize = renorm;
  cfg.top_k = k;
  cfg.aux_loss_weight = 0.3;  // large, so the balancing gradients are a visible share
  cfg.z_loss_weight = 0.05;
  return cfg;
}

using Prep = std::function<void(Buffers&, std::vector<double>&)>;

template <class E>
Summary check_moe(const char* what, const ModelConfig& cfg, unsigned seed, Prep prep = {}, Options o = {},
                  bool compare_reference = true) {
  const std::int64_t n = 24, c = cfg.d_model;
  Buffers buf;
  typename MoE<E, TopK>::template impl<double, Cpu> moe;
  moe.declare(buf.reg, "layers.0.moe", cfg);
  buf.bind(moe, seed);
  auto x = randn(n * c, seed + 50);
  if (prep) prep(buf, x);
  // forward against the reference
  std::vector<double> y(n * c);
  moe.forward(x.data(), y.data(), n);
  constexpr bool swiglu = std::is_same_v<E, SwiGLU>;
  const auto ref = moe_ref(swiglu, cfg.gelu_exact, buf.reg, buf.p, "layers.0.moe", x, cfg, n);
  if (compare_reference) {
    BOOST_TEST((std::vector<std::int32_t>(moe.a_expert.begin(), moe.a_expert.end()) == ref.ids), what << ": routing");
    const double e = max_abs_diff(y, ref.out);
    BOOST_TEST(e <= 1e-12, what << ": forward differs from the reference by " << e);
    BOOST_TEST(std::abs(moe.stats().terms[0].second - ref.aux) <= 1e-13 * ref.aux, what << ": aux " << moe.stats().terms[0].second << " ref " << ref.aux);
    BOOST_TEST(std::abs(moe.stats().terms[1].second - ref.z) <= 1e-13 * ref.z, what << ": z " << moe.stats().terms[1].second << " ref " << ref.z);
    BOOST_TEST(std::abs(moe.loss() - (cfg.aux_loss_weight * ref.aux + cfg.z_loss_weight * ref.z)) <= 1e-13);
  }
  BOOST_TEST_MESSAGE(what << ": aux " << moe.stats().terms[0].second << ", z " << moe.stats().terms[1].second << ", expert counts "
                          << moe.plan.counts[0] << " " << moe.plan.counts[1] << " " << moe.plan.counts[2] << " "
                          << moe.plan.counts[3]);
  return run_layer(
      what, buf.reg, buf.p, buf.g, n * c, n * c, [&](const double* xx, double* yy) { moe.forward(xx, yy, n); },
      [&](const double* dy, double* dx, bool acc) { moe.backward(dy, dx, acc, 1.0); }, [&] { return moe.loss(); },
      [&] { return std::vector<std::int32_t>(moe.a_expert.begin(), moe.a_expert.end()); }, o, true, seed + 60, x);
}

}  // namespace

BOOST_AUTO_TEST_CASE(moe_swiglu_renormalised_k2) {
  check_moe<SwiGLU>("MoE<SwiGLU, TopK> renormalised, k = 2", moe_cfg(true, 2), 1);
}
BOOST_AUTO_TEST_CASE(moe_swiglu_unnormalised_k2) {
  check_moe<SwiGLU>("MoE<SwiGLU, TopK> unnormalised, k = 2", moe_cfg(false, 2), 2);
}
BOOST_AUTO_TEST_CASE(moe_swiglu_unnormalised_k1) {
  check_moe<SwiGLU>("MoE<SwiGLU, TopK> unnormalised, k = 1", moe_cfg(false, 1), 3);
}
BOOST_AUTO_TEST_CASE(moe_swiglu_renormalised_all_experts) {
  // k = E: every token uses every expert; the renormalised gates are the full softmax.
  check_moe<SwiGLU>("MoE<SwiGLU, TopK> renormalised, k = E = 4", moe_cfg(true, 4), 4);
}
BOOST_AUTO_TEST_CASE(moe_gelu_renormalised_k2) {
  check_moe<GeluFFN>("MoE<GeluFFN, TopK> renormalised, k = 2, tanh", moe_cfg(true, 2), 5);
}
BOOST_AUTO_TEST_CASE(moe_gelu_exact_unnormalised_k2) {
  auto cfg = moe_cfg(false, 2);
  cfg.gelu_exact = true;
  check_moe<GeluFFN>("MoE<GeluFFN, TopK> unnormalised, k = 2, exact", cfg, 6);
}

BOOST_AUTO_TEST_CASE(moe_with_an_idle_expert) {
  // Expert 3 receives no token (its router row points away from a shared input direction):
  // its gradients are exactly zero and the others are still right.
  Options o;
  o.allow_zero_grad = true;
  check_moe<SwiGLU>(
      "MoE<SwiGLU, TopK> with an idle expert", moe_cfg(true, 2), 7,
      [](Buffers& b, std::vector<double>& x) {
        const std::int64_t c = 32;
        double* wr = b.p.data() + b.reg.find("layers.0.moe.router.weight")->offset;
        for (std::int64_t e = 0; e < 4; ++e) wr[e * c] = e == 3 ? -2.0 : 2.0;
        for (std::size_t t = 0; t < x.size() / c; ++t) x[t * c] = 4.0 + 0.1 * x[t * c];
      },
      o);
}

BOOST_AUTO_TEST_CASE(moe_skips_steps_that_flip_a_tie) {
  // Token 0's logits for experts 1 and 2 are tied (router row 2 = row 1 + u with u ⟂ x₀)
  // and are its largest, k = 1: a ±ε step on x₀ or on those rows flips its choice, and the
  // check must skip exactly such elements (the loss has a kink there) and pass on the rest.
  // (The exact tie is broken by rounding, differently in the naive reference, so the forward
  // is not compared with it here.)
  Options o;
  o.max_skip_fraction = 0.02;
  const auto s = check_moe<SwiGLU>(
      "MoE<SwiGLU, TopK> with a tie at token 0", moe_cfg(false, 1), 9,
      [](Buffers& b, std::vector<double>& x) {
        const std::int64_t c = 32;
        double* wr = b.p.data() + b.reg.find("layers.0.moe.router.weight")->offset;
        const double* x0 = x.data();
        double xx = 0;
        for (std::int64_t j = 0; j < c; ++j) xx += x0[j] * x0[j];
        auto logit = [&](std::int64_t e) {
          double l = 0;
          for (std::int64_t j = 0; j < c; ++j) l += wr[e * c + j] * x0[j];
          return l;
        };
        // row 1 ← row 1 + a x₀/|x₀|² so that its logit is 3 above the others at token 0
        const double a = std::max({logit(0), logit(2), logit(3)}) + 3.0 - logit(1);
        for (std::int64_t j = 0; j < c; ++j) wr[c + j] += a * x0[j] / xx;
        const auto u0 = randn(c, 99);
        double ux = 0;
        for (std::int64_t j = 0; j < c; ++j) ux += u0[j] * x0[j];
        for (std::int64_t j = 0; j < c; ++j) wr[2 * c + j] = wr[c + j] + (u0[j] - ux / xx * x0[j]);
      },
      o, /*compare_reference=*/false);
  BOOST_TEST(s.skipped > 0);
}

BOOST_AUTO_TEST_CASE(moe_grad_scale_scales_only_the_balancing_terms) {
  // ∂/∂θ with grad_scale s is  ∂(Σ out ⊙ R)/∂θ + s · ∂(loss())/∂θ: linear in s, and equal at
  // s = 0 to the gradient of a layer whose balancing weights are zero; experts unaffected.
  const std::int64_t n = 24, c = 32;
  const auto cfg = moe_cfg(true, 2);
  auto cfg0 = cfg;
  cfg0.aux_loss_weight = cfg0.z_loss_weight = 0;
  Buffers buf;
  MoE<SwiGLU, TopK>::impl<double, Cpu> moe, moe0;
  moe.declare(buf.reg, "moe", cfg);
  buf.bind(moe, 8);
  ParamRegistry reg0;
  moe0.declare(reg0, "moe", cfg0);
  std::vector<double> g0w(buf.g.size());
  moe0.bind(reg0, buf.p.data(), g0w.data());
  const auto x = randn(n * c, 9), r = randn(n * c, 10);
  std::vector<double> y(n * c), dx(n * c);
  auto grads = [&](double s) {
    std::fill(buf.g.begin(), buf.g.end(), 0.0);
    moe.forward(x.data(), y.data(), n);
    moe.backward(r.data(), dx.data(), false, s);
    std::vector<double> all = buf.g;
    all.insert(all.end(), dx.begin(), dx.end());
    return all;
  };
  const auto g0 = grads(0.0), gh = grads(0.5), g1 = grads(1.0);
  moe0.forward(x.data(), y.data(), n);
  moe0.backward(r.data(), dx.data(), false, 1.0);
  auto gz = g0w;
  gz.insert(gz.end(), dx.begin(), dx.end());
  double scale = 0, lin = 0, zero = 0, diff = 0;
  for (std::size_t i = 0; i < g0.size(); ++i) {
    scale = std::max(scale, std::abs(g1[i]));
    lin = std::max(lin, std::abs(gh[i] - 0.5 * (g0[i] + g1[i])));
    zero = std::max(zero, std::abs(g0[i] - gz[i]));
    diff = std::max(diff, std::abs(g1[i] - g0[i]));
  }
  BOOST_TEST(lin <= 1e-13 * scale);
  BOOST_TEST(zero <= 1e-13 * scale);
  BOOST_TEST(diff > 1e-3 * scale);  // the balancing terms do contribute
  for (const ParamInfo& pi : buf.reg.params())
    if (pi.has(kTagExpert))
      for (std::int64_t j = 0; j < pi.numel(); ++j) BOOST_REQUIRE(g1[pi.offset + j] == g0[pi.offset + j]);
}
