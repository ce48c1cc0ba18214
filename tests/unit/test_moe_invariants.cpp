#define BOOST_TEST_MODULE moe_invariants
// Invariants of the MoE layer for every router x capacity combination, on random and
// adversarial router inputs (every token preferring one expert, logits of ±1e4, exact ties):
//   - every gate is finite and the gates sum as the router specifies;
//   - dropless: every token is processed exactly k times, by k distinct experts;
//   - with a capacity: no expert exceeds it (expert choice: every expert exactly full), and
//     an expert keeps min(routed, C) of its assignments;
//   - dispatch followed by its inverse (each row scattered back to its token) is a bitwise
//     identity on every token that has a kept assignment;
//   - the output equals Σ_kept gate · expert(x_t) computed naively in double, per token;
//   - renormalised top-k over identical experts equals the dense FFN.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../support/numeric.hpp"
#include "tmoe/tmoe.hpp"

using namespace tmoe;
using Cpu = backend::Cpu;

namespace {

enum class Scenario { kRandom, kOneExpert, kExtreme, kTies };
const char* scenario_name(Scenario s) {
  return s == Scenario::kRandom ? "random" : s == Scenario::kOneExpert ? "one-expert" : s == Scenario::kExtreme ? "±1e4" : "ties";
}

ModelConfig layer_config() {
  ModelConfig m;
  m.d_model = 8;
  m.n_heads = 2;
  m.n_experts = 8;
  m.top_k = 2;
  m.d_expert = 6;
  m.n_layers = 2;
  m.n_groups = 4;
  m.top_groups = 2;
  m.capacity_factor = 0.75;
  m.route_scale = 1.5;
  m.seq_aux_loss_weight = 0.01;
  return m;
}

// y = (silu(x W1ᵀ) ⊙ x W3ᵀ) W2ᵀ for one row, from the registry's weights, in double.
std::vector<double> swiglu_row(const ParamRegistry& r, const std::vector<double>& p, const std::string& name,
                               const double* x, std::int64_t c) {
  const ParamInfo &w1 = *r.find(name + ".w1.weight"), &w3 = *r.find(name + ".w3.weight"), &w2 = *r.find(name + ".w2.weight");
  const std::int64_t h = w1.shape[0];
  std::vector<double> hid(static_cast<std::size_t>(h)), y(static_cast<std::size_t>(c), 0.0);
  for (std::int64_t i = 0; i < h; ++i) {
    double a = 0, b = 0;
    for (std::int64_t j = 0; j < c; ++j) {
      a += x[j] * p[w1.offset + i * c + j];
      b += x[j] * p[w3.offset + i * c + j];
    }
    hid[i] = a / (1.0 + std::exp(-a)) * b;
  }
  for (std::int64_t o = 0; o < c; ++o)
    for (std::int64_t i = 0; i < h; ++i) y[o] += hid[i] * p[w2.offset + o * h + i];
  return y;
}

template <class Router, class Capacity>
void check(const std::string& what, ModelConfig cfg, Scenario sc, bool identical_experts = false) {
  using Layer = MoE<SwiGLU, Router, Capacity, Balancing<AuxLoss, SeqAuxLoss, ZLoss>>;
  typename Layer::template impl<double, Cpu> moe;
  ParamRegistry reg;
  moe.declare(reg, "moe", cfg);
  std::vector<double> p(static_cast<std::size_t>(reg.total()), 0.0), g(p.size(), 0.0);
  for (int i = 0; i < reg.size(); ++i) {
    const ParamInfo& pi = reg[i];
    const auto v = test::randn(static_cast<std::size_t>(pi.numel()), 77 + static_cast<unsigned>(i), 0.4);
    std::copy(v.begin(), v.end(), p.begin() + pi.offset);
  }
  moe.bind(reg, p.data(), g.data());
  const std::int64_t n = 48, c = cfg.d_model, e = cfg.n_experts, k = cfg.top_k;
  auto x = test::randn(static_cast<std::size_t>(n * c), 5);
  std::vector<std::int32_t> tokens = test::random_tokens(n, 50, 6);
  if (const ParamInfo* rw = reg.find("moe.router.weight")) {
    double* w = p.data() + rw->offset;
    if (sc == Scenario::kOneExpert) {  // positive inputs, only expert 5's row nonzero
      for (auto& v : x) v = std::abs(v) + 0.1;
      std::fill(w, w + e * c, 0.0);
      for (std::int64_t j = 0; j < c; ++j) w[5 * c + j] = 1.0;
    } else if (sc == Scenario::kExtreme) {
      for (std::int64_t i = 0; i < e * c; ++i) w[i] *= 1e4;
    } else if (sc == Scenario::kTies) {
      std::fill(w, w + e * c, 0.0);
    }
  }
  if (sc == Scenario::kOneExpert || sc == Scenario::kTies) std::fill(tokens.begin(), tokens.end(), 7);  // Hash
  if (const ParamInfo* b = reg.find("moe.router.bias")) {  // a nonzero selection bias
    const auto v = test::randn(static_cast<std::size_t>(e), 9, 0.05);
    std::copy(v.begin(), v.end(), p.begin() + b->offset);
  }
  if (identical_experts)
    for (std::int64_t x2 = 1; x2 < e; ++x2)
      for (const char* m : {".w1.weight", ".w3.weight", ".w2.weight"}) {
        const ParamInfo& src = *reg.find("moe.experts.0" + std::string(m));
        const ParamInfo& dst = *reg.find("moe.experts." + std::to_string(x2) + m);
        std::copy_n(p.begin() + src.offset, src.numel(), p.begin() + dst.offset);
      }
  RouteContext ctx;
  ctx.tokens = tokens.data();
  ctx.batch = 4;
  ctx.seq_len = 12;
  std::vector<double> y(static_cast<std::size_t>(n * c));
  moe.forward(x.data(), y.data(), n, ctx);
  const std::string tag = what + " [" + scenario_name(sc) + "]";
  const auto& plan = moe.routing_plan();
  const auto ex = moe.assignment_experts();
  const auto tk = moe.assignment_tokens();
  const auto kept = moe.assignment_kept();
  const std::int64_t a = static_cast<std::int64_t>(ex.size());
  constexpr bool expert_choice = Router::kind == RouterKind::kExpertChoice;
  const double rs = cfg.route_scale;

  // gates: finite, and summing as the router specifies
  bool finite = true;
  for (std::int64_t i = 0; i < a; ++i) finite = finite && std::isfinite(moe.gate(i));
  BOOST_TEST(finite, tag << ": a gate is not finite");
  if constexpr (!expert_choice) {
    BOOST_REQUIRE_EQUAL(a, n * k);
    double worst = 0;
    for (std::int64_t t = 0; t < n; ++t) {
      double s = 0;
      for (std::int64_t j = 0; j < k; ++j) {
        BOOST_REQUIRE(moe.gate(t * k + j) >= 0.0);
        s += moe.gate(t * k + j);
      }
      // renormalised (and Hash): Σ = route_scale; unnormalised softmax: Σ <= route_scale;
      // unnormalised sigmoid: each gate σ · route_scale <= route_scale.
      const bool sums_to_scale = cfg.router_renormalize || Router::kind == RouterKind::kHash;
      const double bound = Router::has_bias ? rs * static_cast<double>(k) : rs;
      worst = std::max(worst, sums_to_scale ? std::abs(s - rs) : std::max(0.0, s - bound));
      for (std::int64_t j = 0; j < k; ++j) worst = std::max(worst, std::max(0.0, moe.gate(t * k + j) - rs));
      std::vector<bool> seen(static_cast<std::size_t>(e), false);  // k distinct experts per token
      for (std::int64_t j = 0; j < k; ++j) {
        BOOST_REQUIRE(!seen[static_cast<std::size_t>(ex[t * k + j])]);
        seen[static_cast<std::size_t>(ex[t * k + j])] = true;
        BOOST_REQUIRE_EQUAL(tk[t * k + j], t);
      }
    }
    BOOST_TEST(worst <= 1e-12, tag << ": gate sums differ from the router's rule by " << worst);
  } else {
    for (std::int64_t i = 0; i < a; ++i) BOOST_REQUIRE(moe.gate(i) >= 0.0 && moe.gate(i) <= rs * (1 + 1e-12));
  }

  // processing counts and capacity
  std::vector<std::int64_t> per_token(static_cast<std::size_t>(n), 0);
  for (std::int64_t i = 0; i < a; ++i) per_token[tk[i]] += kept[i];
  if constexpr (!Capacity::drops) {
    bool exact = true;
    for (auto v : per_token) exact = exact && v == k;
    BOOST_TEST(exact, tag << ": a token is not processed exactly k times");
    BOOST_TEST(plan.rows() == n * k);
  } else {
    const std::int64_t cap = moe.capacity();
    BOOST_TEST(cap == expert_capacity(cfg.capacity_factor, n, k, e));
    for (std::int64_t x2 = 0; x2 < e; ++x2) {
      BOOST_TEST(plan.counts[x2] <= cap, tag << ": expert " << x2 << " holds " << plan.counts[x2] << " > " << cap);
      BOOST_TEST(plan.counts[x2] == std::min(plan.routed[x2], cap), tag << ": expert " << x2);
      if (expert_choice) BOOST_TEST(plan.counts[x2] == cap);
      BOOST_TEST(moe.stats().dropped[x2] == plan.routed[x2] - plan.counts[x2]);
    }
  }

  // dispatch then its inverse: a bitwise identity
  {
    std::vector<double> back(static_cast<std::size_t>(n * c), std::nan(""));
    const double* xe = moe.xe.data();
    for (std::int64_t i = 0; i < a; ++i)
      if (kept[i])
        for (std::int64_t j = 0; j < c; ++j) back[tk[i] * c + j] = xe[static_cast<std::int64_t>(plan.pos[i]) * c + j];
    bool same = true;
    for (std::int64_t t = 0; t < n; ++t)
      if (per_token[t])
        for (std::int64_t j = 0; j < c; ++j) same = same && back[t * c + j] == x[t * c + j];
    BOOST_TEST(same, tag << ": permute then unpermute is not the identity");
  }

  // output = Σ_kept gate · expert(x_t), naively
  {
    std::vector<double> ref(static_cast<std::size_t>(n * c), 0.0);
    for (std::int64_t i = 0; i < a; ++i) {
      if (!kept[i]) continue;
      const auto yr = swiglu_row(reg, p, "moe.experts." + std::to_string(ex[i]), x.data() + tk[i] * c, c);
      for (std::int64_t j = 0; j < c; ++j) ref[tk[i] * c + j] += moe.gate(i) * yr[j];
    }
    const double err = test::max_abs_diff(y, ref);
    BOOST_TEST(err <= 1e-12, tag << ": output differs from the naive sum by " << err);
  }

  if (identical_experts) {  // renormalised routing over identical experts is the dense FFN (times route_scale)
    double err = 0;
    for (std::int64_t t = 0; t < n; ++t) {
      const auto yr = swiglu_row(reg, p, "moe.experts.0", x.data() + t * c, c);
      for (std::int64_t j = 0; j < c; ++j) err = std::max(err, std::abs(y[t * c + j] - rs * yr[j]));
    }
    BOOST_TEST(err <= 1e-12, tag << ": identical experts differ from the dense FFN by " << err);
  }

  // backward runs and stays finite on every input (the bias buffer gets no gradient)
  std::vector<double> dx(static_cast<std::size_t>(n * c));
  const auto dy = test::randn(static_cast<std::size_t>(n * c), 8);
  moe.backward(dy.data(), dx.data(), false, 1.0);
  bool gfinite = true;
  for (double v : dx) gfinite = gfinite && std::isfinite(v);
  for (double v : g) gfinite = gfinite && std::isfinite(v);
  BOOST_TEST(gfinite, tag << ": a gradient is not finite");
  if (const ParamInfo* b = reg.find("moe.router.bias"))
    for (std::int64_t i = 0; i < b->numel(); ++i) BOOST_REQUIRE_EQUAL(g[b->offset + i], 0.0);
  BOOST_TEST(std::isfinite(moe.loss()));
}

template <class Router, class Capacity>
void all_scenarios(const std::string& what, const ModelConfig& cfg) {
  for (Scenario s : {Scenario::kRandom, Scenario::kOneExpert, Scenario::kExtreme, Scenario::kTies})
    check<Router, Capacity>(what, cfg, s);
}

ModelConfig with(ModelConfig m, bool renorm, const std::string& drop = "probability") {
  m.router_renormalize = renorm;
  m.drop_policy = drop;
  return m;
}

}  // namespace

