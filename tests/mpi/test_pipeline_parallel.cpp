// Pipeline parallelism (alone, with data and expert parallelism and with ZeRO-1) over MPI against one
// process on the same global batch. The 1F1B schedule runs each micro-batch's backward in
// order, a stage recomputes a micro-batch's activations from its saved input before its
// backward, and the losses are folded over the layers in the one-process order: with the
// fixed-order reduction and a power-of-two number of micro-batches per replica, losses,
// gradient norms and weights are bitwise equal. Checkpoints move between pipelined and
// one-process layouts.
#define BOOST_TEST_MODULE pipeline_parallel
#include "mpi_fixture.hpp"

#include <filesystem>
#include <set>

#include "layout_trace.hpp"
#include "tmoe/train/checkpointing.hpp"

using namespace tmoe;
using MpiFixture = tmoe::test::MpiFixture;
BOOST_TEST_GLOBAL_FIXTURE(MpiFixture);

namespace {

using LearnedModel = DecoderLM<TransformerBlock<CausalAttention<LearnedPositions>, MoE<GeluFFN, TopK, CapacityFactor>>, LayerNorm>;
using DenseModel = DecoderLM<TransformerBlock<CausalAttention<Rope>, Dense<SwiGLU>>, RmsNorm>;

template <class Model, class P, class Par>
using Tr = Trainer<Model, StandardOptimizers, P, Par, backend::Cpu>;
using Dp = DataParallel<comm::Mpi>;

// data x pipeline = world; 4 layers; pieces_per_replica micro-batches on each replica.
Config grid_config(int data, int pipeline, std::int64_t pieces_per_replica) {
  Config c = test::layout_config(data, 1, 1, pipeline, pieces_per_replica);
  c.model.n_layers = 4;
  c.model.tie_embeddings = false;
  return c;
}

template <class Model, class P = Fp32>
void check_bitwise(const Config& c) {
  Config one_cfg = c;
  one_cfg.parallel = ParallelConfig{};
  Tr<Model, P, Serial> one(one_cfg);
  const test::LayoutTrace ref = test::run_trace(one, c.train.steps);
  Tr<Model, P, Dp> many(c, Dp(comm::Mpi(), c));
  BOOST_TEST(many.parameter_count() == one.model().registry().count());  // the whole model's
  const test::LayoutTrace got = test::run_trace(many, c.train.steps);
  // This rank holds its stage's blocks only.
  const auto blocks = [](const test::LayoutTrace& t) {
    std::set<std::string> layers;
    for (const auto& kv : t.params)
      if (kv.first.starts_with("layers.")) layers.insert(kv.first.substr(0, kv.first.find('.', 7)));
    return static_cast<std::int64_t>(layers.size());
  };
  BOOST_TEST(blocks(got) * c.parallel.pipeline == blocks(ref));
  BOOST_TEST(got.bytes > 0);
  test::expect_match(ref, got, 0.0);
  const BatchFn batches = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
  BOOST_TEST(one.evaluate(batches, 3) == many.evaluate(batches, 3));
}

}  // namespace

BOOST_AUTO_TEST_CASE(schedule_is_one_forward_one_backward) {
  // Stage 0 of 4 with 6 micro-batches: 3 warm-up forwards, then F/B pairs, then 3 backwards.
  const auto ops = pipeline_schedule(4, 0, 6);
  std::string s;
  for (const PipeOp& op : ops) s += (op.forward ? "F" : "B") + std::to_string(op.micro) + " ";
  BOOST_TEST(s == "F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5 ");
  std::string last;
  for (const PipeOp& op : pipeline_schedule(4, 3, 3)) last += (op.forward ? "F" : "B") + std::to_string(op.micro) + " ";
  BOOST_TEST(last == "F0 B0 F1 B1 F2 B2 ");
  BOOST_TEST(pipeline_schedule(2, 0, 1).size() == 2u);  // fewer micro-batches than stages
}

BOOST_AUTO_TEST_CASE(pipeline_alone_bitwise) {
  const int R = test::world_size();
  check_bitwise<test::MoeModel>(grid_config(1, R, 1));
  check_bitwise<test::MoeModel>(grid_config(1, R, 4));  // more micro-batches than stages
  check_bitwise<DenseModel>(grid_config(1, R, 2));
}

BOOST_AUTO_TEST_CASE(data_x_pipeline_bitwise) {
  const int R = test::world_size();
  if (R < 4) {  // 1 x 2 under other policies: dropout everywhere, learned positions, capacity
    Config c = grid_config(1, 2, 2);
    c.model.dropout = 0.1;
    c.model.attn_dropout = 0.1;
    c.model.expert_dropout = "0.2";
    c.model.moe_first_dense = 1;
    check_bitwise<test::MoeModel>(c);
    check_bitwise<LearnedModel>(grid_config(1, 2, 2));
    check_bitwise<test::MoeModel, MixedBf16>(grid_config(1, 2, 2));
    return;
  }
  check_bitwise<test::MoeModel>(grid_config(2, 2, 1));
  Config c = grid_config(2, 2, 2);
  c.model.dropout = 0.1;
  c.model.attn_dropout = 0.1;
  c.model.expert_dropout = "0.2";
  c.model.recompute = "full";
  check_bitwise<test::MoeModel>(c);
  check_bitwise<LearnedModel, MixedBf16>(grid_config(2, 2, 1));
}

