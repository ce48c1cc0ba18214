// Preset mixtral-like with train.precision=fp16: MixedFp16 with loss scaling (train.loss_scaling).
#include "preset_models.hpp"
#include "train.hpp"

namespace train_moe_lm {
int run_mixtral_like_fp16(const Options& o) { return train_main<models::MixtralLike, MixedFp16>(o); }
}  // namespace train_moe_lm
