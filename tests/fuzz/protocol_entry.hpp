// The protocol decode entry shared by the libFuzzer target (fuzz_protocol.cpp) and the test
// suite, which replays the seed corpus in tests/corpus-protocol/ through it on every run.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "decode_entry.hpp"
#include "edgesplit/wire/protocol.hpp"

namespace edgesplit_fuzz {

namespace detail {

// Decodes one message the way the runtime does: peek at the header, then the decoder of that
// type. False on edgesplit::error; anything else (another exception, a broken promise) aborts.
inline bool decode_message(std::span<const std::byte> bytes) {
  namespace w = edgesplit::wire;
  static edgesplit::FeatureCodec codec([] {
    edgesplit::CodecConfig c;
    c.limits = fuzz_limits();
    return c;
  }());
  static edgesplit::Tensor<float> tensor;
  static std::vector<w::NamedTensor> named;
  try {
    const w::FrameHeader h = w::peek(bytes, fuzz_limits());
    switch (h.type) {
      case w::MessageType::hello: {
        const auto hello = w::decode_hello_check(bytes, fuzz_limits());
        if (hello.id.model_id.size() > w::max_model_id_bytes) std::abort();
        if (hello.check.signature.size() > edgesplit::Shape::max_rank) std::abort();
        for (std::size_t d : hello.check.signature)
          if (d == 0) std::abort();
        return true;
      }
      case w::MessageType::infer:
        if (w::decode_infer(bytes, codec, tensor).model_id.size() > w::max_model_id_bytes) std::abort();
        break;
      case w::MessageType::infer_tensors: {
        static edgesplit::Tensor<float> scratch;
        const auto h = w::decode_infer_tensors(bytes, codec, scratch, tensor);
        if (h.count == 0 || h.count > w::max_feature_tensors || h.request.model_id.size() > w::max_model_id_bytes) std::abort();
        if (!(tensor.shape() == edgesplit::Shape{h.batch, h.width})) std::abort();
        break;
      }
      case w::MessageType::response:
        (void)w::decode_response(bytes, codec, tensor);
        break;
      case w::MessageType::error:
        if (w::decode_error(bytes, fuzz_limits()).message.size() > w::max_error_message_bytes) std::abort();
        return true;
      case w::MessageType::weights: {
        (void)w::decode_weights(bytes, named, fuzz_limits());
        if (named.size() > w::max_weight_tensors) std::abort();
        for (const auto& t : named)
          for (float v : t.value.span())
            if (!std::isfinite(v)) std::abort();
        return true;
      }
      case w::MessageType::ping:
      case w::MessageType::pong:
        (void)w::decode_ping(bytes, fuzz_limits());
        return true;
      default:
        return detail::decode(bytes);  // TENSOR frames and unknown types: the codec's path
    }
  } catch (const edgesplit::error&) {
    return false;
  }
  if (tensor.size() == 0 || tensor.size() > fuzz_limits().max_elements) std::abort();
  for (float v : tensor.span())
    if (!std::isfinite(v)) std::abort();
  return true;
}

}  // namespace detail

/// Like decode_all, for protocol messages: as they are, and with length and CRC repaired.
inline Outcome decode_message_all(std::span<const std::byte> input) {
  return decode_twice(input, detail::decode_message);
}

}  // namespace edgesplit_fuzz
