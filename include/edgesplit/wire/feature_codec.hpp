// edgesplit/wire/feature_codec.hpp - the tensor that crosses the link: quantize, pack, compress,
// frame; and back, validating everything.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "edgesplit/core/tensor.hpp"
#include "edgesplit/quant/bit_pack.hpp"
#include "edgesplit/quant/quantize.hpp"
#include "edgesplit/quant/quantizer.hpp"
#include "edgesplit/wire/byte_io.hpp"
#include "edgesplit/wire/frame.hpp"
#include "edgesplit/wire/tensor_payload.hpp"
#include "edgesplit/wire/zstd.hpp"

namespace edgesplit {

/// How the edge encodes the tensor it sends: bit-width, quantization, lossless stage, caps.
struct CodecConfig {
  int bits = 8;  ///< 32: raw fp32, no quantization; 8, 4, 2: affine codes, packed
  Granularity granularity = Granularity::per_tensor;  ///< one scale per tensor or per channel
  std::size_t axis = 1;  ///< channel axis when per channel (1: the features of {batch, features})
  bool symmetric = false;  ///< zero point 0, range +-max|x|
  Calibration calibration{};  ///< how each frame's range is chosen (unless calibrate() froze it)
  wire::Lossless lossless = wire::Lossless::none;  ///< none, or zstd after packing
  int zstd_level = 3;  ///< zstd's compression level, within zstd's own range
  wire::DecodeLimits limits{};  ///< caps applied when decoding (and when encoding, as a courtesy)

  /// A configuration for a codec that only decodes: it reads whatever encoding each frame
  /// declares, so only the caps on what it accepts matter.
  static CodecConfig decoding(const wire::DecodeLimits& limits = {}) {
    CodecConfig cfg;
    cfg.bits = wire::raw_f32_bits;
    cfg.limits = limits;
    return cfg;
  }

  /// The quantizer settings this codec implies (8 bits stands in for raw fp32, which is not quantized).
  QuantConfig quant_config() const {
    return {bits == wire::raw_f32_bits ? 8 : bits, granularity, axis, symmetric, calibration};
  }
};

/// Encodes float tensors into TENSOR frames and decodes them back.
///
/// encode: calibrate (per frame, or once with `calibrate`), quantize, pack, optional zstd, frame
/// with CRC-32C. decode: parse and check the frame (docs/wire-format.md lists every check, all
/// done before any buffer is sized), decompress, unpack, dequantize. Both write into buffers the
/// caller keeps across calls, and the codec keeps its own working buffers, so a steady stream of
/// frames no larger than earlier ones allocates nothing. Not thread-safe: one codec per thread.
class FeatureCodec {
 public:
  /// errc::invalid_argument for bits other than 32, 8, 4, 2 or a bad lossless stage or level.
  explicit FeatureCodec(CodecConfig config = {}) : config_(config), quantizer_(config.quant_config()) {
    if (config_.bits != wire::raw_f32_bits && !valid_quant_bits(config_.bits))
      fail(errc::invalid_argument, "codec bits must be 32, 8, 4 or 2, got " + std::to_string(config_.bits));
    if (config_.lossless == wire::Lossless::zstd)
      wire::ZstdStage::check_level(config_.zstd_level);
    else if (config_.lossless != wire::Lossless::none)
      fail(errc::invalid_argument, "unknown lossless stage");
  }

  const CodecConfig& config() const noexcept { return config_; }  ///< the configuration

  /// Freezes the quantization parameters to those calibrated on `sample`: later frames reuse
  /// them (static calibration) instead of calibrating each frame. Frames must then have the
  /// same channel count.
  const QuantParams& calibrate(TensorView<const float> sample) {
    require_quantized();
    frozen_ = true;
    return quantizer_.calibrate(sample);
  }
  /// Freezes parameters calibrated elsewhere.
  void set_params(QuantParams p) {
    require_quantized();
    quantizer_.set_params(std::move(p));
    frozen_ = true;
  }
  /// Back to calibrating every frame.
  void reset_calibration() noexcept { frozen_ = false; }

