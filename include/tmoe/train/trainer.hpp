#pragma once
// The Trainer: composed from model, optimizer, precision, parallel strategy and backend.
// One optimizer step = the strategy's micro-batch schedule (plain accumulation for Serial)
// -> gradient reduction -> overflow check and unscale (loss scaling) -> L2 -> global-norm
// clip -> learning rate -> update by parameter group -> weight constraints. Under a
// narrow-storage precision the optimizer updates fp32 master weights, which are then
// published, rounded, into the model.
// Everything a restart needs is listed in one place: `restartable_state()`.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tmoe/core/concepts.hpp"
#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/philox.hpp"
#include "tmoe/core/threading.hpp"
#include "tmoe/moe/plan.hpp"
#include "tmoe/optim/clip.hpp"
#include "tmoe/optim/schedule.hpp"
#include "tmoe/precision/loss_scaler.hpp"
#include "tmoe/precision/precision.hpp"
#include "tmoe/backend/stored.hpp"
#include "tmoe/tensor/tensor.hpp"

namespace tmoe {

// Weight decay and L2 apply to matrices only: not to norms, biases, embeddings or positions
// (with a tied head, the head is the embedding and so is not decayed either).
inline bool decays(const ParamInfo& p) {
  return !(p.tags & (kTagNorm | kTagBias | kTagEmbedding | kTagPosition));
}

// Per-parameter-group settings (DESIGN.md 4: groups come from registry tags). Two groups:
// the default one, and — when train.expert_group is set — the routed and shared experts
// (kTagExpert), so the seed's "L2 on expert parameters" can differ from the rest.
struct GroupSettings {
  double weight_decay = 0, l2 = 0;
  bool clamp = false;
  double clamp_min = 0, clamp_max = 0;

  static GroupSettings of(const TrainConfig& t, const ParamInfo& p) {
    const bool expert = t.expert_group && p.has(kTagExpert);
    GroupSettings g;
    const bool dec = decays(p);
    g.weight_decay = dec ? (expert ? t.expert_weight_decay : t.weight_decay) : 0.0;
    g.l2 = dec ? (expert ? t.expert_l2 : t.l2) : 0.0;
    // Weight constraints act on matrices (the seed: parameters with more than one dimension).
    g.clamp = p.shape.rank >= 2 && (expert ? t.expert_clamp_weights : t.clamp_weights);
    g.clamp_min = expert ? t.expert_clamp_min : t.clamp_min;
    g.clamp_max = expert ? t.expert_clamp_max : t.clamp_max;
    return g;
  }
};

struct StepStats {
  std::int64_t step = 0;  // 0-based index of the step just taken
  double loss = 0;        // mean total loss over the micro-batches
  double ce = 0;          // mean cross-entropy
  double aux = 0;         // mean weighted balancing loss
  double grad_norm = 0;   // before clipping (unscaled, L2 terms included); 0 on a skipped step
  double lr = 0;
  double loss_scale = 1;  // the scale this step's backward ran with
  bool skipped = false;   // non-finite gradients under loss scaling: nothing was updated
  std::int64_t micro_batches = 0;
  std::int64_t tokens = 0;
  std::vector<std::vector<std::int64_t>> expert_counts;  // [layer][expert], summed over micro-batches
  std::vector<MoEStats> moe;  // [layer]: routing statistics over the step (empty for dense layers)
};

// Bytes the trainer holds, from the policies and the config (reported at start-up).
struct MemoryReport {
  std::int64_t params = 0;       // the model's weights as the backend holds them
  std::int64_t master = 0;       // fp32 master weights (mixed precision), else 0
  std::int64_t grads = 0;
  std::int64_t optimizer = 0;    // optimizer state (used slots only)
  std::int64_t activations = 0;  // predicted peak of a training micro-batch (0: model cannot say)
  std::int64_t total() const { return params + master + grads + optimizer + activations; }
};

// A source of micro-batches: fill (B, T) inputs and targets for global micro-batch index i.
using BatchFn = std::function<void(std::int64_t i, std::int32_t* inputs, std::int32_t* targets)>;

template <class Model, class Opt, class Precision, class Parallel, class BackendP>
class Trainer {
  static_assert(Optimizer<Opt>, "tmoe: Trainer<Model, Optimizer, ...>: the second argument is not an Optimizer "
                                "(see docs/concepts/optimizer.md)");
  static_assert(PrecisionPolicy<Precision>, "tmoe: Trainer<..., Precision, ...>: the third argument is not a "
                                            "PrecisionPolicy (see docs/concepts/precision.md)");
  static_assert(ParallelStrategy<Parallel>, "tmoe: Trainer<..., Parallel, ...>: the fourth argument is not a "
                                            "ParallelStrategy (see docs/concepts/parallel.md)");
  static_assert(Backend<BackendP>, "tmoe: Trainer<..., Backend>: the last argument is not a Backend (see "
                                   "docs/concepts/backend.md)");
  using P = Precision;
  static_assert(std::is_floating_point_v<typename P::master> && sizeof(typename P::master) >= sizeof(typename P::compute),
                "tmoe: precision policy: master weights must be a real floating-point type at least as wide as the "
                "compute type (an optimizer step on narrow master weights rounds small updates away)");
  static_assert(std::is_same_v<typename P::grad, typename P::compute>,
                "tmoe: precision policy: gradients must be held in the compute type (the model accumulates them "
                "there; reduce them in fp32 with compute = float)");
  static_assert(std::is_same_v<typename P::state, typename P::master>,
                "tmoe: precision policy: optimizer state must have the master weights' type (the update rules run "
                "on master weights and state together)");
  static_assert(narrow_storage_v<P> || std::is_same_v<typename P::storage, typename P::compute>,
                "tmoe: precision policy: storage must be the compute type or a narrow tag (bf16, fp16)");
  static_assert(!narrow_storage_v<P> || std::is_same_v<typename P::compute, float>,
                "tmoe: precision policy: bf16/fp16 storage needs compute = float (values are rounded through fp32)");

