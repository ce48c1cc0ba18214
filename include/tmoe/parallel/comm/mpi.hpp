#pragma once
// The Comm over Open MPI (any MPI-3 library). Every call checks its return code (the
// communicators use MPI_ERRORS_RETURN) and turns a failure into tmoe::Error naming the rank
// and the operation; `mpi_main` is the top-level handler that prints an error with its rank
// and aborts the whole job, so no rank waits forever for a dead or failed peer.
//
// Link with tmoe::mpi (CMake), which adds MPI::MPI_CXX to tmoe::tmoe.
#include <mpi.h>

#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tmoe/core/error.hpp"
#include "tmoe/parallel/comm/comm.hpp"
#include "tmoe/parallel/tree_sum.hpp"

namespace tmoe::comm {

namespace detail {
using tmoe::detail::cat;

template <class T>
MPI_Datatype mpi_type() {
  if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
  else if constexpr (std::is_same_v<T, double>) return MPI_DOUBLE;
  else if constexpr (std::is_same_v<T, std::int64_t>) return MPI_INT64_T;
  else if constexpr (std::is_same_v<T, std::int32_t>) return MPI_INT32_T;
  else if constexpr (std::is_same_v<T, std::uint8_t>) return MPI_UINT8_T;
  else if constexpr (std::is_same_v<T, char>) return MPI_CHAR;
  else static_assert(tmoe::dependent_false<T>, "tmoe: comm::Mpi: no MPI datatype for this element type");
}

inline int world_rank() {
  int r = -1, init = 0;
  MPI_Initialized(&init);
  if (init) MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

inline void check(int rc, const char* op) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw Error(cat("MPI error: ", std::string(msg, static_cast<std::size_t>(len))), cat("rank ", world_rank(), ": ", op),
              "a healthy MPI job (are all ranks alive and running the same program?)");
}

inline int count(std::int64_t n, const char* op) {
  if (n < 0 || n > INT_MAX)
    throw Error(cat("a message of ", n, " elements"), cat("rank ", world_rank(), ": ", op),
                "at most 2^31 - 1 elements per message (use smaller buckets)");
  return static_cast<int>(n);
}
}  // namespace detail

class Mpi {
 public:
  static constexpr const char* name = "mpi";

  // A group over `c` (MPI_COMM_WORLD by default). Not owning: split() results own theirs.
  explicit Mpi(MPI_Comm c = MPI_COMM_WORLD) : comm_(std::make_shared<Handle>(c, false)) {
    detail::check(MPI_Comm_rank(c, &rank_), "MPI_Comm_rank");
    detail::check(MPI_Comm_size(c, &size_), "MPI_Comm_size");
  }

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm handle() const { return comm_->c; }

