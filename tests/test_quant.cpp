// Tests for quant/: the quantizers (scalar reference vs SIMD, bit for bit), bit packing,
// calibration, parameter validation, the int8 GEMV kernels and QuantizedDense/quantize_model.
#include <catch2/catch.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "alloc_counter.hpp"
#include "edgesplit/edgesplit.hpp"
#include "test_util.hpp"

using namespace edgesplit;
using edgesplit_test::expect_errc;

namespace {

constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();
constexpr float inf_f = std::numeric_limits<float>::infinity();
constexpr double unit_roundoff = std::numeric_limits<float>::epsilon() / 2;

// Values from `rng`: mostly uniform in [lo, hi], with some outliers, exact ties of the rounding
// (k + 0.5 steps when `step` is a power of two) and special values, so that every branch of the
// quantizer (rounding, saturation, NaN) is taken inside SIMD bodies and scalar tails alike.
std::vector<float> mixed_values(std::size_t n, Rng& rng, float lo, float hi, float step) {
  std::vector<float> v(n);
  for (float& x : v) {
    const auto kind = rng.below(20);
    if (kind == 0)
      x = static_cast<float>(rng.uniform(-1e3, 1e3)) * (hi - lo);  // far outside: saturates
    else if (kind == 1)
      x = (static_cast<float>(rng.below(40)) - 20.0f + 0.5f) * step;  // a tie
    else if (kind == 2)
      x = std::array<float, 5>{nan_f, inf_f, -inf_f, 0.0f, -0.0f}[rng.below(5)];
    else
      x = static_cast<float>(rng.uniform(lo, hi));
  }
  return v;
}

template <class T>
bool same_bits(const T* a, const T* b, std::size_t n) {
  return n == 0 || std::memcmp(a, b, n * sizeof(T)) == 0;
}

// Quantizes and dequantizes with the three kernel sets and requires identical bits.
void check_kernel_sets_agree(const std::vector<float>& x, const Shape& shape, const QuantParams& p) {
  TensorView<const float> xv(x.data(), shape);
  Tensor<std::int8_t> q_ref(shape), q_simd(shape), q_xsimd(shape);
  quantize_scalar(xv, p, q_ref.view());
  quantize(xv, p, q_simd.view());
  detail::quantize_with<kernels::XsimdQuantKernels>(xv, p, q_xsimd.view());
  CHECK(same_bits(q_ref.data(), q_simd.data(), q_ref.size()));
  CHECK(same_bits(q_ref.data(), q_xsimd.data(), q_ref.size()));
  Tensor<float> d_ref(shape), d_simd(shape), d_xsimd(shape);
  dequantize_scalar(q_ref.cview(), p, d_ref.view());
  dequantize(q_ref.cview(), p, d_simd.view());
  detail::dequantize_with<kernels::XsimdQuantKernels>(q_ref.cview(), p, d_xsimd.view());
  CHECK(same_bits(d_ref.data(), d_simd.data(), d_ref.size()));
  CHECK(same_bits(d_ref.data(), d_xsimd.data(), d_ref.size()));
}

QuantParams random_channel_params(std::size_t channels, int axis, int bits, Rng& rng) {
  QuantParams p;
  p.bits = bits;
  p.axis = axis;
  p.scale.resize(channels);
  p.zero_point.resize(channels);
  for (std::size_t c = 0; c < channels; ++c) {
    p.scale[c] = static_cast<float>(std::ldexp(rng.uniform(1, 2), static_cast<int>(rng.below(8)) - 6));
    p.zero_point[c] = code_min(bits) + static_cast<int>(rng.below(1u << bits));
  }
  return p;
}

}  // namespace

