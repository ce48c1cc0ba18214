#define BOOST_TEST_MODULE instantiate_policies
// Every policy tmoe ships, instantiated and run once: the fp32 half of the supported
// combinations (policy_combos.hpp), plus the role checks of every shipped member.
// test_instantiate_policies_fp64.cpp holds the fp64 half.
#include "policy_combos.hpp"

using namespace tmoe;

// Explicit instantiation definitions: every member function of each policy's fp32 layer,
// also those a training step does not call.
template struct tmoe::RmsNorm::impl<float, backend::Cpu>;
template struct tmoe::LayerNorm::impl<float, backend::Cpu>;
template struct tmoe::CausalAttention<Rope>::impl<float, backend::Cpu>;
template struct tmoe::CausalAttention<LearnedPositions>::impl<float, backend::Cpu>;
template struct tmoe::SwiGLU::impl<float, backend::Cpu>;
template struct tmoe::GeluFFN::impl<float, backend::Cpu>;
template struct tmoe::Dense<SwiGLU>::impl<float, backend::Cpu>;
template struct tmoe::Dense<GeluFFN>::impl<float, backend::Cpu>;
template struct tmoe::MoE<SwiGLU, TopK>::impl<float, backend::Cpu>;
template struct tmoe::MoE<GeluFFN, TopK>::impl<float, backend::Cpu>;
template void tmoe::TopK::forward_token<float>(const RouterParams&, const float*, std::int32_t*, float*, float*,
                                               float*);
template void tmoe::TopK::backward_token<float>(const RouterParams&, const std::int32_t*, const float*, const float*,
                                                const float*, const float*, float, float*);
template void tmoe::AdamW::update<float>(float*, const float*, float**, std::int64_t, double, double,
                                         std::int64_t) const;
template void tmoe::Serial::reduce_gradients<float>(float*, std::int64_t);
template struct tmoe::TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, TopK>>::impl<float, backend::Cpu, RmsNorm>;
template class tmoe::DecoderLM<test::MoeBlock, RmsNorm>::impl<float, backend::Cpu>;
template class tmoe::Trainer<test::MoeModel, AdamW, Fp32, Serial, backend::Cpu>;

namespace {
using Combos = test::CombosOf<boost::mp11::mp_list<Fp32>>;
using ComboTuple = boost::mp11::mp_rename<Combos, std::tuple>;  // Boost.Test takes std::tuple type lists
}  // namespace

BOOST_AUTO_TEST_CASE(every_member_satisfies_its_role) {
  BOOST_TEST(test::check_roles<Combos>() == test::kRoleMembers + 16);
}

BOOST_AUTO_TEST_CASE_TEMPLATE(train_step_evaluate_generate, C, ComboTuple) {
  const Config cfg = test::tiny_config();
  test::check(test::run<C>(cfg), cfg);
}
