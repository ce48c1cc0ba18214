#pragma once
// PowerSGD gradient compression (Vogels, Karimireddy, Jaggi, "PowerSGD: Practical Low-Rank
// Gradient Compression for Distributed Optimization", NeurIPS 2019, Algorithm 2): a data-
// parallel reducer that sends, for each large weight matrix M (m x n), two thin factors of
// rank r instead of M: P (m x r) and Q (n x r).
//
// One reduce() on replica w of W, for each compressed matrix:
//   M'_w = M_w + e_w                   error feedback: what earlier steps did not deliver
//   P    = sum_w M'_w Q                one all-reduce for the P of all matrices
//   P^   = orthonormal columns of P    Gram-Schmidt in double, the same on every replica
//   Q    = sum_w M'_w^T P^             one all-reduce for the Q of all matrices
//   A    = P^ Q^T = P^ P^^T sum_w M'_w written into the gradient
//   e_w  = M'_w - A / W                this replica's share of what A missed
// Q is kept for the next call (warm start): one step of power iteration per training step
// tracks the dominant subspace of a gradient that changes slowly. Everything else (vectors,
// matrices whose factors would not be smaller, alignment padding) is summed exactly in one
// all-reduce.
//
// Sum convention: tmoe's data-parallel reduction is a sum (each replica's gradient is already
// scaled by 1/global micro-batches), so P, Q and A are sums where the paper has means. P^
// does not depend on the scale, and sum_w e_w = sum_w M'_w - A: what one step leaves out is
// sent in later steps, so the running mean of the returned gradients tends to the exact sum.
//
// Determinism: P and Q are all-reduced, and what is computed from them (P^, A, the next Q)
// is a loop in fixed order, so with Reduction::kFixed every replica holds bitwise the same
// gradient (kNative relies on the library handing every rank the same sum, as MPI_Allreduce
// does in practice). It is not the uncompressed sum, so the one-process bitwise equality of
// data_parallel.hpp does not hold under compression.
//
// State: the error feedback e (different on each replica) and Q (the same on all) live here,
// in the units of the gradient (a loss scale that changes between steps must be applied to
// e with scale_error). They are not in checkpoints: a resumed run restarts them (e = 0, Q
// drawn afresh), which costs the compression a few steps of accuracy, not correctness.
//
// Non-finite gradients (an fp16 overflow under loss scaling): when the exact sums, P or Q
// come back non-finite, the compressed matrices are set to NaN, so the trainer sees the
// overflow and skips the step, and e and Q are left as they were (the step is dropped, and
// must not take with it what e held back from earlier steps).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "tmoe/core/error.hpp"
#include "tmoe/core/philox.hpp"
#include "tmoe/core/registry.hpp"
#include "tmoe/parallel/comm/comm.hpp"

namespace tmoe {

inline constexpr std::uint32_t kPowerSgdSite = 0x50534744u;  // "PSGD": the Philox site of Q

template <class T>
class PowerSgd {
 public:
  PowerSgd(int rank, std::uint64_t seed) : r_(rank), seed_(seed) {
    if (rank < 1)
      throw Error(detail::cat("PowerSGD rank is ", rank), "parallel.powersgd_rank",
                  "a rank r >= 1 (the columns of the factors P and Q sent for each matrix)");
  }

  // Whether a parameter of this shape is sent as rank-r factors: a matrix with both
  // dimensions above r whose factors, r (rows + cols) elements, are smaller than it.
  static bool compresses(const Shape& s, int rank) {
    if (s.rank != 2 || s.dims[0] <= rank || s.dims[1] <= rank) return false;
    return s.dims[0] * s.dims[1] > rank * (s.dims[0] + s.dims[1]);
  }

