#define BOOST_TEST_MODULE data_annotation_errors
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "../support/expect_error.hpp"
#include "../support/files.hpp"
#include "tmoe/data/annotation.hpp"

using namespace tmoe::data;
// expect_error_at(f, where, fragments): f throws tmoe::Error whose message contains every
// fragment and whose where() is `where` (when given).
using tmoe::test::expect_error;
using tmoe::test::expect_error_at;
using tmoe::test::TempDir;
using Strings = std::vector<std::string>;

namespace {

const std::string kGood = R"({"item": "r1", "annotator": "alice", "label": "good", "batch": "b1"})";

// A file whose line 3 is `bad` after two good lines; returns the path.
std::string with_bad_line_3(const TempDir& t, const std::string& bad) {
  return t.write("labels.jsonl",
                 kGood + "\n" + R"({"item": "r1", "annotator": "bob", "label": "bad", "batch": "b1"})" + "\n" + bad +
                     "\n" + kGood + "\n");
}

void expect_line_3(const std::string& bad, const std::vector<std::string>& fragments) {
  TempDir t;
  const std::string p = with_bad_line_3(t, bad);
  BOOST_TEST_CONTEXT("line: " << bad) { expect_error_at([&] { read_label_file(p); }, p + ":3", fragments); }
}

}  // namespace

BOOST_AUTO_TEST_CASE(unreadable_or_empty_files) {
  TempDir t;
  const std::string missing = t.file("none.jsonl");
  expect_error_at([&] { read_label_file(missing); }, missing, {"cannot be opened"});
  const std::string empty = t.write("empty.jsonl", "");
  expect_error_at([&] { read_label_file(empty); }, empty, {"no labels"});
  const std::string blank = t.write("blank.jsonl", "\n  \n\t\r\n");
  expect_error_at([&] { read_label_file(blank); }, blank, {"no labels"});
  expect_error_at([&] { read_label_file(t.str()); }, t.str(), {"is a folder"});
}

BOOST_AUTO_TEST_CASE(malformed_lines_name_file_and_line) {
  expect_line_3(R"({"item": "r2", "annotator": "bob", "label": "ok")", {"not valid JSON", "one JSON object per line"});
  expect_line_3("not json", {"not valid JSON"});
  expect_line_3(R"({"item": "r2"} {"x": 1})", {"not valid JSON"});
  expect_line_3(R"(["r2", "bob", "ok"])", {"line is a JSON array", "a JSON object"});
  expect_line_3(R"("r2")", {"line is a JSON string"});
}

BOOST_AUTO_TEST_CASE(missing_and_mistyped_fields) {
  expect_line_3(R"({"item": "r2", "annotator": "bob"})", {"no \"label\" field", "string or an integer"});
  expect_line_3(R"({"annotator": "bob", "label": "ok"})", {"no \"item\" field"});
  expect_line_3(R"({"item": "r2", "label": "ok"})", {"no \"annotator\" field"});
  expect_line_3(R"({"item": "r2", "annotator": "bob", "label": 1.5})", {"\"label\" is a JSON non-integer number: 1.5"});
  expect_line_3(R"({"item": "r2", "annotator": "bob", "label": true})", {"\"label\" is a JSON boolean"});
  expect_line_3(R"({"item": "r2", "annotator": "bob", "label": null})", {"\"label\" is a JSON null"});
  expect_line_3(R"({"item": "r2", "annotator": "bob", "label": ["a"]})", {"\"label\" is a JSON array"});
  expect_line_3(R"({"item": "r2", "annotator": "bob", "label": ""})", {"\"label\" is an empty string"});
  expect_line_3(R"({"item": "", "annotator": "bob", "label": "ok"})", {"\"item\" is an empty string"});
  expect_line_3(R"({"item": {"id": 2}, "annotator": "bob", "label": "ok"})", {"\"item\" is a JSON object"});
  expect_line_3(R"({"item": "r2", "annotator": false, "label": "ok"})", {"\"annotator\" is a JSON boolean"});
  expect_line_3(R"({"item": "r2", "annotator": "bob", "label": "ok", "batch": 2.5})", {"\"batch\" is a JSON"});
  expect_line_3(R"({"item": "r2", "annotator": "bob", "label": "ok", "label": "bad"})",
                {"field \"label\" appears twice"});
}

