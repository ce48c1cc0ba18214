#pragma once
// Annotation quality: how well human labellers agree, and which of their labels to keep.
//
// Statistics (docs/annotation.md has the formulas):
//   - Cohen's kappa for two annotators, unweighted or with linear / quadratic weights, as
//     scikit-learn's cohen_kappa_score: weights use the distance between POSITIONS in the
//     label order (for labels {1, 2, 5} the distance 1..5 is 2, not 4).
//   - Fleiss' kappa for an items x categories count table with the same number (>= 2) of
//     raters on every item, as statsmodels' fleiss_kappa(method="fleiss").
//   Kappa is undefined when chance agreement is already 1 (everyone used one single
//   category): tmoe then returns NaN, as scikit-learn and statsmodels do, and
//   KappaResult::defined() is false. Callers decide what that means (the filter below has
//   a switch for it).
//
// Label order (used by weighted Cohen and for tie-breaking): byte-wise (= code-point) order
// of the label strings, as NumPy/scikit-learn sort strings; numeric order instead when
// every label is a canonical decimal integer ("-3", "0", "17"; JSON integers are read as
// such). The choice is made once over every label of a LabelSet.
//
// Label files are JSON lines, one label per line:
//   {"item": "r17", "annotator": "alice", "label": "good", "batch": "b3"}
// Field names are configurable, `batch` is optional (items without it form the batch "").
// Items, annotators and batches are kept in first-seen order. A repeated identical
// (item, annotator, label) line is counted and ignored; a different label from the same
// annotator for the same item, an item listed in two batches, or any malformed line is a
// tmoe::Error naming the file and line.
//
// Agreement scopes (whole set, one batch): every item in scope must carry the same number
// m >= 2 of labels (tmoe::Error otherwise). Exactly 2 distinct annotators in scope ->
// Cohen (with the requested weights); otherwise Fleiss (unweighted; it allows different
// raters on different items). Per-pair Cohen uses the items both annotators labelled.
//
// Filtering (filter_labels): mode "batch" keeps every item of a batch whose kappa is
// >= threshold (default 0.8); mode "item" judges each item alone by its observed agreement
// (share of agreeing rater pairs, Fleiss' P_i; no chance correction exists for a single
// item), kept when >= item_agreement (default 1.0 = unanimous); mode "both" needs both.
// A kept item resolves to its majority label; a tie goes to the tied label first in label
// order (ties: "first"), or drops the item (ties: "drop").
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"

namespace tmoe::data {

// ---------------------------------------------------------------------------------------
// Kappa statistics

enum class KappaWeights { none, linear, quadratic };

inline const char* to_string(KappaWeights w) {
  switch (w) {
    case KappaWeights::linear: return "linear";
    case KappaWeights::quadratic: return "quadratic";
    default: return "none";
  }
}

// "none" | "linear" | "quadratic"; anything else is a tmoe::Error at `where`.
inline KappaWeights parse_kappa_weights(std::string_view s, const std::string& where = "weights") {
  if (s == "none") return KappaWeights::none;
  if (s == "linear") return KappaWeights::linear;
  if (s == "quadratic") return KappaWeights::quadratic;
  throw Error("weights is '" + std::string(s) + "'", where, "none, linear or quadratic");
}

struct KappaResult {
  double kappa = std::numeric_limits<double>::quiet_NaN();     // NaN when undefined
  double observed = std::numeric_limits<double>::quiet_NaN();  // p_o (weighted: 1 - normalised weighted disagreement)
  double expected = std::numeric_limits<double>::quiet_NaN();  // p_e, chance agreement
  std::size_t items = 0;                                       // items (Cohen: total weight of the table)
  std::size_t categories = 0;                                  // categories in the table
  bool defined() const { return !std::isnan(kappa); }
};

// True when s is a canonical decimal integer (-?(0|[1-9][0-9]*)) that fits in int64; its
// value goes to *value when given.
inline bool is_integer_label(std::string_view s, std::int64_t* value = nullptr) {
  std::size_t i = 0;
  const bool neg = !s.empty() && s[0] == '-';
  if (neg) i = 1;
  if (i >= s.size()) return false;
  if (s[i] == '0' && (s.size() > i + 1 || neg)) return false;  // no leading zeros, no "-0"
  std::uint64_t v = 0;
  const std::uint64_t limit = neg ? std::uint64_t{1} << 63 : (std::uint64_t{1} << 63) - 1;
  for (; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    const std::uint64_t d = static_cast<std::uint64_t>(s[i] - '0');
    if (v > (limit - d) / 10) return false;
    v = v * 10 + d;
  }
  if (value) *value = neg ? static_cast<std::int64_t>(0 - v) : static_cast<std::int64_t>(v);
  return true;
}

// The distinct labels in label order: numeric when all are integer labels, else byte-wise.
inline std::vector<std::string> label_order(std::vector<std::string> labels) {
  std::sort(labels.begin(), labels.end());
  labels.erase(std::unique(labels.begin(), labels.end()), labels.end());
  std::vector<std::int64_t> v(labels.size());
  for (std::size_t i = 0; i < labels.size(); ++i)
    if (!is_integer_label(labels[i], &v[i])) return labels;
  std::vector<std::size_t> idx(labels.size());
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return v[a] < v[b]; });
  std::vector<std::string> out;
  out.reserve(labels.size());
  for (std::size_t i : idx) out.push_back(std::move(labels[i]));
  return out;
}

