// edgesplit/runtime/zmq_broker.hpp - the broker of a ZeroMQ cluster: edge clients in front,
// worker processes behind, CURVE on both sides. Needs EDGESPLIT_WITH_ZMQ.
//
// The shape is the ZeroMQ guide's load-balancing broker with Paranoid Pirate reliability:
//
//   edges (DEALER, ZmqTransport) -> [ROUTER front | broker | ROUTER back] <- workers (DEALER, ZmqWorker)
//
// - Workers announce themselves with READY and how many requests they take at once; the broker
//   sends each request to the worker with the most free capacity, and queues requests (bounded)
//   while every worker is full.
// - Broker and workers exchange heartbeats; a worker silent for `liveness` heartbeat intervals,
//   or whose connection is gone, is dead: the requests it held are re-sent to other workers.
// - A request is known by (client id, type, request id); the client id is the client's CURVE
//   key (as ZAP admitted it) and its routing id. Whatever is re-sent, the client gets one answer
//   per request: the first; later answers to the same request are counted and dropped. A client
//   that sends a request again gets the cached answer (byte for byte) if it was answered, nothing
//   more if it is pending; the same id with other contents is refused.
// - Quarantine: a request that was held by a worker when it died is a suspect. A suspect goes to
//   a worker holding nothing else, and nothing else goes to that worker while it holds it, so the
//   next death is the suspect's own doing; a request whose workers died twice is answered
//   `quarantined` and never sent again. One poison request costs at most two workers.
// - Fairness: each client (client id) has its own queue, served round-robin, and a cap on its
//   queued and in-flight requests; a client over its cap is answered `overloaded`, its neighbours
//   are not.
// - Frames from outside are validated (frame header, size, CRC) before anything is queued;
//   a malformed one is answered with ERROR and counted, and hurts no one else.
// - The broker's thread catches whatever a turn of its loop throws (out of memory included),
//   counts it and goes on serving.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/thread_name.hpp"
#include "edgesplit/transport/clock.hpp"
#include "edgesplit/transport/zmq.hpp"
#include "edgesplit/transport/zmq_curve.hpp"
#include "edgesplit/wire/cluster_protocol.hpp"
#include "edgesplit/wire/frame.hpp"
#include "edgesplit/wire/protocol.hpp"

