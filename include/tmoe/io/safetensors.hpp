#pragma once
// safetensors: the checkpoint and weights format (the one Hugging Face uses), so tmoe files
// open in PyTorch and published weights open in tmoe.
//
//   [u64 little-endian N][N bytes of UTF-8 JSON header][data section]
//
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end)}, with
// offsets relative to the data section, plus an optional "__metadata__" object of
// string -> string. tmoe pads the header with spaces so the data section starts on an
// 8-byte boundary. A file is accepted only if its tensors tile the data section exactly:
// a gap, an overlap or trailing bytes mean the header does not describe the data.
//
// Checkpoints store logical tensors by global name (DESIGN.md 6), taken from the model's
// ParamRegistry (DESIGN.md 4); every bad file throws tmoe::Error naming the file, the
// tensor and what was expected (DESIGN.md 7), and a writer that dies mid-way never leaves
// a truncated file under the final name.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tmoe/core/error.hpp"
#include "tmoe/core/registry.hpp"
#include "tmoe/io/atomic_file.hpp"

namespace tmoe::io {

static_assert(std::endian::native == std::endian::little,
              "tmoe: safetensors I/O copies little-endian bytes as they are; add byte swapping "
              "before using it on a big-endian host");

// One tensor to write: `data` points at numel * sizeof(dtype) bytes, row-major, in the host's
// (little-endian) byte order. dtype is one of F32 F64 I32 I64 BF16 F16 U8.
struct TensorRef {
  std::string name;
  std::string dtype;
  std::vector<std::int64_t> shape;  // empty for a 0-d (scalar) tensor
  const void* data = nullptr;
};

struct TensorInfo {
  std::string dtype;
  std::vector<std::int64_t> shape;
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

namespace detail {

inline constexpr const char* kDtypeList = "one of F32, F64, I32, I64, BF16, F16, U8";
// Limits of what open() parses: the header length (the one the safetensors reference
// implementation enforces), and JSON nesting (a valid header nests 3 deep; nlohmann's
// dump(), used in error messages, recurses once per level).
inline constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
inline constexpr int kMaxHeaderDepth = 64;

// Bytes per element of a safetensors dtype; 0 for a dtype tmoe does not know.
inline std::size_t dtype_size(std::string_view dtype) {
  if (dtype == "F64" || dtype == "I64") return 8;
  if (dtype == "F32" || dtype == "I32") return 4;
  if (dtype == "BF16" || dtype == "F16") return 2;
  if (dtype == "U8") return 1;
  return 0;
}
inline bool is_float_dtype(std::string_view d) { return d == "F32" || d == "F64" || d == "BF16" || d == "F16"; }
inline bool is_int_dtype(std::string_view d) { return d == "I32" || d == "I64" || d == "U8"; }

inline std::string shape_str(const std::vector<std::int64_t>& s) {
  std::string r = "(";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + ")";
}

// numel * elem in bytes; false if it does not fit in 64 bits.
inline bool byte_count(const std::vector<std::int64_t>& shape, std::uint64_t elem, std::uint64_t& bytes) {
  std::uint64_t n = elem;
  for (auto d : shape)
    if (__builtin_mul_overflow(n, static_cast<std::uint64_t>(d), &n)) return false;
  bytes = n;
  return true;
}

// IEEE binary16 -> binary32, exact (every half is a float).
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t mant = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);  // rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal half: normalise the mantissa into a normal float.
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    bits = sign | (static_cast<std::uint32_t>(112 - e) << 23) | ((mant & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}
inline float bf16_to_float(std::uint16_t b) { return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16); }

template <class S>
S load_le(const std::byte* p) {
  S v;
  std::memcpy(&v, p, sizeof(S));  // tensors need not be aligned inside the data section
  return v;
}



// A read-only private mapping of a whole file; shared by copies of a SafetensorsFile.
class Mapping {
 public:
  Mapping(void* p, std::size_t n) : p_(p), n_(n) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (p_) ::munmap(p_, n_);
  }
  const std::byte* data() const { return static_cast<const std::byte*>(p_); }
  std::size_t size() const { return n_; }

