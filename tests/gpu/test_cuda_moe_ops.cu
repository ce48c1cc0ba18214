// The MoE layer's GPU ops: token-choice routing (router.cuh) for TopK, SigmoidBias and
// GroupLimited<...>, against the same per-token router functions called on the host (ids
// exactly, probs/gates/dlogits within 1e-6), and dispatch/combine (permute.cuh) with the
// index arrays of a host RoutingPlan (moe/permute_plan.hpp), against host references:
// permute, the combine's dy and unpermute_sum exactly (one product each, or plain sums in
// the GPU's order), the combine and dgate within 1e-6 of double references, dropped
// assignments giving dgate 0, empty experts and a plan with every assignment dropped.
// Outputs are poisoned first; two runs must agree bitwise.
#define BOOST_TEST_MODULE cuda_moe_ops
#include "gpu_test.hpp"
#include "tmoe/backend/cuda/permute.cuh"
#include "tmoe/backend/cuda/router.cuh"
#include "tmoe/moe/permute_plan.hpp"
#include "tmoe/moe/routers/group_limited.hpp"
#include "tmoe/moe/routers/sigmoid_bias.hpp"
#include "tmoe/moe/routers/topk.hpp"

#include <boost/mpl/list.hpp>
#include <algorithm>
#include <cstring>
#include <type_traits>

namespace cu = tmoe::backend::cuda;
using tmoe::RouterParams;

namespace {

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    m = std::isnan(d) ? INFINITY : std::max(m, d);
  }
  return m;
}

template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// The router cases: E = 16 experts in 4 groups, 2 groups kept, k = 4.
template <class R>
void check_router(bool renormalize, bool with_dprobs) {
  const std::int64_t n = 301, e = 16, k = 4;
  const RouterParams rp{e, k, renormalize, 4, 2};
  const auto logits = gpu_test::random_vector(n * e, 17, 2.0f);
  const auto bias = gpu_test::random_vector(e, 18, 0.1f);
  const auto dgates = gpu_test::random_vector(n * k, 19);
  const auto dprobs = gpu_test::random_vector(n * e, 20);
  const float* bias_h = R::has_bias ? bias.data() : nullptr;

  // Host: the layer's calls, per token.
  std::vector<float> probs(n * e), sel(n * e), gates(n * k), dlogits(n * e);
  std::vector<std::int32_t> ids(n * k);
  for (std::int64_t t = 0; t < n; ++t) {
    R::template scores_token<float>(rp, logits.data() + t * e, bias_h, probs.data() + t * e, sel.data() + t * e);
    tmoe::select_topk(sel.data() + t * e, e, k, ids.data() + t * k);
    R::template gates_token<float>(rp, logits.data() + t * e, probs.data() + t * e, ids.data() + t * k,
                                   gates.data() + t * k);
    R::template backward_token<float>(rp, logits.data() + t * e, probs.data() + t * e, ids.data() + t * k,
                                      gates.data() + t * k, dgates.data() + t * k,
                                      with_dprobs ? dprobs.data() + t * e : nullptr, dlogits.data() + t * e);
  }

  auto d_logits = cu::to_device(logits);
  auto d_bias = cu::to_device(bias);
  auto d_dgates = cu::to_device(dgates);
  auto d_dprobs = cu::to_device(dprobs);
  auto run = [&] {
    auto d_probs = gpu_test::poisoned<float>(n * e);
    auto d_sel = gpu_test::poisoned<float>(n * e);
    auto d_gates = gpu_test::poisoned<float>(n * k);
    auto d_dlogits = gpu_test::poisoned<float>(n * e);
    cu::DeviceTensor<std::int32_t> d_ids;
    d_ids.ensure(tmoe::Shape{n * k});
    d_ids.fill_bytes(0xff);
    cu::RouterOps::route_forward<R, float>(rp, d_logits.data(), R::has_bias ? d_bias.data() : nullptr, d_probs.data(),
                                           d_ids.data(), d_gates.data(), n, d_sel.data());
    cu::RouterOps::route_backward<R, float>(rp, d_logits.data(), d_probs.data(), d_ids.data(), d_gates.data(),
                                            d_dgates.data(), with_dprobs ? d_dprobs.data() : nullptr, d_dlogits.data(),
                                            n);
    struct Out {
      std::vector<float> probs, sel, gates, dlogits;
      std::vector<std::int32_t> ids;
    };
    return Out{cu::to_host(d_probs), cu::to_host(d_sel), cu::to_host(d_gates), cu::to_host(d_dlogits),
               cu::to_host(d_ids)};
  };
  const auto a = run(), b = run();
  BOOST_TEST((a.ids == ids));
  BOOST_TEST(max_abs_diff(a.probs, probs) < 1e-6);
  BOOST_TEST(max_abs_diff(a.gates, gates) < 1e-6);
  BOOST_TEST(max_abs_diff(a.dlogits, dlogits) < 1e-6);
  std::int64_t masked_host = 0, masked_gpu = 0;  // GroupLimited: the same experts masked
  for (std::int64_t i = 0; i < n * e; ++i) {
    masked_host += std::isinf(sel[i]) ? 1 : 0;
    masked_gpu += std::isinf(a.sel[i]) ? 1 : 0;
  }
  BOOST_TEST(masked_gpu == masked_host);
  BOOST_TEST(bitwise_equal(a.probs, b.probs));
  BOOST_TEST(bitwise_equal(a.gates, b.gates));
  BOOST_TEST(bitwise_equal(a.dlogits, b.dlogits));
  BOOST_TEST((a.ids == b.ids));
}

}  // namespace

