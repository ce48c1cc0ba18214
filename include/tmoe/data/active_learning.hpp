#pragma once
// Active learning: rank unlabelled records by how unsure a model is about them and export
// the top N for human labelling.
//
// Model-agnostic: a record's score comes from a callable, either
//   double(std::string_view text)                 -> the score itself, or
//   UncertaintyScore(std::string_view text)       -> {mean loss, mean entropy}, the
//                                                    criterion picks one,
// or from precomputed UncertaintyScore values. Both criteria are in nats per token:
//   loss:    mean cross-entropy -log p(target_t) of the record's own tokens (per byte for
//            the byte-level models), high = the model finds the text surprising;
//   entropy: mean predictive entropy -sum_v p_v log p_v of the next-token distributions,
//            high = the model is unsure whatever the text says.
// sequence_uncertainty() computes both from (T, V) logits and T target ids with a
// max-shifted log-sum-exp in double, whatever the logits' type.
//
// Ranking: highest score first; equal scores keep input order (a stable sort), so the
// selection is deterministic. A NaN or infinite score is a tmoe::Error naming the record.
// Export: JSON lines {"id", "text", "score", "criterion"} written to a temporary file in
// the target's folder, fsynced and renamed over the target, so the target is always
// either the previous file or the complete new one.
#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/io/atomic_file.hpp"

namespace tmoe::data {

// One unlabelled record.
struct TextRecord {
  std::string id, text;
};

enum class Uncertainty { loss, entropy };

inline const char* to_string(Uncertainty c) { return c == Uncertainty::loss ? "loss" : "entropy"; }

// "loss" | "entropy"; anything else is a tmoe::Error at `where`.
inline Uncertainty parse_uncertainty(std::string_view s, const std::string& where = "criterion") {
  if (s == "loss") return Uncertainty::loss;
  if (s == "entropy") return Uncertainty::entropy;
  throw Error("criterion is '" + std::string(s) + "'", where, "loss or entropy");
}

// A model's uncertainty about one record, in nats per token.
struct UncertaintyScore {
  double loss = 0;     // mean cross-entropy of the targets
  double entropy = 0;  // mean predictive entropy
  std::size_t tokens = 0;

  double get(Uncertainty c) const { return c == Uncertainty::loss ? loss : entropy; }
};

// Mean cross-entropy and mean predictive entropy of T next-token distributions: row t of
// the row-major (T, V) `logits` predicts targets[t]. -inf logits are masked-out tokens
// (probability 0); NaN, +inf or an all -inf row is a tmoe::Error, as is a target outside
// [0, V). A target with a -inf logit gives an infinite loss.
template <class T>
  requires std::floating_point<T>
UncertaintyScore sequence_uncertainty(const T* logits, std::size_t tokens, std::size_t vocab,
                                      std::span<const std::int32_t> targets) {
  const std::string where = "sequence_uncertainty";
  if (tokens == 0) throw Error("no tokens", where, "at least 1 position");
  if (vocab == 0) throw Error("vocabulary size is 0", where, "at least 1 logit per position");
  if (logits == nullptr) throw Error("logits pointer is null", where, "a pointer to T x V logits");
  if (targets.size() != tokens)
    throw Error(::tmoe::detail::cat(targets.size(), " targets for ", tokens, " positions"), where,
                "one target id per position");
  double loss = 0, entropy = 0;
  for (std::size_t t = 0; t < tokens; ++t) {
    const T* z = logits + t * vocab;
    const std::int32_t y = targets[t];
    if (y < 0 || static_cast<std::size_t>(y) >= vocab)
      throw Error(::tmoe::detail::cat("target ", y, " at position ", t), where,
                  ::tmoe::detail::cat("an id in [0, ", vocab, ")"));
    double mx = -std::numeric_limits<double>::infinity();
    for (std::size_t v = 0; v < vocab; ++v) {
      const double x = static_cast<double>(z[v]);
      if (std::isnan(x) || x == std::numeric_limits<double>::infinity())
        throw Error(::tmoe::detail::cat("logit ", x, " at position ", t, ", id ", v), where,
                    "finite logits (or -inf for masked tokens)");
      mx = std::max(mx, x);
    }
    if (mx == -std::numeric_limits<double>::infinity())
      throw Error(::tmoe::detail::cat("every logit at position ", t, " is -inf"), where,
                  "at least one finite logit per position");
    double sum = 0;
    for (std::size_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(z[v]) - mx);
    const double log_sum = std::log(sum);  // log Z - max
    double expected_shifted = 0;            // sum_v p_v (z_v - max)
    for (std::size_t v = 0; v < vocab; ++v) {
      const double s = static_cast<double>(z[v]) - mx;
      const double p = std::exp(s - log_sum);
      if (p > 0) expected_shifted += p * s;
    }
    loss += log_sum - (static_cast<double>(z[y]) - mx);
    entropy += log_sum - expected_shifted;
  }
  UncertaintyScore r;
  r.loss = loss / static_cast<double>(tokens);
  r.entropy = entropy / static_cast<double>(tokens);
  r.tokens = tokens;
  return r;
}

// One selected record.
struct RankedRecord {
  std::size_t index = 0;  // position in the input
  std::string id, text;
  double score = 0;
};

namespace active_learning_detail {

inline void check_ids(std::span<const TextRecord> records) {
  std::unordered_map<std::string_view, std::size_t> seen;
  for (std::size_t i = 0; i < records.size(); ++i) {
    if (records[i].id.empty())
      throw Error(::tmoe::detail::cat("record ", i, " has an empty id"), "active_learning", "a non-empty id per record");
    auto [pos, fresh] = seen.emplace(records[i].id, i);
    if (!fresh)
      throw Error(::tmoe::detail::cat("records ", pos->second, " and ", i, " share the id '", records[i].id, "'"),
                  "active_learning", "unique record ids");
  }
}

}  // namespace active_learning_detail

// The top_n records by score (highest first; ties in input order). scores[i] belongs to
// records[i]. top_n larger than the record count returns every record.
inline std::vector<RankedRecord> rank_by_score(std::span<const TextRecord> records, std::span<const double> scores,
                                               std::size_t top_n) {
  if (records.size() != scores.size())
    throw Error(::tmoe::detail::cat(scores.size(), " scores for ", records.size(), " records"), "active_learning",
                "one score per record");
  active_learning_detail::check_ids(records);
  for (std::size_t i = 0; i < scores.size(); ++i)
    if (!std::isfinite(scores[i]))
      throw Error(::tmoe::detail::cat("score of record '", records[i].id, "' (", i, ") is ", scores[i]),
                  "active_learning", "a finite score");
  std::vector<std::size_t> order(records.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return scores[a] > scores[b]; });
  order.resize(std::min(top_n, order.size()));
  std::vector<RankedRecord> out;
  out.reserve(order.size());
  for (std::size_t i : order) out.push_back({i, records[i].id, records[i].text, scores[i]});
  return out;
}

