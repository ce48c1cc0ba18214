#define BOOST_TEST_MODULE moe_config_errors
// Bad MoE settings fail when the model is built, with a sentence naming the key and the
// accepted values (issue 4): k > experts, groups not dividing experts, top_groups > groups,
// a top-k that the eligible groups cannot hold, capacity factor <= 0, an unknown drop
// policy, interleave period 0, expert depth 0, bad temperature/jitter/scale — and the Hash
// router without token ids.
#include <boost/test/unit_test.hpp>
#include <functional>
#include <string>

#include "../support/expect_error.hpp"
#include "../support/tiny.hpp"

using namespace tmoe;
using test::expect_error;

namespace {
using Model = test::MoeModel::impl<float, backend::Cpu>;
void build_with(const std::function<void(ModelConfig&)>& edit, const std::vector<std::string>& fragments) {
  ModelConfig cfg = test::tiny_model();
  edit(cfg);
  expect_error([&] { Model m(cfg); }, fragments);
}
}  // namespace

BOOST_AUTO_TEST_CASE(routing_numbers) {
  build_with([](ModelConfig& m) { m.top_k = m.n_experts + 1; }, {"model.top_k", "larger than n_experts 4"});
  build_with([](ModelConfig& m) { m.n_groups = 3; }, {"model.n_groups", "n_groups 3 does not divide n_experts 4"});
  build_with([](ModelConfig& m) { m.n_groups = 0; }, {"model.n_groups", "a divisor of n_experts"});
  build_with([](ModelConfig& m) { m.n_groups = 128; }, {"model.n_groups", "at most 64"});
  build_with([](ModelConfig& m) { m.n_groups = 2, m.top_groups = 3; }, {"model.top_groups", "1 <= top_groups <= 2"});
  build_with([](ModelConfig& m) { m.n_groups = 4, m.top_groups = 1, m.top_k = 2; },
             {"model.top_k", "top_k 2 exceeds the 1 experts of the top_groups = 1 eligible groups"});
  build_with([](ModelConfig& m) { m.capacity_factor = 0; }, {"model.capacity_factor", "capacity_factor is 0", "positive"});
  build_with([](ModelConfig& m) { m.capacity_factor = -1.5; }, {"model.capacity_factor", "positive"});
  build_with([](ModelConfig& m) { m.drop_policy = "random"; }, {"model.drop_policy", "'random'", "probability or position"});
  build_with([](ModelConfig& m) { m.router_temperature = 0; }, {"model.router_temperature", "positive"});
  build_with([](ModelConfig& m) { m.router_jitter = 1.0; }, {"model.router_jitter", "[0, 1)"});
  build_with([](ModelConfig& m) { m.router_noise_std = -0.1; }, {"model.router_noise_std", ">= 0"});
  build_with([](ModelConfig& m) { m.route_scale = 0; }, {"model.route_scale", "> 0"});
  build_with([](ModelConfig& m) { m.bias_update_rate = -1; }, {"bias_update_rate", ">= 0"});
}

BOOST_AUTO_TEST_CASE(structure_numbers) {
  build_with([](ModelConfig& m) { m.moe_every = 0; }, {"model.moe_every", "interleave period", "positive integer"});
  build_with([](ModelConfig& m) { m.moe_first_dense = m.n_layers + 1; }, {"model.moe_first_dense", "<= n_layers"});
  build_with([](ModelConfig& m) { m.expert_depth = 0; }, {"model.expert_depth", "at least 1 layer"});
  build_with([](ModelConfig& m) { m.expert_heads = -1; }, {"model.expert_heads", ">= 0"});
  build_with([](ModelConfig& m) { m.n_shared_experts = -1; }, {"model.n_shared_experts", ">= 0"});
  build_with([](ModelConfig& m) { m.d_shared_expert = -4; }, {"model.d_shared_expert", ">= 0"});
}

BOOST_AUTO_TEST_CASE(transformer_expert_heads) {
  // expert_heads must divide d_model into an even head size: caught when the expert is declared.
  using Blk = TransformerBlock<CausalAttention<Rope>, MoE<TransformerExpert<SwiGLU>, TopK>>;
  using M = DecoderLM<Blk, RmsNorm>::impl<float, backend::Cpu>;
  ModelConfig cfg = test::tiny_model();
  cfg.expert_heads = 3;
  expect_error([&] { M m(cfg); }, {"model.expert_heads"});
}

BOOST_AUTO_TEST_CASE(hash_router_needs_token_ids) {
  ModelConfig cfg = test::tiny_model();
  MoE<SwiGLU, Hash>::impl<float, backend::Cpu> moe;
  ParamRegistry reg;
  moe.declare(reg, "moe", cfg);
  std::vector<float> p(static_cast<std::size_t>(reg.total()), 0.1f), g(p.size(), 0.f);
  moe.bind(reg, p.data(), g.data());
  std::vector<float> x(static_cast<std::size_t>(4 * cfg.d_model), 0.5f), y(x.size());
  expect_error([&] { moe.forward(x.data(), y.data(), 4); }, {"Hash router needs the token ids"});
}
