// edgesplit/wire/frame.hpp - the frame every edgesplit message travels in.
//
// Layout of the version 1.0 header (little-endian; docs/wire-format.md is the specification):
//
//   offset size field
//    0     4    magic "ESPL" (45 53 50 4C)
//    4     1    major version (1)
//    5     1    minor version (0)
//    6     1    message type (MessageType)
//    7     1    flags (none defined in 1.0: must be 0)
//    8     2    header length in bytes (24 in 1.0; later minors may append fields)
//   10     2    reserved, 0
//   12     4    payload length in bytes
//   16     4    request id (echoed by replies; 0 when unused)
//   20     4    CRC-32C of the whole frame (header and payload) without these 4 bytes
//   24     .    header extension (later minors), then the payload
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/wire/byte_io.hpp"
#include "edgesplit/wire/crc32c.hpp"

/// The wire format: frames, tensor payloads and protocol messages, and their validating decoders.
namespace edgesplit::wire {

/// The first four bytes of every frame: "ESPL".
inline constexpr std::array<std::byte, 4> frame_magic{std::byte{'E'}, std::byte{'S'}, std::byte{'P'}, std::byte{'L'}};
/// The format's major version: readers refuse any other.
inline constexpr std::uint8_t version_major = 1;
/// The format's minor version: readers accept newer minors (longer headers are skipped).
inline constexpr std::uint8_t version_minor = 1;
inline constexpr std::size_t frame_header_size = 24;  ///< header length written by 1.0
/// Offset of the CRC field in the header.
inline constexpr std::size_t frame_crc_offset = 20;

/// What a frame carries. The values are part of the wire format: never renumber.
enum class MessageType : std::uint8_t {
  hello = 1,     ///< version and capability exchange when a connection opens
  infer = 2,     ///< edge -> cloud: run the tail on the features inside
  response = 3,  ///< cloud -> edge: the result of an infer (same request id)
  error = 4,     ///< a typed error in reply to a request (same request id)
  weights = 5,   ///< updated model parameters pushed to a peer
  ping = 6,      ///< liveness / round-trip probe
  pong = 7,      ///< reply to ping (same request id)
  tensor = 8,    ///< a bare tensor payload (the feature codec's frame)
  infer_tensors = 9,  ///< edge -> cloud: run the tail on several named feature tensors (1.1)
};

/// True for the message types this version defines.
constexpr bool is_known(MessageType t) noexcept {
  const auto v = static_cast<std::uint8_t>(t);
  return v >= 1 && v <= 9;
}

/// The type's name, for messages and logs.
constexpr std::string_view to_string(MessageType t) noexcept {
  switch (t) {
    case MessageType::hello: return "hello";
    case MessageType::infer: return "infer";
    case MessageType::response: return "response";
    case MessageType::error: return "error";
    case MessageType::weights: return "weights";
    case MessageType::ping: return "ping";
    case MessageType::pong: return "pong";
    case MessageType::tensor: return "tensor";
    case MessageType::infer_tensors: return "infer_tensors";
  }
  return "unknown";
}

/// Caps a receiver applies before it allocates anything for a frame.
struct DecodeLimits {
  std::size_t max_payload_bytes = std::size_t{64} << 20;       ///< frame payload length
  std::size_t max_elements = std::size_t{16} << 20;            ///< elements of one tensor
  std::size_t max_decompressed_bytes = std::size_t{64} << 20;  ///< lossless stage output
};

/// The fixed frame header, as parsed and validated by parse_frame().
struct FrameHeader {
  std::uint8_t major = version_major;  ///< format major version; another major is refused
  std::uint8_t minor = version_minor;  ///< format minor version; newer minors are read
  MessageType type = MessageType::tensor;  ///< what the payload holds
  std::uint8_t flags = 0;  ///< flag bits; unknown ones are refused
  std::uint16_t header_length = frame_header_size;  ///< bytes of header, CRC included
  std::uint32_t payload_length = 0;  ///< bytes of payload after the header
  std::uint32_t request_id = 0;  ///< the sender's id, echoed in the reply
  std::uint32_t crc = 0;  ///< CRC-32C over header and payload

