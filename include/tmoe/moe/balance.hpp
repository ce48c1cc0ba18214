#pragma once
// Balancing policies: each is a term with its own weight from the config, computed per
// micro-batch of N tokens (E experts, k slots per token), reported every step, and — for
// the losses — added to the model's loss with its gradient.
//   AuxLoss     Switch/GShard: aux = E Σ_e f_e P_e,  f_e = routed_e / (N k),
//               P_e = (1/N) Σ_t p_te; 1 at perfect balance.          weight model.aux_loss_weight
//   SeqAuxLoss  DeepSeek-V3 sequence-wise: the same per sequence of T tokens,
//               L_s = Σ_e (E c_se / (k T)) (1/T Σ_{t∈s} p_te), averaged over the sequences.
//                                                                    weight model.seq_aux_loss_weight
//   ZLoss       ST-MoE router z-loss: (1/N) Σ_t (log Σ_e exp l_te)² on the raw router logits.
//                                                                    weight model.z_loss_weight
//   BiasUpdate  DeepSeek-V3 auxiliary-loss-free balancing: no loss; after each optimizer
//               step b_e += γ sign(mean_e load − load_e), load = tokens routed to e over the
//               step's micro-batches, γ = model.bias_update_rate. It reports the load of the
//               busiest expert over the mean (1 at perfect balance). Needs a router with a
//               selection bias (SigmoidBias, GroupLimited<SigmoidBias>).
// p is the router's probability output (softmax for TopK and ExpertChoice, normalised
// sigmoid affinities for SigmoidBias); "routed" counts the router's choices before any
// capacity dropping.
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "tmoe/core/config.hpp"

