// edgesplit/runtime/edge_client.hpp - the edge side: run the head, ship features, await answers.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/core/thread_name.hpp"
#include "edgesplit/nn/graph.hpp"
#include "edgesplit/nn/sequential.hpp"
#include "edgesplit/plan/link.hpp"
#include "edgesplit/runtime/channel.hpp"
#include "edgesplit/runtime/deployment.hpp"
#include "edgesplit/runtime/model_registry.hpp"
#include "edgesplit/transport/clock.hpp"
#include "edgesplit/wire/feature_codec.hpp"
#include "edgesplit/wire/protocol.hpp"

namespace edgesplit {

/// What the edge asks the cloud for, how it encodes, and how it reconnects.
struct EdgeOptions {
  /// Options to fill in field by field (model and codec at least).
  EdgeOptions() = default;
  /// The options of `deployment` (model id, version, split point, codec), the rest at their
  /// defaults: what an EdgeClient given a Deployment uses. errc::invalid_argument for an empty
  /// model id or a split the protocol cannot carry.
  EdgeOptions(const Deployment& deployment)  // NOLINT(google-explicit-constructor): a deployment is a complete set of options
      : model(deployment.identity()), codec(deployment.codec) {}

  wire::ModelIdentity model;  ///< what the cloud must serve: model id, version, split point
  CodecConfig codec{};        ///< how features are encoded for the link
  /// Connect + HELLO exchange, on the client's clock. On a virtual clock the wait for HELLO also
  /// ends after this much real time, so that a client whose clock nobody advances cannot wait
  /// forever for a peer that never answers.
  std::chrono::milliseconds connect_timeout{1000};
  std::chrono::milliseconds backoff_initial{50};    ///< first wait before reconnecting
  std::chrono::milliseconds backoff_max{2000};      ///< the wait doubles up to this
  std::size_t max_in_flight = 8;  ///< requests on the wire at once; submit() waits beyond
  wire::DecodeLimits limits{};  ///< caps on every reply decoded
  LinkModel link_prior{};         ///< starting point of the link estimate
  /// A PING after this long without sending, so that the server's idle timeout does not close
  /// a connection the edge still wants (0: never).
  std::chrono::milliseconds keepalive{std::chrono::seconds(30)};
  /// The per-sample shape of the model's input (no batch dimension), e.g. {784}. Optional: the
  /// edge works out the shape of the features it sends from the head's first layer when that
  /// layer declares its input width (Dense does); give it for a head that does not, or for an
  /// empty head (split 0), so that the cloud can check it at HELLO.
  std::vector<std::size_t> input_shape;
  /// The tail the edge expects the cloud to serve, as model_fingerprint() of it (0: do not
  /// check). A cloud serving another architecture, input shape or major version refuses the HELLO.
  std::uint64_t tail_fingerprint = 0;
};

/// Who answered a request.
enum class AnswerPath { cloud, fallback };

/// "cloud" or "fallback".
inline const char* to_string(AnswerPath p) noexcept { return p == AnswerPath::cloud ? "cloud" : "fallback"; }

/// Where the time of one request went (seconds).
///
/// The edge's own work (head, encode, decode, fallback) is this machine's compute, timed on the
/// steady clock whatever the client's clock is; the round trip is read on the client's clock
/// (EdgeClient's `clock`), the server's share on the server's.
struct RequestTimings {
  double head = 0;            ///< edge: head forward
  double encode = 0;          ///< edge: quantize, pack, compress, frame
  double round_trip = 0;      ///< send to reply received, everything the edge waited for
  double server_queue = 0;    ///< of which the request waited in the cloud's queue
  double server_compute = 0;  ///< of which the cloud ran the tail (the whole batch)
  double decode = 0;          ///< edge: decoding the reply
  double fallback = 0;        ///< edge: running the local fallback
  /// Round trip minus the server's share: transfer both ways plus propagation.
  double network() const { return round_trip - server_queue - server_compute; }
};

/// One answered request.
struct InferResult {
  Tensor<float> output;  ///< the model's output for the batch
  AnswerPath path = AnswerPath::cloud;  ///< cloud or fallback
  std::optional<errc> fallback_reason;  ///< why the cloud did not answer, when it did not
  std::string fallback_message;  ///< the error text when the fallback answered
  RequestTimings timings;  ///< where the time went
  std::size_t bytes_sent = 0;  ///< INFER frame size
  std::uint32_t request_id = 0;  ///< the frame's request id
};

/// A local model that answers when the cloud cannot: run on the head's output (an exit head at
/// the split point, BranchyNet style) or on the original input (a whole edge model).
struct Fallback {
  /// What the fallback model reads: the head's features, or the original input.
  enum class Input { features, input };
  Sequential<float> model;  ///< the local model (an exit head, or a whole edge model)
  Input on = Input::features;  ///< its input
};

/// Counters of a client's life so far.
struct EdgeStats {
  ///@{
  /// Requests submitted; answered by the cloud; by the fallback; reconnections; failed connects;
  /// weight pushes applied; weight pushes refused (names or shapes that are not the head's);
  /// replies that came after their fallback (dropped).
  std::size_t submitted = 0, cloud_answers = 0, fallbacks = 0, reconnects = 0, connect_failures = 0,
              weight_updates = 0, weights_refused = 0, late_replies = 0;
  ///@}
};

/// Runs the head of a split model on the edge and the tail in the cloud.
///
/// `submit(x, deadline)` runs the head on the calling thread, encodes the features, sends them
/// and returns a future; up to `max_in_flight` requests travel at once, so the edge computes
/// request i+1 while request i is on the wire. A receiver thread matches replies to requests by
/// id. When the deadline passes, the cloud answers ERROR, or the connection is lost, the request
/// is answered by the `Fallback` (if given; otherwise the future holds the typed error), and the
/// result says which path answered. Every request is answered exactly once: a reply that arrives
/// after its fallback is counted and dropped. Lost connections are re-established in the
/// background with exponential backoff. WEIGHTS pushed by the cloud replace the head's
/// parameters between two requests, never during one; tensors named `fallback/<name>`
/// (CloudServer::push_weights with a fallback model) replace the fallback's.
///
/// Time (deadlines, round trips, the link estimate, reconnection backoff, keepalive) is read on
/// the Clock given to the constructor, the steady clock by default. A VirtualClock never moves by
/// itself and never wakes anyone: on one the client waits in bounded slices of real time and
/// looks again, polls its connection without waiting (a SimulatedLink on the same clock hands
/// out what is due by then), and never moves the clock itself; whoever drives the simulation
/// does (a test, or the peer's blocking receive on its SimulatedLink). A clock that is not
/// virtual is read as the steady clock's time line.
class EdgeClient {
  using steady = std::chrono::steady_clock;

