#define BOOST_TEST_MODULE data_clean
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "tmoe/data/clean.hpp"

namespace utf8 = tmoe::data::utf8;
using tmoe::data::CleanConfig;
using tmoe::data::Record;
using tmoe::data::StageReport;
using Records = std::vector<Record>;

namespace {

Records make(const std::vector<std::pair<std::string, std::string>>& id_text) {
  Records r;
  for (const auto& [id, text] : id_text) r.push_back(Record{id, "test", text});
  return r;
}

std::vector<std::string> ids(const Records& r) {
  std::vector<std::string> v;
  for (const auto& x : r) v.push_back(x.id);
  return v;
}

// The report's own bookkeeping holds: kept = in - dropped + added, reasons sum to dropped,
// and the byte totals match the records before and after.
void check_invariants(const StageReport& r, std::size_t bytes_before, const Records& after) {
  BOOST_TEST(r.records_kept == r.records_in - r.records_dropped + r.records_added);
  std::size_t reasons = 0;
  for (const auto& [reason, n] : r.dropped) reasons += n;
  BOOST_TEST(reasons == r.records_dropped);
  BOOST_TEST(r.records_kept == after.size());
  BOOST_TEST(r.bytes_in == bytes_before);
  BOOST_TEST(r.bytes_kept == tmoe::data::total_bytes(after));
}

template <class S>
StageReport run(S&& stage, Records& r) {
  const std::size_t before = tmoe::data::total_bytes(r);
  StageReport rep = stage.apply(r);
  check_invariants(rep, before, r);
  return rep;
}

// A text of `words` words drawn from a fixed vocabulary with std::mt19937(seed).
std::string random_prose(unsigned seed, int words) {
  static const std::vector<std::string> vocab = {
      "time",  "river", "stone", "light",  "garden", "window", "silver", "market", "winter",  "letter",
      "bread", "music", "cloud", "forest", "engine", "planet", "paper",  "candle", "harbour", "mirror",
      "the",   "of",    "and",   "a",      "to",     "in",     "is",     "was",    "that",    "with",
      "quiet", "green", "old",   "bright", "slow",   "warm",   "strange", "small", "heavy",   "empty"};
  std::mt19937 g(seed);
  std::string s;
  for (int i = 0; i < words; ++i) {
    if (i) s += ' ';
    s += vocab[g() % vocab.size()];
  }
  return s;
}

// Jaccard similarity of the sets of k-code-point shingles, computed directly.
double exact_jaccard(const std::string& a, const std::string& b, std::size_t k) {
  auto shingles = [k](const std::string& s) {
    const std::u32string c = utf8::decode(s);
    std::set<std::u32string> out;
    for (std::size_t i = 0; i + k <= c.size(); ++i) out.insert(c.substr(i, k));
    return out;
  };
  const auto sa = shingles(a), sb = shingles(b);
  std::size_t both = 0;
  for (const auto& x : sa) both += sb.count(x);
  return static_cast<double>(both) / static_cast<double>(sa.size() + sb.size() - both);
}

const std::string kProse =
    "A long paragraph about the harbour at dawn, when the fishing boats come back with their nets full and the "
    "gulls circle above the market stalls, waiting for the first scraps of the day to fall from the tables.";
const std::string kOther =
    "Entirely different matter: the committee met on Tuesday to discuss next year's budget for the library, "
    "including new shelves, two more computers and a longer opening time on weekends.";

}  // namespace

// ---------------------------------------------------------------------------------------
// UTF-8

BOOST_AUTO_TEST_CASE(utf8_well_formed_sequences) {
  const std::vector<std::string> good = {"",
                                         "plain ascii",
                                         "\xC3\xA9",              // é
                                         "\xE2\x82\xAC",          // €
                                         "\xED\x9F\xBF",          // U+D7FF, last before the surrogates
                                         "\xEE\x80\x80",          // U+E000, first after them
                                         "\xEF\xBF\xBF",          // U+FFFF
                                         "\xF0\x90\x80\x80",      // U+10000
                                         "\xF0\x9D\x84\x9E",      // 𝄞
                                         "\xF4\x8F\xBF\xBF",      // U+10FFFF
                                         "\xC2\x80\xDF\xBF"};     // U+0080, U+07FF
  for (const auto& s : good) BOOST_TEST(utf8::valid(s), "should be valid: " << s);
}

