// edgesplit/runtime/oip_grpc_transport.hpp - an EdgeClient connection to any Open Inference
// Protocol (KServe v2) gRPC server: Triton, KServe, Seldon MLServer, or edgesplit's own.
//
// Needs gRPC's C++ library (CMake option EDGESPLIT_WITH_GRPC, EDGESPLIT_HAS_GRPC=1).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/quant/quant_params.hpp"
#include "edgesplit/runtime/oip_grpc_client.hpp"
#include "edgesplit/transport/transport.hpp"
#include "edgesplit/wire/feature_codec.hpp"
#include "edgesplit/wire/oip_grpc.hpp"
#include "edgesplit/wire/protocol.hpp"

namespace edgesplit {

/// Which model of the OIP server an OipGrpcTransport asks for.
struct OipTransportOptions {
  /// The OIP model name; empty: the edge's model id (EdgeOptions::model.model_id).
  std::string model_name;
  /// The OIP model version; none: the edge's split in decimal (an edgesplit server's version of
  /// a tail); an empty string: whichever version the server chooses (Triton's default policy).
  std::optional<std::string> model_version;
  /// Send 8-bit features (per-tensor, without a lossless stage) as their INT8 codes, 1 byte
  /// each, with the input parameters `scale` (double) and `zero_point` (int64), instead of as
  /// dequantized FP32: a quarter of the bytes. edgesplit's OipGrpcServer takes them; a stock
  /// server serving an FP32 model does not, so it is off by default.
  bool int8_features = false;
  /// Caps of the frames the edge hands over and of the answers' decoding.
  wire::DecodeLimits limits;
};

/// A Transport (see transport/transport.hpp) that speaks edgesplit's protocol to an EdgeClient
/// and the Open Inference Protocol over gRPC to the server, so an edge sends its features to a
/// stock OIP server serving the tail (for example the tail exported as ONNX on Triton or KServe)
/// with the same fallback, deadline and retry semantics as over TCP:
///
/// - HELLO becomes ModelMetadata: the model must exist (else the edge's HELLO is refused with
///   the server's reason, `unsupported` for NOT_FOUND) and take one FP32 input; its per-sample
///   shape, when the server states it, is checked against the head's output as a native HELLO
///   is. A server that cannot be reached makes the connection attempt fail (`unreachable`), and
///   the EdgeClient retries with its backoff.
/// - INFER becomes ModelInfer, sent asynchronously with the request's deadline: the features
///   are decoded from the codec's frame and sent as one FP32 tensor in raw_input_contents
///   (little-endian), which every OIP server takes; quantized features are therefore sent as
///   their dequantized values (what the tail would see natively), 4 bytes each, unless
///   OipTransportOptions::int8_features sends 8-bit ones as INT8 codes with their scale and zero
///   point (for edgesplit's OipGrpcServer). The answer's first
///   FP32 output (raw_output_contents or fp32_contents) becomes the RESPONSE; a failed call an
///   ERROR with the status's meaning (errc_of) and the server's message, which the EdgeClient
///   answers by fallback.
/// - PING becomes ServerLive: its PONG measures the round trip; a server that stops answering
///   ends the connection (receive throws `unreachable`), and the EdgeClient reconnects.
/// - INFER_TENSORS (a head cut through several tensors) is answered `unsupported`.
///
/// Connections share one OipGrpcClient (one HTTP/2 channel, which gRPC reconnects by itself):
///
/// ```cpp
/// auto oip = std::make_shared<OipGrpcClient>("triton.example:8001");
/// EdgeClient edge(head, [oip] { return Channel(OipGrpcTransport(oip)); }, options);
/// ```
class OipGrpcTransport {
 public:
  /// A connection through `client`; nothing is sent before the EdgeClient's HELLO.
  explicit OipGrpcTransport(std::shared_ptr<OipGrpcClient> client, OipTransportOptions opt = {})
      : st_(std::make_shared<State>(std::move(client), std::move(opt))) {
    if (!st_->client) fail(errc::invalid_argument, "OipGrpcTransport needs a client");
  }

