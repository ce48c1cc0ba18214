#define BOOST_TEST_MODULE determinism
#include <boost/test/unit_test.hpp>
#include <cstring>

#include "../support/tiny.hpp"

using namespace tmoe;
using Train = Trainer<test::MoeModel, AdamW, Fp32, Serial, backend::Cpu>;

namespace {
std::vector<float> train_and_get_weights(const Config& c, int threads) {
  set_threads(threads);
  Train tr(c);
  auto batches = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
  for (std::int64_t s = 0; s < c.train.steps; ++s) tr.train_step(batches);
  const auto* p = tr.model().params();
  return {p, p + tr.model().registry().total()};
}
}  // namespace

BOOST_AUTO_TEST_CASE(same_seed_gives_bitwise_identical_weights) {
  const auto c = test::tiny_train_config();
  const auto a = train_and_get_weights(c, 2), b = train_and_get_weights(c, 2);
  BOOST_REQUIRE_EQUAL(a.size(), b.size());
  BOOST_TEST(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  auto c2 = c;
  c2.train.seed += 1;
  const auto d = train_and_get_weights(c2, 2);
  BOOST_TEST(std::memcmp(a.data(), d.data(), a.size() * sizeof(float)) != 0, "a different seed must change weights");
}

BOOST_AUTO_TEST_CASE(one_and_two_threads_give_bitwise_identical_weights) {
  auto c = test::tiny_train_config();
  // Enough tokens that every GEMM and reduction has several tiles/chunks to share out.
  c.train.batch_size = 12;
  const auto a = train_and_get_weights(c, 1), b = train_and_get_weights(c, 2);
  BOOST_TEST(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

BOOST_AUTO_TEST_CASE(a_tokens_output_does_not_depend_on_the_batch_around_it) {
  auto cfg = test::tiny_model();
  cfg.init_std = 0.1;
  test::MoeModel::impl<float, backend::Cpu> model(cfg);
  model.init(5);
  const std::int64_t t = 32, v = cfg.vocab_size;
  for (std::int64_t big : {2, 5, 9}) {
    auto ids = test::random_tokens(big * t, v, 77);
    model.forward(ids.data(), nullptr, big, t);
    // the last sequence of the big batch, alone
    std::vector<float> logits_big(model.logits() + (big - 1) * t * v, model.logits() + big * t * v);
    model.forward(ids.data() + (big - 1) * t, nullptr, 1, t);
    BOOST_TEST(std::memcmp(logits_big.data(), model.logits(), logits_big.size() * sizeof(float)) == 0,
               "batch of " << big);
  }
}

BOOST_AUTO_TEST_CASE(expert_counts_are_exposed_after_every_forward) {
  auto cfg = test::tiny_model();
  test::MoeModel::impl<float, backend::Cpu> model(cfg);
  model.init(3);
  auto ids = test::random_tokens(3 * 16, cfg.vocab_size, 4);
  model.forward(ids.data(), nullptr, 3, 16);
  for (std::int64_t l = 0; l < cfg.n_layers; ++l) {
    auto counts = model.expert_counts(l);
    BOOST_REQUIRE_EQUAL(counts.size(), static_cast<std::size_t>(cfg.n_experts));
    std::int64_t total = 0;
    for (auto c : counts) total += c;
    BOOST_TEST(total == 3 * 16 * cfg.top_k);
  }
}
