#define BOOST_TEST_MODULE layers_basic
// fp64 central-difference gradient checks (see test_layers_common.hpp) of Linear, RmsNorm,
// LayerNorm, the SwiGLU and GELU feed-forward experts and Dense<Expert>; each forward is
// also compared with a naive double reference.
#include <boost/test/unit_test.hpp>

#include "test_layers_common.hpp"

using namespace gc;

namespace {

const double* param(const ParamRegistry& r, const std::vector<double>& p, const std::string& name) {
  const ParamInfo* pi = r.find(name);
  BOOST_REQUIRE_MESSAGE(pi, "no parameter " << name);
  return p.data() + pi->offset;
}

// FFN references from the parameters in the registry: SwiGLU (silu(x W1ᵀ) ⊙ x W3ᵀ) W2ᵀ and
// GELU gelu(x W1ᵀ + b1) W2ᵀ + b2.
std::vector<double> ffn_ref(bool swiglu, bool exact, const ParamRegistry& r, const std::vector<double>& p,
                            const std::string& name, const double* x, std::int64_t n, std::int64_t c,
                            std::int64_t h, bool bias) {
  auto b = [&](const char* w) { return bias ? param(r, p, name + w + ".bias") : nullptr; };
  auto a1 = linear_ref(x, param(r, p, name + ".w1.weight"), b(".w1"), n, c, h);
  std::vector<double> hid(n * h);
  if (swiglu) {
    const auto a3 = linear_ref(x, param(r, p, name + ".w3.weight"), b(".w3"), n, c, h);
    for (std::int64_t i = 0; i < n * h; ++i) hid[i] = a1[i] / (1 + std::exp(-a1[i])) * a3[i];
  } else {
    for (std::int64_t i = 0; i < n * h; ++i) {
      const double u = a1[i];
      hid[i] = exact ? 0.5 * u * std::erfc(-u / std::sqrt(2.0))
                     : 0.5 * u * (1 + std::tanh(std::sqrt(2 / M_PI) * (u + 0.044715 * u * u * u)));
    }
  }
  return linear_ref(hid.data(), param(r, p, name + ".w2.weight"), b(".w2"), n, h, c);
}

}  // namespace

BOOST_AUTO_TEST_CASE(linear_with_and_without_bias) {
  for (bool bias : {false, true}) {
    const std::int64_t n = 10, in = 24, out = 16;
    Buffers b;
    layers::Linear<double, Cpu> lin;
    lin.declare(b.reg, "lin", in, out, bias, kTagFfn, 0.02);
    b.bind(lin, 1);
    const double* xs = nullptr;
    auto fwd = [&](const double* x, double* y) {
      xs = x;
      lin.forward(x, y, n);
    };
    auto bwd = [&](const double* dy, double* dx, bool acc) { lin.backward(xs, dy, dx, n, acc); };
    // forward value
    const auto x = randn(n * in, 3);
    std::vector<double> y(n * out);
    fwd(x.data(), y.data());
    const auto ref = linear_ref(x.data(), lin.weight.w, bias ? lin.bias.w : nullptr, n, in, out);
    BOOST_TEST(max_abs_diff(y.data(), ref) <= 1e-12);
    run_layer(bias ? "Linear with bias" : "Linear without bias", b.reg, b.p, b.g, n * in, n * out, fwd, bwd,
              [] { return 0.0; });
  }
}

BOOST_AUTO_TEST_CASE(linear_without_dx) {
  // dx = nullptr (the first layer): only the parameter gradients are produced.
  const std::int64_t n = 5, in = 8, out = 6;
  Buffers b;
  layers::Linear<double, Cpu> lin;
  lin.declare(b.reg, "lin", in, out, true, kTagFfn, 0.02);
  b.bind(lin, 2);
  const auto x = randn(n * in, 4), dy = randn(n * out, 5);
  std::vector<double> y(n * out);
  lin.forward(x.data(), y.data(), n);
  lin.backward(x.data(), dy.data(), nullptr, n, false);
  for (std::int64_t o = 0; o < out; ++o)
    for (std::int64_t j = 0; j < in; ++j) {
      double s = 0;
      for (std::int64_t i = 0; i < n; ++i) s += dy[i * out + o] * x[i * in + j];
      BOOST_TEST(std::abs(lin.weight.g[o * in + j] - s) <= 1e-12);
    }
}

namespace {
template <class Norm>
void check_norm(const char* what, unsigned seed) {
  const std::int64_t n = 10, c = 32;
  Buffers b;
  typename Norm::template impl<double, Cpu> nm;
  nm.declare(b.reg, "norm", c, 1e-5);
  b.bind(nm, seed);
  run_layer(
      what, b.reg, b.p, b.g, n * c, n * c, [&](const double* x, double* y) { nm.forward(x, y, n); },
      [&](const double* dy, double* dx, bool acc) { nm.backward(dy, dx, n, acc); }, [] { return 0.0; });
}
}  // namespace

