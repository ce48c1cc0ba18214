#define BOOST_TEST_MODULE config
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../support/expect_error.hpp"
#include "../support/files.hpp"
#include "tmoe/io/yaml_config.hpp"

using tmoe::Config;
using tmoe::test::expect_error;
// A fresh folder per test case for the YAML files it writes (real files, DESIGN.md
// principle 8), removed afterwards.
using tmoe::test::TempDir;

namespace {

// Calls f(section_name, section) for each section. Written out here rather than borrowed
// from the code under test, so the tests do not trust its walk.
template <class Cfg, class F>
void for_each_section(Cfg& cfg, F&& f) {
  f("model", cfg.model);
  f("train", cfg.train);
  f("data", cfg.data);
  f("checkpoint", cfg.checkpoint);
  f("parallel", cfg.parallel);
}

// Calls f(key, value&) for every field of every section.
template <class Cfg, class F>
void for_each_value(Cfg& cfg, F&& f) {
  for_each_section(cfg, [&](const char* section, auto& sec) {
    using S = std::remove_cvref_t<decltype(sec)>;
    std::apply([&](const auto&... fld) { (f(std::string(section) + "." + fld.name, sec.*fld.member), ...); },
               S::fields());
  });
}

std::size_t field_count() {
  std::size_t n = 0;
  const Config cfg;
  for_each_value(cfg, [&](const std::string&, const auto&) { ++n; });
  return n;
}

// Every field of a equals the same field of b, bit for bit for doubles.
void check_same(const Config& a, const Config& b) {
  auto compare = [](const char* section, const auto& sa, const auto& sb) {
    using S = std::remove_cvref_t<decltype(sa)>;
    auto check = [&](const auto& fld) {
      BOOST_CHECK_MESSAGE(sa.*fld.member == sb.*fld.member, section << "." << fld.name << " differs");
    };
    std::apply([&](const auto&... fld) { (check(fld), ...); }, S::fields());
  };
  compare("model", a.model, b.model);
  compare("train", a.train, b.train);
  compare("checkpoint", a.checkpoint, b.checkpoint);
  compare("data", a.data, b.data);
}

std::vector<const char*> args(std::initializer_list<const char*> a) { return std::vector<const char*>(a); }

}  // namespace

BOOST_AUTO_TEST_CASE(defaults_come_from_the_structs) {
  const auto argv = args({"prog"});
  const Config loaded = tmoe::io::load_config(static_cast<int>(argv.size()), argv.data());
  check_same(loaded, Config{});
  BOOST_TEST(loaded.model.d_model == 256);
  BOOST_TEST(loaded.model.top_k == 2);
  BOOST_TEST(loaded.model.tie_embeddings);
  BOOST_TEST(loaded.train.seed == 1234u);
  BOOST_TEST(loaded.train.lr == 3e-3);
  BOOST_TEST(loaded.train.metrics_file.empty());
  BOOST_TEST(loaded.data.shards.empty());
  BOOST_TEST(loaded.checkpoint.interval == 1000);
  BOOST_CHECK_NO_THROW(loaded.validate());
  check_same(tmoe::io::load_config(0, nullptr), Config{});
}

BOOST_AUTO_TEST_CASE(file_sets_fields_of_every_type) {
  TempDir tmp;
  const std::string path = tmp.write("run.yaml", R"(# a run
model:
  d_model: 128
  n_heads: 4
  n_experts: +16
  top_k: 1
  tie_embeddings: false
  linear_bias: yes
  gelu_exact: On
  router_renormalize: NO
  aux_loss_weight: 2.5e-2
  rope_base: 500000
train:
  seed: 18446744073709551615
  threads: -1          # loads; validate() is what rejects it
  lr: 0.0003
  metrics_file: "runs/metrics.jsonl"
  save_weights:
  min_lr_ratio: '0.1'
data:
  shards: /data/my shards
checkpoint:
  keep: 5
  resume: never
)");
  Config base;
  base.train.steps = 77;
  base.train.save_weights = "old.safetensors";
  const Config cfg = tmoe::io::load_config_file(path, base);
  BOOST_TEST(cfg.model.d_model == 128);
  BOOST_TEST(cfg.model.n_heads == 4);
  BOOST_TEST(cfg.model.n_experts == 16);
  BOOST_TEST(cfg.model.top_k == 1);
  BOOST_TEST(!cfg.model.tie_embeddings);
  BOOST_TEST(cfg.model.linear_bias);
  BOOST_TEST(cfg.model.gelu_exact);
  BOOST_TEST(!cfg.model.router_renormalize);
  BOOST_TEST(cfg.model.aux_loss_weight == 2.5e-2);
  BOOST_TEST(cfg.model.rope_base == 500000.0);
  BOOST_TEST(cfg.train.seed == std::numeric_limits<std::uint64_t>::max());
  BOOST_TEST(cfg.train.threads == -1);
  BOOST_TEST(cfg.train.lr == 0.0003);
  BOOST_TEST(cfg.train.metrics_file == "runs/metrics.jsonl");
  BOOST_TEST(cfg.train.save_weights.empty());  // an empty value clears a string
  BOOST_TEST(cfg.data.shards == "/data/my shards");
  BOOST_TEST(cfg.train.min_lr_ratio == 0.1);
  BOOST_TEST(cfg.checkpoint.keep == 5);
  BOOST_TEST(cfg.checkpoint.resume == "never");
  // Keys the file does not mention keep the base's values.
  BOOST_TEST(cfg.train.steps == 77);
  BOOST_TEST(cfg.model.vocab_size == Config{}.model.vocab_size);
  BOOST_TEST(cfg.train.beta2 == Config{}.train.beta2);
}

