#define BOOST_TEST_MODULE moe_routers
// fp64 central-difference gradient checks (the harness of test_layers_common.hpp) of a
// standalone MoE layer for every router, capacity policy and balancing term:
//   TopK (temperature 0.5 / 3, route_scale 2, renormalised and not; training noise and
//   jitter with a fixed RouteContext), SigmoidBias with a nonzero selection bias,
//   GroupLimited<SigmoidBias> and GroupLimited<TopK> (8 experts, 4 groups, 2 eligible),
//   ExpertChoice (capacity factor 1 and 2), TopK with a capacity that drops (probability and
//   position policies), Hash (no router parameters), the balancing losses alone with large
//   weights over several sequences, and shared experts.
// The scalar is Σ(out ⊙ R) + layer.loss() (R = 0 for the balancing-only cases), the backward
// takes grad_scale = 1. Steps that change a routing decision (the assignment tokens,
// experts and the kept mask) are skipped by the harness.
//
// Every case also runs the forward against a naive double reference written here from the
// router, capacity and balancing definitions (router logits, noise, jitter, probabilities,
// selection, gates, route_scale, dropping, experts, shared experts): same assignments, same
// kept mask, same probabilities, same output; and the balancing values (aux, seq_aux, z,
// bias_load_max) of MoEStats against naive formulas computed from the layer's own
// probs/logits/assignments and from the reference's.
#include <boost/test/unit_test.hpp>
#include <array>
#include <functional>
#include <map>
#include <numeric>

#include "test_layers_common.hpp"

using namespace gc;

