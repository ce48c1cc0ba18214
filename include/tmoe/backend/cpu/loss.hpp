#pragma once
// Softmax cross-entropy over the vocabulary, fused: the forward returns Σ_i -log p_i[y_i]
// (summed over rows in fixed chunks, in double) and the backward writes
// dlogits = (softmax - onehot) * grad_scale in place of nothing else.
#include <cmath>
#include <cstdint>
#include <vector>

#include "tmoe/backend/cpu/reduce.hpp"

namespace tmoe::backend::cpu {

struct LossOps {
  // Per-row loss into `row_loss` (N); returns the sum. Also keeps nothing: the backward
  // recomputes the softmax from the logits.
  template <class T>
  static double cross_entropy_forward(const T* logits, const std::int32_t* targets, T* row_loss, std::int64_t n,
                                      std::int64_t v) {
    ReduceOps::for_rows(n, [&](std::int64_t i) {
      const T* l = logits + i * v;
      T mx = l[0];
      for (std::int64_t j = 1; j < v; ++j) mx = std::max(mx, l[j]);
      double s = 0;
      for (std::int64_t j = 0; j < v; ++j) s += std::exp(static_cast<double>(l[j] - mx));
      row_loss[i] = static_cast<T>(std::log(s) + mx - l[targets[i]]);
    });
    double total = 0;
    ReduceOps::reduce_rows(n, 1, &total, [&](std::int64_t i, double* acc) { acc[0] += row_loss[i]; });
    return total;
  }

  // dlogits (N, V) = (softmax(logits) - onehot(target)) * grad_scale; may alias logits.
  template <class T>
  static void cross_entropy_backward(const T* logits, const std::int32_t* targets, T* dlogits, std::int64_t n,
                                     std::int64_t v, double grad_scale) {
    ReduceOps::for_rows(n, [&](std::int64_t i) {
      const T* l = logits + i * v;
      T* d = dlogits + i * v;
      T mx = l[0];
      for (std::int64_t j = 1; j < v; ++j) mx = std::max(mx, l[j]);
      double s = 0;
      for (std::int64_t j = 0; j < v; ++j) s += std::exp(static_cast<double>(l[j] - mx));
      const double inv = 1.0 / s;
      const std::int32_t y = targets[i];
      for (std::int64_t j = 0; j < v; ++j) {
        const double p = std::exp(static_cast<double>(l[j] - mx)) * inv;
        d[j] = static_cast<T>((p - (j == y ? 1.0 : 0.0)) * grad_scale);
      }
    });
  }
};

}  // namespace tmoe::backend::cpu
