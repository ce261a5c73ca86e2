// edgesplit/quant/quant_params.hpp - the parameters of affine quantization, and their rules.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/shape.hpp"

namespace edgesplit {

/// `QuantParams::axis` value meaning one scale and zero point for the whole tensor.
inline constexpr int per_tensor = -1;

/// Affine quantization: a real value x is stored as the signed integer code
///
///     q = clamp(round_half_even(x / scale) + zero_point, code_min(bits), code_max(bits))
///
/// and read back as x' = (q - zero_point) * scale. Codes are two's complement integers of `bits`
/// bits (8: -128..127, 4: -8..7, 2: -2..1); in memory each code takes one int8_t, on the wire
/// sub-byte codes are packed (see bit_pack.hpp).
///
/// Symmetric quantization is the special case zero_point = 0 (calibration then uses the range
/// +-(2^(bits-1) - 1), so -2^(bits-1) is reached only by saturation).
///
/// Per channel (`axis` >= 0), channel c of dimension `axis` has its own `scale[c]` and
/// `zero_point[c]`; per tensor (`axis` = per_tensor) both vectors hold one value.
struct QuantParams {
  std::vector<float> scale{1.0f};  ///< one per tensor, or one per channel; positive normal floats
  std::vector<std::int32_t> zero_point{0};  ///< one per tensor, or one per channel; valid codes
  int bits = 8;  ///< 8, 4 or 2
  int axis = per_tensor;  ///< channel axis, or per_tensor (-1)

  bool per_channel() const noexcept { return axis >= 0; }  ///< true with a channel axis
  std::size_t channels() const noexcept { return scale.size(); }  ///< number of scale / zero-point pairs

  /// Per-tensor parameters.
  static QuantParams tensor(float scale, std::int32_t zero_point, int bits = 8) {
    QuantParams p;
    p.scale.assign(1, scale);
    p.zero_point.assign(1, zero_point);
    p.bits = bits;
    return p;
  }
};

/// The bit widths edgesplit quantizes to.
constexpr bool valid_quant_bits(int bits) noexcept { return bits == 8 || bits == 4 || bits == 2; }
/// Smallest and largest code of a `bits`-bit two's complement integer.
constexpr int code_min(int bits) noexcept { return -(1 << (bits - 1)); }
///@{
/// Smallest and largest code of a `bits`-bit two's complement integer.
constexpr int code_max(int bits) noexcept { return (1 << (bits - 1)) - 1; }
///@}

/// A usable scale: a positive normal float (so 1/scale is finite) small enough that the largest
/// code distance, 2^bits - 1, times the scale is still finite (so dequantized values are).
inline bool valid_scale(float scale, int bits) noexcept {
  if (!(std::isnormal(scale) && scale > 0)) return false;
  return std::isfinite(scale * static_cast<float>((1 << bits) - 1));
}

/// Bytes that `count` codes of `bits` bits take when packed: ceil(count * bits / 8), or
/// errc::too_large when that overflows.
inline std::size_t packed_bytes(std::size_t count, int bits) {
  if (!valid_quant_bits(bits)) fail(errc::invalid_argument, "quantization bits must be 8, 4 or 2");
  const std::size_t per_byte = static_cast<std::size_t>(8 / bits);
  return count / per_byte + (count % per_byte != 0);
}

/// How a tensor of some shape splits around a channel axis: `outer` blocks, each holding
/// `channels` runs of `inner` contiguous elements (row-major). Per tensor it is {1, 1, count}.
struct ChannelLayout {
  ///@{
  /// Blocks, channels per block, contiguous elements per channel run.
  std::size_t outer = 1, channels = 1, inner = 0;
  ///@}
};

/// The blocks, channels and runs of `shape` around `axis` (per_tensor: one channel); errc::invalid_argument
/// for an axis outside the rank.
inline ChannelLayout channel_layout(const Shape& shape, int axis) {
  if (axis < 0) return {1, 1, shape.count()};
  const auto a = static_cast<std::size_t>(axis);
  if (a >= shape.rank())
    fail(errc::invalid_argument,
         "channel axis " + std::to_string(axis) + " outside a tensor of shape " + shape.str());
  ChannelLayout l{1, shape[a], 1};
  for (std::size_t i = 0; i < a; ++i) l.outer *= shape[i];  // cannot overflow: the count did not
  for (std::size_t i = a + 1; i < shape.rank(); ++i) l.inner *= shape[i];
  return l;
}

/// Checks that `p` is self-consistent and fits a tensor of shape `shape`; errc::invalid_argument
/// (with the reason) otherwise. Every quantize/dequantize entry point calls it once.
inline void validate(const QuantParams& p, const Shape& shape) {
  if (!valid_quant_bits(p.bits))
    fail(errc::invalid_argument, "quantization bits must be 8, 4 or 2, got " + std::to_string(p.bits));
  if (p.scale.size() != p.zero_point.size())
    fail(errc::invalid_argument, "quantization has " + std::to_string(p.scale.size()) + " scales but " +
                                     std::to_string(p.zero_point.size()) + " zero points");
  if (p.axis < per_tensor) fail(errc::invalid_argument, "quantization axis must be >= -1");
  const std::size_t want = channel_layout(shape, p.axis).channels;
  if (p.scale.size() != want)
    fail(errc::shape_mismatch, "quantization has " + std::to_string(p.scale.size()) +
                                   " channels, tensor " + shape.str() + " needs " + std::to_string(want));
  for (std::size_t c = 0; c < p.scale.size(); ++c) {
    if (!valid_scale(p.scale[c], p.bits))
      fail(errc::invalid_argument, "quantization scale " + std::to_string(p.scale[c]) + " of channel " +
                                       std::to_string(c) + " is not a usable positive float");
    if (p.zero_point[c] < code_min(p.bits) || p.zero_point[c] > code_max(p.bits))
      fail(errc::invalid_argument, "zero point " + std::to_string(p.zero_point[c]) + " outside the " +
                                       std::to_string(p.bits) + "-bit code range");
  }
}

}  // namespace edgesplit