TEST_CASE("Quantization rounds half to even, saturates, and sends NaN to the lowest code", "[quant]") {
  // scale 1, zero point 0: the code is the rounded value itself, clamped.
  const std::vector<float> x = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, 127.5f, 1000.0f,
                                -1000.0f, nan_f, inf_f, -inf_f, -128.5f, 3.49f, -3.51f};
  const std::vector<int> want8 = {0, 2, 2, 0, -2, -2, 126, 127, 127, -128, -128, 127, -128, -128, 3, -4};
  // Repeated so each value lands in SIMD bodies (32 wide) and in tails.
  std::vector<float> xs;
  std::vector<int> ws;
  for (int r = 0; r < 7; ++r) {
    xs.insert(xs.end(), x.begin(), x.end());
    ws.insert(ws.end(), want8.begin(), want8.end());
  }
  xs.push_back(2.5f);
  ws.push_back(2);
  const Shape s{xs.size()};
  Tensor<std::int8_t> q(s);
  for (auto run : {&quantize, &quantize_scalar}) {
    run(TensorView<const float>(xs.data(), s), QuantParams::tensor(1.0f, 0, 8), q.view());
    for (std::size_t i = 0; i < xs.size(); ++i) {
      INFO("x = " << xs[i]);
      CHECK(int{q[i]} == ws[i]);
    }
  }
  // 4 and 2 bits, with a zero point: code = clamp(round(x / 0.5) + zp).
  const std::vector<float> y = {0.0f, 0.25f, 0.75f, 1.0f, 100.0f, -100.0f, -0.75f};
  const Shape ys{y.size()};
  Tensor<std::int8_t> q4(ys), q2(ys);
  quantize(TensorView<const float>(y.data(), ys), QuantParams::tensor(0.5f, 3, 4), q4.view());
  quantize(TensorView<const float>(y.data(), ys), QuantParams::tensor(0.5f, -1, 2), q2.view());
  const std::vector<int> want4 = {3, 3, 5, 5, 7, -8, 1};    // 0.5->0, 1.5->2, 2, 200, -200, -1.5->-2
  const std::vector<int> want2 = {-1, -1, 1, 1, 1, -2, -2};  // the same, plus zero point -1, clamped
  for (std::size_t i = 0; i < y.size(); ++i) {
    CHECK(int{q4[i]} == want4[i]);
    CHECK(int{q2[i]} == want2[i]);
  }
}

TEST_CASE("SIMD and scalar quantize/dequantize are bit-identical per tensor", "[quant][simd]") {
  Rng rng(11);
  for (int bits : {8, 4, 2}) {
    // (1 << 18) + 33 floats: past Avx2QuantKernels::prefetch_bytes (1 MiB), the prefetching loop.
    for (std::size_t n : std::initializer_list<std::size_t>{0, 1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 100, 1000, 4099,
                                                           (1u << 18) + 33}) {
      const float scale = rng.below(2) ? 0.25f : static_cast<float>(rng.uniform(0.001, 0.3));
      const int zp = code_min(bits) + static_cast<int>(rng.below(1u << bits));
      const auto x = mixed_values(n, rng, -20 * scale, 20 * scale, scale);
      INFO("bits " << bits << ", n " << n << ", scale " << scale << ", zero point " << zp);
      if (n == 0) continue;  // a Shape has no zero-sized dimension here; the kernels are fine with n = 0
      check_kernel_sets_agree(x, Shape{n}, QuantParams::tensor(scale, zp, bits));
    }
  }
  // The kernels themselves on an empty range write nothing.
  std::int8_t q = 42;
  kernels::NativeQuantKernels::quantize_run(nullptr, &q, 0, 1.0f, 0, 8);
  CHECK(q == 42);
}

#if defined(__AVX2__)
TEST_CASE("Streaming-store dequantize equals the reference at every alignment", "[quant][simd]") {
  // dequantize_run switches to it for outputs of 32 MiB and more; here it runs on small ones.
  Rng rng(21);
  std::vector<std::int8_t> q(300);
  for (auto& v : q) v = static_cast<std::int8_t>(int(rng.below(256)) - 128);
  std::vector<float> want(300), got(310);
  for (std::size_t off = 0; off < 9; ++off)
    for (std::size_t n : {0, 1, 7, 8, 9, 40, 257, 300}) {
      kernels::ScalarQuantKernels::dequantize_run(q.data(), want.data(), n, 0.37f, -3);
      kernels::Avx2QuantKernels::dequantize_run_streaming(q.data(), got.data() + off, n, 0.37f, -3);
      CHECK(same_bits(want.data(), got.data() + off, n));
    }
}
#endif

TEST_CASE("SIMD and scalar agree per channel along every axis, and match index arithmetic", "[quant][simd]") {
  Rng rng(12);
  const Shape shape{3, 37, 5, 2};
  for (int bits : {8, 4, 2})
    for (int axis = 0; axis < 4; ++axis) {
      const std::size_t channels = shape[static_cast<std::size_t>(axis)];
      const QuantParams p = random_channel_params(channels, axis, bits, rng);
      const auto x = mixed_values(shape.count(), rng, -10, 10, 0.25f);
      INFO("bits " << bits << ", axis " << axis);
      check_kernel_sets_agree(x, shape, p);
      // Element i belongs to channel (i / inner) % channels.
      std::size_t inner = 1;
      for (std::size_t d = static_cast<std::size_t>(axis) + 1; d < shape.rank(); ++d) inner *= shape[d];
      Tensor<std::int8_t> q(shape);
      quantize(TensorView<const float>(x.data(), shape), p, q.view());
      const kernels::CodeRange r(bits);
      bool all = true;
      for (std::size_t i = 0; i < shape.count(); ++i) {
        const std::size_t c = (i / inner) % channels;
        all &= q[i] == kernels::quantize_one(x[i], 1.0f / p.scale[c], static_cast<float>(p.zero_point[c]), r.lo, r.hi);
      }
      CHECK(all);
    }
  // The last axis with many channels: the row kernels' SIMD bodies.
  const Shape wide{4, 70};
  const QuantParams p = random_channel_params(70, 1, 8, rng);
  check_kernel_sets_agree(mixed_values(wide.count(), rng, -3, 3, 0.5f), wide, p);
}

