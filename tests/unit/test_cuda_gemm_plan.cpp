// The row-major -> cuBLAS column-major mapping of backend::Cuda's GEMMs, checked on the host
// (no GPU needed): a column-major reference product run on the mapped call must equal the
// row-major product for every transpose combination and padded strides; grouped plans skip
// empty problems and list k = 0 problems apart; bad shapes are errors naming the field.
#define BOOST_TEST_MODULE cuda_gemm_plan
#include <boost/test/unit_test.hpp>
#include <random>
#include <vector>

#include "tmoe/backend/cuda/gemm_plan.hpp"

using namespace tmoe::backend::cuda;

namespace {

// Row-major reference: C = alpha op(A) op(B) + beta C.
void row_major(const GemmArgs<double>& g) {
  for (std::int64_t i = 0; i < g.m; ++i)
    for (std::int64_t j = 0; j < g.n; ++j) {
      double s = 0;
      for (std::int64_t p = 0; p < g.k; ++p) {
        const double a = g.ta == Trans::kNo ? g.a[i * g.lda + p] : g.a[p * g.lda + i];
        const double b = g.tb == Trans::kNo ? g.b[p * g.ldb + j] : g.b[j * g.ldb + p];
        s += a * b;
      }
      g.c[i * g.ldc + j] = g.alpha * s + g.beta * g.c[i * g.ldc + j];
    }
}

// Column-major BLAS semantics: element (r, c) of X with leading dimension ld is X[r + c ld].
void column_major_ref(const ColumnMajorCall<double>& c, double alpha, double beta) {
  for (std::int64_t r = 0; r < c.rows; ++r)
    for (std::int64_t q = 0; q < c.cols; ++q) {
      double s = 0;
      for (std::int64_t p = 0; p < c.inner; ++p) {
        const double x = c.trans_first ? c.first[p + r * c.ld_first] : c.first[r + p * c.ld_first];
        const double y = c.trans_second ? c.second[q + p * c.ld_second] : c.second[p + q * c.ld_second];
        s += x * y;
      }
      c.c[r + q * c.ldc] = alpha * s + beta * c.c[r + q * c.ldc];
    }
}

std::vector<double> random(std::size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> d(-1, 1);
  std::vector<double> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

}  // namespace

BOOST_AUTO_TEST_CASE(mapping_matches_row_major_for_all_transposes) {
  const std::int64_t m = 5, n = 7, k = 3, pad = 2;
  for (Trans ta : {Trans::kNo, Trans::kYes})
    for (Trans tb : {Trans::kNo, Trans::kYes}) {
      GemmArgs<double> g;
      g.ta = ta, g.tb = tb, g.m = m, g.n = n, g.k = k, g.alpha = 0.75, g.beta = -0.5;
      g.lda = (ta == Trans::kNo ? k : m) + pad;
      g.ldb = (tb == Trans::kNo ? n : k) + pad;
      g.ldc = n + pad;
      const auto a = random(static_cast<std::size_t>((ta == Trans::kNo ? m : k) * g.lda), 1);
      const auto b = random(static_cast<std::size_t>((tb == Trans::kNo ? k : n) * g.ldb), 2);
      auto c_ref = random(static_cast<std::size_t>(m * g.ldc), 3);
      auto c_map = c_ref;
      g.a = a.data(), g.b = b.data(), g.c = c_ref.data();
      row_major(g);
      g.c = c_map.data();
      const auto call = column_major(g);
      BOOST_TEST(call.rows == n);
      BOOST_TEST(call.cols == m);
      column_major_ref(call, g.alpha, g.beta);
      for (std::size_t i = 0; i < c_ref.size(); ++i) BOOST_TEST(std::abs(c_map[i] - c_ref[i]) < 1e-13);
    }
}

BOOST_AUTO_TEST_CASE(grouped_plan_skips_empty_problems) {
  std::vector<double> buf(64, 1.0);
  std::vector<GemmArgs<double>> ps(5);
  const std::int64_t rows[] = {3, 0, 2, 4, 1};
  for (std::size_t i = 0; i < ps.size(); ++i) {
    auto& g = ps[i];
    g.m = rows[i], g.n = 2, g.k = i == 3 ? 0 : 2;
    g.lda = 2, g.ldb = 2, g.ldc = 2, g.a = buf.data(), g.b = buf.data(), g.c = buf.data();
    g.beta = 0.5;
  }
  const auto plan = plan_grouped<double>(ps);
  BOOST_TEST(plan.calls.size() == 3u);
  BOOST_TEST((plan.problem == std::vector<std::size_t>{0, 2, 4}));
  BOOST_TEST((plan.scale_only == std::vector<std::size_t>{3}));
  BOOST_TEST(plan.beta[1] == 0.5);
  BOOST_TEST(plan.calls[1].cols == 2);
}

BOOST_AUTO_TEST_CASE(bad_shapes_are_errors_naming_the_field) {
  GemmArgs<float> g;
  g.m = 4, g.n = 3, g.k = 2, g.lda = 1, g.ldb = 3, g.ldc = 3;
  try {
    check_gemm(g, "test");
    BOOST_FAIL("lda below the row length was accepted");
  } catch (const tmoe::Error& e) {
    BOOST_TEST(std::string(e.what()).find("lda 1") != std::string::npos);
  }
  g.lda = 2;
  g.m = -1;
  BOOST_CHECK_THROW(check_gemm(g, "test"), tmoe::Error);
  g.m = 4;
  g.ldc = 2;
  BOOST_CHECK_THROW(check_gemm(g, "test"), tmoe::Error);
  g.ldc = 3;
  g.k = std::int64_t(1) << 32;
  g.lda = g.k;
  g.ldb = 3;
  BOOST_CHECK_THROW(check_gemm(g, "test"), tmoe::Error);
}
