#pragma once
// Helpers shared by the op tests (tests/unit/test_ops_*.cpp): random inputs, casts, and the
// error measure. Every op is compared with a plain double-precision reference computed from
// the same inputs (rounded to the op's type first), by the normwise relative error
//   err(x, ref) = max_i |x_i − ref_i| / max_i |ref_i|,
// bounded by 1e-12 for double and 1e-5 for float.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

namespace opstest {

template <class T>
constexpr double tol() {
  return std::is_same_v<T, double> ? 1e-12 : 1e-5;
}

inline std::vector<double> randn(std::size_t n, unsigned seed, double scale = 1.0, double mean = 0.0) {
  std::mt19937 g(seed);
  std::normal_distribution<double> d;
  std::vector<double> v(n);
  for (auto& x : v) x = mean + scale * d(g);
  return v;
}

// Values rounded to T, and back: the reference sees exactly the op's inputs.
template <class T>
std::vector<T> as(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}
template <class T>
std::vector<double> dbl(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}
template <class T>
std::vector<double> round_to(const std::vector<double>& v) {
  return dbl(as<T>(v));
}

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

inline std::vector<double> plus(std::vector<double> a, const std::vector<double>& b) {
  for (std::size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}

}  // namespace opstest
