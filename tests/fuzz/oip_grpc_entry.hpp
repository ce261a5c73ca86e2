// The OIP-over-gRPC decode entry shared by the libFuzzer target (fuzz_oip_grpc.cpp) and the
// test suite, which replays the seed corpus in tests/corpus-oip-grpc/ through it on every run.
//
// One input is decoded as every message of wire/oip_grpc.hpp (protobuf bytes carry no type: a
// gRPC server knows it from the method name). Whatever decodes is encoded again, decoded again
// and encoded once more: both encodings must be the same bytes (encode is canonical, so this is
// decode(encode(x)) == x, NaN payloads included), and the decoded message must respect the
// limits it was decoded under. Anything else than an edgesplit::error aborts.
//
// The seed corpus is written by the test case "Generate the OIP gRPC fuzz seed corpus"
// (tests/test_wire.cpp, hidden tag [.generate-oip-grpc-corpus]) from sample_messages() below;
// tests/oip_grpc_codec_tool.cpp uses the same samples for the protobuf cross-check.
#pragma once

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "edgesplit/wire/oip_grpc.hpp"

namespace edgesplit_fuzz {

/// Caps small enough that no input can exhaust a fuzzer's memory.
inline edgesplit::wire::oip::DecodeLimits oip_fuzz_limits() {
  edgesplit::wire::oip::DecodeLimits l;
  l.max_message_bytes = std::size_t{1} << 20;
  l.max_tensors = 16;
  l.max_dims = 8;
  l.max_string_bytes = 256;
  l.max_parameters = 16;
  l.max_elements = std::size_t{1} << 18;
  return l;
}

/// The message kinds, in the order of the bits of OipOutcome::decoded.
inline constexpr const char* oip_kinds[] = {
    "server_live_request",     "server_live_response",    "server_ready_request",   "server_ready_response",
    "model_ready_request",     "model_ready_response",    "server_metadata_request", "server_metadata_response",
    "model_metadata_request",  "model_metadata_response", "model_infer_request",    "model_infer_response",
};

/// Index of `kind` in oip_kinds, or -1.
inline int oip_kind_index(const std::string& kind) {
  for (int i = 0; i < static_cast<int>(std::size(oip_kinds)); ++i)
    if (kind == oip_kinds[i]) return i;
  return -1;
}

/// Which message kinds an input decoded as: bit i for oip_kinds[i].
struct OipOutcome {
  unsigned decoded = 0;
  /// True when the input decoded as `kind`.
  bool as(const std::string& kind) const {
    const int i = oip_kind_index(kind);
    return i >= 0 && ((decoded >> i) & 1u) != 0;
  }
};

namespace detail {

namespace oip = edgesplit::wire::oip;

inline void check_parameters(const oip::Parameters& p) {
  if (p.size() > oip_fuzz_limits().max_parameters) std::abort();
  for (const auto& [k, v] : p) {
    if (k.size() > oip_fuzz_limits().max_string_bytes) std::abort();
    if (v.index() == 3 && std::get<3>(v).size() > oip_fuzz_limits().max_string_bytes) std::abort();
  }
}

inline void check_shape(const std::vector<std::int64_t>& shape, std::int64_t min_dim) {
  if (shape.size() > oip_fuzz_limits().max_dims) std::abort();
  for (std::int64_t d : shape)
    if (d < min_dim) std::abort();
}

inline std::size_t elements(const oip::InferTensorContents& c) {
  return c.bool_contents.size() + c.int_contents.size() + c.int64_contents.size() + c.uint_contents.size() +
         c.uint64_contents.size() + c.fp32_contents.size() + c.fp64_contents.size() + c.bytes_contents.size();
}

// The promises a decoded message keeps under oip_fuzz_limits().
inline void check_limits(const oip::ModelInferRequest& m) {
  const auto l = oip_fuzz_limits();
  if (m.inputs.size() > l.max_tensors || m.outputs.size() > l.max_tensors || m.raw_input_contents.size() > l.max_tensors) std::abort();
  check_parameters(m.parameters);
  std::size_t n = 0;
  for (const auto& t : m.inputs) {
    check_shape(t.shape, 0);
    check_parameters(t.parameters);
    n += elements(t.contents);
  }
  for (const auto& o : m.outputs) check_parameters(o.parameters);
  if (n > l.max_elements) std::abort();
}
inline void check_limits(const oip::ModelInferResponse& m) {
  const auto l = oip_fuzz_limits();
  if (m.outputs.size() > l.max_tensors || m.raw_output_contents.size() > l.max_tensors) std::abort();
  check_parameters(m.parameters);
  std::size_t n = 0;
  for (const auto& t : m.outputs) {
    check_shape(t.shape, 0);
    check_parameters(t.parameters);
    n += elements(t.contents);
  }
  if (n > l.max_elements) std::abort();
}
inline void check_limits(const oip::ModelMetadataResponse& m) {
  const auto l = oip_fuzz_limits();
  if (m.versions.size() > l.max_tensors || m.inputs.size() > l.max_tensors || m.outputs.size() > l.max_tensors) std::abort();
  for (const auto& t : m.inputs) check_shape(t.shape, -1);
  for (const auto& t : m.outputs) check_shape(t.shape, -1);
}
inline void check_limits(const oip::ServerMetadataResponse& m) {
  if (m.extensions.size() > oip_fuzz_limits().max_tensors) std::abort();
}
template <class Message>
void check_limits(const Message&) {}

// Decodes `bytes` as a `Message`; when that works, checks the limits and that encoding is
// stable: encode(decode(encode(decode(bytes)))) == encode(decode(bytes)).
template <class Message>
bool round_trip(std::span<const std::byte> bytes) {
  static std::vector<std::byte> first, second;
  Message m;
  try {
    oip::decode(bytes, m, oip_fuzz_limits());
  } catch (const edgesplit::error&) {
    return false;
  }
  check_limits(m);
  try {
    oip::encode(m, first);
    Message again;
    // The canonical form may be a little longer than the input (a map entry sent without key or
    // value is written with both), so the size cap is lifted; every other limit counts things
    // re-encoding never adds.
    auto limits = oip_fuzz_limits();
    limits.max_message_bytes = std::numeric_limits<std::size_t>::max();
    oip::decode(first, again, limits);
    oip::encode(again, second);
  } catch (...) {
    std::abort();  // a decoded message must encode, and its encoding must decode
  }
  if (first != second) std::abort();
  return true;
}

}  // namespace detail

/// Decodes `input` as every OIP message kind, re-encoding what decodes (see the top of the file).
inline OipOutcome decode_oip_grpc(std::span<const std::byte> input) {
  namespace oip = edgesplit::wire::oip;
  using detail::round_trip;
  const bool ok[] = {
      round_trip<oip::ServerLiveRequest>(input),      round_trip<oip::ServerLiveResponse>(input),
      round_trip<oip::ServerReadyRequest>(input),     round_trip<oip::ServerReadyResponse>(input),
      round_trip<oip::ModelReadyRequest>(input),      round_trip<oip::ModelReadyResponse>(input),
      round_trip<oip::ServerMetadataRequest>(input),  round_trip<oip::ServerMetadataResponse>(input),
      round_trip<oip::ModelMetadataRequest>(input),   round_trip<oip::ModelMetadataResponse>(input),
      round_trip<oip::ModelInferRequest>(input),      round_trip<oip::ModelInferResponse>(input),
  };
  OipOutcome o;
  for (std::size_t i = 0; i < std::size(ok); ++i) o.decoded |= ok[i] ? (1u << i) : 0u;
  return o;
}

// ---- sample messages: the corpus seeds, the tests' round trips, the protobuf cross-check ----

/// `n` bytes of a float tensor's raw contents (values i * 0.5, little-endian).
inline std::vector<std::byte> oip_sample_raw_floats(std::size_t n) {
  std::vector<std::byte> raw;
  for (std::size_t i = 0; i < n; ++i) {
    const auto bits = std::bit_cast<std::uint32_t>(static_cast<float>(i) * 0.5f);
    for (int k = 0; k < 4; ++k) raw.push_back(std::byte((bits >> (8 * k)) & 0xFF));
  }
  return raw;
}

/// A request an edge client sends: three inputs in typed form (FP32, INT64, INT8), parameters of
/// every kind, requested outputs with and without parameters.
inline edgesplit::wire::oip::ModelInferRequest oip_sample_request() {
  namespace oip = edgesplit::wire::oip;
  oip::ModelInferRequest r;
  r.model_name = "resnet-tail";
  r.model_version = "3";
  r.id = "req-0042";
  r.parameters["priority"] = std::int64_t{-7};
  r.parameters["sequence_start"] = true;
  r.parameters["tag"] = std::string("édge → cloud");
  r.parameters["timeout_s"] = 0.25;
  r.parameters["big"] = std::numeric_limits<std::uint64_t>::max();
  r.parameters["unset"] = std::monostate{};
  oip::InferTensor x;
  x.name = "features";
  x.datatype = "FP32";
  x.shape = {2, 3, 40};
  for (int i = 0; i < 240; ++i) x.contents.fp32_contents.push_back(static_cast<float>(i) * 0.125f - 3.0f);
  x.parameters["binary_data_size"] = std::int64_t{960};
  r.inputs.push_back(x);
  oip::InferTensor ids;
  ids.name = "token_ids";
  ids.datatype = "INT64";
  ids.shape = {1, 4};
  ids.contents.int64_contents = {0, -1, std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()};
  r.inputs.push_back(ids);
  oip::InferTensor small;
  small.name = "flags";
  small.datatype = "INT8";
  small.shape = {3};
  small.contents.int_contents = {-128, 0, 127};
  r.inputs.push_back(small);
  r.outputs.push_back({"logits", {{"binary_data", true}}});
  r.outputs.push_back({"probabilities", {}});
  return r;
}

/// The same request with its inputs as raw contents (what a performance-minded client sends).
inline edgesplit::wire::oip::ModelInferRequest oip_sample_raw_request() {
  namespace oip = edgesplit::wire::oip;
  oip::ModelInferRequest r;
  r.model_name = "resnet-tail";
  r.id = "raw-1";
  oip::InferTensor x;
  x.name = "features";
  x.datatype = "FP32";
  x.shape = {1, 64};
  r.inputs.push_back(x);
  r.raw_input_contents.push_back(oip_sample_raw_floats(64));
  return r;
}

/// A response a server sends: typed outputs of every content list and one raw output.
inline edgesplit::wire::oip::ModelInferResponse oip_sample_response() {
  namespace oip = edgesplit::wire::oip;
  oip::ModelInferResponse r;
  r.model_name = "resnet-tail";
  r.model_version = "3";
  r.id = "req-0042";
  r.parameters["queue_us"] = std::uint64_t{1234};
  r.parameters["compute_us"] = std::int64_t{5678};
  oip::InferTensor logits;
  logits.name = "logits";
  logits.datatype = "FP32";
  logits.shape = {2, 10};
  for (int i = 0; i < 20; ++i) logits.contents.fp32_contents.push_back(std::ldexp(1.0f, i - 10) * (i % 2 ? -1.0f : 1.0f));
  r.outputs.push_back(logits);
  oip::InferTensor all;
  all.name = "every_kind";
  all.datatype = "MIXED";
  all.shape = {0};
  all.contents.bool_contents = {true, false, true};
  all.contents.int_contents = {-1, 2147483647, -2147483647 - 1};
  all.contents.int64_contents = {-300};
  all.contents.uint_contents = {0, 4294967295u};
  all.contents.uint64_contents = {1, std::uint64_t{1} << 63};
  all.contents.fp64_contents = {3.141592653589793, -0.0, 1e308};
  all.contents.bytes_contents = {"", "label", std::string("\0\xff", 2)};
  all.parameters["note"] = std::string("typed lists");
  r.outputs.push_back(all);
  oip::InferTensor classes;
  classes.name = "classes";
  classes.datatype = "BYTES";
  classes.shape = {2};
  classes.contents.bytes_contents = {"cat", "dog"};
  r.outputs.push_back(classes);
  return r;
}

/// Model metadata as a server describes a split tail.
inline edgesplit::wire::oip::ModelMetadataResponse oip_sample_metadata() {
  edgesplit::wire::oip::ModelMetadataResponse m;
  m.name = "resnet-tail";
  m.versions = {"1", "3"};
  m.platform = "edgesplit";
  m.inputs.push_back({"features", "FP32", {-1, 3, 40}});
  m.outputs.push_back({"logits", "FP32", {-1, 10}});
  m.outputs.push_back({"classes", "BYTES", {-1}});
  return m;
}

/// Server metadata.
inline edgesplit::wire::oip::ServerMetadataResponse oip_sample_server_metadata() {
  return {"edgesplit", "1.4.0", {"split_inference", "binary_tensor_data"}};
}

/// Every sample, encoded: (kind from oip_kinds, file-name suffix, bytes).
struct OipSample {
  std::string kind;                ///< one of oip_kinds
  std::string name;                ///< distinguishes samples of one kind
  std::vector<std::byte> bytes;    ///< the encoding
};

/// Valid encodings of every message kind.
inline std::vector<OipSample> oip_sample_messages() {
  namespace oip = edgesplit::wire::oip;
  std::vector<OipSample> s;
  s.push_back({"server_live_response", "live", oip::encode(oip::ServerLiveResponse{true})});
  s.push_back({"server_ready_response", "ready", oip::encode(oip::ServerReadyResponse{true})});
  s.push_back({"model_ready_request", "named", oip::encode(oip::ModelReadyRequest{"resnet-tail", "3"})});
  s.push_back({"model_ready_response", "ready", oip::encode(oip::ModelReadyResponse{true})});
  s.push_back({"server_metadata_response", "full", oip::encode(oip_sample_server_metadata())});
  s.push_back({"model_metadata_request", "named", oip::encode(oip::ModelMetadataRequest{"resnet-tail", ""})});
  s.push_back({"model_metadata_response", "full", oip::encode(oip_sample_metadata())});
  s.push_back({"model_infer_request", "typed", oip::encode(oip_sample_request())});
  s.push_back({"model_infer_request", "raw", oip::encode(oip_sample_raw_request())});
  s.push_back({"model_infer_response", "typed", oip::encode(oip_sample_response())});
  return s;
}

}  // namespace edgesplit_fuzz
