// edgesplit/runtime/oip_grpc_client.hpp - a client of any Open Inference Protocol (KServe v2)
// gRPC server: Triton, KServe, Seldon MLServer, or edgesplit's own OipGrpcServer.
//
// Needs gRPC's C++ library (CMake option EDGESPLIT_WITH_GRPC, EDGESPLIT_HAS_GRPC=1). Calls go
// through gRPC's generic stub with the messages of wire/oip_grpc.hpp: no generated code.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "edgesplit/core/error.hpp"
#include "edgesplit/wire/oip_grpc.hpp"

namespace edgesplit {

/// How an OipGrpcClient talks to its server.
struct GrpcClientOptions {
  /// Each call's deadline (sent to the server, which stops working on it when it passes).
  std::chrono::milliseconds timeout{30000};
  /// Largest answer accepted, in bytes (gRPC refuses larger ones before they are read), and
  /// the cap of the answers' decoder.
  std::size_t max_message_bytes = std::size_t{64} << 20;
  /// Caps of the answers' decoder (max_message_bytes is taken from above).
  wire::oip::DecodeLimits limits;
};

namespace detail {
/// The bytes of a gRPC message into `out`; RESOURCE_EXHAUSTED past `cap`, nothing read.
inline grpc::Status read_byte_buffer(const grpc::ByteBuffer& buffer, std::size_t cap, std::vector<std::byte>& out) {
  if (buffer.Length() > cap) return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "message over the cap of " + std::to_string(cap) + " bytes");
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return grpc::Status(grpc::StatusCode::INTERNAL, "cannot read the message");
  out.resize(buffer.Length());
  std::size_t at = 0;
  for (const auto& s : slices) {
    std::memcpy(out.data() + at, s.begin(), s.size());
    at += s.size();
  }
  return grpc::Status::OK;
}

/// gRPC 1.51 runs the completions of its callback API on one process-wide completion queue,
/// created for its first user (a channel's first call, a server with a callback service) and
/// shut down when its last user goes. A server or channel made or dropped while another one's
/// release is shutting the queue down can crash gRPC ("assertion failed: prior > 0" on a
/// "nexting_thread"; seen once in 10 to 30 runs of a test that starts and stops servers and
/// clients in turn). One channel, kept with its queue for the life of the process, keeps the
/// queue from ever being shut down. Called by OipGrpcClient and OipGrpcServer before they start.
inline void hold_grpc_callback_queue() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Reachable from this static for the life of the process (not a leak), never destroyed.
    static auto* keeper = new std::shared_ptr<grpc::Channel>(
        grpc::CreateChannel("unix:/nonexistent/edgesplit-grpc-queue-keeper", grpc::InsecureChannelCredentials()));
    grpc::GenericStub stub(*keeper);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now());  // no peer: the call ends at once
    grpc::Slice empty;
    const grpc::ByteBuffer in(&empty, 1);
    grpc::ByteBuffer out;
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    stub.UnaryCall(&ctx, "/edgesplit.Keeper/Hold", grpc::StubOptions(), &in, &out, [&](grpc::Status) {
      std::lock_guard lock(m);
      done = true;
      cv.notify_all();
    });
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return done; });
  });
}
}  // namespace detail

/// The errc a gRPC status code stands for in edgesplit's errors: NOT_FOUND and UNIMPLEMENTED are
/// `unsupported` (no such model or method), RESOURCE_EXHAUSTED `overloaded`, UNAVAILABLE
/// `unreachable` (gRPC's code when there is no connection; a busy server answers it too, and
/// both call for the same retry with backoff), DEADLINE_EXCEEDED `timeout`, INVALID_ARGUMENT,
/// OUT_OF_RANGE and FAILED_PRECONDITION `invalid_argument`, the rest `internal`.
inline errc errc_of(grpc::StatusCode c) noexcept {
  switch (c) {
    case grpc::StatusCode::NOT_FOUND:
    case grpc::StatusCode::UNIMPLEMENTED: return errc::unsupported;
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return errc::overloaded;
    case grpc::StatusCode::UNAVAILABLE: return errc::unreachable;
    case grpc::StatusCode::DEADLINE_EXCEEDED: return errc::timeout;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
    case grpc::StatusCode::FAILED_PRECONDITION: return errc::invalid_argument;
    default: return errc::internal;
  }
}

