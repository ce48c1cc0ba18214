#pragma once
// Shared by the tests that read and write real files (DESIGN.md principle 8): a fresh
// temporary folder per use, and whole files as bytes.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <unistd.h>
#include <vector>

namespace tmoe::test {

// A fresh, empty folder under the temp directory (unique per process and per instance),
// removed with everything in it at scope exit.
struct TempDir {
  std::filesystem::path dir;

  TempDir() {
    static int counter = 0;
    dir = std::filesystem::temp_directory_path() /
          ("tmoe_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // The folder's path.
  std::string str() const { return dir.string(); }
  // The path of `name` inside the folder (nothing is created).
  std::string file(const std::string& name) const { return (dir / name).string(); }
  // Writes `bytes` to `name` inside the folder, replacing it; returns its path.
  std::string write(const std::string& name, const std::string& bytes) const {
    const std::filesystem::path p = dir / name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p.string();
  }
};

using Bytes = std::vector<unsigned char>;

// The whole file (empty when it cannot be read).
inline Bytes read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

// Writes `b` as the whole file, replacing it.
inline void write_bytes(const std::string& path, const Bytes& b) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// Appends v as 8 little-endian bytes.
inline void append_u64_le(Bytes& b, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<unsigned char>(v >> (8 * i)));
}

// The little-endian 64-bit value in the first 8 bytes of b.
inline std::uint64_t read_u64_le(const Bytes& b) {
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(b[static_cast<std::size_t>(i)]) << (8 * i);
  return n;
}

}  // namespace tmoe::test
