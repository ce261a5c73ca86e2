// ONNX export (io/onnx_export.hpp): graphs written as ONNX and read back with import_onnx, native
// graphs and imported ones, whole models and the halves of a cut; what cannot be exported a typed
// error; and, where Python's onnx package is installed, every exported model through
// onnx.checker.check_model(full_check=True).
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "edgesplit/edgesplit.hpp"
#include "edgesplit/io/onnx.hpp"
#include "edgesplit/io/onnx_export.hpp"
#include "onnx_builder.hpp"
#include "test_util.hpp"

using namespace edgesplit;
using edgesplit_test::load_bytes;
using edgesplit_test::OnnxBuilder;
using edgesplit_test::random_input;
using edgesplit_test::require_error;

namespace {

void fill(Tensor<float>& t, Rng& rng, double lo, double hi) {
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = static_cast<float>(rng.uniform(lo, hi));
}

OnnxModel reimport(const Graph<float>& g) { return load_bytes(to_onnx_bytes(g)); }

// Runs `g` on `in` (one tensor per input, in order) and returns copies of its outputs.
std::vector<Tensor<float>> run(Graph<float>& g, const std::vector<Tensor<float>>& in) {
  std::vector<TensorView<const float>> views;
  for (const auto& t : in) views.push_back(t.cview());
  g.forward(std::span<const TensorView<const float>>(views.data(), views.size()));
  std::vector<Tensor<float>> out;
  for (std::size_t k = 0; k < g.output_names().size(); ++k) {
    const TensorView<const float> r = g.result(k);
    Tensor<float> t(r.shape());
    std::copy_n(r.data(), r.size(), t.data());
    out.push_back(std::move(t));
  }
  return out;
}

void require_same_bits(const std::vector<Tensor<float>>& got, const std::vector<Tensor<float>>& want) {
  REQUIRE(got.size() == want.size());
  for (std::size_t k = 0; k < got.size(); ++k) {
    REQUIRE(got[k].shape() == want[k].shape());
    std::size_t differ = 0;
    for (std::size_t i = 0; i < got[k].size(); ++i) differ += got[k][i] != want[k][i];
    INFO("output " << k);
    CHECK(differ == 0);
  }
}

// Every node output and initializer of an ONNX graph is defined once, and the graph's own tensor
// names are what the graph called them.
void check_names(const onnx::ModelProto& m, const Graph<float>& g) {
  std::multiset<std::string> defined;
  for (const auto& i : m.graph().input()) defined.insert(i.name());
  for (const auto& t : m.graph().initializer()) defined.insert(t.name());
  for (const auto& n : m.graph().node())
    for (const auto& o : n.output()) defined.insert(o);
  for (const auto& name : defined) {
    INFO(name);
    CHECK(defined.count(name) == 1);
  }
  for (const auto& n : g.input_names()) CHECK(defined.count(n) == 1);
  for (std::size_t i = 0; i < g.node_count(); ++i) CHECK(defined.count(g.node_output(i)) == 1);
}

// Graph inputs and outputs as ["N", sample dims...].
void check_value_info(const onnx::ValueInfoProto& v, const Graph<float>& g) {
  INFO(v.name());
  const auto& sh = v.type().tensor_type().shape();
  CHECK(v.type().tensor_type().elem_type() == onnx::TensorProto::FLOAT);
  const Shape& s = g.sample_shape(v.name());
  REQUIRE(static_cast<std::size_t>(sh.dim_size()) == s.rank() + 1);
  CHECK(sh.dim(0).dim_param() == "N");
  for (std::size_t i = 0; i < s.rank(); ++i) CHECK(sh.dim(static_cast<int>(i + 1)).dim_value() == static_cast<std::int64_t>(s[i]));
}

std::vector<std::string> op_types(const onnx::ModelProto& m) {
  std::vector<std::string> ops;
  for (const auto& n : m.graph().node()) ops.push_back(n.op_type());
  return ops;
}

// A native model of every layer whose ONNX operators compute exactly what it computes:
// standardizer, convolutions (grouped, dilated, without bias), pools of every setting, a residual
// Add of four inputs, Concat, global pools, Flatten, Dense on flat and on image inputs, the
// activations, Dropout, and Softmax on a flat and on an image tensor. Two outputs.
Graph<float> exact_graph() {
  Rng rng(41);
  Graph<float> g;
  g.input("x", Shape{3, 8, 8});
  auto st = std::make_unique<Standardizer<float>>(192);
  st->fit(random_input(Shape{32, 3, 8, 8}, 5, -2, 3).cview());
  g.add("std", {"x"}, std::move(st));
  Conv2DOptions same;
  same.padding = same_padding(3, 3);
  auto c1 = std::make_unique<Conv2D<float>>(3, 8, 3, 3, same);
  fill(c1->bias(), rng, -0.2, 0.2);
  g.add("c1", {"std"}, std::move(c1));
  g.add("a", {"c1"}, std::make_unique<ReLU<float>>());
  Conv2DOptions grouped = same;
  grouped.groups = 2;
  grouped.bias = false;
  g.add("c2", {"a"}, std::make_unique<Conv2D<float>>(8, 8, 3, 3, grouped));
  g.add("hs", {"c2"}, std::make_unique<HardSwish<float>>());
  g.add("sum", {"hs", "a"}, std::make_unique<Add<float>>());
  g.add("mp", {"sum"}, std::make_unique<MaxPool2D<float>>(2, 2));  // stride 0: the kernel
  Pool2DOptions avg;
  avg.stride_h = avg.stride_w = 2;
  avg.padding = Padding2D{1, 1, 1, 1};
  avg.count_include_pad = false;
  g.add("ap", {"sum"}, std::make_unique<AvgPool2D<float>>(3, 3, avg));
  g.add("cat", {"mp", "ap"}, std::make_unique<Concat<float>>());
  Conv2DOptions dilated;
  dilated.dilation_h = dilated.dilation_w = 2;
  dilated.padding = Padding2D{2, 1, 2, 3};
  auto c3 = std::make_unique<Conv2D<float>>(16, 8, 3, 3, dilated);
  fill(c3->bias(), rng, -0.2, 0.2);
  g.add("c3", {"cat"}, std::move(c3));
  g.add("lr", {"c3"}, std::make_unique<LeakyReLU<float>>(0.1));
  Pool2DOptions mx;
  mx.stride_h = mx.stride_w = 2;
  mx.padding = Padding2D{2, 2, 2, 2};
  mx.dilation_h = mx.dilation_w = 2;
  mx.ceil_mode = true;
  g.add("mp2", {"lr"}, std::make_unique<MaxPool2D<float>>(3, 3, mx));
  g.add("sp", {"mp2"}, std::make_unique<Softmax<float>>());  // over [8, 3, 3]
  g.add("gap", {"lr"}, std::make_unique<GlobalAvgPool<float>>());
  g.add("gmp", {"cat"}, std::make_unique<GlobalMaxPool<float>>());
  g.add("gcat", {"gap", "gmp"}, std::make_unique<Concat<float>>());
  g.add("flat", {"gcat"}, std::make_unique<Flatten<float>>());
  auto d1 = std::make_unique<Dense<float>>(24, 16, rng);
  fill(d1->bias(), rng, -0.5, 0.5);
  g.add("d1", {"flat"}, std::move(d1));
  g.add("th", {"d1"}, std::make_unique<Tanh<float>>());
  g.add("hsg", {"d1"}, std::make_unique<HardSigmoid<float>>(0.3, 0.4));
  g.add("cl", {"d1"}, std::make_unique<Clip<float>>(-0.2, 0.3));
  g.add("r6", {"d1"}, std::make_unique<ReLU6<float>>());
  g.add("s4", {"th", "hsg", "cl", "r6"}, std::make_unique<Add<float>>());
  g.add("drop", {"s4"}, std::make_unique<Dropout<float>>(0.3));
  g.add("id", {"drop"}, std::make_unique<Identity<float>>());
  g.add("sg", {"id"}, std::make_unique<Sigmoid<float>>());
  auto d2 = std::make_unique<Dense<float>>(16, 10, rng);
  fill(d2->bias(), rng, -0.5, 0.5);
  g.add("logits", {"sg"}, std::move(d2));
  auto d3 = std::make_unique<Dense<float>>(256, 10, rng);  // reads "cat" [16, 4, 4] as 256 features
  fill(d3->bias(), rng, -0.5, 0.5);
  g.add("skip", {"cat"}, std::move(d3));
  g.add("join", {"logits", "skip"}, std::make_unique<Add<float>>());
  g.add("probs", {"join"}, std::make_unique<Softmax<float>>());
  g.output("probs");
  g.output("sp");
  return g;
}

// A native model whose ONNX form re-imports with a few float roundings of difference: BatchNorm
// after a convolution (import_onnx folds it into the convolution), BatchNorm after a Concat (kept,
// its epsilon now a float), SiLU (x * Sigmoid(x) against x / (1 + e^-x)) and GELUTanh (its formula
// in separate operators, which the compiler may contract differently).
Graph<float> rounding_graph() {
  Rng rng(43);
  Graph<float> g;
  g.input("x", Shape{3, 8, 8});
  Conv2DOptions same;
  same.padding = same_padding(3, 3);
  auto c1 = std::make_unique<Conv2D<float>>(3, 8, 3, 3, same);
  fill(c1->bias(), rng, -0.2, 0.2);
  g.add("c1", {"x"}, std::move(c1));
  auto bn = [&rng](std::size_t c) {
    auto b = std::make_unique<BatchNorm2D<float>>(c, 1e-5);
    fill(b->weight(), rng, 0.5, 1.5);
    fill(b->bias(), rng, -0.5, 0.5);
    fill(b->running_mean(), rng, -0.5, 0.5);
    fill(b->running_var(), rng, 0.5, 2.0);
    return b;
  };
  g.add("bn1", {"c1"}, bn(8));
  g.add("si", {"bn1"}, std::make_unique<SiLU<float>>());
  g.add("c2", {"si"}, std::make_unique<Conv2D<float>>(8, 8, 3, 3, same));
  g.add("gt", {"c2"}, std::make_unique<GELUTanh<float>>());
  g.add("cat", {"gt", "si"}, std::make_unique<Concat<float>>());
  g.add("bn2", {"cat"}, bn(16));
  g.add("gap", {"bn2"}, std::make_unique<GlobalAvgPool<float>>());
  g.add("flat", {"gap"}, std::make_unique<Flatten<float>>());
  auto d = std::make_unique<Dense<float>>(16, 6, rng);
  fill(d->bias(), rng, -0.5, 0.5);
  g.add("logits", {"flat"}, std::move(d));
  g.add("probs", {"logits"}, std::make_unique<Softmax<float>>());
  g.output("logits");
  g.output("probs");
  return g;
}

// GELU (through Erf) and arithmetic against constants of the kinds no
// ONNX import produces (max, min, a constant on the left).
Graph<float> elementwise_graph() {
  Graph<float> g;
  g.input("x", Shape{6});
  g.add("ge", {"x"}, std::make_unique<GELU<float>>());
  Tensor<float> lo(Shape{6});
  for (std::size_t i = 0; i < 6; ++i) lo[i] = -0.5f + 0.1f * static_cast<float>(i);
  g.add("mx", {"ge"}, std::make_unique<ConstantOp<float>>(BinaryOp::max, lo));
  g.add("mn", {"mx"}, std::make_unique<ConstantOp<float>>(BinaryOp::min, Tensor<float>(Shape{1}, 0.75f), true));
  g.add("y", {"mn"}, std::make_unique<ConstantOp<float>>(BinaryOp::sub, Tensor<float>(Shape{1}, 2.0f), true));
  g.output("y");
  return g;
}

// A small evaluator of ONNX graphs made of element-wise operators on one input [N, F], each
// operator rounded to float as edgesplit's layers round: enough to check the arithmetic of
// decompositions import_onnx cannot read back. Initializers are scalars or [F].
std::vector<float> evaluate_elementwise(const onnx::ModelProto& m, const std::vector<float>& x, std::size_t features) {
  std::map<std::string, std::vector<float>> v;
  v[m.graph().input(0).name()] = x;
  for (const auto& t : m.graph().initializer()) {
    std::vector<float> d(t.raw_data().size() / 4);
    std::memcpy(d.data(), t.raw_data().data(), d.size() * 4);
    v[t.name()] = d;
  }
  auto at = [&](const std::vector<float>& a, std::size_t i) { return a.size() == 1 ? a[0] : a.size() == features ? a[i % features] : a[i]; };
  for (const auto& n : m.graph().node()) {
    const std::string& op = n.op_type();
    const std::vector<float>& a = v.at(n.input(0));
    const std::vector<float>* b = n.input_size() > 1 ? &v.at(n.input(1)) : nullptr;
    const std::size_t size = std::max(a.size(), b ? b->size() : std::size_t{0});
    std::vector<float> out(size);
    for (std::size_t i = 0; i < size; ++i) {
      const float p = at(a, i), q = b ? at(*b, i) : 0.0f;
      if (op == "Mul") out[i] = p * q;
      else if (op == "Add") out[i] = p + q;
      else if (op == "Sub") out[i] = p - q;
      else if (op == "Div") out[i] = p / q;
      else if (op == "Max") out[i] = std::max(p, q);
      else if (op == "Min") out[i] = std::min(p, q);
      else if (op == "Erf") out[i] = std::erf(p);
      else if (op == "Tanh") out[i] = std::tanh(p);
      else if (op == "Sigmoid") out[i] = 1.0f / (1.0f + std::exp(-p));
      else FAIL("the test evaluator has no " << op);
    }
    v[n.output(0)] = std::move(out);
  }
  return v.at(m.graph().output(0).name());
}

// An imported model of the layers import_onnx makes for ONNX operators (opset 13): Transpose,
// MatMul with a constant of rank 2 and of rank 1 (MatMulConst and a Reshape), arithmetic against
// constants on either side (ConstantOp), Softmax and LogSoftmax along one axis (AxisSoftmax), Pad,
// Reshape, MatMul of two computed tensors, Elementwise, Concat along axis 2, Flatten, Gemm.
OnnxBuilder imported_model() {
  OnnxBuilder b;
  b.input("x", {3, 4, 5});
  b.input("y", {6, 2});
  b.input("z", {1, 2});
  auto* tr = b.node("Transpose", {"x"}, {"t"});
  OnnxBuilder::attr(tr, "perm", std::vector<std::int64_t>{0, 2, 3, 1});  // [N, 4, 5, 3]
  b.weight("B", {3, 6});
  b.node("MatMul", {"t", "B"}, {"m"});  // [N, 4, 5, 6]
  b.weight("bias", {6});
  b.node("Add", {"m", "bias"}, {"m1"});
  b.weight("scale", {1, 1, 6}, 0.5, 1.5);
  b.node("Mul", {"scale", "m1"}, {"m2"});
  auto* sm = b.node("Softmax", {"m2"}, {"s"});
  OnnxBuilder::attr(sm, "axis", std::int64_t{2});
  auto* ls = b.node("LogSoftmax", {"s"}, {"l"});
  OnnxBuilder::attr(ls, "axis", std::int64_t{-1});
  b.ints("pads", {0, 1, 0, 0, 0, 0, 2, 0});
  auto* pv = b.g->add_initializer();
  pv->set_name("pad_value");
  pv->set_data_type(onnx::TensorProto::FLOAT);
  pv->add_float_data(0.5f);
  b.node("Pad", {"l", "pads", "pad_value"}, {"p"});  // [N, 5, 7, 6]
  b.ints("shape", {0, 35, 6});
  b.node("Reshape", {"p", "shape"}, {"r"});
  b.node("MatMul", {"r", "y"}, {"mm"});  // [N, 35, 2]
  b.weight("slope", {2}, 0.1, 0.3);
  b.node("PRelu", {"mm", "slope"}, {"pr"});
  b.node("Sub", {"pr", "z"}, {"d"});  // Elementwise, z broadcast over axis 1
  b.weight("two", {1});
  b.node("Div", {"two", "d"}, {"q"});
  b.node("Tanh", {"q"}, {"tq"});
  auto* cat = b.node("Concat", {"tq", "mm"}, {"cat"});
  OnnxBuilder::attr(cat, "axis", std::int64_t{2});  // [N, 35, 4]
  b.node("Flatten", {"cat"}, {"f"});
  b.weight("W", {140, 3});
  b.weight("C", {3});
  b.node("Gemm", {"f", "W", "C"}, {"out"});
  b.weight("v", {6});
  b.node("MatMul", {"p", "v"}, {"col"});  // [N, 5, 7]: a rank-1 constant
  b.output("out");
  b.output("col");
  return b;
}

// The Python interpreter that imports onnx, or "" when there is none.
std::string python_with_onnx() {
  for (const char* py : {"python3", "/usr/bin/python3"}) {
    std::string cmd = py;
    // onnx.checker, not just onnx: Debian's libonnx-testdata installs a bare onnx/backend data
    // directory that Python imports as an empty namespace package.
    cmd += " -c 'import onnx.checker' >/dev/null 2>&1";
    const int rc = std::system(cmd.c_str());
    if (rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0) return py;
  }
  return "";
}

std::string temp_path(const std::string& name) {
  std::string file = "edgesplit_export_";
  file += std::to_string(::getpid());
  file += '_';
  file += name;
  file += ".onnx";
  return (std::filesystem::temp_directory_path() / file).string();
}

}  // namespace

