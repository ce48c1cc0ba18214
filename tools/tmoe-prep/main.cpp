// tmoe-prep — raw text to a dataset folder of token shards, in one command.
//
//   tmoe-prep --out DIR [--source SPEC ...] [section.key=value ...]
//       sources -> one record stream -> cleaning stages -> validation split ->
//       augmentation (training records only, if enabled) -> tokenizer (bytes, or BPE trained
//       on the training records) -> train-NNNNN.tok / val-NNNNN.tok -> dataset.json
//   tmoe-prep kappa LABELS.jsonl [section.key=value ...] [--out KEPT.jsonl]
//       annotation agreement (Cohen's / Fleiss' kappa) and the labels that pass the filter
//
// Every setting is a `section.key=value` (sections prep, clean, augment, filter, labels);
// --help lists them. Nothing is written under --out unless the whole preparation succeeds:
// the shards are written into a temporary folder which is renamed into place at the end.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "tmoe/core/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/threading.hpp"
#include "tmoe/data/annotation.hpp"
#include "tmoe/data/augment.hpp"
#include "tmoe/data/bpe.hpp"
#include "tmoe/data/clean.hpp"
#include "tmoe/data/records.hpp"
#include "tmoe/data/shards.hpp"
#include "tmoe/io/atomic_file.hpp"
#include "tmoe/io/yaml_config.hpp"

using namespace tmoe;
using tmoe::detail::cat;

namespace {

struct PrepConfig {
  std::string tokenizer = "bytes";        // bytes | bpe
  std::int64_t vocab_size = 4096;         // BPE only: 256 bytes + merges + the separator token
  double val_fraction = 0.05;             // every round(1/val_fraction)-th record is held out
  std::string separator = "\n%\n";        // appended to every record, so the model learns where one ends
  std::int64_t max_shard_tokens = 1 << 26;
  bool clean = true;
  bool augment = false;
  std::int64_t threads = 0;

