#pragma once
// The whole-model parity cases shared by the CPU program that writes the reference
// (model_reference.cpp, backend::Cpu) and the GPU test that reads it (test_cuda_model.cu,
// backend::Cuda): the same model types, config, seed and batch on both sides, and the file
// format. No Eigen and no CUDA here. The MoE cases (after the dense ones) route on the host
// and compute on the device (moe/moe_layer.hpp): top-k with the default balancing terms;
// sigmoid-bias routing with a capacity, a shared expert and the bias update's buffer; GELU
// experts under dropout, expert dropout, expert drop and router jitter.
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "tmoe/backend/stored.hpp"
#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/layers/attention.hpp"
#include "tmoe/layers/dense_ffn.hpp"
#include "tmoe/layers/norm.hpp"
#include "tmoe/models/decoder_lm.hpp"
#include "tmoe/models/transformer_block.hpp"
#include "tmoe/moe/experts/gelu_ffn.hpp"
#include "tmoe/moe/experts/swiglu.hpp"
#include "tmoe/moe/moe_layer.hpp"
#include "tmoe/moe/routers/sigmoid_bias.hpp"
#include "tmoe/moe/routers/topk.hpp"

namespace model_cases {

using RopeSwiGLU = tmoe::DecoderLM<tmoe::TransformerBlock<tmoe::CausalAttention<tmoe::Rope>, tmoe::Dense<tmoe::SwiGLU>>, tmoe::RmsNorm>;
using LearnedGelu =
    tmoe::DecoderLM<tmoe::TransformerBlock<tmoe::CausalAttention<tmoe::LearnedPositions>, tmoe::Dense<tmoe::GeluFFN>>, tmoe::LayerNorm>;

using MoETopK =
    tmoe::DecoderLM<tmoe::TransformerBlock<tmoe::CausalAttention<tmoe::Rope>, tmoe::MoE<tmoe::SwiGLU, tmoe::TopK>>, tmoe::RmsNorm>;
using MoESigmoidShared = tmoe::DecoderLM<
    tmoe::TransformerBlock<tmoe::CausalAttention<tmoe::Rope>,
                           tmoe::MoE<tmoe::SwiGLU, tmoe::SigmoidBias, tmoe::CapacityFactor,
                                     tmoe::Balancing<tmoe::AuxLoss, tmoe::SeqAuxLoss, tmoe::ZLoss, tmoe::BiasUpdate>>>,
    tmoe::RmsNorm>;
using MoEGeluDropout =
    tmoe::DecoderLM<tmoe::TransformerBlock<tmoe::CausalAttention<tmoe::LearnedPositions>, tmoe::MoE<tmoe::GeluFFN, tmoe::TopK>>,
                    tmoe::LayerNorm>;

constexpr std::int64_t kBatch = 2, kSeq = 24;
constexpr std::uint64_t kSeed = 1234;

// Tiny shapes (DESIGN.md): d_model 32, 2 layers, 4 heads, vocabulary 64.
inline tmoe::ModelConfig config(bool dropout) {
  tmoe::ModelConfig c;
  c.vocab_size = 64;
  c.context = 32;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.d_ff = 48;
  c.tie_embeddings = !dropout;
  c.linear_bias = dropout;
  if (dropout) {
    c.dropout = 0.1;
    c.attn_dropout = 0.1;
  }
  return c;
}

// The MoE cases: 4 experts, top-2, expert width 32, on config(dropout). kind 0: plain
// (dropless top-k); 1: capacity 1.0 (some assignments dropped), one shared expert, the
// sequence-wise loss on; 2: expert dropout, expert drop and router jitter (with dropout).
inline tmoe::ModelConfig moe_config(int kind) {
  tmoe::ModelConfig c = config(kind == 2);
  c.n_experts = 4;
  c.top_k = 2;
  c.d_expert = 32;
  if (kind == 1) {
    c.capacity_factor = 1.0;
    c.n_shared_experts = 1;
    c.seq_aux_loss_weight = 1e-2;
  }
  if (kind == 2) {
    c.expert_dropout = "0.1";
    c.expert_drop_rate = 0.2;
    c.router_jitter = 0.05;
  }
  return c;
}

inline std::vector<std::int32_t> tokens(std::int64_t n, std::uint32_t salt) {
  std::vector<std::int32_t> v(static_cast<std::size_t>(n));
  std::uint32_t x = 2463534242u ^ salt;
  for (auto& t : v) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    t = static_cast<std::int32_t>(x % 64);
  }
  return v;
}

