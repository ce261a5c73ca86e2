// edgesplit/runtime/adaptive_client.hpp - re-planning: move the split point and the codec as the
// measured link changes, without dropping or duplicating a request.
#pragma once

#include <cstddef>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/nn/sequential.hpp"
#include "edgesplit/plan/candidates.hpp"
#include "edgesplit/plan/link.hpp"
#include "edgesplit/plan/planner.hpp"
#include "edgesplit/plan/profile.hpp"
#include "edgesplit/runtime/edge_client.hpp"

namespace edgesplit {

/// The plan in use, and when to leave it: the decision half of re-planning, a pure function of
/// the link estimates it is fed (so it is tested on its own, deterministically).
///
/// Hysteresis: the current plan is kept until its predicted cost under the new estimate exceeds
/// the best plan's by more than the factor (1 + hysteresis). At the boundary between two plans
/// both cost the same, so the estimate must move past the boundary by a margin before the plan
/// changes, and back past it by the same margin before it changes back: an estimate that
/// wobbles around the boundary does not make the plan flap.
class PlanSelector {
 public:
  /// Plans for the `edge` and `cloud` profiles and the measured `codecs` under `request`, on the
  /// `initial` link; re-plans for each new link estimate, switching only past `hysteresis`.
  PlanSelector(DeviceProfile edge, DeviceProfile cloud, std::vector<CodecCandidate> codecs, PlanRequest request,
               const LinkModel& initial, double hysteresis = 0.15)
      : edge_(std::move(edge)), cloud_(std::move(cloud)), codecs_(std::move(codecs)), req_(request), h_(hysteresis) {
    if (!(hysteresis >= 0)) fail(errc::invalid_argument, "PlanSelector: hysteresis must be >= 0");
    plans_ = plan_split(edge_, cloud_, initial, codecs_, req_);
    current_ = plans_.front();
  }

  /// Re-plans for `estimate`; true when the plan changed.
  bool update(const LinkModel& estimate) {
    plans_ = plan_split(edge_, cloud_, estimate, codecs_, req_);
    const Plan& best = plans_.front();
    for (const Plan& p : plans_) {
      if (p.split != current_.split || p.codec != current_.codec) continue;
      current_ = p;  // the current plan re-predicted under the new estimate
      if (!(key(p) > (1 + h_) * key(best))) return false;
      break;
    }
    const bool changed = best.split != current_.split || best.codec != current_.codec;
    current_ = best;
    if (changed) ++switches_;
    return changed;
  }

  const Plan& current() const noexcept { return current_; }  ///< the plan in use
  /// The best plan that uses the cloud and sends at least `min_bytes` per request, or failing
  /// that the cloud plan that sends the most: for probing the link while the plan is all-edge.
  const Plan& best_cloud(double min_bytes = 0) const {
    const Plan* largest = nullptr;
    for (const Plan& p : plans_) {
      if (p.split >= edge_.layer_count()) continue;
      if (p.bytes >= min_bytes) return p;
      if (!largest || p.bytes > largest->bytes) largest = &p;
    }
    return largest ? *largest : plans_.front();
  }
  std::size_t layer_count() const { return edge_.layer_count(); }  ///< layers of the model planned for
  std::size_t switches() const noexcept { return switches_; }  ///< how many times the plan changed
  /// Every plan, best first, under the latest estimate.
  const std::vector<Plan>& ranked() const noexcept { return plans_; }

