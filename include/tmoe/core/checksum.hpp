#pragma once
// XXH64 (Yann Collet's xxHash, 64-bit variant): the checksum of token shards, checkpoint
// files and manifests, and the content hash of de-duplication. Fast (several GB/s on one
// core), specified byte for byte, and equal to the reference `xxh64sum` and Python's
// `xxhash.xxh64`, which the tests compare against. Not a cryptographic hash: it detects
// corruption, not tampering.
//
//   Xxh64 h;  h.update(p, n);  h.update(q, m);  std::uint64_t d = h.digest();
//   std::uint64_t d = xxh64(p, n);               // the same over the concatenation
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace tmoe {

class Xxh64 {
 public:
  explicit constexpr Xxh64(std::uint64_t seed = 0) : seed_(seed) { reset(seed); }

  constexpr void reset(std::uint64_t seed = 0) {
    seed_ = seed;
    v_[0] = seed + kP1 + kP2;
    v_[1] = seed + kP2;
    v_[2] = seed;
    v_[3] = seed - kP1;
    total_ = 0;
    buffered_ = 0;
  }

  void update(const void* data, std::size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    total_ += n;
    if (buffered_ + n < 32) {
      if (n) std::memcpy(buf_ + buffered_, p, n);
      buffered_ += n;
      return;
    }
    if (buffered_) {
      const std::size_t fill = 32 - buffered_;
      std::memcpy(buf_ + buffered_, p, fill);
      stripe(buf_);
      p += fill;
      n -= fill;
      buffered_ = 0;
    }
    for (; n >= 32; p += 32, n -= 32) stripe(p);
    if (n) std::memcpy(buf_, p, n);
    buffered_ = n;
  }
  void update(std::string_view s) { update(s.data(), s.size()); }

  std::uint64_t digest() const {
    std::uint64_t h;
    if (total_ >= 32) {
      h = std::rotl(v_[0], 1) + std::rotl(v_[1], 7) + std::rotl(v_[2], 12) + std::rotl(v_[3], 18);
      for (std::uint64_t v : v_) h = (h ^ round(0, v)) * kP1 + kP4;
    } else {
      h = seed_ + kP5;
    }
    h += total_;
    const unsigned char* p = buf_;
    std::size_t n = buffered_;
    for (; n >= 8; p += 8, n -= 8) h = std::rotl(h ^ round(0, load64(p)), 27) * kP1 + kP4;
    if (n >= 4) {
      h = std::rotl(h ^ (std::uint64_t{load32(p)} * kP1), 23) * kP2 + kP3;
      p += 4;
      n -= 4;
    }
    for (; n > 0; ++p, --n) h = std::rotl(h ^ (std::uint64_t{*p} * kP5), 11) * kP1;
    h ^= h >> 33;
    h *= kP2;
    h ^= h >> 29;
    h *= kP3;
    h ^= h >> 32;
    return h;
  }

 private:
  static constexpr std::uint64_t kP1 = 0x9E3779B185EBCA87ull, kP2 = 0xC2B2AE3D27D4EB4Full,
                                 kP3 = 0x165667B19E3779F9ull, kP4 = 0x85EBCA77C2B2AE63ull,
                                 kP5 = 0x27D4EB2F165667C5ull;

  static constexpr std::uint64_t round(std::uint64_t acc, std::uint64_t input) {
    return std::rotl(acc + input * kP2, 31) * kP1;
  }
  // Little-endian loads: the digest is defined on bytes, whatever the host order.
  static std::uint64_t load64(const unsigned char* p) {
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
    return v;
  }
  static std::uint32_t load32(const unsigned char* p) {
    return std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 | std::uint32_t{p[2]} << 16 | std::uint32_t{p[3]} << 24;
  }
  void stripe(const unsigned char* p) {
    for (int i = 0; i < 4; ++i) v_[i] = round(v_[i], load64(p + 8 * i));
  }

  std::uint64_t seed_ = 0;
  std::uint64_t v_[4] = {};
  std::uint64_t total_ = 0;
  unsigned char buf_[32] = {};
  std::size_t buffered_ = 0;
};

inline std::uint64_t xxh64(const void* data, std::size_t n, std::uint64_t seed = 0) {
  Xxh64 h(seed);
  h.update(data, n);
  return h.digest();
}
inline std::uint64_t xxh64(std::string_view s, std::uint64_t seed = 0) { return xxh64(s.data(), s.size(), seed); }

}  // namespace tmoe
