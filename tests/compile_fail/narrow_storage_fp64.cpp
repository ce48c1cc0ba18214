// Must not compile: bf16 storage with fp64 arithmetic (narrow values are rounded through
// fp32, so a narrow storage tag needs compute = float). Expected: "bf16/fp16 storage needs
// compute = float".
#include <tmoe/tmoe.hpp>

struct Bf16OnDouble {
  static constexpr const char* name = "bf16_on_double";
  using storage = tmoe::bf16;
  using compute = double;
  using master = double;
  using grad = double;
  using state = double;
  static constexpr bool loss_scaling = false;
};

using Block = tmoe::TransformerBlock<tmoe::CausalAttention<tmoe::Rope>, tmoe::MoE<tmoe::SwiGLU, tmoe::TopK>>;
using Model = tmoe::DecoderLM<Block, tmoe::RmsNorm>;

template class tmoe::Trainer<Model, tmoe::AdamW, Bf16OnDouble, tmoe::Serial, tmoe::backend::Cpu>;
