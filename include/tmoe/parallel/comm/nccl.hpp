#pragma once
// The Comm over NCCL (comm.hpp's interface, as comm::Mpi offers it) for the CUDA backend:
// every buffer is DEVICE memory (checked: a host pointer is an Error, not a crash inside
// NCCL). Compile with nvcc (it includes the CUDA backend) and link tmoe::nccl.
//
// Streams. A communicator owns one non-blocking stream. Before each operation an event
// recorded on the compute stream (Context::current().stream()) orders the NCCL stream after
// the work that produced the buffers; the operation's completion event orders the compute
// stream after it when the Pending is waited for. wait() also blocks the host until the
// transfer is done, polling ncclCommGetAsyncError meanwhile: an asynchronous error (a peer
// that died, a network failure) aborts the communicator (ncclCommAbort) and throws
// tmoe::Error instead of hanging; the communicator is unusable afterwards, and so is one
// that was destroy()ed: any call then throws.
//
// Reductions. kNative is NCCL's sum (ncclAllReduce; ncclReduceScatter for equal segments,
// one ncclReduce per segment otherwise): fast, order unspecified. kFixed is bitwise
// independent of the transport and of NCCL's algorithm choice: each segment's R
// contributions are sent to its owner (grouped ncclSend/ncclRecv into a scratch buffer),
// which adds them on the device along the tree of parallel/tree_sum.hpp in rank order
// (ReduceOps::tree_sum, bitwise tmoe::tree_sum), so the result is comm::Mpi's kFixed result.
//
// Point to point. NCCL has no tags and no buffering: a send completes only with its
// receive, and messages between two ranks match in the order they were issued. So that a
// pair of ranks may each isend and then recv (the pipeline's exchange), isend only records
// the send; it is issued together (one NCCL group) with the next recv on this communicator,
// or when its Pending is waited for, or before the next collective, whichever is first.
// A group completes only when every operation in it is matched, so a pattern MPI's
// buffering allows can still hang here: two ranks that each isend twice to the other before
// their first recv (receive between the two sends), or that each send (blocking) before
// they recv (as MPI hangs on large messages). Tags are checked for range only.
//
// Construction. Nccl::single() is a group of one rank on the current device
// (ncclCommInitAll; no MPI). With TMOE_HAVE_MPI, Nccl(MPI_Comm) bootstraps over MPI: rank 0
// makes the unique id (ncclGetUniqueId), MPI_Bcast sends it, every rank joins
// (ncclCommInitRank) on the device Context::current() uses; select_local_device() picks
// one device per rank of a node first. split() is ncclCommSplit. tests/gpu/test_cuda_nccl.cu
// covers one rank on one GPU; the multi-rank paths (MPI bootstrap over several ranks,
// sends between ranks, the fixed-order exchange, split into groups of several ranks) follow
// NCCL's documented semantics but have not been run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <nccl.h>
#if defined(TMOE_HAVE_MPI)
#include <mpi.h>
#endif

#include <chrono>
#include <climits>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "tmoe/backend/cuda/check.hpp"
#include "tmoe/backend/cuda/context.hpp"
#include "tmoe/backend/cuda/reduce.cuh"
#include "tmoe/backend/cuda/tensor.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/parallel/comm/comm.hpp"

namespace tmoe::comm {

namespace detail {
using tmoe::detail::cat;

inline void check_nccl(ncclResult_t r, const char* call, const char* file, int line) {
  if (r == ncclSuccess) return;
  std::string msg = std::string("NCCL error ") + ncclGetErrorString(r);
  const char* last = ncclGetLastError(nullptr);
  if (last && *last) msg += std::string(" (") + last + ")";
  throw Error(msg, backend::cuda::call_site(call, file, line),
              "a healthy NCCL job (every rank alive, issuing the same collectives in the same order)");
}
}  // namespace detail

}  // namespace tmoe::comm

#define TMOE_NCCL_CHECK(call) ::tmoe::comm::detail::check_nccl((call), #call, __FILE__, __LINE__)

