#pragma once
// Token (and learned position) embeddings on the device, the ops of cpu/embedding.hpp.
// The backward is a scatter-add over token ids done without atomics, in a fixed order:
//  - dwte: an EmbeddingPlan (embedding_plan.hpp) groups the positions by id, ascending; one
//    thread per (distinct id, column) starts from dwte[id][j] and adds dout[p][j] for the
//    group's positions p in order, in the compute type, then stores once. For fp32 this is
//    the CPU's order and rounding exactly.
//  - dwpe: one thread per (position p, column) adds the rows i = p, p + t, p + 2t, ... in
//    order; no plan needed.
// The plain-signature backward takes the ids on the device, as on the CPU: it copies them
// to the host, builds the plan there and uploads it (two synchronous copies per call).
// The overload taking a plan skips the id download, for callers that hold the ids on the
// host anyway.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tmoe/backend/cuda/check.hpp"
#include "tmoe/backend/cuda/context.hpp"
#include "tmoe/backend/cuda/embedding_plan.hpp"
#include "tmoe/backend/cuda/launch.hpp"
#include "tmoe/backend/cuda/tensor.hpp"
#include "tmoe/backend/cuda/types.hpp"
#include "tmoe/core/error.hpp"

namespace tmoe::backend::cuda {

namespace detail {

inline constexpr int kEmbedColumnThreads = 256;

// out (n, c) = wte[ids] (+ wpe[i % t])
template <class T>
struct EmbeddingForward {
  const std::int32_t* ids;
  const T *wte, *wpe;
  T* out;
  std::int64_t t, c;
  __device__ void operator()(std::int64_t k) const {
    const std::int64_t i = k / c, j = k % c;
    const T e = wte[static_cast<std::int64_t>(ids[i]) * c + j];
    out[k] = wpe ? store<T>(load(e) + load(wpe[(i % t) * c + j])) : e;
  }
};

// grid (groups, column blocks): group g's id row += Σ_{p in group, ascending} dout[p]
template <class T>
__global__ void embedding_backward_wte_kernel(const std::int32_t* group_ids, const std::int64_t* offsets,
                                              const std::int64_t* positions, const T* dout, T* dwte, std::int64_t c) {
  const std::int64_t g = blockIdx.x;
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (j >= c) return;
  T* d = dwte + static_cast<std::int64_t>(group_ids[g]) * c + j;
  compute_t<T> acc = load(*d);
  for (std::int64_t k = offsets[g]; k < offsets[g + 1]; ++k) acc += load(dout[positions[k] * c + j]);
  *d = store<T>(acc);
}

// dwpe (t, c): row p += Σ_{i = p, p + t, ... < n} dout[i]
template <class T>
struct EmbeddingBackwardPositions {
  const T* dout;
  T* dwpe;
  std::int64_t n, t, c;
  __device__ void operator()(std::int64_t k) const {
    const std::int64_t p = k / c, j = k % c;
    compute_t<T> acc = load(dwpe[k]);
    for (std::int64_t i = p; i < n; i += t) acc += load(dout[i * c + j]);
    dwpe[k] = store<T>(acc);
  }
};

template <class T>
void embedding_backward_wte(const EmbeddingPlan& plan, const T* dout, T* dwte, std::int64_t c) {
  const std::int64_t groups = plan.groups();
  if (groups == 0 || c <= 0) return;
  const std::int64_t col_blocks = (c + kEmbedColumnThreads - 1) / kEmbedColumnThreads;
  const char* where = "tmoe::backend::cuda::EmbeddingOps::embedding_backward";
  TMOE_CHECK(col_blocks <= 65535, where, "row width " + std::to_string(c) + " is too wide",
             "at most " + std::to_string(65535LL * kEmbedColumnThreads) + " columns");
  TMOE_CHECK(groups <= 0x7fffffffLL, where, "too many distinct ids", "fewer than 2^31");
  // copy_to_device waits for the copy, so the plan's host vectors may go away after this.
  const auto ids = to_device(plan.ids);
  const auto offsets = to_device(plan.offsets);
  const auto positions = to_device(plan.positions);
  embedding_backward_wte_kernel<<<dim3(static_cast<unsigned>(groups), static_cast<unsigned>(col_blocks)),
                                  kEmbedColumnThreads, 0, Context::current().stream()>>>(ids.data(), offsets.data(),
                                                                                          positions.data(), dout, dwte, c);
  TMOE_CUDA_CHECK_LAUNCH();
}

template <class T>
void embedding_backward_wpe(const T* dout, T* dwpe, std::int64_t n, std::int64_t t, std::int64_t c) {
  if (!dwpe || n <= 0 || t <= 0 || c <= 0) return;
  elementwise(t * c, EmbeddingBackwardPositions<T>{dout, dwpe, n, t, c});
}

}  // namespace detail

struct EmbeddingOps {
  // out (N, C) = wte[ids] (+ wpe[pos], pos = i % t when wpe != nullptr); ids (N) on the device.
  template <class T>
  static void embedding_forward(const std::int32_t* ids, const T* wte, const T* wpe, T* out, std::int64_t n, std::int64_t t,
                                std::int64_t c) {
    if (n <= 0 || c <= 0) return;
    elementwise(n * c, detail::EmbeddingForward<T>{ids, wte, wpe, out, t, c});
  }

  // dwte += scatter of dout by ids; dwpe (when not null) += dout summed by position i % t.
  // ids (N) on the device: downloaded to build the plan (see the file comment); a negative
  // id is a tmoe::Error (the table size is not known here, so larger ids are not caught).
  template <class T>
  static void embedding_backward(const std::int32_t* ids, const T* dout, T* dwte, T* dwpe, std::int64_t n, std::int64_t t,
                                 std::int64_t c) {
    if (n <= 0 || c <= 0) return;
    const std::vector<std::int32_t> host_ids = to_host(ids, n);
    embedding_backward(make_embedding_plan(host_ids.data(), n, -1), dout, dwte, dwpe, n, t, c);
  }

  // The same with the plan of the ids built by the caller (make_embedding_plan).
  template <class T>
  static void embedding_backward(const EmbeddingPlan& plan, const T* dout, T* dwte, T* dwpe, std::int64_t n, std::int64_t t,
                                 std::int64_t c) {
    if (n <= 0 || c <= 0) return;
    TMOE_CHECK(static_cast<std::int64_t>(plan.positions.size()) == n, "tmoe::backend::cuda::EmbeddingOps::embedding_backward",
               "a plan of " + std::to_string(plan.positions.size()) + " positions for " + std::to_string(n) + " tokens",
               "the plan of these n ids");
    detail::embedding_backward_wte(plan, dout, dwte, c);
    detail::embedding_backward_wpe(dout, dwpe, n, t, c);
  }
};

}  // namespace tmoe::backend::cuda
