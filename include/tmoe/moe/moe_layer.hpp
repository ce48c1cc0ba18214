#pragma once
// The MoE layer, as DESIGN.md's five steps:
//   route    router logits l = x Wrᵀ (E per token; Hash has no matrix), divided by
//            model.router_temperature, with optional training noise; the Router policy turns
//            them into assignments (token, expert, gate), the gates times model.route_scale
//   plan     capacity (CapacityFactor drops what overflows), then a stable counting sort of
//            the kept assignments by expert (moe/plan.hpp): nothing depends on threads
//   dispatch gather each kept assignment's token row into one contiguous buffer, expert by
//            expert, in token order
//   experts  each expert runs once over its contiguous slice (one GEMM per matrix, not per
//            token); sequence-aware experts (TransformerExpert) also get the slice's
//            per-sequence segments
//   combine  each token sums its kept assignments' gate · expert output in assignment order,
//            plus the shared experts (model.n_shared_experts, always on) applied to every token
// Balancing terms (moe/balance.hpp) are a compile-time list, each with its config weight.
// Training-only regularisation (layers/dropout.hpp, docs/regularisation.md):
//   expert dropout   model.expert_dropout gives expert e a rate for its hidden units, keyed
//                    (layer, kExpertHidden, global token of the routed row, e · depth · hidden + unit)
//   expert drop      model.expert_drop_rate drops each kept assignment (token, e), keyed
//                    (layer, kExpertDrop, global token, e), after capacity; the token's surviving
//                    gates are rescaled to the sum of its kept gates: g'_j = m_j g_j S / S_m,
//                    S = Σ_kept g, S_m = Σ_kept m g (all dropped: no routed output). Balancing
//                    losses, statistics and the bias-update load see the router's choice.
//
// Backends ("route on the host, compute on the device"): the router's linear layer, the
// dispatch, the experts and the combine run on B, in B's memory. The routing decisions
// (router math, top-k, capacity, expert drop, the plan, balancing losses, statistics) run
// on the host, on host copies: when B's memory is not host memory the logits (N, E) come
// to the host, and the plan's index arrays (one packed int32 buffer, moe/permute_plan.hpp)
// and the gates go back; in backward the gates' gradient comes to the host and the router
// logits' gradient goes back. On backend::Cpu there is no copy: the same buffers as ever.
// Not ported to a device backend: sequence-aware experts (TransformerExpert; a compile
// error), expert parallelism and tensor parallelism (run-time errors naming the option).
//
//   MoE<Expert, Router = TopK, Capacity = Dropless, Balance = Balancing<AuxLoss, ZLoss>>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "tmoe/core/concepts.hpp"
#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/macros.hpp"
#include "tmoe/core/philox.hpp"
#include "tmoe/core/threading.hpp"
#include "tmoe/layers/dense_ffn.hpp"
#include "tmoe/layers/dropout.hpp"
#include "tmoe/layers/linear.hpp"
#include "tmoe/moe/balance.hpp"
#include "tmoe/moe/capacity.hpp"
#include "tmoe/moe/experts/expert_shape.hpp"
#include "tmoe/moe/expert_exchange.hpp"
#include "tmoe/layers/tensor_group.hpp"
#include "tmoe/moe/permute_plan.hpp"
#include "tmoe/moe/plan.hpp"
#include "tmoe/moe/routers/topk.hpp"
#include "tmoe/moe/routing.hpp"
#include "tmoe/tensor/tensor.hpp"

namespace tmoe {

namespace detail {
template <class E>
struct dense_of {
  using type = E;
};
template <class E>
  requires requires { typename E::dense_equivalent; }
struct dense_of<E> {
  using type = typename E::dense_equivalent;
};
template <class E>
concept SequenceAwareExpert = requires { E::sequence_aware; } && E::sequence_aware;

template <class P>
struct is_balancing : std::false_type {};
template <class... Ps>
struct is_balancing<Balancing<Ps...>> : std::true_type {};
}  // namespace detail

// The feed-forward map an expert policy stands for in a dense layer or a shared expert:
// itself, or `E::dense_equivalent` (TransformerExpert's inner FFN).
template <class E>
using dense_expert_t = typename detail::dense_of<E>::type;

template <class ExpertP, class RouterP = TopK, class CapacityP = Dropless, class BalanceP = Balancing<AuxLoss, ZLoss>>
struct MoE {
  static_assert(Expert<ExpertP>,
                "tmoe: MoE<Expert, Router>: the Expert argument is not an Expert (an expert policy names itself, "
                "says how many matrices it has and provides impl<T, Backend> with weights(shape); see "
                "docs/concepts/expert.md)");
  static_assert(Router<RouterP>,
                "tmoe: MoE<Expert, Router>: the Router argument is not a Router (a router policy names its kind and "
                "provides per-token scores_token/gates_token/backward_token, or route_token for hashing; see "
                "docs/concepts/router.md)");
  static_assert(CapacityPolicy<CapacityP>,
                "tmoe: MoE<Expert, Router, Capacity>: the Capacity argument is not a capacity policy (Dropless or "
                "CapacityFactor; see docs/concepts/capacity.md)");
  static_assert(detail::is_balancing<BalanceP>::value,
                "tmoe: MoE<Expert, Router, Capacity, Balance>: the Balance argument must be Balancing<Terms...>, e.g. "
                "Balancing<AuxLoss, ZLoss> (see docs/concepts/balancing.md)");
  static_assert(!(RouterP::kind == RouterKind::kExpertChoice && !CapacityP::drops),
                "tmoe: MoE<Expert, ExpertChoice, Dropless>: expert-choice routing fills each expert to a fixed "
                "capacity C, so it cannot be dropless; use CapacityFactor (model.capacity_factor sets C)");
  static_assert(!BalanceP::needs_bias || RouterP::has_bias,
                "tmoe: MoE<..., Balancing<..., BiasUpdate>>: the aux-loss-free bias update moves a per-expert "
                "selection bias, and this router has none; use SigmoidBias or GroupLimited<SigmoidBias>");
  static constexpr const char* name = "moe";
  static constexpr bool is_moe = true;
  using expert_policy = ExpertP;
  using router_policy = RouterP;
  using capacity_policy = CapacityP;
  using balance_policy = BalanceP;
  using dense_policy = Dense<dense_expert_t<ExpertP>>;  // the ffn of the dense layers between MoE ones

  template <class T, class B>
  struct impl {
    using ExpertImpl = typename ExpertP::template impl<T, B>;
    using SharedImpl = typename dense_expert_t<ExpertP>::template impl<T, B>;
    static constexpr bool kTokenChoice = RouterP::kind == RouterKind::kTokenChoice;
    static constexpr bool kExpertChoice = RouterP::kind == RouterKind::kExpertChoice;
    // B's memory is host memory (backend::Cpu): no copies, the host buffers are B's.
    static constexpr bool kHost = std::is_same_v<typename B::Space, HostSpace>;
    static_assert(kHost || !detail::SequenceAwareExpert<ExpertP>,
                  "tmoe: MoE<TransformerExpert<...>, ...> on a device backend (backend::Cuda): TransformerExpert is not "
                  "ported to the GPU yet; use SwiGLU or GeluFFN experts there, or backend::Cpu");
    using DevTensor = BackendTensor<B, T>;  // in B's memory

