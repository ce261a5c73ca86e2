// edgesplit/wire/tensor_payload.hpp - a tensor on the wire: header, quantization, data.
//
// Layout (little-endian; docs/wire-format.md is the specification):
//
//   offset size  field
//    0     1     element dtype after decoding (edgesplit::dtype; 1.0: f32 only)
//    1     1     encoding: 0 raw, 1 affine per tensor, 2 affine per channel
//    2     1     bits per stored element: 32 for raw (IEEE-754 binary32), 8, 4 or 2 for affine
//    3     1     lossless stage: 0 none, 1 zstd
//    4     1     rank r, 1..8
//    5     1     channel axis (< r) for per-channel encoding, else 0
//    6     2     reserved, 0
//    8     4r    dimensions, u32 each, >= 1
//    .     4n    scales, f32 (n = 0 raw, 1 per tensor, dims[axis] per channel)
//    .     n     zero points, i8
//    .     4     data length d
//    .     d     data: packed codes (bit_pack.hpp) or raw floats, or one zstd frame of them
//
// read_tensor_header checks every field, in that order, against the format and the receiver's
// DecodeLimits before anything is allocated: what it returns is safe to size buffers from.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "edgesplit/core/dtype.hpp"
#include "edgesplit/core/shape.hpp"
#include "edgesplit/quant/quant_params.hpp"
#include "edgesplit/wire/byte_io.hpp"
#include "edgesplit/wire/frame.hpp"