BOOST_AUTO_TEST_CASE(custom_field_names_in_messages) {
  TempDir t;
  const std::string p = t.write("c.jsonl", R"({"doc": "d1", "who": "u1", "label": "x"})" "\n");
  LabelFileConfig cfg;
  cfg.item_field = "doc";
  cfg.annotator_field = "who";
  cfg.label_field = "y";
  expect_error_at([&] { read_label_file(p, cfg); }, p + ":1", {"no \"y\" field"});
  cfg.label_field = "";
  expect_error_at([&] { read_label_file(p, cfg); }, "labels.label_field", {"label_field is empty"});
  cfg.label_field = "doc";
  expect_error_at([&] { read_label_file(p, cfg); }, "labels.label_field", {"both 'doc'"});
  cfg.label_field = "label";
  cfg.batch_field = "who";
  expect_error_at([&] { read_label_file(p, cfg); }, "labels.batch_field", {"both 'who'"});
}

BOOST_AUTO_TEST_CASE(conflicting_labels) {
  // alice labels r1 "good" on line 1, then "bad" on line 3: both lines are named.
  expect_line_3(R"({"item": "r1", "annotator": "alice", "label": "bad", "batch": "b1"})",
                {"annotator 'alice' labels item 'r1' 'bad' here but 'good' at line 1"});
  // The same label again is a harmless duplicate.
  TempDir t;
  const auto s = read_label_file(with_bad_line_3(t, kGood));
  BOOST_TEST(s.duplicates == 2u);
  BOOST_TEST(s.labels() == 2u);
  // One item in two batches.
  expect_line_3(R"({"item": "r1", "annotator": "carol", "label": "good", "batch": "b2"})",
                {"item 'r1' is in batch 'b2' here but in batch 'b1' at line 1"});
  expect_line_3(R"({"item": "r1", "annotator": "carol", "label": "good"})", {"batch '' here"});
  // In memory, records are numbered from 1.
  const std::vector<LabelRecord> recs = {{"r1", "a", "x", ""}, {"r1", "a", "y", ""}};
  expect_error_at([&] { make_label_set(recs, "mem"); }, "mem: record 2", {"'y' here but 'x' at record 1"});
  const std::vector<LabelRecord> empty_label = {{"r1", "a", "", ""}};
  expect_error_at([&] { make_label_set(empty_label); }, "labels: record 1", {"label is empty"});
  expect_error([&] { make_label_set(std::vector<LabelRecord>{}); }, {"no labels"});
}

BOOST_AUTO_TEST_CASE(unequal_raters) {
  // r1 has two labels, r2 one: the overall kappa needs the same count everywhere.
  TempDir t;
  const std::string p = t.write("u.jsonl", R"({"item": "r1", "annotator": "a", "label": "x", "batch": "b1"}
{"item": "r1", "annotator": "b", "label": "y", "batch": "b1"}
{"item": "r2", "annotator": "a", "label": "x", "batch": "b2"}
{"item": "r3", "annotator": "a", "label": "x", "batch": "b2"}
{"item": "r3", "annotator": "b", "label": "x", "batch": "b2"}
{"item": "r3", "annotator": "c", "label": "x", "batch": "b2"}
)");
  const auto s = read_label_file(p);
  expect_error_at([&] { agreement_report(s); }, p, {"item 'r2' has 1 label(s)", "at least 2 labels"});
  expect_error_at([&] { fleiss_kappa(s); }, p, {"item 'r2' has 1 label(s)"});
  expect_error_at([&] { filter_labels(s); }, p + ": batch 'b2'", {"item 'r2' has 1 label(s)"});
  const auto s23 = make_label_set(std::vector<LabelRecord>{
      {"r1", "a", "x", ""}, {"r1", "b", "x", ""}, {"r2", "a", "x", ""}, {"r2", "b", "y", ""}, {"r2", "c", "x", ""}});
  expect_error_at([&] { agreement_report(s23); }, "labels",
                  {"item 'r2' has 3 label(s) but item 'r1' has 2", "the same number of labels"});
  expect_error_at([&] { filter_labels(s23); }, "labels", {"item 'r2' has 3 label(s) but item 'r1' has 2"});
  // Item mode does not need equal counts: r2 is dropped for having one label.
  FilterConfig item;
  item.mode = "item";
  const auto f = filter_labels(s, item);
  BOOST_TEST(f.count(DropReason::too_few_raters) == 1u);
  BOOST_TEST(f.kept.size() == 1u);  // r3 (unanimous); r1 split

  // Fleiss tables.
  expect_error([&] { fleiss_kappa({{2, 0}, {1, 2}}); }, {"item 1 has 3 ratings but item 0 has 2", "same number"});
  expect_error([&] { fleiss_kappa({{1, 0}, {0, 1}}); }, {"1 rating(s)", "at least 2 raters"});
  expect_error([&] { fleiss_kappa({{2, 0}, {3}}); }, {"item 1 has 1 categories"});
  expect_error([&] { fleiss_kappa({{3, -1}, {2, 0}}); }, {"count -1"});
  expect_error([&] { fleiss_kappa(std::vector<std::vector<std::int64_t>>{}); }, {"no items"});
  expect_error([&] { fleiss_kappa({{}, {}}); }, {"no categories"});
  expect_error([&] { fleiss_kappa(std::vector<std::int64_t>{1, 1, 1}, 2, 2); }, {"3 cells for 2 items x 2 categories"});
}