namespace tmoe::comm {

namespace detail {

template <class T>
ncclDataType_t nccl_type() {
  if constexpr (std::is_same_v<T, float>) return ncclFloat32;
  else if constexpr (std::is_same_v<T, double>) return ncclFloat64;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return ncclBfloat16;
  else if constexpr (std::is_same_v<T, __half>) return ncclFloat16;
  else if constexpr (std::is_same_v<T, std::int64_t>) return ncclInt64;
  else if constexpr (std::is_same_v<T, std::int32_t>) return ncclInt32;
  else if constexpr (std::is_same_v<T, std::uint8_t>) return ncclUint8;
  else if constexpr (std::is_same_v<T, char> || std::is_same_v<T, std::int8_t>) return ncclInt8;
  else static_assert(tmoe::dependent_false<T>, "tmoe: comm::Nccl: no NCCL datatype for this element type");
}

// An event recorded on the communicator's stream after an operation. Destroying it waits
// for the operation, so buffers released with it are never freed under a running transfer.
class DoneEvent {
 public:
  explicit DoneEvent(cudaStream_t s) {
    TMOE_CUDA_CHECK(cudaEventCreateWithFlags(&e_, cudaEventDisableTiming));
    TMOE_CUDA_CHECK(cudaEventRecord(e_, s));
  }
  DoneEvent(const DoneEvent&) = delete;
  DoneEvent& operator=(const DoneEvent&) = delete;
  ~DoneEvent() {
    cudaEventSynchronize(e_);
    cudaEventDestroy(e_);
    cudaGetLastError();
  }
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

// One issued (or, for an isend, recorded) operation: its completion and the device memory
// it uses; the memory is released after the transfer (scratch is destroyed after done).
struct NcclOp {
  std::shared_ptr<void> scratch;
  std::shared_ptr<DoneEvent> done;  // null while a send is deferred
};

struct DeferredSend {
  const void* buf;
  std::size_t count;
  ncclDataType_t type;
  int peer;
  std::shared_ptr<NcclOp> op;
};

// The communicator and what every copy of one Nccl shares.
struct NcclHandle {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t ready = nullptr;
  int rank = 0, size = 1, device = 0;
  std::string dead;  // why the communicator can no longer be used; empty while it can
  std::vector<DeferredSend> sends;
  backend::cuda::DeviceTensor<float> token;  // the barrier's one element

  NcclHandle() = default;
  NcclHandle(const NcclHandle&) = delete;
  NcclHandle& operator=(const NcclHandle&) = delete;
  ~NcclHandle() {
    if (stream) cudaStreamSynchronize(stream);
    if (comm) ncclCommDestroy(comm);
    if (ready) cudaEventDestroy(ready);
    if (stream) cudaStreamDestroy(stream);
    cudaGetLastError();
  }
};

// Ends an NCCL group on every path (an Error thrown inside the group included).
class NcclGroup {
 public:
  NcclGroup() { TMOE_NCCL_CHECK(ncclGroupStart()); }
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;
  void end() {
    open_ = false;
    TMOE_NCCL_CHECK(ncclGroupEnd());
  }
  ~NcclGroup() {
    if (open_) ncclGroupEnd();
  }

 private:
  bool open_ = true;
};

}  // namespace detail

class Nccl {
 public:
  static constexpr const char* name = "nccl";

  // A group of one rank on the device of Context::current() (no MPI needed).
  static Nccl single() {
    const int dev = backend::cuda::Context::current().info().ordinal;
    TMOE_CUDA_CHECK(cudaSetDevice(dev));
    ncclComm_t c = nullptr;
    TMOE_NCCL_CHECK(ncclCommInitAll(&c, 1, &dev));
    return Nccl(c);
  }

#if defined(TMOE_HAVE_MPI)
  // The ranks of `c`, one NCCL rank each, on the device of Context::current() on each rank
  // (select_local_device first). Collective over c.
  explicit Nccl(MPI_Comm c) {
    int rank = 0, size = 1;
    mpi_check(MPI_Comm_rank(c, &rank), "MPI_Comm_rank");
    mpi_check(MPI_Comm_size(c, &size), "MPI_Comm_size");
    ncclUniqueId id{};
    if (rank == 0) TMOE_NCCL_CHECK(ncclGetUniqueId(&id));
    mpi_check(MPI_Bcast(&id, static_cast<int>(sizeof id), MPI_BYTE, 0, c), "MPI_Bcast (NCCL unique id)");
    TMOE_CUDA_CHECK(cudaSetDevice(backend::cuda::Context::current().info().ordinal));
    ncclComm_t nc = nullptr;
    TMOE_NCCL_CHECK(ncclCommInitRank(&nc, size, id, rank));
    init(nc);
  }

