#pragma once
// The roles a user composes, as C++20 concepts. Each shipped member has a
// static_assert(Concept<Member>) beside it; the templates that take a role check it with a
// static_assert that says what is wrong in a sentence (see docs/concepts/).
#include <concepts>
#include <cstdint>
#include <string_view>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "tmoe/core/config.hpp"
#include "tmoe/core/registry.hpp"
#include "tmoe/moe/routing.hpp"

namespace tmoe {

struct ExpertShape;

namespace detail {
// A stand-in backend used only to name policy implementations inside concepts; no member
// body is ever instantiated with it.
struct NoBackend {
  using Space = HostSpace;
};
}  // namespace detail

template <class P>
concept Named = requires {
  { P::name } -> std::convertible_to<std::string_view>;
};

// A backend: a memory space and the ops the layers call by name.
template <class B>
concept Backend = Named<B> && requires(typename B::template GemmArgs<float> gf, typename B::template GemmArgs<double> gd) {
  typename B::Space;
  B::template gemm<float>(gf);
  B::template gemm<double>(gd);
};

// Storage/compute/master/gradient/optimizer-state types and loss scaling.
template <class P>
concept PrecisionPolicy = Named<P> && requires {
  typename P::storage;
  typename P::compute;
  typename P::master;
  typename P::grad;
  typename P::state;
  { P::loss_scaling } -> std::convertible_to<bool>;
} && std::is_floating_point_v<typename P::compute>;

// A router: per-token math from router logits to expert ids and gate weights, and back
// (moe/routing.hpp). Token-choice routers provide scores/gates/backward per token; an
// expert-choice router scores per token and lets each expert pick (both score router logits,
// so both are `learned`); a hash router maps a token id to experts with nothing learned.
template <class R>
concept RouterTraits = Named<R> && requires {
  { R::kind } -> std::convertible_to<RouterKind>;
  { R::learned } -> std::convertible_to<bool>;
  { R::has_bias } -> std::convertible_to<bool>;
};
template <class R>
concept TokenChoiceRouter = RouterTraits<R> && R::kind == RouterKind::kTokenChoice && R::learned &&
    requires(const RouterParams& rp, const double* l, std::int32_t* ids, const std::int32_t* cids, double* g,
             double* p, const double* c, double* dl) {
  R::template scores_token<double>(rp, l, c, p, g);
  R::template gates_token<double>(rp, l, c, cids, g);
  R::template backward_token<double>(rp, l, c, cids, c, c, c, dl);
};
template <class R>
concept ExpertChoiceRouter = RouterTraits<R> && R::kind == RouterKind::kExpertChoice && R::learned &&
    requires(const RouterParams& rp, const double* l, double* p, const double* c, double* dl) {
  R::template scores_token<double>(rp, l, c, p, p);
  R::template backward_token<double>(rp, l, c, c, dl);
};
template <class R>
concept HashRouter = RouterTraits<R> && R::kind == RouterKind::kHash && !R::learned &&
    requires(const RouterParams& rp, std::int32_t* ids, double* g) {
  R::template route_token<double>(rp, std::int32_t{}, ids, g, g);
};
template <class R>
concept Router = TokenChoiceRouter<R> || ExpertChoiceRouter<R> || HashRouter<R>;

// A capacity policy: whether an expert's load is limited (tokens over capacity dropped).
template <class C>
concept CapacityPolicy = Named<C> && requires {
  { C::drops } -> std::convertible_to<bool>;
};

// An expert: a feed-forward map applied to the rows routed to it, with hand-written
// backward; `impl<T, B>` declares its parameters in the registry.
template <class E>
concept Expert = Named<E> && requires {
  { E::matrices } -> std::convertible_to<int>;
  typename E::template impl<double, detail::NoBackend>;
  { E::template impl<double, detail::NoBackend>::weights(std::declval<const ExpertShape&>()) } -> std::convertible_to<std::int64_t>;
};

// An optimizer: an update rule with at most `slots` state arrays per parameter element,
// built from the training config (its hyperparameters are run-time numbers). used_slots()
// says how many the configured rule uses (SGD without momentum: none), slot_name(s) names
// them in checkpoints, and active_name() names the configured rule.
template <class O>
concept Optimizer = Named<O> && requires(const O& o, double* p, const double* g, double** state, float* pf,
                                         const float* gf, float** statef, const TrainConfig& tc) {
  { O::slots } -> std::convertible_to<int>;
  { O::from_config(tc) } -> std::same_as<O>;
  { o.used_slots() } -> std::convertible_to<int>;
  { o.slot_name(0) } -> std::convertible_to<std::string_view>;
  { o.active_name() } -> std::convertible_to<std::string_view>;
  o.update(p, g, state, std::int64_t{}, 0.0, 0.0, std::int64_t{});
  o.update(pf, gf, statef, std::int64_t{}, 0.0, 0.0, std::int64_t{});
};

// A normalisation layer over the last dimension.
template <class N>
concept NormPolicy = Named<N> && requires { typename N::template impl<double, detail::NoBackend>; };

// An attention policy: a layer over (B, T, C) with a position policy (`positions::learned`
// says whether the embedding carries a position table).
template <class A>
concept AttentionPolicy = Named<A> && requires {
  typename A::positions;
  { A::positions::learned } -> std::convertible_to<bool>;
  typename A::template impl<double, detail::NoBackend>;
};

// The feed-forward part of a block: Dense<Expert> or MoE<Expert, Router>.
template <class F>
concept FfnPolicy = Named<F> && requires {
  { F::is_moe } -> std::convertible_to<bool>;
  typename F::expert_policy;
  typename F::template impl<double, detail::NoBackend>;
};

// A transformer block: attention + feed-forward, its layer parameterised by the norm.
template <class Blk>
concept BlockPolicy = Named<Blk> && requires {
  typename Blk::attention;
  typename Blk::ffn_policy;
} && AttentionPolicy<typename Blk::attention> && FfnPolicy<typename Blk::ffn_policy>;

// A parallel strategy: the process layout, gradient reduction and the reductions of
// metrics. `Serial` is one process.
template <class S>
concept ParallelStrategy = Named<S> && requires(S& s, float* gf, double* gd, double v, std::int64_t n,
                                                const ParamRegistry& reg) {
  { s.rank() } -> std::convertible_to<int>;
  { s.size() } -> std::convertible_to<int>;
  { s.sharded() } -> std::convertible_to<bool>;
  { s.shard(reg) } -> std::convertible_to<std::pair<std::int64_t, std::int64_t>>;
  s.reduce_gradients(gf, reg);
  s.reduce_gradients(gd, reg);
  s.gather_shards(gf, reg);
  s.gather_shards(gd, reg);
  { s.sum(v) } -> std::convertible_to<double>;
  s.sum(gd, n);
  s.barrier();
  { s.agree(true) } -> std::convertible_to<bool>;
  { s.is_root() } -> std::convertible_to<bool>;
  { s.gather(std::span<const double>{}) } -> std::convertible_to<std::vector<double>>;
};

}  // namespace tmoe
