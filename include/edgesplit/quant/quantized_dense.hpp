// edgesplit/quant/quantized_dense.hpp - int8 Dense for edge inference, and quantize_model.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "edgesplit/core/tensor.hpp"
#include "edgesplit/nn/dense.hpp"
#include "edgesplit/nn/sequential.hpp"
#include "edgesplit/quant/calibration.hpp"
#include "edgesplit/quant/int8_kernels.hpp"
#include "edgesplit/quant/quantizer.hpp"

namespace edgesplit {

/// A Dense layer computed in integers: y = s_x * s_w[o] * sum_i w_q[o,i] * (x_q[i] - z_x) + b[o].
///
/// - Weights: int8, symmetric per output channel (row o has scale s_w[o] = max|W[o,:]| / 127,
///   codes in [-127, 127]), stored row-major {out, in} like Dense, 4x fewer bytes: batch 1 is
///   a GEMV that streams the weights, so this is where int8 pays.
/// - Input: quantized per tensor to 8 bits with the (asymmetric) parameters calibrated on data
///   (`quantize_model` does it); values outside the calibrated range saturate.
/// - Accumulation: int32, exact. |x_q - z_x| <= 255 and |w_q| <= 127, so a sum of `in` terms
///   stays below in * 32385, which fits int32 for in <= 65536 (larger layers are refused).
/// - Output: dequantized to float (the bias added in float), so the layer is a Layer<float>
///   and sits in a Sequential beside float layers.
/// Inference only: backward throws errc::unsupported.
class QuantizedDense final : public Layer<float> {
 public:
  /// The largest input width whose int32 sums cannot overflow (in x 255 x 127 < 2^31).
  static constexpr std::size_t max_in_features = 65536;

  /// Quantizes `dense`'s weights; `input` must be per-tensor 8-bit parameters for the inputs.
  QuantizedDense(const Dense<float>& dense, const QuantParams& input)
      : in_(dense.in_features()), out_(dense.out_features()) {
    if (in_ > max_in_features)
      fail(errc::too_large, "QuantizedDense takes at most " + std::to_string(max_in_features) +
                                " inputs (int32 accumulation bound), got " + std::to_string(in_));
    if (input.per_channel() || input.bits != 8)
      fail(errc::invalid_argument, "QuantizedDense needs per-tensor 8-bit input parameters");
    validate(input, Shape{in_});
    input_ = input;
    weight_.resize(Shape{out_, in_});
    weight_scale_.resize(out_);
    bias_.assign(dense.bias().data(), dense.bias().data() + out_);
    const float* w = dense.weight().data();
    for (std::size_t o = 0; o < out_; ++o) {
      float amax = 0;
      for (std::size_t i = 0; i < in_; ++i) amax = std::max(amax, std::abs(w[o * in_ + i]));
      weight_scale_[o] = params_from_range({-amax, amax}, 8, true).scale;
      kernels::ScalarQuantKernels::quantize_run(w + o * in_, weight_.data() + o * in_, in_, weight_scale_[o], 0, 8);
    }
    combined_scale_.resize(out_);
    for (std::size_t o = 0; o < out_; ++o) combined_scale_[o] = input_.scale[0] * weight_scale_[o];
  }

  std::string_view name() const noexcept override { return "QuantizedDense"; }
  std::string describe() const override {
    return "QuantizedDense(" + std::to_string(in_) + " -> " + std::to_string(out_) + ", int8)";
  }
  std::unique_ptr<Layer<float>> clone() const override { return std::make_unique<QuantizedDense>(*this); }

  std::size_t in_features() const noexcept { return in_; }  ///< input width
  std::size_t out_features() const noexcept { return out_; }  ///< output width
  /// int8 weight codes, row-major {out, in}.
  const Tensor<std::int8_t>& weight() const noexcept { return weight_; }
  /// Per output row: the float weight is code x scale.
  const std::vector<float>& weight_scale() const noexcept { return weight_scale_; }
  const std::vector<float>& bias() const noexcept { return bias_; }  ///< float bias, {out}
  const QuantParams& input_params() const noexcept { return input_; }  ///< the calibrated input quantization

