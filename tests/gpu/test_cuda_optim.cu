// The update rules and the global norm on the device (backend/cuda/optim.cuh, reduce.cuh).
//
// Update rules: every rule (AdamW; SGD plain, with momentum and dampening, Nesterov; Lion;
// SignMomentum with threshold 0 and 0.3 and with fast-forgetting moments), weight decay 0
// and 0.1, fp32 (and fp64 for AdamW and SGD), 6 steps under a changing lr, from the same
// parameters, gradients (every 17th exactly zero: sign(0), c = 0) and zero state as the
// CPU rule run on the host in this test. Asserted: parameters and every state array are
// BITWISE equal to the CPU's after every step. The host side is compiled with
// TMOE_FUSED_FMADD, so its detail::fmadd is fused as the device's always is (without it a
// host lacking FMA rounds twice and only ~1e-7 relative agreement could be asserted);
// guard against vacuity: the parameters moved.
// Global norm: sum_squares vs a host sum in long double (< 1e-12 relative) for fp32, fp64
// and bf16 inputs, bitwise run to run, zero length; scale bitwise the CPU's `x *= T(c)`;
// tree_sum bitwise tmoe::tree_sum for 1..33 leaves.
#define TMOE_FUSED_FMADD 1
#define BOOST_TEST_MODULE cuda_optim
#include <cstring>
#include <string>

#include "gpu_test.hpp"
#include "tmoe/backend/cuda/optim.cuh"
#include "tmoe/backend/cuda/reduce.cuh"
#include "tmoe/parallel/tree_sum.hpp"

namespace cu = tmoe::backend::cuda;

