// BPE tokenizer benchmark: training time, encode throughput (whole text on 1 and 2 threads,
// line by line on 1 and 2 threads, each from empty chunk caches; whole text again with warm
// caches), decode throughput and bytes per token, for each vocabulary size. One human-readable block and one JSON line per vocabulary size; the JSON keys match
// bench/data/peer_sentencepiece.py, and bench/data/run_tokenizer_bench.sh prints both as a table.
//
//   bench_tokenizer [corpus file or folder] [--vocab 1024,4096] [--reps 5] [--save DIR]
//
// Default corpus: the text files of /usr/share/games/fortunes (*.dat, symlinks and files
// with a NUL byte skipped), concatenated in name order. Timings are medians of --reps runs.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "tmoe/core/threading.hpp"
#include "tmoe/data/bpe.hpp"

namespace fs = std::filesystem;
using tmoe::data::BpeTokenizer;

namespace {

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string load_corpus(const std::string& path, std::size_t& files) {
  files = 0;
  if (fs::is_regular_file(path)) {
    files = 1;
    return read_all(path);
  }
  std::vector<fs::path> list;
  for (const auto& e : fs::directory_iterator(path))
    if (e.is_regular_file() && !e.is_symlink() && e.path().extension() != ".dat") list.push_back(e.path());
  std::sort(list.begin(), list.end(), [](const fs::path& a, const fs::path& b) { return a.filename() < b.filename(); });
  std::string text;
  for (const auto& p : list) {
    const std::string s = read_all(p);
    if (s.find('\0') != std::string::npos) continue;
    text += s;
    ++files;
  }
  return text;
}

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Median time of f() over reps runs, setup() (untimed) before each; one untimed warm-up.
template <class Setup, class F>
double median_seconds(int reps, Setup&& setup, F&& f) {
  setup();
  f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    setup();
    const double t0 = now();
    f();
    t.push_back(now() - t0);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string path = "/usr/share/games/fortunes", save_dir;
  std::vector<std::int64_t> vocabs{1024, 4096};
  int reps = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--vocab" && i + 1 < argc) {
      vocabs.clear();
      std::string v = argv[++i];
      for (std::size_t p = 0; p < v.size();) {
        const std::size_t q = std::min(v.find(',', p), v.size());
        vocabs.push_back(std::stoll(v.substr(p, q - p)));
        p = q + 1;
      }
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--save" && i + 1 < argc) {
      save_dir = argv[++i];
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: bench_tokenizer [corpus file or folder] [--vocab 1024,4096] [--reps 5] [--save DIR]\n");
      return 0;
    } else {
      path = a;
    }
  }
  std::size_t files = 0;
  const std::string text = load_corpus(path, files);
  if (text.empty()) {
    std::fprintf(stderr, "bench_tokenizer: no text in %s\n", path.c_str());
    return 1;
  }
  // Lines without their '\n', as SentencePiece encodes them.
  std::vector<std::string_view> lines;
  std::size_t line_bytes = 0;
  for (std::size_t p = 0; p < text.size();) {
    const std::size_t q = std::min(text.find('\n', p), text.size());
    lines.emplace_back(text.data() + p, q - p);
    line_bytes += q - p;
    p = q + 1;
  }
  const double mb = static_cast<double>(text.size()) / 1e6, line_mb = static_cast<double>(line_bytes) / 1e6;
  std::printf("corpus: %s (%zu files, %zu bytes, %zu lines)\n", path.c_str(), files, text.size(), lines.size());

  for (const std::int64_t vocab : vocabs) {
    tmoe::data::BpeTrainOptions opts;
    opts.vocab_size = vocab;
    double count_s[3] = {}, merge_s[3] = {};
    BpeTokenizer tok;
    std::size_t unique = 0;
    for (int nt : {1, 2}) {
      tmoe::set_threads(nt);
      const double t0 = now();
      tmoe::data::BpeTrainer trainer(opts);
      trainer.add(text);
      const double t1 = now();
      tok = trainer.train();
      count_s[nt] = t1 - t0;
      merge_s[nt] = now() - t1;
      unique = trainer.unique_chunks();
    }
    if (!save_dir.empty()) tok.save(save_dir + "/tmoe_bpe_" + std::to_string(vocab) + ".bpe");

    // Every timed encode starts with empty chunk caches: a fresh copy of the tokenizer has a
    // new serial number, so each thread's cache starts over (the "cold" figures). "Warm"
    // re-encodes with the caches the previous run left.
    BpeTokenizer fresh = tok;
    auto renew = [&] { fresh = BpeTokenizer::from_merges(tok.merges(), tok.special_tokens(), tok.max_chunk_bytes()); };
    auto keep = [] {};
    std::vector<std::int32_t> ids;
    double enc_s[3] = {}, warm_s[3] = {}, line_s[3] = {};
    for (int nt : {1, 2}) {
      tmoe::set_threads(nt);
      enc_s[nt] = median_seconds(reps, renew, [&] { ids = fresh.encode(text); });
      warm_s[nt] = median_seconds(reps, keep, [&] { ids = fresh.encode(text); });
      // Line by line: one encode call per line; two threads take interleaved blocks of lines.
      const std::int64_t blocks = 64;
      line_s[nt] = median_seconds(reps, renew, [&] {
        tmoe::parallel_for(blocks, [&](std::int64_t b) {
          std::vector<std::int32_t> out;
          for (std::size_t i = static_cast<std::size_t>(b); i < lines.size(); i += blocks) {
            out.clear();
            fresh.encode_append(lines[i], out);
          }
        });
      });
    }
    tmoe::set_threads(1);
    std::string back;
    const double dec_s = median_seconds(reps, keep, [&] { back = tok.decode(ids); });
    const bool roundtrip = back == text;
    std::size_t line_tokens = 0;
    for (std::string_view l : lines) line_tokens += tok.encode(l).size();
    const double bpt = static_cast<double>(text.size()) / static_cast<double>(ids.size());
    const double line_bpt = static_cast<double>(line_bytes) / static_cast<double>(line_tokens);

    std::printf(
        "\nvocab %lld: %d merges from %zu unique chunks; train %.2f s on 1 thread (count %.2f + merges %.2f), "
        "%.2f s on 2 (count %.2f + merges %.2f)\n"
        "  encode whole text: %.1f MB/s (1 thread), %.1f MB/s (2 threads); %.3f bytes/token\n"
        "  encode whole text, warm chunk caches: %.1f MB/s (1 thread), %.1f MB/s (2 threads)\n"
        "  encode line by line: %.1f MB/s (1 thread), %.1f MB/s (2 threads); %.3f bytes/token\n"
        "  decode: %.1f MB/s; round trip %s; fingerprint %016llx\n",
        static_cast<long long>(vocab), tok.num_merges(), unique, count_s[1] + merge_s[1], count_s[1], merge_s[1],
        count_s[2] + merge_s[2], count_s[2], merge_s[2], mb / enc_s[1], mb / enc_s[2], bpt, mb / warm_s[1],
        mb / warm_s[2], line_mb / line_s[1],
        line_mb / line_s[2], line_bpt, mb / dec_s, roundtrip ? "exact" : "FAILED",
        static_cast<unsigned long long>(tok.fingerprint()));
    std::printf(
        "{\"impl\": \"tmoe\", \"vocab\": %lld, \"corpus_bytes\": %zu, \"train_s_1t\": %.3f, \"train_s_2t\": %.3f, "
        "\"encode_mbs_1t\": %.2f, \"encode_mbs_2t\": %.2f, \"warm_mbs_1t\": %.2f, \"warm_mbs_2t\": %.2f, \"lines_mbs_1t\": %.2f, \"lines_mbs_2t\": %.2f, "
        "\"bytes_per_token\": %.4f, \"lines_bytes_per_token\": %.4f, \"decode_mbs\": %.2f, \"roundtrip\": %s}\n",
        static_cast<long long>(vocab), text.size(), count_s[1] + merge_s[1], count_s[2] + merge_s[2], mb / enc_s[1],
        mb / enc_s[2], mb / warm_s[1], mb / warm_s[2], line_mb / line_s[1], line_mb / line_s[2], bpt, line_bpt, mb / dec_s,
        roundtrip ? "true" : "false");
    std::fflush(stdout);
    if (!roundtrip) return 1;
  }
  return 0;
}
