// Parity dump for the PyTorch reference (tests/reference/test_parity.py).
//
//   reference_parity_dump <output-dir>
//
// For each model variant writes <dir>/<variant>.safetensors holding, by registry name:
//   <name>           initial weights (model.init(seed))
//   batch.inputs, batch.targets   (B, T) I32
//   out.logits (B, T, V), out.ce, out.aux, out.total (0-d, F64)
//   grad.<name>      ∂total/∂θ of one forward/backward on the batch
//   step5.<name>     weights after 5 tmoe::Trainer AdamW steps on that same batch
//   trace.step<s>.<name>   for buffers (the SigmoidBias router bias): the value after step s
//                    (optimizer step + bias update), s = 0..4
// and in __metadata__ every ModelConfig and TrainConfig field (model.<f>, train.<f>), the
// block kinds (block.positions/attention/ffn/expert/expert_inner/router/router_inner/
// capacity/balance, model.norm), the precision, the trainer's per-step gradient norms
// (before clipping), learning rates and losses, and per MoE layer of the initial forward
// the rows each expert processed, the assignments dropped by capacity and each balancing
// term's unweighted value (forward.layers.<l>.kept/dropped/terms).
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../support/tiny.hpp"
#include "tmoe/io/safetensors.hpp"
#include "tmoe/tmoe.hpp"

using namespace tmoe;

namespace {

constexpr std::int64_t kBatch = 2, kSeq = 16, kSteps = 5;

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}
template <class V>
std::string to_text(const V& v) {
  if constexpr (std::is_same_v<V, bool>) {
    return v ? "true" : "false";
  } else if constexpr (std::is_same_v<V, std::string>) {
    return v;
  } else if constexpr (std::is_floating_point_v<V>) {
    return fmt(v);
  } else {
    return std::to_string(v);
  }
}
template <class C>
void add_fields(std::map<std::string, std::string>& meta, const std::string& prefix, const C& c) {
  std::apply([&](auto... f) { ((meta[prefix + f.name] = to_text(c.*(f.member))), ...); }, C::fields());
}

template <class T>
const char* dtype_of() {
  return std::is_same_v<T, double> ? "F64" : "F32";
}

std::vector<std::int64_t> dims(const Shape& s) { return {s.dims.begin(), s.dims.begin() + s.rank}; }

// The expert policy of an FFN policy (Dense<E> does not name it as a member).
template <class F>
struct ExpertOf;
template <class E>
struct ExpertOf<Dense<E>> {
  using type = E;
};
template <class E, class R, class C, class Bal>
struct ExpertOf<MoE<E, R, C, Bal>> {
  using type = E;
};

// The inner router of a wrapper (GroupLimited<Inner>), else the router itself.
template <class R>
struct InnerRouter {
  using type = R;
};
template <class R>
  requires requires { typename R::inner; }
struct InnerRouter<R> {
  using type = typename R::inner;
};

template <class Bal>
std::string balance_names() {
  std::string s;
  for (std::size_t i = 0; i < Bal::size; ++i) s += (i ? "," : "") + std::string(Bal::names[i]);
  return s;
}
template <class V>
std::string join(const V& v) {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + to_text(v[i]);
  return s;
}

struct Variant {
  std::string name;
  ModelConfig model;
  TrainConfig train;
  bool expect_drops = false;       // the initial forward must drop assignments (capacity)
  bool expect_bias_moves = false;  // the router bias must move over the trainer's steps
};

