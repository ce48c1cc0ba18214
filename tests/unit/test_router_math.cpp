#define BOOST_TEST_MODULE router_math
// Per-token router math against naive double references (float and double), the shared
// top-k selection, expert capacity and the routing plan with a kept mask:
//   SigmoidBias   probs = s/Σs, sel = s + b, gates s_sel/Σ s_sel (renormalised) or s;
//                 exact at ±1e4 (every σ underflows); backward_token vs central differences
//   GroupLimited  eligible groups = the top_groups by the sum of their two largest keys
//                 (ties: lower group; a group of one: its key), against a brute force, with
//                 ties; top_groups == n_groups is Inner
//   ExpertChoice  scores_token = softmax, backward_token vs central differences
//   Hash          k distinct experts, deterministic, gates 1/k, about uniform over token ids
//   select_topk   against a stable sort (many ties, -inf masked keys)
//   expert_capacity, RoutingPlan::build with a kept mask
#include <boost/test/unit_test.hpp>
#include <algorithm>
#include <array>
#include <limits>
#include <numeric>
#include <random>
#include <tuple>

#include "test_ops_common.hpp"
#include "tmoe/moe/capacity.hpp"
#include "tmoe/moe/plan.hpp"
#include "tmoe/moe/routers/expert_choice.hpp"
#include "tmoe/moe/routers/group_limited.hpp"
#include "tmoe/moe/routers/hash.hpp"
#include "tmoe/moe/routers/sigmoid_bias.hpp"
#include "tmoe/moe/routers/topk.hpp"

using tmoe::ExpertChoice;
using tmoe::GroupLimited;
using tmoe::Hash;
using tmoe::RouterParams;
using tmoe::SigmoidBias;
using tmoe::TopK;
using namespace opstest;
using Types = std::tuple<float, double>;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Indices by key, largest first, ties to the lower index.
template <class V>
std::vector<std::int32_t> order_desc(const V& key) {
  std::vector<std::int32_t> o(key.size());
  std::iota(o.begin(), o.end(), 0);
  std::stable_sort(o.begin(), o.end(), [&](std::int32_t a, std::int32_t b) { return key[a] > key[b]; });
  return o;
}
template <class V>
std::vector<std::int32_t> topk_ref(const V& key, std::int64_t k) {
  auto o = order_desc(key);
  o.resize(static_cast<std::size_t>(k));
  return o;
}

double sigm(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// One token through a token-choice router: scores, selection, gates.
template <class R, class T>
struct Routed {
  std::vector<T> probs, sel, gates;
  std::vector<std::int32_t> ids;
};
template <class R, class T>
Routed<R, T> run(const RouterParams& rp, const std::vector<T>& l, const std::vector<T>* bias) {
  Routed<R, T> r;
  const std::int64_t e = rp.n_experts, k = rp.k;
  r.probs.assign(e, T(-7));
  r.sel.assign(e, T(-7));
  r.gates.assign(k, T(-7));
  r.ids.assign(k, -7);
  R::template scores_token<T>(rp, l.data(), bias ? bias->data() : nullptr, r.probs.data(), r.sel.data());
  tmoe::select_topk(r.sel.data(), e, k, r.ids.data());
  R::template gates_token<T>(rp, l.data(), r.probs.data(), r.ids.data(), r.gates.data());
  return r;
}

}  // namespace