BOOST_AUTO_TEST_CASE(flow_style_empty_files_and_empty_sections) {
  TempDir tmp;
  const Config flow = tmoe::io::load_config_file(tmp.write("flow.yaml", "{model: {top_k: 3}, train: {steps: 5}}\n"));
  BOOST_TEST(flow.model.top_k == 3);
  BOOST_TEST(flow.train.steps == 5);

  Config base;
  base.train.steps = 42;
  check_same(tmoe::io::load_config_file(tmp.write("empty.yaml", ""), base), base);
  check_same(tmoe::io::load_config_file(tmp.write("comments.yaml", "# nothing set\n\n"), base), base);
  check_same(tmoe::io::load_config_file(tmp.write("sections.yaml", "model:\ntrain: {}\ndata:\n"), base), base);
}

BOOST_AUTO_TEST_CASE(overrides_apply_after_the_file_in_order) {
  TempDir tmp;
  const std::string path = tmp.write("base.yaml", "model: {d_model: 128, n_heads: 4}\ntrain: {lr: 0.01, steps: 50}\n");
  for (const std::string flag : {"--config", "--config="}) {
    BOOST_TEST_CONTEXT("flag " << flag) {
      std::vector<std::string> a = {"prog", "train.lr=0.5"};  // before --config, still applied after the file
      if (flag == "--config") {
        a.push_back("--config");
        a.push_back(path);
      } else {
        a.push_back(flag + path);
      }
      for (const char* o : {"--train.lr=0.25", "train.steps=7", "train.steps=9", "data.shards=a=b c"}) a.push_back(o);
      std::vector<const char*> argv;
      for (const auto& s : a) argv.push_back(s.c_str());
      const Config cfg = tmoe::io::load_config(static_cast<int>(argv.size()), argv.data());
      BOOST_TEST(cfg.train.lr == 0.25);        // the last override wins over the earlier one and the file
      BOOST_TEST(cfg.train.steps == 9);
      BOOST_TEST(cfg.model.d_model == 128);    // from the file
      BOOST_TEST(cfg.model.n_heads == 4);
      BOOST_TEST(cfg.data.shards == "a=b c");  // the value is everything after the first '='
    }
  }
}

BOOST_AUTO_TEST_CASE(override_of_every_type) {
  Config cfg;
  tmoe::io::apply_override(cfg, "model.n_layers=12");
  tmoe::io::apply_override(cfg, "--train.seed=18446744073709551615");
  tmoe::io::apply_override(cfg, "train.lr=-1e-3");
  tmoe::io::apply_override(cfg, "model.gelu_exact=on");
  tmoe::io::apply_override(cfg, "model.tie_embeddings=False");
  tmoe::io::apply_override(cfg, "train.metrics_file=out/m.jsonl");
  tmoe::io::apply_override(cfg, "data.shards=");
  tmoe::io::apply_override(cfg, "data.shards=a: b # not yaml");
  BOOST_TEST(cfg.model.n_layers == 12);
  BOOST_TEST(cfg.train.seed == std::numeric_limits<std::uint64_t>::max());
  BOOST_TEST(cfg.train.lr == -1e-3);
  BOOST_TEST(cfg.model.gelu_exact);
  BOOST_TEST(!cfg.model.tie_embeddings);
  BOOST_TEST(cfg.train.metrics_file == "out/m.jsonl");
  BOOST_TEST(cfg.data.shards == "a: b # not yaml");
}

