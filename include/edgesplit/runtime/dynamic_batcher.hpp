// edgesplit/runtime/dynamic_batcher.hpp - merges requests from many sources into forward passes.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/core/thread_name.hpp"
#include "edgesplit/nn/sequential.hpp"
#include "edgesplit/runtime/memory_budget.hpp"
#include "edgesplit/runtime/model_registry.hpp"
#include "edgesplit/runtime/server_options.hpp"
#include "edgesplit/transport/clock.hpp"
#include "edgesplit/wire/feature_codec.hpp"
#include "edgesplit/wire/protocol.hpp"

namespace edgesplit {

/// Where the answers to one source's requests go: a front end's connection.
class ReplySink {
 public:
  virtual ~ReplySink() = default;
  /// Takes one RESPONSE or ERROR frame. Called from worker threads, one reply at a time per
  /// sink; must not wait for the peer (queue the bytes, or drop a peer that does not read).
  /// `held` is the memory the request held under the server's budget: keep what the frame
  /// needs while it waits to be written (`held.shrink_to`), release the rest. May throw; the
  /// batcher counts that as a reply lost with its connection.
  virtual void deliver(std::span<const std::byte> frame, MemoryBudget::Reservation held) = 0;
};

/// One request, as a front end hands it to the batcher: its features decoded, or still inside
/// its INFER frame for the worker to decode (so that a front end's thread never spends the time
/// a large or compressed request takes to decode).
struct BatchRequest {
  std::uint32_t request_id = 0;  ///< echoed in the reply
  ModelRegistry::Key key;  ///< the tail to run
  Tensor<float> features;  ///< {rows, ...}: rows are batched with other requests' rows
  /// The whole INFER (or INFER_TENSORS) frame, already validated up to its tensor headers, when
  /// the worker is to decode it; empty when `features` holds the decoded features.
  std::vector<std::byte> frame;
  /// The features' shape when `frame` holds them (from the validated tensor header).
  Shape shape;
  Clock::time_point deadline = Clock::time_point::max();  ///< on the batcher's clock; past it the request is answered `timeout` unrun
  /// Memory held for the request (its features and its reply); released once it is answered.
  MemoryBudget::Reservation held;
  /// Where its outcome is counted (the tail's ModelRegistry::Entry::metrics); may be null.
  std::shared_ptr<ModelMetrics> metrics;
};

/// Counters of a batcher's life so far.
struct BatcherStats {
  std::size_t requests = 0;   ///< requests accepted into the queue
  std::size_t responses = 0;  ///< RESPONSE frames delivered
  std::size_t batches = 0;    ///< forward passes run
  std::size_t rejected_overloaded = 0;  ///< refused: queue, source cap or shutting down
  std::size_t expired = 0;    ///< answered `timeout`: their deadline passed while queued
  std::size_t request_errors = 0;  ///< answered ERROR by a worker (non-finite output, a failing layer, a removed model)
  std::size_t isolated_reruns = 0;  ///< requests run again alone after their batch failed
  std::size_t decode_errors = 0;  ///< requests whose features did not decode on the worker (answered ERROR)
  std::size_t queue_depth = 0;  ///< requests waiting now
};

/// The batching scheduler any front end feeds (TCP and TLS connections, in-process channels, a
/// ZeroMQ worker). Each *source* (a connection, a broker client) has its own queue; a batch is
/// seeded from the sources in turn and filled round-robin across them with requests for the same
/// tail and feature width, up to `max_batch` requests and `max_batch_bytes`, waiting at most
/// `max_queue_delay` for company and only while some source is quiet (could still send). One
/// source may have at most `max_pending_per_source` requests queued or running.
///
/// Nothing a request causes ends a worker: a forward pass that fails is run again request by
/// request, so only the request at fault gets the ERROR; outputs with NaN or infinities are
/// answered ERROR `non_finite`; any exception, typed or not, is answered and counted.
///
/// Time is read on the Clock given to the constructor. With `workers == 0` no thread is started
/// and the owner calls run_ready() to run whatever is due: deterministic tests on a VirtualClock.
class DynamicBatcher {
 public:
  struct SourceState;

