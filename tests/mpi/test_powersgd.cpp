// PowerSGD over MPI on a small hand-made registry: a gradient of rank 1 passes exactly (the
// projection property), also one of rank below r whose factors are exactly parallel, while
// everything uncompressed is bitwise the fixed-order sum; error feedback makes the running
// mean of the results converge to the exact sum; the factors send fewer bytes; every replica
// ends with bitwise the same gradient; a step of zeros or of NaN neither stalls nor corrupts
// the state.
#define BOOST_TEST_MODULE powersgd
#include "mpi_fixture.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>

#include "tmoe/core/philox.hpp"
#include "tmoe/parallel/comm/serial.hpp"
#include "tmoe/parallel/powersgd.hpp"

using namespace tmoe;
using MpiFixture = tmoe::test::MpiFixture;
BOOST_TEST_GLOBAL_FIXTURE(MpiFixture);

namespace {

constexpr auto kFixed = comm::Reduction::kFixed;

// Matrices that compress at rank 1 and 2, a vector, a tiny and a square matrix on the edge of
// the byte rule, a rank-3 tensor; the 16-element alignment leaves padding between them.
ParamRegistry test_registry() {
  ParamRegistry reg;
  reg.add("attn", Shape{24, 32}, kTagAttention, Init::kNormal, 0.02);
  reg.add("norm", Shape{40}, kTagNorm, Init::kOnes);
  reg.add("ffn", Shape{32, 48}, kTagFfn, Init::kNormal, 0.02);
  reg.add("tiny", Shape{2, 3}, kTagHead, Init::kNormal, 0.02);
  reg.add("square", Shape{6, 6}, kTagRouter, Init::kNormal, 0.02);
  reg.add("cube", Shape{2, 4, 8}, kTagExpert, Init::kNormal, 0.02);
  return reg;
}

// Every element of the flat buffer (padding included), different on each replica and call.
std::vector<float> random_grad(std::int64_t n, std::uint32_t call, int replica) {
  std::vector<float> g(static_cast<std::size_t>(n));
  const RngKey key{3, call, site_id(Site::kTest, 1), static_cast<std::uint32_t>(replica)};
  for (std::int64_t i = 0; i < n; ++i) g[i] = static_cast<float>(key.normal(static_cast<std::uint64_t>(i)));
  return g;
}

// u v^T of parameter p, the same on every replica.
float rank_one(int p, std::int64_t i, std::int64_t c) {
  const RngKey u{5, 0, site_id(Site::kTest, 2), static_cast<std::uint32_t>(p)};
  const RngKey v{5, 1, site_id(Site::kTest, 2), static_cast<std::uint32_t>(p)};
  return static_cast<float>(u.normal(static_cast<std::uint64_t>(i)) * v.normal(static_cast<std::uint64_t>(c)));
}
void set_rank_one(const ParamRegistry& reg, int r, std::vector<float>& g) {
  for (int p = 0; p < reg.size(); ++p) {
    if (!PowerSgd<float>::compresses(reg[p].shape, r)) continue;
    const std::int64_t rows = reg[p].shape[0], cols = reg[p].shape[1];
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t c = 0; c < cols; ++c) g[reg[p].offset + i * cols + c] = rank_one(p, i, c);
  }
}
// The worst relative Frobenius error of the compressed matrices against W u v^T.
double rank_one_error(const ParamRegistry& reg, int r, const std::vector<float>& g, int W) {
  double worst = 0;
  for (int p = 0; p < reg.size(); ++p) {
    if (!PowerSgd<float>::compresses(reg[p].shape, r)) continue;
    const std::int64_t rows = reg[p].shape[0], cols = reg[p].shape[1];
    double err = 0, ref = 0;
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t c = 0; c < cols; ++c) {
        const double want = W * static_cast<double>(rank_one(p, i, c));
        err += std::pow(g[reg[p].offset + i * cols + c] - want, 2);
        ref += want * want;
      }
    worst = std::max(worst, std::sqrt(err / ref));
  }
  return worst;
}

std::vector<char> compressed_mask(const ParamRegistry& reg, int r) {
  std::vector<char> m(static_cast<std::size_t>(reg.total()), 0);
  for (const ParamInfo& p : reg.params())
    if (PowerSgd<float>::compresses(p.shape, r)) std::fill_n(m.begin() + p.offset, p.numel(), 1);
  return m;
}

