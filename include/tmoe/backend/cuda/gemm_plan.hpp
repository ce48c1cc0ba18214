#pragma once
// How a row-major product becomes a cuBLAS call, on the host and without CUDA headers, so
// the mapping is tested in CI (tests/unit/test_cuda_gemm_plan.cpp) where no GPU exists.
//
// tmoe's matrices are row-major; cuBLAS's are column-major. A row-major (r, c) matrix with
// row stride ld is the column-major (c, r) matrix with leading dimension ld — its
// transpose. So C = op(A) op(B) (row-major, C is (m, n)) is, read column-major,
//   Cᵀ = op(B)ᵀ op(A)ᵀ,
// one cuBLAS call with the operands swapped: rows n, columns m, inner k, first operand B
// (transposed for cuBLAS exactly when tb says so), second operand A, leading dimensions
// unchanged.
//
// A grouped product (the experts of an MoE layer, each on its own token slice) becomes one
// list of such calls with the empty problems (m or n = 0) left out; a problem with k = 0
// only scales C by beta, which cuBLAS does not accept, so it is listed apart.
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "tmoe/backend/gemm_args.hpp"
#include "tmoe/core/error.hpp"

namespace tmoe::backend::cuda {

using Trans = backend::Trans;
template <class T>
using GemmArgs = backend::GemmArgs<T>;

// One column-major call: C(rows, cols) = alpha op1(X) op2(Y) + beta C.
template <class T>
struct ColumnMajorCall {
  bool trans_first = false, trans_second = false;  // cuBLAS op of the first / second operand
  std::int64_t rows = 0, cols = 0, inner = 0;
  const T* first = nullptr;
  std::int64_t ld_first = 0;
  const T* second = nullptr;
  std::int64_t ld_second = 0;
  T* c = nullptr;
  std::int64_t ldc = 0;
};

// Checks shapes and strides of a row-major product; the error names the bad field.
template <class T>
void check_gemm(const GemmArgs<T>& g, const char* where) {
  auto bad = [&](const std::string& what, const std::string& expected) { throw Error(what, where, expected); };
  if (g.m < 0 || g.n < 0 || g.k < 0)
    bad("negative size (m " + std::to_string(g.m) + ", n " + std::to_string(g.n) + ", k " + std::to_string(g.k) + ")",
        "m, n, k >= 0");
  const std::int64_t a_cols = g.ta == Trans::kNo ? g.k : g.m, b_cols = g.tb == Trans::kNo ? g.n : g.k;
  if (g.lda < a_cols) bad("lda " + std::to_string(g.lda) + " is below A's row length", ">= " + std::to_string(a_cols));
  if (g.ldb < b_cols) bad("ldb " + std::to_string(g.ldb) + " is below B's row length", ">= " + std::to_string(b_cols));
  if (g.ldc < g.n) bad("ldc " + std::to_string(g.ldc) + " is below C's row length", ">= " + std::to_string(g.n));
  constexpr std::int64_t kMax = std::numeric_limits<int>::max();
  if (g.m > kMax || g.n > kMax || g.k > kMax || g.lda > kMax || g.ldb > kMax || g.ldc > kMax)
    bad("a size or stride exceeds 2^31 - 1", "sizes cuBLAS's 32-bit interface takes");
}

template <class T>
ColumnMajorCall<T> column_major(const GemmArgs<T>& g) {
  ColumnMajorCall<T> c;
  c.trans_first = g.tb == Trans::kYes;
  c.trans_second = g.ta == Trans::kYes;
  c.rows = g.n;
  c.cols = g.m;
  c.inner = g.k;
  c.first = g.b;
  c.ld_first = g.ldb;
  c.second = g.a;
  c.ld_second = g.lda;
  c.c = g.c;
  c.ldc = g.ldc;
  return c;
}

// The calls of a grouped product: `calls` (non-empty, k > 0) in problem order, with
// `problem` the index of each in the caller's list; `scale_only` the problems with k = 0
// (C = beta C).
template <class T>
struct GroupedPlan {
  std::vector<ColumnMajorCall<T>> calls;
  std::vector<T> alpha, beta;
  std::vector<std::size_t> problem;
  std::vector<std::size_t> scale_only;
};

template <class T>
GroupedPlan<T> plan_grouped(std::span<const GemmArgs<T>> problems) {
  GroupedPlan<T> p;
  for (std::size_t i = 0; i < problems.size(); ++i) {
    const auto& g = problems[i];
    check_gemm(g, "tmoe::backend::cuda::gemm_grouped");
    if (g.m == 0 || g.n == 0) continue;
    if (g.k == 0) {
      p.scale_only.push_back(i);
      continue;
    }
    p.calls.push_back(column_major(g));
    p.alpha.push_back(g.alpha);
    p.beta.push_back(g.beta);
    p.problem.push_back(i);
  }
  return p;
}

}  // namespace tmoe::backend::cuda
