// comm::Nccl on one rank and one GPU (parallel/comm/nccl.hpp): every call of the Comm
// interface goes through NCCL (a group of one still launches its kernels), so the test
// checks the calls, their stream ordering and their argument checks; with one rank each
// collective is the identity (or a copy), asserted bitwise, with the elements outside the
// addressed segments left as they were. The fixed-order sum's arithmetic for R ranks is
// ReduceOps::tree_sum, checked bitwise against tmoe::tree_sum for 1..33 leaves in
// test_cuda_optim.cu. Errors: bad split colors, wrong segment counts, out-of-range peers,
// host pointers, and any use of a destroyed or aborted communicator throw tmoe::Error.
// Not covered (needs several GPUs): sums over several ranks, the MPI bootstrap with
// more than one rank, sends between ranks, the asynchronous-error abort.
#define BOOST_TEST_MODULE cuda_nccl
#include <cstring>
#include <numeric>
#include <string>

#include "gpu_test.hpp"
#include "tmoe/parallel/comm/nccl.hpp"
#if defined(TMOE_HAVE_MPI)
#include "tmoe/parallel/comm/mpi.hpp"
#endif

namespace cu = tmoe::backend::cuda;
using tmoe::comm::Nccl;
using tmoe::comm::Reduction;

namespace {

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Runs f and checks that it throws tmoe::Error whose message contains `part`.
template <class F>
void expect_error(F&& f, const std::string& part) {
  try {
    f();
    BOOST_ERROR("no tmoe::Error thrown (expected one mentioning '" << part << "')");
  } catch (const tmoe::Error& e) {
    BOOST_TEST_MESSAGE(e.what());
    BOOST_TEST(std::string(e.what()).find(part) != std::string::npos, "message: " << e.what());
  }
}

// A kernel on the compute stream that changes x right before the collective: the NCCL
// stream must see its result (ordering through the event).
struct AddOne {
  float* x;
  __device__ void operator()(std::int64_t i) const { x[i] += 1.0f; }
};

}  // namespace

BOOST_AUTO_TEST_CASE(single_rank_group) {
  Nccl c = Nccl::single();
  BOOST_TEST(c.rank() == 0);
  BOOST_TEST(c.size() == 1);
  BOOST_TEST(c.usable());
  BOOST_TEST(std::string(Nccl::name) == "nccl");
  c.barrier();
}

BOOST_AUTO_TEST_CASE(allreduce_is_the_identity_on_one_rank) {
  Nccl c = Nccl::single();
  const std::int64_t n = 100003;
  for (Reduction red : {Reduction::kFixed, Reduction::kNative}) {
    const auto v = gpu_test::random_vector(n, 5);
    auto d = cu::to_device(v);
    // Work queued on the compute stream just before: the collective must be ordered after it.
    cu::elementwise(n, AddOne{d.data()});
    c.allreduce_sum(d.data(), n, red);
    std::vector<float> want = v;
    for (auto& x : want) x += 1.0f;
    BOOST_TEST(same_bits(cu::to_host(d), want), (red == Reduction::kFixed ? "fixed" : "native"));

    std::vector<double> vd(v.begin(), v.end());
    auto dd = cu::to_device(vd);
    c.allreduce_sum(dd.data(), n, red);
    BOOST_TEST(same_bits(cu::to_host(dd), vd));
  }
  // bf16 through NCCL's own type, and an integer type (exact, any order).
  auto b = gpu_test::upload<__nv_bfloat16>(gpu_test::random_vector(999, 6));
  const auto before = cu::to_host(b);
  c.allreduce_sum(b.data(), 999, Reduction::kFixed);
  c.allreduce_sum(b.data(), 999, Reduction::kNative);
  const auto after = cu::to_host(b);
  BOOST_TEST(std::memcmp(before.data(), after.data(), before.size() * sizeof(__nv_bfloat16)) == 0);
  std::vector<std::int64_t> iv(77);
  std::iota(iv.begin(), iv.end(), -30);
  auto di = cu::to_device(iv);
  c.allreduce_sum(di.data(), 77, Reduction::kFixed);
  BOOST_TEST(cu::to_host(di) == iv);
  // Nothing to do for zero elements.
  c.allreduce_sum(static_cast<float*>(nullptr), 0);
}

BOOST_AUTO_TEST_CASE(reduce_scatter_and_allgather_touch_only_the_segments) {
  Nccl c = Nccl::single();
  const std::int64_t n = 5000, lo = 123, hi = 4321;
  const std::int64_t b[2] = {lo, hi};
  for (Reduction red : {Reduction::kFixed, Reduction::kNative}) {
    const auto v = gpu_test::random_vector(n, 8);
    auto d = cu::to_device(v);
    auto p = c.ireduce_scatter_sum(d.data(), std::span<const std::int64_t>(b, 2), red);
    p.wait();
    p.wait();  // twice is harmless
    BOOST_TEST(p.done());
    BOOST_TEST(same_bits(cu::to_host(d), v));
    auto g = c.iallgather(d.data(), std::span<const std::int64_t>(b, 2));
    g.wait();
    BOOST_TEST(same_bits(cu::to_host(d), v));
  }
  // An empty range is no operation.
  const std::int64_t e[2] = {7, 7};
  cu::DeviceTensor<float> d(tmoe::Shape{10});
  c.ireduce_scatter_sum(d.data(), std::span<const std::int64_t>(e, 2)).wait();
}

