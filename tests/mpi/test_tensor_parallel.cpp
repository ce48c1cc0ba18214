// Tensor parallelism (Megatron column/row-parallel attention, dense FFN, routed and shared
// experts), alone, with data parallelism, with pipeline parallelism and with ZeRO-1, over
// MPI against one process on the same global batch. A row-parallel product sums its inputs'
// slices on different ranks, so the results differ from one process by rounding only: in
// fp64 the losses, gradient norms and weights agree within 1e-9 relative after three steps
// (fp32: 2e-4). Every rank of a tensor group holds identical replicated parameters. The
// weights are initialised identically on every layout (each element keyed by its index in
// the whole tensor), and checkpoints move between tensor-parallel and one-process layouts.
#define BOOST_TEST_MODULE tensor_parallel
#include "mpi_fixture.hpp"

#include <filesystem>

#include "layout_trace.hpp"
#include "tmoe/train/checkpointing.hpp"

using namespace tmoe;
using MpiFixture = tmoe::test::MpiFixture;
BOOST_TEST_GLOBAL_FIXTURE(MpiFixture);

namespace {

using SharedMoe = MoE<GeluFFN, TopK, CapacityFactor>;
using SharedModel = DecoderLM<TransformerBlock<CausalAttention<LearnedPositions>, SharedMoe>, LayerNorm>;
using DenseModel = DecoderLM<TransformerBlock<CausalAttention<Rope>, Dense<SwiGLU>>, RmsNorm>;
using SeqModel = DecoderLM<TransformerBlock<CausalAttention<Rope>, MoE<TransformerExpert<>, TopK>>, RmsNorm>;

template <class Model, class P, class Par>
using Tr = Trainer<Model, StandardOptimizers, P, Par, backend::Cpu>;
using Dp = DataParallel<comm::Mpi>;

constexpr double kTolFp64 = 1e-9, kTolFp32 = 2e-4;

// data x tensor x pipeline = world; 4 heads, widths divisible by 4.
Config grid_config(int data, int tensor, int pipeline, std::int64_t pieces_per_replica) {
  Config c = test::layout_config(data, 1, tensor, pipeline, pieces_per_replica);
  c.model.d_ff = 48;
  c.model.d_expert = 24;
  c.model.n_layers = 2 * pipeline;
  c.model.tie_embeddings = pipeline == 1;
  return c;
}

template <class Model, class P = Fp64>
void check_close(const Config& c, double tol) {
  Config one_cfg = c;
  one_cfg.parallel = ParallelConfig{};
  Tr<Model, P, Serial> one(one_cfg);
  // Initialisation is layout-free: this rank's slices equal the one-process weights.
  Tr<Model, P, Dp> many(c, Dp(comm::Mpi(), c));
  {
    const auto& reg = many.model().registry();
    std::size_t differ = 0, split = 0;
    for (const ParamInfo& p : reg.params()) {
      const ParamInfo* q = one.model().registry().find(p.name);
      BOOST_REQUIRE(q);
      std::vector<typename Tr<Model, P, Serial>::T> want(static_cast<std::size_t>(p.numel()));
      take_share(p, one.model().params() + q->offset, want.data());
      differ += !std::equal(want.begin(), want.end(), many.model().params() + p.offset);
      split += p.is_split();
    }
    BOOST_TEST(differ == 0u);
    BOOST_TEST(split > 0u);
  }
  BOOST_TEST(many.parameter_count() == one.model().registry().count());  // the whole model's
  const test::LayoutTrace ref = test::run_trace(one, c.train.steps);
  const test::LayoutTrace got = test::run_trace(many, c.train.steps);
  BOOST_TEST(got.bytes > 0);
  test::expect_match(ref, got, tol);
  // Replicated parameters are bitwise the same on every rank of the tensor group.
  auto& tg = many.parallel().tensors();
  std::vector<double> rep;
  for (const auto& [name, v] : got.params)
    if (!got.info.at(name).is_split()) rep.insert(rep.end(), v.begin(), v.end());
  std::vector<double> all(rep.size() * static_cast<std::size_t>(tg.size()));
  tg.allgather(rep.data(), static_cast<std::int64_t>(rep.size()), all.data());
  std::size_t differ = 0;
  for (int q = 1; q < tg.size(); ++q)
    differ += !std::equal(rep.begin(), rep.end(), all.begin() + static_cast<std::ptrdiff_t>(rep.size()) * q);
  BOOST_TEST(differ == 0u);
  const BatchFn batches = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
  const double e1 = one.evaluate(batches, 3), e2 = many.evaluate(batches, 3);
  BOOST_TEST(std::abs(e1 - e2) <= tol * std::max(1.0, e1));
}

}  // namespace

BOOST_AUTO_TEST_CASE(tensor_alone_matches_one_process) {
  const int R = test::world_size();
  check_close<test::MoeModel>(grid_config(1, R, 1, 1), kTolFp64);
  check_close<DenseModel>(grid_config(1, R, 1, 2), kTolFp64);
  Config c = grid_config(1, R, 1, 2);
  c.model.n_shared_experts = 1;
  c.model.linear_bias = true;
  c.model.capacity_factor = 1.0;
  check_close<SharedModel>(c, kTolFp64);
  check_close<test::MoeModel, Fp32>(grid_config(1, R, 1, 2), kTolFp32);
}

