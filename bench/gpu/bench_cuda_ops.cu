// GPU benchmark of backend::Cuda's products at the shapes of the issue-7 benchmark model
// (d_model 1024, 16 SwiGLU experts of hidden 2816, top-2, batch 16 x 1024 tokens): the
// cuBLAS BF16 and FP32 GEMM peaks measured here (the MFU denominators), and the experts'
// three forward products as one grouped call against one call per expert, with uniform
// and skewed routing. One JSON line per measurement.
//
// usage: bench_cuda_ops [--reps N]
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tmoe/backend/cuda/gemm.cuh"
#include "tmoe/cuda.hpp"

namespace cu = tmoe::backend::cuda;
using cu::Trans;

namespace {

// Median milliseconds of `reps` timed runs of fn after 3 warm-up runs.
template <class F>
double time_ms(int reps, F&& fn) {
  auto& ctx = cu::Context::current();
  for (int i = 0; i < 3; ++i) fn();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    cu::Event a, b;
    a.record(ctx.stream());
    fn();
    b.record(ctx.stream());
    b.synchronize();
    ms.push_back(b.since(a));
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

template <class T>
double gemm_peak_tflops(std::int64_t n, int reps) {
  cu::DeviceTensor<T> a(tmoe::Shape{n * n}), b(tmoe::Shape{n * n}), c(tmoe::Shape{n * n});
  const double ms = time_ms(reps, [&] {
    cu::GemmOps::gemm<T>(Trans::kNo, Trans::kYes, n, n, n, cu::store<T>(1.0f), a.data(), b.data(), cu::store<T>(0.0f), c.data());
  });
  return 2.0 * n * n * n / (ms * 1e-3) / 1e12;
}

// The forward of E SwiGLU experts over `rows[e]` tokens each: h1 = x W1ᵀ, h3 = x W3ᵀ,
// y = h W2ᵀ, as three grouped calls (or loops).
struct Experts {
  std::int64_t d, hidden;
  std::vector<std::int64_t> rows;
  cu::DeviceTensor<__nv_bfloat16> x, w1, w3, w2, h1, h3, y;
  Experts(std::int64_t d_, std::int64_t hidden_, std::vector<std::int64_t> rows_) : d(d_), hidden(hidden_), rows(std::move(rows_)) {
    std::int64_t total = 0;
    for (auto r : rows) total += r;
    const auto e = static_cast<std::int64_t>(rows.size());
    x.resize(tmoe::Shape{total * d});
    y.resize(tmoe::Shape{total * d});
    h1.resize(tmoe::Shape{total * hidden});
    h3.resize(tmoe::Shape{total * hidden});
    w1.resize(tmoe::Shape{e * hidden * d});
    w3.resize(tmoe::Shape{e * hidden * d});
    w2.resize(tmoe::Shape{e * d * hidden});
  }
  std::int64_t total() const {
    std::int64_t t = 0;
    for (auto r : rows) t += r;
    return t;
  }
  void run(bool grouped) {
    using G = cu::GemmArgs<__nv_bfloat16>;
    std::vector<G> p1, p3, p2;
    std::int64_t off = 0;
    for (std::size_t e = 0; e < rows.size(); ++e) {
      const std::int64_t r = rows[e], ei = static_cast<std::int64_t>(e);
      auto mk = [&](const __nv_bfloat16* a, const __nv_bfloat16* b, __nv_bfloat16* c, std::int64_t n, std::int64_t k) {
        G g;
        g.ta = Trans::kNo, g.tb = Trans::kYes, g.m = r, g.n = n, g.k = k;
        g.alpha = cu::store<__nv_bfloat16>(1.0f), g.beta = cu::store<__nv_bfloat16>(0.0f);
        g.a = a, g.lda = k, g.b = b, g.ldb = k, g.c = c, g.ldc = n;
        return g;
      };
      p1.push_back(mk(x.data() + off * d, w1.data() + ei * hidden * d, h1.data() + off * hidden, hidden, d));
      p3.push_back(mk(x.data() + off * d, w3.data() + ei * hidden * d, h3.data() + off * hidden, hidden, d));
      p2.push_back(mk(h1.data() + off * hidden, w2.data() + ei * d * hidden, y.data() + off * d, d, hidden));
      off += r;
    }
    for (auto* p : {&p1, &p3, &p2}) {
      if (grouped) cu::GemmOps::gemm_grouped<__nv_bfloat16>(*p);
      else cu::GemmOps::gemm_grouped_loop<__nv_bfloat16>(*p);
    }
  }
  double flops() const { return 2.0 * static_cast<double>(total()) * d * hidden * 3; }
};

}  // namespace

int main(int argc, char** argv) {
  int reps = 20;
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
  try {
    auto& ctx = cu::Context::current();
    std::printf("{\"device\": \"%s\", \"sm\": %d, \"sms\": %d}\n", ctx.info().name.c_str(), ctx.info().capability(), ctx.info().sms);
    const double bf16 = gemm_peak_tflops<__nv_bfloat16>(8192, reps);
    const double fp32 = gemm_peak_tflops<float>(4096, reps);
    std::printf("{\"bench\": \"gemm_peak\", \"bf16_tflops\": %.1f, \"fp32_tflops\": %.1f}\n", bf16, fp32);
    std::fflush(stdout);
    const std::int64_t tokens = 16 * 1024, k = 2, e = 16;
    std::vector<std::int64_t> uniform(e, tokens * k / e), skewed(e);
    // Skewed: expert i gets a share proportional to (i + 1), the same total.
    std::int64_t left = tokens * k;
    for (std::int64_t i = 0; i < e; ++i) {
      skewed[i] = i + 1 == e ? left : tokens * k * (i + 1) / (e * (e + 1) / 2);
      left -= skewed[i];
    }
    for (auto& [name, rows] : {std::pair{"uniform", uniform}, std::pair{"skewed", skewed}}) {
      Experts ex(1024, 2816, rows);
      for (bool grouped : {true, false}) {
        const double ms = time_ms(reps, [&] { ex.run(grouped); });
        const double tf = ex.flops() / (ms * 1e-3) / 1e12;
        std::printf("{\"bench\": \"experts_forward\", \"routing\": \"%s\", \"mode\": \"%s\", \"ms\": %.3f, \"tflops\": %.1f, "
                    "\"of_bf16_peak\": %.3f}\n",
                    name, grouped ? "grouped" : "loop", ms, tf, tf / bf16);
        std::fflush(stdout);
      }
    }
    std::printf("{\"allocator\": {\"raw_allocs\": %lld, \"hits\": %lld, \"peak_mib\": %.1f}}\n",
                static_cast<long long>(ctx.allocator().stats().raw_allocs), static_cast<long long>(ctx.allocator().stats().hits),
                ctx.allocator().stats().peak_in_use / 1048576.0);
  } catch (const tmoe::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
