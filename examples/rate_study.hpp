// rate_study.hpp - what the examples' rate-and-accuracy studies share (docs/compression.md):
// tensors sent through real frames and decoded as the receiver decodes them, bytes counted whole;
// the baseline that sends the image itself; top-1 hits.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/wire/feature_codec.hpp>
#include <edgesplit/wire/protocol.hpp>

namespace edgesplit_examples {
using namespace edgesplit;

/// Whole-frame bytes sent for `samples` samples, without and with the zstd stage.
struct FrameBytes {
  std::size_t samples = 0, plain = 0, zstd = 0;

  double per_sample(bool with_zstd) const {
    return samples ? static_cast<double>(with_zstd ? zstd : plain) / static_cast<double>(samples) : 0.0;
  }
  FrameBytes& operator+=(const FrameBytes& o) {
    samples += o.samples;
    plain += o.plain;
    zstd += o.zstd;
    return *this;
  }
};

/// Sends `parts` (tensors of one batch N, batch first), `batch` samples per frame, part k through
/// `plain[k]` and again through `packed[k]` (the same codec with zstd), and decodes every frame as
/// the receiver does: without `request`, as TENSOR frames (one part); with it, as EdgeClient sends
/// a request: INFER for one part, INFER_TENSORS (`names`, one codec per tensor) for several. The
/// zstd frames must decode to the same floats as the plain ones (errc::corrupt_frame otherwise).
/// The decoded samples go side by side into `out`, {N, sum of the parts' per-sample sizes}: the
/// rows a GraphLayer tail reads.
inline FrameBytes send_frames(std::span<FeatureCodec> plain, std::span<FeatureCodec> packed,
                              std::span<const std::string> names, std::span<const TensorView<const float>> parts,
                              std::size_t batch, const std::optional<wire::InferRequest>& request, Tensor<float>& out) {
  if (parts.empty() || plain.size() < parts.size() || packed.size() < parts.size() || batch == 0)
    fail(errc::invalid_argument, "send_frames needs one plain and one zstd codec per part and a batch >= 1");
  if (!request && parts.size() != 1) fail(errc::invalid_argument, "a TENSOR frame carries one tensor");
  const std::size_t n = parts[0].shape().batch();
  std::size_t width = 0;
  for (const auto& p : parts) width += p.shape().features();
  out.resize(Shape{n, width});
  wire::FeatureDecoder decoder;
  std::vector<std::byte> frame;
  Tensor<float> back, back_z, scratch;
  std::vector<TensorView<const float>> views(parts.size());
  FrameBytes sent;
  sent.samples = n;
  // One frame through `codecs`, decoded into `to` as {samples, width}; returns its size.
  auto round_trip = [&](std::span<FeatureCodec> codecs, Tensor<float>& to) {
    if (!request) {
      codecs[0].encode(views[0], frame);
      decoder.decode(frame, to);
    } else if (parts.size() == 1) {
      wire::encode_infer(frame, 1, *request, codecs[0], views[0]);
      (void)wire::decode_infer(frame, decoder, to);
    } else {
      wire::encode_infer_tensors(frame, 1, *request, codecs, names, views);
      (void)wire::decode_infer_tensors(frame, decoder, scratch, to);
    }
    return frame.size();
  };
  for (std::size_t b = 0; b < n; b += batch) {
    const std::size_t e = std::min(n, b + batch);
    for (std::size_t k = 0; k < parts.size(); ++k) views[k] = parts[k].batch(b, e);
    sent.plain += round_trip(plain, back);
    sent.zstd += round_trip(packed, back_z);
    if (back.size() != (e - b) * width || !std::equal(back.data(), back.data() + back.size(), back_z.data()))
      fail(errc::corrupt_frame, "zstd changed the decoded features");
    std::copy_n(back.data(), back.size(), out.data() + b * width);
  }
  return sent;
}

/// Images with pixels in [0, 1] (samples in rows, any per-sample shape), `batch` per frame, at
/// `bits` per pixel (levels k / (2^bits - 1)), sent as the codec with parameters fixed to the range
/// [0, 1] sends them (8 bits: the uint8 pixels exactly); the images as received go into `out`
/// ({N, pixels}). 1 bit, which the wire format has no code for: pixels thresholded at 1/2 and
/// packed 8 to a byte by hand, counted as a frame of that data (the same frame without its 2-bit
/// data, plus the bitmap, through zstd or not). `request` as for send_frames.
inline FrameBytes send_images(int bits, TensorView<const float> x, std::size_t batch,
                              const std::optional<wire::InferRequest>& request, Tensor<float>& out) {
  const int code_bits = bits == 1 ? 2 : bits;
  CodecConfig cfg;
  cfg.bits = code_bits;
  CodecConfig cfg_zstd = cfg;
  cfg_zstd.lossless = wire::Lossless::zstd;
  FeatureCodec codecs[2] = {FeatureCodec(cfg), FeatureCodec(cfg_zstd)};
  Tensor<float> range(Shape{1, 2});
  range[0] = 0;
  range[1] = 1;  // min-max over {0, 1}: scale 1 / (2^bits - 1), zero at the lowest code
  codecs[1].set_params(codecs[0].calibrate(range.cview()));
  if (bits != 1) return send_frames(std::span(codecs, 1), std::span(codecs + 1, 1), {}, std::span(&x, 1), batch, request, out);

  const std::size_t n = x.shape().batch(), f = x.shape().features();
  out.resize(Shape{n, f});
  wire::ZstdStage zstd;
  std::vector<std::byte> bitmap, z, frame;
  FrameBytes sent;
  sent.samples = n;
  for (std::size_t b = 0; b < n; b += batch) {
    const std::size_t e = std::min(n, b + batch), count = (e - b) * f;
    const TensorView<const float> xb = x.batch(b, e);
    if (request) wire::encode_infer(frame, 1, *request, codecs[0], xb);
    else codecs[0].encode(xb, frame);
    const std::size_t header = frame.size() - wire::tensor_data_bytes(count, 2);
    bitmap.assign((count + 7) / 8, std::byte{0});
    for (std::size_t i = 0; i < count; ++i) {
      const bool on = x.data()[b * f + i] >= 0.5f;
      out.data()[b * f + i] = on ? 1.0f : 0.0f;
      if (on) bitmap[i / 8] |= std::byte{1} << (i % 8);
    }
    z.resize(wire::ZstdStage::bound(bitmap.size()));
    sent.plain += header + bitmap.size();
    sent.zstd += header + zstd.compress(bitmap, z, 3);
  }
  return sent;
}

/// Rows of `logits` whose largest score is at the label `labels[r]`.
inline std::size_t top1_hits(TensorView<const float> logits, const std::int32_t* labels) {
  const std::size_t n = logits.shape().batch(), k = logits.shape().features();
  std::size_t hits = 0;
  for (std::size_t r = 0; r < n; ++r) {
    const float* p = logits.data() + r * k;
    hits += static_cast<std::int32_t>(std::max_element(p, p + k) - p) == labels[r];
  }
  return hits;
}

/// Top-1 accuracy of `m` (in inference mode) on inputs `x` against `labels`, in points, run 1,000
/// samples at a time.
inline double accuracy(Sequential<float>& m, TensorView<const float> x, const std::vector<std::int32_t>& labels) {
  m.set_training(false);
  std::size_t hits = 0;
  const std::size_t n = x.shape().batch();
  for (std::size_t b = 0; b < n; b += 1000) {
    const std::size_t e = std::min(n, b + 1000);
    hits += top1_hits(m.forward(x.batch(b, e)), labels.data() + b);
  }
  return 100.0 * static_cast<double>(hits) / static_cast<double>(n);
}

}  // namespace edgesplit_examples