// ---- SigmoidBias ---------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE_TEMPLATE(sigmoid_bias_matches_reference, T, Types) {
  std::mt19937 g(11);
  double e_p = 0, e_s = 0, e_rg = 0, e_ug = 0;
  for (int row = 0; row < 3000; ++row) {
    const std::int64_t e = std::array<std::int64_t, 4>{4, 8, 16, 64}[row % 4], k = 1 + g() % e;
    const double scale = std::array<double, 4>{0.5, 3.0, 20.0, 200.0}[row % 4];
    const auto l = round_to<T>(randn(e, 100 + row, scale, row % 3 == 1 ? -30.0 : 0.0));
    const auto b = round_to<T>(randn(e, 50000 + row, 0.2));
    std::vector<double> s(e), p(e), sel(e);
    double z = 0;
    for (std::int64_t i = 0; i < e; ++i) s[i] = sigm(l[i]), z += s[i];
    // probabilities in log space, as s underflows for logits near −745 only in double
    const double mx = *std::max_element(l.begin(), l.end());
    double zl = 0;
    auto logsig = [](double v) { return v >= 0 ? -std::log1p(std::exp(-v)) : v - std::log1p(std::exp(v)); };
    for (std::int64_t i = 0; i < e; ++i) zl += std::exp(logsig(l[i]) - logsig(mx));
    for (std::int64_t i = 0; i < e; ++i) p[i] = std::exp(logsig(l[i]) - logsig(mx)) / zl, sel[i] = s[i] + b[i];
    const auto bt = as<T>(b);
    for (bool renorm : {true, false}) {
      const RouterParams rp{e, k, renorm};
      const auto r = run<SigmoidBias, T>(rp, as<T>(l), &bt);
      e_p = std::max(e_p, rel_err(r.probs, p));
      e_s = std::max(e_s, rel_err(r.sel, sel));
      // the selection is the top-k of the library's own keys (the keys are rounded to T)
      BOOST_REQUIRE(r.ids == topk_ref(r.sel, k));
      std::vector<double> gate(k);
      double zs = 0;
      for (std::int64_t j = 0; j < k; ++j) zs += std::exp(logsig(l[r.ids[j]]) - logsig(l[r.ids[0]]));
      for (std::int64_t j = 0; j < k; ++j)
        gate[j] = renorm ? std::exp(logsig(l[r.ids[j]]) - logsig(l[r.ids[0]])) / zs : s[r.ids[j]];
      if (renorm) {
        e_rg = std::max(e_rg, rel_err(r.gates, gate));
        double gs = 0;
        for (T v : r.gates) gs += v;
        BOOST_REQUIRE(std::abs(gs - 1.0) <= 10 * tol<T>());
      } else {
        e_ug = std::max(e_ug, rel_err(r.gates, gate));
      }
    }
    double ps = 0;
    for (std::int64_t i = 0; i < e; ++i) ps += p[i];
    BOOST_REQUIRE(std::abs(ps - 1.0) <= 1e-12);
  }
  BOOST_TEST_MESSAGE("sigmoid_bias<" << (sizeof(T) == 4 ? "float" : "double") << ">: probs " << e_p << " sel " << e_s
                                     << " renorm gates " << e_rg << " unnorm gates " << e_ug);
  BOOST_TEST(e_p <= tol<T>());
  BOOST_TEST(e_s <= tol<T>());
  BOOST_TEST(e_rg <= tol<T>());
  BOOST_TEST(e_ug <= tol<T>());
}

BOOST_AUTO_TEST_CASE_TEMPLATE(sigmoid_bias_extreme_logits, T, Types) {
  const std::int64_t e = 6, k = 3;
  // every σ underflows (−1e4): the ratios are still exact, from log σ(l) = l
  {
    std::vector<double> l = {-1e4, -1e4 + 1, -1e4 - 2, -1e4, -1e4 + 0.5, -1e4 - 40};
    const auto lt = as<T>(l);
    const auto r = run<SigmoidBias, T>(RouterParams{e, k, true}, lt, nullptr);
    const auto u = run<SigmoidBias, T>(RouterParams{e, k, false}, lt, nullptr);
    std::vector<double> p(e);
    double z = 0;
    for (std::int64_t i = 0; i < e; ++i) z += std::exp(static_cast<double>(lt[i]) + 1e4);
    for (std::int64_t i = 0; i < e; ++i) p[i] = std::exp(static_cast<double>(lt[i]) + 1e4) / z;
    BOOST_TEST(rel_err(r.probs, p) <= tol<T>());
    // all selection keys are σ = 0 (+ no bias): ties, the lower indices win
    BOOST_TEST((r.ids == std::vector<std::int32_t>{0, 1, 2}));
    double gs = 0, zs = 0;
    for (std::int64_t j = 0; j < k; ++j) zs += std::exp(static_cast<double>(lt[r.ids[j]]) + 1e4);
    for (std::int64_t j = 0; j < k; ++j) {
      BOOST_TEST(std::isfinite(static_cast<double>(r.gates[j])));
      BOOST_TEST(std::abs(static_cast<double>(r.gates[j]) - std::exp(static_cast<double>(lt[r.ids[j]]) + 1e4) / zs) <=
                 tol<T>());
      gs += r.gates[j];
      BOOST_TEST(u.gates[j] == T(0));  // unnormalised: σ itself, underflowed, finite
    }
    BOOST_TEST(std::abs(gs - 1.0) <= 10 * tol<T>());
    // backward: finite
    std::vector<T> dl(e, T(9)), dg(k, T(1)), dp(e, T(0.5));
    SigmoidBias::backward_token<T>(RouterParams{e, k, true}, lt.data(), r.probs.data(), r.ids.data(), r.gates.data(),
                                   dg.data(), dp.data(), dl.data());
    for (T v : dl) BOOST_TEST(std::isfinite(static_cast<double>(v)));
  }
  // all −1e4 exactly: uniform probs and gates
  {
    const std::vector<T> lt(e, T(-1e4));
    const auto r = run<SigmoidBias, T>(RouterParams{e, k, true}, lt, nullptr);
    for (T v : r.probs) BOOST_TEST(std::abs(static_cast<double>(v) - 1.0 / e) <= tol<T>());
    for (T v : r.gates) BOOST_TEST(std::abs(static_cast<double>(v) - 1.0 / k) <= tol<T>());
  }
  // all +1e4 (σ = 1): uniform; mixed ±1e4: the −1e4 entries get probability 0, gates renormalise
  {
    const std::vector<T> lt(e, T(1e4));
    const auto r = run<SigmoidBias, T>(RouterParams{e, k, true}, lt, nullptr);
    const auto u = run<SigmoidBias, T>(RouterParams{e, k, false}, lt, nullptr);
    for (T v : r.probs) BOOST_TEST(std::abs(static_cast<double>(v) - 1.0 / e) <= tol<T>());
    for (T v : r.gates) BOOST_TEST(std::abs(static_cast<double>(v) - 1.0 / k) <= tol<T>());
    for (T v : u.gates) BOOST_TEST(v == T(1));
  }
  {
    const std::vector<T> lt = {T(-1e4), T(1e4), T(-1e4), T(1e4), T(-1e4), T(-1e4)};
    const std::vector<T> bias = {T(2), T(0), T(0), T(0), T(0), T(0)};  // the bias pulls expert 0 into the selection
    const auto r = run<SigmoidBias, T>(RouterParams{e, k, true}, lt, &bias);
    BOOST_TEST((r.ids == std::vector<std::int32_t>{0, 1, 3}));
    BOOST_TEST((r.probs == std::vector<T>{0, T(0.5), 0, T(0.5), 0, 0}));
    BOOST_TEST((r.gates == std::vector<T>{0, T(0.5), T(0.5)}));  // selected by its bias, gate σ-weighted: 0
  }
}

