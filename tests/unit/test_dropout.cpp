#define BOOST_TEST_MODULE dropout
// Dropout (layers/dropout.hpp, docs/regularisation.md): masks are bitwise independent of the
// thread count and of batch composition; the empirical per-expert hidden dropout rates and
// the expert-drop rate match the configuration; evaluation mode and rates 0 are bitwise the
// model without dropout; the attention op recomputing its probabilities (store_probs =
// false) gives bitwise the gradients of the stored ones; the expert drop leaves routing
// statistics and balancing losses alone and keeps each token's gate sum.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstring>
#include <vector>

#include "../support/tiny.hpp"

using namespace tmoe;
using Cpu = backend::Cpu;

namespace {

struct Threads {
  int saved = thread_count_ref();
  explicit Threads(int n) { set_threads(n); }
  ~Threads() { set_threads(saved); }
};

ModelConfig all_dropouts() {
  auto cfg = test::tiny_model();
  cfg.dropout = 0.1;
  cfg.attn_dropout = 0.2;
  cfg.expert_dropout = "0,0.1,0.3,0.5";
  cfg.expert_drop_rate = 0.25;
  return cfg;
}

struct Run {
  LossParts loss;
  std::vector<double> grads, logits;
};

// One training (or evaluation) forward + backward of a fresh model initialised from seed 3.
template <class Model = test::MoeModel>
Run run_model(const ModelConfig& cfg, bool training, std::int64_t b, std::int64_t t, int threads,
              bool store_probs = true, std::int64_t step = 4) {
  Threads th(threads);
  typename Model::template impl<double, Cpu> model(cfg);
  model.init(3);
  for (std::int64_t l = 0; l < model.n_layers(); ++l) model.block(l).attn.store_probs = store_probs;
  const auto x = test::random_tokens(b * t + 1, cfg.vocab_size, 17);
  model.set_mode(training, 99, step, 0);
  model.zero_grad();
  Run r;
  r.loss = model.forward(x.data(), x.data() + 1, b, t);
  model.backward(1.0);
  r.grads.assign(model.grads(), model.grads() + model.registry().total());
  r.logits.assign(model.logits(), model.logits() + b * t * cfg.vocab_size);
  return r;
}

bool bitwise(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}
bool bitwise(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

}  // namespace

BOOST_AUTO_TEST_CASE(mask_words_are_rngkey_bits) {
  const DropoutMask m = DropoutMask::make(0.3, 0x1234567890ull, 11, dropout_site(5, DropoutUse::kExpertHidden));
  const RngKey key{m.seed, m.step, m.site, 4242};
  for (std::uint64_t e = 0; e < 64; ++e) BOOST_TEST(m.block(4242, e >> 2)[e & 3] == key.bits(e));
  BOOST_TEST(m.threshold == static_cast<std::uint32_t>(0.3 * 4294967296.0));
  BOOST_TEST(!DropoutMask::make(0.0, 1, 2, 3).active());
  BOOST_TEST(DropoutMask::make(0.0, 1, 2, 3).scale == 1.0);
  // apply() agrees with kept() element by element, from any starting element
  std::vector<float> x(37, 2.0f), y(37);
  m.apply(7, 3, 37, x.data(), y.data());
  for (std::uint64_t i = 0; i < 37; ++i)
    BOOST_TEST(y[i] == (m.kept(7, 3 + i) ? static_cast<float>(2.0 * (1 / 0.7)) : 0.0f));
  // sites of different layers and uses are distinct
  BOOST_TEST(dropout_site(0, DropoutUse::kAttnOut) != dropout_site(0, DropoutUse::kFfnOut));
  BOOST_TEST(dropout_site(1, DropoutUse::kAttnOut) != dropout_site(0, DropoutUse::kAttnOut));
}

BOOST_AUTO_TEST_CASE(whole_model_gradients_do_not_depend_on_the_thread_count) {
  const auto cfg = all_dropouts();
  const Run one = run_model(cfg, true, 4, 32, 1), two = run_model(cfg, true, 4, 32, 2);
  BOOST_TEST(bitwise(one.grads, two.grads));
  BOOST_TEST(bitwise(one.loss.total, two.loss.total));
  // and dropout does act
  const Run eval = run_model(cfg, false, 4, 32, 1);
  BOOST_TEST(!bitwise(one.logits, eval.logits));
  // a TransformerExpert model too (expert attention dropout)
  auto te = cfg;
  te.expert_depth = 2;
  using TeModel = DecoderLM<TransformerBlock<CausalAttention<Rope>, MoE<TransformerExpert<SwiGLU>, TopK>>, RmsNorm>;
  const Run a = run_model<TeModel>(te, true, 4, 32, 1), b = run_model<TeModel>(te, true, 4, 32, 2);
  BOOST_TEST(bitwise(a.grads, b.grads));
}

BOOST_AUTO_TEST_CASE(masks_do_not_depend_on_batch_composition) {
  // The second sequence of a batch of two at token offset 0 is the same forward as that
  // sequence alone at token offset T: its logits are bitwise equal.
  const auto cfg = all_dropouts();
  const std::int64_t t = 32;
  typename test::MoeModel::impl<double, Cpu> model(cfg);
  model.init(3);
  const auto x = test::random_tokens(2 * t, cfg.vocab_size, 5);
  model.set_mode(true, 99, 2, 0);
  model.forward(x.data(), nullptr, 2, t);
  const std::vector<double> both(model.logits() + t * cfg.vocab_size, model.logits() + 2 * t * cfg.vocab_size);
  model.set_mode(true, 99, 2, t);
  model.forward(x.data() + t, nullptr, 1, t);
  const std::vector<double> alone(model.logits(), model.logits() + t * cfg.vocab_size);
  BOOST_TEST(bitwise(both, alone));
  model.set_mode(true, 99, 2, 0);  // another offset: other masks
  model.forward(x.data() + t, nullptr, 1, t);
  BOOST_TEST(!bitwise(std::vector<double>(model.logits(), model.logits() + t * cfg.vocab_size), alone));
}

BOOST_AUTO_TEST_CASE(evaluation_mode_is_bitwise_the_model_without_dropout) {
  auto none = test::tiny_model();
  const Run ref = run_model(none, false, 2, 32, 2);
  const Run eval = run_model(all_dropouts(), false, 2, 32, 2);
  BOOST_TEST(bitwise(ref.grads, eval.grads));
  BOOST_TEST(bitwise(ref.logits, eval.logits));
  BOOST_TEST(bitwise(ref.loss.total, eval.loss.total));
}

BOOST_AUTO_TEST_CASE(rates_zero_are_bitwise_the_path_without_dropout) {
  auto zero = test::tiny_model();
  zero.dropout = 0;
  zero.attn_dropout = 0;
  zero.expert_dropout = "0,0,0,0";
  zero.expert_drop_rate = 0;
  const Run eval = run_model(test::tiny_model(), false, 2, 32, 2);
  const Run train = run_model(zero, true, 2, 32, 2);
  BOOST_TEST(bitwise(eval.grads, train.grads));
  BOOST_TEST(bitwise(eval.logits, train.logits));
  // one dropout on at a time changes the result (each is wired)
  for (int which = 0; which < 4; ++which) {
    auto one = zero;
    if (which == 0) one.dropout = 0.1;
    if (which == 1) one.attn_dropout = 0.1;
    if (which == 2) one.expert_dropout = "0.1";
    if (which == 3) one.expert_drop_rate = 0.1;
    BOOST_TEST(!bitwise(run_model(one, true, 2, 32, 2).grads, train.grads), "dropout " << which << " does not act");
  }
}

BOOST_AUTO_TEST_CASE(recomputed_probabilities_give_bitwise_the_stored_gradients) {
  auto cfg = all_dropouts();
  cfg.context = 96;
  for (bool training : {false, true}) {
    // T = 80 spans two query blocks of the attention op
    const Run stored = run_model(cfg, training, 2, 80, 2, true);
    const Run recomputed = run_model(cfg, training, 2, 80, 2, false);
    BOOST_TEST(bitwise(stored.grads, recomputed.grads));
    BOOST_TEST(bitwise(stored.logits, recomputed.logits));
  }
  // the op alone: dqkv bitwise, with and without dropout
  const std::int64_t b = 2, t = 70, c = 16, h = 2;
  const auto qkv = test::randn(b * t * 3 * c, 8), dout = test::randn(b * t * c, 9);
  for (double rate : {0.0, 0.3}) {
    AttentionOptions o;
    o.dropout = rate;
    o.seed = 1;
    o.site = dropout_site(0, DropoutUse::kAttnProbs);
    std::vector<double> att(b * h * t * t), out1(b * t * c), out2(b * t * c), d1(b * t * 3 * c), d2(b * t * 3 * c);
    Cpu::attention_forward(qkv.data(), att.data(), out1.data(), b, t, c, h, o);
    Cpu::attention_backward(dout.data(), qkv.data(), att.data(), d1.data(), b, t, c, h, o);
    o.store_probs = false;
    Cpu::attention_forward(qkv.data(), static_cast<double*>(nullptr), out2.data(), b, t, c, h, o);
    Cpu::attention_backward(dout.data(), qkv.data(), static_cast<const double*>(nullptr), d2.data(), b, t, c, h, o);
    BOOST_TEST(bitwise(out1, out2));
    BOOST_TEST(bitwise(d1, d2));
  }
}

BOOST_AUTO_TEST_CASE(empirical_per_expert_hidden_dropout_rates) {
  auto cfg = test::tiny_model();
  cfg.d_expert = 64;
  cfg.expert_dropout = "0,0.1,0.3,0.5";
  const std::vector<double> rates = cfg.expert_dropout_rates();
  const std::int64_t n = 4096, c = cfg.d_model;
  ParamRegistry reg;
  MoE<SwiGLU, TopK>::impl<double, Cpu> moe;
  moe.declare(reg, "layers.0.moe", cfg);
  std::vector<double> p(reg.total()), g(reg.total());
  {
    const auto v = test::randn(reg.total(), 21, 0.3);
    std::copy(v.begin(), v.end(), p.begin());
  }
  moe.bind(reg, p.data(), g.data());
  const auto x = test::randn(n * c, 22);
  std::vector<double> y(n * c);
  RouteContext ctx;
  ctx.training = true;
  ctx.seed = 7;
  ctx.step = 3;
  ctx.token_offset = 1 << 20;
  ctx.layer = 2;
  moe.forward(x.data(), y.data(), n, ctx);
  for (std::int64_t e = 0; e < cfg.n_experts; ++e) {
    const auto& ex = moe.experts[static_cast<std::size_t>(e)];
    const std::int64_t cnt = moe.plan.counts[e] * cfg.d_expert;
    std::int64_t zeros = 0;
    for (std::int64_t i = 0; i < cnt; ++i) zeros += ex.hid[i] == 0.0;
    const double rate = static_cast<double>(zeros) / static_cast<double>(cnt), want = rates[e];
    const double se = std::sqrt(std::max(want * (1 - want), 1e-12) / static_cast<double>(cnt));
    BOOST_TEST_MESSAGE("expert " << e << ": " << cnt << " hidden values, dropped " << rate << " (configured " << want
                                 << ", 3 s.e. " << 3 * se << ")");
    BOOST_TEST(cnt >= 50000);
    if (want == 0) BOOST_TEST(zeros == 0);
    else BOOST_TEST(std::abs(rate - want) <= 3 * se, "expert " << e << ": rate " << rate << " configured " << want);
  }
  // evaluation: nothing dropped
  ctx.training = false;
  moe.forward(x.data(), y.data(), n, ctx);
  std::int64_t zeros = 0;
  for (std::int64_t e = 0; e < cfg.n_experts; ++e)
    for (std::int64_t i = 0; i < moe.plan.counts[e] * cfg.d_expert; ++i) zeros += moe.experts[e].hid[i] == 0.0;
  BOOST_TEST(zeros == 0);
}

BOOST_AUTO_TEST_CASE(expert_drop_rate_statistics_and_gate_sums) {
  auto cfg = test::tiny_model();
  cfg.router_renormalize = false;
  cfg.aux_loss_weight = 0.1;
  cfg.z_loss_weight = 0.01;
  const std::int64_t n = 4096, c = cfg.d_model, k = cfg.top_k;
  auto make = [&](double rate, MoE<SwiGLU, TopK>::impl<double, Cpu>& moe, ParamRegistry& reg, std::vector<double>& p,
                  std::vector<double>& g) {
    auto cf = cfg;
    cf.expert_drop_rate = rate;
    moe.declare(reg, "layers.0.moe", cf);
    p.assign(reg.total(), 0.0);
    g.assign(reg.total(), 0.0);
    const auto v = test::randn(reg.total(), 31, 0.3);
    std::copy(v.begin(), v.end(), p.begin());
    moe.bind(reg, p.data(), g.data());
  };
  MoE<SwiGLU, TopK>::impl<double, Cpu> on, off;
  ParamRegistry r1, r2;
  std::vector<double> p1, g1, p2, g2;
  make(0.3, on, r1, p1, g1);
  make(0.0, off, r2, p2, g2);
  const auto x = test::randn(n * c, 32);
  std::vector<double> y1(n * c), y2(n * c);
  RouteContext ctx;
  ctx.training = true;
  ctx.seed = 11;
  ctx.step = 1;
  ctx.layer = 4;
  on.forward(x.data(), y1.data(), n, ctx);
  off.forward(x.data(), y2.data(), n, ctx);
  const auto xd = on.assignment_expert_dropped();
  BOOST_REQUIRE(xd.size() == static_cast<std::size_t>(n * k));
  const double rate = static_cast<double>(std::count(xd.begin(), xd.end(), std::uint8_t{1})) / static_cast<double>(n * k);
  const double se = std::sqrt(0.3 * 0.7 / static_cast<double>(n * k));
  BOOST_TEST_MESSAGE("expert drop: " << n * k << " assignments, dropped " << rate << " (configured 0.3, 3 s.e. " << 3 * se
                                     << ")");
  BOOST_TEST(std::abs(rate - 0.3) <= 3 * se);
  BOOST_TEST(off.assignment_expert_dropped().empty());
  // routing statistics and balancing losses see the router's choice, before the drop
  BOOST_TEST(on.loss() == off.loss());
  BOOST_TEST((on.stats().tokens == off.stats().tokens));
  BOOST_TEST((on.stats().dropped == off.stats().dropped));
  BOOST_TEST((on.plan.routed == off.plan.routed));
  // surviving gates keep each token's gate sum; a token that lost everything gets nothing
  std::int64_t all_dropped = 0;
  for (std::int64_t t = 0; t < n; ++t) {
    double s = 0, s2 = 0;
    int lost = 0;
    for (std::int64_t j = 0; j < k; ++j) {
      s += on.rgates[t * k + j];
      s2 += on.egates[t * k + j];
      lost += xd[t * k + j];
      if (xd[t * k + j]) BOOST_REQUIRE(on.egates[t * k + j] == 0.0);
    }
    if (lost == k) {
      ++all_dropped;
      for (std::int64_t j = 0; j < c; ++j) BOOST_REQUIRE(y1[t * c + j] == 0.0);
    } else {
      BOOST_REQUIRE(std::abs(s2 - s) <= 1e-15);
    }
    if (lost == 0)
      for (std::int64_t j = 0; j < c; ++j) BOOST_REQUIRE(y1[t * c + j] == y2[t * c + j]);
  }
  BOOST_TEST_MESSAGE("tokens with every expert dropped: " << all_dropped << " (expected " << n * 0.09 << ")");
  BOOST_TEST(all_dropped > 0);
}
