#pragma once
// The pipeline's micro-batch schedule: 1F1B (one forward, one backward; PipeDream-Flush,
// as Megatron-LM runs it). Stage s of S first runs min(S - s - 1, m) warm-up forwards, then
// alternates one forward and one backward, then runs the remaining backwards, so that at
// most S - s micro-batches are in flight on stage s and the last stage runs each backward
// right after its forward. Backwards run in micro-batch order on every stage, so the
// pieces' gradients are summed along the same tree as in one process. With one stage the
// schedule is F0 B0 F1 B1 ...: the plain gradient-accumulation loop.
#include <algorithm>
#include <cstdint>
#include <vector>

namespace tmoe {

struct PipeOp {
  bool forward = true;
  std::int64_t micro = 0;
};

inline std::vector<PipeOp> pipeline_schedule(int stages, int stage, std::int64_t micro_batches) {
  std::vector<PipeOp> ops;
  ops.reserve(static_cast<std::size_t>(2 * micro_batches));
  const std::int64_t warm = std::min<std::int64_t>(stages - stage - 1, micro_batches);
  std::int64_t f = 0, b = 0;
  for (; f < warm; ++f) ops.push_back({true, f});
  while (f < micro_batches) {
    ops.push_back({true, f++});
    ops.push_back({false, b++});
  }
  while (b < micro_batches) ops.push_back({false, b++});
  return ops;
}

}  // namespace tmoe