  // g (n = reg.total() elements, this replica's gradient) becomes, on every replica, the same
  // approximation of the sum over the replicas of comm. Every replica calls it with the same
  // registry, in the same order.
  template <class C>
    requires comm::Comm<C>
  void reduce(const ParamRegistry& reg, T* g, std::int64_t n, C& comm, comm::Reduction red) {
    if (n != reg.total())
      throw Error(detail::cat("a gradient of ", n, " elements"), "PowerSgd::reduce",
                  detail::cat("the registry's flat length, ", reg.total()));
    plan(reg, n);
    ++calls_;
    const int W = comm.size();
    const auto ring = [W](std::int64_t elements) {
      return 2 * (W - 1) * elements * static_cast<std::int64_t>(sizeof(T)) / W;
    };
    uncompressed_bytes_ = ring(n);

    // The exact part: one all-reduce of everything that is not compressed.
    buf_.resize(static_cast<std::size_t>(exact_count_));
    std::int64_t at = 0;
    for (auto [lo, hi] : exact_)
      for (std::int64_t i = lo; i < hi; ++i) buf_[at++] = g[i];
    comm.allreduce_sum(buf_.data(), exact_count_, red);
    bytes_sent_ = ring(exact_count_);
    at = 0;
    for (auto [lo, hi] : exact_)
      for (std::int64_t i = lo; i < hi; ++i) g[i] = buf_[at++];
    // Every replica holds the same sums, so every replica takes the same branch.
    if (!all_finite(buf_)) return poison(g);

    // P = M' Q. M' = g + e is formed on the fly, so e stays intact until the step is known
    // to be finite.
    p_.assign(static_cast<std::size_t>(p_count_), T(0));
    acc_.resize(static_cast<std::size_t>(r_));
    for (const Mat& m : mats_) {
      const T* gm = g + m.offset;
      const T* em = e_.data() + m.e_at;
      const T* q = q_.data() + m.q_at;
      for (std::int64_t i = 0; i < m.rows; ++i) {
        std::fill(acc_.begin(), acc_.end(), 0.0);
        for (std::int64_t c = 0; c < m.cols; ++c) {
          const double x = static_cast<double>(static_cast<T>(gm[i * m.cols + c] + em[i * m.cols + c]));
          for (int k = 0; k < r_; ++k) acc_[k] += x * static_cast<double>(q[c * r_ + k]);
        }
        for (int k = 0; k < r_; ++k) p_[m.p_at + i * r_ + k] = static_cast<T>(acc_[k]);
      }
    }
    comm.allreduce_sum(p_.data(), p_count_, red);
    bytes_sent_ += ring(p_count_);
    if (!all_finite(p_)) return poison(g);

    phat_.resize(static_cast<std::size_t>(p_count_));
    for (const Mat& m : mats_) orthonormalise(p_.data() + m.p_at, phat_.data() + m.p_at, m.rows);

    // Q = M'^T P^, into a new buffer: the old Q survives a non-finite step.
    q_next_.resize(static_cast<std::size_t>(q_count_));
    for (const Mat& m : mats_) {
      const T* gm = g + m.offset;
      const T* em = e_.data() + m.e_at;
      const double* ph = phat_.data() + m.p_at;
      qacc_.assign(static_cast<std::size_t>(m.cols * r_), 0.0);
      for (std::int64_t i = 0; i < m.rows; ++i)
        for (std::int64_t c = 0; c < m.cols; ++c) {
          const double x = static_cast<double>(static_cast<T>(gm[i * m.cols + c] + em[i * m.cols + c]));
          for (int k = 0; k < r_; ++k) qacc_[c * r_ + k] += x * ph[i * r_ + k];
        }
      for (std::int64_t j = 0; j < m.cols * r_; ++j) q_next_[m.q_at + j] = static_cast<T>(qacc_[j]);
    }
    comm.allreduce_sum(q_next_.data(), q_count_, red);
    bytes_sent_ += ring(q_count_);
    if (!all_finite(q_next_)) return poison(g);
    q_.swap(q_next_);

    // A = P^ Q^T replaces the gradient; e keeps this replica's share of the rest. e uses A as
    // stored (rounded to T), so sum_w e_w + A is sum_w M'_w up to the rounding of e alone.
    for (const Mat& m : mats_) {
      T* gm = g + m.offset;
      T* em = e_.data() + m.e_at;
      const double* ph = phat_.data() + m.p_at;
      const T* q = q_.data() + m.q_at;
      for (std::int64_t i = 0; i < m.rows; ++i)
        for (std::int64_t c = 0; c < m.cols; ++c) {
          double a = 0;
          for (int k = 0; k < r_; ++k) a += ph[i * r_ + k] * static_cast<double>(q[c * r_ + k]);
          const T stored = static_cast<T>(a);
          const T mp = static_cast<T>(gm[i * m.cols + c] + em[i * m.cols + c]);
          em[i * m.cols + c] = static_cast<T>(static_cast<double>(mp) - static_cast<double>(stored) / W);
          gm[i * m.cols + c] = stored;
        }
      redraw_zero_columns(m);
    }
  }

