#pragma once
// Byte-level BPE tokenizer. Ids 0..255 are the 256 byte values, ids 256.. are merges learned
// from a corpus (merge r joins two earlier ids into id 256 + r), and optional special tokens
// (e.g. an end-of-record token) take the ids after the merges. With no merges it is the
// byte tokenizer tmoe started with, so byte-level models and shards stay valid.
//
// Pre-tokenisation (bpe_chunks): text is cut into chunks and merges never cross a chunk
// boundary. Bytes are classed as letters (A-Z, a-z and every byte >= 0x80, so UTF-8 letters
// -- and any other non-ASCII character -- stay inside words), digits (0-9), whitespace
// (space \t \n \v \f \r) and other (the rest, NUL and control bytes included). At each
// position the chunk is the first that applies of:
//   1. an apostrophe contraction: 's 't 'm 'd 're 've 'll (lowercase, as GPT-2);
//   2. one space and the run of letters, of digits or of other bytes after it (" world");
//   3. a run of letters, of digits, or of other bytes;
//   4. a run of whitespace, except that when the run is followed by a non-whitespace byte
//      and ends in a space, that space begins the next chunk ("a  b" -> "a", " ", " b").
// A chunk longer than max_chunk_bytes is cut into pieces of that length. The scan never
// looks back, so a position after a '\n' whose byte is not whitespace is always a chunk
// boundary; large texts are split there for threads.
//
// Training (BpeTrainer, train_bpe): chunks are counted once into a hash map of unique chunks
// (in parallel over fixed 1 MiB pieces, then summed: counts do not depend on the thread
// count), the unique chunks ("words") are sorted by their bytes, and pair counts are then
// updated incrementally: every pair keeps the list of words that contain it, and a merge
// rewrites only those words. The next merge is the pair with the highest count over the
// corpus, ties going to the smallest (left id, right id); a lazy max-heap finds it. Training
// stops at the target vocabulary or when the best pair occurs fewer than min_pair_count
// times. Same corpus and options: same merges, for any thread count.
//
// Encoding applies merges by rank inside each chunk: the lowest-rank adjacent pair first,
// all its non-overlapping occurrences left to right (the GPT-2 rule), until no adjacent pair
// is a merge. A per-thread cache, kept between calls, maps chunk bytes to ids, so each
// distinct chunk is merged once and encoding record by record is as fast as encoding one
// big text (bpe_detail::ChunkCache: bounded, never changes a result). Large texts are cut
// at chunk boundaries and encoded with tmoe::parallel_for; the ids do not depend on the
// thread count.
// Encoding never emits special tokens (text that spells one is encoded as ordinary bytes);
// callers append them by id. decode(encode(s)) == s for any bytes.
//
// File (text, '\n' line ends; written atomically: temp file, fsync, rename):
//   tmoe-bpe 1
//   vocab_size <256 + merges + specials>
//   max_chunk_bytes <n>
//   merges <K>
//   specials <S>
//   special <token>          S lines; bytes outside 0x21..0x7e and '\' written as \xHH
//   <left> <right>           K lines, merge r creating id 256 + r
//   xxh64 <16 hex digits>    XXH64 of every byte before this line
// load() checks everything and names the file and line of the first problem.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tmoe/core/checksum.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/io/atomic_file.hpp"
#include "tmoe/core/threading.hpp"

namespace tmoe::data {

// Merge r joins `left` and `right` (both ids below 256 + r) into id 256 + r.
struct BpeMerge {
  std::int32_t left = 0, right = 0;
  friend bool operator==(const BpeMerge&, const BpeMerge&) = default;
};

struct BpeTrainOptions {
  std::int64_t vocab_size = 4096;       // 256 bytes + merges + special tokens; >= 256 + specials
  std::int64_t min_pair_count = 2;      // stop when the best pair occurs fewer times (>= 1)
  std::int64_t max_chunk_bytes = 256;   // longer chunks are cut (2 .. 65536)
  std::vector<std::string> special_tokens;  // ids after the merges, in this order
};

namespace bpe_detail {

inline constexpr int kVersion = 1;
inline constexpr std::int32_t kNoRank = std::numeric_limits<std::int32_t>::max();
inline constexpr std::int64_t kMaxChunkLimit = 65536;
inline constexpr std::int64_t kMaxVocab = std::int64_t{1} << 30;
inline constexpr std::size_t kMaxSpecialBytes = 1024;

enum : unsigned char { kOther = 0, kLetter = 1, kDigit = 2, kSpace = 3 };

inline constexpr std::array<unsigned char, 256> make_classes() {
  std::array<unsigned char, 256> c{};
  for (int b = 0; b < 256; ++b) {
    if ((b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || b >= 0x80) c[b] = kLetter;
    else if (b >= '0' && b <= '9') c[b] = kDigit;
    else if (b == ' ' || b == '\t' || b == '\n' || b == '\v' || b == '\f' || b == '\r') c[b] = kSpace;
    else c[b] = kOther;
  }
  return c;
}
inline constexpr std::array<unsigned char, 256> kClass = make_classes();

// End of the chunk that starts at i < n (before the max_chunk_bytes cut).
inline std::size_t chunk_end(const unsigned char* p, std::size_t i, std::size_t n) {
  auto run = [&](std::size_t j, unsigned char cls) {
    while (j < n && kClass[p[j]] == cls) ++j;
    return j;
  };
  const unsigned char b = p[i];
  if (b == '\'' && i + 1 < n) {
    const unsigned char c = p[i + 1];
    if (c == 's' || c == 't' || c == 'm' || c == 'd') return i + 2;
    if (i + 2 < n) {
      const unsigned char d = p[i + 2];
      if ((c == 'r' && d == 'e') || (c == 'v' && d == 'e') || (c == 'l' && d == 'l')) return i + 3;
    }
  }
  const unsigned char cls = kClass[b];
  if (cls != kSpace) return run(i + 1, cls);
  if (b == ' ' && i + 1 < n && kClass[p[i + 1]] != kSpace) return run(i + 2, kClass[p[i + 1]]);
  const std::size_t j = run(i + 1, kSpace);
  if (j < n && j - i >= 2 && p[j - 1] == ' ') return j - 1;
  return j;
}

// f(offset, length) for every chunk of text, in order.
template <class F>
void for_each_chunk(std::string_view text, std::size_t max_bytes, F&& f) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  for (std::size_t i = 0; i < n;) {
    const std::size_t e = chunk_end(p, i, n);
    for (; e - i > max_bytes; i += max_bytes) f(i, max_bytes);
    f(i, e - i);
    i = e;
  }
}

// The first chunk boundary at or after pos that a scan from there reproduces: a byte that
// is not whitespace right after a '\n' (text.size() if there is none).
inline std::size_t next_boundary(std::string_view text, std::size_t pos) {
  if (pos == 0) return 0;
  std::size_t q = pos - 1;
  while (q < text.size()) {
    const void* nl = std::memchr(text.data() + q, '\n', text.size() - q);
    if (!nl) break;
    q = static_cast<std::size_t>(static_cast<const char*>(nl) - text.data()) + 1;
    if (q < text.size() && kClass[static_cast<unsigned char>(text[q])] != kSpace) return q;
  }
  return text.size();
}

// [b[k], b[k+1]) for k < pieces (fewer if boundaries are far apart), cut at chunk boundaries.
inline std::vector<std::size_t> split_points(std::string_view text, std::size_t pieces) {
  std::vector<std::size_t> b{0};
  for (std::size_t k = 1; k < pieces; ++k) {
    const std::size_t q = next_boundary(text, text.size() / pieces * k);
    if (q > b.back() && q < text.size()) b.push_back(q);
  }
  b.push_back(text.size());
  return b;
}

inline std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

// Open-addressing map (left, right) -> merge rank: the hot lookup of encoding.
class PairRanks {
 public:
  void build(const std::vector<BpeMerge>& merges) {
    int bits = 4;
    while ((std::size_t{1} << bits) < 2 * merges.size() + 2) ++bits;
    shift_ = 64 - bits;
    mask_ = (std::size_t{1} << bits) - 1;
    keys_.assign(mask_ + 1, kEmpty);
    ranks_.assign(mask_ + 1, kNoRank);
    for (std::size_t r = 0; r < merges.size(); ++r) {
      const std::uint64_t k = pair_key(merges[r].left, merges[r].right);
      std::size_t h = slot(k);
      while (keys_[h] != kEmpty) h = (h + 1) & mask_;
      keys_[h] = k;
      ranks_[h] = static_cast<std::int32_t>(r);
    }
  }
  std::int32_t find(std::int32_t a, std::int32_t b) const {
    const std::uint64_t k = pair_key(a, b);
    for (std::size_t h = slot(k);; h = (h + 1) & mask_) {
      if (keys_[h] == k) return ranks_[h];
      if (keys_[h] == kEmpty) return kNoRank;
    }
  }