TEST_CASE("Dequantized values are within half a step of values inside the range", "[quant]") {
  Rng rng(13);
  for (int bits : {8, 4, 2})
    for (bool symmetric : {false, true}) {
      Tensor<float> x(Shape{16, 33});
      for (float& v : x.span()) v = static_cast<float>(rng.uniform(-3, 5));
      Quantizer qz(QuantConfig{bits, Granularity::per_channel, 1, symmetric, {}});
      const QuantParams& p = qz.calibrate(x);
      Tensor<std::int8_t> q(x.shape());
      Tensor<float> y(x.shape());
      qz.quantize(x, q.view());
      qz.dequantize(q, y.view());
      // Min-max calibration covers every value. x * fl(1/s) carries at most two roundings
      // (relative u each), so the code is within 1/2 + 2u|x/s| steps of x/s; dequantizing rounds
      // once more (relative u of |y|). Hence |x - y| <= s/2 + 2u|x| + u|y| <= s/2 + 3u(|x| + s).
      bool all = true;
      for (std::size_t i = 0; i < x.size(); ++i) {
        const double s = p.scale[i % 33];
        all &= std::abs(double(x[i]) - y[i]) <= s / 2 + 3 * unit_roundoff * (std::abs(x[i]) + s);
      }
      INFO("bits " << bits << (symmetric ? " symmetric" : " asymmetric"));
      CHECK(all);
    }
}

TEST_CASE("Sub-byte codes pack least significant bits first and unpack with their sign", "[quant][pack]") {
  std::vector<std::byte> b(1);
  const std::vector<std::int8_t> c4 = {1, -2};
  pack_codes(c4, 4, b);
  CHECK(b[0] == std::byte{0xE1});
  const std::vector<std::int8_t> c2 = {1, -2, 0, -1};
  pack_codes(c2, 2, b);
  CHECK(b[0] == std::byte{0xC9});
  std::vector<std::byte> b2(2);
  const std::vector<std::int8_t> c3 = {-8, 7, 5};  // the last byte holds one code, high half zero
  pack_codes(c3, 4, b2);
  CHECK(b2[0] == std::byte{0x78});
  CHECK(b2[1] == std::byte{0x05});
  CHECK(packing_padding_is_zero(b2, 3, 4));
  b2[1] = std::byte{0x15};
  CHECK_FALSE(packing_padding_is_zero(b2, 3, 4));

  Rng rng(14);
  for (int bits : {8, 4, 2})
    for (std::size_t n = 0; n < 40; ++n) {
      std::vector<std::int8_t> codes(n), back(n);
      for (auto& c : codes) c = static_cast<std::int8_t>(code_min(bits) + static_cast<int>(rng.below(1u << bits)));
      std::vector<std::byte> packed(packed_bytes(n, bits));
      pack_codes(codes, bits, packed);
      CHECK(packing_padding_is_zero(packed, n, bits));
      unpack_codes(packed, bits, back);
      CHECK(codes == back);
    }
  CHECK(packed_bytes(5, 2) == 2);
  CHECK(packed_bytes(8, 4) == 4);
  std::vector<std::byte> small(1);
  expect_errc(errc::invalid_argument, [&] { pack_codes(c3, 4, small); });
  std::vector<std::int8_t> out(3);
  expect_errc(errc::invalid_argument, [&] { unpack_codes(small, 4, out); });
  expect_errc(errc::invalid_argument, [&] { (void)packed_bytes(4, 3); });
}

