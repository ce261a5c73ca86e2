// edgesplit/transport/zmq.hpp - message transport over ZeroMQ (libzmq + cppzmq), optionally
// secured with CURVE (transport/zmq_curve.hpp).
//
// Optional component: CMake option EDGESPLIT_WITH_ZMQ (on when cppzmq and libzmq are found;
// Debian packages libzmq3-dev and cppzmq-dev). Not included by edgesplit.hpp.
//
// A ZmqTransport is one DEALER socket. Connected to a ZmqBroker's front end (runtime/
// zmq_broker.hpp) it is an edge client of a cluster; two ZmqTransports, one bound and one
// connected, are a plain point-to-point link. Every message is one single-part ZeroMQ message.
//
// What ZeroMQ changes compared with TcpTransport:
// - ZeroMQ reconnects by itself and hides connection loss: receive() never reports a lost peer,
//   only deadlines passing. (The runtime treats a deadline as the sign of trouble anyway.) ZMTP
//   heartbeats (ZmqOptions::heartbeat_interval) close and re-establish a connection that is open
//   but dead.
// - Messages queue in ZeroMQ while the peer is away, up to the high-water mark; send() with a
//   deadline waits for room until then (`timeout`).
// - A message over the cap is refused by libzmq itself (ZMQ_MAXMSGSIZE: the peer is
//   disconnected) and, should one get through, by receive() (`too_large`); a multi-part message
//   is `corrupt_frame`.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <zmq.h>

#include <zmq.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/transport/transport.hpp"
#include "edgesplit/transport/zmq_curve.hpp"

