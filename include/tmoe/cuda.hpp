#pragma once
// tmoe/cuda.hpp — the umbrella of CUDA programs (.cu translation units compiled by nvcc):
// backend::Cuda with its context, allocator, device tensors and ops, and the host-side
// plans its ops use. Eigen never passes through nvcc: a program offering both backends
// compiles one .cpp with tmoe/tmoe.hpp and one .cu with this header (DESIGN.md).
#include "tmoe/backend/cuda/allocator.hpp"
#include "tmoe/backend/cuda/check.hpp"
#include "tmoe/backend/cuda/context.hpp"
#include "tmoe/backend/cuda/cuda.hpp"
#include "tmoe/backend/cuda/embedding_plan.hpp"
#include "tmoe/backend/cuda/gemm_plan.hpp"
#include "tmoe/backend/cuda/launch.hpp"
#include "tmoe/backend/cuda/tensor.hpp"
#include "tmoe/backend/cuda/types.hpp"
#include "tmoe/moe/permute_plan.hpp"