TEST_CASE("Min-max calibration gives the textbook scale and zero point", "[quant][calibration]") {
  std::vector<float> scratch;
  auto params = [&](std::vector<float> v, int bits, bool symmetric) {
    return params_from_range(calibrate_range(v, {}, bits, symmetric, scratch), bits, symmetric);
  };
  // [-1, 3] at 8 bits: scale 4/255; zero point -128 - round(-1 / (4/255)) = -128 + round(63.75) = -64.
  AffineParams a = params({-1.0f, 0.5f, 3.0f}, 8, false);
  CHECK(a.scale == Approx(4.0 / 255).epsilon(1e-7));
  CHECK(a.zero_point == -64);
  a = params({-1.0f, 0.5f, 3.0f}, 8, true);  // symmetric: 3 / 127, zero point 0
  CHECK(a.scale == Approx(3.0 / 127).epsilon(1e-7));
  CHECK(a.zero_point == 0);
  a = params({2.0f, 5.0f}, 4, false);  // widened to include 0: [0, 5] over 15 steps, 0 at code -8
  CHECK(a.scale == Approx(5.0 / 15).epsilon(1e-7));
  CHECK(a.zero_point == -8);
  a = params({-6.0f, -2.0f}, 2, false);  // [-6, 0] over 3 steps: 0 at the top code, 1
  CHECK(a.scale == Approx(2.0).epsilon(1e-7));
  CHECK(a.zero_point == 1);
  a = params({0.0f, 0.0f}, 8, false);  // an empty range: scale 1, zero still exact
  CHECK(a.scale == 1.0f);
  CHECK(kernels::dequantize_one(kernels::quantize_one(0.0f, 1.0f, float(a.zero_point), -128, 127), 1.0f,
                                a.zero_point) == 0.0f);
  // Extreme ranges keep a usable scale.
  a = params({-3e38f, 3e38f}, 2, false);
  CHECK(valid_scale(a.scale, 2));
  a = params({0.0f, 1e-44f}, 8, false);
  CHECK(valid_scale(a.scale, 8));
}

TEST_CASE("Percentile and MSE calibration clip outliers, and MSE finds the least error", "[quant][calibration]") {
  Rng rng(15);
  std::vector<float> v(4000);
  for (float& x : v) x = static_cast<float>(rng.normal());
  v[17] = 60.0f;  // outliers that stretch a min-max range
  v[901] = -45.0f;
  std::vector<float> scratch;
  const Range mm = calibrate_range(v, {}, 4, false, scratch);
  CHECK(mm.lo == -45.0f);
  CHECK(mm.hi == 60.0f);
  Calibration pc;
  pc.method = CalibrationMethod::percentile;
  pc.percentile = 99.5;
  const Range pr = calibrate_range(v, pc, 4, false, scratch);
  // The 0.5% and 99.5% points of a standard normal are -+2.576; 4000 samples put the empirical
  // ones within about +-0.25 (their standard error is ~0.06).
  CHECK(pr.lo == Approx(-2.576).margin(0.25));
  CHECK(pr.hi == Approx(2.576).margin(0.25));
  // The percentile is an order statistic of the data.
  std::vector<float> sorted = v;
  std::sort(sorted.begin(), sorted.end());
  CHECK(pr.hi == sorted[static_cast<std::size_t>(std::nearbyint(0.995 * 3999))]);
  CHECK(pr.lo == sorted[static_cast<std::size_t>(std::nearbyint(0.005 * 3999))]);

  Calibration mc;
  mc.method = CalibrationMethod::mse;
  mc.mse_grid = 100;
  const Range mr = calibrate_range(v, mc, 4, false, scratch);
  const double sse_mse = detail::fake_quant_sse(v, mr, 4, false);
  // Exhaustive over its grid: no other grid point does better, min-max (k = grid) included.
  for (int k = 1; k <= 100; ++k) {
    const float a = static_cast<float>(k) / 100.0f;
    CHECK(sse_mse <= detail::fake_quant_sse(v, {mm.lo * a, mm.hi * a}, 4, false));
  }
  CHECK(sse_mse < detail::fake_quant_sse(v, mm, 4, false));
  CHECK(mr.hi < 60.0f);
  // Subsampling: with a sample budget the search reads every stride-th value only.
  mc.mse_max_samples = 1000;
  const Range sub = calibrate_range(v, mc, 4, false, scratch);
  CHECK(sub.hi <= 60.0f);
  CHECK(scratch.size() == 1000);
}

