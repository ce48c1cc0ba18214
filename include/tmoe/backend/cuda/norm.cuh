#pragma once
// RMSNorm and LayerNorm on the device, the same math as cpu/norm.hpp (sums over a row in
// double; eps inside the square root; biased variance):
//   RMSNorm:   y = x / sqrt(mean(x²) + eps) * w
//   LayerNorm: y = (x - mean) / sqrt(var + eps) * w + b
// One block of kRowThreads threads per row: each thread sums its strided columns in order,
// then a shared-memory tree adds the partials in a fixed order, so a row's result does not
// depend on scheduling. dw and db are sums over rows done without atomics: the rows are cut
// into fixed chunks of kChunkRows (as cpu::kTokenChunk); one thread per (chunk, column)
// sums its chunk in row order into a double partial, and a second kernel adds the chunk
// partials in chunk order to dw — the CPU's order exactly.
//
// Also home of blockwise::, the block reductions and the column reduction the other row
// ops use (loss.cuh).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "tmoe/backend/cuda/check.hpp"
#include "tmoe/backend/cuda/context.hpp"
#include "tmoe/backend/cuda/tensor.hpp"
#include "tmoe/backend/cuda/types.hpp"
#include "tmoe/core/error.hpp"

namespace tmoe::backend::cuda {

// Block and column reductions in a fixed order, shared by the row ops (norm, loss).
namespace blockwise {

inline constexpr int kRowThreads = 256;             // threads of a row block; a power of two
inline constexpr std::int64_t kChunkRows = 256;     // rows per partial of a column reduction
inline constexpr int kColumnThreads = 256;          // columns per block of a column reduction

struct SumOp {
  template <class V>
  __device__ V operator()(V a, V b) const { return a + b; }
};
struct MaxOp {  // std::max's rule: a NaN in b is skipped, as in the CPU loop
  template <class V>
  __device__ V operator()(V a, V b) const { return a < b ? b : a; }
};

// Reduces one value per thread of a kRowThreads block with `op`, by a tree in a fixed order;
// every thread returns the result. `smem` holds kRowThreads values; tid is the thread's index.
template <class V, class Op>
__device__ V block_reduce(V v, V* smem, int tid, Op op) {
  smem[tid] = v;
  __syncthreads();
  for (int s = kRowThreads / 2; s > 0; s >>= 1) {
    if (tid < s) smem[tid] = op(smem[tid], smem[tid + s]);
    __syncthreads();
  }
  const V r = smem[0];
  __syncthreads();  // smem may be reused right away
  return r;
}

// partial[chunk * c + j] = Σ_{rows r of chunk, in order} term(r, j)
template <class Term>
__global__ void column_partials_kernel(Term term, std::int64_t n, std::int64_t c, double* partial) {
  const std::int64_t chunk = blockIdx.x;
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (j >= c) return;
  const std::int64_t r0 = chunk * kChunkRows, r1 = r0 + kChunkRows < n ? r0 + kChunkRows : n;
  double acc = 0;
  for (std::int64_t r = r0; r < r1; ++r) acc += term(r, j);
  partial[chunk * c + j] = acc;
}

// out[j] += Σ_{chunks, in order} partial[chunk * c + j]
template <class T>
__global__ void add_column_partials_kernel(const double* partial, std::int64_t chunks, std::int64_t c, T* out) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= c) return;
  double s = 0;
  for (std::int64_t k = 0; k < chunks; ++k) s += partial[k * c + j];
  out[j] = store<T>(static_cast<compute_t<T>>(static_cast<double>(load(out[j])) + s));
}

// out[0..c) += Σ_rows term(row, j), deterministic (see the file comment).
template <class T, class Term>
void reduce_columns(std::int64_t n, std::int64_t c, T* out, const Term& term) {
  if (n <= 0 || c <= 0) return;
  const std::int64_t chunks = (n + kChunkRows - 1) / kChunkRows;
  const std::int64_t col_blocks = (c + kColumnThreads - 1) / kColumnThreads;
  TMOE_CHECK(col_blocks <= 65535, "tmoe::backend::cuda::reduce_columns", "row width " + std::to_string(c) + " is too wide",
             "at most " + std::to_string(65535LL * kColumnThreads) + " columns");
  TMOE_CHECK(chunks <= 0x7fffffffLL, "tmoe::backend::cuda::reduce_columns", "too many rows: " + std::to_string(n),
             "fewer than 2^31 chunks of rows");
  auto& ctx = Context::current();
  DeviceTensor<double> partial;
  partial.ensure(Shape{chunks * c});
  // The block goes back to the allocator on return; the next user is ordered after these
  // kernels by the stream.
  column_partials_kernel<<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(col_blocks)), kColumnThreads, 0,
                           ctx.stream()>>>(term, n, c, partial.data());
  TMOE_CUDA_CHECK_LAUNCH();
  add_column_partials_kernel<<<static_cast<unsigned>(col_blocks), kColumnThreads, 0, ctx.stream()>>>(partial.data(), chunks,
                                                                                                   c, out);
  TMOE_CUDA_CHECK_LAUNCH();
}

