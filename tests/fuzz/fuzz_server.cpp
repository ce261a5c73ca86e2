// libFuzzer target for what one connection can make the server do: the input is the connection's
// byte stream (length-prefixed messages), served by RequestHandler + DynamicBatcher. Build with
// -DEDGESPLIT_BUILD_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++, then e.g.
//   build-fuzz/tests/fuzz/fuzz_server -max_total_time=600 corpus-work/ tests/corpus-server/
#include <cstddef>
#include <cstdint>
#include <span>

#include "server_entry.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)edgesplit_fuzz::serve_connection(std::as_bytes(std::span(data, size)));
  return 0;
}
