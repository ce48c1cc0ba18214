#pragma once
// Causal multi-head self-attention core on the GPU: the CUDA twin of
// backend/cpu/attention.hpp, same signatures and layouts:
//   qkv (B, T, 3C) with q = [0, C), k = [C, 2C), v = [2C, 3C); head h owns columns
//   [h hd, (h+1) hd) of each; att (B, H, T, T) softmax probabilities (upper triangle 0);
//   out (B, T, C).
// Plan, per sequence b (one cuBLAS strided-batched call per product, one batch entry per
// head; the heads of one sequence are hd apart, sequences 3TC apart, so a sequence is one
// call):
//   forward   S = scale · Q Kᵀ           (T, T) in the compute type (fp32; fp64 for double)
//             P = causal_softmax(S)      one block per query row, fixed-order reductions
//             [Pd = P ⊙ F]               attention dropout, F regenerated from Philox
//             O = P(d) V
//   backward  dV = P(d)ᵀ dO, dP = dO Vᵀ [⊙ F], dS = scale · P ⊙ (dP − rowsum(dP ⊙ P)),
//             dQ = dS K, dK = dSᵀ Q      (every product overwrites, so dqkv needs no zeroing)
// Every reduction has a fixed order and cuBLAS is deterministic on one stream with a fixed
// workspace, so results are bitwise identical run to run. A backward with
// store_probs = false recomputes S and P with the forward's own calls and shapes, so its P
// equals the forward's bitwise.
//
// AttentionOptions on the device: `opt.tokens`, when given, must be a DEVICE pointer to the
// (B·T) int32 local token indices (the kernels read it); everything else is by value.
// The mask is keyed exactly as on the CPU: token = token_offset + (tokens ? tokens[b T + i]
// : b T + i) for query i of sequence b, element = element_offset + h · head_stride + key
// (head_stride 0: T).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "tmoe/backend/cuda/check.hpp"
#include "tmoe/backend/cuda/context.hpp"
#include "tmoe/backend/cuda/tensor.hpp"
#include "tmoe/backend/cuda/types.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/layers/dropout.hpp"

namespace tmoe::backend::cuda {

namespace detail::attention {

inline constexpr int kRowThreads = 128;  // threads of a row block (a power of two)

// Row-major C (m, n) = alpha · op(A) (m, k) · op(B) (k, n) + beta · C, `batch` times with
// element strides sa, sb, sc. cuBLAS is column-major: a row-major X is the column-major Xᵀ
// with the same leading dimension, so we ask for Cᵀ = op(B)ᵀ op(A)ᵀ, i.e. the same
// transposes with the operands swapped and m, n exchanged. A and B share one type; C may
// be wider (bf16 products into fp32 scores).
template <class A, class C, class Acc>
void gemm_rm(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, Acc alpha, const A* a, std::int64_t lda,
             std::int64_t sa, const A* b, std::int64_t ldb, std::int64_t sb, Acc beta, C* c, std::int64_t ldc,
             std::int64_t sc, std::int64_t batch) {
  static_assert(std::is_same_v<Acc, double> == std::is_same_v<A, double>, "fp64 operands need fp64 compute");
  const cublasComputeType_t compute = std::is_same_v<Acc, double> ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
  TMOE_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      Context::current().cublas(), tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n),
      static_cast<int>(m), static_cast<int>(k), &alpha, b, Scalar<A>::data_type, static_cast<int>(ldb),
      static_cast<long long>(sb), a, Scalar<A>::data_type, static_cast<int>(lda), static_cast<long long>(sa), &beta, c,
      Scalar<C>::data_type, static_cast<int>(ldc), static_cast<long long>(sc), static_cast<int>(batch), compute,
      CUBLAS_GEMM_DEFAULT));
}

template <class Acc>
__device__ inline Acc exp_of(Acc x) {
  if constexpr (std::is_same_v<Acc, float>) return expf(x);
  else return exp(x);
}

// Sum (or max) of one value per thread over the block, as a fixed binary tree: the same
// order on every run. `red` holds kRowThreads values; every thread gets the result.
template <bool kMax>
__device__ inline double block_reduce(double v, double* red, int tid) {
  red[tid] = v;
  __syncthreads();
  for (int s = kRowThreads / 2; s > 0; s >>= 1) {
    if (tid < s) red[tid] = kMax ? (red[tid + s] > red[tid] ? red[tid + s] : red[tid]) : red[tid] + red[tid + s];
    __syncthreads();
  }
  const double r = red[0];
  __syncthreads();  // red may be reused right away
  return r;
}

