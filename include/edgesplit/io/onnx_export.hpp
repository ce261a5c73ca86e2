// edgesplit/io/onnx_export.hpp - ONNX models out: a Graph<float> (a whole model, or a head or a
// tail from Graph::cut) as an ONNX model, opset 17, IR version 8.
//
// Needs Debian's libonnx-dev (the onnx.proto classes, library onnx_proto) and libprotobuf-dev, as
// io/onnx.hpp does: CMake's EDGESPLIT_WITH_ONNX links them. The rest of edgesplit does not include
// this header.
//
// Layer (or merge)        ONNX operators
// Dense                   Gemm(transB=1), after Flatten(axis=1) when the input has rank > 2
// Conv2D                  Conv (kernel_shape, strides, pads, dilations, group; bias when present)
// BatchNorm2D             BatchNormalization (running statistics, epsilon)
// MaxPool2D, AvgPool2D    MaxPool (with dilations), AveragePool (count_include_pad); ceil_mode
// GlobalAvgPool/MaxPool   GlobalAveragePool, GlobalMaxPool
// Flatten                 Flatten(axis=1)
// ReLU, LeakyReLU, Sigmoid, Tanh, HardSigmoid, HardSwish: Relu, LeakyRelu, Sigmoid, Tanh, ...
// ReLU6, Clip             Clip(x, min, max), the bounds as scalar initializers
// SiLU                    x * Sigmoid(x)
// GELU                    0.5 x (1 + Erf(x / sqrt 2))  (Mul, Erf, Add, Mul, Mul)
// GELUTanh                0.5 x (1 + Tanh(sqrt(2/pi) (x + 0.044715 x^3)))
// Identity, Dropout       Identity
// Softmax                 Softmax(axis=-1) on [N, F]; else Flatten, Softmax, Reshape back
// Standardizer            Sub(mean), Div(std)
// Reshape, Transpose      Reshape(shape [0, sample dims...]), Transpose(perm)
// Pad                     Pad(constant; pads and constant_value as initializers)
// ConstantOp              Add, Sub, Mul, Div, PRelu, Max or Min with the constant as initializer
// AxisSoftmax             Softmax or LogSoftmax(axis), inside Reshapes when it flattens the tail
// MatMulConst             MatMul with the initializer B [K, P]
// Add, Concat             Add (a chain for more than two inputs), Concat(axis)
// Elementwise, MatMul     the operator of the same name on the two inputs
#pragma once

#include <onnx/onnx_pb.h>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <limits>
#include <numbers>
#include <span>
#include <string>
#include <unordered_set>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/nn/activations.hpp"
#include "edgesplit/nn/batchnorm.hpp"
#include "edgesplit/nn/conv2d.hpp"
#include "edgesplit/nn/dense.hpp"
#include "edgesplit/nn/dropout.hpp"
#include "edgesplit/nn/graph.hpp"
#include "edgesplit/nn/merge.hpp"
#include "edgesplit/nn/pool.hpp"
#include "edgesplit/nn/standardizer.hpp"
#include "edgesplit/nn/tensor_ops.hpp"

namespace edgesplit {

namespace detail::onnx_export {

// The operator set and IR version written: opset 17 is the newest io/onnx.hpp reads, and IR 8 the
// version that goes with it.
inline constexpr std::int64_t opset = 17;
inline constexpr std::int64_t ir_version = 8;

inline const char* op_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::add: return "Add";
    case BinaryOp::sub: return "Sub";
    case BinaryOp::mul: return "Mul";
    case BinaryOp::div: return "Div";
    case BinaryOp::prelu: return "PRelu";
    case BinaryOp::max: return "Max";
    case BinaryOp::min: return "Min";
  }
  return "?";
}

// Writes one graph node by node. Every graph tensor keeps its name; the tensors an export adds
// (initializers, the intermediate results of a decomposition) are named "<node output>/<what>",
// with "_2", "_3"... appended when a name is taken, so they never clash with the graph's own.
class Exporter {
 public:
  explicit Exporter(const Graph<float>& g) : g_(g) {}

