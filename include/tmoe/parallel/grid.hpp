#pragma once
// The process grid: data x expert x tensor x pipeline ranks (DESIGN.md "Parallelism").
// Rank order puts tensor-parallel ranks next to each other (they talk most), then expert,
// then data, with pipeline stages outermost:
//     rank = ((pipeline_rank * data + data_rank) * expert + expert_rank) * tensor + tensor_rank
// Groups (each split from the world with MPI_Comm_split by the strategies):
//   - replica group (same pipeline and tensor rank): data x expert ranks that each see
//     different tokens and reduce the dense gradients; its rank is data_rank * expert +
//     expert_rank, which also orders the micro-batches: replica rank q takes the step's
//     pieces [q a, (q + 1) a);
//   - expert group (same pipeline, data and tensor rank): the ranks the experts are split over;
//   - expert-data group (same pipeline, tensor and expert rank): the replicas of one expert shard.
#include <cstdint>
#include <string>

#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"

namespace tmoe {

struct ProcessGrid {
  int world = 1, rank = 0;
  int data = 1, expert = 1, tensor = 1, pipeline = 1;       // sizes
  int data_rank = 0, expert_rank = 0, tensor_rank = 0, pipeline_rank = 0;

  int replicas() const { return data * expert; }              // ranks reducing the dense gradients
  int replica_rank() const { return data_rank * expert + expert_rank; }

  // Checks the grid against the world size and the model; every rank computes the same
  // grid, so a mismatch is reported alike on all of them.
  static ProcessGrid make(const ParallelConfig& pc, const ModelConfig& m, int world, int rank) {
    using detail::cat;
    pc.validate();
    ProcessGrid g;
    g.world = world;
    g.rank = rank;
    const std::int64_t etp = pc.expert * pc.tensor * pc.pipeline;
    const std::string sizes = cat("expert ", pc.expert, " x tensor ", pc.tensor, " x pipeline ", pc.pipeline);
    std::int64_t d = pc.data;
    if (d == 0) {
      if (world % etp != 0)
        throw Error(cat("the world of ", world, " ranks is not a multiple of ", sizes, " = ", etp), "parallel",
                    "a rank count divisible by expert x tensor x pipeline");
      d = world / etp;
    }
    if (d * etp != world)
      throw Error(cat("the grid data ", d, " x ", sizes, " = ", d * etp, " ranks, but the job has ", world), "parallel",
                  cat("sizes whose product is the number of ranks (", world, "), or parallel.data=0"));
    if (m.n_experts % pc.expert != 0)
      throw Error(cat("model.n_experts = ", m.n_experts, " is not divisible by parallel.expert = ", pc.expert), "parallel.expert",
                  "an expert-parallel size that divides the number of experts");
    if (m.n_heads % pc.tensor != 0)
      throw Error(cat("model.n_heads = ", m.n_heads, " is not divisible by parallel.tensor = ", pc.tensor), "parallel.tensor",
                  "a tensor-parallel size that divides the number of heads");
    for (auto [w, name] : {std::pair{m.d_ff, "model.d_ff"}, {m.d_expert, "model.d_expert"}})
      if (w % pc.tensor != 0)
        throw Error(cat(name, " = ", w, " is not divisible by parallel.tensor = ", pc.tensor), "parallel.tensor",
                    "a tensor-parallel size that divides the feed-forward widths");
    if (m.n_layers % pc.pipeline != 0)
      throw Error(cat("model.n_layers = ", m.n_layers, " is not divisible by parallel.pipeline = ", pc.pipeline),
                  "parallel.pipeline", "a pipeline size that divides the number of layers");
    if (pc.pipeline > 1 && m.tie_embeddings)
      throw Error("model.tie_embeddings = true with parallel.pipeline > 1", "model.tie_embeddings",
                  "false under pipeline parallelism (the embedding and the head live on different stages)");
    g.data = static_cast<int>(d);
    g.expert = static_cast<int>(pc.expert);
    g.tensor = static_cast<int>(pc.tensor);
    g.pipeline = static_cast<int>(pc.pipeline);
    int r = rank;
    g.tensor_rank = r % g.tensor;
    r /= g.tensor;
    g.expert_rank = r % g.expert;
    r /= g.expert;
    g.data_rank = r % g.data;
    g.pipeline_rank = r / g.data;
    return g;
  }

  std::string describe() const {
    return detail::cat("data ", data, " x expert ", expert, " x tensor ", tensor, " x pipeline ", pipeline);
  }
};

}  // namespace tmoe
