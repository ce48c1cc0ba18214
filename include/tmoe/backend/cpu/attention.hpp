#pragma once
// Causal multi-head self-attention core and rotary embeddings on the CPU.
// Layout: qkv (B, T, 3C) with q = [0, C), k = [C, 2C), v = [2C, 3C); head h owns columns
// [h hd, (h+1) hd) of each; att (B, H, T, T) holds the softmax probabilities (upper
// triangle zero); out (B, T, C). Work items are (b, h) pairs, whose products have shapes
// fixed by (T, hd), so a sequence's result does not depend on the batch around it.
#include <cmath>
#include <cstdint>
#include <vector>

#include "tmoe/backend/cpu/gemm.hpp"
#include "tmoe/core/threading.hpp"

namespace tmoe::backend::cpu {

struct AttentionOps {
  // Queries are processed in blocks of kAttnBlock rows; block i only needs keys
  // [0, (i+1)·kAttnBlock), so the causal upper triangle is never computed. Block shapes
  // depend on T and the block index alone.
  static constexpr std::int64_t kAttnBlock = 64;

  template <class T>
  static void attention_forward(const T* qkv, T* att, T* out, std::int64_t b, std::int64_t t, std::int64_t c,
                                std::int64_t h) {
    using detail::cmap;
    using detail::mmap;
    const std::int64_t hd = c / h;
    const T scale = T(1) / std::sqrt(static_cast<T>(hd));
    parallel_for(b * h, [&](std::int64_t item) {
      const std::int64_t bi = item / h, hi = item % h;
      const T* base = qkv + bi * t * 3 * c;
      T* pbase = att + item * t * t;
      for (std::int64_t r0 = 0; r0 < t; r0 += kAttnBlock) {
        const std::int64_t rows = std::min(kAttnBlock, t - r0), keys = r0 + rows;
        auto Q = cmap(base + r0 * 3 * c + hi * hd, rows, hd, 3 * c);
        auto K = cmap(base + c + hi * hd, keys, hd, 3 * c);
        auto V = cmap(base + 2 * c + hi * hd, keys, hd, 3 * c);
        auto P = mmap(pbase + r0 * t, rows, keys, t);
        P.noalias() = scale * (Q * K.transpose());
        for (std::int64_t i = 0; i < rows; ++i) {
          T* row = &P(i, 0);
          const std::int64_t last = r0 + i;  // token r0+i sees keys 0..r0+i
          T mx = row[0];
          for (std::int64_t j = 1; j <= last; ++j) mx = std::max(mx, row[j]);
          double s = 0;
          for (std::int64_t j = 0; j <= last; ++j) {
            row[j] = std::exp(row[j] - mx);
            s += row[j];
          }
          const T inv = static_cast<T>(1.0 / s);
          for (std::int64_t j = 0; j <= last; ++j) row[j] *= inv;
          for (std::int64_t j = last + 1; j < t; ++j) row[j] = T(0);
        }
        auto O = mmap(out + (bi * t + r0) * c + hi * hd, rows, hd, c);
        O.noalias() = P * V;
      }
    });
  }

  // dqkv = ∂L/∂qkv (overwritten) from dout (B, T, C). dK and dV sum the query blocks'
  // contributions in block order.
  template <class T>
  static void attention_backward(const T* dout, const T* qkv, const T* att, T* dqkv, std::int64_t b, std::int64_t t,
                                 std::int64_t c, std::int64_t h) {
    using detail::cmap;
    using detail::mmap;
    using Mat = detail::RowMat<T>;
    const std::int64_t hd = c / h;
    const T scale = T(1) / std::sqrt(static_cast<T>(hd));
    parallel_for(b * h, [&](std::int64_t item) {
      const std::int64_t bi = item / h, hi = item % h;
      const T* base = qkv + bi * t * 3 * c;
      T* dbase = dqkv + bi * t * 3 * c;
      mmap(dbase + c + hi * hd, t, hd, 3 * c).setZero();
      mmap(dbase + 2 * c + hi * hd, t, hd, 3 * c).setZero();
      Mat dS;
      for (std::int64_t r0 = 0; r0 < t; r0 += kAttnBlock) {
        const std::int64_t rows = std::min(kAttnBlock, t - r0), keys = r0 + rows;
        auto Q = cmap(base + r0 * 3 * c + hi * hd, rows, hd, 3 * c);
        auto K = cmap(base + c + hi * hd, keys, hd, 3 * c);
        auto V = cmap(base + 2 * c + hi * hd, keys, hd, 3 * c);
        auto P = cmap(att + item * t * t + r0 * t, rows, keys, t);
        auto dO = cmap(dout + (bi * t + r0) * c + hi * hd, rows, hd, c);
        auto dQ = mmap(dbase + r0 * 3 * c + hi * hd, rows, hd, 3 * c);
        auto dK = mmap(dbase + c + hi * hd, keys, hd, 3 * c);
        auto dV = mmap(dbase + 2 * c + hi * hd, keys, hd, 3 * c);
        dV.noalias() += P.transpose() * dO;
        dS.noalias() = dO * V.transpose();  // dP, turned into dS in place
        for (std::int64_t i = 0; i < rows; ++i) {
          const std::int64_t last = r0 + i;
          double dot = 0;
          for (std::int64_t j = 0; j <= last; ++j) dot += static_cast<double>(dS(i, j)) * P(i, j);
          for (std::int64_t j = 0; j <= last; ++j) dS(i, j) = P(i, j) * (dS(i, j) - static_cast<T>(dot)) * scale;
          for (std::int64_t j = last + 1; j < keys; ++j) dS(i, j) = T(0);
        }
        dQ.noalias() = dS * K;
        dK.noalias() += dS.transpose() * Q;
      }
    });
  }

  // Rotary embedding (NeoX/LLaMA "rotate halves"): for each head vector x of size hd and
  // i < hd/2, with θ_i = base^(-2i/hd) and angle a = pos θ_i:
  //   y_i        = x_i cos a - x_{i+hd/2} sin a
  //   y_{i+hd/2} = x_{i+hd/2} cos a + x_i sin a
  // applied in place to q and k of qkv (B, T, 3C). `sign` = -1 applies the inverse rotation
  // (the backward pass). cos/sin come from a (T, hd/2) table.
  template <class T>
  static void rope_apply(T* qkv, const T* cos_t, const T* sin_t, std::int64_t b, std::int64_t t, std::int64_t c,
                         std::int64_t h, T sign) {
    const std::int64_t hd = c / h, half = hd / 2;
    parallel_for(b * t, [&](std::int64_t bt) {
      const std::int64_t pos = bt % t;
      T* row = qkv + bt * 3 * c;
      for (std::int64_t part = 0; part < 2; ++part)
        for (std::int64_t hi = 0; hi < h; ++hi) {
          T* x = row + part * c + hi * hd;
          for (std::int64_t i = 0; i < half; ++i) {
            const T co = cos_t[pos * half + i], si = sign * sin_t[pos * half + i];
            const T x1 = x[i], x2 = x[i + half];
            x[i] = x1 * co - x2 * si;
            x[i + half] = x2 * co + x1 * si;
          }
        }
    });
  }
};

}  // namespace tmoe::backend::cpu
