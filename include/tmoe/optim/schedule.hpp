#pragma once
// Learning-rate schedules and the batch-size ramp. All share one code path, so the kind is a
// run-time field (train.schedule); every one starts with a linear warm-up over W steps
// (train.warmup_steps, or round(warmup_fraction · steps); the seed's 5%):
//   step s < W:   lr · (s + 1) / W
//   constant:     lr
//   cosine:       lo + (lr − lo) · (1 + cos(π p)) / 2,  p = (s − W) / (S − W − 1),  lo = lr · min_lr_ratio
//   linear:       lr − (lr − lo) · p
//   wsd:          lr until the last D = round(decay_fraction · S) steps, then linear to lo
//                 over them (warm-up, stable, decay: Hu et al. 2024, MiniCPM)
// The batch ramp (train.batch_ramp_steps > 0) raises the micro-batches per optimizer step
// linearly from batch_ramp_start to grad_accum; a micro-batch keeps its size, so the data
// stream is still a fixed sequence of micro-batches and a step's slice of it is known from
// the step alone.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"

namespace tmoe {

enum class ScheduleKind { kConstant, kCosine, kLinear, kWsd };

struct LrSchedule {
  ScheduleKind kind = ScheduleKind::kCosine;
  double lr = 0, min_ratio = 0.1;
  std::int64_t steps = 1, warmup = 0, decay = 0;

  explicit LrSchedule(const TrainConfig& t)
      : lr(t.lr), min_ratio(t.min_lr_ratio), steps(t.steps),
        warmup(t.warmup_steps >= 0 ? t.warmup_steps
                                   : static_cast<std::int64_t>(std::llround(t.warmup_fraction * static_cast<double>(t.steps)))),
        decay(static_cast<std::int64_t>(std::llround(t.decay_fraction * static_cast<double>(t.steps)))) {
    if (t.schedule == "constant") kind = ScheduleKind::kConstant;
    else if (t.schedule == "cosine") kind = ScheduleKind::kCosine;
    else if (t.schedule == "linear") kind = ScheduleKind::kLinear;
    else if (t.schedule == "wsd") kind = ScheduleKind::kWsd;
    else throw Error("schedule is '" + t.schedule + "'", "train.schedule", "constant, cosine, linear or wsd");
  }

  // Learning rate of 0-based step s.
  double operator()(std::int64_t s) const {
    if (s < warmup) return lr * static_cast<double>(s + 1) / static_cast<double>(warmup);
    const double lo = lr * min_ratio;
    auto ramp = [](std::int64_t done, std::int64_t span) {  // 0 at the first step of span, 1 at its last
      return span > 1 ? std::min(1.0, static_cast<double>(done) / static_cast<double>(span - 1)) : 1.0;
    };
    switch (kind) {
      case ScheduleKind::kConstant:
        return lr;
      case ScheduleKind::kCosine:
        return lo + 0.5 * (lr - lo) * (1.0 + std::cos(3.141592653589793 * ramp(s - warmup, steps - warmup)));
      case ScheduleKind::kLinear:
        return lr - (lr - lo) * ramp(s - warmup, steps - warmup);
      case ScheduleKind::kWsd: {
        const std::int64_t start = steps - decay;
        if (s < start || decay == 0) return lr;
        // The decay's first step is already below lr; its last reaches lo.
        return lr - (lr - lo) * static_cast<double>(s - start + 1) / static_cast<double>(decay);
      }
    }
    return lr;
  }
};

struct BatchRamp {
  std::int64_t full = 1, start = 1, steps = 0;

  explicit BatchRamp(const TrainConfig& t) : full(t.grad_accum), start(t.batch_ramp_start), steps(t.batch_ramp_steps) {}

  // Micro-batches of 0-based step s.
  std::int64_t micro_batches(std::int64_t s) const {
    if (steps <= 0 || s >= steps) return full;
    return start + (full - start) * s / steps;  // integer: a staircase from start up to full
  }
  // Global index of step s's first micro-batch (the micro-batches of steps 0..s-1).
  std::int64_t first_micro(std::int64_t s) const {
    if (steps <= 0) return s * full;
    const std::int64_t ramped = std::min(s, steps);
    std::int64_t n = 0;
    for (std::int64_t i = 0; i < ramped; ++i) n += micro_batches(i);
    return n + (s - ramped) * full;
  }
};

}  // namespace tmoe
