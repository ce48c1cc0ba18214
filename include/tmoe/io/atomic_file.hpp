#pragma once
// Files that are either complete or absent. Every file tmoe writes for later use (shards,
// tokenizers, weights, checkpoints, manifests) goes through AtomicFile:
//
//   write to "<dir>/.<name>.tmp-<pid>" -> fsync -> rename onto <name> -> fsync <dir>
//
// A process killed at any point leaves either the old file or the new one under the final
// name, never a prefix; the temporary is deleted on error, and stale ones from a killed
// process are invisible to readers (they start with a dot and end in the pid). A full disk
// or a file-size limit surfaces as a tmoe::Error naming the file, with the previous file
// intact.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>

#include "tmoe/core/error.hpp"

namespace tmoe::io {

namespace detail {

inline std::string errno_text(int e = errno) {
  if (e == ENOSPC) return "no space left on the device";
  if (e == EFBIG) return "file too large (size limit reached)";
  if (e == EDQUOT) return "disk quota exceeded";
  return std::strerror(e);
}

// An owned file descriptor, closed on scope exit.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

inline std::string parent_dir(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

}  // namespace detail

// The temporary name AtomicFile uses for `path` in process `pid`.
inline std::string temp_path_for(const std::string& path, long pid = ::getpid()) {
  return (std::filesystem::path(detail::parent_dir(path)) /
          ("." + std::filesystem::path(path).filename().string() + ".tmp-" + std::to_string(pid)))
      .string();
}

// True when `digits` is the id of a process that no longer exists (never this one): the
// owner of a temporary named "...-<pid>" died before finishing it.
inline bool is_dead_pid(std::string_view digits) {
  if (digits.empty() || digits.size() > 9 || !std::all_of(digits.begin(), digits.end(), ::isdigit)) return false;
  const long pid = std::stol(std::string(digits));
  return pid != ::getpid() && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

// Deletes temporaries of `path` left by processes that no longer exist (killed mid-write).
// A live writer's temporary is never touched.
inline void remove_stale_temps(const std::string& path) {
  const std::string prefix = "." + std::filesystem::path(path).filename().string() + ".tmp-";
  std::error_code ec;
  for (std::filesystem::directory_iterator it(detail::parent_dir(path), ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!name.starts_with(prefix)) continue;
    if (is_dead_pid(name.substr(prefix.size()))) std::filesystem::remove(it->path(), ec);
  }
}

// fsync on a directory makes renames and creations inside it durable. Some file systems
// refuse it (EINVAL); the entries are in place either way, so only real I/O errors throw.
inline void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot open the directory to flush it: " + detail::errno_text(), dir);
  const int rc = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  if (rc != 0 && e != EINVAL && e != EROFS)
    throw Error("cannot flush the directory to disk: " + detail::errno_text(e), dir);
}

class AtomicFile {
 public:
  explicit AtomicFile(std::string path) : path_(std::move(path)) {
    // Writing past RLIMIT_FSIZE raises SIGXFSZ, whose default action kills the process
    // before write() can report EFBIG. Ignoring it turns the limit into an error here.
    std::signal(SIGXFSZ, SIG_IGN);
    tmp_ = temp_path_for(path_);
    remove_stale_temps(path_);
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0)
      throw Error("cannot create the file (its temporary file " + tmp_ + "): " + detail::errno_text(), path_,
                  "a writable folder");
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() { abandon(); }

  const std::string& path() const { return path_; }

  void write(const void* p, std::size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      const ::ssize_t w = ::write(fd_, c, std::min<std::size_t>(n, std::size_t{1} << 30));
      if (w < 0) {
        if (errno == EINTR) continue;
        fail("cannot write");
      }
      c += w;
      n -= static_cast<std::size_t>(w);
      size_ += static_cast<std::size_t>(w);
    }
  }
  void write(std::string_view s) { write(s.data(), s.size()); }

  // Overwrites bytes already written (a header whose checksums are known at the end).
  void write_at(std::size_t offset, const void* p, std::size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      const ::ssize_t w = ::pwrite(fd_, c, n, static_cast<off_t>(offset));
      if (w < 0) {
        if (errno == EINTR) continue;
        fail("cannot write");
      }
      c += w;
      n -= static_cast<std::size_t>(w);
      offset += static_cast<std::size_t>(w);
    }
  }

  std::size_t size() const { return size_; }

  // fsync, close, rename into place, fsync the folder. After commit the object is spent.
  void commit() {
    if (fd_ < 0) throw Error("file was already committed or abandoned", path_);
    if (::fsync(fd_) != 0) fail("cannot flush the file to disk");
    const int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) {
      fd_ = -1;
      fail("cannot close the file");
    }
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail("cannot rename the temporary file into place");
    tmp_.clear();
    fsync_dir(detail::parent_dir(path_));
  }

 private:
  [[noreturn]] void fail(const char* what) {
    const int e = errno;
    const std::string where = tmp_.empty() ? path_ : tmp_;
    abandon();
    throw Error(std::string(what) + ": " + detail::errno_text(e), where,
                "room on the disk and a writable folder; the previous file is unchanged");
  }
  void abandon() {
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
    if (!tmp_.empty()) ::unlink(tmp_.c_str());
    tmp_.clear();
  }

  std::string path_, tmp_;
  int fd_ = -1;
  std::size_t size_ = 0;
};

inline void write_file_atomic(const std::string& path, std::string_view contents) {
  AtomicFile f(path);
  f.write(contents);
  f.commit();
}

}  // namespace tmoe::io