 private:
  static constexpr std::uint64_t kEmpty = ~std::uint64_t{0};
  std::size_t slot(std::uint64_t k) const { return static_cast<std::size_t>((k * 0x9E3779B97F4A7C15ull) >> shift_); }
  std::vector<std::uint64_t> keys_;
  std::vector<std::int32_t> ranks_;
  std::size_t mask_ = 0;
  int shift_ = 60;
};

inline std::uint64_t hash_bytes(const unsigned char* p, std::size_t n) {
  std::uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xC2B2AE3D27D4EB4Full);
  for (; n >= 8; p += 8, n -= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
  }
  std::uint64_t w = 0;
  std::memcpy(&w, p, n);
  h = (h ^ w) * 0x94D049BB133111EBull;
  return h ^ (h >> 29);
}

// Chunk bytes -> ids, kept per thread between encode calls (so encoding record by record
// is as fast as encoding one big text) and tied to one tokenizer's contents by its serial
// number: another tokenizer on the same thread starts it afresh. Keys and ids are copies.
// Bounded: at kMaxEntries chunk types or kMaxBytes of keys it starts over (a table of 4 MB
// and typically under 1 MB of keys per thread; 20 MB at most). The cache never changes a
// result, only how fast it comes.
class ChunkCache {
 public:
  static constexpr std::size_t kMaxEntries = std::size_t{1} << 16;
  static constexpr std::size_t kMaxBytes = std::size_t{8} << 20;  // of keys, and of spilled ids
  static constexpr std::uint32_t kInline = 4;  // chunks of up to 4 ids keep them in the entry

  struct Entry {
    std::uint32_t n = 0;    // key length; 0: empty slot
    std::uint32_t tag = 0;  // the low half of the key's hash; its low bits pick the slot
    std::uint32_t key = 0;  // offset of the key bytes in keys_
    std::uint32_t count = 0;
    std::int32_t ids[kInline] = {};  // or ids[0]: offset of the ids in pool_
  };

  // Ties the cache to tokenizer `owner`, clearing it if it served another one.
  void attach(std::uint64_t owner) {
    if (owner_ != owner) {
      clear();
      owner_ = owner;
    }
  }

  // The entry of chunk p[0, n) with hash h: filled (n != 0) if cached, else the empty slot
  // to store() into.
  Entry& lookup(const unsigned char* p, std::size_t n, std::uint64_t h) {
    if (keys_.size() > kMaxBytes || pool_.size() > kMaxBytes / 4) clear();  // long chunks
    if (2 * (size_ + 1) > table_.size()) grow();
    const auto tag = static_cast<std::uint32_t>(h);
    for (std::size_t s = tag & mask_;; s = (s + 1) & mask_) {
      Entry& e = table_[s];
      if (e.n == 0) return e;
      if (e.tag == tag && e.n == n && same(keys_.data() + e.key, p, n)) return e;
    }
  }
  // Appends the entry's ids at out; returns how many.
  std::size_t copy(const Entry& e, std::int32_t* out) const {
    const std::int32_t* src = e.count <= kInline ? e.ids : pool_.data() + e.ids[0];
    for (std::uint32_t i = 0; i < e.count; ++i) out[i] = src[i];
    return e.count;
  }
  void store(Entry& e, const unsigned char* p, std::size_t n, std::uint64_t h, const std::int32_t* ids,
             std::size_t count) {
    e.n = static_cast<std::uint32_t>(n);
    e.tag = static_cast<std::uint32_t>(h);
    e.key = static_cast<std::uint32_t>(keys_.size());
    e.count = static_cast<std::uint32_t>(count);
    keys_.insert(keys_.end(), p, p + n);
    if (count <= kInline) {
      std::copy(ids, ids + count, e.ids);
    } else {
      e.ids[0] = static_cast<std::int32_t>(pool_.size());
      pool_.insert(pool_.end(), ids, ids + count);
    }
    ++size_;
  }

