// Preset expert-choice: each expert picks its top-C tokens of the micro-batch.
#include "preset_models.hpp"
#include "train.hpp"

namespace train_moe_lm {
int run_expert_choice(const Options& o) { return train_main<models::ExpertChoiceLm>(o); }
}  // namespace train_moe_lm
