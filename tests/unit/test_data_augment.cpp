#define BOOST_TEST_MODULE data_augment
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "tmoe/data/augment.hpp"

namespace utf8 = tmoe::data::utf8;
using tmoe::data::AugmentConfig;
using tmoe::data::NoiseCounts;
using tmoe::data::Record;
using Records = std::vector<Record>;

namespace {

// n code points drawn with std::mt19937(seed) from lower-case ASCII letters and spaces.
std::string ascii_text(std::size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned r = g() % 27;
    s.push_back(r == 26 ? ' ' : static_cast<char>('a' + r));
  }
  return s;
}

// n words of 3 to 7 letters, single spaces between.
std::vector<std::string> word_list(std::size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::vector<std::string> w;
  for (std::size_t i = 0; i < n; ++i) {
    std::string x;
    const unsigned len = 3 + g() % 5;
    for (unsigned j = 0; j < len; ++j) x.push_back(static_cast<char>('a' + g() % 26));
    w.push_back(x);
  }
  return w;
}
std::string join(const std::vector<std::string>& w) {
  std::string s;
  for (std::size_t i = 0; i < w.size(); ++i) s += (i ? " " : "") + w[i];
  return s;
}
std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> w;
  std::size_t b = 0;
  while (b < s.size()) {
    std::size_t e = s.find(' ', b);
    if (e == std::string::npos) e = s.size();
    if (e > b) w.push_back(s.substr(b, e - b));
    b = e + 1;
  }
  return w;
}

// |n - expected| within 5 binomial standard deviations.
void check_rate(std::size_t n, std::size_t trials, double p, const char* what) {
  const double mean = static_cast<double>(trials) * p, sd = std::sqrt(mean * (1 - p));
  BOOST_TEST(std::abs(static_cast<double>(n) - mean) < 5 * sd, what << ": " << n << " edits, expected about " << mean);
}

const tmoe::RngKey kKey{99, 0, tmoe::data::kAugmentCharSite, 0};

}  // namespace

BOOST_AUTO_TEST_CASE(substitution_rate_and_hamming_distance) {
  AugmentConfig c;
  c.char_substitute_rate = 0.1;
  const std::string in = ascii_text(20000, 1);
  NoiseCounts n;
  const std::string out = tmoe::data::char_noise(in, c, kKey, &n);
  BOOST_REQUIRE(out.size() == in.size());
  std::size_t diff = 0;
  for (std::size_t i = 0; i < in.size(); ++i) diff += in[i] != out[i];
  BOOST_TEST(diff == n.substituted);  // a substitute always differs from the original
  check_rate(n.substituted, in.size(), 0.1, "substitute");
  BOOST_TEST(n.total() == n.substituted);
}

BOOST_AUTO_TEST_CASE(insert_delete_swap_rates) {
  const std::string in = ascii_text(20000, 2);
  {
    AugmentConfig c;
    c.char_delete_rate = 0.05;
    NoiseCounts n;
    const std::string out = tmoe::data::char_noise(in, c, kKey, &n);
    BOOST_TEST(out.size() == in.size() - n.deleted);
    check_rate(n.deleted, in.size(), 0.05, "delete");
  }
  {
    AugmentConfig c;
    c.char_insert_rate = 0.05;
    NoiseCounts n;
    const std::string out = tmoe::data::char_noise(in, c, kKey, &n);
    BOOST_TEST(out.size() == in.size() + n.inserted);
    check_rate(n.inserted, in.size(), 0.05, "insert");
  }
  {
    AugmentConfig c;
    c.char_swap_rate = 0.05;
    NoiseCounts n;
    const std::string out = tmoe::data::char_noise(in, c, kKey, &n);
    BOOST_TEST(out.size() == in.size());
    std::string a = in, b = out;
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    BOOST_TEST(a == b);  // swaps only reorder
    // A swap needs a different next character and consumes it: a little under the rate.
    check_rate(n.swapped, in.size(), 0.05 * 0.9, "swap");
  }
  {
    AugmentConfig c;
    c.char_delete_rate = c.char_insert_rate = c.char_substitute_rate = c.char_swap_rate = 0.02;
    NoiseCounts n;
    tmoe::data::char_noise(in, c, kKey, &n);
    check_rate(n.deleted, in.size(), 0.02, "delete of all");
    check_rate(n.inserted, in.size(), 0.02, "insert of all");
    check_rate(n.substituted, in.size(), 0.02, "substitute of all");
  }
}

