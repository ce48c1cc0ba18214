#pragma once
// Noise augmentation of training text: character noise (substitute, insert, delete, swap
// with the next) and word noise (drop, swap with the next, duplicate), as a Stage that
// replaces each record's text or appends noisy copies.
//
// Deterministic: the draws for record i come from Philox keyed by (seed, copy, site, i),
// so a record's noise depends only on the seed, its index in the stream and the copy
// number — not on threads or on the other records' texts. Text is handled as code points
// (invalid input bytes are first replaced by U+FFFD), so the output is always valid UTF-8.
// Each position (code point or word) gets at most one edit, with the probabilities of the
// config's rates; substituted and inserted characters are drawn from `alphabet`, or, when
// that is empty, from the record's own distinct non-space characters, so noise stays in
// the record's script. Word noise runs first, then character noise.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/philox.hpp"
#include "tmoe/data/clean.hpp"

namespace tmoe::data {

// Philox sites of augmentation: character and word noise draw from separate streams.
inline constexpr std::uint32_t kAugmentCharSite = site_id(Site::kAugment, 1);
inline constexpr std::uint32_t kAugmentWordSite = site_id(Site::kAugment, 2);

struct AugmentConfig {
  std::uint64_t seed = 1234;
  double char_substitute_rate = 0.0;  // per code point
  double char_insert_rate = 0.0;      // per code point: insert one before it
  double char_delete_rate = 0.0;      // per code point
  double char_swap_rate = 0.0;        // per code point: swap with the next one
  double word_drop_rate = 0.0;        // per word
  double word_swap_rate = 0.0;        // per word: swap with the next word
  double word_duplicate_rate = 0.0;   // per word: repeat it
  std::string mode = "append";        // "append" noisy copies after the records, or "replace" their text
  std::int64_t copies = 1;            // noisy copies per record in append mode
  std::string alphabet;               // UTF-8 characters to substitute and insert; empty: the record's own

  static constexpr auto fields() {
    using C = AugmentConfig;
    return std::make_tuple(
        field("seed", &C::seed, "seed of the noise"),
        field("char_substitute_rate", &C::char_substitute_rate, "chance per character of a substitution"),
        field("char_insert_rate", &C::char_insert_rate, "chance per character of an insertion before it"),
        field("char_delete_rate", &C::char_delete_rate, "chance per character of its deletion"),
        field("char_swap_rate", &C::char_swap_rate, "chance per character of a swap with the next"),
        field("word_drop_rate", &C::word_drop_rate, "chance per word of dropping it"),
        field("word_swap_rate", &C::word_swap_rate, "chance per word of a swap with the next word"),
        field("word_duplicate_rate", &C::word_duplicate_rate, "chance per word of repeating it"),
        field("mode", &C::mode, "append noisy copies, or replace the texts"),
        field("copies", &C::copies, "noisy copies per record (append mode)"),
        field("alphabet", &C::alphabet, "characters to substitute and insert; empty: the record's own"));
  }

