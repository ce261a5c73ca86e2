// edgesplit/transport/tcp.hpp - message transport over TCP (POSIX sockets, IPv4 and IPv6).
//
// Framing: every message is a 4-byte little-endian payload length followed by the payload. The
// receiver checks the length against its cap before it allocates anything; a frame over the cap
// ends the connection with `too_large`. Nothing else is on the stream: versioning, checksums and
// validation of what the payload says belong to wire/.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <array>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "edgesplit/transport/transport.hpp"

namespace edgesplit {

/// Socket options and limits of a TCP connection or listener.
struct TcpOptions {
  /// Largest payload sent or accepted; at most 2^32 - 1 (the length prefix is 32 bits).
  std::size_t max_message_bytes = default_max_message_bytes;
  /// Deadline of send(bytes) called without one: now + send_timeout.
  Clock::duration send_timeout = std::chrono::seconds(30);
  /// Disable Nagle's algorithm: a message goes out at once instead of waiting for an ACK.
  bool no_delay = true;
};

namespace detail::tcp {

/// Owns one file descriptor.
class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) noexcept : fd_(fd) {}
  Socket(Socket&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Socket& operator=(Socket&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  ~Socket() { reset(); }

  int get() const noexcept { return fd_; }
  bool valid() const noexcept { return fd_ >= 0; }
  void reset() noexcept {
    if (fd_ >= 0) ::close(fd_);  // not retried on EINTR: on Linux the descriptor is gone anyway
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

#ifdef MSG_NOSIGNAL
inline constexpr int send_flags = MSG_NOSIGNAL;  // a write to a closed peer must not raise SIGPIPE
#else
inline constexpr int send_flags = 0;  // SO_NOSIGPIPE is set on every socket instead
#endif

inline std::string errno_text(int err) { return std::system_category().message(err); }

/// What a failed socket call means to the caller: the peer is gone, or the system refused.
inline errc classify(int err) noexcept {
  switch (err) {
    case ECONNRESET:
    case ECONNREFUSED:
    case ECONNABORTED:
    case EPIPE:
    case ENOTCONN:
    case ETIMEDOUT:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ENETDOWN:
      return errc::unreachable;
    default:
      return errc::io_error;
  }
}

/// poll()'s timeout for `deadline`: -1 for none, rounded up to whole milliseconds so that a wait
/// never returns before the deadline (which would spin).
inline int poll_timeout_ms(Deadline deadline) noexcept {
  if (deadline == no_deadline) return -1;
  const auto now = std::chrono::steady_clock::now();
  if (deadline <= now) return 0;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
  return ms > INT_MAX ? INT_MAX : static_cast<int>(ms);
}

/// Waits until `fd` reports `events` (or an error or hang-up, which the next call on the socket
/// reports). False when the deadline passed first. EINTR restarts the wait with the time left.
inline bool wait_for(int fd, short events, Deadline deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, poll_timeout_ms(deadline));
    if (n > 0) return true;
    if (n == 0) {
      if (deadline != no_deadline && std::chrono::steady_clock::now() >= deadline) return false;
      continue;
    }
    if (errno != EINTR) {
      const int err = errno;
      fail(errc::io_error, "poll: " + errno_text(err));
    }
  }
}

inline void set_nonblocking(int fd, bool on) {
  const int flags = ::fcntl(fd, F_GETFL, 0);
  if (flags < 0 || ::fcntl(fd, F_SETFL, on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK)) < 0) {
    const int err = errno;
    fail(errc::io_error, "fcntl(O_NONBLOCK): " + errno_text(err));
  }
}

inline void set_option(int fd, int level, int name, int value, const char* what) {
  if (::setsockopt(fd, level, name, &value, sizeof value) != 0) {
    const int err = errno;
    fail(errc::io_error, std::string("setsockopt(") + what + "): " + errno_text(err));
  }
}

/// Options every socket gets, connected or listening.
inline void configure_common(int fd) {
  (void)fd;
#ifdef SO_NOSIGPIPE
  set_option(fd, SOL_SOCKET, SO_NOSIGPIPE, 1, "SO_NOSIGPIPE");
#endif
}

inline Socket make_socket(int family) {
  int type = SOCK_STREAM;
#ifdef SOCK_CLOEXEC
  type |= SOCK_CLOEXEC;
#endif
  Socket s(::socket(family, type, 0));
  if (!s.valid()) {
    const int err = errno;
    fail(err == EAFNOSUPPORT ? errc::unsupported : errc::io_error, "socket: " + errno_text(err));
  }
#ifndef SOCK_CLOEXEC
  ::fcntl(s.get(), F_SETFD, FD_CLOEXEC);
#endif
  configure_common(s.get());
  return s;
}

/// "127.0.0.1:80" or "[::1]:80". (Formatted into a char buffer: GCC 12 at -O3 reports false
/// -Wrestrict errors for the std::string concatenations this would otherwise be.)
inline std::string format_address(const sockaddr* sa) {
  char text[INET6_ADDRSTRLEN] = {};
  char out[INET6_ADDRSTRLEN + 16] = "?";
  if (sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
    std::snprintf(out, sizeof out, "%s:%u", text, static_cast<unsigned>(ntohs(in->sin_port)));
  } else if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
    std::snprintf(out, sizeof out, "[%s]:%u", text, static_cast<unsigned>(ntohs(in6->sin6_port)));
  }
  return std::string(out);
}

