// edgesplit/wire/oip_grpc.hpp - the messages of the Open Inference Protocol (KServe v2) over
// gRPC, as C++ structs, and their protobuf encoding.
//
// proto/grpc_service.proto is the schema (package `inference`, service GRPCInferenceService);
// this header reads and writes the same bytes protoc-generated classes do, with the protobuf
// codec of wire/protobuf.hpp, so that a gRPC server or client built on gRPC's generic API (raw
// byte buffers) needs no generated code and the library stays header-only.
//
// Decoding (decode(bytes, out, limits)) is for bytes from outside: it refuses what does not
// parse (errc::corrupt_frame: truncation, lengths past the end, bad varints, group or undefined
// wire types, field number 0, a known field with another wire type than its declared one, a
// `string` that is not UTF-8, a negative dimension in an inference tensor's shape, a dimension
// below -1 in metadata) and what is over the caller's limits (errc::too_large), and skips
// unknown fields of every wire type, as protobuf does. Protobuf's merge rules hold: a singular
// field sent twice keeps the last value, a repeated one appends, a map keeps the last value of
// a key, an embedded message sent twice is merged. Encoding writes proto3's canonical form
// (fields in number order, default values left out, repeated scalars packed, map entries with
// both key and value, sorted by key) and refuses (errc::invalid_argument) what decoding would
// refuse, so that any encoded message decodes to an equal one.
//
// The structs hold values only, not presence: an absent `contents` and an empty one decode the
// same, as do an absent string and an empty one.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/wire/protobuf.hpp"

/// The Open Inference Protocol's gRPC messages (proto/grpc_service.proto) and their encoding.
namespace edgesplit::wire::oip {

/// Caps a decoder enforces on bytes from outside (errc::too_large past any of them). The
/// defaults admit any request a realistic OIP client sends to a split-inference tail and keep
/// the memory a hostile message can make the decoder allocate near its own size.
struct DecodeLimits {
  /// Largest message, in bytes (gRPC's own default receive cap is 4 MiB; tensors in raw form
  /// are bounded by this).
  std::size_t max_message_bytes = std::size_t{64} << 20;
  /// Most entries of any repeated message or string list of one message: inputs, outputs,
  /// raw contents, model versions, server extensions, metadata tensors.
  std::size_t max_tensors = 64;
  /// Most dimensions in one shape.
  std::size_t max_dims = 16;
  /// Longest string field (names, data types, ids, versions, parameter keys and values), in
  /// bytes. Not the elements of bytes_contents, which are tensor data.
  std::size_t max_string_bytes = 4096;
  /// Most entries of one parameter map.
  std::size_t max_parameters = 64;
  /// Most tensor elements (typed `contents`, bytes_contents included) in one message, all
  /// tensors together: caps the memory a message of packed one-byte varints expands to.
  std::size_t max_elements = std::size_t{16} << 20;
  /// Most bytes the tensor data of one message may take once decoded (typed contents, raw
  /// contents), charged before it is allocated: with it, a receiver that reserves this much
  /// bounds what a message of one-byte elements (each a std::string or an int64 in memory) can
  /// cost. Packed FP32 or raw data take at most the bytes they came in.
  std::size_t max_decoded_bytes = std::size_t{256} << 20;
};

/// An inference parameter's value (message InferParameter, a oneof): none, bool (field 1),
/// int64 (2), string (3), double (4) or uint64 (5). The variant's index order is the
/// protocol's field order.
using InferParameter = std::variant<std::monostate, bool, std::int64_t, std::string, double, std::uint64_t>;

/// A parameter map (map<string, InferParameter>), sorted by key.
using Parameters = std::map<std::string, InferParameter>;

/// Tensor data in typed form (message InferTensorContents): one list per element type, the
/// flattened row-major elements of the tensor. A tensor uses one list or raw contents.
struct InferTensorContents {
  std::vector<bool> bool_contents;            ///< BOOL (field 1)
  std::vector<std::int32_t> int_contents;     ///< INT8, INT16, INT32 (field 2)
  std::vector<std::int64_t> int64_contents;   ///< INT64 (field 3)
  std::vector<std::uint32_t> uint_contents;   ///< UINT8, UINT16, UINT32 (field 4)
  std::vector<std::uint64_t> uint64_contents; ///< UINT64 (field 5)
  std::vector<float> fp32_contents;           ///< FP32 (field 6)
  std::vector<double> fp64_contents;          ///< FP64 (field 7)
  std::vector<std::string> bytes_contents;    ///< BYTES, one string of bytes per element (field 8)
  /// True when no list holds an element.
  bool empty() const noexcept {
    return bool_contents.empty() && int_contents.empty() && int64_contents.empty() && uint_contents.empty() &&
           uint64_contents.empty() && fp32_contents.empty() && fp64_contents.empty() && bytes_contents.empty();
  }
  bool operator==(const InferTensorContents&) const = default;  ///< element-wise (NaN != NaN)
};

/// A tensor of an inference request or response (InferInputTensor, InferOutputTensor).
struct InferTensor {
  std::string name;                  ///< tensor name (field 1)
  std::string datatype;              ///< OIP data type: "FP32", "INT64", "BYTES", ... (field 2)
  std::vector<std::int64_t> shape;   ///< dimensions, never negative (field 3)
  Parameters parameters;             ///< optional per-tensor parameters (field 4)
  InferTensorContents contents;      ///< typed data, when raw contents are not used (field 5)
  bool operator==(const InferTensor&) const = default;  ///< field by field
};

/// An output a request asks for (ModelInferRequest.InferRequestedOutputTensor).
struct RequestedOutput {
  std::string name;       ///< output name (field 1)
  Parameters parameters;  ///< optional parameters, e.g. "binary_data" (field 2)
  bool operator==(const RequestedOutput&) const = default;  ///< field by field
};

/// Reads little-endian FP32 values (raw tensor contents; also the HTTP binary data extension's
/// form) into `out`, `bytes.size() / 4` of them.
inline void read_fp32(std::span<const std::byte> bytes, float* out) noexcept {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(out, bytes.data(), bytes.size() / 4 * 4);
  } else {
    for (std::size_t i = 0; i < bytes.size() / 4; ++i) {
      std::uint32_t u = 0;
      for (int b = 3; b >= 0; --b) u = (u << 8) | std::to_integer<std::uint32_t>(bytes[4 * i + static_cast<std::size_t>(b)]);
      out[i] = std::bit_cast<float>(u);
    }
  }
}
/// Writes `values` as little-endian FP32 to `out` (4 bytes each).
inline void write_fp32(std::span<const float> values, void* out) noexcept {
  auto* to = static_cast<unsigned char*>(out);
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(to, values.data(), values.size() * sizeof(float));
  } else {
    for (std::size_t i = 0; i < values.size(); ++i) {
      const auto u = std::bit_cast<std::uint32_t>(values[i]);
      for (std::size_t b = 0; b < 4; ++b) to[4 * i + b] = static_cast<unsigned char>((u >> (8 * b)) & 0xff);
    }
  }
}

