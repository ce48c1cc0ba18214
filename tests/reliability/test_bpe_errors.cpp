#define BOOST_TEST_MODULE bpe_errors
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "../support/expect_error.hpp"
#include "../support/files.hpp"
#include "tmoe/data/bpe.hpp"

using tmoe::data::BpeMerge;
using tmoe::data::BpeTokenizer;
using tmoe::data::BpeTrainOptions;
using tmoe::test::expect_error;
using tmoe::test::expect_error_at;
using tmoe::test::TempDir;

namespace {

// Lines 1-6 header, 7-9 merges, 10 checksum.
BpeTokenizer small() { return BpeTokenizer::from_merges({{97, 98}, {32, 256}, {256, 256}}, {"<|eor|>"}); }

// body + a correct checksum line: for the cases whose damage the checksum must not hide.
std::string with_checksum(const std::string& body) {
  return body + "xxh64 " + tmoe::data::bpe_detail::hex16(tmoe::xxh64(body)) + "\n";
}

// The file text without its checksum line.
std::string body_of(const std::string& text) {
  return text.substr(0, text.rfind('\n', text.size() - 2) + 1);
}

std::string replace(std::string s, const std::string& from, const std::string& to) {
  const std::size_t at = s.find(from);
  BOOST_REQUIRE(at != std::string::npos);
  return s.replace(at, from.size(), to);
}

BpeTrainOptions options(std::int64_t vocab) {
  BpeTrainOptions o;
  o.vocab_size = vocab;
  return o;
}

}  // namespace

BOOST_AUTO_TEST_CASE(the_good_file_loads) {
  TempDir dir;
  const std::string path = dir.write("tok.bpe", small().to_text());
  BOOST_TEST(BpeTokenizer::load(path).merges() == small().merges());
  BOOST_TEST(BpeTokenizer::load(dir.write("again.bpe", with_checksum(body_of(small().to_text())))).vocab_size() == 260);
}

BOOST_AUTO_TEST_CASE(missing_empty_and_foreign_files) {
  TempDir dir;
  expect_error_at([&] { BpeTokenizer::load(dir.file("nope.bpe")); }, dir.file("nope.bpe"),
                  {"could not open the tokenizer file", "No such file"});
  expect_error_at([&] { BpeTokenizer::load(dir.str()); }, dir.str(), {"not a regular file"});
  const std::string empty = dir.write("empty.bpe", "");
  expect_error_at([&] { BpeTokenizer::load(empty); }, empty, {"the file is empty"});
  const std::string foreign = dir.write("model.safetensors", std::string("\x10\0\0\0\0\0\0\0{}", 10));
  expect_error_at([&] { BpeTokenizer::load(foreign); }, foreign + ":1", {"not a tmoe-bpe tokenizer file"});
}

BOOST_AUTO_TEST_CASE(bad_header_and_version) {
  TempDir dir;
  const std::string text = small().to_text();
  const std::string v2 = dir.write("v2.bpe", with_checksum(body_of(replace(text, "tmoe-bpe 1", "tmoe-bpe 2"))));
  expect_error_at([&] { BpeTokenizer::load(v2); }, v2 + ":1", {"unsupported format version 2", "version 1"});
  const std::string vx = dir.write("vx.bpe", replace(text, "tmoe-bpe 1", "tmoe-bpe one"));
  expect_error_at([&] { BpeTokenizer::load(vx); }, vx + ":1", {"bad format version", "tmoe-bpe one"});
  const std::string field = dir.write("field.bpe", with_checksum(body_of(replace(text, "max_chunk_bytes", "max_chunk"))));
  expect_error_at([&] { BpeTokenizer::load(field); }, field + ":3", {"expected 'max_chunk_bytes <number>'", "max_chunk 256"});
  const std::string range = dir.write("range.bpe", with_checksum(body_of(replace(text, "max_chunk_bytes 256", "max_chunk_bytes 1"))));
  expect_error_at([&] { BpeTokenizer::load(range); }, range + ":3", {"expected 'max_chunk_bytes <number>'", "[2, 65536]"});
  const std::string early = dir.write("early.bpe", with_checksum("tmoe-bpe 1\nvocab_size 256\n"));
  expect_error_at([&] { BpeTokenizer::load(early); }, early + ":3", {"header ends early", "max_chunk_bytes"});
  const std::string special = dir.write("special.bpe", with_checksum(body_of(replace(text, "special <|eor|>", "special <|e or|>"))));
  expect_error_at([&] { BpeTokenizer::load(special); }, special + ":6", {"expected 'special <token>'"});
  const std::string escape = dir.write("escape.bpe", with_checksum(body_of(replace(text, "special <|eor|>", "special <\\q>"))));
  expect_error_at([&] { BpeTokenizer::load(escape); }, escape + ":6", {"expected 'special <token>'", "\\xHH"});
}

