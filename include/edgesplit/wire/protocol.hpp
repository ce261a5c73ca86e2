// edgesplit/wire/protocol.hpp - the messages edge and cloud exchange, inside wire frames.
//
// Every message is one frame (wire/frame.hpp); the frame's request id ties a reply to its
// request. Payload layouts (little-endian; docs/wire-format.md is the specification):
//
//   HELLO     string model_id, u32 model_major, u32 model_minor, u16 split
//             [u64 fingerprint, u8 rank, rank x u32 dims]   (optional: the model check)
//   INFER     string model_id, u16 split, u32 deadline_us (0: none), tensor
//   RESPONSE  u8 status (0 = ok), u32 queue_us, u32 compute_us, tensor
//   ERROR     u8 code (edgesplit::errc value), string message
//   WEIGHTS   string model_id, u32 model_major, u32 model_minor, u16 split, u32 count,
//             count x (string name, tensor)
//   PING/PONG u32 timestamp_lo, u32 timestamp_hi (sender's clock, echoed by PONG)
//
//   string = u16 length, then that many bytes (capped per field, below)
//   tensor = a tensor payload as FeatureEncoder::append_tensor writes it
//
// Decoders validate every field and refuse trailing bytes; a peer never names memory, code or
// anything the receiver did not register itself: the cloud runs only the tails registered under
// (model_id, split).
#pragma once

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/wire/byte_io.hpp"
#include "edgesplit/wire/feature_codec.hpp"
#include "edgesplit/wire/frame.hpp"

namespace edgesplit::wire {

/// Longest model id a frame may carry.
inline constexpr std::size_t max_model_id_bytes = 128;
/// Longest error text a frame may carry (longer texts are cut when encoded).
inline constexpr std::size_t max_error_message_bytes = 1024;
/// Longest parameter name in a WEIGHTS frame.
inline constexpr std::size_t max_weight_name_bytes = 256;
/// Most tensors in a WEIGHTS frame.
inline constexpr std::size_t max_weight_tensors = 4096;

/// Identity of a model part both sides must agree on. A different major version is refused
/// explicitly (errc::version_mismatch); a different minor is accepted (compatible weights update).
struct ModelIdentity {
  std::string model_id;  ///< which model the cloud must run
  std::uint32_t major = 1;  ///< major version: must match
  std::uint32_t minor = 0;  ///< minor version: informational
  std::uint16_t split = 0;  ///< the first layer the cloud runs
};

/// What a HELLO says beyond the identity, so that a head and a tail that do not fit are refused at
/// connect time rather than on every request. Both fields are optional (0 and rank 0: unknown).
/// The edge sends the fingerprint it expects and the per-sample shape its head produces; the
/// cloud answers with the fingerprint it serves and the per-sample shape its tail takes.
struct ModelCheck {
  std::uint64_t fingerprint = 0;  ///< runtime/model_registry.hpp's model_fingerprint of the tail; 0: none
  std::vector<std::size_t> signature;  ///< per-sample feature shape (no batch dimension); empty: unknown
  /// True when there is nothing to check.
  bool empty() const noexcept { return fingerprint == 0 && signature.empty(); }
};

/// A decoded HELLO: identity and the optional check.
struct Hello {
  ModelIdentity id;  ///< model, versions, split
  ModelCheck check;  ///< fingerprint and signature, when sent
};

/// The fields of an INFER message besides the tensor.
struct InferRequest {
  std::string model_id;  ///< the model to run
  std::uint16_t split = 0;  ///< the first layer the cloud runs
  std::uint32_t deadline_us = 0;  ///< time budget left when sent; 0 for none
};

/// The fields of a RESPONSE message besides the tensor.
struct InferResponse {
  std::uint8_t status = 0;  ///< 0: ok
  std::uint32_t queue_us = 0;    ///< time the request waited in the server's queue
  std::uint32_t compute_us = 0;  ///< time the server spent on the batch that held it
};

/// An ERROR message: a typed code and a short text.
struct ErrorMessage {
  errc code = errc::invalid_argument;  ///< what went wrong, as the typed error the edge rethrows
  std::string message;  ///< for people; bounded in length
};

namespace detail {

inline void write_string(ByteWriter& w, const std::string& s, std::size_t cap, const char* field) {
  if (s.size() > cap) fail(errc::invalid_argument, std::string(field) + " longer than " + std::to_string(cap) + " bytes");
  w.u16(static_cast<std::uint16_t>(s.size()));
  const auto dst = w.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) dst[i] = static_cast<std::byte>(s[i]);
}

inline void read_string(ByteReader& r, std::string& out, std::size_t cap, const char* field) {
  const std::size_t n = r.u16(field);
  if (n > cap) fail(errc::corrupt_frame, std::string(field) + " of " + std::to_string(n) + " bytes over the cap of " + std::to_string(cap));
  const auto src = r.bytes(n, field);
  out.assign(reinterpret_cast<const char*>(src.data()), n);
}

inline Frame expect(std::span<const std::byte> bytes, MessageType type, const DecodeLimits& limits) {
  Frame f = parse_frame(bytes, limits);
  if (f.header.type != type)
    fail(errc::corrupt_frame, "expected a " + std::string(to_string(type)) + " frame, got " +
                                  std::string(to_string(f.header.type)));
  return f;
}

inline void write_identity(ByteWriter& w, const ModelIdentity& id) {
  write_string(w, id.model_id, max_model_id_bytes, "model id");
  w.u32(id.major);
  w.u32(id.minor);
  w.u16(id.split);
}

// The fields INFER and INFER_TENSORS share: model id, split, deadline.
inline void write_request(ByteWriter& w, const InferRequest& req) {
  write_string(w, req.model_id, max_model_id_bytes, "model id");
  w.u16(req.split);
  w.u32(req.deadline_us);
}
inline InferRequest read_request(ByteReader& r) {
  InferRequest req;
  read_string(r, req.model_id, max_model_id_bytes, "model id");
  req.split = r.u16("split point");
  req.deadline_us = r.u32("deadline");
  return req;
}

inline ModelIdentity read_identity(ByteReader& r) {
  ModelIdentity id;
  read_string(r, id.model_id, max_model_id_bytes, "model id");
  id.major = r.u32("model major version");
  id.minor = r.u32("model minor version");
  id.split = r.u16("split point");
  return id;
}

}  // namespace detail

