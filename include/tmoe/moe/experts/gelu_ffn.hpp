#pragma once
#include <cstdint>
#include <string>

#include "tmoe/layers/linear.hpp"
#include "tmoe/layers/pointwise.hpp"
#include "tmoe/tensor/tensor.hpp"

#include "tmoe/moe/experts/expert_shape.hpp"

namespace tmoe {

// GELU feed-forward: y = gelu(x W1ᵀ) W2ᵀ; GELU is the tanh approximation unless
// ExpertShape::gelu_exact (a run-time choice on one code path).
struct GeluFFN {
  static constexpr const char* name = "gelu_ffn";
  static constexpr int matrices = 2;

  template <class T, class B>
  struct impl {
    layers::Linear<T, B> w1, w2;
    Tensor<T> a1, hid, dhid;  // (n, H)
    const T* x = nullptr;
    std::int64_t n = 0;
    bool exact = false;

    void declare(ParamRegistry& r, const std::string& name, const ExpertShape& s) {
      exact = s.gelu_exact;
      w1.declare(r, name + ".w1", s.d_model, s.hidden, s.bias, s.tags, s.std);
      w2.declare(r, name + ".w2", s.hidden, s.d_model, s.bias, s.tags, s.out_std);
    }
    void bind(const ParamRegistry& r, T* p, T* g) {
      w1.bind(r, p, g);
      w2.bind(r, p, g);
    }

    void forward(const T* in, T* y, std::int64_t rows) {
      x = in;
      n = rows;
      const std::int64_t hdim = w1.out;
      a1.ensure(Shape{rows, hdim});
      hid.ensure(Shape{rows, hdim});
      w1.forward(in, a1.data(), rows);
      T *pa = a1.data(), *ph = hid.data();
      const bool ex = exact;
      B::for_rows(rows, [=](std::int64_t i) {
        for (std::int64_t j = i * hdim; j < (i + 1) * hdim; ++j)
          ph[j] = ex ? layers::GeluErf::forward(pa[j]) : layers::GeluTanh::forward(pa[j]);
      });
      w2.forward(ph, y, rows);
    }

    void backward(const T* dy, T* dx, bool accumulate_dx) {
      const std::int64_t hdim = w1.out, rows = n;
      dhid.ensure(Shape{rows, hdim});
      w2.backward(hid.data(), dy, dhid.data(), rows, false);
      T *pa = a1.data(), *pdh = dhid.data();
      const bool ex = exact;
      B::for_rows(rows, [=](std::int64_t i) {
        for (std::int64_t j = i * hdim; j < (i + 1) * hdim; ++j)
          pdh[j] *= ex ? layers::GeluErf::derivative(pa[j]) : layers::GeluTanh::derivative(pa[j]);
      });
      w1.backward(x, pdh, dx, rows, accumulate_dx);
    }

    static std::int64_t weights(const ExpertShape& s) { return 2 * s.d_model * s.hidden; }
  };
};

}  // namespace tmoe

#include "tmoe/core/concepts.hpp"
static_assert(tmoe::Expert<tmoe::GeluFFN>);
