#define BOOST_TEST_MODULE optimizers
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../support/expect_error.hpp"
#include "../support/numeric.hpp"
#include "tmoe/core/config.hpp"
#include "tmoe/core/threading.hpp"
#include "tmoe/optim/adamw.hpp"
#include "tmoe/optim/choice.hpp"
#include "tmoe/optim/lion.hpp"
#include "tmoe/optim/sgd.hpp"
#include "tmoe/optim/sign_momentum.hpp"

using namespace tmoe;

namespace {

// One update of opt on single-element p, g and state (s0, s1); returns the new p.
template <class Opt>
double step1(const Opt& opt, double p, double g, double& s0, double& s1, double lr, double wd, std::int64_t step) {
  double* st[2] = {&s0, &s1};
  opt.update(&p, &g, st, 1, lr, wd, step);
  return p;
}

TrainConfig config_for(const std::string& name) {
  TrainConfig t;
  t.optimizer = name;
  return t;
}

}  // namespace

BOOST_AUTO_TEST_CASE(sgd_plain_step_has_coupled_decay_and_no_state) {
  const Sgd opt{};  // momentum 0
  BOOST_TEST(opt.used_slots() == 0);
  double p = 1.0, g = 0.5;
  opt.update(&p, &g, static_cast<double**>(nullptr), 1, 0.1, 0.2, 1);  // no state is touched
  BOOST_TEST(std::abs(p - (1.0 - 0.1 * (0.5 + 0.2 * 1.0))) < 1e-15);
}

BOOST_AUTO_TEST_CASE(sgd_momentum_dampening_and_nesterov_by_hand) {
  const double lr = 0.1, wd = 0.01, mu = 0.9;
  // Heavy ball with dampening 0.1: the first buffer is d itself (no dampening).
  {
    const Sgd opt{mu, 0.1, false};
    BOOST_TEST(opt.used_slots() == 1);
    BOOST_TEST(std::string(opt.slot_name(0)) == "momentum_buffer");
    double b = 0, unused = 0;
    const double d1 = 0.5 + wd * 1.0;
    double p = step1(opt, 1.0, 0.5, b, unused, lr, wd, 1);
    BOOST_TEST(std::abs(b - d1) < 1e-15);
    BOOST_TEST(std::abs(p - (1.0 - lr * d1)) < 1e-15);
    const double p1 = p, d2 = -2.0 + wd * p1, b2 = mu * d1 + 0.9 * d2;
    p = step1(opt, p1, -2.0, b, unused, lr, wd, 2);
    BOOST_TEST(std::abs(b - b2) < 1e-15);
    BOOST_TEST(std::abs(p - (p1 - lr * b2)) < 1e-15);
  }
  // Nesterov: the step is d + μ·b.
  {
    const Sgd opt{mu, 0.0, true};
    double b = 0, unused = 0;
    const double d1 = 0.5 + wd * 1.0;
    const double p1 = step1(opt, 1.0, 0.5, b, unused, lr, wd, 1);
    BOOST_TEST(std::abs(p1 - (1.0 - lr * (d1 + mu * d1))) < 1e-15);
    const double d2 = -2.0 + wd * p1, b2 = mu * d1 + d2;
    const double p2 = step1(opt, p1, -2.0, b, unused, lr, wd, 2);
    BOOST_TEST(std::abs(b - b2) < 1e-15);
    BOOST_TEST(std::abs(p2 - (p1 - lr * (d2 + mu * b2))) < 1e-15);
  }
}

BOOST_AUTO_TEST_CASE(adamw_first_step_by_hand) {
  const AdamW opt{0.9, 0.95, 1e-8};
  double m = 0, v = 0;
  const double lr = 1e-2, wd = 0.1, g = -0.3;
  const double p = step1(opt, 2.0, g, m, v, lr, wd, 1);
  // Step 1: m̂ = g, v̂ = g², so θ ← θ(1 − lr·wd) − lr·g/(|g| + ε·...) ≈ θ(1 − lr·wd) + lr.
  BOOST_TEST(std::abs(m - 0.1 * g) < 1e-16);
  BOOST_TEST(std::abs(v - 0.05 * g * g) < 1e-16);
  const double expect = 2.0 * (1 - lr * wd) - lr / 0.1 * (0.1 * g) / (std::sqrt(0.05 * g * g) / std::sqrt(0.05) + 1e-8);
  BOOST_TEST(std::abs(p - expect) < 1e-15);
}

