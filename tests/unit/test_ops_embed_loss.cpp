#define BOOST_TEST_MODULE ops_embed_loss
// backend::Cpu embedding (token + learned position tables) and fused softmax cross-entropy
// against plain double references, and the pointwise functors of layers/pointwise.hpp
// against closed forms written differently and central differences.
#include <boost/test/unit_test.hpp>
#include <tuple>

#include "test_ops_common.hpp"
#include "tmoe/backend/cpu/cpu.hpp"
#include "tmoe/layers/pointwise.hpp"

using tmoe::backend::Cpu;
using namespace opstest;
using Types = std::tuple<float, double>;

BOOST_AUTO_TEST_CASE_TEMPLATE(embedding_forward_backward_with_repeats_and_positions, T, Types) {
  // c = 40 spans two 32-column blocks of the backward; ids drawn from 5 of 10 rows, so most
  // rows repeat and some never occur.
  const std::int64_t b = 3, t = 7, n = b * t, c = 40, v = 10;
  auto ids = random_tokens(n, 5, 1);
  ids[0] = ids[1] = ids[t] = 3;  // a repeat within a sequence and across sequences
  const auto wte = round_to<T>(randn(v * c, 2)), wpe = round_to<T>(randn(t * c, 3));
  const auto dout = round_to<T>(randn(n * c, 4));
  const auto dwte0 = round_to<T>(randn(v * c, 5)), dwpe0 = round_to<T>(randn(t * c, 6));
  std::vector<double> ref_tok(n * c), ref_pos(n * c), ref_dwte = dwte0, ref_dwpe = dwpe0, ref_dwte_only = dwte0;
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < c; ++j) {
      ref_tok[i * c + j] = wte[ids[i] * c + j];
      ref_pos[i * c + j] = wte[ids[i] * c + j] + wpe[(i % t) * c + j];
      ref_dwte[ids[i] * c + j] += dout[i * c + j];
      ref_dwte_only[ids[i] * c + j] += dout[i * c + j];
      ref_dwpe[(i % t) * c + j] += dout[i * c + j];
    }
  auto wtet = as<T>(wte), wpet = as<T>(wpe), doutt = as<T>(dout);
  std::vector<T> out(n * c, T(9));
  Cpu::embedding_forward(ids.data(), wtet.data(), static_cast<const T*>(nullptr), out.data(), n, t, c);
  BOOST_TEST(rel_err(out, ref_tok) == 0.0);  // a copy
  Cpu::embedding_forward(ids.data(), wtet.data(), wpet.data(), out.data(), n, t, c);
  BOOST_TEST(rel_err(out, ref_pos) <= tol<T>());
  // backward accumulates into the tables
  auto dwte = as<T>(dwte0), dwpe = as<T>(dwpe0);
  Cpu::embedding_backward(ids.data(), doutt.data(), dwte.data(), dwpe.data(), n, t, c);
  BOOST_TEST(rel_err(dwte, ref_dwte) <= tol<T>(), "dwte err " << rel_err(dwte, ref_dwte));
  BOOST_TEST(rel_err(dwpe, ref_dwpe) <= tol<T>(), "dwpe err " << rel_err(dwpe, ref_dwpe));
  auto dwte2 = as<T>(dwte0);
  Cpu::embedding_backward(ids.data(), doutt.data(), dwte2.data(), static_cast<T*>(nullptr), n, t, c);
  BOOST_TEST(rel_err(dwte2, ref_dwte_only) <= tol<T>());
  // rows never used keep their gradient bit for bit
  for (std::int64_t r = 5; r < v; ++r)
    for (std::int64_t j = 0; j < c; ++j) BOOST_REQUIRE(dwte[r * c + j] == static_cast<T>(dwte0[r * c + j]));
}

