// edgesplit/runtime/cloud_server.hpp - the cloud side: runs registered tails for many edges.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/core/thread_name.hpp"
#include "edgesplit/nn/sequential.hpp"
#include "edgesplit/runtime/channel.hpp"
#include "edgesplit/transport/tcp.hpp"
#include "edgesplit/wire/feature_codec.hpp"
#include "edgesplit/wire/protocol.hpp"

namespace edgesplit {

/// How a CloudServer batches, queues and bounds its work.
struct ServerOptions {
  std::size_t workers = 1;          ///< threads running tails
  std::size_t max_batch = 32;       ///< requests merged into one forward pass (1: no batching)
  /// Longest a request waits for company. A worker waits only while some connected edge has
  /// no request queued or running (so more could come); when every connection already has one
  /// in the batch or the queue, waiting cannot help and the batch runs at once.
  std::chrono::microseconds max_queue_delay{1000};
  std::size_t queue_capacity = 1024;  ///< queued requests before new ones get `overloaded`
  std::chrono::milliseconds stall_timeout{5000};  ///< a peer stuck inside a frame this long is dropped
  /// For writing one reply; a peer that takes none within it is dropped (it is not reading).
  std::chrono::milliseconds send_timeout{5000};
  int response_bits = wire::raw_f32_bits;  ///< replies carry exact floats unless told otherwise
  wire::DecodeLimits limits{};      ///< caps on every incoming frame
};

/// Counters of a server's life so far, for health checks, tests and benchmarks.
struct ServerStats {
  std::size_t connections_open = 0;  ///< connections now open
  std::size_t connections_total = 0;  ///< connections accepted since start
  std::size_t connections_dropped = 0;  ///< closed by the server for a protocol violation or stall
  std::size_t requests = 0;             ///< INFER frames accepted into the queue
  std::size_t responses = 0;  ///< RESPONSE frames sent
  std::size_t batches = 0;              ///< forward passes run
  std::size_t rejected_overloaded = 0;  ///< requests refused because the queue was full
  std::size_t expired = 0;              ///< dropped unrun because their deadline had passed
  std::size_t request_errors = 0;       ///< requests answered with ERROR (unknown model, bad shape)
  std::size_t queue_depth = 0;  ///< requests waiting now
  bool ready = false;                   ///< accepting work with at least one model registered
};

/// Serves split inference: edges send INFER frames with features for a registered tail
/// (model id, split point); worker threads merge queued requests for the same tail into one
/// batch (up to `max_batch`, waiting at most `max_queue_delay`) and run it; a reply thread sends
/// the answers, so workers spend their time on forward passes.
///
/// - A full queue answers `overloaded` at once; a request whose deadline passed while queued is
///   answered `timeout` and never computed.
/// - A peer that sends a malformed frame, stalls inside one, or disconnects loses only its own
///   connection; the others keep being served.
/// - Weight updates replace a tail atomically: every batch runs entirely on one version.
/// - `shutdown()` stops accepting, answers what is queued, then closes every connection.
class CloudServer {
  struct Connection;
  struct Entry {
    wire::ModelIdentity id;
    Sequential<float> model;
    std::uint64_t generation = 0;
  };
  using Key = std::pair<std::string, std::uint16_t>;
  using Clock = std::chrono::steady_clock;

 public:
  /// errc::invalid_argument for zero workers, batch or queue capacity; starts the worker threads.
  explicit CloudServer(ServerOptions options = {}) : opt_(options) {
    if (opt_.workers == 0 || opt_.max_batch == 0 || opt_.queue_capacity == 0)
      fail(errc::invalid_argument, "CloudServer needs workers, max_batch and queue_capacity >= 1");
    for (std::size_t i = 0; i < opt_.workers; ++i)
      workers_.emplace_back([this] {
        name_this_thread("es-worker");
        work();
      });
    replier_ = std::thread([this] {
      name_this_thread("es-replies");
      reply_loop();
    });
  }
  CloudServer(const CloudServer&) = delete;
  CloudServer& operator=(const CloudServer&) = delete;
  ~CloudServer() { shutdown(std::chrono::milliseconds(0)); }

  /// Registers (or replaces) the tail served under (id.model_id, id.split).
  void register_model(const wire::ModelIdentity& id, Sequential<float> tail) {
    if (id.model_id.empty() || id.model_id.size() > wire::max_model_id_bytes)
      fail(errc::invalid_argument, "model id must be 1.." + std::to_string(wire::max_model_id_bytes) + " bytes");
    auto e = std::make_shared<Entry>(Entry{id, std::move(tail), 0});
    std::lock_guard lock(registry_mutex_);
    e->generation = ++generation_;
    registry_[{id.model_id, id.split}] = std::move(e);
  }