// Model = DecoderLM<TransformerBlock<CausalAttention<Pos>, Ffn>, Norm>, P = Fp64 | Fp32.
template <class Model, class P>
void dump(const std::string& dir, const Variant& var) {
  using T = typename P::compute;
  using Block = typename Model::block_policy;
  using Ffn = typename Block::ffn_policy;

  Config cfg;
  cfg.model = var.model;
  cfg.train = var.train;
  cfg.validate();
  const std::uint64_t seed = cfg.train.seed;

  // The dump's own model, initialised with the trainer's seed so both start alike.
  typename Model::template impl<T, backend::Cpu> model(cfg.model);
  model.init(seed);
  const ParamRegistry& reg = model.registry();
  const std::int64_t n = kBatch * kSeq, v = cfg.model.vocab_size;
  const auto inputs = test::random_tokens(n, v, static_cast<unsigned>(seed) + 101);
  const auto targets = test::random_tokens(n, v, static_cast<unsigned>(seed) + 202);

  const std::vector<T> init(model.params(), model.params() + reg.total());
  model.zero_grad();
  const LossParts lp = model.forward(inputs.data(), targets.data(), kBatch, kSeq);
  model.backward(1.0);
  const std::vector<T> logits(model.logits(), model.logits() + n * v);
  const std::vector<T> grads(model.grads(), model.grads() + reg.total());
  const double ce = lp.ce, aux = lp.aux, total = lp.total;

  // Routing of the initial forward, per MoE layer: rows processed and assignments dropped
  // per expert, and each balancing term's unweighted value.
  std::map<std::string, std::string> meta;
  std::int64_t dropped_total = 0;
  std::string routing;  // printed after the variant's first line
  for (std::int64_t l = 0; l < model.n_layers(); ++l) {
    const MoEStats* ms = model.moe_stats(l);
    if (!ms) continue;
    const std::string key = "forward.layers." + std::to_string(l) + ".";
    meta[key + "kept"] = join(ms->tokens);
    meta[key + "dropped"] = join(ms->dropped);
    std::string terms;
    for (std::size_t i = 0; i < ms->terms.size(); ++i)
      terms += (i ? "," : "") + ms->terms[i].first + "=" + fmt(ms->terms[i].second);
    meta[key + "terms"] = terms;
    for (auto d : ms->dropped) dropped_total += d;
    routing += "  layer " + std::to_string(l) + ": rows per expert " + join(ms->tokens) + ", dropped " +
               join(ms->dropped) + ", terms " + terms + "\n";
  }
  if (var.expect_drops && dropped_total == 0) {
    std::cerr << var.name << ": the capacity variant dropped no assignment in the initial forward; lower "
              << "capacity_factor so the parity test covers dropping\n";
    std::exit(1);
  }

  // Five AdamW steps with the Trainer on that same batch.
  Trainer<Model, AdamW, P, Serial, backend::Cpu> trainer(cfg);
  for (std::int64_t i = 0; i < reg.total(); ++i)
    if (trainer.model().params()[i] != init[static_cast<std::size_t>(i)]) {
      std::cerr << var.name << ": the trainer's initial weights differ from model.init(" << seed << ") at element "
                << i << "\n";
      std::exit(1);
    }
  const BatchFn batch = [&](std::int64_t, std::int32_t* in, std::int32_t* tg) {
    std::copy(inputs.begin(), inputs.end(), in);
    std::copy(targets.begin(), targets.end(), tg);
  };
  std::string norms, lrs, losses;
  bool clipped = false;
  // trace.step<s>.<buffer>: buffers (the router bias) after each step
  std::vector<std::pair<std::string, std::vector<T>>> traces;
  std::cout << var.name << " (" << P::name << "): ce " << fmt(ce) << " aux " << fmt(aux) << " total " << fmt(total)
            << "\n"
            << routing;
  for (std::int64_t s = 0; s < cfg.train.steps; ++s) {
    const StepStats st = trainer.train_step(batch);
    const bool c = cfg.train.grad_clip > 0 && st.grad_norm > cfg.train.grad_clip;
    clipped = clipped || c;
    std::cout << "  step " << s << ": loss " << fmt(st.loss) << " grad_norm " << fmt(st.grad_norm) << " lr "
              << fmt(st.lr) << (c ? "  (clipped)" : "") << "\n";
    norms += (s ? "," : "") + fmt(st.grad_norm);
    lrs += (s ? "," : "") + fmt(st.lr);
    losses += (s ? "," : "") + fmt(st.loss);
    for (auto& p : reg.params())
      if (p.has(kTagBuffer)) {
        const T* w = trainer.model().params() + p.offset;
        traces.emplace_back("trace.step" + std::to_string(s) + "." + p.name, std::vector<T>(w, w + p.numel()));
        std::cout << "    " << p.name << " after step " << s << ": " << join(traces.back().second) << "\n";
      }
  }
  std::cout << "  clipping " << (clipped ? "triggered" : "did not trigger") << " (grad_clip " << cfg.train.grad_clip
            << ")\n";
  const T* final_params = trainer.model().params();
  if (var.expect_bias_moves) {
    bool moved = false;
    for (auto& p : reg.params())
      if (p.has(kTagBuffer))
        for (std::int64_t i = 0; i < p.numel(); ++i) moved = moved || final_params[p.offset + i] != init[p.offset + i];
    if (!moved) {
      std::cerr << var.name << ": the router bias did not move over " << cfg.train.steps
                << " steps; raise bias_update_rate\n";
      std::exit(1);
    }
  }

  meta["variant"] = var.name;
  meta["precision"] = P::name;
  add_fields(meta, "model.", cfg.model);
  add_fields(meta, "train.", cfg.train);
  meta["model.norm"] = Model::norm_policy::name;
  meta["block.positions"] = Block::attention::positions::name;
  meta["block.attention"] = Block::attention::name;
  meta["block.ffn"] = Ffn::name;
  meta["block.expert"] = ExpertOf<Ffn>::type::name;
  if constexpr (Ffn::is_moe) {
    using Router = typename Ffn::router_policy;
    meta["block.expert_inner"] = dense_expert_t<typename Ffn::expert_policy>::name;
    meta["block.router"] = Router::name;
    meta["block.router_inner"] = InnerRouter<Router>::type::name;
    meta["block.capacity"] = Ffn::capacity_policy::name;
    meta["block.balance"] = balance_names<typename Ffn::balance_policy>();
  }
  meta["batch.B"] = std::to_string(kBatch);
  meta["batch.T"] = std::to_string(kSeq);
  meta["trainer.grad_norms"] = norms;
  meta["trainer.lrs"] = lrs;
  meta["trainer.losses"] = losses;
  meta["trainer.clipped"] = clipped ? "true" : "false";

  std::vector<io::TensorRef> refs;
  const char* dt = dtype_of<T>();
  for (auto& p : reg.params()) refs.push_back({p.name, dt, dims(p.shape), init.data() + p.offset});
  refs.push_back({"batch.inputs", "I32", {kBatch, kSeq}, inputs.data()});
  refs.push_back({"batch.targets", "I32", {kBatch, kSeq}, targets.data()});
  refs.push_back({"out.logits", dt, {kBatch, kSeq, v}, logits.data()});
  refs.push_back({"out.ce", "F64", {}, &ce});
  refs.push_back({"out.aux", "F64", {}, &aux});
  refs.push_back({"out.total", "F64", {}, &total});
  for (auto& p : reg.params()) refs.push_back({"grad." + p.name, dt, dims(p.shape), grads.data() + p.offset});
  for (auto& p : reg.params()) refs.push_back({"step5." + p.name, dt, dims(p.shape), final_params + p.offset});
  for (auto& [name, values] : traces)
    refs.push_back({name, dt, {static_cast<std::int64_t>(values.size())}, values.data()});
  const std::string path = dir + "/" + var.name + ".safetensors";
  io::write_safetensors(path, refs, meta);
  std::cout << "  wrote " << path << " (" << reg.size() << " parameters)\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " <output-dir>\n";
    return 2;
  }
  const std::string dir = argv[1];
  try {
    std::filesystem::create_directories(dir);

    TrainConfig tc;
    tc.seed = 7;
    tc.steps = kSteps;
    tc.batch_size = kBatch;
    tc.seq_len = kSeq;
    tc.lr = 1e-2;
    tc.warmup_fraction = 0.4;
    tc.weight_decay = 0.1;
    tc.grad_clip = 1.0;
    tc.threads = 0;

    using RopeAttn = CausalAttention<Rope>;
    using LearnedAttn = CausalAttention<LearnedPositions>;

    // (a) MoE<SwiGLU, TopK> + RoPE + RMSNorm, tied head, renormalised router, fp64
    {
      Variant v{"a_moe_swiglu_rope_rmsnorm_fp64", test::tiny_model(), tc};
      dump<DecoderLM<TransformerBlock<RopeAttn, MoE<SwiGLU, TopK>>, RmsNorm>, Fp64>(dir, v);
    }
    // (b) MoE<GeluFFN, TopK>, unnormalised router, untied head, k = 1, fp64
    {
      Variant v{"b_moe_gelu_unnorm_k1_untied_fp64", test::tiny_model(), tc};
      v.model.router_renormalize = false;
      v.model.tie_embeddings = false;
      v.model.top_k = 1;
      v.train.seed = 8;
      v.train.grad_clip = 3.0;  // clips some steps (norms ~4, ~3.06) but not others (~2.4)
      dump<DecoderLM<TransformerBlock<RopeAttn, MoE<GeluFFN, TopK>>, RmsNorm>, Fp64>(dir, v);
    }
    // (c) Dense<GeluFFN> + learned positions + LayerNorm + linear biases, fp64
    {
      Variant v{"c_dense_gelu_learned_layernorm_bias_fp64", test::tiny_model(), tc};
      v.model.linear_bias = true;
      v.train.seed = 9;
      dump<DecoderLM<TransformerBlock<LearnedAttn, Dense<GeluFFN>>, LayerNorm>, Fp64>(dir, v);
    }
    // (d) variant (a) in fp32
    {
      Variant v{"d_moe_swiglu_rope_rmsnorm_fp32", test::tiny_model(), tc};
      dump<DecoderLM<TransformerBlock<RopeAttn, MoE<SwiGLU, TopK>>, RmsNorm>, Fp32>(dir, v);
    }
    // (e) extra coverage: MoE<GeluFFN> with exact (erf) GELU, k = 2 renormalised, learned
    //     positions, LayerNorm, attention biases (experts never have biases), untied, fp64
    {
      Variant v{"e_moe_gelu_exact_learned_layernorm_bias_fp64", test::tiny_model(), tc};
      v.model.gelu_exact = true;
      v.model.linear_bias = true;
      v.model.tie_embeddings = false;
      v.train.seed = 10;
      dump<DecoderLM<TransformerBlock<LearnedAttn, MoE<GeluFFN, TopK>>, LayerNorm>, Fp64>(dir, v);
    }
    // (f) extra coverage: Dense<SwiGLU> with biases + RoPE + RMSNorm, no clipping, fp64
    {
      Variant v{"f_dense_swiglu_rope_rmsnorm_bias_noclip_fp64", test::tiny_model(), tc};
      v.model.linear_bias = true;
      v.train.grad_clip = 0.0;
      v.train.seed = 11;
      dump<DecoderLM<TransformerBlock<RopeAttn, Dense<SwiGLU>>, RmsNorm>, Fp64>(dir, v);
    }

    // ---- the MoE variants of issue 4 (all fp64, RoPE + RMSNorm, tiny shapes)
    // (g) TopK at router temperature 0.5 (sharper), renormalised, gates × route_scale 1.5,
    //     z-loss weight raised so its term (on the RAW logits) carries weight
    {
      Variant v{"g_topk_temperature0.5_scale1.5_fp64", test::tiny_model(), tc};
      v.model.router_temperature = 0.5;
      v.model.route_scale = 1.5;
      v.model.z_loss_weight = 1e-2;
      v.train.seed = 12;
      dump<DecoderLM<TransformerBlock<RopeAttn, MoE<SwiGLU, TopK>>, RmsNorm>, Fp64>(dir, v);
    }
    // (h) TopK at temperature 2 (flatter), unnormalised gates (softmax-then-top-k), k = 3
    {
      Variant v{"h_topk_temperature2_unnorm_k3_fp64", test::tiny_model(), tc};
      v.model.router_temperature = 2.0;
      v.model.router_renormalize = false;
      v.model.top_k = 3;
      v.model.z_loss_weight = 1e-2;
      v.train.seed = 13;
      dump<DecoderLM<TransformerBlock<RopeAttn, MoE<SwiGLU, TopK>>, RmsNorm>, Fp64>(dir, v);
    }
    // (i) Switch: k = 1, unnormalised gate, CapacityFactor 1.0 (C = 8 of 32 tokens over 4
    //     experts), drop_policy probability: overflowing experts keep their largest gates
    {
      Variant v{"i_switch_capacity1.0_probability_fp64", test::tiny_model(), tc};
      v.model.top_k = 1;
      v.model.router_renormalize = false;
      v.model.capacity_factor = 1.0;
      v.model.drop_policy = "probability";
      v.expect_drops = true;
      v.train.seed = 14;
      dump<DecoderLM<TransformerBlock<RopeAttn, SwitchMoE<SwiGLU>>, RmsNorm>, Fp64>(dir, v);
    }
    // (j) Switch with drop_policy position and capacity factor 0.75 (C = 6): the earliest
    //     assignments are kept
    {
      Variant v{"j_switch_capacity0.75_position_fp64", test::tiny_model(), tc};
      v.model.top_k = 1;
      v.model.router_renormalize = false;
      v.model.capacity_factor = 0.75;
      v.model.drop_policy = "position";
      v.expect_drops = true;
      v.train.seed = 15;
      dump<DecoderLM<TransformerBlock<RopeAttn, SwitchMoE<SwiGLU>>, RmsNorm>, Fp64>(dir, v);
    }
    // (k) DeepSeek-V3 style: GroupLimited<SigmoidBias> (8 experts in 4 groups, 2 groups
    //     eligible, k = 3), gates renormalised × route_scale 2.5, one shared expert, the
    //     first layer dense (3 layers: dense, MoE, MoE), balancing = Switch aux + sequence-wise
    //     aux + z-loss + the aux-loss-free bias update with a rate (0.02) that moves the bias
    //     every step and changes the selections
    {
      Variant v{"k_deepseek_grouplimited_sigmoidbias_shared_fp64", test::tiny_model(), tc};
      v.model.n_layers = 3;
      v.model.n_experts = 8;
      v.model.n_groups = 4;
      v.model.top_groups = 2;
      v.model.top_k = 3;
      v.model.d_expert = 16;
      v.model.route_scale = 2.5;
      v.model.seq_aux_loss_weight = 1e-2;
      v.model.bias_update_rate = 0.02;
      v.model.n_shared_experts = 1;
      v.model.moe_first_dense = 1;
      v.expect_bias_moves = true;
      v.train.seed = 16;
      using DeepSeekMoE =
          MoE<SwiGLU, GroupLimited<SigmoidBias>, Dropless, Balancing<AuxLoss, SeqAuxLoss, ZLoss, BiasUpdate>>;
      dump<DecoderLM<TransformerBlock<RopeAttn, DeepSeekMoE>, RmsNorm>, Fp64>(dir, v);
    }
    // (l) shared experts: MoE<SwiGLU, TopK> plus 2 shared experts of width 12 (one FFN of
    //     width 24 on every token), k = 1 renormalised (gate 1)
    {
      Variant v{"l_topk_shared_experts2_fp64", test::tiny_model(), tc};
      v.model.n_shared_experts = 2;
      v.model.d_shared_expert = 12;
      v.model.top_k = 1;
      v.train.seed = 17;
      dump<DecoderLM<TransformerBlock<RopeAttn, MoE<SwiGLU, TopK>>, RmsNorm>, Fp64>(dir, v);
    }
    // (m) TransformerExpert<SwiGLU>: each expert is 2 pre-norm layers with 2-head causal
    //     attention over the routed tokens of each sequence (RoPE positions = index within
    //     the routed subsequence), k = 2
    {
      Variant v{"m_transformer_expert_depth2_heads2_fp64", test::tiny_model(), tc};
      v.model.expert_depth = 2;
      v.model.expert_heads = 2;
      v.model.d_expert = 16;
      v.train.seed = 18;
      dump<DecoderLM<TransformerBlock<RopeAttn, MoE<TransformerExpert<SwiGLU>, TopK>>, RmsNorm>, Fp64>(dir, v);
    }
  } catch (const std::exception& e) {
    std::cerr << "reference_parity_dump: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
