// edgesplit/plan/graph_planner.hpp - choose where to cut a Graph, by minimum s-t cut (DADS).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <map>
#include <optional>
#include <queue>
#include <string>
#include <unordered_map>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/nn/graph.hpp"
#include "edgesplit/plan/link.hpp"
#include "edgesplit/plan/profile.hpp"

namespace edgesplit {

/// How the tensors that cross the link are encoded, as the planner prices them. The default is
/// fp32 on the wire. A tensor's size per sample is `bytes_per_sample[name]` when given (a size
/// measured for that tensor, e.g. its compressed frame), else its elements x `bytes_per_element`;
/// each crossing tensor adds `bytes_per_tensor` per request (its header in the frame).
struct GraphCodec {
  std::string name = "fp32";  ///< label for reports ("fp32", "int8", ...)
  double bytes_per_element = 4;  ///< 4 for fp32, 1 for int8, 0.5 for int4 (packed)
  double bytes_per_tensor = 0;   ///< fixed bytes per crossing tensor and request
  /// Measured bytes per sample of particular tensors, by name: they replace the element count
  /// times `bytes_per_element` for those tensors (a per-tensor compression ratio).
  std::map<std::string, double> bytes_per_sample;
};

/// What to plan for: the batch of one request, the codec, and the size of the answer.
struct GraphPlanRequest {
  std::size_t batch = 1;  ///< samples per request
  GraphCodec codec{};     ///< how the crossing tensors are priced
  /// Bytes of the cloud's answer per sample, sent back over the downlink whenever anything
  /// crosses (e.g. 10 fp32 logits and a frame header); all-edge sends nothing.
  double response_bytes_per_sample = 0;
};

/// A partition of a graph's nodes into a head (edge) and a tail (cloud), with its predicted cost
/// for one request. Nodes no output needs are in neither list: no one runs them.
struct GraphPlan {
  /// The tensors that cross: pass them to `Graph::cut()` to get this head and tail. Graph inputs
  /// come first (declaration order), then node outputs (node order). For the all-edge plan these
  /// are the graph's outputs, and nothing is sent.
  std::vector<std::string> cut;
  std::vector<std::size_t> head_nodes;  ///< nodes run on the edge, ascending
  std::vector<std::size_t> tail_nodes;  ///< nodes run in the cloud, ascending
  bool all_edge = false;                ///< true when the tail is empty and nothing is sent
  /// Index of this cut in `Graph::candidate_cuts()` when it is one of those frontiers of the node
  /// order; empty when only a graph-aware search finds it (a head that is no prefix of the order).
  std::optional<std::size_t> frontier;
  std::string codec;  ///< the codec's name ("-" when nothing is sent)
  ///@{
  /// Predicted seconds of each part: edge compute, uplink transfer of the cut, the link's round
  /// trip, cloud compute, and the answer's downlink transfer.
  double edge_s = 0, transfer_s = 0, rtt_s = 0, cloud_s = 0, response_s = 0;
  ///@}
  double latency_s = 0;  ///< the sum of the parts
  double bytes = 0;      ///< bytes sent edge -> cloud per request
};

namespace detail {

// Dinic's maximum flow on real capacities (infinity allowed on arcs no s-t path can consist of
// only). Each augmentation subtracts the path's bottleneck, which is exactly one of the path's
// residual capacities, so that arc drops to exactly 0: the usual termination argument holds in
// floating point. After run(), the vertices reachable from s in the residual graph are the
// source side of a minimum cut.
class MaxFlow {
 public:
  explicit MaxFlow(std::size_t vertices) : out_(vertices), level_(vertices), next_(vertices) {}

  void add_arc(std::size_t from, std::size_t to, double capacity) {
    out_[from].push_back(arcs_.size());
    arcs_.push_back({to, capacity});
    out_[to].push_back(arcs_.size());
    arcs_.push_back({from, 0});  // residual twin: arc k's twin is k ^ 1
  }

  double run(std::size_t s, std::size_t t) {
    double total = 0;
    while (levels(s, t)) {
      std::fill(next_.begin(), next_.end(), 0);
      while (const double f = augment(s, t, std::numeric_limits<double>::infinity())) total += f;
    }
    return total;
  }

