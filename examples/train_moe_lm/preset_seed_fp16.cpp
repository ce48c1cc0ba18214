// Preset seed with its article's precision: FP16 mixed precision with a loss scaler
// (MixedFp16; the preset's default train.precision).
#include "preset_models.hpp"
#include "train.hpp"

namespace train_moe_lm {
int run_seed_fp16(const Options& o) { return train_main<models::Seed, MixedFp16>(o); }
}  // namespace train_moe_lm