    RouterParams rp;
    std::int64_t c = 0, k = 0;
    double temperature = 1, jitter = 0, noise_std = 0, route_scale = 1, capacity_factor = 1;
    bool drop_by_position = false;
    std::array<double, BalanceP::size + 1> weights{};
    layers::Linear<T, B> router;
    Param<T> bias;  // SigmoidBias: (E), a buffer (kTagBuffer)
    std::vector<ExpertImpl> experts;
    SharedImpl shared;
    bool has_shared = false;
    ExpertShape eshape, sshape;

    // saved by forward for backward
    RouteContext ctx;
    const T* x = nullptr;
    std::int64_t n = 0, cap = 0;
    DevTensor xj, jmask;                      // jittered router input and its factors (N, C)
    Tensor<T> raw, logits, probs, sel;        // (N, E), host
    Tensor<T> rgates;                         // (A) the router's gates (before route_scale), host
    DevTensor xe, ye, dye, dxe, tmp;          // (rows, C), tmp (N, C)
    std::vector<std::int32_t> a_expert, a_token;       // (A) expert and token of each assignment
    std::vector<std::uint8_t> kept;           // (A)
    RoutingPlan plan;
    std::vector<double> dprobs, draw;         // (N, E)
    Tensor<T> dlogits, dprobs_t, dgate;       // (N, E), (N, E), (A), host
    // B's copies when B's memory is not the host's (unused on backend::Cpu)
    DevTensor raw_b, dlogits_b, dgate_b, gates_b;      // (N, E), (N, E), (A), (A)
    BackendTensor<B, std::int32_t> index_b;            // the plan's packed index arrays
    Tensor<T> bias_h;                                  // (E) host copy of the selection bias
    // The plan's index arrays in B's memory (the plan's own vectors on backend::Cpu) and
    // the gates the combine multiplies by (after the expert drop), also in B's memory.
    struct Index {
      const std::int32_t *row_token = nullptr, *row_assign = nullptr, *pos = nullptr, *tok_offsets = nullptr,
                         *tok_assign = nullptr;
    } ix;
    const T* gates_dev = nullptr;
    std::vector<std::int64_t> seg;            // segment offsets of one expert's slice
    std::vector<double> step_load;            // (E) routed tokens over the step (BiasUpdate)
    double loss_ = 0;
    MoEStats stats_;
    // dropout (training only)
    std::vector<double> hidden_rates;         // (E) model.expert_dropout per expert
    double expert_drop_rate = 0, attn_dropout = 0;
    std::int64_t context = 0;
    bool xdrop_on = false;                    // the last forward dropped assignments
    std::vector<std::uint8_t> xdrop;          // (A) dropped by expert drop (kept by capacity)
    std::vector<std::int64_t> cap_counts;     // (E) rows per expert before the expert drop
    std::vector<double> tok_s, tok_sm, tok_d; // (N) Σ kept gates, Σ surviving gates, backward sums
    Tensor<T> egates;                         // (A) gates after the drop and rescaling, host
    // expert parallelism: this rank holds experts [x0, x0 + el); rows travel by all-to-all
    ExpertExchange<T>* xchg = nullptr;
    TensorGroup<T>* tg = nullptr;  // tensor parallelism (null: one rank)
    std::int64_t x0 = 0, el = 0;
    std::vector<std::pair<std::int64_t, std::int64_t>> xrange;  // flat gradient range of each local expert
    T* gbase = nullptr;
    std::vector<std::int64_t> ep_smeta, ep_rmeta, ep_tok64, ep_srows, ep_rrows, ep_sc, ep_rc, ep_base;
    std::vector<std::int32_t> ep_tok;         // (received rows) the source's local token of each row
    DevTensor ep_xr, ep_yr, ep_dyr, ep_dxr, ep_scratch;

    void declare(ParamRegistry& r, const std::string& name, const ModelConfig& cfg) {
      c = cfg.d_model;
      k = cfg.top_k;
      rp = RouterParams{cfg.n_experts, cfg.top_k, cfg.router_renormalize, cfg.n_groups, cfg.top_groups};
      temperature = cfg.router_temperature;
      jitter = cfg.router_jitter;
      noise_std = cfg.router_noise_std;
      route_scale = cfg.route_scale;
      capacity_factor = cfg.capacity_factor;
      drop_by_position = cfg.drop_policy == "position";
      hidden_rates = cfg.expert_dropout_rates();
      expert_drop_rate = cfg.expert_drop_rate;
      attn_dropout = cfg.attn_dropout;
      context = cfg.context;
      std::size_t i = 0;
      std::apply([&](auto... p) { ((weights[i++] = decltype(p)::weight(cfg)), ...); }, typename BalanceP::list{});
      if constexpr (RouterP::learned) {
        router.declare(r, name + ".router", c, cfg.n_experts, false, kTagRouter, cfg.init_std);
        router.exact = true;  // fp32 router logits under a narrow storage precision
      }
      if constexpr (RouterP::has_bias)
        bias.index = r.add(name + ".router.bias", Shape{cfg.n_experts}, kTagRouter | kTagBias | kTagBuffer, Init::kZeros);
      const double out_std = cfg.init_std / std::sqrt(2.0 * static_cast<double>(cfg.n_layers));
      eshape = ExpertShape{cfg.d_model, cfg.d_expert, false, kTagExpert, cfg.init_std, out_std, cfg.gelu_exact,
                           cfg.expert_depth, cfg.expert_heads > 0 ? cfg.expert_heads : cfg.n_heads, cfg.norm_eps,
                           cfg.rope_base, cfg.context};
      // Under expert parallelism this rank declares only its experts; the others are counted
      // (ParamRegistry::skip) so that every parameter keeps its global index and name.
      if (cfg.n_experts % cfg.ep_size != 0)
        throw Error(detail::cat("model.n_experts = ", cfg.n_experts, " is not divisible by parallel.expert = ", cfg.ep_size),
                    "parallel.expert", "an expert-parallel size that divides the number of experts");
      if constexpr (detail::SequenceAwareExpert<ExpertP>)
        if (cfg.ep_size > 1)
          throw Error("a sequence-aware expert (TransformerExpert) under expert parallelism", "parallel.expert",
                      "parallel.expert = 1 for this expert policy (its rows would need their sequences' segments)");
      if constexpr (detail::SequenceAwareExpert<ExpertP>)
        if (cfg.tp_size > 1)
          throw Error("a sequence-aware expert (TransformerExpert) under tensor parallelism", "parallel.tensor",
                      "parallel.tensor = 1 for this expert policy (SwiGLU and GeluFFN experts split their hidden units)");
      if constexpr (!kHost) {
        if (cfg.ep_size > 1)
          throw Error("expert parallelism on a device backend", "parallel.expert",
                      "parallel.expert = 1 on the GPU (expert parallelism runs on backend::Cpu)");
        if (cfg.tp_size > 1)
          throw Error("tensor parallelism of an MoE layer on a device backend", "parallel.tensor",
                      "parallel.tensor = 1 on the GPU (tensor parallelism runs on backend::Cpu)");
      }
      // Tensor parallelism: every expert (routed and shared) holds a slice of its hidden units.
      eshape.tp_size = static_cast<int>(cfg.tp_size);
      eshape.tp_rank = static_cast<int>(cfg.tp_rank);
      el = cfg.n_experts / cfg.ep_size;
      x0 = cfg.ep_rank * el;
      experts.resize(static_cast<std::size_t>(el));
      xrange.clear();
      for (std::int64_t e = 0; e < cfg.n_experts; ++e) {
        const std::string ename = name + ".experts." + std::to_string(e);
        if (e >= x0 && e < x0 + el) {
          const std::int64_t lo = r.total();
          experts[static_cast<std::size_t>(e - x0)].declare(r, ename, eshape);
          xrange.emplace_back(lo, r.total());
        } else {
          ParamRegistry elsewhere;
          ExpertImpl{}.declare(elsewhere, ename, eshape);
          r.skip(elsewhere.size());
        }
      }
      has_shared = cfg.n_shared_experts > 0;
      if (has_shared) {
        // n shared experts of hidden width h are one FFN of width n·h (the sum of n FFNs on the
        // same input is that FFN with their hidden units side by side).
        sshape = eshape;
        sshape.hidden = cfg.n_shared_experts * (cfg.d_shared_expert > 0 ? cfg.d_shared_expert : cfg.d_expert);
        sshape.tags = kTagFfn;
        shared.declare(r, name + ".shared_experts", sshape);
      }
    }
    void bind(const ParamRegistry& r, T* p, T* g) {
      if constexpr (RouterP::learned) router.bind(r, p, g);
      if constexpr (RouterP::has_bias) bias.bind(r, p, g);
      for (auto& e : experts) e.bind(r, p, g);
      if (has_shared) shared.bind(r, p, g);
      gbase = g;
    }
    // Expert parallelism: the exchange of this rank's expert group (null: one rank).
    void set_expert_exchange(ExpertExchange<T>* x) {
      const std::int64_t ranks = x ? x->size() : 1;
      if (ranks * el != rp.n_experts)
        throw Error(detail::cat("an expert group of ", ranks, " ranks for a layer declared with ", el, " of ", rp.n_experts,
                                " experts"),
                    "MoE::set_expert_exchange", "the model built for this expert-parallel layout (ModelConfig::ep_size)");
      if constexpr (!kHost)
        if (ranks > 1)
          throw Error("expert parallelism on a device backend", "parallel.expert",
                      "parallel.expert = 1 on the GPU (expert parallelism runs on backend::Cpu)");
      xchg = x;
    }
    bool ep_on() const { return xchg && xchg->size() > 1; }
    // Tensor parallelism: the experts' partial outputs are summed over the group before they
    // are combined (so the gates' gradients see whole outputs), and the partial input
    // gradient before the replicated router adds its own.
    void set_tensor_group(TensorGroup<T>* g) {
      if constexpr (!kHost)
        if (g && g->size() > 1)
          throw Error("tensor parallelism of an MoE layer on a device backend", "parallel.tensor",
                      "parallel.tensor = 1 on the GPU (tensor parallelism runs on backend::Cpu)");
      tg = g;
    }

