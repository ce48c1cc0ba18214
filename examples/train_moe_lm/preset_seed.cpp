// Preset seed: the article's design — experts that are stacks of small transformer layers over
// the tokens routed to them, with a router temperature against expert saturation.
#include "preset_models.hpp"
#include "train.hpp"

namespace train_moe_lm {
int run_seed(const Options& o) { return train_main<models::Seed>(o); }
}  // namespace train_moe_lm
