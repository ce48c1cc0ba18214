#define BOOST_TEST_MODULE ops_router
// TopK router math (scores_token + select_topk + gates_token, backward_token) against plain
// double references, and RoutingPlan::build (the stable counting sort of (token, slot) pairs
// by expert).
#include <boost/test/unit_test.hpp>
#include <algorithm>
#include <numeric>
#include <tuple>

#include "test_ops_common.hpp"
#include "tmoe/moe/balance.hpp"
#include "tmoe/moe/moe_layer.hpp"
#include "tmoe/moe/routers/topk.hpp"

using tmoe::RouterParams;
using tmoe::TopK;
using namespace opstest;
using Types = std::tuple<float, double>;

namespace {

// The k largest logits, largest first, ties to the lower index: a stable sort by −logit.
std::vector<std::int32_t> topk_ref(const std::vector<double>& l, std::int64_t k) {
  std::vector<std::int32_t> idx(l.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](std::int32_t a, std::int32_t b) { return l[a] > l[b]; });
  idx.resize(k);
  return idx;
}

std::vector<double> softmax(const std::vector<double>& l) {
  const double mx = *std::max_element(l.begin(), l.end());
  std::vector<double> p(l.size());
  double z = 0;
  for (std::size_t i = 0; i < l.size(); ++i) z += (p[i] = std::exp(l[i] - mx));
  for (auto& x : p) x /= z;
  return p;
}

template <class T>
struct Routed {
  std::vector<std::int32_t> ids;
  std::vector<T> gates, probs;
  double lse;
};

template <class T>
Routed<T> route(const std::vector<double>& l, std::int64_t k, bool renorm) {
  const RouterParams rp{static_cast<std::int64_t>(l.size()), k, renorm};
  Routed<T> r;
  r.ids.assign(k, -7);
  r.gates.assign(k, T(-7));
  r.probs.assign(l.size(), T(-7));
  std::vector<T> sel(l.size(), T(-7));
  const auto lt = as<T>(l);
  TopK::scores_token<T>(rp, lt.data(), nullptr, r.probs.data(), sel.data());
  tmoe::select_topk(sel.data(), static_cast<std::int64_t>(l.size()), k, r.ids.data());
  TopK::gates_token<T>(rp, lt.data(), r.probs.data(), r.ids.data(), r.gates.data());
  r.lse = tmoe::ZLoss::lse(lt.data(), static_cast<std::int64_t>(l.size()));  // the z-loss's log-sum-exp
  return r;
}

}  // namespace

