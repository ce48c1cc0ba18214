#define BOOST_TEST_MODULE safetensors
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "../support/files.hpp"
#include "tmoe/io/safetensors.hpp"

namespace fs = std::filesystem;
using tmoe::io::SafetensorsFile;
using tmoe::io::TensorRef;
using tmoe::test::append_u64_le;
using tmoe::test::Bytes;
using tmoe::test::read_bytes;
using tmoe::test::read_u64_le;
using tmoe::test::TempDir;
using tmoe::test::write_bytes;

namespace {

void append(Bytes& b, const void* p, std::size_t n) {
  auto* c = static_cast<const unsigned char*>(p);
  b.insert(b.end(), c, c + n);
}

void append(Bytes& b, const std::string& s) { append(b, s.data(), s.size()); }

template <class T>
Bytes raw(const std::vector<T>& v) {
  Bytes b;
  append(b, v.data(), v.size() * sizeof(T));
  return b;
}

Bytes span_bytes(std::span<const std::byte> s) {
  Bytes b(s.size());
  if (!s.empty()) std::memcpy(b.data(), s.data(), s.size());
  return b;
}

}  // namespace

BOOST_AUTO_TEST_CASE(round_trip_of_dtypes_and_shapes) {
  TempDir tmp;
  const std::string path = tmp.file("t.safetensors");
  const std::vector<float> f32 = {1.5f, -2.25f, 3.0f, 0.0f, -0.0f, 1e-30f};             // (2, 3)
  const std::vector<double> f64 = {1.0 / 3.0, -1e300, 2.5, 0.0, 7.0};                    // (5)
  const std::vector<std::int32_t> i32_empty;                                              // (3, 0, 2)
  const std::vector<std::int64_t> i64_scalar = {-(std::int64_t{1} << 40)};               // ()
  const std::vector<std::uint8_t> u8 = {0, 1, 127, 255};                                  // (4)
  const std::vector<std::uint16_t> bf16 = {0x3f80, 0xc000, 0x0000, 0x7f80};               // (2, 2)
  const std::vector<std::uint16_t> f16 = {0x3c00, 0xc000, 0x0001};                        // (3)
  std::vector<float> rank5(6);                                                            // (1, 2, 1, 3, 1)
  for (int i = 0; i < 6; ++i) rank5[static_cast<std::size_t>(i)] = static_cast<float>(i) * 0.5f;
  const float scalar_f32 = 42.0f;                                                         // ()

  tmoe::io::write_safetensors(path, {
      {"f32", "F32", {2, 3}, f32.data()},
      {"f64", "F64", {5}, f64.data()},
      {"i32.empty", "I32", {3, 0, 2}, nullptr},
      {"i64.scalar", "I64", {}, i64_scalar.data()},
      {"u8", "U8", {4}, u8.data()},
      {"bf16", "BF16", {2, 2}, bf16.data()},
      {"f16", "F16", {3}, f16.data()},
      {"rank5", "F32", {1, 2, 1, 3, 1}, rank5.data()},
      {"f32.empty", "F32", {0}, nullptr},
      {"f32.scalar", "F32", {}, &scalar_f32},
  });
  BOOST_TEST(!fs::exists(tmoe::io::temp_path_for(path)));

  const auto f = SafetensorsFile::open(path);
  const std::vector<std::string> expect_names = {"bf16", "f16", "f32", "f32.empty", "f32.scalar",
                                                 "f64", "i32.empty", "i64.scalar", "rank5", "u8"};
  BOOST_TEST(f.names() == expect_names, boost::test_tools::per_element());
  BOOST_TEST(f.size() == 10u);
  BOOST_TEST(f.has("f32"));
  BOOST_TEST(!f.has("f33"));
  BOOST_TEST(f.metadata().empty());

  BOOST_TEST(f.info("f32").dtype == "F32");
  BOOST_TEST(f.info("f32").shape == (std::vector<std::int64_t>{2, 3}), boost::test_tools::per_element());
  BOOST_TEST(f.info("i32.empty").shape == (std::vector<std::int64_t>{3, 0, 2}), boost::test_tools::per_element());
  BOOST_TEST(f.info("i32.empty").numel() == 0);
  BOOST_TEST(f.info("i64.scalar").shape.empty());
  BOOST_TEST(f.info("i64.scalar").numel() == 1);
  BOOST_TEST(f.info("rank5").shape.size() == 5u);
  BOOST_TEST(f.info("bf16").dtype == "BF16");
  BOOST_TEST(f.info("f16").dtype == "F16");
  BOOST_TEST(f.info("u8").dtype == "U8");

  // Bytes come back exactly, and typed reads give the values.
  BOOST_TEST(span_bytes(f.bytes("f32")) == raw(f32), boost::test_tools::per_element());
  BOOST_TEST(span_bytes(f.bytes("f64")) == raw(f64), boost::test_tools::per_element());
  BOOST_TEST(span_bytes(f.bytes("bf16")) == raw(bf16), boost::test_tools::per_element());
  BOOST_TEST(span_bytes(f.bytes("f16")) == raw(f16), boost::test_tools::per_element());
  BOOST_TEST(f.bytes("i32.empty").size() == 0u);
  BOOST_TEST(f.read<float>("f32") == f32, boost::test_tools::per_element());
  BOOST_TEST(f.read<double>("f64") == f64, boost::test_tools::per_element());
  BOOST_TEST(f.read<float>("rank5") == rank5, boost::test_tools::per_element());
  BOOST_TEST(f.read<std::int32_t>("i32.empty").empty());
  BOOST_TEST(f.read<float>("f32.empty").empty());
  BOOST_TEST(f.read<float>("f32.scalar") == std::vector<float>{42.0f}, boost::test_tools::per_element());
  BOOST_TEST(f.read<std::int64_t>("i64.scalar") == i64_scalar, boost::test_tools::per_element());
  BOOST_TEST(f.read<int>("u8") == (std::vector<int>{0, 1, 127, 255}), boost::test_tools::per_element());
  BOOST_TEST(f.read<std::uint8_t>("u8") == u8, boost::test_tools::per_element());

  const auto b = f.read<float>("bf16");
  BOOST_TEST(b[0] == 1.0f);
  BOOST_TEST(b[1] == -2.0f);
  BOOST_TEST(b[2] == 0.0f);
  BOOST_TEST(std::isinf(b[3]));
  const auto h = f.read<double>("f16");
  BOOST_TEST(h[0] == 1.0);
  BOOST_TEST(h[1] == -2.0);
  BOOST_TEST(h[2] == std::ldexp(1.0, -24));  // smallest subnormal half

  // Copies share the mapping and stay valid after the original is gone.
  SafetensorsFile copy = f;
  { const auto moved = std::move(copy); BOOST_TEST(moved.read<float>("f32") == f32, boost::test_tools::per_element()); }
}