namespace edgesplit {

/// How a ZmqBroker listens, whom it admits, and how it watches its workers.
struct BrokerOptions {
  std::string frontend = "tcp://127.0.0.1:5555";  ///< where edge clients connect
  std::string backend = "tcp://127.0.0.1:5556";   ///< where workers connect
  /// The broker's CURVE key pair (both sockets). Empty: no security, for trusted networks only.
  std::optional<CurveKeyPair> curve;
  std::vector<std::string> client_keys;  ///< public keys of admitted edge clients (with curve)
  std::vector<std::string> worker_keys;  ///< public keys of admitted workers (with curve)
  std::chrono::milliseconds heartbeat_interval{1000};  ///< heartbeats to each worker, and expected from it
  int liveness = 3;  ///< heartbeat intervals of silence after which a worker is dead
  std::size_t queue_capacity = 10000;  ///< requests waiting for a worker (all clients) before `overloaded`
  /// Requests one client (one client id: CURVE key and connection) may have queued or held by
  /// workers at once; beyond it that client alone is answered `overloaded`. The default is far
  /// above an EdgeClient's window (`EdgeOptions::max_in_flight`, 8) and far below
  /// `queue_capacity`, so that one flooding client cannot fill the queue for everyone.
  std::size_t max_queued_per_client = 256;
  std::size_t answered_cache = 1 << 16;  ///< answered requests remembered for retries
  /// A request that found no worker for this long is answered `timeout`.
  std::chrono::milliseconds max_request_age{60000};
  std::size_t max_message_bytes = default_max_message_bytes;  ///< larger messages: the peer is dropped
  int high_water_mark = 10000;  ///< messages queued per peer before sends to it fail
  wire::DecodeLimits limits{};  ///< caps on every frame from a client
};

/// Counters of a broker's life so far (a snapshot, taken once per turn of its loop).
struct BrokerStats {
  std::size_t requests = 0;            ///< distinct requests accepted from clients
  std::size_t replies = 0;             ///< answers sent to clients, `quarantined` included (at most one per request)
  std::size_t dispatched = 0;          ///< requests sent to workers, re-sends included
  std::size_t resent = 0;              ///< requests taken back from a dead or leaving worker and queued again
  std::size_t duplicate_requests = 0;  ///< a request sent again while pending: dropped
  std::size_t replayed = 0;            ///< a request sent again after its answer: answer re-sent
  std::size_t conflicting_requests = 0;  ///< a known request id with other contents: refused
  std::size_t duplicate_replies = 0;   ///< another answer to an answered request: dropped
  std::size_t stale_replies = 0;       ///< an answer to no known request: dropped
  std::size_t rejected_overloaded = 0;  ///< refused with `overloaded`: the queue or the client's share was full
  std::size_t client_overloaded = 0;   ///< of which: the client had max_queued_per_client requests already
  std::size_t expired = 0;             ///< waited longer than max_request_age for a worker
  std::size_t malformed_client = 0;    ///< messages from clients refused with ERROR
  std::size_t malformed_worker = 0;    ///< messages from workers dropped
  std::size_t suspects = 0;     ///< requests held by a worker that died: re-sent alone to one worker
  std::size_t quarantined = 0;  ///< suspects whose second worker died too: answered `quarantined`
  std::size_t internal_errors = 0;  ///< exceptions (out of memory, ...) caught in the broker's loop
  std::size_t workers_joined = 0;   ///< READY from a worker not known yet
  std::size_t workers_expired = 0;  ///< declared dead: silent for `liveness` heartbeats
  std::size_t workers_left = 0;     ///< said DISCONNECT
  std::size_t workers_lost = 0;     ///< their connection was gone when the broker sent to them
  std::size_t workers = 0;          ///< registered now
  std::size_t queue_depth = 0;      ///< requests waiting for a worker now (suspects included)
  std::size_t suspects_waiting = 0;  ///< of which: suspects waiting for a worker to hold them alone
  std::size_t clients = 0;          ///< clients with requests queued or in flight now
  std::size_t in_flight = 0;        ///< requests held by workers now
  std::size_t handshakes = 0;          ///< connections that completed the security handshake
  std::size_t auth_failures = 0;       ///< refused by the ZAP handler (key not allowed)
  std::size_t protocol_failures = 0;   ///< handshake or message failures (no key, bad crypto, ...)
  std::size_t crypto_failures = 0;     ///< of which: a message or handshake failed authentication
  ZapStats zap{};  ///< the ZAP handler's decisions (with CURVE)
};

/// The broker: binds both ROUTER sockets (and, with CURVE, its ZAP handler) in the constructor,
/// then runs its loop on a thread of its own until stop() or destruction.
///
/// Heartbeats, worker expiry and request ages are read on the Clock given to the constructor
/// (the steady clock by default). The loop's waits stay in real time, at most 100 ms each, so on
/// a VirtualClock the broker sees time advanced by someone else within 100 ms of real time.
class ZmqBroker {
 public:
  /// Binds and starts; errc::io_error (or invalid_argument) when an endpoint cannot be bound.
  /// `clock` must outlive the broker.
  explicit ZmqBroker(BrokerOptions options, const Clock& clock = SteadyClock::instance())
      : opt_(std::move(options)), clock_(clock), ctx_(std::make_shared<zmq::context_t>(1)) {
    if (opt_.liveness < 1 || opt_.heartbeat_interval.count() <= 0 || opt_.queue_capacity == 0 ||
        opt_.max_queued_per_client == 0)
      fail(errc::invalid_argument,
           "ZmqBroker needs liveness >= 1, a heartbeat interval, a queue and a per-client share of at least 1");
    try {
      if (opt_.curve) {
        zap_ = std::make_unique<ZapAuthenticator>(
            *ctx_, std::map<std::string, std::vector<std::string>>{{"clients", opt_.client_keys}, {"workers", opt_.worker_keys}});
      }
      front_ = make_router(opt_.frontend, "clients");
      back_ = make_router(opt_.backend, "workers");
      back_.set(zmq::sockopt::router_mandatory, true);  // a send to a vanished worker fails at once
      front_mon_ = monitor(front_, "front");
      back_mon_ = monitor(back_, "back");
      frontend_endpoint_ = front_.get(zmq::sockopt::last_endpoint);
      backend_endpoint_ = back_.get(zmq::sockopt::last_endpoint);
    } catch (const zmq::error_t& e) {
      detail::zmq::fail_zmq("ZmqBroker", e.num());
    }
    thread_ = std::thread([this] {
      name_this_thread("es-zmq-broker");
      try {
        run();
      } catch (...) {
        // run() catches per turn; this is the last line against std::terminate (the sockets
        // then close when the broker is destroyed).
      }
    });
  }
  ZmqBroker(const ZmqBroker&) = delete;
  ZmqBroker& operator=(const ZmqBroker&) = delete;
  ~ZmqBroker() { stop(); }

  /// The bound endpoints, with the port the system chose for "tcp://host:*".
  const std::string& frontend_endpoint() const noexcept { return frontend_endpoint_; }
  const std::string& backend_endpoint() const noexcept { return backend_endpoint_; }  ///< see frontend_endpoint()

