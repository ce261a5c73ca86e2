// Tests for wire/: CRC-32C against published vectors, the frame header, the tensor payload and
// FeatureCodec round trips, every malformed-input path (with the error code it must give),
// truncation at every offset, every single-bit flip, zstd bombs, no allocation in steady state,
// and the replay of the fuzz corpus; and the protobuf codec of the Open Inference Protocol over
// gRPC (wire/protobuf.hpp, wire/oip_grpc.hpp): known encodings, round trips, unknown fields,
// every malformed input and limit, and the replay of its fuzz corpus.
#include <catch2/catch.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "alloc_counter.hpp"
#include "edgesplit/edgesplit.hpp"
#include "edgesplit/wire/oip_grpc.hpp"
#include "fuzz/decode_entry.hpp"
#include "fuzz/oip_grpc_entry.hpp"
#include "test_util.hpp"

#if EDGESPLIT_HAS_ZSTD
#include <zstd.h>
#endif

using namespace edgesplit;
using edgesplit_test::expect_errc;
namespace w = edgesplit::wire;

namespace {

using Bytes = std::vector<std::byte>;

Bytes bytes_of(std::initializer_list<int> v) {
  Bytes b;
  for (int x : v) b.push_back(std::byte(x));
  return b;
}
Bytes bytes_of(std::string_view s) {
  Bytes b;
  for (char c : s) b.push_back(std::byte(c));
  return b;
}

// Makes the payload length and the CRC match the bytes again, so that a test reaches the check
// it aims at instead of stopping at the checksum.
void reseal(Bytes& f) {
  w::store_le32(f.data() + 12, static_cast<std::uint32_t>(f.size() - w::load_le16(f.data() + 8)));
  w::store_le32(f.data() + w::frame_crc_offset, w::frame_crc(f));
}

Tensor<float> features(const Shape& s, std::uint64_t seed, double lo = -2, double hi = 3) {
  Rng rng(seed);
  Tensor<float> t(s);
  for (float& v : t.span()) v = static_cast<float>(rng.uniform(lo, hi));
  return t;
}

CodecConfig config(int bits, Granularity g = Granularity::per_tensor, std::size_t axis = 1,
                   w::Lossless lossless = w::Lossless::none) {
  CodecConfig c;
  c.bits = bits;
  c.granularity = g;
  c.axis = axis;
  c.lossless = lossless;
  return c;
}

Bytes encode(const CodecConfig& c, const Tensor<float>& x) {
  FeatureCodec codec(c);
  Bytes out;
  codec.encode(x, out);
  return out;
}

// A TENSOR frame around hand-made data: what a hostile or broken peer could send.
Bytes tensor_frame(const Shape& s, int bits, w::Lossless lossless, const QuantParams* p, std::span<const std::byte> data) {
  Bytes f;
  w::begin_frame(f, w::MessageType::tensor);
  w::ByteWriter wr(f);
  w::write_tensor_header(wr, s, bits, lossless, p);
  wr.u32(static_cast<std::uint32_t>(data.size()));
  auto dst = wr.reserve(data.size());
  std::copy(data.begin(), data.end(), dst.begin());
  w::finish_frame(f);
  return f;
}

bool same_bits_view(const Tensor<float>& a, const Tensor<float>& b) {
  return a.shape() == b.shape() && (a.size() == 0 || std::memcmp(a.data(), b.data(), a.bytes()) == 0);
}

void expect_decode_error(errc code, const Bytes& frame, const w::DecodeLimits& limits = {}) {
  CodecConfig c;
  c.limits = limits;
  FeatureCodec codec(c);
  Tensor<float> out;
  expect_errc(code, [&] { codec.decode(frame, out); });
}

// The frames the exhaustive truncation and bit-flip tests walk through: every encoding, both
// granularities, and zstd where built in.
std::vector<Bytes> sample_frames() {
  std::vector<Bytes> frames;
  const auto x = features(Shape{3, 7}, 5);
  frames.push_back(encode(config(32), x));
  frames.push_back(encode(config(8), x));
  frames.push_back(encode(config(4, Granularity::per_channel, 1), x));
  frames.push_back(encode(config(2, Granularity::per_channel, 0), x));
  if (w::has_zstd) {
    frames.push_back(encode(config(8, Granularity::per_tensor, 1, w::Lossless::zstd), x));
    frames.push_back(encode(config(4, Granularity::per_channel, 1, w::Lossless::zstd), x));
  }
  return frames;
}

}  // namespace

TEST_CASE("CRC-32C matches the published test vectors", "[wire][crc]") {
  Bytes zeros(32, std::byte{0}), ones(32, std::byte{0xFF}), up(32), down(32);
  for (int i = 0; i < 32; ++i) {
    up[i] = std::byte(i);
    down[i] = std::byte(31 - i);
  }
  // RFC 3720 (iSCSI) appendix B.4; the CRC bytes printed there are the value little-endian.
  const Bytes read10 = bytes_of({0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                                 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
                                 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
                                 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00});
  const std::vector<std::pair<Bytes, std::uint32_t>> vectors = {
      {bytes_of("123456789"), 0xE3069283u}, {zeros, 0x8A9136AAu}, {ones, 0x62A8AB43u},
      {up, 0x46DD794Eu},                    {down, 0x113FDB5Cu},  {read10, 0xD9963A56u},
      {Bytes{}, 0x00000000u}};
  for (const auto& [data, crc] : vectors) {
    CHECK(w::crc32c_portable(data) == crc);
    CHECK(w::crc32c(data) == crc);
#if defined(__SSE4_2__)
    CHECK(w::crc32c_hardware(data) == crc);
#endif
  }
  // Chaining, and every implementation on every length and alignment.
  Rng rng(31);
  Bytes buf(600);
  for (auto& b : buf) b = std::byte(rng.below(256));
  const std::span<const std::byte> all(buf);
  for (std::size_t off = 0; off < 9; ++off)
    for (std::size_t n = 0; n + off <= 300; n += 7) {
      const auto s = all.subspan(off, n);
      const std::uint32_t ref = w::crc32c_portable(s);
      CHECK(w::crc32c(s) == ref);
      const std::size_t cut = n / 3;
      CHECK(w::crc32c_portable(s.subspan(cut), w::crc32c_portable(s.first(cut))) == ref);
      CHECK(w::crc32c(s.subspan(cut), w::crc32c(s.first(cut))) == ref);
    }
}

TEST_CASE("A frame has the documented byte layout", "[wire][frame]") {
  FeatureCodec codec(config(4));
  codec.set_params(QuantParams::tensor(1.0f, 0, 4));
  const std::vector<float> v = {1.0f, -2.0f, 3.0f};
  Bytes f;
  codec.encode(TensorView<const float>(v.data(), Shape{3}), f, 7);
  // magic, version 1.1, type 8 (tensor), flags, header length, reserved, payload length, request id, CRC
  Bytes want = bytes_of({'E', 'S', 'P', 'L', 1, 1, 8, 0, 24, 0, 0, 0, 23, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0,
                         // dtype f32, affine per tensor, 4 bits, no lossless stage, rank 1, axis 0
                         1, 1, 4, 0, 1, 0, 0, 0,
                         3, 0, 0, 0,                   // dims
                         0x00, 0x00, 0x80, 0x3F, 0,    // scale 1.0f, zero point 0
                         2, 0, 0, 0, 0xE1, 0x03});     // data length, codes {1, -2, 3} packed
  const std::uint32_t crc =
      w::crc32c_portable(std::span(want).subspan(24), w::crc32c_portable(std::span(want).first(20)));
  w::store_le32(want.data() + 20, crc);
  CHECK(f == want);
  const w::FrameHeader h = w::parse_frame_header(f);
  CHECK(h.type == w::MessageType::tensor);
  CHECK(h.request_id == 7);
  CHECK(h.payload_length == 23);
  CHECK(h.frame_size() == f.size());
  Tensor<float> out;
  CHECK(codec.decode(f, out).request_id == 7);
  CHECK(out.shape() == Shape{3});
  CHECK(std::vector<float>(out.span().begin(), out.span().end()) == v);
}

TEST_CASE("Frames of every message type round-trip through begin/finish/parse", "[wire][frame]") {
  for (int t = 1; t <= 9; ++t) {
    const auto type = static_cast<w::MessageType>(t);
    CHECK(w::is_known(type));
    CHECK(w::to_string(type) != "unknown");
    Bytes f;
    w::begin_frame(f, type, 0xA1B2C3D4u);
    w::ByteWriter(f).u32(0x01020304u);
    w::finish_frame(f);
    const w::Frame fr = w::parse_frame(f);
    CHECK(fr.header.type == type);
    CHECK(fr.header.request_id == 0xA1B2C3D4u);
    CHECK(fr.payload.size() == 4);
    CHECK(w::load_le32(fr.payload.data()) == 0x01020304u);
  }
  CHECK_FALSE(w::is_known(static_cast<w::MessageType>(0)));
  CHECK_FALSE(w::is_known(static_cast<w::MessageType>(10)));
}

