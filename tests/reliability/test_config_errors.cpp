#define BOOST_TEST_MODULE config_errors
#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <string>
#include <unistd.h>
#include <vector>

#include "../support/expect_error.hpp"
#include "../support/files.hpp"
#include "tmoe/io/yaml_config.hpp"

// Every bad config input must end in a tmoe::Error whose message names the place (file
// with line and column, or "command line"), the key and, for a bad value, the value and
// the expected type (DESIGN.md principle 7).

namespace fs = std::filesystem;
using tmoe::Config;
using tmoe::test::expect_error;
using tmoe::test::TempDir;

namespace {

Config load_args(const std::vector<const char*>& argv) {
  return tmoe::io::load_config(static_cast<int>(argv.size()), argv.data());
}

struct FileCase {
  const char* name;
  const char* yaml;
  std::vector<std::string> present;  // ":L:C" entries are appended to the file's path
  std::vector<std::string> absent = {};
};

void run_file_cases(const std::vector<FileCase>& cases) {
  TempDir tmp;
  for (const auto& c : cases) {
    BOOST_TEST_CONTEXT("case " << c.name) {
      const std::string path = tmp.write(std::string(c.name) + ".yaml", c.yaml);
      std::vector<std::string> present = {path};
      for (const auto& p : c.present) present.push_back(p.rfind(":", 0) == 0 ? path + p : p);
      expect_error([&] { tmoe::io::load_config_file(path); }, present, c.absent);
    }
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(file_missing_or_unreadable) {
  TempDir tmp;
  const std::string missing = (tmp.dir / "nope.yaml").string();
  expect_error([&] { tmoe::io::load_config_file(missing); }, {missing, "does not exist"});
  expect_error([&] { tmoe::io::load_config_file(tmp.dir.string()); }, {tmp.dir.string(), "is a directory"});
  expect_error([&] { load_args({"prog", "--config", missing.c_str()}); }, {missing, "does not exist"});

  // Permission bits do not stop root, so this part only runs for other users.
  if (::geteuid() != 0) {
    const std::string locked = tmp.write("locked.yaml", "train: {lr: 0.1}\n");
    fs::permissions(locked, fs::perms::none);
    expect_error([&] { tmoe::io::load_config_file(locked); }, {locked, "cannot be opened"});
  } else {
    BOOST_TEST_MESSAGE("running as root: unreadable-file check skipped");
  }
}

BOOST_AUTO_TEST_CASE(yaml_syntax_errors_give_line_and_column) {
  run_file_cases({
      {"bad_indent", "train:\n  lr: 0.1\n   steps: 3\n", {"YAML syntax error", ":3:9"}},
      {"open_flow", "train: {lr: 0.1\n", {"YAML syntax error", ":2:1"}},
      {"open_sequence", "model:\n  d_model: [1, 2\n", {"YAML syntax error", ":3:1"}},
  });
}

BOOST_AUTO_TEST_CASE(file_shape_errors) {
  run_file_cases({
      {"top_sequence", "- model\n- train\n", {"top level is a sequence", "model, train, data"}},
      {"top_level_key", "d_model: 3\n", {"unknown section 'd_model'; did you mean 'model.d_model'?", ":1:1"}},
      {"top_plain", "hello\n", {"top level is a scalar"}},
      {"section_scalar", "train: 5\n", {"section 'train' is a scalar", ":1:8"}},
      {"section_sequence", "train:\n  - lr\n", {"section 'train' is a sequence"}},
      {"section_twice", "train: {lr: 0.1}\ntrain: {steps: 3}\n", {"section 'train' appears twice", ":2:1"}},
      {"key_twice", "train:\n  lr: 0.1\n  lr: 0.2\n", {"train.lr is set twice", ":3:3"}},
      {"key_sequence", "train:\n  [a, b]: 1\n", {"a key in section 'train' is a sequence"}},
      {"two_documents", "train: {lr: 0.1}\n---\ntrain: {lr: 0.2}\n", {"2 YAML documents"}},
  });
}

BOOST_AUTO_TEST_CASE(unknown_sections_and_keys_in_a_file) {
  run_file_cases({
      {"section_typo", "trian:\n  lr: 0.1\n", {"unknown section 'trian'; did you mean 'train'?", ":1:1"}},
      {"section_far", "hardware:\n  lr: 0.1\n", {"unknown section 'hardware'", "model, train, data"}, {"did you mean"}},
      {"key_long_name", "train:\n  learning_rate: 0.1\n",
       {"unknown key 'train.learning_rate'; did you mean 'train.lr'?", ":2:3"}},
      {"key_typo", "train:\n  stpes: 10\n", {"unknown key 'train.stpes'; did you mean 'train.steps'?"}},
      {"key_missing_letter", "model:\n  n_expert: 4\n", {"did you mean 'model.n_experts'?"}},
      {"key_prefix", "train:\n  grad_acc: 2\n", {"did you mean 'train.grad_accum'?"}},
      {"key_other_section", "model:\n  lr: 0.1\n", {"unknown key 'model.lr'; did you mean 'train.lr'?"}},
      {"key_far", "train:\n  banana: 1\n", {"unknown key 'train.banana'"}, {"did you mean"}},
      // An unknown key is reported even when its value is a list.
      {"key_unknown_list", "train:\n  milestones: [1, 2]\n", {"unknown key 'train.milestones'"}},
  });
}

BOOST_AUTO_TEST_CASE(wrong_value_types_in_a_file) {
  run_file_cases({
      {"int_word", "train:\n  steps: ten\n", {"train.steps", "'ten'", "is not an integer", "64-bit integer", ":2:10"}},
      {"int_fraction", "train:\n  steps: 1.5\n", {"train.steps", "'1.5'", "is not an integer"}},
      {"int_exponent", "train:\n  steps: 1e3\n", {"train.steps", "'1e3'", "is not an integer"}},
      {"int_hex", "model:\n  d_model: 0x100\n", {"model.d_model", "'0x100'", "is not an integer"}},
      {"int_trailing", "train:\n  steps: 10abc\n", {"train.steps", "'10abc'"}},
      {"int_overflow", "train:\n  steps: 9223372036854775808\n", {"train.steps", "is out of range"}},
      {"int_empty", "train:\n  steps:\n", {"train.steps has no value", ":2:3"}},
      {"int_null", "train:\n  steps: ~\n", {"train.steps has no value"}},
      {"uint_negative", "train:\n  seed: -3\n", {"train.seed", "'-3'", "is negative", "unsigned 64-bit integer"}},
      {"uint_overflow", "train:\n  seed: 18446744073709551616\n", {"train.seed", "is out of range"}},
      {"bool_word", "model:\n  tie_embeddings: maybe\n",
       {"model.tie_embeddings", "'maybe'", "is not a bool", "true/false"}},
      {"bool_digit", "model:\n  tie_embeddings: 1\n", {"model.tie_embeddings", "'1'", "is not a bool"}},
      {"bool_empty", "model:\n  gelu_exact:\n", {"model.gelu_exact has no value"}},
      {"double_word", "train:\n  lr: fast\n", {"train.lr", "'fast'", "is not a number"}},
      {"double_overflow", "train:\n  lr: 1e999\n", {"train.lr", "'1e999'", "is out of range"}},
      {"double_nan", "train:\n  lr: nan\n", {"train.lr", "is not finite"}},
      {"double_inf", "train:\n  lr: -inf\n", {"train.lr", "is not finite"}},
      {"double_yaml_inf", "train:\n  lr: .inf\n", {"train.lr", "'.inf'"}},
      {"double_comma", "train:\n  lr: 0,1\n", {"train.lr", "'0,1'", "is not a number"}},
  });
}

BOOST_AUTO_TEST_CASE(non_scalar_values_in_a_file) {
  run_file_cases({
      {"sequence", "train:\n  steps: [1, 2]\n", {"train.steps is a sequence", "a single value", ":2:10"}},
      {"mapping", "train:\n  steps: {a: 1}\n", {"train.steps is a mapping"}},
      {"block_sequence", "data:\n  shards:\n    - a\n    - b\n", {"data.shards is a sequence"}},
  });
}

BOOST_AUTO_TEST_CASE(override_errors_name_the_command_line) {
  struct Case {
    const char* arg;
    std::vector<std::string> present;
    std::vector<std::string> absent = {};
  };
  const std::vector<Case> cases = {
      {"train.learning_rate=0.1", {"unknown key 'train.learning_rate'; did you mean 'train.lr'?"}},
      {"--trian.lr=0.1", {"unknown section 'trian'; did you mean 'train'?"}},
      {"optim.lr=0.1", {"unknown section 'optim'", "model, train, data"}},
      {"model.lr=0.1", {"did you mean 'train.lr'?"}},
      {"train.banana=1", {"unknown key 'train.banana'"}, {"did you mean"}},
      {"lr=0.1", {"'lr=0.1' names no section; did you mean 'train.lr=0.1'?"}},
      {"train.lr", {"'train.lr' is not an override", "section.key=value"}},
      {"--help", {"'--help' is not an override"}},
      {"train.=1", {"unknown key 'train.'"}},
      {"train.steps=ten", {"train.steps", "'ten'", "is not an integer"}},
      {"train.steps=1.5", {"train.steps", "'1.5'", "is not an integer"}},
      {"train.steps= 5", {"train.steps", "' 5'", "is not an integer"}},
      {"train.steps=", {"train.steps has no value"}},
      {"train.steps=99999999999999999999", {"train.steps", "is out of range"}},
      {"train.seed=-3", {"train.seed", "'-3'", "is negative"}},
      {"model.tie_embeddings=maybe", {"model.tie_embeddings", "'maybe'", "is not a bool"}},
      {"train.lr=1e999", {"train.lr", "is out of range"}},
      {"train.lr=inf", {"train.lr", "is not finite"}},
  };
  for (const auto& c : cases) {
    BOOST_TEST_CONTEXT("argument " << c.arg) {
      std::vector<std::string> present = c.present;
      present.push_back("command line");
      Config cfg;
      expect_error([&] { tmoe::io::apply_override(cfg, c.arg); }, present, c.absent);
      expect_error([&] { load_args({"prog", c.arg}); }, present, c.absent);
    }
  }
}

BOOST_AUTO_TEST_CASE(failed_override_changes_nothing) {
  Config cfg;
  cfg.train.steps = 5;
  BOOST_CHECK_THROW(tmoe::io::apply_override(cfg, "train.steps=1.5"), tmoe::Error);
  BOOST_CHECK_THROW(tmoe::io::apply_override(cfg, "train.steps=99999999999999999999"), tmoe::Error);
  BOOST_TEST(cfg.train.steps == 5);
}

BOOST_AUTO_TEST_CASE(config_flag_errors) {
  TempDir tmp;
  const std::string a = tmp.write("a.yaml", "train: {lr: 0.1}\n");
  const std::string b = tmp.write("b.yaml", "train: {lr: 0.2}\n");
  const std::string flag_a = "--config=" + a, flag_b = "--config=" + b;
  expect_error([&] { load_args({"prog", "--config"}); }, {"command line", "--config needs a file name"});
  expect_error([&] { load_args({"prog", "--config="}); }, {"command line", "--config is given an empty file name"});
  expect_error([&] { load_args({"prog", flag_a.c_str(), flag_b.c_str()}); }, {"command line", "--config is given twice"});
  expect_error([&] { load_args({"prog", "--config", a.c_str(), flag_b.c_str()}); }, {"--config is given twice"});
  // An error inside the file names the file, even when it arrives through --config.
  const std::string bad = tmp.write("bad.yaml", "train:\n  steps: ten\n");
  expect_error([&] { load_args({"prog", "--config", bad.c_str()}); }, {bad + ":2:10", "train.steps", "'ten'"});
}

BOOST_AUTO_TEST_CASE(validation_runs_after_overrides) {
  expect_error([] { load_args({"prog", "model.n_heads=7"}); }, {"model.d_model", "n_heads"});
  expect_error([] { load_args({"prog", "model.top_k=9"}); }, {"model.top_k", "n_experts"});
  expect_error([] { load_args({"prog", "train.seq_len=100000"}); }, {"train.seq_len"});
}

// The parallel section's values are checked when the config is loaded (the grid against
// the world size and the model is checked by ProcessGrid::make; tests/compile and
// tests/mpi cover it).
BOOST_AUTO_TEST_CASE(parallel_section_values) {
  expect_error([&] { load_args({"prog", "parallel.data=-1"}); }, {"parallel.data", "data is -1"});
  expect_error([&] { load_args({"prog", "parallel.expert=0"}); }, {"parallel.expert", "size is 0", "a positive rank count"});
  expect_error([&] { load_args({"prog", "parallel.pipeline=-2"}); }, {"parallel.pipeline", "size is -2"});
  expect_error([&] { load_args({"prog", "parallel.reduction=ring"}); }, {"parallel.reduction", "'ring'", "fixed or native"});
  expect_error([&] { load_args({"prog", "parallel.bucket_mb=0"}); }, {"parallel.bucket_mb", "a positive size in MiB"});
  expect_error([&] { load_args({"prog", "parallel.powersgd_rank=-1"}); }, {"parallel.powersgd_rank", "0 (off) or a rank >= 1"});
}