 private:
  static bool same(const unsigned char* a, const unsigned char* b, std::size_t n) {
    if (n > 16) return std::memcmp(a, b, n) == 0;
    for (std::size_t i = 0; i < n; ++i)
      if (a[i] != b[i]) return false;
    return true;
  }
  void clear() {
    table_.clear();
    keys_.clear();
    pool_.clear();
    size_ = 0;
    mask_ = 0;
  }
  void grow() {
    if (size_ >= kMaxEntries) clear();
    std::vector<Entry> old(std::max<std::size_t>(1024, 2 * table_.size()));
    old.swap(table_);
    mask_ = table_.size() - 1;
    for (const Entry& e : old) {
      if (e.n == 0) continue;
      std::size_t s = e.tag & mask_;
      while (table_[s].n) s = (s + 1) & mask_;
      table_[s] = e;
    }
  }

  std::uint64_t owner_ = 0;
  std::vector<Entry> table_;
  std::vector<unsigned char> keys_;
  std::vector<std::int32_t> pool_;
  std::size_t size_ = 0, mask_ = 0;
};

inline ChunkCache& thread_cache() {
  thread_local ChunkCache cache;
  return cache;
}

inline std::uint64_t next_serial() {
  static std::atomic<std::uint64_t> serial{0};
  return serial.fetch_add(1) + 1;
}

inline void put_le(std::string& s, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
}

inline std::string hex16(std::uint64_t v) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[static_cast<std::size_t>(i)] = kHex[v & 15];
  return s;
}

// A special token as one field of its line: bytes 0x21..0x7e except '\' as they are, the
// rest as \xHH.
inline std::string escape(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string r;
  for (unsigned char c : s) {
    if (c > 0x20 && c < 0x7f && c != '\\') {
      r.push_back(static_cast<char>(c));
    } else {
      r += "\\x";
      r.push_back(kHex[c >> 4]);
      r.push_back(kHex[c & 15]);
    }
  }
  return r;
}

inline int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The inverse of escape(); false on a bad escape or a raw space / control byte.
inline bool unescape(std::string_view s, std::string& out) {
  out.clear();
  for (std::size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '\\') {
      if (i + 3 >= s.size()) return false;
      if (s[i + 1] != 'x' || hex_digit(s[i + 2]) < 0 || hex_digit(s[i + 3]) < 0) return false;
      out.push_back(static_cast<char>(hex_digit(s[i + 2]) * 16 + hex_digit(s[i + 3])));
      i += 3;
    } else if (c > 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      return false;
    }
  }
  return true;
}

// A line quoted for an error message: at most 60 bytes, escaped.
inline std::string quote(std::string_view s) {
  const bool cut = s.size() > 60;
  std::string r;
  for (unsigned char c : s.substr(0, 60)) {
    if (c >= 0x20 && c < 0x7f) r.push_back(static_cast<char>(c));
    else r += "\\x" + hex16(c).substr(14);
  }
  return "'" + r + (cut ? "...'" : "'");
}

// A whole decimal number in [lo, hi]; false otherwise (signs, spaces, leading zeros allowed
// only as "0").
inline bool parse_int(std::string_view s, std::int64_t lo, std::int64_t hi, std::int64_t& v) {
  if (s.empty() || s.size() > 18 || (s.size() > 1 && s[0] == '0')) return false;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && end == s.data() + s.size() && s[0] != '-' && v >= lo && v <= hi;
}

template <class Where>
void check_specials(const std::vector<std::string>& specials, Where&& where) {
  std::unordered_map<std::string_view, std::size_t> seen;
  for (std::size_t i = 0; i < specials.size(); ++i) {
    const std::string& s = specials[i];
    if (s.empty()) throw Error("special token is empty", where(i), "a non-empty token");
    if (s.size() > kMaxSpecialBytes)
      throw Error(::tmoe::detail::cat("special token is ", s.size(), " bytes long"), where(i),
                  ::tmoe::detail::cat("at most ", kMaxSpecialBytes, " bytes"));
    const auto [it, fresh] = seen.emplace(s, i);
    if (!fresh)
      throw Error("duplicate special token " + quote(s) + " (also special token " + std::to_string(it->second) + ")",
                  where(i), "distinct special tokens");
  }
}

// Checks merges in order: merge r must join two ids defined before it, differ from every
// earlier merge, and make a token no longer than max_chunk_bytes (a longer one could never
// apply, and a crafted file could otherwise double a token's length at every merge).
class MergeChecker {
 public:
  explicit MergeChecker(std::int64_t max_chunk_bytes) : max_chunk_(max_chunk_bytes), length_(256, 1) {}

  template <class Where>
  void check(const std::vector<BpeMerge>& merges, std::size_t r, Where&& where) {
    const BpeMerge m = merges[r];
    const std::int64_t limit = 256 + static_cast<std::int64_t>(r);
    for (std::int32_t id : {m.left, m.right})
      if (id < 0 || id >= limit)
        throw Error(::tmoe::detail::cat("merge ", r, " (creating id ", limit, ") references id ", id,
                                        ", which is not defined before it"),
                    where(r), ::tmoe::detail::cat("ids in [0, ", limit, ")"));
    const auto [it, fresh] = seen_.emplace(pair_key(m.left, m.right), r);
    if (!fresh)
      throw Error(::tmoe::detail::cat("duplicate merge (", m.left, ", ", m.right, "): the same pair is merge ",
                                      it->second, " (", where(it->second), ")"),
                  where(r), "every pair merged once");
    const std::int64_t n = length_[static_cast<std::size_t>(m.left)] + length_[static_cast<std::size_t>(m.right)];
    if (n > max_chunk_)
      throw Error(::tmoe::detail::cat("merge ", r, " makes a token of ", n, " bytes, longer than max_chunk_bytes ",
                                      max_chunk_, ": it could never apply"),
                  where(r), ::tmoe::detail::cat("tokens of at most ", max_chunk_, " bytes"));
    length_.push_back(n);
  }

