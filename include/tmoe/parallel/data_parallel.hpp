#pragma once
// Data, expert, tensor and pipeline parallelism over a Comm (DESIGN.md "Parallelism"), with
// ZeRO-1 and PowerSGD as options. The grid (parallel/grid.hpp) gives five groups: the
// replicas (data x expert ranks, which see different tokens and reduce the dense
// gradients), the expert group (the ranks a layer's experts are split over; MoE rows travel
// there by all-to-all, parallel/expert_parallel.hpp), the expert-data group (the replicas of
// one expert shard, which reduce its gradients), the tensor group (the ranks a layer's heads
// and hidden units are split over; parallel/tensor_parallel.hpp) and the pipeline (one rank
// per stage; the trainer runs the 1F1B schedule of parallel/pipeline.hpp over it).
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
// ZeRO-1: the flat parameter range is cut into R shards at "cells" (2^14-element chunks of
// a parameter, the unit of the gradient norm's sum, see Trainer::grad_sum_squares), so the
// global norm is summed in the same cells as in one process. A replica keeps optimizer state and master weights for its shard
// only, receives only its shard of the reduced gradient, updates it, and the updated
// weights are all-gathered.
//
// PowerSGD (parallel.powersgd_rank = r): the replicas' gradient matrices are sent as rank-r
// factors with error feedback (parallel/powersgd.hpp) once backward is done, instead of in
// buckets; everything else is summed exactly. Not bitwise equal to one process (that is the
// point of compression); the step's bytes with and without it are both counted.
#include <chrono>
#include <optional>
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
#include "tmoe/parallel/expert_parallel.hpp"
#include "tmoe/parallel/grid.hpp"
#include "tmoe/parallel/powersgd.hpp"
#include "tmoe/parallel/tensor_parallel.hpp"
#include "tmoe/parallel/tree_sum.hpp"

namespace tmoe {

// Bytes and waiting time of one step's communication, as this rank saw them.
struct CommCounters {
  std::int64_t bytes_sent = 0;   // logical payload this rank sent (segments it gave away)
  std::int64_t bytes_uncompressed = 0;  // what the replicas' reduction would have sent without PowerSGD
  double wait_s = 0;             // wall time inside blocking waits and collectives
  void clear() { *this = {}; }
};

inline constexpr std::int64_t kShardGranule = kSumSquaresChunk;

// Where the cells of the flat buffer start (see ZeRO-1 above), in order, then total().
inline std::vector<std::int64_t> cell_starts(const ParamRegistry& reg) {
  std::vector<std::int64_t> v;
  for (const ParamInfo& p : reg.params())
    for (std::int64_t k = 0; k < std::max<std::int64_t>(1, (p.numel() + kSumSquaresChunk - 1) / kSumSquaresChunk); ++k)
      v.push_back(p.offset + k * kSumSquaresChunk);
  v.push_back(reg.total());
  return v;
}
// R shards of the flat buffer, each a run of whole cells, balanced by elements.
inline std::vector<std::int64_t> cell_shards(const ParamRegistry& reg, int parts) {
  const auto starts = cell_starts(reg);
  std::vector<std::int64_t> b(static_cast<std::size_t>(parts) + 1, 0);
  for (int r = 1; r < parts; ++r) {
    const std::int64_t target = reg.total() * r / parts;
    b[static_cast<std::size_t>(r)] = *std::prev(std::upper_bound(starts.begin(), starts.end(), target));
  }
  b[static_cast<std::size_t>(parts)] = reg.total();
  return b;
}

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
        replicas_(world.split(grid_.pipeline_rank * grid_.tensor + grid_.tensor_rank, grid_.replica_rank())),
        experts_(world.split((grid_.pipeline_rank * grid_.data + grid_.data_rank) * grid_.tensor + grid_.tensor_rank,
                             grid_.expert_rank)),
        expert_data_(world.split((grid_.pipeline_rank * grid_.tensor + grid_.tensor_rank) * grid_.expert + grid_.expert_rank,
                                 grid_.data_rank)),
        tensors_(world.split(grid_.rank / grid_.tensor, grid_.tensor_rank)),
        stages_(world.split(grid_.rank % (grid_.data * grid_.expert * grid_.tensor), grid_.pipeline_rank)) {
    if (grid_.expert > 1 && grid_.tensor > 1)
      throw Error(detail::cat("grid ", grid_.describe()), "parallel.expert",
                  "expert parallelism without tensor parallelism (expert x tensor is not available yet)");
    if (cfg.parallel.powersgd_rank > 0) {
      if (zero_ || grid_.expert > 1)
        throw Error("parallel.powersgd_rank with parallel.zero or parallel.expert > 1", "parallel.powersgd_rank",
                    "PowerSGD with plain data parallelism (no ZeRO-1, no expert parallelism)");
      psgd_f_.emplace(static_cast<int>(cfg.parallel.powersgd_rank), cfg.train.seed);
      psgd_d_.emplace(static_cast<int>(cfg.parallel.powersgd_rank), cfg.train.seed);
    }
  }
  bool compressed() const { return psgd_f_.has_value() && size() > 1; }
  // The loss scale the next gradients carry: PowerSGD's error feedback is rescaled with it.
  void set_loss_scale(double s) {
    if (compressed() && loss_scale_ > 0 && s != loss_scale_) {
      psgd_f_->scale_error(s / loss_scale_);
      psgd_d_->scale_error(s / loss_scale_);
    }
    loss_scale_ = s;
  }

