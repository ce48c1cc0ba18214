#define BOOST_TEST_MODULE transformer_expert
// TransformerExpert<Inner>: an expert made of `depth` pre-norm transformer layers over its
// routed rows, attention within each sequence's segment (moe/experts/transformer_expert.hpp).
//  - fp64 central-difference gradient checks (test_layers_common.hpp) of the input and every
//    parameter, with SwiGLU and GeluFFN inside;
//  - the forward against a naive double reference written here from the header's formulas;
//  - segments are independent, bitwise, and give the same rows alone as in a batch; results
//    do not depend on the thread count;
//  - parameter names, counts and weights(); bad shapes and bad segment calls end in
//    tmoe::Error; an expert with no rows.
#include <boost/test/unit_test.hpp>
#include <cstring>

#include "../support/expect_error.hpp"
#include "test_layers_common.hpp"
#include "tmoe/moe/experts/transformer_expert.hpp"

using namespace gc;

namespace {

static_assert(Expert<TransformerExpert<>>);
static_assert(Expert<TransformerExpert<GeluFFN>>);
static_assert(TransformerExpert<>::matrices == 5 && TransformerExpert<GeluFFN>::matrices == 4);
static_assert(TransformerExpert<>::sequence_aware);
static_assert(std::is_same_v<TransformerExpert<>::dense_equivalent, SwiGLU>);

template <class Inner = SwiGLU>
using Impl = typename TransformerExpert<Inner>::template impl<double, Cpu>;

ExpertShape tiny_shape(std::int64_t depth = 2) {
  ExpertShape s;
  s.d_model = 16;
  s.hidden = 16;
  s.tags = kTagExpert;
  s.depth = depth;
  s.heads = 2;         // head size 8: four RoPE frequencies
  s.norm_eps = 1e-5;
  s.rope_base = 50.0;  // small, so every frequency turns visibly over a few positions
  return s;
}

const std::vector<std::int64_t> kOffsets = {0, 5, 9, 12};  // segments of 5, 4, 3 rows

template <class E>
void run(E& e, const std::vector<std::int64_t>& off, const double* x, double* y) {
  e.set_segments(off.data(), static_cast<std::int64_t>(off.size()) - 1);
  e.forward(x, y, off.back());
}

// ---- the naive reference -------------------------------------------------------------

std::vector<double> rmsnorm_ref(const std::vector<double>& x, const double* w, std::int64_t n, std::int64_t c,
                                double eps) {
  std::vector<double> y(x.size());
  for (std::int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (std::int64_t j = 0; j < c; ++j) ss += x[i * c + j] * x[i * c + j];
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(c) + eps);
    for (std::int64_t j = 0; j < c; ++j) y[i * c + j] = x[i * c + j] * r * w[j];
  }
  return y;
}

// Rotate-halves RoPE of one head vector at position pos.
void rope_ref(double* v, std::int64_t hd, std::int64_t pos, double base) {
  const std::int64_t half = hd / 2;
  for (std::int64_t i = 0; i < half; ++i) {
    const double a = static_cast<double>(pos) * std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
    const double x1 = v[i], x2 = v[i + half];
    v[i] = x1 * std::cos(a) - x2 * std::sin(a);
    v[i + half] = x2 * std::cos(a) + x1 * std::sin(a);
  }
}