// One block per row: gridDim.x = rows (< 2^31).
inline void check_rows(std::int64_t n, const char* where) {
  TMOE_CHECK(n <= 0x7fffffffLL, where, "too many rows: " + std::to_string(n), "fewer than 2^31 rows");
}

}  // namespace blockwise

namespace detail {

// ---- RMSNorm ----

template <class T>
__global__ void rmsnorm_forward_kernel(const T* x, const T* w, T* y, T* rstd, std::int64_t c, double eps) {
  using C = compute_t<T>;
  __shared__ double smem[blockwise::kRowThreads];
  const int tid = threadIdx.x;
  const std::int64_t i = blockIdx.x;
  const T* xi = x + i * c;
  double ss = 0;
  for (std::int64_t j = tid; j < c; j += blockwise::kRowThreads) {
    const double v = static_cast<double>(load(xi[j]));
    ss += v * v;
  }
  ss = blockwise::block_reduce(ss, smem, tid, blockwise::SumOp{});
  // The stored (rounded) rstd scales y, as on the CPU, so the backward sees the forward's r.
  const T rt = store<T>(static_cast<C>(1.0 / sqrt(ss / static_cast<double>(c) + eps)));
  const C r = load(rt);
  if (tid == 0) rstd[i] = rt;
  for (std::int64_t j = tid; j < c; j += blockwise::kRowThreads) y[i * c + j] = store<T>(load(xi[j]) * r * load(w[j]));
}

template <class T>
__global__ void rmsnorm_backward_dx_kernel(const T* dy, const T* x, const T* w, const T* rstd, T* dx, std::int64_t c,
                                           bool accumulate_dx) {
  using C = compute_t<T>;
  __shared__ double smem[blockwise::kRowThreads];
  const int tid = threadIdx.x;
  const std::int64_t i = blockIdx.x;
  const T* xi = x + i * c;
  const T* dyi = dy + i * c;
  const double r = static_cast<double>(load(rstd[i]));
  double dot = 0;  // Σ_j (dy w)_j x̂_j
  for (std::int64_t j = tid; j < c; j += blockwise::kRowThreads)
    dot += static_cast<double>(load(dyi[j])) * static_cast<double>(load(w[j])) * static_cast<double>(load(xi[j])) * r;
  dot = blockwise::block_reduce(dot, smem, tid, blockwise::SumOp{});
  const double m = dot / static_cast<double>(c);
  for (std::int64_t j = tid; j < c; j += blockwise::kRowThreads) {
    const double g = r * (static_cast<double>(load(dyi[j])) * static_cast<double>(load(w[j])) -
                          static_cast<double>(load(xi[j])) * r * m);
    T* d = dx + i * c + j;
    *d = store<T>(static_cast<C>(accumulate_dx ? static_cast<double>(load(*d)) + g : g));
  }
}

template <class T>
struct RmsDwTerm {  // dy ⊙ x̂
  const T *dy, *x, *rstd;
  std::int64_t c;
  __device__ double operator()(std::int64_t r, std::int64_t j) const {
    return static_cast<double>(load(dy[r * c + j])) * static_cast<double>(load(x[r * c + j])) *
           static_cast<double>(load(rstd[r]));
  }
};

// ---- LayerNorm ----

template <class T>
__global__ void layernorm_forward_kernel(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, std::int64_t c,
                                         double eps) {
  using C = compute_t<T>;
  __shared__ double smem[blockwise::kRowThreads];
  const int tid = threadIdx.x;
  const std::int64_t i = blockIdx.x;
  const T* xi = x + i * c;
  double s = 0;
  for (std::int64_t j = tid; j < c; j += blockwise::kRowThreads) s += static_cast<double>(load(xi[j]));
  s = blockwise::block_reduce(s, smem, tid, blockwise::SumOp{});
  const double mu = s / static_cast<double>(c);
  double v = 0;
  for (std::int64_t j = tid; j < c; j += blockwise::kRowThreads) {
    const double d = static_cast<double>(load(xi[j])) - mu;
    v += d * d;
  }
  v = blockwise::block_reduce(v, smem, tid, blockwise::SumOp{});
  const double r = 1.0 / sqrt(v / static_cast<double>(c) + eps);
  if (tid == 0) {
    mean[i] = store<T>(static_cast<C>(mu));
    rstd[i] = store<T>(static_cast<C>(r));
  }
  for (std::int64_t j = tid; j < c; j += blockwise::kRowThreads)
    y[i * c + j] = store<T>(static_cast<C>((static_cast<double>(load(xi[j])) - mu) * r * static_cast<double>(load(w[j])) +
                                           static_cast<double>(load(b[j]))));
}

template <class T>
__global__ void layernorm_backward_dx_kernel(const T* dy, const T* x, const T* w, const T* mean, const T* rstd, T* dx,
                                             std::int64_t c, bool accumulate_dx) {
  using C = compute_t<T>;
  __shared__ double smem[blockwise::kRowThreads];
  const int tid = threadIdx.x;
  const std::int64_t i = blockIdx.x;
  const T* xi = x + i * c;
  const T* dyi = dy + i * c;
  const double mu = static_cast<double>(load(mean[i])), r = static_cast<double>(load(rstd[i]));
  double sg = 0, sgx = 0;  // Σ dx̂, Σ dx̂ x̂
  for (std::int64_t j = tid; j < c; j += blockwise::kRowThreads) {
    const double g = static_cast<double>(load(dyi[j])) * static_cast<double>(load(w[j]));
    sg += g;
    sgx += g * (static_cast<double>(load(xi[j])) - mu) * r;
  }
  sg = blockwise::block_reduce(sg, smem, tid, blockwise::SumOp{}) / static_cast<double>(c);
  sgx = blockwise::block_reduce(sgx, smem, tid, blockwise::SumOp{}) / static_cast<double>(c);
  for (std::int64_t j = tid; j < c; j += blockwise::kRowThreads) {
    const double xh = (static_cast<double>(load(xi[j])) - mu) * r;
    const double g = r * (static_cast<double>(load(dyi[j])) * static_cast<double>(load(w[j])) - sg - xh * sgx);
    T* d = dx + i * c + j;
    *d = store<T>(static_cast<C>(accumulate_dx ? static_cast<double>(load(*d)) + g : g));
  }
}

template <class T>
struct LnDwTerm {  // dy ⊙ x̂
  const T *dy, *x, *mean, *rstd;
  std::int64_t c;
  __device__ double operator()(std::int64_t r, std::int64_t j) const {
    return static_cast<double>(load(dy[r * c + j])) *
           (static_cast<double>(load(x[r * c + j])) - static_cast<double>(load(mean[r]))) * static_cast<double>(load(rstd[r]));
  }
};

template <class T>
struct DbTerm {  // dy
  const T* dy;
  std::int64_t c;
  __device__ double operator()(std::int64_t r, std::int64_t j) const { return static_cast<double>(load(dy[r * c + j])); }
};

}  // namespace detail

