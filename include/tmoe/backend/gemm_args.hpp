#pragma once
// One matrix product as every backend takes it: C (m, n) = beta C + alpha op(A) op(B),
// row-major, with leading dimensions (row strides in elements) and transpose flags.
// backend::Cpu runs it on Eigen maps, backend::Cuda maps it to a column-major cuBLAS call
// (backend/cuda/gemm_plan.hpp).
#include <cstdint>

namespace tmoe::backend {

enum class Trans { kNo, kYes };

template <class T>
struct GemmArgs {
  Trans ta = Trans::kNo, tb = Trans::kNo;
  std::int64_t m = 0, n = 0, k = 0;  // C is (m, n); op(A) is (m, k); op(B) is (k, n)
  T alpha = 1;
  const T* a = nullptr;
  std::int64_t lda = 0;
  const T* b = nullptr;
  std::int64_t ldb = 0;
  T beta = 0;
  T* c = nullptr;
  std::int64_t ldc = 0;
};

// The product with packed leading dimensions (the convenience form of B::gemm).
template <class T>
GemmArgs<T> packed_gemm(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a,
                        const T* b, T beta, T* c) {
  GemmArgs<T> g;
  g.ta = ta, g.tb = tb, g.m = m, g.n = n, g.k = k, g.alpha = alpha, g.a = a, g.b = b, g.beta = beta, g.c = c;
  g.lda = ta == Trans::kNo ? k : m;
  g.ldb = tb == Trans::kNo ? n : k;
  g.ldc = n;
  return g;
}

}  // namespace tmoe::backend
