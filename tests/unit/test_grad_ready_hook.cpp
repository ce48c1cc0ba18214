#define BOOST_TEST_MODULE grad_ready_hook
#include <boost/test/unit_test.hpp>
#include <vector>

#include "../support/tiny.hpp"

using namespace tmoe;

// Every parameter is announced exactly once per backward, and when it is announced its
// gradient already has its final value.
template <class M>
void check_hook(ModelConfig cfg) {
  typename M::template impl<double, backend::Cpu> model(cfg);
  model.init(3);
  const auto& reg = model.registry();
  std::vector<int> seen(static_cast<std::size_t>(reg.size()), 0);
  std::vector<std::vector<double>> at_announce(static_cast<std::size_t>(reg.size()));
  std::vector<int> order;
  model.set_grad_ready_hook([&](int first, int last) {
    for (int i = first; i < last; ++i) {
      ++seen[static_cast<std::size_t>(i)];
      const auto& p = reg[i];
      at_announce[static_cast<std::size_t>(i)].assign(model.grads() + p.offset, model.grads() + p.offset + p.numel());
    }
    order.push_back(first);
  });
  auto ids = test::random_tokens(2 * 16, cfg.vocab_size, 1), tg = test::random_tokens(2 * 16, cfg.vocab_size, 2);
  model.zero_grad();
  model.forward(ids.data(), tg.data(), 2, 16);
  model.backward(1.0);
  for (int i = 0; i < reg.size(); ++i) {
    BOOST_TEST(seen[static_cast<std::size_t>(i)] == 1, reg[i].name);
    const auto& p = reg[i];
    std::vector<double> final_g(model.grads() + p.offset, model.grads() + p.offset + p.numel());
    BOOST_TEST(final_g == at_announce[static_cast<std::size_t>(i)], reg[i].name << " changed after it was announced");
  }
  BOOST_TEST(order.back() == 0, "the embedding is announced last");
}

BOOST_AUTO_TEST_CASE(tied_moe_model) { check_hook<test::MoeModel>(test::tiny_model()); }

BOOST_AUTO_TEST_CASE(untied_dense_model_with_learned_positions) {
  auto cfg = test::tiny_model();
  cfg.tie_embeddings = false;
  cfg.linear_bias = true;
  check_hook<DecoderLM<TransformerBlock<CausalAttention<LearnedPositions>, Dense<GeluFFN>>, LayerNorm>>(cfg);
}
