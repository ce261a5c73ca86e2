// edgesplit/nn/graph.hpp - a model as a DAG of named tensors, cut anywhere into head and tail.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "edgesplit/core/kernels.hpp"
#include "edgesplit/nn/layer.hpp"
#include "edgesplit/nn/merge.hpp"
#include "edgesplit/nn/sequential.hpp"

namespace edgesplit {

/// One candidate cut of a graph with what it costs, per sample: what the planner ranks.
struct CutInfo {
  std::vector<std::string> tensors;  ///< the tensors that cross, in the graph's order
  std::size_t bytes = 0;             ///< their size at full precision, per sample
  std::uint64_t head_flops = 0;      ///< forward FLOPs before the cut, per sample
  std::uint64_t tail_flops = 0;      ///< forward FLOPs after the cut, per sample
  std::size_t head_nodes = 0;        ///< nodes the head runs
};

/// A model as a directed acyclic graph: named tensors, and nodes that each compute one tensor
/// from one input (a Layer) or several (a Merge such as Add or Concat). Nodes are kept in a
/// topological order: the builder takes only inputs that already exist, so no cycle can form.
///
/// Tensors have fixed per-sample shapes, declared for the inputs and inferred for the rest when
/// a node is added, so every shape rule is checked once, at build time, with the node named.
/// The batch is free.
///
/// ```
/// Graph<float> g;
/// auto x = g.input("image", Shape{16, 28, 28});
/// auto y = g.add<Conv2D<float>>(x, 16, 16, 3, 3, same, rng);
/// y = g.add<ReLU<float>>(y);
/// y = g.add<Conv2D<float>>(y, 16, 16, 3, 3, same, rng);
/// y = g.add<Add<float>>({y, x});  // the residual join
/// g.output(y);
/// ```
///
/// Inference reuses buffers by liveness: a tensor's buffer serves another tensor once the
/// tensor's last consumer has run, and a steady stream of same-sized batches allocates nothing.
/// Training mode keeps every tensor for backward(). Not thread-safe: one Graph per thread.
template <Real T>
class Graph {
 public:
  /// The longest tensor name: names travel in wire frames and files.
  static constexpr std::size_t max_name = 255;

  Graph() = default;
  /// Moves the nodes and the workspace.
  Graph(Graph&&) noexcept = default;
  /// Moves the nodes and the workspace.
  Graph& operator=(Graph&&) noexcept = default;
  /// Deep copy: weights are copied, the workspace is not.
  Graph(const Graph& o)
      : tensors_(o.tensors_), inputs_(o.inputs_), outputs_(o.outputs_), by_name_(o.by_name_), training_(o.training_) {
    nodes_.reserve(o.nodes_.size());
    for (const Node& n : o.nodes_)
      nodes_.push_back({n.layer ? n.layer->clone() : nullptr, n.merge ? n.merge->clone() : nullptr, n.in, n.out});
  }
  /// Deep copy, like the copy constructor.
  Graph& operator=(const Graph& o) {
    if (this != &o) *this = Graph(o);
    return *this;
  }

  // ---- building --------------------------------------------------------------------------

  /// Declares an input tensor of per-sample shape `sample` (no batch dimension): {C, H, W} for
  /// images, {F} for feature vectors. Returns its name.
  const std::string& input(std::string name, const Shape& sample) {
    if (sample.rank() == 0 || sample.rank() > 7 || sample.count() == 0)
      fail(errc::invalid_argument, "graph input '" + name + "' needs a non-empty per-sample shape of rank 1 to 7, got " +
                                       sample.str());
    const std::size_t t = new_tensor(std::move(name), sample, npos);
    inputs_.push_back(t);
    changed();
    return tensors_[t].name;
  }

  /// Adds a node computing a new tensor from `input` with a layer or merge constructed in place:
  /// `g.add<Conv2D<float>>(x, 3, 16, 3, 3, options, rng)`. The new tensor is named after the
  /// node's kind and index ("Conv2D_4"); the name is returned.
  template <class L, class... Args>
  std::string add(const std::string& input, Args&&... args) {
    return add_node<L>(std::vector<std::string>{input}, std::forward<Args>(args)...);
  }
  /// Adds a node of several inputs: `g.add<Add<float>>({a, b})`.
  template <class L, class... Args>
  std::string add(std::initializer_list<std::string> inputs, Args&&... args) {
    return add_node<L>(std::vector<std::string>(inputs), std::forward<Args>(args)...);
  }
  /// Adds a single-input node built elsewhere whose output is named `output`.
  const std::string& add(std::string output, const std::vector<std::string>& inputs, std::unique_ptr<Layer<T>> layer) {
    if (!layer) fail(errc::invalid_argument, "Graph::add of a null layer for '" + output + "'");
    return push(std::move(output), inputs, std::move(layer), nullptr);
  }
  /// Adds a multi-input node built elsewhere whose output is named `output`.
  const std::string& add(std::string output, const std::vector<std::string>& inputs, std::unique_ptr<Merge<T>> merge) {
    if (!merge) fail(errc::invalid_argument, "Graph::add of a null merge for '" + output + "'");
    return push(std::move(output), inputs, nullptr, std::move(merge));
  }

  /// Declares `name` an output of the model (in call order). A model has at least one.
  void output(const std::string& name) {
    const std::size_t t = find(name, "output");
    if (std::find(outputs_.begin(), outputs_.end(), t) != outputs_.end())
      fail(errc::invalid_argument, "tensor '" + name + "' is already an output");
    outputs_.push_back(t);
    changed();
  }

  // ---- inspection --------------------------------------------------------------------------

