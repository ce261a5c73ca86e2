// edgesplit/core/im2col.hpp - 2-D sliding windows: their geometry, and the im2col / col2im
// kernels that turn a convolution into one matrix product.
#pragma once

#include <algorithm>
#include <cstddef>
#include <limits>
#include <string>

#include "edgesplit/core/error.hpp"

namespace edgesplit {

/// Zero padding around an H x W plane, possibly asymmetric (as ONNX's `pads` allows): rows added
/// above and below, columns added left and right.
struct Padding2D {
  std::size_t top = 0;     ///< rows of zeros above the plane
  std::size_t left = 0;    ///< columns of zeros left of the plane
  std::size_t bottom = 0;  ///< rows of zeros below the plane
  std::size_t right = 0;   ///< columns of zeros right of the plane
  /// Equal on all four sides.
  friend bool operator==(const Padding2D&, const Padding2D&) = default;
};

/// The padding that keeps H x W at stride 1 ("same"): (k - 1) * d zeros per axis, the odd one
/// at the bottom / right, as PyTorch's `padding='same'` and ONNX's `SAME_UPPER` place it. At a
/// stride > 1, ONNX's SAME_UPPER pads by an amount that depends on the input size: pass that
/// padding explicitly instead.
inline Padding2D same_padding(std::size_t kernel_h, std::size_t kernel_w, std::size_t dilation_h = 1,
                              std::size_t dilation_w = 1) {
  if (kernel_h == 0 || kernel_w == 0 || dilation_h == 0 || dilation_w == 0)
    fail(errc::invalid_argument, "same_padding needs kernel and dilation sizes > 0");
  if (kernel_h - 1 > std::numeric_limits<std::size_t>::max() / dilation_h ||
      kernel_w - 1 > std::numeric_limits<std::size_t>::max() / dilation_w)
    fail(errc::too_large, "same_padding: the dilated kernel's extent overflows");
  const std::size_t th = (kernel_h - 1) * dilation_h, tw = (kernel_w - 1) * dilation_w;
  return {th / 2, tw / 2, th - th / 2, tw - tw / 2};
}

/// The geometry of a 2-D sliding window (a convolution's or a pooling's): kernel size, stride,
/// zero padding and dilation, per axis. Output row `oh` reads input rows
/// `oh * stride_h - padding.top + i * dilation_h` for i in [0, kernel_h), and likewise for columns.
struct Window2D {
  /// The largest value any field may take: keeps every size computed from them far from
  /// overflow, and no real network comes near it.
  static constexpr std::size_t max_extent = std::size_t{1} << 24;

  std::size_t kernel_h = 1;    ///< kernel rows
  std::size_t kernel_w = 1;    ///< kernel columns
  std::size_t stride_h = 1;    ///< step between output rows, in input rows
  std::size_t stride_w = 1;    ///< step between output columns, in input columns
  Padding2D padding;           ///< zeros around the input plane
  std::size_t dilation_h = 1;  ///< spacing of kernel rows over the input (1: adjacent)
  std::size_t dilation_w = 1;  ///< spacing of kernel columns over the input (1: adjacent)

  /// Equal in every field.
  friend bool operator==(const Window2D&, const Window2D&) = default;

  /// errc::invalid_argument, naming `who`, unless the kernel, stride and dilation are >= 1 and
  /// every field is at most max_extent.
  void validate(const std::string& who) const {
    if (kernel_h == 0 || kernel_w == 0 || stride_h == 0 || stride_w == 0 || dilation_h == 0 || dilation_w == 0)
      fail(errc::invalid_argument, who + " needs kernel, stride and dilation sizes > 0");
    for (std::size_t v : {kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, padding.top, padding.left,
                          padding.bottom, padding.right})
      if (v > max_extent)
        fail(errc::invalid_argument, who + ": a window size of " + std::to_string(v) + " exceeds " +
                                         std::to_string(max_extent));
  }

  /// Output rows for `in_h` input rows: floor((in_h + top + bottom - dilated kernel) / stride) + 1,
  /// or 0 when the dilated kernel does not fit in the padded input. Needs a validated window.
  std::size_t out_h(std::size_t in_h) const noexcept {
    return extent(in_h, padding.top + padding.bottom, kernel_h, dilation_h, stride_h);
  }
  /// Output columns for `in_w` input columns (see out_h). Needs a validated window.
  std::size_t out_w(std::size_t in_w) const noexcept {
    return extent(in_w, padding.left + padding.right, kernel_w, dilation_w, stride_w);
  }

