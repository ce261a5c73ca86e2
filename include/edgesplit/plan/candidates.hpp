// edgesplit/plan/candidates.hpp - measure what each codec costs at each split point of a model:
// the CodecCandidate data the planner needs (frame bytes, accuracy drop, encode/decode time).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/nn/sequential.hpp"
#include "edgesplit/plan/link.hpp"
#include "edgesplit/plan/planner.hpp"
#include "edgesplit/transport/simulated_link.hpp"
#include "edgesplit/wire/feature_codec.hpp"
#include "edgesplit/wire/protocol.hpp"

namespace edgesplit {

/// A named codec configuration to try at every split point.
struct CodecSpec {
  std::string name;  ///< e.g. "int8+zstd"
  CodecConfig config;  ///< the codec settings
};

/// The standard candidate set: fp32, int8, int4, int2 (per tensor, calibrated on each frame, as
/// the EdgeClient sends them), each without and, when zstd is built in, with the zstd stage.
inline std::vector<CodecSpec> standard_codecs(bool with_zstd = wire::has_zstd) {
  std::vector<CodecSpec> out;
  for (int bits : {32, 8, 4, 2}) {
    CodecConfig c;
    c.bits = bits;
    const std::string base = bits == 32 ? "fp32" : "int" + std::to_string(bits);
    out.push_back({base, c});
    if (with_zstd) {
      c.lossless = wire::Lossless::zstd;
      out.push_back({base + "+zstd", c});
    }
  }
  return out;
}

/// The codec spec named `name` in `specs` (errc::invalid_argument when absent).
inline const CodecSpec& find_codec(const std::vector<CodecSpec>& specs, const std::string& name) {
  for (const auto& s : specs)
    if (s.name == name) return s;
  fail(errc::invalid_argument, "no codec named '" + name + "'");
}

/// How measure_candidates frames and times the candidates.
struct CandidateOptions {
  /// Model id written into the INFER frames whose size is measured: the frame the runtime
  /// really sends, request fields included.
  std::string model_id = "model";
  /// Encode and decode times are the median over this many single-sample frames (the first
  /// ones of the calibration set).
  std::size_t timing_samples = 64;
};

/// Everything measured for a model: one candidate per codec, the float model's accuracy, and
/// the RESPONSE frame (fp32 outputs of one sample) the cloud sends back.
struct CandidateSet {
  std::vector<CodecCandidate> codecs;  ///< one per codec spec, in order
  double float_accuracy = 0;         ///< percent, on the calibration set
  double response_bytes = 0;         ///< RESPONSE frame bytes for one sample
  std::size_t samples = 0;  ///< held-out samples measured
};

namespace detail {
inline std::size_t argmax_row(const float* p, std::size_t n) {
  return static_cast<std::size_t>(std::max_element(p, p + n) - p);
}
inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  return v[v.size() / 2];
}
inline double accuracy_percent(const Tensor<float>& logits, std::span<const std::int32_t> labels) {
  const std::size_t n = labels.size(), c = logits.shape().count() / std::max<std::size_t>(n, 1);
  std::size_t correct = 0;
  for (std::size_t i = 0; i < n; ++i) correct += argmax_row(logits.data() + i * c, c) == static_cast<std::size_t>(labels[i]);
  return 100.0 * static_cast<double>(correct) / static_cast<double>(n);
}
}  // namespace detail