  /// The input names, in declaration order.
  std::vector<std::string> input_names() const { return names(inputs_); }
  /// The output names, in declaration order.
  std::vector<std::string> output_names() const { return names(outputs_); }
  std::size_t node_count() const noexcept { return nodes_.size(); }  ///< nodes, in topological order
  bool empty() const noexcept { return nodes_.empty(); }  ///< true when no node has been added
  /// Whether a tensor of this name exists.
  bool contains(const std::string& name) const { return by_name_.count(name) != 0; }
  /// The per-sample shape of tensor `name` (errc::invalid_argument for an unknown name).
  const Shape& sample_shape(const std::string& name) const { return tensors_[find(name, "sample_shape")].sample; }
  /// The shape of tensor `name` at batch `batch`.
  Shape shape(const std::string& name, std::size_t batch) const { return batched(sample_shape(name), batch); }
  /// The name of node `i`'s output tensor.
  const std::string& node_output(std::size_t i) const { return tensors_[nodes_.at(i).out].name; }
  /// The names of node `i`'s inputs.
  std::vector<std::string> node_inputs(std::size_t i) const { return names(nodes_.at(i).in); }
  /// Node `i`'s layer, or nullptr when it is a merge.
  Layer<T>* layer(std::size_t i) noexcept { return i < nodes_.size() ? nodes_[i].layer.get() : nullptr; }
  /// Node `i`'s layer, or nullptr when it is a merge.
  const Layer<T>* layer(std::size_t i) const noexcept { return i < nodes_.size() ? nodes_[i].layer.get() : nullptr; }
  /// Node `i`'s merge, or nullptr when it is a layer.
  const Merge<T>* merge(std::size_t i) const noexcept { return i < nodes_.size() ? nodes_[i].merge.get() : nullptr; }
  /// Node `i`'s kind and configuration (a layer's or a merge's spec).
  LayerSpec node_spec(std::size_t i) const {
    const Node& n = nodes_.at(i);
    return n.layer ? n.layer->spec() : n.merge->spec();
  }
  /// Node `i`'s description ("Conv2D(3 -> 16, 3x3)", "Add").
  std::string node_describe(std::size_t i) const {
    const Node& n = nodes_.at(i);
    return n.layer ? n.layer->describe() : n.merge->describe();
  }
  /// FLOPs of node `i` per sample.
  std::uint64_t node_flops(std::size_t i) const { return node_flops_at(nodes_.at(i), 1); }

  /// FLOPs of a forward pass at `batch`, over the nodes the outputs need.
  std::uint64_t flops(std::size_t batch = 1) const {
    const auto& live = live_nodes();
    std::uint64_t f = 0;
    for (std::size_t i = 0; i < nodes_.size(); ++i)
      if (live[i]) f += node_flops_at(nodes_[i], batch);
    return f;
  }
  /// Trainable scalars over all nodes.
  std::size_t parameter_count() const {
    std::size_t n = 0;
    for (const Node& node : nodes_)
      if (node.layer) n += node.layer->parameter_count();
    return n;
  }

  // ---- running -----------------------------------------------------------------------------

  /// Runs the model on one input per declared input (in order), writing one output per declared
  /// output into the caller's tensors, which must have the outputs' shapes at the inputs' batch.
  void forward(std::span<const TensorView<const T>> in, std::span<const TensorView<T>> out) {
    run(in);
    if (out.size() != outputs_.size())
      fail(errc::invalid_argument, "Graph::forward needs " + std::to_string(outputs_.size()) + " output tensors, got " +
                                       std::to_string(out.size()));
    for (std::size_t k = 0; k < outputs_.size(); ++k) {
      if (!(out[k].shape() == views_[outputs_[k]].shape()))
        fail(errc::shape_mismatch, "output '" + tensors_[outputs_[k]].name + "' has shape " + out[k].shape().str() +
                                       ", expected " + views_[outputs_[k]].shape().str());
      copy(views_[outputs_[k]], out[k]);
    }
  }
  /// Runs the model on one input per declared input; read the outputs with result(k).
  void forward(std::span<const TensorView<const T>> in) { run(in); }
  /// Runs a model of one input and one output; the result lives in the workspace until the next
  /// call (or is `in` itself when the output is the input).
  TensorView<const T> forward(TensorView<const T> in) {
    single("forward");
    run(std::span<const TensorView<const T>>(&in, 1));
    return views_[outputs_[0]];
  }
  /// Runs a model of one input and one output into a caller-owned `out`.
  void forward(TensorView<const T> in, TensorView<T> out) {
    single("forward");
    forward(std::span<const TensorView<const T>>(&in, 1), std::span<const TensorView<T>>(&out, 1));
  }
  /// Output `k` of the latest forward pass, valid until the next call.
  TensorView<const T> result(std::size_t k) const {
    if (k >= outputs_.size() || views_.size() != tensors_.size())
      fail(errc::invalid_argument, "Graph::result needs a forward pass and an output index below " +
                                       std::to_string(outputs_.size()));
    return views_[outputs_[k]];
  }
  /// Convenience for one-off calls on a model of one input and one output: a fresh tensor.
  Tensor<T> predict(TensorView<const T> in) {
    const TensorView<const T> y = forward(in);
    Tensor<T> out(y.shape());
    copy(y, out.view());
    return out;
  }
  /// Output shape of a model of one input and one output for an input of shape `in`.
  Shape output_shape(const Shape& in) const {
    single("output_shape");
    check_input_shape(0, in);
    return batched(tensors_[outputs_[0]].sample, in.batch());
  }

