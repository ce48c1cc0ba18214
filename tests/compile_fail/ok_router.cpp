// Control for not_a_router.cpp: the same file with TopK as the router. It must compile, which
// shows that the compile-fail harness (compiler, flags, include paths) works and that
// not_a_router.cpp fails because of its router alone.
#include <tmoe/tmoe.hpp>

struct NotARouter {
  static constexpr const char* name = "not_a_router";
};

template struct tmoe::MoE<tmoe::SwiGLU, tmoe::TopK>;
template struct tmoe::MoE<tmoe::SwiGLU, tmoe::ExpertChoice, tmoe::CapacityFactor>::impl<float, tmoe::backend::Cpu>;
template struct tmoe::MoE<tmoe::SwiGLU, tmoe::SigmoidBias, tmoe::Dropless, tmoe::Balancing<tmoe::AuxLoss, tmoe::BiasUpdate>>::impl<float, tmoe::backend::Cpu>;
template struct tmoe::MoE<tmoe::SwiGLU, tmoe::GroupLimited<tmoe::TopK>, tmoe::CapacityFactor>;