namespace {
struct CeRef {
  std::vector<double> row, dlogits;
  double sum = 0;
};
CeRef ce_ref(const std::vector<double>& l, const std::vector<std::int32_t>& y, std::int64_t n, std::int64_t v,
             double scale) {
  CeRef r;
  r.row.resize(n), r.dlogits.resize(n * v);
  for (std::int64_t i = 0; i < n; ++i) {
    double mx = -INFINITY;
    for (std::int64_t j = 0; j < v; ++j) mx = std::max(mx, l[i * v + j]);
    double z = 0;
    for (std::int64_t j = 0; j < v; ++j) z += std::exp(l[i * v + j] - mx);
    const double lse = mx + std::log(z);
    r.row[i] = lse - l[i * v + y[i]];
    r.sum += r.row[i];
    for (std::int64_t j = 0; j < v; ++j)
      r.dlogits[i * v + j] = (std::exp(l[i * v + j] - lse) - (j == y[i] ? 1.0 : 0.0)) * scale;
  }
  return r;
}
}  // namespace

BOOST_AUTO_TEST_CASE_TEMPLATE(cross_entropy_forward_backward, T, Types) {
  // 300 rows (two reduction chunks); two rows shifted by ±1000 test the max subtraction.
  const std::int64_t n = 300, v = 50;
  auto lg = randn(n * v, 10, 3.0);
  for (std::int64_t j = 0; j < v; ++j) lg[5 * v + j] += 1000.0, lg[6 * v + j] -= 1000.0;
  const auto logits = round_to<T>(lg);
  const auto y = random_tokens(n, static_cast<std::int32_t>(v), 11);
  const double scale = 0.37;
  const auto ref = ce_ref(logits, y, n, v, scale);
  auto lt = as<T>(logits);
  std::vector<T> row(n);
  const double sum = Cpu::cross_entropy_forward(lt.data(), y.data(), row.data(), n, v);
  BOOST_TEST(rel_err(row, ref.row) <= tol<T>(), "row err " << rel_err(row, ref.row));
  BOOST_TEST(std::abs(sum - ref.sum) <= tol<T>() * ref.sum);
  std::vector<T> d(n * v);
  Cpu::cross_entropy_backward(lt.data(), y.data(), d.data(), n, v, scale);
  BOOST_TEST(rel_err(d, ref.dlogits) <= tol<T>(), "dlogits err " << rel_err(d, ref.dlogits));
  // in place (dlogits aliases logits)
  Cpu::cross_entropy_backward(lt.data(), y.data(), lt.data(), n, v, scale);
  BOOST_TEST(rel_err(lt, ref.dlogits) <= tol<T>());
  // each row of dlogits sums to zero
  for (std::int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (std::int64_t j = 0; j < v; ++j) s += d[i * v + j];
    BOOST_REQUIRE(std::abs(s) <= 10 * tol<T>());
  }
}

BOOST_AUTO_TEST_CASE(cross_entropy_backward_matches_central_differences) {
  const std::int64_t n = 4, v = 12;
  auto l = randn(n * v, 20, 2.0);
  const auto y = random_tokens(n, static_cast<std::int32_t>(v), 21);
  std::vector<double> row(n), d(n * v);
  Cpu::cross_entropy_backward(l.data(), y.data(), d.data(), n, v, 1.0);
  for (std::size_t i = 0; i < l.size(); ++i) {
    const double h = 1e-6, v0 = l[i];
    l[i] = v0 + h;
    const double lp = Cpu::cross_entropy_forward(l.data(), y.data(), row.data(), n, v);
    l[i] = v0 - h;
    const double lm = Cpu::cross_entropy_forward(l.data(), y.data(), row.data(), n, v);
    l[i] = v0;
    BOOST_TEST(std::abs((lp - lm) / (2 * h) - d[i]) <= 1e-8);
  }
}

// ---- pointwise functors ----------------------------------------------------------------

namespace {
double sig_exp(double z) { return 1.0 / (1.0 + std::exp(-z)); }
double sig_tanh(double z) { return 0.5 * (1.0 + std::tanh(0.5 * z)); }
// Closed forms written differently from pointwise.hpp.
constexpr double kK = 0.7978845608028654, kC = 0.044715;  // √(2/π), GELU tanh cubic
// 0.5 (1 + tanh u) = σ(2u)
double gelu_tanh_ref(double x) { return x * sig_exp(2 * kK * (x + kC * x * x * x)); }
double gelu_tanh_dref(double x) {
  const double s = sig_exp(2 * kK * (x + kC * x * x * x));
  return s + x * 2 * s * (1 - s) * kK * (1 + 3 * kC * x * x);
}
double gelu_erf_ref(double x) { return 0.5 * x * std::erfc(-x / std::sqrt(2.0)); }  // x Φ(x)
double gelu_erf_dref(double x) {
  return 0.5 * std::erfc(-x / std::sqrt(2.0)) + x * std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI);
}
double silu_ref(double x) { return x * sig_tanh(x); }
double silu_dref(double x) { return sig_tanh(x) + x * sig_tanh(x) * sig_tanh(-x); }

