// Builds a tiny MoE language model from the installed headers, runs one forward pass on
// fixed tokens and prints the loss.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include <tmoe/tmoe.hpp>

using Block = tmoe::TransformerBlock<tmoe::CausalAttention<tmoe::Rope>, tmoe::MoE<tmoe::SwiGLU, tmoe::TopK>>;
using Model = tmoe::DecoderLM<Block, tmoe::RmsNorm>;

int main() {
  tmoe::ModelConfig cfg;
  cfg.vocab_size = 64;
  cfg.context = 16;
  cfg.d_model = 32;
  cfg.n_layers = 2;
  cfg.n_heads = 4;
  cfg.d_ff = 48;
  cfg.n_experts = 4;
  cfg.top_k = 2;
  cfg.d_expert = 24;

  Model::impl<float, tmoe::backend::Cpu> model(cfg);
  model.init(1);
  const std::int64_t b = 2, t = 16, n = b * t;
  std::vector<std::int32_t> ids(static_cast<std::size_t>(n)), targets(ids.size());
  for (std::int64_t i = 0; i < n; ++i) {
    ids[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((7 * i + 3) % cfg.vocab_size);
    targets[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((7 * i + 10) % cfg.vocab_size);
  }
  const tmoe::LossParts loss = model.forward(ids.data(), targets.data(), b, t);
  std::printf("tmoe consumer: %lld parameters, cross-entropy %.6f, loss %.6f\n",
              static_cast<long long>(model.registry().count()), loss.ce, loss.total);
  return std::isfinite(loss.total) && loss.total > 0 ? 0 : 1;
}