  onnx::ModelProto run() {
    if (g_.output_names().empty()) fail(errc::invalid_argument, "export_onnx needs a graph with its outputs declared");
    for (const auto& n : g_.input_names()) names_.insert(n);
    for (std::size_t i = 0; i < g_.node_count(); ++i) names_.insert(g_.node_output(i));
    m_.set_ir_version(ir_version);
    m_.set_producer_name("edgesplit");
    auto* os = m_.add_opset_import();
    os->set_domain("");
    os->set_version(opset);
    gp_ = m_.mutable_graph();
    gp_->set_name("edgesplit");
    for (const auto& n : g_.input_names()) value_info(gp_->add_input(), n);
    for (std::size_t i = 0; i < g_.node_count(); ++i) node(i);
    for (const auto& n : g_.output_names()) value_info(gp_->add_output(), n);
    return std::move(m_);
  }

 private:
  using Names = std::vector<std::string>;

  // ---- names, tensors, attributes ---------------------------------------------------------------

  std::string fresh(const std::string& out, const std::string& what) {
    std::string base = out;
    base += '/';
    base += what;
    std::string name = base;
    for (std::size_t k = 2; names_.count(name); ++k) {
      name = base;
      name += '_';
      name += std::to_string(k);
    }
    names_.insert(name);
    return name;
  }

  std::size_t rank(const std::string& t) const { return g_.sample_shape(t).rank() + 1; }
  // [0, sample dims...]: a Reshape target that keeps the batch (0 copies axis 0).
  static std::vector<std::int64_t> keep_batch(std::span<const std::size_t> sample) {
    std::vector<std::int64_t> d{0};
    for (std::size_t x : sample) d.push_back(static_cast<std::int64_t>(x));
    return d;
  }
  static std::vector<std::int64_t> dims_of(std::span<const std::size_t> d) {
    std::vector<std::int64_t> r;
    for (std::size_t x : d) r.push_back(static_cast<std::int64_t>(x));
    return r;
  }

  void value_info(onnx::ValueInfoProto* v, const std::string& name) {
    v->set_name(name);
    auto* tt = v->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(onnx::TensorProto::FLOAT);
    auto* sh = tt->mutable_shape();
    sh->add_dim()->set_dim_param("N");
    for (std::size_t d : g_.sample_shape(name).dims()) sh->add_dim()->set_dim_value(static_cast<std::int64_t>(d));
  }