/// Reads only the fixed header of a frame, to dispatch on its type. Full validation (CRC
/// included) happens in the decode_* function for that type.
inline FrameHeader peek(std::span<const std::byte> bytes, const DecodeLimits& limits = {}) {
  return parse_frame_header(bytes, limits);
}

// --- HELLO -----------------------------------------------------------------------------------

/// A HELLO frame naming the model and split the edge will ask for (or, from the cloud, the one it
/// serves), with the model check when `check` is not empty. errc::invalid_argument for a
/// signature of rank over 8 or a dimension of 0 or over 2^32 - 1.
inline std::span<const std::byte> encode_hello(std::vector<std::byte>& out, const ModelIdentity& id,
                                               std::uint32_t request_id = 0, const ModelCheck& check = {}) {
  begin_frame(out, MessageType::hello, request_id);
  ByteWriter w(out);
  detail::write_identity(w, id);
  if (!check.empty()) {
    if (check.signature.size() > Shape::max_rank)
      fail(errc::invalid_argument, "hello signature of rank " + std::to_string(check.signature.size()));
    w.u32(static_cast<std::uint32_t>(check.fingerprint));
    w.u32(static_cast<std::uint32_t>(check.fingerprint >> 32));
    w.u8(static_cast<std::uint8_t>(check.signature.size()));
    for (std::size_t d : check.signature) {
      if (d == 0 || !fits_u32(d)) fail(errc::invalid_argument, "hello signature dimension " + std::to_string(d));
      w.u32(static_cast<std::uint32_t>(d));
    }
  }
  return finish_frame(out);
}

