// edgesplit/runtime/channel.hpp - any Transport behind one type, for the runtime's threads.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <type_traits>
#include <span>
#include <utility>

#include "edgesplit/transport/transport.hpp"

namespace edgesplit {

/// A type-erased, owning handle on any `Transport`, shared by the threads that use one
/// connection. The runtime serves TCP, in-process and simulated links alike through it. One thread
/// receives at a time; sends may come from several threads (every transport serializes them).
class Channel {
 public:
  Channel() = default;
  /// Takes ownership of `transport`; copies of the Channel share it.
  template <Transport T>
    requires(!std::is_same_v<std::decay_t<T>, Channel>)
  explicit Channel(T transport) : impl_(std::make_shared<Model<T>>(std::move(transport))) {}

  explicit operator bool() const noexcept { return impl_ != nullptr; }  ///< true when it holds a connection

  /// Sends one message; errc::unreachable without a connection.
  void send(std::span<const std::byte> bytes, Deadline deadline) { get().send(bytes, deadline); }
  /// Receives one message into `into`; false at the deadline.
  bool receive(Deadline deadline, Message& into) { return get().receive(deadline, into); }
  /// Hands each message that arrives from now on to `on_message`, on the thread that delivers
  /// it, instead of keeping it for receive(); an empty function goes back to receive() and waits
  /// for calls in progress to return. False (nothing changes) for transports that cannot: only
  /// an in-process connection to a server (LocalConnection) can, and there a reply computed on
  /// the sending thread reaches the caller without crossing a thread.
  bool push_to(std::function<void(std::span<const std::byte>)> on_message) {
    return impl_ && impl_->push_to(std::move(on_message));
  }
  /// True while a message has arrived only in part (a peer stalled inside a frame); false for
  /// transports that only deliver whole messages.
  bool mid_message() const { return impl_ && impl_->mid_message(); }
  /// Idempotent; wakes threads blocked on this connection.
  void close() {
    if (impl_) impl_->close();
  }

 private:
  struct Concept {
    virtual ~Concept() = default;
    virtual void send(std::span<const std::byte>, Deadline) = 0;
    virtual bool receive(Deadline, Message&) = 0;
    virtual void close() = 0;
    virtual bool mid_message() const = 0;
    virtual bool push_to(std::function<void(std::span<const std::byte>)>) = 0;
  };
  template <class T>
  struct Model final : Concept {
    explicit Model(T t) : transport(std::move(t)) {}
    void send(std::span<const std::byte> b, Deadline d) override { transport.send(b, d); }
    bool receive(Deadline d, Message& m) override { return transport.receive(d, m); }
    void close() override { transport.close(); }
    bool mid_message() const override {
      if constexpr (requires(const T& t) { t.mid_message(); })
        return transport.mid_message();
      else
        return false;
    }
    bool push_to(std::function<void(std::span<const std::byte>)> f) override {
      if constexpr (requires(T& t, std::function<void(std::span<const std::byte>)> g) { t.push_to(std::move(g)); }) {
        transport.push_to(std::move(f));
        return true;
      } else {
        (void)f;
        return false;
      }
    }
    T transport;
  };
  Concept& get() const {
    if (!impl_) fail(errc::unreachable, "channel has no connection");
    return *impl_;
  }

  std::shared_ptr<Concept> impl_;
};

}  // namespace edgesplit
