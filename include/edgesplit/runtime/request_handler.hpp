// edgesplit/runtime/request_handler.hpp - the server's side of the conversation with one edge:
// HELLO first, then INFER and PING; every front end hands whole messages to it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/runtime/dynamic_batcher.hpp"
#include "edgesplit/runtime/memory_budget.hpp"
#include "edgesplit/runtime/model_registry.hpp"
#include "edgesplit/runtime/server_options.hpp"
#include "edgesplit/transport/clock.hpp"
#include "edgesplit/wire/feature_codec.hpp"
#include "edgesplit/wire/protocol.hpp"

namespace edgesplit {

/// What one connection has established: its batcher source (where its replies go) and its HELLO.
struct Session {
  DynamicBatcher::Source source;  ///< its queue in the batcher, and its reply sink
  std::string peer;               ///< who it is, for the log ("127.0.0.1:50312", "in-process")
  bool greeted = false;           ///< a HELLO was accepted: requests may follow
  /// The thread that hands this session's messages to the handler runs a batch that is due at
  /// once itself (see DynamicBatcher::submit). For an in-process caller that waits for its answer
  /// anyway; not for a connection's reader, which would stop reading while it computes and leave
  /// requests queued in the transport, unseen by the server's limits and deadlines.
  bool run_inline = false;
  wire::ModelIdentity model;      ///< what the HELLO asked for
  /// Called with the accepted HELLO's identity before it is answered, for a front end that
  /// other threads ask which model a connection serves (weight pushes).
  std::function<void(const wire::ModelIdentity&)> on_hello;
};

/// Counters of the conversations so far.
struct HandlerStats {
  std::size_t hellos = 0;             ///< HELLOs accepted
  std::size_t hellos_refused = 0;     ///< HELLOs refused (unknown model, version, shape, fingerprint)
  std::size_t protocol_errors = 0;    ///< malformed frames or messages out of turn: connection closed
  std::size_t request_errors = 0;     ///< INFERs refused before queueing (unknown model, bad shape)
  std::size_t rejected_budget = 0;    ///< INFERs refused `overloaded` because the memory budget was full
  std::size_t edge_errors = 0;        ///< ERROR reports received from edges (e.g. a refused weights push)
};

/// Handles one whole message of one session and answers through the session's sink: the
/// protocol of docs/wire-format.md, enforced.
///
/// - Nothing but HELLO before a HELLO is accepted: anything else is answered ERROR
///   `unsupported` and the connection closed.
/// - A HELLO is refused, with a message that says what differs, for an unknown model
///   (`unsupported`), another major version (`version_mismatch`), features of another
///   per-sample shape than the tail takes (`shape_mismatch`) or another tail fingerprint
///   (`version_mismatch`); the refusal is logged and the connection closed.
/// - An INFER is validated up to its tensor header, checked against the tail's input shape and
///   the memory budget (frame, features and reply), then queued with its frame: a worker decodes
///   the features, so the front end's thread spends no time on a large or compressed request.
/// - A malformed frame is answered with its typed error and the connection closed.
class RequestHandler {
 public:
  /// What the front end does with the connection after a message.
  enum class Verdict { keep, close };

  /// Serves through `batcher` the tails of `registry`; reserves under `budget`; reads deadlines on `clock`.
  RequestHandler(ModelRegistry& registry, DynamicBatcher& batcher, MemoryBudget& budget, const ServerOptions& options,
                 const Clock& clock = SteadyClock::instance())
      : registry_(registry), batcher_(batcher), budget_(budget), opt_(options), clock_(clock) {}

  /// Handles `message`, decoding with `codec` (the calling thread's; its limits should be the
  /// server's). Never throws: every failure is answered to the peer or ends the connection.
  Verdict handle(Session& s, std::span<const std::byte> message, wire::FeatureDecoder& codec) noexcept {
    wire::FrameHeader h;
    bool have_header = false;
    try {
      h = wire::peek(message, opt_.limits);
      have_header = true;
      if (!s.greeted && h.type != wire::MessageType::hello) {
        count(&HandlerStats::protocol_errors);
        reply_error(s, h.request_id, errc::unsupported,
                    "HELLO must come first; got " + std::string(wire::to_string(h.type)));
        return Verdict::close;
      }
      switch (h.type) {
        case wire::MessageType::hello: return hello(s, message, h.request_id);
        case wire::MessageType::infer: return infer(s, message, codec);
        case wire::MessageType::infer_tensors: return infer_tensors(s, message, codec);
        case wire::MessageType::ping: {
          const std::uint64_t t = wire::decode_ping(message, opt_.limits);
          std::vector<std::byte> out;
          wire::encode_ping(out, h.request_id, t, /*pong=*/true);
          send(s, out);
          return Verdict::keep;
        }
        case wire::MessageType::error: {
          const wire::ErrorMessage e = wire::decode_error(message, opt_.limits);
          count(&HandlerStats::edge_errors);
          detail::server_log(opt_, s.peer + " reports " + std::string(to_string(e.code)) + ": " + e.message);
          return Verdict::keep;
        }
        default:
          (void)wire::parse_frame(message, opt_.limits);  // a malformed frame is still malformed
          reply_error(s, h.request_id, errc::unsupported,
                      "the server does not take " + std::string(wire::to_string(h.type)) + " frames");
          return Verdict::keep;
      }
    } catch (const error& e) {
      // Malformed bytes: tell the peer why, then drop this connection only.
      count(&HandlerStats::protocol_errors);
      reply_error(s, have_header ? h.request_id : 0, e.code(), e.what());
      return Verdict::close;
    } catch (...) {
      count(&HandlerStats::protocol_errors);
      reply_error(s, have_header ? h.request_id : 0, errc::internal, "the server failed on this message");
      return Verdict::close;
    }
  }