  /// The same computation through the scalar reference kernels (for tests): bit-identical output.
  void forward_scalar(TensorView<const float> in, TensorView<float> out) {
    if (!(out.shape() == output_shape(in.shape())))
      fail(errc::shape_mismatch, describe() + " output has shape " + out.shape().str());
    run<kernels::ScalarQuantKernels>(in, out);
  }

 protected:
  void check_input(const Shape& in) const override {
    Layer<float>::check_input(in);
    if (in.features() != in_)
      fail(errc::shape_mismatch, describe() + " got input " + in.str() + " with " +
                                     std::to_string(in.features()) + " features");
  }
  Shape output_shape_impl(const Shape& in) const override { return Shape{in.batch(), out_}; }
  std::uint64_t flops_impl(const Shape& in) const override {
    return static_cast<std::uint64_t>(in.batch()) * out_ * (2 * in_ + 1);
  }
  /// Quantizes the input, runs the exact int32 product and rescales into float outputs.
  void forward_impl(TensorView<const float> in, TensorView<float> out) override {
    run<kernels::NativeQuantKernels>(in, out);
  }
  /// Always errc::unsupported: this layer is for inference only.
  void backward_impl(TensorView<const float>, TensorView<const float>, TensorView<const float>,
                     TensorView<float>) override {
    fail(errc::unsupported, "QuantizedDense is inference-only: train the float model, then quantize it");
  }

 private:
  template <class K>
  void run(TensorView<const float> in, TensorView<float> out) {
    x_codes_.resize(in_);  // allocates only the first time
    x_centered_.resize(in_);
    acc_.resize(out_);
    const float sx = input_.scale[0];
    const std::int32_t zx = input_.zero_point[0];
    const std::size_t batch = in.shape().batch();
    for (std::size_t b = 0; b < batch; ++b) {
      K::quantize_run(in.data() + b * in_, x_codes_.data(), in_, sx, zx, 8);
      for (std::size_t i = 0; i < in_; ++i) x_centered_[i] = static_cast<std::int16_t>(x_codes_[i] - zx);
      K::matvec(weight_.data(), x_centered_.data(), acc_.data(), out_, in_);
      float* y = out.data() + b * out_;
      for (std::size_t o = 0; o < out_; ++o) y[o] = static_cast<float>(acc_[o]) * combined_scale_[o] + bias_[o];
    }
  }

  std::size_t in_, out_;
  QuantParams input_;
  Tensor<std::int8_t> weight_;
  std::vector<float> weight_scale_, combined_scale_, bias_;
  std::vector<std::int8_t> x_codes_;
  std::vector<std::int16_t> x_centered_;
  std::vector<std::int32_t> acc_;
};

/// An int8 copy of `model` for edge inference: every Dense<float> becomes a QuantizedDense whose
/// input parameters are calibrated (per tensor, 8 bits, asymmetric, by `calibration`) on the
/// activations that `calibration_batch` produces at that layer in the float model; other layers
/// are copied. `model` is not changed.
inline Sequential<float> quantize_model(const Sequential<float>& model, TensorView<const float> calibration_batch,
                                        Calibration calibration = {}) {
  Sequential<float> reference(model);  // forward() is not const: run a copy
  Sequential<float> quantized;
  Quantizer input_quantizer(QuantConfig{8, Granularity::per_tensor, 1, false, calibration});
  Tensor<float> ping, pong;
  TensorView<const float> x = calibration_batch;
  for (std::size_t i = 0; i < reference.size(); ++i) {
    Layer<float>& layer = reference[i];
    if (const auto* dense = dynamic_cast<const Dense<float>*>(&layer))
      quantized.add(std::make_unique<QuantizedDense>(*dense, input_quantizer.calibrate(x)));
    else
      quantized.add(layer.clone());
    Tensor<float>& y = i % 2 ? ping : pong;
    y.resize(layer.output_shape(x.shape()));
    layer.forward(x, y.view());
    x = y.cview();
  }
  return quantized;
}

}  // namespace edgesplit
