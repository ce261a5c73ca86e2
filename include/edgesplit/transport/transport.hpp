// edgesplit/transport/transport.hpp - the Transport concept: whole messages, deadlines, typed errors.
#pragma once

#include <concepts>
#include <cstddef>
#include <optional>
#include <span>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/transport/clock.hpp"

namespace edgesplit {

/// An absolute point in time after which a call gives up. Real transports read it on the steady
/// clock; a SimulatedLink reads it on its own clock (take it from `link.clock().now()`).
using Deadline = Clock::time_point;
/// Wait as long as it takes.
inline constexpr Deadline no_deadline = Deadline::max();

/// `clock.now() + d`, saturating at no_deadline instead of overflowing.
inline Deadline deadline_after(Clock::duration d, const Clock& clock = SteadyClock::instance()) noexcept {
  const Deadline now = clock.now();
  if (d <= Clock::duration::zero()) return now;
  if (d >= no_deadline - now) return no_deadline;
  return now + d;
}

/// The cap on one message that every transport applies unless told otherwise (64 MiB).
inline constexpr std::size_t default_max_message_bytes = std::size_t{64} << 20;

/// One whole message, owning its bytes. Receiving into an existing Message reuses its buffer.
struct Message {
  std::vector<std::byte> bytes;  ///< the message, whole
  /// Set by a SimulatedLink, on its clock: when the sender called send(), and when the link
  /// delivered (or will deliver) the last byte. Transports that do not simulate leave both at
  /// the epoch.
  Clock::time_point sent_at{};
  Clock::time_point delivered_at{};  ///< see sent_at

  std::span<const std::byte> view() const noexcept { return bytes; }  ///< the bytes as a read-only span
  /// Simulated time from send() to delivery: serialization, queueing and propagation.
  Clock::duration transfer_time() const noexcept { return delivered_at - sent_at; }
};

/// What every transport offers. A transport moves whole messages between two peers, in order
/// (except where a SimulatedLink is told to reorder), and knows nothing about their contents.
///
/// - `send(bytes[, deadline])`: queues or writes the whole message; without a deadline the
///   transport's default applies. Throws `too_large` when the message is over the cap (nothing is
///   sent), `timeout` when the deadline passes first, `unreachable` when this side or the peer has
///   closed, `io_error` when the system refuses.
/// - `receive(deadline, into) -> bool`: waits for the next whole message and moves it into `into`
///   (reusing its capacity: steady-state receiving need not allocate). Returns false when the
///   deadline passes first; a message half-received by then is kept for the next call.
///   Throws `unreachable` once the peer has closed and everything it sent before has been
///   received (or when this side was closed), `too_large` when the peer announces a message over
///   the cap (the connection is closed before anything is allocated), `corrupt_frame` when the
///   byte stream ends mid-message or does not parse.
/// - `receive(deadline) -> optional<Message>`: the same, into a new Message (nullopt on deadline).
/// - `close()`: idempotent; wakes every thread blocked on either side.
template <class T>
concept Transport = requires(T& t, std::span<const std::byte> bytes, Deadline deadline, Message& into) {
  t.send(bytes);
  t.send(bytes, deadline);
  { t.receive(deadline) } -> std::same_as<std::optional<Message>>;
  { t.receive(deadline, into) } -> std::same_as<bool>;
  t.close();
};

namespace detail {
/// receive(deadline) in terms of receive(deadline, into), for every transport.
template <class T>
std::optional<Message> receive_new(T& transport, Deadline deadline) {
  Message m;
  if (!transport.receive(deadline, m)) return std::nullopt;
  return m;
}
}  // namespace detail

}  // namespace edgesplit
