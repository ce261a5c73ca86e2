// edgesplit/runtime/deployment.hpp - one value for what the edge and the cloud must agree on:
// the model's id and version, where it is cut, and how its features cross the link.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/plan/candidates.hpp"
#include "edgesplit/plan/planner.hpp"
#include "edgesplit/wire/feature_codec.hpp"
#include "edgesplit/wire/protocol.hpp"

namespace edgesplit {

/// A split model's deployment: which model, which version, where it is cut, and how the features
/// that cross the cut are encoded. The split point is written once, here, and every side reads
/// it: `cut()` splits the model, `CloudServer::register_model(deployment, tail)` serves the tail,
/// and `EdgeOptions(deployment)` (or an EdgeClient given the deployment) asks for that tail with
/// that codec. `to_deployment()` makes one from the planner's choice.
///
///     Deployment d("my-model", 2);          // layers [0, 2) on the edge, [2, L) in the cloud
///     d.codec.bits = 8;                     // int8 features on the link
///     auto [head, tail] = d.cut(model);
///     server.register_model(d, tail);
///     EdgeClient client(head, connect, d);
struct Deployment {
  std::string model_id;      ///< which model the cloud serves (HELLO and INFER name it)
  std::size_t split = 0;     ///< k: layers (or graph nodes) [0, k) on the edge, [k, L) in the cloud
  CodecConfig codec{};       ///< how the edge encodes the features it sends (the cloud reads any)
  std::uint32_t major = 1;   ///< major version: edge and cloud must match
  std::uint32_t minor = 0;   ///< minor version: informational (weight updates raise it)

  /// An empty deployment; give it a model id and split before use.
  Deployment() = default;
  /// Model `model_id` cut at `split`, its features sent as `codec` (int8 per tensor by default),
  /// version major.minor.
  Deployment(std::string model_id, std::size_t split, CodecConfig codec = {}, std::uint32_t major = 1,
             std::uint32_t minor = 0)
      : model_id(std::move(model_id)), split(split), codec(std::move(codec)), major(major), minor(minor) {}

  /// The identity the protocol carries (errc::invalid_argument for an empty model id or a split
  /// the protocol's 16-bit field cannot hold).
  wire::ModelIdentity identity() const {
    if (model_id.empty()) fail(errc::invalid_argument, "deployment: empty model id");
    if (split > std::numeric_limits<std::uint16_t>::max())
      fail(errc::invalid_argument, "deployment: split " + std::to_string(split) + " does not fit the protocol (at most 65535)");
    return {model_id, major, minor, static_cast<std::uint16_t>(split)};
  }

  /// {head, tail} of `model` (a Sequential or a Graph) cut at this deployment's split: the head
  /// for the EdgeClient, the tail for CloudServer::register_model. errc::out_of_range when the
  /// split is past the model's end.
  template <class Model>
  auto cut(const Model& model) const {
    return model.split(split);
  }
};

/// The deployment the planner chose: `plan`'s split and the codec it names, looked up in `codecs`
/// (the specs its candidates were measured with). errc::invalid_argument when the plan runs the
/// whole model on the edge (nothing to deploy in the cloud: run the model locally) or names a
/// codec `codecs` does not hold.
inline Deployment to_deployment(const Plan& plan, std::string model_id, const std::vector<CodecSpec>& codecs,
                                std::uint32_t major = 1) {
  if (plan.codec == "-")
    fail(errc::invalid_argument, "deployment: the plan runs the whole model on the edge (split " +
                                     std::to_string(plan.split) + "): there is no tail to serve");
  return Deployment(std::move(model_id), plan.split, find_codec(codecs, plan.codec).config, major);
}

}  // namespace edgesplit