  const ProcessGrid& grid() const { return grid_; }
  int rank() const { return replicas_.rank(); }  // replica rank: orders the pieces
  int size() const { return replicas_.size(); }  // replicas
  // ZeRO-1 shards over the data-parallel ranks of one expert shard (the expert-data group;
  // without expert parallelism, the replicas): routed-expert gradients are reduce-scattered
  // there; under expert parallelism the dense gradients, reduced over all replicas, are
  // all-reduced and each rank updates its shard of them.
  bool sharded() const { return zero_ && expert_data_.size() > 1; }
  int shard_rank() const { return expert_data_.rank(); }
  int shards() const { return expert_data_.size(); }
  C& replicas() { return replicas_; }
  C& experts() { return experts_; }
  C& expert_data() { return expert_data_; }
  bool expert_parallel() const { return grid_.expert > 1; }

  // The model this rank builds: its share of the experts, of the heads and hidden widths
  // (tensor parallelism) and of the layers (its pipeline stage).
  ModelConfig model_layout(ModelConfig m) const {
    m.ep_rank = grid_.expert_rank;
    m.ep_size = grid_.expert;
    m.tp_rank = grid_.tensor_rank;
    m.tp_size = grid_.tensor;
    m.pp_rank = grid_.pipeline_rank;
    m.pp_size = grid_.pipeline;
    return m;
  }
  // Tensor parallelism: the all-reduces of the layers' partial outputs and input gradients.
  template <class T>
  std::unique_ptr<CommTensorGroup<C, T>> make_tensor_group() {
    if (grid_.tensor == 1) return nullptr;
    return std::make_unique<CommTensorGroup<C, T>>(tensors_, red_);
  }
  C& tensors() { return tensors_; }