  /// The counters as of the broker's last turn (at most ~100 ms old).
  BrokerStats stats() const {
    std::lock_guard lock(stats_mutex_);
    BrokerStats s = published_;
    if (zap_) s.zap = zap_->stats();
    return s;
  }

  /// Stops the broker; requests still pending are dropped (clients' deadlines cover them).
  void stop() {
    stop_.store(true, std::memory_order_release);
    wake_.wake();
    if (thread_.joinable()) thread_.join();
  }

 private:
  // Where a request is: in its client's queue, in the suspects' queue, held by a worker, or
  // nowhere (taken out of a queue a moment before it is answered or sent).
  enum class Where : std::uint8_t { queued, suspect, worker, nowhere };

  struct Request {
    std::string client_id, routing_id;
    std::vector<std::byte> bytes;
    std::uint32_t crc = 0;
    wire::MessageType type{};
    Clock::time_point received;
    std::string worker;  // the worker holding it, when where == worker
    Where where = Where::nowhere;
    int deaths = 0;  // workers that died (expired or lost, not left) while holding it
  };
  struct Worker {
    std::uint32_t capacity = 1;
    std::vector<std::string> in_flight;  // request keys
    Clock::time_point expiry;
    bool isolating = false;  // holds one suspect and nothing else: takes nothing more
    bool reserved = false;   // set aside for a waiting suspect: takes no new ordinary work
  };
  struct Client {
    std::deque<std::string> queue;  // keys of its ordinary requests waiting for a worker
    std::size_t outstanding = 0;    // its requests queued, suspect or held by a worker
    bool in_ring = false;           // listed in ring_
  };
  struct Answer {
    std::vector<std::byte> bytes;
    std::uint32_t request_crc = 0;
    bool quarantined = false;  // remembered for every request type, not only INFER
  };
  using Requests = std::unordered_map<std::string, Request>;
  using Workers = std::unordered_map<std::string, Worker>;

  zmq::socket_t make_router(const std::string& endpoint, const char* domain) {
    zmq::socket_t s(*ctx_, zmq::socket_type::router);
    detail::zmq::configure_common(s, opt_.max_message_bytes, opt_.high_water_mark);
    if (opt_.curve) configure_curve_server(s, CurveServerKeys{*opt_.curve, domain});
    s.bind(endpoint);
    return s;
  }

  zmq::socket_t monitor(zmq::socket_t& s, const char* name) {
    const std::string addr = std::string("inproc://edgesplit-broker-monitor-") + name;
    const int events = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                       ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;
    if (zmq_socket_monitor(s.handle(), addr.c_str(), events) != 0) detail::zmq::fail_zmq("zmq_socket_monitor");
    zmq::socket_t m(*ctx_, zmq::socket_type::pair);
    m.set(zmq::sockopt::linger, 0);
    m.connect(addr);
    return m;
  }

  static std::string key_of(const std::string& client_id, wire::MessageType type, std::uint32_t id) {
    std::string k = client_id;
    k.push_back(static_cast<char>(type));
    for (int i = 0; i < 4; ++i) k.push_back(static_cast<char>((id >> (8 * i)) & 0xFF));
    return k;
  }
  static std::uint32_t request_id_of(const Request& r) { return wire::load_le32(r.bytes.data() + 16); }

  // Reads one whole multi-part message; false when none is waiting.
  static bool read(zmq::socket_t& s, std::vector<zmq::message_t>& parts) {
    parts.clear();
    for (;;) {
      zmq::message_t m;
      if (!s.recv(m, zmq::recv_flags::dontwait)) return !parts.empty();
      const bool more = m.more();
      parts.push_back(std::move(m));
      if (!more) return true;
      if (parts.size() > 8) {  // more parts than any valid message: drop the rest
        detail::zmq::discard_more(s);
        return true;
      }
    }
  }
  static std::span<const std::byte> view(const zmq::message_t& m) {
    return {static_cast<const std::byte*>(m.data()), m.size()};
  }
  // Sends a multi-part message without waiting; the zmq error number on failure, 0 on success.
  static int send(zmq::socket_t& s, std::initializer_list<std::span<const std::byte>> parts) {
    std::size_t i = 0;
    for (const auto& p : parts) {
      const int flags = ZMQ_DONTWAIT | (++i < parts.size() ? ZMQ_SNDMORE : 0);
      if (zmq_send(s.handle(), p.data(), p.size(), flags) < 0) return zmq_errno();
    }
    return 0;
  }
  static std::span<const std::byte> bytes_of(const std::string& s) {
    return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
  }

  void reply_error(const std::string& routing_id, std::uint32_t request_id, errc code, const std::string& what) {
    wire::encode_error(scratch_, request_id, code, what);
    (void)send(front_, {bytes_of(routing_id), scratch_});
  }

  // --- front end: clients ------------------------------------------------------------------

