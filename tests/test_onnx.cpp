// ONNX import (io/onnx.hpp): models built here with ONNX's own protobuf classes, imported and
// compared with the same network built natively; every refusal a typed error. ONNX's backend test
// data runs separately (onnx_conformance.cpp).
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "edgesplit/edgesplit.hpp"
#include "edgesplit/io/onnx.hpp"
#include "fuzz/onnx_entry.hpp"
#include "onnx_builder.hpp"
#include "test_util.hpp"

using namespace edgesplit;
using edgesplit_test::load_bytes;
using edgesplit_test::OnnxBuilder;
using edgesplit_test::random_input;
using edgesplit_test::require_error;

namespace {

// The residual CNN of the first test, as ONNX (PyTorch's export of conv-bn-relu blocks):
// x [N,3,8,8] -> Conv 3->4 3x3 pad 1 -> BatchNorm -> Relu = a
//   -> Conv 4->4 3x3 pad 1 stride 1 -> Add(a) -> Relu -> GlobalAveragePool -> Flatten
//   -> Gemm 4->5 (transB) -> Softmax.
struct ResidualCnn {
  OnnxBuilder b;
  std::vector<float> w1, b1, gamma, beta, mean, var, w2, b2, wf, bf;
  ResidualCnn() {
    b.input("x", {3, 8, 8});
    w1 = b.weight("w1", {4, 3, 3, 3});
    b1 = b.weight("b1", {4});
    gamma = b.weight("gamma", {4}, 0.5, 1.5);
    beta = b.weight("beta", {4});
    mean = b.weight("mean", {4});
    var = b.weight("var", {4}, 0.5, 2.0);
    w2 = b.weight("w2", {4, 4, 3, 3});
    b2 = b.weight("b2", {4});
    wf = b.weight("wf", {5, 4});
    bf = b.weight("bf", {5});
    auto* c1 = b.node("Conv", {"x", "w1", "b1"}, {"c1"});
    OnnxBuilder::attr(c1, "pads", std::vector<std::int64_t>{1, 1, 1, 1});
    OnnxBuilder::attr(c1, "kernel_shape", std::vector<std::int64_t>{3, 3});
    auto* bn = b.node("BatchNormalization", {"c1", "gamma", "beta", "mean", "var"}, {"bn1"});
    OnnxBuilder::attr(bn, "epsilon", 1e-5f);
    b.node("Relu", {"bn1"}, {"a"});
    auto* c2 = b.node("Conv", {"a", "w2", "b2"}, {"c2"});
    OnnxBuilder::attr(c2, "pads", std::vector<std::int64_t>{1, 1, 1, 1});
    b.node("Add", {"c2", "a"}, {"sum"});
    b.node("Relu", {"sum"}, {"r"});
    b.node("GlobalAveragePool", {"r"}, {"gap"});
    b.node("Flatten", {"gap"}, {"flat"});
    auto* fc = b.node("Gemm", {"flat", "wf", "bf"}, {"logits"});
    OnnxBuilder::attr(fc, "transB", std::int64_t{1});
    auto* sm = b.node("Softmax", {"logits"}, {"probs"});
    OnnxBuilder::attr(sm, "axis", std::int64_t{1});
    b.output("probs");
  }
  // The same network from edgesplit's own layers, BatchNorm unfolded.
  Graph<float> native() const {
    Graph<float> g;
    Conv2DOptions o;
    o.padding = same_padding(3, 3);
    auto conv1 = std::make_unique<Conv2D<float>>(3, 4, 3, 3, o);
    std::copy(w1.begin(), w1.end(), conv1->weight().data());
    std::copy(b1.begin(), b1.end(), conv1->bias().data());
    auto bn = std::make_unique<BatchNorm2D<float>>(4, 1e-5);
    std::copy(gamma.begin(), gamma.end(), bn->weight().data());
    std::copy(beta.begin(), beta.end(), bn->bias().data());
    std::copy(mean.begin(), mean.end(), bn->running_mean().data());
    std::copy(var.begin(), var.end(), bn->running_var().data());
    auto conv2 = std::make_unique<Conv2D<float>>(4, 4, 3, 3, o);
    std::copy(w2.begin(), w2.end(), conv2->weight().data());
    std::copy(b2.begin(), b2.end(), conv2->bias().data());
    auto fc = std::make_unique<Dense<float>>(4, 5);
    std::copy(wf.begin(), wf.end(), fc->weight().data());
    std::copy(bf.begin(), bf.end(), fc->bias().data());
    g.input("x", Shape{3, 8, 8});
    g.add("c1", {"x"}, std::move(conv1));
    g.add("bn1", {"c1"}, std::move(bn));
    g.add("a", {"bn1"}, std::make_unique<ReLU<float>>());
    g.add("c2", {"a"}, std::move(conv2));
    g.add("sum", {"c2", "a"}, std::make_unique<Add<float>>());
    g.add("r", {"sum"}, std::make_unique<ReLU<float>>());
    g.add("gap", {"r"}, std::make_unique<GlobalAvgPool<float>>());
    g.add("flat", {"gap"}, std::make_unique<Flatten<float>>());
    g.add("logits", {"flat"}, std::move(fc));
    g.add("probs", {"logits"}, std::make_unique<Softmax<float>>());
    g.output("probs");
    return g;
  }
};

}  // namespace

