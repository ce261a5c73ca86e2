// edgesplit/runtime/metrics.hpp - counters a server keeps per served model, and the Prometheus
// text exposition format (0.0.4) to publish them and any other number.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "edgesplit/core/error.hpp"

namespace edgesplit {

/// Upper bounds, in microseconds, of the buckets of every duration histogram (a last bucket,
/// +Inf, takes the rest): 50 µs to 10 s, roughly 1-2.5-5 per decade, so one scrape format covers a
/// tail of microseconds on a server and of seconds on a board.
inline constexpr std::array<std::uint64_t, 18> duration_buckets_us{
    50, 100, 250, 500, 1'000, 2'500, 5'000, 10'000, 25'000, 50'000, 100'000, 250'000, 500'000,
    1'000'000, 2'500'000, 5'000'000, 7'500'000, 10'000'000};

/// A histogram of durations in microseconds over duration_buckets_us. Lock-free: observe() is
/// two relaxed atomic additions, so workers record every request without contending.
class DurationHistogram {
 public:
  /// Bucket counts, cumulative as Prometheus wants them (the last is +Inf: every observation).
  struct Snapshot {
    std::array<std::uint64_t, duration_buckets_us.size() + 1> cumulative{};  ///< observations <= each bound
    std::uint64_t sum_us = 0;  ///< sum of all observations
    std::uint64_t count() const noexcept { return cumulative.back(); }  ///< observations

    /// The observations made between `earlier` and this snapshot (of the same histogram).
    Snapshot since(const Snapshot& earlier) const noexcept {
      Snapshot d;
      for (std::size_t i = 0; i < cumulative.size(); ++i)
        d.cumulative[i] = cumulative[i] >= earlier.cumulative[i] ? cumulative[i] - earlier.cumulative[i] : 0;
      d.sum_us = sum_us >= earlier.sum_us ? sum_us - earlier.sum_us : 0;
      return d;
    }
    /// Adds another histogram's counts (to sum the models of a server).
    Snapshot& operator+=(const Snapshot& o) noexcept {
      for (std::size_t i = 0; i < cumulative.size(); ++i) cumulative[i] += o.cumulative[i];
      sum_us += o.sum_us;
      return *this;
    }
    /// The `q` quantile (0..1) in microseconds, interpolated linearly inside its bucket as
    /// Prometheus' histogram_quantile() does (the first bucket starts at 0; a rank in +Inf gives
    /// the largest finite bound). 0 without observations.
    double quantile(double q) const noexcept {
      if (count() == 0) return 0.0;
      const double rank = std::clamp(q, 0.0, 1.0) * static_cast<double>(count());
      std::size_t i = 0;
      while (i + 1 < cumulative.size() && static_cast<double>(cumulative[i]) < rank) ++i;
      if (i == duration_buckets_us.size()) return static_cast<double>(duration_buckets_us.back());
      const double lo = i == 0 ? 0.0 : static_cast<double>(duration_buckets_us[i - 1]);
      const double below = i == 0 ? 0.0 : static_cast<double>(cumulative[i - 1]);
      const double in = static_cast<double>(cumulative[i]) - below;
      return lo + (static_cast<double>(duration_buckets_us[i]) - lo) * (in > 0 ? (rank - below) / in : 1.0);
    }
  };

  /// Records one duration.
  void observe(std::uint64_t us) noexcept {
    std::size_t i = 0;
    while (i < duration_buckets_us.size() && us > duration_buckets_us[i]) ++i;
    buckets_[i].fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(us, std::memory_order_relaxed);
  }
  /// The counts now. The count is the sum of the buckets, so a scrape is always self-consistent
  /// (+Inf bucket == count) even while workers observe.
  Snapshot snapshot() const noexcept {
    Snapshot s;
    std::uint64_t run = 0;
    for (std::size_t i = 0; i < buckets_.size(); ++i) s.cumulative[i] = run += buckets_[i].load(std::memory_order_relaxed);
    s.sum_us = sum_.load(std::memory_order_relaxed);
    return s;
  }

 private:
  std::array<std::atomic<std::uint64_t>, duration_buckets_us.size() + 1> buckets_{};
  std::atomic<std::uint64_t> sum_{0};
};

/// What a server has done for one served tail (a model at one split), recorded by the request
/// handler and the batcher's workers with relaxed atomics: no lock on the request path. Carried
/// across weight updates and re-registrations of the same tail, so counters only grow.
struct ModelMetrics {
  /// Error codes an answer can carry (every errc).
  static constexpr std::size_t code_count = static_cast<std::size_t>(errc::quarantined) + 1;