  static constexpr auto fields() {
    using C = PrepConfig;
    return std::make_tuple(
        field("tokenizer", &C::tokenizer, "bytes (ids 0..255) or bpe (trained on the training records)"),
        field("vocab_size", &C::vocab_size, "BPE vocabulary size (256 bytes + merges)"),
        field("val_fraction", &C::val_fraction, "share of records held out for validation"),
        field("separator", &C::separator, "text appended to every record (end-of-record marker)"),
        field("max_shard_tokens", &C::max_shard_tokens, "tokens per shard file at most"),
        field("clean", &C::clean, "run the cleaning stages (section clean)"),
        field("augment", &C::augment, "add noisy copies of training records (section augment)"),
        field("threads", &C::threads, "worker threads for BPE; 0 = all"));
  }
  void validate() const {
    if (tokenizer != "bytes" && tokenizer != "bpe")
      throw Error("tokenizer is '" + tokenizer + "'", "prep.tokenizer", "bytes or bpe");
    if (tokenizer == "bpe" && (vocab_size < 257 || vocab_size > (1 << 24)))
      throw Error(cat("vocab_size is ", vocab_size), "prep.vocab_size", "257 .. 2^24 for BPE");
    if (!(val_fraction > 0 && val_fraction < 0.5))
      throw Error(cat("val_fraction is ", val_fraction), "prep.val_fraction", "a share in (0, 0.5)");
    if (max_shard_tokens < 1) throw Error(cat("max_shard_tokens is ", max_shard_tokens), "prep.max_shard_tokens", ">= 1");
    if (threads < 0) throw Error(cat("threads is ", threads), "prep.threads", ">= 0 (0 = all)");
  }
};

// `section.key=value` onto the structs of `sections` (name, struct&) — the same parsing
// and error messages as the trainer's config.
template <class... S>
void apply_setting(const std::string& arg, std::tuple<std::pair<const char*, S*>...> sections) {
  const auto eq = arg.find('=');
  const auto dot = arg.find('.');
  if (eq == std::string::npos || dot == std::string::npos || dot > eq)
    throw Error("argument '" + arg + "' is not a setting", "command line", "section.key=value; --help lists the keys");
  const std::string section = arg.substr(0, dot), key = arg.substr(dot + 1, eq - dot - 1), value = arg.substr(eq + 1);
  bool found_section = false, found_key = false;
  std::string known_sections, known_keys;
  std::apply(
      [&](auto&... sec) {
        auto one = [&](auto& s) {
          using T = std::remove_pointer_t<std::remove_cvref_t<decltype(s.second)>>;
          known_sections += (known_sections.empty() ? "" : ", ") + std::string(s.first);
          if (section != s.first) return;
          found_section = true;
          io::detail::for_each_field<T>([&](const auto& fld) {
            known_keys += (known_keys.empty() ? "" : ", ") + std::string(fld.name);
            using M = std::remove_cvref_t<decltype(s.second->*fld.member)>;
            if (key == fld.name) {
              s.second->*fld.member = io::detail::parse_value<M>(value, section + "." + key, "command line");
              found_key = true;
            }
          });
        };
        (one(sec), ...);
      },
      sections);
  if (!found_section) throw Error("unknown section '" + section + "'", "command line", "one of " + known_sections);
  if (!found_key) throw Error("unknown key '" + section + "." + key + "'", "command line", "one of " + known_keys);
}

template <class S>
std::string describe(const char* section) {
  std::string out;
  io::detail::for_each_field<S>([&](const auto& fld) {
    const S defaults{};
    using M = std::remove_cvref_t<decltype(defaults.*fld.member)>;
    out += cat("  ", section, ".", fld.name, " (", io::detail::type_name<M>(), ", default ",
               io::detail::format_value(defaults.*fld.member), "): ", fld.help, "\n");
  });
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
double mb_per_s(std::size_t bytes, double s) { return s > 0 ? static_cast<double>(bytes) / 1e6 / s : 0; }

const char* kUsage =
    "usage:\n"
    "  tmoe-prep --out DIR [--source SPEC ...] [section.key=value ...]\n"
    "  tmoe-prep kappa LABELS.jsonl [--out KEPT.jsonl] [section.key=value ...]\n\n"
    "Sources (default delimited:/usr/share/games/fortunes): ";

int prepare(const std::vector<std::string>& args) {
  std::string out;
  std::vector<std::string> sources;
  PrepConfig prep;
  data::CleanConfig clean;
  data::AugmentConfig augment;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](const char* flag) -> std::string {
      if (a.size() > std::strlen(flag) && a[std::strlen(flag)] == '=') return a.substr(std::strlen(flag) + 1);
      if (i + 1 >= args.size()) throw Error(cat(flag, " needs a value"), "command line", cat(flag, " VALUE"));
      return args[++i];
    };
    if (a == "--out" || a.starts_with("--out=")) out = value("--out");
    else if (a == "--source" || a.starts_with("--source=")) sources.push_back(value("--source"));
    else if (a.starts_with("--")) throw Error("unknown option '" + a + "'", "command line", "--out, --source or --help");
    else apply_setting(a, std::make_tuple(std::pair{"prep", &prep}, std::pair{"clean", &clean}, std::pair{"augment", &augment}));
  }
  if (out.empty()) throw Error("no output folder given", "command line", "--out DIR");
  if (sources.empty()) sources.push_back("delimited:/usr/share/games/fortunes");
  prep.validate();
  clean.validate();
  if (prep.augment) augment.validate();
  set_threads(static_cast<int>(prep.threads));
  namespace fs = std::filesystem;
  if (fs::exists(fs::path(out) / data::kDatasetManifest))
    throw Error("folder already holds a dataset", out, "a new folder (delete the old dataset to rebuild it)");
  if (fs::exists(out) && !fs::is_directory(out)) throw Error("exists and is not a folder", out, "a new folder");
  if (fs::exists(out) && !fs::is_empty(out)) throw Error("folder is not empty", out, "a new or empty folder");

  nlohmann::json report;
  const auto t_all = std::chrono::steady_clock::now();
  // 1. Ingest.
  auto t = std::chrono::steady_clock::now();
  std::vector<data::SourceReport> source_reports;
  std::vector<data::Record> records = data::ingest(sources, &source_reports);
  const std::size_t raw_bytes = data::total_bytes(records);
  report["ingest"] = {{"seconds", seconds_since(t)}, {"records", records.size()}, {"bytes", raw_bytes}};
  for (const auto& s : source_reports)
    report["sources"].push_back({{"source", s.source}, {"files", s.files}, {"records", s.records}, {"bytes", s.bytes},
                                 {"skipped_binary", s.skipped_binary}, {"skipped_dat", s.skipped_dat}});
  std::printf("ingested %zu records (%zu bytes) from %zu source(s) in %.2f s\n", records.size(), raw_bytes,
              sources.size(), seconds_since(t));

  // 2. Clean.
  if (prep.clean) {
    t = std::chrono::steady_clock::now();
    const auto stages = data::make_pipeline(clean).run(records);
    const double s = seconds_since(t);
    std::printf("%s", data::format_report(stages).c_str());
    std::printf("cleaning: %.2f s, %.1f MB/s\n", s, mb_per_s(raw_bytes, s));
    for (const auto& r : stages) report["cleaning"].push_back(data::to_json(r));
    report["cleaning_seconds"] = s;
  }
  if (records.size() < 2) throw Error(cat(records.size(), " record(s) left after cleaning"), out, "at least 2 records");

