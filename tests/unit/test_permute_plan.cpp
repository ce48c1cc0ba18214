#define BOOST_TEST_MODULE permute_plan
// moe/permute_plan.hpp, the host side of the GPU's dispatch and combine: the checked plan
// build (bad expert ids and tokens are tmoe::Error), the packed int32 index buffer (every
// array where the offsets say, equal to the plan's), and the grouped GEMM's expert slices
// (counts, order, empty experts skipped, everything dropped).
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <random>
#include <vector>

#include "tmoe/moe/permute_plan.hpp"

namespace {

struct Routed {
  std::vector<std::int32_t> expert, token;
  std::vector<std::uint8_t> kept;
};

// Token-choice assignments a = t·k + j with random experts (never `skip`), every third
// assignment of the odd tokens dropped.
Routed random_routing(std::int64_t n, std::int64_t k, std::int64_t e, std::int32_t skip, std::uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<std::int32_t> pick(0, static_cast<std::int32_t>(e - 1));
  Routed r;
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t j = 0; j < k; ++j) {
      std::int32_t x;
      do x = pick(g);
      while (x == skip);
      r.expert.push_back(x);
      r.token.push_back(static_cast<std::int32_t>(t));
      r.kept.push_back(t % 2 == 1 && (t * k + j) % 3 == 0 ? 0 : 1);
    }
  return r;
}

template <class V>
std::vector<std::int64_t> widen(const V& v) {
  return std::vector<std::int64_t>(v.begin(), v.end());
}

}  // namespace

BOOST_AUTO_TEST_CASE(packed_index_holds_the_plan) {
  const std::int64_t n = 37, k = 3, e = 7;
  const Routed r = random_routing(n, k, e, 4, 11);
  tmoe::RoutingPlan plan;
  tmoe::build_routing_plan(plan, r.expert.data(), r.token.data(), r.kept.data(), n * k, n, e);
  const tmoe::PermuteIndex ix = tmoe::permute_index(plan);
  BOOST_TEST(ix.n == n);
  BOOST_TEST(ix.a == n * k);
  BOOST_TEST(ix.e == e);
  BOOST_TEST(ix.rows == plan.rows());
  BOOST_TEST(static_cast<std::int64_t>(ix.data.size()) == ix.size());
  const auto h = ix.host();
  auto slice = [](const std::int32_t* p, std::int64_t len) { return std::vector<std::int32_t>(p, p + len); };
  BOOST_TEST(slice(h.row_token, ix.rows) == plan.row_token);
  BOOST_TEST(slice(h.row_assign, ix.rows) == plan.row_assign);
  BOOST_TEST(slice(h.pos, ix.a) == plan.pos);
  BOOST_TEST(slice(h.tok_offsets, n + 1) == plan.tok_offsets);
  BOOST_TEST(slice(h.tok_assign, ix.rows) == plan.tok_assign);
  BOOST_TEST(widen(slice(h.expert_offsets, e + 1)) == plan.offsets);
  // The arrays tile the buffer with no gap: the last ends where the buffer does.
  BOOST_TEST(h.expert_offsets + e + 1 == ix.data.data() + ix.data.size());

  // Semantics the GPU kernels rely on: rows by expert, in assignment order within an expert;
  // a token's list in assignment order; dropped assignments have no row.
  std::int64_t kept = 0;
  for (std::int64_t a = 0; a < n * k; ++a) {
    if (!r.kept[a]) {
      BOOST_TEST(plan.pos[a] == -1);
      continue;
    }
    ++kept;
    const std::int32_t row = plan.pos[a];
    BOOST_TEST(row >= plan.offsets[r.expert[a]]);
    BOOST_TEST(row < plan.offsets[r.expert[a] + 1]);
    BOOST_TEST(plan.row_assign[row] == a);
    BOOST_TEST(plan.row_token[row] == r.token[a]);
  }
  BOOST_TEST(kept == ix.rows);
  for (std::int64_t x = 0; x < e; ++x)
    for (std::int64_t row = plan.offsets[x] + 1; row < plan.offsets[x + 1]; ++row)
      BOOST_TEST(plan.row_assign[row - 1] < plan.row_assign[row]);
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int32_t q = plan.tok_offsets[t]; q < plan.tok_offsets[t + 1]; ++q) {
      BOOST_TEST(r.token[plan.tok_assign[q]] == t);
      if (q > plan.tok_offsets[t]) BOOST_TEST(plan.tok_assign[q - 1] < plan.tok_assign[q]);
    }
}

