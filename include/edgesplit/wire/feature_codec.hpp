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

  /// The quantizer settings this codec implies (8 bits stands in for raw fp32, which is not quantized).
  QuantConfig quant_config() const {
    return {bits == wire::raw_f32_bits ? 8 : bits, granularity, axis, symmetric, calibration};
  }
};

namespace wire {

namespace detail {
// NaN and infinities among `n` little-endian binary32 values (all exponent bits set). A count
// rather than an early exit, so that the loop vectorizes.
inline std::size_t count_nonfinite_le(const std::byte* p, std::size_t n) noexcept {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t v;
    if constexpr (std::endian::native == std::endian::little)
      std::memcpy(&v, p + 4 * i, 4);
    else
      v = load_le32(p + 4 * i);
    bad += (v & 0x7F800000u) == 0x7F800000u;
  }
  return bad;
}

// Floats as little-endian binary32; true when all were finite.
inline bool store_finite_le(const float* x, std::size_t n, std::byte* dst) noexcept {
  if constexpr (std::endian::native == std::endian::little) {
    if (n) std::memcpy(dst, x, n * 4);
  } else {
    for (std::size_t i = 0; i < n; ++i) store_le32(dst + 4 * i, std::bit_cast<std::uint32_t>(x[i]));
  }
  return count_nonfinite_le(dst, n) == 0;
}

inline void load_le(const std::byte* src, std::size_t n, float* x) noexcept {
  if constexpr (std::endian::native == std::endian::little) {
    if (n) std::memcpy(x, src, n * 4);
  } else {
    for (std::size_t i = 0; i < n; ++i) x[i] = std::bit_cast<float>(load_le32(src + 4 * i));
  }
}
}  // namespace detail

/// The sending half of the feature codec: encodes float tensors into TENSOR payloads and frames
/// as its CodecConfig says (calibrate per frame, or once with `calibrate`; quantize; pack;
/// optional zstd; frame with CRC-32C). It writes into a buffer the caller keeps across calls and
/// keeps its own working buffers, so a steady stream of frames no larger than earlier ones
/// allocates nothing. Not thread-safe: one encoder per thread.
class FeatureEncoder {
 public:
  /// errc::invalid_argument for bits other than 32, 8, 4, 2 or a bad lossless stage or level.
  explicit FeatureEncoder(CodecConfig config = {}) : config_(config), quantizer_(config.quant_config()) {
    if (config_.bits != raw_f32_bits && !valid_quant_bits(config_.bits))
      fail(errc::invalid_argument, "codec bits must be 32, 8, 4 or 2, got " + std::to_string(config_.bits));
    if (config_.lossless == Lossless::zstd)
      ZstdStage::check_level(config_.zstd_level);
    else if (config_.lossless != Lossless::none)
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
    begin_frame(out, MessageType::tensor, request_id);
    append_tensor(x, out);
    return finish_frame(out);
  }

  /// Appends a tensor payload to `out` (for messages that embed a tensor among other fields).
  void append_tensor(TensorView<const float> x, std::vector<std::byte>& out) {
    const Shape& s = x.shape();
    if (s.count() == 0) fail(errc::invalid_argument, "cannot encode an empty tensor");
    if (s.count() > config_.limits.max_elements)
      fail(errc::too_large, "tensor of " + std::to_string(s.count()) + " elements over the cap of " +
                                std::to_string(config_.limits.max_elements));
    const int bits = config_.bits;
    const bool raw = bits == raw_f32_bits;
    const bool zstd = config_.lossless == Lossless::zstd;
    const QuantParams* params = raw ? nullptr : &(frozen_ ? quantizer_.params() : quantizer_.calibrate(x));

    ByteWriter w(out);
    write_tensor_header(w, s, bits, config_.lossless, params);
    const std::size_t length_at = out.size();
    w.u32(0);  // data length, patched below
    const std::size_t data_bytes = tensor_data_bytes(s.count(), bits);

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
      if (!detail::store_finite_le(x.data(), s.count(), dst.data()))
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
      out.resize(at + ZstdStage::bound(src.size()));
      const std::size_t n = zstd_.compress(src, std::span(out.data() + at, out.size() - at), config_.zstd_level);
      out.resize(at + n);
    }
    const std::size_t stored = out.size() - length_at - 4;
    if (!fits_u32(stored)) fail(errc::too_large, "tensor data of " + std::to_string(stored) + " bytes");
    store_le32(out.data() + length_at, static_cast<std::uint32_t>(stored));
  }

  /// Parameters of the latest encoded frame (per-frame or frozen); errc::invalid_argument before
  /// the first, or for a raw codec.
  const QuantParams& encode_params() const { return quantizer_.params(); }

 private:
  void require_quantized() const {
    if (config_.bits == raw_f32_bits) fail(errc::invalid_argument, "a raw fp32 codec has no quantization parameters");
  }

  CodecConfig config_;
  Quantizer quantizer_;
  bool frozen_ = false;
  Tensor<std::int8_t> codes_;
  std::vector<std::byte> packed_;
  ZstdStage zstd_;
};

