// edgesplit/runtime/oip_http.hpp - the Open Inference Protocol (KServe v2) over HTTP/REST, health
// routes and Prometheus metrics, as one more front end of a CloudServer.
//
// Needs cpp-httplib (Debian's libcpp-httplib-dev, a compiled library) and nlohmann-json: CMake
// option EDGESPLIT_WITH_HTTP, which defines EDGESPLIT_HAS_HTTP=1.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/core/thread_name.hpp"
#include "edgesplit/runtime/cloud_server.hpp"
#include "edgesplit/runtime/metrics.hpp"
#include "edgesplit/runtime/oip_core.hpp"
#include "edgesplit/runtime/server_metrics.hpp"
#include "edgesplit/runtime/status_page.hpp"
#include "edgesplit/wire/feature_codec.hpp"
#include "edgesplit/wire/oip_grpc.hpp"
#include "edgesplit/wire/protocol.hpp"

// After Eigen (through the headers above): httplib.h includes <resolv.h>, whose `_res` macro
// breaks Eigen's headers when they come later.
#include <httplib.h>

namespace edgesplit {

/// How the HTTP front end listens and bounds its requests.
struct HttpOptions {
  /// Threads serving HTTP connections: each holds one connection at a time (keep-alive
  /// included), so this also bounds the HTTP requests in flight and the bodies held at once.
  std::size_t threads = 8;
  /// Largest request body; larger ones are answered 413 before a byte of them is kept. 0: the
  /// server's frame cap (ServerOptions::limits.max_payload_bytes).
  std::size_t max_body_bytes = 0;
  /// The JSON part of a request is parsed into a document that takes more memory than its text;
  /// this many bytes per byte of JSON are reserved under the memory budget before parsing (a
  /// bound on nlohmann-json's worst case: one-byte values in arrays cost 16-byte nodes, doubled
  /// while a vector grows).
  std::size_t json_memory_factor = 32;
  /// A request not answered within this long is answered `timeout` (504): its native deadline.
  std::chrono::milliseconds request_timeout{30000};
  std::chrono::seconds read_timeout{5};   ///< a peer silent this long inside a request is dropped
  std::chrono::seconds write_timeout{5};  ///< a peer that takes no bytes this long is dropped
  std::chrono::seconds keep_alive_timeout{5};  ///< an idle keep-alive connection is closed after this
  /// Requests a kept-alive connection may carry before the server closes it (cpp-httplib's own
  /// default is 5: a busy client would reconnect every fifth request).
  std::size_t keep_alive_max_requests = 1000;
  std::string server_name = "edgesplit";  ///< `name` of the server metadata (GET /v2)
  /// The status page (GET /) and its report (GET /status) show the last `status_window`, sampled
  /// every `status_interval` by a thread of their own.
  std::chrono::milliseconds status_interval{1000};
  std::chrono::milliseconds status_window{60000};  ///< see status_interval
  /// Writes more metrics into GET /metrics after the server's and this front end's: those of
  /// another front end of the same server (OipGrpcServer::write_metrics), or the program's own.
  std::function<void(MetricsWriter&)> extra_metrics;
};

/// Counters of the HTTP front end (bodies only: HTTP headers are not counted).
struct HttpStats {
  std::size_t requests = 0;        ///< HTTP requests answered
  std::size_t in_flight = 0;       ///< HTTP requests being served now
  std::size_t bytes_received = 0;  ///< request body bytes read
  std::size_t bytes_sent = 0;      ///< response body bytes written
};

/// Serves a CloudServer's tails over the Open Inference Protocol (KServe v2 REST, the protocol of
/// Triton, KServe and Seldon), with health routes for Kubernetes probes and `/metrics` for
/// Prometheus, on its own port beside the native protocol, and a live status page at GET / (its
/// report, JSON, at GET /status: runtime/status_page.hpp).
///
/// - A model is a registered model id; its version is the split (the decimal split number). A
///   route without a version takes the model's lowest registered split.
/// - Inference requests become native INFER (or INFER_TENSORS, for a tail of several named inputs)
///   frames handed to the server's own RequestHandler, so they share its batcher, queue limits,
///   memory budget, deadlines and per-model metrics with every other front end: HTTP adds no
///   execution path of its own.
/// - Everything from the peer is checked before anything is sized from it: body length against
///   `max_body_bytes`, then the budget; the JSON document's worst-case size against the budget;
///   datatype, shape (rank, dimensions, overflow, the model's per-sample shape, the element cap),
///   and data or binary sizes against the shape, before a tensor is allocated. A failure is the
///   protocol's `{"error": "..."}` with 400 (404 for an unknown model or route, 413 for a body over
///   the cap, 503 when the server is full, 504 for a request past its deadline, 500 for the
///   server's own failures).
class OipHttpServer {
 public:
  /// Binds `host`:`port` (0 picks a free port) and starts serving `server`, which must outlive
  /// this object. errc::io_error when the address cannot be bound.
  OipHttpServer(CloudServer& server, const std::string& host, std::uint16_t port, HttpOptions options = {})
      : server_(server), opt_(std::move(options)), history_(server, opt_.status_interval, opt_.status_window) {
    if (opt_.threads == 0) fail(errc::invalid_argument, "HttpOptions::threads must be at least 1");
    if (opt_.max_body_bytes == 0) opt_.max_body_bytes = server_.options().limits.max_payload_bytes;
    routes();
    // httplib owns the queue it is given (its API takes a raw pointer to delete).
    http_.new_task_queue = [n = opt_.threads] { return new httplib::ThreadPool(n); };
    http_.set_payload_max_length(opt_.max_body_bytes);
    http_.set_read_timeout(static_cast<time_t>(opt_.read_timeout.count()), 0);
    http_.set_write_timeout(static_cast<time_t>(opt_.write_timeout.count()), 0);
    http_.set_keep_alive_timeout(static_cast<time_t>(opt_.keep_alive_timeout.count()));
    http_.set_keep_alive_max_count(opt_.keep_alive_max_requests);
    http_.set_tcp_nodelay(true);
    const int bound = port == 0 ? http_.bind_to_any_port(host) : (http_.bind_to_port(host, port) ? port : -1);
    if (bound <= 0) fail(errc::io_error, "cannot bind the HTTP front end to " + host + ":" + std::to_string(port));
    port_ = static_cast<std::uint16_t>(bound);
    history_.sample(counts());  // the window starts before the first request can arrive
    thread_ = std::thread([this] {
      name_this_thread("es-http");
      http_.listen_after_bind();
      listen_done_ = true;
    });
    sampler_ = std::thread([this] {
      name_this_thread("es-status");
      std::unique_lock lock(sampler_mutex_);
      while (!sampler_cv_.wait_for(lock, history_.interval(), [this] { return sampler_stop_; })) history_.sample(counts());
    });
  }
  OipHttpServer(const OipHttpServer&) = delete;
  OipHttpServer& operator=(const OipHttpServer&) = delete;
  ~OipHttpServer() { stop(); }

