#pragma once
// Run-time configuration: every number (sizes, counts, k, weights, rates, schedule) is a
// field here, never a template parameter (DESIGN.md principle 1). Each struct lists its
// fields once in `fields()`, which the YAML loader, the command-line overrides, the
// validation and the metrics header all walk, so no name is kept twice.
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>

#include "tmoe/core/error.hpp"

namespace tmoe {

template <class C, class M>
struct Field {
  const char* name;
  M C::*member;
  const char* help;
};
template <class C, class M>
constexpr Field<C, M> field(const char* name, M C::*member, const char* help) {
  return {name, member, help};
}

struct ModelConfig {
  std::string preset;             // the compiled composition a program offers under this name
                                  // (train_moe_lm: mixtral-like, deepseek-like, ...); the
                                  // library itself does not read it
  std::int64_t vocab_size = 256;
  std::int64_t context = 256;     // maximum sequence length T
  std::int64_t d_model = 256;
  std::int64_t n_layers = 4;
  std::int64_t n_heads = 8;
  std::int64_t d_ff = 1024;       // hidden width of a dense feed-forward layer
  std::int64_t n_experts = 8;
  std::int64_t top_k = 2;
  std::int64_t d_expert = 512;    // hidden width of one expert
  bool router_renormalize = true; // softmax over the k selected logits (seed) vs. softmax-then-top-k
  double aux_loss_weight = 1e-2;  // Switch/GShard load-balancing loss
  double z_loss_weight = 1e-3;    // router z-loss (ST-MoE)
  double seq_aux_loss_weight = 0; // DeepSeek-V3 sequence-wise balance loss
  double bias_update_rate = 1e-3; // gamma of the aux-loss-free bias update (SigmoidBias)
  double router_temperature = 1.0;// router logits are divided by it (> 1 flattens routing)
  double router_jitter = 0;       // training: router input x ⊙ U(1-j, 1+j) (Switch); 0 = off
  double router_noise_std = 0;    // training: router logits + N(0, std²); 0 = off
  double route_scale = 1.0;       // gate weights are multiplied by it (DeepSeek-V3: 2.5)
  std::int64_t n_groups = 1;      // GroupLimited: expert groups
  std::int64_t top_groups = 1;    // GroupLimited: groups a token may use
  double capacity_factor = 1.25;  // CapacityFactor / ExpertChoice: C = ceil(f N k / E)
  std::string drop_policy = "probability";  // CapacityFactor: which overflow to drop
  std::int64_t n_shared_experts = 0;        // always-on experts added to the routed output
  std::int64_t d_shared_expert = 0;         // hidden width of one shared expert; 0 = d_expert
  std::int64_t moe_every = 1;     // every moe_every-th layer (after the dense ones) is MoE
  std::int64_t moe_first_dense = 0;  // the first layers are dense
  std::int64_t expert_depth = 1;  // TransformerExpert: layers per expert
  std::int64_t expert_heads = 0;  // TransformerExpert: attention heads; 0 = n_heads
  bool tie_embeddings = true;
  bool linear_bias = false;       // biases on attention projections and dense FFN layers
  double norm_eps = 1e-5;
  double rope_base = 10000.0;
  double init_std = 0.02;
  bool gelu_exact = false;        // GELU: tanh approximation (default) or exact erf

