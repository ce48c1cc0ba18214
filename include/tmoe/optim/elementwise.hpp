#pragma once
// What the elementwise update rules share: the fixed-chunk parallel loop (results do not
// depend on the thread count), the fused multiply-add that reproduces torch.optim's
// roundings, and the singly rounded operations the per-element rules (each optimizer's
// TMOE_HOST_DEVICE Step, run by the CPU loop and by the CUDA kernel) are written with.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "tmoe/core/macros.hpp"
#include "tmoe/core/threading.hpp"

namespace tmoe::detail {

// a·b + c rounded once where the target has fused multiply-add, as PyTorch's vectorised CPU
// kernels compute add(x, y, alpha=a) and addcmul; a·b + c rounded twice otherwise. The
// optimizers that follow a torch.optim rule use it to reproduce its roundings.
// On the device (backend/cuda/optim.cuh) it is always fused, so a GPU update matches the
// CPU bit for bit only where the host has FMA (-march=native on x86-64 since Haswell);
// TMOE_FUSED_FMADD forces the fused form on any host (std::fma, correctly rounded in
// software where there is no instruction), as the GPU tests do for their host reference.
template <class T>
TMOE_HOST_DEVICE inline T fmadd(T a, T b, T c) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == sizeof(float)) return __fmaf_rn(a, b, c);
  else return __fma_rn(a, b, c);
#elif defined(__FMA__) || defined(__ARM_FEATURE_FMA) || defined(TMOE_FUSED_FMADD)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// a·b, a / b and √a each rounded once, never fused with a neighbouring operation. On the
// device they are the _rn intrinsics, which nvcc never contracts into an FMA (it would fuse
// a plain a·b + c). On the host they are the plain operators; GCC contracts a plain
// product into a following add or subtract, so the rules write every such pair with
// fmadd and leave one unfused pair only, AdamW's θ·(1 − lr·wd) + …, which GCC keeps apart
// (the √ before the add has an errno branch) at -O2 and -O3: tests/unit/test_optimizers.cpp
// and tests/reference pin the results. Denormals are kept on both sides (no -ftz, no
// fast-math).
template <class T>
TMOE_HOST_DEVICE inline T mul_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == sizeof(float)) return __fmul_rn(a, b);
  else return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
template <class T>
TMOE_HOST_DEVICE inline T div_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == sizeof(float)) return __fdiv_rn(a, b);
  else return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
template <class T>
TMOE_HOST_DEVICE inline T sqrt_rn(T a) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == sizeof(float)) return __fsqrt_rn(a);
  else return __dsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

// body(i0, i1) over [0, n) in fixed chunks of 4096 elements, the chunks spread over threads.
template <class F>
inline void for_chunks(std::int64_t n, F&& body) {
  constexpr std::int64_t kChunk = 4096;
  parallel_for((n + kChunk - 1) / kChunk, [&](std::int64_t blk) {
    const std::int64_t i0 = blk * kChunk;
    body(i0, std::min(n, i0 + kChunk));
  });
}

}  // namespace tmoe::detail
