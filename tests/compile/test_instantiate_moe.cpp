#define BOOST_TEST_MODULE instantiate_moe
// The MoE compile matrix in fp32 (instantiate_moe.hpp); test_instantiate_moe_fp64.cpp holds fp64.
#define TMOE_TEST_REAL float
#include "instantiate_moe.hpp"