namespace edgesplit::wire {

/// How a tensor's elements are stored. Values are part of the wire format.
enum class TensorEncoding : std::uint8_t { raw = 0, affine_per_tensor = 1, affine_per_channel = 2 };

/// The optional lossless stage after packing. Values are part of the wire format.
enum class Lossless : std::uint8_t { none = 0, zstd = 1 };

/// The `bits` value of a tensor sent as raw fp32 (not quantized).
inline constexpr int raw_f32_bits = 32;

/// A validated tensor header. `data` views the stored bytes (still compressed when `lossless`
/// says so); `decoded_bytes` is what they must decode to, already checked against the caps.
struct TensorHeader {
  dtype element = dtype::f32;  ///< element type
  TensorEncoding encoding = TensorEncoding::raw;  ///< raw or affine codes
  int bits = raw_f32_bits;  ///< 32 for raw floats, else the code width
  Lossless lossless = Lossless::none;  ///< lossless stage applied to `data`
  Shape shape;  ///< the tensor's shape, checked against the caps
  std::span<const std::byte> data;  ///< the stored bytes, a view into the frame
  std::size_t decoded_bytes = 0;  ///< bytes `data` decodes to
};

/// Bytes of the data section before the lossless stage: raw floats or packed codes.
inline std::size_t tensor_data_bytes(std::size_t count, int bits) {
  return bits == raw_f32_bits ? Shape::checked_bytes(count, 4) : packed_bytes(count, bits);
}

/// Writes a tensor header up to and including the zero points. `params` is ignored for raw
/// (bits 32) and must be valid for `shape` otherwise. The caller then writes the data length and
/// the data. errc::too_large for a dimension over 2^32 - 1.
inline void write_tensor_header(ByteWriter& w, const Shape& shape, int bits, Lossless lossless,
                                const QuantParams* params) {
  const bool raw = bits == raw_f32_bits;
  if (!raw && (params == nullptr || params->bits != bits))
    fail(errc::invalid_argument, "a quantized tensor needs parameters with matching bits");
  if (!raw) validate(*params, shape);
  const bool per_channel = !raw && params->per_channel();
  w.u8(static_cast<std::uint8_t>(dtype::f32));
  w.u8(static_cast<std::uint8_t>(raw ? TensorEncoding::raw
                                     : per_channel ? TensorEncoding::affine_per_channel
                                                   : TensorEncoding::affine_per_tensor));
  w.u8(static_cast<std::uint8_t>(bits));
  w.u8(static_cast<std::uint8_t>(lossless));
  w.u8(static_cast<std::uint8_t>(shape.rank()));
  w.u8(static_cast<std::uint8_t>(per_channel ? params->axis : 0));
  w.u16(0);
  for (std::size_t d : shape.dims()) {
    if (!fits_u32(d)) fail(errc::too_large, "dimension " + std::to_string(d) + " does not fit the wire format");
    w.u32(static_cast<std::uint32_t>(d));
  }
  if (raw) return;
  for (float s : params->scale) w.f32(s);
  for (std::int32_t z : params->zero_point) w.i8(static_cast<std::int8_t>(z));
}

/// Reads and validates a tensor header, its quantization parameters (into `params`, whose
/// storage is reused) and the data length, and takes the data bytes from `r`.
///
/// Errors: errc::corrupt_frame for anything malformed (truncation, rank 0 or > 8, a zero
/// dimension, bits that do not fit the encoding, a bad axis, reserved bits, a scale that is
/// NaN/Inf/<= 0/denormal, a zero point outside the code range, a data length that is not
/// shape x bits); errc::too_large for caps (a dimension or element count over max_elements,
/// an element count that overflows, decoded data over max_decompressed_bytes);
/// errc::unsupported for values this version does not know (dtype, encoding, lossless stage).
inline TensorHeader read_tensor_header(ByteReader& r, const DecodeLimits& limits, QuantParams& params) {
  TensorHeader h;
  const std::uint8_t element = r.u8("tensor dtype");
  const std::uint8_t encoding = r.u8("tensor encoding");
  const std::uint8_t bits = r.u8("tensor bits");
  const std::uint8_t lossless = r.u8("tensor lossless stage");
  const std::uint8_t rank = r.u8("tensor rank");
  const std::uint8_t axis = r.u8("tensor channel axis");
  const std::uint16_t reserved = r.u16("tensor reserved field");

  if (element != static_cast<std::uint8_t>(dtype::f32))
    fail(errc::unsupported, "tensor dtype " + std::to_string(element) + " (1.0 carries f32 tensors only)");
  if (encoding > static_cast<std::uint8_t>(TensorEncoding::affine_per_channel))
    fail(errc::unsupported, "unknown tensor encoding " + std::to_string(encoding));
  if (lossless > static_cast<std::uint8_t>(Lossless::zstd))
    fail(errc::unsupported, "unknown lossless stage " + std::to_string(lossless));
  h.encoding = static_cast<TensorEncoding>(encoding);
  h.lossless = static_cast<Lossless>(lossless);
  h.bits = bits;
  const bool raw = h.encoding == TensorEncoding::raw;
  if (raw ? bits != raw_f32_bits : !valid_quant_bits(bits))
    fail(errc::corrupt_frame, std::to_string(bits) + " bits do not fit tensor encoding " + std::to_string(encoding));
  if (rank == 0 || rank > Shape::max_rank)
    fail(errc::corrupt_frame, "tensor rank " + std::to_string(rank) + " outside 1.." + std::to_string(Shape::max_rank));
  const bool per_channel = h.encoding == TensorEncoding::affine_per_channel;
  if (per_channel ? axis >= rank : axis != 0)
    fail(errc::corrupt_frame, "channel axis " + std::to_string(axis) + " for a rank-" + std::to_string(rank) + " tensor");
  if (reserved != 0) fail(errc::corrupt_frame, "reserved tensor field is not zero");

  std::array<std::size_t, Shape::max_rank> dims{};
  std::size_t count = 1;
  for (std::size_t i = 0; i < rank; ++i) {
    const std::uint32_t d = r.u32("tensor dimension");
    if (d == 0) fail(errc::corrupt_frame, "tensor dimension " + std::to_string(i) + " is zero");
    if (d > limits.max_elements / count)  // count * d would pass the cap (and cannot overflow here)
      fail(errc::too_large, "tensor of more than " + std::to_string(limits.max_elements) + " elements");
    count *= d;
    dims[i] = d;
  }
  h.shape = Shape(std::span<const std::size_t>(dims.data(), rank));

  if (!raw) {
    const std::size_t n = per_channel ? dims[axis] : 1;
    if (n > r.remaining() / 5)  // 4 bytes of scale and 1 of zero point each: check before sizing
      fail(errc::corrupt_frame, "truncated quantization parameters (" + std::to_string(n) + " channels)");
    params.bits = bits;
    params.axis = per_channel ? axis : per_tensor;
    params.scale.resize(n);
    params.zero_point.resize(n);
    for (std::size_t c = 0; c < n; ++c) {
      const float s = r.f32("scale");
      if (!valid_scale(s, bits))
        fail(errc::corrupt_frame, "scale " + std::to_string(s) + " of channel " + std::to_string(c) +
                                      " is not a positive normal float");
      params.scale[c] = s;
    }
    for (std::size_t c = 0; c < n; ++c) {
      const std::int32_t z = r.i8("zero point");
      if (z < code_min(bits) || z > code_max(bits))
        fail(errc::corrupt_frame, "zero point " + std::to_string(z) + " outside the " + std::to_string(int{bits}) +
                                      "-bit code range");
      params.zero_point[c] = z;
    }
  }

  const std::uint32_t stored = r.u32("tensor data length");
  h.decoded_bytes = tensor_data_bytes(count, bits);
  if (h.lossless == Lossless::none) {
    if (stored != h.decoded_bytes)
      fail(errc::corrupt_frame, "tensor data of " + std::to_string(stored) + " bytes, shape " + h.shape.str() +
                                    " at " + std::to_string(int{bits}) + " bits needs " + std::to_string(h.decoded_bytes));
  } else if (h.decoded_bytes > limits.max_decompressed_bytes) {
    fail(errc::too_large, "tensor would decompress to " + std::to_string(h.decoded_bytes) + " bytes, over the cap of " +
                              std::to_string(limits.max_decompressed_bytes));
  }
  h.data = r.bytes(stored, "tensor data");
  return h;
}

}  // namespace edgesplit::wire