 public:
  /// Opens a new connection to the cloud (throws a typed error when it cannot).
  using Connector = std::function<Channel()>;

  /// Runs a graph's head (Graph::split(k) or cut(); EdgeOptions::model.split is k, the cut's
  /// number of head nodes). A head of several outputs sends them as named tensors, each quantized
  /// with its own range; a head of one input fills EdgeOptions::input_shape when it is empty.
  EdgeClient(Graph<float> head, Connector connector, EdgeOptions options,
             std::optional<Fallback> fallback = std::nullopt, const Clock& clock = SteadyClock::instance())
      : EdgeClient(as_sequential(head), std::move(connector), with_input_shape(std::move(options), head),
                   std::move(fallback), clock) {}

  /// Runs `head` on the caller's thread and connects through `connector` (called again to reconnect);
  /// `fallback`, when given, answers what the cloud cannot. Time is read on `clock`, which must
  /// outlive the client.
  EdgeClient(Sequential<float> head, Connector connector, EdgeOptions options,
             std::optional<Fallback> fallback = std::nullopt, const Clock& clock = SteadyClock::instance())
      : clock_(clock),
        head_(std::move(head)),
        connector_(std::move(connector)),
        opt_(std::move(options)),
        fallback_(std::move(fallback)),
        encoder_(opt_.codec),
        estimator_(opt_.link_prior) {
    if (!connector_) fail(errc::invalid_argument, "EdgeClient needs a connector");
    if (opt_.max_in_flight == 0) fail(errc::invalid_argument, "EdgeClient max_in_flight must be >= 1");
    check_.fingerprint = opt_.tail_fingerprint;
    check_.signature = feature_signature();
    if (!head_.empty())
      if (const auto* g = dynamic_cast<const GraphLayer<float>*>(&head_[head_.size() - 1]);
          g && g->graph().output_names().size() > 1)
        for (const auto& name : g->graph().output_names()) {
          parts_.push_back({name, g->graph().sample_shape(name).count(), {}});
          part_names_.push_back(name);
          part_codecs_.emplace_back(opt_.codec);
        }
    part_views_.resize(parts_.size());
    push_decoder_ = wire::FeatureDecoder(opt_.limits);
    try_connect();
    receiver_ = std::thread([this] {
      name_this_thread("es-edge-recv");
      receive_loop();
    });
  }
  EdgeClient(const EdgeClient&) = delete;
  EdgeClient& operator=(const EdgeClient&) = delete;
  ~EdgeClient() { close(); }

