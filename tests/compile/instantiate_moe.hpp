// The body of test_instantiate_moe*.cpp, one file per compute type so that no translation
// unit takes more than about a minute. The MoE compile matrix (issue 4): every router,
// capacity policy and expert tmoe ships, instantiated against the defaults of the other
// roles (SwiGLU experts, TopK routing, Dropless, Balancing<AuxLoss, ZLoss>), every member
// function explicitly, and run once as a layer: forward, loss, backward, statistics.
// Combinations that make no sense fail to compile with a sentence (tests/compile_fail/). The
// presets of the example trainer are instantiated in test_instantiate_presets.cpp.
// No include guard: included once per test file, with TMOE_TEST_REAL defined.
#if !defined(TMOE_TEST_REAL)
#error "define TMOE_TEST_REAL before including instantiate_moe.hpp"
#endif
#include <boost/mp11.hpp>
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../support/numeric.hpp"
#include "tmoe/tmoe.hpp"

using namespace tmoe;
using Cpu = backend::Cpu;
namespace mp = boost::mp11;

// Routers x capacity (every sensible pair), then the other experts with the defaults.
using Layers = mp::mp_list<
    MoE<SwiGLU, TopK, Dropless>, MoE<SwiGLU, TopK, CapacityFactor>,
    MoE<SwiGLU, SigmoidBias, Dropless>, MoE<SwiGLU, SigmoidBias, CapacityFactor, Balancing<SeqAuxLoss, BiasUpdate>>,
    MoE<SwiGLU, GroupLimited<SigmoidBias>, Dropless, Balancing<AuxLoss, SeqAuxLoss, ZLoss, BiasUpdate>>,
    MoE<SwiGLU, GroupLimited<SigmoidBias>, CapacityFactor>, MoE<SwiGLU, GroupLimited<TopK>, Dropless>,
    MoE<SwiGLU, GroupLimited<TopK>, CapacityFactor>, MoE<SwiGLU, ExpertChoice, CapacityFactor>,
    MoE<SwiGLU, Hash, Dropless>, MoE<SwiGLU, Hash, CapacityFactor>, MoE<GeluFFN>, MoE<TransformerExpert<SwiGLU>>,
    MoE<TransformerExpert<GeluFFN>, TopK, CapacityFactor>, MoE<SwiGLU, TopK, Dropless, Balancing<>>>;

template struct tmoe::MoE<SwiGLU, TopK, Dropless>::impl<TMOE_TEST_REAL, Cpu>;
template struct tmoe::MoE<SwiGLU, TopK, CapacityFactor>::impl<TMOE_TEST_REAL, Cpu>;
template struct tmoe::MoE<SwiGLU, SigmoidBias, CapacityFactor, Balancing<SeqAuxLoss, BiasUpdate>>::impl<TMOE_TEST_REAL, Cpu>;
template struct tmoe::MoE<SwiGLU, GroupLimited<SigmoidBias>, Dropless,
                          Balancing<AuxLoss, SeqAuxLoss, ZLoss, BiasUpdate>>::impl<TMOE_TEST_REAL, Cpu>;
template struct tmoe::MoE<SwiGLU, GroupLimited<TopK>, CapacityFactor>::impl<TMOE_TEST_REAL, Cpu>;
template struct tmoe::MoE<SwiGLU, ExpertChoice, CapacityFactor>::impl<TMOE_TEST_REAL, Cpu>;
template struct tmoe::MoE<SwiGLU, Hash, CapacityFactor>::impl<TMOE_TEST_REAL, Cpu>;
template struct tmoe::MoE<TransformerExpert<SwiGLU>>::impl<TMOE_TEST_REAL, Cpu>;
template struct tmoe::MoE<TransformerExpert<GeluFFN>, TopK, CapacityFactor>::impl<TMOE_TEST_REAL, Cpu>;
template struct tmoe::TransformerExpert<SwiGLU>::impl<TMOE_TEST_REAL, Cpu>;
template struct tmoe::TransformerExpert<GeluFFN>::impl<TMOE_TEST_REAL, Cpu>;

