// Distributed training-step throughput under mpirun: tokens/s of a fixed global batch,
// bytes each rank sends per step against the cost model of docs/scaling.md, and the time
// ranks wait in communication versus compute. One JSON line (rank 0) per run.
//
//   mpirun -np R bench_parallel [--steps S] [--warmup W] [key=value ...]
//     key=value: model.*, train.* and parallel.* fields (parallel.expert=2, parallel.zero=true,
//                parallel.powersgd_rank=2, parallel.reduction=native, ...)
//
// The global batch is train.grad_accum micro-batches of train.batch_size x train.seq_len
// (default 4 x (4 x 256)), the same for every rank count, so tokens/s compare directly.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "gemm_peak.hpp"
#include "reference_model.hpp"
#include "tmoe/io/yaml_config.hpp"
#include "tmoe/parallel/comm/mpi.hpp"
#include "tmoe/tmoe.hpp"

using namespace tmoe;
using Clock = std::chrono::steady_clock;

namespace {

using Block = TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, TopK>>;
using Model = DecoderLM<Block, RmsNorm>;
using Par = DataParallel<comm::Mpi>;
using Train = Trainer<Model, AdamW, Fp32, Par, backend::Cpu>;

// The cost model's bytes per rank per step (docs/scaling.md), fp32 gradients and weights.
struct Theory {
  double dense = 0, experts = 0, all_to_all = 0, tensor = 0, pipeline = 0;
  double total() const { return dense + experts + all_to_all + tensor + pipeline; }
};

Theory theory(const Config& cfg, const Train& tr) {
  const ProcessGrid& g = const_cast<Train&>(tr).parallel().grid();
  const ParamRegistry& reg = tr.model().registry();
  double n_dense = 0, n_expert = 0;
  for (int i = 0; i < reg.size(); ++i) {
    const double len = static_cast<double>((i + 1 < reg.size() ? reg[i + 1].offset : reg.total()) - reg[i].offset);
    (g.expert > 1 && reg[i].has(kTagExpert) ? n_expert : n_dense) += len;
  }
  Theory t;
  const double R = g.replicas(), d = g.data, e = g.expert;
  if (cfg.parallel.powersgd_rank == 0) t.dense = 2.0 * (R - 1) / R * n_dense * 4;
  t.experts = 2.0 * (d - 1) / d * n_expert * 4;
  if (e > 1) {
    // Per MoE layer and micro-batch: N k routed rows, (e-1)/e of them to other ranks under
    // uniform routing; four transfers of C floats (rows, outputs, their gradients) and the
    // token index (8 bytes) once.
    const double micro = static_cast<double>(cfg.train.grad_accum) / R;
    const double rows = static_cast<double>(cfg.train.batch_size * cfg.train.seq_len * cfg.model.top_k);
    double moe_layers = 0;
    for (std::int64_t l = 0; l < cfg.model.n_layers; ++l) moe_layers += cfg.model.is_moe_layer(l);
    t.all_to_all = micro * moe_layers * rows * (e - 1) / e * (4.0 * cfg.model.d_model * 4 + 8);
  }
  const double micro = static_cast<double>(cfg.train.grad_accum) / R, n = static_cast<double>(cfg.train.batch_size * cfg.train.seq_len);
  const double c = static_cast<double>(cfg.model.d_model), layers = static_cast<double>(tr.model().n_layers());
  if (g.tensor > 1) {
    // Per layer and micro-batch, four all-reduces (ring: 2 (T-1)/T of the vector each):
    // attention output and input gradient (N C each), the experts' outputs (N k C, or N C
    // for a dense FFN) and the FFN input gradient (N C). A pipeline stage's recomputed
    // forwards repeat the forward ones.
    const double ffn_out = Model::block_policy::ffn_policy::is_moe ? n * static_cast<double>(cfg.model.top_k) : n;
    const double forwards = g.pipeline > 1 && g.pipeline_rank + 1 < g.pipeline ? 2.0 : 1.0;
    const double T = g.tensor;
    t.tensor = micro * layers * 2.0 * (T - 1) / T * 4.0 * c * (forwards * (n + ffn_out) + 2.0 * n);
  }
  if (g.pipeline > 1) {
    // Each micro-batch's activations (N C) go to the next stage and their gradients back.
    const int s = g.pipeline_rank, S = g.pipeline;
    t.pipeline = micro * n * c * 4.0 * ((s + 1 < S ? 1.0 : 0.0) + (s > 0 ? 1.0 : 0.0));
  }
  return t;
}

int run(int argc, char** argv) {
  comm::Mpi world;
  std::int64_t steps = 6, warmup = 2;
  std::vector<const char*> overrides;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) steps = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--warmup") && i + 1 < argc) warmup = std::atoll(argv[++i]);
    else overrides.push_back(argv[i]);
  }
  Config cfg;
  // The reference shape of bench_train_step, with a global batch of 4 micro-batches.
  bench::reference_model(cfg);
  cfg.train.batch_size = 4;
  cfg.train.grad_accum = 4;
  for (const char* o : overrides) io::apply_override(cfg, o);
  cfg.validate();
  const std::int64_t b = cfg.train.batch_size, t = cfg.train.seq_len;

  // The peak the job's cores reach (measured by rank 0 while the others wait).
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  const int used = std::min(cores, world.size() * threads());
  double peak = 0;
  world.barrier();
  if (world.rank() == 0) peak = bench::sgemm_peak(used);
  world.broadcast(&peak, 1, 0);

  Train tr(cfg, Par(world, cfg));
  const BatchFn batches = bench::reference_batches(cfg);
  for (std::int64_t i = 0; i < warmup; ++i) tr.train_step(batches);
  std::vector<double> times;
  double bytes = 0, wait = 0, bytes_uncompressed = 0, loss = 0;
  for (std::int64_t i = 0; i < steps; ++i) {
    world.barrier();
    const auto t0 = Clock::now();
    const StepStats st = tr.train_step(batches);
    times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    bytes += static_cast<double>(st.comm.bytes_sent);
    bytes_uncompressed += static_cast<double>(st.comm.bytes_uncompressed);
    wait += st.comm.wait_s;
    loss = st.loss;
  }
  std::sort(times.begin(), times.end());
  const double step_s = times[times.size() / 2];
  // Per-rank means over the job (each rank's own counters).
  double per_rank[3] = {bytes / static_cast<double>(steps), wait / static_cast<double>(steps), bytes_uncompressed / static_cast<double>(steps)};
  std::vector<double> all(3 * static_cast<std::size_t>(world.size()));
  world.allgather(per_rank, 3, all.data());
  double mean_bytes = 0, max_bytes = 0, mean_wait = 0, mean_unc = 0;
  for (int q = 0; q < world.size(); ++q) {
    mean_bytes += all[3 * q] / world.size();
    max_bytes = std::max(max_bytes, all[3 * q]);
    mean_wait += all[3 * q + 1] / world.size();
    mean_unc += all[3 * q + 2] / world.size();
  }
  // The model's bytes for each rank (stages and slices differ), averaged like the measured.
  const Theory mine = theory(cfg, tr);
  double tv[5] = {mine.dense, mine.experts, mine.all_to_all, mine.tensor, mine.pipeline};
  world.allreduce_sum(tv, 5, comm::Reduction::kFixed);
  const Theory th{tv[0] / world.size(), tv[1] / world.size(), tv[2] / world.size(), tv[3] / world.size(), tv[4] / world.size()};
  // FLOPs per token: each rank's share (its stage, its slices) summed over one replica.
  double fl = tr.model().flops_per_token(t) / static_cast<double>(tr.parallel().grid().replicas());
  world.allreduce_sum(&fl, 1, comm::Reduction::kFixed);
  if (world.rank() == 0) {
    const double tokens = static_cast<double>(cfg.train.grad_accum * b * t);
    const double tok_s = tokens / step_s;
    const double flops = fl;
    std::printf("{\"impl\": \"tmoe\", \"ranks\": %d, \"grid\": \"%s\", \"reduction\": \"%s\", \"zero\": %s, "
                "\"powersgd_rank\": %lld, \"threads_per_rank\": %d, \"global_tokens_per_step\": %.0f, "
                "\"tokens_per_s\": %.1f, \"step_ms\": %.1f, \"comm_wait_ms\": %.1f, \"compute_ms\": %.1f, "
                "\"bytes_per_rank\": %.0f, \"bytes_per_rank_max\": %.0f, \"bytes_per_rank_theory\": %.0f, "
                "\"theory_dense\": %.0f, \"theory_experts\": %.0f, \"theory_all_to_all\": %.0f, "
                "\"theory_tensor\": %.0f, \"theory_pipeline\": %.0f, "
                "\"bytes_per_rank_uncompressed\": %.0f, \"mfu\": %.4f, \"peak_gflops\": %.1f, \"cores\": %d, "
                "\"loss\": %.4f}\n",
                world.size(), tr.parallel().grid().describe().c_str(), cfg.parallel.reduction.c_str(),
                cfg.parallel.zero ? "true" : "false", static_cast<long long>(cfg.parallel.powersgd_rank), threads(),
                tokens, tok_s, 1e3 * step_s, 1e3 * mean_wait, 1e3 * (step_s - mean_wait), mean_bytes, max_bytes,
                th.total(), th.dense, th.experts, th.all_to_all, th.tensor, th.pipeline, mean_unc, tok_s * flops / (peak * 1e9), peak,
                used, loss);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return comm::mpi_main(argc, argv, [&] { return run(argc, argv); });
}