TEST_CASE("Calibration refuses bad data and bad configurations", "[quant][calibration]") {
  std::vector<float> scratch;
  for (float bad : {nan_f, inf_f, -inf_f}) {
    std::vector<float> v(50, 1.0f);
    v[37] = bad;
    expect_errc(errc::invalid_argument, [&] { (void)calibrate_range(v, {}, 8, false, scratch); });
  }
  expect_errc(errc::invalid_argument, [&] { (void)calibrate_range({}, {}, 8, false, scratch); });
  Calibration c;
  c.method = CalibrationMethod::percentile;
  c.percentile = 30;
  expect_errc(errc::invalid_argument, [&] { Quantizer q(QuantConfig{8, Granularity::per_tensor, 1, false, c}); });
  c.method = CalibrationMethod::mse;
  c.mse_grid = 0;
  expect_errc(errc::invalid_argument, [&] { Quantizer q(QuantConfig{8, Granularity::per_tensor, 1, false, c}); });
  expect_errc(errc::invalid_argument, [&] { Quantizer q(QuantConfig{3, Granularity::per_tensor, 1, false, {}}); });
  expect_errc(errc::invalid_argument, [&] { Quantizer q(QuantConfig{8, Granularity::per_channel, 8, false, {}}); });
  Quantizer q;
  expect_errc(errc::invalid_argument, [&] { (void)q.params(); });
  Tensor<float> t(Shape{2, 3}, 1.0f);
  Quantizer q3(QuantConfig{8, Granularity::per_channel, 2, false, {}});  // axis 2 of a rank-2 tensor
  expect_errc(errc::invalid_argument, [&] { q3.calibrate(t); });
  expect_errc(errc::invalid_argument, [&] { q.set_params(QuantParams::tensor(1, 0, 4)); });
}

TEST_CASE("Per-channel calibration computes each channel from its own values", "[quant][calibration]") {
  Rng rng(16);
  const Shape shape{6, 4, 9};
  Tensor<float> x(shape);
  for (float& v : x.span()) v = static_cast<float>(rng.uniform(-2, 2));
  for (auto method : {CalibrationMethod::min_max, CalibrationMethod::percentile, CalibrationMethod::mse})
    for (std::size_t axis = 0; axis < 3; ++axis) {
      Calibration cal;
      cal.method = method;
      cal.percentile = 90;
      Quantizer qz(QuantConfig{4, Granularity::per_channel, axis, false, cal});
      const QuantParams p = qz.calibrate(x);
      REQUIRE(p.channels() == shape[axis]);
      CHECK(p.axis == static_cast<int>(axis));
      for (std::size_t c = 0; c < shape[axis]; ++c) {
        std::vector<float> mine, scratch;
        for (std::size_t i = 0; i < 6; ++i)
          for (std::size_t j = 0; j < 4; ++j)
            for (std::size_t k = 0; k < 9; ++k)
              if ((axis == 0 ? i : axis == 1 ? j : k) == c) mine.push_back(x[(i * 4 + j) * 9 + k]);
        const AffineParams a = params_from_range(calibrate_range(mine, cal, 4, false, scratch), 4, false);
        CHECK(p.scale[c] == a.scale);
        CHECK(p.zero_point[c] == a.zero_point);
      }
    }
}

TEST_CASE("Quantization parameters are validated against the tensor", "[quant][errors]") {
  const Shape s{2, 3};
  Tensor<float> x(s, 1.0f);
  Tensor<std::int8_t> q(s);
  auto run = [&](const QuantParams& p) { quantize(x, p, q.view()); };
  for (float bad : {0.0f, -1.0f, nan_f, inf_f, 1e-40f, 3e38f})
    expect_errc(errc::invalid_argument, [&] { run(QuantParams::tensor(bad, 0)); });
  expect_errc(errc::invalid_argument, [&] { run(QuantParams::tensor(1, 8, 4)); });
  expect_errc(errc::invalid_argument, [&] { run(QuantParams::tensor(1, -3, 2)); });
  expect_errc(errc::invalid_argument, [&] { run(QuantParams::tensor(1, 0, 5)); });
  QuantParams p = QuantParams::tensor(1, 0);
  p.axis = 1;  // per channel needs 3 channels
  expect_errc(errc::shape_mismatch, [&] { run(p); });
  p.axis = 2;
  expect_errc(errc::invalid_argument, [&] { run(p); });
  p.axis = 1;
  p.scale.assign(3, 1.0f);
  expect_errc(errc::invalid_argument, [&] { run(p); });  // 3 scales, 1 zero point
  p.zero_point.assign(3, 0);
  run(p);
  Tensor<std::int8_t> wrong(Shape{3, 2});
  expect_errc(errc::shape_mismatch, [&] { quantize(x, p, wrong.view()); });
  Tensor<float> wrong_f(Shape{6});
  expect_errc(errc::shape_mismatch, [&] { dequantize(q, p, wrong_f.view()); });
}

