// Must not compile: MoE's third argument is not a capacity policy. Expected: "the Capacity
// argument is not a capacity policy".
#include <tmoe/tmoe.hpp>

struct Unlimited {
  static constexpr const char* name = "unlimited";
};
template struct tmoe::MoE<tmoe::SwiGLU, tmoe::TopK, Unlimited>;
