#define BOOST_TEST_MODULE precision
#include <boost/test/unit_test.hpp>
#include <Eigen/Core>
#include <cstring>

#include "precision_common.hpp"

using namespace tmoe;
using namespace tmoe::test;

BOOST_AUTO_TEST_CASE(bf16_rounding_matches_eigen_bfloat16) {
  std::size_t checked = 0;
  for (float x : probe_values()) {
    const float ours = bf16::round(x);
    const float ref = static_cast<float>(Eigen::bfloat16(x));
    if (std::isnan(x)) {
      BOOST_TEST(std::isnan(ours));
      continue;
    }
    BOOST_TEST_REQUIRE(std::bit_cast<std::uint32_t>(ours) == std::bit_cast<std::uint32_t>(ref), "x = " << x);
    ++checked;
  }
  BOOST_TEST(checked > 100000u);
  // Ties go to even: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7.
  BOOST_TEST(bf16::round(1.0f + std::ldexp(1.0f, -8)) == 1.0f);
  BOOST_TEST(bf16::round(1.0f + 3 * std::ldexp(1.0f, -8)) == 1.0f + std::ldexp(1.0f, -6));
}

BOOST_AUTO_TEST_CASE(fp16_rounding_matches_the_hardware_conversion) {
  std::size_t checked = 0;
  for (float x : probe_values()) {
    const float ours = fp16::round(x);
    const float ref = static_cast<float>(static_cast<_Float16>(x));
    if (std::isnan(x)) {
      BOOST_TEST(std::isnan(ours));
      continue;
    }
    BOOST_TEST_REQUIRE(std::bit_cast<std::uint32_t>(ours) == std::bit_cast<std::uint32_t>(ref), "x = " << x);
    ++checked;
  }
  BOOST_TEST(checked > 100000u);
  BOOST_TEST(fp16::round(65519.0f) == 65504.0f);
  BOOST_TEST(std::isinf(fp16::round(65520.0f)));
  BOOST_TEST(fp16::round(2.9802322e-08f) == 0.0f);              // half the smallest subnormal: ties to even (0)
  BOOST_TEST(fp16::round(4.5e-08f) == 5.9604645e-08f);          // nearest subnormal
}

BOOST_AUTO_TEST_CASE(loss_scaler_follows_grad_scaler_semantics) {
  TrainConfig t;
  t.loss_scale_interval = 3;
  LossScaler s = LossScaler::from_config(t, true);
  BOOST_TEST(s.scale == 65536.0);
  BOOST_TEST(!s.update(false));
  BOOST_TEST(s.scale == 32768.0);
  BOOST_TEST(s.update(true));
  BOOST_TEST(s.update(true));
  BOOST_TEST(s.scale == 32768.0);
  BOOST_TEST(s.update(true));  // the third finite step in a row doubles it
  BOOST_TEST(s.scale == 65536.0);
  BOOST_TEST(s.good_steps == 0);
  t.loss_scaling = "static";
  t.loss_scale = 128;
  LossScaler st = LossScaler::from_config(t, true);
  BOOST_TEST(!st.update(false));
  BOOST_TEST(st.scale == 128.0);
  for (int i = 0; i < 5; ++i) BOOST_TEST(st.update(true));
  BOOST_TEST(st.scale == 128.0);
  LossScaler off = LossScaler::from_config(t, false);
  BOOST_TEST(!off.enabled);
}

