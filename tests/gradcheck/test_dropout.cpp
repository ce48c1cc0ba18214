#define BOOST_TEST_MODULE dropout_gradcheck
// fp64 central-difference gradient checks (see test_layers_common.hpp) with every dropout on
// (layers/dropout.hpp, docs/regularisation.md). The masks are a function of the RouteContext
// (seed, step, token offset, layer), which stays fixed across the differences, so each layer
// is a deterministic, piecewise smooth function of its inputs and parameters:
//   - a block with a dense FFN: model.dropout (attention and FFN outputs) + attn_dropout;
//   - blocks with MoE: expert_dropout with a different rate per expert, expert_drop_rate
//     (gates rescaled; renormalised and unnormalised routers), dropout, attn_dropout;
//     SwiGLU, GeluFFN and TransformerExpert (whose attention and inner FFN drop too);
//   - the MoE layer alone with expert drop under ExpertChoice and Hash routing;
//   - the attention layer alone with probability dropout, T spanning several query blocks,
//     with and without stored probabilities.
#include <boost/test/unit_test.hpp>

#include "test_layers_common.hpp"

using namespace gc;

namespace {

RouteContext train_ctx(std::int64_t b, std::int64_t t, std::int64_t layer = 3) {
  RouteContext ctx;
  ctx.training = true;
  ctx.seed = 20240611;
  ctx.step = 5;
  ctx.token_offset = 77;
  ctx.layer = layer;
  ctx.batch = b;
  ctx.seq_len = t;
  return ctx;
}

ModelConfig drop_cfg() {
  auto cfg = test::tiny_model();
  cfg.aux_loss_weight = 0.3;
  cfg.z_loss_weight = 0.05;
  cfg.dropout = 0.2;
  cfg.attn_dropout = 0.25;
  return cfg;
}

// Fraction of exact zeros in a vector (dropped values).
double zero_fraction(const std::vector<double>& v) {
  return static_cast<double>(std::count(v.begin(), v.end(), 0.0)) / static_cast<double>(v.size());
}

template <class Attn, class Ffn>
void check_block(const char* what, const ModelConfig& cfg, std::int64_t b, std::int64_t t, unsigned seed,
                 const Options& o = {}) {
  using Block = TransformerBlock<Attn, Ffn>;
  const std::int64_t c = cfg.d_model, n = b * t;
  Buffers buf;
  typename Block::template impl<double, Cpu, RmsNorm> blk;
  blk.declare(buf.reg, "layers.3", cfg);
  buf.bind(blk, seed);
  const RouteContext ctx = train_ctx(b, t);
  auto route = [&] {
    if constexpr (Ffn::is_moe)
      return std::vector<std::int32_t>(blk.ffn.a_expert.begin(), blk.ffn.a_expert.end());
    else
      return std::vector<std::int32_t>{};
  };
  // Dropout acts in training and not in evaluation.
  {
    const auto x = randn(n * c, seed + 60);
    std::vector<double> ye(n * c), yt(n * c);
    blk.forward(x.data(), ye.data(), b, t);
    blk.forward(x.data(), yt.data(), b, t, ctx);
    BOOST_TEST(max_abs_diff(ye, yt) > 1e-3, what << ": training output equals evaluation output");
    BOOST_TEST(blk.drop_a.active());
    BOOST_TEST(blk.drop_f.active());
    BOOST_TEST(blk.attn.opt.dropout == cfg.attn_dropout);
    if constexpr (Ffn::is_moe) {
      if (cfg.expert_drop_rate > 0) {
        const auto xd = blk.ffn.assignment_expert_dropped();
        BOOST_TEST(xd.size() == static_cast<std::size_t>(n * cfg.top_k));
        // some token lost one of its two experts and kept the other: the rescaling acts
        std::int64_t one = 0, both = 0;
        for (std::int64_t i = 0; i < n; ++i) {
          const int d = xd[2 * i] + xd[2 * i + 1];
          one += d == 1;
          both += d == 2;
        }
        BOOST_TEST_MESSAGE("  tokens with one expert dropped: " << one << ", with both: " << both);
        BOOST_TEST(one > 0);
      }
    }
  }
  run_layer(
      what, buf.reg, buf.p, buf.g, n * c, n * c, [&](const double* x, double* y) { blk.forward(x, y, b, t, ctx); },
      [&](const double* dy, double* dx, bool) { blk.backward(dy, dx, 1.0); }, [&] { return blk.loss(); }, route,
      o, /*has_accumulate=*/false, seed + 60);
}

}  // namespace

BOOST_AUTO_TEST_CASE(block_dense_swiglu_resid_and_attention_dropout) {
  check_block<CausalAttention<Rope>, Dense<SwiGLU>>("Block<Rope, Dense<SwiGLU>>, dropout 0.2, attn_dropout 0.25",
                                                     drop_cfg(), 2, 8, 11);
}

BOOST_AUTO_TEST_CASE(block_dense_gelu_learned_positions_bias) {
  auto cfg = drop_cfg();
  cfg.linear_bias = true;
  check_block<CausalAttention<LearnedPositions>, Dense<GeluFFN>>(
      "Block<LearnedPositions, Dense<GeluFFN>, bias>, dropout 0.2, attn_dropout 0.25", cfg, 1, 16, 12);
}

