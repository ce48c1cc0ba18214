#pragma once
// Shared by the tests of bad input: every one must end in a tmoe::Error whose message says
// what is wrong and where (DESIGN.md principle 7). Each helper runs f, which must throw
// tmoe::Error, and logs the message so the test log shows what users see; a missing
// fragment, an unwanted one, another exception type or no exception at all is a failed
// check that names the whole message.
#include <boost/test/unit_test.hpp>
#include <exception>
#include <string>
#include <vector>

#include "tmoe/core/error.hpp"

namespace tmoe::test {

// msg contains every `present` fragment and none of the `absent` ones.
inline void check_message(const std::string& msg, const std::vector<std::string>& present,
                          const std::vector<std::string>& absent = {}) {
  for (const auto& p : present)
    BOOST_CHECK_MESSAGE(msg.find(p) != std::string::npos, "message \"" << msg << "\" lacks \"" << p << "\"");
  for (const auto& a : absent)
    BOOST_CHECK_MESSAGE(msg.find(a) == std::string::npos,
                        "message \"" << msg << "\" should not contain \"" << a << "\"");
}

// f must throw tmoe::Error; on_error(e) makes the further checks.
template <class F, class OnError>
void expect_error_then(F&& f, OnError&& on_error) {
  try {
    f();
  } catch (const tmoe::Error& e) {
    BOOST_TEST_MESSAGE(e.what());
    on_error(e);
    return;
  } catch (const std::exception& e) {
    BOOST_ERROR("threw something other than tmoe::Error: " << e.what());
    return;
  }
  BOOST_ERROR("no tmoe::Error was thrown");
}

// f must throw tmoe::Error whose message contains every `present` fragment and none of the
// `absent` ones.
template <class F>
void expect_error(F&& f, const std::vector<std::string>& present, const std::vector<std::string>& absent = {}) {
  expect_error_then(f, [&](const tmoe::Error& e) { check_message(e.what(), present, absent); });
}

// As expect_error, and the error's where() is `where` (not checked when `where` is empty).
template <class F>
void expect_error_at(F&& f, const std::string& where, const std::vector<std::string>& present) {
  expect_error_then(f, [&](const tmoe::Error& e) {
    if (!where.empty()) BOOST_TEST(e.where() == where);
    check_message(e.what(), present);
  });
}

}  // namespace tmoe::test
