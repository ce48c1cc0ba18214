#define BOOST_TEST_MODULE layers_attention
// fp64 central-difference gradient checks (see test_layers_common.hpp) of
// CausalAttention<Rope> and CausalAttention<LearnedPositions> (the latter has no position
// table of its own: learned positions live in the embedding), with and without biases;
// the forward is also compared with a naive double reference of conventions.md.
#include <boost/test/unit_test.hpp>

#include "test_layers_common.hpp"

using namespace gc;

namespace {

// qkv = x Wqkvᵀ (+b); RoPE on q and k (position restarts at 0 in each sequence); per head
// causal softmax(q kᵀ/√hd) v; heads concatenated; out = y Woᵀ (+b).
std::vector<double> attention_ref(const ParamRegistry& r, const std::vector<double>& p, const std::string& name,
                                  const double* x, std::int64_t b, std::int64_t t, std::int64_t c, std::int64_t h,
                                  bool rope, double base) {
  auto w = [&](const std::string& s) {
    const ParamInfo* pi = r.find(name + s);
    return pi ? p.data() + pi->offset : nullptr;
  };
  const double *wq = w(".qkv.weight"), *bq = w(".qkv.bias"), *wo = w(".out.weight"), *bo = w(".out.bias");
  const std::int64_t n = b * t, hd = c / h;
  std::vector<double> qkv = linear_ref(x, wq, bq, n, c, 3 * c);
  std::vector<double> y(n * c);
  if (rope)
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t part = 0; part < 2; ++part)
        for (std::int64_t hi = 0; hi < h; ++hi) {
          double* v = &qkv[i * 3 * c + part * c + hi * hd];
          for (std::int64_t q = 0; q < hd / 2; ++q) {
            const double a = static_cast<double>(i % t) * std::pow(base, -2.0 * q / hd);
            const double x1 = v[q], x2 = v[q + hd / 2];
            v[q] = x1 * std::cos(a) - x2 * std::sin(a);
            v[q + hd / 2] = x2 * std::cos(a) + x1 * std::sin(a);
          }
        }
  for (std::int64_t bi = 0; bi < b; ++bi)
    for (std::int64_t hi = 0; hi < h; ++hi)
      for (std::int64_t i = 0; i < t; ++i) {
        std::vector<double> s(i + 1);
        double mx = -INFINITY, z = 0;
        for (std::int64_t j = 0; j <= i; ++j) {
          double d = 0;
          for (std::int64_t e = 0; e < hd; ++e)
            d += qkv[(bi * t + i) * 3 * c + hi * hd + e] * qkv[(bi * t + j) * 3 * c + c + hi * hd + e];
          s[j] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, s[j]);
        }
        for (std::int64_t j = 0; j <= i; ++j) z += (s[j] = std::exp(s[j] - mx));
        for (std::int64_t e = 0; e < hd; ++e) {
          double o = 0;
          for (std::int64_t j = 0; j <= i; ++j) o += s[j] / z * qkv[(bi * t + j) * 3 * c + 2 * c + hi * hd + e];
          y[(bi * t + i) * c + hi * hd + e] = o;
        }
      }
  return linear_ref(y.data(), wo, bo, n, c, c);
}

template <class Pos>
void check_attention(const char* what, bool bias, std::int64_t b, std::int64_t t, unsigned seed) {
  auto cfg = test::tiny_model();
  cfg.linear_bias = bias;
  const std::int64_t c = cfg.d_model, n = b * t;
  Buffers buf;
  typename CausalAttention<Pos>::template impl<double, Cpu> attn;
  attn.declare(buf.reg, "layers.0.attn", cfg);
  buf.bind(attn, seed);
  BOOST_TEST(buf.reg.size() == (bias ? 4 : 2));  // no position table in the attention layer
  const auto x = randn(n * c, seed + 50);
  std::vector<double> y(n * c);
  attn.forward(x.data(), y.data(), b, t);
  const auto ref = attention_ref(buf.reg, buf.p, "layers.0.attn", x.data(), b, t, c, cfg.n_heads, Pos::rotary,
                                 cfg.rope_base);
  const double e = max_abs_diff(y, ref);
  BOOST_TEST(e <= 1e-12, what << ": forward differs from the reference by " << e);
  run_layer(
      what, buf.reg, buf.p, buf.g, n * c, n * c,
      [&](const double* xx, double* yy) { attn.forward(xx, yy, b, t); },
      [&](const double* dy, double* dx, bool acc) { attn.backward(dy, dx, acc); }, [] { return 0.0; }, NoRoute{},
      Options{}, true, seed + 60);
}

}  // namespace

BOOST_AUTO_TEST_CASE(attention_rope) { check_attention<Rope>("CausalAttention<Rope>", false, 2, 12, 1); }
BOOST_AUTO_TEST_CASE(attention_rope_bias_long) {
  check_attention<Rope>("CausalAttention<Rope> with bias, T = 32", true, 1, 32, 2);
}
BOOST_AUTO_TEST_CASE(attention_rope_single_token) { check_attention<Rope>("CausalAttention<Rope>, T = 1", false, 3, 1, 3); }
BOOST_AUTO_TEST_CASE(attention_learned_positions) {
  check_attention<LearnedPositions>("CausalAttention<LearnedPositions>", false, 2, 12, 4);
}
BOOST_AUTO_TEST_CASE(attention_learned_positions_bias) {
  check_attention<LearnedPositions>("CausalAttention<LearnedPositions> with bias", true, 2, 9, 5);
}

BOOST_AUTO_TEST_CASE(attention_reshapes_between_calls) {
  // One layer used at (2, 12) and then (1, 7): the cached tables and buffers follow.
  auto cfg = test::tiny_model();
  Buffers buf;
  CausalAttention<Rope>::impl<double, Cpu> attn;
  attn.declare(buf.reg, "attn", cfg);
  buf.bind(attn, 6);
  const std::int64_t c = cfg.d_model;
  for (auto [b, t] : {std::pair<std::int64_t, std::int64_t>{2, 12}, {1, 7}, {2, 12}}) {
    const auto x = randn(b * t * c, 70 + t);
    std::vector<double> y(b * t * c);
    attn.forward(x.data(), y.data(), b, t);
    const auto ref = attention_ref(buf.reg, buf.p, "attn", x.data(), b, t, c, cfg.n_heads, true, cfg.rope_base);
    const double e = max_abs_diff(y, ref);
    BOOST_TEST(e <= 1e-12, "(" << b << ", " << t << "): " << e);
  }
}
