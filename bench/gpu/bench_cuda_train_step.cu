// GPU training-step benchmark at the issue-7 shapes: vocab 32000, context 1024, d_model
// 1024, 8 layers, 16 heads, 16 SwiGLU experts of hidden 2816, top-2, batch 16 x 1024 tokens,
// MixedBf16 (bf16 storage emulated as on the CPU: fp32 buffers rounded after each op),
// AdamW. Two measurements, medians over the timed steps:
//  - the whole Trainer::train_step (the model on the GPU, the optimizer offloaded to the host:
//    gradients down, weights up every step);
//  - forward + backward of the model alone (what the GPU does).
// MFU = model FLOPs/token (6 N_active + 6 L T C) x tokens/s over the cuBLAS BF16 GEMM peak
// measured here (8192^3). One JSON line each.
//
// usage: bench_cuda_train_step [--steps N] [--warmup N] [--batch B] [--layers L]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tmoe/cuda.hpp"

using namespace tmoe;
namespace cu = tmoe::backend::cuda;

using Model = DecoderLM<TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, TopK, Dropless, Balancing<AuxLoss, ZLoss>>>, RmsNorm>;
using Train = Trainer<Model, AdamW, MixedBf16, Serial, backend::Cuda>;

namespace {

double bf16_peak_tflops() {
  const std::int64_t n = 8192;
  cu::DeviceTensor<__nv_bfloat16> a(Shape{n * n}), b(Shape{n * n}), c(Shape{n * n});
  auto& ctx = cu::Context::current();
  std::vector<float> ms;
  for (int i = 0; i < 13; ++i) {
    cu::Event e0, e1;
    e0.record(ctx.stream());
    cu::GemmOps::gemm<__nv_bfloat16>(cu::Trans::kNo, cu::Trans::kYes, n, n, n, cu::store<__nv_bfloat16>(1.0f), a.data(),
                                     b.data(), cu::store<__nv_bfloat16>(0.0f), c.data());
    e1.record(ctx.stream());
    e1.synchronize();
    if (i >= 3) ms.push_back(e1.since(e0));
  }
  std::sort(ms.begin(), ms.end());
  return 2.0 * n * n * n / (ms[ms.size() / 2] * 1e-3) / 1e12;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 5, warmup = 2;
  Config cfg;
  auto& m = cfg.model;
  m.vocab_size = 32000, m.context = 1024, m.d_model = 1024, m.n_layers = 8, m.n_heads = 16;
  m.n_experts = 16, m.top_k = 2, m.d_expert = 2816, m.tie_embeddings = false;
  auto& t = cfg.train;
  t.batch_size = 16, t.seq_len = 1024, t.grad_accum = 1, t.lr = 1e-4, t.warmup_steps = 1, t.precision = "bf16";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::atoi(argv[++i]) : 0; };
    if (a == "--steps") steps = next();
    else if (a == "--warmup") warmup = next();
    else if (a == "--batch") t.batch_size = next();
    else if (a == "--layers") m.n_layers = next();
  }
  t.steps = warmup + steps;
  try {
    auto& ctx = cu::Context::current();
    const double peak = bf16_peak_tflops();
    std::printf("{\"device\": \"%s\", \"bf16_peak_tflops\": %.1f}\n", ctx.info().name.c_str(), peak);
    std::fflush(stdout);
    const std::int64_t n = t.batch_size * t.seq_len;
    auto batch = [&](std::int64_t i, std::int32_t* in, std::int32_t* tg) {
      std::uint32_t x = 12345u + static_cast<std::uint32_t>(i) * 7919u;
      for (std::int64_t j = 0; j < n; ++j) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        in[j] = static_cast<std::int32_t>(x % static_cast<std::uint32_t>(m.vocab_size));
        tg[j] = static_cast<std::int32_t>((x >> 7) % static_cast<std::uint32_t>(m.vocab_size));
      }
    };
    Train tr(cfg);
    const double flops = tr.model().flops_per_token(t.seq_len);
    std::vector<double> step_s, fb_s;
    double loss = 0;
    for (int s = 0; s < warmup + steps; ++s) {
      const auto t0 = std::chrono::steady_clock::now();
      const auto st = tr.train_step(batch);
      ctx.synchronize();
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      loss = st.loss;
      if (s >= warmup) step_s.push_back(sec);
    }
    // The model alone: forward + backward on the device.
    std::vector<std::int32_t> in(static_cast<std::size_t>(n)), tg(in.size());
    batch(0, in.data(), tg.data());
    auto& model = tr.model();
    model.set_mode(true, t.seed, 0, 0);
    for (int s = 0; s < warmup + steps; ++s) {
      const auto t0 = std::chrono::steady_clock::now();
      model.zero_grad();
      model.forward(in.data(), tg.data(), t.batch_size, t.seq_len);
      model.backward(1.0);
      ctx.synchronize();
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (s >= warmup) fb_s.push_back(sec);
    }
    const double ts = static_cast<double>(n) / median(step_s), tf = static_cast<double>(n) / median(fb_s);
    const auto al = ctx.allocator().stats();
    std::printf("{\"bench\": \"train_step\", \"precision\": \"MixedBf16 (bf16 storage emulated)\", \"optimizer\": \"adamw, host\", "
                "\"tokens_per_s\": %.1f, \"step_ms\": %.1f, \"mfu\": %.4f, \"loss\": %.4f, \"model_gflop_per_token\": %.3f}\n",
                ts, 1e3 * median(step_s), ts * flops / 1e12 / peak, loss, flops / 1e9);
    std::printf("{\"bench\": \"forward_backward\", \"tokens_per_s\": %.1f, \"ms\": %.1f, \"mfu\": %.4f, "
                "\"device_peak_mib\": %.0f, \"cudaMalloc_calls\": %lld}\n",
                tf, 1e3 * median(fb_s), tf * flops / 1e12 / peak, al.peak_in_use / 1048576.0,
                static_cast<long long>(al.raw_allocs));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
