#pragma once
// Token (and learned position) embeddings. The backward is a scatter-add over token ids
// done without atomics: each work item owns a fixed slice of columns and walks the tokens
// in order, so every sum has one fixed order.
#include <cstdint>

#include "tmoe/core/threading.hpp"

namespace tmoe::backend::cpu {

struct EmbeddingOps {
  // out (N, C) = wte[ids] (+ wpe[pos], pos = i % t when wpe != nullptr)
  template <class T>
  static void embedding_forward(const std::int32_t* ids, const T* wte, const T* wpe, T* out, std::int64_t n,
                                std::int64_t t, std::int64_t c) {
    parallel_for(n, [&](std::int64_t i) {
      const T* e = wte + static_cast<std::int64_t>(ids[i]) * c;
      T* o = out + i * c;
      if (wpe) {
        const T* p = wpe + (i % t) * c;
        for (std::int64_t j = 0; j < c; ++j) o[j] = e[j] + p[j];
      } else {
        for (std::int64_t j = 0; j < c; ++j) o[j] = e[j];
      }
    });
  }

  template <class T>
  static void embedding_backward(const std::int32_t* ids, const T* dout, T* dwte, T* dwpe, std::int64_t n,
                                 std::int64_t t, std::int64_t c) {
    constexpr std::int64_t kCols = 32;
    parallel_for((c + kCols - 1) / kCols, [&](std::int64_t blk) {
      const std::int64_t j0 = blk * kCols, j1 = std::min(c, j0 + kCols);
      for (std::int64_t i = 0; i < n; ++i) {
        T* d = dwte + static_cast<std::int64_t>(ids[i]) * c;
        const T* g = dout + i * c;
        for (std::int64_t j = j0; j < j1; ++j) d[j] += g[j];
        if (dwpe) {
          T* dp = dwpe + (i % t) * c;
          for (std::int64_t j = j0; j < j1; ++j) dp[j] += g[j];
        }
      }
    });
  }
};

}  // namespace tmoe::backend::cpu
