#pragma once
// A decoder-only language model composed at compile time:
//   embedding (+ learned positions) -> n_layers x Block -> final Norm -> head (tied or not)
// with sizes from the run-time ModelConfig. All parameters live in one flat buffer (and
// gradients in another) described by the registry; layers hold views into them.
// Loss = mean cross-entropy over tokens + Σ_MoE layers Σ_balancing terms weight · value
// (conventions.md). Layers the config marks dense (moe_first_dense, moe_every) use the
// block's dense feed-forward instead of its MoE.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "tmoe/core/macros.hpp"
#include <functional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "tmoe/core/concepts.hpp"
#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/philox.hpp"
#include "tmoe/core/registry.hpp"
#include "tmoe/layers/norm.hpp"
#include "tmoe/layers/tensor_group.hpp"
#include "tmoe/models/recompute.hpp"
#include "tmoe/moe/plan.hpp"
#include "tmoe/moe/routing.hpp"
#include "tmoe/tensor/tensor.hpp"

namespace tmoe {

struct LossParts {
  double ce = 0;     // mean cross-entropy, nats per token
  double aux = 0;    // weighted balancing losses summed over MoE layers
  double total = 0;  // what the gradient is of
};

template <class Block, class Norm = RmsNorm>
struct DecoderLM {
  static_assert(BlockPolicy<Block>, "tmoe: DecoderLM<Block, Norm>: the first argument is not a block policy such as "
                                    "TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, TopK>> (see docs/concepts/model.md)");
  static_assert(NormPolicy<Norm>, "tmoe: DecoderLM<Block, Norm>: the second argument is not a norm policy such as "
                                  "RmsNorm or LayerNorm (see docs/concepts/norm.md)");
  static constexpr const char* name = "decoder_lm";
  using block_policy = Block;
  using norm_policy = Norm;
  using positions = typename Block::attention::positions;

  template <class T, class B>
  class impl {
   public:
    using BlockImpl = typename Block::template impl<T, B, Norm>;
    using value_type = T;
    using backend = B;

    // Under pipeline parallelism (cfg.pp_size > 1) this rank builds one stage: blocks
    // [first_layer(), first_layer() + n_layers()), the first stage the embeddings, the last
    // the final norm and the head; the parameters of the other stages are counted
    // (ParamRegistry::skip), so names and global indices stay the whole model's.
    explicit impl(const ModelConfig& cfg) : cfg_(cfg) {
      cfg_.validate();
      const std::int64_t v = cfg.vocab_size, c = cfg.d_model, L = cfg.n_layers, P = cfg.pp_size;
      if (P < 1 || L % P != 0 || cfg.pp_rank < 0 || cfg.pp_rank >= P)
        throw Error(detail::cat("pipeline stage ", cfg.pp_rank, " of ", P, " for ", L, " layers"), "DecoderLM",
                    "a pipeline size that divides model.n_layers");
      if (P > 1 && cfg.tie_embeddings)
        throw Error("model.tie_embeddings = true under pipeline parallelism", "parallel.pipeline",
                    "model.tie_embeddings = false (the head and the embedding live on different stages)");
      first_stage_ = cfg.pp_rank == 0;
      last_stage_ = cfg.pp_rank == P - 1;
      l0_ = cfg.pp_rank * (L / P);
      const std::int64_t l1 = l0_ + L / P;
      auto elsewhere = [&](auto&& declare_into) {
        ParamRegistry other;
        declare_into(other);
        registry_.skip(other.global_size());  // with the experts it would skip itself
      };
      auto declare_embeddings = [&](ParamRegistry& r) {
        const int w = r.add("embed.weight", Shape{v, c}, kTagEmbedding, Init::kNormal, cfg.init_std);
        int p = -1;
        if constexpr (positions::learned)
          p = r.add("pos_embed.weight", Shape{cfg.context, c}, kTagPosition, Init::kNormal, cfg.init_std);
        return std::pair{w, p};
      };
      if (first_stage_) std::tie(wte_.index, wpe_.index) = declare_embeddings(registry_);
      else elsewhere(declare_embeddings);
      blocks_.resize(static_cast<std::size_t>(L / P));
      block_first_.resize(static_cast<std::size_t>(L / P + 1));
      for (std::int64_t l = 0; l < L; ++l) {
        const std::string bname = "layers." + std::to_string(l);
        if (l >= l0_ && l < l1) {
          block_first_[static_cast<std::size_t>(l - l0_)] = registry_.size();
          blocks_[static_cast<std::size_t>(l - l0_)].declare(registry_, bname, cfg, l);
        } else {
          elsewhere([&](ParamRegistry& r) { BlockImpl{}.declare(r, bname, cfg, l); });
        }
      }
      block_first_.back() = registry_.size();
      auto declare_top = [&](ParamRegistry& r, typename Norm::template impl<T, B>& norm) {
        norm.declare(r, "final_norm", c, cfg.norm_eps);
        return cfg.tie_embeddings ? -1 : r.add("head.weight", Shape{v, c}, kTagHead, Init::kNormal, cfg.init_std);
      };
      if (last_stage_) {
        head_.index = declare_top(registry_, final_norm_);
      } else {
        elsewhere([&](ParamRegistry& r) {
          typename Norm::template impl<T, B> other;
          declare_top(r, other);
        });
      }
      final_norm_end_ = head_ ? head_.index : registry_.size();
      params_.resize(Shape{registry_.total()});
      grads_.resize(Shape{registry_.total()});
      T *p = params_.data(), *g = grads_.data();
      if (wte_) wte_.bind(registry_, p, g);
      if (wpe_) wpe_.bind(registry_, p, g);
      for (auto& b : blocks_) b.bind(registry_, p, g);
      if (last_stage_) final_norm_.bind(registry_, p, g);
      if (head_) head_.bind(registry_, p, g);
      set_recompute(recompute_mode(cfg_));
    }

