#pragma once
// Cleaning stages over a stream of records (records.hpp). A stage is an object with a name
// and apply(records) -> StageReport: it rewrites texts or drops records in place, keeping
// the order of what it keeps, and reports records and bytes in, kept and dropped, with a
// count per drop reason and the first few ids dropped for each. A Pipeline runs stages in
// order; make_pipeline(CleanConfig) builds the standard one:
//
//   normalize → dedup_id → dedup_content → quality → near_dedup
//
// Stages are coarse-grained (one virtual call per stage over all records, STYLE.md), take
// their settings from the flat CleanConfig (one `fields()` list for YAML and the command
// line, as config.hpp), and are deterministic: the same records in the same order give the
// same output, and de-duplication always keeps the first record of a group.
//
// Text is UTF-8. utf8:: holds a validator that accepts exactly the well-formed sequences of
// Unicode Table 3-7 (no overlongs, no surrogates, nothing above U+10FFFF, no truncated
// sequences) and a decoder that replaces each maximal ill-formed subpart by one U+FFFD, as
// the Unicode standard recommends. Character classes (letters, spaces, digits) and
// lower-casing use small built-in tables, not the full Unicode database; see
// utf8::to_lower and utf8::is_letter for what they cover.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tmoe/core/checksum.hpp"
#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/utf8.hpp"
#include "tmoe/core/threading.hpp"
#include "tmoe/data/records.hpp"

namespace tmoe::data {

namespace utf8 {

// The codec lives in core/utf8.hpp (the config loader validates with it too).
using ::tmoe::utf8::append;
using ::tmoe::utf8::first_invalid;
using ::tmoe::utf8::kInvalid;
using ::tmoe::utf8::kReplacement;
using ::tmoe::utf8::next;
using ::tmoe::utf8::valid;

// The code points of s, each maximal ill-formed subpart replaced by U+FFFD; `replaced`
// (when given) receives the number of replacements.
inline std::u32string decode(std::string_view s, std::size_t* replaced = nullptr) {
  std::u32string out;
  out.reserve(s.size());
  std::size_t bad = 0;
  for (std::size_t pos = 0; pos < s.size();) {
    char32_t cp = next(s, pos);
    if (cp == kInvalid) cp = kReplacement, ++bad;
    out.push_back(cp);
  }
  if (replaced) *replaced = bad;
  return out;
}

inline std::string encode(std::u32string_view cps) {
  std::string out;
  out.reserve(cps.size());
  for (char32_t c : cps) append(out, c);
  return out;
}

// s with each maximal ill-formed subpart replaced by U+FFFD (valid input is returned as is).
inline std::string repair(std::string_view s, std::size_t* replaced = nullptr) {
  return encode(decode(s, replaced));
}

// Code points in s, counting each ill-formed subpart as one.
inline std::size_t length(std::string_view s) {
  std::size_t n = 0;
  for (std::size_t pos = 0; pos < s.size(); ++n) next(s, pos);
  return n;
}

// Line breaks: LF, CR, NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR.
inline bool is_line_break(char32_t c) { return c == '\n' || c == '\r' || c == 0x85 || c == 0x2028 || c == 0x2029; }

// Horizontal white space: tab, VT, FF, space, NBSP, the Unicode space separators.
inline bool is_horizontal_space(char32_t c) {
  return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}
inline bool is_space(char32_t c) { return is_horizontal_space(c) || is_line_break(c); }

// C0 and C1 controls and DEL, except the white-space ones.
inline bool is_control(char32_t c) {
  return (c < 0x20 || (c >= 0x7F && c <= 0x9F)) && !is_space(c);
}

inline bool is_digit(char32_t c) { return c >= '0' && c <= '9'; }

// Letters: ASCII and Latin-1 letters, combining marks, and every code point from U+0100 on
// outside the punctuation, symbol, arrow, box-drawing, emoji, private-use and specials
// blocks. An approximation without the Unicode database that sorts prose in any script
// as letters, and junk made of symbols as not.
inline bool is_letter(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  if (c < 0x100) return c == 0xAA || c == 0xB5 || c == 0xBA || (c >= 0xC0 && c != 0xD7 && c != 0xF7);
  if (c >= 0x2000 && c <= 0x2BFF) return false;    // punctuation, super/subscripts, currency, symbols, arrows
  if (c >= 0x2E00 && c <= 0x2E7F) return false;    // supplemental punctuation
  if (c >= 0x3000 && c <= 0x303F) return false;    // CJK symbols and punctuation
  if (c >= 0xD800 && c <= 0xF8FF) return false;    // surrogates, private use
  if (c >= 0xFE00 && c <= 0xFE0F) return false;    // variation selectors
  if (c >= 0xFE30 && c <= 0xFE6F) return false;    // CJK compatibility forms, small forms
  if ((c >= 0xFF01 && c <= 0xFF20) || (c >= 0xFF3B && c <= 0xFF40) || (c >= 0xFF5B && c <= 0xFF65))
    return false;                                  // full-width punctuation and digits
  if (c >= 0xFFF0 && c <= 0xFFFF) return false;    // specials, U+FFFD among them
  if (c >= 0x1F000 && c <= 0x1FAFF) return false;  // mahjong .. emoji
  if (c >= 0xF0000) return false;                  // supplementary private use
  return !is_space(c) && !is_control(c);
}

// Simple lower-case mapping of ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic capitals;
// every other code point is returned unchanged. No context rules: capital sigma always
// becomes σ (never final ς), and İ (U+0130) is left as it is.
inline char32_t to_lower(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;
  if (c >= 0x100 && c <= 0x17F) {
    if (c == 0x130 || c == 0x131 || c == 0x138 || c == 0x149 || c == 0x17F) return c;
    if (c == 0x178) return 0xFF;
    const bool odd_capitals = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E);
    if (odd_capitals) return (c % 2 == 1) ? c + 1 : c;
    return (c % 2 == 0) ? c + 1 : c;
  }
  if (c == 0x386) return 0x3AC;
  if (c >= 0x388 && c <= 0x38A) return c + 37;
  if (c == 0x38C) return 0x3CC;
  if (c == 0x38E || c == 0x38F) return c + 63;
  if (c >= 0x391 && c <= 0x3AB && c != 0x3A2) return c + 32;
  if (c >= 0x400 && c <= 0x40F) return c + 80;
  if (c >= 0x410 && c <= 0x42F) return c + 32;
  return c;
}

}  // namespace utf8