  /// Starts one request. The deadline is on the client's clock (`deadline_after(d, client.clock())`;
  /// with the steady clock, `deadline_after(d)`).
  std::future<InferResult> submit(TensorView<const float> x, Deadline deadline) {
    Pending p;
    p.promise.emplace();
    std::future<InferResult> fut = p.promise->get_future();
    start(x, deadline, std::move(p));
    return fut;
  }

  /// `submit(x, deadline).get()`, without a future's shared state: a request answered inside
  /// send() (an in-process connection) costs no system call to hand its answer over.
  InferResult infer(TensorView<const float> x, Deadline deadline) {
    Waiter w;
    Pending p;
    p.waiter = &w;
    start(x, deadline, std::move(p));
    std::unique_lock lock(w.mutex);
    w.ready.wait(lock, [&] { return w.done; });
    if (w.failure) std::rethrow_exception(w.failure);
    return std::move(*w.result);
  }

 private:
  // infer()'s rendezvous with whichever thread answers. The answerer notifies with the mutex
  // held, so the waiter cannot leave (and destroy this) before the notification is done.
  struct Waiter {
    std::mutex mutex;
    std::condition_variable ready;
    bool done = false;
    std::optional<InferResult> result;
    std::exception_ptr failure;
  };
  struct Pending {
    std::optional<std::promise<InferResult>> promise;  // submit()'s
    Waiter* waiter = nullptr;                           // or infer()'s
    InferResult result;
    Tensor<float> fallback_input;  // the head's features or the input, as the fallback reads
    std::vector<std::byte> frame;
    Deadline deadline;
    Clock::time_point sent_at;

    void answer(InferResult&& r) {
      if (!waiter) return promise->set_value(std::move(r));
      std::lock_guard lock(waiter->mutex);
      waiter->result = std::move(r);
      waiter->done = true;
      waiter->ready.notify_one();
    }
    void answer(std::exception_ptr e) {
      if (!waiter) return promise->set_exception(std::move(e));
      std::lock_guard lock(waiter->mutex);
      waiter->failure = std::move(e);
      waiter->done = true;
      waiter->ready.notify_one();
    }
  };

  // Runs the head, sends the request and leaves `p` pending (or answered by the fallback).
  void start(TensorView<const float> x, Deadline deadline, Pending p) {
    p.deadline = deadline;
    {
      std::unique_lock lock(pending_mutex_);
      const auto room = [&] { return pending_.size() < opt_.max_in_flight || closed_; };
      ++room_waiters_;
      if (!clock_.is_virtual()) {
        room_cv_.wait_until(lock, deadline, room);
      } else {
        while (!room() && clock_.now() < deadline) room_cv_.wait_for(lock, virtual_poll);
      }
      --room_waiters_;
      if (closed_) fail(errc::unreachable, "EdgeClient is closed");
    }
    const std::uint32_t id = next_id_++;
    p.result.request_id = id;
    {
      std::lock_guard lock(head_mutex_);
      apply_staged_weights();
      const auto t0 = steady::now();
      const TensorView<const float> features = head_.forward(x);
      const auto t1 = steady::now();
      if (fallback_) {  // kept only when a fallback may need to answer from it
        const TensorView<const float> keep = fallback_->on == Fallback::Input::input ? x : features;
        p.fallback_input = Tensor<float>(keep.shape());
        copy(keep, p.fallback_input.view());
      }
      wire::InferRequest req{opt_.model.model_id, opt_.model.split, budget_us(deadline)};
      if (parts_.empty()) wire::encode_infer(p.frame, id, req, encoder_, features);
      else encode_parts(p.frame, id, req, features);
      p.result.timings.head = seconds(t1 - t0);
      p.result.timings.encode = seconds(steady::now() - t1);
      p.result.bytes_sent = p.frame.size();
    }
    std::optional<Channel> ch;
    bool wake;
    {
      std::lock_guard lock(pending_mutex_);
      ++stats_.submitted;
      if (channel_) ch = channel_;
      p.sent_at = last_sent_ = clock_.now();
      // The receiver needs to know only if it would otherwise sleep past this deadline (on a
      // virtual clock: to look more often while requests await answers).
      wake = clock_.is_virtual() || receiver_wakes_at_ == Clock::time_point::max() || p.deadline < receiver_wakes_at_;
      pending_.emplace(id, std::move(p));
    }
    if (!ch) {
      resolve_fallback(id, errc::unreachable, "not connected to the cloud" + last_error_suffix());
      return;
    }
    try {
      std::vector<std::byte> frame;
      {
        std::lock_guard lock(pending_mutex_);
        auto it = pending_.find(id);
        if (it != pending_.end()) frame.swap(it->second.frame);
      }
      if (!frame.empty()) ch->send(frame, deadline);
    } catch (const error& e) {
      if (e.code() != errc::timeout) drop_connection(*ch);
      resolve_fallback(id, e.code(), e.what());
    }
    if (wake) pending_cv_.notify_all();
  }

