#define BOOST_TEST_MODULE schedules_groups
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstring>

#include "../support/tiny.hpp"

using namespace tmoe;

namespace {
TrainConfig sched(const char* kind, std::int64_t steps, double warm_frac) {
  TrainConfig t;
  t.schedule = kind;
  t.steps = steps;
  t.warmup_fraction = warm_frac;
  t.lr = 1.0;
  t.min_lr_ratio = 0.1;
  return t;
}
}  // namespace

BOOST_AUTO_TEST_CASE(schedules_follow_their_formulas) {
  const double pi = 3.141592653589793;
  {
    const LrSchedule s(sched("constant", 100, 0.05));
    BOOST_TEST(s(0) == 1.0 / 5);
    BOOST_TEST(s(4) == 1.0);
    BOOST_TEST(s(99) == 1.0);
  }
  {
    const LrSchedule s(sched("cosine", 100, 0.05));
    BOOST_TEST(s(2) == 3.0 / 5);
    BOOST_TEST(s(5) == 1.0);
    BOOST_TEST(std::abs(s(99) - 0.1) < 1e-15);
    const double p = 47.0 / 94.0;
    BOOST_TEST(std::abs(s(52) - (0.1 + 0.45 * (1 + std::cos(pi * p)))) < 1e-15);
  }
  {
    const LrSchedule s(sched("linear", 100, 0.05));
    BOOST_TEST(s(5) == 1.0);
    BOOST_TEST(std::abs(s(99) - 0.1) < 1e-15);
    BOOST_TEST(std::abs(s(52) - (1.0 - 0.9 * 47.0 / 94.0)) < 1e-15);
    for (std::int64_t i = 6; i < 100; ++i) BOOST_TEST(s(i) < s(i - 1));
  }
  {
    TrainConfig t = sched("wsd", 100, 0.05);
    t.decay_fraction = 0.2;
    const LrSchedule s(t);
    BOOST_TEST(s(5) == 1.0);
    BOOST_TEST(s(79) == 1.0);                      // stable until the last 20 steps
    BOOST_TEST(std::abs(s(80) - (1.0 - 0.9 / 20)) < 1e-15);
    BOOST_TEST(std::abs(s(99) - 0.1) < 1e-15);
  }
  {
    TrainConfig t = sched("cosine", 100, 0.05);
    t.warmup_steps = 10;  // overrides the fraction
    const LrSchedule s(t);
    BOOST_TEST(s(0) == 0.1);
    BOOST_TEST(s(9) == 1.0);
    t.warmup_steps = 0;
    BOOST_TEST(LrSchedule(t)(0) == 1.0);
  }
}

BOOST_AUTO_TEST_CASE(batch_ramp_counts_micro_batches) {
  TrainConfig t;
  t.grad_accum = 8;
  t.batch_ramp_steps = 10;
  t.batch_ramp_start = 2;
  const BatchRamp r(t);
  BOOST_TEST(r.micro_batches(0) == 2);
  BOOST_TEST(r.micro_batches(5) == 5);
  BOOST_TEST(r.micro_batches(9) == 7);
  BOOST_TEST(r.micro_batches(10) == 8);
  BOOST_TEST(r.micro_batches(1000) == 8);
  std::int64_t sum = 0;
  for (std::int64_t s = 0; s < 30; ++s) {
    BOOST_TEST(r.first_micro(s) == sum);
    sum += r.micro_batches(s);
  }
  t.batch_ramp_steps = 0;
  BOOST_TEST(BatchRamp(t).first_micro(7) == 56);
}

// The trainer asks for exactly the ramp's micro-batches, in one unbroken sequence.
BOOST_AUTO_TEST_CASE(trainer_follows_the_batch_ramp) {
  Config c = test::tiny_train_config();
  c.train.grad_accum = 4;
  c.train.batch_ramp_steps = 3;
  c.train.batch_ramp_start = 1;
  c.train.steps = 5;
  Trainer<test::MoeModel, AdamW, Fp32, Serial, backend::Cpu> tr(c);
  const BatchFn inner = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
  std::vector<std::int64_t> seen;
  const BatchFn batches = [&](std::int64_t i, std::int32_t* in, std::int32_t* tg) {
    seen.push_back(i);
    inner(i, in, tg);
  };
  std::vector<std::int64_t> per_step;
  for (int s = 0; s < 5; ++s) per_step.push_back(tr.train_step(batches).micro_batches);
  BOOST_TEST(per_step == (std::vector<std::int64_t>{1, 2, 3, 4, 4}), boost::test_tools::per_element());
  for (std::size_t i = 0; i < seen.size(); ++i) BOOST_TEST(seen[i] == static_cast<std::int64_t>(i));
}

