// edgesplit/plan/ground_truth.hpp - run one (split, codec) end to end over a simulated link and
// measure its latency: the reference the planner's predictions are checked against.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/nn/sequential.hpp"
#include "edgesplit/plan/candidates.hpp"
#include "edgesplit/plan/profile.hpp"
#include "edgesplit/transport/clock.hpp"
#include "edgesplit/transport/inproc.hpp"
#include "edgesplit/transport/simulated_link.hpp"
#include "edgesplit/wire/feature_codec.hpp"
#include "edgesplit/wire/protocol.hpp"

namespace edgesplit {

/// How measure_end_to_end runs and charges one (k, codec).
struct GroundTruthOptions {
  std::size_t requests = 15;  ///< single-sample requests per (k, codec); medians are reported
  std::size_t warmup = 2;     ///< requests run first and not counted
  /// How the edge's compute (head and encode) is charged. With `edge_profile` null it is
  /// measured on this machine and multiplied by `edge_slowdown` (a scaled board: the same
  /// factor as `scaled(profile, factor)`); with a profile, the head costs what the profile says
  /// and the encode is measured x `edge_slowdown` (an emulated board, fully deterministic
  /// whenever the network dominates).
  double edge_slowdown = 1;
  const DeviceProfile* edge_profile = nullptr;  ///< a scaled or analytic edge profile, or null to measure
  /// With an edge profile, also charge the encode from these candidates' encode_seconds (looked
  /// up by codec name; scale them first with scale_codec_costs) instead of measuring it.
  const std::vector<CodecCandidate>* edge_codec_costs = nullptr;
  std::string model_id = "model";  ///< model id in the frames
};

/// Medians over the requests of one (k, codec), seconds.
struct Measured {
  std::size_t split = 0;  ///< k: layers [0, k) on the edge
  std::string codec;  ///< codec name, "-" for all-edge
  ///@{
  /// Medians of each part: edge compute, encoding, uplink, cloud, downlink, decoding the reply.
  double edge_s = 0, encode_s = 0, uplink_s = 0, cloud_s = 0, downlink_s = 0, decode_reply_s = 0;
  ///@}
  double latency_s = 0;  ///< median end-to-end latency (not the sum of the medians)
  double bytes = 0;      ///< INFER frame bytes (mean)
};

/// Runs (split `k`, codec `spec`) of `model` end to end, one single-sample request at a time, in
/// one thread, over a SimulatedLink pair (`up`, `down`) on a VirtualClock:
///   edge: head forward + encode INFER (real time, charged to the virtual clock as configured)
///   -> link up (virtual time: serialization + latency, exact) -> cloud: decode + tail + encode
///   RESPONSE (real time, charged) -> link down (virtual) -> edge: decode the reply (charged).
/// k = L is all-edge: the whole model on the edge, nothing sent. Inputs are the rows of `inputs`,
/// cycled. The clock therefore reads exactly what a board with that compute would see.
inline Measured measure_end_to_end(const Sequential<float>& model, std::size_t k, const CodecSpec& spec,
                                   TensorView<const float> inputs, const LinkProfile& up, const LinkProfile& down,
                                   const GroundTruthOptions& opt = {}) {
  using steady = std::chrono::steady_clock;
  const std::size_t L = model.size(), n = inputs.shape().batch();
  if (k > L) fail(errc::out_of_range, "measure_end_to_end: split " + std::to_string(k) + " past the model");
  if (n == 0 || opt.requests == 0) fail(errc::invalid_argument, "measure_end_to_end: no inputs or no requests");
  if (!(opt.edge_slowdown > 0)) fail(errc::invalid_argument, "measure_end_to_end: edge_slowdown must be > 0");
  if (opt.edge_profile && opt.edge_profile->layer_count() != L)
    fail(errc::shape_mismatch, "measure_end_to_end: edge profile and model disagree on the layer count");

  auto [head, tail] = model.split(k);
  VirtualClock vclock;
  auto [edge_end, cloud_end] = InProcTransport::make_pair();
  SimulatedLink<InProcTransport> edge_link(std::move(edge_end), up, 1, vclock);
  SimulatedLink<InProcTransport> cloud_link(std::move(cloud_end), down, 2, vclock);
  FeatureCodec enc(spec.config), dec(spec.config);
  CodecConfig raw;
  raw.bits = wire::raw_f32_bits;
  FeatureCodec resp_enc(raw), resp_dec(raw);
  const auto secs = [](steady::duration d) { return std::chrono::duration<double>(d).count(); };
  const auto charge = [&](double s) { vclock.advance_by(LinkProfile::seconds_to_duration(s)); };
  const double profile_head = opt.edge_profile ? opt.edge_profile->seconds(0, k, 1) : 0;
  const CodecCandidate* encode_cost = nullptr;
  if (opt.edge_profile && opt.edge_codec_costs && k < L) {
    for (const auto& c : *opt.edge_codec_costs)
      if (c.name == spec.name) encode_cost = &c;
    if (!encode_cost || encode_cost->encode_seconds.size() != L + 1)
      fail(errc::invalid_argument, "measure_end_to_end: no encode costs for codec " + spec.name);
  }

  std::vector<double> edge_t, enc_t, up_t, cloud_t, down_t, dreply_t, total_t;
  double bytes = 0;
  std::vector<std::byte> frame, reply;
  Tensor<float> features, y;
  Message msg;
  const wire::InferRequest req{opt.model_id, static_cast<std::uint16_t>(std::min<std::size_t>(k, UINT16_MAX)), 0};
  for (std::size_t r = 0; r < opt.warmup + opt.requests; ++r) {
    const TensorView<const float> x = inputs.batch(r % n, r % n + 1);
    const Clock::time_point start = vclock.now();
    const auto t0 = steady::now();
    const TensorView<const float> h = head.forward(x);
    const auto t1 = steady::now();
    double edge_s = opt.edge_profile ? profile_head : secs(t1 - t0) * opt.edge_slowdown;
    double enc_s = 0, up_s = 0, cloud_s = 0, down_s = 0, dreply_s = 0;
    if (k < L) {
      wire::encode_infer(frame, static_cast<std::uint32_t>(r + 1), req, enc, h);
      enc_s = encode_cost ? encode_cost->encode_seconds[k] : secs(steady::now() - t1) * opt.edge_slowdown;
      charge(edge_s + enc_s);
      const Clock::time_point sent = vclock.now();
      if (!edge_link.send(frame)) fail(errc::unreachable, "measure_end_to_end: the link lost a request (use loss 0)");
      if (!cloud_link.receive(no_deadline, msg)) fail(errc::timeout, "measure_end_to_end: no request arrived");
      up_s = std::chrono::duration<double>(vclock.now() - sent).count();
      const auto c0 = steady::now();
      (void)wire::decode_infer(msg.view(), dec, features);
      const Tensor<float> out = tail.predict(features.cview());
      wire::encode_response(reply, static_cast<std::uint32_t>(r + 1), wire::InferResponse{}, resp_enc, out.cview());
      cloud_s = secs(steady::now() - c0);
      charge(cloud_s);
      const Clock::time_point replied = vclock.now();
      if (!cloud_link.send(reply)) fail(errc::unreachable, "measure_end_to_end: the link lost a reply (use loss 0)");
      if (!edge_link.receive(no_deadline, msg)) fail(errc::timeout, "measure_end_to_end: no reply arrived");
      down_s = std::chrono::duration<double>(vclock.now() - replied).count();
      const auto d0 = steady::now();
      (void)wire::decode_response(msg.view(), resp_dec, y);
      dreply_s = secs(steady::now() - d0) * opt.edge_slowdown;
      charge(dreply_s);
      bytes += static_cast<double>(frame.size());
    } else {
      charge(edge_s);
    }
    if (r < opt.warmup) continue;
    edge_t.push_back(edge_s);
    enc_t.push_back(enc_s);
    up_t.push_back(up_s);
    cloud_t.push_back(cloud_s);
    down_t.push_back(down_s);
    dreply_t.push_back(dreply_s);
    total_t.push_back(std::chrono::duration<double>(vclock.now() - start).count());
  }
  Measured m;
  m.split = k;
  m.codec = k < L ? spec.name : "-";
  m.edge_s = detail::median(edge_t);
  m.encode_s = detail::median(enc_t);
  m.uplink_s = detail::median(up_t);
  m.cloud_s = detail::median(cloud_t);
  m.downlink_s = detail::median(down_t);
  m.decode_reply_s = detail::median(dreply_t);
  m.latency_s = detail::median(total_t);
  m.bytes = k < L ? bytes / static_cast<double>(opt.warmup + opt.requests) : 0;
  return m;
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