// What a kernel needs to regenerate the dropout factor of (sequence b, head h, query i,
// key j): plain values plus the device pointer to the routed tokens.
struct DropKeys {
  DropoutMask mask;
  std::int64_t token_offset = 0;
  const std::int32_t* tokens = nullptr;  // device pointer or null
  std::uint64_t element_offset = 0;
  std::int64_t head_stride = 0;  // resolved: T when the options say 0

  template <class Acc>
  __device__ Acc factor(std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j, std::int64_t t) const {
    const std::int64_t row = b * t + i;
    const std::int64_t tok = token_offset + (tokens ? static_cast<std::int64_t>(tokens[row]) : row);
    const std::uint64_t e = element_offset + static_cast<std::uint64_t>(h * head_stride + j);
    return mask.kept(static_cast<std::uint64_t>(tok), e) ? static_cast<Acc>(mask.scale) : Acc(0);
  }
};

inline DropKeys drop_keys(const AttentionOptions& o, std::int64_t t) {
  DropKeys k;
  k.mask = o.mask();
  k.token_offset = o.token_offset;
  k.tokens = o.tokens;
  k.element_offset = o.element_offset;
  k.head_stride = o.head_stride > 0 ? o.head_stride : t;
  return k;
}

// Causal softmax of the (H, T, T) scores of one sequence, grid (T, H): block (i, h) turns
// row i of head h into probabilities over keys 0..i (exp(s − max), sum in double, times
// 1/sum as the CPU does) and zeroes keys i+1..T−1. s is overwritten with exp(s − max).
template <class T, class Acc>
__global__ void causal_softmax_kernel(Acc* s, T* p, std::int64_t t) {
  __shared__ double red[kRowThreads];
  const int tid = static_cast<int>(threadIdx.x);
  const std::int64_t i = blockIdx.x, row = static_cast<std::int64_t>(blockIdx.y) * t + i;
  Acc* sr = s + row * t;
  T* pr = p + row * t;
  double mx = -INFINITY;
  for (std::int64_t j = tid; j <= i; j += kRowThreads) mx = static_cast<double>(sr[j]) > mx ? static_cast<double>(sr[j]) : mx;
  const Acc m = static_cast<Acc>(block_reduce<true>(mx, red, tid));  // a max of Acc values: exact
  double part = 0;
  for (std::int64_t j = tid; j <= i; j += kRowThreads) {
    const Acc e = exp_of<Acc>(sr[j] - m);
    sr[j] = e;
    part += static_cast<double>(e);
  }
  const double sum = block_reduce<false>(part, red, tid);
  const Acc inv = static_cast<Acc>(1.0 / sum);
  for (std::int64_t j = tid; j < t; j += kRowThreads) pr[j] = j <= i ? store<T>(sr[j] * inv) : store<T>(Acc(0));
}

// Pd = P ⊙ F over the (H, T, T) probabilities of sequence b (F = 0 above the diagonal).
template <class T>
__global__ void dropout_probs_kernel(const T* p, T* pd, DropKeys keys, std::int64_t b, std::int64_t heads,
                                     std::int64_t t) {
  using Acc = compute_t<T>;
  const std::int64_t n = heads * t * t;
  for (std::int64_t x = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; x < n;
       x += static_cast<std::int64_t>(blockDim.x) * gridDim.x) {
    const std::int64_t j = x % t, i = (x / t) % t, h = x / (t * t);
    pd[x] = j <= i ? store<T>(keys.factor<Acc>(b, h, i, j, t) * load(p[x])) : store<T>(Acc(0));
  }
}

