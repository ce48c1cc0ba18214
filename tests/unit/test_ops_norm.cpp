#define BOOST_TEST_MODULE ops_norm
// backend::Cpu RMSNorm, LayerNorm, reduce_rows and sum_squares against plain double
// references (float and double). The backward references are written as explicit
// Jacobian-vector products, a different form from the library's closed-form backward, and
// are themselves checked against central differences of the forward.
#include <boost/test/unit_test.hpp>
#include <tuple>

#include "test_ops_common.hpp"
#include "tmoe/backend/cpu/cpu.hpp"

using tmoe::backend::Cpu;
using namespace opstest;
using Types = std::tuple<float, double>;

namespace {

constexpr double kEps = 1e-5;

struct NormRef {
  std::vector<double> y, mean, rstd, dx, dw, db;
};

// y = x / sqrt(mean(x²) + eps) · w.  ∂y_j/∂x_k = w_j (δ_jk r − x_j x_k r³ / C).
NormRef rms_ref(const std::vector<double>& x, const std::vector<double>& w, const std::vector<double>& dy,
                std::int64_t n, std::int64_t c, double eps) {
  NormRef o;
  o.y.assign(n * c, 0), o.rstd.assign(n, 0), o.dx.assign(n * c, 0), o.dw.assign(c, 0);
  for (std::int64_t i = 0; i < n; ++i) {
    const double* xi = &x[i * c];
    double ss = 0;
    for (std::int64_t j = 0; j < c; ++j) ss += xi[j] * xi[j];
    const double r = 1.0 / std::sqrt(ss / c + eps);
    o.rstd[i] = r;
    for (std::int64_t j = 0; j < c; ++j) o.y[i * c + j] = xi[j] * r * w[j];
    for (std::int64_t k = 0; k < c; ++k) {
      double s = 0;
      for (std::int64_t j = 0; j < c; ++j)
        s += dy[i * c + j] * w[j] * ((j == k ? r : 0.0) - xi[j] * xi[k] * r * r * r / c);
      o.dx[i * c + k] = s;
    }
    for (std::int64_t j = 0; j < c; ++j) o.dw[j] += dy[i * c + j] * xi[j] * r;
  }
  return o;
}

// y = (x − μ) / sqrt(var + eps) · w + b (biased var).
// ∂y_j/∂x_k = w_j (r (δ_jk − 1/C) − r³ (x_j − μ)(x_k − μ) / C).
NormRef ln_ref(const std::vector<double>& x, const std::vector<double>& w, const std::vector<double>& b,
               const std::vector<double>& dy, std::int64_t n, std::int64_t c, double eps) {
  NormRef o;
  o.y.assign(n * c, 0), o.mean.assign(n, 0), o.rstd.assign(n, 0), o.dx.assign(n * c, 0);
  o.dw.assign(c, 0), o.db.assign(c, 0);
  for (std::int64_t i = 0; i < n; ++i) {
    const double* xi = &x[i * c];
    double mu = 0;
    for (std::int64_t j = 0; j < c; ++j) mu += xi[j];
    mu /= c;
    double var = 0;
    for (std::int64_t j = 0; j < c; ++j) var += (xi[j] - mu) * (xi[j] - mu);
    var /= c;
    const double r = 1.0 / std::sqrt(var + eps);
    o.mean[i] = mu, o.rstd[i] = r;
    for (std::int64_t j = 0; j < c; ++j) o.y[i * c + j] = (xi[j] - mu) * r * w[j] + b[j];
    for (std::int64_t k = 0; k < c; ++k) {
      double s = 0;
      for (std::int64_t j = 0; j < c; ++j)
        s += dy[i * c + j] * w[j] *
             (r * ((j == k ? 1.0 : 0.0) - 1.0 / c) - r * r * r * (xi[j] - mu) * (xi[k] - mu) / c);
      o.dx[i * c + k] = s;
    }
    for (std::int64_t j = 0; j < c; ++j) {
      o.dw[j] += dy[i * c + j] * (xi[j] - mu) * r;
      o.db[j] += dy[i * c + j];
    }
  }
  return o;
}

// Central differences of Σ dy ⊙ y(x) w.r.t. x, to check a reference's dx.
template <class F>
std::vector<double> fd_dx(std::vector<double> x, const std::vector<double>& dy, F&& fwd) {
  return central_differences(x, 1e-6, [&] {
    const auto y = fwd(x);
    double s = 0;
    for (std::size_t i = 0; i < y.size(); ++i) s += y[i] * dy[i];
    return s;
  });
}

}  // namespace

