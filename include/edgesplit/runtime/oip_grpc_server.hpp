// edgesplit/runtime/oip_grpc_server.hpp - the Open Inference Protocol (KServe v2) over gRPC, as
// one more front end of a CloudServer.
//
// Needs gRPC's C++ library (Debian's libgrpc++-dev): CMake option EDGESPLIT_WITH_GRPC, which
// defines EDGESPLIT_HAS_GRPC=1. No generated code: the service is served through gRPC's generic
// API, and its messages are encoded by wire/oip_grpc.hpp, so nothing but grpc++ is linked.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/resource_quota.h>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/core/thread_name.hpp"
#include "edgesplit/runtime/cloud_server.hpp"
#include "edgesplit/runtime/metrics.hpp"
#include "edgesplit/runtime/oip_core.hpp"
#include "edgesplit/runtime/oip_grpc_client.hpp"
#include "edgesplit/quant/quantize.hpp"
#include "edgesplit/wire/oip_grpc.hpp"

namespace edgesplit {

/// How the gRPC front end listens and bounds its requests.
struct GrpcOptions {
  /// Threads that run requests (gRPC's own threads only move bytes): this bounds the requests
  /// being decoded, run or encoded at once.
  std::size_t threads = 8;
  /// Requests waiting for one of those threads; more are refused at once with
  /// RESOURCE_EXHAUSTED, so a flood of calls queues nothing unbounded.
  std::size_t max_queued = 256;
  /// Largest request message; gRPC refuses larger ones (RESOURCE_EXHAUSTED) before they are
  /// read. 0: the server's frame cap (ServerOptions::limits.max_payload_bytes).
  std::size_t max_message_bytes = 0;
  /// Memory gRPC itself may use for its connections' buffers (its ResourceQuota).
  std::size_t transport_memory_bytes = std::size_t{256} << 20;
  /// Most calls one connection may have open at once (HTTP/2 concurrent streams).
  std::size_t max_streams_per_connection = 64;
  /// A request not answered within this long (or the client's own gRPC deadline, if sooner) is
  /// answered DEADLINE_EXCEEDED: its native deadline.
  std::chrono::milliseconds request_timeout{30000};
  std::string server_name = "edgesplit";  ///< `name` of ServerMetadata
};

/// Counters of the gRPC front end (messages only: gRPC's framing and headers are not counted).
struct GrpcStats {
  std::size_t requests = 0;        ///< calls answered
  std::size_t in_flight = 0;       ///< calls being served now (queued or running)
  std::size_t refused_busy = 0;    ///< calls refused because max_queued were waiting
  std::size_t bytes_received = 0;  ///< request message bytes
  std::size_t bytes_sent = 0;      ///< response message bytes
};

/// Serves a CloudServer's tails over the Open Inference Protocol's gRPC service
/// (`inference.GRPCInferenceService` of proto/grpc_service.proto: ServerLive, ServerReady,
/// ModelReady, ServerMetadata, ModelMetadata, ModelInfer), the protocol of Triton, KServe and
/// Seldon, on its own port beside the native protocol.
///
/// - Models and versions are those of the HTTP front end (runtime/oip_http.hpp): a model is a
///   registered model id, its version the decimal split; no version: the lowest split.
/// - ModelInfer takes FP32 inputs as typed `fp32_contents` or as `raw_input_contents`
///   (little-endian), or 8-bit features as INT8 codes in `raw_input_contents` with the input
///   parameters `scale` (double) and `zero_point` (int64), dequantized as the native codec does
///   (what OipGrpcTransport sends with OipTransportOptions::int8_features); it answers in
///   `raw_output_contents`, as Triton does. It becomes a native
///   frame handed to the server's RequestHandler, sharing the batcher, limits, memory budget,
///   deadlines and per-model metrics with every other front end.
/// - A request message is held under the server's memory budget from the moment it is read, for
///   its bytes and what decoding it may take (wire::oip::DecodeLimits::max_decoded_bytes is set
///   to twice its size); the tensors are reserved before they are allocated. Failures are gRPC
///   statuses with a message: INVALID_ARGUMENT for a malformed or unsuitable request, NOT_FOUND
///   for an unknown model, RESOURCE_EXHAUSTED when the server is full, DEADLINE_EXCEEDED past the
///   deadline, UNIMPLEMENTED for another method, INTERNAL for the server's own failures.
class OipGrpcServer {
 public:
  /// Listens on `host`:`port` (0: any free port, see port()). Throws errc::io_error when gRPC
  /// cannot listen there, errc::invalid_argument for options out of their domain.
  OipGrpcServer(CloudServer& server, const std::string& host, std::uint16_t port, GrpcOptions opt = {})
      : core_(server), opt_(std::move(opt)), service_(*this) {
    detail::hold_grpc_callback_queue();
    if (opt_.threads == 0) fail(errc::invalid_argument, "GrpcOptions::threads must be at least 1");
    if (opt_.max_message_bytes == 0) opt_.max_message_bytes = server.options().limits.max_payload_bytes;
    if (opt_.max_message_bytes > static_cast<std::size_t>(std::numeric_limits<int>::max()))
      fail(errc::invalid_argument, "GrpcOptions::max_message_bytes must be below 2 GiB");
    limits_.max_message_bytes = opt_.max_message_bytes;
    limits_.max_elements = std::min(limits_.max_elements, server.options().limits.max_elements);
    grpc::ServerBuilder builder;
    int bound = 0;
    const std::string address = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
    builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &bound);
    builder.SetMaxReceiveMessageSize(static_cast<int>(opt_.max_message_bytes));
    builder.SetMaxSendMessageSize(static_cast<int>(std::min<std::size_t>(server.options().limits.max_payload_bytes * 2,
                                                                         std::numeric_limits<int>::max())));
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                               static_cast<int>(std::clamp<std::size_t>(opt_.max_streams_per_connection, 1, 1 << 20)));
    grpc::ResourceQuota quota("edgesplit-grpc");
    quota.Resize(opt_.transport_memory_bytes);
    builder.SetResourceQuota(quota);
    builder.RegisterCallbackGenericService(&service_);
    for (std::size_t i = 0; i < opt_.threads; ++i)
      workers_.emplace_back([this] {
        name_this_thread("es-grpc");
        work();
      });
    server_ = builder.BuildAndStart();
    if (!server_ || bound <= 0) {
      stop_workers();
      fail(errc::io_error, "cannot bind the gRPC front end to " + address);
    }
    port_ = static_cast<std::uint16_t>(bound);
  }
  OipGrpcServer(const OipGrpcServer&) = delete;
  OipGrpcServer& operator=(const OipGrpcServer&) = delete;
  ~OipGrpcServer() { stop(); }

  /// The port it listens on (the one chosen when 0 was asked for).
  std::uint16_t port() const noexcept { return port_; }

  /// Stops listening, lets the calls in flight finish (cancelling those still running after
  /// `grace`), joins the threads. Idempotent.
  void stop(std::chrono::milliseconds grace = std::chrono::seconds(5)) {
    std::lock_guard lock(stop_mutex_);
    if (!server_) return;
    server_->Shutdown(std::chrono::system_clock::now() + grace);  // returns once every call is finished
    stop_workers();
    server_.reset();
  }

  /// A snapshot of the counters.
  GrpcStats stats() const noexcept {
    GrpcStats s;
    s.requests = requests_.load(std::memory_order_relaxed);
    s.in_flight = in_flight_.load(std::memory_order_relaxed);
    s.refused_busy = refused_busy_.load(std::memory_order_relaxed);
    s.bytes_received = bytes_received_.load(std::memory_order_relaxed);
    s.bytes_sent = bytes_sent_.load(std::memory_order_relaxed);
    return s;
  }

  /// This front end's metrics in the Prometheus text format (for a /metrics beside them, e.g.
  /// HttpOptions::extra_metrics).
  void write_metrics(MetricsWriter& w) const {
    const GrpcStats s = stats();
    w.family("edgesplit_grpc_requests_total", "counter", "gRPC calls answered, by status code");
    for (std::size_t c = 0; c < by_code_.size(); ++c)
      if (const std::uint64_t n = by_code_[c].load(std::memory_order_relaxed); n != 0)
        w.sample("edgesplit_grpc_requests_total", {{"code", code_name(static_cast<grpc::StatusCode>(c))}}, n);
    w.family("edgesplit_grpc_requests_in_flight", "gauge", "gRPC calls being served now, queued or running");
    w.sample("edgesplit_grpc_requests_in_flight", {}, std::uint64_t{s.in_flight});
    w.family("edgesplit_grpc_received_bytes_total", "counter", "Request message bytes read by the gRPC front end");
    w.sample("edgesplit_grpc_received_bytes_total", {}, std::uint64_t{s.bytes_received});
    w.family("edgesplit_grpc_sent_bytes_total", "counter", "Response message bytes written by the gRPC front end");
    w.sample("edgesplit_grpc_sent_bytes_total", {}, std::uint64_t{s.bytes_sent});
  }

 private:
  using Core = detail::OipCore;
  using Entry = Core::Entry;
  using Status = grpc::Status;
  using Code = grpc::StatusCode;

  // One call: reads its one request message, has a worker serve it, writes the answer. gRPC
  // deletes it (OnDone) once Finish has completed.
  class Call final : public grpc::ServerGenericBidiReactor {
   public:
    Call(OipGrpcServer& owner, grpc::GenericCallbackServerContext* ctx) : owner_(owner), ctx_(ctx) {
      owner_.in_flight_.fetch_add(1, std::memory_order_relaxed);
      StartRead(&request_);
    }
    void OnReadDone(bool ok) override {
      if (!ok) return finish(Status(Code::INVALID_ARGUMENT, "the call carried no request message"));
      if (!owner_.enqueue(this)) {
        owner_.refused_busy_.fetch_add(1, std::memory_order_relaxed);
        finish(Status(Code::UNAVAILABLE, "the server is busy: " + std::to_string(owner_.opt_.max_queued) +
                                             " calls are waiting already"));
      }
    }
    void OnDone() override {
      owner_.in_flight_.fetch_sub(1, std::memory_order_relaxed);
      delete this;
    }
    // On a worker: serves the request and answers.
    void run() {
      std::vector<std::byte> out;
      const Status st = owner_.serve(ctx_->method(), request_, out, ctx_->deadline(), ctx_->peer());
      request_.Clear();
      if (!st.ok()) return finish(st);
      grpc::Slice slice(out.data(), out.size());
      response_ = grpc::ByteBuffer(&slice, 1);
      owner_.bytes_sent_.fetch_add(out.size(), std::memory_order_relaxed);
      owner_.count(Code::OK);
      StartWriteAndFinish(&response_, grpc::WriteOptions(), Status::OK);
    }

   private:
    void finish(const Status& st) {
      owner_.count(st.error_code());
      Finish(st);
    }
    OipGrpcServer& owner_;
    grpc::GenericCallbackServerContext* ctx_;
    grpc::ByteBuffer request_, response_;
  };

  class Service final : public grpc::CallbackGenericService {
   public:
    explicit Service(OipGrpcServer& owner) noexcept : owner_(owner) {}
    grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
      return new Call(owner_, ctx);
    }

   private:
    OipGrpcServer& owner_;
  };

  bool enqueue(Call* c) {
    {
      std::lock_guard lock(queue_mutex_);
      if (stopping_ || queue_.size() >= opt_.max_queued) return false;
      queue_.push_back(c);
    }
    queue_cv_.notify_one();
    return true;
  }
  void work() {
    for (;;) {
      Call* c = nullptr;
      {
        std::unique_lock lock(queue_mutex_);
        queue_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping, and nothing left to answer
        c = queue_.front();
        queue_.pop_front();
      }
      c->run();
    }
  }
  void stop_workers() {
    {
      std::lock_guard lock(queue_mutex_);
      stopping_ = true;
    }
    queue_cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  void count(Code c) noexcept {
    requests_.fetch_add(1, std::memory_order_relaxed);
    const auto i = static_cast<std::size_t>(c);
    if (i < by_code_.size()) by_code_[i].fetch_add(1, std::memory_order_relaxed);
  }
  static std::string code_name(Code c) {
    static constexpr std::array<std::string_view, 17> names{
        "OK",           "CANCELLED", "UNKNOWN",           "INVALID_ARGUMENT",    "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
        "UNIMPLEMENTED", "INTERNAL",  "UNAVAILABLE",       "DATA_LOSS",           "UNAUTHENTICATED"};
    const auto i = static_cast<std::size_t>(c);
    return i < names.size() ? std::string(names[i]) : std::to_string(i);
  }
  static Code code_of(errc c) noexcept {
    switch (Core::fault_of(c)) {
      case Core::Fault::no_model: return Code::NOT_FOUND;
      case Core::Fault::busy: return Code::UNAVAILABLE;
      case Core::Fault::late: return Code::DEADLINE_EXCEEDED;
      case Core::Fault::server: return Code::INTERNAL;
      case Core::Fault::request: break;
    }
    return Code::INVALID_ARGUMENT;
  }
  static Status refuse(Code c, const std::string& message) { return Status(c, message); }

  // Decodes `bytes` as a `Request`, answers with `respond(request)`'s message.
  template <class Request, class Respond>
  static void unary(std::span<const std::byte> bytes, const wire::oip::DecodeLimits& limits, std::vector<std::byte>& out,
                    Respond&& respond) {
    Request q;
    wire::oip::decode(bytes, q, limits);
    wire::oip::encode(respond(q), out);
  }

  // Serves one request message of `method`; its answer's bytes into `out`. Nothing escapes.
  Status serve(const std::string& method, const grpc::ByteBuffer& message, std::vector<std::byte>& out,
               std::chrono::system_clock::time_point deadline, const std::string& peer) {
    namespace oip = wire::oip;
    try {
      const std::size_t n = message.Length();
      bytes_received_.fetch_add(n, std::memory_order_relaxed);
      // The message's bytes and what decoding them may take, held before either is allocated.
      oip::DecodeLimits limits = limits_;
      limits.max_decoded_bytes = 2 * n + 65536;
      bool ok = false;
      MemoryBudget::Reservation held = core_.server().budget().reserve(n + limits.max_decoded_bytes, ok);
      if (!ok) return refuse(Code::UNAVAILABLE, "server memory budget full");
      std::vector<std::byte> bytes;
      if (const Status read = detail::read_byte_buffer(message, opt_.max_message_bytes, bytes); !read.ok()) return read;
      CloudServer& server = core_.server();
      if (method == oip::method::model_infer) return infer(bytes, limits, std::move(held), out, deadline, peer);
      if (method == oip::method::server_live) {
        unary<oip::ServerLiveRequest>(bytes, limits, out, [&](auto&) { return oip::ServerLiveResponse{server.healthy()}; });
      } else if (method == oip::method::server_ready) {
        unary<oip::ServerReadyRequest>(bytes, limits, out, [&](auto&) { return oip::ServerReadyResponse{server.ready()}; });
      } else if (method == oip::method::server_metadata) {
        unary<oip::ServerMetadataRequest>(bytes, limits, out, [&](auto&) {
          return oip::ServerMetadataResponse{opt_.server_name, std::string(oip_server_version), {}};
        });
      } else if (method == oip::method::model_ready) {
        oip::ModelReadyRequest q;
        oip::decode(bytes, q, limits);
        if (!core_.find(q.name, q.version)) return refuse(Code::NOT_FOUND, Core::no_model(q.name, q.version));
        oip::encode(oip::ModelReadyResponse{server.ready()}, out);
      } else if (method == oip::method::model_metadata) {
        oip::ModelMetadataRequest q;
        oip::decode(bytes, q, limits);
        const auto e = core_.find(q.name, q.version);
        if (!e) return refuse(Code::NOT_FOUND, Core::no_model(q.name, q.version));
        oip::ModelMetadataResponse r;
        r.name = q.name;
        r.versions = core_.versions(q.name);
        r.platform = "edgesplit";
        for (const auto& in : Core::inputs_of(*e)) r.inputs.push_back({in.name, "FP32", metadata_shape(in.sample)});
        const auto o = Core::output_of(*e);
        r.outputs.push_back({o.name, "FP32", metadata_shape(o.sample)});
        oip::encode(r, out);
      } else {
        return refuse(Code::UNIMPLEMENTED, "no method " + method);
      }
      return Status::OK;
    } catch (const error& e) {
      return refuse(code_of(e.code()), e.what());
    } catch (const std::bad_alloc&) {
      return refuse(Code::UNAVAILABLE, "out of memory");
    } catch (...) {
      return refuse(Code::INTERNAL, "the server failed on this request");
    }
  }

  // [-1, 16]: a per-sample shape with the batch in front, -1 where unknown.
  static std::vector<std::int64_t> metadata_shape(const std::optional<Shape>& s) {
    std::vector<std::int64_t> d{-1};
    if (!s) {
      d.push_back(-1);
      return d;
    }
    for (std::size_t x : s->dims()) d.push_back(static_cast<std::int64_t>(x));
    return d;
  }

  // An INT8 input's per-tensor quantization: parameters "scale" (double; a positive normal float)
  // and "zero_point" (int64, a valid 8-bit code); none when either is missing or out of range.
  static std::optional<QuantParams> int8_params(const wire::oip::InferTensor& in) {
    const auto s = in.parameters.find("scale");
    const auto z = in.parameters.find("zero_point");
    if (s == in.parameters.end() || z == in.parameters.end()) return std::nullopt;
    const double* scale = std::get_if<double>(&s->second);
    const std::int64_t* zero = std::get_if<std::int64_t>(&z->second);
    if (!scale || !zero || *zero < code_min(8) || *zero > code_max(8)) return std::nullopt;
    const auto f = static_cast<float>(*scale);
    if (!std::isnormal(f) || f <= 0 || static_cast<double>(f) != *scale) return std::nullopt;  // exactly a float
    return QuantParams::tensor(f, static_cast<std::int32_t>(*zero), 8);
  }

  // ModelInfer: checked inputs, one native inference, the answer in raw_output_contents.
  Status infer(std::vector<std::byte>& bytes, const wire::oip::DecodeLimits& limits, MemoryBudget::Reservation held,
               std::vector<std::byte>& out, std::chrono::system_clock::time_point deadline, const std::string& peer) {
    namespace oip = wire::oip;
    oip::ModelInferRequest q;
    oip::decode(bytes, q, limits);
    bytes = std::vector<std::byte>();
    const auto e = core_.find(q.model_name, q.model_version);
    if (!e) return refuse(Code::NOT_FOUND, Core::no_model(q.model_name, q.model_version));
    const auto want = Core::inputs_of(*e);
    if (auto r = Core::check_input_count(*e, want, q.inputs.size())) return refuse(Code::INVALID_ARGUMENT, *r);
    const bool raw = !q.raw_input_contents.empty();
    if (raw && q.raw_input_contents.size() != q.inputs.size())
      return refuse(Code::INVALID_ARGUMENT, "raw_input_contents has " + std::to_string(q.raw_input_contents.size()) +
                                                " entries for " + std::to_string(q.inputs.size()) + " inputs");
    std::vector<std::size_t> source(want.size(), q.inputs.size());  // which request input feeds each of `want`
    std::vector<std::optional<QuantParams>> int8_inputs(q.inputs.size());  // the parameters of INT8 ones
    std::optional<std::size_t> batch;
    std::size_t total = 0;
    for (std::size_t i = 0; i < q.inputs.size(); ++i) {
      const oip::InferTensor& in = q.inputs[i];
      const auto w = std::find_if(want.begin(), want.end(), [&](const auto& x) { return x.name == in.name; });
      if (w == want.end()) return refuse(Code::INVALID_ARGUMENT, Core::no_input(*e, want, in.name));
      std::size_t& from = source[static_cast<std::size_t>(w - want.begin())];
      if (from != q.inputs.size()) return refuse(Code::INVALID_ARGUMENT, "input '" + in.name + "' given twice");
      from = i;
      const bool int8 = in.datatype == "INT8";
      if (in.datatype != "FP32" && !int8)
        return refuse(Code::INVALID_ARGUMENT, "input '" + in.name + "' has datatype '" + in.datatype +
                                                  "'; the model takes FP32 (or INT8 codes with scale and zero_point)");
      std::vector<std::size_t> dims;
      for (const std::int64_t d : in.shape) {
        if (d <= 0 || d > std::int64_t{UINT32_MAX})
          return refuse(Code::INVALID_ARGUMENT, "input '" + in.name + "': dimensions must be integers 1 to 2^32-1");
        dims.push_back(static_cast<std::size_t>(d));
      }
      std::size_t count = 0;
      if (auto r = core_.check_shape(in.name, dims, *w, batch, count)) return refuse(Code::INVALID_ARGUMENT, *r);
      if (int8) {
        if (!raw) return refuse(Code::INVALID_ARGUMENT, "input '" + in.name + "': INT8 codes go in raw_input_contents");
        const auto params = int8_params(in);
        if (!params) return refuse(Code::INVALID_ARGUMENT, "input '" + in.name + "': INT8 codes need the parameters scale "
                                                                              "(a positive double) and zero_point (an int64 of -128 to 127)");
        int8_inputs[i] = *params;
      }
      const std::size_t element_bytes = int8 ? 1 : sizeof(float);
      if (raw) {
        if (!in.contents.empty())
          return refuse(Code::INVALID_ARGUMENT, "input '" + in.name + "' has both contents and raw_input_contents");
        if (q.raw_input_contents[i].size() != count * element_bytes)
          return refuse(Code::INVALID_ARGUMENT, "input '" + in.name + "' has " + std::to_string(q.raw_input_contents[i].size()) +
                                                    " bytes of raw contents; shape " + Core::shape_text(dims) + " of " +
                                                    in.datatype + " takes " + std::to_string(count * element_bytes));
      } else {
        oip::InferTensorContents others = in.contents;
        others.fp32_contents.clear();
        if (!others.empty())
          return refuse(Code::INVALID_ARGUMENT, "input '" + in.name + "' carries values outside fp32_contents; the model takes FP32");
        if (in.contents.fp32_contents.size() != count)
          return refuse(Code::INVALID_ARGUMENT, "input '" + in.name + "' has " + std::to_string(in.contents.fp32_contents.size()) +
                                                    " values; shape " + Core::shape_text(dims) + " takes " + std::to_string(count));
      }
      total += count;
    }
    const auto output = Core::output_of(*e);
    for (const auto& o : q.outputs)
      if (o.name != output.name)
        return refuse(Code::INVALID_ARGUMENT, "the model has no output '" + o.name + "' (its output: '" + output.name + "')");

    // The tensors, in the order the tail takes them, reserved before they are allocated.
    MemoryBudget::Reservation tensors_held;
    if (auto r = core_.reserve_tensors(total, tensors_held)) return refuse(code_of(r->code), r->message);
    std::vector<Tensor<float>> tensors;
    tensors.reserve(want.size());
    for (const std::size_t i : source) {
      const oip::InferTensor& in = q.inputs[i];
      std::vector<std::size_t> dims(in.shape.begin(), in.shape.end());
      Tensor<float> t{Shape(std::span<const std::size_t>(dims))};
      if (int8_inputs[i]) {
        const TensorView<const std::int8_t> codes(reinterpret_cast<const std::int8_t*>(q.raw_input_contents[i].data()), t.shape());
        dequantize(codes, *int8_inputs[i], t.view());  // as the native codec decodes 8-bit features: bit for bit
      } else if (raw)
        wire::oip::read_fp32(q.raw_input_contents[i], t.data());
      else
        std::copy(in.contents.fp32_contents.begin(), in.contents.fp32_contents.end(), t.data());
      tensors.push_back(std::move(t));
    }
    oip::ModelInferResponse r;
    r.model_name = e->id.model_id;
    r.model_version = std::to_string(e->id.split);
    r.id = std::move(q.id);
    q = oip::ModelInferRequest();
    held.release();

    // The native deadline: the request timeout, or the client's deadline when that is sooner.
    auto timeout = std::chrono::duration_cast<std::chrono::microseconds>(opt_.request_timeout);
    if (deadline != std::chrono::system_clock::time_point::max()) {
      const auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - std::chrono::system_clock::now());
      if (left.count() <= 0) return refuse(Code::DEADLINE_EXCEEDED, "the call's deadline passed before it ran");
      timeout = std::min(timeout, left);
    }
    const auto outcome = core_.infer(*e, std::move(tensors), std::move(tensors_held), timeout, "grpc " + peer);
    if (outcome.failure) return refuse(code_of(*outcome.failure), outcome.message);
    const Tensor<float>& y = outcome.output;
    oip::InferTensor& o = r.outputs.emplace_back();
    o.name = output.name;
    o.datatype = "FP32";
    for (std::size_t d : y.shape().dims()) o.shape.push_back(static_cast<std::int64_t>(d));
    auto& raw_out = r.raw_output_contents.emplace_back(y.size() * sizeof(float));
    wire::oip::write_fp32(std::span<const float>(y.data(), y.size()), raw_out.data());
    oip::encode(r, out);
    return Status::OK;
  }

  Core core_;
  GrpcOptions opt_;
  wire::oip::DecodeLimits limits_;
  Service service_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::thread> workers_;
  std::mutex queue_mutex_;
  std::condition_variable queue_cv_;
  std::deque<Call*> queue_;
  bool stopping_ = false;
  std::mutex stop_mutex_;
  std::uint16_t port_ = 0;
  std::atomic<std::size_t> requests_{0}, in_flight_{0}, refused_busy_{0}, bytes_received_{0}, bytes_sent_{0};
  std::array<std::atomic<std::uint64_t>, 17> by_code_{};
};

}  // namespace edgesplit
