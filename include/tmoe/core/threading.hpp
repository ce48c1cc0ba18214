#pragma once
// tmoe threads its own work: a parallel loop over a fixed list of independent items
// (row tiles, (batch, head) pairs, token chunks). What an item computes never depends on
// which thread runs it or how many threads there are, so results are bitwise identical
// for any thread count (DESIGN.md principle 5). Eigen's own threading stays off.
//
// The loop runs on a small pool of std::threads. Idle workers spin for a few tens of
// microseconds (the gap between two loops of one training step) and then sleep on a futex
// (std::atomic::wait), so a loaded machine does not make a waiting thread burn the core
// another thread needs — OpenMP's default active spinning made a 2-thread step 10x slower
// when one core was busy. Items are claimed dynamically, so a descheduled worker delays
// a loop by at most the item it holds.
#include <atomic>
#include <cstdlib>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <type_traits>
#include <algorithm>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TMOE_CPU_RELAX() _mm_pause()
#else
#define TMOE_CPU_RELAX() ((void)0)
#endif

namespace tmoe {

// The thread-count setting (0: all hardware threads); set_threads() writes it.
inline int& thread_count_ref() {
  static int n = 0;
  return n;
}

namespace detail {

class ThreadPool {
 public:
  using ItemFn = void (*)(void*, std::int64_t);

  static ThreadPool& instance() {
    static ThreadPool pool;
    return pool;
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
    stop_ = true;
    epoch_.fetch_add(1);
    epoch_.notify_all();
    for (auto& t : threads_) t.join();
  }

  // fn(ctx, i) for i in [0, n) on `nthreads` threads, the caller being one of them.
  // Returns false (and runs nothing) when the pool is busy with another caller's loop or
  // is called from inside a loop; the caller then runs the items itself.
  bool run(std::int64_t n, int nthreads, ItemFn fn, void* ctx) {
    if (inside_loop() || !mutex_.try_lock()) return false;
    std::lock_guard<std::mutex> lock(mutex_, std::adopt_lock);
    while (static_cast<int>(threads_.size()) < nthreads - 1) {
      const int index = static_cast<int>(threads_.size());
      threads_.emplace_back([this, index] { worker(index); });
    }
    const std::uint32_t e = epoch_.load() + 1;
    // Close the ticket under the new epoch before touching the job fields, so a worker
    // still holding the previous epoch can never claim an item of this job.
    ticket_.store(pack(e, kClosed));
    fn_.store(fn);
    ctx_.store(ctx);
    n_.store(n);
    participants_.store(nthreads - 1);
    done_.store(0);
    ticket_.store(pack(e, 0));
    epoch_.store(e);
    epoch_.notify_all();
    inside_loop() = true;
    work(e);
    inside_loop() = false;
    spin_then_wait(done_, [&](std::int64_t d) { return d >= n; });
    return true;
  }

 private:
  static constexpr std::uint32_t kClosed = 0xffffffffu;
  static constexpr auto kSpin = std::chrono::microseconds(50);

  ThreadPool() = default;

  static std::uint64_t pack(std::uint32_t epoch, std::uint32_t index) {
    return (static_cast<std::uint64_t>(epoch) << 32) | index;
  }
  static bool& inside_loop() {
    thread_local bool inside = false;
    return inside;
  }

  // Spins for up to kSpin while !ready(value), then sleeps until the value changes.
  template <class A, class Ready>
  static void spin_then_wait(A& atom, Ready&& ready) {
    auto v = atom.load();
    if (ready(v)) return;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 1;; ++i) {
      TMOE_CPU_RELAX();
      v = atom.load();
      if (ready(v)) return;
      if ((i & 63) == 0 && std::chrono::steady_clock::now() - t0 > kSpin) break;
    }
    while (!ready(v)) {
      atom.wait(v);
      v = atom.load();
    }
  }

  // Claims and runs items of job `e` until none are left.
  void work(std::uint32_t e) {
    for (;;) {
      std::uint64_t t = ticket_.load();
      if (static_cast<std::uint32_t>(t >> 32) != e) return;
      const ItemFn fn = fn_.load();
      void* ctx = ctx_.load();
      const std::int64_t n = n_.load();
      const std::uint32_t i = static_cast<std::uint32_t>(t);
      if (i == kClosed || static_cast<std::int64_t>(i) >= n) return;
      if (!ticket_.compare_exchange_weak(t, t + 1)) continue;
      fn(ctx, i);
      if (done_.fetch_add(1) + 1 == n) done_.notify_all();
    }
  }

  void worker(int index) {
    inside_loop() = true;
    std::uint32_t seen = 0;
    for (;;) {
      spin_then_wait(epoch_, [&](std::uint32_t e) { return e != seen || stop_.load(); });
      if (stop_.load()) return;
      seen = epoch_.load();
      if (index < participants_.load()) work(seen);
    }
  }

  std::mutex mutex_;
  std::vector<std::thread> threads_;
  std::atomic<std::uint32_t> epoch_{0};
  std::atomic<std::uint64_t> ticket_{0};
  std::atomic<ItemFn> fn_{nullptr};
  std::atomic<void*> ctx_{nullptr};
  std::atomic<std::int64_t> n_{0};
  std::atomic<std::int64_t> done_{0};
  std::atomic<int> participants_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace detail

// Number of worker threads used by tmoe's parallel loops (0 = OMP_NUM_THREADS when set —
// the usual way to give each MPI rank its share of the cores — else all hardware threads).
inline void set_threads(int n) { thread_count_ref() = n; }
inline int threads() {
  const int n = thread_count_ref();
  if (n > 0) return n;
  static const int from_env = [] {
    const char* e = std::getenv("OMP_NUM_THREADS");
    const int v = e ? std::atoi(e) : 0;
    return v > 0 ? v : 0;
  }();
  return from_env > 0 ? from_env : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

// fn(i) for i in [0, n); items must be independent.
template <class F>
void parallel_for(std::int64_t n, F&& fn) {
  const int nt = threads();
  if (n > 1 && nt > 1 && n < 0xffffffffLL) {
    auto call = [](void* ctx, std::int64_t i) { (*static_cast<std::remove_reference_t<F>*>(ctx))(i); };
    if (detail::ThreadPool::instance().run(n, static_cast<int>(std::min<std::int64_t>(nt, n)), call,
                                           const_cast<void*>(static_cast<const void*>(&fn))))
      return;
  }
  for (std::int64_t i = 0; i < n; ++i) fn(i);
}

}  // namespace tmoe
