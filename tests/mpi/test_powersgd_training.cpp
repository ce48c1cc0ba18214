// PowerSGD inside data-parallel training: on a learnable toy language, rank-2 compression
// with error feedback reaches a final loss within a stated margin of uncompressed training,
// while sending several times fewer bytes per step.
#define BOOST_TEST_MODULE powersgd_training
#include "mpi_fixture.hpp"

#include <cmath>

#include "../support/tiny.hpp"

using namespace tmoe;
using MpiFixture = tmoe::test::MpiFixture;
BOOST_TEST_GLOBAL_FIXTURE(MpiFixture);

namespace {
using Dp = DataParallel<comm::Mpi>;

struct Result {
  double first = 0, last = 0;  // CE of step 0; mean CE of the last 5 steps
  std::int64_t bytes = 0, bytes_uncompressed = 0;
};

Result train(std::int64_t powersgd_rank) {
  Config c = test::tiny_train_config();
  c.model.vocab_size = 16;
  c.train.batch_size = 4;
  c.train.steps = 120;
  c.train.grad_accum = test::world_size();
  c.parallel.powersgd_rank = powersgd_rank;
  Trainer<test::MoeModel, AdamW, Fp32, Dp, backend::Cpu> tr(c, Dp(comm::Mpi(), c));
  const BatchFn batches = test::learnable_batches(c.train.batch_size, c.train.seq_len);
  Result res;
  for (std::int64_t s = 0; s < c.train.steps; ++s) {
    const StepStats st = tr.train_step(batches);
    if (s == 0) res.first = st.ce;
    if (s >= c.train.steps - 5) res.last += st.ce / 5;
    res.bytes += st.comm.bytes_sent;
    res.bytes_uncompressed += st.comm.bytes_uncompressed;
  }
  return res;
}
}  // namespace

BOOST_AUTO_TEST_CASE(rank2_converges_near_uncompressed) {
  const Result exact = train(0), compressed = train(2);
  BOOST_TEST_MESSAGE("uncompressed: CE " << exact.first << " -> " << exact.last << ", " << exact.bytes / 120 << " B/step; "
                     << "PowerSGD r=2: CE " << compressed.first << " -> " << compressed.last << ", " << compressed.bytes / 120
                     << " B/step (uncompressed would be " << compressed.bytes_uncompressed / 120 << ")");
  BOOST_TEST(exact.last < 0.2 * exact.first);  // the task is learnable
  // The margin: after 120 steps compressed training ends within 0.05 nats of uncompressed
  // (measured on 2 and 4 ranks: 0.007 vs 0.001; after 60 steps it still lags, 0.26 vs 0.014).
  BOOST_TEST(compressed.last < exact.last + 0.05);
  BOOST_TEST(compressed.bytes * 3 < compressed.bytes_uncompressed);
  BOOST_TEST(exact.bytes > compressed.bytes * 3);  // what uncompressed training really sent
}