  /// Translates one frame of the edge (see the class comment); `deadline` bounds a HELLO's
  /// metadata call. Throws `unreachable` once closed.
  void send(std::span<const std::byte> bytes, Deadline deadline = no_deadline) {
    State& s = *st_;
    {
      std::lock_guard lock(s.mutex);
      if (s.closed || s.broken) fail(errc::unreachable, "the OIP connection is closed");
    }
    const wire::FrameHeader h = wire::peek(bytes, s.opt.limits);
    switch (h.type) {
      case wire::MessageType::hello: return hello(bytes, deadline);
      case wire::MessageType::infer: return infer(bytes);
      case wire::MessageType::ping: return ping(bytes, deadline);
      case wire::MessageType::infer_tensors: {
        std::vector<std::byte> out;
        wire::encode_error(out, h.request_id, errc::unsupported,
                           "the OIP transport sends one feature tensor; a head cut through several needs the native protocol");
        return s.push(std::move(out));
      }
      default: fail(errc::invalid_argument, "the OIP transport does not carry " + std::string(to_string(h.type)) + " messages");
    }
  }

  /// The next reply the translation made; false at `deadline`. Throws `unreachable` once closed
  /// or once the server stopped answering, when no reply is left.
  bool receive(Deadline deadline, Message& into) {
    State& s = *st_;
    std::unique_lock lock(s.mutex);
    const auto ready = [&] { return !s.inbox.empty() || s.closed || s.broken; };
    if (deadline == no_deadline)
      s.cv.wait(lock, ready);
    else if (!s.cv.wait_until(lock, deadline, ready))
      return false;
    if (s.inbox.empty()) fail(errc::unreachable, s.closed ? "the OIP connection is closed" : "the OIP server stopped answering: " + s.why);
    into.bytes = std::move(s.inbox.front());
    s.inbox.pop_front();
    return true;
  }
  /// The same, into a new Message (nullopt at the deadline).
  std::optional<Message> receive(Deadline deadline) { return detail::receive_new(*this, deadline); }

  /// Idempotent: cancels the calls in progress and wakes a waiting receive().
  void close() {
    std::vector<std::shared_ptr<OipGrpcClient::Call>> calls;
    {
      std::lock_guard lock(st_->mutex);
      st_->closed = true;
      calls.swap(st_->calls);
    }
    st_->cv.notify_all();
    for (auto& c : calls) c->cancel();
  }

 private:
  // Shared with the calls in flight, whose completions may come after the transport is gone.
  struct State {
    State(std::shared_ptr<OipGrpcClient> c, OipTransportOptions o) : client(std::move(c)), opt(std::move(o)) {}
    std::shared_ptr<OipGrpcClient> client;
    OipTransportOptions opt;
    std::mutex mutex;
    std::condition_variable cv;
    std::deque<std::vector<std::byte>> inbox;
    std::vector<std::shared_ptr<OipGrpcClient::Call>> calls;  // in flight, for close()
    bool closed = false, broken = false;
    std::string why;  // of broken
    std::string name, version, input;  // resolved by the HELLO
    std::vector<std::int64_t> sample;  // the input's per-sample shape, when stated

    void push(std::vector<std::byte> frame) {
      {
        std::lock_guard lock(mutex);
        if (closed) return;
        inbox.push_back(std::move(frame));
      }
      cv.notify_all();
    }
    // Keeps `c` for close() to cancel, and lets go of the calls that have ended (gRPC has
    // dropped its reference to them). Not called with `mutex` held: a call may complete inline.
    void track(std::shared_ptr<OipGrpcClient::Call> c) {
      std::lock_guard lock(mutex);
      std::erase_if(calls, [](const auto& p) { return p.use_count() == 1; });
      if (closed)
        c->cancel();
      else
        calls.push_back(std::move(c));
    }
  };

  static std::chrono::system_clock::time_point wall(Deadline d, std::chrono::milliseconds fallback) {
    const auto now = std::chrono::system_clock::now();
    if (d == no_deadline) return now + fallback;
    return now + std::chrono::duration_cast<std::chrono::system_clock::duration>(d - SteadyClock::instance().now());
  }