// Cohen's kappa of a k x k table: confusion[i*k + j] is the (possibly weighted) count of
// items annotator A put in category i and annotator B in category j; categories in label
// order. kappa = 1 - sum(w*O) / sum(w*E), E = outer(row sums, column sums) / total, with
// w = 1 off the diagonal (none), |i-j| (linear) or (i-j)^2 (quadratic).
inline KappaResult cohen_kappa_table(std::span<const double> confusion, std::size_t k,
                                     KappaWeights weights = KappaWeights::none) {
  const std::string where = "cohen_kappa";
  if (k == 0) throw Error("the table has no categories", where, "at least 1 category");
  if (confusion.size() != k * k)
    throw Error(::tmoe::detail::cat("the table has ", confusion.size(), " cells for ", k, " categories"), where,
                ::tmoe::detail::cat(k * k, " cells (k x k, row-major)"));
  std::vector<double> rows(k, 0.0), cols(k, 0.0);
  double total = 0;
  for (std::size_t i = 0; i < k; ++i)
    for (std::size_t j = 0; j < k; ++j) {
      const double c = confusion[i * k + j];
      if (!std::isfinite(c) || c < 0)
        throw Error(::tmoe::detail::cat("cell (", i, ", ", j, ") is ", c), where, "finite counts >= 0");
      rows[i] += c;
      cols[j] += c;
      total += c;
    }
  if (!(total > 0)) throw Error("the table has no items", where, "at least 1 item");
  auto w = [&](std::size_t i, std::size_t j) -> double {
    const double d = i > j ? static_cast<double>(i - j) : static_cast<double>(j - i);
    switch (weights) {
      case KappaWeights::linear: return d;
      case KappaWeights::quadratic: return d * d;
      default: return i == j ? 0.0 : 1.0;
    }
  };
  double wo = 0, we = 0, wmax = 0;
  for (std::size_t i = 0; i < k; ++i)
    for (std::size_t j = 0; j < k; ++j) {
      const double wij = w(i, j);
      wmax = std::max(wmax, wij);
      wo += wij * confusion[i * k + j];
      we += wij * (rows[i] * cols[j] / total);
    }
  KappaResult r;
  r.items = static_cast<std::size_t>(std::llround(total));
  r.categories = k;
  r.observed = wmax > 0 ? 1.0 - wo / (total * wmax) : 1.0;
  r.expected = wmax > 0 ? 1.0 - we / (total * wmax) : 1.0;
  if (we > 0) r.kappa = 1.0 - wo / we;
  return r;
}

// Cohen's kappa of two annotators' labels for the same items (a[i] and b[i] label item i).
// `order` fixes the categories and their order (as scikit-learn's `labels=`); empty: the
// labels present, in label order.
inline KappaResult cohen_kappa(std::span<const std::string> a, std::span<const std::string> b,
                               KappaWeights weights = KappaWeights::none, std::span<const std::string> order = {}) {
  const std::string where = "cohen_kappa";
  if (a.size() != b.size())
    throw Error(::tmoe::detail::cat("annotator A has ", a.size(), " labels and annotator B ", b.size()), where,
                "one label from each annotator per item");
  if (a.empty()) throw Error("no items", where, "at least 1 item labelled by both annotators");
  std::vector<std::string> cats;
  if (order.empty()) {
    cats.assign(a.begin(), a.end());
    cats.insert(cats.end(), b.begin(), b.end());
    cats = label_order(std::move(cats));
  } else {
    cats.assign(order.begin(), order.end());
  }
  std::unordered_map<std::string_view, std::size_t> index;
  for (std::size_t i = 0; i < cats.size(); ++i)
    if (!index.emplace(cats[i], i).second)
      throw Error("label '" + cats[i] + "' appears twice in the label order", where, "distinct labels");
  const std::size_t k = cats.size();
  std::vector<double> table(k * k, 0.0);
  for (std::size_t n = 0; n < a.size(); ++n) {
    auto ia = index.find(a[n]), ib = index.find(b[n]);
    if (ia == index.end() || ib == index.end())
      throw Error(::tmoe::detail::cat("label '", ia == index.end() ? a[n] : b[n], "' of item ", n,
                                      " is not in the label order"),
                  where, "every label listed in `order`");
    table[ia->second * k + ib->second] += 1.0;
  }
  return cohen_kappa_table(table, k, weights);
}

