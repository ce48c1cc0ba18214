#pragma once
// Shared by the tests: the tiny shapes of DESIGN.md (d_model 32, 2 layers, 4 experts,
// context 32) and a few helpers.
#include <cstdint>
#include <random>
#include <vector>

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

inline std::vector<std::int32_t> random_tokens(std::int64_t n, std::int64_t vocab, unsigned seed) {
  std::mt19937 g(seed);
  std::vector<std::int32_t> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = static_cast<std::int32_t>(g() % static_cast<unsigned>(vocab));
  return v;
}

using MoeBlock = TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, TopK>>;
using MoeModel = DecoderLM<MoeBlock, RmsNorm>;

}  // namespace tmoe::test
