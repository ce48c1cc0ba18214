#pragma once
// Shared by test_instantiate_policies*.cpp (through instantiate_policies.hpp): the lists of
// shipped policies per role, the requirements of the roles concepts.hpp does not name yet,
// and one tiny run of a combination. The supported combinations are the Cartesian product
//   Experts x Positions x Norms x FfnKinds x Precisions
// (all 32 are supported today); the test files split it by precision so that no
// translation unit takes more than about a minute (STYLE.md, compile times).
#include <boost/mp11.hpp>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../support/tiny.hpp"

namespace tmoe::test {

namespace mp = boost::mp11;

// Roles without a concept in concepts.hpp (positions, norm, attention, ffn, model): their
// requirements as the templates use them (docs/concepts/).
template <class P>
concept PositionsRole = Named<P> && requires {
  { P::learned } -> std::convertible_to<bool>;
  { P::rotary } -> std::convertible_to<bool>;
};

template <class N, class T>
concept NormRole = Named<N> && requires(typename N::template impl<T, backend::Cpu>& l, ParamRegistry& r,
                                        const std::string& s, T* p, const T* cp, std::int64_t i) {
  l.declare(r, s, i, 0.0);
  l.bind(r, p, p);
  l.forward(cp, p, i);
  l.backward(cp, p, i, true);
};

template <class A, class T>
concept AttentionRole = Named<A> && PositionsRole<typename A::positions> &&
                        requires(typename A::template impl<T, backend::Cpu>& l, ParamRegistry& r, const std::string& s,
                                 const ModelConfig& cfg, T* p, const T* cp, std::int64_t i) {
                          l.declare(r, s, cfg);
                          l.bind(r, p, p);
                          l.forward(cp, p, i, i);
                          l.backward(cp, p, true);
                          { l.weights_per_token() } -> std::convertible_to<std::int64_t>;
                        };

template <class F, class T>
concept FfnRole = Named<F> && requires(typename F::template impl<T, backend::Cpu>& l, ParamRegistry& r,
                                       const std::string& s, const ModelConfig& cfg, T* p, const T* cp,
                                       std::int64_t i) {
  { F::is_moe } -> std::convertible_to<bool>;
  l.declare(r, s, cfg);
  l.bind(r, p, p);
  l.forward(cp, p, i);
  l.backward(cp, p, true, 1.0);
  { l.loss() } -> std::convertible_to<double>;
  { l.expert_counts() } -> std::convertible_to<std::span<const std::int64_t>>;
  { l.active_weights() } -> std::convertible_to<std::int64_t>;
};

template <class M, class T>
concept ModelRole =
    Named<M> && std::constructible_from<typename M::template impl<T, backend::Cpu>, const ModelConfig&> &&
    requires(typename M::template impl<T, backend::Cpu>& m, const std::int32_t* ids, std::int64_t i) {
      m.init(std::uint64_t{});
      m.zero_grad();
      { m.forward(ids, ids, i, i) } -> std::same_as<LossParts>;
      m.backward(1.0);
      { m.registry() } -> std::convertible_to<const ParamRegistry&>;
      { m.params() } -> std::same_as<T*>;
      { m.grads() } -> std::same_as<T*>;
      { m.n_layers() } -> std::convertible_to<std::int64_t>;
      { m.expert_counts(i) } -> std::convertible_to<std::span<const std::int64_t>>;
    };

template <class E>
using MoETopK = MoE<E, TopK>;

// The members shipped today, one list per role.
using Backends = mp::mp_list<backend::Cpu>;
using Precisions = mp::mp_list<Fp32, Fp64>;
using Positions = mp::mp_list<Rope, LearnedPositions>;
using Norms = mp::mp_list<RmsNorm, LayerNorm>;
using Experts = mp::mp_list<SwiGLU, GeluFFN>;
using Routers = mp::mp_list<TopK>;
using FfnKinds = mp::mp_list<mp::mp_quote<Dense>, mp::mp_quote<MoETopK>>;
using Optimizers = mp::mp_list<AdamW>;
using Strategies = mp::mp_list<Serial>;

template <class E, class Pos, class N, class FfnQ, class P>
struct Combo {
  using expert = E;
  using positions = Pos;
  using norm = N;
  using precision = P;
  using ffn = mp::mp_invoke_q<FfnQ, E>;
  using attention = CausalAttention<Pos>;
  using block = TransformerBlock<attention, ffn>;
  using model = DecoderLM<block, N>;
  using trainer = Trainer<model, AdamW, P, Serial, backend::Cpu>;
};

// All supported combinations whose precision is in PrecisionList.
template <class PrecisionList>
using CombosOf = mp::mp_product<Combo, Experts, Positions, Norms, FfnKinds, PrecisionList>;
static_assert(mp::mp_size<CombosOf<Precisions>>::value == 32);

template <class L>
using Identities = mp::mp_transform<mp::mp_identity, L>;

// Calls check(mp_identity<M>{}) for every member M of L; returns how many were checked.
template <class L, class F>
int check_each(F&& check) {
  int checked = 0;
  mp::mp_for_each<Identities<L>>([&](auto id) {
    check(id);
    ++checked;
  });
  return checked;
}

// Checks every member of every role list, and the attention, ffn and model of each
// combination in Combos; returns how many types were checked.
template <class Combos>
int check_roles() {
  int checked = 0;
  checked += check_each<Backends>([](auto id) { static_assert(Backend<typename decltype(id)::type>); });
  checked += check_each<Precisions>([](auto id) { static_assert(PrecisionPolicy<typename decltype(id)::type>); });
  checked += check_each<Positions>([](auto id) { static_assert(PositionsRole<typename decltype(id)::type>); });
  checked += check_each<Norms>([](auto id) {
    static_assert(NormRole<typename decltype(id)::type, float> && NormRole<typename decltype(id)::type, double>);
  });
  checked += check_each<Experts>([](auto id) { static_assert(Expert<typename decltype(id)::type>); });
  checked += check_each<Routers>([](auto id) { static_assert(Router<typename decltype(id)::type>); });
  checked += check_each<Optimizers>([](auto id) { static_assert(Optimizer<typename decltype(id)::type>); });
  checked += check_each<Strategies>([](auto id) { static_assert(ParallelStrategy<typename decltype(id)::type>); });
  checked += check_each<Combos>([](auto id) {
    using C = typename decltype(id)::type;
    using T = typename C::precision::compute;
    static_assert(AttentionRole<typename C::attention, T>);
    static_assert(FfnRole<typename C::ffn, T>);
    static_assert(ModelRole<typename C::model, T>);
  });
  return checked;
}
inline constexpr int kRoleMembers = 1 + 2 + 2 + 2 + 2 + 1 + 1 + 1;

inline Config tiny_config() {
  Config cfg;
  cfg.model = tiny_model();
  cfg.train.batch_size = 2;
  cfg.train.seq_len = 8;
  cfg.train.grad_accum = 2;
  cfg.train.steps = 4;
  cfg.train.threads = 1;
  return cfg;
}

// What one combination did: filled by run<C>() and checked by check(), which is not a
// template, so the Boost.Test assertions are compiled once rather than once per combination.
struct Outcome {
  std::string combo;
  bool learned = false, layer_norm = false, swiglu = false, moe = false;
  bool has_pos = false, has_norm_bias = false, has_router = false, has_w1 = false, has_w3 = false;
  StepStats st;
  std::int64_t step = 0, moved = 0, tokens = 0;
  double eval = 0;
  std::vector<std::int32_t> generated;
  std::size_t state_arrays = 0;
};

// One Trainer step (2 micro-batches: forward, backward, clip, AdamW), one evaluation batch
// and two greedy tokens.
template <class C>
Outcome run(const Config& cfg) {
  using T = typename C::precision::compute;
  static_assert(std::is_same_v<typename C::trainer::T, T>);
  const std::int64_t v = cfg.model.vocab_size, n = cfg.train.batch_size * cfg.train.seq_len;
  const BatchFn batches = random_batches(n, v);
  Outcome o;
  o.combo = std::string(C::expert::name) + "/" + C::positions::name + "/" + C::norm::name + "/" + C::ffn::name + "/" +
            C::precision::name;
  o.learned = C::positions::learned;
  o.layer_norm = std::is_same_v<typename C::norm, LayerNorm>;
  o.swiglu = std::is_same_v<typename C::expert, SwiGLU>;
  o.moe = C::ffn::is_moe;

  typename C::trainer trainer(cfg);
  const ParamRegistry& reg = trainer.model().registry();
  const std::string ffn = o.moe ? "layers.1.moe.experts.3" : "layers.1.ffn";
  o.has_pos = reg.find("pos_embed.weight") != nullptr;
  o.has_norm_bias = reg.find("final_norm.bias") != nullptr;
  o.has_router = reg.find("layers.0.moe.router.weight") != nullptr;
  o.has_w1 = reg.find(ffn + ".w1.weight") != nullptr;
  o.has_w3 = reg.find(ffn + ".w3.weight") != nullptr;

  const std::vector<T> before(trainer.model().params(), trainer.model().params() + reg.total());
  o.st = trainer.train_step(batches);
  o.step = trainer.step();
  o.tokens = cfg.train.grad_accum * n;
  for (std::int64_t i = 0; i < reg.total(); ++i)
    o.moved += trainer.model().params()[i] != before[static_cast<std::size_t>(i)];
  o.eval = trainer.evaluate(batches, 1);
  o.generated = trainer.generate({1, 2, 3}, 2, 0.0, 7);
  o.state_arrays = trainer.restartable_state().size();
  return o;
}

inline void check(const Outcome& o, const Config& cfg) {
  BOOST_TEST_MESSAGE(o.combo << ": loss " << o.st.loss << ", grad norm " << o.st.grad_norm);
  BOOST_TEST(o.has_pos == o.learned);
  BOOST_TEST(o.has_norm_bias == o.layer_norm);
  BOOST_TEST(o.has_router == o.moe);
  BOOST_TEST(o.has_w1);
  BOOST_TEST(o.has_w3 == o.swiglu);
  BOOST_TEST(std::isfinite(o.st.loss));
  BOOST_TEST(o.st.ce > 0.0);
  BOOST_TEST(o.st.grad_norm > 0.0);
  BOOST_TEST(o.st.tokens == o.tokens);
  BOOST_TEST(o.step == 1);
  BOOST_TEST(o.st.expert_counts.size() == static_cast<std::size_t>(cfg.model.n_layers));
  for (const auto& layer : o.st.expert_counts) {
    std::int64_t routed = 0;
    for (auto c : layer) routed += c;
    BOOST_TEST(layer.size() == static_cast<std::size_t>(o.moe ? cfg.model.n_experts : 0));
    BOOST_TEST(routed == (o.moe ? o.tokens * cfg.model.top_k : 0));
  }
  BOOST_TEST((o.moe ? o.st.aux > 0.0 : o.st.aux == 0.0));
  BOOST_TEST(o.moved > 0);
  BOOST_TEST(std::isfinite(o.eval));
  BOOST_TEST(o.generated.size() == 2u);
  for (auto tok : o.generated) BOOST_TEST((tok >= 0 && tok < cfg.model.vocab_size));
  BOOST_TEST(o.state_arrays == 1u + AdamW::slots);
}

}  // namespace tmoe::test