// Softmax backward of sequence b, grid (T, H): with dP (compute type, overwritten) and P,
//   [dP ⊙= F]  dot = Σ_{j≤i} dP_j P_j (double)  dS_j = P_j (dP_j − dot) scale, 0 for j > i.
template <class T, class Acc>
__global__ void softmax_backward_kernel(Acc* dp, const T* p, T* ds, Acc scale, bool drop, DropKeys keys, std::int64_t b,
                                        std::int64_t t) {
  __shared__ double red[kRowThreads];
  const int tid = static_cast<int>(threadIdx.x);
  const std::int64_t i = blockIdx.x, h = blockIdx.y, row = h * t + i;
  Acc* dr = dp + row * t;
  const T* pr = p + row * t;
  T* sr = ds + row * t;
  double part = 0;
  for (std::int64_t j = tid; j <= i; j += kRowThreads) {
    Acc d = dr[j];
    if (drop) {
      d *= keys.factor<Acc>(b, h, i, j, t);
      dr[j] = d;
    }
    part += static_cast<double>(d) * static_cast<double>(load(pr[j]));
  }
  const Acc dot = static_cast<Acc>(block_reduce<false>(part, red, tid));
  for (std::int64_t j = tid; j < t; j += kRowThreads)
    sr[j] = j <= i ? store<T>(load(pr[j]) * (dr[j] - dot) * scale) : store<T>(Acc(0));
}

// Scores and probabilities of sequence b into s (H, T, T) and p (H, T, T): the forward's
// calls, also used by a backward that recomputes P.
template <class T, class Acc>
void probs_of_sequence(const T* qkv, Acc* s, T* p, std::int64_t b, std::int64_t t, std::int64_t c, std::int64_t h,
                       Acc scale) {
  const std::int64_t hd = c / h;
  const T* q = qkv + b * t * 3 * c;
  gemm_rm<T, Acc, Acc>(false, true, t, t, hd, scale, q, 3 * c, hd, q + c, 3 * c, hd, Acc(0), s, t, t * t, h);
  causal_softmax_kernel<T, Acc><<<dim3(static_cast<unsigned>(t), static_cast<unsigned>(h)), kRowThreads, 0,
                                  Context::current().stream()>>>(s, p, t);
  TMOE_CUDA_CHECK_LAUNCH();
}

template <class T>
void launch_dropout_probs(const T* p, T* pd, const DropKeys& keys, std::int64_t b, std::int64_t h, std::int64_t t) {
  const std::int64_t n = h * t * t;
  const std::int64_t blocks = std::min<std::int64_t>((n + 255) / 256, 65535LL * 8);
  dropout_probs_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, Context::current().stream()>>>(p, pd, keys, b, h, t);
  TMOE_CUDA_CHECK_LAUNCH();
}

inline void check_shape(const char* where, std::int64_t b, std::int64_t t, std::int64_t c, std::int64_t h) {
  if (b < 0 || t < 0 || h <= 0 || c <= 0 || c % h != 0)
    throw Error(tmoe::detail::cat("shape B=", b, " T=", t, " C=", c, " H=", h), where,
                "B, T >= 0, H > 0 and C a positive multiple of H");
  if (t > 65535 || h > 65535)
    throw Error(tmoe::detail::cat("T=", t, ", H=", h, " exceed a grid dimension"), where, "T and H at most 65535");
}

}  // namespace detail::attention

struct AttentionOps {
  // opt: attention dropout and store_probs (layers/dropout.hpp; opt.tokens a device
  // pointer); with store_probs false, att is neither read nor written (may be null).
  template <class T>
  static void attention_forward(const T* qkv, T* att, T* out, std::int64_t b, std::int64_t t, std::int64_t c,
                                std::int64_t h, const AttentionOptions& opt = {}) {
    static_assert(is_device_scalar_v<T>, "backend::Cuda::attention_forward: T must be float, double, bf16 or fp16");
    namespace da = detail::attention;
    using Acc = compute_t<T>;
    da::check_shape("backend::Cuda::attention_forward", b, t, c, h);
    if (b == 0 || t == 0) return;
    const std::int64_t hd = c / h, tt = t * t;
    const Acc scale = Acc(1) / std::sqrt(static_cast<Acc>(hd));
    const da::DropKeys keys = da::drop_keys(opt, t);
    const bool drop = keys.mask.active(), store = opt.store_probs;
    DeviceTensor<Acc> s;   // (H, T, T) scores of one sequence
    DeviceTensor<T> ps;    // (H, T, T) probabilities when not stored
    DeviceTensor<T> pd;    // (H, T, T) P ⊙ F
    s.ensure(Shape{h * tt});
    if (!store) ps.ensure(Shape{h * tt});
    if (drop) pd.ensure(Shape{h * tt});
    for (std::int64_t bi = 0; bi < b; ++bi) {
      T* p = store ? att + bi * h * tt : ps.data();
      da::probs_of_sequence<T, Acc>(qkv, s.data(), p, bi, t, c, h, scale);
      const T* pv = p;
      if (drop) {
        da::launch_dropout_probs<T>(p, pd.data(), keys, bi, h, t);
        pv = pd.data();
      }
      const T* v = qkv + bi * t * 3 * c + 2 * c;
      da::gemm_rm<T, T, Acc>(false, false, t, hd, t, Acc(1), pv, t, tt, v, 3 * c, hd, Acc(0), out + bi * t * c, c, hd, h);
    }
  }

