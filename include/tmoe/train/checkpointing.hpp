#pragma once
// A Trainer's checkpoint: everything restartable (DESIGN.md "Checkpoints"), by name.
//
//   model.safetensors      every parameter by registry name (PyTorch reads it as is)
//   optimizer.safetensors  "<slot>.<parameter name>", e.g. exp_avg.layers.0.attn.qkv.weight
//   state.json             step; the seed (every random draw is Philox(seed, step, site,
//                          index), so seed + step are the whole RNG state); the data
//                          position and the dataset's fingerprint; loss scale; precision,
//                          optimizer and model names; the full config as YAML and the
//                          hash of its model section; the library version
//
// Router biases and any other trained state live in the parameter registry, so they are
// in model.safetensors by construction. Resuming checks, before anything is changed: the
// model config equals the checkpoint's (else the tensors would not mean the same thing);
// the data stream is the same (dataset fingerprint, seed, batch shape); the dtype of
// every tensor equals the trainer's compute type. Differences in hyper-parameters that
// only change the trajectory (lr, steps, ...) are allowed and reported, since the run is
// then no longer identical to an uninterrupted one.
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "tmoe/core/checksum.hpp"
#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/version.hpp"
#include "tmoe/io/checkpoint.hpp"
#include "tmoe/io/safetensors.hpp"
#include "tmoe/io/yaml_config.hpp"
#include "tmoe/parallel/expert_parallel.hpp"