    // in, out: (N, C)
    void forward(const T* in, T* out, std::int64_t rows, const RouteContext& context = {}) {
      x = in;
      n = rows;
      ctx = context;
      const std::int64_t e = rp.n_experts;
      route(in);
      // plan: capacity, then rows by expert
      const std::int64_t a = static_cast<std::int64_t>(a_expert.size());
      kept.assign(static_cast<std::size_t>(a), 1);
      if constexpr (CapacityP::drops && !kExpertChoice) apply_capacity();
      xdrop_on = ctx.training && expert_drop_rate > 0;
      if (xdrop_on) apply_expert_drop();
      plan.build(a_expert.data(), a_token.data(), kept.data(), a, n, e);
      balance_forward();
      upload_plan();
      // dispatch
      const std::int64_t nr = plan.rows(), cc = c;
      xe.ensure(Shape{nr, c});
      ye.ensure(Shape{nr, c});
      {
        const std::int32_t* rt = ix.row_token;
        T* dst = xe.data();
        B::for_rows(nr, [=] TMOE_LAMBDA (std::int64_t r) {
          const T* src = in + static_cast<std::int64_t>(rt[r]) * cc;
          for (std::int64_t j = 0; j < cc; ++j) dst[r * cc + j] = src[j];
        });
      }
      // experts, each over its contiguous slice (under expert parallelism: on their ranks)
      if (el != e && !ep_on())
        throw Error(detail::cat("this rank holds ", el, " of ", e, " experts but has no expert group"), "MoE::forward",
                    "set_expert_exchange() before training under expert parallelism");
      if (ep_on()) ep_forward();
      else
      for (std::int64_t x2 = 0; x2 < e; ++x2) {
        auto& ex = experts[static_cast<std::size_t>(x2)];
        if constexpr (detail::SequenceAwareExpert<ExpertP>) {
          segments(x2);
          ex.set_segments(seg.data(), static_cast<std::int64_t>(seg.size()) - 1);
        }
        if constexpr (requires { ex.set_dropout(ExpertDropout{}); }) ex.set_dropout(expert_dropout(x2));
        ex.forward(xe.data() + plan.offsets[x2] * c, ye.data() + plan.offsets[x2] * c, plan.counts[x2]);
      }
      tensor_allreduce(tg, ye.data(), nr * c);
      // combine (+ shared experts)
      if (has_shared) {
        shared.forward(in, out, n);
        tensor_allreduce(tg, out, n * c);
      }
      {
        const std::int32_t *to = ix.tok_offsets, *ta = ix.tok_assign, *ps = ix.pos;
        const T *y = ye.data(), *gt = gates_dev;
        const T rs = static_cast<T>(route_scale);
        const bool add = has_shared;
        B::for_rows(n, [=] TMOE_LAMBDA (std::int64_t t) {
          T* o = out + t * cc;
          if (!add)
            for (std::int64_t j = 0; j < cc; ++j) o[j] = T(0);
          for (std::int32_t q = to[t]; q < to[t + 1]; ++q) {
            const std::int32_t as = ta[q];
            const T g = rs * gt[as];
            const T* src = y + static_cast<std::int64_t>(ps[as]) * cc;
            for (std::int64_t j = 0; j < cc; ++j) o[j] += g * src[j];
          }
        });
      }
    }

    // The plan's index arrays and the combine's gates, where B reads them: the plan's own
    // vectors and the host gates on backend::Cpu, one packed copy of each otherwise.
    void upload_plan() {
      const T* gates = xdrop_on ? egates.data() : rgates.data();
      if constexpr (kHost) {
        ix = Index{plan.row_token.data(), plan.row_assign.data(), plan.pos.data(), plan.tok_offsets.data(),
                   plan.tok_assign.data()};
        gates_dev = gates;
      } else {
        const PermuteIndex pi = permute_index(plan);
        index_b.ensure(Shape{std::max<std::int64_t>(pi.size(), 1)});
        B::copy_from_host(pi.data.data(), pi.size(), index_b.data());
        const auto arr = pi.at(static_cast<const std::int32_t*>(index_b.data()));
        ix = Index{arr.row_token, arr.row_assign, arr.pos, arr.tok_offsets, arr.tok_assign};
        const std::int64_t a = static_cast<std::int64_t>(a_expert.size());
        gates_b.ensure(Shape{std::max<std::int64_t>(a, 1)});
        B::copy_from_host(gates, a, gates_b.data());
        gates_dev = gates_b.data();
      }
    }

