// edgesplit/plan/planner.hpp - choose the split point and the codec from measured costs.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/plan/link.hpp"
#include "edgesplit/plan/profile.hpp"

namespace edgesplit {

/// One way of sending the tensor at a split point, with what it was measured to cost there.
/// All vectors are indexed by the split point k = 0..L (k = 0: the input itself is sent, all
/// cloud; k = L: nothing is sent, all edge, and the k = L entries are ignored).
struct CodecCandidate {
  std::string name;                        ///< e.g. "fp32", "int8", "int4+zstd"
  std::vector<double> bytes_per_sample;    ///< frame bytes per sample sent at split k
  std::vector<double> accuracy_drop;       ///< top-1 points lost against float at split k
  std::vector<double> encode_seconds;      ///< per sample, on the edge (may be empty: 0)
  std::vector<double> decode_seconds;      ///< per sample, in the cloud (may be empty: 0)
};

/// What the planner minimises.
enum class Objective { latency, edge_energy, bytes };

/// Power figures of the edge device for the energy objective, Neurosurgeon style: energy =
/// compute power x edge compute time + radio power x transfer time + idle power x time spent
/// waiting for the cloud. Defaults are those of a phone-class board (documented in docs/planning.md).
struct EnergyModel {
  double compute_watts = 2.0;  ///< edge compute power, watts
  double radio_watts = 1.2;  ///< radio power while transferring, watts
  double idle_watts = 0.3;  ///< idle power while waiting, watts
};

/// The predicted cost of one (split, codec) choice for one request of `batch` samples.
struct Plan {
  std::size_t split = 0;        ///< k: layers [0, k) on the edge, [k, L) in the cloud
  std::string codec;            ///< candidate name ("-" when nothing is sent)
  ///@{
  /// Predicted seconds of each part: edge compute, encode, transfer, RTT, decode, cloud compute, response.
  double edge_s = 0, encode_s = 0, transfer_s = 0, rtt_s = 0, decode_s = 0, cloud_s = 0, response_s = 0;
  ///@}
  double latency_s = 0;         ///< sum of the above
  double energy_j = 0;          ///< edge energy under the EnergyModel
  double bytes = 0;             ///< bytes sent edge -> cloud per request
  double accuracy_drop = 0;     ///< points lost against the float model
};

/// What to optimise and under which accuracy budget.
struct PlanRequest {
  std::size_t batch = 1;  ///< samples per request
  double accuracy_budget = 1.0;       ///< max accuracy drop in points
  Objective objective = Objective::latency;  ///< latency, edge energy or bytes
  EnergyModel energy{};  ///< power figures for Objective::edge_energy
  double response_bytes_per_sample = 0;  ///< answer size (e.g. 10 logits: 40 bytes)
};

/// Predicts every (k, codec) for which the accuracy drop fits the budget and returns them ranked
/// best first by the objective (ties broken by latency, then by fewer bytes). The prediction is
///   edge(0..k) + encode + bytes / uplink + RTT + decode + cloud(k..L) + response / downlink,
/// with k = L (all edge) costing edge(0..L) only. All-edge runs the float model, so it always
/// fits the budget: the result is never empty.
inline std::vector<Plan> plan_split(const DeviceProfile& edge, const DeviceProfile& cloud, const LinkModel& link,
                                    const std::vector<CodecCandidate>& codecs, const PlanRequest& req = {}) {
  link.validate();
  edge.validate();
  cloud.validate();
  const std::size_t L = edge.layer_count();
  if (cloud.layer_count() != L)
    fail(errc::shape_mismatch, "edge and cloud profiles describe models of " + std::to_string(L) + " and " +
                                   std::to_string(cloud.layer_count()) + " layers");
  if (req.batch == 0) fail(errc::invalid_argument, "plan_split: batch must be >= 1");
  for (const auto& c : codecs) {
    if (c.bytes_per_sample.size() != L + 1 || c.accuracy_drop.size() != L + 1 ||
        (!c.encode_seconds.empty() && c.encode_seconds.size() != L + 1) ||
        (!c.decode_seconds.empty() && c.decode_seconds.size() != L + 1))
      fail(errc::shape_mismatch, "codec candidate " + c.name + " needs one entry per split point 0.." + std::to_string(L));
  }
  const double n = static_cast<double>(req.batch);
  std::vector<Plan> plans;
  auto finish = [&](Plan& p) {
    p.latency_s = p.edge_s + p.encode_s + p.transfer_s + p.rtt_s + p.decode_s + p.cloud_s + p.response_s;
    const double radio = p.transfer_s + p.response_s;
    p.energy_j = req.energy.compute_watts * (p.edge_s + p.encode_s) + req.energy.radio_watts * radio +
                 req.energy.idle_watts * (p.latency_s - p.edge_s - p.encode_s - radio);
    plans.push_back(p);
  };
  // All edge: no codec involved, float accuracy.
  {
    Plan p;
    p.split = L;
    p.codec = "-";
    p.edge_s = edge.seconds(0, L, req.batch);
    finish(p);
  }
  for (const auto& c : codecs) {
    for (std::size_t k = 0; k < L; ++k) {
      if (!(c.accuracy_drop[k] <= req.accuracy_budget)) continue;
      Plan p;
      p.split = k;
      p.codec = c.name;
      p.edge_s = edge.seconds(0, k, req.batch);
      p.encode_s = c.encode_seconds.empty() ? 0 : c.encode_seconds[k] * n;
      p.bytes = c.bytes_per_sample[k] * n;
      p.transfer_s = link.uplink_seconds(p.bytes);
      p.rtt_s = link.rtt_s;
      p.decode_s = c.decode_seconds.empty() ? 0 : c.decode_seconds[k] * n;
      p.cloud_s = cloud.seconds(k, L, req.batch);
      p.response_s = link.downlink_seconds(req.response_bytes_per_sample * n);
      p.accuracy_drop = c.accuracy_drop[k];
      finish(p);
    }
  }
  auto key = [&](const Plan& p) {
    switch (req.objective) {
      case Objective::latency: return p.latency_s;
      case Objective::edge_energy: return p.energy_j;
      case Objective::bytes: return p.bytes;
    }
    return p.latency_s;
  };
  std::stable_sort(plans.begin(), plans.end(), [&](const Plan& a, const Plan& b) {
    if (key(a) != key(b)) return key(a) < key(b);
    if (a.latency_s != b.latency_s) return a.latency_s < b.latency_s;
    return a.bytes < b.bytes;
  });
  return plans;
}

}  // namespace edgesplit