BOOST_AUTO_TEST_CASE(word_noise_rates) {
  const auto words = word_list(5000, 3);
  const std::string in = join(words);
  const tmoe::RngKey key{5, 0, tmoe::data::kAugmentWordSite, 0};
  {
    AugmentConfig c;
    c.word_drop_rate = 0.2;
    NoiseCounts n;
    const auto out = split(tmoe::data::word_noise(in, c, key, &n));
    BOOST_TEST(out.size() == words.size() - n.words_dropped);
    check_rate(n.words_dropped, words.size(), 0.2, "word drop");
    // What is left is a subsequence of the input.
    std::size_t j = 0;
    for (const auto& w : words) j += j < out.size() && out[j] == w;
    BOOST_TEST(j == out.size());
  }
  {
    AugmentConfig c;
    c.word_duplicate_rate = 0.1;
    NoiseCounts n;
    const auto out = split(tmoe::data::word_noise(in, c, key, &n));
    BOOST_TEST(out.size() == words.size() + n.words_duplicated);
    check_rate(n.words_duplicated, words.size(), 0.1, "word duplicate");
  }
  {
    AugmentConfig c;
    c.word_swap_rate = 0.1;
    NoiseCounts n;
    const auto out = split(tmoe::data::word_noise(in, c, key, &n));
    BOOST_TEST(out.size() == words.size());
    auto a = words, b = out;
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    BOOST_TEST(a == b);
    check_rate(n.words_swapped, words.size(), 0.1 * 0.9, "word swap");
  }
}

BOOST_AUTO_TEST_CASE(word_noise_keeps_white_space_and_one_word) {
  AugmentConfig c;
  c.word_drop_rate = 1.0;
  const tmoe::RngKey key{5, 0, tmoe::data::kAugmentWordSite, 0};
  NoiseCounts n;
  BOOST_TEST(tmoe::data::word_noise("  one two\nthree  four\n", c, key, &n) == "  four\n");
  BOOST_TEST(n.words_dropped == 3u);
  BOOST_TEST(tmoe::data::word_noise("single", c, key) == "single");
  c.word_drop_rate = 0;
  c.word_duplicate_rate = 1.0;
  BOOST_TEST(tmoe::data::word_noise(" a\tb\n", c, key) == " a a\tb b\n");
}