// Fleiss' kappa of a row-major items x categories table of rater counts; every row must sum
// to the same m >= 2. kappa = (P - Pe) / (1 - Pe) with P the mean over items of
// (sum_j n_ij^2 - m) / (m (m-1)) and Pe = sum_j p_j^2, p_j the share of all labels in j.
inline KappaResult fleiss_kappa(std::span<const std::int64_t> counts, std::size_t items, std::size_t categories) {
  const std::string where = "fleiss_kappa";
  if (items == 0) throw Error("no items", where, "at least 1 item");
  if (categories == 0) throw Error("no categories", where, "at least 1 category");
  if (counts.size() != items * categories)
    throw Error(::tmoe::detail::cat("the table has ", counts.size(), " cells for ", items, " items x ", categories,
                                    " categories"),
                where, ::tmoe::detail::cat(items * categories, " cells (row-major)"));
  std::int64_t m = 0;
  std::vector<double> col(categories, 0.0);
  double p_sum = 0;
  for (std::size_t i = 0; i < items; ++i) {
    std::int64_t row = 0;
    double sq = 0;
    for (std::size_t j = 0; j < categories; ++j) {
      const std::int64_t c = counts[i * categories + j];
      if (c < 0) throw Error(::tmoe::detail::cat("item ", i, " has count ", c, " in category ", j), where, "counts >= 0");
      row += c;
      sq += static_cast<double>(c) * static_cast<double>(c);
      col[j] += static_cast<double>(c);
    }
    if (i == 0) m = row;
    if (row != m)
      throw Error(::tmoe::detail::cat("item ", i, " has ", row, " ratings but item 0 has ", m), where,
                  "the same number of raters on every item");
    if (m < 2)
      throw Error(::tmoe::detail::cat("every item has ", m, " rating(s)"), where, "at least 2 raters per item");
    const double md = static_cast<double>(m);
    p_sum += (sq - md) / (md * (md - 1.0));
  }
  const double total = static_cast<double>(m) * static_cast<double>(items);
  double pe = 0;
  for (double c : col) pe += (c / total) * (c / total);
  KappaResult r;
  r.items = items;
  r.categories = categories;
  r.observed = p_sum / static_cast<double>(items);
  r.expected = pe;
  if (pe < 1.0) r.kappa = (r.observed - pe) / (1.0 - pe);
  return r;
}

// As above, one inner vector per item.
inline KappaResult fleiss_kappa(const std::vector<std::vector<std::int64_t>>& table) {
  if (table.empty()) throw Error("no items", "fleiss_kappa", "at least 1 item");
  const std::size_t k = table[0].size();
  std::vector<std::int64_t> flat;
  flat.reserve(table.size() * k);
  for (std::size_t i = 0; i < table.size(); ++i) {
    if (table[i].size() != k)
      throw Error(::tmoe::detail::cat("item ", i, " has ", table[i].size(), " categories but item 0 has ", k),
                  "fleiss_kappa", "rows of equal length");
    flat.insert(flat.end(), table[i].begin(), table[i].end());
  }
  return fleiss_kappa(flat, table.size(), k);
}

// ---------------------------------------------------------------------------------------
// Label sets

// One label given in memory.
struct LabelRecord {
  std::string item, annotator, label, batch;
};

struct LabelSet {
  struct Vote {
    std::size_t annotator;  // index into annotators
    std::size_t category;   // index into categories
    std::size_t line;       // line in the file (1-based), or record index + 1 in memory
  };
  LabelSet() = default;  // not an aggregate, so a braced table never reads as a LabelSet
  std::string source;                        // file read, "" in memory; names errors
  std::vector<std::string> items;            // first-seen order
  std::vector<std::size_t> item_batch;       // index into batches, per item
  std::vector<std::string> batches;          // first-seen order; "" = items without a batch
  std::vector<std::string> annotators;       // first-seen order
  std::vector<std::string> categories;       // label order
  std::vector<std::vector<Vote>> votes;      // per item, in file order
  std::size_t records = 0;                   // label lines / records read
  std::size_t duplicates = 0;                // identical repeats, ignored

  std::size_t labels() const {
    std::size_t n = 0;
    for (auto& v : votes) n += v.size();
    return n;
  }
  // True when at least one item names a batch.
  bool has_batches() const { return !(batches.empty() || (batches.size() == 1 && batches[0].empty())); }
};

namespace annotation_detail {

// Builds a LabelSet one record at a time; `line` is the 1-based line or record number.
class LabelSetBuilder {
 public:
  explicit LabelSetBuilder(std::string source, bool file) : file_(file) { set_.source = std::move(source); }

  std::string where(std::size_t line) const {
    return file_ ? ::tmoe::detail::cat(set_.source, ":", line)
                 : ::tmoe::detail::cat(set_.source.empty() ? std::string("labels") : set_.source, ": record ", line);
  }