 private:
  struct Job {
    BatchRequest req;
    std::shared_ptr<SourceState> source;
    Clock::time_point enqueued;
    bool done = false;  // answered inside run_batch
  };

 public:
  /// A producer of requests: a connection, or one client of a broker. Opaque to front ends.
  struct SourceState {
    std::shared_ptr<ReplySink> sink;  ///< where its replies go
    std::vector<Job> queue;      ///< its queued requests, oldest first (guarded by the batcher, as the rest)
    std::size_t pending = 0;     ///< requests queued or running
    bool open = true;            ///< false once closed: nothing more is queued for it
    bool in_ring = false;        ///< has requests queued: takes part in the round-robin
    std::uint64_t quiet_stamp = 0;  ///< changes whenever it starts or stops being quiet
    Clock::time_point quiet_since{};  ///< when it last went quiet (valid once `was_quiet`)
    bool was_quiet = false;           ///< it has been answered at least once
    Clock::duration think{};  ///< how long it usually stays quiet before its next request (average)
    bool think_known = false;  ///< `think` has been measured
  };
  /// A handle on a source, to submit its requests and to close it.
  using Source = std::shared_ptr<SourceState>;

  /// errc::invalid_argument for zero max_batch, queue capacity or per-source cap; starts
  /// `options.workers` worker threads (none: the owner calls run_ready()).
  DynamicBatcher(ModelRegistry& registry, ServerOptions options, const Clock& clock = SteadyClock::instance())
      : registry_(registry), opt_(std::move(options)), clock_(clock) {
    if (opt_.max_batch == 0 || opt_.queue_capacity == 0 || opt_.max_pending_per_source == 0)
      fail(errc::invalid_argument, "DynamicBatcher needs max_batch, queue_capacity and max_pending_per_source >= 1");
    // Quiet sources' entries pile up to warm_compact_at_ before a compaction: room for them all
    // up front (32 KiB), so steady serving never grows the list.
    warm_.reserve(warm_compact_at_ + 1);
    for (std::size_t i = 0; i < opt_.workers; ++i)
      workers_.emplace_back([this] {
        name_this_thread("es-worker");
        work();
      });
  }
  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;
  ~DynamicBatcher() { stop(std::chrono::milliseconds(0)); }

  /// A new source whose replies go to `sink`.
  Source open_source(std::shared_ptr<ReplySink> sink) {
    auto s = std::make_shared<SourceState>();
    s->sink = std::move(sink);
    return s;
  }
  /// Ends a source: its queued requests are dropped unanswered (nobody is left to read them) and
  /// their memory released; replies of running ones still go to its sink. Idempotent.
  void close_source(const Source& s) {
    std::vector<Job> dropped;
    {
      std::lock_guard lock(mutex_);
      if (!s->open) return;
      s->open = false;
      ++s->quiet_stamp;  // no longer counts as a source that may send
      queued_ -= s->queue.size();
      if (s->pending != 0 && s->pending == s->queue.size()) --active_;
      s->pending -= s->queue.size();
      dropped.swap(s->queue);
      if (s->in_ring) {
        std::erase(ring_, s);
        s->in_ring = false;
      }
      fill_cv_.notify_all();
      if (queued_ == 0 && busy_ == 0) idle_cv_.notify_all();
    }
  }