TEST_CASE("int8 GEMV kernels: SIMD equals the scalar reference and exact integer sums", "[quant][int8]") {
  Rng rng(17);
  for (std::size_t rows : {1, 3, 4, 5, 17})
    for (std::size_t cols : {1, 15, 16, 17, 100, 1000}) {
      std::vector<std::int8_t> w(rows * cols);
      std::vector<std::int16_t> x(cols);
      // Extreme values as well: the kernels' bound is |w| <= 127 (128 allowed), |x| <= 255.
      for (auto& v : w) v = static_cast<std::int8_t>(rng.below(8) == 0 ? (rng.below(2) ? 127 : -127) : int(rng.below(255)) - 127);
      for (auto& v : x) v = static_cast<std::int16_t>(rng.below(8) == 0 ? (rng.below(2) ? 255 : -255) : int(rng.below(511)) - 255);
      std::vector<std::int32_t> y_ref(rows), y_simd(rows), y_xsimd(rows);
      kernels::ScalarQuantKernels::matvec(w.data(), x.data(), y_ref.data(), rows, cols);
      kernels::NativeQuantKernels::matvec(w.data(), x.data(), y_simd.data(), rows, cols);
      kernels::XsimdQuantKernels::matvec(w.data(), x.data(), y_xsimd.data(), rows, cols);
      CHECK(y_ref == y_simd);
      CHECK(y_ref == y_xsimd);
      for (std::size_t r = 0; r < rows; ++r) {
        long long exact = 0;
        for (std::size_t i = 0; i < cols; ++i) exact += static_cast<long long>(w[r * cols + i]) * x[i];
        CHECK(y_ref[r] == exact);
      }
    }
  // The largest sum the layer allows (65536 inputs, every product +-127 * 255) does not overflow.
  volatile std::size_t opaque = QuantizedDense::max_in_features;  // no constant folding of the sum
  const std::size_t n = opaque;
  std::vector<std::int8_t> w(n, 127);
  std::vector<std::int16_t> x(n, 255);
  std::int32_t y = 0;
  kernels::NativeQuantKernels::matvec(w.data(), x.data(), &y, 1, n);
  CHECK(y == 127 * 255 * static_cast<long long>(n));
}

TEST_CASE("QuantizedDense is within its derived error bound of Dense", "[quant][int8]") {
  Rng rng(18);
  for (auto [in, out] : {std::pair<std::size_t, std::size_t>{1, 1}, {17, 5}, {256, 64}, {1000, 33}}) {
    Dense<float> d(in, out, rng);
    for (float& b : d.bias().span()) b = static_cast<float>(rng.uniform(-0.5, 0.5));
    Tensor<float> x(Shape{7, in});
    for (float& v : x.span()) v = static_cast<float>(rng.uniform(-1, 2));
    Quantizer qx(QuantConfig{8, Granularity::per_tensor, 1, false, {}});
    QuantizedDense qd(d, qx.calibrate(x));
    Tensor<float> y(Shape{7, out}), yq(Shape{7, out}), yq_ref(Shape{7, out});
    d.forward(x, y.view());
    qd.forward(x, yq.view());
    qd.forward_scalar(x, yq_ref.view());
    CHECK(same_bits(yq.data(), yq_ref.data(), yq.size()));
    const float sx = qd.input_params().scale[0];
    for (std::size_t b = 0; b < 7; ++b)
      for (std::size_t o = 0; o < out; ++o) {
        // y - yq = sum_i (w x - w^ x^) with |x - x^| <= sx/2 (x inside its calibrated range) and
        // |w - w^| <= sw/2: |y - yq| <= sum_i |w^_i| sx/2 + |x_i| sw/2. The integer sum is exact;
        // the float steps (y = acc * s + b, the float Dense's own dot product, the half-step
        // rounding slack of 3u per term) add at most gamma_{in+2} * sum_i (|w x| + |w^ x^|) + |b|.
        const float sw = qd.weight_scale()[o];
        double bound = 0, mag = std::abs(d.bias()[o]);
        for (std::size_t i = 0; i < in; ++i) {
          const double w = d.weight()[o * in + i], wq = sw * double(qd.weight()[o * in + i]);
          const double xi = x[b * in + i];
          bound += std::abs(wq) * sx / 2 + std::abs(xi) * sw / 2;
          mag += 2 * std::abs(w * xi) + std::abs(wq) * sx;
        }
        const double gamma = (in + 4) * unit_roundoff / (1 - (in + 4) * unit_roundoff);
        bound += gamma * mag + 3 * unit_roundoff * (bound + mag);
        INFO("in " << in << ", out " << out << ", row " << b << ", output " << o);
        CHECK(std::abs(double(y[b * out + o]) - yq[b * out + o]) <= bound);
      }
  }
}

