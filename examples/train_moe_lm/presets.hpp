#pragma once
// The model compositions train_moe_lm offers, chosen by the config key model.preset. Each is
// one translation unit (preset_*.cpp) that instantiates the training program for its Model
// type, so adding one costs one file and one line below. A preset also supplies defaults for
// the numbers its design is usually run with; the config file and the command line override
// them like any other default.
#include <span>
#include <string>

#include "tmoe/core/config.hpp"
#include "tmoe/data/active_learning.hpp"

namespace train_moe_lm {

struct Options {
  tmoe::Config cfg;
  std::string preset;
  std::string backend = "auto";  // --backend: cpu, cuda, or auto (cuda when built with it and a GPU is present)
  std::string select_spec;  // --select: rank these records instead of training
  tmoe::data::ActiveLearningConfig select;
};

struct Preset {
  const char* name;
  const char* composition;  // as a sentence, for --help
  void (*defaults)(tmoe::Config&);
};

// Defined in preset_<name>[_<precision>].cpp, one translation unit each (a precision is a
// compiled kind, DESIGN.md principle 1); main.cpp maps (model.preset, train.precision) to them.
int run_mixtral_like(const Options&);
int run_mixtral_like_bf16(const Options&);
int run_mixtral_like_fp16(const Options&);
int run_deepseek_like(const Options&);
int run_switch(const Options&);
int run_expert_choice(const Options&);
int run_hash(const Options&);
int run_seed(const Options&);
int run_seed_fp16(const Options&);
#if defined(TMOE_EXAMPLE_CUDA)
// preset_mixtral_like_cuda.cu: the same presets on backend::Cuda.
int run_mixtral_like_cuda(const Options&);
int run_mixtral_like_bf16_cuda(const Options&);
#endif

struct Program {
  const char* preset;
  const char* precision;  // train.precision
  int (*run)(const Options&);
  const char* backend = "cpu";  // --backend
};
inline std::span<const Program> programs() {
  static const Program table[] = {
      {"mixtral-like", "fp32", run_mixtral_like}, {"mixtral-like", "bf16", run_mixtral_like_bf16},
      {"mixtral-like", "fp16", run_mixtral_like_fp16}, {"deepseek-like", "fp32", run_deepseek_like},
      {"switch", "fp32", run_switch},           {"expert-choice", "fp32", run_expert_choice},
      {"hash", "fp32", run_hash},               {"seed", "fp32", run_seed},
      {"seed", "fp16", run_seed_fp16},
#if defined(TMOE_EXAMPLE_CUDA)
      {"mixtral-like", "fp32", run_mixtral_like_cuda, "cuda"}, {"mixtral-like", "bf16", run_mixtral_like_bf16_cuda, "cuda"},
#endif
  };
  return table;
}

inline std::span<const Preset> presets() {
  static const Preset table[] = {
      {"mixtral-like", "MoE<SwiGLU, TopK, Dropless, Balancing<AuxLoss, ZLoss>>: top-2 of 8, softmax renormalised over the two",
       [](tmoe::Config& c) {
         tmoe::ModelConfig& m = c.model;
         m.top_k = 2;
         m.router_renormalize = true;
       }},
      {"deepseek-like",
       "MoE<SwiGLU, GroupLimited<SigmoidBias>, Dropless, Balancing<SeqAuxLoss, BiasUpdate>> + shared expert, first "
       "layer dense: sigmoid scores, group-limited top-k, aux-loss-free bias balancing",
       [](tmoe::Config& c) {
         tmoe::ModelConfig& m = c.model;
         m.top_k = 2;
         m.router_renormalize = true;
         m.n_groups = 4;
         m.top_groups = 2;
         m.route_scale = 1.0;
         m.n_shared_experts = 1;
         m.moe_first_dense = 1;
         m.seq_aux_loss_weight = 1e-4;
         m.bias_update_rate = 1e-3;
       }},
      {"switch", "SwitchMoE<SwiGLU> = MoE<SwiGLU, TopK, CapacityFactor>: top-1, unnormalised gate, capacity 1.25, "
                 "MoE every other layer",
       [](tmoe::Config& c) {
         tmoe::ModelConfig& m = c.model;
         m.top_k = 1;
         m.router_renormalize = false;
         m.capacity_factor = 1.25;
         m.moe_every = 2;
       }},
      {"expert-choice", "MoE<SwiGLU, ExpertChoice, CapacityFactor>: each expert takes its top-C tokens, "
                        "C = capacity_factor * tokens * top_k / experts",
       [](tmoe::Config& c) {
         tmoe::ModelConfig& m = c.model;
         m.top_k = 2;
         m.capacity_factor = 1.0;
       }},
      {"hash", "MoE<SwiGLU, Hash, Dropless>: experts a fixed hash of the token id, nothing learned in routing",
       [](tmoe::Config& c) { c.model.top_k = 1; }},
      {"seed", "MoE<TransformerExpert<SwiGLU>, TopK, Dropless, Balancing<AuxLoss, ZLoss>>: each expert a stack of "
               "expert_depth transformer layers over its routed tokens, router temperature against saturation; the seed's "
               "recipe: fp16 + loss scaling, sign_momentum, per-group expert dropout, clamp [-0.5, 0.5], expert L2",
       [](tmoe::Config& c) {
         tmoe::ModelConfig& m = c.model;
         m.top_k = 2;
         m.router_renormalize = true;
         m.expert_depth = 2;
         m.expert_heads = 4;
         m.router_temperature = 1.5;
         // The seed article's training recipe: FP16 mixed precision with a loss scaler, its
         // sign-momentum optimizer, per-expert-group dropout, clip at 1.0, matrices clamped to
         // [-0.5, 0.5], L2 on the expert parameters, 5% linear warm-up.
         m.n_groups = 2;
         m.expert_dropout = "0.05,0.1";
         c.train.precision = "fp16";
         c.train.optimizer = "sign_momentum";
         c.train.lr = 1e-2;  // the optimizer study's best for sign_momentum (docs/benchmarks.md)
         c.train.clamp_weights = true;
         c.train.expert_group = true;
         c.train.expert_clamp_weights = true;
         c.train.expert_l2 = 1e-4;
         c.train.expert_weight_decay = 0.0;
       }},
  };
  return table;
}

}  // namespace train_moe_lm