 private:
  std::int64_t max_chunk_;
  std::vector<std::int64_t> length_;  // bytes of each id so far
  std::unordered_map<std::uint64_t, std::size_t> seen_;
};

inline void check_options(const BpeTrainOptions& o) {
  check_specials(o.special_tokens, [](std::size_t i) { return ::tmoe::detail::cat("BpeTrainOptions.special_tokens[", i, "]"); });
  const std::int64_t min_vocab = 256 + static_cast<std::int64_t>(o.special_tokens.size());
  if (o.vocab_size < min_vocab || o.vocab_size > kMaxVocab)
    throw Error(::tmoe::detail::cat("vocab_size ", o.vocab_size, " is out of range (256 byte tokens and ",
                                    o.special_tokens.size(), " special tokens need ", min_vocab, ")"),
                "BpeTrainOptions.vocab_size", ::tmoe::detail::cat("a value in [", min_vocab, ", ", kMaxVocab, "]"));
  if (o.min_pair_count < 1)
    throw Error(::tmoe::detail::cat("min_pair_count is ", o.min_pair_count), "BpeTrainOptions.min_pair_count",
                "a count >= 1");
  if (o.max_chunk_bytes < 2 || o.max_chunk_bytes > kMaxChunkLimit)
    throw Error(::tmoe::detail::cat("max_chunk_bytes is ", o.max_chunk_bytes), "BpeTrainOptions.max_chunk_bytes",
                ::tmoe::detail::cat("a length in [2, ", kMaxChunkLimit, "]"));
}

inline std::string errno_text() { return std::strerror(errno); }

inline std::string read_file(const std::string& path) {
  io::detail::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw Error("could not open the tokenizer file: " + errno_text(), path, "a readable tmoe-bpe file");
  struct ::stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))
    throw Error("is not a regular file", path, "a tmoe-bpe tokenizer file");
  std::string s;
  char buf[1 << 16];
  for (;;) {
    const ::ssize_t r = ::read(fd.get(), buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw Error("could not read: " + errno_text(), path);
    }
    if (r == 0) break;
    s.append(buf, static_cast<std::size_t>(r));
  }
  return s;
}

struct TransparentHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const {
    return static_cast<std::size_t>(hash_bytes(reinterpret_cast<const unsigned char*>(s.data()), s.size()));
  }
};

}  // namespace bpe_detail

// The chunks of `text` that merges never cross (see the top of this file), in order.
inline std::vector<std::string_view> bpe_chunks(std::string_view text, std::int64_t max_chunk_bytes = 256) {
  std::vector<std::string_view> out;
  bpe_detail::for_each_chunk(text, static_cast<std::size_t>(std::max<std::int64_t>(1, max_chunk_bytes)),
                             [&](std::size_t off, std::size_t n) { out.push_back(text.substr(off, n)); });
  return out;
}

class BpeTokenizer {
 public:
  // The byte tokenizer: 256 ids, no merges, no special tokens.
  BpeTokenizer() { init(); }

  // Checks `merges` and `special_tokens` (tmoe::Error naming the first bad one).
  static BpeTokenizer from_merges(std::vector<BpeMerge> merges, std::vector<std::string> special_tokens = {},
                                  std::int64_t max_chunk_bytes = 256) {
    if (max_chunk_bytes < 2 || max_chunk_bytes > bpe_detail::kMaxChunkLimit)
      throw Error(::tmoe::detail::cat("max_chunk_bytes is ", max_chunk_bytes), "BpeTokenizer::from_merges",
                  ::tmoe::detail::cat("a length in [2, ", bpe_detail::kMaxChunkLimit, "]"));
    if (static_cast<std::int64_t>(merges.size() + special_tokens.size()) + 256 > bpe_detail::kMaxVocab)
      throw Error(::tmoe::detail::cat(merges.size(), " merges and ", special_tokens.size(), " special tokens"),
                  "BpeTokenizer::from_merges", ::tmoe::detail::cat("a vocabulary of at most ", bpe_detail::kMaxVocab));
    bpe_detail::MergeChecker checker(max_chunk_bytes);
    for (std::size_t r = 0; r < merges.size(); ++r)
      checker.check(merges, r, [](std::size_t i) { return ::tmoe::detail::cat("BpeTokenizer::from_merges, merge ", i); });
    bpe_detail::check_specials(
        special_tokens, [](std::size_t i) { return ::tmoe::detail::cat("BpeTokenizer::from_merges, special token ", i); });
    return BpeTokenizer(std::move(merges), std::move(special_tokens), static_cast<std::int32_t>(max_chunk_bytes));
  }

  // Reads and checks a file written by save().
  static BpeTokenizer load(const std::string& path) { return parse(bpe_detail::read_file(path), path); }

  // As load(), from the file's bytes; `source` names it in errors.
  static BpeTokenizer parse(std::string_view text, const std::string& source);

  // Writes the file format above atomically (temp file, fsync, rename).
  void save(const std::string& path) const { io::write_file_atomic(path, to_text()); }
  std::string to_text() const;

  std::int32_t vocab_size() const { return 256 + num_merges() + static_cast<std::int32_t>(specials_.size()); }
  std::int32_t num_merges() const { return static_cast<std::int32_t>(merges_.size()); }
  std::int32_t max_chunk_bytes() const { return max_chunk_; }
  const std::vector<BpeMerge>& merges() const { return merges_; }
  const std::vector<std::string>& special_tokens() const { return specials_; }
  bool is_special(std::int32_t id) const { return id >= 256 + num_merges() && id < vocab_size(); }
  // The id of special token `token`; tmoe::Error if there is none.
  std::int32_t special_id(std::string_view token) const {
    for (std::size_t i = 0; i < specials_.size(); ++i)
      if (specials_[i] == token) return 256 + num_merges() + static_cast<std::int32_t>(i);
    throw Error("no special token " + bpe_detail::quote(token), "BpeTokenizer::special_id",
                ::tmoe::detail::cat("one of the tokenizer's ", specials_.size(), " special tokens"));
  }
  // The bytes id stands for (a special token: its text).
  std::string_view token_bytes(std::int32_t id) const {
    check_id(id, -1, "BpeTokenizer::token_bytes");
    const auto i = static_cast<std::size_t>(id);
    return std::string_view(bytes_).substr(offsets_[i], offsets_[i + 1] - offsets_[i]);
  }
  // XXH64 of everything that decides the ids: format version, max_chunk_bytes, merges and
  // special tokens. Token shards record it to name the tokenizer that made them.
  std::uint64_t fingerprint() const { return fingerprint_; }