  // Vertices reachable from s through arcs with residual capacity left.
  std::vector<char> source_side(std::size_t s) const {
    std::vector<char> seen(out_.size(), 0);
    std::vector<std::size_t> stack{s};
    seen[s] = 1;
    while (!stack.empty()) {
      const std::size_t v = stack.back();
      stack.pop_back();
      for (std::size_t k : out_[v])
        if (arcs_[k].cap > 0 && !seen[arcs_[k].to]) {
          seen[arcs_[k].to] = 1;
          stack.push_back(arcs_[k].to);
        }
    }
    return seen;
  }

 private:
  struct Arc {
    std::size_t to;
    double cap;  // residual capacity
  };
  static constexpr std::size_t unseen = std::numeric_limits<std::size_t>::max();

  bool levels(std::size_t s, std::size_t t) {
    std::fill(level_.begin(), level_.end(), unseen);
    std::queue<std::size_t> q;
    level_[s] = 0;
    q.push(s);
    while (!q.empty()) {
      const std::size_t v = q.front();
      q.pop();
      for (std::size_t k : out_[v])
        if (arcs_[k].cap > 0 && level_[arcs_[k].to] == unseen) {
          level_[arcs_[k].to] = level_[v] + 1;
          q.push(arcs_[k].to);
        }
    }
    return level_[t] != unseen;
  }

  // One augmenting path in the level graph; recursion depth is at most the path length, which
  // is below the vertex count (about twice the graph's nodes).
  double augment(std::size_t v, std::size_t t, double limit) {
    if (v == t) return limit;
    for (std::size_t& i = next_[v]; i < out_[v].size(); ++i) {
      Arc& a = arcs_[out_[v][i]];
      if (!(a.cap > 0) || level_[a.to] != level_[v] + 1) continue;
      const double f = augment(a.to, t, std::min(limit, a.cap));
      if (f > 0) {
        a.cap -= f;
        arcs_[out_[v][i] ^ 1].cap += f;
        return f;
      }
    }
    return 0;
  }

  std::vector<Arc> arcs_;
  std::vector<std::vector<std::size_t>> out_;
  std::vector<std::size_t> level_, next_;
};

// A graph's structure and per-request costs, from its public API. Tensors are numbered inputs
// first (declaration order), then node i's output as `inputs + i`.
struct GraphCosts {
  static constexpr std::size_t npos = std::numeric_limits<std::size_t>::max();
  std::size_t inputs = 0;
  std::vector<std::string> names;                // per tensor
  std::vector<std::vector<std::size_t>> node_in; // per node: tensor ids read
  std::vector<std::vector<std::size_t>> readers; // per tensor: live nodes reading it
  std::vector<char> live, is_output;             // per node; per tensor
  std::vector<std::size_t> outputs;              // tensor ids, output order
  std::vector<double> edge_s, cloud_s;           // per node at the batch
  std::vector<double> bytes, transfer_s;         // per tensor and request, when it crosses
  double fixed_s = 0, rtt_s = 0, response_s = 0; // paid once when anything crosses
  std::string codec;

