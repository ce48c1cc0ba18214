#pragma once
// A caching allocator for device memory (the idea of PyTorch's and CUB's): freed blocks
// go to a free list keyed by size and serve later requests, so after the first training
// step no allocation reaches cudaMalloc (which synchronises the device). The bookkeeping is
// a template over the raw allocator, so the same code is tested on the host with a fake
// (tests/unit/test_cuda_allocator.cpp) and used on the GPU with cudaMalloc/cudaFree.
//
// Rules:
//  - sizes are rounded up: to 512 bytes up to 1 MiB, to 2 MiB above (fewer distinct sizes,
//    more reuse; at most 2 MiB or 512 B of slack per block);
//  - a request takes the smallest cached block of at least its rounded size and at most
//    twice it (a huge block is not spent on a small tensor);
//  - when the raw allocator fails, every cached block is returned and the request retried
//    once; a second failure is an Error naming the request, the bytes in use and cached,
//    and what the raw allocator reports as free and total;
//  - all blocks are used in the order of one stream (the context's compute stream): a block
//    freed there can be reused by the next kernel on that stream without an event.
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

#include "tmoe/core/error.hpp"

namespace tmoe::backend::cuda {

struct AllocatorStats {
  std::size_t in_use = 0;       // bytes handed out (rounded sizes)
  std::size_t cached = 0;       // bytes held in free lists
  std::size_t peak_in_use = 0;  // highest in_use so far
  std::size_t reserved = 0;     // bytes obtained from the raw allocator and not returned
  std::int64_t raw_allocs = 0;  // calls that reached the raw allocator
  std::int64_t raw_frees = 0;
  std::int64_t hits = 0;        // requests served from the cache
  std::int64_t requests = 0;
};

inline std::string mib(std::size_t bytes) {
  return std::to_string(static_cast<double>(bytes) / (1024.0 * 1024.0)).substr(0, 10) + " MiB";
}

// Raw: void* alloc(std::size_t) returning nullptr when out of memory; void free(void*);
// std::string memory_report() (free and total, for the error message).
template <class Raw>
class CachingAllocator {
 public:
  static constexpr std::size_t kSmall = std::size_t(1) << 20;        // 1 MiB
  static constexpr std::size_t kSmallRound = 512;
  static constexpr std::size_t kLargeRound = std::size_t(2) << 20;  // 2 MiB

  explicit CachingAllocator(Raw raw = Raw{}) : raw_(std::move(raw)) {}
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;
  ~CachingAllocator() {
    trim();
    // Blocks still handed out belong to tensors that outlive the allocator (static
    // destruction order): return them too rather than leak.
    for (auto& [p, bytes] : used_) raw_.free(p);
  }

  static std::size_t round(std::size_t bytes) {
    if (bytes == 0) return 0;
    const std::size_t r = bytes <= kSmall ? kSmallRound : kLargeRound;
    return (bytes + r - 1) / r * r;
  }

  // A block of at least `bytes`; nullptr for 0 bytes.
  void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    std::lock_guard<std::mutex> lock(mutex_);
    const std::size_t want = round(bytes);
    ++stats_.requests;
    void* p = nullptr;
    std::size_t got = want;
    auto it = free_.lower_bound(want);
    if (it != free_.end() && it->first <= 2 * want) {
      p = it->second;
      got = it->first;
      free_.erase(it);
      stats_.cached -= got;
      ++stats_.hits;
    } else {
      p = raw_alloc(want, bytes);
    }
    used_.emplace(p, got);
    stats_.in_use += got;
    if (stats_.in_use > stats_.peak_in_use) stats_.peak_in_use = stats_.in_use;
    return p;
  }

  void deallocate(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = used_.find(p);
    if (it == used_.end())
      throw Error("a block that this allocator did not hand out (or already freed) was given back",
                  "tmoe::backend::cuda::CachingAllocator::deallocate");
    const std::size_t bytes = it->second;
    used_.erase(it);
    stats_.in_use -= bytes;
    free_.emplace(bytes, p);
    stats_.cached += bytes;
  }

  // Returns every cached block to the raw allocator.
  void trim() {
    std::lock_guard<std::mutex> lock(mutex_);
    trim_locked();
  }

  AllocatorStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }
  Raw& raw() { return raw_; }

 private:
  void trim_locked() {
    for (auto& [bytes, p] : free_) {
      raw_.free(p);
      ++stats_.raw_frees;
      stats_.reserved -= bytes;
    }
    free_.clear();
    stats_.cached = 0;
  }

  void* raw_alloc(std::size_t want, std::size_t asked) {
    void* p = raw_.alloc(want);
    if (!p && !free_.empty()) {
      trim_locked();
      p = raw_.alloc(want);
    }
    if (!p)
      throw Error("out of device memory: asked for " + std::to_string(asked) + " bytes (" + mib(want) + " rounded) with " +
                      mib(stats_.in_use) + " in use by tmoe; the device reports " + raw_.memory_report(),
                  "tmoe::backend::cuda::CachingAllocator", "a smaller batch, model or sequence, or activation recomputation");
    ++stats_.raw_allocs;
    stats_.reserved += want;
    return p;
  }

  Raw raw_;
  mutable std::mutex mutex_;
  std::multimap<std::size_t, void*> free_;
  std::unordered_map<void*, std::size_t> used_;
  AllocatorStats stats_;
};

}  // namespace tmoe::backend::cuda
