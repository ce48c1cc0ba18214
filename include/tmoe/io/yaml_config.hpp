#pragma once
// Run-time config from a YAML file plus `section.key=value` command-line overrides.
//
// Every section and key comes from walking `fields()` of the config structs
// (core/config.hpp), so a field added there is loadable, overridable, dumped and listed
// in --help without touching this file. Every bad input ends in a tmoe::Error that names
// the file (with line and column) or "command line", the key path (`train.lr`), the
// offending value and the expected type (DESIGN.md principle 7); a failed load or
// override leaves the caller's Config untouched.
//
// Values are read strictly, the same way from YAML and from the command line:
//  - integers: optional sign and decimal digits only; the whole text must be consumed and
//    fit the field's type (`1.5`, `1e3`, `0x10`, `1_000` are rejected, `-3` is rejected
//    for an unsigned field), because silently truncating a size or a seed is worse than
//    asking the user to type it again;
//  - numbers (double): decimal or scientific notation, finite only (`.inf`/`nan` would
//    pass most `> 0` checks in validate() and poison a run);
//  - bools: true/false, yes/no, on/off, each in lower case, Capitalised or UPPER case —
//    the spellings YAML 1.1 (and yaml-cpp) treat as booleans, so a file written for
//    another YAML tool reads the same here; anything else (`maybe`, `1`, `y`) is an error;
//  - strings: the text as written, which must be valid UTF-8 (YAML holds Unicode text
//    only, so other bytes would not survive to_yaml, e.g. into a checkpoint); in a YAML
//    file an empty or null value (`key:`, `~`) is the empty string, which the string
//    fields use to mean "none".
// A command-line value is taken verbatim (it is not parsed as YAML), so
// `data.corpus=a: b` sets the corpus to "a: b".
#include <algorithm>
#include <cerrno>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/utf8.hpp"

