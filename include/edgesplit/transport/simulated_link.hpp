// edgesplit/transport/simulated_link.hpp - a transport wrapper that behaves like a slow network:
// bandwidth, latency, jitter, loss and reordering from a seeded generator, or a recorded trace.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "edgesplit/core/random.hpp"
#include "edgesplit/transport/transport.hpp"

namespace edgesplit {

/// A link's capacity over time in the Mahimahi format: one line per delivery opportunity, each
/// the time in milliseconds from the start of the trace at which `bytes_per_opportunity` bytes
/// (one MTU-sized packet) may cross the link; a time repeated on several lines gives several
/// opportunities in that millisecond. The trace repeats, shifted by its last time, when it ends.
/// Traces are input from outside the process: every line is checked, with typed errors.
class DeliveryTrace {
 public:
  /// Mahimahi's packet size: bytes per delivery opportunity.
  static constexpr std::size_t default_bytes_per_opportunity = 1500;
  /// Most lines a trace may have (~400 MB of text).
  static constexpr std::size_t max_opportunities = 50'000'000;
  /// Largest time a trace line may hold (~35 years).
  static constexpr std::uint64_t max_time_ms = std::uint64_t{1} << 40;
  static constexpr std::uintmax_t max_file_bytes = std::uintmax_t{1} << 30;  ///< largest trace file read

  /// `corrupt_frame` (with the line number) for a line that is not a whole number of
  /// milliseconds, for times that decrease or exceed max_time_ms, for an empty trace or one whose
  /// last time is 0; `too_large` for more than max_opportunities lines.
  static DeliveryTrace parse(std::string_view text, std::size_t bytes_per_opportunity = default_bytes_per_opportunity) {
    if (bytes_per_opportunity == 0) fail(errc::invalid_argument, "DeliveryTrace: bytes_per_opportunity is 0");
    DeliveryTrace t;
    t.bytes_per_opportunity_ = bytes_per_opportunity;
    std::size_t line_no = 0;
    while (!text.empty()) {
      ++line_no;
      const std::size_t eol = text.find('\n');
      std::string_view line = text.substr(0, eol);
      text = eol == std::string_view::npos ? std::string_view{} : text.substr(eol + 1);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      const auto bad = [&](const std::string& why) {
        fail(errc::corrupt_frame, "DeliveryTrace line " + std::to_string(line_no) + ": " + why);
      };
      if (line.empty()) bad("empty line");
      std::uint64_t ms = 0;
      const auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), ms);
      if (ec != std::errc{} || end != line.data() + line.size()) bad("not a whole number of milliseconds");
      if (ms > max_time_ms) bad("time over " + std::to_string(max_time_ms) + " ms");
      if (!t.ms_.empty() && ms < t.ms_.back()) bad("time goes backwards");
      if (t.ms_.size() == max_opportunities) {
        fail(errc::too_large, "DeliveryTrace: more than " + std::to_string(max_opportunities) + " lines");
      }
      t.ms_.push_back(ms);
    }
    if (t.ms_.empty()) fail(errc::corrupt_frame, "DeliveryTrace: no delivery opportunities");
    if (t.ms_.back() == 0) fail(errc::corrupt_frame, "DeliveryTrace: the trace must last longer than 0 ms");
    return t;
  }

  /// Reads and parses a trace file: `io_error` if it cannot be read, `too_large` over
  /// max_file_bytes, otherwise as parse().
  static DeliveryTrace load(const std::string& path, std::size_t bytes_per_opportunity = default_bytes_per_opportunity) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) fail(errc::io_error, "DeliveryTrace: cannot open '" + path + "'");
    const std::streamoff size = in.tellg();
    if (size < 0) fail(errc::io_error, "DeliveryTrace: cannot read '" + path + "'");
    if (static_cast<std::uintmax_t>(size) > max_file_bytes) fail(errc::too_large, "DeliveryTrace: '" + path + "' is too large");
    std::string text(static_cast<std::size_t>(size), '\0');
    in.seekg(0);
    if (!in.read(text.data(), size)) fail(errc::io_error, "DeliveryTrace: cannot read '" + path + "'");
    return parse(text, bytes_per_opportunity);
  }

  /// Delivery times in ms, ascending.
  std::span<const std::uint64_t> opportunities_ms() const noexcept { return ms_; }
  /// Bytes each opportunity carries.
  std::size_t bytes_per_opportunity() const noexcept { return bytes_per_opportunity_; }
  /// Length of one pass of the trace: its last time.
  std::uint64_t period_ms() const noexcept { return ms_.back(); }
  /// Average capacity over one period.
  double mean_bits_per_second() const noexcept {
    return static_cast<double>(ms_.size()) * static_cast<double>(bytes_per_opportunity_) * 8.0 * 1000.0 /
           static_cast<double>(period_ms());
  }

 private:
  DeliveryTrace() = default;
  std::vector<std::uint64_t> ms_;
  std::size_t bytes_per_opportunity_ = default_bytes_per_opportunity;
};

