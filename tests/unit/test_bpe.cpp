#define BOOST_TEST_MODULE bpe
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "../support/files.hpp"
#include "tmoe/core/philox.hpp"
#include "tmoe/core/threading.hpp"
#include "tmoe/data/bpe.hpp"

namespace fs = std::filesystem;
using tmoe::data::BpeMerge;
using tmoe::data::BpeTokenizer;
using tmoe::data::BpeTrainOptions;
using tmoe::data::train_bpe;
using Ids = std::vector<std::int32_t>;

namespace {

// Restores the thread setting at scope exit.
struct ThreadsGuard {
  int saved = tmoe::thread_count_ref();
  ~ThreadsGuard() { tmoe::set_threads(saved); }
};

std::string random_bytes(std::size_t n, std::uint64_t seed) {
  const tmoe::RngKey key{seed, 0, tmoe::site_id(tmoe::Site::kTest, 7), 0};
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>(key.bits(i) & 0xff);
  return s;
}

// English-like text from a fixed word list, deterministic: the corpus when
// /usr/share/games/fortunes is missing.
std::string generated_text(std::size_t n, std::uint64_t seed) {
  static const char* kWords[] = {
      "the", "of", "and", "a", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are", "as",
      "with", "his", "they", "I", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but",
      "not", "what", "all", "were", "we", "when", "your", "can", "said", "there", "use", "an", "each", "which",
      "she", "do", "how", "their", "if", "will", "up", "other", "about", "out", "many", "then", "them", "these",
      "so", "some", "her", "would", "make", "like", "him", "into", "time", "has", "look", "two", "more", "write",
      "go", "see", "number", "no", "way", "could", "people", "my", "than", "first", "water", "been", "call",
      "who", "oil", "its", "now", "find", "long", "down", "day", "did", "get", "come", "made", "may", "part",
      "computer", "program", "fortune", "cookie", "don't", "it's", "we're", "naïve", "café", "über"};
  constexpr std::size_t kN = sizeof(kWords) / sizeof(kWords[0]);
  const tmoe::RngKey key{seed, 0, tmoe::site_id(tmoe::Site::kTest, 8), 0};
  std::string s;
  std::uint64_t e = 0;
  while (s.size() < n) {
    const std::uint32_t r = key.bits(e++);
    if (r % 97 == 0) s += std::to_string(r % 10000);
    else s += kWords[r % kN];
    const std::uint32_t p = key.bits(e++) % 40;
    s += p == 0 ? ".\n" : p == 1 ? ", " : p == 2 ? "! " : p == 3 ? "\n\n" : " ";
  }
  s.resize(n);
  return s;
}

// The text files of the fortune collection, concatenated in name order (empty if absent).
std::string fortunes() {
  const fs::path dir = "/usr/share/games/fortunes";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_regular_file() && !e.is_symlink() && e.path().extension() != ".dat") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::string s;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    s.append(std::istreambuf_iterator<char>(in), {});
  }
  return s;
}

// A text corpus of n bytes: the fortunes if present, else generated text.
std::string corpus(std::size_t n) {
  static const std::string f = fortunes();
  if (f.size() >= n) return f.substr(0, n);
  BOOST_TEST_MESSAGE("fortunes not found or short: using generated text");
  return generated_text(n, 42);
}

// The slow reference: within each chunk, apply every merge in rank order to all its
// non-overlapping occurrences, left to right. (A merge can only involve ids made by
// earlier merges, so this is the same as "lowest-rank pair first".)
Ids naive_encode(const BpeTokenizer& t, std::string_view text) {
  Ids out;
  std::map<std::string_view, Ids> memo;
  for (std::string_view chunk : tmoe::data::bpe_chunks(text, t.max_chunk_bytes())) {
    auto [it, fresh] = memo.try_emplace(chunk);
    if (fresh) {
      Ids ids;
      for (char c : chunk) ids.push_back(static_cast<unsigned char>(c));
      for (std::size_t r = 0; r < t.merges().size(); ++r) {
        const BpeMerge m = t.merges()[r];
        std::size_t w = 0;
        for (std::size_t i = 0; i < ids.size(); ++w) {
          if (i + 1 < ids.size() && ids[i] == m.left && ids[i + 1] == m.right) {
            ids[w] = 256 + static_cast<std::int32_t>(r);
            i += 2;
          } else {
            ids[w] = ids[i++];
          }
        }
        ids.resize(w);
      }
      it->second = ids;
    }
    out.insert(out.end(), it->second.begin(), it->second.end());
  }
  return out;
}