BOOST_AUTO_TEST_CASE(block_moe_swiglu_all_dropouts_unnormalised) {
  auto cfg = drop_cfg();
  cfg.router_renormalize = false;  // S = Σ gates varies with the logits
  cfg.expert_dropout = "0,0.1,0.3,0.5";
  cfg.expert_drop_rate = 0.3;
  check_block<CausalAttention<Rope>, MoE<SwiGLU, TopK>>(
      "Block<Rope, MoE<SwiGLU, TopK> unnormalised>, all dropouts, expert_drop_rate 0.3", cfg, 2, 8, 13);
}

BOOST_AUTO_TEST_CASE(block_moe_gelu_all_dropouts_renormalised) {
  auto cfg = drop_cfg();
  cfg.expert_dropout = "0.4,0,0.2,0.1";
  cfg.expert_drop_rate = 0.35;
  cfg.n_shared_experts = 1;  // no dropout inside the shared expert
  check_block<CausalAttention<Rope>, MoE<GeluFFN, TopK>>(
      "Block<Rope, MoE<GeluFFN, TopK> + shared>, all dropouts, expert_drop_rate 0.35", cfg, 2, 8, 14);
}

BOOST_AUTO_TEST_CASE(block_moe_transformer_expert_all_dropouts) {
  auto cfg = drop_cfg();
  cfg.router_renormalize = false;
  cfg.expert_dropout = "0.3,0.1,0,0.2";
  cfg.expert_drop_rate = 0.3;
  cfg.expert_depth = 2;
  cfg.expert_heads = 2;
  // Expert 3's gradients are ~100x smaller than the loss: at ε = 1e-6 the difference's
  // rounding noise (~3e-8) exceeds the 1e-6 relative bound; ε = 1e-5 puts it 10x lower.
  Options o;
  o.eps = 1e-5;
  check_block<CausalAttention<Rope>, MoE<TransformerExpert<SwiGLU>, TopK>>(
      "Block<Rope, MoE<TransformerExpert<SwiGLU> depth 2>>, all dropouts", cfg, 2, 8, 15, o);
}

// ---- the MoE layer alone: expert drop under expert-choice and hash routing -----------------

namespace {

template <class Layer>
void check_moe_layer(const char* what, const ModelConfig& cfg, unsigned seed, bool tokens) {
  const std::int64_t b = 4, t = 6, n = b * t, c = cfg.d_model;
  Buffers buf;
  typename Layer::template impl<double, Cpu> moe;
  moe.declare(buf.reg, "layers.3.moe", cfg);
  buf.bind(moe, seed);
  const auto ids = test::random_tokens(n, cfg.vocab_size, seed + 70);
  RouteContext ctx = train_ctx(b, t);
  if (tokens) ctx.tokens = ids.data();
  auto route = [&] {  // expert-choice assignments differ in their tokens
    std::vector<std::int32_t> r(moe.a_expert.begin(), moe.a_expert.end());
    r.insert(r.end(), moe.a_token.begin(), moe.a_token.end());
    return r;
  };
  {
    const auto x = randn(n * c, seed + 1);
    std::vector<double> y(n * c);
    moe.forward(x.data(), y.data(), n, ctx);
    const auto xd = moe.assignment_expert_dropped();
    const auto dropped = std::count(xd.begin(), xd.end(), std::uint8_t{1});
    BOOST_TEST_MESSAGE(what << ": " << dropped << " of " << xd.size() << " assignments dropped");
    BOOST_TEST(dropped > 0);
    BOOST_TEST(dropped < static_cast<std::ptrdiff_t>(xd.size()));
  }
  run_layer(
      what, buf.reg, buf.p, buf.g, n * c, n * c, [&](const double* x, double* y) { moe.forward(x, y, n, ctx); },
      [&](const double* dy, double* dx, bool acc) { moe.backward(dy, dx, acc, 1.0); }, [&] { return moe.loss(); },
      route, Options{}, true, seed);
}

}  // namespace

BOOST_AUTO_TEST_CASE(moe_expert_choice_expert_drop) {
  auto cfg = drop_cfg();
  cfg.top_k = 1;
  cfg.capacity_factor = 2.0;  // tokens chosen by several experts
  cfg.expert_drop_rate = 0.3;
  cfg.expert_dropout = "0.2";
  check_moe_layer<MoE<SwiGLU, ExpertChoice, CapacityFactor>>("MoE<SwiGLU, ExpertChoice, CapacityFactor 2>, drop 0.3",
                                                             cfg, 21, false);
}

BOOST_AUTO_TEST_CASE(moe_topk_capacity_expert_drop) {
  auto cfg = drop_cfg();
  cfg.router_renormalize = false;
  cfg.capacity_factor = 0.8;  // capacity drops before the expert drop
  cfg.expert_drop_rate = 0.25;
  cfg.expert_dropout = "0.1,0.2,0.3,0.4";
  check_moe_layer<MoE<GeluFFN, TopK, CapacityFactor>>("MoE<GeluFFN, TopK, CapacityFactor 0.8>, drop 0.25", cfg, 22,
                                                      false);
}