  void on_client(std::vector<zmq::message_t>& parts) {
    const std::string routing(static_cast<const char*>(parts[0].data()), parts[0].size());
    if (parts.size() != 2) {
      ++st_.malformed_client;
      reply_error(routing, 0, errc::corrupt_frame, "a request is one single-part message");
      return;
    }
    const char* user = zmq_msg_gets(parts[1].handle(), "User-Id");
    const auto body = view(parts[1]);
    wire::FrameHeader h;
    bool have_header = false;
    try {
      h = wire::peek(body, opt_.limits);
      have_header = true;
      (void)wire::parse_frame(body, opt_.limits);  // size and CRC
      if (h.type == wire::MessageType::infer_tensors) h.type = wire::MessageType::infer;  // one request id space
      if (h.type != wire::MessageType::hello && h.type != wire::MessageType::infer && h.type != wire::MessageType::ping)
        fail(errc::unsupported, "the broker does not take " + std::string(wire::to_string(h.type)) + " frames");
    } catch (const error& e) {
      ++st_.malformed_client;
      reply_error(routing, have_header ? h.request_id : 0, e.code(), e.what());
      return;
    }
    std::string client_id;
    try {
      client_id = wire::cluster::make_client_id(user ? user : "", routing);
    } catch (const error& e) {
      ++st_.malformed_client;
      return;  // an id we could not route back to anyway
    }
    const std::string key = key_of(client_id, h.type, h.request_id);
    if (const auto it = requests_.find(key); it != requests_.end()) {
      if (it->second.crc != h.crc) {
        ++st_.conflicting_requests;
        reply_error(routing, h.request_id, errc::invalid_argument, "request id in use by another pending request");
      } else {
        ++st_.duplicate_requests;
      }
      return;
    }
    // INFER answers are remembered; so is `quarantined`, for any request, so that a poison
    // HELLO or PING sent again cannot kill two more workers.
    if (const auto a = answered_.find(key); a != answered_.end()) {
      if (h.type == wire::MessageType::infer || (a->second.quarantined && a->second.request_crc == h.crc)) {
        if (a->second.request_crc != h.crc) {
          ++st_.conflicting_requests;
          reply_error(routing, h.request_id, errc::invalid_argument, "request id already used by another request");
        } else {
          ++st_.replayed;
          (void)send(front_, {bytes_of(routing), a->second.bytes});
        }
        return;
      }
    }
    const auto c = clients_.find(client_id);
    if (c != clients_.end() && c->second.outstanding >= opt_.max_queued_per_client) {
      ++st_.rejected_overloaded;
      ++st_.client_overloaded;
      reply_error(routing, h.request_id, errc::overloaded, "this client has too many requests queued or in flight");
      return;
    }
    if (queued_ >= opt_.queue_capacity) {
      ++st_.rejected_overloaded;
      reply_error(routing, h.request_id, errc::overloaded, "broker queue full");
      return;
    }
    Request r;
    r.client_id = client_id;
    r.routing_id = routing;
    r.bytes.assign(body.begin(), body.end());
    r.crc = h.crc;
    r.type = h.type;
    r.received = clock_.now();
    enqueue(key, std::move(r));
    ++st_.requests;
  }

  // Adds a new request at the back of its client's queue. All or nothing: if memory runs out
  // half-way, what was added is taken back, so that no request is known but never sent.
  void enqueue(const std::string& key, Request r) {
    const std::string client_id = r.client_id;
    Client& c = clients_[client_id];
    auto it = requests_.end();
    bool queued = false;
    try {
      it = requests_.emplace(key, std::move(r)).first;
      c.queue.push_back(key);
      queued = true;
      if (!c.in_ring) ring_.push_back(client_id);
    } catch (...) {
      if (queued) c.queue.pop_back();
      if (it != requests_.end()) requests_.erase(it);
      drop_client_if_idle(clients_.find(client_id));
      throw;
    }
    c.in_ring = true;
    it->second.where = Where::queued;
    ++c.outstanding;
    ++queued_;
  }

  void drop_client_if_idle(std::unordered_map<std::string, Client>::iterator c) {
    if (c != clients_.end() && c->second.outstanding == 0 && !c->second.in_ring && c->second.queue.empty())
      clients_.erase(c);
  }

  // --- back end: workers -------------------------------------------------------------------

