// Preset mixtral-like: top-2 softmax routing over SwiGLU experts, dropless.
#include "preset_models.hpp"
#include "train.hpp"

namespace train_moe_lm {
int run_mixtral_like(const Options& o) { return train_main<models::MixtralLike>(o); }
}  // namespace train_moe_lm