    // Pipeline parallelism: this stage's place. A stage other than the first takes its input
    // (B·T, C) from set_stage_input() before forward; one other than the last computes no
    // loss and leaves its output in stage_output(), and takes the gradient of that output
    // from set_stage_output_grad() before backward; after backward, stage_input_grad() holds
    // the gradient of its input (stages other than the first).
    bool first_stage() const { return first_stage_; }
    bool last_stage() const { return last_stage_; }
    std::int64_t first_layer() const { return l0_; }
    void set_stage_input(const T* x) { stage_in_ = x; }
    void set_stage_output_grad(const T* dy) { stage_dout_ = dy; }
    const T* stage_output() const { return res_.back().data(); }
    const T* stage_input_grad() const { return dres_[stage_cur_].data(); }
    // The next forwards re-run an earlier one (the pipeline recomputes a micro-batch's
    // activations before its backward): same results, no statistics counted twice.
    void set_recompute_pass(bool on) { mode_.recompute = on; }

    // Activation recomputation (models/recompute.hpp); model.recompute sets it at construction.
    void set_recompute(RecomputeMode r) {
      recompute_ = r;
      for (auto& b : blocks_) {
        b.set_selective(r == RecomputeMode::kSelective);
        b.release();
      }
    }
    RecomputeMode recompute() const { return recompute_; }

    // Predicted peak bytes of activations and scratch for a training micro-batch of (b, t):
    // the residual stream, logits and their gradients, and every block's buffers — or, under
    // full recomputation, the largest single block's (only one is alive at a time).
    std::int64_t activation_bytes(std::int64_t b, std::int64_t t) const {
      const std::int64_t n = b * t, c = cfg_.d_model, v = cfg_.vocab_size, sz = static_cast<std::int64_t>(sizeof(T));
      std::int64_t bytes = sz * ((n_layers() + 1) * n * c + 4 * n * c + 2 * n * v + n) +
                           Norm::template impl<T, B>::activation_bytes(n);
      std::int64_t sum = 0, largest = 0;
      for (const auto& blk : blocks_) {
        const std::int64_t bb = blk.activation_bytes(b, t);
        sum += bb;
        largest = std::max(largest, bb);
      }
      return bytes + (recompute_ == RecomputeMode::kFull ? largest : sum);
    }
    impl(const impl&) = delete;
    impl& operator=(const impl&) = delete;

    // Normal(0, std) from Philox keyed (seed, 0, init site, parameter index), element index
    // within the parameter: independent of layout, threads and declaration of other params.
    // The values are made on the host (copied to the backend's memory on a GPU).
    void init(std::uint64_t seed) {
      std::vector<T> staging;
      for (int i = 0; i < registry_.size(); ++i) {
        const ParamInfo& pi = registry_[i];
        T* w = params_.data() + pi.offset;
        if constexpr (!kHost) {
          staging.resize(static_cast<std::size_t>(pi.numel()));
          w = staging.data();
        }
        const RngKey key{seed, 0, site_id(Site::kInit), static_cast<std::uint32_t>(pi.global_index)};
        for (std::int64_t j = 0; j < pi.numel(); ++j)
          w[j] = pi.init == Init::kOnes ? T(1)
               : pi.init == Init::kZeros ? T(0)
                                         : static_cast<T>(pi.init_std * key.normal(static_cast<std::uint64_t>(pi.full_index(j))));
        if constexpr (!kHost) B::copy_from_host(w, pi.numel(), params_.data() + pi.offset);
      }
    }
    void zero_grad() {
      constexpr std::int64_t kBlock = 1 << 16;
      T* g = grads_.data();
      const std::int64_t n = grads_.numel();
      B::for_rows((n + kBlock - 1) / kBlock, [=] TMOE_LAMBDA (std::int64_t blk) {
        const std::int64_t i0 = blk * kBlock, i1 = n < i0 + kBlock ? n : i0 + kBlock;
        for (std::int64_t i = i0; i < i1; ++i) g[i] = T(0);
      });
    }

