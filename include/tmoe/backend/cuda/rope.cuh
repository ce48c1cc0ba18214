#pragma once
// Rotary position embedding on the device, AttentionOps::rope_apply of cpu/attention.hpp:
// rotates q and k (the first two thirds of each (3C) qkv row) of every head by the angle of
// the row's position, pairing element i with i + hd/2 ("rotate half"); sign = -1 applies the
// inverse rotation, which is the backward. One thread per rotated pair, so it runs in place.
#include <cstdint>

#include "tmoe/backend/cuda/launch.hpp"
#include "tmoe/backend/cuda/types.hpp"

namespace tmoe::backend::cuda {

namespace detail {

template <class T>
struct RopeApply {
  T* qkv;                   // (B, T, 3C)
  const T *cos_t, *sin_t;   // (T, hd/2)
  std::int64_t t, c, h, half;
  compute_t<T> sign;
  __device__ void operator()(std::int64_t k) const {
    const std::int64_t i = k % half;
    std::int64_t rest = k / half;
    const std::int64_t hi = rest % h;
    rest /= h;
    const std::int64_t part = rest % 2, bt = rest / 2, pos = bt % t;
    T* x = qkv + bt * 3 * c + part * c + hi * (c / h);
    const compute_t<T> co = load(cos_t[pos * half + i]), si = sign * load(sin_t[pos * half + i]);
    const compute_t<T> x1 = load(x[i]), x2 = load(x[i + half]);
    x[i] = store<T>(x1 * co - x2 * si);
    x[i + half] = store<T>(x2 * co + x1 * si);
  }
};

}  // namespace detail

struct RopeOps {
  // qkv (b, t, 3c) with h heads of c / h; cos_t, sin_t (t, hd / 2); sign ±1.
  template <class T>
  static void rope_apply(T* qkv, const T* cos_t, const T* sin_t, std::int64_t b, std::int64_t t, std::int64_t c,
                         std::int64_t h, T sign) {
    if (h <= 0) return;
    const std::int64_t half = (c / h) / 2;
    if (half <= 0) return;
    elementwise(b * t * 2 * h * half, detail::RopeApply<T>{qkv, cos_t, sin_t, t, c, h, half, load(sign)});
  }
};

}  // namespace tmoe::backend::cuda
