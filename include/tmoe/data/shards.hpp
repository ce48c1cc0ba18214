#pragma once
// Token shards: the training data as tmoe reads it, written once by `tmoe-prep` and read
// through mmap (DESIGN.md "Data").
//
//   [64-byte header][count tokens, little-endian, token_bytes each]
//
//   offset size  field
//        0    8  magic "TMOESHRD"
//        8    4  version (1)
//       12    4  token_bytes: 1 (vocabulary <= 256), 2 (<= 65536) or 4
//       16    8  count: tokens in the file
//       24    8  vocab_size: every token is < vocab_size
//       32    8  tokenizer fingerprint (0: raw bytes)
//       40    8  xxh64 of the token bytes
//       48    8  documents: records concatenated into this shard (informational)
//       56    8  xxh64 of bytes 0..55 (the header checks itself)
//
// Opening validates, in order, the size, the magic, the version, the header checksum, the
// field values, the file size against count, and (unless told not to) the payload
// checksum and the token range; any failure is a tmoe::Error naming the file. A writer
// builds the file under a temporary name and renames it into place after fsync, so a
// shard on disk is always complete.
//
// A dataset is a folder: train-NNNNN.tok, val-NNNNN.tok and dataset.json (written last,
// atomically: the tokenizer, vocabulary, each shard's size and checksum, the cleaning
// report). A folder without dataset.json is not a dataset.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tmoe/core/checksum.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/io/atomic_file.hpp"

