#pragma once
// The Comm of one process: every collective over a group of one rank is a copy or nothing.
// Needs no MPI, so strategies written against a Comm also run (and are tested) without it.
#include <algorithm>
#include <cstdint>
#include <span>

#include "tmoe/core/error.hpp"
#include "tmoe/parallel/comm/comm.hpp"

namespace tmoe::comm {

struct Serial {
  static constexpr const char* name = "serial";
  int rank() const { return 0; }
  int size() const { return 1; }
  void barrier() {}
  Serial split(int, int) const { return {}; }
  template <class T>
  void allreduce_sum(T*, std::int64_t, Reduction = Reduction::kFixed) {}
  template <class T>
  Pending ireduce_scatter_sum(T*, std::span<const std::int64_t>, Reduction = Reduction::kFixed) { return {}; }
  template <class T>
  Pending iallgather(T*, std::span<const std::int64_t>) { return {}; }
  template <class T>
  void allgather(const T* mine, std::int64_t count, T* all) {
    if (all != mine) std::copy_n(mine, count, all);
  }
  template <class T>
  void allgatherv(const T* mine, std::span<const std::int64_t> counts, T* all) {
    if (all != mine) std::copy_n(mine, counts[0], all);
  }
  template <class T>
  void alltoallv(const T* send, std::span<const std::int64_t> send_counts, T* recv, std::span<const std::int64_t>) {
    std::copy_n(send, send_counts[0], recv);
  }
  template <class T>
  void broadcast(T*, std::int64_t, int) {}
  template <class T>
  void send(const T*, std::int64_t, int peer, int) {
    throw Error(detail::cat("send to rank ", peer), "comm::Serial", "a peer in a group of one rank (there is none)");
  }
  template <class T>
  Pending isend(const T*, std::int64_t, int peer, int) {
    throw Error(detail::cat("send to rank ", peer), "comm::Serial", "a peer in a group of one rank (there is none)");
  }
  template <class T>
  void recv(T*, std::int64_t, int peer, int) {
    throw Error(detail::cat("receive from rank ", peer), "comm::Serial", "a peer in a group of one rank (there is none)");
  }
};
static_assert(Comm<Serial>);

}  // namespace tmoe::comm