BOOST_AUTO_TEST_CASE(expert_slices_skip_empty_experts) {
  const std::int64_t n = 29, k = 2, e = 6;
  const Routed r = random_routing(n, k, e, 3, 5);  // expert 3 never chosen
  tmoe::RoutingPlan plan;
  tmoe::build_routing_plan(plan, r.expert.data(), r.token.data(), nullptr, n * k, n, e);
  const auto slices = tmoe::expert_slices(plan);
  std::vector<std::int64_t> counts(e, 0);
  for (auto x : r.expert) ++counts[x];
  std::vector<tmoe::ExpertSlice> want;
  std::int64_t row = 0;
  for (std::int64_t x = 0; x < e; ++x) {
    if (counts[x] > 0) want.push_back({static_cast<std::int32_t>(x), row, counts[x]});
    row += counts[x];
  }
  BOOST_TEST(counts[3] == 0);
  BOOST_TEST(slices.size() == want.size());
  BOOST_TEST((slices == want));
  for (const auto& s : slices) BOOST_TEST(s.rows > 0);

  // Directly from counts/offsets, with empties at both ends.
  const std::vector<std::int64_t> c2{0, 2, 0, 0, 5, 0}, o2{0, 0, 2, 2, 2, 7, 7};
  const auto s2 = tmoe::expert_slices(c2, o2);
  const std::vector<tmoe::ExpertSlice> w2{{1, 0, 2}, {4, 2, 5}};
  BOOST_TEST((s2 == w2));
}

BOOST_AUTO_TEST_CASE(every_token_dropped) {
  const std::int64_t n = 8, k = 2, e = 4;
  Routed r = random_routing(n, k, e, -1, 3);
  std::fill(r.kept.begin(), r.kept.end(), 0);
  tmoe::RoutingPlan plan;
  tmoe::build_routing_plan(plan, r.expert.data(), r.token.data(), r.kept.data(), n * k, n, e);
  BOOST_TEST(plan.rows() == 0);
  BOOST_TEST(tmoe::expert_slices(plan).empty());
  const auto ix = tmoe::permute_index(plan);
  BOOST_TEST(ix.rows == 0);
  BOOST_TEST(ix.size() == n * k + n + 1 + e + 1);
  const auto h = ix.host();
  for (std::int64_t a = 0; a < n * k; ++a) BOOST_TEST(h.pos[a] == -1);
  for (std::int64_t t = 0; t <= n; ++t) BOOST_TEST(h.tok_offsets[t] == 0);
  for (std::int64_t x = 0; x <= e; ++x) BOOST_TEST(h.expert_offsets[x] == 0);
}

BOOST_AUTO_TEST_CASE(bad_ids_are_errors) {
  const std::int64_t n = 4, k = 2, e = 3;
  Routed r = random_routing(n, k, e, -1, 9);
  tmoe::RoutingPlan plan;
  auto build = [&] { tmoe::build_routing_plan(plan, r.expert.data(), r.token.data(), r.kept.data(), n * k, n, e); };
  BOOST_CHECK_NO_THROW(build());
  r.expert[5] = static_cast<std::int32_t>(e);
  BOOST_CHECK_THROW(build(), tmoe::Error);
  try {
    build();
  } catch (const tmoe::Error& err) {
    const std::string w = err.what();
    BOOST_TEST(w.find("assignment 5 names expert 3") != std::string::npos, w);
  }
  r.expert[5] = -1;
  BOOST_CHECK_THROW(build(), tmoe::Error);
  r.expert[5] = 0;
  r.token[2] = static_cast<std::int32_t>(n);
  BOOST_CHECK_THROW(build(), tmoe::Error);
  r.token[2] = 1;
  BOOST_CHECK_THROW(tmoe::build_routing_plan(plan, r.expert.data(), r.token.data(), nullptr, n * k, n, 0), tmoe::Error);

  // Inconsistent inputs of the packing and slicing.
  BOOST_CHECK_THROW(tmoe::permute_index(tmoe::RoutingPlan{}), tmoe::Error);
  const std::vector<std::int64_t> c{1, 2}, bad_o{0, 1, 4}, short_o{0, 1};
  BOOST_CHECK_THROW(tmoe::expert_slices(c, bad_o), tmoe::Error);
  BOOST_CHECK_THROW(tmoe::expert_slices(c, short_o), tmoe::Error);
}