 public:
  using T = typename Precision::compute;
  using M = typename Precision::master;
  using StoreBackend = backend::storage_backend_t<BackendP, Precision>;
  using ModelImpl = typename Model::template impl<T, StoreBackend>;
  // Separate master weights when the model's weights are rounded or narrower than the master.
  static constexpr bool kSeparateMaster = narrow_storage_v<Precision> || !std::is_same_v<M, T>;
  static constexpr const char* precision_name() { return Precision::name; }

  explicit Trainer(const Config& cfg, Parallel parallel = {})
      : cfg_(cfg), parallel_(parallel), model_((cfg.validate(), cfg.model)), schedule_(cfg.train), ramp_(cfg.train) {
    opt_ = Opt::from_config(cfg.train);
    scaler_ = LossScaler::from_config(cfg.train, Precision::loss_scaling);
    const std::int64_t total = model_.registry().total();
    for (int s = 0; s < opt_.used_slots(); ++s) state_[s].resize(Shape{total});
    model_.init(cfg.train.seed);
    if constexpr (kSeparateMaster) {
      master_.resize(Shape{total});
      const T* p = model_.params();
      for (std::int64_t i = 0; i < total; ++i) master_[i] = static_cast<M>(p[i]);
      publish();
    }
    // The gradient-ready seam: a strategy that overlaps its gradient reduction with
    // backward provides grads_ready(registry, grads, first, last).
    if constexpr (requires(Parallel& s, const ParamRegistry& r, T* g) { s.grads_ready(r, g, 0, 0); })
      model_.set_grad_ready_hook([this](int first, int last) {
        parallel_.grads_ready(model_.registry(), model_.grads(), first, last);
      });
    const std::int64_t n = cfg.train.batch_size * cfg.train.seq_len;
    inputs_.resize(Shape{n});
    targets_.resize(Shape{n});
  }

  ModelImpl& model() { return model_; }
  const ModelImpl& model() const { return model_; }
  const Config& config() const { return cfg_; }
  Parallel& parallel() { return parallel_; }
  std::int64_t step() const { return step_; }
  // Steps already taken; set by a resume, together with params and optimizer state.
  void set_step(std::int64_t s) {
    if (s < 0) throw Error(detail::cat("step ", s, " is negative"), "Trainer::set_step", "a step count >= 0");
    step_ = s;
  }