TEST_CASE("Malformed frame headers are refused with their error codes", "[wire][frame][errors]") {
  const Bytes good = encode(config(8), features(Shape{2, 5}, 1));
  Tensor<float> out;
  FeatureCodec codec;
  codec.decode(good, out);

  auto tampered = [&](auto edit, bool fix = true) {
    Bytes f = good;
    edit(f);
    if (fix) reseal(f);
    return f;
  };
  expect_decode_error(errc::corrupt_frame, tampered([](Bytes& f) { f[0] = std::byte{'F'}; }, false));
  expect_decode_error(errc::version_mismatch, tampered([](Bytes& f) { f[4] = std::byte{2}; }));
  expect_decode_error(errc::version_mismatch, tampered([](Bytes& f) { f[4] = std::byte{0}; }));
  expect_decode_error(errc::unsupported, tampered([](Bytes& f) { f[6] = std::byte{0}; }));
  expect_decode_error(errc::unsupported, tampered([](Bytes& f) { f[6] = std::byte{10}; }));
  // A 1.0 frame (minor 0) is still read.
  expect_decode_error(errc::unsupported, tampered([](Bytes& f) { f[6] = std::byte{9}; }));  // not a tensor frame
  Tensor<float> old;
  CHECK(codec.decode(tampered([](Bytes& f) { f[5] = std::byte{0}; }), old).minor == 0);
  expect_decode_error(errc::unsupported, tampered([](Bytes& f) { f[6] = std::byte{255}; }));
  expect_decode_error(errc::unsupported, tampered([](Bytes& f) { f[7] = std::byte{1}; }));
  expect_decode_error(errc::corrupt_frame, tampered([](Bytes& f) { f[8] = std::byte{20}; }));
  expect_decode_error(errc::corrupt_frame, tampered([](Bytes& f) { f[10] = std::byte{1}; }));
  expect_decode_error(errc::checksum_mismatch, tampered([](Bytes& f) { f[30] ^= std::byte{4}; }, false));
  expect_decode_error(errc::checksum_mismatch, tampered([](Bytes& f) { f[21] ^= std::byte{1}; }, false));
  // A header length of 28 is only valid with a minor version that defines those 4 bytes.
  expect_decode_error(errc::corrupt_frame, tampered([](Bytes& f) {
                        f[8] = std::byte{28};
                        f.insert(f.begin() + 24, 4, std::byte{0});
                      }));
  // ... and a later minor's extension is skipped by this reader.
  const Bytes newer = tampered([](Bytes& f) {
    f[5] = std::byte{3};
    f[8] = std::byte{28};
    f.insert(f.begin() + 24, {std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4}});
  });
  Tensor<float> out2;
  CHECK(codec.decode(newer, out2).minor == 3);
  CHECK(same_bits_view(out, out2));
  // The frame must be exactly the bytes given.
  Bytes longer = good;
  longer.push_back(std::byte{0});
  expect_decode_error(errc::corrupt_frame, longer);
  expect_decode_error(errc::corrupt_frame, Bytes(good.begin(), good.end() - 1));
  // The payload cap is checked from the 24 header bytes alone, before the payload is read.
  w::DecodeLimits small;
  small.max_payload_bytes = 10;
  expect_errc(errc::too_large, [&] { (void)w::parse_frame_header(std::span(good).first(24), small); });
  expect_errc(errc::corrupt_frame, [&] { (void)w::parse_frame_header(std::span(good).first(23)); });
  // The codec decodes tensor frames only.
  Bytes ping;
  w::begin_frame(ping, w::MessageType::ping);
  w::finish_frame(ping);
  expect_decode_error(errc::unsupported, ping);
}

TEST_CASE("Malformed tensor payloads are refused with their error codes", "[wire][tensor][errors]") {
  // int4 per channel along axis 1 of {2, 3}: dims at 32, scales at 40, zero points at 52,
  // data length at 55, 3 data bytes at 59.
  const Bytes good = encode(config(4, Granularity::per_channel, 1), features(Shape{2, 3}, 2));
  REQUIRE(good.size() == 62);
  auto tampered = [&](auto edit) {
    Bytes f = good;
    edit(f);
    reseal(f);
    return f;
  };
  auto set = [&](std::size_t at, int v) { return tampered([=](Bytes& f) { f[at] = std::byte(v); }); };
  auto set32 = [&](std::size_t at, std::uint32_t v) { return tampered([=](Bytes& f) { w::store_le32(f.data() + at, v); }); };
  using enum errc;
  expect_decode_error(unsupported, set(24, 2));    // dtype f64
  expect_decode_error(unsupported, set(24, 0));    // not a dtype
  expect_decode_error(unsupported, set(24, 200));
  expect_decode_error(unsupported, set(25, 3));    // encoding
  expect_decode_error(unsupported, set(27, 2));    // lossless stage
  expect_decode_error(corrupt_frame, set(26, 7));  // bits
  expect_decode_error(corrupt_frame, set(26, 32));
  expect_decode_error(corrupt_frame, set(25, 0));  // raw needs 32 bits
  expect_decode_error(corrupt_frame, set(28, 0));  // rank 0
  expect_decode_error(corrupt_frame, set(28, 9));  // rank 9
  expect_decode_error(corrupt_frame, set(29, 2));  // axis past the rank
  expect_decode_error(corrupt_frame, set(30, 1));  // reserved
  expect_decode_error(corrupt_frame, set32(32, 0));           // zero dimension
  expect_decode_error(corrupt_frame, set32(36, 0));
  expect_decode_error(too_large, set32(32, 0xFFFFFFFFu));     // huge dimension
  expect_decode_error(too_large, set32(36, (16u << 20) + 1));
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity(), 0.0f, -0.5f, 1e-40f, 3e38f})
    expect_decode_error(corrupt_frame, set32(44, std::bit_cast<std::uint32_t>(bad)));  // scale
  expect_decode_error(corrupt_frame, set(53, 8));    // zero point past 4-bit codes
  expect_decode_error(corrupt_frame, set(53, 0xF7));  // -9
  expect_decode_error(corrupt_frame, set32(55, 4));  // data length != shape x bits ...
  expect_decode_error(corrupt_frame, tampered([](Bytes& f) {  // ... also when the bytes are there
    w::store_le32(f.data() + 55, 4);
    f.push_back(std::byte{0});
  }));
  expect_decode_error(corrupt_frame, tampered([](Bytes& f) {
    w::store_le32(f.data() + 55, 2);
    f.pop_back();
  }));
  expect_decode_error(corrupt_frame, tampered([](Bytes& f) { f.push_back(std::byte{0}); }));  // trailing
  expect_decode_error(corrupt_frame, tampered([](Bytes& f) { f.resize(50); }));  // truncated parameters
  // 6 codes of 4 bits fill 3 bytes exactly; 5 codes leave half a byte that must be zero.
  const std::vector<std::int8_t> codes = {1, 2, 3, 4, 5};
  Bytes packed(3);
  pack_codes(codes, 4, packed);
  const QuantParams p = QuantParams::tensor(0.5f, 0, 4);
  Tensor<float> out;
  FeatureCodec().decode(tensor_frame(Shape{5}, 4, w::Lossless::none, &p, packed), out);
  CHECK(out[4] == 2.5f);
  packed[2] |= std::byte{0x10};
  expect_decode_error(corrupt_frame, tensor_frame(Shape{5}, 4, w::Lossless::none, &p, packed));
  // Raw floats must be finite.
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    Bytes raw(8);
    w::store_le32(raw.data(), std::bit_cast<std::uint32_t>(1.0f));
    w::store_le32(raw.data() + 4, std::bit_cast<std::uint32_t>(bad));
    expect_decode_error(corrupt_frame, tensor_frame(Shape{2}, 32, w::Lossless::none, nullptr, raw));
  }
  // An element count that overflows 64 bits is refused while the dimensions are read, even when
  // the cap is as large as it can be.
  Bytes huge;
  w::begin_frame(huge, w::MessageType::tensor);
  {
    w::ByteWriter wr(huge);
    for (int v : {1, 2, 8, 0, 8, 0, 0, 0}) wr.u8(static_cast<std::uint8_t>(v));
    for (int i = 0; i < 8; ++i) wr.u32(0xFFFFFFFFu);
  }
  w::finish_frame(huge);
  w::DecodeLimits unlimited;
  unlimited.max_elements = SIZE_MAX;
  expect_decode_error(too_large, huge, unlimited);
  // The element cap applies to the product, not only to each dimension.
  w::DecodeLimits small;
  small.max_elements = 5;
  expect_decode_error(too_large, good, small);
}