  std::vector<std::int32_t> encode(std::string_view text) const {
    std::vector<std::int32_t> out;
    encode_append(text, out);
    return out;
  }
  // Appends the ids of text to out.
  void encode_append(std::string_view text, std::vector<std::int32_t>& out) const {
    if (text.size() <= 4096) {
      const std::size_t old = out.size();
      out.resize(old + text.size());
      out.resize(old + encode_into(text, std::span<std::int32_t>(out).subspan(old)));
      return;
    }
    // Large texts: a scratch buffer that is not zeroed first, then exactly the ids.
    const std::unique_ptr<std::int32_t[]> buf(new std::int32_t[text.size()]);
    const std::size_t n = encode_into(text, std::span<std::int32_t>(buf.get(), text.size()));
    out.insert(out.end(), buf.get(), buf.get() + n);
  }
  // Writes the ids of text to out[0, n) and returns n. A text never has more ids than bytes,
  // so out must hold text.size() ids.
  std::size_t encode_into(std::string_view text, std::span<std::int32_t> out) const;

  // The bytes of ids, concatenated; tmoe::Error on an id outside [0, vocab_size()).
  std::string decode(std::span<const std::int32_t> ids) const {
    std::string s;
    decode_append(ids, s);
    return s;
  }
  void decode_append(std::span<const std::int32_t> ids, std::string& out) const {
    std::size_t n = 0;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      check_id(ids[i], static_cast<std::ptrdiff_t>(i), "BpeTokenizer::decode");
      const auto t = static_cast<std::size_t>(ids[i]);
      n += offsets_[t + 1] - offsets_[t];
    }
    out.reserve(out.size() + n);
    for (std::int32_t id : ids) {
      const auto t = static_cast<std::size_t>(id);
      out.append(bytes_, offsets_[t], offsets_[t + 1] - offsets_[t]);
    }
  }

 private:
  friend class BpeTrainer;
  static constexpr std::size_t kParallelMinBytes = 1 << 18;  // shorter texts: one thread
  static constexpr std::size_t kPieceBytes = 1 << 17;        // at least this much per piece

  BpeTokenizer(std::vector<BpeMerge> merges, std::vector<std::string> specials, std::int32_t max_chunk)
      : merges_(std::move(merges)), specials_(std::move(specials)), max_chunk_(max_chunk) {
    init();
  }

  void init() {
    const std::size_t v = static_cast<std::size_t>(vocab_size());
    offsets_.assign(1, 0);
    offsets_.reserve(v + 1);
    bytes_.clear();
    for (int b = 0; b < 256; ++b) {
      bytes_.push_back(static_cast<char>(b));
      offsets_.push_back(bytes_.size());
    }
    for (const BpeMerge& m : merges_) {
      // Copy out first: appending may reallocate bytes_.
      const std::string piece = std::string(token_view(m.left)) + std::string(token_view(m.right));
      bytes_ += piece;
      offsets_.push_back(bytes_.size());
    }
    for (const std::string& s : specials_) {
      bytes_ += s;
      offsets_.push_back(bytes_.size());
    }
    ranks_.build(merges_);
    std::string f = "tmoe-bpe";
    bpe_detail::put_le(f, bpe_detail::kVersion, 4);
    bpe_detail::put_le(f, static_cast<std::uint64_t>(max_chunk_), 4);
    bpe_detail::put_le(f, merges_.size(), 8);
    for (const BpeMerge& m : merges_) {
      bpe_detail::put_le(f, static_cast<std::uint32_t>(m.left), 4);
      bpe_detail::put_le(f, static_cast<std::uint32_t>(m.right), 4);
    }
    bpe_detail::put_le(f, specials_.size(), 8);
    for (const std::string& s : specials_) {
      bpe_detail::put_le(f, s.size(), 8);
      f += s;
    }
    fingerprint_ = xxh64(f);
    serial_ = bpe_detail::next_serial();
  }

  std::string_view token_view(std::int32_t id) const {
    const auto i = static_cast<std::size_t>(id);
    return std::string_view(bytes_).substr(offsets_[i], offsets_[i + 1] - offsets_[i]);
  }

  void check_id(std::int32_t id, std::ptrdiff_t index, const char* where) const {
    if (id < 0 || id >= vocab_size())
      throw Error(::tmoe::detail::cat("token id ", id,
                                      index >= 0 ? ::tmoe::detail::cat(" at position ", index) : std::string(),
                                      " is out of range"),
                  where,
                  ::tmoe::detail::cat("ids in [0, ", vocab_size(), ")"));
  }

  // The ids of one chunk p[0, n) into ids[0, k), k returned; rank is scratch space.
  std::size_t merge_chunk(const unsigned char* p, std::size_t n, std::int32_t* ids,
                          std::vector<std::int32_t>& rank) const {
    for (std::size_t i = 0; i < n; ++i) ids[i] = p[i];
    if (rank.size() < n) rank.resize(n);
    std::int32_t* r = rank.data();
    for (std::size_t i = 0; i + 1 < n; ++i) r[i] = ranks_.find(ids[i], ids[i + 1]);
    while (n > 1) {
      std::int32_t best = bpe_detail::kNoRank;
      for (std::size_t i = 0; i + 1 < n; ++i) best = std::min(best, r[i]);
      if (best == bpe_detail::kNoRank) break;
      const std::int32_t c = 256 + best;
      std::size_t w = 0;
      for (std::size_t i = 0; i < n; ++w) {
        if (i + 1 < n && r[i] == best) {
          ids[w] = c;
          i += 2;
        } else {
          ids[w] = ids[i];
          r[w] = r[i];
          i += 1;
        }
      }
      n = w;
      // Only pairs next to the new id changed (c is new: it occurs nowhere else).
      for (std::size_t i = 0; i + 1 < n; ++i)
        if (ids[i] == c || ids[i + 1] == c) r[i] = ranks_.find(ids[i], ids[i + 1]);
    }
    return n;
  }

  // One thread's encoding of text into out (room for text.size() ids).
  std::size_t encode_serial(std::string_view text, std::int32_t* out) const {
    const auto* base = reinterpret_cast<const unsigned char*>(text.data());
    std::int32_t* o = out;
    std::vector<std::int32_t> rank;
    bpe_detail::ChunkCache& cache = bpe_detail::thread_cache();
    cache.attach(serial_);
    bpe_detail::for_each_chunk(text, static_cast<std::size_t>(max_chunk_), [&](std::size_t off, std::size_t n) {
      const unsigned char* p = base + off;
      if (n == 1) {
        *o++ = p[0];
        return;
      }
      const std::uint64_t h = bpe_detail::hash_bytes(p, n);
      auto& e = cache.lookup(p, n, h);
      if (e.n) {
        o += cache.copy(e, o);
        return;
      }
      const std::size_t k = merge_chunk(p, n, o, rank);
      cache.store(e, p, n, h, o, k);
      o += k;
    });
    return static_cast<std::size_t>(o - out);
  }

  std::vector<BpeMerge> merges_;
  std::vector<std::string> specials_;
  std::int32_t max_chunk_ = 256;
  std::string bytes_;                 // the bytes of every token, in id order
  std::vector<std::size_t> offsets_;  // token id's bytes: [offsets_[id], offsets_[id + 1])
  bpe_detail::PairRanks ranks_;
  std::uint64_t fingerprint_ = 0;
  std::uint64_t serial_ = 0;  // names these contents in the per-thread chunk caches
};