using Routers = boost::mpl::list<tmoe::TopK, tmoe::SigmoidBias, tmoe::GroupLimited<tmoe::TopK>,
                                 tmoe::GroupLimited<tmoe::SigmoidBias>>;

BOOST_AUTO_TEST_CASE_TEMPLATE(router_matches_host_math, R, Routers) {
  for (bool renorm : {true, false})
    for (bool dprobs : {true, false}) {
      BOOST_TEST_CONTEXT(R::name << " renormalize=" << renorm << " dprobs=" << dprobs) { check_router<R>(renorm, dprobs); }
    }
}

BOOST_AUTO_TEST_CASE(router_bad_params_are_errors) {
  const RouterParams rp{4, 5, true, 1, 1};  // k > E
  BOOST_CHECK_THROW((cu::RouterOps::route_forward<tmoe::TopK, float>(rp, nullptr, nullptr, nullptr, nullptr, nullptr, 1)),
                    tmoe::Error);
}

namespace {

// A token-choice routing of n tokens, k picks each, over e experts; expert `skip` is never
// chosen; `drop_all` drops every assignment, otherwise every fifth one.
struct Dispatch {
  std::int64_t n, k, e, c;
  std::vector<std::int32_t> expert, token;
  std::vector<std::uint8_t> kept;
  tmoe::RoutingPlan plan;
  tmoe::PermuteIndex ix;
};

Dispatch make_dispatch(std::int64_t n, std::int64_t k, std::int64_t e, std::int64_t c, std::int32_t skip, bool drop_all) {
  Dispatch d{n, k, e, c, {}, {}, {}, {}, {}};
  std::mt19937 g(7);
  std::uniform_int_distribution<std::int32_t> pick(0, static_cast<std::int32_t>(e - 1));
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t j = 0; j < k; ++j) {
      std::int32_t x;
      do x = pick(g);
      while (x == skip);
      d.expert.push_back(x);
      d.token.push_back(static_cast<std::int32_t>(t));
      d.kept.push_back(drop_all || (t * k + j) % 5 == 2 ? 0 : 1);
    }
  tmoe::build_routing_plan(d.plan, d.expert.data(), d.token.data(), d.kept.data(), n * k, n, e);
  d.ix = tmoe::permute_index(d.plan);
  return d;
}

template <class T>
std::vector<float> as_float(const std::vector<double>& v) {
  return std::vector<float>(v.begin(), v.end());
}

