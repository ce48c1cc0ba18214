// Optimizer parity dump for tests/reference/test_optim_parity.py.
//
//   reference_optim_dump <data.bin> <config.txt> <out.bin>
//
// Runs StandardOptimizers (chosen by the config's `optimizer` line) over the tensors and
// per-step gradients in <data.bin> and writes the parameters and the used state arrays
// after the last step to <out.bin>. All files are little-endian; i64 = int64, f64 = double.
//
//   data.bin    i64 K, i64 S; K x (i64 n_k); K x (f64[n_k] initial params);
//               S x K x (f64[n_k] gradient of step s)
//   config.txt  one "key value..." per line:
//                 optimizer NAME          (train.optimizer)
//                 FIELD VALUE             (momentum dampening nesterov beta1 beta2 adam_eps
//                                          lion_beta1 lion_beta2 sign_threshold)
//                 lr LR_1 ... LR_S        (learning rate of each step)
//                 wd WD_1 ... WD_K        (weight decay of each tensor)
//   out.bin     i64 K, i64 U (used slots); U x (i64 len, char[len] slot name);
//               K x (f64[n_k] params, U x f64[n_k] state)
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "tmoe/core/config.hpp"
#include "tmoe/optim/choice.hpp"

namespace {

std::int64_t read_i64(std::istream& in) {
  std::int64_t v = 0;
  if (!in.read(reinterpret_cast<char*>(&v), sizeof v)) throw std::runtime_error("data file is truncated");
  return v;
}
void read_f64(std::istream& in, std::vector<double>& v) {
  if (!in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(double))))
    throw std::runtime_error("data file is truncated");
}
void write_i64(std::ostream& out, std::int64_t v) { out.write(reinterpret_cast<const char*>(&v), sizeof v); }
void write_f64(std::ostream& out, const std::vector<double>& v) {
  out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(double)));
}

int run(const char* data_path, const char* config_path, const char* out_path) {
  std::ifstream data(data_path, std::ios::binary);
  if (!data) throw std::runtime_error(std::string("cannot open ") + data_path);
  const std::int64_t k = read_i64(data), steps = read_i64(data);
  std::vector<std::int64_t> sizes(static_cast<std::size_t>(k));
  for (auto& n : sizes) n = read_i64(data);
  std::vector<std::vector<double>> params;
  for (auto n : sizes) {
    params.emplace_back(static_cast<std::size_t>(n));
    read_f64(data, params.back());
  }

  tmoe::TrainConfig tc;
  std::vector<double> lrs, wds;
  std::ifstream cfg(config_path);
  if (!cfg) throw std::runtime_error(std::string("cannot open ") + config_path);
  for (std::string line; std::getline(cfg, line);) {
    std::istringstream ls(line);
    std::string key;
    if (!(ls >> key)) continue;
    auto num = [&](double& x) {
      if (!(ls >> x)) throw std::runtime_error("bad value for " + key);
    };
    if (key == "optimizer") ls >> tc.optimizer;
    else if (key == "momentum") num(tc.momentum);
    else if (key == "dampening") num(tc.dampening);
    else if (key == "nesterov") { int b = 0; ls >> b; tc.nesterov = b != 0; }
    else if (key == "beta1") num(tc.beta1);
    else if (key == "beta2") num(tc.beta2);
    else if (key == "adam_eps") num(tc.adam_eps);
    else if (key == "lion_beta1") num(tc.lion_beta1);
    else if (key == "lion_beta2") num(tc.lion_beta2);
    else if (key == "sign_threshold") num(tc.sign_threshold);
    else if (key == "lr") for (double x; ls >> x;) lrs.push_back(x);
    else if (key == "wd") for (double x; ls >> x;) wds.push_back(x);
    else throw std::runtime_error("unknown config key " + key);
  }
  if (static_cast<std::int64_t>(lrs.size()) != steps || static_cast<std::int64_t>(wds.size()) != k)
    throw std::runtime_error("config needs one lr per step and one wd per tensor");

  using Opt = tmoe::StandardOptimizers;
  const Opt opt = Opt::from_config(tc);
  const int used = opt.used_slots();
  // Zero-filled state, Opt::slots arrays per tensor as a trainer allocates them.
  std::vector<std::vector<std::vector<double>>> state(static_cast<std::size_t>(k));
  for (std::int64_t t = 0; t < k; ++t)
    state[t].assign(Opt::slots, std::vector<double>(static_cast<std::size_t>(sizes[t]), 0.0));

  std::vector<double> grad;
  for (std::int64_t s = 0; s < steps; ++s) {
    for (std::int64_t t = 0; t < k; ++t) {
      grad.assign(static_cast<std::size_t>(sizes[t]), 0.0);
      read_f64(data, grad);
      double* ptrs[Opt::slots];
      for (int j = 0; j < Opt::slots; ++j) ptrs[j] = state[t][j].data();
      opt.update(params[t].data(), grad.data(), ptrs, sizes[t], lrs[s], wds[t], s + 1);
    }
  }

  std::ofstream out(out_path, std::ios::binary);
  write_i64(out, k);
  write_i64(out, used);
  for (int j = 0; j < used; ++j) {
    const std::string nm = opt.slot_name(j);
    write_i64(out, static_cast<std::int64_t>(nm.size()));
    out.write(nm.data(), static_cast<std::streamsize>(nm.size()));
  }
  for (std::int64_t t = 0; t < k; ++t) {
    write_f64(out, params[t]);
    for (int j = 0; j < used; ++j) write_f64(out, state[t][j]);
  }
  if (!out) throw std::runtime_error(std::string("cannot write ") + out_path);
  std::printf("%s: %lld tensors, %lld steps, %d state slots\n", opt.active_name(), static_cast<long long>(k),
              static_cast<long long>(steps), used);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: reference_optim_dump <data.bin> <config.txt> <out.bin>\n";
    return 2;
  }
  try {
    return run(argv[1], argv[2], argv[3]);
  } catch (const std::exception& e) {
    std::cerr << "reference_optim_dump: " << e.what() << "\n";
    return 1;
  }
}
