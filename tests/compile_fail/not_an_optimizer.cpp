// Must not compile: the Trainer's optimizer has a name but no slots or update(), so it is not
// an Optimizer. Expected: "is not an Optimizer".
#include <tmoe/tmoe.hpp>

struct NotAnOptimizer {
  static constexpr const char* name = "not_an_optimizer";
};

using Block = tmoe::TransformerBlock<tmoe::CausalAttention<tmoe::Rope>, tmoe::MoE<tmoe::SwiGLU, tmoe::TopK>>;
using Model = tmoe::DecoderLM<Block, tmoe::RmsNorm>;

template class tmoe::Trainer<Model, NotAnOptimizer, tmoe::Fp32, tmoe::Serial, tmoe::backend::Cpu>;