  /// Backpropagates `grad_out` (one per output, dL/d output of the latest forward pass, run in
  /// training mode on `in`), adding parameter gradients into each layer and writing dL/d input
  /// into each non-empty `grad_in` view. Gradients of a tensor read by several nodes are summed.
  void backward(std::span<const TensorView<const T>> in, std::span<const TensorView<const T>> grad_out,
                std::span<const TensorView<T>> grad_in = {}) {
    if (!ran_training_ || views_.size() != tensors_.size())
      fail(errc::invalid_argument, "Graph::backward needs a forward pass in training mode first (set_training(true))");
    if (in.size() != inputs_.size() || grad_out.size() != outputs_.size() ||
        (!grad_in.empty() && grad_in.size() != inputs_.size()))
      fail(errc::invalid_argument, "Graph::backward needs one tensor per input, one gradient per output and none or one "
                                   "input gradient per input");
    for (std::size_t k = 0; k < inputs_.size(); ++k)
      if (in[k].data() != views_[inputs_[k]].data() || !(in[k].shape() == views_[inputs_[k]].shape()))
        fail(errc::invalid_argument, "Graph::backward needs the input of the latest forward pass ('" +
                                         tensors_[inputs_[k]].name + "')");
    std::vector<char>& needs = needs_grad_;
    needs.assign(tensors_.size(), 0);  // allocates only the first time
    for (std::size_t k = 0; k < inputs_.size(); ++k)
      needs[inputs_[k]] = !grad_in.empty() && grad_in[k].data() != nullptr;
    for (const Node& n : nodes_) {
      bool any = n.layer && n.layer->parameter_count() > 0;
      for (std::size_t t : n.in) any = any || needs[t];
      needs[n.out] = any;
    }
    if (grads_.size() != tensors_.size()) grads_.resize(tensors_.size());
    written_.assign(tensors_.size(), 0);
    for (std::size_t k = 0; k < outputs_.size(); ++k) {
      const std::size_t t = outputs_[k];
      if (!(grad_out[k].shape() == views_[t].shape()))
        fail(errc::shape_mismatch, "gradient of output '" + tensors_[t].name + "' has shape " + grad_out[k].shape().str() +
                                       ", expected " + views_[t].shape().str());
      if (!needs[t]) continue;
      grads_[t].resize(views_[t].shape());
      if (written_[t]) add_into(grad_out[k], grads_[t].view());
      else copy(grad_out[k], grads_[t].view());
      written_[t] = 1;
    }
    const auto& live = live_nodes();
    for (std::size_t i = nodes_.size(); i-- > 0;) {
      const Node& n = nodes_[i];
      if (!live[i] || !needs[n.out]) continue;
      Tensor<T>& g = grads_[n.out];
      if (!written_[n.out]) {  // a tensor nothing downstream depends on: zero gradient
        g.resize(views_[n.out].shape());
        std::fill_n(g.data(), g.size(), T(0));
        written_[n.out] = 1;
      }
      const std::size_t ni = n.in.size();
      if (scratch_.size() < ni) scratch_.resize(ni);
      if (gin_.size() < ni) gin_.resize(ni);
      if (args_.size() < ni) args_.resize(ni);
      for (std::size_t j = 0; j < ni; ++j) {
        const std::size_t t = n.in[j];
        args_[j] = views_[t];
        gin_[j] = {};
        if (!needs[t]) continue;
        // the first gradient of a tensor goes straight into its buffer, later ones are added
        bool direct = !written_[t];
        for (std::size_t p = 0; p < j; ++p) direct = direct && n.in[p] != t;
        Tensor<T>& target = direct ? grads_[t] : scratch_[j];
        target.resize(views_[t].shape());
        gin_[j] = target.view();
      }
      if (n.layer)
        n.layer->backward(args_[0], views_[n.out], g.cview(), gin_[0]);
      else
        n.merge->backward(std::span<const TensorView<const T>>(args_.data(), ni), g.cview(),
                          std::span<const TensorView<T>>(gin_.data(), ni));
      for (std::size_t j = 0; j < ni; ++j) {
        const std::size_t t = n.in[j];
        if (!needs[t]) continue;
        if (gin_[j].data() == scratch_[j].data()) add_into(scratch_[j].cview(), grads_[t].view());
        written_[t] = 1;
      }
    }
    for (std::size_t k = 0; k < inputs_.size() && !grad_in.empty(); ++k) {
      if (grad_in[k].data() == nullptr) continue;
      const std::size_t t = inputs_[k];
      if (!(grad_in[k].shape() == views_[t].shape()))
        fail(errc::shape_mismatch, "gradient of input '" + tensors_[t].name + "' has shape " + grad_in[k].shape().str() +
                                       ", expected " + views_[t].shape().str());
      if (written_[t]) copy(grads_[t].cview(), grad_in[k]);
      else std::fill_n(grad_in[k].data(), grad_in[k].size(), T(0));
    }
  }
  /// Backward for a model of one input and one output (see the general form).
  void backward(TensorView<const T> in, TensorView<const T> grad_out, TensorView<T> grad_in = {}) {
    single("backward");
    backward(std::span<const TensorView<const T>>(&in, 1), std::span<const TensorView<const T>>(&grad_out, 1),
             std::span<const TensorView<T>>(&grad_in, 1));
  }

  /// Every trainable tensor, named "<node output>.<name>" ("conv1.weight").
  std::vector<Parameter<T>> parameters() { return named(&Layer<T>::parameters); }
  /// Every trainable tensor, read-only (packed weights stay packed).
  std::vector<ConstParameter<T>> parameters() const { return named(&Layer<T>::parameters); }
  /// Every saved-but-not-trained tensor (`Layer::buffers`), named like parameters.
  std::vector<Parameter<T>> buffers() { return named(&Layer<T>::buffers); }
  /// Every saved-but-not-trained tensor, read-only.
  std::vector<ConstParameter<T>> buffers() const { return named(&Layer<T>::buffers); }
  /// Every tensor saved with the model, node by node, each node's parameters then its buffers.
  std::vector<Parameter<T>> state() {
    std::vector<Parameter<T>> all;
    for (const Node& n : nodes_) {
      if (!n.layer) continue;
      for (auto& p : n.layer->parameters()) all.push_back({tensors_[n.out].name + "." + p.name, p.value, p.grad});
      for (auto& b : n.layer->buffers()) all.push_back({tensors_[n.out].name + "." + b.name, b.value, b.grad});
    }
    return all;
  }
  /// Every tensor saved with the model, read-only: what a weights file of a const graph holds.
  std::vector<ConstParameter<T>> state() const {
    std::vector<ConstParameter<T>> all;
    for (const Node& n : nodes_) {
      if (!n.layer) continue;
      const Layer<T>& layer = *n.layer;
      for (auto& p : layer.parameters()) all.push_back({tensors_[n.out].name + "." + p.name, p.value});
      for (auto& b : layer.buffers()) all.push_back({tensors_[n.out].name + "." + b.name, b.value});
    }
    return all;
  }
  /// Zeroes every layer's gradients (allocating them the first time).
  void zero_grad() {
    for (Node& n : nodes_)
      if (n.layer) n.layer->zero_grad();
  }
  /// Layer::pack_weights() on every layer: for a model whose weights stay fixed while it serves.
  void pack_weights() { set_weight_packing(WeightPacking::fixed); }
  /// Layer::set_weight_packing on every layer (automatic by default; off saves the packs' memory).
  void set_weight_packing(WeightPacking mode) {
    for (Node& n : nodes_)
      if (n.layer) n.layer->set_weight_packing(mode);
  }
  /// Training mode: layers such as Dropout and BatchNorm2D train, and forward keeps every tensor
  /// for backward(). Inference mode (the default) reuses buffers by liveness.
  void set_training(bool on) noexcept {
    training_ = on;
    for (Node& n : nodes_)
      if (n.layer) n.layer->set_training(on);
  }
  bool training() const noexcept { return training_; }  ///< true in training mode
  /// Activation buffers the latest forward pass used: in inference fewer than the tensors, as
  /// buffers are reused once their tensor's last reader has run.
  std::size_t buffers_in_use() const noexcept { return slots_.size(); }

  // ---- cuts --------------------------------------------------------------------------------

