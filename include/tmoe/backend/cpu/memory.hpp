#pragma once
// Moving values between the host and the backend's memory. On the CPU both are host memory:
// plain copies. The CUDA backend's twins (backend/cuda/rows.cuh) copy over the bus, so
// layers that fill a table on the host (RoPE angles, initial weights) or read a result there
// (token ids, sampled logits) say so with these calls and run on either backend.
#include <algorithm>
#include <cstdint>

namespace tmoe::backend::cpu {

struct MemoryOps {
  template <class T>
  static void copy_from_host(const T* host, std::int64_t n, T* dst) {
    if (n > 0 && host != dst) std::copy_n(host, n, dst);
  }
  template <class T>
  static void copy_to_host(const T* src, std::int64_t n, T* host) {
    if (n > 0 && host != src) std::copy_n(src, n, host);
  }
  template <class T>
  static void copy(const T* src, std::int64_t n, T* dst) {
    if (n > 0 && src != dst) std::copy_n(src, n, dst);
  }
  // Blocks until the backend's queued work is done (nothing to wait for on the CPU).
  static void synchronize() {}
};

}  // namespace tmoe::backend::cpu
