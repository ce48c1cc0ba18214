// Checkpoints of a real (tiny) trainer: bitwise resume, atomic commit under SIGKILL and a
// full disk, fallback from a corrupt newest checkpoint, and a sentence for every bad one.
#define BOOST_TEST_MODULE checkpoint
#include <boost/test/unit_test.hpp>

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>
#include <vector>

#include "../support/expect_error.hpp"
#include "../support/files.hpp"
#include "../support/tiny.hpp"
#include "tmoe/train/checkpointing.hpp"
#include "tmoe/train/run.hpp"

using namespace tmoe;
using tmoe::test::Bytes;
using tmoe::test::expect_error;
using tmoe::test::read_bytes;
using tmoe::test::TempDir;
using tmoe::test::write_bytes;
namespace fs = std::filesystem;

namespace {
using Train = Trainer<test::MoeModel, AdamW, Fp32, Serial, backend::Cpu>;
using Train64 = Trainer<test::MoeModel, AdamW, Fp64, Serial, backend::Cpu>;

Config config() {
  Config c = test::tiny_train_config();
  c.train.steps = 6;
  c.train.grad_accum = 2;
  return c;
}
BatchFn batches() { return test::random_batches(4 * 32, 64); }
const nlohmann::json kData = {{"fingerprint", 1234}};

template <class Tr>
std::vector<double> run(Tr& t, std::int64_t steps) {
  std::vector<double> losses;
  for (std::int64_t i = 0; i < steps; ++i) losses.push_back(t.train_step(batches()).loss);
  return losses;
}
template <class Tr>
std::vector<typename Tr::T> flat(Tr& t, int slot) {  // slot -1: parameters
  const auto n = static_cast<std::size_t>(t.model().registry().total());
  const auto* p = slot < 0 ? t.model().params() : t.optimizer_state(slot);
  return {p, p + n};
}
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}
}  // namespace

BOOST_AUTO_TEST_CASE(resume_is_bitwise_identical_to_an_uninterrupted_run) {
  TempDir tmp;
  Train straight(config());
  const auto all = run(straight, 6);

  io::CheckpointDir dir(tmp.file("ckpt"), 2);
  {
    Train first(config());
    run(first, 3);
    save_checkpoint(dir, first, kData);
  }
  Train resumed(config());
  const auto info = resume_checkpoint(dir, resumed, kData);
  BOOST_REQUIRE(info.has_value());
  BOOST_TEST(info->step == 3);
  BOOST_TEST(info->skipped.empty());
  BOOST_TEST(info->changed.empty());
  BOOST_TEST(resumed.step() == 3);
  const auto rest = run(resumed, 3);
  for (int i = 0; i < 3; ++i) BOOST_TEST(rest[i] == all[3 + i], "step " << 3 + i << " loss");  // exact
  BOOST_TEST(same_bits(flat(resumed, -1), flat(straight, -1)));
  BOOST_TEST(same_bits(flat(resumed, 0), flat(straight, 0)));
  BOOST_TEST(same_bits(flat(resumed, 1), flat(straight, 1)));

  // The files are readable by name, as PyTorch would read them.
  const auto m = io::SafetensorsFile::open(info->folder + "/model.safetensors");
  const auto o = io::SafetensorsFile::open(info->folder + "/optimizer.safetensors");
  BOOST_TEST(m.has("layers.0.moe.router.weight"));
  BOOST_TEST(o.has("exp_avg.layers.0.moe.router.weight"));
  BOOST_TEST(o.has("exp_avg_sq.embed.weight"));
}

BOOST_AUTO_TEST_CASE(no_checkpoint_means_a_fresh_start) {
  TempDir tmp;
  Train t(config());
  BOOST_TEST(!resume_checkpoint(io::CheckpointDir(tmp.file("none"), 2), t, kData).has_value());
  BOOST_TEST(t.step() == 0);
}

