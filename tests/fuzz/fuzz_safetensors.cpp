// Fuzz target: tmoe::io::SafetensorsFile::open and its readers (docs/fuzzing.md).
//
// The input is a whole safetensors file. Whatever it holds, open() and every reader must
// either succeed or throw tmoe::Error; any other exception, crash, sanitizer report, hang
// or runaway allocation is a bug. When open() succeeds, the harness checks what open()
// promises: tensors tile the data section exactly (no gap, overlap or trailing byte) and
// each tensor's byte size is numel * dtype size; every reader then runs on every tensor.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz_common.hpp"
#include "tmoe/io/safetensors.hpp"

namespace {

using tmoe::io::SafetensorsFile;

// Reads `name` as T; a dtype that does not convert, or an integer that does not fit T, is
// a tmoe::Error. On success the element count must match the tensor's.
template <class T>
void try_read(const SafetensorsFile& f, const std::string& name) {
  std::vector<T> v;
  try {
    v = f.read<T>(name);
  } catch (const tmoe::Error&) {
    return;
  }
  TMOE_FUZZ_CHECK(v.size() == static_cast<std::size_t>(f.info(name).numel()));
  if constexpr (std::is_same_v<T, float>)
    if (f.info(name).dtype == "F32") TMOE_FUZZ_CHECK(v.empty() || std::memcmp(v.data(), f.bytes(name).data(), v.size() * 4) == 0);
}

void exercise(const SafetensorsFile& f, std::size_t file_size) {
  const std::vector<std::string> names = f.names();
  TMOE_FUZZ_CHECK(names.size() == f.size());
  TMOE_FUZZ_CHECK(std::is_sorted(names.begin(), names.end()));
  for (const auto& [k, v] : f.metadata()) (void)(k.size() + v.size());

  // The tensors tile the data section, which ends at the end of the file.
  struct Range {
    const std::byte *begin, *end;
  };
  std::vector<Range> ranges;
  std::uint64_t total = 0;
  for (const auto& name : names) {
    TMOE_FUZZ_CHECK(f.has(name));
    const tmoe::io::TensorInfo& info = f.info(name);
    const std::size_t elem = tmoe::io::detail::dtype_size(info.dtype);
    TMOE_FUZZ_CHECK(elem != 0);
    for (auto d : info.shape) TMOE_FUZZ_CHECK(d >= 0);
    const auto bytes = f.bytes(name);
    const std::int64_t numel = info.numel();
    TMOE_FUZZ_CHECK(numel >= 0);
    TMOE_FUZZ_CHECK(bytes.size() / elem == static_cast<std::uint64_t>(numel) && bytes.size() % elem == 0);
    ranges.push_back({bytes.data(), bytes.data() + bytes.size()});
    total += bytes.size();
  }
  TMOE_FUZZ_CHECK(total <= file_size);
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (std::size_t i = 1; i < ranges.size(); ++i) TMOE_FUZZ_CHECK(ranges[i].begin == ranges[i - 1].end);
  // Two zero-size tensors may sit anywhere in a zero-size data section; otherwise the
  // last byte of the last tensor is the last byte of the file.
  if (total > 0) {
    const std::byte* first = ranges.front().begin;
    TMOE_FUZZ_CHECK(ranges.back().end == first + total);
    // The data section starts after the 8-byte length and the header.
    const std::uint64_t header = file_size - total - 8;
    std::uint64_t declared = 0;
    std::memcpy(&declared, first - header - 8, 8);
    TMOE_FUZZ_CHECK(declared == header);
  }

  for (const auto& name : names) {
    try_read<float>(f, name);
    try_read<double>(f, name);
    try_read<std::int64_t>(f, name);
    try_read<std::int32_t>(f, name);
    try_read<std::int16_t>(f, name);
    try_read<std::uint8_t>(f, name);
    try_read<std::uint64_t>(f, name);
  }
  // A name the file lacks is an error, never a crash.
  try {
    (void)f.info("\x01 not a tensor name");
    TMOE_FUZZ_CHECK(f.has("\x01 not a tensor name"));
  } catch (const tmoe::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  tmoe::fuzz::InputFile file(data, size);
  try {
    const SafetensorsFile f = SafetensorsFile::open(file.path());
    exercise(f, size);
    const SafetensorsFile copy = f;  // copies share the mapping
    TMOE_FUZZ_CHECK(copy.names() == f.names());
  } catch (const tmoe::Error&) {
  }
  return 0;
}