  /// Cuts the model at the tensors `cut`: the head computes exactly them from the model's inputs,
  /// the tail computes the model's outputs from exactly them. Both are deep copies. errc::
  /// invalid_argument, naming the path, when a path from an input to an output bypasses the cut;
  /// also for an unknown or repeated name, or a tensor the tail does not read. The model's inputs
  /// make the cut that leaves the head empty, its outputs the one that leaves the tail empty.
  std::pair<Graph, Graph> cut(const std::vector<std::string>& cut) const {
    require_outputs("cut");
    std::vector<char> in_cut(tensors_.size(), 0);
    std::vector<std::size_t> ids;
    for (const std::string& name : cut) {
      const std::size_t t = find(name, "cut");
      if (in_cut[t]) fail(errc::invalid_argument, "cut names tensor '" + name + "' twice");
      in_cut[t] = 1;
      ids.push_back(t);
    }
    if (ids.empty()) fail(errc::invalid_argument, "a cut needs at least one tensor");
    // The tail: everything the outputs need, walking up until the cut. `next` remembers the way
    // down to an output, to name the path when an input is reached around the cut.
    std::vector<char> tail_node(nodes_.size(), 0), seen(tensors_.size(), 0);
    std::vector<std::size_t> next(tensors_.size(), npos), stack;
    for (std::size_t t : outputs_) {
      if (!seen[t]) stack.push_back(t);
      seen[t] = 1;
    }
    while (!stack.empty()) {
      const std::size_t t = stack.back();
      stack.pop_back();
      if (in_cut[t]) continue;
      const std::size_t p = tensors_[t].producer;
      if (p == npos) {
        std::string path = tensors_[t].name;
        for (std::size_t u = next[t]; u != npos; u = next[u]) path += " -> " + tensors_[u].name;
        fail(errc::invalid_argument, "not a cut: the path " + path + " bypasses it");
      }
      tail_node[p] = 1;
      for (std::size_t u : nodes_[p].in)
        if (!seen[u]) {
          seen[u] = 1;
          next[u] = t;
          stack.push_back(u);
        }
    }
    for (std::size_t t : ids)
      if (!seen[t]) fail(errc::invalid_argument, "cut tensor '" + tensors_[t].name + "' is not read by the tail");
    // The head: everything the cut tensors need.
    std::vector<char> head_node(nodes_.size(), 0), need(tensors_.size(), 0);
    for (std::size_t t : ids) need[t] = 1;
    for (std::size_t i = nodes_.size(); i-- > 0;)
      if (need[nodes_[i].out]) {
        head_node[i] = 1;
        for (std::size_t u : nodes_[i].in) need[u] = 1;
      }
    Graph head, tail;
    for (std::size_t t : inputs_)
      if (need[t]) head.input(tensors_[t].name, tensors_[t].sample);
    for (std::size_t t : ids) tail.input(tensors_[t].name, tensors_[t].sample);
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      if (head_node[i]) head.copy_node(*this, i);
      if (tail_node[i]) tail.copy_node(*this, i);
    }
    for (std::size_t t : ids) head.output(tensors_[t].name);
    for (std::size_t t : outputs_) tail.output(tensors_[t].name);
    head.set_training(training_);
    tail.set_training(training_);
    return {std::move(head), std::move(tail)};
  }

  /// Cuts at the frontier after the first `k` nodes the outputs need (the candidate cut whose
  /// `head_nodes` is k): the graph's counterpart of Sequential::split(k), and the split number
  /// the runtime's ModelIdentity carries for a graph. errc::out_of_range past the last node.
  std::pair<Graph, Graph> split(std::size_t k) const {
    // Each node adds its own output to the frontier, so the frontiers after 0, 1, ... n nodes
    // are all distinct and candidate_cuts() has one per k.
    const auto cuts = candidate_cuts();
    if (k >= cuts.size())
      fail(errc::out_of_range, "split point " + std::to_string(k) + " past a graph of " +
                                   std::to_string(cuts.size() - 1) + " nodes");
    return cut(cuts[k].tensors);
  }

