#define BOOST_TEST_MODULE data_annotation
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../support/files.hpp"
#include "tmoe/data/annotation.hpp"

using namespace tmoe::data;
using tmoe::test::TempDir;
using Strings = std::vector<std::string>;

namespace {

// Two annotators' labels with the given counts of (a, b) pairs, in that order.
void add_pairs(Strings& a, Strings& b, const std::string& x, const std::string& y, int n) {
  for (int i = 0; i < n; ++i) {
    a.push_back(x);
    b.push_back(y);
  }
}

// The k x k table as two label lists with labels "0", "1", ...
void table_labels(const std::vector<std::vector<int>>& t, Strings& a, Strings& b) {
  for (std::size_t i = 0; i < t.size(); ++i)
    for (std::size_t j = 0; j < t[i].size(); ++j) add_pairs(a, b, std::to_string(i), std::to_string(j), t[i][j]);
}

// alice and bob over two batches: b1 is the Yes/No textbook table (kappa 0.4), b2 has 5
// Yes/Yes and 5 No/No (kappa 1).
std::vector<LabelRecord> two_batches() {
  std::vector<LabelRecord> r;
  int n = 0;
  auto add = [&](const char* batch, const char* x, const char* y, int count) {
    for (int i = 0; i < count; ++i, ++n) {
      r.push_back({"i" + std::to_string(n), "alice", x, batch});
      r.push_back({"i" + std::to_string(n), "bob", y, batch});
    }
  };
  add("b1", "Yes", "Yes", 20);
  add("b1", "Yes", "No", 5);
  add("b1", "No", "Yes", 10);
  add("b1", "No", "No", 15);
  add("b2", "Yes", "Yes", 5);
  add("b2", "No", "No", 5);
  return r;
}

}  // namespace