  void add(const std::string& item, const std::string& annotator, const std::string& label,
           const std::string& batch, std::size_t line) {
    ++set_.records;
    const std::size_t it = intern(item_index_, set_.items, item);
    const std::size_t an = intern(annotator_index_, set_.annotators, annotator);
    const std::size_t ca = intern(category_index_, raw_categories_, label);
    const std::size_t ba = intern(batch_index_, set_.batches, batch);
    if (it == set_.item_batch.size()) {
      set_.item_batch.push_back(ba);
      set_.votes.emplace_back();
      item_line_.push_back(line);
    } else if (set_.item_batch[it] != ba) {
      throw Error(::tmoe::detail::cat("item '", item, "' is in batch '", batch, "' here but in batch '",
                                      set_.batches[set_.item_batch[it]], "' at ", loc(item_line_[it])),
                  where(line), "one batch per item");
    }
    auto [pos, fresh] = vote_index_.emplace(std::make_pair(it, an), set_.votes[it].size());
    if (!fresh) {
      const auto& prev = set_.votes[it][pos->second];
      if (prev.category != ca)
        throw Error(::tmoe::detail::cat("annotator '", annotator, "' labels item '", item, "' '", label,
                                        "' here but '", raw_categories_[prev.category], "' at ", loc(prev.line)),
                    where(line), "at most one label per annotator and item");
      ++set_.duplicates;
      return;
    }
    set_.votes[it].push_back({an, ca, line});
  }

  LabelSet finish() && {
    set_.categories = label_order(raw_categories_);
    std::unordered_map<std::string_view, std::size_t> final_index;
    for (std::size_t i = 0; i < set_.categories.size(); ++i) final_index.emplace(set_.categories[i], i);
    std::vector<std::size_t> remap(raw_categories_.size());
    for (std::size_t i = 0; i < raw_categories_.size(); ++i) remap[i] = final_index.at(raw_categories_[i]);
    for (auto& item : set_.votes)
      for (auto& v : item) v.category = remap[v.category];
    return std::move(set_);
  }

 private:
  std::string loc(std::size_t line) const { return file_ ? ::tmoe::detail::cat("line ", line) : ::tmoe::detail::cat("record ", line); }

  static std::size_t intern(std::unordered_map<std::string, std::size_t>& index, std::vector<std::string>& names,
                            const std::string& s) {
    auto [pos, fresh] = index.emplace(s, names.size());
    if (fresh) names.push_back(s);
    return pos->second;
  }

  bool file_;
  LabelSet set_;
  std::vector<std::string> raw_categories_;
  std::vector<std::size_t> item_line_;
  std::unordered_map<std::string, std::size_t> item_index_, annotator_index_, category_index_, batch_index_;
  std::map<std::pair<std::size_t, std::size_t>, std::size_t> vote_index_;
};

inline bool blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; });
}

}  // namespace annotation_detail

// A LabelSet from labels given in memory; errors name `source` (or "labels") and the
// 1-based record number. An empty `batch` means no batch.
inline LabelSet make_label_set(std::span<const LabelRecord> records, std::string source = {}) {
  if (records.empty()) throw Error("no labels", source.empty() ? std::string("labels") : source, "at least one label");
  annotation_detail::LabelSetBuilder b(std::move(source), false);
  for (std::size_t i = 0; i < records.size(); ++i) {
    const auto& r = records[i];
    for (auto [name, v] : {std::pair<const char*, const std::string*>{"item", &r.item}, {"annotator", &r.annotator},
                           {"label", &r.label}})
      if (v->empty()) throw Error(std::string(name) + " is empty", b.where(i + 1), "a non-empty " + std::string(name));
    b.add(r.item, r.annotator, r.label, r.batch, i + 1);
  }
  return std::move(b).finish();
}

struct LabelFileConfig {
  std::string item_field = "item";
  std::string annotator_field = "annotator";
  std::string label_field = "label";
  std::string batch_field = "batch";  // optional in every line; "" = ignore batches

  static constexpr auto fields() {
    using C = LabelFileConfig;
    return std::make_tuple(field("item_field", &C::item_field, "JSON field naming the labelled item"),
                           field("annotator_field", &C::annotator_field, "JSON field naming the annotator"),
                           field("label_field", &C::label_field, "JSON field holding the label (string or integer)"),
                           field("batch_field", &C::batch_field, "optional JSON field naming the batch; empty = none"));
  }
  void validate() const {
    const std::pair<const char*, const std::string*> req[] = {
        {"item_field", &item_field}, {"annotator_field", &annotator_field}, {"label_field", &label_field}};
    for (auto [name, v] : req)
      if (v->empty()) throw Error(std::string(name) + " is empty", std::string("labels.") + name, "a JSON field name");
    for (std::size_t i = 0; i < 3; ++i)
      for (std::size_t j = i + 1; j < 3; ++j)
        if (*req[i].second == *req[j].second)
          throw Error(::tmoe::detail::cat(req[i].first, " and ", req[j].first, " are both '", *req[i].second, "'"),
                      std::string("labels.") + req[j].first, "distinct field names");
    for (auto [name, v] : req)
      if (!batch_field.empty() && batch_field == *v)
        throw Error(::tmoe::detail::cat("batch_field and ", name, " are both '", batch_field, "'"),
                    "labels.batch_field", "distinct field names");
  }
};

