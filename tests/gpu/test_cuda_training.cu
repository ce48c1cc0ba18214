// A short GPU training run (training_cases.hpp: dense model with dropout, grad_accum 2,
// Fp32 and MixedBf16) against the CPU's, whose losses and gradient norms
// gpu_model_reference wrote to TMOE_TRAINING_REFERENCE; and two GPU runs bitwise identical.
#define BOOST_TEST_MODULE cuda_training
#include <cstdlib>
#include <fstream>

#include "gpu_test.hpp"
#include "training_cases.hpp"

namespace {

std::vector<double> reference() {
  const char* path = std::getenv("TMOE_TRAINING_REFERENCE");
  if (!path) throw tmoe::Error("TMOE_TRAINING_REFERENCE is not set", "test_cuda_training", "the file gpu_model_reference wrote");
  std::ifstream f(path, std::ios::binary);
  std::uint64_t n = 0;
  f.read(reinterpret_cast<char*>(&n), 8);
  if (!f || n > 4096) throw tmoe::Error("cannot read the reference", path, "the file gpu_model_reference wrote");
  std::vector<double> v(n);
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(8 * n));
  if (!f) throw tmoe::Error("truncated reference", path, "the file gpu_model_reference wrote");
  return v;
}

}  // namespace

BOOST_AUTO_TEST_CASE(gpu_training_follows_cpu_and_repeats_bitwise) {
  const auto ref = reference();
  const auto gpu = training_cases::run_all<tmoe::backend::Cuda>();
  const auto again = training_cases::run_all<tmoe::backend::Cuda>();
  BOOST_TEST_REQUIRE(gpu.size() == ref.size());
  const std::size_t half = gpu.size() / 2;  // Fp32 run, then MixedBf16
  for (std::size_t i = 0; i < gpu.size(); ++i) {
    const double tol = i < half ? 1e-4 : 2e-2;
    BOOST_TEST_MESSAGE((i < half ? "fp32 " : "bf16 ") << (i % 2 ? "grad norm " : "loss ") << "step " << (i % half) / 2
                                                      << ": gpu " << gpu[i] << " cpu " << ref[i]);
    BOOST_TEST(std::abs(gpu[i] - ref[i]) <= tol * std::abs(ref[i]));
  }
  BOOST_TEST((gpu == again));
}
