#pragma once
// The global-batch sampler over token shards (DESIGN.md principle 5 and "Data").
//
// The training stream is cut into windows of seq_len + 1 tokens (inputs and their next-
// token targets) starting every seq_len tokens inside each shard; W windows in all. Sample
// g of the run (g = global row index, counting from the first step) is window
//
//     perm_e(g mod W)  with epoch e = g / W,
//
// where perm_e is a pseudo-random permutation of [0, W) keyed by (seed, e): a Feistel
// network whose round function is Philox, walked in cycles until it lands inside [0, W).
// So every window is seen exactly once per epoch, each epoch in a new order, and a batch
// is a pure function of (seed, step): no state to save beyond the step number, and any
// rank can draw exactly its own rows. Row r of micro-batch i (i counts micro-batches over
// the whole run) is sample g = i * global_rows + r; rank k of R takes rows
// [k * rows, (k + 1) * rows) with rows = global_rows / R, so the global batch is the same
// for every R.
//
// Evaluation windows are fixed: the validation split cut the same way, taken in order.
#include <algorithm>
#include <bit>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tmoe/core/error.hpp"
#include "tmoe/core/philox.hpp"
#include "tmoe/data/shards.hpp"

namespace tmoe::data {

// A bijection of [0, n) keyed by (seed, epoch). Balanced Feistel network on the smallest
// even number of bits 2h with 2^(2h) >= n; values >= n are re-encrypted (cycle walking),
// which terminates because the network is a permutation of [0, 2^(2h)), and takes fewer
// than 4 rounds trips on average since 2^(2h) < 4n.
class EpochPermutation {
 public:
  EpochPermutation(std::uint64_t n, std::uint64_t seed, std::uint64_t epoch) : n_(n), seed_(seed), epoch_(epoch) {
    if (n == 0) throw Error("cannot permute an empty set of windows", "EpochPermutation", "n > 0");
    const int bits = n <= 1 ? 0 : std::bit_width(n - 1);
    half_ = std::max(1, (bits + 1) / 2);
    mask_ = (std::uint64_t{1} << half_) - 1;
  }

  std::uint64_t operator()(std::uint64_t i) const {
    std::uint64_t x = i;
    do x = encrypt(x);
    while (x >= n_);
    return x;
  }
  std::uint64_t size() const { return n_; }

 private:
  static constexpr int kRounds = 6;
  std::uint64_t encrypt(std::uint64_t x) const {
    std::uint64_t left = x >> half_, right = x & mask_;
    for (int r = 0; r < kRounds; ++r) {
      const auto b = Philox4x32::generate(
          seed_, {static_cast<std::uint32_t>(right), static_cast<std::uint32_t>(right >> 32),
                  static_cast<std::uint32_t>(epoch_), site_id(Site::kBatch, static_cast<std::uint32_t>(r + 1))});
      const std::uint64_t f = (std::uint64_t{b[0]} | std::uint64_t{b[1]} << 32) & mask_;
      const std::uint64_t next = left ^ f;
      left = right;
      right = next;
    }
    return (left << half_) | right;
  }
  std::uint64_t n_, seed_, epoch_;
  int half_;
  std::uint64_t mask_;
};

// Window k of a list of shards: which shard, and where it starts.
class WindowIndex {
 public:
  WindowIndex() = default;
  WindowIndex(const std::vector<TokenShard>& shards, std::int64_t seq_len) : shards_(&shards), seq_len_(seq_len) {
    std::uint64_t total = 0;
    for (const TokenShard& s : shards) {
      first_.push_back(total);
      total += s.size() > static_cast<std::uint64_t>(seq_len) ? (s.size() - 1) / static_cast<std::uint64_t>(seq_len) : 0;
    }
    windows_ = total;
  }
  std::uint64_t size() const { return windows_; }