/// What one direction of a link does to the messages sent through it.
struct LinkProfile {
  std::string name;  ///< label for reports, e.g. "lte"
  /// Bits per second; 0 means unlimited. Ignored when `trace` is set.
  double bandwidth_bps = 0;
  /// Token bucket depth: bytes that may leave at once after the link has been idle long enough
  /// to fill it. 0 (the default) is a plain serializing link: a message takes size*8/bandwidth.
  std::size_t burst_bytes = 0;
  /// One-way propagation delay, added after the last byte has been serialized.
  Clock::duration latency{};
  /// The delay is uniform in [latency - jitter, latency + jitter]; jitter <= latency.
  Clock::duration jitter{};
  /// When true (the default), jitter never lets a message arrive before one sent earlier, as on
  /// one TCP connection; false lets it reorder, like netem.
  bool keep_order = true;
  /// Probability that a message is lost (it still occupies the link while being serialized).
  double loss = 0;
  /// Probability that a message is held back by `reorder_delay` on top of its delay, so that
  /// messages sent after it can overtake it.
  double reorder = 0;
  Clock::duration reorder_delay{};  ///< how long a reordered message is held back
  /// When set, capacity follows this trace instead of `bandwidth_bps`; the trace's time 0 is the
  /// moment the SimulatedLink is constructed.
  std::shared_ptr<const DeliveryTrace> trace;

  /// Typed `invalid_argument` for values out of their domain.
  void validate() const {
    const auto bad = [&](const std::string& why) { fail(errc::invalid_argument, "LinkProfile '" + name + "': " + why); };
    if (!(bandwidth_bps >= 0) || !std::isfinite(bandwidth_bps)) bad("bandwidth_bps must be finite and >= 0");
    if (bandwidth_bps > 0 && bandwidth_bps < 1) bad("bandwidth_bps below 1 bit/s");
    if (latency < Clock::duration::zero()) bad("negative latency");
    if (jitter < Clock::duration::zero() || jitter > latency) bad("jitter must be in [0, latency]");
    if (!(loss >= 0 && loss <= 1)) bad("loss must be in [0, 1]");
    if (!(reorder >= 0 && reorder <= 1)) bad("reorder must be in [0, 1]");
    if (reorder_delay < Clock::duration::zero()) bad("negative reorder_delay");
  }

  /// Time to serialize `bytes` on an idle link without burst credit (zero when unlimited).
  Clock::duration serialization_time(std::size_t bytes) const noexcept {
    if (bandwidth_bps <= 0) return Clock::duration::zero();
    return seconds_to_duration(static_cast<double>(bytes) * 8.0 / bandwidth_bps);
  }

  /// Uplinks as measured in the Neurosurgeon paper (Kang et al., ASPLOS 2017): mean upload
  /// bandwidths of 18.88, 5.85 and 1.1 Mbps. The paper does not fix round-trip times; these use
  /// typical ones to a regional cloud: 20 ms (Wi-Fi), 60 ms (LTE), 150 ms (3G/HSPA), split evenly
  /// into the one-way latency of each direction. No jitter or loss, so results are exact.
  static LinkProfile wifi() { return preset("wifi", 18.88e6, std::chrono::milliseconds(10)); }
  /// Neurosurgeon's LTE uplink: 5.85 Mbit/s, 30 ms one-way latency.
  static LinkProfile lte() { return preset("lte", 5.85e6, std::chrono::milliseconds(30)); }
  /// Neurosurgeon's 3G uplink: 1.1 Mbit/s, 75 ms one-way latency.
  static LinkProfile cellular_3g() { return preset("3g", 1.1e6, std::chrono::milliseconds(75)); }
  /// The three presets: Wi-Fi, LTE, 3G.
  static std::array<LinkProfile, 3> presets() { return {wifi(), lte(), cellular_3g()}; }

