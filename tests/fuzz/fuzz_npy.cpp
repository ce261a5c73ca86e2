// libFuzzer target for the .npy reader (io/npy.hpp): magic, version, header length, the header
// dict's parser, dtype, order and shape checks, and the data size. Build with
// -DEDGESPLIT_BUILD_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++, then e.g.
//   build-fuzz/tests/fuzz/fuzz_npy -max_total_time=600 corpus-work/ tests/corpus-npy/
#include <cstddef>
#include <cstdint>
#include <span>

#include "npy_entry.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  edgesplit_fuzz::decode_npy_all(std::as_bytes(std::span(data, size)));
  return 0;
}
