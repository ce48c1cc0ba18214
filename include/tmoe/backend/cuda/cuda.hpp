#pragma once
// backend::Cuda — the ops of backend::Cpu with the same names and signatures, on device
// pointers, launched on Context::current().stream() (DESIGN.md principle 2). Products go
// through cuBLAS (gemm.cuh); everything else is tmoe's own kernels, one header per family;
// pointwise math is the TMOE_HOST_DEVICE functors the CPU loops also run (layers/
// pointwise.hpp, layers/dropout.hpp, moe/routers/*.hpp, precision/narrow.hpp). Every op
// is deterministic: the same inputs give the same bits on the same device, run after run.
// Compiled by nvcc only (include tmoe/cuda.hpp from a .cu file); no Eigen.
#include "tmoe/backend/cuda/activation.cuh"
#include "tmoe/backend/cuda/attention.cuh"
#include "tmoe/backend/cuda/cast.cuh"
#include "tmoe/backend/cuda/embedding.cuh"
#include "tmoe/backend/cuda/gemm.cuh"
#include "tmoe/backend/cuda/loss.cuh"
#include "tmoe/backend/cuda/norm.cuh"
#include "tmoe/backend/cuda/optim.cuh"
#include "tmoe/backend/cuda/permute.cuh"
#include "tmoe/backend/cuda/reduce.cuh"
#include "tmoe/backend/cuda/rope.cuh"
#include "tmoe/backend/cuda/router.cuh"
#include "tmoe/backend/cuda/rows.cuh"
#include "tmoe/core/concepts.hpp"
#include "tmoe/tensor/tensor.hpp"

namespace tmoe::backend {

struct Cuda : cuda::GemmOps, cuda::ActivationOps, cuda::NormOps, cuda::AttentionOps, cuda::RopeOps,
              cuda::EmbeddingOps, cuda::LossOps, cuda::CastOps, cuda::RouterOps, cuda::PermuteOps,
              cuda::RowOps, cuda::MemoryOps, cuda::ReduceOps, cuda::OptimOps {
  using Space = CudaSpace;
  using Trans = cuda::Trans;
  template <class T>
  using GemmArgs = cuda::GemmArgs<T>;
  static constexpr const char* name = "cuda";
};

static_assert(Backend<Cuda>);

}  // namespace tmoe::backend
