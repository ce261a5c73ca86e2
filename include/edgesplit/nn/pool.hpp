// edgesplit/nn/pool.hpp - pooling layers (max, average, global) and Flatten, on NCHW inputs.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "edgesplit/core/im2col.hpp"
#include "edgesplit/nn/layer.hpp"

namespace edgesplit {

/// The settings of a MaxPool2D or AvgPool2D besides its kernel size. The defaults are those of
/// torch.nn.MaxPool2d / AvgPool2d: stride equal to the kernel (non-overlapping windows), no
/// padding, no dilation, floor rounding of the output size, padding counted in averages.
struct Pool2DOptions {
  /// Step between output rows, in input rows; 0 (the default) means "equal to kernel_h", as
  /// PyTorch's `stride=None` does, so that the common non-overlapping pooling needs no setting.
  std::size_t stride_h = 0;
  /// Step between output columns, in input columns; 0 (the default) means "equal to kernel_w".
  std::size_t stride_w = 0;
  /// Implicit padding around each input plane, possibly asymmetric (ONNX `pads`). Padded
  /// positions never win a max; in an average they count as zeros when count_include_pad is on.
  Padding2D padding;
  std::size_t dilation_h = 1;  ///< spacing of window rows over the input; MaxPool2D only (AvgPool2D needs 1)
  std::size_t dilation_w = 1;  ///< spacing of window columns over the input; MaxPool2D only
  /// Rounds the output size up instead of down, so that a partial window at the bottom / right
  /// edge still gives an output, as PyTorch's and ONNX's `ceil_mode`. As in both, a window that
  /// would start in the bottom / right padding is dropped: every window starts inside the input
  /// or its top / left padding.
  bool ceil_mode = false;
  /// AvgPool2D only: divide by the window's size including the padding (PyTorch's default; ONNX's
  /// default is false), rather than by the number of input elements the window covers. The
  /// positions that ceil_mode adds beyond the bottom / right padding never count (PyTorch's rule).
  bool count_include_pad = true;

  /// The sliding window of a kernel_h x kernel_w pooling with these options (stride 0 resolved
  /// to the kernel size).
  Window2D window(std::size_t kernel_h, std::size_t kernel_w) const noexcept {
    Window2D w;
    w.kernel_h = kernel_h;
    w.kernel_w = kernel_w;
    w.stride_h = stride_h == 0 ? kernel_h : stride_h;
    w.stride_w = stride_w == 0 ? kernel_w : stride_w;
    w.padding = padding;
    w.dilation_h = dilation_h;
    w.dilation_w = dilation_w;
    return w;
  }
};

namespace detail {

/// Output positions along one axis of a pooling window, PyTorch's pooling_output_shape_pad_lr:
/// floor (or ceil) of (in + pads - dilated kernel) / stride, plus one; in ceil mode the last
/// window is dropped when it would start in the after-padding. 0 when no window fits.
inline std::size_t pool_extent(std::size_t in, std::size_t pad_before, std::size_t pad_after, std::size_t kernel,
                               std::size_t dilation, std::size_t stride, bool ceil_mode) noexcept {
  // Every window size is <= Window2D::max_extent (2^24), so in 64 bits (whatever size_t is: the
  // dilated kernel alone reaches 2^48) these stay far from overflow once the input is below 2^62
  // (and no tensor that large can be held).
  const auto in64 = static_cast<std::uint64_t>(in);
  if (in64 > (std::uint64_t{1} << 62)) return 0;
  const auto span = static_cast<std::int64_t>((static_cast<std::uint64_t>(kernel) - 1) * dilation + 1);
  const auto s = static_cast<std::int64_t>(stride);
  const std::int64_t num = static_cast<std::int64_t>(in64 + pad_before + pad_after) - span + (ceil_mode ? s - 1 : 0);
  if (num < 0) return 0;
  std::int64_t out = num / s + 1;
  if (ceil_mode && (out - 1) * s >= static_cast<std::int64_t>(in64 + pad_before)) --out;
  return static_cast<std::size_t>(out);
}

/// One axis of a pooling window over an input of `in` positions: which window taps of an output
/// position land inside the input (the others read padding, or the beyond-padding of ceil_mode).
struct PoolAxis {
  std::size_t in = 0, out = 0, kernel = 1, stride = 1, dilation = 1, pad_before = 0, pad_after = 0;
  std::size_t full_lo = 0, full_hi = 0;  // outputs in [full_lo, full_hi) have every tap inside

