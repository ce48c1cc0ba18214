#pragma once
// backend::Cpu — every op the layers call, on Eigen maps over tmoe's buffers, threaded by
// tmoe (see gemm.hpp for why results do not depend on threads or batch composition).
#include "tmoe/backend/cpu/activation.hpp"
#include "tmoe/backend/cpu/attention.hpp"
#include "tmoe/backend/cpu/embedding.hpp"
#include "tmoe/backend/cpu/gemm.hpp"
#include "tmoe/backend/cpu/loss.hpp"
#include "tmoe/backend/cpu/memory.hpp"
#include "tmoe/backend/cpu/norm.hpp"
#include "tmoe/backend/cpu/reduce.hpp"
#include "tmoe/core/concepts.hpp"

namespace tmoe::backend {

struct Cpu : cpu::GemmOps, cpu::ActivationOps, cpu::ReduceOps, cpu::NormOps, cpu::AttentionOps, cpu::EmbeddingOps, cpu::LossOps,
             cpu::MemoryOps {
  using Space = HostSpace;
  using Trans = cpu::Trans;
  template <class T>
  using GemmArgs = cpu::GemmArgs<T>;
  static constexpr const char* name = "cpu";
};

static_assert(Backend<Cpu>);

}  // namespace tmoe::backend