  /// Encodes `x` as one TENSOR frame into `out` (cleared first; its capacity is reused) and
  /// returns a view of the frame. errc::invalid_argument for an empty tensor or non-finite
  /// values, errc::too_large for one over the configured element cap.
  std::span<const std::byte> encode(TensorView<const float> x, std::vector<std::byte>& out,
                                    std::uint32_t request_id = 0) {
    wire::begin_frame(out, wire::MessageType::tensor, request_id);
    append_tensor(x, out);
    return wire::finish_frame(out);
  }

  /// Decodes one TENSOR frame into `out` (resized; its capacity is reused) and returns the
  /// frame's header. Every malformed frame throws a typed edgesplit::error; `out` is only
  /// written once the frame has passed every check that does not need decompression.
  wire::FrameHeader decode(std::span<const std::byte> frame, Tensor<float>& out) {
    const wire::Frame f = wire::parse_frame(frame, config_.limits);
    if (f.header.type != wire::MessageType::tensor)
      fail(errc::unsupported, "FeatureCodec decodes tensor frames, got a " + std::string(wire::to_string(f.header.type)) +
                                  " frame");
    wire::ByteReader r(f.payload);
    read_tensor(r, out);
    r.expect_end("tensor frame payload");
    return f.header;
  }

  /// Appends a tensor payload to `out` (for messages that embed a tensor among other fields).
  void append_tensor(TensorView<const float> x, std::vector<std::byte>& out) {
    const Shape& s = x.shape();
    if (s.count() == 0) fail(errc::invalid_argument, "cannot encode an empty tensor");
    if (s.count() > config_.limits.max_elements)
      fail(errc::too_large, "tensor of " + std::to_string(s.count()) + " elements over the cap of " +
                                std::to_string(config_.limits.max_elements));
    const int bits = config_.bits;
    const bool raw = bits == wire::raw_f32_bits;
    const bool zstd = config_.lossless == wire::Lossless::zstd;
    const QuantParams* params = raw ? nullptr : &(frozen_ ? quantizer_.params() : quantizer_.calibrate(x));

    wire::ByteWriter w(out);
    wire::write_tensor_header(w, s, bits, config_.lossless, params);
    const std::size_t length_at = out.size();
    w.u32(0);  // data length, patched below
    const std::size_t data_bytes = wire::tensor_data_bytes(s.count(), bits);

    // Raw floats or packed codes go straight into the frame, or into `packed_` when zstd
    // follows (8-bit codes are their own packing: zstd reads them from `codes_`).
    std::span<std::byte> dst;
    if (!zstd)
      dst = w.reserve(data_bytes);
    else if (raw || bits != 8) {
      packed_.resize(data_bytes);
      dst = packed_;
    }
    std::span<const std::byte> src = dst;  // the zstd input
    if (raw) {
      if (!store_finite_le(x.data(), s.count(), dst.data()))
        fail(errc::invalid_argument, "cannot encode NaN or infinite values");
    } else if (bits == 8 && !zstd) {
      quantize(x, *params, TensorView<std::int8_t>(reinterpret_cast<std::int8_t*>(dst.data()), s));
    } else {
      codes_.resize(s);
      quantize(x, *params, codes_.view());
      if (dst.empty())
        src = std::as_bytes(codes_.span());
      else
        pack_codes(codes_.span(), bits, dst);
    }
    if (zstd) {
      const std::size_t at = out.size();
      out.resize(at + wire::ZstdStage::bound(src.size()));
      const std::size_t n = zstd_.compress(src, std::span(out.data() + at, out.size() - at), config_.zstd_level);
      out.resize(at + n);
    }
    const std::size_t stored = out.size() - length_at - 4;
    if (!wire::fits_u32(stored)) fail(errc::too_large, "tensor data of " + std::to_string(stored) + " bytes");
    wire::store_le32(out.data() + length_at, static_cast<std::uint32_t>(stored));
  }

  /// Reads one tensor payload from `r` into `out` (the decode path without the frame).
  void read_tensor(wire::ByteReader& r, Tensor<float>& out) { decode_tensor_data(read_tensor_header(r), out); }

