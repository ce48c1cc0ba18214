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
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tmoe/core/checksum.hpp"
#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/version.hpp"
#include "tmoe/io/checkpoint.hpp"
#include "tmoe/io/safetensors.hpp"
#include "tmoe/io/yaml_config.hpp"

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

// One rank's parameters and their state (every view: params, then each optimizer slot):
// parameter k of view v is at base[v] + at[k]. This rank's own share points into the
// trainer's views (no copy); a received one into its storage, packed view after view.
template <class M>
struct Share {
  std::vector<ParamInfo> params;
  std::vector<std::int64_t> at;
  std::vector<const M*> base;
  std::vector<M> storage;  // a received share

  const M* data(std::size_t view, std::size_t k) const { return base[view] + at[k]; }
  // Storage for a received share: every view's parameters packed in order, view after view.
  void pack(std::size_t views) {
    std::int64_t per_view = 0;
    at.clear();
    for (const ParamInfo& p : params) {
      at.push_back(per_view);
      per_view += p.numel();
    }
    storage.resize(static_cast<std::size_t>(per_view) * views);
    base.clear();
    for (std::size_t v = 0; v < views; ++v) base.push_back(storage.data() + static_cast<std::int64_t>(v) * per_view);
  }
};

template <class M, class View>
Share<M> own_share(const ParamRegistry& reg, const std::vector<View>& views) {
  Share<M> sh;
  for (const ParamInfo& p : reg.params()) {
    sh.params.push_back(p);
    sh.at.push_back(p.offset);
  }
  for (const auto& v : views) sh.base.push_back(v.data);
  return sh;
}

// A share described in text: "name dim parts index blocks rank dims... full_rank full_dims..."
// per line (names have no spaces).
inline std::string describe_share(const std::vector<ParamInfo>& params) {
  std::ostringstream o;
  for (const ParamInfo& p : params) {
    o << p.name << ' ' << p.split.dim << ' ' << p.split.parts << ' ' << p.split.index << ' ' << p.split.blocks << ' '
      << p.shape.rank;
    for (int d = 0; d < p.shape.rank; ++d) o << ' ' << p.shape[d];
    o << ' ' << p.full.rank;
    for (int d = 0; d < p.full.rank; ++d) o << ' ' << p.full[d];
    o << '\n';
  }
  return o.str();
}
inline std::vector<ParamInfo> parse_share(const std::string& text) {
  std::vector<ParamInfo> out;
  std::istringstream in(text);
  ParamInfo p;
  while (in >> p.name >> p.split.dim >> p.split.parts >> p.split.index >> p.split.blocks >> p.shape.rank) {
    for (int d = 0; d < p.shape.rank; ++d) in >> p.shape.dims[static_cast<std::size_t>(d)];
    in >> p.full.rank;
    for (int d = 0; d < p.full.rank; ++d) in >> p.full.dims[static_cast<std::size_t>(d)];
    out.push_back(p);
  }
  return out;
}

// The first rank receives the share of every rank of the first data-parallel replica (the
// others hold copies), in rank order; the other ranks get an empty list.
template <class M, class Par, class View>
std::vector<Share<M>> gather_shares(Par& par, const ParamRegistry& reg, const std::vector<View>& views) {
  std::vector<Share<M>> out;
  auto& world = par.world();
  const auto& g = par.grid();
  Share<M> mine = own_share<M>(reg, views);
  if (world.size() == 1 || (g.tensor == 1 && g.pipeline == 1 && g.expert == 1)) {
    if (par.is_root()) out.push_back(std::move(mine));
    return out;
  }
  constexpr int kTag = 7001;
  const bool sender = g.data_rank == 0;
  if (!par.is_root()) {
    if (sender) {
      std::vector<M> packed;
      for (std::size_t v = 0; v < views.size(); ++v)
        for (std::size_t k = 0; k < mine.params.size(); ++k)
          packed.insert(packed.end(), mine.data(v, k), mine.data(v, k) + mine.params[k].numel());
      const std::string text = describe_share(mine.params);
      const std::int64_t head[2] = {static_cast<std::int64_t>(text.size()), static_cast<std::int64_t>(packed.size())};
      world.send(head, 2, 0, kTag);
      world.send(text.data(), head[0], 0, kTag);
      world.send(packed.data(), head[1], 0, kTag);
    }
    return out;
  }
  out.push_back(std::move(mine));
  for (int q = 1; q < world.size(); ++q) {
    // rank = ((pipe · D + data) · E + expert) · T + tensor: data rank of q
    if ((q / (g.tensor * g.expert)) % g.data != 0) continue;
    std::int64_t head[2] = {0, 0};
    world.recv(head, 2, q, kTag);
    std::string text(static_cast<std::size_t>(head[0]), '\0');
    world.recv(text.data(), head[0], q, kTag);
    Share<M> sh;
    sh.params = parse_share(text);
    sh.pack(views.size());  // head[1] elements: the sender packs the same way
    world.recv(sh.storage.data(), head[1], q, kTag);
    out.push_back(std::move(sh));
  }
  return out;
}