TEST_CASE("A native graph exports to ONNX and re-imports computing the same outputs bit for bit", "[onnx]") {
  Graph<float> g = exact_graph();
  const onnx::ModelProto m = export_onnx(g);
  CHECK(m.ir_version() == 8);
  CHECK(m.producer_name() == "edgesplit");
  REQUIRE(m.opset_import_size() == 1);
  CHECK(m.opset_import(0).domain().empty());
  CHECK(m.opset_import(0).version() == 17);
  check_names(m, g);
  REQUIRE(m.graph().input_size() == 1);
  REQUIRE(m.graph().output_size() == 2);
  check_value_info(m.graph().input(0), g);
  CHECK(m.graph().output(0).name() == "probs");
  CHECK(m.graph().output(1).name() == "sp");
  for (const auto& o : m.graph().output()) check_value_info(o, g);
  // The mapping, node by node (Dense on [16, 4, 4] gets a Flatten, Softmax on [8, 3, 3] a Flatten
  // and a Reshape around it, the Standardizer a Sub and a Div, the four-input Add a chain).
  const std::vector<std::string> want_ops = {
      "Sub", "Div", "Conv", "Relu", "Conv", "HardSwish", "Add", "MaxPool", "AveragePool", "Concat", "Conv",
      "LeakyRelu", "MaxPool", "Flatten", "Softmax", "Reshape", "GlobalAveragePool", "GlobalMaxPool", "Concat",
      "Flatten", "Gemm", "Tanh", "HardSigmoid", "Clip", "Clip", "Add", "Add", "Add", "Identity", "Identity",
      "Sigmoid", "Gemm", "Flatten", "Gemm", "Add", "Softmax"};
  CHECK(op_types(m) == want_ops);

  OnnxModel back = reimport(g);
  CHECK(back.opset == 17);
  CHECK(back.ir_version == 8);
  CHECK(back.producer == "edgesplit");
  CHECK(back.graph.input_names() == g.input_names());
  CHECK(back.graph.output_names() == g.output_names());
  for (std::size_t i = 0; i < g.node_count(); ++i) {
    // Dropout and Identity vanish on import (their outputs alias their inputs); the rest keep their names.
    if (g.node_output(i) == "drop" || g.node_output(i) == "id") continue;
    INFO(g.node_output(i));
    CHECK(back.graph.contains(g.node_output(i)));
    CHECK(back.graph.sample_shape(g.node_output(i)) == g.sample_shape(g.node_output(i)));
  }
  for (std::size_t batch : {1, 5}) {
    const std::vector<Tensor<float>> in = {random_input(Shape{batch, 3, 8, 8}, 17 + batch, -2, 3)};
    require_same_bits(run(back.graph, in), run(g, in));
  }
}