  /// The port it listens on (the one chosen when 0 was asked for).
  std::uint16_t port() const noexcept { return port_; }

  /// Stops listening, lets the requests being served finish, joins the threads. Idempotent.
  void stop() {
    std::lock_guard lock(stop_mutex_);
    if (!thread_.joinable()) return;
    {
      std::lock_guard sl(sampler_mutex_);
      sampler_stop_ = true;
    }
    sampler_cv_.notify_all();
    sampler_.join();
    // httplib's stop() does nothing before its loop runs, and must be called once: wait for the
    // loop to start (or to have failed), then stop it.
    while (!http_.is_running() && !listen_done_) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (!listen_done_) http_.stop();
    thread_.join();
  }

  /// A snapshot of the counters.
  HttpStats stats() const noexcept {
    HttpStats s;
    s.requests = requests_.load(std::memory_order_relaxed);
    s.in_flight = in_flight_.load(std::memory_order_relaxed);
    s.bytes_received = bytes_received_.load(std::memory_order_relaxed);
    s.bytes_sent = bytes_sent_.load(std::memory_order_relaxed);
    return s;
  }

  /// What GET /status answers: the server now and over the last status_window
  /// (StatusHistory::json).
  nlohmann::json status() const { return history_.json(opt_.server_name, counts()); }

