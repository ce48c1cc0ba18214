// Must not compile: expert-choice routing fills every expert to a fixed capacity, so it has no
// dropless form. Expected: "expert-choice routing fills each expert to a fixed capacity C".
#include <tmoe/tmoe.hpp>

template struct tmoe::MoE<tmoe::SwiGLU, tmoe::ExpertChoice, tmoe::Dropless>::impl<float, tmoe::backend::Cpu>;
