#pragma once
// A byte-level text corpus and the global-batch sampler of the example trainer.
//
// Corpus: a text file, or a folder of them (e.g. Debian's /usr/share/games/fortunes),
// split into records at lines that are exactly "%" (the fortune(6) format; a file
// without such lines is one record). Every stride-th record goes to validation, so both
// splits sample every file. Each split is the concatenation of its records, each
// followed by "\n%\n", so the model also learns where a record ends. Tokens are bytes.
//
// Batches (DESIGN.md principle 5 and "Data"): row r of step s's training batch is a
// window whose start is drawn from Philox keyed by (seed, s, Site::kBatch, r) alone, so
// the global batch does not depend on how many ranks share it, and a rank can draw just
// its rows. Evaluation windows are fixed and evenly spaced, so validation loss is always
// over the same tokens.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "tmoe/core/error.hpp"
#include "tmoe/core/philox.hpp"

namespace tmoe::data {

struct TextCorpus {
  std::vector<std::int32_t> train, val;  // byte tokens 0..255
  std::size_t records_train = 0, records_val = 0, files = 0;
  std::string source;  // the path it was loaded from; names it in errors
};

namespace detail {

inline bool is_blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
  });
}

// A record is the text between separator lines, without the newline that ends its last
// line. "%\r" also separates, so files with CRLF line ends split the same way.
template <class Emit>
void split_records(std::string_view text, Emit&& emit) {
  auto finish = [&](std::size_t begin, std::size_t end) {
    if (end > begin && text[end - 1] == '\n') --end;
    if (end > begin && text[end - 1] == '\r') --end;
    emit(text.substr(begin, end - begin));
  };
  std::size_t record_begin = 0, line_begin = 0;
  while (line_begin < text.size()) {
    std::size_t nl = text.find('\n', line_begin);
    const std::size_t line_end = nl == std::string_view::npos ? text.size() : nl;
    const std::string_view line = text.substr(line_begin, line_end - line_begin);
    const std::size_t next = nl == std::string_view::npos ? text.size() : nl + 1;
    if (line == "%" || line == "%\r") {
      finish(record_begin, line_begin);
      record_begin = next;
    }
    line_begin = next;
  }
  if (record_begin < text.size()) finish(record_begin, text.size());
}

inline std::string read_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error("cannot be opened for reading", file.string(), "a readable text file");
  std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) throw Error("could not be read to the end", file.string(), "a readable text file");
  return text;
}

inline bool is_text(std::string_view text) {
  return std::memchr(text.data(), '\0', text.size()) == nullptr;
}

}  // namespace detail

// Loads `path` (a text file, or a folder whose regular text files are read in sorted
// name order; *.dat files, symlinks, subfolders and files containing a NUL byte are
// skipped). Non-blank record i goes to validation when i % stride == stride - 1, with
// stride = max(2, round(1 / val_fraction)).
inline TextCorpus load_text_corpus(const std::string& path, double val_fraction) {
  namespace fs = std::filesystem;
  if (!(val_fraction > 0.0 && val_fraction < 1.0))
    throw Error(::tmoe::detail::cat("val_fraction is ", val_fraction), path,
                "a fraction of the records in (0, 1), e.g. 0.05");
  const std::int64_t stride = std::max<std::int64_t>(2, std::llround(1.0 / val_fraction));

  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (status.type() == fs::file_type::not_found || path.empty())
    throw Error("corpus path does not exist", path, "a text file or a folder of text files");
  if (ec) throw Error("corpus path cannot be accessed: " + ec.message(), path, "a readable file or folder");

  std::vector<fs::path> files;
  std::size_t dat = 0, links = 0, folders = 0, other = 0, binary = 0;  // skipped entries
  if (fs::is_regular_file(status)) {
    files.push_back(path);
  } else if (fs::is_directory(status)) {
    fs::directory_iterator it(path, ec), end;
    if (ec) throw Error("folder cannot be listed: " + ec.message(), path, "a readable folder");
    for (; it != end; it.increment(ec)) {
      if (ec) throw Error("folder cannot be listed: " + ec.message(), path, "a readable folder");
      const fs::file_status s = it->symlink_status(ec);
      if (ec) throw Error("cannot stat: " + ec.message(), it->path().string(), "a readable file");
      if (fs::is_symlink(s)) ++links;
      else if (fs::is_directory(s)) ++folders;
      else if (!fs::is_regular_file(s)) ++other;
      else if (it->path().extension() == ".dat") ++dat;
      else files.push_back(it->path());
    }
    if (ec) throw Error("folder cannot be listed: " + ec.message(), path, "a readable folder");
    std::sort(files.begin(), files.end(),
              [](const fs::path& a, const fs::path& b) { return a.filename().string() < b.filename().string(); });
  } else {
    throw Error("corpus path is neither a regular file nor a folder", path, "a text file or a folder of text files");
  }

  TextCorpus corpus;
  corpus.source = path;
  std::int64_t index = 0;
  auto append = [](std::vector<std::int32_t>& out, std::string_view s) {
    for (char c : s) out.push_back(static_cast<std::int32_t>(static_cast<unsigned char>(c)));
  };
  for (const fs::path& file : files) {
    const std::string text = detail::read_file(file);
    if (!detail::is_text(text)) {
      if (files.size() == 1 && fs::is_regular_file(status))
        throw Error("is not a text file (it contains a NUL byte)", path, "a text file");
      ++binary;
      continue;
    }
    ++corpus.files;
    detail::split_records(text, [&](std::string_view record) {
      if (detail::is_blank(record)) return;
      const bool to_val = index % stride == stride - 1;
      ++index;
      auto& out = to_val ? corpus.val : corpus.train;
      append(out, record);
      append(out, "\n%\n");
      ++(to_val ? corpus.records_val : corpus.records_train);
    });
  }
  if (corpus.files == 0)
    throw Error(::tmoe::detail::cat("folder has no usable text files (skipped ", dat, " *.dat, ", links,
                                    " symlinks, ", folders, " subfolders, ", binary, " binary (NUL bytes), ",
                                    other, " other entries)"),
                path, "at least one regular text file that is not *.dat");
  if (index == 0)
    throw Error(::tmoe::detail::cat("corpus has no non-blank records in its ", corpus.files, " text file(s)"), path,
                "at least one record with non-whitespace text between '%' lines");
  return corpus;
}