TEST_CASE("ONNX import of a residual CNN computes what the same native graph computes", "[onnx]") {
  const ResidualCnn cnn;
  OnnxModel m = cnn.b.load();
  CHECK(m.opset == 13);
  CHECK(m.producer == "edgesplit-test");
  CHECK(m.declared_batch == 0);  // symbolic
  REQUIRE(m.graph.input_names() == std::vector<std::string>{"x"});
  REQUIRE(m.graph.output_names() == std::vector<std::string>{"probs"});
  // BatchNormalization folded into the conv before it: its output name carries the fold.
  CHECK_FALSE(m.graph.contains("c1"));
  CHECK(m.graph.contains("bn1"));
  CHECK(m.graph.node_count() == 9);
  Graph<float> native = cnn.native();
  CHECK(m.graph.parameter_count() == native.parameter_count() - 8 + 0);  // BN's gamma and beta folded away
  const Tensor<float> x = random_input(Shape{6, 3, 8, 8}, 7);
  const Tensor<float> want = native.predict(x.cview());
  const Tensor<float> got = m.graph.predict(x.cview());
  REQUIRE(got.shape() == want.shape());
  // The fold rounds each weight once (relative 2^-24) and reorders the BN arithmetic: a few float
  // roundings through two 3x3 convolutions of up to 36 terms; 1e-5 of the probabilities' scale (1)
  // is far above that and far below any wrong wiring.
  for (std::size_t i = 0; i < got.size(); ++i) CHECK(std::fabs(got[i] - want[i]) <= 1e-5);
}

TEST_CASE("An imported model cuts at named tensors and runs head, codec, tail as the whole model", "[onnx]") {
  const ResidualCnn cnn;
  OnnxModel m = cnn.b.load();
  const Tensor<float> x = random_input(Shape{4, 3, 8, 8}, 11);
  const Tensor<float> whole = m.graph.predict(x.cview());
  bool found_a = false;
  for (const CutInfo& c : m.graph.candidate_cuts()) found_a = found_a || c.tensors == std::vector<std::string>{"r"};
  CHECK(found_a);
  auto [head, tail] = m.graph.cut({"r"});
  FeatureCodec codec(CodecConfig{32});
  std::vector<std::byte> frame;
  const Tensor<float> feat = head.predict(x.cview());
  codec.encode(feat.cview(), frame);
  Tensor<float> back;
  codec.decode(frame, back);
  const Tensor<float> y = tail.predict(back.cview());
  REQUIRE(y.shape() == whole.shape());
  for (std::size_t i = 0; i < y.size(); ++i) CHECK(y[i] == whole[i]);  // fp32 crosses bit for bit
  // The residual branch bypasses "c2": not a cut, and the error names the path around it.
  require_error([&] { (void)m.graph.cut({"c2"}); }, errc::invalid_argument, "bypasses");
}

TEST_CASE("PyTorch's flatten pattern Shape-Gather-Unsqueeze-Concat-Reshape folds to one reshape", "[onnx]") {
  OnnxBuilder b(11);
  b.input("x", {2, 3, 4});
  b.ints("zero", {0});
  b.ints("minus1", {-1});
  b.node("Relu", {"x"}, {"r"});
  b.node("Shape", {"r"}, {"s"});
  auto* gather = b.node("Gather", {"s", "zero_scalar"}, {"n"});
  OnnxBuilder::attr(gather, "axis", std::int64_t{0});
  // a scalar index, as PyTorch writes it
  auto* idx = b.g->add_initializer();
  idx->set_name("zero_scalar");
  idx->set_data_type(onnx::TensorProto::INT64);
  idx->add_int64_data(0);
  auto* un = b.node("Unsqueeze", {"n"}, {"n1"});
  OnnxBuilder::attr(un, "axes", std::vector<std::int64_t>{0});
  auto* cat = b.node("Concat", {"n1", "minus1"}, {"shape"});
  OnnxBuilder::attr(cat, "axis", std::int64_t{0});
  b.node("Reshape", {"r", "shape"}, {"y"});
  b.output("y");
  // Shape of a symbolic batch is refused: the fold needs the batch the file declares.
  require_error([&] { (void)b.load(); }, errc::unsupported, "symbolic");
  b.g->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim(0)->set_dim_value(1);
  OnnxModel m = b.load();
  CHECK(m.declared_batch == 1);
  CHECK(m.graph.node_count() == 2);  // Relu, Reshape
  CHECK(m.graph.sample_shape("y") == Shape{24});
  const Tensor<float> x = random_input(Shape{3, 2, 3, 4}, 3);  // runs at any batch
  const Tensor<float> y = m.graph.predict(x.cview());
  REQUIRE(y.shape() == Shape{3, 24});
  for (std::size_t i = 0; i < y.size(); ++i) CHECK(y[i] == std::max(x[i], 0.0f));
}

