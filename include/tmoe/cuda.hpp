#pragma once
// tmoe/cuda.hpp — the umbrella of CUDA programs (.cu translation units compiled by nvcc):
// everything backend-neutral (tmoe/common.hpp) plus backend::Cuda with its context,
// allocator, device tensors, ops and the host-side plans its ops use. Eigen never passes
// through nvcc: a program offering both backends compiles one .cpp with tmoe/tmoe.hpp and
// one .cu with this header (DESIGN.md). comm::Nccl (parallel/comm/nccl.hpp) is included by
// the programs that link NCCL.
#include "tmoe/backend/cuda/allocator.hpp"
#include "tmoe/backend/cuda/check.hpp"
#include "tmoe/backend/cuda/context.hpp"
#include "tmoe/backend/cuda/cuda.hpp"
#include "tmoe/backend/cuda/embedding_plan.hpp"
#include "tmoe/backend/cuda/gemm_plan.hpp"
#include "tmoe/backend/cuda/launch.hpp"
#include "tmoe/backend/cuda/tensor.hpp"
#include "tmoe/backend/cuda/types.hpp"
#include "tmoe/common.hpp"
#include "tmoe/moe/permute_plan.hpp"
