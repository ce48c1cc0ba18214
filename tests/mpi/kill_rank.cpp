// A rank killed mid-run (SIGKILL, no goodbye): the job must end non-zero within a bounded
// time, never hang. Run by tests/mpi/CMakeLists.txt under expect_failure.sh.
//   kill_rank            the last rank kills itself inside step 2's gradient reduction
#include <csignal>
#include <cstdio>

#include "../support/tiny.hpp"
#include "tmoe/parallel/comm/mpi.hpp"

using namespace tmoe;

int main(int argc, char** argv) {
  return comm::mpi_main(argc, argv, [] {
    Config c = test::tiny_train_config();
    comm::Mpi world;
    c.train.grad_accum = world.size();
    c.train.steps = 1000;
    using Dp = DataParallel<comm::Mpi>;
    Trainer<test::MoeModel, AdamW, Fp32, Dp, backend::Cpu> tr(c, Dp(world, c));
    // Inside backward of step 2, after the first buckets have started (the peers are in
    // collectives when it dies).
    tr.set_gradient_hook([&](float*, std::int64_t) {});
    const BatchFn batches = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
    for (std::int64_t s = 0; s < c.train.steps; ++s) {
      if (s == 2 && world.rank() == world.size() - 1) {
        std::fprintf(stderr, "rank %d: killing myself at step %lld\n", world.rank(), static_cast<long long>(s));
        std::fflush(stderr);
        std::raise(SIGKILL);
      }
      tr.train_step(batches);
      if (world.rank() == 0) std::printf("step %lld done\n", static_cast<long long>(s));
    }
    return 0;  // not reached on a healthy MPI runtime: the job is torn down
  });
}