  // dqkv = ∂L/∂qkv (overwritten) from dout (B, T, C), with the forward's opt.
  template <class T>
  static void attention_backward(const T* dout, const T* qkv, const T* att, T* dqkv, std::int64_t b, std::int64_t t,
                                 std::int64_t c, std::int64_t h, const AttentionOptions& opt = {}) {
    static_assert(is_device_scalar_v<T>, "backend::Cuda::attention_backward: T must be float, double, bf16 or fp16");
    namespace da = detail::attention;
    using Acc = compute_t<T>;
    da::check_shape("backend::Cuda::attention_backward", b, t, c, h);
    if (b == 0 || t == 0) return;
    const std::int64_t hd = c / h, tt = t * t;
    const Acc scale = Acc(1) / std::sqrt(static_cast<Acc>(hd));
    const da::DropKeys keys = da::drop_keys(opt, t);
    const bool drop = keys.mask.active(), store = opt.store_probs;
    DeviceTensor<Acc> s;  // (H, T, T) recomputed scores, then dP
    DeviceTensor<T> ps, pd, ds;
    s.ensure(Shape{h * tt});
    ds.ensure(Shape{h * tt});
    if (!store) ps.ensure(Shape{h * tt});
    if (drop) pd.ensure(Shape{h * tt});
    const cudaStream_t stream = Context::current().stream();
    for (std::int64_t bi = 0; bi < b; ++bi) {
      const T* base = qkv + bi * t * 3 * c;
      const T *q = base, *k = base + c, *v = base + 2 * c;
      T* dbase = dqkv + bi * t * 3 * c;
      const T* dO = dout + bi * t * c;
      const T* p = att + (store ? bi * h * tt : 0);
      if (!store) {
        da::probs_of_sequence<T, Acc>(qkv, s.data(), ps.data(), bi, t, c, h, scale);
        p = ps.data();
      }
      const T* pv = p;
      if (drop) {
        da::launch_dropout_probs<T>(p, pd.data(), keys, bi, h, t);
        pv = pd.data();
      }
      // dV = P(d)ᵀ dO
      da::gemm_rm<T, T, Acc>(true, false, t, hd, t, Acc(1), pv, t, tt, dO, c, hd, Acc(0), dbase + 2 * c, 3 * c, hd, h);
      // dP = dO Vᵀ (compute type), then dS
      da::gemm_rm<T, Acc, Acc>(false, true, t, t, hd, Acc(1), dO, c, hd, v, 3 * c, hd, Acc(0), s.data(), t, tt, h);
      da::softmax_backward_kernel<T, Acc><<<dim3(static_cast<unsigned>(t), static_cast<unsigned>(h)), da::kRowThreads, 0,
                                            stream>>>(s.data(), p, ds.data(), scale, drop, keys, bi, t);
      TMOE_CUDA_CHECK_LAUNCH();
      // dQ = dS K, dK = dSᵀ Q (the scale is inside dS)
      da::gemm_rm<T, T, Acc>(false, false, t, hd, t, Acc(1), ds.data(), t, tt, k, 3 * c, hd, Acc(0), dbase, 3 * c, hd, h);
      da::gemm_rm<T, T, Acc>(true, false, t, hd, t, Acc(1), ds.data(), t, tt, q, 3 * c, hd, Acc(0), dbase + c, 3 * c, hd,
                             h);
    }
  }
};

}  // namespace tmoe::backend::cuda