  /// Seconds as a clock duration, rounded to the nearest tick and saturated instead of overflowing.
  static Clock::duration seconds_to_duration(double seconds) noexcept {
    const double ticks = seconds * static_cast<double>(Clock::duration::period::den) /
                         static_cast<double>(Clock::duration::period::num);
    if (!(ticks < 9.0e18)) return Clock::duration::max();
    return Clock::duration(static_cast<Clock::duration::rep>(std::llround(std::max(0.0, ticks))));
  }

 private:
  static LinkProfile preset(std::string name, double bps, Clock::duration one_way) {
    LinkProfile p;
    p.name = std::move(name);
    p.bandwidth_bps = bps;
    p.latency = one_way;
    return p;
  }
};

/// Counts kept by a SimulatedLink (send side: what this end sent; delivered: what it received).
struct LinkStats {
  std::uint64_t sent = 0;        ///< send() calls
  std::uint64_t lost = 0;        ///< of those, dropped by the loss model
  std::uint64_t held_back = 0;   ///< of those, held back by the reorder model
  std::uint64_t bytes_sent = 0;  ///< payload bytes of all send() calls, lost ones included
  std::uint64_t delivered = 0;   ///< messages this end's receive() returned
};

/// How a SimulatedLink waits on a virtual clock.
struct SimulatedLinkOptions {
  /// On a virtual clock: how long (in real time) receive() waits for the inner transport when no
  /// message is in flight, before it concludes none is coming, moves the virtual clock to the
  /// deadline and returns false. 0 suits one thread driving both ends; a peer in another thread
  /// needs long enough for it to send. A receive without deadline always waits.
  Clock::duration idle_wait{};
};

/// Wraps one end of any transport and shapes what that end sends: both ends of a connection are
/// wrapped, each with the profile of its outgoing direction (edge: uplink, cloud: downlink), and
/// both must read the same clock (one VirtualClock, or the steady clock of one host).
///
/// How time is surfaced: send() computes, on the link's clock, when the last byte will arrive
/// (serialization behind earlier messages, then latency, jitter, reordering) and returns it
/// (nullopt for a lost message); the receiving end hands the message out no earlier than that,
/// with Message::sent_at and Message::delivered_at set. On a VirtualClock nothing waits in real
/// time: receive() moves the clock forward to the delivery (or to its deadline if that comes
/// first), so transfer times are exact and repeatable, e.g. for a planner measuring a split.
///
/// On the inner transport each message carries a 16-byte trailer (send and delivery times), so
/// the inner cap must allow 16 bytes more than the largest message. Thread-safe like the inner
/// transport: one sender and one receiver at a time each (further callers wait their turn).
template <Transport Inner>
class SimulatedLink {
 public:
  /// Bytes of the timing trailer added to each message on the inner transport.
  static constexpr std::size_t trailer_bytes = 16;

  /// Wraps one end of `inner`, shaping what it sends by `profile`, with randomness from `seed` and time from
  /// `clock`.
  SimulatedLink(Inner inner, LinkProfile profile, std::uint64_t seed, Clock& clock = SteadyClock::instance(),
                SimulatedLinkOptions options = {}) {
    profile.validate();
    s_ = std::make_unique<State>(std::move(inner), std::move(profile), seed, clock, options);
  }

