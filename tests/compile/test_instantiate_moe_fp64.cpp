#define BOOST_TEST_MODULE instantiate_moe_fp64
// The MoE compile matrix in fp64 (instantiate_moe.hpp); test_instantiate_moe.cpp holds fp32.
#define TMOE_TEST_REAL double
#include "instantiate_moe.hpp"