struct NormOps {
  // x, y (n, c); w (c); rstd (n)
  template <class T>
  static void rmsnorm_forward(const T* x, const T* w, T* y, T* rstd, std::int64_t n, std::int64_t c, double eps) {
    if (n <= 0 || c <= 0) return;
    blockwise::check_rows(n, "tmoe::backend::cuda::NormOps::rmsnorm_forward");
    detail::rmsnorm_forward_kernel<<<static_cast<unsigned>(n), blockwise::kRowThreads, 0, Context::current().stream()>>>(
        x, w, y, rstd, c, eps);
    TMOE_CUDA_CHECK_LAUNCH();
  }

  // dx (+)= ∂L/∂x; dw += Σ_rows dy ⊙ x̂.
  template <class T>
  static void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw, std::int64_t n,
                               std::int64_t c, bool accumulate_dx) {
    if (n <= 0 || c <= 0) return;
    blockwise::check_rows(n, "tmoe::backend::cuda::NormOps::rmsnorm_backward");
    detail::rmsnorm_backward_dx_kernel<<<static_cast<unsigned>(n), blockwise::kRowThreads, 0, Context::current().stream()>>>(
        dy, x, w, rstd, dx, c, accumulate_dx);
    TMOE_CUDA_CHECK_LAUNCH();
    blockwise::reduce_columns(n, c, dw, detail::RmsDwTerm<T>{dy, x, rstd, c});
  }

  // x, y (n, c); w, b (c); mean, rstd (n)
  template <class T>
  static void layernorm_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, std::int64_t n, std::int64_t c,
                                double eps) {
    if (n <= 0 || c <= 0) return;
    blockwise::check_rows(n, "tmoe::backend::cuda::NormOps::layernorm_forward");
    detail::layernorm_forward_kernel<<<static_cast<unsigned>(n), blockwise::kRowThreads, 0, Context::current().stream()>>>(
        x, w, b, y, mean, rstd, c, eps);
    TMOE_CUDA_CHECK_LAUNCH();
  }

  // dx (+)= ∂L/∂x; dw += Σ_rows dy ⊙ x̂; db += Σ_rows dy.
  template <class T>
  static void layernorm_backward(const T* dy, const T* x, const T* w, const T* mean, const T* rstd, T* dx, T* dw, T* db,
                                 std::int64_t n, std::int64_t c, bool accumulate_dx) {
    if (n <= 0 || c <= 0) return;
    blockwise::check_rows(n, "tmoe::backend::cuda::NormOps::layernorm_backward");
    detail::layernorm_backward_dx_kernel<<<static_cast<unsigned>(n), blockwise::kRowThreads, 0, Context::current().stream()>>>(
        dy, x, w, mean, rstd, dx, c, accumulate_dx);
    TMOE_CUDA_CHECK_LAUNCH();
    blockwise::reduce_columns(n, c, dw, detail::LnDwTerm<T>{dy, x, mean, rstd, c});
    blockwise::reduce_columns(n, c, db, detail::DbTerm<T>{dy, c});
  }
};

}  // namespace tmoe::backend::cuda
