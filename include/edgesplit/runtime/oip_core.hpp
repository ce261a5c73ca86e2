// edgesplit/runtime/oip_core.hpp - what the Open Inference Protocol front ends (HTTP/REST in
// runtime/oip_http.hpp, gRPC in runtime/oip_grpc_server.hpp) share: which tail a model name and
// version mean, the tail's input and output tensors as the protocol describes them, the checks of
// a request's tensor shapes, and one inference handed to the server's own RequestHandler as a
// native frame. Each front end keeps only its encoding and its error codes.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/runtime/cloud_server.hpp"
#include "edgesplit/wire/feature_codec.hpp"
#include "edgesplit/wire/protocol.hpp"

namespace edgesplit {

/// The library version the OIP front ends report as the server's version (GET /v2,
/// ServerMetadata).
inline constexpr std::string_view oip_server_version = "0.1.0";

}  // namespace edgesplit

namespace edgesplit::detail {

/// The serving core of the OIP front ends, over one CloudServer.
class OipCore {
 public:
  using Entry = ModelRegistry::Entry;

  /// A tensor of a tail as the protocol's metadata states it: its name and per-sample shape
  /// (none: not known before a request comes).
  struct TensorInfo {
    std::string name;
    std::optional<Shape> sample;
  };

  /// An inference's outcome: the output, or the code and text of the failure.
  struct Outcome {
    std::optional<errc> failure;  ///< empty: `output` holds the answer
    std::string message;
    Tensor<float> output;
  };

  explicit OipCore(CloudServer& server) noexcept : server_(server) {}

  CloudServer& server() const noexcept { return server_; }

