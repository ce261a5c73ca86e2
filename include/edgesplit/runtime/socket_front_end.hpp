// edgesplit/runtime/socket_front_end.hpp - one event loop that owns every TCP connection of a
// server: accepts, reads and writes without blocking, and hands whole messages to the handler.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/thread_name.hpp"
#include "edgesplit/runtime/dynamic_batcher.hpp"
#include "edgesplit/runtime/memory_budget.hpp"
#include "edgesplit/runtime/request_handler.hpp"
#include "edgesplit/runtime/server_options.hpp"
#include "edgesplit/transport/poller.hpp"
#include "edgesplit/transport/tcp.hpp"
#if EDGESPLIT_HAS_TLS
#include "edgesplit/transport/tls.hpp"
#endif
#include "edgesplit/wire/byte_io.hpp"
#include "edgesplit/wire/feature_codec.hpp"

namespace edgesplit {

/// Counters of the socket front end.
struct FrontEndStats {
  std::size_t connections_open = 0;     ///< connections now open
  std::size_t connections_total = 0;    ///< accepted and served since start
  std::size_t refused_limit = 0;        ///< accepted past max_connections: told `overloaded`, closed
  std::size_t refused_descriptors = 0;  ///< accepted while out of file descriptors: closed at once
  std::size_t dropped_stalled = 0;      ///< inside a frame for too long
  std::size_t dropped_idle = 0;         ///< idle past idle_timeout, or no HELLO within handshake_timeout
  std::size_t dropped_unread = 0;       ///< left more than max_unread_reply_bytes of replies unread
  std::size_t dropped_protocol = 0;     ///< a frame over the size cap, malformed bytes, a refused HELLO
  std::size_t rejected_budget = 0;      ///< frames refused `overloaded` while being read: budget full
  std::size_t bytes_received = 0;       ///< bytes read from peers
  std::size_t bytes_sent = 0;           ///< bytes written to peers
};

/// Serves TCP connections on one thread with a Poller (epoll on Linux): listeners and
/// connections are non-blocking, a connection costs a few hundred bytes while idle, and no peer
/// can make the loop wait. Framing is TcpTransport's (4-byte little-endian length, then the
/// message).
///
/// - Reading: bytes go to a buffer that grows as they arrive, under the server's memory budget;
///   a length prefix alone allocates nothing. A frame over the cap is answered `too_large` and
///   the connection closed; a frame that does not fit the budget is read past and answered
///   `overloaded`. Buffers of big frames are freed once handled, and with their connection.
/// - Writing: a reply is written by the thread that produced it, straight to the socket when
///   the socket takes it, else queued for the loop; a peer that leaves more than
///   `max_unread_reply_bytes` unread is closed, never waited for.
/// - Limits: `max_connections` (further ones get ERROR `overloaded`, then close), handshake,
///   idle and stall timeouts (a frame must arrive within stall_timeout plus its size at
///   `min_receive_rate`). Out of file descriptors, one spare descriptor lets the loop accept and
///   close the waiting connection instead of spinning on it.
class SocketFrontEnd {
 public:
  /// Hands messages to `handler`, opens sources on `batcher`, reserves under `budget`.
  SocketFrontEnd(RequestHandler& handler, DynamicBatcher& batcher, MemoryBudget& budget, const ServerOptions& options)
      : handler_(handler), batcher_(batcher), budget_(budget), opt_(options), codec_(options.limits) {
    spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    thread_ = std::thread([this] {
      name_this_thread("es-net");
      run();
    });
  }
  SocketFrontEnd(const SocketFrontEnd&) = delete;
  SocketFrontEnd& operator=(const SocketFrontEnd&) = delete;
  ~SocketFrontEnd() { finish(std::chrono::milliseconds(0)); }

  /// Accepts connections on `listener` (kept open by this front end) from now on.
  void add_listener(TcpListener listener) { add(std::move(listener), {}); }
#if EDGESPLIT_HAS_TLS
  /// Accepts connections on `listener` and speaks TLS on them with `tls` (a server context):
  /// the handshake runs on the loop like everything else, within handshake_timeout.
  void add_listener(TcpListener listener, TlsContext tls) {
    if (!tls.is_server()) fail(errc::invalid_argument, "SocketFrontEnd: a TLS listener needs a server context");
    add(std::move(listener), std::move(tls));
  }
#endif

 private:
#if EDGESPLIT_HAS_TLS
  using TlsConfig = std::optional<TlsContext>;
#else
  struct TlsConfig {};
#endif
  void add(TcpListener listener, TlsConfig tls) {
    auto l = std::make_unique<Listener>();
    l->fd = listener.native_handle();
    l->address = listener.address();
    l->socket.emplace(std::move(listener));
    l->tls = std::move(tls);
    std::lock_guard lock(mutex_);
    if (stopping_accept_) return;
    pending_listeners_.push_back(std::move(l));
    poller_.wake();
  }

