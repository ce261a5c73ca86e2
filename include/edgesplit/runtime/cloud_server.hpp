// edgesplit/runtime/cloud_server.hpp - the cloud side: runs registered tails for many edges.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/thread_name.hpp"
#include "edgesplit/nn/sequential.hpp"
#include "edgesplit/runtime/channel.hpp"
#include "edgesplit/runtime/deployment.hpp"
#include "edgesplit/runtime/dynamic_batcher.hpp"
#include "edgesplit/runtime/local_connection.hpp"
#include "edgesplit/runtime/memory_budget.hpp"
#include "edgesplit/runtime/model_registry.hpp"
#include "edgesplit/runtime/request_handler.hpp"
#include "edgesplit/runtime/server_options.hpp"
#include "edgesplit/runtime/socket_front_end.hpp"
#include "edgesplit/transport/clock.hpp"
#include "edgesplit/transport/tcp.hpp"
#include "edgesplit/wire/feature_codec.hpp"
#include "edgesplit/wire/protocol.hpp"

namespace edgesplit {

/// Counters of a server's life so far, for health checks, tests and benchmarks.
struct ServerStats {
  std::size_t connections_open = 0;     ///< connections now open
  std::size_t connections_total = 0;    ///< connections accepted since start
  std::size_t connections_dropped = 0;  ///< closed by the server: protocol violation, stall, idle, unread replies
  std::size_t connections_refused = 0;  ///< refused at accept: connection limit or no file descriptor left
  std::size_t requests = 0;             ///< INFER frames accepted into the queue
  std::size_t responses = 0;            ///< RESPONSE frames handed to their connection
  std::size_t batches = 0;              ///< forward passes run
  std::size_t rejected_overloaded = 0;  ///< requests refused `overloaded`: queue, per-source cap, memory budget, shutdown
  std::size_t expired = 0;              ///< answered `timeout` unrun: their deadline passed while queued
  std::size_t request_errors = 0;       ///< requests answered ERROR (unknown model, bad shape, non-finite output, failing layer)
  std::size_t hellos_refused = 0;       ///< HELLOs refused (unknown model, version, shape or fingerprint mismatch)
  std::size_t queue_depth = 0;          ///< requests waiting now
  std::size_t memory_in_use = 0;        ///< bytes held for peers now (ServerOptions::memory_budget bounds it)
  std::size_t memory_peak = 0;          ///< the most bytes held for peers at once
  bool ready = false;                   ///< accepting work with at least one model registered
};

/// Serves split inference: edges connect (TCP through listen(), or any transport through
/// serve()), say HELLO, then send INFER frames with features for a registered tail (model id,
/// split point). A DynamicBatcher merges queued requests for the same tail, round-robin across
/// connections, into forward passes on `workers` threads; each reply is written by the worker
/// that computed it.
///
/// - No request can end a thread or the process: whatever a request causes is answered to that
///   request as a typed ERROR, and its batch's other requests are still answered.
/// - Memory held for peers is bounded by `memory_budget`; TCP connections live on one event loop
///   with limits on their number, their idleness, their stalls and their unread replies
///   (docs/deployment.md lists every limit and its default).
/// - A full queue, a connection over its share or a full budget answers `overloaded` at once; a
///   request whose deadline passed while queued is answered `timeout` and never computed.
/// - A peer that sends a malformed frame, stalls inside one, or disconnects loses only its own
///   connection; the others keep being served.
/// - Weight updates replace a tail atomically: every batch runs entirely on one version.
/// - `shutdown()` stops accepting, answers what is queued, then closes every connection.
class CloudServer {
 public:
  /// errc::invalid_argument for zero workers, batch or queue capacity, or a budget smaller than
  /// one largest frame; starts the worker threads. Time (deadlines, batching waits) is read on `clock`.
  explicit CloudServer(ServerOptions options = {}, const Clock& clock = SteadyClock::instance())
      : opt_(checked(std::move(options))),
        clock_(clock),
        budget_(opt_.memory_budget),
        batcher_(registry_, opt_, clock_),
        handler_(registry_, batcher_, budget_, opt_, clock_) {}
  CloudServer(const CloudServer&) = delete;
  CloudServer& operator=(const CloudServer&) = delete;
  ~CloudServer() { shutdown(std::chrono::milliseconds(0)); }

