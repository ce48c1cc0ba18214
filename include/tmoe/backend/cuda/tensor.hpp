#pragma once
// Tensor<T, CudaSpace>: an owning device buffer from the context's caching allocator, with
// the interface of the host Tensor (resize zeroes, ensure keeps contents, release gives the
// block back). Host <-> device copies are explicit: copy_to_device, copy_to_host, and the
// to_device / to_host conveniences, all on the context's stream; the *_host forms wait for
// the copy so the host buffer is ready on return.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tmoe/backend/cuda/check.hpp"
#include "tmoe/backend/cuda/context.hpp"
#include "tmoe/tensor/tensor.hpp"

namespace tmoe {

template <class T>
class Tensor<T, CudaSpace> {
 public:
  Tensor() = default;
  explicit Tensor(Shape s) { resize(s); }
  explicit Tensor(std::int64_t n) { resize(Shape{n}); }
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;
  Tensor(Tensor&& o) noexcept : data_(o.data_), capacity_(o.capacity_), shape_(o.shape_) {
    o.data_ = nullptr;
    o.capacity_ = 0;
    o.shape_ = Shape{0};
  }
  Tensor& operator=(Tensor&& o) noexcept {
    if (this != &o) {
      release();
      data_ = o.data_, capacity_ = o.capacity_, shape_ = o.shape_;
      o.data_ = nullptr, o.capacity_ = 0, o.shape_ = Shape{0};
    }
    return *this;
  }
  ~Tensor() { release(); }

  void resize(Shape s) {
    ensure_exact(s);
    zero();
  }
  // Shape for a scratch buffer that is fully overwritten; capacity grows geometrically.
  void ensure(Shape s) {
    const std::int64_t n = s.numel();
    if (n > capacity_) allocate(std::max(n, capacity_ + capacity_ / 2));
    shape_ = s;
  }
  void release() {
    if (data_) backend::cuda::Context::current().allocator().deallocate(data_);
    data_ = nullptr;
    capacity_ = 0;
    shape_ = Shape{0};
  }
  void zero() {
    if (numel() > 0)
      TMOE_CUDA_CHECK(cudaMemsetAsync(data_, 0, sizeof(T) * static_cast<std::size_t>(numel()),
                                      backend::cuda::Context::current().stream()));
  }
  // Every byte set to `byte` (0xff makes fp32/bf16/fp16 NaN: tests poison outputs with it).
  void fill_bytes(int byte) {
    if (numel() > 0)
      TMOE_CUDA_CHECK(cudaMemsetAsync(data_, byte, sizeof(T) * static_cast<std::size_t>(numel()),
                                      backend::cuda::Context::current().stream()));
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  std::int64_t numel() const { return shape_.numel(); }
  const Shape& shape() const { return shape_; }
  std::int64_t capacity_bytes() const { return capacity_ * static_cast<std::int64_t>(sizeof(T)); }
  View<T, CudaSpace> view() { return {data_, shape_}; }

 private:
  void ensure_exact(Shape s) {
    if (s.numel() > capacity_) allocate(s.numel());
    shape_ = s;
  }
  void allocate(std::int64_t n) {
    release();
    auto& a = backend::cuda::Context::current().allocator();
    data_ = static_cast<T*>(a.allocate(sizeof(T) * static_cast<std::size_t>(n)));
    capacity_ = n;
  }

  T* data_ = nullptr;
  std::int64_t capacity_ = 0;
  Shape shape_{0};
};

namespace backend::cuda {

template <class T>
using DeviceTensor = Tensor<T, CudaSpace>;

template <class T>
void copy_to_device(const T* host, std::int64_t n, T* device) {
  if (n > 0)
    TMOE_CUDA_CHECK(cudaMemcpyAsync(device, host, sizeof(T) * static_cast<std::size_t>(n), cudaMemcpyHostToDevice,
                                    Context::current().stream()));
  // The host buffer may be freed or changed once this returns.
  Context::current().synchronize();
}

template <class T>
void copy_to_host(const T* device, std::int64_t n, T* host) {
  if (n > 0)
    TMOE_CUDA_CHECK(cudaMemcpyAsync(host, device, sizeof(T) * static_cast<std::size_t>(n), cudaMemcpyDeviceToHost,
                                    Context::current().stream()));
  Context::current().synchronize();
}

template <class T>
void copy_on_device(const T* src, std::int64_t n, T* dst) {
  if (n > 0)
    TMOE_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(T) * static_cast<std::size_t>(n), cudaMemcpyDeviceToDevice,
                                    Context::current().stream()));
}

template <class T>
DeviceTensor<T> to_device(const T* host, Shape s) {
  DeviceTensor<T> d;
  d.ensure(s);
  copy_to_device(host, s.numel(), d.data());
  return d;
}
template <class T>
DeviceTensor<T> to_device(const std::vector<T>& host) {
  return to_device(host.data(), Shape{static_cast<std::int64_t>(host.size())});
}
template <class T>
std::vector<T> to_host(const DeviceTensor<T>& d) {
  std::vector<T> h(static_cast<std::size_t>(d.numel()));
  copy_to_host(d.data(), d.numel(), h.data());
  return h;
}
template <class T>
std::vector<T> to_host(const T* device, std::int64_t n) {
  std::vector<T> h(static_cast<std::size_t>(n));
  copy_to_host(device, n, h.data());
  return h;
}

}  // namespace backend::cuda
}  // namespace tmoe
