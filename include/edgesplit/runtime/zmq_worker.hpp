// edgesplit/runtime/zmq_worker.hpp - a worker of a ZeroMQ cluster: takes requests from a
// ZmqBroker (runtime/zmq_broker.hpp) and runs them on a CloudServer of its own. Needs
// EDGESPLIT_WITH_ZMQ.
//
// The worker side of Paranoid Pirate: READY with its capacity, heartbeats both ways, and when the
// broker falls silent for `liveness` intervals (or says DISCONNECT) a fresh socket and READY
// again, after a back-off that doubles up to a maximum.
//
// Requests go straight into the batcher of a CloudServer of its own, so batching, deadlines, the
// memory budget and the model registry are the CloudServer's. Each client of the broker is a
// source of its own in the batcher (its own queue, its share of every batch, its replies back
// under its own request ids); a malformed request is answered with ERROR at once and never
// queued. The broker admits clients and sees their HELLO first, so the worker takes their
// requests in any order.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/thread_name.hpp"
#include "edgesplit/runtime/cloud_server.hpp"
#include "edgesplit/transport/zmq.hpp"
#include "edgesplit/transport/zmq_curve.hpp"
#include "edgesplit/wire/cluster_protocol.hpp"
#include "edgesplit/wire/protocol.hpp"

namespace edgesplit {

/// Where a ZmqWorker finds its broker, how it proves who it is, and how much it takes on.
struct WorkerOptions {
  std::string broker = "tcp://127.0.0.1:5556";  ///< the broker's back end
  std::optional<CurveClientKeys> curve;         ///< our pair and the broker's public key
  std::chrono::milliseconds heartbeat_interval{1000};  ///< heartbeats to the broker, and expected from it
  int liveness = 3;  ///< heartbeat intervals of broker silence before a fresh connection
  std::chrono::milliseconds reconnect_initial{250};  ///< first back-off before reconnecting
  std::chrono::milliseconds reconnect_max{8000};     ///< the back-off doubles up to this
  std::uint32_t capacity = 64;  ///< requests the broker may give us at once
  ServerOptions server{};       ///< the CloudServer that runs the tails
  std::size_t max_message_bytes = default_max_message_bytes;  ///< cap on one message from the broker
  /// ZeroMQ context; empty: one of the worker's own.
  std::shared_ptr<zmq::context_t> context;
};

/// Counters of a worker's life so far.
struct WorkerStats {
  std::size_t requests = 0;      ///< requests taken from the broker
  std::size_t replies = 0;       ///< replies sent to the broker
  std::size_t rejected = 0;      ///< malformed or refused requests answered with ERROR here
  std::size_t malformed = 0;     ///< unreadable messages from the broker, dropped
  std::size_t reconnects = 0;    ///< fresh sockets after silence or DISCONNECT
  std::size_t broker_silences = 0;  ///< times the broker fell silent for `liveness` heartbeats
  std::size_t internal_errors = 0;  ///< failures the loop could not absorb (it started over with a fresh socket)
};

/// A worker process's (or thread's) side of the cluster: register tails, start(), and it serves
/// until stop() (graceful), kill() (a crash, for tests) or destruction.
class ZmqWorker {
 public:
  /// Sets up the CloudServer; nothing connects before start().
  explicit ZmqWorker(WorkerOptions options) : opt_(std::move(options)), server_(opt_.server) {
    if (opt_.capacity == 0 || opt_.capacity > wire::cluster::max_capacity || opt_.liveness < 1)
      fail(errc::invalid_argument, "ZmqWorker needs capacity 1..65536 and liveness >= 1");
    ctx_ = opt_.context ? opt_.context : std::make_shared<zmq::context_t>(1);
    codec_ = wire::FeatureDecoder(opt_.server.limits);
  }
  ZmqWorker(const ZmqWorker&) = delete;
  ZmqWorker& operator=(const ZmqWorker&) = delete;
  ~ZmqWorker() { stop(); }

  /// Registers a tail, as CloudServer::register_model (before or after start()).
  void register_model(const wire::ModelIdentity& id, Sequential<float> tail) {
    server_.register_model(id, std::move(tail));
  }
  /// Registers a graph's tail, as CloudServer::register_model.
  void register_model(const wire::ModelIdentity& id, Graph<float> tail) { server_.register_model(id, std::move(tail)); }
  /// The CloudServer inside (its stats, health, weight updates).
  CloudServer& server() noexcept { return server_; }

  /// Connects to the broker and starts taking work.
  void start() {
    if (loop_.joinable()) return;
    loop_ = std::thread([this] {
      name_this_thread("es-zmq-worker");
      run();
    });
  }