BOOST_AUTO_TEST_CASE(topk) {
  for (bool renorm : {true, false}) {
    all_scenarios<TopK, Dropless>("TopK/Dropless", with(layer_config(), renorm));
    for (const char* drop : {"probability", "position"})
      all_scenarios<TopK, CapacityFactor>(std::string("TopK/CapacityFactor/") + drop, with(layer_config(), renorm, drop));
  }
  ModelConfig sw = with(layer_config(), false);  // Switch: top-1, unnormalised, capacity
  sw.top_k = 1;
  all_scenarios<TopK, CapacityFactor>("Switch", sw);
  ModelConfig hot = layer_config();  // temperature changes nothing of the invariants
  hot.router_temperature = 0.25;
  all_scenarios<TopK, Dropless>("TopK/temperature 0.25", hot);
}

BOOST_AUTO_TEST_CASE(sigmoid_bias_and_group_limited) {
  for (bool renorm : {true, false}) {
    all_scenarios<SigmoidBias, Dropless>("SigmoidBias/Dropless", with(layer_config(), renorm));
    all_scenarios<SigmoidBias, CapacityFactor>("SigmoidBias/CapacityFactor", with(layer_config(), renorm));
    all_scenarios<GroupLimited<SigmoidBias>, Dropless>("GroupLimited<SigmoidBias>/Dropless", with(layer_config(), renorm));
    all_scenarios<GroupLimited<SigmoidBias>, CapacityFactor>("GroupLimited<SigmoidBias>/CapacityFactor",
                                                             with(layer_config(), renorm, "position"));
    all_scenarios<GroupLimited<TopK>, Dropless>("GroupLimited<TopK>/Dropless", with(layer_config(), renorm));
  }
}

BOOST_AUTO_TEST_CASE(expert_choice_and_hash) {
  for (double f : {0.5, 1.0, 2.0}) {
    ModelConfig m = layer_config();
    m.capacity_factor = f;
    all_scenarios<ExpertChoice, CapacityFactor>("ExpertChoice/f=" + std::to_string(f), m);
  }
  all_scenarios<Hash, Dropless>("Hash/Dropless", layer_config());
  all_scenarios<Hash, CapacityFactor>("Hash/CapacityFactor", layer_config());
}

BOOST_AUTO_TEST_CASE(identical_experts_equal_the_dense_ffn) {
  check<TopK, Dropless>("TopK renormalised", with(layer_config(), true), Scenario::kRandom, true);
  check<SigmoidBias, Dropless>("SigmoidBias renormalised", with(layer_config(), true), Scenario::kRandom, true);
  check<GroupLimited<SigmoidBias>, Dropless>("GroupLimited<SigmoidBias>", with(layer_config(), true), Scenario::kRandom,
                                             true);
  check<Hash, Dropless>("Hash", layer_config(), Scenario::kRandom, true);
}