BOOST_AUTO_TEST_CASE(utf8_ill_formed_sequences) {
  // (bytes, offset of the first ill-formed sequence, U+FFFD count after repair)
  const std::vector<std::tuple<std::string, std::size_t, std::size_t>> bad = {
      {"\xC0\xAF", 0, 2},              // overlong '/'
      {"\xC1\xBF", 0, 2},              // overlong
      {"\xE0\x80\xAF", 0, 3},          // overlong, 3 bytes
      {"\xF0\x80\x80\xAF", 0, 4},      // overlong, 4 bytes
      {"\xED\xA0\x80", 0, 3},          // surrogate U+D800
      {"\xED\xBF\xBF", 0, 3},          // surrogate U+DFFF
      {"\xF4\x90\x80\x80", 0, 4},      // U+110000
      {"\xF5\x80\x80\x80", 0, 4},      // lead byte past U+10FFFF
      {"\xFF", 0, 1},
      {"\x80", 0, 1},                  // lone continuation
      {"ab\xE2\x82", 2, 1},            // truncated at the end: one maximal subpart
      {"\xF0\x9D\x84", 0, 1},          // truncated 4-byte sequence
      {"x\xC3y", 1, 1},                // lead byte without its continuation
      {"ok\xE2\x82\xAC\xE2(", 5, 1}};
  for (const auto& [s, at, n] : bad) {
    BOOST_TEST(!utf8::valid(s));
    BOOST_TEST(utf8::first_invalid(s) == at);
    std::size_t replaced = 0;
    const std::string fixed = utf8::repair(s, &replaced);
    BOOST_TEST(replaced == n, "bytes at " << at << ": " << replaced << " replacements, expected " << n);
    BOOST_TEST(utf8::valid(fixed));
  }
  // The Unicode standard's example of maximal subparts (U+FFFD substitution, ch. 3.9):
  // 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64 -> a FFFD FFFD FFFD b FFFD c FFFD FFFD d.
  std::size_t replaced = 0;
  const std::string r = utf8::repair("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64", &replaced);
  BOOST_TEST(replaced == 6u);
  BOOST_TEST(r == "a\uFFFD\uFFFD\uFFFDb\uFFFDc\uFFFD\uFFFDd");
}

