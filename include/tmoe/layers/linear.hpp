#pragma once
// Linear layer y = x Wᵀ (+ b), W stored (out, in) as PyTorch's nn.Linear.
//   backward: dx (+)= dy W;  dW += dyᵀ x (summed over tokens in fixed chunks);  db += Σ dy.
#include <cstdint>

#include "tmoe/core/macros.hpp"
#include <string>

#include "tmoe/core/registry.hpp"

namespace tmoe::layers {

// Tensor parallelism (layers/tensor_group.hpp): a column-parallel linear holds `index` of
// `parts` slices of the output features (of each of `blocks` fused outputs, e.g. q|k|v), its
// bias sliced alike; a row-parallel linear holds that slice of the input features and the
// whole bias, which only rank 0 adds (the partial outputs are summed by the layer).
struct TensorSplit {
  enum Kind { kNone, kColumn, kRow };
  Kind kind = kNone;
  int parts = 1, index = 0, blocks = 1;
  bool active() const { return kind != kNone && parts > 1; }
};

template <class T, class B>
struct Linear {
  std::int64_t in = 0, out = 0;  // this rank's features (its slice under tensor parallelism)
  Param<T> weight, bias;
  bool add_bias = true;  // false on the ranks > 0 of a row-parallel linear
  // Products in full precision even under a narrow storage type (B::gemm_exact): the MoE
  // router keeps fp32 logits and gradients under MixedBf16/MixedFp16.
  bool exact = false;

  void declare(ParamRegistry& r, const std::string& name, std::int64_t in_features, std::int64_t out_features,
               bool with_bias, std::uint32_t tags, double std) {
    declare(r, name, in_features, out_features, with_bias, tags, std, TensorSplit{});
  }
  // in_features, out_features: the whole layer's; `tp` says which slice this rank holds.
  void declare(ParamRegistry& r, const std::string& name, std::int64_t in_features, std::int64_t out_features,
               bool with_bias, std::uint32_t tags, double std, TensorSplit tp) {
    const bool col = tp.active() && tp.kind == TensorSplit::kColumn, row = tp.active() && tp.kind == TensorSplit::kRow;
    const Split ws = col ? Split{0, tp.parts, tp.index, tp.blocks} : row ? Split{1, tp.parts, tp.index, tp.blocks} : Split{};
    weight.index = r.add_split(name + ".weight", Shape{out_features, in_features}, ws, tags, Init::kNormal, std);
    in = r[weight.index].shape[1];
    out = r[weight.index].shape[0];
    add_bias = !row || tp.index == 0;
    if (with_bias)
      bias.index = r.add_split(name + ".bias", Shape{out_features}, col ? Split{0, tp.parts, tp.index, tp.blocks} : Split{},
                               tags | kTagBias, Init::kZeros);
  }
  void bind(const ParamRegistry& r, T* p, T* g) {
    weight.bind(r, p, g);
    if (bias) bias.bind(r, p, g);
  }

  // y (n, out) = x (n, in) Wᵀ + b
  void forward(const T* x, T* y, std::int64_t n) const {
    if (exact) B::gemm_exact(B::Trans::kNo, B::Trans::kYes, n, out, in, T(1), x, weight.w, T(0), y);
    else B::gemm(B::Trans::kNo, B::Trans::kYes, n, out, in, T(1), x, weight.w, T(0), y);
    if (bias && add_bias) {
      const T* bb = bias.w;
      const std::int64_t o = out;
      B::for_rows(n, [=] TMOE_LAMBDA (std::int64_t i) {
        for (std::int64_t j = 0; j < o; ++j) y[i * o + j] += bb[j];
      });
    }
  }

  // dx (n, in): overwritten, or accumulated when accumulate_dx; parameter grads accumulate.
  void backward(const T* x, const T* dy, T* dx, std::int64_t n, bool accumulate_dx) const {
    if (dx && exact) B::gemm_exact(B::Trans::kNo, B::Trans::kNo, n, in, out, T(1), dy, weight.w, accumulate_dx ? T(1) : T(0), dx);
    else if (dx) B::gemm(B::Trans::kNo, B::Trans::kNo, n, in, out, T(1), dy, weight.w, accumulate_dx ? T(1) : T(0), dx);
    B::gemm(B::Trans::kYes, B::Trans::kNo, out, in, n, T(1), dy, x, T(1), weight.g);
    if (bias) {
      const std::int64_t o = out;
      B::reduce_rows(n, o, bias.g, [=] TMOE_LAMBDA (std::int64_t i, double* acc) {
        for (std::int64_t j = 0; j < o; ++j) acc[j] += dy[i * o + j];
      });
    }
  }

  std::int64_t flops_per_token() const { return 2 * in * out; }
};

}  // namespace tmoe::layers