// What one case records: the loss, the logits and the parameter gradients after one
// forward/backward from the seeded initialisation, in training mode (dropout on when the
// config has it).
struct Result {
  double loss = 0;
  std::vector<double> logits, grads;
};

// Runs a case on model type M (any backend); `fetch(ptr, n)` returns n backend values as
// doubles.
template <class M, class Fetch>
Result run(const tmoe::ModelConfig& cfg, Fetch&& fetch) {
  M m(cfg);
  m.init(kSeed);
  const auto ids = tokens(kBatch * kSeq, 1), tgt = tokens(kBatch * kSeq, 2);
  m.set_mode(true, kSeed, 3, 0);
  m.zero_grad();
  const auto lp = m.forward(ids.data(), tgt.data(), kBatch, kSeq);
  m.backward(1.0);
  Result r;
  r.loss = lp.total;
  r.logits = fetch(m.logits(), kBatch * kSeq * cfg.vocab_size);
  r.grads = fetch(m.grads(), m.registry().total());
  return r;
}

inline const char* const kCases[] = {"rope_swiglu_rmsnorm_fp32", "learned_gelu_layernorm_dropout_fp32",
                                     "rope_swiglu_rmsnorm_bf16_storage",
                                     "moe_topk_swiglu_fp32",
                                     "moe_sigmoidbias_capacity_shared_fp32",
                                     "moe_gelu_expertdrop_jitter_dropout_fp32"};

inline void write(std::ofstream& f, const Result& r) {
  const std::uint64_t nl = r.logits.size(), ng = r.grads.size();
  f.write(reinterpret_cast<const char*>(&r.loss), sizeof(double));
  f.write(reinterpret_cast<const char*>(&nl), 8);
  f.write(reinterpret_cast<const char*>(r.logits.data()), static_cast<std::streamsize>(8 * nl));
  f.write(reinterpret_cast<const char*>(&ng), 8);
  f.write(reinterpret_cast<const char*>(r.grads.data()), static_cast<std::streamsize>(8 * ng));
}

inline Result read(std::ifstream& f, const std::string& path) {
  Result r;
  std::uint64_t nl = 0, ng = 0;
  f.read(reinterpret_cast<char*>(&r.loss), sizeof(double));
  f.read(reinterpret_cast<char*>(&nl), 8);
  if (!f || nl > (1u << 24)) throw tmoe::Error("truncated or corrupt reference", path, "a file written by gpu_model_reference");
  r.logits.resize(nl);
  f.read(reinterpret_cast<char*>(r.logits.data()), static_cast<std::streamsize>(8 * nl));
  f.read(reinterpret_cast<char*>(&ng), 8);
  if (!f || ng > (1u << 24)) throw tmoe::Error("truncated or corrupt reference", path, "a file written by gpu_model_reference");
  r.grads.resize(ng);
  f.read(reinterpret_cast<char*>(r.grads.data()), static_cast<std::streamsize>(8 * ng));
  if (!f) throw tmoe::Error("truncated reference", path, "a file written by gpu_model_reference");
  return r;
}

// Every case on backend B (backend::Cpu or backend::Cuda), in kCases order.
template <class B, class Fetch>
std::vector<Result> run_all(Fetch&& fetch) {
  std::vector<Result> out;
  out.push_back(run<typename RopeSwiGLU::template impl<float, B>>(config(false), fetch));
  out.push_back(run<typename LearnedGelu::template impl<float, B>>(config(true), fetch));
  out.push_back(run<typename RopeSwiGLU::template impl<float, tmoe::backend::Stored<B, tmoe::bf16>>>(config(false), fetch));
  out.push_back(run<typename MoETopK::template impl<float, B>>(moe_config(0), fetch));
  out.push_back(run<typename MoESigmoidShared::template impl<float, B>>(moe_config(1), fetch));
  out.push_back(run<typename MoEGeluDropout::template impl<float, B>>(moe_config(2), fetch));
  return out;
}

}  // namespace model_cases
