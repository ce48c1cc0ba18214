// Must not compile: a model in device memory (a backend whose Space is CudaSpace, as
// backend::Cuda's) under a distributed strategy; the trainer runs a device model with the
// Serial strategy only for now. Expected: "a model on the GPU trains with the Serial strategy".
// (A stand-in device backend keeps this check in g++: the sentence is the trainer's.)
#include <tmoe/tmoe.hpp>

struct DeviceLikeBackend : tmoe::backend::Cpu {
  static constexpr const char* name = "device_like";
  using Space = tmoe::CudaSpace;
};

using Block = tmoe::TransformerBlock<tmoe::CausalAttention<tmoe::Rope>, tmoe::Dense<tmoe::SwiGLU>>;
using Model = tmoe::DecoderLM<Block, tmoe::RmsNorm>;

template class tmoe::Trainer<Model, tmoe::AdamW, tmoe::Fp32, tmoe::DataParallel<tmoe::comm::Serial>, DeviceLikeBackend>;
