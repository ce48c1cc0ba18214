#pragma once
// What the elementwise update rules share: the fixed-chunk parallel loop (results do not
// depend on the thread count) and the fused multiply-add that reproduces torch.optim's
// roundings.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "tmoe/core/threading.hpp"

namespace tmoe::detail {

// a·b + c rounded once where the target has fused multiply-add, as PyTorch's vectorised CPU
// kernels compute add(x, y, alpha=a) and addcmul; a·b + c rounded twice otherwise. The
// optimizers that follow a torch.optim rule use it to reproduce its roundings.
template <class T>
inline T fmadd(T a, T b, T c) {
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
  return std::fma(a, b, c);
#else
  return a * b + c;
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