  /// Leaves gracefully: DISCONNECT (the broker re-sends what we held), then stops.
  void stop() { halt(true); }
  /// Dies abruptly, as a crashed process: no goodbye; requests in flight are abandoned.
  void kill() { halt(false); }
  /// While frozen the worker neither reads, answers nor heartbeats, but keeps its connection:
  /// a hung process, as the broker sees it.
  void freeze(bool on) { frozen_.store(on, std::memory_order_release); }

  /// The counters so far.
  WorkerStats stats() const {
    std::lock_guard lock(mutex_);
    return stats_;
  }

 private:
  using Clock = std::chrono::steady_clock;

  // Where one broker client's replies go: the worker's outbox, under the client's id.
  struct ClientSink final : ReplySink {
    ZmqWorker* worker = nullptr;
    std::string client_id;
    void deliver(std::span<const std::byte> frame, MemoryBudget::Reservation) override {
      worker->post(client_id, frame);
    }
  };

  void halt(bool graceful) {
    graceful_.store(graceful, std::memory_order_release);
    stop_.store(true, std::memory_order_release);
    wake_.wake();
    if (loop_.joinable()) loop_.join();
    server_.shutdown(graceful ? std::chrono::milliseconds(1000) : std::chrono::milliseconds(0));
    sessions_.clear();
  }

  // A reply for the broker (any thread): sent by the loop at its next turn.
  void post(const std::string& client_id, std::span<const std::byte> frame) {
    {
      std::lock_guard lock(mutex_);
      outbox_.emplace_back(client_id, std::vector<std::byte>(frame.begin(), frame.end()));
    }
    wake_.wake();
  }

  // The session of a broker client: a batcher source of its own, made on its first request. At
  // most 4 x capacity are kept; those with nothing pending make room for new ones.
  Session& session_for(const std::string& client_id) {
    auto it = sessions_.find(client_id);
    if (it != sessions_.end()) return it->second;
    if (sessions_.size() >= 4 * std::size_t{opt_.capacity}) {
      for (auto i = sessions_.begin(); i != sessions_.end();) {
        if (server_.batcher().pending(i->second.source) == 0) {
          server_.batcher().close_source(i->second.source);
          i = sessions_.erase(i);
        } else {
          ++i;
        }
      }
    }
    auto sink = std::make_shared<ClientSink>();
    sink->worker = this;
    sink->client_id = client_id;
    Session s;
    s.source = server_.batcher().open_source(std::move(sink));
    s.peer = "broker client";
    s.greeted = true;  // the broker saw its HELLO (or its requests fail on their own merits)
    return sessions_.emplace(client_id, std::move(s)).first->second;
  }
  zmq::socket_t connect() {
    zmq::socket_t s(*ctx_, zmq::socket_type::dealer);
    detail::zmq::configure_common(s, opt_.max_message_bytes, 10000);
    if (opt_.curve) configure_curve_client(s, *opt_.curve);
    s.connect(opt_.broker);
    const auto h = wire::cluster::header(wire::cluster::Command::ready);
    const auto cap = wire::cluster::encode_capacity(opt_.capacity);
    (void)zmq_send(s.handle(), h.data(), h.size(), ZMQ_SNDMORE | ZMQ_DONTWAIT);
    (void)zmq_send(s.handle(), cap.data(), cap.size(), ZMQ_DONTWAIT);
    return s;
  }

  void count(std::size_t WorkerStats::*field) {
    std::lock_guard lock(mutex_);
    ++(stats_.*field);
  }

  // A REQUEST: validated, decoded and queued by the server's handler, or answered ERROR.
  void on_request(const std::string& client_id, std::span<const std::byte> body) {
    count(&WorkerStats::requests);
    Session& s = session_for(client_id);
    if (server_.handler().handle(s, body, codec_) == RequestHandler::Verdict::close) {
      count(&WorkerStats::rejected);
      s.greeted = true;  // a refused HELLO ends nothing here: the broker client may try again
    }
  }

  void on_message(std::vector<zmq::message_t>& parts, zmq::socket_t& s, bool& reconnect_now) {
    try {
      if (parts.empty()) fail(errc::corrupt_frame, "empty message");
      const auto cmd = wire::cluster::parse_header({static_cast<const std::byte*>(parts[0].data()), parts[0].size()});
      if (parts.size() != wire::cluster::parts_of(cmd)) fail(errc::corrupt_frame, "wrong number of parts");
      switch (cmd) {
        case wire::cluster::Command::heartbeat: return;
        case wire::cluster::Command::disconnect: reconnect_now = true; return;
        case wire::cluster::Command::request: {
          if (parts[1].size() == 0 || parts[1].size() > wire::cluster::max_client_id_bytes)
            fail(errc::corrupt_frame, "bad client id");
          on_request(parts[1].to_string(), {static_cast<const std::byte*>(parts[2].data()), parts[2].size()});
          return;
        }
        default: fail(errc::corrupt_frame, "a command a broker does not send");
      }
    } catch (const error&) {
      count(&WorkerStats::malformed);
    }
    (void)s;
  }