 private:
  double key(const Plan& p) const {
    switch (req_.objective) {
      case Objective::latency: return p.latency_s;
      case Objective::edge_energy: return p.energy_j;
      case Objective::bytes: return p.bytes;
    }
    return p.latency_s;
  }
  DeviceProfile edge_, cloud_;
  std::vector<CodecCandidate> codecs_;
  PlanRequest req_;
  double h_;
  std::vector<Plan> plans_;
  Plan current_;
  std::size_t switches_ = 0;
};

/// How an AdaptiveClient estimates the link and probes it.
struct AdaptiveOptions {
  double estimator_alpha = 0.3;    ///< weight of each new throughput sample
  /// While the plan is all-edge nothing crosses the link, so nothing would tell the estimate
  /// that the link got better: every `probe_every`-th request then goes to the best cloud plan.
  std::size_t probe_every = 8;
  /// Answers whose request was smaller than this do not update the bandwidth estimate: a
  /// message that fits in one packet measures the latency and the scheduling noise, not the
  /// rate. Probes use a plan that sends at least this much when there is one.
  double min_sample_bytes = 1500;
};

/// One answer, with the plan that produced it.
struct AdaptiveResult {
  InferResult result;  ///< for a local (all-edge) answer only `output` is meaningful
  std::size_t split = 0;  ///< the split that answered
  std::string codec;   ///< "-" for all-edge
  bool local = false;  ///< true when answered on the edge (all-edge plan)
};

/// An edge client that follows the link: one EdgeClient per (split, codec) plan in use, created
/// when first chosen and kept, so a request in flight finishes on the connection it started on
/// while new requests go to the current plan's client; nothing is dropped or sent twice. The
/// cloud must serve the tail of every split the planner may choose under `edge.model` (the
/// template of each plan's EdgeOptions: model id and major version; the split point and the
/// codec are set per plan).
///
/// The link estimate (an EWMA of uplink throughput, RTT from the prior) learns from each cloud
/// answer of at least `min_sample_bytes` when its future is collected; after each, the
/// PlanSelector decides, with hysteresis, whether new requests move to another plan. `submit`
/// may be called from one thread at a time.
class AdaptiveClient {
 public:
  /// Runs `model` split where the planner says, one EdgeClient per (split, codec) plan in use, each connected
  /// through `connector`.
  AdaptiveClient(Sequential<float> model, EdgeClient::Connector connector, std::vector<CodecSpec> specs,
                 PlanSelector selector, LinkModel prior, EdgeOptions edge, AdaptiveOptions options = {})
      : state_(std::make_shared<State>(std::move(model), std::move(connector), std::move(specs), std::move(selector),
                                       std::move(prior), std::move(edge), options)) {
    if (!state_->connector) fail(errc::invalid_argument, "AdaptiveClient needs a connector");
    if (state_->opt.probe_every == 0) fail(errc::invalid_argument, "AdaptiveClient probe_every must be >= 1");
  }
  AdaptiveClient(const AdaptiveClient&) = delete;
  AdaptiveClient& operator=(const AdaptiveClient&) = delete;
  ~AdaptiveClient() { close(); }

  /// Starts one request on the current plan (deadline on the steady clock, as EdgeClient).
  std::future<AdaptiveResult> submit(TensorView<const float> x, Deadline deadline) {
    State& s = *state_;
    Plan plan;
    {
      std::lock_guard lock(s.mutex);
      plan = s.selector.current();
      const bool all_edge = plan.split == s.selector.layer_count();
      if (all_edge && ++s.since_probe >= s.opt.probe_every) {
        s.since_probe = 0;
        plan = s.selector.best_cloud(s.opt.min_sample_bytes);
      }
    }
    if (plan.split == s.selector.layer_count()) {
      std::promise<AdaptiveResult> done;
      AdaptiveResult r;
      r.split = plan.split;
      r.codec = "-";
      r.local = true;
      {
        std::lock_guard lock(s.local_mutex);
        r.result.output = s.model.predict(x);
      }
      done.set_value(std::move(r));
      return done.get_future();
    }
    EdgeClient& client = client_for(plan);
    std::shared_future<InferResult> inner = client.submit(x, deadline).share();
    std::shared_ptr<State> keep = state_;
    return std::async(std::launch::deferred, [keep, inner, plan]() {
      AdaptiveResult r;
      r.result = inner.get();
      r.split = plan.split;
      r.codec = plan.codec;
      if (r.result.path == AnswerPath::cloud && static_cast<double>(r.result.bytes_sent) >= keep->opt.min_sample_bytes) {
        const auto& t = r.result.timings;
        std::lock_guard lock(keep->mutex);
        keep->estimator.observe_transfer(r.result.bytes_sent, t.round_trip, t.server_queue + t.server_compute);
        keep->selector.update(keep->estimator.estimate());
      }
      return r;
    });
  }