  /// Sends through the link model; returns when the message will be delivered (nullopt: lost).
  /// The deadline bounds the inner send on a real clock; on a virtual clock the inner transport's
  /// own default applies.
  std::optional<Clock::time_point> send(std::span<const std::byte> bytes) { return send(bytes, no_deadline); }
  /// Sends `bytes` through the model; returns the delivery time on the link's clock, or nullopt when the link
  /// lost it.
  std::optional<Clock::time_point> send(std::span<const std::byte> bytes, Deadline deadline) {
    State& s = state();
    std::lock_guard lock(s.tx_mutex);
    if (s.closed.load()) fail(errc::unreachable, "SimulatedLink: closed");
    const Clock::time_point now = s.clock->now();
    const Clock::time_point finish = serialize(s, now, bytes.size());
    // Three draws per message whatever the profile, so one setting never shifts another's draws.
    const double u_loss = s.rng.uniform(), u_jitter = s.rng.uniform(), u_reorder = s.rng.uniform();
    s.sent.fetch_add(1);
    s.bytes_sent.fetch_add(bytes.size());
    if (u_loss < s.profile.loss) {
      s.lost.fetch_add(1);
      return std::nullopt;
    }
    // Delay uniform in [latency - jitter, latency + jitter): never negative, as jitter <= latency.
    const double spread = 2 * std::chrono::duration<double>(s.profile.jitter).count() * u_jitter;
    const Clock::duration delay = s.profile.latency - s.profile.jitter + LinkProfile::seconds_to_duration(spread);
    Clock::time_point due = saturating_add(finish, delay);
    if (s.profile.keep_order) {
      due = std::max(due, s.last_in_order);
      s.last_in_order = due;
    }
    if (u_reorder < s.profile.reorder) {
      due = saturating_add(due, s.profile.reorder_delay);
      s.held_back.fetch_add(1);
    }
    s.scratch.resize(bytes.size() + trailer_bytes);
    if (!bytes.empty()) std::copy(bytes.begin(), bytes.end(), s.scratch.begin());
    put_i64(s.scratch.data() + bytes.size(), now.time_since_epoch().count());
    put_i64(s.scratch.data() + bytes.size() + 8, due.time_since_epoch().count());
    if (s.clock->is_virtual()) {
      s.inner.send(std::span<const std::byte>(s.scratch));
    } else {
      s.inner.send(std::span<const std::byte>(s.scratch), deadline);
    }
    return due;
  }

  /// The next delivered message, or nullopt at the deadline (read on the link's clock).
  std::optional<Message> receive(Deadline deadline) { return detail::receive_new(*this, deadline); }
  /// Returns the next message once the link clock reaches its delivery time; `deadline` is read
  /// on the link clock. Messages the peer sent before closing are still delivered, on time; so are
  /// those received before a failure of the inner transport (a stream ending inside a message, a
  /// message over its cap) or a message without a link trailer, whose error is thrown after them.
  bool receive(Deadline deadline, Message& into) {
    State& s = state();
    std::lock_guard lock(s.rx_mutex);
    for (;;) {
      if (s.closed.load()) fail(errc::unreachable, "SimulatedLink: closed");
      while (pull(s, std::chrono::steady_clock::now())) {
      }
      const Clock::time_point now = s.clock->now();
      if (!s.in_flight.empty()) {
        const Clock::time_point due = s.in_flight.front().message.delivered_at;
        if (due <= now) {
          pop(s, into);
          return true;
        }
        if (s.clock->is_virtual()) {
          s.clock->sleep_until(std::min(due, deadline));
          if (due <= deadline) continue;
          return false;
        }
        if (now >= deadline) return false;
        // Wait for the due time, or for a message that may overtake it.
        if (s.peer_gone || s.failure) {
          s.clock->sleep_until(std::min(due, deadline));
        } else {
          pull(s, std::min(due, deadline));
        }
        continue;
      }
      if (s.failure) std::rethrow_exception(std::exchange(s.failure, nullptr));
      if (s.peer_gone) std::rethrow_exception(s.peer_gone);
      if (now >= deadline) return false;
      if (!s.clock->is_virtual()) {
        pull(s, deadline);
      } else if (deadline == no_deadline) {
        pull(s, no_deadline);
      } else if (!pull(s, std::chrono::steady_clock::now() + s.options.idle_wait) && !s.peer_gone && !s.failure) {
        s.clock->sleep_until(deadline);
        return false;
      }
    }
  }

  /// Closes this end and the inner transport (which tells the peer).
  void close() noexcept {
    if (!s_) return;
    s_->closed.store(true);
    s_->inner.close();
  }