/// rpc ModelInfer's request.
struct ModelInferRequest {
  std::string model_name;     ///< model to run (field 1)
  std::string model_version;  ///< version; empty: the server chooses (field 2)
  std::string id;             ///< request id echoed by the response; may be empty (field 3)
  Parameters parameters;      ///< request parameters (field 4)
  std::vector<InferTensor> inputs;  ///< input tensors (field 5)
  std::vector<RequestedOutput> outputs;  ///< outputs asked for; empty: all (field 6)
  /// Raw tensor data, one entry per input in order, flattened row-major little-endian elements,
  /// used instead of typed contents (field 7).
  std::vector<std::vector<std::byte>> raw_input_contents;
  bool operator==(const ModelInferRequest&) const = default;  ///< field by field
};

/// rpc ModelInfer's response.
struct ModelInferResponse {
  std::string model_name;     ///< model that ran (field 1)
  std::string model_version;  ///< its version (field 2)
  std::string id;             ///< the request's id (field 3)
  Parameters parameters;      ///< response parameters (field 4)
  std::vector<InferTensor> outputs;  ///< output tensors (field 5)
  /// Raw tensor data, one entry per output in order (field 6).
  std::vector<std::vector<std::byte>> raw_output_contents;
  bool operator==(const ModelInferResponse&) const = default;  ///< field by field
};

