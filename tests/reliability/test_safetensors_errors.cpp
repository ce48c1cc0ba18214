#define BOOST_TEST_MODULE safetensors_errors
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "../support/expect_error.hpp"
#include "../support/files.hpp"
#include "tmoe/io/safetensors.hpp"

namespace fs = std::filesystem;
using tmoe::io::SafetensorsFile;
using tmoe::io::TensorRef;
using tmoe::test::Bytes;
using tmoe::test::expect_error;
using tmoe::test::read_bytes;
using tmoe::test::TempDir;
using tmoe::test::write_bytes;

namespace {

// A file with the given header text, declared header length, and `data` zero bytes.
void craft(const std::string& path, const std::string& header, std::size_t data, std::uint64_t declared) {
  Bytes b;
  tmoe::test::append_u64_le(b, declared);
  b.insert(b.end(), header.begin(), header.end());
  b.resize(b.size() + data, 0);
  write_bytes(path, b);
}
void craft(const std::string& path, const std::string& header, std::size_t data) {
  craft(path, header, data, header.size());
}

void expect_open_error(const std::string& path, const std::vector<std::string>& parts) {
  expect_error([&] { (void)SafetensorsFile::open(path); }, parts);
}

// Two non-empty tensors and metadata; returns the file's bytes.
Bytes reference_file(const std::string& path) {
  static const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  static const std::vector<std::int32_t> b = {7, 8, 9};
  tmoe::io::write_safetensors(path, {{"a", "F32", {2, 3}, a.data()}, {"b", "I32", {3}, b.data()}}, {{"step", "3"}});
  return read_bytes(path);
}

}  // namespace

BOOST_AUTO_TEST_CASE(truncated_files_are_rejected) {
  TempDir tmp;
  const Bytes full = reference_file(tmp.file("full"));
  const std::uint64_t n = tmoe::test::read_u64_le(full);
  BOOST_REQUIRE(full.size() == 8 + n + 36);
  BOOST_REQUIRE_NO_THROW(SafetensorsFile::open(tmp.file("full")));

  struct Cut {
    std::size_t at;
    const char* says;
  };
  const std::vector<Cut> cuts = {
      {0, "too short"},          {3, "too short"},          {7, "too short"},          // inside the length
      {8, "runs past the end"},  {9, "runs past the end"},  {8 + n / 2, "runs past"},  // inside the header
      {8 + n - 1, "runs past"},                                                        //
      {8 + n, "run past"},       {8 + n + 1, "run past"},   {8 + n + 24, "run past"},  // inside the data
      {full.size() - 1, "run past"},
  };
  for (auto& c : cuts) {
    BOOST_TEST_CONTEXT("cut at byte " << c.at << " of " << full.size()) {
      const std::string path = tmp.file("cut" + std::to_string(c.at));
      write_bytes(path, Bytes(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(c.at)));
      expect_open_error(path, {path, c.says});
    }
  }
}