// Every 2- and 3-byte sequence against a loose decoder plus the rules it leaves out.
BOOST_AUTO_TEST_CASE(utf8_exhaustive_against_reference) {
  auto ref_valid = [](const unsigned char* b, int n) {
    const int need = b[0] < 0x80 ? 0 : (b[0] >> 5) == 6 ? 1 : (b[0] >> 4) == 14 ? 2 : (b[0] >> 3) == 30 ? 3 : -1;
    if (need < 0 || need + 1 != n) return false;
    char32_t cp = b[0] & (0x7F >> need);
    for (int i = 1; i < n; ++i) {
      if ((b[i] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b[i] & 0x3F);
    }
    const char32_t min[] = {0, 0x80, 0x800, 0x10000};
    return cp >= min[need] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
  };
  std::size_t mismatches = 0;
  unsigned char b[3];
  for (int x = 0xC0; x < 0x100; ++x)
    for (int y = 0; y < 0x100; ++y) {
      b[0] = static_cast<unsigned char>(x), b[1] = static_cast<unsigned char>(y);
      mismatches += utf8::valid(std::string_view(reinterpret_cast<char*>(b), 2)) != ref_valid(b, 2);
    }
  for (int x = 0xE0; x < 0xF0; ++x)
    for (int y = 0x80; y < 0xC0; ++y)
      for (int z = 0; z < 0x100; ++z) {
        b[0] = static_cast<unsigned char>(x), b[1] = static_cast<unsigned char>(y);
        b[2] = static_cast<unsigned char>(z);
        mismatches += utf8::valid(std::string_view(reinterpret_cast<char*>(b), 3)) != ref_valid(b, 3);
      }
  BOOST_TEST(mismatches == 0u);
  // Every scalar value round-trips.
  std::size_t bad = 0;
  for (char32_t c = 0; c <= 0x10FFFF; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    std::string s;
    utf8::append(s, c);
    std::size_t pos = 0;
    bad += utf8::next(s, pos) != c || pos != s.size();
  }
  BOOST_TEST(bad == 0u);
}

BOOST_AUTO_TEST_CASE(utf8_lower_case_table) {
  const std::vector<std::pair<char32_t, char32_t>> pairs = {
      {U'A', U'a'},    {U'Z', U'z'},    {U'a', U'a'},    {U'1', U'1'},    {0xC0, 0xE0},    {0xC9, 0xE9},
      {0xD7, 0xD7},    {0xDE, 0xFE},    {0xDF, 0xDF},    {0x100, 0x101},  {0x101, 0x101},  {0x130, 0x130},
      {0x132, 0x133},  {0x139, 0x13A},  {0x141, 0x142},  {0x147, 0x148},  {0x14A, 0x14B},  {0x152, 0x153},
      {0x178, 0xFF},   {0x179, 0x17A},  {0x17D, 0x17E},  {0x17F, 0x17F},  {0x386, 0x3AC},  {0x388, 0x3AD},
      {0x38C, 0x3CC},  {0x38F, 0x3CE},  {0x391, 0x3B1},  {0x3A3, 0x3C3},  {0x3A9, 0x3C9},  {0x3AB, 0x3CB},
      {0x401, 0x451},  {0x40F, 0x45F},  {0x410, 0x430},  {0x42F, 0x44F},  {0x430, 0x430},  {0x20AC, 0x20AC},
      {0x4E2D, 0x4E2D}};
  for (const auto& [up, low] : pairs)
    BOOST_TEST(static_cast<std::uint32_t>(utf8::to_lower(up)) == static_cast<std::uint32_t>(low),
               "to_lower(U+" << std::hex << static_cast<std::uint32_t>(up) << ")");
}

// ---------------------------------------------------------------------------------------
// normalize

BOOST_AUTO_TEST_CASE(normalize_whitespace) {
  tmoe::data::Normalize n;  // defaults: fold, keep newlines, strip line ends, <= 2 blank lines, trim
  std::string out;
  std::size_t replaced = 0;
  BOOST_TEST(n.normalize("  Hello \t  world  \r\n\r\n\r\n\r\n\r\nNext   line\t \n", out, replaced));
  BOOST_TEST(out == "Hello world\n\n\nNext line");
  BOOST_TEST(n.normalize("a\rb\xC2\x85" "c\xE2\x80\xA8" "d", out, replaced));  // CR, NEL, LINE SEPARATOR
  BOOST_TEST(out == "a\nb\nc\nd");
  BOOST_TEST(n.normalize("\xEF\xBB\xBFno bom\xC2\xA0\xC2\xA0here\xE2\x80\x83!", out, replaced));  // BOM, NBSP, EM SPACE
  BOOST_TEST(out == "no bom here !");
  BOOST_TEST(n.normalize("ctrl\x01\x7F\xC2\x80x\ty", out, replaced));
  BOOST_TEST(out == "ctrlx y");

  CleanConfig c;
  c.keep_newlines = false;
  BOOST_TEST(tmoe::data::Normalize(c).normalize("a\nb\r\n\r\nc  d", out, replaced));
  BOOST_TEST(out == "a b c d");

  CleanConfig raw;  // everything off: only line ends, BOM and invalid bytes change
  raw.fold_spaces = raw.strip_trailing_spaces = raw.trim = raw.strip_control = false;
  raw.max_blank_lines = 100;
  BOOST_TEST(tmoe::data::Normalize(raw).normalize("  a\t\tb  \r\n\n\n\x01", out, replaced));
  BOOST_TEST(out == "  a\t\tb  \n\n\n\x01");

  CleanConfig one;
  one.max_blank_lines = 0;
  BOOST_TEST(tmoe::data::Normalize(one).normalize("a\n\n\nb\n \nc", out, replaced));
  BOOST_TEST(out == "a\nb\nc");
}

BOOST_AUTO_TEST_CASE(normalize_lowercase) {
  CleanConfig c;
  c.lowercase = true;
  std::string out;
  std::size_t replaced = 0;
  BOOST_TEST(tmoe::data::Normalize(c).normalize("ÀB Ÿ ΣΟΦΊΑ МОСКВА Łódź ß İ €", out, replaced));
  BOOST_TEST(out == "àb ÿ σοφία москва łódź ß İ €");
  BOOST_TEST(tmoe::data::Normalize().normalize("KEEP Case", out, replaced));
  BOOST_TEST(out == "KEEP Case");
}

BOOST_AUTO_TEST_CASE(normalize_stage_invalid_utf8_policies) {
  const Records input = make({{"ok", "fine text"},
                              {"bad1", "bad \xFF byte"},
                              {"bad2", "cut \xE2\x82"},
                              {"blank", " \t\r\n  \n"},
                              {"empty", ""},
                              {"same", "unchanged"}});
  {
    Records r = input;
    const StageReport rep = run(tmoe::data::Normalize(), r);
    BOOST_TEST(ids(r) == (std::vector<std::string>{"ok", "bad1", "bad2", "same"}), boost::test_tools::per_element());
    BOOST_TEST(r[1].text == "bad \uFFFD byte");
    BOOST_TEST(r[2].text == "cut \uFFFD");
    BOOST_TEST(rep.records_in == 6u);
    BOOST_TEST(rep.records_kept == 4u);
    BOOST_TEST(rep.records_dropped == 2u);
    BOOST_TEST(rep.dropped.at("empty") == 2u);
    BOOST_TEST(rep.records_changed == 2u);
    BOOST_TEST(rep.counts.at("replaced_code_points") == 2u);
    BOOST_TEST(rep.bytes_dropped == 7u);  // " \t\r\n  \n" and ""
    BOOST_TEST((rep.examples.at("empty") == std::vector<std::string>{"blank", "empty"}));
  }
  {
    CleanConfig c;
    c.utf8 = "reject";
    Records r = input;
    const StageReport rep = run(tmoe::data::Normalize(c), r);
    BOOST_TEST(ids(r) == (std::vector<std::string>{"ok", "same"}), boost::test_tools::per_element());
    BOOST_TEST(rep.dropped.at("invalid_utf8") == 2u);
    BOOST_TEST(rep.dropped.at("empty") == 2u);
    BOOST_TEST(rep.records_dropped == 4u);
    BOOST_TEST(rep.records_changed == 0u);
    BOOST_TEST(rep.counts.at("replaced_code_points") == 0u);
  }
}

// ---------------------------------------------------------------------------------------
// exact de-duplication

BOOST_AUTO_TEST_CASE(dedup_by_id_keeps_first) {
  Records r = make({{"a", "first a"}, {"b", "first b"}, {"a", "second a"}, {"c", "c"}, {"b", "second b"},
                    {"a", "third a"}});
  const StageReport rep = run(tmoe::data::DedupById(), r);
  BOOST_TEST(ids(r) == (std::vector<std::string>{"a", "b", "c"}), boost::test_tools::per_element());
  BOOST_TEST(r[0].text == "first a");
  BOOST_TEST(r[1].text == "first b");
  BOOST_TEST(rep.records_dropped == 3u);
  BOOST_TEST(rep.dropped.at("duplicate_id") == 3u);
  BOOST_TEST(rep.bytes_dropped == 8u + 8u + 7u);
  BOOST_TEST(rep.bytes_in == rep.bytes_kept + rep.bytes_dropped);
}

BOOST_AUTO_TEST_CASE(dedup_by_content_keeps_first) {
  Records r = make({{"1", "x"}, {"2", "y"}, {"3", "x"}, {"4", "z"}, {"5", "y"}, {"6", "x"}, {"7", "X"},
                    {"8", "x "}});
  const StageReport rep = run(tmoe::data::DedupByContent(), r);
  BOOST_TEST(ids(r) == (std::vector<std::string>{"1", "2", "4", "7", "8"}), boost::test_tools::per_element());
  BOOST_TEST(rep.dropped.at("duplicate_content") == 3u);
  BOOST_TEST((rep.examples.at("duplicate_content") == std::vector<std::string>{"3 = 1", "5 = 2", "6 = 1"}));
  BOOST_TEST(rep.bytes_in == rep.bytes_kept + rep.bytes_dropped);
}

// Case and spacing differences disappear in normalize, so content de-dup after it sees them.
BOOST_AUTO_TEST_CASE(dedup_after_normalize_sees_case_and_space) {
  Records r = make({{"1", "Hello  World"}, {"2", "hello world"}, {"3", " HELLO\tWORLD \n"}, {"4", "hello there"}});
  CleanConfig c;
  c.lowercase = true;
  run(tmoe::data::Normalize(c), r);
  const StageReport rep = run(tmoe::data::DedupByContent(), r);
  BOOST_TEST(ids(r) == (std::vector<std::string>{"1", "4"}), boost::test_tools::per_element());
  BOOST_TEST(rep.dropped.at("duplicate_content") == 2u);
}

// ---------------------------------------------------------------------------------------
// quality filter

BOOST_AUTO_TEST_CASE(quality_each_reason) {
  CleanConfig c;
  c.min_chars = 10;
  c.max_chars = 100;
  c.min_words = 3;
  c.max_line_chars = 60;
  const std::string long_line = "word word word word word word word word word word word word word word";  // 69
  Records r = make({
      {"good", "The quick brown fox jumps over the lazy dog."},
      {"short", "Too short"},                                   // 9 < 10
      {"long", std::string(101, 'a')},                          // 101 > 100
      {"words", "abcdefghijklmnop qrstuv"},                     // 2 words
      {"line", long_line},                                      // one line of 69
      {"digits", "1234567 89012 34567 abc"},                    // 17 of 20
      {"symbols", "!!! ??? *** abc def"},                       // 9 of 15
      {"arrows", "\xE2\x86\x92\xE2\x86\x92 \xE2\x98\x85\xE2\x98\x85 ok ab"},  // 4 symbols of 8
      {"letters", "abc12 def34 !!gh"},                          // 8 letters of 14: digits .29, symbols .14
      {"repeats", "same line\nsame line\n  same line  \nother line"},  // 2 of 4 repeat
      {"cyrillic", "Съешь же ещё этих мягких французских булок"},
      {"spaced", "one two\n\nthree four\n\n\nfive"},
  });
  const StageReport rep = run(tmoe::data::QualityFilter(c), r);
  BOOST_TEST(ids(r) == (std::vector<std::string>{"good", "cyrillic", "spaced"}), boost::test_tools::per_element());
  const std::map<std::string, std::size_t> expected = {{"too_short", 1},   {"too_long", 1},     {"few_words", 1},
                                                       {"long_line", 1},   {"many_digits", 1},  {"many_symbols", 2},
                                                       {"few_letters", 1}, {"repeated_lines", 1}};
  BOOST_TEST(rep.dropped == expected);
  BOOST_TEST((rep.examples.at("many_symbols") == std::vector<std::string>{"symbols", "arrows"}));
  BOOST_TEST(rep.records_dropped == 9u);
}

BOOST_AUTO_TEST_CASE(quality_defaults_and_limits_off) {
  const CleanConfig c;
  BOOST_TEST(c.min_chars == 50);  // the seed article's minimum
  tmoe::data::QualityFilter q(c);
  BOOST_TEST(q.check(std::string(49, 'a')) == "too_short");
  BOOST_TEST(q.check(std::string(50, 'a')) == "");
  BOOST_TEST(q.check(std::string(100000, 'a')) == "");  // max_chars 0: no limit
  // Characters are code points, not bytes: 49 two-byte letters are still too short.
  std::string e49;
  for (int i = 0; i < 49; ++i) e49 += "\xC3\xA9";
  BOOST_TEST(q.check(e49) == "too_short");
  BOOST_TEST(q.check(e49 + "\xC3\xA9") == "");
  BOOST_TEST(tmoe::data::QualityFilter::dup_line_share(U"a\nb\na\n\n a \nc") == 0.4);
  BOOST_TEST(tmoe::data::QualityFilter::dup_line_share(U"") == 0.0);
}

// ---------------------------------------------------------------------------------------
// near-duplicates

BOOST_AUTO_TEST_CASE(near_dedup_finds_edited_copies_and_keeps_the_first) {
  std::string edited = kProse;
  edited[10] = 'P';
  edited[60] = 'X';
  std::string other_edited = kOther;
  other_edited.replace(other_edited.find("Tuesday"), 7, "Monday");
  const std::string extended = kProse + " Then the sun rose.";
  Records r = make({{"P", kProse}, {"O", kOther}, {"P1", edited}, {"Q", random_prose(1, 40)},
                    {"P2", extended}, {"O1", other_edited}, {"R", random_prose(2, 40)}});
  BOOST_TEST(exact_jaccard(kProse, edited, 5) > 0.85);  // what the test relies on
  const StageReport rep = run(tmoe::data::NearDedup(), r);
  BOOST_TEST(ids(r) == (std::vector<std::string>{"P", "O", "Q", "R"}), boost::test_tools::per_element());
  BOOST_TEST(rep.dropped.at("near_duplicate") == 3u);
  BOOST_TEST(rep.counts.at("clusters") == 2u);
  const auto& ex = rep.examples.at("near_duplicate");
  BOOST_REQUIRE(ex.size() == 3u);
  BOOST_TEST(ex[0].rfind("P1 ~ P (", 0) == 0u, ex[0]);
  BOOST_TEST(ex[1].rfind("P2 ~ P (", 0) == 0u, ex[1]);
  BOOST_TEST(ex[2].rfind("O1 ~ O (", 0) == 0u, ex[2]);

  // The first of a cluster is kept, whichever it is.
  Records rev = make({{"P1", edited}, {"P", kProse}});
  run(tmoe::data::NearDedup(), rev);
  BOOST_TEST(ids(rev) == (std::vector<std::string>{"P1"}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(near_dedup_keeps_distinct_texts) {
  Records r;
  for (unsigned i = 0; i < 200; ++i) r.push_back(Record{std::to_string(i), "test", random_prose(100 + i, 30)});
  for (const char* kind : {"char", "word"}) {
    CleanConfig c;
    c.shingle = kind;
    c.shingle_size = std::string(kind) == "char" ? 5 : 3;
    Records copy = r;
    const StageReport rep = run(tmoe::data::NearDedup(c), copy);
    BOOST_TEST(rep.records_dropped == 0u, kind);
    BOOST_TEST(copy.size() == 200u);
  }
}

BOOST_AUTO_TEST_CASE(near_dedup_word_shingles) {
  CleanConfig c;
  c.shingle = "word";
  c.shingle_size = 2;
  const std::string a = random_prose(7, 60);
  std::string b = a;
  b.replace(b.rfind(' '), std::string::npos, " zebra");  // last word changed: 58 of 60 bigrams shared
  Records r = make({{"a", a}, {"b", b}, {"c", random_prose(8, 60)}, {"short1", "two words"}, {"short2", "two words"}});
  const StageReport rep = run(tmoe::data::NearDedup(c), r);
  BOOST_TEST(ids(r) == (std::vector<std::string>{"a", "c", "short1"}), boost::test_tools::per_element());
  BOOST_TEST(rep.dropped.at("near_duplicate") == 2u);
}

// The signature agreement estimates the Jaccard similarity of the shingle sets, and the
// threshold decides: a pair at about 0.5 is dropped at threshold 0.3 and kept at 0.8 (with
// 50 bands of 2 rows, such a pair is nearly always a candidate).
BOOST_AUTO_TEST_CASE(near_dedup_similarity_and_threshold) {
  CleanConfig c;
  c.minhash_bands = 50;
  c.minhash_rows = 2;
  const tmoe::data::NearDedup nd(c);
  const std::string x = random_prose(11, 80);
  for (std::size_t cut : {x.size() / 4, x.size() / 2, 3 * x.size() / 4}) {
    const std::string y = x.substr(0, cut) + " " + random_prose(12, static_cast<int>((x.size() - cut) / 6));
    const double exact = exact_jaccard(x, y, 5);
    const double est = nd.similarity(nd.signature(x), nd.signature(y));
    BOOST_TEST(std::abs(est - exact) < 0.15, "cut " << cut << ": estimate " << est << ", exact " << exact);
  }
  const std::string half = x.substr(0, 2 * x.size() / 3) + " " + random_prose(13, 25);
  const double j = exact_jaccard(x, half, 5);
  BOOST_TEST_MESSAGE("Jaccard of the threshold pair: " << j);
  BOOST_TEST((j > 0.4 && j < 0.65));
  for (double threshold : {0.3, 0.8}) {
    c.near_threshold = threshold;
    Records r = make({{"x", x}, {"half", half}});
    run(tmoe::data::NearDedup(c), r);
    BOOST_TEST(r.size() == (threshold < j ? 1u : 2u), "threshold " << threshold);
  }
}

BOOST_AUTO_TEST_CASE(near_dedup_is_deterministic) {
  Records r;
  for (unsigned i = 0; i < 60; ++i) {
    std::string t = random_prose(500 + i % 20, 40);  // 3 copies of 20 texts
    if (i >= 20) t += " and " + std::to_string(i);
    r.push_back(Record{std::to_string(i), "test", t});
  }
  Records a = r, b = r;
  const StageReport ra = run(tmoe::data::NearDedup(), a), rb = run(tmoe::data::NearDedup(), b);
  BOOST_TEST(ids(a) == ids(b), boost::test_tools::per_element());
  BOOST_TEST(a.size() == 20u);
  BOOST_TEST(ids(a)[19] == "19");
  BOOST_TEST(ra.counts == rb.counts);
  BOOST_TEST(ra.counts.at("clusters") == 20u);
}

// ---------------------------------------------------------------------------------------
// the standard pipeline

BOOST_AUTO_TEST_CASE(standard_pipeline_end_to_end) {
  std::string prose_edit = kProse;
  prose_edit.replace(prose_edit.find("gulls"), 5, "crows");
  const Records input = make({
      {"r1", "  " + kProse + "  \n\n"},                                   // kept (rewritten)
      {"r2", kOther},                                                     // kept
      {"r1", "a different text under a repeated id, long enough to pass the filter"},  // duplicate_id
      {"r4", kOther + "\n"},                                              // duplicate_content after normalize
      {"r5", "Short one."},                                               // too_short
      {"r6", "\xFF\xFE two invalid bytes at the start of a sentence long enough to pass."},  // kept, replaced
      {"r7", " \n\t "},                                                   // empty
      {"r8", "1234 5678 9012 3456 7890 1234 5678 9012 3456 7890 1234 5678 x"},  // many_digits
      {"r9", prose_edit},                                                 // near_duplicate of r1
      {"r10", "===== ----- ===== ----- ===== ----- ===== ----- ===== ----- ok"},  // many_symbols
      {"r11", "Wie heißt du? Ich heiße Anna und wohne seit zwei Jahren in einer kleinen Stadt."},  // kept
  });
  Records r = input;
  const auto pipeline = tmoe::data::make_pipeline(CleanConfig{});
  BOOST_TEST(pipeline.names() ==
                 (std::vector<std::string>{"normalize", "dedup_id", "dedup_content", "quality", "near_dedup"}),
             boost::test_tools::per_element());
  const auto reports = pipeline.run(r);
  BOOST_REQUIRE(reports.size() == 5u);
  BOOST_TEST(ids(r) == (std::vector<std::string>{"r1", "r2", "r6", "r11"}), boost::test_tools::per_element());
  BOOST_TEST(r[0].text == kProse);
  BOOST_TEST(r[2].text.rfind("\uFFFD\uFFFD two invalid", 0) == 0u);

  auto check = [](const StageReport& rep, std::size_t in, std::size_t kept,
                  const std::map<std::string, std::size_t>& dropped) {
    BOOST_TEST_CONTEXT(rep.stage) {
      BOOST_TEST(rep.records_in == in);
      BOOST_TEST(rep.records_kept == kept);
      BOOST_TEST(rep.dropped == dropped);
    }
  };
  check(reports[0], 11, 10, {{"empty", 1}});
  check(reports[1], 10, 9, {{"duplicate_id", 1}});
  check(reports[2], 9, 8, {{"duplicate_content", 1}});
  check(reports[3], 8, 5, {{"too_short", 1}, {"many_digits", 1}, {"many_symbols", 1}});
  check(reports[4], 5, 4, {{"near_duplicate", 1}});
  BOOST_TEST(reports[0].records_changed == 3u);  // r1 (spaces), r4 (newline), r6 (bytes)
  BOOST_TEST(reports[0].counts.at("replaced_code_points") == 2u);
  BOOST_TEST(reports[0].bytes_in == tmoe::data::total_bytes(input));
  // r7's 4 bytes dropped; r1 loses 6 spaces and newlines, r4 its newline; r6's 2 bad bytes
  // become 2 x 3 bytes of U+FFFD.
  BOOST_TEST(reports[0].bytes_kept == reports[0].bytes_in - 4 - 6 - 1 + 4);
  for (std::size_t i = 1; i < reports.size(); ++i) {
    BOOST_TEST(reports[i].bytes_in == reports[i - 1].bytes_kept);
    BOOST_TEST(reports[i].bytes_in == reports[i].bytes_kept + reports[i].bytes_dropped);
  }
  BOOST_TEST(reports.back().bytes_kept == tmoe::data::total_bytes(r));

  const std::string text = tmoe::data::format_report(reports);
  BOOST_TEST(text.find("quality: records 8 -> 5 (dropped 3)") != std::string::npos, text);
  BOOST_TEST(text.find("many_digits 1") != std::string::npos, text);
  const auto j = tmoe::data::to_json(reports[3]);
  BOOST_TEST(j.at("records_dropped").get<std::size_t>() == 3u);
  BOOST_TEST(j.at("dropped").at("too_short").get<std::size_t>() == 1u);

  // Stages turned off are left out.
  CleanConfig off;
  off.dedup_ids = off.quality = off.near_dedup = false;
  BOOST_TEST(tmoe::data::make_pipeline(off).names() == (std::vector<std::string>{"normalize", "dedup_content"}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(clean_config_fields) {
  std::set<std::string> names;
  std::size_t n = 0;
  std::apply([&](const auto&... f) { ((names.insert(f.name), ++n), ...); }, CleanConfig::fields());
  BOOST_TEST(n == names.size());  // no name twice
  BOOST_TEST(names.count("utf8") == 1u);
  BOOST_TEST(names.count("near_threshold") == 1u);
  BOOST_TEST(names.count("min_chars") == 1u);
  // Every field has a type the YAML loader reads.
  std::apply(
      [](const auto&... f) {
        auto ok = [](const auto& fld) {
          using M = std::remove_cvref_t<decltype(CleanConfig{}.*fld.member)>;
          return std::is_same_v<M, std::int64_t> || std::is_same_v<M, std::uint64_t> || std::is_same_v<M, double> ||
                 std::is_same_v<M, bool> || std::is_same_v<M, std::string>;
        };
        BOOST_TEST((ok(f) && ...));
      },
      CleanConfig::fields());
  CleanConfig c;
  c.validate();
  static_assert(std::tuple_size_v<decltype(CleanConfig::fields())> == 26);
}
