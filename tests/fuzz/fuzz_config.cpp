// Fuzz target: tmoe::io::load_config_text, apply_override, Config::validate and the
// to_yaml round trip (docs/fuzzing.md).
//
// Input: YAML text, optionally followed by a NUL byte and `section.key=value` overrides,
// one per line. Every bad input must end in a tmoe::Error (an escaping yaml-cpp or
// standard exception is a bug). Whatever config results, to_yaml must write it so that
// load_config_text reads back the same config: a checkpoint stores its config that way.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <type_traits>

#include "fuzz_common.hpp"
#include "tmoe/io/yaml_config.hpp"

namespace {

// Field by field, through the same field lists the loader walks.
bool same_config(const tmoe::Config& a, const tmoe::Config& b) {
  bool same = true;
  tmoe::io::detail::for_each_section(a, [&](const char* name, const auto& sa) {
    using S = std::remove_cvref_t<decltype(sa)>;
    tmoe::io::detail::for_each_section(b, [&](const char* other, const auto& sb) {
      if constexpr (std::is_same_v<S, std::remove_cvref_t<decltype(sb)>>) {
        if (std::string_view(name) != other) return;
        tmoe::io::detail::for_each_field<S>([&](const auto& fld) { same = same && sa.*fld.member == sb.*fld.member; });
      }
    });
  });
  return same;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const std::size_t nul = in.find('\0');
  const std::string yaml(in.substr(0, nul));
  std::string_view overrides = nul == std::string_view::npos ? std::string_view() : in.substr(nul + 1);

  tmoe::Config cfg;
  try {
    cfg = tmoe::io::load_config_text(yaml, "fuzz.yaml");
  } catch (const tmoe::Error&) {
  }
  while (!overrides.empty()) {
    const std::size_t nl = overrides.find('\n');
    const std::string arg(overrides.substr(0, nl));
    overrides = nl == std::string_view::npos ? std::string_view() : overrides.substr(nl + 1);
    const tmoe::Config before = cfg;
    try {
      tmoe::io::apply_override(cfg, arg);
    } catch (const tmoe::Error&) {
      TMOE_FUZZ_CHECK(same_config(cfg, before));  // a failed override changes nothing
    }
  }
  try {
    cfg.validate();
  } catch (const tmoe::Error&) {
  }

  const std::string text = tmoe::io::to_yaml(cfg);
  try {
    const tmoe::Config back = tmoe::io::load_config_text(text, "round-trip.yaml");
    if (!same_config(back, cfg)) {
      std::fprintf(stderr, "to_yaml output reads back differently:\n%s\n", text.c_str());
      TMOE_FUZZ_CHECK(!"round trip changed the config");
    }
  } catch (const tmoe::Error& e) {
    std::fprintf(stderr, "to_yaml output does not read back: %s\n%s\n", e.what(), text.c_str());
    TMOE_FUZZ_CHECK(!"round trip failed");
  }
  return 0;
}
