#pragma once
// Dispatch and combine of the MoE layer on the GPU: the gather of token rows into the
// expert-ordered dispatch buffer and the gate-weighted sum back, with their backwards. The
// index arrays are those of tmoe::RoutingPlan (moe/plan.hpp), copied to the device as int32
// (moe/permute_plan.hpp packs them into one buffer). Semantics mirror moe/moe_layer.hpp:
//   permute            out (rows, C) = x[row_token[r]]                       (dispatch)
//   unpermute_combine  out[t] (+)= Σ_{q in token t's kept list, in order} g_q · y[pos[a_q]]
//                      g = scale · gate[a] (scale = route_scale), dropped assignments have
//                      no row and are skipped; accumulate adds to out (shared experts)
//   combine_backward   dy[r] = g · dout[row_token[r]],  dgate[row_assign[r]] = scale ·
//                      <dout[row_token[r]], y[r]>, dgate = 0 for dropped assignments
//   unpermute_sum      dx[t] (+)= Σ_q dxe[pos[a_q]] in the same order (permute's backward)
// Every output element is written by one thread that sums in a fixed order (a token's
// assignments in assignment order; dot products by a fixed tree), never with atomics, so
// results are bitwise identical run to run. Sums run in the compute type (float for
// bf16/fp16, double for double), dot products in double as on the CPU.
#include <cuda_runtime.h>

#include <cstdint>

#include "tmoe/backend/cuda/check.hpp"
#include "tmoe/backend/cuda/context.hpp"
#include "tmoe/backend/cuda/launch.hpp"
#include "tmoe/backend/cuda/types.hpp"

namespace tmoe::backend::cuda {

namespace detail::permute {

inline constexpr int kDotThreads = 128;  // a power of two

template <class T>
__global__ void permute_kernel(const T* x, const std::int32_t* row_token, T* out, std::int64_t rows, std::int64_t c) {
  const std::int64_t n = rows * c;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(blockDim.x) * gridDim.x) {
    const std::int64_t r = i / c, j = i % c;
    out[i] = x[static_cast<std::int64_t>(row_token[r]) * c + j];
  }
}

// gates null: weight 1 (the sum of unpermute_sum).
template <class T, class G>
__global__ void combine_kernel(const T* y, const std::int32_t* tok_offsets, const std::int32_t* tok_assign,
                               const std::int32_t* pos, const G* gates, compute_t<G> scale, T* out, std::int64_t n,
                               std::int64_t c, bool accumulate) {
  using Acc = compute_t<T>;
  const std::int64_t total = n * c;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(blockDim.x) * gridDim.x) {
    const std::int64_t t = i / c, j = i % c;
    Acc acc = accumulate ? load(out[i]) : Acc(0);
    for (std::int32_t q = tok_offsets[t]; q < tok_offsets[t + 1]; ++q) {
      const std::int32_t as = tok_assign[q];
      const Acc v = load(y[static_cast<std::int64_t>(pos[as]) * c + j]);
      if (gates) acc += static_cast<Acc>(scale * load(gates[as])) * v;
      else acc += v;
    }
    out[i] = store<T>(acc);
  }
}

// One block per dispatch row r: dy[r] = g · dout[token], dgate[assignment] = scale · <dout[token], y[r]>.
template <class T, class G>
__global__ void combine_backward_kernel(const T* dout, const T* y, const std::int32_t* row_token,
                                        const std::int32_t* row_assign, const G* gates, double scale, T* dy, G* dgate,
                                        std::int64_t c) {
  using Acc = compute_t<T>;
  __shared__ double red[kDotThreads];
  const int tid = static_cast<int>(threadIdx.x);
  const std::int64_t r = blockIdx.x;
  const std::int32_t as = row_assign[r];
  const T* go = dout + static_cast<std::int64_t>(row_token[r]) * c;
  const T* yr = y + r * c;
  const Acc g = static_cast<Acc>(static_cast<compute_t<G>>(scale) * load(gates[as]));  // the forward's weight
  double part = 0;
  for (std::int64_t j = tid; j < c; j += kDotThreads) {
    const Acc d = load(go[j]);
    dy[r * c + j] = store<T>(g * d);
    part += static_cast<double>(d) * static_cast<double>(load(yr[j]));
  }
  red[tid] = part;
  __syncthreads();
  for (int s = kDotThreads / 2; s > 0; s >>= 1) {
    if (tid < s) red[tid] += red[tid + s];
    __syncthreads();
  }
  if (tid == 0) dgate[as] = store<G>(static_cast<compute_t<G>>(scale * red[0]));
}

