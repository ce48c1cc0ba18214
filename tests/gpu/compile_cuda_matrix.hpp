#pragma once
// The compile matrix of the CUDA backend (label compile): every member of Trainer, the model
// and its layers instantiated on backend::Cuda for each precision policy, dense blocks and
// the MoE presets that run on the GPU (every router but TransformerExpert experts, which
// the GPU refuses), so that CI (nvcc, no GPU) proves they build. Running it checks only
// the concepts; it needs no device.

#if defined(TMOE_BOOST_TEST_HEADER_ONLY)
#include <boost/test/included/unit_test.hpp>
#else
#include <boost/test/unit_test.hpp>
#endif

#include "tmoe/cuda.hpp"

namespace {
using namespace tmoe;
template <class Ffn, class Pos = Rope, class Norm = RmsNorm>
using Lm = DecoderLM<TransformerBlock<CausalAttention<Pos>, Ffn>, Norm>;
using DenseSwiGLU = Lm<Dense<SwiGLU>>;
using DenseGelu = Lm<Dense<GeluFFN>, LearnedPositions, LayerNorm>;
using MixtralLike = Lm<MoE<SwiGLU, TopK, Dropless, Balancing<AuxLoss, ZLoss>>>;
using DeepseekLike = Lm<MoE<SwiGLU, GroupLimited<SigmoidBias>, Dropless, Balancing<SeqAuxLoss, BiasUpdate>>>;
using SwitchLm = Lm<SwitchMoE<GeluFFN>, LearnedPositions, LayerNorm>;
using ExpertChoiceLm = Lm<MoE<SwiGLU, ExpertChoice, CapacityFactor, Balancing<ZLoss>>>;
using HashLm = Lm<MoE<SwiGLU, Hash, Dropless, Balancing<AuxLoss>>>;
}  // namespace