BOOST_AUTO_TEST_CASE(rmsnorm_layer) { check_norm<RmsNorm>("RmsNorm", 3); }
BOOST_AUTO_TEST_CASE(layernorm_layer) { check_norm<LayerNorm>("LayerNorm", 4); }

namespace {
template <class E>
void check_expert(const char* what, bool bias, bool exact, unsigned seed) {
  const std::int64_t n = 12, c = 32, h = 24;
  Buffers b;
  typename E::template impl<double, Cpu> ffn;
  ffn.declare(b.reg, "ffn", ExpertShape{c, h, bias, kTagFfn, 0.02, 0.02, exact});
  b.bind(ffn, seed);
  const auto x = randn(n * c, seed + 100);
  std::vector<double> y(n * c);
  ffn.forward(x.data(), y.data(), n);
  const auto ref = ffn_ref(std::is_same_v<E, SwiGLU>, exact, b.reg, b.p, "ffn", x.data(), n, c, h, bias);
  BOOST_TEST(max_abs_diff(y.data(), ref) <= 1e-12, what << ": forward differs from the reference by " << max_abs_diff(y.data(), ref));
  run_layer(
      what, b.reg, b.p, b.g, n * c, n * c, [&](const double* xx, double* yy) { ffn.forward(xx, yy, n); },
      [&](const double* dy, double* dx, bool acc) { ffn.backward(dy, dx, acc); }, [] { return 0.0; });
}
}  // namespace

BOOST_AUTO_TEST_CASE(swiglu) { check_expert<SwiGLU>("SwiGLU", false, false, 5); }
BOOST_AUTO_TEST_CASE(swiglu_with_bias) { check_expert<SwiGLU>("SwiGLU with bias", true, false, 6); }
BOOST_AUTO_TEST_CASE(gelu_ffn_tanh) { check_expert<GeluFFN>("GeluFFN tanh", false, false, 7); }
BOOST_AUTO_TEST_CASE(gelu_ffn_exact_with_bias) { check_expert<GeluFFN>("GeluFFN exact with bias", true, true, 8); }
BOOST_AUTO_TEST_CASE(gelu_ffn_tanh_with_bias) { check_expert<GeluFFN>("GeluFFN tanh with bias", true, false, 9); }

namespace {
template <class E>
void check_dense(const char* what, bool bias, bool exact, unsigned seed) {
  auto cfg = test::tiny_model();
  cfg.linear_bias = bias;
  cfg.gelu_exact = exact;
  const std::int64_t n = 12, c = cfg.d_model;
  Buffers b;
  typename Dense<E>::template impl<double, Cpu> ffn;
  ffn.declare(b.reg, "layers.0.ffn", cfg);
  b.bind(ffn, seed);
  // names as conventions.md lists them
  BOOST_TEST(b.reg.find("layers.0.ffn.w1.weight") != nullptr);
  constexpr bool swiglu = std::is_same_v<E, SwiGLU>;
  BOOST_TEST((b.reg.find("layers.0.ffn.w3.weight") != nullptr) == swiglu);
  BOOST_TEST((b.reg.find("layers.0.ffn.w2.bias") != nullptr) == bias);
  const auto x = randn(n * c, seed + 100);
  std::vector<double> y(n * c);
  ffn.forward(x.data(), y.data(), n);
  const auto ref =
      ffn_ref(swiglu, exact, b.reg, b.p, "layers.0.ffn", x.data(), n, c, cfg.d_ff, bias);
  BOOST_TEST(max_abs_diff(y.data(), ref) <= 1e-12);
  BOOST_TEST(ffn.loss() == 0.0);
  run_layer(
      what, b.reg, b.p, b.g, n * c, n * c, [&](const double* xx, double* yy) { ffn.forward(xx, yy, n); },
      [&](const double* dy, double* dx, bool acc) { ffn.backward(dy, dx, acc, 1.0); }, [] { return 0.0; });
}
}  // namespace

BOOST_AUTO_TEST_CASE(dense_swiglu) { check_dense<SwiGLU>("Dense<SwiGLU>", false, false, 10); }
BOOST_AUTO_TEST_CASE(dense_swiglu_with_bias) { check_dense<SwiGLU>("Dense<SwiGLU> with bias", true, false, 11); }
BOOST_AUTO_TEST_CASE(dense_gelu_exact_with_bias) { check_dense<GeluFFN>("Dense<GeluFFN> exact, bias", true, true, 12); }
