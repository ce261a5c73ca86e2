// The transport conformance suite: one check per clause of the Transport contract
// (include/edgesplit/transport/transport.hpp), each a template over a "pair factory", run over
// every transport (the idea of llama.cpp's test-backend-ops: one op, every backend, one test).
//
// A pair factory F is a small struct that makes a connected pair and states its traits:
//
//   static constexpr const char* name;       // for messages: "TCP over IPv6"
//   static constexpr Traits traits;           // where the transport documents a difference
//   static bool available();                  // false: every check WARNs and skips (no ::1 here)
//   explicit F(const PairOptions&);           // a connected pair...
//   <transport> a, b;                         // ...its two ends (a: the connecting one, if any)
//   const Clock& clock() const;               // the clock both ends read deadlines on
//   struct Stall { ... };                     // optional, for byte-stream transports: see below
//
// A transport that moves a byte stream (TCP, TLS) can be caught in the middle of a message; its
// factory then has a Stall: a receiving end of the transport whose peer writes raw stream bytes.
//
//   Stall();                                          // connected
//   <transport>& receiver();
//   Bytes frame(std::span<const std::byte> payload);  // one message as it goes on the stream
//   void write(std::span<const std::byte> bytes);     // raw stream bytes (its length prefixes too)
//   bool arrived();                                   // bytes wait at the receiver (waits <= 10 s)
//   void end();                                       // the writer ends the stream
//   bool mid_message();                               // the receiver holds part of a message
//
// The checks use Catch's macros on the test's own thread only (Catch is not thread-safe): other
// threads report what they saw through their futures. Every wait is bounded; no check asserts how
// long anything took (only that a receive did not return false before its deadline).
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <future>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "alloc_counter.hpp"
#include "edgesplit/core/error.hpp"
#include "edgesplit/core/random.hpp"
#include "edgesplit/transport/transport.hpp"
#include "test_util.hpp"