    // Weighted balancing loss of the last forward.
    double loss() const { return loss_; }

    // Activation recomputation. Selective: routed experts rebuild their hidden activations
    // in backward. release(): drops every saved activation (full recomputation re-runs the
    // forward before backward); the routing plan and statistics stay, they are small.
    void set_selective(bool on) {
      for (auto& ex : experts)
        if constexpr (requires { ex.set_selective(true); }) ex.set_selective(on);
    }
    void release() {
      for (auto* t : {&raw, &logits, &probs, &sel, &rgates, &dlogits, &dprobs_t, &dgate, &egates}) t->release();
      for (auto* t : {&xj, &jmask, &xe, &ye, &dye, &dxe, &tmp, &ep_xr, &ep_yr, &ep_dyr, &ep_dxr, &ep_scratch}) t->release();
      if constexpr (!kHost)
        for (auto* t : {&raw_b, &dlogits_b, &dgate_b, &gates_b}) t->release();
      dprobs = {};
      draw = {};
      for (auto& ex : experts) ex.release();
      if (has_shared) shared.release();
    }
    // Predicted bytes of a forward + backward over n tokens, dropless or at capacity (the
    // routed rows of all experts together: n·k, or E·C); `selective`: expert hidden
    // activations live one expert at a time.
    std::int64_t activation_bytes(std::int64_t rows, bool selective) const {
      const std::int64_t e = rp.n_experts;
      std::int64_t routed = rows * k;
      if constexpr (CapacityP::drops || kExpertChoice)
        routed = std::min(routed, e * expert_capacity(capacity_factor, rows, k, e));
      const std::int64_t per_row = ExpertImpl::floats_per_row(eshape);
      const std::int64_t expert_rows = selective ? (routed + e - 1) / e : routed;
      std::int64_t floats = 4 * rows * e + 3 * routed + 4 * routed * c + rows * c + 2 * rows * e +
                            expert_rows * per_row;
      if (jitter > 0) floats += 2 * rows * c;
      if (has_shared) floats += rows * SharedImpl::floats_per_row(sshape);
      return floats * static_cast<std::int64_t>(sizeof(T)) + 2 * rows * e * static_cast<std::int64_t>(sizeof(double));
    }

    // dout (N, C) -> dx (N, C); grad_scale multiplies the balancing losses' gradients (the
    // same factor the model applies to its loss, e.g. 1 / micro-batches).
    void backward(const T* dout, T* dx, bool accumulate_dx, double grad_scale) {
      const std::int64_t e = rp.n_experts, cc = c, nr = plan.rows();
      if (accumulate_dx && tg && tg->size() > 1)
        throw Error("an accumulating backward under tensor parallelism", "MoE::backward",
                    "accumulate_dx = false (the partial input gradient is summed over the tensor group)");
      const std::int64_t a = static_cast<std::int64_t>(a_expert.size());
      dye.ensure(Shape{nr, c});
      dxe.ensure(Shape{nr, c});
      dgate.ensure(Shape{std::max<std::int64_t>(a, 1)});
      // combine backward: dye = g · dout, dgate (router's gate) = route_scale · <dout, y>
      // (computed in B's memory, then brought to the host for the router's backward)
      {
        const std::int32_t *rt = ix.row_token, *ra = ix.row_assign;
        const T *y = ye.data(), *gt = gates_dev;
        T* dy = dye.data();
        T* dg = dgate.data();
        const double rs = route_scale;
        if constexpr (kHost) {
          std::fill(dg, dg + a, T(0));
        } else {
          dgate_b.ensure(Shape{std::max<std::int64_t>(a, 1)});
          dg = dgate_b.data();
          B::for_rows(a, [=] TMOE_LAMBDA (std::int64_t i) { dg[i] = T(0); });
        }
        B::for_rows(nr, [=] TMOE_LAMBDA (std::int64_t r) {
          const T* go = dout + static_cast<std::int64_t>(rt[r]) * cc;
          const T g = static_cast<T>(rs) * gt[ra[r]];
          double dot = 0;
          for (std::int64_t j = 0; j < cc; ++j) {
            dy[r * cc + j] = g * go[j];
            dot += static_cast<double>(go[j]) * static_cast<double>(y[r * cc + j]);
          }
          dg[ra[r]] = static_cast<T>(rs * dot);
        });
        if constexpr (!kHost) B::copy_to_host(static_cast<const T*>(dg), a, dgate.data());
      }
      if (xdrop_on) expert_drop_backward();  // dgate: of the rescaled gates -> of the router's
      // experts backward
      if (ep_on()) ep_backward();
      else
        for (std::int64_t x2 = 0; x2 < e; ++x2)
          experts[static_cast<std::size_t>(x2)].backward(dye.data() + plan.offsets[x2] * c,
                                                          dxe.data() + plan.offsets[x2] * c, false);
      // shared experts first (they overwrite or add), then each token gathers its rows
      if (has_shared) shared.backward(dout, dx, accumulate_dx);
      {
        const std::int32_t *to = ix.tok_offsets, *ta = ix.tok_assign, *ps = ix.pos;
        const T* dxr = dxe.data();
        const bool zero = !accumulate_dx && !has_shared;
        B::for_rows(n, [=] TMOE_LAMBDA (std::int64_t t) {
          T* d = dx + t * cc;
          if (zero)
            for (std::int64_t j = 0; j < cc; ++j) d[j] = T(0);
          for (std::int32_t q = to[t]; q < to[t + 1]; ++q) {
            const T* src = dxr + static_cast<std::int64_t>(ps[ta[q]]) * cc;
            for (std::int64_t j = 0; j < cc; ++j) d[j] += src[j];
          }
        });
      }
      tensor_allreduce(tg, dx, n * cc);
      if constexpr (RouterP::learned) route_backward(dx, grad_scale);
    }

    // The aux-loss-free bias update, after the optimizer step: `sum` adds the loads of all
    // ranks (identity in one process). A no-op without BiasUpdate.
    template <class SumFn>
    void after_step(SumFn&& sum) {
      if constexpr (BalanceP::needs_bias) {
        const std::int64_t e = rp.n_experts;
        if (step_load.size() != static_cast<std::size_t>(e)) return;  // no training forward this step
        sum(step_load.data(), e);
        if constexpr (kHost) {
          BiasUpdate::update(bias.w, step_load.data(), e, bias_rate());
        } else {  // the bias lives in B's memory: update a host copy
          bias_h.ensure(Shape{e});
          B::copy_to_host(static_cast<const T*>(bias.w), e, bias_h.data());
          BiasUpdate::update(bias_h.data(), step_load.data(), e, bias_rate());
          B::copy_from_host(static_cast<const T*>(bias_h.data()), e, bias.w);
        }
        step_load.clear();
      }
    }
    double bias_rate() const {
      std::size_t i = 0, at = 0;
      std::apply([&](auto... p) { ((decltype(p)::needs_bias ? (at = i, ++i) : ++i), ...); }, typename BalanceP::list{});
      return weights[at];
    }

