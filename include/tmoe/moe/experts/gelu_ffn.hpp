#pragma once
#include <cstdint>

#include "tmoe/core/macros.hpp"
#include <string>

#include "tmoe/layers/dropout.hpp"
#include "tmoe/layers/linear.hpp"
#include "tmoe/layers/pointwise.hpp"
#include "tmoe/tensor/tensor.hpp"

#include "tmoe/moe/experts/expert_shape.hpp"

namespace tmoe {

// GELU feed-forward: y = gelu(x W1ᵀ) W2ᵀ; GELU is the tanh approximation unless
// ExpertShape::gelu_exact (a run-time choice on one code path). As a routed expert in
// training, set_dropout() drops hidden units gelu(x W1ᵀ) (before W2), layers/dropout.hpp.
struct GeluFFN {
  static constexpr const char* name = "gelu_ffn";
  static constexpr int matrices = 2;

  template <class T, class B>
  struct impl {
    layers::Linear<T, B> w1, w2;
    BackendTensor<B, T> a1, hid, dhid;  // (n, H)
    const T* x = nullptr;
    std::int64_t n = 0;
    bool exact = false;
    ExpertDropout drop;  // for the next forward and its backward (inactive by default)
    std::uint64_t element0 = 0;  // this rank's first hidden unit (tensor parallelism)

    bool recompute_hidden = false;  // selective recomputation: a1, hid rebuilt in backward

    void set_dropout(const ExpertDropout& d) { drop = d; }
    void set_selective(bool on) { recompute_hidden = on; }
    void release() {
      for (auto* t : {&a1, &hid, &dhid}) t->release();
    }
    static std::int64_t floats_per_row(const ExpertShape& s) { return 3 * s.hidden; }

    void declare(ParamRegistry& r, const std::string& name, const ExpertShape& s) {
      exact = s.gelu_exact;
      using layers::TensorSplit;
      w1.declare(r, name + ".w1", s.d_model, s.hidden, s.bias, s.tags, s.std, TensorSplit{TensorSplit::kColumn, s.tp_size, s.tp_rank});
      w2.declare(r, name + ".w2", s.hidden, s.d_model, s.bias, s.tags, s.out_std, TensorSplit{TensorSplit::kRow, s.tp_size, s.tp_rank});
      element0 = static_cast<std::uint64_t>(s.tp_rank) * static_cast<std::uint64_t>(w1.out);
    }
    void bind(const ParamRegistry& r, T* p, T* g) {
      w1.bind(r, p, g);
      w2.bind(r, p, g);
    }

    void forward(const T* in, T* y, std::int64_t rows) {
      x = in;
      n = rows;
      hidden_forward();
      w2.forward(hid.data(), y, rows);
      if (recompute_hidden) release();
    }
    // a1 = x W1ᵀ, hid = drop(gelu(a1)), from the saved input alone.
    void hidden_forward() {
      const std::int64_t hdim = w1.out, rows = n;
      const T* in = x;
      a1.ensure(Shape{rows, hdim});
      hid.ensure(Shape{rows, hdim});
      w1.forward(in, a1.data(), rows);
      T *pa = a1.data(), *ph = hid.data();
      const bool ex = exact;
      B::for_rows(rows, [=] TMOE_LAMBDA (std::int64_t i) {
        for (std::int64_t j = i * hdim; j < (i + 1) * hdim; ++j)
          ph[j] = ex ? layers::GeluErf::forward(pa[j]) : layers::GeluTanh::forward(pa[j]);
      });
      if (drop.hidden.active())
        layers::dropout_rows<B>(drop.hidden, drop.token_offset, drop.tokens, drop.element_offset + element0, ph, ph, rows, hdim);
    }

    void backward(const T* dy, T* dx, bool accumulate_dx) {
      const std::int64_t hdim = w1.out, rows = n;
      if (recompute_hidden) hidden_forward();
      dhid.ensure(Shape{rows, hdim});
      w2.backward(hid.data(), dy, dhid.data(), rows, false);
      if (drop.hidden.active())
        layers::dropout_rows<B>(drop.hidden, drop.token_offset, drop.tokens, drop.element_offset + element0, dhid.data(),
                                dhid.data(), rows, hdim);
      T *pa = a1.data(), *pdh = dhid.data();
      const bool ex = exact;
      B::for_rows(rows, [=] TMOE_LAMBDA (std::int64_t i) {
        for (std::int64_t j = i * hdim; j < (i + 1) * hdim; ++j)
          pdh[j] *= ex ? layers::GeluErf::derivative(pa[j]) : layers::GeluTanh::derivative(pa[j]);
      });
      w1.backward(x, pdh, dx, rows, accumulate_dx);
      if (recompute_hidden) release();
    }

    static std::int64_t weights(const ExpertShape& s) { return 2 * s.d_model * s.hidden; }
  };
};

}  // namespace tmoe

#include "tmoe/core/concepts.hpp"
static_assert(tmoe::Expert<tmoe::GeluFFN>);