  PoolAxis(std::size_t in_, std::size_t kernel_, std::size_t stride_, std::size_t dilation_, std::size_t before,
           std::size_t after, bool ceil_mode) noexcept
      : in(in_), kernel(kernel_), stride(stride_), dilation(dilation_), pad_before(before), pad_after(after) {
    out = pool_extent(in, before, after, kernel, dilation, stride, ceil_mode);
    // first o with o * stride >= pad_before; count of o with o * stride - pad_before + (k-1) d < in
    const std::size_t lo = (before + stride - 1) / stride;
    const std::size_t reach = (kernel - 1) * dilation;
    const std::size_t hi = in + before > reach ? (in + before - reach - 1) / stride + 1 : 0;
    full_lo = std::min(lo, out);
    full_hi = std::max(full_lo, std::min(hi, out));
  }
  /// Input position of output o's first tap (negative inside the before-padding).
  std::ptrdiff_t start(std::size_t o) const noexcept {
    return static_cast<std::ptrdiff_t>(o * stride) - static_cast<std::ptrdiff_t>(pad_before);
  }
  /// Taps [first, last) of output o that land inside the input (first == last: none).
  void taps(std::size_t o, std::size_t& first, std::size_t& last) const noexcept {
    if (o >= full_lo && o < full_hi) {
      first = 0;
      last = kernel;
      return;
    }
    const std::ptrdiff_t s = start(o), d = static_cast<std::ptrdiff_t>(dilation), n = static_cast<std::ptrdiff_t>(in);
    const auto k = static_cast<std::ptrdiff_t>(kernel);
    const std::ptrdiff_t f = s >= 0 ? 0 : std::min(k, (-s + d - 1) / d);
    const std::ptrdiff_t l = n - s <= 0 ? 0 : std::min(k, (n - s + d - 1) / d);
    first = static_cast<std::size_t>(f);
    last = static_cast<std::size_t>(std::max(f, l));
  }
  /// Taps of output o counted by count_include_pad (dilation 1): the window clipped to the end of
  /// the after-padding, so positions that ceil_mode adds beyond it do not count.
  std::size_t padded_taps(std::size_t o) const noexcept {
    const std::ptrdiff_t s = start(o);
    const std::ptrdiff_t end = std::min(s + static_cast<std::ptrdiff_t>(kernel), static_cast<std::ptrdiff_t>(in + pad_after));
    return static_cast<std::size_t>(end - s);
  }
  /// The first output whose window covers no input position, or `out` if there is none.
  std::size_t first_empty() const noexcept {
    for (std::size_t o = 0; o < out; ++o) {
      if (o == full_lo) o = full_hi;  // full windows are not empty
      if (o >= out) break;
      std::size_t f = 0, l = 0;
      taps(o, f, l);
      if (f == l) return o;
    }
    return out;
  }
};

/// The window of a MaxPool2D or AvgPool2D with its rounding rule: output sizes and the input
/// check both layers share.
struct PoolWindow {
  Window2D window;
  bool ceil_mode = false;