    // The gradient-ready hook: backward calls it with a range [first, last) of registry
    // indices as soon as those parameters' gradients are final for this backward pass, in
    // the order backward finishes them (head, final norm, blocks from last to first, then
    // the embeddings). A data-parallel strategy starts reducing that bucket while the rest
    // of backward runs. Every parameter is announced exactly once per backward.
    using GradReadyHook = std::function<void(int first, int last)>;
    void set_grad_ready_hook(GradReadyHook hook) { grad_ready_ = std::move(hook); }

    // Training or inference for the forwards that follow: training turns router noise and the
    // dropouts (model.dropout, attn_dropout, expert_dropout, expert_drop_rate) on and counts
    // expert loads for the bias update; seed, step and token_offset (the global index of this
    // micro-batch's first token in the step) key the noise and every dropout mask.
    // The trainer sets it before each micro-batch; the default is inference.
    void set_mode(bool training, std::uint64_t seed = 0, std::int64_t step = 0, std::int64_t token_offset = 0) {
      mode_.training = training;
      mode_.seed = seed;
      mode_.step = step;
      mode_.token_offset = token_offset;
    }
    bool training() const { return mode_.training; }

    // Expert parallelism: every MoE layer's experts are split over the exchange's group
    // (the model must have been built with ModelConfig::ep_size = its size).
    template <class X>
    void set_expert_exchange(X* x) {
      for (auto& b : blocks_)
        if constexpr (requires { b.ffn.set_expert_exchange(x); })
          if (!b.uses_dense()) b.ffn.set_expert_exchange(x);
    }

    // Tensor parallelism: attention heads and feed-forward hidden units are split over the
    // group (the model must have been built with ModelConfig::tp_size = its size).
    void set_tensor_group(TensorGroup<T>* g) {
      const std::int64_t size = g ? g->size() : 1;
      if (size != cfg_.tp_size)
        throw Error(detail::cat("a tensor group of ", size, " ranks for a model built for ", cfg_.tp_size), "DecoderLM::set_tensor_group",
                    "the model built for this tensor-parallel layout (ModelConfig::tp_size)");
      for (auto& b : blocks_) {
        b.attn.set_tensor_group(g);
        if (b.uses_dense()) b.dense.set_tensor_group(g);
        else b.ffn.set_tensor_group(g);
      }
    }

    // After each optimizer step: the MoE layers' bias updates (aux-loss-free balancing).
    // `sum(double* values, count)` adds a vector over the ranks (nothing to do in one process).
    template <class SumFn>
    void after_step(SumFn&& sum) {
      for (auto& b : blocks_)
        if (!b.uses_dense()) b.ffn.after_step(sum);
    }