TEST_CASE("The zstd stage refuses bombs and malformed zstd data before allocating", "[wire][zstd][errors]") {
  if (!w::has_zstd) {
    expect_errc(errc::unsupported, [] { FeatureCodec c(config(8, Granularity::per_tensor, 1, w::Lossless::zstd)); });
    const QuantParams p = QuantParams::tensor(1, 0);
    const Bytes any(4);
    expect_decode_error(errc::unsupported, tensor_frame(Shape{4}, 8, w::Lossless::zstd, &p, any));
    return;
  }
#if EDGESPLIT_HAS_ZSTD
  expect_errc(errc::invalid_argument, [] {
    CodecConfig c = config(8, Granularity::per_tensor, 1, w::Lossless::zstd);
    c.zstd_level = 1000;
    FeatureCodec codec(c);
  });
  auto zstd = [](const Bytes& src, bool record_size = true) {
    ZSTD_CCtx* c = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, record_size ? 1 : 0);
    Bytes dst(ZSTD_compressBound(src.size()));
    const std::size_t n = ZSTD_compress2(c, dst.data(), dst.size(), src.data(), src.size());
    ZSTD_freeCCtx(c);
    REQUIRE_FALSE(ZSTD_isError(n));
    dst.resize(n);
    return dst;
  };
  const QuantParams p = QuantParams::tensor(1, 0);
  const Bytes sixteen(16, std::byte{3});
  // The well-formed case decodes.
  Tensor<float> out;
  FeatureCodec codec;
  codec.decode(tensor_frame(Shape{16}, 8, w::Lossless::zstd, &p, zstd(sixteen)), out);
  CHECK(out.shape() == Shape{16});
  CHECK(out[15] == 3.0f);
  // A bomb: 64 MiB of zeros in a few kilobytes, claiming its size honestly. Over the cap:
  // too_large; within it but not the 16 bytes the shape needs: corrupt. Either way from the zstd
  // frame header, before any output is sized.
  const Bytes bomb = zstd(Bytes(std::size_t{64} << 20));
  INFO("bomb of " << bomb.size() << " bytes");
  CHECK(bomb.size() < 20000);
  const Bytes bomb_frame = tensor_frame(Shape{16}, 8, w::Lossless::zstd, &p, bomb);
  w::DecodeLimits lim;
  lim.max_decompressed_bytes = std::size_t{1} << 20;
  expect_decode_error(errc::too_large, bomb_frame, lim);
  lim.max_decompressed_bytes = std::size_t{128} << 20;
  expect_decode_error(errc::corrupt_frame, bomb_frame, lim);
  // A shape whose data alone passes the decompression cap is refused from the tensor header.
  lim.max_decompressed_bytes = 1000;
  expect_decode_error(errc::too_large, tensor_frame(Shape{1001}, 8, w::Lossless::zstd, &p, zstd(sixteen)), lim);
  // No recorded content size, trailing bytes, two frames, not zstd at all, an empty frame.
  expect_decode_error(errc::corrupt_frame, tensor_frame(Shape{16}, 8, w::Lossless::zstd, &p, zstd(sixteen, false)));
  Bytes trailing = zstd(sixteen);
  trailing.push_back(std::byte{0});
  expect_decode_error(errc::corrupt_frame, tensor_frame(Shape{16}, 8, w::Lossless::zstd, &p, trailing));
  Bytes two = zstd(Bytes(8, std::byte{1}));
  const Bytes second = zstd(Bytes(8, std::byte{1}));
  two.insert(two.end(), second.begin(), second.end());
  expect_decode_error(errc::corrupt_frame, tensor_frame(Shape{16}, 8, w::Lossless::zstd, &p, two));
  expect_decode_error(errc::corrupt_frame, tensor_frame(Shape{16}, 8, w::Lossless::zstd, &p, sixteen));
  expect_decode_error(errc::corrupt_frame, tensor_frame(Shape{16}, 8, w::Lossless::zstd, &p, Bytes{}));
  // A frame truncated inside its blocks.
  Bytes cut = zstd(Bytes(3000, std::byte{7}));
  cut.pop_back();
  expect_decode_error(errc::corrupt_frame, tensor_frame(Shape{3000}, 8, w::Lossless::zstd, &p, cut));
#endif
}

TEST_CASE("Truncation at every byte offset is refused", "[wire][errors]") {
  FeatureCodec codec;
  Tensor<float> out;
  for (const Bytes& f : sample_frames()) {
    codec.decode(f, out);  // whole: fine
    std::size_t caught = 0;
    for (std::size_t n = 0; n < f.size(); ++n) {
      try {
        codec.decode(std::span(f).first(n), out);
      } catch (const edgesplit::error&) {
        ++caught;
      }
    }
    CHECK(caught == f.size());
  }
}

TEST_CASE("Every single-bit flip of a valid frame is caught", "[wire][errors]") {
  FeatureCodec codec;
  Tensor<float> out;
  for (const Bytes& good : sample_frames()) {
    std::size_t caught = 0, bits = good.size() * 8;
    Bytes f = good;
    for (std::size_t bit = 0; bit < bits; ++bit) {
      f[bit / 8] ^= std::byte(1u << (bit % 8));
      try {
        codec.decode(f, out);
      } catch (const edgesplit::error&) {
        ++caught;
      }
      f[bit / 8] ^= std::byte(1u << (bit % 8));
    }
    INFO("frame of " << good.size() << " bytes");
    CHECK(caught == bits);  // the CRC field's own bits included
  }
}

TEST_CASE("FeatureCodec round-trips every configuration exactly as quantize/dequantize", "[wire][codec]") {
  const Shape shape{5, 24};
  const auto x = features(shape, 3);
  for (auto lossless : {w::Lossless::none, w::Lossless::zstd}) {
    if (lossless == w::Lossless::zstd && !w::has_zstd) continue;
    for (int bits : {32, 8, 4, 2})
      for (auto [g, axis] : {std::pair{Granularity::per_tensor, std::size_t{1}},
                             {Granularity::per_channel, std::size_t{1}},
                             {Granularity::per_channel, std::size_t{0}}}) {
        if (bits == 32 && g == Granularity::per_channel) continue;
        INFO("bits " << bits << ", per channel " << (g == Granularity::per_channel) << ", axis " << axis
                     << ", zstd " << (lossless == w::Lossless::zstd));
        FeatureCodec enc(config(bits, g, axis, lossless)), dec;
        Bytes f;
        enc.encode(x, f, 99);
        Tensor<float> out;
        CHECK(dec.decode(f, out).request_id == 99);
        REQUIRE(out.shape() == shape);
        if (bits == 32) {
          CHECK(same_bits_view(out, x));
          if (lossless == w::Lossless::none) CHECK(f.size() == 24 + 8 + 8 + 4 + 4 * shape.count());
          continue;
        }
        const QuantParams& p = enc.encode_params();
        CHECK(dec.decode_params().scale == p.scale);
        CHECK(dec.decode_params().zero_point == p.zero_point);
        CHECK(dec.decode_params().axis == p.axis);
        Tensor<std::int8_t> q(shape);
        Tensor<float> want(shape);
        quantize(x, p, q.view());
        dequantize(q, p, want.view());
        CHECK(same_bits_view(out, want));
        if (lossless == w::Lossless::none)
          CHECK(f.size() == 24 + 8 + 8 + 5 * p.channels() + 4 + packed_bytes(shape.count(), bits));
      }
  }
}

TEST_CASE("FeatureCodec: static calibration, encode errors, configuration errors", "[wire][codec][errors]") {
  const auto sample = features(Shape{8, 6}, 4);
  FeatureCodec codec(config(8, Granularity::per_channel, 1));
  const QuantParams frozen = codec.calibrate(sample);
  Bytes f;
  codec.encode(features(Shape{2, 6}, 5, -10, 10), f);  // values past the range saturate
  CHECK(codec.encode_params().scale == frozen.scale);
  expect_errc(errc::shape_mismatch, [&] { codec.encode(features(Shape{2, 7}, 5), f); });
  codec.reset_calibration();
  codec.encode(features(Shape{2, 7}, 5), f);
  CHECK(codec.encode_params().channels() == 7);

  std::vector<float> bad = {1.0f, std::numeric_limits<float>::quiet_NaN()};
  const TensorView<const float> badv(bad.data(), Shape{2});
  expect_errc(errc::invalid_argument, [&] { FeatureCodec(config(32)).encode(badv, f); });
  expect_errc(errc::invalid_argument, [&] { FeatureCodec(config(8)).encode(badv, f); });
  expect_errc(errc::invalid_argument, [&] { FeatureCodec(config(8)).encode(TensorView<const float>(), f); });
  CodecConfig capped = config(8);
  capped.limits.max_elements = 10;
  expect_errc(errc::too_large, [&] { FeatureCodec(capped).encode(sample, f); });
  expect_errc(errc::invalid_argument, [&] { FeatureCodec(config(16)); });
  expect_errc(errc::invalid_argument, [&] { FeatureCodec(config(32)).calibrate(sample); });
  expect_errc(errc::invalid_argument, [&] { FeatureCodec(config(8, Granularity::per_channel, 2)).encode(sample, f); });
}

