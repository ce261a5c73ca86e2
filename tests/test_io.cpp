// Tests for io/ weights files and data sets: safetensors round trips and every malformed file
// (typed errors, never a crash), IDX files gzip-compressed and plain with every malformed header
// and stream, and a reduced Fashion-MNIST training run when Debian's dataset package is present.
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <unistd.h>

#include "edgesplit/edgesplit.hpp"
#include "test_util.hpp"

using namespace edgesplit;
using edgesplit_test::expect_errc;
namespace fs = std::filesystem;

namespace {

/// A fresh directory under the system temp directory, removed at the end of the test.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    // the process id keeps concurrent test runs (two build trees, ctest -j) apart
    path = fs::temp_directory_path() / ("edgesplit_test_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

[[maybe_unused]] void write_file(const fs::path& p, const std::vector<std::byte>& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

[[maybe_unused]] std::vector<std::byte> read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> b(c.size());
  std::memcpy(b.data(), c.data(), c.size());
  return b;
}

/// Runs `f` and requires it to throw some edgesplit::error (any code): for mutated inputs where
/// several codes are right, the promise under test is "typed error, never a crash".
template <class F>
void expect_edgesplit_error_or_success(F&& f) {
  try {
    f();
  } catch (const edgesplit::error&) {
  }
}

}  // namespace

#if EDGESPLIT_TEST_JSON
#include "edgesplit/io/safetensors.hpp"

namespace {

Sequential<float> sample_model(std::uint64_t seed) {
  Rng rng(seed);
  Sequential<float> m;
  auto& st = m.add<Standardizer<float>>(6, Standardize::per_feature);
  Tensor<float> data(Shape{20, 6});
  for (float& v : data.span()) v = static_cast<float>(rng.uniform(-3, 5));
  st.fit(data.cview());
  m.add<Dense<float>>(6, 5, rng);
  m.add<ReLU<float>>();
  m.add<Dropout<float>>(0.25, 7);
  m.add<Dense<float>>(5, 4, rng);
  m.add<LeakyReLU<float>>(0.1);
  m.add<Dense<float>>(4, 3, rng);
  m.add<Softmax<float>>();
  for (auto& p : m.parameters())
    for (float& v : p.value.span()) v += static_cast<float>(rng.uniform(-0.1, 0.1));
  return m;
}

/// A safetensors file from a header (dumped as is) and a data section.
std::vector<std::byte> make_file(const std::string& header, std::size_t data_bytes) {
  std::vector<std::byte> out(8 + header.size() + data_bytes, std::byte{0});
  std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i, n >>= 8) out[static_cast<std::size_t>(i)] = static_cast<std::byte>(n & 0xff);
  std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}

nlohmann::json header_of(const std::vector<std::byte>& file) {
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<std::uint8_t>(file[static_cast<std::size_t>(i)]);
  return nlohmann::json::parse(std::string(reinterpret_cast<const char*>(file.data() + 8), n));
}

std::vector<std::byte> with_header(const std::vector<std::byte>& file, const nlohmann::json& h) {
  const auto old = header_of(file).dump();
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<std::uint8_t>(file[static_cast<std::size_t>(i)]);
  const std::size_t data = file.size() - 8 - n;
  auto out = make_file(h.dump(), data);
  std::memcpy(out.data() + out.size() - data, file.data() + 8 + n, data);
  return out;
}

SafetensorsFile parse_bytes(const std::vector<std::byte>& b) { return SafetensorsFile::parse(b); }

}  // namespace

TEST_CASE("safetensors: bit-exact round trip, model rebuilt from the file alone", "[io][safetensors]") {
  TempDir dir("st");
  auto m = sample_model(1);
  const auto path = dir.path / "model.safetensors";
  save_safetensors(path, m, {{"note", "test model"}});
  auto back = load_safetensors<float>(path);
  REQUIRE(back.size() == m.size());
  for (std::size_t i = 0; i < m.size(); ++i) {
    CHECK(back[i].spec() == m[i].spec());
    CHECK(back[i].describe() == m[i].describe());
  }
  const auto a = model_state(m), b = model_state(back);
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].name == b[i].name);
    REQUIRE(a[i].value.shape() == b[i].value.shape());
    CHECK(std::memcmp(a[i].value.data(), b[i].value.data(), a[i].value.bytes()) == 0);
  }
  Tensor<float> x(Shape{5, 6});
  Rng rng(3);
  for (float& v : x.span()) v = static_cast<float>(rng.uniform(-3, 5));
  const auto ya = m.predict(x.cview()), yb = back.predict(x.cview());
  CHECK(std::memcmp(ya.data(), yb.data(), ya.bytes()) == 0);

  // the same file into an existing model, and into a model of another shape
  const auto file = SafetensorsFile::read(path);
  CHECK(file.metadata().at("note") == "test model");
  auto other = sample_model(2);
  load_weights(file, other);
  const auto yc = other.predict(x.cview());
  CHECK(std::memcmp(ya.data(), yc.data(), ya.bytes()) == 0);
  Sequential<float> wrong;
  wrong.add<Dense<float>>(6, 5);
  expect_errc(errc::shape_mismatch, [&] { load_weights(file, wrong); });

  // a double model, and a float file read as double (exact widening)
  Rng r2(4);
  Sequential<double> md;
  md.add<Dense<double>>(3, 2, r2);
  save_safetensors(dir.path / "d.safetensors", md);
  auto mdb = load_safetensors<double>(dir.path / "d.safetensors");
  CHECK(std::memcmp(model_state(md)[0].value.data(), model_state(mdb)[0].value.data(), 6 * sizeof(double)) == 0);
  auto widened = load_safetensors<double>(path);
  CHECK(model_state(widened)[2].value[1] == static_cast<double>(a[2].value[1]));
  expect_errc(errc::invalid_argument, [&] { save_safetensors(dir.path / "x", m, {{"format", "mine"}}); });
  expect_errc(errc::io_error, [&] { (void)load_safetensors<float>(dir.path / "missing.safetensors"); });
  expect_errc(errc::io_error, [&] { save_safetensors(dir.path / "no" / "such" / "dir.safetensors", m); });
}

