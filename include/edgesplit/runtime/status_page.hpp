// edgesplit/runtime/status_page.hpp - a server's last minute: its counters sampled at a fixed
// interval, as JSON, and one self-contained HTML page that charts them (OipHttpServer serves
// both: GET / and GET /status).
//
// Needs nlohmann-json (part of EDGESPLIT_WITH_HTTP).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "edgesplit/runtime/cloud_server.hpp"
#include "edgesplit/runtime/metrics.hpp"

namespace edgesplit {

/// Counts of an HTTP front end that a status report shows beside the server's.
struct HttpCounts {
  std::uint64_t requests = 0;  ///< HTTP requests answered
  std::size_t in_flight = 0;   ///< HTTP requests being served now
};

/// A CloudServer's counters sampled every `interval` over a sliding `window`, so that a status
/// page opened now shows the last minute, not only what happened while it was open.
///
/// - sample() reads the server's atomics and histogram snapshots only: it never waits for a
///   batch. Each point holds a few numbers per served model; the window holds at most
///   window / interval + 1 points.
/// - json() reports the server now, the window as a whole (throughput, latency percentiles, mean
///   batch) per model and summed, and one series point per interval for the charts.
class StatusHistory {
 public:
  /// errc::invalid_argument unless 0 < interval <= window.
  explicit StatusHistory(const CloudServer& server, std::chrono::milliseconds interval = std::chrono::seconds(1),
                         std::chrono::milliseconds window = std::chrono::seconds(60))
      : server_(server), interval_(interval), window_(window), started_(std::chrono::steady_clock::now()) {
    if (interval.count() <= 0 || window < interval)
      fail(errc::invalid_argument, "StatusHistory needs 0 < interval <= window");
  }

  /// The sampling interval (the sampler calls sample() this often).
  std::chrono::milliseconds interval() const noexcept { return interval_; }

  /// Records the server's counters now; drops the points older than the window.
  void sample(const HttpCounts& http = {}) {
    Point p = take(http);
    std::lock_guard lock(mutex_);
    points_.push_back(std::move(p));
    const std::size_t keep = static_cast<std::size_t>(window_ / interval_) + 1;
    while (points_.size() > keep) points_.pop_front();
  }

  /// The report GET /status answers (docs/deployment.md describes its fields). `name` is the
  /// server's name; `http` the front end's counts now.
  nlohmann::json json(std::string_view name, const HttpCounts& http = {}) const {
    using nlohmann::json;
    const Point now = take(http);
    std::vector<Point> pts;
    {
      std::lock_guard lock(mutex_);
      pts.assign(points_.begin(), points_.end());
    }
    pts.push_back(now);
    const Point& first = pts.front();
    const double span_s = std::chrono::duration<double>(now.at - first.at).count();
    const ServerStats st = server_.stats();

    json models = json::array();
    Totals all_now, all_first;
    for (const ModelPoint& m : now.models) {
      const ModelPoint* was = find(first, m);
      const ModelPoint zero{m.model, m.split, {}};
      models.push_back(json{{"name", m.model},
                            {"version", std::to_string(m.split)},
                            {"requests", m.t.ok + m.t.failed},
                            {"errors", m.t.failed},
                            {"inferences", m.t.inferences},
                            {"executions", m.t.executions},
                            {"last_minute", window_json(m.t, (was ? *was : zero).t, span_s)}});
      all_now += m.t;
      if (was) all_first += was->t;
    }

    json series{{"t_s", json::array()},          {"requests_per_s", json::array()}, {"errors_per_s", json::array()},
                {"p50_us", json::array()},       {"p99_us", json::array()},         {"mean_batch", json::array()},
                {"queue_depth", json::array()},  {"memory_in_use", json::array()},  {"connections_open", json::array()},
                {"http_in_flight", json::array()}};
    for (std::size_t i = 1; i < pts.size(); ++i) {
      const Totals a = totals(pts[i - 1]), b = totals(pts[i]);
      const double dt = std::chrono::duration<double>(pts[i].at - pts[i - 1].at).count();
      const Totals d = b.since(a);
      series["t_s"].push_back(-std::chrono::duration<double>(now.at - pts[i].at).count());
      series["requests_per_s"].push_back(dt > 0 ? static_cast<double>(d.ok + d.failed) / dt : 0.0);
      series["errors_per_s"].push_back(dt > 0 ? static_cast<double>(d.failed) / dt : 0.0);
      series["p50_us"].push_back(d.total.quantile(0.5));
      series["p99_us"].push_back(d.total.quantile(0.99));
      series["mean_batch"].push_back(d.executions ? static_cast<double>(d.inferences) / static_cast<double>(d.executions) : 0.0);
      series["queue_depth"].push_back(pts[i].queue_depth);
      series["memory_in_use"].push_back(pts[i].memory_in_use);
      series["connections_open"].push_back(pts[i].connections_open);
      series["http_in_flight"].push_back(pts[i].http.in_flight);
    }

    return json{{"server", json{{"name", std::string(name)},
                                {"live", server_.healthy()},
                                {"ready", server_.ready()},
                                {"uptime_s", std::chrono::duration<double>(now.at - started_).count()}}},
                {"interval_s", std::chrono::duration<double>(interval_).count()},
                {"window_s", span_s},
                {"now", json{{"requests_total", all_now.ok + all_now.failed},
                             {"errors_total", all_now.failed},
                             {"rejected_overloaded", st.rejected_overloaded},
                             {"queue_depth", st.queue_depth},
                             {"memory_in_use", st.memory_in_use},
                             {"memory_peak", st.memory_peak},
                             {"memory_budget", server_.options().memory_budget},
                             {"connections_open", st.connections_open},
                             {"connections_total", st.connections_total},
                             {"connections_refused", st.connections_refused},
                             {"connections_dropped", st.connections_dropped},
                             {"http_requests", now.http.requests},
                             {"http_in_flight", now.http.in_flight}}},
                {"last_minute", window_json(all_now, all_first, span_s)},
                {"models", std::move(models)},
                {"series", std::move(series)}};
  }