  PoolAxis rows(std::size_t h) const noexcept {
    return {h, window.kernel_h, window.stride_h, window.dilation_h, window.padding.top, window.padding.bottom, ceil_mode};
  }
  PoolAxis cols(std::size_t w) const noexcept {
    return {w, window.kernel_w, window.stride_w, window.dilation_w, window.padding.left, window.padding.right, ceil_mode};
  }
  // An NCHW input with a non-empty plane, at least one output position, and no window that reads
  // only padding (possible with a padding over half the kernel, or a dilation that steps over a
  // small plane): such a window has no defined max, and no average without count_include_pad.
  // `who()` names the layer in messages; called only on failure, as every forward pass checks.
  template <class Who>
  void check_input(const Shape& in, const Who& who) const {
    if (in.rank() != 4) fail(errc::shape_mismatch, who() + " needs an NCHW input [N, C, H, W], got " + in.str());
    if (in[2] == 0 || in[3] == 0) fail(errc::shape_mismatch, who() + " got an empty plane in input " + in.str());
    const PoolAxis r = rows(in[2]), c = cols(in[3]);
    if (r.out == 0 || c.out == 0)
      fail(errc::shape_mismatch, who() + " on input " + in.str() +
                                     " leaves no output position: the dilated kernel does not fit in the padded plane");
    const std::size_t er = r.first_empty(), ec = c.first_empty();
    if (er != r.out || ec != c.out)
      fail(errc::shape_mismatch, who() + " on input " + in.str() + ": the window at output " +
                                     (er != r.out ? "row " + std::to_string(er) : "column " + std::to_string(ec)) +
                                     " reads only padding");
  }
  std::string describe(std::string_view kind) const {
    const Padding2D& p = window.padding;
    std::string s = std::string(kind) + "(" + std::to_string(window.kernel_h) + "x" + std::to_string(window.kernel_w) +
                    ", stride " + std::to_string(window.stride_h) + "x" + std::to_string(window.stride_w);
    if (p != Padding2D{})
      s += ", pad " + std::to_string(p.top) + "," + std::to_string(p.left) + "," + std::to_string(p.bottom) + "," +
           std::to_string(p.right);
    if (window.dilation_h != 1 || window.dilation_w != 1)
      s += ", dilation " + std::to_string(window.dilation_h) + "x" + std::to_string(window.dilation_w);
    if (ceil_mode) s += ", ceil_mode";
    return s;
  }
  LayerSpec spec(std::string_view kind) const {
    const Padding2D& p = window.padding;
    return {std::string(kind),
            {{"kh", window.kernel_h},
             {"kw", window.kernel_w},
             {"sh", window.stride_h},
             {"sw", window.stride_w},
             {"pt", p.top},
             {"pl", p.left},
             {"pb", p.bottom},
             {"pr", p.right},
             {"ceil", static_cast<std::uint64_t>(ceil_mode)}},
            {}};
  }
  Pool2DOptions options() const noexcept {
    Pool2DOptions o;
    o.stride_h = window.stride_h;
    o.stride_w = window.stride_w;
    o.padding = window.padding;
    o.dilation_h = window.dilation_h;
    o.dilation_w = window.dilation_w;
    o.ceil_mode = ceil_mode;
    return o;
  }
};

// A backward pass's search for a window's first maximum: `v` at `at` takes over from `best` at
// `arg` when strictly greater. With masks, not a branch: which tap wins is unpredictable, and
// compilers turn the plain conditional into a jump that mispredicts on every other tap (5-10x
// slower on random data).
template <class T>
void take_if_greater(T v, std::size_t at, T& best, std::size_t& arg) noexcept {
  const std::size_t mask = std::size_t{0} - static_cast<std::size_t>(v > best);
  arg = (arg & ~mask) | (at & mask);
  best = std::max(best, v);
}

// The running max of a forward pass: any NaN wins (its value is all that matters here).
template <class T>
T max_or_nan(T best, T v) noexcept {
  return ((v > best) | std::isnan(v)) ? v : best;  // `|`, not `||`: a select, which vectorizes
}

// Calls f(o, at) for every output o of row `oh` (of one plane) and every tap of o's window that
// lands inside the input, `at` being the tap's index in the input plane. Tap by tap over the whole
// output row: the inner loop runs over outputs (contiguous at stride 1, so it vectorizes), and
// the padding is skipped by computing each tap's valid range of outputs once, not by a test per
// element. For one output, taps come in row-major window order.
template <class F>
void for_each_tap(const PoolAxis& r, const PoolAxis& c, std::size_t oh, F&& f) {
  std::size_t i0 = 0, i1 = 0;
  r.taps(oh, i0, i1);
  for (std::size_t i = i0; i < i1; ++i) {
    const std::size_t row = static_cast<std::size_t>(r.start(oh) + static_cast<std::ptrdiff_t>(i * r.dilation)) * c.in;
    for (std::size_t j = 0; j < c.kernel; ++j) {
      const std::ptrdiff_t off = static_cast<std::ptrdiff_t>(j * c.dilation) - static_cast<std::ptrdiff_t>(c.pad_before);
      std::size_t lo = 0, hi = 0;
      valid_range(off, c.stride, c.in, c.out, lo, hi);
      const std::size_t first = row + static_cast<std::size_t>(static_cast<std::ptrdiff_t>(lo * c.stride) + off);
      if (c.stride == 1) {
        for (std::size_t o = lo; o < hi; ++o) f(o, first + (o - lo));
      } else {
        for (std::size_t o = lo; o < hi; ++o) f(o, first + (o - lo) * c.stride);
      }
    }
  }
}

// A global pooling's reductions keep 8 independent partial results, so that the loop vectorizes
// (one chain of additions cannot, without reassociating it); they are combined in a fixed order,
// so results do not depend on the build.
inline constexpr std::size_t pool_lanes = 8;

// The sum of n values, in double: planes can be large, and float accumulation would lose digits
// in proportion to their size.
template <class T>
double plane_sum(const T* x, std::size_t n) noexcept {
  double acc[pool_lanes] = {};
  std::size_t i = 0;
  for (; i + pool_lanes <= n; i += pool_lanes)
    for (std::size_t l = 0; l < pool_lanes; ++l) acc[l] += static_cast<double>(x[i + l]);
  double sum = 0;
  for (double a : acc) sum += a;
  for (; i < n; ++i) sum += static_cast<double>(x[i]);
  return sum;
}

// The max of n values, NaN if any is NaN.
template <class T>
T plane_max(const T* x, std::size_t n) noexcept {
  T acc[pool_lanes];
  std::fill_n(acc, pool_lanes, -std::numeric_limits<T>::infinity());
  std::size_t i = 0;
  for (; i + pool_lanes <= n; i += pool_lanes)
    for (std::size_t l = 0; l < pool_lanes; ++l) acc[l] = max_or_nan(acc[l], x[i + l]);
  T best = -std::numeric_limits<T>::infinity();
  for (T a : acc) best = max_or_nan(best, a);
  for (; i < n; ++i) best = max_or_nan(best, x[i]);
  return best;
}

// The shape of a global pooling's output: the input's with every dimension after the channels 1.
inline Shape global_pool_shape(const Shape& in) {
  std::array<std::size_t, Shape::max_rank> d{};
  for (std::size_t i = 0; i < in.rank(); ++i) d[i] = i < 2 ? in[i] : 1;
  return Shape(std::span<const std::size_t>(d.data(), in.rank()));
}
inline void check_global_pool_input(const Shape& in, std::string_view who) {
  if (in.rank() < 3)
    fail(errc::shape_mismatch, std::string(who) + " needs an input [N, C, H, W] (or [N, C, D1, ...]), got " + in.str());
  if (in.count() == 0) fail(errc::shape_mismatch, std::string(who) + " got an empty input " + in.str());
}

}  // namespace detail

/// What MaxPool2D and AvgPool2D share: the window, its shape rules and its cost (one operation
/// per window tap and output).
template <Real T>
class Pool2D : public Layer<T> {
 public:
  /// Kernel size, stride (resolved), padding and dilation.
  const Window2D& window() const noexcept { return pool_.window; }
  bool ceil_mode() const noexcept { return pool_.ceil_mode; }  ///< whether output sizes round up