BpeTrainOptions options(std::int64_t vocab, std::int64_t min_count = 2) {
  BpeTrainOptions o;
  o.vocab_size = vocab;
  o.min_pair_count = min_count;
  return o;
}

double bytes_per_token(const BpeTokenizer& t, const std::string& text) {
  return static_cast<double>(text.size()) / static_cast<double>(t.encode(text).size());
}

std::vector<std::string> as_strings(const std::vector<std::string_view>& v) { return {v.begin(), v.end()}; }

}  // namespace

BOOST_AUTO_TEST_CASE(chunks_follow_the_documented_rule) {
  using V = std::vector<std::string>;
  auto chunks = [](std::string_view s, std::int64_t max = 256) { return as_strings(tmoe::data::bpe_chunks(s, max)); };
  BOOST_TEST(chunks("Hello, world!  It's 2024.\n\nOK") ==
                 (V{"Hello", ",", " world", "!", " ", " It", "'s", " 2024", ".", "\n\n", "OK"}),
             boost::test_tools::per_element());
  BOOST_TEST(chunks("x   \n y") == (V{"x", "   \n", " y"}), boost::test_tools::per_element());
  BOOST_TEST(chunks("a\t\tb  ") == (V{"a", "\t\t", "b", "  "}), boost::test_tools::per_element());
  BOOST_TEST(chunks("we'll don't ''s") == (V{"we", "'ll", " don", "'t", " ''", "s"}), boost::test_tools::per_element());
  BOOST_TEST(chunks("café42 x--y") == (V{"café", "42", " x", "--", "y"}), boost::test_tools::per_element());
  BOOST_TEST(chunks(std::string_view("a\0\0b", 4)) == (V{"a", std::string("\0\0", 2), "b"}),
             boost::test_tools::per_element());
  BOOST_TEST(chunks("aaaaaaaaaa", 4) == (V{"aaaa", "aaaa", "aa"}), boost::test_tools::per_element());
  BOOST_TEST(chunks("").empty());
  // Chunks always tile the text.
  const std::string r = random_bytes(5000, 3);
  std::string joined;
  for (auto c : tmoe::data::bpe_chunks(r, 16)) {
    BOOST_TEST((c.size() >= 1 && c.size() <= 16));
    joined += c;
  }
  BOOST_TEST(joined == r);
}

BOOST_AUTO_TEST_CASE(byte_tokenizer_is_the_no_merge_case) {
  const BpeTokenizer t;
  BOOST_TEST(t.vocab_size() == 256);
  BOOST_TEST(t.num_merges() == 0);
  const std::string s = random_bytes(3000, 1);
  const Ids ids = t.encode(s);
  BOOST_TEST(ids.size() == s.size());
  for (std::size_t i = 0; i < s.size(); ++i) BOOST_TEST(ids[i] == static_cast<unsigned char>(s[i]));
  BOOST_TEST(t.decode(ids) == s);
  BOOST_TEST(t.fingerprint() == BpeTokenizer::from_merges({}).fingerprint());
}

