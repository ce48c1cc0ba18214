#define BOOST_TEST_MODULE layers_block
// fp64 central-difference gradient checks (see test_layers_common.hpp) of
// TransformerBlock<Attn, Ffn>::impl<double, Cpu, Norm> (scalar Σ(out ⊙ R) + block.loss(),
// backward with grad_scale = 1) and of DecoderLM end to end, which adds the token
// embedding, learned positions, the final norm, tied/untied head and cross-entropy
// (scalar: the model's total loss, mean CE + the MoE layers' balancing terms).
#include <boost/test/unit_test.hpp>

#include "test_layers_common.hpp"

using namespace gc;

namespace {

ModelConfig block_cfg() {
  auto cfg = test::tiny_model();
  cfg.aux_loss_weight = 0.3;
  cfg.z_loss_weight = 0.05;
  return cfg;
}

template <class Attn, class Ffn, class Norm>
void check_block(const char* what, const ModelConfig& cfg, std::int64_t b, std::int64_t t, unsigned seed) {
  using Block = TransformerBlock<Attn, Ffn>;
  const std::int64_t c = cfg.d_model, n = b * t;
  Buffers buf;
  typename Block::template impl<double, Cpu, Norm> blk;
  blk.declare(buf.reg, "layers.0", cfg);
  buf.bind(blk, seed);
  auto route = [&] {
    if constexpr (Ffn::is_moe)
      return std::vector<std::int32_t>(blk.ffn.a_expert.begin(), blk.ffn.a_expert.end());
    else
      return std::vector<std::int32_t>{};
  };
  // The forward is the composition h = x + attn(norm1(x)), y = h + ffn(norm2(h)) of layers
  // checked on their own: rebuild it from separately declared layers sharing the buffers.
  {
    typename Norm::template impl<double, Cpu> n1, n2;
    typename Attn::template impl<double, Cpu> attn;
    typename Ffn::template impl<double, Cpu> ffn;
    ParamRegistry r2;
    n1.declare(r2, "layers.0.attn_norm", c, cfg.norm_eps);
    attn.declare(r2, "layers.0.attn", cfg);
    n2.declare(r2, "layers.0.ffn_norm", c, cfg.norm_eps);
    ffn.declare(r2, std::string("layers.0.") + (Ffn::is_moe ? "moe" : "ffn"), cfg);
    BOOST_REQUIRE_EQUAL(r2.total(), buf.reg.total());
    std::vector<double> g2(buf.g.size());
    n1.bind(r2, buf.p.data(), g2.data());
    attn.bind(r2, buf.p.data(), g2.data());
    n2.bind(r2, buf.p.data(), g2.data());
    ffn.bind(r2, buf.p.data(), g2.data());
    const auto x = randn(n * c, seed + 60);  // the input run_layer draws
    std::vector<double> a(n * c), h(n * c), f(n * c), ref(n * c), y(n * c);
    n1.forward(x.data(), a.data(), n);
    attn.forward(a.data(), h.data(), b, t);
    for (std::int64_t i = 0; i < n * c; ++i) h[i] += x[i];
    n2.forward(h.data(), a.data(), n);
    ffn.forward(a.data(), f.data(), n);
    for (std::int64_t i = 0; i < n * c; ++i) ref[i] = h[i] + f[i];
    blk.forward(x.data(), y.data(), b, t);
    const double e = max_abs_diff(y, ref);
    BOOST_TEST(e == 0.0, what << ": block forward differs from its composition by " << e);
    BOOST_TEST(blk.loss() == ffn.loss());
    if (Ffn::is_moe) BOOST_TEST(blk.loss() > 0.0);
  }
  run_layer(
      what, buf.reg, buf.p, buf.g, n * c, n * c, [&](const double* x, double* y) { blk.forward(x, y, b, t); },
      [&](const double* dy, double* dx, bool) { blk.backward(dy, dx, 1.0); }, [&] { return blk.loss(); }, route,
      Options{}, /*has_accumulate=*/false, seed + 60);
}

}  // namespace

BOOST_AUTO_TEST_CASE(block_rope_moe_swiglu_rmsnorm) {
  check_block<CausalAttention<Rope>, MoE<SwiGLU, TopK>, RmsNorm>("Block<Rope, MoE<SwiGLU>, RmsNorm>", block_cfg(), 2,
                                                                  8, 1);
}

BOOST_AUTO_TEST_CASE(block_rope_moe_gelu_unnormalised_layernorm) {
  auto cfg = block_cfg();
  cfg.router_renormalize = false;
  check_block<CausalAttention<Rope>, MoE<GeluFFN, TopK>, LayerNorm>(
      "Block<Rope, MoE<GeluFFN> unnormalised, LayerNorm>", cfg, 2, 8, 2);
}

