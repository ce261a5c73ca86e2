// libFuzzer target for ONNX import (io/onnx.hpp): protobuf parsing, tensor data against declared
// shapes, the graph's wiring (dangling inputs, cycles), every operator's attribute checks, and the
// imported model's cuts and forward pass. Build with -DEDGESPLIT_BUILD_FUZZ=ON
// -DCMAKE_CXX_COMPILER=clang++ (and ONNX import on), then e.g.
//   build-fuzz/tests/fuzz/fuzz_onnx -max_total_time=600 corpus-work/ tests/corpus-onnx/
#include <cstddef>
#include <cstdint>
#include <span>

#include "onnx_entry.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  edgesplit_fuzz::import_onnx_all(std::as_bytes(std::span(data, size)));
  return 0;
}