BOOST_AUTO_TEST_CASE(keeps_the_last_k_and_latest_moves) {
  TempDir tmp;
  io::CheckpointDir dir(tmp.file("ckpt"), 2);
  Train t(config());
  for (int i = 0; i < 4; ++i) {
    run(t, 1);
    save_checkpoint(dir, t, kData);
  }
  BOOST_TEST((dir.steps() == std::vector<std::int64_t>{3, 4}));
  BOOST_TEST(dir.latest().value() == 4);
  // Saving the same step again keeps the valid folder.
  save_checkpoint(dir, t, kData);
  BOOST_TEST((dir.steps() == std::vector<std::int64_t>{3, 4}));
  for (const auto& e : fs::directory_iterator(dir.root()))
    BOOST_TEST(!e.path().filename().string().starts_with("."), "leftover " << e.path());
}

BOOST_AUTO_TEST_CASE(corrupt_newest_falls_back_to_the_previous_valid_one) {
  TempDir tmp;
  io::CheckpointDir dir(tmp.file("ckpt"), 3);
  Train t(config());
  run(t, 1);
  save_checkpoint(dir, t, kData);
  const auto params1 = flat(t, -1);
  run(t, 1);
  const std::string newest = save_checkpoint(dir, t, kData);
  // Flip one payload bit of the newest model file.
  Bytes b = read_bytes(newest + "/model.safetensors");
  b[b.size() - 3] ^= 4;
  write_bytes(newest + "/model.safetensors", b);
  Train r(config());
  const auto info = resume_checkpoint(dir, r, kData);
  BOOST_REQUIRE(info.has_value());
  BOOST_TEST(info->step == 1);
  BOOST_REQUIRE(info->skipped.size() == 1u);
  BOOST_TEST(info->skipped[0].find("step-00000002: file model.safetensors fails its checksum") != std::string::npos,
             info->skipped[0]);
  BOOST_TEST(same_bits(flat(r, -1), params1));
  // With every checkpoint corrupt, resuming is an error listing each one.
  fs::remove(dir.root() + "/step-00000001/state.json");
  Train r2(config());
  expect_error([&] { resume_checkpoint(dir, r2, kData); },
               {"no valid checkpoint", "step-00000002: file model.safetensors fails its checksum",
                "step-00000001: file state.json is missing"});
  BOOST_TEST(r2.step() == 0);
}

BOOST_AUTO_TEST_CASE(truncation_and_bit_flips_anywhere_are_caught) {
  TempDir tmp;
  io::CheckpointDir dir(tmp.file("ckpt"), 1);
  Train t(config());
  run(t, 1);
  const std::string folder = save_checkpoint(dir, t, kData);
  for (const char* name : {"model.safetensors", "optimizer.safetensors", "state.json", "MANIFEST.json"}) {
    const std::string path = folder + "/" + name;
    const Bytes good = read_bytes(path);
    std::vector<std::size_t> offsets = {0, 1, 7, 8, 9, good.size() / 3, good.size() / 2, good.size() - 1};
    for (std::size_t at : offsets) {
      BOOST_TEST_CONTEXT(name << " offset " << at) {
        write_bytes(path, Bytes(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(at)));  // truncated
        Train r(config());
        expect_error([&] { resume_checkpoint(dir, r, kData); }, {"no valid checkpoint", "step-00000001"});
        Bytes flipped = good;
        flipped[at] ^= 0x20;
        write_bytes(path, flipped);
        expect_error([&] { resume_checkpoint(dir, r, kData); }, {"no valid checkpoint"});
        BOOST_TEST(r.step() == 0);
      }
    }
    write_bytes(path, good);
  }
  Train r(config());
  BOOST_TEST(resume_checkpoint(dir, r, kData)->step == 1);
}

