// Runs fuzz targets without libFuzzer: feeds every file named on the command line, and
// every file under every folder named there (recursively, in sorted order), to
// LLVMFuzzerTestOneInput. Linked with each fuzz_*.cpp into the CTest replay tests
// (tests/fuzz/CMakeLists.txt), so the seed corpus and every saved regression input run in
// the ordinary g++ build. A folder that does not exist is skipped (git keeps no empty
// folder); no input at all is an error. Each path is printed before it runs, so the last
// line before a crash names the input that caused it.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; ++i) {
    const fs::path p = argv[i];
    if (fs::is_directory(p)) {
      std::vector<fs::path> found;
      for (const auto& e : fs::recursive_directory_iterator(p))
        if (e.is_regular_file()) found.push_back(e.path());
      std::sort(found.begin(), found.end());
      inputs.insert(inputs.end(), found.begin(), found.end());
    } else if (fs::is_regular_file(p)) {
      inputs.push_back(p);
    } else {
      std::printf("(skipping %s: no such file or folder)\n", p.c_str());
    }
  }
  if (inputs.empty()) {
    std::fprintf(stderr, "replay: no inputs found\n");
    return 2;
  }
  for (const auto& p : inputs) {
    std::printf("%s\n", p.c_str());
    std::fflush(stdout);
    std::ifstream in(p, std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.eof() && in.fail()) {
      std::fprintf(stderr, "replay: cannot read %s\n", p.c_str());
      return 2;
    }
    // A copy of exactly the input's size, as libFuzzer passes it (a reader that runs past
    // the end is caught by a sanitizer build).
    std::vector<std::uint8_t> exact(bytes.begin(), bytes.end());
    LLVMFuzzerTestOneInput(exact.data(), exact.size());
  }
  std::printf("replayed %zu inputs\n", inputs.size());
  return 0;
}