// Reads a JSON-lines label file. Blank lines are skipped; every other line must be a JSON
// object whose item / annotator fields are non-empty strings or integers, whose label is a
// non-empty string or an integer, and whose batch (if present) is a string or an integer.
// Every error names "path:line".
inline LabelSet read_label_file(const std::string& path, const LabelFileConfig& cfg = {}) {
  using nlohmann::json;
  cfg.validate();
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw Error("is a folder", path, "a JSON-lines label file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot be opened for reading", path, "a readable JSON-lines label file");
  annotation_detail::LabelSetBuilder b(path, true);
  std::string text;
  std::size_t line = 0;
  auto scalar = [&](const json& obj, const std::string& name, bool required, bool allow_empty,
                    const char* expected) -> std::string {
    auto f = obj.find(name);
    if (f == obj.end()) {
      if (required)
        throw Error("no \"" + name + "\" field", b.where(line), "\"" + name + "\": " + expected);
      return {};
    }
    std::string s;
    if (f->is_string()) s = f->get<std::string>();
    else if (f->is_number_unsigned()) s = std::to_string(f->get<std::uint64_t>());
    else if (f->is_number_integer()) s = std::to_string(f->get<std::int64_t>());
    else
      throw Error(::tmoe::detail::cat("\"", name, "\" is a JSON ", f->is_number_float() ? "non-integer number" : f->type_name(),
                                      ": ", f->dump()),
                  b.where(line), expected);
    if (s.empty() && !allow_empty) throw Error("\"" + name + "\" is an empty string", b.where(line), expected);
    return s;
  };
  while (std::getline(in, text)) {
    ++line;
    if (annotation_detail::blank(text)) continue;
    std::string duplicate;
    std::vector<std::string> seen_keys;
    json obj;
    try {
      obj = json::parse(text, [&](int depth, json::parse_event_t ev, json& v) {
        if (depth == 1 && ev == json::parse_event_t::key && duplicate.empty()) {
          const auto& k = v.get_ref<const std::string&>();
          if (k == cfg.item_field || k == cfg.annotator_field || k == cfg.label_field ||
              (!cfg.batch_field.empty() && k == cfg.batch_field)) {
            if (std::find(seen_keys.begin(), seen_keys.end(), k) != seen_keys.end()) duplicate = k;
            seen_keys.push_back(k);
          }
        }
        return true;
      });
    } catch (const json::exception& e) {
      throw Error(std::string("line is not valid JSON: ") + e.what(), b.where(line), "one JSON object per line");
    }
    if (!obj.is_object()) throw Error(std::string("line is a JSON ") + obj.type_name(), b.where(line), "a JSON object");
    if (!duplicate.empty()) throw Error("field \"" + duplicate + "\" appears twice", b.where(line), "each field once");
    const std::string item = scalar(obj, cfg.item_field, true, false, "a non-empty string or an integer");
    const std::string annotator = scalar(obj, cfg.annotator_field, true, false, "a non-empty string or an integer");
    const std::string label = scalar(obj, cfg.label_field, true, false, "a non-empty string or an integer");
    const std::string batch =
        cfg.batch_field.empty() ? std::string() : scalar(obj, cfg.batch_field, false, true, "a string or an integer");
    b.add(item, annotator, label, batch, line);
  }
  if (in.bad()) throw Error("could not be read to the end", path, "a readable JSON-lines label file");
  LabelSet s = std::move(b).finish();
  if (s.records == 0) throw Error("the file has no labels", path, "at least one JSON line with a label");
  return s;
}


// ---------------------------------------------------------------------------------------
// Agreement of a label set

// Kappa over one scope: the whole set (name "") or one batch (its name).
struct ScopeAgreement {
  std::string name;
  std::string method;  // "cohen" (exactly 2 annotators in scope) or "fleiss"
  KappaResult kappa;
  std::size_t items = 0, annotators = 0, raters_per_item = 0;
};

// Cohen's kappa of two annotators over the items both labelled.
struct PairAgreement {
  std::string a, b;  // a comes first in LabelSet::annotators
  KappaResult kappa;  // kappa.items = shared items
};

struct AgreementReport {
  ScopeAgreement overall;
  std::vector<PairAgreement> pairs;      // pairs with >= 1 shared item, in annotator order
  std::vector<ScopeAgreement> batches;   // one per batch in first-seen order; empty when no item names a batch
};

