// edgesplit/nn/weights.hpp - named weight sets: get, set, copy and average (parameter sync).
#pragma once

#include <cmath>
#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/nn/graph.hpp"
#include "edgesplit/nn/sequential.hpp"

namespace edgesplit {

/// Every tensor saved with a model, layer by layer, each layer's parameters ("<i>.weight",
/// "<i>.bias") then its buffers ("<i>.mean", "<i>.std"): the names and order of PyTorch's
/// nn.Sequential state_dict.
template <Real T>
std::vector<Parameter<T>> model_state(Sequential<T>& model) {
  std::vector<Parameter<T>> all;
  for (std::size_t i = 0; i < model.size(); ++i) {
    for (auto& p : model[i].parameters()) all.push_back({std::to_string(i) + "." + p.name, p.value, p.grad});
    for (auto& b : model[i].buffers()) all.push_back({std::to_string(i) + "." + b.name, b.value, b.grad});
  }
  return all;
}

/// Every tensor saved with a graph: each node's parameters then its buffers, named after the
/// node's output ("conv1.weight", "bn1.running_mean"), in node order.
template <Real T>
std::vector<Parameter<T>> model_state(Graph<T>& model) {
  return model.state();
}

/// model_state of a model that is not to change, read-only (packed weights stay packed).
template <Real T>
std::vector<ConstParameter<T>> model_state(const Sequential<T>& model) {
  std::vector<ConstParameter<T>> all;
  for (std::size_t i = 0; i < model.size(); ++i) {
    const Layer<T>& layer = model[i];
    for (auto& p : layer.parameters()) all.push_back({std::to_string(i) + "." + p.name, p.value});
    for (auto& b : layer.buffers()) all.push_back({std::to_string(i) + "." + b.name, b.value});
  }
  return all;
}

/// model_state of a graph that is not to change, read-only.
template <Real T>
std::vector<ConstParameter<T>> model_state(const Graph<T>& model) {
  return model.state();
}

/// An owning copy of a model's named tensors: what the cloud pushes to the edges in collaborative
/// training, what a weights file holds. Independent of the model it came from.
template <Real T>
class Weights {
 public:
  /// One named tensor.
  struct Entry {
    std::string name;  ///< e.g. "1.weight"
    Tensor<T> value;  ///< an owning copy
  };

  Weights() = default;
  /// A copy of `model`'s state (see `model_state`): a Sequential<T> or a Graph<T>, read through
  /// const access (a served model's packed weights stay packed).
  template <class Model>
    requires requires(const Model& m) { { model_state(m) } -> std::same_as<std::vector<ConstParameter<T>>>; }
  explicit Weights(const Model& model) {
    for (const auto& p : model_state(model)) {
      Tensor<T> t(p.value.shape());
      copy(TensorView<const T>(p.value), t.view());
      entries_.push_back({p.name, std::move(t)});
    }
  }

  std::size_t size() const noexcept { return entries_.size(); }  ///< number of tensors
  std::span<const Entry> entries() const& noexcept { return entries_; }  ///< the tensors, in the model's order
  /// The tensors of a temporary, moved out: a span would dangle once the full expression ends
  /// (`for (const auto& e : Weights<float>(model).entries())` stays safe).
  std::vector<Entry> entries() && noexcept { return std::move(entries_); }
  /// The tensor named `name`, or nullptr.
  const Tensor<T>* find(const std::string& name) const {
    for (const auto& e : entries_)
      if (e.name == name) return &e.value;
    return nullptr;
  }
  /// Appends a tensor; errc::invalid_argument if the name is taken.
  void add(std::string name, Tensor<T> value) {
    if (find(name)) fail(errc::invalid_argument, "duplicate weight name '" + name + "'");
    entries_.push_back({std::move(name), std::move(value)});
  }