BOOST_AUTO_TEST_CASE(header_length_larger_than_the_file) {
  TempDir tmp;
  const std::string path = tmp.file("len");
  const std::string h = R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})";
  craft(path, h, 2, h.size() + 3);
  expect_open_error(path, {path, "header length", "runs past the end", "at most"});
  craft(path, h, 2, ~std::uint64_t{0});
  expect_open_error(path, {path, "runs past the end"});
  craft(path, h, 2);  // the same bytes with the true length are fine
  BOOST_TEST(SafetensorsFile::open(path).read<int>("a") == (std::vector<int>{0, 0}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(lying_headers_are_rejected) {
  TempDir tmp;
  struct Case {
    const char* what;
    std::string header;
    std::size_t data;
    std::vector<std::string> says;
  };
  const std::vector<Case> cases = {
      {"offsets beyond the data", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8, {"tensor 'a'", "run past", "end <= 8"}},
      {"begin beyond the data", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[9,9]}})", 8, {"tensor 'a'", "run past"}},
      {"size not matching shape", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, {"tensor 'a'", "shape (3)", "3 * 4 bytes"}},
      {"size not matching dtype", R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", 8, {"tensor 'a'", "2 * 8 bytes"}},
      {"overflowing shape", R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", 8, {"tensor 'a'", "more than 2^64 bytes", "8 bytes"}},
      {"overlapping tensors",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12,
       {"'a' and 'b' overlap"}},
      {"identical ranges",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})", 8,
       {"overlap"}},
      {"reversed offsets", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8, {"tensor 'a'", "reversed"}},
      {"a gap between tensors",
       R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 12,
       {"bytes [4, 8)", "belong to no tensor"}},
      {"trailing bytes", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 12, {"4 trailing bytes"}},
      {"negative dimension", R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, {"tensor 'a'", "negative"}},
      {"unknown dtype", R"({"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2, {"tensor 'a'", "unknown dtype 'F8_E4M3'", "one of F32"}},
      {"missing dtype", R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8, {"tensor 'a'", "no \"dtype\""}},
      {"missing shape", R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", 8, {"no \"shape\""}},
      {"missing data_offsets", R"({"a":{"dtype":"F32","shape":[2]}})", 8, {"no \"data_offsets\""}},
      {"dtype not a string", R"({"a":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})", 8, {"dtype is a JSON number"}},
      {"shape not an array", R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", 8, {"shape is a JSON string"}},
      {"fractional dimension", R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8, {"non-integer dimension"}},
      {"one offset", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8]}})", 8, {"data_offsets is [8]"}},
      {"negative offset", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8, {"data_offsets is [-8,0]"}},
      {"offsets not an array", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":{"begin":0}}})", 8, {"data_offsets is"}},
      {"entry not an object", R"({"a":[1,2]})", 0, {"tensor 'a'", "entry is a JSON array"}},
      {"metadata not an object", R"({"__metadata__":["x"]})", 0, {"__metadata__ is a JSON array"}},
      {"metadata value not a string", R"({"__metadata__":{"step":3}})", 0, {"entry 'step' is a JSON number"}},
      {"duplicate tensor name",
       R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8,
       {"names 'a' twice"}},
      {"invalid JSON", R"({"a":{"dtype":"F32","shape":[2],)", 8, {"not valid JSON"}},
      {"empty header", "", 0, {"not valid JSON"}},
      {"trailing garbage after JSON", R"({} x)", 0, {"not valid JSON"}},
      {"invalid UTF-8", "{\"\xff\":{}}", 0, {"not valid JSON"}},
      {"header an array", R"([1,2,3])", 0, {"header is a JSON array", "a JSON object"}},
      {"header a string", R"("safetensors")", 0, {"header is a JSON string"}},
  };
  for (auto& c : cases) {
    BOOST_TEST_CONTEXT(c.what) {
      const std::string path = tmp.file("lie");
      craft(path, c.header, c.data);
      tmoe::test::expect_error_then([&] { (void)SafetensorsFile::open(path); }, [&](const tmoe::Error& e) {
        BOOST_TEST(e.where().find(path) == 0u);
        tmoe::test::check_message(e.what(), c.says);
      });
    }
  }
}

BOOST_AUTO_TEST_CASE(files_that_are_not_there_or_not_files) {
  TempDir tmp;
  expect_open_error(tmp.file("absent"), {tmp.file("absent"), "could not open", "No such file"});
  expect_open_error(tmp.dir.string(), {"not a regular file"});
}

