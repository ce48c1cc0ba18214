#pragma once
// The sizes and init of one feed-forward expert (also used for a dense FFN).
#include <cstdint>

namespace tmoe {

struct ExpertShape {
  std::int64_t d_model = 0, hidden = 0;
  bool bias = false;
  std::uint32_t tags = 0;
  double std = 0.02, out_std = 0.02;
  bool gelu_exact = false;
};

}  // namespace tmoe
