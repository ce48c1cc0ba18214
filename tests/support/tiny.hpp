#pragma once
// Shared by the tests: the tiny shapes of DESIGN.md (d_model 32, 2 layers, 4 experts,
// context 32) and a few helpers.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "numeric.hpp"  // random_tokens
#include "tmoe/tmoe.hpp"

namespace tmoe::test {

inline ModelConfig tiny_model() {
  ModelConfig m;
  m.vocab_size = 64;
  m.context = 32;
  m.d_model = 32;
  m.n_layers = 2;
  m.n_heads = 4;
  m.d_ff = 48;
  m.n_experts = 4;
  m.top_k = 2;
  m.d_expert = 24;
  m.init_std = 0.2;  // larger than training's 0.02 so every path carries signal in checks
  return m;
}

// A short training run of tiny_model() at training's init_std: 4 x 32 tokens a step, 4 steps.
inline Config tiny_train_config() {
  Config c;
  c.model = tiny_model();
  c.model.init_std = 0.02;
  c.train.batch_size = 4;
  c.train.seq_len = 32;
  c.train.steps = 4;
  c.train.lr = 1e-2;
  return c;
}

// Batches of `tokens` random ids in [0, vocab), the targets shifted by one: call i fills
// inputs and targets from random_tokens(tokens + 1, vocab, 100 + i).
inline BatchFn random_batches(std::int64_t tokens, std::int64_t vocab) {
  return [tokens, vocab](std::int64_t i, std::int32_t* in, std::int32_t* tg) {
    const auto x = random_tokens(tokens + 1, vocab, static_cast<unsigned>(100 + i));
    std::copy_n(x.begin(), tokens, in);
    std::copy_n(x.begin() + 1, tokens, tg);
  };
}

// A learnable toy language for convergence checks: each of 16 tokens determines the next
// (x -> 5x + 3 mod 16); micro-batch i, row r starts at (7i + 3r) mod 16. (B, T) rows.
inline BatchFn learnable_batches(std::int64_t b, std::int64_t t) {
  return [b, t](std::int64_t i, std::int32_t* in, std::int32_t* tg) {
    for (std::int64_t r = 0; r < b; ++r) {
      std::int32_t x = static_cast<std::int32_t>((i * 7 + r * 3) % 16);
      for (std::int64_t j = 0; j <= t; ++j) {
        if (j < t) in[r * t + j] = x;
        if (j > 0) tg[r * t + j - 1] = x;
        x = (x * 5 + 3) % 16;
      }
    }
  };
}

using MoeBlock = TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, TopK>>;
using MoeModel = DecoderLM<MoeBlock, RmsNorm>;

}  // namespace tmoe::test