  /// The first half of read_tensor: validates a tensor header (see wire::read_tensor_header) and
  /// takes its data bytes from `r`, keeping the quantization parameters for decode_tensor_data.
  /// Nothing is allocated for the tensor yet: a receiver can check that it has room first.
  wire::TensorHeader read_tensor_header(wire::ByteReader& r) {
    return wire::read_tensor_header(r, config_.limits, decoded_params_);
  }
  /// The second half: decompresses, unpacks and dequantizes the data of the header the latest
  /// read_tensor_header call returned into `out`.
  void decode_tensor_data(const wire::TensorHeader& h, Tensor<float>& out) {
    std::span<const std::byte> data = h.data;
    if (h.lossless == wire::Lossless::zstd) {
      wire::ZstdStage::check_frame(data, h.decoded_bytes, config_.limits.max_decompressed_bytes);
      decompressed_.resize(h.decoded_bytes);
      zstd_.decompress_exact(data, decompressed_, config_.limits.max_decompressed_bytes);
      data = decompressed_;
    }
    const std::size_t n = h.shape.count();
    if (h.encoding == wire::TensorEncoding::raw) {
      if (const std::size_t bad = count_nonfinite_le(data.data(), n))
        fail(errc::corrupt_frame, "raw tensor holds " + std::to_string(bad) + " NaN or infinite values");
      out.resize(h.shape);
      load_le(data.data(), n, out.data());
      return;
    }
    if (!packing_padding_is_zero(data, n, h.bits))
      fail(errc::corrupt_frame, "nonzero padding bits after the last packed code");
    TensorView<const std::int8_t> codes;
    if (h.bits == 8) {
      codes = {reinterpret_cast<const std::int8_t*>(data.data()), h.shape};
    } else {
      codes_.resize(h.shape);
      unpack_codes(data, h.bits, codes_.span());
      codes = codes_.cview();
    }
    out.resize(h.shape);
    dequantize(codes, decoded_params_, out.view());
  }

  /// Parameters of the latest encoded frame (per-frame or frozen); errc::invalid_argument before
  /// the first, or for a raw codec.
  const QuantParams& encode_params() const { return quantizer_.params(); }
  /// Parameters of the latest decoded quantized frame.
  const QuantParams& decode_params() const noexcept { return decoded_params_; }

 private:
  void require_quantized() const {
    if (config_.bits == wire::raw_f32_bits) fail(errc::invalid_argument, "a raw fp32 codec has no quantization parameters");
  }
  // NaN and infinities among `n` little-endian binary32 values (all exponent bits set). A count
  // rather than an early exit, so that the loop vectorizes.
  static std::size_t count_nonfinite_le(const std::byte* p, std::size_t n) noexcept {
    std::size_t bad = 0;
    for (std::size_t i = 0; i < n; ++i) {
      std::uint32_t v;
      if constexpr (std::endian::native == std::endian::little)
        std::memcpy(&v, p + 4 * i, 4);
      else
        v = wire::load_le32(p + 4 * i);
      bad += (v & 0x7F800000u) == 0x7F800000u;
    }
    return bad;
  }

  // Floats as little-endian binary32; true when all were finite.
  static bool store_finite_le(const float* x, std::size_t n, std::byte* dst) noexcept {
    if constexpr (std::endian::native == std::endian::little) {
      if (n) std::memcpy(dst, x, n * 4);
    } else {
      for (std::size_t i = 0; i < n; ++i) wire::store_le32(dst + 4 * i, std::bit_cast<std::uint32_t>(x[i]));
    }
    return count_nonfinite_le(dst, n) == 0;
  }
  static void load_le(const std::byte* src, std::size_t n, float* x) noexcept {
    if constexpr (std::endian::native == std::endian::little) {
      if (n) std::memcpy(x, src, n * 4);
    } else {
      for (std::size_t i = 0; i < n; ++i) x[i] = std::bit_cast<float>(wire::load_le32(src + 4 * i));
    }
  }

  CodecConfig config_;
  Quantizer quantizer_;
  bool frozen_ = false;
  QuantParams decoded_params_;
  Tensor<std::int8_t> codes_;
  std::vector<std::byte> packed_, decompressed_;
  wire::ZstdStage zstd_;
};

}  // namespace edgesplit
