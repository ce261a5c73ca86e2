// edgesplit/eval/metered_clock.hpp - a virtual clock on which computing costs time: runtime code
// run on a metered thread reads the time a device computing `factor` times slower would read.
#pragma once

#include <chrono>
#include <cmath>
#include <string>

#include "edgesplit/core/error.hpp"
#include "edgesplit/transport/clock.hpp"

namespace edgesplit {

/// A virtual clock on which computation costs time.
///
/// It moves like a VirtualClock (advance_to, advance_by, and sleep_until, which a SimulatedLink
/// calls to "wait" for a delivery), and in one more way: a thread that holds a Meter has the real
/// time it spends between two readings of the clock charged to the clock, multiplied by the
/// meter's factor, at the second reading. Threads without a meter read the clock without moving
/// it. Hand it to runtime code (EdgeClient, DynamicBatcher, RequestHandler, a SimulatedLink) and
/// run that code on a metered thread: every time that code reads (deadlines, round trips, the
/// server's compute time, when a message leaves) is then what a device computing `factor` times
/// slower than this machine would read, while network time stays exact.
///
/// Only readings charge: the time after a thread's last reading before its meter stops is not
/// charged, so that nothing is charged after the thread's last observable act (a message sent
/// and stamped can no longer be moved). Thread-safe.
class MeteredClock final : public Clock {
 public:
  /// Charges the real time of the thread that holds it, from its construction, at each of that
  /// thread's readings of the clock. One meter per thread at a time; it must be stopped or
  /// destroyed on the thread that made it, and the clock must outlive it.
  class Meter {
   public:
    /// Starts charging the calling thread's time x `factor` (>= 0, finite) to `clock`.
    /// errc::invalid_argument for another factor, or when this thread already holds a meter.
    Meter(const MeteredClock& clock, double factor) : clock_(&clock), factor_(factor) {
      if (!(factor >= 0) || !std::isfinite(factor))
        fail(errc::invalid_argument, "MeteredClock::Meter: factor must be finite and >= 0, not " + std::to_string(factor));
      if (active() != nullptr) fail(errc::invalid_argument, "MeteredClock::Meter: this thread already holds a meter");
      last_ = std::chrono::steady_clock::now();
      active() = this;
    }
    Meter(const Meter&) = delete;
    Meter& operator=(const Meter&) = delete;
    ~Meter() { stop(); }

    /// Stops charging; the time since this thread's last reading is not charged. Idempotent.
    void stop() noexcept {
      if (active() == this) active() = nullptr;
    }
    /// Whether the meter still charges.
    bool running() const noexcept { return active() == this; }
    /// What the meter has charged to the clock so far.
    Clock::duration charged() const noexcept { return charged_; }
    /// charged() in seconds.
    double charged_seconds() const noexcept { return std::chrono::duration<double>(charged_).count(); }

   private:
    friend class MeteredClock;
    // The calling thread's meter, if any (of any MeteredClock).
    static Meter*& active() noexcept {
      thread_local Meter* meter = nullptr;
      return meter;
    }
    void charge() noexcept {
      const auto real = std::chrono::steady_clock::now();
      const double s = std::chrono::duration<double>(real - last_).count() * factor_;
      last_ = real;
      const Clock::duration d = to_duration(s);
      charged_ += d;
      clock_->time_.advance_by(d);
    }

    const MeteredClock* clock_;
    double factor_;
    std::chrono::steady_clock::time_point last_;
    Clock::duration charged_{};
  };

  /// Starts at `start` (the epoch by default).
  explicit MeteredClock(time_point start = time_point{}) : time_(start) {}
  MeteredClock(const MeteredClock&) = delete;
  MeteredClock& operator=(const MeteredClock&) = delete;

  /// The current virtual time; on a thread holding a Meter of this clock, after charging the
  /// thread's real time since its previous reading.
  time_point now() const noexcept override {
    if (Meter* m = Meter::active(); m != nullptr && m->clock_ == this) m->charge();
    return time_.now();
  }
  void sleep_until(time_point t) override { time_.advance_to(t); }
  bool is_virtual() const noexcept override { return true; }

  /// Moves the clock forward to `t`; an earlier `t` does nothing.
  void advance_to(time_point t) noexcept { time_.advance_to(t); }
  /// Moves the clock forward by `d` (a charge made by hand: a profile's cost, say).
  void advance_by(duration d) noexcept { time_.advance_by(d); }
  /// advance_by() in seconds (rounded to the nearest tick; negative or NaN: nothing).
  void advance_by_seconds(double s) noexcept { time_.advance_by(to_duration(s)); }

 private:
  static duration to_duration(double s) noexcept {
    const double ticks = s * static_cast<double>(duration::period::den) / static_cast<double>(duration::period::num);
    if (!(ticks > 0)) return duration::zero();
    if (!(ticks < 9.0e18)) return duration::max();
    return duration(static_cast<duration::rep>(std::llround(ticks)));
  }

  mutable VirtualClock time_;  // moved by readings of metered threads, hence mutable
};

}  // namespace edgesplit