namespace {

constexpr const char* kName = "layers.0.moe";
using Bal3 = Balancing<AuxLoss, SeqAuxLoss, ZLoss>;

ModelConfig base_cfg() {
  auto cfg = test::tiny_model();
  cfg.d_model = 12;
  cfg.n_heads = 2;
  cfg.d_expert = 8;
  cfg.n_experts = 4;
  cfg.top_k = 2;
  cfg.aux_loss_weight = 0.2;
  cfg.seq_aux_loss_weight = 0.15;
  cfg.z_loss_weight = 0.05;
  return cfg;
}

// ---- naive reference -----------------------------------------------------------------------

template <class R>
struct RouterTraits {
  static constexpr bool topk = std::is_same_v<R, TopK>;
  static constexpr bool sigmoid = std::is_same_v<R, SigmoidBias>;
  static constexpr bool group_topk = std::is_same_v<R, GroupLimited<TopK>>;
  static constexpr bool group_sigmoid = std::is_same_v<R, GroupLimited<SigmoidBias>>;
  static constexpr bool ec = std::is_same_v<R, ExpertChoice>;
  static constexpr bool hash = std::is_same_v<R, Hash>;
  static constexpr bool softmax = topk || group_topk || ec;
  static constexpr bool sig = sigmoid || group_sigmoid;
  static constexpr bool grouped = group_topk || group_sigmoid;
};

struct Ref {
  std::vector<double> out, raw, logits, probs, gate;  // gate: the router's, before route_scale
  std::vector<std::int32_t> expert, token;
  std::vector<std::uint8_t> kept;
  std::int64_t cap = 0;
};

double sigm(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// y = W2 (silu(W1 x) ⊙ W3 x) or W2 gelu_tanh(W1 x)
std::vector<double> ffn_ref(bool swiglu, const double* w1, const double* w3, const double* w2, const double* x,
                            std::int64_t c, std::int64_t h) {
  std::vector<double> hid(h), y(c, 0.0);
  for (std::int64_t q = 0; q < h; ++q) {
    double a1 = 0, a3 = 0;
    for (std::int64_t j = 0; j < c; ++j) {
      a1 += x[j] * w1[q * c + j];
      if (swiglu) a3 += x[j] * w3[q * c + j];
    }
    hid[q] = swiglu ? a1 * sigm(a1) * a3
                    : 0.5 * a1 * (1 + std::tanh(std::sqrt(2 / M_PI) * (a1 + 0.044715 * a1 * a1 * a1)));
  }
  for (std::int64_t j = 0; j < c; ++j)
    for (std::int64_t q = 0; q < h; ++q) y[j] += hid[q] * w2[j * h + q];
  return y;
}

// Indices sorted by key, largest first, ties to the lower index.
template <class V>
std::vector<std::int32_t> order_desc(const V& key) {
  std::vector<std::int32_t> o(key.size());
  std::iota(o.begin(), o.end(), 0);
  std::stable_sort(o.begin(), o.end(), [&](std::int32_t a, std::int32_t b) { return key[a] > key[b]; });
  return o;
}

template <class Layer>
Ref reference(const ModelConfig& cfg, const ParamRegistry& reg, const std::vector<double>& p,
              const std::vector<double>& x, std::int64_t n, const RouteContext& ctx) {
  using R = typename Layer::router_policy;
  using Tr = RouterTraits<R>;
  constexpr bool swiglu = std::is_same_v<typename Layer::expert_policy, SwiGLU>;
  constexpr bool drops = Layer::capacity_policy::drops;
  const std::int64_t c = cfg.d_model, e = cfg.n_experts, k = cfg.top_k;
  auto w = [&](const std::string& s) {
    const ParamInfo* pi = reg.find(kName + s);
    BOOST_REQUIRE_MESSAGE(pi, "no parameter " << kName + s);
    return p.data() + pi->offset;
  };
  Ref r;
  r.raw.assign(n * e, 0.0);
  r.logits.assign(n * e, 0.0);
  r.probs.assign(n * e, 0.0);
  std::vector<double> sel(n * e, 0.0);
  // router logits: (x ⊙ jitter) Wrᵀ / temperature + noise
  if constexpr (!Tr::hash) {
    const double* wr = w(".router.weight");
    const double* b = Tr::sig ? w(".router.bias") : nullptr;
    for (std::int64_t t = 0; t < n; ++t) {
      std::vector<double> xr(x.begin() + t * c, x.begin() + (t + 1) * c);
      if (ctx.training && cfg.router_jitter > 0) {
        RngKey kj{ctx.seed, static_cast<std::uint32_t>(ctx.step),
                  site_id(Site::kRouterNoise, static_cast<std::uint32_t>(2 * ctx.layer + 1)),
                  static_cast<std::uint32_t>(ctx.token_offset + t)};
        for (std::int64_t j = 0; j < c; ++j)
          xr[j] *= 1.0 - cfg.router_jitter + 2.0 * cfg.router_jitter * kj.uniform(static_cast<std::uint64_t>(j));
      }
      RngKey kn{ctx.seed, static_cast<std::uint32_t>(ctx.step),
                site_id(Site::kRouterNoise, static_cast<std::uint32_t>(2 * ctx.layer)),
                static_cast<std::uint32_t>(ctx.token_offset + t)};
      for (std::int64_t i = 0; i < e; ++i) {
        double v = 0;
        for (std::int64_t j = 0; j < c; ++j) v += xr[j] * wr[i * c + j];
        r.raw[t * e + i] = v;
        r.logits[t * e + i] = v / cfg.router_temperature +
                              (ctx.training && cfg.router_noise_std > 0
                                   ? cfg.router_noise_std * kn.normal(static_cast<std::uint64_t>(i))
                                   : 0.0);
      }
      const double* l = &r.logits[t * e];
      if constexpr (Tr::softmax) {
        const double mx = *std::max_element(l, l + e);
        double z = 0;
        for (std::int64_t i = 0; i < e; ++i) z += std::exp(l[i] - mx);
        for (std::int64_t i = 0; i < e; ++i) r.probs[t * e + i] = std::exp(l[i] - mx) / z, sel[t * e + i] = l[i];
      } else {
        double z = 0;
        for (std::int64_t i = 0; i < e; ++i) z += sigm(l[i]);
        for (std::int64_t i = 0; i < e; ++i) r.probs[t * e + i] = sigm(l[i]) / z, sel[t * e + i] = sigm(l[i]) + b[i];
      }
      if constexpr (Tr::grouped) {
        // eligible groups: the top_groups best by the sum of their two largest keys
        const std::int64_t g = cfg.n_groups, size = e / g;
        std::vector<double> gs(g);
        for (std::int64_t q = 0; q < g; ++q) {
          std::vector<double> keys(sel.begin() + t * e + q * size, sel.begin() + t * e + (q + 1) * size);
          std::sort(keys.rbegin(), keys.rend());
          gs[q] = size == 1 ? keys[0] : keys[0] + keys[1];
        }
        const auto go = order_desc(gs);
        for (std::int64_t rank = cfg.top_groups; rank < g; ++rank)
          for (std::int64_t i = go[rank] * size; i < (go[rank] + 1) * size; ++i)
            sel[t * e + i] = -std::numeric_limits<double>::infinity();
      }
    }
  }
  if constexpr (Tr::ec) {
    r.cap = expert_capacity(cfg.capacity_factor, n, k, e);
    for (std::int64_t xe = 0; xe < e; ++xe) {
      std::vector<double> col(n);
      for (std::int64_t t = 0; t < n; ++t) col[t] = r.probs[t * e + xe];
      auto o = order_desc(col);
      o.resize(r.cap);
      std::sort(o.begin(), o.end());
      for (auto t : o) r.expert.push_back(static_cast<std::int32_t>(xe)), r.token.push_back(t), r.gate.push_back(col[t]);
    }
  } else {
    for (std::int64_t t = 0; t < n; ++t) {
      std::vector<std::int32_t> ids(k);
      std::vector<double> g(k);
      if constexpr (Tr::hash) {
        std::vector<double> pr(e);
        Hash::route_token<double>(RouterParams{e, k}, ctx.tokens[t], ids.data(), g.data(), pr.data());
        for (std::int64_t j = 0; j < k; ++j) g[j] = 1.0 / static_cast<double>(k);
        for (std::int64_t i = 0; i < e; ++i) r.probs[t * e + i] = 0;
        for (std::int64_t j = 0; j < k; ++j) r.probs[t * e + ids[j]] = 1.0 / static_cast<double>(k);
      } else {
        std::vector<double> st(sel.begin() + t * e, sel.begin() + (t + 1) * e);
        const auto o = order_desc(st);
        std::copy(o.begin(), o.begin() + k, ids.begin());
        const double* l = &r.logits[t * e];
        double z = 0;
        for (std::int64_t j = 0; j < k; ++j) z += Tr::softmax ? std::exp(l[ids[j]]) : sigm(l[ids[j]]);
        for (std::int64_t j = 0; j < k; ++j) {
          const double v = Tr::softmax ? std::exp(l[ids[j]]) : sigm(l[ids[j]]);
          g[j] = cfg.router_renormalize ? v / z : Tr::softmax ? r.probs[t * e + ids[j]] : v;
        }
      }
      for (std::int64_t j = 0; j < k; ++j)
        r.expert.push_back(ids[j]), r.token.push_back(static_cast<std::int32_t>(t)), r.gate.push_back(g[j]);
    }
  }
  const std::int64_t a = static_cast<std::int64_t>(r.expert.size());
  r.kept.assign(a, 1);
  if constexpr (drops && !Tr::ec) {
    r.cap = expert_capacity(cfg.capacity_factor, n, k, e);
    for (std::int64_t xe = 0; xe < e; ++xe) {
      std::vector<std::int32_t> list;
      for (std::int64_t i = 0; i < a; ++i)
        if (r.expert[i] == xe) list.push_back(static_cast<std::int32_t>(i));
      if (cfg.drop_policy == "probability")
        std::stable_sort(list.begin(), list.end(), [&](std::int32_t u, std::int32_t v) { return r.gate[u] > r.gate[v]; });
      for (std::size_t i = static_cast<std::size_t>(r.cap); i < list.size(); ++i) r.kept[list[i]] = 0;
    }
  }
  // experts, shared experts, combine
  r.out.assign(n * c, 0.0);
  if (cfg.n_shared_experts > 0) {
    const std::int64_t hs = cfg.n_shared_experts * (cfg.d_shared_expert > 0 ? cfg.d_shared_expert : cfg.d_expert);
    for (std::int64_t t = 0; t < n; ++t) {
      const auto y = ffn_ref(swiglu, w(".shared_experts.w1.weight"), swiglu ? w(".shared_experts.w3.weight") : nullptr,
                             w(".shared_experts.w2.weight"), &x[t * c], c, hs);
      for (std::int64_t j = 0; j < c; ++j) r.out[t * c + j] += y[j];
    }
  }
  for (std::int64_t i = 0; i < a; ++i) {
    if (!r.kept[i]) continue;
    const std::string en = ".experts." + std::to_string(r.expert[i]);
    const std::int64_t t = r.token[i];
    const auto y = ffn_ref(swiglu, w(en + ".w1.weight"), swiglu ? w(en + ".w3.weight") : nullptr, w(en + ".w2.weight"),
                           &x[t * c], c, cfg.d_expert);
    for (std::int64_t j = 0; j < c; ++j) r.out[t * c + j] += cfg.route_scale * r.gate[i] * y[j];
  }
  return r;
}

// The balancing terms by their definitions (balance.hpp's header), from probs (N, E), the
// raw router logits (null: none) and the assignments.
std::map<std::string, double> balance_ref(const double* probs, const double* raw, const std::vector<std::int32_t>& ex,
                                          const std::vector<std::int32_t>& tk, std::int64_t n, std::int64_t e,
                                          std::int64_t k, std::int64_t seq_len) {
  std::map<std::string, double> v;
  const std::int64_t a = static_cast<std::int64_t>(ex.size());
  std::vector<double> routed(e, 0.0);
  for (auto x : ex) routed[x] += 1;
  double aux = 0;
  for (std::int64_t x = 0; x < e; ++x) {
    double pm = 0;
    for (std::int64_t t = 0; t < n; ++t) pm += probs[t * e + x];
    aux += (routed[x] / a) * (pm / n);
  }
  v["aux"] = e * aux;
  const std::int64_t len = seq_len > 0 ? seq_len : n, seqs = n / len;
  double sa = 0;
  for (std::int64_t s = 0; s < seqs; ++s)
    for (std::int64_t x = 0; x < e; ++x) {
      double cnt = 0, pm = 0;
      for (std::int64_t i = 0; i < a; ++i)
        if (ex[i] == x && tk[i] / len == s) cnt += 1;
      for (std::int64_t t = s * len; t < (s + 1) * len; ++t) pm += probs[t * e + x];
      sa += static_cast<double>(e) * cnt / static_cast<double>(k * len) * pm / static_cast<double>(len);
    }
  v["seq_aux"] = sa / seqs;
  double z = 0;
  if (raw)
    for (std::int64_t t = 0; t < n; ++t) {
      double s = 0;
      for (std::int64_t x = 0; x < e; ++x) s += std::exp(raw[t * e + x]);
      z += std::log(s) * std::log(s);
    }
  v["z"] = z / n;
  v["bias_load_max"] = *std::max_element(routed.begin(), routed.end()) * e / a;
  return v;
}

// ---- the check -----------------------------------------------------------------------------

struct Setup {
  std::int64_t n = 24;
  std::int64_t batch = 0, seq_len = 0;  // RouteContext's (B, T); 0: one sequence
  bool training = false;
  bool with_tokens = false;  // Hash: random token ids
  double r_scale = 1.0;      // 0: the scalar is the layer's loss() alone
  double bias_amp = 0.0;     // SigmoidBias: the buffer is set to bias_amp · (−1, +1, −0.5, ...)
  Options o;
  std::function<void(Buffers&, std::vector<double>&)> prep;
};

struct Result {
  Summary s;
  std::int64_t dropped = 0, rows = 0;
  double fwd_err = 0, bal_err = 0;
};

template <class Layer>
Result check_moe(const std::string& what, const ModelConfig& cfg, unsigned seed, Setup su = {}) {
  using R = typename Layer::router_policy;
  BOOST_TEST_MESSAGE("== " << what);
  const std::int64_t n = su.n, c = cfg.d_model, e = cfg.n_experts;
  Buffers buf;
  typename Layer::template impl<double, Cpu> moe;
  moe.declare(buf.reg, kName, cfg);
  buf.bind(moe, seed);
  auto x = randn(n * c, seed + 50);
  std::vector<double> bias0;
  if constexpr (R::has_bias) {
    double* b = buf.p.data() + buf.reg.find(std::string(kName) + ".router.bias")->offset;
    for (std::int64_t i = 0; i < e; ++i) b[i] = su.bias_amp * std::array<double, 4>{-1.0, 1.0, -0.5, 0.25}[i % 4] * (1 + i / 4);
    bias0.assign(b, b + e);
  }
  if (su.prep) su.prep(buf, x);
  const auto tokens = test::random_tokens(n, cfg.vocab_size, seed + 70);
  RouteContext ctx;
  ctx.tokens = su.with_tokens ? tokens.data() : nullptr;
  ctx.batch = su.batch;
  ctx.seq_len = su.seq_len;
  ctx.training = su.training;
  ctx.seed = 4242 + seed;
  ctx.step = 7;
  ctx.token_offset = 96;
  ctx.layer = 1;
  Result res;

  // forward against the reference
  std::vector<double> y(n * c);
  moe.forward(x.data(), y.data(), n, ctx);
  const Ref ref = reference<Layer>(cfg, buf.reg, buf.p, x, n, ctx);
  BOOST_TEST((std::vector<std::int32_t>(moe.a_expert.begin(), moe.a_expert.end()) == ref.expert), what << ": experts");
  BOOST_TEST((std::vector<std::int32_t>(moe.a_token.begin(), moe.a_token.end()) == ref.token), what << ": tokens");
  BOOST_TEST((std::vector<std::uint8_t>(moe.kept.begin(), moe.kept.end()) == ref.kept), what << ": kept");
  if (Layer::capacity_policy::drops) BOOST_TEST(moe.capacity() == ref.cap);
  res.fwd_err = max_abs_diff(y, ref.out) / std::max(1.0, max_abs(ref.out));
  BOOST_TEST(res.fwd_err <= 1e-12, what << ": forward differs from the reference by " << res.fwd_err);
  BOOST_TEST(max_abs_diff(moe.probs.data(), ref.probs) <= 1e-14, what << ": probs");
  if constexpr (R::learned) BOOST_TEST(max_abs_diff(moe.raw.data(), ref.raw) <= 1e-13, what << ": raw logits");
  for (std::size_t i = 0; i < ref.gate.size(); ++i)
    BOOST_REQUIRE_MESSAGE(std::abs(moe.gate(static_cast<std::int64_t>(i)) - cfg.route_scale * ref.gate[i]) <= 1e-14,
                          what << ": gate " << i);
  for (auto kp : moe.kept) res.dropped += kp ? 0 : 1;
  res.rows = moe.plan.rows();
  {
    // MoEStats: kept rows per expert and the mean entropy of the probabilities
    std::vector<std::int64_t> rows(e, 0);
    for (std::size_t i = 0; i < ref.expert.size(); ++i) rows[ref.expert[i]] += ref.kept[i];
    BOOST_TEST((moe.stats().tokens == rows), what << ": MoEStats.tokens");
    double h = 0;
    for (double v : ref.probs) h -= v > 0 ? v * std::log(v) : 0.0;
    BOOST_TEST(std::abs(moe.stats().entropy - h / n) <= 1e-13, what << ": entropy " << moe.stats().entropy << " vs " << h / n);
  }
  {
    std::int64_t st_dropped = 0;
    for (auto d : moe.stats().dropped) st_dropped += d;
    BOOST_TEST(st_dropped == res.dropped, what << ": MoEStats.dropped");
  }

  // balancing values: MoEStats vs naive formulas from the layer's own arrays and the reference's
  {
    const std::int64_t len = su.seq_len > 0 && n % su.seq_len == 0 ? su.seq_len : n;
    const auto mine = balance_ref(moe.probs.data(), R::learned ? moe.raw.data() : nullptr, moe.a_expert, moe.a_token, n,
                                  e, cfg.top_k, len);
    const auto indep = balance_ref(ref.probs.data(), R::learned ? ref.raw.data() : nullptr, ref.expert, ref.token, n, e,
                                   cfg.top_k, len);
    double loss = 0;
    const auto& terms = moe.stats().terms;
    BOOST_TEST(terms.size() == std::tuple_size_v<typename Layer::balance_policy::list>);
    for (const auto& [name, value] : terms) {
      BOOST_REQUIRE_MESSAGE(mine.count(name), "unknown balancing term " << name);
      const double m = mine.at(name), d = indep.at(name);
      res.bal_err = std::max({res.bal_err, std::abs(value - m) / std::max(1.0, std::abs(m)),
                              std::abs(value - d) / std::max(1.0, std::abs(d))});
      BOOST_TEST(std::abs(value - m) <= 1e-13 * std::max(1.0, std::abs(m)), what << ": " << name << " " << value << " naive " << m);
      BOOST_TEST(std::abs(value - d) <= 1e-12 * std::max(1.0, std::abs(d)), what << ": " << name << " " << value << " reference " << d);
      if (name == "aux") loss += cfg.aux_loss_weight * value;
      if (name == "seq_aux") loss += cfg.seq_aux_loss_weight * value;
      if (name == "z") loss += cfg.z_loss_weight * value;
      BOOST_TEST_MESSAGE("  " << name << " = " << value);
    }
    BOOST_TEST(std::abs(moe.loss() - loss) <= 1e-14 * std::max(1.0, loss), what << ": loss() " << moe.loss() << " vs " << loss);
  }

  // analytic gradients, the accumulation contracts
  const auto fwd = [&](const double* xx, double* yy) { moe.forward(xx, yy, n, ctx); };
  const auto bwd = [&](const double* dy, double* dx, bool acc) { moe.backward(dy, dx, acc, 1.0); };
  const auto route = [&] {
    std::vector<std::int32_t> s(moe.a_token.begin(), moe.a_token.end());
    s.insert(s.end(), moe.a_expert.begin(), moe.a_expert.end());
    for (auto kp : moe.kept) s.push_back(kp);
    return s;
  };
  auto rr = randn(n * c, seed + 61);
  for (auto& v : rr) v *= su.r_scale;
  std::vector<double> dx(n * c, 99.0);
  std::fill(buf.g.begin(), buf.g.end(), 0.0);
  fwd(x.data(), y.data());
  bwd(rr.data(), dx.data(), false);
  const std::vector<double> g1 = buf.g;
  {
    auto d0 = randn(n * c, seed + 62), dxa = d0;
    fwd(x.data(), y.data());
    bwd(rr.data(), dxa.data(), true);
    double err = 0, s = 0;
    for (std::size_t i = 0; i < dx.size(); ++i)
      err = std::max(err, std::abs(dxa[i] - (d0[i] + dx[i]))), s = std::max(s, std::abs(dx[i]));
    BOOST_TEST(err <= 1e-12 * (1 + s), what << ": accumulate_dx does not add ∂L/∂x (" << err << ")");
    double eg = 0, sg = 0;
    for (std::size_t i = 0; i < buf.g.size(); ++i)
      eg = std::max(eg, std::abs(buf.g[i] - 2 * g1[i])), sg = std::max(sg, std::abs(g1[i]));
    BOOST_TEST(eg <= 1e-12 * (1 + sg), what << ": parameter gradients do not accumulate (" << eg << ")");
  }
  std::vector<Target> targets;
  targets.push_back({"input", x.data(), n * c, dx});
  for (const ParamInfo& pi : buf.reg.params()) {
    const double* g = buf.g.data() + pi.offset;
    if (pi.has(kTagBuffer)) {
      // the selection bias: no gradient ever, the buffer itself untouched by forward/backward
      double mx = 0;
      for (std::int64_t i = 0; i < pi.numel(); ++i) mx = std::max(mx, std::abs(g[i]));
      BOOST_TEST(mx == 0.0, what << ": buffer " << pi.name << " has a gradient " << mx);
      const double* b = buf.p.data() + pi.offset;
      BOOST_TEST((std::vector<double>(b, b + pi.numel()) == bias0), what << ": buffer changed");
      continue;
    }
    if (su.r_scale == 0 && !pi.has(kTagRouter)) {
      // the balancing terms alone: nothing reaches the experts
      double mx = 0;
      for (std::int64_t i = 0; i < pi.numel(); ++i) mx = std::max(mx, std::abs(g[i]));
      BOOST_TEST(mx == 0.0, what << ": " << pi.name << " has a gradient without an output gradient");
      continue;
    }
    targets.push_back({pi.name, buf.p.data() + pi.offset, pi.numel(),
                       std::vector<double>(g1.begin() + pi.offset, g1.begin() + pi.offset + pi.numel())});
  }
  const auto loss = [&] {
    fwd(x.data(), y.data());
    return dot(rr, y.data()) + moe.loss();
  };
  res.s = check(targets, loss, route, su.o);

  // The bias only moves the selection: a step that keeps the routing leaves the loss bit-equal.
  if constexpr (R::has_bias) {
    double* b = buf.p.data() + buf.reg.find(std::string(kName) + ".router.bias")->offset;
    const double l0 = loss();
    const auto r0 = route();
    std::int64_t same = 0;
    for (std::int64_t i = 0; i < e; ++i)
      for (double step : {1e-6, -1e-6}) {
        const double v = b[i];
        b[i] = v + step;
        const double l = loss();
        if (route() == r0) {
          ++same;
          BOOST_TEST(l == l0, what << ": bias " << i << " moved the loss without moving the routing");
        }
        b[i] = v;
      }
    BOOST_TEST(same > 0);
  }
  BOOST_TEST_MESSAGE("  " << res.s.checked << " checked, " << res.s.skipped << " skipped, dropped " << res.dropped
                          << ", rows " << res.rows << ", forward err " << res.fwd_err << ", balance err " << res.bal_err);
  return res;
}

}  // namespace

// ---- TopK: temperature, route_scale, renormalisation ---------------------------------------

BOOST_AUTO_TEST_CASE(topk_temperature_and_route_scale) {
  unsigned seed = 10;
  for (double temp : {0.5, 3.0})
    for (bool renorm : {true, false}) {
      auto cfg = base_cfg();
      cfg.router_temperature = temp;
      cfg.route_scale = 2.0;
      cfg.router_renormalize = renorm;
      Setup su;
      su.batch = 4, su.seq_len = 6;
      check_moe<MoE<SwiGLU, TopK, Dropless, Bal3>>(
          std::string("MoE<SwiGLU, TopK> temperature ") + (temp == 0.5 ? "0.5" : "3") + (renorm ? " renormalised" : " unnormalised") +
              ", route_scale 2",
          cfg, ++seed, su);
    }
}

BOOST_AUTO_TEST_CASE(topk_training_noise_and_jitter) {
  // Training noise and jitter are a fixed function of (seed, step, token_offset, layer): the
  // same RouteContext in every forward makes the layer a deterministic function to difference.
  unsigned seed = 20;
  for (bool renorm : {true, false})
    for (int which = 0; which < 3; ++which) {  // noise, jitter, both
      auto cfg = base_cfg();
      cfg.router_renormalize = renorm;
      cfg.router_noise_std = which != 1 ? 0.7 : 0.0;
      cfg.router_jitter = which != 0 ? 0.2 : 0.0;
      cfg.router_temperature = 1.5;
      Setup su;
      su.training = true;
      su.batch = 2, su.seq_len = 12;
      check_moe<MoE<SwiGLU, TopK, Dropless, Bal3>>(
          std::string("MoE<SwiGLU, TopK> training, ") + (which == 0 ? "noise 0.7" : which == 1 ? "jitter 0.2" : "noise 0.7 + jitter 0.2") +
              (renorm ? ", renormalised" : ", unnormalised"),
          cfg, ++seed, su);
    }
  // The noise does act: training and evaluation route differently on the same input.
  auto cfg = base_cfg();
  cfg.router_noise_std = 1.0;
  cfg.router_jitter = 0.3;
  Buffers buf;
  MoE<SwiGLU, TopK>::impl<double, Cpu> moe;
  moe.declare(buf.reg, kName, cfg);
  buf.bind(moe, 29);
  const std::int64_t n = 24;
  const auto x = randn(n * cfg.d_model, 30);
  std::vector<double> y(n * cfg.d_model);
  RouteContext ctx;
  ctx.seed = 5;
  moe.forward(x.data(), y.data(), n, ctx);
  const std::vector<double> eval_logits(moe.logits.data(), moe.logits.data() + n * cfg.n_experts);
  ctx.training = true;
  moe.forward(x.data(), y.data(), n, ctx);
  const std::vector<double> train_logits(moe.logits.data(), moe.logits.data() + n * cfg.n_experts);
  BOOST_TEST(max_abs_diff(train_logits, eval_logits) > 0.1);
  ctx.step = 1;  // another step: other noise
  moe.forward(x.data(), y.data(), n, ctx);
  BOOST_TEST(max_abs_diff(moe.logits.data(), train_logits) > 0.1);
}

// ---- SigmoidBias, GroupLimited ------------------------------------------------------------

BOOST_AUTO_TEST_CASE(sigmoid_bias_with_a_bias_buffer) {
  unsigned seed = 40;
  for (bool renorm : {true, false}) {
    auto cfg = base_cfg();
    cfg.router_renormalize = renorm;
    cfg.route_scale = 2.5;
    Setup su;
    su.batch = 4, su.seq_len = 6;
    su.bias_amp = 0.15;  // of the order of the affinities' spread: it changes selections
    check_moe<MoE<SwiGLU, SigmoidBias, Dropless, Bal3>>(
        std::string("MoE<SwiGLU, SigmoidBias, Dropless, Balancing<Aux, SeqAux, Z>> ") +
            (renorm ? "renormalised" : "unnormalised") + ", bias set",
        cfg, ++seed, su);
  }
}

BOOST_AUTO_TEST_CASE(group_limited_sigmoid_bias) {
  // DeepSeek-V3 routing: 8 experts in 4 groups, 2 groups eligible, k = 3, bias update.
  unsigned seed = 50;
  for (bool renorm : {true, false}) {
    auto cfg = base_cfg();
    cfg.n_experts = 8;
    cfg.n_groups = 4;
    cfg.top_groups = 2;
    cfg.top_k = 3;
    cfg.router_renormalize = renorm;
    cfg.route_scale = 2.5;
    cfg.validate();
    Setup su;
    su.batch = 4, su.seq_len = 6;
    su.bias_amp = 0.1;
    check_moe<MoE<SwiGLU, GroupLimited<SigmoidBias>, Dropless, Balancing<AuxLoss, SeqAuxLoss, ZLoss, BiasUpdate>>>(
        std::string("MoE<SwiGLU, GroupLimited<SigmoidBias>, +BiasUpdate> E 8, G 4, top 2, k 3 ") +
            (renorm ? "renormalised" : "unnormalised"),
        cfg, ++seed, su);
  }
}

BOOST_AUTO_TEST_CASE(group_limited_topk) {
  unsigned seed = 60;
  for (bool renorm : {true, false}) {
    auto cfg = base_cfg();
    cfg.n_experts = 8;
    cfg.n_groups = 4;
    cfg.top_groups = 2;
    cfg.top_k = 2;
    cfg.router_renormalize = renorm;
    cfg.validate();
    Setup su;
    su.batch = 4, su.seq_len = 6;
    check_moe<MoE<SwiGLU, GroupLimited<TopK>, Dropless, Bal3>>(
        std::string("MoE<SwiGLU, GroupLimited<TopK>> E 8, G 4, top 2, k 2 ") + (renorm ? "renormalised" : "unnormalised"),
        cfg, ++seed, su);
  }
}

// ---- capacity: ExpertChoice, TopK with dropping ---------------------------------------------

BOOST_AUTO_TEST_CASE(expert_choice_capacity) {
  unsigned seed = 70;
  for (double f : {1.0, 2.0}) {
    auto cfg = base_cfg();
    cfg.top_k = 1;
    cfg.capacity_factor = f;
    cfg.route_scale = 1.5;
    cfg.router_temperature = 0.8;
    Setup su;
    su.batch = 4, su.seq_len = 6;
    const auto r = check_moe<MoE<SwiGLU, ExpertChoice, CapacityFactor, Bal3>>(
        std::string("MoE<SwiGLU, ExpertChoice, CapacityFactor> capacity_factor ") + (f == 1.0 ? "1" : "2"), cfg, ++seed, su);
    BOOST_TEST(r.rows == cfg.n_experts * expert_capacity(f, su.n, 1, cfg.n_experts));
  }
}

BOOST_AUTO_TEST_CASE(topk_capacity_drops) {
  unsigned seed = 80;
  for (const char* policy : {"probability", "position"})
    for (bool renorm : {true, false}) {
      auto cfg = base_cfg();
      cfg.capacity_factor = 0.6;  // C = ceil(0.6 · 24 · 2 / 4) = 8 of the 12 an even load would give
      cfg.drop_policy = policy;
      cfg.router_renormalize = renorm;
      Setup su;
      su.batch = 4, su.seq_len = 6;
      const auto r = check_moe<MoE<SwiGLU, TopK, CapacityFactor, Bal3>>(
          std::string("MoE<SwiGLU, TopK, CapacityFactor> f 0.6, drop_policy ") + policy +
              (renorm ? ", renormalised" : ", unnormalised"),
          cfg, ++seed, su);
      BOOST_TEST(r.dropped >= 8, "only " << r.dropped << " assignments dropped");
    }
}

// ---- Hash -----------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(hash_gelu) {
  auto cfg = base_cfg();
  cfg.route_scale = 1.7;
  Setup su;
  su.with_tokens = true;
  su.batch = 4, su.seq_len = 6;
  const auto r = check_moe<MoE<GeluFFN, Hash>>("MoE<GeluFFN, Hash>", cfg, 90, su);
  // no router parameters: the input and the experts' weights only
  BOOST_TEST(r.s.skipped == 0);
  ParamRegistry reg;
  MoE<GeluFFN, Hash>::impl<double, Cpu> moe;
  moe.declare(reg, kName, cfg);
  for (const ParamInfo& pi : reg.params()) BOOST_TEST(!pi.has(kTagRouter), pi.name);
}

