#pragma once
// The training program of train_moe_lm, written once for any model composition and backend:
// each preset translation unit (preset_*.cpp on the CPU, preset_*_cuda.cu on the GPU)
// instantiates train_on<Model, Precision, Backend> with its own Model type, and main.cpp
// picks one by the config key model.preset, train.precision and --backend. The composition
// is fixed at compile time; every number comes from the config.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "tmoe/data/active_learning.hpp"
#include "tmoe/data/bpe.hpp"
#include "tmoe/data/records.hpp"
#include "tmoe/data/sampler.hpp"
#include "tmoe/data/shards.hpp"
#include "tmoe/io/checkpoint.hpp"
#include "tmoe/io/safetensors.hpp"
#include "tmoe/io/yaml_config.hpp"
#include "tmoe/parallel/comm/mpi.hpp"
#if defined(__CUDACC__)
#include "tmoe/cuda.hpp"  // a .cu translation unit: the CUDA backend, no Eigen
#else
#include "tmoe/tmoe.hpp"
#endif
#include "tmoe/train/run.hpp"

#include "presets.hpp"

namespace train_moe_lm {

using namespace tmoe;


// Min and max expert load over all MoE layers, as a multiple of the mean load.
inline std::pair<double, double> load_spread(const StepStats& st) {
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

// Unigram entropy (nats/token) of the training shards: the loss of a model that knows
// only token frequencies.
inline double unigram_entropy(const data::TokenDataset& ds) {
  std::vector<std::uint64_t> counts(ds.manifest.vocab_size, 0);
  std::uint64_t n = 0;
  std::vector<std::int32_t> buf(1 << 16);
  for (const auto& s : ds.train)
    for (std::uint64_t at = 0; at < s.size(); at += buf.size()) {
      const std::uint64_t len = std::min<std::uint64_t>(buf.size(), s.size() - at);
      s.copy(at, len, buf.data());
      for (std::uint64_t i = 0; i < len; ++i) ++counts[static_cast<std::size_t>(buf[i])];
      n += len;
    }
  double h = 0;
  for (auto c : counts)
    if (c) h -= static_cast<double>(c) / static_cast<double>(n) * std::log(static_cast<double>(c) / static_cast<double>(n));
  return h;
}

// Turns tokens back into text: bytes, or the dataset's BPE tokenizer.
struct Detokenizer {
  std::optional<data::BpeTokenizer> bpe;
  std::string operator()(const std::vector<std::int32_t>& toks) const {
    if (bpe) return bpe->decode(toks);
    std::string s;
    for (auto t : toks) s += static_cast<char>(t);
    return s;
  }
  std::vector<std::int32_t> encode(const std::string& text) const {
    if (bpe) return bpe->encode(text);
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    return {p, p + text.size()};
  }
};

inline nlohmann::json data_state(const data::TokenDataset& ds, const data::ShardSampler& sampler, std::int64_t micro_batches) {
  const auto pos = sampler.position(micro_batches);
  return {{"fingerprint", ds.fingerprint()}, {"folder", ds.folder}, {"epoch", pos.epoch}, {"window_in_epoch", pos.index},
          {"windows_per_epoch", sampler.train_windows()}};
}

// One line of the metrics JSON file: the step's losses and, per MoE layer, its routing
// statistics (tokens and drops per expert, router entropy, selection bias, balancing terms)
// — the input of the expert-load heat map.
inline void write_metrics(std::ostream& out, const StepStats& st, const FitProgress& p, double lo, double hi) {
  auto num = [](double v) { return std::isfinite(v) ? std::to_string(v) : std::string("null"); };
  out << "{\"step\": " << p.step << ", \"train_loss\": " << num(p.train_loss) << ", \"ce\": " << num(st.ce)
      << ", \"aux\": " << num(st.aux) << ", \"val_loss\": " << num(p.val_loss) << ", \"lr\": " << st.lr
      << ", \"grad_norm\": " << num(st.grad_norm) << ", \"loss_scale\": " << st.loss_scale
      << ", \"skipped\": " << (st.skipped ? "true" : "false") << ", \"micro_batches\": " << st.micro_batches
      << ", \"tokens_per_s\": " << p.tokens_per_s
      << ", \"elapsed_s\": " << p.elapsed_s << ", \"expert_load_min\": " << lo << ", \"expert_load_max\": " << hi
      << ", \"expert_counts\": [";
  for (std::size_t l = 0; l < st.expert_counts.size(); ++l) {
    out << (l ? ", [" : "[");
    for (std::size_t e = 0; e < st.expert_counts[l].size(); ++e) out << (e ? ", " : "") << st.expert_counts[l][e];
    out << "]";
  }
  out << "], \"moe\": [";
  bool first = true;
  for (std::size_t l = 0; l < st.moe.size(); ++l) {
    const MoEStats& m = st.moe[l];
    if (m.tokens.empty()) continue;
    out << (first ? "" : ", ") << "{\"layer\": " << l << ", \"tokens\": [";
    first = false;
    for (std::size_t e = 0; e < m.tokens.size(); ++e) out << (e ? ", " : "") << m.tokens[e];
    out << "], \"dropped\": [";
    for (std::size_t e = 0; e < m.dropped.size(); ++e) out << (e ? ", " : "") << m.dropped[e];
    out << "], \"router_entropy\": " << num(m.entropy) << ", \"bias\": [";
    for (std::size_t e = 0; e < m.bias.size(); ++e) out << (e ? ", " : "") << num(m.bias[e]);
    out << "]";
    for (const auto& [name, value] : m.terms) out << ", \"" << name << "\": " << num(value);
    out << "}";
  }
  out << "]}\n";
}

template <class Model, class Precision, class Backend>
int train_on(const Options& opt) {
  // The optimizer is a run-time choice (train.optimizer) among the standard rules.
  // One program for one process and for `mpirun -np N`: the grid comes from the config's
  // parallel section (one process is a grid of one). On the GPU: one process for now.
  constexpr bool kCpu = std::is_same_v<typename Backend::Space, HostSpace>;
  using Parallel = std::conditional_t<kCpu, DataParallel<comm::Mpi>, Serial>;
  using Train = Trainer<Model, StandardOptimizers, Precision, Parallel, Backend>;
  const Config& cfg = opt.cfg;
  comm::Mpi world;
  Parallel parallel = [&] {
    if constexpr (kCpu) {
      return Parallel(world, cfg);  // checks the grid against the world and the model
    } else {
      if (world.size() > 1 || cfg.parallel.data * cfg.parallel.expert * cfg.parallel.tensor * cfg.parallel.pipeline > 1)
        throw Error(detail::cat("--backend cuda with ", world.size(), " ranks and the grid of the parallel section"),
                    "--backend cuda", "one process and parallel.* = 1 (distributed GPU training is not wired yet)");
      return Parallel{};
    }
  }();
  const bool root = world.rank() == 0;
  // The first rank speaks for the job; the others print only their errors (stderr).
  if (!root && !std::freopen("/dev/null", "w", stdout))
    throw Error("cannot silence stdout", "rank output", "a writable /dev/null");
  if (!opt.select_spec.empty() && world.size() > 1)
    throw Error(detail::cat("--select under ", world.size(), " ranks"), "command line", "--select in one process");
  const std::string& select_spec = opt.select_spec;
  data::ActiveLearningConfig select = opt.select;
  const auto& tc = cfg.train;
  set_threads(static_cast<int>(tc.threads));

  const auto t_load = std::chrono::steady_clock::now();
  if (cfg.data.shards.empty())
    throw Error("no token shards given", "data.shards",
                "a folder written by tmoe-prep, e.g. `tmoe-prep --out data/fortunes` then data.shards=data/fortunes");
  const data::TokenDataset ds = data::TokenDataset::open(cfg.data.shards);
  if (ds.manifest.vocab_size > static_cast<std::uint64_t>(cfg.model.vocab_size))
    throw Error(detail::cat("the dataset's vocabulary has ", ds.manifest.vocab_size, " tokens, the model's ",
                            cfg.model.vocab_size),
                "model.vocab_size", detail::cat(">= ", ds.manifest.vocab_size));
  Detokenizer detok;
  if (!ds.manifest.tokenizer_file.empty())
    detok.bpe = data::BpeTokenizer::load((std::filesystem::path(ds.folder) / ds.manifest.tokenizer_file).string());
  const data::ShardSampler sampler(ds, tc.seed, tc.batch_size, tc.seq_len);
  const std::int64_t eval_count = std::min<std::int64_t>(tc.eval_batches, sampler.eval_batches_available());
  if (eval_count == 0)
    throw Error(detail::cat("the validation shards hold ", sampler.val_windows(), " windows of ", tc.seq_len + 1,
                            " tokens, fewer than one batch of ", tc.batch_size),
                cfg.data.shards, "a larger validation split (tmoe-prep --val-fraction) or a smaller batch");
  const double entropy = unigram_entropy(ds);
  std::uint64_t train_tokens = 0, val_tokens = 0;
  for (const auto& s : ds.manifest.train) train_tokens += s.tokens;
  for (const auto& s : ds.manifest.val) val_tokens += s.tokens;
  std::printf("data %s: %s tokens (vocabulary %llu), %llu train tokens in %zu shards (%llu windows), %llu val tokens\n",
              ds.folder.c_str(), detok.bpe ? "BPE" : "byte", static_cast<unsigned long long>(ds.manifest.vocab_size),
              static_cast<unsigned long long>(train_tokens), ds.train.size(),
              static_cast<unsigned long long>(sampler.train_windows()), static_cast<unsigned long long>(val_tokens));
  std::printf("unigram entropy of the training tokens: %.4f nats/token (target val loss <= 0.65 x = %.4f)\n", entropy,
              0.65 * entropy);

  Train trainer(cfg, std::move(parallel));
  auto& model = trainer.model();
  using Ffn = typename Model::block_policy::ffn_policy;
  std::int64_t moe_layers = 0;
  for (std::int64_t l = 0; l < cfg.model.n_layers; ++l) moe_layers += cfg.model.is_moe_layer(l);
  const std::int64_t n_params = trainer.parameter_count();  // the whole model's, on any grid
  std::printf("model: preset %s = %s<%s, %s>, expert %s, router %s, capacity %s; %lld of %lld layers MoE, %lld "
              "shared experts; %lld parameters (%.2f M), %d threads\n",
              opt.preset.c_str(), Model::name, Model::block_policy::name, Model::norm_policy::name,
              Ffn::expert_policy::name, Ffn::router_policy::name, Ffn::capacity_policy::name,
              static_cast<long long>(moe_layers), static_cast<long long>(cfg.model.n_layers),
              static_cast<long long>(cfg.model.n_shared_experts), static_cast<long long>(n_params),
              static_cast<double>(n_params) / 1e6, threads());
  if constexpr (kCpu) {
    std::printf("backend cpu; grid: %d ranks = %s; %s reduction%s%s, gradient buckets of %.3g MiB\n", world.size(),
                trainer.parallel().grid().describe().c_str(), cfg.parallel.reduction.c_str(),
                trainer.parallel().sharded() ? ", ZeRO-1 (optimizer state and master weights sharded)" : "",
                cfg.parallel.powersgd_rank > 0 ? detail::cat(", PowerSGD rank ", cfg.parallel.powersgd_rank).c_str() : "",
                cfg.parallel.bucket_mb);
  } else {
#if defined(__CUDACC__)
    std::printf("backend cuda on %s; one process; the optimizer step runs on the host (weights and gradients copied "
                "each step)\n", backend::cuda::Context::current().info().name.c_str());
#endif
  }
  const MemoryReport mem = trainer.memory_report();
  auto mib = [](std::int64_t b) { return static_cast<double>(b) / (1024.0 * 1024.0); };
  std::printf("precision %s (%s storage), optimizer %s, schedule %s, recompute %s; memory per rank: weights %.1f MiB, master "
              "%.1f MiB, gradients %.1f MiB, optimizer state %.1f MiB, activations (peak, predicted) %.1f MiB\n",
              Precision::name, storage_bytes<Precision>() == 2 ? "16-bit" : "full-width", trainer.optimizer_name().c_str(),
              tc.schedule.c_str(), cfg.model.recompute.c_str(), mib(mem.params), mib(mem.master), mib(mem.grads),
              mib(mem.optimizer), mib(mem.activations));

  // Checkpoints: resume first, so that everything below starts from the restored step.
  FitData fit_data;
  fit_data.train = [&](std::int64_t i, std::int32_t* in, std::int32_t* tg) { sampler.train_batch(i, in, tg); };
  fit_data.val = [&](std::int64_t i, std::int32_t* in, std::int32_t* tg) { sampler.eval_batch(i, in, tg); };
  fit_data.eval_batches = eval_count;
  fit_data.state = [&](std::int64_t micro_batches) { return data_state(ds, sampler, micro_batches); };
  Run run(trainer, fit_data);
  const auto resumed = run.resume();
  if (resumed) {
    for (const auto& s : resumed->skipped) std::printf("skipping invalid checkpoint %s\n", s.c_str());
    if (!resumed->skipped.empty()) std::printf("falling back to the newest valid checkpoint\n");
    for (const auto& c : resumed->changed)
      std::printf("note: %s differs from the checkpoint's; the run is no longer identical to an uninterrupted one\n",
                  c.c_str());
    std::printf("resumed from %s at step %lld\n", resumed->folder.c_str(), static_cast<long long>(resumed->step));
  }
  if (!select_spec.empty()) {
    if constexpr (!kCpu) throw Error("--select with --backend cuda", "command line", "--backend cpu for --select");
    if (!resumed) throw Error("--select needs a trained model", "checkpoint.dir", "a directory with a checkpoint");
    if (select.output.empty()) throw Error("--select without --out", "command line", "--out FILE.jsonl");
    const auto records = data::ingest(std::vector<std::string>{select_spec});
    std::vector<data::TextRecord> texts;
    for (const auto& r : records) texts.push_back({r.id, r.text});
    const std::int64_t ctx = cfg.model.context, v = cfg.model.vocab_size;
    // Mean over all tokens of a record, in windows of the model's context.
    auto scorer = [&](std::string_view text) {
      const auto ids = detok.encode(std::string(text));
      data::UncertaintyScore total{0, 0, 0};
      for (std::size_t at = 0; at + 1 < ids.size(); at += static_cast<std::size_t>(ctx)) {
        const std::size_t len = std::min<std::size_t>(static_cast<std::size_t>(ctx), ids.size() - 1 - at);
        model.forward(ids.data() + at, nullptr, 1, static_cast<std::int64_t>(len));
        const auto u = data::sequence_uncertainty(model.logits(), len, static_cast<std::size_t>(v),
                                                  std::span<const std::int32_t>(ids.data() + at + 1, len));
        total.loss += u.loss * static_cast<double>(u.tokens);
        total.entropy += u.entropy * static_cast<double>(u.tokens);
        total.tokens += u.tokens;
      }
      if (total.tokens) {
        total.loss /= static_cast<double>(total.tokens);
        total.entropy /= static_cast<double>(total.tokens);
      }
      return total;
    };
    const auto top = data::select_for_labelling(texts, scorer, select);
    std::printf("scored %zu records of %s by %s; the %zu most uncertain are in %s\n", texts.size(), select_spec.c_str(),
                select.criterion.c_str(), top.size(), select.output.c_str());
    for (std::size_t i = 0; i < std::min<std::size_t>(5, top.size()); ++i)
      std::printf("  %.4f  %s\n", top[i].score, top[i].id.c_str());
    return 0;
  }
  const std::int64_t first = trainer.step();
  const auto t_fit = std::chrono::steady_clock::now();
  if (first >= tc.steps) {
    std::printf("the checkpoint is at step %lld of %lld: nothing left to train\n", static_cast<long long>(first),
                static_cast<long long>(tc.steps));
  } else {
    std::printf("training: steps %lld..%lld x %lld micro-batches x (%lld x %lld) tokens, lr %.2g, warm-up %lld steps\n",
                static_cast<long long>(first + 1), static_cast<long long>(tc.steps),
                static_cast<long long>(tc.grad_accum), static_cast<long long>(tc.batch_size),
                static_cast<long long>(tc.seq_len), tc.lr, static_cast<long long>(trainer.schedule().warmup));
  }

  std::ofstream metrics;
  if (!tc.metrics_file.empty() && root) {
    // A resumed run continues the same metrics file.
    metrics.open(tc.metrics_file, resumed ? std::ios::app : std::ios::trunc);
    if (!metrics) throw Error("cannot open the metrics file for writing", tc.metrics_file, "a writable path");
  }
  FitEvents events;
  events.on_log = [&](const StepStats& st, const FitProgress& p) {
    const auto [lo, hi] = load_spread(st);
    std::printf("%6lld %10.4f %10.4f %9.2e %9.3f %9.0f %6.2f / %5.2f\n", static_cast<long long>(p.step), p.train_loss,
                p.val_loss, st.lr, st.grad_norm, p.tokens_per_s, lo, hi);
    std::fflush(stdout);
    if (!metrics) return;
    write_metrics(metrics, st, p, lo, hi);
    metrics.flush();
  };
  events.on_checkpoint = [](const std::string& folder, const char* why, double seconds) {
    std::printf("checkpoint %s (%s) in %.2f s\n", folder.c_str(), why, seconds);
    std::fflush(stdout);
  };
  if (first < tc.steps)
    std::printf("%6s %10s %10s %9s %9s %9s %14s\n", "step", "train", "val", "lr", "gnorm", "tok/s", "load min/max");
  const FitResult res = run.fit(events);
  if (res.stop == FitResult::kSignal) {
    std::printf("%s received after step %lld: %s\n", res.signal == SIGTERM ? "SIGTERM" : "SIGINT",
                static_cast<long long>(res.last_step),
                run.checkpoints() ? "checkpoint written, stopping" : "no checkpoint.dir set, nothing saved; stopping");
    return 0;
  }
  if (res.stop == FitResult::kTimeLimit)
    std::printf("time limit of %.0f s reached after %lld steps\n", tc.time_limit_s, static_cast<long long>(res.last_step));
  const double val = res.val_loss;
  if (res.last_step > first)
    std::printf("\ntrained steps %lld..%lld in %.1f s (setup %.1f s)\n", static_cast<long long>(first + 1),
                static_cast<long long>(res.last_step), res.train_seconds,
                std::chrono::duration<double>(t_fit - t_load).count());
  std::printf("final validation loss %.4f nats/token = %.3f x unigram entropy %.4f (%s 0.65)\n", val, val / entropy,
              entropy, val / entropy <= 0.65 ? "<=" : ">");
  if (!tc.save_weights.empty()) {
    save_weights(tc.save_weights, trainer, {{"format", "tmoe"}});  // whole tensors, from every rank's share
    std::printf("weights written to %s\n", tc.save_weights.c_str());
  }
  if (cfg.parallel.pipeline > 1) {
    std::printf("\nsample: not drawn under pipeline parallelism (sample from a checkpoint in one process)\n");
    return 0;
  }
  const std::string prompt_text = "The ";
  const auto out = trainer.generate(detok.encode(prompt_text), tc.sample_tokens, tc.sample_temperature, tc.seed);
  std::printf("\nsample (temperature %.2f):\n%s%s\n", tc.sample_temperature, prompt_text.c_str(), detok(out).c_str());
  return 0;
}


#if !defined(__CUDACC__)
// The CPU programs (preset_*.cpp).
template <class Model, class Precision = Fp32>
int train_main(const Options& opt) {
  return train_on<Model, Precision, backend::Cpu>(opt);
}
#endif

}  // namespace train_moe_lm