/// rpc ServerLive's request: no fields.
struct ServerLiveRequest {
  bool operator==(const ServerLiveRequest&) const = default;  ///< always true
};
/// rpc ServerLive's response.
struct ServerLiveResponse {
  bool live = false;  ///< the server can receive and answer requests (field 1)
  bool operator==(const ServerLiveResponse&) const = default;  ///< field by field
};
/// rpc ServerReady's request: no fields.
struct ServerReadyRequest {
  bool operator==(const ServerReadyRequest&) const = default;  ///< always true
};
/// rpc ServerReady's response.
struct ServerReadyResponse {
  bool ready = false;  ///< the server is ready for inference (field 1)
  bool operator==(const ServerReadyResponse&) const = default;  ///< field by field
};
/// rpc ModelReady's request.
struct ModelReadyRequest {
  std::string name;     ///< model (field 1)
  std::string version;  ///< version; empty: the server chooses (field 2)
  bool operator==(const ModelReadyRequest&) const = default;  ///< field by field
};
/// rpc ModelReady's response.
struct ModelReadyResponse {
  bool ready = false;  ///< the model is ready for inference (field 1)
  bool operator==(const ModelReadyResponse&) const = default;  ///< field by field
};
/// rpc ServerMetadata's request: no fields.
struct ServerMetadataRequest {
  bool operator==(const ServerMetadataRequest&) const = default;  ///< always true
};
/// rpc ServerMetadata's response.
struct ServerMetadataResponse {
  std::string name;                     ///< server name (field 1)
  std::string version;                  ///< server version (field 2)
  std::vector<std::string> extensions;  ///< protocol extensions supported (field 3)
  bool operator==(const ServerMetadataResponse&) const = default;  ///< field by field
};
/// rpc ModelMetadata's request.
struct ModelMetadataRequest {
  std::string name;     ///< model (field 1)
  std::string version;  ///< version; empty: the server chooses (field 2)
  bool operator==(const ModelMetadataRequest&) const = default;  ///< field by field
};
/// A model input or output as metadata describes it (ModelMetadataResponse.TensorMetadata).
struct TensorMetadata {
  std::string name;                 ///< tensor name (field 1)
  std::string datatype;             ///< OIP data type (field 2)
  std::vector<std::int64_t> shape;  ///< dimensions; -1 for a variable one (field 3)
  bool operator==(const TensorMetadata&) const = default;  ///< field by field
};
/// rpc ModelMetadata's response.
struct ModelMetadataResponse {
  std::string name;                   ///< model (field 1)
  std::vector<std::string> versions;  ///< versions available (field 2)
  std::string platform;               ///< framework or backend, free text (field 3)
  std::vector<TensorMetadata> inputs;   ///< model inputs (field 4)
  std::vector<TensorMetadata> outputs;  ///< model outputs (field 5)
  bool operator==(const ModelMetadataResponse&) const = default;  ///< field by field
};

/// The fully qualified gRPC method names of the service, for a server on gRPC's generic API.
namespace method {
inline constexpr std::string_view server_live = "/inference.GRPCInferenceService/ServerLive";        ///< ServerLive
inline constexpr std::string_view server_ready = "/inference.GRPCInferenceService/ServerReady";      ///< ServerReady
inline constexpr std::string_view model_ready = "/inference.GRPCInferenceService/ModelReady";        ///< ModelReady
inline constexpr std::string_view server_metadata = "/inference.GRPCInferenceService/ServerMetadata";  ///< ServerMetadata
inline constexpr std::string_view model_metadata = "/inference.GRPCInferenceService/ModelMetadata";  ///< ModelMetadata
inline constexpr std::string_view model_infer = "/inference.GRPCInferenceService/ModelInfer";        ///< ModelInfer
}  // namespace method

