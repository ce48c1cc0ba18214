#pragma once
// Expert parallelism: the MoE layers' all-to-all and the per-source gradient slots
// (moe/expert_exchange.hpp), over a Comm of the expert group.
//
// Gradients of a rank's experts come from the rows of every source in its expert group
// (the group's e replicas, each computing its own pieces). Each source's gradient of each
// micro-batch lands in its slot; over the step, each source's pieces are summed along the
// tree (PieceAccumulator) and then the e sources along the tree in source order. Source s
// is replica d e + s of the replica order, so when the e sources' a pieces each are a
// power of two in number, this is the node of the one-process tree over those e a pieces;
// the expert-data group then adds the d nodes along the tree — bitwise the one-process sum.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tmoe/core/error.hpp"
#include "tmoe/core/registry.hpp"
#include "tmoe/moe/expert_exchange.hpp"
#include "tmoe/parallel/tree_sum.hpp"
#include "tmoe/tensor/tensor.hpp"

namespace tmoe {

// The slots and their accumulation; the transport is left to a derived class.
template <class T>
class ExpertSlots : public ExpertExchange<T> {
 public:
  // The routed experts' parameters (kTagExpert) of `reg`, packed in registry order.
  void configure(const ParamRegistry& reg) {
    ranges_.clear();
    for (int i = 0; i < reg.size(); ++i) {
      const ParamInfo& p = reg[i];
      if (!p.has(kTagExpert)) continue;
      const std::int64_t hi = i + 1 < reg.size() ? reg[i + 1].offset : reg.total();
      if (!ranges_.empty() && ranges_.back().hi == p.offset) ranges_.back().hi = hi;
      else ranges_.push_back({p.offset, hi, 0});
    }
    std::int64_t packed = 0;
    for (auto& r : ranges_) {
      r.packed = packed;
      packed += r.hi - r.lo;
    }
    n_ = packed;
    const int P = this->size();
    slots_.clear();
    slots_.resize(static_cast<std::size_t>(P));
    acc_.clear();
    acc_.resize(static_cast<std::size_t>(P));
    for (auto& s : slots_) s.resize(Shape{std::max<std::int64_t>(n_, 1)});
  }

  T* slot(int source, std::int64_t lo, std::int64_t hi) override {
    const Range* r = find(lo);
    if (!r || lo < r->lo || hi > r->hi)
      throw Error(detail::cat("a slot for elements [", lo, ", ", hi, ")"), "ExpertSlots::slot", "a routed expert's parameters");
    return slots_[static_cast<std::size_t>(source)].data() + r->packed + (lo - r->lo);
  }

  // Bytes sent to other ranks since the last call (the derived transport counts them).
  virtual std::int64_t take_bytes() { return 0; }
  virtual double take_wait_s() { return 0; }  // time inside the all-to-alls since the last call

  // The step's bookkeeping, called by the trainer.
  void begin_step() {
    for (auto& a : acc_) a.reset(n_);
  }
  void begin_micro() {
    for (auto& s : slots_) std::fill(s.data(), s.data() + n_, T(0));
  }
  void end_micro() {  // not after the last micro-batch: finish() takes that one
    for (std::size_t s = 0; s < slots_.size(); ++s) acc_[s].add(slots_[s].data());
  }
  // g[lo, hi) of the routed experts' elements = the tree over sources of each source's tree
  // over its pieces (the last piece still in the slot).
  void finish(T* g, std::int64_t lo, std::int64_t hi) {
    std::vector<const T*> leaves(slots_.size());
    for (const Range& r : ranges_) {
      const std::int64_t a = std::max(lo, r.lo), b = std::min(hi, r.hi);
      if (b <= a) continue;
      const std::int64_t p0 = r.packed + (a - r.lo), p1 = p0 + (b - a);
      for (std::size_t s = 0; s < slots_.size(); ++s) {
        acc_[s].finish(slots_[s].data(), slots_[s].data(), p0, p1);
        leaves[s] = slots_[s].data() + p0;
      }
      tree_sum(leaves.data(), static_cast<std::int64_t>(leaves.size()), g + a, b - a);
    }
  }

 private:
  struct Range {
    std::int64_t lo, hi, packed;
  };
  const Range* find(std::int64_t flat) const {
    auto it = std::upper_bound(ranges_.begin(), ranges_.end(), flat, [](std::int64_t v, const Range& r) { return v < r.lo; });
    if (it == ranges_.begin()) return nullptr;
    return &*std::prev(it);
  }
  std::vector<Range> ranges_;
  std::int64_t n_ = 0;
  std::vector<Tensor<T>> slots_;
  std::vector<PieceAccumulator<T>> acc_;
};

// The slots over a Comm of the expert group (its rank order = expert rank = source order).
template <class C, class T>
class CommExchange final : public ExpertSlots<T> {
 public:
  CommExchange(C group, const ParamRegistry& reg) : group_(std::move(group)) { this->configure(reg); }
  int size() const override { return group_.size(); }
  int rank() const override { return group_.rank(); }
  void alltoallv(const T* send, std::span<const std::int64_t> sc, T* recv, std::span<const std::int64_t> rc) override {
    const auto t0 = std::chrono::steady_clock::now();
    group_.alltoallv(send, sc, recv, rc);
    wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (auto c : sc) bytes_ += c * static_cast<std::int64_t>(sizeof(T));
    for (int q = 0; q < size(); ++q)
      if (q == rank()) bytes_ -= sc[static_cast<std::size_t>(q)] * static_cast<std::int64_t>(sizeof(T));
  }
  void alltoallv(const std::int64_t* send, std::span<const std::int64_t> sc, std::int64_t* recv,
                 std::span<const std::int64_t> rc) override {
    const auto t0 = std::chrono::steady_clock::now();
    group_.alltoallv(send, sc, recv, rc);
    wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (int q = 0; q < size(); ++q)
      if (q != rank()) bytes_ += sc[static_cast<std::size_t>(q)] * 8;
  }
  std::int64_t take_bytes() override {
    const std::int64_t b = bytes_;
    bytes_ = 0;
    return b;
  }
  double take_wait_s() override {
    const double w = wait_s_;
    wait_s_ = 0;
    return w;
  }

 private:
  C group_;
  std::int64_t bytes_ = 0;  // sent to other ranks since the last take_bytes()
  double wait_s_ = 0;       // inside the all-to-alls since the last take_wait_s()
};

}  // namespace tmoe
