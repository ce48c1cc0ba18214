#pragma once
// The routing plan of one micro-batch (the MoE layer's step 2). A router's decisions are a
// list of assignments a = (token, expert, gate): a = t·k + j for token choice (token t's j-th
// pick), a = e·C + i for expert choice (expert e's i-th token, ascending token order). Some
// may be dropped by a capacity policy. The plan places every kept assignment on one row of
// the dispatch buffer, expert by expert, in assignment order within an expert (a stable
// counting sort, so nothing depends on threads), and lists each token's kept assignments in
// assignment order for the combine step.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace tmoe {

struct RoutingPlan {
  std::vector<std::int64_t> routed;       // (E) assignments per expert, before dropping
  std::vector<std::int64_t> counts;       // (E) kept rows per expert
  std::vector<std::int64_t> offsets;      // (E + 1) first row of each expert
  std::vector<std::int32_t> pos;          // (A) row of assignment a, or -1 when dropped
  std::vector<std::int32_t> row_token;    // (rows) token of each row
  std::vector<std::int32_t> row_assign;   // (rows) assignment of each row
  std::vector<std::int32_t> tok_offsets;  // (N + 1) token t's kept assignments are
  std::vector<std::int32_t> tok_assign;   //   tok_assign[tok_offsets[t] .. tok_offsets[t+1])

  std::int64_t rows() const { return offsets.empty() ? 0 : offsets.back(); }

  // kept may be null (nothing dropped).
  void build(const std::int32_t* expert, const std::int32_t* token, const std::uint8_t* kept, std::int64_t a,
             std::int64_t n, std::int64_t e) {
    routed.assign(static_cast<std::size_t>(e), 0);
    counts.assign(static_cast<std::size_t>(e), 0);
    tok_offsets.assign(static_cast<std::size_t>(n + 1), 0);
    for (std::int64_t i = 0; i < a; ++i) {
      ++routed[static_cast<std::size_t>(expert[i])];
      if (!kept || kept[i]) {
        ++counts[static_cast<std::size_t>(expert[i])];
        ++tok_offsets[static_cast<std::size_t>(token[i]) + 1];
      }
    }
    offsets.assign(static_cast<std::size_t>(e + 1), 0);
    for (std::int64_t x = 0; x < e; ++x) offsets[x + 1] = offsets[x] + counts[x];
    for (std::int64_t t = 0; t < n; ++t) tok_offsets[t + 1] += tok_offsets[t];
    std::vector<std::int64_t> cursor(offsets.begin(), offsets.end() - 1);
    std::vector<std::int32_t> tcur(tok_offsets.begin(), tok_offsets.end() - 1);
    pos.assign(static_cast<std::size_t>(a), -1);
    row_token.resize(static_cast<std::size_t>(offsets.back()));
    row_assign.resize(static_cast<std::size_t>(offsets.back()));
    tok_assign.resize(static_cast<std::size_t>(offsets.back()));
    for (std::int64_t i = 0; i < a; ++i) {
      if (kept && !kept[i]) continue;
      const std::int64_t r = cursor[static_cast<std::size_t>(expert[i])]++;
      pos[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(r);
      row_token[static_cast<std::size_t>(r)] = token[i];
      row_assign[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(i);
      tok_assign[static_cast<std::size_t>(tcur[static_cast<std::size_t>(token[i])]++)] = static_cast<std::int32_t>(i);
    }
  }
};

// What an MoE layer reports after each forward (summed over a step's micro-batches by the
// trainer): the metrics JSON lines and, later, the monitoring heat map read it.
struct MoEStats {
  std::vector<std::int64_t> tokens;    // (E) rows processed per expert
  std::vector<std::int64_t> dropped;   // (E) assignments dropped per expert (capacity)
  double entropy = 0;                  // mean entropy of the router's probabilities, nats
  std::vector<double> bias;            // (E) selection bias (SigmoidBias), else empty
  std::vector<std::pair<std::string, double>> terms;  // each balancing term's unweighted value

  // Adds another micro-batch's stats; means (entropy, terms) are averaged by `of`.
  void accumulate(const MoEStats& o, double of) {
    if (tokens.empty()) {
      tokens.assign(o.tokens.size(), 0);
      dropped.assign(o.dropped.size(), 0);
      terms = o.terms;
      for (auto& t : terms) t.second = 0;
    }
    for (std::size_t i = 0; i < o.tokens.size(); ++i) tokens[i] += o.tokens[i];
    for (std::size_t i = 0; i < o.dropped.size(); ++i) dropped[i] += o.dropped[i];
    entropy += o.entropy / of;
    for (std::size_t i = 0; i < o.terms.size() && i < terms.size(); ++i) terms[i].second += o.terms[i].second / of;
    bias = o.bias;
  }
};

}  // namespace tmoe