  // Of the last reduce(): the logical payload this rank sent (a ring all-reduce of e elements
  // sends 2 (W - 1) / W e of them), and what the plain all-reduce of the whole gradient would.
  std::int64_t bytes_sent() const { return bytes_sent_; }
  std::int64_t uncompressed_bytes() const { return uncompressed_bytes_; }
  // Registry parameters sent as factors (known after the first reduce()).
  std::int64_t compressed_params() const { return static_cast<std::int64_t>(mats_.size()); }
  int rank() const { return r_; }

  // Multiplies the error feedback by f: when the loss scale of the gradients changes from s
  // to s', f = s' / s keeps e in the units of the next gradient.
  void scale_error(double f) {
    for (T& x : e_) x = static_cast<T>(static_cast<double>(x) * f);
  }

  // Drops the error feedback and Q; the next reduce() starts afresh (and may use another
  // registry).
  void reset() {
    mats_.clear();
    exact_.clear();
    e_.clear();
    q_.clear();
    n_ = -1;
    calls_ = 0;
  }

 private:
  struct Mat {
    int index = 0;
    std::int64_t rows = 0, cols = 0, offset = 0;
    std::int64_t e_at = 0, p_at = 0, q_at = 0;  // into e_, P (and P^), Q
    bool operator==(const Mat&) const = default;
  };

  // The compressed matrices and the exact spans of this registry; the first call (or the
  // first after reset) allocates e = 0 and draws Q.
  void plan(const ParamRegistry& reg, std::int64_t n) {
    std::vector<Mat> mats;
    std::vector<std::pair<std::int64_t, std::int64_t>> exact;
    std::int64_t e_at = 0, p_at = 0, q_at = 0, cursor = 0, exact_count = 0;
    const auto keep = [&](std::int64_t lo, std::int64_t hi) {
      if (hi <= lo) return;
      exact.emplace_back(lo, hi);
      exact_count += hi - lo;
    };
    for (int i = 0; i < reg.size(); ++i) {
      const ParamInfo& p = reg[i];
      if (!compresses(p.shape, r_)) continue;
      Mat m{i, p.shape.dims[0], p.shape.dims[1], p.offset, e_at, p_at, q_at};
      keep(cursor, m.offset);  // registry offsets increase in declaration order
      cursor = m.offset + m.rows * m.cols;
      e_at += m.rows * m.cols;
      p_at += m.rows * r_;
      q_at += m.cols * r_;
      mats.push_back(m);
    }
    keep(cursor, n);
    if (n_ >= 0) {
      if (n != n_ || mats != mats_)
        throw Error("the registry's layout changed since the last reduce()", "PowerSgd::reduce",
                    "the same registry on every call (reset() before reducing another one)");
      return;
    }
    mats_ = std::move(mats);
    exact_ = std::move(exact);
    n_ = n;
    exact_count_ = exact_count;
    p_count_ = p_at;
    q_count_ = q_at;
    e_.assign(static_cast<std::size_t>(e_at), T(0));
    q_.resize(static_cast<std::size_t>(q_at));
    for (const Mat& m : mats_) {
      const RngKey key{seed_, 0, kPowerSgdSite, static_cast<std::uint32_t>(m.index)};
      for (std::int64_t j = 0; j < m.cols * r_; ++j)
        q_[m.q_at + j] = static_cast<T>(key.normal(static_cast<std::uint64_t>(j)));
    }
  }