  // --- pipeline ---------------------------------------------------------------------------
  // The stage this rank runs and the number of stages; activations go to the next stage and
  // their gradients back, tagged by micro-batch. Sends do not block (the buffer must stay
  // unchanged until the Pending is waited for: wait_stage); receives do.
  int stage() const { return grid_.pipeline_rank; }
  int stages() const { return grid_.pipeline; }
  template <class T>
  comm::Pending send_stage(const T* x, std::int64_t n, int to, int tag) {
    counters_.bytes_sent += n * static_cast<std::int64_t>(sizeof(T));
    return stages_.isend(x, n, to, tag);
  }
  template <class T>
  void recv_stage(T* x, std::int64_t n, int from, int tag) {
    timed([&] { stages_.recv(x, n, from, tag); });
  }
  void wait_stage(comm::Pending& p) {
    timed([&] { p.wait(); });
  }
  // Sums each entry over the stages (each entry is non-zero on one stage only: exact).
  void sum_stages(double* v, std::int64_t n) {
    if (stages() > 1) timed([&] { stages_.allreduce_sum(v, n, comm::Reduction::kFixed); });
  }
  // The concatenation of every stage's variable-length part, in stage order.
  std::vector<double> gather_stages(std::span<const double> mine) { return gatherv_over(stages_, mine); }
  // The MoE layers' exchange (null without expert parallelism).
  template <class T>
  std::unique_ptr<CommExchange<C, T>> make_exchange(const ParamRegistry& reg) {
    if (!expert_parallel()) return nullptr;
    return std::make_unique<CommExchange<C, T>>(experts_, reg);
  }
  // Completes `sums` (global parameter index, Σ g² of what this rank holds) to the whole
  // model, so every rank sees every parameter once: a tensor-parallel split parameter's
  // sum is added over the tensor group (in rank order), the other stages' parameters come
  // from the pipeline group, the other experts' from the expert group.
  void merge_sums(std::vector<std::pair<int, double>>& sums, const ParamRegistry& reg) {
    if (grid_.tensor > 1) {
      std::vector<double> split;
      for (const auto& [gi, v] : sums)
        if (reg[reg_index_of(reg, gi)].is_split()) split.push_back(v);
      std::vector<double> all(split.size() * static_cast<std::size_t>(tensors_.size()));
      timed([&] { tensors_.allgather(split.data(), static_cast<std::int64_t>(split.size()), all.data()); });
      std::size_t k = 0;
      for (auto& [gi, v] : sums)
        if (reg[reg_index_of(reg, gi)].is_split()) {
          double t = 0;
          for (int q = 0; q < tensors_.size(); ++q) t += all[static_cast<std::size_t>(q) * split.size() + k];
          v = t;
          ++k;
        }
    }
    if (expert_parallel()) {
      std::vector<double> mine;
      for (const auto& [gi, v] : sums)
        if (reg[reg_index_of(reg, gi)].has(kTagExpert)) {
          mine.push_back(static_cast<double>(gi));
          mine.push_back(v);
        }
      const std::vector<double> all = gatherv_over(experts_, mine);  // every rank's experts, ours too
      std::erase_if(sums, [&](const auto& e) { return reg[reg_index_of(reg, e.first)].has(kTagExpert); });
      for (std::size_t i = 0; i < all.size(); i += 2) sums.emplace_back(static_cast<int>(all[i]), all[i + 1]);
    }
    if (stages() > 1) {  // every stage's parameters (this stage's complete by now)
      std::vector<double> mine;
      for (const auto& [gi, v] : sums) {
        mine.push_back(static_cast<double>(gi));
        mine.push_back(v);
      }
      const std::vector<double> all = gatherv_over(stages_, mine);
      sums.clear();
      for (std::size_t i = 0; i < all.size(); i += 2) sums.emplace_back(static_cast<int>(all[i]), all[i + 1]);
    }
  }
  C& world() { return world_; }
  CommCounters& counters() { return counters_; }

  // The elements of the flat buffer this rank updates: its ZeRO-1 shard, or all.
  std::pair<std::int64_t, std::int64_t> shard(const ParamRegistry& reg) const {
    const auto& b = shard_bounds(reg);
    return sharded() ? std::pair{b[static_cast<std::size_t>(shard_rank())], b[static_cast<std::size_t>(shard_rank()) + 1]}
                     : std::pair{std::int64_t{0}, reg.total()};
  }
  // Computed once: every bucket and every gather asks (the registry does not change).
  const std::vector<std::int64_t>& shard_bounds(const ParamRegistry& reg) const {
    if (bounds_.empty() || bounds_.back() != reg.total())
      bounds_ = sharded() ? cell_shards(reg, shards()) : std::vector<std::int64_t>{0, reg.total()};
    return bounds_;
  }