BOOST_AUTO_TEST_CASE(selection_and_ties_go_to_the_lower_index) {
  struct Case {
    std::vector<double> l;
    std::int64_t k;
    std::vector<std::int32_t> ids;
  };
  const std::vector<Case> cases = {
      {{1, 3, 3, 2}, 2, {1, 2}},
      {{5, 5, 5, 5}, 2, {0, 1}},
      {{5, 5, 5, 5}, 4, {0, 1, 2, 3}},
      {{0, 2, 1, 2, 1}, 3, {1, 3, 2}},  // a tie at the boundary of the selection
      {{-1, -1, -3, -1}, 1, {0}},
      {{0.5, 2.0, -1.0, 7.0, 2.0, 7.0, 0.0, 2.0}, 5, {3, 5, 1, 4, 7}},
  };
  for (const auto& cs : cases)
    for (bool renorm : {true, false}) {
      const auto rd = route<double>(cs.l, cs.k, renorm);
      const auto rf = route<float>(cs.l, cs.k, renorm);
      BOOST_TEST(rd.ids == cs.ids, boost::test_tools::per_element());
      BOOST_TEST(rf.ids == cs.ids, boost::test_tools::per_element());
    }
  // Many rows of small integers (ties everywhere) against a stable sort.
  std::mt19937 g(1);
  for (int row = 0; row < 2000; ++row) {
    const std::int64_t e = 2 + g() % 15, k = 1 + g() % e;
    std::vector<double> l(e);
    for (auto& x : l) x = static_cast<double>(g() % 4);
    BOOST_REQUIRE(route<double>(l, k, true).ids == topk_ref(l, k));
    BOOST_REQUIRE(route<float>(l, k, false).ids == topk_ref(l, k));
  }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(gates_probs_and_lse_match_reference, T, Types) {
  std::mt19937 g(2);
  double e_p = 0, e_lse = 0, e_rg = 0, e_ug = 0, e_id = 0;
  for (int row = 0; row < 3000; ++row) {
    const std::int64_t e = std::array<std::int64_t, 4>{4, 8, 16, 64}[row % 4], k = 1 + g() % e;
    const double scale = std::array<double, 3>{0.5, 3.0, 20.0}[row % 3];
    const auto l = round_to<T>(randn(e, 1000 + row, scale, row % 2 ? 50.0 : 0.0));
    const auto ids = topk_ref(l, k);
    const auto p = softmax(l);
    const double mx = *std::max_element(l.begin(), l.end());
    double z = 0;
    for (double x : l) z += std::exp(x - mx);
    const double lse = mx + std::log(z);
    // renormalised: softmax over the k selected logits
    std::vector<double> rg(k), ug(k), via_p(k);
    double zs = 0, ps = 0;
    for (std::int64_t j = 0; j < k; ++j) zs += std::exp(l[ids[j]] - l[ids[0]]), ps += p[ids[j]];
    for (std::int64_t j = 0; j < k; ++j) {
      rg[j] = std::exp(l[ids[j]] - l[ids[0]]) / zs;
      ug[j] = p[ids[j]];
      via_p[j] = p[ids[j]] / ps;  // softmax, then top-k, renormalised by Σ selected p
    }
    const auto r = route<T>(l, k, true);
    const auto u = route<T>(l, k, false);
    BOOST_REQUIRE(r.ids == ids);
    BOOST_REQUIRE(u.ids == ids);
    BOOST_REQUIRE(r.probs == u.probs);
    e_p = std::max(e_p, rel_err(r.probs, p));
    e_lse = std::max(e_lse, std::abs(r.lse - lse) / std::max(1.0, std::abs(lse)));
    e_rg = std::max(e_rg, rel_err(r.gates, rg));
    e_ug = std::max(e_ug, rel_err(u.gates, ug));
    // The identity of conventions.md, from the library's own two outputs.
    e_id = std::max(e_id, rel_err(r.gates, via_p));
    double gs = 0;
    for (T x : r.gates) gs += x;
    BOOST_REQUIRE(std::abs(gs - 1.0) <= 10 * tol<T>());
  }
  BOOST_TEST_MESSAGE("probs " << e_p << " lse " << e_lse << " renorm gates " << e_rg << " unnorm gates " << e_ug
                              << " identity " << e_id);
  BOOST_TEST(e_p <= tol<T>());
  BOOST_TEST(e_lse <= tol<T>());
  BOOST_TEST(e_rg <= tol<T>());
  BOOST_TEST(e_ug <= tol<T>());
  BOOST_TEST(e_id <= tol<T>());
}

BOOST_AUTO_TEST_CASE(softmax_then_topk_identity_on_many_rows) {
  // gates(renormalised) == softmax(l)[ids] / Σ_selected softmax(l), per row, in double.
  std::mt19937 g(3);
  double worst = 0;
  for (int row = 0; row < 10000; ++row) {
    const std::int64_t e = 2 + g() % 31, k = 1 + g() % e;
    const auto l = randn(e, 5000 + row, 0.1 + (row % 7) * 2.0);
    const auto r = route<double>(l, k, true);
    const auto u = route<double>(l, k, false);
    double ps = 0;
    for (std::int64_t j = 0; j < k; ++j) ps += u.gates[j];
    for (std::int64_t j = 0; j < k; ++j) worst = std::max(worst, std::abs(r.gates[j] - u.gates[j] / ps));
  }
  BOOST_TEST(worst <= 1e-12, "identity error " << worst);
}

BOOST_AUTO_TEST_CASE(backward_token_matches_central_differences) {
  // L = Σ_j a_j gate_j + Σ_i b_i p_i, d/dlogits, fp64 (the z-loss's lse term is the
  // ZLoss policy's, checked with the layer in tests/gradcheck/test_moe_routers.cpp). Logits are well separated so
  // a ±1e-6 step never changes the selection.
  std::mt19937 g(4);
  for (int row = 0; row < 200; ++row) {
    const std::int64_t e = 2 + g() % 10, k = 1 + g() % e;
    const bool renorm = row % 2 == 0, with_dprobs = row % 3 != 0;
    std::vector<double> l(e);
    std::vector<int> perm(e);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), g);
    const auto noise = randn(e, 7000 + row, 0.1);
    for (std::int64_t i = 0; i < e; ++i) l[i] = 0.7 * perm[i] + noise[i] - 2.0;
    const auto a = randn(k, 8000 + row), b = randn(e, 9000 + row);
    const RouterParams rp{e, k, renorm};
    auto loss = [&](const std::vector<double>& lg) {
      const auto r = route<double>(lg, k, renorm);
      double s = 0;
      for (std::int64_t j = 0; j < k; ++j) s += a[j] * r.gates[j];
      if (with_dprobs)
        for (std::int64_t i = 0; i < e; ++i) s += b[i] * r.probs[i];
      return s;
    };
    const auto r = route<double>(l, k, renorm);
    std::vector<double> dl(e, 123.0);
    TopK::backward_token<double>(rp, l.data(), r.probs.data(), r.ids.data(), r.gates.data(), a.data(),
                                 with_dprobs ? b.data() : nullptr, dl.data());
    for (std::int64_t i = 0; i < e; ++i) {
      auto lp = l, lm = l;
      lp[i] += 1e-6, lm[i] -= 1e-6;
      BOOST_REQUIRE(route<double>(lp, k, renorm).ids == r.ids);
      BOOST_REQUIRE(route<double>(lm, k, renorm).ids == r.ids);
      const double fd = (loss(lp) - loss(lm)) / 2e-6;
      BOOST_TEST(std::abs(fd - dl[i]) <= 1e-8, "row " << row << " e=" << e << " k=" << k << " renorm=" << renorm
                                                      << " i=" << i << " fd " << fd << " analytic " << dl[i]);
    }
  }
}