namespace {

ModelConfig layer_config() {
  ModelConfig m;
  m.d_model = 16;
  m.n_heads = 2;
  m.n_experts = 4;
  m.top_k = 2;
  m.d_expert = 8;
  m.n_groups = 2;
  m.top_groups = 1;
  m.n_shared_experts = 1;
  m.expert_depth = 2;
  m.context = 8;
  return m;
}

struct Outcome {
  std::string name;
  bool finite = true;
  std::int64_t processed = 0, dropped = 0, terms = 0;
  double loss = 0;
};

template <class L, class T>
Outcome run_layer() {
  const ModelConfig cfg = layer_config();
  typename L::template impl<T, Cpu> moe;
  ParamRegistry reg;
  moe.declare(reg, "moe", cfg);
  std::vector<T> p(static_cast<std::size_t>(reg.total())), g(p.size(), T(0));
  const auto v = test::randn<T>(p.size(), 1, 0.3);
  std::copy(v.begin(), v.end(), p.begin());
  moe.bind(reg, p.data(), g.data());
  const std::int64_t n = 16, c = cfg.d_model;
  const auto x = test::randn<T>(static_cast<std::size_t>(n * c), 2);
  const auto tokens = test::random_tokens(n, 64, 3);
  std::vector<T> y(x.size()), dx(x.size());
  RouteContext ctx;
  ctx.tokens = tokens.data();
  ctx.batch = 2;
  ctx.seq_len = 8;
  ctx.training = true;
  moe.forward(x.data(), y.data(), n, ctx);
  moe.backward(y.data(), dx.data(), false, 1.0);
  moe.after_step([](double*, std::int64_t) {});
  Outcome o;
  o.name = std::string(L::router_policy::name) + "/" + L::capacity_policy::name + "/" + L::expert_policy::name;
  for (auto a : {&y, &dx, &g})
    for (T z : *a) o.finite = o.finite && std::isfinite(static_cast<double>(z));
  for (auto t : moe.stats().tokens) o.processed += t;
  for (auto d : moe.stats().dropped) o.dropped += d;
  o.terms = static_cast<std::int64_t>(moe.stats().terms.size());
  o.loss = moe.loss();
  return o;
}

void check(const Outcome& o, std::int64_t expected_terms, bool drops) {
  BOOST_TEST_MESSAGE(o.name << ": processed " << o.processed << ", dropped " << o.dropped << ", loss " << o.loss);
  BOOST_TEST(o.finite, o.name);
  BOOST_TEST(o.processed > 0, o.name);
  BOOST_TEST(o.terms == expected_terms, o.name);
  if (!drops) BOOST_TEST(o.dropped == 0, o.name);
  BOOST_TEST(std::isfinite(o.loss), o.name);
}

using LayerTuple = mp::mp_rename<Layers, std::tuple>;

}  // namespace

BOOST_AUTO_TEST_CASE(every_router_capacity_and_expert_satisfies_its_role) {
  static_assert(Router<TopK> && Router<SigmoidBias> && Router<GroupLimited<SigmoidBias>> &&
                Router<GroupLimited<TopK>> && Router<ExpertChoice> && Router<Hash>);
  static_assert(CapacityPolicy<Dropless> && CapacityPolicy<CapacityFactor>);
  static_assert(Expert<SwiGLU> && Expert<GeluFFN> && Expert<TransformerExpert<SwiGLU>> &&
                Expert<TransformerExpert<GeluFFN>>);
  static_assert(!Router<CapacityFactor> && !Expert<TopK>);
  // Switch is an alias (TopK + CapacityFactor, with top_k = 1 unnormalised from the config), not a copy.
  static_assert(std::is_same_v<SwitchMoE<SwiGLU>, MoE<SwiGLU, TopK, CapacityFactor>>);
  BOOST_TEST(mp::mp_size<Layers>::value == 15u);
}

BOOST_AUTO_TEST_CASE_TEMPLATE(layer_runs, L, LayerTuple) {
  check(run_layer<L, TMOE_TEST_REAL>(), static_cast<std::int64_t>(L::balance_policy::size), L::capacity_policy::drops);
}
