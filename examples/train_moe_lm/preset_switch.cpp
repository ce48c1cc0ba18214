// Preset switch: Switch Transformer routing (top-1, unnormalised, capacity factor, dropping).
#include "preset_models.hpp"
#include "train.hpp"

namespace train_moe_lm {
int run_switch(const Options& o) { return train_main<models::Switch>(o); }
}  // namespace train_moe_lm