  static constexpr auto fields() {
    using C = ModelConfig;
    return std::make_tuple(
        field("preset", &C::preset, "named model composition of the program (train_moe_lm --help lists them)"),
        field("vocab_size", &C::vocab_size, "token vocabulary size"),
        field("context", &C::context, "maximum sequence length"),
        field("d_model", &C::d_model, "residual stream width"),
        field("n_layers", &C::n_layers, "number of transformer blocks"),
        field("n_heads", &C::n_heads, "attention heads (must divide d_model)"),
        field("d_ff", &C::d_ff, "hidden width of dense feed-forward layers"),
        field("n_experts", &C::n_experts, "routed experts per MoE layer"),
        field("top_k", &C::top_k, "experts per token"),
        field("d_expert", &C::d_expert, "hidden width of one expert"),
        field("router_renormalize", &C::router_renormalize,
              "true: softmax over the top-k logits; false: top-k of the full softmax"),
        field("aux_loss_weight", &C::aux_loss_weight, "weight of the load-balancing loss"),
        field("z_loss_weight", &C::z_loss_weight, "weight of the router z-loss"),
        field("seq_aux_loss_weight", &C::seq_aux_loss_weight, "weight of the sequence-wise balance loss"),
        field("bias_update_rate", &C::bias_update_rate, "aux-loss-free bias step gamma (BiasUpdate)"),
        field("router_temperature", &C::router_temperature, "router logits are divided by it"),
        field("router_jitter", &C::router_jitter, "training-time multiplicative jitter on the router input; 0 = off"),
        field("router_noise_std", &C::router_noise_std, "training-time Gaussian noise on the router logits; 0 = off"),
        field("route_scale", &C::route_scale, "gate weights are multiplied by it"),
        field("n_groups", &C::n_groups, "expert groups (GroupLimited)"),
        field("top_groups", &C::top_groups, "groups eligible per token (GroupLimited)"),
        field("capacity_factor", &C::capacity_factor, "expert capacity = ceil(f * tokens * k / experts)"),
        field("drop_policy", &C::drop_policy, "probability | position: which tokens over capacity are dropped"),
        field("n_shared_experts", &C::n_shared_experts, "always-on shared experts per MoE layer"),
        field("d_shared_expert", &C::d_shared_expert, "hidden width of one shared expert; 0 = d_expert"),
        field("moe_every", &C::moe_every, "every N-th layer after the dense ones is MoE"),
        field("moe_first_dense", &C::moe_first_dense, "number of leading dense layers"),
        field("expert_depth", &C::expert_depth, "layers per TransformerExpert"),
        field("expert_heads", &C::expert_heads, "attention heads of a TransformerExpert; 0 = n_heads"),
        field("tie_embeddings", &C::tie_embeddings, "output head shares the token embedding"),
        field("linear_bias", &C::linear_bias, "biases on attention and dense FFN projections"),
        field("norm_eps", &C::norm_eps, "epsilon of RMSNorm/LayerNorm"),
        field("rope_base", &C::rope_base, "RoPE frequency base"),
        field("init_std", &C::init_std, "standard deviation of initial weights"),
        field("gelu_exact", &C::gelu_exact, "exact erf GELU instead of the tanh approximation"));
  }

  void validate() const {
    auto pos = [](std::int64_t v, const char* name) {
      if (v <= 0) throw Error(detail::cat(name, " is ", v), detail::cat("model.", name), "a positive integer");
    };
    pos(vocab_size, "vocab_size");
    pos(context, "context");
    pos(d_model, "d_model");
    pos(n_layers, "n_layers");
    pos(n_heads, "n_heads");
    pos(d_ff, "d_ff");
    pos(n_experts, "n_experts");
    pos(top_k, "top_k");
    pos(d_expert, "d_expert");
    if (d_model % n_heads != 0)
      throw Error(detail::cat("d_model ", d_model, " is not divisible by n_heads ", n_heads), "model.d_model",
                  "a multiple of n_heads");
    if ((d_model / n_heads) % 2 != 0)
      throw Error(detail::cat("head size d_model/n_heads = ", d_model / n_heads, " is odd"), "model.n_heads",
                  "an even head size (RoPE rotates pairs)");
    if (top_k > n_experts)
      throw Error(detail::cat("top_k ", top_k, " is larger than n_experts ", n_experts), "model.top_k",
                  detail::cat("1 <= top_k <= n_experts = ", n_experts));
    if (n_groups > 64)
      throw Error(detail::cat("n_groups is ", n_groups), "model.n_groups", "at most 64 expert groups");
    if (n_groups <= 0 || n_experts % n_groups != 0)
      throw Error(detail::cat("n_groups ", n_groups, " does not divide n_experts ", n_experts), "model.n_groups",
                  detail::cat("a divisor of n_experts = ", n_experts));
    if (top_groups <= 0 || top_groups > n_groups)
      throw Error(detail::cat("top_groups ", top_groups, " is not in [1, n_groups = ", n_groups, "]"), "model.top_groups",
                  detail::cat("1 <= top_groups <= ", n_groups));
    if (n_groups > 1 && top_k > top_groups * (n_experts / n_groups))
      throw Error(detail::cat("top_k ", top_k, " exceeds the ", top_groups * (n_experts / n_groups),
                              " experts of the top_groups = ", top_groups, " eligible groups"),
                  "model.top_k", detail::cat("<= top_groups * n_experts / n_groups = ", top_groups * (n_experts / n_groups)));
    if (!(capacity_factor > 0) || !std::isfinite(capacity_factor))
      throw Error(detail::cat("capacity_factor is ", capacity_factor), "model.capacity_factor", "a positive number");
    if (drop_policy != "probability" && drop_policy != "position")
      throw Error("drop_policy is '" + drop_policy + "'", "model.drop_policy", "probability or position");
    if (!(router_temperature > 0) || !std::isfinite(router_temperature))
      throw Error(detail::cat("router_temperature is ", router_temperature), "model.router_temperature",
                  "a positive number");
    if (router_jitter < 0 || router_jitter >= 1)
      throw Error(detail::cat("router_jitter is ", router_jitter), "model.router_jitter", "a value in [0, 1)");
    if (router_noise_std < 0) throw Error("router_noise_std is negative", "model.router_noise_std", ">= 0");
    if (!(route_scale > 0)) throw Error(detail::cat("route_scale is ", route_scale), "model.route_scale", "> 0");
    if (n_shared_experts < 0)
      throw Error(detail::cat("n_shared_experts is ", n_shared_experts), "model.n_shared_experts", ">= 0");
    if (d_shared_expert < 0)
      throw Error(detail::cat("d_shared_expert is ", d_shared_expert), "model.d_shared_expert", ">= 0 (0 = d_expert)");
    if (moe_every <= 0)
      throw Error(detail::cat("moe_every (the dense/MoE interleave period) is ", moe_every), "model.moe_every",
                  "a positive integer (1 = every layer after the dense ones is MoE)");
    if (moe_first_dense < 0 || moe_first_dense > n_layers)
      throw Error(detail::cat("moe_first_dense is ", moe_first_dense), "model.moe_first_dense",
                  detail::cat("0 <= moe_first_dense <= n_layers = ", n_layers));
    if (expert_depth <= 0)
      throw Error(detail::cat("expert_depth is ", expert_depth), "model.expert_depth",
                  "at least 1 layer per TransformerExpert");
    if (expert_heads < 0) throw Error(detail::cat("expert_heads is ", expert_heads), "model.expert_heads", ">= 0 (0 = n_heads)");
    if (!(norm_eps > 0)) throw Error("norm_eps must be positive", "model.norm_eps", "a positive number");
    if (!(init_std > 0)) throw Error("init_std must be positive", "model.init_std", "a positive number");
    if (aux_loss_weight < 0 || z_loss_weight < 0 || seq_aux_loss_weight < 0 || bias_update_rate < 0)
      throw Error("loss weights and the bias update rate must not be negative",
                  "model.aux_loss_weight/z_loss_weight/seq_aux_loss_weight/bias_update_rate", ">= 0");
  }

