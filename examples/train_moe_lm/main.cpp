// train_moe_lm — trains a Mixture-of-Experts decoder LM on token shards prepared by
// tmoe-prep (by default the fortunes of Debian's `fortunes` package), on the CPU or an
// NVIDIA GPU, with checkpoints it can be killed and resumed from.
//
//   train_moe_lm [--backend cpu|cuda|auto] [--config FILE] [section.key=value ...]
//
// model.preset picks the model composition (presets.hpp; one translation unit each); every
// number comes from the config, on top of the preset's defaults.
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "presets.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/io/yaml_config.hpp"
#include "tmoe/parallel/comm/mpi.hpp"
#if defined(TMOE_EXAMPLE_CUDA)
#include <cuda_runtime_api.h>
#endif

using namespace tmoe;
using namespace train_moe_lm;

namespace {

// Whether this build has the CUDA programs and a GPU is visible.
bool gpu_present() {
#if defined(TMOE_EXAMPLE_CUDA)
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
#else
  return false;
#endif
}

int run(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      std::printf("usage: train_moe_lm [--backend cpu|cuda|auto] [--config FILE] [section.key=value ...]\n\n"
                  "--backend: where the model trains; auto (the default) is cuda when this build has the CUDA\n"
                  "programs and a GPU is visible, else cpu.\n"
                  "Trains on the token shards in data.shards (written by tmoe-prep). With checkpoint.dir set,\n"
                  "writes a checkpoint every checkpoint.interval steps, at the end and on SIGTERM/SIGINT, and\n"
                  "resumes from the newest valid one (checkpoint.resume=auto).\n\npresets (model.preset; each a "
                  "compiled composition with its own defaults):\n",
                  "");
      for (const auto& p : presets()) {
        std::string precisions;
        for (const auto& q : programs())
          if (std::string(q.preset) == p.name)
            precisions += (precisions.empty() ? "" : ", ") + std::string(q.precision) +
                          (std::string(q.backend) == "cpu" ? "" : " (" + std::string(q.backend) + ")");
        std::printf("  %-14s %s [train.precision: %s]\n", p.name, p.composition, precisions.c_str());
      }
      std::printf("\nkeys:\n%s", io::describe_fields().c_str());
      return 0;
    }
  // Active learning: --select SPEC [--top N] [--criterion entropy|loss] --out FILE ranks the
  // records of SPEC by the trained model's uncertainty instead of training.
  Options opt;
  std::string& select_spec = opt.select_spec;
  data::ActiveLearningConfig& select = opt.select;
  std::vector<const char*> rest = {argv[0]};
  bool select_options = false;  // --top, --criterion or --out given
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Error(a + " needs a value", "command line", a + " VALUE");
      return argv[++i];
    };
    if (a == "--select") select_spec = value();
    else if (a == "--backend") opt.backend = value();
    else if (a == "--top") select.top_n = io::detail::parse_value<std::int64_t>(value(), "--top", "command line"), select_options = true;
    else if (a == "--criterion") select.criterion = value(), select_options = true;
    else if (a == "--out") select.output = value(), select_options = true;
    else rest.push_back(argv[i]);
  }
  if (select_spec.empty() && select_options)
    throw Error("--top, --criterion and --out belong to --select", "command line", "--select SPEC --out FILE");
  // Two passes: the first reads which preset the config names, the second loads the config
  // again over that preset's defaults (so the file and the command line still win).
  const int argn = static_cast<int>(rest.size());
  const Config first = io::load_config(argn, rest.data(), Config{}, /*validate=*/false);
  opt.preset = first.model.preset.empty() ? "mixtral-like" : first.model.preset;
  const Preset* chosen = nullptr;
  std::string names;
  for (const auto& p : presets()) {
    names += (names.empty() ? "" : ", ") + std::string(p.name);
    if (opt.preset == p.name) chosen = &p;
  }
  if (!chosen) throw Error("unknown preset '" + opt.preset + "'", "model.preset", "one of " + names);
  Config base;
  chosen->defaults(base);
  base.model.preset = opt.preset;
  opt.cfg = io::load_config(argn, rest.data(), base);
  if (opt.backend != "cpu" && opt.backend != "cuda" && opt.backend != "auto")
    throw Error("unknown backend '" + opt.backend + "'", "--backend", "cpu, cuda or auto");
  bool has_cuda_program = false;
  for (const auto& p : programs())
    has_cuda_program = has_cuda_program || (opt.preset == p.preset && opt.cfg.train.precision == p.precision &&
                                            std::string(p.backend) == "cuda");
  const std::string backend = opt.backend != "auto" ? opt.backend : (has_cuda_program && gpu_present() ? "cuda" : "cpu");
  std::string compiled;
  for (const auto& p : programs())
    if (opt.preset == p.preset && backend == p.backend) {
      if (opt.cfg.train.precision == p.precision) return p.run(opt);
      compiled += (compiled.empty() ? "" : ", ") + std::string(p.precision);
    }
  if (compiled.empty())
    throw Error("preset '" + opt.preset + "' has no " + backend + " program in this build", "--backend",
#if defined(TMOE_EXAMPLE_CUDA)
                "--backend cpu, or a preset compiled for the GPU (mixtral-like)"
#else
                "--backend cpu (this build has no CUDA: nvcc was not found when it was configured)"
#endif
    );
  throw Error("preset '" + opt.preset + "' is not compiled with precision '" + opt.cfg.train.precision + "'" +
                  (backend == "cpu" ? "" : " for --backend " + backend),
              "train.precision", "one of " + compiled + " for this preset");
}

}  // namespace

// Under mpirun every rank runs this; an error on any rank is printed with its rank and ends
// the whole job (comm::mpi_main), so no rank waits for a peer that has stopped.
int main(int argc, char** argv) {
  return comm::mpi_main(argc, argv, [&] { return run(argc, argv); });
}