TEST_CASE("FeatureCodec allocates nothing per frame in steady state", "[wire][codec][alloc]") {
  if (edgesplit_test::allocations() < 0) {
    WARN("allocation counting is unavailable in this build (sanitizer allocator)");
    return;
  }
  const auto x = features(Shape{4, 4096}, 6);
  std::vector<CodecConfig> configs = {config(8), config(32), config(4, Granularity::per_channel, 1)};
  configs.back().calibration.method = CalibrationMethod::percentile;
  configs.push_back(config(2, Granularity::per_channel, 0));
  configs.back().calibration.method = CalibrationMethod::mse;
  if (w::has_zstd) {
    configs.push_back(config(8, Granularity::per_tensor, 1, w::Lossless::zstd));
    configs.push_back(config(32, Granularity::per_tensor, 1, w::Lossless::zstd));
    configs.push_back(config(2, Granularity::per_channel, 1, w::Lossless::zstd));
  }
  for (const CodecConfig& c : configs) {
    FeatureCodec enc(c), dec(c);
    Bytes frame;
    Tensor<float> out;
    for (int warm = 0; warm < 2; ++warm) dec.decode(enc.encode(x, frame), out);
    const long long before = edgesplit_test::allocations();
    for (int i = 0; i < 5; ++i) dec.decode(enc.encode(x, frame), out);
    const long long made = edgesplit_test::allocations() - before;
    INFO("bits " << c.bits << ", lossless " << int(c.lossless));
    CHECK(made == 0);
  }
}

TEST_CASE("The fuzz corpus replays through the fuzzer's entry point", "[wire][fuzz]") {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(EDGESPLIT_CORPUS_DIR))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() >= 10);
  for (const fs::path& p : files) {
    std::ifstream in(p, std::ios::binary);
    const std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto o = edgesplit_fuzz::decode_all(std::as_bytes(std::span(raw)));
    const std::string name = p.filename().string();
    INFO(name);
    if (name.rfind("valid-", 0) == 0 && (w::has_zstd || name.find("zstd") == std::string::npos)) CHECK(o.as_is);
    if (name.rfind("bad-", 0) == 0) CHECK_FALSE(o.as_is);
  }
}