 protected:
  /// Validates the window, naming `who` in errors.
  Pool2D(const Window2D& window, bool ceil_mode, const char* who) : pool_{window, ceil_mode} {
    pool_.window.validate(who);
  }
  void check_input(const Shape& in) const override {
    Layer<T>::check_input(in);
    pool_.check_input(in, [this] { return this->describe(); });
  }
  Shape output_shape_impl(const Shape& in) const override {
    return Shape{in[0], in[1], pool_.rows(in[2]).out, pool_.cols(in[3]).out};
  }
  /// One comparison (max) or addition (average, the last one standing for the division) per
  /// window tap and output.
  std::uint64_t flops_impl(const Shape& in) const override {
    return static_cast<std::uint64_t>(output_shape_impl(in).count()) * pool_.window.kernel_h * pool_.window.kernel_w;
  }

  detail::PoolWindow pool_;  ///< the window and its rounding
};

/// 2-D max pooling on NCHW inputs {N, C, H, W} -> {N, C, OH, OW}, as torch.nn.MaxPool2d and ONNX
/// MaxPool: each output is the largest input its window covers, the window stepping by the stride
/// from `-padding.top` / `-padding.left`. OH = floor((H + top + bottom - dilation_h * (kernel_h -
/// 1) - 1) / stride_h) + 1 (OW likewise), or the ceiling in ceil_mode with PyTorch's rule that the
/// last window starts inside the input or its top / left padding. Padded positions never win (a
/// plane of negatives stays negative). NaN propagates.
///
/// Backward routes each output's gradient to the input position that won its window (the first
/// one in row-major window order among equal maxima, as PyTorch does). The winner is found again
/// from the input rather than kept from the forward pass: pooling is memory-bound, an index per
/// output would cost as much traffic as the search, and inference would pay for it too. The
/// search needs one output row of workspace, grown once.
template <Real T>
class MaxPool2D final : public Pool2D<T> {
 public:
  /// errc::invalid_argument for a zero kernel size or dilation, or any window size over
  /// Window2D::max_extent. Padding may exceed half the kernel (ONNX allows it); an input on which
  /// some window would read only padding is refused by output_shape (errc::shape_mismatch).
  MaxPool2D(std::size_t kernel_h, std::size_t kernel_w, const Pool2DOptions& options = {})
      : Pool2D<T>(options.window(kernel_h, kernel_w), options.ceil_mode, "MaxPool2D") {}

