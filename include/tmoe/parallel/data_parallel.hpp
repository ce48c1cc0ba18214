#pragma once
// Data parallelism over a Comm (DESIGN.md "Parallelism"), with ZeRO-1 as an option.
//
// The replicas (ranks holding the same weights) split the step's N micro-batches ("pieces")
// into consecutive runs: replica q computes pieces [q N/R, (q+1) N/R). The gradient of a
// piece is summed along the tree of tree_sum.hpp, locally first and then across replicas,
// so that with reduction = fixed and a power-of-two number of pieces per replica every
// replica holds, bitwise, the gradient one process computes for the same global batch.
//
// Buckets: backward announces parameters as their gradients become final (the gradient-
// ready hook); adjacent announcements are collected into buckets of parallel.bucket_mb,
// and each bucket's reduce-scatter starts at once, overlapping the rest of backward (with
// Open MPI, transfers progress inside MPI calls; docs/scaling.md). reduce_gradients()
// completes them, then all-gathers (unless ZeRO-1).
//
// ZeRO-1: the flat parameter range is cut into R shards (multiples of the 2^14-element
// chunks of the gradient sum of squares, so the global norm is summed in the same chunks
// as in one process). A replica keeps optimizer state and master weights for its shard
// only, receives only its shard of the reduced gradient, updates it, and the updated
// weights are all-gathered.
#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/registry.hpp"
#include "tmoe/optim/clip.hpp"
#include "tmoe/parallel/comm/comm.hpp"
#include "tmoe/parallel/grid.hpp"
#include "tmoe/parallel/tree_sum.hpp"

namespace tmoe {

// Bytes and waiting time of one step's communication, as this rank saw them.
struct CommCounters {
  std::int64_t bytes_sent = 0;   // logical payload this rank sent (segments it gave away)
  std::int64_t gradient_elements = 0;
  double wait_s = 0;             // wall time inside blocking waits and collectives
  void clear() { *this = {}; }
};

inline constexpr std::int64_t kShardGranule = kSumSquaresChunk;

template <class C>
  requires comm::Comm<C>
class DataParallel {
 public:
  static constexpr const char* name = "data_parallel";
  using CommType = C;

  // world: all ranks of the job; the strategy splits off its replica group.
  DataParallel(C world, const Config& cfg)
      : grid_(ProcessGrid::make(cfg.parallel, cfg.model, world.size(), world.rank())),
        red_(comm::reduction_from_name(cfg.parallel.reduction)),
        zero_(cfg.parallel.zero),
        bucket_bytes_(static_cast<std::int64_t>(cfg.parallel.bucket_mb * 1024.0 * 1024.0)),
        world_(world),
        replicas_(world.split(grid_.pipeline_rank * grid_.tensor + grid_.tensor_rank, grid_.replica_rank())) {
    if (grid_.expert > 1 || grid_.tensor > 1 || grid_.pipeline > 1)
      throw Error(detail::cat("grid ", grid_.describe()), "parallel",
                  "expert = tensor = pipeline = 1: this build distributes by data (and ZeRO-1) only; expert, tensor "
                  "and pipeline parallelism are not available yet");
  }

  const ProcessGrid& grid() const { return grid_; }
  int rank() const { return replicas_.rank(); }  // replica rank: orders the pieces
  int size() const { return replicas_.size(); }  // replicas
  bool sharded() const { return zero_ && size() > 1; }
  C& replicas() { return replicas_; }
  C& world() { return world_; }
  CommCounters& counters() { return counters_; }

  // The elements of the flat buffer (length n) this rank updates: its ZeRO-1 shard, or all.
  std::pair<std::int64_t, std::int64_t> shard(std::int64_t n) const {
    if (!sharded()) return {0, n};
    const auto b = comm::segments(0, n, size(), kShardGranule);
    return {b[static_cast<std::size_t>(rank())], b[static_cast<std::size_t>(rank()) + 1]};
  }
  std::vector<std::int64_t> shard_bounds(std::int64_t n) const {
    return sharded() ? comm::segments(0, n, size(), kShardGranule) : std::vector<std::int64_t>{0, n};
  }

  // --- gradients --------------------------------------------------------------------------
  // The gradient-ready hook: registry indices [first, last) are final in g.
  template <class T>
  void grads_ready(const ParamRegistry& reg, T* g, int first, int last) {
    if (size() == 1) return;
    const std::int64_t lo = reg[first].offset, hi = last < reg.size() ? reg[last].offset : reg.total();
    if (open_hi_ > open_lo_ && hi != open_lo_) flush(g, reg.total());
    if (open_hi_ <= open_lo_) open_hi_ = hi;
    open_lo_ = lo;
    if ((open_hi_ - open_lo_) * static_cast<std::int64_t>(sizeof(T)) >= bucket_bytes_) flush(g, reg.total());
  }

