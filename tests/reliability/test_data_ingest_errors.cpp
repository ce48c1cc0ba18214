#define BOOST_TEST_MODULE data_ingest_errors
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include "../support/expect_error.hpp"
#include "../support/files.hpp"
#include "tmoe/data/augment.hpp"
#include "tmoe/data/clean.hpp"
#include "tmoe/data/records.hpp"

namespace fs = std::filesystem;
// expect_error_at(f, where, fragments): f throws tmoe::Error whose message contains every
// fragment and whose where() is `where` (when given).
using tmoe::test::expect_error;
using tmoe::test::expect_error_at;
using tmoe::test::TempDir;
using Strings = std::vector<std::string>;

namespace {

void ingest(const std::string& spec) { tmoe::data::ingest(Strings{spec}); }

}  // namespace

BOOST_AUTO_TEST_CASE(bad_specs) {
  using tmoe::data::parse_source_spec;
  auto spec_error = [](const std::string& spec, const Strings& fragments) {
    expect_error_at([&] { parse_source_spec(spec); }, "source spec '" + spec + "'", fragments);
  };
  spec_error("/usr/share/games/fortunes", {"has no kind", "text:PATH", "jsonl:PATH", "delimited:PATH"});
  spec_error("csv:data.csv", {"unknown source kind 'csv'", "one of text, jsonl, delimited"});
  spec_error("text:", {"has no path"});
  spec_error("jsonl::field=body", {"has no path"});
  spec_error("jsonl:a.jsonl:feild=body", {"unknown option 'feild' for a jsonl source", "field, id, recursive"});
  spec_error("text:notes.txt:delim=%", {"unknown option 'delim' for a text source", "recursive"});
  spec_error("delimited:f:field=x", {"unknown option 'field' for a delimited source", "delim, recursive"});
  spec_error("jsonl:a.jsonl:field=a:field=b", {"option 'field' is given twice"});
  spec_error("text:dir:recursive=maybe", {"recursive='maybe' is not a bool", "recursive=true"});
  spec_error("jsonl:a.jsonl:field=", {"option 'field' has an empty value"});
  spec_error("delimited:f:delim=", {"option 'delim' has an empty value"});
  expect_error([] { tmoe::data::ingest(Strings{}); }, {"no sources given"});
  // ingest parses every spec before reading any file.
  expect_error([] { tmoe::data::ingest(Strings{"text:/nonexistent/tmoe", "bad"}); },
               {"source spec 'bad'", "has no kind"});
}

BOOST_AUTO_TEST_CASE(missing_paths) {
  TempDir t;
  const std::string p = t.file("no_such_file.jsonl");
  expect_error_at([&] { ingest("jsonl:" + p); }, p, {"source path does not exist", "jsonl:" + p});
  expect_error_at([&] { ingest("text:" + t.file("gone") + ":recursive=true"); }, t.file("gone"), {"does not exist"});
  fs::create_symlink(t.dir / "gone", t.dir / "dangling");
  expect_error_at([&] { ingest("delimited:" + t.file("dangling")); }, t.file("dangling"), {"does not exist"});
  ::mkfifo(t.file("fifo").c_str(), 0600);
  expect_error_at([&] { ingest("text:" + t.file("fifo")); }, t.file("fifo"), {"neither a regular file nor a folder"});
}

BOOST_AUTO_TEST_CASE(unusable_files_and_folders) {
  TempDir t;
  t.write("blob", std::string("text\0more", 9));
  expect_error_at([&] { ingest("text:" + t.file("blob")); }, t.file("blob"), {"not a text file", "NUL"});
  fs::create_directory(t.dir / "empty");
  expect_error_at([&] { ingest("text:" + t.file("empty")); }, t.file("empty"), {"folder has no usable files"});
  fs::create_directory(t.dir / "fortunes");
  t.write("fortunes/zippy.dat", std::string("\0\0\0\2", 4));
  t.write("fortunes/pic.bin", std::string("GIF\0", 4));
  fs::create_symlink(t.dir / "blob", t.dir / "fortunes" / "zippy.u8");
  fs::create_directory(t.dir / "fortunes" / "off");
  expect_error_at([&] { ingest("delimited:" + t.file("fortunes")); }, t.file("fortunes"),
                  {"no usable files", "1 *.dat", "1 symlinks", "1 subfolders", "1 binary"});
  if (::geteuid() != 0) {  // root reads files whatever their mode
    const std::string locked = t.write("locked.txt", "secret");
    fs::permissions(locked, fs::perms::none);
    expect_error_at([&] { ingest("text:" + locked); }, locked, {"cannot be opened"});
  } else {
    BOOST_TEST_MESSAGE("unreadable-file case skipped: running as root");
  }
}

