// The CUDA caching allocator's bookkeeping, on the host with a fake raw allocator (no GPU
// needed): rounding, reuse (no raw allocation once a step's sizes have been seen), the
// two-times rule, statistics, retry after trimming on failure, and the out-of-memory error.
#define BOOST_TEST_MODULE cuda_allocator
#include <boost/test/unit_test.hpp>
#include <cstdlib>
#include <set>

#include "tmoe/backend/cuda/allocator.hpp"

using tmoe::backend::cuda::CachingAllocator;

namespace {

// Hands out host memory up to a limit; counts calls.
struct FakeRaw {
  std::size_t limit = std::size_t(1) << 30;
  std::size_t used = 0;
  std::set<void*>* live = nullptr;
  std::size_t* sizes_total = nullptr;
  std::map<void*, std::size_t> size_of;
  void* alloc(std::size_t bytes) {
    if (used + bytes > limit) return nullptr;
    void* p = std::malloc(bytes);
    used += bytes;
    size_of[p] = bytes;
    return p;
  }
  void free(void* p) {
    used -= size_of.at(p);
    size_of.erase(p);
    std::free(p);
  }
  std::string memory_report() { return std::to_string(limit - used) + " bytes free of " + std::to_string(limit); }
};

}  // namespace

BOOST_AUTO_TEST_CASE(rounding) {
  using A = CachingAllocator<FakeRaw>;
  BOOST_TEST(A::round(0) == 0u);
  BOOST_TEST(A::round(1) == 512u);
  BOOST_TEST(A::round(512) == 512u);
  BOOST_TEST(A::round(513) == 1024u);
  BOOST_TEST(A::round((1u << 20) - 1) == (1u << 20));
  BOOST_TEST(A::round((1u << 20) + 1) == (2u << 20));
  BOOST_TEST(A::round(5u << 20) == (6u << 20));
}

BOOST_AUTO_TEST_CASE(a_repeated_step_stops_reaching_the_raw_allocator) {
  CachingAllocator<FakeRaw> a;
  auto step = [&](int s) {
    std::vector<void*> ps;
    for (std::size_t b : {100u, 5000u, 70000u, 3000000u, 100u}) ps.push_back(a.allocate(b + static_cast<std::size_t>(s)));
    for (void* p : ps) a.deallocate(p);
  };
  step(0);
  const auto first = a.stats();
  BOOST_TEST(first.raw_allocs == 5);
  BOOST_TEST(first.in_use == 0u);
  for (int s = 1; s <= 10; ++s) step(s);  // sizes vary a little, within the rounding
  const auto later = a.stats();
  BOOST_TEST(later.raw_allocs == 5);
  BOOST_TEST(later.hits == 50);
  BOOST_TEST(later.requests == 55);
  BOOST_TEST(later.peak_in_use == 512u + 5120u + 70144u + (4u << 20) + 512u);
  BOOST_TEST(later.cached == later.reserved);
  a.trim();
  BOOST_TEST(a.stats().cached == 0u);
  BOOST_TEST(a.stats().reserved == 0u);
  BOOST_TEST(a.raw().used == 0u);
}

BOOST_AUTO_TEST_CASE(a_block_more_than_twice_the_request_is_not_used) {
  CachingAllocator<FakeRaw> a;
  void* big = a.allocate(8u << 20);
  a.deallocate(big);
  void* small = a.allocate(1000);  // 8 MiB cached, 1 KiB asked: fresh block
  BOOST_TEST(a.stats().raw_allocs == 2);
  void* mid = a.allocate(5u << 20);  // 6 MiB rounded: the 8 MiB block is within 2x
  BOOST_TEST(mid == big);
  BOOST_TEST(a.stats().raw_allocs == 2);
  a.deallocate(small);
  a.deallocate(mid);
}

BOOST_AUTO_TEST_CASE(failure_trims_the_cache_and_retries) {
  FakeRaw raw;
  raw.limit = 10u << 20;
  CachingAllocator<FakeRaw> a(raw);
  void* p = a.allocate(6u << 20);
  a.deallocate(p);                  // 6 MiB cached
  void* q = a.allocate(3u << 20);   // 4 MiB rounded: the 6 MiB block fits (<= 2x)
  a.deallocate(q);
  void* r = a.allocate(9u << 20);   // 10 MiB: only fits once the cache is returned
  BOOST_TEST(r != nullptr);
  BOOST_TEST(a.stats().cached == 0u);
  BOOST_TEST(a.stats().raw_frees == 1);
  a.deallocate(r);
}

BOOST_AUTO_TEST_CASE(out_of_memory_is_a_clear_error) {
  FakeRaw raw;
  raw.limit = 4u << 20;
  CachingAllocator<FakeRaw> a(raw);
  void* p = a.allocate(1u << 20);
  try {
    a.allocate(8u << 20);
    BOOST_FAIL("asking for more than the device has did not fail");
  } catch (const tmoe::Error& e) {
    const std::string w = e.what();
    BOOST_TEST_MESSAGE(w);
    BOOST_TEST(w.find("out of device memory") != std::string::npos);
    BOOST_TEST(w.find("8388608 bytes") != std::string::npos);
    BOOST_TEST(w.find("free of 4194304") != std::string::npos);
  }
  // Nothing changed: the block handed out is still accounted for and can be given back.
  BOOST_TEST(a.stats().in_use == (1u << 20));
  a.deallocate(p);
  BOOST_CHECK_THROW(a.deallocate(p), tmoe::Error);  // twice
  int x = 0;
  BOOST_CHECK_THROW(a.deallocate(&x), tmoe::Error);  // never handed out
}