BOOST_AUTO_TEST_CASE(lion_step_by_hand_and_sign_of_zero) {
  const Lion opt{0.9, 0.99};
  const double lr = 1e-3, wd = 0.5;
  double m = 0.2, unused = 0;
  // c = 0.9·0.2 + 0.1·(−1) = 0.08 > 0: θ moves by −lr after the decay; m = 0.99·0.2 − 0.01.
  const double p = step1(opt, 1.0, -1.0, m, unused, lr, wd, 1);
  BOOST_TEST(std::abs(p - (1.0 * (1 - lr * wd) - lr)) < 1e-16);
  BOOST_TEST(std::abs(m - (0.99 * 0.2 - 0.01)) < 1e-16);

  // sign(0) = 0: with β1 = 0.5, m = 1 and g = −1 cancel exactly, and m = g = 0 gives c = 0;
  // either way only the decay acts.
  const Lion half{0.5, 0.99};
  std::vector<double> pv{1.0, -3.0, 2.0}, gv{-1.0, 0.0, 4.0}, mv{1.0, 0.0, 0.0};
  double* st[1] = {mv.data()};
  half.update(pv.data(), gv.data(), st, 3, lr, wd, 1);
  BOOST_TEST(pv[0] == 1.0 * (1 - lr * wd));
  BOOST_TEST(pv[1] == -3.0 * (1 - lr * wd));
  BOOST_TEST(std::abs(pv[2] - (2.0 * (1 - lr * wd) - lr)) < 1e-16);
}

BOOST_AUTO_TEST_CASE(sign_momentum_step_by_hand) {
  SignMomentum opt{0.9, 0.99, 0.95, 1e-8, 0.0};
  const double lr = 1e-3, wd = 0.1, g = 0.4;
  // Step 1 from zero state: c = 0.1·g, v̂ = g², r = 0.1|g|/(|g| + ε) ≈ 0.1.
  double m = 0, v = 0;
  const double r = 0.1 * g / (std::sqrt(0.05 * g * g / 0.05) + 1e-8);
  double p = step1(opt, 1.0, g, m, v, lr, wd, 1);
  BOOST_TEST(std::abs(p - (1.0 * (1 - lr * wd) - lr * r)) < 1e-16);
  BOOST_TEST(std::abs(m - 0.01 * g) < 1e-16);
  BOOST_TEST(std::abs(v - 0.05 * g * g) < 1e-16);
  // The same with τ = 0.3: r < τ, so only the decay acts.
  opt.threshold = 0.3;
  m = 0, v = 0;
  p = step1(opt, 1.0, g, m, v, lr, wd, 1);
  BOOST_TEST(p == 1.0 * (1 - lr * wd));
  // A large momentum against a small second moment: r > 1 is capped, the step is lr.
  m = -10, v = 0;
  p = step1(opt, 1.0, g, m, v, lr, 0.0, 1);
  BOOST_TEST(p == 1.0 + lr);
  // Step 3 (bias correction 1 − β2³), τ = 0.3, r between τ and 1.
  opt.threshold = 0.3;
  m = 0.5, v = 0.2;
  const double c = 0.9 * 0.5 + 0.1 * g, vn = 0.95 * 0.2 + 0.05 * g * g;
  const double r3 = c / (std::sqrt(vn / (1 - std::pow(0.95, 3))) + 1e-8);
  BOOST_REQUIRE(r3 > 0.3 && r3 < 1);
  p = step1(opt, 1.0, g, m, v, lr, wd, 3);
  BOOST_TEST(std::abs(p - (1.0 * (1 - lr * wd) - lr * r3)) < 1e-16);
  BOOST_TEST(std::abs(v - vn) < 1e-16);
}

