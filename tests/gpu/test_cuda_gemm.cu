// backend::Cuda's matrix products against a host double reference: every transpose
// combination with padded strides, fp32 (IEEE, no TF32) and bf16/fp16 with fp32
// accumulation; grouped products (one cuBLAS grouped call) against the same reference and
// the per-problem loop, with empty and k = 0 problems; outputs with beta = 0 poisoned
// first; repeated runs bitwise identical.
#define BOOST_TEST_MODULE cuda_gemm
#include "gpu_test.hpp"
#include "tmoe/backend/cuda/gemm.cuh"

namespace cu = tmoe::backend::cuda;
using cu::Trans;

namespace {

struct Problem {
  Trans ta, tb;
  std::int64_t m, n, k, pad;
  std::int64_t lda() const { return (ta == Trans::kNo ? k : m) + pad; }
  std::int64_t ldb() const { return (tb == Trans::kNo ? n : k) + pad; }
  std::int64_t ldc() const { return n + pad; }
  std::int64_t a_size() const { return (ta == Trans::kNo ? m : k) * lda(); }
  std::int64_t b_size() const { return (tb == Trans::kNo ? k : n) * ldb(); }
  std::int64_t c_size() const { return m * ldc(); }
};

// Host reference on the rounded inputs; C elements outside the (m, n) block untouched.
std::vector<double> reference(const Problem& p, const std::vector<double>& a, const std::vector<double>& b,
                              std::vector<double> c, double alpha, double beta) {
  for (std::int64_t i = 0; i < p.m; ++i)
    for (std::int64_t j = 0; j < p.n; ++j) {
      double s = 0;
      for (std::int64_t q = 0; q < p.k; ++q)
        s += (p.ta == Trans::kNo ? a[i * p.lda() + q] : a[q * p.lda() + i]) *
             (p.tb == Trans::kNo ? b[q * p.ldb() + j] : b[j * p.ldb() + q]);
      c[i * p.ldc() + j] = alpha * s + (beta == 0 ? 0.0 : beta * c[i * p.ldc() + j]);
    }
  return c;
}

// Only the (m, n) block of C, row by row.
std::vector<double> block(const Problem& p, const std::vector<double>& c) {
  std::vector<double> out;
  for (std::int64_t i = 0; i < p.m; ++i)
    for (std::int64_t j = 0; j < p.n; ++j) out.push_back(c[i * p.ldc() + j]);
  return out;
}

template <class T>
cu::GemmArgs<T> args(const Problem& p, const T* a, const T* b, T* c, float alpha, float beta) {
  cu::GemmArgs<T> g;
  g.ta = p.ta, g.tb = p.tb, g.m = p.m, g.n = p.n, g.k = p.k;
  g.alpha = cu::store<T>(alpha), g.beta = cu::store<T>(beta);
  g.a = a, g.b = b, g.c = c, g.lda = p.lda(), g.ldb = p.ldb(), g.ldc = p.ldc();
  return g;
}

template <class T>
void check_single(double tol) {
  for (Trans ta : {Trans::kNo, Trans::kYes})
    for (Trans tb : {Trans::kNo, Trans::kYes})
      for (float beta : {0.0f, 0.5f}) {
        const Problem p{ta, tb, 37, 29, 53, 3};
        const auto av = gpu_test::random_vector(p.a_size(), 1), bv = gpu_test::random_vector(p.b_size(), 2);
        const auto cv = gpu_test::random_vector(p.c_size(), 3);
        auto a = gpu_test::upload<T>(av), b = gpu_test::upload<T>(bv);
        auto c = beta == 0 ? gpu_test::poisoned<T>(p.c_size()) : gpu_test::upload<T>(cv);
        cu::GemmOps::gemm(args<T>(p, a.data(), b.data(), c.data(), 0.75f, beta));
        const auto ref = reference(p, gpu_test::rounded<T>(av), gpu_test::rounded<T>(bv), gpu_test::rounded<T>(cv), 0.75, beta);
        const auto got = gpu_test::fetch(c.data(), p.c_size());
        const double err = gpu_test::rel_error(block(p, got), block(p, ref));
        BOOST_TEST_MESSAGE(cu::Scalar<T>::name << " ta " << int(ta) << " tb " << int(tb) << " beta " << beta << ": " << err);
        BOOST_TEST(err < tol);
      }
}

}  // namespace

BOOST_AUTO_TEST_CASE(fp32_against_double_reference) { check_single<float>(1e-6); }
BOOST_AUTO_TEST_CASE(bf16_against_double_reference) { check_single<__nv_bfloat16>(1e-2); }
BOOST_AUTO_TEST_CASE(fp16_against_double_reference) { check_single<__half>(2e-3); }
BOOST_AUTO_TEST_CASE(fp64_against_double_reference) { check_single<double>(1e-14); }

