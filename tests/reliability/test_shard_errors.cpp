// Bad token shards and datasets: every corruption is a tmoe::Error naming the file and
// the problem, never a crash or a silently wrong token.
#define BOOST_TEST_MODULE shard_errors
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <filesystem>
#include <vector>

#include "../support/expect_error.hpp"
#include "../support/files.hpp"
#include "tmoe/data/shards.hpp"

using tmoe::test::Bytes;
using tmoe::test::expect_error;
using tmoe::test::read_bytes;
using tmoe::test::TempDir;
using tmoe::test::write_bytes;
namespace data = tmoe::data;

namespace {
std::string good_shard(const TempDir& tmp, const std::string& name, std::uint64_t vocab = 1000) {
  const std::string path = tmp.file(name);
  data::ShardWriter w(path, vocab, 0);
  std::vector<std::int32_t> t(100);
  for (int i = 0; i < 100; ++i) t[i] = i * 7 % 1000;
  w.append(t);
  w.commit();
  return path;
}
// Rewrites the header checksum after editing a field, so the field check itself is hit.
void reseal(Bytes& b) {
  const std::uint64_t h = tmoe::xxh64(b.data(), 56);
  for (int i = 0; i < 8; ++i) b[56 + i] = static_cast<unsigned char>(h >> (8 * i));
}
void put64(Bytes& b, std::size_t at, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) b[at + i] = static_cast<unsigned char>(v >> (8 * i));
}
}  // namespace

BOOST_AUTO_TEST_CASE(truncation_at_every_offset_is_detected) {
  TempDir tmp;
  const std::string path = good_shard(tmp, "a.tok");
  const Bytes full = read_bytes(path);
  const std::string cut = tmp.file("cut.tok");
  for (std::size_t n = 0; n < full.size(); ++n) {
    write_bytes(cut, Bytes(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n)));
    expect_error([&] { data::TokenShard::open(cut); },
                 {cut, n < 64 ? "shorter than the 64-byte shard header" : "truncated or padded"});
  }
  Bytes padded = full;
  padded.push_back(0);
  write_bytes(cut, padded);
  expect_error([&] { data::TokenShard::open(cut); }, {"truncated or padded"});
}

BOOST_AUTO_TEST_CASE(every_flipped_bit_is_detected) {
  TempDir tmp;
  const std::string path = good_shard(tmp, "a.tok");
  const Bytes full = read_bytes(path);
  const std::string bad = tmp.file("bad.tok");
  for (std::size_t byte = 0; byte < full.size(); ++byte) {
    for (int bit : {0, 7}) {
      Bytes b = full;
      b[byte] ^= static_cast<unsigned char>(1u << bit);
      write_bytes(bad, b);
      try {
        data::TokenShard::open(bad);
        BOOST_ERROR("flip of bit " << bit << " of byte " << byte << " went unnoticed");
      } catch (const tmoe::Error& e) {
        const std::string m = e.what();
        BOOST_CHECK_MESSAGE(m.find(bad) != std::string::npos, m);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(each_header_field_is_checked) {
  TempDir tmp;
  const std::string path = good_shard(tmp, "a.tok");
  const Bytes full = read_bytes(path);
  const std::string bad = tmp.file("bad.tok");
  auto expect = [&](Bytes b, std::vector<std::string> says) {
    write_bytes(bad, b);
    expect_error([&] { data::TokenShard::open(bad); }, says);
  };
  Bytes b = full;
  b[0] = 'X';
  expect(b, {"wrong magic"});
  b = full;
  b[8] = 2;
  expect(b, {"version 2 is not supported"});
  b = full;
  b[20] ^= 1;  // count, without resealing
  expect(b, {"header checksum mismatch"});
  b = full;
  b[12] = 3;
  reseal(b);
  expect(b, {"token width is 3 bytes"});
  b = full;
  put64(b, 24, 0);
  reseal(b);
  expect(b, {"vocab_size is 0"});
  b = full;
  put64(b, 24, 70000);  // 2-byte tokens cannot hold it
  reseal(b);
  expect(b, {"does not fit 2-byte tokens"});
  b = full;
  put64(b, 16, 101);
  reseal(b);
  expect(b, {"header says 101 tokens"});
  b = full;
  put64(b, 16, ~std::uint64_t{0} / 2 + 1);  // count * width overflows
  reseal(b);
  expect(b, {"truncated or padded"});
  b = full;
  put64(b, 24, 500);  // tokens up to 693 now exceed the vocabulary
  reseal(b);
  expect(b, {"outside the vocabulary of 500"});
  b = full;
  b[64] ^= 0x10;
  expect(b, {"payload checksum mismatch"});
}

BOOST_AUTO_TEST_CASE(missing_files_and_bad_writer_input) {
  TempDir tmp;
  expect_error([&] { data::TokenShard::open(tmp.file("absent.tok")); }, {"absent.tok", "cannot open"});
  expect_error([&] { data::TokenShard::open(tmp.str()); }, {"not a regular file"});
  data::ShardWriter w(tmp.file("w.tok"), 10, 0);
  const std::vector<std::int32_t> bad = {1, 10};
  expect_error([&] { w.append(bad); }, {"token 10 is outside the vocabulary of 10"});
  expect_error([&] { data::ShardWriter(tmp.file("z.tok"), 0, 0); }, {"vocab_size is 0"});
}

BOOST_AUTO_TEST_CASE(dataset_manifest_errors) {
  TempDir tmp;
  const std::string folder = tmp.file("ds");
  {
    data::DatasetWriter w(folder, 1000, 0, "");
    std::vector<std::int32_t> t(50, 3);
    w.add(data::DatasetWriter::kTrain, t);
    w.add(data::DatasetWriter::kVal, t);
    w.finish();
  }
  expect_error([&] { data::DatasetWriter(folder, 1000, 0, ""); }, {"already holds a dataset"});
  expect_error([&] { data::TokenDataset::open(tmp.file("nothing")); }, {"dataset.json", "cannot be opened"});
  const std::string manifest = folder + "/dataset.json";
  const Bytes good = read_bytes(manifest);
  auto with = [&](const std::string& text, std::vector<std::string> says) {
    write_bytes(manifest, Bytes(text.begin(), text.end()));
    expect_error([&] { data::TokenDataset::open(folder); }, says);
    write_bytes(manifest, good);
  };
  with("{", {"not valid JSON"});
  with(R"({"format": "tmoe-dataset", "version": 2})", {"unsupported dataset version"});
  with(R"({"format": "tmoe-dataset", "version": 1, "vocab_size": 1000})", {"missing a field"});
  std::string text(good.begin(), good.end());
  // A shard whose listed checksum is wrong, and one that escapes the folder.
  std::string wrong = text;
  wrong.replace(wrong.find("\"tokens\": 50"), 12, "\"tokens\": 51");
  with(wrong, {"dataset.json lists 51"});
  std::string escape = text;
  escape.replace(escape.find("train-00000.tok"), 15, "../x/00000.tok");
  with(escape, {"not a plain file name"});
  // A shard that was swapped for another.
  std::filesystem::copy_file(folder + "/val-00000.tok", folder + "/train-00000.tok",
                             std::filesystem::copy_options::overwrite_existing);
  std::vector<std::int32_t> other(50, 4);
  {
    data::ShardWriter w(folder + "/train-00000.tok", 1000, 0);
    w.append(other);
    w.commit();
  }
  expect_error([&] { data::TokenDataset::open(folder); }, {"train-00000.tok", "re-run tmoe-prep"});
}