  // A float initializer of shape `dims` (a scalar when empty), little-endian raw data.
  std::string floats(const std::string& out, const char* what, std::span<const float> v, const std::vector<std::int64_t>& dims) {
    const std::string name = fresh(out, what);
    auto* t = gp_->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    for (auto d : dims) t->add_dims(d);
    std::string raw(v.size() * 4, '\0');
    for (std::size_t i = 0; i < v.size(); ++i) {
      const auto u = std::bit_cast<std::uint32_t>(v[i]);
      for (std::size_t k = 0; k < 4; ++k) raw[i * 4 + k] = static_cast<char>((u >> (8 * k)) & 0xffu);
    }
    t->set_raw_data(std::move(raw));
    return name;
  }
  std::string scalar(const std::string& out, const char* what, double v) {
    const float f = static_cast<float>(v);
    return floats(out, what, std::span<const float>(&f, 1), {});
  }
  std::string tensor(const std::string& out, const char* what, const Tensor<float>& t) {
    return floats(out, what, std::span<const float>(t.data(), t.size()), dims_of(t.shape().dims()));
  }
  // A 1-D int64 initializer (shapes, pads).
  std::string ints(const std::string& out, const char* what, const std::vector<std::int64_t>& v) {
    const std::string name = fresh(out, what);
    auto* t = gp_->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::INT64);
    t->add_dims(static_cast<std::int64_t>(v.size()));
    for (auto x : v) t->add_int64_data(x);
    return name;
  }

  onnx::NodeProto* add(const char* op, const Names& in, const std::string& out) {
    auto* n = gp_->add_node();
    n->set_op_type(op);
    n->set_name(out);
    for (const auto& s : in) n->add_input(s);
    n->add_output(out);
    return n;
  }
  static void attr(onnx::NodeProto* n, const char* name, std::int64_t v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(v);
  }
  static void attr(onnx::NodeProto* n, const char* name, double v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::FLOAT);
    a->set_f(static_cast<float>(v));
  }
  static void attr(onnx::NodeProto* n, const char* name, const std::vector<std::int64_t>& v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (auto x : v) a->add_ints(x);
  }
  static void attr(onnx::NodeProto* n, const char* name, const char* v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::STRING);
    a->set_s(v);
  }
  static std::int64_t i64(std::size_t v) { return static_cast<std::int64_t>(v); }

  // ---- nodes -------------------------------------------------------------------------------------

  void node(std::size_t i) {
    const std::string& out = g_.node_output(i);
    const Names in = g_.node_inputs(i);
    if (const Layer<float>* l = g_.layer(i)) {
      if (layer(out, in.at(0), *l)) return;
      std::string why = "edgesplit has no ONNX export for this kind of layer";
      if (as<GraphLayer<float>>(*l)) why = "a nested graph (GraphLayer) has no ONNX form; export the graph it wraps";
      else if (l->name().find("Quantized") != std::string_view::npos)
        why = "a quantized layer has no ONNX export; export the float model it was made from";
      unsupported(i, why);
    }
    if (!merge(out, in, *g_.merge(i))) unsupported(i, "edgesplit has no ONNX export for this kind of merge");
  }

  // errc::unsupported naming node `i`, its kind and its settings.
  [[noreturn]] void unsupported(std::size_t i, const std::string& why) const {
    const std::string kind(g_.layer(i) ? g_.layer(i)->name() : g_.merge(i)->name());
    const std::string d = g_.node_describe(i);
    std::string what = "node '" + g_.node_output(i) + "' (" + kind;
    if (d != kind) what += ": " + d;
    fail(errc::unsupported, what + "): " + why);
  }

  template <class L>
  static const L* as(const Layer<float>& l) {
    return dynamic_cast<const L*>(&l);
  }

  bool layer(const std::string& out, const std::string& x, const Layer<float>& l) {
    if (as<Identity<float>>(l) || as<Dropout<float>>(l)) return add("Identity", {x}, out), true;
    if (as<ReLU<float>>(l)) return add("Relu", {x}, out), true;
    if (const auto* a = as<LeakyReLU<float>>(l)) return attr(add("LeakyRelu", {x}, out), "alpha", a->policy().alpha), true;
    if (as<Sigmoid<float>>(l)) return add("Sigmoid", {x}, out), true;
    if (as<Tanh<float>>(l)) return add("Tanh", {x}, out), true;
    if (as<Erf<float>>(l)) return add("Erf", {x}, out), true;
    if (as<HardSwish<float>>(l)) return add("HardSwish", {x}, out), true;
    if (const auto* a = as<HardSigmoid<float>>(l)) {
      auto* n = add("HardSigmoid", {x}, out);
      attr(n, "alpha", a->policy().alpha);
      attr(n, "beta", a->policy().beta);
      return true;
    }
    if (as<ReLU6<float>>(l)) return clip(out, x, 0, 6), true;
    if (const auto* a = as<Clip<float>>(l)) return clip(out, x, a->policy().min, a->policy().max), true;
    if (as<SiLU<float>>(l)) {
      const std::string s = fresh(out, "sigmoid");
      add("Sigmoid", {x}, s);
      add("Mul", {x, s}, out);
      return true;
    }
    if (as<GELU<float>>(l)) return gelu(out, x), true;
    if (as<GELUTanh<float>>(l)) return gelu_tanh(out, x), true;
    if (as<Softmax<float>>(l)) return softmax(out, x), true;
    if (const auto* d = as<Dense<float>>(l)) return dense(out, x, *d), true;
    if (const auto* c = as<Conv2D<float>>(l)) return conv(out, x, *c), true;
    if (const auto* b = as<BatchNorm2D<float>>(l)) return batchnorm(out, x, *b), true;
    if (const auto* p = as<MaxPool2D<float>>(l)) return pool(out, x, "MaxPool", p->window(), p->ceil_mode(), nullptr), true;
    if (const auto* p = as<AvgPool2D<float>>(l)) {
      const bool include = p->count_include_pad();
      return pool(out, x, "AveragePool", p->window(), p->ceil_mode(), &include), true;
    }
    if (as<GlobalAvgPool<float>>(l)) return add("GlobalAveragePool", {x}, out), true;
    if (as<GlobalMaxPool<float>>(l)) return add("GlobalMaxPool", {x}, out), true;
    if (as<Flatten<float>>(l)) return attr(add("Flatten", {x}, out), "axis", std::int64_t{1}), true;
    if (const auto* s = as<Standardizer<float>>(l)) return standardizer(out, x, *s), true;
    if (const auto* r = as<Reshape<float>>(l)) {
      add("Reshape", {x, ints(out, "shape", keep_batch(r->sample_shape().dims()))}, out);
      return true;
    }
    if (const auto* t = as<Transpose<float>>(l)) {
      std::vector<std::int64_t> perm;
      for (std::size_t p : t->perm()) perm.push_back(i64(p));
      return attr(add("Transpose", {x}, out), "perm", perm), true;
    }
    if (const auto* p = as<Pad<float>>(l)) return pad(out, x, *p), true;
    if (const auto* c = as<ConstantOp<float>>(l)) {
      const std::string k = tensor(out, "constant", c->constant());
      add(op_name(c->op()), c->constant_first() ? Names{k, x} : Names{x, k}, out);
      return true;
    }
    if (as<AxisSoftmax<float>>(l)) return axis_softmax(out, x, l.spec()), true;
    if (const auto* mm = as<MatMulConst<float>>(l)) return matmul_const(out, x, *mm), true;
    return false;
  }

  bool merge(const std::string& out, const Names& in, const Merge<float>& m) {
    if (dynamic_cast<const Add<float>*>(&m)) {
      // ONNX's Add takes two inputs; Add of more is a chain, summed left to right as Add does.
      std::string acc = in.at(0);
      for (std::size_t k = 1; k < in.size(); ++k) {
        std::string what = "sum";
        what += std::to_string(k);
        const std::string to = k + 1 == in.size() ? out : fresh(out, what);
        add("Add", {acc, in[k]}, to);
        acc = to;
      }
      if (in.size() == 1) add("Identity", {acc}, out);
      return true;
    }
    if (const auto* c = dynamic_cast<const Concat<float>*>(&m)) return attr(add("Concat", in, out), "axis", i64(c->axis())), true;
    if (const auto* e = dynamic_cast<const Elementwise<float>*>(&m)) return add(op_name(e->op()), in, out), true;
    if (dynamic_cast<const MatMul<float>*>(&m)) return add("MatMul", in, out), true;
    return false;
  }

  // ---- layer by layer ----------------------------------------------------------------------------

  void clip(const std::string& out, const std::string& x, double lo, double hi) {
    const std::string a = scalar(out, "min", lo), b = scalar(out, "max", hi);
    add("Clip", {x, a, b}, out);
  }

  // 0.5 x (1 + erf(x / sqrt 2)), in the order GELU computes it: erf(x * (1/sqrt 2)), then
  // (0.5 x) * (1 + erf). (ONNX's own Gelu arrives only in opset 20.)
  void gelu(const std::string& out, const std::string& x) {
    const std::string s = fresh(out, "scaled"), e = fresh(out, "erf"), p = fresh(out, "one_plus"), h = fresh(out, "half_x");
    add("Mul", {x, scalar(out, "inv_sqrt2", std::numbers::sqrt2 / 2)}, s);
    add("Erf", {s}, e);
    add("Add", {e, scalar(out, "one", 1.0)}, p);
    add("Mul", {x, scalar(out, "half", 0.5)}, h);
    add("Mul", {h, p}, out);
  }

  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in the order GELUTanh computes it.
  void gelu_tanh(const std::string& out, const std::string& x) {
    const std::string k1 = fresh(out, "k1x"), x2 = fresh(out, "k1x2"), x3 = fresh(out, "k1x3"), s = fresh(out, "inner"),
                      u = fresh(out, "u"), t = fresh(out, "tanh"), p = fresh(out, "one_plus"), h = fresh(out, "half_x");
    add("Mul", {scalar(out, "k1", act::GELUTanh::k1), x}, k1);
    add("Mul", {k1, x}, x2);
    add("Mul", {x2, x}, x3);
    add("Add", {x, x3}, s);
    add("Mul", {scalar(out, "k0", act::GELUTanh::k0), s}, u);
    add("Tanh", {u}, t);
    add("Add", {scalar(out, "one", 1.0), t}, p);
    add("Mul", {scalar(out, "half", 0.5), x}, h);
    add("Mul", {h, p}, out);
  }

  // Softmax is row-wise over every non-batch feature: ONNX Softmax on the last axis of [N, F].
  void softmax(const std::string& out, const std::string& x) {
    if (rank(x) == 2) return attr(add("Softmax", {x}, out), "axis", std::int64_t{-1});
    const std::string f = fresh(out, "flat"), s = fresh(out, "softmax");
    attr(add("Flatten", {x}, f), "axis", std::int64_t{1});
    attr(add("Softmax", {f}, s), "axis", std::int64_t{-1});
    add("Reshape", {s, ints(out, "shape", keep_batch(g_.sample_shape(out).dims()))}, out);
  }

  void axis_softmax(const std::string& out, const std::string& x, const LayerSpec& spec) {
    const std::size_t axis = static_cast<std::size_t>(spec.integers.at("axis"));
    const bool log = spec.integers.at("log") != 0, flatten = spec.integers.at("flatten_tail") != 0;
    const char* op = log ? "LogSoftmax" : "Softmax";
    const std::size_t r = rank(x);
    if (!flatten || axis + 1 == r) return attr(add(op, {x}, out), "axis", i64(axis));
    // Before opset 13 the axis and every later one were one row: reshape them into one axis.
    const auto sample = g_.sample_shape(x).dims();
    std::vector<std::int64_t> d{0};
    std::int64_t tail = 1;
    for (std::size_t k = 1; k < r; ++k) {
      if (k < axis) d.push_back(i64(sample[k - 1]));
      else tail *= i64(sample[k - 1]);
    }
    d.push_back(tail);
    const std::string f = fresh(out, "flat"), s = fresh(out, "softmax");
    add("Reshape", {x, ints(out, "flat_shape", d)}, f);
    attr(add(op, {f}, s), "axis", i64(axis));
    add("Reshape", {s, ints(out, "shape", keep_batch(g_.sample_shape(out).dims()))}, out);
  }

  void dense(const std::string& out, const std::string& x, const Dense<float>& d) {
    std::string a = x;
    if (rank(x) > 2) {  // Dense reads {N, C, H, W} as {N, C*H*W}; Gemm needs [N, K]
      a = fresh(out, "flat");
      attr(add("Flatten", {x}, a), "axis", std::int64_t{1});
    }
    const std::int64_t p = i64(d.out_features()), k = i64(d.in_features());
    const std::string w = floats(out, "weight", std::span<const float>(d.weight().data(), d.weight().size()), {p, k});
    const std::string b = floats(out, "bias", std::span<const float>(d.bias().data(), d.bias().size()), {p});
    attr(add("Gemm", {a, w, b}, out), "transB", std::int64_t{1});
  }

  void conv(const std::string& out, const std::string& x, const Conv2D<float>& c) {
    const Window2D& w = c.window();
    Names in{x, tensor(out, "weight", c.weight())};
    if (c.has_bias()) in.push_back(tensor(out, "bias", c.bias()));
    auto* n = add("Conv", in, out);
    attr(n, "kernel_shape", std::vector<std::int64_t>{i64(w.kernel_h), i64(w.kernel_w)});
    attr(n, "strides", std::vector<std::int64_t>{i64(w.stride_h), i64(w.stride_w)});
    attr(n, "pads", std::vector<std::int64_t>{i64(w.padding.top), i64(w.padding.left), i64(w.padding.bottom), i64(w.padding.right)});
    attr(n, "dilations", std::vector<std::int64_t>{i64(w.dilation_h), i64(w.dilation_w)});
    attr(n, "group", i64(c.groups()));
  }

  void batchnorm(const std::string& out, const std::string& x, const BatchNorm2D<float>& b) {
    const Names in{x, tensor(out, "scale", b.weight()), tensor(out, "bias", b.bias()), tensor(out, "mean", b.running_mean()),
                   tensor(out, "var", b.running_var())};
    auto* n = add("BatchNormalization", in, out);
    attr(n, "epsilon", b.epsilon());
    attr(n, "momentum", 1.0 - b.momentum());  // ONNX weighs the running value, PyTorch (and edgesplit) the new one
  }

  void pool(const std::string& out, const std::string& x, const char* op, const Window2D& w, bool ceil_mode, const bool* include_pad) {
    auto* n = add(op, {x}, out);
    attr(n, "kernel_shape", std::vector<std::int64_t>{i64(w.kernel_h), i64(w.kernel_w)});
    attr(n, "strides", std::vector<std::int64_t>{i64(w.stride_h), i64(w.stride_w)});
    attr(n, "pads", std::vector<std::int64_t>{i64(w.padding.top), i64(w.padding.left), i64(w.padding.bottom), i64(w.padding.right)});
    if (!include_pad) attr(n, "dilations", std::vector<std::int64_t>{i64(w.dilation_h), i64(w.dilation_w)});  // MaxPool only
    attr(n, "ceil_mode", std::int64_t{ceil_mode ? 1 : 0});
    if (include_pad) attr(n, "count_include_pad", std::int64_t{*include_pad ? 1 : 0});
  }

  // (x - mean) / std, the statistics shaped as a sample (per feature) or as one value (global).
  void standardizer(const std::string& out, const std::string& x, const Standardizer<float>& s) {
    const std::vector<std::int64_t> dims =
        s.mode() == Standardize::global ? std::vector<std::int64_t>{1} : dims_of(g_.sample_shape(x).dims());
    const std::string mean = floats(out, "mean", std::span<const float>(s.mean().data(), s.mean().size()), dims);
    const std::string sd = floats(out, "std", std::span<const float>(s.stddev().data(), s.stddev().size()), dims);
    const std::string c = fresh(out, "centred");
    add("Sub", {x, mean}, c);
    add("Div", {c, sd}, out);
  }

  void pad(const std::string& out, const std::string& x, const Pad<float>& p) {
    std::vector<std::int64_t> pads;
    for (std::size_t b : p.begin()) pads.push_back(i64(b));
    for (std::size_t e : p.end()) pads.push_back(i64(e));
    auto* n = add("Pad", {x, ints(out, "pads", pads), scalar(out, "value", p.value())}, out);
    attr(n, "mode", "constant");
  }

  // MatMulConst keeps B [K, P] transposed, as a Dense's {P, K}: ONNX's MatMul takes B itself.
  void matmul_const(const std::string& out, const std::string& x, const MatMulConst<float>& mm) {
    const Dense<float>& d = mm.dense();
    const std::size_t k = d.in_features(), p = d.out_features();
    std::vector<float> b(k * p);
    for (std::size_t i = 0; i < k; ++i)
      for (std::size_t j = 0; j < p; ++j) b[i * p + j] = d.weight()[j * k + i];
    add("MatMul", {x, floats(out, "B", b, {i64(k), i64(p)})}, out);
  }

  const Graph<float>& g_;
  onnx::ModelProto m_;
  onnx::GraphProto* gp_ = nullptr;
  std::unordered_set<std::string> names_;
};

}  // namespace detail::onnx_export