// Whether every replica holds bitwise the same vector.
bool same_on_all(comm::Mpi& w, const std::vector<float>& v) {
  const std::int64_t n = static_cast<std::int64_t>(v.size());
  std::vector<float> all(v.size() * static_cast<std::size_t>(w.size()));
  w.allgather(v.data(), n, all.data());
  for (int q = 1; q < w.size(); ++q)
    if (std::memcmp(all.data(), all.data() + q * n, n * sizeof(float)) != 0) return false;
  return true;
}

}  // namespace

BOOST_AUTO_TEST_CASE(rank_one_gradient_passes_and_the_rest_is_the_exact_sum) {
  comm::Mpi w;
  const auto reg = test_registry();
  const std::int64_t n = reg.total();
  for (int r : {1, 2}) {
    auto g = random_grad(n, 0, w.rank());
    set_rank_one(reg, r, g);
    auto ref = g;
    w.allreduce_sum(ref.data(), n, kFixed);
    PowerSgd<float> ps(r, 42);
    ps.reduce(reg, g.data(), n, w, kFixed);
    BOOST_TEST(ps.compressed_params() == (r == 1 ? 4 : 3));
    const auto mask = compressed_mask(reg, r);
    std::int64_t exact = 0, differ = 0;
    for (std::int64_t i = 0; i < n; ++i)
      if (!mask[i]) {
        ++exact;
        differ += std::memcmp(&g[i], &ref[i], sizeof(float)) != 0;
      }
    BOOST_TEST(exact == n - (768 + 1536 + 36 + (r == 1 ? 6 : 0)));  // all but attn, ffn, square (and tiny at r = 1)
    BOOST_TEST(differ == 0, "rank " << r << ": " << differ << " uncompressed elements differ from the tree sum");
    const double err = rank_one_error(reg, r, g, w.size());
    BOOST_TEST_MESSAGE("rank " << r << ": relative error of a rank-1 gradient " << err);
    BOOST_TEST(err < 1e-5, "rank " << r << ": relative error " << err);
  }
}

using Precisions = std::tuple<float, double>;
BOOST_AUTO_TEST_CASE_TEMPLATE(a_gradient_of_rank_below_r_is_not_counted_twice, T, Precisions) {
  // Constant and sign-pattern matrices: P's columns are exactly parallel, and the rounding
  // noise left after projecting them has the same structure; normalised, it would add the
  // first direction again (A = 2 M).
  comm::Mpi w;
  const auto reg = test_registry();
  const std::int64_t n = reg.total();
  const auto value = [](int p, std::int64_t i) { return p == 0 ? 0.5 : p == 2 ? 0.25 * (i % 3 - 1) : -1.0; };
  for (int r : {2, 3}) {
    std::vector<T> g(static_cast<std::size_t>(n), T(1));
    for (int p = 0; p < reg.size(); ++p)
      if (PowerSgd<T>::compresses(reg[p].shape, r))
        for (std::int64_t i = 0; i < reg[p].numel(); ++i) g[reg[p].offset + i] = static_cast<T>(value(p, i / reg[p].shape[1]));
    PowerSgd<T> ps(r, 11);
    ps.reduce(reg, g.data(), n, w, kFixed);
    for (int p = 0; p < reg.size(); ++p) {
      if (!PowerSgd<T>::compresses(reg[p].shape, r)) continue;
      double err = 0, ref = 0;
      for (std::int64_t i = 0; i < reg[p].numel(); ++i) {
        const double want = w.size() * value(p, i / reg[p].shape[1]);
        err += std::pow(g[reg[p].offset + i] - want, 2);
        ref += want * want;
      }
      const double rel = std::sqrt(err / ref);
      BOOST_TEST(rel < (sizeof(T) == 4 ? 1e-6 : 1e-13), reg[p].name << ", rank " << r << ": relative error " << rel);
    }
  }
}