// Throws unless both splits hold at least min_len tokens (one window of seq_len inputs
// and its shifted targets needs seq_len + 1).
inline void require_tokens(const TextCorpus& corpus, std::int64_t min_len) {
  auto check = [&](const std::vector<std::int32_t>& s, const char* name, std::size_t records) {
    if (static_cast<std::int64_t>(s.size()) >= min_len) return;
    throw Error(::tmoe::detail::cat(name, " split is too short: ", s.size(), " tokens in ", records,
                                    " records"),
                corpus.source,
                ::tmoe::detail::cat("at least ", min_len,
                                    " tokens (seq_len + 1); use more text, change val_fraction or shorten seq_len"));
  };
  check(corpus.train, "training", corpus.records_train);
  check(corpus.val, "validation", corpus.records_val);
}

// Shannon entropy of the token frequencies, in nats per token: the loss of a model that
// only knows how often each token occurs.
inline double unigram_entropy(const std::vector<std::int32_t>& tokens) {
  if (tokens.empty()) return 0.0;
  std::vector<std::uint64_t> bytes(256, 0);
  std::map<std::int32_t, std::uint64_t> others;
  for (std::int32_t t : tokens) {
    if (t >= 0 && t < 256) ++bytes[static_cast<std::size_t>(t)];
    else ++others[t];
  }
  const double n = static_cast<double>(tokens.size());
  double h = 0.0;
  auto add = [&](std::uint64_t c) {
    if (c == 0) return;
    const double p = static_cast<double>(c) / n;
    h -= p * std::log(p);
  };
  for (std::uint64_t c : bytes) add(c);
  for (const auto& kv : others) add(kv.second);
  return h;
}

// Windows of seq_len input tokens and their next-token targets over one token stream.
// Holds a pointer to `tokens`, which must outlive the sampler. Output buffers are
// (batch, seq_len), row-major.
class BatchSampler {
 public:
  BatchSampler(const std::vector<std::int32_t>& tokens, std::uint64_t seed, std::int64_t batch,
               std::int64_t seq_len)
      : tokens_(&tokens), seed_(seed), batch_(batch), seq_len_(seq_len) {
    TMOE_CHECK(batch >= 1 && batch <= std::numeric_limits<std::uint32_t>::max(), "BatchSampler.batch",
               ::tmoe::detail::cat("batch is ", batch), "1 <= batch < 2^32");
    TMOE_CHECK(seq_len >= 1, "BatchSampler.seq_len", ::tmoe::detail::cat("seq_len is ", seq_len), "seq_len >= 1");
    TMOE_CHECK(static_cast<std::int64_t>(tokens.size()) > seq_len, "BatchSampler.tokens",
               ::tmoe::detail::cat("token stream has ", tokens.size(), " tokens, too few for one window"),
               ::tmoe::detail::cat("at least seq_len + 1 = ", seq_len + 1, " tokens"));
  }
  BatchSampler(std::vector<std::int32_t>&&, std::uint64_t, std::int64_t, std::int64_t) = delete;

