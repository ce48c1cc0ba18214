#pragma once
// Helpers shared by the op tests (tests/unit/test_ops_*.cpp): random inputs, casts, and the
// error measure. Every op is compared with a plain double-precision reference computed from
// the same inputs (rounded to the op's type first), by the normwise relative error
//   err(x, ref) = max_i |x_i − ref_i| / max_i |ref_i|   (rel_err, tests/support/numeric.hpp),
// bounded by 1e-12 for double and 1e-5 for float.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../support/numeric.hpp"

namespace opstest {

using tmoe::test::central_differences;
using tmoe::test::max_abs;
using tmoe::test::randn;
using tmoe::test::random_tokens;
using tmoe::test::rel_err;

template <class T>
constexpr double tol() {
  return std::is_same_v<T, double> ? 1e-12 : 1e-5;
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

inline std::vector<double> plus(std::vector<double> a, const std::vector<double>& b) {
  for (std::size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}

}  // namespace opstest
