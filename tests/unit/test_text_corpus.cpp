#define BOOST_TEST_MODULE text_corpus
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "../support/files.hpp"
#include "tmoe/data/text_corpus.hpp"

namespace fs = std::filesystem;
using tmoe::data::BatchSampler;
using tmoe::test::TempDir;
using Tokens = std::vector<std::int32_t>;

namespace {

std::string as_string(const Tokens& t) {
  std::string s;
  for (std::int32_t v : t) {
    BOOST_REQUIRE(v >= 0 && v < 256);
    s.push_back(static_cast<char>(static_cast<unsigned char>(v)));
  }
  return s;
}

// Records (global index in brackets), with stride 4 for val_fraction 0.25:
//   a.txt: first[0] second[1]; b.txt: alpha[2] (blank, dropped) beta[3] gamma[4];
//   c_plain: one record [5]; d_crlf: one[6] two[7]; e_empty: none.
void write_mixed_folder(const TempDir& t) {
  t.write("b.txt", "alpha\n%\n  \n \t\n%\nbeta line1\nbeta line2\n%\ngamma\n%\n");
  t.write("a.txt", "first\n%\nsecond\n");
  t.write("c_plain", "no separators here\njust lines\n");
  t.write("d_crlf", "one\r\n%\r\ntwo\r\n");
  t.write("e_empty", "");
  t.write("b.txt.dat", "text, but an index file: skipped\n%\n");
  t.write("zz.bin", std::string("abc\0def\n%\nghi\n", 14));
  fs::create_symlink(t.dir / "a.txt", t.dir / "a.txt.u8");
  fs::create_directory(t.dir / "sub");
  std::ofstream(t.dir / "sub" / "inner.txt") << "inner\n%\nrecords\n";
}

}  // namespace

BOOST_AUTO_TEST_CASE(folder_records_and_splits) {
  TempDir t;
  write_mixed_folder(t);
  const auto c = tmoe::data::load_text_corpus(t.dir.string(), 0.25);
  BOOST_TEST(c.files == 5u);  // a.txt b.txt c_plain d_crlf e_empty
  BOOST_TEST(c.records_train == 6u);
  BOOST_TEST(c.records_val == 2u);
  BOOST_TEST(c.source == t.dir.string());
  BOOST_TEST(as_string(c.train) ==
             "first\n%\nsecond\n%\nalpha\n%\ngamma\n%\nno separators here\njust lines\n%\none\n%\n");
  BOOST_TEST(as_string(c.val) == "beta line1\nbeta line2\n%\ntwo\n%\n");
}

BOOST_AUTO_TEST_CASE(stride_follows_val_fraction) {
  TempDir t;
  std::string text;
  for (int i = 0; i < 12; ++i) text += "r" + std::to_string(i) + "\n%\n";
  t.write("only", text);
  auto val_of = [&](double f) { return as_string(tmoe::data::load_text_corpus(t.dir.string(), f).val); };
  BOOST_TEST(val_of(0.5) == "r1\n%\nr3\n%\nr5\n%\nr7\n%\nr9\n%\nr11\n%\n");
  BOOST_TEST(val_of(0.9) == val_of(0.5));  // stride is at least 2
  BOOST_TEST(val_of(0.3) == "r2\n%\nr5\n%\nr8\n%\nr11\n%\n");  // round(3.33) = 3
  BOOST_TEST(val_of(0.1) == "r9\n%\n");
  const auto c = tmoe::data::load_text_corpus(t.dir.string(), 0.25);
  BOOST_TEST(c.records_train == 9u);
  BOOST_TEST(c.records_val == 3u);
  BOOST_TEST(c.train.size() + c.val.size() == text.size());
}

BOOST_AUTO_TEST_CASE(single_file_path) {
  TempDir t;
  write_mixed_folder(t);
  const auto c = tmoe::data::load_text_corpus((t.dir / "b.txt").string(), 0.5);
  BOOST_TEST(c.files == 1u);
  BOOST_TEST(as_string(c.train) == "alpha\n%\ngamma\n%\n");
  BOOST_TEST(as_string(c.val) == "beta line1\nbeta line2\n%\n");
  // A symlink named directly is followed: the user chose it.
  const auto l = tmoe::data::load_text_corpus((t.dir / "a.txt.u8").string(), 0.5);
  BOOST_TEST(as_string(l.train) == "first\n%\n");
}

