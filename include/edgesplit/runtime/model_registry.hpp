// edgesplit/runtime/model_registry.hpp - the tails a server runs, by (model id, split), with
// versions a batch can pin, and the fingerprint an edge checks at connect time.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/shape.hpp"
#include "edgesplit/nn/graph.hpp"
#include "edgesplit/nn/sequential.hpp"
#include "edgesplit/runtime/metrics.hpp"
#include "edgesplit/wire/protocol.hpp"

namespace edgesplit {

/// The per-sample shape a model takes (its input shape without the batch dimension), when the
/// model itself says: the first layer that declares an input width ("in" in its LayerSpec, as
/// Dense does), provided every layer before it keeps shapes (activations) and the model accepts
/// that width. A model that starts with a graph of one input (GraphLayer) takes that input's
/// own per-sample shape, as a graph head of one output sends it. Empty for an empty model or
/// one that declares no width.
inline std::optional<Shape> input_signature(const Sequential<float>& model) {
  if (!model.empty())
    if (const auto* g = dynamic_cast<const GraphLayer<float>*>(&model[0]); g && g->graph().input_names().size() == 1)
      return g->graph().sample_shape(g->graph().input_names()[0]);
  for (std::size_t i = 0; i < model.size(); ++i) {
    const LayerSpec spec = model[i].spec();
    const auto in = spec.integers.find("in");
    if (in == spec.integers.end() || in->second == 0) continue;
    try {
      (void)model.output_shape(Shape{1, static_cast<std::size_t>(in->second)});
      return Shape{static_cast<std::size_t>(in->second)};
    } catch (const error&) {
      return std::nullopt;
    }
  }
  return std::nullopt;
}

/// The per-sample shape `model` produces from per-sample input `signature`.
inline Shape output_signature(const Sequential<float>& model, const Shape& signature) {
  const Shape out = model.output_shape(signature.with_leading(1));
  return Shape(out.dims().subspan(1));
}

/// A 64-bit fingerprint of a served model part: its architecture (every layer's kind and
/// settings, in order), the per-sample input shape it takes, and the major version of its
/// weights. Two parts with equal fingerprints accept the same features and compute the same kind
/// of answer; a minor version (a compatible weights update) does not change it. Never 0.
inline std::uint64_t model_fingerprint(const Sequential<float>& model, const std::optional<Shape>& signature,
                                       std::uint32_t major) {
  Fnv1a h;
  h.u64(major);
  h.u64(signature ? signature->rank() : 0);
  if (signature)
    for (std::size_t d : signature->dims()) h.u64(d);
  h.u64(model.size());
  for (std::size_t i = 0; i < model.size(); ++i) h.spec(model[i].spec());
  return h.result();
}

/// "Dense(16 -> 12) ReLU Dense(12 -> 5)": a model's layers, for messages that say what differs.
inline std::string describe_layers(const Sequential<float>& model) {
  std::string s;
  for (std::size_t i = 0; i < model.size(); ++i) {
    if (i) s.push_back(' ');
    s.append(model[i].describe());  // append, not operator+: GCC 12 warns falsely (-Wrestrict) on the latter
  }
  return s.empty() ? "(no layers)" : s;
}

/// The tails a server runs, keyed by (model id, split). Registering or updating a tail publishes
/// a new immutable version (an `Entry` with a higher generation); a batch pins the version it
/// started on, so it never sees half-updated weights. Thread-safe.
class ModelRegistry {
 public:
  /// (model id, split point): what an INFER names.
  using Key = std::pair<std::string, std::uint16_t>;
  /// One published version of a tail.
  struct Entry {
    wire::ModelIdentity id;  ///< model id, versions, split
    Sequential<float> model;  ///< the tail
    std::optional<Shape> signature;  ///< per-sample input shape, when the tail declares it
    std::uint64_t fingerprint = 0;  ///< model_fingerprint(model, signature, id.major)
    std::uint64_t generation = 0;  ///< increases with every registration or update, server-wide
    /// For a graph tail of several inputs (a cut crossing several tensors): their names and
    /// per-sample shapes, in the order an INFER_TENSORS frame must carry them. Empty otherwise.
    std::vector<std::pair<std::string, Shape>> feature_tensors;
    /// Its counters (requests by outcome, batches, durations): shared by every version of this
    /// tail, so they survive weight updates and re-registration.
    std::shared_ptr<ModelMetrics> metrics;
  };

