// Full training-step throughput (forward, backward, AdamW) of the reference MoE model, and
// its model FLOP utilisation against the SGEMM peak measured in the same run.
// Usage: bench_train_step [--threads N] [--steps S] [--warmup W] [--precision fp32|bf16|fp16]
//                         [key=value ...]
//   key=value overrides model.* / train.* fields (e.g. model.d_model=128, model.recompute=full).
// Prints one JSON line per thread setting, with the process's peak resident memory and the
// trainer's own memory report (run one process per precision/recompute setting to compare
// peaks).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>
#include <sys/resource.h>

#include "tmoe/io/yaml_config.hpp"
#include "tmoe/tmoe.hpp"
#include "gemm_peak.hpp"
#include "reference_model.hpp"

using namespace tmoe;
using Clock = std::chrono::steady_clock;

namespace {

using Block = TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, TopK>>;
using Model = DecoderLM<Block, RmsNorm>;
template <class P>
using Train = Trainer<Model, AdamW, P, Serial, backend::Cpu>;

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

template <class P>
void run(const Config& cfg, const BatchFn& batches, const std::vector<int>& thread_settings, std::int64_t steps,
         std::int64_t warmup) {
  const std::int64_t b = cfg.train.batch_size, t = cfg.train.seq_len;
  for (int th : thread_settings) {
    set_threads(th);
    const double peak = bench::sgemm_peak(th);
    Train<P> trainer(cfg);
    for (std::int64_t i = 0; i < warmup; ++i) trainer.train_step(batches);
    // Median step time: this machine is a VM whose speed drifts between runs by 10-15%,
    // and the median ignores the odd slow step.
    std::vector<double> times;
    double loss = 0;
    for (std::int64_t i = 0; i < steps; ++i) {
      const auto t0 = Clock::now();
      loss = trainer.train_step(batches).loss;
      times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::sort(times.begin(), times.end());
    const double sec = times[times.size() / 2] * static_cast<double>(steps);
    const double tok_s = static_cast<double>(steps * b * t) / sec;
    const double flops = trainer.model().flops_per_token(t);
    const double mfu = tok_s * flops / (peak * 1e9);
    const MemoryReport mem = trainer.memory_report();
    auto mib = [](std::int64_t v) { return static_cast<double>(v) / (1024.0 * 1024.0); };
    std::printf("{\"impl\": \"tmoe\", \"precision\": \"%s\", \"recompute\": \"%s\", \"threads\": %d, "
                "\"tokens_per_s\": %.1f, \"step_ms\": %.1f, \"model_gflop_per_token\": %.5f, \"achieved_gflops\": %.2f, "
                "\"sgemm_peak_gflops\": %.2f, \"mfu\": %.4f, \"loss\": %.4f, \"peak_rss_mib\": %.1f, "
                "\"weights_mib\": %.1f, \"master_mib\": %.1f, \"grads_mib\": %.1f, \"optimizer_mib\": %.1f, "
                "\"activations_mib\": %.1f}\n",
                P::name, cfg.model.recompute.c_str(), th, tok_s, 1e3 * sec / static_cast<double>(steps), flops / 1e9,
                tok_s * flops / 1e9, peak, mfu, loss, peak_rss_mib(), mib(mem.params), mib(mem.master), mib(mem.grads),
                mib(mem.optimizer), mib(mem.activations));
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> thread_settings{1, 2};
  std::int64_t steps = 9, warmup = 5;
  std::string precision = "fp32";
  std::vector<const char*> overrides{argv[0]};
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) thread_settings = {std::atoi(argv[++i])};
    else if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) steps = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--warmup") && i + 1 < argc) warmup = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--precision") && i + 1 < argc) precision = argv[++i];
    else overrides.push_back(argv[i]);
  }
  try {
    Config cfg;
    // The reference shape of the benchmark (issue 2): vocab 256, context 256, d_model 256,
    // 4 layers, 8 heads, MoE in every layer with 8 SwiGLU experts of hidden 512, top-2, batch 8.
    bench::reference_model(cfg);
    cfg.train.batch_size = 8;
    for (std::size_t i = 1; i < overrides.size(); ++i) io::apply_override(cfg, overrides[i]);
    cfg.validate();
    const std::int64_t b = cfg.train.batch_size, t = cfg.train.seq_len;

    const BatchFn batches = bench::reference_batches(cfg);

    std::printf("# tmoe bench_train_step: vocab %lld ctx %lld d_model %lld layers %lld heads %lld experts %lld "
                "top-%lld d_expert %lld batch %lld x %lld\n",
                (long long)cfg.model.vocab_size, (long long)cfg.model.context, (long long)cfg.model.d_model,
                (long long)cfg.model.n_layers, (long long)cfg.model.n_heads, (long long)cfg.model.n_experts,
                (long long)cfg.model.top_k, (long long)cfg.model.d_expert, (long long)b, (long long)t);
    if (precision == "fp32") run<Fp32>(cfg, batches, thread_settings, steps, warmup);
    else if (precision == "bf16") run<MixedBf16>(cfg, batches, thread_settings, steps, warmup);
    else if (precision == "fp16") run<MixedFp16>(cfg, batches, thread_settings, steps, warmup);
    else throw Error("precision '" + precision + "'", "--precision", "fp32, bf16 or fp16");
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
}
