// backend::Cuda attention (attention.cuh) against a host double-precision reference of
// causal multi-head attention: probabilities, output and the qkv gradient, with stored and
// recomputed probabilities, with attention dropout keyed as on the CPU (routed tokens given
// as a device pointer), for fp32 (< 1e-5), fp64 (< 1e-12), bf16 (< 3e-2) and fp16 (< 5e-3:
// every product's operands and results rounded to 16 bits). Shapes: B=2, T=33, C=32, H=4;
// T=1; and T=130 (more keys than a row block's threads). Outputs are poisoned first; two
// runs must agree bitwise.
#define BOOST_TEST_MODULE cuda_attention
#include "gpu_test.hpp"
#include "tmoe/backend/cuda/attention.cuh"

#include <cstring>
#include <numeric>

namespace cu = tmoe::backend::cuda;
using tmoe::AttentionOptions;

namespace {

struct Shape4 {
  std::int64_t b, t, c, h;
};

struct Reference {
  std::vector<double> att, out, dqkv;
};

// Dropout factor of (sequence bi, head hi, query i, key j), keyed as the CPU backend does;
// `tokens` is the host copy of opt.tokens.
double factor(const AttentionOptions& o, const std::vector<std::int32_t>& tokens, const Shape4& s, std::int64_t bi,
              std::int64_t hi, std::int64_t i, std::int64_t j) {
  const tmoe::DropoutMask m = o.mask();
  if (!m.active()) return 1.0;
  const std::int64_t row = bi * s.t + i;
  const std::int64_t tok = o.token_offset + (tokens.empty() ? row : tokens[row]);
  const std::int64_t stride = o.head_stride > 0 ? o.head_stride : s.t;
  const std::uint64_t e = o.element_offset + static_cast<std::uint64_t>(hi * stride + j);
  return m.kept(static_cast<std::uint64_t>(tok), e) ? static_cast<double>(static_cast<float>(m.scale)) : 0.0;
}

Reference reference(const std::vector<double>& qkv, const std::vector<double>& dout, const Shape4& s,
                    const AttentionOptions& o, const std::vector<std::int32_t>& tokens) {
  const std::int64_t b = s.b, t = s.t, c = s.c, h = s.h, hd = c / h;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  Reference r;
  r.att.assign(b * h * t * t, 0.0);
  r.out.assign(b * t * c, 0.0);
  r.dqkv.assign(b * t * 3 * c, 0.0);
  auto q = [&](std::int64_t bi, std::int64_t i, std::int64_t hi, std::int64_t d) { return qkv[(bi * t + i) * 3 * c + hi * hd + d]; };
  auto k = [&](std::int64_t bi, std::int64_t i, std::int64_t hi, std::int64_t d) { return qkv[(bi * t + i) * 3 * c + c + hi * hd + d]; };
  auto v = [&](std::int64_t bi, std::int64_t i, std::int64_t hi, std::int64_t d) { return qkv[(bi * t + i) * 3 * c + 2 * c + hi * hd + d]; };
  for (std::int64_t bi = 0; bi < b; ++bi)
    for (std::int64_t hi = 0; hi < h; ++hi)
      for (std::int64_t i = 0; i < t; ++i) {
        std::vector<double> p(i + 1), f(i + 1), dp(i + 1);
        double mx = -INFINITY, z = 0;
        for (std::int64_t j = 0; j <= i; ++j) {
          double sc = 0;
          for (std::int64_t d = 0; d < hd; ++d) sc += q(bi, i, hi, d) * k(bi, j, hi, d);
          p[j] = scale * sc;
          mx = std::max(mx, p[j]);
        }
        for (std::int64_t j = 0; j <= i; ++j) z += (p[j] = std::exp(p[j] - mx));
        for (std::int64_t j = 0; j <= i; ++j) {
          p[j] /= z;
          f[j] = factor(o, tokens, s, bi, hi, i, j);
          r.att[((bi * h + hi) * t + i) * t + j] = p[j];
        }
        const double* go = &dout[(bi * t + i) * c + hi * hd];
        for (std::int64_t d = 0; d < hd; ++d) {
          double acc = 0;
          for (std::int64_t j = 0; j <= i; ++j) acc += p[j] * f[j] * v(bi, j, hi, d);
          r.out[(bi * t + i) * c + hi * hd + d] = acc;
        }
        // backward of this query row
        double dot = 0;
        for (std::int64_t j = 0; j <= i; ++j) {
          double x = 0;
          for (std::int64_t d = 0; d < hd; ++d) {
            x += go[d] * v(bi, j, hi, d);
            r.dqkv[(bi * t + j) * 3 * c + 2 * c + hi * hd + d] += p[j] * f[j] * go[d];  // dV
          }
          dp[j] = x * f[j];
          dot += dp[j] * p[j];
        }
        for (std::int64_t j = 0; j <= i; ++j) {
          const double ds = p[j] * (dp[j] - dot) * scale;
          for (std::int64_t d = 0; d < hd; ++d) {
            r.dqkv[(bi * t + i) * 3 * c + hi * hd + d] += ds * k(bi, j, hi, d);      // dQ
            r.dqkv[(bi * t + j) * 3 * c + c + hi * hd + d] += ds * q(bi, i, hi, d);  // dK
          }
        }
      }
  return r;
}

template <class T>
struct Tol;
template <>
struct Tol<float> {
  static constexpr double v = 1e-5;
};
template <>
struct Tol<double> {
  static constexpr double v = 1e-12;
};
template <>
struct Tol<__nv_bfloat16> {
  static constexpr double v = 3e-2;
};
template <>
struct Tol<__half> {
  static constexpr double v = 5e-3;
};

struct Result {
  std::vector<double> att, out, dqkv;
};

// Runs forward + backward on the device with options `o` (dropout keys; tokens uploaded here
// when given) and checks them against the reference; returns the results for run-to-run
// and stored-vs-recomputed comparisons.
template <class T>
Result check_case(const Shape4& s, AttentionOptions o, const std::vector<std::int32_t>& tokens) {
  const std::int64_t b = s.b, t = s.t, c = s.c, h = s.h;
  const auto qkv_f = gpu_test::random_vector(b * t * 3 * c, 101, 1.0f);
  const auto dout_f = gpu_test::random_vector(b * t * c, 102, 1.0f);
  const auto qkv_r = gpu_test::rounded<T>(qkv_f), dout_r = gpu_test::rounded<T>(dout_f);
  const Reference ref = reference(qkv_r, dout_r, s, o, tokens);
  auto qkv = gpu_test::upload<T>(qkv_f);
  auto dout = gpu_test::upload<T>(dout_f);
  cu::DeviceTensor<std::int32_t> tok_d;
  if (!tokens.empty()) {
    tok_d = cu::to_device(tokens);
    o.tokens = tok_d.data();  // a device pointer, as the CUDA backend requires
  }
  auto run = [&] {
    Result r;
    auto att = gpu_test::poisoned<T>(b * h * t * t);
    auto out = gpu_test::poisoned<T>(b * t * c);
    auto dqkv = gpu_test::poisoned<T>(b * t * 3 * c);
    cu::AttentionOps::attention_forward<T>(qkv.data(), o.store_probs ? att.data() : nullptr, out.data(), b, t, c, h, o);
    cu::AttentionOps::attention_backward<T>(dout.data(), qkv.data(), o.store_probs ? att.data() : nullptr, dqkv.data(), b,
                                            t, c, h, o);
    if (o.store_probs) r.att = gpu_test::fetch(att.data(), b * h * t * t);
    r.out = gpu_test::fetch(out.data(), b * t * c);
    r.dqkv = gpu_test::fetch(dqkv.data(), b * t * 3 * c);
    if (!o.store_probs) {  // att untouched: still all NaN
      const auto raw = gpu_test::fetch(att.data(), b * h * t * t);
      for (double x : raw) BOOST_TEST(std::isnan(x));
    }
    return r;
  };
  const Result r1 = run(), r2 = run();
  const double tol = Tol<T>::v;
  if (o.store_probs) {
    BOOST_TEST(gpu_test::rel_error(r1.att, ref.att) < tol);
    for (std::int64_t row = 0; row < b * h * t; ++row)  // the upper triangle is exactly zero
      for (std::int64_t j = row % t + 1; j < t; ++j) BOOST_TEST(r1.att[row * t + j] == 0.0);
  }
  BOOST_TEST(gpu_test::rel_error(r1.out, ref.out) < tol);
  BOOST_TEST(gpu_test::rel_error(r1.dqkv, ref.dqkv) < tol);
  BOOST_TEST((r1.att == r2.att));
  BOOST_TEST((r1.out == r2.out));
  BOOST_TEST((r1.dqkv == r2.dqkv));
  BOOST_TEST_MESSAGE(cu::Scalar<T>::name << " B=" << b << " T=" << t << " store=" << o.store_probs
                                         << " drop=" << o.dropout << ": out " << gpu_test::rel_error(r1.out, ref.out)
                                         << ", dqkv " << gpu_test::rel_error(r1.dqkv, ref.dqkv));
  return r1;
}

template <class T>
void check_shapes(double dropout) {
  const Shape4 shapes[] = {{2, 33, 32, 4}, {2, 1, 32, 4}, {1, 130, 16, 2}};
  for (const Shape4& s : shapes) {
    AttentionOptions o;
    std::vector<std::int32_t> tokens;
    if (dropout > 0) {
      o.dropout = dropout;
      o.seed = 1234;
      o.step = 5;
      o.site = tmoe::dropout_site(3, tmoe::DropoutUse::kAttnProbs);
      o.token_offset = 1000;
      o.element_offset = 77;
      tokens.resize(static_cast<std::size_t>(s.b * s.t));  // routed rows: a reversed order
      std::iota(tokens.rbegin(), tokens.rend(), 0);
    }
    BOOST_TEST_CONTEXT("B=" << s.b << " T=" << s.t << " C=" << s.c << " H=" << s.h << " dropout=" << dropout) {
      o.store_probs = true;
      const Result stored = check_case<T>(s, o, tokens);
      o.store_probs = false;
      const Result recomputed = check_case<T>(s, o, tokens);
      // Recomputed probabilities are the forward's bitwise, but P V and Pᵀ dO read P from
      // att or from a scratch buffer, whose alignments may make cuBLAS pick other kernels:
      // equal within the tolerance, not necessarily bitwise.
      BOOST_TEST(gpu_test::rel_error(recomputed.out, stored.out) < Tol<T>::v);
      BOOST_TEST(gpu_test::rel_error(recomputed.dqkv, stored.dqkv) < Tol<T>::v);
    }
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(attention_fp32) { check_shapes<float>(0.0); }
BOOST_AUTO_TEST_CASE(attention_fp64) { check_shapes<double>(0.0); }
BOOST_AUTO_TEST_CASE(attention_bf16) { check_shapes<__nv_bfloat16>(0.0); }
BOOST_AUTO_TEST_CASE(attention_fp16) { check_shapes<__half>(0.0); }
BOOST_AUTO_TEST_CASE(attention_dropout_fp32) { check_shapes<float>(0.25); }

BOOST_AUTO_TEST_CASE(attention_head_stride_and_no_tokens) {
  // head_stride given and the identity token map: keys as the CPU's dropout_block.
  AttentionOptions o;
  o.dropout = 0.5;
  o.seed = 9;
  o.site = tmoe::dropout_site(0, tmoe::DropoutUse::kAttnProbs);
  o.head_stride = 64;
  check_case<float>({3, 17, 24, 3}, o, {});
}

BOOST_AUTO_TEST_CASE(bad_shape_is_an_error) {
  BOOST_CHECK_THROW(cu::AttentionOps::attention_forward<float>(nullptr, nullptr, nullptr, 1, 4, 30, 4), tmoe::Error);
}