 public:
  /// Sends a PING; the PONG updates the RTT estimate.
  void ping() {
    std::optional<Channel> ch;
    {
      std::lock_guard lock(pending_mutex_);
      if (channel_) ch = channel_;
    }
    if (!ch) return;
    std::vector<std::byte> frame;
    wire::encode_ping(frame, 0, static_cast<std::uint64_t>(clock_.now().time_since_epoch().count()));
    try {
      ch->send(frame, deadline_after(opt_.connect_timeout, clock_));
    } catch (const error&) {
    }
  }

  /// The current estimate of the link, from observed transfers and pings.
  LinkModel link_estimate() const {
    std::lock_guard lock(pending_mutex_);
    return estimator_.estimate();
  }
  /// A snapshot of the counters.
  EdgeStats stats() const {
    std::lock_guard lock(pending_mutex_);
    return stats_;
  }
  bool connected() const {  ///< true while a connection is up
    std::lock_guard lock(pending_mutex_);
    return static_cast<bool>(channel_);
  }
  /// Model identity the cloud announced in its HELLO (its minor version may differ from ours).
  wire::ModelIdentity cloud_identity() const {
    std::lock_guard lock(pending_mutex_);
    return cloud_id_;
  }
  /// What the cloud said when it last refused this edge (its HELLO refusal, a connection-level
  /// ERROR), or why the last connection attempt failed; empty when nothing went wrong.
  std::string last_error() const {
    std::lock_guard lock(pending_mutex_);
    return last_error_;
  }
  /// The per-sample shape of the features this edge sends, as told to the cloud in HELLO
  /// (empty when the head does not declare it and EdgeOptions::input_shape was not given).
  std::vector<std::size_t> feature_shape() const { return check_.signature; }
  /// The clock deadlines, round trips and the client's timers are read on.
  const Clock& clock() const noexcept { return clock_; }

  /// Answers every pending request by fallback, closes the connection and stops the receiver.
  void close() {
    std::optional<Channel> ch;
    {
      std::lock_guard lock(pending_mutex_);
      if (closed_) return;
      closed_ = true;
      if (channel_) ch = channel_;
    }
    if (ch) {  // outside the lock: a reply pushed on another thread may be waiting for it
      ch->push_to({});
      ch->close();
    }
    pending_cv_.notify_all();
    room_cv_.notify_all();
    if (receiver_.joinable()) receiver_.join();
    std::vector<std::uint32_t> ids;
    {
      std::lock_guard lock(pending_mutex_);
      for (auto& [id, p] : pending_) ids.push_back(id);
    }
    for (auto id : ids) resolve_fallback(id, errc::unreachable, "client closed");
  }

 private:
  // How long a wait on a virtual clock lasts in real time before the client looks at it again;
  // the receiver looks more often while requests await their answers.
  static constexpr std::chrono::microseconds virtual_poll{1000}, virtual_poll_awaiting{100};

  static double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
  std::uint32_t budget_us(Deadline d) const {
    if (d == no_deadline) return 0;
    const auto left = std::chrono::duration_cast<std::chrono::microseconds>(d - clock_.now()).count();
    return static_cast<std::uint32_t>(std::clamp<long long>(left, 1, UINT32_MAX));
  }

  void apply_staged_weights() {  // with head_mutex_ held
    std::vector<wire::NamedTensor> staged;
    {
      std::lock_guard lock(pending_mutex_);
      staged.swap(staged_weights_);
    }
    if (staged.empty()) return;
    // Names and shapes were checked on receipt.
    auto params = head_.parameters();
    for (const auto& t : staged)
      for (auto& p : params)
        if (p.name == t.name) copy(t.value.cview(), p.value);
    if (!fallback_) return;
    std::lock_guard lock(fallback_mutex_);
    auto fallback_params = fallback_->model.parameters();
    for (const auto& t : staged)
      if (t.name.starts_with(wire::fallback_weights_prefix))
        for (auto& p : fallback_params)
          if (p.name == t.name.substr(wire::fallback_weights_prefix.size())) copy(t.value.cview(), p.value);
  }