  void on_worker(std::vector<zmq::message_t>& parts, Clock::time_point now) {
    const std::string wid(static_cast<const char*>(parts[0].data()), parts[0].size());
    wire::cluster::Command cmd;
    try {
      if (parts.size() < 2) fail(errc::corrupt_frame, "empty message");
      cmd = wire::cluster::parse_header(view(parts[1]));
      if (parts.size() != 1 + wire::cluster::parts_of(cmd)) fail(errc::corrupt_frame, "wrong number of parts");
    } catch (const error&) {
      ++st_.malformed_worker;
      return;
    }
    const auto w = workers_.find(wid);
    if (w != workers_.end()) w->second.expiry = now + opt_.heartbeat_interval * opt_.liveness;
    switch (cmd) {
      case wire::cluster::Command::ready: {
        std::uint32_t capacity = 0;
        try {
          capacity = wire::cluster::parse_capacity(view(parts[2]));
        } catch (const error&) {
          ++st_.malformed_worker;
          return;
        }
        if (w != workers_.end()) {
          w->second.capacity = capacity;
        } else {
          Worker nw;
          nw.capacity = capacity;
          nw.expiry = now + opt_.heartbeat_interval * opt_.liveness;
          workers_.emplace(wid, std::move(nw));
          ++st_.workers_joined;
        }
        return;
      }
      case wire::cluster::Command::heartbeat:
        if (w == workers_.end()) tell_disconnect(wid);
        return;
      case wire::cluster::Command::reply:
        on_reply(view(parts[2]), view(parts[3]));
        if (w == workers_.end()) tell_disconnect(wid);
        return;
      case wire::cluster::Command::disconnect:
        if (w != workers_.end()) {
          remove_worker(w, /*died=*/false);
          ++st_.workers_left;
        }
        return;
      case wire::cluster::Command::request:
        ++st_.malformed_worker;
        return;
    }
  }

  // A worker the broker does not know (declared dead, or the broker restarted): tell it to
  // register again, as Paranoid Pirate does.
  void tell_disconnect(const std::string& wid) {
    const auto h = wire::cluster::header(wire::cluster::Command::disconnect);
    (void)send(back_, {bytes_of(wid), h});
  }

  void on_reply(std::span<const std::byte> client_id, std::span<const std::byte> body) {
    std::string routing;
    wire::FrameHeader h;
    try {
      routing = std::string(wire::cluster::routing_id_of(client_id));
      h = wire::parse_frame(body, opt_.limits).header;
    } catch (const error&) {
      ++st_.malformed_worker;
      return;
    }
    const std::string cid(reinterpret_cast<const char*>(client_id.data()), client_id.size());
    using T = wire::MessageType;
    T candidates[3] = {T::infer, T::hello, T::ping};
    std::size_t n = 3;
    if (h.type == T::response) n = 1;
    else if (h.type == T::hello) candidates[0] = T::hello, n = 1;
    else if (h.type == T::pong) candidates[0] = T::ping, n = 1;
    else if (h.type != T::error) {
      ++st_.malformed_worker;
      return;
    }
    for (std::size_t i = 0; i < n; ++i) {
      const std::string key = key_of(cid, candidates[i], h.request_id);
      const auto it = requests_.find(key);
      if (it == requests_.end()) continue;
      (void)send(front_, {bytes_of(routing), body});
      ++st_.replies;
      if (candidates[i] == T::infer) remember(key, body, it->second.crc);
      forget(it);
      return;
    }
    if (answered_.count(key_of(cid, T::infer, h.request_id)))
      ++st_.duplicate_replies;
    else
      ++st_.stale_replies;
  }

  void remember(const std::string& key, std::span<const std::byte> reply, std::uint32_t request_crc,
                bool quarantined = false) {
    if (opt_.answered_cache == 0) return;
    answered_[key] = Answer{std::vector<std::byte>(reply.begin(), reply.end()), request_crc, quarantined};
    answered_order_.push_back(key);
    while (answered_order_.size() > opt_.answered_cache) {
      answered_.erase(answered_order_.front());
      answered_order_.pop_front();
    }
  }

  static void erase_key(std::deque<std::string>& q, const std::string& key) {
    if (const auto it = std::find(q.begin(), q.end(), key); it != q.end()) q.erase(it);
  }

  // Forgets an answered (or given up) request: takes it out of the queue or worker that has it
  // and out of its client's count.
  void forget(Requests::iterator r) {
    const std::string& key = r->first;
    Request& q = r->second;
    const auto c = clients_.find(q.client_id);
    switch (q.where) {
      case Where::worker: release(q.worker, key); break;
      case Where::suspect:
        erase_key(suspects_, key);
        --queued_;
        break;
      case Where::queued:
        if (c != clients_.end()) erase_key(c->second.queue, key);
        --queued_;
        break;
      case Where::nowhere: break;
    }
    if (c != clients_.end()) {
      if (c->second.outstanding > 0) --c->second.outstanding;
      drop_client_if_idle(c);
    }
    requests_.erase(r);
  }

  void release(const std::string& wid, const std::string& key) {
    const auto w = workers_.find(wid);
    if (w == workers_.end()) return;
    auto& v = w->second.in_flight;
    if (const auto it = std::find(v.begin(), v.end(), key); it != v.end()) {
      *it = std::move(v.back());
      v.pop_back();
    }
    if (v.empty()) w->second.isolating = false;
  }