  /// The plan in use.
  Plan plan() const {
    std::lock_guard lock(state_->mutex);
    return state_->selector.current();
  }
  /// The current link estimate.
  LinkModel link_estimate() const {
    std::lock_guard lock(state_->mutex);
    return state_->estimator.estimate();
  }
  /// How many times the plan changed.
  std::size_t switches() const {
    std::lock_guard lock(state_->mutex);
    return state_->selector.switches();
  }
  /// The counters of every plan's client so far, summed.
  EdgeStats stats() const {
    std::lock_guard lock(state_->mutex);
    EdgeStats sum;
    for (const auto& [key, c] : state_->clients) {
      const EdgeStats s = c->stats();
      sum.submitted += s.submitted;
      sum.cloud_answers += s.cloud_answers;
      sum.fallbacks += s.fallbacks;
      sum.reconnects += s.reconnects;
      sum.connect_failures += s.connect_failures;
      sum.weight_updates += s.weight_updates;
      sum.weights_refused += s.weights_refused;
      sum.late_replies += s.late_replies;
    }
    return sum;
  }
  /// Plans that have had a client so far.
  std::size_t clients() const {
    std::lock_guard lock(state_->mutex);
    return state_->clients.size();
  }

  /// Closes every plan's client (their pending requests are answered as EdgeClient::close says).
  void close() {
    std::map<std::pair<std::size_t, std::string>, std::unique_ptr<EdgeClient>> clients;
    {
      std::lock_guard lock(state_->mutex);
      clients.swap(state_->clients);
    }
    for (auto& [key, c] : clients) c->close();
  }

 private:
  struct State {
    State(Sequential<float> m, EdgeClient::Connector c, std::vector<CodecSpec> sp, PlanSelector sel, LinkModel prior,
          EdgeOptions e, AdaptiveOptions o)
        : model(std::move(m)),
          connector(std::move(c)),
          specs(std::move(sp)),
          edge(std::move(e)),
          opt(o),
          selector(std::move(sel)),
          estimator(std::move(prior), opt.estimator_alpha) {}
    std::mutex local_mutex;  // model
    Sequential<float> model;
    EdgeClient::Connector connector;
    std::vector<CodecSpec> specs;
    EdgeOptions edge;
    AdaptiveOptions opt;
    mutable std::mutex mutex;  // everything below
    PlanSelector selector;
    LinkEstimator estimator;
    std::size_t since_probe = 0;
    std::map<std::pair<std::size_t, std::string>, std::unique_ptr<EdgeClient>> clients;
  };

  EdgeClient& client_for(const Plan& plan) {
    State& s = *state_;
    std::unique_lock lock(s.mutex);
    const auto key = std::make_pair(plan.split, plan.codec);
    if (auto it = s.clients.find(key); it != s.clients.end()) return *it->second;
    EdgeOptions eo = s.edge;
    eo.model.split = static_cast<std::uint16_t>(plan.split);
    eo.codec = find_codec(s.specs, plan.codec).config;
    eo.link_prior = s.estimator.estimate();
    lock.unlock();  // connecting takes a round trip: not under the lock
    Sequential<float> head;
    {
      std::lock_guard local(s.local_mutex);  // cloning reads what a local predict may be writing
      head = s.model.split(plan.split).first;
    }
    auto client = std::make_unique<EdgeClient>(std::move(head), s.connector, std::move(eo));
    lock.lock();
    return *s.clients.emplace(key, std::move(client)).first->second;
  }

  std::shared_ptr<State> state_;
};

}  // namespace edgesplit