BOOST_AUTO_TEST_CASE(norm_references_match_central_differences) {
  const std::int64_t n = 3, c = 32;
  auto x = randn(n * c, 1, 1.3, 0.4), w = randn(c, 2, 0.2, 1.0), b = randn(c, 3, 0.3), dy = randn(n * c, 4);
  const auto rr = rms_ref(x, w, dy, n, c, kEps);
  const auto rfd = fd_dx(x, dy, [&](const std::vector<double>& xx) { return rms_ref(xx, w, dy, n, c, kEps).y; });
  BOOST_TEST(rel_err(rfd, rr.dx) <= 1e-8);
  const auto lr = ln_ref(x, w, b, dy, n, c, kEps);
  const auto lfd = fd_dx(x, dy, [&](const std::vector<double>& xx) { return ln_ref(xx, w, b, dy, n, c, kEps).y; });
  BOOST_TEST(rel_err(lfd, lr.dx) <= 1e-8);
}

BOOST_AUTO_TEST_CASE_TEMPLATE(rmsnorm_forward_backward, T, Types) {
  // 300 rows: more than one 16-row item of for_rows and more than one 256-row chunk of dw.
  for (auto [n, c] : {std::pair<std::int64_t, std::int64_t>{1, 32}, {37, 32}, {300, 48}}) {
    const auto x = round_to<T>(randn(n * c, 10 + n, 1.5, 0.3));
    const auto w = round_to<T>(randn(c, 11, 0.2, 1.0));
    const auto dy = round_to<T>(randn(n * c, 12 + n));
    const auto dw0 = round_to<T>(randn(c, 13));
    const auto dx0 = round_to<T>(randn(n * c, 14));
    const auto ref = rms_ref(x, w, dy, n, c, kEps);
    auto xt = as<T>(x), wt = as<T>(w), dyt = as<T>(dy);
    std::vector<T> y(n * c), rstd(n);
    Cpu::rmsnorm_forward(xt.data(), wt.data(), y.data(), rstd.data(), n, c, kEps);
    BOOST_TEST(rel_err(y, ref.y) <= tol<T>(), "n=" << n << " y err " << rel_err(y, ref.y));
    BOOST_TEST(rel_err(rstd, ref.rstd) <= tol<T>());
    // dx overwritten (whatever was there), dw accumulated.
    std::vector<T> dx(n * c, T(7)), dw = as<T>(dw0);
    Cpu::rmsnorm_backward(dyt.data(), xt.data(), wt.data(), rstd.data(), dx.data(), dw.data(), n, c, false);
    BOOST_TEST(rel_err(dx, ref.dx) <= tol<T>(), "n=" << n << " dx err " << rel_err(dx, ref.dx));
    BOOST_TEST(rel_err(dw, plus(dw0, ref.dw)) <= tol<T>(), "n=" << n << " dw err " << rel_err(dw, plus(dw0, ref.dw)));
    // accumulate_dx adds to what is there.
    std::vector<T> dxa = as<T>(dx0), dwa(c, T(0));
    Cpu::rmsnorm_backward(dyt.data(), xt.data(), wt.data(), rstd.data(), dxa.data(), dwa.data(), n, c, true);
    BOOST_TEST(rel_err(dxa, plus(dx0, ref.dx)) <= tol<T>());
    BOOST_TEST(rel_err(dwa, ref.dw) <= tol<T>());
  }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(layernorm_forward_backward, T, Types) {
  for (auto [n, c] : {std::pair<std::int64_t, std::int64_t>{1, 32}, {37, 32}, {300, 48}}) {
    const auto x = round_to<T>(randn(n * c, 20 + n, 1.5, 0.7));
    const auto w = round_to<T>(randn(c, 21, 0.2, 1.0));
    const auto b = round_to<T>(randn(c, 22, 0.3));
    const auto dy = round_to<T>(randn(n * c, 23 + n));
    const auto dw0 = round_to<T>(randn(c, 24)), db0 = round_to<T>(randn(c, 25));
    const auto dx0 = round_to<T>(randn(n * c, 26));
    const auto ref = ln_ref(x, w, b, dy, n, c, kEps);
    auto xt = as<T>(x), wt = as<T>(w), bt = as<T>(b), dyt = as<T>(dy);
    std::vector<T> y(n * c), mean(n), rstd(n);
    Cpu::layernorm_forward(xt.data(), wt.data(), bt.data(), y.data(), mean.data(), rstd.data(), n, c, kEps);
    BOOST_TEST(rel_err(y, ref.y) <= tol<T>(), "n=" << n << " y err " << rel_err(y, ref.y));
    BOOST_TEST(rel_err(mean, ref.mean) <= tol<T>());
    BOOST_TEST(rel_err(rstd, ref.rstd) <= tol<T>());
    std::vector<T> dx(n * c, T(-3)), dw = as<T>(dw0), db = as<T>(db0);
    Cpu::layernorm_backward(dyt.data(), xt.data(), wt.data(), mean.data(), rstd.data(), dx.data(), dw.data(),
                            db.data(), n, c, false);
    BOOST_TEST(rel_err(dx, ref.dx) <= tol<T>(), "n=" << n << " dx err " << rel_err(dx, ref.dx));
    BOOST_TEST(rel_err(dw, plus(dw0, ref.dw)) <= tol<T>());
    BOOST_TEST(rel_err(db, plus(db0, ref.db)) <= tol<T>());
    std::vector<T> dxa = as<T>(dx0), dwa(c, T(0)), dba(c, T(0));
    Cpu::layernorm_backward(dyt.data(), xt.data(), wt.data(), mean.data(), rstd.data(), dxa.data(), dwa.data(),
                            dba.data(), n, c, true);
    BOOST_TEST(rel_err(dxa, plus(dx0, ref.dx)) <= tol<T>());
    BOOST_TEST(rel_err(dwa, ref.dw) <= tol<T>());
    BOOST_TEST(rel_err(dba, ref.db) <= tol<T>());
  }
}

BOOST_AUTO_TEST_CASE(norms_of_constant_rows_are_finite) {
  // A constant row has zero variance: LayerNorm gives b and a finite gradient (eps keeps
  // the square root away from 0); RMSNorm of a zero row gives 0.
  const std::int64_t c = 32;
  std::vector<double> x(c, 2.5), w(c, 1.3), b(c, 0.25), dy = randn(c, 30), y(c), mean(1), rstd(1), dx(c), dw(c),
      db(c);
  Cpu::layernorm_forward(x.data(), w.data(), b.data(), y.data(), mean.data(), rstd.data(), 1, c, kEps);
  for (std::int64_t j = 0; j < c; ++j) BOOST_TEST(y[j] == 0.25, boost::test_tools::tolerance(1e-12));
  Cpu::layernorm_backward(dy.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(), dw.data(), db.data(), 1,
                          c, false);
  const auto ref = ln_ref(x, w, b, dy, 1, c, kEps);
  BOOST_TEST(rel_err(dx, ref.dx) <= 1e-12);
  std::vector<double> z(c, 0.0);
  Cpu::rmsnorm_forward(z.data(), w.data(), y.data(), rstd.data(), 1, c, kEps);
  for (std::int64_t j = 0; j < c; ++j) BOOST_TEST(y[j] == 0.0);
  BOOST_TEST(rstd[0] == 1.0 / std::sqrt(kEps), boost::test_tools::tolerance(1e-12));
}

BOOST_AUTO_TEST_CASE_TEMPLATE(reduce_rows_sums_over_chunks_and_accumulates, T, Types) {
  // 0, 1, one chunk exactly, a chunk plus one row, several chunks.
  const std::int64_t width = 3;
  for (std::int64_t rows : {0, 1, 255, 256, 257, 1000}) {
    const auto x = round_to<T>(randn(std::max<std::int64_t>(rows, 1) * width, 40 + rows));
    const auto out0 = round_to<T>(randn(width, 41));
    std::vector<double> ref = out0;
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = 0; j < width; ++j) ref[j] += x[r * width + j] * (j + 1.0) + 0.5;
    const auto xt = as<T>(x);
    auto out = as<T>(out0);
    Cpu::reduce_rows(rows, width, out.data(), [&](std::int64_t r, double* acc) {
      for (std::int64_t j = 0; j < width; ++j) acc[j] += static_cast<double>(xt[r * width + j]) * (j + 1.0) + 0.5;
    });
    BOOST_TEST(rel_err(out, ref) <= tol<T>(), "rows=" << rows << " err " << rel_err(out, ref));
  }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(sum_squares_in_double, T, Types) {
  for (std::int64_t n : {0, 1, 1000, 16384, 16385, 50000}) {
    const auto x = round_to<T>(randn(std::max<std::int64_t>(n, 1), 50 + n, 3.0));
    double ref = 0;
    for (std::int64_t i = 0; i < n; ++i) ref += x[i] * x[i];
    const auto xt = as<T>(x);
    const double s = Cpu::sum_squares(xt.data(), n);
    // Accumulated in double whatever T is, so the bound is double's for both.
    BOOST_TEST(std::abs(s - ref) <= 1e-12 * std::max(ref, 1e-300), "n=" << n << " got " << s << " ref " << ref);
    if (n == 0) BOOST_TEST(s == 0.0);
  }
}
