#pragma once
// Checkpoint directories: committed atomically, validated completely, pruned to the last K.
//
//   <root>/step-00001000/        one committed checkpoint
//            model.safetensors   (whatever files the caller writes)
//            optimizer.safetensors
//            state.json
//            MANIFEST.json       every file's size and xxh64, written last
//   <root>/latest                "step-00001000\n", replaced atomically after each commit
//
// Commit: the files are written into <root>/.step-00001000.tmp-<pid>/, each fsynced, then
// MANIFEST.json, then the folder is fsynced and renamed to step-00001000 and <root> is
// fsynced; only then does `latest` move. A process killed at any instant leaves the
// previous checkpoints and `latest` as they were (a dead writer's temporary folder is
// ignored by readers and deleted by the next writer). A write error (full disk, size
// limit) throws tmoe::Error after removing the temporary folder.
//
// Load: `latest` first, then every other step-* folder from the newest down. A folder is
// valid only if its manifest parses and every listed file exists with the listed size and
// checksum; an invalid one is reported and skipped, so a corrupt newest checkpoint falls
// back to the previous valid one, and says so.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "tmoe/core/checksum.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/io/atomic_file.hpp"

namespace tmoe::io {

inline constexpr const char* kCheckpointManifest = "MANIFEST.json";

// The xxh64 and size of a whole file.
struct FileDigest {
  std::uint64_t size = 0, xxh64 = 0;
};
// The xxh64 and size of a whole file, read in 4 MiB blocks (measured faster here than a
// mapping, whose page faults cost more than the copy, and than a buffered stream).
inline FileDigest digest_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot be opened for reading: " + detail::errno_text(), path, "a readable file");
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  std::vector<char> buf(std::size_t{4} << 20);
  Xxh64 h;
  FileDigest d;
  for (;;) {
    const ::ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd);
      throw Error("read error: " + detail::errno_text(e), path, "a readable file");
    }
    h.update(buf.data(), static_cast<std::size_t>(n));
    d.size += static_cast<std::uint64_t>(n);
  }
  ::close(fd);
  d.xxh64 = h.digest();
  return d;
}

inline std::string step_folder_name(std::int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%08lld", static_cast<long long>(step));
  return name;
}