 private:
  // A model's (or the server's) counters at one instant.
  struct Totals {
    std::uint64_t ok = 0, failed = 0, inferences = 0, executions = 0;
    DurationHistogram::Snapshot total;  // request durations
    Totals& operator+=(const Totals& o) noexcept {
      ok += o.ok;
      failed += o.failed;
      inferences += o.inferences;
      executions += o.executions;
      total += o.total;
      return *this;
    }
    Totals since(const Totals& e) const noexcept {
      const auto sub = [](std::uint64_t a, std::uint64_t b) { return a >= b ? a - b : 0; };
      return Totals{sub(ok, e.ok), sub(failed, e.failed), sub(inferences, e.inferences), sub(executions, e.executions),
                    total.since(e.total)};
    }
  };
  struct ModelPoint {
    std::string model;
    std::uint16_t split = 0;
    Totals t;
  };
  struct Point {
    std::chrono::steady_clock::time_point at;
    std::vector<ModelPoint> models;
    std::size_t queue_depth = 0, memory_in_use = 0, connections_open = 0;
    HttpCounts http;
  };

  Point take(const HttpCounts& http) const {
    Point p;
    p.at = std::chrono::steady_clock::now();
    for (const auto& e : server_.models().entries()) {
      const ModelMetrics& m = *e->metrics;
      Totals t;
      t.ok = m.ok.load(std::memory_order_relaxed);
      for (const auto& f : m.failed) t.failed += f.load(std::memory_order_relaxed);
      t.inferences = m.inferences.load(std::memory_order_relaxed);
      t.executions = m.executions.load(std::memory_order_relaxed);
      t.total = m.total_us.snapshot();
      p.models.push_back(ModelPoint{e->id.model_id, e->id.split, t});
    }
    const ServerStats st = server_.stats();
    p.queue_depth = st.queue_depth;
    p.memory_in_use = st.memory_in_use;
    p.connections_open = st.connections_open;
    p.http = http;
    return p;
  }
  static const ModelPoint* find(const Point& p, const ModelPoint& m) {
    for (const ModelPoint& q : p.models)
      if (q.split == m.split && q.model == m.model) return &q;
    return nullptr;
  }
  static Totals totals(const Point& p) {
    Totals t;
    for (const ModelPoint& m : p.models) t += m.t;
    return t;
  }
  static nlohmann::json window_json(const Totals& now, const Totals& then, double span_s) {
    const Totals d = now.since(then);
    return nlohmann::json{
        {"requests", d.ok + d.failed},
        {"errors", d.failed},
        {"requests_per_s", span_s > 0 ? static_cast<double>(d.ok + d.failed) / span_s : 0.0},
        {"p50_us", d.total.quantile(0.5)},
        {"p90_us", d.total.quantile(0.9)},
        {"p99_us", d.total.quantile(0.99)},
        {"mean_batch", d.executions ? static_cast<double>(d.inferences) / static_cast<double>(d.executions) : 0.0}};
  }

