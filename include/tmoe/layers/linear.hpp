#pragma once
// Linear layer y = x Wᵀ (+ b), W stored (out, in) as PyTorch's nn.Linear.
//   backward: dx (+)= dy W;  dW += dyᵀ x (summed over tokens in fixed chunks);  db += Σ dy.
#include <cstdint>
#include <string>

#include "tmoe/core/registry.hpp"

namespace tmoe::layers {

template <class T, class B>
struct Linear {
  std::int64_t in = 0, out = 0;
  Param<T> weight, bias;
  // Products in full precision even under a narrow storage type (B::gemm_exact): the MoE
  // router keeps fp32 logits and gradients under MixedBf16/MixedFp16.
  bool exact = false;

  void declare(ParamRegistry& r, const std::string& name, std::int64_t in_features, std::int64_t out_features,
               bool with_bias, std::uint32_t tags, double std) {
    in = in_features;
    out = out_features;
    weight.index = r.add(name + ".weight", Shape{out, in}, tags, Init::kNormal, std);
    if (with_bias) bias.index = r.add(name + ".bias", Shape{out}, tags | kTagBias, Init::kZeros);
  }
  void bind(const ParamRegistry& r, T* p, T* g) {
    weight.bind(r, p, g);
    if (bias) bias.bind(r, p, g);
  }

  // y (n, out) = x (n, in) Wᵀ + b
  void forward(const T* x, T* y, std::int64_t n) const {
    if (exact) B::gemm_exact(B::Trans::kNo, B::Trans::kYes, n, out, in, T(1), x, weight.w, T(0), y);
    else B::gemm(B::Trans::kNo, B::Trans::kYes, n, out, in, T(1), x, weight.w, T(0), y);
    if (bias) {
      const T* bb = bias.w;
      const std::int64_t o = out;
      B::for_rows(n, [=](std::int64_t i) {
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
      B::reduce_rows(n, o, bias.g, [=](std::int64_t i, double* acc) {
        for (std::int64_t j = 0; j < o; ++j) acc[j] += dy[i * o + j];
      });
    }
  }

  std::int64_t flops_per_token() const { return 2 * in * out; }
};

}  // namespace tmoe::layers