BOOST_AUTO_TEST_CASE(sigmoid_bias_backward_matches_central_differences) {
  // L = Σ_j a_j gate_j + Σ_i b_i p_i (dprobs present or null), fp64, renormalised and not.
  // The bias moves the selection only; keys are well separated so a ±1e-6 step keeps it.
  std::mt19937 g(12);
  double worst = 0;
  for (int row = 0; row < 400; ++row) {
    const std::int64_t e = 2 + g() % 12, k = 1 + g() % e;
    const bool renorm = row % 2 == 0, with_dprobs = row % 3 != 0;
    std::vector<int> perm(e);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), g);
    const auto noise = randn(e, 17000 + row, 0.1);
    const double shift = std::array<double, 3>{0.0, -6.0, 5.0}[row % 3];
    std::vector<double> l(e), bias(e, 0.0);
    for (std::int64_t i = 0; i < e; ++i) l[i] = 0.6 * perm[i] + noise[i] - 0.3 * e + shift;
    if (row % 4 == 1)  // a bias that reverses the order: selection by bias, gates by σ
      for (std::int64_t i = 0; i < e; ++i) bias[i] = -2.0 * perm[i];
    const auto a = randn(k, 18000 + row), b = randn(e, 19000 + row);
    const RouterParams rp{e, k, renorm};
    auto loss = [&](const std::vector<double>& lg) {
      const auto r = run<SigmoidBias, double>(rp, lg, &bias);
      double s = 0;
      for (std::int64_t j = 0; j < k; ++j) s += a[j] * r.gates[j];
      if (with_dprobs)
        for (std::int64_t i = 0; i < e; ++i) s += b[i] * r.probs[i];
      return s;
    };
    const auto r = run<SigmoidBias, double>(rp, l, &bias);
    std::vector<double> dl(e, 123.0);
    SigmoidBias::backward_token<double>(rp, l.data(), r.probs.data(), r.ids.data(), r.gates.data(), a.data(),
                                        with_dprobs ? b.data() : nullptr, dl.data());
    for (std::int64_t i = 0; i < e; ++i) {
      auto lp = l, lm = l;
      lp[i] += 1e-6, lm[i] -= 1e-6;
      BOOST_REQUIRE((run<SigmoidBias, double>(rp, lp, &bias).ids == r.ids));
      BOOST_REQUIRE((run<SigmoidBias, double>(rp, lm, &bias).ids == r.ids));
      const double fd = (loss(lp) - loss(lm)) / 2e-6;
      worst = std::max(worst, std::abs(fd - dl[i]));
      BOOST_TEST(std::abs(fd - dl[i]) <= 1e-8, "row " << row << " e=" << e << " k=" << k << " renorm=" << renorm
                                                      << " i=" << i << " fd " << fd << " analytic " << dl[i]);
    }
  }
  BOOST_TEST_MESSAGE("sigmoid_bias backward: max |fd - analytic| " << worst);
}

// ---- GroupLimited --------------------------------------------------------------------------