  /// Queues a request of `s`. Returns false when it was refused, after answering it ERROR
  /// `overloaded` through the source's sink: the queue is full, the source has its cap of
  /// requests pending, the queue is more than half full and the source already has its share of
  /// the upper half (queue_capacity / 2, split among the sources with requests pending), or the
  /// batcher is stopping. So a source with little pending always finds room while a few flood.
  ///
  /// With `run_here`, a batch that is due at once (full, or no source left that could add to
  /// it) runs on the calling thread before submit returns when no other batch is running, instead
  /// of waking a worker: one thread hand-off less per request at light load, for a front end
  /// whose caller waits for the answer anyway (an in-process connection). Under load, and for a
  /// batch that should wait for company, the workers take it as usual.
  bool submit(const Source& s, BatchRequest req, bool run_here = false) {
    std::unique_lock lock(mutex_);
    const std::size_t sharing = active_ + (s->pending == 0 ? 1 : 0);
    const std::size_t share = std::max<std::size_t>(1, opt_.queue_capacity / (2 * sharing));
    const char* refusal = draining_ ? "server shutting down"
                          : !s->open ? "connection closed"
                          : queued_ >= opt_.queue_capacity ? "server queue full"
                          : s->pending >= opt_.max_pending_per_source ? "too many requests of this connection pending"
                          : 2 * queued_ >= opt_.queue_capacity && s->pending >= share
                              ? "server queue busy: this connection has its share of it pending"
                              : nullptr;
    if (refusal) {
      ++stats_.rejected_overloaded;
      lock.unlock();
      answer_error(*s, std::move(req), errc::overloaded, refusal);
      return false;
    }
    const auto now = clock_.now();
    if (s->pending++ == 0) {
      ++active_;
      ++s->quiet_stamp;  // busy now: its entry among the warm sources no longer counts
      if (s->was_quiet) {  // how long it thought: a moving average over its last few requests
        const Clock::duration gap = now - s->quiet_since;
        s->think = s->think_known ? (3 * s->think + gap) / 4 : gap;
        s->think_known = true;
      }
    }
    s->queue.push_back(Job{std::move(req), s, now});
    ++queued_;
    ++stats_.requests;
    if (!s->in_ring) {
      s->in_ring = true;
      ring_.push_back(s);
    }
    // A worker filling a batch is woken when waiting could no longer help: the queue could fill
    // its batch, or no source that may send soon is left. Waking it for less costs a context
    // switch per request.
    // Inline only while nothing else runs: under load the request waits for a worker instead,
    // which batches it with what queues meanwhile (running each caller's request alone on its
    // own thread would end batching exactly when it pays).
    if (run_here && filling_ == 0 && busy_ == 0) {
      std::vector<Job> batch;
      if (take_batch(lock, batch, /*may_wait=*/false)) {
        if (!inline_state_) inline_state_ = std::make_unique<WorkerStates>(opt_);
        WorkerStates& states = *inline_state_;  // lives as long as the batcher
        lock.unlock();
        states.run(*this, batch);
        return true;
      }
    }
    const bool wake_filler = filling_ != 0 && (queued_ >= opt_.max_batch || !company_may_come(now));
    const bool wake_idle = idle_workers_ != 0;
    lock.unlock();
    if (wake_idle) work_cv_.notify_one();
    if (wake_filler) fill_cv_.notify_all();
    return true;
  }

  /// A buffer to copy a request's frame into (BatchRequest::frame): one that an answered request
  /// left behind when there is one, so that steady-state serving allocates nothing.
  std::vector<std::byte> take_buffer() {
    std::lock_guard lock(mutex_);
    if (spare_buffers_.empty()) return {};
    std::vector<std::byte> b = std::move(spare_buffers_.back());
    spare_buffers_.pop_back();
    spare_bytes_ -= b.capacity();
    return b;
  }

  /// Runs on the calling thread every batch that is due now (full, waited long enough, or with no
  /// quiet source left) without waiting; returns how many ran. For owners without workers.
  std::size_t run_ready() {
    if (!manual_) manual_ = std::make_unique<WorkerState>(opt_);
    WorkerState& w = *manual_;
    std::size_t n = 0;
    std::vector<Job> batch;
    while (true) {
      {
        std::unique_lock lock(mutex_);
        if (!take_batch(lock, batch, /*may_wait=*/false)) return n;
      }
      execute(batch, w);
      ++n;
    }
  }

  /// A snapshot of the counters.
  BatcherStats stats() const {
    std::lock_guard lock(mutex_);
    BatcherStats s = stats_;
    s.queue_depth = queued_;
    return s;
  }
  /// Requests of `s` queued or running now.
  std::size_t pending(const Source& s) const {
    std::lock_guard lock(mutex_);
    return s->pending;
  }
  /// True while some source that sent recently has nothing queued or running: it may send soon,
  /// so a batch that is not full waits for it (up to max_queue_delay).
  bool waiting_for_company() {
    std::lock_guard lock(mutex_);
    return company_may_come(clock_.now());
  }

