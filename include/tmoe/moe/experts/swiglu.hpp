#pragma once
// SwiGLU feed-forward (Shazeer 2020): y = (silu(x W1ᵀ) ⊙ x W3ᵀ) W2ᵀ, W1, W3 (H, C), W2 (C, H).
// Used as a routed expert (over its token slice) and as a dense FFN (over all tokens). As a
// routed expert in training, set_dropout() drops hidden units h (before W2), layers/dropout.hpp.
#include <cstdint>
#include <string>

#include "tmoe/layers/dropout.hpp"
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
    BackendTensor<B, T> a1, a3, hid, dhid, d1, d3;  // (n, H)
    const T* x = nullptr;
    std::int64_t n = 0;
    ExpertDropout drop;  // for the next forward and its backward (inactive by default)
    std::uint64_t element0 = 0;  // this rank's first hidden unit (tensor parallelism)

    bool recompute_hidden = false;  // selective recomputation: a1, a3, hid rebuilt in backward

    void set_dropout(const ExpertDropout& d) { drop = d; }
    void set_selective(bool on) { recompute_hidden = on; }
    void release() {
      for (auto* t : {&a1, &a3, &hid, &dhid, &d1, &d3}) t->release();
    }
    // Activation floats per routed row: six (rows, H) buffers.
    static std::int64_t floats_per_row(const ExpertShape& s) { return 6 * s.hidden; }

    void declare(ParamRegistry& r, const std::string& name, const ExpertShape& s) {
      using layers::TensorSplit;
      const TensorSplit col{TensorSplit::kColumn, s.tp_size, s.tp_rank}, row{TensorSplit::kRow, s.tp_size, s.tp_rank};
      w1.declare(r, name + ".w1", s.d_model, s.hidden, s.bias, s.tags, s.std, col);
      w3.declare(r, name + ".w3", s.d_model, s.hidden, s.bias, s.tags, s.std, col);
      w2.declare(r, name + ".w2", s.hidden, s.d_model, s.bias, s.tags, s.out_std, row);
      element0 = static_cast<std::uint64_t>(s.tp_rank) * static_cast<std::uint64_t>(w1.out);
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
      hidden_forward();
      w2.forward(hid.data(), y, rows);
      if (recompute_hidden) release();
    }
    // a1 = x W1ᵀ, a3 = x W3ᵀ, hid = drop(silu(a1) ⊙ a3): from the saved input alone, so the
    // selective recomputation repeats it bit for bit.
    void hidden_forward() {
      const std::int64_t hdim = w1.out, rows = n;
      const T* in = x;
      a1.ensure(Shape{rows, hdim});
      a3.ensure(Shape{rows, hdim});
      hid.ensure(Shape{rows, hdim});
      w1.forward(in, a1.data(), rows);
      w3.forward(in, a3.data(), rows);
      T* ph = hid.data();
      B::swiglu_forward(a1.data(), a3.data(), ph, rows, hdim);
      if (drop.hidden.active())
        layers::dropout_rows<B>(drop.hidden, drop.token_offset, drop.tokens, drop.element_offset + element0, ph, ph, rows, hdim);
    }

    void backward(const T* dy, T* dx, bool accumulate_dx) {
      const std::int64_t hdim = w1.out, rows = n;
      if (recompute_hidden) hidden_forward();
      dhid.ensure(Shape{rows, hdim});
      d1.ensure(Shape{rows, hdim});
      d3.ensure(Shape{rows, hdim});
      w2.backward(hid.data(), dy, dhid.data(), rows, false);
      if (drop.hidden.active())
        layers::dropout_rows<B>(drop.hidden, drop.token_offset, drop.tokens, drop.element_offset + element0, dhid.data(),
                                dhid.data(), rows, hdim);
      T *pd1 = d1.data(), *pd3 = d3.data();
      B::swiglu_backward(dhid.data(), a1.data(), a3.data(), pd1, pd3, rows, hdim);
      w1.backward(x, pd1, dx, rows, accumulate_dx);
      w3.backward(x, pd3, dx, rows, true);
      if (recompute_hidden) release();
    }

    static std::int64_t weights(const ExpertShape& s) { return 3 * s.d_model * s.hidden; }
  };
};

}  // namespace tmoe

#include "tmoe/core/concepts.hpp"
static_assert(tmoe::Expert<tmoe::SwiGLU>);