namespace {

// Brute force: Inner's keys, group scores (the sum of the two largest keys, in T; the key
// itself for a group of one), the top_groups groups by a stable sort, then the top-k of the
// eligible experts.
template <class Inner, class T>
std::pair<std::vector<std::int32_t>, std::vector<bool>> group_ref(const RouterParams& rp, const std::vector<T>& l,
                                                                  const std::vector<T>* bias) {
  const std::int64_t e = rp.n_experts, gsz = e / rp.n_groups;
  std::vector<T> probs(e), sel(e);
  Inner::template scores_token<T>(rp, l.data(), bias ? bias->data() : nullptr, probs.data(), sel.data());
  std::vector<T> score(rp.n_groups);
  for (std::int64_t q = 0; q < rp.n_groups; ++q) {
    std::vector<T> keys(sel.begin() + q * gsz, sel.begin() + (q + 1) * gsz);
    std::sort(keys.begin(), keys.end(), std::greater<T>());
    score[q] = gsz == 1 ? keys[0] : static_cast<T>(keys[0] + keys[1]);
  }
  const auto go = order_desc(score);
  std::vector<bool> eligible(rp.n_groups, false);
  for (std::int64_t i = 0; i < rp.top_groups; ++i) eligible[go[i]] = true;
  std::vector<double> key(e);
  for (std::int64_t i = 0; i < e; ++i) key[i] = eligible[i / gsz] ? static_cast<double>(sel[i]) : -kInf;
  return {topk_ref(key, rp.k), eligible};
}

template <class Inner, class T>
void group_limited_case(unsigned seed, double& checked_ties) {
  std::mt19937 g(seed);
  for (int row = 0; row < 3000; ++row) {
    // groups of 1, 2, 3, 4 experts
    const std::int64_t ng = std::array<std::int64_t, 5>{2, 3, 4, 6, 8}[g() % 5];
    const std::int64_t gsz = 1 + g() % 4, e = ng * gsz, tg = 1 + g() % ng, k = 1 + g() % (tg * gsz);
    const bool renorm = g() % 2;
    const RouterParams rp{e, k, renorm, ng, tg};
    std::vector<double> ld(e), bd(e, 0.0);
    const bool ties = row % 2 == 0;
    for (auto& v : ld) v = ties ? static_cast<double>(static_cast<int>(g() % 4)) - 1.5 : 2.0 * std::normal_distribution<>()(g);
    if (std::is_same_v<Inner, SigmoidBias> && row % 3 == 0)
      for (auto& v : bd) v = ties ? 0.25 * static_cast<int>(g() % 3) : 0.3 * std::normal_distribution<>()(g);
    const auto l = as<T>(ld);
    const auto b = as<T>(bd);
    const auto r = run<GroupLimited<Inner>, T>(rp, l, &b);
    const auto [ids, eligible] = group_ref<Inner, T>(rp, l, &b);
    BOOST_REQUIRE_MESSAGE(r.ids == ids, "row " << row << " e=" << e << " groups=" << ng << " top=" << tg << " k=" << k);
    // every selected expert lies in an eligible group; exactly top_groups groups eligible
    for (auto i : r.ids) BOOST_REQUIRE(eligible[i / gsz]);
    std::int64_t masked = 0;
    for (std::int64_t i = 0; i < e; ++i) masked += r.sel[i] == -std::numeric_limits<T>::infinity() ? 1 : 0;
    BOOST_REQUIRE_EQUAL(masked, (ng - tg) * gsz);
    // probabilities and gates are Inner's
    const auto in = run<Inner, T>(rp, l, &b);
    BOOST_REQUIRE(r.probs == in.probs);
    std::vector<T> gates(k);
    Inner::template gates_token<T>(rp, l.data(), in.probs.data(), r.ids.data(), gates.data());
    BOOST_REQUIRE(r.gates == gates);
    // top_groups == n_groups: Inner exactly
    const RouterParams all{e, k, renorm, ng, ng};
    const auto ra = run<GroupLimited<Inner>, T>(all, l, &b);
    BOOST_REQUIRE(ra.ids == in.ids);
    BOOST_REQUIRE(ra.sel == in.sel);
    BOOST_REQUIRE(ra.gates == in.gates);
    if (ties) checked_ties += 1;
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE_TEMPLATE(group_limited_matches_brute_force, T, Types) {
  double ties = 0;
  group_limited_case<TopK, T>(21, ties);
  group_limited_case<SigmoidBias, T>(22, ties);
  BOOST_TEST(ties > 1000);
}

BOOST_AUTO_TEST_CASE(group_limited_hand_cases) {
  // 6 experts in 3 groups of 2; group scores: {5+1, 4+4, 6+0} = {6, 8, 6}: groups 1, then 0
  // (tied with group 2, the lower index), so expert 4 (key 6, the largest) is not eligible.
  {
    const RouterParams rp{6, 2, true, 3, 2};
    const std::vector<double> l = {5, 1, 4, 4, 6, 0};
    const auto r = run<GroupLimited<TopK>, double>(rp, l, nullptr);
    BOOST_TEST((r.ids == std::vector<std::int32_t>{0, 2}));
    BOOST_TEST(r.sel[4] == -kInf);
    BOOST_TEST(r.sel[5] == -kInf);
  }
  // groups of one: the group score is the key itself, i.e. plain top-k restricted to top_groups
  {
    const RouterParams rp{5, 2, true, 5, 3};
    const std::vector<double> l = {0.5, 3, -1, 3, 2};
    const auto r = run<GroupLimited<TopK>, double>(rp, l, nullptr);
    BOOST_TEST((r.ids == std::vector<std::int32_t>{1, 3}));
    BOOST_TEST(r.sel[0] == -kInf);
    BOOST_TEST(r.sel[2] == -kInf);
    BOOST_TEST(r.sel[4] == 2.0);
  }
  // SigmoidBias: the bias enters the group score (sel = σ(l) + b)
  {
    const RouterParams rp{4, 1, true, 2, 1};
    const std::vector<double> l = {3, 3, 0, 0}, b = {0, 0, 1, 1};
    const auto r = run<GroupLimited<SigmoidBias>, double>(rp, l, &b);
    BOOST_TEST((r.ids == std::vector<std::int32_t>{2}));
    BOOST_TEST(r.gates[0] == 1.0);
  }
}

// ---- ExpertChoice --------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE_TEMPLATE(expert_choice_scores_are_softmax, T, Types) {
  double worst = 0;
  for (int row = 0; row < 2000; ++row) {
    const std::int64_t e = std::array<std::int64_t, 4>{2, 4, 8, 64}[row % 4];
    const auto l = round_to<T>(randn(e, 300 + row, std::array<double, 3>{0.5, 5.0, 50.0}[row % 3], row % 2 ? 80.0 : 0.0));
    const double mx = *std::max_element(l.begin(), l.end());
    std::vector<double> p(e);
    double z = 0;
    for (std::int64_t i = 0; i < e; ++i) z += std::exp(l[i] - mx);
    for (std::int64_t i = 0; i < e; ++i) p[i] = std::exp(l[i] - mx) / z;
    std::vector<T> probs(e, T(-7)), sel(e, T(-7));
    const auto lt = as<T>(l);
    ExpertChoice::scores_token<T>(RouterParams{e, 1}, lt.data(), nullptr, probs.data(), sel.data());
    BOOST_REQUIRE(probs == sel);
    worst = std::max(worst, rel_err(probs, p));
  }
  BOOST_TEST_MESSAGE("expert_choice probs " << worst);
  BOOST_TEST(worst <= tol<T>());
}

BOOST_AUTO_TEST_CASE(expert_choice_backward_matches_central_differences) {
  double worst = 0;
  for (int row = 0; row < 300; ++row) {
    const std::int64_t e = 2 + row % 11;
    const auto l = randn(e, 400 + row, 1.0 + row % 4);
    const auto b = randn(e, 500 + row);
    const RouterParams rp{e, 1};
    auto loss = [&](const std::vector<double>& lg) {
      std::vector<double> p(e), s(e);
      ExpertChoice::scores_token<double>(rp, lg.data(), nullptr, p.data(), s.data());
      double v = 0;
      for (std::int64_t i = 0; i < e; ++i) v += b[i] * p[i];
      return v;
    };
    std::vector<double> p(e), s(e), dl(e, 77.0);
    ExpertChoice::scores_token<double>(rp, l.data(), nullptr, p.data(), s.data());
    ExpertChoice::backward_token<double>(rp, l.data(), p.data(), b.data(), dl.data());
    auto lv = l;
    const auto fd = central_differences(lv, 1e-6, [&] { return loss(lv); });
    for (std::int64_t i = 0; i < e; ++i) {
      worst = std::max(worst, std::abs(fd[i] - dl[i]));
      BOOST_TEST(std::abs(fd[i] - dl[i]) <= 1e-8, "row " << row << " i " << i << " fd " << fd[i] << " analytic " << dl[i]);
    }
  }
  BOOST_TEST_MESSAGE("expert_choice backward: max |fd - analytic| " << worst);
}

// ---- Hash ----------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(hash_routes_are_distinct_deterministic_and_uniform) {
  for (auto [e, k] : {std::pair<std::int64_t, std::int64_t>{8, 2}, {4, 1}, {16, 3}, {5, 5}, {64, 4}}) {
    const RouterParams rp{e, k};
    std::vector<double> count(e, 0.0), first(e, 0.0);
    const std::int32_t ntok = 20000;
    for (std::int32_t tok = 0; tok < ntok; ++tok) {
      std::vector<std::int32_t> ids(k, -1), again(k, -1);
      std::vector<double> gates(k), probs(e, 5.0), g2(k), p2(e);
      std::vector<float> gf(k), pf(e);
      std::vector<std::int32_t> idf(k, -1);
      Hash::route_token<double>(rp, tok, ids.data(), gates.data(), probs.data());
      Hash::route_token<double>(rp, tok, again.data(), g2.data(), p2.data());
      Hash::route_token<float>(rp, tok, idf.data(), gf.data(), pf.data());
      BOOST_REQUIRE(ids == again);  // the same token id, the same experts
      BOOST_REQUIRE(ids == idf);    // whatever the type
      auto sorted = ids;
      std::sort(sorted.begin(), sorted.end());
      BOOST_REQUIRE(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
      BOOST_REQUIRE(sorted.front() >= 0);
      BOOST_REQUIRE(sorted.back() < e);
      double ps = 0;
      for (std::int64_t j = 0; j < k; ++j) {
        BOOST_REQUIRE(gates[j] == 1.0 / static_cast<double>(k));
        BOOST_REQUIRE(gf[j] == static_cast<float>(1.0 / static_cast<double>(k)));
        count[ids[j]] += 1;
      }
      for (std::int64_t i = 0; i < e; ++i) {
        const bool picked = std::find(ids.begin(), ids.end(), i) != ids.end();
        BOOST_REQUIRE(probs[i] == (picked ? 1.0 / static_cast<double>(k) : 0.0));
        ps += probs[i];
      }
      BOOST_REQUIRE(std::abs(ps - 1.0) <= 1e-15);
      first[ids[0]] += 1;
    }
    // Pearson χ² against uniform, E − 1 degrees of freedom (mean E − 1, sd √(2(E − 1))):
    // a loose bound of mean + 6 sd + 10. (k = E: every token takes every expert.)
    auto chi2 = [&](const std::vector<double>& c, double total) {
      double x = 0;
      const double expect = total / static_cast<double>(e);
      for (double v : c) x += (v - expect) * (v - expect) / expect;
      return x;
    };
    const double bound = static_cast<double>(e - 1) + 6 * std::sqrt(2.0 * static_cast<double>(e - 1)) + 10;
    const double c_all = chi2(count, static_cast<double>(ntok * k)), c_first = chi2(first, ntok);
    BOOST_TEST_MESSAGE("hash E=" << e << " k=" << k << ": chi2 all picks " << c_all << ", first pick " << c_first
                                 << " (bound " << bound << ")");
    BOOST_TEST(c_all <= bound);
    BOOST_TEST(c_first <= bound);
  }
  // different token ids do not all map to the same experts
  const RouterParams rp{8, 2};
  std::vector<std::int32_t> a(2), b(2);
  std::vector<double> g(2), p(8);
  int differ = 0;
  for (std::int32_t t = 0; t < 100; ++t) {
    Hash::route_token<double>(rp, t, a.data(), g.data(), p.data());
    Hash::route_token<double>(rp, t + 1, b.data(), g.data(), p.data());
    differ += a != b;
  }
  BOOST_TEST(differ > 50);
}

// ---- select_topk ---------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE_TEMPLATE(select_topk_matches_stable_sort, T, Types) {
  std::mt19937 g(31);
  const T ninf = -std::numeric_limits<T>::infinity();
  int with_masked = 0, short_of_finite = 0;
  for (int row = 0; row < 20000; ++row) {
    const std::int64_t e = 1 + g() % 64, k = 1 + g() % e;
    std::vector<T> keys(e);
    const int mode = row % 4;
    for (auto& v : keys) {
      if (mode == 0) v = static_cast<T>(static_cast<int>(g() % 3));                 // many ties
      else if (mode == 1) v = static_cast<T>(std::normal_distribution<>()(g));      // distinct
      else v = g() % 3 == 0 ? ninf : static_cast<T>(static_cast<int>(g() % 4) - 2);  // masked + ties
    }
    if (mode == 3 && row % 8 == 3)
      for (auto& v : keys) v = g() % 4 ? ninf : v;  // mostly masked: often fewer than k finite keys
    std::vector<std::int32_t> ids(k, -9);
    tmoe::select_topk(keys.data(), e, k, ids.data());
    const auto ref = topk_ref(keys, k);
    BOOST_REQUIRE_MESSAGE(ids == ref, "row " << row << " e=" << e << " k=" << k);
    std::int64_t finite = 0, masked_chosen = 0;
    for (T v : keys) finite += v != ninf;
    for (auto i : ids) masked_chosen += keys[i] == ninf;
    // a masked key is chosen only when fewer than k finite keys exist
    BOOST_REQUIRE_EQUAL(masked_chosen, std::max<std::int64_t>(0, k - finite));
    with_masked += finite < e;
    short_of_finite += finite < k;
  }
  BOOST_TEST(with_masked > 5000);
  BOOST_TEST(short_of_finite > 100);
}

// ---- expert capacity -----------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(expert_capacity_values) {
  // factor = num/den exactly: C = ceil(num · n · k / (den · e)) clamped to [1, n], by integers.
  struct Case {
    std::int64_t num, den, n, k, e;
  };
  std::vector<Case> cases = {{1, 1, 24, 2, 4},   {5, 4, 24, 2, 4},  {11, 10, 10, 1, 1}, {1, 10, 10, 1, 4},
                             {10, 1, 8, 2, 4},   {1, 1, 7, 2, 4},   {3, 2, 7, 1, 3},    {3, 10, 10, 1, 1},
                             {1, 1, 1, 1, 64},   {2, 1, 5, 5, 5},   {3, 5, 24, 2, 4},   {7, 10, 30, 3, 9},
                             {1, 1000, 100, 1, 8}, {6, 5, 1000, 2, 64}, {1, 3, 9, 1, 1}, {2, 3, 9, 2, 4}};
  for (std::int64_t num = 1; num <= 12; ++num)
    for (std::int64_t n = 1; n <= 40; n += 3)
      for (std::int64_t e : {1, 3, 4, 8})
        for (std::int64_t k = 1; k <= std::min<std::int64_t>(e, 3); ++k) cases.push_back({num, 4, n, k, e});
  for (const auto& c : cases) {
    const double f = static_cast<double>(c.num) / static_cast<double>(c.den);
    const std::int64_t p = c.num * c.n * c.k, q = c.den * c.e;
    const std::int64_t ref = std::clamp<std::int64_t>((p + q - 1) / q, 1, c.n);
    BOOST_TEST(tmoe::expert_capacity(f, c.n, c.k, c.e) == ref,
               "f=" << c.num << "/" << c.den << " n=" << c.n << " k=" << c.k << " e=" << c.e);
  }
  BOOST_TEST(tmoe::expert_capacity(1.25, 24, 2, 4) == 15);
  BOOST_TEST(tmoe::expert_capacity(1.1, 10, 1, 1) == 10);  // 11 clamped to n
  BOOST_TEST(tmoe::expert_capacity(1.1, 20, 1, 2) == 11);  // 1.1 · 10 rounds above 11 in binary
  BOOST_TEST(tmoe::expert_capacity(0.3, 10, 1, 1) == 3);   // 0.3 · 10 likewise
  BOOST_TEST(tmoe::expert_capacity(1e-6, 10, 1, 1) == 1);  // at least one
  BOOST_TEST(tmoe::expert_capacity(100.0, 10, 2, 2) == 10);  // at most n
}