    // ids, targets: (B, T) token ids; targets may be null (logits only). Returns the loss.
    LossParts forward(const std::int32_t* ids, const std::int32_t* targets, std::int64_t b, std::int64_t t) {
      if (t > cfg_.context || t <= 0 || b <= 0)
        throw Error(detail::cat("batch of shape (", b, ", ", t, ")"), "DecoderLM::forward",
                    detail::cat("1 <= T <= context = ", cfg_.context));
      const std::int64_t n = b * t, c = cfg_.d_model, v = cfg_.vocab_size;
      for (std::int64_t i = 0; i < n; ++i) {
        if (ids[i] < 0 || ids[i] >= v)
          throw Error(detail::cat("token id ", ids[i], " at position ", i), "DecoderLM::forward input",
                      detail::cat("ids in [0, ", v, ")"));
        if (targets && (targets[i] < 0 || targets[i] >= v))
          throw Error(detail::cat("target id ", targets[i], " at position ", i), "DecoderLM::forward targets",
                      detail::cat("ids in [0, ", v, ")"));
      }
      b_ = b;
      t_ = t;
      ids_ = ids;
      targets_ = targets;
      // The embedding and the loss read the ids in the backend's memory; the routers that
      // look at token ids (Hash) and the dropout keys read the host copy.
      ids_b_ = on_backend(ids, n, ids_buf_);
      targets_b_ = targets ? on_backend(targets, n, targets_buf_) : nullptr;
      res_.resize(blocks_.size() + 1);
      for (auto& r : res_) r.ensure(Shape{n, c});
      if (first_stage_) {
        B::embedding_forward(ids_b_, wte_.w, wpe_ ? wpe_.w : static_cast<const T*>(nullptr), res_[0].data(), n, t, c);
      } else {
        if (!stage_in_)
          throw Error("a pipeline stage's forward without its input", "DecoderLM::forward", "set_stage_input() first");
        B::copy(stage_in_, n * c, res_[0].data());
      }
      for (std::size_t l = 0; l < blocks_.size(); ++l) {
        RouteContext ctx = mode_;
        ctx.tokens = ids;
        ctx.layer = l0_ + static_cast<std::int64_t>(l);
        blocks_[l].forward(res_[l].data(), res_[l + 1].data(), b, t, ctx);
        if (recompute_ == RecomputeMode::kFull) blocks_[l].release();
      }
      LossParts lp;
      for (auto& blk : blocks_) lp.aux += blk.loss();
      if (!last_stage_) {
        lp.total = lp.aux;
        return lp;
      }
      hf_.ensure(Shape{n, c});
      logits_.ensure(Shape{n, v});
      final_norm_.forward(res_.back().data(), hf_.data(), n);
      const T* hw = head_ ? head_.w : wte_.w;
      B::gemm(B::Trans::kNo, B::Trans::kYes, n, v, c, T(1), hf_.data(), hw, T(0), logits_.data());
      if (targets) {
        row_loss_.ensure(Shape{n});
        lp.ce = B::cross_entropy_forward(logits_.data(), targets_b_, row_loss_.data(), n, v) / static_cast<double>(n);
      }
      lp.total = lp.ce + lp.aux;
      return lp;
    }

    // Accumulates ∂(grad_scale · loss)/∂θ into the gradient buffer (call zero_grad first).
    void backward(double grad_scale = 1.0) {
      if (!targets_) throw Error("backward without targets", "DecoderLM::backward", "forward(ids, targets, ...) first");
      const std::int64_t n = b_ * t_, c = cfg_.d_model, v = cfg_.vocab_size;
      dres_[0].ensure(Shape{n, c});
      dres_[1].ensure(Shape{n, c});
      if (last_stage_) {
        dlogits_.ensure(Shape{n, v});
        dh_.ensure(Shape{n, c});
        B::cross_entropy_backward(logits_.data(), targets_b_, dlogits_.data(), n, v, grad_scale / static_cast<double>(n));
        const T* hw = head_ ? head_.w : wte_.w;
        T* hg = head_ ? head_.g : wte_.g;
        B::gemm(B::Trans::kNo, B::Trans::kNo, n, c, v, T(1), dlogits_.data(), hw, T(0), dh_.data());
        B::gemm(B::Trans::kYes, B::Trans::kNo, v, c, n, T(1), dlogits_.data(), hf_.data(), T(1), hg);
        if (head_) ready(head_.index, head_.index + 1);
        final_norm_.backward(dh_.data(), dres_[0].data(), n, false);
        ready(block_first_.back(), final_norm_end_);
      } else {
        if (!stage_dout_)
          throw Error("a pipeline stage's backward without its output's gradient", "DecoderLM::backward",
                      "set_stage_output_grad() first");
        B::copy(stage_dout_, n * c, dres_[0].data());
      }
      int cur = 0;
      for (std::size_t l = blocks_.size(); l-- > 0;) {
        if (recompute_ == RecomputeMode::kFull) {
          // Re-run the block's forward from its saved input: the same numbers (fixed-shape
          // products, Philox masks keyed as before), written over the same output.
          RouteContext ctx = mode_;
          ctx.tokens = ids_;
          ctx.layer = l0_ + static_cast<std::int64_t>(l);
          ctx.recompute = true;
          blocks_[l].forward(res_[l].data(), res_[l + 1].data(), b_, t_, ctx);
        }
        blocks_[l].backward(dres_[cur].data(), dres_[1 - cur].data(), grad_scale);
        if (recompute_ == RecomputeMode::kFull) blocks_[l].release();
        ready(block_first_[l], block_first_[l + 1]);
        cur = 1 - cur;
      }
      stage_cur_ = cur;
      if (first_stage_) {
        B::embedding_backward(ids_b_, dres_[cur].data(), wte_.g, wpe_ ? wpe_.g : static_cast<T*>(nullptr), n, t_, c);
        ready(0, block_first_[0]);
      }
    }