// ---- RoutingPlan ---------------------------------------------------------------------------

namespace {
void check_plan(const std::vector<std::int32_t>& ids, std::int64_t n, std::int64_t k, std::int64_t e) {
  tmoe::RoutingPlan plan;
  std::vector<std::int32_t> tok(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) tok[i] = static_cast<std::int32_t>(static_cast<std::int64_t>(i) / k);
  plan.build(ids.data(), tok.data(), nullptr, n * k, n, e);
  BOOST_REQUIRE_EQUAL(plan.counts.size(), static_cast<std::size_t>(e));
  BOOST_REQUIRE_EQUAL(plan.offsets.size(), static_cast<std::size_t>(e + 1));
  BOOST_REQUIRE_EQUAL(plan.pos.size(), static_cast<std::size_t>(n * k));
  BOOST_REQUIRE_EQUAL(plan.row_token.size(), static_cast<std::size_t>(n * k));
  // counts and offsets (exclusive prefix sums)
  std::vector<std::int64_t> cnt(e, 0);
  for (auto i : ids) ++cnt[i];
  BOOST_TEST(plan.counts == cnt, boost::test_tools::per_element());
  BOOST_TEST(plan.offsets[0] == 0);
  for (std::int64_t x = 0; x < e; ++x) BOOST_TEST(plan.offsets[x + 1] == plan.offsets[x] + cnt[x]);
  BOOST_TEST(plan.offsets[e] == n * k);
  // pos is a permutation of the rows; each (token, slot) lands in its expert's range and
  // row_token names its token.
  std::vector<int> seen(n * k, 0);
  for (std::int64_t i = 0; i < n * k; ++i) {
    const std::int64_t r = plan.pos[i];
    BOOST_REQUIRE(r >= 0 && r < n * k);
    ++seen[r];
    BOOST_REQUIRE(r >= plan.offsets[ids[i]] && r < plan.offsets[ids[i] + 1]);
    BOOST_REQUIRE_EQUAL(plan.row_token[r], i / k);
  }
  for (int s : seen) BOOST_REQUIRE_EQUAL(s, 1);
  // Stable: within an expert, rows follow the (token, slot) order, i.e. (i < i') ⇒ pos < pos'.
  // The expected layout, built independently:
  std::vector<std::int32_t> expect_token;
  for (std::int64_t x = 0; x < e; ++x)
    for (std::int64_t i = 0; i < n * k; ++i)
      if (ids[i] == x) expect_token.push_back(static_cast<std::int32_t>(i / k));
  BOOST_TEST(plan.row_token == expect_token, boost::test_tools::per_element());
  for (std::int64_t i = 0; i < n * k; ++i)
    for (std::int64_t i2 = i + 1; i2 < n * k; ++i2)
      if (ids[i] == ids[i2]) BOOST_REQUIRE(plan.pos[i] < plan.pos[i2]);
}
}  // namespace

BOOST_AUTO_TEST_CASE(routing_plan_counts_offsets_order) {
  std::mt19937 g(5);
  // Distinct ids per token, as TopK produces; expert 2 never chosen in the first case.
  for (auto [n, k, e] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{37, 2, 4}, {64, 1, 4}, {50, 3, 8},
                         {1, 4, 4}, {200, 2, 16}}) {
    std::vector<std::int32_t> ids(n * k);
    for (std::int64_t t = 0; t < n; ++t) {
      std::vector<std::int32_t> experts(e);
      std::iota(experts.begin(), experts.end(), 0);
      if (n == 37) experts.erase(experts.begin() + 2);
      std::shuffle(experts.begin(), experts.end(), g);
      for (std::int64_t j = 0; j < k; ++j) ids[t * k + j] = experts[j];
    }
    check_plan(ids, n, k, e);
  }
  // all tokens to one expert; and an empty batch
  check_plan(std::vector<std::int32_t>(20, 3), 20, 1, 4);
  check_plan({}, 0, 2, 4);
}

BOOST_AUTO_TEST_CASE(routing_plan_from_router) {
  // The plan of real router output: every expert's slice lists its tokens in order.
  const std::int64_t n = 40, e = 6, k = 2;
  std::vector<std::int32_t> ids(n * k);
  for (std::int64_t t = 0; t < n; ++t) {
    const auto r = route<double>(randn(e, 100 + t), k, true);
    std::copy(r.ids.begin(), r.ids.end(), ids.begin() + t * k);
  }
  check_plan(ids, n, k, e);
}