// ---- RoutingPlan with a kept mask -----------------------------------------------------------

namespace {

void check_plan_kept(const std::vector<std::int32_t>& ex, const std::vector<std::int32_t>& tk,
                     const std::vector<std::uint8_t>& kept, std::int64_t n, std::int64_t e) {
  const std::int64_t a = static_cast<std::int64_t>(ex.size());
  tmoe::RoutingPlan plan;
  plan.build(ex.data(), tk.data(), kept.data(), a, n, e);
  std::vector<std::int64_t> routed(e, 0), counts(e, 0);
  for (std::int64_t i = 0; i < a; ++i) ++routed[ex[i]], counts[ex[i]] += kept[i];
  BOOST_REQUIRE(plan.routed == routed);
  BOOST_REQUIRE(plan.counts == counts);
  std::int64_t kept_total = 0, dropped_total = 0;
  for (std::int64_t x = 0; x < e; ++x) {
    BOOST_REQUIRE_EQUAL(plan.offsets[x + 1] - plan.offsets[x], counts[x]);
    kept_total += counts[x];
    dropped_total += routed[x] - counts[x];
  }
  BOOST_REQUIRE_EQUAL(plan.offsets[0], 0);
  BOOST_REQUIRE_EQUAL(plan.rows(), kept_total);
  BOOST_REQUIRE_EQUAL(kept_total + dropped_total, a);
  // rows: the kept assignments, expert by expert, in assignment order
  std::vector<std::int32_t> rows_assign;
  for (std::int64_t x = 0; x < e; ++x)
    for (std::int64_t i = 0; i < a; ++i)
      if (ex[i] == x && kept[i]) rows_assign.push_back(static_cast<std::int32_t>(i));
  BOOST_REQUIRE(plan.row_assign == rows_assign);
  for (std::int64_t r = 0; r < plan.rows(); ++r) {
    BOOST_REQUIRE_EQUAL(plan.row_token[r], tk[rows_assign[r]]);
    BOOST_REQUIRE_EQUAL(plan.pos[rows_assign[r]], r);
  }
  for (std::int64_t i = 0; i < a; ++i)
    if (!kept[i]) BOOST_REQUIRE_EQUAL(plan.pos[i], -1);
  // each token's kept assignments, in assignment order
  BOOST_REQUIRE_EQUAL(plan.tok_offsets.size(), static_cast<std::size_t>(n + 1));
  BOOST_REQUIRE_EQUAL(plan.tok_offsets[0], 0);
  for (std::int64_t t = 0; t < n; ++t) {
    std::vector<std::int32_t> mine;
    for (std::int64_t i = 0; i < a; ++i)
      if (tk[i] == t && kept[i]) mine.push_back(static_cast<std::int32_t>(i));
    const std::vector<std::int32_t> got(plan.tok_assign.begin() + plan.tok_offsets[t],
                                        plan.tok_assign.begin() + plan.tok_offsets[t + 1]);
    BOOST_REQUIRE_MESSAGE(got == mine, "token " << t);
  }
  // kept = all ones is the same plan as kept = null
  tmoe::RoutingPlan all, none;
  const std::vector<std::uint8_t> ones(a, 1);
  all.build(ex.data(), tk.data(), ones.data(), a, n, e);
  none.build(ex.data(), tk.data(), nullptr, a, n, e);
  BOOST_REQUIRE(all.pos == none.pos);
  BOOST_REQUIRE(all.tok_assign == none.tok_assign);
  BOOST_REQUIRE(all.row_token == none.row_token);
}

}  // namespace