  // 3. Split: record i goes to validation when i % stride == stride - 1.
  const std::size_t stride = std::max<std::size_t>(2, static_cast<std::size_t>(std::llround(1.0 / prep.val_fraction)));
  std::vector<data::Record> train, val;
  for (std::size_t i = 0; i < records.size(); ++i) (i % stride == stride - 1 ? val : train).push_back(std::move(records[i]));
  records.clear();
  report["split"] = {{"stride", stride}, {"train_records", train.size()}, {"val_records", val.size()}};

  // 4. Augment the training records only.
  if (prep.augment) {
    data::Augment stage(augment);
    const auto r = stage.apply(train);
    std::printf("%s", data::format_report({r}).c_str());
    report["augment"] = data::to_json(r);
  }

  // 5. Tokenizer.
  std::optional<data::BpeTokenizer> bpe;
  std::uint64_t vocab = 256, fingerprint = 0;
  std::string tokenizer_file;
  if (prep.tokenizer == "bpe") {
    t = std::chrono::steady_clock::now();
    std::string text;
    for (const auto& r : train) text += r.text + prep.separator;
    data::BpeTrainOptions o;
    o.vocab_size = prep.vocab_size;
    bpe = data::train_bpe(text, o);
    const double s = seconds_since(t);
    vocab = static_cast<std::uint64_t>(bpe->vocab_size());
    fingerprint = bpe->fingerprint();
    tokenizer_file = "tokenizer.bpe";
    std::printf("BPE: %lld merges trained on %zu bytes in %.2f s (%.1f MB/s)\n", static_cast<long long>(bpe->num_merges()),
                text.size(), s, mb_per_s(text.size(), s));
    report["tokenizer"] = {{"kind", "bpe"}, {"vocab_size", vocab}, {"train_seconds", s}, {"train_bytes", text.size()}};
  } else {
    report["tokenizer"] = {{"kind", "bytes"}, {"vocab_size", 256}};
  }

