// edgesplit/eval/ground_truth.hpp - run one (split, codec) end to end through the runtime
// (EdgeClient, RequestHandler, DynamicBatcher) over a simulated link on virtual time, and measure
// its latency: the reference the planner's predictions are checked against.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/eval/metered_clock.hpp"
#include "edgesplit/nn/graph.hpp"
#include "edgesplit/nn/sequential.hpp"
#include "edgesplit/plan/candidates.hpp"
#include "edgesplit/plan/profile.hpp"
#include "edgesplit/runtime/channel.hpp"
#include "edgesplit/runtime/dynamic_batcher.hpp"
#include "edgesplit/runtime/edge_client.hpp"
#include "edgesplit/runtime/memory_budget.hpp"
#include "edgesplit/runtime/model_registry.hpp"
#include "edgesplit/runtime/request_handler.hpp"
#include "edgesplit/runtime/server_options.hpp"
#include "edgesplit/transport/inproc.hpp"
#include "edgesplit/transport/simulated_link.hpp"
#include "edgesplit/wire/feature_codec.hpp"
#include "edgesplit/wire/protocol.hpp"

namespace edgesplit {

/// How measure_end_to_end runs and charges one (k, codec).
struct GroundTruthOptions {
  std::size_t requests = 15;  ///< single-sample requests per (k, codec); medians are reported
  std::size_t warmup = 2;     ///< requests run first and not counted
  /// How the edge's compute is charged. With `edge_profile` null it is measured on this machine
  /// and multiplied by `edge_slowdown` (a scaled board: the same factor as
  /// `scaled(profile, factor)`): the head, the EdgeClient's work from submit() until the request
  /// leaves (encoding, its bookkeeping), and decoding the reply (the median of a few decodes of
  /// the same reply). With a profile, the head costs what the profile says and the rest is
  /// measured x `edge_slowdown` (an emulated board, deterministic whenever the network dominates).
  double edge_slowdown = 1;
  const DeviceProfile* edge_profile = nullptr;  ///< a scaled or analytic edge profile, or null to measure
  /// With an edge profile, also charge the EdgeClient's work until the request leaves from these
  /// candidates' encode_seconds (looked up by codec name; scale them first with
  /// scale_codec_costs) instead of measuring it.
  const std::vector<CodecCandidate>* edge_codec_costs = nullptr;
  std::string model_id = "model";  ///< model id in the frames
};

/// Medians over the requests of one (k, codec), seconds.
struct Measured {
  std::size_t split = 0;  ///< k: layers [0, k) on the edge (for a graph: the head's node count)
  std::string codec;  ///< codec name, "-" for all-edge
  ///@{
  /// Medians of each part: edge compute (the head), encoding (the EdgeClient's work until the
  /// request leaves), uplink, cloud (the server from the request's arrival until its reply
  /// leaves), downlink, decoding the reply.
  double edge_s = 0, encode_s = 0, uplink_s = 0, cloud_s = 0, downlink_s = 0, decode_reply_s = 0;
  ///@}
  double latency_s = 0;  ///< median end-to-end latency (not the sum of the medians)
  double bytes = 0;      ///< INFER frame bytes (mean)
};

namespace detail {

// The cloud of a ground-truth run: the server's RequestHandler and a DynamicBatcher without
// workers, fed from the cloud end of the link by a thread of its own, which also runs the batches
// (run_ready). That thread holds a meter (factor 1: the cloud is this machine) from the arrival
// of each message until its reply is handed to the link, so the server's work moves the clock
// as it goes (the RESPONSE's queue and compute times are read on it too). Once the reply is
// stamped, the clock is moved to its delivery: the edge's receiver, which only polls a virtual
// clock, then takes it.
class GroundTruthCloud {
 public:
  // What the cloud saw of the last message it answered (seconds).
  struct Turn {
    double uplink_s = 0, cloud_s = 0, downlink_s = 0;
    std::vector<std::byte> reply;  // the frame sent back
  };

