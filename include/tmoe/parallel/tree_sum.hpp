#pragma once
// The one summation tree of gradient pieces (DESIGN.md principle 5).
//
// A step's gradient is the sum of N pieces: the gradients of its fixed-size micro-batches,
// in global order. They are added along one fixed binary tree over the N leaves, whatever
// the layout:
//     S(lo, hi) = S(lo, mid) + S(mid, hi),  mid = lo + 2^(ceil(log2(hi - lo)) - 1).
// When every rank holds the same power-of-two number a of consecutive pieces, each rank's
// pieces form a subtree, and the tree over the R rank sums is the same rule over R leaves;
// so a rank sums its pieces locally (PieceAccumulator), the collective sums the R rank
// results with tree_sum, and the result is bitwise the one-process sum of all N pieces.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "tmoe/tensor/tensor.hpp"

namespace tmoe {

// Where S(lo, lo + n) splits (n >= 2): the largest power of two below n.
inline std::int64_t tree_split(std::int64_t n) {
  std::int64_t p = 1;
  while (p * 2 < n) p *= 2;
  return p;
}

namespace detail {
template <class T>
T tree_at(const T* const* leaves, std::int64_t lo, std::int64_t hi, std::int64_t i) {
  if (hi - lo == 1) return leaves[lo][i];
  const std::int64_t mid = lo + tree_split(hi - lo);
  return tree_at(leaves, lo, mid, i) + tree_at(leaves, mid, hi, i);
}
}  // namespace detail

// out[i] = S(0, count) of leaves[*][i] for i in [0, n); out may alias a leaf.
template <class T>
void tree_sum(const T* const* leaves, std::int64_t count, T* out, std::int64_t n) {
  if (count == 1) {
    if (out != leaves[0]) std::copy_n(leaves[0], n, out);
    return;
  }
  for (std::int64_t i = 0; i < n; ++i) out[i] = detail::tree_at(leaves, 0, count, i);
}

// The same tree over scalars (losses, sums of squares): values in leaf order.
inline double tree_sum(const std::vector<double>& v) {
  if (v.empty()) return 0.0;
  std::vector<const double*> p(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) p[i] = &v[i];
  double out = 0;
  tree_sum(p.data(), static_cast<std::int64_t>(v.size()), &out, 1);
  return out;
}

// Sums a rank's pieces along the tree as they arrive, like a binary counter: a stack of
// partial sums of 1, 2, 4, ... pieces; equal neighbours merge (left + right). The sum is
// folded from the right at the end (finish), over the whole vector or over element ranges
// (so a data-parallel bucket can be finished, and sent, while backward still runs).
// Holds at most floor(log2(pieces)) + 1 vectors; with one piece, none (the piece is used
// in place).
template <class T>
class PieceAccumulator {
 public:
  void reset(std::int64_t n) {
    n_ = n;
    depth_ = 0;
    pieces_ = 0;
  }
  std::int64_t pieces() const { return pieces_; }

  // Takes one more piece (the gradient buffer of one micro-batch).
  void add(const T* piece) {
    ensure(depth_);
    std::copy_n(piece, n_, stack_[depth_].data());
    size_[depth_] = 1;
    ++depth_;
    ++pieces_;
    while (depth_ >= 2 && size_[depth_ - 1] == size_[depth_ - 2]) {
      T* l = stack_[depth_ - 2].data();
      const T* r = stack_[depth_ - 1].data();
      for (std::int64_t i = 0; i < n_; ++i) l[i] = l[i] + r[i];
      size_[depth_ - 2] *= 2;
      --depth_;
    }
  }

  // out[lo, hi) = the tree sum of all pieces so far plus `last` (the final piece, not added),
  // over elements [lo, hi) only; out may be `last`.
  void finish(const T* last, T* out, std::int64_t lo, std::int64_t hi) const {
    if (depth_ == 0 && out == last) return;
    // Adding `last` would merge it with the top entries (left + right), and the fold then
    // goes on from the right: both are one right-to-left fold over the stack.
    for (std::int64_t i = lo; i < hi; ++i) {
      T v = last[i];
      for (std::int64_t s = depth_; s-- > 0;) v = stack_[s][i] + v;
      out[i] = v;
    }
  }

 private:
  void ensure(std::int64_t d) {
    if (static_cast<std::int64_t>(stack_.size()) <= d) {
      stack_.resize(static_cast<std::size_t>(d + 1));
      size_.resize(static_cast<std::size_t>(d + 1), 0);
    }
    stack_[d].ensure(Shape{n_});
  }
  std::int64_t n_ = 0, depth_ = 0, pieces_ = 0;
  std::vector<Tensor<T>> stack_;
  std::vector<std::int64_t> size_;
};

}  // namespace tmoe
