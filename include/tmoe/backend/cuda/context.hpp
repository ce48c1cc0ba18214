#pragma once
// The device a thread works on: its properties, one compute stream, a cuBLAS handle bound
// to that stream with its workspace, and the caching allocator. Context::current() is the
// calling thread's context (created on first use for device 0, or the one select() chose);
// every op of backend::Cuda runs on its stream, so ops are ordered without events and the
// allocator can reuse a freed block for the next kernel. Errors:
//  - no device: "no CUDA device is visible" with the runtime's reason;
//  - an architecture this build has no code for: names the device's compute capability
//    and the architectures compiled (CMAKE_CUDA_ARCHITECTURES, default 90);
//  - out of memory: from the allocator (allocator.hpp).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <string>

#include "tmoe/backend/cuda/allocator.hpp"
#include "tmoe/backend/cuda/check.hpp"

namespace tmoe::backend::cuda {

// The architectures this translation unit carries code for, as nvcc lists them (e.g. "900").
inline std::string compiled_architectures() {
#if defined(__CUDA_ARCH_LIST__)
#define TMOE_STR2(x) #x
#define TMOE_STR(x) TMOE_STR2(x)
  return TMOE_STR(__CUDA_ARCH_LIST__);
#undef TMOE_STR
#undef TMOE_STR2
#else
  return "unknown (not compiled by nvcc)";
#endif
}

// Visible devices; 0 when there is no device or no driver (never throws).
inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

// Why no device is usable, or an empty string when one is.
inline std::string no_device_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
  }
  return n == 0 ? "the runtime reports 0 devices" : "";
}

struct CudaRaw {
  void* alloc(std::size_t bytes) {
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    return p;
  }
  void free(void* p) { cudaFree(p); }
  std::string memory_report() {
    std::size_t f = 0, t = 0;
    if (cudaMemGetInfo(&f, &t) != cudaSuccess) {
      cudaGetLastError();
      return "no memory information";
    }
    return mib(f) + " free of " + mib(t);
  }
};

namespace detail {
// A template, so that every translation unit may carry it (no duplicate symbol at link).
template <int = 0>
__global__ void probe_kernel() {}
}  // namespace detail

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int major = 0, minor = 0;
  int sms = 0;
  std::size_t total_memory = 0;
  int capability() const { return major * 10 + minor; }
};

class Context {
 public:
  static constexpr std::size_t kCublasWorkspace = std::size_t(32) << 20;

  explicit Context(int device) {
    const std::string why = no_device_reason();
    if (!why.empty()) throw Error("no CUDA device is visible (" + why + ")", "tmoe::backend::cuda::Context", "an NVIDIA GPU and its driver");
    const int n = device_count();
    if (device < 0 || device >= n)
      throw Error("device " + std::to_string(device) + " does not exist", "tmoe::backend::cuda::Context",
                  "a device index in [0, " + std::to_string(n) + ")");
    TMOE_CUDA_CHECK(cudaSetDevice(device));
    cudaDeviceProp p{};
    TMOE_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    info_.ordinal = device;
    info_.name = p.name;
    info_.major = p.major;
    info_.minor = p.minor;
    info_.sms = p.multiProcessorCount;
    info_.total_memory = p.totalGlobalMem;
    // A kernel image for this device must exist in the binary.
    cudaFuncAttributes attr{};
    const cudaError_t e = cudaFuncGetAttributes(&attr, detail::probe_kernel<0>);
    if (e != cudaSuccess) {
      cudaGetLastError();
      throw Error("device " + std::to_string(device) + " (" + info_.name + ") has compute capability " +
                      std::to_string(info_.major) + "." + std::to_string(info_.minor) + ", which this build has no code for (" +
                      cudaGetErrorName(e) + ")",
                  "tmoe::backend::cuda::Context",
                  "a build whose CMAKE_CUDA_ARCHITECTURES includes " + std::to_string(info_.capability()) +
                      " (compiled: " + compiled_architectures() + ")");
    }
    TMOE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    TMOE_CUBLAS_CHECK(cublasCreate(&cublas_));
    TMOE_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    workspace_ = allocator_.allocate(kCublasWorkspace);
    TMOE_CUBLAS_CHECK(cublasSetWorkspace(cublas_, workspace_, kCublasWorkspace));
    // Tensor-op math for fp32 products stays off: fp32 GEMMs are IEEE fp32 (no TF32).
    TMOE_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ~Context() {
    if (stream_) cudaStreamSynchronize(stream_);
    if (cublas_) cublasDestroy(cublas_);
    allocator_.deallocate(workspace_);
    allocator_.trim();
    if (stream_) cudaStreamDestroy(stream_);
  }

  // The calling thread's context; select() replaces it with one for another device.
  static Context& current() {
    auto& slot = current_slot();
    if (!slot) slot = std::make_unique<Context>(0);
    return *slot;
  }
  static Context& select(int device) {
    auto& slot = current_slot();
    if (!slot || slot->info_.ordinal != device) {
      slot.reset();
      slot = std::make_unique<Context>(device);
    }
    return *slot;
  }

  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  const DeviceInfo& info() const { return info_; }
  CachingAllocator<CudaRaw>& allocator() { return allocator_; }
  void synchronize() const { TMOE_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  static std::unique_ptr<Context>& current_slot() {
    thread_local std::unique_ptr<Context> slot;
    return slot;
  }

  DeviceInfo info_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  CachingAllocator<CudaRaw> allocator_;
  void* workspace_ = nullptr;
};

// A CUDA event with timing, for ordering another stream after the compute stream (NCCL)
// and for the benchmarks.
class Event {
 public:
  Event() { TMOE_CUDA_CHECK(cudaEventCreate(&e_)); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event() { cudaEventDestroy(e_); }
  void record(cudaStream_t s) { TMOE_CUDA_CHECK(cudaEventRecord(e_, s)); }
  void wait_on(cudaStream_t s) const { TMOE_CUDA_CHECK(cudaStreamWaitEvent(s, e_, 0)); }
  void synchronize() const { TMOE_CUDA_CHECK(cudaEventSynchronize(e_)); }
  // Milliseconds from `start` to this event (both recorded and complete).
  float since(const Event& start) const {
    float ms = 0;
    TMOE_CUDA_CHECK(cudaEventElapsedTime(&ms, start.e_, e_));
    return ms;
  }
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

}  // namespace tmoe::backend::cuda