BOOST_AUTO_TEST_CASE(tensor_with_dropout_keys_matches_one_process) {
  // Attention-probability and expert-hidden dropout keep their one-process masks: the heads
  // and hidden units of a rank are keyed by their global indices.
  const int R = test::world_size();
  Config c = grid_config(1, R, 1, 2);
  c.model.dropout = 0.1;
  c.model.attn_dropout = 0.1;
  c.model.expert_dropout = "0.2";
  c.model.recompute = "selective";
  check_close<test::MoeModel>(c, kTolFp64);
}

BOOST_AUTO_TEST_CASE(data_x_tensor_matches_one_process) {
  const int R = test::world_size();
  if (R < 4) return;  // 2 x 2 needs four ranks
  check_close<test::MoeModel>(grid_config(2, 2, 1, 1), kTolFp64);
  check_close<test::MoeModel>(grid_config(2, 2, 1, 2), kTolFp64);
  Config z = grid_config(2, 2, 1, 2);
  z.parallel.zero = true;
  check_close<test::MoeModel>(z, kTolFp64);
}

BOOST_AUTO_TEST_CASE(tensor_x_pipeline_matches_one_process) {
  const int R = test::world_size();
  if (R < 4) return;
  check_close<test::MoeModel>(grid_config(1, 2, 2, 2), kTolFp64);
}

BOOST_AUTO_TEST_CASE(checkpoints_between_tensor_parallel_and_one_process) {
  const int R = test::world_size();
  const std::string root = test::shared_temp_dir("tp_layouts");
  Config c = grid_config(1, R, 1, 1);
  c.train.steps = 4;
  Config one_cfg = c;
  one_cfg.parallel = ParallelConfig{};
  Tr<test::MoeModel, Fp64, Serial> straight(one_cfg);
  const test::LayoutTrace ref = test::run_trace(straight, 4);
  const BatchFn batches = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
  {  // one process: two steps, save
    Tr<test::MoeModel, Fp64, Serial> a(one_cfg);
    a.train_step(batches);
    a.train_step(batches);
    if (test::world_rank() == 0) {
      io::CheckpointDir dir(root + "/one", 3);
      save_checkpoint(dir, a, nlohmann::json::object());
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  {  // the tensor-parallel grid resumes it (each rank takes its slices) and continues
    Tr<test::MoeModel, Fp64, Dp> b(c, Dp(comm::Mpi(), c));
    io::CheckpointDir dir(root + "/one", 3);
    BOOST_REQUIRE(resume_checkpoint(dir, b, nlohmann::json::object()));
    const test::LayoutTrace t = test::run_trace(b, 2, batches);
    BOOST_TEST(std::abs(t.loss[1] - ref.loss[3]) <= kTolFp64);
    // ... and saves: rank 0 assembles the whole tensors from the slices
    io::CheckpointDir out(root + "/tp", 3);
    save_checkpoint(out, b, nlohmann::json::object());
  }
  {  // one process resumes the tensor-parallel checkpoint: the same weights as the grid had
    Tr<test::MoeModel, Fp64, Serial> d(one_cfg);
    io::CheckpointDir dir(root + "/tp", 3);
    BOOST_REQUIRE(resume_checkpoint(dir, d, nlohmann::json::object()));
    BOOST_TEST(d.step() == 4);
    test::LayoutTrace tail = test::run_trace(d, 0);
    test::LayoutTrace want = ref;
    want.loss = want.ce = want.norm = {};
    test::expect_match(want, tail, kTolFp64);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (test::world_rank() == 0) std::filesystem::remove_all(root);
}

BOOST_AUTO_TEST_CASE(bad_tensor_layouts_are_refused) {
  const int R = test::world_size();
  Config c = grid_config(1, R, 1, 1);
  c.model.n_heads = 2 * R + 1;
  c.model.d_model = 4 * (2 * R + 1);
  try {
    Dp d(comm::Mpi(), c);
    BOOST_FAIL("heads not divisible by the tensor-parallel size were accepted");
  } catch (const Error& e) {
    BOOST_TEST(std::string(e.what()).find("parallel.tensor") != std::string::npos, e.what());
  }
  c = grid_config(1, R, 1, 1);
  try {
    Tr<SeqModel, Fp64, Dp> t(c, Dp(comm::Mpi(), c));
    BOOST_FAIL("a sequence-aware expert under tensor parallelism was accepted");
  } catch (const Error& e) {
    BOOST_TEST(std::string(e.what()).find("TransformerExpert") != std::string::npos, e.what());
  }
  Config both = grid_config(1, R, 1, 1);
  if (R >= 4) {
    both.parallel.tensor = 2;
    both.parallel.expert = 2;
    try {
      Dp d(comm::Mpi(), both);
      BOOST_FAIL("expert x tensor parallelism was accepted");
    } catch (const Error& e) {
      BOOST_TEST(std::string(e.what()).find("parallel.expert") != std::string::npos, e.what());
    }
  }
}
