// Token shards and datasets: what is written is read back token for token in every token
// width; the dataset writer splits at the shard size and its manifest lists what it wrote.
#define BOOST_TEST_MODULE shards
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <filesystem>
#include <vector>

#include "../support/files.hpp"
#include "tmoe/core/philox.hpp"
#include "tmoe/data/shards.hpp"

using tmoe::test::TempDir;
namespace data = tmoe::data;

namespace {
std::vector<std::int32_t> random_tokens(std::size_t n, std::uint64_t vocab, std::uint64_t seed) {
  std::vector<std::int32_t> t(n);
  for (std::size_t i = 0; i < n; ++i)
    t[i] = static_cast<std::int32_t>(tmoe::RngKey{seed, 0, tmoe::site_id(tmoe::Site::kTest), 0}.bits(i) % vocab);
  return t;
}
}  // namespace

BOOST_AUTO_TEST_CASE(round_trip_in_every_token_width) {
  TempDir tmp;
  for (std::uint64_t vocab : {std::uint64_t{256}, std::uint64_t{257}, std::uint64_t{65536}, std::uint64_t{65537},
                              std::uint64_t{1} << 31}) {
    BOOST_TEST_CONTEXT("vocab " << vocab) {
      const auto tokens = random_tokens(1003, std::min<std::uint64_t>(vocab, 1u << 31), vocab);
      const std::string path = tmp.file("v" + std::to_string(vocab) + ".tok");
      data::ShardWriter w(path, vocab, 77);
      w.append({tokens.data(), 500});
      w.end_document();
      w.append({tokens.data() + 500, tokens.size() - 500});
      w.end_document();
      const data::ShardHeader written = w.commit();
      const auto s = data::TokenShard::open(path);
      BOOST_TEST(s.header().token_bytes == data::token_bytes_for(vocab));
      BOOST_TEST(s.header().count == tokens.size());
      BOOST_TEST(s.header().documents == 2u);
      BOOST_TEST(s.header().tokenizer == 77u);
      BOOST_TEST(s.header().payload_xxh64 == written.payload_xxh64);
      BOOST_TEST(std::filesystem::file_size(path) == 64 + tokens.size() * data::token_bytes_for(vocab));
      std::vector<std::int32_t> back(tokens.size());
      s.copy(0, back.size(), back.data());
      BOOST_TEST(back == tokens, boost::test_tools::per_element());
      for (std::size_t i : {std::size_t{0}, std::size_t{1}, std::size_t{1002}}) BOOST_TEST(s[i] == tokens[i]);
    }
  }
}

BOOST_AUTO_TEST_CASE(empty_shard_is_valid) {
  TempDir tmp;
  data::ShardWriter w(tmp.file("e.tok"), 256, 0);
  w.commit();
  BOOST_TEST(data::TokenShard::open(tmp.file("e.tok")).size() == 0u);
}

BOOST_AUTO_TEST_CASE(abandoned_writer_leaves_nothing) {
  TempDir tmp;
  {
    data::ShardWriter w(tmp.file("a.tok"), 256, 0);
    const std::vector<std::int32_t> t = {1, 2, 3};
    w.append(t);
  }
  BOOST_TEST(std::filesystem::is_empty(tmp.dir));
}

BOOST_AUTO_TEST_CASE(dataset_writer_splits_shards_and_lists_them) {
  TempDir tmp;
  const std::string folder = tmp.file("ds");
  data::DatasetWriter w(folder, 300, 5, "bpe.txt", /*max_shard_tokens=*/100);
  const auto doc = random_tokens(60, 300, 1);
  for (int i = 0; i < 5; ++i) w.add(data::DatasetWriter::kTrain, doc);  // 60, 120 | 60, 120 | 60
  w.add(data::DatasetWriter::kVal, doc);
  const auto& m = w.finish({{"note", "test"}});
  BOOST_REQUIRE(m.train.size() == 3u);
  BOOST_TEST(m.train[0].file == "train-00000.tok");
  BOOST_TEST(m.train[2].file == "train-00002.tok");
  BOOST_TEST(m.train[0].tokens == 120u);
  BOOST_TEST(m.train[2].tokens == 60u);
  BOOST_TEST(m.val.size() == 1u);

  const auto ds = data::TokenDataset::open(folder);
  BOOST_TEST(ds.train.size() == 3u);
  BOOST_TEST(ds.manifest.tokenizer_file == "bpe.txt");
  BOOST_TEST(ds.manifest.report["note"] == "test");
  BOOST_TEST(ds.train[1].header().documents == 2u);
  std::vector<std::int32_t> back(60);
  ds.train[2].copy(0, 60, back.data());
  BOOST_TEST(back == doc, boost::test_tools::per_element());
  // The fingerprint sees every shard's checksum.
  const auto f = ds.fingerprint();
  BOOST_TEST(f == data::TokenDataset::open(folder).fingerprint());
  BOOST_TEST(f != 0u);
}
