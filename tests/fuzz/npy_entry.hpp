// The .npy decode entry shared by the libFuzzer target (fuzz_npy.cpp) and the test suite, which
// replays the seed corpus in tests/corpus-npy/ through it on every run.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "edgesplit/io/npy.hpp"

namespace edgesplit_fuzz {

/// Caps small enough that no input can exhaust a fuzzer's memory (4 MiB of data, 4 KiB of header).
inline edgesplit::NpyLimits npy_fuzz_limits() {
  edgesplit::NpyLimits l;
  l.max_header_bytes = 4096;
  l.max_bytes = std::size_t{4} << 20;
  return l;
}

/// Parses `input` as a .npy file: true when it parsed, false on edgesplit::error. Any other
/// exception, or a parsed tensor that breaks the reader's promises (its data is the file's last
/// count x 4 bytes; writing it and reading that back gives the same shape and the same bits),
/// aborts: the fuzzer reports it, the tests fail.
inline bool decode_npy_all(std::span<const std::byte> input) {
  edgesplit::Tensor<float> t;
  try {
    t = edgesplit::parse_npy(input, npy_fuzz_limits());
  } catch (const edgesplit::error&) {
    return false;
  }
  const std::size_t rank = t.shape().rank();
  if (rank == 0 || rank > edgesplit::Shape::max_rank || t.bytes() > npy_fuzz_limits().max_bytes || t.bytes() > input.size())
    std::abort();
  if (t.bytes() && std::memcmp(t.data(), input.data() + (input.size() - t.bytes()), t.bytes()) != 0) std::abort();
  const std::vector<std::byte> again = edgesplit::to_npy(t.cview());
  edgesplit::Tensor<float> back;
  try {
    back = edgesplit::parse_npy(again, npy_fuzz_limits());
  } catch (const edgesplit::error&) {
    std::abort();  // what to_npy writes is always read back
  }
  if (!(back.shape() == t.shape())) std::abort();
  if (t.bytes() && std::memcmp(back.data(), t.data(), t.bytes()) != 0) std::abort();
  return true;
}

}  // namespace edgesplit_fuzz
