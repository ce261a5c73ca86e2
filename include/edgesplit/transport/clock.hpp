// edgesplit/transport/clock.hpp - real and virtual time, so a simulated link can run on either.
#pragma once

#include <atomic>
#include <chrono>
#include <limits>
#include <thread>

namespace edgesplit {

/// Time as the transports see it. Every clock uses the steady clock's time_point type, so a
/// deadline is the same type everywhere; what it means depends on the clock it is read against
/// (a SimulatedLink reads deadlines on its own clock, real transports on the steady clock).
class Clock {
 public:
  using duration = std::chrono::steady_clock::duration;  ///< ticks of the steady clock, for every clock
  /// A point on the steady clock's time line, for every clock.
  using time_point = std::chrono::steady_clock::time_point;

  virtual ~Clock() = default;
  /// The current time on this clock.
  virtual time_point now() const noexcept = 0;
  /// Returns once now() >= t. The steady clock sleeps; a virtual clock jumps to t.
  virtual void sleep_until(time_point t) = 0;
  /// True for a clock that moves only when told to (then waiting costs no real time).
  virtual bool is_virtual() const noexcept = 0;

 protected:
  Clock() = default;
  /// Copyable by derived clocks only.
  Clock(const Clock&) = default;
  /// Copyable by derived clocks only.
  Clock& operator=(const Clock&) = default;
};

/// The process's monotonic clock (CLOCK_MONOTONIC on Linux: shared by all processes of a host).
class SteadyClock final : public Clock {
 public:
  /// std::chrono::steady_clock::now().
  time_point now() const noexcept override { return std::chrono::steady_clock::now(); }
  void sleep_until(time_point t) override { std::this_thread::sleep_until(t); }
  bool is_virtual() const noexcept override { return false; }

  /// The one instance the transports use by default.
  static SteadyClock& instance() noexcept {
    static SteadyClock clock;
    return clock;
  }
};

/// Time that moves only when advanced: by advance_to/advance_by, or by sleep_until (which a
/// SimulatedLink calls to "wait" for a delivery). Starts at `start` (the epoch by default).
/// Thread-safe; time never goes backwards (advancing to an earlier point does nothing).
class VirtualClock final : public Clock {
 public:
  /// Starts at `start` (the epoch by default); time moves only through advance_to() and sleep_until().
  explicit VirtualClock(time_point start = time_point{}) : ticks_(start.time_since_epoch().count()) {}
  VirtualClock(const VirtualClock&) = delete;
  VirtualClock& operator=(const VirtualClock&) = delete;

  /// The current virtual time.
  time_point now() const noexcept override { return time_point(duration(ticks_.load(std::memory_order_acquire))); }
  void sleep_until(time_point t) override { advance_to(t); }
  bool is_virtual() const noexcept override { return true; }

  /// Moves the clock forward to `t`; an earlier `t` does nothing.
  void advance_to(time_point t) noexcept {
    const auto target = t.time_since_epoch().count();
    auto cur = ticks_.load(std::memory_order_relaxed);
    while (cur < target && !ticks_.compare_exchange_weak(cur, target, std::memory_order_acq_rel)) {
    }
  }
  /// Moves time forward by `d` (a negative `d` does nothing).
  void advance_by(duration d) noexcept {
    if (d <= duration::zero()) return;
    constexpr auto top = std::numeric_limits<duration::rep>::max();
    auto cur = ticks_.load(std::memory_order_relaxed);
    for (;;) {
      const auto next = cur > top - d.count() ? top : cur + d.count();  // saturate, never wrap
      if (ticks_.compare_exchange_weak(cur, next, std::memory_order_acq_rel)) return;
    }
  }

 private:
  std::atomic<duration::rep> ticks_;
};

}  // namespace edgesplit