  // Why a weights push does not fit ("" when it does): every tensor must name a parameter of
  // the head, or as fallback/<name> one of the fallback, and have its shape.
  std::string weights_mismatch(const std::vector<wire::NamedTensor>& tensors) {
    std::lock_guard lock(head_mutex_);
    const auto params = std::as_const(head_).parameters();
    std::vector<ConstParameter<float>> fallback_params;
    if (fallback_) {
      std::lock_guard fallback_lock(fallback_mutex_);
      fallback_params = std::as_const(fallback_->model).parameters();
    }
    for (const auto& t : tensors) {
      const bool to_fallback = t.name.starts_with(wire::fallback_weights_prefix);
      if (to_fallback && !fallback_) return "the edge has no fallback model for '" + t.name + "'";
      const auto& in = to_fallback ? fallback_params : params;
      const std::string name = to_fallback ? t.name.substr(wire::fallback_weights_prefix.size()) : t.name;
      auto it = std::find_if(in.begin(), in.end(), [&](const auto& p) { return p.name == name; });
      if (it == in.end()) return std::string(to_fallback ? "the fallback" : "the head") + " has no parameter '" + name + "'";
      if (!(it->value.shape() == t.value.shape()))
        return "parameter '" + t.name + "' is " + it->value.shape().str() + ", the push has " + t.value.shape().str();
    }
    return "";
  }

  static EdgeOptions with_input_shape(EdgeOptions o, const Graph<float>& head) {
    if (o.input_shape.empty() && head.input_names().size() == 1) {
      const auto d = head.sample_shape(head.input_names()[0]).dims();
      o.input_shape.assign(d.begin(), d.end());
    }
    return o;
  }

  // Sends the head's outputs as named tensors, each quantized on its own: the packed row of a
  // GraphLayer head is split back into one tensor per output (with head_mutex_ held).
  void encode_parts(std::vector<std::byte>& out, std::uint32_t id, const wire::InferRequest& req,
                    TensorView<const float> features) {
    const std::size_t n = features.shape().batch(), width = features.shape().features();
    std::size_t offset = 0;
    for (std::size_t k = 0; k < parts_.size(); ++k) {
      Part& p = parts_[k];
      const Shape s = head_graph_output_shape(k, n);
      p.buffer.resize(s);
      for (std::size_t i = 0; i < n; ++i)
        std::copy_n(features.data() + i * width + offset, p.width, p.buffer.data() + i * p.width);
      offset += p.width;
      part_views_[k] = p.buffer.cview();
    }
    wire::encode_infer_tensors(out, id, req, part_codecs_, part_names_, part_views_);
  }
  Shape head_graph_output_shape(std::size_t k, std::size_t n) const {
    const auto& g = static_cast<const GraphLayer<float>&>(head_[head_.size() - 1]).graph();
    return g.shape(parts_[k].name, n);
  }

  // The per-sample shape of the features the head sends, when it can be known before any input.
  std::vector<std::size_t> feature_signature() const {
    try {
      std::optional<Shape> in;
      if (!opt_.input_shape.empty())
        in = Shape(std::span<const std::size_t>(opt_.input_shape));
      else if (!head_.empty())
        in = input_signature(head_);
      if (!in) return {};
      const Shape out = head_.empty() ? *in : output_signature(head_, *in);
      return {out.dims().begin(), out.dims().end()};
    } catch (const error& e) {
      fail(errc::shape_mismatch, std::string("EdgeOptions::input_shape does not fit the head: ") + e.what());
    }
  }

  std::string last_error_suffix() const {
    std::lock_guard lock(pending_mutex_);
    return last_error_.empty() ? std::string() : " (" + last_error_ + ")";
  }

  // A request left pending_ (with pending_mutex_ held): a submit() waiting for room may go on.
  void room_freed_locked() {
    if (room_waiters_ > 0) room_cv_.notify_one();
  }

  // Connects and exchanges HELLO; on success the channel becomes current.
  bool try_connect() {
    try {
      Channel ch = connector_();
      std::vector<std::byte> frame;
      wire::encode_hello(frame, opt_.model, 0, check_);
      const Deadline d = deadline_after(opt_.connect_timeout, clock_);
      ch.send(frame, d);
      Message m;
      if (!receive_hello(ch, d, m)) fail(errc::timeout, "no HELLO from the cloud");
      const auto h = wire::peek(m.view(), opt_.limits);
      if (h.type == wire::MessageType::error) {
        const auto e = wire::decode_error(m.view(), opt_.limits);
        fail(e.code, "cloud refused HELLO: " + e.message);
      }
      const wire::Hello hello = wire::decode_hello_check(m.view(), opt_.limits);
      const wire::ModelIdentity& id = hello.id;
      if (id.major != opt_.model.major)
        fail(errc::version_mismatch, "cloud serves major version " + std::to_string(id.major) + " of '" + id.model_id +
                                         "', the edge speaks " + std::to_string(opt_.model.major));
      // An older cloud does not check: check what it says it takes ourselves.
      if (!check_.signature.empty() && !hello.check.signature.empty() && hello.check.signature != check_.signature)
        fail(errc::shape_mismatch, "the cloud's tail takes features of shape " +
                                       Shape(std::span<const std::size_t>(hello.check.signature)).str() +
                                       " per sample, the head produces " +
                                       Shape(std::span<const std::size_t>(check_.signature)).str());
      if (check_.fingerprint != 0 && hello.check.fingerprint != 0 && hello.check.fingerprint != check_.fingerprint)
        fail(errc::version_mismatch, "the cloud serves another tail (fingerprint differs)");
      {
        std::lock_guard lock(pending_mutex_);
        if (closed_) {
          ch.close();
          return false;
        }
        channel_ = ch;
        cloud_id_ = id;
        backoff_ = opt_.backoff_initial;
        last_sent_ = clock_.now();
        push_failed_ = false;
      }
      // Replies handed over on the thread that makes them, where the connection can: a request
      // whose batch runs inside send() is answered before submit() returns. Set up without the
      // lock, which a pushed reply takes.
      const bool pushing = ch.push_to([this](std::span<const std::byte> bytes) { on_push(bytes); });
      std::lock_guard lock(pending_mutex_);
      pushing_ = pushing;
      return true;
    } catch (const error& e) {
      std::lock_guard lock(pending_mutex_);
      ++stats_.connect_failures;
      last_connect_error_ = e.code();
      last_error_ = e.what();
      next_attempt_ = clock_.now() + backoff_;
      backoff_ = std::min(backoff_ * 2, opt_.backoff_max);
      return false;
    }
  }

