#define BOOST_TEST_MODULE moe_resume
// Resume is bitwise identical to an uninterrupted run for MoE designs with state beyond the
// weights: DeepSeek-V3 routing (the router bias that BiasUpdate moves after every step is a
// checkpointed buffer), router noise and input jitter (keyed by seed, step and token, so a
// resumed run draws the same noise), shared experts and a dense first layer; and expert
// choice with capacity.
#include <boost/test/unit_test.hpp>

#include <cstring>
#include <vector>

#include "../support/files.hpp"
#include "../support/tiny.hpp"
#include "tmoe/io/safetensors.hpp"
#include "tmoe/train/checkpointing.hpp"

using namespace tmoe;

namespace {
using DeepSeek = DecoderLM<TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, GroupLimited<SigmoidBias>, Dropless,
                                                                          Balancing<SeqAuxLoss, ZLoss, BiasUpdate>>>,
                           RmsNorm>;
using Choice = DecoderLM<TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, ExpertChoice, CapacityFactor>>, RmsNorm>;

Config config() {
  Config c = test::tiny_train_config();
  c.train.steps = 6;
  c.train.grad_accum = 2;
  c.model.n_layers = 3;
  c.model.moe_first_dense = 1;
  c.model.n_groups = 2;
  c.model.top_groups = 1;
  c.model.n_shared_experts = 1;
  c.model.seq_aux_loss_weight = 0.01;
  c.model.bias_update_rate = 0.01;
  c.model.router_noise_std = 0.1;
  c.model.router_jitter = 0.05;
  c.model.capacity_factor = 0.75;
  return c;
}
const nlohmann::json kData = {{"fingerprint", 1}};

template <class Model>
void check_resume(const char* what, const char* bias_name) {
  using Tr = Trainer<Model, AdamW, Fp32, Serial, backend::Cpu>;
  const auto batches = test::random_batches(4 * 32, 64);
  test::TempDir tmp;
  Tr straight(config());
  std::vector<double> all;
  for (int i = 0; i < 6; ++i) all.push_back(straight.train_step(batches).loss);
  io::CheckpointDir dir(tmp.file("ckpt"), 2);
  {
    Tr first(config());
    for (int i = 0; i < 3; ++i) first.train_step(batches);
    save_checkpoint(dir, first, kData);
  }
  Tr resumed(config());
  const auto info = resume_checkpoint(dir, resumed, kData);
  BOOST_REQUIRE(info.has_value());
  for (int i = 3; i < 6; ++i) BOOST_TEST(resumed.train_step(batches).loss == all[i], what << ": step " << i);
  const auto n = static_cast<std::size_t>(straight.model().registry().total());
  BOOST_TEST(std::memcmp(resumed.model().params(), straight.model().params(), n * sizeof(float)) == 0,
             what << ": weights differ after the resume");
  if (bias_name) {
    const auto f = io::SafetensorsFile::open(info->folder + "/model.safetensors");
    BOOST_TEST(f.has(bias_name), what << ": the router bias is not in the checkpoint");
    const ParamInfo* b = straight.model().registry().find(bias_name);
    bool moved = false;
    for (std::int64_t i = 0; i < b->numel(); ++i) moved = moved || straight.model().params()[b->offset + i] != 0.0f;
    BOOST_TEST(moved, what << ": the bias never moved, the test would not see a lost bias");
  }
}
}  // namespace

BOOST_AUTO_TEST_CASE(deepseek_routing_with_noise_resumes_bitwise) {
  check_resume<DeepSeek>("GroupLimited<SigmoidBias>", "layers.1.moe.router.bias");
}

BOOST_AUTO_TEST_CASE(expert_choice_resumes_bitwise) { check_resume<Choice>("ExpertChoice", nullptr); }