  std::string_view name() const noexcept override { return "MaxPool2D"; }
  /// E.g. "MaxPool2D(3x3, stride 2x2, pad 1,1,1,1, dilation 2x2, ceil_mode)": padding, dilation
  /// and ceil_mode appear only when set.
  std::string describe() const override { return pool_.describe(name()) + ")"; }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<MaxPool2D>(*this); }
  /// Keys: kh, kw, sh, sw (resolved, never 0), pt, pl, pb, pr (padding top, left, bottom, right),
  /// dh, dw, ceil (0 or 1).
  LayerSpec spec() const override {
    LayerSpec s = pool_.spec(name());
    s.integers["dh"] = pool_.window.dilation_h;
    s.integers["dw"] = pool_.window.dilation_w;
    return s;
  }

  /// The options this layer was built with (kernel size aside), strides resolved.
  Pool2DOptions options() const noexcept { return pool_.options(); }

 protected:

  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    const Shape& s = in.shape();
    const detail::PoolAxis r = pool_.rows(s[2]), c = pool_.cols(s[3]);
    const std::size_t planes = s[0] * s[1], plane = s[2] * s[3];
    for (std::size_t p = 0; p < planes; ++p) {
      const T* x = in.data() + p * plane;
      for (std::size_t oh = 0; oh < r.out; ++oh) {
        T* y = out.data() + (p * r.out + oh) * c.out;
        std::fill_n(y, c.out, -std::numeric_limits<T>::infinity());
        detail::for_each_tap(r, c, oh, [&](std::size_t o, std::size_t at) { y[o] = detail::max_or_nan(y[o], x[at]); });
      }
    }
  }

  void backward_impl(TensorView<const T> in, TensorView<const T>, TensorView<const T> grad_out,
                     TensorView<T> grad_in) override {
    if (grad_in.data() == nullptr) return;
    std::fill_n(grad_in.data(), grad_in.size(), T(0));
    const Shape& s = in.shape();
    const detail::PoolAxis r = pool_.rows(s[2]), c = pool_.cols(s[3]);
    const std::size_t planes = s[0] * s[1], plane = s[2] * s[3];
    best_.resize(Shape{c.out});  // one output row's running max and its position: grown once
    arg_.resize(c.out);
    T* best = best_.data();
    std::size_t* arg = arg_.data();
    for (std::size_t p = 0; p < planes; ++p) {
      const T* x = in.data() + p * plane;
      T* gx = grad_in.data() + p * plane;
      for (std::size_t oh = 0; oh < r.out; ++oh) {
        // Each output starts at its window's first tap (check_input guarantees one), so a window
        // of -inf or NaN only still routes its gradient somewhere inside the plane.
        std::size_t i0 = 0, i1 = 0;
        r.taps(oh, i0, i1);
        const std::ptrdiff_t row = (r.start(oh) + static_cast<std::ptrdiff_t>(i0 * r.dilation)) *
                                   static_cast<std::ptrdiff_t>(c.in);
        for (std::size_t ow = 0; ow < c.out; ++ow) {
          std::size_t j0 = 0, j1 = 0;
          c.taps(ow, j0, j1);
          arg[ow] = static_cast<std::size_t>(row + c.start(ow) + static_cast<std::ptrdiff_t>(j0 * c.dilation));
        }
        std::fill_n(best, c.out, -std::numeric_limits<T>::infinity());
        // Taps come in window order and a later one takes over only when strictly greater, so the
        // first of equal maxima keeps the gradient.
        detail::for_each_tap(r, c, oh, [&](std::size_t o, std::size_t at) {
          detail::take_if_greater(x[at], at, best[o], arg[o]);
        });
        const T* gy = grad_out.data() + (p * r.out + oh) * c.out;
        for (std::size_t ow = 0; ow < c.out; ++ow) gx[arg[ow]] += gy[ow];  // check_input: every window has a tap
      }
    }
  }

 private:
  using Pool2D<T>::pool_;
  Tensor<T> best_;  // backward: the running max of each output of one row
  std::vector<std::size_t> arg_;  // backward: where in the plane that max is
};