  // HELLO: the model's metadata, checked; the HELLO answered (or refused) in the inbox.
  void hello(std::span<const std::byte> bytes, Deadline deadline) {
    State& s = *st_;
    const wire::Hello hello = wire::decode_hello_check(bytes, s.opt.limits);
    const std::string name = s.opt.model_name.empty() ? hello.id.model_id : s.opt.model_name;
    const std::string version = s.opt.model_version ? *s.opt.model_version : std::to_string(hello.id.split);
    std::vector<std::byte> request, answer, out;
    wire::oip::encode(wire::oip::ModelMetadataRequest{name, version}, request);
    const grpc::Status st = s.client->call_raw(wire::oip::method::model_metadata, request, answer,
                                               wall(deadline, s.client->options().timeout),
                                               [&s](std::shared_ptr<OipGrpcClient::Call> c) { s.track(std::move(c)); });
    if (!st.ok()) {
      const errc code = errc_of(st.error_code());
      // Not reached, or not in time: the connection attempt fails and the EdgeClient retries.
      if (code == errc::unreachable || code == errc::timeout)
        fail(code, "OIP server " + std::string(code == errc::timeout ? "did not answer in time" : "unreachable") + ": " +
                       st.error_message());
      wire::encode_error(out, 0, code, "OIP server: " + st.error_message());
      return s.push(std::move(out));
    }
    wire::oip::ModelMetadataResponse meta;
    wire::oip::decode(answer, meta, s.client->options().limits);
    if (meta.inputs.size() != 1 || meta.inputs[0].datatype != "FP32") {
      wire::encode_error(out, 0, errc::unsupported,
                         "OIP model '" + name + "' takes " + std::to_string(meta.inputs.size()) + " input(s)" +
                             (meta.inputs.empty() ? std::string() : " of " + meta.inputs[0].datatype) +
                             "; the OIP transport sends one FP32 tensor");
      return s.push(std::move(out));
    }
    wire::ModelCheck check;
    const auto& shape = meta.inputs[0].shape;
    bool known = shape.size() >= 2 && shape.size() <= Shape::max_rank;
    for (std::size_t i = 1; known && i < shape.size(); ++i) known = shape[i] >= 1 && shape[i] <= std::int64_t{UINT32_MAX};
    if (known)
      for (std::size_t i = 1; i < shape.size(); ++i) check.signature.push_back(static_cast<std::size_t>(shape[i]));
    {
      std::lock_guard lock(s.mutex);
      s.name = name;
      s.version = version;
      s.input = meta.inputs[0].name;
    }
    wire::encode_hello(out, hello.id, 0, check);
    s.push(std::move(out));
  }

  // INFER: the features as one FP32 tensor in a ModelInfer sent asynchronously; its answer (or
  // failure) becomes the reply.
  void infer(std::span<const std::byte> bytes) {
    const auto sent = SteadyClock::instance().now();
    State& s = *st_;
    wire::FeatureDecoder decoder(s.opt.limits);
    const wire::InferHeader h = wire::read_infer(bytes, decoder);
    const std::uint32_t id = h.request_id;
    const wire::InferRequest& r = h.request;
    wire::oip::ModelInferRequest q;
    {
      std::lock_guard lock(s.mutex);
      if (s.name.empty()) fail(errc::invalid_argument, "INFER before HELLO on an OIP connection");
      q.model_name = s.name;
      q.model_version = s.version;
      q.inputs.emplace_back().name = s.input;
    }
    q.id = std::to_string(id);
    wire::oip::InferTensor& in = q.inputs[0];
    for (std::size_t d : h.tensor.shape.dims()) in.shape.push_back(static_cast<std::int64_t>(d));
    const QuantParams& p = decoder.decode_params();
    if (s.opt.int8_features && h.tensor.bits == 8 && h.tensor.lossless == wire::Lossless::none && !p.per_channel() &&
        h.tensor.data.size() == h.tensor.shape.count()) {
      in.datatype = "INT8";  // the codes as they are, 1 byte each
      in.parameters["scale"] = static_cast<double>(p.scale[0]);
      in.parameters["zero_point"] = static_cast<std::int64_t>(p.zero_point[0]);
      q.raw_input_contents.emplace_back(h.tensor.data.begin(), h.tensor.data.end());
    } else {
      Tensor<float> x;
      wire::decode_infer_features(h, decoder, x);
      in.datatype = "FP32";
      wire::oip::write_fp32(std::span<const float>(x.data(), x.size()),
                            q.raw_input_contents.emplace_back(x.size() * sizeof(float)).data());
    }
    std::vector<std::byte> message;
    wire::oip::encode(q, message);
    const Deadline deadline = r.deadline_us == 0 ? no_deadline : sent + std::chrono::microseconds(r.deadline_us);
    auto weak = std::weak_ptr<State>(st_);
    s.track(s.client->call_async(wire::oip::method::model_infer, message, wall(deadline, s.client->options().timeout),
                                 [weak, id](const grpc::Status& st, std::vector<std::byte>&& answer) {
                                   if (const auto state = weak.lock()) state->push(reply(*state, id, st, answer));
                                 }));
  }

