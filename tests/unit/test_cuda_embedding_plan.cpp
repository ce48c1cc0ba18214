#define BOOST_TEST_MODULE cuda_embedding_plan
// The host-side index plan of the CUDA embedding backward (backend/cuda/embedding_plan.hpp):
// every position appears exactly once, grouped by id with the ids ascending, positions
// ascending within a group; empty input; out-of-range ids are a tmoe::Error naming the id.
// The backward's fixed summation order rests on these properties.
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "tmoe/backend/cuda/embedding_plan.hpp"

using tmoe::backend::cuda::EmbeddingPlan;
using tmoe::backend::cuda::make_embedding_plan;

namespace {

// Checks the plan's invariants against the ids it was built from.
void check_plan(const EmbeddingPlan& p, const std::vector<std::int32_t>& ids) {
  const auto n = static_cast<std::int64_t>(ids.size());
  BOOST_REQUIRE_EQUAL(p.offsets.size(), p.ids.size() + 1);
  BOOST_REQUIRE_EQUAL(static_cast<std::int64_t>(p.positions.size()), n);
  BOOST_TEST(p.offsets.front() == 0);
  BOOST_TEST(p.offsets.back() == n);
  std::vector<int> seen(ids.size(), 0);
  for (std::int64_t g = 0; g < p.groups(); ++g) {
    if (g > 0) BOOST_TEST(p.ids[g - 1] < p.ids[g]);  // distinct, ascending
    BOOST_TEST(p.offsets[g] < p.offsets[g + 1]);       // no empty group
    for (std::int64_t k = p.offsets[g]; k < p.offsets[g + 1]; ++k) {
      const std::int64_t pos = p.positions[k];
      BOOST_REQUIRE(pos >= 0 && pos < n);
      BOOST_TEST(ids[pos] == p.ids[g]);
      if (k > p.offsets[g]) BOOST_TEST(p.positions[k - 1] < pos);
      ++seen[pos];
    }
  }
  for (std::int64_t i = 0; i < n; ++i) BOOST_TEST(seen[i] == 1, "position " << i << " seen " << seen[i] << " times");
}

std::string error_of(const std::vector<std::int32_t>& ids, std::int64_t vocab) {
  try {
    make_embedding_plan(ids.data(), static_cast<std::int64_t>(ids.size()), vocab);
  } catch (const tmoe::Error& e) {
    return e.what();
  }
  return {};
}

}  // namespace

BOOST_AUTO_TEST_CASE(small_example_by_hand) {
  const std::vector<std::int32_t> ids{3, 1, 3, 0, 1, 3};
  const auto p = make_embedding_plan(ids.data(), 6, 5);
  BOOST_TEST(p.ids == (std::vector<std::int32_t>{0, 1, 3}), boost::test_tools::per_element());
  BOOST_TEST(p.offsets == (std::vector<std::int64_t>{0, 1, 3, 6}), boost::test_tools::per_element());
  BOOST_TEST(p.positions == (std::vector<std::int64_t>{3, 1, 4, 0, 2, 5}), boost::test_tools::per_element());
  check_plan(p, ids);
}

BOOST_AUTO_TEST_CASE(random_ids_with_repeats_known_and_unknown_vocab) {
  std::mt19937 g(7);
  for (const std::int64_t n : {1, 2, 17, 1000, 4099}) {
    for (const std::int32_t vocab : {1, 5, 300, 50257}) {
      std::uniform_int_distribution<std::int32_t> d(0, vocab - 1);
      std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
      for (auto& x : ids) x = d(g);
      const auto known = make_embedding_plan(ids.data(), n, vocab);
      check_plan(known, ids);
      const auto inferred = make_embedding_plan(ids.data(), n, -1);
      check_plan(inferred, ids);
      BOOST_TEST(known.ids == inferred.ids);
      BOOST_TEST(known.offsets == inferred.offsets);
      BOOST_TEST(known.positions == inferred.positions);
    }
  }
}

BOOST_AUTO_TEST_CASE(empty_input) {
  for (const std::int64_t vocab : {10, -1}) {
    const auto p = make_embedding_plan(nullptr, 0, vocab);
    BOOST_TEST(p.groups() == 0);
    BOOST_TEST(p.positions.empty());
    BOOST_TEST(p.offsets == (std::vector<std::int64_t>{0}), boost::test_tools::per_element());
  }
}

BOOST_AUTO_TEST_CASE(out_of_range_ids_are_errors_naming_the_id) {
  const std::string high = error_of({0, 1, 10, 2}, 10);
  BOOST_TEST_MESSAGE(high);
  BOOST_TEST(high.find("token id 10") != std::string::npos);
  BOOST_TEST(high.find("position 2") != std::string::npos);
  BOOST_TEST(high.find("[0, 10)") != std::string::npos);

  const std::string negative = error_of({0, -3, 1}, 10);
  BOOST_TEST(negative.find("token id -3") != std::string::npos);
  BOOST_TEST(negative.find("position 1") != std::string::npos);

  // Unknown vocab: only negative ids can be wrong.
  const std::string unknown = error_of({4, -1}, -1);
  BOOST_TEST(unknown.find("token id -1") != std::string::npos);
  BOOST_TEST(error_of({4, 1000}, -1).empty());

  BOOST_TEST(!error_of({0}, 0).empty());  // a table of 0 rows
}
