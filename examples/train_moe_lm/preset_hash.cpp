// Preset hash: Hash layers — the experts of a token are a fixed function of its id.
#include "preset_models.hpp"
#include "train.hpp"

namespace train_moe_lm {
int run_hash(const Options& o) { return train_main<models::HashLm>(o); }
}  // namespace train_moe_lm