BOOST_AUTO_TEST_CASE(float_and_double_convert_both_ways) {
  TempDir tmp;
  const std::string path = tmp.file("c.safetensors");
  const std::vector<float> f = {0.1f, -3.5f, 1e-8f, 65504.0f};
  const std::vector<double> d = {0.1, -3.5, 1.0 / 3.0, 1e10};
  tmoe::io::write_safetensors(path, {{"f", "F32", {4}, f.data()}, {"d", "F64", {2, 2}, d.data()}});
  const auto file = SafetensorsFile::open(path);
  const auto fd = file.read<double>("f");
  for (std::size_t i = 0; i < f.size(); ++i) BOOST_TEST(fd[i] == static_cast<double>(f[i]));
  const auto df = file.read<float>("d");
  for (std::size_t i = 0; i < d.size(); ++i) BOOST_TEST(df[i] == static_cast<float>(d[i]));
  std::vector<double> into(4, -1.0);
  file.read_into("d", into.data());
  BOOST_TEST(into == d, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(metadata_round_trip) {
  TempDir tmp;
  const std::string path = tmp.file("m.safetensors");
  const std::vector<float> x = {1.0f};
  const std::map<std::string, std::string> meta = {
      {"format", "pt"}, {"step", "1200"}, {"config", "{\"d_model\": 64, \"quote\": \"\\\"\"}"}, {"unicode", "α→β"}, {"empty", ""}};
  tmoe::io::write_safetensors(path, {{"x", "F32", {1}, x.data()}}, meta);
  const auto f = SafetensorsFile::open(path);
  BOOST_TEST(f.metadata() == meta);
  BOOST_TEST(!f.has("__metadata__"));
  BOOST_TEST(f.names() == std::vector<std::string>{"x"}, boost::test_tools::per_element());

  // A file with only metadata and no tensors is valid too.
  tmoe::io::write_safetensors(path, {}, meta);
  const auto g = SafetensorsFile::open(path);
  BOOST_TEST(g.size() == 0u);
  BOOST_TEST(g.metadata() == meta);
}

BOOST_AUTO_TEST_CASE(data_section_is_8_byte_aligned) {
  TempDir tmp;
  const std::vector<std::uint8_t> data = {9, 8, 7};
  for (int len = 1; len <= 24; ++len) {
    const std::string path = tmp.file("a" + std::to_string(len));
    const std::string name(static_cast<std::size_t>(len), 'n');
    tmoe::io::write_safetensors(path, {{name, "U8", {3}, data.data()}});
    const Bytes b = read_bytes(path);
    const std::uint64_t n = read_u64_le(b);
    BOOST_TEST_CONTEXT("name length " << len) {
      BOOST_TEST((8 + n) % 8 == 0u);
      BOOST_TEST(b.size() == 8 + n + 3);
      // Padding is spaces after the closing brace, at most 7 of them.
      std::size_t last = 8 + n - 1;
      int pad = 0;
      while (b[last] == ' ') --last, ++pad;
      BOOST_TEST(b[last] == '}');
      BOOST_TEST(pad < 8);
      BOOST_TEST(b[8 + n] == 9);
      BOOST_TEST(b[8 + n + 2] == 7);
      BOOST_TEST(SafetensorsFile::open(path).read<int>(name) == (std::vector<int>{9, 8, 7}), boost::test_tools::per_element());
    }
  }
}

BOOST_AUTO_TEST_CASE(byte_layout_of_a_tiny_file) {
  TempDir tmp;
  const std::string path = tmp.file("tiny.safetensors");
  const float w[2] = {1.0f, -2.0f};
  const std::int32_t b = 7;
  tmoe::io::write_safetensors(path, {{"w", "F32", {2}, w}, {"b", "I32", {}, &b}}, {{"k", "v"}});

  // 132 bytes of JSON + 4 spaces = 136 = 0x88, so the data starts at 144 = 18 * 8.
  Bytes expect = {0x88, 0, 0, 0, 0, 0, 0, 0};
  append(expect,
         std::string(R"({"__metadata__":{"k":"v"},)") +
             R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)" +
             R"("b":{"dtype":"I32","shape":[],"data_offsets":[8,12]}})" + "    ");
  const Bytes data = {0x00, 0x00, 0x80, 0x3f,   // 1.0f
                      0x00, 0x00, 0x00, 0xc0,   // -2.0f
                      0x07, 0x00, 0x00, 0x00};  // 7
  expect.insert(expect.end(), data.begin(), data.end());
  BOOST_TEST(expect.size() == 156u);
  BOOST_TEST(read_bytes(path) == expect, boost::test_tools::per_element());
}

// A file as another writer might produce it: no padding (data section unaligned), keys in
// another order, data laid out out of name order, half-precision dtypes.
BOOST_AUTO_TEST_CASE(reads_a_file_from_another_writer) {
  TempDir tmp;
  const std::string path = tmp.file("foreign.safetensors");
  const std::string header =
      R"({"z":{"data_offsets":[0,6],"shape":[3],"dtype":"F16"},)"
      R"( "a" : {"shape":[2],"dtype":"BF16","data_offsets":[6,10]} ,)"
      R"("ids":{"dtype":"I64","data_offsets":[10,26],"shape":[2]},)"
      R"("__metadata__":{"format":"pt"}})";
  Bytes b;
  append_u64_le(b, header.size());
  append(b, header);
  const std::vector<std::uint16_t> z = {0x3555, 0x7c00, 0x8400};  // 0.333251953125, +inf, -2^-14
  const std::vector<std::uint16_t> a = {0x4049, 0xbf80};          // 3.140625, -1
  const std::vector<std::int64_t> ids = {5, -(std::int64_t{1} << 33)};
  append(b, z.data(), 6);
  append(b, a.data(), 4);
  append(b, ids.data(), 16);
  BOOST_REQUIRE((8 + header.size()) % 8 != 0);  // really unaligned
  write_bytes(path, b);

  const auto f = SafetensorsFile::open(path);
  BOOST_TEST(f.names() == (std::vector<std::string>{"a", "ids", "z"}), boost::test_tools::per_element());
  BOOST_TEST(f.metadata().at("format") == "pt");
  const auto zf = f.read<float>("z");
  BOOST_TEST(zf[0] == 0.333251953125f);
  BOOST_TEST((std::isinf(zf[1]) && zf[1] > 0));
  BOOST_TEST(zf[2] == -std::ldexp(1.0f, -14));
  BOOST_TEST(f.read<double>("a") == (std::vector<double>{3.140625, -1.0}), boost::test_tools::per_element());
  BOOST_TEST(f.read<std::int64_t>("ids") == ids, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(every_half_converts_exactly) {
  // Reference: value = (-1)^s * 2^(e-15) * (1 + m/1024), subnormals 2^-14 * m/1024.
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    const std::uint32_t s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    const float got = tmoe::io::detail::half_to_float(static_cast<std::uint16_t>(h));
    if (e == 0x1f) {
      BOOST_REQUIRE(m == 0 ? std::isinf(got) : std::isnan(got));
      continue;
    }
    double ref = e == 0 ? std::ldexp(static_cast<double>(m) / 1024.0, -14)
                        : std::ldexp(1.0 + static_cast<double>(m) / 1024.0, static_cast<int>(e) - 15);
    if (s) ref = -ref;
    BOOST_REQUIRE_MESSAGE(static_cast<double>(got) == ref, "half 0x" << std::hex << h);
    BOOST_REQUIRE(std::signbit(got) == (s != 0));
  }
}

namespace {
tmoe::ParamRegistry small_registry() {
  tmoe::ParamRegistry r;
  r.add("embed.weight", tmoe::Shape{5, 3}, tmoe::kTagEmbedding, tmoe::Init::kNormal, 0.02);
  r.add("layers.0.norm.weight", tmoe::Shape{3}, tmoe::kTagNorm, tmoe::Init::kOnes);
  r.add("layers.0.moe.experts.1.w1", tmoe::Shape{2, 3, 4}, tmoe::kTagExpert, tmoe::Init::kNormal, 0.02);
  r.add("head.scale", tmoe::Shape{}, tmoe::kTagHead, tmoe::Init::kOnes);  // 0-d
  return r;
}

template <class T>
std::vector<T> filled(const tmoe::ParamRegistry& r) {
  std::vector<T> flat(static_cast<std::size_t>(r.total()), T(-777));  // padding keeps -777
  for (auto& p : r.params())
    for (std::int64_t i = 0; i < p.numel(); ++i)
      flat[static_cast<std::size_t>(p.offset + i)] = static_cast<T>(0.1 * static_cast<double>(p.offset + i) - 1.0 / 3.0);
  return flat;
}
}  // namespace

BOOST_AUTO_TEST_CASE(save_and_load_params) {
  TempDir tmp;
  const std::string path = tmp.file("ckpt.safetensors");
  const auto reg = small_registry();
  const auto src = filled<float>(reg);
  tmoe::io::save_params(path, reg, src.data(), {{"step", "17"}});
  BOOST_TEST(!fs::exists(tmoe::io::temp_path_for(path)));

  const auto f = SafetensorsFile::open(path);
  BOOST_TEST(f.size() == 4u);
  BOOST_TEST(f.metadata().at("step") == "17");
  for (auto& p : reg.params()) {
    BOOST_TEST(f.info(p.name).dtype == "F32");
    BOOST_TEST(f.info(p.name).numel() == p.numel());
    BOOST_TEST(static_cast<int>(f.info(p.name).shape.size()) == p.shape.rank);
  }
  BOOST_TEST(f.info("head.scale").shape.empty());

  std::vector<float> dst(src.size(), 5.0f);
  tmoe::io::load_params(f, reg, dst.data());
  for (auto& p : reg.params())
    for (std::int64_t i = 0; i < p.numel(); ++i) {
      const auto k = static_cast<std::size_t>(p.offset + i);
      BOOST_REQUIRE(dst[k] == src[k]);
    }
  // The flat buffer's alignment padding is neither stored nor touched.
  BOOST_TEST(reg.total() > reg.count());
  std::int64_t untouched = 0;
  for (float v : dst) untouched += v == 5.0f;
  BOOST_TEST(untouched == reg.total() - reg.count());
}

BOOST_AUTO_TEST_CASE(params_convert_between_float_and_double) {
  TempDir tmp;
  const auto reg = small_registry();
  const auto sf = filled<float>(reg);
  const auto sd = filled<double>(reg);
  tmoe::io::save_params(tmp.file("f.st"), reg, sf.data());
  tmoe::io::save_params(tmp.file("d.st"), reg, sd.data());
  BOOST_TEST(SafetensorsFile::open(tmp.file("d.st")).info("embed.weight").dtype == "F64");

  std::vector<double> fd(sf.size(), -777.0);
  tmoe::io::load_params(SafetensorsFile::open(tmp.file("f.st")), reg, fd.data());
  std::vector<float> df(sd.size(), -777.0f);
  tmoe::io::load_params(SafetensorsFile::open(tmp.file("d.st")), reg, df.data());
  for (std::size_t k = 0; k < sf.size(); ++k) {
    BOOST_REQUIRE(fd[k] == static_cast<double>(sf[k]));
    BOOST_REQUIRE(df[k] == static_cast<float>(sd[k]));
  }
}

BOOST_AUTO_TEST_CASE(params_under_a_prefix) {
  TempDir tmp;
  const auto reg = small_registry();
  const auto src = filled<double>(reg);
  const std::string path = tmp.file("p.st");
  tmoe::io::save_params(path, reg, src.data(), {}, "model.");
  const auto f = SafetensorsFile::open(path);
  BOOST_TEST(f.has("model.embed.weight"));
  BOOST_TEST(!f.has("embed.weight"));
  std::vector<double> dst(src.size(), -777.0);
  tmoe::io::load_params(f, reg, dst.data(), "model.");
  BOOST_TEST(dst == src, boost::test_tools::per_element());

  // Tensors outside the prefix (optimizer state, another model) do not disturb the load.
  std::vector<TensorRef> refs;
  for (auto& p : reg.params())
    refs.push_back({"model." + p.name, "F64", std::vector<std::int64_t>(p.shape.dims.begin(), p.shape.dims.begin() + p.shape.rank),
                    src.data() + p.offset});
  const std::vector<float> m(15, 0.5f);
  refs.push_back({"optim.m.embed.weight", "F32", {5, 3}, m.data()});
  tmoe::io::write_safetensors(path, refs);
  std::vector<double> again(src.size(), -777.0);
  tmoe::io::load_params(SafetensorsFile::open(path), reg, again.data(), "model.");
  BOOST_TEST(again == src, boost::test_tools::per_element());
}