std::vector<double> reference(const ParamRegistry& r, const std::vector<double>& p, const std::string& name,
                              const ExpertShape& s, std::vector<double> x, const std::vector<std::int64_t>& off) {
  const std::int64_t n = off.back(), c = s.d_model, nh = s.heads, hd = c / nh, hid = s.hidden;
  auto w = [&](const std::string& suffix) {
    const ParamInfo* pi = r.find(name + suffix);
    BOOST_REQUIRE_MESSAGE(pi, "no parameter " << name + suffix);
    return p.data() + pi->offset;
  };
  for (std::int64_t l = 0; l < s.depth; ++l) {
    const std::string pre = ".layers." + std::to_string(l);
    const auto h1 = rmsnorm_ref(x, w(pre + ".attn_norm.weight"), n, c, s.norm_eps);
    auto qkv = linear_ref(h1.data(), w(pre + ".attn.qkv.weight"), nullptr, n, c, 3 * c);
    std::vector<double> ya(n * c, 0.0);
    for (std::size_t sg = 0; sg + 1 < off.size(); ++sg)
      for (std::int64_t hh = 0; hh < nh; ++hh) {
        const std::int64_t r0 = off[sg], r1 = off[sg + 1];
        for (std::int64_t t = r0; t < r1; ++t) {
          rope_ref(&qkv[t * 3 * c + hh * hd], hd, t - r0, s.rope_base);      // q
          rope_ref(&qkv[t * 3 * c + c + hh * hd], hd, t - r0, s.rope_base);  // k
        }
        for (std::int64_t t = r0; t < r1; ++t) {
          std::vector<double> sc;
          for (std::int64_t u = r0; u <= t; ++u) {
            double d = 0;
            for (std::int64_t i = 0; i < hd; ++i) d += qkv[t * 3 * c + hh * hd + i] * qkv[u * 3 * c + c + hh * hd + i];
            sc.push_back(d / std::sqrt(static_cast<double>(hd)));
          }
          const double mx = *std::max_element(sc.begin(), sc.end());
          double z = 0;
          for (double& v : sc) z += (v = std::exp(v - mx));
          for (std::int64_t u = r0; u <= t; ++u)
            for (std::int64_t i = 0; i < hd; ++i)
              ya[t * c + hh * hd + i] += sc[u - r0] / z * qkv[u * 3 * c + 2 * c + hh * hd + i];
        }
      }
    auto mid = linear_ref(ya.data(), w(pre + ".attn.out.weight"), nullptr, n, c, c);
    for (std::int64_t i = 0; i < n * c; ++i) mid[i] += x[i];
    const auto h2 = rmsnorm_ref(mid, w(pre + ".ffn_norm.weight"), n, c, s.norm_eps);
    const auto a1 = linear_ref(h2.data(), w(pre + ".ffn.w1.weight"), nullptr, n, c, hid);
    const auto a3 = linear_ref(h2.data(), w(pre + ".ffn.w3.weight"), nullptr, n, c, hid);
    std::vector<double> g(n * hid);
    for (std::int64_t i = 0; i < n * hid; ++i) g[i] = a1[i] / (1 + std::exp(-a1[i])) * a3[i];
    const auto f = linear_ref(g.data(), w(pre + ".ffn.w2.weight"), nullptr, n, hid, c);
    for (std::int64_t i = 0; i < n * c; ++i) x[i] = mid[i] + f[i];
  }
  return x;
}

template <class Inner>
void gradcheck(const char* what, const ExpertShape& s, const std::vector<std::int64_t>& off, unsigned seed) {
  Buffers buf;
  Impl<Inner> e;
  e.declare(buf.reg, "layers.0.moe.experts.1", s);
  buf.bind(e, seed);
  const std::int64_t numel = off.back() * s.d_model;
  run_layer(
      what, buf.reg, buf.p, buf.g, numel, numel, [&](const double* x, double* y) { run(e, off, x, y); },
      [&](const double* dy, double* dx, bool acc) { e.backward(dy, dx, acc); }, [] { return 0.0; }, NoRoute{},
      Options{}, true, seed + 10);
}

}  // namespace

BOOST_AUTO_TEST_CASE(gradients_swiglu_depth2) {
  gradcheck<SwiGLU>("TransformerExpert<SwiGLU>, depth 2, 2 heads, segments 5 4 3", tiny_shape(2), kOffsets, 1);
}

BOOST_AUTO_TEST_CASE(gradients_gelu_depth1_one_head_with_an_empty_segment) {
  auto s = tiny_shape(1);
  s.heads = 1;
  s.gelu_exact = true;
  gradcheck<GeluFFN>("TransformerExpert<GeluFFN>, depth 1, 1 head, segments 6 0 1 4", s, {0, 6, 6, 7, 11}, 2);
}

BOOST_AUTO_TEST_CASE(forward_matches_the_naive_reference) {
  const auto s = tiny_shape(2);
  Buffers buf;
  Impl<> e;
  e.declare(buf.reg, "x", s);
  buf.bind(e, 3);
  const auto x = randn(static_cast<std::size_t>(kOffsets.back() * s.d_model), 4);
  std::vector<double> y(x.size());
  run(e, kOffsets, x.data(), y.data());
  const auto ref = reference(buf.reg, buf.p, "x", s, x, kOffsets);
  const double err = max_abs_diff(y, ref);
  BOOST_TEST_MESSAGE("max |y - ref| = " << err << ", max |ref| = " << max_abs(ref));
  BOOST_TEST(err <= 1e-12);
  // A segment cut differently changes the result: attention really is per segment.
  const std::vector<std::int64_t> one = {0, 12};
  run(e, one, x.data(), y.data());
  BOOST_TEST(max_abs_diff(y, reference(buf.reg, buf.p, "x", s, x, one)) <= 1e-12);
  BOOST_TEST(max_abs_diff(y, ref) > 1e-3);
}

