#define BOOST_TEST_MODULE training
#include <boost/test/unit_test.hpp>
#include <cmath>

#include "../support/tiny.hpp"

using namespace tmoe;

// A short run on a learnable toy language (each token determined by the one before it)
// must clearly reduce the loss. Convergence quality itself is the example's and the
// benchmark's business.
BOOST_AUTO_TEST_CASE(loss_falls_on_a_learnable_sequence) {
  Config c = test::tiny_train_config();  // init_std 0.02, seq_len 32, lr 1e-2
  c.model.vocab_size = 16;
  c.train.batch_size = 8;
  c.train.steps = 60;
  c.train.grad_accum = 2;
  Trainer<test::MoeModel, AdamW, Fp32, Serial, backend::Cpu> tr(c);
  const BatchFn batches = test::learnable_batches(c.train.batch_size, c.train.seq_len);
  double first = 0, last = 0;
  for (std::int64_t s = 0; s < c.train.steps; ++s) {
    const auto st = tr.train_step(batches);
    BOOST_REQUIRE(std::isfinite(st.loss));
    if (s == 0) first = st.ce;
    if (s >= c.train.steps - 5) last += st.ce / 5;
  }
  BOOST_TEST_MESSAGE("CE of the first step " << first << ", of the last 5 " << last);
  BOOST_TEST(first > 0.9 * std::log(16.0));
  BOOST_TEST(last < 0.1 * first);
  const double val = tr.evaluate(batches, 2);
  BOOST_TEST(val < 0.1 * first);
}
