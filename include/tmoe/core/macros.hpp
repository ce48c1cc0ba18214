#pragma once
// TMOE_HOST_DEVICE: a function both the CPU loops and CUDA kernels call (pointwise math).
// TMOE_LAMBDA: a lambda that B::for_rows / B::reduce_rows may run on the device, written
//   [=] TMOE_LAMBDA (std::int64_t i) { ... }
// (an nvcc extended lambda: it captures by value, never `this` or references, and its
// enclosing member function and classes are public). Plain lambdas for g++.
#if defined(__CUDACC__)
#define TMOE_HOST_DEVICE __host__ __device__
#define TMOE_LAMBDA __host__ __device__
#else
#define TMOE_HOST_DEVICE
#define TMOE_LAMBDA
#endif
