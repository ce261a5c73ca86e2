// edgesplit/quant/int8_kernels.hpp - the inner loops of quantization and of int8 Dense.
//
// Kernel sets with one static interface:
//   ScalarQuantKernels   the reference: plain loops over the formulas quantize_one/dequantize_one;
//   XsimdQuantKernels    the float arithmetic over xsimd batches, narrowing/widening through a
//                        lane array (xsimd 8.1 has no saturating narrowing and its int8<->float
//                        loads go through a scalar copy): the portable fallback;
//   Avx2QuantKernels     explicit AVX2: saturating packs (packs_epi32/packs_epi16) and
//                        sign-extending loads (cvtepi8_epi32), and an exact int16 madd GEMV;
//   NeonQuantKernels     the same on 64-bit ARM: saturating narrows (vqmovn), widening loads
//                        (vmovl) and an exact int16 multiply-accumulate GEMV (vmlal_s16).
//                        (32-bit ARM lacks the round-to-nearest-even instruction: it uses xsimd.)
// `NativeQuantKernels` names the best set the compiler flags allow. Every set computes the same
// exact function (multiply by 1/scale, round half to even, add the zero point, clamp, convert;
// AVX2 clamps before it rounds, which gives the same codes, see Avx2QuantKernels::quantize8), so
// all of them give bit-identical codes and floats; tests check it.
//
// Loops run to `body = n - n % W` rather than while `i + W <= n`: GCC 12 then sees that the tail
// runs fewer than W times and raises no false -Waggressive-loop-optimizations warning when n is a
// compile-time constant.
//
// Rounding: the reference uses std::nearbyint, which rounds half to even in the default
// floating-point environment; the SIMD sets use round-to-nearest-even instructions (explicit, or
// AVX2's cvtps in the default mode).
// edgesplit never changes the rounding mode; a caller that does so gets unspecified codes.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include <xsimd/xsimd.hpp>

#if defined(__AVX2__)
#include <immintrin.h>
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#endif

