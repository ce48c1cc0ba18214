#pragma once
// Shared by the fuzz targets (docs/fuzzing.md): the input as a file that a reader can open
// by path, and a check that aborts, so that libFuzzer (or the CTest replay) reports it.
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace tmoe::fuzz {

[[noreturn]] inline void check_failed(const char* cond, const char* file, int line) {
  std::fprintf(stderr, "fuzz harness check failed: %s (%s:%d)\n", cond, file, line);
  std::abort();
}
#define TMOE_FUZZ_CHECK(cond) ((cond) ? (void)0 : ::tmoe::fuzz::check_failed(#cond, __FILE__, __LINE__))

// The bytes as a file: an anonymous memory file reached through /proc/self/fd (no disk
// traffic, nothing left behind), or a temporary file where memfd_create is missing.
class InputFile {
 public:
  InputFile(const std::uint8_t* data, std::size_t size) {
    fd_ = ::memfd_create("tmoe-fuzz-input", MFD_CLOEXEC);
    if (fd_ >= 0 && std::filesystem::exists("/proc/self/fd")) {
      path_ = "/proc/self/fd/" + std::to_string(fd_);
    } else {
      if (fd_ >= 0) ::close(fd_);
      std::string tmpl = (std::filesystem::temp_directory_path() / "tmoe-fuzz-XXXXXX").string();
      fd_ = ::mkstemp(tmpl.data());
      if (fd_ < 0) check_failed("could not create a temporary input file", __FILE__, __LINE__);
      path_ = tmpl;
      unlink_ = true;
    }
    while (size > 0) {
      const ssize_t w = ::write(fd_, data, size);
      if (w <= 0) check_failed("could not write the temporary input file", __FILE__, __LINE__);
      data += w;
      size -= static_cast<std::size_t>(w);
    }
  }
  ~InputFile() {
    ::close(fd_);
    if (unlink_) ::unlink(path_.c_str());
  }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  bool unlink_ = false;
  std::string path_;
};

}  // namespace tmoe::fuzz
