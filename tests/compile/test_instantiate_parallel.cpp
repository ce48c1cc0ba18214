// The distributed strategy without MPI: DataParallel over comm::Serial (a group of one) is
// instantiated in fp32 and fp64 and trains exactly as the Serial strategy does, so the
// strategy code is compiled and checked on any machine.
#define BOOST_TEST_MODULE instantiate_parallel
#include <boost/test/unit_test.hpp>
#include <cstring>

#include "../support/tiny.hpp"

using namespace tmoe;

template class tmoe::DataParallel<comm::Serial>;
template class tmoe::Trainer<test::MoeModel, AdamW, Fp32, DataParallel<comm::Serial>, backend::Cpu>;
template class tmoe::Trainer<test::MoeModel, AdamW, Fp64, DataParallel<comm::Serial>, backend::Cpu>;
static_assert(ParallelStrategy<DataParallel<comm::Serial>>);
static_assert(comm::Comm<comm::Serial>);

BOOST_AUTO_TEST_CASE(serial_comm_strategy_trains_like_serial) {
  Config c = test::tiny_train_config();
  c.train.grad_accum = 2;
  c.parallel.zero = true;  // a group of one: nothing to shard, but the path runs
  Trainer<test::MoeModel, AdamW, Fp32, Serial, backend::Cpu> a(c);
  Trainer<test::MoeModel, AdamW, Fp32, DataParallel<comm::Serial>, backend::Cpu> b(c, DataParallel<comm::Serial>({}, c));
  const BatchFn batches = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
  for (int s = 0; s < 3; ++s) BOOST_TEST(a.train_step(batches).loss == b.train_step(batches).loss);
  const std::int64_t n = a.model().registry().total();
  BOOST_TEST(std::memcmp(a.model().params(), b.model().params(), n * sizeof(float)) == 0);
}

BOOST_AUTO_TEST_CASE(grid_checks_name_the_mismatch) {
  Config c = test::tiny_train_config();
  c.parallel.data = 2;
  try {
    DataParallel<comm::Serial> d({}, c);
    BOOST_FAIL("a grid of 2 ranks was accepted in a world of 1");
  } catch (const Error& e) {
    BOOST_TEST(std::string(e.what()).find("the grid data 2 x expert 1 x tensor 1 x pipeline 1 = 2 ranks, but the job has 1") !=
               std::string::npos, e.what());
  }
  c.parallel.data = 0;
  c.parallel.tensor = 1;
  c.model.n_experts = 3;
  c.parallel.expert = 2;
  try {
    (void)ProcessGrid::make(c.parallel, c.model, 2, 0);
    BOOST_FAIL("3 experts over 2 ranks were accepted");
  } catch (const Error& e) {
    BOOST_TEST(std::string(e.what()).find("model.n_experts = 3 is not divisible by parallel.expert = 2") != std::string::npos);
  }
  c.parallel.expert = 1;
  c.parallel.pipeline = 3;
  try {
    (void)ProcessGrid::make(c.parallel, c.model, 3, 0);
    BOOST_FAIL("2 layers over 3 stages were accepted");
  } catch (const Error& e) {
    BOOST_TEST(std::string(e.what()).find("model.n_layers = 2 is not divisible by parallel.pipeline = 3") != std::string::npos);
  }
}