namespace detail {

using pb::Reader;
using pb::Tag;
using pb::WireType;
using pb::Writer;

// ---- encoding ----

inline void check_utf8(std::string_view s, const char* field) {
  if (!pb::valid_utf8(s)) fail(errc::invalid_argument, std::string("OIP encode: ") + field + " is not valid UTF-8");
}

// A proto3 string field: left out when empty.
inline void put_string(Writer& w, std::uint32_t field, std::string_view s, const char* name) {
  check_utf8(s, name);
  if (!s.empty()) w.string_field(field, s);
}

inline void put_parameter(Writer& w, const InferParameter& p) {
  switch (p.index()) {
    case 1: w.bool_field(1, std::get<1>(p)); break;
    case 2: w.int64_field(2, std::get<2>(p)); break;
    case 3:
      check_utf8(std::get<3>(p), "parameter string_param");
      w.string_field(3, std::get<3>(p));
      break;
    case 4: w.double_field(4, std::get<4>(p)); break;
    case 5: w.uint64_field(5, std::get<5>(p)); break;
    default: break;  // monostate: no field
  }
}

inline void put_parameters(Writer& w, std::uint32_t field, const Parameters& params) {
  for (const auto& [key, value] : params) {
    check_utf8(key, "parameter key");
    const std::size_t entry = w.begin_message(field);
    w.string_field(1, key);
    const std::size_t v = w.begin_message(2);
    put_parameter(w, value);
    w.end_message(v);
    w.end_message(entry);
  }
}

inline void put_shape(Writer& w, std::uint32_t field, const std::vector<std::int64_t>& shape, std::int64_t min_dim) {
  for (std::int64_t d : shape)
    if (d < min_dim) fail(errc::invalid_argument, "OIP encode: shape dimension " + std::to_string(d) + " below " + std::to_string(min_dim));
  w.packed_varints(field, shape, [](std::int64_t d) { return static_cast<std::uint64_t>(d); });
}

inline void put_contents(Writer& w, std::uint32_t field, const InferTensorContents& c) {
  if (c.empty()) return;
  const std::size_t m = w.begin_message(field);
  w.packed_varints(1, c.bool_contents, [](bool b) { return std::uint64_t{b ? 1u : 0u}; });
  w.packed_varints(2, c.int_contents, [](std::int32_t v) { return static_cast<std::uint64_t>(static_cast<std::int64_t>(v)); });
  w.packed_varints(3, c.int64_contents, [](std::int64_t v) { return static_cast<std::uint64_t>(v); });
  w.packed_varints(4, c.uint_contents, [](std::uint32_t v) { return std::uint64_t{v}; });
  w.packed_varints(5, c.uint64_contents, [](std::uint64_t v) { return v; });
  w.packed_floats(6, c.fp32_contents);
  w.packed_doubles(7, c.fp64_contents);
  for (const std::string& b : c.bytes_contents) w.string_field(8, b);  // bytes: no UTF-8 rule
  w.end_message(m);
}

inline void put_tensor(Writer& w, std::uint32_t field, const InferTensor& t) {
  const std::size_t m = w.begin_message(field);
  put_string(w, 1, t.name, "tensor name");
  put_string(w, 2, t.datatype, "tensor datatype");
  put_shape(w, 3, t.shape, 0);
  put_parameters(w, 4, t.parameters);
  put_contents(w, 5, t.contents);
  w.end_message(m);
}

// ---- decoding ----

// What one decode may still spend, and the limits it started from.
struct Budget {
  const DecodeLimits& limits;
  std::size_t elements;
  std::size_t bytes;  // of decoded tensor data
  explicit Budget(const DecodeLimits& l) noexcept : limits(l), elements(l.max_elements), bytes(l.max_decoded_bytes) {}
  void spend_bytes(std::size_t n, const char* field) {
    if (n > bytes)
      fail(errc::too_large, std::string("OIP: ") + field + " would take more memory than the limit of " +
                                std::to_string(limits.max_decoded_bytes) + " bytes allows");
    bytes -= n;
  }
};

inline void read_string(Reader& r, Tag t, std::string& out, const Budget& b, const char* field) {
  Reader::expect(t, WireType::len, field);
  const auto s = r.bytes(field);
  if (s.size() > b.limits.max_string_bytes)
    fail(errc::too_large, std::string("OIP: ") + field + " of " + std::to_string(s.size()) + " bytes over the limit of " +
                              std::to_string(b.limits.max_string_bytes));
  out.assign(reinterpret_cast<const char*>(s.data()), s.size());
  if (!pb::valid_utf8(out)) fail(errc::corrupt_frame, std::string("OIP: ") + field + " is not valid UTF-8");
}

inline bool read_bool(Reader& r, Tag t, const char* field) {
  Reader::expect(t, WireType::varint, field);
  return r.varint(field) != 0;
}

// One more entry of a repeated message or string list, under max_tensors.
template <class V>
void count_entry(const V& list, const Budget& b, const char* field) {
  if (list.size() >= b.limits.max_tensors)
    fail(errc::too_large, std::string("OIP: more than ") + std::to_string(b.limits.max_tensors) + " " + field);
}

inline void read_parameter(std::span<const std::byte> bytes, InferParameter& p, const Budget& b) {
  Reader r(bytes);
  while (!r.at_end()) {
    const Tag t = r.tag();
    switch (t.field) {
      case 1: p = read_bool(r, t, "bool_param"); break;
      case 2:
        Reader::expect(t, WireType::varint, "int64_param");
        p = static_cast<std::int64_t>(r.varint("int64_param"));
        break;
      case 3: {
        std::string s;
        read_string(r, t, s, b, "string_param");
        p = std::move(s);
        break;
      }
      case 4:
        Reader::expect(t, WireType::fixed64, "double_param");
        p = std::bit_cast<double>(r.fixed64("double_param"));
        break;
      case 5:
        Reader::expect(t, WireType::varint, "uint64_param");
        p = r.varint("uint64_param");
        break;
      default: r.skip(t.type);
    }
  }
}

// One map entry (key = 1, value = 2); a key sent again replaces the value, as protobuf does.
inline void read_parameter_entry(Reader& parent, Tag t, Parameters& params, const Budget& b) {
  Reader::expect(t, WireType::len, "parameters");
  Reader r(parent.bytes("parameters"));
  std::string key;
  InferParameter value;
  while (!r.at_end()) {
    const Tag e = r.tag();
    if (e.field == 1) {
      read_string(r, e, key, b, "parameter key");
    } else if (e.field == 2) {
      Reader::expect(e, WireType::len, "parameter value");
      read_parameter(r.bytes("parameter value"), value, b);  // merged, as a message sent twice is
    } else {
      r.skip(e.type);
    }
  }
  const auto it = params.find(key);
  if (it != params.end()) {
    it->second = std::move(value);
    return;
  }
  if (params.size() >= b.limits.max_parameters)
    fail(errc::too_large, "OIP: more than " + std::to_string(b.limits.max_parameters) + " parameters");
  params.emplace(std::move(key), std::move(value));
}

inline void read_shape(Reader& r, Tag t, std::vector<std::int64_t>& shape, const Budget& b, std::int64_t min_dim) {
  std::size_t room = shape.size() < b.limits.max_dims ? b.limits.max_dims - shape.size() : 0;
  const std::size_t before = shape.size();
  try {
    pb::read_repeated(r, t, WireType::varint, shape, room, "shape",
                      [](Reader& in) { return static_cast<std::int64_t>(in.varint("shape")); });
  } catch (const error& e) {
    if (e.code() == errc::too_large)
      fail(errc::too_large, "OIP: a shape of more than " + std::to_string(b.limits.max_dims) + " dimensions");
    throw;
  }
  for (std::size_t i = before; i < shape.size(); ++i)
    if (shape[i] < min_dim)
      fail(errc::corrupt_frame, "OIP: shape dimension " + std::to_string(shape[i]) + (min_dim == 0 ? " is negative" : " below -1"));
}

inline void read_contents(std::span<const std::byte> bytes, InferTensorContents& c, Budget& b) {
  Reader r(bytes);
  while (!r.at_end()) {
    const Tag t = r.tag();
    switch (t.field) {
      case 1:
        pb::read_repeated(r, t, WireType::varint, c.bool_contents, b.elements, "bool_contents",
                          [](Reader& in) { return in.varint("bool_contents") != 0; }, &b.bytes);
        break;
      case 2:
        pb::read_repeated(r, t, WireType::varint, c.int_contents, b.elements, "int_contents", [](Reader& in) {
          return static_cast<std::int32_t>(static_cast<std::uint32_t>(in.varint("int_contents")));
        }, &b.bytes);
        break;
      case 3:
        pb::read_repeated(r, t, WireType::varint, c.int64_contents, b.elements, "int64_contents",
                          [](Reader& in) { return static_cast<std::int64_t>(in.varint("int64_contents")); }, &b.bytes);
        break;
      case 4:
        pb::read_repeated(r, t, WireType::varint, c.uint_contents, b.elements, "uint_contents",
                          [](Reader& in) { return static_cast<std::uint32_t>(in.varint("uint_contents")); }, &b.bytes);
        break;
      case 5:
        pb::read_repeated(r, t, WireType::varint, c.uint64_contents, b.elements, "uint64_contents",
                          [](Reader& in) { return in.varint("uint64_contents"); }, &b.bytes);
        break;
      case 6:
        pb::read_repeated(r, t, WireType::fixed32, c.fp32_contents, b.elements, "fp32_contents",
                          [](Reader& in) { return std::bit_cast<float>(in.fixed32("fp32_contents")); }, &b.bytes);
        break;
      case 7:
        pb::read_repeated(r, t, WireType::fixed64, c.fp64_contents, b.elements, "fp64_contents",
                          [](Reader& in) { return std::bit_cast<double>(in.fixed64("fp64_contents")); }, &b.bytes);
        break;
      case 8: {
        Reader::expect(t, WireType::len, "bytes_contents");
        const auto s = r.bytes("bytes_contents");
        if (b.elements == 0) fail(errc::too_large, "OIP: bytes_contents has more elements than the limit allows");
        --b.elements;
        b.spend_bytes(2 * sizeof(std::string) + s.size(), "bytes_contents");
        c.bytes_contents.emplace_back(reinterpret_cast<const char*>(s.data()), s.size());
        break;
      }
      default: r.skip(t.type);
    }
  }
}

inline void read_tensor(std::span<const std::byte> bytes, InferTensor& x, Budget& b) {
  Reader r(bytes);
  while (!r.at_end()) {
    const Tag t = r.tag();
    switch (t.field) {
      case 1: read_string(r, t, x.name, b, "tensor name"); break;
      case 2: read_string(r, t, x.datatype, b, "tensor datatype"); break;
      case 3: read_shape(r, t, x.shape, b, 0); break;
      case 4: read_parameter_entry(r, t, x.parameters, b); break;
      case 5:
        Reader::expect(t, WireType::len, "contents");
        read_contents(r.bytes("contents"), x.contents, b);
        break;
      default: r.skip(t.type);
    }
  }
}

inline void read_raw(Reader& r, Tag t, std::vector<std::vector<std::byte>>& out, Budget& b, const char* field) {
  Reader::expect(t, WireType::len, field);
  count_entry(out, b, field);
  const auto s = r.bytes(field);
  b.spend_bytes(s.size(), field);
  out.emplace_back(s.begin(), s.end());
}

inline void check_size(std::span<const std::byte> bytes, const DecodeLimits& limits, const char* what) {
  if (bytes.size() > limits.max_message_bytes)
    fail(errc::too_large, std::string("OIP: ") + what + " of " + std::to_string(bytes.size()) + " bytes over the limit of " +
                              std::to_string(limits.max_message_bytes));
}

// A message of fields that are all skipped (the requests without fields): checks that it parses.
inline void read_empty(std::span<const std::byte> bytes, const DecodeLimits& limits, const char* what) {
  check_size(bytes, limits, what);
  Reader r(bytes);
  while (!r.at_end()) r.skip(r.tag().type);
}

// A message of one bool field 1 (the liveness and readiness responses).
inline bool read_bool_message(std::span<const std::byte> bytes, const DecodeLimits& limits, const char* what) {
  check_size(bytes, limits, what);
  Reader r(bytes);
  bool v = false;
  while (!r.at_end()) {
    const Tag t = r.tag();
    if (t.field == 1)
      v = read_bool(r, t, what);
    else
      r.skip(t.type);
  }
  return v;
}

// A message of name = 1 and version = 2 (ModelReadyRequest, ModelMetadataRequest).
inline void read_name_version(std::span<const std::byte> bytes, std::string& name, std::string& version,
                              const DecodeLimits& limits, const char* what) {
  check_size(bytes, limits, what);
  Budget b(limits);
  name.clear();
  version.clear();
  Reader r(bytes);
  while (!r.at_end()) {
    const Tag t = r.tag();
    if (t.field == 1)
      read_string(r, t, name, b, "name");
    else if (t.field == 2)
      read_string(r, t, version, b, "version");
    else
      r.skip(t.type);
  }
}

inline void read_string_list(Reader& r, Tag t, std::vector<std::string>& out, const Budget& b, const char* field) {
  count_entry(out, b, field);
  std::string s;
  read_string(r, t, s, b, field);
  out.push_back(std::move(s));
}

// The fields ModelInfer's request and response share: model_name (1), model_version (2), id (3)
// and parameters (4). True when `t` was one of them (and has been read).
template <class Message>
bool read_infer_common(Reader& r, Tag t, Message& out, const Budget& b) {
  switch (t.field) {
    case 1: read_string(r, t, out.model_name, b, "model_name"); return true;
    case 2: read_string(r, t, out.model_version, b, "model_version"); return true;
    case 3: read_string(r, t, out.id, b, "id"); return true;
    case 4: read_parameter_entry(r, t, out.parameters, b); return true;
    default: return false;
  }
}

inline void read_metadata_tensor(std::span<const std::byte> bytes, TensorMetadata& x, const Budget& b) {
  Reader r(bytes);
  while (!r.at_end()) {
    const Tag t = r.tag();
    switch (t.field) {
      case 1: read_string(r, t, x.name, b, "tensor name"); break;
      case 2: read_string(r, t, x.datatype, b, "tensor datatype"); break;
      case 3: read_shape(r, t, x.shape, b, -1); break;
      default: r.skip(t.type);
    }
  }
}

}  // namespace detail