 private:
  static std::size_t extent(std::size_t in, std::size_t pad, std::size_t k, std::size_t d, std::size_t s) noexcept {
    const std::size_t span = (k - 1) * d + 1;  // <= 2^48 + 1 for a validated window
    if (in > std::numeric_limits<std::size_t>::max() - pad) return 0;  // no such plane can be held anyway
    const std::size_t padded = in + pad;
    return padded < span ? 0 : (padded - span) / s + 1;
  }
};

namespace detail {
// Output columns ow in [lo, hi) read input column ow * stride + offset inside [0, width); the
// rest read padding. offset = j * dilation - left may be negative.
inline void valid_range(std::ptrdiff_t offset, std::size_t stride, std::size_t width, std::size_t out,
                        std::size_t& lo, std::size_t& hi) noexcept {
  const auto s = static_cast<std::ptrdiff_t>(stride), w = static_cast<std::ptrdiff_t>(width);
  const std::ptrdiff_t first = offset >= 0 ? 0 : (-offset + s - 1) / s;  // ow * s + offset >= 0
  const std::ptrdiff_t end = w - offset <= 0 ? 0 : (w - offset + s - 1) / s;  // ow * s + offset < w
  lo = std::min(out, static_cast<std::size_t>(first));
  hi = std::max(lo, std::min(out, static_cast<std::size_t>(std::max<std::ptrdiff_t>(end, 0))));
}
}  // namespace detail

/// Unfolds `channels` planes of `height` x `width` (row-major, planes one after another) into the
/// column matrix of a convolution: row-major {channels * kernel_h * kernel_w, out_h * out_w}, row
/// (c, i, j) holding, for every output position, the input value kernel tap (i, j) of channel c
/// reads there (0 in the padding). A convolution is then weight {out, rows} times this matrix.
/// Writes every element of `col`; `in` and `col` must not overlap.
template <class T>
void im2col(const T* in, std::size_t channels, std::size_t height, std::size_t width, const Window2D& w, T* col) {
  const std::size_t oh_n = w.out_h(height), ow_n = w.out_w(width);
  for (std::size_t c = 0; c < channels; ++c) {
    const T* plane = in + c * height * width;
    for (std::size_t i = 0; i < w.kernel_h; ++i) {
      const auto row_off = static_cast<std::ptrdiff_t>(i * w.dilation_h) - static_cast<std::ptrdiff_t>(w.padding.top);
      for (std::size_t j = 0; j < w.kernel_w; ++j, col += oh_n * ow_n) {
        const auto col_off = static_cast<std::ptrdiff_t>(j * w.dilation_w) - static_cast<std::ptrdiff_t>(w.padding.left);
        std::size_t lo = 0, hi = 0;
        detail::valid_range(col_off, w.stride_w, width, ow_n, lo, hi);
        for (std::size_t oh = 0; oh < oh_n; ++oh) {
          T* dst = col + oh * ow_n;
          const std::ptrdiff_t ih = static_cast<std::ptrdiff_t>(oh * w.stride_h) + row_off;
          if (ih < 0 || ih >= static_cast<std::ptrdiff_t>(height)) {
            std::fill_n(dst, ow_n, T(0));
            continue;
          }
          const T* src = plane + static_cast<std::size_t>(ih) * width;
          std::fill_n(dst, lo, T(0));
          if (w.stride_w == 1) {
            std::copy_n(src + (static_cast<std::ptrdiff_t>(lo) + col_off), hi - lo, dst + lo);
          } else {
            for (std::size_t ow = lo; ow < hi; ++ow)
              dst[ow] = src[static_cast<std::ptrdiff_t>(ow * w.stride_w) + col_off];
          }
          std::fill_n(dst + hi, ow_n - hi, T(0));
        }
      }
    }
  }
}

/// The adjoint of im2col: adds each element of the column matrix `col` (as im2col lays it out)
/// onto the input position it was read from; elements read from the padding are dropped. This is
/// how a convolution's input gradient is gathered. `col` and `in` must not overlap.
template <class T>
void col2im_accumulate(const T* col, std::size_t channels, std::size_t height, std::size_t width, const Window2D& w,
                       T* in) {
  const std::size_t oh_n = w.out_h(height), ow_n = w.out_w(width);
  for (std::size_t c = 0; c < channels; ++c) {
    T* plane = in + c * height * width;
    for (std::size_t i = 0; i < w.kernel_h; ++i) {
      const auto row_off = static_cast<std::ptrdiff_t>(i * w.dilation_h) - static_cast<std::ptrdiff_t>(w.padding.top);
      for (std::size_t j = 0; j < w.kernel_w; ++j, col += oh_n * ow_n) {
        const auto col_off = static_cast<std::ptrdiff_t>(j * w.dilation_w) - static_cast<std::ptrdiff_t>(w.padding.left);
        std::size_t lo = 0, hi = 0;
        detail::valid_range(col_off, w.stride_w, width, ow_n, lo, hi);
        for (std::size_t oh = 0; oh < oh_n; ++oh) {
          const std::ptrdiff_t ih = static_cast<std::ptrdiff_t>(oh * w.stride_h) + row_off;
          if (ih < 0 || ih >= static_cast<std::ptrdiff_t>(height)) continue;
          const T* src = col + oh * ow_n;
          T* dst = plane + static_cast<std::size_t>(ih) * width;
          for (std::size_t ow = lo; ow < hi; ++ow) dst[static_cast<std::ptrdiff_t>(ow * w.stride_w) + col_off] += src[ow];
        }
      }
    }
  }
}

}  // namespace edgesplit
