#pragma once
// Matrix products on the CPU over Eigen maps, with results that depend neither on the
// thread count nor on how many other rows share the call (DESIGN.md principle 5):
//  - row-wise products (C = op(A) op(B) with A not transposed; the rows are tokens) run in
//    fixed 64-row tiles; a short last tile is padded to 64 rows, so Eigen always sees one
//    product shape and picks one blocking;
//  - reductions over rows (C = Aᵀ op(B): weight gradients, summed over tokens) split C into
//    fixed blocks and sum fixed chunks of kTokenChunk rows in order.
// Threads take whole tiles/blocks; Eigen's own threading is off (EIGEN_DONT_PARALLELIZE).
// All matrices are row-major; ld* are row strides in elements.
#ifndef EIGEN_DONT_PARALLELIZE
#define EIGEN_DONT_PARALLELIZE
#endif
#include <Eigen/Core>
#include <cstdint>
#include <span>
#include <vector>

#include "tmoe/backend/gemm_args.hpp"
#include "tmoe/core/threading.hpp"

namespace tmoe::backend::cpu {

using Trans = backend::Trans;
template <class T>
using GemmArgs = backend::GemmArgs<T>;

inline constexpr std::int64_t kRowTile = 64;      // rows of C per row-wise tile
inline constexpr std::int64_t kTokenChunk = 256;  // rows of A summed per step of a reduction
inline constexpr std::int64_t kBlockM = 128;      // C block of a reduction product
inline constexpr std::int64_t kBlockN = 128;

namespace detail {

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using CMap = Eigen::Map<const RowMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using MMap = Eigen::Map<RowMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

template <class T>
CMap<T> cmap(const T* p, std::int64_t r, std::int64_t c, std::int64_t ld) {
  return CMap<T>(p, r, c, Eigen::OuterStride<>(ld));
}
template <class T>
MMap<T> mmap(T* p, std::int64_t r, std::int64_t c, std::int64_t ld) {
  return MMap<T>(p, r, c, Eigen::OuterStride<>(ld));
}

// C(m,n) = beta C + alpha * A(m,k) op(B); Eigen sees the shapes it is given.
template <class T>
void eigen_rows(Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda,
                const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  auto C = mmap(c, m, n, ldc);
  if (beta == T(0)) C.setZero();
  else if (beta != T(1)) C *= beta;
  if (k == 0) return;
  auto A = cmap(a, m, k, lda);
  if (tb == Trans::kNo) C.noalias() += alpha * (A * cmap(b, k, n, ldb));
  else C.noalias() += alpha * (A * cmap(b, n, k, ldb).transpose());
}

template <class T>
void row_tile(const GemmArgs<T>& g, std::int64_t tile) {
  const std::int64_t r0 = tile * kRowTile, rows = std::min(kRowTile, g.m - r0);
  if (rows == kRowTile) {
    eigen_rows(g.tb, rows, g.n, g.k, g.alpha, g.a + r0 * g.lda, g.lda, g.b, g.ldb, g.beta, g.c + r0 * g.ldc, g.ldc);
    return;
  }
  // Short last tile: pad to kRowTile rows so the product has the same shape as a full one.
  thread_local std::vector<T> pa, pc;
  pa.assign(static_cast<std::size_t>(kRowTile * g.k), T(0));
  pc.assign(static_cast<std::size_t>(kRowTile * g.n), T(0));
  for (std::int64_t r = 0; r < rows; ++r) {
    std::copy_n(g.a + (r0 + r) * g.lda, g.k, pa.data() + r * g.k);
    if (g.beta != T(0))
      for (std::int64_t j = 0; j < g.n; ++j) pc[r * g.n + j] = g.c[(r0 + r) * g.ldc + j];
  }
  eigen_rows(g.tb, kRowTile, g.n, g.k, g.alpha, pa.data(), g.k, g.b, g.ldb, g.beta, pc.data(), g.n);
  for (std::int64_t r = 0; r < rows; ++r) std::copy_n(pc.data() + r * g.n, g.n, g.c + (r0 + r) * g.ldc);
}

// One (kBlockM x kBlockN) block of C = beta C + alpha Aᵀ op(B), A is (k, m): chunks of
// kTokenChunk rows are added in order.
template <class T>
void reduce_block(const GemmArgs<T>& g, std::int64_t bi, std::int64_t bj) {
  const std::int64_t i0 = bi * kBlockM, j0 = bj * kBlockN;
  const std::int64_t mb = std::min(kBlockM, g.m - i0), nb = std::min(kBlockN, g.n - j0);
  auto C = mmap(g.c + i0 * g.ldc + j0, mb, nb, g.ldc);
  if (g.beta == T(0)) C.setZero();
  else if (g.beta != T(1)) C *= g.beta;
  for (std::int64_t k0 = 0; k0 < g.k; k0 += kTokenChunk) {
    const std::int64_t kc = std::min(kTokenChunk, g.k - k0);
    auto At = cmap(g.a + k0 * g.lda + i0, kc, mb, g.lda).transpose();
    if (g.tb == Trans::kNo) C.noalias() += g.alpha * (At * cmap(g.b + k0 * g.ldb + j0, kc, nb, g.ldb));
    else C.noalias() += g.alpha * (At * cmap(g.b + j0 * g.ldb + k0, nb, kc, g.ldb).transpose());
  }
}

template <class T>
std::int64_t work_items(const GemmArgs<T>& g) {
  if (g.m == 0 || g.n == 0) return 0;
  if (g.ta == Trans::kNo) return (g.m + kRowTile - 1) / kRowTile;
  return ((g.m + kBlockM - 1) / kBlockM) * ((g.n + kBlockN - 1) / kBlockN);
}

template <class T>
void run_item(const GemmArgs<T>& g, std::int64_t item) {
  if (g.ta == Trans::kNo) return row_tile(g, item);
  const std::int64_t nbj = (g.n + kBlockN - 1) / kBlockN;
  reduce_block(g, item / nbj, item % nbj);
}

}  // namespace detail

struct GemmOps {
  // Several independent products in one parallel loop (a grouped GEMM: the experts of a
  // MoE layer, each over its own token slice).
  template <class T>
  static void gemm_grouped(std::span<const GemmArgs<T>> problems) {
    std::vector<std::int64_t> start(problems.size() + 1, 0);
    for (std::size_t p = 0; p < problems.size(); ++p) start[p + 1] = start[p] + detail::work_items(problems[p]);
    parallel_for(start.back(), [&](std::int64_t item) {
      const auto p = static_cast<std::size_t>(std::upper_bound(start.begin(), start.end(), item) - start.begin() - 1);
      detail::run_item(problems[p], item - start[p]);
    });
  }

  template <class T>
  static void gemm(const GemmArgs<T>& g) {
    gemm_grouped<T>(std::span<const GemmArgs<T>>(&g, 1));
  }

  // Convenience form: C = beta C + alpha op(A) op(B), row-major, packed leading dimensions.
  template <class T>
  static void gemm(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a,
                   const T* b, T beta, T* c) {
    gemm(packed_gemm(ta, tb, m, n, k, alpha, a, b, beta, c));
  }

  // A product whose result is never rounded to a narrow storage type (see
  // backend/stored.hpp); on a plain backend it is gemm.
  template <class T>
  static void gemm_exact(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a,
                         const T* b, T beta, T* c) {
    gemm(ta, tb, m, n, k, alpha, a, b, beta, c);
  }
};

}  // namespace tmoe::backend::cpu