// ---- encode: every message, into `out` (cleared first; its capacity is reused) ----

/// Encodes a ServerLive request (no fields: zero bytes).
inline void encode(const ServerLiveRequest&, std::vector<std::byte>& out) { out.clear(); }
/// Encodes a ServerReady request (no fields: zero bytes).
inline void encode(const ServerReadyRequest&, std::vector<std::byte>& out) { out.clear(); }
/// Encodes a ServerMetadata request (no fields: zero bytes).
inline void encode(const ServerMetadataRequest&, std::vector<std::byte>& out) { out.clear(); }

/// Encodes a ServerLive response.
inline void encode(const ServerLiveResponse& m, std::vector<std::byte>& out) {
  out.clear();
  if (m.live) pb::Writer(out).bool_field(1, true);
}
/// Encodes a ServerReady response.
inline void encode(const ServerReadyResponse& m, std::vector<std::byte>& out) {
  out.clear();
  if (m.ready) pb::Writer(out).bool_field(1, true);
}
/// Encodes a ModelReady response.
inline void encode(const ModelReadyResponse& m, std::vector<std::byte>& out) {
  out.clear();
  if (m.ready) pb::Writer(out).bool_field(1, true);
}

/// Encodes a ModelReady request.
inline void encode(const ModelReadyRequest& m, std::vector<std::byte>& out) {
  out.clear();
  pb::Writer w(out);
  detail::put_string(w, 1, m.name, "name");
  detail::put_string(w, 2, m.version, "version");
}
/// Encodes a ModelMetadata request.
inline void encode(const ModelMetadataRequest& m, std::vector<std::byte>& out) {
  out.clear();
  pb::Writer w(out);
  detail::put_string(w, 1, m.name, "name");
  detail::put_string(w, 2, m.version, "version");
}

