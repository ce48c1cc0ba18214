#define BOOST_TEST_MODULE bias_update
// The auxiliary-loss-free bias update (BiasUpdate with SigmoidBias): on a deliberately skewed
// router it drives the expert loads towards balance within a bounded number of steps, and in
// a Trainer it runs after every optimizer step, outside the gradient and the optimizer.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../support/numeric.hpp"
#include "../support/tiny.hpp"
#include "tmoe/tmoe.hpp"

using namespace tmoe;
using Cpu = backend::Cpu;

namespace {
// max load / mean load of one routing (1 = perfect balance)
double spread(const std::vector<std::int64_t>& routed) {
  double mx = 0, mean = 0;
  for (auto c : routed) mx = std::max(mx, static_cast<double>(c)), mean += static_cast<double>(c);
  mean /= static_cast<double>(routed.size());
  return mx / mean;
}
}  // namespace

BOOST_AUTO_TEST_CASE(skewed_router_is_balanced_within_bounded_steps) {
  for (bool grouped : {false, true}) {
    ModelConfig cfg;
    cfg.d_model = 16;
    cfg.n_experts = 8;
    cfg.top_k = 2;
    cfg.d_expert = 8;
    cfg.n_groups = grouped ? 4 : 1;
    cfg.top_groups = grouped ? 2 : 1;
    cfg.bias_update_rate = 0.01;
    using Sig = MoE<SwiGLU, SigmoidBias, Dropless, Balancing<BiasUpdate>>;
    using Grp = MoE<SwiGLU, GroupLimited<SigmoidBias>, Dropless, Balancing<BiasUpdate>>;
    auto run = [&](auto layer_tag) {
      typename decltype(layer_tag)::template impl<double, Cpu> moe;
      ParamRegistry reg;
      moe.declare(reg, "moe", cfg);
      std::vector<double> p(static_cast<std::size_t>(reg.total()), 0.0), g(p.size(), 0.0);
      for (int i = 0; i < reg.size(); ++i) {
        const auto v = test::randn(static_cast<std::size_t>(reg[i].numel()), 11 + static_cast<unsigned>(i), 0.3);
        std::copy(v.begin(), v.end(), p.begin() + reg[i].offset);
      }
      std::fill_n(p.begin() + reg.find("moe.router.bias")->offset, cfg.n_experts, 0.0);
      // Skew: positive inputs and router rows that favour experts 0 and 1 strongly.
      const std::int64_t n = 256, c = cfg.d_model;
      auto x = test::randn(static_cast<std::size_t>(n * c), 3);
      for (auto& v : x) v = std::abs(v);
      double* w = p.data() + reg.find("moe.router.weight")->offset;
      for (std::int64_t j = 0; j < c; ++j) w[0 * c + j] += 0.15, w[1 * c + j] += 0.1;
      moe.bind(reg, p.data(), g.data());
      std::vector<double> y(static_cast<std::size_t>(n * c));
      RouteContext ctx;
      ctx.training = true;
      std::vector<double> spreads;
      for (int step = 0; step < 400; ++step) {
        moe.forward(x.data(), y.data(), n, ctx);
        spreads.push_back(spread(moe.routing_plan().routed));
        moe.after_step([](double*, std::int64_t) {});
      }
      const double first = spreads.front();
      double late = 0;  // mean over the last 50 steps (the bias oscillates by ±γ around balance)
      for (std::size_t i = spreads.size() - 50; i < spreads.size(); ++i) late += spreads[i] / 50.0;
      std::size_t reached = spreads.size();
      for (std::size_t i = 0; i < spreads.size(); ++i)
        if (spreads[i] <= 1.25) {
          reached = i;
          break;
        }
      BOOST_TEST_MESSAGE((grouped ? "GroupLimited<SigmoidBias>" : "SigmoidBias")
                         << ": load max/mean " << first << " at step 0, <= 1.25 at step " << reached
                         << ", mean of the last 50 steps " << late);
      BOOST_TEST(first >= 2.5, "the router is not skewed to begin with: " << first);
      BOOST_TEST(reached <= 200u, "balance (max/mean <= 1.25) not reached within 200 steps");
      BOOST_TEST(late <= 1.3, "the load does not stay balanced: " << late);
      // The update is ±γ per step: every bias is an integer multiple of γ.
      const double* b = p.data() + reg.find("moe.router.bias")->offset;
      for (std::int64_t e = 0; e < cfg.n_experts; ++e) {
        const double q = b[e] / cfg.bias_update_rate;
        BOOST_TEST(std::abs(q - std::round(q)) <= 1e-9);
      }
      BOOST_TEST(b[0] < 0.0);  // the favoured experts' biases went down
      BOOST_TEST(b[1] < 0.0);
    };
    if (grouped) run(Grp{});
    else run(Sig{});
  }
}

BOOST_AUTO_TEST_CASE(trainer_updates_the_bias_after_each_step_outside_the_optimizer) {
  using Ffn = MoE<SwiGLU, GroupLimited<SigmoidBias>, Dropless, Balancing<SeqAuxLoss, BiasUpdate>>;
  using Model = DecoderLM<TransformerBlock<CausalAttention<Rope>, Ffn>, RmsNorm>;
  Config cfg = test::tiny_train_config();
  cfg.model.n_groups = 2;
  cfg.model.top_groups = 1;
  cfg.model.bias_update_rate = 0.125;  // a power of two: multiples are exact
  cfg.model.moe_first_dense = 1;
  cfg.train.steps = 3;
  Trainer<Model, AdamW, Fp64, Serial, Cpu> tr(cfg);
  const ParamRegistry& reg = tr.model().registry();
  BOOST_REQUIRE(reg.find("layers.0.ffn.w1.weight"));        // the first layer is dense
  BOOST_REQUIRE(!reg.find("layers.0.moe.router.bias"));
  const ParamInfo* bias = reg.find("layers.1.moe.router.bias");
  BOOST_REQUIRE(bias);
  BOOST_TEST(bias->has(kTagBuffer));
  const auto batches = test::random_batches(cfg.train.batch_size * cfg.train.seq_len, cfg.model.vocab_size);
  std::vector<double> before(tr.model().params() + bias->offset, tr.model().params() + bias->offset + bias->numel());
  for (int s = 0; s < 3; ++s) {
    const StepStats st = tr.train_step(batches);
    BOOST_REQUIRE_EQUAL(st.moe.size(), 2u);
    BOOST_TEST(st.moe[0].tokens.empty());  // dense layer: no statistics
    BOOST_TEST(st.moe[1].bias.size() == static_cast<std::size_t>(cfg.model.n_experts));
    BOOST_TEST(st.moe[1].terms.size() == 2u);
    // the bias has no gradient, and moved by exactly ±γ (or 0) per expert and step
    for (std::int64_t i = 0; i < bias->numel(); ++i) {
      BOOST_TEST(tr.model().grads()[bias->offset + i] == 0.0);
      const double d = tr.model().params()[bias->offset + i] - before[static_cast<std::size_t>(i)];
      BOOST_TEST((d == 0.0 || std::abs(d) == cfg.model.bias_update_rate), "bias step " << d);
      before[static_cast<std::size_t>(i)] = tr.model().params()[bias->offset + i];
    }
  }
  // Evaluation does not count loads or move the bias.
  tr.evaluate(batches, 1);
  tr.model().after_step([](double*, std::int64_t) {});
  for (std::int64_t i = 0; i < bias->numel(); ++i)
    BOOST_TEST(tr.model().params()[bias->offset + i] == before[static_cast<std::size_t>(i)]);
}
