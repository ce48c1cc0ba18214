#pragma once
// Pointwise activations on the device, with the math of layers/pointwise.hpp (the same
// TMOE_HOST_DEVICE functors the CPU uses), in the compute type (float for bf16/fp16):
//  - swiglu_forward / swiglu_backward: the ops of cpu/activation.hpp;
//  - gelu_forward / gelu_backward<Act>: h = act(a) and d = dh ⊙ act'(a) over a buffer, for
//    Act = layers::GeluTanh or layers::GeluErf (GeluFFN's hidden layer). The CPU backend has
//    no such op (GeluFFN runs its loop through B::for_rows); these are the CUDA form of that
//    loop, with d allowed to alias dh as GeluFFN's in-place `dh *= act'(a)` needs.
#include <cstdint>

#include "tmoe/backend/cuda/launch.hpp"
#include "tmoe/backend/cuda/types.hpp"
#include "tmoe/layers/pointwise.hpp"

namespace tmoe::backend::cuda {

namespace detail {

template <class T>
struct SwigluForward {
  const T *a1, *a3;
  T* h;
  __device__ void operator()(std::int64_t k) const {
    h[k] = store<T>(layers::Silu::forward(load(a1[k])) * load(a3[k]));
  }
};

template <class T>
struct SwigluBackward {
  const T *dh, *a1, *a3;
  T *d1, *d3;
  __device__ void operator()(std::int64_t k) const {
    const compute_t<T> x = load(a1[k]), g = load(dh[k]), up = load(a3[k]);
    // Both reads come first, so d1 or d3 may alias an input of the same element.
    const compute_t<T> o1 = g * up * layers::Silu::derivative(x), o3 = g * layers::Silu::forward(x);
    d1[k] = store<T>(o1);
    d3[k] = store<T>(o3);
  }
};

template <class Act, class T>
struct GeluForward {
  const T* a;
  T* h;
  __device__ void operator()(std::int64_t k) const { h[k] = store<T>(Act::forward(load(a[k]))); }
};

template <class Act, class T>
struct GeluBackward {
  const T *dh, *a;
  T* d;
  __device__ void operator()(std::int64_t k) const { d[k] = store<T>(load(dh[k]) * Act::derivative(load(a[k]))); }
};

}  // namespace detail

struct ActivationOps {
  // h = silu(a1) ⊙ a3, all (rows, width)
  template <class T>
  static void swiglu_forward(const T* a1, const T* a3, T* h, std::int64_t rows, std::int64_t width) {
    elementwise(rows * width, detail::SwigluForward<T>{a1, a3, h});
  }

  // From dh: d1 = dh ⊙ a3 ⊙ silu'(a1), d3 = dh ⊙ silu(a1)
  template <class T>
  static void swiglu_backward(const T* dh, const T* a1, const T* a3, T* d1, T* d3, std::int64_t rows, std::int64_t width) {
    elementwise(rows * width, detail::SwigluBackward<T>{dh, a1, a3, d1, d3});
  }

  // h (n) = act(a)
  template <class Act, class T>
  static void gelu_forward(const T* a, T* h, std::int64_t n) {
    elementwise(n, detail::GeluForward<Act, T>{a, h});
  }

  // d (n) = dh ⊙ act'(a); d may be dh.
  template <class Act, class T>
  static void gelu_backward(const T* dh, const T* a, T* d, std::int64_t n) {
    elementwise(n, detail::GeluBackward<Act, T>{dh, a, d});
  }
};

}  // namespace tmoe::backend::cuda
