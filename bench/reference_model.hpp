#pragma once
// The reference benchmark model and its data, shared by bench_train_step and
// bench_parallel: vocab 256, context 256, d_model 256, 4 layers, 8 heads, MoE in every
// layer with 8 SwiGLU experts of hidden 512, top-2 (issue 2's shape).
#include <cstdint>
#include <memory>
#include <vector>

#include "tmoe/tmoe.hpp"

namespace tmoe::bench {

inline void reference_model(Config& cfg) {
  cfg.model.vocab_size = 256;
  cfg.model.context = 256;
  cfg.model.d_model = 256;
  cfg.model.n_layers = 4;
  cfg.model.n_heads = 8;
  cfg.model.n_experts = 8;
  cfg.model.top_k = 2;
  cfg.model.d_expert = 512;
  cfg.train.seq_len = 256;
  cfg.train.steps = 1000;
}

// Micro-batch i: (batch_size, seq_len) windows of a fixed Philox token stream.
inline BatchFn reference_batches(const Config& cfg) {
  auto data = std::make_shared<std::vector<std::int32_t>>(1 << 16);
  for (std::size_t i = 0; i < data->size(); ++i)
    (*data)[i] = static_cast<std::int32_t>(RngKey{7, 0, 0, 0}.bits(i) % static_cast<std::uint32_t>(cfg.model.vocab_size));
  const std::int64_t b = cfg.train.batch_size, t = cfg.train.seq_len;
  return [data, b, t](std::int64_t i, std::int32_t* in, std::int32_t* tg) {
    for (std::int64_t r = 0; r < b; ++r) {
      const std::int64_t start = (i * 977 + r * 4099) % static_cast<std::int64_t>(data->size() - t - 1);
      for (std::int64_t j = 0; j < t; ++j) {
        in[r * t + j] = (*data)[start + j];
        tg[r * t + j] = (*data)[start + j + 1];
      }
    }
  };
}

}  // namespace tmoe::bench
