#define BOOST_TEST_MODULE philox
#include <boost/test/unit_test.hpp>
#include <cmath>

#include "tmoe/core/philox.hpp"

// Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
BOOST_AUTO_TEST_CASE(known_answers) {
  auto z = tmoe::Philox4x32::generate(0, {0, 0, 0, 0});
  BOOST_TEST(z[0] == 0x6627e8d5u);
  BOOST_TEST(z[1] == 0xe169c58du);
  BOOST_TEST(z[2] == 0xbc57ac4cu);
  BOOST_TEST(z[3] == 0x9b00dbd8u);
  auto f = tmoe::Philox4x32::generate(0xffffffffffffffffull, {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu});
  BOOST_TEST(f[0] == 0x408f276du);
  BOOST_TEST(f[1] == 0x41c83b0eu);
  BOOST_TEST(f[2] == 0xa20bc7c6u);
  BOOST_TEST(f[3] == 0x6d5451fdu);
}

BOOST_AUTO_TEST_CASE(uniform_and_normal_moments) {
  tmoe::RngKey key{42, 7, tmoe::site_id(tmoe::Site::kTest), 3};
  const int n = 200000;
  double su = 0, sn = 0, sn2 = 0;
  for (int i = 0; i < n; ++i) {
    const double u = key.uniform(i);
    BOOST_REQUIRE(u > 0.0);
    BOOST_REQUIRE(u < 1.0);
    su += u;
    const double z = key.normal(i);
    sn += z;
    sn2 += z * z;
  }
  BOOST_TEST(std::abs(su / n - 0.5) < 0.005);
  BOOST_TEST(std::abs(sn / n) < 0.01);
  BOOST_TEST(std::abs(sn2 / n - 1.0) < 0.02);
}

BOOST_AUTO_TEST_CASE(streams_are_keyed_by_every_field) {
  tmoe::RngKey a{1, 2, 3, 4}, b = a;
  BOOST_TEST(a.bits(5) == b.bits(5));
  b.seed = 9;
  BOOST_TEST(a.bits(5) != b.bits(5));
  b = a;
  b.step = 9;
  BOOST_TEST(a.bits(5) != b.bits(5));
  b = a;
  b.site = 9;
  BOOST_TEST(a.bits(5) != b.bits(5));
  b = a;
  b.token = 9;
  BOOST_TEST(a.bits(5) != b.bits(5));
  BOOST_TEST(a.bits(5) != a.bits(6));
}
