#pragma once
// What an MoE layer needs from expert parallelism (parallel/expert_parallel.hpp implements
// it over a Comm): an all-to-all(v) within the expert group, and per-source gradient slots.
//
// Under expert parallelism a rank holds the experts [x0, x0 + E/P) of each MoE layer and
// runs them on rows sent by every rank of its expert group (the "sources", each computing
// its own micro-batch). So that the expert weights' gradient is, bitwise, the one-process
// sum of per-micro-batch gradients along the fixed tree (parallel/tree_sum.hpp), each
// expert's gradient from each source is computed separately and handed to the source's
// slot; the trainer sums the slots along the tree. Virtual, so that the model does not
// depend on the Comm type.
#include <cstdint>
#include <span>

namespace tmoe {

template <class T>
struct ExpertExchange {
  virtual ~ExpertExchange() = default;
  virtual int size() const = 0;  // ranks the experts are split over (P)
  virtual int rank() const = 0;
  // Sends send_counts[q] consecutive elements to each rank q; receives recv_counts[q] from
  // each, in rank order.
  virtual void alltoallv(const T* send, std::span<const std::int64_t> send_counts, T* recv,
                         std::span<const std::int64_t> recv_counts) = 0;
  virtual void alltoallv(const std::int64_t* send, std::span<const std::int64_t> send_counts, std::int64_t* recv,
                         std::span<const std::int64_t> recv_counts) = 0;
  // The gradient slot of source s for the flat elements [lo, hi) of one expert: the layer
  // writes there this micro-batch's gradient of those elements from s's rows (slots start
  // each micro-batch at zero).
  virtual T* slot(int source, std::int64_t lo, std::int64_t hi) = 0;
};

}  // namespace tmoe