// "abab abab ab" -> chunks "abab", " abab", " ab" (once each). Pair counts:
//   (a,b) 5, (' ',a) 2, (b,a) 2            -> merge 0: (97, 98)   = 256 "ab"
//   words [256 256], [32 256 256], [32 256]: (' ',ab) 2, (ab,ab) 2: tie, smaller pair first
//                                          -> merge 1: (32, 256)  = 257 " ab"
//   words [256 256], [257 256], [257]: (ab,ab) 1, (" ab",ab) 1: tie
//                                          -> merge 2: (256, 256) = 258 "abab"
//   words [258], [257 256], [257]           -> merge 3: (257, 256) = 259 " abab"
BOOST_AUTO_TEST_CASE(hand_checked_training) {
  const std::string text = "abab abab ab";
  const auto all = train_bpe(text, options(300, 1));
  const std::vector<BpeMerge> expect{{97, 98}, {32, 256}, {256, 256}, {257, 256}};
  BOOST_TEST(all.merges() == expect);
  BOOST_TEST(all.vocab_size() == 260);  // stopped: no pair left
  BOOST_TEST(all.encode(text) == (Ids{258, 259, 257}), boost::test_tools::per_element());
  BOOST_TEST(all.token_bytes(259) == " abab");

  const auto two = train_bpe(text, options(300, 2));  // stops when the best count is 1
  BOOST_TEST(two.merges() == (std::vector<BpeMerge>{{97, 98}, {32, 256}}));
  BOOST_TEST(two.encode(text) == (Ids{256, 256, 257, 256, 257}), boost::test_tools::per_element());

  const auto one = train_bpe(text, options(257, 1));  // stops at the vocabulary size
  BOOST_TEST(one.merges() == (std::vector<BpeMerge>{{97, 98}}));

  // Counts are weighted by chunk frequency: " xy" occurs 3 times, so (' ', x) and (x, y) have
  // 3 each and the tie goes to the smaller pair (32, 120); then (256, 121) with 3 beats (z, w)
  // with 2.
  const auto w = train_bpe("zw xy zw xy xy", options(258, 1));
  BOOST_TEST(w.merges() == (std::vector<BpeMerge>{{32, 120}, {256, 121}}));
}

BOOST_AUTO_TEST_CASE(round_trip_random_bytes) {
  const auto text_tok = train_bpe(corpus(300000), options(1024));
  const auto byte_tok = train_bpe(random_bytes(200000, 11), options(600));
  BOOST_TEST(byte_tok.num_merges() > 0);
  std::string all256;
  for (int b = 0; b < 256; ++b) all256.push_back(static_cast<char>(b));
  for (const BpeTokenizer* t : {&text_tok, &byte_tok}) {
    BOOST_TEST(t->decode(t->encode(all256)) == all256);
    for (std::size_t n : {0, 1, 2, 3, 7, 100, 2047, 2048, 5000, 300000}) {
      const std::string s = random_bytes(n, 100 + n);
      const Ids ids = t->encode(s);
      BOOST_TEST(ids.size() <= s.size());
      BOOST_TEST(t->decode(ids) == s, "round trip of " << n << " random bytes");
      if (n <= 5000) BOOST_TEST(ids == naive_encode(*t, s));
    }
  }
}

// More distinct chunks than a thread's chunk cache holds: it starts over mid-text.
BOOST_AUTO_TEST_CASE(chunk_cache_overflow) {
  const auto trained = train_bpe(corpus(200000), options(400));
  const auto t = BpeTokenizer::from_merges({trained.merges().begin(), trained.merges().begin() + 100});
  const tmoe::RngKey key{9, 0, tmoe::site_id(tmoe::Site::kTest, 9), 0};
  std::string text;
  for (std::uint64_t e = 0; text.size() < 72000 * 6;) {
    text.push_back(' ');
    for (int i = 0; i < 5; ++i) text.push_back(static_cast<char>('a' + key.bits(e++) % 26));
  }
  auto distinct = tmoe::data::bpe_chunks(text);
  std::sort(distinct.begin(), distinct.end());
  const auto n_distinct = static_cast<std::size_t>(std::unique(distinct.begin(), distinct.end()) - distinct.begin());
  BOOST_TEST(n_distinct > tmoe::data::bpe_detail::ChunkCache::kMaxEntries);
  const Ids ref = naive_encode(t, text);
  BOOST_TEST(t.encode(text) == ref);
  BOOST_TEST(t.encode(text) == ref);  // the cache as the first call left it
}

BOOST_AUTO_TEST_CASE(round_trip_text_corpus) {
  const std::string text = corpus(600000);
  const auto t = train_bpe(text.substr(0, 300000), options(1024));
  const Ids ids = t.encode(text);
  BOOST_TEST(t.decode(ids) == text);
  BOOST_TEST(std::all_of(ids.begin(), ids.end(), [&](std::int32_t id) { return id >= 0 && id < t.num_merges() + 256; }));
  // Mixed with invalid UTF-8 and NULs.
  std::string mixed = text.substr(0, 20000) + std::string("\0\xff\xfe\xc3(\x80", 6) + text.substr(20000, 20000);
  BOOST_TEST(t.decode(t.encode(mixed)) == mixed);
}