namespace edgesplit {

/// How a ZmqTransport's socket is set up.
struct ZmqOptions {
  /// Largest message sent or accepted (also set as ZMQ_MAXMSGSIZE on the socket).
  std::size_t max_message_bytes = default_max_message_bytes;
  /// Deadline of send(bytes) called without one: now + send_timeout.
  Clock::duration send_timeout = std::chrono::seconds(30);
  /// Messages queued per direction before send() waits (ZMQ_SNDHWM / ZMQ_RCVHWM).
  int high_water_mark = 1000;
  /// Reconnect interval of a connecting socket, doubling up to the maximum.
  std::chrono::milliseconds reconnect_interval{100};
  std::chrono::milliseconds reconnect_interval_max{2000};  ///< the interval doubles up to this
  /// ZMTP heartbeats: a PING every interval; a connection whose peer has not answered within
  /// 3 intervals is closed and re-established. This is what notices a connection that is open
  /// but dead (a NAT that forgot it, a peer that stopped reading); zero: off.
  std::chrono::milliseconds heartbeat_interval{1000};
  /// CURVE for a connecting transport (the server's public key and our own pair).
  std::optional<CurveClientKeys> curve_client;
  /// CURVE for a binding transport (our pair; a ZAP domain if the context has an authenticator).
  std::optional<CurveServerKeys> curve_server;
  /// Our routing id as the peer's ROUTER sees it (1..255 bytes, not starting with a 0 byte).
  /// Empty: 16 random bytes. A fixed id lets replies reach us across reconnections.
  std::string routing_id;
  /// The ZeroMQ context (its I/O thread). Empty: one context shared by the process.
  std::shared_ptr<zmq::context_t> context;
};

namespace detail::zmq {

/// A process-wide context for transports given none. Each transport holds a reference, so the
/// context ends (zmq_ctx_term) only after the last socket in it has closed.
inline std::shared_ptr<::zmq::context_t> default_context() {
  static const std::shared_ptr<::zmq::context_t> ctx = std::make_shared<::zmq::context_t>(1);
  return ctx;
}

/// 16 random bytes, never starting with 0 (ZeroMQ reserves those ids).
inline std::string random_routing_id() {
  std::random_device rd;
  std::string id(16, '\0');
  for (auto& c : id) c = static_cast<char>(rd() & 0xFF);
  if (id[0] == '\0') id[0] = 1;
  return id;
}

/// errno of a failed zmq call as an edgesplit error.
[[noreturn]] inline void fail_zmq(const std::string& what, int err = zmq_errno()) {
  const errc code = err == ETERM || err == EHOSTUNREACH ? errc::unreachable
                    : err == EINVAL || err == EPROTONOSUPPORT || err == ENOCOMPATPROTO ? errc::invalid_argument
                                                                                       : errc::io_error;
  fail(code, what + ": " + zmq_strerror(err));
}

/// zmq_poll's timeout for `deadline`: -1 for none, whole milliseconds rounded up.
inline long poll_timeout_ms(Deadline deadline) noexcept {
  if (deadline == no_deadline) return -1;
  const auto now = std::chrono::steady_clock::now();
  if (deadline <= now) return 0;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
  return ms > INT_MAX ? INT_MAX : static_cast<long>(ms);
}

/// zmq_poll, restarted on EINTR. Returns the number of ready items.
inline int poll(zmq_pollitem_t* items, int count, long timeout_ms) {
  for (;;) {
    const int n = zmq_poll(items, count, timeout_ms);
    if (n >= 0) return n;
    if (zmq_errno() != EINTR) fail_zmq("zmq_poll");
  }
}

/// A self-pipe: lets another thread wake one blocked in zmq_poll (which polls plain descriptors
/// beside sockets). Thread-safe.
class WakePipe {
 public:
  WakePipe() {
    if (::pipe(fd_) != 0) fail(errc::io_error, std::string("pipe: ") + std::strerror(errno));
    for (int fd : fd_) {
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
      ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
  }
  WakePipe(const WakePipe&) = delete;
  WakePipe& operator=(const WakePipe&) = delete;
  ~WakePipe() {
    ::close(fd_[0]);
    ::close(fd_[1]);
  }
  void wake() noexcept {
    const char b = 1;
    [[maybe_unused]] const auto n = ::write(fd_[1], &b, 1);  // a full pipe is awake already
  }
  void drain() noexcept {
    char buf[64];
    while (::read(fd_[0], buf, sizeof buf) > 0) {
    }
  }
  int fd() const noexcept { return fd_[0]; }
  zmq_pollitem_t item() const noexcept { return zmq_pollitem_t{nullptr, fd_[0], ZMQ_POLLIN, 0}; }

 private:
  int fd_[2] = {-1, -1};
};

/// Options every edgesplit socket gets: no linger on close (unsent messages are dropped: the
/// runtime's deadlines and the broker's resends cover them), caps and high-water marks.
inline void configure_common(::zmq::socket_t& s, std::size_t max_message_bytes, int hwm) {
  s.set(::zmq::sockopt::linger, 0);
  s.set(::zmq::sockopt::maxmsgsize, static_cast<std::int64_t>(std::min<std::size_t>(max_message_bytes, INT64_MAX)));
  s.set(::zmq::sockopt::sndhwm, hwm);
  s.set(::zmq::sockopt::rcvhwm, hwm);
}

/// Receives the rest of a multi-part message and drops it.
inline void discard_more(::zmq::socket_t& s) {
  for (;;) {
    int more = 0;
    std::size_t len = sizeof more;
    if (zmq_getsockopt(s.handle(), ZMQ_RCVMORE, &more, &len) != 0 || !more) return;
    ::zmq::message_t m;
    if (!s.recv(m, ::zmq::recv_flags::dontwait)) return;
  }
}

}  // namespace detail::zmq

/// One DEALER socket carrying single-part messages. Satisfies `Transport`.
///
/// Thread-safety: as TcpTransport, one send and one receive may run at once, from different
/// threads, and close() from any thread. A ZeroMQ socket itself must be used by one thread at a
/// time: a send made while another thread waits in receive() is queued and handed to the socket
/// by that thread (woken through a self-pipe), otherwise it goes to the socket directly.
class ZmqTransport {
 public:
  /// Connects to `endpoint` ("tcp://host:port", "ipc:///path"). ZeroMQ connects in the
  /// background and keeps reconnecting, so this does not wait for the peer.
  static ZmqTransport connect(const std::string& endpoint, ZmqOptions options = {}) {
    return ZmqTransport(endpoint, std::move(options), false);
  }
  /// Binds to `endpoint` ("tcp://127.0.0.1:*" picks a free port: see endpoint()).
  static ZmqTransport bind(const std::string& endpoint, ZmqOptions options = {}) {
    return ZmqTransport(endpoint, std::move(options), true);
  }

  ZmqTransport(ZmqTransport&&) noexcept = default;             ///< moves the socket
  ZmqTransport& operator=(ZmqTransport&&) noexcept = default;  ///< moves the socket
  ZmqTransport(const ZmqTransport&) = delete;
  ZmqTransport& operator=(const ZmqTransport&) = delete;
  ~ZmqTransport() { close(); }

