// edgesplit/transport/inproc.hpp - a connected pair of transports inside one process.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "edgesplit/transport/transport.hpp"

namespace edgesplit {

/// Limits of an in-process pair.
struct InProcOptions {
  /// Messages above this are refused by send() with errc::too_large.
  std::size_t max_message_bytes = default_max_message_bytes;
  /// Messages one direction may hold before send() waits for the receiver (until its deadline,
  /// then `timeout`). 0: unbounded, send() never waits.
  std::size_t max_queued_messages = 0;
  /// Buffers of received messages kept per direction for later sends to reuse, so a steady
  /// exchange allocates nothing. Each keeps its capacity: bound this for large messages.
  std::size_t spare_buffers = 16;
};

/// One end of an in-process pair made by make_pair(). Thread-safe: any number of threads may
/// send, receive and close on either end at once. Messages arrive whole and in order.
///
/// Closing (close(), or destroying an end) is final for both directions: the peer still receives
/// what was sent before the close, then its receive() throws `unreachable`; its send() throws
/// `unreachable` at once. Messages still queued towards the closed end are dropped.
class InProcTransport {
 public:
  /// Two connected ends; what one sends the other receives, in order.
  static std::pair<InProcTransport, InProcTransport> make_pair(InProcOptions options = {}) {
    auto shared = std::make_shared<Shared>(options);
    return {InProcTransport(shared, 0), InProcTransport(shared, 1)};
  }

  /// Moves the end; the source is left empty, no longer part of the pair.
  InProcTransport(InProcTransport&&) noexcept = default;
  /// Moves the end, closing this one first.
  InProcTransport& operator=(InProcTransport&& o) noexcept {
    if (this != &o) {
      close();
      shared_ = std::move(o.shared_);
      side_ = o.side_;
    }
    return *this;
  }
  InProcTransport(const InProcTransport&) = delete;
  InProcTransport& operator=(const InProcTransport&) = delete;
  ~InProcTransport() { close(); }

  /// Sends a copy of `bytes` without deadline (waits for room only with a bounded queue).
  void send(std::span<const std::byte> bytes) { send(bytes, no_deadline); }
  /// Sends a copy of `bytes`; errc::timeout when a bounded queue stays full past `deadline`,
  /// errc::unreachable once closed.
  void send(std::span<const std::byte> bytes, Deadline deadline) {
    Shared& s = state();
    if (bytes.size() > s.options.max_message_bytes) {
      fail(errc::too_large, "InProcTransport: message of " + std::to_string(bytes.size()) +
                                " bytes over the cap of " + std::to_string(s.options.max_message_bytes));
    }
    Direction& d = s.dir[side_];
    std::unique_lock lock(s.mutex);
    if (s.options.max_queued_messages != 0) {
      const auto room = [&] { return s.closed[0] || s.closed[1] || d.queue.size() < s.options.max_queued_messages; };
      if (!wait(d.writable, lock, deadline, room)) fail(errc::timeout, "InProcTransport: send queue full");
    }
    throw_if_closed(s);
    if (d.spare.empty()) {
      d.queue.emplace_back(bytes.begin(), bytes.end());
    } else {
      d.queue.splice(d.queue.end(), d.spare, d.spare.begin());
      d.queue.back().assign(bytes.begin(), bytes.end());
    }
    lock.unlock();
    d.readable.notify_one();
  }

  /// The next message, or nullopt at the deadline; errc::unreachable once the peer closed and nothing is
  /// left.
  std::optional<Message> receive(Deadline deadline) { return detail::receive_new(*this, deadline); }
  /// The next message into `into`, reusing its buffer; false at the deadline.
  bool receive(Deadline deadline, Message& into) {
    Shared& s = state();
    Direction& d = s.dir[1 - side_];
    std::unique_lock lock(s.mutex);
    const auto ready = [&] { return !d.queue.empty() || s.closed[0] || s.closed[1]; };
    if (!wait(d.readable, lock, deadline, ready)) return false;
    if (s.closed[side_]) fail(errc::unreachable, "InProcTransport: this end is closed");
    if (d.queue.empty()) fail(errc::unreachable, "InProcTransport: the peer closed");
    // Swap rather than copy: the caller's old buffer goes back to the sender as a spare.
    std::swap(into.bytes, d.queue.front());
    into.sent_at = into.delivered_at = {};
    if (d.spare.size() < s.options.spare_buffers) {
      d.spare.splice(d.spare.end(), d.queue, d.queue.begin());
    } else {
      d.queue.pop_front();
    }
    lock.unlock();
    if (s.options.max_queued_messages != 0) d.writable.notify_one();
    return true;
  }

  /// Closes both directions and wakes every waiting thread; idempotent.
  void close() noexcept {
    if (!shared_) return;
    Shared& s = *shared_;
    {
      std::lock_guard lock(s.mutex);
      if (s.closed[side_]) return;
      s.closed[side_] = true;
      s.dir[1 - side_].queue.clear();
    }
    for (Direction& d : s.dir) {
      d.readable.notify_all();
      d.writable.notify_all();
    }
  }

  /// False once this end has been closed (the peer closing does not change it).
  bool is_open() const noexcept {
    if (!shared_) return false;
    std::lock_guard lock(shared_->mutex);
    return !shared_->closed[side_];
  }

 private:
  struct Direction {
    std::list<std::vector<std::byte>> queue;  // lists, so buffers move between them by splice
    std::list<std::vector<std::byte>> spare;
    std::condition_variable readable;
    std::condition_variable writable;
  };
  struct Shared {
    explicit Shared(InProcOptions o) : options(o) {}
    const InProcOptions options;
    std::mutex mutex;
    Direction dir[2];  // dir[i] carries messages sent by end i
    bool closed[2] = {false, false};
  };

  InProcTransport(std::shared_ptr<Shared> shared, int side) : shared_(std::move(shared)), side_(side) {}

  Shared& state() const {
    if (!shared_) fail(errc::unreachable, "InProcTransport: moved-from transport");
    return *shared_;
  }
  void throw_if_closed(const Shared& s) const {
    if (s.closed[side_]) fail(errc::unreachable, "InProcTransport: this end is closed");
    if (s.closed[1 - side_]) fail(errc::unreachable, "InProcTransport: the peer closed");
  }
  template <class Pred>
  static bool wait(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, Deadline deadline, Pred pred) {
    if (pred()) return true;
    if (deadline == no_deadline) {
      cv.wait(lock, pred);
      return true;
    }
    // A deadline already past only polls: a timed wait would still cost the kernel's timer slack.
    if (deadline <= std::chrono::steady_clock::now()) return false;
    return cv.wait_until(lock, deadline, pred);
  }

  std::shared_ptr<Shared> shared_;
  int side_ = 0;
};

static_assert(Transport<InProcTransport>);

}  // namespace edgesplit