TEST_CASE("safetensors: a convolutional model round-trips bit for bit", "[io][safetensors][conv]") {
  TempDir dir("st_conv");
  Rng rng(8);
  Sequential<float> m;
  Conv2DOptions a;
  a.stride_h = 2;
  a.stride_w = 2;
  a.padding = same_padding(3, 3);
  m.add<Conv2D<float>>(2, 4, 3, 3, a, rng);
  m.add<ReLU<float>>();
  Conv2DOptions b;  // depthwise, dilated, asymmetric padding, no bias
  b.groups = 4;
  b.dilation_h = 2;
  b.padding = {2, 1, 2, 0};
  b.bias = false;
  m.add<Conv2D<float>>(4, 4, 3, 2, b, rng);
  m.add<Dense<float>>(4 * 4 * 3, 3, rng);  // flattens the {4, 4, 3} planes
  for (auto& p : m.parameters())
    for (float& v : p.value.span()) v += static_cast<float>(rng.uniform(-0.1, 0.1));
  const auto path = dir.path / "conv.safetensors";
  save_safetensors(path, m);
  const auto file = SafetensorsFile::read(path);
  CHECK(file.find("0.weight") != nullptr);
  CHECK(file.find("0.bias") != nullptr);
  CHECK(file.find("2.weight") != nullptr);
  CHECK(file.find("2.bias") == nullptr);
  auto back = load_safetensors<float>(path);
  REQUIRE(back.size() == m.size());
  for (std::size_t i = 0; i < m.size(); ++i) CHECK(back[i].spec() == m[i].spec());
  const auto sa = model_state(m), sb = model_state(back);
  REQUIRE(sa.size() == sb.size());
  for (std::size_t i = 0; i < sa.size(); ++i) {
    CHECK(sa[i].name == sb[i].name);
    REQUIRE(sa[i].value.shape() == sb[i].value.shape());
    CHECK(std::memcmp(sa[i].value.data(), sb[i].value.data(), sa[i].value.bytes()) == 0);
  }
  CHECK(sa[0].value.shape() == Shape{4, 2, 3, 3});  // torch.nn.Conv2d's layout
  CHECK(sa[2].value.shape() == Shape{4, 1, 3, 2});
  Tensor<float> x(Shape{3, 2, 8, 6});
  for (float& v : x.span()) v = static_cast<float>(rng.uniform(-1, 1));
  const auto ya = m.predict(x.cview()), yb = back.predict(x.cview());
  REQUIRE(ya.shape() == Shape{3, 3});
  CHECK(std::memcmp(ya.data(), yb.data(), ya.bytes()) == 0);
}

TEST_CASE("safetensors: a CNN tail that starts with a pooling layer round-trips bit for bit",
          "[io][safetensors][pool]") {
  // The tail of a split CNN can start with a pooling layer: the loader cannot know the planes'
  // size from the file, so it must not check the chain with a flat input.
  TempDir dir("st_pool");
  Rng rng(12);
  Sequential<float> m;
  Pool2DOptions ceil;
  ceil.ceil_mode = true;
  m.add<MaxPool2D<float>>(2, 2, ceil);
  m.add<Conv2D<float>>(2, 4, 3, 3, Conv2DOptions{}, rng);
  Pool2DOptions avg;
  avg.stride_h = avg.stride_w = 1;
  avg.padding = {1, 1, 1, 1};
  avg.count_include_pad = false;
  m.add<AvgPool2D<float>>(3, 3, avg);
  m.add<GlobalMaxPool<float>>();
  m.add<Flatten<float>>();
  m.add<Dense<float>>(4, 3, rng);
  const auto path = dir.path / "pool.safetensors";
  save_safetensors(path, m);
  auto back = load_safetensors<float>(path);
  REQUIRE(back.size() == m.size());
  for (std::size_t i = 0; i < m.size(); ++i) CHECK(back[i].spec() == m[i].spec());
  Tensor<float> x(Shape{2, 2, 9, 7});
  for (float& v : x.span()) v = static_cast<float>(rng.uniform(-1, 1));
  const auto ya = m.predict(x.cview()), yb = back.predict(x.cview());
  REQUIRE(ya.shape() == Shape{2, 3});
  CHECK(std::memcmp(ya.data(), yb.data(), ya.bytes()) == 0);
}

TEST_CASE("safetensors: BatchNorm2D's parameters and running statistics round-trip bit for bit",
          "[io][safetensors][batchnorm]") {
  TempDir dir("st_bn");
  Rng rng(11);
  Sequential<float> m;
  m.add<BatchNorm2D<float>>(2, 1e-3, 0.3);  // first: the loader cannot check the chain's width
  m.add<Conv2D<float>>(2, 4, 3, 3, Conv2DOptions{}, rng);
  m.add<BatchNorm2D<float>>(4);
  m.add<HardSwish<float>>();
  m.add<Clip<float>>(-0.5, 4.0);
  m.add<Dense<float>>(4 * 3 * 2, 3, rng);
  // a few training steps move gamma, beta and the running statistics off their initial values
  m.set_training(true);
  for (int step = 0; step < 3; ++step) {
    Tensor<float> x(Shape{4, 2, 5, 4});
    for (float& v : x.span()) v = static_cast<float>(rng.uniform(-1, 3));
    (void)m.forward(x.cview());
  }
  for (auto& p : m.parameters())
    for (float& v : p.value.span()) v += static_cast<float>(rng.uniform(-0.1, 0.1));
  m.set_training(false);

  const auto path = dir.path / "bn.safetensors";
  save_safetensors(path, m);
  const auto file = SafetensorsFile::read(path);
  for (const char* name : {"0.weight", "0.bias", "0.running_mean", "0.running_var", "2.running_var"})
    CHECK(file.find(name) != nullptr);  // PyTorch's state_dict names
  auto back = load_safetensors<float>(path);
  REQUIRE(back.size() == m.size());
  for (std::size_t i = 0; i < m.size(); ++i) {
    CHECK(back[i].spec() == m[i].spec());
    CHECK(back[i].describe() == m[i].describe());
  }
  const auto sa = model_state(m), sb = model_state(back);
  REQUIRE(sa.size() == sb.size());
  REQUIRE(sa.size() == 4 + 2 + 4 + 2);
  for (std::size_t i = 0; i < sa.size(); ++i) {
    CHECK(sa[i].name == sb[i].name);
    REQUIRE(sa[i].value.shape() == sb[i].value.shape());
    CHECK(std::memcmp(sa[i].value.data(), sb[i].value.data(), sa[i].value.bytes()) == 0);
  }
  CHECK(sa[2].name == "0.running_mean");
  CHECK(sa[2].value[0] != 0.0f);  // the training steps moved it
  Tensor<float> x(Shape{3, 2, 5, 4});
  for (float& v : x.span()) v = static_cast<float>(rng.uniform(-1, 3));
  const auto ya = m.predict(x.cview()), yb = back.predict(x.cview());
  REQUIRE(ya.shape() == Shape{3, 3});
  CHECK(std::memcmp(ya.data(), yb.data(), ya.bytes()) == 0);

  // an architecture claiming more BatchNorm2D state than the file holds is refused before building
  auto header = header_of(to_safetensors(m));
  auto arch = nlohmann::json::parse(header["__metadata__"]["architecture"].get<std::string>());
  arch[0]["channels"] = 1000000;
  header["__metadata__"]["architecture"] = arch.dump();
  expect_errc(errc::too_large, [&] { (void)model_from_safetensors<float>(parse_bytes(with_header(to_safetensors(m), header))); });
}