  // Makes Context::current() the device of this rank among the ranks of `c` on its node
  // (its node-local rank); returns the device. One device per rank: more ranks on a node
  // than devices is an Error (NCCL cannot put two ranks on one device).
  static int select_local_device(MPI_Comm c) {
    MPI_Comm local;
    mpi_check(MPI_Comm_split_type(c, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local), "MPI_Comm_split_type");
    int lr = 0, ls = 1;
    MPI_Comm_rank(local, &lr);
    MPI_Comm_size(local, &ls);
    MPI_Comm_free(&local);
    const int n = backend::cuda::device_count();
    if (n < ls)
      throw Error(detail::cat(ls, " ranks on this node share ", n, " CUDA device(s)"), "comm::Nccl::select_local_device",
                  "one device per rank (fewer ranks per node, or more visible devices)");
    backend::cuda::Context::select(lr);
    return lr;
  }
#endif

  int rank() const { return h_->rank; }
  int size() const { return h_->size; }
  ncclComm_t handle() const { return h_->comm; }
  cudaStream_t stream() const { return h_->stream; }
  bool usable() const { return h_->dead.empty(); }

  // The ranks with the same color (>= 0) form a new group, ordered by key, then by rank
  // here (ncclCommSplit). Collective over this group.
  Nccl split(int color, int key) const {
    if (color < 0)
      throw Error(detail::cat("color ", color), "comm::Nccl::split", "a color >= 0 (every rank joins a group)");
    alive("split");
    flush_sends(*h_);
    ncclComm_t nc = nullptr;
    TMOE_NCCL_CHECK(ncclCommSplit(h_->comm, color, key, &nc, nullptr));
    if (!nc) throw Error("ncclCommSplit returned no communicator", "comm::Nccl::split", "a communicator for every color >= 0");
    return Nccl(nc);
  }

  // Returns when every rank has reached it and all earlier operations here are complete.
  void barrier() {
    allreduce_sum(h_->token.data(), 1, Reduction::kNative);
  }

  template <class T>
  void allreduce_sum(T* x, std::int64_t n, Reduction red = Reduction::kFixed) {
    check_count(n, "allreduce_sum");
    if (n == 0) return;
    require_device(x, "allreduce_sum");
    if (red == Reduction::kNative) {
      begin("allreduce_sum");
      TMOE_NCCL_CHECK(ncclAllReduce(x, x, static_cast<std::size_t>(n), detail::nccl_type<T>(), ncclSum, h_->comm, h_->stream));
      finish({}).wait();
      return;
    }
    const auto b = segments(0, n, h_->size);
    ireduce_scatter_sum(x, b, red).wait();
    iallgather(x, b).wait();
  }