inline std::size_t BpeTokenizer::encode_into(std::string_view text, std::span<std::int32_t> out) const {
  if (out.size() < text.size())
    throw Error(::tmoe::detail::cat("output buffer holds ", out.size(), " ids for a text of ", text.size(), " bytes"),
                "BpeTokenizer::encode_into", "room for text.size() ids (a text never has more ids than bytes)");
  if (merges_.empty()) {
    for (std::size_t i = 0; i < text.size(); ++i) out[i] = static_cast<unsigned char>(text[i]);
    return text.size();
  }
  const int nt = threads();
  if (nt < 2 || text.size() < kParallelMinBytes) return encode_serial(text, out.data());
  // Up to 8 pieces per thread (pieces are claimed dynamically, so a descheduled thread
  // delays the call by one piece, not half the text; the chunk caches are per thread, so
  // more pieces cost no extra cache misses). Piece k is encoded into out at its own byte
  // offset (it has no more ids than bytes), then the pieces are moved together.
  const auto b = bpe_detail::split_points(
      text, std::min<std::size_t>(8 * static_cast<std::size_t>(nt), text.size() / kPieceBytes));
  const std::size_t pieces = b.size() - 1;
  std::vector<std::size_t> count(pieces);
  parallel_for(static_cast<std::int64_t>(pieces), [&](std::int64_t k) {
    const auto i = static_cast<std::size_t>(k);
    count[i] = encode_serial(text.substr(b[i], b[i + 1] - b[i]), out.data() + b[i]);
  });
  std::size_t n = count[0];
  for (std::size_t i = 1; i < pieces; ++i) {
    std::memmove(out.data() + n, out.data() + b[i], count[i] * sizeof(std::int32_t));
    n += count[i];
  }
  return n;
}

inline std::string BpeTokenizer::to_text() const {
  std::string s = ::tmoe::detail::cat("tmoe-bpe ", bpe_detail::kVersion, "\nvocab_size ", vocab_size(),
                                      "\nmax_chunk_bytes ", max_chunk_, "\nmerges ", merges_.size(), "\nspecials ",
                                      specials_.size(), "\n");
  for (const std::string& t : specials_) s += "special " + bpe_detail::escape(t) + "\n";
  s.reserve(s.size() + merges_.size() * 12 + 32);
  for (const BpeMerge& m : merges_) {
    s += std::to_string(m.left);
    s.push_back(' ');
    s += std::to_string(m.right);
    s.push_back('\n');
  }
  s += "xxh64 " + bpe_detail::hex16(xxh64(s)) + "\n";
  return s;
}