namespace tmoe {

template <class T>
struct BalanceInput {
  std::int64_t n = 0, e = 0, k = 0;       // tokens, experts, slots per token
  std::int64_t seq_len = 0;               // tokens per sequence (divides n)
  const T* probs = nullptr;               // (N, E)
  const T* logits = nullptr;              // (N, E) raw router logits; null without a router matrix
  const std::int32_t* expert = nullptr;   // (A) routed expert of each assignment
  const std::int32_t* token = nullptr;    // (A) its token
  std::int64_t assignments = 0;           // A
  const std::int64_t* routed = nullptr;   // (E) assignments per expert
};

struct AuxLoss {
  static constexpr const char* name = "aux";
  static constexpr bool is_loss = true, needs_bias = false;
  static double weight(const ModelConfig& c) { return c.aux_loss_weight; }
  template <class T>
  static double value(const BalanceInput<T>& in) {
    double a = 0;
    for (std::int64_t x = 0; x < in.e; ++x) {
      double p = 0;
      for (std::int64_t t = 0; t < in.n; ++t) p += static_cast<double>(in.probs[t * in.e + x]);
      a += frac(in, x) * p / static_cast<double>(in.n);
    }
    return static_cast<double>(in.e) * a;
  }
  // dprobs (N, E) += coeff ∂aux/∂p
  template <class T>
  static void backward(const BalanceInput<T>& in, double coeff, double* dprobs, double*) {
    for (std::int64_t x = 0; x < in.e; ++x) {
      const double d = coeff * static_cast<double>(in.e) * frac(in, x) / static_cast<double>(in.n);
      for (std::int64_t t = 0; t < in.n; ++t) dprobs[t * in.e + x] += d;
    }
  }
  template <class T>
  static double frac(const BalanceInput<T>& in, std::int64_t x) {
    return in.assignments ? static_cast<double>(in.routed[x]) / static_cast<double>(in.assignments) : 0.0;
  }
};

struct SeqAuxLoss {
  static constexpr const char* name = "seq_aux";
  static constexpr bool is_loss = true, needs_bias = false;
  static double weight(const ModelConfig& c) { return c.seq_aux_loss_weight; }
  // c_se / (k T) for every (sequence, expert): the routed share within the sequence.
  template <class T>
  static std::vector<double> shares(const BalanceInput<T>& in) {
    const std::int64_t len = in.seq_len > 0 ? in.seq_len : in.n, seqs = in.n / len;
    std::vector<double> f(static_cast<std::size_t>(seqs * in.e), 0.0);
    const double per = 1.0 / (static_cast<double>(in.k) * static_cast<double>(len));
    for (std::int64_t a = 0; a < in.assignments; ++a) f[(in.token[a] / len) * in.e + in.expert[a]] += per;
    return f;
  }
  template <class T>
  static double value(const BalanceInput<T>& in) {
    const std::int64_t len = in.seq_len > 0 ? in.seq_len : in.n, seqs = in.n / len;
    const auto f = shares(in);
    double total = 0;
    for (std::int64_t s = 0; s < seqs; ++s)
      for (std::int64_t x = 0; x < in.e; ++x) {
        double p = 0;
        for (std::int64_t t = s * len; t < (s + 1) * len; ++t) p += static_cast<double>(in.probs[t * in.e + x]);
        total += static_cast<double>(in.e) * f[s * in.e + x] * p / static_cast<double>(len);
      }
    return total / static_cast<double>(seqs);
  }
  template <class T>
  static void backward(const BalanceInput<T>& in, double coeff, double* dprobs, double*) {
    const std::int64_t len = in.seq_len > 0 ? in.seq_len : in.n, seqs = in.n / len;
    const auto f = shares(in);
    for (std::int64_t t = 0; t < in.n; ++t)
      for (std::int64_t x = 0; x < in.e; ++x)
        dprobs[t * in.e + x] += coeff * static_cast<double>(in.e) * f[(t / len) * in.e + x] /
                                (static_cast<double>(len) * static_cast<double>(seqs));
  }
};

struct ZLoss {
  static constexpr const char* name = "z";
  static constexpr bool is_loss = true, needs_bias = false;
  static double weight(const ModelConfig& c) { return c.z_loss_weight; }
  template <class T>
  static double lse(const T* l, std::int64_t e) {
    double mx = static_cast<double>(l[0]);
    for (std::int64_t i = 1; i < e; ++i) mx = std::max(mx, static_cast<double>(l[i]));
    double s = 0;
    for (std::int64_t i = 0; i < e; ++i) s += std::exp(static_cast<double>(l[i]) - mx);
    return std::log(s) + mx;
  }
  template <class T>
  static double value(const BalanceInput<T>& in) {
    if (!in.logits) return 0;
    double z = 0;
    for (std::int64_t t = 0; t < in.n; ++t) {
      const double v = lse(in.logits + t * in.e, in.e);
      z += v * v;
    }
    return z / static_cast<double>(in.n);
  }
  // dlogits (N, E) += coeff · 2 lse_t softmax(l_t) / N
  template <class T>
  static void backward(const BalanceInput<T>& in, double coeff, double*, double* dlogits) {
    if (!in.logits) return;
    for (std::int64_t t = 0; t < in.n; ++t) {
      const T* l = in.logits + t * in.e;
      const double v = lse(l, in.e), c = coeff * 2.0 * v / static_cast<double>(in.n);
      for (std::int64_t i = 0; i < in.e; ++i) dlogits[t * in.e + i] += c * std::exp(static_cast<double>(l[i]) - v);
    }
  }
};

struct BiasUpdate {
  static constexpr const char* name = "bias_load_max";
  static constexpr bool is_loss = false, needs_bias = true;
  static double weight(const ModelConfig& c) { return c.bias_update_rate; }
  template <class T>
  static double value(const BalanceInput<T>& in) {
    std::int64_t mx = 0;
    for (std::int64_t x = 0; x < in.e; ++x) mx = std::max(mx, in.routed[x]);
    return in.assignments ? static_cast<double>(mx) * static_cast<double>(in.e) / static_cast<double>(in.assignments)
                          : 0.0;
  }
  template <class T>
  static void backward(const BalanceInput<T>&, double, double*, double*) {}
  // b_e += γ sign(mean − load_e); loads summed over the step (and, later, over ranks).
  template <class T>
  static void update(T* bias, const double* load, std::int64_t e, double gamma) {
    double mean = 0;
    for (std::int64_t x = 0; x < e; ++x) mean += load[x];
    mean /= static_cast<double>(e);
    for (std::int64_t x = 0; x < e; ++x) {
      const double d = mean - load[x];
      bias[x] = static_cast<T>(static_cast<double>(bias[x]) + gamma * (d > 0 ? 1.0 : d < 0 ? -1.0 : 0.0));
    }
  }
};

// The balancing terms of an MoE layer, as a compile-time list.
template <class... Ps>
struct Balancing {
  static constexpr const char* name = "balancing";
  static constexpr std::size_t size = sizeof...(Ps);
  static constexpr bool needs_bias = (Ps::needs_bias || ... || false);
  static constexpr const char* names[sizeof...(Ps) + 1] = {Ps::name..., nullptr};
  using list = std::tuple<Ps...>;
};

}  // namespace tmoe