// The whole model's tensors of every view (params, optimizer slots) under their global
// names, on the first rank (empty elsewhere; every rank must construct it). On a grid that
// splits the model (experts, tensor slices, pipeline stages) the first rank gathers every
// share from the ranks of the first data-parallel replica and assembles whole tensors.
template <class M>
struct WholeTensors {
  std::vector<std::pair<int, io::TensorRef>> refs;  // (view, tensor)
  std::vector<Share<M>> shares;
  std::map<std::string, std::vector<M>> assembled;  // split tensors, by "view|name"

  template <class Tr, class View>
  WholeTensors(Tr& trainer, const std::vector<View>& views) {
    auto& par = trainer.parallel();
    const ParamRegistry& reg = trainer.model().registry();
    const std::string dtype = std::is_same_v<M, float> ? "F32" : "F64";
    if constexpr (requires { par.grid(); par.world(); }) shares = gather_shares<M>(par, reg, views);
    else shares.push_back(own_share<M>(reg, views));
    if (!par.is_root()) return;
    std::set<std::string> seen;
    for (const auto& sh : shares)
      for (std::size_t k = 0; k < sh.params.size(); ++k) {
        const ParamInfo& p = sh.params[k];
        const std::vector<std::int64_t> full(p.full.dims.begin(), p.full.dims.begin() + p.full.rank);
        for (std::size_t v = 0; v < views.size(); ++v) {
          const M* data = sh.data(v, k);
          const std::string key = std::to_string(v) + "|" + p.name;
          if (!p.is_split()) {  // replicated copies (tensor group) are equal: the first one
            if (seen.insert(key).second) refs.push_back({static_cast<int>(v), io::TensorRef{p.name, dtype, full, data}});
            continue;
          }
          auto [it, fresh] = assembled.try_emplace(key);
          if (fresh) {
            it->second.assign(static_cast<std::size_t>(p.full.numel()), M(0));
            refs.push_back({static_cast<int>(v), io::TensorRef{p.name, dtype, full, it->second.data()}});
          }
          place_share(p, data, it->second.data());
        }
      }
  }
};

}  // namespace detail

// Writes the whole model's weights (the master copy) to one safetensors file at `path`,
// assembled from every rank's share; the first rank writes. Every rank must call it.
template <class Tr>
void save_weights(const std::string& path, Tr& trainer, const std::map<std::string, std::string>& metadata = {}) {
  using M = typename Tr::M;
  auto views = trainer.restartable_state();
  views.resize(1);
  std::string failure;
  {
    detail::WholeTensors<M> whole(trainer, views);
    if (trainer.parallel().is_root()) {
      std::vector<io::TensorRef> refs;
      for (const auto& [v, ref] : whole.refs) refs.push_back(ref);
      try {
        io::write_safetensors(path, refs, metadata);
      } catch (const std::exception& e) {
        failure = e.what();
      }
    }
  }
  trainer.release_staging();
  const bool ok = trainer.parallel().agree(failure.empty());
  if (!failure.empty()) throw Error(failure, "save_weights (rank 0 writes)", "a writable path");
  if (!ok) throw Error("the first rank could not write the weights (see its message)", path, "a writable path");
}

// Writes trainer's state as checkpoint `trainer.step()` in `dir`. `data_state` describes
// the data stream (see ShardSampler: fingerprint, epoch, index); it is stored in
// state.json and checked on resume.
template <class Tr>
std::string save_checkpoint(io::CheckpointDir& dir, Tr& trainer, const nlohmann::json& data_state) {
  using M = typename Tr::M;
  const Config& cfg = trainer.config();
  const std::string dtype = std::is_same_v<M, float> ? "F32" : "F64";
  // Every rank takes part (the ZeRO-1 shards are gathered); the first rank of the job
  // writes, and every rank learns whether it succeeded, so none goes on alone.
  const auto views = trainer.restartable_state();
  auto& par = trainer.parallel();
  // Tensors by global name: [0] model, [1] optimizer (assembled on the first rank).
  detail::WholeTensors<M> whole(trainer, views);
  std::vector<io::TensorRef> refs[2];
  for (const auto& [view, ref] : whole.refs) {
    refs[view == 0 ? 0 : 1].push_back(ref);
    if (view > 0) refs[1].back().name = trainer.optimizer_slot_name(view - 1) + "." + ref.name;
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
        if constexpr (requires { par.grid(); }) st["grid"] = par.grid().describe();
        else st["grid"] = "1 process";
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
  // A tensor-parallel rank takes its slice of each split tensor.
  std::vector<M> full;
  auto read = [&](const io::SafetensorsFile& f, const std::string& name, const ParamInfo& p, M* dst) {
    if (!p.is_split()) return f.read_into(name, dst);
    full.resize(static_cast<std::size_t>(p.full.numel()));
    f.read_into(name, full.data());
    take_share(p, full.data(), dst);
  };
  for (const ParamInfo& p : reg.params()) read(model_file, p.name, p, views[0].data + p.offset);
  for (int s = 0; s < trainer.optimizer_slots(); ++s)
    for (const ParamInfo& p : reg.params())
      read(opt_file, trainer.optimizer_slot_name(s) + "." + p.name, p, views[static_cast<std::size_t>(1 + s)].data + p.offset);
  trainer.adopt_state();
  if (trainer.loss_scaler().enabled) {
    trainer.loss_scaler().scale = scale;
    trainer.loss_scaler().good_steps = good;
  }
  trainer.set_step(found->step);
  return info;
}

}  // namespace tmoe
