#define BOOST_TEST_MODULE ops_attention
// backend::Cpu causal attention and RoPE against plain double references written from
// docs/conventions.md: qkv (B, T, 3C) with q = [0, C), k = [C, 2C), v = [2C, 3C), head h
// owning features [h·hd, (h+1)·hd) of each; scores q kᵀ/√hd, causal mask, softmax, att·v.
#include <boost/test/unit_test.hpp>
#include <tuple>

#include "test_ops_common.hpp"
#include "tmoe/backend/cpu/cpu.hpp"

using tmoe::backend::Cpu;
using namespace opstest;
using Types = std::tuple<float, double>;

namespace {

struct AttnRef {
  std::vector<double> att, out, dqkv;
};

// Naive causal softmax attention, one (batch, head, query) at a time; the backward by the
// chain rule through o_i = Σ_j p_ij v_j, p_i = softmax_j≤i(s_ij), s_ij = q_i·k_j / √hd.
AttnRef attn_ref(const std::vector<double>& qkv, const std::vector<double>& dout, std::int64_t b, std::int64_t t,
                 std::int64_t c, std::int64_t h) {
  const std::int64_t hd = c / h;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  AttnRef r;
  r.att.assign(b * h * t * t, 0.0);
  r.out.assign(b * t * c, 0.0);
  r.dqkv.assign(b * t * 3 * c, 0.0);
  auto q = [&](std::int64_t bi, std::int64_t i, std::int64_t hi, std::int64_t d) {
    return (bi * t + i) * 3 * c + hi * hd + d;
  };
  auto k = [&](std::int64_t bi, std::int64_t i, std::int64_t hi, std::int64_t d) { return q(bi, i, hi, d) + c; };
  auto v = [&](std::int64_t bi, std::int64_t i, std::int64_t hi, std::int64_t d) { return q(bi, i, hi, d) + 2 * c; };
  for (std::int64_t bi = 0; bi < b; ++bi)
    for (std::int64_t hi = 0; hi < h; ++hi)
      for (std::int64_t i = 0; i < t; ++i) {
        std::vector<double> s(i + 1), p(i + 1);
        double mx = -INFINITY;
        for (std::int64_t j = 0; j <= i; ++j) {
          double d = 0;
          for (std::int64_t e = 0; e < hd; ++e) d += qkv[q(bi, i, hi, e)] * qkv[k(bi, j, hi, e)];
          s[j] = d * scale;
          mx = std::max(mx, s[j]);
        }
        double z = 0;
        for (std::int64_t j = 0; j <= i; ++j) z += std::exp(s[j] - mx);
        for (std::int64_t j = 0; j <= i; ++j) {
          p[j] = std::exp(s[j] - mx) / z;
          r.att[((bi * h + hi) * t + i) * t + j] = p[j];
        }
        const double* go = &dout[(bi * t + i) * c + hi * hd];
        std::vector<double> dp(i + 1);
        for (std::int64_t e = 0; e < hd; ++e) {
          double o = 0;
          for (std::int64_t j = 0; j <= i; ++j) o += p[j] * qkv[v(bi, j, hi, e)];
          r.out[(bi * t + i) * c + hi * hd + e] = o;
        }
        double pdp = 0;
        for (std::int64_t j = 0; j <= i; ++j) {
          double d = 0;
          for (std::int64_t e = 0; e < hd; ++e) {
            d += go[e] * qkv[v(bi, j, hi, e)];
            r.dqkv[v(bi, j, hi, e)] += p[j] * go[e];
          }
          dp[j] = d;
          pdp += p[j] * d;
        }
        for (std::int64_t j = 0; j <= i; ++j) {
          const double ds = p[j] * (dp[j] - pdp) * scale;
          for (std::int64_t e = 0; e < hd; ++e) {
            r.dqkv[q(bi, i, hi, e)] += ds * qkv[k(bi, j, hi, e)];
            r.dqkv[k(bi, j, hi, e)] += ds * qkv[q(bi, i, hi, e)];
          }
        }
      }
  return r;
}

struct Shape4 {
  std::int64_t b, t, c, h;
};

}  // namespace