namespace tmoe::io {

namespace detail {

using tmoe::detail::cat;

// The one place that names the sections; everything else iterates through here.
// Works for `Config&` and `const Config&` alike.
template <class Cfg, class F>
  requires std::is_same_v<std::remove_const_t<Cfg>, Config>
void for_each_section(Cfg& cfg, F&& f) {
  f("model", cfg.model);
  f("train", cfg.train);
  f("data", cfg.data);
  f("checkpoint", cfg.checkpoint);
  f("parallel", cfg.parallel);
}

// Calls f(field) for every Field of section type S, in declaration order.
template <class S, class F>
void for_each_field(F&& f) {
  std::apply([&](const auto&... fld) { (f(fld), ...); }, S::fields());
}

inline std::vector<std::string> section_names() {
  std::vector<std::string> names;
  const Config cfg;
  for_each_section(cfg, [&](const char* name, const auto&) { names.emplace_back(name); });
  return names;
}

template <class S>
std::vector<std::string> key_names() {
  std::vector<std::string> names;
  for_each_field<S>([&](const auto& fld) { names.emplace_back(fld.name); });
  return names;
}

// The member types config.hpp may use; anything else would be read or printed wrongly.
template <class M>
inline constexpr bool is_config_value = std::is_same_v<M, std::int64_t> || std::is_same_v<M, std::uint64_t> ||
                                        std::is_same_v<M, double> || std::is_same_v<M, bool> ||
                                        std::is_same_v<M, std::string>;
#define TMOE_CONFIG_VALUE_CHECK(M)                                                            \
  static_assert(is_config_value<M>, "tmoe: config field of a type the YAML loader cannot read; " \
                                    "use std::int64_t, std::uint64_t, double, bool or std::string")

// Short type names for --help, and the "expected ..." part of a type error.
template <class M>
constexpr const char* type_name() {
  TMOE_CONFIG_VALUE_CHECK(M);
  if constexpr (std::is_same_v<M, std::int64_t>) return "integer";
  else if constexpr (std::is_same_v<M, std::uint64_t>) return "unsigned integer";
  else if constexpr (std::is_same_v<M, double>) return "number";
  else if constexpr (std::is_same_v<M, bool>) return "bool";
  else return "string";
}

template <class M>
std::string expected_value() {
  if constexpr (std::is_integral_v<M> && !std::is_same_v<M, bool>)
    return cat(std::is_signed_v<M> ? "a signed" : "an unsigned", " 64-bit integer in [",
               +std::numeric_limits<M>::min(), ", ", +std::numeric_limits<M>::max(), "]");
  else if constexpr (std::is_same_v<M, double>) return "a finite number, e.g. 0.5 or 3e-4";
  else if constexpr (std::is_same_v<M, bool>) return "a bool: true/false, yes/no or on/off";
  else return cat("a ", type_name<M>());
}

inline std::string lower(std::string_view s) {
  std::string r(s);
  std::transform(r.begin(), r.end(), r.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return r;
}

// The spelling variants YAML 1.1 accepts for a boolean word: lower, Capitalised, UPPER.
inline bool is_bool_word(std::string_view text, std::string_view word) {
  if (text.size() != word.size() || text.empty()) return false;
  std::string cap(word), up(word);
  cap[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(cap[0])));
  std::transform(up.begin(), up.end(), up.begin(), [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return text == word || text == cap || text == up;
}

// Parses `text` into a value of the field's type or throws, naming the key and value.
template <class M>
M parse_value(std::string_view text, const std::string& key, const std::string& where) {
  TMOE_CONFIG_VALUE_CHECK(M);
  auto fail = [&](const std::string& why) -> Error {
    return Error(cat(key, ": '", text, "' ", why), where, expected_value<M>());
  };
  if constexpr (std::is_same_v<M, std::string>) {
    if (const std::size_t bad = ::tmoe::utf8::first_invalid(text); bad != std::string_view::npos)
      throw Error(cat(key, ": byte ", bad + 1, " of the value is not valid UTF-8"), where,
                  "UTF-8 text (a config is YAML, which holds Unicode text only)");
    return std::string(text);
  } else if (text.empty()) {
    throw Error(cat(key, " has no value"), where, expected_value<M>());
  } else if constexpr (std::is_same_v<M, bool>) {
    for (const char* t : {"true", "yes", "on"})
      if (is_bool_word(text, t)) return true;
    for (const char* f : {"false", "no", "off"})
      if (is_bool_word(text, f)) return false;
    throw fail("is not a bool");
  } else {
    // from_chars takes no leading '+', which a user may reasonably write.
    std::string_view digits = text;
    if (digits.size() > 1 && digits[0] == '+' && digits[1] != '-' && digits[1] != '+') digits.remove_prefix(1);
    if constexpr (std::is_unsigned_v<M>)
      if (digits.size() > 1 && digits[0] == '-' && std::isdigit(static_cast<unsigned char>(digits[1])))
        throw fail("is negative");
    M value{};
    const char* end = digits.data() + digits.size();
    std::from_chars_result r;
    if constexpr (std::is_same_v<M, double>) r = std::from_chars(digits.data(), end, value, std::chars_format::general);
    else r = std::from_chars(digits.data(), end, value, 10);
    if (r.ec == std::errc::result_out_of_range) throw fail("is out of range");
    if (r.ec != std::errc() || r.ptr != end) throw fail(cat("is not ", std::is_same_v<M, double> ? "a number" : "an integer"));
    if constexpr (std::is_same_v<M, double>)
      if (!std::isfinite(value)) throw fail("is not finite");
    return value;
  }
}

// Optimal-string-alignment distance (Levenshtein plus adjacent swaps, so "stpes" is one
// edit from "steps"), case-insensitive.
inline std::size_t edit_distance(std::string_view a_in, std::string_view b_in) {
  const std::string a = lower(a_in), b = lower(b_in);
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i)
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t sub = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + sub});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

inline std::string initials(std::string_view s) {
  std::string r;
  for (std::size_t i = 0; i < s.size(); ++i)
    if (s[i] != '_' && (i == 0 || s[i - 1] == '_')) r += static_cast<char>(std::tolower(static_cast<unsigned char>(s[i])));
  return r;
}

// The known name the user most likely meant, or nothing when no name is close: a wrong
// suggestion sends the user hunting, so each rule only fires when it is unambiguous.
//  1. small edit distance (typos: "stpes", "dmodel", "n_expert");
//  2. word initials ("learning_rate" -> "lr"), since our keys abbreviate common names;
//  3. one name a prefix of the other ("warmup" -> "warmup_fraction",
//     "seq_len_max" -> "seq_len"), at least 3 characters long.
inline std::optional<std::string> closest_name(std::string_view wanted, const std::vector<std::string>& known) {
  if (wanted.empty()) return std::nullopt;
  std::optional<std::string> best;
  std::size_t best_d = std::numeric_limits<std::size_t>::max();
  for (const auto& k : known) {
    const std::size_t d = edit_distance(wanted, k);
    if (d < best_d) best_d = d, best = k;
  }
  if (best && best_d <= std::max<std::size_t>(1, std::max(wanted.size(), best->size()) / 3)) return best;

  auto unique = [&](auto&& pred) -> std::optional<std::string> {
    std::optional<std::string> hit;
    for (const auto& k : known)
      if (pred(k)) {
        if (hit) return std::nullopt;
        hit = k;
      }
    return hit;
  };
  const std::string w = lower(wanted);
  if (auto hit = unique([&](const std::string& k) {
        return (w.find('_') != std::string::npos && initials(w) == lower(k)) ||
               (k.find('_') != std::string::npos && initials(k) == w);
      }))
    return hit;
  return unique([&](const std::string& k) {
    const std::string lk = lower(k);
    const std::string_view shorter = w.size() < lk.size() ? std::string_view(w) : std::string_view(lk);
    const std::string_view longer = w.size() < lk.size() ? std::string_view(lk) : std::string_view(w);
    return shorter.size() >= 3 && longer.substr(0, shorter.size()) == shorter;
  });
}

inline std::string join(const std::vector<std::string>& names) {
  std::string r;
  for (const auto& n : names) r += (r.empty() ? "" : ", ") + n;
  return r;
}

// A name that is not a section: a key written at the top level (`d_model: 3`) points to
// its section, anything else to the nearest section name.
[[noreturn]] inline void throw_unknown_section(std::string_view section, const std::string& where) {
  const auto known = section_names();
  std::string what = cat("unknown section '", section, "'");
  std::optional<std::string> hint;
  const Config cfg;
  for_each_section(cfg, [&](const char* name, const auto& sec) {
    using S = std::remove_cvref_t<decltype(sec)>;
    for (const auto& k : key_names<S>())
      if (!hint && k == section) hint = cat(name, ".", k);
  });
  if (!hint) hint = closest_name(section, known);
  if (hint) what += cat("; did you mean '", *hint, "'?");
  throw Error(what, where, cat("one of the sections ", join(known)));
}

// A key absent from its section: first look for the same key in another section (a user
// who writes `model.lr` meant `train.lr`), then for a near spelling in this one.
template <class S>
[[noreturn]] void throw_unknown_key(std::string_view section, std::string_view key, const std::string& where) {
  std::string what = cat("unknown key '", section, ".", key, "'");
  std::optional<std::string> hint;
  const Config cfg;
  for_each_section(cfg, [&](const char* other, const auto& sec) {
    using Other = std::remove_cvref_t<decltype(sec)>;
    if (!hint && other != section)
      for (const auto& k : key_names<Other>())
        if (k == key) hint = cat(other, ".", k);
  });
  if (!hint)
    if (auto k = closest_name(key, key_names<S>())) hint = cat(section, ".", *k);
  if (hint) what += cat("; did you mean '", *hint, "'?");
  throw Error(what, where, cat("a key of section '", section, "'; --help lists them"));
}

// Throws the unknown-section or unknown-key error unless `section.key` names a field.
inline void require_field(std::string_view section, std::string_view key, const std::string& where) {
  bool section_found = false;
  const Config cfg;
  for_each_section(cfg, [&](const char* name, const auto& sec) {
    using S = std::remove_cvref_t<decltype(sec)>;
    if (name != section) return;
    section_found = true;
    const auto keys = key_names<S>();
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) throw_unknown_key<S>(section, key, where);
  });
  if (!section_found) throw_unknown_section(section, where);
}

inline bool is_section(std::string_view section) {
  const auto names = section_names();
  return std::find(names.begin(), names.end(), section) != names.end();
}

// Sets `section.key` from text, or throws naming the key, the value and the expected type.
inline void set_field(Config& cfg, std::string_view section, std::string_view key, std::string_view text,
                      const std::string& where) {
  require_field(section, key, where);
  for_each_section(cfg, [&](const char* name, auto& sec) {
    using S = std::remove_cvref_t<decltype(sec)>;
    if (name != section) return;
    for_each_field<S>([&](const auto& fld) {
      using M = std::remove_cvref_t<decltype(sec.*fld.member)>;
      if (key == fld.name) sec.*fld.member = parse_value<M>(text, cat(section, ".", key), where);
    });
  });
}

inline const char* node_kind(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Sequence: return "a sequence";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Null: return "empty";
    default: return "a scalar";
  }
}

