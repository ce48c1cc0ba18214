#pragma once
// The Trainer: composed from model, optimizer, precision, parallel strategy and backend.
// One optimizer step = the step's N micro-batches ("pieces", train.grad_accum; replica q of
// R computes pieces [q N/R, (q+1) N/R)), their gradients summed along one fixed tree
// (parallel/tree_sum.hpp) -> gradient reduction across replicas -> overflow check and unscale (loss scaling) -> L2 -> global-norm
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
#include <memory>
#include <string>
#include <vector>

#include "tmoe/core/concepts.hpp"
#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/philox.hpp"
#include "tmoe/core/threading.hpp"
#include "tmoe/parallel/data_parallel.hpp"
#include "tmoe/parallel/expert_parallel.hpp"
#include "tmoe/moe/plan.hpp"
#include "tmoe/optim/clip.hpp"
#include "tmoe/optim/schedule.hpp"
#include "tmoe/parallel/pipeline.hpp"
#include "tmoe/parallel/serial.hpp"
#include "tmoe/parallel/tree_sum.hpp"
#include "tmoe/layers/tensor_group.hpp"
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
  std::int64_t micro_batches = 0;  // pieces of the global step (all replicas)
  std::int64_t tokens = 0;         // tokens of the global step
  CommCounters comm;               // this rank's communication during the step
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

namespace detail {
template <class Par, class T>
struct exchange_of {
  using type = ExpertSlots<T>;  // never made: a strategy without expert parallelism
};
template <class Par, class T>
  requires requires { typename Par::CommType; }
struct exchange_of<Par, T> {
  using type = CommExchange<typename Par::CommType, T>;
};
}  // namespace detail
template <class Par, class T>
using CommExchangeOf = typename detail::exchange_of<Par, T>::type;

