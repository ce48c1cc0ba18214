// train_moe_lm — trains a Mixture-of-Experts decoder LM on a text corpus (by default the
// fortunes of Debian's `fortunes` package), byte-level, on the CPU.
//
//   train_moe_lm [--config FILE] [section.key=value ...]
//
// The model is composed at compile time below; every number comes from the config.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "tmoe/data/text_corpus.hpp"
#include "tmoe/io/safetensors.hpp"
#include "tmoe/io/yaml_config.hpp"
#include "tmoe/tmoe.hpp"

using namespace tmoe;

using Block = TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, TopK>>;
using Model = DecoderLM<Block, RmsNorm>;
using Train = Trainer<Model, AdamW, Fp32, Serial, backend::Cpu>;

namespace {

std::string printable(const std::vector<std::int32_t>& toks) {
  std::string s;
  for (auto t : toks) s += static_cast<char>(t);
  return s;
}

// Min and max expert load over all MoE layers, as a multiple of the mean load.
std::pair<double, double> load_spread(const StepStats& st) {
  double lo = 1e300, hi = 0;
  for (const auto& layer : st.expert_counts) {
    if (layer.empty()) continue;
    double mean = 0;
    for (auto c : layer) mean += static_cast<double>(c);
    mean /= static_cast<double>(layer.size());
    for (auto c : layer) {
      lo = std::min(lo, static_cast<double>(c) / mean);
      hi = std::max(hi, static_cast<double>(c) / mean);
    }
  }
  return {lo > hi ? 0 : lo, hi};
}

int run(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      std::printf("usage: train_moe_lm [--config FILE] [section.key=value ...]\n\nkeys:\n%s",
                  io::describe_fields().c_str());
      return 0;
    }
  const Config cfg = io::load_config(argc, argv);
  const auto& tc = cfg.train;
  set_threads(static_cast<int>(tc.threads));

  const auto t_load = std::chrono::steady_clock::now();
  const data::TextCorpus corpus = data::load_text_corpus(cfg.data.corpus, cfg.data.val_fraction);
  data::require_tokens(corpus, tc.seq_len + 1);
  if (cfg.model.vocab_size < 256)
    throw Error(detail::cat("vocab_size ", cfg.model.vocab_size, " cannot hold byte tokens"), "model.vocab_size",
                ">= 256 for a byte-level corpus");
  const double entropy = data::unigram_entropy(corpus.train);
  std::printf("corpus %s: %zu files, %zu train records (%zu bytes), %zu validation records (%zu bytes)\n",
              cfg.data.corpus.c_str(), corpus.files, corpus.records_train, corpus.train.size(), corpus.records_val,
              corpus.val.size());
  std::printf("unigram entropy of the training bytes: %.4f nats/byte (target val loss <= 0.65 x = %.4f)\n", entropy,
              0.65 * entropy);

  Train trainer(cfg);
  auto& model = trainer.model();
  std::printf("model: %s<%s<%s<%s>, %s<%s, %s>>, %s>, %lld parameters (%.2f M), %d threads\n", Model::name,
              Block::name, CausalAttention<Rope>::name, Rope::name, MoE<SwiGLU, TopK>::name, SwiGLU::name, TopK::name,
              RmsNorm::name, static_cast<long long>(model.registry().count()),
              static_cast<double>(model.registry().count()) / 1e6, threads());
  std::printf("training: %lld steps x %lld micro-batches x (%lld x %lld) tokens, lr %.2g, warm-up %.0f%%\n",
              static_cast<long long>(tc.steps), static_cast<long long>(tc.grad_accum),
              static_cast<long long>(tc.batch_size), static_cast<long long>(tc.seq_len), tc.lr,
              100 * tc.warmup_fraction);

  const data::BatchSampler train_sampler(corpus.train, tc.seed, tc.batch_size, tc.seq_len);
  const data::BatchSampler val_sampler(corpus.val, tc.seed, tc.batch_size, tc.seq_len);
  const std::int64_t eval_count = std::min<std::int64_t>(tc.eval_batches, val_sampler.eval_batches_available());
  BatchFn train_batches = [&](std::int64_t i, std::int32_t* in, std::int32_t* tg) { train_sampler.train_batch(i, in, tg); };
  BatchFn val_batches = [&](std::int64_t i, std::int32_t* in, std::int32_t* tg) { val_sampler.eval_batch(i, in, tg); };