/// Validates a HELLO frame, with or without the model check; typed errors for every malformed
/// field (a signature of rank over 8 or with a zero dimension is errc::corrupt_frame).
inline Hello decode_hello_check(std::span<const std::byte> bytes, const DecodeLimits& limits = {}) {
  const Frame f = detail::expect(bytes, MessageType::hello, limits);
  ByteReader r(f.payload);
  Hello h;
  h.id = detail::read_identity(r);
  if (r.remaining() != 0) {
    const std::uint64_t lo = r.u32("model fingerprint");
    const std::uint64_t hi = r.u32("model fingerprint");
    h.check.fingerprint = lo | (hi << 32);
    const std::size_t rank = r.u8("signature rank");
    if (rank > Shape::max_rank) fail(errc::corrupt_frame, "hello signature of rank " + std::to_string(rank));
    for (std::size_t i = 0; i < rank; ++i) {
      const std::uint32_t d = r.u32("signature dimension");
      if (d == 0) fail(errc::corrupt_frame, "hello signature dimension " + std::to_string(i) + " is zero");
      h.check.signature.push_back(d);
    }
  }
  r.expect_end("hello payload");
  return h;
}

/// Validates a HELLO frame and returns the model it names (the model check, if any, is read and
/// validated but not returned: see decode_hello_check).
inline ModelIdentity decode_hello(std::span<const std::byte> bytes, const DecodeLimits& limits = {}) {
  return decode_hello_check(bytes, limits).id;
}

// --- INFER -----------------------------------------------------------------------------------

/// Encodes an INFER frame: the request fields, then `x` through `codec` (quantized, packed,
/// compressed as the codec is configured).
inline std::span<const std::byte> encode_infer(std::vector<std::byte>& out, std::uint32_t request_id,
                                               const InferRequest& req, FeatureEncoder& codec, TensorView<const float> x) {
  begin_frame(out, MessageType::infer, request_id);
  ByteWriter w(out);
  detail::write_request(w, req);
  codec.append_tensor(x, out);
  return finish_frame(out);
}

/// An INFER frame validated up to its tensor data: what a server needs to decide whether it has
/// room for the request before it decodes (and allocates for) the features.
struct InferHeader {
  std::uint32_t request_id = 0;  ///< the frame's request id
  InferRequest request;  ///< model, split, deadline
  TensorHeader tensor;  ///< the features' validated header; its data is a view into the frame
};

/// Validates an INFER frame (frame, CRC, fields, the tensor header against the codec's limits,
/// no trailing bytes) without decoding the tensor data; `codec` keeps the quantization parameters
/// for decode_infer_features. The result views `bytes`, which must outlive it.
inline InferHeader read_infer(std::span<const std::byte> bytes, FeatureDecoder& codec) {
  const Frame f = detail::expect(bytes, MessageType::infer, codec.limits());
  ByteReader r(f.payload);
  InferHeader h;
  h.request_id = f.header.request_id;
  h.request = detail::read_request(r);
  h.tensor = codec.read_tensor_header(r);
  r.expect_end("infer payload");
  return h;
}

/// Decodes the features of an INFER frame read by read_infer with the same codec (nothing may be
/// read with it in between) into `features` (its capacity is reused).
inline void decode_infer_features(const InferHeader& h, FeatureDecoder& codec, Tensor<float>& features) {
  codec.decode_tensor_data(h.tensor, features);
}

/// Decodes an INFER frame; the features go into `features` (its capacity is reused).
inline InferRequest decode_infer(std::span<const std::byte> bytes, FeatureDecoder& codec, Tensor<float>& features,
                                 std::uint32_t* request_id = nullptr) {
  InferHeader h = read_infer(bytes, codec);
  decode_infer_features(h, codec, features);
  if (request_id) *request_id = h.request_id;
  return std::move(h.request);
}

// --- INFER_TENSORS (1.1) ----------------------------------------------------------------------

/// Most tensors one INFER_TENSORS frame carries (a cut through a graph crosses this many at most).
inline constexpr std::size_t max_feature_tensors = 64;
/// Longest feature tensor name (a graph's tensor names are at most this long).
inline constexpr std::size_t max_feature_name_bytes = 255;

/// Encodes an INFER_TENSORS frame: the request fields, then each named tensor through its own
/// codec (`codecs[k]` encodes `tensors[k]`: each tensor is quantized with its own range). The
/// tensors must share their batch. errc::invalid_argument for no tensors or more than
/// max_feature_tensors, unequal counts of names, tensors and codecs, an empty or over-long name,
/// or tensors whose batches differ. `codecs` is a random-access range of FeatureEncoder (or of
/// FeatureCodec), such as a std::vector of them.
template <std::ranges::random_access_range Encoders>
  requires std::derived_from<std::ranges::range_value_t<Encoders>, FeatureEncoder>