TEST_CASE("ONNX broadcasting against constants and between computed tensors", "[onnx]") {
  OnnxBuilder b;
  b.input("x", {3, 2, 2});
  b.input("y", {1, 2, 2});
  const auto bias = b.weight("bias", {3, 1, 1});
  const auto scale = b.weight("scale", {2});
  b.node("Add", {"x", "bias"}, {"t1"});
  b.node("Mul", {"scale", "t1"}, {"t2"});
  b.node("Sub", {"t2", "y"}, {"t3"});
  b.node("Div", {"t3", "t2"}, {"z"});
  b.output("z");
  OnnxModel m = b.load();
  const Tensor<float> x = random_input(Shape{2, 3, 2, 2}, 5), y = random_input(Shape{2, 1, 2, 2}, 6);
  const TensorView<const float> in[2] = {x.cview(), y.cview()};
  m.graph.forward(std::span<const TensorView<const float>>(in, 2));
  const TensorView<const float> z = m.graph.result(0);
  REQUIRE(z.shape() == Shape{2, 3, 2, 2});
  for (std::size_t n = 0; n < 2; ++n)
    for (std::size_t c = 0; c < 3; ++c)
      for (std::size_t h = 0; h < 2; ++h)
        for (std::size_t w = 0; w < 2; ++w) {
          const std::size_t i = ((n * 3 + c) * 2 + h) * 2 + w;
          const float t2 = scale[w] * (x[i] + bias[c]);
          const float t3 = t2 - y[(n * 2 + h) * 2 + w];
          CHECK(z[i] == t3 / t2);
        }
}

TEST_CASE("ONNX import refuses what it does not run with a typed error naming node and operator", "[onnx]") {
  SECTION("an unsupported operator") {
    OnnxBuilder b;
    b.input("x", {4});
    b.node("Einsum", {"x"}, {"y"});
    b.output("y");
    require_error([&] { (void)b.load(); }, errc::unsupported, "node 'y_node' (Einsum): operator Einsum is not supported");
  }
  SECTION("an unknown attribute") {
    OnnxBuilder b;
    b.input("x", {4});
    auto* n = b.node("Relu", {"x"}, {"y"});
    OnnxBuilder::attr(n, "mystery", std::int64_t{1});
    b.output("y");
    require_error([&] { (void)b.load(); }, errc::unsupported, "(Relu): attribute 'mystery'");
  }
  SECTION("an input of another data type") {
    OnnxBuilder b;
    b.input("x", {4}, onnx::TensorProto::INT64);
    b.node("Relu", {"x"}, {"y"});
    b.output("y");
    require_error([&] { (void)b.load(); }, errc::unsupported, "int64");
  }
  SECTION("a dangling input") {
    OnnxBuilder b;
    b.input("x", {4});
    b.node("Add", {"x", "ghost"}, {"y"});
    b.output("y");
    require_error([&] { (void)b.load(); }, errc::corrupt_frame, "'ghost' is not defined");
  }
  SECTION("a cycle") {
    OnnxBuilder b;
    b.input("x", {4});
    b.node("Add", {"x", "z"}, {"y"});
    b.node("Relu", {"y"}, {"z"});
    b.output("z");
    require_error([&] { (void)b.load(); }, errc::corrupt_frame, "cycle");
  }
  SECTION("external data") {
    OnnxBuilder b;
    b.input("x", {4});
    auto* t = b.g->add_initializer();
    t->set_name("w");
    t->set_data_type(onnx::TensorProto::FLOAT);
    t->add_dims(4);
    t->set_data_location(onnx::TensorProto::EXTERNAL);
    b.node("Add", {"x", "w"}, {"y"});
    b.output("y");
    require_error([&] { (void)b.load(); }, errc::unsupported, "external data");
  }
  SECTION("a huge declared shape with few bytes present") {
    OnnxBuilder b;
    b.input("x", {4});
    auto* t = b.g->add_initializer();
    t->set_name("w");
    t->set_data_type(onnx::TensorProto::FLOAT);
    t->add_dims(1 << 30);
    t->add_dims(1 << 30);
    t->set_raw_data("abcd");
    b.node("Add", {"x", "w"}, {"y"});
    b.output("y");
    require_error([&] { (void)b.load(); }, errc::too_large, "initializer 'w'");
    t->clear_dims();
    t->add_dims(1 << 20);
    require_error([&] { (void)b.load(); }, errc::corrupt_frame, "4 bytes of data for 1048576 values");
  }
  SECTION("a per-sample tensor over the cap") {
    OnnxBuilder b;
    b.input("x", {4, 4});
    b.ints("pads", {0, 0, 0, 0, 1 << 20, 1 << 20});
    b.node("Pad", {"x", "pads"}, {"y"});
    b.output("y");
    require_error([&] { (void)b.load(); }, errc::too_large, "exceeds");
  }
  SECTION("a newer opset and a foreign domain") {
    OnnxBuilder b(18);
    b.input("x", {4});
    b.node("Relu", {"x"}, {"y"});
    b.output("y");
    require_error([&] { (void)b.load(); }, errc::unsupported, "opset 18");
    b.m.mutable_opset_import(0)->set_domain("com.example");
    require_error([&] { (void)b.load(); }, errc::unsupported, "com.example");
  }
  SECTION("a layout that moves the batch axis") {
    OnnxBuilder b;
    b.input("x", {2, 3});
    auto* n = b.node("Transpose", {"x"}, {"y"});
    OnnxBuilder::attr(n, "perm", std::vector<std::int64_t>{1, 0, 2});
    b.output("y");
    require_error([&] { (void)b.load(); }, errc::unsupported, "moves the batch axis");
  }
}

