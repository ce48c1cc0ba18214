#define BOOST_TEST_MODULE trainer_device_path
// The trainer's path for a model in device memory (Trainer::kHostModel false: host copies of
// the weights and gradients, the step's host part on them, the model's ids and initial
// weights copied over; DecoderLM's and the MoE layer's device branches) run on the CPU:
// CpuApart is backend::Cpu with a memory space that is not HostSpace, so every copy the GPU
// makes is made (as a host copy). Losses, gradient norms, the weights after training, a
// checkpoint's state and a generated continuation must be bitwise those of backend::Cpu, for
// a dense and an MoE model, Fp32, MixedBf16 and MixedFp16 (loss scaling, with a skipped step),
// gradient accumulation, dropout and a router-bias update. (What it cannot see: device code
// reading host memory, which host memory forgives.)
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "tmoe/tmoe.hpp"

using namespace tmoe;

namespace {

struct ApartSpace {};
struct CpuApart : backend::Cpu {
  using Space = ApartSpace;
};

using DenseLm = DecoderLM<TransformerBlock<CausalAttention<Rope>, Dense<SwiGLU>>, RmsNorm>;
using MoeLm = DecoderLM<TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, GroupLimited<SigmoidBias>, Dropless,
                                                                    Balancing<AuxLoss, ZLoss, BiasUpdate>>>,
                        RmsNorm>;

Config config() {
  Config c;
  auto& m = c.model;
  m.vocab_size = 48, m.context = 16, m.d_model = 16, m.n_layers = 2, m.n_heads = 2, m.d_ff = 24;
  m.n_experts = 4, m.top_k = 2, m.d_expert = 12, m.n_groups = 2, m.top_groups = 1, m.n_shared_experts = 1;
  m.dropout = 0.1, m.bias_update_rate = 0.05;
  auto& t = c.train;
  t.seed = 7, t.steps = 4, t.batch_size = 2, t.seq_len = 12, t.grad_accum = 2, t.lr = 3e-3, t.warmup_steps = 1;
  return c;
}

void batch(std::int64_t i, std::int32_t* in, std::int32_t* tg) {
  std::uint32_t x = 977u * static_cast<std::uint32_t>(i + 1);
  for (int j = 0; j < 24; ++j) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    in[j] = static_cast<std::int32_t>(x % 48);
    tg[j] = static_cast<std::int32_t>((x >> 8) % 48);
  }
}

struct Outcome {
  std::vector<double> stats;  // loss, grad norm, skipped of each step
  std::vector<double> state;  // every restartable tensor after training
  std::vector<std::int32_t> sample;
};

template <class Model, class P, class B>
Outcome train(bool inject_overflow) {
  Trainer<Model, AdamW, P, Serial, B> tr(config());
  if (inject_overflow)  // step 2's gradients overflow: the loss scaler skips it
    tr.set_gradient_hook([&tr](float* g, std::int64_t) {
      if (tr.step() == 1) g[0] = INFINITY;
    });
  Outcome o;
  for (int s = 0; s < 4; ++s) {
    const auto st = tr.train_step(batch);
    o.stats.insert(o.stats.end(), {st.loss, st.grad_norm, st.skipped ? 1.0 : 0.0});
  }
  for (const auto& v : tr.restartable_state()) o.state.insert(o.state.end(), v.data, v.data + v.size);
  o.sample = tr.generate({1, 2, 3}, 5, 0.8, 11);
  return o;
}

template <class Model, class P>
void same(bool inject_overflow = false) {
  const Outcome host = train<Model, P, backend::Cpu>(inject_overflow);
  const Outcome apart = train<Model, P, CpuApart>(inject_overflow);
  BOOST_TEST(host.stats == apart.stats, boost::test_tools::per_element());
  BOOST_TEST(host.state == apart.state);
  BOOST_TEST(host.sample == apart.sample, boost::test_tools::per_element());
  BOOST_TEST(std::isfinite(host.stats[0]));
  if (inject_overflow) BOOST_TEST(host.stats[5] == 1.0);  // the second step was skipped
}

}  // namespace

BOOST_AUTO_TEST_CASE(dense_fp32) { same<DenseLm, Fp32>(); }
BOOST_AUTO_TEST_CASE(dense_bf16) { same<DenseLm, MixedBf16>(); }
BOOST_AUTO_TEST_CASE(moe_fp32_bias_update) { same<MoeLm, Fp32>(); }
BOOST_AUTO_TEST_CASE(moe_fp16_loss_scaling_with_a_skipped_step) { same<MoeLm, MixedFp16>(true); }