  std::ofstream metrics;
  if (!tc.metrics_file.empty()) {
    metrics.open(tc.metrics_file, std::ios::trunc);
    if (!metrics) throw Error("cannot open the metrics file for writing", tc.metrics_file, "a writable path");
  }

  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  auto t_int = t0;
  std::int64_t tok_int = 0;
  double val = std::nan(""), loss_acc = 0;
  std::int64_t loss_n = 0, last = 0;
  std::printf("%6s %10s %10s %9s %9s %9s %14s\n", "step", "train", "val", "lr", "gnorm", "tok/s", "load min/max");
  for (std::int64_t s = 0; s < tc.steps; ++s) {
    const StepStats st = trainer.train_step(train_batches);
    loss_acc += st.ce;
    ++loss_n;
    tok_int += st.tokens;
    last = s + 1;
    const bool final_step = s + 1 == tc.steps;
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    const bool out_of_time = tc.time_limit_s > 0 && elapsed > tc.time_limit_s;
    if ((s + 1) % tc.eval_interval == 0 || final_step || out_of_time) val = trainer.evaluate(val_batches, eval_count);
    if ((s + 1) % tc.log_interval == 0 || final_step || out_of_time) {
      const auto now = Clock::now();
      const double tps = static_cast<double>(tok_int) / std::chrono::duration<double>(now - t_int).count();
      const auto [lo, hi] = load_spread(st);
      std::printf("%6lld %10.4f %10.4f %9.2e %9.3f %9.0f %6.2f / %5.2f\n", static_cast<long long>(s + 1),
                  loss_acc / loss_n, val, st.lr, st.grad_norm, tps, lo, hi);
      std::fflush(stdout);
      if (metrics) {
        metrics << "{\"step\": " << s + 1 << ", \"train_loss\": " << loss_acc / loss_n << ", \"ce\": " << st.ce
                << ", \"aux\": " << st.aux << ", \"val_loss\": " << (std::isnan(val) ? std::string("null") : std::to_string(val))
                << ", \"lr\": " << st.lr << ", \"grad_norm\": " << st.grad_norm << ", \"tokens_per_s\": " << tps
                << ", \"elapsed_s\": " << elapsed << ", \"expert_load_min\": " << lo << ", \"expert_load_max\": " << hi
                << ", \"expert_counts\": [";
        for (std::size_t l = 0; l < st.expert_counts.size(); ++l) {
          metrics << (l ? ", [" : "[");
          for (std::size_t e = 0; e < st.expert_counts[l].size(); ++e) metrics << (e ? ", " : "") << st.expert_counts[l][e];
          metrics << "]";
        }
        metrics << "]}\n";
        metrics.flush();
      }
      t_int = now;
      tok_int = 0;
      loss_acc = 0;
      loss_n = 0;
    }
    if (out_of_time) {
      std::printf("time limit of %.0f s reached after %lld steps\n", tc.time_limit_s, static_cast<long long>(s + 1));
      break;
    }
  }
  const double train_s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("\ntrained %lld steps in %.1f s (setup %.1f s)\n", static_cast<long long>(last), train_s,
              std::chrono::duration<double>(t0 - t_load).count());
  std::printf("final validation loss %.4f nats/byte = %.3f x unigram entropy %.4f (%s 0.65)\n", val, val / entropy,
              entropy, val / entropy <= 0.65 ? "<=" : ">");
  if (!tc.save_weights.empty()) {
    io::save_params(tc.save_weights, model.registry(), model.params(), {{"format", "tmoe"}});
    std::printf("weights written to %s\n", tc.save_weights.c_str());
  }
  const std::string prompt_text = "The ";
  std::vector<std::int32_t> prompt(prompt_text.begin(), prompt_text.end());
  const auto out = trainer.generate(prompt, tc.sample_tokens, tc.sample_temperature, tc.seed);
  std::printf("\nsample (temperature %.2f):\n%s%s\n", tc.sample_temperature, prompt_text.c_str(), printable(out).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tmoe: unexpected error: %s\n", e.what());
    return 3;
  }
}
