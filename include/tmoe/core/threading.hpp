#pragma once
// tmoe threads its own work: a parallel loop over a fixed list of independent items
// (row tiles, (batch, head) pairs, token chunks). What an item computes never depends on
// which thread runs it or how many threads there are, so results are bitwise identical
// for any thread count (DESIGN.md principle 5). Eigen's own threading stays off.
#include <cstdint>
#include <thread>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace tmoe {

inline int& thread_count_ref() {
  static int n = 0;  // 0: all hardware threads
  return n;
}

// Number of worker threads used by tmoe's parallel loops (0 = hardware concurrency).
inline void set_threads(int n) {
  thread_count_ref() = n;
#if defined(_OPENMP)
  omp_set_num_threads(n > 0 ? n : static_cast<int>(std::thread::hardware_concurrency()));
#endif
}
inline int threads() {
  const int n = thread_count_ref();
  return n > 0 ? n : static_cast<int>(std::thread::hardware_concurrency());
}

// fn(i) for i in [0, n); items must be independent.
template <class F>
void parallel_for(std::int64_t n, F&& fn) {
#if defined(_OPENMP)
  if (n > 1 && threads() > 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads())
    for (std::int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
#endif
  for (std::int64_t i = 0; i < n; ++i) fn(i);
}

}  // namespace tmoe
