#define BOOST_TEST_MODULE moe_host_routing
// The MoE layer's device path ("route on the host, compute on the device", moe/moe_layer.hpp)
// run on the CPU: CpuApart is backend::Cpu with a memory space that is not HostSpace, so the
// layer takes every branch it takes on a GPU (logits copied to a host buffer, the plan's
// packed index arrays and the gates copied back, dgate to the host, dlogits back, the bias
// read and updated through host copies) while the copies stay plain host copies. Its
// outputs, input gradient, parameter gradients, bias after the update, loss and statistics
// must be bitwise those of backend::Cpu, for token choice with and without capacity, a
// sigmoid-bias router with a shared expert and the bias update, expert choice and hashing,
// under training noise, jitter, expert dropout and expert drop. (What this cannot see: a
// device loop reading host memory, which host memory forgives.)
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "../support/numeric.hpp"
#include "tmoe/tmoe.hpp"

using namespace tmoe;

namespace {

struct ApartSpace {};
struct CpuApart : backend::Cpu {
  using Space = ApartSpace;
};

ModelConfig layer_config(bool shared) {
  ModelConfig m;
  m.d_model = 16;
  m.n_heads = 2;
  m.n_experts = 4;
  m.top_k = 2;
  m.d_expert = 12;
  m.n_groups = 2;
  m.top_groups = 1;
  m.n_layers = 2;
  m.capacity_factor = 0.9;
  m.route_scale = 1.25;
  m.seq_aux_loss_weight = 0.01;
  m.bias_update_rate = 0.05;
  m.router_jitter = 0.05;
  m.router_noise_std = 0.1;
  m.expert_dropout = "0.1";
  m.expert_drop_rate = 0.25;
  m.n_shared_experts = shared ? 1 : 0;
  return m;
}

struct Run {
  std::vector<float> y, dx, p, g;
  double loss = 0;
  MoEStats stats;
};

template <class L, class B>
Run run(bool shared) {
  const ModelConfig cfg = layer_config(shared);
  typename L::template impl<float, B> moe;
  ParamRegistry reg;
  moe.declare(reg, "moe", cfg);
  Run out;
  out.p.resize(static_cast<std::size_t>(reg.total()));
  out.g.assign(out.p.size(), 0.0f);
  const auto v = test::randn<float>(out.p.size(), 1, 0.3);
  std::copy(v.begin(), v.end(), out.p.begin());
  moe.bind(reg, out.p.data(), out.g.data());
  const std::int64_t n = 32, c = cfg.d_model;
  const auto tokens = test::random_tokens(n, 64, 3);
  out.y.resize(static_cast<std::size_t>(n * c));
  out.dx.resize(out.y.size());
  for (int step = 0; step < 2; ++step) {  // the second step sees the updated bias
    const auto x = test::randn<float>(static_cast<std::size_t>(n * c), 2 + step);
    RouteContext ctx;
    ctx.tokens = tokens.data();
    ctx.batch = 2;
    ctx.seq_len = 16;
    ctx.training = true;
    ctx.seed = 77;
    ctx.step = step;
    ctx.layer = 1;
    ctx.token_offset = 5;
    moe.forward(x.data(), out.y.data(), n, ctx);
    moe.backward(out.y.data(), out.dx.data(), false, 0.5);
    moe.after_step([](double*, std::int64_t) {});
  }
  out.loss = moe.loss();
  out.stats = moe.stats();
  return out;
}

template <class L>
void same(const std::string& what, bool shared) {
  const Run a = run<L, backend::Cpu>(shared), b = run<L, CpuApart>(shared);
  BOOST_TEST_CONTEXT(what) {
    BOOST_TEST((a.y == b.y));
    BOOST_TEST((a.dx == b.dx));
    BOOST_TEST((a.g == b.g));
    BOOST_TEST((a.p == b.p));  // the selection bias after the updates
    BOOST_TEST(a.loss == b.loss);
    BOOST_TEST((a.stats.tokens == b.stats.tokens));
    BOOST_TEST((a.stats.dropped == b.stats.dropped));
    BOOST_TEST(a.stats.entropy == b.stats.entropy);
    BOOST_TEST((a.stats.bias == b.stats.bias));
    BOOST_TEST(a.stats.terms.size() == b.stats.terms.size());
    for (std::size_t i = 0; i < a.stats.terms.size() && i < b.stats.terms.size(); ++i)
      BOOST_TEST(a.stats.terms[i].second == b.stats.terms[i].second);
    double norm = 0;
    for (float z : a.g) norm += static_cast<double>(z) * z;
    BOOST_TEST(norm > 0);  // something was computed
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(token_choice_matches_cpu_bitwise) {
  same<MoE<SwiGLU, TopK>>("topk dropless", false);
  same<MoE<SwiGLU, TopK, CapacityFactor>>("topk capacity", false);
  same<MoE<GeluFFN, GroupLimited<TopK>, Dropless>>("group-limited gelu", false);
}

BOOST_AUTO_TEST_CASE(sigmoid_bias_shared_expert_matches_cpu_bitwise) {
  same<MoE<SwiGLU, SigmoidBias, CapacityFactor, Balancing<AuxLoss, SeqAuxLoss, ZLoss, BiasUpdate>>>("sigmoid-bias shared",
                                                                                                    true);
}

BOOST_AUTO_TEST_CASE(expert_choice_and_hash_match_cpu_bitwise) {
  same<MoE<SwiGLU, ExpertChoice, CapacityFactor>>("expert choice", false);
  same<MoE<SwiGLU, Hash, Dropless>>("hash", true);
}
