#define BOOST_TEST_MODULE data_active_learning
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "../support/expect_error.hpp"
#include "../support/files.hpp"
#include "../support/numeric.hpp"
#include "tmoe/data/active_learning.hpp"

namespace fs = std::filesystem;
using namespace tmoe::data;
using tmoe::test::expect_error;
using tmoe::test::expect_error_at;
using tmoe::test::TempDir;

namespace {

// Direct (unshifted) softmax in double: fine for the moderate logits it is used on.
UncertaintyScore direct(const std::vector<double>& z, std::size_t T, std::size_t V, const std::vector<std::int32_t>& y) {
  UncertaintyScore r;
  for (std::size_t t = 0; t < T; ++t) {
    double s = 0;
    for (std::size_t v = 0; v < V; ++v) s += std::exp(z[t * V + v]);
    double h = 0;
    for (std::size_t v = 0; v < V; ++v) {
      const double p = std::exp(z[t * V + v]) / s;
      h -= p * std::log(p);
    }
    r.loss -= std::log(std::exp(z[t * V + static_cast<std::size_t>(y[t])]) / s);
    r.entropy += h;
  }
  r.loss /= static_cast<double>(T);
  r.entropy /= static_cast<double>(T);
  return r;
}

std::vector<TextRecord> five_records() {
  return {{"r0", "a"}, {"r1", "bbbb"}, {"r2", "cc"}, {"r3", "dddd"}, {"r4", ""}};
}

std::vector<std::string> lines_of(const std::string& path) {
  const auto b = tmoe::test::read_bytes(path);
  std::istringstream in(std::string(b.begin(), b.end()));
  std::vector<std::string> out;
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

std::size_t files_in(const fs::path& dir) {
  std::size_t n = 0;
  for (auto& e : fs::directory_iterator(dir)) (void)e, ++n;
  return n;
}

}  // namespace

BOOST_AUTO_TEST_CASE(uncertainty_matches_direct_computation) {
  const std::size_t T = 7, V = 11;
  const auto z = tmoe::test::randn(T * V, 3, 2.0);
  const auto y = tmoe::test::random_tokens(static_cast<std::int64_t>(T), static_cast<std::int64_t>(V), 4);
  const auto got = sequence_uncertainty(z.data(), T, V, y);
  const auto want = direct(z, T, V, y);
  BOOST_TEST(got.tokens == T);
  BOOST_TEST(std::abs(got.loss - want.loss) < 1e-12);
  BOOST_TEST(std::abs(got.entropy - want.entropy) < 1e-12);
  BOOST_TEST(got.entropy > 0);
  BOOST_TEST(got.entropy < std::log(static_cast<double>(V)));

  // float logits: the same values, accumulated in double.
  const auto zf = tmoe::test::randn<float>(T * V, 3, 2.0);
  const std::vector<double> zd(zf.begin(), zf.end());
  const auto gf = sequence_uncertainty(zf.data(), T, V, y);
  const auto wf = direct(zd, T, V, y);
  BOOST_TEST(std::abs(gf.loss - wf.loss) < 1e-12);
  BOOST_TEST(std::abs(gf.entropy - wf.entropy) < 1e-12);
}

BOOST_AUTO_TEST_CASE(uncertainty_is_stable_and_shift_invariant) {
  const std::size_t T = 3, V = 5;
  auto z = tmoe::test::randn(T * V, 9);
  const std::vector<std::int32_t> y = {0, 4, 2};
  const auto base = sequence_uncertainty(z.data(), T, V, y);
  for (auto& x : z) x += 1e4;  // exp would overflow without the max shift
  const auto shifted = sequence_uncertainty(z.data(), T, V, y);
  BOOST_TEST(std::isfinite(shifted.loss));
  BOOST_TEST(std::abs(shifted.loss - base.loss) < 1e-9);
  BOOST_TEST(std::abs(shifted.entropy - base.entropy) < 1e-9);

  // Uniform logits: loss = entropy = log V.
  const std::vector<double> flat(2 * 4, 3.5);
  const auto u = sequence_uncertainty(flat.data(), 2, 4, std::vector<std::int32_t>{1, 3});
  BOOST_TEST(u.loss == std::log(4.0), boost::test_tools::tolerance(1e-15));
  BOOST_TEST(u.entropy == std::log(4.0), boost::test_tools::tolerance(1e-15));

  // -inf masks a token: two equal live logits give log 2 for both; a masked target costs inf.
  const double ninf = -std::numeric_limits<double>::infinity();
  const std::vector<double> masked = {0.0, 0.0, ninf};
  const auto m = sequence_uncertainty(masked.data(), 1, 3, std::vector<std::int32_t>{1});
  BOOST_TEST(m.loss == std::log(2.0), boost::test_tools::tolerance(1e-15));
  BOOST_TEST(m.entropy == std::log(2.0), boost::test_tools::tolerance(1e-15));
  BOOST_TEST(std::isinf(sequence_uncertainty(masked.data(), 1, 3, std::vector<std::int32_t>{2}).loss));

  // One dominant logit: entropy near 0, loss near 0 for that target.
  const std::vector<double> peaked = {50.0, 0.0, 0.0};
  const auto p = sequence_uncertainty(peaked.data(), 1, 3, std::vector<std::int32_t>{0});
  BOOST_TEST(p.loss < 1e-20);
  BOOST_TEST(p.entropy >= 0);
  BOOST_TEST(p.entropy < 1e-19);
}

BOOST_AUTO_TEST_CASE(uncertainty_bad_input) {
  const std::vector<double> z = {0.0, 1.0, 2.0, 3.0};
  const std::vector<std::int32_t> y = {0, 1};
  expect_error([&] { sequence_uncertainty(z.data(), 2, 2, std::vector<std::int32_t>{0, 2}); },
               {"target 2 at position 1", "[0, 2)"});
  expect_error([&] { sequence_uncertainty(z.data(), 2, 2, std::vector<std::int32_t>{-1, 0}); }, {"target -1"});
  expect_error([&] { sequence_uncertainty(z.data(), 2, 2, std::vector<std::int32_t>{0}); }, {"1 targets for 2 positions"});
  expect_error([&] { sequence_uncertainty(z.data(), 0, 2, std::vector<std::int32_t>{}); }, {"no tokens"});
  expect_error([&] { sequence_uncertainty(z.data(), 2, 0, y); }, {"vocabulary size is 0"});
  expect_error([&] { sequence_uncertainty<double>(nullptr, 2, 2, y); }, {"null"});
  const std::vector<double> bad = {0.0, std::nan(""), 0.0, 0.0};
  expect_error([&] { sequence_uncertainty(bad.data(), 2, 2, y); }, {"position 0, id 1", "finite logits"});
  const std::vector<double> pinf = {0.0, 0.0, std::numeric_limits<double>::infinity(), 0.0};
  expect_error([&] { sequence_uncertainty(pinf.data(), 2, 2, y); }, {"position 1, id 0"});
  const double ninf = -std::numeric_limits<double>::infinity();
  const std::vector<double> dead = {0.0, 0.0, ninf, ninf};
  expect_error([&] { sequence_uncertainty(dead.data(), 2, 2, y); }, {"every logit at position 1 is -inf"});
}

BOOST_AUTO_TEST_CASE(ranking_order_ties_and_top_n) {
  const auto recs = five_records();
  const std::vector<double> s = {0.5, 2.0, 1.0, 2.0, 0.1};
  const auto top3 = rank_by_score(recs, s, 3);
  BOOST_REQUIRE(top3.size() == 3u);
  BOOST_TEST(top3[0].id == "r1");  // tie with r3: input order
  BOOST_TEST(top3[1].id == "r3");
  BOOST_TEST(top3[2].id == "r2");
  BOOST_TEST(top3[0].index == 1u);
  BOOST_TEST(top3[0].text == "bbbb");
  BOOST_TEST(top3[2].score == 1.0);
  const auto all = rank_by_score(recs, s, 100);  // top_n > count: every record
  BOOST_REQUIRE(all.size() == 5u);
  BOOST_TEST(all[3].id == "r0");
  BOOST_TEST(all[4].id == "r4");
  BOOST_TEST(rank_by_score(recs, s, 0).empty());
  // All equal: input order.
  const auto same = rank_by_score(recs, std::vector<double>(5, 7.0), 5);
  for (std::size_t i = 0; i < 5; ++i) BOOST_TEST(same[i].index == i);
  // No records: nothing, no error.
  BOOST_TEST(rank_by_score({}, {}, 3).empty());
}

BOOST_AUTO_TEST_CASE(criteria_pick_their_field) {
  const auto recs = five_records();
  std::vector<UncertaintyScore> u(5);
  const double loss[] = {1, 5, 3, 2, 4}, ent[] = {9, 1, 2, 3, 0};
  for (std::size_t i = 0; i < 5; ++i) u[i] = {loss[i], ent[i], 1};
  const auto by_loss = rank_by_uncertainty(recs, u, Uncertainty::loss, 2);
  BOOST_TEST(by_loss[0].id == "r1");
  BOOST_TEST(by_loss[1].id == "r4");
  BOOST_TEST(by_loss[1].score == 4.0);
  const auto by_ent = rank_by_uncertainty(recs, u, Uncertainty::entropy, 2);
  BOOST_TEST(by_ent[0].id == "r0");
  BOOST_TEST(by_ent[1].id == "r3");
  BOOST_TEST((parse_uncertainty("loss") == Uncertainty::loss));
  BOOST_TEST(std::string(to_string(Uncertainty::entropy)) == "entropy");
}

BOOST_AUTO_TEST_CASE(callable_scorers) {
  const auto recs = five_records();
  int calls = 0;
  auto by_length = [&](std::string_view t) {
    ++calls;
    return static_cast<double>(t.size());
  };
  const auto top = rank_by_uncertainty(recs, by_length, Uncertainty::loss, 2);
  BOOST_TEST(calls == 5);
  BOOST_TEST(top[0].id == "r1");
  BOOST_TEST(top[1].id == "r3");
  // A scorer returning both: the criterion picks.
  auto both = [](std::string_view t) {
    return UncertaintyScore{static_cast<double>(t.size()), t.empty() ? 10.0 : 0.0, t.size()};
  };
  BOOST_TEST(rank_by_uncertainty(recs, both, Uncertainty::entropy, 1)[0].id == "r4");
  BOOST_TEST(rank_by_uncertainty(recs, both, Uncertainty::loss, 1)[0].id == "r1");
}

BOOST_AUTO_TEST_CASE(export_jsonl_atomically) {
  TempDir t;
  const std::vector<TextRecord> recs = {{"a", "plain"}, {"b", "quote \" and\nnewline"}, {"c", "caf\xc3\xa9"}};
  const auto top = rank_by_score(recs, std::vector<double>{0.25, 1.5, 1.5}, 2);
  const std::string out = t.file("select.jsonl");
  t.write("select.jsonl", "old contents\n");
  write_selection_jsonl(out, top, "loss");
  const auto lines = lines_of(out);
  BOOST_REQUIRE(lines.size() == 2u);
  BOOST_TEST(lines[0] == R"({"id":"b","text":"quote \" and\nnewline","score":1.5,"criterion":"loss"})");
  const auto j = nlohmann::json::parse(lines[1]);
  BOOST_TEST(j["id"] == "c");
  BOOST_TEST(j["text"] == "caf\xc3\xa9");
  BOOST_TEST(j["score"].get<double>() == 1.5);
  BOOST_TEST(j["criterion"] == "loss");
  BOOST_TEST(files_in(t.dir) == 1u);  // no temporary file left
  BOOST_TEST(((fs::status(out).permissions() & fs::perms::owner_read) != fs::perms::none));

