// Must not compile: group-limited routing restricts a token's own top-k; expert choice has no
// per-token top-k to restrict. Expected: "Inner must be a token-choice router".
#include <tmoe/tmoe.hpp>

template struct tmoe::MoE<tmoe::SwiGLU, tmoe::GroupLimited<tmoe::ExpertChoice>, tmoe::CapacityFactor>;
