// Must not compile: MoE's second argument has a name but no router kind or per-token math,
// so it is not a Router. Expected: "the Router argument is not a Router".
#include <tmoe/tmoe.hpp>

struct NotARouter {
  static constexpr const char* name = "not_a_router";
};

template struct tmoe::MoE<tmoe::SwiGLU, NotARouter>;
