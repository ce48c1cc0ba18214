// Fuzz target: tmoe::data::parse_shard_header and TokenShard::open (docs/fuzzing.md).
//
// Input: one mode byte, then the bytes of a shard file. Both checksums guard the fields,
// so random bytes would rarely get past them; the mode byte lets the fuzzer have them
// fixed up first:
//   bit 0  write the header checksum (bytes 56..63) after the other edits
//   bit 1  write the payload checksum (bytes 40..47) over bytes 64..end
//   bit 2  parse_shard_header only: take file_size from the input's last 8 bytes
//          (little-endian) and the header from the bytes before them, so that claimed
//          sizes far beyond the input are tried too
// Every outcome must be a ShardHeader that describes the file or a tmoe::Error.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "fuzz_common.hpp"
#include "tmoe/data/shards.hpp"

namespace {

using namespace tmoe::data;

bool same(const ShardHeader& a, const ShardHeader& b) {
  return a.version == b.version && a.token_bytes == b.token_bytes && a.count == b.count &&
         a.vocab_size == b.vocab_size && a.tokenizer == b.tokenizer && a.payload_xxh64 == b.payload_xxh64 &&
         a.documents == b.documents;
}

// What a header that parse_shard_header accepted must satisfy for a file of `size` bytes.
void check_header(const ShardHeader& h, std::uint64_t size) {
  TMOE_FUZZ_CHECK(h.version == kShardVersion);
  TMOE_FUZZ_CHECK(h.token_bytes == 1 || h.token_bytes == 2 || h.token_bytes == 4);
  TMOE_FUZZ_CHECK(h.vocab_size >= 1 && h.vocab_size <= (std::uint64_t{1} << 31));
  if (h.token_bytes < 4) TMOE_FUZZ_CHECK(h.vocab_size <= (std::uint64_t{1} << (8 * h.token_bytes)));
  TMOE_FUZZ_CHECK(size >= kShardHeaderBytes);
  TMOE_FUZZ_CHECK(h.count <= (size - kShardHeaderBytes) / h.token_bytes);
  TMOE_FUZZ_CHECK(kShardHeaderBytes + h.count * h.token_bytes == size);
}

std::optional<ShardHeader> parse(std::span<const std::byte> bytes, std::uint64_t size) {
  try {
    ShardHeader h = parse_shard_header(bytes, size, "fuzz");
    check_header(h, size);
    return h;
  } catch (const tmoe::Error&) {
    return std::nullopt;
  }
}

void open_and_read(const std::string& path, const std::vector<unsigned char>& file, TokenShard::Verify verify,
                   const std::optional<ShardHeader>& parsed) {
  try {
    const TokenShard s = TokenShard::open(path, verify);
    // open() accepts exactly what parse_shard_header accepts, less the payload checks.
    TMOE_FUZZ_CHECK(parsed && same(s.header(), *parsed));
    const std::uint64_t n = s.size();
    TMOE_FUZZ_CHECK(n == s.header().count);
    std::vector<std::int32_t> tokens(n);
    s.copy(0, n, tokens.data());
    for (std::uint64_t i = 0; i < n; ++i) {
      TMOE_FUZZ_CHECK(tokens[i] == s[i]);
      if (verify.range) TMOE_FUZZ_CHECK(tokens[i] >= 0 && static_cast<std::uint64_t>(tokens[i]) < s.header().vocab_size);
    }
    if (verify.checksum) TMOE_FUZZ_CHECK(tmoe::xxh64(file.data() + kShardHeaderBytes, file.size() - kShardHeaderBytes) == s.header().payload_xxh64);
    if (n > 0) {
      std::int32_t one = 0;
      s.copy(n - 1, 1, &one);
      TMOE_FUZZ_CHECK(one == tokens[n - 1]);
    }
    // Ranges outside the shard are errors.
    for (auto [begin, count] : {std::pair<std::uint64_t, std::uint64_t>{0, n + 1}, {n + 1, 0}, {n, 1}, {1, ~std::uint64_t{0}}}) {
      std::int32_t sink[1];
      try {
        s.copy(begin, count, sink);
        TMOE_FUZZ_CHECK(!"copy outside the shard did not throw");
      } catch (const tmoe::Error&) {
      }
    }
  } catch (const tmoe::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const unsigned mode = data[0];
  std::vector<unsigned char> file(data + 1, data + size);

  if (mode & 4) {
    if (file.size() < 8) return 0;
    const std::uint64_t claimed = detail::get_u64(file.data() + file.size() - 8);
    file.resize(file.size() - 8);
    if ((mode & 1) && file.size() >= kShardHeaderBytes) detail::put_u64(file.data() + 56, tmoe::xxh64(file.data(), 56));
    const auto bytes = std::as_bytes(std::span<const unsigned char>(file));
    if (auto h = parse(bytes, claimed)) TMOE_FUZZ_CHECK(file.size() >= kShardHeaderBytes);
    return 0;
  }

  if ((mode & 2) && file.size() >= kShardHeaderBytes)
    detail::put_u64(file.data() + 40, tmoe::xxh64(file.data() + kShardHeaderBytes, file.size() - kShardHeaderBytes));
  if ((mode & 1) && file.size() >= kShardHeaderBytes) detail::put_u64(file.data() + 56, tmoe::xxh64(file.data(), 56));

  const auto bytes = std::as_bytes(std::span<const unsigned char>(file));
  const std::optional<ShardHeader> parsed = parse(bytes, file.size());
  // Only the first 64 bytes matter to the header parser.
  const auto head = parse(bytes.first(std::min<std::size_t>(bytes.size(), kShardHeaderBytes)), file.size());
  TMOE_FUZZ_CHECK(parsed.has_value() == head.has_value());
  if (parsed) TMOE_FUZZ_CHECK(same(*parsed, *head));

  tmoe::fuzz::InputFile input(file.data(), file.size());
  open_and_read(input.path(), file, TokenShard::Verify{}, parsed);
  open_and_read(input.path(), file, TokenShard::Verify{false, false}, parsed);
  open_and_read(input.path(), file, TokenShard::Verify{true, false}, parsed);
  return 0;
}
