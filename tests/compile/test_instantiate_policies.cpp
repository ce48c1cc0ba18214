#define BOOST_TEST_MODULE instantiate_policies
// Every policy tmoe ships, instantiated and run once: the fp32 half of the supported
// combinations (policy_combos.hpp), plus the role checks of every shipped member.
// test_instantiate_policies_fp64.cpp holds the fp64 half; instantiate_policies.hpp the body
// both share.
#define TMOE_TEST_REAL float
#define TMOE_TEST_PRECISION Fp32
#include "instantiate_policies.hpp"