std::vector<double> grid() {
  std::vector<double> xs;
  for (int i = -800; i <= 800; ++i) xs.push_back(i * 0.01 + 0.001 * std::sin(i));  // [−8, 8], uneven
  for (double x : {0.0, 1e-8, -1e-8, 12.0, -12.0, 30.0, -30.0}) xs.push_back(x);
  return xs;
}

template <class F, class R, class DR>
void check_pointwise(const char* name, R ref, DR dref) {
  double e_f = 0, e_d = 0, e_fd = 0, e_float = 0, e_dfloat = 0;
  for (double x : grid()) {
    const double s = 1 + std::abs(x);  // values and derivatives are O(1 + |x|)
    e_f = std::max(e_f, std::abs(F::forward(x) - ref(x)) / s);
    e_d = std::max(e_d, std::abs(F::derivative(x) - dref(x)) / s);
    const double h = 1e-5;
    e_fd = std::max(e_fd, std::abs((F::forward(x + h) - F::forward(x - h)) / (2 * h) - F::derivative(x)) / s);
    const float xf = static_cast<float>(x);
    e_float = std::max(e_float, std::abs(F::forward(xf) - ref(static_cast<double>(xf))) / s);
    e_dfloat = std::max(e_dfloat, std::abs(F::derivative(xf) - dref(static_cast<double>(xf))) / s);
  }
  BOOST_TEST_MESSAGE(name << ": forward " << e_f << ", derivative " << e_d << ", fd " << e_fd << ", float "
                          << e_float << " / " << e_dfloat);
  BOOST_TEST(e_f <= 1e-14, name << " forward vs closed form " << e_f);
  BOOST_TEST(e_d <= 1e-14, name << " derivative vs closed form " << e_d);
  BOOST_TEST(e_fd <= 1e-8, name << " derivative vs central difference " << e_fd);
  BOOST_TEST(e_float <= 1e-5, name << " float forward " << e_float);
  BOOST_TEST(e_dfloat <= 1e-5, name << " float derivative " << e_dfloat);
  // far tails: f → x (+∞), 0 (−∞); f' → 1, 0; finite in float
  for (double x : {100.0, -100.0}) {
    const float xf = static_cast<float>(x);
    BOOST_TEST(std::isfinite(F::forward(xf)));
    BOOST_TEST(std::isfinite(F::derivative(xf)));
    BOOST_TEST(std::abs(F::forward(x) - (x > 0 ? x : 0.0)) <= 1e-12);
    BOOST_TEST(std::abs(F::derivative(x) - (x > 0 ? 1.0 : 0.0)) <= 1e-12);
  }
  BOOST_TEST(F::forward(0.0) == 0.0);
  BOOST_TEST(F::derivative(0.0) == 0.5, boost::test_tools::tolerance(1e-15));
}
}  // namespace

BOOST_AUTO_TEST_CASE(gelu_tanh) { check_pointwise<tmoe::layers::GeluTanh>("gelu_tanh", gelu_tanh_ref, gelu_tanh_dref); }
BOOST_AUTO_TEST_CASE(gelu_erf) { check_pointwise<tmoe::layers::GeluErf>("gelu_erf", gelu_erf_ref, gelu_erf_dref); }
BOOST_AUTO_TEST_CASE(silu) { check_pointwise<tmoe::layers::Silu>("silu", silu_ref, silu_dref); }

BOOST_AUTO_TEST_CASE(gelu_tanh_approximates_erf) {
  // The two GELUs differ by < 1e-3 everywhere (a known bound of the tanh approximation).
  for (double x : grid())
    BOOST_TEST(std::abs(tmoe::layers::GeluTanh::forward(x) - tmoe::layers::GeluErf::forward(x)) <= 1e-3);
}