  /// Replaces the weights of a registered tail (same names and shapes, see Sequential::parameters)
  /// and sets its minor version. Batches already running finish on the old weights.
  void update_weights(const std::string& model_id, std::uint16_t split, std::uint32_t minor,
                      std::span<const wire::NamedTensor> tensors) {
    std::shared_ptr<const Entry> old = find({model_id, split});
    if (!old) fail(errc::invalid_argument, "no model '" + model_id + "' at split " + std::to_string(split));
    auto e = std::make_shared<Entry>(*old);
    auto params = e->model.parameters();
    for (const auto& t : tensors) {
      auto it = std::find_if(params.begin(), params.end(), [&](const auto& p) { return p.name == t.name; });
      if (it == params.end()) fail(errc::shape_mismatch, "model has no parameter '" + t.name + "'");
      copy(t.value.cview(), it->value);
    }
    e->id.minor = minor;
    std::lock_guard lock(registry_mutex_);
    e->generation = ++generation_;
    registry_[{model_id, split}] = std::move(e);
  }

  /// Serves one connection (any transport) on a thread of its own until it closes.
  void serve(Channel channel) {
    auto c = std::make_shared<Connection>();
    c->channel = std::move(channel);
    std::lock_guard lock(connections_mutex_);
    if (stopping_) {
      c->channel.close();
      return;
    }
    reap_locked();
    connections_.push_back(c);
    c->reader = std::thread([this, c] {
      name_this_thread("es-reader");
      read_loop(c);
    });
    count(&ServerStats::connections_total);
  }
  /// Serves one more connection over any Transport (wrapped in a Channel); returns at once, a
  /// reader thread takes it.
  template <Transport T>
  void serve(T transport) {
    serve(Channel(std::move(transport)));
  }

  /// Accepts TCP connections on `listener` until shutdown.
  void listen(TcpListener listener) {
    std::lock_guard lock(connections_mutex_);
    if (stopping_) return;
    listeners_.push_back(std::make_shared<TcpListener>(std::move(listener)));
    auto l = listeners_.back();
    acceptors_.emplace_back([this, l] {
      name_this_thread("es-acceptor");
      while (!stopping_) {
        try {
          if (auto t = l->accept(deadline_after(std::chrono::milliseconds(100)))) serve(Channel(std::move(*t)));
        } catch (const error&) {
          if (stopping_) return;  // closed by shutdown
        }
      }
    });
  }