  /// Copies these tensors into `model`. Exact (the default): the model must have exactly these
  /// names with these shapes. Partial: every tensor here must exist in the model with the same
  /// shape, the model may have more (pushing the head's weights to an edge, say).
  /// errc::shape_mismatch otherwise; the model is left unchanged on error.
  template <class Model>
    requires requires(Model& m) { { model_state(m) } -> std::same_as<std::vector<Parameter<T>>>; }
  void apply_to(Model& model, bool partial = false) const {
    const auto state = model_state(model);
    std::vector<std::pair<const Tensor<T>*, TensorView<T>>> plan;
    for (const auto& e : entries_) {
      const Parameter<T>* target = nullptr;
      for (const auto& p : state)
        if (p.name == e.name) target = &p;
      if (!target) fail(errc::shape_mismatch, "the model has no tensor named '" + e.name + "'");
      if (!(target->value.shape() == e.value.shape()))
        fail(errc::shape_mismatch, "'" + e.name + "' has shape " + e.value.shape().str() + ", the model's is " +
                                       target->value.shape().str());
      plan.emplace_back(&e.value, target->value);
    }
    if (!partial && plan.size() != state.size())
      fail(errc::shape_mismatch, "the model has " + std::to_string(state.size()) + " tensors, the weight set " +
                                     std::to_string(plan.size()));
    for (auto& [from, to] : plan) copy(from->cview(), to);
  }

 private:
  std::vector<Entry> entries_;
};

/// Copies every tensor of `from` into `to`; the two must have the same names and shapes
/// (errc::shape_mismatch, `to` unchanged).
template <Real T>
void copy_weights(const Sequential<T>& from, Sequential<T>& to) {
  Weights<T>(from).apply_to(to);
}

/// Sets `into` to the (weighted) average of `models`' tensors, element by element in double
/// (federated averaging). `shares` are non-negative relative weights, one per model (for example
/// their sample counts); empty means equal. All models, and `into`, must have the same names and
/// shapes (errc::shape_mismatch; `into` unchanged). `into` may be one of `models`.
template <Real T>
void average_weights(std::span<Sequential<T>* const> models, Sequential<T>& into, std::span<const double> shares = {}) {
  if (models.empty()) fail(errc::invalid_argument, "average_weights of no models");
  if (!shares.empty() && shares.size() != models.size())
    fail(errc::invalid_argument, "average_weights needs one share per model");
  double total = 0;
  for (std::size_t m = 0; m < models.size(); ++m) {
    const double s = shares.empty() ? 1.0 : shares[m];
    if (!(s >= 0) || !std::isfinite(s)) fail(errc::invalid_argument, "average_weights shares must be finite and >= 0");
    total += s;
  }
  if (!(total > 0)) fail(errc::invalid_argument, "average_weights shares sum to zero");

  std::vector<std::vector<Parameter<T>>> states;
  for (auto* m : models) {
    if (m == nullptr) fail(errc::invalid_argument, "average_weights of a null model");
    states.push_back(model_state(*m));
  }
  const auto target = model_state(into);
  for (const auto& s : states) {
    if (s.size() != target.size())
      fail(errc::shape_mismatch, "average_weights: models with " + std::to_string(s.size()) + " and " +
                                     std::to_string(target.size()) + " tensors");
    for (std::size_t i = 0; i < s.size(); ++i)
      if (s[i].name != target[i].name || !(s[i].value.shape() == target[i].value.shape()))
        fail(errc::shape_mismatch, "average_weights: '" + s[i].name + "' " + s[i].value.shape().str() + " vs '" +
                                       target[i].name + "' " + target[i].value.shape().str());
  }
  std::vector<double> acc;
  for (std::size_t i = 0; i < target.size(); ++i) {
    acc.assign(target[i].value.size(), 0.0);
    for (std::size_t m = 0; m < states.size(); ++m) {
      const double w = (shares.empty() ? 1.0 : shares[m]) / total;
      const T* v = states[m][i].value.data();
      for (std::size_t j = 0; j < acc.size(); ++j) acc[j] += w * static_cast<double>(v[j]);
    }
    T* out = target[i].value.data();  // written last: `into` may be among the models
    for (std::size_t j = 0; j < acc.size(); ++j) out[j] = static_cast<T>(acc[j]);
  }
}

}  // namespace edgesplit
