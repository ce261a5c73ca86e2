// edgesplit/wire/cluster_protocol.hpp - what a ZeroMQ broker and its workers say to each other
// (runtime/zmq_broker.hpp, runtime/zmq_worker.hpp), in the style of the ZeroMQ guide's Paranoid
// Pirate protocol. docs/deployment.md describes the conversation.
//
// Every message between broker and worker is a multi-part ZeroMQ message whose first part is a
// 6-byte command header, "ESPW", version 1, command:
//
//   worker -> broker  READY      header, u32 capacity (requests the worker takes at once)
//   both ways         HEARTBEAT  header
//   broker -> worker  REQUEST    header, client id, an edgesplit frame (HELLO, INFER or PING)
//   worker -> broker  REPLY      header, client id, an edgesplit frame (the reply to it)
//   both ways         DISCONNECT header (worker: "I am leaving, re-send what I hold";
//                                        broker: "I do not know you, register again")
//
// The client id is opaque to workers: the broker makes it from the client's authenticated CURVE
// key (the ZAP user id) and its routing id, so that a reply finds its client and a request is
// known by (client id, request id) however often it is re-sent.
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
#include "edgesplit/wire/frame.hpp"

namespace edgesplit::wire::cluster {

inline constexpr std::uint8_t protocol_version = 1;
inline constexpr std::size_t header_bytes = 6;
inline constexpr std::size_t max_user_id_bytes = 64;
inline constexpr std::size_t max_routing_id_bytes = 255;
inline constexpr std::size_t max_client_id_bytes = 1 + max_user_id_bytes + max_routing_id_bytes;
inline constexpr std::uint32_t max_capacity = 65536;

/// Values are part of the protocol: never renumber.
enum class Command : std::uint8_t { ready = 1, heartbeat = 2, request = 3, reply = 4, disconnect = 5 };

inline std::array<std::byte, header_bytes> header(Command c) noexcept {
  return {std::byte{'E'}, std::byte{'S'}, std::byte{'P'}, std::byte{'W'}, std::byte{protocol_version},
          static_cast<std::byte>(c)};
}

/// Validates a command header: corrupt_frame (size, magic), version_mismatch, unsupported.
inline Command parse_header(std::span<const std::byte> h) {
  if (h.size() != header_bytes) fail(errc::corrupt_frame, "cluster header of " + std::to_string(h.size()) + " bytes, expected 6");
  if (h[0] != std::byte{'E'} || h[1] != std::byte{'S'} || h[2] != std::byte{'P'} || h[3] != std::byte{'W'})
    fail(errc::corrupt_frame, "not an edgesplit cluster message (bad magic)");
  if (std::to_integer<std::uint8_t>(h[4]) != protocol_version)
    fail(errc::version_mismatch, "cluster protocol version " + std::to_string(std::to_integer<int>(h[4])) + ", this side speaks 1");
  const auto c = std::to_integer<std::uint8_t>(h[5]);
  if (c < 1 || c > 5) fail(errc::unsupported, "unknown cluster command " + std::to_string(c));
  return static_cast<Command>(c);
}

/// How many parts each command has (header included).
constexpr std::size_t parts_of(Command c) noexcept {
  switch (c) {
    case Command::ready: return 2;
    case Command::request:
    case Command::reply: return 3;
    default: return 1;
  }
}

inline std::array<std::byte, 4> encode_capacity(std::uint32_t capacity) {
  std::array<std::byte, 4> out{};
  store_le32(out.data(), capacity);
  return out;
}

inline std::uint32_t parse_capacity(std::span<const std::byte> b) {
  if (b.size() != 4) fail(errc::corrupt_frame, "READY capacity of " + std::to_string(b.size()) + " bytes, expected 4");
  const std::uint32_t c = load_le32(b.data());
  if (c == 0 || c > max_capacity) fail(errc::corrupt_frame, "READY capacity " + std::to_string(c) + " outside 1..65536");
  return c;
}

/// The client id the broker gives a client: [u8 n][user id: n bytes][routing id].
inline std::string make_client_id(std::string_view user_id, std::string_view routing_id) {
  if (user_id.size() > max_user_id_bytes) fail(errc::invalid_argument, "user id over 64 bytes");
  if (routing_id.empty() || routing_id.size() > max_routing_id_bytes)
    fail(errc::invalid_argument, "routing id of " + std::to_string(routing_id.size()) + " bytes");
  std::string id(1, static_cast<char>(user_id.size()));
  id.append(user_id);
  id.append(routing_id);
  return id;
}

/// The routing id inside a client id, validated: corrupt_frame if it is not one.
inline std::string_view routing_id_of(std::span<const std::byte> client_id) {
  if (client_id.empty() || client_id.size() > max_client_id_bytes)
    fail(errc::corrupt_frame, "client id of " + std::to_string(client_id.size()) + " bytes");
  const std::size_t n = std::to_integer<std::size_t>(client_id[0]);
  if (n > max_user_id_bytes || 1 + n >= client_id.size()) fail(errc::corrupt_frame, "malformed client id");
  return {reinterpret_cast<const char*>(client_id.data()) + 1 + n, client_id.size() - 1 - n};
}

/// Validates `frame` completely at the frame level (header, size, CRC) and gives it a new request
/// id, resealing the CRC. Returns the header as it was. A worker uses this to keep requests of
/// different clients apart that carry the same id; validating first means a frame damaged on
/// the way is never resealed into a valid one.
inline FrameHeader relabel(std::span<std::byte> frame, std::uint32_t request_id, const DecodeLimits& limits = {}) {
  const FrameHeader h = parse_frame(frame, limits).header;
  store_le32(frame.data() + 16, request_id);
  store_le32(frame.data() + frame_crc_offset, frame_crc(frame));
  return h;
}

}  // namespace edgesplit::wire::cluster