BOOST_AUTO_TEST_CASE(encode_matches_naive_merges) {
  const std::string text = corpus(400000);
  const auto t = train_bpe(text.substr(0, 200000), options(1024));
  BOOST_TEST(t.num_merges() == 768);
  const std::string held_out = text.substr(200000, 100000);
  BOOST_TEST(t.encode(held_out) == naive_encode(t, held_out));
  const std::string seen = text.substr(0, 50000);
  BOOST_TEST(t.encode(seen) == naive_encode(t, seen));
  // Short texts take the path without a cache.
  for (std::size_t n : {1, 5, 40, 500}) BOOST_TEST(t.encode(seen.substr(1000, n)) == naive_encode(t, seen.substr(1000, n)));
  // A small max_chunk_bytes changes the chunks, and both sides agree.
  BpeTrainOptions o = options(600);
  o.max_chunk_bytes = 3;
  const auto small = train_bpe(text.substr(0, 100000), o);
  BOOST_TEST(small.max_chunk_bytes() == 3);
  BOOST_TEST(small.encode(held_out) == naive_encode(small, held_out));
}

BOOST_AUTO_TEST_CASE(training_and_encoding_are_deterministic) {
  ThreadsGuard guard;
  const std::string text = corpus(2300000);  // several 1 MiB counting pieces
  tmoe::set_threads(1);
  const auto a = train_bpe(text, options(700));
  const auto b = train_bpe(text, options(700));
  tmoe::set_threads(2);
  const auto c = train_bpe(text, options(700));
  BOOST_TEST(a.merges() == b.merges());
  BOOST_TEST(a.merges() == c.merges());
  BOOST_TEST(a.fingerprint() == c.fingerprint());
  // Adding the text in two calls (split at a chunk boundary) counts the same chunks.
  const std::size_t cut = text.find("\n%\n", 1000000) + 1;
  tmoe::data::BpeTrainer split(options(700));
  split.add(text.substr(0, cut));
  split.add(text.substr(cut));
  BOOST_TEST(split.train().merges() == a.merges());

  // Encoding a large text on 1 and 2 threads.
  tmoe::set_threads(1);
  const Ids one = a.encode(text);
  tmoe::set_threads(2);
  const Ids two = a.encode(text);
  BOOST_TEST(one == two);
  Ids appended{7, 8};
  a.encode_append(text, appended);
  BOOST_TEST(appended.size() == one.size() + 2);
  BOOST_TEST(std::equal(one.begin(), one.end(), appended.begin() + 2));
  const std::string rnd = random_bytes(700000, 5);
  tmoe::set_threads(1);
  const Ids r1 = a.encode(rnd);
  tmoe::set_threads(2);
  BOOST_TEST(a.encode(rnd) == r1);
}

// Each thread keeps a chunk cache between calls, tied to one tokenizer's contents: switching
// tokenizers, copying one, or encoding many short texts never changes the ids.
BOOST_AUTO_TEST_CASE(chunk_cache_never_changes_results) {
  const std::string text = corpus(300000);
  const auto a = train_bpe(text.substr(0, 100000), options(700));
  const auto b = train_bpe(text.substr(100000, 100000), options(900));
  const std::string sample = text.substr(200000, 30000);
  const Ids ref_a = naive_encode(a, sample), ref_b = naive_encode(b, sample);
  for (int round = 0; round < 2; ++round) {
    BOOST_TEST(a.encode(sample) == ref_a);
    BOOST_TEST(b.encode(sample) == ref_b);
  }
  BpeTokenizer c = a;
  BOOST_TEST(c.encode(sample) == ref_a);
  c = b;
  BOOST_TEST(c.encode(sample) == ref_b);
  // Many short texts, one call each, against one call for all of them.
  Ids joined;
  for (std::size_t p = 0; p < sample.size(); p += 37) {
    const std::string_view piece = std::string_view(sample).substr(p, 37);
    const Ids ids = a.encode(piece);
    BOOST_TEST(ids == naive_encode(a, piece));
    joined.insert(joined.end(), ids.begin(), ids.end());
  }
  BOOST_TEST(a.decode(joined) == sample);
}