inline BpeTokenizer BpeTokenizer::parse(std::string_view text, const std::string& source) {
  using bpe_detail::quote;
  using ::tmoe::detail::cat;
  auto at = [&](std::size_t line) { return cat(source, ":", line); };
  if (text.empty())
    throw Error("the file is empty", source, cat("a tmoe-bpe tokenizer file (format version ", bpe_detail::kVersion, ")"));

  // Line 1: what the file is, before anything else is believed.
  const std::string_view first = text.substr(0, text.find('\n'));
  if (!first.starts_with("tmoe-bpe "))
    throw Error("not a tmoe-bpe tokenizer file: the first line is " + quote(first), at(1),
                cat("the first line 'tmoe-bpe ", bpe_detail::kVersion, "'"));
  std::int64_t version = 0;
  if (!bpe_detail::parse_int(first.substr(9), 0, 1 << 30, version))
    throw Error("bad format version in " + quote(first), at(1), cat("'tmoe-bpe ", bpe_detail::kVersion, "'"));
  if (version != bpe_detail::kVersion)
    throw Error(cat("unsupported format version ", version), at(1), cat("version ", bpe_detail::kVersion));

  // The last line: the checksum of everything before it.
  const std::string kChecksumLine = "a last line 'xxh64 <16 hex digits>'";
  const std::size_t lines = static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
  if (text.back() != '\n')
    throw Error(cat("the file is truncated: it ends inside line ", lines + 1, " without a newline"), source,
                kChecksumLine);
  const std::size_t last_begin = lines > 1 ? text.rfind('\n', text.size() - 2) + 1 : 0;
  const std::string_view last = text.substr(last_begin, text.size() - 1 - last_begin);
  if (!last.starts_with("xxh64 "))
    throw Error(cat("the file is truncated or lacks its checksum: the last line (", lines, ") is ", quote(last)), source,
                kChecksumLine);
  const std::string_view hex = last.substr(6);
  std::uint64_t recorded = 0;
  bool hex_ok = hex.size() == 16;
  for (char c : hex) {
    const int d = bpe_detail::hex_digit(c);
    hex_ok = hex_ok && d >= 0;
    recorded = (recorded << 4) | static_cast<std::uint64_t>(d < 0 ? 0 : d);
  }
  if (!hex_ok) throw Error("bad checksum line " + quote(last), at(lines), "'xxh64 ' and 16 hex digits");
  const std::uint64_t actual = xxh64(text.substr(0, last_begin));
  if (actual != recorded)
    throw Error(cat("checksum mismatch: the file records xxh64 ", hex, " but its contents hash to ",
                    bpe_detail::hex16(actual), " (the file is corrupt or was edited)"),
                at(lines), "a file as BpeTokenizer::save wrote it");

  // The body, line by line (it ends with the '\n' before the checksum line).
  const std::string_view body = text.substr(0, last_begin);
  std::size_t pos = first.size() + 1, line = 1;
  auto next_line = [&](std::string_view& l) {
    if (pos >= body.size()) return false;
    const std::size_t nl = body.find('\n', pos);
    l = body.substr(pos, nl - pos);
    pos = nl + 1;
    ++line;
    return true;
  };
  auto field = [&](std::string_view name, std::int64_t lo, std::int64_t hi) {
    const std::string want = cat("'", name, " N' with N in [", lo, ", ", hi, "]");
    std::string_view l;
    if (!next_line(l))
      throw Error(cat("the header ends early: line ", line + 1, " is the checksum line, not '", name, " <number>'"),
                  at(line + 1), want);
    std::int64_t v = 0;
    if (!l.starts_with(name) || l.size() <= name.size() || l[name.size()] != ' ' ||
        !bpe_detail::parse_int(l.substr(name.size() + 1), lo, hi, v))
      throw Error(cat("expected '", name, " <number>' but found ", quote(l)), at(line), want);
    return v;
  };
  const std::int64_t vocab = field("vocab_size", 256, bpe_detail::kMaxVocab);
  const std::int64_t max_chunk = field("max_chunk_bytes", 2, bpe_detail::kMaxChunkLimit);
  const std::int64_t n_merges = field("merges", 0, bpe_detail::kMaxVocab);
  const std::int64_t n_specials = field("specials", 0, bpe_detail::kMaxVocab);
  if (vocab != 256 + n_merges + n_specials)
    throw Error(cat("count mismatch: vocab_size ", vocab, " is not 256 + ", n_merges, " merges + ", n_specials,
                    " special tokens = ", 256 + n_merges + n_specials),
                at(2), "vocab_size = 256 + merges + specials");
  const std::size_t body_left = lines - 1 - line;  // lines between the header and the checksum
  if (body_left != static_cast<std::size_t>(n_specials + n_merges))
    throw Error(cat("count mismatch: the header announces ", n_specials, " special tokens and ", n_merges,
                    " merges (", n_specials + n_merges, " lines), but ", body_left,
                    " lines lie between the header and the checksum"),
                source, "one line per special token and per merge");

  std::vector<std::string> specials(static_cast<std::size_t>(n_specials));
  const std::size_t first_special_line = line + 1;
  for (auto& s : specials) {
    std::string_view l;
    next_line(l);  // the line count was checked above
    if (!l.starts_with("special ") || !bpe_detail::unescape(l.substr(8), s))
      throw Error("expected 'special <token>' but found " + quote(l), at(line),
                  "'special ' and the token, bytes outside 0x21..0x7e and '\\' written as \\xHH");
  }
  bpe_detail::check_specials(specials, [&](std::size_t i) { return at(first_special_line + i); });

  std::vector<BpeMerge> merges(static_cast<std::size_t>(n_merges));
  const std::size_t first_merge_line = line + 1;
  bpe_detail::MergeChecker checker(max_chunk);
  for (std::size_t r = 0; r < merges.size(); ++r) {
    std::string_view l;
    next_line(l);
    const std::size_t sp = l.find(' ');
    std::int64_t a = 0, b = 0;
    if (sp == std::string_view::npos ||
        !bpe_detail::parse_int(l.substr(0, sp), 0, bpe_detail::kMaxVocab, a) ||
        !bpe_detail::parse_int(l.substr(sp + 1), 0, bpe_detail::kMaxVocab, b))
      throw Error(cat("expected a merge '<left id> <right id>' but found ", quote(l)), at(line),
                  "two decimal ids separated by one space");
    merges[r] = {static_cast<std::int32_t>(a), static_cast<std::int32_t>(b)};
    checker.check(merges, r, [&](std::size_t i) { return at(first_merge_line + i); });
  }
  return BpeTokenizer(std::move(merges), std::move(specials), static_cast<std::int32_t>(max_chunk));
}

// Learns merges from text given in any number of add() calls.
class BpeTrainer {
 public:
  explicit BpeTrainer(BpeTrainOptions options) : opts_(std::move(options)) { bpe_detail::check_options(opts_); }

  // Counts the chunks of text (in parallel for large texts). Chunks never span two calls.
  void add(std::string_view text) {
    bytes_ += text.size();
    if (text.empty()) return;
    const auto max_bytes = static_cast<std::size_t>(opts_.max_chunk_bytes);
    const auto b = bpe_detail::split_points(text, (text.size() + kPieceBytes - 1) / kPieceBytes);
    using Local = std::unordered_map<std::string_view, std::int64_t, bpe_detail::TransparentHash>;
    std::vector<Local> local(b.size() - 1);
    parallel_for(static_cast<std::int64_t>(local.size()), [&](std::int64_t k) {
      const auto i = static_cast<std::size_t>(k);
      const std::string_view piece = text.substr(b[i], b[i + 1] - b[i]);
      bpe_detail::for_each_chunk(piece, max_bytes, [&](std::size_t off, std::size_t n) {
        if (n > 1) ++local[i][piece.substr(off, n)];  // single bytes hold no pair
      });
    });
    for (const Local& m : local)
      for (const auto& [chunk, c] : m) {
        const auto it = counts_.find(chunk);
        if (it == counts_.end()) counts_.emplace(std::string(chunk), c);
        else it->second += c;
      }
  }

