#define BOOST_TEST_MODULE recompute
#include <boost/test/unit_test.hpp>
#include <cstring>
#include <fstream>
#include <string>

#include "../support/tiny.hpp"

// Activation recomputation changes memory, never numbers: gradients, losses and whole
// training runs (router bias updates included) are bitwise those of recompute none, for
// every router family, experts that are transformer stacks, interleaved dense layers,
// shared experts and every dropout on.
using namespace tmoe;

namespace {

Config busy_config() {
  Config c = test::tiny_train_config();
  c.model.init_std = 0.1;
  c.model.dropout = 0.1;
  c.model.attn_dropout = 0.1;
  c.model.expert_dropout = "0.1,0.2,0.0,0.3";
  c.model.expert_drop_rate = 0.2;
  c.model.router_jitter = 0.05;
  c.model.router_noise_std = 0.1;
  c.train.steps = 3;
  return c;
}

template <class Model>
std::vector<float> run(Config c, const std::string& mode, double* loss_out) {
  c.model.recompute = mode;
  Trainer<Model, AdamW, Fp32, Serial, backend::Cpu> tr(c);
  BOOST_TEST(recompute_name(tr.model().recompute()) == mode);
  const BatchFn batches = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
  double loss = 0;
  std::vector<float> out;
  for (int s = 0; s < 3; ++s) {
    const auto st = tr.train_step(batches);
    loss += st.loss;
    if (s == 0) out.assign(tr.model().grads(), tr.model().grads() + tr.model().registry().total());
  }
  // after three steps: the weights (router biases included)
  out.insert(out.end(), tr.model().params(), tr.model().params() + tr.model().registry().total());
  *loss_out = loss;
  return out;
}

template <class Model>
void check_bitwise(const Config& c, const char* what) {
  double l0 = 0, l1 = 0, l2 = 0;
  const auto none = run<Model>(c, "none", &l0), full = run<Model>(c, "full", &l1), sel = run<Model>(c, "selective", &l2);
  BOOST_TEST_REQUIRE(none.size() == full.size());
  BOOST_TEST(std::memcmp(none.data(), full.data(), none.size() * sizeof(float)) == 0, what << ": full differs");
  BOOST_TEST(std::memcmp(none.data(), sel.data(), none.size() * sizeof(float)) == 0, what << ": selective differs");
  BOOST_TEST(l0 == l1);
  BOOST_TEST(l0 == l2);
}

}  // namespace

BOOST_AUTO_TEST_CASE(topk_swiglu_with_every_dropout) {
  check_bitwise<test::MoeModel>(busy_config(), "TopK SwiGLU");
}

BOOST_AUTO_TEST_CASE(deepseek_routing_with_bias_updates_and_shared_experts) {
  using Blk = TransformerBlock<CausalAttention<Rope>,
                               MoE<SwiGLU, GroupLimited<SigmoidBias>, Dropless, Balancing<SeqAuxLoss, BiasUpdate>>>;
  Config c = busy_config();
  c.model.n_groups = 2;
  c.model.top_groups = 1;
  c.model.n_shared_experts = 1;
  c.model.moe_first_dense = 1;
  c.model.n_layers = 3;
  c.model.bias_update_rate = 0.05;
  check_bitwise<DecoderLM<Blk, RmsNorm>>(c, "DeepSeek-style");
}

BOOST_AUTO_TEST_CASE(capacity_gelu_learned_positions_layernorm) {
  using Blk = TransformerBlock<CausalAttention<LearnedPositions>, MoE<GeluFFN, TopK, CapacityFactor>>;
  Config c = busy_config();
  c.model.capacity_factor = 0.75;
  c.model.moe_every = 2;
  check_bitwise<DecoderLM<Blk, LayerNorm>>(c, "GeLU capacity");
}

BOOST_AUTO_TEST_CASE(expert_choice_and_transformer_experts) {
  using Ec = TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, ExpertChoice, CapacityFactor>>;
  check_bitwise<DecoderLM<Ec, RmsNorm>>(busy_config(), "expert choice");
  using Tx = TransformerBlock<CausalAttention<Rope>, MoE<TransformerExpert<SwiGLU>, TopK>>;
  Config c = busy_config();
  c.model.expert_depth = 2;
  c.model.expert_heads = 2;
  check_bitwise<DecoderLM<Tx, RmsNorm>>(c, "TransformerExpert");
}

// The predicted activation bytes fall with each mode: selective drops the attention
// probabilities and the expert hidden units, full keeps one block.
BOOST_AUTO_TEST_CASE(predicted_activation_memory_by_mode) {
  Config c = test::tiny_train_config();
  c.model.n_layers = 4;
  c.model.context = 128;
  c.train.seq_len = 128;
  std::int64_t bytes[3];
  const char* modes[3] = {"none", "selective", "full"};
  for (int i = 0; i < 3; ++i) {
    c.model.recompute = modes[i];
    test::MoeModel::impl<float, backend::Cpu> m(c.model);
    bytes[i] = m.activation_bytes(c.train.batch_size, c.train.seq_len);
    BOOST_TEST_MESSAGE(modes[i] << ": " << bytes[i] << " bytes");
  }
  BOOST_TEST(bytes[1] < bytes[0]);
  BOOST_TEST(bytes[2] < bytes[1]);
}