BOOST_AUTO_TEST_CASE(bad_cohen_input) {
  expect_error_at([&] { cohen_kappa(Strings{"a", "b"}, Strings{"a"}); }, "cohen_kappa",
                  {"annotator A has 2 labels and annotator B 1"});
  expect_error_at([&] { cohen_kappa(Strings{}, Strings{}); }, "cohen_kappa", {"no items", "at least 1 item"});
  expect_error([&] { cohen_kappa(Strings{"a"}, Strings{"c"}, KappaWeights::none, Strings{"a", "b"}); },
               {"label 'c' of item 0 is not in the label order"});
  expect_error([&] { cohen_kappa(Strings{"a"}, Strings{"a"}, KappaWeights::none, Strings{"a", "a"}); },
               {"'a' appears twice"});
  expect_error([&] { cohen_kappa_table(std::vector<double>{1, 2, 3}, 2); }, {"3 cells for 2 categories"});
  expect_error([&] { cohen_kappa_table(std::vector<double>{1, -2, 3, 4}, 2); }, {"cell (0, 1) is -2"});
  expect_error([&] { cohen_kappa_table(std::vector<double>{1, NAN, 3, 4}, 2); }, {"cell (0, 1)"});
  expect_error([&] { cohen_kappa_table(std::vector<double>{0, 0, 0, 0}, 2); }, {"no items"});
  expect_error([&] { cohen_kappa_table({}, 0); }, {"no categories"});
  const auto s = make_label_set(std::vector<LabelRecord>{{"1", "a", "x", ""}, {"1", "b", "x", ""}, {"2", "c", "y", ""}});
  expect_error_at([&] { cohen_kappa(s, "a", "zed"); }, "labels", {"no annotator 'zed'"});
  expect_error([&] { cohen_kappa(s, "a", "c"); }, {"'a' and 'c' share no item"});
  expect_error([&] { cohen_kappa(s, "a", "a"); }, {"share no item"});
}

BOOST_AUTO_TEST_CASE(bad_filter_and_report_config) {
  const auto s = make_label_set(std::vector<LabelRecord>{{"1", "a", "x", ""}, {"1", "b", "x", ""}});
  auto bad = [&](auto change, const std::string& where, const std::vector<std::string>& frag) {
    FilterConfig c;
    change(c);
    expect_error_at([&] { c.validate(); }, where, frag);
    expect_error_at([&] { filter_labels(s, c); }, where, frag);
  };
  bad([](FilterConfig& c) { c.threshold = 1.5; }, "filter.threshold", {"threshold is 1.5", "[-1, 1]"});
  bad([](FilterConfig& c) { c.threshold = -1.01; }, "filter.threshold", {"threshold is -1.01"});
  bad([](FilterConfig& c) { c.threshold = std::nan(""); }, "filter.threshold", {"threshold is nan"});
  bad([](FilterConfig& c) { c.threshold = std::numeric_limits<double>::infinity(); }, "filter.threshold", {"inf"});
  bad([](FilterConfig& c) { c.item_agreement = 1.01; }, "filter.item_agreement", {"[0, 1]"});
  bad([](FilterConfig& c) { c.item_agreement = -0.1; }, "filter.item_agreement", {"-0.1"});
  bad([](FilterConfig& c) { c.mode = "items"; }, "filter.mode", {"'items'", "batch, item or both"});
  bad([](FilterConfig& c) { c.ties = "random"; }, "filter.ties", {"'random'", "first or drop"});
  bad([](FilterConfig& c) { c.weights = "cubic"; }, "filter.weights", {"'cubic'", "none, linear or quadratic"});
  AgreementConfig a;
  a.weights = "Linear";
  expect_error_at([&] { agreement_report(s, a); }, "agreement.weights", {"'Linear'"});
  // The edges are valid.
  FilterConfig edge;
  edge.threshold = -1;
  edge.item_agreement = 0;
  edge.validate();
  edge.threshold = 1;
  edge.item_agreement = 1;
  edge.validate();
}