TEST_CASE("BatchNorm, SiLU and GELUTanh export and re-import within a few float roundings", "[onnx]") {
  Graph<float> g = rounding_graph();
  const onnx::ModelProto m = export_onnx(g);
  check_names(m, g);
  const auto ops = op_types(m);
  CHECK(std::count(ops.begin(), ops.end(), "BatchNormalization") == 2);
  CHECK(std::count(ops.begin(), ops.end(), "Tanh") == 1);
  OnnxModel back = reimport(g);
  CHECK_FALSE(back.graph.contains("c1"));  // folded into bn1
  CHECK(back.graph.contains("bn1"));
  const std::vector<Tensor<float>> in = {random_input(Shape{6, 3, 8, 8}, 23)};
  const auto want = run(g, in);
  const auto got = run(back.graph, in);
  REQUIRE(got.size() == want.size());
  // Each difference is a float rounding (relative 2^-24 ~ 6e-8 of the value rounded) taken
  // differently: the fold rounds each of the 216 folded weights once and reorders the BatchNorm
  // arithmetic (4 roundings per value), SiLU and GELUTanh round 1 to 3 times differently per
  // element, the second BatchNorm's epsilon is a float. Along the longest path (two 3x3
  // convolutions of 27 and 72 terms, a 16-term Dense) that is under ~150 roundings of values no
  // larger than the logits' scale (computed below, at least 1), so 1e-5 of that scale bounds it
  // with room to spare, while a wrong weight, axis or wiring moves the outputs by the scale itself.
  for (std::size_t k = 0; k < got.size(); ++k) {
    REQUIRE(got[k].shape() == want[k].shape());
    float scale = 1;
    for (std::size_t i = 0; i < want[k].size(); ++i) scale = std::max(scale, std::fabs(want[k][i]));
    float worst = 0;
    for (std::size_t i = 0; i < got[k].size(); ++i) worst = std::max(worst, std::fabs(got[k][i] - want[k][i]));
    INFO("output " << k << ": largest difference " << worst << " at scale " << scale);
    CHECK(worst <= 1e-5f * scale);
  }
}

