#pragma once
// Token-choice routing on the GPU: one thread per token runs the router's own per-token
// TMOE_HOST_DEVICE math (moe/routing.hpp, moe/routers/*.hpp), the same functions the CPU
// MoE layer calls in its row loop (moe/moe_layer.hpp), so the GPU and the CPU route with one
// definition. E is small (tens to a few hundred), so a thread walking its token's E logits
// is the simple, deterministic choice; a token's result depends on its own logits alone.
//
//   route_forward   logits (N, E) -> probs (N, E), ids (N, k), gates (N, k)
//                   [and sel (N, E), the selection keys, when the caller wants them]
//                   = R::scores_token, select_topk, R::gates_token per token
//   route_backward  dgates (N, k), dprobs (N, E; may be null) -> dlogits (N, E)
//                   = R::backward_token per token
// As on the CPU, the logits are already divided by the temperature (and noised) and the
// gates are the router's (route_scale is applied by the combine); the layer's own
// post-processing of dlogits (1/temperature, the noise/jitter terms) stays with the layer.
// Works for TopK, SigmoidBias and GroupLimited<Inner>; T is float or double.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "tmoe/backend/cuda/check.hpp"
#include "tmoe/backend/cuda/context.hpp"
#include "tmoe/backend/cuda/launch.hpp"
#include "tmoe/backend/cuda/tensor.hpp"
#include "tmoe/core/concepts.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/moe/routing.hpp"

namespace tmoe::backend::cuda {

namespace detail::router {

template <class R, class T>
__global__ void route_forward_kernel(RouterParams rp, const T* logits, const T* bias, T* probs, T* sel,
                                     std::int32_t* ids, T* gates, std::int64_t n) {
  const std::int64_t e = rp.n_experts, k = rp.k;
  for (std::int64_t t = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<std::int64_t>(blockDim.x) * gridDim.x) {
    R::template scores_token<T>(rp, logits + t * e, bias, probs + t * e, sel + t * e);
    select_topk(sel + t * e, e, k, ids + t * k);
    R::template gates_token<T>(rp, logits + t * e, probs + t * e, ids + t * k, gates + t * k);
  }
}

template <class R, class T>
__global__ void route_backward_kernel(RouterParams rp, const T* logits, const T* probs, const std::int32_t* ids,
                                      const T* gates, const T* dgates, const T* dprobs, T* dlogits, std::int64_t n) {
  const std::int64_t e = rp.n_experts, k = rp.k;
  for (std::int64_t t = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<std::int64_t>(blockDim.x) * gridDim.x)
    R::template backward_token<T>(rp, logits + t * e, probs + t * e, ids + t * k, gates + t * k, dgates + t * k,
                                  dprobs ? dprobs + t * e : nullptr, dlogits + t * e);
}

inline void check_params(const RouterParams& rp, const char* where) {
  if (rp.n_experts <= 0 || rp.k <= 0 || rp.k > rp.n_experts)
    throw Error(tmoe::detail::cat("E=", rp.n_experts, ", k=", rp.k), where, "0 < k <= E");
  if (rp.n_groups > 64 || (rp.n_groups > 1 && rp.n_experts % rp.n_groups != 0))
    throw Error(tmoe::detail::cat(rp.n_groups, " groups of ", rp.n_experts, " experts"), where,
                "at most 64 groups dividing E");
}

inline constexpr int kRouterThreads = 128;

}  // namespace detail::router

struct RouterOps {
  // Per token t < n: probs (N, E), ids (N, k), gates (N, k) from logits (N, E) and the
  // selection bias (E; null unless R::has_bias, and then optional). sel (N, E), when given,
  // receives the selection keys (GroupLimited: -inf outside the kept groups); when null a
  // scratch buffer holds them. All pointers are device pointers.
  template <class R, class T>
    requires TokenChoiceRouter<R>
  static void route_forward(const RouterParams& rp, const T* logits, const T* bias, T* probs, std::int32_t* ids,
                            T* gates, std::int64_t n, T* sel = nullptr) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "backend::Cuda::route_forward: router math runs in float or double");
    detail::router::check_params(rp, "backend::Cuda::route_forward");
    if (n <= 0) return;
    DeviceTensor<T> scratch;
    if (!sel) {
      scratch.ensure(Shape{n * rp.n_experts});
      sel = scratch.data();
    }
    detail::router::route_forward_kernel<R, T>
        <<<blocks_for(n, detail::router::kRouterThreads), detail::router::kRouterThreads, 0, Context::current().stream()>>>(
            rp, logits, bias, probs, sel, ids, gates, n);
    TMOE_CUDA_CHECK_LAUNCH();
  }

  // dlogits (N, E), overwritten, from the forward's logits, probs, ids, gates and the
  // gradients dgates (N, k) and dprobs (N, E; null: no balancing-loss gradient).
  template <class R, class T>
    requires TokenChoiceRouter<R>
  static void route_backward(const RouterParams& rp, const T* logits, const T* probs, const std::int32_t* ids,
                             const T* gates, const T* dgates, const T* dprobs, T* dlogits, std::int64_t n) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "backend::Cuda::route_backward: router math runs in float or double");
    detail::router::check_params(rp, "backend::Cuda::route_backward");
    if (n <= 0) return;
    detail::router::route_backward_kernel<R, T>
        <<<blocks_for(n, detail::router::kRouterThreads), detail::router::kRouterThreads, 0, Context::current().stream()>>>(
            rp, logits, probs, ids, gates, dgates, dprobs, dlogits, n);
    TMOE_CUDA_CHECK_LAUNCH();
  }
};

}  // namespace tmoe::backend::cuda