BOOST_AUTO_TEST_CASE(gathers_broadcast_and_alltoall_copy) {
  Nccl c = Nccl::single();
  const std::int64_t n = 4097;
  const auto v = gpu_test::random_vector(n, 9);
  auto mine = cu::to_device(v);
  {
    auto all = gpu_test::poisoned<float>(n);
    c.allgather(mine.data(), n, all.data());
    BOOST_TEST(same_bits(cu::to_host(all), v));
  }
  {
    auto all = gpu_test::poisoned<float>(n);
    const std::int64_t counts[1] = {n};
    c.allgatherv(mine.data(), std::span<const std::int64_t>(counts, 1), all.data());
    BOOST_TEST(same_bits(cu::to_host(all), v));
  }
  {
    auto recv = gpu_test::poisoned<float>(n);
    const std::int64_t counts[1] = {n};
    c.alltoallv(mine.data(), std::span<const std::int64_t>(counts, 1), recv.data(), std::span<const std::int64_t>(counts, 1));
    BOOST_TEST(same_bits(cu::to_host(recv), v));
  }
  c.broadcast(mine.data(), n, 0);
  BOOST_TEST(same_bits(cu::to_host(mine), v));
}

BOOST_AUTO_TEST_CASE(send_to_self_is_grouped_with_the_receive) {
  Nccl c = Nccl::single();
  const std::int64_t n = 3000;
  const auto v = gpu_test::random_vector(n, 10);
  auto src = cu::to_device(v);
  auto dst = gpu_test::poisoned<float>(n);
  // isend, then recv: the send is issued in one NCCL group with the receive.
  auto p = c.isend(src.data(), n, 0, 1);
  c.recv(dst.data(), n, 0, 1);
  p.wait();
  BOOST_TEST(same_bits(cu::to_host(dst), v));
  // Two exchanges in a row keep their order.
  const auto w = gpu_test::random_vector(n, 11);
  auto src2 = cu::to_device(w);
  auto dst2 = gpu_test::poisoned<float>(n);
  auto p1 = c.isend(src.data(), n, 0, 2);
  c.recv(dst.data(), n, 0, 2);
  auto p2 = c.isend(src2.data(), n, 0, 3);
  c.recv(dst2.data(), n, 0, 3);
  p1.wait();
  p2.wait();
  BOOST_TEST(same_bits(cu::to_host(dst), v));
  BOOST_TEST(same_bits(cu::to_host(dst2), w));
}

BOOST_AUTO_TEST_CASE(split_makes_a_working_group) {
  Nccl c = Nccl::single();
  Nccl s = c.split(3, 0);
  BOOST_TEST(s.size() == 1);
  BOOST_TEST(s.rank() == 0);
  const auto v = gpu_test::random_vector(1000, 12);
  auto d = cu::to_device(v);
  s.allreduce_sum(d.data(), 1000, Reduction::kFixed);
  BOOST_TEST(same_bits(cu::to_host(d), v));
  // The parent still works.
  c.allreduce_sum(d.data(), 1000, Reduction::kNative);
  BOOST_TEST(same_bits(cu::to_host(d), v));
}

BOOST_AUTO_TEST_CASE(bad_arguments_are_errors) {
  Nccl c = Nccl::single();
  cu::DeviceTensor<float> d(tmoe::Shape{16});
  expect_error([&] { (void)c.split(-2, 0); }, "color");
  const std::int64_t three[3] = {0, 8, 16};
  expect_error([&] { c.ireduce_scatter_sum(d.data(), std::span<const std::int64_t>(three, 3)); }, "segment boundaries");
  const std::int64_t down[2] = {8, 4};
  expect_error([&] { c.iallgather(d.data(), std::span<const std::int64_t>(down, 2)); }, "non-decreasing");
  expect_error([&] { c.send(d.data(), 16, 1, 0); }, "rank 1");
  expect_error([&] { c.recv(d.data(), 16, -1, 0); }, "rank -1");
  expect_error([&] { c.broadcast(d.data(), 16, 2); }, "rank 2");
  expect_error([&] { c.allreduce_sum(d.data(), -1); }, "count");
  std::vector<float> host(16, 1.0f);
  expect_error([&] { c.allreduce_sum(host.data(), 16); }, "not device memory");
  // The communicator is still usable after argument errors.
  c.allreduce_sum(d.data(), 16);
}

BOOST_AUTO_TEST_CASE(a_destroyed_or_aborted_communicator_throws) {
  cu::DeviceTensor<float> d(tmoe::Shape{16});
  {
    Nccl c = Nccl::single();
    c.destroy();
    BOOST_TEST(!c.usable());
    expect_error([&] { c.allreduce_sum(d.data(), 16); }, "destroyed");
    expect_error([&] { c.barrier(); }, "destroyed");
    expect_error([&] { (void)c.split(0, 0); }, "destroyed");
    c.destroy();  // twice is harmless
  }
  {
    Nccl c = Nccl::single();
    Nccl copy = c;  // copies share the communicator
    c.abort();
    expect_error([&] { copy.allreduce_sum(d.data(), 16, Reduction::kNative); }, "aborted");
    expect_error([&] { copy.isend(d.data(), 16, 0, 0); }, "aborted");
  }
}

#if defined(TMOE_HAVE_MPI)
// The MPI bootstrap on one process (a singleton MPI job): unique id, broadcast, init.
BOOST_AUTO_TEST_CASE(mpi_bootstrap_on_one_rank) {
  int argc = 0;
  char** argv = nullptr;
  tmoe::comm::MpiSession session(argc, argv);
  const int dev = Nccl::select_local_device(MPI_COMM_WORLD);
  BOOST_TEST(dev == 0);
  Nccl c(MPI_COMM_WORLD);
  BOOST_TEST(c.size() == 1);
  const auto v = gpu_test::random_vector(100, 13);
  auto d = cu::to_device(v);
  c.allreduce_sum(d.data(), 100);
  BOOST_TEST(same_bits(cu::to_host(d), v));
}
#endif