// Wikipedia / Cohen textbook: 50 proposals, p_o = 0.7, p_e = 0.5, kappa = 0.4.
BOOST_AUTO_TEST_CASE(cohen_textbook_yes_no) {
  Strings a, b;
  add_pairs(a, b, "Yes", "Yes", 20);
  add_pairs(a, b, "Yes", "No", 5);
  add_pairs(a, b, "No", "Yes", 10);
  add_pairs(a, b, "No", "No", 15);
  const auto k = cohen_kappa(a, b);
  BOOST_TEST(k.kappa == 0.4, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(k.observed == 0.7, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(k.expected == 0.5, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(k.items == 50u);
  BOOST_TEST(k.categories == 2u);
  // Symmetric in the annotators.
  BOOST_TEST(cohen_kappa(b, a).kappa == 0.4, boost::test_tools::tolerance(1e-15));
}

// Table [[2,1,0],[0,2,1],[1,0,1]], n = 8: unweighted 3/7, linear 11/27, quadratic 5/13
// (by hand: sum w*O = 3, 4, 6 and sum w*E = 42/8, 54/8, 78/8).
BOOST_AUTO_TEST_CASE(cohen_weighted_by_hand) {
  const std::vector<std::vector<int>> t = {{2, 1, 0}, {0, 2, 1}, {1, 0, 1}};
  Strings a, b;
  table_labels(t, a, b);
  BOOST_TEST(cohen_kappa(a, b).kappa == 3.0 / 7, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(cohen_kappa(a, b, KappaWeights::linear).kappa == 11.0 / 27, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(cohen_kappa(a, b, KappaWeights::quadratic).kappa == 5.0 / 13, boost::test_tools::tolerance(1e-15));
  const std::vector<double> flat = {2, 1, 0, 0, 2, 1, 1, 0, 1};
  BOOST_TEST(cohen_kappa_table(flat, 3, KappaWeights::linear).kappa == 11.0 / 27, boost::test_tools::tolerance(1e-15));
  // Weighted p_o / p_e are normalised by the largest weight: kappa = (p_o - p_e) / (1 - p_e).
  const auto q = cohen_kappa_table(flat, 3, KappaWeights::quadratic);
  BOOST_TEST((q.observed - q.expected) / (1 - q.expected) == q.kappa, boost::test_tools::tolerance(1e-14));
  BOOST_TEST(q.observed == 1 - 6.0 / (8 * 4), boost::test_tools::tolerance(1e-15));
}

BOOST_AUTO_TEST_CASE(integer_labels_and_order) {
  BOOST_TEST(is_integer_label("0"));
  BOOST_TEST(is_integer_label("-17"));
  BOOST_TEST(is_integer_label("9223372036854775807"));
  BOOST_TEST(is_integer_label("-9223372036854775808"));
  for (const char* s : {"", "-", "-0", "007", "1.0", "+1", "1e3", " 1", "9223372036854775808", "-9223372036854775809"})
    BOOST_TEST(!is_integer_label(s), s);
  std::int64_t v = 0;
  BOOST_TEST(is_integer_label("-9223372036854775808", &v));
  BOOST_TEST(v == INT64_MIN);

  BOOST_TEST(label_order({"10", "2", "-3", "2"}) == (Strings{"-3", "2", "10"}));
  BOOST_TEST(label_order({"10", "2", "b", "B"}) == (Strings{"10", "2", "B", "b"}));  // bytes: digits < upper < lower
  BOOST_TEST(label_order({"é", "z", "a"}) == (Strings{"a", "z", "é"}));            // code-point order

  // Weighted kappa depends on the order: numeric {-3, 2, 10} gives linear 2/5, quadratic
  // 4/7; the byte-wise order {"-3", "10", "2"} gives linear 2/17, quadratic 0 (as
  // scikit-learn on ints vs. on strings). Unweighted kappa (1/4) does not.
  const Strings a = {"-3", "2", "10", "2", "-3", "10"}, b = {"2", "2", "10", "-3", "-3", "2"};
  BOOST_TEST(cohen_kappa(a, b, KappaWeights::linear).kappa == 0.4, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(cohen_kappa(a, b, KappaWeights::quadratic).kappa == 4.0 / 7, boost::test_tools::tolerance(1e-15));
  const Strings bytewise = {"-3", "10", "2"};
  BOOST_TEST(cohen_kappa(a, b, KappaWeights::linear, bytewise).kappa == 2.0 / 17, boost::test_tools::tolerance(1e-14));
  BOOST_TEST(std::abs(cohen_kappa(a, b, KappaWeights::quadratic, bytewise).kappa) < 1e-15);
  BOOST_TEST(cohen_kappa(a, b).kappa == 0.25, boost::test_tools::tolerance(1e-14));
  BOOST_TEST(cohen_kappa(a, b, KappaWeights::none, bytewise).kappa == 0.25, boost::test_tools::tolerance(1e-14));
  // An order may list unused categories; with weights they change the distances.
  const Strings wide = {"-3", "0", "2", "10"};
  const auto k = cohen_kappa(a, b, KappaWeights::none, wide);
  BOOST_TEST(k.categories == 4u);
  BOOST_TEST(k.kappa == 0.25, boost::test_tools::tolerance(1e-14));
}

BOOST_AUTO_TEST_CASE(cohen_edge_cases) {
  // One category, perfect agreement: kappa is 0/0 -> NaN (as scikit-learn), p_o = p_e = 1.
  const Strings same = {"x", "x", "x"};
  const auto k = cohen_kappa(same, same);
  BOOST_TEST(std::isnan(k.kappa));
  BOOST_TEST(!k.defined());
  BOOST_TEST(k.observed == 1.0);
  BOOST_TEST(k.expected == 1.0);
  BOOST_TEST(std::isnan(cohen_kappa(same, same, KappaWeights::quadratic).kappa));
  // A single item is allowed.
  BOOST_TEST(std::isnan(cohen_kappa(Strings{"x"}, Strings{"x"}).kappa));
  BOOST_TEST(cohen_kappa(Strings{"x"}, Strings{"y"}).kappa == 0.0);
  // Perfect agreement over 2 categories: 1; each annotator constant but different: 0.
  BOOST_TEST(cohen_kappa(Strings{"x", "y"}, Strings{"x", "y"}).kappa == 1.0);
  BOOST_TEST(cohen_kappa(Strings{"x", "x"}, Strings{"y", "y"}).kappa == 0.0);
  // Complete systematic disagreement on balanced labels: -1.
  BOOST_TEST(cohen_kappa(Strings{"x", "y"}, Strings{"y", "x"}).kappa == -1.0);
}

// Fleiss (1971) as on Wikipedia: 10 items, 14 raters, 5 categories, kappa = 0.210; exactly
// P = 172/455, Pe = 417/1960, kappa = 4211/20059.
BOOST_AUTO_TEST_CASE(fleiss_wikipedia_table) {
  const std::vector<std::vector<std::int64_t>> t = {{0, 0, 0, 0, 14}, {0, 2, 6, 4, 2}, {0, 0, 3, 5, 6}, {0, 3, 9, 2, 0},
                                                    {2, 2, 8, 1, 1},  {7, 7, 0, 0, 0}, {3, 2, 6, 3, 0}, {2, 5, 3, 2, 2},
                                                    {6, 5, 2, 1, 0},  {0, 2, 2, 3, 7}};
  const auto k = fleiss_kappa(t);
  BOOST_TEST(k.kappa == 4211.0 / 20059, boost::test_tools::tolerance(1e-14));
  BOOST_TEST(k.observed == 172.0 / 455, boost::test_tools::tolerance(1e-14));
  BOOST_TEST(k.expected == 417.0 / 1960, boost::test_tools::tolerance(1e-14));
  BOOST_TEST(std::round(k.kappa * 1000) / 1000 == 0.210);
  BOOST_TEST(k.items == 10u);
  BOOST_TEST(k.categories == 5u);
  // The flat overload gives the same bits.
  std::vector<std::int64_t> flat;
  for (auto& r : t) flat.insert(flat.end(), r.begin(), r.end());
  BOOST_TEST(fleiss_kappa(flat, 10, 5).kappa == k.kappa);
}

BOOST_AUTO_TEST_CASE(fleiss_edge_cases) {
  // Everyone agrees on every item, two categories used: 1.
  BOOST_TEST(fleiss_kappa({{3, 0}, {0, 3}}).kappa == 1.0);
  // One category only: undefined -> NaN.
  const auto k = fleiss_kappa({{3, 0}, {3, 0}});
  BOOST_TEST(std::isnan(k.kappa));
  BOOST_TEST(k.expected == 1.0);
  // Two raters: Fleiss = Scott's pi. Items (x,x), (x,y), (y,y), (y,y): p = (3/8, 5/8),
  // Pe = 34/64, P = 3/4, kappa = (3/4 - 34/64) / (30/64) = 7/15.
  BOOST_TEST(fleiss_kappa({{2, 0}, {1, 1}, {0, 2}, {0, 2}}).kappa == 7.0 / 15, boost::test_tools::tolerance(1e-15));
}

BOOST_AUTO_TEST_CASE(read_label_file_builds_the_set) {
  TempDir t;
  const std::string p = t.write("labels.jsonl",
                                "{\"item\": \"r2\", \"annotator\": \"bob\", \"label\": 3, \"batch\": \"b1\"}\n"
                                "\n"
                                "{\"item\": \"r2\", \"annotator\": \"alice\", \"label\": \"10\", \"batch\": \"b1\"}\r\n"
                                "   \n"
                                "{\"item\": 7, \"annotator\": \"alice\", \"label\": -1, \"batch\": 4, \"extra\": [1]}\n"
                                "{\"label\": 3, \"annotator\": \"bob\", \"item\": \"r2\", \"batch\": \"b1\"}\n"
                                "{\"item\": 7, \"annotator\": 11, \"label\": 3, \"batch\": \"4\"}");
  const auto s = read_label_file(p);
  BOOST_TEST(s.source == p);
  BOOST_TEST(s.items == (Strings{"r2", "7"}));
  BOOST_TEST(s.annotators == (Strings{"bob", "alice", "11"}));
  BOOST_TEST(s.categories == (Strings{"-1", "3", "10"}));  // all integers: numeric order
  BOOST_TEST(s.batches == (Strings{"b1", "4"}));
  BOOST_TEST(s.has_batches());
  BOOST_TEST(s.records == 5u);
  BOOST_TEST(s.duplicates == 1u);
  BOOST_TEST(s.labels() == 4u);
  BOOST_REQUIRE(s.votes.size() == 2u);
  BOOST_REQUIRE(s.votes[0].size() == 2u);
  BOOST_TEST(s.votes[0][0].annotator == 0u);
  BOOST_TEST(s.votes[0][0].category == 1u);
  BOOST_TEST(s.votes[0][0].line == 1u);
  BOOST_TEST(s.votes[0][1].category == 2u);
  BOOST_TEST(s.votes[0][1].line == 3u);
  BOOST_TEST(s.votes[1][1].line == 7u);
  BOOST_TEST(s.item_batch == (std::vector<std::size_t>{0, 1}));

  // Other field names; batch_field "" ignores batches.
  const std::string q = t.write("custom.jsonl",
                                "{\"doc\": \"a\", \"who\": \"u1\", \"y\": \"pos\", \"batch\": \"ignored\"}\n"
                                "{\"doc\": \"a\", \"who\": \"u2\", \"y\": \"neg\"}\n");
  LabelFileConfig cfg;
  cfg.item_field = "doc";
  cfg.annotator_field = "who";
  cfg.label_field = "y";
  cfg.batch_field = "";
  const auto c = read_label_file(q, cfg);
  BOOST_TEST(c.categories == (Strings{"neg", "pos"}));
  BOOST_TEST(!c.has_batches());
  BOOST_TEST(c.batches == (Strings{""}));
}

BOOST_AUTO_TEST_CASE(in_memory_set_matches_file) {
  const auto recs = two_batches();
  const auto s = make_label_set(recs);
  TempDir t;
  std::string text;
  for (auto& r : recs)
    text += "{\"item\": \"" + r.item + "\", \"annotator\": \"" + r.annotator + "\", \"label\": \"" + r.label +
            "\", \"batch\": \"" + r.batch + "\"}\n";
  const auto f = read_label_file(t.write("l.jsonl", text));
  BOOST_TEST(f.items == s.items);
  BOOST_TEST(f.annotators == s.annotators);
  BOOST_TEST(f.categories == s.categories);
  BOOST_TEST(f.batches == s.batches);
  BOOST_TEST(f.item_batch == s.item_batch);
  BOOST_TEST(agreement_report(f).overall.kappa.kappa == agreement_report(s).overall.kappa.kappa);
}

BOOST_AUTO_TEST_CASE(report_two_annotators_is_cohen) {
  const auto s = make_label_set(two_batches());
  const auto r = agreement_report(s);
  // Overall: YY 25, YN 5, NY 10, NN 20 -> p_o = 0.75, p_e = 0.5, kappa = 0.5.
  BOOST_TEST(r.overall.method == "cohen");
  BOOST_TEST(r.overall.kappa.kappa == 0.5, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(r.overall.items == 60u);
  BOOST_TEST(r.overall.annotators == 2u);
  BOOST_TEST(r.overall.raters_per_item == 2u);
  BOOST_REQUIRE(r.pairs.size() == 1u);
  BOOST_TEST(r.pairs[0].a == "alice");
  BOOST_TEST(r.pairs[0].b == "bob");
  BOOST_TEST(r.pairs[0].kappa.kappa == 0.5, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(r.pairs[0].kappa.items == 60u);
  BOOST_REQUIRE(r.batches.size() == 2u);
  BOOST_TEST(r.batches[0].name == "b1");
  BOOST_TEST(r.batches[0].kappa.kappa == 0.4, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(r.batches[1].name == "b2");
  BOOST_TEST(r.batches[1].kappa.kappa == 1.0);
  BOOST_TEST(cohen_kappa(s, "bob", "alice").kappa == 0.5, boost::test_tools::tolerance(1e-15));
  // Weights with 2 categories: every weighting is the same here.
  AgreementConfig lin;
  lin.weights = "linear";
  BOOST_TEST(agreement_report(s, lin).overall.kappa.kappa == 0.5, boost::test_tools::tolerance(1e-15));
}

BOOST_AUTO_TEST_CASE(report_many_annotators_is_fleiss) {
  // Three raters per item out of four annotators (ann, ben, cat, dan); no batches.
  const std::vector<LabelRecord> recs = {
      {"1", "ann", "a", ""}, {"1", "ben", "a", ""}, {"1", "cat", "a", ""},  //
      {"2", "ann", "a", ""}, {"2", "ben", "b", ""}, {"2", "dan", "b", ""},  //
      {"3", "ben", "c", ""}, {"3", "cat", "c", ""}, {"3", "dan", "b", ""},  //
      {"4", "ann", "b", ""}, {"4", "cat", "b", ""}, {"4", "dan", "b", ""},  //
      {"5", "ann", "c", ""}, {"5", "ben", "a", ""}, {"5", "cat", "b", ""},
  };
  const auto s = make_label_set(recs);
  const auto r = agreement_report(s);
  BOOST_TEST(r.overall.method == "fleiss");
  BOOST_TEST(r.overall.annotators == 4u);
  BOOST_TEST(r.overall.raters_per_item == 3u);
  // Counts (a, b, c): 3,0,0 / 1,2,0 / 0,1,2 / 0,3,0 / 1,1,1. P_i = 1, 1/3, 1/3, 1, 0 ->
  // P = 8/15; p = (5, 7, 3)/15 -> Pe = 83/225; kappa = (120/225 - 83/225) / (142/225) = 37/142.
  BOOST_TEST(r.overall.kappa.kappa == 37.0 / 142, boost::test_tools::tolerance(1e-14));
  BOOST_TEST(fleiss_kappa(s).kappa == r.overall.kappa.kappa);
  BOOST_TEST(r.batches.empty());
  // Pairs in annotator order, over shared items: ann-ben share 1, 2, 5.
  BOOST_REQUIRE(r.pairs.size() == 6u);
  BOOST_TEST(r.pairs[0].a == "ann");
  BOOST_TEST(r.pairs[0].b == "ben");
  BOOST_TEST(r.pairs[0].kappa.items == 3u);
  const auto ab = cohen_kappa(Strings{"a", "a", "c"}, Strings{"a", "b", "a"});
  BOOST_TEST(r.pairs[0].kappa.kappa == ab.kappa);
  BOOST_TEST(r.pairs[5].a == "cat");
  BOOST_TEST(r.pairs[5].b == "dan");
  BOOST_TEST(r.pairs[5].kappa.items == 2u);  // items 3 and 4
}

BOOST_AUTO_TEST_CASE(filter_by_batch) {
  const auto s = make_label_set(two_batches());
  const auto f = filter_labels(s);  // threshold 0.8: b1 (0.4) fails, b2 (1.0) passes
  BOOST_TEST(f.kept.size() == 10u);
  BOOST_TEST(f.dropped.size() == 50u);
  BOOST_TEST(f.kept_labels == 20u);
  BOOST_TEST(f.dropped_labels == 100u);
  BOOST_TEST(f.count(DropReason::batch_kappa_below) == 50u);
  BOOST_TEST(f.dropped[0].item == "i0");
  BOOST_TEST(f.dropped[0].batch == "b1");
  BOOST_TEST(std::string(to_string(f.dropped[0].reason)) == "batch kappa below threshold");
  BOOST_REQUIRE(f.batches.size() == 2u);
  BOOST_TEST(f.batches[0].kappa.kappa == 0.4, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(f.kept[0].item == "i50");
  BOOST_TEST(f.kept[0].label == "Yes");
  BOOST_TEST(f.kept[0].votes == 2u);
  BOOST_TEST(f.kept[0].raters == 2u);
  BOOST_TEST(f.kept[0].agreement == 1.0);
  BOOST_TEST(f.kept[9].label == "No");

  // Threshold 0.39: b1 passes too; its split items are ties -> "No" (first in byte order).
  FilterConfig low;
  low.threshold = 0.39;
  const auto g = filter_labels(s, low);
  BOOST_TEST(g.kept.size() == 60u);
  BOOST_TEST(g.kept[20].item == "i20");  // alice Yes, bob No
  BOOST_TEST(g.kept[20].label == "No");
  BOOST_TEST(g.kept[20].votes == 1u);
  BOOST_TEST(g.kept[20].agreement == 0.0);
  low.ties = "drop";
  const auto h = filter_labels(s, low);
  BOOST_TEST(h.kept.size() == 45u);
  BOOST_TEST(h.count(DropReason::tie) == 15u);
}

BOOST_AUTO_TEST_CASE(filter_undefined_batch_kappa) {
  // Batch "same": everyone says "ok" (kappa undefined); batch "mixed": perfect over 2 labels.
  const std::vector<LabelRecord> recs = {{"1", "a", "ok", "same"}, {"1", "b", "ok", "same"},
                                         {"2", "a", "ok", "same"}, {"2", "b", "ok", "same"},
                                         {"3", "a", "ok", "mixed"}, {"3", "b", "ok", "mixed"},
                                         {"4", "a", "bad", "mixed"}, {"4", "b", "bad", "mixed"}};
  const auto s = make_label_set(recs);
  const auto f = filter_labels(s);
  BOOST_TEST(f.count(DropReason::batch_kappa_undefined) == 2u);
  BOOST_TEST(f.kept.size() == 2u);
  FilterConfig keep;
  keep.keep_undefined = true;
  BOOST_TEST(filter_labels(s, keep).kept.size() == 4u);
}

BOOST_AUTO_TEST_CASE(filter_by_item) {
  // Item agreement P_i: 5 raters split 4-1 -> 12/20 = 0.6; 3-2 -> 8/20 = 0.4; 5-0 -> 1.
  // Item "solo" has one label; items may carry different numbers of labels in this mode.
  std::vector<LabelRecord> recs;
  auto add = [&](const std::string& item, const std::vector<std::string>& labels) {
    for (std::size_t i = 0; i < labels.size(); ++i) recs.push_back({item, "r" + std::to_string(i), labels[i], ""});
  };
  add("unanimous", {"b", "b", "b", "b", "b"});
  add("four_one", {"b", "a", "b", "b", "b"});
  add("three_two", {"a", "b", "a", "b", "a"});
  add("solo", {"a"});
  add("pair_tie", {"b", "a"});
  const auto s = make_label_set(recs);
  BOOST_TEST(item_agreement(s, 1) == 0.6);
  BOOST_TEST(item_agreement(s, 2) == 0.4);
  BOOST_TEST(std::isnan(item_agreement(s, 3)));

  FilterConfig cfg;
  cfg.mode = "item";  // default item_agreement 1.0: unanimous only
  const auto f = filter_labels(s, cfg);
  BOOST_REQUIRE(f.kept.size() == 1u);
  BOOST_TEST(f.kept[0].item == "unanimous");
  BOOST_TEST(f.count(DropReason::item_agreement_below) == 3u);
  BOOST_TEST(f.count(DropReason::too_few_raters) == 1u);
  BOOST_TEST(f.batches.empty());

  cfg.item_agreement = 0.6;
  const auto g = filter_labels(s, cfg);
  BOOST_REQUIRE(g.kept.size() == 2u);
  BOOST_TEST(g.kept[1].item == "four_one");
  BOOST_TEST(g.kept[1].label == "b");
  BOOST_TEST(g.kept[1].votes == 4u);
  BOOST_TEST(g.kept[1].raters == 5u);
  cfg.item_agreement = 0.0;
  const auto h = filter_labels(s, cfg);
  BOOST_TEST(h.kept.size() == 4u);
  BOOST_TEST(h.kept[2].label == "a");  // three_two: 3 x a
  BOOST_TEST(h.kept[3].label == "a");  // pair_tie: a before b
}

BOOST_AUTO_TEST_CASE(filter_both) {
  // b2 passes the batch test; in "both" mode its items must also be unanimous (they are),
  // and b1 fails at the batch test before any item test.
  const auto s = make_label_set(two_batches());
  FilterConfig cfg;
  cfg.mode = "both";
  const auto f = filter_labels(s, cfg);
  BOOST_TEST(f.kept.size() == 10u);
  BOOST_TEST(f.count(DropReason::batch_kappa_below) == 50u);
  cfg.threshold = 0.39;
  const auto g = filter_labels(s, cfg);
  BOOST_TEST(g.kept.size() == 45u);  // 35 unanimous in b1 + 10 in b2
  BOOST_TEST(g.count(DropReason::item_agreement_below) == 15u);
}

BOOST_AUTO_TEST_CASE(config_fields_and_defaults) {
  FilterConfig f;
  BOOST_TEST(f.threshold == 0.8);
  BOOST_TEST(f.mode == "batch");
  f.validate();
  BOOST_TEST(std::tuple_size_v<decltype(FilterConfig::fields())> == 6u);
  LabelFileConfig().validate();
  AgreementConfig().validate();
  BOOST_TEST((parse_kappa_weights("quadratic") == KappaWeights::quadratic));
  BOOST_TEST(std::string(to_string(KappaWeights::linear)) == "linear");
}