BOOST_AUTO_TEST_CASE(reading_a_missing_or_unconvertible_tensor) {
  TempDir tmp;
  const std::string path = tmp.file("r");
  reference_file(path);
  const auto f = SafetensorsFile::open(path);
  expect_error([&] { (void)f.read<float>("c"); }, {path, "no tensor named 'c'", "one of the file's 2 tensors: a, b"});
  expect_error([&] { (void)f.info("A"); }, {"no tensor named 'A'"});
  expect_error([&] { (void)f.read<float>("b"); }, {"tensor 'b'", "dtype I32", "floating-point"});
  expect_error([&] { (void)f.read<int>("a"); }, {"tensor 'a'", "dtype F32", "integer"});

  // Many tensors: the list is cut short.
  std::vector<float> x(1, 0.0f);
  std::vector<TensorRef> refs;
  for (int i = 0; i < 9; ++i) refs.push_back({"t" + std::to_string(i), "F32", {}, x.data()});
  tmoe::io::write_safetensors(path, refs);
  expect_error([&] { (void)SafetensorsFile::open(path).read<float>("t9"); }, {"9 tensors: t0, t1, t2, t3, t4, ..."});

  // Integer narrowing is checked, and a failed read_into writes nothing.
  const std::vector<std::int64_t> big = {1, std::int64_t{1} << 40};
  const std::vector<std::int32_t> neg = {-1};
  tmoe::io::write_safetensors(path, {{"big", "I64", {2}, big.data()}, {"neg", "I32", {1}, neg.data()}});
  const auto g = SafetensorsFile::open(path);
  expect_error([&] { (void)g.read<std::int32_t>("big"); }, {"tensor 'big'", "element 1 = 1099511627776"});
  expect_error([&] { (void)g.read<std::uint32_t>("neg"); }, {"element 0 = -1", "values in [0, 4294967295]"});
  std::int32_t dst[2] = {-5, -6};
  BOOST_CHECK_THROW(g.read_into("big", dst), tmoe::Error);
  BOOST_TEST(dst[0] == -5);
  BOOST_TEST(dst[1] == -6);
}

namespace {

tmoe::ParamRegistry model_registry() {
  tmoe::ParamRegistry r;
  r.add("embed.weight", tmoe::Shape{5, 3}, tmoe::kTagEmbedding, tmoe::Init::kNormal, 0.02);
  r.add("layers.0.norm.weight", tmoe::Shape{3}, tmoe::kTagNorm, tmoe::Init::kOnes);
  r.add("layers.0.moe.router.weight", tmoe::Shape{4, 3}, tmoe::kTagRouter, tmoe::Init::kNormal, 0.02);
  return r;
}

std::vector<std::int64_t> dims(const tmoe::Shape& s) { return {s.dims.begin(), s.dims.begin() + s.rank}; }

// Writes the registry's parameters (values 1, 2, ...) with per-name overrides.
struct Doctored {
  std::vector<TensorRef> refs;
  std::vector<std::vector<float>> store;
  Doctored(const tmoe::ParamRegistry& r, const std::string& prefix = "") {
    store.reserve(64);
    for (auto& p : r.params()) add(prefix + p.name, dims(p.shape), "F32");
  }
  void add(const std::string& name, std::vector<std::int64_t> shape, const std::string& dtype) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    store.emplace_back(static_cast<std::size_t>(n), 1.0f);
    for (std::size_t i = 0; i < store.back().size(); ++i) store.back()[i] = static_cast<float>(i + 1);
    refs.push_back({name, dtype, std::move(shape), store.back().data()});
  }
  void drop(const std::string& name) { std::erase_if(refs, [&](const TensorRef& t) { return t.name == name; }); }
  TensorRef& operator[](const std::string& name) {
    for (auto& t : refs)
      if (t.name == name) return t;
    throw std::logic_error("no " + name);
  }
};

// Loads `path` into a sentinel-filled buffer, expects an error with `parts`, and checks that
// not a single byte of the buffer changed.
template <class T>
void expect_load_error(const std::string& path, const tmoe::ParamRegistry& r, const std::vector<std::string>& parts,
                       const std::string& prefix = "") {
  std::vector<T> flat(static_cast<std::size_t>(r.total()));
  for (std::size_t i = 0; i < flat.size(); ++i) flat[i] = static_cast<T>(-1000.0 - static_cast<double>(i));
  const std::vector<T> before = flat;
  const auto f = SafetensorsFile::open(path);
  expect_error([&] { tmoe::io::load_params(f, r, flat.data(), prefix); }, parts);
  BOOST_TEST(std::memcmp(flat.data(), before.data(), flat.size() * sizeof(T)) == 0);
}

}  // namespace