  void validate() const {
    using ::tmoe::detail::cat;
    auto rate = [](double v, const char* name) {
      if (!(v >= 0 && v <= 1)) throw Error(cat(name, " is ", v), cat("augment.", name), "a probability in [0, 1]");
    };
    rate(char_substitute_rate, "char_substitute_rate");
    rate(char_insert_rate, "char_insert_rate");
    rate(char_delete_rate, "char_delete_rate");
    rate(char_swap_rate, "char_swap_rate");
    rate(word_drop_rate, "word_drop_rate");
    rate(word_swap_rate, "word_swap_rate");
    rate(word_duplicate_rate, "word_duplicate_rate");
    const double chars = char_substitute_rate + char_insert_rate + char_delete_rate + char_swap_rate;
    const double words = word_drop_rate + word_swap_rate + word_duplicate_rate;
    if (chars > 1)
      throw Error(cat("character rates sum to ", chars), "augment.char_*_rate",
                  "substitute + insert + delete + swap <= 1 (one edit per character at most)");
    if (words > 1)
      throw Error(cat("word rates sum to ", words), "augment.word_*_rate",
                  "drop + swap + duplicate <= 1 (one edit per word at most)");
    if (mode != "append" && mode != "replace")
      throw Error(cat("mode is '", mode, "'"), "augment.mode", "append or replace");
    if (copies < 1 || copies > 1000)
      throw Error(cat("copies is ", copies), "augment.copies", "an integer in [1, 1000]");
    if (mode == "replace" && copies != 1)
      throw Error(cat("copies is ", copies, " in replace mode"), "augment.copies", "1 when mode is replace");
    if (const std::size_t bad = utf8::first_invalid(alphabet); bad != std::string::npos)
      throw Error(cat("alphabet has invalid UTF-8 at byte ", bad), "augment.alphabet", "valid UTF-8 text");
  }
};

// Edits made, by kind.
struct NoiseCounts {
  std::size_t substituted = 0, inserted = 0, deleted = 0, swapped = 0;
  std::size_t words_dropped = 0, words_swapped = 0, words_duplicated = 0;
  std::size_t total() const {
    return substituted + inserted + deleted + swapped + words_dropped + words_swapped + words_duplicated;
  }
};

namespace augment_detail {

// Sorted distinct non-space code points.
inline std::u32string alphabet_of(std::u32string_view cps) {
  std::u32string a;
  for (char32_t c : cps)
    if (!utf8::is_space(c)) a.push_back(c);
  std::sort(a.begin(), a.end());
  a.erase(std::unique(a.begin(), a.end()), a.end());
  return a;
}

// A code point of the sorted alphabet `a`, different from `avoid` when a has another.
inline char32_t draw_from(std::u32string_view a, std::uint32_t bits, char32_t avoid) {
  const auto it = std::lower_bound(a.begin(), a.end(), avoid);
  const bool has = it != a.end() && *it == avoid;
  const std::size_t n = a.size() - (has ? 1 : 0);
  std::size_t i = bits % n;
  if (has && i >= static_cast<std::size_t>(it - a.begin())) ++i;
  return a[i];
}

}  // namespace augment_detail

// Word noise over `text`: words are runs of non-space code points, and the white space
// between them stays where it is (a dropped word takes the white space after it along,
// unless that holds a line break, which then replaces the white space before it). Never
// drops the last remaining word.
inline std::string word_noise(std::string_view text, const AugmentConfig& cfg, const RngKey& key,
                              NoiseCounts* counts = nullptr) {
  NoiseCounts local;
  NoiseCounts& n = counts ? *counts : local;
  const std::u32string cps = utf8::decode(text);
  std::u32string lead;  // white space before the first word
  std::vector<std::pair<std::u32string, std::u32string>> words;  // (word, white space after it)
  for (std::size_t i = 0; i < cps.size();) {
    std::size_t j = i;
    while (j < cps.size() && !utf8::is_space(cps[j])) ++j;
    std::size_t k = j;
    while (k < cps.size() && utf8::is_space(cps[k])) ++k;
    if (j == i) lead = cps.substr(i, k - i);
    else words.emplace_back(cps.substr(i, j - i), cps.substr(j, k - j));
    i = k;
  }
  const double p_drop = cfg.word_drop_rate, p_dup = p_drop + cfg.word_duplicate_rate,
               p_swap = p_dup + cfg.word_swap_rate;
  std::vector<std::pair<std::u32string, std::u32string>> out;
  std::uint64_t e = 0;
  for (std::size_t i = 0; i < words.size(); ++i) {
    const double u = key.uniform(e++);
    const bool last_left = out.empty() && i + 1 == words.size();
    if (u < p_drop && !last_left) {
      ++n.words_dropped;
      const auto& sep = words[i].second;
      if (!out.empty() && std::any_of(sep.begin(), sep.end(), utf8::is_line_break)) out.back().second = sep;
    } else if (u >= p_drop && u < p_dup) {
      ++n.words_duplicated;
      out.emplace_back(words[i].first, U" ");
      out.push_back(words[i]);
    } else if (u >= p_dup && u < p_swap && i + 1 < words.size() && words[i].first != words[i + 1].first) {
      ++n.words_swapped;
      out.emplace_back(words[i + 1].first, words[i].second);
      out.emplace_back(words[i].first, words[i + 1].second);
      ++i;
    } else {
      out.push_back(words[i]);
    }
  }
  std::u32string res = lead;
  for (const auto& [w, sep] : out) res += w, res += sep;
  return utf8::encode(res);
}

// Character noise over the code points of `text`.
inline std::string char_noise(std::string_view text, const AugmentConfig& cfg, const RngKey& key,
                              NoiseCounts* counts = nullptr) {
  NoiseCounts local;
  NoiseCounts& n = counts ? *counts : local;
  const std::u32string cps = utf8::decode(text);
  const std::u32string alphabet =
      cfg.alphabet.empty() ? augment_detail::alphabet_of(cps) : augment_detail::alphabet_of(utf8::decode(cfg.alphabet));
  const double p_del = cfg.char_delete_rate, p_sub = p_del + cfg.char_substitute_rate,
               p_swap = p_sub + cfg.char_swap_rate, p_ins = p_swap + cfg.char_insert_rate;
  std::u32string out;
  out.reserve(cps.size() + cps.size() / 8 + 1);
  std::uint64_t e = 0;
  for (std::size_t i = 0; i < cps.size(); ++i) {
    const char32_t c = cps[i];
    const double u = key.uniform(e++);
    if (u < p_del) {
      ++n.deleted;
    } else if (u < p_sub) {
      const std::uint32_t bits = key.bits(e++);
      const bool only_self = alphabet.empty() || (alphabet.size() == 1 && alphabet[0] == c);
      if (only_self) {
        out.push_back(c);
      } else {
        out.push_back(augment_detail::draw_from(alphabet, bits, c));
        ++n.substituted;
      }
    } else if (u < p_swap && i + 1 < cps.size() && cps[i + 1] != c) {
      out.push_back(cps[i + 1]);
      out.push_back(c);
      ++n.swapped;
      ++i;
    } else if (u >= p_swap && u < p_ins && !alphabet.empty()) {
      out.push_back(alphabet[key.bits(e++) % alphabet.size()]);
      out.push_back(c);
      ++n.inserted;
    } else {
      out.push_back(c);
    }
  }
  return utf8::encode(out);
}

// Word noise, then character noise, for record `index` and copy `copy`.
inline std::string augment_text(std::string_view text, const AugmentConfig& cfg, std::uint32_t index,
                                std::uint32_t copy = 0, NoiseCounts* counts = nullptr) {
  const RngKey word_key{cfg.seed, copy, kAugmentWordSite, index};
  const RngKey char_key{cfg.seed, copy, kAugmentCharSite, index};
  const bool words = cfg.word_drop_rate + cfg.word_swap_rate + cfg.word_duplicate_rate > 0;
  const bool chars = cfg.char_substitute_rate + cfg.char_insert_rate + cfg.char_delete_rate + cfg.char_swap_rate > 0;
  std::string t = words ? word_noise(text, cfg, word_key, counts) : utf8::repair(text);
  return chars ? char_noise(t, cfg, char_key, counts) : t;
}

// The noise as a Stage. In replace mode each text is replaced; in append mode, after the
// records come their copies in record order (copy c of record i has id "<id>#aug<c+1>" and
// the record's source); a copy that came out equal to its record is not added
// ("unchanged"). Counts the edits by kind.
class Augment : public Stage {
 public:
  explicit Augment(AugmentConfig cfg) : cfg_(std::move(cfg)) { cfg_.validate(); }
  std::string name() const override { return "augment"; }

