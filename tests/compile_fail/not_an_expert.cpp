// Must not compile: MoE's first argument has a name but no matrices or impl<T, Backend>, so
// it is not an Expert. Expected: "the Expert argument is not an Expert".
#include <tmoe/tmoe.hpp>

struct NotAnExpert {
  static constexpr const char* name = "not_an_expert";
};

template struct tmoe::MoE<NotAnExpert, tmoe::TopK>;