    std::span<const std::int64_t> expert_counts() const { return plan.counts; }
    const MoEStats& stats() const { return stats_; }
    const RoutingPlan& routing_plan() const { return plan; }
    std::span<const std::int32_t> assignment_experts() const { return a_expert; }
    std::span<const std::int32_t> assignment_tokens() const { return a_token; }
    std::span<const std::uint8_t> assignment_kept() const { return kept; }
    // Assignments the expert drop removed in the last forward (empty when it was off); they
    // are also not kept.
    std::span<const std::uint8_t> assignment_expert_dropped() const {
      return xdrop_on ? std::span<const std::uint8_t>(xdrop) : std::span<const std::uint8_t>();
    }
    // The gate each assignment's output is multiplied by (route_scale included).
    double gate(std::int64_t a) const { return route_scale * static_cast<double>(rgates[a]); }
    std::int64_t capacity() const { return cap; }
    // Weights a token multiplies: router + its k experts + the shared experts.
    std::int64_t active_weights() const {
      return (RouterP::learned ? c * rp.n_experts : 0) + rp.k * ExpertImpl::weights(eshape) +
             (has_shared ? SharedImpl::weights(sshape) : 0);
    }

    // (Everything below is public only because nvcc's extended lambdas (TMOE_LAMBDA) may not
    // sit in private member functions; it is the layer's internals.)

    // fn(i) for i in [0, rows) over HOST memory: B's loop on backend::Cpu (as ever), the
    // same chunked loop on the host otherwise (B's loop would run on the device).
    template <class F>
    static void host_rows(std::int64_t rows, F&& fn) {
      if constexpr (kHost) {
        B::for_rows(rows, fn);
      } else {
        constexpr std::int64_t kRowsPerItem = 16;
        parallel_for((rows + kRowsPerItem - 1) / kRowsPerItem, [&](std::int64_t item) {
          const std::int64_t r1 = std::min(rows, (item + 1) * kRowsPerItem);
          for (std::int64_t r = item * kRowsPerItem; r < r1; ++r) fn(r);
        });
      }
    }
    // out[0..width) += Σ_rows contrib over HOST memory, in backend::Cpu's order (chunks of
    // 256 rows summed in row order, then the chunks in order).
    template <class F>
    static void host_reduce_rows(std::int64_t rows, std::int64_t width, double* out, F&& contrib) {
      if constexpr (kHost) {
        B::reduce_rows(rows, width, out, contrib);
      } else {
        constexpr std::int64_t kChunk = 256;  // backend::cpu::kTokenChunk
        const std::int64_t chunks = (rows + kChunk - 1) / kChunk;
        std::vector<double> partial(static_cast<std::size_t>(chunks * width), 0.0);
        for (std::int64_t ch = 0; ch < chunks; ++ch) {
          const std::int64_t r1 = std::min(rows, (ch + 1) * kChunk);
          for (std::int64_t r = ch * kChunk; r < r1; ++r) contrib(r, partial.data() + ch * width);
        }
        for (std::int64_t j = 0; j < width; ++j) {
          double s = 0;
          for (std::int64_t ch = 0; ch < chunks; ++ch) s += partial[static_cast<std::size_t>(ch * width + j)];
          out[j] += s;
        }
      }
    }

    // Step 1: logits, router scores, assignments (a_expert, a_token, rgates).
    void route(const T* in) {
      const std::int64_t e = rp.n_experts;
      raw.ensure(Shape{n, e});
      logits.ensure(Shape{n, e});
      probs.ensure(Shape{n, e});
      sel.ensure(Shape{n, e});
      cap = kExpertChoice || CapacityP::drops ? expert_capacity(capacity_factor, n, k, e) : 0;
      if constexpr (RouterP::has_bias && !kHost) {  // the routing on the host reads the bias
        bias_h.ensure(Shape{e});
        B::copy_to_host(static_cast<const T*>(bias.w), e, bias_h.data());
      }
      if constexpr (RouterP::learned) {
        const T* rin = in;
        if (ctx.training && jitter > 0) {
          // Switch-style multiplicative jitter on the router input, x ⊙ U(1 − j, 1 + j).
          xj.ensure(Shape{n, c});
          jmask.ensure(Shape{n, c});
          const RngKey key{ctx.seed, static_cast<std::uint32_t>(ctx.step),
                           site_id(Site::kRouterNoise, static_cast<std::uint32_t>(2 * ctx.layer + 1)), 0};
          T *xo = xj.data(), *m = jmask.data();
          const std::int64_t cc = c, off = ctx.token_offset;
          const double jt = jitter;
          B::for_rows(n, [=] TMOE_LAMBDA (std::int64_t t) {  // in B's memory
            RngKey kt = key;
            kt.token = static_cast<std::uint32_t>(off + t);
            for (std::int64_t j = 0; j < cc; ++j) {
              m[t * cc + j] = static_cast<T>(1.0 - jt + 2.0 * jt * kt.uniform(static_cast<std::uint64_t>(j)));
              xo[t * cc + j] = in[t * cc + j] * m[t * cc + j];
            }
          });
          rin = xj.data();
        }
        if constexpr (kHost) {
          router.forward(rin, raw.data(), n);
        } else {  // the logits are made in B's memory and routed on the host
          raw_b.ensure(Shape{n, e});
          router.forward(rin, raw_b.data(), n);
          B::copy_to_host(static_cast<const T*>(raw_b.data()), n * e, raw.data());
        }
        {
          T *lg = logits.data(), *pr = probs.data(), *sl = sel.data();
          const T* rw = raw.data();
          const RouterParams p = rp;
          const double inv_t = 1.0 / temperature, ns = ctx.training ? noise_std : 0.0;
          const RngKey key{ctx.seed, static_cast<std::uint32_t>(ctx.step),
                           site_id(Site::kRouterNoise, static_cast<std::uint32_t>(2 * ctx.layer)), 0};
          const std::int64_t off = ctx.token_offset;
          const T* bs = nullptr;
          if constexpr (RouterP::has_bias) bs = host_bias();
          host_rows(n, [=](std::int64_t t) {
            RngKey kt = key;
            kt.token = static_cast<std::uint32_t>(off + t);
            for (std::int64_t i = 0; i < e; ++i)
              lg[t * e + i] = static_cast<T>(static_cast<double>(rw[t * e + i]) * inv_t +
                                             (ns > 0 ? ns * kt.normal(static_cast<std::uint64_t>(i)) : 0.0));
            RouterP::scores_token(p, lg + t * e, bs, pr + t * e, sl + t * e);
          });
        }
      }
      if constexpr (kTokenChoice) {
        const std::int64_t a = n * k;
        a_expert.resize(static_cast<std::size_t>(a));
        a_token.resize(static_cast<std::size_t>(a));
        rgates.ensure(Shape{std::max<std::int64_t>(a, 1)});
        const RouterParams p = rp;
        const T *lg = logits.data(), *pr = probs.data(), *sl = sel.data();
        std::int32_t *ex = a_expert.data(), *tk = a_token.data();
        T* gt = rgates.data();
        const std::int64_t kk = k;
        host_rows(n, [=](std::int64_t t) {
          select_topk(sl + t * e, e, kk, ex + t * kk);
          RouterP::gates_token(p, lg + t * e, pr + t * e, ex + t * kk, gt + t * kk);
          for (std::int64_t j = 0; j < kk; ++j) tk[t * kk + j] = static_cast<std::int32_t>(t);
        });
      } else if constexpr (RouterP::kind == RouterKind::kHash) {
        if (!ctx.tokens)
          throw Error("the Hash router needs the token ids of the batch", "MoE<..., Hash>::forward",
                      "a RouteContext with tokens (DecoderLM passes them)");
        const std::int64_t a = n * k;
        a_expert.resize(static_cast<std::size_t>(a));
        a_token.resize(static_cast<std::size_t>(a));
        rgates.ensure(Shape{std::max<std::int64_t>(a, 1)});
        const RouterParams p = rp;
        const std::int32_t* tok = ctx.tokens;
        T *pr = probs.data(), *gt = rgates.data();
        std::int32_t *ex = a_expert.data(), *tk = a_token.data();
        const std::int64_t kk = k;
        host_rows(n, [=](std::int64_t t) {
          RouterP::route_token(p, tok[t], ex + t * kk, gt + t * kk, pr + t * e);
          for (std::int64_t j = 0; j < kk; ++j) tk[t * kk + j] = static_cast<std::int32_t>(t);
        });
      } else {  // expert choice: expert x takes the C tokens with the largest p[t, x]
        const std::int64_t cc = cap, a = e * cc;
        a_expert.resize(static_cast<std::size_t>(a));
        a_token.resize(static_cast<std::size_t>(a));
        rgates.ensure(Shape{std::max<std::int64_t>(a, 1)});
        const T* pr = probs.data();
        std::int32_t *ex = a_expert.data(), *tk = a_token.data();
        T* gt = rgates.data();
        const std::int64_t nn = n;
        parallel_for(cc > 0 ? e : 0, [=](std::int64_t x2) {
          std::vector<std::int32_t> order(static_cast<std::size_t>(nn));
          std::iota(order.begin(), order.end(), 0);
          std::nth_element(order.begin(), order.begin() + (cc - 1), order.end(), [&](std::int32_t u, std::int32_t v) {
            const T pu = pr[u * e + x2], pv = pr[v * e + x2];
            return pu > pv || (pu == pv && u < v);
          });
          std::sort(order.begin(), order.begin() + cc);  // ascending token order within the expert
          for (std::int64_t i = 0; i < cc; ++i) {
            ex[x2 * cc + i] = static_cast<std::int32_t>(x2);
            tk[x2 * cc + i] = order[static_cast<std::size_t>(i)];
            gt[x2 * cc + i] = pr[order[static_cast<std::size_t>(i)] * e + x2];
          }
        });
      }
    }

