// The ONNX import entry shared by the libFuzzer target (fuzz_onnx.cpp) and the test suite, which
// replays the seed corpus in tests/corpus-onnx/ through it on every run.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <span>
#include <vector>

#include "edgesplit/io/onnx.hpp"

namespace edgesplit_fuzz {

/// Caps small enough that no model can exhaust a fuzzer's memory or time: 64 Ki elements per
/// tensor and sample, and a model is run only when one sample costs at most 10 MFLOPs.
inline edgesplit::OnnxImportOptions onnx_fuzz_options() {
  edgesplit::OnnxImportOptions o;
  o.max_sample_elements = std::size_t{1} << 16;
  o.max_file_bytes = std::size_t{1} << 20;
  return o;
}

/// Imports `input` as an ONNX model: true when it imported, false on edgesplit::error. A model
/// that imports is described, cut at every candidate cut, and run once on a batch of 2 (when
/// small enough): every step either works or throws edgesplit::error. Any other exception
/// aborts: the fuzzer reports it, the tests fail.
inline bool import_onnx_all(std::span<const std::byte> input) {
  using namespace edgesplit;
  OnnxModel m;
  try {
    m = import_onnx(std::span<const unsigned char>(reinterpret_cast<const unsigned char*>(input.data()), input.size()),
                    onnx_fuzz_options());
  } catch (const error&) {
    return false;
  }
  try {
    (void)m.graph.describe();
    for (const CutInfo& c : m.graph.candidate_cuts()) (void)m.graph.cut(c.tensors);
    if (m.graph.flops(1) <= 10'000'000) {
      std::vector<Tensor<float>> xs;
      std::vector<TensorView<const float>> views;
      for (const std::string& name : m.graph.input_names()) {
        Tensor<float> t(m.graph.shape(name, 2));
        for (std::size_t i = 0; i < t.size(); ++i) t[i] = static_cast<float>(i % 7) - 3.0f;
        xs.push_back(std::move(t));
      }
      for (const auto& t : xs) views.push_back(t.cview());
      m.graph.forward(std::span<const TensorView<const float>>(views.data(), views.size()));
    }
  } catch (const error&) {
  }
  return true;
}

}  // namespace edgesplit_fuzz