BOOST_AUTO_TEST_CASE(debian_fortunes) {
  const std::string path = "/usr/share/games/fortunes";
  if (!fs::is_directory(path)) {
    BOOST_TEST_MESSAGE("skipped: " << path << " is absent (install Debian's fortunes package)");
    return;
  }
  const auto c = tmoe::data::load_text_corpus(path, 0.05);
  BOOST_TEST_MESSAGE("fortunes: " << c.files << " files, " << c.records_train << " + " << c.records_val
                                  << " records, " << c.train.size() << " + " << c.val.size() << " bytes");
  BOOST_TEST(c.files > 10u);
  BOOST_TEST(c.records_train > 1000u);
  // Every 20th record is validation.
  BOOST_TEST(c.records_val == (c.records_train + c.records_val) / 20);
  BOOST_TEST(c.val.size() > 10000u);
  BOOST_TEST(std::count(c.train.begin(), c.train.end(), 0) == 0);
  const std::string tail = as_string(Tokens(c.val.end() - 3, c.val.end()));
  BOOST_TEST(tail == "\n%\n");
  const double h = tmoe::data::unigram_entropy(c.train);
  BOOST_TEST_MESSAGE("unigram entropy " << h << " nats/byte");
  BOOST_TEST(std::abs(h - 3.32) < 0.05);
  tmoe::data::require_tokens(c, 1025);
}

BOOST_AUTO_TEST_CASE(unigram_entropy_values) {
  BOOST_TEST(tmoe::data::unigram_entropy({}) == 0.0);
  BOOST_TEST(tmoe::data::unigram_entropy({7, 7, 7}) == 0.0);
  BOOST_TEST(std::abs(tmoe::data::unigram_entropy({1, 2, 1, 2}) - std::log(2.0)) < 1e-12);
  Tokens all(256);
  std::iota(all.begin(), all.end(), 0);
  BOOST_TEST(std::abs(tmoe::data::unigram_entropy(all) - std::log(256.0)) < 1e-12);
  // Token ids beyond a byte count too.
  BOOST_TEST(std::abs(tmoe::data::unigram_entropy({1000, 70000, 3, -1}) - std::log(4.0)) < 1e-12);
}

namespace {
Tokens iota_stream(std::size_t n) {
  Tokens t(n);
  std::iota(t.begin(), t.end(), 0);  // a token's value is its position
  return t;
}
struct Batch {
  Tokens in, tg;
  Batch(std::int64_t b, std::int64_t s) : in(b * s), tg(b * s) {}
};
}  // namespace

BOOST_AUTO_TEST_CASE(train_batches) {
  const Tokens tokens = iota_stream(1000);
  const std::int64_t B = 8, T = 16;
  const BatchSampler s(tokens, 1234, B, T);
  Batch a(B, T), b(B, T), c(B, T);
  s.train_batch(5, a.in.data(), a.tg.data());
  s.train_batch(5, b.in.data(), b.tg.data());
  BOOST_TEST(a.in == b.in);
  BOOST_TEST(a.tg == b.tg);
  s.train_batch(6, c.in.data(), c.tg.data());
  BOOST_TEST(a.in != c.in);
  BatchSampler(tokens, 1235, B, T).train_batch(5, c.in.data(), c.tg.data());
  BOOST_TEST(a.in != c.in);
  // A sampler built again with the same (seed, step) draws the same batch.
  BatchSampler(tokens, 1234, B, T).train_batch(5, c.in.data(), c.tg.data());
  BOOST_TEST(a.in == c.in);

  std::int64_t lo = 1 << 30, hi = -1;
  for (std::int64_t step = 0; step < 500; ++step) {
    s.train_batch(step, a.in.data(), a.tg.data());
    for (std::int64_t r = 0; r < B; ++r) {
      const std::int32_t start = a.in[r * T];
      BOOST_REQUIRE(start == s.window_start(step, r));
      BOOST_REQUIRE(start >= 0);
      BOOST_REQUIRE(start + T <= 999);  // the last target is inside the stream
      for (std::int64_t t = 0; t < T; ++t) {
        BOOST_REQUIRE(a.in[r * T + t] == start + t);  // a contiguous window
        BOOST_REQUIRE(a.tg[r * T + t] == start + t + 1);
        if (t + 1 < T) BOOST_REQUIRE(a.tg[r * T + t] == a.in[r * T + t + 1]);
      }
      lo = std::min<std::int64_t>(lo, start);
      hi = std::max<std::int64_t>(hi, start);
    }
  }
  BOOST_TEST(lo < 10);   // starts cover the whole stream
  BOOST_TEST(hi > 974);  // 983 is the last valid start
}

