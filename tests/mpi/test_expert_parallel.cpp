// Expert parallelism (alone and with data parallelism) over MPI against one process on the
// same global batch: every rank also runs the one-process trainer and compares, parameter by
// parameter under its global name. With the fixed-order reduction and a power-of-two number
// of micro-batches per rank and of expert ranks, losses, gradient norms and weights are
// bitwise equal; checkpoints move between expert-parallel and one-process layouts.
#define BOOST_TEST_MODULE expert_parallel
#include "mpi_fixture.hpp"

#include <cmath>
#include <cstring>
#include <filesystem>

#include "layout_trace.hpp"
#include "tmoe/train/checkpointing.hpp"

using namespace tmoe;
using MpiFixture = tmoe::test::MpiFixture;
BOOST_TEST_GLOBAL_FIXTURE(MpiFixture);

namespace {

using CapModel = DecoderLM<TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, TopK, CapacityFactor>>, RmsNorm>;
using BiasModel = DecoderLM<TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, SigmoidBias, Dropless, Balancing<BiasUpdate>>>, RmsNorm>;
using SeqModel = DecoderLM<TransformerBlock<CausalAttention<Rope>, MoE<TransformerExpert<>, TopK>>, RmsNorm>;

template <class Model, class P, class Par>
using Tr = Trainer<Model, StandardOptimizers, P, Par, backend::Cpu>;
using Dp = DataParallel<comm::Mpi>;

// data x expert = world; pieces_per_rank micro-batches on each of them.
Config grid_config(int data, int expert, std::int64_t pieces_per_rank) {
  Config c = test::layout_config(data, expert, 1, 1, pieces_per_rank);
  c.model.n_experts = 4;
  return c;
}

using Trace = test::LayoutTrace;
Trace run(auto& tr, std::int64_t steps) { return test::run_trace(tr, steps); }
// got holds this rank's share; every tensor of it must equal ref's tensor of that name.
void expect_bitwise(const Trace& ref, const Trace& got) { test::expect_match(ref, got, 0.0); }

template <class Model, class P = Fp32>
void check_bitwise(const Config& c) {
  Tr<Model, P, Serial> one(c);
  const Trace ref = run(one, c.train.steps);
  Tr<Model, P, Dp> many(c, Dp(comm::Mpi(), c));
  BOOST_TEST(many.parameter_count() == one.model().registry().count());  // the whole model's
  const Trace got = run(many, c.train.steps);
  // This rank holds n_experts / expert of each layer's experts, and moved rows.
  const std::int64_t experts_here =
      std::count_if(got.params.begin(), got.params.end(), [](const auto& kv) { return kv.first.find(".experts.") != std::string::npos; });
  const std::int64_t experts_all =
      std::count_if(ref.params.begin(), ref.params.end(), [](const auto& kv) { return kv.first.find(".experts.") != std::string::npos; });
  BOOST_TEST(experts_here * c.parallel.expert == experts_all);
  BOOST_TEST(got.bytes > 0);
  expect_bitwise(ref, got);
  // Evaluation: three batches over the ranks (some ranks run a batch twice: under expert
  // parallelism every forward is a collective), summed in batch order.
  const BatchFn batches = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
  BOOST_TEST(one.evaluate(batches, 3) == many.evaluate(batches, 3));
}

}  // namespace

BOOST_AUTO_TEST_CASE(expert_parallel_alone_bitwise) {
  const int R = test::world_size();
  check_bitwise<test::MoeModel>(grid_config(1, R, 1));
  check_bitwise<test::MoeModel>(grid_config(1, R, 2));
}

BOOST_AUTO_TEST_CASE(data_x_expert_bitwise) {
  const int R = test::world_size();
  if (R < 4) return;  // 2 x 2 needs four ranks (the np 2 run covers 1 x 2)
  check_bitwise<test::MoeModel>(grid_config(2, 2, 1));
  Config c = grid_config(2, 2, 2);
  c.model.dropout = 0.1;
  c.model.expert_dropout = "0.2";
  c.model.expert_drop_rate = 0.1;
  check_bitwise<test::MoeModel>(c);
  check_bitwise<test::MoeModel, MixedBf16>(grid_config(2, 2, 1));
}

