// Forward + backward throughput of one MoE layer (MoE<SwiGLU, TopK, Dropless,
// Balancing<AuxLoss, ZLoss>>, renormalised top-k gates, fp32) on its own, and its model FLOP
// utilisation against the SGEMM peak measured in the same run. The PyTorch peer is
// bench/peer_moe_layer.py (same configurations, same shapes); bench/run_moe_layer_bench.sh
// runs both and prints the comparison.
//
// Usage: bench_moe_layer [--threads N] [--tokens N] [--steps S] [--warmup W]
//                        [--configs a,b,...] [--profile] [--dump PREFIX]
//   configs (d_model 512 throughout; k * d_expert = 2048 for the e* series):
//     top2      8 experts,   top-2,  d_expert 1024                  (= e8)
//     fine64    64 experts,  top-8,  d_expert 128, 2 shared experts of width 128
//     e16/e32/e64/e128: E experts, top-E/4, d_expert 8192/E          (constant active parameters)
//   --profile adds, per configuration and thread count, a split of the step into the router
//   product, route (scores, top-k, gates), plan, dispatch, expert products, shared experts,
//   combine, and in backward the combine's backward and the dx gather, by re-running those
//   pieces (the private ones re-implemented here as the layer has them) on the saved state of
//   the layer; "other" is what remains (balancing terms, the router's softmax backward). It
//   also times the experts' x W1^T, x W3^T products one expert after another (as the layer
//   runs them) against one grouped GEMM over all experts.
//   --dump PREFIX runs one forward + backward per configuration instead of timing and writes
//   PREFIX<config>.safetensors (weights by registry name, x, dout, out, dx, loss, and every
//   gradient as grad.<name>); `peer_moe_layer.py --check PREFIX` loads the same weights and
//   compares, so the peer is checked to compute the same function.
// One JSON line per configuration and thread count.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tmoe/io/safetensors.hpp"
#include "tmoe/tmoe.hpp"
#include "gemm_peak.hpp"

using namespace tmoe;
using Clock = std::chrono::steady_clock;