namespace tmoe::data {

inline constexpr std::array<char, 8> kShardMagic = {'T', 'M', 'O', 'E', 'S', 'H', 'R', 'D'};
inline constexpr std::uint32_t kShardVersion = 1;
inline constexpr std::size_t kShardHeaderBytes = 64;

struct ShardHeader {
  std::uint32_t version = kShardVersion;
  std::uint32_t token_bytes = 2;
  std::uint64_t count = 0;
  std::uint64_t vocab_size = 0;
  std::uint64_t tokenizer = 0;
  std::uint64_t payload_xxh64 = 0;
  std::uint64_t documents = 0;
};

// The narrowest token width that holds ids < vocab_size.
inline std::uint32_t token_bytes_for(std::uint64_t vocab_size) {
  return vocab_size <= 256 ? 1 : vocab_size <= 65536 ? 2 : 4;
}

namespace detail {
using ::tmoe::detail::cat;

inline void put_u32(unsigned char* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
inline void put_u64(unsigned char* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
inline std::uint32_t get_u32(const unsigned char* p) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
inline std::uint64_t get_u64(const unsigned char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
}  // namespace detail

inline std::array<unsigned char, kShardHeaderBytes> encode_shard_header(const ShardHeader& h) {
  std::array<unsigned char, kShardHeaderBytes> b{};
  std::memcpy(b.data(), kShardMagic.data(), 8);
  detail::put_u32(b.data() + 8, h.version);
  detail::put_u32(b.data() + 12, h.token_bytes);
  detail::put_u64(b.data() + 16, h.count);
  detail::put_u64(b.data() + 24, h.vocab_size);
  detail::put_u64(b.data() + 32, h.tokenizer);
  detail::put_u64(b.data() + 40, h.payload_xxh64);
  detail::put_u64(b.data() + 48, h.documents);
  detail::put_u64(b.data() + 56, xxh64(b.data(), 56));
  return b;
}

// Parses and checks the header of a shard file of `file_size` bytes whose first bytes are
// `bytes` (at least 64 of them unless the file is shorter). Checks everything that does
// not need the payload. `where` names the file in errors.
inline ShardHeader parse_shard_header(std::span<const std::byte> bytes, std::uint64_t file_size,
                                      const std::string& where) {
  using detail::cat;
  const char* what_shard = "a tmoe token shard written by tmoe-prep";
  if (file_size < kShardHeaderBytes || bytes.size() < kShardHeaderBytes)
    throw Error(cat("file is ", file_size, " bytes, shorter than the ", kShardHeaderBytes, "-byte shard header"),
                where, what_shard);
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  if (std::memcmp(b, kShardMagic.data(), 8) != 0) throw Error("wrong magic (not a token shard)", where, what_shard);
  ShardHeader h;
  h.version = detail::get_u32(b + 8);
  if (h.version != kShardVersion)
    throw Error(cat("shard format version ", h.version, " is not supported"), where,
                cat("version ", kShardVersion, "; re-run tmoe-prep"));
  if (detail::get_u64(b + 56) != xxh64(b, 56))
    throw Error("header checksum mismatch (the header is corrupt)", where, "an intact shard; re-run tmoe-prep");
  h.token_bytes = detail::get_u32(b + 12);
  h.count = detail::get_u64(b + 16);
  h.vocab_size = detail::get_u64(b + 24);
  h.tokenizer = detail::get_u64(b + 32);
  h.payload_xxh64 = detail::get_u64(b + 40);
  h.documents = detail::get_u64(b + 48);
  if (h.token_bytes != 1 && h.token_bytes != 2 && h.token_bytes != 4)
    throw Error(cat("token width is ", h.token_bytes, " bytes"), where, "1, 2 or 4");
  if (h.vocab_size == 0 || h.vocab_size > (std::uint64_t{1} << 31))
    throw Error(cat("vocab_size is ", h.vocab_size), where, "1 .. 2^31");
  if (h.vocab_size > (std::uint64_t{1} << (8 * std::min<std::uint32_t>(h.token_bytes, 4))) && h.token_bytes < 4)
    throw Error(cat("vocab_size ", h.vocab_size, " does not fit ", h.token_bytes, "-byte tokens"), where,
                "a token width that holds the vocabulary");
  const std::uint64_t payload = file_size - kShardHeaderBytes;
  if (h.count > payload / h.token_bytes || h.count * h.token_bytes != payload)
    throw Error(cat("file holds ", payload, " payload bytes but the header says ", h.count, " tokens of ",
                    h.token_bytes, " bytes (truncated or padded)"),
                where, cat(h.count * h.token_bytes, " payload bytes"));
  return h;
}

// One shard, mapped read-only. Movable, not copyable.
class TokenShard {
 public:
  struct Verify {
    bool checksum = true;  // hash the payload against the header
    bool range = true;     // every token < vocab_size
  };

  static TokenShard open(const std::string& path, Verify verify) {
    using detail::cat;
    TokenShard s;
    s.path_ = path;
    // O_NONBLOCK: a FIFO must not block open() until a writer comes (it is then refused
    // as not a regular file); it changes nothing for a regular file.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) throw Error(cat("cannot open token shard: ", std::strerror(errno)), path, "a readable shard file");
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw Error("token shard is not a regular file", path, "a shard file written by tmoe-prep");
    }
    s.size_ = static_cast<std::uint64_t>(st.st_size);
    if (s.size_ > 0) {
      void* m = ::mmap(nullptr, s.size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (m == MAP_FAILED) {
        const int e = errno;
        ::close(fd);
        throw Error(cat("cannot map token shard: ", std::strerror(e)), path, "a readable shard file");
      }
      s.map_ = static_cast<const std::byte*>(m);
    }
    ::close(fd);
    s.header_ = parse_shard_header({s.map_, s.map_ ? s.size_ : 0}, s.size_, path);
    if (verify.checksum && xxh64(s.payload(), s.header_.count * s.header_.token_bytes) != s.header_.payload_xxh64)
      throw Error("payload checksum mismatch (the tokens are corrupt)", path, "an intact shard; re-run tmoe-prep");
    if (verify.range) s.check_range();
    ::madvise(const_cast<std::byte*>(s.map_), s.size_, MADV_WILLNEED);
    return s;
  }
  static TokenShard open(const std::string& path) { return open(path, Verify{}); }

  TokenShard(TokenShard&& o) noexcept { swap(o); }
  TokenShard& operator=(TokenShard&& o) noexcept {
    if (this != &o) {
      unmap();
      swap(o);
    }
    return *this;
  }
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;
  ~TokenShard() { unmap(); }

  const ShardHeader& header() const { return header_; }
  std::uint64_t size() const { return header_.count; }
  const std::string& path() const { return path_; }

  std::int32_t operator[](std::uint64_t i) const {
    const std::byte* p = payload() + i * header_.token_bytes;
    switch (header_.token_bytes) {
      case 1: return static_cast<std::int32_t>(std::to_integer<unsigned>(p[0]));
      case 2: return static_cast<std::int32_t>(std::to_integer<unsigned>(p[0]) | std::to_integer<unsigned>(p[1]) << 8);
      default: {
        std::uint32_t v = 0;
        for (int k = 3; k >= 0; --k) v = (v << 8) | std::to_integer<unsigned>(p[k]);
        return static_cast<std::int32_t>(v);
      }
    }
  }
  // Copies tokens [begin, begin + n) as int32.
  void copy(std::uint64_t begin, std::uint64_t n, std::int32_t* out) const {
    if (begin > header_.count || n > header_.count - begin)
      throw Error(detail::cat("tokens [", begin, ", ", begin + n, ") are outside the shard of ", header_.count),
                  path_, "a range inside the shard");
    const std::byte* p = payload() + begin * header_.token_bytes;
    if (header_.token_bytes == 1) {
      for (std::uint64_t i = 0; i < n; ++i) out[i] = static_cast<std::int32_t>(std::to_integer<unsigned>(p[i]));
    } else {
      for (std::uint64_t i = 0; i < n; ++i) out[i] = (*this)[begin + i];
    }
  }

 private:
  TokenShard() = default;
  const std::byte* payload() const { return map_ + kShardHeaderBytes; }
  void check_range() const {
    std::uint64_t bad = header_.count;
    for (std::uint64_t i = 0; i < header_.count; ++i)
      if (static_cast<std::uint32_t>((*this)[i]) >= header_.vocab_size) {
        bad = i;
        break;
      }
    if (bad != header_.count)
      throw Error(detail::cat("token ", bad, " is ", static_cast<std::uint32_t>((*this)[bad]),
                              ", outside the vocabulary of ", header_.vocab_size),
                  path_, "tokens < vocab_size");
  }
  void unmap() {
    if (map_) ::munmap(const_cast<std::byte*>(map_), size_);
    map_ = nullptr;
  }
  void swap(TokenShard& o) noexcept {
    std::swap(map_, o.map_);
    std::swap(size_, o.size_);
    std::swap(header_, o.header_);
    std::swap(path_, o.path_);
  }

  const std::byte* map_ = nullptr;
  std::uint64_t size_ = 0;
  ShardHeader header_;
  std::string path_;
};

// Writes one shard: append tokens, then commit() (or the destructor abandons the
// temporary file). Tokens are range-checked as they come.
class ShardWriter {
 public:
  ShardWriter(std::string path, std::uint64_t vocab_size, std::uint64_t tokenizer)
      : file_(std::move(path)), vocab_(vocab_size), tokenizer_(tokenizer) {
    if (vocab_size == 0 || vocab_size > (std::uint64_t{1} << 31))
      throw Error(detail::cat("vocab_size is ", vocab_size), file_.path(), "1 .. 2^31");
    header_.token_bytes = token_bytes_for(vocab_size);
    header_.vocab_size = vocab_size;
    header_.tokenizer = tokenizer;
    const auto placeholder = std::array<unsigned char, kShardHeaderBytes>{};
    file_.write(placeholder.data(), placeholder.size());
  }

  void append(std::span<const std::int32_t> tokens) {
    buf_.resize(tokens.size() * header_.token_bytes);
    unsigned char* p = buf_.data();
    for (std::int32_t t : tokens) {
      if (t < 0 || static_cast<std::uint64_t>(t) >= vocab_)
        throw Error(detail::cat("token ", t, " is outside the vocabulary of ", vocab_), file_.path(),
                    "tokens in [0, vocab_size)");
      for (std::uint32_t k = 0; k < header_.token_bytes; ++k) *p++ = static_cast<unsigned char>(t >> (8 * k));
    }
    hash_.update(buf_.data(), buf_.size());
    file_.write(buf_.data(), buf_.size());
    header_.count += tokens.size();
  }
  void end_document() { ++header_.documents; }
  std::uint64_t count() const { return header_.count; }

  ShardHeader commit() {
    header_.payload_xxh64 = hash_.digest();
    const auto h = encode_shard_header(header_);
    file_.write_at(0, h.data(), h.size());
    file_.commit();
    return header_;
  }

 private:
  io::AtomicFile file_;
  std::uint64_t vocab_;
  std::uint64_t tokenizer_;
  ShardHeader header_;
  Xxh64 hash_;
  std::vector<unsigned char> buf_;
};

// A prepared dataset: the shards of one split, read as one stream of documents.
struct ShardInfo {
  std::string file;  // relative to the dataset folder
  std::uint64_t tokens = 0;
  std::uint64_t xxh64 = 0;
};

struct DatasetManifest {
  std::uint64_t vocab_size = 256;
  std::uint64_t tokenizer = 0;        // fingerprint; 0 = raw bytes
  std::string tokenizer_file;         // BPE merges file, relative; empty for bytes
  std::vector<ShardInfo> train, val;
  nlohmann::json report;              // what tmoe-prep did (sources, cleaning, timings)
};

inline constexpr const char* kDatasetManifest = "dataset.json";

inline void write_dataset_manifest(const std::string& folder, const DatasetManifest& m) {
  nlohmann::json j;
  j["format"] = "tmoe-dataset";
  j["version"] = 1;
  j["vocab_size"] = m.vocab_size;
  j["tokenizer"] = m.tokenizer;
  j["tokenizer_file"] = m.tokenizer_file;
  for (const auto* split : {&m.train, &m.val}) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& s : *split) a.push_back({{"file", s.file}, {"tokens", s.tokens}, {"xxh64", s.xxh64}});
    j[split == &m.train ? "train" : "val"] = a;
  }
  j["report"] = m.report;
  io::write_file_atomic((std::filesystem::path(folder) / kDatasetManifest).string(), j.dump(2) + "\n");
}

inline DatasetManifest read_dataset_manifest(const std::string& folder) {
  using detail::cat;
  const std::string path = (std::filesystem::path(folder) / kDatasetManifest).string();
  const char* expected = "a dataset folder written by tmoe-prep (with dataset.json)";
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("dataset manifest cannot be opened", path, expected);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat("dataset manifest is not valid JSON: ", e.what()), path, expected);
  }
  DatasetManifest m;
  try {
    if (j.at("format").get<std::string>() != "tmoe-dataset") throw Error("wrong format name", path, expected);
    if (j.at("version").get<int>() != 1) throw Error("unsupported dataset version", path, "version 1");
    m.vocab_size = j.at("vocab_size").get<std::uint64_t>();
    m.tokenizer = j.at("tokenizer").get<std::uint64_t>();
    m.tokenizer_file = j.at("tokenizer_file").get<std::string>();
    for (const char* split : {"train", "val"})
      for (const auto& e : j.at(split)) {
        ShardInfo s{e.at("file").get<std::string>(), e.at("tokens").get<std::uint64_t>(),
                    e.at("xxh64").get<std::uint64_t>()};
        if (s.file.empty() || s.file.find('/') != std::string::npos || s.file.starts_with("."))
          throw Error(cat("shard name '", s.file, "' is not a plain file name"), path, "names inside the folder");
        (std::string_view(split) == "train" ? m.train : m.val).push_back(std::move(s));
      }
    if (j.contains("report")) m.report = j["report"];
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat("dataset manifest is missing a field or has a wrong type: ", e.what()), path, expected);
  }
  if (m.train.empty()) throw Error("dataset has no training shards", path, "at least one train shard");
  return m;
}

