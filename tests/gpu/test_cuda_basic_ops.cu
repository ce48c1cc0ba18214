// The CUDA backend's pointwise, norm, embedding, loss, RoPE and cast ops against host
// double-precision references written here, on random inputs rounded to the op's type
// first (gpu_test::rounded), for fp32, fp64, bf16 and fp16. Outputs are poisoned (NaN)
// before each call, so an element a kernel fails to write fails the test; sizes are odd on
// purpose (rows not multiples of a block or of a reduction chunk, widths 1, 7, 257, 1000).
// Reductions (norm dw/db, embedding backward, loss total) run twice and must agree bit for
// bit. Tolerances on ‖gpu − ref‖ / ‖ref‖: fp64 1e-12, fp32 1e-5, fp16 2e-3 (a rounding of
// the output is 2^-11 relative, plus one of a stored rstd/mean the next step reuses), bf16
// 1e-2 (2^-8 per rounding likewise). The casts must equal precision/narrow.hpp's rounding
// bit for bit on ties, subnormals, overflow and NaN.
#define BOOST_TEST_MODULE cuda_basic_ops
#include "gpu_test.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "tmoe/backend/cuda/activation.cuh"
#include "tmoe/backend/cuda/cast.cuh"
#include "tmoe/backend/cuda/embedding.cuh"
#include "tmoe/backend/cuda/loss.cuh"
#include "tmoe/backend/cuda/norm.cuh"
#include "tmoe/backend/cuda/rope.cuh"
#include "tmoe/layers/pointwise.hpp"
#include "tmoe/precision/narrow.hpp"

namespace cu = tmoe::backend::cuda;
using gpu_test::fetch;
using gpu_test::poisoned;
using gpu_test::random_vector;
using gpu_test::rounded;
using gpu_test::upload;

namespace {

using Types = std::tuple<float, double, __nv_bfloat16, __half>;

template <class T>
constexpr double tol() {
  if constexpr (std::is_same_v<T, double>) return 1e-12;
  else if constexpr (std::is_same_v<T, float>) return 1e-5;
  else if constexpr (std::is_same_v<T, __half>) return 2e-3;
  else return 1e-2;
}

template <class T>
std::string tag() {
  return cu::Scalar<T>::name;
}

void expect_close(const std::vector<double>& got, const std::vector<double>& ref, double tolerance, const std::string& what) {
  const double e = gpu_test::rel_error(got, ref);
  BOOST_TEST(e < tolerance, what << ": relative error " << e << " (tolerance " << tolerance << ")");
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

template <class T>
std::vector<T> raw(const cu::DeviceTensor<T>& d) {
  return cu::to_host(d);
}

// A device copy of host values already of type T.
template <class T>
cu::DeviceTensor<T> device_copy(const std::vector<T>& v) {
  return cu::to_device(v);
}

std::vector<std::int32_t> random_ids(std::int64_t n, std::int32_t hi, std::uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<std::int32_t> d(0, hi - 1);
  std::vector<std::int32_t> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = d(g);
  return v;
}

struct RowsCols {
  std::int64_t rows, cols;
};
// Rows below, at and above a 256-row reduction chunk; widths below and above a block.
const RowsCols kShapes[] = {{1, 1}, {7, 7}, {3, 1000}, {300, 7}, {600, 257}};

std::string shape_name(const char* op, const std::string& type, std::int64_t r, std::int64_t c) {
  return std::string(op) + " " + type + " (" + std::to_string(r) + ", " + std::to_string(c) + ")";
}

}  // namespace

// ---------------------------------------------------------------- activations

BOOST_AUTO_TEST_CASE_TEMPLATE(swiglu_forward_backward, T, Types) {
  for (const auto [rows, width] : kShapes) {
    const std::int64_t n = rows * width;
    const auto a1 = random_vector(n, 1, 2.0f), a3 = random_vector(n, 2), dh = random_vector(n, 3);
    const auto x = rounded<T>(a1), up = rounded<T>(a3), g = rounded<T>(dh);
    std::vector<double> h(n), d1(n), d3(n);
    for (std::int64_t i = 0; i < n; ++i) {
      const double s = 1.0 / (1.0 + std::exp(-x[i]));
      h[i] = x[i] * s * up[i];
      d1[i] = g[i] * up[i] * (s + x[i] * s * (1.0 - s));
      d3[i] = g[i] * x[i] * s;
    }
    auto A1 = upload<T>(a1), A3 = upload<T>(a3), DH = upload<T>(dh);
    auto H = poisoned<T>(n), D1 = poisoned<T>(n), D3 = poisoned<T>(n);
    cu::ActivationOps::swiglu_forward(A1.data(), A3.data(), H.data(), rows, width);
    cu::ActivationOps::swiglu_backward(DH.data(), A1.data(), A3.data(), D1.data(), D3.data(), rows, width);
    const auto name = shape_name("swiglu", tag<T>(), rows, width);
    expect_close(fetch(H.data(), n), h, tol<T>(), name + " h");
    expect_close(fetch(D1.data(), n), d1, tol<T>(), name + " d1");
    expect_close(fetch(D3.data(), n), d3, tol<T>(), name + " d3");
  }
}

namespace {

// GELU in closed forms written independently of layers/pointwise.hpp.
double gelu_tanh(double x) { return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))); }
double gelu_tanh_grad(double x) {
  const double k = std::sqrt(2.0 / M_PI), u = k * (x + 0.044715 * x * x * x), sech2 = 1.0 / (std::cosh(u) * std::cosh(u));
  return 0.5 * (1.0 + std::tanh(u)) + 0.5 * x * sech2 * k * (1.0 + 3.0 * 0.044715 * x * x);
}
double phi_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }
double gelu_erf(double x) { return x * phi_cdf(x); }
double gelu_erf_grad(double x) { return phi_cdf(x) + x * std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI); }