  Clock& clock() const { return *state().clock; }  ///< the clock the link reads and deadlines are read on
  const LinkProfile& profile() const { return state().profile; }  ///< the link's profile
  Inner& inner() { return state().inner; }  ///< the wrapped transport
  /// Counts of sent, lost, held-back and delivered messages.
  LinkStats stats() const {
    const State& s = state();
    return {s.sent.load(), s.lost.load(), s.held_back.load(), s.bytes_sent.load(), s.delivered.load()};
  }

 private:
  struct InFlight {
    Message message;
    std::uint64_t arrival = 0;  // ties on delivery time go in arrival order
    bool operator>(const InFlight& o) const noexcept {
      return message.delivered_at != o.message.delivered_at ? message.delivered_at > o.message.delivered_at
                                                            : arrival > o.arrival;
    }
  };

  struct State {
    State(Inner i, LinkProfile p, std::uint64_t seed, Clock& c, SimulatedLinkOptions o)
        : inner(std::move(i)), profile(std::move(p)), options(o), clock(&c), rng(seed) {
      origin = free_at = last_in_order = c.now();
      tokens = static_cast<double>(profile.burst_bytes);
      if (profile.trace) left = profile.trace->bytes_per_opportunity();
    }
    Inner inner;
    const LinkProfile profile;
    const SimulatedLinkOptions options;
    Clock* clock;  // not owned: outlives the link
    std::atomic<bool> closed{false};
    std::atomic<std::uint64_t> sent{0}, lost{0}, held_back{0}, bytes_sent{0}, delivered{0};

    // Send side (tx_mutex): the link model.
    std::mutex tx_mutex;
    Rng rng;
    Clock::time_point origin;         // the trace's time 0
    Clock::time_point free_at;        // when the link has serialized everything given so far
    Clock::time_point last_in_order;  // latest delivery of a message not held back
    double tokens = 0;                // token bucket content at free_at, in bytes
    std::uint64_t next_opportunity = 0;  // trace: index of the next unused opportunity (all passes)
    std::size_t left = 0;                // trace: bytes still free in it
    std::vector<std::byte> scratch;      // message + trailer, reused

    // Receive side (rx_mutex): messages received from the inner transport, by delivery time.
    std::mutex rx_mutex;
    std::vector<InFlight> in_flight;  // a min-heap
    std::uint64_t arrivals = 0;
    Message incoming;                         // the inner transport receives into this
    std::vector<std::vector<std::byte>> spare;  // buffers handed back by receive(), reused
    std::exception_ptr peer_gone;             // the inner transport's `unreachable`, kept for later
    std::exception_ptr failure;  // another error of the inner transport or trailer, thrown once after what came before it
  };

  State& state() const {
    if (!s_) fail(errc::unreachable, "SimulatedLink: moved-from link");
    return *s_;
  }
  static Clock::time_point saturating_add(Clock::time_point t, Clock::duration d) noexcept {
    if (d > Clock::duration::zero() && t > Clock::time_point::max() - d) return Clock::time_point::max();
    return t + d;
  }
  static void put_i64(std::byte* p, std::int64_t v) noexcept {
    const auto u = static_cast<std::uint64_t>(v);
    for (int i = 0; i < 8; ++i) p[i] = static_cast<std::byte>(u >> (8 * i));
  }
  static std::int64_t get_i64(const std::byte* p) noexcept {
    std::uint64_t u = 0;
    for (int i = 0; i < 8; ++i) u |= std::uint64_t(std::to_integer<unsigned char>(p[i])) << (8 * i);
    return static_cast<std::int64_t>(u);
  }

  /// When the last byte of a `size`-byte message given to the link at `now` has been serialized.
  static Clock::time_point serialize(State& s, Clock::time_point now, std::size_t size) {
    if (s.profile.trace) return serialize_trace(s, now, size);
    const Clock::time_point start = std::max(now, s.free_at);
    if (s.profile.bandwidth_bps <= 0) return s.free_at = start;
    const double rate = s.profile.bandwidth_bps / 8.0;  // bytes per second
    const double idle = std::chrono::duration<double>(start - s.free_at).count();
    s.tokens = std::min(static_cast<double>(s.profile.burst_bytes), s.tokens + idle * rate);
    const double need = static_cast<double>(size) - s.tokens;
    if (need <= 0) {
      s.tokens -= static_cast<double>(size);
      return s.free_at = start;
    }
    s.tokens = 0;
    return s.free_at = saturating_add(start, LinkProfile::seconds_to_duration(need / rate));
  }