  // The loop's thread: nothing ends it but stop() or kill(). A failure a turn cannot absorb (out
  // of memory) starts the loop over with a fresh socket after a pause; the broker re-sends what
  // the old connection held.
  void run() {
    while (!stop_.load(std::memory_order_acquire)) {
      try {
        run_loop();
        return;
      } catch (...) {
        count(&WorkerStats::internal_errors);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
  }

  void run_loop() {
    zmq::socket_t s = connect();
    const auto silence = opt_.heartbeat_interval * opt_.liveness;
    auto last_heard = Clock::now();
    auto next_heartbeat = Clock::now() + opt_.heartbeat_interval;
    auto backoff = opt_.reconnect_initial;
    std::vector<zmq::message_t> parts;
    std::deque<std::pair<std::string, std::vector<std::byte>>> out;
    while (!stop_.load(std::memory_order_acquire)) {
      if (frozen_.load(std::memory_order_acquire)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        continue;
      }
      zmq_pollitem_t items[2] = {{s.handle(), 0, ZMQ_POLLIN, 0}, wake_.item()};
      const long timeout = std::clamp<long>(
          static_cast<long>(std::chrono::ceil<std::chrono::milliseconds>(next_heartbeat - Clock::now()).count()), 0, 100);
      try {
        detail::zmq::poll(items, 2, timeout);
      } catch (const error&) {
        break;
      }
      if (items[1].revents & ZMQ_POLLIN) wake_.drain();
      bool reconnect_now = false;
      for (int i = 0; i < 1024; ++i) {
        parts.clear();
        for (;;) {
          zmq::message_t m;
          if (!s.recv(m, zmq::recv_flags::dontwait)) break;
          const bool more = m.more();
          parts.push_back(std::move(m));
          if (!more || parts.size() > 4) break;
        }
        if (parts.empty()) break;
        detail::zmq::discard_more(s);
        last_heard = Clock::now();
        on_message(parts, s, reconnect_now);
      }
      {
        std::lock_guard lock(mutex_);
        out.swap(outbox_);
      }
      const auto h = wire::cluster::header(wire::cluster::Command::reply);
      for (auto& [cid, bytes] : out) {
        const bool sent = zmq_send(s.handle(), h.data(), h.size(), ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
                          zmq_send(s.handle(), cid.data(), cid.size(), ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
                          zmq_send(s.handle(), bytes.data(), bytes.size(), ZMQ_DONTWAIT) >= 0;
        if (sent) count(&WorkerStats::replies);
      }
      out.clear();
      const auto now = Clock::now();
      if (now >= next_heartbeat) {
        const auto hb = wire::cluster::header(wire::cluster::Command::heartbeat);
        (void)zmq_send(s.handle(), hb.data(), hb.size(), ZMQ_DONTWAIT);
        next_heartbeat = now + opt_.heartbeat_interval;
      }
      if (reconnect_now || now - last_heard > silence) {
        if (!reconnect_now) count(&WorkerStats::broker_silences);
        s.close();
        // Back off before a fresh socket (a DISCONNECT means the broker is there: no wait).
        if (!reconnect_now) {
          const auto until = Clock::now() + backoff;
          while (Clock::now() < until && !stop_.load(std::memory_order_acquire))
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
          backoff = std::min(backoff * 2, opt_.reconnect_max);
        }
        if (stop_.load(std::memory_order_acquire)) return;
        s = connect();
        count(&WorkerStats::reconnects);
        last_heard = Clock::now();
      } else if (now - last_heard < opt_.heartbeat_interval) {
        backoff = opt_.reconnect_initial;  // the broker answers: the next silence starts afresh
      }
    }
    if (graceful_.load(std::memory_order_acquire)) {
      const auto d = wire::cluster::header(wire::cluster::Command::disconnect);
      (void)zmq_send(s.handle(), d.data(), d.size(), ZMQ_DONTWAIT);
      // Linger briefly so the goodbye leaves before the socket closes.
      s.set(zmq::sockopt::linger, 200);
    }
    s.close();
  }

  WorkerOptions opt_;
  std::shared_ptr<zmq::context_t> ctx_;
  CloudServer server_;
  wire::FeatureDecoder codec_;  // loop thread: decodes requests
  std::map<std::string, Session> sessions_;  // loop thread: one per broker client
  detail::zmq::WakePipe wake_;
  std::atomic<bool> stop_{false}, graceful_{true}, frozen_{false};

  mutable std::mutex mutex_;  // everything below
  std::deque<std::pair<std::string, std::vector<std::byte>>> outbox_;
  WorkerStats stats_;

  std::thread loop_;
};

}  // namespace edgesplit
