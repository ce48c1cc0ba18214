#pragma once
// tmoe/cuda.hpp — the umbrella of CUDA programs (.cu translation units compiled by nvcc):
// the CUDA backend and everything that does not need Eigen. A program offering both
// backends compiles one .cpp with tmoe/tmoe.hpp and one .cu with this header.
#include "tmoe/backend/cuda/allocator.hpp"
#include "tmoe/backend/cuda/check.hpp"
#include "tmoe/backend/cuda/context.hpp"
#include "tmoe/backend/cuda/launch.hpp"
#include "tmoe/backend/cuda/tensor.hpp"
#include "tmoe/backend/cuda/types.hpp"
