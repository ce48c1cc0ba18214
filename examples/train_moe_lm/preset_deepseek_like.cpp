// Preset deepseek-like: DeepSeek-V3 routing (sigmoid scores, group-limited top-k, auxiliary-
// loss-free bias balancing plus a small sequence-wise loss), a shared expert, dense first layer.
#include "preset_models.hpp"
#include "train.hpp"

namespace train_moe_lm {
int run_deepseek_like(const Options& o) { return train_main<models::DeepseekLike>(o); }
}  // namespace train_moe_lm
