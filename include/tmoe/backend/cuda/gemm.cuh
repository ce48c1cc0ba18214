#pragma once
// Matrix products on the GPU through cuBLAS, with the row-major GemmArgs of the CPU
// backend (gemm_plan.hpp maps them to column-major calls).
//  - fp32: IEEE fp32 (the handle's math mode keeps TF32 off), CUBLAS_COMPUTE_32F;
//  - bf16 / fp16 operands and result, fp32 accumulation (CUBLAS_COMPUTE_32F): tensor cores;
//  - fp64: CUBLAS_COMPUTE_64F.
// gemm_grouped runs all experts' products — each its own (m, n, k) and pointers — as one
// cublasGemmGroupedBatchedEx call (one group per problem) for fp32/bf16/fp16, and as a loop
// of cublasGemmEx calls for fp64 (or when asked with gemm_grouped_loop, which tests compare
// against). The per-problem pointer arrays go to the device through a pinned staging
// buffer whose reuse waits on the event of its last copy. cuBLAS gives the same bits for the
// same call on the same device, so products are reproducible run to run.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstring>
#include <span>
#include <vector>

#include "tmoe/backend/cuda/check.hpp"
#include "tmoe/backend/cuda/context.hpp"
#include "tmoe/backend/cuda/gemm_plan.hpp"
#include "tmoe/backend/cuda/launch.hpp"
#include "tmoe/backend/cuda/tensor.hpp"
#include "tmoe/backend/cuda/types.hpp"
#include "tmoe/precision/narrow.hpp"

namespace tmoe::backend::cuda {

namespace detail {

inline cublasOperation_t op(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

template <class T>
constexpr cublasComputeType_t compute_type() {
  return std::is_same_v<T, double> ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
}

// alpha/beta in the compute type (host scalars).
template <class T>
compute_t<T> scalar(T x) {
  return load(x);
}

// C = beta C for a problem with k = 0 (row-major, m rows of n, stride ldc).
template <class T>
struct ScaleRows {
  T* c;
  std::int64_t n, ldc;
  compute_t<T> beta;
  __device__ void operator()(std::int64_t i) const {
    const std::int64_t r = i / n, j = i % n;
    T& x = c[r * ldc + j];
    x = beta == compute_t<T>(0) ? store<T>(compute_t<T>(0)) : store<T>(beta * load(x));
  }
};

template <class T>
void scale_only(const GemmArgs<T>& g) {
  elementwise(g.m * g.n, ScaleRows<T>{g.c, g.n, g.ldc, scalar(g.beta)});
}

template <class T>
void gemm_call(const ColumnMajorCall<T>& c, compute_t<T> alpha, compute_t<T> beta,
               cublasComputeType_t compute = compute_type<T>()) {
  auto& ctx = Context::current();
  TMOE_CUBLAS_CHECK(cublasGemmEx(ctx.cublas(), op(c.trans_first), op(c.trans_second), static_cast<int>(c.rows),
                                 static_cast<int>(c.cols), static_cast<int>(c.inner), &alpha, c.first,
                                 Scalar<T>::data_type, static_cast<int>(c.ld_first), c.second, Scalar<T>::data_type,
                                 static_cast<int>(c.ld_second), &beta, c.c, Scalar<T>::data_type, static_cast<int>(c.ldc),
                                 compute, CUBLAS_GEMM_DEFAULT));
}

// Pinned host memory for the pointer arrays of a grouped call and its device copy. The
// host side is rewritten only after the previous copy out of it has completed.
class GroupedStaging {
 public:
  ~GroupedStaging() {
    if (host_) cudaFreeHost(host_);
  }
  // Room for `bytes`; returns the host pointer to fill.
  void* host(std::size_t bytes) {
    if (pending_) done_.synchronize();
    pending_ = false;
    if (bytes > capacity_) {
      if (host_) TMOE_CUDA_CHECK(cudaFreeHost(host_));
      host_ = nullptr;
      capacity_ = bytes * 2;
      TMOE_CUDA_CHECK(cudaMallocHost(&host_, capacity_));
      device_.ensure(Shape{static_cast<std::int64_t>(capacity_)});
    }
    return host_;
  }
  // Copies `bytes` to the device on the compute stream; returns the device pointer.
  const void* upload(std::size_t bytes) {
    auto s = Context::current().stream();
    TMOE_CUDA_CHECK(cudaMemcpyAsync(device_.data(), host_, bytes, cudaMemcpyHostToDevice, s));
    done_.record(s);
    pending_ = true;
    return device_.data();
  }

 private:
  void* host_ = nullptr;
  std::size_t capacity_ = 0;
  DeviceTensor<unsigned char> device_;
  Event done_;
  bool pending_ = false;
};

inline GroupedStaging& grouped_staging() {
  thread_local GroupedStaging s;
  return s;
}

// The compute type of an fp32 product whose operands hold values of the narrow tag S
// (backend::Stored<Cuda, S>: activations and published weights are rounded to S): cuBLAS may
// convert them to S (or TF32) for the tensor cores, which is exact for such values, and
// accumulates in fp32.
template <class S>
constexpr cublasComputeType_t narrow_compute() {
  if constexpr (std::is_same_v<S, bf16>) return CUBLAS_COMPUTE_32F_FAST_16BF;
  else return CUBLAS_COMPUTE_32F_FAST_16F;
}

}  // namespace detail

struct GemmOps {
  template <class T>
  static void gemm(const GemmArgs<T>& g) {
    static_assert(is_device_scalar_v<T>, "backend::Cuda::gemm: element type must be float, double, bf16 or fp16");
    check_gemm(g, "tmoe::backend::cuda::gemm");
    if (g.m == 0 || g.n == 0) return;
    if (g.k == 0) return detail::scale_only(g);
    detail::gemm_call(column_major(g), detail::scalar(g.alpha), detail::scalar(g.beta));
  }