BOOST_AUTO_TEST_CASE_TEMPLATE(attention_forward_backward_match_reference, T, Types) {
  for (auto s : {Shape4{1, 1, 32, 4}, Shape4{2, 13, 32, 4}, Shape4{3, 32, 32, 2}, Shape4{1, 7, 16, 1}}) {
    const auto qkv = round_to<T>(randn(s.b * s.t * 3 * s.c, 100 + s.t, 1.2));
    const auto dout = round_to<T>(randn(s.b * s.t * s.c, 200 + s.t));
    const auto ref = attn_ref(qkv, dout, s.b, s.t, s.c, s.h);
    auto qkvt = as<T>(qkv), doutt = as<T>(dout);
    std::vector<T> att(s.b * s.h * s.t * s.t, T(5)), out(s.b * s.t * s.c, T(5)), dqkv(s.b * s.t * 3 * s.c, T(5));
    Cpu::attention_forward(qkvt.data(), att.data(), out.data(), s.b, s.t, s.c, s.h);
    BOOST_TEST(rel_err(att, ref.att) <= tol<T>(), "t=" << s.t << " att err " << rel_err(att, ref.att));
    BOOST_TEST(rel_err(out, ref.out) <= tol<T>(), "t=" << s.t << " out err " << rel_err(out, ref.out));
    // masked entries are exactly zero, and every row sums to one
    for (std::int64_t bh = 0; bh < s.b * s.h; ++bh)
      for (std::int64_t i = 0; i < s.t; ++i) {
        double sum = 0;
        for (std::int64_t j = 0; j < s.t; ++j) {
          const T p = att[(bh * s.t + i) * s.t + j];
          if (j > i) BOOST_REQUIRE(p == T(0));
          sum += p;
        }
        BOOST_REQUIRE(std::abs(sum - 1.0) <= 10 * tol<T>());
      }
    Cpu::attention_backward(doutt.data(), qkvt.data(), att.data(), dqkv.data(), s.b, s.t, s.c, s.h);
    BOOST_TEST(rel_err(dqkv, ref.dqkv) <= tol<T>(), "t=" << s.t << " dqkv err " << rel_err(dqkv, ref.dqkv));
  }
}

BOOST_AUTO_TEST_CASE(attention_backward_matches_central_differences) {
  // fp64: d/dqkv of L = Σ out ⊙ R, every element.
  const std::int64_t b = 2, t = 9, c = 16, h = 2;
  auto qkv = randn(b * t * 3 * c, 300, 1.2);
  const auto r = randn(b * t * c, 301);
  std::vector<double> att(b * h * t * t), out(b * t * c), dqkv(qkv.size());
  Cpu::attention_forward(qkv.data(), att.data(), out.data(), b, t, c, h);
  Cpu::attention_backward(r.data(), qkv.data(), att.data(), dqkv.data(), b, t, c, h);
  auto loss = [&] {
    Cpu::attention_forward(qkv.data(), att.data(), out.data(), b, t, c, h);
    double s = 0;
    for (std::size_t i = 0; i < out.size(); ++i) s += out[i] * r[i];
    return s;
  };
  const double eps = 1e-6;
  const std::vector<double> fd = central_differences(qkv, eps, loss);
  const double gmax = max_abs(dqkv);
  double worst = 0;
  for (std::size_t i = 0; i < qkv.size(); ++i) worst = std::max(worst, std::abs(fd[i] - dqkv[i]) / gmax);
  BOOST_TEST_MESSAGE("attention fd: worst error / max|grad| = " << worst);
  BOOST_TEST(worst <= 1e-7);
}

BOOST_AUTO_TEST_CASE(attention_sequence_does_not_depend_on_batch) {
  // Sequence 1 of a batch of 3 gives the same bits as the same sequence alone.
  const std::int64_t t = 11, c = 32, h = 4;
  auto qkv = randn(3 * t * 3 * c, 400);
  std::vector<double> att(3 * h * t * t), out(3 * t * c), att1(h * t * t), out1(t * c);
  Cpu::attention_forward(qkv.data(), att.data(), out.data(), 3, t, c, h);
  Cpu::attention_forward(qkv.data() + t * 3 * c, att1.data(), out1.data(), 1, t, c, h);
  for (std::int64_t i = 0; i < t * c; ++i) BOOST_REQUIRE(out1[i] == out[t * c + i]);
}