namespace detail {
// The row loop of a trainer's host-side work when the model lives on a device.
struct HostLoops {
  template <class F>
  static void for_rows(std::int64_t rows, F&& fn) {
    parallel_for(rows, fn);
  }
};
}  // namespace detail

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
  // A model in device memory (backend::Cuda): the trainer keeps host copies of its weights
  // and gradients and runs the step's host part on them (reduction, clipping, the optimizer:
  // an optimizer offloaded to the CPU, as ZeRO-Offload does), copying the gradients down
  // after each backward and the weights up after each update. Bitwise the CPU's update rules.
  static constexpr bool kHostModel = std::is_same_v<typename BackendP::Space, HostSpace>;
  static_assert(kHostModel || std::is_same_v<Parallel, Serial>,
                "tmoe: Trainer<..., Parallel, backend::Cuda>: a model on the GPU trains with the Serial strategy for "
                "now; DataParallel over comm::Nccl is not wired into the trainer yet");

  explicit Trainer(const Config& cfg, Parallel parallel = {})
      : cfg_(cfg), parallel_(std::move(parallel)), model_((cfg.validate(), layout(cfg.model))), schedule_(cfg.train),
        ramp_(cfg.train) {
    opt_ = Opt::from_config(cfg.train);
    scaler_ = LossScaler::from_config(cfg.train, Precision::loss_scaling);
    check_pieces();
    std::tie(lo_, hi_) = parallel_.shard(model_.registry());
    if constexpr (requires { parallel_.template make_exchange<T>(model_.registry()); }) {
      xchg_ = parallel_.template make_exchange<T>(model_.registry());
      if (xchg_) model_.set_expert_exchange(static_cast<ExpertExchange<T>*>(xchg_.get()));
    }
    for (int s = 0; s < opt_.used_slots(); ++s) state_[s].resize(Shape{hi_ - lo_});
    model_.init(cfg.train.seed);
    if constexpr (!kHostModel) {
      hparams_.resize(Shape{model_.registry().total()});
      hgrads_.resize(Shape{model_.registry().total()});
      params_from_model();
      for (const ParamInfo& pi : model_.registry().params()) has_buffers_ = has_buffers_ || pi.has(kTagBuffer);
    }
    if constexpr (kSeparateMaster) {
      master_.resize(Shape{hi_ - lo_});
      const T* p = params_h();
      for (std::int64_t i = lo_; i < hi_; ++i) master_[i - lo_] = static_cast<M>(p[i]);
      publish();
    }
    // The gradient-ready seam: during the last micro-batch's backward, each announced range
    // is finished (its pieces summed along the tree) and handed to a strategy that overlaps
    // its reduction with the rest of backward (grads_ready).
    // (A device model's gradients reach the host only after backward: no hook.)
    if constexpr (kHostModel) model_.set_grad_ready_hook([this](int first, int last) {
      if (!last_micro_) return;
      const ParamRegistry& reg = model_.registry();
      const std::int64_t lo = reg[first].offset, hi = last < reg.size() ? reg[last].offset : reg.total();
      T* g = model_.grads();
      acc_.finish(g, g, lo, hi);
      if (xchg_) xchg_->finish(g, lo, hi);
      finished_ += hi - lo;
      if constexpr (requires(Parallel& s, const ParamRegistry& r, T* gg) { s.grads_ready(r, gg, 0, 0); })
        parallel_.grads_ready(reg, g, first, last);
    });
    if constexpr (requires { parallel_.template make_tensor_group<T>(); }) {
      tgroup_ = parallel_.template make_tensor_group<T>();
      if (tgroup_) model_.set_tensor_group(static_cast<TensorGroup<T>*>(tgroup_.get()));
    }
    stage_buffers(stages(), cfg.train.batch_size * cfg.train.seq_len * cfg.model.d_model);
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

  // The weights the optimizer updates: the fp32 master copy under mixed precision, else the
  // model's own. Under ZeRO-1 a rank holds only its shard [shard().first, shard().second)
  // of the master copy and of the optimizer state; master_params() and optimizer_state()
  // then point at element shard().first. A checkpoint goes through restartable_state().
  M* master_params() {
    if constexpr (kSeparateMaster) return master_.data();
    else return params_h() + lo_;
  }
  std::pair<std::int64_t, std::int64_t> shard() const { return {lo_, hi_}; }
  // Copies the master weights into the model, rounded to the storage type (the router and
  // buffers stay exact: DESIGN.md, router in fp32); under ZeRO-1 each rank publishes its
  // shard and the shards are all-gathered.
  void publish() {
    if constexpr (kSeparateMaster) publish_range(master_.data() - lo_, lo_, hi_);
    parallel_.gather_shards(params_h(), model_.registry());
    params_to_model();
  }

  // Optimizer state: slot s (0 .. optimizer_slots()-1), laid out like the flat parameters.
  int optimizer_slots() const { return opt_.used_slots(); }
  std::string optimizer_name() const { return opt_.active_name(); }
  std::string optimizer_slot_name(int s) const { return opt_.slot_name(s); }
  M* optimizer_state(int s) { return state_[s].data(); }  // this rank's shard (see master_params)
  const Opt& optimizer() const { return opt_; }
  LossScaler& loss_scaler() { return scaler_; }
  const LrSchedule& schedule() const { return schedule_; }

  // Called with the reduced gradients (still loss-scaled) before the overflow check: custom
  // gradient processing, or fault injection in tests.
  void set_gradient_hook(std::function<void(T* grads, std::int64_t n)> fn) { gradient_hook_ = std::move(fn); }

  // Parameters of the whole model, whatever this rank holds (every rank must call it).
  std::int64_t parameter_count() {
    if constexpr (requires { parallel_.count_parameters(model_.registry()); }) return parallel_.count_parameters(model_.registry());
    else return model_.registry().count();
  }

  MemoryReport memory_report() const {
    MemoryReport r;
    const std::int64_t total = model_.registry().total();
    r.params = total * static_cast<std::int64_t>(sizeof(T));
    const std::int64_t mine = hi_ - lo_;  // the ZeRO-1 shard, or everything
    r.master = kSeparateMaster ? mine * static_cast<std::int64_t>(sizeof(M)) : 0;
    r.grads = total * static_cast<std::int64_t>(sizeof(T));
    r.optimizer = opt_.used_slots() * mine * static_cast<std::int64_t>(sizeof(M));
    if constexpr (requires(const ModelImpl& m) { m.activation_bytes(std::int64_t{}, std::int64_t{}); })
      r.activations = model_.activation_bytes(cfg_.train.batch_size, cfg_.train.seq_len);
    return r;
  }

  // One optimizer step over the step's pieces (train.grad_accum micro-batches, or fewer
  // during a batch ramp), split over the replicas: backward of each (loss-scaled under
  // MixedFp16) -> tree sum of the pieces -> reduction across replicas -> overflow check
  // (skip) -> unscale -> L2 -> global-norm clip -> update by parameter group (this rank's
  // shard under ZeRO-1) -> weight constraints -> publish -> router bias update.
  StepStats train_step(const BatchFn& batches) {
    const auto& tc = cfg_.train;
    const std::int64_t b = tc.batch_size, t = tc.seq_len, pieces = ramp_.micro_batches(step_),
                       first = ramp_.first_micro(step_);
    const std::int64_t a = pieces / parallel_.size(), mine0 = parallel_.rank() * a;
    parallel_.counters().clear();
    StepStats st;
    st.step = step_;
    st.micro_batches = pieces;
    st.loss_scale = scaler_.enabled ? scaler_.scale : 1.0;
    st.expert_counts.assign(static_cast<std::size_t>(cfg_.model.n_layers), {});
    st.moe.assign(static_cast<std::size_t>(cfg_.model.n_layers), {});
    T* g = grads_h();
    const std::int64_t total = model_.registry().total();
    const std::int64_t L = cfg_.model.n_layers, l0 = model_.first_layer(), n = b * t, c = cfg_.model.d_model;
    // Each local piece's cross-entropy and every layer's balancing loss (0 for layers of
    // other pipeline stages): summed over the stages, then folded in layer order as one
    // process does.
    std::vector<double> lparts(static_cast<std::size_t>((L + 1) * a), 0.0);
    model_.zero_grad();
    acc_.reset(total);
    if (xchg_) xchg_->begin_step();
    finished_ = 0;
    const int S = stages(), s = stage();
    stage_buffers(S, n * c);
    std::int64_t current = -1;  // the micro-batch whose activations the model holds
    auto run_forward = [&](std::int64_t micro, bool recompute) {
      const std::int64_t piece = mine0 + micro;
      const std::size_t slot = static_cast<std::size_t>(micro % S);
      if (S > 1 && s > 0) model_.set_stage_input(xin_[slot].data());
      model_.set_mode(true, tc.seed, step_, piece * b * t);
      model_.set_recompute_pass(recompute);
      const auto lp = model_.forward(ins_[slot].data(), tgts_[slot].data(), b, t);
      model_.set_recompute_pass(false);
      current = micro;
      return lp;
    };
    for (const PipeOp& op : pipeline_schedule(S, s, a)) {
      const std::int64_t micro = op.micro, piece = mine0 + micro;
      const std::size_t slot = static_cast<std::size_t>(micro % S);
      if (op.forward) {
        batches(first + piece, ins_[slot].data(), tgts_[slot].data());
        if constexpr (kPipelined) {
          if (S > 1 && s > 0) parallel_.recv_stage(xin_[slot].data(), n * c, s - 1, static_cast<int>(micro));
        }
        const auto lp = run_forward(micro, false);
        double* lpp = lparts.data() + micro * (L + 1);
        lpp[0] = lp.ce;
        for (std::int64_t l = 0; l < model_.n_layers(); ++l) lpp[1 + l0 + l] = model_.block(l).loss();
        for (std::int64_t l = 0; l < model_.n_layers(); ++l) {
          auto cnt = model_.expert_counts(l);
          auto& acc = st.expert_counts[static_cast<std::size_t>(l0 + l)];
          acc.resize(cnt.size(), 0);
          for (std::size_t e = 0; e < cnt.size(); ++e) acc[e] += cnt[e];
          if (const MoEStats* ms = model_.moe_stats(l)) st.moe[static_cast<std::size_t>(l0 + l)].accumulate(*ms, static_cast<double>(a));
        }
        if constexpr (kPipelined) {
          if (S > 1 && s + 1 < S) {
            parallel_.wait_stage(xout_sent_[slot]);  // the slot's previous send
            std::copy_n(model_.stage_output(), n * c, xout_[slot].data());
            xout_sent_[slot] = parallel_.send_stage(xout_[slot].data(), n * c, s + 1, static_cast<int>(micro));
          }
        }
        continue;
      }
      // Backward of `micro`: a stage holding another micro-batch's activations re-runs this
      // one's forward from its saved input first (bitwise the same, as full recomputation).
      if (current != micro) run_forward(micro, true);
      if constexpr (kPipelined) {
        if (S > 1 && s + 1 < S) {
          parallel_.recv_stage(dout_.data(), n * c, s + 1, static_cast<int>(micro));
          model_.set_stage_output_grad(dout_.data());
        }
      }
      if (xchg_) xchg_->begin_micro();  // expert gradient slots: this micro-batch's only
      last_micro_ = micro + 1 == a;
      model_.backward(st.loss_scale / static_cast<double>(pieces));
      grads_from_model();
      last_micro_ = false;
      if constexpr (kPipelined) {
        if (S > 1 && s > 0) {
          parallel_.wait_stage(din_sent_[slot]);
          std::copy_n(model_.stage_input_grad(), n * c, din_[slot].data());
          din_sent_[slot] = parallel_.send_stage(din_[slot].data(), n * c, s - 1, static_cast<int>(micro));
        }
      }
      if (micro + 1 < a) {
        acc_.add(g);
        if (xchg_) xchg_->end_micro();
        model_.zero_grad();
      }
    }
    if constexpr (kPipelined)
      for (std::size_t i = 0; i < xout_sent_.size(); ++i) {
        parallel_.wait_stage(xout_sent_[i]);
        parallel_.wait_stage(din_sent_[i]);
      }
    std::vector<double> parts(static_cast<std::size_t>(3 * a));  // (total, ce, aux) of each local piece
    if constexpr (kPipelined) parallel_.sum_stages(lparts.data(), static_cast<std::int64_t>(lparts.size()));
    for (std::int64_t micro = 0; micro < a; ++micro) {
      const double* lpp = lparts.data() + micro * (L + 1);
      double aux = 0;
      for (std::int64_t l = 0; l < L; ++l) aux += lpp[1 + l];
      parts[static_cast<std::size_t>(3 * micro)] = lpp[0] + aux;
      parts[static_cast<std::size_t>(3 * micro + 1)] = lpp[0];
      parts[static_cast<std::size_t>(3 * micro + 2)] = aux;
    }
    if constexpr (kPipelined) gather_stage_stats(st);
    model_.set_mode(false);
    if (finished_ == 0) {  // a model without the gradient-ready hook
      acc_.finish(g, g, 0, total);
      if (xchg_) xchg_->finish(g, 0, total);
    }
    else if (finished_ != total)
      throw Error(detail::cat("backward announced ", finished_, " of ", total, " gradient elements"), "Trainer::train_step",
                  "a model whose gradient-ready hook announces every parameter once per backward");
    st.tokens = pieces * b * t;
    if constexpr (requires { parallel_.set_loss_scale(1.0); }) parallel_.set_loss_scale(st.loss_scale);
    parallel_.reduce_gradients(g, model_.registry());
    reduce_stats(st, parts, pieces);
    if (gradient_hook_) gradient_hook_(g, total);
    st.lr = schedule_(step_);
    T* gs = g + lo_;  // this rank's shard of the reduced gradient (all of it without ZeRO-1)
    const std::int64_t gn = hi_ - lo_;

    if (scaler_.enabled) {
      // Every rank must decide alike: the overflow flag is summed over all ranks.
      const bool finite = parallel_.sum(std::isfinite(grad_sum_squares(g)) ? 0.0 : 1.0) == 0.0;
      if (!scaler_.update(finite)) {
        st.skipped = true;
        skip_step();
        st.comm = parallel_.counters();
        return st;
      }
      if (st.loss_scale != 1.0) {
        const T inv = static_cast<T>(1.0 / st.loss_scale);
        HostRows::for_rows(gn / 4096 + 1, [=](std::int64_t blk) {
          const std::int64_t i1 = std::min(gn, (blk + 1) * 4096);
          for (std::int64_t i = blk * 4096; i < i1; ++i) gs[i] *= inv;
        });
      }
    }
    add_l2(g);
    const double ss = grad_sum_squares(g);
    if (!std::isfinite(ss))
      throw Error(detail::cat("gradient norm is not finite at step ", step_), "Trainer::train_step",
                  "finite gradients (lower the learning rate, or use a loss-scaled precision policy)");
    st.grad_norm = clip_grad_norm<HostRows>(gs, gn, tc.grad_clip, ss);
    ++step_;
    for (const ParamInfo& pi : model_.registry().params()) {
      if (pi.has(kTagBuffer)) continue;  // state moved by its own rule (e.g. the router bias update)
      const std::int64_t i0 = std::max(pi.offset, lo_), i1 = std::min(pi.offset + pi.numel(), hi_);
      if (i1 <= i0) continue;
      const GroupSettings grp = GroupSettings::of(tc, pi);
      std::array<M*, std::max(1, Opt::slots)> st_ptrs{};
      for (int s = 0; s < opt_.used_slots(); ++s) st_ptrs[s] = state_[s].data() + (i0 - lo_);
      M* w = master_at(i0);
      opt_.update(w, grad_view(g, i0, i1 - i0), st_ptrs.data(), i1 - i0, st.lr, grp.weight_decay, step_);
      if (grp.clamp) {
        const M lo = static_cast<M>(grp.clamp_min), hi = static_cast<M>(grp.clamp_max);
        for (std::int64_t i = 0; i < i1 - i0; ++i) w[i] = std::clamp(w[i], lo, hi);
      }
    }
    publish();
    model_.after_step([this](double* v, std::int64_t count) { parallel_.sum(v, count); });
    if constexpr (!kHostModel)
      if (has_buffers_) params_from_model();  // the buffers the model moved (router biases)
    pull_buffers();
    st.comm = parallel_.counters();
    if (xchg_) {
      st.comm.bytes_sent += xchg_->take_bytes();
      st.comm.wait_s += xchg_->take_wait_s();
    }
    if (tgroup_) {
      st.comm.bytes_sent += tgroup_->take_bytes();
      st.comm.wait_s += tgroup_->take_wait_s();
    }
    return st;
  }

  // Mean cross-entropy (nats per token) over eval micro-batches 0..count-1 (split over the
  // replicas; the mean is summed in batch order, so it does not depend on the layout).
  double evaluate(const BatchFn& batches, std::int64_t count) {
    model_.set_mode(false);
    const std::int64_t R = parallel_.size(), per = (count + R - 1) / R;
    const std::int64_t b = cfg_.train.batch_size, t = cfg_.train.seq_len, nc = b * t * cfg_.model.d_model;
    const int S = stages(), s = stage();
    stage_buffers(S, nc);
    std::vector<double> mine(static_cast<std::size_t>(per), 0.0);
    for (std::int64_t j = 0; j < per; ++j) {
      // Every rank runs the same number of forwards (under expert parallelism each is a
      // collective); a rank past the end repeats a batch and drops the result. A pipeline
      // passes each batch's activations down its stages; the last one has the loss.
      const std::int64_t i = j * R + parallel_.rank();
      batches(i < count ? i : i % count, ins_[0].data(), tgts_[0].data());
      if constexpr (kPipelined)
        if (S > 1 && s > 0) {
          parallel_.recv_stage(xin_[0].data(), nc, s - 1, static_cast<int>(j));
          model_.set_stage_input(xin_[0].data());
        }
      const double ce = model_.forward(ins_[0].data(), tgts_[0].data(), b, t).ce;
      if constexpr (kPipelined)
        if (S > 1 && s + 1 < S) {
          comm::Pending p = parallel_.send_stage(model_.stage_output(), nc, s + 1, static_cast<int>(j));
          parallel_.wait_stage(p);
        }
      mine[static_cast<std::size_t>(j)] = i < count ? ce : 0.0;
    }
    if constexpr (kPipelined) parallel_.sum_stages(mine.data(), per);  // the last stage's losses
    const std::vector<double> all = parallel_.gather(mine);  // [rank][j]: batch j R + rank
    double sum = 0;
    for (std::int64_t i = 0; i < count; ++i) sum += all[static_cast<std::size_t>((i % R) * per + i / R)];
    return sum / static_cast<double>(count);
  }

  // Continues `prompt` by `count` tokens: greedy when temperature == 0, else sampling from
  // softmax(logits / temperature) with Philox draws keyed by (seed, token index).
  std::vector<std::int32_t> generate(std::vector<std::int32_t> prompt, std::int64_t count, double temperature,
                                     std::uint64_t seed) {
    if (stages() > 1)
      throw Error("generation under pipeline parallelism", "Trainer::generate",
                  "one process (or a grid without pipeline stages): save a checkpoint and sample from it");
    if (prompt.empty()) prompt.push_back(0);
    model_.set_mode(false);
    const std::int64_t v = cfg_.model.vocab_size, ctx = cfg_.model.context;
    const std::size_t start = prompt.size();
    for (std::int64_t i = 0; i < count; ++i) {
      const std::int64_t len = std::min<std::int64_t>(ctx, static_cast<std::int64_t>(prompt.size()));
      const std::int32_t* window = prompt.data() + prompt.size() - static_cast<std::size_t>(len);
      model_.forward(window, nullptr, 1, len);
      const T* l = model_.logits() + (len - 1) * v;
      std::vector<T> last_row;
      if constexpr (!kHostModel) {
        last_row.resize(static_cast<std::size_t>(v));
        StoreBackend::copy_to_host(l, v, last_row.data());
        l = last_row.data();
      }
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

  // What a checkpoint must hold to resume exactly (DESIGN.md: named in one place): full,
  // layout-free tensors in the registry's flat layout. Under ZeRO-1 the shards are
  // all-gathered into staging buffers (every rank must call it; with `current` false the
  // buffers are only sized, for a resume to fill). After writing into the views, call
  // adopt_state().
  struct StateView {
    std::string name;
    M* data;
    std::int64_t size;
  };
  std::vector<StateView> restartable_state(bool current = true) {
    const std::int64_t n = model_.registry().total();
    if (!parallel_.sharded()) {
      std::vector<StateView> v{{"params", master_params(), n}};
      for (int s = 0; s < opt_.used_slots(); ++s) v.push_back({std::string("optimizer.") + opt_.slot_name(s), state_[s].data(), n});
      return v;
    }
    auto stage = [&](Tensor<M>& buf, const M* shard) {
      buf.resize(Shape{n});
      if (current) {
        std::copy_n(shard, hi_ - lo_, buf.data() + lo_);
        parallel_.gather_shards(buf.data(), model_.registry());
      }
      return buf.data();
    };
    staging_.resize(static_cast<std::size_t>(1 + opt_.used_slots()));
    M* params = nullptr;
    if constexpr (kSeparateMaster) params = stage(staging_[0], master_.data());
    else params = params_h();
    std::vector<StateView> v{{"params", params, n}};
    for (int s = 0; s < opt_.used_slots(); ++s)
      v.push_back({std::string("optimizer.") + opt_.slot_name(s), stage(staging_[1 + s], state_[s].data()), n});
    return v;  // plus step(), config().train.seed (which key every random draw) and the loss scaler
  }
  // Takes the state written into restartable_state()'s views (a resume): keeps this rank's
  // shard, frees the staging buffers and publishes the weights.
  void adopt_state() {
    if (parallel_.sharded()) {
      if constexpr (kSeparateMaster) std::copy_n(staging_.at(0).data() + lo_, hi_ - lo_, master_.data());
      for (int s = 0; s < opt_.used_slots(); ++s) std::copy_n(staging_.at(1 + s).data() + lo_, hi_ - lo_, state_[s].data());
      if constexpr (kSeparateMaster) publish_range(staging_[0].data(), 0, model_.registry().total());
      params_to_model();
      staging_.clear();
      return;
    }
    publish();
  }
  // Releases the staging buffers of a save under ZeRO-1.
  void release_staging() { staging_.clear(); }

 private:
  static constexpr bool kPipelined = requires(Parallel& p) { p.stages(); };
  int stages() const {
    if constexpr (kPipelined) return parallel_.stages();
    else return 1;
  }
  int stage() const {
    if constexpr (kPipelined) return parallel_.stage();
    else return 0;
  }
  // A slot per micro-batch a pipeline stage can have in flight: its token ids and targets,
  // and (S > 1) its received input, sent output and sent input gradient; nc = B·T·C.
  void stage_buffers(int S, std::int64_t nc) {
    const std::int64_t n = cfg_.train.batch_size * cfg_.train.seq_len;
    const std::size_t slots = static_cast<std::size_t>(S);
    if (ins_.size() == slots) return;
    ins_.clear();
    tgts_.clear();
    ins_.resize(slots);
    tgts_.resize(slots);
    for (std::size_t i = 0; i < slots; ++i) {
      ins_[i].resize(Shape{n});
      tgts_[i].resize(Shape{n});
    }
    if (S == 1) return;
    for (auto* v : {&xin_, &xout_, &din_}) {
      v->clear();
      v->resize(slots);
    }
    for (std::size_t i = 0; i < slots; ++i)
      for (auto* v : {&xin_[i], &xout_[i], &din_[i]}) v->resize(Shape{nc});
    dout_.resize(Shape{nc});
    xout_sent_.resize(slots);
    din_sent_.resize(slots);
  }
  // Under pipeline parallelism a stage counted only its layers' expert statistics: every
  // stage's layers are gathered (as numbers; term names as character codes).
  void gather_stage_stats(StepStats& st) {
    if constexpr (kPipelined) gather_stage_stats_impl(st);
  }
  void gather_stage_stats_impl(StepStats& st)
    requires kPipelined
  {
    if (stages() == 1) return;
    std::vector<double> mine;
    auto put = [&](const auto& v) {
      mine.push_back(static_cast<double>(v.size()));
      for (auto x : v) mine.push_back(static_cast<double>(x));
    };
    for (std::int64_t l = model_.first_layer(); l < model_.first_layer() + model_.n_layers(); ++l) {
      const MoEStats& m = st.moe[static_cast<std::size_t>(l)];
      mine.push_back(static_cast<double>(l));
      put(st.expert_counts[static_cast<std::size_t>(l)]);
      put(m.tokens);
      put(m.dropped);
      put(m.bias);
      mine.push_back(m.entropy);
      mine.push_back(static_cast<double>(m.terms.size()));
      for (const auto& [name, value] : m.terms) {
        put(name);
        mine.push_back(value);
      }
    }
    const std::vector<double> all = parallel_.gather_stages(mine);
    std::size_t at = 0;
    auto get_count = [&] { return static_cast<std::size_t>(all[at++]); };
    auto get = [&](auto& v) {
      v.resize(get_count());
      for (auto& x : v) x = static_cast<std::remove_reference_t<decltype(x)>>(all[at++]);
    };
    while (at < all.size()) {
      const auto l = static_cast<std::size_t>(all[at++]);
      MoEStats& m = st.moe[l];
      get(st.expert_counts[l]);
      get(m.tokens);
      get(m.dropped);
      get(m.bias);
      m.entropy = all[at++];
      m.terms.resize(get_count());
      for (auto& [name, value] : m.terms) {
        get(name);
        value = all[at++];
      }
    }
  }
  // The model this rank builds (its share of the experts under expert parallelism).
  ModelConfig layout(const ModelConfig& m) const {
    if constexpr (requires { parallel_.model_layout(m); }) return parallel_.model_layout(m);
    else return m;
  }
  // Steps must split into equal runs of pieces over the replicas.
  void check_pieces() const {
    const std::int64_t R = parallel_.size();
    if (R == 1) return;
    const auto& tc = cfg_.train;
    for (std::int64_t s = 0; s <= std::max<std::int64_t>(0, tc.batch_ramp_steps); ++s) {
      const std::int64_t n = ramp_.micro_batches(s);
      if (n % R != 0)
        throw Error(detail::cat("step ", s, " has ", n, " micro-batches (train.grad_accum", tc.batch_ramp_steps > 0 ? ", batch ramp" : "",
                                "), not divisible by the ", R, " data-parallel replicas"),
                    "train.grad_accum", "a global micro-batch count per step divisible by parallel.data x parallel.expert");
    }
  }
  // The master weight of flat element i (i in this rank's shard).
  M* master_at(std::int64_t i) {
    if constexpr (kSeparateMaster) return master_.data() + (i - lo_);
    else return params_h() + i;
  }
  // Model weights [lo, hi) from master weights given in the flat layout (src[i] is element i).
  void publish_range(const M* src, std::int64_t lo, std::int64_t hi) {
    T* p = params_h();
    for (const ParamInfo& pi : model_.registry().params()) {
      const std::int64_t i0 = std::max(pi.offset, lo), i1 = std::min(pi.offset + pi.numel(), hi);
      if (i1 <= i0) continue;
      const bool exact = pi.has(kTagRouter) || pi.has(kTagBuffer);
      if constexpr (narrow_storage_v<Precision>) {
        if (!exact) {
          for (std::int64_t i = i0; i < i1; ++i) p[i] = static_cast<T>(Precision::storage::round(static_cast<float>(src[i])));
          continue;
        }
      }
      for (std::int64_t i = i0; i < i1; ++i) p[i] = static_cast<T>(src[i]);
    }
  }
  // Σ g² over the whole reduced gradient, summed the same way on every layout: each
  // parameter in cells of kSumSquaresChunk elements (each cell in order, in double), its
  // cells in order, then the parameters in global order. Under ZeRO-1 a rank sums the cells
  // of its shard (shards are whole cells) and the cell sums are gathered; under expert
  // parallelism the other experts' sums come from the expert group.
  double grad_sum_squares(const T* g) {
    const ParamRegistry& reg = model_.registry();
    std::vector<std::pair<std::int64_t, std::int64_t>> cells;  // [lo, hi) within [lo_, hi_)
    std::vector<int> owner;                                     // registry index of each cell
    for (int i = 0; i < reg.size(); ++i) {
      const ParamInfo& p = reg[i];
      const std::int64_t end = p.offset + p.numel();
      for (std::int64_t c0 = p.offset; c0 < end; c0 += kSumSquaresChunk)
        if (c0 >= lo_ && c0 < hi_) {
          cells.emplace_back(c0, std::min(end, c0 + kSumSquaresChunk));
          owner.push_back(i);
        }
    }
    std::vector<double> part(cells.size(), 0.0);
    parallel_for(static_cast<std::int64_t>(cells.size()), [&](std::int64_t c) {
      double s = 0;
      for (std::int64_t i = cells[c].first; i < cells[c].second; ++i) s += static_cast<double>(g[i]) * static_cast<double>(g[i]);
      part[c] = s;
    });
    if (parallel_.sharded()) {  // every cell, in flat order; owners recomputed for all
      part = parallel_.gather_shard_values(part);
      owner.clear();
      for (int i = 0; i < reg.size(); ++i)
        for (std::int64_t c0 = 0; c0 < reg[i].numel(); c0 += kSumSquaresChunk) owner.push_back(i);
    }
    std::vector<std::pair<int, double>> per_param;  // (global index, Σ g²)
    for (std::size_t c = 0; c < part.size(); ++c) {
      const int gi = reg[owner[c]].global_index;
      if (per_param.empty() || per_param.back().first != gi) per_param.emplace_back(gi, 0.0);
      per_param.back().second += part[c];
    }
    if constexpr (requires { parallel_.merge_sums(per_param, reg); }) parallel_.merge_sums(per_param, reg);
    std::sort(per_param.begin(), per_param.end());
    double total = 0;
    for (const auto& [gi, v] : per_param) total += v;
    return total;
  }
  // The gradient the optimizer sees, in the master type: elements [i0, i0 + n).
  const M* grad_view(const T* g, std::int64_t i0, std::int64_t n) {
    if constexpr (std::is_same_v<M, T>) return g + i0;
    else {
      grad_tmp_.ensure(Shape{n});
      for (std::int64_t i = 0; i < n; ++i) grad_tmp_[i] = static_cast<M>(g[i0 + i]);
      return grad_tmp_.data();
    }
  }
  // Same as the statistics of one process: pieces' losses summed along the tree over the
  // global piece order; counts summed over replicas (exact); means averaged.
  void reduce_stats(StepStats& st, const std::vector<double>& parts, std::int64_t pieces) {
    const std::vector<double> all = parallel_.gather(parts);
    std::vector<double> v[3];
    for (std::size_t i = 0; i < all.size(); ++i) v[i % 3].push_back(all[i]);
    st.loss = tree_sum(v[0]) / static_cast<double>(pieces);
    st.ce = tree_sum(v[1]) / static_cast<double>(pieces);
    st.aux = tree_sum(v[2]) / static_cast<double>(pieces);
    if (parallel_.size() == 1) return;
    const double R = parallel_.size();
    std::vector<double> flat;
    for (const auto& c : st.expert_counts) flat.insert(flat.end(), c.begin(), c.end());
    for (const MoEStats& m : st.moe) {
      flat.insert(flat.end(), m.tokens.begin(), m.tokens.end());
      flat.insert(flat.end(), m.dropped.begin(), m.dropped.end());
      flat.push_back(m.entropy / R);
      for (const auto& term : m.terms) flat.push_back(term.second / R);
    }
    parallel_.sum(flat.data(), static_cast<std::int64_t>(flat.size()));
    std::size_t at = 0;
    for (auto& c : st.expert_counts)
      for (auto& x : c) x = static_cast<std::int64_t>(flat[at++]);
    for (MoEStats& m : st.moe) {
      for (auto& x : m.tokens) x = static_cast<std::int64_t>(flat[at++]);
      for (auto& x : m.dropped) x = static_cast<std::int64_t>(flat[at++]);
      m.entropy = flat[at++];
      for (auto& term : m.terms) term.second = flat[at++];
    }
  }
  // L2 penalty (l2/2)·‖w‖² of each group: g += l2 · w, before clipping (this rank's shard).
  void add_l2(T* g) {
    for (const ParamInfo& pi : model_.registry().params()) {
      if (pi.has(kTagBuffer)) continue;
      const double l2 = GroupSettings::of(cfg_.train, pi).l2;
      if (l2 == 0) continue;
      const std::int64_t i0 = std::max(pi.offset, lo_), i1 = std::min(pi.offset + pi.numel(), hi_);
      const T c = static_cast<T>(l2);
      for (std::int64_t i = i0; i < i1; ++i) g[i] += c * static_cast<T>(*master_at(i));
    }
  }
  // Buffers (router biases) are moved by the model in its own weights: copy them back into
  // the master weights so a checkpoint holds them.
  void pull_buffers() {
    if constexpr (kSeparateMaster) {
      const T* p = params_h();
      for (const ParamInfo& pi : model_.registry().params())
        if (pi.has(kTagBuffer))
          for (std::int64_t i = std::max(pi.offset, lo_); i < std::min(pi.offset + pi.numel(), hi_); ++i)
            master_[i - lo_] = static_cast<M>(p[i]);
    }
  }
  // A skipped step leaves every weight, buffer and optimizer moment as it was; the model's
  // per-step accumulators (the bias update's loads) are dropped.
  void skip_step() {
    if constexpr (!kHostModel) {  // the host copy still holds the step's starting weights
      model_.after_step([](double*, std::int64_t) {});
      params_to_model();
      ++step_;
      return;
    }
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

  // The model's weights and gradients as the host part of the step sees them: the model's
  // own buffers on the CPU, the host copies of a device model's.
  T* params_h() {
    if constexpr (kHostModel) return model_.params();
    else return hparams_.data();
  }
  T* grads_h() {
    if constexpr (kHostModel) return model_.grads();
    else return hgrads_.data();
  }
  void params_to_model() {
    if constexpr (!kHostModel) StoreBackend::copy_from_host(hparams_.data(), model_.registry().total(), model_.params());
  }
  void params_from_model() {
    if constexpr (!kHostModel) StoreBackend::copy_to_host(model_.params(), model_.registry().total(), hparams_.data());
  }
  void grads_from_model() {
    if constexpr (!kHostModel) StoreBackend::copy_to_host(model_.grads(), model_.registry().total(), hgrads_.data());
  }
  // Loops of the step's host part (the CPU backend's own on the CPU).
  using HostRows = std::conditional_t<kHostModel, StoreBackend, detail::HostLoops>;

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
  std::vector<Tensor<M>> staging_;  // full-size state of a save/resume under ZeRO-1
  PieceAccumulator<T> acc_;         // the step's pieces on this rank, summed along the tree
  std::unique_ptr<CommExchangeOf<Parallel, T>> xchg_;  // expert parallelism (null without)
  std::int64_t lo_ = 0, hi_ = 0;    // this rank's shard of the flat parameters (ZeRO-1), or all
  std::int64_t finished_ = 0;       // gradient elements finished in the last backward
  bool last_micro_ = false;
  std::vector<Tensor<std::int32_t>> ins_, tgts_;  // per pipeline slot (one without stages)
  std::vector<Tensor<T>> xin_, xout_, din_;        // per slot: a stage's activations in flight
  Tensor<T> dout_;                                 // the received output gradient
  std::vector<comm::Pending> xout_sent_, din_sent_;
  std::unique_ptr<TensorGroup<T>> tgroup_;         // tensor parallelism (null without)
  std::function<void(T*, std::int64_t)> gradient_hook_;
  std::int64_t step_ = 0;
  Tensor<T> hparams_, hgrads_;  // host copies of a device model's weights and gradients
  bool has_buffers_ = false;    // the model moves some weights itself (router biases)
};

}  // namespace tmoe
