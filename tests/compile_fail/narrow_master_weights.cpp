// Must not compile: a precision policy whose master weights are bf16 (an optimizer step on
// narrow master weights rounds small updates away). Expected: "master weights must be a real
// floating-point type at least as wide as the compute type".
#include <tmoe/tmoe.hpp>

struct Bf16Master {
  static constexpr const char* name = "bf16_master";
  using storage = tmoe::bf16;
  using compute = float;
  using master = tmoe::bf16;
  using grad = float;
  using state = float;
  static constexpr bool loss_scaling = false;
};

using Block = tmoe::TransformerBlock<tmoe::CausalAttention<tmoe::Rope>, tmoe::MoE<tmoe::SwiGLU, tmoe::TopK>>;
using Model = tmoe::DecoderLM<Block, tmoe::RmsNorm>;

template class tmoe::Trainer<Model, tmoe::AdamW, Bf16Master, tmoe::Serial, tmoe::backend::Cpu>;