inline std::string peer_address(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  return format_address(reinterpret_cast<const sockaddr*>(&ss));
}

/// getaddrinfo's answer, freed on scope exit.
struct AddressList {
  addrinfo* head = nullptr;
  AddressList() = default;
  AddressList(const AddressList&) = delete;
  AddressList& operator=(const AddressList&) = delete;
  ~AddressList() {
    if (head) ::freeaddrinfo(head);
  }
};

/// Resolves `host` (a numeric address or a name: names may block on DNS, without a deadline).
inline void resolve(std::string_view host, std::uint16_t port, bool passive, errc on_failure, AddressList& out) {
  if (host.empty() || host.size() > 253 || host.find('\0') != std::string_view::npos) {
    fail(errc::invalid_argument, "TCP: bad host name '" + std::string(host) + "'");
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  const std::string host_z(host), port_z = std::to_string(port);
  const int rc = ::getaddrinfo(host_z.c_str(), port_z.c_str(), &hints, &out.head);
  if (rc != 0 || out.head == nullptr) {
    fail(on_failure, "TCP: cannot resolve '" + host_z + "': " + (rc != 0 ? ::gai_strerror(rc) : "no address"));
  }
}

/// v > 2^32 - 1, written so that a 32-bit size_t (where it cannot be) draws no warning.
template <class T>
constexpr bool over_u32(T v) noexcept {
  if constexpr (sizeof(T) > 4) {
    return v > T{UINT32_MAX};
  } else {
    (void)v;
    return false;
  }
}

inline void check_options(const TcpOptions& o) {
  if (over_u32(o.max_message_bytes)) {
    fail(errc::invalid_argument, "TcpOptions::max_message_bytes over 2^32 - 1 (the length prefix is 32 bits)");
  }
}

/// A connected socket (blocking) to `host`:`port`, trying each address the name resolves to until
/// one answers: TcpTransport::connect without the transport. `timeout` if the deadline passes,
/// `unreachable` if refused.
inline Socket connect_socket(std::string_view host, std::uint16_t port, Deadline deadline) {
  AddressList addresses;
  resolve(host, port, false, errc::unreachable, addresses);
  std::string errors;
  for (const addrinfo* ai = addresses.head; ai != nullptr; ai = ai->ai_next) {
    Socket fd = make_socket(ai->ai_family);
    set_nonblocking(fd.get(), true);  // so that connect() honours the deadline
    int err = 0;
    if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      err = errno;
      if (err == EINPROGRESS || err == EINTR) {
        if (!wait_for(fd.get(), POLLOUT, deadline)) {
          fail(errc::timeout, "TCP: connect to " + format_address(ai->ai_addr) + " timed out");
        }
        socklen_t len = sizeof err;
        if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      }
    }
    if (err != 0) {
      errors += (errors.empty() ? "" : "; ") + format_address(ai->ai_addr) + ": " + errno_text(err);
      continue;
    }
    set_nonblocking(fd.get(), false);
    return fd;
  }
  fail(errc::unreachable, "TCP: cannot connect to " + std::string(host) + ":" + std::to_string(port) + " (" + errors + ")");
}

}  // namespace detail::tcp

class TcpListener;