// Writes the seed corpus; run by hand after a format change: edgesplit_tests "[.generate-corpus]"
TEST_CASE("Generate the fuzz seed corpus", "[.generate-corpus]") {
  namespace fs = std::filesystem;
  const fs::path dir = EDGESPLIT_CORPUS_DIR;
  fs::create_directories(dir);
  auto save = [&](const std::string& name, const Bytes& b) {
    std::ofstream(dir / name, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  };
  const auto x = features(Shape{3, 7}, 7);
  save("valid-raw-f32", encode(config(32), x));
  save("valid-int8-per-tensor", encode(config(8), x));
  save("valid-int4-per-channel-axis1", encode(config(4, Granularity::per_channel, 1), x));
  save("valid-int2-per-channel-axis0", encode(config(2, Granularity::per_channel, 0), x));
  save("valid-int8-rank4-axis2", encode(config(8, Granularity::per_channel, 2), features(Shape{2, 2, 3, 2}, 8)));
  CodecConfig sym = config(4);
  sym.symmetric = true;
  sym.calibration.method = CalibrationMethod::mse;
  save("valid-int4-symmetric-mse", encode(sym, x));
  if (w::has_zstd) {
    save("valid-zstd-int8", encode(config(8, Granularity::per_tensor, 1, w::Lossless::zstd), x));
    save("valid-zstd-int2-per-channel", encode(config(2, Granularity::per_channel, 1, w::Lossless::zstd), x));
    save("valid-zstd-raw", encode(config(32, Granularity::per_tensor, 1, w::Lossless::zstd), features(Shape{2, 3}, 9)));
  }
  Bytes b = encode(config(8), x);
  b[40] ^= std::byte{1};
  save("bad-crc", b);
  b = encode(config(8), x);
  b[0] = std::byte{'X'};
  save("bad-magic", b);
  b = encode(config(8), x);
  b.resize(b.size() - 3);
  save("bad-truncated", b);
  b = encode(config(8), x);
  b[4] = std::byte{2};
  reseal(b);
  save("bad-version", b);
  b = encode(config(4, Granularity::per_channel, 1), x);
  w::store_le32(b.data() + 36, 0);
  reseal(b);
  save("bad-zero-dim", b);
  b = encode(config(4, Granularity::per_channel, 1), x);
  w::store_le32(b.data() + 44, 0x7FC00000u);  // a NaN scale
  reseal(b);
  save("bad-scale-nan", b);
  const QuantParams p = QuantParams::tensor(0.5f, 0, 4);
  save("bad-padding", tensor_frame(Shape{5}, 4, w::Lossless::none, &p, bytes_of({0x21, 0x43, 0x15})));
  save("bad-type-ping", [] {
    Bytes ping;
    w::begin_frame(ping, w::MessageType::ping, 1);
    w::finish_frame(ping);
    return ping;
  }());
#if EDGESPLIT_HAS_ZSTD
  Bytes zeros(std::size_t{8} << 20);
  Bytes bomb(ZSTD_compressBound(zeros.size()));
  bomb.resize(ZSTD_compress(bomb.data(), bomb.size(), zeros.data(), zeros.size(), 19));
  const QuantParams p8 = QuantParams::tensor(1, 0);
  save("bad-zstd-bomb", tensor_frame(Shape{16}, 8, w::Lossless::zstd, &p8, bomb));
#endif
}

// ---- The Open Inference Protocol over gRPC: the protobuf codec (wire/protobuf.hpp) and the
// ---- OIP messages (wire/oip_grpc.hpp)

namespace {

namespace oip = edgesplit::wire::oip;
namespace pb = edgesplit::wire::pb;

template <class Message>
Message oip_decode(const Bytes& b, const oip::DecodeLimits& limits = {}) {
  return oip::decode_as<Message>(b, limits);
}

Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// A length-delimited field around `body`, written by hand (tag, one-byte length).
Bytes len_field(int field, const Bytes& body) {
  REQUIRE(body.size() < 128);
  return cat({bytes_of({(field << 3) | 2, static_cast<int>(body.size())}), body});
}

// Unknown fields 99 of every wire type proto3 has: varint, fixed64, length-delimited, fixed32.
Bytes unknown_fields() {
  return bytes_of({0x98, 0x06, 0xAC, 0x02,                                // 99: varint 300
                   0x99, 0x06, 1, 2, 3, 4, 5, 6, 7, 8,                    // 99: fixed64
                   0x9A, 0x06, 0x03, 0x0A, 0x01, 0x7A,                    // 99: 3 bytes (a message)
                   0x9D, 0x06, 0xFF, 0xFF, 0xFF, 0xFF});                  // 99: fixed32
}

// The request the hand-written bytes below encode.
oip::ModelInferRequest hand_request() {
  oip::ModelInferRequest r;
  r.model_name = "m1";
  r.id = "7";
  r.parameters["k"] = std::int64_t{300};
  oip::InferTensor x;
  x.name = "x";
  x.datatype = "FP32";
  x.shape = {1, 2};
  x.contents.fp32_contents = {1.0f, -2.0f};
  r.inputs.push_back(x);
  r.outputs.push_back({"y", {}});
  r.raw_input_contents.push_back(bytes_of({0xDE, 0xAD, 0xBE}));
  return r;
}

// hand_request() derived by hand from the protobuf encoding rules (tag = field << 3 | type).
Bytes hand_request_bytes() {
  return bytes_of({
      0x0A, 0x02, 'm', '1',                            // 1 model_name: LEN 2
      0x1A, 0x01, '7',                                 // 3 id
      0x22, 0x08,                                      // 4 parameters: a map entry of 8 bytes
      0x0A, 0x01, 'k',                                 //   key = 1
      0x12, 0x03, 0x10, 0xAC, 0x02,                    //   value = 2: InferParameter{int64_param (2) = 300}
      0x2A, 0x19,                                      // 5 inputs: InferInputTensor of 25 bytes
      0x0A, 0x01, 'x',                                 //   name
      0x12, 0x04, 'F', 'P', '3', '2',                  //   datatype
      0x1A, 0x02, 0x01, 0x02,                          //   shape, packed: 1, 2
      0x2A, 0x0A,                                      //   contents: 10 bytes
      0x32, 0x08, 0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0,  // fp32_contents (6), packed: 1.0f, -2.0f
      0x32, 0x03, 0x0A, 0x01, 'y',                     // 6 outputs: {name "y"}
      0x3A, 0x03, 0xDE, 0xAD, 0xBE,                    // 7 raw_input_contents
  });
}

// The decode must refuse `b` with `code`, for the message type given.
template <class Message>
void expect_oip_refused(errc code, const Bytes& b, const oip::DecodeLimits& limits = {}) {
  expect_errc(code, [&] { (void)oip_decode<Message>(b, limits); });
}

}  // namespace

TEST_CASE("protobuf varints have the published encodings", "[wire][oip]") {
  const std::vector<std::pair<std::uint64_t, Bytes>> known = {
      {0, bytes_of({0x00})},
      {1, bytes_of({0x01})},
      {127, bytes_of({0x7F})},
      {128, bytes_of({0x80, 0x01})},
      {150, bytes_of({0x96, 0x01})},  // the protobuf guide's example
      {300, bytes_of({0xAC, 0x02})},
      {std::uint64_t{1} << 63, bytes_of({0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01})},
      {~std::uint64_t{0}, bytes_of({0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01})},
  };
  for (const auto& [v, enc] : known) {
    INFO(v);
    Bytes out;
    pb::Writer(out).varint(v);
    CHECK(out == enc);
    CHECK(pb::varint_size(v) == enc.size());
    pb::Reader r(enc);
    CHECK(r.varint("v") == v);
    CHECK(r.at_end());
  }
  // Non-minimal forms are valid protobuf: 0 in 10 bytes, 1 with a padding byte.
  const Bytes padded_bytes = bytes_of({0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 0x81, 0x00});
  pb::Reader padded(padded_bytes);
  CHECK(padded.varint("a") == 0);
  CHECK(padded.varint("b") == 1);
  CHECK(padded.at_end());
  // int32 -1 is sign-extended to 10 bytes; the packed shape {3, 270} is 3 bytes.
  Bytes out;
  pb::Writer w(out);
  w.int32_field(1, -1);
  CHECK(out == bytes_of({0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01}));
  out.clear();
  w.packed_varints(3, std::vector<std::int64_t>{3, 270}, [](std::int64_t d) { return static_cast<std::uint64_t>(d); });
  CHECK(out == bytes_of({0x1A, 0x03, 0x03, 0x8E, 0x02}));
  // A nested message whose body passes 127 bytes gets a 2-byte length in front of it.
  out.clear();
  const std::size_t mark = w.begin_message(2);
  w.bytes_field(1, Bytes(200, std::byte{7}));
  w.end_message(mark);
  REQUIRE(out.size() == 1 + 2 + 1 + 2 + 200);
  CHECK(out[0] == std::byte{0x12});
  CHECK(out[1] == std::byte{0xCB});  // 203 = 0xCB 0x01
  CHECK(out[2] == std::byte{0x01});
  CHECK(out[3] == std::byte{0x0A});
  CHECK(out[4] == std::byte{0xC8});  // 200 = 0xC8 0x01
  CHECK(out[5] == std::byte{0x01});
}

TEST_CASE("protobuf reader refuses malformed varints, tags and lengths", "[wire][oip][errors]") {
  auto read_varint = [](const Bytes& b) { return [b] { pb::Reader(b).varint("v"); }; };
  expect_errc(errc::corrupt_frame, read_varint(bytes_of({})));
  expect_errc(errc::corrupt_frame, read_varint(bytes_of({0x80})));              // truncated
  expect_errc(errc::corrupt_frame, read_varint(bytes_of({0xFF, 0xFF, 0x80})));  // truncated
  // 11 bytes.
  expect_errc(errc::corrupt_frame, read_varint(bytes_of({0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00})));
  // 10 bytes whose last sets bit 64 and above.
  expect_errc(errc::corrupt_frame, read_varint(bytes_of({0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02})));
  expect_errc(errc::corrupt_frame, read_varint(bytes_of({0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F})));
  auto read_tag = [](const Bytes& b) { return [b] { pb::Reader(b).tag(); }; };
  expect_errc(errc::corrupt_frame, read_tag(bytes_of({0x00})));  // field 0, varint
  expect_errc(errc::corrupt_frame, read_tag(bytes_of({0x02})));  // field 0, LEN
  expect_errc(errc::corrupt_frame, read_tag(bytes_of({0x0B})));  // field 1, start group
  expect_errc(errc::corrupt_frame, read_tag(bytes_of({0x0C})));  // field 1, end group
  expect_errc(errc::corrupt_frame, read_tag(bytes_of({0x0E})));  // field 1, wire type 6
  expect_errc(errc::corrupt_frame, read_tag(bytes_of({0x0F})));  // field 1, wire type 7
  expect_errc(errc::corrupt_frame, read_tag(bytes_of({0x80, 0x80, 0x80, 0x80, 0x10})));  // field 2^29
  expect_errc(errc::corrupt_frame, read_tag(bytes_of({0x80, 0x80, 0x80, 0x80, 0x80, 0x01})));  // over 32 bits
  {
    const Bytes largest = bytes_of({0xF8, 0xFF, 0xFF, 0xFF, 0x0F});  // field 2^29 - 1 is the largest
    pb::Reader r(largest);
    CHECK(r.tag().field == pb::max_field_number);
    CHECK(r.at_end());
  }
  auto read_bytes = [](const Bytes& b) { return [b] { pb::Reader(b).bytes("b"); }; };
  expect_errc(errc::corrupt_frame, read_bytes(bytes_of({0x03, 1, 2})));  // length past the end
  expect_errc(errc::corrupt_frame, read_bytes(bytes_of({0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F})));  // 2^63 - 1
  expect_errc(errc::corrupt_frame, [] { pb::Reader(bytes_of({1, 2, 3})).fixed32("f"); });
  expect_errc(errc::corrupt_frame, [] { pb::Reader(bytes_of({1, 2, 3, 4, 5, 6, 7})).fixed64("f"); });
  // Skipping: each wire type checks its own length.
  expect_errc(errc::corrupt_frame, [] { pb::Reader(bytes_of({1, 2, 3})).skip(pb::WireType::fixed32); });
  expect_errc(errc::corrupt_frame, [] { pb::Reader(bytes_of({1, 2, 3, 4, 5, 6, 7})).skip(pb::WireType::fixed64); });
  expect_errc(errc::corrupt_frame, [] { pb::Reader(bytes_of({0x02, 1})).skip(pb::WireType::len); });
  expect_errc(errc::corrupt_frame, [] { pb::Reader(bytes_of({0x81})).skip(pb::WireType::varint); });
}

TEST_CASE("protobuf strings must be UTF-8 and packed fixed-width fields whole", "[wire][oip][errors]") {
  CHECK(pb::valid_utf8("plain"));
  CHECK(pb::valid_utf8("\xC3\xA9\xE2\x86\x92\xF0\x9F\x98\x80"));  // é → 😀
  CHECK_FALSE(pb::valid_utf8("\xC0\xAF"));          // overlong '/'
  CHECK_FALSE(pb::valid_utf8("\xED\xA0\x80"));      // a surrogate
  CHECK_FALSE(pb::valid_utf8("\xF4\x90\x80\x80"));  // above U+10FFFF
  CHECK_FALSE(pb::valid_utf8("\xE2\x86"));          // cut short
  CHECK_FALSE(pb::valid_utf8("\xFF"));
  expect_oip_refused<oip::ModelReadyRequest>(errc::corrupt_frame, bytes_of({0x0A, 0x02, 0xC0, 0xAF}));
  // The encoder refuses what the decoder would.
  expect_errc(errc::invalid_argument, [] { oip::encode(oip::ModelReadyRequest{"\xFF", ""}); });
  // fp32_contents of 5 bytes: not a whole number of floats.
  const Bytes tensor = len_field(5, bytes_of({0x32, 0x05, 0, 0, 0x80, 0x3F, 0}));
  expect_oip_refused<oip::ModelInferRequest>(errc::corrupt_frame, len_field(5, tensor));
  // A known field sent with another wire type than its declared one.
  expect_oip_refused<oip::ModelInferRequest>(errc::corrupt_frame, bytes_of({0x08, 0x01}));  // model_name as varint
  expect_oip_refused<oip::ServerLiveResponse>(errc::corrupt_frame, bytes_of({0x0D, 0, 0, 0, 0}));  // live as fixed32
  expect_oip_refused<oip::ModelInferResponse>(errc::corrupt_frame, len_field(5, bytes_of({0x1D, 1, 0, 0, 0})));  // shape as fixed32
}

TEST_CASE("A ModelInferRequest encodes to the bytes derived by hand and back", "[wire][oip]") {
  const Bytes expected = hand_request_bytes();
  CHECK(oip::encode(hand_request()) == expected);
  const auto r = oip_decode<oip::ModelInferRequest>(expected);
  CHECK(r == hand_request());
  CHECK(r.model_name == "m1");
  CHECK(r.model_version.empty());
  CHECK(std::get<std::int64_t>(r.parameters.at("k")) == 300);
  REQUIRE(r.inputs.size() == 1);
  CHECK(r.inputs[0].shape == std::vector<std::int64_t>{1, 2});
  CHECK(r.inputs[0].contents.fp32_contents == std::vector<float>{1.0f, -2.0f});
  REQUIRE(r.raw_input_contents.size() == 1);
  CHECK(r.raw_input_contents[0] == bytes_of({0xDE, 0xAD, 0xBE}));
}

TEST_CASE("A ModelInferResponse and the small messages encode to the bytes derived by hand", "[wire][oip]") {
  oip::ModelInferResponse r;
  r.model_name = "m";
  oip::InferTensor y;
  y.name = "y";
  y.datatype = "INT64";
  y.shape = {2};
  y.contents.int64_contents = {-1, 5};
  r.outputs.push_back(y);
  r.raw_output_contents.push_back(bytes_of({1, 2}));
  const Bytes expected = bytes_of({
      0x0A, 0x01, 'm',                                   // 1 model_name
      0x2A, 0x1C,                                        // 5 outputs: 28 bytes
      0x0A, 0x01, 'y', 0x12, 0x05, 'I', 'N', 'T', '6', '4', 0x1A, 0x01, 0x02,
      0x2A, 0x0D, 0x1A, 0x0B,                            //   contents, int64_contents (3) packed: 11 bytes
      0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x05,  // -1 (10 bytes), 5
      0x32, 0x02, 0x01, 0x02,                            // 6 raw_output_contents
  });
  CHECK(oip::encode(r) == expected);
  CHECK(oip_decode<oip::ModelInferResponse>(expected) == r);

  CHECK(oip::encode(oip::ServerLiveResponse{true}) == bytes_of({0x08, 0x01}));
  CHECK(oip::encode(oip::ServerLiveResponse{false}).empty());  // proto3 leaves defaults out
  CHECK(oip::encode(oip::ServerReadyRequest{}).empty());
  CHECK(oip::encode(oip::ModelReadyRequest{"a", "2"}) == bytes_of({0x0A, 0x01, 'a', 0x12, 0x01, '2'}));
  CHECK(oip::encode(oip::ServerMetadataResponse{"s", "", {"x", "yz"}}) ==
        bytes_of({0x0A, 0x01, 's', 0x1A, 0x01, 'x', 0x1A, 0x02, 'y', 'z'}));
  // TensorMetadata with a variable dimension: -1 is ten bytes.
  CHECK(oip::encode(oip::ModelMetadataResponse{"", {}, "", {{"i", "", {-1}}}, {}}) ==
        bytes_of({0x22, 0x0F, 0x0A, 0x01, 'i', 0x1A, 0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01}));
  // Every parameter kind: bool 1, int64 2, string 3, double 4, uint64 5, and none.
  oip::ModelInferRequest p;
  p.parameters["a"] = true;
  p.parameters["b"] = std::int64_t{-2};
  p.parameters["c"] = std::string("s");
  p.parameters["d"] = 1.5;
  p.parameters["e"] = std::uint64_t{9};
  p.parameters["f"] = std::monostate{};
  const Bytes params = cat({
      len_field(4, bytes_of({0x0A, 0x01, 'a', 0x12, 0x02, 0x08, 0x01})),
      len_field(4, bytes_of({0x0A, 0x01, 'b', 0x12, 0x0B, 0x10, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01})),
      len_field(4, bytes_of({0x0A, 0x01, 'c', 0x12, 0x03, 0x1A, 0x01, 's'})),
      len_field(4, bytes_of({0x0A, 0x01, 'd', 0x12, 0x09, 0x21, 0, 0, 0, 0, 0, 0, 0xF8, 0x3F})),
      len_field(4, bytes_of({0x0A, 0x01, 'e', 0x12, 0x02, 0x28, 0x09})),
      len_field(4, bytes_of({0x0A, 0x01, 'f', 0x12, 0x00})),
  });
  CHECK(oip::encode(p) == params);
  CHECK(oip_decode<oip::ModelInferRequest>(params) == p);
}

TEST_CASE("Every OIP gRPC message round-trips with realistic content", "[wire][oip]") {
  const auto req = edgesplit_fuzz::oip_sample_request();
  const auto got = oip_decode<oip::ModelInferRequest>(oip::encode(req));
  CHECK(got == req);
  CHECK(std::get<std::string>(got.parameters.at("tag")) == "édge → cloud");
  CHECK(std::get<std::uint64_t>(got.parameters.at("big")) == ~std::uint64_t{0});
  CHECK(got.parameters.at("unset").index() == 0);
  CHECK(got.inputs.at(0).contents.fp32_contents.size() == 240);
  CHECK(got.inputs.at(0).contents.fp32_contents[239] == 239 * 0.125f - 3.0f);
  CHECK(got.inputs.at(1).contents.int64_contents.at(2) == std::numeric_limits<std::int64_t>::min());
  CHECK(got.inputs.at(2).contents.int_contents == std::vector<std::int32_t>{-128, 0, 127});

  const auto raw = edgesplit_fuzz::oip_sample_raw_request();
  CHECK(oip_decode<oip::ModelInferRequest>(oip::encode(raw)) == raw);
  // A big raw tensor: the length varint takes 3 bytes, the bytes come back whole.
  auto big = raw;
  big.raw_input_contents[0] = edgesplit_fuzz::oip_sample_raw_floats(50000);
  const auto big_back = oip_decode<oip::ModelInferRequest>(oip::encode(big));
  REQUIRE(big_back.raw_input_contents.size() == 1);
  CHECK(big_back.raw_input_contents[0].size() == 200000);
  CHECK(big_back == big);

  const auto resp = edgesplit_fuzz::oip_sample_response();
  const auto resp_back = oip_decode<oip::ModelInferResponse>(oip::encode(resp));
  CHECK(resp_back == resp);
  CHECK(resp_back.outputs.at(1).contents.bool_contents == std::vector<bool>{true, false, true});
  CHECK(resp_back.outputs.at(1).contents.bytes_contents.at(2) == std::string("\0\xff", 2));
  CHECK(std::signbit(resp_back.outputs.at(1).contents.fp64_contents.at(1)));  // -0.0 kept
  // NaN payloads travel bit for bit (== cannot say so: NaN != NaN).
  auto nan = resp;
  nan.outputs[0].contents.fp32_contents[3] = std::bit_cast<float>(0x7FC01234u);
  const auto nan_back = oip_decode<oip::ModelInferResponse>(oip::encode(nan));
  CHECK(std::bit_cast<std::uint32_t>(nan_back.outputs[0].contents.fp32_contents[3]) == 0x7FC01234u);

  const auto md = edgesplit_fuzz::oip_sample_metadata();
  CHECK(oip_decode<oip::ModelMetadataResponse>(oip::encode(md)) == md);
  const auto sm = edgesplit_fuzz::oip_sample_server_metadata();
  CHECK(oip_decode<oip::ServerMetadataResponse>(oip::encode(sm)) == sm);
  const oip::ModelReadyRequest mr{"resnet-tail", "3"};
  CHECK(oip_decode<oip::ModelReadyRequest>(oip::encode(mr)) == mr);
  const oip::ModelMetadataRequest mm{"resnet-tail", ""};
  CHECK(oip_decode<oip::ModelMetadataRequest>(oip::encode(mm)) == mm);
  for (bool v : {false, true}) {
    CHECK(oip_decode<oip::ServerLiveResponse>(oip::encode(oip::ServerLiveResponse{v})).live == v);
    CHECK(oip_decode<oip::ServerReadyResponse>(oip::encode(oip::ServerReadyResponse{v})).ready == v);
    CHECK(oip_decode<oip::ModelReadyResponse>(oip::encode(oip::ModelReadyResponse{v})).ready == v);
  }
  CHECK_NOTHROW(oip_decode<oip::ServerLiveRequest>(Bytes{}));
  CHECK_NOTHROW(oip_decode<oip::ServerMetadataRequest>(Bytes{}));
  // Decoding replaces what `out` held.
  auto reused = req;
  oip::decode(oip::encode(raw), reused);
  CHECK(reused == raw);
}

TEST_CASE("Unknown fields of every wire type are skipped at every level", "[wire][oip]") {
  const Bytes u = unknown_fields();
  // Top level, before and after the known fields.
  CHECK(oip_decode<oip::ModelInferRequest>(cat({u, hand_request_bytes(), u})) == hand_request());
  // Inside the map entry, the InferParameter, the tensor and its contents, the requested output.
  const Bytes nested = cat({
      bytes_of({0x0A, 0x02, 'm', '1', 0x1A, 0x01, '7'}),
      len_field(4, cat({u, bytes_of({0x0A, 0x01, 'k'}), len_field(2, cat({u, bytes_of({0x10, 0xAC, 0x02}), u}))})),
      len_field(5, cat({bytes_of({0x0A, 0x01, 'x', 0x12, 0x04, 'F', 'P', '3', '2'}), u, bytes_of({0x1A, 0x02, 0x01, 0x02}),
                        len_field(5, cat({u, bytes_of({0x32, 0x08, 0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0}), u}))})),
      len_field(6, cat({u, bytes_of({0x0A, 0x01, 'y'})})),
      bytes_of({0x3A, 0x03, 0xDE, 0xAD, 0xBE}),
  });
  CHECK(oip_decode<oip::ModelInferRequest>(nested) == hand_request());
  // The field-less requests and the one-bool responses skip them too.
  CHECK_NOTHROW(oip_decode<oip::ServerLiveRequest>(u));
  CHECK(oip_decode<oip::ServerReadyResponse>(cat({u, bytes_of({0x08, 0x01}), u})).ready);
  CHECK(oip_decode<oip::ModelMetadataRequest>(cat({u, bytes_of({0x0A, 0x01, 'n'})})).name == "n");
  // A field number the OIP messages do not have, with a large number and a long body.
  CHECK(oip_decode<oip::ModelReadyResponse>(cat({bytes_of({0xF8, 0xFF, 0xFF, 0xFF, 0x0F, 0x05}), bytes_of({0x08, 0x01})})).ready);
}

TEST_CASE("Unpacked repeated scalars and protobuf merge rules are honoured", "[wire][oip]") {
  // shape as three unpacked varints, then one packed run: all append.
  const Bytes tensor = bytes_of({0x1A, 0x01, 0x04, 0x18, 0x02, 0x18, 0x03, 0x1A, 0x02, 0x05, 0x06,
                                 // contents sent twice: merged (fp32 unpacked, then packed; int_contents unpacked -1)
                                 0x2A, 0x05, 0x35, 0x00, 0x00, 0x80, 0x3F,
                                 0x2A, 0x11, 0x32, 0x04, 0x00, 0x00, 0x00, 0x40, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01});
  const auto r = oip_decode<oip::ModelInferResponse>(len_field(5, tensor));
  REQUIRE(r.outputs.size() == 1);
  CHECK(r.outputs[0].shape == std::vector<std::int64_t>{4, 2, 3, 5, 6});
  CHECK(r.outputs[0].contents.fp32_contents == std::vector<float>{1.0f, 2.0f});
  CHECK(r.outputs[0].contents.int_contents == std::vector<std::int32_t>{-1});
  // A singular field sent twice keeps the last value; a map key sent twice too.
  const Bytes twice = cat({bytes_of({0x0A, 0x01, 'a', 0x0A, 0x01, 'b'}),
                           len_field(4, bytes_of({0x0A, 0x01, 'k', 0x12, 0x02, 0x08, 0x01})),
                           len_field(4, bytes_of({0x0A, 0x01, 'k', 0x12, 0x02, 0x28, 0x07}))});
  const auto t = oip_decode<oip::ModelInferRequest>(twice);
  CHECK(t.model_name == "b");
  REQUIRE(t.parameters.size() == 1);
  CHECK(std::get<std::uint64_t>(t.parameters.at("k")) == 7);
  // A map entry without key or value: the empty key, no value.
  const auto e = oip_decode<oip::ModelInferRequest>(bytes_of({0x22, 0x00}));
  REQUIRE(e.parameters.count("") == 1);
  CHECK(e.parameters.at("").index() == 0);
  // The last member of a oneof sent wins; a bool of 2 and an int32 of 2^32 + 5 read as protobuf reads them.
  const auto o = oip_decode<oip::ModelInferRequest>(len_field(4, bytes_of({0x0A, 0x01, 'k', 0x12, 0x05, 0x08, 0x02, 0x1A, 0x01, 'z'})));
  CHECK(std::get<std::string>(o.parameters.at("k")) == "z");
  CHECK(oip_decode<oip::ServerLiveResponse>(bytes_of({0x08, 0x02})).live);
  const auto i = oip_decode<oip::ModelInferResponse>(len_field(5, len_field(5, bytes_of({0x10, 0x85, 0x80, 0x80, 0x80, 0x10}))));
  CHECK(i.outputs.at(0).contents.int_contents == std::vector<std::int32_t>{5});
}

TEST_CASE("Malformed OIP gRPC messages are refused with corrupt_frame", "[wire][oip][errors]") {
  using Req = oip::ModelInferRequest;
  using Resp = oip::ModelInferResponse;
  expect_oip_refused<Req>(errc::corrupt_frame, bytes_of({0x0A, 0x80}));                 // truncated length varint
  expect_oip_refused<Req>(errc::corrupt_frame, bytes_of({0x88}));                       // truncated tag
  expect_oip_refused<Req>(errc::corrupt_frame, bytes_of({0x0A, 0x05, 'a', 'b'}));       // length past the end
  expect_oip_refused<Req>(errc::corrupt_frame,                                          // 11-byte varint
                          bytes_of({0x98, 0x06, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00}));
  expect_oip_refused<Req>(errc::corrupt_frame, bytes_of({0x0E, 0x00}));                 // wire type 6
  expect_oip_refused<Req>(errc::corrupt_frame, bytes_of({0x0F, 0x00}));                 // wire type 7
  expect_oip_refused<Req>(errc::corrupt_frame, bytes_of({0x00, 0x00}));                 // field 0
  expect_oip_refused<Req>(errc::corrupt_frame, bytes_of({0x9B, 0x06, 0x9C, 0x06}));     // a group (99), start and end
  expect_oip_refused<Req>(errc::corrupt_frame, bytes_of({0x9C, 0x06}));                 // a lone end group
  expect_oip_refused<oip::ServerLiveRequest>(errc::corrupt_frame, bytes_of({0x0B, 0x0C}));  // groups even where nothing is read
  // A nested message whose declared length runs past its parent: the tensor says 3 bytes of
  // name inside a tensor of 2 bytes, though the bytes after the parent would cover it.
  expect_oip_refused<Req>(errc::corrupt_frame, bytes_of({0x2A, 0x02, 0x0A, 0x03, 'a', 'b', 'c', 0x1A, 0x00}));
  // The same one level deeper: contents saying 8 bytes of fp32 inside 4.
  expect_oip_refused<Resp>(errc::corrupt_frame, len_field(5, bytes_of({0x2A, 0x04, 0x32, 0x08, 0, 0, 0, 0, 0, 0, 0x80, 0x3F})));
  // Negative dimensions: refused in inference tensors, -1 allowed in metadata only.
  expect_oip_refused<Req>(errc::corrupt_frame, len_field(5, bytes_of({0x18, 0x7F, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01})));
  expect_oip_refused<Resp>(errc::corrupt_frame, len_field(5, bytes_of({0x1A, 0x0A, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01})));
  CHECK(oip_decode<oip::ModelMetadataResponse>(len_field(4, bytes_of({0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01})))
            .inputs.at(0).shape == std::vector<std::int64_t>{-1});
  expect_oip_refused<oip::ModelMetadataResponse>(errc::corrupt_frame, len_field(4, bytes_of({0x18, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01})));
  expect_errc(errc::invalid_argument, [] {
    oip::ModelInferRequest r;
    r.inputs.push_back({"x", "FP32", {1, -1}, {}, {}});
    oip::encode(r);
  });
  expect_errc(errc::invalid_argument, [] { oip::encode(oip::ModelMetadataResponse{"", {}, "", {{"i", "", {-2}}}, {}}); });
  // Every prefix of a valid request either decodes to the fields it holds whole (it ends on a
  // field boundary) or is refused as truncated.
  const Bytes full = oip::encode(edgesplit_fuzz::oip_sample_request());
  std::size_t refused = 0;
  for (std::size_t n = 0; n < full.size(); ++n) {
    const Bytes prefix(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    try {
      const auto r = oip_decode<Req>(prefix);
      INFO("prefix of " << n << " bytes");
      CHECK(oip::encode(r) == prefix);
    } catch (const error& e) {
      CHECK(e.code() == errc::corrupt_frame);
      ++refused;
    }
  }
  CHECK(refused > full.size() * 9 / 10);
}

TEST_CASE("OIP gRPC decoding enforces its limits with too_large", "[wire][oip][errors]") {
  const auto req = edgesplit_fuzz::oip_sample_request();
  const Bytes b = oip::encode(req);
  oip::DecodeLimits l;
  l.max_message_bytes = b.size() - 1;
  expect_oip_refused<oip::ModelInferRequest>(errc::too_large, b, l);
  l.max_message_bytes = b.size();
  CHECK(oip_decode<oip::ModelInferRequest>(b, l) == req);  // exactly at every limit below: accepted

  l = {};
  l.max_tensors = 2;  // the request has three inputs
  expect_oip_refused<oip::ModelInferRequest>(errc::too_large, b, l);
  l.max_tensors = 3;
  CHECK_NOTHROW(oip_decode<oip::ModelInferRequest>(b, l));
  l = {};
  l.max_dims = 2;  // "features" has three dimensions
  expect_oip_refused<oip::ModelInferRequest>(errc::too_large, b, l);
  l.max_dims = 3;
  CHECK_NOTHROW(oip_decode<oip::ModelInferRequest>(b, l));
  l = {};
  l.max_parameters = 5;  // the request has six parameters
  expect_oip_refused<oip::ModelInferRequest>(errc::too_large, b, l);
  l.max_parameters = 6;
  CHECK_NOTHROW(oip_decode<oip::ModelInferRequest>(b, l));
  l = {};
  l.max_string_bytes = 15;  // the parameter key "binary_data_size" has 16 bytes
  expect_oip_refused<oip::ModelInferRequest>(errc::too_large, b, l);
  l.max_string_bytes = 16;
  CHECK_NOTHROW(oip_decode<oip::ModelInferRequest>(b, l));
  l = {};
  l.max_elements = 240 + 4 + 3 - 1;  // every element of every input
  expect_oip_refused<oip::ModelInferRequest>(errc::too_large, b, l);
  l.max_elements = 240 + 4 + 3;
  CHECK_NOTHROW(oip_decode<oip::ModelInferRequest>(b, l));
  // Raw contents, versions, extensions count against max_tensors too; bytes_contents against max_elements.
  l = {};
  l.max_tensors = 1;
  oip::ModelInferResponse two_raw;
  two_raw.raw_output_contents = {bytes_of({1}), bytes_of({2})};
  expect_oip_refused<oip::ModelInferResponse>(errc::too_large, oip::encode(two_raw), l);
  expect_oip_refused<oip::ModelMetadataResponse>(errc::too_large, oip::encode(edgesplit_fuzz::oip_sample_metadata()), l);
  expect_oip_refused<oip::ServerMetadataResponse>(errc::too_large, oip::encode(edgesplit_fuzz::oip_sample_server_metadata()), l);
  l = {};
  l.max_elements = 4;
  oip::ModelInferResponse strings;
  strings.outputs.push_back({"s", "BYTES", {5}, {}, {}});
  strings.outputs[0].contents.bytes_contents = {"a", "b", "c", "d", "e"};
  expect_oip_refused<oip::ModelInferResponse>(errc::too_large, oip::encode(strings), l);
  // A packed run of one-byte varints counts element by element, before it is stored.
  const Bytes packed = len_field(5, len_field(5, bytes_of({0x1A, 0x05, 1, 2, 3, 4, 5})));
  expect_oip_refused<oip::ModelInferResponse>(errc::too_large, packed, l);
  l.max_elements = 5;
  CHECK(oip_decode<oip::ModelInferResponse>(packed, l).outputs.at(0).contents.int64_contents.size() == 5);

  // Decoded memory, charged before it is allocated: a packed run exactly (5 int64 = 40 bytes),
  // an unpacked element twice its size (the vector's growth), a string element two std::strings
  // and its bytes, raw contents their bytes.
  l = {};
  l.max_decoded_bytes = 39;
  expect_oip_refused<oip::ModelInferResponse>(errc::too_large, packed, l);
  l.max_decoded_bytes = 40;
  CHECK(oip_decode<oip::ModelInferResponse>(packed, l).outputs.at(0).contents.int64_contents.size() == 5);
  const Bytes unpacked = len_field(5, len_field(5, bytes_of({0x18, 1, 0x18, 2})));  // int64_contents 1, 2
  l.max_decoded_bytes = 2 * 16 - 1;
  expect_oip_refused<oip::ModelInferResponse>(errc::too_large, unpacked, l);
  l.max_decoded_bytes = 2 * 16;
  CHECK(oip_decode<oip::ModelInferResponse>(unpacked, l).outputs.at(0).contents.int64_contents == std::vector<std::int64_t>{1, 2});
  l.max_decoded_bytes = 5 * (2 * sizeof(std::string) + 1) - 1;
  expect_oip_refused<oip::ModelInferResponse>(errc::too_large, oip::encode(strings), l);
  l.max_decoded_bytes = 5 * (2 * sizeof(std::string) + 1);
  CHECK(oip_decode<oip::ModelInferResponse>(oip::encode(strings), l) == strings);
  l.max_decoded_bytes = 1;
  expect_oip_refused<oip::ModelInferResponse>(errc::too_large, oip::encode(two_raw), l);
  l.max_decoded_bytes = 2;
  CHECK(oip_decode<oip::ModelInferResponse>(oip::encode(two_raw), l) == two_raw);
}

TEST_CASE("The OIP gRPC fuzz corpus replays through the fuzzer's entry point", "[wire][oip][fuzz]") {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(EDGESPLIT_OIP_GRPC_CORPUS_DIR))
    if (e.is_regular_file() && e.path().filename() != "README") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() >= 10);
  std::size_t valid = 0, bad = 0;
  for (const fs::path& p : files) {
    std::ifstream in(p, std::ios::binary);
    const std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto o = edgesplit_fuzz::decode_oip_grpc(std::as_bytes(std::span(raw)));
    // valid-<kind>-<what> and bad-<kind>-<what>: whether the bytes decode as <kind>.
    const std::string name = p.filename().string();
    INFO(name);
    const auto first = name.find('-');
    const auto second = name.find('-', first + 1);
    REQUIRE(second != std::string::npos);
    const std::string kind = name.substr(first + 1, second - first - 1);
    REQUIRE(edgesplit_fuzz::oip_kind_index(kind) >= 0);
    if (name.rfind("valid-", 0) == 0) {
      CHECK(o.as(kind));
      ++valid;
    } else {
      REQUIRE(name.rfind("bad-", 0) == 0);
      CHECK_FALSE(o.as(kind));
      ++bad;
    }
  }
  CHECK(valid >= 8);
  CHECK(bad >= 3);
}