  // x[b[r], b[r+1]) on rank r becomes the sum over the group of that segment (the other
  // segments are left as they were).
  template <class T>
  Pending ireduce_scatter_sum(T* x, std::span<const std::int64_t> b, Reduction red = Reduction::kFixed) {
    check_segments(b, "ireduce_scatter_sum");
    if (b[h_->size] == b[0]) return {};
    require_device(x, "ireduce_scatter_sum");
    const int r = h_->rank, R = h_->size;
    const auto dt = detail::nccl_type<T>();
    const std::int64_t mine = b[r + 1] - b[r];
    // Integer sums are exact in any order: the library's is already transport-independent.
    if (red == Reduction::kNative || !backend::cuda::is_device_scalar_v<T>) {
      begin("ireduce_scatter_sum");
      if (const std::int64_t c = equal_count(b); c >= 0) {
        TMOE_NCCL_CHECK(ncclReduceScatter(x + b[0], x + b[0] + c * r, static_cast<std::size_t>(c), dt, ncclSum, h_->comm, h_->stream));
      } else {
        detail::NcclGroup group;
        for (int q = 0; q < R; ++q)
          if (b[q + 1] > b[q])
            TMOE_NCCL_CHECK(ncclReduce(x + b[q], x + b[q], static_cast<std::size_t>(b[q + 1] - b[q]), dt, ncclSum, q, h_->comm,
                                       h_->stream));
        group.end();
      }
      return finish({});
    }
    if constexpr (backend::cuda::is_device_scalar_v<T>) {
      // Leaf q of this rank's segment is rank q's contribution, at scratch + q·mine.
      auto scratch = std::make_shared<backend::cuda::DeviceTensor<T>>();
      scratch->ensure(Shape{std::max<std::int64_t>(1, mine * R)});
      T* buf = scratch->data();
      begin("ireduce_scatter_sum");
      {
        detail::NcclGroup group;
        for (int q = 0; q < R; ++q) {
          if (q == r) continue;
          if (b[q + 1] > b[q]) TMOE_NCCL_CHECK(ncclSend(x + b[q], static_cast<std::size_t>(b[q + 1] - b[q]), dt, q, h_->comm, h_->stream));
          if (mine > 0) TMOE_NCCL_CHECK(ncclRecv(buf + mine * q, static_cast<std::size_t>(mine), dt, q, h_->comm, h_->stream));
        }
        group.end();
      }
      if (mine > 0) {
        TMOE_CUDA_CHECK(cudaMemcpyAsync(buf + mine * r, x + b[r], sizeof(T) * static_cast<std::size_t>(mine),
                                        cudaMemcpyDeviceToDevice, h_->stream));
        backend::cuda::ReduceOps::tree_sum(buf, mine, R, x + b[r], mine, h_->stream);
      }
      return finish(std::move(scratch));
    } else {
      return {};  // not reached: integers took the branch above
    }
  }

  // Every rank's segment x[b[r], b[r+1]) is copied into the same place on every rank.
  template <class T>
  Pending iallgather(T* x, std::span<const std::int64_t> b) {
    check_segments(b, "iallgather");
    if (b[h_->size] == b[0]) return {};
    require_device(x, "iallgather");
    const auto dt = detail::nccl_type<T>();
    begin("iallgather");
    if (const std::int64_t c = equal_count(b); c >= 0) {
      TMOE_NCCL_CHECK(ncclAllGather(x + b[0] + c * h_->rank, x + b[0], static_cast<std::size_t>(c), dt, h_->comm, h_->stream));
    } else {
      detail::NcclGroup group;
      for (int q = 0; q < h_->size; ++q)
        if (b[q + 1] > b[q])
          TMOE_NCCL_CHECK(ncclBroadcast(x + b[q], x + b[q], static_cast<std::size_t>(b[q + 1] - b[q]), dt, q, h_->comm, h_->stream));
      group.end();
    }
    return finish({});
  }

