#pragma once
// The index plan of the CUDA embedding backward (embedding.cuh): token positions grouped by
// token id, each group in ascending position order. The backward gives each (id, column
// block) to one thread per column, which adds the rows of its group in that order, so every
// sum of dwte has one fixed order and no atomics are needed. Plain C++ with no CUDA header,
// so the g++ unit tests check it (tests/unit/test_cuda_embedding_plan.cpp).
//
// Built by a stable counting sort over [0, vocab): O(N + vocab) time and memory.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "tmoe/core/error.hpp"

namespace tmoe::backend::cuda {

struct EmbeddingPlan {
  std::vector<std::int32_t> ids;        // (G) the distinct ids, ascending
  std::vector<std::int64_t> offsets;    // (G + 1) group g is positions[offsets[g], offsets[g + 1])
  std::vector<std::int64_t> positions;  // (N) every position once, grouped by id, ascending in a group

  std::int64_t groups() const { return static_cast<std::int64_t>(ids.size()); }
};

// The plan of `n` token ids. vocab > 0: every id must lie in [0, vocab); vocab < 0: the
// table size is not known here and is taken as (largest id + 1), so only negative ids are
// rejected. A bad id is a tmoe::Error naming the id and its position.
inline EmbeddingPlan make_embedding_plan(const std::int32_t* ids, std::int64_t n, std::int64_t vocab) {
  const char* where = "tmoe::backend::cuda::make_embedding_plan";
  TMOE_CHECK(n >= 0, where, "negative token count " + std::to_string(n), "n >= 0");
  TMOE_CHECK(vocab != 0, where, "an embedding table of 0 rows", "vocab > 0, or vocab < 0 when unknown");
  std::int64_t range = vocab;
  if (vocab < 0) {
    range = 0;
    for (std::int64_t i = 0; i < n; ++i) range = std::max<std::int64_t>(range, static_cast<std::int64_t>(ids[i]) + 1);
  }
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t id = ids[i];
    if (id < 0 || id >= range)
      throw Error("token id " + std::to_string(id) + " at position " + std::to_string(i) + " is out of range", where,
                  vocab > 0 ? "ids in [0, " + std::to_string(vocab) + ")" : std::string("ids >= 0"));
  }

  // Counting sort: count, exclusive prefix sum, then place positions in ascending order,
  // which keeps each group in position order (stable).
  std::vector<std::int64_t> start(static_cast<std::size_t>(range) + 1, 0);
  for (std::int64_t i = 0; i < n; ++i) ++start[static_cast<std::size_t>(ids[i]) + 1];
  for (std::int64_t v = 0; v < range; ++v) start[v + 1] += start[v];

  EmbeddingPlan plan;
  plan.positions.resize(static_cast<std::size_t>(n));
  std::vector<std::int64_t> next(start.begin(), start.end() - 1);
  for (std::int64_t i = 0; i < n; ++i) plan.positions[static_cast<std::size_t>(next[ids[i]]++)] = i;

  plan.offsets.push_back(0);
  for (std::int64_t v = 0; v < range; ++v)
    if (start[v + 1] > start[v]) {
      plan.ids.push_back(static_cast<std::int32_t>(v));
      plan.offsets.push_back(start[v + 1]);
    }
  return plan;
}

}  // namespace tmoe::backend::cuda