 public:
  /// Stops accepting; connections stay open. Idempotent.
  void stop_accepting() {
    std::lock_guard lock(mutex_);
    stopping_accept_ = true;
    poller_.wake();
  }

  /// Writes what replies are still queued (for at most `flush`), then closes every connection
  /// and ends the loop. Idempotent.
  void finish(std::chrono::milliseconds flush) {
    {
      std::lock_guard lock(mutex_);
      stopping_accept_ = true;
      finish_by_ = Clock::now() + flush;
      finishing_ = true;
    }
    poller_.wake();
    if (thread_.joinable()) thread_.join();
    if (spare_fd_ >= 0) ::close(spare_fd_), spare_fd_ = -1;
  }

  /// Queues `frame` (a WEIGHTS push) to every connection whose HELLO named `model_id`, on the
  /// loop's thread; returns how many it was queued to (0 once the loop has ended).
  std::size_t broadcast(const std::string& model_id, std::span<const std::byte> frame) {
    auto done = std::make_shared<std::promise<std::size_t>>();
    std::future<std::size_t> result = done->get_future();
    {
      std::lock_guard lock(mutex_);
      if (finishing_) return 0;
      tasks_.push_back([this, done, model_id, bytes = std::vector<std::byte>(frame.begin(), frame.end())] {
        std::size_t n = 0;
        for (auto& [fd, c] : connections_) {
          if (c->closing || !c->session.greeted || c->session.model.model_id != model_id) continue;
          write(*c, bytes, budget_.open());
          ++n;
        }
        done->set_value(n);
      });
    }
    poller_.wake();
    return result.get();
  }

  /// A snapshot of the counters.
  FrontEndStats stats() const {
    std::lock_guard lock(stats_mutex_);
    return stats_;
  }

 private:
  using Clock = std::chrono::steady_clock;
  enum class Kind { listener, connection };
  struct Watch {
    Kind kind;
  };
  struct Listener : Watch {
    Listener() : Watch{Kind::listener} {}
    std::optional<TcpListener> socket;
    TlsConfig tls;  // set: connections accepted here speak TLS
    int fd = -1;
    std::string address;
    Clock::time_point paused_until{};  // after an accept error that would repeat at once
    bool watching = false;
  };

  // One connection. The loop thread owns the read side; the write side (out, closed, interest)
  // is shared with the worker threads that deliver replies, under `mutex`.
  struct Connection final : Watch, ReplySink {
    explicit Connection(SocketFrontEnd& o) : Watch{Kind::connection}, owner(o) {}
    SocketFrontEnd& owner;
    int fd = -1;
    Session session;

    // Read side (loop thread only).
    std::array<std::byte, 4> prefix{};
    std::size_t prefix_n = 0;
    bool have_length = false;
    std::uint32_t length = 0;  // of the frame being read
    std::vector<std::byte> frame;  // its bytes so far
    MemoryBudget::Reservation frame_held;  // frame.capacity(), under the budget
    std::size_t discard = 0;  // bytes of a frame refused for the budget still to skip
    std::array<std::byte, wire::frame_header_size> discard_head{};  // its header, for the request id
    std::size_t discard_head_n = 0;
    std::vector<std::byte> backlog;  // bytes read but not handled: more messages came than a turn takes
    std::size_t backlog_pos = 0;
    MemoryBudget::Reservation backlog_held;
    std::uint64_t turn = 0;          // the loop turn turn_messages counts for
    std::size_t turn_messages = 0;   // messages handled in that turn
    bool behind = false;             // in the loop's list of connections with a backlog
    Clock::time_point accepted{}, frame_started{};
    // When a message last came in or a reply last went out completely: written by the loop and
    // by workers, read by the sweep.
    std::atomic<Clock::rep> last_activity{0};
    void touch() noexcept { last_activity.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed); }
    Clock::time_point active() const noexcept {
      return Clock::time_point(Clock::duration(last_activity.load(std::memory_order_relaxed)));
    }
    bool gone = false;  // closed by the loop; events for it are ignored
    bool closing = false;  // no more reading: closed once its last replies are written

    // Write side.
    std::mutex mutex;
    bool closed = false;        // no more writes: the loop closes it on its next turn
    bool want_write = false;    // writable interest is set
    std::vector<std::byte> out;  // bytes queued for the socket, from out_pos on
    std::size_t out_pos = 0;
    MemoryBudget::Reservation out_held;
#if EDGESPLIT_HAS_TLS
    std::unique_ptr<TlsSession> tls;  // with a TLS listener; used under `mutex` by both sides
    std::vector<std::byte> cipher;    // its output, on the way to the socket
    bool tls_named = false;           // the peer's certificate subject is in session.peer
#endif

    void deliver(std::span<const std::byte> frame_bytes, MemoryBudget::Reservation held) override {
      owner.write(*this, frame_bytes, std::move(held));
    }
  };