  // all[q * count + i] = rank q's mine[i].
  template <class T>
  void allgather(const T* mine, std::int64_t count, T* all) {
    check_count(count, "allgather");
    if (count == 0) return;
    require_device(mine, "allgather");
    require_device(all, "allgather");
    begin("allgather");
    TMOE_NCCL_CHECK(ncclAllGather(mine, all, static_cast<std::size_t>(count), detail::nccl_type<T>(), h_->comm, h_->stream));
    finish({}).wait();
  }
  // Rank q contributes counts[q] elements; all holds them in rank order.
  template <class T>
  void allgatherv(const T* mine, std::span<const std::int64_t> counts, T* all) {
    check_counts(counts, "allgatherv");
    require_device(all, "allgatherv");
    if (counts[h_->rank] > 0) require_device(mine, "allgatherv");
    const auto dt = detail::nccl_type<T>();
    begin("allgatherv");
    {
      detail::NcclGroup group;
      std::int64_t at = 0;
      for (int q = 0; q < h_->size; ++q) {
        if (counts[q] > 0)
          TMOE_NCCL_CHECK(ncclBroadcast(q == h_->rank ? static_cast<const void*>(mine) : static_cast<const void*>(all + at),
                                        all + at, static_cast<std::size_t>(counts[q]), dt, q, h_->comm, h_->stream));
        at += counts[q];
      }
      group.end();
    }
    finish({}).wait();
  }
  // Sends send_counts[q] consecutive elements to each rank q; receives recv_counts[q] from
  // each into recv, in rank order.
  template <class T>
  void alltoallv(const T* send, std::span<const std::int64_t> send_counts, T* recv, std::span<const std::int64_t> recv_counts) {
    check_counts(send_counts, "alltoallv");
    check_counts(recv_counts, "alltoallv");
    const auto dt = detail::nccl_type<T>();
    std::int64_t s_at = 0, r_at = 0;
    for (int q = 0; q < h_->size; ++q) s_at += send_counts[q], r_at += recv_counts[q];
    if (s_at > 0) require_device(send, "alltoallv");
    if (r_at > 0) require_device(recv, "alltoallv");
    begin("alltoallv");
    {
      detail::NcclGroup group;
      s_at = r_at = 0;
      for (int q = 0; q < h_->size; ++q) {
        if (send_counts[q] > 0)
          TMOE_NCCL_CHECK(ncclSend(send + s_at, static_cast<std::size_t>(send_counts[q]), dt, q, h_->comm, h_->stream));
        if (recv_counts[q] > 0)
          TMOE_NCCL_CHECK(ncclRecv(recv + r_at, static_cast<std::size_t>(recv_counts[q]), dt, q, h_->comm, h_->stream));
        s_at += send_counts[q];
        r_at += recv_counts[q];
      }
      group.end();
    }
    finish({}).wait();
  }
  template <class T>
  void broadcast(T* x, std::int64_t n, int root) {
    check_count(n, "broadcast");
    check_peer(root, "broadcast");
    if (n == 0) return;
    require_device(x, "broadcast");
    begin("broadcast");
    TMOE_NCCL_CHECK(ncclBroadcast(x, x, static_cast<std::size_t>(n), detail::nccl_type<T>(), root, h_->comm, h_->stream));
    finish({}).wait();
  }
  template <class T>
  void send(const T* x, std::int64_t n, int peer, int tag) {
    isend(x, n, peer, tag).wait();
  }
  // Non-blocking send: x must stay unchanged until the Pending is waited for. Issued with
  // the next recv, wait or collective (see the header comment).
  template <class T>
  Pending isend(const T* x, std::int64_t n, int peer, int tag) {
    check_count(n, "isend");
    check_peer(peer, "isend");
    check_tag(tag, "isend");
    alive("isend");
    if (n == 0) return {};
    require_device(x, "isend");
    auto op = std::make_shared<detail::NcclOp>();
    h_->sends.push_back({x, static_cast<std::size_t>(n), detail::nccl_type<T>(), peer, op});
    return Pending([h = h_, op] {
      if (!op->done) flush_sends(*h);
      wait_op(*h, *op);
    });
  }
  template <class T>
  void recv(T* x, std::int64_t n, int peer, int tag) {
    check_count(n, "recv");
    check_peer(peer, "recv");
    check_tag(tag, "recv");
    if (n == 0) return;
    require_device(x, "recv");
    begin_raw("recv");
    std::vector<detail::DeferredSend> sends = std::move(h_->sends);
    h_->sends.clear();
    {
      detail::NcclGroup group;
      for (const auto& s : sends) TMOE_NCCL_CHECK(ncclSend(s.buf, s.count, s.type, s.peer, h_->comm, h_->stream));
      TMOE_NCCL_CHECK(ncclRecv(x, static_cast<std::size_t>(n), detail::nccl_type<T>(), peer, h_->comm, h_->stream));
      group.end();
    }
    auto done = std::make_shared<detail::DoneEvent>(h_->stream);
    for (auto& s : sends) s.op->done = done;
    detail::NcclOp op;
    op.done = done;
    wait_op(*h_, op);
  }