  /// send(bytes, now + options.send_timeout).
  void send(std::span<const std::byte> bytes) { send(bytes, deadline_after(state().options.send_timeout)); }
  /// Queues one message: `too_large` over the cap, `timeout` when ZeroMQ has no room for it by
  /// the deadline (peer absent and queue full), `unreachable` once closed.
  void send(std::span<const std::byte> bytes, Deadline deadline) {
    State& s = state();
    if (bytes.size() > s.options.max_message_bytes)
      fail(errc::too_large, "ZeroMQ: message of " + std::to_string(bytes.size()) + " bytes over the cap of " +
                                std::to_string(s.options.max_message_bytes));
    std::unique_lock lock(s.mutex);
    throw_if_closed(s);
    if (s.receiving) {  // the receiving thread owns the socket: it sends this when woken
      s.outbox.emplace_back(bytes.begin(), bytes.end());
      lock.unlock();
      s.wake.wake();
      return;
    }
    for (;;) {
      if (zmq_send(s.socket.handle(), bytes.data(), bytes.size(), ZMQ_DONTWAIT) >= 0) return;
      const int err = zmq_errno();
      if (err == EINTR) continue;
      if (err != EAGAIN) detail::zmq::fail_zmq("ZeroMQ: send to " + s.endpoint, err);
      // Wait for room 50 ms at a time (without deadline too: -1 would wait for ever), so that a
      // close() from another thread, which sets `closed` and then waits for this mutex, is seen.
      const long left = detail::zmq::poll_timeout_ms(deadline);
      zmq_pollitem_t item{s.socket.handle(), 0, ZMQ_POLLOUT, 0};
      if (detail::zmq::poll(&item, 1, left < 0 ? 50L : std::min(left, 50L)) == 0 && deadline != no_deadline &&
          std::chrono::steady_clock::now() >= deadline)
        fail(errc::timeout, "ZeroMQ: send to " + s.endpoint + " timed out (peer absent or queue full)");
      throw_if_closed(s);
    }
  }

  /// The next message, or nullopt when the deadline passes first.
  std::optional<Message> receive(Deadline deadline) { return detail::receive_new(*this, deadline); }
  /// The next message into `into` (false when the deadline passes first). `corrupt_frame` for a
  /// multi-part message, `too_large` over the cap (both dropped), `unreachable` once closed.
  bool receive(Deadline deadline, Message& into) {
    State& s = state();
    std::lock_guard receive_lock(s.receive_mutex);
    std::unique_lock lock(s.mutex);
    throw_if_closed(s);
    s.receiving = true;
    struct Done {  // hands the socket back to senders however this call ends
      State& s;
      std::unique_lock<std::mutex>& lock;
      ~Done() {
        if (!lock.owns_lock()) lock.lock();
        flush(s);
        s.receiving = false;
        if (s.closed) s.socket.close();
      }
    } done{s, lock};
    into.sent_at = into.delivered_at = {};
    for (;;) {
      flush(s);
      zmq_pollitem_t items[2] = {{s.socket.handle(), 0, static_cast<short>(ZMQ_POLLIN | (s.outbox.empty() ? 0 : ZMQ_POLLOUT)), 0},
                                 s.wake.item()};
      lock.unlock();
      detail::zmq::poll(items, 2, detail::zmq::poll_timeout_ms(deadline));
      if (items[1].revents & ZMQ_POLLIN) s.wake.drain();
      lock.lock();
      throw_if_closed(s);
      if (items[0].revents & ZMQ_POLLIN) {
        ::zmq::message_t m;
        if (s.socket.recv(m, ::zmq::recv_flags::dontwait)) {
          if (m.more()) {
            detail::zmq::discard_more(s.socket);
            fail(errc::corrupt_frame, "ZeroMQ: a multi-part message from " + s.endpoint);
          }
          if (m.size() > s.options.max_message_bytes)
            fail(errc::too_large, "ZeroMQ: a message of " + std::to_string(m.size()) + " bytes from " + s.endpoint);
          const auto* p = static_cast<const std::byte*>(m.data());
          into.bytes.assign(p, p + m.size());
          return true;
        }
      }
      if (deadline != no_deadline && std::chrono::steady_clock::now() >= deadline) return false;
    }
  }

