#pragma once
#if defined(__CUDACC__)
#define TMOE_HOST_DEVICE __host__ __device__
#else
#define TMOE_HOST_DEVICE
#endif
