#pragma once
// Tensor parallelism over a Comm: the TensorGroup of layers/tensor_group.hpp. With the
// fixed-order reduction every rank gets the same sum, bitwise, so the replicated parameters
// (norms, embeddings, head, router) see identical gradients on every rank of the group and
// need no reduction of their own.
#include <chrono>
#include <cstdint>
#include <utility>

#include "tmoe/layers/tensor_group.hpp"
#include "tmoe/parallel/comm/comm.hpp"

namespace tmoe {

template <class C, class T>
class CommTensorGroup final : public TensorGroup<T> {
 public:
  CommTensorGroup(C& group, comm::Reduction red) : group_(group), red_(red) {}
  int size() const override { return group_.size(); }
  int rank() const override { return group_.rank(); }
  void allreduce(T* x, std::int64_t n) override {
    const auto t0 = std::chrono::steady_clock::now();
    group_.allreduce_sum(x, n, red_);
    // A ring all-reduce sends 2 (R - 1) / R of the vector per rank.
    bytes_ += 2 * n * (size() - 1) / size() * static_cast<std::int64_t>(sizeof(T));
    wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  std::int64_t take_bytes() override { return std::exchange(bytes_, 0); }
  double take_wait_s() override { return std::exchange(wait_s_, 0.0); }

 private:
  C& group_;
  comm::Reduction red_;
  std::int64_t bytes_ = 0;
  double wait_s_ = 0;
};

}  // namespace tmoe