// Writes a dataset folder: documents go to the split's current shard, a new shard starts
// once one holds max_shard_tokens, and dataset.json is written last by finish(), so a
// folder whose manifest exists is complete. The folder may exist but must not already
// hold a dataset (tmoe-prep never overwrites one).
class DatasetWriter {
 public:
  enum Split { kTrain = 0, kVal = 1 };

  DatasetWriter(std::string folder, std::uint64_t vocab_size, std::uint64_t tokenizer, std::string tokenizer_file,
                std::uint64_t max_shard_tokens = std::uint64_t{1} << 28)
      : folder_(std::move(folder)), max_tokens_(max_shard_tokens) {
    namespace fs = std::filesystem;
    if (max_shard_tokens == 0) throw Error("max_shard_tokens is 0", folder_, "a positive token count");
    std::error_code ec;
    fs::create_directories(folder_, ec);
    if (ec) throw Error("cannot create the dataset folder: " + ec.message(), folder_, "a writable path");
    if (fs::exists(fs::path(folder_) / kDatasetManifest))
      throw Error("folder already holds a dataset (dataset.json exists)", folder_,
                  "a new or empty folder; delete the old dataset first");
    manifest_.vocab_size = vocab_size;
    manifest_.tokenizer = tokenizer;
    manifest_.tokenizer_file = std::move(tokenizer_file);
  }