TEST_CASE("quantize_model: int8 MLP within the propagated error bound of the float MLP", "[quant][int8]") {
  Rng rng(19);
  Sequential<float> model;
  model.add<Dense<float>>(64, 48, rng);
  model.add<ReLU<float>>();
  model.add<Dense<float>>(48, 32, rng);
  model.add<ReLU<float>>();
  model.add<Dense<float>>(32, 10, rng);
  for (std::size_t l : {0, 2, 4})
    for (float& b : static_cast<Dense<float>&>(model[l]).bias().span()) b = static_cast<float>(rng.uniform(-0.2, 0.2));
  Tensor<float> x(Shape{32, 64});
  for (float& v : x.span()) v = static_cast<float>(rng.uniform(0, 1));
  Sequential<float> q = quantize_model(model, x);
  REQUIRE(q.size() == 5);
  CHECK(q[0].name() == "QuantizedDense");
  CHECK(q[1].name() == "ReLU");
  CHECK(q[4].describe() == "QuantizedDense(32 -> 10, int8)");
  const Tensor<float> yq = q.predict(x);
  // Propagate a componentwise error bound e through the layers, on the calibration batch itself
  // (so every float activation lies inside its calibrated range). For a QuantizedDense whose true
  // input is a and actual input a~ with |a~ - a| <= e: clamping to the range cannot move a~ away
  // from a (a is inside), so |a^ - a| <= e + sx/2 and
  //   |out - y| <= sum_i |w^_i| (e_i + sx/2) + |a_i| sw/2   (+ float slack as above).
  // ReLU is 1-Lipschitz: e passes through unchanged.
  Sequential<float> ref(model);
  Tensor<float> a = x;
  std::vector<double> e(32 * 64, 0.0);  // the input is exact
  for (std::size_t l = 0; l < model.size(); ++l) {
    Tensor<float> next(ref[l].output_shape(a.shape()));
    ref[l].forward(a, next.view());
    if (l % 2 == 0) {
      const auto& d = static_cast<const Dense<float>&>(model[l]);
      const auto& qd = static_cast<const QuantizedDense&>(q[l]);
      const std::size_t in = d.in_features(), out = d.out_features();
      const double sx = qd.input_params().scale[0];
      std::vector<double> e_next(32 * out);
      for (std::size_t b = 0; b < 32; ++b)
        for (std::size_t o = 0; o < out; ++o) {
          const double sw = qd.weight_scale()[o];
          double bound = 0, mag = std::abs(d.bias()[o]);
          for (std::size_t i = 0; i < in; ++i) {
            const double wq = sw * qd.weight()[o * in + i], ai = a[b * in + i];
            const double ei = e[b * in + i];
            bound += std::abs(wq) * (ei + sx / 2) + std::abs(ai) * sw / 2;
            mag += 2 * std::abs(d.weight()[o * in + i] * ai) + std::abs(wq) * (std::abs(ai) + ei + sx);
          }
          const double gamma = (in + 4) * unit_roundoff / (1 - (in + 4) * unit_roundoff);
          e_next[b * out + o] = bound + gamma * mag + 3 * unit_roundoff * (bound + mag);
        }
      e = e_next;
    }
    a = next;
  }
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    CHECK(std::abs(double(a[i]) - yq[i]) <= e[i]);
    worst = std::max(worst, std::abs(double(a[i]) - yq[i]));
  }
  INFO("largest deviation " << worst);
  SUCCEED();
}

TEST_CASE("QuantizedDense: limits, inference only, copies, no allocation in steady state", "[quant][int8]") {
  Rng rng(20);
  Dense<float> big(QuantizedDense::max_in_features + 1, 1);
  expect_errc(errc::too_large, [&] { QuantizedDense q(big, QuantParams::tensor(1, 0)); });
  Dense<float> d(8, 4, rng);
  expect_errc(errc::invalid_argument, [&] { QuantizedDense q(d, QuantParams::tensor(1, 0, 4)); });
  QuantParams pc = QuantParams::tensor(1, 0);
  pc.axis = 0;
  expect_errc(errc::invalid_argument, [&] { QuantizedDense q(d, pc); });
  expect_errc(errc::invalid_argument, [&] { QuantizedDense q(d, QuantParams::tensor(-1, 0)); });

  QuantizedDense qd(d, QuantParams::tensor(0.01f, -5));
  Tensor<float> x(Shape{3, 8}, 0.3f), y(Shape{3, 4}), g(Shape{3, 4}, 1.0f), gi(Shape{3, 8});
  expect_errc(errc::shape_mismatch, [&] { qd.forward(Tensor<float>(Shape{3, 7}), y.view()); });
  qd.forward(x, y.view());
  expect_errc(errc::unsupported, [&] { qd.backward(x, y, g, gi.view()); });
  CHECK(qd.parameter_count() == 0);
  CHECK(qd.flops(Shape{3, 8}) == 3 * 4 * 17);
  auto copy = qd.clone();
  Tensor<float> y2(Shape{3, 4});
  copy->forward(x, y2.view());
  CHECK(same_bits(y.data(), y2.data(), y.size()));

  if (edgesplit_test::allocations() < 0) {
    WARN("allocation counting is unavailable in this build (sanitizer allocator)");
    return;
  }
  Sequential<float> m;
  m.add<Dense<float>>(32, 16, rng);
  m.add<ReLU<float>>();
  m.add<Dense<float>>(16, 4, rng);
  Tensor<float> cal(Shape{8, 32}, 0.5f);
  for (std::size_t i = 0; i < cal.size(); ++i) cal[i] = static_cast<float>(i % 7) * 0.1f;
  Sequential<float> qm = quantize_model(m, cal);
  Tensor<float> out(Shape{8, 4});
  qm.forward(cal, out.view());
  const long long before = edgesplit_test::allocations();
  for (int i = 0; i < 5; ++i) qm.forward(cal, out.view());
  (void)qm.forward(cal.batch(0, 1));
  CHECK(edgesplit_test::allocations() - before == 0);
}

