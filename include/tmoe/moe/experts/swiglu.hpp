#pragma once
// SwiGLU feed-forward (Shazeer 2020): y = (silu(x W1ᵀ) ⊙ x W3ᵀ) W2ᵀ, W1, W3 (H, C), W2 (C, H).
// Used as a routed expert (over its token slice) and as a dense FFN (over all tokens).
#include <cstdint>
#include <string>

#include "tmoe/layers/linear.hpp"
#include "tmoe/tensor/tensor.hpp"

#include "tmoe/moe/experts/expert_shape.hpp"

namespace tmoe {

struct SwiGLU {
  static constexpr const char* name = "swiglu";
  static constexpr int matrices = 3;

  template <class T, class B>
  struct impl {
    layers::Linear<T, B> w1, w3, w2;
    Tensor<T> a1, a3, hid, dhid, d1, d3;  // (n, H)
    const T* x = nullptr;
    std::int64_t n = 0;

    void declare(ParamRegistry& r, const std::string& name, const ExpertShape& s) {
      w1.declare(r, name + ".w1", s.d_model, s.hidden, s.bias, s.tags, s.std);
      w3.declare(r, name + ".w3", s.d_model, s.hidden, s.bias, s.tags, s.std);
      w2.declare(r, name + ".w2", s.hidden, s.d_model, s.bias, s.tags, s.out_std);
    }
    void bind(const ParamRegistry& r, T* p, T* g) {
      w1.bind(r, p, g);
      w3.bind(r, p, g);
      w2.bind(r, p, g);
    }

    // x (n, C) -> y (n, C)
    void forward(const T* in, T* y, std::int64_t rows) {
      x = in;
      n = rows;
      const std::int64_t hdim = w1.out;
      a1.ensure(Shape{rows, hdim});
      a3.ensure(Shape{rows, hdim});
      hid.ensure(Shape{rows, hdim});
      w1.forward(in, a1.data(), rows);
      w3.forward(in, a3.data(), rows);
      T* ph = hid.data();
      B::swiglu_forward(a1.data(), a3.data(), ph, rows, hdim);
      w2.forward(ph, y, rows);
    }

    void backward(const T* dy, T* dx, bool accumulate_dx) {
      const std::int64_t hdim = w1.out, rows = n;
      dhid.ensure(Shape{rows, hdim});
      d1.ensure(Shape{rows, hdim});
      d3.ensure(Shape{rows, hdim});
      w2.backward(hid.data(), dy, dhid.data(), rows, false);
      T *pd1 = d1.data(), *pd3 = d3.data();
      B::swiglu_backward(dhid.data(), a1.data(), a3.data(), pd1, pd3, rows, hdim);
      w1.backward(x, pd1, dx, rows, accumulate_dx);
      w3.backward(x, pd3, dx, rows, true);
    }

    static std::int64_t weights(const ExpertShape& s) { return 3 * s.d_model * s.hidden; }
  };
};

}  // namespace tmoe

#include "tmoe/core/concepts.hpp"
static_assert(tmoe::Expert<tmoe::SwiGLU>);