BOOST_AUTO_TEST_CASE(to_yaml_round_trips_every_field) {
  // Move every field off its default, with doubles that have no short decimal form and
  // strings that YAML would otherwise read as null, bool, number, comment or mapping.
  const std::vector<std::string> strings = {"~", "null", "", "true", "123", "# not a comment", "a: b",
                                            "line1\nline2\t\"q\" 'q' \\", "ünïcödé", " padded "};
  for (const auto& text : strings) {
    BOOST_TEST_CONTEXT("string value '" << text << "'") {
      Config cfg;
      for_each_value(cfg, [&](const std::string&, auto& v) {
        using M = std::remove_cvref_t<decltype(v)>;
        if constexpr (std::is_same_v<M, bool>) v = !v;
        else if constexpr (std::is_same_v<M, std::string>) v = text;
        else if constexpr (std::is_same_v<M, double>) v = v * 1.7 + 1.0 / 3.0;
        else if constexpr (std::is_unsigned_v<M>) v = std::numeric_limits<M>::max() - v;
        else v = -3 * v - 7;
      });
      TempDir tmp;
      const std::string yaml = tmoe::io::to_yaml(cfg);
      check_same(tmoe::io::load_config_file(tmp.write("dump.yaml", yaml)), cfg);
    }
  }
  TempDir tmp;
  check_same(tmoe::io::load_config_file(tmp.write("defaults.yaml", tmoe::io::to_yaml(Config{}))), Config{});
}

BOOST_AUTO_TEST_CASE(to_yaml_lists_every_key_with_its_help) {
  const Config defaults;
  const std::string yaml = tmoe::io::to_yaml(defaults);
  for_each_section(defaults, [&](const char* section, const auto& sec) {
    using S = std::remove_cvref_t<decltype(sec)>;
    BOOST_TEST(yaml.find(std::string(section) + ":\n") != std::string::npos, "section " << section);
    auto check = [&](const auto& fld) {
      BOOST_TEST(yaml.find(std::string("  ") + fld.name + ": ") != std::string::npos, "key " << fld.name);
      BOOST_TEST(yaml.find(fld.help) != std::string::npos, "help of " << fld.name);
    };
    std::apply([&](const auto&... fld) { (check(fld), ...); }, S::fields());
  });
}

BOOST_AUTO_TEST_CASE(describe_fields_has_one_line_per_key) {
  const std::string text = tmoe::io::describe_fields();
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  BOOST_TEST(lines.size() == field_count());
  std::size_t i = 0;
  const Config defaults;
  for_each_value(defaults, [&](const std::string& key, const auto&) {
    BOOST_REQUIRE(i < lines.size());
    BOOST_TEST(lines[i].rfind(key + " ", 0) == 0, "line " << i << " '" << lines[i] << "' starts with " << key);
    ++i;
  });
  auto line_of = [&](const std::string& key) {
    for (const auto& l : lines)
      if (l.rfind(key + " ", 0) == 0) return l;
    return std::string();
  };
  BOOST_TEST(line_of("train.lr").find("(number)") != std::string::npos);
  BOOST_TEST(line_of("train.lr").find("peak learning rate") != std::string::npos);
  BOOST_TEST(line_of("train.seed").find("(unsigned integer)") != std::string::npos);
  BOOST_TEST(line_of("model.d_model").find("(integer)") != std::string::npos);
  BOOST_TEST(line_of("model.tie_embeddings").find("(bool)") != std::string::npos);
  BOOST_TEST(line_of("data.shards").find("(string)") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(validate_names_the_field) {
  Config heads;
  heads.model.d_model = 100;
  heads.model.n_heads = 8;
  expect_error([&] { heads.validate(); }, {"model.d_model", "n_heads"});

  Config topk;
  topk.model.top_k = 9;
  expect_error([&] { topk.validate(); }, {"model.top_k", "n_experts"});

  // load_config validates after the overrides.
  const auto argv = args({"prog", "model.top_k=9"});
  expect_error([&] { tmoe::io::load_config(static_cast<int>(argv.size()), argv.data()); }, {"model.top_k"});
  const auto argv2 = args({"prog", "model.d_model=100"});
  expect_error([&] { tmoe::io::load_config(static_cast<int>(argv2.size()), argv2.data()); }, {"model.d_model"});
}
