#pragma once
// Element types on the device: fp32, fp64, and the 16-bit storage types bf16
// (__nv_bfloat16) and fp16 (__half). Kernels load any of them as float (double stays
// double) and store with round-to-nearest-even, the same rounding the CPU backend applies
// through precision/narrow.hpp. Device<Tag> maps a backend-neutral tag to its storage type.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <library_types.h>

#include <type_traits>

#include "tmoe/core/macros.hpp"
#include "tmoe/precision/narrow.hpp"

namespace tmoe::backend::cuda {

template <class T>
struct Scalar;  // load/store and the cuBLAS data type of one element type

template <>
struct Scalar<float> {
  using compute = float;
  static constexpr cudaDataType_t data_type = CUDA_R_32F;
  static constexpr const char* name = "fp32";
  TMOE_HOST_DEVICE static float load(float x) { return x; }
  TMOE_HOST_DEVICE static float store(float x) { return x; }
};
template <>
struct Scalar<double> {
  using compute = double;
  static constexpr cudaDataType_t data_type = CUDA_R_64F;
  static constexpr const char* name = "fp64";
  TMOE_HOST_DEVICE static double load(double x) { return x; }
  TMOE_HOST_DEVICE static double store(double x) { return x; }
};
template <>
struct Scalar<__nv_bfloat16> {
  using compute = float;
  static constexpr cudaDataType_t data_type = CUDA_R_16BF;
  static constexpr const char* name = "bf16";
  TMOE_HOST_DEVICE static float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  TMOE_HOST_DEVICE static __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
};
template <>
struct Scalar<__half> {
  using compute = float;
  static constexpr cudaDataType_t data_type = CUDA_R_16F;
  static constexpr const char* name = "fp16";
  TMOE_HOST_DEVICE static float load(__half x) { return __half2float(x); }
  TMOE_HOST_DEVICE static __half store(float x) { return __float2half_rn(x); }
};

// The compute type of T (float for the 16-bit types).
template <class T>
using compute_t = typename Scalar<T>::compute;

template <class T>
TMOE_HOST_DEVICE inline compute_t<T> load(T x) {
  return Scalar<T>::load(x);
}
template <class T>
TMOE_HOST_DEVICE inline T store(compute_t<T> x) {
  return Scalar<T>::store(x);
}

// The device storage type of a precision tag: float, double, bf16 -> __nv_bfloat16,
// fp16 -> __half.
template <class Tag>
struct DeviceStorage {
  using type = Tag;
};
template <>
struct DeviceStorage<bf16> {
  using type = __nv_bfloat16;
};
template <>
struct DeviceStorage<fp16> {
  using type = __half;
};
template <class Tag>
using device_t = typename DeviceStorage<Tag>::type;

template <class T>
inline constexpr bool is_device_scalar_v =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>;

}  // namespace tmoe::backend::cuda