  void add(Split split, std::span<const std::int32_t> document) {
    auto& w = writer_[split];
    if (w && w->count() >= max_tokens_) close(split);
    if (!w) {
      auto& list = split == kTrain ? manifest_.train : manifest_.val;
      char name[32];
      std::snprintf(name, sizeof name, "%s-%05zu.tok", split == kTrain ? "train" : "val", list.size());
      names_[split] = name;
      w.emplace((std::filesystem::path(folder_) / name).string(), manifest_.vocab_size, manifest_.tokenizer);
    }
    w->append(document);
    w->end_document();
  }

  const DatasetManifest& finish(nlohmann::json report = {}) {
    close(kTrain);
    close(kVal);
    manifest_.report = std::move(report);
    write_dataset_manifest(folder_, manifest_);
    return manifest_;
  }

 private:
  void close(Split split) {
    auto& w = writer_[split];
    if (!w) return;
    const ShardHeader h = w->commit();
    (split == kTrain ? manifest_.train : manifest_.val).push_back({names_[split], h.count, h.payload_xxh64});
    w.reset();
  }

  std::string folder_;
  std::uint64_t max_tokens_;
  DatasetManifest manifest_;
  std::optional<ShardWriter> writer_[2];
  std::string names_[2];
};

// Both splits of a prepared dataset, opened and cross-checked against the manifest.
struct TokenDataset {
  DatasetManifest manifest;
  std::vector<TokenShard> train, val;
  std::string folder;

