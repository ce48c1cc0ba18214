#pragma once
// MPI for a Boost.Test module run under mpirun: initialised once for the whole module,
// errors returned as codes (so they become tmoe::Error), and helpers to agree across ranks.
#include <mpi.h>

#include <boost/test/unit_test.hpp>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "tmoe/parallel/comm/mpi.hpp"

namespace tmoe::test {

struct MpiFixture {
  MpiFixture() {
    int argc = 0;
    char** argv = nullptr;
    session = new comm::MpiSession(argc, argv);
  }
  ~MpiFixture() { delete session; }
  comm::MpiSession* session = nullptr;
};

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
inline int world_size() {
  int r = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &r);
  return r;
}

// A fresh directory every rank knows (made by rank 0; the ranks share a filesystem).
inline std::string shared_temp_dir(const char* tag) {
  std::string path;
  if (world_rank() == 0) {
    std::string tmpl = (std::filesystem::temp_directory_path() / (std::string("tmoe_") + tag + "_XXXXXX")).string();
    path = ::mkdtemp(tmpl.data());
  }
  int len = static_cast<int>(path.size());
  MPI_Bcast(&len, 1, MPI_INT, 0, MPI_COMM_WORLD);
  path.resize(static_cast<std::size_t>(len));
  MPI_Bcast(path.data(), len, MPI_CHAR, 0, MPI_COMM_WORLD);
  return path;
}

}  // namespace tmoe::test
