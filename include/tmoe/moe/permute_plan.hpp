#pragma once
// Host-side planning for the GPU's dispatch and combine (backend/cuda/permute.cuh), in a
// header with no CUDA so the g++ unit tests cover it:
//   build_routing_plan  RoutingPlan::build (moe/plan.hpp) after checking every expert id and
//                       token index (build itself indexes with them unchecked);
//   PermuteIndex        every index array of a plan packed into ONE contiguous int32 buffer
//                       (one host-to-device copy), with the offset of each array in it;
//   expert_slices       the grouped GEMM's problems: one (expert, first row, rows) per
//                       non-empty expert, in expert order (empty experts are skipped, so a
//                       grouped GEMM never sees a zero-row problem).
// The semantics are the plan's: rows are grouped by expert in assignment order, a token's
// kept assignments are listed in assignment order, dropped assignments have pos = -1 and
// appear in no row and in no token's list.
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "tmoe/core/error.hpp"
#include "tmoe/moe/plan.hpp"

namespace tmoe {

// plan.build(expert, token, kept, a, n, e) after checking 0 <= expert[i] < e and
// 0 <= token[i] < n for every assignment (dropped ones too: build counts them as routed).
inline void build_routing_plan(RoutingPlan& plan, const std::int32_t* expert, const std::int32_t* token,
                               const std::uint8_t* kept, std::int64_t a, std::int64_t n, std::int64_t e) {
  const char* where = "build_routing_plan";
  TMOE_CHECK(a >= 0 && n >= 0 && e > 0, where, detail::cat("A=", a, ", N=", n, ", E=", e), "A, N >= 0 and E > 0");
  TMOE_CHECK(a <= std::numeric_limits<std::int32_t>::max(), where, detail::cat(a, " assignments"),
             "at most 2^31 - 1 assignments (int32 indices)");
  for (std::int64_t i = 0; i < a; ++i) {
    TMOE_CHECK(expert[i] >= 0 && expert[i] < e, where,
               detail::cat("assignment ", i, " names expert ", expert[i]), detail::cat("an expert id in [0, ", e, ")"));
    TMOE_CHECK(token[i] >= 0 && token[i] < n, where, detail::cat("assignment ", i, " names token ", token[i]),
               detail::cat("a token index in [0, ", n, ")"));
  }
  plan.build(expert, token, kept, a, n, e);
}

// The index arrays of a plan, packed for the device. Layout of `data` (int32):
//   row_token (rows) | row_assign (rows) | pos (A) | tok_offsets (N + 1) | tok_assign (rows)
//   | expert_offsets (E + 1)
// Arrays<P>::at(base) gives the six pointers into a buffer with this layout, wherever it
// lives (the host vector, or its device copy).
struct PermuteIndex {
  std::int64_t n = 0, a = 0, rows = 0, e = 0;
  std::vector<std::int32_t> data;

  template <class P>
  struct Arrays {
    P row_token, row_assign, pos, tok_offsets, tok_assign, expert_offsets;
  };

  std::int64_t row_token_at() const { return 0; }
  std::int64_t row_assign_at() const { return rows; }
  std::int64_t pos_at() const { return 2 * rows; }
  std::int64_t tok_offsets_at() const { return 2 * rows + a; }
  std::int64_t tok_assign_at() const { return 2 * rows + a + n + 1; }
  std::int64_t expert_offsets_at() const { return 3 * rows + a + n + 1; }
  std::int64_t size() const { return 3 * rows + a + n + 1 + e + 1; }

