// One half of the CUDA compile matrix (compile_cuda_matrix.hpp): the MoE presets.
#define BOOST_TEST_MODULE cuda_compile_matrix_moe
#include "compile_cuda_matrix.hpp"

template class tmoe::Trainer<MixtralLike, tmoe::StandardOptimizers, tmoe::Fp32, tmoe::Serial, tmoe::backend::Cuda>;
template class tmoe::Trainer<MixtralLike, tmoe::StandardOptimizers, tmoe::MixedBf16, tmoe::Serial, tmoe::backend::Cuda>;
template class tmoe::Trainer<DeepseekLike, tmoe::StandardOptimizers, tmoe::MixedFp16, tmoe::Serial, tmoe::backend::Cuda>;
template class tmoe::Trainer<SwitchLm, tmoe::AdamW, tmoe::Fp32, tmoe::Serial, tmoe::backend::Cuda>;
template class tmoe::Trainer<ExpertChoiceLm, tmoe::AdamW, tmoe::Fp32, tmoe::Serial, tmoe::backend::Cuda>;
template class tmoe::Trainer<HashLm, tmoe::AdamW, tmoe::Fp32, tmoe::Serial, tmoe::backend::Cuda>;

BOOST_AUTO_TEST_CASE(cuda_backend_satisfies_the_concepts) {
  BOOST_TEST(tmoe::Backend<tmoe::backend::Cuda>);
  BOOST_TEST((std::is_same_v<tmoe::backend::Cuda::Space, tmoe::CudaSpace>));
  BOOST_TEST(std::string(tmoe::backend::Cuda::name) == "cuda");
}