  // Answers a request whose workers died twice with `quarantined`, remembered like any answer so
  // that a retry gets the same bytes, and never sends it again.
  void quarantine(Requests::iterator r) {
    Request& q = r->second;
    ++st_.quarantined;
    wire::encode_error(scratch_, request_id_of(q), errc::quarantined,
                       "the workers that ran this request died twice; it is not sent again");
    (void)send(front_, {bytes_of(q.routing_id), scratch_});
    ++st_.replies;
    remember(r->first, scratch_, q.crc, /*quarantined=*/true);
    forget(r);
  }

  // Takes a worker out. What it held goes back: to the front of its client's queue if the
  // worker left in good order; if it died, each request counts the death, becomes a suspect
  // (sent again alone) or, at its second death, is quarantined.
  void remove_worker(Workers::iterator w, bool died) {
    std::vector<std::string> held = std::move(w->second.in_flight);
    workers_.erase(w);
    // Backwards, so that the requests pushed to a queue's front keep the order they were sent in.
    for (auto k = held.rbegin(); k != held.rend(); ++k) {
      const auto r = requests_.find(*k);
      if (r == requests_.end() || r->second.where != Where::worker) continue;
      Request& q = r->second;
      q.where = Where::nowhere;
      q.worker.clear();
      if (died) ++q.deaths;
      if (q.deaths >= 2) {
        quarantine(r);
        continue;
      }
      ++st_.resent;
      if (q.deaths == 1) {
        if (died) {
          ++st_.suspects;
          suspects_.push_back(*k);
        } else {
          suspects_.push_front(*k);  // a suspect whose worker left: it has waited already
        }
        q.where = Where::suspect;
        ++queued_;
        continue;
      }
      Client& c = clients_[q.client_id];
      c.queue.push_front(*k);
      q.where = Where::queued;
      ++queued_;
      if (!c.in_ring) {
        ring_.push_front(q.client_id);
        c.in_ring = true;
      }
    }
  }

  // Sends request `r` to worker `w`; on success records it there. The zmq error number otherwise
  // (EHOSTUNREACH: the worker is gone; EAGAIN: its pipe is full).
  int send_to(Workers::iterator w, Requests::iterator r) {
    const auto h = wire::cluster::header(wire::cluster::Command::request);
    const int err = send(back_, {bytes_of(w->first), h, bytes_of(r->second.client_id), r->second.bytes});
    if (err != 0) return err;
    w->second.in_flight.push_back(r->first);
    r->second.worker = w->first;
    r->second.where = Where::worker;
    ++st_.dispatched;
    return 0;
  }

  // A request that waited longer than max_request_age is answered `timeout` instead of sent.
  bool expire_if_old(Requests::iterator r, Clock::time_point now) {
    if (now - r->second.received <= opt_.max_request_age) return false;
    ++st_.expired;
    reply_error(r->second.routing_id, request_id_of(r->second), errc::timeout, "no worker took the request in time");
    forget(r);
    return true;
  }

  // Workers that may be set aside for suspects at once: half of them, at least one, so that
  // ordinary work keeps the other half while suspects are tried one by one.
  std::size_t suspect_worker_limit() const { return std::max<std::size_t>(1, workers_.size() / 2); }

  // Suspects first: each goes to a worker that holds nothing, and that worker takes nothing else
  // until it has answered. While suspects wait and no worker is idle, workers are reserved (no
  // new ordinary work) until they drain.
  void dispatch_suspects(Clock::time_point now) {
    while (!suspects_.empty()) {
      std::size_t set_aside = 0;
      for (const auto& [id, w] : workers_) set_aside += (w.isolating || w.reserved) ? 1 : 0;
      const bool ordinary_waiting = queued_ > suspects_.size();
      auto idle = workers_.end();
      for (auto it = workers_.begin(); it != workers_.end(); ++it) {
        const Worker& w = it->second;
        if (w.isolating || !w.in_flight.empty()) continue;
        if (w.reserved || set_aside < suspect_worker_limit() || !ordinary_waiting) {
          idle = it;
          if (w.reserved) break;  // the ones set aside first
        }
      }
      if (idle == workers_.end()) break;
      const auto r = requests_.find(suspects_.front());
      if (r == requests_.end()) {  // cannot happen (forget() takes answered ones out); be safe
        suspects_.pop_front();
        continue;
      }
      suspects_.pop_front();
      r->second.where = Where::nowhere;
      --queued_;
      if (expire_if_old(r, now)) continue;
      const int err = send_to(idle, r);
      if (err != 0) {
        suspects_.push_front(r->first);
        r->second.where = Where::suspect;
        ++queued_;
        if (err == EHOSTUNREACH) {
          remove_worker(idle, /*died=*/true);  // it held nothing: no request counts this death
          ++st_.workers_lost;
          continue;
        }
        break;  // its pipe is full: try again on the next turn
      }
      idle->second.isolating = true;
      idle->second.reserved = false;
    }
    // Reserve (or free) workers so that as many as the suspects need, within the limit, drain.
    std::size_t isolating = 0, reserved = 0;
    for (const auto& [id, w] : workers_) {
      isolating += w.isolating ? 1 : 0;
      reserved += w.reserved ? 1 : 0;
    }
    const std::size_t room = suspect_worker_limit() > isolating ? suspect_worker_limit() - isolating : 0;
    const std::size_t want = std::min(suspects_.size(), room);
    while (reserved > want) {
      for (auto& [id, w] : workers_)
        if (w.reserved) {
          w.reserved = false;
          break;
        }
      --reserved;
    }
    while (reserved < want) {
      auto pick = workers_.end();
      for (auto it = workers_.begin(); it != workers_.end(); ++it) {
        const Worker& w = it->second;
        if (w.isolating || w.reserved) continue;
        if (pick == workers_.end() || w.in_flight.size() < pick->second.in_flight.size()) pick = it;
      }
      if (pick == workers_.end()) break;
      pick->second.reserved = true;
      ++reserved;
    }
  }