// The step of a folder named step-NNNNNNNN, or nullopt.
inline std::optional<std::int64_t> parse_step_folder(const std::string& name) {
  if (!name.starts_with("step-") || name.size() < 6 || name.size() > 24) return std::nullopt;
  std::int64_t v = 0;
  for (std::size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

class CheckpointDir {
 public:
  CheckpointDir(std::string root, std::int64_t keep) : root_(std::move(root)), keep_(keep) {
    if (root_.empty()) throw Error("checkpoint directory is empty", "checkpoint.dir", "a path");
    if (keep_ < 1) throw Error(tmoe::detail::cat("keep is ", keep_), "checkpoint.keep", "at least 1");
  }
  const std::string& root() const { return root_; }

  // Writes a checkpoint for `step`: write_files(folder) creates the files in `folder`
  // (a temporary folder; every regular file there is listed in the manifest). Returns the
  // committed folder's path.
  std::string save(std::int64_t step, const std::function<void(const std::string& folder)>& write_files,
                   const nlohmann::json& manifest_extra = {}) {
    namespace fs = std::filesystem;
    std::signal(SIGXFSZ, SIG_IGN);  // a file-size limit must fail write(), not kill us
    std::error_code ec;
    fs::create_directories(root_, ec);
    if (ec) throw Error("cannot create the checkpoint directory: " + ec.message(), root_, "a writable path");
    remove_dead_temporaries();
    const std::string name = step_folder_name(step);
    // Training is deterministic, so a valid folder for this step already holds this state
    // (a run stopped right after resuming, say): keep it rather than swap folders.
    if (fs::is_directory(fs::path(root_) / name) && problem(step).empty()) {
      write_file_atomic((fs::path(root_) / "latest").string(), name + "\n");
      prune();
      return (fs::path(root_) / name).string();
    }
    const fs::path tmp = fs::path(root_) / ("." + name + ".tmp-" + std::to_string(::getpid()));
    const fs::path final_path = fs::path(root_) / name;
    fs::remove_all(tmp, ec);
    if (!fs::create_directory(tmp, ec) || ec)
      throw Error("cannot create the temporary checkpoint folder: " + ec.message(), tmp.string(), "a writable directory");
    try {
      write_files(tmp.string());
      nlohmann::json m;
      m["format"] = "tmoe-checkpoint";
      m["version"] = 1;
      m["step"] = step;
      m["files"] = nlohmann::json::object();
      std::vector<std::string> files;
      for (const auto& e : fs::directory_iterator(tmp))
        if (e.is_regular_file() && e.path().filename() != kCheckpointManifest) files.push_back(e.path().filename());
      std::sort(files.begin(), files.end());
      for (const std::string& f : files) {
        const FileDigest d = digest_file((tmp / f).string());
        m["files"][f] = {{"bytes", d.size}, {"xxh64", d.xxh64}};
        sync_file((tmp / f).string());
      }
      if (!manifest_extra.is_null()) m["extra"] = manifest_extra;
      write_file_atomic((tmp / kCheckpointManifest).string(), m.dump(2) + "\n");
      fsync_dir(tmp.string());
      // An invalid folder of the same step: move it aside, then swap in.
      const fs::path old = fs::path(root_) / ("." + name + ".old-" + std::to_string(::getpid()));
      if (fs::exists(final_path)) {
        fs::remove_all(old, ec);
        fs::rename(final_path, old);
      }
      fs::rename(tmp, final_path);
      fsync_dir(root_);
      fs::remove_all(old, ec);
    } catch (const Error& e) {
      fs::remove_all(tmp, ec);
      throw Error(tmoe::detail::cat("checkpoint of step ", step, " not written: ", e.problem()), e.where(),
                  "room on the disk and a writable directory; the previous checkpoints are unchanged");
    } catch (const std::exception& e) {
      fs::remove_all(tmp, ec);
      throw Error(std::string("cannot write the checkpoint: ") + e.what(), final_path.string(),
                  "a writable directory with room; the previous checkpoints are unchanged");
    }
    write_file_atomic((fs::path(root_) / "latest").string(), name + "\n");
    prune();
    return final_path.string();
  }

  // Committed step folders, oldest first (only names; validity is checked on load).
  std::vector<std::int64_t> steps() const {
    namespace fs = std::filesystem;
    std::vector<std::int64_t> out;
    std::error_code ec;
    for (fs::directory_iterator it(root_, ec), end; !ec && it != end; it.increment(ec))
      if (auto s = parse_step_folder(it->path().filename().string()); s && it->is_directory()) out.push_back(*s);
    std::sort(out.begin(), out.end());
    return out;
  }

  // The step `latest` names, if it names a well-formed folder.
  std::optional<std::int64_t> latest() const {
    std::ifstream in(std::filesystem::path(root_) / "latest");
    std::string line;
    if (!in || !std::getline(in, line)) return std::nullopt;
    return parse_step_folder(line);
  }

  // Empty if the folder is a valid checkpoint, otherwise why not.
  std::string problem(std::int64_t step) const {
    namespace fs = std::filesystem;
    const fs::path folder = fs::path(root_) / step_folder_name(step);
    const fs::path mpath = folder / kCheckpointManifest;
    std::ifstream in(mpath, std::ios::binary);
    if (!in) return "it has no readable MANIFEST.json";
    const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    // The writer ends the manifest with a newline; without it the file was cut short.
    if (text.empty() || text.back() != '\n') return "MANIFEST.json is truncated";
    nlohmann::json m;
    try {
      m = nlohmann::json::parse(text);
      if (m.at("format").get<std::string>() != "tmoe-checkpoint") return "MANIFEST.json has the wrong format name";
      if (m.at("version").get<int>() != 1) return "MANIFEST.json has an unsupported version";
      if (m.at("step").get<std::int64_t>() != step) return "MANIFEST.json names another step";
      for (const auto& [name, info] : m.at("files").items()) {
        if (name.empty() || name.find('/') != std::string::npos || name.starts_with("."))
          return "MANIFEST.json lists a file outside the folder";
        const fs::path f = folder / name;
        std::error_code ec;
        const auto size = fs::file_size(f, ec);
        if (ec) return "file " + name + " is missing";
        if (size != info.at("bytes").get<std::uint64_t>())
          return tmoe::detail::cat("file ", name, " has ", size, " bytes, the manifest says ", info.at("bytes").get<std::uint64_t>());
        if (digest_file(f.string()).xxh64 != info.at("xxh64").get<std::uint64_t>())
          return "file " + name + " fails its checksum";
      }
    } catch (const nlohmann::json::exception& e) {
      return std::string("MANIFEST.json is malformed: ") + e.what();
    } catch (const Error& e) {
      return e.what();
    }
    return {};
  }

  struct Found {
    std::int64_t step = 0;
    std::string folder;
    std::vector<std::string> skipped;  // "step-N: why" for every newer invalid checkpoint
  };

  // The newest valid checkpoint: `latest` first, then the others newest first. nullopt
  // when there is no checkpoint at all; a tmoe::Error when there are some but none is valid.
  std::optional<Found> find_valid() const {
    std::vector<std::int64_t> order = steps();
    std::reverse(order.begin(), order.end());
    if (auto l = latest(); l) {
      order.erase(std::remove(order.begin(), order.end(), *l), order.end());
      order.insert(order.begin(), *l);
    }
    if (order.empty()) return std::nullopt;
    Found f;
    for (std::int64_t s : order) {
      const std::string why = problem(s);
      if (why.empty()) {
        f.step = s;
        f.folder = (std::filesystem::path(root_) / step_folder_name(s)).string();
        return f;
      }
      f.skipped.push_back(step_folder_name(s) + ": " + why);
    }
    std::string all;
    for (const auto& s : f.skipped) all += "\n  " + s;
    throw Error("no valid checkpoint to resume from:" + all, root_,
                "an intact step-* folder (or an empty directory to start afresh)");
  }

 private:
  static void sync_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error("cannot open to flush: " + detail::errno_text(), path);
    const int rc = ::fsync(fd);
    const int e = errno;
    ::close(fd);
    if (rc != 0) throw Error("cannot flush to disk: " + detail::errno_text(e), path);
  }

  // Temporary folders of processes that no longer exist.
  void remove_dead_temporaries() const {
    namespace fs = std::filesystem;
    std::error_code ec;
    std::vector<fs::path> dead;
    for (fs::directory_iterator it(root_, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string n = it->path().filename().string();
      const auto dash = n.rfind('-');
      if (!n.starts_with(".step-") || dash == std::string::npos) continue;
      if (n.find(".tmp-") == std::string::npos && n.find(".old-") == std::string::npos) continue;
      if (is_dead_pid(std::string_view(n).substr(dash + 1))) dead.push_back(it->path());
    }
    for (const auto& p : dead) fs::remove_all(p, ec);
  }

  // Keeps the newest keep_ committed folders and the one `latest` names.
  void prune() const {
    std::vector<std::int64_t> all = steps();
    const auto l = latest();
    std::error_code ec;
    const std::int64_t n = static_cast<std::int64_t>(all.size());
    for (std::int64_t i = 0; i < n - keep_; ++i)
      if (!l || all[static_cast<std::size_t>(i)] != *l)
        std::filesystem::remove_all(std::filesystem::path(root_) / step_folder_name(all[static_cast<std::size_t>(i)]), ec);
  }

  std::string root_;
  std::int64_t keep_;
};

}  // namespace tmoe::io