  std::size_t producer(std::size_t t) const { return t < inputs ? npos : t - inputs; }
};

template <Real T>
GraphCosts graph_costs(const Graph<T>& g, const DeviceProfile& edge, const DeviceProfile& cloud,
                       const LinkModel& link, const GraphPlanRequest& req, const char* who) {
  const std::string w(who);
  link.validate();
  edge.validate();
  cloud.validate();
  if (req.batch == 0) fail(errc::invalid_argument, w + ": batch must be >= 1");
  const std::vector<std::string> out_names = g.output_names();
  if (out_names.empty()) fail(errc::invalid_argument, w + ": the graph has no outputs (Graph::output)");
  const std::size_t n = g.node_count();
  if (edge.layer_count() != n || cloud.layer_count() != n)
    fail(errc::shape_mismatch, w + ": a graph of " + std::to_string(n) + " nodes needs profiles of as many entries, got " +
                                   std::to_string(edge.layer_count()) + " (edge) and " + std::to_string(cloud.layer_count()) +
                                   " (cloud)");
  const GraphCodec& codec = req.codec;
  if (!(codec.bytes_per_element > 0) || !std::isfinite(codec.bytes_per_element) || !(codec.bytes_per_tensor >= 0) ||
      !std::isfinite(codec.bytes_per_tensor))
    fail(errc::invalid_argument, w + ": codec '" + codec.name + "' needs bytes_per_element > 0 and bytes_per_tensor >= 0");
  if (!(req.response_bytes_per_sample >= 0) || !std::isfinite(req.response_bytes_per_sample))
    fail(errc::invalid_argument, w + ": response_bytes_per_sample must be finite and >= 0");

  GraphCosts c;
  c.codec = codec.name;
  std::unordered_map<std::string, std::size_t> id;
  for (const std::string& t : g.input_names()) {
    id.emplace(t, c.names.size());
    c.names.push_back(t);
  }
  c.inputs = c.names.size();
  for (std::size_t i = 0; i < n; ++i) {
    id.emplace(g.node_output(i), c.names.size());
    c.names.push_back(g.node_output(i));
  }
  const std::size_t tensors = c.names.size();
  c.node_in.resize(n);
  for (std::size_t i = 0; i < n; ++i)
    for (const std::string& t : g.node_inputs(i)) c.node_in[i].push_back(id.at(t));
  c.is_output.assign(tensors, 0);
  for (const std::string& t : out_names) {
    c.outputs.push_back(id.at(t));
    c.is_output[id.at(t)] = 1;
  }
  // Live nodes: those an output depends on. Walking the node order backwards suffices, as
  // every node's producers come before it.
  c.live.assign(n, 0);
  std::vector<char> needed = c.is_output;
  for (std::size_t i = n; i-- > 0;)
    if (needed[c.inputs + i]) {
      c.live[i] = 1;
      for (std::size_t t : c.node_in[i]) needed[t] = 1;
    }
  c.readers.resize(tensors);
  for (std::size_t i = 0; i < n; ++i)
    if (c.live[i])
      for (std::size_t t : c.node_in[i])
        if (std::find(c.readers[t].begin(), c.readers[t].end(), i) == c.readers[t].end()) c.readers[t].push_back(i);

  for (const auto& [name, b] : codec.bytes_per_sample) {
    if (!id.count(name)) fail(errc::invalid_argument, w + ": codec '" + codec.name + "' prices tensor '" + name + "', which the graph lacks");
    if (!(b >= 0) || !std::isfinite(b))
      fail(errc::invalid_argument, w + ": codec '" + codec.name + "' gives tensor '" + name + "' a size that is not finite and >= 0");
  }
  const double batch = static_cast<double>(req.batch);
  c.edge_s.resize(n);
  c.cloud_s.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    c.edge_s[i] = edge.seconds(i, i + 1, req.batch);
    c.cloud_s[i] = cloud.seconds(i, i + 1, req.batch);
  }
  c.bytes.resize(tensors);
  c.transfer_s.resize(tensors);
  for (std::size_t t = 0; t < tensors; ++t) {
    const auto it = codec.bytes_per_sample.find(c.names[t]);
    const double per_sample = it != codec.bytes_per_sample.end()
                                  ? it->second
                                  : static_cast<double>(g.sample_shape(c.names[t]).count()) * codec.bytes_per_element;
    c.bytes[t] = per_sample * batch + codec.bytes_per_tensor;
    c.transfer_s[t] = link.uplink_seconds(c.bytes[t]);
  }
  c.rtt_s = link.rtt_s;
  c.response_s = link.downlink_seconds(req.response_bytes_per_sample * batch);
  return c;
}

// The cost of running the live nodes marked in `head` on the edge and the other live ones in
// the cloud; `head` must be closed under predecessors among the live nodes.
inline GraphPlan graph_plan_for(const GraphCosts& c, const std::vector<char>& head) {
  GraphPlan p;
  const std::size_t n = c.live.size();
  for (std::size_t i = 0; i < n; ++i) {
    if (!c.live[i]) continue;
    if (head[i]) {
      p.head_nodes.push_back(i);
      p.edge_s += c.edge_s[i];
    } else {
      p.tail_nodes.push_back(i);
      p.cloud_s += c.cloud_s[i];
    }
  }
  p.all_edge = p.tail_nodes.empty();
  if (p.all_edge) {
    p.codec = "-";
    p.cloud_s = 0;
    for (std::size_t t : c.outputs) p.cut.push_back(c.names[t]);
  } else {
    p.codec = c.codec;
    // A tensor crosses when the edge has it (a graph input, or made by a head node) and the
    // cloud needs it (a tail node reads it, or it is an output, which the tail returns): once,
    // however many tail nodes read it.
    for (std::size_t t = 0; t < c.names.size(); ++t) {
      const std::size_t prod = c.producer(t);
      if (prod != GraphCosts::npos && (!c.live[prod] || !head[prod])) continue;
      bool needed = c.is_output[t];
      for (std::size_t r : c.readers[t]) needed = needed || !head[r];
      if (!needed) continue;
      p.cut.push_back(c.names[t]);
      p.bytes += c.bytes[t];
      p.transfer_s += c.transfer_s[t];
    }
    p.rtt_s = c.rtt_s;
    p.response_s = c.response_s;
  }
  p.latency_s = p.edge_s + p.transfer_s + p.rtt_s + p.cloud_s + p.response_s;
  return p;
}

// Sets `p.frontier` when p's cut is one of the graph's candidate cuts (compared as sets).
template <Real T>
void graph_plan_frontier(const Graph<T>& g, GraphPlan& p) {
  std::vector<std::string> mine = p.cut;
  std::sort(mine.begin(), mine.end());
  const std::vector<CutInfo> cuts = g.candidate_cuts();
  for (std::size_t k = 0; k < cuts.size(); ++k) {
    std::vector<std::string> theirs = cuts[k].tensors;
    std::sort(theirs.begin(), theirs.end());
    if (theirs == mine) {
      p.frontier = k;
      return;
    }
  }
}

}  // namespace detail