template <class T, class G>
void launch_combine(const T* y, const std::int32_t* tok_offsets, const std::int32_t* tok_assign, const std::int32_t* pos,
                    const G* gates, double scale, T* out, std::int64_t n, std::int64_t c, bool accumulate) {
  if (n <= 0 || c <= 0) return;
  combine_kernel<T, G><<<blocks_for(n * c), kThreads, 0, Context::current().stream()>>>(
      y, tok_offsets, tok_assign, pos, gates, static_cast<compute_t<G>>(scale), out, n, c, accumulate);
  TMOE_CUDA_CHECK_LAUNCH();
}

}  // namespace detail::permute

struct PermuteOps {
  // out (rows, C) = x (N, C) at row_token (rows): the dispatch gather.
  template <class T>
  static void permute(const T* x, const std::int32_t* row_token, T* out, std::int64_t rows, std::int64_t c) {
    if (rows <= 0 || c <= 0) return;
    detail::permute::permute_kernel<T>
        <<<blocks_for(rows * c), kThreads, 0, Context::current().stream()>>>(x, row_token, out, rows, c);
    TMOE_CUDA_CHECK_LAUNCH();
  }

  // out (N, C) = [out +] Σ over token t's kept assignments a (tok_assign[tok_offsets[t] ..
  // tok_offsets[t+1]), in order) of (scale · gates[a]) · y[pos[a]]; y (rows, C), gates (A).
  template <class T, class G>
  static void unpermute_combine(const T* y, const std::int32_t* tok_offsets, const std::int32_t* tok_assign,
                                const std::int32_t* pos, const G* gates, T* out, std::int64_t n, std::int64_t c,
                                double scale = 1.0, bool accumulate = false) {
    detail::permute::launch_combine<T, G>(y, tok_offsets, tok_assign, pos, gates, scale, out, n, c, accumulate);
  }

  // The combine's backward: dy (rows, C) = (scale · gates[row_assign[r]]) · dout[row_token[r]];
  // dgate (A) = scale · <dout[token], y[row]> for kept assignments, 0 for dropped ones.
  template <class T, class G>
  static void combine_backward(const T* dout, const T* y, const std::int32_t* row_token, const std::int32_t* row_assign,
                               const G* gates, T* dy, G* dgate, std::int64_t rows, std::int64_t a, std::int64_t c,
                               double scale = 1.0) {
    const cudaStream_t stream = Context::current().stream();
    if (a > 0) TMOE_CUDA_CHECK(cudaMemsetAsync(dgate, 0, sizeof(G) * static_cast<std::size_t>(a), stream));
    if (rows <= 0) return;
    detail::permute::combine_backward_kernel<T, G><<<static_cast<unsigned>(rows), detail::permute::kDotThreads, 0, stream>>>(
        dout, y, row_token, row_assign, gates, scale, dy, dgate, c);
    TMOE_CUDA_CHECK_LAUNCH();
  }

  // dx (N, C) = [dx +] Σ over token t's kept assignments, in order, of dxe[pos[a]]; dxe
  // (rows, C): the permute's backward.
  template <class T>
  static void unpermute_sum(const T* dxe, const std::int32_t* tok_offsets, const std::int32_t* tok_assign,
                            const std::int32_t* pos, T* dx, std::int64_t n, std::int64_t c, bool accumulate = false) {
    detail::permute::launch_combine<T, T>(dxe, tok_offsets, tok_assign, pos, static_cast<const T*>(nullptr), 1.0, dx, n, c,
                                          accumulate);
  }
};

}  // namespace tmoe::backend::cuda