BOOST_AUTO_TEST_CASE(error_feedback_makes_the_running_mean_converge_to_the_sum) {
  // A full-rank gradient needs about min(rows, cols) / r steps before what was held back
  // has been sent once; from there the error of the running mean falls like 1 / steps.
  // Without error feedback it would stay near the first step's (the best rank-r part only).
  comm::Mpi w;
  const auto reg = test_registry();
  const std::int64_t n = reg.total();
  for (auto [r, steps] : {std::pair{4, 30}, std::pair{1, 120}}) {
    const auto G = random_grad(n, 1, w.rank());  // full rank, the same every step
    std::vector<double> sum(G.begin(), G.end()), mean(static_cast<std::size_t>(n), 0.0);
    w.allreduce_sum(sum.data(), n, kFixed);
    const auto mask = compressed_mask(reg, r);
    const auto error = [&](double t) {
      double err = 0, ref = 0;
      for (std::int64_t i = 0; i < n; ++i)
        if (mask[i]) {
          err += std::pow(mean[i] / t - sum[i], 2);
          ref += sum[i] * sum[i];
        }
      return std::sqrt(err / ref);
    };
    PowerSgd<float> ps(r, 9);
    double first = 0;
    for (int t = 1; t <= steps; ++t) {
      auto g = G;
      ps.reduce(reg, g.data(), n, w, kFixed);
      for (std::int64_t i = 0; i < n; ++i) mean[i] += g[i];
      if (t == 1) first = error(1);
    }
    const double last = error(steps);
    BOOST_TEST_MESSAGE("rank " << r << ": relative error of the running mean after 1 step " << first << ", after "
                               << steps << " " << last);
    BOOST_TEST(last < 0.3 * first, "rank " << r << ": " << first << " -> " << last << " in " << steps << " steps");
  }
}

BOOST_AUTO_TEST_CASE(factors_send_fewer_bytes) {
  comm::Mpi w;
  const auto reg = test_registry();
  const std::int64_t n = reg.total(), W = w.size();
  const auto ring = [&](std::int64_t e) { return 2 * (W - 1) * e * 4 / W; };
  // (rows, cols) of the matrices the byte rule compresses, by hand.
  const std::vector<std::vector<std::pair<std::int64_t, std::int64_t>>> by_rank = {
      {}, {{24, 32}, {32, 48}, {2, 3}, {6, 6}}, {{24, 32}, {32, 48}, {6, 6}}, {{24, 32}, {32, 48}}};
  for (int r : {1, 2, 3}) {
    std::int64_t exact = n, p = 0, q = 0;
    for (auto [rows, cols] : by_rank[r]) {
      exact -= rows * cols;
      p += rows * r;
      q += cols * r;
    }
    auto g = random_grad(n, 2, w.rank());
    PowerSgd<float> ps(r, 1);
    ps.reduce(reg, g.data(), n, w, kFixed);
    BOOST_TEST(ps.compressed_params() == static_cast<std::int64_t>(by_rank[r].size()));
    BOOST_TEST(ps.bytes_sent() == ring(exact) + ring(p) + ring(q));
    BOOST_TEST(ps.uncompressed_bytes() == ring(n));
    BOOST_TEST_MESSAGE("rank " << r << ", " << W << " replicas: " << ps.bytes_sent() << " bytes sent, "
                               << ps.uncompressed_bytes() << " uncompressed ("
                               << static_cast<double>(ps.bytes_sent()) / ps.uncompressed_bytes() << ")");
    if (r <= 2) BOOST_TEST(ps.bytes_sent() < ps.uncompressed_bytes());
  }
}

BOOST_AUTO_TEST_CASE(replicas_end_bitwise_equal) {
  comm::Mpi w;
  const auto reg = test_registry();
  const std::int64_t n = reg.total();
  PowerSgd<float> ps(2, 5);
  for (std::uint32_t call = 0; call < 5; ++call) {
    auto g = random_grad(n, 10 + call, w.rank());
    const auto before = g;
    ps.reduce(reg, g.data(), n, w, kFixed);
    BOOST_TEST(same_on_all(w, g), "call " << call);
    BOOST_TEST(!same_on_all(w, before));  // the inputs did differ
  }
}

BOOST_AUTO_TEST_CASE(rank_below_one_is_an_error) {
  for (int r : {0, -1}) {
    try {
      PowerSgd<float> ps(r, 0);
      BOOST_FAIL("rank " << r << " was accepted");
    } catch (const Error& e) {
      BOOST_TEST(e.where() == "parallel.powersgd_rank");
    }
  }
}

BOOST_AUTO_TEST_CASE(a_step_of_zeros_does_not_stall_the_warm_start) {
  // Zero gradients (an expert no token reached) give Q = 0; drawn afresh, the next rank-1
  // gradient still passes in one step.
  comm::Mpi w;
  const auto reg = test_registry();
  const std::int64_t n = reg.total();
  PowerSgd<float> ps(1, 3);
  std::vector<float> zero(static_cast<std::size_t>(n), 0.0f);
  ps.reduce(reg, zero.data(), n, w, kFixed);
  for (float x : zero) BOOST_TEST_REQUIRE(x == 0.0f);
  auto g = random_grad(n, 0, w.rank());
  set_rank_one(reg, 1, g);
  ps.reduce(reg, g.data(), n, w, kFixed);
  BOOST_TEST(rank_one_error(reg, 1, g, w.size()) < 1e-5);
}