BOOST_AUTO_TEST_CASE(segments_are_independent_and_batch_invariant) {
  const auto s = tiny_shape(2);
  // Long segments too: more than one 64-row attention block, and row tiles that straddle
  // segment boundaries.
  for (const std::vector<std::int64_t>& off :
       {kOffsets, std::vector<std::int64_t>{0, 70, 73, 139}, std::vector<std::int64_t>{0, 1, 66, 67, 100}}) {
    Buffers buf;
    Impl<> e;
    e.declare(buf.reg, "x", s);
    buf.bind(e, 5);
    const std::int64_t c = s.d_model, n = off.back();
    const auto x = randn(static_cast<std::size_t>(n * c), 6), dy = randn(static_cast<std::size_t>(n * c), 7);
    std::vector<double> y(n * c), dx(n * c);
    run(e, off, x.data(), y.data());
    e.backward(dy.data(), dx.data(), false);
    for (std::size_t sg = 0; sg + 1 < off.size(); ++sg) {
      const std::int64_t r0 = off[sg], len = off[sg + 1] - r0;
      // alone, as the only segment: bitwise the same rows, forward and input gradient
      std::vector<double> ys(len * c), dxs(len * c);
      run(e, {0, len}, x.data() + r0 * c, ys.data());
      e.backward(dy.data() + r0 * c, dxs.data(), false);
      BOOST_TEST(std::memcmp(ys.data(), y.data() + r0 * c, ys.size() * sizeof(double)) == 0,
                 "segment " << sg << " alone: forward differs");
      BOOST_TEST(std::memcmp(dxs.data(), dx.data() + r0 * c, dxs.size() * sizeof(double)) == 0,
                 "segment " << sg << " alone: input gradient differs");
      // changing this segment's input changes only its own rows
      auto x2 = x;
      for (std::int64_t i = r0 * c; i < (r0 + len) * c; ++i) x2[i] += 0.5;
      std::vector<double> y2(n * c);
      run(e, off, x2.data(), y2.data());
      for (std::size_t o = 0; o + 1 < off.size(); ++o) {
        const std::size_t b = static_cast<std::size_t>(off[o] * c), m = static_cast<std::size_t>(off[o + 1] * c);
        const bool same = std::memcmp(y.data() + b, y2.data() + b, (m - b) * sizeof(double)) == 0;
        BOOST_TEST(same == (o != sg), "perturbing segment " << sg << ": segment " << o << (same ? " unchanged" : " changed"));
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(results_do_not_depend_on_the_thread_count) {
  const auto s = tiny_shape(2);
  const std::vector<std::int64_t> off = {0, 40, 41, 140, 200};
  const std::int64_t c = s.d_model, n = off.back();
  const auto x = randn(static_cast<std::size_t>(n * c), 8), dy = randn(static_cast<std::size_t>(n * c), 9);
  auto once = [&](int threads) {
    const int saved = thread_count_ref();
    set_threads(threads);
    Buffers buf;
    Impl<> e;
    e.declare(buf.reg, "x", s);
    buf.bind(e, 10);
    std::vector<double> y(n * c), dx(n * c);
    run(e, off, x.data(), y.data());
    e.backward(dy.data(), dx.data(), false);
    set_threads(saved);
    y.insert(y.end(), dx.begin(), dx.end());
    y.insert(y.end(), buf.g.begin(), buf.g.end());
    return y;
  };
  const auto a = once(1), b = once(2), d = once(3);
  BOOST_TEST(std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0);
  BOOST_TEST(std::memcmp(a.data(), d.data(), a.size() * sizeof(double)) == 0);
}

BOOST_AUTO_TEST_CASE(declares_the_documented_parameters) {
  for (std::int64_t depth : {1, 2}) {
    const auto s = tiny_shape(depth);
    const std::int64_t c = s.d_model, h = s.hidden;
    ParamRegistry r;
    Impl<> e;
    e.declare(r, "layers.3.moe.experts.2", s);
    std::vector<std::string> want;
    for (std::int64_t l = 0; l < depth; ++l) {
      const std::string p = "layers.3.moe.experts.2.layers." + std::to_string(l);
      for (const char* leaf : {".attn_norm.weight", ".attn.qkv.weight", ".attn.out.weight", ".ffn_norm.weight",
                               ".ffn.w1.weight", ".ffn.w3.weight", ".ffn.w2.weight"})
        want.push_back(p + leaf);
    }
    std::vector<std::string> got;
    for (const ParamInfo& pi : r.params()) got.push_back(pi.name);
    BOOST_TEST(got == want, boost::test_tools::per_element());
    const std::string p0 = "layers.3.moe.experts.2.layers.0";
    BOOST_TEST((r.find(p0 + ".attn.qkv.weight")->shape == Shape{3 * c, c}));
    BOOST_TEST((r.find(p0 + ".attn.out.weight")->shape == Shape{c, c}));
    BOOST_TEST(r.find(p0 + ".attn.qkv.weight")->tags == std::uint32_t{kTagExpert});
    BOOST_TEST(r.find(p0 + ".attn.out.weight")->init_std == s.out_std);
    BOOST_TEST(r.find(p0 + ".ffn.w1.weight")->tags == std::uint32_t{kTagExpert});
    BOOST_TEST(r.find(p0 + ".attn_norm.weight")->has(kTagNorm));
    BOOST_TEST(r.count() == depth * (4 * c * c + 3 * c * h + 2 * c));
    BOOST_TEST(Impl<>::weights(s) == depth * (4 * c * c + 3 * c * h));
    BOOST_TEST(Impl<GeluFFN>::weights(s) == depth * (4 * c * c + 2 * c * h));
  }
}

BOOST_AUTO_TEST_CASE(bad_shapes_and_segments_are_errors) {
  ParamRegistry r;
  auto declare = [&](ExpertShape s) {
    Impl<> e;
    e.declare(r, "bad", s);
  };
  auto s = tiny_shape();
  s.depth = 0;
  test::expect_error_at([&] { declare(s); }, "model.expert_depth", {"depth is 0"});
  s = tiny_shape();
  s.heads = 0;
  test::expect_error_at([&] { declare(s); }, "model.expert_heads", {"heads is 0"});
  s.heads = 3;
  test::expect_error_at([&] { declare(s); }, "model.expert_heads", {"not divisible", "16", "3"});
  s.d_model = 12;
  s.heads = 4;  // head size 3
  test::expect_error_at([&] { declare(s); }, "model.expert_heads", {"head size", "3", "odd"});

  Buffers buf;
  Impl<> e;
  e.declare(buf.reg, "layers.1.moe.experts.0", tiny_shape());
  buf.bind(e, 11);
  const auto x = randn(12 * 16, 12);
  std::vector<double> y(x.size());
  const std::string where = "layers.1.moe.experts.0 (TransformerExpert::forward)";
  test::expect_error_at([&] { e.forward(x.data(), y.data(), 12); }, where, {"without set_segments"});
  const std::vector<std::int64_t> short_off = {0, 5, 10};
  e.set_segments(short_off.data(), 2);
  test::expect_error_at([&] { e.forward(x.data(), y.data(), 12); }, where, {"cover 10 rows", "got 12"});
  run(e, kOffsets, x.data(), y.data());
  // set_segments is needed again before the next forward
  test::expect_error_at([&] { e.forward(x.data(), y.data(), 12); }, where, {"without set_segments"});
  const std::vector<std::int64_t> bad_start = {1, 12}, decreasing = {0, 7, 5, 12};
  const std::string where_set = "layers.1.moe.experts.0 (TransformerExpert::set_segments)";
  test::expect_error_at([&] { e.set_segments(bad_start.data(), 1); }, where_set, {"start at 1"});
  test::expect_error_at([&] { e.set_segments(decreasing.data(), 3); }, where_set, {"decrease at segment 1"});
}

BOOST_AUTO_TEST_CASE(no_rows) {
  Buffers buf;
  Impl<> e;
  e.declare(buf.reg, "x", tiny_shape());
  buf.bind(e, 13);
  const std::vector<std::int64_t> none = {0};
  double xin = 0, yout = 0, dy = 0, dx = 0;
  e.set_segments(none.data(), 0);
  e.forward(&xin, &yout, 0);
  e.backward(&dy, &dx, false);
  e.backward(&dy, nullptr, false);
  BOOST_TEST(max_abs(buf.g) == 0.0);
  // and a normal step afterwards still matches the reference
  const auto x = randn(12 * 16, 14);
  std::vector<double> y(x.size()), g(x.size());
  run(e, kOffsets, x.data(), y.data());
  BOOST_TEST(max_abs_diff(y, reference(buf.reg, buf.p, "x", tiny_shape(), x, kOffsets)) <= 1e-12);
  e.backward(x.data(), g.data(), false);
  BOOST_TEST(max_abs(buf.g) > 0.0);
}
