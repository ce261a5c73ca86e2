// libFuzzer target for the Open Inference Protocol's gRPC messages (wire/oip_grpc.hpp) and,
// through them, the protobuf reader and writer (wire/protobuf.hpp): every input is decoded as
// every message kind, and what decodes is re-encoded and decoded again (oip_grpc_entry.hpp).
// Build with -DEDGESPLIT_BUILD_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++, then e.g.
//   build-fuzz/tests/fuzz/fuzz_oip_grpc -max_total_time=600 corpus-work/ tests/corpus-oip-grpc/
#include <cstddef>
#include <cstdint>
#include <span>

#include "oip_grpc_entry.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)edgesplit_fuzz::decode_oip_grpc(std::as_bytes(std::span(data, size)));
  return 0;
}