  /// Registers (or replaces) the tail served under (id.model_id, id.split).
  /// errc::invalid_argument for an empty or over-long model id.
  void add(const wire::ModelIdentity& id, Sequential<float> tail) {
    if (id.model_id.empty() || id.model_id.size() > wire::max_model_id_bytes)
      fail(errc::invalid_argument, "model id must be 1.." + std::to_string(wire::max_model_id_bytes) + " bytes");
    auto e = std::make_shared<Entry>();
    e->id = id;
    e->model = std::move(tail);
    e->signature = input_signature(e->model);
    e->fingerprint = model_fingerprint(e->model, e->signature, id.major);
    if (!e->model.empty())
      if (const auto* g = dynamic_cast<const GraphLayer<float>*>(&e->model[0]); g && g->graph().input_names().size() > 1)
        for (const auto& name : g->graph().input_names()) e->feature_tensors.emplace_back(name, g->graph().sample_shape(name));
    publish(std::move(e));
  }

  /// Replaces parameters of a registered tail and sets its minor version. Refuses the whole
  /// update, changing nothing, when a tensor names no parameter (errc::invalid_argument) or has
  /// another shape than the parameter it names (errc::shape_mismatch); the message names it.
  void update_weights(const std::string& model_id, std::uint16_t split, std::uint32_t minor,
                      std::span<const wire::NamedTensor> tensors) {
    std::shared_ptr<const Entry> old = find({model_id, split});
    if (!old) fail(errc::invalid_argument, "no model '" + model_id + "' at split " + std::to_string(split));
    auto e = std::make_shared<Entry>(*old);
    auto params = e->model.parameters();
    for (const auto& t : tensors) {
      auto it = std::find_if(params.begin(), params.end(), [&](const auto& p) { return p.name == t.name; });
      if (it == params.end())
        fail(errc::invalid_argument, "weights update for '" + model_id + "': the tail has no parameter '" + t.name + "'");
      if (!(it->value.shape() == t.value.shape()))
        fail(errc::shape_mismatch, "weights update for '" + model_id + "': parameter '" + t.name + "' is " +
                                       it->value.shape().str() + ", the update has " + t.value.shape().str());
      copy(t.value.cview(), it->value);
    }
    e->id.minor = minor;
    publish(std::move(e));
  }

  /// The current version of a tail, or null.
  std::shared_ptr<const Entry> find(const Key& key) const {
    std::lock_guard lock(mutex_);
    const auto it = entries_.find(key);
    return it == entries_.end() ? nullptr : it->second;
  }
  /// The current version of every tail, ordered by (model id, split): for listings (model
  /// metadata, metrics).
  std::vector<std::shared_ptr<const Entry>> entries() const {
    std::lock_guard lock(mutex_);
    std::vector<std::shared_ptr<const Entry>> out;
    out.reserve(entries_.size());
    for (const auto& kv : entries_) out.push_back(kv.second);
    return out;
  }
  /// True while no tail is registered.
  bool empty() const {
    std::lock_guard lock(mutex_);
    return entries_.empty();
  }

 private:
  void publish(std::shared_ptr<Entry> e) {
    std::lock_guard lock(mutex_);
    e->generation = ++generation_;
    Key key{e->id.model_id, e->id.split};
    if (!e->metrics) {  // a new registration: the counters of the tail it replaces, if any
      const auto it = entries_.find(key);
      e->metrics = it != entries_.end() ? it->second->metrics : std::make_shared<ModelMetrics>();
    }
    entries_[std::move(key)] = std::move(e);
  }

  mutable std::mutex mutex_;
  std::map<Key, std::shared_ptr<const Entry>> entries_;
  std::uint64_t generation_ = 0;
};

}  // namespace edgesplit
