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
// and in __metadata__ every ModelConfig and TrainConfig field (model.<f>, train.<f>), the
// block kinds (block.positions/ffn/expert/router, model.norm), the precision, and the
// trainer's per-step gradient norms (before clipping) and learning rates.
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
template <class E, class R>
struct ExpertOf<MoE<E, R>> {
  using type = E;
};

struct Variant {
  std::string name;
  ModelConfig model;
  TrainConfig train;
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
  std::string norms, lrs;
  bool clipped = false;
  std::cout << var.name << " (" << P::name << "): ce " << fmt(ce) << " aux " << fmt(aux) << " total " << fmt(total)
            << "\n";
  for (std::int64_t s = 0; s < cfg.train.steps; ++s) {
    const StepStats st = trainer.train_step(batch);
    const bool c = cfg.train.grad_clip > 0 && st.grad_norm > cfg.train.grad_clip;
    clipped = clipped || c;
    std::cout << "  step " << s << ": loss " << fmt(st.loss) << " grad_norm " << fmt(st.grad_norm) << " lr "
              << fmt(st.lr) << (c ? "  (clipped)" : "") << "\n";
    norms += (s ? "," : "") + fmt(st.grad_norm);
    lrs += (s ? "," : "") + fmt(st.lr);
  }
  std::cout << "  clipping " << (clipped ? "triggered" : "did not trigger") << " (grad_clip " << cfg.train.grad_clip
            << ")\n";
  const T* final_params = trainer.model().params();

  std::map<std::string, std::string> meta;
  meta["variant"] = var.name;
  meta["precision"] = P::name;
  add_fields(meta, "model.", cfg.model);
  add_fields(meta, "train.", cfg.train);
  meta["model.norm"] = Model::norm_policy::name;
  meta["block.positions"] = Block::attention::positions::name;
  meta["block.attention"] = Block::attention::name;
  meta["block.ffn"] = Ffn::name;
  meta["block.expert"] = ExpertOf<Ffn>::type::name;
  if constexpr (Ffn::is_moe) meta["block.router"] = Ffn::router_policy::name;
  meta["batch.B"] = std::to_string(kBatch);
  meta["batch.T"] = std::to_string(kSeq);
  meta["trainer.grad_norms"] = norms;
  meta["trainer.lrs"] = lrs;
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
  } catch (const std::exception& e) {
    std::cerr << "reference_parity_dump: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