TEST_CASE("GELU and constant max, min and left-hand arithmetic export as their ONNX formulas", "[onnx]") {
  Graph<float> g = elementwise_graph();
  const onnx::ModelProto m = export_onnx(g);
  check_names(m, g);
  CHECK(op_types(m) == std::vector<std::string>{"Mul", "Erf", "Add", "Mul", "Mul", "Max", "Min", "Sub"});
  // The constant on the left stays on the left.
  CHECK(m.graph().node(7).input(1) == "mn");
  const Tensor<float> x = random_input(Shape{40, 6}, 29, -4, 4);
  const Tensor<float> want = g.predict(x.cview());
  const std::vector<float> got = evaluate_elementwise(m, std::vector<float>(x.data(), x.data() + x.size()), 6);
  REQUIRE(got.size() == want.size());
  // std::erf against xsimd's erf: a few ulp of GELU's value (at most 4), then exact operators.
  for (std::size_t i = 0; i < got.size(); ++i) CHECK(std::fabs(got[i] - want[i]) <= 1e-6f * std::max(1.0f, std::fabs(want[i])));
  // Re-imported, GELU is five nodes (Mul, Erf, Add, Mul, Mul) computing what the one did, in its
  // order: the same xsimd erf, the same products.
  OnnxModel back = reimport(g);
  CHECK(back.graph.node_count() == 8);
  const Tensor<float> y = back.graph.predict(x.cview());
  for (std::size_t i = 0; i < y.size(); ++i) CHECK(std::fabs(y[i] - want[i]) <= 1e-6f * std::max(1.0f, std::fabs(want[i])));
}