namespace {

template <class T>
std::vector<T> random_t(std::int64_t n, std::uint32_t seed, float scale) {
  const auto f = gpu_test::random_vector(n, seed, scale);
  std::vector<T> v(f.begin(), f.end());
  return v;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

template <class T>
std::int64_t count_differing(const std::vector<T>& a, const std::vector<T>& b) {
  std::int64_t d = 0;
  for (std::size_t i = 0; i < a.size(); ++i) d += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
  return d;
}

// Runs `opt` for several steps on the host (its own update) and on the device
// (OptimOps::update) from the same start, checking bitwise equality after every step.
template <class T, class Opt>
void check_rule(const Opt& opt, int slots, double wd, const std::string& label) {
  BOOST_TEST_CONTEXT(label << ", wd " << wd << ", " << (sizeof(T) == 4 ? "fp32" : "fp64")) {
    const std::int64_t n = 3 * 4096 + 1001;  // several CPU chunks and a ragged tail
    std::vector<T> p = random_t<T>(n, 11, 1.0f);
    const std::vector<T> p0 = p;
    std::vector<std::vector<T>> st(2, std::vector<T>(static_cast<std::size_t>(n), T(0)));
    auto dp = cu::to_device(p);
    std::vector<cu::DeviceTensor<T>> dst;
    for (int s = 0; s < 2; ++s) dst.push_back(cu::to_device(st[s]));
    for (std::int64_t step = 1; step <= 6; ++step) {
      std::vector<T> g = random_t<T>(n, 100 + static_cast<std::uint32_t>(step), 0.5f);
      for (std::int64_t i = 0; i < n; i += 17) g[i] = T(0);
      if (step == 2)  // gradients spread over decades: sign_momentum's ratio on both sides of τ
        for (std::int64_t i = 1; i < n; i += 3) g[i] *= T(1e-3);
      const double lr = 1e-2 / static_cast<double>(step + 1);
      T* hs[2] = {st[0].data(), st[1].data()};
      opt.update(p.data(), g.data(), hs, n, lr, wd, step);
      auto dg = cu::to_device(g);
      T* ds[2] = {dst[0].data(), dst[1].data()};
      cu::OptimOps::update(opt, dp.data(), dg.data(), ds, n, lr, wd, step);
      const auto gp = cu::to_host(dp);
      BOOST_TEST(same_bits(gp, p), "step " << step << ": " << count_differing(gp, p) << " parameters differ from the CPU");
      for (int s = 0; s < slots; ++s) {
        const auto gs = cu::to_host(dst[s]);
        BOOST_TEST(same_bits(gs, st[s]), "step " << step << ": state " << s << ": " << count_differing(gs, st[s]) << " differ");
      }
    }
    BOOST_TEST(count_differing(p, p0) > n / 2, "the parameters did not move (vacuous)");
  }
}

template <class T>
void check_all_rules(double wd) {
  check_rule<T>(tmoe::AdamW{}, 2, wd, "adamw");
  check_rule<T>(tmoe::Sgd{}, 0, wd, "sgd");
  check_rule<T>(tmoe::Sgd{0.9, 0.1, false}, 1, wd, "sgd momentum 0.9 dampening 0.1");
  check_rule<T>(tmoe::Sgd{0.9, 0.0, true}, 1, wd, "sgd nesterov 0.9");
  check_rule<T>(tmoe::Lion{}, 1, wd, "lion");
  check_rule<T>(tmoe::SignMomentum{}, 2, wd, "sign_momentum tau 0");
  check_rule<T>(tmoe::SignMomentum{0.9, 0.99, 0.95, 1e-8, 0.3}, 2, wd, "sign_momentum tau 0.3");
  check_rule<T>(tmoe::SignMomentum{0.9, 0.9, 0.5, 1e-8, 0.0}, 2, wd, "sign_momentum fast moments");
}

}  // namespace

BOOST_AUTO_TEST_CASE(rules_match_the_cpu_bitwise_fp32) {
  check_all_rules<float>(0.0);
  check_all_rules<float>(0.1);
}

BOOST_AUTO_TEST_CASE(rules_match_the_cpu_bitwise_fp64) {
  check_all_rules<double>(0.0);
  check_all_rules<double>(0.1);
}

BOOST_AUTO_TEST_CASE(optimizer_choice_dispatches_to_the_chosen_rule) {
  tmoe::StandardOptimizers choice;
  choice.rule = tmoe::Lion{0.95, 0.98};
  check_rule<float>(choice, 1, 0.1, "choice: lion");
  choice.rule = tmoe::AdamW{0.9, 0.95, 1e-8};
  check_rule<float>(choice, 2, 0.1, "choice: adamw");
}

BOOST_AUTO_TEST_CASE(a_missing_state_array_is_an_error) {
  cu::DeviceTensor<float> p(tmoe::Shape{8}), g(tmoe::Shape{8});
  float* st[2] = {nullptr, nullptr};
  BOOST_CHECK_THROW(cu::OptimOps::update(tmoe::AdamW{}, p.data(), g.data(), st, 8, 1e-3, 0.0, 1), tmoe::Error);
  // Plain SGD uses no state: null slots are fine.
  cu::OptimOps::update(tmoe::Sgd{}, p.data(), g.data(), st, 8, 1e-3, 0.0, 1);
}

namespace {

template <class T>
long double host_sum_squares(const std::vector<T>& x) {
  long double s = 0;
  for (const T& v : x) {
    const long double d = static_cast<double>(cu::load(v));
    s += d * d;
  }
  return s;
}

template <class T>
void check_sum_squares(std::int64_t n) {
  BOOST_TEST_CONTEXT(cu::Scalar<T>::name << ", n " << n) {
    const auto f = gpu_test::random_vector(n, 7, 3.0f);
    auto d = gpu_test::upload<T>(f);
    const auto h = cu::to_host(d);
    const long double ref = host_sum_squares(h);
    const double got = cu::ReduceOps::sum_squares(d.data(), n);
    const double rel = ref > 0 ? static_cast<double>(std::fabs((static_cast<long double>(got) - ref) / ref)) : std::fabs(got);
    BOOST_TEST(rel < 1e-12, "sum_squares " << got << " vs " << static_cast<double>(ref) << ": relative error " << rel);
    const double again = cu::ReduceOps::sum_squares(d.data(), n);
    BOOST_TEST(std::memcmp(&got, &again, sizeof got) == 0, "two runs differ");
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(sum_squares_is_accurate_and_deterministic) {
  for (std::int64_t n : {std::int64_t{1}, std::int64_t{1000}, std::int64_t{16384}, std::int64_t{3 * 16384 + 123}}) {
    check_sum_squares<float>(n);
    check_sum_squares<double>(n);
    check_sum_squares<__nv_bfloat16>(n);
  }
  check_sum_squares<float>(std::int64_t{1} << 22);
  BOOST_TEST(cu::ReduceOps::sum_squares(static_cast<const float*>(nullptr), 0) == 0.0);
}

BOOST_AUTO_TEST_CASE(sum_squares_chunks_are_the_cells) {
  const std::int64_t n = 2 * cu::ReduceOps::kChunk + 77;
  const auto x = gpu_test::random_vector(n, 9);
  auto d = cu::to_device(x);
  auto part = gpu_test::poisoned<double>(3);
  cu::ReduceOps::sum_squares_chunks(d.data(), n, part.data());
  const auto got = cu::to_host(part);
  for (int c = 0; c < 3; ++c) {
    long double ref = 0;
    for (std::int64_t i = c * cu::ReduceOps::kChunk; i < std::min(n, (c + 1) * cu::ReduceOps::kChunk); ++i)
      ref += static_cast<long double>(x[i]) * x[i];
    BOOST_TEST(std::fabs(static_cast<double>((got[c] - ref) / ref)) < 1e-13, "cell " << c);
  }
}

BOOST_AUTO_TEST_CASE(scale_matches_the_cpu_bitwise) {
  const std::int64_t n = 5000;
  const double coef = 0.123456789;
  const auto x = gpu_test::random_vector(n, 3);
  auto d = cu::to_device(x);
  cu::ReduceOps::scale(d.data(), n, coef);
  std::vector<float> ref = x;
  const float cf = static_cast<float>(coef);
  for (auto& v : ref) v *= cf;
  BOOST_TEST(same_bits(cu::to_host(d), ref));

  auto b = gpu_test::upload<__nv_bfloat16>(x);
  cu::ReduceOps::scale(b.data(), n, coef);
  const auto rb = gpu_test::rounded<__nv_bfloat16>(x);
  std::vector<double> want(rb.size());
  for (std::size_t i = 0; i < rb.size(); ++i) want[i] = rb[i] * coef;
  BOOST_TEST(gpu_test::rel_error(gpu_test::fetch(b.data(), n), want) < 8e-3);
}

namespace {
template <class T>
void check_tree_sum(int count) {
  const std::int64_t n = 1000;
  std::vector<T> leaves(static_cast<std::size_t>(n * count));
  const auto f = gpu_test::random_vector(n * count, 40 + static_cast<std::uint32_t>(count));
  for (std::size_t i = 0; i < leaves.size(); ++i) leaves[i] = static_cast<T>(f[i]) * static_cast<T>(1 + (i % 7) * 1000);
  std::vector<const T*> ptrs(static_cast<std::size_t>(count));
  for (int q = 0; q < count; ++q) ptrs[q] = leaves.data() + n * q;
  std::vector<T> ref(static_cast<std::size_t>(n));
  tmoe::tree_sum(ptrs.data(), count, ref.data(), n);
  auto d = cu::to_device(leaves);
  auto out = gpu_test::poisoned<T>(n);
  cu::ReduceOps::tree_sum(d.data(), n, count, out.data(), n);
  BOOST_TEST(same_bits(cu::to_host(out), ref), count << " leaves");
}
}  // namespace

BOOST_AUTO_TEST_CASE(tree_sum_is_tmoe_tree_sum_bitwise) {
  for (int count = 1; count <= 33; ++count) {
    check_tree_sum<float>(count);
    check_tree_sum<double>(count);
  }
}