// A checkpoint whose files were rewritten consistently (manifest updated) but hold a
// tensor of the wrong shape, a missing tensor or a foreign one: the loader's own checks.
BOOST_AUTO_TEST_CASE(consistent_but_wrong_tensors_are_refused) {
  TempDir tmp;
  io::CheckpointDir dir(tmp.file("ckpt"), 1);
  Train t(config());
  run(t, 1);
  const std::string folder = save_checkpoint(dir, t, kData);
  const std::string model = folder + "/model.safetensors", manifest = folder + "/MANIFEST.json";
  const Bytes good_model = read_bytes(model), good_manifest = read_bytes(manifest);
  // Rewrites model.safetensors from its tensors after edit(refs), and reseals the manifest.
  auto rewrite = [&](auto edit) {
    write_bytes(model, good_model);
    const auto f = io::SafetensorsFile::open(model);
    std::vector<std::vector<float>> data;
    std::vector<io::TensorRef> refs;
    for (const auto& name : f.names()) {
      data.push_back(f.read<float>(name));
      refs.push_back({name, "F32", f.info(name).shape, nullptr});
    }
    for (std::size_t i = 0; i < refs.size(); ++i) refs[i].data = data[i].data();
    edit(refs);
    io::write_safetensors(model, refs);
    auto m = nlohmann::json::parse(std::string(good_manifest.begin(), good_manifest.end()));
    const auto d = io::digest_file(model);
    m["files"]["model.safetensors"] = {{"bytes", d.size}, {"xxh64", d.xxh64}};
    const std::string text = m.dump(2) + "\n";
    write_bytes(manifest, Bytes(text.begin(), text.end()));
    BOOST_REQUIRE(dir.problem(1).empty());
  };
  Train r(config());
  rewrite([](std::vector<io::TensorRef>& refs) {
    for (auto& x : refs)
      if (x.name == "layers.0.attn.qkv.weight") x.shape = {x.shape[1], x.shape[0]};
  });
  expect_error([&] { resume_checkpoint(dir, r, kData); }, {"layers.0.attn.qkv.weight", "shape (32, 96)", "(96, 32)"});
  rewrite([](std::vector<io::TensorRef>& refs) {
    refs.erase(std::remove_if(refs.begin(), refs.end(), [](auto& x) { return x.name == "final_norm.weight"; }),
               refs.end());
  });
  expect_error([&] { resume_checkpoint(dir, r, kData); }, {"lacks 1 of the model's", "final_norm.weight"});
  rewrite([](std::vector<io::TensorRef>& refs) { refs.push_back({"extra.weight", "F32", {1}, refs[0].data}); });
  expect_error([&] { resume_checkpoint(dir, r, kData); }, {"'extra.weight'", "not a parameter of the model"});
  BOOST_TEST(r.step() == 0);
}

BOOST_AUTO_TEST_CASE(incompatible_checkpoints_are_refused_with_a_sentence) {
  TempDir tmp;
  io::CheckpointDir dir(tmp.file("ckpt"), 1);
  {
    Train t(config());
    run(t, 1);
    save_checkpoint(dir, t, kData);
  }
  Config wider = config();
  wider.model.d_expert = 32;
  Train a(wider);
  expect_error([&] { resume_checkpoint(dir, a, kData); }, {"model config differs", "model.d_expert: 24 -> 32"});
  Config reseeded = config();
  reseeded.train.seed = 99;
  Train b(reseeded);
  expect_error([&] { resume_checkpoint(dir, b, kData); }, {"train.seed", "data stream"});
  Train c(config());
  expect_error([&] { resume_checkpoint(dir, c, nlohmann::json{{"fingerprint", 999}}); },
               {"training data differ", "999"});
  Train64 d([] {
    Config x = config();
    return x;
  }());
  expect_error([&] { resume_checkpoint(dir, d, kData); }, {"F32", "computes in F64"});
  // Trajectory-only changes are allowed and reported.
  Config faster = config();
  faster.train.lr = 2e-2;
  faster.train.log_interval = 3;
  Train e(faster);
  const auto info = resume_checkpoint(dir, e, kData);
  BOOST_REQUIRE(info.has_value());
  BOOST_REQUIRE(info->changed.size() == 1u);
  BOOST_TEST(info->changed[0].find("train.lr") == 0u);
  for (auto* t : {&a.model(), &b.model(), &c.model()}) (void)t;
  BOOST_TEST(a.step() == 0);
  BOOST_TEST(c.step() == 0);
}

