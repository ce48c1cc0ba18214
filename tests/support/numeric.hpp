#pragma once
// Shared by the numeric tests: seeded random inputs, error measures and central
// differences.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace tmoe::test {

// n draws of N(mean, scale²) from std::mt19937(seed), as T.
template <class T = double>
std::vector<T> randn(std::size_t n, unsigned seed, double scale = 1.0, double mean = 0.0) {
  std::mt19937 g(seed);
  std::normal_distribution<double> d;
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(mean + scale * d(g));
  return v;
}

// n token ids in [0, vocab) from std::mt19937(seed).
inline std::vector<std::int32_t> random_tokens(std::int64_t n, std::int64_t vocab, unsigned seed) {
  std::mt19937 g(seed);
  std::vector<std::int32_t> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = static_cast<std::int32_t>(g() % static_cast<unsigned>(vocab));
  return v;
}

// max_i |a_i − b_i| over the elements of b (a has at least as many).
template <class A>
double max_abs_diff(const A* a, const std::vector<double>& b) {
  double e = 0;
  for (std::size_t i = 0; i < b.size(); ++i) e = std::max(e, std::abs(static_cast<double>(a[i]) - b[i]));
  return e;
}
template <class A>
double max_abs_diff(const std::vector<A>& a, const std::vector<double>& b) {
  return max_abs_diff(a.data(), b);
}

// max_i |v_i|.
inline double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// The normwise relative error max_i |x_i − ref_i| / max_i |ref_i| (the absolute error when
// ref is all zeros; infinite when the sizes differ).
template <class T>
double rel_err(const std::vector<T>& x, const std::vector<double>& ref) {
  double err = 0, nrm = 0;
  const std::size_t n = std::min(x.size(), ref.size());
  if (x.size() != ref.size()) return INFINITY;
  for (std::size_t i = 0; i < n; ++i) {
    err = std::max(err, std::abs(static_cast<double>(x[i]) - ref[i]));
    nrm = std::max(nrm, std::abs(ref[i]));
  }
  return nrm > 0 ? err / nrm : err;
}

// The central differences (f(x + h·e_i) − f(x − h·e_i)) / 2h for every i, of a scalar f()
// that reads x; x is perturbed in place and restored exactly.
template <class F>
std::vector<double> central_differences(std::vector<double>& x, double h, F&& f) {
  std::vector<double> g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    x[i] = v + h;
    const double lp = f();
    x[i] = v - h;
    const double lm = f();
    x[i] = v;
    g[i] = (lp - lm) / (2 * h);
  }
  return g;
}

}  // namespace tmoe::test