  /// Refuses new requests, lets the workers answer what is queued for at most `drain`, then
  /// stops them and answers what is left `overloaded`. Idempotent.
  void stop(std::chrono::milliseconds drain) {
    {
      std::unique_lock lock(mutex_);
      if (stopped_) return;
      draining_ = true;
      work_cv_.notify_all();
      fill_cv_.notify_all();
      if (!workers_.empty())
        idle_cv_.wait_for(lock, drain, [&] { return queued_ == 0 && busy_ == 0; });
      stop_ = true;
      work_cv_.notify_all();
      fill_cv_.notify_all();
    }
    for (auto& t : workers_) t.join();
    workers_.clear();
    std::vector<Job> left;
    {
      std::lock_guard lock(mutex_);
      stopped_ = true;
      for (auto& s : ring_) {
        for (auto& j : s->queue) left.push_back(std::move(j));
        if (s->pending != 0 && s->pending == s->queue.size()) --active_;
        s->pending -= s->queue.size();
        s->queue.clear();
        s->in_ring = false;
      }
      ring_.clear();
      queued_ = 0;
    }
    for (auto& j : left) answer_error(*j.source, std::move(j.req), errc::overloaded, "server shut down before running it");
  }

 private:
  // What a worker keeps between batches: its own copy of each tail (one version per batch), the
  // merged input, and the reply encoder.
  struct WorkerState {
    explicit WorkerState(const ServerOptions& o) : codec(response_codec(o)), decoder(o.limits) {}
    std::map<ModelRegistry::Key, std::pair<std::uint64_t, Sequential<float>>> models;
    Tensor<float> input;
    wire::FeatureEncoder codec;    // encodes replies
    wire::FeatureDecoder decoder;  // decodes features that arrive still in their frame
    Tensor<float> scratch;  // one tensor of a multi-tensor request, before it joins its row
    std::vector<std::byte> out;
  };
  // Worker states for batches run by submitting threads: one per thread at a time, taken from a
  // pool (a thread that finds none free makes one), so submitters never share a tail's workspace.
  class WorkerStates {
   public:
    explicit WorkerStates(const ServerOptions& o) : opt_(o) {}
    void run(DynamicBatcher& b, std::vector<Job>& batch) {
      std::unique_ptr<WorkerState> w;
      {
        std::lock_guard lock(mutex_);
        if (!free_.empty()) {
          w = std::move(free_.back());
          free_.pop_back();
        }
      }
      if (!w) w = std::make_unique<WorkerState>(opt_);
      b.execute(batch, *w);
      std::lock_guard lock(mutex_);
      free_.push_back(std::move(w));
    }

   private:
    const ServerOptions& opt_;
    std::mutex mutex_;
    std::vector<std::unique_ptr<WorkerState>> free_;
  };

  static CodecConfig response_codec(const ServerOptions& o) {
    CodecConfig cfg;
    cfg.bits = o.response_bits;
    return cfg;
  }

  // True while some source that sent within the warm window has nothing queued or running and
  // usually sends again within max_queue_delay (caller holds mutex_). Sources that never sent,
  // went quiet long ago (idle connections, peers that never said HELLO) or send only now and then
  // (a request every 20 ms: waiting 1 ms for it would find company one time in twenty) do not
  // hold batches back. A source whose habit is not known yet counts.
  bool company_may_come(Clock::time_point now) {
    const auto window = std::clamp<Clock::duration>(opt_.max_queue_delay * 100, std::chrono::milliseconds(10),
                                                    std::chrono::seconds(60));
    while (warm_head_ < warm_.size()) {
      Warm& w = warm_[warm_head_];
      const SourceState& src = *w.source;
      if (w.stamp == src.quiet_stamp && now - w.since <= window &&
          (!src.think_known || src.think <= opt_.max_queue_delay))
        return true;
      w.source.reset();  // busy again, closed, or quiet too long
      ++warm_head_;
    }
    warm_.clear();  // keeps its capacity: steady serving allocates nothing here
    warm_head_ = 0;
    return false;
  }