namespace annotation_detail {

inline std::string scope_where(const LabelSet& s, const std::string* batch) {
  std::string w = s.source.empty() ? std::string("labels") : s.source;
  if (batch) w += ": batch '" + *batch + "'";
  return w;
}

// Maps the categories that occur (global indices, any order, repeats allowed) to 0..k-1
// in label order; returns k.
inline std::size_t compact(std::vector<std::size_t>& local, std::vector<std::size_t> present) {
  std::sort(present.begin(), present.end());
  present.erase(std::unique(present.begin(), present.end()), present.end());
  for (std::size_t i = 0; i < present.size(); ++i) local[present[i]] = i;
  return present.size();
}

// Cohen's kappa of pairs (category of A, category of B), global category indices.
inline KappaResult cohen_of_pairs(const LabelSet& s, const std::vector<std::pair<std::size_t, std::size_t>>& pairs,
                                  KappaWeights w) {
  std::vector<std::size_t> present, local(s.categories.size());
  for (auto [x, y] : pairs) {
    present.push_back(x);
    present.push_back(y);
  }
  const std::size_t k = compact(local, std::move(present));
  std::vector<double> table(k * k, 0.0);
  for (auto [x, y] : pairs) table[local[x] * k + local[y]] += 1.0;
  return cohen_kappa_table(table, k, w);
}

// Every item in `items` carries the same number m >= 2 of labels; returns m.
inline std::size_t equal_raters(const LabelSet& s, std::span<const std::size_t> items, const std::string& where) {
  if (items.empty()) throw Error("no items", where, "at least 1 item");
  const std::size_t first = items[0], m = s.votes[first].size();
  for (std::size_t it : items) {
    const std::size_t n = s.votes[it].size();
    if (n < 2)
      throw Error(::tmoe::detail::cat("item '", s.items[it], "' has ", n, " label(s)"), where,
                  "at least 2 labels on every item (the same number on each)");
    if (n != m)
      throw Error(::tmoe::detail::cat("item '", s.items[it], "' has ", n, " label(s) but item '", s.items[first],
                                      "' has ", m),
                  where, "the same number of labels on every item");
  }
  return m;
}

inline ScopeAgreement scope_agreement(const LabelSet& s, std::span<const std::size_t> items, KappaWeights w,
                                      const std::string* batch) {
  const std::string where = scope_where(s, batch);
  ScopeAgreement r;
  if (batch) r.name = *batch;
  const std::size_t m = equal_raters(s, items, where);
  std::vector<char> seen(s.annotators.size(), 0);
  std::vector<std::size_t> who;
  for (std::size_t it : items)
    for (auto& v : s.votes[it])
      if (!seen[v.annotator]) {
        seen[v.annotator] = 1;
        who.push_back(v.annotator);
      }
  r.items = items.size();
  r.annotators = who.size();
  r.raters_per_item = m;
  if (who.size() == 2) {
    const std::size_t a = std::min(who[0], who[1]);
    std::vector<std::pair<std::size_t, std::size_t>> pairs;
    pairs.reserve(items.size());
    for (std::size_t it : items) {
      const auto& v = s.votes[it];  // exactly the two annotators, once each
      pairs.emplace_back(v[0].annotator == a ? v[0].category : v[1].category,
                         v[0].annotator == a ? v[1].category : v[0].category);
    }
    r.method = "cohen";
    r.kappa = cohen_of_pairs(s, pairs, w);
    return r;
  }
  std::vector<std::size_t> present, local(s.categories.size());
  for (std::size_t it : items)
    for (auto& v : s.votes[it]) present.push_back(v.category);
  const std::size_t k = compact(local, std::move(present));
  std::vector<std::int64_t> table(items.size() * k, 0);
  for (std::size_t i = 0; i < items.size(); ++i)
    for (auto& v : s.votes[items[i]]) ++table[i * k + local[v.category]];
  r.method = "fleiss";
  r.kappa = fleiss_kappa(table, items.size(), k);
  return r;
}

inline std::vector<std::size_t> all_items(const LabelSet& s) {
  std::vector<std::size_t> v(s.items.size());
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = i;
  return v;
}

inline std::vector<std::vector<std::size_t>> items_by_batch(const LabelSet& s) {
  std::vector<std::vector<std::size_t>> by(s.batches.size());
  for (std::size_t i = 0; i < s.items.size(); ++i) by[s.item_batch[i]].push_back(i);
  return by;
}

inline std::size_t annotator_index(const LabelSet& s, std::string_view name) {
  for (std::size_t i = 0; i < s.annotators.size(); ++i)
    if (s.annotators[i] == name) return i;
  throw Error("no annotator '" + std::string(name) + "'", scope_where(s, nullptr), "an annotator of the label set");
}

}  // namespace annotation_detail