  std::atomic<std::uint64_t> ok{0};  ///< requests answered with a RESPONSE
  std::array<std::atomic<std::uint64_t>, code_count> failed{};  ///< requests answered ERROR, by code
  std::atomic<std::uint64_t> inferences{0};  ///< samples (rows) answered: Triton's inference count
  std::atomic<std::uint64_t> executions{0};  ///< forward passes run: inferences / executions is the mean batch
  DurationHistogram queue_us;    ///< queued until its batch started
  DurationHistogram compute_us;  ///< the forward pass of its batch
  DurationHistogram total_us;    ///< queued until its answer was encoded

  /// A request of `rows` samples answered after `queue` µs queued, `compute` µs in its pass and
  /// `total` µs in all.
  void answered(std::size_t rows, std::uint64_t queue, std::uint64_t compute, std::uint64_t total) noexcept {
    ok.fetch_add(1, std::memory_order_relaxed);
    inferences.fetch_add(rows, std::memory_order_relaxed);
    queue_us.observe(queue);
    compute_us.observe(compute);
    total_us.observe(total);
  }
  /// A request answered ERROR `code` (refused, expired or failed).
  void refused(errc code) noexcept {
    const auto i = static_cast<std::size_t>(code);
    if (i < code_count) failed[i].fetch_add(1, std::memory_order_relaxed);
  }
  /// One forward pass ran.
  void executed() noexcept { executions.fetch_add(1, std::memory_order_relaxed); }
};

/// Writes the Prometheus text exposition format, version 0.0.4: one `# HELP` and `# TYPE` per
/// family, then its samples. Label values are escaped (backslash, quote, newline), so model names
/// from configuration cannot break a scrape.
class MetricsWriter {
 public:
  /// A label: name and value.
  using Label = std::pair<std::string_view, std::string_view>;

  /// Starts a family: `type` is counter, gauge or histogram. Counter names end in `_total`.
  void family(std::string_view name, std::string_view type, std::string_view help) {
    text_ += "# HELP ";
    text_ += name;
    text_ += ' ';
    for (char c : help) {
      if (c == '\\') text_ += "\\\\";
      else if (c == '\n') text_ += "\\n";
      else text_ += c;
    }
    text_ += "\n# TYPE ";
    text_ += name;
    text_ += ' ';
    text_ += type;
    text_ += '\n';
  }
  /// One integer sample.
  void sample(std::string_view name, std::initializer_list<Label> labels, std::uint64_t value) {
    head(name, labels, {});
    text_ += std::to_string(value);
    text_ += '\n';
  }
  /// One real sample (written so that it reads back to the same double).
  void sample(std::string_view name, std::initializer_list<Label> labels, double value) {
    head(name, labels, {});
    char b[32];
    std::snprintf(b, sizeof b, "%.17g", value);
    text_ += b;
    text_ += '\n';
  }
  /// The samples of one histogram of microseconds: `_bucket{le=...}` for every bound and +Inf,
  /// `_sum` and `_count`.
  void histogram(std::string_view name, std::initializer_list<Label> labels, const DurationHistogram::Snapshot& h) {
    const std::string bucket = std::string(name) + "_bucket";
    for (std::size_t i = 0; i < h.cumulative.size(); ++i) {
      const std::string le = i < duration_buckets_us.size() ? std::to_string(duration_buckets_us[i]) : "+Inf";
      head(bucket, labels, Label{"le", le});
      text_ += std::to_string(h.cumulative[i]);
      text_ += '\n';
    }
    sample(std::string(name) + "_sum", labels, h.sum_us);
    sample(std::string(name) + "_count", labels, h.count());
  }
  /// The exposition so far (serve it as `text/plain; version=0.0.4`).
  const std::string& text() const noexcept { return text_; }

 private:
  void head(std::string_view name, std::initializer_list<Label> labels, Label extra) {
    text_ += name;
    bool first = true;
    const auto put = [&](const Label& l) {
      text_ += first ? '{' : ',';
      first = false;
      text_ += l.first;
      text_ += "=\"";
      for (char c : l.second) {
        if (c == '\\') text_ += "\\\\";
        else if (c == '"') text_ += "\\\"";
        else if (c == '\n') text_ += "\\n";
        else text_ += c;
      }
      text_ += '"';
    };
    for (const auto& l : labels) put(l);
    if (!extra.first.empty()) put(extra);
    if (!first) text_ += '}';
    text_ += ' ';
  }

  std::string text_;
};

}  // namespace edgesplit
