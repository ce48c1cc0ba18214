#pragma once
// OptimizerChoice<Opts...>: one Optimizer whose update rule is picked at run time by
// train.optimizer, matched against each member's `name`. It holds the chosen member (a
// std::variant, so no virtual calls) and allocates for the hungriest one: slots is the
// maximum over the members, used_slots() what the chosen one uses.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "tmoe/core/concepts.hpp"
#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/optim/adamw.hpp"
#include "tmoe/optim/lion.hpp"
#include "tmoe/optim/sgd.hpp"
#include "tmoe/optim/sign_momentum.hpp"

namespace tmoe {

namespace detail {
template <class... Opts>
constexpr bool optimizer_names_distinct() {
  const std::string_view names[] = {std::string_view(Opts::name)...};
  for (std::size_t i = 0; i < sizeof...(Opts); ++i)
    for (std::size_t j = i + 1; j < sizeof...(Opts); ++j)
      if (names[i] == names[j]) return false;
  return true;
}
}  // namespace detail

template <Optimizer... Opts>
struct OptimizerChoice {
  static_assert(sizeof...(Opts) > 0, "tmoe: OptimizerChoice<...> needs at least one optimizer");
  static constexpr const char* name = "optimizer_choice";
  static constexpr int slots = std::max({static_cast<int>(Opts::slots)...});

 private:
  static constexpr std::array<std::string_view, sizeof...(Opts)> names_{std::string_view(Opts::name)...};
  static_assert(detail::optimizer_names_distinct<Opts...>(),
                "tmoe: OptimizerChoice<...>: two members share a name, so train.optimizer could not tell them apart");

 public:
  std::variant<Opts...> rule;

  // "adamw, sgd, lion, sign_momentum": the values train.optimizer may take.
  static std::string choices() {
    std::string s;
    for (std::string_view n : names_) {
      if (!s.empty()) s += ", ";
      s += n;
    }
    return s;
  }

  static OptimizerChoice from_config(const TrainConfig& t) {
    OptimizerChoice c;
    const bool found = [&]<std::size_t... I>(std::index_sequence<I...>) {
      return ((t.optimizer == names_[I] &&
               (c.rule.template emplace<I>(std::variant_alternative_t<I, std::variant<Opts...>>::from_config(t)),
                true)) ||
              ...);
    }(std::index_sequence_for<Opts...>{});
    if (!found)
      throw Error("optimizer is '" + t.optimizer + "', which this program does not offer", "train.optimizer",
                  "one of " + choices());
    return c;
  }

  int used_slots() const {
    return std::visit([](const auto& o) { return static_cast<int>(o.used_slots()); }, rule);
  }
  // Slots past the chosen member's own `slots` are allocated but never touched.
  const char* slot_name(int s) const {
    return std::visit(
        [s](const auto& o) -> const char* {
          return s < std::remove_cvref_t<decltype(o)>::slots ? static_cast<const char*>(o.slot_name(s)) : "unused";
        },
        rule);
  }
  const char* active_name() const {
    return std::visit([](const auto& o) { return static_cast<const char*>(o.active_name()); }, rule);
  }

  // state[0 .. slots): the chosen member reads the first of them it uses.
  template <class T>
  void update(T* p, const T* g, T** state, std::int64_t n, double lr, double wd, std::int64_t step) const {
    std::visit([&](const auto& o) { o.update(p, g, state, n, lr, wd, step); }, rule);
  }
};

using StandardOptimizers = OptimizerChoice<AdamW, Sgd, Lion, SignMomentum>;
static_assert(Optimizer<StandardOptimizers>);

}  // namespace tmoe
