#define BOOST_TEST_MODULE precision_numerics
// Mixed precision against fp64 and fp32: gradient and loss errors within Tolerances<P>, a
// short training run, and fp16 underflow with and without loss scaling.
#include <boost/test/unit_test.hpp>
#include <algorithm>

#include "precision_common.hpp"

using namespace tmoe;
using namespace tmoe::test;

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
