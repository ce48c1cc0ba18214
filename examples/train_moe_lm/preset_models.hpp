#pragma once
// The model type of each train_moe_lm preset (presets.hpp names them and gives their
// defaults). Kept apart from the training program so that the compile matrix
// (tests/compile/test_instantiate_presets.cpp) instantiates exactly these types.
#if defined(__CUDACC__)
#include "tmoe/cuda.hpp"
#else
#include "tmoe/tmoe.hpp"
#endif

namespace train_moe_lm::models {

using namespace tmoe;

template <class Ffn>
using Lm = DecoderLM<TransformerBlock<CausalAttention<Rope>, Ffn>, RmsNorm>;

using MixtralLike = Lm<MoE<SwiGLU, TopK, Dropless, Balancing<AuxLoss, ZLoss>>>;
using DeepseekLike = Lm<MoE<SwiGLU, GroupLimited<SigmoidBias>, Dropless, Balancing<SeqAuxLoss, BiasUpdate>>>;
using Switch = Lm<SwitchMoE<SwiGLU>>;
using ExpertChoiceLm = Lm<MoE<SwiGLU, ExpertChoice, CapacityFactor, Balancing<ZLoss>>>;
using HashLm = Lm<MoE<SwiGLU, Hash, Dropless, Balancing<AuxLoss>>>;
using Seed = Lm<MoE<TransformerExpert<SwiGLU>, TopK, Dropless, Balancing<AuxLoss, ZLoss>>>;

}  // namespace train_moe_lm::models