  // An empty selection writes an empty file.
  write_selection_jsonl(out, {}, "entropy");
  BOOST_TEST(tmoe::test::read_bytes(out).empty());

  // Scores keep full precision.
  const auto p = rank_by_score(recs, std::vector<double>{0.1 + 0.2, 0, 0}, 1);
  write_selection_jsonl(out, p, "entropy");
  BOOST_TEST(nlohmann::json::parse(lines_of(out)[0])["score"].get<double>() == 0.1 + 0.2);
}

BOOST_AUTO_TEST_CASE(select_for_labelling_writes_config_output) {
  TempDir t;
  const auto recs = five_records();
  ActiveLearningConfig cfg;
  BOOST_TEST(cfg.criterion == "entropy");
  cfg.criterion = "loss";
  cfg.top_n = 2;
  cfg.output = t.file("pick.jsonl");
  auto score = [](std::string_view s) { return UncertaintyScore{static_cast<double>(s.size()), 0.0, s.size()}; };
  const auto top = select_for_labelling(recs, score, cfg);
  BOOST_REQUIRE(top.size() == 2u);
  const auto lines = lines_of(cfg.output);
  BOOST_REQUIRE(lines.size() == 2u);
  BOOST_TEST(lines[0] == R"({"id":"r1","text":"bbbb","score":4.0,"criterion":"loss"})");
  BOOST_TEST(lines[1] == R"({"id":"r3","text":"dddd","score":4.0,"criterion":"loss"})");
  // No output path: ranked, nothing written.
  cfg.output.clear();
  cfg.top_n = 50;
  BOOST_TEST(select_for_labelling(recs, score, cfg).size() == 5u);
  BOOST_TEST(files_in(t.dir) == 1u);
}