namespace edgesplit_test::conformance {

using namespace std::chrono_literals;
using edgesplit::Clock;
using edgesplit::Deadline;
using edgesplit::errc;
using edgesplit::Message;
using edgesplit::no_deadline;
using Bytes = std::vector<std::byte>;

/// What a check asks of the pair it makes.
struct PairOptions {
  /// Cap (max_message_bytes) of end a and of end b. A transport with one cap for the pair
  /// (Traits::caps_per_end false) is only asked for equal caps.
  std::size_t a_max = edgesplit::default_max_message_bytes;
  std::size_t b_max = edgesplit::default_max_message_bytes;
  /// The ends will be used from several threads at once. (A SimulatedLink on a virtual clock then
  /// waits in real time for a peer to send, SimulatedLinkOptions::idle_wait; driven from one
  /// thread it does not wait at all.)
  bool threads = false;
  /// send() must block once the peer stops receiving: an in-process queue is bounded (2
  /// messages), a ZeroMQ high-water mark small. Sockets block anyway, when their buffers are full.
  bool bounded = false;
};

/// Where a transport documents a deliberate difference from the plain contract.
struct Traits {
  /// Each end has a cap of its own, so a peer can send a message over the receiver's cap. False:
  /// one cap for the pair (in-process), which the sender's own check applies first.
  bool caps_per_end = true;
  /// A message over the receiver's cap is `too_large` and closes the connection before anything
  /// is allocated. False (ZeroMQ): libzmq refuses it itself (ZMQ_MAXMSGSIZE), drops that
  /// connection and reconnects; receive() never sees the message.
  bool over_cap_closes = true;
  /// The peer of a closed end receives every message sent before close(), then `unreachable`,
  /// and a thread blocked in its receive() wakes with it. False (ZeroMQ): sockets linger 0, so
  /// messages still queued at close() are dropped, and ZeroMQ hides connection loss: the peer
  /// only sees its deadlines pass.
  bool peer_sees_close = true;
  /// A send() blocked because the peer does not receive wakes (`unreachable`) when the peer
  /// closes. False (ZeroMQ): the sender waits for room in its queue until its deadline.
  bool peer_close_wakes_sender = true;
  /// Why steady-state send/receive into a reused Message allocates, where a library below the
  /// transport allocates for every message (nullptr: nothing is allocated, at any size).
  const char* allocates = nullptr;
};

template <class F>
concept HasStall = requires { typename F::Stall; };

/// A simulated link: send() says when the message will be delivered (nullopt: lost).
template <class T>
concept Simulated = requires(T& t, std::span<const std::byte> bytes) {
  { t.send(bytes) } -> std::same_as<std::optional<Clock::time_point>>;
};

// --- Helpers ------------------------------------------------------------------------------------

/// n bytes from a seeded generator: different seeds, different bytes.
inline Bytes random_bytes(std::size_t n, std::uint64_t seed) {
  edgesplit::Rng rng(seed);
  Bytes b(n);
  for (std::size_t i = 0; i < n; i += 8) {
    const std::uint64_t v = rng.next();
    std::memcpy(b.data() + i, &v, std::min<std::size_t>(8, n - i));
  }
  return b;
}

/// A 4-byte little-endian length prefix (the framing of TCP and TLS).
inline Bytes length_prefix(std::uint32_t n) {
  return {std::byte(n & 0xff), std::byte((n >> 8) & 0xff), std::byte((n >> 16) & 0xff), std::byte(n >> 24)};
}

/// A payload behind its length prefix, as TCP and TLS put it on the stream. (Sized once and filled:
/// GCC 12 reports a false -Warray-bounds for inserting behind the prefix.)
inline Bytes framed(std::span<const std::byte> payload) {
  Bytes f(4 + payload.size());
  const Bytes prefix = length_prefix(static_cast<std::uint32_t>(payload.size()));
  std::copy(prefix.begin(), prefix.end(), f.begin());
  std::copy(payload.begin(), payload.end(), f.begin() + 4);
  return f;
}

/// What a call ended with: nullopt when it returned, otherwise the code of the edgesplit::error it
/// threw (anything else propagates).
template <class Fn>
std::optional<errc> outcome(Fn&& f) {
  try {
    f();
    return std::nullopt;
  } catch (const edgesplit::error& e) {
    return e.code();
  }
}

/// The sizes every transport carries: empty, tiny, and either side of the internal boundaries of
/// each (ZeroMQ's 33-byte inline messages and 8 KiB batches, TCP's 4 KiB flat sends, 16 KiB
/// direct reads and 64 KiB staging buffer, TLS's 16 KiB records less the 4-byte prefix, its 64 KiB
/// send chunks), up to a few MiB.
inline std::vector<std::size_t> boundary_sizes() {
  return {0,      1,      2,      3,      4,      5,      32,     33,     34,      100,     4091,
          4092,   4093,   8191,   8192,   8193,   16379,  16380,  16381,  16383,   16384,   16385,
          65531,  65532,  65535,  65536,  65537,  65539,  262144, 1 << 20, (3 << 20) + 7, 0, 2};
}

/// The boundary sizes, each followed by a small message (0..63 bytes) so that several frames
/// often arrive in one read; every message's bytes depend on `seed` and its place.
inline std::vector<Bytes> message_train(std::uint64_t seed) {
  std::vector<Bytes> out;
  edgesplit::Rng rng(seed);
  std::uint64_t k = 0;
  for (const std::size_t n : boundary_sizes()) {
    out.push_back(random_bytes(n, seed * 1000 + k++));
    out.push_back(random_bytes(static_cast<std::size_t>(rng.next() % 64), seed * 1000 + k++));
  }
  return out;
}

/// Skips the check, with a warning, where the pair cannot be made on this machine.
template <class F>
bool skip_unavailable() {
  if (F::available()) return false;
  WARN(F::name << ": not available on this machine, conformance check skipped");
  return true;
}

/// Waits (bounded) for a thread's future; if it does not finish in time, closes both ends to
/// unblock it, so that a failing check ends instead of hanging.
template <class F, class R>
bool finished(F& pair, std::future<R>& f, std::chrono::seconds limit = 10s) {
  if (f.wait_for(limit) == std::future_status::ready) return true;
  pair.a.close();
  pair.b.close();
  return false;
}

/// What a receiving thread saw.
struct Received {
  std::size_t count = 0;            ///< messages received
  std::size_t first_wrong = SIZE_MAX;  ///< index of the first that differed from the one sent
  std::string error;                ///< why it stopped early ("" if it did not)
};

/// Receives `expected.size()` messages on `t`, in turn through receive(deadline, into) and
/// receive(deadline), comparing each with what was sent. No Catch macros: runs on any thread.
template <class T>
Received receive_all(T& t, const std::vector<Bytes>& expected, const Clock& clock) {
  Received r;
  Message m;
  try {
    for (std::size_t i = 0; i < expected.size(); ++i) {
      bool got = false;
      if (i % 3 == 2) {
        std::optional<Message> o = t.receive(edgesplit::deadline_after(30s, clock));
        got = o.has_value();
        if (got) m = std::move(*o);
      } else {
        got = t.receive(edgesplit::deadline_after(30s, clock), m);
      }
      if (!got) {
        r.error = "message " + std::to_string(i) + " did not come within 30 s";
        return r;
      }
      if (m.bytes != expected[i] && r.first_wrong == SIZE_MAX) r.first_wrong = i;
      ++r.count;
    }
  } catch (const std::exception& e) {
    r.error = e.what();
  }
  return r;
}

/// Sends every message on `t`, in turn with the transport's default deadline and with one of
/// 30 s. Returns "" or why it stopped. No Catch macros: runs on any thread.
template <class T>
std::string send_all(T& t, const std::vector<Bytes>& messages, const Clock& clock) {
  try {
    for (std::size_t i = 0; i < messages.size(); ++i) {
      if (i % 2 == 0) {
        t.send(messages[i]);
      } else {
        t.send(messages[i], edgesplit::deadline_after(30s, clock));
      }
    }
  } catch (const std::exception& e) {
    return e.what();
  }
  return {};
}

// --- The checks, one per clause -----------------------------------------------------------------

/// Whole messages, in order, many in a row, both directions at once: each end sends a train of
/// messages (0 B to 3 MiB, either side of every internal boundary) from its own thread while
/// another thread receives on it, so each end has one send and one receive running at once.
template <class F>
void whole_messages_in_order() {
  if (skip_unavailable<F>()) return;
  const std::vector<Bytes> ab = message_train(1), ba = message_train(2);
  PairOptions o;
  o.threads = true;
  F p(o);
  const Clock& clock = p.clock();
  auto send_ab = std::async(std::launch::async, [&] { return send_all(p.a, ab, clock); });
  auto send_ba = std::async(std::launch::async, [&] { return send_all(p.b, ba, clock); });
  auto recv_ab = std::async(std::launch::async, [&] { return receive_all(p.b, ab, clock); });
  auto recv_ba = std::async(std::launch::async, [&] { return receive_all(p.a, ba, clock); });
  const std::chrono::seconds limit = 120s;  // each receive is bounded by 30 s already
  REQUIRE(finished(p, recv_ab, limit));
  REQUIRE(finished(p, recv_ba, limit));
  REQUIRE(finished(p, send_ab, limit));
  REQUIRE(finished(p, send_ba, limit));
  for (auto* r : {&recv_ab, &recv_ba}) {
    const Received got = r->get();
    INFO((r == &recv_ab ? "a to b" : "b to a") << ": " << got.error);
    CHECK(got.error.empty());
    CHECK(got.count == ab.size());
    CHECK(got.first_wrong == SIZE_MAX);
  }
  CHECK(send_ab.get() == "");
  CHECK(send_ba.get() == "");
  // Nothing more than what was sent. (A past deadline only polls: a link on a virtual clock driven
  // from several threads would otherwise first wait in real time for its peer.)
  Message m;
  CHECK_FALSE(p.b.receive(Deadline{}, m));
  CHECK_FALSE(p.a.receive(Deadline{}, m));
}

/// receive() returns false (nullopt) when its deadline passes, not before it; a deadline in the
/// past only polls; the connection goes on afterwards. On a simulated link, a message still in
/// flight at the deadline is not handed out early (on a virtual clock, the clock stops exactly at
/// the deadline).
template <class F>
void receive_deadline() {
  if (skip_unavailable<F>()) return;
  F p(PairOptions{});
  const Clock& clock = p.clock();
  Message m;
  for (auto* end : {&p.b, &p.a}) {
    const Deadline d = edgesplit::deadline_after(20ms, clock);
    CHECK_FALSE(end->receive(d, m));
    CHECK(clock.now() >= d);
    if (clock.is_virtual()) CHECK(clock.now() == d);  // waited until the deadline, in virtual time
    const Deadline d2 = edgesplit::deadline_after(20ms, clock);
    CHECK_FALSE(end->receive(d2).has_value());
    CHECK(clock.now() >= d2);
    const Clock::time_point before = clock.now();
    CHECK_FALSE(end->receive(Deadline{}, m));  // long past: only polls
    CHECK_FALSE(end->receive(clock.now() - 1s).has_value());
    if (clock.is_virtual()) CHECK(clock.now() == before);  // polling does not move the clock
  }
  const Bytes x = random_bytes(1000, 7), y = random_bytes(70'000, 8);
  p.a.send(x);
  REQUIRE(p.b.receive(edgesplit::deadline_after(10s, clock), m));
  CHECK(m.bytes == x);
  p.b.send(y);
  std::optional<Message> back = p.a.receive(edgesplit::deadline_after(10s, clock));
  REQUIRE(back.has_value());
  CHECK(back->bytes == y);

  if constexpr (Simulated<decltype(p.a)>) {
    // A simulated link says when a message will be delivered: a deadline before that passes first.
    const std::optional<Clock::time_point> due = p.a.send(y);
    REQUIRE(due.has_value());
    if (clock.is_virtual()) {
      REQUIRE(*due > clock.now());
      const Deadline early = *due - 1ns;
      CHECK_FALSE(p.b.receive(early, m));
      CHECK(clock.now() == early);
    }
    REQUIRE(p.b.receive(edgesplit::deadline_after(10s, clock), m));
    CHECK(m.bytes == y);
    CHECK(m.delivered_at == *due);
    CHECK(clock.now() >= *due);
  }
}

/// A receive whose deadline passes in the middle of a message returns false and keeps what it
/// has: the next call resumes, into whichever Message it is given. Byte-stream transports only:
/// the others hand messages over whole, so there is no middle to be caught in.
template <class F>
void deadline_mid_message() {
  if (skip_unavailable<F>()) return;
  if constexpr (!HasStall<F>) {
    SUCCEED(F::name << " hands messages over whole: a receiver cannot be caught mid-message");
  } else {
    typename F::Stall st;
    auto& r = st.receiver();
    const Bytes payload = random_bytes(100'000, 11);
    const Bytes frame = st.frame(payload);
    Message m, other;
    // Each piece is waited for at the receiver first, so that the deadline surely passes with the
    // piece in hand. A 20 ms deadline polls; a 60 ms one (TCP) takes the socket's receive timeout.
    st.write(std::span(frame).first(2));  // half the length prefix
    REQUIRE(st.arrived());
    CHECK_FALSE(r.receive(edgesplit::deadline_after(20ms), m));
    CHECK(st.mid_message());
    st.write(std::span(frame).subspan(2, 30'000));  // the rest of the prefix, part of the payload
    REQUIRE(st.arrived());
    CHECK_FALSE(r.receive(edgesplit::deadline_after(20ms), other));
    CHECK(st.mid_message());
    st.write(std::span(frame).subspan(30'002, 40'000));
    REQUIRE(st.arrived());
    CHECK_FALSE(r.receive(edgesplit::deadline_after(60ms)).has_value());
    CHECK(st.mid_message());
    st.write(std::span(frame).subspan(70'002));
    REQUIRE(r.receive(edgesplit::deadline_after(10s), m));
    CHECK(m.bytes == payload);
    CHECK_FALSE(st.mid_message());
    const Bytes next = random_bytes(3, 12);
    st.write(st.frame(next));
    REQUIRE(r.receive(edgesplit::deadline_after(10s), other));
    CHECK(other.bytes == next);
  }
}

/// The contract's corrupt_frame: a byte stream that ends inside a message (inside its length
/// prefix, or inside its payload) is `corrupt_frame`, after the whole messages before it.
template <class F>
void stream_ends_mid_message() {
  if (skip_unavailable<F>()) return;
  if constexpr (!HasStall<F>) {
    SUCCEED(F::name << " hands messages over whole: its stream cannot end inside one");
  } else {
    for (const std::size_t cut : {std::size_t{2}, std::size_t{500}}) {
      INFO("the stream ends after " << cut << " bytes of the second message");
      typename F::Stall st;
      const Bytes first = random_bytes(1000, 13);
      const Bytes second = st.frame(random_bytes(1000, 14));
      st.write(st.frame(first));
      st.write(std::span(second).first(cut));
      st.end();
      Message m;
      REQUIRE(st.receiver().receive(edgesplit::deadline_after(10s), m));
      CHECK(m.bytes == first);
      expect_errc(errc::corrupt_frame, [&] { (void)st.receiver().receive(edgesplit::deadline_after(10s), m); });
      expect_errc(errc::unreachable, [&] { (void)st.receiver().receive(edgesplit::deadline_after(10s), m); });
    }
  }
}

/// send() over the sender's cap throws `too_large` and sends nothing (the peer receives the next
/// message, and only it); the connection stays usable. Exactly the cap is fine.
template <class F>
void send_over_cap() {
  if (skip_unavailable<F>()) return;
  constexpr std::size_t cap = 1000;
  PairOptions o;
  o.a_max = o.b_max = cap;
  F p(o);
  const Clock& clock = p.clock();
  const Bytes over = random_bytes(cap + 1, 21), fits = random_bytes(cap, 22);
  expect_errc(errc::too_large, [&] { p.a.send(over); });
  expect_errc(errc::too_large, [&] { p.a.send(over, edgesplit::deadline_after(10s, clock)); });
  expect_errc(errc::too_large, [&] { p.b.send(Bytes(1 << 20)); });
  p.a.send(fits);
  Message m;
  REQUIRE(p.b.receive(edgesplit::deadline_after(10s, clock), m));
  CHECK(m.bytes == fits);
  CHECK_FALSE(p.b.receive(edgesplit::deadline_after(20ms, clock), m));  // and nothing else
  p.b.send(fits);
  REQUIRE(p.a.receive(edgesplit::deadline_after(10s, clock), m));
  CHECK(m.bytes == fits);
}

/// A peer sending (or announcing) a message over the receiver's cap: `too_large` at the receiver,
/// and a stream is closed before anything is allocated for it (both ends then `unreachable`).
template <class F>
void peer_over_cap() {
  if (skip_unavailable<F>()) return;
  if constexpr (!F::traits.caps_per_end) {
    SUCCEED(F::name << " has one cap for both ends: the sender's check refuses such a message first");
  } else {
    constexpr std::size_t cap = 1000;
    PairOptions o;
    o.b_max = cap;
    F p(o);
    const Clock& clock = p.clock();
    const Bytes over = random_bytes(cap + 1, 31), fits = random_bytes(cap, 32);
    p.a.send(fits);  // exactly the cap is fine
    Message m;
    REQUIRE(p.b.receive(edgesplit::deadline_after(10s, clock), m));
    CHECK(m.bytes == fits);
    p.a.send(over);
    if constexpr (F::traits.over_cap_closes) {
      Message fresh;
      expect_errc(errc::too_large, [&] { (void)p.b.receive(edgesplit::deadline_after(10s, clock), fresh); });
      CHECK(fresh.bytes.capacity() == 0);  // refused on its length, before any allocation
      expect_errc(errc::unreachable, [&] { (void)p.b.receive(edgesplit::deadline_after(10s, clock), m); });
      expect_errc(errc::unreachable, [&] { p.b.send(fits); });
      expect_errc(errc::unreachable, [&] { (void)p.a.receive(edgesplit::deadline_after(10s, clock), m); });
    } else {
      // Dropped below the transport: never delivered, never an error; later messages still come.
      CHECK_FALSE(p.b.receive(edgesplit::deadline_after(200ms, clock), m));
      p.a.send(fits);
      REQUIRE(p.b.receive(edgesplit::deadline_after(10s, clock), m));
      CHECK(m.bytes == fits);
    }
    if constexpr (HasStall<F>) {
      // A length prefix claiming 4 GiB - 1 against the default cap: refused before allocating.
      typename F::Stall st;
      st.write(length_prefix(0xffffffffu));
      Message fresh;
      expect_errc(errc::too_large, [&] { (void)st.receiver().receive(edgesplit::deadline_after(10s), fresh); });
      CHECK(fresh.bytes.capacity() == 0);
      expect_errc(errc::unreachable, [&] { (void)st.receiver().receive(edgesplit::deadline_after(10s), fresh); });
    }
  }
}

/// close(): idempotent; later calls on this end throw `unreachable`; the peer receives what was
/// sent before the close, whole and in order, then `unreachable` (its sends too).
template <class F>
void close_this_end() {
  if (skip_unavailable<F>()) return;
  F p(PairOptions{});
  const Clock& clock = p.clock();
  const std::vector<Bytes> sent = {random_bytes(1000, 41), random_bytes(100'000, 42), Bytes{}, random_bytes(5, 43)};
  for (const Bytes& b : sent) p.a.send(b);
  p.a.close();
  p.a.close();  // idempotent
  Message m;
  expect_errc(errc::unreachable, [&] { p.a.send(sent[0]); });
  expect_errc(errc::unreachable, [&] { p.a.send(sent[0], edgesplit::deadline_after(1s, clock)); });
  expect_errc(errc::unreachable, [&] { (void)p.a.receive(edgesplit::deadline_after(1s, clock), m); });
  expect_errc(errc::unreachable, [&] { (void)p.a.receive(edgesplit::deadline_after(1s, clock)); });
  if constexpr (F::traits.peer_sees_close) {
    for (const Bytes& b : sent) {
      REQUIRE(p.b.receive(edgesplit::deadline_after(10s, clock), m));
      CHECK(m.bytes == b);
    }
    expect_errc(errc::unreachable, [&] { (void)p.b.receive(edgesplit::deadline_after(10s, clock), m); });
    expect_errc(errc::unreachable, [&] { (void)p.b.receive(edgesplit::deadline_after(10s, clock)); });
    expect_errc(errc::unreachable, [&] { p.b.send(sent[0]); });
  } else {
    // What arrives is what was sent, in order, but maybe not all of it; then only deadlines.
    std::size_t i = 0;
    while (i < sent.size() && p.b.receive(edgesplit::deadline_after(200ms, clock), m)) {
      CHECK(m.bytes == sent[i]);
      ++i;
    }
    CHECK_FALSE(p.b.receive(edgesplit::deadline_after(20ms, clock), m));
  }
  p.b.close();
  expect_errc(errc::unreachable, [&] { (void)p.b.receive(edgesplit::deadline_after(1s, clock), m); });
}

/// close() from another thread wakes a receive blocked on this end (without deadline, or with a
/// far one) and, where the transport has the peer's close in view, one blocked on the peer; and a
/// send blocked because the peer does not read. Each ends with `unreachable`.
template <class F>
void close_wakes_blocked_calls() {
  if (skip_unavailable<F>()) return;
  for (const bool far_deadline : {false, true}) {
    for (const bool peer_closes : {false, true}) {
      if (peer_closes && !F::traits.peer_sees_close) continue;  // the peer never learns of it
      INFO("receive " << (far_deadline ? "with a far deadline" : "without deadline") << ", closed by "
                      << (peer_closes ? "the peer" : "another thread on the same end"));
      PairOptions o;
      o.threads = true;
      F p(o);
      const Clock& clock = p.clock();
      std::atomic<bool> started{false};
      auto blocked = std::async(std::launch::async, [&] {
        started = true;
        return outcome([&] {
          Message m;
          (void)p.b.receive(far_deadline ? edgesplit::deadline_after(60s, clock) : no_deadline, m);
        });
      });
      while (!started) std::this_thread::yield();
      std::this_thread::sleep_for(20ms);  // most likely blocked by now; either order must end the same
      (peer_closes ? p.a : p.b).close();
      REQUIRE(finished(p, blocked));
      CHECK(blocked.get() == errc::unreachable);
    }
  }
  for (const bool peer_closes : {false, true}) {
    if (peer_closes && !F::traits.peer_close_wakes_sender) continue;
    INFO("send blocked by a peer that does not receive, closed by " << (peer_closes ? "the peer" : "another thread on the same end"));
    PairOptions o;
    o.threads = true;
    o.bounded = true;
    F p(o);
    std::atomic<int> sent{0};
    auto blocked = std::async(std::launch::async, [&] {
      return outcome([&] {
        const Bytes chunk(64 * 1024);
        for (int i = 0; i < 4000; ++i) {  // 256 MiB at most: every transport blocks long before
          p.a.send(chunk, no_deadline);
          ++sent;
        }
      });
    });
    // Wait until the sender has started and stops making progress (bounded), then close.
    for (int i = 0; i < 10'000 && sent.load() == 0 && blocked.wait_for(0s) != std::future_status::ready; ++i) {
      std::this_thread::sleep_for(1ms);
    }
    int last = -1;
    for (int i = 0; i < 1000 && blocked.wait_for(0s) != std::future_status::ready; ++i) {
      const int now = sent.load();
      if (now == last) break;
      last = now;
      std::this_thread::sleep_for(30ms);
    }
    CHECK(blocked.wait_for(0s) != std::future_status::ready);  // it did block
    (peer_closes ? p.b : p.a).close();
    REQUIRE(finished(p, blocked));
    CHECK(blocked.get() == errc::unreachable);
  }
}

/// receive(deadline) -> optional and receive(deadline, into) agree: the same bytes, whatever
/// `into` held before (its old bytes never leak into the message), the same timing fields, nullopt
/// where the other returns false, the same errors.
template <class F>
void receive_overloads_agree() {
  if (skip_unavailable<F>()) return;
  F p(PairOptions{});
  const Clock& clock = p.clock();
  std::vector<Bytes> sent;
  for (const std::size_t n : {std::size_t{5}, std::size_t{0}, std::size_t{70'000}, std::size_t{1}, std::size_t{1000}}) {
    sent.push_back(random_bytes(n, 50 + n));
  }
  Message into;
  into.bytes = random_bytes(1 << 20, 59);  // stale contents, larger than any message here
  for (const Bytes& b : sent) {
    p.a.send(b);
    p.a.send(b);
    into.sent_at = into.delivered_at = Clock::time_point(1h);  // stale timing
    REQUIRE(p.b.receive(edgesplit::deadline_after(10s, clock), into));
    std::optional<Message> fresh = p.b.receive(edgesplit::deadline_after(10s, clock));
    REQUIRE(fresh.has_value());
    CHECK(into.bytes == b);
    CHECK(fresh->bytes == b);
    for (const Message* m : {&into, &fresh.value()}) {
      if constexpr (Simulated<decltype(p.a)>) {
        CHECK(m->sent_at <= m->delivered_at);  // a simulated link stamps both
        CHECK(m->delivered_at <= clock.now());
      } else {
        CHECK(m->sent_at == Clock::time_point{});  // others leave both at the epoch
        CHECK(m->delivered_at == Clock::time_point{});
      }
    }
  }
  CHECK_FALSE(p.b.receive(edgesplit::deadline_after(10ms, clock), into));
  CHECK_FALSE(p.b.receive(edgesplit::deadline_after(10ms, clock)).has_value());
  p.b.close();
  const auto by_into = outcome([&] { (void)p.b.receive(edgesplit::deadline_after(1s, clock), into); });
  const auto by_value = outcome([&] { (void)p.b.receive(edgesplit::deadline_after(1s, clock)); });
  CHECK(by_into == errc::unreachable);
  CHECK(by_value == by_into);
}

/// Steady state allocates nothing: round trips (a sends, b receives into a reused Message and
/// sends it back, a receives into another) of messages from 0 B to 1 MiB, with and without
/// deadlines, counted over the whole process (both ends and every thread). Where a library below
/// the transport allocates for every message (Traits::allocates), the round trips still run and
/// their counts are reported, with the reason.
template <class F>
void steady_state_allocates_nothing() {
  if (skip_unavailable<F>()) return;
  if (allocations() < 0) {
    WARN("allocation counting is unavailable in this build (sanitizers bring their own allocator): not checked");
    return;
  }
  std::vector<Bytes> payloads;
  for (const std::size_t n : {std::size_t{0}, std::size_t{33}, std::size_t{100}, std::size_t{1024},
                              std::size_t{16'385}, std::size_t{65'539}, std::size_t{1} << 20}) {
    payloads.push_back(random_bytes(n, 60 + n));
  }
  constexpr int warm_up = 4, counted = 20;
  PairOptions o;
  o.threads = true;
  F p(o);
  const Clock& clock = p.clock();
  const int total = static_cast<int>(payloads.size()) * (warm_up + counted);
  // The echo runs on its own thread, so that a large message never waits for a full socket buffer
  // on both sides at once; it is created before anything is counted.
  auto echo = std::async(std::launch::async, [&] {
    return outcome([&] {
      Message m;
      for (int i = 0; i < total; ++i) {
        if (!p.b.receive(i % 2 == 0 ? no_deadline : edgesplit::deadline_after(30s, clock), m)) {
          throw edgesplit::error(errc::timeout, "echo: nothing came within 30 s");
        }
        p.b.send(m.view());
      }
    });
  });
  Message back;
  bool intact = true;
  std::ostringstream counts;  // (not string concatenation: GCC 12 reports a false -Wrestrict for it)
  for (const Bytes& payload : payloads) {
    INFO(F::name << ", messages of " << payload.size() << " bytes");
    const auto round_trip = [&](int i) {
      p.a.send(payload);
      return p.a.receive(i % 2 == 0 ? edgesplit::deadline_after(30s, clock) : no_deadline, back) && back.bytes == payload;
    };
    for (int i = 0; i < warm_up; ++i) intact = round_trip(i) && intact;  // buffers reach their sizes
    const long long before = allocations();
    for (int i = 0; i < counted; ++i) intact = round_trip(i) && intact;
    const long long used = allocations() - before;
    if (F::traits.allocates == nullptr) CHECK(used == 0);
    counts << " " << payload.size() << " B: " << used << ";";
    if (!intact) break;
  }
  CHECK(intact);
  REQUIRE(finished(p, echo, 60s));
  CHECK(echo.get() == std::nullopt);
  if (F::traits.allocates != nullptr) {
    INFO(F::name << " allocates: " << F::traits.allocates);
    INFO("allocations in " << counted << " round trips," << counts.str());
    SUCCEED("a documented exception");
  }
}

}  // namespace edgesplit_test::conformance

/// The conformance cases for a list of pair factories, tagged [transport][conformance] plus
/// `extra_tags` (e.g. "[zmq]"). One TEMPLATE_TEST_CASE per clause, so a failure names both.
#define EDGESPLIT_TRANSPORT_CONFORMANCE(extra_tags, ...)                                                           \
  TEMPLATE_TEST_CASE("Conformance: whole messages, in order, many in a row, both directions at once",             \
                     "[transport][conformance]" extra_tags, __VA_ARGS__) {                                        \
    edgesplit_test::conformance::whole_messages_in_order<TestType>();                                              \
  }                                                                                                                \
  TEMPLATE_TEST_CASE("Conformance: receive returns false at its deadline, not before",                            \
                     "[transport][conformance]" extra_tags, __VA_ARGS__) {                                        \
    edgesplit_test::conformance::receive_deadline<TestType>();                                                     \
  }                                                                                                                \
  TEMPLATE_TEST_CASE("Conformance: a deadline mid-message keeps the half-received message",                       \
                     "[transport][conformance]" extra_tags, __VA_ARGS__) {                                        \
    edgesplit_test::conformance::deadline_mid_message<TestType>();                                                 \
  }                                                                                                                \
  TEMPLATE_TEST_CASE("Conformance: a stream ending inside a message is corrupt_frame",                            \
                     "[transport][conformance]" extra_tags, __VA_ARGS__) {                                        \
    edgesplit_test::conformance::stream_ends_mid_message<TestType>();                                              \
  }                                                                                                                \
  TEMPLATE_TEST_CASE("Conformance: send over the cap is too_large, sends nothing, the connection goes on",        \
                     "[transport][conformance]" extra_tags, __VA_ARGS__) {                                        \
    edgesplit_test::conformance::send_over_cap<TestType>();                                                        \
  }                                                                                                                \
  TEMPLATE_TEST_CASE("Conformance: a peer over the receiver's cap is too_large, refused before allocating",       \
                     "[transport][conformance]" extra_tags, __VA_ARGS__) {                                        \
    edgesplit_test::conformance::peer_over_cap<TestType>();                                                        \
  }                                                                                                                \
  TEMPLATE_TEST_CASE("Conformance: after close() calls are unreachable, the peer gets what was sent, then unreachable", \
                     "[transport][conformance]" extra_tags, __VA_ARGS__) {                                        \
    edgesplit_test::conformance::close_this_end<TestType>();                                                       \
  }                                                                                                                \
  TEMPLATE_TEST_CASE("Conformance: close() from another thread wakes a blocked receive and a blocked send",       \
                     "[transport][conformance]" extra_tags, __VA_ARGS__) {                                        \
    edgesplit_test::conformance::close_wakes_blocked_calls<TestType>();                                            \
  }                                                                                                                \
  TEMPLATE_TEST_CASE("Conformance: receive(deadline) and receive(deadline, into) agree",                          \
                     "[transport][conformance]" extra_tags, __VA_ARGS__) {                                        \
    edgesplit_test::conformance::receive_overloads_agree<TestType>();                                              \
  }                                                                                                                \
  TEMPLATE_TEST_CASE("Conformance: steady-state send and receive into a reused Message allocate nothing",         \
                     "[transport][conformance][alloc]" extra_tags, __VA_ARGS__) {                                 \
    edgesplit_test::conformance::steady_state_allocates_nothing<TestType>();                                       \
  }
