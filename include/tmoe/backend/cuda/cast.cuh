#pragma once
// Element-type conversion on the device between float, double, bf16 (__nv_bfloat16) and
// fp16 (__half), round-to-nearest-even with overflow to ±inf, NaN kept and fp16 subnormals
// kept — the rounding of precision/narrow.hpp (tmoe::bf16::round, tmoe::fp16::round), which
// the gpu test checks on ties, subnormals, overflow and NaN. A 16-bit source widens to float
// exactly, so bf16 <-> fp16 rounds once; a double source rounds to bf16/fp16 directly (not
// through float, which could round twice).
#include <cstdint>
#include <type_traits>

#include "tmoe/backend/cuda/launch.hpp"
#include "tmoe/backend/cuda/types.hpp"
#include "tmoe/core/macros.hpp"

namespace tmoe::backend::cuda {

// One element from S to D (host and device).
template <class S, class D>
TMOE_HOST_DEVICE inline D convert(S x) {
  static_assert(is_device_scalar_v<S> && is_device_scalar_v<D>, "tmoe: cast supports float, double, bf16 and fp16");
  if constexpr (std::is_same_v<S, D>) {
    return x;
  } else if constexpr (std::is_same_v<S, double>) {
    if constexpr (std::is_same_v<D, float>) return static_cast<float>(x);
    else if constexpr (std::is_same_v<D, __nv_bfloat16>) return __double2bfloat16(x);
    else return __double2half(x);
  } else if constexpr (std::is_same_v<D, double>) {
    return static_cast<double>(load(x));
  } else {
    return store<D>(load(x));
  }
}

namespace detail {

template <class S, class D>
struct CastElements {
  const S* in;
  D* out;
  __device__ void operator()(std::int64_t k) const { out[k] = convert<S, D>(in[k]); }
};

}  // namespace detail

struct CastOps {
  // out (n) = in (n) converted to D
  template <class S, class D>
  static void cast(const S* in, D* out, std::int64_t n) {
    elementwise(n, detail::CastElements<S, D>{in, out});
  }
};

}  // namespace tmoe::backend::cuda