// What one stage did. records_kept = records_in - records_dropped + records_added, and the
// drop reasons sum to records_dropped. bytes_dropped counts dropped texts as they came in,
// bytes_kept the kept texts as they leave (a rewriting stage changes their size).
struct StageReport {
  std::string stage;
  std::size_t records_in = 0, records_kept = 0, records_dropped = 0, records_added = 0, records_changed = 0;
  std::size_t bytes_in = 0, bytes_kept = 0, bytes_dropped = 0;
  std::map<std::string, std::size_t> dropped;                // reason -> records
  std::map<std::string, std::size_t> counts;                 // stage-specific counters
  std::map<std::string, std::vector<std::string>> examples;  // reason -> first ids dropped
  double seconds = 0;                                        // wall time of the stage (set by Pipeline)

  static constexpr std::size_t kExamples = 3;
  void drop(const std::string& reason, const Record& r, const std::string& note = {}) {
    ++records_dropped;
    ++dropped[reason];
    bytes_dropped += r.text.size();
    auto& ex = examples[reason];
    if (ex.size() < kExamples) ex.push_back(note.empty() ? r.id : r.id + " " + note);
  }
};

inline std::size_t total_bytes(const std::vector<Record>& records) {
  std::size_t n = 0;
  for (const auto& r : records) n += r.text.size();
  return n;
}

// A cleaning (or augmentation) stage; see the header comment.
class Stage {
 public:
  virtual ~Stage() = default;
  virtual std::string name() const = 0;
  virtual StageReport apply(std::vector<Record>& records) = 0;
};

class Pipeline {
 public:
  Pipeline& add(std::unique_ptr<Stage> stage) {
    stages_.push_back(std::move(stage));
    return *this;
  }
  template <class S, class... Args>
  Pipeline& emplace(Args&&... args) {
    return add(std::make_unique<S>(std::forward<Args>(args)...));
  }
  std::size_t size() const { return stages_.size(); }
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const auto& s : stages_) n.push_back(s->name());
    return n;
  }
  // Runs every stage in order over `records`; one report per stage.
  std::vector<StageReport> run(std::vector<Record>& records) const {
    std::vector<StageReport> reports;
    for (const auto& s : stages_) {
      const auto t0 = std::chrono::steady_clock::now();
      StageReport r = s->apply(records);
      r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r.stage.empty()) r.stage = s->name();
      reports.push_back(std::move(r));
    }
    return reports;
  }

 private:
  std::vector<std::unique_ptr<Stage>> stages_;
};

