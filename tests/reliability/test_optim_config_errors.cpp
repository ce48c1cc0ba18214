#define BOOST_TEST_MODULE optim_config_errors
#include <boost/test/unit_test.hpp>

#include "../support/expect_error.hpp"
#include "../support/tiny.hpp"

// Bad optimizer, schedule, regularisation and precision settings end in a tmoe::Error that
// names the field and what it expects, before anything is built.
using namespace tmoe;
using tmoe::test::expect_error;

namespace {
template <class F>
void bad(F&& edit, std::vector<std::string> fragments) {
  Config c = test::tiny_train_config();
  edit(c);
  expect_error([&] { c.validate(); }, fragments);
}
}  // namespace

BOOST_AUTO_TEST_CASE(bad_optimizer_settings) {
  bad([](Config& c) { c.train.lr = -1e-3; }, {"train.lr", "-0.001", "positive"});
  bad([](Config& c) { c.train.beta1 = 1.0; }, {"train.beta1", "[0, 1)"});
  bad([](Config& c) { c.train.beta2 = -0.1; }, {"train.beta2", "[0, 1)"});
  bad([](Config& c) { c.train.lion_beta2 = 1.5; }, {"train.lion_beta2", "[0, 1)"});
  bad([](Config& c) { c.train.momentum = 1.0; }, {"train.momentum", "[0, 1)"});
  bad([](Config& c) { c.train.nesterov = true; }, {"train.nesterov", "momentum > 0"});
  bad([](Config& c) { c.train.optimizer = "adam"; }, {"train.optimizer", "'adam'", "sign_momentum"});
  bad([](Config& c) { c.train.adam_eps = 0; }, {"train.adam_eps"});
  bad([](Config& c) { c.train.sign_threshold = 1; }, {"train.sign_threshold"});
}

BOOST_AUTO_TEST_CASE(bad_schedule_settings) {
  bad([](Config& c) { c.train.schedule = "exponential"; }, {"train.schedule", "'exponential'", "wsd"});
  bad([](Config& c) { c.train.warmup_steps = 10; c.train.steps = 4; }, {"train.warmup_steps", "longer than the run", "<= train.steps = 4"});
  bad([](Config& c) { c.train.warmup_fraction = 1.5; }, {"train.warmup_fraction"});
  bad([](Config& c) { c.train.schedule = "wsd"; c.train.steps = 100; c.train.warmup_fraction = 0.5; c.train.decay_fraction = 0.6; },
      {"train.decay_fraction", "longer than the run"});
  bad([](Config& c) { c.train.batch_ramp_steps = 5; c.train.batch_ramp_start = 3; c.train.grad_accum = 2; },
      {"train.batch_ramp_start", "grad_accum = 2"});
}

BOOST_AUTO_TEST_CASE(bad_regularisation_settings) {
  bad([](Config& c) { c.train.clamp_weights = true; c.train.clamp_min = 0.5; c.train.clamp_max = -0.5; },
      {"train.clamp_min/clamp_max", "min 0.5 > max -0.5"});
  bad([](Config& c) { c.train.expert_group = true; c.train.expert_clamp_weights = true; c.train.expert_clamp_min = 1; c.train.expert_clamp_max = 0; },
      {"train.expert_clamp_min/expert_clamp_max"});
  bad([](Config& c) { c.train.l2 = -1; }, {"train.l2", ">= 0"});
  bad([](Config& c) { c.train.weight_decay = -0.1; }, {"train.weight_decay"});
  bad([](Config& c) { c.model.dropout = 1.0; }, {"model.dropout", "[0, 1)"});
  bad([](Config& c) { c.model.attn_dropout = -0.1; }, {"model.attn_dropout"});
  bad([](Config& c) { c.model.expert_dropout = "0.1,0.2,0.3"; }, {"model.expert_dropout", "3 rates"});
  bad([](Config& c) { c.model.expert_dropout = "0.1,x"; }, {"model.expert_dropout", "'x'"});
  bad([](Config& c) { c.model.recompute = "some"; }, {"model.recompute", "'some'", "selective"});
}

BOOST_AUTO_TEST_CASE(bad_loss_scaling_settings) {
  bad([](Config& c) { c.train.loss_scaling = "auto"; }, {"train.loss_scaling", "dynamic or static"});
  bad([](Config& c) { c.train.loss_scale = 0; }, {"train.loss_scale"});
  bad([](Config& c) { c.train.loss_scale_backoff = 1; }, {"train.loss_scale_backoff", "(0, 1)"});
  bad([](Config& c) { c.train.loss_scale_growth = 0.5; }, {"train.loss_scale_growth"});
  bad([](Config& c) { c.train.loss_scale_interval = 0; }, {"train.loss_scale_interval"});
}

// A per-group rate list is spread over the experts.
BOOST_AUTO_TEST_CASE(expert_dropout_rates_per_group) {
  ModelConfig m = test::tiny_model();  // 4 experts
  m.n_groups = 2;
  m.expert_dropout = "0.1,0.3";
  const auto r = m.expert_dropout_rates();
  BOOST_TEST(r == (std::vector<double>{0.1, 0.1, 0.3, 0.3}), boost::test_tools::per_element());
  m.expert_dropout = "0.2";
  BOOST_TEST(m.expert_dropout_rates() == (std::vector<double>(4, 0.2)), boost::test_tools::per_element());
}