// ---- the balancing losses alone -----------------------------------------------------------

BOOST_AUTO_TEST_CASE(balancing_losses_alone) {
  // L = layer.loss() only, every weight 0.5, N = 4 sequences × 6: the gradients reaching the
  // router and the input are the balancing terms' alone; the experts get exactly none.
  auto cfg = base_cfg();
  cfg.aux_loss_weight = cfg.seq_aux_loss_weight = cfg.z_loss_weight = 0.5;
  Setup su;
  su.batch = 4, su.seq_len = 6;
  su.r_scale = 0.0;
  cfg.router_temperature = 2.0;
  check_moe<MoE<SwiGLU, TopK, Dropless, Bal3>>("balancing alone: TopK renormalised", cfg, 100, su);
  cfg.router_renormalize = false;
  check_moe<MoE<SwiGLU, TopK, CapacityFactor, Bal3>>("balancing alone: TopK unnormalised, capacity 0.75", [&] {
    auto c2 = cfg;
    c2.capacity_factor = 0.75;
    return c2;
  }(), 101, su);
  su.bias_amp = 0.1;
  check_moe<MoE<SwiGLU, SigmoidBias, Dropless, Bal3>>("balancing alone: SigmoidBias", cfg, 102, su);
  su.bias_amp = 0;
  auto ec = cfg;
  ec.top_k = 1;
  ec.capacity_factor = 1.0;
  check_moe<MoE<SwiGLU, ExpertChoice, CapacityFactor, Bal3>>("balancing alone: ExpertChoice", ec, 103, su);
  // several sequences: the sequence-wise term differs from the batch-wide one
  Buffers buf;
  MoE<SwiGLU, TopK, Dropless, Bal3>::impl<double, Cpu> moe;
  moe.declare(buf.reg, kName, cfg);
  buf.bind(moe, 104);
  const auto x = randn(24 * cfg.d_model, 105);
  std::vector<double> y(x.size());
  RouteContext ctx;
  ctx.batch = 4, ctx.seq_len = 6;
  moe.forward(x.data(), y.data(), 24, ctx);
  const double seq4 = moe.stats().terms[1].second;
  ctx.batch = 1, ctx.seq_len = 24;
  moe.forward(x.data(), y.data(), 24, ctx);
  BOOST_TEST(std::abs(moe.stats().terms[1].second - seq4) > 1e-6);
  BOOST_TEST(std::abs(moe.stats().terms[1].second - moe.stats().terms[0].second) <= 1e-14);  // one sequence: = aux
}