  GroundTruthCloud(MeteredClock& clock, SimulatedLink<InProcTransport> link, const wire::ModelIdentity& id,
                   Sequential<float> tail)
      : clock_(clock), link_(std::move(link)), options_(server_options()), budget_(options_.memory_budget),
        batcher_(registry_, options_, clock_), handler_(registry_, batcher_, budget_, options_, clock_) {
    registry_.add(id, std::move(tail));
    auto sink = std::make_shared<Sink>();
    sink->self = this;
    session_.peer = "ground truth";
    session_.source = batcher_.open_source(std::move(sink));
    thread_ = std::thread([this] { run(); });
  }
  GroundTruthCloud(const GroundTruthCloud&) = delete;
  GroundTruthCloud& operator=(const GroundTruthCloud&) = delete;
  ~GroundTruthCloud() {
    link_.close();
    if (thread_.joinable()) thread_.join();
    batcher_.stop(std::chrono::milliseconds(0));  // while the sink's state is still alive
  }

  Turn last() const {
    std::lock_guard lock(mutex_);
    return turn_;
  }
  // What ended the cloud's thread early, if anything did.
  std::exception_ptr failure() const {
    std::lock_guard lock(mutex_);
    return failure_;
  }

 private:
  struct Sink final : ReplySink {
    GroundTruthCloud* self = nullptr;
    void deliver(std::span<const std::byte> frame, MemoryBudget::Reservation) override { self->reply(frame); }
  };

  static ServerOptions server_options() {
    ServerOptions o;
    o.workers = 0;  // batches run on the cloud's thread, through run_ready()
    o.max_queue_delay = std::chrono::microseconds(0);
    o.log = [](std::string_view) {};  // refusals reach the edge as errors
    return o;
  }

  void run() {
    try {
      wire::FeatureDecoder codec(options_.limits);
      Message m;
      while (true) {
        if (!link_.receive(no_deadline, m)) continue;  // moves the clock to the delivery
        uplink_ = m.transfer_time();
        MeteredClock::Meter meter(clock_, 1.0);
        meter_ = &meter;
        const RequestHandler::Verdict v = handler_.handle(session_, m.view(), codec);
        batcher_.run_ready();
        meter_ = nullptr;
        if (v == RequestHandler::Verdict::close) break;
      }
    } catch (const error& e) {
      if (e.code() != errc::unreachable) keep_failure();  // unreachable: the edge closed, the run is over
    } catch (...) {
      keep_failure();
    }
    meter_ = nullptr;
    link_.close();  // the edge sees its connection end
  }

  void keep_failure() {
    std::lock_guard lock(mutex_);
    failure_ = std::current_exception();
  }

  // On the cloud's thread, with the meter running since the message arrived.
  void reply(std::span<const std::byte> frame) {
    (void)clock_.now();  // charges the server's work up to here
    Clock::duration cloud{};
    if (meter_) {
      cloud = meter_->charged();
      meter_->stop();
    }
    const Clock::time_point sent = clock_.now();
    const std::optional<Clock::time_point> due = link_.send(frame);
    if (!due) fail(errc::unreachable, "measure_end_to_end: the link lost a reply (use loss 0)");
    {
      std::lock_guard lock(mutex_);
      turn_.uplink_s = seconds(uplink_);
      turn_.cloud_s = seconds(cloud);
      turn_.downlink_s = seconds(*due - sent);
      turn_.reply.assign(frame.begin(), frame.end());
    }
    clock_.advance_to(*due);
  }

  static double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

