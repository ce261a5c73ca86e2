// A small ONNX model built with ONNX's own protobuf classes: what the ONNX tests (test_onnx.cpp,
// test_onnx_export.cpp) feed import_onnx.
#pragma once

#include <catch2/catch.hpp>
#include <onnx/onnx_pb.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "edgesplit/core/random.hpp"
#include "edgesplit/io/onnx.hpp"

namespace edgesplit_test {

// A small ONNX model under construction.
struct OnnxBuilder {
  onnx::ModelProto m;
  onnx::GraphProto* g;
  edgesplit::Rng rng{2026};

  explicit OnnxBuilder(int opset = 13) {
    m.set_ir_version(8);
    m.set_producer_name("edgesplit-test");
    auto* os = m.add_opset_import();
    os->set_domain("");
    os->set_version(opset);
    g = m.mutable_graph();
    g->set_name("test");
  }
  // A float input with a symbolic batch and fixed per-sample dims.
  void input(const std::string& name, std::vector<std::int64_t> sample, int type = onnx::TensorProto::FLOAT) {
    auto* v = g->add_input();
    v->set_name(name);
    auto* tt = v->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(type);
    tt->mutable_shape()->add_dim()->set_dim_param("N");
    for (auto d : sample) tt->mutable_shape()->add_dim()->set_dim_value(d);
  }
  void output(const std::string& name) { g->add_output()->set_name(name); }
  // A random float initializer (uniform in [lo, hi)); returns its values.
  std::vector<float> weight(const std::string& name, std::vector<std::int64_t> dims, double lo = -0.5, double hi = 0.5) {
    auto* t = g->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    std::size_t n = 1;
    for (auto d : dims) t->add_dims(d), n *= static_cast<std::size_t>(d);
    std::vector<float> v(n);
    for (float& x : v) x = static_cast<float>(rng.uniform(lo, hi));
    t->set_raw_data(std::string(reinterpret_cast<const char*>(v.data()), n * 4));
    return v;
  }
  void ints(const std::string& name, std::vector<std::int64_t> v) {
    auto* t = g->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::INT64);
    t->add_dims(static_cast<std::int64_t>(v.size()));
    for (auto x : v) t->add_int64_data(x);
  }
  onnx::NodeProto* node(const std::string& op, std::vector<std::string> in, std::vector<std::string> out) {
    auto* n = g->add_node();
    n->set_op_type(op);
    n->set_name(out.empty() ? op : out[0] + "_node");
    for (auto& s : in) n->add_input(s);
    for (auto& s : out) n->add_output(s);
    return n;
  }
  static void attr(onnx::NodeProto* n, const std::string& name, std::vector<std::int64_t> v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (auto x : v) a->add_ints(x);
  }
  static void attr(onnx::NodeProto* n, const std::string& name, std::int64_t v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(v);
  }
  static void attr(onnx::NodeProto* n, const std::string& name, float v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::FLOAT);
    a->set_f(v);
  }
  std::string bytes() const { return m.SerializeAsString(); }
  edgesplit::OnnxModel load(const edgesplit::OnnxImportOptions& o = {}) const {
    const std::string b = bytes();
    return edgesplit::import_onnx(std::span<const unsigned char>(reinterpret_cast<const unsigned char*>(b.data()), b.size()), o);
  }
};

// A tensor of uniform values in [lo, hi) from a fixed seed.
inline edgesplit::Tensor<float> random_input(const edgesplit::Shape& s, std::uint64_t seed, double lo = -1, double hi = 1) {
  edgesplit::Rng rng(seed);
  edgesplit::Tensor<float> t(s);
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = static_cast<float>(rng.uniform(lo, hi));
  return t;
}

// An ONNX model from its serialized bytes.
inline edgesplit::OnnxModel load_bytes(const std::string& b) {
  return edgesplit::import_onnx(std::span<const unsigned char>(reinterpret_cast<const unsigned char*>(b.data()), b.size()));
}

// Runs f, which must throw edgesplit::error of `code` whose message holds `text`.
template <class F>
void require_error(F&& f, edgesplit::errc code, const std::string& text) {
  try {
    f();
    FAIL("no error; expected " << edgesplit::to_string(code) << " mentioning '" << text << "'");
  } catch (const edgesplit::error& e) {
    INFO(e.what());
    CHECK(e.code() == code);
    CHECK(std::string(e.what()).find(text) != std::string::npos);
  }
}

}  // namespace edgesplit_test