BOOST_AUTO_TEST_CASE(a_non_finite_step_is_marked_and_leaves_the_state) {
  comm::Mpi w;
  const auto reg = test_registry();
  const std::int64_t n = reg.total();
  const auto mask = compressed_mask(reg, 2);
  // NaN on the last replica only: in a compressed matrix, then in the norm vector.
  for (std::int64_t bad : {reg.find("ffn")->offset + 17, reg.find("norm")->offset + 3}) {
    PowerSgd<float> hit(2, 8), clean(2, 8);
    auto g1 = random_grad(n, 20, w.rank()), h1 = g1;
    hit.reduce(reg, g1.data(), n, w, kFixed);
    clean.reduce(reg, h1.data(), n, w, kFixed);
    auto g2 = random_grad(n, 21, w.rank());
    if (w.rank() == w.size() - 1) g2[bad] = std::numeric_limits<float>::quiet_NaN();
    hit.reduce(reg, g2.data(), n, w, kFixed);
    for (std::int64_t i = 0; i < n; ++i)
      if (mask[i]) BOOST_TEST_REQUIRE(std::isnan(g2[i]), "element " << i << " after a NaN at " << bad);
    auto g3 = random_grad(n, 22, w.rank()), h3 = g3;
    hit.reduce(reg, g3.data(), n, w, kFixed);
    clean.reduce(reg, h3.data(), n, w, kFixed);
    BOOST_TEST(std::memcmp(g3.data(), h3.data(), n * sizeof(float)) == 0, "after a NaN at " << bad);
  }
}

BOOST_AUTO_TEST_CASE(reset_scale_error_and_misuse) {
  comm::Mpi w;
  const auto reg = test_registry();
  const std::int64_t n = reg.total();
  // reset(): the next call is a fresh start.
  PowerSgd<float> used(2, 4), fresh(2, 4);
  for (std::uint32_t call = 0; call < 3; ++call) {
    auto g = random_grad(n, 30 + call, w.rank());
    used.reduce(reg, g.data(), n, w, kFixed);
  }
  used.reset();
  auto a = random_grad(n, 40, w.rank()), b = a;
  used.reduce(reg, a.data(), n, w, kFixed);
  fresh.reduce(reg, b.data(), n, w, kFixed);
  BOOST_TEST(std::memcmp(a.data(), b.data(), n * sizeof(float)) == 0);

  // scale_error(f) with gradients scaled by f (a power of two: exact) scales the result.
  PowerSgd<float> scaled(2, 6), plain(2, 6);
  auto s1 = random_grad(n, 50, w.rank()), p1 = s1;
  scaled.reduce(reg, s1.data(), n, w, kFixed);
  plain.reduce(reg, p1.data(), n, w, kFixed);
  scaled.scale_error(4.0);
  auto p2 = random_grad(n, 51, w.rank()), s2 = p2;
  for (float& x : s2) x *= 4.0f;
  scaled.reduce(reg, s2.data(), n, w, kFixed);
  plain.reduce(reg, p2.data(), n, w, kFixed);
  double worst = 0;
  for (std::int64_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(s2[i] - 4.0 * p2[i]) / (1e-3 + std::abs(4.0 * p2[i])));
  BOOST_TEST(worst < 1e-5);

  // Another registry without reset(), or a wrong length, is refused.
  ParamRegistry other = test_registry();
  other.add("extra", Shape{16, 16}, kTagFfn, Init::kNormal, 0.02);
  std::vector<float> big(static_cast<std::size_t>(other.total()), 1.0f);
  BOOST_CHECK_THROW(plain.reduce(other, big.data(), other.total(), w, kFixed), Error);
  BOOST_CHECK_THROW(plain.reduce(reg, big.data(), n - 1, w, kFixed), Error);
}

BOOST_AUTO_TEST_CASE(one_process_through_the_serial_comm) {
  // The same reducer over comm::Serial: W = 1, nothing sent, a rank-1 gradient passes.
  comm::Serial one;
  const auto reg = test_registry();
  const std::int64_t n = reg.total();
  PowerSgd<float> ps(1, 2);
  auto g = random_grad(n, 60, 0);
  set_rank_one(reg, 1, g);
  ps.reduce(reg, g.data(), n, one, kFixed);
  BOOST_TEST(rank_one_error(reg, 1, g, 1) < 1e-5);
  BOOST_TEST(ps.bytes_sent() == 0);
  BOOST_TEST(ps.uncompressed_bytes() == 0);
}