namespace edgesplit::kernels {

/// The reference quantizer of one value: round(x * inv_scale) + zero_point, clamped to [lo, hi]
/// (the code range as floats). NaN becomes `lo`: every comparison with NaN is false, and the
/// SIMD sets use the same select order (x86 max/min return their second operand on NaN).
inline std::int8_t quantize_one(float x, float inv_scale, float zero_point, float lo, float hi) noexcept {
  float r = std::nearbyint(x * inv_scale) + zero_point;
  r = r > lo ? r : lo;
  r = r < hi ? r : hi;
  return static_cast<std::int8_t>(static_cast<std::int32_t>(r));
}

/// The reference dequantizer: (q - zero_point) * scale, the subtraction exact in int32.
inline float dequantize_one(std::int8_t q, float scale, std::int32_t zero_point) noexcept {
  return static_cast<float>(std::int32_t{q} - zero_point) * scale;
}

/// Codes of a `bits`-bit quantizer as floats, for the clamp.
struct CodeRange {
  ///@{
  /// The lowest and highest code, as floats.
  float lo, hi;
  ///@}
  /// The code range of a `bits`-bit signed quantizer: [-2^(bits-1), 2^(bits-1) - 1].
  explicit CodeRange(int bits) noexcept
      : lo(static_cast<float>(-(1 << (bits - 1)))), hi(static_cast<float>((1 << (bits - 1)) - 1)) {}
};

// Interface shared by the kernel sets:
//   quantize_run(x, q, n, scale, zero_point, bits)      one scale for n contiguous values
//   quantize_row(x, q, n, scale*, zero_point*, bits)    value i uses scale[i], zero_point[i]
//   dequantize_run(q, x, n, scale, zero_point)
//   dequantize_row(q, x, n, scale*, zero_point*)
//   matvec(w, x, y, rows, cols)   y[r] = sum_i w[r*cols + i] * x[i], int32 accumulation; exact
//                                 while cols * 128 * 2^15 fits (callers bound |x| and cols).

/// The reference kernels: plain loops, the definition every other kernel set must match bit for bit.
struct ScalarQuantKernels {
  /// Quantizes `n` values with one scale and zero point, into `bits`-bit codes.
  static void quantize_run(const float* x, std::int8_t* q, std::size_t n, float scale, std::int32_t zp,
                           int bits) noexcept {
    const CodeRange r(bits);
    const float inv = 1.0f / scale, z = static_cast<float>(zp);
    for (std::size_t i = 0; i < n; ++i) q[i] = quantize_one(x[i], inv, z, r.lo, r.hi);
  }
  /// Quantizes one row with a scale and zero point per element (per-channel along the last axis).
  static void quantize_row(const float* x, std::int8_t* q, std::size_t n, const float* scale,
                           const std::int32_t* zp, int bits) noexcept {
    const CodeRange r(bits);
    for (std::size_t i = 0; i < n; ++i)
      q[i] = quantize_one(x[i], 1.0f / scale[i], static_cast<float>(zp[i]), r.lo, r.hi);
  }
  /// Dequantizes `n` codes with one scale and zero point.
  static void dequantize_run(const std::int8_t* q, float* x, std::size_t n, float scale, std::int32_t zp) noexcept {
    for (std::size_t i = 0; i < n; ++i) x[i] = dequantize_one(q[i], scale, zp);
  }
  /// Dequantizes one row with a scale and zero point per element.
  static void dequantize_row(const std::int8_t* q, float* x, std::size_t n, const float* scale,
                             const std::int32_t* zp) noexcept {
    for (std::size_t i = 0; i < n; ++i) x[i] = dequantize_one(q[i], scale[i], zp[i]);
  }
  /// y[r] = sum over i of w[r, i] x[i], exactly in int32 (the QuantizedDense product).
  static void matvec(const std::int8_t* w, const std::int16_t* x, std::int32_t* y, std::size_t rows,
                     std::size_t cols) noexcept {
    for (std::size_t r = 0; r < rows; ++r) {
      const std::int8_t* wr = w + r * cols;
      std::int32_t acc = 0;
      for (std::size_t i = 0; i < cols; ++i) acc += std::int32_t{wr[i]} * std::int32_t{x[i]};
      y[r] = acc;
    }
  }
};

/// Portable SIMD kernels over xsimd batches: the same IEEE operations in the same order as the reference.
struct XsimdQuantKernels {
  using F = xsimd::batch<float>;  ///< float lanes
  using I = xsimd::batch<std::int32_t>;  ///< int32 lanes, as many as float lanes
  static constexpr std::size_t W = F::size;  ///< lanes per batch
  static_assert(I::size == W, "xsimd float and int32 batches must have the same lane count");

  /// Rounds v * inv to nearest even, adds the zero point and clamps to [lo, hi], all in float lanes.
  static F quantize_lanes(F v, F inv, F zp, F lo, F hi) noexcept {
    v = xsimd::nearbyint(v * inv) + zp;
    v = xsimd::select(v > lo, v, lo);
    return xsimd::select(v < hi, v, hi);
  }

