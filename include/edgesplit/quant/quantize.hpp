// edgesplit/quant/quantize.hpp - quantize and dequantize whole tensors, per tensor or per channel.
#pragma once

#include <cstddef>
#include <cstdint>

#include "edgesplit/core/tensor.hpp"
#include "edgesplit/quant/int8_kernels.hpp"
#include "edgesplit/quant/quant_params.hpp"

namespace edgesplit {

namespace detail {

inline void check_same_shape(const Shape& a, const Shape& b, const char* what) {
  if (!(a == b)) fail(errc::shape_mismatch, std::string(what) + ": shapes " + a.str() + " and " + b.str() + " differ");
}

// One driver for every kernel set. Per tensor is one run over all values. Per channel along the
// last axis (inner == 1, the common {batch, features} case) each row is one `*_row` call with the
// channel vectors; along an inner axis each channel's contiguous block is one `*_run`.
template <class K>
void quantize_with(TensorView<const float> x, const QuantParams& p, TensorView<std::int8_t> q) {
  check_same_shape(x.shape(), q.shape(), "quantize");
  validate(p, x.shape());
  const ChannelLayout l = channel_layout(x.shape(), p.axis);
  const float* xs = x.data();
  std::int8_t* qs = q.data();
  if (!p.per_channel()) {
    K::quantize_run(xs, qs, l.inner, p.scale[0], p.zero_point[0], p.bits);
  } else if (l.inner == 1) {
    for (std::size_t o = 0; o < l.outer; ++o)
      K::quantize_row(xs + o * l.channels, qs + o * l.channels, l.channels, p.scale.data(), p.zero_point.data(),
                      p.bits);
  } else {
    for (std::size_t o = 0; o < l.outer; ++o)
      for (std::size_t c = 0; c < l.channels; ++c) {
        const std::size_t at = (o * l.channels + c) * l.inner;
        K::quantize_run(xs + at, qs + at, l.inner, p.scale[c], p.zero_point[c], p.bits);
      }
  }
}

template <class K>
void dequantize_with(TensorView<const std::int8_t> q, const QuantParams& p, TensorView<float> x) {
  check_same_shape(q.shape(), x.shape(), "dequantize");
  validate(p, q.shape());
  const ChannelLayout l = channel_layout(q.shape(), p.axis);
  const std::int8_t* qs = q.data();
  float* xs = x.data();
  if (!p.per_channel()) {
    K::dequantize_run(qs, xs, l.inner, p.scale[0], p.zero_point[0]);
  } else if (l.inner == 1) {
    for (std::size_t o = 0; o < l.outer; ++o)
      K::dequantize_row(qs + o * l.channels, xs + o * l.channels, l.channels, p.scale.data(), p.zero_point.data());
  } else {
    for (std::size_t o = 0; o < l.outer; ++o)
      for (std::size_t c = 0; c < l.channels; ++c) {
        const std::size_t at = (o * l.channels + c) * l.inner;
        K::dequantize_run(qs + at, xs + at, l.inner, p.scale[c], p.zero_point[c]);
      }
  }
}

}  // namespace detail

/// q = quantized x (one int8_t per code, whatever `p.bits`); shapes must be equal and `p` valid
/// for that shape (errc::shape_mismatch / errc::invalid_argument). Values beyond the range
/// saturate to the extreme codes; NaN becomes the lowest code.
inline void quantize(TensorView<const float> x, const QuantParams& p, TensorView<std::int8_t> q) {
  detail::quantize_with<kernels::NativeQuantKernels>(x, p, q);
}
/// The scalar reference of `quantize`: bit-identical results.
inline void quantize_scalar(TensorView<const float> x, const QuantParams& p, TensorView<std::int8_t> q) {
  detail::quantize_with<kernels::ScalarQuantKernels>(x, p, q);
}

/// x = (q - zero_point) * scale, per tensor or per channel as `p` says.
inline void dequantize(TensorView<const std::int8_t> q, const QuantParams& p, TensorView<float> x) {
  detail::dequantize_with<kernels::NativeQuantKernels>(q, p, x);
}
/// The scalar reference of `dequantize`: bit-identical results.
inline void dequantize_scalar(TensorView<const std::int8_t> q, const QuantParams& p, TensorView<float> x) {
  detail::dequantize_with<kernels::ScalarQuantKernels>(q, p, x);
}

}  // namespace edgesplit
