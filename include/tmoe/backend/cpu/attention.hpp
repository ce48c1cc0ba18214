#pragma once
// Causal multi-head self-attention core and rotary embeddings on the CPU.
// Layout: qkv (B, T, 3C) with q = [0, C), k = [C, 2C), v = [2C, 3C); head h owns columns
// [h hd, (h+1) hd) of each; att (B, H, T, T) holds the softmax probabilities (upper
// triangle zero); out (B, T, C). Work items are (b, h) pairs, whose products have shapes
// fixed by (T, hd), so a sequence's result does not depend on the batch around it.
// Options (layers/dropout.hpp): dropout on the probabilities, keyed by the query's global
// token and (head, key) element, and store_probs = false, which keeps no (B, H, T, T)
// buffer: the backward recomputes P from q and k with the forward's code and shapes.
#include <cmath>
#include <cstdint>
#include <vector>

#include "tmoe/backend/cpu/gemm.hpp"
#include "tmoe/core/threading.hpp"
#include "tmoe/layers/dropout.hpp"

namespace tmoe::backend::cpu {

struct AttentionOps {
  // Queries are processed in blocks of kAttnBlock rows; block i only needs keys
  // [0, (i+1)·kAttnBlock), so the causal upper triangle is never computed. Block shapes
  // depend on T and the block index alone.
  static constexpr std::int64_t kAttnBlock = 64;

  // P = softmax(scale · Q Kᵀ) of one query block, causal: row i (token r0 + i) sees keys
  // 0..r0+i; the rest of the row up to T is zeroed. The forward and a backward that
  // recomputes the probabilities both call it with the same shapes, so they agree bitwise.
  template <class T, class QMap, class KMap, class PMap>
  static void probs_block(const QMap& Q, const KMap& K, PMap& P, T scale, std::int64_t r0, std::int64_t rows,
                          std::int64_t t) {
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
  }

  // Dropout factors F (rows, keys) of a query block: F(i, j) = 1/(1 − p) or 0 for the query
  // token of row r0 + i of sequence bi, head hi, key j (causal zeros beyond the diagonal).
  template <class T, class FMap>
  static void dropout_block(const AttentionOptions& o, const DropoutMask& dm, FMap& F, std::int64_t bi,
                            std::int64_t hi, std::int64_t r0, std::int64_t rows, std::int64_t keys, std::int64_t t) {
    const std::int64_t stride = o.head_stride > 0 ? o.head_stride : t;
    const std::uint64_t e0 = o.element_offset + static_cast<std::uint64_t>(hi * stride);
    for (std::int64_t i = 0; i < rows; ++i) {
      const std::int64_t last = r0 + i;
      T* f = &F(i, 0);
      dm.factors(static_cast<std::uint64_t>(o.token(bi * t + last)), e0, last + 1, f);
      for (std::int64_t j = last + 1; j < keys; ++j) f[j] = T(0);
    }
  }

  // opt: attention dropout and store_probs (layers/dropout.hpp); with store_probs false,
  // att is neither read nor written (may be null).
  template <class T>
  static void attention_forward(const T* qkv, T* att, T* out, std::int64_t b, std::int64_t t, std::int64_t c,
                                std::int64_t h, const AttentionOptions& opt = {}) {
    using detail::cmap;
    using detail::mmap;
    using Mat = detail::RowMat<T>;
    const std::int64_t hd = c / h;
    const T scale = T(1) / std::sqrt(static_cast<T>(hd));
    const DropoutMask dm = opt.mask();
    const bool drop = dm.active(), store = opt.store_probs;
    parallel_for(b * h, [&](std::int64_t item) {
      const std::int64_t bi = item / h, hi = item % h;
      const T* base = qkv + bi * t * 3 * c;
      Mat scratch, F;  // probabilities when not stored; dropout factors, then P ⊙ F
      if (!store) scratch.resize(std::min(kAttnBlock, t), t);
      if (drop) F.resize(std::min(kAttnBlock, t), t);
      for (std::int64_t r0 = 0; r0 < t; r0 += kAttnBlock) {
        const std::int64_t rows = std::min(kAttnBlock, t - r0), keys = r0 + rows;
        auto Q = cmap(base + r0 * 3 * c + hi * hd, rows, hd, 3 * c);
        auto K = cmap(base + c + hi * hd, keys, hd, 3 * c);
        auto V = cmap(base + 2 * c + hi * hd, keys, hd, 3 * c);
        auto P = mmap(store ? att + item * t * t + r0 * t : scratch.data(), rows, keys, t);
        probs_block(Q, K, P, scale, r0, rows, t);
        auto O = mmap(out + (bi * t + r0) * c + hi * hd, rows, hd, c);
        if (!drop) {
          O.noalias() = P * V;
        } else {
          auto Pd = mmap(F.data(), rows, keys, t);
          dropout_block<T>(opt, dm, Pd, bi, hi, r0, rows, keys, t);
          Pd.array() *= P.array();
          O.noalias() = Pd * V;
        }
      }
    });
  }