  // Ordinary requests: one from each client with work queued in turn (round-robin), each to the
  // worker with the most free capacity among those not set aside for suspects.
  void dispatch_ordinary() {
    while (!ring_.empty()) {
      auto best = workers_.end();
      std::size_t best_free = 0;
      for (auto it = workers_.begin(); it != workers_.end(); ++it) {
        if (it->second.isolating || it->second.reserved) continue;
        const std::size_t used = it->second.in_flight.size();
        const std::size_t free = it->second.capacity > used ? it->second.capacity - used : 0;
        if (free > best_free) best = it, best_free = free;
      }
      if (best == workers_.end()) return;
      const auto c = clients_.find(ring_.front());
      if (c == clients_.end() || c->second.queue.empty()) {  // its queue was emptied by answers
        ring_.pop_front();
        if (c != clients_.end()) {
          c->second.in_ring = false;
          drop_client_if_idle(c);
        }
        continue;
      }
      Client& client = c->second;
      const auto r = requests_.find(client.queue.front());
      if (r == requests_.end()) {  // cannot happen (forget() takes answered ones out); be safe
        client.queue.pop_front();
        continue;
      }
      const int err = send_to(best, r);
      if (err == 0) {
        client.queue.pop_front();
        --queued_;
        std::string id = std::move(ring_.front());  // this client has had its turn
        ring_.pop_front();
        client.in_ring = false;
        if (!client.queue.empty()) {
          ring_.push_back(std::move(id));
          client.in_ring = true;
        }
        continue;
      }
      if (err == EHOSTUNREACH) {
        remove_worker(best, /*died=*/true);
        ++st_.workers_lost;
        continue;
      }
      return;  // the worker's pipe is full: try again on the next turn
    }
  }

  // Answers `timeout` for requests that waited longer than max_request_age for a worker; only
  // while workers exist (without any, requests wait for the first to join). Requests held by no
  // worker and in no queue (left so by an exception half-way through moving them) end here too.
  void expire_queued(Clock::time_point now) {
    if (workers_.empty() || now < next_expiry_scan_) return;
    next_expiry_scan_ = now + std::min<Clock::duration>(opt_.heartbeat_interval, std::chrono::milliseconds(100));
    std::vector<std::string> old;
    for (const auto& [key, r] : requests_)
      if ((r.where != Where::worker || workers_.count(r.worker) == 0) && now - r.received > opt_.max_request_age)
        old.push_back(key);
    for (const auto& key : old)
      if (const auto r = requests_.find(key); r != requests_.end()) (void)expire_if_old(r, now);
  }

  void dispatch(Clock::time_point now) {
    expire_queued(now);
    dispatch_suspects(now);
    dispatch_ordinary();
  }

