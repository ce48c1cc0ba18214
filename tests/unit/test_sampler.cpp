// The global-batch sampler: a batch is a function of (seed, step) alone, every window is
// seen once per epoch, epochs are ordered differently, and ranks' slices tile the global
// batch exactly for 1, 2 and 4 ranks.
#define BOOST_TEST_MODULE sampler
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdint>
#include <set>
#include <vector>

#include "../support/files.hpp"
#include "tmoe/data/sampler.hpp"

using tmoe::test::TempDir;
namespace data = tmoe::data;

namespace {
// Train shards whose token at position p of shard s is (s * 1000 + p) mod vocab, so a
// window's first token says where it came from.
std::string make_dataset(const TempDir& tmp, std::vector<std::size_t> shard_sizes, std::size_t val_size) {
  const std::string folder = tmp.file("ds");
  data::DatasetWriter w(folder, 1 << 16, 0, "", /*max_shard_tokens=*/1);  // one document per shard
  for (std::size_t s = 0; s < shard_sizes.size(); ++s) {
    std::vector<std::int32_t> doc(shard_sizes[s]);
    for (std::size_t p = 0; p < doc.size(); ++p) doc[p] = static_cast<std::int32_t>(s * 1000 + p);
    w.add(data::DatasetWriter::kTrain, doc);
  }
  std::vector<std::int32_t> val(val_size);
  for (std::size_t p = 0; p < val.size(); ++p) val[p] = static_cast<std::int32_t>(50000 + p);
  w.add(data::DatasetWriter::kVal, val);
  w.finish();
  return folder;
}
}  // namespace

BOOST_AUTO_TEST_CASE(permutation_is_a_bijection_for_many_sizes) {
  for (std::uint64_t n : {1, 2, 3, 5, 16, 17, 100, 1000, 4097}) {
    for (std::uint64_t epoch : {0, 1, 7}) {
      const data::EpochPermutation p(n, 42, epoch);
      std::vector<char> seen(n, 0);
      for (std::uint64_t i = 0; i < n; ++i) {
        const auto j = p(i);
        BOOST_REQUIRE(j < n);
        BOOST_REQUIRE_MESSAGE(!seen[j], "n " << n << " epoch " << epoch << ": " << j << " twice");
        seen[j] = 1;
      }
    }
  }
  // Different epochs and seeds give different orders.
  const data::EpochPermutation a(1000, 42, 0), b(1000, 42, 1), c(1000, 43, 0);
  int same_ab = 0, same_ac = 0;
  for (std::uint64_t i = 0; i < 1000; ++i) {
    same_ab += a(i) == b(i);
    same_ac += a(i) == c(i);
  }
  BOOST_TEST(same_ab < 20);
  BOOST_TEST(same_ac < 20);
}

BOOST_AUTO_TEST_CASE(windows_tile_each_shard_and_targets_are_shifted_inputs) {
  TempDir tmp;
  const auto ds = data::TokenDataset::open(make_dataset(tmp, {33, 8, 17}, 20));
  const data::ShardSampler s(ds, 1, 2, 8);
  BOOST_TEST(s.train_windows() == 4u + 0u + 2u);  // (33-1)/8, shard of 8 too short, (17-1)/8
  BOOST_TEST(s.val_windows() == 2u);
  std::vector<std::int32_t> in(16), tg(16);
  std::set<std::int32_t> starts;
  for (std::int64_t micro = 0; micro < 3; ++micro) {  // 3 x 2 rows = one epoch of 6 windows
    s.train_batch(micro, in.data(), tg.data());
    for (int r = 0; r < 2; ++r) {
      starts.insert(in[r * 8]);
      for (int t = 0; t < 8; ++t) {
        BOOST_TEST(tg[r * 8 + t] == in[r * 8 + t] + 1);
        BOOST_TEST(in[r * 8 + t] / 1000 == in[r * 8] / 1000);  // never crosses a shard
      }
    }
  }
  BOOST_TEST((starts == std::set<std::int32_t>{0, 8, 16, 24, 2000, 2008}));
}