  // dqkv = ∂L/∂qkv (overwritten) from dout (B, T, C). dK and dV sum the query blocks'
  // contributions in block order. With dropout: dV = (P ⊙ F)ᵀ dO, dP = (dO Vᵀ) ⊙ F, the
  // factors F regenerated from the keys of the forward (same opt).
  template <class T>
  static void attention_backward(const T* dout, const T* qkv, const T* att, T* dqkv, std::int64_t b, std::int64_t t,
                                 std::int64_t c, std::int64_t h, const AttentionOptions& opt = {}) {
    using detail::cmap;
    using detail::mmap;
    using Mat = detail::RowMat<T>;
    const std::int64_t hd = c / h;
    const T scale = T(1) / std::sqrt(static_cast<T>(hd));
    const DropoutMask dm = opt.mask();
    const bool drop = dm.active(), store = opt.store_probs;
    parallel_for(b * h, [&](std::int64_t item) {
      const std::int64_t bi = item / h, hi = item % h;
      const T* base = qkv + bi * t * 3 * c;
      T* dbase = dqkv + bi * t * 3 * c;
      mmap(dbase + c + hi * hd, t, hd, 3 * c).setZero();
      mmap(dbase + 2 * c + hi * hd, t, hd, 3 * c).setZero();
      Mat dS, scratch, F, Pd;
      if (!store) scratch.resize(std::min(kAttnBlock, t), t);
      if (drop) F.resize(std::min(kAttnBlock, t), t), Pd.resize(std::min(kAttnBlock, t), t);
      for (std::int64_t r0 = 0; r0 < t; r0 += kAttnBlock) {
        const std::int64_t rows = std::min(kAttnBlock, t - r0), keys = r0 + rows;
        auto Q = cmap(base + r0 * 3 * c + hi * hd, rows, hd, 3 * c);
        auto K = cmap(base + c + hi * hd, keys, hd, 3 * c);
        auto V = cmap(base + 2 * c + hi * hd, keys, hd, 3 * c);
        auto P = cmap(store ? att + item * t * t + r0 * t : scratch.data(), rows, keys, t);
        if (!store) {
          auto Pw = mmap(scratch.data(), rows, keys, t);
          probs_block(Q, K, Pw, scale, r0, rows, t);
        }
        auto dO = cmap(dout + (bi * t + r0) * c + hi * hd, rows, hd, c);
        auto dQ = mmap(dbase + r0 * 3 * c + hi * hd, rows, hd, 3 * c);
        auto dK = mmap(dbase + c + hi * hd, keys, hd, 3 * c);
        auto dV = mmap(dbase + 2 * c + hi * hd, keys, hd, 3 * c);
        if (!drop) {
          dV.noalias() += P.transpose() * dO;
          dS.noalias() = dO * V.transpose();  // dP, turned into dS in place
        } else {
          auto Fm = mmap(F.data(), rows, keys, t);
          dropout_block<T>(opt, dm, Fm, bi, hi, r0, rows, keys, t);
          auto Pdm = mmap(Pd.data(), rows, keys, t);
          Pdm = Fm;
          Pdm.array() *= P.array();  // P ⊙ F, bitwise the forward's
          dV.noalias() += Pdm.transpose() * dO;
          dS.noalias() = dO * V.transpose();
          dS.array() *= Fm.array();
        }
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