  /// Registers (or replaces) the tail served under (id.model_id, id.split).
  void register_model(const wire::ModelIdentity& id, Sequential<float> tail) { registry_.add(id, std::move(tail)); }
  /// Registers a graph's tail (Graph::split(k) or cut()): id.split is the cut's number of head
  /// nodes. A tail of several inputs takes INFER_TENSORS requests naming them.
  void register_model(const wire::ModelIdentity& id, Graph<float> tail) { registry_.add(id, as_sequential(std::move(tail))); }
  /// Registers `tail`, the cloud's part of `deployment.cut(model)`, under the deployment's model
  /// id, version and split (its codec is the edge's business: the server reads every encoding).
  void register_model(const Deployment& deployment, Sequential<float> tail) {
    register_model(deployment.identity(), std::move(tail));
  }
  /// Registers a graph's tail, the cloud's part of `deployment.cut(graph)`.
  void register_model(const Deployment& deployment, Graph<float> tail) {
    register_model(deployment.identity(), std::move(tail));
  }

  /// Replaces the weights of a registered tail (names and shapes as Sequential::parameters gives
  /// them) and sets its minor version; refuses the whole update with a typed error naming the
  /// tensor that does not match. Batches already running finish on the old weights.
  void update_weights(const std::string& model_id, std::uint16_t split, std::uint32_t minor,
                      std::span<const wire::NamedTensor> tensors) {
    registry_.update_weights(model_id, split, minor, tensors);
  }

  /// Replaces the weights of `deployment`'s tail with `tail`'s (the cloud's part of a model that
  /// collaborative training updated) and sets its minor version to `deployment.minor`.
  void update_weights(const Deployment& deployment, const Sequential<float>& tail) {
    std::vector<wire::NamedTensor> tensors;
    append_parameters(tensors, tail, "");
    const wire::ModelIdentity id = deployment.identity();
    update_weights(id.model_id, id.split, id.minor, tensors);
  }

  /// Serves one connection over any transport, on a reader thread of its own, until it closes.
  /// For in-process and simulated links; network connections belong to listen().
  void serve(Channel channel) {
    auto c = std::make_shared<ChannelConnection>();
    c->channel = std::move(channel);
    c->send_timeout = opt_.send_timeout;
    c->session.peer = "channel";
    c->session.on_hello = [raw = c.get()](const wire::ModelIdentity& id) {
      std::lock_guard lock(raw->hello_mutex);
      raw->greeted_model = id.model_id;
    };
    std::lock_guard lock(channels_mutex_);
    if (stopping_) {
      c->channel.close();
      return;
    }
    reap_locked();
    c->session.source = batcher_.open_source(c);
    channels_.push_back(c);
    c->reader = std::thread([this, c] {
      name_this_thread("es-reader");
      read_loop(c);
    });
    ++channels_total_;
  }
  /// Serves one more connection over any Transport (wrapped in a Channel); returns at once.
  template <Transport T>
  void serve(T transport) {
    serve(Channel(std::move(transport)));
  }

  /// A connection from this process whose server half runs on the thread that sends: a batch
  /// that is due at once (no other connection could join it) runs inside send(), and the reply
  /// goes to the edge's receive() or, once an EdgeClient has asked for it (Channel::push_to),
  /// straight to the client on the thread that made it. The in-process connection with the
  /// fewest thread hand-offs (none for a lone request); use it as an EdgeClient's connector when
  /// edge and cloud share a process.
  /// `unreachable` after shutdown.
  Channel connect_in_process() {
    auto st = std::make_shared<LocalConnection::State>(handler_, batcher_, opt_);
    st->session.peer = "in-process";
    st->session.run_inline = true;
    std::lock_guard lock(channels_mutex_);
    if (stopping_) fail(errc::unreachable, "the server has shut down");
    std::erase_if(locals_, [](const std::weak_ptr<LocalConnection::State>& w) { return w.expired(); });
    st->session.source = batcher_.open_source(st);
    locals_.push_back(st);
    ++channels_total_;
    return Channel(LocalConnection(st));
  }

