#pragma once
// The Trainer: composed from model, optimizer, precision, parallel strategy and backend.
// One optimizer step = the strategy's micro-batch schedule (plain accumulation for Serial)
// -> gradient reduction -> global-norm clip -> learning rate -> update by parameter group.
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
#include "tmoe/tensor/tensor.hpp"

namespace tmoe {

// Weight decay applies to matrices only: not to norms, biases, embeddings or positions
// (with a tied head, the head is the embedding and so is not decayed either).
inline bool decays(const ParamInfo& p) {
  return !(p.tags & (kTagNorm | kTagBias | kTagEmbedding | kTagPosition));
}

struct StepStats {
  std::int64_t step = 0;  // 0-based index of the step just taken
  double loss = 0;        // mean total loss over the micro-batches
  double ce = 0;          // mean cross-entropy
  double aux = 0;         // mean weighted balancing loss
  double grad_norm = 0;   // before clipping
  double lr = 0;
  std::int64_t tokens = 0;
  std::vector<std::vector<std::int64_t>> expert_counts;  // [layer][expert], summed over micro-batches
  std::vector<MoEStats> moe;  // [layer]: routing statistics over the step (empty for dense layers)
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
  static_assert(!Precision::loss_scaling, "tmoe: loss-scaled precision policies arrive with the precision issue");

 public:
  using T = typename Precision::compute;
  using ModelImpl = typename Model::template impl<T, BackendP>;

  explicit Trainer(const Config& cfg, Parallel parallel = {})
      : cfg_(cfg), parallel_(parallel), model_((cfg.validate(), cfg.model)), schedule_(cfg.train) {
    opt_ = Opt::from_config(cfg.train);
    for (auto& s : state_) s.resize(Shape{model_.registry().total()});
    model_.init(cfg.train.seed);
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

  // Optimizer state: slot s (0 .. Opt::slots-1), laid out like the flat parameters.
  static constexpr int optimizer_slots() { return Opt::slots; }
  static constexpr const char* optimizer_name() { return Opt::name; }
  static std::string optimizer_slot_name(int s) {
    if constexpr (requires { Opt::slot_names[0]; }) return Opt::slot_names[s];
    else return "slot" + std::to_string(s);
  }
  T* optimizer_state(int s) { return state_[s].data(); }

  // One optimizer step over grad_accum micro-batches (global indices step·A .. step·A+A-1).
  StepStats train_step(const BatchFn& batches) {
    const auto& tc = cfg_.train;
    const std::int64_t b = tc.batch_size, t = tc.seq_len, a = tc.grad_accum;
    StepStats st;
    st.step = step_;
    st.expert_counts.assign(static_cast<std::size_t>(model_.n_layers()), {});
    st.moe.assign(static_cast<std::size_t>(model_.n_layers()), {});
    model_.zero_grad();
    for (std::int64_t micro = 0; micro < a; ++micro) {
      batches(step_ * a + micro, inputs_.data(), targets_.data());
      model_.set_mode(true, tc.seed, step_, (parallel_.rank() * a + micro) * b * t);
      const LossParts lp = model_.forward(inputs_.data(), targets_.data(), b, t);
      model_.backward(1.0 / static_cast<double>(a));
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
    const double ss = BackendP::sum_squares(g, total);
    if (!std::isfinite(ss))
      throw Error(detail::cat("gradient norm is not finite at step ", step_), "Trainer::train_step",
                  "finite gradients (lower the learning rate, or use a loss-scaled precision policy)");
    st.grad_norm = clip_grad_norm<BackendP>(g, total, tc.grad_clip, ss);
    st.lr = schedule_(step_);
    T* p = model_.params();
    ++step_;
    for (const ParamInfo& pi : model_.registry().params()) {
      if (pi.has(kTagBuffer)) continue;  // state moved by its own rule (e.g. the router bias update)
      std::array<T*, std::max(1, Opt::slots)> st_ptrs{};
      for (int s = 0; s < Opt::slots; ++s) st_ptrs[s] = state_[s].data() + pi.offset;
      opt_.update(p + pi.offset, g + pi.offset, st_ptrs.data(), pi.numel(), st.lr, decays(pi) ? tc.weight_decay : 0.0, step_);
    }
    model_.after_step([this](double* v, std::int64_t count) {
      for (std::int64_t i = 0; i < count; ++i) v[i] = parallel_.sum(v[i]);
    });
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
    T* data;
    std::int64_t size;
  };
  std::vector<StateView> restartable_state() {
    const std::int64_t n = model_.registry().total();
    std::vector<StateView> v{{"params", model_.params(), n}};
    for (int s = 0; s < Opt::slots; ++s) v.push_back({"optimizer." + std::to_string(s), state_[s].data(), n});
    return v;  // plus step() and config().train.seed, which key every random draw
  }

 private:
  Config cfg_;
  Parallel parallel_;
  ModelImpl model_;
  Opt opt_;
  WarmupCosine schedule_;
  Tensor<T> state_[std::max(1, Opt::slots)];
  Tensor<std::int32_t> inputs_, targets_;
  std::int64_t step_ = 0;
};

}  // namespace tmoe