  /// A 64-bit hash of the architecture: every input's name and shape, every node's output name,
  /// inputs, kind and settings, and the outputs. Equal hashes mean the same computation up to the
  /// weights; what the runtime's model check compares. Never 0.
  std::uint64_t architecture_hash() const {
    Fnv1a h;
    const auto shape = [&](const Shape& sh) {
      h.u64(sh.rank());
      for (std::size_t d : sh.dims()) h.u64(d);
    };
    for (std::size_t t : inputs_) h.str(tensors_[t].name), shape(tensors_[t].sample);
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      h.str(tensors_[nodes_[i].out].name);
      h.u64(nodes_[i].in.size());
      for (std::size_t t : nodes_[i].in) h.str(tensors_[t].name);
      h.spec(node_spec(i));
    }
    for (std::size_t t : outputs_) h.str(tensors_[t].name);
    return h.result();
  }

  /// Every frontier of the node order: after running the first k nodes the outputs need
  /// (k = 0 .. all), the tensors still to be read by a later node or returned as outputs. One
  /// per k (each node adds its own output), from the all-cloud cut (the inputs, k = 0) to the
  /// all-edge cut (the outputs).
  std::vector<CutInfo> candidate_cuts() const {
    require_outputs("candidate_cuts");
    const auto& live = live_nodes();
    std::vector<std::size_t> order;
    for (std::size_t i = 0; i < nodes_.size(); ++i)
      if (live[i]) order.push_back(i);
    // last[t]: position in `order` of t's last reader; outputs are read "after the end"
    std::vector<std::size_t> last(tensors_.size(), npos);
    for (std::size_t k = 0; k < order.size(); ++k)
      for (std::size_t t : nodes_[order[k]].in) last[t] = k;
    for (std::size_t t : outputs_) last[t] = order.size();
    std::uint64_t total = 0;
    for (std::size_t i : order) total += node_flops_at(nodes_[i], 1);
    std::vector<CutInfo> cuts;
    std::vector<char> defined(tensors_.size(), 0);
    for (std::size_t t : inputs_) defined[t] = 1;
    std::uint64_t head = 0;
    for (std::size_t k = 0; k <= order.size(); ++k) {  // frontier after the first k nodes
      if (k > 0) {
        defined[nodes_[order[k - 1]].out] = 1;
        head += node_flops_at(nodes_[order[k - 1]], 1);
      }
      std::vector<std::size_t> f;
      for (std::size_t t = 0; t < tensors_.size(); ++t)
        if (defined[t] && last[t] != npos && last[t] >= k) f.push_back(t);
      CutInfo c;
      for (std::size_t t : f) {
        c.tensors.push_back(tensors_[t].name);
        c.bytes += tensors_[t].sample.count() * sizeof(T);
      }
      c.head_flops = head;
      c.tail_flops = total - head;
      c.head_nodes = k;
      cuts.push_back(std::move(c));
    }
    return cuts;
  }

  /// A readable table of the nodes (output, kind, inputs, per-sample shape, parameters, FLOPs)
  /// and of the candidate cuts with their bytes and FLOPs per sample.
  std::string describe() const {
    std::string s;
    for (std::size_t t : inputs_) s += "input  " + tensors_[t].name + " " + tensors_[t].sample.str() + "\n";
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      const Node& n = nodes_[i];
      s += std::to_string(i) + "  " + tensors_[n.out].name + " = " + node_describe(i) + "(";
      for (std::size_t j = 0; j < n.in.size(); ++j) s += (j ? ", " : "") + tensors_[n.in[j]].name;
      s += ") " + tensors_[n.out].sample.str() + ", " +
           std::to_string(n.layer ? n.layer->parameter_count() : 0) + " parameters, " +
           std::to_string(node_flops_at(n, 1)) + " FLOPs\n";
    }
    for (std::size_t t : outputs_) s += "output " + tensors_[t].name + "\n";
    if (outputs_.empty()) return s;
    s += "candidate cuts (per sample):\n";
    for (const CutInfo& c : candidate_cuts()) {
      s += "  after " + std::to_string(c.head_nodes) + " nodes: {";
      for (std::size_t j = 0; j < c.tensors.size(); ++j) s += (j ? ", " : "") + c.tensors[j];
      s += "} " + std::to_string(c.bytes) + " bytes, head " + std::to_string(c.head_flops) + " FLOPs, tail " +
           std::to_string(c.tail_flops) + " FLOPs\n";
    }
    return s;
  }

 private:
  static constexpr std::size_t npos = std::numeric_limits<std::size_t>::max();

  struct TensorInfo {
    std::string name;
    Shape sample;
    std::size_t producer = npos;  // node index; npos for a model input
  };
  struct Node {
    std::unique_ptr<Layer<T>> layer;  // one of the two is set
    std::unique_ptr<Merge<T>> merge;
    std::vector<std::size_t> in;  // tensor indices
    std::size_t out = 0;
  };

  static Shape batched(const Shape& sample, std::size_t batch) {
    std::array<std::size_t, 8> d{};
    d[0] = batch;
    for (std::size_t i = 0; i < sample.rank(); ++i) d[i + 1] = sample[i];
    return Shape(std::span<const std::size_t>(d.data(), sample.rank() + 1));
  }
  static Shape unbatched(const Shape& s) { return Shape(s.dims().subspan(1)); }

  template <class L, class... Args>
  std::string add_node(std::vector<std::string> inputs, Args&&... args) {
    static_assert(std::is_base_of_v<Layer<T>, L> || std::is_base_of_v<Merge<T>, L>,
                  "Graph::add<L>: L must derive from Layer<T> or Merge<T>");
    auto node = std::make_unique<L>(std::forward<Args>(args)...);
    std::string name = std::string(node->name()) + "_" + std::to_string(nodes_.size());
    for (std::size_t k = 2; by_name_.count(name); ++k)
      name = std::string(node->name()) + "_" + std::to_string(nodes_.size()) + "_" + std::to_string(k);
    if constexpr (std::is_base_of_v<Layer<T>, L>)
      return push(std::move(name), inputs, std::move(node), nullptr);
    else
      return push(std::move(name), inputs, nullptr, std::move(node));
  }

  const std::string& push(std::string output, const std::vector<std::string>& inputs, std::unique_ptr<Layer<T>> layer,
                          std::unique_ptr<Merge<T>> merge) {
    const std::string who = "node '" + output + "' (" + (layer ? layer->describe() : merge->describe()) + ")";
    if (layer && inputs.size() != 1)
      fail(errc::invalid_argument, who + " is a layer and takes one input, got " + std::to_string(inputs.size()));
    if (merge && (inputs.size() < 2 || inputs.size() > Merge<T>::max_inputs))
      fail(errc::invalid_argument, who + " takes 2 to " + std::to_string(Merge<T>::max_inputs) + " inputs, got " +
                                       std::to_string(inputs.size()));
    Node n;
    std::array<Shape, Merge<T>::max_inputs> shapes;
    for (std::size_t j = 0; j < inputs.size(); ++j) {
      const auto it = by_name_.find(inputs[j]);
      if (it == by_name_.end())
        fail(errc::invalid_argument, who + " reads '" + inputs[j] + "', which is not defined before it");
      n.in.push_back(it->second);
      shapes[j] = batched(tensors_[it->second].sample, 1);
    }
    Shape out;
    try {
      out = layer ? layer->output_shape(shapes[0])
                  : merge->output_shape(std::span<const Shape>(shapes.data(), inputs.size()));
    } catch (const error& e) {
      fail(e.code(), who + ": " + e.what());
    }
    if (out.rank() < 2 || out.batch() != 1)
      fail(errc::shape_mismatch, who + " gives output " + out.str() + ", which is not batch-first");
    n.layer = std::move(layer);
    n.merge = std::move(merge);
    n.out = new_tensor(std::move(output), unbatched(out), nodes_.size());
    if (n.layer) n.layer->set_training(training_);
    nodes_.push_back(std::move(n));
    changed();
    return tensors_[nodes_.back().out].name;
  }

  // Appends a copy of `from`'s node `i`, reading the same-named tensors of this graph.
  void copy_node(const Graph& from, std::size_t i) {
    const Node& n = from.nodes_[i];
    const std::vector<std::string> in = from.names(n.in);
    if (n.layer) push(from.tensors_[n.out].name, in, n.layer->clone(), nullptr);
    else push(from.tensors_[n.out].name, in, nullptr, n.merge->clone());
  }

  std::size_t new_tensor(std::string name, const Shape& sample, std::size_t producer) {
    if (name.empty() || name.size() > max_name)
      fail(errc::invalid_argument, "tensor names are 1 to " + std::to_string(max_name) + " bytes long");
    for (char c : name)
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
        fail(errc::invalid_argument, "tensor name '" + name + "' holds a control character");
    if (by_name_.count(name)) fail(errc::invalid_argument, "tensor name '" + name + "' is defined twice");
    tensors_.push_back({name, sample, producer});
    by_name_.emplace(std::move(name), tensors_.size() - 1);
    return tensors_.size() - 1;
  }

  std::size_t find(const std::string& name, const char* who) const {
    const auto it = by_name_.find(name);
    if (it == by_name_.end()) fail(errc::invalid_argument, std::string(who) + ": no tensor named '" + name + "'");
    return it->second;
  }
  std::vector<std::string> names(const std::vector<std::size_t>& ids) const {
    std::vector<std::string> r;
    for (std::size_t t : ids) r.push_back(tensors_[t].name);
    return r;
  }
  void single(const char* who) const {
    if (inputs_.size() != 1 || outputs_.size() != 1)
      fail(errc::invalid_argument, std::string("Graph::") + who + " of one tensor needs a model of one input and one output; this one has " +
                                       std::to_string(inputs_.size()) + " and " + std::to_string(outputs_.size()));
  }
  void require_outputs(const char* who) const {
    if (outputs_.empty()) fail(errc::invalid_argument, std::string("Graph::") + who + " needs the outputs declared (output())");
  }
  void check_input_shape(std::size_t k, const Shape& s) const {
    const TensorInfo& t = tensors_[inputs_[k]];
    if (s.rank() != t.sample.rank() + 1 || s.batch() == 0 || !(unbatched(s) == t.sample))
      fail(errc::shape_mismatch, "input '" + t.name + "' has shape " + s.str() + ", expected [N, " +
                                     t.sample.str().substr(1) + " with N >= 1");
  }
  std::uint64_t node_flops_at(const Node& n, std::size_t batch) const {
    if (n.layer) return n.layer->flops(batched(tensors_[n.in[0]].sample, batch));
    std::array<Shape, Merge<T>::max_inputs> s;
    for (std::size_t j = 0; j < n.in.size(); ++j) s[j] = batched(tensors_[n.in[j]].sample, batch);
    return n.merge->flops(std::span<const Shape>(s.data(), n.in.size()));
  }
  static void add_into(TensorView<const T> x, TensorView<T> y) {
    kernels::map2(y.data(), x.data(), y.data(), y.size(), [](auto a, auto b) { return a + b; });
  }

  void changed() noexcept { planned_ = planned_live_ = false; }

  // Nodes the outputs depend on.
  const std::vector<char>& live_nodes() const {
    if (!planned_live_) {
      live_.assign(nodes_.size(), 0);
      std::vector<char> need(tensors_.size(), 0);
      for (std::size_t t : outputs_) need[t] = 1;
      for (std::size_t i = nodes_.size(); i-- > 0;)
        if (need[nodes_[i].out]) {
          live_[i] = 1;
          for (std::size_t u : nodes_[i].in) need[u] = 1;
        }
      planned_live_ = true;
    }
    return live_;
  }

  // Assigns each computed tensor a buffer slot: in inference, a slot returns to the free list
  // after its tensor's last reader (best fit by per-sample size); in training every tensor keeps
  // its own. Outputs are never reused.
  void plan(bool keep_all) {
    if (planned_ && planned_keep_all_ == keep_all) return;
    const auto& live = live_nodes();
    slot_of_.assign(tensors_.size(), npos);
    slot_size_.clear();
    std::vector<std::size_t> last(tensors_.size(), 0);
    std::vector<char> pinned(tensors_.size(), 0);
    for (std::size_t i = 0; i < nodes_.size(); ++i)
      if (live[i])
        for (std::size_t t : nodes_[i].in) last[t] = i;
    for (std::size_t t : outputs_) pinned[t] = 1;
    std::vector<std::size_t> free_slots;
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      if (!live[i]) continue;
      const std::size_t t = nodes_[i].out, need = tensors_[t].sample.count();
      std::size_t best = npos;
      if (!keep_all)
        for (std::size_t k = 0; k < free_slots.size(); ++k) {
          const std::size_t s = free_slots[k];
          const bool fits = slot_size_[s] >= need;
          if (best == npos) best = k;
          const std::size_t b = free_slots[best];
          const bool best_fits = slot_size_[b] >= need;
          // prefer the smallest slot that fits, else the largest one (it grows least)
          if ((fits && (!best_fits || slot_size_[s] < slot_size_[b])) || (!fits && !best_fits && slot_size_[s] > slot_size_[b]))
            best = k;
        }
      if (best == npos) {
        slot_of_[t] = slot_size_.size();
        slot_size_.push_back(need);
      } else {
        slot_of_[t] = free_slots[best];
        slot_size_[slot_of_[t]] = std::max(slot_size_[slot_of_[t]], need);
        free_slots.erase(free_slots.begin() + static_cast<std::ptrdiff_t>(best));
      }
      if (keep_all) continue;
      for (std::size_t u : nodes_[i].in)  // readers done with u: its slot is free again
        if (last[u] == i && !pinned[u] && slot_of_[u] != npos &&
            std::find(free_slots.begin(), free_slots.end(), slot_of_[u]) == free_slots.end())
          free_slots.push_back(slot_of_[u]);
    }
    slots_.resize(slot_size_.size());
    planned_ = true;
    planned_keep_all_ = keep_all;
  }

  void run(std::span<const TensorView<const T>> in) {
    require_outputs("forward");
    if (in.size() != inputs_.size())
      fail(errc::invalid_argument, "Graph::forward needs " + std::to_string(inputs_.size()) + " inputs, got " +
                                       std::to_string(in.size()));
    for (std::size_t k = 0; k < inputs_.size(); ++k) check_input_shape(k, in[k].shape());
    const std::size_t batch = in[0].shape().batch();
    for (std::size_t k = 1; k < inputs_.size(); ++k)
      if (in[k].shape().batch() != batch)
        fail(errc::shape_mismatch, "inputs '" + tensors_[inputs_[0]].name + "' and '" + tensors_[inputs_[k]].name +
                                       "' differ in batch");
    plan(training_);
    ran_training_ = false;
    for (std::size_t s = 0; s < slots_.size(); ++s)
      slots_[s].resize(Shape{Shape::checked_count(std::array<std::size_t, 2>{slot_size_[s], batch})});  // grows only
    if (views_.size() != tensors_.size()) views_.resize(tensors_.size());
    for (std::size_t k = 0; k < inputs_.size(); ++k) views_[inputs_[k]] = in[k];
    const auto& live = live_nodes();
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      if (!live[i]) continue;
      Node& n = nodes_[i];
      const TensorView<T> y(slots_[slot_of_[n.out]].data(), batched(tensors_[n.out].sample, batch));
      if (n.layer) {
        n.layer->forward(views_[n.in[0]], y);
      } else {
        if (args_.size() < n.in.size()) args_.resize(n.in.size());
        for (std::size_t j = 0; j < n.in.size(); ++j) args_[j] = views_[n.in[j]];
        n.merge->forward(std::span<const TensorView<const T>>(args_.data(), n.in.size()), y);
      }
      views_[n.out] = y;
    }
    ran_training_ = training_;
  }

  std::vector<Parameter<T>> named(std::vector<Parameter<T>> (Layer<T>::*which)()) {
    std::vector<Parameter<T>> all;
    for (const Node& n : nodes_)
      if (n.layer)
        for (auto& p : ((*n.layer).*which)()) {
          p.name = tensors_[n.out].name + "." + p.name;
          all.push_back(std::move(p));
        }
    return all;
  }
  std::vector<ConstParameter<T>> named(std::vector<ConstParameter<T>> (Layer<T>::*which)() const) const {
    std::vector<ConstParameter<T>> all;
    for (const Node& n : nodes_)
      if (n.layer)
        for (auto& p : (std::as_const(*n.layer).*which)()) {
          p.name = tensors_[n.out].name + "." + p.name;
          all.push_back(std::move(p));
        }
    return all;
  }

  std::vector<TensorInfo> tensors_;
  std::vector<Node> nodes_;
  std::vector<std::size_t> inputs_, outputs_;
  std::unordered_map<std::string, std::size_t> by_name_;
  bool training_ = false;

  // workspace (not copied)
  mutable std::vector<char> live_;
  mutable bool planned_live_ = false;
  bool planned_ = false, planned_keep_all_ = false, ran_training_ = false;
  std::vector<std::size_t> slot_of_, slot_size_;
  std::vector<Tensor<T>> slots_;
  std::vector<TensorView<const T>> views_, args_;
  std::vector<Tensor<T>> grads_, scratch_;
  std::vector<TensorView<T>> gin_;
  std::vector<char> needs_grad_, written_;
};

