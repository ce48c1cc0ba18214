// GFLOP/s of tmoe's CPU GEMM on the shapes one training step of the reference model uses,
// against one plain Eigen product of the same shape (no tiling): shows what the fixed
// tiles that make results batch- and thread-independent cost.
// Usage: bench_gemm_shapes [threads]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "tmoe/backend/cpu/cpu.hpp"

using namespace tmoe;
using Trans = backend::cpu::Trans;
using Clock = std::chrono::steady_clock;

namespace {
double time_it(auto&& fn) {
  fn();
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = Clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}
}  // namespace

int main(int argc, char** argv) {
  set_threads(argc > 1 ? std::atoi(argv[1]) : 1);
  struct Case {
    const char* what;
    Trans ta, tb;
    long m, n, k;
  };
  const Case cases[] = {
      {"qkv fwd   x Wᵀ", Trans::kNo, Trans::kYes, 2048, 768, 256},
      {"qkv dX    dY W", Trans::kNo, Trans::kNo, 2048, 256, 768},
      {"qkv dW    dYᵀ X", Trans::kYes, Trans::kNo, 768, 256, 2048},
      {"expert w1 fwd", Trans::kNo, Trans::kYes, 512, 512, 256},
      {"expert w2 fwd", Trans::kNo, Trans::kYes, 512, 256, 512},
      {"expert w1 dW", Trans::kYes, Trans::kNo, 512, 256, 512},
      {"expert w2 dW", Trans::kYes, Trans::kNo, 256, 512, 512},
      {"head fwd", Trans::kNo, Trans::kYes, 2048, 256, 256},
  };
  std::printf("%-16s %6s %6s %6s %12s %12s\n", "product", "m", "n", "k", "tmoe GF/s", "eigen GF/s");
  for (const auto& c : cases) {
    std::vector<float> a(c.m * c.k, 0.5f), b(c.k * c.n, 0.25f), out(c.m * c.n);
    const double fl = 2.0 * c.m * c.n * c.k;
    const double tt = time_it([&] {
      backend::Cpu::gemm<float>(c.ta, c.tb, c.m, c.n, c.k, 1.f, a.data(), b.data(), 0.f, out.data());
    });
    using M = Eigen::Matrix<float, -1, -1, Eigen::RowMajor>;
    Eigen::Map<M> A(a.data(), c.ta == Trans::kNo ? c.m : c.k, c.ta == Trans::kNo ? c.k : c.m);
    Eigen::Map<M> B(b.data(), c.tb == Trans::kNo ? c.k : c.n, c.tb == Trans::kNo ? c.n : c.k);
    Eigen::Map<M> C(out.data(), c.m, c.n);
    const double te = time_it([&] {
      if (c.ta == Trans::kNo && c.tb == Trans::kNo) C.noalias() = A * B;
      else if (c.ta == Trans::kNo) C.noalias() = A * B.transpose();
      else C.noalias() = A.transpose() * B;
    });
    std::printf("%-16s %6ld %6ld %6ld %12.1f %12.1f\n", c.what, c.m, c.n, c.k, fl / tt / 1e9, fl / te / 1e9);
  }
}
