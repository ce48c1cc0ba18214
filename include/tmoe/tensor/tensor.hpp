#pragma once
// Typed buffers and views with shapes. Memory spaces are types (Kokkos style): HostSpace
// now, CudaSpace with the CUDA backend. Views are row-major and contiguous; a view never
// owns memory. Buffers are 64-byte aligned so vector loads never split a cache line.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <new>
#include <string>

#include "tmoe/core/error.hpp"

namespace tmoe {

struct HostSpace {};

constexpr int kMaxRank = 4;

struct Shape {
  std::array<std::int64_t, kMaxRank> dims{};
  int rank = 0;

  Shape() = default;
  Shape(std::initializer_list<std::int64_t> d) {
    if (d.size() > kMaxRank) throw Error("shape has more than 4 dimensions", "tmoe::Shape", "rank <= 4");
    for (auto v : d) dims[rank++] = v;
  }
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int i = 0; i < rank; ++i) n *= dims[i];
    return n;
  }
  std::int64_t operator[](int i) const { return dims[i]; }
  bool operator==(const Shape& o) const {
    if (rank != o.rank) return false;
    for (int i = 0; i < rank; ++i)
      if (dims[i] != o.dims[i]) return false;
    return true;
  }
  std::string str() const {
    std::string s = "(";
    for (int i = 0; i < rank; ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
    return s + ")";
  }
};

template <class T, class Space = HostSpace>
struct View {
  T* ptr = nullptr;
  Shape shape;
  T* data() const { return ptr; }
  std::int64_t numel() const { return shape.numel(); }
  T& operator[](std::int64_t i) const { return ptr[i]; }
};

namespace detail {
struct AlignedFree {
  void operator()(void* p) const { ::operator delete(p, std::align_val_t{64}); }
};
}  // namespace detail

// An owning host buffer. resize() zeroes it (reallocating only when it grows); ensure()
// sets the shape of a scratch buffer without zeroing.
template <class T, class Space = HostSpace>
class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(Shape s) { resize(s); }
  explicit Tensor(std::int64_t n) { resize(Shape{n}); }

  void resize(Shape s) {
    shape_ = s;
    const std::int64_t n = s.numel();
    if (n > capacity_) {
      data_.reset(static_cast<T*>(::operator new(sizeof(T) * static_cast<std::size_t>(n), std::align_val_t{64})));
      capacity_ = n;
    }
    zero();
  }
  // Sets the shape for a scratch buffer that is fully overwritten: contents are not kept
  // or zeroed, and capacity grows geometrically, so buffers whose size varies from step
  // to step (an expert's token slice) stop reallocating after a few steps.
  void ensure(Shape s) {
    const std::int64_t n = s.numel();
    if (n > capacity_) {
      const std::int64_t cap = std::max(n, capacity_ + capacity_ / 2);
      data_.reset(static_cast<T*>(::operator new(sizeof(T) * static_cast<std::size_t>(cap), std::align_val_t{64})));
      capacity_ = cap;
    }
    shape_ = s;
  }
  // Frees the memory (activation recomputation drops saved activations between uses).
  void release() {
    data_.reset();
    capacity_ = 0;
    shape_ = Shape{0};
  }
  // Bytes held, which may exceed numel() · sizeof(T) after a geometric ensure().
  std::int64_t capacity_bytes() const { return capacity_ * static_cast<std::int64_t>(sizeof(T)); }
  void zero() {
    if (capacity_ > 0) std::memset(static_cast<void*>(data_.get()), 0, sizeof(T) * static_cast<std::size_t>(numel()));
  }
  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  std::int64_t numel() const { return shape_.numel(); }
  const Shape& shape() const { return shape_; }
  T& operator[](std::int64_t i) { return data_.get()[i]; }
  const T& operator[](std::int64_t i) const { return data_.get()[i]; }
  View<T, Space> view() { return {data_.get(), shape_}; }

 private:
  std::unique_ptr<T, detail::AlignedFree> data_;
  std::int64_t capacity_ = 0;
  Shape shape_{0};
};

}  // namespace tmoe