TEST_CASE("An imported ONNX model exports and re-imports exactly with the same nodes and outputs", "[onnx]") {
  const OnnxBuilder b = imported_model();
  OnnxModel first = b.load();
  OnnxModel again = reimport(first.graph);
  REQUIRE(again.graph.node_count() == first.graph.node_count());
  for (std::size_t i = 0; i < first.graph.node_count(); ++i) {
    INFO(first.graph.node_output(i) << " = " << first.graph.node_describe(i));
    CHECK(again.graph.node_output(i) == first.graph.node_output(i));
    CHECK(again.graph.node_inputs(i) == first.graph.node_inputs(i));
    CHECK(again.graph.node_spec(i) == first.graph.node_spec(i));
  }
  CHECK(again.graph.architecture_hash() == first.graph.architecture_hash());
  CHECK(again.graph.input_names() == first.graph.input_names());
  CHECK(again.graph.output_names() == first.graph.output_names());
  for (std::size_t batch : {1, 3}) {
    const std::vector<Tensor<float>> in = {random_input(Shape{batch, 3, 4, 5}, 31 + batch),
                                           random_input(Shape{batch, 6, 2}, 37 + batch),
                                           random_input(Shape{batch, 1, 2}, 41 + batch, 2, 3)};
    require_same_bits(run(again.graph, in), run(first.graph, in));
  }
}

