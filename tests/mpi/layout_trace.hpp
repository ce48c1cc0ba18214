#pragma once
// What the layout tests compare between one process and a grid: the losses and gradient
// norms of every step, and each parameter (with its first optimizer slot) under its global
// name. A rank of a grid holds only part of the model (a pipeline stage, a slice of each
// tensor-parallel parameter); `expect_match` compares that part with the same elements of
// the one-process run, bitwise (tolerance 0) or within a relative tolerance.
#include <boost/test/unit_test.hpp>
#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "../support/tiny.hpp"

namespace tmoe::test {

// The layout tests' run: tiny_model, 3 steps of 2 x 16-token micro-batches, clip 0.5, on
// the grid data x expert x tensor x pipeline, with pieces_per_replica micro-
// batches on each data x expert replica.
inline Config layout_config(int data, int expert, int tensor, int pipeline, std::int64_t pieces_per_replica) {
  Config c = tiny_train_config();
  c.train.batch_size = 2;
  c.train.seq_len = 16;
  c.train.grad_accum = pieces_per_replica * data * expert;
  c.train.steps = 3;
  c.train.grad_clip = 0.5;
  c.parallel.data = data;
  c.parallel.expert = expert;
  c.parallel.tensor = tensor;
  c.parallel.pipeline = pipeline;
  return c;
}

struct LayoutTrace {
  std::vector<double> loss, ce, norm;
  std::map<std::string, std::vector<double>> params, state;  // by global name
  std::map<std::string, ParamInfo> info;
  std::int64_t bytes = 0;
};

template <class Trainer>
LayoutTrace run_trace(Trainer& tr, std::int64_t steps, const BatchFn& batches) {
  LayoutTrace t;
  for (std::int64_t s = 0; s < steps; ++s) {
    const StepStats st = tr.train_step(batches);
    t.loss.push_back(st.loss);
    t.ce.push_back(st.ce);
    t.norm.push_back(st.grad_norm);
    t.bytes += st.comm.bytes_sent;
  }
  const auto views = tr.restartable_state();
  for (const ParamInfo& p : tr.model().registry().params()) {
    t.info[p.name] = p;
    t.params[p.name].assign(views[0].data + p.offset, views[0].data + p.offset + p.numel());
    if (views.size() > 1) t.state[p.name].assign(views[1].data + p.offset, views[1].data + p.offset + p.numel());
  }
  tr.release_staging();
  return t;
}
template <class Trainer>
LayoutTrace run_trace(Trainer& tr, std::int64_t steps) {
  const auto& tc = tr.config().train;
  return run_trace(tr, steps, random_batches(tc.batch_size * tc.seq_len, tr.config().model.vocab_size));
}

// |a - b| <= tol · max(1, |b|) elementwise (tol = 0: bitwise).
inline std::size_t count_differ(const std::vector<double>& a, const std::vector<double>& b, double tol) {
  if (a.size() != b.size()) return std::max(a.size(), b.size());
  std::size_t n = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    n += tol == 0 ? a[i] != b[i] : !(std::abs(a[i] - b[i]) <= tol * std::max(1.0, std::abs(b[i])));
  return n;
}

// got holds this rank's part; every tensor of it must match ref's elements of that name.
inline void expect_match(const LayoutTrace& ref, const LayoutTrace& got, double tol, bool compare_state = true) {
  BOOST_TEST(count_differ(got.loss, ref.loss, tol) == 0u);
  BOOST_TEST(count_differ(got.ce, ref.ce, tol) == 0u);
  BOOST_TEST(count_differ(got.norm, ref.norm, tol) == 0u);
  if (tol == 0) {
    BOOST_TEST(got.loss == ref.loss, boost::test_tools::per_element());
    BOOST_TEST(got.norm == ref.norm, boost::test_tools::per_element());
  }
  std::size_t differ = 0, missing = 0;
  for (const auto& [name, v] : got.params) {
    auto it = ref.params.find(name);
    if (it == ref.params.end()) {
      ++missing;
      continue;
    }
    const ParamInfo& p = got.info.at(name);
    std::vector<double> want(v.size()), want_state(v.size());
    take_share(p, it->second.data(), want.data());
    differ += count_differ(v, want, tol) > 0;
    if (compare_state && got.state.count(name)) {
      take_share(p, ref.state.at(name).data(), want_state.data());
      differ += count_differ(got.state.at(name), want_state, tol) > 0;
    }
  }
  BOOST_TEST(missing == 0u);
  BOOST_TEST(differ == 0u, differ << " tensors differ (tolerance " << tol << ")");
}

}  // namespace tmoe::test