BOOST_AUTO_TEST_CASE(sign_momentum_zeroes_below_threshold_and_caps_at_lr) {
  const double tau = 0.3, lr = 1e-2;
  const SignMomentum opt{0.9, 0.99, 0.95, 1e-8, tau};
  const std::size_t n = 5000;
  auto p = test::randn(n, 1), g = test::randn(n, 2), m = test::randn(n, 3, 3.0), v = test::randn(n, 4, 0.5);
  for (auto& x : v) x = x * x;
  const auto p0 = p, m0 = m, v0 = v;
  double* st[2] = {m.data(), v.data()};
  opt.update(p.data(), g.data(), st, static_cast<std::int64_t>(n), lr, 0.0, 7);
  std::size_t zeroed = 0, capped = 0, between = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double c = 0.9 * m0[i] + 0.1 * g[i];
    const double vn = 0.95 * v0[i] + 0.05 * g[i] * g[i];
    const double r = std::abs(c) / (std::sqrt(vn / (1 - std::pow(0.95, 7))) + 1e-8);
    const double dp = p[i] - p0[i];
    BOOST_TEST(std::abs(dp) <= lr * (1 + 1e-12));
    if (r < tau - 1e-9) {
      ++zeroed;
      BOOST_TEST(dp == 0.0);
    } else if (r > 1 + 1e-9) {
      ++capped;
      BOOST_TEST(std::abs(dp + lr * (c > 0 ? 1 : -1)) < 1e-15);
    } else if (r > tau + 1e-9 && r < 1 - 1e-9) {
      ++between;
      BOOST_TEST(std::abs(dp + lr * r * (c > 0 ? 1 : -1)) < 1e-15);
    }
  }
  BOOST_TEST_MESSAGE("zeroed " << zeroed << ", capped " << capped << ", between " << between);
  BOOST_TEST(zeroed > 100u);
  BOOST_TEST(capped > 100u);
  BOOST_TEST(between > 100u);
}

BOOST_AUTO_TEST_CASE(from_config_reads_the_right_fields) {
  TrainConfig t;
  t.beta1 = 0.8, t.beta2 = 0.9, t.adam_eps = 1e-6, t.momentum = 0.7, t.dampening = 0.2, t.nesterov = false;
  t.lion_beta1 = 0.85, t.lion_beta2 = 0.97, t.sign_threshold = 0.25;
  const auto a = AdamW::from_config(t);
  BOOST_TEST((a.beta1 == 0.8 && a.beta2 == 0.9 && a.eps == 1e-6));
  const auto s = Sgd::from_config(t);
  BOOST_TEST((s.momentum == 0.7 && s.dampening == 0.2 && !s.nesterov));
  const auto l = Lion::from_config(t);
  BOOST_TEST((l.beta1 == 0.85 && l.beta2 == 0.97));
  const auto sm = SignMomentum::from_config(t);
  BOOST_TEST((sm.beta1 == 0.85 && sm.beta2 == 0.97 && sm.beta2_sq == 0.9 && sm.eps == 1e-6 && sm.threshold == 0.25));
}