namespace {
using Sgd1 = Trainer<test::MoeModel, Sgd, Fp32, Serial, backend::Cpu>;
using Any = Trainer<test::MoeModel, StandardOptimizers, Fp32, Serial, backend::Cpu>;

template <class Tr>
std::vector<float> params_after(const Config& c, int steps) {
  Tr tr(c);
  const BatchFn batches = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
  for (int s = 0; s < steps; ++s) tr.train_step(batches);
  return {tr.master_params(), tr.master_params() + tr.model().registry().total()};
}
Config group_config() {
  Config c = test::tiny_train_config();
  c.train.optimizer = "sgd";
  c.train.lr = 0.05;
  c.train.weight_decay = 0;
  c.train.grad_clip = 0;
  return c;
}
}  // namespace

// L2 λ·w in the gradient is SGD's coupled weight decay λ: the same numbers.
BOOST_AUTO_TEST_CASE(l2_equals_sgd_coupled_decay) {
  Config a = group_config(), b = group_config();
  a.train.l2 = 0.3;
  b.train.weight_decay = 0.3;
  const auto pa = params_after<Sgd1>(a, 3), pb = params_after<Sgd1>(b, 3), p0 = params_after<Sgd1>(group_config(), 3);
  BOOST_TEST(std::memcmp(pa.data(), pb.data(), pa.size() * sizeof(float)) == 0);
  BOOST_TEST(std::memcmp(pa.data(), p0.data(), pa.size() * sizeof(float)) != 0);
}

// With expert_group, expert_l2 acts on expert matrices only; the rest is as without it.
BOOST_AUTO_TEST_CASE(expert_group_has_its_own_l2) {
  Config base = group_config(), ex = group_config();
  ex.train.expert_group = true;
  ex.train.expert_l2 = 0.5;
  ex.train.expert_weight_decay = 0;
  Trainer<test::MoeModel, Sgd, Fp32, Serial, backend::Cpu> probe(base);
  const auto pb = params_after<Sgd1>(base, 1), pe = params_after<Sgd1>(ex, 1);
  std::int64_t expert_changed = 0, expert_total = 0;
  for (const ParamInfo& p : probe.model().registry().params()) {
    const bool same = std::memcmp(pb.data() + p.offset, pe.data() + p.offset, static_cast<std::size_t>(p.numel()) * sizeof(float)) == 0;
    if (p.has(kTagExpert)) {
      ++expert_total;
      expert_changed += !same;
    } else {
      BOOST_TEST(same, p.name << " is not an expert parameter but changed");
    }
  }
  BOOST_TEST(expert_total > 0);
  BOOST_TEST(expert_changed == expert_total);
}

// Weight constraints: matrices stay in [min, max] (some sit on the bounds); vectors are free.
BOOST_AUTO_TEST_CASE(clamp_keeps_matrices_in_range) {
  Config c = group_config();
  c.model.init_std = 0.2;
  c.train.optimizer = "adamw";
  c.train.lr = 0.05;
  c.train.clamp_weights = true;
  c.train.clamp_min = -0.1;
  c.train.clamp_max = 0.15;
  Any tr(c);
  const BatchFn batches = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
  for (int s = 0; s < 3; ++s) tr.train_step(batches);
  std::int64_t at_bound = 0, vector_outside = 0;
  for (const ParamInfo& p : tr.model().registry().params())
    for (std::int64_t i = 0; i < p.numel(); ++i) {
      const float w = tr.master_params()[p.offset + i];
      if (p.shape.rank >= 2) {
        BOOST_TEST_REQUIRE((w >= -0.1f && w <= 0.15f), p.name << "[" << i << "] = " << w);
        at_bound += (w == -0.1f || w == 0.15f);
      } else {
        vector_outside += (w < -0.1f || w > 0.15f);
      }
    }
  BOOST_TEST(at_bound > 100);
  BOOST_TEST(vector_outside > 0);  // norm weights start at 1 and are not clamped
  BOOST_TEST(tr.optimizer_name() == "adamw");
}
