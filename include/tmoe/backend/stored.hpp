#pragma once
// backend::Stored<B, S>: backend B whose activations are stored in the narrow type S (bf16,
// fp16). Every op that produces an activation or an activation gradient computes as B does
// — in fp32, every product accumulating in fp32 on fp32 operand panels (never Eigen's
// product on a 16-bit type) — and then rounds its result to S (round-to-nearest-even,
// overflow to inf). On the CPU the rounded values stay in fp32 words: the values, and so
// the training arithmetic, are those of 16-bit storage; the memory is not (docs/concepts/
// precision.md). Not rounded: weight gradients (the wgrad products, ta = kYes, accumulate
// into the fp32 gradient buffer as Megatron's fused wgrad accumulation does), products
// asked for with gemm_exact (the MoE router), the residual stream (sums in the layers), and
// reductions (losses, statistics).
#include <cstdint>

#include "tmoe/core/macros.hpp"
#include <span>
#include <utility>

#include "tmoe/backend/gemm_args.hpp"
#include "tmoe/precision/narrow.hpp"

namespace tmoe::backend {

template <class B, NarrowStorage S>
struct Stored : B {
  using base = B;
  using storage = S;
  using Trans = typename B::Trans;
  template <class T>
  using GemmArgs = typename B::template GemmArgs<T>;

  // x[i] = S::round(x[i]) for n elements, in fixed chunks.
  template <class T>
  static void round_to_storage(T* x, std::int64_t n) {
    constexpr std::int64_t kChunk = 4096;
    B::for_rows((n + kChunk - 1) / kChunk, [=] TMOE_LAMBDA (std::int64_t blk) {
      const std::int64_t i1 = std::min(n, (blk + 1) * kChunk);
      for (std::int64_t i = blk * kChunk; i < i1; ++i) x[i] = static_cast<T>(S::round(static_cast<float>(x[i])));
    });
  }
  template <class T>
  static void round_rows(T* c, std::int64_t m, std::int64_t n, std::int64_t ldc) {
    if (ldc == n) return round_to_storage(c, m * n);
    B::for_rows(m, [=] TMOE_LAMBDA (std::int64_t r) {
      for (std::int64_t j = 0; j < n; ++j) c[r * ldc + j] = static_cast<T>(S::round(static_cast<float>(c[r * ldc + j])));
    });
  }
  // Row-wise products (ta = kNo) make activations or activation gradients: rounded.
  template <class T>
  static void round_result(const GemmArgs<T>& g) {
    if (g.ta == Trans::kNo) round_rows(g.c, g.m, g.n, g.ldc);
  }

  // A backend that can run products of S-valued operands faster says so with
  // gemm_narrow<S> (backend::Cuda: tensor cores, fp32 accumulation); the CPU's products are
  // the fp32 ones. gemm_exact (the router) never takes that path.
  template <class T>
  static void gemm_grouped(std::span<const GemmArgs<T>> problems) {
    if constexpr (requires { B::template gemm_grouped_narrow<S, T>(problems); }) B::template gemm_grouped_narrow<S, T>(problems);
    else B::template gemm_grouped<T>(problems);
    for (const auto& g : problems) round_result(g);
  }
  template <class T>
  static void gemm(const GemmArgs<T>& g) {
    if constexpr (requires { B::template gemm_narrow<S, T>(g); }) B::template gemm_narrow<S, T>(g);
    else B::template gemm<T>(g);
    round_result(g);
  }
  template <class T>
  static void gemm(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, const T* b,
                   T beta, T* c) {
    if constexpr (requires(GemmArgs<T> g) { B::template gemm_narrow<S, T>(g); }) {
      B::template gemm_narrow<S, T>(packed_gemm(ta, tb, m, n, k, alpha, a, b, beta, c));
    } else {
      B::gemm(ta, tb, m, n, k, alpha, a, b, beta, c);
    }
    if (ta == Trans::kNo) round_to_storage(c, m * n);
  }