 private:
  void* p_;
  std::size_t n_;
};

}  // namespace detail

// Writes `tensors` (in the given order) and `metadata` to `path`. The bytes go to
// a temporary file that is fsynced and renamed over `path` (AtomicFile), so `path` always
// holds either the previous file or the complete new one.
inline void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& m = header["__metadata__"] = nlohmann::ordered_json::object();
    for (auto& [k, v] : metadata) m[k] = v;
  }
  std::set<std::string_view> seen;
  std::vector<std::uint64_t> sizes;
  std::uint64_t offset = 0;
  for (auto& t : tensors) {
    const std::string where = path + ": tensor '" + t.name + "'";
    if (t.name.empty()) throw Error("tensor name is empty", path, "a non-empty name for every tensor");
    if (t.name == "__metadata__")
      throw Error("'__metadata__' is reserved for the metadata object", where, "another tensor name");
    if (!seen.insert(t.name).second)
      throw Error("name appears twice", where, "unique tensor names");
    const std::size_t elem = detail::dtype_size(t.dtype);
    if (elem == 0) throw Error("unknown dtype '" + t.dtype + "'", where, detail::kDtypeList);
    for (auto d : t.shape)
      if (d < 0) throw Error("negative dimension in shape " + detail::shape_str(t.shape), where, "dimensions >= 0");
    std::uint64_t bytes = 0;
    if (!detail::byte_count(t.shape, elem, bytes) || bytes > std::numeric_limits<std::uint64_t>::max() - offset)
      throw Error("tensor of shape " + detail::shape_str(t.shape) + " is too large", where, "a size below 2^64 bytes");
    // What the reader refuses, the writer does not write: a running element count past 2^63.
    std::int64_t numel = 1;
    for (auto d : t.shape)
      if (__builtin_mul_overflow(numel, d, &numel))
        throw Error("the product of the dimensions of shape " + detail::shape_str(t.shape) +
                        " overflows a 64-bit element count",
                    where, "dimensions whose running product stays below 2^63");
    if (bytes > 0 && t.data == nullptr) throw Error("data pointer is null", where, "a pointer to " + std::to_string(bytes) + " bytes");
    auto& e = header[t.name] = nlohmann::ordered_json::object();
    e["dtype"] = t.dtype;
    e["shape"] = t.shape;
    e["data_offsets"] = {offset, offset + bytes};
    offset += bytes;
    sizes.push_back(bytes);
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception&) {
    throw Error("a tensor name or metadata string is not valid UTF-8", path, "UTF-8 names and metadata");
  }
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');  // data section starts 8-byte aligned
  const std::uint64_t n = text.size();

  AtomicFile file(path);
  file.write(&n, 8);
  file.write(text);
  for (std::size_t i = 0; i < tensors.size(); ++i)
    if (sizes[i] > 0) file.write(tensors[i].data, sizes[i]);
  file.commit();
}