  std::uint64_t bytes_added() const { return bytes_; }
  std::size_t unique_chunks() const { return counts_.size(); }

  // Learns the merges. tmoe::Error if no text was added.
  BpeTokenizer train() const;

 private:
  static constexpr std::size_t kPieceBytes = std::size_t{1} << 20;

  struct PairInfo {
    std::int64_t count = 0;
    std::vector<std::uint32_t> words;  // may hold stale or repeated entries
  };
  struct HeapEntry {
    std::int64_t count;
    std::uint64_t key;
  };
  // Max-heap order: higher count first, then the smaller (left, right).
  static bool heap_less(const HeapEntry& x, const HeapEntry& y) {
    return x.count < y.count || (x.count == y.count && x.key > y.key);
  }

  BpeTrainOptions opts_;
  std::unordered_map<std::string, std::int64_t, bpe_detail::TransparentHash, std::equal_to<>> counts_;
  std::uint64_t bytes_ = 0;
};

inline BpeTokenizer BpeTrainer::train() const {
  if (bytes_ == 0)
    throw Error("the corpus is empty: no text was added", "BpeTrainer::train", "at least one byte of text");
  const std::int64_t target = opts_.vocab_size - 256 - static_cast<std::int64_t>(opts_.special_tokens.size());

  // Words: the unique chunks in byte order, as ids laid out one after another.
  std::vector<std::pair<std::string_view, std::int64_t>> sorted(counts_.begin(), counts_.end());
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::int32_t> ids;
  std::vector<std::size_t> off(sorted.size());
  std::vector<std::uint32_t> len(sorted.size());
  std::vector<std::int64_t> cnt(sorted.size());
  for (std::size_t w = 0; w < sorted.size(); ++w) {
    off[w] = ids.size();
    len[w] = static_cast<std::uint32_t>(sorted[w].first.size());
    cnt[w] = sorted[w].second;
    for (unsigned char c : sorted[w].first) ids.push_back(c);
  }

  std::unordered_map<std::uint64_t, PairInfo> pairs;
  for (std::size_t w = 0; w < sorted.size(); ++w) {
    const std::int32_t* s = ids.data() + off[w];
    for (std::uint32_t i = 0; i + 1 < len[w]; ++i) {
      PairInfo& pi = pairs[bpe_detail::pair_key(s[i], s[i + 1])];
      pi.count += cnt[w];
      if (pi.words.empty() || pi.words.back() != w) pi.words.push_back(static_cast<std::uint32_t>(w));
    }
  }
  std::vector<HeapEntry> heap;
  heap.reserve(pairs.size());
  for (const auto& [k, pi] : pairs) heap.push_back({pi.count, k});
  std::make_heap(heap.begin(), heap.end(), heap_less);

  std::vector<BpeMerge> merges;
  std::vector<std::uint64_t> touched;
  while (static_cast<std::int64_t>(merges.size()) < target && !heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), heap_less);
    const HeapEntry top = heap.back();
    heap.pop_back();
    const auto it = pairs.find(top.key);
    const std::int64_t actual = it == pairs.end() ? 0 : it->second.count;
    if (actual != top.count) {  // counts only fall, so a stale entry is re-queued lower
      if (actual > 0) {
        heap.push_back({actual, top.key});
        std::push_heap(heap.begin(), heap.end(), heap_less);
      }
      continue;
    }
    if (actual < opts_.min_pair_count) break;

    const auto a = static_cast<std::int32_t>(top.key >> 32), b = static_cast<std::int32_t>(top.key & 0xffffffffu);
    const std::int32_t c = 256 + static_cast<std::int32_t>(merges.size());
    merges.push_back({a, b});
    std::vector<std::uint32_t> words = std::move(it->second.words);
    std::sort(words.begin(), words.end());
    words.erase(std::unique(words.begin(), words.end()), words.end());
    for (std::uint32_t w : words) {
      std::int32_t* s = ids.data() + off[w];
      const std::uint32_t n = len[w];
      bool has = false;
      for (std::uint32_t i = 0; i + 1 < n && !has; ++i) has = s[i] == a && s[i + 1] == b;
      if (!has) continue;  // a stale entry: an earlier merge took the pair apart
      const std::int64_t k = cnt[w];
      for (std::uint32_t i = 0; i + 1 < n; ++i) pairs.find(bpe_detail::pair_key(s[i], s[i + 1]))->second.count -= k;
      std::uint32_t m = 0;
      for (std::uint32_t i = 0; i < n; ++m) {
        if (i + 1 < n && s[i] == a && s[i + 1] == b) {
          s[m] = c;
          i += 2;
        } else {
          s[m] = s[i++];
        }
      }
      len[w] = m;
      for (std::uint32_t i = 0; i + 1 < m; ++i) {
        const std::uint64_t key = bpe_detail::pair_key(s[i], s[i + 1]);
        PairInfo& pi = pairs[key];
        pi.count += k;
        if (s[i] == c || s[i + 1] == c) {  // a new pair: index the word, queue the pair
          if (pi.words.empty() || pi.words.back() != w) pi.words.push_back(w);
          touched.push_back(key);
        }
      }
    }
    pairs.erase(top.key);
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (std::uint64_t key : touched) {
      heap.push_back({pairs.find(key)->second.count, key});
      std::push_heap(heap.begin(), heap.end(), heap_less);
    }
    touched.clear();
  }
  return BpeTokenizer(std::move(merges), opts_.special_tokens, static_cast<std::int32_t>(opts_.max_chunk_bytes));
}

// Trains on one text: BpeTrainer(options), add(text), train().
inline BpeTokenizer train_bpe(std::string_view text, const BpeTrainOptions& options) {
  BpeTrainer t(options);
  t.add(text);
  return t.train();
}

}  // namespace tmoe::data
