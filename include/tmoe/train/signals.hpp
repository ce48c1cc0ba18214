#pragma once
// A polite stop: SIGTERM (what schedulers send before the kill) and SIGINT (Ctrl-C) set a
// flag that the training loop reads after each step; it then writes a checkpoint and
// exits 0. The handler only stores to a lock-free atomic (async-signal-safe). A second
// signal of the same kind while the stop is pending restores the default action, so a
// second Ctrl-C still ends a stuck process at once.
//
//   StopSignals stop;                // installs; the destructor restores the old handlers
//   ... if (stop.requested()) { save; return 0; }
#include <signal.h>

#include <atomic>

#include "tmoe/core/error.hpp"

namespace tmoe {

class StopSignals {
 public:
  StopSignals() {
    flag().store(0);
    struct sigaction sa {};
    sa.sa_handler = &StopSignals::handle;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (::sigaction(SIGTERM, &sa, &old_term_) != 0 || ::sigaction(SIGINT, &sa, &old_int_) != 0)
      throw Error("cannot install the SIGTERM/SIGINT handlers", "StopSignals");
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  ~StopSignals() {
    ::sigaction(SIGTERM, &old_term_, nullptr);
    ::sigaction(SIGINT, &old_int_, nullptr);
  }

  bool requested() const { return flag().load(std::memory_order_relaxed) != 0; }
  // The signal that asked to stop (SIGTERM or SIGINT), 0 if none.
  int signal() const { return flag().load(std::memory_order_relaxed); }

 private:
  static std::atomic<int>& flag() {
    static std::atomic<int> f{0};
    static_assert(std::atomic<int>::is_always_lock_free);
    return f;
  }
  static void handle(int sig) {
    if (flag().exchange(sig) == sig) {
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      sigemptyset(&dfl.sa_mask);
      ::sigaction(sig, &dfl, nullptr);
      ::raise(sig);
    }
  }

  struct sigaction old_term_ {}, old_int_ {};
};

}  // namespace tmoe