/// A graph as one layer: how a Sequential, and so the runtime's edge client and cloud server, runs
/// a graph's head or tail. Several inputs (or outputs) travel side by side in one row per sample,
/// {N, F} with F the sum of their per-sample sizes, in the graph's input (output) order, each
/// tensor's elements row-major within its part of the row: rows of different requests can then
/// be batched as any features are. One input is taken in its own shape {N, ...} or flattened to
/// {N, size}; one output keeps its own shape.
///
/// Its spec records the architecture's hash (Graph::architecture_hash), so a model check tells
/// graphs apart, but make_layer cannot rebuild it: save the Graph itself (graph_from_safetensors).
template <Real T>
class GraphLayer final : public Layer<T> {
 public:
  /// Wraps `graph`, which must have its outputs declared (errc::invalid_argument otherwise).
  explicit GraphLayer(Graph<T> graph) : graph_(std::move(graph)) {
    if (graph_.output_names().empty()) fail(errc::invalid_argument, "GraphLayer needs a graph with outputs");
    for (const auto& n : graph_.input_names()) {
      in_.push_back({graph_.sample_shape(n), in_width_});
      in_width_ += in_.back().sample.count();
    }
    for (const auto& n : graph_.output_names()) {
      out_.push_back({graph_.sample_shape(n), out_width_});
      out_width_ += out_.back().sample.count();
    }
  }