  /// Idempotent; wakes a thread blocked in receive(). The socket closes at once when no thread
  /// is using it, otherwise when that thread returns.
  void close() noexcept {
    if (!s_) return;
    s_->closed.store(true, std::memory_order_release);  // seen by a sender waiting for room
    {
      std::lock_guard lock(s_->mutex);
      s_->outbox.clear();
      if (!s_->receiving) s_->socket.close();
    }
    s_->wake.wake();
  }
  /// False once closed.
  bool is_open() const noexcept { return s_ && !s_->closed.load(std::memory_order_acquire); }
  /// The endpoint as bound or connected ("tcp://127.0.0.1:41234" after binding port *).
  const std::string& endpoint() const { return state().endpoint; }
  /// Our routing id (what a broker's ROUTER sees).
  const std::string& routing_id() const { return state().routing_id; }

 private:
  struct State {
    std::shared_ptr<::zmq::context_t> context;  // declared first: destroyed after the socket
    ::zmq::socket_t socket;
    ZmqOptions options;
    std::string endpoint, routing_id;
    detail::zmq::WakePipe wake;
    std::mutex receive_mutex;
    mutable std::mutex mutex;  // socket (while !receiving), outbox, flags
    std::deque<std::vector<std::byte>> outbox;
    bool receiving = false;
    std::atomic<bool> closed{false};
  };

  ZmqTransport(const std::string& endpoint, ZmqOptions options, bool do_bind) : s_(std::make_unique<State>()) {
    State& s = *s_;
    s.context = options.context ? options.context : detail::zmq::default_context();
    try {
      s.socket = ::zmq::socket_t(*s.context, ::zmq::socket_type::dealer);
      detail::zmq::configure_common(s.socket, options.max_message_bytes, options.high_water_mark);
      s.routing_id = options.routing_id.empty() ? detail::zmq::random_routing_id() : options.routing_id;
      if (s.routing_id.size() > 255 || s.routing_id[0] == '\0')
        fail(errc::invalid_argument, "ZeroMQ: a routing id is 1..255 bytes and does not start with 0");
      s.socket.set(::zmq::sockopt::routing_id, ::zmq::buffer(s.routing_id));
      s.socket.set(::zmq::sockopt::reconnect_ivl, static_cast<int>(options.reconnect_interval.count()));
      s.socket.set(::zmq::sockopt::reconnect_ivl_max, static_cast<int>(options.reconnect_interval_max.count()));
      if (options.heartbeat_interval.count() > 0) {
        s.socket.set(::zmq::sockopt::heartbeat_ivl, static_cast<int>(options.heartbeat_interval.count()));
        s.socket.set(::zmq::sockopt::heartbeat_timeout, static_cast<int>(3 * options.heartbeat_interval.count()));
      }
      if (options.curve_client) configure_curve_client(s.socket, *options.curve_client);
      if (options.curve_server) configure_curve_server(s.socket, *options.curve_server);
      if (do_bind) {
        s.socket.bind(endpoint);
        s.endpoint = s.socket.get(::zmq::sockopt::last_endpoint);
      } else {
        s.socket.connect(endpoint);
        s.endpoint = endpoint;
      }
    } catch (const ::zmq::error_t& e) {
      detail::zmq::fail_zmq("ZeroMQ: cannot " + std::string(do_bind ? "bind " : "connect ") + endpoint, e.num());
    }
    s.options = std::move(options);
  }

  // Sends queued messages while the socket takes them (with the mutex held, by the thread that
  // owns the socket). What does not fit stays queued for the next call.
  static void flush(State& s) {
    while (!s.outbox.empty() && !s.closed) {
      const auto& m = s.outbox.front();
      if (zmq_send(s.socket.handle(), m.data(), m.size(), ZMQ_DONTWAIT) < 0) {
        if (zmq_errno() == EINTR) continue;
        return;
      }
      s.outbox.pop_front();
    }
  }

  State& state() const {
    if (!s_) fail(errc::unreachable, "ZeroMQ: moved-from transport");
    return *s_;
  }
  static void throw_if_closed(const State& s) {
    if (s.closed.load(std::memory_order_acquire)) fail(errc::unreachable, "ZeroMQ: transport to " + s.endpoint + " is closed");
  }

  std::unique_ptr<State> s_;
};

static_assert(Transport<ZmqTransport>);

}  // namespace edgesplit