  // Frees the communicator now (collective, as ncclCommDestroy); later calls throw.
  void destroy() {
    if (!h_->comm) return;
    flush_sends(*h_);
    TMOE_CUDA_CHECK(cudaStreamSynchronize(h_->stream));
    ncclComm_t c = h_->comm;
    h_->comm = nullptr;
    h_->dead = "was destroyed";
    TMOE_NCCL_CHECK(ncclCommDestroy(c));
  }
  // Abandons the communicator and its pending operations (ncclCommAbort); later calls throw.
  void abort(const std::string& why = "was aborted") { abort_handle(*h_, why); }

 private:
  explicit Nccl(ncclComm_t c) { init(c); }

  void init(ncclComm_t c) {
    h_ = std::make_shared<detail::NcclHandle>();
    h_->comm = c;
    h_->device = backend::cuda::Context::current().info().ordinal;
    TMOE_NCCL_CHECK(ncclCommUserRank(c, &h_->rank));
    TMOE_NCCL_CHECK(ncclCommCount(c, &h_->size));
    TMOE_CUDA_CHECK(cudaStreamCreateWithFlags(&h_->stream, cudaStreamNonBlocking));
    TMOE_CUDA_CHECK(cudaEventCreateWithFlags(&h_->ready, cudaEventDisableTiming));
    h_->token.resize(Shape{1});
  }

#if defined(TMOE_HAVE_MPI)
  static void mpi_check(int rc, const char* op) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw Error(detail::cat("MPI error: ", std::string(msg, static_cast<std::size_t>(len))), detail::cat("comm::Nccl: ", op),
                "a healthy MPI job");
  }
#endif

  void alive(const char* op) const {
    if (!h_->dead.empty())
      throw Error(detail::cat("the NCCL communicator ", h_->dead), detail::cat("comm::Nccl::", op),
                  "a communicator that is neither destroyed nor aborted");
  }
  static void check_count(std::int64_t n, const char* op) {
    if (n < 0) throw Error(detail::cat("a count of ", n), detail::cat("comm::Nccl::", op), "a count >= 0");
  }
  void check_peer(int peer, const char* op) const {
    if (peer < 0 || peer >= h_->size)
      throw Error(detail::cat("rank ", peer), detail::cat("comm::Nccl::", op), detail::cat("a rank in [0, ", h_->size, ")"));
  }
  static void check_tag(int tag, const char* op) {
    if (tag < 0) throw Error(detail::cat("tag ", tag), detail::cat("comm::Nccl::", op), "a tag >= 0");
  }
  void check_segments(std::span<const std::int64_t> b, const char* op) const {
    if (static_cast<std::int64_t>(b.size()) != h_->size + 1)
      throw Error(detail::cat(b.size(), " segment boundaries"), detail::cat("comm::Nccl::", op),
                  detail::cat(h_->size + 1, " (the group's size + 1)"));
    for (int q = 0; q < h_->size; ++q)
      if (b[q + 1] < b[q])
        throw Error(detail::cat("boundary ", q + 1, " (", b[q + 1], ") below boundary ", q, " (", b[q], ")"),
                    detail::cat("comm::Nccl::", op), "non-decreasing segment boundaries");
  }
  void check_counts(std::span<const std::int64_t> counts, const char* op) const {
    if (static_cast<std::int64_t>(counts.size()) != h_->size)
      throw Error(detail::cat(counts.size(), " counts"), detail::cat("comm::Nccl::", op), detail::cat(h_->size, " (one per rank)"));
    for (std::int64_t c : counts) check_count(c, op);
  }
  // The common length of all segments, or -1 when they differ.
  std::int64_t equal_count(std::span<const std::int64_t> b) const {
    const std::int64_t c = b[1] - b[0];
    for (int q = 1; q < h_->size; ++q)
      if (b[q + 1] - b[q] != c) return -1;
    return c;
  }
  static void require_device(const void* p, const char* op) {
    cudaPointerAttributes a{};
    const cudaError_t e = cudaPointerGetAttributes(&a, p);
    if (e != cudaSuccess) cudaGetLastError();
    if (e != cudaSuccess || (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged))
      throw Error("a buffer that is not device memory", detail::cat("comm::Nccl::", op),
                  "device pointers (comm::Nccl works on GPU buffers; use comm::Mpi for host buffers)");
  }

