#define BOOST_TEST_MODULE corpus_errors
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "../support/expect_error.hpp"
#include "../support/files.hpp"
#include "tmoe/data/text_corpus.hpp"

namespace fs = std::filesystem;
// expect_error_at(f, where, fragments): f throws tmoe::Error whose message contains every
// fragment and whose where() is `where` (when given).
using tmoe::test::expect_error_at;
using tmoe::test::TempDir;

BOOST_AUTO_TEST_CASE(missing_path) {
  TempDir t;
  const std::string p = (t.dir / "no_such_corpus").string();
  expect_error_at([&] { tmoe::data::load_text_corpus(p, 0.1); }, p, {"does not exist"});
  expect_error_at([&] { tmoe::data::load_text_corpus("", 0.1); }, "", {"does not exist"});
  // A dangling symlink is as missing as its target.
  fs::create_symlink(t.dir / "gone", t.dir / "dangling");
  expect_error_at([&] { tmoe::data::load_text_corpus((t.dir / "dangling").string(), 0.1); },
                  (t.dir / "dangling").string(), {"does not exist"});
}

BOOST_AUTO_TEST_CASE(empty_folder) {
  TempDir t;
  expect_error_at([&] { tmoe::data::load_text_corpus(t.str(), 0.1); }, t.str(), {"no usable text files"});
}

BOOST_AUTO_TEST_CASE(folder_of_skipped_files_only) {
  TempDir t;
  t.write("fortunes.dat", std::string("\0\0\0\2\0\0\0\x10", 8));
  t.write("image.bin", std::string("GIF89a\0\x01\x02", 9));
  fs::create_symlink(t.dir / "image.bin", t.dir / "fortunes.u8");
  fs::create_directory(t.dir / "sub");
  std::ofstream(t.dir / "sub" / "text") << "text in a subfolder is not read\n";
  expect_error_at([&] { tmoe::data::load_text_corpus(t.str(), 0.1); }, t.str(), {"no usable text files", "1 *.dat", "1 symlinks", "1 subfolders", "1 binary"});
  // Without the binary file the message counts what was skipped.
  fs::remove(t.dir / "image.bin");
  expect_error_at([&] { tmoe::data::load_text_corpus(t.str(), 0.1); }, t.str(),
                  {"no usable text files", "1 *.dat", "1 symlinks", "1 subfolders"});
}

BOOST_AUTO_TEST_CASE(binary_file_named_directly) {
  TempDir t;
  t.write("blob", std::string("text\0more", 9));
  const std::string p = (t.dir / "blob").string();
  expect_error_at([&] { tmoe::data::load_text_corpus(p, 0.1); }, p, {"not a text file", "NUL"});
}

BOOST_AUTO_TEST_CASE(all_records_empty) {
  TempDir t;
  t.write("blank", "%\n   \n%\n\t\n\n%\n%\n");
  t.write("empty", "");
  t.write("newlines", "\n\n\n");
  expect_error_at([&] { tmoe::data::load_text_corpus(t.str(), 0.1); }, t.str(), {"no non-blank records", "3 text file"});
}

BOOST_AUTO_TEST_CASE(bad_val_fraction) {
  TempDir t;
  t.write("a", "x\n%\ny\n");
  for (double f : {0.0, 1.0, -0.5, std::numeric_limits<double>::quiet_NaN()})
    expect_error_at([&] { tmoe::data::load_text_corpus(t.str(), f); }, t.str(), {"val_fraction", "(0, 1)"});
}

BOOST_AUTO_TEST_CASE(split_too_short) {
  TempDir t;
  t.write("a", "a long enough training record, more than sixty-five bytes in all\n%\nshort\n%\n"
               "another training record\n%\n");
  const auto c = tmoe::data::load_text_corpus(t.str(), 0.5);
  BOOST_TEST(c.val.size() == 8u);  // "short\n%\n"
  tmoe::data::require_tokens(c, 8);
  expect_error_at([&] { tmoe::data::require_tokens(c, 65); }, t.str(),
                  {"validation split is too short", "8 tokens", "at least 65 tokens"});
  // One record: the validation split is empty.
  TempDir u;
  u.write("one", "the only record\n");
  const auto d = tmoe::data::load_text_corpus(u.str(), 0.1);
  expect_error_at([&] { tmoe::data::require_tokens(d, 2); }, u.str(), {"validation split", "0 tokens"});
  // Training too short is named as such.
  TempDir v;
  v.write("two", "tiny\n%\na validation record long enough for the window\n");
  const auto e = tmoe::data::load_text_corpus(v.str(), 0.5);
  expect_error_at([&] { tmoe::data::require_tokens(e, 20); }, v.str(),
                  {"training split is too short", "7 tokens", "at least 20"});
}

BOOST_AUTO_TEST_CASE(sampler_misuse) {
  const std::vector<std::int32_t> tokens(16, 1);
  expect_error_at([&] { tmoe::data::BatchSampler(tokens, 0, 2, 16); }, "BatchSampler.tokens", {"16 tokens", "17"});
  expect_error_at([&] { tmoe::data::BatchSampler(tokens, 0, 0, 4); }, "BatchSampler.batch", {"batch is 0"});
  expect_error_at([&] { tmoe::data::BatchSampler(tokens, 0, 2, 0); }, "BatchSampler.seq_len", {"seq_len is 0"});
  const tmoe::data::BatchSampler s(tokens, 0, 2, 4);
  std::vector<std::int32_t> in(8), tg(8);
  expect_error_at([&] { s.eval_batch(s.eval_batches_available(), in.data(), tg.data()); }, "BatchSampler.eval_batch",
                  {"eval batch"});
  expect_error_at([&] { s.train_batch(-1, in.data(), tg.data()); }, "BatchSampler.step", {"step is -1"});
  expect_error_at([&] { s.train_rows(0, 1, 2, in.data(), tg.data()); }, "BatchSampler.train_rows", {"rows [1, 3)"});
}