  /// A snapshot of the counters.
  HandlerStats stats() const {
    std::lock_guard lock(stats_mutex_);
    return stats_;
  }

 private:
  Verdict hello(Session& s, std::span<const std::byte> message, std::uint32_t request_id) {
    const wire::Hello want = wire::decode_hello_check(message, opt_.limits);
    const std::string what = "model '" + want.id.model_id + "' at split " + std::to_string(want.id.split);
    const auto e = registry_.find({want.id.model_id, want.id.split});
    const auto refuse = [&](errc code, const std::string& why) {
      count(&HandlerStats::hellos_refused);
      detail::server_log(opt_, "refused HELLO from " + s.peer + ": " + why);
      reply_error(s, request_id, code, why);
      return Verdict::close;
    };
    if (!e) return refuse(errc::unsupported, "no " + what);
    if (e->id.major != want.id.major)
      return refuse(errc::version_mismatch, what + " is at major version " + std::to_string(e->id.major) +
                                                ", the edge speaks " + std::to_string(want.id.major));
    if (!want.check.signature.empty()) {
      const Shape sent(std::span<const std::size_t>(want.check.signature));
      std::string why;
      if (e->signature) {
        if (!(*e->signature == sent)) why = "the tail takes " + e->signature->str();
      } else {
        try {
          (void)output_signature(e->model, sent);
        } catch (const error& err) {
          why = std::string("the tail refuses them: ") + err.what();
        }
      }
      if (!why.empty())
        return refuse(errc::shape_mismatch, what + ": the edge's head produces features of shape " + sent.str() +
                                                " per sample; " + why);
    }
    if (want.check.fingerprint != 0 && want.check.fingerprint != e->fingerprint)
      return refuse(errc::version_mismatch, what + ": the edge expects tail fingerprint " + hex(want.check.fingerprint) +
                                                ", this server serves " + hex(e->fingerprint) + " (" +
                                                describe_layers(e->model) + ", input " +
                                                (e->signature ? e->signature->str() : std::string("undeclared")) +
                                                ", major " + std::to_string(e->id.major) +
                                                "): the architecture, the input shape or the major version differ");
    wire::ModelCheck mine;
    mine.fingerprint = e->fingerprint;
    if (e->signature) mine.signature.assign(e->signature->dims().begin(), e->signature->dims().end());
    std::vector<std::byte> out;
    // An edge that sent no check may be a 1.0 reader, which refuses HELLO fields it does not know.
    wire::encode_hello(out, e->id, request_id, want.check.empty() ? wire::ModelCheck{} : mine);
    s.greeted = true;
    s.model = want.id;
    if (s.on_hello) s.on_hello(s.model);
    count(&HandlerStats::hellos);
    send(s, out);
    return Verdict::keep;
  }

  Verdict infer(Session& s, std::span<const std::byte> message, wire::FeatureDecoder& codec) {
    const wire::InferHeader h = wire::read_infer(message, codec);
    const auto e = registry_.find({h.request.model_id, h.request.split});
    if (e && !e->feature_tensors.empty()) {
      count(&HandlerStats::request_errors);
      if (e->metrics) e->metrics->refused(errc::shape_mismatch);
      reply_error(s, h.request_id, errc::shape_mismatch,
                  "model '" + h.request.model_id + "' at split " + std::to_string(h.request.split) + " takes " +
                      std::to_string(e->feature_tensors.size()) + " named tensors (an INFER_TENSORS frame), got one");
      return Verdict::keep;
    }
    return queue(s, message, h.request_id, h.request, e, h.tensor.shape);
  }