/// Encodes a ServerMetadata response.
inline void encode(const ServerMetadataResponse& m, std::vector<std::byte>& out) {
  out.clear();
  pb::Writer w(out);
  detail::put_string(w, 1, m.name, "name");
  detail::put_string(w, 2, m.version, "version");
  for (const std::string& e : m.extensions) {
    detail::check_utf8(e, "extension");
    w.string_field(3, e);
  }
}

/// Encodes a ModelMetadata response. Shapes may hold -1 (a variable dimension), nothing lower.
inline void encode(const ModelMetadataResponse& m, std::vector<std::byte>& out) {
  out.clear();
  pb::Writer w(out);
  detail::put_string(w, 1, m.name, "name");
  for (const std::string& v : m.versions) {
    detail::check_utf8(v, "version");
    w.string_field(2, v);
  }
  detail::put_string(w, 3, m.platform, "platform");
  for (std::uint32_t field : {4u, 5u})
    for (const TensorMetadata& t : field == 4 ? m.inputs : m.outputs) {
      const std::size_t mark = w.begin_message(field);
      detail::put_string(w, 1, t.name, "tensor name");
      detail::put_string(w, 2, t.datatype, "tensor datatype");
      detail::put_shape(w, 3, t.shape, -1);
      w.end_message(mark);
    }
}

