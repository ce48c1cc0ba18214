#define BOOST_TEST_MODULE instantiate_presets
// Every preset of the example trainer (examples/train_moe_lm/preset_models.hpp), as a whole
// Trainer in fp32 with the run-time optimizer choice: one step of two micro-batches, an evaluation batch and two generated
// tokens, with each preset's own defaults (presets.hpp) on a tiny model.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <string>

#include "../../examples/train_moe_lm/preset_models.hpp"
#include "../../examples/train_moe_lm/presets.hpp"
#include "../support/tiny.hpp"

using namespace tmoe;
namespace m = train_moe_lm::models;

namespace {

template <class Model>
void run(const char* preset) {
  Config cfg = test::tiny_train_config();
  for (const auto& p : train_moe_lm::presets())
    if (std::string(p.name) == preset) p.defaults(cfg);
  cfg.model.preset = preset;
  cfg.model.n_layers = 2;
  cfg.model.expert_heads = cfg.model.expert_heads > cfg.model.n_heads ? cfg.model.n_heads : cfg.model.expert_heads;
  cfg.train.grad_accum = 2;
  // The example's optimizer policy, with the preset's train defaults (the seed's
  // sign_momentum, clamps and expert L2); precision variants are the example's own tests.
  Trainer<Model, StandardOptimizers, Fp32, Serial, backend::Cpu> tr(cfg);
  const auto batches = test::random_batches(cfg.train.batch_size * cfg.train.seq_len, cfg.model.vocab_size);
  const StepStats st = tr.train_step(batches);
  BOOST_TEST_MESSAGE(preset << ": loss " << st.loss << ", aux " << st.aux);
  BOOST_TEST(std::isfinite(st.loss), preset);
  BOOST_TEST(st.grad_norm > 0.0, preset);
  std::int64_t moe_layers = 0;
  for (const auto& s : st.moe) moe_layers += !s.tokens.empty();
  std::int64_t expected = 0;
  for (std::int64_t l = 0; l < cfg.model.n_layers; ++l) expected += cfg.model.is_moe_layer(l);
  BOOST_TEST(moe_layers == expected, preset);
  BOOST_TEST(std::isfinite(tr.evaluate(batches, 1)), preset);
  BOOST_TEST(tr.generate({1, 2, 3}, 2, 0.0, 7).size() == 2u, preset);
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_preset_trains) {
  BOOST_TEST(train_moe_lm::presets().size() == 6u);
  run<m::MixtralLike>("mixtral-like");
  run<m::DeepseekLike>("deepseek-like");
  run<m::Switch>("switch");
  run<m::ExpertChoiceLm>("expert-choice");
  run<m::HashLm>("hash");
  run<m::Seed>("seed");
}