    // Token choice with a capacity: an expert routed more than C assignments keeps C of them.
    void apply_capacity() {
      const std::int64_t e = rp.n_experts, a = static_cast<std::int64_t>(a_expert.size());
      std::vector<std::vector<std::int32_t>> by(static_cast<std::size_t>(e));
      for (std::int64_t i = 0; i < a; ++i) by[static_cast<std::size_t>(a_expert[i])].push_back(static_cast<std::int32_t>(i));
      const T* gt = rgates.data();
      const bool pos = drop_by_position;
      const std::int64_t cp = cap;
      std::uint8_t* kp = kept.data();
      parallel_for(e, [&](std::int64_t x2) {
        auto& list = by[static_cast<std::size_t>(x2)];
        if (static_cast<std::int64_t>(list.size()) <= cp) return;
        if (!pos)  // largest gates first; ties: earlier assignment
          std::stable_sort(list.begin(), list.end(), [&](std::int32_t u, std::int32_t v) { return gt[u] > gt[v]; });
        for (std::size_t i = static_cast<std::size_t>(cp); i < list.size(); ++i) kp[list[i]] = 0;
      });
    }

    // What expert x needs for its dropout in this forward (inactive outside training).
    ExpertDropout expert_dropout(std::int64_t x2) const {
      return expert_dropout_rows(x2, ctx.token_offset, ix.row_token + plan.offsets[x2]);  // B's memory
    }
    // Rows of (global) expert x2 whose tokens are token_offset + tokens[r].
    ExpertDropout expert_dropout_rows(std::int64_t x2, std::int64_t token_offset, const std::int32_t* tokens) const {
      ExpertDropout d;
      if (!ctx.training) return d;
      const auto ux = static_cast<std::uint64_t>(x2), depth = static_cast<std::uint64_t>(eshape.depth);
      d.hidden = DropoutMask::make(hidden_rates[static_cast<std::size_t>(x2)], ctx.seed, ctx.step,
                                   dropout_site(ctx.layer, DropoutUse::kExpertHidden));
      d.token_offset = token_offset;
      d.tokens = tokens;
      d.element_offset = ux * depth * static_cast<std::uint64_t>(eshape.hidden);
      d.attn_rate = attn_dropout;
      d.seed = ctx.seed;
      d.step = ctx.step;
      d.attn_site = dropout_site(ctx.layer, DropoutUse::kExpertAttnProbs);
      d.attn_head_stride = context;
      d.attn_element_offset = ux * depth * static_cast<std::uint64_t>(eshape.heads * context);
      return d;
    }

    // Expert drop: each assignment kept by capacity survives with probability 1 − p (Philox
    // keyed by its global token and expert); a token's surviving gates are rescaled by
    // r = S / S_m, S and S_m summed in assignment order. r is exactly 1 for a token that lost
    // nothing (S and S_m are the same sums).
    void apply_expert_drop() {
      const std::int64_t e = rp.n_experts, a = static_cast<std::int64_t>(a_expert.size());
      const DropoutMask m = DropoutMask::make(expert_drop_rate, ctx.seed, ctx.step,
                                              dropout_site(ctx.layer, DropoutUse::kExpertDrop));
      cap_counts.assign(static_cast<std::size_t>(e), 0);
      xdrop.assign(static_cast<std::size_t>(a), 0);
      {
        const std::int32_t *ex = a_expert.data(), *tk = a_token.data();
        const std::uint8_t* kp = kept.data();
        std::uint8_t* xd = xdrop.data();
        const std::int64_t off = ctx.token_offset;
        host_rows(a, [=](std::int64_t i) {
          if (kp[i] && !m.kept(static_cast<std::uint64_t>(off + tk[i]), static_cast<std::uint64_t>(ex[i]))) xd[i] = 1;
        });
      }
      tok_s.assign(static_cast<std::size_t>(n), 0.0);
      tok_sm.assign(static_cast<std::size_t>(n), 0.0);
      const T* gt = rgates.data();
      for (std::int64_t i = 0; i < a; ++i) {
        if (!kept[i]) continue;
        ++cap_counts[static_cast<std::size_t>(a_expert[i])];
        const double g = static_cast<double>(gt[i]);
        tok_s[static_cast<std::size_t>(a_token[i])] += g;
        if (xdrop[i]) kept[i] = 0;
        else tok_sm[static_cast<std::size_t>(a_token[i])] += g;
      }
      egates.ensure(Shape{std::max<std::int64_t>(a, 1)});
      T* eg = egates.data();
      for (std::int64_t i = 0; i < a; ++i) {
        const auto t = static_cast<std::size_t>(a_token[i]);
        eg[i] = kept[i] && tok_sm[t] > 0 ? static_cast<T>(static_cast<double>(gt[i]) * (tok_s[t] / tok_sm[t])) : T(0);
      }
    }