namespace detail {
// The fields ModelInfer's request and response share, model_name (1), model_version (2), id (3)
// and parameters (4): the writing twin of read_infer_common.
template <class Message>
void put_infer_common(pb::Writer& w, const Message& m) {
  put_string(w, 1, m.model_name, "model_name");
  put_string(w, 2, m.model_version, "model_version");
  put_string(w, 3, m.id, "id");
  put_parameters(w, 4, m.parameters);
}
}  // namespace detail

/// Encodes a ModelInfer request: what an edge client sends. Shapes must not be negative.
inline void encode(const ModelInferRequest& m, std::vector<std::byte>& out) {
  out.clear();
  pb::Writer w(out);
  detail::put_infer_common(w, m);
  for (const InferTensor& t : m.inputs) detail::put_tensor(w, 5, t);
  for (const RequestedOutput& o : m.outputs) {
    const std::size_t mark = w.begin_message(6);
    detail::put_string(w, 1, o.name, "output name");
    detail::put_parameters(w, 2, o.parameters);
    w.end_message(mark);
  }
  for (const auto& raw : m.raw_input_contents) w.bytes_field(7, raw);
}

/// Encodes a ModelInfer response: what a server sends back. Shapes must not be negative.
inline void encode(const ModelInferResponse& m, std::vector<std::byte>& out) {
  out.clear();
  pb::Writer w(out);
  detail::put_infer_common(w, m);
  for (const InferTensor& t : m.outputs) detail::put_tensor(w, 5, t);
  for (const auto& raw : m.raw_output_contents) w.bytes_field(6, raw);
}

/// Encodes any message of this header into a new byte vector.
template <class Message>
std::vector<std::byte> encode(const Message& m) {
  std::vector<std::byte> out;
  encode(m, out);
  return out;
}

// ---- decode: every message, from untrusted bytes into `out` (replaced) ----

/// Decodes a ServerLive request (checks that the bytes parse; unknown fields are skipped).
inline void decode(std::span<const std::byte> bytes, ServerLiveRequest&, const DecodeLimits& limits = {}) {
  detail::read_empty(bytes, limits, "ServerLiveRequest");
}
/// Decodes a ServerReady request (checks that the bytes parse).
inline void decode(std::span<const std::byte> bytes, ServerReadyRequest&, const DecodeLimits& limits = {}) {
  detail::read_empty(bytes, limits, "ServerReadyRequest");
}
/// Decodes a ServerMetadata request (checks that the bytes parse).
inline void decode(std::span<const std::byte> bytes, ServerMetadataRequest&, const DecodeLimits& limits = {}) {
  detail::read_empty(bytes, limits, "ServerMetadataRequest");
}
/// Decodes a ServerLive response.
inline void decode(std::span<const std::byte> bytes, ServerLiveResponse& out, const DecodeLimits& limits = {}) {
  out.live = detail::read_bool_message(bytes, limits, "ServerLiveResponse");
}
/// Decodes a ServerReady response.
inline void decode(std::span<const std::byte> bytes, ServerReadyResponse& out, const DecodeLimits& limits = {}) {
  out.ready = detail::read_bool_message(bytes, limits, "ServerReadyResponse");
}
/// Decodes a ModelReady response.
inline void decode(std::span<const std::byte> bytes, ModelReadyResponse& out, const DecodeLimits& limits = {}) {
  out.ready = detail::read_bool_message(bytes, limits, "ModelReadyResponse");
}
/// Decodes a ModelReady request.
inline void decode(std::span<const std::byte> bytes, ModelReadyRequest& out, const DecodeLimits& limits = {}) {
  detail::read_name_version(bytes, out.name, out.version, limits, "ModelReadyRequest");
}
/// Decodes a ModelMetadata request.
inline void decode(std::span<const std::byte> bytes, ModelMetadataRequest& out, const DecodeLimits& limits = {}) {
  detail::read_name_version(bytes, out.name, out.version, limits, "ModelMetadataRequest");
}

