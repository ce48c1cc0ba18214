// Preset mixtral-like on backend::Cuda (--backend cuda): the same model type and training
// program as preset_mixtral_like*.cpp, compiled by nvcc with tmoe/cuda.hpp (no Eigen).
#include "preset_models.hpp"
#include "train.hpp"

namespace train_moe_lm {
int run_mixtral_like_cuda(const Options& o) { return train_on<models::MixtralLike, Fp32, backend::Cuda>(o); }
int run_mixtral_like_bf16_cuda(const Options& o) { return train_on<models::MixtralLike, MixedBf16, backend::Cuda>(o); }
}  // namespace train_moe_lm