  /// Accepts TCP connections on `listener` until shutdown, on the server's event loop.
  void listen(TcpListener listener) {
    std::lock_guard lock(channels_mutex_);
    if (stopping_) return;
    if (!front_) front_ = std::make_unique<SocketFrontEnd>(handler_, batcher_, budget_, opt_);
    front_->add_listener(std::move(listener));
  }

#if EDGESPLIT_HAS_TLS
  /// Accepts TLS connections on `listener` until shutdown, with `tls` (a server context: its
  /// certificate, and with TlsOptions::require_client_certificate the client CAs it admits).
  void listen(TcpListener listener, TlsContext tls) {
    std::lock_guard lock(channels_mutex_);
    if (stopping_) return;
    if (!front_) front_ = std::make_unique<SocketFrontEnd>(handler_, batcher_, budget_, opt_);
    front_->add_listener(std::move(listener), std::move(tls));
  }
#endif

  /// Sends `edge_model`'s parameters (the head the edges of `deployment` run, as collaborative
  /// training updated it: names and shapes as parameters() gives them) to every edge whose HELLO
  /// named the deployment's model. Returns how many it went to; an edge whose head does not
  /// match refuses the whole push and keeps its weights (EdgeStats::weights_refused).
  std::size_t push_weights(const Deployment& deployment, const Sequential<float>& edge_model) {
    std::vector<wire::NamedTensor> tensors;
    append_parameters(tensors, edge_model, "");
    return push_weights(deployment.identity(), tensors);
  }
  /// Sends the head's parameters and those of the edges' Fallback model (an exit head trained
  /// with MultiExit, or a whole edge model trained with Collaborative) in one push: the fallback's
  /// go as `fallback/<name>`. An edge without a fallback, or whose fallback does not match,
  /// refuses the whole push.
  std::size_t push_weights(const Deployment& deployment, const Sequential<float>& head,
                           const Sequential<float>& fallback) {
    std::vector<wire::NamedTensor> tensors;
    append_parameters(tensors, head, "");
    append_parameters(tensors, fallback, wire::fallback_weights_prefix);
    return push_weights(deployment.identity(), tensors);
  }
  /// Sends WEIGHTS (the edge model's updated parameters) to every edge whose HELLO named
  /// `id.model_id`: the parameter sync of collaborative training. Returns how many it went to.
  std::size_t push_weights(const wire::ModelIdentity& id, std::span<const wire::NamedTensor> tensors) {
    std::vector<std::byte> frame;
    wire::encode_weights(frame, 0, id, tensors);
    std::size_t sent = 0;
    std::vector<std::shared_ptr<ChannelConnection>> targets;
    std::vector<std::shared_ptr<LocalConnection::State>> locals;
    SocketFrontEnd* front = nullptr;
    {
      std::lock_guard lock(channels_mutex_);
      for (auto& c : channels_)
        if (c->open && c->hello_model() == id.model_id) targets.push_back(c);
      for (auto& w : locals_)
        if (auto l = w.lock()) locals.push_back(std::move(l));
      front = front_.get();  // lives as long as the server
    }
    for (auto& l : locals) {
      std::lock_guard lock(l->send_mutex);
      if (l->handler && l->session.greeted && l->session.model.model_id == id.model_id) {
        l->deliver(frame, {});
        ++sent;
      }
    }
    if (front) sent += front->broadcast(id.model_id, frame);
    for (auto& c : targets) {
      try {
        c->channel.send(frame, deadline_after(opt_.send_timeout));
        ++sent;
      } catch (const error&) {
      }
    }
    return sent;
  }