/// Measures every (split k, codec) of `model` on held-out calibration data (`inputs` {n, features},
/// one label per row): at each k = 0..L-1 each sample's features are sent as their own
/// single-sample INFER frame (as a batch-1 request would be), decoded, and run through the tail.
///   bytes_per_sample[k]  mean INFER frame size;
///   accuracy_drop[k]     float top-1 accuracy minus the top-1 accuracy through the codec, in points
///                        (negative when quantization happens to help);
///   encode/decode_seconds[k]  median wall time of one frame's encode / decode on this machine.
/// Entries at k = L (all edge, nothing sent) are 0.
inline CandidateSet measure_candidates(const Sequential<float>& model, TensorView<const float> inputs,
                                       std::span<const std::int32_t> labels, const std::vector<CodecSpec>& specs,
                                       const CandidateOptions& opt = {}) {
  using clock = std::chrono::steady_clock;
  const std::size_t n = inputs.shape().batch(), L = model.size();
  if (n == 0 || labels.size() != n)
    fail(errc::invalid_argument, "measure_candidates: need one label per calibration row (" + std::to_string(n) +
                                     " rows, " + std::to_string(labels.size()) + " labels)");
  if (L == 0) fail(errc::invalid_argument, "measure_candidates: empty model");
  if (specs.empty()) fail(errc::invalid_argument, "measure_candidates: no codecs");
  const auto secs = [](clock::duration d) { return std::chrono::duration<double>(d).count(); };

  CandidateSet out;
  out.samples = n;
  Sequential<float> m = model;
  const Tensor<float> reference = m.predict(inputs);
  out.float_accuracy = detail::accuracy_percent(reference, labels);
  {
    CodecConfig rc;
    rc.bits = wire::raw_f32_bits;
    wire::FeatureEncoder resp_codec(rc);
    std::vector<std::byte> frame;
    wire::encode_response(frame, 1, wire::InferResponse{}, resp_codec, reference.cview().batch(0, 1));
    out.response_bytes = static_cast<double>(frame.size());
  }
  for (const auto& s : specs) {
    CodecCandidate c;
    c.name = s.name;
    c.bytes_per_sample.assign(L + 1, 0);
    c.accuracy_drop.assign(L + 1, 0);
    c.encode_seconds.assign(L + 1, 0);
    c.decode_seconds.assign(L + 1, 0);
    out.codecs.push_back(std::move(c));
  }

  Tensor<float> features(inputs.shape());  // activations entering layer k, for every sample
  copy(inputs, features.view());
  std::vector<std::byte> frame;
  Tensor<float> decoded_row;
  std::vector<double> enc_t, dec_t;
  for (std::size_t k = 0; k < L; ++k) {
    auto [head, tail] = m.split(k);
    (void)head;
    const Shape row_shape = features.cview().batch(0, 1).shape();
    for (std::size_t ci = 0; ci < specs.size(); ++ci) {
      wire::FeatureEncoder enc(specs[ci].config);
      wire::FeatureDecoder dec(specs[ci].config.limits);
      const wire::InferRequest req{opt.model_id, static_cast<std::uint16_t>(k), 0};
      Tensor<float> received(features.shape());
      double bytes = 0;
      enc_t.clear();
      dec_t.clear();
      for (std::size_t i = 0; i < n; ++i) {
        const auto t0 = clock::now();
        wire::encode_infer(frame, static_cast<std::uint32_t>(i + 1), req, enc, features.cview().batch(i, i + 1));
        const auto t1 = clock::now();
        (void)wire::decode_infer(frame, dec, decoded_row);
        const auto t2 = clock::now();
        if (decoded_row.shape() != row_shape) fail(errc::shape_mismatch, "codec changed the shape of a feature row");
        std::copy(decoded_row.span().begin(), decoded_row.span().end(), received.data() + i * row_shape.count());
        bytes += static_cast<double>(frame.size());
        if (i < opt.timing_samples) {
          enc_t.push_back(secs(t1 - t0));
          dec_t.push_back(secs(t2 - t1));
        }
      }
      const Tensor<float> logits = tail.predict(received.cview());
      CodecCandidate& c = out.codecs[ci];
      c.bytes_per_sample[k] = bytes / static_cast<double>(n);
      c.accuracy_drop[k] = out.float_accuracy - detail::accuracy_percent(logits, labels);
      c.encode_seconds[k] = detail::median(enc_t);
      c.decode_seconds[k] = detail::median(dec_t);
    }
    Tensor<float> next(m[k].output_shape(features.shape()));
    m[k].forward(features.cview(), next.view());
    features = std::move(next);
  }
  return out;
}

/// The candidates' encode times multiplied by `edge_factor` (a slower edge board, as
/// `scaled(profile, factor, ...)` does for layers) and decode times by `cloud_factor`.
inline std::vector<CodecCandidate> scale_codec_costs(std::vector<CodecCandidate> c, double edge_factor,
                                                     double cloud_factor = 1) {
  if (!(edge_factor > 0) || !(cloud_factor > 0)) fail(errc::invalid_argument, "scale_codec_costs: factors must be > 0");
  for (auto& x : c) {
    for (double& v : x.encode_seconds) v *= edge_factor;
    for (double& v : x.decode_seconds) v *= cloud_factor;
  }
  return c;
}

/// The planner's view of a SimulatedLink pair: `up` shapes what the edge sends, `down` what the
/// cloud sends. A SimulatedLink delivers a message of B bytes B*8/bandwidth after it is given
/// (serialization) plus its one-way `latency`; so the round trip of a request is
///   up serialization + up latency + (cloud) + down serialization + down latency,
/// which is the planner's transfer + RTT + response with RTT = up.latency + down.latency and the
/// serialization in the bandwidth terms. An unlimited direction (bandwidth 0) becomes 1 Pbit/s.
/// Jitter averages out (it is symmetric around the latency); loss is taken from the uplink.
/// Trace-driven profiles have no single bandwidth: errc::invalid_argument.
inline LinkModel link_model(const LinkProfile& up, const LinkProfile& down) {
  if (up.trace || down.trace) fail(errc::invalid_argument, "link_model: a trace-driven link has no single bandwidth");
  up.validate();
  down.validate();
  constexpr double unlimited = 1e15;
  LinkModel m;
  m.name = up.name == down.name ? up.name : up.name + "/" + down.name;
  m.uplink_bps = up.bandwidth_bps > 0 ? up.bandwidth_bps : unlimited;
  m.downlink_bps = down.bandwidth_bps > 0 ? down.bandwidth_bps : unlimited;
  m.rtt_s = std::chrono::duration<double>(up.latency + down.latency).count();
  m.loss = up.loss < 1 ? up.loss : 0;
  return m;
}
/// The same profile both ways (as the presets are used).
inline LinkModel link_model(const LinkProfile& both) { return link_model(both, both); }

}  // namespace edgesplit
