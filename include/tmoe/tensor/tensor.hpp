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
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>

#include "tmoe/core/error.hpp"

namespace tmoe {

struct HostSpace {};
// Device memory of the CUDA backend; Tensor<T, CudaSpace> is defined in
// backend/cuda/tensor.hpp (nvcc translation units only).
struct CudaSpace {};

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

// Buffers given back by Tensor::release() (activation recomputation frees and refills the
// same shapes every step). Reusing them avoids returning the memory to the system and
// faulting fresh pages in again on the next allocation, which made full recomputation
// 5.7x slower than none instead of ~1.3x (docs/benchmarks.md). A request takes the smallest
// cached block of at least its size and at most twice it. The cache holds only what was
// released; blocks whose sizes do not match later requests (routed experts' slices vary
// with the routing) make full recomputation's peak ~1.2x its prediction
// (tests/unit/test_memory_report.cpp).
class BufferPool {
 public:
  static BufferPool& instance() {
    static BufferPool pool;
    return pool;
  }
  // A cached block for `bytes`, or null; *got = its size.
  void* take(std::size_t bytes, std::size_t* got) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.lower_bound(bytes);
    if (it == free_.end() || it->first > 2 * bytes) return nullptr;
    void* p = it->second;
    *got = it->first;
    cached_ -= it->first;
    free_.erase(it);
    return p;
  }
  void give(void* p, std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.emplace(bytes, p);
    cached_ += bytes;
  }
  std::size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }
  // Returns every cached block to the system.
  void trim() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [bytes, p] : free_) AlignedFree{}(p);
    free_.clear();
    cached_ = 0;
  }
  ~BufferPool() { trim(); }

 private:
  std::mutex mutex_;
  std::multimap<std::size_t, void*> free_;
  std::size_t cached_ = 0;
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
    if (n > capacity_) allocate(n);
    zero();
  }
  // Sets the shape for a scratch buffer that is fully overwritten: contents are not kept
  // or zeroed, and capacity grows geometrically, so buffers whose size varies from step
  // to step (an expert's token slice) stop reallocating after a few steps.
  void ensure(Shape s) {
    const std::int64_t n = s.numel();
    if (n > capacity_) allocate(std::max(n, capacity_ + capacity_ / 2));
    shape_ = s;
  }
  // Gives the memory to detail::BufferPool, where the next allocation of a similar size
  // finds it (activation recomputation drops saved activations between uses).
  void release() {
    if (capacity_ > 0) detail::BufferPool::instance().give(data_.release(), bytes_of(capacity_));
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
  static std::size_t bytes_of(std::int64_t n) { return sizeof(T) * static_cast<std::size_t>(n); }
  // At least n elements: a released block from the pool if one fits, else new memory.
  void allocate(std::int64_t n) {
    std::size_t got = 0;
    if (void* p = detail::BufferPool::instance().take(bytes_of(n), &got)) {
      data_.reset(static_cast<T*>(p));
      capacity_ = static_cast<std::int64_t>(got / sizeof(T));
      return;
    }
    data_.reset(static_cast<T*>(::operator new(bytes_of(n), std::align_val_t{64})));
    capacity_ = n;
  }

  std::unique_ptr<T, detail::AlignedFree> data_;
  std::int64_t capacity_ = 0;
  Shape shape_{0};
};

// A buffer in backend B's memory (host memory for backend::Cpu, device memory for
// backend::Cuda): what layers hold their activations in.
template <class B, class T>
using BackendTensor = Tensor<T, typename B::Space>;

}  // namespace tmoe
