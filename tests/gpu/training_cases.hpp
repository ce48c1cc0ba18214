#pragma once
// A short training run shared by the CPU program that writes the reference
// (model_reference.cpp) and the GPU test (test_cuda_training.cu): the same config, model and
// batches; the per-step losses and gradient norms are compared. Two precisions: Fp32 and
// MixedBf16 (bf16 storage, fp32 master weights); the optimizer runs on the host in both
// cases (Trainer's optimizer offload for a device model), so only the model's arithmetic
// differs between the backends. With grad_accum 2 and dropout on.
#include <cstdint>
#include <vector>

#include "model_cases.hpp"
#include "tmoe/optim/adamw.hpp"
#include "tmoe/train/trainer.hpp"

namespace training_cases {

constexpr std::int64_t kSteps = 6;

inline tmoe::Config config() {
  tmoe::Config c;
  c.model = model_cases::config(true);
  c.train.seed = 99;
  c.train.steps = kSteps;
  c.train.batch_size = 2;
  c.train.seq_len = 24;
  c.train.grad_accum = 2;
  c.train.lr = 3e-3;
  c.train.warmup_steps = 1;
  return c;
}

// Batch i: deterministic tokens (the next-token task of a fixed pseudo-random stream).
inline void batch(std::int64_t i, std::int32_t* in, std::int32_t* tgt) {
  const std::int64_t n = 2 * 24;
  const auto s = model_cases::tokens(n + 1, static_cast<std::uint32_t>(17 + i));
  for (std::int64_t j = 0; j < n; ++j) {
    in[j] = s[static_cast<std::size_t>(j)];
    tgt[j] = s[static_cast<std::size_t>(j + 1)];
  }
}

// Losses then gradient norms of kSteps steps.
template <class Trainer>
std::vector<double> run() {
  Trainer tr(config());
  std::vector<double> out;
  for (std::int64_t s = 0; s < kSteps; ++s) {
    const auto st = tr.train_step(batch);
    out.push_back(st.loss);
    out.push_back(st.grad_norm);
  }
  return out;
}

template <class B>
std::vector<double> run_all() {
  std::vector<double> out;
  for (double x : run<tmoe::Trainer<model_cases::LearnedGelu, tmoe::AdamW, tmoe::Fp32, tmoe::Serial, B>>()) out.push_back(x);
  for (double x : run<tmoe::Trainer<model_cases::RopeSwiGLU, tmoe::AdamW, tmoe::MixedBf16, tmoe::Serial, B>>())
    out.push_back(x);
  return out;
}

}  // namespace training_cases