BOOST_AUTO_TEST_CASE(full_disk_leaves_the_previous_checkpoint_intact) {
  TempDir tmp;
  const std::string root = tmp.file("ckpt");
  {
    io::CheckpointDir dir(root, 3);
    Train t(config());
    run(t, 1);
    save_checkpoint(dir, t, kData);
  }
  const Bytes before = read_bytes(root + "/step-00000001/model.safetensors");
  const pid_t child = ::fork();
  BOOST_REQUIRE(child >= 0);
  if (child == 0) {
    // A 20 kB file-size limit: the next checkpoint's model file cannot be written.
    struct rlimit lim {20000, 20000};
    ::setrlimit(RLIMIT_FSIZE, &lim);
    try {
      io::CheckpointDir dir(root, 3);
      Train t(config());
      run(t, 2);
      save_checkpoint(dir, t, kData);
    } catch (const Error& e) {
      const std::string m = e.what();
      ::_exit(m.find("file too large") != std::string::npos && m.find("previous checkpoints are unchanged") != std::string::npos
                  ? 0
                  : 4);
    } catch (...) {
      ::_exit(5);
    }
    ::_exit(6);  // no error: the limit did not bite
  }
  int status = 0;
  BOOST_REQUIRE(::waitpid(child, &status, 0) == child);
  BOOST_TEST(WIFEXITED(status));
  BOOST_TEST(WEXITSTATUS(status) == 0, "child exit " << WEXITSTATUS(status));
  io::CheckpointDir dir(root, 3);
  BOOST_TEST((dir.steps() == std::vector<std::int64_t>{1}));
  BOOST_TEST(dir.latest().value() == 1);
  BOOST_TEST(read_bytes(root + "/step-00000001/model.safetensors") == before);
  for (const auto& e : fs::directory_iterator(root))
    BOOST_TEST(!e.path().filename().string().starts_with(".step"), "leftover " << e.path());
}

// Real trainer checkpoints saved back to back, killed at varying instants; and saves that
// pause half-way (a slow disk), killed inside the pause, so that some kills land mid-save
// for certain.
BOOST_AUTO_TEST_CASE(sigkill_during_saves_never_leaves_a_half_checkpoint) {
  TempDir tmp;
  const std::string root = tmp.file("ckpt");
  int killed_mid_save = 0;
  constexpr int kAttempts = 10;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    const bool slow = attempt % 2 == 1;
    const pid_t child = ::fork();
    BOOST_REQUIRE(child >= 0);
    if (child == 0) {
      try {
        io::CheckpointDir dir(root, 2);
        Train t(config());
        for (std::int64_t s = 1;; ++s) {  // save as fast as possible, step numbers rising
          t.set_step(1000 * attempt + s);
          if (!slow || s == 1) {
            save_checkpoint(dir, t, kData);
          } else {
            dir.save(t.step(), [&](const std::string& folder) {
              io::write_file_atomic(folder + "/a.bin", std::string(100000, 'a'));
              std::this_thread::sleep_for(std::chrono::milliseconds(300));
              io::write_file_atomic(folder + "/b.bin", std::string(100000, 'b'));
            });
          }
        }
      } catch (...) {
        ::_exit(3);
      }
    }
    // Wait for the first commit of this attempt, then kill at a varying moment.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      const auto l = io::CheckpointDir(root, 2).latest();
      if (l && *l > 1000 * attempt) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (slow) {
      // Kill once a save has written its first file into its temporary folder.
      bool mid = false;
      while (!mid && std::chrono::steady_clock::now() < deadline) {
        std::error_code ec;
        for (const auto& e : fs::directory_iterator(root, ec))
          if (e.path().filename().string().find(".tmp-") != std::string::npos && fs::exists(e.path() / "a.bin", ec))
            mid = true;
        if (!mid) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(700 * attempt + 300));
    }
    ::kill(child, SIGKILL);
    int status = 0;
    BOOST_REQUIRE(::waitpid(child, &status, 0) == child);
    BOOST_REQUIRE(WIFSIGNALED(status));
    for (const auto& e : fs::directory_iterator(root))
      if (e.path().filename().string().find(".tmp-") != std::string::npos) ++killed_mid_save;
    // Whatever the instant, the newest checkpoint is valid; the newest trainer checkpoint
    // loads (a slow attempt's newer ones hold other files and are reported as skipped).
    io::CheckpointDir dir(root, 2);
    const auto found = dir.find_valid();
    BOOST_REQUIRE(found.has_value());
    BOOST_TEST(found->skipped.empty(), "attempt " << attempt);
    BOOST_TEST(found->step > 1000 * attempt);
    if (!slow) {
      Train r(config());
      const auto info = resume_checkpoint(dir, r, kData);
      BOOST_REQUIRE(info.has_value());
      BOOST_TEST(info->step == found->step);
    }
  }
  BOOST_TEST_MESSAGE("killed inside a save (temporary folder present) in " << killed_mid_save << " of " << kAttempts
                                                                            << " attempts");
  BOOST_TEST(killed_mid_save >= kAttempts / 2);
}

