// A build without code for the device's architecture: this program is compiled for sm_80
// machine code only (no PTX), which a Hopper (sm_90) GPU cannot run, so creating the
// context must fail with the error that names the device's compute capability and the
// compiled architectures. Skipped (77) without a device; on a device of compute capability
// 8.0 it has nothing to check and says so (also 77).
#include <cstdio>
#include <string>

#include "tmoe/backend/cuda/context.hpp"

int main() {
  namespace cu = tmoe::backend::cuda;
  const std::string why = cu::no_device_reason();
  if (!why.empty()) {
    std::printf("SKIPPED: no CUDA device (%s)\n", why.c_str());
    return 77;
  }
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, 0) != cudaSuccess || (p.major == 8 && p.minor == 0)) {
    std::printf("SKIPPED: device 0 runs sm_80 code; nothing to check\n");
    return 77;
  }
  try {
    cu::Context ctx(0);
    std::printf("FAIL: a context was made for a device of compute capability %d.%d from sm_80-only code\n", p.major,
                p.minor);
    return 1;
  } catch (const tmoe::Error& e) {
    const std::string w = e.what();
    std::printf("%s\n", w.c_str());
    const bool ok = w.find("which this build has no code for") != std::string::npos &&
                    w.find("CMAKE_CUDA_ARCHITECTURES includes") != std::string::npos;
    std::printf("%s\n", ok ? "PASS" : "FAIL: the error does not name the architectures");
    return ok ? 0 : 1;
  }
}
