#pragma once
// The one-process parallel strategy: no communication. It offers every call the Trainer
// makes of a strategy (see DataParallel for their meaning), each trivially.
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "tmoe/core/concepts.hpp"
#include "tmoe/parallel/data_parallel.hpp"

namespace tmoe {

struct Serial {
  static constexpr const char* name = "serial";
  int rank() const { return 0; }
  int size() const { return 1; }
  bool sharded() const { return false; }
  bool is_root() const { return true; }
  std::pair<std::int64_t, std::int64_t> shard(const ParamRegistry& reg) const { return {0, reg.total()}; }
  template <class T>
  void reduce_gradients(T*, const ParamRegistry&) {}
  template <class T>
  void gather_shards(T*, const ParamRegistry&) {}
  double sum(double v) const { return v; }
  void sum(double*, std::int64_t) const {}
  std::vector<double> gather(std::span<const double> v) const { return {v.begin(), v.end()}; }
  std::vector<double> gather_shard_values(std::span<const double> v) const { return {v.begin(), v.end()}; }
  void barrier() const {}
  bool agree(bool ok) const { return ok; }
  CommCounters& counters() { return counters_; }
  CommCounters counters_;
};
static_assert(ParallelStrategy<Serial>);

}  // namespace tmoe
