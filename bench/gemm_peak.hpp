#pragma once
// The machine's matrix-multiply peak as DESIGN.md defines it for MFU: plain Eigen SGEMM on
// 1024^3 (no tmoe tiling), one independent product per thread running concurrently, so the
// all-thread figure is the sum of what each core reaches. Best of 5, in GFLOP/s.
#include <Eigen/Dense>
#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

namespace tmoe::bench {

inline double sgemm_peak(int nthreads) {
  using M = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Clock = std::chrono::steady_clock;
  const int n = 1024;
  std::vector<M> a(nthreads, M::Constant(n, n, 0.5f)), b(nthreads, M::Constant(n, n, 0.25f)), c(nthreads, M(n, n));
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    std::vector<std::thread> ts;
    for (int i = 0; i < nthreads; ++i) ts.emplace_back([&, i] { c[i].noalias() = a[i] * b[i]; });
    for (auto& t : ts) t.join();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, 2.0 * n * n * n * nthreads / s / 1e9);
  }
  return best;
}

}  // namespace tmoe::bench