// ---- shared experts --------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(shared_experts) {
  auto cfg = base_cfg();
  cfg.n_shared_experts = 2;
  cfg.d_shared_expert = 8;
  cfg.route_scale = 2.5;
  Setup su;
  su.batch = 4, su.seq_len = 6;
  su.bias_amp = 0.1;
  check_moe<MoE<SwiGLU, SigmoidBias, Dropless, Bal3>>("shared experts 2 × 8 + MoE<SwiGLU, SigmoidBias>", cfg, 110, su);
  cfg.capacity_factor = 0.6;
  cfg.drop_policy = "position";
  check_moe<MoE<GeluFFN, TopK, CapacityFactor, Bal3>>("shared experts 2 × 8 + MoE<GeluFFN, TopK, CapacityFactor>", cfg,
                                                       111, su);
  cfg.capacity_factor = 1.0;
  cfg.top_k = 1;
  check_moe<MoE<SwiGLU, ExpertChoice, CapacityFactor, Bal3>>("shared experts 2 × 8 + MoE<SwiGLU, ExpertChoice>", cfg,
                                                             112, su);
}

// ---- ties at a capacity boundary ------------------------------------------------------------

BOOST_AUTO_TEST_CASE(expert_choice_tie_at_the_column_boundary) {
  // Token t_out becomes a copy of t_in, the last token expert 0 takes: their scores tie in
  // every column, at expert 0's boundary the lower token index wins, and a ±ε step on either
  // row flips that choice (a kink: those elements are skipped, nothing else is).
  using Layer = MoE<SwiGLU, ExpertChoice, CapacityFactor, Bal3>;
  auto cfg = base_cfg();
  cfg.top_k = 1;
  cfg.capacity_factor = 1.0;
  Setup su;
  su.batch = 4, su.seq_len = 6;
  std::int32_t t_in = -1, t_out = -1;
  su.prep = [&](Buffers& b, std::vector<double>& x) {
    const Ref r0 = reference<Layer>(cfg, b.reg, b.p, x, su.n, RouteContext{});
    std::vector<double> col(su.n);
    for (std::int64_t t = 0; t < su.n; ++t) col[t] = r0.probs[t * cfg.n_experts];
    const auto o = order_desc(col);
    t_in = o[r0.cap - 1], t_out = o[r0.cap];
    std::copy(x.begin() + t_in * cfg.d_model, x.begin() + (t_in + 1) * cfg.d_model, x.begin() + t_out * cfg.d_model);
  };
  const auto r = check_moe<Layer>("MoE<SwiGLU, ExpertChoice> with a tie at expert 0's capacity", cfg, 120, su);
  BOOST_TEST_MESSAGE("  tied tokens " << t_in << ", " << t_out);
  BOOST_TEST(r.s.skipped > 0);
  BOOST_TEST(r.s.skipped <= 2 * cfg.d_model);
}

