#define BOOST_TEST_MODULE precision
#include <boost/test/unit_test.hpp>
#include <Eigen/Core>
#include <bit>
#include <cmath>
#include <limits>
#include <random>

#include "../support/tiny.hpp"

using namespace tmoe;

namespace {

// Every float in a sweep of bit patterns plus random ones and the edge cases.
std::vector<float> probe_values() {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 1e-8f, 2.9802322e-08f,
                          5.9604645e-08f, 8.940697e-08f, 6.1035156e-05f, 6.0975552e-05f, 3.3895314e38f,
                          std::numeric_limits<float>::max(), std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::min()};
  for (std::uint32_t u = 0; u < 0xff800000u; u += 0x1357u) v.push_back(std::bit_cast<float>(u));
  for (std::uint32_t u = 0x80000000u; u < 0xff800000u; u += 0x2468bu) v.push_back(std::bit_cast<float>(u));
  std::mt19937 rng(7);
  std::normal_distribution<float> n(0.0f, 1.0f);
  for (int i = 0; i < 100000; ++i) v.push_back(n(rng) * std::ldexp(1.0f, static_cast<int>(rng() % 60) - 40));
  return v;
}

template <class Tr>
std::vector<double> grads_of(Tr& tr, const BatchFn& batches, double* loss = nullptr) {
  auto& m = tr.model();
  m.zero_grad();
  std::vector<std::int32_t> in(static_cast<std::size_t>(tr.config().train.batch_size * tr.config().train.seq_len)), tg(in.size());
  batches(0, in.data(), tg.data());
  m.set_mode(true, tr.config().train.seed, 0, 0);
  const LossParts lp = m.forward(in.data(), tg.data(), tr.config().train.batch_size, tr.config().train.seq_len);
  if (loss) *loss = lp.total;
  m.backward(1.0);
  m.set_mode(false);
  return {m.grads(), m.grads() + m.registry().total()};
}

double rel_l2(const std::vector<double>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

// Learnable toy language of test_training.cpp.
BatchFn pattern_batches(std::int64_t b, std::int64_t t, std::int32_t vocab) {
  return [=](std::int64_t i, std::int32_t* in, std::int32_t* tg) {
    for (std::int64_t r = 0; r < b; ++r) {
      std::int32_t x = static_cast<std::int32_t>((i * 7 + r * 3) % vocab);
      for (std::int64_t j = 0; j <= t; ++j) {
        if (j < t) in[r * t + j] = x;
        if (j > 0) tg[r * t + j - 1] = x;
        x = (x * 5 + 3) % vocab;
      }
    }
  };
}

template <class P>
using TrainerOf = Trainer<test::MoeModel, AdamW, P, Serial, backend::Cpu>;

}  // namespace

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

// Gradients of one micro-batch against fp64 with the same (master) weights.
template <class P>
double grad_error_vs_fp64() {
  Config c = test::tiny_train_config();
  c.model.init_std = 0.1;
  TrainerOf<P> tr(c);
  TrainerOf<Fp64> ref(c);
  const std::int64_t n = tr.model().registry().total();
  for (std::int64_t i = 0; i < n; ++i) ref.model().params()[i] = static_cast<double>(tr.master_params()[i]);
  const BatchFn batches = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
  double loss = 0, loss64 = 0;
  const double err = rel_l2(grads_of(tr, batches, &loss), grads_of(ref, batches, &loss64));
  const double lerr = std::abs(loss - loss64) / loss64;
  BOOST_TEST_MESSAGE(P::name << ": relative L2 gradient error vs fp64 = " << err << " (tolerance " << Tolerances<P>::grad_rel
                             << "), loss error " << lerr << " (tolerance " << Tolerances<P>::loss_rel << ")");
  BOOST_TEST(lerr < Tolerances<P>::loss_rel);
  return err;
}

BOOST_AUTO_TEST_CASE(gradients_within_precision_tolerances) {
  const double e32 = grad_error_vs_fp64<Fp32>(), ebf = grad_error_vs_fp64<MixedBf16>(), ehf = grad_error_vs_fp64<MixedFp16>();
  BOOST_TEST(e32 < Tolerances<Fp32>::grad_rel);
  BOOST_TEST(ebf < Tolerances<MixedBf16>::grad_rel);
  BOOST_TEST(ehf < Tolerances<MixedFp16>::grad_rel);
  // The narrow types must actually be in effect: bf16 is coarser than fp16, fp16 than fp32.
  BOOST_TEST(ebf > ehf);
  BOOST_TEST(ehf > 10 * e32);
}