TEST_CASE("safetensors: the layout other tools read", "[io][safetensors]") {
  auto m = sample_model(1);
  const auto bytes = to_safetensors(m);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<std::uint8_t>(bytes[static_cast<std::size_t>(i)]);
  CHECK(n % 8 == 0);  // the data section starts 8-byte aligned
  const auto h = header_of(bytes);
  CHECK(h["__metadata__"]["format"] == "edgesplit.sequential");
  CHECK(h["__metadata__"]["format_version"] == "1");
  const auto arch = nlohmann::json::parse(h["__metadata__"]["architecture"].get<std::string>());
  REQUIRE(arch.size() == 8);
  CHECK(arch[1] == nlohmann::json{{"type", "Dense"}, {"in", 6}, {"out", 5}});
  CHECK(arch[3]["p"] == 0.25);
  // PyTorch nn.Sequential state_dict names: Linear weight {out, in}, then bias
  CHECK(h["1.weight"]["dtype"] == "F32");
  CHECK(h["1.weight"]["shape"] == nlohmann::json{5, 6});
  CHECK(h["0.mean"]["shape"] == nlohmann::json{6});
  CHECK(h["0.std"]["data_offsets"][0] == 24);
  CHECK(h["6.bias"]["data_offsets"][1] == bytes.size() - 8 - n);
  // raw little-endian data: the first weight, read by hand
  const auto off = h["1.weight"]["data_offsets"][0].get<std::size_t>();
  float w;
  std::memcpy(&w, bytes.data() + 8 + n + off, 4);
  CHECK(w == static_cast<Dense<float>&>(m[1]).weight()[0]);
}

TEST_CASE("safetensors: every malformed file is a typed error", "[io][safetensors]") {
  auto m = sample_model(1);
  const auto good = to_safetensors(m);
  const auto h = header_of(good);
  auto mutate = [&](const std::function<void(nlohmann::json&)>& f) {
    nlohmann::json j = h;
    f(j);
    return with_header(good, j);
  };
  auto model_of = [](const std::vector<std::byte>& b) { (void)model_from_safetensors<float>(SafetensorsFile::parse(b)); };

  // framing
  expect_errc(errc::corrupt_frame, [&] { parse_bytes(std::vector<std::byte>(5)); });
  auto past_end = good;
  past_end[0] = std::byte{0xff};
  past_end[1] = std::byte{0xff};
  past_end[2] = std::byte{0x0f};  // ~1 MB header in a small file
  expect_errc(errc::corrupt_frame, [&] { parse_bytes(past_end); });
  auto absurd = good;
  absurd[5] = std::byte{1};  // 2^40 bytes of header
  expect_errc(errc::too_large, [&] { parse_bytes(absurd); });
  expect_errc(errc::corrupt_frame, [&] { parse_bytes(make_file("{\"a\": ", 0)); });
  expect_errc(errc::corrupt_frame, [&] { parse_bytes(make_file("[1, 2]", 0)); });
  expect_errc(errc::corrupt_frame, [&] { parse_bytes(make_file(std::string(5000, '[') + std::string(5000, ']'), 0)); });
  expect_errc(errc::corrupt_frame, [&] {
    parse_bytes(make_file(R"({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                              "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})", 2));
  });
  SafetensorsLimits tiny;
  tiny.max_file_bytes = 100;
  expect_errc(errc::too_large, [&] { (void)SafetensorsFile::parse(good, tiny); });

  // entries
  expect_errc(errc::corrupt_frame, [&] { parse_bytes(mutate([](nlohmann::json& j) { j["1.weight"]["dtype"] = "Q4"; })); });
  expect_errc(errc::unsupported, [&] { parse_bytes(mutate([](nlohmann::json& j) { j["1.weight"]["dtype"] = "F16"; })); });
  expect_errc(errc::corrupt_frame, [&] { parse_bytes(mutate([](nlohmann::json& j) { j["1.weight"]["dtype"] = 3; })); });
  expect_errc(errc::corrupt_frame, [&] { parse_bytes(mutate([](nlohmann::json& j) { j["1.weight"]["shape"] = {5, -6}; })); });
  expect_errc(errc::corrupt_frame, [&] { parse_bytes(mutate([](nlohmann::json& j) { j["1.weight"]["shape"] = {5, 6.5}; })); });
  expect_errc(errc::corrupt_frame, [&] { parse_bytes(mutate([](nlohmann::json& j) { j["1.weight"]["shape"] = "5x6"; })); });
  expect_errc(errc::unsupported, [&] { parse_bytes(mutate([](nlohmann::json& j) { j["1.weight"]["shape"] = nlohmann::json::array(); })); });
  expect_errc(errc::unsupported, [&] {
    parse_bytes(mutate([](nlohmann::json& j) { j["1.weight"]["shape"] = {1, 1, 1, 1, 1, 1, 1, 1, 30}; }));
  });
  expect_errc(errc::too_large, [&] {
    parse_bytes(mutate([](nlohmann::json& j) { j["1.weight"]["shape"] = {std::uint64_t{1} << 40, std::uint64_t{1} << 40}; }));
  });
  expect_errc(errc::corrupt_frame, [&] { parse_bytes(mutate([](nlohmann::json& j) { j["1.weight"]["shape"] = {5, 5}; })); });  // size
  expect_errc(errc::corrupt_frame, [&] {
    parse_bytes(mutate([](nlohmann::json& j) { j["6.bias"]["data_offsets"][1] = j["6.bias"]["data_offsets"][1].get<std::size_t>() + 4; }));
  });  // past the end
  expect_errc(errc::corrupt_frame, [&] {
    parse_bytes(mutate([](nlohmann::json& j) { j["1.bias"]["data_offsets"] = {j["1.bias"]["data_offsets"][1], j["1.bias"]["data_offsets"][0]}; }));
  });  // begin > end
  expect_errc(errc::corrupt_frame, [&] {
    parse_bytes(mutate([](nlohmann::json& j) { j["1.bias"]["data_offsets"] = j["1.weight"]["data_offsets"]; j["1.bias"]["shape"] = {30}; }));
  });  // overlap
  expect_errc(errc::corrupt_frame, [&] { parse_bytes(mutate([](nlohmann::json& j) { j.erase("1.bias"); })); });  // hole
  expect_errc(errc::corrupt_frame, [&] { parse_bytes(mutate([](nlohmann::json& j) { j["1.bias"]["extra"] = 1; })); });
  expect_errc(errc::corrupt_frame, [&] { parse_bytes(mutate([](nlohmann::json& j) { j["1.bias"]["data_offsets"] = {0}; })); });
  expect_errc(errc::corrupt_frame, [&] { parse_bytes(mutate([](nlohmann::json& j) { j["__metadata__"]["note"] = 5; })); });
  expect_errc(errc::corrupt_frame, [&] { parse_bytes(mutate([](nlohmann::json& j) { j["__metadata__"] = "x"; })); });
  auto truncated = good;
  truncated.resize(good.size() - 3);
  expect_errc(errc::corrupt_frame, [&] { parse_bytes(truncated); });

  // the model description
  expect_errc(errc::version_mismatch, [&] { model_of(mutate([](nlohmann::json& j) { j["__metadata__"].erase("format"); })); });
  expect_errc(errc::version_mismatch, [&] { model_of(mutate([](nlohmann::json& j) { j["__metadata__"]["format_version"] = "2"; })); });
  expect_errc(errc::version_mismatch, [&] { model_of(mutate([](nlohmann::json& j) { j.erase("__metadata__"); })); });
  auto arch = [&](const std::string& a) { return mutate([&](auto& j) { j["__metadata__"]["architecture"] = a; }); };
  const std::string tail =
      R"({"type":"Dense","in":6,"out":5},{"type":"ReLU"},{"type":"Dropout","p":0.25,"seed":7},{"type":"Dense","in":5,"out":4},)"
      R"({"type":"LeakyReLU","alpha":0.1},{"type":"Dense","in":4,"out":3},{"type":"Softmax"}])";
  const std::string stand = R"([{"type":"Standardizer","features":6,"global":0,"epsilon":1e-6},)";
  model_of(arch(stand + tail));  // the reference text itself loads
  expect_errc(errc::corrupt_frame, [&] { model_of(mutate([](nlohmann::json& j) { j["__metadata__"].erase("architecture"); })); });
  expect_errc(errc::corrupt_frame, [&] { model_of(arch("not json")); });
  expect_errc(errc::corrupt_frame, [&] { model_of(arch(R"({"type":"Dense"})")); });
  expect_errc(errc::corrupt_frame, [&] { model_of(arch("[[" + stand.substr(1) + tail + "]")); });  // nested
  expect_errc(errc::unsupported, [&] { model_of(arch(R"([{"type":"Conv2d","in":6}])")); });
  expect_errc(errc::corrupt_frame, [&] { model_of(arch(R"([{"type":"Dense","in":6}])")); });
  expect_errc(errc::corrupt_frame, [&] { model_of(arch(R"([{"type":"Dense","in":-6,"out":5}])")); });
  expect_errc(errc::corrupt_frame, [&] { model_of(arch(R"([{"type":"LeakyReLU","alpha":3.0}])")); });
  expect_errc(errc::too_large, [&] { model_of(arch(R"([{"type":"Dense","in":100000,"out":100000}])")); });
  expect_errc(errc::too_large, [&] { model_of(arch(R"([{"type":"Dense","in":4294967296,"out":4294967296}])")); });
  // chains badly: Dense(6 -> 5) then Dense(4 -> 5) where a 5-wide input is needed
  expect_errc(errc::corrupt_frame, [&] {
    model_of(arch(stand + R"({"type":"Dense","in":6,"out":5},{"type":"Dense","in":4,"out":5}])"));
  });
  // the architecture lacks a layer whose tensors are in the file
  expect_errc(errc::corrupt_frame, [&] { model_of(arch(stand + R"({"type":"Dense","in":6,"out":5}])")); });
  expect_errc(errc::corrupt_frame, [&] { model_of(mutate([](nlohmann::json& j) { j["1.weight"]["shape"] = {6, 5}; })); });
  expect_errc(errc::unsupported, [&] {
    model_of(mutate([](nlohmann::json& j) {
      j["6.bias"]["dtype"] = "U8";
      j["6.bias"]["shape"] = {12};
    }));
  });
}