BOOST_AUTO_TEST_CASE(routing_plan_with_kept_mask) {
  std::mt19937 g(41);
  // token choice: a = t·k + j, distinct experts per token
  for (auto [n, k, e] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{24, 2, 4}, {37, 3, 8}, {5, 1, 4},
                         {1, 4, 4}, {64, 2, 16}}) {
    for (int rep = 0; rep < 20; ++rep) {
      std::vector<std::int32_t> ex(n * k), tk(n * k);
      std::vector<std::uint8_t> kept(n * k);
      for (std::int64_t t = 0; t < n; ++t) {
        std::vector<std::int32_t> perm(e);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), g);
        for (std::int64_t j = 0; j < k; ++j) ex[t * k + j] = perm[j], tk[t * k + j] = static_cast<std::int32_t>(t);
      }
      const unsigned drop_rate = rep % 5;  // 0: none dropped, 4: all dropped
      for (auto& v : kept) v = g() % 4 >= drop_rate;
      if (rep == 7) std::fill(kept.begin(), kept.end(), 0);
      check_plan_kept(ex, tk, kept, n, e);
    }
  }
  // expert choice: a = x·C + i, tokens ascending within an expert; a token may appear under
  // any number of experts (none included); tok_assign lists a token's picks by expert
  for (int rep = 0; rep < 30; ++rep) {
    const std::int64_t n = 12 + rep, e = 4, cap = 1 + rep % n;
    std::vector<std::int32_t> ex, tk;
    for (std::int64_t x = 0; x < e; ++x) {
      std::vector<std::int32_t> toks(n);
      std::iota(toks.begin(), toks.end(), 0);
      std::shuffle(toks.begin(), toks.end(), g);
      toks.resize(cap);
      std::sort(toks.begin(), toks.end());
      for (auto t : toks) ex.push_back(static_cast<std::int32_t>(x)), tk.push_back(t);
    }
    check_plan_kept(ex, tk, std::vector<std::uint8_t>(ex.size(), 1), n, e);
  }
  // a hand case: 3 tokens, k = 2, 3 experts; assignment 1 (token 0 → expert 2) and 4 dropped
  {
    const std::vector<std::int32_t> ex = {0, 2, 2, 0, 1, 2}, tk = {0, 0, 1, 1, 2, 2};
    const std::vector<std::uint8_t> kept = {1, 0, 1, 1, 0, 1};
    tmoe::RoutingPlan plan;
    plan.build(ex.data(), tk.data(), kept.data(), 6, 3, 3);
    BOOST_TEST((plan.routed == std::vector<std::int64_t>{2, 1, 3}));
    BOOST_TEST((plan.counts == std::vector<std::int64_t>{2, 0, 2}));
    BOOST_TEST((plan.offsets == std::vector<std::int64_t>{0, 2, 2, 4}));
    BOOST_TEST((plan.pos == std::vector<std::int32_t>{0, -1, 2, 1, -1, 3}));
    BOOST_TEST((plan.row_token == std::vector<std::int32_t>{0, 1, 1, 2}));
    BOOST_TEST((plan.row_assign == std::vector<std::int32_t>{0, 3, 2, 5}));
    BOOST_TEST((plan.tok_offsets == std::vector<std::int32_t>{0, 1, 3, 4}));
    BOOST_TEST((plan.tok_assign == std::vector<std::int32_t>{0, 2, 3, 5}));
  }
}
