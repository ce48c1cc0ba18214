#pragma once
// Every CUDA runtime and cuBLAS call goes through a check that turns a failure into
// tmoe::Error naming the call, the file and the line; kernel launches are checked with
// TMOE_CUDA_CHECK_LAUNCH() right after the launch. NCCL calls have their check in
// parallel/comm/nccl.hpp. No Eigen here: this header is for nvcc and g++ alike.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "tmoe/core/error.hpp"

namespace tmoe::backend::cuda {

inline std::string call_site(const char* call, const char* file, int line) {
  return std::string(call) + " at " + file + ":" + std::to_string(line);
}

inline void check_cuda(cudaError_t e, const char* call, const char* file, int line) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear a sticky-free error so the next call starts clean
  throw Error(std::string("CUDA error ") + cudaGetErrorName(e) + ": " + cudaGetErrorString(e), call_site(call, file, line));
}

inline const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

inline void check_cublas(cublasStatus_t s, const char* call, const char* file, int line) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  throw Error(std::string("cuBLAS error ") + cublas_status_name(s) + " (" + std::to_string(static_cast<int>(s)) + ")",
              call_site(call, file, line));
}

}  // namespace tmoe::backend::cuda

#define TMOE_CUDA_CHECK(call) ::tmoe::backend::cuda::check_cuda((call), #call, __FILE__, __LINE__)
#define TMOE_CUBLAS_CHECK(call) ::tmoe::backend::cuda::check_cublas((call), #call, __FILE__, __LINE__)
#define TMOE_CUDA_CHECK_LAUNCH() ::tmoe::backend::cuda::check_cuda(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