  // A request of several named tensors: each must be the tail's input of that name and
  // per-sample shape, in the tail's order; the request runs on them side by side in one row.
  Verdict infer_tensors(Session& s, std::span<const std::byte> message, wire::FeatureDecoder& codec) {
    const wire::InferTensorsHeader h =
        wire::read_infer_tensors(message, codec, [](std::size_t, std::string_view, const wire::TensorHeader&) {});
    const auto e = registry_.find({h.request.model_id, h.request.split});
    std::string wrong;
    if (e) {
      const auto& want = e->feature_tensors;
      if (want.empty() && h.count > 1) {
        wrong = "takes one tensor, got " + std::to_string(h.count);
      } else if (!want.empty()) {
        if (h.count != want.size()) wrong = "takes " + std::to_string(want.size()) + " tensors, got " + std::to_string(h.count);
        else
          (void)wire::read_infer_tensors(message, codec, [&](std::size_t k, std::string_view name, const wire::TensorHeader& t) {
            if (!wrong.empty()) return;
            if (name != want[k].first)
              wrong = "takes tensor '" + want[k].first + "' in place " + std::to_string(k) + ", got '" + std::string(name) + "'";
            else if (!(Shape(t.shape.dims().subspan(1)) == want[k].second))
              wrong = "takes tensor '" + want[k].first + "' of per-sample shape " + want[k].second.str() + ", got " +
                      t.shape.str();
          });
      }
    }
    if (!wrong.empty()) {
      count(&HandlerStats::request_errors);
      if (e && e->metrics) e->metrics->refused(errc::shape_mismatch);
      reply_error(s, h.request_id, errc::shape_mismatch,
                  "model '" + h.request.model_id + "' at split " + std::to_string(h.request.split) + " " + wrong);
      return Verdict::keep;
    }
    return queue(s, message, h.request_id, h.request, e, Shape{h.batch, h.width});
  }

  // Checks the request against its tail, reserves memory and hands the frame to the batcher,
  // whose worker decodes it into features of `shape`.
  Verdict queue(Session& s, std::span<const std::byte> message, std::uint32_t request_id, const wire::InferRequest& r,
                const std::shared_ptr<const ModelRegistry::Entry>& e, const Shape& shape) {
    if (!e) {
      count(&HandlerStats::request_errors);
      reply_error(s, request_id, errc::unsupported, "no model '" + r.model_id + "' at split " + std::to_string(r.split));
      return Verdict::keep;
    }
    Shape out_shape;
    try {
      out_shape = e->model.output_shape(shape);
    } catch (const error& err) {
      count(&HandlerStats::request_errors);
      if (e->metrics) e->metrics->refused(err.code());
      reply_error(s, request_id, err.code(), err.what());
      return Verdict::keep;
    }
    // Room for the frame until a worker decodes it, the decoded features and the reply (raw floats
    // at most), before anything is decoded.
    const std::size_t need = message.size() + Shape::checked_bytes(shape.count(), sizeof(float)) + reply_bytes(out_shape);
    bool ok = false;
    MemoryBudget::Reservation held = budget_.reserve(need, ok);
    if (!ok) {
      count(&HandlerStats::rejected_budget);
      if (e->metrics) e->metrics->refused(errc::overloaded);
      reply_error(s, request_id, errc::overloaded, "server memory budget full");
      return Verdict::keep;
    }
    BatchRequest req;
    req.request_id = request_id;
    req.key = {r.model_id, r.split};
    req.shape = shape;
    req.frame = batcher_.take_buffer();  // the worker decodes: a large request costs its time, not this thread's
    req.frame.assign(message.begin(), message.end());
    if (r.deadline_us != 0) req.deadline = clock_.now() + std::chrono::microseconds(r.deadline_us);
    req.held = std::move(held);
    req.metrics = e->metrics;
    batcher_.submit(s.source, std::move(req), s.run_inline);
    return Verdict::keep;
  }

  // Bytes of a RESPONSE frame carrying raw floats of `shape` (the largest a reply can be).
  static std::size_t reply_bytes(const Shape& shape) {
    return wire::frame_header_size + 9 + 12 + 4 * shape.rank() + Shape::checked_bytes(shape.count(), sizeof(float));
  }

  void send(Session& s, std::span<const std::byte> frame) {
    try {
      s.source->sink->deliver(frame, budget_.open());
    } catch (...) {
      // the connection is gone; its front end ends it
    }
  }
  void reply_error(Session& s, std::uint32_t request_id, errc code, const std::string& what) {
    try {
      std::vector<std::byte> out;
      wire::encode_error(out, request_id, code, what);
      send(s, out);
    } catch (...) {
    }
  }

  static std::string hex(std::uint64_t v) {
    char b[19];
    std::snprintf(b, sizeof b, "0x%016llx", static_cast<unsigned long long>(v));
    return b;
  }

  void count(std::size_t HandlerStats::*field) {
    std::lock_guard lock(stats_mutex_);
    ++(stats_.*field);
  }

  ModelRegistry& registry_;
  DynamicBatcher& batcher_;
  MemoryBudget& budget_;
  const ServerOptions& opt_;
  const Clock& clock_;
  mutable std::mutex stats_mutex_;
  HandlerStats stats_;
};

}  // namespace edgesplit
