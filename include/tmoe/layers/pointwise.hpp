#pragma once
// Pointwise math shared by the CPU loops and (later) the CUDA kernels.
#include <cmath>

#include "tmoe/core/macros.hpp"

namespace tmoe::layers {

// GELU, tanh approximation: 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))).
struct GeluTanh {
  template <class T>
  TMOE_HOST_DEVICE static T forward(T x) {
    const T k = T(0.7978845608028654), c = T(0.044715);
    return T(0.5) * x * (T(1) + std::tanh(k * (x + c * x * x * x)));
  }
  template <class T>
  TMOE_HOST_DEVICE static T derivative(T x) {
    const T k = T(0.7978845608028654), c = T(0.044715);
    const T u = k * (x + c * x * x * x), th = std::tanh(u);
    return T(0.5) * (T(1) + th) + T(0.5) * x * (T(1) - th * th) * k * (T(1) + T(3) * c * x * x);
  }
};

// GELU, exact: x Φ(x) = 0.5 x (1 + erf(x / √2)).
struct GeluErf {
  template <class T>
  TMOE_HOST_DEVICE static T forward(T x) {
    return T(0.5) * x * (T(1) + std::erf(x * T(0.7071067811865476)));
  }
  template <class T>
  TMOE_HOST_DEVICE static T derivative(T x) {
    return T(0.5) * (T(1) + std::erf(x * T(0.7071067811865476))) + x * T(0.3989422804014327) * std::exp(T(-0.5) * x * x);
  }
};

// SiLU (swish): x σ(x).
struct Silu {
  template <class T>
  TMOE_HOST_DEVICE static T forward(T x) {
    return x / (T(1) + std::exp(-x));
  }
  template <class T>
  TMOE_HOST_DEVICE static T derivative(T x) {
    const T s = T(1) / (T(1) + std::exp(-x));
    return s * (T(1) + x * (T(1) - s));
  }
};

}  // namespace tmoe::layers