  // C = beta C + alpha op(A) op(B), row-major, packed leading dimensions.
  template <class T>
  static void gemm(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, const T* b,
                   T beta, T* c) {
    gemm(packed_gemm(ta, tb, m, n, k, alpha, a, b, beta, c));
  }

  // A product never rounded to a narrow type: on the GPU the result has the operands' type,
  // so this is gemm (callers that need fp32 results pass fp32 operands).
  template <class T>
  static void gemm_exact(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a,
                         const T* b, T beta, T* c) {
    gemm(ta, tb, m, n, k, alpha, a, b, beta, c);
  }

  // Products of operands holding values of the narrow tag S (called by Stored<Cuda, S>;
  // see detail::narrow_compute): fp32 buffers, tensor-core math, fp32 accumulation. Other
  // element types: gemm.
  template <class S, class T>
  static void gemm_narrow(const GemmArgs<T>& g) {
    if constexpr (!std::is_same_v<T, float>) {
      gemm(g);
    } else {
      check_gemm(g, "tmoe::backend::cuda::gemm");
      if (g.m == 0 || g.n == 0) return;
      if (g.k == 0) return detail::scale_only(g);
      detail::gemm_call(column_major(g), g.alpha, g.beta, detail::narrow_compute<S>());
    }
  }
  template <class S, class T>
  static void gemm_grouped_narrow(std::span<const GemmArgs<T>> problems) {
    for (const auto& g : problems) gemm_narrow<S>(g);
  }

  // One cuBLAS call per problem, in order.
  template <class T>
  static void gemm_grouped_loop(std::span<const GemmArgs<T>> problems) {
    const auto plan = plan_grouped(problems);
    for (std::size_t s : plan.scale_only) detail::scale_only(problems[s]);
    for (std::size_t i = 0; i < plan.calls.size(); ++i)
      detail::gemm_call(plan.calls[i], detail::scalar(plan.alpha[i]), detail::scalar(plan.beta[i]));
  }

  // All problems in one grouped batched call (fp32, bf16, fp16); fp64 takes the loop.
  template <class T>
  static void gemm_grouped(std::span<const GemmArgs<T>> problems) {
    static_assert(is_device_scalar_v<T>, "backend::Cuda::gemm_grouped: element type must be float, double, bf16 or fp16");
    if constexpr (std::is_same_v<T, double>) {
      gemm_grouped_loop(problems);
    } else {
      const auto plan = plan_grouped(problems);
      for (std::size_t s : plan.scale_only) detail::scale_only(problems[s]);
      const std::size_t g = plan.calls.size();
      if (g == 0) return;
      if (g == 1) return detail::gemm_call(plan.calls[0], detail::scalar(plan.alpha[0]), detail::scalar(plan.beta[0]));
      std::vector<cublasOperation_t> ta(g), tb(g);
      std::vector<int> m(g), n(g), k(g), lda(g), ldb(g), ldc(g), size(g, 1);
      std::vector<float> alpha(g), beta(g);
      auto& st = detail::grouped_staging();
      auto* ptrs = static_cast<const void**>(st.host(3 * g * sizeof(void*)));
      for (std::size_t i = 0; i < g; ++i) {
        const auto& c = plan.calls[i];
        ta[i] = detail::op(c.trans_first), tb[i] = detail::op(c.trans_second);
        m[i] = static_cast<int>(c.rows), n[i] = static_cast<int>(c.cols), k[i] = static_cast<int>(c.inner);
        lda[i] = static_cast<int>(c.ld_first), ldb[i] = static_cast<int>(c.ld_second), ldc[i] = static_cast<int>(c.ldc);
        alpha[i] = detail::scalar(plan.alpha[i]), beta[i] = detail::scalar(plan.beta[i]);
        ptrs[i] = c.first;
        ptrs[g + i] = c.second;
        ptrs[2 * g + i] = c.c;
      }
      auto* dev = static_cast<const void* const*>(st.upload(3 * g * sizeof(void*)));
      TMOE_CUBLAS_CHECK(cublasGemmGroupedBatchedEx(
          Context::current().cublas(), ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(), dev,
          Scalar<T>::data_type, lda.data(), dev + g, Scalar<T>::data_type, ldb.data(), beta.data(),
          const_cast<void* const*>(dev + 2 * g), Scalar<T>::data_type, ldc.data(), static_cast<int>(g), size.data(),
          CUBLAS_COMPUTE_32F));
    }
  }
};

}  // namespace tmoe::backend::cuda