  std::size_t max_message_bytes() const { return opt_.limits.max_payload_bytes + wire::frame_header_size + 64; }

  // --- writing (any thread) --------------------------------------------------------------------

  void write(Connection& c, std::span<const std::byte> frame, MemoryBudget::Reservation held) {
    const auto n = static_cast<std::uint32_t>(frame.size());
    const std::byte prefix[4] = {std::byte(n & 0xFF), std::byte((n >> 8) & 0xFF), std::byte((n >> 16) & 0xFF),
                                 std::byte(n >> 24)};
    std::lock_guard lock(c.mutex);
    if (c.closed) return;
#if EDGESPLIT_HAS_TLS
    if (c.tls) {
      try {
        c.tls->write(prefix);
        c.tls->write(frame);
        c.cipher.clear();
        c.tls->take_output(c.cipher);
      } catch (const error&) {
        close_locked(c);
        return;
      }
      send_locked(c, c.cipher, {}, std::move(held));
      return;
    }
#endif
    send_locked(c, prefix, frame, std::move(held));
  }

  // Writes `a` then `b` to the socket, straight from here when nothing is queued before them,
  // and queues what the socket does not take for the loop (c.mutex held).
  void send_locked(Connection& c, std::span<const std::byte> a, std::span<const std::byte> b, MemoryBudget::Reservation held) {
    std::size_t sent = 0;
    const std::size_t total = a.size() + b.size();
    if (total == 0) return;
    if (c.out_pos == c.out.size()) {
      // Nothing queued: write straight from here, without waking the loop.
      while (sent < total) {
        iovec iov[2];
        int count = 0;
        if (sent < a.size()) {
          iov[count++] = {const_cast<std::byte*>(a.data()) + sent, a.size() - sent};
          if (!b.empty()) iov[count++] = {const_cast<std::byte*>(b.data()), b.size()};
        } else {
          iov[count++] = {const_cast<std::byte*>(b.data()) + (sent - a.size()), total - sent};
        }
        msghdr msg{};
        msg.msg_iov = iov;
        msg.msg_iovlen = static_cast<decltype(msg.msg_iovlen)>(count);
        const ssize_t w = ::sendmsg(c.fd, &msg, detail::tcp::send_flags | MSG_DONTWAIT);
        if (w > 0) {
          sent += static_cast<std::size_t>(w);
          continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        close_locked(c);  // the peer is gone: the loop sees the socket shut down and ends it
        return;
      }
      count_sent(sent);
      if (sent == total) {
        c.touch();
        return;
      }
      c.out.clear();
      c.out_pos = 0;
    }
    // Queue the rest for the loop. The queue's storage (its capacity, which is what the process
    // holds) is reserved under the budget, the request's own reservation counting towards it.
    const std::size_t rest = total - sent;
    if (c.out.size() - c.out_pos + rest > opt_.max_unread_reply_bytes) {
      count(&FrontEndStats::dropped_unread);
      detail::server_log(opt_, "dropped " + c.session.peer + ": more than " + std::to_string(opt_.max_unread_reply_bytes) +
                                   " bytes of replies left unread");
      close_locked(c);
      return;
    }
    if (c.out_pos != 0 && c.out_pos >= c.out.size() / 2) {  // a slow reader: drop what it took
      c.out.erase(c.out.begin(), c.out.begin() + static_cast<std::ptrdiff_t>(c.out_pos));
      c.out_pos = 0;
    }
    const std::size_t need = c.out.size() + rest;
    c.out_held.absorb(std::move(held));
    const std::size_t cap = need > c.out.capacity() ? std::max(need, c.out.capacity() * 2) : c.out.capacity();
    if (c.out_held.bytes() < cap && !c.out_held.grow(cap - c.out_held.bytes())) {
      // No room under the budget even for this: the server is full of unread replies, and this
      // peer is among those not reading.
      count(&FrontEndStats::dropped_unread);
      detail::server_log(opt_, "dropped " + c.session.peer + ": its unread replies do not fit the memory budget");
      close_locked(c);
      return;
    }
    c.out_held.shrink_to(cap);
    c.out.reserve(cap);
    if (sent < a.size()) c.out.insert(c.out.end(), a.begin() + static_cast<std::ptrdiff_t>(sent), a.end());
    const std::size_t from = sent > a.size() ? sent - a.size() : 0;
    c.out.insert(c.out.end(), b.begin() + static_cast<std::ptrdiff_t>(from), b.end());
    if (!c.want_write) {
      c.want_write = true;
      try {
        poller_.modify(c.fd, static_cast<Watch*>(&c), Poller::readable | Poller::writable);
      } catch (const error&) {
        close_locked(c);
      }
    }
  }

  // Writes queued bytes when the socket has room (loop thread).
  void flush(Connection& c) {
    std::lock_guard lock(c.mutex);
    if (c.closed) return;
    while (c.out_pos < c.out.size()) {
      const ssize_t w = ::send(c.fd, c.out.data() + c.out_pos, c.out.size() - c.out_pos, detail::tcp::send_flags | MSG_DONTWAIT);
      if (w > 0) {
        c.out_pos += static_cast<std::size_t>(w);
        count_sent(static_cast<std::size_t>(w));
        continue;
      }
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      close_locked(c);
      return;
    }
    c.touch();
    if (c.out.capacity() > keep_buffer_bytes) std::vector<std::byte>().swap(c.out);
    c.out.clear();
    c.out_pos = 0;
    c.out_held.shrink_to(c.out.capacity());
    c.want_write = false;
    if (c.closing) return;  // the loop ends it now
    try {
      poller_.modify(c.fd, static_cast<Watch*>(&c), Poller::readable);
    } catch (const error&) {
      close_locked(c);
    }
  }

  // Marks `c` closed for writers and shuts the socket down, so that the loop sees it end; the
  // descriptor itself is closed by the loop (never while another thread may write to it).
  void close_locked(Connection& c) noexcept {
    if (c.closed) return;
    c.closed = true;
    ::shutdown(c.fd, SHUT_RDWR);
    c.out_held.release();
    std::vector<std::byte>().swap(c.out);
    c.out_pos = 0;
  }

  // --- the loop --------------------------------------------------------------------------------

  void run() {
    std::vector<Poller::Event> events(256);
    scratch_.resize(scratch_bytes);
    Clock::time_point next_sweep = Clock::now();
    while (true) {
      try {
        if (!turn(events, next_sweep)) break;
      } catch (...) {
        // The loop must outlive anything one turn meets (out of memory while accepting, say).
      }
    }
    close_all();
  }

  // One turn of the loop; false when it is time to end.
  bool turn(std::vector<Poller::Event>& events, Clock::time_point& next_sweep) {
    bool finishing = false, stop_accept = false;
    std::vector<std::function<void()>> tasks;
    Clock::time_point finish_by;
    {
      std::lock_guard lock(mutex_);
      for (auto& l : pending_listeners_) {
        listeners_.push_back(std::move(l));
        watch(*listeners_.back());
      }
      pending_listeners_.clear();
      tasks.swap(tasks_);
      finishing = finishing_;
      stop_accept = stopping_accept_;
      finish_by = finish_by_;
    }
    for (auto& t : tasks) t();
    if (stop_accept && !listeners_.empty()) {
      for (auto& l : listeners_) {
        if (l->watching) poller_.remove(l->fd);
        l->socket->close();
      }
      listeners_.clear();
    }
    if (finishing && (Clock::now() >= finish_by || nothing_to_write())) return false;
    const auto now = Clock::now();
    for (auto& l : listeners_)  // a paused listener is watched again when its pause ends
      if (!l->watching) next_sweep = std::min(next_sweep, l->paused_until);
    const int timeout = static_cast<int>(std::clamp<long long>(
        std::chrono::ceil<std::chrono::milliseconds>(next_sweep - now).count(), 0, finishing ? 5 : 1000));
    const std::size_t n = poller_.wait(events, behind_.empty() ? timeout : 0);
    ++turn_;
    for (std::size_t i = 0; i < n; ++i) {
      Watch* w = static_cast<Watch*>(events[i].tag);
      if (w->kind == Kind::listener) {
        accept_from(*static_cast<Listener*>(w));
        continue;
      }
      auto* c = static_cast<Connection*>(w);
      if (c->gone) continue;
      if (events[i].ready & Poller::writable) flush(*c);
      if (c->closing) {
        if (events[i].hangup || written(*c)) end(*c);
        continue;
      }
      if ((events[i].ready & Poller::readable) || events[i].hangup) read_from(*c);
    }
    catch_up();
    graveyard_.clear();  // connections closed this turn: no event of this turn points at them now
    if (Clock::now() >= next_sweep) {
      sweep();
      next_sweep = Clock::now() + sweep_interval();
    }
    return true;
  }

  std::chrono::milliseconds sweep_interval() const {
    const auto shortest = std::min({opt_.stall_timeout, opt_.idle_timeout, opt_.handshake_timeout});
    return std::clamp(shortest / 4, std::chrono::milliseconds(5), std::chrono::milliseconds(1000));
  }

  bool nothing_to_write() {
    for (auto& [fd, c] : connections_)
      if (!written(*c)) return false;
    return true;
  }
  static bool written(Connection& c) {
    std::lock_guard lock(c.mutex);
    return c.closed || c.out_pos == c.out.size();
  }

  void watch(Listener& l) {
    try {
      poller_.add(l.fd, static_cast<Watch*>(&l), Poller::readable);
      l.watching = true;
    } catch (const error& e) {
      detail::server_log(opt_, "cannot watch listener " + l.address + ": " + e.what());
    }
  }

  void accept_from(Listener& l) {
    for (int i = 0; i < 64; ++i) {
      int fd = ::accept4(l.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        const int err = errno;
        if (err == EAGAIN || err == EWOULDBLOCK) return;
        if (err == EINTR || err == ECONNABORTED || err == EPROTO) continue;
        if ((err == EMFILE || err == ENFILE) && spare_fd_ >= 0) {
          // Out of descriptors: give up the spare one, take the waiting connection and close it,
          // so that the listener stops reporting it (level-triggered: it would spin), then take
          // the spare back.
          ::close(spare_fd_);
          spare_fd_ = -1;
          fd = ::accept4(l.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          const int again = fd < 0 ? errno : 0;
          if (fd >= 0) {
            count(&FrontEndStats::refused_descriptors);  // before the peer can see the close
            ::close(fd);
          }
          spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
          if (fd >= 0) continue;
          if (again == EAGAIN || again == EWOULDBLOCK) return;  // nobody was waiting after all
        }
        // Nothing to do but wait: stop watching the listener for a moment instead of spinning.
        detail::server_log(opt_, "accept on " + l.address + ": " + detail::tcp::errno_text(err) + "; pausing 100 ms");
        pause(l);
        return;
      }
      if (connections_.size() >= opt_.max_connections) {
        count(&FrontEndStats::refused_limit);  // before the peer can see the refusal
        refuse(fd, "connection limit of " + std::to_string(opt_.max_connections) + " reached");
        continue;
      }
      open_connection(fd, l);
    }
  }

  void pause(Listener& l) {
    if (l.watching) poller_.remove(l.fd);
    l.watching = false;
    l.paused_until = Clock::now() + std::chrono::milliseconds(100);
  }

  // Tells a connection we will not serve why, best effort, and closes it.
  void refuse(int fd, const std::string& why) {
    std::vector<std::byte> frame;
    wire::encode_error(frame, 0, errc::overloaded, why);
    const auto n = static_cast<std::uint32_t>(frame.size());
    std::vector<std::byte> bytes{std::byte(n & 0xFF), std::byte((n >> 8) & 0xFF), std::byte((n >> 16) & 0xFF),
                                 std::byte(n >> 24)};
    bytes.insert(bytes.end(), frame.begin(), frame.end());
    [[maybe_unused]] const auto w = ::send(fd, bytes.data(), bytes.size(), detail::tcp::send_flags | MSG_DONTWAIT);
    ::close(fd);
  }

  void open_connection(int fd, const Listener& l) {
    auto c = std::make_shared<Connection>(*this);
    c->fd = fd;
#if EDGESPLIT_HAS_TLS
    if (l.tls) {
      try {
        c->tls = std::make_unique<TlsSession>(*l.tls, /*server=*/true);
      } catch (const error& e) {
        detail::server_log(opt_, std::string("cannot start TLS: ") + e.what());
        ::close(fd);
        return;
      }
    }
#else
    (void)l;
#endif
    const int one = 1;
    (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->session.peer = detail::tcp::peer_address(fd);
    c->accepted = Clock::now();
    c->touch();
    c->frame_held = budget_.open();
    c->out_held = budget_.open();
    c->backlog_held = budget_.open();
    try {
      poller_.add(fd, static_cast<Watch*>(c.get()), Poller::readable);
    } catch (const error&) {
      ::close(fd);
      return;
    }
    c->session.source = batcher_.open_source(c);
    connections_.emplace(fd, std::move(c));
    std::lock_guard lock(stats_mutex_);
    ++stats_.connections_total;
    stats_.connections_open = connections_.size();
  }

  // Ends a connection (loop thread): no more reading, writing or requests.
  void end(Connection& c) {
    if (c.gone) return;
    c.gone = true;
    {
      std::lock_guard lock(c.mutex);
      close_locked(c);
      poller_.remove(c.fd);
      ::close(c.fd);  // under the lock: a writer that got it first has finished
    }
    batcher_.close_source(c.session.source);
    c.session.source.reset();  // the source holds the connection as its sink: no cycle left
    std::vector<std::byte>().swap(c.frame);
    c.frame_held.release();
    std::vector<std::byte>().swap(c.backlog);
    c.backlog_pos = 0;
    c.backlog_held.release();
    auto it = connections_.find(c.fd);
    if (it != connections_.end()) {
      graveyard_.push_back(std::move(it->second));  // alive until the end of this turn
      connections_.erase(it);
    }
    std::lock_guard lock(stats_mutex_);
    stats_.connections_open = connections_.size();
  }

  void read_from(Connection& c) {
    if (!drain_backlog(c)) return;  // still behind: the kernel keeps the rest for later turns
    // Up to 4 reads a turn, and max_messages_per_turn messages, so that one busy peer cannot
    // hold the loop.
    for (int i = 0; i < 4 && !c.gone; ++i) {
      const ssize_t r = ::recv(c.fd, scratch_.data(), scratch_.size(), MSG_DONTWAIT);
      if (r > 0) {
        count_received(static_cast<std::size_t>(r));
        std::span<const std::byte> got(scratch_.data(), static_cast<std::size_t>(r));
#if EDGESPLIT_HAS_TLS
        if (c.tls) {
          if (!decrypt(c, got)) return;
          got = plain_;
        }
#endif
        const std::size_t rest = consume(c, got);
        if (rest != 0) {
          stash(c, got.last(rest));
          return;
        }
        if (static_cast<std::size_t>(r) < scratch_.size()) return;
        continue;
      }
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      end(c);  // end of stream, reset, or shut down by a writer that gave up on the peer
      return;
    }
  }

  // Handles what a connection's backlog holds, up to this turn's share; true when it is empty.
  bool drain_backlog(Connection& c) {
    if (c.backlog_pos == c.backlog.size()) return true;
    const std::span<const std::byte> pending(c.backlog.data() + c.backlog_pos, c.backlog.size() - c.backlog_pos);
    const std::size_t rest = consume(c, pending);
    if (c.gone) return false;
    c.backlog_pos = c.backlog.size() - rest;
    if (rest != 0) return false;
    c.backlog.clear();
    c.backlog_pos = 0;
    if (c.backlog.capacity() > keep_buffer_bytes) std::vector<std::byte>().swap(c.backlog);
    c.backlog_held.shrink_to(c.backlog.capacity());
    return true;
  }

  // Keeps bytes read past this turn's share of messages for the next turns, under the budget.
  void stash(Connection& c, std::span<const std::byte> rest) {
    const std::size_t keep = c.backlog.size() - c.backlog_pos;
    if (c.backlog_pos != 0) {  // drop what was handled, keep what was not
      std::memmove(c.backlog.data(), c.backlog.data() + c.backlog_pos, keep);
      c.backlog.resize(keep);
      c.backlog_pos = 0;
    }
    const std::size_t need = keep + rest.size();
    if (need > c.backlog.capacity()) {
      const std::size_t cap = std::max(need, c.backlog.capacity() * 2);
      if (!c.backlog_held.grow(cap - c.backlog_held.bytes())) {
        std::vector<std::byte> out;
        wire::encode_error(out, 0, errc::overloaded, "server memory budget full");
        write(c, out, budget_.open());
        drop(c, &FrontEndStats::rejected_budget, "more pipelined requests than the memory budget holds");
        return;
      }
      c.backlog.reserve(cap);
    }
    c.backlog.insert(c.backlog.end(), rest.begin(), rest.end());
    if (!c.behind) {
      c.behind = true;
      behind_.push_back(connections_.at(c.fd));
    }
  }

  // Gives each connection with a backlog its share of this turn.
  void catch_up() {
    std::vector<std::shared_ptr<Connection>> still;
    for (auto& c : behind_) {
      if (c->gone) continue;
      if (!drain_backlog(*c) && !c->gone) {
        still.push_back(c);
        continue;
      }
      c->behind = false;
    }
    behind_.swap(still);
  }

#if EDGESPLIT_HAS_TLS
  // Feeds what the socket gave to the TLS session and takes the plaintext into plain_; sends
  // what the session has to say (handshake, alerts). False when the connection ended.
  bool decrypt(Connection& c, std::span<const std::byte> cipher_in) {
    plain_.clear();
    bool peer_closed = false;
    {
      std::lock_guard lock(c.mutex);
      if (c.closed) return false;
      try {
        c.tls->feed(cipher_in);
        std::byte chunk[16 * 1024];
        while (const std::size_t n = c.tls->read(chunk)) plain_.insert(plain_.end(), chunk, chunk + n);
        if (!c.tls_named && c.tls->handshake_complete()) {
          c.tls_named = true;
          const std::string subject = c.tls->peer_subject();
          if (!subject.empty()) c.session.peer += " (" + subject + ")";
        }
        peer_closed = c.tls->peer_closed();
        c.cipher.clear();
        c.tls->take_output(c.cipher);
        send_locked(c, c.cipher, {}, budget_.open());
      } catch (const error& e) {
        c.cipher.clear();
        c.tls->take_output(c.cipher);  // the alert that tells the peer why
        send_locked(c, c.cipher, {}, budget_.open());
        detail::server_log(opt_, "TLS with " + c.session.peer + " failed: " + e.what());
        count(&FrontEndStats::dropped_protocol);
        close_locked(c);
      }
    }
    if (peer_closed && plain_.empty()) {
      end(c);
      return false;
    }
    return !c.gone;
  }
#endif

  // Frames the bytes read from `c` and handles whole messages, up to this turn's share; returns
  // how many bytes (at the end of `data`) were left for a later turn.
  std::size_t consume(Connection& c, std::span<const std::byte> data) {
    if (c.turn != turn_) c.turn = turn_, c.turn_messages = 0;
    while (!data.empty() && !c.gone) {
      if (c.turn_messages >= max_messages_per_turn) return data.size();
      if (c.discard) {
        const std::size_t n = std::min(c.discard, data.size());
        for (std::size_t i = 0; i < n && c.discard_head_n < c.discard_head.size(); ++i)
          c.discard_head[c.discard_head_n++] = data[i];
        c.discard -= n;
        data = data.subspan(n);
        if (c.discard == 0) refused_for_budget(c);
        continue;
      }
      if (!c.have_length) {
        if (c.prefix_n == 0) c.frame_started = Clock::now();
        while (c.prefix_n < 4 && !data.empty()) c.prefix[c.prefix_n++] = data.front(), data = data.subspan(1);
        if (c.prefix_n < 4) return 0;
        c.prefix_n = 0;
        c.length = wire::load_le32(c.prefix.data());
        if (!c.session.greeted && c.length > max_hello_bytes) {
          // Only HELLO may come first, and a HELLO is small: a peer announcing more before it
          // gets nothing read or held for it.
          std::vector<std::byte> out;
          wire::encode_error(out, 0, errc::unsupported, "HELLO must come first; got a message of " +
                                                            std::to_string(c.length) + " bytes");
          write(c, out, budget_.open());
          drop(c, &FrontEndStats::dropped_protocol, "announced a large message before HELLO");
          return 0;
        }
        if (c.length > max_message_bytes()) {
          std::vector<std::byte> out;
          wire::encode_error(out, 0, errc::too_large,
                             "message of " + std::to_string(c.length) + " bytes over the cap of " +
                                 std::to_string(max_message_bytes()));
          write(c, out, budget_.open());
          drop(c, &FrontEndStats::dropped_protocol, "announced a message over the cap");
          return 0;
        }
        c.have_length = true;
        if (c.length == 0) {
          c.have_length = false;
          message(c, {});
          continue;
        }
        // A whole frame already here: handle it where it lies, without copying.
        if (data.size() >= c.length && c.frame.empty()) {
          const auto whole = data.first(c.length);
          data = data.subspan(c.length);
          c.have_length = false;
          message(c, whole);
          continue;
        }
      }
      const std::size_t want = c.length - c.frame.size();
      const std::size_t n = std::min(want, data.size());
      if (!grow_frame(c, c.frame.size() + n)) {
        // No room under the budget: read past this frame and answer it `overloaded`.
        c.discard = c.length - c.frame.size();
        c.discard_head_n = std::min(c.frame.size(), c.discard_head.size());
        std::copy_n(c.frame.begin(), c.discard_head_n, c.discard_head.begin());
        release_frame(c);
        continue;
      }
      c.frame.insert(c.frame.end(), data.begin(), data.begin() + static_cast<std::ptrdiff_t>(n));
      data = data.subspan(n);
      if (c.frame.size() == c.length) {
        c.have_length = false;
        message(c, c.frame);
        release_frame(c);
      }
    }
    return 0;
  }

  // Room for `size` bytes of frame: capacity grows with what has arrived (doubling, never past
  // the announced length), each step reserved under the budget first.
  bool grow_frame(Connection& c, std::size_t size) {
    if (size <= c.frame.capacity()) return true;
    const std::size_t cap = std::min<std::size_t>(c.length, std::max({size, c.frame.capacity() * 2, std::size_t{256}}));
    if (!c.frame_held.grow(cap - c.frame_held.bytes())) return false;
    c.frame.reserve(cap);
    return true;
  }
  void release_frame(Connection& c) {
    c.frame.clear();
    if (c.frame.capacity() > keep_buffer_bytes) {
      std::vector<std::byte>().swap(c.frame);
      c.frame_held.release();
    }
    c.frame_started = {};
  }

  void refused_for_budget(Connection& c) {
    std::uint32_t id = 0;
    if (c.discard_head_n >= 20) id = wire::load_le32(c.discard_head.data() + 16);
    c.discard_head_n = 0;
    c.have_length = false;
    c.frame_started = {};
    count(&FrontEndStats::rejected_budget);
    std::vector<std::byte> out;
    wire::encode_error(out, id, errc::overloaded, "server memory budget full");
    write(c, out, budget_.open());
  }

  void message(Connection& c, std::span<const std::byte> bytes) {
    ++c.turn_messages;
    c.touch();
    c.frame_started = {};
    if (handler_.handle(c.session, bytes, codec_) == RequestHandler::Verdict::close)
      drop(c, &FrontEndStats::dropped_protocol, "");
  }

  void drop(Connection& c, std::size_t FrontEndStats::*why, const std::string& what) {
    count(why);
    if (!what.empty()) detail::server_log(opt_, "dropped " + c.session.peer + ": " + what);
    // Let a last ERROR go out before the socket closes: stop reading now, and end the
    // connection once its replies are written (or when the sweep finds it stuck).
    {
      std::lock_guard lock(c.mutex);
      if (!c.closed && c.out_pos < c.out.size()) {
        c.closing = true;
        try {
          poller_.modify(c.fd, static_cast<Watch*>(&c), Poller::writable);
          return;
        } catch (const error&) {
        }
      }
    }
    end(c);
  }

  // Timeouts: no HELLO in time, stuck inside a frame, idle, or not taking its last replies.
  void sweep() {
    const auto now = Clock::now();
    for (auto& l : listeners_)
      if (!l->watching && now >= l->paused_until) watch(*l);
    struct Late {
      Connection* c;
      std::size_t FrontEndStats::*why;
      const char* what;
    };
    std::vector<Late> late;
    for (auto& [fd, cp] : connections_) {
      Connection& c = *cp;
      const bool mid_frame = c.prefix_n != 0 || c.have_length || c.discard != 0;
      if (c.closing) {
        if (now - c.active() > opt_.stall_timeout) late.push_back({&c, &FrontEndStats::dropped_unread, ""});
      } else if (!c.session.greeted && now - c.accepted > opt_.handshake_timeout) {
        late.push_back({&c, &FrontEndStats::dropped_idle, "no HELLO within the handshake timeout"});
      } else if (mid_frame && !c.behind && !bytes_waiting(c)) {
        // Late only if the peer is: bytes already in the kernel, or in the backlog, mean the
        // loop is behind, not the peer.
        const double allowed = std::chrono::duration<double>(opt_.stall_timeout).count() +
                               static_cast<double>(c.length) / min_receive_rate;
        if (std::chrono::duration<double>(now - c.frame_started).count() > allowed)
          late.push_back({&c, &FrontEndStats::dropped_stalled, "stalled inside a frame"});
      } else if (!mid_frame && now - c.active() > opt_.idle_timeout && written(c)) {
        late.push_back({&c, &FrontEndStats::dropped_idle, "idle past the idle timeout"});
      }
    }
    for (const Late& l : late) {
      if (l.c->closing) {
        count(l.why);
        end(*l.c);
      } else {
        drop(*l.c, l.why, l.what);
      }
    }
  }

  // True when the kernel holds bytes from `c` that the loop has not read yet.
  static bool bytes_waiting(const Connection& c) {
    char b;
    return ::recv(c.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
  }

  void close_all() {
    std::vector<std::function<void()>> tasks;
    {
      std::lock_guard lock(mutex_);
      tasks.swap(tasks_);
    }
    for (auto& t : tasks) t();  // nobody waits forever on a broadcast
    std::vector<Connection*> all;
    for (auto& [fd, c] : connections_) all.push_back(c.get());
    for (Connection* c : all) end(*c);
    graveyard_.clear();
    for (auto& l : listeners_) {
      if (l->watching) poller_.remove(l->fd);
      l->socket->close();
    }
    listeners_.clear();
  }

  void count(std::size_t FrontEndStats::*field) {
    std::lock_guard lock(stats_mutex_);
    ++(stats_.*field);
  }
  void count_sent(std::size_t n) {
    std::lock_guard lock(stats_mutex_);
    stats_.bytes_sent += n;
  }
  void count_received(std::size_t n) {
    std::lock_guard lock(stats_mutex_);
    stats_.bytes_received += n;
  }

  static constexpr std::size_t scratch_bytes = 64 * 1024;
  static constexpr std::size_t keep_buffer_bytes = 64 * 1024;  // buffers above this are freed once used
  static constexpr double min_receive_rate = 64.0 * 1024;       // bytes/s a frame must arrive at, past stall_timeout
  static constexpr std::size_t max_messages_per_turn = 16;     // per connection: the loop's time is shared
  static constexpr std::size_t max_hello_bytes = 4096;          // a HELLO with the longest fields is ~230 bytes

  RequestHandler& handler_;
  DynamicBatcher& batcher_;
  MemoryBudget& budget_;
  const ServerOptions& opt_;
  Poller poller_;
  wire::FeatureDecoder codec_;  // loop thread: decodes every connection's requests
  std::vector<std::byte> scratch_;  // loop thread: one read's bytes
  std::vector<std::byte> plain_;    // loop thread: what a TLS connection's read decrypted to
  int spare_fd_ = -1;   // given up to accept (and close) a connection when out of descriptors

  // Loop thread only.
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::unordered_map<int, std::shared_ptr<Connection>> connections_;
  std::vector<std::shared_ptr<Connection>> graveyard_;
  std::vector<std::shared_ptr<Connection>> behind_;  // connections with a backlog of bytes read
  std::uint64_t turn_ = 0;

  mutable std::mutex mutex_;  // what other threads hand the loop
  std::vector<std::unique_ptr<Listener>> pending_listeners_;
  std::vector<std::function<void()>> tasks_;  // run on the loop's thread at its next turn
  bool stopping_accept_ = false, finishing_ = false;
  Clock::time_point finish_by_{};

  mutable std::mutex stats_mutex_;
  FrontEndStats stats_;
  std::thread thread_;
};

}  // namespace edgesplit