BOOST_AUTO_TEST_CASE(smaller_vocab_is_a_prefix_and_compresses_less) {
  const std::string text = corpus(500000);
  const std::string train = text.substr(0, 400000), held_out = text.substr(400000);
  const auto big = train_bpe(train, options(2048));
  BOOST_TEST(big.num_merges() == 2048 - 256);
  const auto small = train_bpe(train, options(512));
  BOOST_TEST(std::equal(small.merges().begin(), small.merges().end(), big.merges().begin()));
  double prev = 0;
  for (int merges : {0, 256, 768, 1792}) {
    const auto t = BpeTokenizer::from_merges({big.merges().begin(), big.merges().begin() + merges});
    const double bpt = bytes_per_token(t, held_out);
    BOOST_TEST_MESSAGE("vocab " << 256 + merges << ": " << bpt << " bytes/token on held-out text");
    BOOST_TEST(bpt > prev + (merges ? 0.1 : 0.0));
    prev = bpt;
  }
  BOOST_TEST(prev > 2.4);
}

BOOST_AUTO_TEST_CASE(save_load_and_fingerprint) {
  tmoe::test::TempDir dir;
  BpeTrainOptions o = options(800);
  o.special_tokens = {"<|eor|>", std::string("sp ace\\\n\0\xff", 10), "é"};
  const std::string text = corpus(200000);
  const auto t = train_bpe(text, o);
  BOOST_TEST(t.vocab_size() == 800);
  BOOST_TEST(t.num_merges() == 800 - 256 - 3);
  const std::string path = dir.file("tok.bpe");
  t.save(path);
  BOOST_TEST(!fs::exists(tmoe::io::temp_path_for(path)));
  const auto u = BpeTokenizer::load(path);
  BOOST_TEST(u.merges() == t.merges());
  BOOST_TEST(u.special_tokens() == t.special_tokens(), boost::test_tools::per_element());
  BOOST_TEST(u.fingerprint() == t.fingerprint());
  BOOST_TEST(u.encode(text) == t.encode(text));
  BOOST_TEST(u.to_text() == t.to_text());
  // Saving again replaces the file with identical bytes.
  const auto before = tmoe::test::read_bytes(path);
  u.save(path);
  BOOST_TEST(tmoe::test::read_bytes(path) == before);
  // The fingerprint names the merges and specials.
  BOOST_TEST(t.fingerprint() != BpeTokenizer().fingerprint());
  BOOST_TEST(BpeTokenizer::from_merges(t.merges()).fingerprint() != t.fingerprint());
  BOOST_TEST(BpeTokenizer::from_merges(t.merges(), t.special_tokens()).fingerprint() == t.fingerprint());
  std::vector<BpeMerge> fewer(t.merges().begin(), t.merges().end() - 1);
  BOOST_TEST(BpeTokenizer::from_merges(fewer, t.special_tokens()).fingerprint() != t.fingerprint());
}

BOOST_AUTO_TEST_CASE(special_tokens) {
  BpeTrainOptions o = options(300);
  o.special_tokens = {"<|eor|>", "<|pad|>"};
  const auto t = train_bpe("the cat the hat the mat <|eor|>", o);
  const std::int32_t eor = t.special_id("<|eor|>");
  BOOST_TEST(eor == 256 + t.num_merges());
  BOOST_TEST(t.special_id("<|pad|>") == eor + 1);
  BOOST_TEST(t.is_special(eor));
  BOOST_TEST(!t.is_special(eor - 1));
  // Text that spells a special token stays ordinary bytes; callers append the id.
  Ids ids = t.encode("the hat<|eor|>");
  for (std::int32_t id : ids) BOOST_TEST(!t.is_special(id));
  ids.push_back(eor);
  BOOST_TEST(t.decode(ids) == "the hat<|eor|><|eor|>");
  BOOST_TEST(t.token_bytes(eor + 1) == "<|pad|>");
}

BOOST_AUTO_TEST_CASE(encode_into_a_caller_buffer) {
  const std::string text = corpus(100000);
  const auto t = train_bpe(text, options(512));
  std::vector<std::int32_t> buf(text.size() + 5, -1);
  const std::size_t n = t.encode_into(text, buf);
  BOOST_TEST(n < text.size());
  BOOST_TEST(Ids(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n)) == t.encode(text));
  BOOST_TEST(buf[text.size()] == -1);
  BOOST_TEST(t.decode(std::span<const std::int32_t>(buf.data(), n)) == text);
}
