#pragma once
// Deterministic reductions on the device, the CUDA twins of backend/cpu/reduce.hpp's
// sum_squares and of the scaling that optim/clip.hpp and the loss scaler apply, plus the
// fixed-tree sum over R equal-length leaves that comm::Nccl's fixed-order reductions use.
//
// Order, hence bits, never depends on the launch: sum_squares cuts x into cells of
// kSumSquaresChunk (2^14) elements like the CPU; one block sums a cell (thread t takes
// elements t, t + 256, ... in order with fused multiply-adds in double, then a shared-memory
// halving tree over the 256 thread sums), and the cell sums are added in cell order on the
// host, as the CPU adds its chunk partials. Within a cell the order differs from the CPU's
// sequential loop, so the GPU and CPU sums agree to ~1e-15 relative, not bitwise; two GPU
// runs agree bitwise. No atomics.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "tmoe/backend/cuda/check.hpp"
#include "tmoe/backend/cuda/context.hpp"
#include "tmoe/backend/cuda/launch.hpp"
#include "tmoe/backend/cuda/tensor.hpp"
#include "tmoe/backend/cuda/types.hpp"
#include "tmoe/optim/clip.hpp"

namespace tmoe::backend::cuda {

namespace detail {

inline constexpr int kReduceThreads = 256;  // a power of two: the halving tree needs it

// Σ over the block of one double per thread, along a fixed tree (t += t + stride, stride
// halving); the result is valid in thread 0. `shared` holds kReduceThreads doubles.
__device__ inline double block_sum(double v, double* shared, int t) {
  shared[t] = v;
  __syncthreads();
  for (int stride = kReduceThreads / 2; stride > 0; stride /= 2) {
    if (t < stride) shared[t] += shared[t + stride];
    __syncthreads();
  }
  return shared[0];
}

// partial[c] = Σ x[i]² over cell c = [c·chunk, min(n, (c + 1)·chunk)); one block per cell.
template <class T>
__global__ void sum_squares_kernel(const T* x, std::int64_t n, std::int64_t chunk, double* partial) {
  __shared__ double shared[kReduceThreads];
  const int t = static_cast<int>(threadIdx.x);
  const std::int64_t lo = static_cast<std::int64_t>(blockIdx.x) * chunk;
  const std::int64_t hi = lo + chunk < n ? lo + chunk : n;
  double s = 0;
  for (std::int64_t i = lo + t; i < hi; i += kReduceThreads) {
    const double v = static_cast<double>(load(x[i]));
    s = __fma_rn(v, v, s);
  }
  const double total = block_sum(s, shared, t);
  if (t == 0) partial[blockIdx.x] = total;
}

// a + b rounded to T: exact IEEE addition for float and double, the float sum rounded once
// for the 16-bit types (what the host's bf16/fp16 addition does).
template <class T>
__device__ inline T add_rounded(T a, T b) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) return a + b;
  else return store<T>(load(a) + load(b));
}

// S(lo, hi) of tree_sum.hpp for element i of the leaves base[q·stride + i]: the same split
// (the largest power of two below hi − lo) and the same left + right additions.
template <class T>
__device__ T tree_at(const T* base, std::int64_t stride, int lo, int hi, std::int64_t i) {
  if (hi - lo == 1) return base[static_cast<std::int64_t>(lo) * stride + i];
  int half = 1;
  while (half * 2 < hi - lo) half *= 2;
  const T left = tree_at(base, stride, lo, lo + half, i);
  const T right = tree_at(base, stride, lo + half, hi, i);
  return add_rounded(left, right);
}

template <class T>
__global__ void tree_sum_kernel(const T* base, std::int64_t stride, int count, T* out, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(blockDim.x) * gridDim.x)
    out[i] = tree_at(base, stride, 0, count, i);
}

template <class T>
struct ScaleBy {
  T* x;
  compute_t<T> cf;
  __device__ void operator()(std::int64_t i) const { x[i] = store<T>(load(x[i]) * cf); }
};

}  // namespace detail

struct ReduceOps {
  static constexpr std::int64_t kChunk = kSumSquaresChunk;

  // partial[c] = Σ x[i]² over cell c of kChunk elements, c in [0, ceil(n / kChunk)), in
  // double, written to the device array `partial` on the context's stream (no wait). The
  // Trainer's per-parameter cells are the cells of each parameter's slice of the gradient.
  template <class T>
  static void sum_squares_chunks(const T* x, std::int64_t n, double* partial) {
    static_assert(is_device_scalar_v<T>, "tmoe: ReduceOps::sum_squares takes float, double, __nv_bfloat16 or __half");
    const std::int64_t cells = (n + kChunk - 1) / kChunk;
    if (cells == 0) return;
    detail::sum_squares_kernel<T>
        <<<static_cast<unsigned>(cells), detail::kReduceThreads, 0, Context::current().stream()>>>(x, n, kChunk, partial);
    TMOE_CUDA_CHECK_LAUNCH();
  }

  // Σ x[i]² over a device vector, accumulated in double: the cell sums above, added in cell
  // order on the host. Waits for the context's stream.
  template <class T>
  static double sum_squares(const T* x, std::int64_t n) {
    const std::int64_t cells = (n + kChunk - 1) / kChunk;
    if (cells == 0) return 0.0;
    DeviceTensor<double> partial;
    partial.ensure(Shape{cells});
    sum_squares_chunks(x, n, partial.data());
    const std::vector<double> h = to_host(partial.data(), cells);
    double s = 0;
    for (double p : h) s += p;
    return s;
  }

  // x[i] ← x[i]·c with c rounded to T first and the product rounded to T, as the CPU's
  // `g[i] *= static_cast<T>(coef)` (clip_grad_norm, the loss scaler's unscale): bitwise the
  // CPU's for float and double; for the 16-bit types c goes through float.
  template <class T>
  static void scale(T* x, std::int64_t n, double coef) {
    static_assert(is_device_scalar_v<T>, "tmoe: ReduceOps::scale takes float, double, __nv_bfloat16 or __half");
    compute_t<T> cf;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) cf = static_cast<T>(coef);
    else cf = load(store<T>(static_cast<float>(coef)));
    elementwise(n, detail::ScaleBy<T>{x, cf});
  }

  // out[i] = S(0, count) of tree_sum.hpp over the leaves base[q·stride + i], q in
  // [0, count), for i in [0, n): bitwise tmoe::tree_sum of the same leaves on the host
  // (float, double; the 16-bit types add in float and round each sum). out may be leaf 0.
  template <class T>
  static void tree_sum(const T* base, std::int64_t stride, int count, T* out, std::int64_t n,
                       cudaStream_t stream = Context::current().stream()) {
    static_assert(is_device_scalar_v<T>, "tmoe: ReduceOps::tree_sum takes float, double, __nv_bfloat16 or __half");
    if (n <= 0 || count <= 0) return;
    detail::tree_sum_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(base, stride, count, out, n);
    TMOE_CUDA_CHECK_LAUNCH();
  }
};

}  // namespace tmoe::backend::cuda