template <class T>
void check_dispatch(std::int64_t n, std::int64_t c, bool drop_all, double tol) {
  const std::int64_t k = 3, e = 6;
  const Dispatch d = make_dispatch(n, k, e, c, 4, drop_all);
  const std::int64_t rows = d.ix.rows, a = n * k;
  const double scale = 1.0 / 3.0;  // route_scale, not exact in float
  const auto x = gpu_test::rounded<T>(gpu_test::random_vector(n * c, 31));
  const auto y = gpu_test::rounded<T>(gpu_test::random_vector(std::max<std::int64_t>(rows, 1) * c, 32));
  const auto shared = gpu_test::rounded<T>(gpu_test::random_vector(n * c, 33));
  const auto dout = gpu_test::rounded<T>(gpu_test::random_vector(n * c, 34));
  const auto dxe = gpu_test::rounded<T>(gpu_test::random_vector(std::max<std::int64_t>(rows, 1) * c, 35));
  const auto gates = gpu_test::random_vector(a, 36);  // fp32 router gates
  const auto& p = d.plan;

  // Host references.
  std::vector<double> perm(rows * c), comb(n * c), comb_acc(n * c), dgate(a, 0.0);
  std::vector<float> dy_f(rows * c), dx_f(n * c);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = 0; j < c; ++j) perm[r * c + j] = x[p.row_token[r] * c + j];
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t j = 0; j < c; ++j) {
      double s = 0;
      float sum = 0;  // unpermute_sum: plain float adds in the token's order, as the GPU
      for (std::int32_t q = p.tok_offsets[t]; q < p.tok_offsets[t + 1]; ++q) {
        const std::int32_t as = p.tok_assign[q];
        s += static_cast<double>(static_cast<float>(scale) * gates[as]) * y[p.pos[as] * c + j];
        sum += static_cast<float>(dxe[p.pos[as] * c + j]);
      }
      comb[t * c + j] = s;
      comb_acc[t * c + j] = s + shared[t * c + j];
      dx_f[t * c + j] = sum;
    }
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int32_t as = p.row_assign[r], tok = p.row_token[r];
    const float g = static_cast<float>(scale) * gates[as];
    double dot = 0;
    for (std::int64_t j = 0; j < c; ++j) {
      dy_f[r * c + j] = g * static_cast<float>(dout[tok * c + j]);
      dot += dout[tok * c + j] * y[r * c + j];
    }
    dgate[as] = scale * dot;
  }

  // Device.
  auto ixd = cu::to_device(d.ix.data);
  const auto dp = d.ix.at(static_cast<const std::int32_t*>(ixd.data()));
  auto x_d = gpu_test::upload<T>(as_float<T>(x));
  auto y_d = gpu_test::upload<T>(as_float<T>(y));
  auto dout_d = gpu_test::upload<T>(as_float<T>(dout));
  auto dxe_d = gpu_test::upload<T>(as_float<T>(dxe));
  auto g_d = cu::to_device(gates);
  struct Out {
    std::vector<double> perm, comb, comb_acc, dy, dx, dx_acc;
    std::vector<float> dgate;
  };
  auto run = [&] {
    Out o;
    auto perm_d = gpu_test::poisoned<T>(rows * c);
    cu::PermuteOps::permute<T>(x_d.data(), dp.row_token, perm_d.data(), rows, c);
    o.perm = gpu_test::fetch(perm_d.data(), rows * c);
    auto comb_d = gpu_test::poisoned<T>(n * c);
    cu::PermuteOps::unpermute_combine<T, float>(y_d.data(), dp.tok_offsets, dp.tok_assign, dp.pos, g_d.data(),
                                                comb_d.data(), n, c, scale);
    o.comb = gpu_test::fetch(comb_d.data(), n * c);
    auto acc_d = gpu_test::upload<T>(as_float<T>(shared));
    cu::PermuteOps::unpermute_combine<T, float>(y_d.data(), dp.tok_offsets, dp.tok_assign, dp.pos, g_d.data(),
                                                acc_d.data(), n, c, scale, /*accumulate=*/true);
    o.comb_acc = gpu_test::fetch(acc_d.data(), n * c);
    auto dy_d = gpu_test::poisoned<T>(rows * c);
    auto dg_d = gpu_test::poisoned<float>(a);
    cu::PermuteOps::combine_backward<T, float>(dout_d.data(), y_d.data(), dp.row_token, dp.row_assign, g_d.data(),
                                               dy_d.data(), dg_d.data(), rows, a, c, scale);
    o.dy = gpu_test::fetch(dy_d.data(), rows * c);
    o.dgate = cu::to_host(dg_d);
    auto dx_d = gpu_test::poisoned<T>(n * c);
    cu::PermuteOps::unpermute_sum<T>(dxe_d.data(), dp.tok_offsets, dp.tok_assign, dp.pos, dx_d.data(), n, c);
    o.dx = gpu_test::fetch(dx_d.data(), n * c);
    auto dxa_d = gpu_test::upload<T>(as_float<T>(shared));
    cu::PermuteOps::unpermute_sum<T>(dxe_d.data(), dp.tok_offsets, dp.tok_assign, dp.pos, dxa_d.data(), n, c, true);
    o.dx_acc = gpu_test::fetch(dxa_d.data(), n * c);
    return o;
  };
  const Out o = run(), o2 = run();

  BOOST_TEST((o.perm == perm));  // a gather: exact in every type
  BOOST_TEST(gpu_test::rel_error(o.comb, comb) < tol);
  BOOST_TEST(gpu_test::rel_error(o.comb_acc, comb_acc) < tol);
  // dy: one rounding of the same float product
  std::vector<double> dy_ref(rows * c), dx_ref(n * c), dxa_ref(n * c);
  for (std::int64_t i = 0; i < rows * c; ++i) dy_ref[i] = cu::load(cu::store<T>(dy_f[i]));
  for (std::int64_t i = 0; i < n * c; ++i) {
    dx_ref[i] = cu::load(cu::store<T>(dx_f[i]));
    dxa_ref[i] = static_cast<double>(dx_f[i]) + shared[i];
  }
  BOOST_TEST((o.dy == dy_ref));
  if constexpr (std::is_same_v<T, float>) BOOST_TEST((o.dx == dx_ref));
  else BOOST_TEST(gpu_test::rel_error(o.dx, dx_ref) < tol);
  BOOST_TEST(gpu_test::rel_error(o.dx_acc, dxa_ref) < tol);
  BOOST_TEST(gpu_test::rel_error(o.dgate, dgate) < 1e-6);
  for (std::int64_t as = 0; as < a; ++as)
    if (p.pos[as] < 0) BOOST_TEST(o.dgate[as] == 0.0f);
  if (drop_all) {
    BOOST_TEST(rows == 0);
    for (double v : o.comb) BOOST_TEST(v == 0.0);
  }
  // Bitwise run to run.
  BOOST_TEST((o.comb == o2.comb));
  BOOST_TEST((o.comb_acc == o2.comb_acc));
  BOOST_TEST((o.dy == o2.dy));
  BOOST_TEST(bitwise_equal(o.dgate, o2.dgate));
  BOOST_TEST((o.dx == o2.dx));
}

}  // namespace

BOOST_AUTO_TEST_CASE(dispatch_combine_fp32) {
  check_dispatch<float>(57, 40, false, 1e-6);
  check_dispatch<float>(9, 300, false, 1e-6);  // C > block size: strided dot products
}
BOOST_AUTO_TEST_CASE(dispatch_combine_bf16) {
  // bf16: one rounding of an fp32 sum, relative 2^-8.
  check_dispatch<__nv_bfloat16>(57, 40, false, 4e-3);
}
BOOST_AUTO_TEST_CASE(dispatch_combine_every_assignment_dropped) { check_dispatch<float>(12, 16, true, 1e-6); }
