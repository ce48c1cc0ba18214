#define BOOST_TEST_MODULE model_errors
#include <boost/test/unit_test.hpp>
#include <string>

#include "../support/expect_error.hpp"
#include "../support/tiny.hpp"

using namespace tmoe;
using Model = test::MoeModel::impl<float, backend::Cpu>;
using test::expect_error;

BOOST_AUTO_TEST_CASE(d_model_not_divisible_by_heads) {
  auto cfg = test::tiny_model();
  cfg.n_heads = 5;
  expect_error([&] { Model m(cfg); }, {"model.d_model", "not divisible by n_heads 5"});
}

BOOST_AUTO_TEST_CASE(top_k_larger_than_experts) {
  auto cfg = test::tiny_model();
  cfg.top_k = 5;
  expect_error([&] { Model m(cfg); }, {"model.top_k", "larger than n_experts 4"});
}

BOOST_AUTO_TEST_CASE(non_positive_sizes) {
  auto cfg = test::tiny_model();
  cfg.n_layers = 0;
  expect_error([&] { Model m(cfg); }, {"model.n_layers", "positive"});
}

BOOST_AUTO_TEST_CASE(token_ids_out_of_range_and_too_long_sequences) {
  auto cfg = test::tiny_model();
  Model m(cfg);
  m.init(1);
  auto ids = test::random_tokens(16, cfg.vocab_size, 1);
  ids[7] = static_cast<std::int32_t>(cfg.vocab_size);
  expect_error([&] { m.forward(ids.data(), nullptr, 1, 16); }, {"token id 64 at position 7", "[0, 64)"});
  ids[7] = 0;
  auto tg = ids;
  tg[3] = -1;
  expect_error([&] { m.forward(ids.data(), tg.data(), 1, 16); }, {"target id -1"});
  auto longer = test::random_tokens(cfg.context + 1, cfg.vocab_size, 2);
  expect_error([&] { m.forward(longer.data(), nullptr, 1, cfg.context + 1); }, {"context = 32"});
  expect_error([&] { m.backward(); }, {"backward without targets"});
}

BOOST_AUTO_TEST_CASE(trainer_rejects_bad_training_config) {
  Config c;
  c.model = test::tiny_model();
  c.train.seq_len = 64;  // > context 32
  expect_error([&] { Trainer<test::MoeModel, AdamW, Fp32, Serial, backend::Cpu> t(c); }, {"train.seq_len", "exceeds"});
  c.train.seq_len = 16;
  c.train.lr = -1;
  expect_error([&] { Trainer<test::MoeModel, AdamW, Fp32, Serial, backend::Cpu> t(c); }, {"train.lr"});
}

BOOST_AUTO_TEST_CASE(diverging_training_stops_with_a_sentence) {
  Config c;
  c.model = test::tiny_model();
  c.train.batch_size = 2;
  c.train.seq_len = 8;
  Trainer<test::MoeModel, AdamW, Fp32, Serial, backend::Cpu> t(c);
  // Poison one weight: the gradient becomes NaN, and the step must refuse to apply it.
  t.model().params()[t.model().registry().find("layers.0.attn.qkv.weight")->offset] = std::nanf("");
  BatchFn batches = [](std::int64_t, std::int32_t* in, std::int32_t* tg) {
    for (int i = 0; i < 16; ++i) in[i] = tg[i] = i % 7;
  };
  expect_error([&] { t.train_step(batches); }, {"gradient norm is not finite at step 0"});
}