  /// Mahimahi's rule: an opportunity at or before the moment a message arrives is gone; bytes
  /// left in an opportunity serve the next message queued; a message is through at the time of
  /// the opportunity that carries its last byte.
  static Clock::time_point serialize_trace(State& s, Clock::time_point now, std::size_t size) {
    const DeliveryTrace& trace = *s.profile.trace;
    const auto ms = trace.opportunities_ms();
    const std::uint64_t n = ms.size(), period = trace.period_ms();
    const auto time_of = [&](std::uint64_t k) {
      return s.origin + std::chrono::milliseconds(static_cast<std::int64_t>((k / n) * period + ms[k % n]));
    };
    if (time_of(s.next_opportunity) <= now) {
      // Skip to the first opportunity after `now` in closed form (the link may have been idle).
      const auto since = std::chrono::floor<std::chrono::milliseconds>(now - s.origin).count();
      const auto whole = static_cast<std::uint64_t>(since);
      std::uint64_t pass = whole / period;
      auto i = static_cast<std::uint64_t>(std::upper_bound(ms.begin(), ms.end(), whole - pass * period) - ms.begin());
      if (i == n) {
        ++pass;
        i = 0;
      }
      s.next_opportunity = pass * n + i;
      s.left = trace.bytes_per_opportunity();
    }
    if (size == 0) return s.free_at = std::max(now, s.free_at);
    Clock::time_point done = now;
    while (size > 0) {
      const std::size_t take = std::min(size, s.left);
      size -= take;
      s.left -= take;
      done = time_of(s.next_opportunity);
      if (s.left == 0) {
        ++s.next_opportunity;
        s.left = trace.bytes_per_opportunity();
      }
    }
    return s.free_at = done;
  }

  /// Takes one message from the inner transport into the heap; false if none came by `deadline`
  /// (a real-clock time), the peer is gone or the inner transport failed. Failures wait in
  /// peer_gone (for good) or failure (once) until the messages received before them are delivered.
  static bool pull(State& s, Deadline deadline) {
    if (s.peer_gone || s.failure) return false;
    Message& m = s.incoming;
    std::int64_t sent = 0, due = 0;
    try {
      if (!s.inner.receive(deadline, m)) return false;
      if (m.bytes.size() < trailer_bytes) {
        fail(errc::corrupt_frame, "SimulatedLink: a message of " + std::to_string(m.bytes.size()) +
                                      " bytes has no link trailer (is the peer a SimulatedLink?)");
      }
      const std::byte* t = m.bytes.data() + m.bytes.size() - trailer_bytes;
      sent = get_i64(t);
      due = get_i64(t + 8);
      if (due < sent) fail(errc::corrupt_frame, "SimulatedLink: a message delivered before it was sent");
    } catch (const error& e) {
      if (s.closed.load()) throw;
      (e.code() == errc::unreachable ? s.peer_gone : s.failure) = std::current_exception();
      return false;
    }
    m.bytes.resize(m.bytes.size() - trailer_bytes);
    m.sent_at = Clock::time_point(Clock::duration(sent));
    m.delivered_at = Clock::time_point(Clock::duration(due));
    s.in_flight.push_back(InFlight{std::move(m), s.arrivals++});
    std::push_heap(s.in_flight.begin(), s.in_flight.end(), std::greater<>{});
    s.incoming = Message{};
    if (!s.spare.empty()) {
      s.incoming.bytes = std::move(s.spare.back());
      s.spare.pop_back();
    }
    return true;
  }

  static void pop(State& s, Message& into) {
    std::pop_heap(s.in_flight.begin(), s.in_flight.end(), std::greater<>{});
    Message& m = s.in_flight.back().message;
    std::swap(into.bytes, m.bytes);
    into.sent_at = m.sent_at;
    into.delivered_at = m.delivered_at;
    if (s.spare.size() < spare_buffers) s.spare.push_back(std::move(m.bytes));
    s.in_flight.pop_back();
    s.delivered.fetch_add(1);
  }

  static constexpr std::size_t spare_buffers = 16;
  std::unique_ptr<State> s_;
};

}  // namespace edgesplit
