// The decode entry shared by the libFuzzer target (fuzz_decode.cpp) and the test suite, which
// replays the seed corpus in tests/corpus/ through it on every run.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "edgesplit/wire/feature_codec.hpp"

namespace edgesplit_fuzz {

/// Caps small enough that no input can exhaust a fuzzer's memory (1 Mi elements = 4 MiB out).
inline edgesplit::wire::DecodeLimits fuzz_limits() {
  edgesplit::wire::DecodeLimits l;
  l.max_payload_bytes = std::size_t{1} << 20;
  l.max_elements = std::size_t{1} << 20;
  l.max_decompressed_bytes = std::size_t{4} << 20;
  return l;
}

/// What decoding one input gave: whether the bytes decoded as they are, and whether they decoded
/// once their payload length and CRC were made to match (which lets mutations reach the tensor
/// parser instead of stopping at the checksum).
struct Outcome {
  bool as_is = false;
  bool resealed = false;
};

namespace detail {

// Decodes `frame`; false on edgesplit::error. Any other exception, or a decoded tensor that
// breaks the decoder's promises, aborts: the fuzzer reports it, the tests fail.
inline bool decode(std::span<const std::byte> frame) {
  static edgesplit::FeatureCodec codec([] {
    edgesplit::CodecConfig c;
    c.limits = fuzz_limits();
    return c;
  }());
  static edgesplit::Tensor<float> out;
  try {
    codec.decode(frame, out);
  } catch (const edgesplit::error&) {
    return false;
  }
  if (out.size() == 0 || out.size() > fuzz_limits().max_elements) std::abort();
  for (float v : out.span())
    if (!std::isfinite(v)) std::abort();  // validated scales and raw floats give finite values
  return true;
}

}  // namespace detail

/// Runs `decode` on `input` as it is, and once more with its payload length and CRC repaired.
template <class Decode>
Outcome decode_twice(std::span<const std::byte> input, Decode decode) {
  Outcome o;
  o.as_is = decode(input);
  namespace w = edgesplit::wire;
  if (input.size() < w::frame_header_size) return o;
  static std::vector<std::byte> copy;
  copy.assign(input.begin(), input.end());
  const std::size_t header = w::load_le16(copy.data() + 8);
  if (header <= copy.size() && w::fits_u32(copy.size() - header))
    w::store_le32(copy.data() + 12, static_cast<std::uint32_t>(copy.size() - header));
  w::store_le32(copy.data() + w::frame_crc_offset, w::frame_crc(copy));
  o.resealed = decode(std::span<const std::byte>(copy));
  return o;
}

inline Outcome decode_all(std::span<const std::byte> input) { return decode_twice(input, detail::decode); }

}  // namespace edgesplit_fuzz
