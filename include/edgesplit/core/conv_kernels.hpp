// edgesplit/core/conv_kernels.hpp - direct convolution kernels (no column matrix), written once
// over xsimd batches, each with a scalar reference beside it.
//
// Three kernels, all on one sample's NCHW planes:
// - depthwise_conv2d: one input channel per group (depthwise, with an optional channel
//   multiplier), any kernel size, stride, padding and dilation. Vectorised along the output row.
// - conv2d_stride1: a dense (or one group's) convolution at stride 1, any kernel size, padding and
//   dilation, as an implicit matrix product: no column matrix is built, the kernel reads shifted
//   rows of a zero-padded copy of the input instead.
// - conv2d_direct: the same at any stride (conv2d_stride1 at stride 1): the padded input is also
//   split into row and column phases, so that a strided convolution reads contiguous runs too.
// All write every element of their output (bias included) and take their scratch memory from the
// caller (sizes from the *_scratch functions), so a caller that keeps it allocates nothing.
//
// Summation order is fixed and the same in the SIMD kernel and its scalar reference: start from
// the bias, then add the kernel taps with fused multiply-adds in (channel, row, column) order. On
// targets with a hardware FMA the two agree bit for bit; elsewhere (xsimd then emulates the FMA
// with a multiply and an add) within the dot-product error bound.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>

#include <xsimd/xsimd.hpp>

#include "edgesplit/core/im2col.hpp"
#include "edgesplit/core/kernels.hpp"

namespace edgesplit::kernels {

namespace detail {

// The zero-padded copy of one plane that depthwise_conv2d reads, with its columns split by phase
// modulo the column stride: padded column s * q + r of an input row is at row[r * phase_len + q].
// A tap at column offset t (t = j * dilation_w) of output column ow then reads phase t % s at
// index ow + t / s: consecutive output columns read consecutive elements, at any stride. After the
// input rows come one row of zeros (what padding rows read) and one row of working space.
struct PhasedRows {
  std::size_t stride;     // column stride s
  std::size_t phase_len;  // elements per phase: ceil(padded width / s) + one batch of slack
  std::size_t pitch;      // elements per row: s * phase_len
  std::size_t height;     // input rows

  template <class T>
  static PhasedRows of(std::size_t height, std::size_t width, const Window2D& w) noexcept {
    const std::size_t s = w.stride_w, padded = w.padding.left + width + w.padding.right;
    const std::size_t len = (padded + s - 1) / s + xsimd::batch<T>::size;
    return {s, len, s * len, height};
  }
  std::size_t size() const noexcept { return pitch * (height + 2); }
  template <class T>
  const T* zeros(const T* buf) const noexcept {
    return buf + height * pitch;
  }

