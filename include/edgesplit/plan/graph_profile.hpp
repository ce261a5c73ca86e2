// edgesplit/plan/graph_profile.hpp - what each node of a Graph costs on one device.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/kernels.hpp"
#include "edgesplit/core/random.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/nn/graph.hpp"
#include "edgesplit/plan/profile.hpp"

// A graph's profile is a DeviceProfile whose "layers" are the graph's nodes, in the graph's
// (topological) node order: entry i is node i. Reusing the type keeps one profile format for
// chains and graphs, so the JSON reader and writer (io/profile_json.hpp), `scaled()` and the
// batch-size interpolation of `DeviceProfile::seconds(i, i + 1, batch)` all serve graphs too.

namespace edgesplit {

namespace detail {

// `sample` with a batch dimension in front.
inline Shape graph_batched(const Shape& sample, std::size_t batch) {
  std::array<std::size_t, Shape::max_rank> d{};
  d[0] = batch;
  for (std::size_t i = 0; i < sample.rank(); ++i) d[i + 1] = sample[i];
  return Shape(std::span<const std::size_t>(d.data(), sample.rank() + 1));
}

// The batch sizes sorted, without repeats; errc::invalid_argument when empty or holding 0.
inline std::vector<std::size_t> graph_batch_sizes(std::vector<std::size_t> sizes, const char* who) {
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  if (sizes.empty() || sizes.front() == 0) fail(errc::invalid_argument, std::string(who) + ": batch sizes must be >= 1");
  return sizes;
}

// Node i's FLOPs at `batch`, from its own layer or merge (Graph::node_flops is per sample).
template <Real T>
std::uint64_t graph_node_flops(const Graph<T>& g, std::size_t i, std::size_t batch) {
  const std::vector<std::string> in = g.node_inputs(i);
  if (const Layer<T>* l = g.layer(i)) return l->flops(graph_batched(g.sample_shape(in[0]), batch));
  std::vector<Shape> shapes;
  for (const std::string& t : in) shapes.push_back(graph_batched(g.sample_shape(t), batch));
  return g.merge(i)->flops(std::span<const Shape>(shapes));
}

// "conv1 = Conv2D(3 -> 16, 3x3)": the node's output tensor, which names it in a cut, and its kind.
template <Real T>
std::string graph_node_label(const Graph<T>& g, std::size_t i) {
  return g.node_output(i) + " = " + g.node_describe(i);
}

// Elements per sample over all of the graph's inputs (DeviceProfile::input_features).
template <Real T>
std::size_t graph_input_features(const Graph<T>& g) {
  std::size_t n = 0;
  for (const std::string& t : g.input_names()) n += g.sample_shape(t).count();
  return n;
}

}  // namespace detail

/// Measures every node of `graph` on this machine, as `profile_model` measures a chain: for each
/// batch size, the median over `opt.runs` (after `opt.warmup` discarded runs) of each node's
/// forward pass alone, on its real inputs. The graph's inputs are random (uniform in [-1, 1),
/// seeded by `opt.seed`); every other tensor is the output its producer computed from them, so
/// data-dependent layers see the values they would see in the model. Each node runs on a copy of
/// its layer or merge in inference mode, so the caller's graph (and its workspace) is untouched.
///
/// The result has one entry per node, in node order, named "<output tensor> = <kind>", including
/// nodes that no output needs (the planner ignores them); `input_features` is the elements per
/// sample over all inputs. errc::invalid_argument for runs < 1, warmup < 0 or a batch size of 0.
template <Real T>
DeviceProfile profile_graph(const Graph<T>& graph, const ProfileOptions& opt = {}) {
  if (opt.runs < 1 || opt.warmup < 0) fail(errc::invalid_argument, "profile_graph: runs must be >= 1, warmup >= 0");
  const std::vector<std::size_t> sizes = detail::graph_batch_sizes(opt.batch_sizes, "profile_graph");

  DeviceProfile prof;
  prof.device = opt.device;
  prof.simd = kernels::simd_arch_name();
  prof.source = ProfileSource::measured;
  prof.note = "per node: median of " + std::to_string(opt.runs) + " runs after " + std::to_string(opt.warmup) +
              " warm-up runs";
  prof.input_features = detail::graph_input_features(graph);

  // Own copies of the nodes, in inference mode: a graph in training mode would otherwise time
  // Dropout's masks and BatchNorm's batch statistics, which inference never runs.
  const std::size_t n = graph.node_count();
  std::vector<std::unique_ptr<Layer<T>>> layers(n);
  std::vector<std::unique_ptr<Merge<T>>> merges(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (const Layer<T>* l = graph.layer(i)) {
      layers[i] = l->clone();
      layers[i]->set_training(false);
    } else {
      merges[i] = graph.merge(i)->clone();
    }
  }

  Rng rng(opt.seed);
  std::vector<double> samples(static_cast<std::size_t>(opt.runs));
  auto median_of = [&](auto&& run) {
    for (int w = 0; w < opt.warmup; ++w) run();
    for (double& s : samples) {
      const auto t0 = std::chrono::steady_clock::now();
      run();
      s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    std::nth_element(samples.begin(), samples.begin() + static_cast<std::ptrdiff_t>(samples.size() / 2), samples.end());
    return samples[samples.size() / 2];
  };

  for (std::size_t batch : sizes) {
    // Every tensor's value at this batch size, by name: each node reads its producers' outputs.
    std::unordered_map<std::string, Tensor<T>> values;
    for (const std::string& t : graph.input_names()) {
      Tensor<T> x(detail::graph_batched(graph.sample_shape(t), batch));
      for (T& v : x.span()) v = static_cast<T>(rng.uniform(-1, 1));
      values.emplace(t, std::move(x));
    }
    BatchProfile bp{batch, {}};
    std::vector<TensorView<const T>> args;
    for (std::size_t i = 0; i < n; ++i) {
      const std::string& name = graph.node_output(i);
      Tensor<T> out(detail::graph_batched(graph.sample_shape(name), batch));
      args.clear();
      for (const std::string& t : graph.node_inputs(i)) args.push_back(values.at(t).cview());
      double s = 0;
      if (layers[i])
        s = median_of([&] { layers[i]->forward(args[0], out.view()); });
      else
        s = median_of([&] { merges[i]->forward(std::span<const TensorView<const T>>(args), out.view()); });
      bp.layers.push_back({detail::graph_node_label(graph, i), detail::graph_node_flops(graph, i, batch),
                           out.size() * sizeof(T), s});
      values.emplace(name, std::move(out));
    }
    prof.batches.push_back(std::move(bp));
  }
  return prof;
}

/// A graph profile estimated from FLOPs alone, as `analytic_profile` does for a chain: node i
/// costs FLOPs(i, batch) / (gflops * 1e9) seconds. Deterministic, so tests and planning for a
/// device not at hand can use it; it ignores memory traffic and per-call overheads, so merges
/// (Concat costs 0 FLOPs) and small layers come out cheaper than they run. One entry per node,
/// in node order. errc::invalid_argument for gflops <= 0 or a batch size of 0.
template <Real T>
DeviceProfile analytic_graph_profile(const Graph<T>& graph, const std::vector<std::size_t>& batch_sizes, double gflops,
                                     std::string device) {
  if (!(gflops > 0) || !std::isfinite(gflops)) fail(errc::invalid_argument, "analytic_graph_profile: gflops must be finite and > 0");
  const std::vector<std::size_t> sizes = detail::graph_batch_sizes(batch_sizes, "analytic_graph_profile");
  DeviceProfile prof;
  prof.device = std::move(device);
  prof.simd = "n/a";
  prof.source = ProfileSource::analytic;
  prof.note = "per node: FLOPs / " + std::to_string(gflops) + " GFLOP/s";
  prof.input_features = detail::graph_input_features(graph);
  for (std::size_t batch : sizes) {
    BatchProfile bp{batch, {}};
    for (std::size_t i = 0; i < graph.node_count(); ++i) {
      const std::uint64_t f = detail::graph_node_flops(graph, i, batch);
      bp.layers.push_back({detail::graph_node_label(graph, i), f,
                           graph.sample_shape(graph.node_output(i)).count() * batch * sizeof(T),
                           static_cast<double>(f) / (gflops * 1e9)});
    }
    prof.batches.push_back(std::move(bp));
  }
  return prof;
}

}  // namespace edgesplit