std::span<const std::byte> encode_infer_tensors(std::vector<std::byte>& out, std::uint32_t request_id,
                                                const InferRequest& req, Encoders&& codecs,
                                                std::span<const std::string> names,
                                                std::span<const TensorView<const float>> tensors) {
  if (tensors.empty() || tensors.size() > max_feature_tensors)
    fail(errc::invalid_argument, "an INFER_TENSORS frame carries 1 to " + std::to_string(max_feature_tensors) + " tensors");
  if (names.size() != tensors.size() || std::ranges::size(codecs) < tensors.size())
    fail(errc::invalid_argument, "encode_infer_tensors needs one name and one codec per tensor");
  for (std::size_t k = 0; k < tensors.size(); ++k) {
    if (names[k].empty()) fail(errc::invalid_argument, "a feature tensor needs a name");
    if (tensors[k].shape().rank() == 0 || tensors[k].shape().batch() != tensors[0].shape().batch())
      fail(errc::invalid_argument, "feature tensors '" + names[0] + "' and '" + names[k] + "' differ in batch");
  }
  begin_frame(out, MessageType::infer_tensors, request_id);
  ByteWriter w(out);
  detail::write_request(w, req);
  w.u8(static_cast<std::uint8_t>(tensors.size()));
  for (std::size_t k = 0; k < tensors.size(); ++k) {
    detail::write_string(w, names[k], max_feature_name_bytes, "feature tensor name");
    std::ranges::begin(codecs)[static_cast<std::ptrdiff_t>(k)].append_tensor(tensors[k], out);
  }
  return finish_frame(out);
}

/// An INFER_TENSORS frame validated up to its tensor data.
struct InferTensorsHeader {
  std::uint32_t request_id = 0;  ///< the frame's request id
  InferRequest request;          ///< model, split, deadline
  std::size_t count = 0;         ///< tensors in the frame
  std::size_t batch = 0;         ///< their common batch
  std::size_t width = 0;         ///< elements per sample over all tensors: the packed row's width
};

/// Validates an INFER_TENSORS frame (frame, CRC, fields, every tensor header against the codec's
/// limits, no trailing bytes) without decoding tensor data, calling `visit(k, name, header)` for
/// each tensor in order (`name` views `bytes`). errc::corrupt_frame for a count of 0 or over
/// max_feature_tensors, an empty or over-long name, or tensors whose batches differ;
/// errc::too_large when all tensors together exceed the codec's max_elements.
template <class Visit>
InferTensorsHeader read_infer_tensors(std::span<const std::byte> bytes, FeatureDecoder& codec, Visit&& visit) {
  const Frame f = detail::expect(bytes, MessageType::infer_tensors, codec.limits());
  ByteReader r(f.payload);
  InferTensorsHeader h;
  h.request_id = f.header.request_id;
  h.request = detail::read_request(r);
  h.count = r.u8("tensor count");
  if (h.count == 0 || h.count > max_feature_tensors)
    fail(errc::corrupt_frame, "INFER_TENSORS tensor count " + std::to_string(h.count) + " outside 1.." +
                                  std::to_string(max_feature_tensors));
  std::size_t total = 0;
  for (std::size_t k = 0; k < h.count; ++k) {
    const std::size_t n = r.u16("feature tensor name");
    if (n == 0 || n > max_feature_name_bytes)
      fail(errc::corrupt_frame, "feature tensor name of " + std::to_string(n) + " bytes outside 1.." +
                                    std::to_string(max_feature_name_bytes));
    const auto raw = r.bytes(n, "feature tensor name");
    const std::string_view name(reinterpret_cast<const char*>(raw.data()), n);
    const TensorHeader t = codec.read_tensor_header(r);
    if (k == 0) h.batch = t.shape.batch();
    if (t.shape.batch() != h.batch)
      fail(errc::corrupt_frame, "feature tensors differ in batch: " + std::to_string(h.batch) + " and " +
                                    std::to_string(t.shape.batch()));
    if (t.shape.count() > codec.limits().max_elements - total)
      fail(errc::too_large, "INFER_TENSORS tensors hold more than " + std::to_string(codec.limits().max_elements) +
                                " elements together");
    total += t.shape.count();
    h.width += t.shape.count() / h.batch;
    visit(k, name, t);
  }
  r.expect_end("infer_tensors payload");
  return h;
}