  /// Quantizes `n` values with one scale and zero point (SIMD body, scalar tail).
  static void quantize_run(const float* x, std::int8_t* q, std::size_t n, float scale, std::int32_t zp,
                           int bits) noexcept {
    const CodeRange r(bits);
    const float inv = 1.0f / scale, z = static_cast<float>(zp);
    const F vinv(inv), vzp(z), vlo(r.lo), vhi(r.hi);
    alignas(64) std::int32_t lanes[W];
    std::size_t i = 0;
    for (const std::size_t body = n - n % W; i < body; i += W) {
      xsimd::batch_cast<std::int32_t>(quantize_lanes(F::load_unaligned(x + i), vinv, vzp, vlo, vhi))
          .store_aligned(lanes);
      for (std::size_t k = 0; k < W; ++k) q[i + k] = static_cast<std::int8_t>(lanes[k]);
    }
    for (; i < n; ++i) q[i] = quantize_one(x[i], inv, z, r.lo, r.hi);
  }
  /// Quantizes one row with a scale and zero point per element.
  static void quantize_row(const float* x, std::int8_t* q, std::size_t n, const float* scale,
                           const std::int32_t* zp, int bits) noexcept {
    const CodeRange r(bits);
    const F one(1.0f), vlo(r.lo), vhi(r.hi);
    alignas(64) std::int32_t lanes[W];
    std::size_t i = 0;
    for (const std::size_t body = n - n % W; i < body; i += W) {
      const F inv = one / F::load_unaligned(scale + i);
      const F z = xsimd::batch_cast<float>(I::load_unaligned(zp + i));
      xsimd::batch_cast<std::int32_t>(quantize_lanes(F::load_unaligned(x + i), inv, z, vlo, vhi))
          .store_aligned(lanes);
      for (std::size_t k = 0; k < W; ++k) q[i + k] = static_cast<std::int8_t>(lanes[k]);
    }
    for (; i < n; ++i) q[i] = quantize_one(x[i], 1.0f / scale[i], static_cast<float>(zp[i]), r.lo, r.hi);
  }
  /// Dequantizes `n` codes with one scale and zero point.
  static void dequantize_run(const std::int8_t* q, float* x, std::size_t n, float scale, std::int32_t zp) noexcept {
    const F vs(scale);
    alignas(64) std::int32_t lanes[W];
    std::size_t i = 0;
    for (const std::size_t body = n - n % W; i < body; i += W) {
      for (std::size_t k = 0; k < W; ++k) lanes[k] = std::int32_t{q[i + k]} - zp;
      (xsimd::batch_cast<float>(I::load_aligned(lanes)) * vs).store_unaligned(x + i);
    }
    for (; i < n; ++i) x[i] = dequantize_one(q[i], scale, zp);
  }
  /// Dequantizes one row with a scale and zero point per element.
  static void dequantize_row(const std::int8_t* q, float* x, std::size_t n, const float* scale,
                             const std::int32_t* zp) noexcept {
    alignas(64) std::int32_t lanes[W];
    std::size_t i = 0;
    for (const std::size_t body = n - n % W; i < body; i += W) {
      for (std::size_t k = 0; k < W; ++k) lanes[k] = std::int32_t{q[i + k]} - zp[i + k];
      (xsimd::batch_cast<float>(I::load_aligned(lanes)) * F::load_unaligned(scale + i)).store_unaligned(x + i);
    }
    for (; i < n; ++i) x[i] = dequantize_one(q[i], scale[i], zp[i]);
  }
  // xsimd 8.1 has no widening multiply-add on small integers; the reference loop is what the
  // compiler vectorizes best without it.
  /// The exact int32 product: the reference loop.
  static void matvec(const std::int8_t* w, const std::int16_t* x, std::int32_t* y, std::size_t rows,
                     std::size_t cols) noexcept {
    ScalarQuantKernels::matvec(w, x, y, rows, cols);
  }
};

#if defined(__AVX2__)
struct Avx2QuantKernels {
  // 8 floats -> 8 int32 codes. quantize_one computes clamp(round(x/s) + zp, lo, hi); because
  // lo - zp and hi - zp are small integers (the zero point is validated inside the code range),
  // rounding is monotone and fixes integers, this equals round(clamp(x/s, lo - zp, hi - zp)) + zp
  // bit for bit, and the clamp before the rounding lets one cvtps (round to nearest even, the
  // default mode nearbyint uses too) do both rounding and conversion: 5 instructions instead of
  // 7. NaN: max_ps returns its second operand, lo - zp, as the reference ends at lo.
  static __m256i quantize8(__m256 v, __m256 inv, __m256 lo_zp, __m256 hi_zp, __m256i zp) noexcept {
    v = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, inv), lo_zp), hi_zp);
    return _mm256_add_epi32(_mm256_cvtps_epi32(v), zp);
  }
  // 4 x 8 int32 codes (already in range) -> 32 int8 in order. The packs work per 128-bit lane,
  // leaving 4-byte groups in the order a0 b0 c0 d0 a1 b1 c1 d1; the permute restores a0 a1 ....
  static void store32(std::int8_t* q, __m256i a, __m256i b, __m256i c, __m256i d) noexcept {
    const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    const __m256i packed = _mm256_packs_epi16(ab, cd);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_permutevar8x32_epi32(packed, order));
  }
  static __m256i load8_i32(const std::int8_t* q) noexcept {
    return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)));
  }

  /// Inputs at least this large are prefetched `prefetch_distance` bytes ahead: a single core's
  /// hardware prefetcher keeps too few lines in flight to read DRAM at full speed (0.70 of
  /// memcpy's rate without, about 1.0 with, on 64 MiB here; see docs/quantization.md). In cache
  /// the prefetches only cost issue slots, so smaller inputs skip them.
  static constexpr std::size_t prefetch_bytes = std::size_t{1} << 20;
  static constexpr std::size_t prefetch_distance = 4096;

  static void quantize_run(const float* x, std::int8_t* q, std::size_t n, float scale, std::int32_t zp,
                           int bits) noexcept {
    const CodeRange r(bits);
    const float inv = 1.0f / scale, z = static_cast<float>(zp);
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256 vlo = _mm256_set1_ps(r.lo - z), vhi = _mm256_set1_ps(r.hi - z);
    const __m256i vzp = _mm256_set1_epi32(zp);
    auto q32 = [&](std::size_t i) {
      store32(q + i, quantize8(_mm256_loadu_ps(x + i), vinv, vlo, vhi, vzp),
              quantize8(_mm256_loadu_ps(x + i + 8), vinv, vlo, vhi, vzp),
              quantize8(_mm256_loadu_ps(x + i + 16), vinv, vlo, vhi, vzp),
              quantize8(_mm256_loadu_ps(x + i + 24), vinv, vlo, vhi, vzp));
    };
    std::size_t i = 0;
    const std::size_t body = n - n % 32;
    if (n * sizeof(float) >= prefetch_bytes) {
      // 32 floats are two cache lines; prefetching past the end is harmless (no fault).
      const char* ahead = reinterpret_cast<const char*>(x) + prefetch_distance;
      for (; i < body; i += 32) {
        _mm_prefetch(ahead + i * sizeof(float), _MM_HINT_T0);
        _mm_prefetch(ahead + i * sizeof(float) + 64, _MM_HINT_T0);
        q32(i);
      }
    }
    for (; i < body; i += 32) q32(i);
    for (; i < n; ++i) q[i] = quantize_one(x[i], inv, z, r.lo, r.hi);
  }
  static void quantize_row(const float* x, std::int8_t* q, std::size_t n, const float* scale,
                           const std::int32_t* zp, int bits) noexcept {
    const CodeRange r(bits);
    const __m256 one = _mm256_set1_ps(1.0f), vlo = _mm256_set1_ps(r.lo), vhi = _mm256_set1_ps(r.hi);
    auto q8 = [&](std::size_t j) {
      const __m256 inv = _mm256_div_ps(one, _mm256_loadu_ps(scale + j));
      const __m256i zi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(zp + j));
      const __m256 z = _mm256_cvtepi32_ps(zi);
      return quantize8(_mm256_loadu_ps(x + j), inv, _mm256_sub_ps(vlo, z), _mm256_sub_ps(vhi, z), zi);
    };
    std::size_t i = 0;
    for (const std::size_t body = n - n % 32; i < body; i += 32) store32(q + i, q8(i), q8(i + 8), q8(i + 16), q8(i + 24));
    for (; i < n; ++i) q[i] = quantize_one(x[i], 1.0f / scale[i], static_cast<float>(zp[i]), r.lo, r.hi);
  }
  /// Float outputs at least this large are written with non-temporal stores: they cannot stay
  /// in cache anyway, and streaming skips the read-for-ownership of every output line (about 2x
  /// faster on 64 MiB here; see docs/quantization.md).
  static constexpr std::size_t stream_bytes = std::size_t{32} << 20;

  static void dequantize_run(const std::int8_t* q, float* x, std::size_t n, float scale, std::int32_t zp) noexcept {
    if (n >= stream_bytes / sizeof(float)) return dequantize_run_streaming(q, x, n, scale, zp);
    const __m256 vs = _mm256_set1_ps(scale);
    const __m256i vzp = _mm256_set1_epi32(zp);
    std::size_t i = 0;
    for (const std::size_t body = n - n % 8; i < body; i += 8)
      _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(load8_i32(q + i), vzp)), vs));
    for (; i < n; ++i) x[i] = dequantize_one(q[i], scale, zp);
  }
  /// dequantize_run with non-temporal stores (any size; dequantize_run picks it for large ones).
  static void dequantize_run_streaming(const std::int8_t* q, float* x, std::size_t n, float scale,
                                       std::int32_t zp) noexcept {
    const __m256 vs = _mm256_set1_ps(scale);
    const __m256i vzp = _mm256_set1_epi32(zp);
    std::size_t i = 0;
    for (; i < n && reinterpret_cast<std::uintptr_t>(x + i) % 32 != 0; ++i) x[i] = dequantize_one(q[i], scale, zp);
    for (const std::size_t body = n - (n - i) % 8; i < body; i += 8)
      _mm256_stream_ps(x + i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(load8_i32(q + i), vzp)), vs));
    _mm_sfence();  // order the streamed stores before whatever the caller does next
    for (; i < n; ++i) x[i] = dequantize_one(q[i], scale, zp);
  }
  static void dequantize_row(const std::int8_t* q, float* x, std::size_t n, const float* scale,
                             const std::int32_t* zp) noexcept {
    std::size_t i = 0;
    for (const std::size_t body = n - n % 8; i < body; i += 8) {
      const __m256i z = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(zp + i));
      const __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(load8_i32(q + i), z));
      _mm256_storeu_ps(x + i, _mm256_mul_ps(v, _mm256_loadu_ps(scale + i)));
    }
    for (; i < n; ++i) x[i] = dequantize_one(q[i], scale[i], zp[i]);
  }

  static std::int32_t hsum(__m256i v) noexcept {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
  }
  static __m256i widen16(const std::int8_t* w) noexcept {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
  }
  // Exact: int8 weights widened to int16, madd_epi16 forms pair sums in int32 (no saturation,
  // unlike maddubs). Four rows at a time share each load of x. Integer addition is associative,
  // so the lane order of the sums cannot change the result.
  static void matvec(const std::int8_t* w, const std::int16_t* x, std::int32_t* y, std::size_t rows,
                     std::size_t cols) noexcept {
    std::size_t r = 0;
    for (const std::size_t body = rows - rows % 4; r < body; r += 4) {
      const std::int8_t* w0 = w + r * cols;
      const std::int8_t *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
      __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
      std::size_t i = 0;
      for (const std::size_t body = cols - cols % 16; i < body; i += 16) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(widen16(w0 + i), xv));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(widen16(w1 + i), xv));
        a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(widen16(w2 + i), xv));
        a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(widen16(w3 + i), xv));
      }
      std::int32_t s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);
      for (; i < cols; ++i) {
        const std::int32_t xi = x[i];
        s0 += w0[i] * xi;
        s1 += w1[i] * xi;
        s2 += w2[i] * xi;
        s3 += w3[i] * xi;
      }
      y[r] = s0;
      y[r + 1] = s1;
      y[r + 2] = s2;
      y[r + 3] = s3;
    }
    for (; r < rows; ++r) {
      const std::int8_t* wr = w + r * cols;
      __m256i a = _mm256_setzero_si256();
      std::size_t i = 0;
      for (const std::size_t body = cols - cols % 16; i < body; i += 16)
        a = _mm256_add_epi32(
            a, _mm256_madd_epi16(widen16(wr + i), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i))));
      std::int32_t s = hsum(a);
      for (; i < cols; ++i) s += wr[i] * std::int32_t{x[i]};
      y[r] = s;
    }
  }
};
/// The fastest kernel set this build's instruction set has (AVX2, aarch64 NEON, or xsimd).
using NativeQuantKernels = Avx2QuantKernels;
#elif defined(__aarch64__) && defined(__ARM_NEON)
struct NeonQuantKernels {
  // 4 floats -> 4 int32 codes, the operations of quantize_one in the same order (vrndnq rounds
  // half to even whatever the rounding mode; the selects send NaN to lo as the reference does).
  static int32x4_t quantize4(float32x4_t v, float32x4_t inv, float32x4_t zp, float32x4_t lo, float32x4_t hi) noexcept {
    v = vaddq_f32(vrndnq_f32(vmulq_f32(v, inv)), zp);
    v = vbslq_f32(vcgtq_f32(v, lo), v, lo);
    v = vbslq_f32(vcltq_f32(v, hi), v, hi);
    return vcvtq_s32_f32(v);
  }
  static void store16(std::int8_t* q, int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) noexcept {
    const int16x8_t ab = vcombine_s16(vqmovn_s32(a), vqmovn_s32(b));
    const int16x8_t cd = vcombine_s16(vqmovn_s32(c), vqmovn_s32(d));
    vst1q_s8(q, vcombine_s8(vqmovn_s16(ab), vqmovn_s16(cd)));
  }
  // 16 int8 codes minus zero points -> 4 x 4 floats, exact in int32.
  static void widen16(const std::int8_t* q, int32x4_t (&out)[4]) noexcept {
    const int8x16_t b = vld1q_s8(q);
    const int16x8_t lo = vmovl_s8(vget_low_s8(b)), hi = vmovl_high_s8(b);
    out[0] = vmovl_s16(vget_low_s16(lo));
    out[1] = vmovl_high_s16(lo);
    out[2] = vmovl_s16(vget_low_s16(hi));
    out[3] = vmovl_high_s16(hi);
  }

