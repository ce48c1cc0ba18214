#pragma once
// RMSNorm and LayerNorm over the last dimension; sums over a row in double.
//   RMSNorm:   y = x / sqrt(mean(x²) + eps) * w          (eps inside the square root)
//   LayerNorm: y = (x - mean) / sqrt(var + eps) * w + b  (biased variance, as PyTorch)
#include <cmath>
#include <cstdint>

#include "tmoe/backend/cpu/reduce.hpp"

namespace tmoe::backend::cpu {

struct NormOps {
  template <class T>
  static void rmsnorm_forward(const T* x, const T* w, T* y, T* rstd, std::int64_t n, std::int64_t c, double eps) {
    ReduceOps::for_rows(n, [&](std::int64_t i) {
      const T* xi = x + i * c;
      double ss = 0;
      for (std::int64_t j = 0; j < c; ++j) ss += static_cast<double>(xi[j]) * xi[j];
      const T r = static_cast<T>(1.0 / std::sqrt(ss / static_cast<double>(c) + eps));
      rstd[i] = r;
      for (std::int64_t j = 0; j < c; ++j) y[i * c + j] = xi[j] * r * w[j];
    });
  }

  // dx (+)= ∂L/∂x; dw += Σ_rows dy ⊙ x̂.
  template <class T>
  static void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw, std::int64_t n,
                               std::int64_t c, bool accumulate_dx) {
    ReduceOps::for_rows(n, [&](std::int64_t i) {
      const T* xi = x + i * c;
      const T* dyi = dy + i * c;
      const double r = rstd[i];
      double dot = 0;  // Σ_j (dy w)_j x̂_j
      for (std::int64_t j = 0; j < c; ++j) dot += static_cast<double>(dyi[j]) * w[j] * xi[j] * r;
      const double m = dot / static_cast<double>(c);
      for (std::int64_t j = 0; j < c; ++j) {
        const double g = r * (static_cast<double>(dyi[j]) * w[j] - xi[j] * r * m);
        dx[i * c + j] = static_cast<T>(accumulate_dx ? dx[i * c + j] + g : g);
      }
    });
    ReduceOps::reduce_rows(n, c, dw, [&](std::int64_t i, double* acc) {
      const double r = rstd[i];
      for (std::int64_t j = 0; j < c; ++j) acc[j] += static_cast<double>(dy[i * c + j]) * x[i * c + j] * r;
    });
  }

  template <class T>
  static void layernorm_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, std::int64_t n,
                                std::int64_t c, double eps) {
    ReduceOps::for_rows(n, [&](std::int64_t i) {
      const T* xi = x + i * c;
      double s = 0;
      for (std::int64_t j = 0; j < c; ++j) s += xi[j];
      const double mu = s / static_cast<double>(c);
      double v = 0;
      for (std::int64_t j = 0; j < c; ++j) v += (xi[j] - mu) * (xi[j] - mu);
      const double r = 1.0 / std::sqrt(v / static_cast<double>(c) + eps);
      mean[i] = static_cast<T>(mu);
      rstd[i] = static_cast<T>(r);
      for (std::int64_t j = 0; j < c; ++j) y[i * c + j] = static_cast<T>((xi[j] - mu) * r * w[j] + b[j]);
    });
  }

  template <class T>
  static void layernorm_backward(const T* dy, const T* x, const T* w, const T* mean, const T* rstd, T* dx, T* dw,
                                 T* db, std::int64_t n, std::int64_t c, bool accumulate_dx) {
    ReduceOps::for_rows(n, [&](std::int64_t i) {
      const T* xi = x + i * c;
      const T* dyi = dy + i * c;
      const double mu = mean[i], r = rstd[i];
      double sg = 0, sgx = 0;  // Σ dx̂, Σ dx̂ x̂
      for (std::int64_t j = 0; j < c; ++j) {
        const double g = static_cast<double>(dyi[j]) * w[j];
        sg += g;
        sgx += g * (xi[j] - mu) * r;
      }
      sg /= static_cast<double>(c);
      sgx /= static_cast<double>(c);
      for (std::int64_t j = 0; j < c; ++j) {
        const double xh = (xi[j] - mu) * r;
        const double g = r * (static_cast<double>(dyi[j]) * w[j] - sg - xh * sgx);
        dx[i * c + j] = static_cast<T>(accumulate_dx ? dx[i * c + j] + g : g);
      }
    });
    ReduceOps::reduce_rows(n, c, dw, [&](std::int64_t i, double* acc) {
      const double mu = mean[i], r = rstd[i];
      for (std::int64_t j = 0; j < c; ++j) acc[j] += static_cast<double>(dy[i * c + j]) * (x[i * c + j] - mu) * r;
    });
    ReduceOps::reduce_rows(n, c, db, [&](std::int64_t i, double* acc) {
      for (std::int64_t j = 0; j < c; ++j) acc[j] += dy[i * c + j];
    });
  }
};

}  // namespace tmoe::backend::cpu