// Parse events, ignored but for where the second document starts (load_config_text).
struct DocumentCounter : YAML::EventHandler {
  int started = 0;
  YAML::Mark second = YAML::Mark::null_mark();
  void OnDocumentStart(const YAML::Mark& mark) override {
    if (++started == 2) second = mark;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

inline std::string file_where(const std::string& path, const YAML::Mark& mark) {
  if (mark.is_null()) return path;
  return cat(path, ":", mark.line + 1, ":", mark.column + 1);
}

// The one YAML document in `text` (null if there is none), or an error naming `path`.
inline YAML::Node load_one_document(const std::string& text, const std::string& path) {
  try {
    // A second document would be ignored by a reader that loads only the first. They are
    // counted first, stopping at two, instead of using YAML::LoadAll: on text after a
    // top-level flow collection (`{a: 1},`) yaml-cpp 0.7 and 0.8 return an empty document
    // per call forever without advancing, and LoadAll allocates until memory runs out
    // (jbeder/yaml-cpp#1040).
    std::istringstream in(text);
    YAML::Parser parser(in);
    DocumentCounter counter;
    int documents = 0;
    while (documents < 2 && parser.HandleNextDocument(counter)) ++documents;
    if (documents > 1)
      throw Error("file holds 2 YAML documents or more; the second starts here (after '---', or with text "
                  "past the end of the first)",
                  file_where(path, counter.second), "one document");
    return documents == 1 ? YAML::Load(text) : YAML::Node();
  } catch (const YAML::ParserException& e) {
    throw Error(cat("YAML syntax error: ", e.msg), file_where(path, e.mark), "a valid YAML document");
  } catch (const YAML::Exception& e) {
    throw Error(cat("YAML error: ", e.what()), path, "a valid YAML document");
  }
}

inline std::string read_file(const std::string& path) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (st.type() == std::filesystem::file_type::not_found)
    throw Error("config file does not exist", path, "a readable YAML file");
  if (ec) throw Error(cat("config file cannot be accessed: ", ec.message()), path, "a readable YAML file");
  if (std::filesystem::is_directory(st))
    throw Error("config path is a directory", path, "a readable YAML file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(cat("config file cannot be opened: ", std::strerror(errno)), path, "a readable YAML file");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw Error(cat("config file cannot be read: ", std::strerror(errno)), path, "a readable YAML file");
  return text.str();
}

template <class M>
std::string format_value(const M& v) {
  TMOE_CONFIG_VALUE_CHECK(M);
  if constexpr (std::is_same_v<M, bool>) {
    return v ? "true" : "false";
  } else if constexpr (std::is_same_v<M, std::string>) {
    return v;
  } else {
    // Shortest text that reads back to the same bits.
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    std::string s(buf, r.ptr);
    // Keep a float looking like a float to other YAML readers (10000 -> 10000.0).
    if constexpr (std::is_same_v<M, double>)
      if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
    return s;
  }
}

}  // namespace detail

// Reads a YAML file of the form
//   model: {d_model: 128, ...}
//   train: {lr: 0.001, ...}
//   data:  {corpus: ...}
// on top of `base`; absent sections and keys keep base's values.
// load_config_text parses YAML already in memory; `path` only names it in errors (a
// checkpoint's state file stores its config this way).
inline Config load_config_text(const std::string& text, const std::string& path, Config base = {}) {
  using detail::cat;
  const YAML::Node root = detail::load_one_document(text, path);
  if (root.IsNull()) return base;  // an empty file (or only comments) changes nothing
  if (!root.IsMap())
    throw Error(cat("the top level is ", detail::node_kind(root)), detail::file_where(path, root.Mark()),
                cat("a mapping of the sections ", detail::join(detail::section_names())));

  Config cfg = base;  // filled on a copy, so a failure leaves nothing half-applied
  std::set<std::string> seen_sections;
  // Nodes are copied out of the entries: yaml-cpp's iterators hand out temporaries, and
  // a reference into one dangles.
  for (const auto& section_entry : root) {
    const YAML::Node sec_key = section_entry.first;
    const YAML::Node sec_val = section_entry.second;
    const std::string sec_where = detail::file_where(path, sec_key.Mark());
    if (!sec_key.IsScalar())
      throw Error(cat("a section name is ", detail::node_kind(sec_key)), sec_where, "a plain name");
    const std::string section = sec_key.Scalar();
    if (!seen_sections.insert(section).second)
      throw Error(cat("section '", section, "' appears twice"), sec_where, "each section once");
    if (!detail::is_section(section)) detail::throw_unknown_section(section, sec_where);
    if (sec_val.IsNull()) continue;  // `train:` with nothing under it sets nothing
    if (!sec_val.IsMap())
      throw Error(cat("section '", section, "' is ", detail::node_kind(sec_val)),
                  detail::file_where(path, sec_val.Mark()), "a mapping of key: value");

    std::set<std::string> seen_keys;
    for (const auto& entry : sec_val) {
      const YAML::Node key_node = entry.first;
      const YAML::Node value = entry.second;
      const std::string key_where = detail::file_where(path, key_node.Mark());
      if (!key_node.IsScalar())
        throw Error(cat("a key in section '", section, "' is ", detail::node_kind(key_node)), key_where,
                    "a plain name");
      const std::string key = key_node.Scalar();
      detail::require_field(section, key, key_where);
      if (!seen_keys.insert(key).second) throw Error(cat(section, ".", key, " is set twice"), key_where, "each key once");
      if (value.IsNull()) {
        // `key:` or `key: ~` is the empty string for a string field and "no value" for the
        // rest. yaml-cpp marks a missing value on the next line, so point at the key.
        detail::set_field(cfg, section, key, "", key_where);
      } else if (!value.IsScalar()) {
        throw Error(cat(section, ".", key, " is ", detail::node_kind(value)), detail::file_where(path, value.Mark()),
                    "a single value");
      } else {
        detail::set_field(cfg, section, key, value.Scalar(), detail::file_where(path, value.Mark()));
      }
    }
  }
  return cfg;
}

inline Config load_config_file(const std::string& path, Config base = {}) {
  return load_config_text(detail::read_file(path), path, std::move(base));
}

// Applies one `section.key=value` (or `--section.key=value`) argument. The value is taken
// verbatim, not parsed as YAML. On error `cfg` is unchanged.
inline void apply_override(Config& cfg, const std::string& arg) {
  using detail::cat;
  const std::string where = "command line";
  std::string_view body = arg;
  if (body.starts_with("--")) body.remove_prefix(2);
  const auto eq = body.find('=');
  if (eq == std::string_view::npos)
    throw Error(cat("argument '", arg, "' is not an override"), where,
                "section.key=value; --help lists the keys");
  const std::string_view name = body.substr(0, eq);
  const std::string_view value = body.substr(eq + 1);
  const auto dot = name.find('.');
  if (dot == std::string_view::npos) {
    // A bare key: point at the section that has it, if exactly one does.
    std::string what = cat("override '", arg, "' names no section");
    std::vector<std::string> owners;
    detail::for_each_section(std::as_const(cfg), [&](const char* section, const auto& sec) {
      using S = std::remove_cvref_t<decltype(sec)>;
      for (const auto& k : detail::key_names<S>())
        if (k == name) owners.push_back(cat(section, ".", k));
    });
    if (owners.size() == 1) what += cat("; did you mean '", owners[0], "=", value, "'?");
    throw Error(what, where, "section.key=value");
  }
  const std::string_view section = name.substr(0, dot);
  const std::string_view key = name.substr(dot + 1);
  Config updated = cfg;
  detail::set_field(updated, section, key, value, where);
  cfg = std::move(updated);
}

// `base` (the defaults, or a program's preset defaults), then `--config FILE` /
// `--config=FILE` if given (wherever it stands), then every other argument as an override,
// left to right; validated at the end unless `validate` is false (a first pass that only
// reads which preset to use). argv[0] is the program name. `--help` is the caller's
// business: handle it before calling this.
inline Config load_config(int argc, const char* const* argv, Config base = {}, bool validate = true) {
  using detail::cat;
  const std::string where = "command line";
  std::optional<std::string> config_path;
  std::vector<std::string> overrides;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    std::optional<std::string> path;
    if (arg == "--config") {
      if (i + 1 >= argc) throw Error("--config needs a file name", where, "--config FILE or --config=FILE");
      path = argv[++i];
    } else if (arg.starts_with("--config=")) {
      path = arg.substr(std::string_view("--config=").size());
    } else {
      overrides.push_back(arg);
      continue;
    }
    if (path->empty()) throw Error("--config is given an empty file name", where, "--config FILE or --config=FILE");
    // Layering several files would make the order of precedence a guess; one is enough
    // with overrides on top.
    if (config_path) throw Error("--config is given twice", where, "at most one --config FILE");
    config_path = std::move(path);
  }
  Config cfg = config_path ? load_config_file(*config_path, std::move(base)) : std::move(base);
  for (const auto& o : overrides) apply_override(cfg, o);
  if (validate) cfg.validate();
  return cfg;
}

