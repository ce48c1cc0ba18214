// The CUDA context, allocator and tensors on a device: properties, the caching allocator's
// reuse (no cudaMalloc after the first pass), explicit copies, and the errors a user meets
// (a device that does not exist, more memory than the card has).
#define BOOST_TEST_MODULE cuda_context
#include "gpu_test.hpp"

namespace cu = tmoe::backend::cuda;

BOOST_AUTO_TEST_CASE(context_reports_device) {
  auto& ctx = cu::Context::current();
  BOOST_TEST_MESSAGE("device 0: " << ctx.info().name << ", sm_" << ctx.info().capability() << ", " << ctx.info().sms
                                  << " SMs, " << cu::mib(ctx.info().total_memory));
  BOOST_TEST(ctx.info().sms > 0);
  BOOST_TEST(ctx.info().total_memory > 0u);
}

BOOST_AUTO_TEST_CASE(copies_round_trip) {
  auto v = gpu_test::random_vector(1000, 1);
  auto d = cu::to_device(v);
  auto back = cu::to_host(d);
  BOOST_TEST(back == v);
}

BOOST_AUTO_TEST_CASE(allocator_reuses_blocks_after_first_step) {
  auto& a = cu::Context::current().allocator();
  auto step = [] {
    std::vector<cu::DeviceTensor<float>> ts;
    for (int i = 1; i <= 8; ++i) ts.emplace_back(tmoe::Shape{1000 * i});
    ts.emplace_back(tmoe::Shape{3 << 20});
  };
  step();
  const auto before = a.stats();
  for (int s = 0; s < 5; ++s) step();
  const auto after = a.stats();
  BOOST_TEST(after.raw_allocs == before.raw_allocs);
  BOOST_TEST(after.hits - before.hits == 5 * 9);
}

BOOST_AUTO_TEST_CASE(more_memory_than_the_card_is_a_clear_error) {
  const std::size_t too_much = cu::Context::current().info().total_memory * 2;
  try {
    cu::DeviceTensor<float> t(tmoe::Shape{static_cast<std::int64_t>(too_much / sizeof(float))});
    BOOST_FAIL("allocating twice the card's memory did not fail");
  } catch (const tmoe::Error& e) {
    const std::string w = e.what();
    BOOST_TEST_MESSAGE(w);
    BOOST_TEST(w.find("out of device memory") != std::string::npos);
    BOOST_TEST(w.find("free of") != std::string::npos);
  }
  // The context still works afterwards.
  cu::DeviceTensor<float> ok(tmoe::Shape{16});
  BOOST_TEST(cu::to_host(ok) == std::vector<float>(16, 0.0f));
}

BOOST_AUTO_TEST_CASE(a_missing_device_is_a_clear_error) {
  try {
    cu::Context ctx(cu::device_count() + 3);
    BOOST_FAIL("a device index past the last did not fail");
  } catch (const tmoe::Error& e) {
    BOOST_TEST(std::string(e.what()).find("does not exist") != std::string::npos);
  }
}
