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
  std::string select_spec;  // --select: rank these records instead of training
  tmoe::data::ActiveLearningConfig select;
};

struct Preset {
  const char* name;
  const char* composition;  // as a sentence, for --help
  void (*defaults)(tmoe::ModelConfig&);
};

// Defined in preset_<name>.cpp, one translation unit each; main.cpp maps names to them.
int run_mixtral_like(const Options&);
int run_deepseek_like(const Options&);
int run_switch(const Options&);
int run_expert_choice(const Options&);
int run_hash(const Options&);
int run_seed(const Options&);

inline std::span<const Preset> presets() {
  static const Preset table[] = {
      {"mixtral-like", "MoE<SwiGLU, TopK, Dropless, Balancing<AuxLoss, ZLoss>>: top-2 of 8, softmax renormalised over the two",
       [](tmoe::ModelConfig& m) {
         m.top_k = 2;
         m.router_renormalize = true;
       }},
      {"deepseek-like",
       "MoE<SwiGLU, GroupLimited<SigmoidBias>, Dropless, Balancing<SeqAuxLoss, BiasUpdate>> + shared expert, first "
       "layer dense: sigmoid scores, group-limited top-k, aux-loss-free bias balancing",
       [](tmoe::ModelConfig& m) {
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
       [](tmoe::ModelConfig& m) {
         m.top_k = 1;
         m.router_renormalize = false;
         m.capacity_factor = 1.25;
         m.moe_every = 2;
       }},
      {"expert-choice", "MoE<SwiGLU, ExpertChoice, CapacityFactor>: each expert takes its top-C tokens, "
                        "C = capacity_factor * tokens * top_k / experts",
       [](tmoe::ModelConfig& m) {
         m.top_k = 2;
         m.capacity_factor = 1.0;
       }},
      {"hash", "MoE<SwiGLU, Hash, Dropless>: experts a fixed hash of the token id, nothing learned in routing",
       [](tmoe::ModelConfig& m) { m.top_k = 1; }},
      {"seed", "MoE<TransformerExpert<SwiGLU>, TopK, Dropless, Balancing<AuxLoss, ZLoss>>: each expert a stack of "
               "expert_depth transformer layers over its routed tokens, router temperature against saturation",
       [](tmoe::ModelConfig& m) {
         m.top_k = 2;
         m.router_renormalize = true;
         m.expert_depth = 2;
         m.expert_heads = 4;
         m.router_temperature = 1.5;
       }},
  };
  return table;
}

}  // namespace train_moe_lm