// Every field as YAML, with its help text as a comment; load_config_file reads it back to
// the same values (doubles are written in their shortest exact form).
inline std::string to_yaml(const Config& cfg) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  detail::for_each_section(cfg, [&](const char* section, const auto& sec) {
    using S = std::remove_cvref_t<decltype(sec)>;
    out << YAML::Key << section << YAML::Value << YAML::BeginMap;
    detail::for_each_field<S>([&](const auto& fld) {
      using M = std::remove_cvref_t<decltype(sec.*fld.member)>;
      out << YAML::Key << fld.name << YAML::Value;
      // Quote strings always: a plain `~`, `null` or empty value would read back as null.
      if constexpr (std::is_same_v<M, std::string>) out << YAML::DoubleQuoted;
      out << detail::format_value(sec.*fld.member) << YAML::Comment(fld.help);
    });
    out << YAML::EndMap;
  });
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

// One line per key, `section.key  (type)  help`, columns aligned, for a --help text.
inline std::string describe_fields() {
  struct Line {
    std::string key, type, help;
  };
  std::vector<Line> lines;
  const Config cfg;
  detail::for_each_section(cfg, [&](const char* section, const auto& sec) {
    using S = std::remove_cvref_t<decltype(sec)>;
    detail::for_each_field<S>([&](const auto& fld) {
      using M = std::remove_cvref_t<decltype(sec.*fld.member)>;
      lines.push_back({detail::cat(section, ".", fld.name), detail::cat("(", detail::type_name<M>(), ")"), fld.help});
    });
  });
  std::size_t key_w = 0, type_w = 0;
  for (const auto& l : lines) key_w = std::max(key_w, l.key.size()), type_w = std::max(type_w, l.type.size());
  std::string r;
  for (const auto& l : lines)
    r += l.key + std::string(key_w - l.key.size() + 2, ' ') + l.type + std::string(type_w - l.type.size() + 2, ' ') +
         l.help + "\n";
  return r;
}

}  // namespace tmoe::io

#undef TMOE_CONFIG_VALUE_CHECK