/// 2-D average pooling on NCHW inputs {N, C, H, W} -> {N, C, OH, OW}, as torch.nn.AvgPool2d and
/// ONNX AveragePool: each output is the mean of its window, output sizes as in MaxPool2D (no
/// dilation). The divisor, as PyTorch computes it:
/// - count_include_pad: the window's rows (and columns) clipped to the end of the bottom (right)
///   padding, padding included: a full kernel except where ceil_mode's last window hangs past
///   the padding;
/// - otherwise: the number of input elements the window covers.
template <Real T>
class AvgPool2D final : public Pool2D<T> {
 public:
  /// errc::invalid_argument for a zero kernel size, a dilation other than 1 (average pooling has
  /// none in PyTorch), or any window size over Window2D::max_extent. Padding may exceed half the
  /// kernel (ONNX allows it); an input on which some window would read only padding is refused by
  /// output_shape (errc::shape_mismatch).
  AvgPool2D(std::size_t kernel_h, std::size_t kernel_w, const Pool2DOptions& options = {})
      : Pool2D<T>(options.window(kernel_h, kernel_w), options.ceil_mode, "AvgPool2D"),
        include_pad_(options.count_include_pad) {
    if (pool_.window.dilation_h != 1 || pool_.window.dilation_w != 1)
      fail(errc::invalid_argument, "AvgPool2D has no dilation: dilation_h and dilation_w must be 1");
  }