  std::string_view name() const noexcept override { return "Graph"; }
  std::string describe() const override {
    return "Graph(" + std::to_string(graph_.node_count()) + " nodes, " + std::to_string(in_.size()) + " -> " +
           std::to_string(out_.size()) + " tensors)";
  }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<GraphLayer>(*this); }
  /// Keys: nodes, in (the packed input width), out (the packed output width), arch (the hash).
  LayerSpec spec() const override {
    return {"Graph",
            {{"nodes", graph_.node_count()}, {"in", in_width_}, {"out", out_width_}, {"arch", graph_.architecture_hash()}},
            {}};
  }
  /// The wrapped graph.
  const Graph<T>& graph() const noexcept { return graph_; }
  /// The wrapped graph, for changing its weights.
  Graph<T>& graph() noexcept { return graph_; }
  /// Elements per sample of the packed input: the sum of the inputs' per-sample sizes.
  std::size_t input_width() const noexcept { return in_width_; }
  std::size_t parameter_count() const override { return graph_.parameter_count(); }
  void zero_grad() override { graph_.zero_grad(); }
  void set_weight_packing(WeightPacking mode) override { graph_.set_weight_packing(mode); }

 protected:
  void check_input(const Shape& in) const override {
    Layer<T>::check_input(in);
    const bool natural = in_.size() == 1 && in.rank() == in_[0].sample.rank() + 1 &&
                         Shape(in.dims().subspan(1)) == in_[0].sample;
    if (!natural && !(in.rank() == 2 && in[1] == in_width_))
      fail(errc::shape_mismatch, describe() + " needs an input [N, " + std::to_string(in_width_) + "]" +
                                     (in_.size() == 1 ? " or [N, " + in_[0].sample.str().substr(1) : std::string()) +
                                     ", got " + in.str());
  }
  Shape output_shape_impl(const Shape& in) const override {
    if (out_.size() == 1) return batched(out_[0].sample, in.batch());
    return Shape{in.batch(), out_width_};
  }
  std::uint64_t flops_impl(const Shape& in) const override { return graph_.flops(in.batch()); }

  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    if (graph_.training() != this->training()) graph_.set_training(this->training());
    const std::size_t n = in.shape().batch();
    views(in);
    graph_.forward(std::span<const TensorView<const T>>(in_views_.data(), in_.size()));
    if (out_.size() == 1) {
      copy(graph_.result(0), TensorView<T>(out.data(), graph_.result(0).shape()));
      return;
    }
    for (std::size_t k = 0; k < out_.size(); ++k)
      move_rows(graph_.result(k).data(), out_[k].sample.count(), out.data(), out_width_, out_[k].offset, n);
  }

  void backward_impl(TensorView<const T> in, TensorView<const T>, TensorView<const T> grad_out,
                     TensorView<T> grad_in) override {
    const std::size_t n = in.shape().batch();
    views(in);  // the same buffers as the forward pass, which backward checks
    if (gout_.size() < out_.size()) gout_.resize(out_.size()), gout_views_.resize(out_.size());
    for (std::size_t k = 0; k < out_.size(); ++k) {
      const Shape s = batched(out_[k].sample, n);
      if (out_.size() == 1) {
        gout_views_[k] = TensorView<const T>(grad_out.data(), s);
      } else {
        gout_[k].resize(s);
        move_rows(grad_out.data(), out_width_, out_[k].offset, gout_[k].data(), out_[k].sample.count(), n);
        gout_views_[k] = gout_[k].cview();
      }
    }
    if (gin_.size() < in_.size()) gin_.resize(in_.size()), gin_views_.resize(in_.size());
    for (std::size_t k = 0; k < in_.size(); ++k) {
      const Shape s = batched(in_[k].sample, n);
      if (grad_in.data() == nullptr) gin_views_[k] = {};
      else if (in_.size() == 1) gin_views_[k] = TensorView<T>(grad_in.data(), s);
      else gin_[k].resize(s), gin_views_[k] = gin_[k].view();
    }
    graph_.backward(std::span<const TensorView<const T>>(in_views_.data(), in_.size()),
                    std::span<const TensorView<const T>>(gout_views_.data(), out_.size()),
                    std::span<const TensorView<T>>(gin_views_.data(), in_.size()));
    if (grad_in.data() != nullptr && in_.size() > 1)
      for (std::size_t k = 0; k < in_.size(); ++k)
        move_rows(gin_[k].data(), in_[k].sample.count(), grad_in.data(), in_width_, in_[k].offset, n);
  }
  std::vector<Parameter<T>> parameters_impl() override { return graph_.parameters(); }
  std::vector<Parameter<T>> buffers_impl() override { return graph_.buffers(); }
  std::vector<ConstParameter<T>> const_parameters_impl() const override { return graph_.parameters(); }
  std::vector<ConstParameter<T>> const_buffers_impl() const override { return graph_.buffers(); }

 private:
  struct Part {
    Shape sample;
    std::size_t offset = 0;  // elements before this tensor in a packed row
  };
  static Shape batched(const Shape& sample, std::size_t batch) {
    std::array<std::size_t, 8> d{};
    d[0] = batch;
    for (std::size_t i = 0; i < sample.rank(); ++i) d[i + 1] = sample[i];
    return Shape(std::span<const std::size_t>(d.data(), sample.rank() + 1));
  }
  // Copies `width` elements per sample from rows of `from_stride` at `from_offset` into rows of
  // `to_stride` (overloads: packed -> one tensor, one tensor -> packed).
  static void move_rows(const T* from, std::size_t from_stride, std::size_t from_offset, T* to, std::size_t width,
                        std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) std::memcpy(to + i * width, from + i * from_stride + from_offset, width * sizeof(T));
  }
  static void move_rows(const T* from, std::size_t width, T* to, std::size_t to_stride, std::size_t to_offset,
                        std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) std::memcpy(to + i * to_stride + to_offset, from + i * width, width * sizeof(T));
  }
  // The graph's inputs for a packed (or single, natural) input.
  void views(TensorView<const T> in) {
    const std::size_t n = in.shape().batch();
    if (in_views_.size() < in_.size()) in_views_.resize(in_.size()), in_bufs_.resize(in_.size());
    if (in_.size() == 1) {
      in_views_[0] = TensorView<const T>(in.data(), batched(in_[0].sample, n));
      return;
    }
    for (std::size_t k = 0; k < in_.size(); ++k) {
      in_bufs_[k].resize(batched(in_[k].sample, n));  // the same buffer for the same batch
      in_views_[k] = in_bufs_[k].cview();
      move_rows(in.data(), in_width_, in_[k].offset, in_bufs_[k].data(), in_[k].sample.count(), n);
    }
  }

  Graph<T> graph_;
  std::vector<Part> in_, out_;
  std::size_t in_width_ = 0, out_width_ = 0;
  std::vector<Tensor<T>> in_bufs_, gout_, gin_;
  std::vector<TensorView<const T>> in_views_, gout_views_;
  std::vector<TensorView<T>> gin_views_;
};

