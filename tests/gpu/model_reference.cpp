// Writes the CPU side of the whole-model parity tests: each case of model_cases.hpp run on
// backend::Cpu (loss, logits, gradients) to the file named by the first argument
// (test_cuda_model.cu reads it), and, with a second argument, the losses and gradient norms
// of training_cases.hpp's short runs (test_cuda_training.cu). Built with g++ and Eigen;
// CTest runs it before the gpu tests.
#include <cstdio>
#include <fstream>

#include "model_cases.hpp"
#include "training_cases.hpp"
#include "tmoe/backend/cpu/cpu.hpp"

int main(int argc, char** argv) {
  if (argc != 2 && argc != 3) {
    std::fprintf(stderr, "usage: gpu_model_reference MODEL_FILE [TRAINING_FILE]\n");
    return 2;
  }
  try {
    auto fetch = [](const float* p, std::int64_t n) { return std::vector<double>(p, p + n); };
    const auto results = model_cases::run_all<tmoe::backend::Cpu>(fetch);
    std::ofstream f(argv[1], std::ios::binary);
    for (const auto& r : results) model_cases::write(f, r);
    if (!f) throw tmoe::Error("could not write", argv[1]);
    std::printf("wrote %zu cases to %s\n", results.size(), argv[1]);
    if (argc == 3) {
      const auto v = training_cases::run_all<tmoe::backend::Cpu>();
      std::ofstream t(argv[2], std::ios::binary);
      const std::uint64_t n = v.size();
      t.write(reinterpret_cast<const char*>(&n), 8);
      t.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(8 * n));
      if (!t) throw tmoe::Error("could not write", argv[2]);
      std::printf("wrote %zu training values to %s\n", v.size(), argv[2]);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
