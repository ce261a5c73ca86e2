// edgesplit/runtime/edge_metrics.hpp - an edge client's counters, link estimate and plan as
// Prometheus metrics.
#pragma once

#include <cstdint>
#include <string>

#include "edgesplit/plan/link.hpp"
#include "edgesplit/runtime/adaptive_client.hpp"
#include "edgesplit/runtime/edge_client.hpp"
#include "edgesplit/runtime/metrics.hpp"

namespace edgesplit {

namespace detail {
inline void write_edge_counters(MetricsWriter& w, const std::string& model, const EdgeStats& s, const LinkModel& link) {
  using u64 = std::uint64_t;
  w.family("edgesplit_edge_requests_total", "counter",
           "Requests answered on the edge, by the path that answered: cloud, or fallback (the local model, or the "
           "typed error without one)");
  w.sample("edgesplit_edge_requests_total", {{"model", model}, {"path", "cloud"}}, u64{s.cloud_answers});
  w.sample("edgesplit_edge_requests_total", {{"model", model}, {"path", "fallback"}}, u64{s.fallbacks});
  w.family("edgesplit_edge_submitted_total", "counter", "Requests submitted to the edge client");
  w.sample("edgesplit_edge_submitted_total", {{"model", model}}, u64{s.submitted});
  w.family("edgesplit_edge_reconnects_total", "counter", "Connections to the cloud re-established after a loss");
  w.sample("edgesplit_edge_reconnects_total", {{"model", model}}, u64{s.reconnects});
  w.family("edgesplit_edge_connect_failures_total", "counter", "Attempts to connect to the cloud that failed");
  w.sample("edgesplit_edge_connect_failures_total", {{"model", model}}, u64{s.connect_failures});
  w.family("edgesplit_edge_late_replies_total", "counter", "Cloud answers that came after their request's fallback (dropped)");
  w.sample("edgesplit_edge_late_replies_total", {{"model", model}}, u64{s.late_replies});
  w.family("edgesplit_edge_weight_updates_total", "counter",
           "Weight pushes from the cloud, by result: applied, or refused (names or shapes that are not the head's)");
  w.sample("edgesplit_edge_weight_updates_total", {{"model", model}, {"result", "applied"}}, u64{s.weight_updates});
  w.sample("edgesplit_edge_weight_updates_total", {{"model", model}, {"result", "refused"}}, u64{s.weights_refused});
  w.family("edgesplit_edge_link_uplink_bits_per_second", "gauge", "Estimated edge-to-cloud bandwidth");
  w.sample("edgesplit_edge_link_uplink_bits_per_second", {{"model", model}}, link.uplink_bps);
  w.family("edgesplit_edge_link_downlink_bits_per_second", "gauge", "Estimated cloud-to-edge bandwidth");
  w.sample("edgesplit_edge_link_downlink_bits_per_second", {{"model", model}}, link.downlink_bps);
  w.family("edgesplit_edge_link_rtt_seconds", "gauge", "Estimated round-trip time of the link");
  w.sample("edgesplit_edge_link_rtt_seconds", {{"model", model}}, link.rtt_s);
}
}  // namespace detail

/// Writes what `edge` keeps (requests by answering path, reconnections, weight pushes, late
/// replies), its link estimate (bandwidths, RTT) and whether it is connected, as Prometheus
/// families named `edgesplit_edge_*` labelled `model` (docs/deployment.md lists them). Reads a
/// snapshot under the client's lock: no request waits for it.
inline void write_edge_metrics(MetricsWriter& w, const EdgeClient& edge, const std::string& model) {
  detail::write_edge_counters(w, model, edge.stats(), edge.link_estimate());
  w.family("edgesplit_edge_connected", "gauge", "1 while the edge client has a connection to the cloud");
  w.sample("edgesplit_edge_connected", {{"model", model}}, std::uint64_t{edge.connected() ? 1u : 0u});
}

/// The same for an AdaptiveClient (its counters summed over every plan's client), and the plan in
/// use: its split point and codec, its predicted latency, and how often re-planning changed it.
inline void write_edge_metrics(MetricsWriter& w, const AdaptiveClient& client, const std::string& model) {
  detail::write_edge_counters(w, model, client.stats(), client.link_estimate());
  const Plan p = client.plan();
  w.family("edgesplit_edge_plan_split", "gauge", "Split point of the plan in use (layers run on the edge), labelled with its codec");
  w.sample("edgesplit_edge_plan_split", {{"model", model}, {"codec", p.codec}}, std::uint64_t{p.split});
  w.family("edgesplit_edge_plan_predicted_latency_seconds", "gauge", "Latency the planner predicts for the plan in use");
  w.sample("edgesplit_edge_plan_predicted_latency_seconds", {{"model", model}}, p.latency_s);
  w.family("edgesplit_edge_plan_switches_total", "counter", "Times re-planning changed the plan");
  w.sample("edgesplit_edge_plan_switches_total", {{"model", model}}, std::uint64_t{client.switches()});
}

}  // namespace edgesplit
