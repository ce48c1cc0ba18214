#pragma once
// Deterministic reductions over tokens: rows are grouped in fixed chunks of kTokenChunk
// (by row index, never by thread); each chunk is summed in row order, in parallel across
// chunks, and the chunk partials are then added in chunk order. The result depends only on
// the rows, not on the thread count.
#include <cstdint>
#include <vector>

#include "tmoe/backend/cpu/gemm.hpp"
#include "tmoe/core/threading.hpp"

namespace tmoe::backend::cpu {

struct ReduceOps {
  // out[0..width) += Σ_rows contrib(row, acc) where contrib adds row's terms into acc
  // (a double accumulator of `width` values).
  template <class T, class F>
  static void reduce_rows(std::int64_t rows, std::int64_t width, T* out, F&& contrib) {
    const std::int64_t chunks = (rows + kTokenChunk - 1) / kTokenChunk;
    if (chunks == 0) return;
    std::vector<double> partial(static_cast<std::size_t>(chunks * width), 0.0);
    parallel_for(chunks, [&](std::int64_t c) {
      double* acc = partial.data() + c * width;
      const std::int64_t r1 = std::min(rows, (c + 1) * kTokenChunk);
      for (std::int64_t r = c * kTokenChunk; r < r1; ++r) contrib(r, acc);
    });
    for (std::int64_t j = 0; j < width; ++j) {
      double s = 0;
      for (std::int64_t c = 0; c < chunks; ++c) s += partial[c * width + j];
      out[j] = static_cast<T>(static_cast<double>(out[j]) + s);
    }
  }

  // Σ x[i]² over a vector, in fixed chunks, accumulated in double.
  template <class T>
  static double sum_squares(const T* x, std::int64_t n) {
    constexpr std::int64_t kChunk = 1 << 14;
    const std::int64_t chunks = (n + kChunk - 1) / kChunk;
    std::vector<double> partial(static_cast<std::size_t>(chunks), 0.0);
    parallel_for(chunks, [&](std::int64_t c) {
      double s = 0;
      const std::int64_t i1 = std::min(n, (c + 1) * kChunk);
      for (std::int64_t i = c * kChunk; i < i1; ++i) s += static_cast<double>(x[i]) * static_cast<double>(x[i]);
      partial[c] = s;
    });
    double s = 0;
    for (double p : partial) s += p;
    return s;
  }

  // fn(i) for every row i; rows are independent (pointwise or row-wise work).
  template <class F>
  static void for_rows(std::int64_t rows, F&& fn) {
    constexpr std::int64_t kRowsPerItem = 16;
    parallel_for((rows + kRowsPerItem - 1) / kRowsPerItem, [&](std::int64_t item) {
      const std::int64_t r1 = std::min(rows, (item + 1) * kRowsPerItem);
      for (std::int64_t r = item * kRowsPerItem; r < r1; ++r) fn(r);
    });
  }
};

}  // namespace tmoe::backend::cpu