BOOST_AUTO_TEST_CASE(capacity_and_bias_update_bitwise) {
  const int R = test::world_size();
  Config c = grid_config(1, R, 1);
  c.model.capacity_factor = 1.0;  // drops rows: capacity is per micro-batch, as in one process
  check_bitwise<CapModel>(c);
  c.model.bias_update_rate = 0.05;
  check_bitwise<BiasModel>(c);
}

BOOST_AUTO_TEST_CASE(checkpoints_between_expert_parallel_and_one_process) {
  const int R = test::world_size();
  const std::string root = test::shared_temp_dir("ep_layouts");
  Config c = grid_config(1, R, 1);
  c.train.steps = 4;
  Config one_cfg = c;
  one_cfg.parallel = ParallelConfig{};
  Tr<test::MoeModel, Fp32, Serial> straight(one_cfg);
  const Trace ref = run(straight, 4);
  const BatchFn batches = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
  {  // expert-parallel: two steps, save (rank 0 writes every expert)
    Tr<test::MoeModel, Fp32, Dp> a(c, Dp(comm::Mpi(), c));
    a.train_step(batches);
    a.train_step(batches);
    io::CheckpointDir dir(root + "/ep", 3);
    save_checkpoint(dir, a, nlohmann::json::object());
  }
  {  // one process resumes and continues
    Tr<test::MoeModel, Fp32, Serial> b(one_cfg);
    io::CheckpointDir dir(root + "/ep", 3);
    BOOST_REQUIRE(resume_checkpoint(dir, b, nlohmann::json::object()));
    const Trace t = run(b, 2);
    BOOST_TEST(t.loss[1] == ref.loss[3]);
    BOOST_TEST((t.params == ref.params));
    BOOST_TEST((t.state == ref.state));
  }
  {  // expert-parallel resumes the same checkpoint
    Tr<test::MoeModel, Fp32, Dp> d(c, Dp(comm::Mpi(), c));
    io::CheckpointDir dir(root + "/ep", 3);
    BOOST_REQUIRE(resume_checkpoint(dir, d, nlohmann::json::object()));
    const Trace t = run(d, 2);
    BOOST_TEST(t.loss[1] == ref.loss[3]);
    Trace tail = ref;
    tail.loss = t.loss;
    tail.ce = t.ce;
    tail.norm = t.norm;
    expect_bitwise(tail, t);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (test::world_rank() == 0) std::filesystem::remove_all(root);
}

BOOST_AUTO_TEST_CASE(data_x_expert_x_zero_bitwise) {
  // ZeRO-1 shards optimizer state and master weights over the data ranks of each expert
  // shard (the expert-data group): expert gradients are reduce-scattered there, dense ones
  // reduced over all replicas, and each rank updates its shard.
  const int R = test::world_size();
  Config c = grid_config(R / 2, 2, 1);  // 2 ranks: EP 2 (one data rank: nothing to shard)
  c.parallel.zero = true;
  check_bitwise<test::MoeModel>(c);
  if (R < 4) return;
  c = grid_config(2, 2, 2);
  c.parallel.zero = true;
  check_bitwise<test::MoeModel>(c);
  check_bitwise<test::MoeModel, MixedBf16>(c);
  {  // the shard is half the flat buffer, the optimizer state too
    Tr<test::MoeModel, Fp32, Dp> t(c, Dp(comm::Mpi(), c));
    const auto [lo, hi] = t.shard();
    BOOST_TEST(t.parallel().sharded());
    BOOST_TEST(hi - lo < t.model().registry().total());
    BOOST_TEST(t.memory_report().optimizer < 2 * 4 * t.model().registry().total());
  }
}

BOOST_AUTO_TEST_CASE(unsupported_combinations_are_refused) {
  const int R = test::world_size();
  Config c = grid_config(1, R, 1);
  try {
    Tr<SeqModel, Fp32, Dp> t(c, Dp(comm::Mpi(), c));
    BOOST_FAIL("a sequence-aware expert under expert parallelism was accepted");
  } catch (const Error& e) {
    BOOST_TEST(std::string(e.what()).find("TransformerExpert") != std::string::npos, e.what());
  }
}