  std::string_view name() const noexcept override { return "AvgPool2D"; }
  /// E.g. "AvgPool2D(3x3, stride 2x2, pad 1,1,1,1, ceil_mode, exclude pad)": padding and
  /// ceil_mode appear only when set, "exclude pad" only without count_include_pad.
  std::string describe() const override {
    return pool_.describe(name()) + (include_pad_ ? "" : ", exclude pad") + ")";
  }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<AvgPool2D>(*this); }
  /// Keys: kh, kw, sh, sw (resolved, never 0), pt, pl, pb, pr (padding top, left, bottom, right),
  /// ceil and count_include_pad (0 or 1).
  LayerSpec spec() const override {
    LayerSpec s = pool_.spec(name());
    s.integers["count_include_pad"] = static_cast<std::uint64_t>(include_pad_);
    return s;
  }

  bool count_include_pad() const noexcept { return include_pad_; }  ///< whether padding counts in the divisor
  /// The options this layer was built with (kernel size aside), strides resolved.
  Pool2DOptions options() const noexcept {
    Pool2DOptions o = pool_.options();
    o.count_include_pad = include_pad_;
    return o;
  }

 protected:

  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    const Shape& s = in.shape();
    const detail::PoolAxis r = pool_.rows(s[2]), c = pool_.cols(s[3]);
    const std::size_t planes = s[0] * s[1], plane = s[2] * s[3];
    for (std::size_t p = 0; p < planes; ++p) {
      const T* x = in.data() + p * plane;
      for (std::size_t oh = 0; oh < r.out; ++oh) {
        T* y = out.data() + (p * r.out + oh) * c.out;
        std::fill_n(y, c.out, T(0));
        detail::for_each_tap(r, c, oh, [&](std::size_t o, std::size_t at) { y[o] += x[at]; });
        const std::size_t rows = divisor(r, oh);
        for (std::size_t ow = 0; ow < c.out; ++ow) y[ow] /= static_cast<T>(rows * divisor(c, ow));
      }
    }
  }

  void backward_impl(TensorView<const T> in, TensorView<const T>, TensorView<const T> grad_out,
                     TensorView<T> grad_in) override {
    if (grad_in.data() == nullptr) return;
    std::fill_n(grad_in.data(), grad_in.size(), T(0));
    const Shape& s = in.shape();
    const detail::PoolAxis r = pool_.rows(s[2]), c = pool_.cols(s[3]);
    const std::size_t planes = s[0] * s[1], plane = s[2] * s[3];
    scaled_.resize(Shape{c.out});  // one output row's gradients over their divisors; grown once
    T* g = scaled_.data();
    for (std::size_t p = 0; p < planes; ++p) {
      T* gx = grad_in.data() + p * plane;
      for (std::size_t oh = 0; oh < r.out; ++oh) {
        const T* gy = grad_out.data() + (p * r.out + oh) * c.out;
        const std::size_t rows = divisor(r, oh);
        for (std::size_t ow = 0; ow < c.out; ++ow) g[ow] = gy[ow] / static_cast<T>(rows * divisor(c, ow));
        detail::for_each_tap(r, c, oh, [&](std::size_t o, std::size_t at) { gx[at] += g[o]; });
      }
    }
  }

 private:
  // The divisor of output (oh, ow) is divisor(rows, oh) * divisor(cols, ow): with
  // count_include_pad, the window clipped to the end of the padding; without, its taps inside the
  // input.
  std::size_t divisor(const detail::PoolAxis& axis, std::size_t o) const noexcept {
    if (include_pad_) return axis.padded_taps(o);
    std::size_t first = 0, last = 0;
    axis.taps(o, first, last);
    return last - first;
  }

  using Pool2D<T>::pool_;
  bool include_pad_;
  Tensor<T> scaled_;  // backward: one output row's gradients divided by their divisors
};

/// What GlobalAvgPool and GlobalMaxPool share: {N, C, spatial...} -> {N, C, 1, ...}, and one
/// operation (an addition or a comparison) per input element.
template <Real T>
class GlobalPool : public Layer<T> {
 protected:
  void check_input(const Shape& in) const override {
    Layer<T>::check_input(in);
    detail::check_global_pool_input(in, this->name());
  }
  Shape output_shape_impl(const Shape& in) const override { return detail::global_pool_shape(in); }
  std::uint64_t flops_impl(const Shape& in) const override { return in.count(); }
};