  // The native reply to request `id` from a ModelInfer's outcome.
  static std::vector<std::byte> reply(const State& s, std::uint32_t id, const grpc::Status& st, const std::vector<std::byte>& answer) {
    std::vector<std::byte> out;
    if (!st.ok()) {
      wire::encode_error(out, id, errc_of(st.error_code()), "OIP server: " + st.error_message());
      return out;
    }
    try {
      wire::oip::ModelInferResponse resp;
      wire::oip::decode(answer, resp, s.client->options().limits);
      if (resp.outputs.empty() || resp.outputs[0].datatype != "FP32")
        fail(errc::corrupt_frame, "the OIP answer has no FP32 output");
      const auto& o = resp.outputs[0];
      if (o.shape.empty() || o.shape.size() > Shape::max_rank) fail(errc::corrupt_frame, "the OIP answer's output has no valid shape");
      std::vector<std::size_t> dims;
      for (std::int64_t d : o.shape) {
        if (d < 1) fail(errc::corrupt_frame, "the OIP answer's output has a dimension below 1");
        dims.push_back(static_cast<std::size_t>(d));
      }
      const Shape shape(dims);  // throws too_large on overflow
      if (shape.count() > s.opt.limits.max_elements) fail(errc::too_large, "the OIP answer's output is over the element cap");
      Tensor<float> y(shape);
      if (!resp.raw_output_contents.empty()) {
        if (resp.raw_output_contents[0].size() != shape.count() * sizeof(float))
          fail(errc::corrupt_frame, "the OIP answer's raw output does not match its shape");
        wire::oip::read_fp32(resp.raw_output_contents[0], y.data());
      } else {
        if (o.contents.fp32_contents.size() != shape.count())
          fail(errc::corrupt_frame, "the OIP answer's fp32_contents do not match its shape");
        std::copy(o.contents.fp32_contents.begin(), o.contents.fp32_contents.end(), y.data());
      }
      CodecConfig raw;
      raw.bits = wire::raw_f32_bits;
      raw.limits = s.opt.limits;
      wire::FeatureEncoder encoder(raw);
      wire::encode_response(out, id, wire::InferResponse{}, encoder, y.cview());
    } catch (const error& e) {
      out.clear();
      wire::encode_error(out, id, e.code(), std::string("OIP answer: ") + e.what());
    }
    return out;
  }

  // PING: a ServerLive; its answer is the PONG, its failure ends the connection.
  void ping(std::span<const std::byte> bytes, Deadline deadline) {
    State& s = *st_;
    const wire::Frame f = wire::parse_frame(bytes, s.opt.limits);
    const std::uint64_t stamp = wire::decode_ping(bytes, s.opt.limits);
    std::vector<std::byte> message;
    wire::oip::encode(wire::oip::ServerLiveRequest{}, message);
    auto weak = std::weak_ptr<State>(st_);
    s.track(s.client->call_async(
        wire::oip::method::server_live, message, wall(deadline, s.client->options().timeout),
        [weak, id = f.header.request_id, stamp](const grpc::Status& st, std::vector<std::byte>&&) {
          const auto state = weak.lock();
          if (!state) return;
          if (st.ok()) {
            std::vector<std::byte> pong;
            wire::encode_ping(pong, id, stamp, /*pong=*/true);
            return state->push(std::move(pong));
          }
          {
            std::lock_guard l(state->mutex);
            state->broken = true;
            state->why = st.error_message();
          }
          state->cv.notify_all();
        }));
  }

  std::shared_ptr<State> st_;
};

}  // namespace edgesplit
