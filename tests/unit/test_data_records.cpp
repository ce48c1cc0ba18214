#define BOOST_TEST_MODULE data_records
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "../support/files.hpp"
#include "tmoe/data/clean.hpp"
#include "tmoe/data/records.hpp"

namespace fs = std::filesystem;
using tmoe::data::Record;
using tmoe::data::SourceKind;
using tmoe::data::SourceReport;
using tmoe::test::TempDir;
using Records = std::vector<Record>;

namespace {

std::vector<std::string> ids(const Records& r) {
  std::vector<std::string> v;
  for (const auto& x : r) v.push_back(x.id);
  return v;
}
std::vector<std::string> texts(const Records& r) {
  std::vector<std::string> v;
  for (const auto& x : r) v.push_back(x.text);
  return v;
}
using Strings = std::vector<std::string>;

}  // namespace

BOOST_AUTO_TEST_CASE(spec_parsing) {
  using tmoe::data::parse_source_spec;
  auto t = parse_source_spec("text:/data/books");
  BOOST_TEST((t.kind == SourceKind::kText));
  BOOST_TEST(t.path == "/data/books");
  BOOST_TEST(!t.recursive);
  BOOST_TEST(t.spec == "text:/data/books");

  auto j = parse_source_spec("jsonl:/data/a.jsonl:field=body:id=uid");
  BOOST_TEST((j.kind == SourceKind::kJsonl));
  BOOST_TEST(j.path == "/data/a.jsonl");
  BOOST_TEST(j.field == "body");
  BOOST_TEST(j.id_field == "uid");
  const auto jd = parse_source_spec("jsonl:x.jsonl");
  BOOST_TEST(jd.field == "text");
  BOOST_TEST(jd.id_field == "");

  auto d = parse_source_spec("delimited:/usr/share/games/fortunes:delim=%%:recursive=yes");
  BOOST_TEST((d.kind == SourceKind::kDelimited));
  BOOST_TEST(d.path == "/usr/share/games/fortunes");
  BOOST_TEST(d.delimiter == "%%");
  BOOST_TEST(d.recursive);
  BOOST_TEST(parse_source_spec("delimited:f").delimiter == "%");

  // ':' inside the path: only trailing name=value segments are options.
  auto c = parse_source_spec("text:/tmp/a:b/c:d:recursive=false");
  BOOST_TEST(c.path == "/tmp/a:b/c:d");
  BOOST_TEST(parse_source_spec("jsonl:C:/x.jsonl:field=/meta/text").field == "/meta/text");
  BOOST_TEST(parse_source_spec("jsonl:C:/x.jsonl:field=/meta/text").path == "C:/x.jsonl");
}