  void drop_connection(Channel& ch) {
    ch.push_to({});  // waits for a pushed reply in progress
    ch.close();
    std::vector<std::uint32_t> ids;
    {
      std::lock_guard lock(pending_mutex_);
      channel_.reset();
      next_attempt_ = clock_.now() + backoff_;
      for (auto& [id, p] : pending_) ids.push_back(id);
    }
    for (auto id : ids) resolve_fallback(id, errc::unreachable, "connection to the cloud lost");
  }

  // Completes request `id` with the fallback (or the error), unless it was already answered.
  void resolve_fallback(std::uint32_t id, errc why, const std::string& what) {
    Pending p;
    {
      std::lock_guard lock(pending_mutex_);
      auto it = pending_.find(id);
      if (it == pending_.end()) return;
      p = std::move(it->second);
      pending_.erase(it);
      ++stats_.fallbacks;
      room_freed_locked();
    }
    p.result.path = AnswerPath::fallback;
    p.result.fallback_reason = why;
    p.result.fallback_message = what;
    if (!fallback_) {
      p.answer(std::make_exception_ptr(error(why, what)));
      return;
    }
    try {
      std::lock_guard lock(fallback_mutex_);
      const auto t0 = steady::now();
      p.result.output = fallback_->model.predict(p.fallback_input.cview());
      p.result.timings.fallback = seconds(steady::now() - t0);
      p.answer(std::move(p.result));
    } catch (...) {
      p.answer(std::current_exception());
    }
  }

  void expire_deadlines() {
    std::vector<std::uint32_t> late;
    {
      std::lock_guard lock(pending_mutex_);
      const auto now = clock_.now();
      for (auto& [id, p] : pending_)
        if (p.deadline <= now) late.push_back(id);
    }
    for (auto id : late) resolve_fallback(id, errc::timeout, "deadline passed before the cloud answered");
  }

  Deadline next_wake() {
    std::lock_guard lock(pending_mutex_);
    Deadline d = clock_.now() + std::chrono::milliseconds(20);
    for (auto& [id, p] : pending_) d = std::min(d, p.deadline);
    return d;
  }

  void receive_loop() {
    wire::FeatureDecoder decoder(opt_.limits);
    Message m;
    while (true) {
      std::optional<Channel> ch;
      {
        std::unique_lock lock(pending_mutex_);
        if (closed_) return;
        if (channel_) ch = channel_;
      }
      expire_deadlines();
      if (!ch) {
        bool attempt;
        {
          std::unique_lock lock(pending_mutex_);
          attempt = clock_.now() >= next_attempt_;
          if (!attempt && !clock_.is_virtual())
            pending_cv_.wait_until(lock, std::min(next_attempt_, next_wake_locked()));
          else if (!attempt)
            pending_cv_.wait_for(lock, virtual_poll);  // a virtual clock moves without notice
        }
        if (attempt && try_connect()) {
          std::lock_guard lock(pending_mutex_);
          ++stats_.reconnects;
        }
        continue;
      }
      try {
        keepalive(*ch);
        send_report(*ch);
        bool pushing;
        {
          std::unique_lock lock(pending_mutex_);
          pushing = pushing_;
          if (pushing && push_failed_) fail(errc::corrupt_frame, "a malformed reply from the cloud");
          // Replies come by push: this thread only keeps time (deadlines, keepalive).
          if (pushing && !closed_) {
            if (clock_.is_virtual()) {
              pending_cv_.wait_for(lock, pending_.empty() ? virtual_poll : virtual_poll_awaiting);
            } else {
              receiver_wakes_at_ = next_wake_locked();
              pending_cv_.wait_until(lock, receiver_wakes_at_);
              receiver_wakes_at_ = Clock::time_point::max();
            }
          }
        }
        if (pushing || !poll(*ch, m)) continue;
        handle(m.view(), decoder);
      } catch (...) {
        // closed, reset, a malformed reply, or anything else: this connection is done; requests
        // fall back (nothing ends this thread but close())
        drop_connection(*ch);
      }
    }
  }

