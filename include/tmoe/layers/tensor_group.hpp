#pragma once
// What a layer needs from tensor parallelism (parallel/tensor_parallel.hpp implements it
// over a Comm): the size and rank of its tensor group, and an all-reduce of a partial result.
//
// Megatron-style layers: a column-parallel linear holds a slice of the output features (its
// input is replicated, its output is this rank's slice); a row-parallel linear holds the
// matching slice of the input features and produces a partial sum of the whole output,
// which the layer all-reduces once. Attention splits its heads, a feed-forward layer (dense,
// routed or shared expert) its hidden width: one all-reduce in forward (the output) and one
// in backward (the input's gradient). Everything else — norms, embeddings, the head, the
// router — is replicated and computes identical values on every rank of the group.
// Virtual, so that the model does not depend on the Comm type.
#include <cstdint>

namespace tmoe {

template <class T>
struct TensorGroup {
  virtual ~TensorGroup() = default;
  virtual int size() const = 0;
  virtual int rank() const = 0;
  // x (n elements) <- the sum of every rank's x, the same on every rank.
  virtual void allreduce(T* x, std::int64_t n) = 0;
  // Bytes sent and seconds waited since the last call (the step's communication counters).
  virtual std::int64_t take_bytes() { return 0; }
  virtual double take_wait_s() { return 0; }
};

// Sums a partial result over the group (nothing to do without one).
template <class T>
inline void tensor_allreduce(TensorGroup<T>* g, T* x, std::int64_t n) {
  if (g && g->size() > 1) g->allreduce(x, n);
}

}  // namespace tmoe