TEST_CASE("The codec's halves: a decoder made from limits alone reads whatever an encoder writes", "[quant][wire]") {
  Rng rng(77);
  Tensor<float> x(Shape{4, 64});
  for (auto& v : x.span()) v = static_cast<float>(rng.uniform(-3, 5));
  std::vector<wire::Lossless> stages{wire::Lossless::none};
  if (wire::has_zstd) stages.push_back(wire::Lossless::zstd);
  wire::FeatureDecoder decoder;  // one decoder, every encoding: each frame says how it was made
  std::vector<std::byte> frame, same;
  Tensor<float> y, z;
  std::size_t configurations = 0;
  for (int bits : {32, 8, 4, 2})
    for (auto stage : stages)
      for (auto granularity : {Granularity::per_tensor, Granularity::per_channel}) {
        if (bits == 32 && granularity == Granularity::per_channel) continue;
        CodecConfig cfg;
        cfg.bits = bits;
        cfg.lossless = stage;
        cfg.granularity = granularity;
        wire::FeatureEncoder encoder(cfg);
        encoder.encode(x.cview(), frame, 9);
        const wire::FrameHeader h = decoder.decode(frame, y);
        CHECK(h.request_id == 9);
        REQUIRE(y.shape() == x.shape());
        // The two-way codec writes the same bytes and reads the same values.
        FeatureCodec both(cfg);
        both.encode(x.cview(), same, 9);
        CHECK(same == frame);
        both.decode(frame, z);
        CHECK(std::memcmp(y.data(), z.data(), y.bytes()) == 0);
        if (bits == 32) {
          CHECK(std::memcmp(y.data(), x.data(), x.bytes()) == 0);  // raw floats: exact
        } else {
          // Within half a step of each value (all values are inside the calibrated range), plus
          // the float rounding of dequantization (3u of |x| + scale, u = 2^-24).
          const QuantParams& p = decoder.decode_params();
          CHECK(p.scale == encoder.encode_params().scale);
          double worst = 0;
          for (std::size_t i = 0; i < x.size(); ++i) {
            const double s = p.scale[p.scale.size() == 1 ? 0 : i % 64];
            const double bound = s / 2 + 3 * std::ldexp(1.0, -24) * (std::abs(x[i]) + s);
            worst = std::max(worst, std::abs(double(x[i]) - double(y[i])) / bound);
          }
          CHECK(worst <= 1.0);
        }
        ++configurations;
      }
  CHECK(configurations == stages.size() * 7);

  // A decoder's caps are all it is configured with: a frame over them is refused before decoding.
  wire::DecodeLimits small;
  small.max_elements = 100;
  wire::FeatureDecoder strict(small);
  CHECK(strict.limits().max_elements == 100);
  wire::FeatureEncoder(CodecConfig{}).encode(x.cview(), frame);
  expect_errc(errc::too_large, [&] { strict.decode(frame, y); });
  // An encoder refuses what it cannot write.
  CodecConfig bad;
  bad.bits = 3;
  expect_errc(errc::invalid_argument, [&] { wire::FeatureEncoder e(bad); });
  CodecConfig raw;
  raw.bits = 32;
  wire::FeatureEncoder raw_encoder(raw);
  expect_errc(errc::invalid_argument, [&] { raw_encoder.calibrate(x.cview()); });  // nothing to calibrate
}