TEST_CASE("safetensors: every truncation and byte flip is refused or read, never a crash", "[io][safetensors]") {
  Rng rng(1);
  Sequential<float> m;
  m.add<Dense<float>>(3, 2, rng);
  m.add<ReLU<float>>();
  const auto good = to_safetensors(m);
  std::size_t refused = 0;
  for (std::size_t len = 0; len < good.size(); ++len) {
    std::vector<std::byte> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(len));
    try {
      (void)model_from_safetensors<float>(SafetensorsFile::parse(cut));
    } catch (const edgesplit::error&) {
      ++refused;
    }
  }
  CHECK(refused == good.size());  // every proper prefix is refused
  for (std::size_t i = 0; i < good.size(); ++i)
    for (unsigned v : {0x00u, 0x22u, 0x5du, 0x7bu, 0xffu}) {
      auto flipped = good;
      flipped[i] = static_cast<std::byte>(v);
      expect_edgesplit_error_or_success([&] { (void)model_from_safetensors<float>(SafetensorsFile::parse(flipped)); });
    }
}
#endif  // nlohmann-json

#if EDGESPLIT_TEST_ZLIB
#include "edgesplit/io/idx.hpp"

namespace {

std::vector<std::byte> idx_bytes(std::uint8_t type, std::vector<std::uint32_t> dims, std::size_t data, std::uint8_t fill = 7) {
  std::vector<std::byte> b{std::byte{0}, std::byte{0}, std::byte{type}, std::byte{static_cast<std::uint8_t>(dims.size())}};
  for (std::uint32_t d : dims)
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<std::byte>((d >> s) & 0xff));
  for (std::size_t i = 0; i < data; ++i) b.push_back(static_cast<std::byte>(fill + i));
  return b;
}

void write_gz(const fs::path& p, const std::vector<std::byte>& bytes) {
  gzFile f = gzopen(p.string().c_str(), "wb");
  REQUIRE(f != nullptr);
  if (!bytes.empty()) REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

}  // namespace