  // A PING when nothing was sent for `keepalive`, so that an idle connection stays open.
  void keepalive(Channel& ch) {
    if (opt_.keepalive.count() <= 0) return;
    {
      std::lock_guard lock(pending_mutex_);
      if (clock_.now() - last_sent_ < opt_.keepalive) return;
      last_sent_ = clock_.now();
    }
    std::vector<std::byte> frame;
    wire::encode_ping(frame, 0, static_cast<std::uint64_t>(clock_.now().time_since_epoch().count()));
    ch.send(frame, deadline_after(opt_.connect_timeout, clock_));
  }

  // The receiver's wait for the next message. On the steady clock: until the next deadline or
  // 20 ms. On a virtual clock: what is due now (a deadline of now: a SimulatedLink on this clock
  // neither waits nor moves the clock), else a bounded real-time wait that submit() and close()
  // cut short: 0.1 ms while requests await answers, 1 ms otherwise.
  bool poll(Channel& ch, Message& m) {
    if (!clock_.is_virtual()) return ch.receive(next_wake(), m);
    if (ch.receive(clock_.now(), m)) return true;
    std::unique_lock lock(pending_mutex_);
    if (!closed_) pending_cv_.wait_for(lock, pending_.empty() ? virtual_poll : virtual_poll_awaiting);
    return false;
  }

  // Waits for the answer to HELLO until `d` (on the client's clock), polling on a virtual clock;
  // there also for at most connect_timeout of real time.
  bool receive_hello(Channel& ch, Deadline d, Message& m) {
    if (!clock_.is_virtual()) return ch.receive(d, m);
    const auto real_limit = steady::now() + opt_.connect_timeout;
    while (true) {
      if (ch.receive(clock_.now(), m)) return true;
      if (clock_.now() >= d || steady::now() >= real_limit) return false;
      std::this_thread::sleep_for(virtual_poll);
    }
  }

  Deadline next_wake_locked() const {
    Deadline d = clock_.now() + std::chrono::milliseconds(20);
    for (auto& [id, p] : pending_) d = std::min(d, p.deadline);
    return d;
  }

  // A reply handed over by the connection on the thread that made it (see try_connect): handled
  // here, under its own decoder; a malformed one is left for the receiver thread to end the
  // connection (this thread may be inside the connection's send).
  void on_push(std::span<const std::byte> bytes) {
    std::lock_guard lock(push_mutex_);
    try {
      handle(bytes, push_decoder_);
    } catch (...) {
      {
        std::lock_guard l(pending_mutex_);
        push_failed_ = true;
      }
      pending_cv_.notify_all();
    }
  }

  // Sends the ERROR that reports a refused weights push, from the receiver thread.
  void send_report(Channel& ch) {
    std::vector<std::byte> frame;
    {
      std::lock_guard lock(pending_mutex_);
      frame.swap(report_);
    }
    if (!frame.empty()) ch.send(frame, deadline_after(opt_.connect_timeout, clock_));
  }

