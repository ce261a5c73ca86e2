// Tests for transport/: the conformance suite (transport_conformance.hpp: one check per clause of
// the Transport contract) over the in-process pair, simulated links (over in-process on the steady
// and on a virtual clock, over TCP on the steady clock) and TCP over IPv4 and IPv6; then what is
// particular to each transport (its options, listeners, signals, the simulated link's timing on
// virtual time). Loopback only; no test asserts a wall-clock duration (waits in real time only
// bound how long a failing test can hang).
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "alloc_counter.hpp"
#include "edgesplit/core/random.hpp"
#include "edgesplit/transport/inproc.hpp"
#include "edgesplit/transport/simulated_link.hpp"
#include "edgesplit/transport/tcp.hpp"
#include "test_util.hpp"
#include "transport_conformance.hpp"

using namespace edgesplit;
using namespace std::chrono_literals;
using edgesplit_test::expect_errc;
using Bytes = std::vector<std::byte>;
using edgesplit_test::conformance::random_bytes;
namespace conf = edgesplit_test::conformance;

namespace {

/// Writes raw bytes on a socket, bypassing the framing (to feed a receiver broken streams).
void write_raw(int fd, std::span<const std::byte> b) {
  std::size_t off = 0;
  while (off < b.size()) {
    const ssize_t n = ::send(fd, b.data() + off, b.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    REQUIRE(n > 0);
    off += static_cast<std::size_t>(n);
  }
}

/// A connected client/server pair over loopback on an ephemeral port.
std::pair<TcpTransport, TcpTransport> tcp_pair(const char* host, TcpOptions server_options = {},
                                               TcpOptions client_options = {}) {
  TcpListener listener = TcpListener::bind(host, 0, server_options);
  REQUIRE(listener.port() != 0);
  TcpTransport client = TcpTransport::connect(host, listener.port(), deadline_after(5s), client_options);
  std::optional<TcpTransport> server = listener.accept(deadline_after(5s));
  REQUIRE(server.has_value());
  return {std::move(client), std::move(*server)};
}

bool ipv6_loopback_available() {
  try {
    (void)TcpListener::bind("::1", 0);
    return true;
  } catch (const edgesplit::error&) {
    return false;
  }
}

/// Two ends of an in-process link on one virtual clock, each shaping its own outgoing direction.
struct VirtualLink {
  VirtualClock clock;
  SimulatedLink<InProcTransport> up, down;
  explicit VirtualLink(const LinkProfile& profile, std::uint64_t seed = 1, SimulatedLinkOptions options = {},
                       std::pair<InProcTransport, InProcTransport> ends = InProcTransport::make_pair())
      : up(std::move(ends.first), profile, seed, clock, options),
        down(std::move(ends.second), profile, seed + 1, clock, options) {}
};

LinkProfile mbps(double m, Clock::duration latency = 0ms) {
  LinkProfile p;
  p.name = "test";
  p.bandwidth_bps = m * 1e6;
  p.latency = latency;
  return p;
}

std::int64_t ns(Clock::duration d) { return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count(); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// The conformance suite over every transport of this file: one pair factory per transport.

namespace {

/// InProcOptions for a pair: one cap for both ends; a queue of 2 messages when sends must block.
InProcOptions inproc_options(std::size_t cap, bool bounded) {
  InProcOptions o;
  o.max_message_bytes = cap;
  if (bounded) o.max_queued_messages = 2;
  return o;
}

/// The inner cap under a link whose messages may have `cap` bytes: each carries a timing trailer.
std::size_t link_inner_cap(std::size_t cap) { return cap + SimulatedLink<InProcTransport>::trailer_bytes; }

/// A fast link on real time, so that the suite stays quick: 4 Gbit/s, 200 +- 100 us, in order.
LinkProfile fast_link() {
  LinkProfile p = mbps(4000, 200us);
  p.jitter = 100us;
  return p;
}

/// An LTE uplink with jitter (kept in order), for virtual time.
LinkProfile lte_with_jitter() {
  LinkProfile p = LinkProfile::lte();
  p.jitter = 5ms;
  return p;
}

struct InProc {
  static constexpr const char* name = "in-process";
  static constexpr conf::Traits traits{.caps_per_end = false};
  static bool available() { return true; }
  explicit InProc(const conf::PairOptions& o) : InProc(InProcTransport::make_pair(inproc_options(o.a_max, o.bounded))) {}
  const Clock& clock() const { return SteadyClock::instance(); }
  InProcTransport a, b;

 private:
  explicit InProc(std::pair<InProcTransport, InProcTransport> ends) : a(std::move(ends.first)), b(std::move(ends.second)) {}
};

struct SimulatedSteady {
  static constexpr const char* name = "simulated link over in-process, steady clock";
  static constexpr conf::Traits traits{.caps_per_end = false};
  static bool available() { return true; }
  explicit SimulatedSteady(const conf::PairOptions& o)
      : SimulatedSteady(InProcTransport::make_pair(inproc_options(link_inner_cap(o.a_max), o.bounded))) {}
  const Clock& clock() const { return SteadyClock::instance(); }
  SimulatedLink<InProcTransport> a, b;

 private:
  explicit SimulatedSteady(std::pair<InProcTransport, InProcTransport> ends)
      : a(std::move(ends.first), fast_link(), 1), b(std::move(ends.second), fast_link(), 2) {}
};

struct SimulatedVirtual {
  static constexpr const char* name = "simulated link over in-process, virtual clock";
  static constexpr conf::Traits traits{.caps_per_end = false};
  static bool available() { return true; }
  // Driven from one thread, a receive with nothing in flight moves the clock to its deadline at
  // once; with a peer in another thread it first waits (in real time) for the peer to send.
  explicit SimulatedVirtual(const conf::PairOptions& o)
      : SimulatedVirtual(InProcTransport::make_pair(inproc_options(link_inner_cap(o.a_max), o.bounded)),
                         SimulatedLinkOptions{o.threads ? Clock::duration(10s) : Clock::duration::zero()}) {}
  const Clock& clock() const { return virtual_clock; }
  VirtualClock virtual_clock;  // before the links, which read it
  SimulatedLink<InProcTransport> a, b;

 private:
  SimulatedVirtual(std::pair<InProcTransport, InProcTransport> ends, SimulatedLinkOptions lo)
      : a(std::move(ends.first), lte_with_jitter(), 7, virtual_clock, lo),
        b(std::move(ends.second), lte_with_jitter(), 8, virtual_clock, lo) {}
};

/// A raw writer on one end of a TCP connection and a receiver on the other (a conformance Stall).
struct TcpStall {
  explicit TcpStall(const char* host) : ends(tcp_pair(host)) {}
  TcpTransport& receiver() { return ends.second; }
  static Bytes frame(std::span<const std::byte> payload) { return conf::framed(payload); }
  void write(std::span<const std::byte> bytes) { write_raw(ends.first.native_handle(), bytes); }
  bool arrived() {
    pollfd p{ends.second.native_handle(), POLLIN, 0};
    return ::poll(&p, 1, 10'000) == 1;
  }
  void end() { ends.first.close(); }
  bool mid_message() { return ends.second.mid_message(); }
  std::pair<TcpTransport, TcpTransport> ends;  // first: the raw writer's
};

/// TCP over `Host`: the client is end a, the accepted connection end b, each with its own cap.
template <const char* Host>
struct TcpOn {
  static constexpr conf::Traits traits{};
  static bool available() { return Host[0] != ':' || ipv6_loopback_available(); }
  explicit TcpOn(const conf::PairOptions& o) : TcpOn(tcp_pair(Host, caps(o.b_max), caps(o.a_max))) {}
  const Clock& clock() const { return SteadyClock::instance(); }
  TcpTransport a, b;
  struct Stall : TcpStall {
    Stall() : TcpStall(Host) {}
  };
  static TcpOptions caps(std::size_t cap) {
    TcpOptions t;
    t.max_message_bytes = cap;
    return t;
  }

 private:
  explicit TcpOn(std::pair<TcpTransport, TcpTransport> ends) : a(std::move(ends.first)), b(std::move(ends.second)) {}
};

constexpr char ipv4_loopback[] = "127.0.0.1";
constexpr char ipv6_loopback[] = "::1";

struct TcpIPv4 : TcpOn<ipv4_loopback> {
  static constexpr const char* name = "TCP over IPv4";
  using TcpOn::TcpOn;
};
struct TcpIPv6 : TcpOn<ipv6_loopback> {
  static constexpr const char* name = "TCP over IPv6";
  using TcpOn::TcpOn;
};

/// A link's message as it goes on a TCP stream: the payload and the link's trailer (sent and due
/// now, on the steady clock), framed.
Bytes link_frame(std::span<const std::byte> payload) {
  Bytes inner(payload.begin(), payload.end());
  const auto now = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  for (int k = 0; k < 2; ++k) {
    for (int i = 0; i < 8; ++i) inner.push_back(static_cast<std::byte>(now >> (8 * i)));
  }
  return conf::framed(inner);
}

struct SimulatedOverTcp {
  static constexpr const char* name = "simulated link over TCP, steady clock";
  static constexpr conf::Traits traits{};
  static bool available() { return true; }
  explicit SimulatedOverTcp(const conf::PairOptions& o)
      : SimulatedOverTcp(tcp_pair("127.0.0.1", TcpIPv4::caps(link_inner_cap(o.b_max)), TcpIPv4::caps(link_inner_cap(o.a_max)))) {}
  const Clock& clock() const { return SteadyClock::instance(); }
  SimulatedLink<TcpTransport> a, b;
  struct Stall {
    Stall() : ends(tcp_pair("127.0.0.1")), link(std::move(ends.second), fast_link(), 3) {}
    SimulatedLink<TcpTransport>& receiver() { return link; }
    static Bytes frame(std::span<const std::byte> payload) { return link_frame(payload); }
    void write(std::span<const std::byte> bytes) { write_raw(ends.first.native_handle(), bytes); }
    bool arrived() {
      pollfd p{link.inner().native_handle(), POLLIN, 0};
      return ::poll(&p, 1, 10'000) == 1;
    }
    void end() { ends.first.close(); }
    bool mid_message() { return link.inner().mid_message(); }
    std::pair<TcpTransport, TcpTransport> ends;  // first: the raw writer's; second: moved into the link
    SimulatedLink<TcpTransport> link;
  };

 private:
  explicit SimulatedOverTcp(std::pair<TcpTransport, TcpTransport> ends)
      : a(std::move(ends.first), fast_link(), 1), b(std::move(ends.second), fast_link(), 2) {}
};

}  // namespace

EDGESPLIT_TRANSPORT_CONFORMANCE("", InProc, SimulatedSteady, SimulatedVirtual, SimulatedOverTcp, TcpIPv4, TcpIPv6)

// ---------------------------------------------------------------------------------------------
// InProcTransport

TEST_CASE("InProc: is_open() and a moved-from end", "[transport][inproc]") {
  auto ab_ends = InProcTransport::make_pair();
  auto& a = ab_ends.first;
  auto& b = ab_ends.second;
  a.close();
  CHECK_FALSE(a.is_open());
  CHECK(b.is_open());  // the peer closing does not change it
  InProcTransport moved = std::move(b);
  CHECK_FALSE(b.is_open());                                    // NOLINT(bugprone-use-after-move): tested on purpose
  expect_errc(errc::unreachable, [&] { b.send(Bytes(1)); });  // NOLINT(bugprone-use-after-move): tested on purpose
  expect_errc(errc::unreachable, [&] { (void)b.receive(Deadline{}); });  // NOLINT(bugprone-use-after-move)
}

TEST_CASE("InProc: a bounded queue makes send() wait until its deadline", "[transport][inproc]") {
  InProcOptions o;
  o.max_queued_messages = 2;
  auto ab_ends = InProcTransport::make_pair(o);
  auto& a = ab_ends.first;
  auto& b = ab_ends.second;
  a.send(Bytes(1));
  a.send(Bytes(1));
  expect_errc(errc::timeout, [&] { a.send(Bytes(1), deadline_after(10ms)); });
  REQUIRE(b.receive(deadline_after(1s)));
  a.send(Bytes(1), deadline_after(1s));  // room again
}

TEST_CASE("InProc: several threads sending at once lose nothing and keep each one's order", "[transport][inproc]") {
  constexpr int threads = 4, per_thread = 2000;
  auto ab_ends = InProcTransport::make_pair();
  auto& a = ab_ends.first;
  auto& b = ab_ends.second;
  std::vector<std::thread> senders;
  for (int t = 0; t < threads; ++t) {
    senders.emplace_back([&a = a, t] {
      for (std::uint32_t i = 0; i < per_thread; ++i) {
        const Bytes msg = {std::byte(t), std::byte(i & 0xff), std::byte((i >> 8) & 0xff), std::byte(i >> 16)};
        a.send(msg);
      }
    });
  }
  std::vector<std::int64_t> last(threads, -1);
  bool in_order = true, well_formed = true;
  Message m;
  for (int k = 0; k < threads * per_thread; ++k) {
    if (!b.receive(deadline_after(30s), m) || m.bytes.size() != 4 || std::to_integer<int>(m.bytes[0]) >= threads) {
      well_formed = false;
      break;
    }
    const int t = std::to_integer<int>(m.bytes[0]);
    const std::int64_t i = std::to_integer<int>(m.bytes[1]) | std::to_integer<int>(m.bytes[2]) << 8 |
                           std::to_integer<int>(m.bytes[3]) << 16;
    if (i != last[t] + 1) in_order = false;
    last[t] = i;
  }
  for (auto& s : senders) s.join();
  CHECK(well_formed);
  CHECK(in_order);
  for (int t = 0; t < threads; ++t) CHECK(last[t] == per_thread - 1);
  CHECK_FALSE(b.receive(Deadline{}).has_value());
}

// ---------------------------------------------------------------------------------------------
// TcpTransport and TcpListener

TEST_CASE("TCP: peer addresses, deadlines on accept, refused connections, bad arguments", "[transport][tcp]") {
  {
    auto ends = tcp_pair("127.0.0.1");
    CHECK(ends.first.peer_address().rfind("127.0.0.1:", 0) == 0);
    CHECK_FALSE(ends.second.mid_message());
  }
  if (ipv6_loopback_available()) {
    auto ends = tcp_pair("::1");
    CHECK(ends.first.peer_address().rfind("[::1]:", 0) == 0);
  } else {
    WARN("IPv6 loopback unavailable: the peer address over ::1 is not checked");
  }

  TcpListener listener = TcpListener::bind("127.0.0.1", 0);
  CHECK_FALSE(listener.accept(deadline_after(20ms)).has_value());
  listener.close();
  expect_errc(errc::unreachable, [&] { (void)listener.accept(deadline_after(20ms)); });

  // A port that is bound but not listening refuses connections, and stays ours meanwhile (a
  // released port could be taken by a process running in parallel).
  const int bound = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(bound >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  REQUIRE(::bind(bound, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::getsockname(bound, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  expect_errc(errc::unreachable, [&] { (void)TcpTransport::connect("127.0.0.1", ntohs(addr.sin_port), deadline_after(2s)); });
  ::close(bound);

  expect_errc(errc::invalid_argument, [] { (void)TcpTransport::connect("", 1, deadline_after(1s)); });
  if constexpr (sizeof(std::size_t) > 4) {  // a cap the 32-bit length prefix cannot express
    TcpOptions too_big;
    too_big.max_message_bytes = static_cast<std::size_t>(std::uint64_t{1} << 33);
    expect_errc(errc::invalid_argument, [&] { (void)TcpListener::bind("127.0.0.1", 0, too_big); });
  }
}

TEST_CASE("TCP: connect honours its deadline", "[transport][tcp]") {
  // A listener that never accepts, with the smallest queue: once the queue is full, Linux drops
  // further SYNs (tcp_abort_on_overflow = 0, the default), so a connect can only time out. The
  // first one or two may still fit in the queue.
  TcpListener listener = TcpListener::bind("127.0.0.1", 0, {}, 0);
  std::vector<TcpTransport> queued;
  bool timed_out = false;
  for (int i = 0; i < 4 && !timed_out; ++i) {
    try {
      queued.push_back(TcpTransport::connect("127.0.0.1", listener.port(), deadline_after(100ms)));
    } catch (const edgesplit::error& e) {
      INFO(e.what());
      CHECK(e.code() == errc::timeout);
      timed_out = true;
    }
  }
  CHECK(timed_out);
  CHECK(queued.size() <= 2);
}

TEST_CASE("TCP: writing to a closed peer fails with unreachable, without SIGPIPE", "[transport][tcp]") {
  auto cs_ends = tcp_pair("127.0.0.1");
  auto& c = cs_ends.first;
  auto& s = cs_ends.second;
  s.close();
  // The first writes may still be buffered; the peer's reset then makes one fail (EPIPE or
  // ECONNRESET). Without MSG_NOSIGNAL the process would die here.
  bool failed = false;
  for (int i = 0; i < 1000 && !failed; ++i) {
    try {
      c.send(Bytes(1024));
      std::this_thread::sleep_for(1ms);
    } catch (const edgesplit::error& e) {
      CHECK(e.code() == errc::unreachable);
      failed = true;
    }
  }
  CHECK(failed);
}

TEST_CASE("TCP: messages of changing sizes arrive intact whatever the reads", "[transport][tcp]") {
  // After a large message the receiver reads the next one straight into the message, guessing
  // it is as large; a smaller one followed by more data must hand the excess to the next
  // messages. Sending everything first (with a big receive buffer) makes the excess large.
  auto ends = tcp_pair("127.0.0.1");
  TcpTransport& c = ends.first;
  TcpTransport& s = ends.second;
  const int big = 8 << 20;
  ::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  std::vector<Bytes> messages;
  std::uint64_t seed = 100;
  for (const std::size_t n : {std::size_t{1} << 20, std::size_t{10}, std::size_t{1} << 20, std::size_t{0},
                              std::size_t{70'000}, std::size_t{3}, std::size_t{20'000}, std::size_t{20'000},
                              std::size_t{5}, std::size_t{100'000}, std::size_t{16'384}, std::size_t{16'383}}) {
    messages.push_back(random_bytes(n, seed++));
  }
  std::exception_ptr sender_error;
  std::thread sender([&] {
    try {
      for (const Bytes& m : messages) c.send(m, deadline_after(30s));
    } catch (...) {
      sender_error = std::current_exception();
    }
  });
  Message m;
  std::vector<Bytes> got;
  for (std::size_t i = 0; i < messages.size(); ++i) {
    if (i == 1) std::this_thread::sleep_for(50ms);  // let the rest pile up behind the small one
    if (!s.receive(deadline_after(30s), m)) break;
    got.push_back(m.bytes);
  }
  sender.join();
  if (sender_error) std::rethrow_exception(sender_error);
  CHECK(got == messages);
}

TEST_CASE("TCP: a send that cannot finish by its deadline is a timeout and closes the stream", "[transport][tcp]") {
  auto cs_ends = tcp_pair("127.0.0.1");
  auto& c = cs_ends.first;
  auto& s = cs_ends.second;
  // Small kernel buffers on both sides and a peer that never reads: a 4 MiB message cannot fit.
  const int small = 64 * 1024;
  REQUIRE(::setsockopt(c.native_handle(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
  REQUIRE(::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
  const Bytes big(4 << 20);
  expect_errc(errc::timeout, [&] { c.send(big, deadline_after(50ms)); });
  CHECK_FALSE(c.is_open());  // half a frame went out: the stream cannot be framed any more
  expect_errc(errc::unreachable, [&] { c.send(Bytes(1), deadline_after(1s)); });
}

namespace {
std::atomic<int> g_signals{0};
extern "C" void count_signal(int) { g_signals.fetch_add(1); }
}  // namespace

TEST_CASE("TCP: signals interrupting a blocked receive (EINTR) are absorbed", "[transport][tcp]") {
  struct sigaction sa {};
  struct sigaction old {};
  sa.sa_handler = count_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: blocking calls return EINTR
  REQUIRE(::sigaction(SIGUSR1, &sa, &old) == 0);
  for (const bool with_deadline : {true, false}) {
    INFO("with deadline: " << with_deadline);
    auto cs_ends = tcp_pair("127.0.0.1");
    auto& c = cs_ends.first;
    auto& s = cs_ends.second;
    std::atomic<bool> got{false}, started{false};
    std::thread t([&s = s, &got, &started, with_deadline] {
      started = true;
      try {
        got = s.receive(with_deadline ? deadline_after(10s) : no_deadline).has_value();
      } catch (...) {
      }
    });
    while (!started) std::this_thread::yield();
    const int before = g_signals.load();
    for (int i = 0; i < 5; ++i) {
      std::this_thread::sleep_for(2ms);
      ::pthread_kill(t.native_handle(), SIGUSR1);
    }
    // Pending signals of one kind coalesce, so at least one handler run is all that is certain
    // (bounded, so that a lost signal cannot hang the test).
    const auto give_up = std::chrono::steady_clock::now() + 10s;
    while (g_signals.load() == before && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
    CHECK(g_signals.load() > before);
    c.send(Bytes(5));
    t.join();
    CHECK(got);
  }
  ::sigaction(SIGUSR1, &old, nullptr);
}

// ---------------------------------------------------------------------------------------------
// SimulatedLink on virtual time

TEST_CASE("SimulatedLink: 1 MB at 10 Mbps takes 0.8 s plus latency", "[transport][simlink]") {
  VirtualLink link(mbps(10, 20ms));
  const Clock::time_point t0 = link.clock.now();
  const Bytes mb = random_bytes(1'000'000, 12);
  const std::optional<Clock::time_point> due = link.up.send(mb);
  REQUIRE(due);
  // 1e6 B * 8 bit/B / 1e7 bit/s = 0.8 s of serialization, then 20 ms of propagation. The model
  // is exact to the nanosecond; the requirement is 0.8 s within 2%.
  CHECK(ns(*due - t0) == 820'000'000);
  CHECK(link.clock.now() == t0);  // sending takes no virtual time

  Message m;
  REQUIRE(link.down.receive(t0 + 10s, m));
  CHECK(m.bytes == mb);
  CHECK(m.sent_at == t0);
  CHECK(m.delivered_at == *due);
  CHECK(link.clock.now() == *due);  // the receiver "waited": the virtual clock moved to the delivery
  const double serialization = std::chrono::duration<double>(m.transfer_time() - 20ms).count();
  CHECK(std::abs(serialization - 0.8) <= 0.02 * 0.8);
}

TEST_CASE("SimulatedLink: messages queue behind each other, the token bucket bursts after idle", "[transport][simlink]") {
  // 125 000 B at 1 Mbps = 1 s each.
  VirtualLink link(mbps(1, 5ms));
  const auto t0 = link.clock.now();
  const Bytes m(125'000);
  CHECK(ns(*link.up.send(m) - t0) == 1'005'000'000);
  CHECK(ns(*link.up.send(m) - t0) == 2'005'000'000);  // waited for the first to be serialized
  link.clock.advance_by(10s);
  const auto t1 = link.clock.now();
  CHECK(ns(*link.up.send(m) - t1) == 1'005'000'000);  // idle time buys nothing without a bucket

  LinkProfile p = mbps(1, 5ms);
  p.burst_bytes = 125'000;
  VirtualLink bursty(p);
  bursty.clock.advance_by(10s);  // fills the bucket (125 000 B take 1 s to accumulate)
  const auto t2 = bursty.clock.now();
  CHECK(ns(*bursty.up.send(m) - t2) == 5'000'000);              // the whole message is credit
  CHECK(ns(*bursty.up.send(m) - t2) == 1'005'000'000);          // the bucket is empty now
  bursty.clock.advance_by(10s);
  const auto t3 = bursty.clock.now();
  CHECK(ns(*bursty.up.send(Bytes(250'000)) - t3) == 1'005'000'000);  // half credit, half at line rate
}

TEST_CASE("SimulatedLink: latency and jitter follow their distribution", "[transport][simlink]") {
  LinkProfile p;
  p.name = "jittery";
  p.latency = 50ms;
  p.jitter = 10ms;
  p.keep_order = false;
  VirtualLink link(p, 21);
  constexpr int n = 2000;
  for (int i = 0; i < n; ++i) {
    link.up.send(Bytes(8));
    link.clock.advance_by(100ms);  // farther apart than the jitter range: no queueing, no reordering
  }
  double sum = 0, lo = 1e9, hi = 0;
  Message m;
  for (int i = 0; i < n; ++i) {
    REQUIRE(link.down.receive(link.clock.now(), m));
    const double d = std::chrono::duration<double, std::milli>(m.transfer_time()).count();
    sum += d;
    lo = std::min(lo, d);
    hi = std::max(hi, d);
  }
  // Delay ~ U[40, 60) ms: mean 50, standard deviation 20/sqrt(12) = 5.77 ms, so the mean of 2000
  // has standard error 5.77/sqrt(2000) = 0.129 ms; 5 standard errors = 0.65 ms. The chance that
  // no sample falls within 1 ms of an end is 0.95^2000 < 1e-44.
  CHECK(std::abs(sum / n - 50.0) <= 0.65);
  CHECK(lo >= 40.0);
  CHECK(lo < 41.0);
  CHECK(hi < 60.0);
  CHECK(hi > 59.0);
}

TEST_CASE("SimulatedLink: loss rate within its binomial bounds, survivors arrive in order", "[transport][simlink]") {
  LinkProfile p = mbps(100, 10ms);
  p.loss = 0.1;
  VirtualLink link(p, 33);
  constexpr int n = 4000;
  std::vector<std::uint32_t> expected;
  for (std::uint32_t i = 0; i < n; ++i) {
    const Bytes msg = {std::byte(i & 0xff), std::byte((i >> 8) & 0xff)};
    if (link.up.send(msg)) expected.push_back(i);
    link.clock.advance_by(1ms);
  }
  const LinkStats st = link.up.stats();
  CHECK(st.sent == n);
  CHECK(st.lost == n - expected.size());
  // Lost ~ Binomial(4000, 0.1): mean 400, sd sqrt(4000 * 0.1 * 0.9) = 18.97; 4.5 sd = 85.
  CHECK(st.lost >= 315);
  CHECK(st.lost <= 485);
  std::vector<std::uint32_t> got;
  Message m;
  while (link.down.receive(link.clock.now() + 1s, m)) {
    got.push_back(std::to_integer<std::uint32_t>(m.bytes[0]) | std::to_integer<std::uint32_t>(m.bytes[1]) << 8);
  }
  CHECK(got == expected);
  CHECK(link.down.stats().delivered == expected.size());
}

TEST_CASE("SimulatedLink: reordering holds messages back so later ones overtake", "[transport][simlink]") {
  LinkProfile p;
  p.name = "reordering";
  p.latency = 10ms;
  p.reorder = 0.1;
  p.reorder_delay = 5500us;
  VirtualLink link(p, 45);
  constexpr int n = 2000;
  for (std::uint32_t i = 0; i < n; ++i) {
    link.up.send(Bytes{std::byte(i & 0xff), std::byte(i >> 8)});
    link.clock.advance_by(1ms);
  }
  std::vector<std::uint32_t> got;
  Message m;
  while (link.down.receive(link.clock.now() + 1s, m)) {
    got.push_back(std::to_integer<std::uint32_t>(m.bytes[0]) | std::to_integer<std::uint32_t>(m.bytes[1]) << 8);
  }
  REQUIRE(got.size() == n);  // reordering loses nothing
  std::int64_t max_seen = -1;
  std::uint64_t out_of_order = 0;
  for (const std::uint32_t s : got) {
    if (static_cast<std::int64_t>(s) < max_seen) ++out_of_order;
    max_seen = std::max<std::int64_t>(max_seen, s);
  }
  const std::uint64_t held = link.up.stats().held_back;
  // Held back ~ Binomial(2000, 0.1): mean 200, sd 13.4; 4.5 sd = 60.
  CHECK(held >= 140);
  CHECK(held <= 260);
  // Messages 1 ms apart, 10 ms latency, 5.5 ms hold: a held message arrives after the next five
  // unless all five are held too (p = 1e-5), and one not held is never overtaken (order is kept
  // otherwise). So out-of-order arrivals equal held messages, but for the last few (no
  // successors to overtake them) and those rare runs.
  CHECK(out_of_order <= held);
  CHECK(out_of_order + 3 >= held);
}

TEST_CASE("SimulatedLink: a Mahimahi trace is replayed opportunity by opportunity", "[transport][simlink]") {
  LinkProfile p;
  p.name = "trace";
  // 1500-byte opportunities at 1, 2, 2 and 4 ms; then again at 5, 6, 6, 8; 9, 10, 10, 12; ...
  p.trace = std::make_shared<const DeliveryTrace>(DeliveryTrace::parse("1\n2\n2\n4\n"));
  CHECK(p.trace->period_ms() == 4);
  CHECK(p.trace->mean_bits_per_second() == Approx(4 * 1500 * 8 * 1000 / 4.0));
  VirtualLink link(p);
  const auto t0 = link.clock.now();
  // 4000 B: 1500 at 1 ms, 1500 and 1000 at the two 2 ms opportunities (500 B left in the last).
  CHECK(*link.up.send(Bytes(4000)) - t0 == 2ms);
  // Queued behind it: the 500 B left at 2 ms, then 100 B at 4 ms (1400 B left there).
  CHECK(*link.up.send(Bytes(600)) - t0 == 4ms);
  // Arriving at 4 ms exactly: the 4 ms opportunity is gone (Mahimahi's rule), so the next, 5 ms.
  link.clock.advance_to(t0 + 4ms);
  CHECK(*link.up.send(Bytes(100)) - t0 == 5ms);
  // After idling to 100 ms (pass 25 of the trace starts there): 101 and 102 ms.
  link.clock.advance_to(t0 + 100ms);
  CHECK(*link.up.send(Bytes(3000)) - t0 == 102ms);
  // Mid-millisecond, before 102 ms: the second 102 ms opportunity of this pass is still free.
  link.clock.advance_to(t0 + 100500us);
  CHECK(*link.up.send(Bytes(1)) - t0 == 102ms);

  Message m;
  for (const auto expected : {2ms, 4ms, 5ms, 102ms, 102ms}) {
    REQUIRE(link.down.receive(t0 + 1s, m));
    CHECK(m.delivered_at - t0 == expected);
  }

  // One opportunity per millisecond is 12 Mbps: 1 MB needs ceil(1e6 / 1500) = 667 of them.
  LinkProfile constant;
  constant.name = "12 Mbps trace";
  constant.latency = 20ms;
  constant.trace = std::make_shared<const DeliveryTrace>(DeliveryTrace::parse("1"));
  CHECK(constant.trace->mean_bits_per_second() == Approx(12e6));
  VirtualLink c(constant);
  CHECK(*c.up.send(Bytes(1'000'000)) - c.clock.now() == 667ms + 20ms);
}

TEST_CASE("DeliveryTrace: files load, malformed traces are refused with typed errors", "[transport][simlink]") {
  const DeliveryTrace crlf = DeliveryTrace::parse("0\r\n3\r\n3\r\n7\r\n");
  CHECK(std::vector<std::uint64_t>(crlf.opportunities_ms().begin(), crlf.opportunities_ms().end()) ==
        std::vector<std::uint64_t>{0, 3, 3, 7});
  CHECK(DeliveryTrace::parse("5", 1000).bytes_per_opportunity() == 1000);

  for (const char* bad : {"", "\n", "0", "0\n0\n", "1\n\n2\n", "abc\n", "3\n2\n", "-1\n", "1 2\n", " 1\n",
                          "99999999999999999999999\n", "1099511627777\n", "1.5\n"}) {
    INFO("trace text: '" << bad << "'");
    expect_errc(errc::corrupt_frame, [&] { (void)DeliveryTrace::parse(bad); });
  }
  expect_errc(errc::invalid_argument, [] { (void)DeliveryTrace::parse("1", 0); });

  // A name of this process's own: tests may run in parallel processes.
  const std::string path =
      (std::filesystem::temp_directory_path() / ("edgesplit_trace_" + std::to_string(::getpid()) + ".txt")).string();
  {
    std::ofstream out(path);
    out << "1\n1\n2\n";
  }
  const DeliveryTrace loaded = DeliveryTrace::load(path);
  std::remove(path.c_str());
  CHECK(loaded.opportunities_ms().size() == 3);
  CHECK(loaded.period_ms() == 2);
  expect_errc(errc::io_error, [] { (void)DeliveryTrace::load("/nonexistent/edgesplit/trace"); });
}

TEST_CASE("SimulatedLink: the Neurosurgeon presets and profile validation", "[transport][simlink]") {
  // A 100 kB message on each uplink: 8e5 bits / bandwidth, plus the one-way latency (RTT / 2).
  struct Expect {
    LinkProfile profile;
    double mbps;
    Clock::duration one_way;
  };
  for (const Expect& e : {Expect{LinkProfile::wifi(), 18.88, 10ms}, Expect{LinkProfile::lte(), 5.85, 30ms},
                          Expect{LinkProfile::cellular_3g(), 1.1, 75ms}}) {
    INFO(e.profile.name);
    CHECK(e.profile.bandwidth_bps == e.mbps * 1e6);
    VirtualLink link(e.profile);
    const auto t0 = link.clock.now();
    const double expected_s = 8e5 / (e.mbps * 1e6) + std::chrono::duration<double>(e.one_way).count();
    const double got_s = std::chrono::duration<double>(*link.up.send(Bytes(100'000)) - t0).count();
    CHECK(got_s == Approx(expected_s).margin(1e-9));  // rounded to the nanosecond
  }
  CHECK(LinkProfile::presets().size() == 3);

  const auto refused = [](auto&& tweak) {
    LinkProfile p = mbps(10, 10ms);
    tweak(p);
    expect_errc(errc::invalid_argument, [&] {
      auto ends = InProcTransport::make_pair();
      SimulatedLink<InProcTransport> link(std::move(ends.first), p, 1);
    });
  };
  refused([](LinkProfile& p) { p.bandwidth_bps = -1; });
  refused([](LinkProfile& p) { p.bandwidth_bps = std::nan(""); });
  refused([](LinkProfile& p) { p.bandwidth_bps = std::numeric_limits<double>::infinity(); });
  refused([](LinkProfile& p) { p.bandwidth_bps = 0.5; });
  refused([](LinkProfile& p) { p.latency = -1ms; });
  refused([](LinkProfile& p) { p.jitter = 11ms; });
  refused([](LinkProfile& p) { p.loss = 1.5; });
  refused([](LinkProfile& p) { p.loss = std::nan(""); });
  refused([](LinkProfile& p) { p.reorder = -0.1; });
  refused([](LinkProfile& p) { p.reorder_delay = -1ms; });
}

TEST_CASE("SimulatedLink: a peer that is not a link is refused, a closing peer is reported after its messages",
          "[transport][simlink]") {
  {
    auto rawwrapped_ends = InProcTransport::make_pair();
    auto& raw = rawwrapped_ends.first;
    auto& wrapped = rawwrapped_ends.second;
    SimulatedLink<InProcTransport> link(std::move(wrapped), mbps(10), 1);
    raw.send(Bytes(3));  // shorter than the link trailer
    expect_errc(errc::corrupt_frame, [&] { (void)link.receive(deadline_after(1s)); });
    Bytes backwards(16);  // sent at 1 ns, "delivered" at 0
    backwards[0] = std::byte{1};
    raw.send(backwards);
    expect_errc(errc::corrupt_frame, [&] { (void)link.receive(deadline_after(1s)); });
  }
  {
    VirtualLink link(mbps(10, 20ms));
    const auto due = link.up.send(Bytes(125'000));
    link.up.close();
    Message m;
    REQUIRE(link.down.receive(no_deadline, m));  // still delivered, at its time
    CHECK(m.delivered_at == *due);
    expect_errc(errc::unreachable, [&] { (void)link.down.receive(no_deadline, m); });
    expect_errc(errc::unreachable, [&] { (void)link.up.send(Bytes(1)); });
  }
}

TEST_CASE("Clocks: a virtual clock only moves forward, deadlines saturate", "[transport][clock]") {
  VirtualClock clock;
  CHECK(clock.now() == Clock::time_point{});
  clock.advance_by(5ms);
  clock.advance_to(Clock::time_point{} + 2ms);  // backwards: ignored
  clock.advance_by(-3ms);                      // negative: ignored
  CHECK(clock.now() - Clock::time_point{} == 5ms);
  clock.sleep_until(Clock::time_point{} + 7ms);  // "sleeping" on virtual time is jumping
  CHECK(clock.now() - Clock::time_point{} == 7ms);
  CHECK(deadline_after(Clock::duration::max(), clock) == no_deadline);
  CHECK(deadline_after(-1s, clock) == clock.now());
  clock.advance_by(Clock::duration::max());
  CHECK(clock.now() == Clock::time_point::max());  // saturated, not wrapped
  CHECK(clock.is_virtual());
  CHECK_FALSE(SteadyClock::instance().is_virtual());
}