namespace {

using Layer = MoE<SwiGLU, TopK, Dropless, Balancing<AuxLoss, ZLoss>>;
using Impl = Layer::impl<float, backend::Cpu>;
using B = backend::Cpu;

struct Setup {
  std::string name;
  std::int64_t experts, k, d_expert, shared, d_shared;
};

const std::vector<Setup>& all_setups() {
  static const std::vector<Setup> s{
      {"top2", 8, 2, 1024, 0, 0},    {"fine64", 64, 8, 128, 2, 128}, {"e16", 16, 4, 512, 0, 0},
      {"e32", 32, 8, 256, 0, 0},     {"e64", 64, 16, 128, 0, 0},     {"e128", 128, 32, 64, 0, 0},
  };
  return s;
}

double secs(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> thread_settings{1, 2};
  std::int64_t n = 4096, steps = 5, warmup = 2;
  bool profile = false;
  std::string dump;
  std::vector<std::string> wanted;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) thread_settings = {std::atoi(argv[++i])};
    else if (!std::strcmp(argv[i], "--tokens") && i + 1 < argc) n = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) steps = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--warmup") && i + 1 < argc) warmup = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--profile")) profile = true;
    else if (!std::strcmp(argv[i], "--dump") && i + 1 < argc) dump = argv[++i];
    else if (!std::strcmp(argv[i], "--configs") && i + 1 < argc) {
      std::stringstream ss(argv[++i]);
      for (std::string item; std::getline(ss, item, ',');) wanted.push_back(item);
    } else {
      std::fprintf(stderr, "usage: bench_moe_layer [--threads N] [--tokens N] [--steps S] [--warmup W] "
                           "[--configs top2,fine64,e16,e32,e64,e128] [--profile] [--dump PREFIX]\n");
      return 2;
    }
  }
  std::vector<Setup> setups;
  for (const auto& s : all_setups())
    if (wanted.empty() || std::find(wanted.begin(), wanted.end(), s.name) != wanted.end()) setups.push_back(s);
  if (setups.empty()) {
    std::fprintf(stderr, "bench_moe_layer: no known configuration in --configs\n");
    return 2;
  }
  try {
    const std::int64_t c = 512;
    std::printf("# tmoe bench_moe_layer: d_model %lld, %lld tokens per step, median of %lld steps after %lld warm-up\n",
                (long long)c, (long long)n, (long long)steps, (long long)warmup);
    for (const auto& s : setups) {
      ModelConfig cfg;
      cfg.d_model = c;
      cfg.n_heads = 8;
      cfg.n_layers = 1;
      cfg.n_experts = s.experts;
      cfg.top_k = s.k;
      cfg.d_expert = s.d_expert;
      cfg.n_shared_experts = s.shared;
      cfg.d_shared_expert = s.d_shared;
      cfg.router_renormalize = true;
      cfg.aux_loss_weight = 1e-2;
      cfg.z_loss_weight = 1e-3;
      cfg.validate();
      ParamRegistry reg;
      Impl moe;
      moe.declare(reg, "moe", cfg);
      Tensor<float> params(Shape{reg.total()}), grads(Shape{reg.total()});
      std::fill(params.data(), params.data() + reg.total(), 0.0f);
      for (int i = 0; i < reg.size(); ++i) {  // as DecoderLM::init
        const ParamInfo& pi = reg[i];
        const RngKey key{1, 0, site_id(Site::kInit), static_cast<std::uint32_t>(i)};
        for (std::int64_t j = 0; j < pi.numel(); ++j)
          params.data()[pi.offset + j] = static_cast<float>(pi.init_std * key.normal(static_cast<std::uint64_t>(j)));
      }
      moe.bind(reg, params.data(), grads.data());
      Tensor<float> x(Shape{n, c}), out(Shape{n, c}), dout(Shape{n, c}), dx(Shape{n, c});
      {
        const RngKey kx{2, 0, site_id(Site::kTest), 0}, kd{3, 0, site_id(Site::kTest), 0};
        for (std::int64_t i = 0; i < n * c; ++i) {
          x.data()[i] = static_cast<float>(kx.normal(static_cast<std::uint64_t>(i)));
          dout.data()[i] = static_cast<float>(kd.normal(static_cast<std::uint64_t>(i)) / static_cast<double>(n));
        }
      }
      RouteContext ctx;
      ctx.batch = n >= 512 && n % 512 == 0 ? n / 512 : 1;
      ctx.seq_len = n / ctx.batch;
      ctx.training = true;
      const std::int64_t active = moe.active_weights();
      if (!dump.empty()) {
        std::fill(grads.data(), grads.data() + reg.total(), 0.0f);
        moe.forward(x.data(), out.data(), n, ctx);
        moe.backward(dout.data(), dx.data(), false, 1.0);
        const float loss = static_cast<float>(moe.loss());
        std::vector<io::TensorRef> ts{{"x", "F32", {n, c}, x.data()},
                                      {"dout", "F32", {n, c}, dout.data()},
                                      {"out", "F32", {n, c}, out.data()},
                                      {"dx", "F32", {n, c}, dx.data()},
                                      {"loss", "F32", {1}, &loss}};
        for (const auto& pi : reg.params()) {
          std::vector<std::int64_t> shape(pi.shape.dims.begin(), pi.shape.dims.begin() + pi.shape.rank);
          ts.push_back({pi.name, "F32", shape, params.data() + pi.offset});
          ts.push_back({"grad." + pi.name, "F32", shape, grads.data() + pi.offset});
        }
        io::write_safetensors(dump + s.name + ".safetensors", ts);
        std::printf("# wrote %s%s.safetensors (%lld tokens)\n", dump.c_str(), s.name.c_str(), (long long)n);
        continue;
      }
      for (std::size_t ti = 0; ti < thread_settings.size(); ++ti) {
        const int th = thread_settings[ti];
        set_threads(th);
        // The peak is measured next to each run: the VM's speed (the second core above all)
        // drifts within minutes.
        const double peak = bench::sgemm_peak(th);
        auto zero_grads = [&] { std::fill(grads.data(), grads.data() + reg.total(), 0.0f); };
        std::vector<double> tf, tb;
        for (std::int64_t it = 0; it < warmup + steps; ++it) {
          zero_grads();
          const auto t0 = Clock::now();
          moe.forward(x.data(), out.data(), n, ctx);
          const double f = secs(t0);
          const auto t1 = Clock::now();
          moe.backward(dout.data(), dx.data(), false, 1.0);
          const double b = secs(t1);
          if (it >= warmup) tf.push_back(f), tb.push_back(b);
        }
        std::vector<double> tot(tf.size());
        for (std::size_t i = 0; i < tf.size(); ++i) tot[i] = tf[i] + tb[i];
        const double step = median(tot), tok_s = static_cast<double>(n) / step;
        const double flops = 6.0 * static_cast<double>(active);
        std::printf("{\"impl\": \"tmoe\", \"config\": \"%s\", \"experts\": %lld, \"top_k\": %lld, \"d_expert\": %lld, "
                    "\"shared\": %lld, \"d_shared\": %lld, \"threads\": %d, \"tokens\": %lld, \"active_weights\": %lld, "
                    "\"tokens_per_s\": %.1f, \"step_ms\": %.2f, \"fwd_ms\": %.2f, \"bwd_ms\": %.2f, "
                    "\"achieved_gflops\": %.2f, \"sgemm_peak_gflops\": %.2f, \"mfu\": %.4f, \"loss\": %.6f}\n",
                    s.name.c_str(), (long long)s.experts, (long long)s.k, (long long)s.d_expert, (long long)s.shared,
                    (long long)s.d_shared, th, (long long)n, (long long)active, tok_s, 1e3 * step, 1e3 * median(tf),
                    1e3 * median(tb), tok_s * flops / 1e9, peak, tok_s * flops / 1e9 / peak, moe.loss());
        std::fflush(stdout);
        if (!profile) continue;
        // Split of the step: re-run the products of the layer on its saved state (the plan,
        // the dispatched rows and dye of the last step), median of `steps` repetitions each.
        auto timed = [&](auto&& fn) {
          std::vector<double> t;
          for (std::int64_t r = 0; r < steps; ++r) {
            const auto t0 = Clock::now();
            fn();
            t.push_back(secs(t0));
          }
          return 1e3 * median(t);
        };
        const std::int64_t e = s.experts;
        Tensor<float> raw(Shape{n, e}), sh(Shape{n, c}), tmpdx(Shape{n, c});
        const double router_f = timed([&] { moe.router.forward(x.data(), raw.data(), n); });
        const double router_b = timed([&] { moe.router.backward(x.data(), raw.data(), tmpdx.data(), n, true); });
        const double experts_f = timed([&] {
          for (std::int64_t q = 0; q < e; ++q)
            moe.experts[q].forward(moe.xe.data() + moe.plan.offsets[q] * c, moe.ye.data() + moe.plan.offsets[q] * c,
                                   moe.plan.counts[q]);
        });
        const double experts_b = timed([&] {
          for (std::int64_t q = 0; q < e; ++q)
            moe.experts[q].backward(moe.dye.data() + moe.plan.offsets[q] * c, moe.dxe.data() + moe.plan.offsets[q] * c,
                                    false);
        });
        double shared_f = 0, shared_b = 0;
        if (moe.has_shared) {
          shared_f = timed([&] { moe.shared.forward(x.data(), sh.data(), n); });
          shared_b = timed([&] { moe.shared.backward(dout.data(), tmpdx.data(), false); });
        }
        // dispatch alone: the row gather of forward, as the layer does it
        const std::int64_t nr = moe.plan.rows();
        const double dispatch = timed([&] {
          const std::int32_t* rt = moe.plan.row_token.data();
          float* dst = moe.xe.data();
          const float* in = x.data();
          B::for_rows(nr, [=](std::int64_t r) {
            const float* src = in + static_cast<std::int64_t>(rt[r]) * c;
            for (std::int64_t j = 0; j < c; ++j) dst[r * c + j] = src[j];
          });
        });
        // route after the router product: scores, top-k and gates per token, as the layer does
        const std::int64_t kk = s.k;
        Tensor<float> lg(Shape{n, e}), pr(Shape{n, e}), sl(Shape{n, e}), gts(Shape{n * kk});
        std::vector<std::int32_t> ex(static_cast<std::size_t>(n * kk)), tk(static_cast<std::size_t>(n * kk));
        const double route = timed([&] {
          const RouterParams rp = moe.rp;
          float *plg = lg.data(), *ppr = pr.data(), *psl = sl.data(), *pg = gts.data();
          const float* rw = raw.data();
          std::int32_t *pex = ex.data(), *ptk = tk.data();
          B::for_rows(n, [=](std::int64_t t) {
            for (std::int64_t i = 0; i < e; ++i) plg[t * e + i] = static_cast<float>(static_cast<double>(rw[t * e + i]));
            TopK::scores_token(rp, plg + t * e, static_cast<const float*>(nullptr), ppr + t * e, psl + t * e);
            select_topk(psl + t * e, e, kk, pex + t * kk);
            TopK::gates_token(rp, plg + t * e, ppr + t * e, pex + t * kk, pg + t * kk);
            for (std::int64_t j = 0; j < kk; ++j) ptk[t * kk + j] = static_cast<std::int32_t>(t);
          });
        });
        RoutingPlan plan2;
        std::vector<std::uint8_t> kept(static_cast<std::size_t>(n * kk), 1);
        const double plan_t = timed([&] { plan2.build(ex.data(), tk.data(), kept.data(), n * kk, n, e); });
        // combine (forward) and its backward: dye = g dout with the gate's dot, and the dx gather
        const double combine = timed([&] {
          const std::int32_t *to = moe.plan.tok_offsets.data(), *ta = moe.plan.tok_assign.data(),
                             *ps = moe.plan.pos.data();
          const float *y = moe.ye.data(), *gt = moe.rgates.data();
          float* o0 = sh.data();
          B::for_rows(n, [=](std::int64_t t) {
            float* o = o0 + t * c;
            for (std::int64_t j = 0; j < c; ++j) o[j] = 0.0f;
            for (std::int32_t q = to[t]; q < to[t + 1]; ++q) {
              const float g = gt[ta[q]];
              const float* src = y + static_cast<std::int64_t>(ps[ta[q]]) * c;
              for (std::int64_t j = 0; j < c; ++j) o[j] += g * src[j];
            }
          });
        });
        const double combine_b = timed([&] {
          const std::int32_t *rt = moe.plan.row_token.data(), *ra = moe.plan.row_assign.data();
          const float *y = moe.ye.data(), *gt = moe.rgates.data(), *go0 = dout.data();
          float *dy = moe.dye.data(), *dg = moe.dgate.data();
          B::for_rows(nr, [=](std::int64_t r) {
            const float* go = go0 + static_cast<std::int64_t>(rt[r]) * c;
            const float g = gt[ra[r]];
            double dot = 0;
            for (std::int64_t j = 0; j < c; ++j) {
              dy[r * c + j] = g * go[j];
              dot += static_cast<double>(go[j]) * static_cast<double>(y[r * c + j]);
            }
            dg[ra[r]] = static_cast<float>(dot);
          });
        });
        // The same with the double dot product in 8 fixed lanes (summed in a fixed order at the
        // end, so still independent of threads): a candidate for the layer, timed here only.
        const double combine_b_lanes = timed([&] {
          const std::int32_t *rt = moe.plan.row_token.data(), *ra = moe.plan.row_assign.data();
          const float *y = moe.ye.data(), *gt = moe.rgates.data(), *go0 = dout.data();
          float *dy = moe.dye.data(), *dg = moe.dgate.data();
          B::for_rows(nr, [=](std::int64_t r) {
            const float* go = go0 + static_cast<std::int64_t>(rt[r]) * c;
            const float* yr = y + r * c;
            float* d = dy + r * c;
            const float g = gt[ra[r]];
            double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (std::int64_t j = 0; j < c; j += 8)  // c = 512, a multiple of 8
              for (int l = 0; l < 8; ++l) {
                d[j + l] = g * go[j + l];
                acc[l] += static_cast<double>(go[j + l]) * static_cast<double>(yr[j + l]);
              }
            dg[ra[r]] = static_cast<float>(((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])));
          });
        });
        const double gather_b = timed([&] {
          const std::int32_t *to = moe.plan.tok_offsets.data(), *ta = moe.plan.tok_assign.data(),
                             *ps = moe.plan.pos.data();
          const float* dxr = moe.dxe.data();
          float* d0 = tmpdx.data();
          B::for_rows(n, [=](std::int64_t t) {
            float* d = d0 + t * c;
            for (std::int64_t j = 0; j < c; ++j) d[j] = 0.0f;
            for (std::int32_t q = to[t]; q < to[t + 1]; ++q) {
              const float* src = dxr + static_cast<std::int64_t>(ps[ta[q]]) * c;
              for (std::int64_t j = 0; j < c; ++j) d[j] += src[j];
            }
          });
        });
        // The experts' first products (x W1^T and x W3^T of every expert) one expert after
        // another, as the layer runs them, against one grouped GEMM over all experts
        // (backend::Cpu::gemm_grouped: one parallel loop over every expert's row tiles).
        const double w13_seq = timed([&] {
          for (std::int64_t q = 0; q < e; ++q) {
            auto& xq = moe.experts[q];
            const float* xin = moe.xe.data() + moe.plan.offsets[q] * c;
            xq.w1.forward(xin, xq.a1.data(), moe.plan.counts[q]);
            xq.w3.forward(xin, xq.a3.data(), moe.plan.counts[q]);
          }
        });
        std::vector<backend::cpu::GemmArgs<float>> grp;
        for (std::int64_t q = 0; q < e; ++q) {
          auto& xq = moe.experts[q];
          for (auto* lin : {&xq.w1, &xq.w3}) {
            backend::cpu::GemmArgs<float> g;
            g.ta = B::Trans::kNo, g.tb = B::Trans::kYes, g.m = moe.plan.counts[q], g.n = lin->out, g.k = c;
            g.a = moe.xe.data() + moe.plan.offsets[q] * c, g.lda = c, g.b = lin->weight.w, g.ldb = c;
            g.beta = 0, g.c = (lin == &xq.w1 ? xq.a1 : xq.a3).data(), g.ldc = lin->out;
            grp.push_back(g);
          }
        }
        const double w13_grouped = timed([&] { B::gemm_grouped<float>(grp); });
        const double fwd = 1e3 * median(tf), bwd = 1e3 * median(tb);
        std::printf("{\"profile\": \"tmoe\", \"config\": \"%s\", \"threads\": %d, \"fwd_ms\": %.2f, \"bwd_ms\": %.2f, "
                    "\"router_gemm_f\": %.2f, \"router_gemm_b\": %.2f, \"experts_f\": %.2f, \"experts_b\": %.2f, "
                    "\"shared_f\": %.2f, \"shared_b\": %.2f, \"route_f\": %.2f, \"plan_f\": %.2f, \"dispatch_f\": %.2f, "
                    "\"combine_f\": %.2f, \"combine_b\": %.2f, \"combine_b_8lanes\": %.2f, \"gather_dx_b\": %.2f, \"other_f\": %.2f, "
                    "\"other_b\": %.2f, \"w1w3_per_expert\": %.2f, \"w1w3_grouped\": %.2f, \"dispatched_rows\": %lld}\n",
                    s.name.c_str(), th, fwd, bwd, router_f, router_b, experts_f, experts_b, shared_f, shared_b, route,
                    plan_t, dispatch, combine, combine_b, combine_b_lanes, gather_b,
                    fwd - router_f - experts_f - shared_f - route - plan_t - dispatch - combine,
                    bwd - router_b - experts_b - shared_b - combine_b - gather_b, w13_seq, w13_grouped,
                    (long long)nr);
        std::fflush(stdout);
      }
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
}