// As rank_by_score, the score of each record taken from `scores` by `criterion`.
inline std::vector<RankedRecord> rank_by_uncertainty(std::span<const TextRecord> records,
                                                     std::span<const UncertaintyScore> scores, Uncertainty criterion,
                                                     std::size_t top_n) {
  std::vector<double> s(scores.size());
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = scores[i].get(criterion);
  return rank_by_score(records, s, top_n);
}

// As rank_by_score, scoring every record's text with `scorer`: a double(std::string_view)
// callable gives the score itself (criterion ignored), an UncertaintyScore(std::string_view)
// callable gives both and `criterion` picks one. Records are scored in input order.
template <class Scorer>
  requires std::invocable<Scorer&, std::string_view>
std::vector<RankedRecord> rank_by_uncertainty(std::span<const TextRecord> records, Scorer&& scorer,
                                              Uncertainty criterion, std::size_t top_n) {
  using R = std::invoke_result_t<Scorer&, std::string_view>;
  static_assert(std::is_convertible_v<R, double> || std::is_same_v<std::remove_cvref_t<R>, UncertaintyScore>,
                "tmoe: the scorer must return double or tmoe::data::UncertaintyScore");
  std::vector<double> s(records.size());
  for (std::size_t i = 0; i < records.size(); ++i) {
    if constexpr (std::is_same_v<std::remove_cvref_t<R>, UncertaintyScore>)
      s[i] = scorer(std::string_view(records[i].text)).get(criterion);
    else
      s[i] = static_cast<double>(scorer(std::string_view(records[i].text)));
  }
  return rank_by_score(records, s, top_n);
}

// Writes `selected` as JSON lines {"id", "text", "score", "criterion"} to `path`,
// atomically (io::write_file_atomic). Ids and texts must be
// valid UTF-8 (JSON strings); otherwise tmoe::Error names the record and nothing is written.
inline void write_selection_jsonl(const std::string& path, std::span<const RankedRecord> selected,
                                  std::string_view criterion) {
  if (path.empty()) throw Error("output path is empty", "active_learning.output", "a file path");
  std::string text;
  for (auto& r : selected) {
    nlohmann::ordered_json j;
    j["id"] = r.id;
    j["text"] = r.text;
    j["score"] = r.score;
    j["criterion"] = std::string(criterion);
    try {
      text += j.dump();
    } catch (const nlohmann::json::exception&) {
      throw Error("id or text of record '" + r.id + "' is not valid UTF-8", path, "UTF-8 ids and texts");
    }
    text += '\n';
  }
  io::write_file_atomic(path, text);
}

struct ActiveLearningConfig {
  std::string criterion = "entropy";  // loss | entropy
  std::int64_t top_n = 100;           // records exported for labelling
  std::string output;                 // JSON-lines file; empty: nothing written

  static constexpr auto fields() {
    using C = ActiveLearningConfig;
    return std::make_tuple(field("criterion", &C::criterion, "loss | entropy: the uncertainty that ranks records"),
                           field("top_n", &C::top_n, "records selected for labelling"),
                           field("output", &C::output, "JSON-lines file of the selection; empty = none"));
  }
  void validate() const {
    (void)parse_uncertainty(criterion, "active_learning.criterion");
    if (top_n <= 0)
      throw Error(::tmoe::detail::cat("top_n is ", top_n), "active_learning.top_n", "a positive record count");
  }
};

// Ranks `records` with `scorer` (see rank_by_uncertainty), keeps the top cfg.top_n and
// writes them to cfg.output when it is set. The criterion written is cfg.criterion.
template <class Scorer>
  requires std::invocable<Scorer&, std::string_view>
std::vector<RankedRecord> select_for_labelling(std::span<const TextRecord> records, Scorer&& scorer,
                                               const ActiveLearningConfig& cfg) {
  cfg.validate();
  const Uncertainty c = parse_uncertainty(cfg.criterion, "active_learning.criterion");
  auto top = rank_by_uncertainty(records, scorer, c, static_cast<std::size_t>(cfg.top_n));
  if (!cfg.output.empty()) write_selection_jsonl(cfg.output, top, cfg.criterion);
  return top;
}

}  // namespace tmoe::data