  std::int64_t batch() const { return batch_; }
  std::int64_t seq_len() const { return seq_len_; }

  // Start of row `row` of step `step`'s training batch: a pure function of
  // (seed, step, row). Uniform over the tokens.size() - seq_len valid starts (the
  // modulo bias is below starts / 2^64).
  std::int64_t window_start(std::int64_t step, std::int64_t row) const {
    TMOE_CHECK(step >= 0 && step <= std::numeric_limits<std::uint32_t>::max(), "BatchSampler.step",
               ::tmoe::detail::cat("step is ", step), "0 <= step < 2^32");
    TMOE_CHECK(row >= 0 && row <= std::numeric_limits<std::uint32_t>::max(), "BatchSampler.row",
               ::tmoe::detail::cat("row is ", row), "0 <= row < 2^32");
    const RngKey key{seed_, static_cast<std::uint32_t>(step), site_id(Site::kBatch),
                     static_cast<std::uint32_t>(row)};
    const std::uint64_t r = std::uint64_t{key.bits(0)} | (std::uint64_t{key.bits(1)} << 32);
    const std::uint64_t starts = tokens_->size() - static_cast<std::uint64_t>(seq_len_);
    return static_cast<std::int64_t>(r % starts);
  }

  // Rows [first_row, first_row + rows) of step `step`'s global batch: how a rank takes
  // its slice. inputs, targets: (rows, seq_len).
  void train_rows(std::int64_t step, std::int64_t first_row, std::int64_t rows, std::int32_t* inputs,
                  std::int32_t* targets) const {
    TMOE_CHECK(first_row >= 0 && rows >= 0 && first_row + rows <= batch_, "BatchSampler.train_rows",
               ::tmoe::detail::cat("rows [", first_row, ", ", first_row + rows, ") requested"),
               ::tmoe::detail::cat("a slice of the ", batch_, " rows of the global batch"));
    for (std::int64_t r = 0; r < rows; ++r) copy_window(window_start(step, first_row + r), r, inputs, targets);
  }

  // inputs, targets: (batch, seq_len); targets[b][t] = inputs[b][t + 1] within the stream.
  void train_batch(std::int64_t step, std::int32_t* inputs, std::int32_t* targets) const {
    train_rows(step, 0, batch_, inputs, targets);
  }

  // Number of fixed evaluation batches: the stream holds (size - 1) / seq_len disjoint
  // windows, grouped into full batches; at least one batch, whose windows overlap when
  // the stream is shorter than batch disjoint windows.
  std::int64_t eval_batches_available() const {
    const std::int64_t windows = (static_cast<std::int64_t>(tokens_->size()) - 1) / seq_len_;
    return std::max<std::int64_t>(1, windows / batch_);
  }

  // Evaluation batch i: window j of the M = eval_batches_available() * batch windows
  // starts at floor(j * (size - 1 - seq_len) / (M - 1)), evenly spread over the whole
  // stream, and row r of batch i is window r * eval_batches_available() + i, so every
  // batch (and any prefix of the batches) spans the whole stream.
  void eval_batch(std::int64_t i, std::int32_t* inputs, std::int32_t* targets) const {
    const std::int64_t n = eval_batches_available();
    TMOE_CHECK(i >= 0 && i < n, "BatchSampler.eval_batch", ::tmoe::detail::cat("eval batch ", i, " requested"),
               ::tmoe::detail::cat("an index in [0, ", n, ")"));
    for (std::int64_t r = 0; r < batch_; ++r) copy_window(eval_start(r * n + i, n * batch_), r, inputs, targets);
  }

 private:
  std::int64_t eval_start(std::int64_t j, std::int64_t windows) const {
    if (windows <= 1) return 0;
    const std::int64_t last = static_cast<std::int64_t>(tokens_->size()) - 1 - seq_len_;
    const std::int64_t q = last / (windows - 1), rem = last % (windows - 1);
    return j * q + (j * rem) / (windows - 1);  // floor(j * last / (windows - 1)) without overflow
  }

  void copy_window(std::int64_t start, std::int64_t row, std::int32_t* inputs, std::int32_t* targets) const {
    const std::int32_t* src = tokens_->data() + start;
    std::copy(src, src + seq_len_, inputs + row * seq_len_);
    std::copy(src + 1, src + 1 + seq_len_, targets + row * seq_len_);
  }

  const std::vector<std::int32_t>* tokens_;
  std::uint64_t seed_;
  std::int64_t batch_, seq_len_;
};

}  // namespace tmoe::data