BOOST_AUTO_TEST_CASE(block_learned_dense_gelu_layernorm_bias) {
  auto cfg = block_cfg();
  cfg.linear_bias = true;
  cfg.gelu_exact = true;
  check_block<CausalAttention<LearnedPositions>, Dense<GeluFFN>, LayerNorm>(
      "Block<LearnedPositions, Dense<GeluFFN> exact, LayerNorm, bias>", cfg, 2, 8, 3);
}

BOOST_AUTO_TEST_CASE(block_rope_dense_swiglu_rmsnorm) {
  check_block<CausalAttention<Rope>, Dense<SwiGLU>, RmsNorm>("Block<Rope, Dense<SwiGLU>, RmsNorm>", block_cfg(), 1,
                                                              16, 4);
}

// ---- DecoderLM: embedding, positions, final norm, head, cross-entropy ----------------------

namespace {

// The blocks' tensors are checked in full above; here every element of the embedding,
// position and head tables, and random subsets of the block tensors larger than 512.
template <class Model>
void check_model(const char* what, const ModelConfig& cfg, unsigned seed) {
  BOOST_TEST_MESSAGE(what);
  Options o;
  o.all_up_to = 512;
  o.subset = 96;
  o.full = {"embed.weight", "pos_embed.weight", "head.weight"};
  typename Model::template impl<double, Cpu> model(cfg);
  const auto& reg = model.registry();
  std::vector<double> p(static_cast<std::size_t>(reg.total()));
  fill_params(reg, p, seed);
  // embeddings of the usual size, so the logits are not saturated
  for (const ParamInfo& pi : reg.params())
    if (pi.has(kTagEmbedding) || pi.has(kTagPosition) || pi.has(kTagHead)) {
      const auto v = randn(static_cast<std::size_t>(pi.numel()), seed + 500 + static_cast<unsigned>(pi.offset), 0.5);
      std::copy(v.begin(), v.end(), p.begin() + pi.offset);
    }
  std::copy(p.begin(), p.end(), model.params());
  const std::int64_t b = 2, t = 8, n = b * t;
  // ids drawn from half the vocabulary, so some embedding rows are unused (zero gradient
  // with a tied head only through the head), and repeated
  const auto ids = test::random_tokens(n, cfg.vocab_size / 2, seed + 1);
  const auto tg = test::random_tokens(n, cfg.vocab_size, seed + 2);
  model.zero_grad();
  const LossParts lp = model.forward(ids.data(), tg.data(), b, t);
  model.backward(1.0);
  BOOST_TEST(lp.total == lp.ce + lp.aux);
  BOOST_TEST_MESSAGE("  ce " << lp.ce << " aux " << lp.aux);
  auto targets = param_targets(reg, model.params(), model.grads());
  auto route = [&] {
    std::vector<std::int32_t> r;
    if constexpr (Model::block_policy::ffn_policy::is_moe)
      for (std::int64_t l = 0; l < model.n_layers(); ++l) {
        auto& f = model.block(l).ffn;
        r.insert(r.end(), f.a_expert.begin(), f.a_expert.end());
      }
    return r;
  };
  check(targets, [&] { return model.forward(ids.data(), tg.data(), b, t).total; }, route, o);
}

}  // namespace

BOOST_AUTO_TEST_CASE(decoder_learned_positions_untied_dense) {
  auto cfg = block_cfg();
  cfg.n_layers = 1;
  cfg.tie_embeddings = false;
  using Block = TransformerBlock<CausalAttention<LearnedPositions>, Dense<SwiGLU>>;
  check_model<DecoderLM<Block, RmsNorm>>("DecoderLM<LearnedPositions, Dense<SwiGLU>>, untied head", cfg, 5);
}

BOOST_AUTO_TEST_CASE(decoder_rope_tied_moe) {
  auto cfg = block_cfg();
  cfg.n_layers = 2;
  check_model<DecoderLM<TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, TopK>>, RmsNorm>>(
      "DecoderLM<Rope, MoE<SwiGLU>>, tied head, 2 layers", cfg, 6);
}

BOOST_AUTO_TEST_CASE(decoder_learned_positions_layernorm_moe_gelu) {
  auto cfg = block_cfg();
  cfg.n_layers = 1;
  cfg.router_renormalize = false;
  cfg.linear_bias = true;
  using Block = TransformerBlock<CausalAttention<LearnedPositions>, MoE<GeluFFN, TopK>>;
  check_model<DecoderLM<Block, LayerNorm>>("DecoderLM<LearnedPositions, MoE<GeluFFN>, LayerNorm>, tied head", cfg, 7);
}
