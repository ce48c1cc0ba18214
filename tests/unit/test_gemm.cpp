#define BOOST_TEST_MODULE gemm
#include <boost/test/unit_test.hpp>
#include <vector>

#include "../support/numeric.hpp"
#include "tmoe/backend/cpu/cpu.hpp"

using tmoe::backend::Cpu;
using tmoe::test::max_abs;
using tmoe::test::max_abs_diff;
using tmoe::test::randn;
using Trans = Cpu::Trans;

namespace {
// C = beta C + alpha op(A) op(B) in double, row-major.
std::vector<double> ref_gemm(Trans ta, Trans tb, long m, long n, long k, double alpha, const std::vector<double>& a,
                             const std::vector<double>& b, double beta, std::vector<double> c) {
  for (long i = 0; i < m; ++i)
    for (long j = 0; j < n; ++j) {
      double s = 0;
      for (long p = 0; p < k; ++p) {
        const double av = ta == Trans::kNo ? a[i * k + p] : a[p * m + i];
        const double bv = tb == Trans::kNo ? b[p * n + j] : b[j * k + p];
        s += av * bv;
      }
      c[i * n + j] = beta * c[i * n + j] + alpha * s;
    }
  return c;
}
}  // namespace

BOOST_AUTO_TEST_CASE(all_transpose_forms_match_double_reference) {
  for (Trans ta : {Trans::kNo, Trans::kYes})
    for (Trans tb : {Trans::kNo, Trans::kYes})
      for (auto [m, n, k] : {std::tuple{1L, 1L, 1L}, {70L, 33L, 300L}, {129L, 130L, 5L}, {300L, 17L, 513L}}) {
        auto a = randn<double>(m * k, 1), b = randn<double>(k * n, 2), c0 = randn<double>(m * n, 3);
        for (double beta : {0.0, 1.0, 0.5}) {
          auto ref = ref_gemm(ta, tb, m, n, k, 0.75, a, b, beta, c0);
          auto c = c0;
          Cpu::gemm<double>(ta, tb, m, n, k, 0.75, a.data(), b.data(), beta, c.data());
          const double err = max_abs_diff(c, ref), nrm = max_abs(ref);
          BOOST_TEST(err <= 1e-12 * (1 + nrm), "ta=" << int(ta) << " tb=" << int(tb) << " m=" << m << " err=" << err);
          // float path against the same reference, within float rounding
          std::vector<float> af(a.begin(), a.end()), bf(b.begin(), b.end()), cf(c0.begin(), c0.end());
          Cpu::gemm<float>(ta, tb, m, n, k, 0.75f, af.data(), bf.data(), static_cast<float>(beta), cf.data());
          const double errf = max_abs_diff(cf, ref);
          BOOST_TEST(errf <= 2e-5 * std::sqrt(double(k)) * (1 + nrm));
        }
      }
}

BOOST_AUTO_TEST_CASE(row_does_not_depend_on_rows_around_it) {
  const long n = 96, k = 200;
  auto b = randn<float>(n * k, 7);
  auto big = randn<float>(1001 * k, 8);
  std::vector<float> c_big(1001 * n), c_small(5 * n);
  Cpu::gemm<float>(Trans::kNo, Trans::kYes, 1001, n, k, 1.f, big.data(), b.data(), 0.f, c_big.data());
  // rows 643..647 alone: positions 3..7 of tile 10 in the big call, 0..4 of a padded tile here
  Cpu::gemm<float>(Trans::kNo, Trans::kYes, 5, n, k, 1.f, big.data() + 643 * k, b.data(), 0.f, c_small.data());
  for (long i = 0; i < 5 * n; ++i) BOOST_REQUIRE_EQUAL(c_small[i], c_big[643 * n + i]);
}

BOOST_AUTO_TEST_CASE(results_do_not_depend_on_thread_count) {
  const long m = 700, n = 300, k = 333;
  auto a = randn<float>(m * k, 11), b = randn<float>(k * n, 12);
  std::vector<float> c1(m * n), c2(m * n), g1(k * n), g2(k * n);
  tmoe::set_threads(1);
  Cpu::gemm<float>(Trans::kNo, Trans::kNo, m, n, k, 1.f, a.data(), b.data(), 0.f, c1.data());
  Cpu::gemm<float>(Trans::kYes, Trans::kNo, k, n, m, 1.f, a.data(), c1.data(), 0.f, g1.data());
  tmoe::set_threads(2);
  Cpu::gemm<float>(Trans::kNo, Trans::kNo, m, n, k, 1.f, a.data(), b.data(), 0.f, c2.data());
  Cpu::gemm<float>(Trans::kYes, Trans::kNo, k, n, m, 1.f, a.data(), c2.data(), 0.f, g2.data());
  BOOST_TEST(c1 == c2);
  BOOST_TEST(g1 == g2);
}