BOOST_AUTO_TEST_CASE(malformed_json_lines) {
  TempDir t;
  const std::string f = t.write("bad.jsonl", "{\"text\": \"fine\"}\n\n{\"text\": \"unterminated}\n{\"text\": \"x\"}\n");
  expect_error_at([&] { ingest("jsonl:" + f); }, f + ":3", {"line 3 is not valid JSON", "parse error"});

  const std::string arr = t.write("arr.jsonl", "{\"text\": \"ok\"}\n[1, 2]\n");
  expect_error_at([&] { ingest("jsonl:" + arr); }, arr + ":2", {"line 2 is an array, not an object"});

  const std::string two = t.write("two.jsonl", "{\"text\": \"a\"} {\"text\": \"b\"}\n");
  expect_error_at([&] { ingest("jsonl:" + two); }, two + ":1", {"line 1 is not valid JSON"});

  // JSON text must be UTF-8: a raw invalid byte inside a string is a parse error.
  const std::string bytes = t.write("bytes.jsonl", "{\"text\": \"ok\"}\r\n{\"text\": \"caf\xE9\"}\r\n");
  expect_error_at([&] { ingest("jsonl:" + bytes); }, bytes + ":2", {"line 2 is not valid JSON"});

  // In a folder, the error names the file it is in.
  fs::create_directory(t.dir / "shards");
  t.write("shards/00.jsonl", "{\"text\": \"a\"}\n");
  const std::string bad = t.write("shards/01.jsonl", "{\"text\": \"b\"}\n{\"text\" \"c\"}\n");
  expect_error_at([&] { ingest("jsonl:" + t.file("shards")); }, bad + ":2", {"line 2 is not valid JSON"});
}

BOOST_AUTO_TEST_CASE(json_fields) {
  TempDir t;
  const std::string f = t.write("d.jsonl", "{\"text\": \"a\", \"id\": \"x\"}\n{\"body\": \"b\", \"id\": 3}\n");
  expect_error_at([&] { ingest("jsonl:" + f); }, f + ":2", {"line 2 has no field \"text\"", ":field=NAME"});
  expect_error_at([&] { ingest("jsonl:" + f + ":field=body"); }, f + ":1", {"line 1 has no field \"body\""});

  const std::string n = t.write("n.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": 42}\n");
  expect_error_at([&] { ingest("jsonl:" + n); }, n + ":3", {"field \"text\" is a number, not a string"});
  const std::string nul = t.write("nul.jsonl", "{\"text\": null}\n");
  expect_error_at([&] { ingest("jsonl:" + nul); }, nul + ":1", {"field \"text\" is null, not a string"});
  const std::string obj = t.write("obj.jsonl", "{\"text\": {\"en\": \"hi\"}}\n");
  expect_error_at([&] { ingest("jsonl:" + obj); }, obj + ":1", {"field \"text\" is an object, not a string"});

  const std::string ids = t.write("ids.jsonl", "{\"text\": \"a\", \"uid\": \"u1\"}\n{\"text\": \"b\"}\n"
                                               "{\"text\": \"c\", \"uid\": 1.5}\n");
  expect_error_at([&] { ingest("jsonl:" + ids + ":id=uid"); }, ids + ":2", {"line 2 has no id field \"uid\""});
  t.write("ids.jsonl", "{\"text\": \"a\", \"uid\": \"u1\"}\n{\"text\": \"c\", \"uid\": 1.5}\n");
  expect_error_at([&] { ingest("jsonl:" + ids + ":id=uid"); }, ids + ":2",
                  {"id field \"uid\" is a number", "a string or an integer"});

  const std::string nested = t.write("nested.jsonl", "{\"meta\": {\"x\": 1}}\n");
  expect_error_at([&] { ingest("jsonl:" + nested + ":field=/meta/text"); }, nested + ":1",
                  {"has no field \"/meta/text\""});
  expect_error([&] { ingest("jsonl:" + nested + ":field=/meta~2"); }, {"not a valid JSON pointer"});
}