  // Orders the NCCL stream after the compute stream's work so far.
  void begin_raw(const char* op) {
    alive(op);
    TMOE_CUDA_CHECK(cudaEventRecord(h_->ready, backend::cuda::Context::current().stream()));
    TMOE_CUDA_CHECK(cudaStreamWaitEvent(h_->stream, h_->ready, 0));
  }
  // begin_raw, after issuing the sends recorded so far (so operations keep their order).
  void begin(const char* op) {
    alive(op);
    flush_sends(*h_);
    begin_raw(op);
  }
  Pending finish(std::shared_ptr<void> scratch) {
    auto op = std::make_shared<detail::NcclOp>();
    op->scratch = std::move(scratch);
    op->done = std::make_shared<detail::DoneEvent>(h_->stream);
    return Pending([h = h_, op] { wait_op(*h, *op); });
  }

  static void flush_sends(detail::NcclHandle& h) {
    if (h.sends.empty() || !h.dead.empty()) return;
    std::vector<detail::DeferredSend> sends = std::move(h.sends);
    h.sends.clear();
    TMOE_CUDA_CHECK(cudaEventRecord(h.ready, backend::cuda::Context::current().stream()));
    TMOE_CUDA_CHECK(cudaStreamWaitEvent(h.stream, h.ready, 0));
    {
      detail::NcclGroup group;
      for (const auto& s : sends) TMOE_NCCL_CHECK(ncclSend(s.buf, s.count, s.type, s.peer, h.comm, h.stream));
      group.end();
    }
    auto done = std::make_shared<detail::DoneEvent>(h.stream);
    for (auto& s : sends) s.op->done = done;
  }

  static void abort_handle(detail::NcclHandle& h, const std::string& why) {
    h.sends.clear();
    if (h.comm) {
      ncclComm_t c = h.comm;
      h.comm = nullptr;
      ncclCommAbort(c);
    }
    if (h.dead.empty()) h.dead = why;
  }

  // Blocks until op is complete, watching for NCCL's asynchronous errors, then orders the
  // compute stream after it.
  static void wait_op(detail::NcclHandle& h, const detail::NcclOp& op) {
    if (!op.done) {
      if (!h.dead.empty())
        throw Error(detail::cat("the NCCL communicator ", h.dead, " before this send was issued"), "comm::Nccl::wait",
                    "a communicator that is neither destroyed nor aborted");
      return;  // nothing was issued (an empty send)
    }
    const cudaEvent_t e = op.done->get();
    for (int spins = 0;; ++spins) {
      const cudaError_t q = cudaEventQuery(e);
      if (q == cudaSuccess) break;
      if (q != cudaErrorNotReady) backend::cuda::check_cuda(q, "cudaEventQuery (NCCL operation)", __FILE__, __LINE__);
      if (h.comm) {
        ncclResult_t async = ncclSuccess;
        TMOE_NCCL_CHECK(ncclCommGetAsyncError(h.comm, &async));
        if (async != ncclSuccess && async != ncclInProgress) {
          const std::string what = std::string("asynchronous NCCL error ") + ncclGetErrorString(async);
          abort_handle(h, "was aborted after an " + what);
          throw Error(what + "; the communicator was aborted", "comm::Nccl::wait",
                      "every rank alive and issuing the same collectives in the same order");
        }
      } else if (!h.dead.empty()) {
        throw Error(detail::cat("the NCCL communicator ", h.dead, " while an operation was in flight"), "comm::Nccl::wait");
      }
      if (spins < 1000) std::this_thread::yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    TMOE_CUDA_CHECK(cudaStreamWaitEvent(backend::cuda::Context::current().stream(), e, 0));
  }

  std::shared_ptr<detail::NcclHandle> h_;
};
static_assert(Comm<Nccl>);

}  // namespace tmoe::comm