// An injected inf/NaN gradient skips the step with weights, buffers and optimizer moments
// bitwise unchanged; the scale backs off, then grows after the interval.
BOOST_AUTO_TEST_CASE(non_finite_gradient_skips_the_step) {
  Config c = test::tiny_train_config();
  c.train.loss_scale_interval = 2;
  c.train.steps = 10;
  TrainerOf<MixedFp16> tr(c);
  const BatchFn batches = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
  const std::int64_t n = tr.model().registry().total();
  tr.train_step(batches);  // a normal step so the moments are not zero
  const std::vector<float> master(tr.master_params(), tr.master_params() + n);
  const std::vector<float> model(tr.model().params(), tr.model().params() + n);
  const std::vector<float> m0(tr.optimizer_state(0), tr.optimizer_state(0) + n), v0(tr.optimizer_state(1), tr.optimizer_state(1) + n);
  const double scale = tr.loss_scaler().scale;
  for (float bad : {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    tr.set_gradient_hook([bad](float* g, std::int64_t count) { g[count / 3] = bad; });
    const double before = tr.loss_scaler().scale;
    const auto st = tr.train_step(batches);
    BOOST_TEST(st.skipped);
    BOOST_TEST(tr.loss_scaler().scale == before * 0.5);
    BOOST_TEST(std::memcmp(master.data(), tr.master_params(), master.size() * sizeof(float)) == 0);
    BOOST_TEST(std::memcmp(model.data(), tr.model().params(), model.size() * sizeof(float)) == 0);
    BOOST_TEST(std::memcmp(m0.data(), tr.optimizer_state(0), m0.size() * sizeof(float)) == 0);
    BOOST_TEST(std::memcmp(v0.data(), tr.optimizer_state(1), v0.size() * sizeof(float)) == 0);
  }
  BOOST_TEST(tr.step() == 3);
  tr.set_gradient_hook({});
  const auto s1 = tr.train_step(batches);
  BOOST_TEST(!s1.skipped);
  BOOST_TEST(tr.loss_scaler().scale == scale * 0.25);
  tr.train_step(batches);  // second finite step in a row: interval 2 reached
  BOOST_TEST(tr.loss_scaler().scale == scale * 0.5);
  BOOST_TEST(std::memcmp(master.data(), tr.master_params(), master.size() * sizeof(float)) != 0);
}

// Buffers (a DeepSeek-style router bias, moved by the bias update rather than a gradient)
// are also untouched by a skipped step.
BOOST_AUTO_TEST_CASE(skipped_step_leaves_router_bias_unchanged) {
  using Blk = TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, SigmoidBias, Dropless, Balancing<SeqAuxLoss, BiasUpdate>>>;
  Config c = test::tiny_train_config();
  c.model.bias_update_rate = 0.01;
  Trainer<DecoderLM<Blk, RmsNorm>, AdamW, MixedFp16, Serial, backend::Cpu> tr(c);
  const BatchFn batches = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
  tr.train_step(batches);
  const std::int64_t n = tr.model().registry().total();
  const std::vector<float> master(tr.master_params(), tr.master_params() + n);
  const std::vector<float> model(tr.model().params(), tr.model().params() + n);
  tr.set_gradient_hook([](float* g, std::int64_t) { g[0] = std::numeric_limits<float>::infinity(); });
  BOOST_TEST(tr.train_step(batches).skipped);
  BOOST_TEST(std::memcmp(master.data(), tr.master_params(), master.size() * sizeof(float)) == 0);
  BOOST_TEST(std::memcmp(model.data(), tr.model().params(), model.size() * sizeof(float)) == 0);
  tr.set_gradient_hook({});
  tr.train_step(batches);
  const auto* bias = tr.model().registry().find("layers.0.moe.router.bias");
  BOOST_REQUIRE(bias);
  // The bias moved on the next real step, and master and model agree on it.
  BOOST_TEST(std::memcmp(model.data() + bias->offset, tr.model().params() + bias->offset, 4 * sizeof(float)) != 0);
  BOOST_TEST(std::memcmp(tr.master_params() + bias->offset, tr.model().params() + bias->offset, 4 * sizeof(float)) == 0);
}

// Weights are published rounded to the storage type; the router stays exact.
BOOST_AUTO_TEST_CASE(published_weights_are_rounded_except_the_router) {
  Config c = test::tiny_train_config();
  TrainerOf<MixedBf16> tr(c);
  const BatchFn batches = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
  tr.train_step(batches);
  std::int64_t rounded = 0, exact_router = 0, router_total = 0;
  for (const ParamInfo& p : tr.model().registry().params())
    for (std::int64_t i = 0; i < p.numel(); ++i) {
      const float m = tr.master_params()[p.offset + i], w = tr.model().params()[p.offset + i];
      if (p.has(kTagRouter)) {
        ++router_total;
        exact_router += (m == w);
      } else {
        BOOST_TEST_REQUIRE(w == bf16::round(m));
        rounded += (m != w);
      }
    }
  BOOST_TEST(exact_router == router_total);
  BOOST_TEST(rounded > tr.model().registry().count() / 2);  // most fp32 masters are not bf16 values
}