TEST_CASE("IDX: gzip and plain files read, data sets built and validated", "[io][idx]") {
  TempDir dir("idx");
  const auto images = idx_bytes(0x08, {3, 2, 2}, 12, 10);
  const auto labels = idx_bytes(0x08, {3}, 3, 0);
  write_gz(dir.path / "img.gz", images);
  write_gz(dir.path / "lab.gz", labels);
  write_file(dir.path / "img.raw", images);

  const auto t = read_idx(dir.path / "img.gz");
  CHECK(t.shape() == Shape{3, 2, 2});
  CHECK(t[0] == 10);
  CHECK(t[11] == 21);
  const auto raw = read_idx(dir.path / "img.raw");
  CHECK(std::memcmp(raw.data(), t.data(), t.size()) == 0);
  CHECK(parse_idx(images).shape() == t.shape());

  const auto d = load_idx_dataset<float>(dir.path / "img.gz", dir.path / "lab.gz", 3);
  CHECK(d.inputs.shape() == Shape{3, 4});
  CHECK(d.inputs[1] == Approx(11.0 / 255));
  CHECK(d.labels == std::vector<std::int32_t>{0, 1, 2});
  d.validate();
  // a label past the class count, and label/image counts that disagree
  expect_errc(errc::corrupt_frame, [&] { (void)load_idx_dataset<float>(dir.path / "img.gz", dir.path / "lab.gz", 2); });
  write_gz(dir.path / "lab4.gz", idx_bytes(0x08, {4}, 4, 0));
  expect_errc(errc::corrupt_frame, [&] { (void)load_idx_dataset<float>(dir.path / "img.gz", dir.path / "lab4.gz", 9); });
  expect_errc(errc::corrupt_frame, [&] { (void)load_idx_dataset<float>(dir.path / "lab.gz", dir.path / "lab.gz", 9); });
  expect_errc(errc::io_error, [&] { (void)read_idx(dir.path / "missing.gz"); });
}

TEST_CASE("IDX: every malformed header, size and stream is a typed error", "[io][idx]") {
  TempDir dir("idxbad");
  auto gz = [&](const std::vector<std::byte>& b) {
    const auto p = dir.path / "f.gz";
    write_gz(p, b);
    return read_idx(p);
  };
  auto bad_magic = idx_bytes(0x08, {2}, 2);
  bad_magic[1] = std::byte{1};
  expect_errc(errc::corrupt_frame, [&] { gz(bad_magic); });
  expect_errc(errc::corrupt_frame, [&] { gz(idx_bytes(0x07, {2}, 2)); });
  expect_errc(errc::unsupported, [&] { gz(idx_bytes(0x0D, {2}, 8)); });
  expect_errc(errc::corrupt_frame, [&] { gz(idx_bytes(0x08, {}, 0)); });
  expect_errc(errc::unsupported, [&] { gz(idx_bytes(0x08, {1, 1, 1, 1, 1, 1, 1, 1, 1}, 1)); });
  expect_errc(errc::corrupt_frame, [&] { gz({std::byte{0}, std::byte{0}}); });                      // short magic
  const auto header = idx_bytes(0x08, {2, 3}, 0);
  expect_errc(errc::corrupt_frame, [&] { gz({header.begin(), header.begin() + 9}); });  // short dims
  expect_errc(errc::corrupt_frame, [&] { gz(idx_bytes(0x08, {2, 3}, 5)); });   // short data
  expect_errc(errc::corrupt_frame, [&] { gz(idx_bytes(0x08, {2, 3}, 7)); });   // trailing byte
  expect_errc(errc::corrupt_frame, [&] { gz({}); });                           // empty
  // sizes: the product overflows size_t; or fits but is over the limit. Either is refused from
  // the header alone, before the (absent) data is read or any of it allocated.
  expect_errc(errc::too_large, [&] { gz(idx_bytes(0x08, {0xffffffffu, 0xffffffffu, 0xffffffffu}, 0)); });
  expect_errc(errc::too_large, [&] { gz(idx_bytes(0x08, {60000, 28, 28, 100}, 0)); });
  IdxLimits small;
  small.max_bytes = 10;
  expect_errc(errc::too_large, [&] { (void)parse_idx(idx_bytes(0x08, {11}, 11), small); });

  // damaged gzip streams: cut short, a flipped byte in the CRC trailer, garbage in the deflate data
  const auto good = dir.path / "good.gz";
  write_gz(good, idx_bytes(0x08, {50, 40}, 2000, 3));
  const auto bytes = read_file(good);
  auto cut = bytes;
  cut.resize(bytes.size() / 2);
  write_file(dir.path / "cut.gz", cut);
  expect_errc(errc::corrupt_frame, [&] { (void)read_idx(dir.path / "cut.gz"); });
  auto crc = bytes;
  crc[crc.size() - 6] ^= std::byte{0x55};
  write_file(dir.path / "crc.gz", crc);
  expect_errc(errc::corrupt_frame, [&] { (void)read_idx(dir.path / "crc.gz"); });
  auto garbage = bytes;
  for (std::size_t i = 12; i < 40 && i < garbage.size(); ++i) garbage[i] = std::byte{0xff};
  write_file(dir.path / "garbage.gz", garbage);
  expect_errc(errc::corrupt_frame, [&] { (void)read_idx(dir.path / "garbage.gz"); });
}
#endif  // zlib

#if EDGESPLIT_TEST_ZLIB
TEST_CASE("Fashion-MNIST: a reduced training run reaches its measured accuracy floor", "[io][fashion]") {
  if (!fashion_mnist_available()) {
    WARN("SKIPPED: Fashion-MNIST not found in " << fashion_mnist_dir.string()
                                                << " (Debian package dataset-fashion-mnist); the reduced run did not run");
    return;
  }
  auto [train, test] = load_fashion_mnist<float>();
  REQUIRE(train.size() == 60000);
  REQUIRE(test.size() == 10000);
  train.validate();
  test.validate();
  const auto subset = train.slice(0, 10000);
  // The edge model of the example, trained on the first 10,000 training images for 2 epochs
  // (Adam 1e-3, batch 64), tested on all 10,000 test images.
  Rng rng(1);
  Sequential<float> m;
  m.add<Standardizer<float>>(784, Standardize::global).fit(subset.inputs.cview());
  m.add<Dense<float>>(784, 64, rng);
  m.add<ReLU<float>>();
  m.add<Dense<float>>(64, 10, rng);
  Classifier<float> obj(m);
  Adam<float> adam(1e-3);
  TrainOptions o;
  o.epochs = 2;
  o.batch_size = 64;
  Trainer<float>(o, {}).fit(obj, adam, subset);
  const double acc = evaluate<float>(obj, test).accuracy[0];
  // Measured (g++ 12, x86-64-v3): 0.8081 with these seeds; with model/shuffle seeds 2..5 the same
  // run gave 0.8091, 0.8145, 0.8280, 0.8159, so seeds alone move it by 2 points. Another compiler
  // or ISA changes the rounding of every step, which acts like another seed: the floor sits below
  // the lowest of the five by about one more such spread. A broken loss, optimizer or reader
  // lands near 0.10 (chance), far below.
  INFO("test accuracy " << acc);
  CHECK(acc >= 0.78);
}
#endif