BOOST_AUTO_TEST_CASE(capacity_probability_tie_goes_to_the_earlier_token) {
  // The same with TopK + CapacityFactor (drop_policy probability): two tokens with equal
  // gates straddle an expert's capacity; the earlier token is kept.
  using Layer = MoE<SwiGLU, TopK, CapacityFactor, Bal3>;
  for (bool renorm : {true, false}) {
    auto cfg = base_cfg();
    cfg.capacity_factor = 0.6;
    cfg.router_renormalize = renorm;
    Setup su;
    su.batch = 4, su.seq_len = 6;
    std::int32_t a_in = -1, a_out = -1, ex = -1;
    su.prep = [&](Buffers& b, std::vector<double>& x) {
      const Ref r0 = reference<Layer>(cfg, b.reg, b.p, x, su.n, RouteContext{});
      for (std::int32_t xe = 0; xe < cfg.n_experts && ex < 0; ++xe) {
        std::vector<std::int32_t> list;
        for (std::size_t i = 0; i < r0.expert.size(); ++i)
          if (r0.expert[i] == xe) list.push_back(static_cast<std::int32_t>(i));
        if (static_cast<std::int64_t>(list.size()) <= r0.cap) continue;
        std::stable_sort(list.begin(), list.end(), [&](std::int32_t u, std::int32_t v) { return r0.gate[u] > r0.gate[v]; });
        ex = xe, a_in = list[r0.cap - 1], a_out = list[r0.cap];
      }
      BOOST_REQUIRE(ex >= 0);
      const std::int64_t t_in = r0.token[a_in], t_out = r0.token[a_out];
      std::copy(x.begin() + t_in * cfg.d_model, x.begin() + (t_in + 1) * cfg.d_model, x.begin() + t_out * cfg.d_model);
    };
    su.o.max_skip_fraction = 0.05;
    const auto r = check_moe<Layer>(std::string("MoE<SwiGLU, TopK, CapacityFactor> probability, tie at capacity, ") +
                                        (renorm ? "renormalised" : "unnormalised"),
                                    cfg, 130 + renorm, su);
    BOOST_TEST_MESSAGE("  expert " << ex << ", tied assignments " << a_in << ", " << a_out);
    BOOST_TEST(r.s.skipped > 0);
  }
}