  /// The tail `name` at `version` (a decimal split), or its lowest split without one; null if none.
  std::shared_ptr<const Entry> find(const std::string& name, const std::string& version) const {
    if (!version.empty()) {
      if (version.size() > 5 || !std::all_of(version.begin(), version.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return nullptr;
      const unsigned long v = std::stoul(version);
      if (v > std::numeric_limits<std::uint16_t>::max()) return nullptr;
      return server_.models().find({name, static_cast<std::uint16_t>(v)});
    }
    for (const auto& e : server_.models().entries())
      if (e->id.model_id == name) return e;  // entries are ordered by (id, split): the lowest split
    return nullptr;
  }
  static std::string no_model(const std::string& name, const std::string& version) {
    return "no model '" + name + "'" + (version.empty() ? std::string() : " at version " + version);
  }
  /// The versions (splits, in decimal) served under `name`, lowest first.
  std::vector<std::string> versions(const std::string& name) const {
    std::vector<std::string> v;
    for (const auto& e : server_.models().entries())
      if (e->id.model_id == name) v.push_back(std::to_string(e->id.split));
    return v;
  }

  /// The tail's inputs, in the order it takes them.
  static std::vector<TensorInfo> inputs_of(const Entry& e) {
    std::vector<TensorInfo> in;
    if (!e.feature_tensors.empty()) {
      for (const auto& [name, shape] : e.feature_tensors) in.push_back({name, shape});
      return in;
    }
    std::string name = "features";
    if (!e.model.empty())
      if (const auto* g = dynamic_cast<const GraphLayer<float>*>(&e.model[0]); g && g->graph().input_names().size() == 1)
        name = g->graph().input_names()[0];
    in.push_back({name, e.signature});
    return in;
  }
  /// The tail's output.
  static TensorInfo output_of(const Entry& e) {
    std::string name = "output";
    if (!e.model.empty())
      if (const auto* g = dynamic_cast<const GraphLayer<float>*>(&e.model[0]); g && g->graph().output_names().size() == 1)
        name = g->graph().output_names()[0];
    try {
      std::size_t width = 0;
      if (!e.feature_tensors.empty()) {
        for (const auto& t : e.feature_tensors) width += t.second.count();
        const Shape out = e.model.output_shape(Shape{1, width});
        return {name, Shape(out.dims().subspan(1))};
      }
      if (e.signature) return {name, output_signature(e.model, *e.signature)};
    } catch (const error&) {
    }
    return {name, std::nullopt};
  }

  /// "[-1,16]": a per-sample shape with the batch in front, as the metadata writes it.
  static std::string batch_shape(const Shape& sample) {
    std::string t = "[-1";
    for (std::size_t d : sample.dims()) {
      t += ',';
      t.append(std::to_string(d));  // append, not operator+: GCC 12 warns falsely (-Wrestrict) on the latter
    }
    t += ']';
    return t;
  }
  /// "[3,16]": a request's shape as the messages quote it.
  static std::string shape_text(std::span<const std::size_t> dims) {
    std::string t = "[";
    for (std::size_t i = 0; i < dims.size(); ++i) {
      if (i) t += ',';
      t.append(std::to_string(dims[i]));
    }
    t += ']';
    return t;
  }

  /// The refusal of an input the tail `e` (of inputs `want`) does not have.
  static std::string no_input(const Entry& e, const std::vector<TensorInfo>& want, const std::string& name) {
    std::string names;
    for (const auto& w : want) names += (names.empty() ? "'" : ", '") + w.name + "'";
    return "model '" + e.id.model_id + "' has no input '" + name + "' (its inputs: " + names + ")";
  }

  /// Checks a request's input tensor `name` of shape `dims` (each 1 to 2^32-1, already checked
  /// by the caller) against the tail's input `want`: rank 2 (the batch first) to Shape::max_rank,
  /// an element count that neither overflows nor passes the server's cap, the per-sample shape,
  /// and the batch of the inputs checked before (`batch`, set by the first). Sets `count`; the
  /// message of the refusal otherwise.
  std::optional<std::string> check_shape(const std::string& name, std::span<const std::size_t> dims, const TensorInfo& want,
                                         std::optional<std::size_t>& batch, std::size_t& count) const {
    if (dims.size() < 2 || dims.size() > Shape::max_rank)
      return "input '" + name + "' needs a shape of 2 to " + std::to_string(Shape::max_rank) + " dimensions, the batch first";
    try {
      count = Shape(dims).count();
    } catch (const error&) {
      return "input '" + name + "' has shape " + shape_text(dims) + ", whose element count overflows";
    }
    const std::size_t max_elements = server_.options().limits.max_elements;
    if (count > max_elements)
      return "input '" + name + "' has " + std::to_string(count) + " elements, over the server's cap of " +
             std::to_string(max_elements);
    if (want.sample && !(Shape(dims.subspan(1)) == *want.sample))
      return "input '" + name + "' has shape " + shape_text(dims) + "; the model takes " + batch_shape(*want.sample);
    if (batch && *batch != dims[0]) return "inputs differ in batch: " + std::to_string(*batch) + " and " + std::to_string(dims[0]);
    batch = dims[0];
    return std::nullopt;
  }

  /// A request refused: the code a front end answers with its own status (see fault_of), and why.
  struct Refusal {
    errc code;
    std::string message;
  };

  /// What a failure is, whatever the protocol: the request's fault, no such model, the server
  /// full, past the deadline, or the server's own failure. Each front end has one status for each.
  enum class Fault { request, no_model, busy, late, server };
  static Fault fault_of(errc c) noexcept {
    switch (c) {
      case errc::unsupported: return Fault::no_model;
      case errc::overloaded: return Fault::busy;
      case errc::timeout: return Fault::late;
      case errc::internal:
      case errc::io_error:
      case errc::unreachable:
      case errc::quarantined: return Fault::server;
      default: return Fault::request;
    }
  }

  /// The refusal of a request with `given` inputs for the tail `e`, which takes `want`.
  static std::optional<std::string> check_input_count(const Entry& e, const std::vector<TensorInfo>& want, std::size_t given) {
    if (given == want.size()) return std::nullopt;
    return "model '" + e.id.model_id + "' takes " + std::to_string(want.size()) + " input(s), got " + std::to_string(given);
  }

  /// Before input tensors of `elements` floats in all are allocated: checks that they fit one
  /// native frame (`too_large` otherwise) and reserves them and their frame under the memory
  /// budget into `held` (`overloaded` when it is full).
  std::optional<Refusal> reserve_tensors(std::size_t elements, MemoryBudget::Reservation& held) const {
    const std::size_t cap = server_.options().limits.max_payload_bytes;
    if (elements * sizeof(float) + 4096 > cap)  // elements <= max_elements (check_shape): no overflow
      return Refusal{errc::too_large, "the request's tensors take " + std::to_string(elements * sizeof(float)) +
                                          " bytes, over the server's cap of " + std::to_string(cap)};
    bool ok = false;
    held = server_.budget().reserve(Shape::checked_bytes(elements, 2 * sizeof(float)) + 4096, ok);
    if (!ok) return Refusal{errc::overloaded, "server memory budget full"};
    return std::nullopt;
  }

  /// Runs the tail `e` on `tensors` (one per input of inputs_of(e), in that order, already
  /// checked): one native INFER (or INFER_TENSORS) frame handed to the server's RequestHandler as
  /// from a greeted connection, so it shares the batcher, queue limits, memory budget, deadlines
  /// and per-model metrics with every other front end. `held` (the tensors' reservation) is
  /// released once the frame is made; waits at most `timeout` (the native deadline) plus a
  /// grace for the answer.
  Outcome infer(const Entry& e, std::vector<Tensor<float>> tensors, MemoryBudget::Reservation held,
                std::chrono::microseconds timeout, const std::string& peer) {
    const wire::DecodeLimits& limits = server_.options().limits;
    CodecConfig raw;
    raw.bits = wire::raw_f32_bits;
    raw.limits = limits;
    wire::InferRequest r;
    r.model_id = e.id.model_id;
    r.split = e.id.split;
    r.deadline_us = static_cast<std::uint32_t>(std::clamp<long long>(timeout.count(), 1, UINT32_MAX));
    const std::uint32_t request_id = next_id_.fetch_add(1, std::memory_order_relaxed);
    std::vector<std::byte> frame;
    if (e.feature_tensors.empty()) {
      wire::FeatureEncoder codec(raw);
      wire::encode_infer(frame, request_id, r, codec, tensors.at(0).cview());
    } else {
      std::vector<wire::FeatureEncoder> codecs;
      codecs.reserve(tensors.size());
      std::vector<TensorView<const float>> views;
      std::vector<std::string> names;
      for (const auto& [name, shape] : e.feature_tensors) names.push_back(name);
      for (const auto& t : tensors) {
        codecs.emplace_back(raw);
        views.push_back(t.cview());
      }
      wire::encode_infer_tensors(frame, request_id, r, codecs, names, views);
    }
    tensors.clear();

    auto reply = std::make_shared<Reply>();
    Session s;
    s.peer = peer;
    s.greeted = true;  // OIP has no HELLO: the model was resolved by the caller
    s.model = e.id;
    s.source = server_.batcher().open_source(reply);
    {
      wire::FeatureDecoder decoder(limits);
      (void)server_.handler().handle(s, frame, decoder);
    }
    frame = std::vector<std::byte>();
    held.release();
    bool answered = false;
    {
      std::unique_lock lock(reply->mutex);
      answered = reply->cv.wait_for(lock, timeout + std::chrono::seconds(10), [&] { return reply->done; });
    }
    server_.batcher().close_source(s.source);
    s.source.reset();
    Outcome out;
    if (!answered) {
      out.failure = errc::timeout;
      out.message = "no answer within the request timeout";
      return out;
    }
    // The reply object may outlive this request inside the batcher's bookkeeping for a moment:
    // what it holds under the budget goes back once the answer is read, whatever happens.
    struct Release {
      Reply& r;
      ~Release() {
        std::lock_guard lock(r.mutex);
        r.held.release();
        r.frame = std::vector<std::byte>();
      }
    } release{*reply};
    const wire::FrameHeader h = wire::peek(reply->frame, limits);
    if (h.type == wire::MessageType::error) {
      const wire::ErrorMessage m = wire::decode_error(reply->frame, limits);
      out.failure = m.code;
      out.message = std::string(to_string(m.code)) + ": " + m.message;
      return out;
    }
    wire::FeatureDecoder decoder(limits);
    (void)wire::decode_response(reply->frame, decoder, out.output);
    return out;
  }

 private:
  // One request's reply: the worker's RESPONSE or ERROR frame, and the budget it holds until the
  // front end has turned it into an answer.
  struct Reply final : ReplySink {
    std::mutex mutex;
    std::condition_variable cv;
    std::vector<std::byte> frame;
    MemoryBudget::Reservation held;
    bool done = false;
    void deliver(std::span<const std::byte> f, MemoryBudget::Reservation h) override {
      std::lock_guard lock(mutex);
      if (done) return;
      frame.assign(f.begin(), f.end());
      h.shrink_to(frame.size());
      held = std::move(h);
      done = true;
      cv.notify_all();
    }
  };

  CloudServer& server_;
  std::atomic<std::uint32_t> next_id_{1};
};

}  // namespace edgesplit::detail