BOOST_AUTO_TEST_CASE(truncated_files) {
  TempDir dir;
  const std::string text = small().to_text();
  for (std::size_t keep : {text.size() - 1, text.size() - 5, text.size() / 2, std::size_t{12}}) {
    const std::string path = dir.write("cut.bpe", text.substr(0, keep));
    expect_error_at([&] { BpeTokenizer::load(path); }, path, {"truncated"});
  }
  const std::string no_sum = dir.write("nosum.bpe", body_of(text));
  expect_error_at([&] { BpeTokenizer::load(no_sum); }, no_sum, {"truncated or lacks its checksum", "256 256"});
}

BOOST_AUTO_TEST_CASE(checksum_mismatch) {
  TempDir dir;
  const std::string text = small().to_text();
  const std::string flipped = dir.write("flip.bpe", replace(text, "32 256", "33 256"));
  expect_error_at([&] { BpeTokenizer::load(flipped); }, flipped + ":10", {"checksum mismatch", "corrupt"});
  const std::string crlf = dir.write("crlf.bpe", replace(text, "merges 3\n", "merges 3\r\n"));
  expect_error([&] { BpeTokenizer::load(crlf); }, {"checksum mismatch"});
  const std::string hex = dir.write("hex.bpe", body_of(text) + "xxh64 12345\n");
  expect_error_at([&] { BpeTokenizer::load(hex); }, hex + ":10", {"bad checksum line", "16 hex digits"});
}

BOOST_AUTO_TEST_CASE(merges_must_be_defined_and_unique) {
  TempDir dir;
  const std::string body = body_of(small().to_text());
  const std::string undefined = dir.write("undef.bpe", with_checksum(replace(body, "32 256\n", "32 257\n")));
  expect_error_at([&] { BpeTokenizer::load(undefined); }, undefined + ":8",
                  {"merge 1 (creating id 257) references id 257", "not defined before it", "[0, 257)"});
  const std::string negative = dir.write("neg.bpe", with_checksum(replace(body, "97 98\n", "-1 98\n")));
  expect_error_at([&] { BpeTokenizer::load(negative); }, negative + ":7", {"expected a merge '<left id> <right id>'"});
  const std::string dup = dir.write("dup.bpe", with_checksum(replace(body, "256 256\n", "97 98\n")));
  expect_error_at([&] { BpeTokenizer::load(dup); }, dup + ":9", {"duplicate merge (97, 98)", "merge 0 (" + dup + ":7)"});
  // A token longer than max_chunk_bytes could never apply (and doubling it at every merge
  // would make a tiny file describe a huge token).
  const std::string longer = dir.write(
      "long.bpe", with_checksum(replace(replace(body, "max_chunk_bytes 256", "max_chunk_bytes 3"), "256 256\n",
                                        "256 257\n")));
  expect_error_at([&] { BpeTokenizer::load(longer); }, longer + ":9",
                  {"merge 2 makes a token of 5 bytes, longer than max_chunk_bytes 3"});
  const std::string junk = dir.write("junk.bpe", with_checksum(replace(body, "32 256\n", "32  256\n")));
  expect_error_at([&] { BpeTokenizer::load(junk); }, junk + ":8", {"expected a merge", "32  256"});
}

BOOST_AUTO_TEST_CASE(count_mismatches) {
  TempDir dir;
  const std::string body = body_of(small().to_text());
  const std::string vocab = dir.write("vocab.bpe", with_checksum(replace(body, "vocab_size 260", "vocab_size 261")));
  expect_error_at([&] { BpeTokenizer::load(vocab); }, vocab + ":2", {"count mismatch", "vocab_size 261", "260"});
  const std::string more = dir.write(
      "more.bpe", with_checksum(replace(replace(body, "vocab_size 260", "vocab_size 261"), "merges 3", "merges 4")));
  expect_error_at([&] { BpeTokenizer::load(more); }, more, {"count mismatch", "4 merges", "but 4 lines"});
  const std::string extra = dir.write("extra.bpe", with_checksum(body + "258 97\n"));
  expect_error_at([&] { BpeTokenizer::load(extra); }, extra, {"count mismatch", "but 5 lines"});
  const std::string dup_special = dir.write(
      "dups.bpe",
      with_checksum(replace(replace(replace(body, "vocab_size 260", "vocab_size 261"), "specials 1", "specials 2"),
                            "special <|eor|>\n", "special <|eor|>\nspecial <|eor|>\n")));
  expect_error_at([&] { BpeTokenizer::load(dup_special); }, dup_special + ":7", {"duplicate special token '<|eor|>'"});
}