// The settings of the standard stages, listed once for the YAML loader and the command line.
struct CleanConfig {
  // normalize
  std::string utf8 = "replace";       // invalid UTF-8: "replace" (by U+FFFD) or "reject" (drop the record)
  bool strip_control = true;          // drop C0/C1 control characters other than tab and line breaks
  bool fold_spaces = true;            // runs of horizontal white space -> one space
  bool keep_newlines = true;          // false: line breaks become spaces too
  bool strip_trailing_spaces = true;  // remove white space at the end of each line
  std::int64_t max_blank_lines = 2;   // longer runs of blank lines shrink to this many
  bool trim = true;                   // remove white space at the start and end of the text
  bool lowercase = false;
  // exact de-duplication
  bool dedup_ids = true;
  bool dedup_content = true;
  // quality filter
  bool quality = true;
  std::int64_t min_chars = 50;          // code points; the seed article's 50
  std::int64_t max_chars = 0;           // 0: no limit
  std::int64_t min_words = 0;
  std::int64_t max_line_chars = 0;      // 0: no limit
  double min_letter_share = 0.6;        // letters among non-space characters
  double max_digit_share = 0.3;         // digits among non-space characters
  double max_symbol_share = 0.3;        // punctuation and symbols among non-space characters
  double max_dup_line_share = 0.3;      // non-blank lines repeating an earlier line of the record
  // near-duplicate removal
  bool near_dedup = true;
  double near_threshold = 0.8;          // estimated Jaccard similarity of shingle sets
  std::string shingle = "char";         // "char" or "word"
  std::int64_t shingle_size = 5;        // code points or words per shingle
  std::int64_t minhash_bands = 20;
  std::int64_t minhash_rows = 5;        // bands * rows MinHash values per record
  std::uint64_t minhash_seed = 0;

  static constexpr auto fields() {
    using C = CleanConfig;
    return std::make_tuple(
        field("utf8", &C::utf8, "invalid UTF-8: replace (by U+FFFD) or reject (drop the record)"),
        field("strip_control", &C::strip_control, "drop control characters other than tab and line breaks"),
        field("fold_spaces", &C::fold_spaces, "fold runs of horizontal white space into one space"),
        field("keep_newlines", &C::keep_newlines, "keep line breaks (false: they become spaces)"),
        field("strip_trailing_spaces", &C::strip_trailing_spaces, "remove white space at line ends"),
        field("max_blank_lines", &C::max_blank_lines, "longest run of blank lines kept"),
        field("trim", &C::trim, "remove white space at the start and end of each text"),
        field("lowercase", &C::lowercase, "lower-case ASCII, Latin, Greek and Cyrillic letters"),
        field("dedup_ids", &C::dedup_ids, "drop records whose id was seen before"),
        field("dedup_content", &C::dedup_content, "drop records whose normalised text was seen before"),
        field("quality", &C::quality, "run the quality filter"),
        field("min_chars", &C::min_chars, "fewest characters (code points) a record may have"),
        field("max_chars", &C::max_chars, "most characters a record may have; 0 = no limit"),
        field("min_words", &C::min_words, "fewest words a record may have"),
        field("max_line_chars", &C::max_line_chars, "longest line allowed, in characters; 0 = no limit"),
        field("min_letter_share", &C::min_letter_share, "least share of letters among non-space characters"),
        field("max_digit_share", &C::max_digit_share, "largest share of digits among non-space characters"),
        field("max_symbol_share", &C::max_symbol_share,
              "largest share of punctuation and symbols among non-space characters"),
        field("max_dup_line_share", &C::max_dup_line_share,
              "largest share of non-blank lines that repeat an earlier line"),
        field("near_dedup", &C::near_dedup, "drop near-duplicates (MinHash with LSH bands)"),
        field("near_threshold", &C::near_threshold, "similarity from which a record is a near-duplicate"),
        field("shingle", &C::shingle, "shingles of near-dedup: char or word"),
        field("shingle_size", &C::shingle_size, "code points or words per shingle"),
        field("minhash_bands", &C::minhash_bands, "LSH bands"),
        field("minhash_rows", &C::minhash_rows, "MinHash values per LSH band"),
        field("minhash_seed", &C::minhash_seed, "seed of the MinHash functions"));
  }