/// The receiving half of the feature codec: decodes TENSOR payloads and frames of any encoding
/// (raw fp32, 8/4/2-bit codes, with or without zstd: each frame says which), so all it needs are
/// the caps on what it accepts. Every malformed frame throws a typed edgesplit::error; the checks
/// (docs/wire-format.md lists them) all come before any buffer is sized. Writes into tensors the
/// caller keeps and keeps its own working buffers, so steady decoding allocates nothing. Not
/// thread-safe: one decoder per thread.
class FeatureDecoder {
 public:
  /// A decoder refusing what exceeds `limits`.
  explicit FeatureDecoder(const DecodeLimits& limits = {}) : limits_(limits) {}

  const DecodeLimits& limits() const noexcept { return limits_; }  ///< the caps applied

  /// Decodes one TENSOR frame into `out` (resized; its capacity is reused) and returns the
  /// frame's header. `out` is only written once the frame has passed every check that does not
  /// need decompression.
  FrameHeader decode(std::span<const std::byte> frame, Tensor<float>& out) {
    const Frame f = parse_frame(frame, limits_);
    if (f.header.type != MessageType::tensor)
      fail(errc::unsupported, "the feature decoder decodes tensor frames, got a " + std::string(to_string(f.header.type)) +
                                  " frame");
    ByteReader r(f.payload);
    read_tensor(r, out);
    r.expect_end("tensor frame payload");
    return f.header;
  }

  /// Reads one tensor payload from `r` into `out` (the decode path without the frame).
  void read_tensor(ByteReader& r, Tensor<float>& out) { decode_tensor_data(read_tensor_header(r), out); }

  /// The first half of read_tensor: validates a tensor header (see wire::read_tensor_header) and
  /// takes its data bytes from `r`, keeping the quantization parameters for decode_tensor_data.
  /// Nothing is allocated for the tensor yet: a receiver can check that it has room first.
  TensorHeader read_tensor_header(ByteReader& r) { return wire::read_tensor_header(r, limits_, decoded_params_); }
  /// The second half: decompresses, unpacks and dequantizes the data of the header the latest
  /// read_tensor_header call returned into `out`.
  void decode_tensor_data(const TensorHeader& h, Tensor<float>& out) {
    std::span<const std::byte> data = h.data;
    if (h.lossless == Lossless::zstd) {
      ZstdStage::check_frame(data, h.decoded_bytes, limits_.max_decompressed_bytes);
      decompressed_.resize(h.decoded_bytes);
      zstd_.decompress_exact(data, decompressed_, limits_.max_decompressed_bytes);
      data = decompressed_;
    }
    const std::size_t n = h.shape.count();
    if (h.encoding == TensorEncoding::raw) {
      if (const std::size_t bad = detail::count_nonfinite_le(data.data(), n))
        fail(errc::corrupt_frame, "raw tensor holds " + std::to_string(bad) + " NaN or infinite values");
      out.resize(h.shape);
      detail::load_le(data.data(), n, out.data());
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

  /// Parameters of the latest decoded quantized frame.
  const QuantParams& decode_params() const noexcept { return decoded_params_; }

 private:
  DecodeLimits limits_;
  QuantParams decoded_params_;
  Tensor<std::int8_t> codes_;
  std::vector<std::byte> decompressed_;
  ZstdStage zstd_;
};

}  // namespace wire

/// Both halves in one object, encoding with `config` and decoding with `config.limits`: for code
/// that does both, such as a test's round trip. A side that only sends needs a
/// wire::FeatureEncoder, one that only receives a wire::FeatureDecoder (no codec settings).
class FeatureCodec : public wire::FeatureEncoder, public wire::FeatureDecoder {
 public:
  /// errc::invalid_argument for bits other than 32, 8, 4, 2 or a bad lossless stage or level.
  explicit FeatureCodec(CodecConfig config = {}) : wire::FeatureEncoder(config), wire::FeatureDecoder(config.limits) {}
};

}  // namespace edgesplit