/// One TCP connection carrying length-prefixed messages.
///
/// Thread-safety: one send and one receive may run at once (each side has its own lock; further
/// callers of the same side wait their turn); close() may be called from any thread and wakes
/// both. Deadlines are read on the steady clock and honoured to about a millisecond.
///
/// Failure semantics: a receive whose deadline passes mid-message returns false and keeps what it
/// has, so the next call resumes (mid_message() tells a server that a peer stalled inside a
/// frame). A send whose deadline passes before any byte left returns `timeout` and the connection
/// stays usable; after a partial write the stream can no longer be framed, so the connection is
/// closed and `timeout` is thrown. Any other failure closes the connection. A clean end of stream
/// between messages is `unreachable`; an end inside a message is `corrupt_frame`.
class TcpTransport {
 public:
  /// Connects to `host`:`port` (numeric IPv4/IPv6 address or name), trying each address the name
  /// resolves to until one answers. `timeout` if the deadline passes, `unreachable` if refused.
  static TcpTransport connect(std::string_view host, std::uint16_t port,
                              Deadline deadline = deadline_after(std::chrono::seconds(10)), TcpOptions options = {}) {
    detail::tcp::check_options(options);
    return TcpTransport(detail::tcp::connect_socket(host, port, deadline), options);
  }

  /// Moves the connection.
  TcpTransport(TcpTransport&&) noexcept = default;
  /// Moves the connection.
  TcpTransport& operator=(TcpTransport&&) noexcept = default;
  TcpTransport(const TcpTransport&) = delete;
  TcpTransport& operator=(const TcpTransport&) = delete;
  ~TcpTransport() { close(); }

