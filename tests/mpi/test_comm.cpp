// The Mpi comm's collectives against a plain reference on every rank: the fixed-order
// reductions are bitwise the tree sum of the ranks' vectors in rank order; the native ones
// match within rounding; all-gather, all-to-all(v), send/recv and split move the right data.
#define BOOST_TEST_MODULE comm
#include "mpi_fixture.hpp"

#include <cmath>
#include <cstring>
#include <numeric>

#include "tmoe/core/philox.hpp"

using namespace tmoe;
using MpiFixture = tmoe::test::MpiFixture;
BOOST_TEST_GLOBAL_FIXTURE(MpiFixture);

namespace {
// Rank r's test vector: values of very different magnitudes, so the order of a sum shows.
std::vector<float> values(int r, std::int64_t n) {
  std::vector<float> v(static_cast<std::size_t>(n));
  const RngKey key{7, static_cast<std::uint32_t>(r), 1, 0};
  for (std::int64_t i = 0; i < n; ++i)
    v[i] = static_cast<float>(key.normal(static_cast<std::uint64_t>(i)) * std::pow(10.0, (i + r) % 7 - 3));
  return v;
}
std::vector<float> tree_reference(int ranks, std::int64_t n) {
  std::vector<std::vector<float>> all;
  std::vector<const float*> p;
  for (int q = 0; q < ranks; ++q) all.push_back(values(q, n));
  for (auto& v : all) p.push_back(v.data());
  std::vector<float> out(static_cast<std::size_t>(n));
  tree_sum(p.data(), ranks, out.data(), n);
  return out;
}
}  // namespace

BOOST_AUTO_TEST_CASE(tree_is_the_rank_tree_of_a_piece_tree) {
  // Two pieces on each of R ranks, summed locally then across ranks, equal the tree over
  // all 2R pieces (the property the data-parallel bitwise claim rests on).
  const int R = test::world_size();
  const std::int64_t n = 1000;
  std::vector<std::vector<float>> pieces;
  for (int i = 0; i < 2 * R; ++i) pieces.push_back(values(100 + i, n));
  std::vector<const float*> all;
  for (auto& v : pieces) all.push_back(v.data());
  std::vector<float> whole(n), local(n);
  tree_sum(all.data(), 2 * R, whole.data(), n);
  std::vector<std::vector<float>> rank_sums(static_cast<std::size_t>(R), std::vector<float>(n));
  std::vector<const float*> rs;
  for (int q = 0; q < R; ++q) {
    PieceAccumulator<float> acc;
    acc.reset(n);
    acc.add(pieces[2 * q].data());
    acc.finish(pieces[2 * q + 1].data(), rank_sums[q].data(), 0, n);
    rs.push_back(rank_sums[q].data());
  }
  tree_sum(rs.data(), R, local.data(), n);
  BOOST_TEST(std::memcmp(whole.data(), local.data(), n * sizeof(float)) == 0);
}

BOOST_AUTO_TEST_CASE(fixed_allreduce_is_bitwise_the_tree) {
  comm::Mpi w;
  for (std::int64_t n : {1, 5, 1000, 100003}) {
    auto v = values(w.rank(), n);
    w.allreduce_sum(v.data(), n, comm::Reduction::kFixed);
    const auto ref = tree_reference(w.size(), n);
    BOOST_TEST(std::memcmp(v.data(), ref.data(), n * sizeof(float)) == 0, "n = " << n);
  }
}

BOOST_AUTO_TEST_CASE(native_allreduce_matches_within_rounding) {
  comm::Mpi w;
  const std::int64_t n = 4097;
  auto v = values(w.rank(), n);
  w.allreduce_sum(v.data(), n, comm::Reduction::kNative);
  const auto ref = tree_reference(w.size(), n);
  double worst = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    double scale = 0;
    for (int q = 0; q < w.size(); ++q) scale += std::abs(values(q, n)[i]);
    worst = std::max(worst, std::abs(static_cast<double>(v[i]) - ref[i]) / scale);
  }
  BOOST_TEST(worst < 1e-6);
}

BOOST_AUTO_TEST_CASE(reduce_scatter_and_allgather_on_uneven_segments) {
  comm::Mpi w;
  const std::int64_t n = 777;
  for (std::int64_t granule : {1, 64}) {
    auto v = values(w.rank(), n);
    const auto b = comm::segments(10, n - 3, w.size(), granule);
    w.ireduce_scatter_sum(v.data(), std::span<const std::int64_t>(b), comm::Reduction::kFixed).wait();
    const auto ref = tree_reference(w.size(), n);
    const auto mine = values(w.rank(), n);
    for (std::int64_t i = 0; i < n; ++i) {
      const bool owned = i >= b[w.rank()] && i < b[w.rank() + 1];
      BOOST_TEST((owned ? v[i] == ref[i] : v[i] == mine[i]), "element " << i << " granule " << granule);
    }
    w.iallgather(v.data(), std::span<const std::int64_t>(b)).wait();
    for (std::int64_t i = 10; i < n - 3; ++i) BOOST_TEST(v[i] == ref[i]);
  }
}

BOOST_AUTO_TEST_CASE(alltoallv_send_recv_and_split) {
  comm::Mpi w;
  const int R = w.size(), r = w.rank();
  // Rank r sends q + 1 copies of (100 r + q) to rank q.
  std::vector<std::int64_t> sc(R), rc(R);
  std::vector<double> send;
  for (int q = 0; q < R; ++q) {
    sc[q] = q + 1;
    rc[q] = r + 1;
    for (int j = 0; j <= q; ++j) send.push_back(100.0 * r + q);
  }
  std::vector<double> recv(static_cast<std::size_t>(R * (r + 1)));
  w.alltoallv(send.data(), std::span<const std::int64_t>(sc), recv.data(), std::span<const std::int64_t>(rc));
  for (int q = 0; q < R; ++q)
    for (int j = 0; j <= r; ++j) BOOST_TEST(recv[q * (r + 1) + j] == 100.0 * q + r);
  // A ring of send/recv (even ranks send first).
  const double out = r;
  double in = -1;
  const int next = (r + 1) % R, prev = (r + R - 1) % R;
  if (R > 1) {
    if (r % 2 == 0) {
      w.send(&out, 1, next, 3);
      w.recv(&in, 1, prev, 3);
    } else {
      w.recv(&in, 1, prev, 3);
      w.send(&out, 1, next, 3);
    }
    BOOST_TEST(in == static_cast<double>(prev));
  }
  // Split into even and odd ranks; sizes and ranks follow the key.
  comm::Mpi half = w.split(r % 2, r);
  BOOST_TEST(half.size() == (R + 1 - r % 2) / 2);
  BOOST_TEST(half.rank() == r / 2);
  double one = 1;
  half.allreduce_sum(&one, 1, comm::Reduction::kFixed);
  BOOST_TEST(one == static_cast<double>(half.size()));
}

BOOST_AUTO_TEST_CASE(mpi_errors_become_tmoe_errors) {
  comm::Mpi w;
  double x = 0;
  // A peer outside the group: MPI returns an error code, which names rank and operation.
  try {
    w.send(&x, 1, w.size() + 5, 0);
    BOOST_FAIL("send to a missing rank did not throw");
  } catch (const Error& e) {
    const std::string m = e.what();
    BOOST_TEST(m.find("MPI_Send") != std::string::npos, m);
    BOOST_TEST(m.find("rank " + std::to_string(w.rank())) != std::string::npos, m);
  }
}