  // --- gradients --------------------------------------------------------------------------
  // The gradient-ready hook: registry indices [first, last) are final in g. Dense
  // parameters go to the replicas, routed experts (under expert parallelism) to the
  // expert-data group; each kind fills its own buckets.
  template <class T>
  void grads_ready(const ParamRegistry& reg, T* g, int first, int last) {
    if (compressed()) return;  // PowerSGD reduces the whole gradient at the end
    for (int i = last; i-- > first;) {  // backward's order: high offsets first
      const std::int64_t lo = reg[i].offset, hi = i + 1 < reg.size() ? reg[i + 1].offset : reg.total();
      const int kind = expert_parallel() && reg[i].has(kTagExpert) ? 1 : 0;
      Open& o = open_[kind];
      if (o.hi > o.lo && hi != o.lo) flush(g, reg, kind);
      if (o.hi <= o.lo) o.hi = hi;
      o.lo = lo;
      if ((o.hi - o.lo) * static_cast<std::int64_t>(sizeof(T)) >= bucket_bytes_) flush(g, reg, kind);
    }
  }

  // Completes the step's reduction: afterwards every replica holds the summed gradient (or,
  // under ZeRO-1, its shard of it). Reduces what the hook did not announce as one bucket.
  template <class T>
  void reduce_gradients(T* g, const ParamRegistry& reg) {
    const std::int64_t n = reg.total();
    if (compressed()) {
      auto& p = psgd<T>();
      timed([&] { p.reduce(reg, g, n, replicas_, red_); });
      counters_.bytes_sent += p.bytes_sent();
      counters_.bytes_uncompressed += p.uncompressed_bytes();
      return;
    }
    for (int kind : {0, 1})
      if (open_[kind].hi > open_[kind].lo) flush(g, reg, kind);
    if (covered_ == 0) grads_ready(reg, g, 0, reg.size());  // a model without the hook
    for (int kind : {0, 1})
      if (open_[kind].hi > open_[kind].lo) flush(g, reg, kind);
    if (covered_ != n)
      throw Error(detail::cat("the buckets covered ", covered_, " of ", n, " gradient elements"), "DataParallel::reduce_gradients",
                  "every parameter announced exactly once per backward by the gradient-ready hook");
    const auto t0 = std::chrono::steady_clock::now();
    for (auto& b : buckets_) b.pending.wait();
    {
      std::vector<comm::Pending> gathers;
      for (auto& b : buckets_) {
        if (!b.gather) continue;  // a ZeRO-1 shard stays where it was reduced
        C& grp = group(b.kind);
        counters_.bytes_sent += (b.bounds[grp.rank() + 1] - b.bounds[grp.rank()]) * (grp.size() - 1) * static_cast<std::int64_t>(sizeof(T));
        gathers.push_back(grp.iallgather(g, std::span<const std::int64_t>(b.bounds)));
      }
      for (auto& p : gathers) p.wait();
    }
    counters_.wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    buckets_.clear();
    covered_ = 0;
  }

  // After the update of a sharded step: every replica's shard of x (length n) reaches all.
  template <class T>
  void gather_shards(T* x, const ParamRegistry& reg) {
    if (!sharded()) return;
    const auto& b = shard_bounds(reg);
    counters_.bytes_sent += (b[shard_rank() + 1] - b[shard_rank()]) * (shards() - 1) * static_cast<std::int64_t>(sizeof(T));
    timed([&] { expert_data_.iallgather(x, std::span<const std::int64_t>(b)).wait(); });
  }

  // The whole model's parameter count: every rank of the first data replica counts what only
  // it holds (its experts, its slices, its stage; a replicated tensor once), summed.
  std::int64_t count_parameters(const ParamRegistry& reg) {
    double n = 0;
    if (grid_.data_rank == 0)
      for (const ParamInfo& p : reg.params()) {
        const bool mine = (p.is_split() || grid_.tensor_rank == 0) &&
                          ((expert_parallel() && p.has(kTagExpert)) || grid_.expert_rank == 0);
        if (mine) n += static_cast<double>(p.numel());
      }
    timed([&] { world_.allreduce_sum(&n, 1, comm::Reduction::kFixed); });
    return static_cast<std::int64_t>(n);
  }

