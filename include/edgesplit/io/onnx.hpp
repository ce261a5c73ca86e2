// edgesplit/io/onnx.hpp - ONNX models in: a Graph<float> from a .onnx file.
//
// Needs Debian's libonnx-dev (the onnx.proto classes, library onnx_proto) and libprotobuf-dev:
// CMake's EDGESPLIT_WITH_ONNX links them to edgesplit::edgesplit. The rest of edgesplit does not
// include this header.
#pragma once

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/nn/activations.hpp"
#include "edgesplit/nn/batchnorm.hpp"
#include "edgesplit/nn/conv2d.hpp"
#include "edgesplit/nn/dense.hpp"
#include "edgesplit/nn/fold.hpp"
#include "edgesplit/nn/graph.hpp"
#include "edgesplit/nn/merge.hpp"
#include "edgesplit/nn/pool.hpp"
#include "edgesplit/nn/tensor_ops.hpp"

namespace edgesplit {

/// How import_onnx reads a model.
struct OnnxImportOptions {
  /// Values for graph inputs, folded into the model as constants, as initializers are: for
  /// inputs that carry no batch (a shape, a weight fed as an input) or that a use fixes.
  std::map<std::string, Tensor<float>> constants;
  /// The largest file read (bytes): a guard against reading a device or a runaway file.
  std::size_t max_file_bytes = std::size_t{1} << 31;
  /// The most elements one tensor of one sample may hold, so that a model declaring a huge
  /// shape is refused at load time instead of at the first allocation.
  std::size_t max_sample_elements = std::size_t{1} << 28;
};

/// An imported ONNX model: the graph, and what the file said about itself.
struct OnnxModel {
  /// The model, its tensors named as in the file. Axis 0 of every ONNX tensor is the batch.
  Graph<float> graph;
  std::int64_t opset = 0;       ///< the default domain's operator set version
  std::int64_t ir_version = 0;  ///< the file's IR version
  std::string producer;         ///< producer name and version, as the file gives them ("pytorch 1.13.1")
  /// ONNX rank of each output, in output order. A rank-1 output [N] runs as [N, 1] in the graph.
  std::vector<std::size_t> output_ranks;
  /// The batch size the file declares for its first input (0 when symbolic, as "batch_size").
  std::size_t declared_batch = 0;
};

namespace detail::onnx_import {

// A tensor of the ONNX file during import: computed by the graph (runtime) or known (constant).
struct Value {
  bool constant = false;
  // runtime
  std::string name;       // the graph tensor that holds it
  std::size_t rank = 0;   // its ONNX rank (>= 1; axis 0 the batch)
  // constant
  std::vector<std::int64_t> dims;
  std::vector<double> data;
  bool integer = false;
};

inline std::size_t checked_count(const std::vector<std::int64_t>& dims, const std::string& what) {
  std::size_t n = 1;
  for (std::int64_t d : dims) {
    if (d < 0) fail(errc::corrupt_frame, what + ": negative dimension " + std::to_string(d));
    if (d != 0 && n > std::numeric_limits<std::uint32_t>::max() / static_cast<std::size_t>(d))
      fail(errc::too_large, what + ": more than 2^32 elements");
    n *= static_cast<std::size_t>(d);
  }
  return n;
}

// A double as the nearest float, infinite beyond float's range (as IEEE rounding gives; a plain
// cast of an out-of-range double is undefined behaviour).
inline float to_f32(double d) {
  if (std::isfinite(d) && std::fabs(d) > static_cast<double>(std::numeric_limits<float>::max()))
    return d > 0 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
  return static_cast<float>(d);
}

inline std::string dims_str(const std::vector<std::int64_t>& d) {
  std::string s = "[";
  for (std::size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

inline const char* dtype_name(int t) {
  switch (t) {
    case onnx::TensorProto::FLOAT: return "float32";
    case onnx::TensorProto::UINT8: return "uint8";
    case onnx::TensorProto::INT8: return "int8";
    case onnx::TensorProto::UINT16: return "uint16";
    case onnx::TensorProto::INT16: return "int16";
    case onnx::TensorProto::INT32: return "int32";
    case onnx::TensorProto::INT64: return "int64";
    case onnx::TensorProto::STRING: return "string";
    case onnx::TensorProto::BOOL: return "bool";
    case onnx::TensorProto::FLOAT16: return "float16";
    case onnx::TensorProto::DOUBLE: return "float64";
    case onnx::TensorProto::UINT32: return "uint32";
    case onnx::TensorProto::UINT64: return "uint64";
    case onnx::TensorProto::BFLOAT16: return "bfloat16";
    default: return "an unknown type";
  }
}

// A TensorProto's values, checked against the bytes present before anything is allocated.
inline Value read_tensor(const onnx::TensorProto& t, const std::string& what) {
  if (t.data_location() == onnx::TensorProto::EXTERNAL || t.external_data_size() > 0)
    fail(errc::unsupported, what + ": external data (a separate weights file) is not supported; save the model in one file");
  if (t.has_segment()) fail(errc::unsupported, what + ": segmented tensors are not supported");
  Value v;
  v.constant = true;
  v.dims.assign(t.dims().begin(), t.dims().end());
  if (v.dims.size() > 8) fail(errc::unsupported, what + ": rank " + std::to_string(v.dims.size()) + " (8 at most)");
  const std::size_t n = checked_count(v.dims, what);
  const int type = t.data_type();
  std::size_t width = 0;
  switch (type) {
    case onnx::TensorProto::FLOAT: width = 4; break;
    case onnx::TensorProto::DOUBLE: width = 8; break;
    case onnx::TensorProto::INT64: width = 8; v.integer = true; break;
    case onnx::TensorProto::INT32: width = 4; v.integer = true; break;
    default: fail(errc::unsupported, what + ": data type " + dtype_name(type) + " is not supported (float32, float64, int32, int64 are)");
  }
  if (t.has_raw_data()) {
    const std::string& raw = t.raw_data();
    if (raw.size() != n * width)
      fail(errc::corrupt_frame, what + ": " + std::to_string(raw.size()) + " bytes of data for " + std::to_string(n) +
                                    " values of " + std::to_string(width) + " bytes");
    v.data.resize(n);
    const auto* b = reinterpret_cast<const unsigned char*>(raw.data());
    for (std::size_t i = 0; i < n; ++i) {
      std::uint64_t u = 0;
      for (std::size_t k = 0; k < width; ++k) u |= static_cast<std::uint64_t>(b[i * width + k]) << (8 * k);  // little-endian
      switch (type) {
        case onnx::TensorProto::FLOAT: v.data[i] = std::bit_cast<float>(static_cast<std::uint32_t>(u)); break;
        case onnx::TensorProto::DOUBLE: v.data[i] = std::bit_cast<double>(u); break;
        case onnx::TensorProto::INT64: v.data[i] = static_cast<double>(static_cast<std::int64_t>(u)); break;
        default: v.data[i] = static_cast<double>(static_cast<std::int32_t>(static_cast<std::uint32_t>(u))); break;
      }
    }
    return v;
  }
  std::size_t have = 0;
  switch (type) {
    case onnx::TensorProto::FLOAT: have = static_cast<std::size_t>(t.float_data_size()); break;
    case onnx::TensorProto::DOUBLE: have = static_cast<std::size_t>(t.double_data_size()); break;
    case onnx::TensorProto::INT64: have = static_cast<std::size_t>(t.int64_data_size()); break;
    default: have = static_cast<std::size_t>(t.int32_data_size()); break;
  }
  if (have != n)
    fail(errc::corrupt_frame, what + ": " + std::to_string(have) + " values for shape " + dims_str(v.dims));
  v.data.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const int k = static_cast<int>(i);
    switch (type) {
      case onnx::TensorProto::FLOAT: v.data[i] = t.float_data(k); break;
      case onnx::TensorProto::DOUBLE: v.data[i] = t.double_data(k); break;
      case onnx::TensorProto::INT64: v.data[i] = static_cast<double>(t.int64_data(k)); break;
      default: v.data[i] = t.int32_data(k); break;
    }
  }
  return v;
}

// A constant as a float tensor of its own shape ([1] for a scalar); with `drop_batch_axis`, axis 0
// becomes 1 (the caller checked it was).
inline Tensor<float> to_tensor(const Value& c, bool drop_batch_axis) {
  std::array<std::size_t, Shape::max_rank> d{};
  const std::size_t r = std::max<std::size_t>(c.dims.size(), 1);
  d[0] = 1;
  for (std::size_t i = 0; i < c.dims.size(); ++i) d[i] = static_cast<std::size_t>(c.dims[i]);
  if (drop_batch_axis) d[0] = 1;
  Tensor<float> t(Shape(std::span<const std::size_t>(d.data(), r)));
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = to_f32(c.data[i]);
  return t;
}

// Reads one node into the graph. Handlers name what they lack; import_onnx adds the node's name.
class Importer {
 public:
  Importer(const onnx::ModelProto& m, const OnnxImportOptions& o) : model_(m), options_(o) {}

  OnnxModel run() {
    OnnxModel out;
    out.ir_version = model_.ir_version();
    out.producer = model_.producer_name() + (model_.producer_version().empty() ? "" : " " + model_.producer_version());
    for (const auto& os : model_.opset_import()) {
      if (os.domain().empty() || os.domain() == "ai.onnx") opset_ = os.version();
      else fail(errc::unsupported, "operator set domain '" + os.domain() + "' is not supported");
    }
    if (opset_ == 0) fail(errc::corrupt_frame, "the model declares no opset of the default domain");
    if (opset_ > 17)
      fail(errc::unsupported, "opset " + std::to_string(opset_) + " is not supported (up to 17 is; re-export with opset_version=17)");
    out.opset = opset_;
    const onnx::GraphProto& g = model_.graph();
    if (g.sparse_initializer_size() > 0) fail(errc::unsupported, "sparse initializers are not supported");
    for (const auto& t : g.initializer()) {
      if (t.name().empty()) fail(errc::corrupt_frame, "an initializer without a name");
      values_[t.name()] = read_tensor(t, "initializer '" + t.name() + "'");
    }
    for (const auto& [name, t] : options_.constants) {
      Value v;
      v.constant = true;
      for (std::size_t d : t.shape().dims()) v.dims.push_back(static_cast<std::int64_t>(d));
      v.data.assign(t.data(), t.data() + t.size());
      values_[name] = std::move(v);
    }
    for (const auto& in : g.input()) declare_input(in);
    if (graph_.input_names().empty()) fail(errc::unsupported, "the model has no input that is computed at run time");
    out.declared_batch = batch_;
    for (const auto& n : g.node())
      for (const auto& i : n.input()) ++uses_[i];
    for (const auto& o : g.output()) ++uses_[o.name()];
    for (int k = 0; k < g.node_size(); ++k) {
      const onnx::NodeProto& n = g.node(k);
      if (skip_.count(k)) continue;
      const std::string who = "node '" + (n.name().empty() ? (n.output_size() ? n.output(0) : std::string("?")) : n.name()) +
                              "' (" + n.op_type() + ")";
      try {
        node(n, k);
      } catch (const error& e) {
        const std::string w = e.what();
        const std::size_t p = to_string(e.code()).size() + 2;
        std::string msg = w.size() > p ? w.substr(p) : w;
        if (msg.rfind("node '", 0) == 0) msg = msg.substr(msg.find(": ") + 2);  // the graph named the node already
        throw error(e.code(), who + ": " + msg);
      }
    }
    if (g.output_size() == 0) fail(errc::corrupt_frame, "the model declares no output");
    for (const auto& o : g.output()) {
      const Value& v = get(o.name(), "graph output");
      if (v.constant) fail(errc::unsupported, "output '" + o.name() + "' is a constant: nothing computes it");
      std::string name = v.name;
      if (name != o.name()) name = add_layer(o.name(), v.name, std::make_unique<Reshape<float>>(graph_.sample_shape(v.name)), v.rank);
      graph_.output(name);
      out.output_ranks.push_back(v.rank);
    }
    out.graph = std::move(graph_);
    return out;
  }

 private:
  using Node = onnx::NodeProto;

  // ---- values --------------------------------------------------------------------------------

  const Value& get(const std::string& name, const char* what) const {
    const auto it = values_.find(name);
    if (it == values_.end())
      fail(errc::corrupt_frame, std::string(what) + " '" + name +
                                    "' is not defined before it is used (a dangling input, a cycle, or nodes out of order)");
    return it->second;
  }
  const Value& runtime(const Node& n, int i) const {
    if (i >= n.input_size() || n.input(i).empty()) fail(errc::corrupt_frame, "input " + std::to_string(i) + " is missing");
    const Value& v = get(n.input(i), "input");
    if (v.constant)
      fail(errc::unsupported, "input '" + n.input(i) + "' is a constant where edgesplit computes the operator at run time " +
                                  "(only computed tensors are supported here)");
    return v;
  }
  const Value* constant_or_null(const Node& n, int i) const {
    if (i >= n.input_size() || n.input(i).empty()) return nullptr;
    const Value& v = get(n.input(i), "input");
    if (!v.constant)
      fail(errc::unsupported, "input '" + n.input(i) + "' needs a constant (an initializer), but it is computed at run time");
    return &v;
  }
  const Value& constant(const Node& n, int i) const {
    const Value* v = constant_or_null(n, i);
    if (!v) fail(errc::corrupt_frame, "input " + std::to_string(i) + " is missing");
    return *v;
  }
  // Input i, computed or constant; errc::corrupt_frame when the node lacks it.
  const Value& operand(const Node& n, int i) const {
    if (i >= n.input_size() || n.input(i).empty()) fail(errc::corrupt_frame, "input " + std::to_string(i) + " is missing");
    return get(n.input(i), "input");
  }
  bool is_constant(const Node& n, int i) const { return i < n.input_size() && !n.input(i).empty() && get(n.input(i), "input").constant; }
  bool present(const Node& n, int i) const { return i < n.input_size() && !n.input(i).empty(); }

  // The ONNX per-sample dims of a runtime value (empty for rank 1).
  std::vector<std::int64_t> sample_dims(const Value& v) const {
    std::vector<std::int64_t> d;
    if (v.rank == 1) return d;
    for (std::size_t x : graph_.sample_shape(v.name).dims()) d.push_back(static_cast<std::int64_t>(x));
    return d;
  }
  std::vector<std::int64_t> full_dims(const Value& v) const {
    std::vector<std::int64_t> d = sample_dims(v);
    d.insert(d.begin(), static_cast<std::int64_t>(batch_ ? batch_ : 1));
    return d;
  }
  static Shape graph_sample(const std::vector<std::int64_t>& sample) {
    if (sample.empty()) return Shape{1};
    std::vector<std::size_t> d(sample.begin(), sample.end());
    return Shape(std::span<const std::size_t>(d.data(), d.size()));
  }

  void set_output(const Node& n, int i, Value v) {
    if (i >= n.output_size() || n.output(i).empty()) return;
    values_[n.output(i)] = std::move(v);
  }
  void set_constant(const Node& n, std::vector<std::int64_t> dims, std::vector<double> data, bool integer) {
    Value v;
    v.constant = true;
    v.dims = std::move(dims);
    v.data = std::move(data);
    v.integer = integer;
    set_output(n, 0, std::move(v));
  }
  void alias(const Node& n, const Value& v) { set_output(n, 0, v); }

  // Adds a layer node computing ONNX tensor `out` of ONNX rank `rank`; returns the graph name.
  std::string add_layer(const std::string& out, const std::string& in, std::unique_ptr<Layer<float>> layer, std::size_t rank) {
    const std::string& name = graph_.add(out, {in}, std::move(layer));
    finish(name, rank);
    return name;
  }
  std::string add_merge(const std::string& out, const std::vector<std::string>& in, std::unique_ptr<Merge<float>> m, std::size_t rank) {
    const std::string& name = graph_.add(out, in, std::move(m));
    finish(name, rank);
    return name;
  }
  void finish(const std::string& name, std::size_t rank) {
    if (graph_.sample_shape(name).count() > options_.max_sample_elements)
      fail(errc::too_large, "tensor '" + name + "' of shape " + graph_.sample_shape(name).str() + " per sample exceeds " +
                                std::to_string(options_.max_sample_elements) + " elements");
    Value v;
    v.name = name;
    v.rank = rank;
    values_[name] = std::move(v);
  }
  // A layer on one runtime input giving output 0 at the input's rank (or `rank`).
  void unary(const Node& n, std::unique_ptr<Layer<float>> layer, std::size_t rank = 0) {
    const Value& x = runtime(n, 0);
    const std::size_t r = rank ? rank : x.rank;
    add_layer(n.output(0), x.name, std::move(layer), r);
  }

  // ---- attributes ------------------------------------------------------------------------------

  void known(const Node& n, std::initializer_list<const char*> names) const {
    for (const auto& a : n.attribute()) {
      bool ok = false;
      for (const char* k : names) ok = ok || a.name() == k;
      if (!ok) fail(errc::unsupported, "attribute '" + a.name() + "' is not supported");
    }
  }
  static const onnx::AttributeProto* attr(const Node& n, const char* name) {
    for (const auto& a : n.attribute())
      if (a.name() == name) return &a;
    return nullptr;
  }
  static std::int64_t int_attr(const Node& n, const char* name, std::int64_t def) {
    const auto* a = attr(n, name);
    return a ? a->i() : def;
  }
  static double float_attr(const Node& n, const char* name, double def) {
    const auto* a = attr(n, name);
    return a ? a->f() : def;
  }
  static std::string string_attr(const Node& n, const char* name, std::string def) {
    const auto* a = attr(n, name);
    return a ? a->s() : def;
  }
  static std::vector<std::int64_t> ints_attr(const Node& n, const char* name) {
    const auto* a = attr(n, name);
    if (!a) return {};
    return {a->ints().begin(), a->ints().end()};
  }
  // The one value of a scalar constant (rank 0, or one element).
  static double scalar(const Value& v, const char* what) {
    if (v.data.size() != 1)
      fail(errc::invalid_argument, std::string(what) + " needs one value, got " + std::to_string(v.data.size()) + " (shape " + dims_str(v.dims) + ")");
    return v.data[0];
  }
  static std::vector<std::int64_t> as_ints(const Value& v) {
    std::vector<std::int64_t> r;
    for (double d : v.data) r.push_back(to_int(d));
    return r;
  }
  // A whole number of a constant as an integer; errc::invalid_argument beyond +-2^62 or NaN.
  static std::int64_t to_int(double d) {
    if (!(std::fabs(d) <= 0x1p62)) fail(errc::invalid_argument, "value " + std::to_string(d) + " is not an integer in range");
    return static_cast<std::int64_t>(d);
  }
  // An axis in [-rank, rank) made non-negative.
  static std::size_t axis(std::int64_t a, std::size_t rank, const char* what) {
    const auto r = static_cast<std::int64_t>(rank);
    if (a < -r || a >= r) fail(errc::invalid_argument, std::string(what) + " " + std::to_string(a) + " is out of range for rank " + std::to_string(rank));
    return static_cast<std::size_t>(a < 0 ? a + r : a);
  }

  // ---- inputs ----------------------------------------------------------------------------------

  void declare_input(const onnx::ValueInfoProto& in) {
    if (values_.count(in.name())) return;  // an initializer (a default value) or a constant given
    if (!in.type().has_tensor_type()) fail(errc::unsupported, "input '" + in.name() + "' is not a tensor");
    const auto& tt = in.type().tensor_type();
    if (tt.elem_type() != onnx::TensorProto::FLOAT)
      fail(errc::unsupported, "input '" + in.name() + "' is " + dtype_name(tt.elem_type()) + "; inputs computed at run time are float32");
    if (!tt.has_shape()) fail(errc::unsupported, "input '" + in.name() + "' has no shape");
    const auto& sh = tt.shape();
    if (sh.dim_size() == 0) fail(errc::unsupported, "input '" + in.name() + "' is a scalar: inputs need a batch axis");
    if (sh.dim_size() > 8) fail(errc::unsupported, "input '" + in.name() + "' has rank " + std::to_string(sh.dim_size()) + " (8 at most)");
    std::vector<std::int64_t> sample;
    for (int i = 1; i < sh.dim_size(); ++i) {
      if (!sh.dim(i).has_dim_value() || sh.dim(i).dim_value() <= 0)
        fail(errc::unsupported, "input '" + in.name() + "' axis " + std::to_string(i) +
                                    " has no fixed size; only the batch axis (0) may be symbolic");
      sample.push_back(sh.dim(i).dim_value());
    }
    if (graph_.input_names().empty() && sh.dim(0).has_dim_value() && sh.dim(0).dim_value() > 0)
      batch_ = static_cast<std::size_t>(sh.dim(0).dim_value());
    const Shape s = graph_sample(sample);
    if (s.count() > options_.max_sample_elements) fail(errc::too_large, "input '" + in.name() + "' is too large per sample: " + s.str());
    graph_.input(in.name(), s);
    Value v;
    v.name = in.name();
    v.rank = static_cast<std::size_t>(sh.dim_size());
    values_[in.name()] = std::move(v);
  }

  // ---- nodes -----------------------------------------------------------------------------------

  void node(const Node& n, int index) {
    if (!n.domain().empty() && n.domain() != "ai.onnx") fail(errc::unsupported, "domain '" + n.domain() + "' is not supported");
    if (n.output_size() == 0 || n.output(0).empty()) fail(errc::corrupt_frame, "a node without an output");
    const std::string& op = n.op_type();
    // Every input known: evaluate at load time.
    bool all_const = n.input_size() > 0;
    for (int i = 0; i < n.input_size(); ++i)
      if (!n.input(i).empty() && !get(n.input(i), "input").constant) all_const = false;
    if (op == "Constant") return constant_node(n);
    if (op == "Shape") return shape_node(n);
    if (all_const && fold(n)) return;
    if (op == "Identity") return known(n, {}), alias(n, operand(n, 0));
    if (op == "Dropout") return dropout(n);
    if (op == "Relu") return known(n, {}), unary(n, std::make_unique<ReLU<float>>());
    if (op == "LeakyRelu") return known(n, {"alpha"}), unary(n, std::make_unique<LeakyReLU<float>>(float_attr(n, "alpha", 0.01)));
    if (op == "Sigmoid") return known(n, {}), unary(n, std::make_unique<Sigmoid<float>>());
    if (op == "Tanh") return known(n, {}), unary(n, std::make_unique<Tanh<float>>());
    if (op == "Erf") return known(n, {}), unary(n, std::make_unique<Erf<float>>());
    if (op == "HardSigmoid")
      return known(n, {"alpha", "beta"}),
             unary(n, std::make_unique<HardSigmoid<float>>(float_attr(n, "alpha", 0.2), float_attr(n, "beta", 0.5)));
    if (op == "HardSwish") return known(n, {}), unary(n, std::make_unique<HardSwish<float>>());
    if (op == "Clip") return clip(n);
    if (op == "Softmax" || op == "LogSoftmax") return softmax(n, op == "LogSoftmax");
    if (op == "Add") return binary(n, BinaryOp::add);
    if (op == "Sub") return binary(n, BinaryOp::sub);
    if (op == "Mul") return binary(n, BinaryOp::mul);
    if (op == "Div") return binary(n, BinaryOp::div);
    if (op == "PRelu") return binary(n, BinaryOp::prelu);
    if (op == "Max" || op == "Min") {  // variadic in ONNX: one input is a copy, two a binary op
      if (n.input_size() <= 1) return known(n, {}), alias(n, operand(n, 0));
      if (n.input_size() == 2) return binary(n, op == "Max" ? BinaryOp::max : BinaryOp::min);
      known(n, {});
      std::string acc = n.input(0);  // more inputs: a chain of binary nodes
      for (int i = 1; i < n.input_size(); ++i) {
        Node step;
        step.add_input(acc);
        step.add_input(n.input(i));
        step.add_output(i + 1 == n.input_size() ? n.output(0) : n.output(0) + "/" + std::to_string(i));
        binary_numpy(step, op == "Max" ? BinaryOp::max : BinaryOp::min);
        acc = step.output(0);
      }
      return;
    }
    if (op == "Conv") return conv(n, index);
    if (op == "BatchNormalization") return batchnorm(n);
    if (op == "Gemm") return gemm(n);
    if (op == "MatMul") return matmul(n);
    if (op == "MaxPool" || op == "AveragePool") return pool(n, op == "MaxPool");
    if (op == "GlobalAveragePool") return known(n, {}), unary(n, std::make_unique<GlobalAvgPool<float>>());
    if (op == "GlobalMaxPool") return known(n, {}), unary(n, std::make_unique<GlobalMaxPool<float>>());
    if (op == "Flatten") return flatten(n);
    if (op == "Reshape") return reshape(n);
    if (op == "Squeeze" || op == "Unsqueeze") return squeeze(n, op == "Unsqueeze");
    if (op == "Transpose") return transpose(n);
    if (op == "Concat") return concat(n);
    if (op == "Pad") return pad(n);
    fail(errc::unsupported, "operator " + op + " is not supported (docs/onnx.md lists those that are)");
  }

  void constant_node(const Node& n) {
    known(n, {"value", "value_float", "value_floats", "value_int", "value_ints"});
    if (const auto* a = attr(n, "value")) return set_output(n, 0, read_tensor(a->t(), "Constant value"));
    if (const auto* a = attr(n, "value_float")) return set_constant(n, {}, {a->f()}, false);
    if (const auto* a = attr(n, "value_int")) return set_constant(n, {}, {static_cast<double>(a->i())}, true);
    if (const auto* a = attr(n, "value_floats"))
      return set_constant(n, {a->floats_size()}, {a->floats().begin(), a->floats().end()}, false);
    if (const auto* a = attr(n, "value_ints")) {
      std::vector<double> d;
      for (auto i : a->ints()) d.push_back(static_cast<double>(i));
      return set_constant(n, {a->ints_size()}, std::move(d), true);
    }
    fail(errc::unsupported, "a Constant without a value of a supported kind (sparse and string values are not)");
  }

  // Shape of a computed tensor is known at load time (the batch is the declared one).
  void shape_node(const Node& n) {
    known(n, {"start", "end"});
    const Value& x = operand(n, 0);
    std::vector<std::int64_t> d = x.constant ? x.dims : full_dims(x);
    if (!x.constant && batch_ == 0)
      fail(errc::unsupported, "Shape of a tensor whose batch is symbolic: export with a fixed batch, or fold the shape");
    const auto r = static_cast<std::int64_t>(d.size());
    auto clampi = [&](std::int64_t v) { return std::clamp(v < 0 ? v + r : v, std::int64_t{0}, r); };
    const std::int64_t s = clampi(int_attr(n, "start", 0)), e = clampi(int_attr(n, "end", r));
    std::vector<double> out;
    for (std::int64_t i = s; i < e; ++i) out.push_back(static_cast<double>(d[static_cast<std::size_t>(i)]));
    set_constant(n, {static_cast<std::int64_t>(out.size())}, std::move(out), true);
  }

  // Operators on constants, evaluated at load time; false when the operator is not one of them.
  bool fold(const Node& n) {
    const std::string& op = n.op_type();
    if (op == "Identity" || op == "Dropout") return alias(n, operand(n, 0)), true;
    if (op == "Cast") {
      known(n, {"to"});
      Value v = constant(n, 0);
      const auto to = int_attr(n, "to", 0);
      if (to == onnx::TensorProto::INT64 || to == onnx::TensorProto::INT32) {
        for (double& d : v.data) d = std::trunc(d);
        v.integer = true;
      } else if (to == onnx::TensorProto::FLOAT || to == onnx::TensorProto::DOUBLE) {
        if (to == onnx::TensorProto::FLOAT)
          for (double& d : v.data) d = to_f32(d);
        v.integer = false;
      } else {
        fail(errc::unsupported, std::string("Cast to ") + dtype_name(static_cast<int>(to)) + " is not supported");
      }
      return set_output(n, 0, std::move(v)), true;
    }
    if (op == "Gather") {
      known(n, {"axis"});
      const Value& data = constant(n, 0);
      const Value& idx = constant(n, 1);
      if (data.dims.size() != 1 || idx.dims.size() > 1 || int_attr(n, "axis", 0) != 0)
        fail(errc::unsupported, "Gather is folded only on a 1-D constant along axis 0");
      std::vector<double> out;
      const auto len = static_cast<std::int64_t>(data.data.size());
      for (double d : idx.data) {
        const std::int64_t i = to_int(d);
        if (i < -len || i >= len) fail(errc::invalid_argument, "Gather index " + std::to_string(i) + " out of range");
        out.push_back(data.data[static_cast<std::size_t>(i < 0 ? i + len : i)]);
      }
      set_constant(n, idx.dims, std::move(out), data.integer);
      return true;
    }
    if (op == "Unsqueeze" || op == "Squeeze") {
      known(n, {"axes"});
      Value v = constant(n, 0);
      std::vector<std::int64_t> axes = opset_ >= 13 ? (present(n, 1) ? as_ints(constant(n, 1)) : std::vector<std::int64_t>{})
                                                    : ints_attr(n, "axes");
      if (op == "Unsqueeze") {
        const std::size_t r = v.dims.size() + axes.size();
        std::vector<char> mark(r, 0);
        for (auto a : axes) {
          const std::size_t k = axis(a, r, "Unsqueeze axis");
          if (mark[k]) fail(errc::invalid_argument, "Unsqueeze axis " + std::to_string(a) + " repeated");
          mark[k] = 1;
        }
        std::vector<std::int64_t> d;
        std::size_t k = 0;
        for (std::size_t i = 0; i < r; ++i) d.push_back(mark[i] ? 1 : v.dims[k++]);
        v.dims = d;
      } else {
        std::vector<char> mark(v.dims.size(), axes.empty());
        for (auto a : axes) mark[axis(a, v.dims.size(), "Squeeze axis")] = 1;
        std::vector<std::int64_t> d;
        for (std::size_t i = 0; i < v.dims.size(); ++i)
          if (!(mark[i] && v.dims[i] == 1)) d.push_back(v.dims[i]);
        v.dims = d;
      }
      return set_output(n, 0, std::move(v)), true;
    }
    if (op == "Concat") {
      known(n, {"axis"});
      Value v = constant(n, 0);
      if (v.dims.size() != 1) fail(errc::unsupported, "Concat is folded only on 1-D constants");
      for (int i = 1; i < n.input_size(); ++i) {
        const Value& w = constant(n, i);
        if (w.dims.size() != 1) fail(errc::unsupported, "Concat is folded only on 1-D constants");
        v.data.insert(v.data.end(), w.data.begin(), w.data.end());
      }
      v.dims[0] = static_cast<std::int64_t>(v.data.size());
      return set_output(n, 0, std::move(v)), true;
    }
    if (op == "Transpose") {
      known(n, {"perm"});
      const Value& v = constant(n, 0);
      const std::size_t r = v.dims.size();
      auto perm = ints_attr(n, "perm");
      if (perm.empty())
        for (std::size_t i = r; i-- > 0;) perm.push_back(static_cast<std::int64_t>(i));
      if (perm.size() != r) fail(errc::invalid_argument, "perm " + dims_str(perm) + " for rank " + std::to_string(r));
      Value out = v;
      std::vector<std::size_t> p, stride(r, 1), idx(r, 0);
      for (auto a : perm) p.push_back(axis(a, r, "perm entry"));
      for (std::size_t k = r; k-- > 1;) stride[k - 1] = stride[k] * static_cast<std::size_t>(v.dims[k]);
      for (std::size_t i = 0; i < r; ++i) out.dims[i] = v.dims[p[i]];
      for (std::size_t o = 0; o < out.data.size(); ++o) {  // odometer over the output
        std::size_t src = 0;
        for (std::size_t i = 0; i < r; ++i) src += idx[i] * stride[p[i]];
        out.data[o] = v.data[src];
        for (std::size_t k = r; k-- > 0;) {
          if (++idx[k] < static_cast<std::size_t>(out.dims[k])) break;
          idx[k] = 0;
        }
      }
      return set_output(n, 0, std::move(out)), true;
    }
    if (op == "Reshape" || op == "Flatten") return false;  // handled as layers only for computed tensors
    if (op == "Add" || op == "Sub" || op == "Mul" || op == "Div") {
      known(n, {});
      const Value& a = constant(n, 0);
      const Value& b = constant(n, 1);
      if (!(a.data.size() == b.data.size() || a.data.size() == 1 || b.data.size() == 1))
        fail(errc::unsupported, "arithmetic on constants is folded only for equal shapes or a scalar");
      const bool integer = a.integer && b.integer;
      Value v = a.data.size() >= b.data.size() ? a : b;
      for (std::size_t i = 0; i < v.data.size(); ++i) {
        const double x = a.data[a.data.size() == 1 ? 0 : i], y = b.data[b.data.size() == 1 ? 0 : i];
        double r = op == "Add" ? x + y : op == "Sub" ? x - y : op == "Mul" ? x * y : x / y;
        if (integer && op == "Div") {
          if (y == 0) fail(errc::invalid_argument, "integer division by zero");
          r = std::trunc(r);
        }
        v.data[i] = integer ? r : static_cast<double>(to_f32(r));
      }
      v.integer = integer;
      return set_output(n, 0, std::move(v)), true;
    }
    return false;
  }

  void dropout(const Node& n) {
    known(n, {"ratio", "seed", "is_test"});
    if (n.output_size() > 1 && !n.output(1).empty() && uses_[n.output(1)] > 0)
      fail(errc::unsupported, "the mask output of Dropout is used; only inference (no mask) is supported");
    if (present(n, 2)) {
      const Value& t = constant(n, 2);
      if (!t.data.empty() && t.data[0] != 0) fail(errc::unsupported, "Dropout in training mode");
    }
    alias(n, operand(n, 0));
  }

  void clip(const Node& n) {
    double lo = -std::numeric_limits<float>::max(), hi = std::numeric_limits<float>::max();
    if (opset_ < 11) {
      known(n, {"min", "max"});
      lo = float_attr(n, "min", lo);
      hi = float_attr(n, "max", hi);
    } else {
      known(n, {});
      if (const Value* v = constant_or_null(n, 1)) lo = to_f32(scalar(*v, "min"));
      if (const Value* v = constant_or_null(n, 2)) hi = to_f32(scalar(*v, "max"));
    }
    unary(n, std::make_unique<Clip<float>>(lo, hi));
  }

  void softmax(const Node& n, bool log) {
    known(n, {"axis"});
    const Value& x = runtime(n, 0);
    const bool legacy = opset_ < 13;
    const std::size_t a = axis(int_attr(n, "axis", legacy ? 1 : -1), x.rank, "axis");
    if (a == 0) fail(errc::unsupported, "softmax along the batch axis (0)");
    if (x.rank == 1) fail(errc::unsupported, "softmax of a rank-1 tensor runs along its batch axis");
    unary(n, std::make_unique<AxisSoftmax<float>>(a, log, legacy));
  }

  void binary(const Node& n, BinaryOp op) {
    if (opset_ < 7 && op != BinaryOp::prelu) return legacy_binary(n, op);
    known(n, {});
    binary_numpy(n, op);
  }
  // NumPy broadcasting, as from opset 7.
  void binary_numpy(const Node& n, BinaryOp op) {
    if (n.input_size() != 2) fail(errc::corrupt_frame, "needs two inputs");
    const bool ca = is_constant(n, 0), cb = is_constant(n, 1);
    if (!ca && !cb) {
      const Value& a = runtime(n, 0);
      const Value& b = runtime(n, 1);
      if (a.rank != b.rank)
        fail(errc::unsupported, "computed operands of ranks " + std::to_string(a.rank) + " and " + std::to_string(b.rank) +
                                    " (their axis 0 is the batch, so they need one rank)");
      std::unique_ptr<Merge<float>> m;
      if (op == BinaryOp::add && graph_.sample_shape(a.name) == graph_.sample_shape(b.name)) m = std::make_unique<Add<float>>();
      else m = std::make_unique<Elementwise<float>>(op);
      add_merge(n.output(0), {a.name, b.name}, std::move(m), a.rank);
      return;
    }
    const bool first = ca;
    const Value& x = runtime(n, first ? 1 : 0);
    Value c = constant(n, first ? 0 : 1);
    if (op == BinaryOp::prelu && opset_ < 7 && c.dims.size() == 1 && c.data.size() > 1 && x.rank >= 3)
      c.dims.resize(x.rank - 1, 1);  // before opset 7, a slope [C] is per channel (axis 1)
    if (c.dims.size() > x.rank)
      fail(errc::unsupported, "the constant " + dims_str(c.dims) + " has more axes than the computed tensor, so it would widen the batch");
    if (c.dims.size() == x.rank && !c.dims.empty() && c.dims[0] != 1)
      fail(errc::unsupported, "the constant " + dims_str(c.dims) + " spans the batch axis (it needs 1 there)");
    if (x.rank == 1 && c.data.size() != 1)
      fail(errc::unsupported, "a rank-1 computed tensor is a batch of scalars; the constant " + dims_str(c.dims) + " is not a scalar");
    Tensor<float> t = to_tensor(c, c.dims.size() == x.rank);
    if (x.rank == 1) t = Tensor<float>(Shape{1}, t[0]);
    add_layer(n.output(0), x.name, std::make_unique<ConstantOp<float>>(op, std::move(t), first), x.rank);
  }

  // Before opset 7, B broadcasts only with broadcast=1, aligned at `axis` (default: to the right).
  void legacy_binary(const Node& n, BinaryOp op) {
    known(n, {"broadcast", "axis"});
    if (int_attr(n, "broadcast", 0) == 0 || !is_constant(n, 1) || is_constant(n, 0)) {
      if (attr(n, "axis")) fail(errc::unsupported, "axis without broadcast");
      return binary_numpy(n, op);
    }
    const Value& x = runtime(n, 0);
    Value c = constant(n, 1);
    const std::size_t a = attr(n, "axis") ? axis(int_attr(n, "axis", 0), x.rank, "axis") : x.rank - c.dims.size();
    if (a + c.dims.size() > x.rank) fail(errc::shape_mismatch, "B " + dims_str(c.dims) + " at axis " + std::to_string(a) + " overruns A");
    c.dims.resize(x.rank - a, 1);  // trailing 1s make the alignment a right-aligned one
    if (a == 0 && c.dims[0] != 1) fail(errc::unsupported, "B spans the batch axis");
    if (a == 0) c.dims.erase(c.dims.begin());
    if (c.dims.empty()) c.dims.push_back(1);
    unary(n, std::make_unique<ConstantOp<float>>(op, to_tensor(c, false)));
  }

  // ---- convolution and friends -----------------------------------------------------------------

  // Explicit begin/end padding of a 2-D window from pads or auto_pad, for input plane h x w. A 1-D
  // window (`one_d`) runs as a 2-D one of height 1: its pads are the columns'.
  Padding2D window_padding(const Node& n, std::size_t h, std::size_t w, std::size_t kh, std::size_t kw, std::size_t sh,
                           std::size_t sw, std::size_t dh, std::size_t dw, bool one_d) const {
    const std::string ap = string_attr(n, "auto_pad", "NOTSET");
    Padding2D p;
    if (ap == "NOTSET") {
      auto pads = ints_attr(n, "pads");
      if (!pads.empty()) {
        const std::size_t want = one_d ? 2 : 4;
        if (pads.size() != want)
          fail(errc::invalid_argument, "pads needs " + std::to_string(want) + " values, got " + std::to_string(pads.size()));
        for (auto v : pads)
          if (v < 0 || v > 1 << 20) fail(errc::invalid_argument, "pads value " + std::to_string(v) + " out of range");
        if (one_d) pads = {0, pads[0], 0, pads[1]};
        p.top = static_cast<std::size_t>(pads[0]), p.left = static_cast<std::size_t>(pads[1]);
        p.bottom = static_cast<std::size_t>(pads[2]), p.right = static_cast<std::size_t>(pads[3]);
      }
      return p;
    }
    if (ap == "VALID") return p;
    if (ap != "SAME_UPPER" && ap != "SAME_LOWER") fail(errc::invalid_argument, "auto_pad '" + ap + "' is not an ONNX value");
    auto same = [&](std::size_t in, std::size_t k, std::size_t s, std::size_t d, std::size_t& b, std::size_t& e) {
      const std::size_t out = (in + s - 1) / s, span = (k - 1) * d + 1;
      const std::size_t need = (out - 1) * s + span;
      const std::size_t total = need > in ? need - in : 0;
      b = ap == "SAME_UPPER" ? total / 2 : total - total / 2;
      e = total - b;
    };
    same(h, kh, sh, dh, p.top, p.bottom);
    same(w, kw, sw, dw, p.left, p.right);
    return p;
  }
  // A window attribute as (rows, columns); a 1-D window's is (1, v).
  static std::pair<std::size_t, std::size_t> pair_attr(const Node& n, const char* name, std::size_t def, bool one_d) {
    const auto v = ints_attr(n, name);
    if (v.empty()) return {one_d ? 1 : def, def};
    if (v.size() != (one_d ? 1u : 2u))
      fail(errc::unsupported, std::string(name) + " of " + std::to_string(v.size()) + " axes: only 1-D and 2-D windows are supported");
    for (auto x : v)
      if (x < 1 || x > 1 << 16) fail(errc::invalid_argument, std::string(name) + " value " + std::to_string(x) + " out of range");
    return one_d ? std::pair<std::size_t, std::size_t>{1, static_cast<std::size_t>(v[0])}
                 : std::pair<std::size_t, std::size_t>{static_cast<std::size_t>(v[0]), static_cast<std::size_t>(v[1])};
  }
  // Adds a 2-D window layer on x giving ONNX tensor `out`; a 1-D input [N, C, L] runs as
  // [N, C, 1, L] between two reshapes.
  void windowed(const std::string& out, const Value& x, std::unique_ptr<Layer<float>> layer) {
    if (x.rank == 4) return add_layer(out, x.name, std::move(layer), 4), void();
    const Shape xs = graph_.sample_shape(x.name);
    const std::string lifted = add_layer(out + "/2d", x.name, std::make_unique<Reshape<float>>(Shape{xs[0], 1, xs[1]}), 4);
    const std::string y = add_layer(out + "/1d", lifted, std::move(layer), 4);
    const Shape ys = graph_.sample_shape(y);
    add_layer(out, y, std::make_unique<Reshape<float>>(Shape{ys[0], ys[2]}), 3);
  }

  // The index of the BatchNormalization that only reads node k's output, when it can fold into it.
  int foldable_batchnorm(const Node& conv, int k) const {
    const auto& g = model_.graph();
    const std::string& out = conv.output(0);
    const auto it = uses_.find(out);
    if (it == uses_.end() || it->second != 1) return -1;
    for (int j = k + 1; j < g.node_size(); ++j) {
      const Node& b = g.node(j);
      if (b.input_size() == 0 || b.input(0) != out) continue;
      if (b.op_type() != "BatchNormalization" || b.input_size() != 5 || b.output_size() == 0 || b.output(0).empty()) return -1;
      for (int i = 1; i < 5; ++i)
        if (!values_.count(b.input(i)) || !values_.at(b.input(i)).constant) return -1;
      for (int i = 1; i < b.output_size(); ++i)
        if (!b.output(i).empty()) return -1;
      for (const auto& a : b.attribute())
        if (!(a.name() == "epsilon" || a.name() == "momentum" || (a.name() == "training_mode" && a.i() == 0) ||
              (a.name() == "is_test" && a.i() == 1) || a.name() == "consumed_inputs" ||
              (a.name() == "spatial" && a.i() == 1)))
          return -1;
      return j;
    }
    return -1;
  }

  void conv(const Node& n, int index) {
    known(n, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"});
    const Value& x = runtime(n, 0);
    const Value& w = constant(n, 1);
    const bool one_d = x.rank == 3 && w.dims.size() == 3;
    if (!one_d && (x.rank != 4 || w.dims.size() != 4))
      fail(errc::unsupported, "only 1-D and 2-D convolutions ([N, C, L] or [N, C, H, W] inputs) are supported");
    auto xs = sample_dims(x);
    if (one_d) xs.insert(xs.begin() + 1, 1);
    std::vector<std::int64_t> wd = w.dims;
    if (one_d) wd.insert(wd.begin() + 2, 1);
    const auto group = int_attr(n, "group", 1);
    const std::size_t c = static_cast<std::size_t>(xs[0]), m = static_cast<std::size_t>(w.dims[0]);
    if (group < 1 || c % static_cast<std::size_t>(group) != 0 || m % static_cast<std::size_t>(group) != 0 ||
        static_cast<std::size_t>(w.dims[1]) * static_cast<std::size_t>(group) != c || m == 0)
      fail(errc::shape_mismatch, "weights " + dims_str(w.dims) + " and group " + std::to_string(group) +
                                     " do not fit an input of " + std::to_string(c) + " channels");
    const std::size_t kh = static_cast<std::size_t>(wd[2]), kw = static_cast<std::size_t>(wd[3]);
    auto ks = ints_attr(n, "kernel_shape");
    if (one_d && ks.size() == 1) ks.insert(ks.begin(), 1);
    if (!ks.empty() && (ks.size() != 2 || static_cast<std::size_t>(ks[0]) != kh || static_cast<std::size_t>(ks[1]) != kw))
      fail(errc::shape_mismatch, "kernel_shape " + dims_str(ints_attr(n, "kernel_shape")) + " differs from the weights " + dims_str(w.dims));
    Conv2DOptions o;
    std::tie(o.stride_h, o.stride_w) = pair_attr(n, "strides", 1, one_d);
    std::tie(o.dilation_h, o.dilation_w) = pair_attr(n, "dilations", 1, one_d);
    o.groups = static_cast<std::size_t>(group);
    o.padding = window_padding(n, static_cast<std::size_t>(xs[1]), static_cast<std::size_t>(xs[2]), kh, kw, o.stride_h,
                               o.stride_w, o.dilation_h, o.dilation_w, one_d);
    const Value* b = constant_or_null(n, 2);
    if (b && (b->dims.size() != 1 || static_cast<std::size_t>(b->dims[0]) != m))
      fail(errc::shape_mismatch, "bias " + dims_str(b->dims) + " for " + std::to_string(m) + " output channels");
    o.bias = b != nullptr;
    Conv2D<float> layer(c, m, kh, kw, o);
    for (std::size_t i = 0; i < layer.weight().size(); ++i) layer.weight()[i] = to_f32(w.data[i]);
    if (b)
      for (std::size_t i = 0; i < m; ++i) layer.bias()[i] = to_f32(b->data[i]);
    const int bn = one_d ? -1 : foldable_batchnorm(n, index);
    if (bn < 0) return windowed(n.output(0), x, std::make_unique<Conv2D<float>>(std::move(layer)));
    const Node& bnode = model_.graph().node(bn);
    auto norm = batchnorm_layer(bnode, m);
    skip_.insert(bn);
    add_layer(bnode.output(0), x.name, std::make_unique<Conv2D<float>>(fold_batchnorm(layer, *norm)), 4);
  }

  std::unique_ptr<BatchNorm2D<float>> batchnorm_layer(const Node& n, std::size_t channels) {
    known(n, {"epsilon", "momentum", "spatial", "training_mode", "is_test", "consumed_inputs"});
    if (int_attr(n, "training_mode", 0) != 0) fail(errc::unsupported, "BatchNormalization in training mode");
    if (int_attr(n, "spatial", 1) != 1) fail(errc::unsupported, "BatchNormalization with spatial=0");
    for (int i = 1; i < n.output_size(); ++i)
      if (!n.output(i).empty() && uses_[n.output(i)] > 0) fail(errc::unsupported, "BatchNormalization's running statistics outputs are used");
    auto bn = std::make_unique<BatchNorm2D<float>>(channels, float_attr(n, "epsilon", 1e-5));
    Tensor<float>* dst[4] = {&bn->weight(), &bn->bias(), &bn->running_mean(), &bn->running_var()};
    for (int i = 0; i < 4; ++i) {
      const Value& v = constant(n, i + 1);
      if (v.data.size() != channels)
        fail(errc::shape_mismatch, "input " + std::to_string(i + 1) + " has " + std::to_string(v.data.size()) +
                                       " values for " + std::to_string(channels) + " channels");
      for (std::size_t k = 0; k < channels; ++k) (*dst[i])[k] = to_f32(v.data[k]);
    }
    return bn;
  }

  void batchnorm(const Node& n) {
    const Value& x = runtime(n, 0);
    if (x.rank < 2 || x.rank > 4) fail(errc::unsupported, "BatchNormalization of rank " + std::to_string(x.rank) + " (2 to 4 are supported)");
    unary(n, batchnorm_layer(n, static_cast<std::size_t>(sample_dims(x)[0])));
  }

  void gemm(const Node& n) {
    known(n, {"alpha", "beta", "transA", "transB", "broadcast"});
    if (int_attr(n, "transA", 0) != 0) fail(errc::unsupported, "transA=1 would move the batch axis of A");
    const Value& a = runtime(n, 0);
    const Value& bm = constant(n, 1);
    if (a.rank != 2 || bm.dims.size() != 2) fail(errc::unsupported, "Gemm needs a computed A [N, K] and a constant B of rank 2");
    const bool tb = int_attr(n, "transB", 0) != 0;
    const double alpha = float_attr(n, "alpha", 1.0), beta = float_attr(n, "beta", 1.0);
    const std::size_t k = static_cast<std::size_t>(sample_dims(a)[0]);
    const std::size_t bk = static_cast<std::size_t>(bm.dims[tb ? 1 : 0]), p = static_cast<std::size_t>(bm.dims[tb ? 0 : 1]);
    if (bk != k) fail(errc::shape_mismatch, "A has " + std::to_string(k) + " columns, B " + dims_str(bm.dims) + (tb ? " (transposed)" : ""));
    auto dense = std::make_unique<Dense<float>>(k, p);
    for (std::size_t o = 0; o < p; ++o)
      for (std::size_t i = 0; i < k; ++i)
        dense->weight()[o * k + i] = to_f32(alpha * bm.data[tb ? o * k + i : i * p + o]);
    std::fill_n(dense->bias().data(), p, 0.0f);
    const bool has_c = present(n, 2);
    if (has_c && is_constant(n, 2)) {
      const Value& c = constant(n, 2);
      const std::size_t cn = c.data.size();
      const bool row = cn == p && (c.dims.size() == 1 || (c.dims.size() == 2 && c.dims[0] == 1));
      if (!(row || cn == 1))
        fail(errc::unsupported, "a constant C " + dims_str(c.dims) + " that spans the batch axis (a bias [" + std::to_string(p) +
                                    "] or a scalar is supported)");
      for (std::size_t o = 0; o < p; ++o) dense->bias()[o] = to_f32(beta * c.data[row ? o : 0]);
    }
    if (!has_c || is_constant(n, 2)) return unary(n, std::move(dense), 2);
    // A computed C: Dense, then beta * C added with broadcasting.
    const Value& c = runtime(n, 2);
    const std::string prod = add_layer(n.output(0) + "/AB", a.name, std::move(dense), 2);
    std::string cname = c.name;
    if (beta != 1.0)
      cname = add_layer(n.output(0) + "/betaC", c.name, std::make_unique<ConstantOp<float>>(BinaryOp::mul, Tensor<float>(Shape{1}, to_f32(beta))), c.rank);
    if (c.rank != 2) fail(errc::unsupported, "a computed C of rank " + std::to_string(c.rank));
    std::unique_ptr<Merge<float>> m;
    if (graph_.sample_shape(prod) == graph_.sample_shape(cname)) m = std::make_unique<Add<float>>();
    else m = std::make_unique<Elementwise<float>>(BinaryOp::add);
    add_merge(n.output(0), {prod, cname}, std::move(m), 2);
  }

  void matmul(const Node& n) {
    known(n, {});
    if (is_constant(n, 0)) fail(errc::unsupported, "a constant left operand (the batch rides on the left operand's axis 0)");
    const Value& a = runtime(n, 0);
    if (a.rank < 2) fail(errc::unsupported, "a rank-1 left operand has no batch axis to keep");
    if (!is_constant(n, 1)) {
      const Value& b = runtime(n, 1);
      if (a.rank != b.rank || a.rank < 3) fail(errc::unsupported, "two computed operands need one rank >= 3");
      add_merge(n.output(0), {a.name, b.name}, std::make_unique<MatMul<float>>(), a.rank);
      return;
    }
    const Value& b = constant(n, 1);
    if (b.dims.size() == 1) {
      Tensor<float> t(Shape{static_cast<std::size_t>(b.dims[0]), 1});
      for (std::size_t i = 0; i < t.size(); ++i) t[i] = to_f32(b.data[i]);
      if (a.rank == 2) return unary(n, std::make_unique<MatMulConst<float>>(t), 1);
      const std::string mid = add_layer(n.output(0) + "/col", a.name, std::make_unique<MatMulConst<float>>(t), a.rank);
      auto d = sample_dims(a);
      d.pop_back();
      add_layer(n.output(0), mid, std::make_unique<Reshape<float>>(graph_sample(d)), a.rank - 1);
      return;
    }
    if (b.dims.size() != 2) fail(errc::unsupported, "a constant right operand of rank " + std::to_string(b.dims.size()) + " (1 or 2 are supported)");
    unary(n, std::make_unique<MatMulConst<float>>(to_tensor(b, false)));
  }

  void pool(const Node& n, bool max) {
    if (max) known(n, {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides"});
    else known(n, {"auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides"});
    if (n.output_size() > 1 && !n.output(1).empty() && uses_[n.output(1)] > 0) fail(errc::unsupported, "the Indices output of MaxPool");
    const Value& x = runtime(n, 0);
    const bool one_d = x.rank == 3;
    if (x.rank != 3 && x.rank != 4) fail(errc::unsupported, "only 1-D and 2-D pooling ([N, C, L] or [N, C, H, W]) is supported");
    auto xs = sample_dims(x);
    if (one_d) xs.insert(xs.begin() + 1, 1);
    const auto ks = ints_attr(n, "kernel_shape");
    if (ks.size() != x.rank - 2) fail(errc::unsupported, "kernel_shape of " + std::to_string(ks.size()) + " axes on an input of rank " + std::to_string(x.rank));
    const auto [kh, kw] = pair_attr(n, "kernel_shape", 1, one_d);
    Pool2DOptions o;
    std::tie(o.stride_h, o.stride_w) = pair_attr(n, "strides", 1, one_d);
    if (max) std::tie(o.dilation_h, o.dilation_w) = pair_attr(n, "dilations", 1, one_d);
    o.padding = window_padding(n, static_cast<std::size_t>(xs[1]), static_cast<std::size_t>(xs[2]), kh, kw, o.stride_h,
                               o.stride_w, o.dilation_h, o.dilation_w, one_d);
    o.ceil_mode = int_attr(n, "ceil_mode", 0) != 0;
    o.count_include_pad = int_attr(n, "count_include_pad", 0) != 0;
    if (max) windowed(n.output(0), x, std::make_unique<MaxPool2D<float>>(kh, kw, o));
    else windowed(n.output(0), x, std::make_unique<AvgPool2D<float>>(kh, kw, o));
  }

  // ---- layout ----------------------------------------------------------------------------------

  // A Reshape to ONNX per-sample dims `d`, or an alias when nothing changes.
  void reshape_to(const Node& n, const Value& x, const std::vector<std::int64_t>& d) {
    const std::size_t rank = d.size() + 1;
    if (graph_sample(d) == graph_.sample_shape(x.name) && rank == x.rank) return alias(n, x);
    add_layer(n.output(0), x.name, std::make_unique<Reshape<float>>(graph_sample(d)), rank);
  }

  void flatten(const Node& n) {
    known(n, {"axis"});
    const Value& x = runtime(n, 0);
    const std::int64_t raw = int_attr(n, "axis", 1), r = static_cast<std::int64_t>(x.rank);
    if (raw < -r || raw > r) fail(errc::invalid_argument, "axis " + std::to_string(raw) + " out of range for rank " + std::to_string(r));
    const std::size_t a = static_cast<std::size_t>(raw < 0 ? raw + r : raw);
    const auto xs = sample_dims(x);
    if (a == 0) fail(errc::unsupported, "Flatten with axis 0 folds the batch into one row");
    std::int64_t rest = 1;
    for (std::size_t i = 1; i < x.rank; ++i) {
      if (i < a && xs[i - 1] != 1) fail(errc::unsupported, "Flatten with axis " + std::to_string(a) + " would merge axis " + std::to_string(i) + " into the batch");
      if (i >= a) rest *= xs[i - 1];
    }
    reshape_to(n, x, {rest});
  }

  void reshape(const Node& n) {
    known(n, {"allowzero", "shape"});
    const Value& x = runtime(n, 0);
    const auto t = opset_ < 5 ? ints_attr(n, "shape") : as_ints(constant(n, 1));
    const bool allowzero = int_attr(n, "allowzero", 0) != 0;
    const auto xd = full_dims(x);
    if (t.empty()) fail(errc::unsupported, "a reshape to a scalar");
    const std::int64_t count = static_cast<std::int64_t>(graph_.sample_shape(x.name).count());
    // Axis 0 must stay the batch: 0 (copy), -1 (inferred) or the declared batch.
    if (!(t[0] == 0 && !allowzero) && t[0] != -1 && !(batch_ && t[0] == static_cast<std::int64_t>(batch_)))
      fail(errc::unsupported, "the target shape " + dims_str(t) + " changes the batch axis (0)");
    std::vector<std::int64_t> d;
    int infer = -1;
    std::int64_t known_count = 1;
    for (std::size_t i = 1; i < t.size(); ++i) {
      std::int64_t v = t[i];
      if (v == 0 && !allowzero) {
        if (i >= xd.size()) fail(errc::invalid_argument, "0 copies axis " + std::to_string(i) + ", which the input lacks");
        v = xd[i];
      }
      if (v == -1) {
        if (infer >= 0 || t[0] == -1) fail(errc::invalid_argument, "more than one -1 in the target shape " + dims_str(t));
        infer = static_cast<int>(d.size());
        d.push_back(1);
        continue;
      }
      if (v <= 0) fail(errc::unsupported, "target dimension " + std::to_string(v) + " (empty tensors are not supported)");
      if (known_count > (std::int64_t{1} << 40) / v) fail(errc::too_large, "target shape " + dims_str(t) + " is too large");
      known_count *= v;
      d.push_back(v);
    }
    if (infer >= 0) {
      if (known_count == 0 || count % known_count != 0)
        fail(errc::shape_mismatch, "cannot reshape " + dims_str(xd) + " to " + dims_str(t));
      d[static_cast<std::size_t>(infer)] = count / known_count;
    } else if (known_count != count) {
      if (t[0] == -1) fail(errc::unsupported, "the target shape " + dims_str(t) + " changes the batch axis (0)");
      fail(errc::shape_mismatch, "cannot reshape " + dims_str(xd) + " to " + dims_str(t) + " with the batch on axis 0");
    }
    reshape_to(n, x, d);
  }

  void squeeze(const Node& n, bool unsqueeze) {
    known(n, {"axes"});
    const Value& x = runtime(n, 0);
    const std::vector<std::int64_t> axes =
        opset_ >= 13 ? (present(n, 1) ? as_ints(constant(n, 1)) : std::vector<std::int64_t>{}) : ints_attr(n, "axes");
    const auto xs = sample_dims(x);
    std::vector<std::int64_t> d;
    if (unsqueeze) {
      if (axes.empty()) fail(errc::invalid_argument, "Unsqueeze needs axes");
      const std::size_t r = x.rank + axes.size();
      std::vector<char> mark(r, 0);
      for (auto a : axes) {
        const std::size_t k = axis(a, r, "axis");
        if (k == 0) fail(errc::unsupported, "Unsqueeze at axis 0 would move the batch axis");
        if (mark[k]) fail(errc::invalid_argument, "axis " + std::to_string(a) + " repeated");
        mark[k] = 1;
      }
      std::size_t j = 0;
      for (std::size_t i = 1; i < r; ++i) d.push_back(mark[i] ? 1 : xs[j++]);  // x.rank - 1 unmarked: all of xs
    } else {
      std::vector<char> mark(x.rank, axes.empty());
      for (auto a : axes) {
        const std::size_t k = axis(a, x.rank, "axis");
        if (k == 0) fail(errc::unsupported, "Squeeze of axis 0, the batch axis");
        if (xs[k - 1] != 1) fail(errc::invalid_argument, "Squeeze of axis " + std::to_string(k) + " of size " + std::to_string(xs[k - 1]));
        mark[k] = 1;
      }
      for (std::size_t i = 1; i < x.rank; ++i)
        if (!(mark[i] && xs[i - 1] == 1)) d.push_back(xs[i - 1]);
    }
    reshape_to(n, x, d);
  }

  void transpose(const Node& n) {
    known(n, {"perm"});
    const Value& x = runtime(n, 0);
    auto perm = ints_attr(n, "perm");
    if (perm.empty())
      for (std::size_t i = x.rank; i-- > 0;) perm.push_back(static_cast<std::int64_t>(i));
    if (perm.size() != x.rank) fail(errc::invalid_argument, "perm " + dims_str(perm) + " for rank " + std::to_string(x.rank));
    std::vector<std::size_t> p;
    std::vector<char> seen(x.rank, 0);
    for (auto v : perm) {
      const std::size_t k = axis(v, x.rank, "perm entry");
      if (seen[k]) fail(errc::invalid_argument, "perm " + dims_str(perm) + " repeats an axis");
      seen[k] = 1;
      p.push_back(k);
    }
    if (p[0] != 0) fail(errc::unsupported, "perm " + dims_str(perm) + " moves the batch axis (0)");
    const auto xd = full_dims(x);
    // Moving only axes of size 1 keeps the element order: a reshape.
    std::vector<std::size_t> big_in, big_out;
    for (std::size_t i = 0; i < p.size(); ++i) {
      if (xd[i] != 1) big_in.push_back(i);
      if (xd[p[i]] != 1) big_out.push_back(p[i]);
    }
    std::vector<std::int64_t> d;
    for (std::size_t i = 1; i < p.size(); ++i) d.push_back(xd[p[i]]);
    if (big_in == big_out) return reshape_to(n, x, d);
    unary(n, std::make_unique<Transpose<float>>(p));
  }

  void concat(const Node& n) {
    known(n, {"axis"});
    if (n.input_size() == 0) fail(errc::corrupt_frame, "Concat of no input");
    std::vector<std::string> in;
    const Value& x0 = runtime(n, 0);
    for (int i = 0; i < n.input_size(); ++i) {
      const Value& v = runtime(n, i);
      if (v.rank != x0.rank) fail(errc::shape_mismatch, "inputs of ranks " + std::to_string(x0.rank) + " and " + std::to_string(v.rank));
      in.push_back(v.name);
    }
    const std::size_t a = axis(int_attr(n, "axis", opset_ < 11 ? 1 : 0), x0.rank, "axis");
    if (a == 0) fail(errc::unsupported, "Concat along the batch axis (0)");
    if (in.size() == 1) return alias(n, x0);
    if (in.size() > Merge<float>::max_inputs) fail(errc::unsupported, "Concat of more than " + std::to_string(Merge<float>::max_inputs) + " inputs");
    add_merge(n.output(0), in, std::make_unique<Concat<float>>(a), x0.rank);
  }

  void pad(const Node& n) {
    known(n, {"mode", "pads", "value"});
    const Value& x = runtime(n, 0);
    const std::string mode = string_attr(n, "mode", "constant");
    if (mode != "constant") fail(errc::unsupported, "Pad mode '" + mode + "' (only constant is supported)");
    std::vector<std::int64_t> pads;
    double value = 0;
    if (opset_ < 11) {
      pads = ints_attr(n, "pads");
      value = float_attr(n, "value", 0.0);
    } else {
      pads = as_ints(constant(n, 1));
      if (const Value* v = constant_or_null(n, 2)) value = to_f32(scalar(*v, "constant_value"));
      if (present(n, 3)) fail(errc::unsupported, "Pad with axes");
    }
    if (pads.size() != 2 * x.rank) fail(errc::invalid_argument, "pads of " + std::to_string(pads.size()) + " values for rank " + std::to_string(x.rank));
    std::vector<std::size_t> b(x.rank), e(x.rank);
    for (std::size_t i = 0; i < x.rank; ++i) {
      const auto pb = pads[i], pe = pads[i + x.rank];
      if (pb < 0 || pe < 0) fail(errc::unsupported, "negative pads (cropping)");
      if (pb > 1 << 20 || pe > 1 << 20) fail(errc::too_large, "pads " + dims_str(pads));
      b[i] = static_cast<std::size_t>(pb), e[i] = static_cast<std::size_t>(pe);
    }
    if (b[0] || e[0]) fail(errc::unsupported, "padding the batch axis (0)");
    if (x.rank == 1) return alias(n, x);
    unary(n, std::make_unique<Pad<float>>(b, e, value));
  }

  const onnx::ModelProto& model_;
  const OnnxImportOptions& options_;
  Graph<float> graph_;
  std::unordered_map<std::string, Value> values_;
  std::unordered_map<std::string, std::size_t> uses_;
  std::set<int> skip_;
  std::int64_t opset_ = 0;
  std::size_t batch_ = 0;
};

}  // namespace detail::onnx_import

/// Reads an ONNX model from its serialized bytes. Axis 0 of every input is the batch; every
/// other axis has a fixed size. Initializers become weights, BatchNormalization after a Conv is
/// folded into it, Dropout and Identity vanish, and constant subgraphs (Shape -> Gather ->
/// Unsqueeze -> Concat -> Reshape, as PyTorch exports a flatten) are evaluated at load time.
///
/// Every failure is an edgesplit::error naming the node, its operator and what is missing:
/// errc::corrupt_frame for bytes that are not a well-formed model, errc::unsupported for an
/// operator, attribute, data type or layout edgesplit does not run (docs/onnx.md lists what it
/// does), errc::too_large for a tensor over the options' caps. Nothing is allocated on a declared
/// size before it is checked against the bytes present.
inline OnnxModel import_onnx(std::span<const unsigned char> bytes, const OnnxImportOptions& options = {}) {
  if (bytes.size() > static_cast<std::size_t>(std::numeric_limits<int>::max()))
    fail(errc::too_large, "ONNX models over 2 GiB are not supported");
  onnx::ModelProto m;
  if (!m.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
    fail(errc::corrupt_frame, "not an ONNX model: the bytes do not parse as onnx.ModelProto");
  if (!m.has_graph()) fail(errc::corrupt_frame, "not an ONNX model: no graph");
  return detail::onnx_import::Importer(m, options).run();
}

/// Reads an ONNX model file (see the overload on bytes); errc::io_error when it cannot be read.
inline OnnxModel import_onnx(const std::string& path, const OnnxImportOptions& options = {}) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) fail(errc::io_error, "cannot open '" + path + "'");
  const std::streamoff size = f.tellg();
  if (size < 0) fail(errc::io_error, "cannot read '" + path + "'");
  if (static_cast<std::uint64_t>(size) > options.max_file_bytes)
    fail(errc::too_large, "'" + path + "' is larger than max_file_bytes (" + std::to_string(options.max_file_bytes) + ")");
  std::vector<unsigned char> bytes(static_cast<std::size_t>(size));
  f.seekg(0);
  if (!f.read(reinterpret_cast<char*>(bytes.data()), size)) fail(errc::io_error, "cannot read '" + path + "'");
  try {
    return import_onnx(std::span<const unsigned char>(bytes), options);
  } catch (const error& e) {
    const std::string w = e.what();
    const std::size_t p = to_string(e.code()).size() + 2;
    throw error(e.code(), path + ": " + (w.size() > p ? w.substr(p) : w));
  }
}

}  // namespace edgesplit