/// Decodes the tensors of an INFER_TENSORS frame side by side into `packed`, {batch, width}: row
/// i holds sample i of each tensor in turn, row-major within its part (the layout GraphLayer
/// reads). `scratch` holds one tensor at a time; the capacities of both are reused.
inline InferTensorsHeader decode_infer_tensors(std::span<const std::byte> bytes, FeatureDecoder& codec,
                                               Tensor<float>& scratch, Tensor<float>& packed) {
  const InferTensorsHeader h = read_infer_tensors(bytes, codec, [](std::size_t, std::string_view, const TensorHeader&) {});
  packed.resize(Shape{h.batch, h.width});
  const Frame f = parse_frame(bytes, codec.limits());
  ByteReader r(f.payload);
  (void)r.bytes(r.u16("model id"), "model id");  // every field was validated above
  (void)r.u16("split point");
  (void)r.u32("deadline");
  (void)r.u8("tensor count");
  std::size_t offset = 0;
  for (std::size_t k = 0; k < h.count; ++k) {
    (void)r.bytes(r.u16("feature tensor name"), "feature tensor name");
    codec.decode_tensor_data(codec.read_tensor_header(r), scratch);
    const std::size_t part = scratch.size() / h.batch;
    for (std::size_t i = 0; i < h.batch; ++i)
      std::copy_n(scratch.data() + i * part, part, packed.data() + i * h.width + offset);
    offset += part;
  }
  return h;
}

// --- RESPONSE --------------------------------------------------------------------------------

/// A RESPONSE frame: the status and timing fields, then the output tensor encoded by `codec`.
inline std::span<const std::byte> encode_response(std::vector<std::byte>& out, std::uint32_t request_id,
                                                  const InferResponse& resp, FeatureEncoder& codec,
                                                  TensorView<const float> y) {
  begin_frame(out, MessageType::response, request_id);
  ByteWriter w(out);
  w.u8(resp.status);
  w.u32(resp.queue_us);
  w.u32(resp.compute_us);
  codec.append_tensor(y, out);
  return finish_frame(out);
}

/// Validates a RESPONSE frame and decodes its tensor into `y`; typed errors for every malformed field.
inline InferResponse decode_response(std::span<const std::byte> bytes, FeatureDecoder& codec, Tensor<float>& y,
                                     std::uint32_t* request_id = nullptr) {
  const Frame f = detail::expect(bytes, MessageType::response, codec.limits());
  ByteReader r(f.payload);
  InferResponse resp;
  resp.status = r.u8("status");
  if (resp.status != 0) fail(errc::corrupt_frame, "unknown response status " + std::to_string(resp.status));
  resp.queue_us = r.u32("queue time");
  resp.compute_us = r.u32("compute time");
  codec.read_tensor(r, y);
  r.expect_end("response payload");
  if (request_id) *request_id = f.header.request_id;
  return resp;
}

// --- ERROR -----------------------------------------------------------------------------------

/// An ERROR frame answering `request_id` with a typed code and a (bounded) text.
inline std::span<const std::byte> encode_error(std::vector<std::byte>& out, std::uint32_t request_id, errc code,
                                               const std::string& message) {
  begin_frame(out, MessageType::error, request_id);
  ByteWriter w(out);
  w.u8(static_cast<std::uint8_t>(code));
  detail::write_string(w, message.substr(0, max_error_message_bytes), max_error_message_bytes, "error message");
  return finish_frame(out);
}