namespace {
// cos/sin table (T, hd/2) as the layer builds it: θ_i = base^(−2i/hd).
template <class T>
void rope_table(std::int64_t t, std::int64_t hd, double base, std::vector<T>& co, std::vector<T>& si) {
  const std::int64_t half = hd / 2;
  co.resize(t * half), si.resize(t * half);
  for (std::int64_t p = 0; p < t; ++p)
    for (std::int64_t i = 0; i < half; ++i) {
      const double a = p * std::pow(base, -2.0 * i / hd);
      co[p * half + i] = static_cast<T>(std::cos(a));
      si[p * half + i] = static_cast<T>(std::sin(a));
    }
}

// The formula of conventions.md applied to q and k of every token; v untouched.
std::vector<double> rope_ref(std::vector<double> qkv, std::int64_t b, std::int64_t t, std::int64_t c, std::int64_t h,
                             double base) {
  const std::int64_t hd = c / h, half = hd / 2;
  for (std::int64_t bi = 0; bi < b; ++bi)
    for (std::int64_t p = 0; p < t; ++p)
      for (std::int64_t part = 0; part < 2; ++part)
        for (std::int64_t hi = 0; hi < h; ++hi) {
          double* x = &qkv[(bi * t + p) * 3 * c + part * c + hi * hd];
          for (std::int64_t i = 0; i < half; ++i) {
            const double a = p * std::pow(base, -2.0 * i / hd);
            const double x1 = x[i], x2 = x[i + half];
            x[i] = x1 * std::cos(a) - x2 * std::sin(a);
            x[i + half] = x2 * std::cos(a) + x1 * std::sin(a);
          }
        }
  return qkv;
}
}  // namespace

BOOST_AUTO_TEST_CASE_TEMPLATE(rope_matches_formula_and_sign_minus_one_inverts, T, Types) {
  const std::int64_t b = 2, t = 23, c = 32, h = 4, hd = c / h;
  const double base = 10000.0;
  const auto x = round_to<T>(randn(b * t * 3 * c, 500));
  std::vector<T> co, si;
  rope_table<T>(t, hd, base, co, si);
  auto y = as<T>(x);
  Cpu::rope_apply(y.data(), co.data(), si.data(), b, t, c, h, T(1));
  const auto ref = rope_ref(x, b, t, c, h, base);
  BOOST_TEST(rel_err(y, ref) <= tol<T>(), "rope err " << rel_err(y, ref));
  // v is left bit-for-bit alone; position 0 is the identity.
  for (std::int64_t bt = 0; bt < b * t; ++bt)
    for (std::int64_t j = 0; j < c; ++j) {
      BOOST_REQUIRE(y[bt * 3 * c + 2 * c + j] == static_cast<T>(x[bt * 3 * c + 2 * c + j]));
      if (bt % t == 0) {
        BOOST_REQUIRE(y[bt * 3 * c + j] == static_cast<T>(x[bt * 3 * c + j]));
        BOOST_REQUIRE(y[bt * 3 * c + c + j] == static_cast<T>(x[bt * 3 * c + c + j]));
      }
    }
  // sign = −1 undoes it.
  Cpu::rope_apply(y.data(), co.data(), si.data(), b, t, c, h, T(-1));
  BOOST_TEST(rel_err(y, x) <= tol<T>(), "inverse err " << rel_err(y, x));
}

BOOST_AUTO_TEST_CASE(rope_inverse_is_the_adjoint_and_scores_depend_on_offset_only) {
  const std::int64_t b = 1, t = 16, c = 32, h = 4, hd = c / h;
  std::vector<double> co, si;
  rope_table<double>(t, hd, 10000.0, co, si);
  // <R x, y> = <x, R⁻¹ y>: rope_apply(−1) is the backward of rope_apply(+1).
  auto x = randn(b * t * 3 * c, 600), y = randn(b * t * 3 * c, 601);
  auto rx = x, riy = y;
  Cpu::rope_apply(rx.data(), co.data(), si.data(), b, t, c, h, 1.0);
  Cpu::rope_apply(riy.data(), co.data(), si.data(), b, t, c, h, -1.0);
  double a = 0, bb = 0;
  for (std::size_t i = 0; i < x.size(); ++i) a += rx[i] * y[i], bb += x[i] * riy[i];
  BOOST_TEST(std::abs(a - bb) <= 1e-12 * std::abs(a));
  // The same q and k at every position: q_m · k_n depends only on m − n.
  const auto qv = randn(hd, 602), kv = randn(hd, 603);
  std::vector<double> qkv(b * t * 3 * c, 0.0);
  for (std::int64_t p = 0; p < t; ++p)
    for (std::int64_t e = 0; e < hd; ++e) qkv[p * 3 * c + e] = qv[e], qkv[p * 3 * c + c + e] = kv[e];
  Cpu::rope_apply(qkv.data(), co.data(), si.data(), b, t, c, h, 1.0);
  auto dot = [&](std::int64_t m, std::int64_t n) {
    double s = 0;
    for (std::int64_t e = 0; e < hd; ++e) s += qkv[m * 3 * c + e] * qkv[n * 3 * c + c + e];
    return s;
  };
  for (std::int64_t off = 0; off < 5; ++off)
    for (std::int64_t n = 0; n + off + 3 < t; ++n)
      BOOST_TEST(std::abs(dot(n + off, n) - dot(n + off + 3, n + 3)) <= 1e-12 * (1 + std::abs(dot(n + off, n))));
}
