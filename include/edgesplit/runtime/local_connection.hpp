// edgesplit/runtime/local_connection.hpp - an in-process connection to a cloud server whose
// server half runs on the sending thread: the fewest thread hand-offs a split round trip can have.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <shared_mutex>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/runtime/dynamic_batcher.hpp"
#include "edgesplit/runtime/memory_budget.hpp"
#include "edgesplit/runtime/request_handler.hpp"
#include "edgesplit/runtime/server_options.hpp"
#include "edgesplit/transport/transport.hpp"
#include "edgesplit/wire/feature_codec.hpp"

namespace edgesplit {

/// The edge's end of an in-process connection made by CloudServer::connect_in_process(). A
/// Transport: send() hands the message to the server's handler on the calling thread, and a
/// batch that is due at once (no other connection could add to it) runs right there; the reply
/// comes back through receive(). A request then crosses one thread (to the edge's receiver)
/// instead of three. Requests that wait for company, and batches of several connections, run on
/// the server's workers as usual.
///
/// Thread-safety: sends are serialized (one handler call at a time per connection); one receiver
/// at a time; close() from any thread wakes a blocked receiver. After the server shuts down,
/// send() and receive() throw `unreachable`.
class LocalConnection {
 public:
  /// Shared between the edge's end and the server (which closes it at shutdown).
  struct State final : ReplySink {
    /// Binds the connection to the server's handler, batcher and options.
    State(RequestHandler& h, DynamicBatcher& b, const ServerOptions& o) : handler(&h), batcher(&b), opt(o), codec(o.limits) {}
    RequestHandler* handler;  ///< null once the server is gone
    DynamicBatcher* batcher;  ///< likewise
    const ServerOptions& opt;  ///< the server's options (valid while handler is set)
    std::mutex send_mutex;     ///< one handler call at a time; guards handler, batcher, session, codec
    Session session;           ///< what this connection has said
    wire::FeatureDecoder codec;  ///< decodes its requests
    std::mutex mutex;          ///< guards the reply queue and `closed`
    std::condition_variable ready;  ///< a reply arrived, or the connection closed
    std::deque<std::vector<std::byte>> replies;  ///< replies not yet received
    std::vector<std::vector<std::byte>> spare;   ///< received buffers kept for later replies
    bool closed = false;       ///< either side closed
    std::shared_mutex push_mutex;  ///< held shared while `push` runs, exclusively to change it
    std::function<void(std::span<const std::byte>)> push;  ///< set: replies go to it, not the queue

    /// A reply from the server (any thread): handed to `push` when set, else queued for
    /// receive(); never waited for.
    void deliver(std::span<const std::byte> frame, MemoryBudget::Reservation) override {
      {
        std::shared_lock pl(push_mutex);
        if (push) {
          push(frame);
          return;
        }
      }
      std::lock_guard lock(mutex);
      if (closed) return;
      std::vector<std::byte> b;
      if (!spare.empty()) {
        b = std::move(spare.back());
        spare.pop_back();
      }
      b.assign(frame.begin(), frame.end());
      replies.push_back(std::move(b));
      ready.notify_one();
    }

    /// Ends the connection on the server's side: its queued requests are dropped, its replies
    /// no longer kept (call with send_mutex held, or once nothing can send).
    void detach() {
      if (batcher && session.source) batcher->close_source(session.source);
      session.source.reset();  // the source holds this state as its sink
      handler = nullptr;
      batcher = nullptr;
      std::lock_guard lock(mutex);
      closed = true;
      ready.notify_all();
    }
  };

  /// An end on `state` (made by CloudServer::connect_in_process).
  explicit LocalConnection(std::shared_ptr<State> state) : s_(std::move(state)) {}
  /// Moves the end.
  LocalConnection(LocalConnection&&) noexcept = default;
  /// Moves the end.
  LocalConnection& operator=(LocalConnection&&) noexcept = default;
  LocalConnection(const LocalConnection&) = delete;
  LocalConnection& operator=(const LocalConnection&) = delete;
  ~LocalConnection() { close(); }

  /// Hands `bytes` to the server; a batch due at once runs before this returns.
  void send(std::span<const std::byte> bytes) { send(bytes, no_deadline); }
  /// The same; the deadline is not needed: the server never makes a sender wait for room.
  /// `too_large` over the server's frame cap, `unreachable` once closed.
  void send(std::span<const std::byte> bytes, Deadline) {
    State& s = state();
    std::lock_guard lock(s.send_mutex);
    {
      std::lock_guard l(s.mutex);
      if (s.closed || s.handler == nullptr) fail(errc::unreachable, "in-process connection closed");
    }
    if (bytes.size() > s.opt.limits.max_payload_bytes + wire::frame_header_size)
      fail(errc::too_large, "in-process message of " + std::to_string(bytes.size()) + " bytes over the server's cap");
    if (s.handler->handle(s.session, bytes, s.codec) == RequestHandler::Verdict::close) s.detach();
  }

  /// The next reply into `into` (its buffer is reused); false at the deadline (steady clock);
  /// `unreachable` once closed and every reply has been taken.
  bool receive(Deadline deadline, Message& into) {
    State& s = state();
    std::unique_lock lock(s.mutex);
    const auto has = [&] { return !s.replies.empty() || s.closed; };
    if (deadline == no_deadline)
      s.ready.wait(lock, has);
    else if (!s.ready.wait_until(lock, deadline, has))
      return false;
    if (s.replies.empty()) fail(errc::unreachable, "in-process connection closed");
    if (into.bytes.capacity() != 0 && s.spare.size() < 16) s.spare.push_back(std::move(into.bytes));
    into.bytes = std::move(s.replies.front());
    s.replies.pop_front();
    into.sent_at = into.delivered_at = {};
    return true;
  }
  /// The next reply, or nullopt at the deadline.
  std::optional<Message> receive(Deadline deadline) { return detail::receive_new(*this, deadline); }

  /// Hands replies to `on_message` on the thread that produces them (the sender's own thread when
  /// its batch ran inside send()), first any that are queued; an empty function goes back to
  /// receive() and returns once no call to the old one is in progress. `on_message` must not
  /// call push_to itself.
  void push_to(std::function<void(std::span<const std::byte>)> on_message) {
    State& s = state();
    std::deque<std::vector<std::byte>> queued;
    {
      std::unique_lock pl(s.push_mutex);
      s.push = std::move(on_message);
      if (!s.push) return;
      std::lock_guard lock(s.mutex);
      queued.swap(s.replies);
    }
    std::shared_lock pl(s.push_mutex);
    for (const auto& r : queued)
      if (s.push) s.push(r);
  }

  /// Idempotent; ends the connection on both sides and wakes a blocked receiver.
  void close() noexcept {
    if (!s_) return;
    try {
      std::lock_guard lock(s_->send_mutex);
      s_->detach();
    } catch (...) {
    }
  }

 private:
  State& state() const {
    if (!s_) fail(errc::unreachable, "moved-from in-process connection");
    return *s_;
  }
  std::shared_ptr<State> s_;
};

static_assert(Transport<LocalConnection>);

}  // namespace edgesplit