  template <class I>  // I: std::int32_t or const std::int32_t
  Arrays<I*> at(I* base) const {
    return {base + row_token_at(),   base + row_assign_at(), base + pos_at(),
            base + tok_offsets_at(), base + tok_assign_at(), base + expert_offsets_at()};
  }
  Arrays<const std::int32_t*> host() const { return at(data.data()); }
};

// Packs `plan` (built for n tokens) after checking it is consistent: array sizes, offsets
// that add up, every row index within int32.
inline PermuteIndex permute_index(const RoutingPlan& plan) {
  const char* where = "permute_index";
  PermuteIndex ix;
  TMOE_CHECK(!plan.tok_offsets.empty() && plan.offsets.size() == plan.counts.size() + 1 && !plan.counts.empty(), where,
             "an unbuilt or inconsistent routing plan", "a plan made by RoutingPlan::build");
  ix.n = static_cast<std::int64_t>(plan.tok_offsets.size()) - 1;
  ix.a = static_cast<std::int64_t>(plan.pos.size());
  ix.e = static_cast<std::int64_t>(plan.counts.size());
  ix.rows = plan.rows();
  TMOE_CHECK(ix.rows <= std::numeric_limits<std::int32_t>::max(), where, detail::cat(ix.rows, " dispatch rows"),
             "at most 2^31 - 1 rows (int32 indices)");
  const auto rows = static_cast<std::size_t>(ix.rows);
  TMOE_CHECK(plan.row_token.size() == rows && plan.row_assign.size() == rows && plan.tok_assign.size() == rows &&
                 plan.tok_offsets.back() == ix.rows,
             where, detail::cat("a plan of ", ix.rows, " rows with ", plan.row_token.size(), " row tokens, ",
                                plan.tok_assign.size(), " token assignments"),
             "a plan made by RoutingPlan::build");
  for (std::int64_t x = 0; x < ix.e; ++x)
    TMOE_CHECK(plan.counts[x] >= 0 && plan.offsets[x + 1] - plan.offsets[x] == plan.counts[x], where,
               detail::cat("expert ", x, " has ", plan.counts[x], " rows but offsets ", plan.offsets[x], "..",
                           plan.offsets[x + 1]),
               "offsets that are the running sum of the counts");
  ix.data.resize(static_cast<std::size_t>(ix.size()));
  auto put = [&](std::int64_t at, const auto& v) {
    for (std::size_t i = 0; i < v.size(); ++i) ix.data[static_cast<std::size_t>(at) + i] = static_cast<std::int32_t>(v[i]);
  };
  put(ix.row_token_at(), plan.row_token);
  put(ix.row_assign_at(), plan.row_assign);
  put(ix.pos_at(), plan.pos);
  put(ix.tok_offsets_at(), plan.tok_offsets);
  put(ix.tok_assign_at(), plan.tok_assign);
  put(ix.expert_offsets_at(), plan.offsets);
  return ix;
}

// One problem of the experts' grouped GEMM: expert `expert` owns dispatch rows
// [row0, row0 + rows).
struct ExpertSlice {
  std::int32_t expert = 0;
  std::int64_t row0 = 0;
  std::int64_t rows = 0;
  bool operator==(const ExpertSlice&) const = default;
};

// The non-empty experts' slices, in expert order, from per-expert row counts (E) and
// offsets (E + 1).
inline std::vector<ExpertSlice> expert_slices(std::span<const std::int64_t> counts,
                                              std::span<const std::int64_t> offsets) {
  const char* where = "expert_slices";
  TMOE_CHECK(offsets.size() == counts.size() + 1, where,
             detail::cat(counts.size(), " counts and ", offsets.size(), " offsets"), "E counts and E + 1 offsets");
  std::vector<ExpertSlice> out;
  for (std::size_t x = 0; x < counts.size(); ++x) {
    TMOE_CHECK(counts[x] >= 0 && offsets[x + 1] - offsets[x] == counts[x], where,
               detail::cat("expert ", x, " has ", counts[x], " rows but offsets ", offsets[x], "..", offsets[x + 1]),
               "offsets that are the running sum of the counts");
    if (counts[x] > 0) out.push_back({static_cast<std::int32_t>(x), offsets[x], counts[x]});
  }
  return out;
}
inline std::vector<ExpertSlice> expert_slices(const RoutingPlan& plan) { return expert_slices(plan.counts, plan.offsets); }

}  // namespace tmoe