// Fleiss' kappa over every item of the set (each must carry the same number >= 2 of labels).
inline KappaResult fleiss_kappa(const LabelSet& s) {
  const auto items = annotation_detail::all_items(s);
  (void)annotation_detail::equal_raters(s, items, annotation_detail::scope_where(s, nullptr));
  std::vector<std::vector<std::int64_t>> table(items.size(), std::vector<std::int64_t>(s.categories.size(), 0));
  for (std::size_t i : items)
    for (auto& v : s.votes[i]) ++table[i][v.category];
  return fleiss_kappa(table);
}

// Cohen's kappa of annotators a and b over the items both labelled (tmoe::Error when none).
inline KappaResult cohen_kappa(const LabelSet& s, std::string_view a, std::string_view b,
                               KappaWeights w = KappaWeights::none) {
  const std::size_t ia = annotation_detail::annotator_index(s, a), ib = annotation_detail::annotator_index(s, b);
  std::vector<std::pair<std::size_t, std::size_t>> pairs;
  for (auto& item : s.votes) {
    const LabelSet::Vote *va = nullptr, *vb = nullptr;
    for (auto& v : item) {
      if (v.annotator == ia) va = &v;
      if (v.annotator == ib) vb = &v;
    }
    if (va && vb) pairs.emplace_back(va->category, vb->category);
  }
  if (pairs.empty() || ia == ib)
    throw Error("annotators '" + std::string(a) + "' and '" + std::string(b) + "' share no item",
                annotation_detail::scope_where(s, nullptr), "two different annotators with at least 1 common item");
  return annotation_detail::cohen_of_pairs(s, pairs, w);
}

struct AgreementConfig {
  std::string weights = "none";  // Cohen weights: none | linear | quadratic (Fleiss is unweighted)

  static constexpr auto fields() {
    using C = AgreementConfig;
    return std::make_tuple(field("weights", &C::weights, "Cohen's kappa weights: none, linear or quadratic"));
  }
  void validate() const { (void)parse_kappa_weights(weights, "agreement.weights"); }
};

// Overall kappa, per-pair Cohen and per-batch kappa (see the header comment for the rules).
inline AgreementReport agreement_report(const LabelSet& s, const AgreementConfig& cfg = {}) {
  cfg.validate();
  const KappaWeights w = parse_kappa_weights(cfg.weights, "agreement.weights");
  AgreementReport r;
  const auto items = annotation_detail::all_items(s);
  r.overall = annotation_detail::scope_agreement(s, items, w, nullptr);

  std::map<std::pair<std::size_t, std::size_t>, std::vector<std::pair<std::size_t, std::size_t>>> shared;
  for (auto& item : s.votes)
    for (auto& x : item)
      for (auto& y : item)
        if (x.annotator < y.annotator) shared[{x.annotator, y.annotator}].emplace_back(x.category, y.category);
  for (auto& [ab, pairs] : shared)
    r.pairs.push_back({s.annotators[ab.first], s.annotators[ab.second], annotation_detail::cohen_of_pairs(s, pairs, w)});

  if (s.has_batches()) {
    const auto by = annotation_detail::items_by_batch(s);
    for (std::size_t b = 0; b < by.size(); ++b)
      r.batches.push_back(annotation_detail::scope_agreement(s, by[b], w, &s.batches[b]));
  }
  return r;
}

// ---------------------------------------------------------------------------------------
// Filtering and resolving

enum class DropReason { batch_kappa_below, batch_kappa_undefined, item_agreement_below, too_few_raters, tie };
inline constexpr std::size_t kDropReasons = 5;

inline const char* to_string(DropReason r) {
  switch (r) {
    case DropReason::batch_kappa_below: return "batch kappa below threshold";
    case DropReason::batch_kappa_undefined: return "batch kappa undefined";
    case DropReason::item_agreement_below: return "item agreement below threshold";
    case DropReason::too_few_raters: return "fewer than 2 labels";
    default: return "tied majority";
  }
}

struct FilterConfig {
  std::string mode = "batch";   // batch | item | both
  double threshold = 0.8;       // minimum batch kappa (batch, both)
  double item_agreement = 1.0;  // minimum share of agreeing label pairs on an item (item, both)
  std::string weights = "none"; // Cohen weights of batch kappa
  std::string ties = "first";   // first: tied label first in label order wins; drop: drop the item
  bool keep_undefined = false;  // a batch whose kappa is undefined (one single label used) passes

