// The compile matrix of the CUDA backend (label compile): every member of Trainer, the model
// and its layers instantiated on backend::Cuda for each precision policy and block kind
// that runs on the GPU, so that CI (nvcc, no GPU) proves they build. Running it checks only
// the concepts; it needs no device.
#define BOOST_TEST_MODULE cuda_compile_matrix
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
}  // namespace

template class tmoe::Trainer<DenseSwiGLU, tmoe::StandardOptimizers, tmoe::Fp32, tmoe::Serial, tmoe::backend::Cuda>;
template class tmoe::Trainer<DenseSwiGLU, tmoe::StandardOptimizers, tmoe::MixedBf16, tmoe::Serial, tmoe::backend::Cuda>;
template class tmoe::Trainer<DenseGelu, tmoe::AdamW, tmoe::MixedFp16, tmoe::Serial, tmoe::backend::Cuda>;
template class tmoe::Trainer<DenseGelu, tmoe::AdamW, tmoe::Fp64, tmoe::Serial, tmoe::backend::Cuda>;

BOOST_AUTO_TEST_CASE(cuda_backend_satisfies_the_concepts) {
  BOOST_TEST(tmoe::Backend<tmoe::backend::Cuda>);
  BOOST_TEST((std::is_same_v<tmoe::backend::Cuda::Space, tmoe::CudaSpace>));
  BOOST_TEST(std::string(tmoe::backend::Cuda::name) == "cuda");
}
