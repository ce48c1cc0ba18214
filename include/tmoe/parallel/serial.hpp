#pragma once
// The one-process parallel strategy: no communication. Later strategies (data, expert,
// tensor, pipeline parallel over a Comm) take its place in the Trainer.
#include <cstdint>

#include "tmoe/core/concepts.hpp"

namespace tmoe {

struct Serial {
  static constexpr const char* name = "serial";
  int rank() const { return 0; }
  int size() const { return 1; }
  template <class T>
  void reduce_gradients(T*, std::int64_t) {}
  double sum(double v) const { return v; }
};
static_assert(ParallelStrategy<Serial>);

}  // namespace tmoe