  /// Sends one message, framed, with the options' send timeout.
  void send(std::span<const std::byte> bytes) { send(bytes, deadline_after(state().options.send_timeout)); }
  /// Sends one message, framed; errc::timeout past `deadline` (after a partial write the connection is closed
  /// first).
  void send(std::span<const std::byte> bytes, Deadline deadline) {
    using namespace detail::tcp;
    State& s = state();
    if (bytes.size() > s.options.max_message_bytes) {
      fail(errc::too_large, "TCP: message of " + std::to_string(bytes.size()) + " bytes over the cap of " +
                                std::to_string(s.options.max_message_bytes));
    }
    std::lock_guard lock(s.send_mutex);
    throw_if_closed(s);
    const auto n = static_cast<std::uint32_t>(bytes.size());
    const unsigned char header[4] = {static_cast<unsigned char>(n), static_cast<unsigned char>(n >> 8),
                                     static_cast<unsigned char>(n >> 16), static_cast<unsigned char>(n >> 24)};
    auto* payload = const_cast<std::byte*>(bytes.data());  // iovec wants void*; nothing is written
    const std::size_t total = sizeof header + bytes.size();
    std::size_t sent = 0;
    // Without a deadline the socket may block; with one, every write is non-blocking and poll
    // waits for room. Header and payload leave in one system call, so a small message is one
    // segment: a small one is copied behind its header and sent with send(), which costs the
    // kernel less than importing sendmsg's iovecs (the copy is cheaper than the difference at
    // 1 KiB); a large one goes by sendmsg from where it is.
    const int flags = send_flags | (deadline == no_deadline ? 0 : MSG_DONTWAIT);
    const bool flat = total <= s.small_send.size();
    if (flat) {
      std::memcpy(s.small_send.data(), header, sizeof header);
      if (!bytes.empty()) std::memcpy(s.small_send.data() + sizeof header, bytes.data(), bytes.size());
    }
    while (sent < total) {
      ssize_t w;
      if (flat) {
        w = ::send(s.fd.get(), s.small_send.data() + sent, total - sent, flags);
      } else {
        iovec iov[2];
        int count = 0;
        if (sent < sizeof header) {
          iov[count++] = {const_cast<unsigned char*>(header) + sent, sizeof header - sent};
          iov[count++] = {payload, bytes.size()};
        } else {
          iov[count++] = {payload + (sent - sizeof header), total - sent};
        }
        msghdr msg{};
        msg.msg_iov = iov;
        msg.msg_iovlen = static_cast<decltype(msg.msg_iovlen)>(count);
        w = ::sendmsg(s.fd.get(), &msg, flags);
      }
      if (w >= 0) {
        sent += static_cast<std::size_t>(w);
        continue;
      }
      const int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) {
        if (wait_for(s.fd.get(), POLLOUT, deadline)) continue;
        if (sent > 0) shut(s);  // half a frame is on the wire: the stream is unusable
        fail(errc::timeout, "TCP: send to " + s.peer + " timed out after " + std::to_string(sent) + " of " +
                                std::to_string(total) + " bytes");
      }
      throw_if_closed(s);
      shut(s);
      fail(classify(err), "TCP: send to " + s.peer + ": " + errno_text(err));
    }
  }

  /// The next whole message, or nullopt at the deadline; errc::unreachable when the peer closed.
  std::optional<Message> receive(Deadline deadline) { return detail::receive_new(*this, deadline); }
  /// The next whole message into `into`, reusing its buffer; false at the deadline, keeping a partial message
  /// for the next call.
  bool receive(Deadline deadline, Message& into) {
    State& s = state();
    std::lock_guard lock(s.receive_mutex);
    throw_if_closed(s);
    into.sent_at = into.delivered_at = {};
    if (s.staging.empty()) s.staging.resize(staging_bytes);
    if (s.holding_partial) {  // resume the message an earlier deadline interrupted
      into.bytes.swap(s.partial);
      s.holding_partial = false;
    }
    if (s.pos == s.end && s.staging.size() > staging_bytes) {  // grown by a wrong guess (below)
      s.staging.resize(staging_bytes);
      s.staging.shrink_to_fit();
      s.pos = s.end = 0;
    }
    while (!s.have_length) {
      if (s.end - s.pos >= 4) {
        take_length(s);
        into.bytes.resize(s.length);
        break;
      }
      if (s.pos > 0) {  // keep the partial header at the front, with room behind it
        std::memmove(s.staging.data(), s.staging.data() + s.pos, s.end - s.pos);
        s.end -= s.pos;
        s.pos = 0;
      }
      if (s.last_length >= direct_read_bytes && s.end == 0) {
        // After a large message expect another as large: one recvmsg reads the prefix into the
        // staging buffer and the payload straight into the message, with no copy and no second
        // system call. A guess that was too large is put right below.
        into.bytes.resize(s.last_length);
        iovec iov[2] = {{s.staging.data(), 4}, {into.bytes.data(), into.bytes.size()}};
        const std::size_t n = read_some(s, iov, 2, deadline);
        if (n == 0) {
          into.bytes.clear();
          return false;
        }
        s.end = std::min<std::size_t>(n, 4);
        if (n <= 4) continue;
        const std::size_t early = n - 4;  // payload bytes already in the message
        take_length(s);
        if (early > s.length) {
          // The message was shorter than the guess: what follows it belongs to the next ones.
          const std::size_t extra = early - s.length;
          if (extra > s.staging.size()) s.staging.resize(extra);
          std::memcpy(s.staging.data(), into.bytes.data() + s.length, extra);
          s.pos = 0;
          s.end = extra;
          s.got = s.length;
        } else {
          s.pos = s.end = 0;
          s.got = early;
        }
        into.bytes.resize(s.length);  // keeps the payload bytes already there
        break;
      }
      // After small messages read all there is: one system call may bring several. After a
      // large one with part of the next prefix in hand, read just the rest of the prefix.
      const std::size_t room = s.last_length >= direct_read_bytes ? 4 - s.end : s.staging.size() - s.end;
      const std::size_t n = read_some(s, s.staging.data() + s.end, room, deadline);
      if (n == 0) return false;
      s.end += n;
    }
    while (s.got < s.length) {
      const std::size_t want = s.length - s.got;
      if (s.pos < s.end) {
        const std::size_t n = std::min(want, s.end - s.pos);
        std::memcpy(into.bytes.data() + s.got, s.staging.data() + s.pos, n);
        s.pos += n;
        s.got += n;
        continue;
      }
      std::size_t n = 0;
      if (want < direct_read_bytes) {
        // Small rest: read through the staging buffer, which may also catch the next frames.
        s.pos = s.end = 0;
        n = read_some(s, s.staging.data(), s.staging.size(), deadline);
        s.end = n;
      } else {
        // Large rest: straight into the message, no copy.
        n = read_some(s, into.bytes.data() + s.got, want, deadline);
        s.got += n;
      }
      if (n == 0) {
        s.partial.swap(into.bytes);
        s.holding_partial = true;
        into.bytes.clear();
        return false;
      }
    }
    s.have_length = false;
    s.last_length = s.length;
    return true;
  }

  /// Idempotent. Shuts the socket down (waking any thread blocked on it); the descriptor itself is
  /// released by the destructor, so no other thread can ever see it reused.
  void close() noexcept {
    if (s_) shut(*s_);
  }
  /// False once closed.
  bool is_open() const noexcept { return s_ && !s_->closed.load(std::memory_order_acquire); }
  /// True while part of a message has been received and the rest has not: a peer stalled here.
  bool mid_message() const {
    if (!s_) return false;
    std::lock_guard lock(s_->receive_mutex);
    return s_->have_length || s_->end > s_->pos;
  }
  /// The peer as "address:port" ("[v6 address]:port" for IPv6).
  const std::string& peer_address() const { return state().peer; }
  /// The socket descriptor, -1 when none; for poll loops and socket options.
  int native_handle() const noexcept { return s_ ? s_->fd.get() : -1; }
  const TcpOptions& options() const { return state().options; }  ///< the options in use

 private:
  friend class TcpListener;
  static constexpr std::size_t staging_bytes = 64 * 1024;
  // Payloads from this size on are read straight into the message: copying them out of the
  // staging buffer would cost more than the extra system call.
  static constexpr std::size_t direct_read_bytes = 16 * 1024;
  // Deadlines at least this far away bound a blocking recv with SO_RCVTIMEO (kernel-tick
  // precision); nearer ones go through poll (millisecond precision).
  static constexpr Clock::duration receive_timeout_min = std::chrono::milliseconds(50);

  struct State {
    State(detail::tcp::Socket f, TcpOptions o) : fd(std::move(f)), options(o) {}
    detail::tcp::Socket fd;
    const TcpOptions options;
    std::string peer;
    std::atomic<bool> closed{false};
    std::mutex send_mutex;
    std::array<std::byte, 4096> small_send;  // header + payload of a small message, guarded by send_mutex
    mutable std::mutex receive_mutex;
    // Receive side, guarded by receive_mutex.
    std::vector<std::byte> staging;  // bytes read ahead of the current frame's end
    std::size_t pos = 0, end = 0;    // unread staging bytes are [pos, end)
    bool have_length = false;        // the current frame's length prefix has been read
    std::uint32_t length = 0;
    std::size_t got = 0;             // payload bytes of the current frame received so far
    std::vector<std::byte> partial;  // their buffer while no receive() is running
    bool holding_partial = false;
    std::uint32_t last_length = 0;   // payload size of the last whole message
    Clock::duration receive_timeout{};  // the socket's SO_RCVTIMEO; zero: none
  };

  TcpTransport(detail::tcp::Socket fd, TcpOptions options) {
    using namespace detail::tcp;
    if (options.no_delay) set_option(fd.get(), IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
    s_ = std::make_unique<State>(std::move(fd), options);
    s_->peer = detail::tcp::peer_address(s_->fd.get());
  }

  State& state() const {
    if (!s_) fail(errc::unreachable, "TCP: moved-from transport");
    return *s_;
  }
  static void throw_if_closed(const State& s) {
    if (s.closed.load(std::memory_order_acquire)) fail(errc::unreachable, "TCP: connection to " + s.peer + " is closed");
  }
  static void shut(State& s) noexcept {
    if (!s.closed.exchange(true, std::memory_order_acq_rel)) ::shutdown(s.fd.get(), SHUT_RDWR);
  }

  /// Takes the length prefix at the staging buffer's read position and checks it against the
  /// cap, closing the connection before anything is allocated for an oversized message.
  static void take_length(State& s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.staging.data() + s.pos);
    const std::uint32_t n = std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 | std::uint32_t{p[2]} << 16 |
                            std::uint32_t{p[3]} << 24;
    s.pos += 4;
    if (n > s.options.max_message_bytes) {
      shut(s);
      fail(errc::too_large, "TCP: " + s.peer + " announced a message of " + std::to_string(n) +
                                " bytes, over the cap of " + std::to_string(s.options.max_message_bytes));
    }
    s.have_length = true;
    s.length = n;
    s.got = 0;
  }

  /// Sets SO_RCVTIMEO (the socket's own bound on a blocking recv); false if the system refuses.
  static bool set_receive_timeout(State& s, Clock::duration t) noexcept {
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(t).count();
    timeval tv{};
    tv.tv_sec = static_cast<decltype(tv.tv_sec)>(us / 1'000'000);
    tv.tv_usec = static_cast<decltype(tv.tv_usec)>(us % 1'000'000);
    if (::setsockopt(s.fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) return false;
    s.receive_timeout = t;
    return true;
  }

  /// Prepares a recv that must end by `deadline`. poll() before every recv would cost a system
  /// call per message; when the deadline is far, a receive timeout of about 3/4 of the time left
  /// bounds a plain blocking recv instead, and stays as it is while it still fits (a caller that
  /// always gives "now + T" sets it once). Returns false when the caller must poll instead.
  static bool arm_receive_timeout(State& s, Deadline deadline) noexcept {
    const auto left = deadline - std::chrono::steady_clock::now();
    if (left < receive_timeout_min) return false;
    const auto slack = receive_timeout_min / 5;  // the kernel rounds the timeout up to its tick
    if (s.receive_timeout > Clock::duration::zero() && s.receive_timeout <= left - slack &&
        s.receive_timeout >= left / 2) {
      return true;
    }
    return set_receive_timeout(s, std::chrono::floor<std::chrono::milliseconds>(left * 3 / 4));
  }

  /// Reads at least one byte into [buf, buf+len), or returns 0 when the deadline passes first.
  static std::size_t read_some(State& s, std::byte* buf, std::size_t len, Deadline deadline) {
    iovec iov{buf, len};
    return read_some(s, &iov, 1, deadline);
  }
  /// The same, scattered over `count` buffers.
  static std::size_t read_some(State& s, iovec* iov, int count, Deadline deadline) {
    using namespace detail::tcp;
    for (;;) {
      int flags = 0;
      if (deadline == no_deadline) {
        if (s.receive_timeout != Clock::duration::zero() && !set_receive_timeout(s, Clock::duration::zero())) {
          const int err = errno;
          fail(errc::io_error, "setsockopt(SO_RCVTIMEO): " + errno_text(err));
        }
      } else if (!arm_receive_timeout(s, deadline)) {
        if (!wait_for(s.fd.get(), POLLIN, deadline)) return 0;
        flags = MSG_DONTWAIT;
      }
      ssize_t r;
      if (count == 1) {
        r = ::recv(s.fd.get(), iov->iov_base, iov->iov_len, flags);
      } else {
        msghdr msg{};
        msg.msg_iov = iov;
        msg.msg_iovlen = static_cast<decltype(msg.msg_iovlen)>(count);
        r = ::recvmsg(s.fd.get(), &msg, flags);
      }
      if (r > 0) return static_cast<std::size_t>(r);
      const int err = r == 0 ? 0 : errno;
      if (err == EAGAIN || err == EWOULDBLOCK) {  // a receive timeout, or a spurious wake-up
        if (deadline != no_deadline && std::chrono::steady_clock::now() >= deadline) return 0;
        continue;
      }
      if (err == EINTR) continue;
      throw_if_closed(s);
      shut(s);
      if (err != 0) fail(classify(err), "TCP: receive from " + s.peer + ": " + errno_text(err));
      if (s.have_length || s.end > s.pos) {
        fail(errc::corrupt_frame, "TCP: " + s.peer + " closed the connection inside a message (" +
                                      std::to_string(s.have_length ? 4 + s.got : s.end - s.pos) + " bytes of it received)");
      }
      fail(errc::unreachable, "TCP: " + s.peer + " closed the connection");
    }
  }

  std::unique_ptr<State> s_;
};