  void validate() const {
    using ::tmoe::detail::cat;
    auto nonneg = [](std::int64_t v, const char* name, const char* expected) {
      if (v < 0) throw Error(cat(name, " is ", v), cat("clean.", name), expected);
    };
    auto share = [](double v, const char* name) {
      if (!(v >= 0 && v <= 1)) throw Error(cat(name, " is ", v), cat("clean.", name), "a share in [0, 1]");
    };
    if (utf8 != "replace" && utf8 != "reject")
      throw Error(cat("utf8 is '", utf8, "'"), "clean.utf8", "replace or reject");
    nonneg(max_blank_lines, "max_blank_lines", ">= 0");
    nonneg(min_chars, "min_chars", ">= 0");
    nonneg(max_chars, "max_chars", ">= 0 (0 = no limit)");
    nonneg(min_words, "min_words", ">= 0");
    nonneg(max_line_chars, "max_line_chars", ">= 0 (0 = no limit)");
    if (max_chars > 0 && max_chars < min_chars)
      throw Error(cat("max_chars ", max_chars, " is below min_chars ", min_chars), "clean.max_chars",
                  cat("0 (no limit) or >= min_chars = ", min_chars));
    share(min_letter_share, "min_letter_share");
    share(max_digit_share, "max_digit_share");
    share(max_symbol_share, "max_symbol_share");
    share(max_dup_line_share, "max_dup_line_share");
    if (!(near_threshold > 0 && near_threshold <= 1))
      throw Error(cat("near_threshold is ", near_threshold), "clean.near_threshold", "a similarity in (0, 1]");
    if (shingle != "char" && shingle != "word")
      throw Error(cat("shingle is '", shingle, "'"), "clean.shingle", "char or word");
    if (shingle_size < 1 || shingle_size > 64)
      throw Error(cat("shingle_size is ", shingle_size), "clean.shingle_size", "an integer in [1, 64]");
    if (minhash_bands < 1 || minhash_rows < 1 || minhash_bands > 1024 || minhash_rows > 1024 ||
        minhash_bands * minhash_rows > 1024)
      throw Error(cat("minhash_bands x minhash_rows is ", minhash_bands, " x ", minhash_rows),
                  "clean.minhash_bands/minhash_rows", "bands >= 1, rows >= 1, bands * rows <= 1024");
  }
};

