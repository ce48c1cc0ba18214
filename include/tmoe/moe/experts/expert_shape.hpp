#pragma once
// The sizes and init of one feed-forward expert (also used for a dense FFN and for a
// shared expert). The last group of fields is read only by experts that are themselves
// small transformers (TransformerExpert): layers per expert, attention heads, norm epsilon,
// RoPE base and the longest routed subsequence they can see.
#include <cstdint>

namespace tmoe {

struct ExpertShape {
  std::int64_t d_model = 0, hidden = 0;
  bool bias = false;
  std::uint32_t tags = 0;
  double std = 0.02, out_std = 0.02;
  bool gelu_exact = false;
  // TransformerExpert only
  std::int64_t depth = 1;        // model.expert_depth
  std::int64_t heads = 1;        // model.expert_heads
  double norm_eps = 1e-5;        // model.norm_eps
  double rope_base = 10000.0;    // model.rope_base
  std::int64_t context = 0;      // model.context: the longest routed subsequence
  // Tensor parallelism: this rank holds hidden units [tp_rank H / tp_size, ...) — the
  // first matrices column-parallel, the output matrix row-parallel; the output is then
  // this rank's partial sum, which the owner of the expert all-reduces.
  int tp_size = 1, tp_rank = 0;
};

}  // namespace tmoe