static_assert(Transport<TcpTransport>);

/// A listening socket that hands out one TcpTransport per accepted connection.
class TcpListener {
 public:
  /// Listens on `host` ("127.0.0.1", "::1", "0.0.0.0", "::", or a name) and `port` (0: the
  /// system picks a free one; port() tells which). IPv6 sockets are IPv6-only. Accepted
  /// connections get `options`.
  static TcpListener bind(std::string_view host, std::uint16_t port, TcpOptions options = {}, int backlog = 128) {
    using namespace detail::tcp;
    check_options(options);
    AddressList addresses;
    resolve(host, port, true, errc::invalid_argument, addresses);
    const addrinfo* ai = addresses.head;
    Socket fd = make_socket(ai->ai_family);
    set_option(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
    if (ai->ai_family == AF_INET6) set_option(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd.get(), backlog) != 0) {
      const int err = errno;
      fail(err == EADDRNOTAVAIL || err == EAFNOSUPPORT ? errc::unsupported : errc::io_error,
           "TCP: cannot listen on " + format_address(ai->ai_addr) + ": " + errno_text(err));
    }
    set_nonblocking(fd.get(), true);  // accept() after poll() must not block if the peer left
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
      const int err = errno;
      fail(errc::io_error, "TCP: getsockname: " + errno_text(err));
    }
    TcpListener l;
    l.s_ = std::make_unique<State>(std::move(fd), options);
    l.s_->address = format_address(reinterpret_cast<const sockaddr*>(&ss));
    l.s_->port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_port
                                                : reinterpret_cast<const sockaddr_in*>(&ss)->sin_port);
    return l;
  }

  /// Moves the listener.
  TcpListener(TcpListener&&) noexcept = default;
  /// Moves the listener.
  TcpListener& operator=(TcpListener&&) noexcept = default;
  ~TcpListener() { close(); }

  /// The next connection, or nullopt when the deadline passes first. `unreachable` once closed.
  std::optional<TcpTransport> accept(Deadline deadline) {
    std::optional<detail::tcp::Socket> fd = accept_socket(deadline);
    if (!fd) return std::nullopt;
    return TcpTransport(std::move(*fd), state().options);
  }

 private:
  friend class TlsListener;  // transport/tls.hpp: puts TLS on the sockets accepted here

  /// accept() without the transport: the next connected socket (blocking), or nullopt when the
  /// deadline passes first. `unreachable` once closed.
  std::optional<detail::tcp::Socket> accept_socket(Deadline deadline) {
    using namespace detail::tcp;
    State& s = state();
    for (;;) {
      throw_if_closed(s);
      if (!wait_for(s.fd.get(), POLLIN, deadline)) return std::nullopt;
      throw_if_closed(s);
      Socket fd(::accept(s.fd.get(), nullptr, nullptr));
      if (!fd.valid()) {
        const int err = errno;
        // The connection may have gone between poll and accept; another thread may have won it.
        if (err == EINTR || err == EAGAIN || err == EWOULDBLOCK || err == ECONNABORTED || err == EPROTO) continue;
        fail(errc::io_error, "TCP: accept on " + s.address + ": " + errno_text(err));
      }
      ::fcntl(fd.get(), F_SETFD, FD_CLOEXEC);
      set_nonblocking(fd.get(), false);  // BSDs inherit O_NONBLOCK from the listener; Linux does not
      configure_common(fd.get());
      return fd;
    }
  }

 public:
  /// Idempotent; wakes a thread blocked in accept().
  void close() noexcept {
    if (s_ && !s_->closed.exchange(true, std::memory_order_acq_rel)) ::shutdown(s_->fd.get(), SHUT_RDWR);
  }
  /// False once closed.
  bool is_open() const noexcept { return s_ && !s_->closed.load(std::memory_order_acquire); }
  /// The bound port (the one the system chose for port 0).
  std::uint16_t port() const { return state().port; }
  /// The bound address as "address:port".
  const std::string& address() const { return state().address; }
  /// The listening socket's descriptor (non-blocking), -1 when none: for event loops that accept
  /// on it themselves. It stays owned by the listener.
  int native_handle() const noexcept { return s_ ? s_->fd.get() : -1; }

 private:
  struct State {
    State(detail::tcp::Socket f, TcpOptions o) : fd(std::move(f)), options(o) {}
    detail::tcp::Socket fd;
    const TcpOptions options;
    std::string address;
    std::uint16_t port = 0;
    std::atomic<bool> closed{false};
  };
  TcpListener() = default;
  State& state() const {
    if (!s_) fail(errc::unreachable, "TCP: moved-from listener");
    return *s_;
  }
  static void throw_if_closed(const State& s) {
    if (s.closed.load(std::memory_order_acquire)) fail(errc::unreachable, "TCP: listener " + s.address + " is closed");
  }
  std::unique_ptr<State> s_;
};

}  // namespace edgesplit