BOOST_AUTO_TEST_CASE(choice_dispatches_by_name) {
  static_assert(StandardOptimizers::slots == 2);
  struct Want {
    const char* name;
    double momentum;
    int used;
    std::vector<std::string> slots;
  };
  const std::vector<Want> wants{{"adamw", 0, 2, {"exp_avg", "exp_avg_sq"}},
                                {"sgd", 0, 0, {}},
                                {"sgd", 0.9, 1, {"momentum_buffer"}},
                                {"lion", 0, 1, {"exp_avg"}},
                                {"sign_momentum", 0, 2, {"exp_avg", "exp_avg_sq"}}};
  for (const auto& w : wants) {
    TrainConfig t = config_for(w.name);
    t.momentum = w.momentum;
    t.sign_threshold = 0.1;
    const auto opt = StandardOptimizers::from_config(t);
    BOOST_TEST(std::string(opt.active_name()) == w.name);
    BOOST_TEST(opt.used_slots() == w.used);
    for (int s = 0; s < w.used; ++s) BOOST_TEST(std::string(opt.slot_name(s)) == w.slots[s]);

    // The update is the chosen member's, bit for bit.
    const std::size_t n = 300;
    auto p = test::randn(n, 11), g = test::randn(n, 12);
    std::vector<double> s0(n, 0.0), s1(n, 0.0);
    auto q = p;
    std::vector<double> r0(n, 0.0), r1(n, 0.0);
    double* st[2] = {s0.data(), s1.data()};
    double* rt[2] = {r0.data(), r1.data()};
    for (std::int64_t step = 1; step <= 3; ++step) {
      opt.update(p.data(), g.data(), st, static_cast<std::int64_t>(n), 1e-2, 0.1, step);
      const std::string nm = w.name;
      if (nm == "adamw") AdamW::from_config(t).update(q.data(), g.data(), rt, static_cast<std::int64_t>(n), 1e-2, 0.1, step);
      if (nm == "sgd") Sgd::from_config(t).update(q.data(), g.data(), rt, static_cast<std::int64_t>(n), 1e-2, 0.1, step);
      if (nm == "lion") Lion::from_config(t).update(q.data(), g.data(), rt, static_cast<std::int64_t>(n), 1e-2, 0.1, step);
      if (nm == "sign_momentum")
        SignMomentum::from_config(t).update(q.data(), g.data(), rt, static_cast<std::int64_t>(n), 1e-2, 0.1, step);
    }
    BOOST_TEST(p == q, boost::test_tools::per_element());
    BOOST_TEST(s0 == r0, boost::test_tools::per_element());
    BOOST_TEST(s1 == r1, boost::test_tools::per_element());
  }
}

BOOST_AUTO_TEST_CASE(choice_rejects_an_unknown_name) {
  test::expect_error_then([] { (void)StandardOptimizers::from_config(config_for("adam")); },
                          [](const Error& e) {
                            BOOST_TEST(e.where() == "train.optimizer");
                            test::check_message(e.what(), {"'adam'", "adamw, sgd, lion, sign_momentum"});
                          });
}

BOOST_AUTO_TEST_CASE(results_do_not_depend_on_the_thread_count) {
  const int saved = thread_count_ref();
  const std::int64_t n = 10000;  // three 4096-element chunks, the last one partial
  for (const char* name : {"adamw", "sgd", "lion", "sign_momentum"}) {
    TrainConfig t = config_for(name);
    t.momentum = 0.9;
    t.nesterov = true;
    t.sign_threshold = 0.2;
    const auto opt = StandardOptimizers::from_config(t);
    auto run = [&](int threads, auto zero) {
      using T = decltype(zero);
      set_threads(threads);
      const auto p0 = test::randn<T>(static_cast<std::size_t>(n), 21);
      std::vector<T> p = p0, s0(static_cast<std::size_t>(n), T(0)), s1 = s0;
      T* st[2] = {s0.data(), s1.data()};
      for (std::int64_t step = 1; step <= 4; ++step) {
        const auto g = test::randn<T>(static_cast<std::size_t>(n), static_cast<unsigned>(100 + step));
        opt.update(p.data(), g.data(), st, n, 3e-3 * static_cast<double>(step), 0.1, step);
      }
      BOOST_TEST((p != p0));
      p.insert(p.end(), s0.begin(), s0.end());
      p.insert(p.end(), s1.begin(), s1.end());
      return p;
    };
    const auto d1 = run(1, 0.0), d2 = run(2, 0.0);
    BOOST_TEST(d1 == d2, boost::test_tools::per_element());
    const auto f1 = run(1, 0.0f), f2 = run(2, 0.0f);
    BOOST_TEST(f1 == f2, boost::test_tools::per_element());
  }
  set_threads(saved);
}