/// The predicted cost of one particular split of `graph`: the nodes `head_nodes` on the edge,
/// every other node an output needs in the cloud (nodes no output needs are ignored), priced
/// as `plan_graph_cut` prices its pick. Use it to compare a cut of your own, or a frontier of
/// `candidate_cuts()`, against the planner's. errc::invalid_argument for a node index out of
/// range or a head that runs a node without all of the nodes it reads from (not closed under
/// predecessors); the errors of `plan_graph_cut` otherwise.
template <Real T>
GraphPlan evaluate_graph_cut(const Graph<T>& graph, const DeviceProfile& edge, const DeviceProfile& cloud,
                             const LinkModel& link, const std::vector<std::size_t>& head_nodes,
                             const GraphPlanRequest& req = {}) {
  const detail::GraphCosts c = detail::graph_costs(graph, edge, cloud, link, req, "evaluate_graph_cut");
  const std::size_t n = graph.node_count();
  std::vector<char> head(n, 0);
  for (std::size_t i : head_nodes) {
    if (i >= n)
      fail(errc::invalid_argument, "evaluate_graph_cut: node " + std::to_string(i) + " of a graph of " + std::to_string(n) + " nodes");
    head[i] = c.live[i];
  }
  for (std::size_t i = 0; i < n; ++i)
    if (head[i])
      for (std::size_t t : c.node_in[i]) {
        const std::size_t p = c.producer(t);
        if (p != detail::GraphCosts::npos && !head[p])
          fail(errc::invalid_argument, "evaluate_graph_cut: the head runs node " + std::to_string(i) + " ('" +
                                           graph.node_output(i) + "') but not node " + std::to_string(p) + " ('" +
                                           graph.node_output(p) + "'), whose output it reads");
      }
  GraphPlan p = detail::graph_plan_for(c, head);
  detail::graph_plan_frontier(graph, p);
  return p;
}

