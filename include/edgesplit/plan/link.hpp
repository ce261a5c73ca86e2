// edgesplit/plan/link.hpp - what the network between edge and cloud costs, and how to learn it.
#pragma once

#include <cmath>
#include <cstddef>
#include <string>

#include "edgesplit/core/error.hpp"

namespace edgesplit {

/// A link as the planner sees it: bandwidth each way, round-trip time and loss.
struct LinkModel {
  std::string name = "link";  ///< label for reports
  double uplink_bps = 10e6;    ///< edge -> cloud, bits per second
  double downlink_bps = 10e6;  ///< cloud -> edge, bits per second
  double rtt_s = 0.02;         ///< round-trip time, seconds
  double loss = 0;             ///< packet loss probability in [0, 1)

  /// errc::invalid_argument for non-positive or non-finite bandwidths, a negative RTT or loss outside [0, 1).
  void validate() const {
    if (!(uplink_bps > 0) || !(downlink_bps > 0) || !std::isfinite(uplink_bps) || !std::isfinite(downlink_bps))
      fail(errc::invalid_argument, "link bandwidths must be finite and > 0");
    if (!(rtt_s >= 0) || !std::isfinite(rtt_s)) fail(errc::invalid_argument, "link RTT must be finite and >= 0");
    if (!(loss >= 0 && loss < 1)) fail(errc::invalid_argument, "link loss must be in [0, 1)");
  }
  /// Expected seconds to push `bytes` one way: serialisation at the link rate, inflated by the
  /// expected number of transmissions of each packet, 1 / (1 - loss).
  double uplink_seconds(double bytes) const { return bytes * 8 / uplink_bps / (1 - loss); }
  /// Expected seconds to push `bytes` cloud to edge, as uplink_seconds.
  double downlink_seconds(double bytes) const { return bytes * 8 / downlink_bps / (1 - loss); }
};

/// Online estimate of a link from the transfers the edge actually makes: exponentially weighted
/// moving averages of throughput and RTT. Throughput samples exclude the RTT estimate, so small
/// messages (all latency) do not drag the bandwidth estimate down.
class LinkEstimator {
 public:
  /// `alpha` is the weight of each new sample (0 < alpha <= 1); `initial` is the prior.
  explicit LinkEstimator(LinkModel initial = {}, double alpha = 0.2) : model_(std::move(initial)), alpha_(alpha) {
    model_.validate();
    if (!(alpha > 0 && alpha <= 1)) fail(errc::invalid_argument, "LinkEstimator alpha must be in (0, 1]");
  }

  /// A round trip with negligible payload took `seconds`.
  void observe_rtt(double seconds) {
    if (!(seconds >= 0) || !std::isfinite(seconds)) return;  // clock glitches are not evidence
    model_.rtt_s += alpha_ * (seconds - model_.rtt_s);
    ++rtt_samples_;
  }
  /// A request of `bytes_up` bytes was answered after `seconds` (send to reply, excluding the
  /// cloud's own compute time `server_seconds`). Samples too short to carry information (no
  /// more than the RTT) are ignored.
  void observe_transfer(std::size_t bytes_up, double seconds, double server_seconds = 0) {
    const double wire = seconds - server_seconds - model_.rtt_s;
    if (!(wire > 0) || bytes_up == 0 || !std::isfinite(wire)) return;
    const double bps = static_cast<double>(bytes_up) * 8 / wire;
    model_.uplink_bps += alpha_ * (bps - model_.uplink_bps);
    ++transfer_samples_;
  }

  const LinkModel& estimate() const noexcept { return model_; }  ///< the current estimate
  std::size_t rtt_samples() const noexcept { return rtt_samples_; }  ///< RTT observations so far
  /// Throughput observations so far.
  std::size_t transfer_samples() const noexcept { return transfer_samples_; }

 private:
  LinkModel model_;
  double alpha_;
  std::size_t rtt_samples_ = 0, transfer_samples_ = 0;
};

}  // namespace edgesplit