  static const Shape& shape_of(const BatchRequest& r) { return r.frame.empty() ? r.features.shape() : r.shape; }
  static std::size_t bytes_of(const BatchRequest& r) { return shape_of(r).count() * sizeof(float); }
  static bool compatible(const Job& a, const Job& b) {
    return a.req.key == b.req.key && shape_of(a.req).features() == shape_of(b.req).features();
  }

  // Forms the next batch into `batch` when one is due, waiting for company when `may_wait`;
  // false when there is nothing to run (queue empty, or stopping). Caller holds `lock`.
  bool take_batch(std::unique_lock<std::mutex>& lock, std::vector<Job>& batch, bool may_wait) {
    batch.clear();
    while (true) {
      if (stop_ || ring_.empty()) return false;
      const Job& seed = ring_.front()->queue.front();
      const Clock::time_point until = seed.enqueued + opt_.max_queue_delay;
      std::size_t available = 0, bytes = 0;
      for (const auto& s : ring_)
        for (const auto& j : s->queue)
          if (compatible(j, seed) && available < opt_.max_batch && bytes < opt_.max_batch_bytes) {
            ++available;
            bytes += bytes_of(j.req);
          }
      const bool full = available >= opt_.max_batch || bytes >= opt_.max_batch_bytes;
      const auto now = clock_.now();
      if (full || draining_ || now >= until || !company_may_come(now)) break;
      if (!may_wait) return false;
      ++filling_;
      if (clock_.is_virtual())
        fill_cv_.wait_for(lock, std::chrono::milliseconds(1));  // virtual time moves without notice
      else
        fill_cv_.wait_until(lock, until);
      --filling_;
    }
    // Room first, so that nothing below can fail half-way through moving requests.
    batch.reserve(std::min(opt_.max_batch, queued_));
    // Seed from the first source in turn, then one request per source per pass, round-robin.
    const auto seed_source = ring_.front();
    batch.push_back(std::move(seed_source->queue.front()));
    seed_source->queue.erase(seed_source->queue.begin());
    std::size_t bytes = bytes_of(batch.front().req);
    std::rotate(ring_.begin(), ring_.begin() + 1, ring_.end());  // the seed's source goes last
    for (bool took = true; took && batch.size() < opt_.max_batch && bytes < opt_.max_batch_bytes;) {
      took = false;
      for (auto& s : ring_) {
        if (batch.size() >= opt_.max_batch || bytes >= opt_.max_batch_bytes) break;
        auto it = std::find_if(s->queue.begin(), s->queue.end(), [&](const Job& j) { return compatible(j, batch.front()); });
        if (it == s->queue.end()) continue;
        bytes += bytes_of(it->req);
        batch.push_back(std::move(*it));
        s->queue.erase(it);
        took = true;
      }
    }
    std::erase_if(ring_, [](const Source& s) {
      if (!s->queue.empty()) return false;
      s->in_ring = false;
      return true;
    });
    queued_ -= batch.size();
    ++busy_;
    return true;
  }