  // The weights the optimizer updates and a checkpoint stores: the fp32 master copy under
  // mixed precision, else the model's own. After writing them, call publish().
  M* master_params() {
    if constexpr (kSeparateMaster) return master_.data();
    else return model_.params();
  }
  // Copies the master weights into the model, rounded to the storage type (the router and
  // buffers stay exact: DESIGN.md, router in fp32).
  void publish() {
    if constexpr (kSeparateMaster) {
      T* p = model_.params();
      for (const ParamInfo& pi : model_.registry().params()) {
        const bool exact = pi.has(kTagRouter) || pi.has(kTagBuffer);
        const M* src = master_.data() + pi.offset;
        T* dst = p + pi.offset;
        const std::int64_t n = pi.numel();
        if constexpr (narrow_storage_v<Precision>) {
          if (!exact) {
            for (std::int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(Precision::storage::round(static_cast<float>(src[i])));
            continue;
          }
        }
        for (std::int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
      }
    }
  }

  // Optimizer state: slot s (0 .. optimizer_slots()-1), laid out like the flat parameters.
  int optimizer_slots() const { return opt_.used_slots(); }
  std::string optimizer_name() const { return opt_.active_name(); }
  std::string optimizer_slot_name(int s) const { return opt_.slot_name(s); }
  M* optimizer_state(int s) { return state_[s].data(); }
  const Opt& optimizer() const { return opt_; }
  LossScaler& loss_scaler() { return scaler_; }
  const LrSchedule& schedule() const { return schedule_; }

  // Called with the reduced gradients (still loss-scaled) before the overflow check: custom
  // gradient processing, or fault injection in tests.
  void set_gradient_hook(std::function<void(T* grads, std::int64_t n)> fn) { gradient_hook_ = std::move(fn); }

  MemoryReport memory_report() const {
    MemoryReport r;
    const std::int64_t total = model_.registry().total();
    r.params = total * static_cast<std::int64_t>(sizeof(T));
    r.master = kSeparateMaster ? total * static_cast<std::int64_t>(sizeof(M)) : 0;
    r.grads = total * static_cast<std::int64_t>(sizeof(T));
    r.optimizer = opt_.used_slots() * total * static_cast<std::int64_t>(sizeof(M));
    if constexpr (requires(const ModelImpl& m) { m.activation_bytes(std::int64_t{}, std::int64_t{}); })
      r.activations = model_.activation_bytes(cfg_.train.batch_size, cfg_.train.seq_len);
    return r;
  }

  // One optimizer step over the step's micro-batches (grad_accum, or fewer during a batch
  // ramp): backward (loss-scaled under MixedFp16) -> gradient reduction -> overflow check
  // (skip) -> unscale -> L2 -> global-norm clip -> update by parameter group -> weight
  // constraints -> publish -> router bias update.
  StepStats train_step(const BatchFn& batches) {
    const auto& tc = cfg_.train;
    const std::int64_t b = tc.batch_size, t = tc.seq_len, a = ramp_.micro_batches(step_), first = ramp_.first_micro(step_);
    StepStats st;
    st.step = step_;
    st.micro_batches = a;
    st.loss_scale = scaler_.enabled ? scaler_.scale : 1.0;
    st.expert_counts.assign(static_cast<std::size_t>(model_.n_layers()), {});
    st.moe.assign(static_cast<std::size_t>(model_.n_layers()), {});
    model_.zero_grad();
    for (std::int64_t micro = 0; micro < a; ++micro) {
      batches(first + micro, inputs_.data(), targets_.data());
      model_.set_mode(true, tc.seed, step_, (parallel_.rank() * a + micro) * b * t);
      const LossParts lp = model_.forward(inputs_.data(), targets_.data(), b, t);
      model_.backward(st.loss_scale / static_cast<double>(a));
      st.loss += lp.total / static_cast<double>(a);
      st.ce += lp.ce / static_cast<double>(a);
      st.aux += lp.aux / static_cast<double>(a);
      for (std::int64_t l = 0; l < model_.n_layers(); ++l) {
        auto cnt = model_.expert_counts(l);
        auto& acc = st.expert_counts[static_cast<std::size_t>(l)];
        acc.resize(cnt.size(), 0);
        for (std::size_t e = 0; e < cnt.size(); ++e) acc[e] += cnt[e];
        if (const MoEStats* ms = model_.moe_stats(l)) st.moe[static_cast<std::size_t>(l)].accumulate(*ms, static_cast<double>(a));
      }
    }
    model_.set_mode(false);
    st.tokens = a * b * t * parallel_.size();
    T* g = model_.grads();
    const std::int64_t total = model_.registry().total();
    parallel_.reduce_gradients(g, total);
    st.loss = parallel_.sum(st.loss) / parallel_.size();
    st.ce = parallel_.sum(st.ce) / parallel_.size();
    st.aux = parallel_.sum(st.aux) / parallel_.size();
    if (gradient_hook_) gradient_hook_(g, total);
    st.lr = schedule_(step_);

    if (scaler_.enabled) {
      // Every rank must decide alike: the overflow flag is summed over all ranks.
      const bool finite = parallel_.sum(std::isfinite(StoreBackend::sum_squares(g, total)) ? 0.0 : 1.0) == 0.0;
      if (!scaler_.update(finite)) {
        st.skipped = true;
        skip_step();
        return st;
      }
      if (st.loss_scale != 1.0) {
        const T inv = static_cast<T>(1.0 / st.loss_scale);
        StoreBackend::for_rows(total / 4096 + 1, [=](std::int64_t blk) {
          const std::int64_t i1 = std::min(total, (blk + 1) * 4096);
          for (std::int64_t i = blk * 4096; i < i1; ++i) g[i] *= inv;
        });
      }
    }
    M* p = master_params();
    add_l2(g, p);
    const double ss = StoreBackend::sum_squares(g, total);
    if (!std::isfinite(ss))
      throw Error(detail::cat("gradient norm is not finite at step ", step_), "Trainer::train_step",
                  "finite gradients (lower the learning rate, or use a loss-scaled precision policy)");
    st.grad_norm = clip_grad_norm<StoreBackend>(g, total, tc.grad_clip, ss);
    ++step_;
    for (const ParamInfo& pi : model_.registry().params()) {
      if (pi.has(kTagBuffer)) continue;  // state moved by its own rule (e.g. the router bias update)
      const GroupSettings gs = GroupSettings::of(tc, pi);
      std::array<M*, std::max(1, Opt::slots)> st_ptrs{};
      for (int s = 0; s < opt_.used_slots(); ++s) st_ptrs[s] = state_[s].data() + pi.offset;
      opt_.update(p + pi.offset, grad_view(g, pi), st_ptrs.data(), pi.numel(), st.lr, gs.weight_decay, step_);
      if (gs.clamp) {
        M* w = p + pi.offset;
        const M lo = static_cast<M>(gs.clamp_min), hi = static_cast<M>(gs.clamp_max);
        for (std::int64_t i = 0; i < pi.numel(); ++i) w[i] = std::clamp(w[i], lo, hi);
      }
    }
    publish();
    model_.after_step([this](double* v, std::int64_t count) {
      for (std::int64_t i = 0; i < count; ++i) v[i] = parallel_.sum(v[i]);
    });
    pull_buffers();
    return st;
  }

  // Mean cross-entropy (nats per token) over eval micro-batches 0..count-1.
  double evaluate(const BatchFn& batches, std::int64_t count) {
    model_.set_mode(false);
    double s = 0;
    for (std::int64_t i = 0; i < count; ++i) {
      batches(i, inputs_.data(), targets_.data());
      s += model_.forward(inputs_.data(), targets_.data(), cfg_.train.batch_size, cfg_.train.seq_len).ce;
    }
    return parallel_.sum(s) / static_cast<double>(count * parallel_.size());
  }

  // Continues `prompt` by `count` tokens: greedy when temperature == 0, else sampling from
  // softmax(logits / temperature) with Philox draws keyed by (seed, token index).
  std::vector<std::int32_t> generate(std::vector<std::int32_t> prompt, std::int64_t count, double temperature,
                                     std::uint64_t seed) {
    if (prompt.empty()) prompt.push_back(0);
    model_.set_mode(false);
    const std::int64_t v = cfg_.model.vocab_size, ctx = cfg_.model.context;
    const std::size_t start = prompt.size();
    for (std::int64_t i = 0; i < count; ++i) {
      const std::int64_t len = std::min<std::int64_t>(ctx, static_cast<std::int64_t>(prompt.size()));
      const std::int32_t* window = prompt.data() + prompt.size() - static_cast<std::size_t>(len);
      model_.forward(window, nullptr, 1, len);
      const T* l = model_.logits() + (len - 1) * v;
      std::int32_t next = 0;
      if (temperature <= 0) {
        for (std::int64_t j = 1; j < v; ++j)
          if (l[j] > l[next]) next = static_cast<std::int32_t>(j);
      } else {
        double mx = l[0];
        for (std::int64_t j = 1; j < v; ++j) mx = std::max(mx, static_cast<double>(l[j]));
        std::vector<double> pr(static_cast<std::size_t>(v));
        double z = 0;
        for (std::int64_t j = 0; j < v; ++j) z += pr[j] = std::exp((l[j] - mx) / temperature);
        const double u = RngKey{seed, 0, site_id(Site::kSample), static_cast<std::uint32_t>(i)}.uniform(0) * z;
        double acc = 0;
        next = static_cast<std::int32_t>(v - 1);
        for (std::int64_t j = 0; j < v; ++j)
          if ((acc += pr[j]) >= u) {
            next = static_cast<std::int32_t>(j);
            break;
          }
      }
      prompt.push_back(next);
    }
    return {prompt.begin() + static_cast<std::ptrdiff_t>(start), prompt.end()};
  }

  // What a checkpoint must hold to resume exactly (DESIGN.md: named in one place).
  struct StateView {
    std::string name;
    M* data;
    std::int64_t size;
  };
  std::vector<StateView> restartable_state() {
    const std::int64_t n = model_.registry().total();
    std::vector<StateView> v{{"params", master_params(), n}};
    for (int s = 0; s < opt_.used_slots(); ++s) v.push_back({std::string("optimizer.") + opt_.slot_name(s), state_[s].data(), n});
    return v;  // plus step(), config().train.seed (which key every random draw) and the loss scaler
  }

 private:
  // The gradient the optimizer sees, in the master type.
  const M* grad_view(const T* g, const ParamInfo& pi) {
    if constexpr (std::is_same_v<M, T>) return g + pi.offset;
    else {
      grad_tmp_.ensure(Shape{pi.numel()});
      for (std::int64_t i = 0; i < pi.numel(); ++i) grad_tmp_[i] = static_cast<M>(g[pi.offset + i]);
      return grad_tmp_.data();
    }
  }
  // L2 penalty (l2/2)·‖w‖² of each group: g += l2 · w, before clipping.
  void add_l2(T* g, const M* p) {
    for (const ParamInfo& pi : model_.registry().params()) {
      if (pi.has(kTagBuffer)) continue;
      const double l2 = GroupSettings::of(cfg_.train, pi).l2;
      if (l2 == 0) continue;
      const T c = static_cast<T>(l2);
      T* gg = g + pi.offset;
      const M* w = p + pi.offset;
      for (std::int64_t i = 0; i < pi.numel(); ++i) gg[i] += c * static_cast<T>(w[i]);
    }
  }
  // Buffers (router biases) are moved by the model in its own weights: copy them back into
  // the master weights so a checkpoint holds them.
  void pull_buffers() {
    if constexpr (kSeparateMaster) {
      const T* p = model_.params();
      for (const ParamInfo& pi : model_.registry().params())
        if (pi.has(kTagBuffer))
          for (std::int64_t i = 0; i < pi.numel(); ++i) master_[pi.offset + i] = static_cast<M>(p[pi.offset + i]);
    }
  }
  // A skipped step leaves every weight, buffer and optimizer moment as it was; the model's
  // per-step accumulators (the bias update's loads) are dropped.
  void skip_step() {
    std::vector<T> saved;
    const T* p = model_.params();
    for (const ParamInfo& pi : model_.registry().params())
      if (pi.has(kTagBuffer)) saved.insert(saved.end(), p + pi.offset, p + pi.offset + pi.numel());
    model_.after_step([](double*, std::int64_t) {});
    std::size_t at = 0;
    T* q = model_.params();
    for (const ParamInfo& pi : model_.registry().params())
      if (pi.has(kTagBuffer))
        for (std::int64_t i = 0; i < pi.numel(); ++i) q[pi.offset + i] = saved[at++];
    ++step_;
  }

  Config cfg_;
  Parallel parallel_;
  ModelImpl model_;
  Opt opt_;
  LrSchedule schedule_;
  BatchRamp ramp_;
  LossScaler scaler_;
  Tensor<M> master_;
  Tensor<M> state_[std::max(1, Opt::slots)];
  Tensor<M> grad_tmp_;
  Tensor<std::int32_t> inputs_, targets_;
  std::function<void(T*, std::int64_t)> gradient_hook_;
  std::int64_t step_ = 0;
};

}  // namespace tmoe