// The library's loop (train/run.hpp): interval and final checkpoints, SIGTERM mid-run
// (a checkpoint at that step, stop == kSignal), then resume() + fit() to the end equal an
// uninterrupted fit bitwise.
BOOST_AUTO_TEST_CASE(run_fit_checkpoints_stops_on_sigterm_and_resumes) {
  TempDir tmp;
  auto cfg_with = [&](const std::string& dir) {
    Config c = config();
    c.checkpoint.dir = dir;
    c.checkpoint.interval = 4;
    c.train.steps = 10;
    c.train.eval_interval = 5;
    c.train.log_interval = 1;
    return c;
  };
  FitData data;
  data.train = batches();
  data.val = batches();
  data.eval_batches = 1;
  data.state = [](std::int64_t) { return kData; };

  Train straight(cfg_with(tmp.file("a")));
  Run run_a(straight, data);
  BOOST_TEST(!run_a.resume().has_value());
  std::vector<std::string> saved;
  FitEvents ev;
  ev.on_checkpoint = [&](const std::string& folder, const char* why, double) {
    saved.push_back(fs::path(folder).filename().string() + " " + why);
  };
  const FitResult ra = run_a.fit(ev);
  BOOST_TEST(ra.stop == FitResult::kFinished);
  BOOST_TEST(ra.last_step == 10);
  BOOST_TEST((saved == std::vector<std::string>{"step-00000004 interval", "step-00000008 interval",
                                                 "step-00000010 end of training"}));

  Train first(cfg_with(tmp.file("b")));
  Run run_b(first, data);
  FitEvents stop_at_6;
  stop_at_6.on_log = [](const StepStats&, const FitProgress& p) {
    if (p.step == 6) ::raise(SIGTERM);
  };
  const FitResult rb = run_b.fit(stop_at_6);
  BOOST_TEST(rb.stop == FitResult::kSignal);
  BOOST_TEST(rb.signal == SIGTERM);
  BOOST_TEST(rb.last_step == 7);  // the flag is read after the step that saw it logged
  BOOST_TEST(io::CheckpointDir(tmp.file("b"), 3).latest().value() == 7);

  Train second(cfg_with(tmp.file("b")));
  Run run_c(second, data);
  const auto info = run_c.resume();
  BOOST_REQUIRE(info.has_value());
  BOOST_TEST(info->step == 7);
  const FitResult rc = run_c.fit();
  BOOST_TEST(rc.first_step == 7);
  BOOST_TEST(rc.val_loss == ra.val_loss);
  BOOST_TEST(same_bits(flat(second, -1), flat(straight, -1)));
  BOOST_TEST(same_bits(flat(second, 1), flat(straight, 1)));

  // resume=required without a checkpoint, resume=never over existing ones: refused.
  Config req = cfg_with(tmp.file("empty"));
  req.checkpoint.resume = "required";
  Train tr(req);
  expect_error([&] { Run(tr, data).resume(); }, {"resume=required", "no checkpoint"});
  Config nev = cfg_with(tmp.file("a"));
  nev.checkpoint.resume = "never";
  Train tn(nev);
  expect_error([&] { Run(tn, data).resume(); }, {"resume=never", "already holds checkpoints"});
}
