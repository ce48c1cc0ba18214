#pragma once
// The generic row loops of backend::Cpu on the GPU, so that a layer's pointwise glue (bias
// adds, residual sums, dropout, GELU) runs unchanged on either backend:
//  - for_rows(rows, fn): fn(i) for every row i, one thread per row; fn is a TMOE_LAMBDA
//    (an extended __host__ __device__ lambda capturing device pointers by value);
//  - reduce_rows(rows, width, out, contrib): out[j] += Σ_rows, with the CPU's order: rows in
//    fixed chunks of kTokenChunk, each chunk summed in row order into a double accumulator
//    of `width` values (one thread per chunk), then the chunk partials added in chunk order
//    (one thread per column). For the same contrib the result is the CPU's, bit for bit.
// These are correct and deterministic, not fast: one thread walks a whole row. Hot loops get
// their own kernels (the ops in the other headers).
// MemoryOps: copies between host and device memory on the compute stream.
#include <cuda_runtime.h>

#include <cstdint>

#include "tmoe/backend/cuda/check.hpp"
#include "tmoe/backend/cuda/context.hpp"
#include "tmoe/backend/cuda/launch.hpp"
#include "tmoe/backend/cuda/tensor.hpp"
#include "tmoe/backend/cuda/types.hpp"

namespace tmoe::backend::cuda {

namespace detail {

template <class F>
__global__ void reduce_chunks_kernel(std::int64_t rows, std::int64_t chunk, double* partial, std::int64_t width,
                                     std::int64_t chunks, F contrib) {
  const std::int64_t c = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (c >= chunks) return;
  double* acc = partial + c * width;
  const std::int64_t r1 = rows < (c + 1) * chunk ? rows : (c + 1) * chunk;
  for (std::int64_t r = c * chunk; r < r1; ++r) contrib(r, acc);
}

template <class T>
struct AddChunks {
  const double* partial;
  std::int64_t width, chunks;
  T* out;
  __device__ void operator()(std::int64_t j) const {
    double s = 0;
    for (std::int64_t c = 0; c < chunks; ++c) s += partial[c * width + j];
    out[j] = store<T>(static_cast<compute_t<T>>(static_cast<double>(load(out[j])) + s));
  }
};

}  // namespace detail

struct RowOps {
  static constexpr std::int64_t kTokenChunk = 256;  // the CPU's (backend/cpu/gemm.hpp)

  template <class F>
  static void for_rows(std::int64_t rows, F fn) {
    elementwise(rows, fn);
  }

  template <class T, class F>
  static void reduce_rows(std::int64_t rows, std::int64_t width, T* out, F contrib) {
    const std::int64_t chunks = (rows + kTokenChunk - 1) / kTokenChunk;
    if (chunks == 0 || width == 0) return;
    DeviceTensor<double> partial(Shape{chunks * width});  // zeroed
    const cudaStream_t s = Context::current().stream();
    detail::reduce_chunks_kernel<<<blocks_for(chunks, 64), 64, 0, s>>>(rows, kTokenChunk, partial.data(), width, chunks,
                                                                        contrib);
    TMOE_CUDA_CHECK_LAUNCH();
    elementwise(width, detail::AddChunks<T>{partial.data(), width, chunks, out});
  }
};

struct MemoryOps {
  template <class T>
  static void copy_from_host(const T* host, std::int64_t n, T* dst) {
    copy_to_device(host, n, dst);
  }
  template <class T>
  static void copy_to_host(const T* src, std::int64_t n, T* host) {
    backend::cuda::copy_to_host(src, n, host);
  }
  template <class T>
  static void copy(const T* src, std::int64_t n, T* dst) {
    if (src != dst) copy_on_device(src, n, dst);
  }
  static void synchronize() { Context::current().synchronize(); }
};

}  // namespace tmoe::backend::cuda
