// XXH64 against digests printed by Python's `xxhash` package (Debian python3-xxhash) for
// the byte pattern data[i] = (131 i + 7) mod 256, at lengths that cover every tail path
// (empty, < 4, < 8, < 32, exact stripes, stripes plus tails), with seeds 0 and 12345;
// and streaming in any split equals one call.
#define BOOST_TEST_MODULE checksum
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <vector>

#include "tmoe/core/checksum.hpp"
#include "tmoe/core/philox.hpp"

namespace {
std::vector<unsigned char> pattern(std::size_t n) {
  std::vector<unsigned char> d(n);
  for (std::size_t i = 0; i < n; ++i) d[i] = static_cast<unsigned char>((i * 131 + 7) % 256);
  return d;
}
struct Known {
  std::size_t n;
  std::uint64_t seed0, seed12345;
};
constexpr Known kKnown[] = {
    {0, 0xef46db3751d8e999ull, 0x95584af7701f808dull},    {1, 0xa96c7f0ce858bbb7ull, 0x496fc29a1e753bd7ull},
    {3, 0xbed43740ee6332bbull, 0xb6b19aedc2948346ull},    {4, 0xfa212ae44b3bb23dull, 0x14172bb7250877afull},
    {7, 0x2744460dd675d2c0ull, 0x8652f10a98d4ca79ull},    {8, 0x994b676b71ce94ddull, 0xaf294d209690c736ull},
    {31, 0x6711d55e306b5d8full, 0x17dd097895721fa7ull},   {32, 0x07f7b8e3bc5d6e25ull, 0xf3a05319bc5e3718ull},
    {33, 0x09f85eeb4e1cbe9full, 0x16b78ac8c6986979ull},   {63, 0xb7c9968c066cb6a5ull, 0xee9799100775ac1dull},
    {64, 0x50d4159a0411632eull, 0x1fa49a6ecd161475ull},   {100, 0x9ddada11d3dc2d8full, 0x21fc897b6959f33aull},
    {1000, 0x0bf0bdbcc82eb373ull, 0xfbc39d8f021fda77ull},
};
}  // namespace

BOOST_AUTO_TEST_CASE(matches_python_xxhash) {
  const auto data = pattern(1000);
  for (const Known& k : kKnown) {
    BOOST_TEST_CONTEXT("length " << k.n) {
      BOOST_TEST(tmoe::xxh64(data.data(), k.n) == k.seed0);
      BOOST_TEST(tmoe::xxh64(data.data(), k.n, 12345) == k.seed12345);
    }
  }
}

BOOST_AUTO_TEST_CASE(streaming_equals_one_call_for_any_split) {
  const auto data = pattern(1000);
  for (std::uint32_t trial = 0; trial < 200; ++trial) {
    const tmoe::RngKey key{7, trial, tmoe::site_id(tmoe::Site::kTest), 0};
    const std::size_t n = key.bits(0) % 1001;
    tmoe::Xxh64 h(trial);
    std::size_t at = 0;
    for (std::uint32_t piece = 1; at < n; ++piece) {
      const std::size_t len = std::min<std::size_t>(n - at, key.bits(piece) % 70);
      h.update(data.data() + at, len);
      at += len;
    }
    BOOST_TEST(h.digest() == tmoe::xxh64(data.data(), n, trial));
  }
}