BOOST_AUTO_TEST_CASE(bad_records_scores_and_config) {
  const auto recs = five_records();
  expect_error([&] { rank_by_score(recs, std::vector<double>{1, 2}, 1); }, {"2 scores for 5 records"});
  expect_error([&] { rank_by_score(recs, std::vector<double>{1, 2, std::nan(""), 0, 0}, 1); },
               {"record 'r2' (2)", "finite score"});
  expect_error([&] { rank_by_score(recs, std::vector<double>{1, 2, 3, INFINITY, 0}, 1); }, {"record 'r3'", "inf"});
  std::vector<TextRecord> dup = {{"x", "1"}, {"y", "2"}, {"x", "3"}};
  expect_error([&] { rank_by_score(dup, std::vector<double>{1, 2, 3}, 1); }, {"records 0 and 2", "'x'", "unique"});
  std::vector<TextRecord> noid = {{"", "1"}};
  expect_error([&] { rank_by_score(noid, std::vector<double>{1}, 1); }, {"record 0 has an empty id"});

  ActiveLearningConfig cfg;
  cfg.criterion = "margin";
  expect_error_at([&] { cfg.validate(); }, "active_learning.criterion", {"'margin'", "loss or entropy"});
  cfg.criterion = "loss";
  cfg.top_n = 0;
  expect_error_at([&] { cfg.validate(); }, "active_learning.top_n", {"top_n is 0"});

  TempDir t;
  const auto top = rank_by_score(recs, std::vector<double>(5, 1.0), 5);
  const std::string missing = (t.dir / "no_such_dir" / "out.jsonl").string();
  expect_error_at([&] { write_selection_jsonl(missing, top, "loss"); }, missing, {"temporary file"});
  expect_error_at([&] { write_selection_jsonl("", top, "loss"); }, "active_learning.output", {"empty"});
  // Invalid UTF-8 in a text: error, and the previous file stays as it was.
  const std::string out = t.write("keep.jsonl", "previous\n");
  const std::vector<TextRecord> bin = {{"z", std::string("\xff\xfe", 2)}};
  const auto sel = rank_by_score(bin, std::vector<double>{1}, 1);
  expect_error_at([&] { write_selection_jsonl(out, sel, "loss"); }, out, {"record 'z'", "UTF-8"});
  BOOST_TEST(lines_of(out) == std::vector<std::string>{"previous"});
  BOOST_TEST(files_in(t.dir) == 1u);
}