// Writes the OIP gRPC seed corpus; run by hand after a format change:
//   edgesplit_tests "[.generate-oip-grpc-corpus]"
TEST_CASE("Generate the OIP gRPC fuzz seed corpus", "[.generate-oip-grpc-corpus]") {
  namespace fs = std::filesystem;
  const fs::path dir = EDGESPLIT_OIP_GRPC_CORPUS_DIR;
  fs::create_directories(dir);
  auto save = [&](const std::string& name, const Bytes& b) {
    std::ofstream(dir / name, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  };
  for (const auto& s : edgesplit_fuzz::oip_sample_messages()) save("valid-" + s.kind + "-" + s.name, s.bytes);
  save("valid-model_infer_request-hand", cat({unknown_fields(), hand_request_bytes()}));
  Bytes b = oip::encode(edgesplit_fuzz::oip_sample_request());
  b.resize(b.size() - 3);
  save("bad-model_infer_request-truncated", b);
  save("bad-model_infer_request-negative-dim", len_field(5, bytes_of({0x1A, 0x02, 0x01, 0x7F, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01})));
  save("bad-model_infer_request-nested-past-parent", bytes_of({0x2A, 0x02, 0x0A, 0x03, 'a', 'b', 'c', 0x1A, 0x00}));
  save("bad-model_infer_response-group", cat({bytes_of({0x0A, 0x01, 'm'}), bytes_of({0x9B, 0x06, 0x9C, 0x06})}));
  save("bad-model_infer_response-long-varint",
       bytes_of({0x2A, 0x0D, 0x18, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 0x00}));
  save("bad-model_ready_request-utf8", bytes_of({0x0A, 0x02, 0xC0, 0xAF}));
}