BOOST_AUTO_TEST_CASE(valid_utf8_out_of_any_input) {
  AugmentConfig c;
  c.char_delete_rate = c.char_insert_rate = c.char_substitute_rate = c.char_swap_rate = 0.2;
  c.word_drop_rate = c.word_swap_rate = c.word_duplicate_rate = 0.2;
  const std::string text = "Caf\xC3\xA9 \xE2\x82\xAC" "5, \xF0\x9D\x84\x9E music; "
                           "\xD0\x9C\xD0\xBE\xD1\x81\xD0\xBA\xD0\xB2\xD0\xB0 "
                           "\xE4\xB8\xAD\xE6\x96\x87 and more words here";
  const std::u32string original = utf8::decode(text);
  for (std::uint32_t i = 0; i < 200; ++i) {
    const std::string out = tmoe::data::augment_text(text, c, i);
    BOOST_TEST_REQUIRE(utf8::valid(out));
    for (char32_t cp : utf8::decode(out))  // nothing but the text's own characters
      BOOST_TEST_REQUIRE((cp == U' ' || original.find(cp) != std::u32string::npos));
  }
  // Invalid input bytes become U+FFFD, never pass through.
  const std::string broken = "bad \xFF\xC3 bytes \xED\xA0\x80 here";
  for (std::uint32_t i = 0; i < 50; ++i) BOOST_TEST_REQUIRE(utf8::valid(tmoe::data::augment_text(broken, c, i)));
  // A given alphabet is used for substitutes and insertions.
  AugmentConfig a;
  a.char_insert_rate = 0.3;
  a.char_substitute_rate = 0.3;
  a.alphabet = "\xC3\xA9\xE2\x82\xAC";  // é €
  const std::string out = tmoe::data::char_noise("plain ascii text", a, kKey);
  for (char32_t cp : utf8::decode(out))
    BOOST_TEST_REQUIRE((std::string("plain ascii text").find(static_cast<char>(cp)) != std::string::npos ||
                        cp == 0xE9 || cp == 0x20AC));
  BOOST_TEST(out.find("\xE2\x82\xAC") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(deterministic_from_seed_and_index) {
  AugmentConfig c;
  c.char_substitute_rate = 0.1;
  c.word_swap_rate = 0.1;
  const std::string text = ascii_text(400, 4);
  BOOST_TEST(tmoe::data::augment_text(text, c, 7) == tmoe::data::augment_text(text, c, 7));
  BOOST_TEST(tmoe::data::augment_text(text, c, 7) != tmoe::data::augment_text(text, c, 8));
  BOOST_TEST(tmoe::data::augment_text(text, c, 7, 0) != tmoe::data::augment_text(text, c, 7, 1));
  AugmentConfig other = c;
  other.seed = c.seed + 1;
  BOOST_TEST(tmoe::data::augment_text(text, c, 7) != tmoe::data::augment_text(text, other, 7));

  // The stage: the same input gives the same output; a record's noise depends on its index
  // only, not on the records around it.
  Records r;
  for (int i = 0; i < 20; ++i) r.push_back(Record{"r" + std::to_string(i), "s", ascii_text(200, 10 + i)});
  Records a = r, b = r;
  tmoe::data::Augment(c).apply(a);
  tmoe::data::Augment(c).apply(b);
  BOOST_REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) BOOST_TEST(a[i].text == b[i].text);
  Records head(r.begin(), r.begin() + 5);
  tmoe::data::Augment(c).apply(head);
  for (std::size_t i = 0; i < 5; ++i) BOOST_TEST(head[5 + i].text == a[20 + i].text);
}

BOOST_AUTO_TEST_CASE(append_and_replace_modes) {
  Records r;
  for (int i = 0; i < 10; ++i) r.push_back(Record{"id" + std::to_string(i), "src", ascii_text(300, 50 + i)});
  r.push_back(Record{"tiny", "src", "x"});  // one character: substitution has nothing to choose from
  AugmentConfig c;
  c.char_substitute_rate = 0.1;
  c.copies = 2;
  Records app = r;
  const auto rep = tmoe::data::Augment(c).apply(app);
  BOOST_TEST(rep.records_in == 11u);
  BOOST_TEST(rep.records_added == 20u);
  BOOST_TEST(rep.records_kept == 31u);
  BOOST_TEST(rep.records_dropped == 0u);
  BOOST_TEST(rep.counts.at("unchanged") == 2u);  // both copies of "x"
  BOOST_TEST(rep.bytes_kept == tmoe::data::total_bytes(app));
  BOOST_TEST(app[11].id == "id0#aug1");
  BOOST_TEST(app[12].id == "id0#aug2");
  BOOST_TEST(app[13].id == "id1#aug1");
  BOOST_TEST(app[12].source == "src");
  BOOST_TEST(app[11].text != app[12].text);
  for (std::size_t i = 0; i < 11; ++i) BOOST_TEST(app[i].text == r[i].text);  // originals untouched
  std::size_t subs = 0;
  for (std::size_t i = 11; i < app.size(); ++i) {
    const Record& orig = r[(i - 11) / 2];
    for (std::size_t k = 0; k < orig.text.size(); ++k) subs += orig.text[k] != app[i].text[k];
  }
  BOOST_TEST(rep.counts.at("char_substitute") == subs);

  c.mode = "replace";
  c.copies = 1;
  Records rep_r = r;
  const auto rr = tmoe::data::Augment(c).apply(rep_r);
  BOOST_TEST(rep_r.size() == 11u);
  BOOST_TEST(rr.records_changed == 10u);
  BOOST_TEST(rr.records_added == 0u);
  BOOST_TEST(rep_r[0].id == "id0");
  BOOST_TEST(rep_r[0].text == app[11].text);  // copy 0 of record 0 either way

  // Zero rates: nothing to add.
  Records same = r;
  const auto none = tmoe::data::Augment(AugmentConfig{}).apply(same);
  BOOST_TEST(same.size() == 11u);
  BOOST_TEST(none.counts.at("unchanged") == 11u);
}

BOOST_AUTO_TEST_CASE(augment_in_a_pipeline) {
  tmoe::data::CleanConfig clean;
  clean.min_chars = 5;
  clean.near_dedup = false;
  auto p = tmoe::data::make_pipeline(clean);
  AugmentConfig c;
  c.word_duplicate_rate = 1.0;
  p.emplace<tmoe::data::Augment>(c);
  Records r = {Record{"a", "s", "  one two three four  "}, Record{"b", "s", "five six seven eight"}};
  const auto reports = p.run(r);
  BOOST_TEST(reports.back().stage == "augment");
  BOOST_TEST(r.size() == 4u);
  BOOST_TEST(r[2].id == "a#aug1");
  BOOST_TEST(r[2].text == "one one two two three three four four");
  BOOST_TEST(tmoe::data::format_report(reports).find("augment: records 2 -> 4 (dropped 0, added 2)") !=
             std::string::npos);
}