  static void quantize_run(const float* x, std::int8_t* q, std::size_t n, float scale, std::int32_t zp,
                           int bits) noexcept {
    const CodeRange r(bits);
    const float inv = 1.0f / scale, z = static_cast<float>(zp);
    const float32x4_t vinv = vdupq_n_f32(inv), vzp = vdupq_n_f32(z), vlo = vdupq_n_f32(r.lo), vhi = vdupq_n_f32(r.hi);
    std::size_t i = 0;
    for (const std::size_t body = n - n % 16; i < body; i += 16)
      store16(q + i, quantize4(vld1q_f32(x + i), vinv, vzp, vlo, vhi), quantize4(vld1q_f32(x + i + 4), vinv, vzp, vlo, vhi),
              quantize4(vld1q_f32(x + i + 8), vinv, vzp, vlo, vhi), quantize4(vld1q_f32(x + i + 12), vinv, vzp, vlo, vhi));
    for (; i < n; ++i) q[i] = quantize_one(x[i], inv, z, r.lo, r.hi);
  }
  static void quantize_row(const float* x, std::int8_t* q, std::size_t n, const float* scale,
                           const std::int32_t* zp, int bits) noexcept {
    const CodeRange r(bits);
    const float32x4_t one = vdupq_n_f32(1.0f), vlo = vdupq_n_f32(r.lo), vhi = vdupq_n_f32(r.hi);
    auto q4 = [&](std::size_t j) {
      const float32x4_t inv = vdivq_f32(one, vld1q_f32(scale + j));
      return quantize4(vld1q_f32(x + j), inv, vcvtq_f32_s32(vld1q_s32(zp + j)), vlo, vhi);
    };
    std::size_t i = 0;
    for (const std::size_t body = n - n % 16; i < body; i += 16) store16(q + i, q4(i), q4(i + 4), q4(i + 8), q4(i + 12));
    for (; i < n; ++i) q[i] = quantize_one(x[i], 1.0f / scale[i], static_cast<float>(zp[i]), r.lo, r.hi);
  }
  static void dequantize_run(const std::int8_t* q, float* x, std::size_t n, float scale, std::int32_t zp) noexcept {
    const float32x4_t vs = vdupq_n_f32(scale);
    const int32x4_t vzp = vdupq_n_s32(zp);
    std::size_t i = 0;
    int32x4_t v[4];
    for (const std::size_t body = n - n % 16; i < body; i += 16) {
      widen16(q + i, v);
      for (int k = 0; k < 4; ++k) vst1q_f32(x + i + 4 * k, vmulq_f32(vcvtq_f32_s32(vsubq_s32(v[k], vzp)), vs));
    }
    for (; i < n; ++i) x[i] = dequantize_one(q[i], scale, zp);
  }
  static void dequantize_row(const std::int8_t* q, float* x, std::size_t n, const float* scale,
                             const std::int32_t* zp) noexcept {
    std::size_t i = 0;
    int32x4_t v[4];
    for (const std::size_t body = n - n % 16; i < body; i += 16) {
      widen16(q + i, v);
      for (std::size_t k = 0; k < 4; ++k) {
        const std::size_t j = i + 4 * k;
        vst1q_f32(x + j, vmulq_f32(vcvtq_f32_s32(vsubq_s32(v[k], vld1q_s32(zp + j))), vld1q_f32(scale + j)));
      }
    }
    for (; i < n; ++i) x[i] = dequantize_one(q[i], scale[i], zp[i]);
  }
  // Exact: int8 weights widened to int16, products accumulated in int32 by vmlal_s16. One row at
  // a time: the weights stream once either way, and the x loads hit L1.
  static void matvec(const std::int8_t* w, const std::int16_t* x, std::int32_t* y, std::size_t rows,
                     std::size_t cols) noexcept {
    for (std::size_t r = 0; r < rows; ++r) {
      const std::int8_t* wr = w + r * cols;
      int32x4_t a = vdupq_n_s32(0), b = vdupq_n_s32(0);
      std::size_t i = 0;
      for (const std::size_t body = cols - cols % 8; i < body; i += 8) {
        const int16x8_t wv = vmovl_s8(vld1_s8(wr + i)), xv = vld1q_s16(x + i);
        a = vmlal_s16(a, vget_low_s16(wv), vget_low_s16(xv));
        b = vmlal_high_s16(b, wv, xv);
      }
      std::int32_t s = vaddvq_s32(vaddq_s32(a, b));
      for (; i < cols; ++i) s += wr[i] * std::int32_t{x[i]};
      y[r] = s;
    }
  }
};
/// The fastest kernel set this build's instruction set has (AVX2, aarch64 NEON, or xsimd).
using NativeQuantKernels = NeonQuantKernels;
#else
/// The fastest kernel set this build's instruction set has (AVX2, aarch64 NEON, or xsimd).
using NativeQuantKernels = XsimdQuantKernels;
#endif

/// Name of the kernel set `NativeQuantKernels` stands for, for logs and benchmark labels.
inline const char* quant_kernels_name() noexcept {
#if defined(__AVX2__)
  return "avx2";
#elif defined(__aarch64__) && defined(__ARM_NEON)
  return "neon64";
#else
  return xsimd::default_arch::name();
#endif
}

}  // namespace edgesplit::kernels
