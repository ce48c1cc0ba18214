#pragma once
// tmoe::Error — every bad run-time input (config, data, checkpoint, shapes) ends here:
// what is wrong, where (file, field, layer), and what was expected.
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace tmoe {

class Error : public std::runtime_error {
 public:
  Error(std::string what, std::string where, std::string expected = {})
      : std::runtime_error(compose(what, where, expected)),
        what_(std::move(what)), where_(std::move(where)), expected_(std::move(expected)) {}

  const std::string& problem() const noexcept { return what_; }
  const std::string& where() const noexcept { return where_; }
  const std::string& expected() const noexcept { return expected_; }

 private:
  static std::string compose(const std::string& what, const std::string& where,
                             const std::string& expected) {
    std::string s = "tmoe: ";
    if (!where.empty()) s += where + ": ";
    s += what;
    if (!expected.empty()) s += " (expected " + expected + ")";
    return s;
  }
  std::string what_, where_, expected_;
};

namespace detail {
template <class... Args>
std::string cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

// Throws tmoe::Error unless cond holds; the message parts are only built on failure.
#define TMOE_CHECK(cond, where, what, expected)                     \
  do {                                                              \
    if (!(cond)) throw ::tmoe::Error((what), (where), (expected));  \
  } while (0)

template <class>
inline constexpr bool dependent_false = false;

}  // namespace tmoe
