// edgesplit/quant/quantizer.hpp - a configured quantizer: calibrate on data, then (de)quantize.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "edgesplit/core/tensor.hpp"
#include "edgesplit/quant/calibration.hpp"
#include "edgesplit/quant/quant_params.hpp"
#include "edgesplit/quant/quantize.hpp"

namespace edgesplit {

/// One scale for the whole tensor, or one per index of a channel axis.
enum class Granularity : std::uint8_t { per_tensor, per_channel };

/// What to quantize to and how to calibrate.
struct QuantConfig {
  int bits = 8;                                        ///< 8, 4 or 2
  Granularity granularity = Granularity::per_tensor;  ///< one scale per tensor or per channel
  std::size_t axis = 1;  ///< channel axis when per channel (1: the features of {batch, features})
  bool symmetric = false;                              ///< zero point 0, range +-max|x|
  Calibration calibration{};  ///< how the range is chosen
};

/// errc::invalid_argument unless the bits are 8, 4 or 2, the granularity is known and the axis
/// is within the largest rank.
inline void validate(const QuantConfig& c) {
  if (!valid_quant_bits(c.bits))
    fail(errc::invalid_argument, "quantization bits must be 8, 4 or 2, got " + std::to_string(c.bits));
  if (c.granularity != Granularity::per_tensor && c.granularity != Granularity::per_channel)
    fail(errc::invalid_argument, "unknown quantization granularity");
  if (c.granularity == Granularity::per_channel && c.axis >= Shape::max_rank)
    fail(errc::invalid_argument, "channel axis " + std::to_string(c.axis) + " past the largest rank");
  validate(c.calibration);
}

/// Holds a configuration and the parameters calibrated from data. `calibrate` reuses its working
/// storage, so calibrating every frame (as wire::FeatureEncoder does) allocates nothing in steady state.
class Quantizer {
 public:
  /// errc::invalid_argument for bits other than 8, 4, 2 or an invalid calibration.
  explicit Quantizer(QuantConfig config = {}) : config_(config) {
    validate(config_);
    params_.bits = config_.bits;
  }

  const QuantConfig& config() const noexcept { return config_; }  ///< the configuration
  bool calibrated() const noexcept { return calibrated_; }  ///< true once calibrate() or set_params() has run
  /// The parameters of the latest `calibrate` or `set_params`.
  const QuantParams& params() const {
    if (!calibrated_) fail(errc::invalid_argument, "Quantizer used before calibrate() or set_params()");
    return params_;
  }
  /// Uses parameters calibrated elsewhere (their bits must match the configuration).
  void set_params(QuantParams p) {
    if (p.bits != config_.bits)
      fail(errc::invalid_argument, "parameters have " + std::to_string(p.bits) + " bits, the quantizer " +
                                       std::to_string(config_.bits));
    params_ = std::move(p);
    calibrated_ = true;
  }

  /// Chooses parameters covering `sample` by the configured method (per channel: each channel
  /// from its own values) and returns them. Non-finite values are refused (errc::invalid_argument).
  const QuantParams& calibrate(TensorView<const float> sample) {
    const Shape& s = sample.shape();
    if (s.count() == 0) fail(errc::invalid_argument, "calibration needs a non-empty tensor");
    const bool per_channel = config_.granularity == Granularity::per_channel;
    const int axis = per_channel ? static_cast<int>(config_.axis) : per_tensor;
    const ChannelLayout l = channel_layout(s, axis);
    params_.axis = axis;
    params_.bits = config_.bits;
    params_.scale.resize(l.channels);
    params_.zero_point.resize(l.channels);
    const std::span<const float> all = sample.span();
    if (!per_channel) {
      store(0, calibrate_range(all, config_.calibration, config_.bits, config_.symmetric, scratch_));
    } else if (config_.calibration.method == CalibrationMethod::min_max) {
      (void)finite_min_max(all.data(), all.size());  // refuses NaN and infinities, once
      lo_.assign(l.channels, std::numeric_limits<float>::infinity());
      hi_.assign(l.channels, -std::numeric_limits<float>::infinity());
      for (std::size_t o = 0; o < l.outer; ++o)
        for (std::size_t c = 0; c < l.channels; ++c) {
          const float* run = all.data() + (o * l.channels + c) * l.inner;
          float lo = lo_[c], hi = hi_[c];
          for (std::size_t i = 0; i < l.inner; ++i) {
            lo = std::min(lo, run[i]);
            hi = std::max(hi, run[i]);
          }
          lo_[c] = lo;
          hi_[c] = hi;
        }
      for (std::size_t c = 0; c < l.channels; ++c) store(c, {lo_[c], hi_[c]});
    } else {
      for (std::size_t c = 0; c < l.channels; ++c) {
        gather_.clear();
        for (std::size_t o = 0; o < l.outer; ++o) {
          const float* run = all.data() + (o * l.channels + c) * l.inner;
          gather_.insert(gather_.end(), run, run + l.inner);
        }
        store(c, calibrate_range(gather_, config_.calibration, config_.bits, config_.symmetric, scratch_));
      }
    }
    calibrated_ = true;
    return params_;
  }

  /// Quantizes `x` into `q` (same shape) with the current parameters.
  void quantize(TensorView<const float> x, TensorView<std::int8_t> q) const { edgesplit::quantize(x, params(), q); }
  /// Dequantizes `q` into `x` (same shape) with the current parameters.
  void dequantize(TensorView<const std::int8_t> q, TensorView<float> x) const {
    edgesplit::dequantize(q, params(), x);
  }

 private:
  void store(std::size_t c, Range r) {
    const AffineParams a = params_from_range(r, config_.bits, config_.symmetric);
    params_.scale[c] = a.scale;
    params_.zero_point[c] = a.zero_point;
  }

  QuantConfig config_;
  QuantParams params_;
  bool calibrated_ = false;
  std::vector<float> scratch_, gather_, lo_, hi_;
};

}  // namespace edgesplit