  void heartbeat_and_expire(Clock::time_point now) {
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (now > it->second.expiry) {
        auto dead = it++;
        remove_worker(dead, /*died=*/true);
        ++st_.workers_expired;
      } else {
        ++it;
      }
    }
    if (now < next_heartbeat_) return;
    next_heartbeat_ = now + opt_.heartbeat_interval;
    const auto h = wire::cluster::header(wire::cluster::Command::heartbeat);
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (send(back_, {bytes_of(it->first), h}) == EHOSTUNREACH) {
        auto gone = it++;
        remove_worker(gone, /*died=*/true);
        ++st_.workers_lost;
      } else {
        ++it;
      }
    }
  }

  void on_monitor(zmq::socket_t& m) {
    std::vector<zmq::message_t> parts;
    while (read(m, parts)) {
      if (parts.empty() || parts[0].size() < 6) continue;
      std::uint16_t event = 0;
      std::uint32_t value = 0;
      std::memcpy(&event, parts[0].data(), 2);
      std::memcpy(&value, static_cast<const char*>(parts[0].data()) + 2, 4);
      switch (event) {
        case ZMQ_EVENT_HANDSHAKE_SUCCEEDED: ++st_.handshakes; break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: ++st_.auth_failures; break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
        case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
          ++st_.protocol_failures;
          if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL && value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
            ++st_.crypto_failures;
          break;
        default: break;
      }
    }
  }

  void publish() {
    std::size_t in_flight = 0;
    for (const auto& [id, w] : workers_) in_flight += w.in_flight.size();
    std::lock_guard lock(stats_mutex_);
    published_ = st_;
    published_.workers = workers_.size();
    published_.queue_depth = queued_;
    published_.suspects_waiting = suspects_.size();
    published_.clients = clients_.size();
    published_.in_flight = in_flight;
  }

  // One turn of the loop: wait for messages (or the next heartbeat), read them, send what can
  // be sent. False when the ZeroMQ context is gone.
  bool turn(std::vector<zmq::message_t>& parts) {
    zmq_pollitem_t items[5] = {{back_.handle(), 0, ZMQ_POLLIN, 0},
                               {front_.handle(), 0, ZMQ_POLLIN, 0},
                               {front_mon_.handle(), 0, ZMQ_POLLIN, 0},
                               {back_mon_.handle(), 0, ZMQ_POLLIN, 0},
                               wake_.item()};
    const auto until = next_heartbeat_ - clock_.now();
    const long timeout = std::clamp<long>(
        static_cast<long>(std::chrono::ceil<std::chrono::milliseconds>(until).count()), 0, 100);
    try {
      detail::zmq::poll(items, 5, timeout);
    } catch (const error&) {
      return false;  // the context is gone
    }
    if (items[4].revents & ZMQ_POLLIN) wake_.drain();
    auto now = clock_.now();
    // Workers first: their replies free capacity for the requests read next.
    for (int i = 0; i < 1024 && read(back_, parts); ++i) guarded([&] { on_worker(parts, now); });
    for (int i = 0; i < 1024 && read(front_, parts); ++i) guarded([&] { on_client(parts); });
    on_monitor(front_mon_);
    on_monitor(back_mon_);
    now = clock_.now();
    heartbeat_and_expire(now);
    dispatch(now);
    publish();
    return true;
  }

  // Handles one message; what it throws (out of memory, say) is counted and costs that message
  // alone.
  template <typename F>
  void guarded(F&& handle) {
    try {
      handle();
    } catch (...) {
      ++st_.internal_errors;
    }
  }

  void run() {
    std::vector<zmq::message_t> parts;
    next_heartbeat_ = clock_.now() + opt_.heartbeat_interval;
    while (!stop_.load(std::memory_order_acquire)) {
      try {
        if (!turn(parts)) break;
      } catch (...) {
        // Whatever a turn throws (std::bad_alloc, a zmq::error_t), the broker goes on serving:
        // drop a message half read, then wait a moment so that a failure that repeats every
        // turn does not spin.
        ++st_.internal_errors;
        try {
          detail::zmq::discard_more(front_);
          detail::zmq::discard_more(back_);
        } catch (...) {
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
    try {
      for (auto* s : {&front_, &back_}) zmq_socket_monitor(s->handle(), nullptr, 0);
      front_mon_.close();
      back_mon_.close();
      front_.close();
      back_.close();
    } catch (...) {
    }
  }

  BrokerOptions opt_;
  const Clock& clock_;
  std::shared_ptr<zmq::context_t> ctx_;  // first in, last out: every socket closes before it ends
  std::unique_ptr<ZapAuthenticator> zap_;
  zmq::socket_t front_, back_, front_mon_, back_mon_;  // used by the broker thread only
  std::string frontend_endpoint_, backend_endpoint_;
  detail::zmq::WakePipe wake_;
  std::atomic<bool> stop_{false};

  // Broker thread only.
  Requests requests_;
  std::unordered_map<std::string, Client> clients_;  // clients with requests queued or in flight
  std::deque<std::string> ring_;      // clients with ordinary requests queued, in round-robin order
  std::deque<std::string> suspects_;  // keys of suspects waiting for a worker of their own
  std::size_t queued_ = 0;            // requests queued (ordinary and suspects)
  Workers workers_;
  std::unordered_map<std::string, Answer> answered_;
  std::deque<std::string> answered_order_;
  std::vector<std::byte> scratch_;
  Clock::time_point next_heartbeat_{}, next_expiry_scan_{};
  BrokerStats st_;

  mutable std::mutex stats_mutex_;
  BrokerStats published_;
  std::thread thread_;
};

}  // namespace edgesplit