    // dgate holds ∂L/∂g' (the rescaled gates; 0 for dropped assignments). With M the
    // survivors, K ⊇ M the assignments kept by capacity, r = S / S_m and D = Σ_{j∈M} ∂L/∂g'_j g_j:
    //   ∂L/∂g_i = [i∈M] r ∂L/∂g'_i + D (1 − [i∈M] r) / S_m   for i ∈ K (0 when S_m = 0),
    // since ∂g'_j/∂g_i = [i=j] r + g_j ∂r/∂g_i and ∂r/∂g_i = (1 − [i∈M] r) / S_m.
    void expert_drop_backward() {
      const std::int64_t a = static_cast<std::int64_t>(a_expert.size());
      const T* gt = rgates.data();
      T* dg = dgate.data();
      tok_d.assign(static_cast<std::size_t>(n), 0.0);
      for (std::int64_t i = 0; i < a; ++i)
        if (kept[i]) tok_d[static_cast<std::size_t>(a_token[i])] += static_cast<double>(dg[i]) * static_cast<double>(gt[i]);
      for (std::int64_t i = 0; i < a; ++i) {
        if (!kept[i] && !xdrop[i]) continue;
        const auto t = static_cast<std::size_t>(a_token[i]);
        const double sm = tok_sm[t];
        if (!(sm > 0)) {
          dg[i] = T(0);
          continue;
        }
        const double r = tok_s[t] / sm, base = tok_d[t] / sm;
        dg[i] = static_cast<T>(kept[i] ? r * static_cast<double>(dg[i]) + base * (1.0 - r) : base);
      }
    }

    // Row ranges of expert x's slice that belong to one sequence (rows are in token order).
    // Expert parallelism, forward: rows go to the ranks holding their experts (all-to-all),
    // each local expert runs once per source over that source's rows (a row's result does
    // not depend on the rows beside it), and the outputs come back in plan order.
    void ep_forward() {
      const int P = xchg->size();
      const std::int64_t m = el + 1;
      const std::vector<std::int64_t> mc(static_cast<std::size_t>(P), m);
      ep_smeta.assign(static_cast<std::size_t>(P * m), 0);
      ep_rmeta.assign(static_cast<std::size_t>(P * m), 0);
      for (int q = 0; q < P; ++q) {
        for (std::int64_t i = 0; i < el; ++i) ep_smeta[q * m + i] = plan.counts[q * el + i];
        ep_smeta[q * m + el] = ctx.token_offset;  // keys the source's dropout masks
      }
      xchg->alltoallv(ep_smeta.data(), mc, ep_rmeta.data(), mc);
      ep_srows.assign(static_cast<std::size_t>(P), 0);
      ep_rrows = ep_sc = ep_rc = ep_srows;
      ep_base.assign(static_cast<std::size_t>(P + 1), 0);
      for (int q = 0; q < P; ++q) {
        ep_srows[q] = plan.offsets[(q + 1) * el] - plan.offsets[q * el];
        for (std::int64_t i = 0; i < el; ++i) ep_rrows[q] += ep_rmeta[q * m + i];
        ep_sc[q] = ep_srows[q] * c;
        ep_rc[q] = ep_rrows[q] * c;
        ep_base[q + 1] = ep_base[q] + ep_rrows[q];
      }
      const std::int64_t rows = ep_base[P];
      std::vector<std::int64_t> stok(plan.row_token.begin(), plan.row_token.end());
      ep_tok64.assign(static_cast<std::size_t>(rows), 0);
      xchg->alltoallv(stok.data(), ep_srows, ep_tok64.data(), ep_rrows);
      ep_tok.assign(ep_tok64.begin(), ep_tok64.end());
      ep_xr.ensure(Shape{std::max<std::int64_t>(rows, 1), c});
      ep_yr.ensure(Shape{std::max<std::int64_t>(rows, 1), c});
      xchg->alltoallv(xe.data(), ep_sc, ep_xr.data(), ep_rc);
      for_each_segment([&](std::int64_t xl, int src, std::int64_t start, std::int64_t count) {
        auto& ex = experts[static_cast<std::size_t>(xl)];
        if constexpr (requires { ex.set_dropout(ExpertDropout{}); })
          ex.set_dropout(expert_dropout_rows(x0 + xl, ep_rmeta[src * m + el], ep_tok.data() + start));
        ex.forward(ep_xr.data() + start * c, ep_yr.data() + start * c, count);
      });
      xchg->alltoallv(ep_yr.data(), ep_rc, ye.data(), ep_sc);
    }
    // Backward: output gradients travel as the rows did; each (expert, source) slice re-runs
    // its forward (the expert saved only the last slice) and its backward, and its weight
    // gradient moves to the source's slot; input gradients go back.
    void ep_backward() {
      const std::int64_t m = el + 1, rows = ep_base.back();
      ep_dyr.ensure(Shape{std::max<std::int64_t>(rows, 1), c});
      ep_dxr.ensure(Shape{std::max<std::int64_t>(rows, 1), c});
      ep_scratch.ensure(Shape{std::max<std::int64_t>(rows, 1), c});
      xchg->alltoallv(dye.data(), ep_sc, ep_dyr.data(), ep_rc);
      for_each_segment([&](std::int64_t xl, int src, std::int64_t start, std::int64_t count) {
        auto& ex = experts[static_cast<std::size_t>(xl)];
        if constexpr (requires { ex.set_dropout(ExpertDropout{}); })
          ex.set_dropout(expert_dropout_rows(x0 + xl, ep_rmeta[src * m + el], ep_tok.data() + start));
        ex.forward(ep_xr.data() + start * c, ep_scratch.data() + start * c, count);
        ex.backward(ep_dyr.data() + start * c, ep_dxr.data() + start * c, false);
        const auto [lo, hi] = xrange[static_cast<std::size_t>(xl)];
        std::copy(gbase + lo, gbase + hi, xchg->slot(src, lo, hi));
        std::fill(gbase + lo, gbase + hi, T(0));
      });
      xchg->alltoallv(ep_dxr.data(), ep_rc, dxe.data(), ep_sc);
    }
    // fn(local expert, source, first row, rows) for every non-empty slice of the received rows.
    template <class F>
    void for_each_segment(F&& fn) {
      const int P = xchg->size();
      const std::int64_t m = el + 1;
      for (int src = 0; src < P; ++src) {
        std::int64_t at = ep_base[src];
        for (std::int64_t xl = 0; xl < el; ++xl) {
          const std::int64_t count = ep_rmeta[src * m + xl];
          if (count > 0) fn(xl, src, at, count);
          at += count;
        }
      }
    }