  std::int64_t head_dim() const { return d_model / n_heads; }
  // Layer l (0-based) is an MoE layer when the block has an MoE feed-forward part: after the
  // moe_first_dense dense layers, every moe_every-th layer (layers K+N-1, K+2N-1, ...).
  bool is_moe_layer(std::int64_t l) const {
    return l >= moe_first_dense && (l - moe_first_dense + 1) % moe_every == 0;
  }
};

struct TrainConfig {
  std::uint64_t seed = 1234;
  std::int64_t steps = 1000;
  std::int64_t batch_size = 8;       // sequences per micro-batch
  std::int64_t seq_len = 256;        // tokens per sequence (<= model.context)
  std::int64_t grad_accum = 1;       // micro-batches per optimizer step
  double lr = 3e-3;
  double min_lr_ratio = 0.1;         // cosine decays to lr * min_lr_ratio
  double warmup_fraction = 0.05;     // linear warm-up over this share of the steps
  double beta1 = 0.9;
  double beta2 = 0.95;
  double adam_eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;            // global-norm clipping; 0 turns it off
  std::int64_t eval_interval = 100;  // validation loss every N steps
  std::int64_t eval_batches = 8;
  std::int64_t log_interval = 10;
  std::int64_t threads = 0;          // 0: all hardware threads
  std::int64_t sample_tokens = 200;
  double sample_temperature = 0.8;   // 0: greedy
  std::string metrics_file;          // JSON lines, one per logged interval; empty: none
  std::string save_weights;          // safetensors file written at the end; empty: none
  double time_limit_s = 0;           // stop early after this many seconds; 0: none

  static constexpr auto fields() {
    using C = TrainConfig;
    return std::make_tuple(
        field("seed", &C::seed, "seed of every random draw"),
        field("steps", &C::steps, "optimizer steps"),
        field("batch_size", &C::batch_size, "sequences per micro-batch"),
        field("seq_len", &C::seq_len, "tokens per training sequence"),
        field("grad_accum", &C::grad_accum, "micro-batches per optimizer step"),
        field("lr", &C::lr, "peak learning rate"),
        field("min_lr_ratio", &C::min_lr_ratio, "final learning rate as a share of lr"),
        field("warmup_fraction", &C::warmup_fraction, "share of steps with linear warm-up"),
        field("beta1", &C::beta1, "AdamW beta1"),
        field("beta2", &C::beta2, "AdamW beta2"),
        field("adam_eps", &C::adam_eps, "AdamW epsilon"),
        field("weight_decay", &C::weight_decay, "decoupled weight decay (decay group only)"),
        field("grad_clip", &C::grad_clip, "global gradient-norm limit; 0 disables"),
        field("eval_interval", &C::eval_interval, "steps between validation losses"),
        field("eval_batches", &C::eval_batches, "micro-batches per validation loss"),
        field("log_interval", &C::log_interval, "steps between progress lines"),
        field("threads", &C::threads, "worker threads; 0 = all"),
        field("sample_tokens", &C::sample_tokens, "tokens generated for the final sample"),
        field("sample_temperature", &C::sample_temperature, "sampling temperature; 0 = greedy"),
        field("metrics_file", &C::metrics_file, "JSON-lines metrics file"),
        field("save_weights", &C::save_weights, "safetensors file written at the end"),
        field("time_limit_s", &C::time_limit_s, "stop after this many seconds; 0 = no limit"));
  }

