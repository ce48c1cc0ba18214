#pragma once
// Run-time configuration: every number (sizes, counts, k, weights, rates, schedule) is a
// field here, never a template parameter (DESIGN.md principle 1). Each struct lists its
// fields once in `fields()`, which the YAML loader, the command-line overrides, the
// validation and the metrics header all walk, so no name is kept twice.
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>
#include <cstdlib>
#include <algorithm>

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
  double dropout = 0;             // training: on the attention and feed-forward outputs before each residual add
  double attn_dropout = 0;        // training: on the attention probabilities
  std::string expert_dropout;     // training: dropout on routed experts' hidden activations: one rate for
                                  // all, or comma-separated rates, one per expert group (n_groups) or expert
  double expert_drop_rate = 0;    // training: drop a token's contribution from one routed expert (gates renormalised)
  std::string recompute = "none"; // activation recomputation: none | full (per block) | selective
  // Layout, not configuration (no config key, not in checkpoints): the expert-parallel
  // rank and size the trainer builds this rank's share of the model for. A rank declares
  // experts [ep_rank E / ep_size, (ep_rank + 1) E / ep_size) of each MoE layer.
  std::int64_t ep_rank = 0, ep_size = 1;
  // Tensor parallelism: this rank holds heads [tp_rank H / tp_size, ...) and the same share
  // of every feed-forward hidden width (column/row-parallel linears).
  std::int64_t tp_rank = 0, tp_size = 1;
  // Pipeline parallelism: this rank holds blocks [pp_rank L / pp_size, (pp_rank + 1) L /
  // pp_size); the first stage the embeddings, the last the final norm and the head.
  std::int64_t pp_rank = 0, pp_size = 1;

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
        field("gelu_exact", &C::gelu_exact, "exact erf GELU instead of the tanh approximation"),
        field("dropout", &C::dropout, "training dropout on attention/FFN outputs before the residual add"),
        field("attn_dropout", &C::attn_dropout, "training dropout on attention probabilities"),
        field("expert_dropout", &C::expert_dropout,
              "dropout on routed experts' hidden activations: one rate, or one per expert group or expert"),
        field("expert_drop_rate", &C::expert_drop_rate,
              "probability of dropping a token's assignment to one routed expert (gates renormalised)"),
        field("recompute", &C::recompute, "activation recomputation: none | full | selective"));
  }

  // expert_dropout as one rate per routed expert (empty string: all zero).
  std::vector<double> expert_dropout_rates() const {
    std::vector<double> rates;
    std::size_t i = 0;
    while (!expert_dropout.empty() && i <= expert_dropout.size()) {
      const std::size_t j = std::min(expert_dropout.find(',', i), expert_dropout.size());
      const std::string item = expert_dropout.substr(i, j - i);
      char* end = nullptr;
      const double v = std::strtod(item.c_str(), &end);
      if (item.empty() || end != item.c_str() + item.size() || !(v >= 0 && v < 1))
        throw Error("expert_dropout item '" + item + "' is not a rate in [0, 1)", "model.expert_dropout",
                    "one rate, or comma-separated rates in [0, 1) (one per expert group or per expert)");
      rates.push_back(v);
      i = j + 1;
    }
    if (rates.empty()) return std::vector<double>(static_cast<std::size_t>(n_experts), 0.0);
    const auto k = static_cast<std::int64_t>(rates.size());
    if (k != 1 && k != n_groups && k != n_experts)
      throw Error(detail::cat("expert_dropout lists ", k, " rates"), "model.expert_dropout",
                  detail::cat("1 rate, ", n_groups, " (one per expert group) or ", n_experts, " (one per expert)"));
    std::vector<double> per(static_cast<std::size_t>(n_experts));
    for (std::int64_t e = 0; e < n_experts; ++e)
      per[static_cast<std::size_t>(e)] = rates[static_cast<std::size_t>(k == 1 ? 0 : k == n_experts ? e : e / (n_experts / n_groups))];
    return per;
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
    auto rate = [](double v, const char* name) {
      if (!(v >= 0 && v < 1)) throw Error(detail::cat(name, " is ", v), detail::cat("model.", name), "a rate in [0, 1)");
    };
    rate(dropout, "dropout");
    rate(attn_dropout, "attn_dropout");
    rate(expert_drop_rate, "expert_drop_rate");
    (void)expert_dropout_rates();
    if (recompute != "none" && recompute != "full" && recompute != "selective")
      throw Error("recompute is '" + recompute + "'", "model.recompute", "none, full or selective");
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
  std::string precision = "fp32";    // the compiled precision a program offers under this name
                                     // (train_moe_lm: fp32, bf16, fp16); the library does not read it
  std::string optimizer = "adamw";   // adamw | sgd | lion | sign_momentum (within OptimizerChoice)
  double lr = 3e-3;
  std::string schedule = "cosine";   // constant | cosine | linear | wsd (all after the linear warm-up)
  double min_lr_ratio = 0.1;         // cosine / linear / wsd decay to lr * min_lr_ratio
  double warmup_fraction = 0.05;     // linear warm-up over this share of the steps
  std::int64_t warmup_steps = -1;    // >= 0: warm-up steps, overriding warmup_fraction
  double decay_fraction = 0.2;       // wsd: the last share of the steps decays linearly
  std::int64_t batch_ramp_steps = 0; // > 0: micro-batches per step ramp from batch_ramp_start to grad_accum
  std::int64_t batch_ramp_start = 1;
  double beta1 = 0.9;                // AdamW, sign_momentum (second moment: beta2)
  double beta2 = 0.95;
  double adam_eps = 1e-8;
  double momentum = 0;               // sgd: momentum (0 = plain SGD)
  double dampening = 0;              // sgd
  bool nesterov = false;             // sgd: Nesterov momentum
  double lion_beta1 = 0.9;           // lion, sign_momentum: interpolation of momentum and gradient
  double lion_beta2 = 0.99;          // lion, sign_momentum: momentum decay
  double sign_threshold = 0;         // sign_momentum: normalised updates below it are zeroed
  double weight_decay = 0.1;         // decay group; sgd: coupled (added to the gradient), others decoupled
  double l2 = 0;                     // L2 penalty (l2/2)·‖w‖² on the decay group, in the gradient before clipping
  bool clamp_weights = false;        // clamp matrix parameters to [clamp_min, clamp_max] after each update
  double clamp_min = -0.5;
  double clamp_max = 0.5;
  bool expert_group = false;         // expert parameters take the expert_* settings below
  double expert_weight_decay = 0.1;
  double expert_l2 = 0;
  bool expert_clamp_weights = false;
  double expert_clamp_min = -0.5;
  double expert_clamp_max = 0.5;
  double grad_clip = 1.0;            // global-norm clipping; 0 turns it off
  std::string loss_scaling = "dynamic";  // loss-scaled precision (fp16): dynamic | static
  double loss_scale = 65536;         // initial (dynamic) or fixed (static) loss scale
  double loss_scale_growth = 2.0;    // dynamic: scale *= growth after growth_interval finite steps
  double loss_scale_backoff = 0.5;   // dynamic: scale *= backoff on a step with inf/NaN gradients
  std::int64_t loss_scale_interval = 2000;
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
        field("precision", &C::precision, "compiled precision of the program (train_moe_lm: fp32, bf16, fp16)"),
        field("optimizer", &C::optimizer, "update rule: adamw | sgd | lion | sign_momentum"),
        field("lr", &C::lr, "peak learning rate"),
        field("schedule", &C::schedule, "learning-rate schedule after warm-up: constant | cosine | linear | wsd"),
        field("min_lr_ratio", &C::min_lr_ratio, "final learning rate as a share of lr"),
        field("warmup_fraction", &C::warmup_fraction, "share of steps with linear warm-up"),
        field("warmup_steps", &C::warmup_steps, "warm-up steps; -1 = use warmup_fraction"),
        field("decay_fraction", &C::decay_fraction, "wsd: share of steps in the final linear decay"),
        field("batch_ramp_steps", &C::batch_ramp_steps, "steps over which micro-batches per step ramp up; 0 = off"),
        field("batch_ramp_start", &C::batch_ramp_start, "micro-batches per step at step 0 of the ramp"),
        field("beta1", &C::beta1, "AdamW / sign_momentum beta1"),
        field("beta2", &C::beta2, "AdamW / sign_momentum second-moment decay"),
        field("adam_eps", &C::adam_eps, "AdamW / sign_momentum epsilon"),
        field("momentum", &C::momentum, "sgd momentum; 0 = plain SGD"),
        field("dampening", &C::dampening, "sgd momentum dampening"),
        field("nesterov", &C::nesterov, "sgd: Nesterov momentum"),
        field("lion_beta1", &C::lion_beta1, "lion / sign_momentum: momentum-gradient interpolation"),
        field("lion_beta2", &C::lion_beta2, "lion / sign_momentum: momentum decay"),
        field("sign_threshold", &C::sign_threshold, "sign_momentum: normalised updates below it are zeroed"),
        field("weight_decay", &C::weight_decay, "weight decay of the decay group (sgd: coupled; others: decoupled)"),
        field("l2", &C::l2, "L2 penalty l2/2 |w|^2 on the decay group, added to the gradient before clipping"),
        field("clamp_weights", &C::clamp_weights, "clamp matrix parameters to [clamp_min, clamp_max] after updates"),
        field("clamp_min", &C::clamp_min, "lower clamp bound"),
        field("clamp_max", &C::clamp_max, "upper clamp bound"),
        field("expert_group", &C::expert_group, "expert parameters use the expert_* settings"),
        field("expert_weight_decay", &C::expert_weight_decay, "weight decay of expert parameters (expert_group)"),
        field("expert_l2", &C::expert_l2, "L2 penalty of expert parameters (expert_group)"),
        field("expert_clamp_weights", &C::expert_clamp_weights, "clamp expert matrices (expert_group)"),
        field("expert_clamp_min", &C::expert_clamp_min, "lower clamp bound of expert matrices"),
        field("expert_clamp_max", &C::expert_clamp_max, "upper clamp bound of expert matrices"),
        field("grad_clip", &C::grad_clip, "global gradient-norm limit; 0 disables"),
        field("loss_scaling", &C::loss_scaling, "loss-scaled precision: dynamic | static"),
        field("loss_scale", &C::loss_scale, "initial (dynamic) or fixed (static) loss scale"),
        field("loss_scale_growth", &C::loss_scale_growth, "dynamic: growth factor after loss_scale_interval finite steps"),
        field("loss_scale_backoff", &C::loss_scale_backoff, "dynamic: factor applied on an inf/NaN step"),
        field("loss_scale_interval", &C::loss_scale_interval, "dynamic: finite steps between growths"),
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
    if (!(lr > 0)) throw Error(detail::cat("lr is ", lr), "train.lr", "a positive number");
    if (optimizer != "adamw" && optimizer != "sgd" && optimizer != "lion" && optimizer != "sign_momentum")
      throw Error("optimizer is '" + optimizer + "'", "train.optimizer", "adamw, sgd, lion or sign_momentum");
    if (schedule != "constant" && schedule != "cosine" && schedule != "linear" && schedule != "wsd")
      throw Error("schedule is '" + schedule + "'", "train.schedule", "constant, cosine, linear or wsd");
    if (warmup_fraction < 0 || warmup_fraction > 1)
      throw Error(detail::cat("warmup_fraction is ", warmup_fraction), "train.warmup_fraction", "a value in [0, 1]");
    if (warmup_steps < -1)
      throw Error(detail::cat("warmup_steps is ", warmup_steps), "train.warmup_steps", ">= 0, or -1 to use warmup_fraction");
    if (warmup_steps > steps)
      throw Error(detail::cat("warm-up of ", warmup_steps, " steps is longer than the run of ", steps, " steps"),
                  "train.warmup_steps", detail::cat("<= train.steps = ", steps));
    if (!(decay_fraction >= 0 && decay_fraction <= 1))
      throw Error(detail::cat("decay_fraction is ", decay_fraction), "train.decay_fraction", "a value in [0, 1]");
    if (schedule == "wsd") {
      const double warm = warmup_steps >= 0 ? static_cast<double>(warmup_steps) : warmup_fraction * static_cast<double>(steps);
      if (warm + decay_fraction * static_cast<double>(steps) > static_cast<double>(steps) + 1e-9)
        throw Error(detail::cat("wsd warm-up (", warm, " steps) and decay (", decay_fraction * static_cast<double>(steps),
                                " steps) are longer than the run of ", steps, " steps"),
                    "train.decay_fraction", "warm-up + decay <= steps");
    }
    if (min_lr_ratio < 0 || min_lr_ratio > 1)
      throw Error(detail::cat("min_lr_ratio is ", min_lr_ratio), "train.min_lr_ratio", "a value in [0, 1]");
    if (batch_ramp_steps < 0) throw Error(detail::cat("batch_ramp_steps is ", batch_ramp_steps), "train.batch_ramp_steps", ">= 0");
    if (batch_ramp_steps > 0 && (batch_ramp_start < 1 || batch_ramp_start > grad_accum))
      throw Error(detail::cat("batch_ramp_start is ", batch_ramp_start), "train.batch_ramp_start",
                  detail::cat("1 <= batch_ramp_start <= grad_accum = ", grad_accum));
    auto beta = [](double v, const char* name) {
      if (!(v >= 0 && v < 1)) throw Error(detail::cat(name, " is ", v), detail::cat("train.", name), "a value in [0, 1)");
    };
    beta(beta1, "beta1");
    beta(beta2, "beta2");
    beta(lion_beta1, "lion_beta1");
    beta(lion_beta2, "lion_beta2");
    beta(momentum, "momentum");
    beta(dampening, "dampening");
    if (nesterov && (momentum <= 0 || dampening != 0))
      throw Error("Nesterov momentum needs momentum > 0 and dampening 0", "train.nesterov",
                  "momentum > 0 and dampening = 0, or nesterov: false");
    if (!(adam_eps > 0)) throw Error(detail::cat("adam_eps is ", adam_eps), "train.adam_eps", "a positive number");
    if (!(sign_threshold >= 0 && sign_threshold < 1))
      throw Error(detail::cat("sign_threshold is ", sign_threshold), "train.sign_threshold", "a value in [0, 1)");
    auto nonneg = [](double v, const char* name) {
      if (!(v >= 0)) throw Error(detail::cat(name, " is ", v), detail::cat("train.", name), ">= 0");
    };
    nonneg(weight_decay, "weight_decay");
    nonneg(l2, "l2");
    nonneg(expert_weight_decay, "expert_weight_decay");
    nonneg(expert_l2, "expert_l2");
    if (clamp_weights && !(clamp_min <= clamp_max))
      throw Error(detail::cat("clamp range has min ", clamp_min, " > max ", clamp_max), "train.clamp_min/clamp_max",
                  "clamp_min <= clamp_max");
    if (expert_group && expert_clamp_weights && !(expert_clamp_min <= expert_clamp_max))
      throw Error(detail::cat("expert clamp range has min ", expert_clamp_min, " > max ", expert_clamp_max),
                  "train.expert_clamp_min/expert_clamp_max", "expert_clamp_min <= expert_clamp_max");
    if (loss_scaling != "dynamic" && loss_scaling != "static")
      throw Error("loss_scaling is '" + loss_scaling + "'", "train.loss_scaling", "dynamic or static");
    if (!(loss_scale > 0)) throw Error(detail::cat("loss_scale is ", loss_scale), "train.loss_scale", "a positive number");
    if (!(loss_scale_growth >= 1))
      throw Error(detail::cat("loss_scale_growth is ", loss_scale_growth), "train.loss_scale_growth", ">= 1");
    if (!(loss_scale_backoff > 0 && loss_scale_backoff < 1))
      throw Error(detail::cat("loss_scale_backoff is ", loss_scale_backoff), "train.loss_scale_backoff", "a value in (0, 1)");
    if (loss_scale_interval <= 0)
      throw Error(detail::cat("loss_scale_interval is ", loss_scale_interval), "train.loss_scale_interval", "a positive step count");
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

// The process grid and the distributed options (docs/parallel.md). The sizes multiply to
// the number of ranks; data = 0 takes what the others leave. A checkpoint does not depend
// on them: a run may resume on another grid.
struct ParallelConfig {
  std::int64_t data = 0;           // data-parallel ranks; 0 = world / (expert x tensor x pipeline)
  std::int64_t expert = 1;         // expert-parallel ranks (the experts of a layer are split over them)
  std::int64_t tensor = 1;         // tensor-parallel ranks
  std::int64_t pipeline = 1;       // pipeline stages
  std::string reduction = "fixed"; // fixed: bitwise, tree order; native: the MPI library's sum
  double bucket_mb = 4;            // gradient bucket size (MiB): each is reduced as soon as backward finishes it
  bool zero = false;               // ZeRO-1: optimizer state and master weights sharded over data-parallel ranks
  std::int64_t powersgd_rank = 0;  // PowerSGD gradient compression of rank r across replicas; 0 = off

  static constexpr auto fields() {
    using C = ParallelConfig;
    return std::make_tuple(
        field("data", &C::data, "data-parallel ranks; 0 = world size / (expert x tensor x pipeline)"),
        field("expert", &C::expert, "expert-parallel ranks (must divide model.n_experts)"),
        field("tensor", &C::tensor, "tensor-parallel ranks (must divide heads and FFN widths)"),
        field("pipeline", &C::pipeline, "pipeline stages (must divide model.n_layers)"),
        field("reduction", &C::reduction, "fixed (bitwise equal to one process) | native (MPI's own sum)"),
        field("bucket_mb", &C::bucket_mb, "gradient bucket size in MiB (reduced while backward runs)"),
        field("zero", &C::zero, "ZeRO-1: shard optimizer state and master weights over data-parallel ranks"),
        field("powersgd_rank", &C::powersgd_rank, "PowerSGD: compress the replicas' gradient matrices to rank r; 0 = off"));
  }
  void validate() const {
    if (data < 0) throw Error(detail::cat("data is ", data), "parallel.data", "0 (the rest of the world) or a positive rank count");
    for (auto [v, n] : {std::pair{expert, "parallel.expert"}, {tensor, "parallel.tensor"}, {pipeline, "parallel.pipeline"}})
      if (v < 1) throw Error(detail::cat("size is ", v), n, "a positive rank count");
    if (reduction != "fixed" && reduction != "native")
      throw Error("reduction is '" + reduction + "'", "parallel.reduction", "fixed or native");
    if (powersgd_rank < 0)
      throw Error(detail::cat("powersgd_rank is ", powersgd_rank), "parallel.powersgd_rank", "0 (off) or a rank >= 1");
    if (!(bucket_mb > 0) || !std::isfinite(bucket_mb))
      throw Error(detail::cat("bucket_mb is ", bucket_mb), "parallel.bucket_mb", "a positive size in MiB");
  }
};

struct Config {
  ModelConfig model;
  TrainConfig train;
  DataConfig data;
  CheckpointConfig checkpoint;
  ParallelConfig parallel;
  void validate() const {
    model.validate();
    train.validate(model);
    data.validate();
    checkpoint.validate();
    parallel.validate();
  }
};

}  // namespace tmoe
