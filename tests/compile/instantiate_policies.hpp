// The body of test_instantiate_policies*.cpp, one file per precision so that no translation
// unit takes more than about a minute (STYLE.md, compile times). The including file defines
//   TMOE_TEST_REAL       the compute type, float or double
//   TMOE_TEST_PRECISION  its precision policy, Fp32 or Fp64
// and gets the explicit instantiation of every member function of each policy's layer
// (also those a training step does not call), the role checks of every shipped member, and
// one tiny run of each supported combination of that precision.
// No include guard: included once per test file, with different macros.
#if !defined(TMOE_TEST_REAL) || !defined(TMOE_TEST_PRECISION)
#error "define TMOE_TEST_REAL and TMOE_TEST_PRECISION before including instantiate_policies.hpp"
#endif

#include "policy_combos.hpp"

using namespace tmoe;

template struct tmoe::RmsNorm::impl<TMOE_TEST_REAL, backend::Cpu>;
template struct tmoe::LayerNorm::impl<TMOE_TEST_REAL, backend::Cpu>;
template struct tmoe::CausalAttention<Rope>::impl<TMOE_TEST_REAL, backend::Cpu>;
template struct tmoe::CausalAttention<LearnedPositions>::impl<TMOE_TEST_REAL, backend::Cpu>;
template struct tmoe::SwiGLU::impl<TMOE_TEST_REAL, backend::Cpu>;
template struct tmoe::GeluFFN::impl<TMOE_TEST_REAL, backend::Cpu>;
template struct tmoe::Dense<SwiGLU>::impl<TMOE_TEST_REAL, backend::Cpu>;
template struct tmoe::Dense<GeluFFN>::impl<TMOE_TEST_REAL, backend::Cpu>;
template struct tmoe::MoE<SwiGLU, TopK>::impl<TMOE_TEST_REAL, backend::Cpu>;
template struct tmoe::MoE<GeluFFN, TopK>::impl<TMOE_TEST_REAL, backend::Cpu>;
template void tmoe::TopK::scores_token<TMOE_TEST_REAL>(const RouterParams&, const TMOE_TEST_REAL*,
                                                       const TMOE_TEST_REAL*, TMOE_TEST_REAL*, TMOE_TEST_REAL*);
template void tmoe::TopK::gates_token<TMOE_TEST_REAL>(const RouterParams&, const TMOE_TEST_REAL*,
                                                      const TMOE_TEST_REAL*, const std::int32_t*, TMOE_TEST_REAL*);
template void tmoe::TopK::backward_token<TMOE_TEST_REAL>(const RouterParams&, const TMOE_TEST_REAL*,
                                                         const TMOE_TEST_REAL*, const std::int32_t*,
                                                         const TMOE_TEST_REAL*, const TMOE_TEST_REAL*,
                                                         const TMOE_TEST_REAL*, TMOE_TEST_REAL*);
template void tmoe::AdamW::update<TMOE_TEST_REAL>(TMOE_TEST_REAL*, const TMOE_TEST_REAL*, TMOE_TEST_REAL**,
                                                  std::int64_t, double, double, std::int64_t) const;
template void tmoe::Serial::reduce_gradients<TMOE_TEST_REAL>(TMOE_TEST_REAL*, const ParamRegistry&);
template struct tmoe::TransformerBlock<CausalAttention<Rope>, MoE<SwiGLU, TopK>>::impl<TMOE_TEST_REAL, backend::Cpu,
                                                                                     RmsNorm>;
template class tmoe::DecoderLM<test::MoeBlock, RmsNorm>::impl<TMOE_TEST_REAL, backend::Cpu>;
template class tmoe::Trainer<test::MoeModel, AdamW, TMOE_TEST_PRECISION, Serial, backend::Cpu>;

namespace {
using Combos = test::CombosOf<boost::mp11::mp_list<TMOE_TEST_PRECISION>>;
using ComboTuple = boost::mp11::mp_rename<Combos, std::tuple>;  // Boost.Test takes std::tuple type lists
}  // namespace

BOOST_AUTO_TEST_CASE(every_member_satisfies_its_role) {
  BOOST_TEST(test::check_roles<Combos>() == test::kRoleMembers + 16);
}

BOOST_AUTO_TEST_CASE_TEMPLATE(train_step_evaluate_generate, C, ComboTuple) {
  const Config cfg = test::tiny_config();
  test::check(test::run<C>(cfg), cfg);
}