BOOST_AUTO_TEST_CASE(bad_training_parameters) {
  expect_error_at([] { tmoe::data::train_bpe("some text", options(255)); }, "BpeTrainOptions.vocab_size",
                  {"vocab_size 255 is out of range", "[256, "});
  BpeTrainOptions o = options(257);
  o.special_tokens = {"<a>", "<b>"};
  expect_error_at([&] { tmoe::data::train_bpe("some text", o); }, "BpeTrainOptions.vocab_size",
                  {"vocab_size 257", "need 258"});
  o = options(300);
  o.min_pair_count = 0;
  expect_error_at([&] { tmoe::data::train_bpe("some text", o); }, "BpeTrainOptions.min_pair_count", {"min_pair_count is 0"});
  o = options(300);
  o.max_chunk_bytes = 1;
  expect_error_at([&] { tmoe::data::train_bpe("some text", o); }, "BpeTrainOptions.max_chunk_bytes", {"max_chunk_bytes is 1"});
  o = options(300);
  o.special_tokens = {"<a>", ""};
  expect_error_at([&] { tmoe::data::train_bpe("some text", o); }, "BpeTrainOptions.special_tokens[1]", {"special token is empty"});
  o.special_tokens = {"<a>", "<a>"};
  expect_error_at([&] { tmoe::data::train_bpe("some text", o); }, "BpeTrainOptions.special_tokens[1]", {"duplicate special token"});
  expect_error_at([] { tmoe::data::train_bpe("", options(300)); }, "BpeTrainer::train", {"the corpus is empty"});
  expect_error_at([] { tmoe::data::BpeTrainer(options(300)).train(); }, "BpeTrainer::train", {"the corpus is empty"});
  // A corpus with no repeated pair is not an error: training stops with fewer merges.
  BOOST_TEST(tmoe::data::train_bpe("abc", options(300)).num_merges() == 0);
}

BOOST_AUTO_TEST_CASE(bad_merges_ids_and_buffers) {
  expect_error_at([] { BpeTokenizer::from_merges({{97, 98}, {256, 300}}); }, "BpeTokenizer::from_merges, merge 1",
                  {"references id 300", "not defined before it"});
  expect_error_at([] { BpeTokenizer::from_merges({{97, 98}, {97, 98}}); }, "BpeTokenizer::from_merges, merge 1",
                  {"duplicate merge (97, 98)", "merge 0 (BpeTokenizer::from_merges, merge 0)"});
  std::vector<BpeMerge> doubling{{97, 97}};
  for (std::int32_t r = 0; r < 12; ++r) doubling.push_back({256 + r, 256 + r});
  expect_error_at([&] { BpeTokenizer::from_merges(doubling); }, "BpeTokenizer::from_merges, merge 8",
                  {"makes a token of 512 bytes, longer than max_chunk_bytes 256"});
  expect_error_at([] { BpeTokenizer::from_merges({}, {}, 1); }, "BpeTokenizer::from_merges", {"max_chunk_bytes is 1"});
  const BpeTokenizer t = small();
  expect_error_at([&] { (void)t.decode(std::vector<std::int32_t>{97, 260}); }, "BpeTokenizer::decode",
                  {"token id 260 at position 1 is out of range", "[0, 260)"});
  expect_error([&] { (void)t.decode(std::vector<std::int32_t>{-1}); }, {"token id -1"});
  expect_error_at([&] { (void)t.token_bytes(999); }, "BpeTokenizer::token_bytes", {"token id 999 is out of range"});
  expect_error_at([&] { (void)t.special_id("<|pad|>"); }, "BpeTokenizer::special_id", {"no special token '<|pad|>'"});
  std::vector<std::int32_t> buf(3);
  expect_error_at([&] { (void)t.encode_into("abcd", buf); }, "BpeTokenizer::encode_into",
                  {"output buffer holds 3 ids for a text of 4 bytes"});
}

BOOST_AUTO_TEST_CASE(saving_into_a_missing_folder_fails_cleanly) {
  TempDir dir;
  const std::string path = dir.file("no/such/dir/tok.bpe");
  expect_error([&] { small().save(path); }, {"cannot create the file", ".tok.bpe.tmp-"});
  BOOST_TEST(!std::filesystem::exists(path));
}