BOOST_AUTO_TEST_CASE(moe_hash_expert_drop) {
  auto cfg = drop_cfg();
  cfg.expert_drop_rate = 0.3;
  cfg.expert_dropout = "0.3";
  check_moe_layer<MoE<GeluFFN, Hash>>("MoE<GeluFFN, Hash>, drop 0.3", cfg, 23, true);
}

// ---- attention-probability dropout, the layer alone ----------------------------------------

namespace {

void check_attention(const char* what, std::int64_t b, std::int64_t t, std::int64_t c, std::int64_t h, bool store,
                     unsigned seed) {
  auto cfg = drop_cfg();
  cfg.d_model = c;
  cfg.n_heads = h;
  cfg.context = std::max<std::int64_t>(t, 32);
  cfg.attn_dropout = 0.3;
  Buffers buf;
  CausalAttention<Rope>::impl<double, Cpu> attn;
  attn.declare(buf.reg, "layers.3.attn", cfg);
  attn.store_probs = store;
  buf.bind(attn, seed);
  const RouteContext ctx = train_ctx(b, t);
  {
    const auto x = randn(b * t * c, seed + 1);
    std::vector<double> ye(b * t * c), yt(b * t * c);
    attn.forward(x.data(), ye.data(), b, t);
    attn.forward(x.data(), yt.data(), b, t, ctx);
    BOOST_TEST(max_abs_diff(ye, yt) > 1e-3, what << ": dropout does not act");
    BOOST_TEST((attn.att.numel() == 0) == !store);
  }
  run_layer(
      what, buf.reg, buf.p, buf.g, b * t * c, b * t * c,
      [&](const double* x, double* y) { attn.forward(x, y, b, t, ctx); },
      [&](const double* dy, double* dx, bool acc) { attn.backward(dy, dx, acc); }, [] { return 0.0; }, NoRoute{},
      Options{}, true, seed);
}

}  // namespace

BOOST_AUTO_TEST_CASE(attention_probability_dropout) {
  check_attention("CausalAttention<Rope>, attn_dropout 0.3, B 2 T 12", 2, 12, 16, 2, true, 31);
}

BOOST_AUTO_TEST_CASE(attention_probability_dropout_several_query_blocks_recomputed) {
  // T = 80 > kAttnBlock = 64: two query blocks; probabilities not stored.
  check_attention("CausalAttention<Rope>, attn_dropout 0.3, B 1 T 80, store_probs false", 1, 80, 16, 2, false, 32);
}

// The op with dropout against a naive double reference (mask from DropoutMask::kept).
BOOST_AUTO_TEST_CASE(attention_op_matches_masked_reference) {
  const std::int64_t b = 2, t = 70, c = 8, h = 2, hd = c / h;
  const auto qkv = randn(b * t * 3 * c, 41);
  AttentionOptions o;
  o.dropout = 0.4;
  o.seed = 9;
  o.step = 2;
  o.site = dropout_site(1, DropoutUse::kAttnProbs);
  o.token_offset = 1000;
  o.head_stride = 128;
  std::vector<double> att(b * h * t * t), out(b * t * c);
  Cpu::attention_forward(qkv.data(), att.data(), out.data(), b, t, c, h, o);
  const DropoutMask m = o.mask();
  double err = 0, kept = 0, total = 0;
  for (std::int64_t bi = 0; bi < b; ++bi)
    for (std::int64_t hi = 0; hi < h; ++hi)
      for (std::int64_t i = 0; i < t; ++i) {
        std::vector<double> s(i + 1);
        double mx = -1e300, z = 0;
        for (std::int64_t j = 0; j <= i; ++j) {
          double d = 0;
          for (std::int64_t q = 0; q < hd; ++q)
            d += qkv[(bi * t + i) * 3 * c + hi * hd + q] * qkv[(bi * t + j) * 3 * c + c + hi * hd + q];
          s[j] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, s[j]);
        }
        for (std::int64_t j = 0; j <= i; ++j) z += std::exp(s[j] - mx);
        for (std::int64_t q = 0; q < hd; ++q) {
          double acc = 0;
          for (std::int64_t j = 0; j <= i; ++j) {
            const bool k = m.kept(static_cast<std::uint64_t>(1000 + bi * t + i), static_cast<std::uint64_t>(hi * 128 + j));
            if (q == 0) kept += k, total += 1;
            if (k) acc += std::exp(s[j] - mx) / z / (1 - 0.4) * qkv[(bi * t + j) * 3 * c + 2 * c + hi * hd + q];
          }
          err = std::max(err, std::abs(acc - out[(bi * t + i) * c + hi * hd + q]));
        }
      }
  BOOST_TEST_MESSAGE("attention op vs masked reference: max |diff| " << err << ", kept " << kept / total);
  BOOST_TEST(err <= 1e-12);
  BOOST_TEST(std::abs(kept / total - 0.6) < 0.05);
}
