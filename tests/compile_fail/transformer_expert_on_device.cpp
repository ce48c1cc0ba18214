// Must not compile: an MoE layer of TransformerExpert experts on a device backend (one whose
// memory space is not host memory, as backend::Cuda's). Expected: "TransformerExpert is not
// ported to the GPU yet". (A stand-in device backend keeps this check in g++.)
#include <tmoe/tmoe.hpp>

struct DeviceLikeBackend : tmoe::backend::Cpu {
  static constexpr const char* name = "device_like";
  using Space = tmoe::CudaSpace;
};

using Moe = tmoe::MoE<tmoe::TransformerExpert<tmoe::SwiGLU>, tmoe::TopK>;
template struct Moe::impl<float, DeviceLikeBackend>;