TEST_CASE("ONNX import of bytes that are not a model: every truncation and corruption a typed error", "[onnx]") {
  require_error([] { (void)load_bytes("this is not a model"); }, errc::corrupt_frame, "");
  require_error([] { (void)load_bytes(""); }, errc::corrupt_frame, "no graph");
  const ResidualCnn cnn;
  const std::string good = cnn.b.bytes();
  std::size_t refused = 0;
  for (std::size_t len = 0; len < good.size(); ++len) {
    try {
      (void)load_bytes(good.substr(0, len));
    } catch (const error&) {
      ++refused;
    }
  }
  // A prefix that ends between fields parses; every one of those lacks a later part the model
  // needs (the nodes, the output), so each prefix is refused with edgesplit::error, never another
  // exception or a crash.
  CHECK(refused == good.size());
  // Flipped bytes: a typed error or a model that still runs.
  Rng rng(99);
  for (int k = 0; k < 300; ++k) {
    std::string bad = good;
    bad[rng.next() % bad.size()] ^= static_cast<char>(1 + rng.next() % 255);
    try {
      OnnxModel m = load_bytes(bad);
      const Tensor<float> x = random_input(m.graph.shape(m.graph.input_names()[0], 1), 1);
      (void)m.graph.predict(x.cview());
    } catch (const error&) {
    }
  }
}

TEST_CASE("ONNX import reads a model file and names the file in its errors", "[onnx]") {
  const ResidualCnn cnn;
  const std::string path =
      (std::filesystem::temp_directory_path() / ("edgesplit_test_residual_" + std::to_string(::getpid()) + ".onnx")).string();
  {
    std::ofstream f(path, std::ios::binary);
    f << cnn.b.bytes();
  }
  OnnxModel m = import_onnx(path);
  CHECK(m.graph.node_count() == 9);
  OnnxImportOptions small;
  small.max_file_bytes = 100;
  require_error([&] { (void)import_onnx(path, small); }, errc::too_large, "max_file_bytes");
  require_error([&] { (void)import_onnx(path + ".missing"); }, errc::io_error, "cannot open");
  std::remove(path.c_str());
}

TEST_CASE("ONNX import: the fuzz corpus replays through the fuzzer's entry point", "[onnx][fuzz]") {
  std::size_t valid = 0, bad = 0;
  for (const auto& e : std::filesystem::directory_iterator(EDGESPLIT_ONNX_CORPUS_DIR)) {
    std::ifstream f(e.path(), std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const std::string name = e.path().filename().string();
    INFO(name);
    const bool imported = edgesplit_fuzz::import_onnx_all(std::as_bytes(std::span(bytes.data(), bytes.size())));
    if (name.rfind("valid-", 0) == 0) {
      CHECK(imported);
      ++valid;
    } else {
      CHECK_FALSE(imported);
      ++bad;
    }
  }
  CHECK(valid >= 3);
  CHECK(bad >= 9);
}