  template <class T, class... R>
  static void rmsnorm_forward(const T* x, const T* w, T* y, T* rstd, std::int64_t n, std::int64_t c, R&&... rest) {
    B::rmsnorm_forward(x, w, y, rstd, n, c, std::forward<R>(rest)...);
    round_to_storage(y, n * c);
  }
  template <class T, class... R>
  static void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw, std::int64_t n,
                               std::int64_t c, R&&... rest) {
    B::rmsnorm_backward(dy, x, w, rstd, dx, dw, n, c, std::forward<R>(rest)...);
    round_to_storage(dx, n * c);
  }
  template <class T, class... R>
  static void layernorm_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, std::int64_t n, std::int64_t c,
                                R&&... rest) {
    B::layernorm_forward(x, w, b, y, mean, rstd, n, c, std::forward<R>(rest)...);
    round_to_storage(y, n * c);
  }
  template <class T, class... R>
  static void layernorm_backward(const T* dy, const T* x, const T* w, const T* mean, const T* rstd, T* dx, T* dw, T* db,
                                 std::int64_t n, std::int64_t c, R&&... rest) {
    B::layernorm_backward(dy, x, w, mean, rstd, dx, dw, db, n, c, std::forward<R>(rest)...);
    round_to_storage(dx, n * c);
  }
  template <class T, class... R>
  static void swiglu_forward(const T* a1, const T* a3, T* h, std::int64_t rows, std::int64_t width, R&&... rest) {
    B::swiglu_forward(a1, a3, h, rows, width, std::forward<R>(rest)...);
    round_to_storage(h, rows * width);
  }
  template <class T, class... R>
  static void swiglu_backward(const T* dh, const T* a1, const T* a3, T* d1, T* d3, std::int64_t rows, std::int64_t width,
                              R&&... rest) {
    B::swiglu_backward(dh, a1, a3, d1, d3, rows, width, std::forward<R>(rest)...);
    round_to_storage(d1, rows * width);
    round_to_storage(d3, rows * width);
  }
  // The probabilities stay fp32 inside the op (as a fused attention kernel keeps them); the
  // output and the gradient of qkv are stored narrow.
  template <class T, class... R>
  static void attention_forward(const T* qkv, T* att, T* out, std::int64_t b, std::int64_t t, std::int64_t c,
                                std::int64_t h, R&&... rest) {
    B::attention_forward(qkv, att, out, b, t, c, h, std::forward<R>(rest)...);
    round_to_storage(out, b * t * c);
  }
  template <class T, class... R>
  static void attention_backward(const T* dout, const T* qkv, const T* att, T* dqkv, std::int64_t b, std::int64_t t,
                                 std::int64_t c, std::int64_t h, R&&... rest) {
    B::attention_backward(dout, qkv, att, dqkv, b, t, c, h, std::forward<R>(rest)...);
    round_to_storage(dqkv, b * t * 3 * c);
  }
  template <class T, class... R>
  static void rope_apply(T* qkv, const T* cos_t, const T* sin_t, std::int64_t b, std::int64_t t, std::int64_t c,
                         std::int64_t h, R&&... rest) {
    B::rope_apply(qkv, cos_t, sin_t, b, t, c, h, std::forward<R>(rest)...);
    round_to_storage(qkv, b * t * 3 * c);
  }
  template <class T, class... R>
  static void embedding_forward(const std::int32_t* ids, const T* wte, const T* wpe, T* out, std::int64_t n, std::int64_t t,
                                std::int64_t c, R&&... rest) {
    B::embedding_forward(ids, wte, wpe, out, n, t, c, std::forward<R>(rest)...);
    round_to_storage(out, n * c);
  }
  // The loss itself is computed in double from the (narrow) logits; its gradient is stored
  // narrow — under fp16 this is where an unscaled gradient underflows.
  template <class T, class... R>
  static void cross_entropy_backward(const T* logits, const std::int32_t* targets, T* dlogits, std::int64_t n,
                                     std::int64_t v, R&&... rest) {
    B::cross_entropy_backward(logits, targets, dlogits, n, v, std::forward<R>(rest)...);
    round_to_storage(dlogits, n * v);
  }
};

// The backend a model runs on under precision policy P: B itself when activations are
// stored in the compute type, Stored<B, S> when P names a narrow storage tag S.
template <class B, class P>
struct storage_backend {
  using type = B;
};
template <class B, class P>
  requires NarrowStorage<typename P::storage>
struct storage_backend<B, P> {
  using type = Stored<B, typename P::storage>;
};
template <class B, class P>
using storage_backend_t = typename storage_backend<B, P>::type;

}  // namespace tmoe::backend