/// Validates an ERROR frame; an unknown error code is errc::corrupt_frame.
inline ErrorMessage decode_error(std::span<const std::byte> bytes, const DecodeLimits& limits = {}) {
  const Frame f = detail::expect(bytes, MessageType::error, limits);
  ByteReader r(f.payload);
  ErrorMessage e;
  const std::uint8_t code = r.u8("error code");
  if (edgesplit::to_string(static_cast<errc>(code)) == "unknown")
    fail(errc::corrupt_frame, "unknown error code " + std::to_string(code));
  e.code = static_cast<errc>(code);
  detail::read_string(r, e.message, max_error_message_bytes, "error message");
  r.expect_end("error payload");
  return e;
}

// --- WEIGHTS ---------------------------------------------------------------------------------

/// The name prefix of WEIGHTS tensors meant for the edge's Fallback model rather than its head:
/// `fallback/<parameter name>` (CloudServer::push_weights with a fallback model).
inline constexpr std::string_view fallback_weights_prefix = "fallback/";

/// One named tensor of a WEIGHTS message.
struct NamedTensor {
  std::string name;  ///< parameter name, e.g. "0.weight"
  Tensor<float> value;  ///< its values
};

/// Encodes a WEIGHTS frame: identity, then every tensor raw (weights are sent exactly).
inline std::span<const std::byte> encode_weights(std::vector<std::byte>& out, std::uint32_t request_id,
                                                 const ModelIdentity& id, std::span<const NamedTensor> tensors) {
  if (tensors.size() > max_weight_tensors) fail(errc::too_large, "too many tensors in one weights message");
  CodecConfig cfg;
  cfg.bits = raw_f32_bits;
  FeatureEncoder raw(cfg);
  begin_frame(out, MessageType::weights, request_id);
  ByteWriter w(out);
  detail::write_identity(w, id);
  w.u32(static_cast<std::uint32_t>(tensors.size()));
  for (const auto& t : tensors) {
    detail::write_string(w, t.name, max_weight_name_bytes, "weight name");
    raw.append_tensor(t.value.cview(), out);
  }
  return finish_frame(out);
}

/// Validates a WEIGHTS frame into `tensors` and returns the model they belong to; names, counts and sizes are
/// bounded.
inline ModelIdentity decode_weights(std::span<const std::byte> bytes, std::vector<NamedTensor>& tensors,
                                    const DecodeLimits& limits = {}) {
  const Frame f = detail::expect(bytes, MessageType::weights, limits);
  ByteReader r(f.payload);
  ModelIdentity id = detail::read_identity(r);
  const std::uint32_t count = r.u32("tensor count");
  if (count > max_weight_tensors) fail(errc::too_large, "weights message with " + std::to_string(count) + " tensors");
  FeatureDecoder raw(limits);  // decodes whatever encoding each tensor declares
  tensors.clear();
  for (std::uint32_t i = 0; i < count; ++i) {
    NamedTensor t;
    detail::read_string(r, t.name, max_weight_name_bytes, "weight name");
    raw.read_tensor(r, t.value);
    tensors.push_back(std::move(t));
  }
  r.expect_end("weights payload");
  return id;
}

// --- PING / PONG -----------------------------------------------------------------------------

/// A PING frame carrying the sender's timestamp, echoed by the PONG.
inline std::span<const std::byte> encode_ping(std::vector<std::byte>& out, std::uint32_t request_id,
                                              std::uint64_t timestamp, bool pong = false) {
  begin_frame(out, pong ? MessageType::pong : MessageType::ping, request_id);
  ByteWriter w(out);
  w.u32(static_cast<std::uint32_t>(timestamp));
  w.u32(static_cast<std::uint32_t>(timestamp >> 32));
  return finish_frame(out);
}

/// Decodes a PING or PONG frame and returns its timestamp.
inline std::uint64_t decode_ping(std::span<const std::byte> bytes, const DecodeLimits& limits = {}) {
  const Frame f = parse_frame(bytes, limits);
  if (f.header.type != MessageType::ping && f.header.type != MessageType::pong)
    fail(errc::corrupt_frame, "expected a ping or pong frame, got " + std::string(to_string(f.header.type)));
  ByteReader r(f.payload);
  const std::uint64_t lo = r.u32("timestamp");
  const std::uint64_t hi = r.u32("timestamp");
  r.expect_end("ping payload");
  return lo | (hi << 32);
}

}  // namespace edgesplit::wire
