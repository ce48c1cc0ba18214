// Writes the seed corpus of the fuzz targets: valid inputs made by tmoe's own writers, so
// that the fuzzer starts from files that get past the first checks. The output is
// deterministic and committed under tests/fuzz/corpus/; rerun after a format change:
//   g++ -std=c++20 -Iinclude tests/fuzz/make_seeds.cpp -lyaml-cpp -o /tmp/make_seeds
//   /tmp/make_seeds tests/fuzz/corpus
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tmoe/data/shards.hpp"
#include "tmoe/io/safetensors.hpp"
#include "tmoe/io/yaml_config.hpp"

namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void put(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << bytes;
  std::printf("%s (%zu bytes)\n", p.c_str(), bytes.size());
}

// A shard of `tokens` (i * 37 + 11 mod vocab), as TokenShard reads it.
std::string shard(const fs::path& tmp, std::uint64_t vocab, std::size_t tokens) {
  const fs::path p = tmp / "shard.tok";
  tmoe::data::ShardWriter w(p.string(), vocab, vocab == 256 ? 0 : 0x1234abcd);
  std::vector<std::int32_t> t(tokens);
  for (std::size_t i = 0; i < tokens; ++i) t[i] = static_cast<std::int32_t>((i * 37 + 11) % vocab);
  w.append(t);
  w.end_document();
  w.commit();
  return slurp(p);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const fs::path out = argv[1];
  const fs::path tmp = fs::temp_directory_path() / ("tmoe_make_seeds_" + std::to_string(::getpid()));
  fs::create_directories(tmp);

  // safetensors: every dtype, a scalar, a zero-size tensor, metadata; an empty file; one tensor.
  {
    const std::vector<float> f32 = {1.5f, -2.0f, 0.0f, 3.25f, 1e-3f, -7.0f};
    const std::vector<double> f64 = {1.0, -0.5};
    const std::vector<std::int32_t> i32 = {7, -8, 9};
    const std::vector<std::int64_t> i64 = {1, -(std::int64_t{1} << 40)};
    const std::vector<std::uint16_t> bf16 = {0x3f80, 0xc000, 0x7f80, 0x0001};
    const std::vector<std::uint16_t> f16 = {0x3c00, 0x0001, 0xfc00, 0x7e00};
    const std::vector<std::uint8_t> u8 = {0, 1, 255};
    const float scalar = 42.0f;
    const fs::path p = tmp / "a.safetensors";
    tmoe::io::write_safetensors(p.string(),
                                {{"layers.0.w", "F32", {2, 3}, f32.data()},
                                 {"f64", "F64", {2}, f64.data()},
                                 {"i32", "I32", {3}, i32.data()},
                                 {"i64", "I64", {1, 2}, i64.data()},
                                 {"bf16", "BF16", {2, 2}, bf16.data()},
                                 {"f16", "F16", {4}, f16.data()},
                                 {"u8", "U8", {3}, u8.data()},
                                 {"scalar", "F32", {}, &scalar},
                                 {"empty", "F32", {0, 5}, nullptr}},
                                {{"step", "3"}, {"format", "pt"}});
    put(out / "safetensors" / "all_dtypes.safetensors", slurp(p));
    tmoe::io::write_safetensors(p.string(), {});
    put(out / "safetensors" / "no_tensors.safetensors", slurp(p));
    tmoe::io::write_safetensors(p.string(), {{"w", "F32", {3, 2}, f32.data()}}, {{"k", "v"}});
    put(out / "safetensors" / "one_tensor.safetensors", slurp(p));
  }

  // safetensors, crafted: files tmoe's writer never makes, each rejected by one check
  // (overlap, gap, negative dimension, bad metadata, repeated name), so that every
  // rejection is replayed even before the fuzzer has found it.
  {
    auto craft = [&](const char* name, const std::string& header, std::size_t data) {
      std::string b(8, '\0');
      for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
      put(out / "safetensors" / name, b + header + std::string(data, '\x01'));
    };
    craft("overlap.safetensors",
          R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})", 6);
    craft("gap.safetensors",
          R"({"a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"I32","shape":[1],"data_offsets":[8,12]}})", 12);
    craft("negative_dim.safetensors", R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})", 0);
    craft("metadata_not_string.safetensors", R"({"__metadata__":{"k":1},"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})", 4);
    craft("repeated_name.safetensors",
          R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", 2);
  }

  // shards: mode byte (see fuzz_shard_header.cpp) + a file written by ShardWriter, for
  // each token width; the same with the checksum fix-ups on; a claimed-size variant.
  {
    const std::string u8 = shard(tmp, 256, 40), u16 = shard(tmp, 1000, 24), u32 = shard(tmp, 100000, 12);
    const std::string none = shard(tmp, 50, 0);
    put(out / "shard_header" / "u8.shard", std::string(1, '\0') + u8);
    put(out / "shard_header" / "u16.shard", std::string(1, '\0') + u16);
    put(out / "shard_header" / "u32.shard", std::string(1, '\0') + u32);
    put(out / "shard_header" / "empty.shard", std::string(1, '\0') + none);
    put(out / "shard_header" / "fixup_u16.shard", std::string(1, '\3') + u16);
    put(out / "shard_header" / "fixup_u32.shard", std::string(1, '\3') + u32);
    std::string claimed = std::string(1, '\5') + u16.substr(0, tmoe::data::kShardHeaderBytes);
    unsigned char size[8];
    tmoe::data::detail::put_u64(size, u16.size());
    claimed.append(reinterpret_cast<const char*>(size), 8);
    put(out / "shard_header" / "claimed_size.shard", claimed);
  }

  // config: every key (to_yaml of the defaults), the example's style, flow style with
  // overrides after a NUL byte.
  {
    put(out / "config" / "defaults.yaml", tmoe::io::to_yaml(tmoe::Config{}));
    put(out / "config" / "example.yaml",
        "# a small run\nmodel:\n  vocab_size: 256\n  d_model: 64\n  n_heads: 4\n  n_experts: 4\n  top_k: 2\n"
        "  router_renormalize: true\n  aux_loss_weight: 0.01\ntrain:\n  seed: 7\n  steps: 100\n  lr: 3e-3\n"
        "  grad_clip: 1.0\n  metrics_file: ~\ndata:\n  corpus: /usr/share/games/fortunes\n  val_fraction: 0.05\n"
        "checkpoint:\n  dir: runs/ckpt\n  interval: 50\n  keep: 2\n  resume: auto\n  on_signal: yes\n");
    put(out / "config" / "flow_with_overrides.yaml",
        std::string("{model: {d_model: 128, n_heads: 4, n_layers: 2}, train: {lr: 1e-4, steps: +10}, "
                    "checkpoint: {dir: \"/tmp/c\", resume: required}}\n") +
            '\0' + "train.seed=18446744073709551615\n--model.top_k=3\ndata.corpus=a: b\ncheckpoint.on_signal=OFF\n");
  }
  {
    put(out / "config" / "value_sequence.yaml", "train:\n  lr: [1, 2]\n");
    put(out / "config" / "alias_and_tags.yaml",
        "model: &m {d_model: 64}\ncheckpoint: *m\ndata:\n  corpus: !!str 12\n  shards: |\n    a\n    b\n");
    put(out / "config" / "bad_values.yaml",
        "model:\n  d_model: 0x40\ntrain:\n  seed: -1\n  lr: .inf\n  steps:\n  threads: 1e3\n");
  }
  fs::remove_all(tmp);
  return 0;
}