/// Writes `g` (a whole model, or a head or a tail from Graph::cut) as an ONNX model, opset 17 and
/// IR version 8, producer "edgesplit", so that the halves of a split run in any ONNX runtime and
/// import_onnx (io/onnx.hpp) reads them back. Graph inputs and outputs keep their names, with
/// shapes ["N", per-sample dims...] ("N" a symbolic batch); every node's output keeps its tensor
/// name, and the initializers and intermediate tensors an export adds are named after the node
/// ("<output>/weight", "<output>/flat", ...), never clashing with the graph's names.
///
/// Each layer becomes the ONNX operators of the same arithmetic (the table atop this header): Dense
/// a Gemm (after a Flatten when its input has more axes), Conv2D a Conv, BatchNorm2D a
/// BatchNormalization with its running statistics, SiLU Sigmoid and Mul, GELU and GELUTanh their
/// formulas from Erf or Tanh, Softmax over a tensor of rank > 2 Flatten, Softmax and Reshape, and
/// so on. A layer with no ONNX counterpart (a GraphLayer, a quantized layer) is errc::unsupported
/// naming the node and its kind; a graph without declared outputs is errc::invalid_argument.
inline onnx::ModelProto export_onnx(const Graph<float>& g) { return detail::onnx_export::Exporter(g).run(); }

/// export_onnx, serialized: the bytes of a .onnx file, to send or to hand to import_onnx.
/// errc::too_large for a model over protobuf's 2 GiB limit.
inline std::string to_onnx_bytes(const Graph<float>& g) {
  const onnx::ModelProto m = export_onnx(g);
  if (m.ByteSizeLong() > static_cast<std::size_t>(std::numeric_limits<int>::max()))
    fail(errc::too_large, "the ONNX model is over protobuf's 2 GiB limit (" + std::to_string(m.ByteSizeLong()) + " bytes)");
  std::string bytes;
  if (!m.SerializeToString(&bytes)) fail(errc::internal, "protobuf could not serialize the ONNX model");
  return bytes;
}

/// Writes export_onnx(g) to the file `path` (replacing it), for tools that read .onnx files.
/// errc::io_error when the file cannot be opened or written (a partial file is removed).
inline void save_onnx(const Graph<float>& g, const std::string& path) {
  const std::string bytes = to_onnx_bytes(g);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) fail(errc::io_error, "cannot open '" + path + "' for writing");
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  f.close();
  if (!f) {
    std::remove(path.c_str());
    fail(errc::io_error, "cannot write '" + path + "'");
  }
}

}  // namespace edgesplit