  static TokenDataset open(const std::string& folder, TokenShard::Verify verify = {}) {
    using detail::cat;
    TokenDataset d;
    d.folder = folder;
    d.manifest = read_dataset_manifest(folder);
    for (const auto* split : {&d.manifest.train, &d.manifest.val})
      for (const ShardInfo& info : *split) {
        const std::string path = (std::filesystem::path(folder) / info.file).string();
        TokenShard s = TokenShard::open(path, verify);
        const ShardHeader& h = s.header();
        if (h.count != info.tokens || h.payload_xxh64 != info.xxh64)
          throw Error(cat("shard holds ", h.count, " tokens with checksum ", h.payload_xxh64, " but dataset.json lists ",
                          info.tokens, " with ", info.xxh64),
                      path, "the shard dataset.json describes (re-run tmoe-prep)");
        if (h.vocab_size != d.manifest.vocab_size || h.tokenizer != d.manifest.tokenizer)
          throw Error(cat("shard was written for vocabulary ", h.vocab_size, " / tokenizer ", h.tokenizer,
                          ", the dataset says ", d.manifest.vocab_size, " / ", d.manifest.tokenizer),
                      path, "shards of one tokenizer");
        (split == &d.manifest.train ? d.train : d.val).push_back(std::move(s));
      }
    return d;
  }

  // A hash of what the sampler sees: vocabulary, tokenizer and every shard's checksum.
  std::uint64_t fingerprint() const {
    Xxh64 h;
    auto add = [&](std::uint64_t v) { h.update(&v, sizeof v); };
    add(manifest.vocab_size);
    add(manifest.tokenizer);
    for (const auto* split : {&manifest.train, &manifest.val}) {
      add(split->size());
      for (const ShardInfo& s : *split) {
        add(s.tokens);
        add(s.xxh64);
      }
    }
    return h.digest();
  }
};

}  // namespace tmoe::data