    const ModelConfig& config() const { return cfg_; }
    const ParamRegistry& registry() const { return registry_; }
    T* params() { return params_.data(); }
    const T* params() const { return params_.data(); }
    T* grads() { return grads_.data(); }
    const T* grads() const { return grads_.data(); }
    const T* logits() const { return logits_.data(); }  // (B, T, V) of the last forward, backend memory
    // Blocks of this rank (all of them, or one pipeline stage's: layer first_layer() + l).
    std::int64_t n_layers() const { return static_cast<std::int64_t>(blocks_.size()); }
    BlockImpl& block(std::int64_t l) { return blocks_[static_cast<std::size_t>(l)]; }
    // Token counts per expert of layer l's last forward (empty for a dense layer).
    std::span<const std::int64_t> expert_counts(std::int64_t l) const {
      const auto& blk = blocks_[static_cast<std::size_t>(l)];
      if (blk.uses_dense()) return {};
      return blk.ffn.expert_counts();
    }
    bool is_moe_layer(std::int64_t l) const {
      const auto& blk = blocks_[static_cast<std::size_t>(l)];
      return Block::ffn_policy::is_moe && !blk.uses_dense();
    }
    // Layer l's routing statistics of the last forward (MoE layers only).
    const MoEStats* moe_stats(std::int64_t l) const {
      if constexpr (Block::ffn_policy::is_moe) {
        const auto& blk = blocks_[static_cast<std::size_t>(l)];
        if (!blk.uses_dense()) return &blk.ffn.stats();
      }
      (void)l;
      return nullptr;
    }

    // Model FLOPs per token for a sequence of length t (DESIGN.md performance model):
    // 6 N_active + 6 L t C (causal attention, halved). Under tensor and pipeline parallelism,
    // this rank's share: its stage's layers, its slice of each (the replicated head once per
    // tensor group), so that the ranks of one replica add up to the model's.
    double flops_per_token(std::int64_t t) const {
      const double tp = static_cast<double>(cfg_.tp_size);
      double active = last_stage_ ? static_cast<double>(cfg_.vocab_size * cfg_.d_model) / tp : 0.0;  // head
      for (auto& b : blocks_)
        active += static_cast<double>(b.attn.weights_per_token()) + static_cast<double>(b.ffn_active_weights()) / tp;
      return 6.0 * active + 6.0 * static_cast<double>(n_layers() * t * cfg_.d_model) / tp;
    }

   private:
    static constexpr bool kHost = std::is_same_v<typename B::Space, HostSpace>;
    // ids in the backend's memory: the caller's pointer on the CPU, a copy on a GPU.
    static const std::int32_t* on_backend(const std::int32_t* host, std::int64_t n, BackendTensor<B, std::int32_t>& buf) {
      if constexpr (kHost) {
        return host;
      } else {
        buf.ensure(Shape{n});
        B::copy_from_host(host, n, buf.data());
        return buf.data();
      }
    }
    void ready(int first, int last) {
      if (grad_ready_ && last > first) grad_ready_(first, last);
    }

    ModelConfig cfg_;
    ParamRegistry registry_;
    BackendTensor<B, T> params_, grads_;
    Param<T> wte_, wpe_, head_;
    std::vector<BlockImpl> blocks_;
    typename Norm::template impl<T, B> final_norm_;
    std::vector<BackendTensor<B, T>> res_;
    BackendTensor<B, T> hf_, logits_, row_loss_, dlogits_, dh_;
    BackendTensor<B, T> dres_[2];
    const std::int32_t* ids_ = nullptr;      // host
    const std::int32_t* targets_ = nullptr;  // host
    const std::int32_t* ids_b_ = nullptr;      // backend memory (== ids_ on the CPU)
    const std::int32_t* targets_b_ = nullptr;  // backend memory
    BackendTensor<B, std::int32_t> ids_buf_, targets_buf_;
    std::int64_t b_ = 0, t_ = 0;
    std::vector<int> block_first_;  // registry index of each block's first parameter (+ end)
    int final_norm_end_ = 0;
    bool first_stage_ = true, last_stage_ = true;  // pipeline parallelism: this stage's place
    std::int64_t l0_ = 0;                           // index of this stage's first block
    const T* stage_in_ = nullptr;                   // a later stage's input (B·T, C)
    const T* stage_dout_ = nullptr;                 // an earlier stage's output gradient
    int stage_cur_ = 0;                             // which dres_ holds the input gradient
    GradReadyHook grad_ready_;
    RouteContext mode_;
    RecomputeMode recompute_ = RecomputeMode::kNone;
  };
};

}  // namespace tmoe