  MeteredClock& clock_;
  SimulatedLink<InProcTransport> link_;
  const ServerOptions options_;
  ModelRegistry registry_;
  MemoryBudget budget_;
  DynamicBatcher batcher_;
  RequestHandler handler_;
  Session session_;           // the cloud thread's
  Clock::duration uplink_{};  // the cloud thread's: transfer time of the message being answered
  MeteredClock::Meter* meter_ = nullptr;  // the cloud thread's, while a message is handled
  mutable std::mutex mutex_;
  Turn turn_;
  std::exception_ptr failure_;
  std::thread thread_;
};

}  // namespace detail

namespace detail {

// What one ground-truth run measures: a head run on the edge and a tail served in the cloud.
struct GroundTruthSplit {
  Sequential<float> head;         // run on the measuring thread, its cost charged as opt says
  double profile_head_s = 0;      // the head's cost from opt.edge_profile (used when one is given)
  std::optional<Sequential<float>> tail;  // nullopt: all-edge, nothing sent
  Sequential<float> client_head;  // the EdgeClient's own head: empty, or a graph's pass-through
  std::vector<std::size_t> feature_shape;  // per-sample shape the client sends (EdgeOptions::input_shape)
  std::size_t split = 0;          // Measured::split and the ModelIdentity's split
  const CodecCandidate* encode_cost = nullptr;  // charged instead of metering submit(), if given
};

// The loop of measure_end_to_end and measure_graph_cut: one single-sample request at a time.
inline Measured run_ground_truth(GroundTruthSplit& s, const CodecSpec& spec, TensorView<const float> inputs,
                                 const LinkProfile& up, const LinkProfile& down, const GroundTruthOptions& opt) {
  using steady = std::chrono::steady_clock;
  const std::size_t n = inputs.shape().batch();
  const auto secs = [](steady::duration d) { return std::chrono::duration<double>(d).count(); };

  // Decoding the reply is charged as this machine's time x slowdown, timed here: the median of a
  // few decodes of the same frame. The EdgeClient's receiver decodes each reply once, right after
  // a wait, so its own timing (RequestTimings::decode) carries cache misses and wake-up costs
  // that the slowdown would multiply into the board's compute (x10000: 0.15 us becomes 1.5 ms).
  wire::FeatureDecoder reply_codec;
  Tensor<float> reply_out;
  const auto reply_decode_seconds = [&](const std::vector<std::byte>& frame) {
    std::vector<double> t;
    for (int i = 0; i < 5; ++i) {
      const auto t0 = steady::now();
      (void)wire::decode_response(frame, reply_codec, reply_out);
      t.push_back(secs(steady::now() - t0));
    }
    return median(std::move(t));
  };

  MeteredClock clock;
  // The head, on this thread: its cost comes from the profile or from this machine x slowdown.
  const auto run_head = [&](TensorView<const float> x) {
    if (opt.edge_profile) {
      const TensorView<const float> h = s.head.forward(x);
      clock.advance_by_seconds(s.profile_head_s);
      return std::pair{h, s.profile_head_s};
    }
    // Once untimed first: the thread has just waited for the previous answer, and the profile
    // this is compared with is the median of back-to-back (warm) runs.
    (void)s.head.forward(x);
    const auto t0 = steady::now();
    const TensorView<const float> h = s.head.forward(x);
    const double t = secs(steady::now() - t0) * opt.edge_slowdown;
    clock.advance_by_seconds(t);
    return std::pair{h, t};
  };

  std::vector<double> edge_t, enc_t, up_t, cloud_t, down_t, dreply_t, total_t;
  double bytes = 0;
  const auto finish = [&] {
    Measured m;
    m.split = s.split;
    m.codec = s.tail ? spec.name : "-";
    m.edge_s = median(edge_t);
    m.encode_s = median(enc_t);
    m.uplink_s = median(up_t);
    m.cloud_s = median(cloud_t);
    m.downlink_s = median(down_t);
    m.decode_reply_s = median(dreply_t);
    m.latency_s = median(total_t);
    m.bytes = s.tail ? bytes / static_cast<double>(opt.warmup + opt.requests) : 0;
    return m;
  };

  if (!s.tail) {  // all-edge: nothing crosses the link
    for (std::size_t r = 0; r < opt.warmup + opt.requests; ++r) {
      const Clock::time_point start = clock.now();
      const double edge_s = run_head(inputs.batch(r % n, r % n + 1)).second;
      if (r < opt.warmup) continue;
      edge_t.push_back(edge_s);
      for (auto* v : {&enc_t, &up_t, &cloud_t, &down_t, &dreply_t}) v->push_back(0);
      total_t.push_back(std::chrono::duration<double>(clock.now() - start).count());
    }
    return finish();
  }

  const wire::ModelIdentity id{opt.model_id, 1, 0,
                               static_cast<std::uint16_t>(std::min<std::size_t>(s.split, UINT16_MAX))};
  auto [edge_end, cloud_end] = InProcTransport::make_pair();
  GroundTruthCloud cloud(clock, SimulatedLink<InProcTransport>(std::move(cloud_end), down, 2, clock), id,
                         std::move(*s.tail));
  std::optional<SimulatedLink<InProcTransport>> edge_link;
  edge_link.emplace(std::move(edge_end), up, 1, clock);

  EdgeOptions eo;
  eo.model = id;
  eo.codec = spec.config;
  eo.keepalive = std::chrono::milliseconds(0);    // no PING on the link between requests
  eo.connect_timeout = std::chrono::seconds(30);  // the cloud answers HELLO at once; real time bounds it
  eo.input_shape = s.feature_shape;               // checked by the cloud at HELLO
  EdgeClient client(
      std::move(s.client_head),
      [&edge_link]() -> Channel {
        if (!edge_link) fail(errc::unreachable, "measure_end_to_end: the link is gone");  // no reconnecting
        Channel c(std::move(*edge_link));
        edge_link.reset();
        return c;
      },
      std::move(eo), std::nullopt, clock);
  if (!client.connected()) {
    if (const auto f = cloud.failure()) std::rethrow_exception(f);
    fail(errc::unreachable, "measure_end_to_end: the edge could not connect: " + client.last_error());
  }

  for (std::size_t r = 0; r < opt.warmup + opt.requests; ++r) {
    const Clock::time_point start = clock.now();
    const auto [h, edge_s] = run_head(inputs.batch(r % n, r % n + 1));
    std::future<InferResult> fut;
    double enc_s = 0;
    if (s.encode_cost) {
      enc_s = s.encode_cost->encode_seconds[s.split];
      clock.advance_by_seconds(enc_s);
      fut = client.submit(h, no_deadline);
    } else {
      // The meter stops charging at the clock's last reading on this thread inside submit(): the
      // link stamping the request as it leaves. What submit() does after that is not charged.
      MeteredClock::Meter meter(clock, opt.edge_slowdown);
      fut = client.submit(h, no_deadline);
      enc_s = meter.charged_seconds();
    }
    if (fut.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
      if (const auto f = cloud.failure()) std::rethrow_exception(f);
      fail(errc::timeout, "measure_end_to_end: no answer within 60 s of real time");
    }
    const InferResult res = fut.get();  // the cloud's ERROR, if it answered one, as a typed error
    const GroundTruthCloud::Turn turn = cloud.last();
    const double dreply_s = reply_decode_seconds(turn.reply) * opt.edge_slowdown;
    clock.advance_by_seconds(dreply_s);
    bytes += static_cast<double>(res.bytes_sent);
    if (r < opt.warmup) continue;
    edge_t.push_back(edge_s);
    enc_t.push_back(enc_s);
    up_t.push_back(turn.uplink_s);
    cloud_t.push_back(turn.cloud_s);
    down_t.push_back(turn.downlink_s);
    dreply_t.push_back(dreply_s);
    total_t.push_back(std::chrono::duration<double>(clock.now() - start).count());
  }
  client.close();
  return finish();
}

}  // namespace detail

/// Runs (split `k`, codec `spec`) of `model` end to end, one single-sample request at a time,
/// through the runtime, over a SimulatedLink pair (`up`, `down`) on a MeteredClock (virtual time):
///
///   edge: head forward (on the calling thread, charged as `opt` says; when measured, after one
///   untimed pass, as the profile's runs are warm) -> EdgeClient::submit:
///   encode INFER, send (its work metered x edge_slowdown, or charged from the codec costs)
///   -> link up (virtual time: serialization + latency, exact) -> cloud: the server's
///   RequestHandler decodes and queues, its DynamicBatcher runs the tail and encodes the RESPONSE
///   (metered: this machine's time) -> link down (virtual, exact) -> edge: the EdgeClient's
///   receiver decodes the reply (charged: this machine's time to decode it x edge_slowdown).
///
/// The EdgeClient is given an empty head (as at split 0) and sends the head's output, so that the
/// head's cost can come from a profile. k = L is all-edge: the whole model on the edge, nothing
/// sent, no runtime. Inputs are the rows of `inputs`, cycled. The clock therefore reads exactly
/// what a board with that compute would see. The links must not lose messages (loss 0).
inline Measured measure_end_to_end(const Sequential<float>& model, std::size_t k, const CodecSpec& spec,
                                   TensorView<const float> inputs, const LinkProfile& up, const LinkProfile& down,
                                   const GroundTruthOptions& opt = {}) {
  const std::size_t L = model.size(), n = inputs.shape().batch();
  if (k > L) fail(errc::out_of_range, "measure_end_to_end: split " + std::to_string(k) + " past the model");
  if (n == 0 || opt.requests == 0) fail(errc::invalid_argument, "measure_end_to_end: no inputs or no requests");
  if (!(opt.edge_slowdown > 0)) fail(errc::invalid_argument, "measure_end_to_end: edge_slowdown must be > 0");
  if (opt.edge_profile && opt.edge_profile->layer_count() != L)
    fail(errc::shape_mismatch, "measure_end_to_end: edge profile and model disagree on the layer count");
  if (k < L && (up.loss > 0 || down.loss > 0))
    fail(errc::invalid_argument, "measure_end_to_end: the links must not lose messages (loss 0)");

  auto parts = model.split(k);
  detail::GroundTruthSplit s;
  s.head = std::move(parts.first);
  s.profile_head_s = opt.edge_profile ? opt.edge_profile->seconds(0, k, 1) : 0;
  s.split = k;
  if (k < L) {
    if (opt.edge_profile && opt.edge_codec_costs) {
      for (const auto& c : *opt.edge_codec_costs)
        if (c.name == spec.name) s.encode_cost = &c;
      if (!s.encode_cost || s.encode_cost->encode_seconds.size() != L + 1)
        fail(errc::invalid_argument, "measure_end_to_end: no encode costs for codec " + spec.name);
    }
    const Shape features = s.head.output_shape(inputs.batch(0, 1).shape());
    s.feature_shape.assign(features.dims().begin() + 1, features.dims().end());
    s.tail = std::move(parts.second);
  }
  return detail::run_ground_truth(s, spec, inputs, up, down, opt);
}

/// The graph counterpart of measure_end_to_end: runs the cut of `graph` at the tensors `cut`
/// (see Graph::cut) end to end with codec `spec`. The head runs on the calling thread; the
/// EdgeClient sends its outputs (a cut of several tensors as one INFER_TENSORS frame, each tensor
/// quantized with its own range, as EdgeClient(Graph head) does); the cloud serves the tail.
/// Measured::split is the head's node count. The graph's outputs as the cut is all-edge: the
/// whole graph on the edge, nothing sent. With `opt.edge_profile` (one entry per node, e.g.
/// `analytic_graph_profile`) the head costs the sum of its nodes' entries at batch 1;
/// `opt.edge_codec_costs` does not apply to graphs (the client's work is measured x
/// edge_slowdown). Inputs: a graph of one input, its rows cycled. Errors: those of Graph::cut,
/// errc::invalid_argument for a graph of several inputs, no inputs or lossy links, and
/// errc::shape_mismatch for a profile whose entry count is not the node count.
inline Measured measure_graph_cut(const Graph<float>& graph, const std::vector<std::string>& cut, const CodecSpec& spec,
                                  TensorView<const float> inputs, const LinkProfile& up, const LinkProfile& down,
                                  const GroundTruthOptions& opt = {}) {
  if (graph.input_names().size() != 1)
    fail(errc::invalid_argument, "measure_graph_cut: a graph of one input is measured");
  if (inputs.shape().batch() == 0 || opt.requests == 0)
    fail(errc::invalid_argument, "measure_graph_cut: no inputs or no requests");
  if (!(opt.edge_slowdown > 0)) fail(errc::invalid_argument, "measure_graph_cut: edge_slowdown must be > 0");
  if (opt.edge_profile && opt.edge_profile->layer_count() != graph.node_count())
    fail(errc::shape_mismatch, "measure_graph_cut: edge profile and graph disagree on the node count");
  std::vector<std::string> outputs = graph.output_names(), sorted = cut;
  std::sort(outputs.begin(), outputs.end());
  std::sort(sorted.begin(), sorted.end());
  const bool all_edge = sorted == outputs;
  if (!all_edge && (up.loss > 0 || down.loss > 0))
    fail(errc::invalid_argument, "measure_graph_cut: the links must not lose messages (loss 0)");

  auto [head, tail] = graph.cut(cut);
  detail::GroundTruthSplit s;
  s.split = head.node_count();
  // The head's nodes by their output names, which cut() keeps (no node makes a graph input).
  if (opt.edge_profile)
    for (std::size_t i = 0; i < graph.node_count(); ++i)
      if (head.contains(graph.node_output(i)))
        s.profile_head_s += opt.edge_profile->seconds(i, i + 1, 1);
  if (!all_edge) {
    // The client's own head passes the cut's tensors through: the tail's inputs, as outputs.
    Graph<float> pass = tail.cut(tail.input_names()).first;
    const std::vector<std::string> sent = pass.input_names();
    if (sent.size() == 1) {
      const auto d = pass.sample_shape(sent[0]).dims();
      s.feature_shape.assign(d.begin(), d.end());
    } else {
      std::size_t width = 0;
      for (const auto& t : sent) width += pass.sample_shape(t).count();
      s.feature_shape = {width};
    }
    s.client_head = as_sequential(std::move(pass));
    s.tail = as_sequential(std::move(tail));
  }
  s.head = as_sequential(std::move(head));
  return detail::run_ground_truth(s, spec, inputs, up, down, opt);
}

/// Every (k, codec) of `model` measured end to end (all-edge once, as k = L), in the order
/// k = 0..L-1 x specs, then all-edge.
inline std::vector<Measured> measure_all(const Sequential<float>& model, const std::vector<CodecSpec>& specs,
                                         TensorView<const float> inputs, const LinkProfile& up, const LinkProfile& down,
                                         const GroundTruthOptions& opt = {}) {
  std::vector<Measured> out;
  for (std::size_t k = 0; k < model.size(); ++k)
    for (const auto& s : specs) out.push_back(measure_end_to_end(model, k, s, inputs, up, down, opt));
  out.push_back(measure_end_to_end(model, model.size(), specs.front(), inputs, up, down, opt));
  return out;
}

/// The measurement of (split, codec) in `all` (codec "-" for all-edge); errc::out_of_range if absent.
inline const Measured& find_measured(const std::vector<Measured>& all, std::size_t split, const std::string& codec) {
  for (const auto& m : all)
    if (m.split == split && m.codec == codec) return m;
  fail(errc::out_of_range, "no measurement for split " + std::to_string(split) + " codec " + codec);
}

}  // namespace edgesplit