// .npy (io/npy.hpp, no dependency): round trips, the bytes numpy writes, format 2.0 and 3.0,
// every malformed or unsupported file, and the fuzz corpus. The reference bytes below, and the
// valid-* files of tests/corpus-npy/, were written by numpy 1.24.2 (np.save, and
// np.lib.format.write_array with version=(2, 0) and (3, 0)); the bad-* files are numpy's output
// edited by hand or headers written by hand.
#include <algorithm>
#include <limits>
#include <string_view>

#include "fuzz/npy_entry.hpp"

namespace {

std::vector<std::byte> from_hex(std::string_view hex) {
  std::vector<std::byte> out;
  auto nibble = [](char c) { return static_cast<unsigned>(c <= '9' ? c - '0' : c - 'a' + 10); };
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<std::byte>(nibble(hex[i]) << 4 | nibble(hex[i + 1])));
  return out;
}

// np.save of np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5 - 1
const std::string numpy_2x3 =
    "934e554d5059010076007b276465736372273a20273c6634272c2027666f727472616e5f6f72646572273a2046616c73"
    "652c20277368617065273a2028322c2033292c207d202020202020202020202020202020202020202020202020202020"
    "202020202020202020202020202020202020202020202020202020202020200a000080bf000000bf000000000000003f"
    "0000803f0000c03f";
// np.save of np.array([1.5], np.float32)
const std::string numpy_1 =
    "934e554d5059010076007b276465736372273a20273c6634272c2027666f727472616e5f6f72646572273a2046616c73"
    "652c20277368617065273a2028312c292c207d2020202020202020202020202020202020202020202020202020202020"
    "202020202020202020202020202020202020202020202020202020202020200a0000c03f";
// np.lib.format.write_array of np.array([1.5, -2], np.float32) with version=(2, 0)
const std::string numpy_v2 =
    "934e554d50590200740000007b276465736372273a20273c6634272c2027666f727472616e5f6f72646572273a204661"
    "6c73652c20277368617065273a2028322c292c207d202020202020202020202020202020202020202020202020202020"
    "202020202020202020202020202020202020202020202020202020202020200a0000c03f000000c0";

// A version 1.0 file with header text `dict` (sent as is: the caller supplies any padding and
// the '\n') followed by `data`.
std::vector<std::byte> npy_file(const std::string& dict, const std::vector<float>& data = {}, unsigned major = 1) {
  std::vector<std::byte> out;
  for (char c : std::string_view("\x93NUMPY", 6)) out.push_back(static_cast<std::byte>(c));
  out.push_back(static_cast<std::byte>(major));
  out.push_back(std::byte{0});
  const std::size_t n = dict.size();
  for (std::size_t i = 0; i < (major == 1 ? 2u : 4u); ++i) out.push_back(static_cast<std::byte>((n >> (8 * i)) & 0xff));
  for (char c : dict) out.push_back(static_cast<std::byte>(c));
  const std::size_t at = out.size();
  out.resize(at + data.size() * 4);
  if (!data.empty()) std::memcpy(out.data() + at, data.data(), data.size() * 4);
  return out;
}

std::string f4_dict(const std::string& shape) {
  return "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }\n";
}

bool same_bits(const Tensor<float>& a, const Tensor<float>& b) {
  return a.shape() == b.shape() && (a.size() == 0 || std::memcmp(a.data(), b.data(), a.bytes()) == 0);
}

}  // namespace

TEST_CASE("npy: every rank round-trips bit for bit through bytes and files", "[io][npy]") {
  TempDir dir("npy");
  const float special[] = {-0.0f, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                           std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::denorm_min(),
                           std::numeric_limits<float>::max(), std::numeric_limits<float>::lowest(), 1e-30f};
  const std::vector<Shape> shapes = {Shape{1}, Shape{8}, Shape{2, 3}, Shape{2, 3, 4, 4}, Shape{2, 1, 1, 1, 1, 1, 1, 3},
                                     Shape{0, 3}, Shape{1234567}, Shape{std::numeric_limits<std::size_t>::max() / 2, 0}};
  for (const Shape& s : shapes) {
    INFO("shape " << s.str());
    Tensor<float> t(s);
    for (std::size_t i = 0; i < t.size(); ++i) t[i] = i < 8 ? special[i] : static_cast<float>(i) * 0.37f - 5;
    const auto bytes = to_npy(t.cview());
    CHECK((bytes.size() - t.bytes()) % 64 == 0);  // numpy's alignment of the data
    CHECK(same_bits(parse_npy(bytes), t));
    const auto path = dir.path / "t.npy";
    save_npy(path, t.cview());
    CHECK_FALSE(fs::exists(dir.path / "t.npy.tmp"));
    CHECK(read_file(path) == bytes);
    CHECK(same_bits(read_npy(path), t));
    CHECK(same_bits(read_npy(path.string()), t));  // a std::string path converts
  }
  // a file is replaced whole
  save_npy(dir.path / "t.npy", Tensor<float>(Shape{2}, 7.0f).cview());
  CHECK(same_bits(read_npy(dir.path / "t.npy"), Tensor<float>(Shape{2}, 7.0f)));
}

TEST_CASE("npy: to_npy writes the bytes numpy writes, and reads numpy's files", "[io][npy]") {
  Tensor<float> x(Shape{2, 3});
  for (std::size_t i = 0; i < 6; ++i) x[i] = static_cast<float>(i) * 0.5f - 1;
  CHECK(to_npy(x.cview()) == from_hex(numpy_2x3));
  CHECK(same_bits(parse_npy(from_hex(numpy_2x3)), x));
  const Tensor<float> one(Shape{1}, 1.5f);
  CHECK(to_npy(one.cview()) == from_hex(numpy_1));
  CHECK(same_bits(parse_npy(from_hex(numpy_1)), one));
  // np.save(f, np.zeros((0, 3), np.float32)): numpy_2x3's header with shape (0, 3) and no data
  std::string empty_hex = numpy_2x3.substr(0, 2 * 128);
  const auto at = empty_hex.find("28322c2033");  // "(2, 3"
  REQUIRE(at != std::string::npos);
  empty_hex.replace(at, 10, "28302c2033");
  CHECK(to_npy(Tensor<float>(Shape{0, 3}).cview()) == from_hex(empty_hex));
  CHECK(parse_npy(from_hex(empty_hex)).shape() == Shape{0, 3});
  expect_errc(errc::invalid_argument, [] { (void)to_npy(TensorView<const float>()); });
}

