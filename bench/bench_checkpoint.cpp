// Checkpoint cost at the reference shape (the example's default model): size on disk, save
// time (write + fsync + manifest + commit), and resume time (manifest checksums + parse +
// load), each the median of several repetitions; plus the raw xxh64 rate that bounds the
// verification. Usage: bench_checkpoint [--reps N] [--dir PATH] [key=value ...]
// The directory should be on the disk a real run would use (default: ./bench_ckpt).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "tmoe/io/yaml_config.hpp"
#include "tmoe/tmoe.hpp"
#include "tmoe/train/checkpointing.hpp"

using namespace tmoe;
using Clock = std::chrono::steady_clock;

namespace {
using Block = TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, TopK>>;
using Model = DecoderLM<Block, RmsNorm>;
using Train = Trainer<Model, AdamW, Fp32, Serial, backend::Cpu>;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  int reps = 7;
  std::string dir = "bench_ckpt";
  std::vector<const char*> overrides{argv[0]};
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--dir") && i + 1 < argc) dir = argv[++i];
    else overrides.push_back(argv[i]);
  }
  try {
    const Config cfg = io::load_config(static_cast<int>(overrides.size()), overrides.data());  // defaults = reference shape
    namespace fs = std::filesystem;
    fs::remove_all(dir);
    Train trainer(cfg);
    const nlohmann::json data = {{"fingerprint", 1}};
    io::CheckpointDir ckpt(dir, 2);
    std::vector<double> save_s, load_s;
    std::uint64_t bytes = 0;
    for (int r = 0; r < reps; ++r) {
      trainer.set_step(r + 1);
      auto t0 = Clock::now();
      const std::string folder = save_checkpoint(ckpt, trainer, data);
      save_s.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      bytes = 0;
      for (const auto& e : fs::directory_iterator(folder)) bytes += e.file_size();
      Train fresh(cfg);
      t0 = Clock::now();
      const auto info = resume_checkpoint(ckpt, fresh, data);
      load_s.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      if (!info || info->step != r + 1) throw Error("resume found the wrong step", dir);
    }
    std::vector<char> buf(std::size_t{256} << 20, 'x');
    const auto t0 = Clock::now();
    volatile std::uint64_t h = xxh64(buf.data(), buf.size());
    (void)h;
    const double hash_gbs = static_cast<double>(buf.size()) / 1e9 / std::chrono::duration<double>(Clock::now() - t0).count();
    const auto params = trainer.model().registry().count();
    std::printf("reference model: %lld parameters; checkpoint %.2f MB (params + 2 AdamW moments, F32)\n",
                static_cast<long long>(params), static_cast<double>(bytes) / 1e6);
    std::printf("save   median %.3f s over %d (%.0f MB/s incl. fsync and manifest)\n", median(save_s), reps,
                static_cast<double>(bytes) / 1e6 / median(save_s));
    std::printf("resume median %.3f s over %d (%.0f MB/s incl. checksums)\n", median(load_s), reps,
                static_cast<double>(bytes) / 1e6 / median(load_s));
    std::printf("xxh64 %.2f GB/s on one core\n", hash_gbs);
    std::printf("{\"bench\": \"checkpoint\", \"parameters\": %lld, \"bytes\": %llu, \"save_s\": %.4f, \"resume_s\": %.4f, "
                "\"xxh64_gbs\": %.3f}\n",
                static_cast<long long>(params), static_cast<unsigned long long>(bytes), median(save_s), median(load_s),
                hash_gbs);
    fs::remove_all(dir);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  return 0;
}
