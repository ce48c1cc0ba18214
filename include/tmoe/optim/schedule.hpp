#pragma once
// Learning-rate schedule: linear warm-up over the first warmup_fraction of the steps (the
// seed's 5%), then cosine decay from lr to lr·min_lr_ratio at the last step.
#include <cmath>
#include <cstdint>

#include "tmoe/core/config.hpp"

namespace tmoe {

struct WarmupCosine {
  double lr = 0, min_ratio = 0.1;
  std::int64_t steps = 1, warmup = 0;

  explicit WarmupCosine(const TrainConfig& t)
      : lr(t.lr), min_ratio(t.min_lr_ratio), steps(t.steps),
        warmup(static_cast<std::int64_t>(std::llround(t.warmup_fraction * static_cast<double>(t.steps)))) {}

  // Learning rate of 0-based step s.
  double operator()(std::int64_t s) const {
    if (s < warmup) return lr * static_cast<double>(s + 1) / static_cast<double>(warmup);
    const std::int64_t span = steps - warmup;
    const double progress = span > 1 ? static_cast<double>(s - warmup) / static_cast<double>(span - 1) : 1.0;
    const double lo = lr * min_ratio;
    return lo + 0.5 * (lr - lo) * (1.0 + std::cos(3.141592653589793 * std::min(1.0, progress)));
  }
};

}  // namespace tmoe
