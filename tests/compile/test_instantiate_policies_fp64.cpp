#define BOOST_TEST_MODULE instantiate_policies_fp64
// The fp64 half of the supported combinations (policy_combos.hpp); see
// test_instantiate_policies.cpp for the fp32 half and instantiate_policies.hpp for the body
// both share.
#define TMOE_TEST_REAL double
#define TMOE_TEST_PRECISION Fp64
#include "instantiate_policies.hpp"