  // out (rows x r, double) = the columns of p (rows x r, row-major) made orthonormal in
  // order (modified Gram-Schmidt). A column that depends on the earlier ones (a gradient of
  // rank below r) leaves a residual of rounding noise, which may still lean on them (for a
  // constant M it is constant too): normalised, it would count their direction twice
  // (A = 2 M). So the earlier columns are removed twice ("twice is enough", Parlett), and a
  // residual below sqrt(eps) of the column (far above the rounding of the projection, far
  // below any direction worth a factor) is set to zero; e keeps what it held.
  void orthonormalise(const T* p, double* out, std::int64_t rows) const {
    const double tol2 = std::numeric_limits<double>::epsilon();  // sqrt(eps), squared
    for (std::int64_t i = 0; i < rows * r_; ++i) out[i] = static_cast<double>(p[i]);
    for (int k = 0; k < r_; ++k) {
      const auto norm2 = [&] {
        double ss = 0;
        for (std::int64_t i = 0; i < rows; ++i) ss += out[i * r_ + k] * out[i * r_ + k];
        return ss;
      };
      const double before = norm2();
      for (int pass = 0; pass < 2; ++pass)
        for (int j = 0; j < k; ++j) {
          double d = 0;
          for (std::int64_t i = 0; i < rows; ++i) d += out[i * r_ + j] * out[i * r_ + k];
          for (std::int64_t i = 0; i < rows; ++i) out[i * r_ + k] -= d * out[i * r_ + j];
        }
      const double ss = norm2();
      const double s = ss > tol2 * before ? 1.0 / std::sqrt(ss) : 0.0;
      for (std::int64_t i = 0; i < rows; ++i) out[i * r_ + k] *= s;
    }
  }

  // A column of Q that came back all zero (a matrix whose gradient and error were zero on
  // every replica, such as an expert no token reached) would stay zero under the warm start
  // and lower the rank for good: it is drawn afresh, from this call's counter. Q is the same
  // on every replica, and so is the draw.
  void redraw_zero_columns(const Mat& m) {
    T* q = q_.data() + m.q_at;
    const RngKey key{seed_, static_cast<std::uint32_t>(calls_), kPowerSgdSite, static_cast<std::uint32_t>(m.index)};
    for (int k = 0; k < r_; ++k) {
      bool zero = true;
      for (std::int64_t c = 0; c < m.cols && zero; ++c) zero = q[c * r_ + k] == T(0);
      if (!zero) continue;
      for (std::int64_t c = 0; c < m.cols; ++c)
        q[c * r_ + k] = static_cast<T>(key.normal(static_cast<std::uint64_t>(c * r_ + k)));
    }
  }

  static bool all_finite(const std::vector<T>& v) {
    for (T x : v)
      if (!std::isfinite(x)) return false;
    return true;
  }

  // A non-finite step: NaN in every compressed matrix marks it as overflowed (the trainer
  // skips it), and e and Q are left as they were.
  void poison(T* g) {
    for (const Mat& m : mats_) std::fill_n(g + m.offset, m.rows * m.cols, std::numeric_limits<T>::quiet_NaN());
  }

  int r_;
  std::uint64_t seed_;
  std::int64_t n_ = -1;  // the planned flat length; -1 before the first reduce()
  std::int64_t calls_ = 0;
  std::vector<Mat> mats_;
  std::vector<std::pair<std::int64_t, std::int64_t>> exact_;
  std::int64_t exact_count_ = 0, p_count_ = 0, q_count_ = 0;
  std::vector<T> e_, q_, q_next_, p_, buf_;
  std::vector<double> phat_, qacc_, acc_;
  std::int64_t bytes_sent_ = 0, uncompressed_bytes_ = 0;
};

}  // namespace tmoe