BOOST_AUTO_TEST_CASE(zero_x_pipeline_bitwise) {
  const int R = test::world_size();
  if (R < 4) return;  // ZeRO-1 needs two replicas per stage
  Config c = grid_config(2, 2, 2);
  c.parallel.zero = true;
  check_bitwise<test::MoeModel>(c);
  check_bitwise<test::MoeModel, MixedFp16>(c);
}

BOOST_AUTO_TEST_CASE(expert_x_pipeline_bitwise) {
  // Each stage's MoE layers split their experts over the expert group; the ranks of an
  // expert group run the same schedule, so their all-to-alls (recomputed forwards too) meet.
  const int R = test::world_size();
  if (R < 4) return;
  for (std::int64_t pieces : {1, 2}) {
    Config c = grid_config(1, 2, pieces);
    c.parallel.expert = 2;
    c.train.grad_accum = 2 * pieces;
    check_bitwise<test::MoeModel>(c);
  }
}

BOOST_AUTO_TEST_CASE(checkpoints_between_pipeline_and_other_layouts) {
  const int R = test::world_size();
  const std::string root = test::shared_temp_dir("pp_layouts");
  Config c = grid_config(R / 2, 2, 2);  // data R/2 x pipeline 2, R micro-batches a step
  c.train.steps = 4;
  Config one_cfg = c;
  one_cfg.parallel = ParallelConfig{};
  Tr<test::MoeModel, Fp32, Serial> straight(one_cfg);
  const test::LayoutTrace ref = test::run_trace(straight, 4);
  const BatchFn batches = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
  {  // pipelined: two steps, save (rank 0 gathers every stage)
    Tr<test::MoeModel, Fp32, Dp> a(c, Dp(comm::Mpi(), c));
    a.train_step(batches);
    a.train_step(batches);
    io::CheckpointDir dir(root + "/pp", 3);
    save_checkpoint(dir, a, nlohmann::json::object());
  }
  {  // one process resumes and continues
    Tr<test::MoeModel, Fp32, Serial> b(one_cfg);
    io::CheckpointDir dir(root + "/pp", 3);
    BOOST_REQUIRE(resume_checkpoint(dir, b, nlohmann::json::object()));
    const test::LayoutTrace t = test::run_trace(b, 2);
    BOOST_TEST(t.loss[1] == ref.loss[3]);
    BOOST_TEST((t.params == ref.params));
    BOOST_TEST((t.state == ref.state));
  }
  {  // plain data parallelism over all ranks resumes the same checkpoint
    Config d = c;
    d.parallel.pipeline = 1;
    d.parallel.data = R;
    Tr<test::MoeModel, Fp32, Dp> e(d, Dp(comm::Mpi(), d));
    io::CheckpointDir dir(root + "/pp", 3);
    BOOST_REQUIRE(resume_checkpoint(dir, e, nlohmann::json::object()));
    e.train_step(batches);  // one step on another batch split: not compared bitwise
  }
  {  // the pipelined grid resumes it too, and matches the uninterrupted run
    Tr<test::MoeModel, Fp32, Dp> f(c, Dp(comm::Mpi(), c));
    io::CheckpointDir dir(root + "/pp", 3);
    BOOST_REQUIRE(resume_checkpoint(dir, f, nlohmann::json::object()));
    const test::LayoutTrace t = test::run_trace(f, 2);
    BOOST_TEST(t.loss[1] == ref.loss[3]);
    test::LayoutTrace tail = ref;
    tail.loss = t.loss;
    tail.ce = t.ce;
    tail.norm = t.norm;
    test::expect_match(tail, t, 0.0);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (test::world_rank() == 0) std::filesystem::remove_all(root);
}

BOOST_AUTO_TEST_CASE(bad_pipeline_layouts_are_refused) {
  const int R = test::world_size();
  Config c = grid_config(1, R, 1);
  c.model.tie_embeddings = true;
  try {
    Tr<test::MoeModel, Fp32, Dp> t(c, Dp(comm::Mpi(), c));
    BOOST_FAIL("tied embeddings under pipeline parallelism were accepted");
  } catch (const Error& e) {
    BOOST_TEST(std::string(e.what()).find("tie_embeddings") != std::string::npos, e.what());
  }
  c = grid_config(1, R, 1);
  c.model.n_layers = 3 * R - 1;  // not divisible by the stages
  try {
    Dp d(comm::Mpi(), c);
    BOOST_FAIL("a layer count not divisible by the pipeline was accepted");
  } catch (const Error& e) {
    BOOST_TEST(std::string(e.what()).find("parallel.pipeline") != std::string::npos, e.what());
  }
  c = grid_config(1, R, 1);
  Tr<test::MoeModel, Fp32, Dp> t(c, Dp(comm::Mpi(), c));
  try {
    t.generate({1, 2, 3}, 2, 0.0, 1);
    BOOST_FAIL("generation under pipeline parallelism was accepted");
  } catch (const Error& e) {
    BOOST_TEST(std::string(e.what()).find("pipeline") != std::string::npos, e.what());
  }
}
