#pragma once
// What every gpu test shares: a global fixture that ends the program with exit code 77
// (CTest: skipped) and a message when no CUDA device is present, host references and the
// relative error ‖gpu − ref‖ / ‖ref‖ the ops are judged by, random inputs, and poisoned
// outputs (0xff bytes: NaN in fp32/bf16/fp16) so that elements a kernel fails to write are
// caught.
#if defined(TMOE_BOOST_TEST_HEADER_ONLY)
#include <boost/test/included/unit_test.hpp>  // GPU machine: Boost's headers only
#else
#include <boost/test/unit_test.hpp>
#endif
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "tmoe/cuda.hpp"

namespace gpu_test {

struct RequireDevice {
  RequireDevice() {
    const std::string why = tmoe::backend::cuda::no_device_reason();
    if (!why.empty()) {
      std::printf("SKIPPED: no CUDA device (%s)\n", why.c_str());
      std::fflush(stdout);
      std::_Exit(77);
    }
  }
};

inline std::vector<float> random_vector(std::int64_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = d(g);
  return v;
}

// ‖a − b‖ / ‖b‖ (‖b‖ = 0: ‖a‖); NaN anywhere in a gives NaN, which fails every bound.
template <class A, class B>
double rel_error(const std::vector<A>& a, const std::vector<B>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    num += d * d;
    den += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// Host copy of device values of any element type, as double.
template <class T>
std::vector<double> fetch(const T* device, std::int64_t n) {
  auto h = tmoe::backend::cuda::to_host(device, n);
  std::vector<double> out(h.size());
  for (std::size_t i = 0; i < h.size(); ++i) out[i] = static_cast<double>(tmoe::backend::cuda::load(h[i]));
  return out;
}

// Device tensor of element type T holding `v` (rounded to T).
template <class T>
tmoe::backend::cuda::DeviceTensor<T> upload(const std::vector<float>& v) {
  std::vector<T> h(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) h[i] = tmoe::backend::cuda::store<T>(static_cast<tmoe::backend::cuda::compute_t<T>>(v[i]));
  return tmoe::backend::cuda::to_device(h);
}

// Values of `v` after rounding to T and back (the reference sees the inputs the GPU sees).
template <class T>
std::vector<double> rounded(const std::vector<float>& v) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i)
    out[i] = static_cast<double>(tmoe::backend::cuda::load(tmoe::backend::cuda::store<T>(static_cast<tmoe::backend::cuda::compute_t<T>>(v[i]))));
  return out;
}

// A device buffer of n elements whose bytes are all 0xff (NaN for floating types).
template <class T>
tmoe::backend::cuda::DeviceTensor<T> poisoned(std::int64_t n) {
  tmoe::backend::cuda::DeviceTensor<T> t;
  t.ensure(tmoe::Shape{n});
  t.fill_bytes(0xff);
  return t;
}

}  // namespace gpu_test

using gpu_test::RequireDevice;
BOOST_TEST_GLOBAL_FIXTURE(RequireDevice);
