// Preset mixtral-like with train.precision=bf16: MixedBf16 (bf16 weights and activations,
// fp32 products, master weights and optimizer state).
#include "preset_models.hpp"
#include "train.hpp"

namespace train_moe_lm {
int run_mixtral_like_bf16(const Options& o) { return train_main<models::MixtralLike, MixedBf16>(o); }
}  // namespace train_moe_lm
