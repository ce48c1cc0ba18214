#define BOOST_TEST_MODULE model_directional
#include <boost/test/unit_test.hpp>
#include <cmath>

#include "../support/tiny.hpp"

using namespace tmoe;

namespace {
// Directional derivative check of the whole model: (L(θ+εd) − L(θ−εd)) / 2ε against ∇L·d
// along random directions d, in fp64.
template <class M>
void check_model(ModelConfig cfg, unsigned seed) {
  typename M::template impl<double, backend::Cpu> model(cfg);
  model.init(seed);
  const std::int64_t b = 2, t = 16, n = b * t;
  auto ids = test::random_tokens(n, cfg.vocab_size, seed + 1);
  auto tg = test::random_tokens(n, cfg.vocab_size, seed + 2);
  model.zero_grad();
  model.forward(ids.data(), tg.data(), b, t);
  model.backward(1.0);
  const auto& reg = model.registry();
  std::vector<double> g(model.grads(), model.grads() + reg.total());
  std::vector<double> p0(model.params(), model.params() + reg.total());
  for (int dir = 0; dir < 3; ++dir) {
    RngKey key{seed, 0, site_id(Site::kTest), static_cast<std::uint32_t>(dir)};
    std::vector<double> d(p0.size());
    double gd = 0;
    for (std::size_t i = 0; i < d.size(); ++i) {
      d[i] = key.normal(i);
      gd += g[i] * d[i];
    }
    const double eps = 1e-6;
    auto loss_at = [&](double s) {
      for (std::size_t i = 0; i < d.size(); ++i) model.params()[i] = p0[i] + s * d[i];
      return model.forward(ids.data(), tg.data(), b, t).total;
    };
    const double fd = (loss_at(eps) - loss_at(-eps)) / (2 * eps);
    for (std::size_t i = 0; i < d.size(); ++i) model.params()[i] = p0[i];
    BOOST_TEST_MESSAGE("dir " << dir << ": analytic " << gd << " numeric " << fd);
    BOOST_TEST(std::abs(fd - gd) <= 1e-6 * std::max(1.0, std::abs(gd)), "analytic " << gd << " numeric " << fd);
  }
}
}  // namespace

BOOST_AUTO_TEST_CASE(moe_swiglu_topk_rope_rmsnorm_tied) { check_model<test::MoeModel>(test::tiny_model(), 11); }

BOOST_AUTO_TEST_CASE(moe_unnormalised_router_untied_head) {
  auto cfg = test::tiny_model();
  cfg.router_renormalize = false;
  cfg.tie_embeddings = false;
  cfg.top_k = 1;
  check_model<test::MoeModel>(cfg, 12);
}

BOOST_AUTO_TEST_CASE(dense_gelu_learned_positions_layernorm_bias) {
  auto cfg = test::tiny_model();
  cfg.linear_bias = true;
  using Block = TransformerBlock<CausalAttention<LearnedPositions>, Dense<GeluFFN>>;
  check_model<DecoderLM<Block, LayerNorm>>(cfg, 13);
}

BOOST_AUTO_TEST_CASE(moe_gelu_experts_exact_gelu) {
  auto cfg = test::tiny_model();
  cfg.gelu_exact = true;
  using Block = TransformerBlock<CausalAttention<Rope>, MoE<GeluFFN, TopK>>;
  check_model<DecoderLM<Block, RmsNorm>>(cfg, 14);
}