/// Decodes a ServerMetadata response.
inline void decode(std::span<const std::byte> bytes, ServerMetadataResponse& out, const DecodeLimits& limits = {}) {
  detail::check_size(bytes, limits, "ServerMetadataResponse");
  out = {};
  const detail::Budget b(limits);
  pb::Reader r(bytes);
  while (!r.at_end()) {
    const pb::Tag t = r.tag();
    switch (t.field) {
      case 1: detail::read_string(r, t, out.name, b, "name"); break;
      case 2: detail::read_string(r, t, out.version, b, "version"); break;
      case 3: detail::read_string_list(r, t, out.extensions, b, "extensions"); break;
      default: r.skip(t.type);
    }
  }
}

/// Decodes a ModelMetadata response (shapes may hold -1, nothing lower).
inline void decode(std::span<const std::byte> bytes, ModelMetadataResponse& out, const DecodeLimits& limits = {}) {
  detail::check_size(bytes, limits, "ModelMetadataResponse");
  out = {};
  const detail::Budget b(limits);
  pb::Reader r(bytes);
  while (!r.at_end()) {
    const pb::Tag t = r.tag();
    switch (t.field) {
      case 1: detail::read_string(r, t, out.name, b, "name"); break;
      case 2: detail::read_string_list(r, t, out.versions, b, "versions"); break;
      case 3: detail::read_string(r, t, out.platform, b, "platform"); break;
      case 4:
      case 5: {
        auto& list = t.field == 4 ? out.inputs : out.outputs;
        pb::Reader::expect(t, pb::WireType::len, t.field == 4 ? "inputs" : "outputs");
        detail::count_entry(list, b, t.field == 4 ? "inputs" : "outputs");
        detail::read_metadata_tensor(r.bytes("tensor metadata"), list.emplace_back(), b);
        break;
      }
      default: r.skip(t.type);
    }
  }
}

/// Decodes a ModelInfer request: what a server receives. Refuses negative shape dimensions;
/// whether the shapes, data types and contents suit the model is the server's to check.
inline void decode(std::span<const std::byte> bytes, ModelInferRequest& out, const DecodeLimits& limits = {}) {
  detail::check_size(bytes, limits, "ModelInferRequest");
  out = {};
  detail::Budget b(limits);
  pb::Reader r(bytes);
  while (!r.at_end()) {
    const pb::Tag t = r.tag();
    if (detail::read_infer_common(r, t, out, b)) continue;
    switch (t.field) {
      case 5:
        pb::Reader::expect(t, pb::WireType::len, "inputs");
        detail::count_entry(out.inputs, b, "inputs");
        detail::read_tensor(r.bytes("inputs"), out.inputs.emplace_back(), b);
        break;
      case 6: {
        pb::Reader::expect(t, pb::WireType::len, "outputs");
        detail::count_entry(out.outputs, b, "outputs");
        pb::Reader o(r.bytes("outputs"));
        RequestedOutput& x = out.outputs.emplace_back();
        while (!o.at_end()) {
          const pb::Tag e = o.tag();
          if (e.field == 1)
            detail::read_string(o, e, x.name, b, "output name");
          else if (e.field == 2)
            detail::read_parameter_entry(o, e, x.parameters, b);
          else
            o.skip(e.type);
        }
        break;
      }
      case 7: detail::read_raw(r, t, out.raw_input_contents, b, "raw_input_contents"); break;
      default: r.skip(t.type);
    }
  }
}

/// Decodes a ModelInfer response: what an edge client receives. Refuses negative dimensions.
inline void decode(std::span<const std::byte> bytes, ModelInferResponse& out, const DecodeLimits& limits = {}) {
  detail::check_size(bytes, limits, "ModelInferResponse");
  out = {};
  detail::Budget b(limits);
  pb::Reader r(bytes);
  while (!r.at_end()) {
    const pb::Tag t = r.tag();
    if (detail::read_infer_common(r, t, out, b)) continue;
    switch (t.field) {
      case 5:
        pb::Reader::expect(t, pb::WireType::len, "outputs");
        detail::count_entry(out.outputs, b, "outputs");
        detail::read_tensor(r.bytes("outputs"), out.outputs.emplace_back(), b);
        break;
      case 6: detail::read_raw(r, t, out.raw_output_contents, b, "raw_output_contents"); break;
      default: r.skip(t.type);
    }
  }
}

/// Decodes `bytes` as a `Message` and returns it: decode_as<ModelInferRequest>(bytes).
template <class Message>
Message decode_as(std::span<const std::byte> bytes, const DecodeLimits& limits = {}) {
  Message m;
  decode(bytes, m, limits);
  return m;
}

}  // namespace edgesplit::wire::oip
