#pragma once
// A dense feed-forward layer: one expert policy applied to every token (hidden width
// model.d_ff, biases when model.linear_bias).
#include <cmath>
#include <cstdint>
#include <span>
#include <string>

#include "tmoe/core/concepts.hpp"
#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/layers/dropout.hpp"
#include "tmoe/layers/tensor_group.hpp"
#include "tmoe/moe/experts/expert_shape.hpp"
#include "tmoe/moe/routing.hpp"
#include "tmoe/tensor/tensor.hpp"

namespace tmoe {

template <class ExpertP>
struct Dense {
  static_assert(Expert<ExpertP>, "tmoe: Dense<Expert>: the argument is not an Expert policy (see docs/concepts/expert.md)");
  static constexpr const char* name = "dense";
  static constexpr bool is_moe = false;
  using expert_policy = ExpertP;
  using dense_policy = Dense;

  template <class T, class B>
  struct impl {
    typename ExpertP::template impl<T, B> ffn;
    ExpertShape shape;
    TensorGroup<T>* tg = nullptr;
    BackendTensor<B, T> dxs;  // a partial input gradient to add (tensor parallelism, accumulate_dx)
    void declare(ParamRegistry& r, const std::string& name, const ModelConfig& cfg) {
      shape = ExpertShape{cfg.d_model, cfg.d_ff, cfg.linear_bias, kTagFfn, cfg.init_std,
                          cfg.init_std / std::sqrt(2.0 * static_cast<double>(cfg.n_layers)), cfg.gelu_exact};
      if constexpr (requires { ExpertP::sequence_aware; })
        if (cfg.tp_size > 1)
          throw Error(detail::cat("a dense ", ExpertP::name, " feed-forward under tensor parallelism"), "parallel.tensor",
                      "parallel.tensor = 1 for this expert policy (SwiGLU and GeluFFN split their hidden units)");
      shape.tp_size = static_cast<int>(cfg.tp_size);
      shape.tp_rank = static_cast<int>(cfg.tp_rank);
      ffn.declare(r, name, shape);
    }
    void bind(const ParamRegistry& r, T* p, T* g) { ffn.bind(r, p, g); }
    // Tensor parallelism: this rank holds a slice of the hidden units; the output and the
    // input's gradient are all-reduced over the group.
    void set_tensor_group(TensorGroup<T>* g) { tg = g; }
    void forward(const T* in, T* out, std::int64_t n, const RouteContext& = {}) {
      ffn.forward(in, out, n);
      tensor_allreduce(tg, out, n * shape.d_model);
    }
    void backward(const T* dout, T* dx, bool accumulate_dx, double) {
      if (!tg || tg->size() == 1) return ffn.backward(dout, dx, accumulate_dx);
      const std::int64_t n = ffn.n * shape.d_model;
      T* target = dx;
      if (accumulate_dx) {  // the partial gradient is summed first, then added
        dxs.ensure(Shape{n});
        target = dxs.data();
      }
      ffn.backward(dout, target, false);
      tensor_allreduce(tg, target, n);
      if (accumulate_dx) layers::add_into<B>(target, dx, n);
    }
    double loss() const { return 0.0; }
    void set_selective(bool) {}  // a dense layer keeps its activations under selective recompute
    void release() { ffn.release(); }
    std::int64_t activation_bytes(std::int64_t rows, bool) const {
      return rows * ExpertP::template impl<T, B>::floats_per_row(shape) * static_cast<std::int64_t>(sizeof(T));
    }
    std::span<const std::int64_t> expert_counts() const { return {}; }
    template <class SumFn>
    void after_step(SumFn&&) {}
    std::int64_t active_weights() const { return ExpertP::template impl<T, B>::weights(shape); }
  };
};

}  // namespace tmoe