template <class P>
double short_run(const Config& c) {
  TrainerOf<P> tr(c);
  const BatchFn batches = pattern_batches(c.train.batch_size, c.train.seq_len, static_cast<std::int32_t>(c.model.vocab_size));
  double last = 0;
  for (std::int64_t s = 0; s < c.train.steps; ++s) {
    const auto st = tr.train_step(batches);
    if (s >= c.train.steps - 5) last += st.ce / 5;
  }
  return last;
}

BOOST_AUTO_TEST_CASE(short_training_run_lands_near_fp32) {
  Config c = test::tiny_train_config();
  c.model.vocab_size = 16;
  c.train.batch_size = 8;
  c.train.steps = 40;
  const double f32 = short_run<Fp32>(c), bf = short_run<MixedBf16>(c), hf = short_run<MixedFp16>(c);
  BOOST_TEST_MESSAGE("final CE: fp32 " << f32 << ", bf16 " << bf << ", fp16 " << hf);
  BOOST_TEST(f32 < 0.5 * std::log(16.0));  // it learned something
  BOOST_TEST(std::abs(bf - f32) / f32 < Tolerances<MixedBf16>::train_loss_rel);
  BOOST_TEST(std::abs(hf - f32) / f32 < Tolerances<MixedFp16>::train_loss_rel);
}

// A model whose activation gradients underflow fp16 without scaling: tiny weights (init std
// 1e-3) and a loss averaged over 16 x 32 tokens x 4 micro-batches make the back-propagated
// activation gradients smaller than fp16's smallest subnormal (2^-24). With loss scale 1 most
// block gradients are exactly zero and the gradient is ~90x further from fp32's than with
// dynamic scaling (2^16), under which every block weight gets its gradient.
BOOST_AUTO_TEST_CASE(fp16_underflow_without_scaling_trains_with_it) {
  Config c = test::tiny_train_config();
  c.model.vocab_size = 16;
  c.model.init_std = 1e-3;
  c.train.batch_size = 16;
  c.train.grad_accum = 4;
  c.train.steps = 6;
  c.train.grad_clip = 0;  // compare raw gradients
  const BatchFn batches = pattern_batches(c.train.batch_size, c.train.seq_len, 16);
  auto block_grads = [](auto& tr) {
    std::vector<double> g;
    for (const ParamInfo& p : tr.model().registry().params())
      if (!p.has(kTagEmbedding) && !p.has(kTagNorm))
        for (std::int64_t i = 0; i < p.numel(); ++i) g.push_back(tr.model().grads()[p.offset + i]);
    return g;
  };
  TrainerOf<Fp32> ref(c);
  ref.train_step(batches);
  const std::vector<double> g32 = block_grads(ref);
  auto run = [&](const std::string& mode, double scale, double* zero_share, double* err) {
    Config k = c;
    k.train.loss_scaling = mode;
    k.train.loss_scale = scale;
    TrainerOf<MixedFp16> tr(k);
    double first = 0, last = 0;
    for (std::int64_t s = 0; s < k.train.steps; ++s) {
      const auto st = tr.train_step(batches);
      BOOST_TEST(!st.skipped);
      (s == 0 ? first : last) = st.ce;
      if (s == 0) {  // same weights and batch as ref's step: the unscaled gradients compare
        const std::vector<double> g = block_grads(tr);
        *zero_share = static_cast<double>(std::count(g.begin(), g.end(), 0.0)) / static_cast<double>(g.size());
        *err = rel_l2(g, g32);
      }
    }
    BOOST_TEST(last < first);
  };
  double zu = 0, eu = 0, zs = 0, es = 0;
  run("static", 1.0, &zu, &eu);
  run("dynamic", 65536.0, &zs, &es);
  BOOST_TEST_MESSAGE("fp16, init std 1e-3: block gradients exactly zero " << zu << " unscaled vs " << zs
                     << " scaled; relative error vs fp32 " << eu << " vs " << es);
  BOOST_TEST(zu > 0.5);
  BOOST_TEST(zs < 0.02);
  BOOST_TEST(es < 2e-3);
  BOOST_TEST(eu > 20 * es);  // measured: 0.053 vs 0.0006
}
