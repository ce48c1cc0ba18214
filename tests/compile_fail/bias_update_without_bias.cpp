// Must not compile: the aux-loss-free bias update moves a per-expert selection bias, and the
// softmax TopK router has none. Expected: "this router has none".
#include <tmoe/tmoe.hpp>

using Ffn = tmoe::MoE<tmoe::SwiGLU, tmoe::TopK, tmoe::Dropless, tmoe::Balancing<tmoe::AuxLoss, tmoe::BiasUpdate>>;
template struct Ffn::impl<float, tmoe::backend::Cpu>;