  StageReport apply(std::vector<Record>& records) override {
    using ::tmoe::detail::cat;
    StageReport rep = clean_detail::begin_report(name(), records);
    if (records.size() > std::numeric_limits<std::uint32_t>::max())
      throw Error(cat("augment got ", records.size(), " records"), "augment", "fewer than 2^32 records");
    NoiseCounts n;
    std::size_t unchanged = 0;
    const std::size_t count = records.size();
    for (std::size_t i = 0; i < count; ++i) {
      const auto copies = static_cast<std::uint32_t>(cfg_.mode == "replace" ? 1 : cfg_.copies);
      for (std::uint32_t c = 0; c < copies; ++c) {
        std::string t = augment_text(records[i].text, cfg_, static_cast<std::uint32_t>(i), c, &n);
        if (t == records[i].text) {
          ++unchanged;
        } else if (cfg_.mode == "replace") {
          records[i].text = std::move(t);
          ++rep.records_changed;
        } else {
          records.push_back(Record{cat(records[i].id, "#aug", c + 1), records[i].source, std::move(t)});
          ++rep.records_added;
        }
      }
    }
    rep.counts = {{"char_substitute", n.substituted}, {"char_insert", n.inserted}, {"char_delete", n.deleted},
                  {"char_swap", n.swapped},          {"word_drop", n.words_dropped}, {"word_swap", n.words_swapped},
                  {"word_duplicate", n.words_duplicated}, {"unchanged", unchanged}};
    return clean_detail::end_report(rep, records);
  }

 private:
  AugmentConfig cfg_;
};

}  // namespace tmoe::data
