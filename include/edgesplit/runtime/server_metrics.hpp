// edgesplit/runtime/server_metrics.hpp - a CloudServer's counters as Prometheus metrics.
#pragma once

#include <cstdint>
#include <string>

#include "edgesplit/core/error.hpp"
#include "edgesplit/runtime/cloud_server.hpp"
#include "edgesplit/runtime/metrics.hpp"

namespace edgesplit {

/// Writes what `server` keeps (per-model requests by outcome, inferences and forward passes,
/// queue/compute/total histograms; the native front end's connections and bytes; the memory
/// budget; the queue) as Prometheus families named `edgesplit_*` (docs/deployment.md lists
/// them). Reads snapshots and atomics only: a scrape never waits for a batch.
inline void write_server_metrics(MetricsWriter& w, const CloudServer& server) {
  const auto entries = server.models().entries();
  const ServerStats st = server.stats();
  const FrontEndStats fe = server.front_end_stats();
  using u64 = std::uint64_t;

  w.family("edgesplit_requests_total", "counter",
           "Requests answered, by model, version (the split) and outcome code (ok, or the error code)");
  for (const auto& e : entries) {
    const std::string version = std::to_string(e->id.split);
    const ModelMetrics& m = *e->metrics;
    w.sample("edgesplit_requests_total", {{"model", e->id.model_id}, {"version", version}, {"code", "ok"}},
             u64{m.ok.load(std::memory_order_relaxed)});
    for (std::size_t c = 0; c < ModelMetrics::code_count; ++c)
      if (const u64 n = m.failed[c].load(std::memory_order_relaxed); n != 0)
        w.sample("edgesplit_requests_total",
                 {{"model", e->id.model_id}, {"version", version}, {"code", to_string(static_cast<errc>(c))}}, n);
  }
  w.family("edgesplit_inferences_total", "counter", "Samples (batch rows) answered; divided by executions: the mean batch");
  for (const auto& e : entries)
    w.sample("edgesplit_inferences_total", {{"model", e->id.model_id}, {"version", std::to_string(e->id.split)}},
             u64{e->metrics->inferences.load(std::memory_order_relaxed)});
  w.family("edgesplit_executions_total", "counter", "Forward passes of the tail (batches executed)");
  for (const auto& e : entries)
    w.sample("edgesplit_executions_total", {{"model", e->id.model_id}, {"version", std::to_string(e->id.split)}},
             u64{e->metrics->executions.load(std::memory_order_relaxed)});
  const auto hist = [&](const char* name, const char* help, const DurationHistogram ModelMetrics::*field) {
    w.family(name, "histogram", help);
    for (const auto& e : entries)
      w.histogram(name, {{"model", e->id.model_id}, {"version", std::to_string(e->id.split)}}, ((*e->metrics).*field).snapshot());
  };
  hist("edgesplit_queue_duration_microseconds", "Time a request waited in the queue before its batch ran",
       &ModelMetrics::queue_us);
  hist("edgesplit_compute_duration_microseconds", "Time of the forward pass that answered a request",
       &ModelMetrics::compute_us);
  hist("edgesplit_request_duration_microseconds", "Time from queueing a request to its encoded answer",
       &ModelMetrics::total_us);

  w.family("edgesplit_received_bytes_total", "counter", "Bytes read from peers by the native TCP/TLS front end");
  w.sample("edgesplit_received_bytes_total", {{"front_end", "native"}}, u64{fe.bytes_received});
  w.family("edgesplit_sent_bytes_total", "counter", "Bytes written to peers by the native TCP/TLS front end");
  w.sample("edgesplit_sent_bytes_total", {{"front_end", "native"}}, u64{fe.bytes_sent});
  w.family("edgesplit_connections_open", "gauge", "Native connections open now (TCP, TLS, channels, in-process)");
  w.sample("edgesplit_connections_open", {}, u64{st.connections_open});
  w.family("edgesplit_connections_total", "counter", "Native connections accepted since start");
  w.sample("edgesplit_connections_total", {}, u64{st.connections_total});
  w.family("edgesplit_connections_refused_total", "counter",
           "Native connections refused at accept (connection limit, no file descriptor left)");
  w.sample("edgesplit_connections_refused_total", {}, u64{st.connections_refused});
  w.family("edgesplit_connections_dropped_total", "counter",
           "Native connections closed by the server (protocol violation, stall, idle, unread replies)");
  w.sample("edgesplit_connections_dropped_total", {}, u64{st.connections_dropped});

  w.family("edgesplit_memory_budget_bytes", "gauge", "Bytes the server may hold for its peers (ServerOptions::memory_budget)");
  w.sample("edgesplit_memory_budget_bytes", {}, u64{server.options().memory_budget});
  w.family("edgesplit_memory_in_use_bytes", "gauge", "Bytes held for peers now under the memory budget");
  w.sample("edgesplit_memory_in_use_bytes", {}, u64{st.memory_in_use});
  w.family("edgesplit_memory_peak_bytes", "gauge", "The most bytes held for peers at once since start");
  w.sample("edgesplit_memory_peak_bytes", {}, u64{st.memory_peak});
  w.family("edgesplit_queue_depth", "gauge", "Requests waiting in the batcher's queue now");
  w.sample("edgesplit_queue_depth", {}, u64{st.queue_depth});
  w.family("edgesplit_rejected_overloaded_total", "counter",
           "Requests refused overloaded: queue, per-connection cap, memory budget, shutdown");
  w.sample("edgesplit_rejected_overloaded_total", {}, u64{st.rejected_overloaded});
  w.family("edgesplit_hellos_refused_total", "counter", "Native HELLOs refused (unknown model, version, shape, fingerprint)");
  w.sample("edgesplit_hellos_refused_total", {}, u64{st.hellos_refused});
  w.family("edgesplit_ready", "gauge", "1 while the server takes work with at least one model registered");
  w.sample("edgesplit_ready", {}, u64{st.ready ? 1u : 0u});
}

}  // namespace edgesplit
