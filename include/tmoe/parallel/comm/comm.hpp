#pragma once
// What a Comm policy offers the parallel strategies (DESIGN.md "Parallelism"): collectives
// over one group of ranks, blocking and non-blocking, written so that MPI (comm/mpi.hpp),
// one process (comm/serial.hpp) and NCCL implement the same calls.
//
// Sums that must be bitwise reproducible use Reduction::kFixed: each segment of the
// vector is gathered on its owner rank, which adds the R contributions along the tree of
// tree_sum.hpp in rank order, so the result never depends on the transport. kNative
// hands the sum to the library (MPI_Allreduce, ncclAllReduce): faster, any order.
//
// Segments: reduce_scatter and allgather take R + 1 boundaries b (b[0] = lo, b[R] = hi);
// rank r owns elements [b[r], b[r+1]) of the caller's buffer.
#include <concepts>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "tmoe/core/error.hpp"

namespace tmoe::comm {

enum class Reduction { kFixed, kNative };

inline Reduction reduction_from_name(const std::string& s) {
  if (s == "fixed") return Reduction::kFixed;
  if (s == "native") return Reduction::kNative;
  throw Error("reduction is '" + s + "'", "parallel.reduction", "fixed (bitwise, tree order) or native (the library's)");
}

// A non-blocking operation: wait() completes it (and runs the local work that follows the
// transfer, such as the tree sum of a fixed-order reduction). Waiting twice is harmless.
class Pending {
 public:
  Pending() = default;
  explicit Pending(std::function<void()> wait) : wait_(std::move(wait)) {}
  Pending(Pending&&) noexcept = default;
  Pending& operator=(Pending&&) noexcept = default;
  void wait() {
    if (wait_) {
      auto w = std::move(wait_);
      wait_ = nullptr;
      w();
    }
  }
  bool done() const { return !wait_; }

 private:
  std::function<void()> wait_;
};

// Balanced segments of [lo, hi) over `parts` ranks, each boundary a multiple of `granule`
// from lo (the last segment takes the remainder).
inline std::vector<std::int64_t> segments(std::int64_t lo, std::int64_t hi, int parts, std::int64_t granule = 1) {
  const std::int64_t units = (hi - lo + granule - 1) / granule;
  std::vector<std::int64_t> b(static_cast<std::size_t>(parts) + 1);
  for (int r = 0; r <= parts; ++r) b[static_cast<std::size_t>(r)] = std::min(hi, lo + units * r / parts * granule);
  return b;
}

template <class C>
concept Comm = requires(C& c, const C& cc, float* f, double* d, const double* cd, std::int64_t n,
                        std::span<const std::int64_t> b, Reduction red) {
  { C::name } -> std::convertible_to<const char*>;
  { cc.rank() } -> std::convertible_to<int>;
  { cc.size() } -> std::convertible_to<int>;
  c.barrier();
  c.allreduce_sum(f, n, red);
  c.allreduce_sum(d, n, red);
  { c.ireduce_scatter_sum(f, b, red) } -> std::same_as<Pending>;
  { c.iallgather(f, b) } -> std::same_as<Pending>;
  c.allgather(cd, n, d);
  c.send(cd, n, 0, 0);
  { c.isend(cd, n, 0, 0) } -> std::same_as<Pending>;
  c.recv(d, n, 0, 0);
  { cc.split(0, 0) } -> std::same_as<C>;
};

}  // namespace tmoe::comm