TEST_CASE("Softmax over a flattened tail (opset 11) exports as Reshape, Softmax, Reshape with the same outputs", "[onnx]") {
  OnnxBuilder b(11);
  b.input("x", {3, 4, 2});
  auto* sm = b.node("Softmax", {"x"}, {"s"});
  OnnxBuilder::attr(sm, "axis", std::int64_t{2});  // rows of the last 4 * 2 values
  auto* ls = b.node("LogSoftmax", {"s"}, {"l"});
  OnnxBuilder::attr(ls, "axis", std::int64_t{3});  // the last axis: no reshape needed
  b.output("l");
  OnnxModel first = b.load();
  REQUIRE(first.graph.node_count() == 2);
  const onnx::ModelProto m = export_onnx(first.graph);
  check_names(m, first.graph);
  CHECK(op_types(m) == std::vector<std::string>{"Reshape", "Softmax", "Reshape", "LogSoftmax"});
  OnnxModel again = load_bytes(m.SerializeAsString());
  CHECK(again.graph.node_count() == 4);
  const std::vector<Tensor<float>> in = {random_input(Shape{5, 3, 4, 2}, 43, -3, 3)};
  require_same_bits(run(again.graph, in), run(first.graph, in));
}

TEST_CASE("A head and a tail from Graph::cut export and re-import, and head then tail computes the whole model", "[onnx]") {
  Graph<float> whole = exact_graph();
  auto [head, tail] = whole.cut({"a", "c2"});
  const onnx::ModelProto hm = export_onnx(head), tm = export_onnx(tail);
  check_names(hm, head);
  check_names(tm, tail);
  REQUIRE(hm.graph().output_size() == 2);
  CHECK(hm.graph().output(0).name() == "a");
  CHECK(hm.graph().output(1).name() == "c2");
  REQUIRE(tm.graph().input_size() == 2);
  CHECK(tm.graph().input(0).name() == "a");
  CHECK(tm.graph().input(1).name() == "c2");
  for (const auto& v : hm.graph().output()) check_value_info(v, head);
  for (const auto& v : tm.graph().input()) check_value_info(v, tail);
  OnnxModel h = load_bytes(hm.SerializeAsString()), t = load_bytes(tm.SerializeAsString());
  const std::vector<Tensor<float>> in = {random_input(Shape{4, 3, 8, 8}, 47, -2, 3)};
  const auto features = run(h.graph, in);
  REQUIRE(features.size() == 2);
  require_same_bits(run(t.graph, features), run(whole, in));
}