BOOST_AUTO_TEST_CASE(registry_mismatches_are_rejected_before_any_write) {
  TempDir tmp;
  const auto reg = model_registry();
  const std::string path = tmp.file("ckpt");

  {  // control: the undoctored file loads
    Doctored d(reg);
    tmoe::io::write_safetensors(path, d.refs);
    std::vector<float> flat(static_cast<std::size_t>(reg.total()));
    tmoe::io::load_params(SafetensorsFile::open(path), reg, flat.data());
    BOOST_TEST(flat[static_cast<std::size_t>(reg.find("layers.0.norm.weight")->offset) + 2] == 3.0f);
  }
  {  // a transposed weight; the last parameter, so the earlier ones would load fine
    Doctored d(reg);
    d["layers.0.moe.router.weight"].shape = {3, 4};
    tmoe::io::write_safetensors(path, d.refs);
    expect_load_error<float>(path, reg, {"layers.0.moe.router.weight", "has shape (3, 4) in the checkpoint", "expected shape (4, 3)"});
    expect_load_error<double>(path, reg, {"layers.0.moe.router.weight", "(3, 4)", "(4, 3)"});
  }
  {  // same numel, different rank
    Doctored d(reg);
    d["embed.weight"].shape = {15};
    tmoe::io::write_safetensors(path, d.refs);
    expect_load_error<float>(path, reg, {"embed.weight", "has shape (15)", "expected shape (5, 3)"});
  }
  {  // missing parameter
    Doctored d(reg);
    d.drop("layers.0.norm.weight");
    tmoe::io::write_safetensors(path, d.refs);
    expect_load_error<float>(path, reg, {"lacks 1 of the model's 3 parameters: layers.0.norm.weight", "of shape (3)"});
  }
  {  // extra tensor the model lacks (an expert from a bigger model)
    Doctored d(reg);
    d.add("layers.0.moe.experts.9.w1", {2, 2}, "F32");
    tmoe::io::write_safetensors(path, d.refs);
    expect_load_error<float>(path, reg, {"'layers.0.moe.experts.9.w1'", "not a parameter of the model", "only the model's 3 parameters"});
  }
  {  // integer tensor where a weight belongs
    Doctored d(reg);
    d["layers.0.norm.weight"].dtype = "I32";
    tmoe::io::write_safetensors(path, d.refs);
    expect_load_error<float>(path, reg, {"layers.0.norm.weight", "dtype I32"});
  }
  {  // under a prefix: missing, and extra only counts inside the prefix
    Doctored d(reg, "model.");
    d.drop("model.embed.weight");
    d.add("embed.weight", {5, 3}, "F32");  // right name, outside the prefix
    tmoe::io::write_safetensors(path, d.refs);
    expect_load_error<float>(path, reg, {"model.embed.weight"}, "model.");
    Doctored e(reg, "model.");
    e.add("model.extra", {1}, "F32");
    tmoe::io::write_safetensors(path, e.refs);
    expect_load_error<float>(path, reg, {"'model.extra'", "under prefix 'model.'"}, "model.");
  }
}

