#pragma once
// Normalisation policies. Each is a tag with a nested layer template `impl<T, B>`.
#include <cstdint>
#include <string>

#include "tmoe/core/registry.hpp"
#include "tmoe/tensor/tensor.hpp"

namespace tmoe {

struct RmsNorm {
  static constexpr const char* name = "rmsnorm";
  template <class T, class B>
  struct impl {
    std::int64_t c = 0;
    double eps = 1e-5;
    Param<T> weight;
    BackendTensor<B, T> rstd;       // (N)
    const T* x = nullptr; // saved input (N, C)

    void declare(ParamRegistry& r, const std::string& name, std::int64_t width, double epsilon) {
      c = width;
      eps = epsilon;
      weight.index = r.add(name + ".weight", Shape{c}, kTagNorm, Init::kOnes);
    }
    void bind(const ParamRegistry& r, T* p, T* g) { weight.bind(r, p, g); }
    void release() { rstd.release(); }
    static std::int64_t activation_bytes(std::int64_t n) { return n * static_cast<std::int64_t>(sizeof(T)); }
    void forward(const T* in, T* out, std::int64_t n) {
      if (rstd.numel() != n) rstd.resize(Shape{n});
      x = in;
      B::rmsnorm_forward(in, weight.w, out, rstd.data(), n, c, eps);
    }
    void backward(const T* dout, T* dx, std::int64_t n, bool accumulate_dx) {
      B::rmsnorm_backward(dout, x, weight.w, rstd.data(), dx, weight.g, n, c, accumulate_dx);
    }
  };
};

struct LayerNorm {
  static constexpr const char* name = "layernorm";
  template <class T, class B>
  struct impl {
    std::int64_t c = 0;
    double eps = 1e-5;
    Param<T> weight, bias;
    BackendTensor<B, T> mean, rstd;  // (N)
    const T* x = nullptr;

    void declare(ParamRegistry& r, const std::string& name, std::int64_t width, double epsilon) {
      c = width;
      eps = epsilon;
      weight.index = r.add(name + ".weight", Shape{c}, kTagNorm, Init::kOnes);
      bias.index = r.add(name + ".bias", Shape{c}, kTagNorm | kTagBias, Init::kZeros);
    }
    void bind(const ParamRegistry& r, T* p, T* g) {
      weight.bind(r, p, g);
      bias.bind(r, p, g);
    }
    void release() {
      mean.release();
      rstd.release();
    }
    static std::int64_t activation_bytes(std::int64_t n) { return 2 * n * static_cast<std::int64_t>(sizeof(T)); }
    void forward(const T* in, T* out, std::int64_t n) {
      if (rstd.numel() != n) {
        rstd.resize(Shape{n});
        mean.resize(Shape{n});
      }
      x = in;
      B::layernorm_forward(in, weight.w, bias.w, out, mean.data(), rstd.data(), n, c, eps);
    }
    void backward(const T* dout, T* dx, std::int64_t n, bool accumulate_dx) {
      B::layernorm_backward(dout, x, weight.w, mean.data(), rstd.data(), dx, weight.g, bias.g, n, c, accumulate_dx);
    }
  };
};

}  // namespace tmoe

#include "tmoe/core/concepts.hpp"
static_assert(tmoe::NormPolicy<tmoe::RmsNorm>);
static_assert(tmoe::NormPolicy<tmoe::LayerNorm>);