namespace clean_detail {

// Keeps the records for which reason(r) is empty, in order; counts the others under the
// returned reason. bytes_in/records_in must be set by the caller.
template <class Reason>
void filter_records(std::vector<Record>& records, StageReport& rep, Reason&& reason) {
  std::size_t out = 0;
  for (std::size_t i = 0; i < records.size(); ++i) {
    std::string note;
    const std::string why = reason(records[i], note);
    if (!why.empty()) {
      rep.drop(why, records[i], note);
      continue;
    }
    if (out != i) records[out] = std::move(records[i]);
    ++out;
  }
  records.resize(out);
}

inline StageReport begin_report(const std::string& name, const std::vector<Record>& records) {
  StageReport r;
  r.stage = name;
  r.records_in = records.size();
  r.bytes_in = total_bytes(records);
  return r;
}

inline StageReport& end_report(StageReport& r, const std::vector<Record>& records) {
  r.records_kept = records.size();
  r.bytes_kept = total_bytes(records);
  return r;
}

inline std::uint64_t minhash_mix(std::uint64_t x) {  // SplitMix64's finaliser: a bijection on 64 bits
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace clean_detail

// UTF-8 policy, line ends, controls, white space, case (see CleanConfig). Line breaks (CRLF,
// CR, NEL, U+2028/9) become '\n' and a leading byte-order mark is removed. Drops records
// with invalid UTF-8 under utf8=reject ("invalid_utf8") and records left without a
// non-space character ("empty"); counts "replaced_code_points" and records changed.
class Normalize : public Stage {
 public:
  explicit Normalize(CleanConfig cfg = {}) : cfg_(std::move(cfg)) { cfg_.validate(); }
  std::string name() const override { return "normalize"; }

  // The normalised text, or false when it must be dropped for invalid UTF-8.
  bool normalize(std::string_view in, std::string& out, std::size_t& replaced) const {
    replaced = 0;
    if (cfg_.utf8 == "reject" && !utf8::valid(in)) return false;
    const std::u32string cps = utf8::decode(in, &replaced);
    // Pass 1: lines of code points, with line ends, controls, case and space folding applied.
    std::vector<std::u32string> lines(1);
    for (std::size_t i = 0; i < cps.size(); ++i) {
      char32_t c = cps[i];
      if (i == 0 && c == 0xFEFF) continue;
      if (utf8::is_line_break(c)) {
        if (c == '\r' && i + 1 < cps.size() && cps[i + 1] == '\n') ++i;
        if (cfg_.keep_newlines) {
          lines.emplace_back();
          continue;
        }
        c = ' ';
      }
      if (cfg_.strip_control && utf8::is_control(c)) continue;
      if (utf8::is_horizontal_space(c) && cfg_.fold_spaces) {
        std::u32string& line = lines.back();
        if (!line.empty() && line.back() == ' ') continue;
        c = ' ';
      }
      lines.back().push_back(cfg_.lowercase ? utf8::to_lower(c) : c);
    }
    // Pass 2: trailing spaces, runs of blank lines, trimming.
    auto blank = [](const std::u32string& l) {
      return std::all_of(l.begin(), l.end(), [](char32_t c) { return utf8::is_horizontal_space(c); });
    };
    std::u32string text;
    std::int64_t blank_run = 0;
    bool first = true;
    for (auto& line : lines) {
      if (cfg_.strip_trailing_spaces)
        while (!line.empty() && utf8::is_horizontal_space(line.back())) line.pop_back();
      if (blank(line)) {
        if (++blank_run > cfg_.max_blank_lines) continue;
      } else {
        blank_run = 0;
      }
      if (!first) text.push_back('\n');
      first = false;
      text += line;
    }
    if (cfg_.trim) {
      std::size_t b = 0, e = text.size();
      while (b < e && utf8::is_space(text[b])) ++b;
      while (e > b && utf8::is_space(text[e - 1])) --e;
      text = text.substr(b, e - b);
    }
    out = utf8::encode(text);
    return true;
  }

  StageReport apply(std::vector<Record>& records) override {
    StageReport rep = clean_detail::begin_report(name(), records);
    std::size_t replaced_total = 0;
    clean_detail::filter_records(records, rep, [&](Record& r, std::string&) -> std::string {
      std::string text;
      std::size_t replaced = 0;
      if (!normalize(r.text, text, replaced)) return "invalid_utf8";
      bool has_text = false;
      for (std::size_t pos = 0; pos < text.size() && !has_text;) has_text = !utf8::is_space(utf8::next(text, pos));
      if (!has_text) return "empty";
      replaced_total += replaced;
      if (text != r.text) ++rep.records_changed, r.text = std::move(text);
      return {};
    });
    rep.counts["replaced_code_points"] = replaced_total;
    return clean_detail::end_report(rep, records);
  }

 private:
  CleanConfig cfg_;
};

// Drops every record whose id was seen earlier ("duplicate_id").
class DedupById : public Stage {
 public:
  std::string name() const override { return "dedup_id"; }
  StageReport apply(std::vector<Record>& records) override {
    StageReport rep = clean_detail::begin_report(name(), records);
    std::unordered_map<std::string, std::size_t> seen;  // id -> position of the kept record
    clean_detail::filter_records(records, rep, [&](const Record& r, std::string&) -> std::string {
      return seen.emplace(r.id, seen.size()).second ? std::string{} : std::string("duplicate_id");
    });
    return clean_detail::end_report(rep, records);
  }
};

// Drops every record whose text equals an earlier record's ("duplicate_content"): texts
// are grouped by xxh64 and then compared byte for byte, so a hash collision drops nothing.
class DedupByContent : public Stage {
 public:
  std::string name() const override { return "dedup_content"; }
  StageReport apply(std::vector<Record>& records) override {
    StageReport rep = clean_detail::begin_report(name(), records);
    // hash -> positions of the kept records with that hash. filter_records moves the k-th
    // kept record to records[k] before it looks at the next one, so they can be read there.
    std::unordered_map<std::uint64_t, std::vector<std::size_t>> kept;
    std::size_t n_kept = 0;
    clean_detail::filter_records(records, rep, [&](const Record& r, std::string& note) -> std::string {
      auto& group = kept[xxh64(r.text)];
      for (std::size_t k : group)
        if (records[k].text == r.text) return note = "= " + records[k].id, "duplicate_content";
      group.push_back(n_kept++);
      return {};
    });
    return clean_detail::end_report(rep, records);
  }
};

// Heuristic quality checks on the text as it is (run after normalize). A record fails on
// the first of: too_short, too_long, few_words, long_line, many_digits, many_symbols,
// few_letters, repeated_lines. Shares are over non-space code points; words are runs of
// non-space code points; repeated lines compare lines without surrounding spaces.
class QualityFilter : public Stage {
 public:
  explicit QualityFilter(CleanConfig cfg = {}) : cfg_(std::move(cfg)) { cfg_.validate(); }
  std::string name() const override { return "quality"; }

  // Empty when the text passes, else the reason.
  std::string check(std::string_view text) const {
    const std::u32string cps = utf8::decode(text);
    const auto chars = static_cast<std::int64_t>(cps.size());
    if (chars < cfg_.min_chars) return "too_short";
    if (cfg_.max_chars > 0 && chars > cfg_.max_chars) return "too_long";
    std::int64_t words = 0, letters = 0, digits = 0, symbols = 0, line_len = 0, longest_line = 0;
    bool in_word = false;
    for (char32_t c : cps) {
      if (c == '\n') line_len = 0;
      else longest_line = std::max(longest_line, ++line_len);
      if (utf8::is_space(c)) {
        in_word = false;
        continue;
      }
      if (!in_word) ++words, in_word = true;
      if (utf8::is_letter(c)) ++letters;
      else if (utf8::is_digit(c)) ++digits;
      else ++symbols;
    }
    if (words < cfg_.min_words) return "few_words";
    if (cfg_.max_line_chars > 0 && longest_line > cfg_.max_line_chars) return "long_line";
    const double visible = static_cast<double>(std::max<std::int64_t>(1, letters + digits + symbols));
    if (static_cast<double>(digits) / visible > cfg_.max_digit_share) return "many_digits";
    if (static_cast<double>(symbols) / visible > cfg_.max_symbol_share) return "many_symbols";
    if (static_cast<double>(letters) / visible < cfg_.min_letter_share) return "few_letters";
    if (dup_line_share(cps) > cfg_.max_dup_line_share) return "repeated_lines";
    return {};
  }

  // Share of non-blank lines equal (without surrounding spaces) to an earlier line.
  static double dup_line_share(std::u32string_view cps) {
    std::vector<std::u32string_view> lines;
    std::size_t begin = 0;
    while (begin <= cps.size()) {
      std::size_t end = cps.find(U'\n', begin);
      if (end == std::u32string_view::npos) end = cps.size();
      std::u32string_view line = cps.substr(begin, end - begin);
      while (!line.empty() && utf8::is_space(line.front())) line.remove_prefix(1);
      while (!line.empty() && utf8::is_space(line.back())) line.remove_suffix(1);
      if (!line.empty()) lines.push_back(line);
      begin = end + 1;
    }
    if (lines.empty()) return 0.0;
    std::vector<std::u32string_view> sorted;
    std::size_t dups = 0;
    for (auto l : lines) {  // a record has few lines; a sorted vector is enough
      auto it = std::lower_bound(sorted.begin(), sorted.end(), l);
      if (it != sorted.end() && *it == l) ++dups;
      else sorted.insert(it, l);
    }
    return static_cast<double>(dups) / static_cast<double>(lines.size());
  }

  StageReport apply(std::vector<Record>& records) override {
    StageReport rep = clean_detail::begin_report(name(), records);
    clean_detail::filter_records(records, rep, [&](const Record& r, std::string&) { return check(r.text); });
    return clean_detail::end_report(rep, records);
  }

 private:
  CleanConfig cfg_;
};

// Near-duplicate removal with MinHash and LSH banding (Broder 1997; Leskovec et al.,
// "Mining of Massive Datasets", ch. 3). Each text becomes its set of shingles (k
// consecutive code points, or k consecutive words; a text shorter than k is one shingle),
// hashed with xxh64; its signature is the minimum of bands*rows bijective mixes of those
// hashes. Records are visited in order: a record is compared with the kept records that
// share at least one band (all rows equal), and dropped ("near_duplicate") when the share
// of equal signature values — an estimate of the Jaccard similarity, standard error
// sqrt(J(1-J)/(bands*rows)) — with the earliest such record reaches near_threshold.
// Otherwise it is kept and joins the band buckets. So the first record of a cluster stays,
// and the result does not depend on hash-table order. Counts "candidate_pairs" compared and
// "clusters" (kept records that absorbed at least one near-duplicate).
class NearDedup : public Stage {
 public:
  explicit NearDedup(CleanConfig cfg = {}) : cfg_(std::move(cfg)) {
    cfg_.validate();
    const std::size_t n = static_cast<std::size_t>(cfg_.minhash_bands * cfg_.minhash_rows);
    for (std::size_t i = 0; i < n; ++i)
      salts_.push_back(clean_detail::minhash_mix(cfg_.minhash_seed + 0x9E3779B97F4A7C15ull * (i + 1)));
  }
  std::string name() const override { return "near_dedup"; }

  // The xxh64 of each shingle of `text` (with repeats).
  std::vector<std::uint64_t> shingles(std::string_view text) const {
    const auto k = static_cast<std::size_t>(cfg_.shingle_size);
    std::vector<std::uint64_t> out;
    if (cfg_.shingle == "char") {
      std::vector<std::size_t> starts;  // byte offset of each code point, then the end
      for (std::size_t pos = 0; pos < text.size();) starts.push_back(pos), utf8::next(text, pos);
      const std::size_t n = starts.size();
      starts.push_back(text.size());
      if (n <= k) return {xxh64(text)};
      for (std::size_t i = 0; i + k <= n; ++i) out.push_back(xxh64(text.substr(starts[i], starts[i + k] - starts[i])));
    } else {
      std::vector<std::string_view> words;  // runs of non-space code points
      std::size_t pos = 0, begin = 0;
      while (pos < text.size()) {
        const std::size_t at = pos;
        if (utf8::is_space(utf8::next(text, pos))) {
          if (at > begin) words.push_back(text.substr(begin, at - begin));
          begin = pos;
        }
      }
      if (pos > begin) words.push_back(text.substr(begin, pos - begin));
      const std::size_t len = std::min(words.size(), k);
      for (std::size_t i = 0; i + len <= words.size() && (len > 0 || i == 0); ++i) {
        Xxh64 h;
        for (std::size_t j = i; j < i + len; ++j) h.update(words[j]), h.update(" ", 1);
        out.push_back(h.digest());
      }
    }
    return out;
  }

  std::vector<std::uint64_t> signature(std::string_view text) const {
    std::vector<std::uint64_t> sig(salts_.size(), ~std::uint64_t{0});
    std::vector<std::uint64_t> sh = shingles(text);
    std::sort(sh.begin(), sh.end());  // a repeated shingle changes no minimum
    sh.erase(std::unique(sh.begin(), sh.end()), sh.end());
    for (std::uint64_t h : sh)
      for (std::size_t i = 0; i < salts_.size(); ++i)
        sig[i] = std::min(sig[i], clean_detail::minhash_mix(h ^ salts_[i]));
    return sig;
  }

  // The share of equal values of two signatures: the estimated Jaccard similarity.
  static double similarity(const std::vector<std::uint64_t>& a, const std::vector<std::uint64_t>& b) {
    std::size_t same = 0;
    for (std::size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
    return a.empty() ? 0.0 : static_cast<double>(same) / static_cast<double>(a.size());
  }

  StageReport apply(std::vector<Record>& records) override {
    StageReport rep = clean_detail::begin_report(name(), records);
    const auto bands = static_cast<std::size_t>(cfg_.minhash_bands), rows = static_cast<std::size_t>(cfg_.minhash_rows);
    std::vector<std::vector<std::uint64_t>> kept_sigs;
    std::vector<std::string> kept_ids;
    std::vector<bool> absorbed;
    std::unordered_map<std::uint64_t, std::vector<std::uint32_t>> buckets;  // band key -> kept indices
    std::size_t candidates = 0;
    std::vector<std::uint64_t> keys(bands);
    std::vector<std::uint32_t> cands;
    // Signatures are independent per record: computed in parallel, then matched in order.
    std::vector<std::vector<std::uint64_t>> sigs(records.size());
    parallel_for(static_cast<std::int64_t>(records.size()),
                 [&](std::int64_t i) { sigs[static_cast<std::size_t>(i)] = signature(records[static_cast<std::size_t>(i)].text); });
    std::size_t next = 0;
    clean_detail::filter_records(records, rep, [&](const Record& r, std::string& note) -> std::string {
      auto sig = std::move(sigs[next++]);
      cands.clear();
      for (std::size_t b = 0; b < bands; ++b) {
        keys[b] = xxh64(sig.data() + b * rows, rows * sizeof(std::uint64_t), b);
        if (auto it = buckets.find(keys[b]); it != buckets.end())
          cands.insert(cands.end(), it->second.begin(), it->second.end());
      }
      std::sort(cands.begin(), cands.end());
      cands.erase(std::unique(cands.begin(), cands.end()), cands.end());
      for (std::uint32_t c : cands) {
        ++candidates;
        const double s = similarity(sig, kept_sigs[c]);
        if (s >= cfg_.near_threshold) {
          absorbed[c] = true;
          note = ::tmoe::detail::cat("~ ", kept_ids[c], " (", s, ")");
          return "near_duplicate";
        }
      }
      const auto idx = static_cast<std::uint32_t>(kept_sigs.size());
      for (std::size_t b = 0; b < bands; ++b) buckets[keys[b]].push_back(idx);
      kept_sigs.push_back(std::move(sig));
      kept_ids.push_back(r.id);
      absorbed.push_back(false);
      return {};
    });
    rep.counts["candidate_pairs"] = candidates;
    rep.counts["clusters"] = static_cast<std::size_t>(std::count(absorbed.begin(), absorbed.end(), true));
    return clean_detail::end_report(rep, records);
  }

 private:
  CleanConfig cfg_;
  std::vector<std::uint64_t> salts_;
};

// The standard pipeline: normalize, then whichever of dedup_id, dedup_content, quality,
// near_dedup the config turns on, in that order.
inline Pipeline make_pipeline(const CleanConfig& cfg) {
  cfg.validate();
  Pipeline p;
  p.emplace<Normalize>(cfg);
  if (cfg.dedup_ids) p.emplace<DedupById>();
  if (cfg.dedup_content) p.emplace<DedupByContent>();
  if (cfg.quality) p.emplace<QualityFilter>(cfg);
  if (cfg.near_dedup) p.emplace<NearDedup>(cfg);
  return p;
}

// One line per stage: records in/kept/dropped(/added), bytes in/kept, drop reasons, counters.
inline std::string format_report(const std::vector<StageReport>& reports) {
  using ::tmoe::detail::cat;
  std::string out;
  for (const auto& r : reports) {
    out += cat(r.stage, ": records ", r.records_in, " -> ", r.records_kept, " (dropped ", r.records_dropped);
    if (r.records_added) out += cat(", added ", r.records_added);
    if (r.records_changed) out += cat(", changed ", r.records_changed);
    out += cat("), bytes ", r.bytes_in, " -> ", r.bytes_kept);
    if (r.seconds > 0) out += cat(", ", static_cast<double>(static_cast<long long>(r.seconds * 1000)) / 1000, " s");
    const char* sep = "; dropped: ";
    for (const auto& [reason, n] : r.dropped) out += cat(sep, reason, " ", n), sep = ", ";
    sep = "; ";
    for (const auto& [key, n] : r.counts) out += cat(sep, key, " ", n), sep = ", ";
    out += "\n";
  }
  return out;
}

inline nlohmann::json to_json(const StageReport& r) {
  return {{"stage", r.stage},
          {"records_in", r.records_in},
          {"records_kept", r.records_kept},
          {"records_dropped", r.records_dropped},
          {"records_added", r.records_added},
          {"records_changed", r.records_changed},
          {"bytes_in", r.bytes_in},
          {"bytes_kept", r.bytes_kept},
          {"bytes_dropped", r.bytes_dropped},
          {"dropped", r.dropped},
          {"counts", r.counts},
          {"examples", r.examples},
          {"seconds", r.seconds}};
}

}  // namespace tmoe::data
