// libFuzzer target for the wire decoder: frame, tensor payload, zstd stage, unpacking,
// dequantization. Build with -DEDGESPLIT_BUILD_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++, then e.g.
//   build-fuzz/tests/fuzz/fuzz_decode -max_total_time=600 corpus-work/ tests/corpus/
#include <cstddef>
#include <cstdint>
#include <span>

#include "decode_entry.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  edgesplit_fuzz::decode_all(std::as_bytes(std::span(data, size)));
  return 0;
}
