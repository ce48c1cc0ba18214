#pragma once
// Shared by the precision tests (test_precision.cpp, test_precision_numerics.cpp), split in
// two translation units to keep each under the one-minute compile budget.
#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "../support/tiny.hpp"

namespace tmoe::test {

// Every float in a sweep of bit patterns plus random ones and the edge cases.
inline std::vector<float> probe_values() {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 1e-8f, 2.9802322e-08f,
                          5.9604645e-08f, 8.940697e-08f, 6.1035156e-05f, 6.0975552e-05f, 3.3895314e38f,
                          std::numeric_limits<float>::max(), std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::min()};
  for (std::uint32_t u = 0; u < 0xff800000u; u += 0x1357u) v.push_back(std::bit_cast<float>(u));
  for (std::uint32_t u = 0x80000000u; u < 0xff800000u; u += 0x2468bu) v.push_back(std::bit_cast<float>(u));
  std::mt19937 rng(7);
  std::normal_distribution<float> n(0.0f, 1.0f);
  for (int i = 0; i < 100000; ++i) v.push_back(n(rng) * std::ldexp(1.0f, static_cast<int>(rng() % 60) - 40));
  return v;
}

template <class Tr>
std::vector<double> grads_of(Tr& tr, const BatchFn& batches, double* loss = nullptr) {
  auto& m = tr.model();
  m.zero_grad();
  std::vector<std::int32_t> in(static_cast<std::size_t>(tr.config().train.batch_size * tr.config().train.seq_len)), tg(in.size());
  batches(0, in.data(), tg.data());
  m.set_mode(true, tr.config().train.seed, 0, 0);
  const LossParts lp = m.forward(in.data(), tg.data(), tr.config().train.batch_size, tr.config().train.seq_len);
  if (loss) *loss = lp.total;
  m.backward(1.0);
  m.set_mode(false);
  return {m.grads(), m.grads() + m.registry().total()};
}

inline double rel_l2(const std::vector<double>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

// Learnable toy language of test_training.cpp.
inline BatchFn pattern_batches(std::int64_t b, std::int64_t t, std::int32_t vocab) {
  return [=](std::int64_t i, std::int32_t* in, std::int32_t* tg) {
    for (std::int64_t r = 0; r < b; ++r) {
      std::int32_t x = static_cast<std::int32_t>((i * 7 + r * 3) % vocab);
      for (std::int64_t j = 0; j <= t; ++j) {
        if (j < t) in[r * t + j] = x;
        if (j > 0) tg[r * t + j - 1] = x;
        x = (x * 5 + 3) % vocab;
      }
    }
  };
}

template <class P>
using TrainerOf = Trainer<test::MoeModel, AdamW, P, Serial, backend::Cpu>;


}  // namespace tmoe::test