  void validate(const ModelConfig& m) const {
    auto pos = [](std::int64_t v, const char* name) {
      if (v <= 0) throw Error(detail::cat(name, " is ", v), detail::cat("train.", name), "a positive integer");
    };
    pos(steps, "steps");
    pos(batch_size, "batch_size");
    pos(seq_len, "seq_len");
    pos(grad_accum, "grad_accum");
    pos(eval_interval, "eval_interval");
    pos(eval_batches, "eval_batches");
    pos(log_interval, "log_interval");
    if (seq_len > m.context)
      throw Error(detail::cat("seq_len ", seq_len, " exceeds model.context ", m.context), "train.seq_len",
                  detail::cat("<= ", m.context));
    if (!(lr > 0)) throw Error("lr must be positive", "train.lr", "a positive number");
    if (warmup_fraction < 0 || warmup_fraction > 1)
      throw Error("warmup_fraction out of range", "train.warmup_fraction", "a value in [0, 1]");
    if (min_lr_ratio < 0 || min_lr_ratio > 1)
      throw Error("min_lr_ratio out of range", "train.min_lr_ratio", "a value in [0, 1]");
    if (beta1 < 0 || beta1 >= 1 || beta2 < 0 || beta2 >= 1)
      throw Error("AdamW betas out of range", "train.beta1/beta2", "values in [0, 1)");
    if (grad_clip < 0) throw Error("grad_clip is negative", "train.grad_clip", ">= 0 (0 disables clipping)");
    if (threads < 0) throw Error("threads is negative", "train.threads", ">= 0 (0 = all)");
  }
};

struct DataConfig {
  std::string shards;  // a dataset folder written by tmoe-prep

  static constexpr auto fields() {
    using C = DataConfig;
    return std::make_tuple(field("shards", &C::shards, "token-shard folder written by tmoe-prep"));
  }
  void validate() const {}
};

// Checkpoints (DESIGN.md "Checkpoints"): a directory of committed step-NNNNNNNN folders
// plus a `latest` pointer. Empty dir: no checkpoints.
struct CheckpointConfig {
  std::string dir;                 // where checkpoints live; empty: none
  std::int64_t interval = 1000;    // steps between checkpoints (the seed article's 1000)
  std::int64_t keep = 3;           // committed checkpoints kept; older ones are deleted
  std::string resume = "auto";     // auto: from `latest` if there is one; never; required
  bool on_signal = true;           // SIGTERM/SIGINT: write a checkpoint, then exit 0

  static constexpr auto fields() {
    using C = CheckpointConfig;
    return std::make_tuple(
        field("dir", &C::dir, "checkpoint directory; empty = no checkpoints"),
        field("interval", &C::interval, "steps between checkpoints (also one at the end)"),
        field("keep", &C::keep, "committed checkpoints to keep"),
        field("resume", &C::resume, "auto | never | required: resume from the newest valid checkpoint"),
        field("on_signal", &C::on_signal, "write a checkpoint and exit 0 on SIGTERM/SIGINT"));
  }
  void validate() const {
    if (interval <= 0) throw Error(detail::cat("interval is ", interval), "checkpoint.interval", "a positive step count");
    if (keep <= 0) throw Error(detail::cat("keep is ", keep), "checkpoint.keep", "at least 1");
    if (resume != "auto" && resume != "never" && resume != "required")
      throw Error("resume is '" + resume + "'", "checkpoint.resume", "auto, never or required");
    if (resume == "required" && dir.empty())
      throw Error("resume is 'required' but no checkpoint directory is set", "checkpoint.resume",
                  "checkpoint.dir=PATH");
  }
};

struct Config {
  ModelConfig model;
  TrainConfig train;
  DataConfig data;
  CheckpointConfig checkpoint;
  void validate() const {
    model.validate();
    train.validate(model);
    data.validate();
    checkpoint.validate();
  }
};

}  // namespace tmoe