  // Completes the step's reduction: afterwards every replica holds the summed gradient (or,
  // under ZeRO-1, its shard of it). Reduces what the hook did not announce as one bucket.
  template <class T>
  void reduce_gradients(T* g, std::int64_t n) {
    if (size() == 1) return;
    if (open_hi_ > open_lo_) flush(g, n);
    if (covered_ == 0) {
      open_lo_ = 0;
      open_hi_ = n;
      flush(g, n);
    }
    if (covered_ != n)
      throw Error(detail::cat("the buckets covered ", covered_, " of ", n, " gradient elements"), "DataParallel::reduce_gradients",
                  "every parameter announced exactly once per backward by the gradient-ready hook");
    const auto t0 = std::chrono::steady_clock::now();
    for (auto& b : buckets_) b.pending.wait();
    if (!sharded()) {
      std::vector<comm::Pending> gathers;
      for (auto& b : buckets_) {
        counters_.bytes_sent += (b.bounds[rank() + 1] - b.bounds[rank()]) * (size() - 1) * static_cast<std::int64_t>(sizeof(T));
        gathers.push_back(replicas_.iallgather(g, std::span<const std::int64_t>(b.bounds)));
      }
      for (auto& p : gathers) p.wait();
    }
    counters_.wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    counters_.gradient_elements += n;
    buckets_.clear();
    covered_ = 0;
    open_lo_ = open_hi_ = 0;
  }

  // After the update of a sharded step: every replica's shard of x (length n) reaches all.
  template <class T>
  void gather_shards(T* x, std::int64_t n) {
    if (!sharded()) return;
    const auto b = shard_bounds(n);
    counters_.bytes_sent += (b[rank() + 1] - b[rank()]) * (size() - 1) * static_cast<std::int64_t>(sizeof(T));
    timed([&] { replicas_.iallgather(x, std::span<const std::int64_t>(b)).wait(); });
  }

  // --- scalars ----------------------------------------------------------------------------
  // Values of every replica, concatenated in replica order (equal counts).
  std::vector<double> gather(std::span<const double> mine) {
    std::vector<double> all(mine.size() * static_cast<std::size_t>(size()));
    timed([&] { replicas_.allgather(mine.data(), static_cast<std::int64_t>(mine.size()), all.data()); });
    return all;
  }
  // Sums over the replicas in replica order (bitwise the same on every rank, any transport).
  double sum(double v) {
    if (size() == 1) return v;
    const auto all = gather(std::span<const double>(&v, 1));
    return tree_sum(all);
  }
  void sum(double* v, std::int64_t n) {
    if (size() == 1) return;
    timed([&] { replicas_.allreduce_sum(v, n, comm::Reduction::kFixed); });
  }
  // The concatenation of every replica's variable-length part, in replica order.
  std::vector<double> gatherv(std::span<const double> mine) {
    std::vector<std::int64_t> counts(static_cast<std::size_t>(size()));
    const std::int64_t m = static_cast<std::int64_t>(mine.size());
    timed([&] { replicas_.allgather(&m, 1, counts.data()); });
    std::int64_t total = 0;
    for (auto c : counts) total += c;
    std::vector<double> all(static_cast<std::size_t>(total));
    timed([&] { replicas_.allgatherv(mine.data(), std::span<const std::int64_t>(counts), all.data()); });
    return all;
  }
  void barrier() { timed([&] { world_.barrier(); }); }
  // Rank 0 of the world decided `ok`; every rank learns it (for work only rank 0 does).
  bool agree(bool ok_on_root) {
    std::int32_t v = ok_on_root ? 1 : 0;
    timed([&] { world_.broadcast(&v, 1, 0); });
    return v != 0;
  }
  bool is_root() const { return grid_.rank == 0; }

 private:
  template <class F>
  void timed(F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    counters_.wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  template <class T>
  void flush(T* g, std::int64_t n) {
    Bucket b;
    if (sharded()) {
      const auto s = shard_bounds(n);
      b.bounds.resize(s.size());
      for (std::size_t i = 0; i < s.size(); ++i) b.bounds[i] = std::clamp(s[i], open_lo_, open_hi_);
    } else {
      b.bounds = comm::segments(open_lo_, open_hi_, size());
    }
    const std::int64_t mine = b.bounds[rank() + 1] - b.bounds[rank()];
    counters_.bytes_sent += (open_hi_ - open_lo_ - mine) * static_cast<std::int64_t>(sizeof(T));
    b.pending = replicas_.ireduce_scatter_sum(g, std::span<const std::int64_t>(b.bounds), red_);
    covered_ += open_hi_ - open_lo_;
    buckets_.push_back(std::move(b));
    open_lo_ = open_hi_ = 0;
  }

  struct Bucket {
    std::vector<std::int64_t> bounds;
    comm::Pending pending;
  };

  ProcessGrid grid_;
  comm::Reduction red_;
  bool zero_;
  std::int64_t bucket_bytes_;
  C world_, replicas_;
  std::vector<Bucket> buckets_;
  std::int64_t open_lo_ = 0, open_hi_ = 0, covered_ = 0;
  CommCounters counters_;
};

}  // namespace tmoe