// A validated safetensors file, mapped read-only. Copies share the mapping.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  // Tensor names in lexicographic order.
  std::vector<std::string> names() const {
    std::vector<std::string> r;
    r.reserve(entries_.size());
    for (auto& [k, e] : entries_) r.push_back(k);
    return r;
  }
  std::size_t size() const { return entries_.size(); }
  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const { return entry(name).info; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The tensor's raw little-endian bytes (not necessarily aligned).
  std::span<const std::byte> bytes(const std::string& name) const {
    const Entry& e = entry(name);
    return {data_ + e.begin, static_cast<std::size_t>(e.end - e.begin)};
  }

  // The tensor converted to T: F32/F64/BF16/F16 to a floating-point T, I32/I64/U8 to an
  // integer T (an error if a value does not fit).
  template <class T>
    requires(std::floating_point<T> || (std::integral<T> && !std::same_as<T, bool>))
  std::vector<T> read(const std::string& name) const {
    std::vector<T> out(static_cast<std::size_t>(info(name).numel()));
    read_into(name, out.data());
    return out;
  }

  // As read(), into dst[0, info(name).numel()). Every check runs before the first write,
  // so on an error dst is untouched.
  template <class T>
    requires(std::floating_point<T> || (std::integral<T> && !std::same_as<T, bool>))
  void read_into(const std::string& name, T* dst) const {
    const Entry& e = entry(name);
    const std::string& d = e.info.dtype;
    const std::byte* p = data_ + e.begin;
    const std::size_t n = static_cast<std::size_t>(e.info.numel());
    if constexpr (std::floating_point<T>) {
      if (!detail::is_float_dtype(d))
        throw Error("dtype " + d + " does not convert to a floating-point type", where(name),
                    "dtype F32, F64, BF16 or F16");
      if (d == "F32") {
        if constexpr (std::same_as<T, float>) {
          if (n) std::memcpy(dst, p, n * 4);
        } else {
          for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(detail::load_le<float>(p + 4 * i));
        }
      } else if (d == "F64") {
        if constexpr (std::same_as<T, double>) {
          if (n) std::memcpy(dst, p, n * 8);
        } else {
          for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(detail::load_le<double>(p + 8 * i));
        }
      } else if (d == "BF16") {
        for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(detail::bf16_to_float(detail::load_le<std::uint16_t>(p + 2 * i)));
      } else {  // F16
        for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(detail::half_to_float(detail::load_le<std::uint16_t>(p + 2 * i)));
      }
    } else {
      if (!detail::is_int_dtype(d))
        throw Error("dtype " + d + " does not convert to an integer type", where(name),
                    "dtype I32, I64 or U8");
      if (d == "I32") {
        convert_ints<std::int32_t>(name, p, n, dst);
      } else if (d == "I64") {
        convert_ints<std::int64_t>(name, p, n, dst);
      } else {
        convert_ints<std::uint8_t>(name, p, n, dst);
      }
    }
  }

 private:
  struct Entry {
    TensorInfo info;
    std::uint64_t begin = 0, end = 0;
  };

  // Range-checks every element before writing any.
  template <class S, class T>
  void convert_ints(const std::string& name, const std::byte* p, std::size_t n, T* dst) const {
    for (std::size_t i = 0; i < n; ++i) {
      const S v = detail::load_le<S>(p + sizeof(S) * i);
      if (!std::in_range<T>(v))
        throw Error("element " + std::to_string(i) + " = " + std::to_string(v) + " does not fit the requested integer type",
                    where(name), "values in [" + std::to_string(std::numeric_limits<T>::min()) + ", " +
                                     std::to_string(std::numeric_limits<T>::max()) + "]");
    }
    for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(detail::load_le<S>(p + sizeof(S) * i));
  }

  const Entry& entry(const std::string& name) const {
    auto it = entries_.find(name);
    if (it != entries_.end()) return it->second;
    std::string avail;
    int shown = 0;
    for (auto& [k, e] : entries_) {
      if (shown == 5) {
        avail += ", ...";
        break;
      }
      avail += (shown++ ? ", " : "") + k;
    }
    throw Error("no tensor named '" + name + "'", path_,
                entries_.empty() ? std::string("a tensor, but the file has none")
                                 : "one of the file's " + std::to_string(entries_.size()) + " tensors: " + avail);
  }
  std::string where(const std::string& name) const { return path_ + ": tensor '" + name + "'"; }

  std::string path_;
  std::shared_ptr<const detail::Mapping> map_;
  const std::byte* data_ = nullptr;  // start of the data section
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

inline SafetensorsFile SafetensorsFile::open(const std::string& path) {
  using nlohmann::json;
  SafetensorsFile f;
  f.path_ = path;
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused as not a
  // regular file); it changes nothing for a regular file.
  detail::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (fd.get() < 0) throw Error("could not open the file: " + detail::errno_text(), path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw Error("could not stat the file: " + detail::errno_text(), path);
  if (!S_ISREG(st.st_mode)) throw Error("not a regular file", path, "a safetensors file");
  const std::uint64_t size = static_cast<std::uint64_t>(st.st_size);
  if (size < 8)
    throw Error("file is " + std::to_string(size) + " bytes, too short for the header length", path,
                "at least 8 bytes: a little-endian u64 header length, the JSON header, the data");
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (p == MAP_FAILED) throw Error("could not map the file: " + detail::errno_text(), path);
  f.map_ = std::make_shared<const detail::Mapping>(p, size);
  const std::byte* base = f.map_->data();

  const std::uint64_t n = detail::load_le<std::uint64_t>(base);
  if (n > size - 8)
    throw Error("header length " + std::to_string(n) + " runs past the end of the " + std::to_string(size) +
                    "-byte file (truncated file, or not a safetensors file)",
                path, "a header length of at most " + std::to_string(size - 8));
  if (n > detail::kMaxHeaderBytes)
    throw Error("header length " + std::to_string(n) + " is over the limit", path,
                "a JSON header of at most " + std::to_string(detail::kMaxHeaderBytes) + " bytes");
  f.data_ = base + 8 + n;
  const std::uint64_t data_size = size - 8 - n;

  // Duplicate top-level keys would silently shadow each other in the parsed object.
  std::string duplicate;
  std::set<std::string> keys;
  json h;
  try {
    const char* text = reinterpret_cast<const char*>(base + 8);
    h = json::parse(text, text + n, [&](int depth, json::parse_event_t ev, json& v) {
      if (depth > detail::kMaxHeaderDepth)
        throw Error("header nests JSON more than " + std::to_string(detail::kMaxHeaderDepth) + " levels deep", path,
                    "a header of tensor entries {dtype, shape, data_offsets}");
      if (depth == 1 && ev == json::parse_event_t::key && !keys.insert(v.get<std::string>()).second && duplicate.empty())
        duplicate = v.get<std::string>();
      return true;
    });
  } catch (const json::exception& e) {
    throw Error(std::string("header is not valid JSON: ") + e.what(), path,
                "a UTF-8 JSON object of " + std::to_string(n) + " bytes after the header length");
  }
  if (!h.is_object()) throw Error("header is a JSON " + std::string(h.type_name()), path, "a JSON object");
  if (!duplicate.empty()) throw Error("header names '" + duplicate + "' twice", path, "unique tensor names");

  struct Span {
    std::uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (auto& [name, v] : h.items()) {
    if (name == "__metadata__") {
      if (!v.is_object())
        throw Error("__metadata__ is a JSON " + std::string(v.type_name()), path, "an object of string -> string");
      for (auto& [k, s] : v.items()) {
        if (!s.is_string())
          throw Error("__metadata__ entry '" + k + "' is a JSON " + std::string(s.type_name()), path, "a string value");
        f.metadata_[k] = s.get<std::string>();
      }
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    if (!v.is_object()) throw Error("entry is a JSON " + std::string(v.type_name()), where, "an object with dtype, shape, data_offsets");
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!v.contains(field)) throw Error(std::string("entry has no \"") + field + "\"", where, "an object with dtype, shape, data_offsets");
    const json& jd = v["dtype"];
    const json& js = v["shape"];
    const json& jo = v["data_offsets"];
    if (!jd.is_string()) throw Error("dtype is a JSON " + std::string(jd.type_name()), where, detail::kDtypeList);
    Entry e;
    e.info.dtype = jd.get<std::string>();
    const std::size_t elem = detail::dtype_size(e.info.dtype);
    if (elem == 0) throw Error("unknown dtype '" + e.info.dtype + "'", where, detail::kDtypeList);
    if (!js.is_array()) throw Error("shape is a JSON " + std::string(js.type_name()), where, "an array of integers");
    for (auto& d : js) {
      if (!d.is_number_integer()) throw Error("shape " + js.dump() + " has a non-integer dimension", where, "an array of integers");
      if (d.is_number_unsigned() ? d.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())
                                 : d.get<std::int64_t>() < 0)
        throw Error("shape " + js.dump() + " has a negative or oversized dimension", where, "dimensions >= 0");
      e.info.shape.push_back(d.get<std::int64_t>());
    }
    if (!jo.is_array() || jo.size() != 2 || !jo[0].is_number_unsigned() || !jo[1].is_number_unsigned())
      throw Error("data_offsets is " + jo.dump(), where, "[begin, end] with non-negative integers");
    e.begin = jo[0].get<std::uint64_t>();
    e.end = jo[1].get<std::uint64_t>();
    if (e.begin > e.end)
      throw Error("data_offsets " + jo.dump() + " are reversed", where, "begin <= end");
    if (e.end > data_size)
      throw Error("data_offsets " + jo.dump() + " run past the " + std::to_string(data_size) +
                      "-byte data section (truncated file or lying header)",
                  where, "end <= " + std::to_string(data_size));
    std::uint64_t bytes = 0;
    if (!detail::byte_count(e.info.shape, elem, bytes))
      throw Error("shape " + detail::shape_str(e.info.shape) + " of " + e.info.dtype + " needs more than 2^64 bytes",
                  where, std::to_string(e.end - e.begin) + " bytes, as data_offsets " + jo.dump() + " say");
    // TensorInfo::numel() must not overflow either, even where a later dimension is 0.
    std::int64_t numel = 1;
    for (auto d : e.info.shape)
      if (__builtin_mul_overflow(numel, d, &numel))
        throw Error("the product of the dimensions of shape " + detail::shape_str(e.info.shape) +
                        " overflows a 64-bit element count",
                    where, "dimensions whose running product stays below 2^63");
    if (bytes != e.end - e.begin)
      throw Error("data_offsets " + jo.dump() + " span " + std::to_string(e.end - e.begin) + " bytes, but shape " +
                      detail::shape_str(e.info.shape) + " of " + e.info.dtype + " needs a different size",
                  where, std::to_string(e.info.numel()) + " * " + std::to_string(elem) + " bytes");
    auto [it, ok] = f.entries_.emplace(name, std::move(e));
    (void)ok;
    spans.push_back({it->second.begin, it->second.end, &it->first});
  }

  // The tensors must tile [0, data_size) exactly.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t cursor = 0;
  const std::string* prev = nullptr;
  for (auto& s : spans) {
    if (s.begin < cursor)
      throw Error("tensors '" + *prev + "' and '" + *s.name + "' overlap in the data section", path,
                  "each tensor's data_offsets to start where the previous one ends (at " + std::to_string(cursor) + ")");
    if (s.begin > cursor)
      throw Error("bytes [" + std::to_string(cursor) + ", " + std::to_string(s.begin) +
                      ") of the data section belong to no tensor",
                  path, "tensor '" + *s.name + "' to start at " + std::to_string(cursor));
    cursor = s.end;
    prev = s.name;
  }
  if (cursor != data_size)
    throw Error("the data section has " + std::to_string(data_size - cursor) +
                    " trailing bytes that belong to no tensor (lying header)",
                path, "a data section of " + std::to_string(cursor) + " bytes");
  return f;
}

// Writes every registry parameter as `prefix + name`, dtype F32 or F64 after T, in
// registry order (the alignment padding of the flat buffer is not stored).
template <class T>
  requires std::floating_point<T>
void save_params(const std::string& path, const ParamRegistry& registry, const T* flat,
                 const std::map<std::string, std::string>& metadata = {}, const std::string& prefix = "") {
  static_assert(std::same_as<T, float> || std::same_as<T, double>,
                "tmoe: save_params stores float (F32) or double (F64) parameters only");
  std::vector<TensorRef> refs;
  refs.reserve(registry.params().size());
  for (auto& p : registry.params())
    refs.push_back({prefix + p.name, std::same_as<T, float> ? "F32" : "F64",
                    std::vector<std::int64_t>(p.shape.dims.begin(), p.shape.dims.begin() + p.shape.rank),
                    flat + p.offset});
  write_safetensors(path, refs, metadata);
}

// Loads every registry parameter from `prefix + name`, converting F32/F64/BF16/F16 to T.
// Checks first that each parameter is present with the registry's shape and a
// floating-point dtype, and that the file holds no tensor under `prefix` that the model
// lacks; `flat` is written only after all checks pass.
// check_params makes every check of load_params without reading anything, so a caller
// that loads several files can check them all before changing any state.
inline void check_params(const SafetensorsFile& file, const ParamRegistry& registry, const std::string& prefix = "") {
  std::vector<std::string> missing;
  for (auto& p : registry.params())
    if (!file.has(prefix + p.name)) missing.push_back(prefix + p.name);
  if (!missing.empty()) {
    std::string list;
    for (std::size_t i = 0; i < missing.size() && i < 5; ++i) list += (i ? ", " : "") + missing[i];
    if (missing.size() > 5) list += ", ...";
    throw Error("checkpoint lacks " + std::to_string(missing.size()) + " of the model's " +
                    std::to_string(registry.size()) + " parameters: " + list,
                file.path(), "a tensor '" + missing[0] + "' of shape " + registry.find(missing[0].substr(prefix.size()))->shape.str());
  }
  for (auto& p : registry.params()) {
    const std::string name = prefix + p.name;
    const TensorInfo& info = file.info(name);
    // The whole tensor (a tensor-parallel rank holds a slice of it).
    const std::vector<std::int64_t> want(p.full.dims.begin(), p.full.dims.begin() + p.full.rank);
    if (info.shape != want)
      throw Error("model parameter has shape " + detail::shape_str(info.shape) + " in the checkpoint",
                  file.path() + ": tensor '" + name + "'", "shape " + p.full.str() + " as the model declares");
    if (!detail::is_float_dtype(info.dtype))
      throw Error("model parameter has dtype " + info.dtype + " in the checkpoint",
                  file.path() + ": tensor '" + name + "'", "dtype F32, F64, BF16 or F16");
  }
  // A registry of one rank's share (expert parallelism) accepts the tensors other ranks hold;
  // their number must still be the whole model's.
  if (registry.global_size() != registry.size()) {
    std::int64_t count = 0;
    for (const std::string& name : file.names()) count += name.compare(0, prefix.size(), prefix) == 0;
    if (count != registry.global_size())
      throw Error("checkpoint holds " + std::to_string(count) + " parameters" + (prefix.empty() ? std::string() : " under prefix '" + prefix + "'"),
                  file.path(), "the whole model's " + std::to_string(registry.global_size()));
    return;
  }
  for (const std::string& name : file.names()) {
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    if (!registry.find(name.substr(prefix.size())))
      throw Error("tensor '" + name + "' in the checkpoint is not a parameter of the model", file.path(),
                  "only the model's " + std::to_string(registry.size()) + " parameters" +
                      (prefix.empty() ? std::string() : " under prefix '" + prefix + "'"));
  }
}

template <class T>
  requires std::floating_point<T>
void load_params(const SafetensorsFile& file, const ParamRegistry& registry, T* flat, const std::string& prefix = "") {
  check_params(file, registry, prefix);
  std::vector<T> whole;
  for (auto& p : registry.params()) {
    if (!p.is_split()) {
      file.read_into(prefix + p.name, flat + p.offset);
      continue;
    }
    whole.resize(static_cast<std::size_t>(p.full.numel()));  // a tensor-parallel rank's slice
    file.read_into(prefix + p.name, whole.data());
    take_share(p, whole.data(), flat + p.offset);
  }
}

}  // namespace tmoe::io