BOOST_AUTO_TEST_CASE(bad_clean_config) {
  using tmoe::data::CleanConfig;
  auto bad = [](auto set, const std::string& where, const Strings& fragments) {
    CleanConfig c;
    set(c);
    expect_error_at([&] { c.validate(); }, where, fragments);
    expect_error_at([&] { tmoe::data::make_pipeline(c); }, where, fragments);
  };
  bad([](CleanConfig& c) { c.utf8 = "drop"; }, "clean.utf8", {"utf8 is 'drop'", "replace or reject"});
  bad([](CleanConfig& c) { c.min_chars = -1; }, "clean.min_chars", {"min_chars is -1", ">= 0"});
  bad([](CleanConfig& c) { c.max_blank_lines = -2; }, "clean.max_blank_lines", {"max_blank_lines is -2"});
  bad([](CleanConfig& c) { c.max_chars = 10; }, "clean.max_chars", {"max_chars 10 is below min_chars 50"});
  bad([](CleanConfig& c) { c.max_line_chars = -1; }, "clean.max_line_chars", {"max_line_chars is -1"});
  bad([](CleanConfig& c) { c.min_words = -3; }, "clean.min_words", {"min_words is -3"});
  bad([](CleanConfig& c) { c.min_letter_share = 1.5; }, "clean.min_letter_share", {"1.5", "a share in [0, 1]"});
  bad([](CleanConfig& c) { c.max_symbol_share = std::nan(""); }, "clean.max_symbol_share", {"a share in [0, 1]"});
  bad([](CleanConfig& c) { c.max_digit_share = -0.1; }, "clean.max_digit_share", {"a share in [0, 1]"});
  bad([](CleanConfig& c) { c.max_dup_line_share = 2; }, "clean.max_dup_line_share", {"a share in [0, 1]"});
  bad([](CleanConfig& c) { c.near_threshold = 0; }, "clean.near_threshold", {"near_threshold is 0", "(0, 1]"});
  bad([](CleanConfig& c) { c.shingle = "line"; }, "clean.shingle", {"shingle is 'line'", "char or word"});
  bad([](CleanConfig& c) { c.shingle_size = 0; }, "clean.shingle_size", {"shingle_size is 0", "[1, 64]"});
  bad([](CleanConfig& c) { c.minhash_bands = 0; }, "clean.minhash_bands/minhash_rows", {"0 x 5"});
  bad([](CleanConfig& c) { c.minhash_rows = 100; }, "clean.minhash_bands/minhash_rows",
      {"20 x 100", "bands * rows <= 1024"});
  bad([](CleanConfig& c) { c.minhash_rows = std::numeric_limits<std::int64_t>::max(); },
      "clean.minhash_bands/minhash_rows", {"bands * rows <= 1024"});
  // Stages check the config they are given, too.
  CleanConfig c;
  c.utf8 = "ignore";
  expect_error_at([&] { tmoe::data::Normalize n(c); }, "clean.utf8", {"utf8 is 'ignore'"});
  c = CleanConfig{};
  c.near_threshold = 1.2;
  expect_error_at([&] { tmoe::data::NearDedup n(c); }, "clean.near_threshold", {"1.2"});
}

BOOST_AUTO_TEST_CASE(bad_augment_config) {
  using tmoe::data::AugmentConfig;
  auto bad = [](auto set, const std::string& where, const Strings& fragments) {
    AugmentConfig c;
    set(c);
    expect_error_at([&] { c.validate(); }, where, fragments);
    expect_error_at([&] { tmoe::data::Augment a(c); }, where, fragments);
  };
  bad([](AugmentConfig& c) { c.char_delete_rate = -0.1; }, "augment.char_delete_rate", {"a probability in [0, 1]"});
  bad([](AugmentConfig& c) { c.word_swap_rate = 1.1; }, "augment.word_swap_rate", {"word_swap_rate is 1.1"});
  bad([](AugmentConfig& c) { c.char_insert_rate = std::nan(""); }, "augment.char_insert_rate", {"[0, 1]"});
  bad([](AugmentConfig& c) { c.char_substitute_rate = c.char_swap_rate = 0.6; }, "augment.char_*_rate",
      {"character rates sum to 1.2", "<= 1"});
  bad([](AugmentConfig& c) { c.word_drop_rate = c.word_duplicate_rate = 0.7; }, "augment.word_*_rate",
      {"word rates sum to 1.4"});
  bad([](AugmentConfig& c) { c.mode = "both"; }, "augment.mode", {"mode is 'both'", "append or replace"});
  bad([](AugmentConfig& c) { c.copies = 0; }, "augment.copies", {"copies is 0", "[1, 1000]"});
  bad([](AugmentConfig& c) { c.mode = "replace", c.copies = 2; }, "augment.copies", {"in replace mode"});
  bad([](AugmentConfig& c) { c.alphabet = "ab\xC3"; }, "augment.alphabet", {"invalid UTF-8 at byte 2"});
}