TEST_CASE("ONNX export refuses layers without an ONNX form and reports unwritable files", "[onnx]") {
  SECTION("a nested graph names the node and its kind") {
    Graph<float> inner;
    inner.input("u", Shape{4});
    inner.add("v", {"u"}, std::make_unique<ReLU<float>>());
    inner.output("v");
    Graph<float> g;
    g.input("x", Shape{4});
    g.add("nested", {"x"}, std::make_unique<GraphLayer<float>>(inner));
    g.output("nested");
    require_error([&] { (void)export_onnx(g); }, errc::unsupported, "node 'nested' (Graph: ");
    require_error([&] { (void)to_onnx_bytes(g); }, errc::unsupported, "GraphLayer");
  }
  SECTION("a quantized layer") {
    Graph<float> g;
    g.input("x", Shape{4});
    g.add("q", {"x"}, std::make_unique<QuantizedDense>(Dense<float>(4, 3), QuantParams::tensor(0.01f, 0)));
    g.output("q");
    require_error([&] { (void)export_onnx(g); }, errc::unsupported, "node 'q' (QuantizedDense: ");
    require_error([&] { (void)export_onnx(g); }, errc::unsupported, "float model");
  }
  SECTION("a graph without outputs") {
    Graph<float> g;
    g.input("x", Shape{4});
    g.add("y", {"x"}, std::make_unique<ReLU<float>>());
    require_error([&] { (void)export_onnx(g); }, errc::invalid_argument, "outputs");
  }
  SECTION("save_onnx to a directory that does not exist, and to a file import_onnx reads back") {
    Graph<float> g = exact_graph();
    std::string missing = "edgesplit_no_such_dir_";
    missing += std::to_string(::getpid());
    const std::filesystem::path dir = std::filesystem::temp_directory_path() / missing;
    require_error([&] { save_onnx(g, (dir / "m.onnx").string()); }, errc::io_error, "m.onnx");
    const std::string path = temp_path("saved");
    save_onnx(g, path);
    OnnxModel back = import_onnx(path);
    CHECK(back.graph.output_names() == g.output_names());
    const std::vector<Tensor<float>> in = {random_input(Shape{2, 3, 8, 8}, 53)};
    require_same_bits(run(back.graph, in), run(g, in));
    std::remove(path.c_str());
  }
}