  /// What GET /metrics answers: the server's metrics (write_server_metrics) and this front end's.
  std::string metrics_text() const {
    MetricsWriter w;
    write_server_metrics(w, server_);
    const HttpStats s = stats();
    w.family("edgesplit_http_requests_total", "counter", "HTTP requests answered, by status code");
    for (std::size_t c = 0; c < by_status_.size(); ++c)
      if (const std::uint64_t n = by_status_[c].load(std::memory_order_relaxed); n != 0)
        w.sample("edgesplit_http_requests_total", {{"status", std::to_string(c + 100)}}, n);
    w.family("edgesplit_http_requests_in_flight", "gauge", "HTTP requests being served now");
    w.sample("edgesplit_http_requests_in_flight", {}, std::uint64_t{s.in_flight});
    w.family("edgesplit_http_received_bytes_total", "counter", "Request body bytes read by the HTTP front end");
    w.sample("edgesplit_http_received_bytes_total", {}, std::uint64_t{s.bytes_received});
    w.family("edgesplit_http_sent_bytes_total", "counter", "Response body bytes written by the HTTP front end");
    w.sample("edgesplit_http_sent_bytes_total", {}, std::uint64_t{s.bytes_sent});
    if (opt_.extra_metrics) opt_.extra_metrics(w);
    return w.text();
  }

 private:
  using json = nlohmann::json;
  using Entry = ModelRegistry::Entry;
  using Core = detail::OipCore;

  // A failure to answer with the protocol's error object.
  struct Refusal {
    int status;
    std::string message;
  };

  // One input tensor of a request, once checked.
  struct Input {
    std::string name;
    std::vector<std::size_t> dims;
    std::size_t count = 0;
    const json* data = nullptr;  // JSON data, or
    std::optional<std::size_t> binary_offset;  // offset of its raw bytes after the JSON header
  };

  HttpCounts counts() const noexcept {
    return HttpCounts{requests_.load(std::memory_order_relaxed), in_flight_.load(std::memory_order_relaxed)};
  }

  static std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

  static int status_of(errc c) noexcept {
    switch (Core::fault_of(c)) {
      case Core::Fault::no_model: return 404;
      case Core::Fault::busy: return 503;
      case Core::Fault::late: return 504;
      case Core::Fault::server: return 500;
      case Core::Fault::request: break;
    }
    return 400;
  }

  void answer(httplib::Response& res, int status, const json& body) {
    res.status = status;
    res.set_content(dump(body), "application/json");
  }
  void refuse(httplib::Response& res, int status, const std::string& message) {
    answer(res, status, json{{"error", message}});
  }

  static json shape_json(const std::optional<Shape>& s) {
    json a = json::array({-1});
    if (s)
      for (std::size_t d : s->dims()) a.push_back(d);
    else
      a.push_back(-1);
    return a;
  }