/// The mean of each channel's plane: {N, C, H, W} -> {N, C, 1, 1}, as ONNX GlobalAveragePool
/// (and torch.nn.AdaptiveAvgPool2d(1)). Any number of spatial dimensions is accepted, {N, C, D1,
/// ..., Dk} -> {N, C, 1, ..., 1}, as ONNX allows. Sums are accumulated in double: planes can be
/// large, and float accumulation would lose digits in proportion to their size (memory-bound, so
/// the wider sum costs nothing measurable).
template <Real T>
class GlobalAvgPool final : public GlobalPool<T> {
 public:
  std::string_view name() const noexcept override { return "GlobalAvgPool"; }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<GlobalAvgPool>(*this); }

 protected:
  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    const std::size_t planes = in.shape()[0] * in.shape()[1], plane = in.size() / planes;
    for (std::size_t p = 0; p < planes; ++p) {
      out[p] = static_cast<T>(detail::plane_sum(in.data() + p * plane, plane) / static_cast<double>(plane));
    }
  }
  void backward_impl(TensorView<const T> in, TensorView<const T>, TensorView<const T> grad_out,
                     TensorView<T> grad_in) override {
    if (grad_in.data() == nullptr) return;
    const std::size_t planes = in.shape()[0] * in.shape()[1], plane = in.size() / planes;
    for (std::size_t p = 0; p < planes; ++p)
      std::fill_n(grad_in.data() + p * plane, plane, grad_out[p] / static_cast<T>(plane));
  }
};

/// The largest value of each channel's plane: {N, C, H, W} -> {N, C, 1, 1}, as ONNX
/// GlobalMaxPool (and torch.nn.AdaptiveMaxPool2d(1)); any number of spatial dimensions, like
/// GlobalAvgPool. NaN propagates. Backward routes each gradient to the first maximum of its plane,
/// found again from the input (see MaxPool2D for why nothing is kept from the forward pass).
template <Real T>
class GlobalMaxPool final : public GlobalPool<T> {
 public:
  std::string_view name() const noexcept override { return "GlobalMaxPool"; }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<GlobalMaxPool>(*this); }

 protected:
  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    const std::size_t planes = in.shape()[0] * in.shape()[1], plane = in.size() / planes;
    for (std::size_t p = 0; p < planes; ++p) out[p] = detail::plane_max(in.data() + p * plane, plane);
  }
  void backward_impl(TensorView<const T> in, TensorView<const T>, TensorView<const T> grad_out,
                     TensorView<T> grad_in) override {
    if (grad_in.data() == nullptr) return;
    std::fill_n(grad_in.data(), grad_in.size(), T(0));
    const std::size_t planes = in.shape()[0] * in.shape()[1], plane = in.size() / planes;
    for (std::size_t p = 0; p < planes; ++p) {
      const T* x = in.data() + p * plane;
      std::size_t arg = 0;
      T best = x[0];
      for (std::size_t i = 1; i < plane; ++i) detail::take_if_greater(x[i], i, best, arg);
      grad_in[p * plane + arg] = grad_out[p];
    }
  }
};

/// {N, d1, d2, ...} -> {N, d1 * d2 * ...}: the explicit step between a convolutional part and a
/// Dense head, as torch.nn.Flatten() (start_dim 1) and ONNX Flatten (axis 1). Row-major storage
/// is unchanged, so NCHW features come out in C, H, W order, as PyTorch orders them: weights
/// trained there load unchanged. (Dense also accepts {N, C, H, W} directly; Flatten makes the
/// model say so, and gives the planner a cut whose shape is a plain feature vector.)
template <Real T>
class Flatten final : public Layer<T> {
 public:
  std::string_view name() const noexcept override { return "Flatten"; }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<Flatten>(*this); }

 protected:
  Shape output_shape_impl(const Shape& in) const override { return Shape{in[0], in.features()}; }
  /// A copy: no arithmetic.
  std::uint64_t flops_impl(const Shape&) const override { return 0; }
  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    std::copy_n(in.data(), in.size(), out.data());
  }
  void backward_impl(TensorView<const T>, TensorView<const T>, TensorView<const T> grad_out,
                     TensorView<T> grad_in) override {
    if (grad_in.data() != nullptr) std::copy_n(grad_out.data(), grad_out.size(), grad_in.data());
  }
};

}  // namespace edgesplit