  /// Header plus payload.
  std::size_t frame_size() const noexcept { return std::size_t{header_length} + payload_length; }
};

/// A validated frame: its header and a view of its payload (inside the bytes given to parse).
struct Frame {
  FrameHeader header;  ///< the validated header
  std::span<const std::byte> payload;  ///< the payload bytes, a view into the caller's buffer
};

/// Clears `out` and writes a 1.0 header for a frame of `type` (lengths and CRC are filled in by
/// finish_frame). Append the payload to `out`, then call finish_frame.
inline void begin_frame(std::vector<std::byte>& out, MessageType type, std::uint32_t request_id = 0) {
  out.clear();
  ByteWriter w(out);
  for (std::byte b : frame_magic) w.u8(std::to_integer<std::uint8_t>(b));
  w.u8(version_major);
  w.u8(version_minor);
  w.u8(static_cast<std::uint8_t>(type));
  w.u8(0);                         // flags
  w.u16(frame_header_size);        // header length
  w.u16(0);                        // reserved
  w.u32(0);                        // payload length, patched by finish_frame
  w.u32(request_id);
  w.u32(0);                        // CRC, patched by finish_frame
}

/// CRC-32C of a frame: every byte except the CRC field itself.
inline std::uint32_t frame_crc(std::span<const std::byte> frame) noexcept {
  const std::uint32_t head = crc32c(frame.first(frame_crc_offset));
  return crc32c(frame.subspan(frame_crc_offset + 4), head);
}

/// Completes the frame begun in `out`: payload length and CRC. errc::too_large when the payload
/// does not fit the 32-bit length field.
inline std::span<const std::byte> finish_frame(std::vector<std::byte>& out) {
  if (out.size() < frame_header_size) fail(errc::invalid_argument, "finish_frame without begin_frame");
  const std::size_t payload = out.size() - frame_header_size;
  if (!fits_u32(payload)) fail(errc::too_large, "frame payload of " + std::to_string(payload) + " bytes");
  store_le32(out.data() + 12, static_cast<std::uint32_t>(payload));
  store_le32(out.data() + frame_crc_offset, frame_crc(out));
  return out;
}

/// Validates the fixed part of a header from the first bytes of a frame (at least 24): magic,
/// major version, header length, reserved field and the payload cap. The CRC needs the whole
/// frame and is checked by parse_frame. A stream transport reads 24 bytes, calls this, and only
/// then reads (and allocates) the remaining frame_size() - 24 bytes.
inline FrameHeader parse_frame_header(std::span<const std::byte> bytes, const DecodeLimits& limits = {}) {
  ByteReader r(bytes);
  const auto magic = r.bytes(4, "frame magic");
  for (std::size_t i = 0; i < 4; ++i)
    if (magic[i] != frame_magic[i]) fail(errc::corrupt_frame, "not an edgesplit frame (bad magic)");
  FrameHeader h;
  h.major = r.u8("major version");
  h.minor = r.u8("minor version");
  if (h.major != version_major)
    fail(errc::version_mismatch, "frame version " + std::to_string(h.major) + "." + std::to_string(h.minor) +
                                     ", this reader speaks " + std::to_string(version_major) + ".x");
  h.type = static_cast<MessageType>(r.u8("message type"));
  h.flags = r.u8("flags");
  h.header_length = r.u16("header length");
  const std::uint16_t reserved = r.u16("reserved");
  h.payload_length = r.u32("payload length");
  h.request_id = r.u32("request id");
  h.crc = r.u32("crc");
  if (h.header_length < frame_header_size || (h.minor <= version_minor && h.header_length != frame_header_size))
    fail(errc::corrupt_frame, "header length " + std::to_string(h.header_length) + " for version " +
                                  std::to_string(h.major) + "." + std::to_string(h.minor));
  if (reserved != 0) fail(errc::corrupt_frame, "reserved header field is not zero");
  if (h.payload_length > limits.max_payload_bytes)
    fail(errc::too_large, "payload of " + std::to_string(h.payload_length) + " bytes over the cap of " +
                              std::to_string(limits.max_payload_bytes));
  return h;
}

/// Validates one whole frame (`bytes` must be exactly one frame): the header as
/// parse_frame_header does, the total size, the CRC, then the message type and flags.
/// Later-minor header extensions are skipped.
inline Frame parse_frame(std::span<const std::byte> bytes, const DecodeLimits& limits = {}) {
  const FrameHeader h = parse_frame_header(bytes, limits);
  if (bytes.size() != h.frame_size())
    fail(errc::corrupt_frame, "frame of " + std::to_string(bytes.size()) + " bytes, its header says " +
                                  std::to_string(h.frame_size()));
  if (frame_crc(bytes) != h.crc) fail(errc::checksum_mismatch, "frame CRC-32C does not match its contents");
  if (!is_known(h.type))
    fail(errc::unsupported, "unknown message type " + std::to_string(static_cast<unsigned>(h.type)));
  if (h.flags != 0) fail(errc::unsupported, "unknown frame flags " + std::to_string(h.flags));
  return {h, bytes.subspan(h.header_length)};
}

}  // namespace edgesplit::wire
