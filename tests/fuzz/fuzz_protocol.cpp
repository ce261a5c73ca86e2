// libFuzzer target for the protocol decoders (HELLO, INFER, RESPONSE, ERROR, WEIGHTS, PING/PONG)
// and, through them, the tensor payload. Build with -DEDGESPLIT_BUILD_FUZZ=ON
// -DCMAKE_CXX_COMPILER=clang++, then e.g.
//   build-fuzz/tests/fuzz/fuzz_protocol -max_total_time=600 corpus-work/ tests/corpus-protocol/
#include <cstddef>
#include <cstdint>
#include <span>

#include "protocol_entry.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  edgesplit_fuzz::decode_message_all(std::as_bytes(std::span(data, size)));
  return 0;
}