  /// A snapshot of the counters.
  ServerStats stats() const {
    ServerStats s;
    const BatcherStats b = batcher_.stats();
    const HandlerStats h = handler_.stats();
    s.requests = b.requests;
    s.responses = b.responses;
    s.batches = b.batches;
    s.expired = b.expired;
    s.queue_depth = b.queue_depth;
    s.rejected_overloaded = b.rejected_overloaded + h.rejected_budget;
    s.request_errors = b.request_errors + h.request_errors;
    s.hellos_refused = h.hellos_refused;
    s.memory_in_use = budget_.in_use();
    s.memory_peak = budget_.peak();
    std::lock_guard lock(channels_mutex_);
    for (const auto& c : channels_) s.connections_open += c->open ? 1 : 0;
    for (const auto& w : locals_)
      if (auto l = w.lock()) {
        std::lock_guard ll(l->mutex);
        s.connections_open += l->closed ? 0 : 1;
      }
    s.connections_total = channels_total_;
    s.connections_dropped = channels_dropped_.load();
    if (front_) {
      const FrontEndStats f = front_->stats();
      s.connections_open += f.connections_open;
      s.connections_total += f.connections_total;
      s.connections_dropped += f.dropped_idle + f.dropped_stalled + f.dropped_unread + f.dropped_protocol;
      s.connections_refused = f.refused_limit + f.refused_descriptors;
      s.rejected_overloaded += f.rejected_budget;
    }
    s.ready = !stopping_ && !registry_.empty();
    return s;
  }
  /// The event loop's own counters (connections, bytes, why peers were dropped); zeros before listen().
  FrontEndStats front_end_stats() const {
    std::lock_guard lock(channels_mutex_);
    return front_ ? front_->stats() : FrontEndStats{};
  }
  /// Alive (the server object exists and has not shut down).
  bool healthy() const noexcept { return !stopping_; }
  /// Ready to take work: alive, with at least one model registered.
  bool ready() const { return !stopping_ && !registry_.empty(); }

  /// The tails this server runs.
  ModelRegistry& models() noexcept { return registry_; }
  /// The tails this server runs, for listings (metadata, metrics).
  const ModelRegistry& models() const noexcept { return registry_; }
  /// The batcher every front end feeds: a front end of its own (a ZeroMQ worker) opens sources
  /// on it and submits decoded requests.
  DynamicBatcher& batcher() noexcept { return batcher_; }
  /// The memory budget requests are reserved under.
  MemoryBudget& budget() noexcept { return budget_; }
  /// The protocol handler the built-in front ends use.
  RequestHandler& handler() noexcept { return handler_; }
  /// The server's options, as validated.
  const ServerOptions& options() const noexcept { return opt_; }
  /// The clock deadlines and batching waits are read on.
  const Clock& clock() const noexcept { return clock_; }

  /// Stops accepting connections and requests, answers what is queued (for at most `drain`),
  /// writes the replies still waiting (for at most a second more), then closes every
  /// connection and joins every thread. Idempotent.
  void shutdown(std::chrono::milliseconds drain = std::chrono::seconds(5)) {
    SocketFrontEnd* front = nullptr;
    {
      std::lock_guard lock(channels_mutex_);
      if (stopped_) return;
      stopped_ = true;
      stopping_ = true;
      front = front_.get();
    }
    if (front) front->stop_accepting();
    batcher_.stop(drain);
    if (front) front->finish(std::min<std::chrono::milliseconds>(std::chrono::seconds(1), drain));
    readers_stop_ = true;
    std::vector<std::shared_ptr<ChannelConnection>> conns;
    {
      std::lock_guard lock(channels_mutex_);
      conns.swap(channels_);
    }
    for (auto& c : conns) c->channel.close();
    for (auto& c : conns)
      if (c->reader.joinable()) c->reader.join();
    std::vector<std::weak_ptr<LocalConnection::State>> locals;
    {
      std::lock_guard lock(channels_mutex_);
      locals.swap(locals_);
    }
    for (auto& w : locals)
      if (auto l = w.lock()) {
        std::lock_guard lock(l->send_mutex);  // waits for a send in progress, then none can start
        l->detach();
      }
  }

 private:
  static void append_parameters(std::vector<wire::NamedTensor>& tensors, const Sequential<float>& model,
                                std::string_view prefix) {
    for (const auto& p : model.parameters()) {
      Tensor<float> value(p.value.shape());
      copy(TensorView<const float>(p.value), value.view());
      tensors.push_back({std::string(prefix) + p.name, std::move(value)});
    }
  }