namespace tmoe {

struct ResumeInfo {
  std::int64_t step = 0;
  std::string folder;
  std::vector<std::string> skipped;  // newer checkpoints that were invalid, and why
  std::vector<std::string> changed;  // hyper-parameters that differ from the checkpoint's
};

namespace detail {

template <class S>
std::vector<std::string> differing_fields(const char* section, const S& a, const S& b) {
  std::vector<std::string> out;
  std::apply(
      [&](const auto&... fld) {
        ((a.*fld.member == b.*fld.member
              ? void()
              : out.push_back(cat(section, ".", fld.name, ": ", io::detail::format_value(b.*fld.member), " -> ",
                                  io::detail::format_value(a.*fld.member)))),
         ...);
      },
      S::fields());
  return out;
}

// "name=value" lines of every field of a section: what the config hash covers.
template <class S>
std::string field_lines(const S& sec) {
  std::string out;
  std::apply([&](const auto&... fld) { ((out += cat(fld.name, "=", io::detail::format_value(sec.*fld.member), "\n")), ...); },
             S::fields());
  return out;
}

// Train fields that do not change what is computed.
inline bool harmless_train_field(std::string_view f) {
  for (const char* h : {"train.eval_interval", "train.eval_batches", "train.log_interval", "train.threads",
                        "train.sample_tokens", "train.sample_temperature", "train.metrics_file", "train.save_weights",
                        "train.time_limit_s"})
    if (f.starts_with(std::string(h) + ":")) return true;
  return false;
}
// Train fields that define the data stream: a resume cannot change them.
inline bool data_stream_field(std::string_view f) {
  for (const char* h : {"train.seed", "train.batch_size", "train.seq_len", "train.grad_accum", "train.batch_ramp_steps",
                        "train.batch_ramp_start"})
    if (f.starts_with(std::string(h) + ":")) return true;
  return false;
}

}  // namespace detail

// Writes trainer's state as checkpoint `trainer.step()` in `dir`. `data_state` describes
// the data stream (see ShardSampler: fingerprint, epoch, index); it is stored in
// state.json and checked on resume.
template <class Tr>
std::string save_checkpoint(io::CheckpointDir& dir, Tr& trainer, const nlohmann::json& data_state) {
  using M = typename Tr::M;
  const auto& model = trainer.model();
  const auto& reg = model.registry();
  const Config& cfg = trainer.config();
  const std::string dtype = std::is_same_v<M, float> ? "F32" : "F64";
  // Every rank takes part (the ZeRO-1 shards are gathered); the first rank of the job
  // writes, and every rank learns whether it succeeded, so none goes on alone.
  const auto views = trainer.restartable_state();
  auto& par = trainer.parallel();
  // Tensors by global name: [0] model, [1] optimizer. Under expert parallelism the first
  // rank also writes the experts the rest of its expert group holds.
  std::vector<io::TensorRef> refs[2];
  auto add = [&](const std::string& name, const ParamInfo& p, int view, const M* data) {
    const std::vector<std::int64_t> shape(p.shape.dims.begin(), p.shape.dims.begin() + p.shape.rank);
    if (view == 0) refs[0].push_back({name, dtype, shape, data});
    else refs[1].push_back({trainer.optimizer_slot_name(view - 1) + "." + name, dtype, shape, data});
  };
  for (std::size_t v = 0; v < views.size(); ++v)
    for (const ParamInfo& p : reg.params()) add(p.name, p, static_cast<int>(v), views[v].data + p.offset);
  std::vector<M> gathered;
  if constexpr (requires { par.expert_parallel(); par.experts(); })
    if (par.expert_parallel()) {
      auto& grp = par.experts();
      std::vector<int> ex;
      std::int64_t per_view = 0;
      for (int i = 0; i < reg.size(); ++i)
        if (reg[i].has(kTagExpert)) {
          ex.push_back(i);
          per_view += reg[i].numel();
        }
      std::vector<M> mine;
      for (const auto& v : views)
        for (int i : ex) mine.insert(mine.end(), v.data + reg[i].offset, v.data + reg[i].offset + reg[i].numel());
      gathered.resize(mine.size() * static_cast<std::size_t>(grp.size()));
      grp.allgather(mine.data(), static_cast<std::int64_t>(mine.size()), gathered.data());
      const std::int64_t el = cfg.model.n_experts / grp.size();
      for (int q = 0; q < grp.size(); ++q) {
        if (q == grp.rank()) continue;
        const M* at = gathered.data() + static_cast<std::int64_t>(mine.size()) * q;
        for (std::size_t v = 0; v < views.size(); ++v)
          for (int i : ex) {
            add(shift_expert_name(reg[i].name, (q - grp.rank()) * el), reg[i], static_cast<int>(v), at);
            at += reg[i].numel();
          }
      }
    }
  std::string folder, failure;
  if (par.is_root()) {
    try {
      folder = dir.save(trainer.step(), [&](const std::string& tmp) {
        const std::map<std::string, std::string> meta = {{"format", "tmoe"}, {"step", std::to_string(trainer.step())}};
        io::write_safetensors(tmp + "/model.safetensors", refs[0], meta);
        io::write_safetensors(tmp + "/optimizer.safetensors", refs[1], meta);
        nlohmann::json st;
        st["step"] = trainer.step();
        st["seed"] = cfg.train.seed;
        st["rng"] = "philox4x32-10 keyed by (seed, step, site, index): seed and step are the whole state";
        st["data"] = data_state;
        st["loss_scale"] = trainer.loss_scaler().scale;
        st["loss_scale_good_steps"] = trainer.loss_scaler().good_steps;
        st["dtype"] = dtype;
        st["precision"] = Tr::precision_name();
        st["optimizer"] = trainer.optimizer_name();
        std::int64_t count = 0;  // the whole model's, whatever this rank holds
        for (const io::TensorRef& r : refs[0]) {
          std::int64_t n = 1;
          for (auto d : r.shape) n *= d;
          count += n;
        }
        st["parameters"] = count;
        st["grid"] = par.size() > 1 ? nlohmann::json(detail::cat(par.size(), " replicas")) : nlohmann::json("1 process");
        st["config_yaml"] = io::to_yaml(cfg);
        st["model_config_xxh64"] = xxh64(detail::field_lines(cfg.model));
        st["tmoe_version"] = kVersion;
        io::write_file_atomic(tmp + "/state.json", st.dump(2) + "\n");
      });
    } catch (const std::exception& e) {
      failure = e.what();
    }
  }
  trainer.release_staging();
  const bool ok = par.agree(failure.empty());
  if (!failure.empty()) throw Error(failure, "save_checkpoint (rank 0 writes)", "a writable checkpoint.dir");
  if (!ok)
    throw Error("the first rank could not write the checkpoint (see its message)", dir.root(), "a writable checkpoint.dir");
  return folder.empty() ? dir.root() + "/" + io::step_folder_name(trainer.step()) : folder;
}

// Loads the newest valid checkpoint of `dir` into trainer (params, optimizer state, step).
// nullopt if `dir` holds no checkpoint. Nothing in trainer changes unless every check
// passes. `data_state` is what the caller's sampler says now (its fingerprint must match).
template <class Tr>
std::optional<ResumeInfo> resume_checkpoint(const io::CheckpointDir& dir, Tr& trainer, const nlohmann::json& data_state) {
  using M = typename Tr::M;
  using detail::cat;
  const auto found = dir.find_valid();
  if (!found) return std::nullopt;
  ResumeInfo info;
  info.step = found->step;
  info.folder = found->folder;
  info.skipped = found->skipped;
  const std::string state_path = found->folder + "/state.json";
  const char* expected = "a checkpoint written by this trainer";
  nlohmann::json st;
  Config saved;
  try {
    std::ifstream in(state_path, std::ios::binary);
    st = nlohmann::json::parse(in);
    if (st.at("step").get<std::int64_t>() != found->step) throw Error("state.json names another step", state_path, expected);
    saved = io::load_config_text(st.at("config_yaml").get<std::string>(), state_path + " (config_yaml)");
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat("state.json is malformed: ", e.what()), state_path, expected);
  }
  const Config& cfg = trainer.config();
  auto model_diff = detail::differing_fields("model", cfg.model, saved.model);
  // Fields that change neither the parameters nor what they mean: regularisation rates and the
  // recompute mode (reported, as a hyper-parameter change is).
  std::erase_if(model_diff, [&](const std::string& d) {
    for (const char* f : {"model.recompute:", "model.dropout:", "model.attn_dropout:", "model.expert_dropout:",
                          "model.expert_drop_rate:"})
      if (d.starts_with(f)) {
        if (!d.starts_with("model.recompute:")) info.changed.push_back(d);
        return true;
      }
    return false;
  });
  if (!model_diff.empty()) {
    std::string all;
    for (const auto& d : model_diff) all += "\n  " + d;
    throw Error("the model config differs from the checkpoint's (checkpoint -> now):" + all, found->folder,
                "the model config the checkpoint was trained with");
  }
  for (const std::string& d : detail::differing_fields("train", cfg.train, saved.train)) {
    if (detail::data_stream_field(d))
      throw Error("resuming with a changed " + d + " would change the data stream (checkpoint -> now)", found->folder,
                  "the seed, batch_size, seq_len, grad_accum and batch ramp the checkpoint was trained with");
    if (!detail::harmless_train_field(d)) info.changed.push_back(d);
  }
  const std::string dtype = std::is_same_v<M, float> ? "F32" : "F64";
  if (st.value("optimizer", trainer.optimizer_name()) != trainer.optimizer_name())
    throw Error(cat("checkpoint was trained with optimizer ", st.value("optimizer", "?"), "; this run uses ",
                    trainer.optimizer_name()),
                found->folder, "the same train.optimizer (its state would not mean the same thing)");
  if (st.value("dtype", "") != dtype)
    throw Error(cat("checkpoint holds ", st.value("dtype", "?"), " tensors; this trainer computes in ", dtype), found->folder,
                "a checkpoint of the same precision");
  if (st.contains("data") && data_state.contains("fingerprint") && st["data"].contains("fingerprint") &&
      st["data"]["fingerprint"] != data_state["fingerprint"])
    throw Error(cat("the training data differ from the checkpoint's (dataset fingerprint ", st["data"]["fingerprint"].dump(),
                    " there, ", data_state["fingerprint"].dump(), " now)"),
                found->folder, "the dataset the checkpoint was trained on");