    void segments(std::int64_t x2) {
      const std::int64_t len = ctx.seq_len > 0 ? ctx.seq_len : std::max<std::int64_t>(n, 1);
      const std::int64_t r0 = plan.offsets[x2], r1 = plan.offsets[x2 + 1];
      seg.assign(1, 0);
      for (std::int64_t r = r0 + 1; r < r1; ++r)
        if (plan.row_token[r] / len != plan.row_token[r - 1] / len) seg.push_back(r - r0);
      if (r1 > r0) seg.push_back(r1 - r0);
    }

    // The selection bias where the host reads it: the parameter itself on backend::Cpu, a
    // copy refreshed by route() otherwise.
    const T* host_bias() const {
      if constexpr (kHost) return bias.w;
      else return bias_h.data();
    }

    BalanceInput<T> balance_input() const {
      BalanceInput<T> in;
      in.n = n;
      in.e = rp.n_experts;
      in.k = k;
      in.seq_len = ctx.seq_len > 0 && n % ctx.seq_len == 0 ? ctx.seq_len : n;
      in.probs = probs.data();
      in.logits = RouterP::learned ? raw.data() : nullptr;
      in.expert = a_expert.data();
      in.token = a_token.data();
      in.assignments = static_cast<std::int64_t>(a_expert.size());
      in.routed = plan.routed.data();
      return in;
    }

    // Values of the balancing terms, the weighted loss and the layer's statistics.
    void balance_forward() {
      const std::int64_t e = rp.n_experts;
      const BalanceInput<T> in = balance_input();
      stats_.terms.clear();
      loss_ = 0;
      std::size_t i = 0;
      std::apply(
          [&](auto... p) {
            ((stats_.terms.emplace_back(decltype(p)::name, decltype(p)::value(in)),
              loss_ += decltype(p)::is_loss ? weights[i] * stats_.terms.back().second : 0.0, ++i),
             ...);
          },
          typename BalanceP::list{});
      // the router's choice after capacity, before the expert drop
      const std::vector<std::int64_t>& counts = xdrop_on ? cap_counts : plan.counts;
      stats_.tokens.assign(counts.begin(), counts.end());
      stats_.dropped.resize(static_cast<std::size_t>(e));
      for (std::int64_t x2 = 0; x2 < e; ++x2) stats_.dropped[x2] = plan.routed[x2] - counts[x2];
      double h = 0;
      {
        const T* pr = probs.data();
        host_reduce_rows(n, 1, &h, [=](std::int64_t t, double* acc) {
          for (std::int64_t x2 = 0; x2 < e; ++x2) {
            const double p = static_cast<double>(pr[t * e + x2]);
            if (p > 0) acc[0] -= p * std::log(p);
          }
        });
      }
      stats_.entropy = n ? h / static_cast<double>(n) : 0.0;
      if constexpr (RouterP::has_bias) stats_.bias.assign(host_bias(), host_bias() + e);
      if (ctx.training && !ctx.recompute) {
        if (step_load.size() != static_cast<std::size_t>(e)) step_load.assign(static_cast<std::size_t>(e), 0.0);
        for (std::int64_t x2 = 0; x2 < e; ++x2) step_load[x2] += static_cast<double>(plan.routed[x2]);
      }
    }

    // Router backward: gates and balancing terms -> router logits -> router weights and dx.
    void route_backward(T* dx, double grad_scale) {
      const std::int64_t e = rp.n_experts;
      const BalanceInput<T> in = balance_input();
      dprobs.assign(static_cast<std::size_t>(n * e), 0.0);
      draw.assign(static_cast<std::size_t>(n * e), 0.0);
      std::size_t i = 0;
      std::apply(
          [&](auto... p) {
            ((weights[i] != 0 && decltype(p)::is_loss
                  ? decltype(p)::backward(in, grad_scale * weights[i], dprobs.data(), draw.data())
                  : void(),
              ++i),
             ...);
          },
          typename BalanceP::list{});
      if constexpr (kExpertChoice)
        for (std::size_t as = 0; as < a_expert.size(); ++as)
          dprobs[static_cast<std::size_t>(a_token[as]) * e + a_expert[as]] += static_cast<double>(dgate[as]);
      dlogits.ensure(Shape{n, e});
      dprobs_t.ensure(Shape{n, e});
      {
        const double* d = dprobs.data();
        T* o = dprobs_t.data();
        host_rows(n, [=](std::int64_t t) {
          for (std::int64_t x2 = 0; x2 < e; ++x2) o[t * e + x2] = static_cast<T>(d[t * e + x2]);
        });
      }
      const T* dpt = dprobs_t.data();
      const RouterParams p = rp;
      const T *lg = logits.data(), *pr = probs.data(), *gt = rgates.data(), *dg = dgate.data();
      const double *dr = draw.data(), inv_t = 1.0 / temperature;
      T* dl = dlogits.data();
      if constexpr (RouterP::kind == RouterKind::kHash) {
        return;  // nothing learned, nothing to propagate
      } else if constexpr (kTokenChoice) {
        const std::int32_t* ex = a_expert.data();
        const std::int64_t kk = k;
        host_rows(n, [=](std::int64_t t) {
          RouterP::backward_token(p, lg + t * e, pr + t * e, ex + t * kk, gt + t * kk, dg + t * kk, dpt + t * e,
                                  dl + t * e);
          for (std::int64_t x2 = 0; x2 < e; ++x2)
            dl[t * e + x2] = static_cast<T>(static_cast<double>(dl[t * e + x2]) * inv_t + dr[t * e + x2]);
        });
      } else {  // expert choice: every gate is an entry of p (added to dprobs above)
        host_rows(n, [=](std::int64_t t) {
          RouterP::backward_token(p, lg + t * e, pr + t * e, dpt + t * e, dl + t * e);
          for (std::int64_t x2 = 0; x2 < e; ++x2)
            dl[t * e + x2] = static_cast<T>(static_cast<double>(dl[t * e + x2]) * inv_t + dr[t * e + x2]);
        });
      }
      // the router's linear layer runs on B: dlogits go to B's memory
      const T* dlb = dlogits.data();
      if constexpr (!kHost) {
        dlogits_b.ensure(Shape{n, e});
        B::copy_from_host(static_cast<const T*>(dlogits.data()), n * e, dlogits_b.data());
        dlb = dlogits_b.data();
      }
      if (ctx.training && jitter > 0) {
        tmp.ensure(Shape{n, c});
        router.backward(xj.data(), dlb, tmp.data(), n, false);
        const T *tp = tmp.data(), *m = jmask.data();
        const std::int64_t cc = c;
        B::for_rows(n, [=] TMOE_LAMBDA (std::int64_t t) {
          for (std::int64_t j = t * cc; j < (t + 1) * cc; ++j) dx[j] += tp[j] * m[j];
        });
      } else {
        router.backward(x, dlb, dx, n, true);
      }
    }
  };
};

// Switch Transformer routing: TopK with model.top_k = 1 and model.router_renormalize =
// false (the gate is the softmax probability), experts limited by a capacity factor.
template <class ExpertP>
using SwitchMoE = MoE<ExpertP, TopK, CapacityFactor, Balancing<AuxLoss, ZLoss>>;

}  // namespace tmoe