  // A connection served through serve(Channel): its reader thread, and the sink its replies go to.
  struct ChannelConnection final : ReplySink {
    Channel channel;
    std::thread reader;
    std::atomic<bool> open{true};
    std::chrono::milliseconds send_timeout{};
    Session session;  // the reader thread's
    std::mutex hello_mutex;
    std::string greeted_model;  // set by the session's on_hello, for push_weights
    std::atomic<std::size_t>* dropped = nullptr;

    std::string hello_model() {
      std::lock_guard lock(hello_mutex);
      return greeted_model;
    }
    // Replies never wait for the peer: a transport that cannot take one at once has a peer that
    // does not read, and the connection is closed.
    void deliver(std::span<const std::byte> frame, MemoryBudget::Reservation) override {
      if (!open) return;
      try {
        channel.send(frame, deadline_after(Clock::duration::zero()));
      } catch (const error& e) {
        if (e.code() == errc::timeout && open.exchange(false)) {
          if (dropped) dropped->fetch_add(1);
          channel.close();
        }
      }
    }
  };

  static ServerOptions checked(ServerOptions o) {
    if (o.workers == 0 || o.max_batch == 0 || o.queue_capacity == 0 || o.max_pending_per_source == 0)
      fail(errc::invalid_argument, "CloudServer needs workers, max_batch, queue_capacity and max_pending_per_source >= 1");
    if (o.memory_budget < o.limits.max_payload_bytes)
      fail(errc::invalid_argument, "CloudServer memory_budget of " + std::to_string(o.memory_budget) +
                                       " bytes is smaller than one frame (limits.max_payload_bytes = " +
                                       std::to_string(o.limits.max_payload_bytes) + ")");
    return o;
  }

  // Joins the threads of channel connections that have ended (channels_mutex_ held).
  void reap_locked() {
    std::erase_if(channels_, [](const std::shared_ptr<ChannelConnection>& c) {
      if (c->open || !c->reader.joinable()) return false;
      c->reader.join();
      return true;
    });
  }

  void read_loop(const std::shared_ptr<ChannelConnection>& c) {
    c->dropped = &channels_dropped_;
    try {
      wire::FeatureDecoder codec(opt_.limits);
      Message m;
      const auto opened = std::chrono::steady_clock::now();
      std::chrono::steady_clock::time_point stalled_since{};
      bool stalled = false;
      while (!readers_stop_ && c->open) {
        if (!c->channel.receive(deadline_after(std::chrono::milliseconds(50)), m)) {
          const auto now = std::chrono::steady_clock::now();
          if (c->channel.mid_message()) {
            if (!stalled) stalled_since = now, stalled = true;
            if (now - stalled_since > opt_.stall_timeout) break;
          } else {
            stalled = false;
            if (!c->session.greeted && now - opened > opt_.handshake_timeout) break;
          }
          continue;
        }
        stalled = false;
        if (handler_.handle(c->session, m.view(), codec) == RequestHandler::Verdict::close) break;
      }
      if (!readers_stop_ && c->open) channels_dropped_.fetch_add(1);
    } catch (...) {
      // peer closed, the transport failed, or anything else: this connection ends, nothing else does
    }
    c->open = false;
    batcher_.close_source(c->session.source);
    c->session.source.reset();  // the source holds the connection as its sink
    c->channel.close();
  }

  const ServerOptions opt_;
  const Clock& clock_;
  ModelRegistry registry_;
  MemoryBudget budget_;
  DynamicBatcher batcher_;
  RequestHandler handler_;

  mutable std::mutex channels_mutex_;
  std::unique_ptr<SocketFrontEnd> front_;
  std::vector<std::shared_ptr<ChannelConnection>> channels_;
  std::vector<std::weak_ptr<LocalConnection::State>> locals_;  // connect_in_process()
  std::size_t channels_total_ = 0;
  std::atomic<std::size_t> channels_dropped_{0};
  std::atomic<bool> stopping_{false}, readers_stop_{false};
  bool stopped_ = false;
};

}  // namespace edgesplit