template <class Act, class T>
void check_gelu(double (*f)(double), double (*df)(double), const char* act) {
  for (const std::int64_t n : {1, 7, 1000, 4099}) {
    const auto a = random_vector(n, 11, 2.0f), dh = random_vector(n, 12);
    const auto x = rounded<T>(a), g = rounded<T>(dh);
    std::vector<double> h(n), d(n);
    for (std::int64_t i = 0; i < n; ++i) {
      h[i] = f(x[i]);
      d[i] = g[i] * df(x[i]);
    }
    auto A = upload<T>(a), DH = upload<T>(dh);
    auto H = poisoned<T>(n), D = poisoned<T>(n);
    cu::ActivationOps::gelu_forward<Act>(A.data(), H.data(), n);
    cu::ActivationOps::gelu_backward<Act>(DH.data(), A.data(), D.data(), n);
    const auto name = shape_name(act, tag<T>(), 1, n);
    expect_close(fetch(H.data(), n), h, tol<T>(), name + " h");
    expect_close(fetch(D.data(), n), d, tol<T>(), name + " d");
    // In place (d = dh), as GeluFFN runs it: bitwise the out-of-place result.
    cu::ActivationOps::gelu_backward<Act>(DH.data(), A.data(), DH.data(), n);
    BOOST_TEST(same_bits(raw(DH), raw(D)), name << " in-place backward differs");
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE_TEMPLATE(gelu_forward_backward, T, Types) {
  check_gelu<tmoe::layers::GeluTanh, T>(gelu_tanh, gelu_tanh_grad, "gelu_tanh");
  check_gelu<tmoe::layers::GeluErf, T>(gelu_erf, gelu_erf_grad, "gelu_erf");
}

// ---------------------------------------------------------------- norms

BOOST_AUTO_TEST_CASE_TEMPLATE(rmsnorm_forward_backward, T, Types) {
  const double eps = 1e-5;
  for (const auto [n, c] : kShapes) {
    const auto xs = random_vector(n * c, 21, 1.5f), ws = random_vector(c, 22), dys = random_vector(n * c, 23);
    const auto dx0s = random_vector(n * c, 24), dw0s = random_vector(c, 25);
    const auto x = rounded<T>(xs), w = rounded<T>(ws), dy = rounded<T>(dys), dx0 = rounded<T>(dx0s), dw0 = rounded<T>(dw0s);
    const auto name = shape_name("rmsnorm", tag<T>(), n, c);

    std::vector<double> y(n * c), rs(n);
    for (std::int64_t i = 0; i < n; ++i) {
      double ss = 0;
      for (std::int64_t j = 0; j < c; ++j) ss += x[i * c + j] * x[i * c + j];
      rs[i] = 1.0 / std::sqrt(ss / c + eps);
      for (std::int64_t j = 0; j < c; ++j) y[i * c + j] = x[i * c + j] * rs[i] * w[j];
    }
    auto X = upload<T>(xs), W = upload<T>(ws), DY = upload<T>(dys);
    auto Y = poisoned<T>(n * c), R = poisoned<T>(n);
    cu::NormOps::rmsnorm_forward(X.data(), W.data(), Y.data(), R.data(), n, c, eps);
    expect_close(fetch(Y.data(), n * c), y, tol<T>(), name + " y");
    expect_close(fetch(R.data(), n), rs, tol<T>(), name + " rstd");

    // The backward's inputs include the stored rstd: the reference uses it as the GPU does.
    const auto r = fetch(R.data(), n);
    for (const bool acc : {false, true}) {
      std::vector<double> dx(n * c), dw = dw0;
      for (std::int64_t i = 0; i < n; ++i) {
        double dot = 0;
        for (std::int64_t j = 0; j < c; ++j) dot += dy[i * c + j] * w[j] * x[i * c + j] * r[i];
        for (std::int64_t j = 0; j < c; ++j) {
          const double gr = r[i] * (dy[i * c + j] * w[j] - x[i * c + j] * r[i] * dot / c);
          dx[i * c + j] = (acc ? dx0[i * c + j] : 0.0) + gr;
          dw[j] += dy[i * c + j] * x[i * c + j] * r[i];
        }
      }
      std::vector<T> dx_bits, dw_bits;
      for (int run = 0; run < 2; ++run) {
        auto DX = acc ? upload<T>(dx0s) : poisoned<T>(n * c);
        auto DW = upload<T>(dw0s);
        cu::NormOps::rmsnorm_backward(DY.data(), X.data(), W.data(), R.data(), DX.data(), DW.data(), n, c, acc);
        const auto sub = name + (acc ? " accumulate" : "");
        expect_close(fetch(DX.data(), n * c), dx, tol<T>(), sub + " dx");
        expect_close(fetch(DW.data(), c), dw, tol<T>(), sub + " dw");
        if (run == 0) {
          dx_bits = raw(DX);
          dw_bits = raw(DW);
        } else {
          BOOST_TEST(same_bits(dx_bits, raw(DX)), sub << " dx differs between runs");
          BOOST_TEST(same_bits(dw_bits, raw(DW)), sub << " dw differs between runs");
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(layernorm_forward_backward, T, Types) {
  const double eps = 1e-5;
  for (const auto [n, c] : kShapes) {
    // An offset mean, so that (x - mean) matters.
    auto xs = random_vector(n * c, 31, 1.5f);
    for (auto& v : xs) v += 0.75f;
    const auto ws = random_vector(c, 32), bs = random_vector(c, 33), dys = random_vector(n * c, 34);
    const auto dx0s = random_vector(n * c, 35), dw0s = random_vector(c, 36), db0s = random_vector(c, 37);
    const auto x = rounded<T>(xs), w = rounded<T>(ws), b = rounded<T>(bs), dy = rounded<T>(dys);
    const auto dx0 = rounded<T>(dx0s), dw0 = rounded<T>(dw0s), db0 = rounded<T>(db0s);
    const auto name = shape_name("layernorm", tag<T>(), n, c);

    std::vector<double> y(n * c), mu(n), rs(n);
    for (std::int64_t i = 0; i < n; ++i) {
      double s = 0, v = 0;
      for (std::int64_t j = 0; j < c; ++j) s += x[i * c + j];
      mu[i] = s / c;
      for (std::int64_t j = 0; j < c; ++j) v += (x[i * c + j] - mu[i]) * (x[i * c + j] - mu[i]);
      rs[i] = 1.0 / std::sqrt(v / c + eps);
      for (std::int64_t j = 0; j < c; ++j) y[i * c + j] = (x[i * c + j] - mu[i]) * rs[i] * w[j] + b[j];
    }
    auto X = upload<T>(xs), W = upload<T>(ws), B = upload<T>(bs), DY = upload<T>(dys);
    auto Y = poisoned<T>(n * c), M = poisoned<T>(n), R = poisoned<T>(n);
    cu::NormOps::layernorm_forward(X.data(), W.data(), B.data(), Y.data(), M.data(), R.data(), n, c, eps);
    expect_close(fetch(Y.data(), n * c), y, tol<T>(), name + " y");
    expect_close(fetch(M.data(), n), mu, tol<T>(), name + " mean");
    expect_close(fetch(R.data(), n), rs, tol<T>(), name + " rstd");

    const auto m = fetch(M.data(), n), r = fetch(R.data(), n);
    for (const bool acc : {false, true}) {
      std::vector<double> dx(n * c), dw = dw0, db = db0;
      for (std::int64_t i = 0; i < n; ++i) {
        double sg = 0, sgx = 0;
        for (std::int64_t j = 0; j < c; ++j) {
          sg += dy[i * c + j] * w[j];
          sgx += dy[i * c + j] * w[j] * (x[i * c + j] - m[i]) * r[i];
        }
        sg /= c;
        sgx /= c;
        for (std::int64_t j = 0; j < c; ++j) {
          const double xh = (x[i * c + j] - m[i]) * r[i];
          dx[i * c + j] = (acc ? dx0[i * c + j] : 0.0) + r[i] * (dy[i * c + j] * w[j] - sg - xh * sgx);
          dw[j] += dy[i * c + j] * xh;
          db[j] += dy[i * c + j];
        }
      }
      std::vector<T> dx_bits, dw_bits, db_bits;
      for (int run = 0; run < 2; ++run) {
        auto DX = acc ? upload<T>(dx0s) : poisoned<T>(n * c);
        auto DW = upload<T>(dw0s), DB = upload<T>(db0s);
        cu::NormOps::layernorm_backward(DY.data(), X.data(), W.data(), M.data(), R.data(), DX.data(), DW.data(), DB.data(), n,
                                        c, acc);
        const auto sub = name + (acc ? " accumulate" : "");
        expect_close(fetch(DX.data(), n * c), dx, tol<T>(), sub + " dx");
        expect_close(fetch(DW.data(), c), dw, tol<T>(), sub + " dw");
        expect_close(fetch(DB.data(), c), db, tol<T>(), sub + " db");
        if (run == 0) {
          dx_bits = raw(DX);
          dw_bits = raw(DW);
          db_bits = raw(DB);
        } else {
          BOOST_TEST(same_bits(dx_bits, raw(DX)), sub << " dx differs between runs");
          BOOST_TEST(same_bits(dw_bits, raw(DW)), sub << " dw differs between runs");
          BOOST_TEST(same_bits(db_bits, raw(DB)), sub << " db differs between runs");
        }
      }
    }
  }
}

// ---------------------------------------------------------------- embedding

BOOST_AUTO_TEST_CASE_TEMPLATE(embedding_forward_backward, T, Types) {
  struct Case {
    std::int64_t b, t, c, v;
  };
  // Ids drawn from the first half of the table: most ids repeat and some rows never occur.
  for (const auto [b, t, c, v] : {Case{3, 7, 40, 10}, Case{2, 5, 1, 4}, Case{1, 13, 1000, 50}, Case{4, 70, 7, 300}}) {
    const std::int64_t n = b * t;
    auto ids = random_ids(n, static_cast<std::int32_t>(v / 2), 41);
    ids[0] = ids[n - 1] = 1;  // a repeat across the whole batch
    const auto wtes = random_vector(v * c, 42), wpes = random_vector(t * c, 43), douts = random_vector(n * c, 44);
    const auto dwte0s = random_vector(v * c, 45), dwpe0s = random_vector(t * c, 46);
    const auto wte = rounded<T>(wtes), wpe = rounded<T>(wpes), dout = rounded<T>(douts);
    const auto dwte0 = rounded<T>(dwte0s), dwpe0 = rounded<T>(dwpe0s);
    const auto name = "embedding " + tag<T>() + " (" + std::to_string(n) + ", " + std::to_string(c) + ")";

    std::vector<double> tok(n * c), pos(n * c), dwte = dwte0, dwpe = dwpe0;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < c; ++j) {
        tok[i * c + j] = wte[ids[i] * c + j];
        pos[i * c + j] = wte[ids[i] * c + j] + wpe[(i % t) * c + j];
        dwte[ids[i] * c + j] += dout[i * c + j];
        dwpe[(i % t) * c + j] += dout[i * c + j];
      }
    auto IDS = device_copy(ids);
    auto WTE = upload<T>(wtes), WPE = upload<T>(wpes), DOUT = upload<T>(douts);
    auto OUT = poisoned<T>(n * c);
    cu::EmbeddingOps::embedding_forward(IDS.data(), WTE.data(), static_cast<const T*>(nullptr), OUT.data(), n, t, c);
    BOOST_TEST(gpu_test::rel_error(fetch(OUT.data(), n * c), tok) == 0.0, name << " forward is not a copy");
    OUT.fill_bytes(0xff);
    cu::EmbeddingOps::embedding_forward(IDS.data(), WTE.data(), WPE.data(), OUT.data(), n, t, c);
    expect_close(fetch(OUT.data(), n * c), pos, tol<T>(), name + " forward with positions");

    // Backward twice with device ids, once with a host-built plan: all bitwise equal.
    const auto plan = cu::make_embedding_plan(ids.data(), n, v);
    std::vector<T> wte_bits, wpe_bits;
    for (int run = 0; run < 3; ++run) {
      auto DWTE = upload<T>(dwte0s), DWPE = upload<T>(dwpe0s);
      if (run < 2) cu::EmbeddingOps::embedding_backward(IDS.data(), DOUT.data(), DWTE.data(), DWPE.data(), n, t, c);
      else cu::EmbeddingOps::embedding_backward(plan, DOUT.data(), DWTE.data(), DWPE.data(), n, t, c);
      const auto got = fetch(DWTE.data(), v * c);
      expect_close(got, dwte, tol<T>(), name + " dwte");
      expect_close(fetch(DWPE.data(), t * c), dwpe, tol<T>(), name + " dwpe");
      for (std::int64_t r = v / 2; r < v; ++r)  // rows no token uses keep their gradient bit for bit
        for (std::int64_t j = 0; j < c; ++j) BOOST_REQUIRE(got[r * c + j] == dwte0[r * c + j]);
      if (run == 0) {
        wte_bits = raw(DWTE);
        wpe_bits = raw(DWPE);
      } else {
        BOOST_TEST(same_bits(wte_bits, raw(DWTE)), name << " dwte differs in run " << run);
        BOOST_TEST(same_bits(wpe_bits, raw(DWPE)), name << " dwpe differs in run " << run);
      }
    }
    // Without a position table.
    std::vector<double> dwte_only = dwte0;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < c; ++j) dwte_only[ids[i] * c + j] += dout[i * c + j];
    auto DWTE = upload<T>(dwte0s);
    cu::EmbeddingOps::embedding_backward(IDS.data(), DOUT.data(), DWTE.data(), static_cast<T*>(nullptr), n, t, c);
    expect_close(fetch(DWTE.data(), v * c), dwte_only, tol<T>(), name + " dwte without positions");
  }
}

BOOST_AUTO_TEST_CASE(embedding_backward_rejects_a_negative_id) {
  std::vector<std::int32_t> ids{0, 2, -7, 1};
  auto IDS = device_copy(ids);
  auto DOUT = upload<float>(random_vector(4 * 3, 1)), DWTE = upload<float>(random_vector(3 * 3, 2));
  try {
    cu::EmbeddingOps::embedding_backward(IDS.data(), DOUT.data(), DWTE.data(), static_cast<float*>(nullptr), 4, 4, 3);
    BOOST_FAIL("a negative token id was accepted");
  } catch (const tmoe::Error& e) {
    BOOST_TEST(std::string(e.what()).find("token id -7") != std::string::npos, e.what());
  }
}

// ---------------------------------------------------------------- cross-entropy

BOOST_AUTO_TEST_CASE_TEMPLATE(cross_entropy_forward_backward, T, Types) {
  const double scale = 0.37;
  for (const auto [n, v] : {RowsCols{1, 1}, RowsCols{7, 7}, RowsCols{3, 1000}, RowsCols{300, 33}, RowsCols{2, 5003}}) {
    const auto ls = random_vector(n * v, 51, 2.0f);
    const auto l = rounded<T>(ls);
    const auto y = random_ids(n, static_cast<std::int32_t>(v), 52);
    const auto name = shape_name("cross_entropy", tag<T>(), n, v);

    std::vector<double> row(n), d(n * v);
    double total = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      double mx = l[i * v];
      for (std::int64_t j = 0; j < v; ++j) mx = std::max(mx, l[i * v + j]);
      double s = 0;
      for (std::int64_t j = 0; j < v; ++j) s += std::exp(l[i * v + j] - mx);
      row[i] = std::log(s) + mx - l[i * v + y[i]];
      total += row[i];
      for (std::int64_t j = 0; j < v; ++j) d[i * v + j] = (std::exp(l[i * v + j] - mx) / s - (j == y[i] ? 1.0 : 0.0)) * scale;
    }
    auto L = upload<T>(ls);
    auto Y = device_copy(y);
    double totals[2];
    std::vector<T> row_bits;
    for (int run = 0; run < 2; ++run) {
      auto ROW = poisoned<T>(n);
      totals[run] = cu::LossOps::cross_entropy_forward(L.data(), Y.data(), ROW.data(), n, v);
      const auto got = fetch(ROW.data(), n);
      expect_close(got, row, tol<T>(), name + " row loss");
      // The total is the sum of the stored row losses.
      double sum_got = 0;
      for (double x : got) sum_got += x;
      BOOST_TEST(std::abs(totals[run] - sum_got) <= 1e-12 * (1.0 + std::abs(sum_got)), name << " total " << totals[run]);
      BOOST_TEST(std::abs(totals[run] - total) <= tol<T>() * (1.0 + std::abs(total)), name << " total vs reference");
      if (run == 0) row_bits = raw(ROW);
      else BOOST_TEST(same_bits(row_bits, raw(ROW)), name << " row losses differ between runs");
    }
    BOOST_TEST(std::memcmp(&totals[0], &totals[1], sizeof(double)) == 0, name << " totals differ between runs");

    auto DL = poisoned<T>(n * v);
    cu::LossOps::cross_entropy_backward(L.data(), Y.data(), DL.data(), n, v, scale);
    expect_close(fetch(DL.data(), n * v), d, tol<T>(), name + " dlogits");
    // In place over the logits: bitwise the out-of-place result.
    cu::LossOps::cross_entropy_backward(L.data(), Y.data(), L.data(), n, v, scale);
    BOOST_TEST(same_bits(raw(L), raw(DL)), name << " in-place backward differs");
  }
}

BOOST_AUTO_TEST_CASE(cross_entropy_target_out_of_range_gives_nan) {
  const std::int64_t n = 3, v = 5;
  auto L = upload<float>(random_vector(n * v, 61));
  auto Y = device_copy(std::vector<std::int32_t>{0, 5, 4});
  auto ROW = poisoned<float>(n);
  const double total = cu::LossOps::cross_entropy_forward(L.data(), Y.data(), ROW.data(), n, v);
  const auto row = fetch(ROW.data(), n);
  BOOST_TEST(std::isfinite(row[0]));
  BOOST_TEST(std::isnan(row[1]));
  BOOST_TEST(std::isfinite(row[2]));
  BOOST_TEST(std::isnan(total));
}

// ---------------------------------------------------------------- RoPE

BOOST_AUTO_TEST_CASE_TEMPLATE(rope_rotates_q_and_k_and_inverts, T, Types) {
  struct Case {
    std::int64_t b, t, c, h;
  };
  // hd = 8, 2 (one pair), 7 (odd: the last element of a head stays), 16.
  for (const auto [b, t, c, h] : {Case{2, 5, 24, 3}, Case{1, 1, 2, 1}, Case{3, 4, 21, 3}, Case{2, 9, 64, 4}}) {
    const std::int64_t hd = c / h, half = hd / 2, n = b * t * 3 * c;
    std::vector<float> cs(t * half), sn(t * half);
    for (std::int64_t p = 0; p < t; ++p)
      for (std::int64_t i = 0; i < half; ++i) {
        const double ang = static_cast<double>(p) * std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
        cs[p * half + i] = static_cast<float>(std::cos(ang));
        sn[p * half + i] = static_cast<float>(std::sin(ang));
      }
    const auto qkvs = random_vector(n, 71);
    const auto q = rounded<T>(qkvs), co = rounded<T>(cs), si = rounded<T>(sn);
    std::vector<double> ref = q;
    std::vector<bool> rotated(n, false);
    for (std::int64_t bt = 0; bt < b * t; ++bt)
      for (std::int64_t part = 0; part < 2; ++part)
        for (std::int64_t hi = 0; hi < h; ++hi) {
          const std::int64_t base = bt * 3 * c + part * c + hi * hd, p = bt % t;
          for (std::int64_t i = 0; i < half; ++i) {
            const double x1 = q[base + i], x2 = q[base + i + half], c1 = co[p * half + i], s1 = si[p * half + i];
            ref[base + i] = x1 * c1 - x2 * s1;
            ref[base + i + half] = x2 * c1 + x1 * s1;
            rotated[base + i] = rotated[base + i + half] = true;
          }
        }
    auto Q = upload<T>(qkvs), COS = upload<T>(cs), SIN = upload<T>(sn);
    const auto name = "rope " + tag<T>() + " (b " + std::to_string(b) + ", t " + std::to_string(t) + ", c " +
                      std::to_string(c) + ", h " + std::to_string(h) + ")";
    cu::RopeOps::rope_apply(Q.data(), COS.data(), SIN.data(), b, t, c, h, cu::store<T>(cu::compute_t<T>(1)));
    const auto got = fetch(Q.data(), n);
    expect_close(got, ref, tol<T>(), name + " forward");
    for (std::int64_t k = 0; k < n; ++k)  // v, and the odd element of a head, untouched
      if (!rotated[k]) BOOST_REQUIRE(got[k] == q[k]);
    cu::RopeOps::rope_apply(Q.data(), COS.data(), SIN.data(), b, t, c, h, cu::store<T>(cu::compute_t<T>(-1)));
    expect_close(fetch(Q.data(), n), q, 2 * tol<T>() + 1e-6, name + " inverse");
  }
}

// ---------------------------------------------------------------- casts

namespace {

bool same_value(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return a == b && std::signbit(a) == std::signbit(b);
}

// The value x (exactly a float) converted to D by the host rounding of precision/narrow.hpp.
template <class D>
double narrow_ref(float x) {
  if constexpr (std::is_same_v<D, double>) return x;
  else if constexpr (std::is_same_v<D, float>) return x;
  else if constexpr (std::is_same_v<D, __nv_bfloat16>) return tmoe::bf16::round(x);
  else return tmoe::fp16::round(x);
}

// Casts S -> D on the device for the float values `v` first put into S (each S value is a
// float, so the reference rounds once from float) and compares with narrow.hpp bit for bit.
template <class S, class D>
void check_cast(const std::vector<float>& v) {
  const std::int64_t n = static_cast<std::int64_t>(v.size());
  std::vector<S> src(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) src[i] = cu::convert<float, S>(v[i]);
  auto IN = device_copy(src);
  auto OUT = poisoned<D>(n);
  cu::CastOps::cast(IN.data(), OUT.data(), n);
  const auto got = fetch(OUT.data(), n);
  int bad = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const float xs = static_cast<float>(cu::convert<S, double>(src[i]));
    const double want = narrow_ref<D>(xs);
    if (!same_value(got[i], want) && ++bad <= 5)
      BOOST_ERROR("cast " << tag<S>() << " -> " << tag<D>() << " of " << xs << " (bits 0x" << std::hex
                          << std::bit_cast<std::uint32_t>(xs) << std::dec << "): got " << got[i] << ", want " << want);
  }
  BOOST_TEST(bad == 0, "cast " << tag<S>() << " -> " << tag<D>() << ": " << bad << " of " << n << " differ");
}

template <class S>
void check_casts_from(const std::vector<float>& v) {
  check_cast<S, float>(v);
  check_cast<S, double>(v);
  check_cast<S, __nv_bfloat16>(v);
  check_cast<S, __half>(v);
}

float from_bits(std::uint32_t u) { return std::bit_cast<float>(u); }

std::vector<float> special_values() {
  const float two = 2.0f;
  std::vector<float> v{
      0.0f, -0.0f, 1.0f, -1.0f, INFINITY, -INFINITY, NAN, -NAN, from_bits(0x7f800001u) /* signalling NaN */,
      // bf16 ties (spacing 2^-7 in [1, 2)): to even down, to even up, just above a tie
      1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -8), -(1.0f + std::ldexp(1.0f, -8)),
      1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -23),
      // bf16 overflow: the largest float, the largest bf16, a tie past it (-> inf), just below the tie
      from_bits(0x7f7fffffu), from_bits(0x7f7f0000u), from_bits(0x7f7f8000u), from_bits(0x7f7f7fffu), -from_bits(0x7f7f8000u),
      // float subnormals under bf16: tiny, a tie to even (0), a tie to even (up), the largest
      from_bits(0x00000001u), from_bits(0x00008000u), from_bits(0x00018000u), from_bits(0x00007fffu), from_bits(0x007fffffu),
      // fp16: largest finite, below the overflow tie, the tie (-> inf), beyond
      65504.0f, 65519.0f, 65520.0f, -65520.0f, 1e6f, 3.0e38f,
      // fp16 subnormals: the smallest, a tie to 0, a tie up to 2^-23, near the normal boundary
      std::ldexp(1.0f, -24), std::ldexp(1.0f, -25), 3 * std::ldexp(1.0f, -25), -std::ldexp(1.0f, -25),
      std::ldexp(1.0f, -14), std::ldexp(1.0f, -14) - std::ldexp(1.0f, -25), std::ldexp(1.0f, -14) - std::ldexp(1.0f, -24),
      1e-10f, -1e-10f, std::ldexp(1.0f, -20) * 1.3f,
      // fp16 ties in [1, 2) (spacing 2^-10)
      1.0f + std::ldexp(1.0f, -11), 1.0f + 3 * std::ldexp(1.0f, -11), two + std::ldexp(1.0f, -10) * 3};
  return v;
}

}  // namespace

BOOST_AUTO_TEST_CASE(cast_rounding_matches_narrow_hpp_on_special_values) {
  const auto v = special_values();
  check_casts_from<float>(v);
  check_casts_from<double>(v);
  check_casts_from<__nv_bfloat16>(v);
  check_casts_from<__half>(v);
}

BOOST_AUTO_TEST_CASE(cast_rounding_matches_narrow_hpp_on_random_bit_patterns) {
  std::mt19937 g(81);
  std::vector<float> v(1 << 16);
  for (auto& x : v) x = from_bits(static_cast<std::uint32_t>(g()));  // every exponent, NaNs, subnormals
  check_casts_from<float>(v);
  check_casts_from<double>(v);
  check_casts_from<__nv_bfloat16>(v);
  check_casts_from<__half>(v);
}

BOOST_AUTO_TEST_CASE(cast_from_double_rounds_once) {
  // Through float these would round twice, onto a tie, and then to even (down).
  const std::vector<double> x{1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40), 1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40),
                              std::ldexp(1.0, -25) + std::ldexp(1.0, -60)};
  auto X = device_copy(x);
  auto B = poisoned<__nv_bfloat16>(3);
  auto H = poisoned<__half>(3);
  cu::CastOps::cast(X.data(), B.data(), 3);
  cu::CastOps::cast(X.data(), H.data(), 3);
  const auto b = fetch(B.data(), 3), h = fetch(H.data(), 3);
  BOOST_TEST(b[0] == 1.0078125);
  BOOST_TEST(h[1] == 1.0009765625);
  BOOST_TEST(h[2] == std::ldexp(1.0, -24));
}