  // --- scalars ----------------------------------------------------------------------------
  // Values of every replica, concatenated in replica order (equal counts).
  std::vector<double> gather(std::span<const double> mine) {
    std::vector<double> all(mine.size() * static_cast<std::size_t>(size()));
    timed([&] { replicas_.allgather(mine.data(), static_cast<std::int64_t>(mine.size()), all.data()); });
    return all;
  }
  // Sums over every rank of the job in rank order (bitwise the same on every rank, any
  // transport): flags every rank must agree on (an overflow, a stop request).
  double sum(double v) {
    if (world_.size() == 1) return v;
    std::vector<double> all(static_cast<std::size_t>(world_.size()));
    timed([&] { world_.allgather(&v, 1, all.data()); });
    return tree_sum(all);
  }
  void sum(double* v, std::int64_t n) {
    if (size() == 1) return;
    timed([&] { replicas_.allreduce_sum(v, n, comm::Reduction::kFixed); });
  }
  // The concatenation of every ZeRO-1 shard's variable-length part, in shard order.
  std::vector<double> gather_shard_values(std::span<const double> mine) { return gatherv_over(expert_data_, mine); }
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
  C& group(int kind) { return kind == 1 ? expert_data_ : replicas_; }
  std::vector<double> gatherv_over(C& grp, std::span<const double> mine) {
    std::vector<std::int64_t> counts(static_cast<std::size_t>(grp.size()));
    const std::int64_t m = static_cast<std::int64_t>(mine.size());
    timed([&] { grp.allgather(&m, 1, counts.data()); });
    std::int64_t total = 0;
    for (auto c : counts) total += c;
    std::vector<double> all(static_cast<std::size_t>(total));
    timed([&] { grp.allgatherv(mine.data(), std::span<const std::int64_t>(counts), all.data()); });
    return all;
  }
  template <class T>
  PowerSgd<T>& psgd() {
    if constexpr (std::is_same_v<T, float>) return *psgd_f_;
    else return *psgd_d_;
  }
  static int reg_index_of(const ParamRegistry& reg, int global_index) {
    // Registries are in global order with gaps (skipped experts): binary search.
    int lo = 0, hi = reg.size();
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      (reg[mid].global_index <= global_index ? lo : hi) = mid;
    }
    return lo;
  }
  template <class T>
  void flush(T* g, const ParamRegistry& reg, int kind) {
    Open& o = open_[kind];
    C& grp = group(kind);
    Bucket b;
    b.kind = kind;
    // Under ZeRO-1 a bucket is reduce-scattered onto the shards of the expert-data group;
    // dense buckets under expert parallelism are reduced over all replicas and all-gathered.
    const bool to_shards = sharded() && (kind == 1 || grid_.expert == 1);
    b.gather = !to_shards;
    if (to_shards) {
      const auto& s = shard_bounds(reg);
      b.bounds.resize(s.size());
      for (std::size_t i = 0; i < s.size(); ++i) b.bounds[i] = std::clamp(s[i], o.lo, o.hi);
    } else {
      b.bounds = comm::segments(o.lo, o.hi, grp.size());
    }
    const std::int64_t mine = b.bounds[grp.rank() + 1] - b.bounds[grp.rank()];
    if (grp.size() > 1) {
      counters_.bytes_sent += (o.hi - o.lo - mine) * static_cast<std::int64_t>(sizeof(T));
      b.pending = grp.ireduce_scatter_sum(g, std::span<const std::int64_t>(b.bounds), red_);
    }
    covered_ += o.hi - o.lo;
    buckets_.push_back(std::move(b));
    o.lo = o.hi = 0;
  }

  struct Bucket {
    std::vector<std::int64_t> bounds;
    comm::Pending pending;
    int kind = 0;  // 0: dense (replicas), 1: routed experts (expert-data group)
    bool gather = true;  // all-gathered after the reduce-scatter (not a ZeRO-1 shard)
  };
  struct Open {
    std::int64_t lo = 0, hi = 0;  // the bucket being filled (backward goes downwards)
  };

  ProcessGrid grid_;
  comm::Reduction red_;
  bool zero_;
  std::int64_t bucket_bytes_;
  C world_, replicas_, experts_, expert_data_, tensors_, stages_;
  std::vector<Bucket> buckets_;
  Open open_[2];
  std::int64_t covered_ = 0;
  std::optional<PowerSgd<float>> psgd_f_;
  std::optional<PowerSgd<double>> psgd_d_;
  double loss_scale_ = 0;
  mutable std::vector<std::int64_t> bounds_;  // shard_bounds' cache
  CommCounters counters_;
};

}  // namespace tmoe