  // Copies plane `x` (height x width) into `buf`, zeros in the padding and the slack. Rows are
  // short (tens of elements): batches copied inline cost less than memcpy and memset calls.
  template <class T>
  void fill(const T* x, std::size_t width, std::size_t left, T* buf) const {
    zero_n(buf + height * pitch, pitch);  // the zero row
    // Zeros around `n` elements placed at `at` within a phase of phase_len.
    auto pad = [this](T* phase, std::size_t at, std::size_t n) {
      zero_n(phase, at);
      zero_n(phase + at + n, phase_len - at - n);
    };
    for (std::size_t h = 0; h < height; ++h) {
      const T* src = x + h * width;
      T* row = buf + h * pitch;
      if (stride == 1) {
        pad(row, left, width);
        copy_n(src, width, row + left);
      } else if (stride == 2) {
        // Input column k is padded column k + left: phase (k + left) % 2, index (k + left) / 2.
        // Pairs (2m, 2m + 1) go to the two phases at m + offset: a loop compilers vectorise.
        const std::size_t pairs = width / 2;
        T* first_phase = row + (left % 2) * phase_len;          // where column 0 goes
        T* second_phase = row + ((left + 1) % 2) * phase_len;  // where column 1 goes
        pad(first_phase, left / 2, width - pairs);
        pad(second_phase, (left + 1) / 2, pairs);
        T* first = first_phase + left / 2;
        T* second = second_phase + (left + 1) / 2;
        for (std::size_t m = 0; m < pairs; ++m) {
          first[m] = src[2 * m];
          second[m] = src[2 * m + 1];
        }
        if (width % 2 != 0) first[pairs] = src[width - 1];
      } else {
        zero_n(row, pitch);
        for (std::size_t k = 0; k < width; ++k) row[((k + left) % stride) * phase_len + (k + left) / stride] = src[k];
      }
    }
  }
  template <class T>
  static void zero_n(T* p, std::size_t n) {
    using B = xsimd::batch<T>;
    std::size_t i = 0;
    for (; i + B::size <= n; i += B::size) B(T(0)).store_unaligned(p + i);
    for (; i < n; ++i) p[i] = T(0);
  }
  template <class T>
  static void copy_n(const T* src, std::size_t n, T* dst) {
    using B = xsimd::batch<T>;
    std::size_t i = 0;
    for (; i + B::size <= n; i += B::size) B::load_unaligned(src + i).store_unaligned(dst + i);
    for (; i < n; ++i) dst[i] = src[i];
  }
  // Where the tap at column offset t of output column 0 starts within a row.
  std::size_t tap(std::size_t t) const noexcept { return (t % stride) * phase_len + t / stride; }
};

// The largest kernel side depthwise_conv2d vectorises (it falls back to the scalar reference past
// it): bounds the tile's arrays of row pointers and tap offsets.
inline constexpr std::size_t depthwise_max_kernel = 16;

// A tile of depthwise_conv2d: R output rows x NV batches of output columns from column `ow`.
// rows[r * depthwise_max_kernel + i] is the phased row that kernel row i of output row r reads
// (the zero row in the padding). Batches reaching past `ow_n` are stored in part. K > 0 fixes the
// kernel at K x K at compile time (kh and kw are then K), so the tap loops unroll.
template <class T, std::size_t R, std::size_t NV, std::size_t K>
inline void depthwise_tile(const T* const* rows, std::size_t kh_run, std::size_t kw_run, const std::size_t* taps,
                           const T* wts, T bias, std::size_t ow, std::size_t ow_n, T* y) {
  using B = xsimd::batch<T>;
  constexpr std::size_t L = B::size;
  const std::size_t kh = K > 0 ? K : kh_run, kw = K > 0 ? K : kw_run;
  B acc[R][NV];
  for (std::size_t r = 0; r < R; ++r)
    for (std::size_t v = 0; v < NV; ++v) acc[r][v] = B(bias);
  for (std::size_t i = 0; i < kh; ++i) {
    const T* src[R];
    for (std::size_t r = 0; r < R; ++r) src[r] = rows[r * depthwise_max_kernel + i] + ow;
    for (std::size_t j = 0; j < kw; ++j) {
      const B wv(wts[i * kw + j]);
      const std::size_t t = taps[j];
      for (std::size_t r = 0; r < R; ++r)
        for (std::size_t v = 0; v < NV; ++v)
          acc[r][v] = xsimd::fma(B::load_unaligned(src[r] + t + v * L), wv, acc[r][v]);
    }
  }
  for (std::size_t v = 0; v < NV; ++v) {
    const std::size_t col = ow + v * L;
    if (col + L <= ow_n) {
      for (std::size_t r = 0; r < R; ++r) acc[r][v].store_unaligned(y + r * ow_n + col);
    } else {
      alignas(64) T lanes[L];
      const std::size_t n = std::min(L, ow_n - col);  // col < ow_n: a tile starts inside the row
      for (std::size_t r = 0; r < R; ++r) {
        acc[r][v].store_aligned(lanes);
        std::copy_n(lanes, n, y + r * ow_n + col);
      }
    }
  }
}

// One band of R output rows of one output plane, in tiles of 2 batches (then 1).
template <class T, std::size_t R, std::size_t K>
inline void depthwise_band(const T* const* rows, std::size_t kh, std::size_t kw, const std::size_t* taps,
                           const T* wts, T bias, std::size_t ow_n, T* y) {
  constexpr std::size_t L = xsimd::batch<T>::size;
  const std::size_t batches = (ow_n + L - 1) / L;  // the last one possibly partial
  std::size_t v = 0;
  for (; v + 2 <= batches; v += 2) depthwise_tile<T, R, 2, K>(rows, kh, kw, taps, wts, bias, v * L, ow_n, y);
  if (v < batches) depthwise_tile<T, R, 1, K>(rows, kh, kw, taps, wts, bias, v * L, ow_n, y);
}

}  // namespace detail

/// Scratch elements depthwise_conv2d needs for planes of `height` x `width` under window `w`:
/// one zero-padded plane and two rows.
template <Real T>
inline std::size_t depthwise_conv2d_scratch(std::size_t height, std::size_t width, const Window2D& w) noexcept {
  return detail::PhasedRows::of<T>(height, width, w).size();
}

/// Scalar reference for depthwise_conv2d (needs no scratch).
template <Real T>
inline void depthwise_conv2d_scalar(const T* in, std::size_t channels, std::size_t height, std::size_t width,
                                    const Window2D& w, std::size_t multiplier, const T* weight, const T* bias,
                                    T* out) {
  const std::size_t oh_n = w.out_h(height), ow_n = w.out_w(width), taps = w.kernel_h * w.kernel_w;
  for (std::size_t o = 0; o < channels * multiplier; ++o) {
    const T* plane = in + (o / multiplier) * height * width;
    const T* wts = weight + o * taps;
    for (std::size_t oh = 0; oh < oh_n; ++oh)
      for (std::size_t ow = 0; ow < ow_n; ++ow) {
        T acc = bias != nullptr ? bias[o] : T(0);
        for (std::size_t i = 0; i < w.kernel_h; ++i) {
          const std::size_t ih = oh * w.stride_h + i * w.dilation_h;  // in padded rows
          if (ih < w.padding.top || ih - w.padding.top >= height) continue;
          for (std::size_t j = 0; j < w.kernel_w; ++j) {
            const std::size_t iw = ow * w.stride_w + j * w.dilation_w;
            if (iw < w.padding.left || iw - w.padding.left >= width) continue;
            acc = std::fma(plane[(ih - w.padding.top) * width + iw - w.padding.left], wts[i * w.kernel_w + j], acc);
          }
        }
        out[(o * oh_n + oh) * ow_n + ow] = acc;
      }
  }
}

/// A depthwise convolution of one sample: `channels` input planes of `height` x `width`
/// (row-major, one after another), each convolved with `multiplier` kernels of its own, giving
/// channels * multiplier output planes of w.out_h(height) x w.out_w(width); output plane o reads
/// input plane o / multiplier (torch.nn.Conv2d with groups == in_channels). `weight` is
/// {channels * multiplier, kernel_h, kernel_w}; `bias` has one value per output plane, or is
/// nullptr. `scratch` holds depthwise_conv2d_scratch<T>(height, width, w) elements. Any stride,
/// padding and dilation of a validated window whose output is not empty; kernels wider or taller
/// than 16 run the scalar reference.
///
/// Each input plane is first copied, zero-padded and split by column phase (see PhasedRows), so
/// that every tap of a batch of output columns is one contiguous load at any stride. Output rows
/// are then computed in tiles of up to 4 rows x 2 batches, all taps accumulated in registers (8
/// independent FMA chains); a row's last, partial batch is computed whole and stored in part.
template <Real T>
inline void depthwise_conv2d(const T* in, std::size_t channels, std::size_t height, std::size_t width,
                             const Window2D& w, std::size_t multiplier, const T* weight, const T* bias, T* out,
                             T* scratch) {
  constexpr std::size_t max_k = detail::depthwise_max_kernel;
  if constexpr (!has_simd<T>) {
    depthwise_conv2d_scalar(in, channels, height, width, w, multiplier, weight, bias, out);
  } else {
    const std::size_t kh = w.kernel_h, kw = w.kernel_w;
    if (kh > max_k || kw > max_k) {
      depthwise_conv2d_scalar(in, channels, height, width, w, multiplier, weight, bias, out);
      return;
    }
    const auto phased = detail::PhasedRows::of<T>(height, width, w);
    const std::size_t oh_n = w.out_h(height), ow_n = w.out_w(width);
    std::array<std::size_t, max_k> taps{};
    for (std::size_t j = 0; j < kw; ++j) taps[j] = phased.tap(j * w.dilation_w);
    std::array<const T*, 4 * max_k> rows{};
    const T* zeros = phased.zeros(scratch);
    // Kernel row i of output row oh: input row oh * stride_h + i * dilation_h - top, or zeros.
    auto set_rows = [&](std::size_t oh, std::size_t band) {
      for (std::size_t r = 0; r < band; ++r)
        for (std::size_t i = 0; i < kh; ++i) {
          const std::size_t ih = (oh + r) * w.stride_h + i * w.dilation_h;  // in padded rows
          rows[r * max_k + i] =
              ih < w.padding.top || ih - w.padding.top >= height ? zeros : scratch + (ih - w.padding.top) * phased.pitch;
        }
    };
    // One output plane, with the kernel size fixed at compile time for 3x3 (K = 3) or not (K = 0).
    auto plane = [&]<std::size_t K>(std::size_t o) {
      const T* wts = weight + o * kh * kw;
      const T b = bias != nullptr ? bias[o] : T(0);
      T* y = out + o * oh_n * ow_n;
      std::size_t oh = 0;
      for (; oh + 4 <= oh_n; oh += 4) {
        set_rows(oh, 4);
        detail::depthwise_band<T, 4, K>(rows.data(), kh, kw, taps.data(), wts, b, ow_n, y + oh * ow_n);
      }
      if (oh + 2 <= oh_n) {
        set_rows(oh, 2);
        detail::depthwise_band<T, 2, K>(rows.data(), kh, kw, taps.data(), wts, b, ow_n, y + oh * ow_n);
        oh += 2;
      }
      if (oh < oh_n) {
        set_rows(oh, 1);
        detail::depthwise_band<T, 1, K>(rows.data(), kh, kw, taps.data(), wts, b, ow_n, y + oh * ow_n);
      }
    };
    for (std::size_t c = 0; c < channels; ++c) {
      phased.fill(in + c * height * width, width, w.padding.left, scratch);
      for (std::size_t o = c * multiplier; o < (c + 1) * multiplier; ++o) {
        if (kh == 3 && kw == 3)
          plane.template operator()<3>(o);
        else
          plane.template operator()<0>(o);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------

namespace detail {

// Output channels per register tile of conv2d_stride1, and batches of output positions per tile.
inline constexpr std::size_t conv_tile_rows = 4;
inline constexpr std::size_t conv_tile_batches = 3;

// The geometry of conv2d_stride1's padded input: `channels` planes of padded_h x padded_w, then
// slack for the last tile's reads. Output position (oh, ow) is computed at "wide" position
// p = oh * padded_w + ow, and tap (c, i, j) of it reads padded element
// c * plane + i * dilation_h * padded_w + j * dilation_w + p: a contiguous run of positions reads
// a contiguous run of the padded input. Positions with ow >= out_w are computed and dropped.
struct WideGeometry {
  std::size_t padded_h, padded_w, plane;  // plane = padded_h * padded_w
  std::size_t input;                      // elements of the padded input, slack included
  std::size_t depth;                      // K = channels * kernel_h * kernel_w
  std::size_t packed;                     // elements of the packed weights

  template <class T>
  static WideGeometry of(std::size_t channels, std::size_t height, std::size_t width, const Window2D& w,
                         std::size_t out_channels) noexcept {
    WideGeometry g{};
    g.padded_h = w.padding.top + height + w.padding.bottom;
    g.padded_w = w.padding.left + width + w.padding.right;
    g.plane = g.padded_h * g.padded_w;
    // The last tile reads up to conv_tile_batches batches past its first wide position, which is
    // below out_h * padded_w, plus the largest tap offset; the dilated kernel fits the padded
    // plane, so this stays within `channels` planes plus one row and three batches.
    g.input = channels * g.plane + g.padded_w + conv_tile_batches * xsimd::batch<T>::size;
    g.depth = channels * w.kernel_h * w.kernel_w;
    g.packed = (out_channels + conv_tile_rows - 1) / conv_tile_rows * conv_tile_rows * g.depth;
    return g;
  }
};

// One register tile: NR output channels x NV batches of wide positions, starting at `x`
// (the padded input at the tile's first position) with packed weights `wp` ({depth, NR}).
template <class T, std::size_t NR, std::size_t NV>
inline void conv_tile(const T* x, const T* wp, const T* bias, std::size_t channels, std::size_t plane,
                      std::size_t kh, std::size_t kw, std::size_t row_step, std::size_t col_step,
                      xsimd::batch<T> (&acc)[NR][NV]) {
  using B = xsimd::batch<T>;
  constexpr std::size_t L = B::size;
  for (std::size_t r = 0; r < NR; ++r)
    for (std::size_t v = 0; v < NV; ++v) acc[r][v] = B(bias[r]);
  for (std::size_t c = 0; c < channels; ++c, x += plane) {
    const T* xi = x;
    for (std::size_t i = 0; i < kh; ++i, xi += row_step) {
      const T* xj = xi;
      for (std::size_t j = 0; j < kw; ++j, xj += col_step, wp += NR) {
        B xv[NV];
        for (std::size_t v = 0; v < NV; ++v) xv[v] = B::load_unaligned(xj + v * L);
        for (std::size_t r = 0; r < NR; ++r) {
          const B wv(wp[r]);
          for (std::size_t v = 0; v < NV; ++v) acc[r][v] = xsimd::fma(xv[v], wv, acc[r][v]);
        }
      }
    }
  }
}

// Stores a tile's rows (the first `rows` of NR) at wide positions from p: whole batches that fall
// inside one output row go straight to `out`, the others lane by lane.
template <class T, std::size_t NR, std::size_t NV>
inline void store_tile(const xsimd::batch<T> (&acc)[NR][NV], std::size_t rows, std::size_t p, std::size_t padded_w,
                       std::size_t oh_n, std::size_t ow_n, T* out) {
  constexpr std::size_t L = xsimd::batch<T>::size;
  const std::size_t plane = oh_n * ow_n;
  for (std::size_t v = 0; v < NV; ++v, p += L) {
    std::size_t oh = p / padded_w, ow = p % padded_w;
    if (oh >= oh_n) return;
    if (ow + L <= ow_n) {
      for (std::size_t r = 0; r < rows; ++r) acc[r][v].store_unaligned(out + r * plane + oh * ow_n + ow);
      continue;
    }
    alignas(64) T lanes[NR][L];
    for (std::size_t r = 0; r < rows; ++r) acc[r][v].store_aligned(lanes[r]);
    for (std::size_t l = 0; l < L; ++l) {
      if (oh < oh_n && ow < ow_n)
        for (std::size_t r = 0; r < rows; ++r) out[r * plane + oh * ow_n + ow] = lanes[r][l];
      if (++ow == padded_w) {
        ow = 0;
        ++oh;
      }
    }
  }
}

}  // namespace detail

/// Scratch elements conv2d_stride1 needs for `channels` planes of `height` x `width` under window
/// `w` and `out_channels` outputs: a zero-padded copy of the input and the weights packed in tiles.
template <Real T>
inline std::size_t conv2d_stride1_scratch(std::size_t channels, std::size_t height, std::size_t width,
                                          const Window2D& w, std::size_t out_channels) noexcept {
  const auto g = detail::WideGeometry::of<T>(channels, height, width, w, out_channels);
  return g.input + g.packed;
}

/// Whether conv2d_stride1 is worth running on planes `width` wide under window `w` (stride 1)
/// rather than im2col and a GEMM: it computes every padded column of each output row and keeps
/// out_w of them, so narrow planes waste a larger share (14 of 16 kept at 14 x 14 with padding 1,
/// 7 of 9 at 7 x 7). With at least 90% kept it was ahead or level (ResNet-18's 3x3 layers at
/// 56 x 56 and 28 x 28); at 14 x 14 and 7 x 7 Eigen's GEMM was faster (docs/performance.md).
inline bool conv2d_stride1_suits(std::size_t width, const Window2D& w) noexcept {
  const std::size_t padded = w.padding.left + width + w.padding.right;
  return w.out_w(width) * 10 >= padded * 9;
}

/// Scalar reference for conv2d_stride1 (needs no scratch).
template <Real T>
inline void conv2d_stride1_scalar(const T* in, std::size_t channels, std::size_t height, std::size_t width,
                                  const Window2D& w, const T* weight, std::size_t out_channels, const T* bias,
                                  T* out) {
  const std::size_t oh_n = w.out_h(height), ow_n = w.out_w(width);
  for (std::size_t o = 0; o < out_channels; ++o)
    for (std::size_t oh = 0; oh < oh_n; ++oh)
      for (std::size_t ow = 0; ow < ow_n; ++ow) {
        T acc = bias != nullptr ? bias[o] : T(0);
        const T* wts = weight + o * channels * w.kernel_h * w.kernel_w;
        for (std::size_t c = 0; c < channels; ++c)
          for (std::size_t i = 0; i < w.kernel_h; ++i) {
            const std::size_t ih = oh + i * w.dilation_h;  // in padded rows
            for (std::size_t j = 0; j < w.kernel_w; ++j, ++wts) {
              const std::size_t iw = ow + j * w.dilation_w;
              if (ih < w.padding.top || ih - w.padding.top >= height || iw < w.padding.left ||
                  iw - w.padding.left >= width)
                continue;
              acc = std::fma(in[(c * height + ih - w.padding.top) * width + iw - w.padding.left], *wts, acc);
            }
          }
        out[(o * oh_n + oh) * ow_n + ow] = acc;
      }
}

/// A convolution at stride 1 (both axes) of one sample: `channels` input planes of `height` x
/// `width` and `weight` {out_channels, channels, kernel_h, kernel_w} (one group's, for a grouped
/// convolution) give out_channels planes of w.out_h(height) x w.out_w(width). `bias` has one
/// value per output plane, or is nullptr. Any padding and dilation; `w.stride_h` and `w.stride_w`
/// must be 1. `scratch` holds conv2d_stride1_scratch<T>(channels, height, width, w, out_channels)
/// elements.
///
/// An implicit matrix product (see the file comment): the weights are packed into tiles of four
/// output channels, the input copied once with its zero padding, and each register tile of
/// 4 channels x 3 batches of positions accumulates all K = channels * kernel_h * kernel_w taps
/// before it is stored. Compared with im2col and a GEMM this skips writing and packing a column
/// matrix kernel_h * kernel_w times the input's size.
template <Real T>
inline void conv2d_stride1(const T* in, std::size_t channels, std::size_t height, std::size_t width,
                           const Window2D& w, const T* weight, std::size_t out_channels, const T* bias, T* out,
                           T* scratch) {
  if constexpr (!has_simd<T>) {
    conv2d_stride1_scalar(in, channels, height, width, w, weight, out_channels, bias, out);
  } else {
    using B = xsimd::batch<T>;
    constexpr std::size_t L = B::size, NR = detail::conv_tile_rows, NV = detail::conv_tile_batches;
    const auto g = detail::WideGeometry::of<T>(channels, height, width, w, out_channels);
    const std::size_t oh_n = w.out_h(height), ow_n = w.out_w(width);
    T* xp = scratch;
    T* wp = scratch + g.input;
    // The padded input; every element written, the slack included.
    for (std::size_t c = 0; c < channels; ++c) {
      T* plane = xp + c * g.plane;
      std::fill_n(plane, w.padding.top * g.padded_w, T(0));
      for (std::size_t h = 0; h < height; ++h) {
        T* row = plane + (w.padding.top + h) * g.padded_w;
        std::fill_n(row, w.padding.left, T(0));
        std::copy_n(in + (c * height + h) * width, width, row + w.padding.left);
        std::fill_n(row + w.padding.left + width, w.padding.right, T(0));
      }
      std::fill_n(plane + (w.padding.top + height) * g.padded_w, w.padding.bottom * g.padded_w, T(0));
    }
    std::fill(xp + channels * g.plane, xp + g.input, T(0));
    // The weights, {out_channels, depth} -> tiles {depth, NR}; rows past out_channels are zero.
    for (std::size_t ob = 0; ob * NR < out_channels; ++ob)
      for (std::size_t k = 0; k < g.depth; ++k)
        for (std::size_t r = 0; r < NR; ++r) {
          const std::size_t o = ob * NR + r;
          wp[(ob * g.depth + k) * NR + r] = o < out_channels ? weight[o * g.depth + k] : T(0);
        }
    const std::size_t wide = oh_n * g.padded_w;  // wide positions, the last row's tail included
    const std::size_t row_step = w.dilation_h * g.padded_w, col_step = w.dilation_w;
    for (std::size_t ob = 0; ob * NR < out_channels; ++ob) {
      const std::size_t o0 = ob * NR, rows = std::min(NR, out_channels - o0);
      T b[NR] = {};
      for (std::size_t r = 0; r < rows; ++r) b[r] = bias != nullptr ? bias[o0 + r] : T(0);
      const T* wt = wp + ob * g.depth * NR;
      T* y = out + o0 * oh_n * ow_n;
      // Tiles of NV batches, then one of fewer for the rest, as a small plane's wide positions
      // (14 x 16 = 224 at 14 x 14 with padding 1) are far from a multiple of NV batches.
      auto tile = [&]<std::size_t N>(std::size_t p) {
        B acc[NR][N];
        detail::conv_tile<T, NR, N>(xp + p, wt, b, channels, g.plane, w.kernel_h, w.kernel_w, row_step, col_step,
                                    acc);
        detail::store_tile<T, NR, N>(acc, rows, p, g.padded_w, oh_n, ow_n, y);
      };
      static_assert(NV == 3, "the rest after whole tiles is one tile of 2 batches or 1");
      std::size_t p = 0;
      for (; p + (NV - 1) * L < wide; p += NV * L) tile.template operator()<NV>(p);
      if (p + L < wide)
        tile.template operator()<2>(p);
      else if (p < wide)
        tile.template operator()<1>(p);
    }
  }
}

// ---------------------------------------------------------------------------------------------

namespace detail {

// The geometry of conv2d_direct's input at a stride over 1. Each channel's zero-padded plane
// (padded_h x padded_w) is split by row phase modulo stride_h and column phase modulo stride_w
// into stride_h * stride_w phase planes of rows x cols: padded element (r, c) goes to phase plane
// (r % stride_h) * stride_w + c % stride_w at (r / stride_h) * cols + c / stride_w.
//
// Output position (oh, ow) is computed at the "wide" position p = oh * cols + ow. Its input row
// oh * stride_h + i * dilation_h is row oh + i * dilation_h / stride_h of row phase
// i * dilation_h % stride_h, and likewise for columns, so tap (ch, i, j) of it reads
// ch * channel + row_part(i) + col_part(j) + p (see offsets()): a contiguous run of positions
// reads a contiguous run of one phase plane, and the register tiles of conv2d_stride1 apply
// unchanged. Positions with ow >= out_w are computed and dropped.
struct PhasedGeometry {
  std::size_t sh, sw;             // strides
  std::size_t rows, cols, plane;  // of a phase plane; plane = rows * cols
  std::size_t channel;            // elements per channel: sh * sw * plane
  std::size_t input;              // elements of the rearranged input, slack included
  std::size_t depth;              // K = channels * kernel_h * kernel_w
  std::size_t packed;             // elements of the packed weights

  template <class T>
  static PhasedGeometry of(std::size_t channels, std::size_t height, std::size_t width, const Window2D& w,
                           std::size_t out_channels) noexcept {
    PhasedGeometry g{};
    g.sh = w.stride_h;
    g.sw = w.stride_w;
    g.rows = (w.padding.top + height + w.padding.bottom + g.sh - 1) / g.sh;
    g.cols = (w.padding.left + width + w.padding.right + g.sw - 1) / g.sw;
    g.plane = g.rows * g.cols;
    g.channel = g.sh * g.sw * g.plane;
    // The last tile reads up to conv_tile_batches batches past its first wide position, which is
    // below out_h * cols, plus the largest tap offset. As the dilated kernel fits the padded
    // plane, oh + i * dilation_h / stride_h < rows and ow + j * dilation_w / stride_w < cols for
    // every kept position, so every read stays within `channels` channels plus one phase row
    // and three batches.
    g.input = channels * g.channel + g.cols + conv_tile_batches * xsimd::batch<T>::size;
    g.depth = channels * w.kernel_h * w.kernel_w;
    g.packed = (out_channels + conv_tile_rows - 1) / conv_tile_rows * conv_tile_rows * g.depth;
    return g;
  }
  // Offsets of kernel row i (row_part) and column j (col_part) within a channel.
  void offsets(const Window2D& w, std::size_t* row_part, std::size_t* col_part) const noexcept {
    for (std::size_t i = 0; i < w.kernel_h; ++i) {
      const std::size_t r = i * w.dilation_h;
      row_part[i] = (r % sh) * sw * plane + r / sh * cols;
    }
    for (std::size_t j = 0; j < w.kernel_w; ++j) {
      const std::size_t c = j * w.dilation_w;
      col_part[j] = (c % sw) * plane + c / sw;
    }
  }
  // Writes the rearranged input of `channels` planes of height x width at `in` into `xp`: every
  // element of `input` (zeros in the padding, in phase rows past the input and in the slack).
  template <class T>
  void fill(const T* in, std::size_t channels, std::size_t height, std::size_t width, const Padding2D& pad,
            T* xp) const {
    std::fill_n(xp, input, T(0));
    for (std::size_t c = 0; c < channels; ++c)
      for (std::size_t h = 0; h < height; ++h) {
        const std::size_t r = pad.top + h;
        const T* src = in + (c * height + h) * width;
        T* row = xp + c * channel + (r % sh) * sw * plane + r / sh * cols;  // its column phase 0
        if (sw == 2) {
          // Input column k is padded column k + left: phase (k + left) % 2, index (k + left) / 2.
          // Pairs (2m, 2m + 1) go to the two phases at m + offset: a loop compilers vectorise.
          const std::size_t pairs = width / 2, left = pad.left;
          T* first = row + (left % 2) * plane + left / 2;
          T* second = row + ((left + 1) % 2) * plane + (left + 1) / 2;
          for (std::size_t m = 0; m < pairs; ++m) {
            first[m] = src[2 * m];
            second[m] = src[2 * m + 1];
          }
          if (width % 2 != 0) first[pairs] = src[width - 1];
        } else {
          for (std::size_t k = 0; k < width; ++k) {
            const std::size_t q = k + pad.left;
            row[(q % sw) * plane + q / sw] = src[k];
          }
        }
      }
  }
};

// conv_tile over the phase planes: tap (c, i, j) at x + c * channel + row_part[i] + col_part[j].
// K = 3 fixes a 3 x 3 kernel at compile time, so that its 9 offsets stay in registers (ResNet's
// and MobileNet's strided layers); K = 0 takes kh x kw.
template <class T, std::size_t NR, std::size_t NV, std::size_t K>
inline void conv_tile_phased(const T* x, const T* wp, const T* bias, std::size_t channels, std::size_t channel,
                             std::size_t kh, std::size_t kw, const std::size_t* row_part,
                             const std::size_t* col_part, xsimd::batch<T> (&acc)[NR][NV]) {
  using B = xsimd::batch<T>;
  constexpr std::size_t L = B::size;
  for (std::size_t r = 0; r < NR; ++r)
    for (std::size_t v = 0; v < NV; ++v) acc[r][v] = B(bias[r]);
  if constexpr (K > 0) {
    std::size_t off[K * K];
    for (std::size_t i = 0; i < K; ++i)
      for (std::size_t j = 0; j < K; ++j) off[i * K + j] = row_part[i] + col_part[j];
    for (std::size_t c = 0; c < channels; ++c, x += channel)
      for (std::size_t t = 0; t < K * K; ++t, wp += NR) {
        B xv[NV];
        for (std::size_t v = 0; v < NV; ++v) xv[v] = B::load_unaligned(x + off[t] + v * L);
        for (std::size_t r = 0; r < NR; ++r) {
          const B wv(wp[r]);
          for (std::size_t v = 0; v < NV; ++v) acc[r][v] = xsimd::fma(xv[v], wv, acc[r][v]);
        }
      }
  } else {
    for (std::size_t c = 0; c < channels; ++c, x += channel)
      for (std::size_t i = 0; i < kh; ++i)
        for (std::size_t j = 0; j < kw; ++j, wp += NR) {
          const T* xj = x + row_part[i] + col_part[j];
          B xv[NV];
          for (std::size_t v = 0; v < NV; ++v) xv[v] = B::load_unaligned(xj + v * L);
          for (std::size_t r = 0; r < NR; ++r) {
            const B wv(wp[r]);
            for (std::size_t v = 0; v < NV; ++v) acc[r][v] = xsimd::fma(xv[v], wv, acc[r][v]);
          }
        }
  }
}

// The tile loop of conv2d_direct at a stride over 1, for kernels of K x K (K > 0) or any (K = 0).
template <class T, std::size_t K>
void conv_phased(const PhasedGeometry& g, const Window2D& w, std::size_t channels, std::size_t oh_n,
                 std::size_t ow_n, const T* xp, const T* packed, const T* bias, std::size_t out_channels, T* out,
                 const std::size_t* row_part, const std::size_t* col_part) {
  using B = xsimd::batch<T>;
  constexpr std::size_t L = B::size, NR = conv_tile_rows, NV = conv_tile_batches;
  const std::size_t wide = oh_n * g.cols;  // wide positions, the last row's tail included
  for (std::size_t ob = 0; ob * NR < out_channels; ++ob) {
    const std::size_t o0 = ob * NR, rows = std::min(NR, out_channels - o0);
    T b[NR] = {};
    for (std::size_t r = 0; r < rows; ++r) b[r] = bias != nullptr ? bias[o0 + r] : T(0);
    const T* wt = packed + ob * g.depth * NR;
    T* y = out + o0 * oh_n * ow_n;
    auto tile = [&]<std::size_t N>(std::size_t p) {
      B acc[NR][N];
      conv_tile_phased<T, NR, N, K>(xp + p, wt, b, channels, g.channel, w.kernel_h, w.kernel_w, row_part, col_part,
                                    acc);
      store_tile<T, NR, N>(acc, rows, p, g.cols, oh_n, ow_n, y);
    };
    static_assert(NV == 3, "the rest after whole tiles is one tile of 2 batches or 1");
    std::size_t p = 0;
    for (; p + (NV - 1) * L < wide; p += NV * L) tile.template operator()<NV>(p);
    if (p + L < wide)
      tile.template operator()<2>(p);
    else if (p < wide)
      tile.template operator()<1>(p);
  }
}

// The largest kernel side conv2d_direct takes at a stride (conv2d_direct_suits says no past it,
// and conv2d_direct runs the scalar reference): bounds its tables of tap offsets.
inline constexpr std::size_t conv_direct_max_kernel = 16;

}  // namespace detail

/// The most input channels (per group) for which conv2d_direct_suits takes a strided layer.
inline constexpr std::size_t conv_direct_strided_max_channels = 32;

/// Whether conv2d_direct is worth running on `channels` planes (per group) `width` wide under
/// window `w` rather than im2col and a GEMM. At stride 1 (both axes), conv2d_stride1_suits. At a
/// stride over 1: kernel sides up to 16 and larger than 1 x 1, at most 32 input channels, and at
/// least 90% of the wide positions kept (out_w of ceil(padded width / stride_w) per row). These
/// are the stems of vision models (ResNet-18's 7x7/2 on 3 channels: 1.6x the im2col path with
/// AVX2, 1.5x with AVX-512), where the column matrix is long and thin and the GEMM on it slow;
/// from 64 channels (ResNet-18's 3x3/2 layers) the GEMM was faster (0.90-0.94x), and a strided
/// 1x1 reads one phase of the input only, which im2col gathers alone. docs/performance.md
/// ("Whole models against PyTorch") has the figures.
inline bool conv2d_direct_suits(std::size_t channels, std::size_t width, const Window2D& w) noexcept {
  if (w.stride_h == 1 && w.stride_w == 1) return conv2d_stride1_suits(width, w);
  if (w.kernel_h > detail::conv_direct_max_kernel || w.kernel_w > detail::conv_direct_max_kernel) return false;
  if (channels > conv_direct_strided_max_channels || (w.kernel_h == 1 && w.kernel_w == 1)) return false;
  const std::size_t cols = (w.padding.left + width + w.padding.right + w.stride_w - 1) / w.stride_w;
  return w.out_w(width) * 10 >= cols * 9;
}

/// Scratch elements conv2d_direct needs for `channels` planes of `height` x `width` under window
/// `w` and `out_channels` outputs: the rearranged input and the packed weights.
template <Real T>
inline std::size_t conv2d_direct_scratch(std::size_t channels, std::size_t height, std::size_t width,
                                         const Window2D& w, std::size_t out_channels) noexcept {
  if (w.stride_h == 1 && w.stride_w == 1) return conv2d_stride1_scratch<T>(channels, height, width, w, out_channels);
  const auto g = detail::PhasedGeometry::of<T>(channels, height, width, w, out_channels);
  return g.input + g.packed;
}

/// Scalar reference for conv2d_direct (needs no scratch): the sums of conv2d_stride1_scalar at
/// any stride, in the same order.
template <Real T>
inline void conv2d_direct_scalar(const T* in, std::size_t channels, std::size_t height, std::size_t width,
                                 const Window2D& w, const T* weight, std::size_t out_channels, const T* bias,
                                 T* out) {
  const std::size_t oh_n = w.out_h(height), ow_n = w.out_w(width);
  for (std::size_t o = 0; o < out_channels; ++o)
    for (std::size_t oh = 0; oh < oh_n; ++oh)
      for (std::size_t ow = 0; ow < ow_n; ++ow) {
        T acc = bias != nullptr ? bias[o] : T(0);
        const T* wts = weight + o * channels * w.kernel_h * w.kernel_w;
        for (std::size_t c = 0; c < channels; ++c)
          for (std::size_t i = 0; i < w.kernel_h; ++i) {
            const std::size_t ih = oh * w.stride_h + i * w.dilation_h;  // in padded rows
            for (std::size_t j = 0; j < w.kernel_w; ++j, ++wts) {
              const std::size_t iw = ow * w.stride_w + j * w.dilation_w;
              if (ih < w.padding.top || ih - w.padding.top >= height || iw < w.padding.left ||
                  iw - w.padding.left >= width)
                continue;
              acc = std::fma(in[(c * height + ih - w.padding.top) * width + iw - w.padding.left], *wts, acc);
            }
          }
        out[(o * oh_n + oh) * ow_n + ow] = acc;
      }
}

/// A dense convolution (or one group's) of one sample at any stride, padding and dilation:
/// `channels` input planes of `height` x `width` and `weight` {out_channels, channels, kernel_h,
/// kernel_w} give out_channels planes of w.out_h(height) x w.out_w(width); `bias` has one value
/// per output plane, or is nullptr; `scratch` holds conv2d_direct_scratch<T>(channels, height,
/// width, w, out_channels) elements. At stride 1 this is conv2d_stride1. At a stride over 1 the
/// input is copied once, zero-padded and split into stride_h x stride_w phase planes (see
/// PhasedGeometry), and the same register tiles of 4 output channels x 3 batches of positions
/// accumulate all K = channels * kernel_h * kernel_w taps, each a contiguous load: no column
/// matrix (K / (stride_h * stride_w) times the input's size) is written or packed. Kernels wider
/// or taller than 16 run the scalar reference at a stride.
template <Real T>
inline void conv2d_direct(const T* in, std::size_t channels, std::size_t height, std::size_t width,
                          const Window2D& w, const T* weight, std::size_t out_channels, const T* bias, T* out,
                          T* scratch) {
  if (w.stride_h == 1 && w.stride_w == 1) {
    conv2d_stride1(in, channels, height, width, w, weight, out_channels, bias, out, scratch);
    return;
  }
  constexpr std::size_t max_k = detail::conv_direct_max_kernel;
  if constexpr (!has_simd<T>) {
    conv2d_direct_scalar(in, channels, height, width, w, weight, out_channels, bias, out);
  } else {
    if (w.kernel_h > max_k || w.kernel_w > max_k) {
      conv2d_direct_scalar(in, channels, height, width, w, weight, out_channels, bias, out);
      return;
    }
    constexpr std::size_t NR = detail::conv_tile_rows;
    const auto g = detail::PhasedGeometry::of<T>(channels, height, width, w, out_channels);
    T* xp = scratch;
    T* wp = scratch + g.input;
    g.fill(in, channels, height, width, w.padding, xp);
    // The weights, {out_channels, depth} -> tiles {depth, NR}; rows past out_channels are zero.
    for (std::size_t ob = 0; ob * NR < out_channels; ++ob)
      for (std::size_t k = 0; k < g.depth; ++k)
        for (std::size_t r = 0; r < NR; ++r) {
          const std::size_t o = ob * NR + r;
          wp[(ob * g.depth + k) * NR + r] = o < out_channels ? weight[o * g.depth + k] : T(0);
        }
    std::array<std::size_t, max_k> row_part{}, col_part{};
    g.offsets(w, row_part.data(), col_part.data());
    const std::size_t oh_n = w.out_h(height), ow_n = w.out_w(width);
    if (w.kernel_h == 3 && w.kernel_w == 3)
      detail::conv_phased<T, 3>(g, w, channels, oh_n, ow_n, xp, wp, bias, out_channels, out, row_part.data(),
                                col_part.data());
    else
      detail::conv_phased<T, 0>(g, w, channels, oh_n, ow_n, xp, wp, bias, out_channels, out, row_part.data(),
                                col_part.data());
  }
}

}  // namespace edgesplit::kernels