  // Check every tensor of both files first; the trainer changes only once all checks pass
  // (reading a validated, mapped file cannot fail), so no scratch copy is needed.
  auto& model = trainer.model();
  const auto& reg = model.registry();
  const auto model_file = io::SafetensorsFile::open(found->folder + "/model.safetensors");
  const auto opt_file = io::SafetensorsFile::open(found->folder + "/optimizer.safetensors");
  auto check = [&](const io::SafetensorsFile& f, const std::string& prefix) {
    io::check_params(f, reg, prefix);
    for (const ParamInfo& p : reg.params())
      if (f.info(prefix + p.name).dtype != dtype)
        throw Error(cat("tensor has dtype ", f.info(prefix + p.name).dtype), f.path() + ": tensor '" + prefix + p.name + "'",
                    dtype);
  };
  check(model_file, "");
  for (int s = 0; s < trainer.optimizer_slots(); ++s) check(opt_file, trainer.optimizer_slot_name(s) + ".");
  const std::size_t expected_tensors = static_cast<std::size_t>(reg.global_size()) * static_cast<std::size_t>(trainer.optimizer_slots());
  if (opt_file.names().size() != expected_tensors)
    throw Error(cat("optimizer file holds ", opt_file.names().size(), " tensors"), opt_file.path(),
                cat(expected_tensors, " (", trainer.optimizer_slots(), " slots x ", reg.global_size(), " parameters)"));
  double scale = 1.0;
  std::int64_t good = 0;
  try {
    scale = st.value("loss_scale", 1.0);
    good = st.value("loss_scale_good_steps", std::int64_t{0});
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat("state.json has a malformed loss scale: ", e.what()), state_path, expected);
  }
  if (!(scale > 0) || !std::isfinite(scale) || good < 0)
    throw Error(cat("state.json has loss_scale ", scale, " and loss_scale_good_steps ", good), state_path,
                "a positive finite loss scale and a step count >= 0");

  // Every rank reads the whole (layout-free) state and keeps what its layout needs.
  const auto views = trainer.restartable_state(/*current=*/false);
  for (const ParamInfo& p : reg.params()) model_file.read_into(p.name, views[0].data + p.offset);
  for (int s = 0; s < trainer.optimizer_slots(); ++s)
    for (const ParamInfo& p : reg.params())
      opt_file.read_into(trainer.optimizer_slot_name(s) + "." + p.name, views[static_cast<std::size_t>(1 + s)].data + p.offset);
  trainer.adopt_state();
  if (trainer.loss_scaler().enabled) {
    trainer.loss_scaler().scale = scale;
    trainer.loss_scaler().good_steps = good;
  }
  trainer.set_step(found->step);
  return info;
}

}  // namespace tmoe