/// The latency-optimal split of `graph` between an edge and a cloud device, found as a minimum
/// s-t cut (DADS, Hu et al., INFOCOM 2019), for any DAG: branches, skip connections, several
/// inputs and outputs. For a head H (a set of nodes closed under predecessors) one request costs
///
///     sum over H of edge(v) + sum over crossing tensors of bytes(t) / uplink
///       + RTT + sum over the other nodes of cloud(v) + response / downlink
///
/// where a tensor crosses when the edge has it (a graph input, or made in H) and the cloud needs
/// it (a node outside H reads it, or it is an output): once, however many cloud nodes read it,
/// as the runtime sends it once. The all-edge head sends nothing and costs its edge time only.
///
/// The construction: source = edge, sink = cloud; each node v has arcs source -> v of capacity
/// cloud(v) (cut when v runs in the cloud) and v -> sink of capacity edge(v) (cut when v runs on
/// the edge); each reader -> producer pair an infinite arc, so no cut puts a reader on the edge
/// and its producer in the cloud; each tensor t an auxiliary vertex a(t) with an arc
/// producer -> a(t) (the source for a graph input) of capacity transfer(t), and infinite arcs
/// a(t) -> each reader (and a(t) -> sink for an output). Any reader in the cloud pulls a(t) to
/// the cloud side, cutting the single transfer arc: a tensor read by several cloud nodes is paid
/// once, where arcs per reader would pay it once per reader. The RTT and the response are paid
/// by every plan that sends anything, so the cut leaves them out and the result is compared with
/// the all-edge plan (the one plan that sends nothing); ties go to all-edge.
///
/// `edge` and `cloud` hold one entry per node, in node order (`profile_graph`,
/// `analytic_graph_profile`, or a DeviceProfile loaded from a file). errc::invalid_argument for a
/// graph without outputs, batch 0, a codec of non-positive or non-finite sizes or naming a tensor
/// the graph lacks, an invalid link or profile; errc::shape_mismatch for profiles whose entry
/// count is not the graph's node count.
template <Real T>
GraphPlan plan_graph_cut(const Graph<T>& graph, const DeviceProfile& edge, const DeviceProfile& cloud,
                         const LinkModel& link, const GraphPlanRequest& req = {}) {
  const detail::GraphCosts c = detail::graph_costs(graph, edge, cloud, link, req, "plan_graph_cut");
  const std::size_t n = graph.node_count(), tensors = c.names.size();
  const std::size_t source = 0, sink = 1;
  auto node = [](std::size_t i) { return 2 + i; };
  auto aux = [n](std::size_t t) { return 2 + n + t; };
  constexpr double inf = std::numeric_limits<double>::infinity();
  detail::MaxFlow flow(2 + n + tensors);
  for (std::size_t i = 0; i < n; ++i) {
    if (!c.live[i]) continue;
    flow.add_arc(source, node(i), c.cloud_s[i]);
    flow.add_arc(node(i), sink, c.edge_s[i]);
    for (std::size_t t : c.node_in[i])
      if (c.producer(t) != detail::GraphCosts::npos) flow.add_arc(node(i), node(c.producer(t)), inf);
  }
  for (std::size_t t = 0; t < tensors; ++t) {
    if (c.readers[t].empty() && !c.is_output[t]) continue;  // made by a node no output needs
    const std::size_t p = c.producer(t);
    flow.add_arc(p == detail::GraphCosts::npos ? source : node(p), aux(t), c.transfer_s[t]);
    for (std::size_t r : c.readers[t]) flow.add_arc(aux(t), node(r), inf);
    if (c.is_output[t]) flow.add_arc(aux(t), sink, inf);
  }
  flow.run(source, sink);
  const std::vector<char> side = flow.source_side(source);
  std::vector<char> head(n, 0);
  for (std::size_t i = 0; i < n; ++i) head[i] = c.live[i] && side[node(i)];

  GraphPlan best = detail::graph_plan_for(c, head);
  const GraphPlan all_edge = detail::graph_plan_for(c, c.live);
  if (!(best.latency_s < all_edge.latency_s)) best = all_edge;
  detail::graph_plan_frontier(graph, best);
  return best;
}

}  // namespace edgesplit