BOOST_AUTO_TEST_CASE(every_window_once_per_epoch_and_same_seed_step_same_batch) {
  TempDir tmp;
  const auto ds = data::TokenDataset::open(make_dataset(tmp, {801, 409, 330}, 100));
  const std::int64_t rows = 3, t = 4;
  const data::ShardSampler s(ds, 9, rows, t);
  const std::uint64_t w = s.train_windows();
  BOOST_REQUIRE(w == 200u + 102u + 82u);
  std::vector<std::int32_t> in(rows * t), tg(rows * t);
  // Three epochs' worth of samples, drawn micro-batch by micro-batch.
  std::vector<std::set<std::int32_t>> per_epoch(3);
  std::vector<std::vector<std::int32_t>> order(3);
  const std::int64_t micros = static_cast<std::int64_t>(3 * w) / rows;
  for (std::int64_t m = 0; m < micros; ++m) {
    s.train_batch(m, in.data(), tg.data());
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::uint64_t g = static_cast<std::uint64_t>(m * rows + r);
      per_epoch[g / w].insert(in[r * t]);
      order[g / w].push_back(in[r * t]);
    }
  }
  for (int e = 0; e < 3; ++e) {
    BOOST_TEST(per_epoch[e].size() == w, "epoch " << e);
    BOOST_TEST(order[e].size() == w);
  }
  BOOST_TEST(order[0] != order[1]);
  BOOST_TEST(order[1] != order[2]);
  // A fresh sampler with the same seed draws the same micro-batch; another seed does not.
  const data::ShardSampler again(ds, 9, rows, t), other(ds, 10, rows, t);
  std::vector<std::int32_t> a(rows * t), b(rows * t), c(rows * t), scratch(rows * t);
  s.train_batch(123, a.data(), scratch.data());
  again.train_batch(123, b.data(), scratch.data());
  other.train_batch(123, c.data(), scratch.data());
  BOOST_TEST(a == b, boost::test_tools::per_element());
  BOOST_TEST(a != c);
  // Position after k micro-batches.
  const auto pos = s.position(micros + 1);
  BOOST_TEST(pos.epoch == 3u);
  BOOST_TEST(pos.index == static_cast<std::uint64_t>(rows));
}

BOOST_AUTO_TEST_CASE(rank_slices_tile_the_global_batch) {
  TempDir tmp;
  const auto ds = data::TokenDataset::open(make_dataset(tmp, {2000}, 400));
  const std::int64_t global_rows = 8, t = 5;
  const data::ShardSampler one(ds, 3, global_rows, t);
  for (std::int64_t ranks : {1, 2, 4}) {
    const std::int64_t rows = global_rows / ranks;
    const data::ShardSampler part(ds, 3, rows, t, ranks);
    for (std::int64_t micro : {0, 1, 57}) {
      std::vector<std::int32_t> whole(global_rows * t), wt(global_rows * t);
      one.train_batch(micro, whole.data(), wt.data());
      std::vector<std::int32_t> joined, jt;
      for (std::int64_t k = 0; k < ranks; ++k) {
        std::vector<std::int32_t> in(rows * t), tg(rows * t);
        part.train_batch(micro, in.data(), tg.data(), k);
        joined.insert(joined.end(), in.begin(), in.end());
        jt.insert(jt.end(), tg.begin(), tg.end());
      }
      BOOST_TEST(joined == whole, boost::test_tools::per_element());
      BOOST_TEST(jt == wt, boost::test_tools::per_element());
    }
    // Evaluation batches tile the same way.
    BOOST_TEST(part.eval_batches_available() == one.eval_batches_available());
    std::vector<std::int32_t> whole(global_rows * t), wt(global_rows * t), joined;
    one.eval_batch(1, whole.data(), wt.data());
    for (std::int64_t k = 0; k < ranks; ++k) {
      std::vector<std::int32_t> in(rows * t), tg(rows * t);
      part.eval_batch(1, in.data(), tg.data(), k);
      joined.insert(joined.end(), in.begin(), in.end());
    }
    BOOST_TEST(joined == whole, boost::test_tools::per_element());
  }
}