  // A worker's thread: nothing ends it but stop(). A failure outside a batch (out of memory
  // while setting up) starts it over after a pause.
  void work() {
    while (true) {
      try {
        work_loop();
        return;
      } catch (...) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
  }

  void work_loop() {
    WorkerState w(opt_);
    std::vector<Job> batch;
    while (true) {
      {
        std::unique_lock lock(mutex_);
        while (!take_batch(lock, batch, /*may_wait=*/true)) {
          if (stop_) return;
          ++idle_workers_;
          work_cv_.wait(lock);
          --idle_workers_;
        }
      }
      execute(batch, w);
    }
  }

  // Runs one batch and retires it; nothing escapes.
  void execute(std::vector<Job>& batch, WorkerState& w) {
    try {
      run_batch(batch, w);
    } catch (...) {
      // Only the bookkeeping around the forward passes can get here (e.g. out of memory while
      // copying a tail): whatever was not answered yet is answered now.
      for (auto& j : batch)
        if (!j.done) fail_job(j, w, errc::internal, "the server failed while running the batch");
    }
    std::lock_guard lock(mutex_);
    const auto now = clock_.now();
    for (auto& j : batch) {
      SourceState& s = *j.source;
      if (--s.pending == 0) {
        --active_;
        s.quiet_since = now;
        s.was_quiet = true;
        if (s.open) {  // quiet now, and warm: it sent a moment ago and may send again soon
          if (warm_head_ != 0 && 2 * warm_head_ >= warm_.size()) {  // drop the consumed front
            warm_.erase(warm_.begin(), warm_.begin() + static_cast<std::ptrdiff_t>(warm_head_));
            warm_head_ = 0;
          }
          if (warm_.size() - warm_head_ >= warm_compact_at_) {  // entries of sources busy again pile up
            std::erase_if(warm_, [](const Warm& w) { return !w.source || w.stamp != w.source->quiet_stamp; });
            warm_head_ = 0;
            warm_compact_at_ = std::max<std::size_t>(1024, 2 * warm_.size());
          }
          warm_.push_back({j.source, ++s.quiet_stamp, now});
        }
      }
      keep(std::move(j.req.features), std::move(j.req.frame));
    }
    --busy_;
    if (queued_ == 0 && busy_ == 0) idle_cv_.notify_all();
    batch.clear();
  }

  // Keeps an answered request's frame buffer for take_buffer() and its features tensor for the
  // next decode, up to a fixed number of bytes (caller holds mutex_): a fixed overhead, outside
  // the memory budget.
  void keep(Tensor<float> t, std::vector<std::byte> frame) {
    const std::size_t tb = t.capacity() * sizeof(float), fb = frame.capacity();
    if (tb != 0 && tb <= spare_bytes_max / 16 && spare_bytes_ + tb <= spare_bytes_max) {
      spare_bytes_ += tb;
      spare_tensors_.push_back(std::move(t));
    }
    if (fb != 0 && fb <= spare_bytes_max / 16 && spare_bytes_ + fb <= spare_bytes_max) {
      frame.clear();
      spare_bytes_ += fb;
      spare_buffers_.push_back(std::move(frame));
    }
  }
  Tensor<float> take_tensor() {  // caller holds mutex_
    if (spare_tensors_.empty()) return {};
    Tensor<float> t = std::move(spare_tensors_.back());
    spare_tensors_.pop_back();
    spare_bytes_ -= t.capacity() * sizeof(float);
    return t;
  }

  // Decodes the features of the live requests that still carry their frame, on the worker, into
  // tensors kept from earlier requests; a request whose data does not decode is answered with the
  // decoder's error. Returns how many are still live.
  std::size_t decode(std::vector<Job>& batch, WorkerState& w) {
    std::size_t live = 0;
    for (auto& j : batch) {
      if (j.done) continue;
      if (!j.req.frame.empty()) {
        {
          std::lock_guard lock(mutex_);
          if (j.req.features.capacity() == 0) j.req.features = take_tensor();
        }
        try {
          if (wire::peek(j.req.frame, w.decoder.limits()).type == wire::MessageType::infer_tensors) {
            wire::decode_infer_tensors(j.req.frame, w.decoder, w.scratch, j.req.features);
          } else {
            const wire::InferHeader h = wire::read_infer(j.req.frame, w.decoder);
            wire::decode_infer_features(h, w.decoder, j.req.features);
          }
          if (!(j.req.features.shape() == j.req.shape)) fail(errc::corrupt_frame, "features changed shape");
          j.req.held.shrink_to(j.req.held.bytes() - std::min(j.req.held.bytes(), j.req.frame.size()));
        } catch (const error& e) {
          count(&BatcherStats::decode_errors);
          fail_job(j, w, e.code(), e.what());
          continue;
        } catch (...) {
          count(&BatcherStats::decode_errors);
          fail_job(j, w, errc::internal, "the server failed while decoding the features");
          continue;
        }
        {
          // The frame is no longer needed: back to the pool now, before the reply goes out, so the
          // buffer is there for the request the reply prompts (a strict request-reply client
          // would otherwise find the pool empty now and then, and cost an allocation).
          std::lock_guard lock(mutex_);
          keep(Tensor<float>{}, std::move(j.req.frame));
        }
        j.req.frame = {};
      }
      ++live;
    }
    return live;
  }

  void run_batch(std::vector<Job>& batch, WorkerState& w) {
    const auto now = clock_.now();
    std::size_t live = 0;
    for (auto& j : batch) {
      if (now > j.req.deadline) {
        count(&BatcherStats::expired);
        fail_job(j, w, errc::timeout, "deadline passed while queued");
      } else {
        ++live;
      }
    }
    if (live == 0 || decode(batch, w) == 0) return;
    live = 0;
    for (const auto& j : batch) live += !j.done;
    const auto entry = registry_.find(batch.front().req.key);
    if (!entry) {
      for (auto& j : batch)
        if (!j.done) fail_job(j, w, errc::unsupported, "model was removed");
      return;
    }
    auto& slot = w.models[batch.front().req.key];
    if (slot.first != entry->generation) {
      slot = {entry->generation, entry->model};  // copy: one version per batch
      slot.second.pack_weights();  // this copy's weights stay fixed until the next generation
    }
    Sequential<float>& model = slot.second;
    if (live > 1) {
      const auto t0 = clock_.now();
      TensorView<const float> y;
      bool ok = false;
      try {
        y = model.forward(merge(batch, w.input));
        ok = true;
      } catch (...) {
        // Some request broke the pass (a layer's exception, out of memory): run each alone below,
        // so only the one at fault is answered with the error.
      }
      if (ok) {
        count(&BatcherStats::batches);
        for (const auto& j : batch)
          if (!j.done && j.req.metrics) {
            j.req.metrics->executed();  // one tail, one pass: counted once
            break;
          }
        const auto compute = clock_.now() - t0;
        std::size_t at = 0;
        for (auto& j : batch) {
          if (j.done) continue;
          const std::size_t n = j.req.features.shape().batch();
          answer(j, w, y.batch(at, at + n), t0, compute);
          at += n;
        }
        return;
      }
      for (auto& j : batch)
        if (!j.done) count(&BatcherStats::isolated_reruns);
    }
    for (auto& j : batch) {
      if (j.done) continue;
      const auto t0 = clock_.now();
      try {
        const TensorView<const float> y = model.forward(j.req.features.cview());
        count(&BatcherStats::batches);
        if (j.req.metrics) j.req.metrics->executed();
        answer(j, w, y, t0, clock_.now() - t0);
      } catch (const error& e) {
        fail_job(j, w, e.code(), e.what());
      } catch (const std::bad_alloc&) {
        fail_job(j, w, errc::internal, "out of memory while running the tail");
      } catch (const std::exception& e) {
        fail_job(j, w, errc::internal, std::string("the tail failed: ") + e.what());
      } catch (...) {
        fail_job(j, w, errc::internal, "the tail failed");
      }
    }
  }

  // The live requests' features, one after another, as one {rows, ...} input.
  static TensorView<const float> merge(const std::vector<Job>& batch, Tensor<float>& input) {
    std::size_t rows = 0;
    const Job* first = nullptr;
    for (const auto& j : batch)
      if (!j.done) rows += j.req.features.shape().batch(), first = first ? first : &j;
    input.resize(first->req.features.shape().with_batch(rows));
    float* at = input.data();
    for (const auto& j : batch)
      if (!j.done) at = std::copy_n(j.req.features.data(), j.req.features.size(), at);
    return input.cview();
  }

  // Answers `j` with its rows `y` of a forward pass that started at t0 and took `compute`.
  void answer(Job& j, WorkerState& w, TensorView<const float> y, Clock::time_point t0, Clock::duration compute) {
    std::size_t bad = 0;
    for (std::size_t i = 0; i < y.size(); ++i) bad += !std::isfinite(y.data()[i]);
    if (bad) {
      fail_job(j, w, errc::non_finite,
               "the tail's output holds " + std::to_string(bad) + " NaN or infinite values (features out of range?)");
      return;
    }
    wire::InferResponse resp;
    resp.queue_us = micros(t0 - j.enqueued);
    resp.compute_us = micros(compute);
    std::span<const std::byte> frame;
    try {
      frame = wire::encode_response(w.out, j.req.request_id, resp, w.codec, y);
    } catch (const error& e) {
      fail_job(j, w, e.code(), std::string("encoding the reply: ") + e.what());
      return;
    }
    j.done = true;
    if (j.req.metrics)
      j.req.metrics->answered(y.shape().batch(), resp.queue_us, resp.compute_us, micros(clock_.now() - j.enqueued));
    if (deliver(*j.source, frame, std::move(j.req.held))) count(&BatcherStats::responses);
  }

  void fail_job(Job& j, WorkerState& w, errc code, const std::string& what) {
    j.done = true;
    if (code != errc::timeout) count(&BatcherStats::request_errors);
    if (j.req.metrics) j.req.metrics->refused(code);
    try {
      deliver(*j.source, wire::encode_error(w.out, j.req.request_id, code, what), std::move(j.req.held));
    } catch (...) {
    }
  }

  // Answers a request that never entered the queue.
  void answer_error(SourceState& s, BatchRequest req, errc code, const char* what) {
    if (req.metrics) req.metrics->refused(code);
    try {
      std::vector<std::byte> frame;
      wire::encode_error(frame, req.request_id, code, what);
      deliver(s, frame, std::move(req.held));
    } catch (...) {
    }
  }

  // Hands a reply to its source's sink; false when the sink refused it (its connection is gone).
  static bool deliver(SourceState& s, std::span<const std::byte> frame, MemoryBudget::Reservation held) {
    try {
      s.sink->deliver(frame, std::move(held));
      return true;
    } catch (...) {
      return false;
    }
  }

  static std::uint32_t micros(Clock::duration d) {
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
    return static_cast<std::uint32_t>(std::clamp<long long>(us, 0, UINT32_MAX));
  }
  void count(std::size_t BatcherStats::*field) {
    std::lock_guard lock(mutex_);
    ++(stats_.*field);
  }

  ModelRegistry& registry_;
  const ServerOptions opt_;
  const Clock& clock_;

  mutable std::mutex mutex_;  // everything below, and every SourceState's queue and counters
  std::condition_variable work_cv_;  // idle workers: the queue was empty
  std::condition_variable fill_cv_;  // a worker waiting for its batch to fill
  std::condition_variable idle_cv_;  // stop(): the queue drained
  std::vector<Source> ring_;  // sources with queued requests, in turn
  std::size_t queued_ = 0;   // requests queued, all sources
  // Sources that went quiet, oldest first, each with the stamp it had then: the front entries
  // whose stamp still matches are quiet since that time (company_may_come drops the others).
  struct Warm {
    Source source;
    std::uint64_t stamp;
    Clock::time_point since;
  };
  std::vector<Warm> warm_;    // from warm_head_ on; entries before it are consumed
  std::size_t warm_head_ = 0;
  std::size_t warm_compact_at_ = 1024;
  std::size_t active_ = 0;   // sources with requests queued or running
  std::size_t busy_ = 0;     // batches running
  std::size_t filling_ = 0;  // workers waiting on fill_cv_
  std::size_t idle_workers_ = 0;
  bool draining_ = false, stop_ = false, stopped_ = false;
  BatcherStats stats_;
  std::vector<std::thread> workers_;
  std::unique_ptr<WorkerState> manual_;  // run_ready()'s worker state
  std::unique_ptr<WorkerStates> inline_state_;  // created under mutex_, used by submitting threads
  static constexpr std::size_t spare_bytes_max = std::size_t{8} << 20;
  std::vector<Tensor<float>> spare_tensors_;  // features of answered requests, for the next decode
  std::vector<std::vector<std::byte>> spare_buffers_;  // frames of answered requests, for take_buffer()
  std::size_t spare_bytes_ = 0;
};

}  // namespace edgesplit