  // Fills seq_len inputs and seq_len targets from window k.
  void fill(std::uint64_t k, std::int32_t* inputs, std::int32_t* targets) const {
    const auto it = std::upper_bound(first_.begin(), first_.end(), k);
    const std::size_t shard = static_cast<std::size_t>(it - first_.begin()) - 1;
    const std::uint64_t start = (k - first_[shard]) * static_cast<std::uint64_t>(seq_len_);
    const TokenShard& s = (*shards_)[shard];
    s.copy(start, static_cast<std::uint64_t>(seq_len_), inputs);
    s.copy(start + 1, static_cast<std::uint64_t>(seq_len_), targets);
  }

 private:
  const std::vector<TokenShard>* shards_ = nullptr;
  std::int64_t seq_len_ = 0;
  std::vector<std::uint64_t> first_;  // index of each shard's first window
  std::uint64_t windows_ = 0;
};

// Where the sampler is after `samples` global rows: what a checkpoint records to say
// (and check) where the data stream stands.
struct DataPosition {
  std::uint64_t epoch = 0;
  std::uint64_t index = 0;  // windows of this epoch already taken
};

class ShardSampler {
 public:
  // rows: sequences per micro-batch on one rank; ranks: how many ranks share the global
  // micro-batch of rows * ranks sequences.
  ShardSampler(const TokenDataset& data, std::uint64_t seed, std::int64_t rows, std::int64_t seq_len,
               std::int64_t ranks = 1)
      : seed_(seed), rows_(rows), seq_len_(seq_len), ranks_(ranks),
        train_(data.train, seq_len), val_(data.val, seq_len) {
    using detail::cat;
    if (rows <= 0 || seq_len <= 0 || ranks <= 0)
      throw Error(cat("rows ", rows, ", seq_len ", seq_len, ", ranks ", ranks), "ShardSampler", "positive values");
    if (train_.size() == 0)
      throw Error(cat("the training shards hold no window of ", seq_len + 1, " tokens"), data.folder,
                  "more training tokens than seq_len (or a shorter train.seq_len)");
  }

  std::uint64_t train_windows() const { return train_.size(); }
  std::uint64_t val_windows() const { return val_.size(); }
  std::int64_t global_rows() const { return rows_ * ranks_; }

  // Window (in the training split) of global sample g.
  std::uint64_t window_of(std::uint64_t g) const {
    const std::uint64_t w = train_.size();
    return EpochPermutation(w, seed_, g / w)(g % w);  // construction is a few integer ops
  }

  // Rank `rank`'s rows of global micro-batch `micro`: (rows, seq_len) inputs and targets.
  void train_batch(std::int64_t micro, std::int32_t* inputs, std::int32_t* targets, std::int64_t rank = 0) const {
    const std::uint64_t base = static_cast<std::uint64_t>(micro) * static_cast<std::uint64_t>(global_rows()) +
                               static_cast<std::uint64_t>(rank * rows_);
    for (std::int64_t r = 0; r < rows_; ++r)
      train_.fill(window_of(base + static_cast<std::uint64_t>(r)), inputs + r * seq_len_, targets + r * seq_len_);
  }

  DataPosition position(std::int64_t micro_batches_done) const {
    const std::uint64_t g = static_cast<std::uint64_t>(micro_batches_done) * static_cast<std::uint64_t>(global_rows());
    return {g / train_.size(), g % train_.size()};
  }

  // Evaluation micro-batches: validation windows in order, rank's rows of each.
  std::int64_t eval_batches_available() const {
    return static_cast<std::int64_t>(val_.size() / static_cast<std::uint64_t>(global_rows()));
  }
  void eval_batch(std::int64_t i, std::int32_t* inputs, std::int32_t* targets, std::int64_t rank = 0) const {
    if (i < 0 || i >= eval_batches_available())
      throw Error(detail::cat("evaluation batch ", i, " of ", eval_batches_available()), "ShardSampler::eval_batch",
                  "an index below eval_batches_available()");
    const std::uint64_t base = static_cast<std::uint64_t>(i * global_rows() + rank * rows_);
    for (std::int64_t r = 0; r < rows_; ++r)
      val_.fill(base + static_cast<std::uint64_t>(r), inputs + r * seq_len_, targets + r * seq_len_);
  }

 private:
  std::uint64_t seed_;
  std::int64_t rows_, seq_len_, ranks_;
  WindowIndex train_, val_;
};

}  // namespace tmoe::data
