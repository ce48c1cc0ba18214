#pragma once
// Loss scaling for fp16 training, with the semantics users know from PyTorch's GradScaler:
// the loss (and so every gradient) is multiplied by `scale` before backward; after the
// gradients are reduced, a step whose gradients hold any inf/NaN is skipped — weights and
// optimizer state untouched — and the scale is multiplied by `backoff`; after `interval`
// consecutive finite steps it is multiplied by `growth`. A static scaler keeps its scale
// and still skips non-finite steps. Its state (scale, finite-step count) is checkpointed.
#include <cstdint>

#include "tmoe/core/config.hpp"

namespace tmoe {

struct LossScaler {
  bool enabled = false;
  bool dynamic = true;
  double scale = 1.0;
  double growth = 2.0, backoff = 0.5;
  std::int64_t interval = 2000;
  std::int64_t good_steps = 0;  // consecutive finite steps since the last change of scale
  std::int64_t skipped = 0;     // steps skipped in this run (not checkpointed; a statistic)

  static LossScaler from_config(const TrainConfig& t, bool enabled) {
    LossScaler s;
    s.enabled = enabled;
    if (!enabled) return s;
    s.dynamic = t.loss_scaling == "dynamic";
    s.scale = t.loss_scale;
    s.growth = t.loss_scale_growth;
    s.backoff = t.loss_scale_backoff;
    s.interval = t.loss_scale_interval;
    return s;
  }

  // Called once per optimizer step with whether all gradients were finite; returns whether
  // the step is applied.
  bool update(bool finite) {
    if (!enabled) return finite;
    if (!finite) {
      ++skipped;
      good_steps = 0;
      if (dynamic) scale *= backoff;
      return false;
    }
    if (dynamic && ++good_steps >= interval) {
      scale *= growth;
      good_steps = 0;
    }
    return true;
  }
};

}  // namespace tmoe