BOOST_AUTO_TEST_CASE(writer_leaves_no_tmp_and_rejects_bad_input) {
  TempDir tmp;
  const std::string path = tmp.file("w.safetensors");
  const std::vector<float> x = {1, 2};
  tmoe::io::write_safetensors(path, {{"x", "F32", {2}, x.data()}});
  BOOST_TEST(fs::exists(path));
  BOOST_TEST(!fs::exists(tmoe::io::temp_path_for(path)));
  const Bytes good = read_bytes(path);

  // Rejected before anything is written: the old file stays, no .tmp appears.
  const std::vector<std::pair<std::vector<TensorRef>, std::string>> bad = {
      {{{"x", "F32", {1}, x.data()}, {"x", "F32", {1}, x.data()}}, "tensor 'x': name appears twice"},
      {{{"x", "F8", {1}, x.data()}}, "unknown dtype 'F8'"},
      {{{"x", "F32", {-1}, x.data()}}, "negative dimension"},
      {{{"x", "F32", {2}, nullptr}}, "data pointer is null"},
      {{{"", "F32", {1}, x.data()}}, "name is empty"},
      {{{"__metadata__", "F32", {1}, x.data()}}, "reserved"},
      {{{"x", "F32", {std::int64_t{1} << 62, 8}, x.data()}}, "too large"},
      {{{"x", "U8", {std::int64_t{1} << 32, (std::int64_t{1} << 32) - 1, 0}, x.data()}}, "overflows a 64-bit element count"},
  };
  for (auto& [refs, says] : bad) {
    BOOST_TEST_CONTEXT(says) {
      expect_error([&] { tmoe::io::write_safetensors(path, refs); }, {path, says});
      BOOST_TEST(!fs::exists(tmoe::io::temp_path_for(path)));
      BOOST_TEST(read_bytes(path) == good, boost::test_tools::per_element());
    }
  }
  expect_error([&] { tmoe::io::write_safetensors(path, {{"x", "F32", {2}, x.data()}}, {{"k", "\xff"}}); }, {"UTF-8"});
  BOOST_TEST(read_bytes(path) == good, boost::test_tools::per_element());

  // Failing at the file system: a missing directory, and a rename onto a directory.
  const std::string nodir = tmp.file("no/such/dir/w.safetensors");
  expect_error([&] { tmoe::io::write_safetensors(nodir, {{"x", "F32", {2}, x.data()}}); }, {"cannot create"});
  const std::string isdir = tmp.file("a_directory");
  fs::create_directories(isdir);
  expect_error([&] { tmoe::io::write_safetensors(isdir, {{"x", "F32", {2}, x.data()}}); }, {"cannot rename"});
  BOOST_TEST(!fs::exists(tmoe::io::temp_path_for(isdir)));
  BOOST_TEST(fs::is_directory(isdir));

  // save_params goes through the same path.
  const auto reg = model_registry();
  std::vector<float> flat(static_cast<std::size_t>(reg.total()), 0.5f);
  tmoe::io::save_params(path, reg, flat.data());
  BOOST_TEST(!fs::exists(tmoe::io::temp_path_for(path)));
  BOOST_TEST(SafetensorsFile::open(path).size() == 3u);
}

// A writer killed mid-write (SIGKILL: no destructors, no cleanup) must leave the previous
// file intact under the final name.
BOOST_AUTO_TEST_CASE(killed_writer_leaves_the_old_file) {
  TempDir tmp;
  const std::string path = tmp.file("ckpt.safetensors");
  const std::vector<float> old = {3.0f, 1.0f, 4.0f};
  tmoe::io::write_safetensors(path, {{"w", "F32", {3}, old.data()}});
  const Bytes old_bytes = read_bytes(path);

  const std::vector<float> big(std::size_t{64} << 20, 2.0f);  // 256 MiB: slow enough to interrupt
  int interrupted = 0;
  for (int attempt = 0; attempt < 3; ++attempt) {
    const pid_t child = ::fork();
    BOOST_REQUIRE(child >= 0);
    if (child == 0) {
      try {
        tmoe::io::write_safetensors(path, {{"w", "F32", {static_cast<std::int64_t>(big.size())}, big.data()}});
      } catch (...) {
        ::_exit(2);
      }
      ::_exit(0);
    }
    // Kill it once the temporary file has some but not all of its bytes.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    std::error_code ec;
    while (std::chrono::steady_clock::now() < deadline) {
      const auto sz = fs::file_size(tmoe::io::temp_path_for(path, child), ec);
      if (!ec && sz > 0) break;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    ::kill(child, SIGKILL);
    int status = 0;
    BOOST_REQUIRE(::waitpid(child, &status, 0) == child);
    if (WIFSIGNALED(status)) ++interrupted;

    // Whatever the moment of death, `path` is a complete file: the old one, or (if the
    // child won the race) the new one.
    const auto f = SafetensorsFile::open(path);
    if (f.info("w").numel() == 3) {
      BOOST_TEST(read_bytes(path) == old_bytes, boost::test_tools::per_element());
    } else {
      BOOST_TEST(f.info("w").numel() == static_cast<std::int64_t>(big.size()));
      tmoe::io::write_safetensors(path, {{"w", "F32", {3}, old.data()}});
    }
    // The next writer deletes the dead writer's temporary.
    tmoe::io::write_safetensors(path, {{"w", "F32", {3}, old.data()}});
    BOOST_TEST(!fs::exists(tmoe::io::temp_path_for(path, child)));
    BOOST_TEST(!fs::exists(tmoe::io::temp_path_for(path)));
  }
  BOOST_TEST_MESSAGE("writer killed mid-write in " << interrupted << " of 3 attempts");
  BOOST_TEST(interrupted > 0);
}