/// Calls the six RPCs of `inference.GRPCInferenceService` on one channel (HTTP/2 connection,
/// reconnected by gRPC when it drops). Thread-safe: calls from several threads share the channel.
/// A failed call throws edgesplit::error with errc_of(status) and the server's message; answers
/// are decoded under `limits`, so a hostile server cannot make the client allocate beyond them.
class OipGrpcClient {
 public:
  /// A client of the server at `target` ("127.0.0.1:8001", "[::1]:8001", "dns:host:8001"),
  /// over plain HTTP/2 (no TLS). Connects lazily, at the first call.
  explicit OipGrpcClient(const std::string& target, GrpcClientOptions opt = {}) : opt_(std::move(opt)) {
    detail::hold_grpc_callback_queue();
    if (opt_.max_message_bytes > static_cast<std::size_t>(std::numeric_limits<int>::max()))
      fail(errc::invalid_argument, "GrpcClientOptions::max_message_bytes must be below 2 GiB");
    opt_.limits.max_message_bytes = opt_.max_message_bytes;
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(static_cast<int>(opt_.max_message_bytes));
    args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);  // a loopback or cluster address is never proxied
    channel_ = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
    stub_ = std::make_unique<grpc::GenericStub>(channel_);
  }

  /// ServerLive: whether the server is live.
  bool server_live() { return call<wire::oip::ServerLiveResponse>(wire::oip::method::server_live, wire::oip::ServerLiveRequest{}).live; }
  /// ServerReady: whether the server is ready for inference.
  bool server_ready() {
    return call<wire::oip::ServerReadyResponse>(wire::oip::method::server_ready, wire::oip::ServerReadyRequest{}).ready;
  }
  /// ModelReady: whether model `name` (at `version`; empty: the server's choice) is ready.
  bool model_ready(const std::string& name, const std::string& version = {}) {
    return call<wire::oip::ModelReadyResponse>(wire::oip::method::model_ready, wire::oip::ModelReadyRequest{name, version}).ready;
  }
  /// ServerMetadata: the server's name, version and extensions.
  wire::oip::ServerMetadataResponse server_metadata() {
    return call<wire::oip::ServerMetadataResponse>(wire::oip::method::server_metadata, wire::oip::ServerMetadataRequest{});
  }
  /// ModelMetadata: a model's versions, inputs and outputs.
  wire::oip::ModelMetadataResponse model_metadata(const std::string& name, const std::string& version = {}) {
    return call<wire::oip::ModelMetadataResponse>(wire::oip::method::model_metadata,
                                                  wire::oip::ModelMetadataRequest{name, version});
  }
  /// ModelInfer: one inference.
  wire::oip::ModelInferResponse model_infer(const wire::oip::ModelInferRequest& request) {
    return call<wire::oip::ModelInferResponse>(wire::oip::method::model_infer, request);
  }

  /// What an asynchronous call ends with: gRPC's status, and the answer's bytes when it is OK.
  using Done = std::function<void(const grpc::Status&, std::vector<std::byte>&&)>;

  /// A call in progress (call_async); cancel() ends it early (its Done then sees CANCELLED).
  class Call {
   public:
    void cancel() { ctx_.TryCancel(); }  ///< idempotent; the call may already be over

   private:
    friend class OipGrpcClient;
    grpc::ClientContext ctx_;
    grpc::ByteBuffer in_, out_;
  };

  /// Starts one call of `method` with the message `request` (already encoded), ending by
  /// `deadline` at the latest; `done` runs once, on a gRPC thread, when it ends (it must not
  /// block for long). The answer is read under the client's message cap.
  std::shared_ptr<Call> call_async(std::string_view method, std::span<const std::byte> request,
                                   std::chrono::system_clock::time_point deadline, Done done) {
    auto call = std::make_shared<Call>();
    grpc::Slice slice(request.data(), request.size());
    call->in_ = grpc::ByteBuffer(&slice, 1);
    call->ctx_.set_deadline(deadline);
    stub_->UnaryCall(&call->ctx_, std::string(method), grpc::StubOptions(), &call->in_, &call->out_,
                     [call, done = std::move(done), cap = opt_.max_message_bytes](grpc::Status s) {
                       std::vector<std::byte> answer;
                       if (s.ok()) s = detail::read_byte_buffer(call->out_, cap, answer);
                       done(s, std::move(answer));
                     });
    return call;
  }

  /// One call of `method` with the message `request` (already encoded); the answer's bytes into
  /// `response`. Returns gRPC's status instead of throwing: for callers that act on the code, and
  /// for tests that send what no encoder would. Ends by `deadline` (default: options().timeout
  /// from now); `started` is given the call once it runs, for a caller that may cancel it.
  grpc::Status call_raw(std::string_view method, std::span<const std::byte> request, std::vector<std::byte>& response,
                        std::optional<std::chrono::system_clock::time_point> deadline = std::nullopt,
                        const std::function<void(std::shared_ptr<Call>)>& started = {}) {
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    grpc::Status status;
    auto call = call_async(method, request, deadline ? *deadline : std::chrono::system_clock::now() + opt_.timeout,
                           [&](const grpc::Status& s, std::vector<std::byte>&& answer) {
                             std::lock_guard lock(m);
                             status = s;
                             response = std::move(answer);
                             done = true;
                             cv.notify_all();
                           });
    if (started) started(std::move(call));
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return done; });  // gRPC always completes the call: by its deadline at the latest
    return status;
  }

  /// The options it was made with.
  const GrpcClientOptions& options() const noexcept { return opt_; }

 private:
  template <class Response, class Request>
  Response call(std::string_view method, const Request& request) {
    std::vector<std::byte> bytes;
    wire::oip::encode(request, bytes);
    std::vector<std::byte> answer;
    const grpc::Status s = call_raw(method, bytes, answer);
    if (!s.ok())
      fail(errc_of(s.error_code()), "OIP gRPC " + std::string(method.substr(method.rfind('/') + 1)) + ": " + s.error_message());
    Response r;
    wire::oip::decode(answer, r, opt_.limits);
    return r;
  }

  GrpcClientOptions opt_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grpc::GenericStub> stub_;
};

}  // namespace edgesplit