  /// Sends WEIGHTS (the edge model's updated parameters) to every edge that said HELLO for
  /// `id.model_id`: the parameter sync of collaborative training. Returns how many were sent.
  std::size_t push_weights(const wire::ModelIdentity& id, std::span<const wire::NamedTensor> tensors) {
    std::vector<std::byte> frame;
    wire::encode_weights(frame, 0, id, tensors);
    std::size_t sent = 0;
    for (auto& c : live_connections(id.model_id)) {
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
    {
      std::lock_guard lock(stats_mutex_);
      s = stats_;
    }
    {
      std::lock_guard q(queue_mutex_);
      s.queue_depth = queue_.size();
    }
    {
      std::lock_guard c(connections_mutex_);
      s.connections_open = 0;
      for (const auto& conn : connections_) s.connections_open += conn->open ? 1 : 0;
    }
    {
      std::lock_guard r(registry_mutex_);
      s.ready = !stopping_ && !registry_.empty();
    }
    return s;
  }
  /// Alive (the server object exists and has not shut down).
  bool healthy() const noexcept { return !stopping_; }
  /// Ready to take work: alive, with at least one model registered.
  bool ready() const { return stats().ready; }

  /// Stops accepting connections and requests, answers what is queued (for at most `drain`),
  /// then closes every connection and joins every thread. Idempotent.
  void shutdown(std::chrono::milliseconds drain = std::chrono::seconds(5)) {
    {
      std::lock_guard lock(connections_mutex_);
      if (stopped_) return;
      stopping_ = true;
      for (auto& l : listeners_) l->close();
    }
    for (auto& t : acceptors_) t.join();
    acceptors_.clear();
    {
      std::unique_lock lock(queue_mutex_);
      draining_ = true;
      queue_cv_.notify_all();
      fill_cv_.notify_all();
      idle_cv_.wait_for(lock, drain, [&] { return queue_.empty() && busy_ == 0; });
      workers_stop_ = true;
      queue_cv_.notify_all();
      fill_cv_.notify_all();
    }
    for (auto& t : workers_) t.join();
    workers_.clear();
    {
      std::lock_guard lock(reply_mutex_);
      replier_stop_ = true;
    }
    reply_cv_.notify_all();
    if (replier_.joinable()) replier_.join();  // after sending every reply the workers posted
    // Requests still queued after the drain window are answered, so none is lost silently.
    std::deque<Job> left;
    {
      std::lock_guard lock(queue_mutex_);
      left.swap(queue_);
    }
    for (auto& j : left) send_error(*j.conn, j.request_id, errc::overloaded, "server shut down before running it");
    left.clear();
    std::vector<std::shared_ptr<Connection>> conns;
    {
      std::lock_guard lock(connections_mutex_);
      conns.swap(connections_);
      stopped_ = true;
    }
    for (auto& c : conns) c->channel.close();
    for (auto& c : conns)
      if (c->reader.joinable()) c->reader.join();
  }

 private:
  struct Connection {
    Channel channel;
    std::thread reader;
    std::atomic<bool> open{true};
    std::string hello_model;  // written by the reader before any job exists, read by push_weights
    // Guarded by queue_mutex_: requests of this connection queued or running, and whether its
    // reader runs (a connection with a reader and nothing pending is "quiet": it may send more).
    std::size_t pending = 0;
    bool reading = false;
  };
  struct Job {
    std::shared_ptr<Connection> conn;
    std::uint32_t request_id = 0;
    Key key;
    Tensor<float> features;
    Clock::time_point enqueued;
    Clock::time_point deadline = Clock::time_point::max();
    bool expired = false;  // set by run_batch: answered `timeout`, not computed
  };

  // The replies of one batch. A worker fills it and posts it; the reply thread sends it, then
  // retires the batch's jobs. Outboxes go back to a free list, keeping their capacity, so a
  // steady stream of batches allocates nothing.
  struct Outbox {
    /// One reply: where its frame lies in `bytes` and whom it goes to.
    struct Item {
      std::shared_ptr<Connection> conn;  ///< the edge it answers
      std::size_t offset = 0;            ///< of its frame in `bytes`
      std::size_t size = 0;              ///< of its frame
      bool response = false;  ///< a RESPONSE (counted in ServerStats::responses), else an ERROR
    };
    std::vector<std::byte> bytes;  // every reply's frame, one after another
    std::vector<Item> items;       // one per job of the batch, in batch order
    void add(std::shared_ptr<Connection> conn, std::span<const std::byte> frame, bool response) {
      items.push_back({std::move(conn), bytes.size(), frame.size(), response});
      bytes.insert(bytes.end(), frame.begin(), frame.end());
    }
  };

  std::shared_ptr<const Entry> find(const Key& key) const {
    std::lock_guard lock(registry_mutex_);
    const auto it = registry_.find(key);
    return it == registry_.end() ? nullptr : it->second;
  }

  std::vector<std::shared_ptr<Connection>> live_connections(const std::string& hello_model) {
    std::lock_guard lock(connections_mutex_);
    std::vector<std::shared_ptr<Connection>> v;
    for (auto& c : connections_)
      if (c->open && c->hello_model == hello_model) v.push_back(c);
    return v;
  }

  // Joins the threads of connections that have ended (called with connections_mutex_ held).
  void reap_locked() {
    for (auto it = connections_.begin(); it != connections_.end();) {
      if (!(*it)->open && (*it)->reader.joinable()) {
        (*it)->reader.join();
        it = connections_.erase(it);
      } else {
        ++it;
      }
    }
  }

  void count(std::size_t ServerStats::*field, std::size_t n = 1) {
    std::lock_guard lock(stats_mutex_);
    stats_.*field += n;
  }

  // Replies with ERROR, best effort: a peer that cannot take it is gone anyway.
  void send_error(Connection& c, std::uint32_t request_id, errc code, const std::string& what) {
    std::vector<std::byte> frame;
    try {
      wire::encode_error(frame, request_id, code, what);
      c.channel.send(frame, deadline_after(opt_.send_timeout));
    } catch (const error&) {
    }
  }

  void read_loop(const std::shared_ptr<Connection>& self) {
    Connection& c = *self;
    CodecConfig cfg;
    cfg.bits = wire::raw_f32_bits;
    cfg.limits = opt_.limits;
    FeatureCodec codec(cfg);
    Message m;
    std::vector<std::byte> out;
    Clock::time_point stalled_since{};
    bool stalled = false;
    {
      std::lock_guard lock(queue_mutex_);
      update_quiet(c, [&] { c.reading = true; });
    }
    try {
      while (!stopping_) {
        if (!c.channel.receive(deadline_after(std::chrono::milliseconds(50)), m)) {
          if (c.channel.mid_message()) {
            if (!stalled) stalled_since = Clock::now(), stalled = true;
            if (Clock::now() - stalled_since > opt_.stall_timeout) {
              count(&ServerStats::connections_dropped);
              break;
            }
          } else {
            stalled = false;
          }
          continue;
        }
        stalled = false;
        if (!handle(c, self, m.view(), codec, out)) {
          count(&ServerStats::connections_dropped);
          break;
        }
      }
    } catch (const error&) {
      // peer closed or the transport failed: this connection ends, nothing else does
    }
    c.open = false;
    c.channel.close();
    std::lock_guard lock(queue_mutex_);
    update_quiet(c, [&] { c.reading = false; });
  }

  // One incoming message. Returns false when the connection must be dropped.
  bool handle(Connection& c, const std::shared_ptr<Connection>& self, std::span<const std::byte> bytes,
              FeatureCodec& codec, std::vector<std::byte>& out) {
    wire::FrameHeader h;
    try {
      h = wire::peek(bytes, opt_.limits);
      switch (h.type) {
        case wire::MessageType::hello: {
          const wire::ModelIdentity want = wire::decode_hello(bytes, opt_.limits);
          const auto e = find({want.model_id, want.split});
          if (!e) {
            send_error(c, h.request_id, errc::unsupported,
                       "no model '" + want.model_id + "' at split " + std::to_string(want.split));
            return true;
          }
          if (e->id.major != want.major) {
            send_error(c, h.request_id, errc::version_mismatch,
                       "model '" + want.model_id + "' is at major version " + std::to_string(e->id.major) +
                           ", the edge speaks " + std::to_string(want.major));
            return false;
          }
          {
            std::lock_guard lock(connections_mutex_);
            c.hello_model = want.model_id;
          }
          wire::encode_hello(out, e->id, h.request_id);
          c.channel.send(out, deadline_after(opt_.send_timeout));
          return true;
        }
        case wire::MessageType::ping: {
          const std::uint64_t t = wire::decode_ping(bytes, opt_.limits);
          wire::encode_ping(out, h.request_id, t, /*pong=*/true);
          c.channel.send(out, deadline_after(opt_.send_timeout));
          return true;
        }
        case wire::MessageType::infer: {
          Job job;
          const wire::InferRequest req = wire::decode_infer(bytes, codec, job.features);
          job.conn = self;
          job.request_id = h.request_id;
          job.key = {req.model_id, req.split};
          job.enqueued = Clock::now();
          if (req.deadline_us) job.deadline = job.enqueued + std::chrono::microseconds(req.deadline_us);
          const auto e = find(job.key);
          if (!e) {
            count(&ServerStats::request_errors);
            send_error(c, h.request_id, errc::unsupported,
                       "no model '" + req.model_id + "' at split " + std::to_string(req.split));
            return true;
          }
          try {
            (void)e->model.output_shape(job.features.shape());
          } catch (const error& err) {
            count(&ServerStats::request_errors);
            send_error(c, h.request_id, err.code(), err.what());
            return true;
          }
          enqueue(std::move(job));
          return true;
        }
        default:
          send_error(c, h.request_id, errc::unsupported,
                     "the server does not take " + std::string(wire::to_string(h.type)) + " frames");
          return true;
      }
    } catch (const error& e) {
      // Malformed bytes: tell the peer why, then drop this connection only.
      send_error(c, h.request_id, e.code(), e.what());
      return false;
    }
  }

  void enqueue(Job job) {
    std::unique_lock lock(queue_mutex_);
    if (draining_ || queue_.size() >= opt_.queue_capacity) {
      const bool closing = draining_;
      lock.unlock();
      count(&ServerStats::rejected_overloaded);
      send_error(*job.conn, job.request_id, errc::overloaded, closing ? "server shutting down" : "server queue full");
      return;
    }
    Connection& c = *job.conn;
    update_quiet(c, [&] { ++c.pending; });
    queue_.push_back(std::move(job));
    // A worker filling a batch is woken when the queue could fill it (update_quiet wakes it when
    // no connection is quiet); waking it for less would cost a context switch per request.
    const bool wake_filler = filling_ != 0 && queue_.size() + filled_ >= opt_.max_batch;
    lock.unlock();
    count(&ServerStats::requests);
    queue_cv_.notify_one();
    if (wake_filler) fill_cv_.notify_all();
  }

  // Applies `change` to c.reading or c.pending and keeps quiet_ equal to the number of
  // connections with a running reader and nothing pending; wakes a worker filling a batch when
  // the last quiet one stops being quiet. Caller holds queue_mutex_.
  template <class Change>
  void update_quiet(Connection& c, Change change) {
    const bool was = c.reading && c.pending == 0;
    change();
    const bool is = c.reading && c.pending == 0;
    if (was != is) is ? ++quiet_ : --quiet_;
    if (was && !is && quiet_ == 0 && filling_ != 0) fill_cv_.notify_all();
  }

  // Takes the next batch: the oldest request plus queued ones for the same tail and feature
  // shape, waiting up to max_queue_delay after the oldest arrived for the batch to fill.
  bool next_batch(std::vector<Job>& batch) {
    std::unique_lock lock(queue_mutex_);
    queue_cv_.wait(lock, [&] { return !queue_.empty() || workers_stop_; });
    if (queue_.empty()) return false;
    batch.clear();
    batch.push_back(std::move(queue_.front()));
    queue_.pop_front();
    ++busy_;
    const Clock::time_point until = batch.front().enqueued + opt_.max_queue_delay;
    auto same = [&](const Job& j) {
      return j.key == batch.front().key && j.features.shape().features() == batch.front().features.shape().features();
    };
    while (batch.size() < opt_.max_batch) {
      auto it = std::find_if(queue_.begin(), queue_.end(), same);
      if (it != queue_.end()) {
        batch.push_back(std::move(*it));
        queue_.erase(it);
        continue;
      }
      // Wait only while some connection is quiet: every other one is already represented.
      if (draining_ || workers_stop_ || quiet_ == 0 || Clock::now() >= until) break;
      ++filling_;
      filled_ = std::max(filled_, batch.size());
      fill_cv_.wait_until(lock, until);
      --filling_;
      if (filling_ == 0) filled_ = 0;
    }
    return true;
  }

  void work() {
    CodecConfig cfg;
    cfg.bits = opt_.response_bits;
    FeatureCodec codec(cfg);
    std::map<Key, std::pair<std::uint64_t, Sequential<float>>> models;  // this worker's copies
    std::vector<Job> batch;
    Tensor<float> input;
    std::vector<std::byte> out;
    while (next_batch(batch)) {
      Outbox box = take_outbox();
      run_batch(batch, models, input, codec, out, box);
      batch.clear();
      {
        std::lock_guard lock(reply_mutex_);
        replies_.push_back(std::move(box));
      }
      reply_cv_.notify_one();
    }
  }

  Outbox take_outbox() {
    std::lock_guard lock(reply_mutex_);
    if (spare_outboxes_.empty()) return {};
    Outbox box = std::move(spare_outboxes_.back());
    spare_outboxes_.pop_back();
    return box;
  }

  // Sends what the workers computed, so a worker spends its time on forward passes and not on
  // writing replies and waking the edges' threads. Then retires each job: its connection's
  // pending count and the worker's batch.
  void reply_loop() {
    while (true) {
      Outbox box;
      {
        std::unique_lock lock(reply_mutex_);
        reply_cv_.wait(lock, [&] { return !replies_.empty() || replier_stop_; });
        if (replies_.empty()) return;
        box = std::move(replies_.front());
        replies_.pop_front();
      }
      std::size_t sent = 0;
      for (const auto& item : box.items) {
        try {
          item.conn->channel.send(std::span(box.bytes).subspan(item.offset, item.size), deadline_after(opt_.send_timeout));
          sent += item.response ? 1 : 0;
        } catch (const error& e) {
          // Gone: its connection's reader ends it. Not reading (send_timeout passed): drop it, or
          // each further reply to it would hold up every other edge's answers for as long again.
          if (e.code() == errc::timeout) {
            item.conn->channel.close();
            count(&ServerStats::connections_dropped);
          }
        }
      }
      if (sent) count(&ServerStats::responses, sent);
      {
        std::lock_guard lock(queue_mutex_);
        for (const auto& item : box.items) update_quiet(*item.conn, [&] { --item.conn->pending; });
        --busy_;
        if (queue_.empty() && busy_ == 0) idle_cv_.notify_all();
      }
      box.items.clear();
      box.bytes.clear();
      std::lock_guard lock(reply_mutex_);
      spare_outboxes_.push_back(std::move(box));
    }
  }

  // Runs one batch and puts one reply per job into `box`: RESPONSE, or ERROR for a job whose
  // deadline passed (not computed), a removed model or a failed forward pass.
  void run_batch(std::vector<Job>& batch, std::map<Key, std::pair<std::uint64_t, Sequential<float>>>& models,
                 Tensor<float>& input, FeatureCodec& codec, std::vector<std::byte>& out, Outbox& box) {
    const auto fail_job = [&](const Job& j, errc code, const std::string& what) {
      box.add(j.conn, wire::encode_error(out, j.request_id, code, what), false);
    };
    const auto now = Clock::now();
    std::size_t rows = 0, live = 0;
    for (auto& j : batch) {
      if (now > j.deadline) {
        count(&ServerStats::expired);
        fail_job(j, errc::timeout, "deadline passed while queued");
        j.expired = true;
        continue;
      }
      rows += j.features.shape().batch();
      ++live;
    }
    if (live == 0) return;
    const auto entry = find(batch.front().key);
    if (!entry) {
      for (auto& j : batch)
        if (!j.expired) fail_job(j, errc::unsupported, "model was removed");
      return;
    }
    auto& slot = models[batch.front().key];
    if (slot.first != entry->generation) {
      slot = {entry->generation, entry->model};  // copy: one version per batch
      slot.second.pack_weights();  // this copy's weights stay fixed until the next generation
    }
    const std::size_t width = batch.front().features.shape().features();
    input.resize(Shape{rows, width});
    std::size_t at = 0;
    for (auto& j : batch) {
      if (j.expired) continue;
      std::copy_n(j.features.data(), j.features.size(), input.data() + at * width);
      at += j.features.shape().batch();
    }
    const auto t0 = Clock::now();
    TensorView<const float> y;
    try {
      y = slot.second.forward(input.cview());
    } catch (const error& e) {
      for (auto& j : batch)
        if (!j.expired) fail_job(j, e.code(), e.what());
      return;
    }
    const auto compute_us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
    count(&ServerStats::batches);
    at = 0;
    for (auto& j : batch) {
      if (j.expired) continue;
      const std::size_t n = j.features.shape().batch();
      wire::InferResponse resp;
      resp.queue_us = static_cast<std::uint32_t>(
          std::min<long long>(UINT32_MAX, std::chrono::duration_cast<std::chrono::microseconds>(t0 - j.enqueued).count()));
      resp.compute_us = static_cast<std::uint32_t>(std::min<long long>(UINT32_MAX, compute_us));
      box.add(j.conn, wire::encode_response(out, j.request_id, resp, codec, y.batch(at, at + n)), true);
      at += n;
    }
  }

  ServerOptions opt_;
  mutable std::mutex registry_mutex_;
  std::map<Key, std::shared_ptr<const Entry>> registry_;
  std::uint64_t generation_ = 0;

  mutable std::mutex connections_mutex_;
  std::vector<std::shared_ptr<Connection>> connections_;
  std::vector<std::shared_ptr<TcpListener>> listeners_;
  std::vector<std::thread> acceptors_;
  std::atomic<bool> stopping_{false};
  bool stopped_ = false;

  mutable std::mutex queue_mutex_;
  std::condition_variable queue_cv_, idle_cv_;
  std::condition_variable fill_cv_;  // a worker waiting for its batch to fill
  std::size_t filling_ = 0;  // workers waiting on fill_cv_
  std::size_t filled_ = 0;   // the largest batch among them (wake when the queue would fill it)
  std::deque<Job> queue_;
  std::size_t busy_ = 0;
  std::size_t quiet_ = 0;  // connections whose reader runs and that have nothing pending
  bool draining_ = false, workers_stop_ = false;
  std::vector<std::thread> workers_;

  std::mutex reply_mutex_;  // the outboxes
  std::condition_variable reply_cv_;
  std::deque<Outbox> replies_;          // posted by workers, not yet sent
  std::vector<Outbox> spare_outboxes_;  // sent, kept for reuse
  bool replier_stop_ = false;
  std::thread replier_;

  mutable std::mutex stats_mutex_;
  ServerStats stats_;
};

}  // namespace edgesplit
