// edgesplit/quant/calibration.hpp - choosing the range a quantizer covers, from data.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "edgesplit/core/error.hpp"
#include "edgesplit/quant/int8_kernels.hpp"
#include "edgesplit/quant/quant_params.hpp"

namespace edgesplit {

/// How a quantizer's range is chosen from sample values.
enum class CalibrationMethod : std::uint8_t {
  min_max,     ///< the smallest and largest value: nothing clips, outliers stretch the step
  percentile,  ///< the (100 - p)th and p-th percentiles: the extreme tails clip
  mse,         ///< the clip range, from a grid of shrunk min-max ranges, with least squared error
};

/// How a quantizer chooses its range from data (see docs/quantization.md for the methods).
struct Calibration {
  CalibrationMethod method = CalibrationMethod::min_max;  ///< min_max, percentile or mse
  double percentile = 99.99;  ///< percentile: p in [50, 100]
  int mse_grid = 64;          ///< mse: candidates alpha * range for alpha = k / grid, k = 1..grid
  /// mse: at most this many values per channel enter the search (an even stride through the
  /// data); the search costs grid x samples fake-quantizations.
  std::size_t mse_max_samples = std::size_t{1} << 16;
};

/// Throws errc::invalid_argument for a configuration no calibration can use.
inline void validate(const Calibration& c) {
  if (c.method == CalibrationMethod::percentile && !(c.percentile >= 50 && c.percentile <= 100))
    fail(errc::invalid_argument, "calibration percentile must be in [50, 100], got " + std::to_string(c.percentile));
  if (c.method == CalibrationMethod::mse && (c.mse_grid < 1 || c.mse_grid > 4096 || c.mse_max_samples == 0))
    fail(errc::invalid_argument, "mse calibration needs 1 <= grid <= 4096 and at least one sample");
  if (c.method != CalibrationMethod::min_max && c.method != CalibrationMethod::percentile &&
      c.method != CalibrationMethod::mse)
    fail(errc::invalid_argument, "unknown calibration method");
}

/// A closed range of real values.
struct Range {
  ///@{
  /// The bounds, lo <= hi.
  float lo = 0, hi = 0;
  ///@}
};

/// Smallest and largest of x[0..n) over xsimd batches; errc::invalid_argument if any value is
/// NaN or infinite (x - x is 0 for finite x and NaN otherwise, and NaN survives the sum).
inline Range finite_min_max(const float* x, std::size_t n) {
  if (n == 0) fail(errc::invalid_argument, "calibration needs at least one value");
  using B = xsimd::batch<float>;
  constexpr std::size_t W = B::size;
  float lo = x[0], hi = x[0], bad = 0;
  std::size_t i = 0;
  if (n >= W) {
    B vlo = B::load_unaligned(x), vhi = vlo, vbad(0.0f);
    for (const std::size_t body = n - n % W; i < body; i += W) {
      const B v = B::load_unaligned(x + i);
      vlo = xsimd::min(vlo, v);
      vhi = xsimd::max(vhi, v);
      vbad += v - v;
    }
    alignas(64) float l[W], h[W];
    vlo.store_aligned(l);
    vhi.store_aligned(h);
    for (std::size_t k = 0; k < W; ++k) {
      lo = std::min(lo, l[k]);
      hi = std::max(hi, h[k]);
    }
    bad = xsimd::hadd(vbad);
  }
  for (; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    bad += x[i] - x[i];
  }
  if (bad != 0 || std::isnan(bad)) fail(errc::invalid_argument, "calibration data holds NaN or infinite values");
  return {lo, hi};
}

/// One channel's scale and zero point (QuantParams holds vectors of them).
struct AffineParams {
  float scale = 1;  ///< step between codes, > 0
  std::int32_t zero_point = 0;  ///< the code that stands for 0.0
};

/// Scale and zero point that cover `r` with `bits`-bit codes.
///
/// Asymmetric: the range is widened to include 0 (so 0 is exactly representable and the zero
/// point is a valid code), scale = (hi - lo) / (2^bits - 1), zero_point = code_min - round(lo /
/// scale). Symmetric: scale = max(|lo|, |hi|) / (2^(bits-1) - 1), zero_point = 0. An empty range
/// gets scale 1; the scale is kept within what `valid_scale` accepts.
inline AffineParams params_from_range(Range r, int bits, bool symmetric) {
  if (!valid_quant_bits(bits)) fail(errc::invalid_argument, "quantization bits must be 8, 4 or 2");
  const double lo = std::min<double>(r.lo, 0), hi = std::max<double>(r.hi, 0);
  double s = symmetric ? std::max(-lo, hi) / code_max(bits) : (hi - lo) / ((1 << bits) - 1);
  if (s == 0) s = 1;
  s = std::clamp<double>(s, std::numeric_limits<float>::min(), std::numeric_limits<float>::max() / 256);
  const auto scale = static_cast<float>(s);
  std::int32_t zp = 0;
  if (!symmetric) {
    const double z = code_min(bits) - std::nearbyint(lo / static_cast<double>(scale));
    zp = static_cast<std::int32_t>(std::clamp<double>(z, code_min(bits), code_max(bits)));
  }
  return {scale, zp};
}

namespace detail {

// Sum of squared quantization errors of `v` under the parameters covering `r`.
inline double fake_quant_sse(std::span<const float> v, Range r, int bits, bool symmetric) {
  const AffineParams p = params_from_range(r, bits, symmetric);
  const float scale = p.scale, inv = 1.0f / scale, zp = static_cast<float>(p.zero_point);
  const kernels::CodeRange cr(bits);
  double sse = 0;
  for (float x : v) {
    const float y = kernels::dequantize_one(kernels::quantize_one(x, inv, zp, cr.lo, cr.hi), scale, p.zero_point);
    const double e = static_cast<double>(x) - y;
    sse += e * e;
  }
  return sse;
}

}  // namespace detail

/// The range `c` chooses for `values`. `scratch` is reused working storage (percentile and mse
/// copy the values into it), so repeated calibration allocates nothing once it is large enough.
inline Range calibrate_range(std::span<const float> values, const Calibration& c, int bits, bool symmetric,
                             std::vector<float>& scratch) {
  const Range mm = finite_min_max(values.data(), values.size());
  switch (c.method) {
    case CalibrationMethod::min_max:
      return mm;
    case CalibrationMethod::percentile: {
      scratch.assign(values.begin(), values.end());
      const double n1 = static_cast<double>(values.size() - 1);
      const auto k_hi = static_cast<std::size_t>(std::nearbyint(c.percentile / 100 * n1));
      const auto k_lo = static_cast<std::size_t>(std::nearbyint((1 - c.percentile / 100) * n1));
      std::nth_element(scratch.begin(), scratch.begin() + static_cast<std::ptrdiff_t>(k_hi), scratch.end());
      const float hi = scratch[k_hi];
      // Everything below position k_hi is <= hi now: the low percentile lies in that part.
      std::nth_element(scratch.begin(), scratch.begin() + static_cast<std::ptrdiff_t>(k_lo),
                       scratch.begin() + static_cast<std::ptrdiff_t>(k_hi) + 1);
      return {scratch[k_lo], hi};
    }
    case CalibrationMethod::mse: {
      const std::size_t stride = 1 + (values.size() - 1) / c.mse_max_samples;  // ceil(n / max), n >= 1
      scratch.clear();
      for (std::size_t i = 0; i < values.size(); i += stride) scratch.push_back(values[i]);
      Range best = mm;
      double best_sse = std::numeric_limits<double>::infinity();
      // From the full range down; a smaller range must be strictly better to win.
      for (int k = c.mse_grid; k >= 1; --k) {
        const float a = static_cast<float>(k) / static_cast<float>(c.mse_grid);
        const Range cand{mm.lo * a, mm.hi * a};
        const double sse = detail::fake_quant_sse(scratch, cand, bits, symmetric);
        if (sse < best_sse) {
          best_sse = sse;
          best = cand;
        }
      }
      return best;
    }
  }
  fail(errc::invalid_argument, "unknown calibration method");
}

}  // namespace edgesplit