TEST_CASE("npy: format 2.0 and 3.0 files, any key order, quotes and whitespace", "[io][npy]") {
  Tensor<float> two(Shape{2});
  two[0] = 1.5f;
  two[1] = -2;
  const auto v2 = from_hex(numpy_v2);
  CHECK(same_bits(parse_npy(v2), two));
  auto v3 = v2;
  v3[6] = std::byte{3};  // 3.0 differs only in allowing UTF-8 in the header
  CHECK(same_bits(parse_npy(v3), two));
  CHECK(same_bits(parse_npy(npy_file(f4_dict("(2,)"), {1.5f, -2}, 2)), two));

  const std::vector<float> six = {1, 2, 3, 4, 5, 6};
  for (const std::string& dict : std::vector<std::string>{
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n",         // numpy's, unpadded
           "{'descr':'<f4','fortran_order':False,'shape':(2,3)}\n",                 // no spaces
           "{'shape': (2, 3), 'fortran_order': False, 'descr': '<f4'}\n",           // another order
           "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2, 3,)}\n",  // double quotes, trailing comma
           "{ 'fortran_order' :\tFalse ,\n 'shape' : ( 2 ,\t3 ) , 'descr' : '<f4' , }\r\n",
           "  {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" + std::string(300, ' ') + "\n",
       }) {
    INFO(dict);
    const auto t = parse_npy(npy_file(dict, six));
    CHECK(t.shape() == Shape{2, 3});
    CHECK(t[5] == 6);
  }
}

TEST_CASE("npy: every malformed or unsupported file is a typed error that says what it found", "[io][npy]") {
  const auto good = from_hex(numpy_2x3);
  const std::vector<float> six(6, 1.0f);
  auto message_of = [](const std::vector<std::byte>& b) -> std::string {
    try {
      (void)parse_npy(b);
    } catch (const edgesplit::error& e) {
      return e.what();
    }
    return "nothing thrown";
  };
  auto parse = [](const std::vector<std::byte>& b) { return [b] { (void)parse_npy(b); }; };

  // framing: magic, version, header length
  auto bad_magic = good;
  bad_magic[5] = std::byte{'Z'};
  expect_errc(errc::corrupt_frame, parse(bad_magic));
  expect_errc(errc::corrupt_frame, parse({}));
  expect_errc(errc::corrupt_frame, parse({good.begin(), good.begin() + 5}));  // inside the magic
  expect_errc(errc::corrupt_frame, parse({good.begin(), good.begin() + 9}));  // inside the header length
  expect_errc(errc::corrupt_frame, parse({good.begin(), good.begin() + 40}));  // inside the header
  const auto v2 = npy_file(f4_dict("(2,)"), {1, 2}, 2);
  expect_errc(errc::corrupt_frame, parse({v2.begin(), v2.begin() + 11}));  // 2.0: inside the u32 length
  for (unsigned v : {0u, 4u, 0xffu}) {
    auto version = good;
    version[6] = static_cast<std::byte>(v);
    expect_errc(errc::version_mismatch, parse(version));
  }
  auto minor = good;
  minor[7] = std::byte{1};
  expect_errc(errc::version_mismatch, parse(minor));
  auto past_end = good;
  past_end[8] = std::byte{0xff};
  past_end[9] = std::byte{0x00};  // 255 bytes of header in a 152-byte file
  expect_errc(errc::corrupt_frame, parse(past_end));
  auto huge = npy_file(f4_dict("(1,)"), {1}, 2);
  huge[11] = std::byte{0x10};  // 2.0: a 256 MiB header, over the 64 KiB cap
  expect_errc(errc::too_large, parse(huge));
  expect_errc(errc::corrupt_frame, parse(npy_file("", {})));  // empty header

  // the dict
  for (const std::string& dict : std::vector<std::string>{
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",   // no final '\n'
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } x\n",
           "'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)\n",      // not a dict
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), \n",   // unclosed
           "{'descr': '<f4' 'fortran_order': False, 'shape': (2, 3)}\n",     // no comma
           "{'descr': '<f4',, 'fortran_order': False, 'shape': (2, 3)}\n",
           "{descr: '<f4', 'fortran_order': False, 'shape': (2, 3)}\n",      // unquoted key
           "{'descr' '<f4', 'fortran_order': False, 'shape': (2, 3)}\n",     // no colon
           "{'descr': '<f4, 'fortran_order': False, 'shape': (2, 3)}\n",     // quotes do not match
           "{'descr': '<f4\", 'fortran_order': False, 'shape': (2, 3)}\n",
           "{'descr': '<\\x66\\x34', 'fortran_order': False, 'shape': (2, 3)}\n",  // escapes
           "{'descr': '<f4', 'fortran_order': false, 'shape': (2, 3)}\n",
           "{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 3)}\n",
           "{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3]}\n",    // a list, not a tuple
           "{'descr': '<f4', 'fortran_order': False, 'shape': (6)}\n",       // an int, not a tuple
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3}\n",
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2,, 3)}\n",
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3.0)}\n",
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 03)}\n",   // leading zero
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3L)}\n",
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2, +3)}\n",
           "{'descr': '<f4', 'fortran_order': False, 'shape': (-2, -3)}\n",  // negative
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2, - 3)}\n",
           "{'descr': '<f4', 'fortran_order': False}\n",                     // missing key
           "{'descr': '<f4', 'shape': (2, 3)}\n",
           "{'fortran_order': False, 'shape': (2, 3)}\n",
           "{}\n",
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'shape': (2, 3)}\n",  // duplicate
           "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}\n",
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'extra': 1}\n",  // unknown key
           "{'descr': '', 'fortran_order': False, 'shape': (2, 3)}\n",      // empty dtype
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}\n" + std::string(1, '\0'),
       }) {
    INFO(dict);
    expect_errc(errc::corrupt_frame, parse(npy_file(dict, six)));
  }
  std::string non_ascii = f4_dict("(2, 3)");
  non_ascii[3] = '\xe9';
  expect_errc(errc::corrupt_frame, parse(npy_file(non_ascii, six)));

  // well-formed, not supported: the message names what was found
  for (const char* dtype : {"<f8", "<f2", "|u1", "<i4", "|b1", "<c8", "=f4", "f4", "<U10", "|O"}) {
    const auto b = npy_file("{'descr': '" + std::string(dtype) + "', 'fortran_order': False, 'shape': (2, 3), }\n", six);
    expect_errc(errc::unsupported, parse(b));
    CHECK_THAT(message_of(b), Catch::Contains(std::string("dtype '") + dtype + "' is not supported; save float32 (np.float32)"));
  }
  const auto big = npy_file("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }\n", six);
  expect_errc(errc::unsupported, parse(big));
  CHECK_THAT(message_of(big), Catch::Contains("big-endian"));
  const auto fortran = npy_file("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }\n", six);
  expect_errc(errc::unsupported, parse(fortran));
  CHECK_THAT(message_of(fortran), Catch::Contains("fortran_order True"));
  expect_errc(errc::unsupported, parse(npy_file("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }\n", {1, 2})));
  const auto scalar = npy_file(f4_dict("()"), {3});
  expect_errc(errc::unsupported, parse(scalar));
  CHECK_THAT(message_of(scalar), Catch::Contains("0-d array"));
  expect_errc(errc::unsupported, parse(npy_file(f4_dict("(1, 1, 1, 1, 1, 1, 1, 1, 1)"), {3})));  // rank 9
  std::string deep = "(1";
  for (int i = 0; i < 2000; ++i) deep += ", 1";
  expect_errc(errc::unsupported, parse(npy_file(f4_dict(deep + ")"), {3})));  // rank 2001: counted, not stored

  // sizes: refused from the header alone, before any allocation
  expect_errc(errc::too_large, parse(npy_file(f4_dict("(4294967296, 4294967296)"))));            // count overflows
  expect_errc(errc::too_large, parse(npy_file(f4_dict("(4611686018427387904,)"))));             // x 4 overflows
  expect_errc(errc::too_large, parse(npy_file(f4_dict("(99999999999999999999999,)"))));         // over any size_t
  expect_errc(errc::too_large, parse(npy_file(f4_dict("(1073741824, 3)"))));                    // over max_bytes
  expect_errc(errc::corrupt_frame, parse(npy_file(f4_dict("(100000, 1000)"))));                 // 400 MB claimed, none there
  CHECK(parse_npy(npy_file(f4_dict("(0, 2147483648, 2147483648)"))).size() == 0);  // a 0 makes the count 0, as in Shape
  NpyLimits small;
  small.max_bytes = 20;
  expect_errc(errc::too_large, [&] { (void)parse_npy(npy_file(f4_dict("(2, 3)"), six), small); });
  small = {};
  small.max_header_bytes = 100;
  expect_errc(errc::too_large, [&] { (void)parse_npy(good, small); });  // numpy's 118-byte header

  // data: exactly count x 4 bytes
  expect_errc(errc::corrupt_frame, parse({good.begin(), good.end() - 1}));
  expect_errc(errc::corrupt_frame, parse({good.begin(), good.end() - 24}));  // header only
  auto trailing = good;
  trailing.push_back(std::byte{0});
  expect_errc(errc::corrupt_frame, parse(trailing));
  CHECK_THAT(message_of(trailing), Catch::Contains("trailing bytes"));
  expect_errc(errc::corrupt_frame, parse(npy_file(f4_dict("(0, 3)"), {1})));  // data for an empty array
}