  void routes() {
    http_.Get("/v2/health/live", [this](const httplib::Request&, httplib::Response& res) {
      served(res, [&] { answer(res, server_.healthy() ? 200 : 503, json{{"live", server_.healthy()}}); });
    });
    http_.Get("/v2/health/ready", [this](const httplib::Request&, httplib::Response& res) {
      served(res, [&] { answer(res, server_.ready() ? 200 : 503, json{{"ready", server_.ready()}}); });
    });
    http_.Get("/v2", [this](const httplib::Request&, httplib::Response& res) {
      served(res, [&] {
        answer(res, 200, json{{"name", opt_.server_name}, {"version", std::string(oip_server_version)},
                              {"extensions", json::array({"binary_tensor_data"})}});
      });
    });
    http_.Get("/", [this](const httplib::Request&, httplib::Response& res) {
      served(res, [&] {
        res.status = 200;
        res.set_content(std::string(status_page_html()), "text/html; charset=utf-8");
      });
    });
    http_.Get("/status", [this](const httplib::Request&, httplib::Response& res) {
      served(res, [&] { answer(res, 200, status()); });
    });
    http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      served(res, [&] {
        res.status = 200;
        res.set_content(metrics_text(), "text/plain; version=0.0.4; charset=utf-8");
      });
    });
    http_.Get(R"(/v2/models/([^/]+)(?:/versions/([^/]+))?/ready)", [this](const httplib::Request& req, httplib::Response& res) {
      served(res, [&] {
        const std::string name = req.matches[1], version = req.matches[2];
        const auto e = core_.find(name, version);
        if (!e) return refuse(res, 404, Core::no_model(name, version));
        const bool ready = server_.ready();
        answer(res, ready ? 200 : 503, json{{"name", name}, {"version", std::to_string(e->id.split)}, {"ready", ready}});
      });
    });
    http_.Get(R"(/v2/models/([^/]+)(?:/versions/([^/]+))?)", [this](const httplib::Request& req, httplib::Response& res) {
      served(res, [&] {
        const std::string name = req.matches[1], version = req.matches[2];
        const auto e = core_.find(name, version);
        if (!e) return refuse(res, 404, Core::no_model(name, version));
        json inputs = json::array();
        for (const auto& [in_name, shape] : Core::inputs_of(*e))
          inputs.push_back(json{{"name", in_name}, {"datatype", "FP32"}, {"shape", shape_json(shape)}});
        const auto [out_name, out_shape] = Core::output_of(*e);
        answer(res, 200,
               json{{"name", name},
                    {"versions", core_.versions(name)},
                    {"platform", "edgesplit"},
                    {"inputs", inputs},
                    {"outputs", json::array({json{{"name", out_name}, {"datatype", "FP32"}, {"shape", shape_json(out_shape)}}})}});
      });
    });
    http_.Post(R"(/v2/models/([^/]+)(?:/versions/([^/]+))?/infer)",
               [this](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader) {
                 served(res, [&] { infer(req, res, reader); });
               });
    // Routes that do not exist, bodies over the cap and anything else httplib answers itself:
    // the protocol's error object too.
    http_.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      const std::string what = res.status == 404   ? "no route " + req.method + " " + req.path
                               : res.status == 413 ? "request body over " + std::to_string(opt_.max_body_bytes) + " bytes"
                                                   : "HTTP " + std::to_string(res.status);
      res.set_content(dump(json{{"error", what}}), "application/json");
      count_status(res.status);
      bytes_sent_.fetch_add(res.body.size(), std::memory_order_relaxed);
    });
    http_.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
      refuse(res, 500, "the server failed on this request");
    });
  }

  // Runs a route's body with the counters around it; nothing escapes it.
  template <class F>
  void served(httplib::Response& res, F&& body) {
    in_flight_.fetch_add(1, std::memory_order_relaxed);
    try {
      body();
    } catch (const error& e) {
      refuse(res, status_of(e.code()), e.what());
    } catch (const std::bad_alloc&) {
      refuse(res, 503, "out of memory");
    } catch (...) {
      refuse(res, 500, "the server failed on this request");
    }
    in_flight_.fetch_sub(1, std::memory_order_relaxed);
    count_status(res.status);
    bytes_sent_.fetch_add(res.body.size(), std::memory_order_relaxed);
  }
  void count_status(int status) noexcept {
    requests_.fetch_add(1, std::memory_order_relaxed);
    if (status >= 100 && status < 600) by_status_[static_cast<std::size_t>(status - 100)].fetch_add(1, std::memory_order_relaxed);
  }

  // POST .../infer: body under the budget, JSON header (+ binary tensors), checked inputs, one
  // native frame through the server's handler, the answer as JSON or binary outputs.
  void infer(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader) {
    MemoryBudget& budget = server_.budget();
    // The body, reserved before it is read: by its declared length, or chunk by chunk.
    std::string body;
    MemoryBudget::Reservation body_held = budget.open();
    std::optional<Refusal> refusal;
    std::size_t declared = 0;
    if (req.has_header("Content-Length")) {
      declared = static_cast<std::size_t>(std::strtoull(req.get_header_value("Content-Length").c_str(), nullptr, 10));
      if (declared > opt_.max_body_bytes) {
        // Not even read past: answered at once, and the connection closed after the answer.
        res.set_header("Connection", "close");
        return refuse(res, 413, "request body of " + std::to_string(declared) + " bytes, over the cap of " +
                                    std::to_string(opt_.max_body_bytes));
      }
      if (!body_held.grow(declared))
        refusal = Refusal{503, "server memory budget full"};
      else
        body.reserve(declared);
    }
    reader([&](const char* data, std::size_t n) {
      bytes_received_.fetch_add(n, std::memory_order_relaxed);
      if (refusal) return true;  // read past the refused body, so the connection stays in step
      if (body.size() + n > opt_.max_body_bytes) {
        refusal = Refusal{413, "request body over " + std::to_string(opt_.max_body_bytes) + " bytes"};
        return true;
      }
      if (body.size() + n > body_held.bytes() && !body_held.grow(body.size() + n - body_held.bytes())) {
        refusal = Refusal{503, "server memory budget full"};
        return true;
      }
      body.append(data, n);
      return true;
    });
    if (refusal) return refuse(res, refusal->status, refusal->message);

    const std::string name = req.matches[1], version = req.matches[2];
    const auto e = core_.find(name, version);
    if (!e) return refuse(res, 404, Core::no_model(name, version));

    // The JSON header: the whole body, or its first Inference-Header-Content-Length bytes.
    std::size_t header_len = body.size();
    if (req.has_header("Inference-Header-Content-Length")) {
      const std::string v = req.get_header_value("Inference-Header-Content-Length");
      if (v.empty() || v.size() > 19 || !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return refuse(res, 400, "Inference-Header-Content-Length must be a decimal byte count");
      header_len = static_cast<std::size_t>(std::stoull(v));
      if (header_len > body.size())
        return refuse(res, 400, "Inference-Header-Content-Length of " + v + " bytes is more than the body's " +
                                    std::to_string(body.size()));
    }
    const std::string_view text(body.data(), header_len);
    const std::span<const std::byte> binary(reinterpret_cast<const std::byte*>(body.data()) + header_len, body.size() - header_len);
    bool ok = false;
    MemoryBudget::Reservation doc_held =
        budget.reserve(header_len > std::numeric_limits<std::size_t>::max() / opt_.json_memory_factor
                           ? std::numeric_limits<std::size_t>::max()
                           : header_len * opt_.json_memory_factor,
                       ok);
    if (!ok) return refuse(res, 503, "server memory budget full");
    json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded()) return refuse(res, 400, "the request is not valid JSON");
    if (!doc.is_object()) return refuse(res, 400, "the request must be a JSON object");

    std::string id;
    if (const auto it = doc.find("id"); it != doc.end()) {
      if (!it->is_string()) return refuse(res, 400, "'id' must be a string");
      id = it->get<std::string>();
    }
    std::vector<Input> inputs;
    if (auto r = parse_inputs(doc, *e, binary, inputs)) return refuse(res, r->status, r->message);
    bool binary_output = false;
    std::string out_name = Core::output_of(*e).name;
    if (auto r = parse_outputs(doc, out_name, binary_output)) return refuse(res, r->status, r->message);

    // The tensors, in the order the tail takes them, reserved before they are allocated.
    const auto want = Core::inputs_of(*e);
    std::size_t total = 0;
    for (const auto& in : inputs) total += in.count;
    MemoryBudget::Reservation tensors_held;
    if (auto r = core_.reserve_tensors(total, tensors_held)) return refuse(res, status_of(r->code), r->message);
    std::vector<Tensor<float>> tensors;
    tensors.reserve(inputs.size());
    for (const auto& w : want) {
      const auto in = std::find_if(inputs.begin(), inputs.end(), [&](const Input& i) { return i.name == w.name; });
      Tensor<float> t(Shape(std::span<const std::size_t>(in->dims)));
      if (in->binary_offset) {
        wire::oip::read_fp32(binary.subspan(*in->binary_offset, in->count * sizeof(float)), t.data());
      } else if (auto r = read_json_floats(*in->data, t.data(), in->count)) {
        return refuse(res, r->status, "input '" + in->name + "': " + r->message);
      }
      tensors.push_back(std::move(t));
    }
    inputs.clear();
    doc = json();
    doc_held.release();
    body = std::string();
    body_held.release();
    const auto outcome = core_.infer(*e, std::move(tensors), std::move(tensors_held),
                                     std::chrono::duration_cast<std::chrono::microseconds>(opt_.request_timeout),
                                     "http " + req.remote_addr);
    respond(res, outcome, *e, id, out_name, binary_output);
  }

  // Checks every input of `doc` against the tail `e` and the binary part; fills `inputs` in the
  // order of the request. Nothing is allocated from a declared size.
  std::optional<Refusal> parse_inputs(const json& doc, const Entry& e, std::span<const std::byte> binary,
                                      std::vector<Input>& inputs) const {
    const auto it = doc.find("inputs");
    if (it == doc.end() || !it->is_array() || it->empty()) return Refusal{400, "'inputs' must be a non-empty array"};
    const auto want = Core::inputs_of(e);
    if (auto r = Core::check_input_count(e, want, it->size())) return Refusal{400, *r};
    std::size_t binary_at = 0;
    std::optional<std::size_t> batch;
    for (const json& in : *it) {
      if (!in.is_object()) return Refusal{400, "every input must be an object"};
      Input x;
      const auto n = in.find("name");
      if (n == in.end() || !n->is_string()) return Refusal{400, "every input needs a string 'name'"};
      x.name = n->get<std::string>();
      const auto w = std::find_if(want.begin(), want.end(), [&](const auto& p) { return p.name == x.name; });
      if (w == want.end()) return Refusal{400, Core::no_input(e, want, x.name)};
      if (std::any_of(inputs.begin(), inputs.end(), [&](const Input& i) { return i.name == x.name; }))
        return Refusal{400, "input '" + x.name + "' given twice"};
      const auto dt = in.find("datatype");
      if (dt == in.end() || !dt->is_string()) return Refusal{400, "input '" + x.name + "' needs a string 'datatype'"};
      if (dt->get<std::string>() != "FP32")
        return Refusal{400, "input '" + x.name + "' has datatype " + dump(*dt) + "; the model takes FP32"};
      const auto sh = in.find("shape");
      if (sh == in.end() || !sh->is_array() || sh->size() < 2 || sh->size() > Shape::max_rank)
        return Refusal{400, "input '" + x.name + "' needs a 'shape' of 2 to " + std::to_string(Shape::max_rank) +
                                " dimensions, the batch first"};
      for (const json& d : *sh) {
        if (!d.is_number_unsigned() || d.get<std::uint64_t>() == 0 || d.get<std::uint64_t>() > UINT32_MAX)
          return Refusal{400, "input '" + x.name + "' has shape " + dump(*sh) + ": dimensions must be integers 1 to 2^32-1"};
        x.dims.push_back(static_cast<std::size_t>(d.get<std::uint64_t>()));
      }
      if (auto r = core_.check_shape(x.name, x.dims, *w, batch, x.count)) return Refusal{400, *r};
      const std::size_t bytes = x.count * sizeof(float);  // count <= max_elements: no overflow
      std::optional<std::uint64_t> binary_size;
      if (const auto p = in.find("parameters"); p != in.end()) {
        if (!p->is_object()) return Refusal{400, "input '" + x.name + "': 'parameters' must be an object"};
        if (const auto b = p->find("binary_data_size"); b != p->end()) {
          if (!b->is_number_unsigned()) return Refusal{400, "input '" + x.name + "': 'binary_data_size' must be a byte count"};
          binary_size = b->get<std::uint64_t>();
        }
      }
      const auto data = in.find("data");
      if (binary_size) {
        if (data != in.end()) return Refusal{400, "input '" + x.name + "' has both 'data' and 'binary_data_size'"};
        if (*binary_size != bytes)
          return Refusal{400, "input '" + x.name + "' declares " + std::to_string(*binary_size) + " bytes of binary data; shape " +
                                  dump(*sh) + " of FP32 takes " + std::to_string(bytes)};
        if (binary.size() - binary_at < bytes)
          return Refusal{400, "input '" + x.name + "': the binary data is truncated (" + std::to_string(binary.size() - binary_at) +
                                  " bytes left, " + std::to_string(bytes) + " declared)"};
        x.binary_offset = binary_at;
        binary_at += bytes;
      } else {
        if (data == in.end()) return Refusal{400, "input '" + x.name + "' has neither 'data' nor 'binary_data_size'"};
        std::size_t leaves = 0;
        if (auto r = count_leaves(*data, x.dims.size(), x.count, leaves)) return Refusal{400, "input '" + x.name + "': " + r->message};
        if (leaves != x.count)
          return Refusal{400, "input '" + x.name + "' has " + std::to_string(leaves) + " values; shape " + dump(*sh) + " takes " +
                                  std::to_string(x.count)};
        x.data = &*data;
      }
      inputs.push_back(std::move(x));
    }
    if (binary_at != binary.size())
      return Refusal{400, std::to_string(binary.size() - binary_at) + " bytes of binary data belong to no input"};
    return std::nullopt;
  }

  // The numbers of `data` (a flat array, or arrays nested at most `depth` deep), counted without
  // copying; stops past `cap`.
  static std::optional<Refusal> count_leaves(const json& data, std::size_t depth, std::size_t cap, std::size_t& n) {
    if (!data.is_array()) return Refusal{400, "'data' must be an array of numbers"};
    if (depth == 0) return Refusal{400, "'data' is nested deeper than the shape"};
    for (const json& v : data) {
      if (n > cap) return std::nullopt;
      if (v.is_array()) {
        if (auto r = count_leaves(v, depth - 1, cap, n)) return r;
      } else if (v.is_number()) {
        ++n;
      } else {
        return Refusal{400, "'data' holds " + std::string(v.type_name()) + " values; FP32 takes numbers"};
      }
    }
    return std::nullopt;
  }
  // Writes the numbers of `data` (counted by count_leaves) into `out` as floats.
  static std::optional<Refusal> read_json_floats(const json& data, float* out, std::size_t count) {
    std::size_t at = 0;
    std::optional<Refusal> bad;
    const auto walk = [&](const json& a, const auto& self) -> void {
      for (const json& v : a) {
        if (bad || at >= count) return;
        if (v.is_array()) {
          self(v, self);
          continue;
        }
        const double d = v.get<double>();
        if (!(std::fabs(d) <= static_cast<double>(std::numeric_limits<float>::max()))) {
          bad = Refusal{400, "value " + dump(v) + " is not a finite FP32 number"};
          return;
        }
        out[at++] = static_cast<float>(d);
      }
    };
    walk(data, walk);
    return bad;
  }
  // The requested outputs: none (all, as JSON), or the tail's one output by name, with
  // binary_data; a request-wide "binary_data_output" asks for binary too.
  static std::optional<Refusal> parse_outputs(const json& doc, const std::string& out_name, bool& binary) {
    if (const auto p = doc.find("parameters"); p != doc.end()) {
      if (!p->is_object()) return Refusal{400, "'parameters' must be an object"};
      if (const auto b = p->find("binary_data_output"); b != p->end()) {
        if (!b->is_boolean()) return Refusal{400, "'binary_data_output' must be true or false"};
        binary = b->get<bool>();
      }
    }
    const auto o = doc.find("outputs");
    if (o == doc.end()) return std::nullopt;
    if (!o->is_array()) return Refusal{400, "'outputs' must be an array"};
    for (const json& x : *o) {
      if (!x.is_object() || !x.contains("name") || !x["name"].is_string()) return Refusal{400, "every output needs a string 'name'"};
      if (x["name"].get<std::string>() != out_name)
        return Refusal{400, "the model has no output " + dump(x["name"]) + " (its output: '" + out_name + "')"};
      if (const auto p = x.find("parameters"); p != x.end()) {
        if (!p->is_object()) return Refusal{400, "an output's 'parameters' must be an object"};
        if (const auto b = p->find("binary_data"); b != p->end()) {
          if (!b->is_boolean()) return Refusal{400, "'binary_data' must be true or false"};
          binary = b->get<bool>();
        }
      }
    }
    return std::nullopt;
  }

  // Turns the native reply into the OIP answer.
  void respond(httplib::Response& res, const Core::Outcome& outcome, const Entry& e, const std::string& id, const std::string& out_name,
               bool binary) {
    if (outcome.failure) return refuse(res, status_of(*outcome.failure), outcome.message);
    const Tensor<float>& y = outcome.output;
    json shape = json::array();
    for (std::size_t d : y.shape().dims()) shape.push_back(d);
    json out{{"name", out_name}, {"datatype", "FP32"}, {"shape", shape}};
    json answer_doc{{"model_name", e.id.model_id}, {"model_version", std::to_string(e.id.split)}};
    if (!id.empty()) answer_doc["id"] = id;
    if (!binary) {
      json data = json::array();
      data.get_ref<json::array_t&>().reserve(y.size());
      for (std::size_t i = 0; i < y.size(); ++i) data.push_back(y.data()[i]);
      out["data"] = std::move(data);
      answer_doc["outputs"] = json::array({std::move(out)});
      return answer(res, 200, answer_doc);
    }
    const std::size_t bytes = y.size() * sizeof(float);
    out["parameters"] = json{{"binary_data_size", bytes}};
    answer_doc["outputs"] = json::array({std::move(out)});
    std::string text = dump(answer_doc);
    const std::size_t header_len = text.size();
    text.resize(header_len + bytes);
    wire::oip::write_fp32(std::span<const float>(y.data(), y.size()), text.data() + header_len);
    res.status = 200;
    res.set_header("Inference-Header-Content-Length", std::to_string(header_len));
    res.body = std::move(text);
    res.set_header("Content-Type", "application/octet-stream");
  }

  CloudServer& server_;
  Core core_{server_};
  HttpOptions opt_;
  httplib::Server http_;
  std::thread thread_;
  std::mutex stop_mutex_;
  StatusHistory history_;
  std::thread sampler_;  // samples history_ every status_interval until stop()
  std::mutex sampler_mutex_;
  std::condition_variable sampler_cv_;
  bool sampler_stop_ = false;
  std::uint16_t port_ = 0;
  std::atomic<bool> listen_done_{false};
  std::atomic<std::size_t> requests_{0}, in_flight_{0}, bytes_received_{0}, bytes_sent_{0};
  std::array<std::atomic<std::uint64_t>, 500> by_status_{};
};

}  // namespace edgesplit
