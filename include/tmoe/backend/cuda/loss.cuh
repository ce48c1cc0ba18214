#pragma once
// Softmax cross-entropy over the vocabulary on the device, the math of cpu/loss.hpp: the
// forward writes -log p_i[y_i] per row and returns their sum in double; the backward writes
// dlogits = (softmax - onehot) * grad_scale, recomputing the softmax from the logits.
// One block per row; the row max and the row sum of exp (in double) are block reductions in
// a fixed order (blockwise::, norm.cuh). The forward's total is summed on the host from the
// row losses in the CPU's order (chunks of kChunkRows rows in row order, then the chunks in
// order), so equal row losses give a bitwise-equal total; returning a double makes the
// forward wait for the stream anyway.
//
// A target outside [0, V) gives a NaN row loss (and a NaN gradient row) instead of reading
// out of bounds.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "tmoe/backend/cuda/check.hpp"
#include "tmoe/backend/cuda/context.hpp"
#include "tmoe/backend/cuda/norm.cuh"
#include "tmoe/backend/cuda/tensor.hpp"
#include "tmoe/backend/cuda/types.hpp"

namespace tmoe::backend::cuda {

namespace detail {

// The row max (compute type) and Σ_j exp(l_j - max) (double) of a row of v logits.
template <class T>
struct RowSoftmaxStats {
  compute_t<T> max;
  double sum;
};

template <class T>
__device__ RowSoftmaxStats<T> row_softmax_stats(const T* l, std::int64_t v, int tid, compute_t<T>* smax, double* ssum) {
  using C = compute_t<T>;
  C m = load(l[0]);
  for (std::int64_t j = tid; j < v; j += blockwise::kRowThreads) m = blockwise::MaxOp{}(m, load(l[j]));
  m = blockwise::block_reduce(m, smax, tid, blockwise::MaxOp{});
  double s = 0;
  for (std::int64_t j = tid; j < v; j += blockwise::kRowThreads) s += exp(static_cast<double>(load(l[j]) - m));
  s = blockwise::block_reduce(s, ssum, tid, blockwise::SumOp{});
  return {m, s};
}

template <class T>
__global__ void cross_entropy_forward_kernel(const T* logits, const std::int32_t* targets, T* row_loss, std::int64_t v) {
  using C = compute_t<T>;
  __shared__ C smax[blockwise::kRowThreads];
  __shared__ double ssum[blockwise::kRowThreads];
  const int tid = threadIdx.x;
  const std::int64_t i = blockIdx.x;
  const T* l = logits + i * v;
  const auto st = row_softmax_stats(l, v, tid, smax, ssum);
  if (tid == 0) {
    const std::int32_t y = targets[i];
    const double loss = y >= 0 && y < v ? log(st.sum) + static_cast<double>(st.max) - static_cast<double>(load(l[y])) : NAN;
    row_loss[i] = store<T>(static_cast<C>(loss));
  }
}

// May run in place (dlogits == logits): every logit of the row is read by the reductions
// before the first write, and each element is then read and written by the same thread.
template <class T>
__global__ void cross_entropy_backward_kernel(const T* logits, const std::int32_t* targets, T* dlogits, std::int64_t v,
                                              double grad_scale) {
  using C = compute_t<T>;
  __shared__ C smax[blockwise::kRowThreads];
  __shared__ double ssum[blockwise::kRowThreads];
  const int tid = threadIdx.x;
  const std::int64_t i = blockIdx.x;
  const T* l = logits + i * v;
  T* d = dlogits + i * v;
  const auto st = row_softmax_stats(l, v, tid, smax, ssum);
  const double inv = 1.0 / st.sum;
  const std::int32_t y = targets[i];
  const double bad = y >= 0 && y < v ? 0.0 : NAN;
  for (std::int64_t j = tid; j < v; j += blockwise::kRowThreads) {
    const double p = exp(static_cast<double>(load(l[j]) - st.max)) * inv;
    d[j] = store<T>(static_cast<C>((p - (j == y ? 1.0 : 0.0) + bad) * grad_scale));
  }
}

}  // namespace detail

struct LossOps {
  // logits (n, v); targets, row_loss (n). Returns Σ_i row_loss[i] (waits for the stream).
  template <class T>
  static double cross_entropy_forward(const T* logits, const std::int32_t* targets, T* row_loss, std::int64_t n,
                                      std::int64_t v) {
    if (n <= 0) return 0.0;
    blockwise::check_rows(n, "tmoe::backend::cuda::LossOps::cross_entropy_forward");
    TMOE_CHECK(v > 0, "tmoe::backend::cuda::LossOps::cross_entropy_forward", "an empty vocabulary", "v > 0");
    detail::cross_entropy_forward_kernel<<<static_cast<unsigned>(n), blockwise::kRowThreads, 0, Context::current().stream()>>>(
        logits, targets, row_loss, v);
    TMOE_CUDA_CHECK_LAUNCH();
    const std::vector<T> rows = to_host(row_loss, n);
    double total = 0;
    for (std::int64_t r0 = 0; r0 < n; r0 += blockwise::kChunkRows) {
      const std::int64_t r1 = r0 + blockwise::kChunkRows < n ? r0 + blockwise::kChunkRows : n;
      double chunk = 0;
      for (std::int64_t r = r0; r < r1; ++r) chunk += static_cast<double>(load(rows[static_cast<std::size_t>(r)]));
      total += chunk;
    }
    return total;
  }

  // dlogits (n, v) = (softmax(logits) - onehot(target)) * grad_scale; may alias logits.
  template <class T>
  static void cross_entropy_backward(const T* logits, const std::int32_t* targets, T* dlogits, std::int64_t n, std::int64_t v,
                                     double grad_scale) {
    if (n <= 0) return;
    blockwise::check_rows(n, "tmoe::backend::cuda::LossOps::cross_entropy_backward");
    TMOE_CHECK(v > 0, "tmoe::backend::cuda::LossOps::cross_entropy_backward", "an empty vocabulary", "v > 0");
    detail::cross_entropy_backward_kernel<<<static_cast<unsigned>(n), blockwise::kRowThreads, 0, Context::current().stream()>>>(
        logits, targets, dlogits, v, grad_scale);
    TMOE_CUDA_CHECK_LAUNCH();
  }
};

}  // namespace tmoe::backend::cuda