BOOST_AUTO_TEST_CASE(rows_do_not_depend_on_batch_size) {
  const Tokens tokens = iota_stream(5000);
  const std::int64_t T = 32;
  const BatchSampler s8(tokens, 99, 8, T), s4(tokens, 99, 4, T);
  Batch b8(8, T), b4(4, T), slice(3, T);
  for (std::int64_t step : {0, 1, 77, 4000000}) {
    s8.train_batch(step, b8.in.data(), b8.tg.data());
    s4.train_batch(step, b4.in.data(), b4.tg.data());
    BOOST_TEST(std::equal(b4.in.begin(), b4.in.end(), b8.in.begin()));
    BOOST_TEST(std::equal(b4.tg.begin(), b4.tg.end(), b8.tg.begin()));
    // A rank's slice of the global batch: rows 5..7.
    s8.train_rows(step, 5, 3, slice.in.data(), slice.tg.data());
    BOOST_TEST(std::equal(slice.in.begin(), slice.in.end(), b8.in.begin() + 5 * T));
    BOOST_TEST(std::equal(slice.tg.begin(), slice.tg.end(), b8.tg.begin() + 5 * T));
  }
}

BOOST_AUTO_TEST_CASE(eval_windows_are_fixed) {
  const Tokens tokens = iota_stream(1000);
  const std::int64_t B = 8, T = 16;
  const BatchSampler s(tokens, 1, B, T), other_seed(tokens, 2, B, T);
  const std::int64_t n = s.eval_batches_available();
  BOOST_TEST(n == (999 / T) / B);  // 62 disjoint windows make 7 full batches
  std::vector<std::int32_t> starts;
  Batch a(B, T), b(B, T);
  for (std::int64_t i = 0; i < n; ++i) {
    s.eval_batch(i, a.in.data(), a.tg.data());
    s.eval_batch(i, b.in.data(), b.tg.data());
    BOOST_TEST(a.in == b.in);
    other_seed.eval_batch(i, b.in.data(), b.tg.data());
    BOOST_TEST(a.in == b.in);
    BOOST_TEST(a.tg == b.tg);
    for (std::int64_t r = 0; r < B; ++r) {
      const std::int32_t start = a.in[r * T];
      for (std::int64_t t = 0; t < T; ++t) {
        BOOST_REQUIRE(a.in[r * T + t] == start + t);
        BOOST_REQUIRE(a.tg[r * T + t] == start + t + 1);
      }
      starts.push_back(start);
    }
    // Each batch spans the stream, so a prefix of the batches does too.
    BOOST_TEST(a.in[0] < 1000 / B);
    BOOST_TEST(a.in[(B - 1) * T] > 1000 - 1000 / B - T);
  }
  std::sort(starts.begin(), starts.end());
  BOOST_TEST(starts.front() == 0);
  BOOST_TEST(starts.back() == 999 - T);  // the last window ends at the stream's end
  BOOST_TEST(starts.size() == static_cast<std::size_t>(n * B));
  const std::int32_t spacing = (999 - T) / (n * B - 1);  // 17 (of 17.87)
  BOOST_TEST(spacing >= T);
  for (std::size_t k = 1; k < starts.size(); ++k) {
    const std::int32_t gap = starts[k] - starts[k - 1];
    BOOST_TEST(gap >= spacing);      // disjoint, evenly spaced windows
    BOOST_TEST(gap <= spacing + 1);
  }
}

BOOST_AUTO_TEST_CASE(eval_on_a_short_stream) {
  // Fewer tokens than batch disjoint windows: one batch of overlapping, evenly spaced windows.
  const Tokens tokens = iota_stream(21);
  const BatchSampler s(tokens, 0, 4, 16);
  BOOST_TEST(s.eval_batches_available() == 1);
  Batch a(4, 16);
  s.eval_batch(0, a.in.data(), a.tg.data());
  BOOST_TEST(a.in[0] == 0);
  BOOST_TEST(a.in[3 * 16] == 4);
  BOOST_TEST(a.tg[4 * 16 - 1] == 20);
  // Exactly one window: every row is it.
  const Tokens one = iota_stream(17);
  BatchSampler(one, 0, 2, 16).eval_batch(0, a.in.data(), a.tg.data());
  BOOST_TEST(a.in[0] == 0);
  BOOST_TEST(a.in[16] == 0);
  BOOST_TEST(a.tg[31] == 16);
}