BOOST_AUTO_TEST_CASE(convenience_form_packs_leading_dimensions) {
  const Problem p{Trans::kYes, Trans::kNo, 16, 8, 24, 0};
  const auto av = gpu_test::random_vector(p.a_size(), 4), bv = gpu_test::random_vector(p.b_size(), 5);
  auto a = gpu_test::upload<float>(av), b = gpu_test::upload<float>(bv);
  auto c = gpu_test::poisoned<float>(p.c_size());
  cu::GemmOps::gemm<float>(p.ta, p.tb, p.m, p.n, p.k, 1.0f, a.data(), b.data(), 0.0f, c.data());
  const auto ref = reference(p, gpu_test::rounded<float>(av), gpu_test::rounded<float>(bv),
                             std::vector<double>(p.c_size()), 1.0, 0.0);
  BOOST_TEST(gpu_test::rel_error(gpu_test::fetch(c.data(), p.c_size()), ref) < 1e-6);
}

template <class T>
void check_grouped(double tol) {
  // Experts with 13, 0, 1, 40 and 7 tokens; the fourth with k = 0 (scale only).
  const std::int64_t rows[] = {13, 0, 1, 40, 7};
  std::vector<Problem> ps;
  for (std::size_t i = 0; i < 5; ++i) ps.push_back({Trans::kNo, Trans::kYes, rows[i], 24, i == 3 ? 0 : 16, 0});
  std::vector<std::vector<float>> av, bv, cv;
  std::vector<cu::DeviceTensor<T>> a, b, c1, c2;
  std::vector<cu::GemmArgs<T>> g1, g2;
  for (std::size_t i = 0; i < ps.size(); ++i) {
    av.push_back(gpu_test::random_vector(std::max<std::int64_t>(1, ps[i].a_size()), 10 + i));
    bv.push_back(gpu_test::random_vector(std::max<std::int64_t>(1, ps[i].b_size()), 20 + i));
    cv.push_back(gpu_test::random_vector(std::max<std::int64_t>(1, ps[i].c_size()), 30 + i));
    a.push_back(gpu_test::upload<T>(av.back()));
    b.push_back(gpu_test::upload<T>(bv.back()));
    c1.push_back(gpu_test::upload<T>(cv.back()));
    c2.push_back(gpu_test::upload<T>(cv.back()));
    g1.push_back(args<T>(ps[i], a[i].data(), b[i].data(), c1[i].data(), 1.0f, 0.25f));
    g2.push_back(args<T>(ps[i], a[i].data(), b[i].data(), c2[i].data(), 1.0f, 0.25f));
  }
  cu::GemmOps::gemm_grouped<T>(g1);
  cu::GemmOps::gemm_grouped_loop<T>(g2);
  for (std::size_t i = 0; i < ps.size(); ++i) {
    if (ps[i].m == 0) continue;
    const auto ref = reference(ps[i], gpu_test::rounded<T>(av[i]), gpu_test::rounded<T>(bv[i]), gpu_test::rounded<T>(cv[i]), 1.0, 0.25);
    BOOST_TEST(gpu_test::rel_error(gpu_test::fetch(c1[i].data(), ps[i].c_size()), ref) < tol);
    BOOST_TEST(gpu_test::rel_error(gpu_test::fetch(c2[i].data(), ps[i].c_size()), ref) < tol);
  }
  // The same grouped call again: bitwise the same results.
  std::vector<std::vector<double>> first;
  for (int rep = 0; rep < 2; ++rep) {
    for (std::size_t i = 0; i < ps.size(); ++i) {
      auto c = gpu_test::upload<T>(cv[i]);
      cu::copy_on_device(c.data(), ps[i].c_size(), c1[i].data());
    }
    cu::GemmOps::gemm_grouped<T>(g1);
    std::vector<std::vector<double>> now;
    for (std::size_t i = 0; i < ps.size(); ++i) now.push_back(gpu_test::fetch(c1[i].data(), ps[i].c_size()));
    if (rep == 0) first = now;
    else BOOST_TEST((now == first));
  }
}

BOOST_AUTO_TEST_CASE(grouped_fp32) { check_grouped<float>(1e-6); }
BOOST_AUTO_TEST_CASE(grouped_bf16) { check_grouped<__nv_bfloat16>(1e-2); }
BOOST_AUTO_TEST_CASE(grouped_fp64_loop) { check_grouped<double>(1e-14); }

BOOST_AUTO_TEST_CASE(bad_shapes_are_errors) {
  cu::GemmArgs<float> g;
  g.m = 4, g.n = 4, g.k = 4, g.lda = 2, g.ldb = 4, g.ldc = 4;
  BOOST_CHECK_THROW(cu::GemmOps::gemm(g), tmoe::Error);
}