TEST_CASE("Exported models pass onnx.checker.check_model with full_check", "[onnx]") {
  const std::string py = python_with_onnx();
  if (py.empty()) {
    WARN("no Python with the onnx package: the ONNX checker is not run");
    return;
  }
  Graph<float> exact = exact_graph();
  auto [head, tail] = exact.cut({"a", "c2"});
  OnnxModel imported = imported_model().load();
  const std::vector<std::pair<std::string, const Graph<float>*>> models = {
      {"exact", &exact}, {"head", &head}, {"tail", &tail}, {"imported", &imported.graph}};
  Graph<float> rounding = rounding_graph(), elementwise = elementwise_graph();
  std::vector<std::pair<std::string, const Graph<float>*>> all = models;
  all.emplace_back("rounding", &rounding);
  all.emplace_back("elementwise", &elementwise);
  for (const auto& [name, graph] : all) {
    const std::string path = temp_path(name);
    save_onnx(*graph, path);
    std::string cmd = py;
    cmd += " -c 'import sys, onnx; onnx.checker.check_model(sys.argv[1], full_check=True)' '";
    cmd += path;
    cmd += "'";
    const int rc = std::system(cmd.c_str());
    INFO(name << ": " << cmd);
    CHECK((rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0));
    std::remove(path.c_str());
  }
}