  void handle(std::span<const std::byte> bytes, wire::FeatureDecoder& decoder) {
    const auto received = clock_.now();
    const auto h = wire::peek(bytes, opt_.limits);
    switch (h.type) {
      case wire::MessageType::response: {
        Tensor<float> y;
        const auto t0 = steady::now();
        const auto resp = wire::decode_response(bytes, decoder, y);
        const double decode_s = seconds(steady::now() - t0);
        Pending p;
        {
          std::lock_guard lock(pending_mutex_);
          auto it = pending_.find(h.request_id);
          if (it == pending_.end()) {
            ++stats_.late_replies;
            return;
          }
          p = std::move(it->second);
          pending_.erase(it);
          ++stats_.cloud_answers;
          const double rtt = seconds(received - p.sent_at);
          estimator_.observe_transfer(p.result.bytes_sent, rtt, (resp.queue_us + resp.compute_us) * 1e-6);
          room_freed_locked();
        }
        p.result.path = AnswerPath::cloud;
        p.result.output = std::move(y);
        p.result.timings.round_trip = seconds(received - p.sent_at);
        p.result.timings.server_queue = resp.queue_us * 1e-6;
        p.result.timings.server_compute = resp.compute_us * 1e-6;
        p.result.timings.decode = decode_s;
        p.answer(std::move(p.result));
        return;
      }
      case wire::MessageType::error: {
        const auto e = wire::decode_error(bytes, opt_.limits);
        if (h.request_id == 0) {  // about the connection, not a request: keep it for last_error()
          std::lock_guard lock(pending_mutex_);
          last_error_ = "cloud: " + std::string(to_string(e.code)) + ": " + e.message;
        }
        resolve_fallback(h.request_id, e.code, "cloud: " + e.message);
        return;
      }
      case wire::MessageType::weights: {
        std::vector<wire::NamedTensor> tensors;
        const auto id = wire::decode_weights(bytes, tensors, opt_.limits);
        std::string why;
        if (id.model_id != opt_.model.model_id || id.major != opt_.model.major)
          why = "weights for '" + id.model_id + "' major " + std::to_string(id.major) + ", the edge runs '" +
                opt_.model.model_id + "' major " + std::to_string(opt_.model.major);
        else
          why = weights_mismatch(tensors);
        if (!why.empty()) {
          // Refused loudly: counted, kept for last_error(), and reported to the cloud by the
          // receiver thread (this one may be inside a send of the connection).
          std::vector<std::byte> frame;
          wire::encode_error(frame, 0, errc::shape_mismatch, "weights push refused: " + why);
          {
            std::lock_guard lock(pending_mutex_);
            ++stats_.weights_refused;
            last_error_ = "weights push refused: " + why;
            report_ = std::move(frame);
          }
          pending_cv_.notify_all();
          return;
        }
        std::lock_guard lock(pending_mutex_);
        staged_weights_ = std::move(tensors);
        ++stats_.weight_updates;
        return;
      }
      case wire::MessageType::pong: {
        const std::uint64_t t = wire::decode_ping(bytes, opt_.limits);
        const auto sent = Clock::time_point(Clock::duration(static_cast<Clock::duration::rep>(t)));
        std::lock_guard lock(pending_mutex_);
        estimator_.observe_rtt(seconds(received - sent));
        return;
      }
      default:
        fail(errc::corrupt_frame, "unexpected " + std::string(wire::to_string(h.type)) + " frame from the cloud");
    }
  }

  const Clock& clock_;
  std::mutex push_mutex_;         // push_decoder_: one pushed reply at a time
  wire::FeatureDecoder push_decoder_;  // limits set in the constructor
  std::mutex head_mutex_;  // head_, encoder_: one request's head pass and encoding at a time
  Sequential<float> head_;
  Connector connector_;
  EdgeOptions opt_;
  std::optional<Fallback> fallback_;
  std::mutex fallback_mutex_;
  wire::FeatureEncoder encoder_;
  // A graph head of several outputs sends each as its own named tensor (INFER_TENSORS).
  struct Part {
    std::string name;
    std::size_t width = 0;  // elements per sample
    Tensor<float> buffer;  // this output's samples, gathered from the packed row
  };
  std::vector<Part> parts_;
  std::vector<wire::FeatureEncoder> part_codecs_;  // one per part: each output is quantized on its own
  std::vector<std::string> part_names_;
  std::vector<TensorView<const float>> part_views_;

  mutable std::mutex pending_mutex_;  // everything below
  std::condition_variable pending_cv_;  // wakes the receiver thread
  std::condition_variable room_cv_;     // wakes a submit() waiting for max_in_flight to allow it
  std::size_t room_waiters_ = 0;
  // When the receiver, waiting for pushed replies, looks again on its own (max: it is elsewhere,
  // and submit() wakes it for any request)
  Clock::time_point receiver_wakes_at_ = Clock::time_point::max();
  std::map<std::uint32_t, Pending> pending_;
  std::optional<Channel> channel_;
  wire::ModelIdentity cloud_id_;
  LinkEstimator estimator_;
  EdgeStats stats_;
  std::vector<wire::NamedTensor> staged_weights_;
  std::chrono::milliseconds backoff_{opt_.backoff_initial};
  Clock::time_point next_attempt_{};
  std::optional<errc> last_connect_error_;
  std::string last_error_;
  std::vector<std::byte> report_;  // an ERROR for the cloud, sent by the receiver thread
  bool pushing_ = false;      // the connection hands replies to on_push
  bool push_failed_ = false;  // on_push met a malformed reply: the receiver ends the connection
  Clock::time_point last_sent_{};
  wire::ModelCheck check_;  // what HELLO tells the cloud to check
  bool closed_ = false;
  std::atomic<std::uint32_t> next_id_{1};
  std::thread receiver_;
};

}  // namespace edgesplit