/// A Sequential of one GraphLayer running `graph` (an empty Sequential for a graph of no nodes
/// and one input, whose output is its input): how the edge client and the cloud server take a
/// graph's head and tail.
template <Real T>
Sequential<T> as_sequential(Graph<T> graph) {
  Sequential<T> s;
  const auto in = graph.input_names(), out = graph.output_names();
  if (graph.empty() && in.size() == 1 && out.size() == 1 && in[0] == out[0]) return s;
  s.add(std::make_unique<GraphLayer<T>>(std::move(graph)));
  return s;
}

/// A copy of `model` with `block` spliced in after tensor `at`: the block (a graph of one input
/// and one output) runs on `at`, and every node that read `at`, and the output list if `at` is an
/// output, reads the block's output instead. What inserts a trained bottleneck at a cut (an edge
/// encoder and a cloud decoder, BottleFit's first stage: docs/compression.md), an adapter, or a
/// quantization stand-in, without rebuilding the model by hand.
///
/// The block's input takes `at`'s place whatever its name, and must have `at`'s per-sample shape;
/// its other tensors keep their names, which must be new to `model`. Its output may have another
/// shape when the readers of `at` accept it. Node order: the block's nodes right after `at`'s
/// producer (after the inputs when `at` is an input), so the model's split numbers past that
/// point shift by the block's size; cut by tensor name to keep a cut. errc::invalid_argument for
/// an unknown `at`, a block of another arity or a taken name, errc::shape_mismatch for a block
/// input of another shape, and the readers' own shape errors when the block's output does not fit
/// them. The copy has `model`'s training mode.
template <Real T>
Graph<T> insert_after(const Graph<T>& model, const std::string& at, const Graph<T>& block) {
  const auto block_in = block.input_names(), block_out = block.output_names();
  if (block_in.size() != 1 || block_out.size() != 1)
    fail(errc::invalid_argument, "insert_after needs a block of one input and one output, got " +
                                     std::to_string(block_in.size()) + " and " + std::to_string(block_out.size()));
  if (!model.contains(at)) fail(errc::invalid_argument, "insert_after: no tensor named '" + at + "'");
  if (!(block.sample_shape(block_in[0]) == model.sample_shape(at)))
    fail(errc::shape_mismatch, "insert_after: the block takes " + block.sample_shape(block_in[0]).str() + ", tensor '" +
                                   at + "' is " + model.sample_shape(at).str());
  // the name each of the block's tensors has in the result: its input is `at`
  const auto renamed = [&](const std::string& t) { return t == block_in[0] ? at : t; };
  const std::string replacement = renamed(block_out[0]);
  Graph<T> out;
  const auto splice = [&] {
    for (std::size_t i = 0; i < block.node_count(); ++i) {
      if (model.contains(block.node_output(i)))
        fail(errc::invalid_argument, "insert_after: the block's tensor '" + block.node_output(i) +
                                         "' is already a tensor of the model");
      std::vector<std::string> in = block.node_inputs(i);
      for (auto& t : in) t = renamed(t);
      if (block.layer(i) != nullptr) out.add(block.node_output(i), in, block.layer(i)->clone());
      else out.add(block.node_output(i), in, block.merge(i)->clone());
    }
  };
  for (const auto& name : model.input_names()) out.input(name, model.sample_shape(name));
  const auto inputs = model.input_names();
  if (std::find(inputs.begin(), inputs.end(), at) != inputs.end()) splice();
  for (std::size_t i = 0; i < model.node_count(); ++i) {
    std::vector<std::string> in = model.node_inputs(i);
    for (auto& t : in)
      if (t == at) t = replacement;
    if (model.layer(i) != nullptr) out.add(model.node_output(i), in, model.layer(i)->clone());
    else out.add(model.node_output(i), in, model.merge(i)->clone());
    if (model.node_output(i) == at) splice();
  }
  for (const auto& name : model.output_names()) out.output(name == at ? replacement : name);
  out.set_training(model.training());
  return out;
}

}  // namespace edgesplit