  // 6. Encode and write, into a temporary folder renamed into place at the end.
  const fs::path final_dir = fs::absolute(out).lexically_normal();
  const fs::path tmp_dir = final_dir.parent_path() / ("." + final_dir.filename().string() + ".tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::create_directories(final_dir.parent_path(), ec);
  fs::remove_all(tmp_dir, ec);
  try {
    if (bpe) {
      fs::create_directories(tmp_dir);
      bpe->save((tmp_dir / tokenizer_file).string());
    }
    data::DatasetWriter writer(tmp_dir.string(), vocab, fingerprint, tokenizer_file,
                               static_cast<std::uint64_t>(prep.max_shard_tokens));
    t = std::chrono::steady_clock::now();
    std::size_t bytes = 0, tokens = 0;
    // Records are encoded in parallel a block at a time, then written in order: the shards
    // do not depend on the thread count.
    constexpr std::size_t kBlock = 4096;
    std::vector<std::vector<std::int32_t>> ids(kBlock);
    for (int split = 0; split < 2; ++split) {
      const auto& recs = split == 0 ? train : val;
      for (std::size_t b0 = 0; b0 < recs.size(); b0 += kBlock) {
        const std::size_t n = std::min(kBlock, recs.size() - b0);
        parallel_for(static_cast<std::int64_t>(n), [&](std::int64_t i) {
          const std::string text = recs[b0 + static_cast<std::size_t>(i)].text + prep.separator;
          auto& out = ids[static_cast<std::size_t>(i)];
          if (bpe) out = bpe->encode(text);
          else out.assign(reinterpret_cast<const unsigned char*>(text.data()),
                          reinterpret_cast<const unsigned char*>(text.data()) + text.size());
        });
        for (std::size_t i = 0; i < n; ++i) {
          writer.add(split == 0 ? data::DatasetWriter::kTrain : data::DatasetWriter::kVal, ids[i]);
          bytes += recs[b0 + i].text.size() + prep.separator.size();
          tokens += ids[i].size();
        }
      }
    }
    const double s = seconds_since(t);
    report["encode"] = {{"seconds", s}, {"bytes", bytes}, {"tokens", tokens},
                        {"bytes_per_token", static_cast<double>(bytes) / static_cast<double>(std::max<std::size_t>(1, tokens))}};
    report["sources_given"] = sources;
    report["total_seconds"] = seconds_since(t_all);
    const auto& m = writer.finish(report);
    std::printf("encoded %zu bytes into %zu tokens (%.2f bytes/token) and wrote them in %.2f s (%.1f MB/s)\n", bytes,
                tokens, static_cast<double>(bytes) / static_cast<double>(std::max<std::size_t>(1, tokens)), s,
                mb_per_s(bytes, s));
    io::fsync_dir(tmp_dir.string());
    if (fs::exists(final_dir)) fs::remove(final_dir);  // checked empty above
    fs::rename(tmp_dir, final_dir);
    io::fsync_dir(final_dir.parent_path().string());
    std::printf("dataset %s: %zu train shard(s), %zu val shard(s), vocabulary %llu, in %.2f s\n", final_dir.c_str(),
                m.train.size(), m.val.size(), static_cast<unsigned long long>(vocab), seconds_since(t_all));
  } catch (...) {
    fs::remove_all(tmp_dir, ec);
    throw;
  }
  return 0;
}

int kappa(const std::vector<std::string>& args) {
  std::string labels, out;
  data::LabelFileConfig file_cfg;
  data::FilterConfig filter;
  data::AgreementConfig agreement;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--out") {
      if (i + 1 >= args.size()) throw Error("--out needs a file name", "command line", "--out FILE");
      out = args[++i];
    } else if (a.starts_with("--out=")) {
      out = a.substr(6);
    } else if (a.starts_with("--")) {
      throw Error("unknown option '" + a + "'", "command line", "--out or --help");
    } else if (a.find('=') != std::string::npos) {
      apply_setting(a, std::make_tuple(std::pair{"labels", &file_cfg}, std::pair{"filter", &filter},
                                       std::pair{"agreement", &agreement}));
    } else if (labels.empty()) {
      labels = a;
    } else {
      throw Error("a second label file '" + a + "'", "command line", "one LABELS.jsonl");
    }
  }
  if (labels.empty()) throw Error("no label file given", "command line", "tmoe-prep kappa LABELS.jsonl");
  file_cfg.validate();
  filter.validate();
  agreement.validate();
  const data::LabelSet set = data::read_label_file(labels, file_cfg);
  const auto rep = data::agreement_report(set, agreement);
  auto show = [](const data::ScopeAgreement& s) {
    std::printf("  %-20s %-6s kappa %8.4f  (%zu items, %zu annotators)\n", s.name.empty() ? "all items" : s.name.c_str(),
                s.method.c_str(), s.kappa.kappa, s.items, s.annotators);
  };
  std::printf("%s: %zu items, %zu annotators, %zu labels\n", labels.c_str(), set.items.size(), set.annotators.size(),
              set.records);
  show(rep.overall);
  for (const auto& p : rep.pairs)
    std::printf("  pair %s / %s: Cohen's kappa %.4f\n", p.a.c_str(), p.b.c_str(), p.kappa.kappa);
  for (const auto& b : rep.batches) show(b);
  const auto res = data::filter_labels(set, filter);
  std::printf("filter (%s, threshold %.2f): kept %zu items, dropped %zu\n", filter.mode.c_str(), filter.threshold,
              res.kept.size(), res.dropped.size());
  for (std::size_t r = 0; r < data::kDropReasons; ++r)
    if (res.dropped_by[r]) std::printf("  dropped %s: %zu\n", data::to_string(static_cast<data::DropReason>(r)), res.dropped_by[r]);
  if (!out.empty()) {
    std::string text;
    for (const auto& k : res.kept)
      text += nlohmann::json{{"item", k.item}, {"batch", k.batch}, {"label", k.label}, {"votes", k.votes},
                             {"raters", k.raters}, {"agreement", k.agreement}}
                  .dump() +
              "\n";
    io::write_file_atomic(out, text);
    std::printf("kept labels written to %s\n", out.c_str());
  }
  return 0;
}

int run(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (const auto& a : args)
    if (a == "--help" || a == "-h") {
      std::printf("%s%s\n\nprep settings:\n%s\nclean settings:\n%s\naugment settings (with prep.augment=true):\n%s\n"
                  "kappa settings:\n%s%s%s",
                  kUsage, data::source_spec_help().c_str(), describe<PrepConfig>("prep").c_str(),
                  describe<data::CleanConfig>("clean").c_str(), describe<data::AugmentConfig>("augment").c_str(),
                  describe<data::LabelFileConfig>("labels").c_str(), describe<data::FilterConfig>("filter").c_str(),
                  describe<data::AgreementConfig>("agreement").c_str());
      return 0;
    }
  if (!args.empty() && args[0] == "kappa") return kappa({args.begin() + 1, args.end()});
  return prepare(args);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tmoe-prep: unexpected error: %s\n", e.what());
    return 3;
  }
}
