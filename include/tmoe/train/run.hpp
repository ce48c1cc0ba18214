#pragma once
// A checkpointed training run: the loop every trainer program needs, so that resuming,
// periodic checkpoints, the stop signals and the time limit behave the same everywhere
// (docs/checkpoints.md).
//
//   Run run(trainer, {train_batches, val_batches, eval_batches, data_state});
//   if (auto info = run.resume()) ...;          // per config.checkpoint.resume
//   FitResult r = run.fit({.on_log = ..., .on_checkpoint = ...});
//
// fit() takes the steps from trainer.step() to train.steps; evaluates every eval_interval
// steps and at the end; calls on_log every log_interval steps, at the end and before a
// stop; writes a checkpoint every checkpoint.interval steps, at the end, at the time limit
// and on SIGTERM/SIGINT (then returns with stop == kSignal, the program's cue to exit 0).
// The data side is the caller's: batch functions keyed by global micro-batch index, and
// the data state a checkpoint records (see ShardSampler).
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/io/checkpoint.hpp"
#include "tmoe/train/checkpointing.hpp"
#include "tmoe/train/signals.hpp"
#include "tmoe/train/trainer.hpp"

namespace tmoe {

struct FitData {
  BatchFn train;                 // global micro-batch i -> inputs, targets
  BatchFn val;                   // evaluation micro-batch i
  std::int64_t eval_batches = 0; // evaluation micro-batches per validation loss
  // What a checkpoint records about the data after `micro_batches` training micro-batches
  // (at least a "fingerprint" to check on resume).
  std::function<nlohmann::json(std::int64_t micro_batches)> state = [](std::int64_t) { return nlohmann::json::object(); };
};

// What fit() reports at each log line.
struct FitProgress {
  std::int64_t step = 0;          // steps done
  double train_loss = 0;          // mean cross-entropy since the last log line
  double val_loss = std::nan(""); // latest validation loss (NaN before the first)
  double tokens_per_s = 0;        // since the last log line
  double elapsed_s = 0;           // since fit() started
};

struct FitEvents {
  std::function<void(const StepStats&, const FitProgress&)> on_log;
  std::function<void(const std::string& folder, const char* why, double seconds)> on_checkpoint;
};

struct FitResult {
  enum Stop { kFinished, kTimeLimit, kSignal };
  Stop stop = kFinished;
  int signal = 0;                 // SIGTERM or SIGINT when stop == kSignal
  std::int64_t first_step = 0;    // steps done before fit()
  std::int64_t last_step = 0;     // steps done after
  double val_loss = std::nan(""); // at the end (evaluated if no step was taken)
  double train_seconds = 0;
};

template <class Tr>
class Run {
 public:
  Run(Tr& trainer, FitData data) : trainer_(trainer), data_(std::move(data)) {
    const auto& c = trainer_.config().checkpoint;
    if (!c.dir.empty()) dir_.emplace(c.dir, c.keep);
  }

  const std::optional<io::CheckpointDir>& checkpoints() const { return dir_; }

  // Applies config.checkpoint.resume: auto loads the newest valid checkpoint if any;
  // required fails without one; never refuses a directory that already holds some.
  std::optional<ResumeInfo> resume() {
    const auto& c = trainer_.config().checkpoint;
    if (!dir_) return std::nullopt;
    if (c.resume == "never") {
      if (!dir_->steps().empty())
        throw Error("checkpoint.resume=never but the directory already holds checkpoints", c.dir,
                    "an empty or new checkpoint.dir (or resume=auto)");
      return std::nullopt;
    }
    auto info = resume_checkpoint(*dir_, trainer_, data_.state(0));
    if (!info && c.resume == "required")
      throw Error("checkpoint.resume=required but there is no checkpoint", c.dir, "a checkpoint directory");
    return info;
  }

  // Writes a checkpoint of the current step now (no-op without checkpoint.dir).
  void save(const char* why, const FitEvents& ev = {}) {
    if (!dir_) return;
    const auto t0 = std::chrono::steady_clock::now();
    const std::string folder =
        save_checkpoint(*dir_, trainer_, data_.state(BatchRamp(trainer_.config().train).first_micro(trainer_.step())));
    if (ev.on_checkpoint)
      ev.on_checkpoint(folder, why, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }

  FitResult fit(const FitEvents& ev = {}) {
    using Clock = std::chrono::steady_clock;
    const Config& cfg = trainer_.config();
    const auto& tc = cfg.train;
    std::optional<StopSignals> stop;
    if (cfg.checkpoint.on_signal) stop.emplace();
    FitResult res;
    res.first_step = trainer_.step();
    const auto t0 = Clock::now();
    auto t_log = t0;
    std::int64_t tokens = 0, losses = 0;
    double loss_sum = 0, val = std::nan("");
    for (std::int64_t s = trainer_.step(); s < tc.steps; ++s) {
      const StepStats st = trainer_.train_step(data_.train);
      loss_sum += st.ce;
      ++losses;
      tokens += st.tokens;
      const bool last = s + 1 == tc.steps;
      const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
      // Every rank must stop (and checkpoint) at the same step: the flags are summed over ranks.
      double flags[2] = {tc.time_limit_s > 0 && elapsed > tc.time_limit_s ? 1.0 : 0.0, stop && stop->requested() ? 1.0 : 0.0};
      trainer_.parallel().sum(flags, 2);
      const bool out_of_time = flags[0] > 0;
      const bool stopping = flags[1] > 0;
      if ((s + 1) % tc.eval_interval == 0 || last || out_of_time) val = trainer_.evaluate(data_.val, data_.eval_batches);
      if ((s + 1) % tc.log_interval == 0 || last || out_of_time || stopping) {
        const auto now = Clock::now();
        if (ev.on_log)
          ev.on_log(st, FitProgress{s + 1, loss_sum / static_cast<double>(losses), val,
                                    static_cast<double>(tokens) / std::chrono::duration<double>(now - t_log).count(),
                                    elapsed});
        t_log = now;
        tokens = losses = 0;
        loss_sum = 0;
      }
      if (stopping) {
        res.stop = FitResult::kSignal;
        res.signal = stop->requested() ? stop->signal() : SIGTERM;  // another rank received it
        save("stop signal", ev);
        break;
      }
      if ((s + 1) % cfg.checkpoint.interval == 0 || last) save(last ? "end of training" : "interval", ev);
      if (out_of_time) {
        res.stop = FitResult::kTimeLimit;
        save("time limit", ev);
        break;
      }
    }
    res.train_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    res.last_step = trainer_.step();
    res.val_loss = std::isnan(val) && res.stop != FitResult::kSignal ? trainer_.evaluate(data_.val, data_.eval_batches) : val;
    return res;
  }

 private:
  Tr& trainer_;
  FitData data_;
  std::optional<io::CheckpointDir> dir_;
};

}  // namespace tmoe
