#pragma once
// The parameter registry: every parameter of a model is a named, shaped, tagged view into
// one flat buffer (and the same view into the flat gradient buffer). Optimizers, weight
// decay groups, clipping, checkpoints, parity tests and (later) all-reduce buckets and ZeRO
// shards all walk this list; nothing keeps a parallel list of names (DESIGN.md 4).
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "tmoe/core/error.hpp"
#include "tmoe/tensor/tensor.hpp"

namespace tmoe {

enum Tag : std::uint32_t {
  kTagEmbedding = 1u << 0,
  kTagPosition = 1u << 1,
  kTagNorm = 1u << 2,
  kTagBias = 1u << 3,
  kTagAttention = 1u << 4,
  kTagFfn = 1u << 5,
  kTagRouter = 1u << 6,
  kTagExpert = 1u << 7,
  kTagHead = 1u << 8,
  kTagBuffer = 1u << 9,  // state kept and checkpointed with the parameters but not trained:
                         // no gradient, no optimizer update (e.g. SigmoidBias's router bias)
};

inline std::string tag_names(std::uint32_t tags) {
  static constexpr const char* names[] = {"embedding", "position", "norm", "bias", "attention",
                                          "ffn",       "router",   "expert", "head",     "buffer"};
  std::string s;
  for (int i = 0; i < 10; ++i)
    if (tags & (1u << i)) s += (s.empty() ? "" : ",") + std::string(names[i]);
  return s;
}

enum class Init { kNormal, kOnes, kZeros };

// How a tensor-parallel rank holds its share of a parameter (Megatron column/row split).
// Along dimension `dim` of the whole tensor, of length F, there are `blocks` equal blocks
// (3 for a fused q|k|v projection: each of q, k, v is split by heads); each block is cut
// into `parts` equal pieces, and this rank holds piece `index` of every block, in block
// order. dim = -1: the rank holds the whole tensor (replicated).
struct Split {
  int dim = -1, parts = 1, index = 0, blocks = 1;
  bool active() const { return dim >= 0 && parts > 1; }
};

struct ParamInfo {
  std::string name;
  Shape shape;
  std::int64_t offset = 0;  // in elements, into the flat buffers
  std::uint32_t tags = 0;
  Init init = Init::kNormal;
  double init_std = 0.0;    // for Init::kNormal
  // The parameter's index in the whole model's registry, whatever this rank holds: under
  // expert parallelism a rank declares only its experts, and the others are skipped, so
  // initialisation (keyed by it) and names do not depend on the layout.
  int global_index = 0;
  Split split;  // tensor parallelism: this rank's share of `full`
  Shape full;   // the whole model's shape (= shape when not split)
  std::int64_t numel() const { return shape.numel(); }
  bool has(Tag t) const { return (tags & t) != 0; }
  bool is_split() const { return split.active(); }
  // The index in the whole tensor (row-major, shape `full`) of this rank's element i.
  std::int64_t full_index(std::int64_t i) const {
    if (!split.active()) return i;
    std::int64_t inner = 1;
    for (int d = split.dim + 1; d < shape.rank; ++d) inner *= shape[d];
    const std::int64_t len = shape[split.dim], flen = full[split.dim];
    const std::int64_t piece = len / split.blocks, fblock = flen / split.blocks;
    const std::int64_t outer = i / (len * inner), at = (i / inner) % len, in = i % inner;
    const std::int64_t fat = (at / piece) * fblock + split.index * piece + at % piece;
    return (outer * flen + fat) * inner + in;
  }
};

// Copies this rank's share of a whole tensor (shape p.full) into `mine`, or (place) the
// share into the whole tensor.
template <class T>
void take_share(const ParamInfo& p, const T* whole, T* mine) {
  for (std::int64_t i = 0; i < p.numel(); ++i) mine[i] = whole[p.full_index(i)];
}
template <class T>
void place_share(const ParamInfo& p, const T* mine, T* whole) {
  for (std::int64_t i = 0; i < p.numel(); ++i) whole[p.full_index(i)] = mine[i];
}

class ParamRegistry {
 public:
  // Declares a parameter; returns its index. Offsets are assigned in declaration order and
  // rounded up to 16 elements so every parameter starts on a 64-byte boundary.
  int add(std::string name, Shape shape, std::uint32_t tags, Init init, double init_std = 0.0) {
    if (index_.count(name)) throw Error("parameter declared twice: " + name, "tmoe::ParamRegistry");
    ParamInfo p{std::move(name), shape, total_, tags, init, init_std, next_global_++, Split{}, shape};
    total_ += (p.numel() + 15) / 16 * 16;
    index_[p.name] = static_cast<int>(params_.size());
    params_.push_back(std::move(p));
    return static_cast<int>(params_.size()) - 1;
  }
  // As add(), for this tensor-parallel rank's share of a parameter of shape `full`, split
  // as `split` says (an inactive split declares the whole tensor).
  int add_split(std::string name, Shape full, Split split, std::uint32_t tags, Init init, double init_std = 0.0) {
    Shape mine = full;
    if (split.active()) {
      const std::int64_t f = full[split.dim];
      if (f % (split.blocks * split.parts) != 0)
        throw Error(detail::cat("parameter ", name, " of shape ", full.str(), ": dimension ", split.dim, " (", f,
                                ") is not divisible by ", split.blocks, " block(s) x ", split.parts, " tensor-parallel ranks"),
                    "tmoe::ParamRegistry", "widths divisible by parallel.tensor");
      mine.dims[static_cast<std::size_t>(split.dim)] = f / split.parts;
    }
    const int i = add(std::move(name), mine, tags, init, init_std);
    params_.back().split = split;
    params_.back().full = full;
    return i;
  }
  // Counts `count` parameters another rank declares (expert parallelism) without holding them.
  void skip(int count) { next_global_ += count; }
  int global_size() const { return next_global_; }  // parameters of the whole model
  const std::vector<ParamInfo>& params() const { return params_; }
  const ParamInfo& operator[](int i) const { return params_[static_cast<std::size_t>(i)]; }
  int size() const { return static_cast<int>(params_.size()); }
  std::int64_t total() const { return total_; }  // flat buffer length (with alignment padding)
  std::int64_t count() const {                   // real parameter count
    std::int64_t n = 0;
    for (auto& p : params_) n += p.numel();
    return n;
  }
  const ParamInfo* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &params_[static_cast<std::size_t>(it->second)];
  }

 private:
  std::vector<ParamInfo> params_;
  std::unordered_map<std::string, int> index_;
  std::int64_t total_ = 0;
  int next_global_ = 0;
};

// A layer's handle on one parameter: the registry index, then the bound pointers.
template <class T>
struct Param {
  int index = -1;
  T* w = nullptr;  // value
  T* g = nullptr;  // gradient
  void bind(const ParamRegistry& r, T* params, T* grads) {
    w = params + r[index].offset;
    g = grads + r[index].offset;
  }
  explicit operator bool() const { return index >= 0; }
};

}  // namespace tmoe