  // The ranks with the same color form a new group, ordered by key (MPI_Comm_split).
  Mpi split(int color, int key) const {
    MPI_Comm out;
    detail::check(MPI_Comm_split(comm_->c, color, key, &out), "MPI_Comm_split");
    detail::check(MPI_Comm_set_errhandler(out, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    Mpi m(out);
    m.comm_ = std::make_shared<Handle>(out, true);
    return m;
  }

  void barrier() { detail::check(MPI_Barrier(comm_->c), "MPI_Barrier"); }

  template <class T>
  void allreduce_sum(T* x, std::int64_t n, Reduction red = Reduction::kFixed) {
    if (size_ == 1 || n == 0) return;
    if (red == Reduction::kNative) {
      detail::check(MPI_Allreduce(MPI_IN_PLACE, x, detail::count(n, "MPI_Allreduce"), detail::mpi_type<T>(), MPI_SUM, comm_->c),
                    "MPI_Allreduce");
      return;
    }
    const auto b = segments(0, n, size_);
    ireduce_scatter_sum(x, b, red).wait();
    iallgather(x, b).wait();
  }

  // x[b[r], b[r+1]) on rank r becomes the sum over the group of that segment (the other
  // segments are left as they were). kFixed: an all-to-all of the segments, then each owner
  // adds its R contributions along the tree in rank order.
  template <class T>
  Pending ireduce_scatter_sum(T* x, std::span<const std::int64_t> b, Reduction red = Reduction::kFixed) {
    if (size_ == 1) return {};
    struct State {
      std::vector<int> sc, sd, rc, rd;
      std::vector<T> buf;
      MPI_Request req = MPI_REQUEST_NULL;
    };
    auto s = std::make_shared<State>();
    const int r = rank_, R = size_;
    const std::int64_t lo = b[0], mine = b[r + 1] - b[r];
    const auto dt = detail::mpi_type<T>();
    s->buf.resize(static_cast<std::size_t>(mine * (red == Reduction::kFixed ? R : 1)));
    if (red == Reduction::kNative) {
      s->rc.resize(static_cast<std::size_t>(R));
      for (int q = 0; q < R; ++q) s->rc[q] = detail::count(b[q + 1] - b[q], "MPI_Ireduce_scatter");
      detail::check(MPI_Ireduce_scatter(x + lo, s->buf.data(), s->rc.data(), dt, MPI_SUM, comm_->c, &s->req),
                    "MPI_Ireduce_scatter");
      return Pending([s, x, at = b[r], mine] {
        detail::check(MPI_Wait(&s->req, MPI_STATUS_IGNORE), "MPI_Wait (reduce-scatter)");
        std::copy_n(s->buf.data(), mine, x + at);
      });
    }
    s->sc.resize(static_cast<std::size_t>(R));
    s->sd = s->rc = s->rd = s->sc;
    for (int q = 0; q < R; ++q) {
      s->sc[q] = detail::count(b[q + 1] - b[q], "MPI_Ialltoallv");
      s->sd[q] = detail::count(b[q] - lo, "MPI_Ialltoallv");
      s->rc[q] = detail::count(mine, "MPI_Ialltoallv");
      s->rd[q] = detail::count(mine * q, "MPI_Ialltoallv");
    }
    detail::check(MPI_Ialltoallv(x + lo, s->sc.data(), s->sd.data(), dt, s->buf.data(), s->rc.data(), s->rd.data(), dt,
                                 comm_->c, &s->req),
                  "MPI_Ialltoallv (fixed-order reduce-scatter)");
    return Pending([s, x, at = b[r], mine, R] {
      detail::check(MPI_Wait(&s->req, MPI_STATUS_IGNORE), "MPI_Wait (fixed-order reduce-scatter)");
      std::vector<const T*> leaves(static_cast<std::size_t>(R));
      for (int q = 0; q < R; ++q) leaves[q] = s->buf.data() + mine * q;
      tree_sum(leaves.data(), R, x + at, mine);
    });
  }

  // Every rank's segment x[b[r], b[r+1]) is copied into the same place on every rank.
  template <class T>
  Pending iallgather(T* x, std::span<const std::int64_t> b) {
    if (size_ == 1) return {};
    struct State {
      std::vector<int> rc, rd;
      MPI_Request req = MPI_REQUEST_NULL;
    };
    auto s = std::make_shared<State>();
    s->rc.resize(static_cast<std::size_t>(size_));
    s->rd = s->rc;
    for (int q = 0; q < size_; ++q) {
      s->rc[q] = detail::count(b[q + 1] - b[q], "MPI_Iallgatherv");
      s->rd[q] = detail::count(b[q] - b[0], "MPI_Iallgatherv");
    }
    detail::check(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x + b[0], s->rc.data(), s->rd.data(),
                                  detail::mpi_type<T>(), comm_->c, &s->req),
                  "MPI_Iallgatherv");
    return Pending([s] { detail::check(MPI_Wait(&s->req, MPI_STATUS_IGNORE), "MPI_Wait (all-gather)"); });
  }

  // all[q * count + i] = rank q's mine[i].
  template <class T>
  void allgather(const T* mine, std::int64_t count, T* all) {
    const int c = detail::count(count, "MPI_Allgather");
    detail::check(MPI_Allgather(mine, c, detail::mpi_type<T>(), all, c, detail::mpi_type<T>(), comm_->c), "MPI_Allgather");
  }
  // Rank q contributes counts[q] elements; all holds them in rank order.
  template <class T>
  void allgatherv(const T* mine, std::span<const std::int64_t> counts, T* all) {
    std::vector<int> rc(static_cast<std::size_t>(size_)), rd(rc.size());
    std::int64_t at = 0;
    for (int q = 0; q < size_; ++q) {
      rc[q] = detail::count(counts[q], "MPI_Allgatherv");
      rd[q] = detail::count(at, "MPI_Allgatherv");
      at += counts[q];
    }
    detail::check(MPI_Allgatherv(mine, rc[rank_], detail::mpi_type<T>(), all, rc.data(), rd.data(), detail::mpi_type<T>(),
                                 comm_->c),
                  "MPI_Allgatherv");
  }
  // Sends send_counts[q] consecutive elements to each rank q; receives recv_counts[q] from
  // each into recv, in rank order.
  template <class T>
  void alltoallv(const T* send, std::span<const std::int64_t> send_counts, T* recv, std::span<const std::int64_t> recv_counts) {
    std::vector<int> sc(static_cast<std::size_t>(size_)), sd(sc.size()), rc(sc.size()), rd(sc.size());
    std::int64_t s_at = 0, r_at = 0;
    for (int q = 0; q < size_; ++q) {
      sc[q] = detail::count(send_counts[q], "MPI_Alltoallv");
      sd[q] = detail::count(s_at, "MPI_Alltoallv");
      rc[q] = detail::count(recv_counts[q], "MPI_Alltoallv");
      rd[q] = detail::count(r_at, "MPI_Alltoallv");
      s_at += send_counts[q];
      r_at += recv_counts[q];
    }
    detail::check(MPI_Alltoallv(send, sc.data(), sd.data(), detail::mpi_type<T>(), recv, rc.data(), rd.data(),
                                detail::mpi_type<T>(), comm_->c),
                  "MPI_Alltoallv");
  }
  template <class T>
  void broadcast(T* x, std::int64_t n, int root) {
    detail::check(MPI_Bcast(x, detail::count(n, "MPI_Bcast"), detail::mpi_type<T>(), root, comm_->c), "MPI_Bcast");
  }
  template <class T>
  void send(const T* x, std::int64_t n, int peer, int tag) {
    detail::check(MPI_Send(x, detail::count(n, "MPI_Send"), detail::mpi_type<T>(), peer, tag, comm_->c), "MPI_Send");
  }
  // Non-blocking send: x must stay unchanged until the Pending is waited for.
  template <class T>
  Pending isend(const T* x, std::int64_t n, int peer, int tag) {
    auto req = std::make_shared<MPI_Request>(MPI_REQUEST_NULL);
    detail::check(MPI_Isend(x, detail::count(n, "MPI_Isend"), detail::mpi_type<T>(), peer, tag, comm_->c, req.get()),
                  "MPI_Isend");
    return Pending([req] { detail::check(MPI_Wait(req.get(), MPI_STATUS_IGNORE), "MPI_Wait (send)"); });
  }
  template <class T>
  void recv(T* x, std::int64_t n, int peer, int tag) {
    detail::check(MPI_Recv(x, detail::count(n, "MPI_Recv"), detail::mpi_type<T>(), peer, tag, comm_->c, MPI_STATUS_IGNORE),
                  "MPI_Recv");
  }

 private:
  struct Handle {
    MPI_Comm c;
    bool owned;
    Handle(MPI_Comm cc, bool o) : c(cc), owned(o) {}
    ~Handle() {
      int fin = 0;
      MPI_Finalized(&fin);
      if (owned && !fin) MPI_Comm_free(&c);
    }
  };
  std::shared_ptr<Handle> comm_;
  int rank_ = 0, size_ = 1;
};
static_assert(Comm<Mpi>);

// MPI for the lifetime of a program (MPI_Init_thread / MPI_Finalize); errors on
// MPI_COMM_WORLD are returned, not fatal, so they become tmoe::Error.
class MpiSession {
 public:
  MpiSession(int& argc, char**& argv) {
    int init = 0;
    MPI_Initialized(&init);
    if (!init) {
      // Started without mpirun (a singleton): PMIx would keep its key-value store in
      // shared-memory files, which fail under a file-size limit or a full /dev/shm, so a
      // one-process run could not start where it otherwise would. Use its in-memory store.
      if (!std::getenv("OMPI_COMM_WORLD_SIZE") && !std::getenv("PMIX_RANK")) ::setenv("PMIX_MCA_gds", "hash", 0);
      int provided = 0;
      detail::check(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
      owned_ = true;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  }
  ~MpiSession() {
    if (owned_) MPI_Finalize();
  }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

 private:
  bool owned_ = false;
};

// The top-level handler of a multi-rank program: runs fn() inside an MpiSession; an error
// is printed as "tmoe: rank R of N: ..." and ends the whole job (MPI_Abort with exit code
// 2, or 3 for an unexpected exception) so that no other rank hangs in a collective.
inline int mpi_main(int& argc, char**& argv, const std::function<int()>& fn) {
  MpiSession session(argc, argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int code = 0;
  // One process prints errors as always; under several ranks each line names its rank.
  auto say = [&](const std::string& msg) {
    std::string m = msg;
    if (size > 1 && m.rfind("tmoe: ", 0) == 0) m = "tmoe: rank " + std::to_string(rank) + " of " + std::to_string(size) + ": " + m.substr(6);
    std::fprintf(stderr, "%s\n", m.c_str());
  };
  try {
    code = fn();
  } catch (const Error& e) {
    say(e.what());
    code = 2;
  } catch (const std::exception& e) {
    say(std::string("tmoe: unexpected error: ") + e.what());
    code = 3;
  }
  if (code != 0 && size > 1) {
    std::fflush(stderr);
    std::fflush(stdout);
    MPI_Abort(MPI_COMM_WORLD, code);
  }
  return code;
}

}  // namespace tmoe::comm
