#pragma once
// Global-norm gradient clipping over all parameters (PyTorch's clip_grad_norm_ semantics):
//   norm = √Σ g²;  g ← g · min(1, max_norm / (norm + 1e-6)).
// The sum of squares runs in fixed chunks (deterministic); returns the norm before clipping.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "tmoe/core/macros.hpp"

namespace tmoe {

// The gradient norm is summed in cells of this many elements (Trainer::grad_sum_squares;
// ZeRO-1 shards are whole cells).
inline constexpr std::int64_t kSumSquaresChunk = std::int64_t{1} << 14;

template <class B, class T>
double clip_grad_norm(T* g, std::int64_t n, double max_norm, double sum_squares_total) {
  const double norm = std::sqrt(sum_squares_total);
  if (max_norm > 0) {
    const double coef = std::min(1.0, max_norm / (norm + 1e-6));
    if (coef < 1.0) {
      const T cf = static_cast<T>(coef);
      B::for_rows(n / 4096 + 1, [=] TMOE_LAMBDA (std::int64_t blk) {
        const std::int64_t i1 = std::min(n, (blk + 1) * 4096);
        for (std::int64_t i = blk * 4096; i < i1; ++i) g[i] *= cf;
      });
    }
  }
  return norm;
}

}  // namespace tmoe