TEST_CASE("npy: files that cannot be read or written are io_error", "[io][npy]") {
  TempDir dir("npyio");
  expect_errc(errc::io_error, [&] { (void)read_npy(dir.path / "missing.npy"); });
  expect_errc(errc::io_error, [&] { (void)read_npy(dir.path); });
  const Tensor<float> t(Shape{2}, 1.0f);
  expect_errc(errc::io_error, [&] { save_npy(dir.path / "no" / "such" / "dir.npy", t.cview()); });
  fs::create_directories(dir.path / "taken.npy");  // rename onto a directory fails
  expect_errc(errc::io_error, [&] { save_npy(dir.path / "taken.npy", t.cview()); });
  CHECK_FALSE(fs::exists(dir.path / "taken.npy.tmp"));
  // a file over the limits is refused from its size, before it is read
  write_file(dir.path / "big.npy", std::vector<std::byte>(4096));
  NpyLimits small;
  small.max_bytes = 1000;
  small.max_header_bytes = 1000;
  expect_errc(errc::too_large, [&] { (void)read_npy(dir.path / "big.npy", small); });
  // messages name the file
  write_file(dir.path / "x.npy", npy_file("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }\n", {0, 0}));
  try {
    (void)read_npy(dir.path / "x.npy");
    FAIL("nothing thrown");
  } catch (const edgesplit::error& e) {
    CHECK(e.code() == errc::unsupported);
    CHECK_THAT(e.what(), Catch::Contains("x.npy: dtype '<f8' is not supported; save float32 (np.float32)"));
  }
}

TEST_CASE("npy: every truncation and byte flip is refused or read, never a crash", "[io][npy]") {
  const auto good = from_hex(numpy_2x3);
  for (std::size_t len = 0; len < good.size(); ++len) {
    INFO("first " << len << " bytes");
    expect_errc(errc::corrupt_frame, [&] { (void)parse_npy(std::span(good.data(), len)); });
  }
  std::size_t read = 0;
  for (std::size_t i = 0; i < good.size(); ++i)
    for (unsigned v : {0x00u, 0x20u, 0x27u, 0x29u, 0x2cu, 0x31u, 0x7du, 0x80u, 0xffu}) {
      auto flipped = good;
      flipped[i] = static_cast<std::byte>(v);
      if (edgesplit_fuzz::decode_npy_all(flipped)) ++read;  // aborts on a broken promise
    }
  CHECK(read > 0);
}

TEST_CASE("npy: the fuzz corpus replays through the fuzzer's entry point", "[io][npy][fuzz]") {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(EDGESPLIT_NPY_CORPUS_DIR))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() >= 10);
  std::size_t valid = 0, bad = 0;
  for (const fs::path& p : files) {
    const auto bytes = read_file(p);
    const bool ok = edgesplit_fuzz::decode_npy_all(bytes);
    const std::string name = p.filename().string();
    INFO(name);
    if (name.rfind("valid-", 0) == 0) {
      CHECK(ok);
      ++valid;
    }
    if (name.rfind("bad-", 0) == 0) {
      CHECK_FALSE(ok);
      ++bad;
    }
  }
  CHECK(valid >= 5);
  CHECK(bad >= 10);
  // numpy's own files among them are what to_npy writes for the same tensors
  for (const char* name : {"valid-f32-2x3", "valid-f32-empty-0x3", "valid-f32-rank8", "valid-f32-nchw"}) {
    INFO(name);
    const auto bytes = read_file(fs::path(EDGESPLIT_NPY_CORPUS_DIR) / name);
    CHECK(to_npy(parse_npy(bytes).cview()) == bytes);
  }
}
