#define BOOST_TEST_MODULE instantiate_policies_fp64
// The fp64 half of the supported combinations (policy_combos.hpp); see
// test_instantiate_policies.cpp for the fp32 half.
#include "policy_combos.hpp"

using namespace tmoe;

// Explicit instantiation definitions: every member function of each policy's fp64 layer,
// also those a training step does not call.
template struct tmoe::RmsNorm::impl<double, backend::Cpu>;
template struct tmoe::LayerNorm::impl<double, backend::Cpu>;
template struct tmoe::CausalAttention<Rope>::impl<double, backend::Cpu>;
template struct tmoe::CausalAttention<LearnedPositions>::impl<double, backend::Cpu>;
template struct tmoe::SwiGLU::impl<double, backend::Cpu>;
template struct tmoe::GeluFFN::impl<double, backend::Cpu>;
template struct tmoe::Dense<SwiGLU>::impl<double, backend::Cpu>;
template struct tmoe::Dense<GeluFFN>::impl<double, backend::Cpu>;
template struct tmoe::MoE<SwiGLU, TopK>::impl<double, backend::Cpu>;
template struct tmoe::MoE<GeluFFN, TopK>::impl<double, backend::Cpu>;
template void tmoe::TopK::forward_token<double>(const RouterParams&, const double*, std::int32_t*, double*, double*,
                                                double*);
template void tmoe::TopK::backward_token<double>(const RouterParams&, const std::int32_t*, const double*,
                                                 const double*, const double*, const double*, double, double*);
template void tmoe::AdamW::update<double>(double*, const double*, double**, std::int64_t, double, double,
                                          std::int64_t) const;
template void tmoe::Serial::reduce_gradients<double>(double*, std::int64_t);
template struct tmoe::TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, TopK>>::impl<double, backend::Cpu, RmsNorm>;
template class tmoe::DecoderLM<test::MoeBlock, RmsNorm>::impl<double, backend::Cpu>;
template class tmoe::Trainer<test::MoeModel, AdamW, Fp64, Serial, backend::Cpu>;

namespace {
using Combos = test::CombosOf<boost::mp11::mp_list<Fp64>>;
using ComboTuple = boost::mp11::mp_rename<Combos, std::tuple>;  // Boost.Test takes std::tuple type lists
}  // namespace

BOOST_AUTO_TEST_CASE(every_member_satisfies_its_role) {
  BOOST_TEST(test::check_roles<Combos>() == test::kRoleMembers + 16);
}

BOOST_AUTO_TEST_CASE_TEMPLATE(train_step_evaluate_generate, C, ComboTuple) {
  const Config cfg = test::tiny_config();
  test::check(test::run<C>(cfg), cfg);
}