BOOST_AUTO_TEST_CASE(delimited_split_cases) {
  // (text, records): separator lines are exactly the delimiter (CRLF allowed); the newline
  // ending a record's last line is not part of it; empty records are kept for the cleaner.
  const std::vector<std::pair<std::string, Strings>> cases = {
      {"a\n%\nb\n", {"a", "b"}},
      {"a\r\n%\r\nb\r\n", {"a", "b"}},
      {"%\nfirst empty\n%\n", {"", "first empty"}},
      {"no separator", {"no separator"}},
      {"x\n%\n%\ny\n%", {"x", "", "y"}},
      {"%%\n%\n% \nz", {"%%", "% \nz"}},
      {"", {}},
  };
  for (const auto& [text, want] : cases) {
    Strings got;
    tmoe::data::records_detail::split_delimited(text, "%", [&](std::string_view r) { got.emplace_back(r); });
    BOOST_TEST(got == want, boost::test_tools::per_element());
  }
  Strings dashes;
  tmoe::data::records_detail::split_delimited("one\n---\ntwo\r\n---\r\nthree\n--\n", "---",
                                      [&](std::string_view r) { dashes.emplace_back(r); });
  BOOST_TEST(dashes == (Strings{"one", "two", "three\n--"}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(text_file_and_folder) {
  TempDir t;
  t.write("b.txt", "bee\n");
  t.write("a.txt", "ay\r\nsecond line\r\n");
  t.write("c", "");
  t.write("blob.bin", std::string("x\0y", 3));
  fs::create_symlink(t.dir / "a.txt", t.dir / "link.txt");
  fs::create_directories(t.dir / "sub" / "deeper");
  t.write("sub/inner.txt", "inner");
  t.write("sub/deeper/z.txt", "deep");
  t.write("sub/0.txt", "zero");

  std::vector<SourceReport> reps;
  const Records one = tmoe::data::ingest(Strings{"text:" + t.file("a.txt")}, &reps);
  BOOST_REQUIRE(one.size() == 1u);
  BOOST_TEST(one[0].text == "ay\r\nsecond line\r\n");  // as read; normalize handles line ends
  BOOST_TEST(one[0].id == t.file("a.txt") + ":0");
  BOOST_TEST(one[0].source == "text:" + t.file("a.txt"));

  const Records flat = tmoe::data::ingest(Strings{"text:" + t.str()}, &reps);
  BOOST_TEST(texts(flat) == (Strings{"ay\r\nsecond line\r\n", "bee\n", ""}), boost::test_tools::per_element());
  BOOST_TEST(ids(flat) == (Strings{t.file("a.txt") + ":0", t.file("b.txt") + ":0", t.file("c") + ":0"}),
             boost::test_tools::per_element());
  BOOST_REQUIRE(reps.size() == 1u);
  BOOST_TEST(reps[0].files == 3u);
  BOOST_TEST(reps[0].records == 3u);
  BOOST_TEST(reps[0].bytes == 21u);
  BOOST_TEST(reps[0].skipped_binary == 1u);
  BOOST_TEST(reps[0].skipped_links == 1u);
  BOOST_TEST(reps[0].skipped_folders == 1u);

  // Recursive: sorted by the path below the folder.
  const Records deep = tmoe::data::ingest(Strings{"text:" + t.str() + ":recursive=true"}, &reps);
  BOOST_TEST(texts(deep) == (Strings{"ay\r\nsecond line\r\n", "bee\n", "", "zero", "deep", "inner"}),
             boost::test_tools::per_element());
  BOOST_TEST(reps[0].skipped_folders == 0u);
  BOOST_TEST(reps[0].files == 6u);
}

BOOST_AUTO_TEST_CASE(jsonl_records) {
  TempDir t;
  const std::string f = t.write("data.jsonl",
                                "{\"text\": \"first\", \"id\": \"doc-1\", \"meta\": {\"body\": \"inner one\"}}\n"
                                "\n"
                                "  \r\n"
                                "{\"id\": 42, \"text\": \"caf\\u00e9 \\ud834\\udd1e\\nnew line\", "
                                "\"meta\": {\"body\": \"inner two\"}}\r\n"
                                "{\"text\": \"\", \"id\": \"doc-3\", \"meta\": {\"body\": \"inner three\"}}");
  std::vector<SourceReport> reps;
  const Records r = tmoe::data::ingest(Strings{"jsonl:" + f}, &reps);
  BOOST_TEST(texts(r) == (Strings{"first", "caf\u00e9 \U0001D11E\nnew line", ""}), boost::test_tools::per_element());
  BOOST_TEST(ids(r) == (Strings{f + ":0", f + ":1", f + ":2"}), boost::test_tools::per_element());
  BOOST_TEST(reps[0].records == 3u);
  BOOST_TEST(reps[0].files == 1u);

  const Records with_ids = tmoe::data::ingest(Strings{"jsonl:" + f + ":id=id"});
  BOOST_TEST(ids(with_ids) == (Strings{"doc-1", "42", "doc-3"}), boost::test_tools::per_element());
  BOOST_TEST(with_ids[0].source == "jsonl:" + f + ":id=id");

  const Records nested = tmoe::data::ingest(Strings{"jsonl:" + f + ":field=/meta/body"});
  BOOST_TEST(texts(nested) == (Strings{"inner one", "inner two", "inner three"}), boost::test_tools::per_element());

  // A folder of JSON Lines files, in name order.
  t.write("more.jsonl", "{\"text\": \"m\"}\n");
  BOOST_TEST(texts(tmoe::data::ingest(Strings{"jsonl:" + t.str()})) ==
                 (Strings{"first", "caf\u00e9 \U0001D11E\nnew line", "", "m"}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(delimited_files_and_folders) {
  TempDir t;
  t.write("jokes", "one\n%\ntwo\nlines\n%\n%\nfour\n");
  t.write("jokes.dat", std::string("\0\0\0\2\0\0\0\x10", 8));
  fs::create_symlink(t.dir / "jokes", t.dir / "jokes.u8");
  t.write("crlf", "alpha\r\n%\r\nbeta\r\n");
  std::vector<SourceReport> reps;
  const Records r = tmoe::data::ingest(Strings{"delimited:" + t.str()}, &reps);
  BOOST_TEST(texts(r) == (Strings{"alpha", "beta", "one", "two\nlines", "", "four"}), boost::test_tools::per_element());
  BOOST_TEST(ids(r)[3] == t.file("jokes") + ":1");
  BOOST_TEST(reps[0].skipped_dat == 1u);
  BOOST_TEST(reps[0].skipped_links == 1u);
  BOOST_TEST(reps[0].files == 2u);

  t.write("dashes.txt", "a\n---\nb\n");
  const Records d = tmoe::data::ingest(Strings{"delimited:" + t.file("dashes.txt") + ":delim=---"});
  BOOST_TEST(texts(d) == (Strings{"a", "b"}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(several_sources_in_order) {
  TempDir t;
  t.write("a.jsonl", "{\"text\": \"json\"}\n");
  t.write("b.txt", "plain");
  t.write("c", "d1\n%\nd2\n");
  std::vector<SourceReport> reps;
  const Strings specs = {"delimited:" + t.file("c"), "text:" + t.file("b.txt"), "jsonl:" + t.file("a.jsonl")};
  const Records r = tmoe::data::ingest(specs, &reps);
  BOOST_TEST(texts(r) == (Strings{"d1", "d2", "plain", "json"}), boost::test_tools::per_element());
  BOOST_TEST(r[0].source == specs[0]);
  BOOST_TEST(r[2].source == specs[1]);
  BOOST_TEST(r[3].source == specs[2]);
  BOOST_REQUIRE(reps.size() == 3u);
  BOOST_TEST(reps[0].records == 2u);
  BOOST_TEST(reps[1].source == specs[1]);
}

// Debian's fortunes: about 15,000 records in some 40 files (skip if fortunes-min/-off are
// not installed). The standard pipeline must run over them in well under the test budget
// and keep a plausible share.
BOOST_AUTO_TEST_CASE(real_fortunes_folder) {
  const std::string dir = "/usr/share/games/fortunes";
  if (!fs::is_directory(dir)) {
    BOOST_TEST_MESSAGE("skipped: " << dir << " is not installed");
    return;
  }
  std::vector<SourceReport> reps;
  const auto t0 = std::chrono::steady_clock::now();
  Records r = tmoe::data::ingest(Strings{"delimited:" + dir}, &reps);
  const std::size_t in = r.size();
  const auto reports = tmoe::data::make_pipeline(tmoe::data::CleanConfig{}).run(r);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  BOOST_TEST_MESSAGE(reps[0].files << " files, " << in << " records, " << s << " s\n"
                                   << tmoe::data::format_report(reports));
  BOOST_TEST(reps[0].skipped_dat == reps[0].files);  // one index per fortune file
  BOOST_TEST(in > 1000u);
  BOOST_TEST(r.size() > in / 2);   // most fortunes are prose of 50 characters or more
  BOOST_TEST(r.size() < in);       // and some are short, duplicated or art
  BOOST_TEST(reports[2].records_dropped > 0u);  // cookie repeats computers
  std::set<std::string> seen;
  for (const auto& x : r) {
    BOOST_TEST_REQUIRE(seen.insert(x.text).second);
    BOOST_TEST_REQUIRE(tmoe::data::utf8::valid(x.text));
    BOOST_TEST_REQUIRE(tmoe::data::utf8::length(x.text) >= 50u);
  }
}
