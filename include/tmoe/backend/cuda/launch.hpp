#pragma once
// Launch helpers shared by the kernels: grid sizes, and elementwise(n, f), which runs a
// functor f(i) for i in [0, n) with a grid-stride loop on the context's stream. A functor
// is a plain struct with a __device__ (or TMOE_HOST_DEVICE) operator()(std::int64_t);
// the CPU backend runs the same functors in its loops.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "tmoe/backend/cuda/check.hpp"
#include "tmoe/backend/cuda/context.hpp"

namespace tmoe::backend::cuda {

inline constexpr int kThreads = 256;

// Blocks for n elements at `threads` per block, capped for a grid-stride loop.
inline unsigned blocks_for(std::int64_t n, int threads = kThreads) {
  const std::int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<std::int64_t>(b, 1, 65535LL * 8));
}

template <class F>
__global__ void elementwise_kernel(std::int64_t n, F f) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(blockDim.x) * gridDim.x)
    f(i);
}

template <class F>
void elementwise(std::int64_t n, const F& f, cudaStream_t stream = Context::current().stream()) {
  if (n <= 0) return;
  elementwise_kernel<<<blocks_for(n), kThreads, 0, stream>>>(n, f);
  TMOE_CUDA_CHECK_LAUNCH();
}

}  // namespace tmoe::backend::cuda