  static constexpr auto fields() {
    using C = FilterConfig;
    return std::make_tuple(
        field("mode", &C::mode, "batch | item | both: what must reach its threshold for an item to be kept"),
        field("threshold", &C::threshold, "minimum kappa of an item's batch, in [-1, 1]"),
        field("item_agreement", &C::item_agreement, "minimum share of agreeing label pairs on one item, in [0, 1]"),
        field("weights", &C::weights, "Cohen's kappa weights of the batch kappa: none, linear or quadratic"),
        field("ties", &C::ties, "first | drop: a tied majority resolves to the first label in label order, or drops"),
        field("keep_undefined", &C::keep_undefined, "keep batches whose kappa is undefined (everyone gave one label)"));
  }
  void validate() const {
    if (mode != "batch" && mode != "item" && mode != "both")
      throw Error("mode is '" + mode + "'", "filter.mode", "batch, item or both");
    if (!std::isfinite(threshold) || threshold < -1 || threshold > 1)
      throw Error(::tmoe::detail::cat("threshold is ", threshold), "filter.threshold", "a kappa in [-1, 1]");
    if (!std::isfinite(item_agreement) || item_agreement < 0 || item_agreement > 1)
      throw Error(::tmoe::detail::cat("item_agreement is ", item_agreement), "filter.item_agreement",
                  "a share in [0, 1]");
    (void)parse_kappa_weights(weights, "filter.weights");
    if (ties != "first" && ties != "drop") throw Error("ties is '" + ties + "'", "filter.ties", "first or drop");
  }
};

struct ResolvedLabel {
  std::string item, batch, label;
  std::size_t votes = 0;   // labels for the winning label
  std::size_t raters = 0;  // labels on the item
  double agreement = std::numeric_limits<double>::quiet_NaN();  // share of agreeing label pairs; NaN below 2 labels
};

struct DroppedItem {
  std::string item, batch;
  DropReason reason;
};

struct FilterResult {
  std::vector<ResolvedLabel> kept;   // in item order
  std::vector<DroppedItem> dropped;  // in item order
  std::size_t kept_labels = 0, dropped_labels = 0;  // annotator labels behind kept / dropped items
  std::array<std::size_t, kDropReasons> dropped_by{};
  std::vector<ScopeAgreement> batches;  // the batch kappas that decided (modes batch, both)

  std::size_t count(DropReason r) const { return dropped_by[static_cast<std::size_t>(r)]; }
};

// Share of agreeing label pairs on item `it` (Fleiss' P_i); NaN below 2 labels.
inline double item_agreement(const LabelSet& s, std::size_t it) {
  const auto& v = s.votes.at(it);
  const double m = static_cast<double>(v.size());
  if (v.size() < 2) return std::numeric_limits<double>::quiet_NaN();
  std::map<std::size_t, double> n;
  for (auto& x : v) n[x.category] += 1;
  double agree = 0;
  for (auto& [c, k] : n) agree += k * (k - 1);
  return agree / (m * (m - 1));
}

// Keeps the items that pass cfg and resolves each to its majority label.
inline FilterResult filter_labels(const LabelSet& s, const FilterConfig& cfg = {}) {
  cfg.validate();
  const KappaWeights w = parse_kappa_weights(cfg.weights, "filter.weights");
  const bool by_batch = cfg.mode != "item", by_item = cfg.mode != "batch";
  FilterResult r;
  std::vector<int> batch_state(s.batches.size(), 0);  // 0 pass, 1 below, 2 undefined
  if (by_batch) {
    const auto by = annotation_detail::items_by_batch(s);
    for (std::size_t b = 0; b < by.size(); ++b) {
      auto a = annotation_detail::scope_agreement(s, by[b], w, s.has_batches() ? &s.batches[b] : nullptr);
      a.name = s.batches[b];
      if (!a.kappa.defined()) batch_state[b] = cfg.keep_undefined ? 0 : 2;
      else batch_state[b] = a.kappa.kappa >= cfg.threshold ? 0 : 1;
      r.batches.push_back(std::move(a));
    }
  }
  auto drop = [&](std::size_t it, DropReason why) {
    r.dropped.push_back({s.items[it], s.batches[s.item_batch[it]], why});
    r.dropped_labels += s.votes[it].size();
    ++r.dropped_by[static_cast<std::size_t>(why)];
  };
  for (std::size_t it = 0; it < s.items.size(); ++it) {
    const std::size_t b = s.item_batch[it];
    if (by_batch && batch_state[b] != 0) {
      drop(it, batch_state[b] == 1 ? DropReason::batch_kappa_below : DropReason::batch_kappa_undefined);
      continue;
    }
    const double agree = item_agreement(s, it);
    if (by_item && s.votes[it].size() < 2) {
      drop(it, DropReason::too_few_raters);
      continue;
    }
    if (by_item && !(agree >= cfg.item_agreement)) {
      drop(it, DropReason::item_agreement_below);
      continue;
    }
    std::map<std::size_t, std::size_t> count;  // ordered by category = label order
    for (auto& v : s.votes[it]) ++count[v.category];
    std::size_t best = 0, top = 0, tied = 0;
    for (auto& [c, n] : count) {
      if (n > top) {
        top = n;
        best = c;
        tied = 1;
      } else if (n == top) {
        ++tied;
      }
    }
    if (tied > 1 && cfg.ties == "drop") {
      drop(it, DropReason::tie);
      continue;
    }
    r.kept.push_back({s.items[it], s.batches[b], s.categories[best], top, s.votes[it].size(), agree});
    r.kept_labels += s.votes[it].size();
  }
  return r;
}

}  // namespace tmoe::data