  const CloudServer& server_;
  std::chrono::milliseconds interval_, window_;
  std::chrono::steady_clock::time_point started_;
  mutable std::mutex mutex_;
  std::deque<Point> points_;
};

/// The status page GET / answers: one HTML document with its styles and script inline (no
/// external scripts, fonts or images), which fetches GET /status every second and draws the
/// last minute as small SVG charts. Elements carry ids (`requests-total`, `rps`, `p50`, `p99`,
/// `mean-batch`, `queue-depth`, `memory`, `connections`, `errors`, `models`, `chart-*`) and
/// `<body data-updates>` counts the reports drawn, for tests and scripts.
inline std::string_view status_page_html() noexcept {
  return R"html(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgesplit server</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{display:flex;gap:16px;align-items:baseline;padding:14px 20px;background:#1d2330;color:#fff}
header h1{font-size:18px;margin:0}
.badge{padding:2px 8px;border-radius:10px;font-size:12px;background:#888}
.badge.ok{background:#1f9d55}.badge.bad{background:#cc1f1a}
main{padding:16px 20px;display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:12px}
.card{background:#fff;border-radius:8px;padding:10px 12px;box-shadow:0 1px 2px #0002}
.card h2{font-size:12px;font-weight:600;color:#5a6272;margin:0 0 2px;text-transform:uppercase;letter-spacing:.04em}
.big{font-size:22px;font-weight:600}.sub{color:#5a6272;font-size:12px}
svg{width:100%;height:46px;display:block;margin-top:4px}
polyline{fill:none;stroke-width:1.5}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:right;padding:3px 6px;border-bottom:1px solid #e3e6ea}th:first-child,td:first-child{text-align:left}
.wide{grid-column:1/-1}
</style></head>
<body data-updates="0">
<header><h1 id="name">edgesplit</h1><span id="state" class="badge">connecting</span>
<span class="sub" id="uptime"></span><span class="sub">last minute, refreshed every second</span></header>
<main>
<div class="card"><h2>Requests / s</h2><div class="big" id="rps">-</div>
<div class="sub"><span id="requests-total">0</span> answered since start</div><svg id="chart-rps"></svg></div>
<div class="card"><h2>Latency (queue to answer)</h2><div class="big"><span id="p50">-</span> / <span id="p99">-</span></div>
<div class="sub">p50 / p99; p90 <span id="p90">-</span></div><svg id="chart-latency"></svg></div>
<div class="card"><h2>Mean batch</h2><div class="big" id="mean-batch">-</div>
<div class="sub">samples per forward pass</div><svg id="chart-batch"></svg></div>
<div class="card"><h2>Queue depth</h2><div class="big" id="queue-depth">-</div>
<div class="sub"><span id="rejected">0</span> refused overloaded</div><svg id="chart-queue"></svg></div>
<div class="card"><h2>Memory budget</h2><div class="big" id="memory">-</div>
<div class="sub">peak <span id="memory-peak">-</span></div><svg id="chart-memory"></svg></div>
<div class="card"><h2>Connections</h2><div class="big" id="connections">-</div>
<div class="sub">native open; HTTP in flight <span id="http-in-flight">0</span>; refused <span id="refused">0</span></div><svg id="chart-connections"></svg></div>
<div class="card"><h2>Errors</h2><div class="big" id="errors">-</div>
<div class="sub">in the last minute; <span id="errors-total">0</span> since start</div><svg id="chart-errors"></svg></div>
<div class="card wide"><h2>Models</h2><table><thead><tr><th>model</th><th>version (split)</th><th>requests</th><th>errors</th>
<th>req/s</th><th>p50</th><th>p99</th><th>mean batch</th></tr></thead><tbody id="models"></tbody></table></div>
</main>
<script>
"use strict";
const $ = id => document.getElementById(id);
const num = (v, d = 1) => (v >= 100 ? Math.round(v).toString() : v.toFixed(d));
const us = v => v >= 1e6 ? (v / 1e6).toFixed(2) + ' s' : v >= 1e3 ? (v / 1e3).toFixed(1) + ' ms' : Math.round(v) + ' \u00b5s';
const bytes = v => v >= 1 << 30 ? (v / (1 << 30)).toFixed(1) + ' GiB' : v >= 1 << 20 ? (v / (1 << 20)).toFixed(1) + ' MiB'
                 : v >= 1 << 10 ? (v / (1 << 10)).toFixed(1) + ' KiB' : v + ' B';
function chart(id, t, lines) {
  const svg = $(id), w = 240, h = 46, t0 = Math.min(-10, ...t);  // the span covered, 10 s at least
  let top = 0;
  for (const [ys] of lines) for (const y of ys) top = Math.max(top, y);
  top = top > 0 ? top : 1;
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.innerHTML = lines.map(([ys, color]) => '<polyline stroke="' + color + '" points="' +
    ys.map((y, i) => ((t[i] - t0) / -t0 * w).toFixed(1) + ',' + (h - 2 - y / top * (h - 4)).toFixed(1)).join(' ') +
    '"/>').join('');
}
function render(s) {
  const n = s.now, m = s.last_minute, z = s.series;
  $('name').textContent = s.server.name;
  $('state').textContent = s.server.ready ? 'ready' : s.server.live ? 'live, not ready' : 'stopping';
  $('state').className = 'badge ' + (s.server.ready ? 'ok' : 'bad');
  $('uptime').textContent = 'up ' + Math.round(s.server.uptime_s) + ' s';
  $('rps').textContent = num(m.requests_per_s);
  $('requests-total').textContent = n.requests_total;
  $('p50').textContent = us(m.p50_us); $('p90').textContent = us(m.p90_us); $('p99').textContent = us(m.p99_us);
  $('mean-batch').textContent = num(m.mean_batch, 2);
  $('queue-depth').textContent = n.queue_depth; $('rejected').textContent = n.rejected_overloaded;
  $('memory').textContent = bytes(n.memory_in_use) + ' of ' + bytes(n.memory_budget);
  $('memory-peak').textContent = bytes(n.memory_peak);
  $('connections').textContent = n.connections_open;
  $('http-in-flight').textContent = n.http_in_flight; $('refused').textContent = n.connections_refused;
  $('errors').textContent = m.errors; $('errors-total').textContent = n.errors_total;
  chart('chart-rps', z.t_s, [[z.requests_per_s, '#2563eb']]);
  chart('chart-latency', z.t_s, [[z.p50_us, '#2563eb'], [z.p99_us, '#dc2626']]);
  chart('chart-batch', z.t_s, [[z.mean_batch, '#7c3aed']]);
  chart('chart-queue', z.t_s, [[z.queue_depth, '#d97706']]);
  chart('chart-memory', z.t_s, [[z.memory_in_use, '#059669']]);
  chart('chart-connections', z.t_s, [[z.connections_open, '#0891b2'], [z.http_in_flight, '#9333ea']]);
  chart('chart-errors', z.t_s, [[z.errors_per_s, '#dc2626']]);
  const rows = $('models');
  rows.textContent = '';
  for (const x of s.models) {
    const r = rows.insertRow(), l = x.last_minute;
    for (const v of [x.name, x.version, x.requests, x.errors, num(l.requests_per_s), us(l.p50_us), us(l.p99_us), num(l.mean_batch, 2)])
      r.insertCell().textContent = v;
  }
  document.body.dataset.updates = +document.body.dataset.updates + 1;
}
async function tick() {
  try {
    const r = await fetch('/status', {cache: 'no-store'});
    render(await r.json());
  } catch (e) {
    $('state').textContent = 'unreachable'; $('state').className = 'badge bad';
  }
}
tick();
setInterval(tick, 1000);
</script></body></html>
)html";
}

}  // namespace edgesplit
