// edgesplit/nn/conv2d.hpp - the 2-D convolution layer (NCHW).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <Eigen/Core>

#include "edgesplit/core/conv_kernels.hpp"
#include "edgesplit/core/gemm.hpp"
#include "edgesplit/core/im2col.hpp"
#include "edgesplit/core/random.hpp"
#include "edgesplit/nn/layer.hpp"

namespace edgesplit {

/// The settings of a Conv2D besides its channels and kernel size. The defaults are those of
/// torch.nn.Conv2d: stride 1, no padding, no dilation, one group, a bias.
struct Conv2DOptions {
  std::size_t stride_h = 1;    ///< step between output rows, in input rows
  std::size_t stride_w = 1;    ///< step between output columns, in input columns
  Padding2D padding;           ///< zeros around each input plane (same_padding() keeps H x W at stride 1)
  std::size_t dilation_h = 1;  ///< spacing of kernel rows over the input
  std::size_t dilation_w = 1;  ///< spacing of kernel columns over the input
  /// Channel groups: input and output channels are split into this many groups, and output group
  /// g sees input group g only. 1 is an ordinary convolution; groups == in_channels is depthwise.
  std::size_t groups = 1;
  bool bias = true;  ///< whether a per-output-channel bias is added

  /// The sliding window of a kernel_h x kernel_w kernel with these options.
  Window2D window(std::size_t kernel_h, std::size_t kernel_w) const noexcept {
    Window2D w;
    w.kernel_h = kernel_h;
    w.kernel_w = kernel_w;
    w.stride_h = stride_h;
    w.stride_w = stride_w;
    w.padding = padding;
    w.dilation_h = dilation_h;
    w.dilation_w = dilation_w;
    return w;
  }
};

/// A 2-D convolution (strictly, a cross-correlation, as in PyTorch and ONNX) on NCHW inputs
/// {batch, in_channels, H, W}, giving {batch, out_channels, OH, OW} with
/// OH = floor((H + top + bottom - dilation_h * (kernel_h - 1) - 1) / stride_h) + 1 (OW likewise).
///
/// Weight layout: {out_channels, in_channels / groups, kernel_h, kernel_w}, row-major, the layout
/// of torch.nn.Conv2d's weight and of ONNX's Conv W, so weights load from either unchanged.
///
/// The forward pass picks one of three kernels (core/conv_kernels.hpp, core/gemm.hpp):
/// - depthwise (one input channel per group, any channel multiplier, stride, padding and
///   dilation): kernels::depthwise_conv2d, vectorised along the output rows;
/// - other dense or grouped layers where kernels::conv2d_direct_suits says so: at stride 1 on
///   planes wide enough (from about 20 columns with padding 1: ResNet's and VGG's 3x3 layers,
///   padded or dilated 1x1), and at a stride with up to 32 input channels per group and a kernel
///   larger than 1x1 (the stems of vision models, such as ResNet's 7x7/2 on 3 channels): the
///   implicit GEMM kernels::conv2d_direct, which reads shifted rows of a zero-padded copy of the
///   input (split into row and column phases at a stride) instead of building a column matrix,
///   and keeps 4 channels x 3 batches of outputs in registers;
/// - the rest (narrow planes, strided layers of more channels or of a 1x1 kernel, and a plain
///   1x1, whose input planes already are the column matrix): per (sample, group) one matrix
///   product through GemmWorkspace, the group's weights {out/groups, K} times the im2col matrix
///   of its input planes {K, OH * OW}, K = (in/groups) * kernel_h * kernel_w, written straight
///   into the NCHW output.
/// Every workspace (padded input, packed weights, column matrix, GEMM packing buffers) is kept by
/// the layer, so a forward pass on a shape already seen allocates nothing. docs/performance.md
/// ("Convolution") has their speeds against the FMA peak and against the im2col path.
///
/// The backward pass always takes the im2col path, and unfolds each sample again rather than
/// keeping the whole batch's column matrices (kernel_h * kernel_w times the input's size).
template <Real T>
class Conv2D final : public Layer<T> {
 public:
  /// The seed of the weights of a Conv2D built without an Rng.
  static constexpr std::uint64_t default_seed = 0x5eed'0000'c0d2ull;

  /// A layer with He-uniform weights drawn from `default_seed` and the layer's shape, and zero
  /// bias: reproducible, and trainable as it is (all-zero weights would never start training).
  /// Pass an Rng to draw different weights per layer or per run. errc::invalid_argument for a
  /// zero channel count or window size, channels not divisible by `groups`, or a window size over
  /// Window2D::max_extent.
  Conv2D(std::size_t in_channels, std::size_t out_channels, std::size_t kernel_h, std::size_t kernel_w,
         const Conv2DOptions& options = {})
      : Conv2D(in_channels, out_channels, kernel_h, kernel_w, options, shape_only{}) {
    Rng rng(default_seed ^ (static_cast<std::uint64_t>(in_channels) << 40) ^
            (static_cast<std::uint64_t>(out_channels) << 16) ^ (static_cast<std::uint64_t>(kernel_h) << 8) ^
            static_cast<std::uint64_t>(kernel_w));
    init(rng);
  }
  /// A layer with He-uniform weights (bound sqrt(6 / fan_in), fan_in = in/groups * kernel_h *
  /// kernel_w, as Dense uses) from `rng`, and zero bias.
  Conv2D(std::size_t in_channels, std::size_t out_channels, std::size_t kernel_h, std::size_t kernel_w,
         const Conv2DOptions& options, Rng& rng)
      : Conv2D(in_channels, out_channels, kernel_h, kernel_w, options, shape_only{}) {
    init(rng);
  }

  std::string_view name() const noexcept override { return "Conv2D"; }
  std::string describe() const override {
    const Padding2D& p = window_.padding;
    std::string s = "Conv2D(" + std::to_string(in_) + " -> " + std::to_string(out_) + ", " +
                    std::to_string(window_.kernel_h) + "x" + std::to_string(window_.kernel_w);
    if (window_.stride_h != 1 || window_.stride_w != 1)
      s += ", stride " + std::to_string(window_.stride_h) + "x" + std::to_string(window_.stride_w);
    if (p != Padding2D{})
      s += ", pad " + std::to_string(p.top) + "," + std::to_string(p.left) + "," + std::to_string(p.bottom) + "," +
           std::to_string(p.right);
    if (window_.dilation_h != 1 || window_.dilation_w != 1)
      s += ", dilation " + std::to_string(window_.dilation_h) + "x" + std::to_string(window_.dilation_w);
    if (groups_ != 1) s += ", groups " + std::to_string(groups_);
    if (!bias_on_) s += ", no bias";
    return s + ")";
  }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<Conv2D>(*this); }
  /// Keys: in, out, kh, kw, sh, sw, pt, pl, pb, pr (padding top, left, bottom, right), dh, dw,
  /// groups, bias (0 or 1).
  LayerSpec spec() const override {
    const Padding2D& p = window_.padding;
    return {"Conv2D",
            {{"in", in_},
             {"out", out_},
             {"kh", window_.kernel_h},
             {"kw", window_.kernel_w},
             {"sh", window_.stride_h},
             {"sw", window_.stride_w},
             {"pt", p.top},
             {"pl", p.left},
             {"pb", p.bottom},
             {"pr", p.right},
             {"dh", window_.dilation_h},
             {"dw", window_.dilation_w},
             {"groups", groups_},
             {"bias", static_cast<std::uint64_t>(bias_on_)}},
            {}};
  }

  std::size_t in_channels() const noexcept { return in_; }  ///< input channels C
  std::size_t out_channels() const noexcept { return out_; }  ///< output channels
  std::size_t groups() const noexcept { return groups_; }  ///< channel groups
  bool has_bias() const noexcept { return bias_on_; }  ///< whether a bias is added
  /// Kernel size, stride, padding and dilation.
  const Window2D& window() const noexcept { return window_; }
  /// The options this layer was built with (kernel size aside).
  Conv2DOptions options() const noexcept {
    Conv2DOptions o;
    o.stride_h = window_.stride_h;
    o.stride_w = window_.stride_w;
    o.padding = window_.padding;
    o.dilation_h = window_.dilation_h;
    o.dilation_w = window_.dilation_w;
    o.groups = groups_;
    o.bias = bias_on_;
    return o;
  }
  /// Weights, row-major {out, in / groups, kernel_h, kernel_w} like torch.nn.Conv2d.
  Tensor<T>& weight() noexcept { return weight_; }
  /// Weights, row-major {out, in / groups, kernel_h, kernel_w}.
  const Tensor<T>& weight() const noexcept { return weight_; }
  /// Bias, {out}; empty when the layer has none.
  Tensor<T>& bias() noexcept { return bias_; }
  /// Bias, {out}; empty when the layer has none.
  const Tensor<T>& bias() const noexcept { return bias_; }
  std::size_t parameter_count() const override { return weight_.size() + bias_.size(); }

  void zero_grad() override {
    weight_grad_.resize(weight_.shape());
    std::fill_n(weight_grad_.data(), weight_grad_.size(), T(0));
    if (bias_on_) {
      bias_grad_.resize(bias_.shape());
      std::fill_n(bias_grad_.data(), bias_grad_.size(), T(0));
    }
  }

 protected:
  void check_input(const Shape& in) const override {
    Layer<T>::check_input(in);
    if (in.rank() != 4 || in[1] != in_)
      fail(errc::shape_mismatch, describe() + " needs an NCHW input [N, " + std::to_string(in_) + ", H, W], got " + in.str());
    if (in[2] == 0 || in[3] == 0) fail(errc::shape_mismatch, describe() + " got an empty plane in input " + in.str());
    if (window_.out_h(in[2]) == 0 || window_.out_w(in[3]) == 0)
      fail(errc::shape_mismatch, describe() + " on input " + in.str() +
                                     " leaves no output position: the dilated kernel does not fit in the padded plane");
  }
  Shape output_shape_impl(const Shape& in) const override {
    return Shape{in[0], out_, window_.out_h(in[2]), window_.out_w(in[3])};
  }
  std::uint64_t flops_impl(const Shape& in) const override {
    const Shape o = output_shape_impl(in);
    return static_cast<std::uint64_t>(o.count()) * (2 * static_cast<std::uint64_t>(depth()) + (bias_on_ ? 1 : 0));
  }

  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    const Geometry g = geometry(in.shape());
    const T* bias = bias_on_ ? bias_.data() : nullptr;
    switch (forward_path(g)) {
      case Path::depthwise:
        scratch_.resize(Shape{kernels::depthwise_conv2d_scratch<T>(g.height, g.width, window_)});
        for (std::size_t n = 0; n < g.batch; ++n)
          kernels::depthwise_conv2d(in.data() + n * in_ * g.plane, in_, g.height, g.width, window_, g.out_per_group,
                                    weight_.data(), bias, out.data() + n * out_ * g.positions, scratch_.data());
        return;
      case Path::direct:
        scratch_.resize(
            Shape{kernels::conv2d_direct_scratch<T>(g.in_per_group, g.height, g.width, window_, g.out_per_group)});
        for (std::size_t n = 0; n < g.batch; ++n)
          for (std::size_t grp = 0; grp < groups_; ++grp)
            kernels::conv2d_direct(in.data() + (n * in_ + grp * g.in_per_group) * g.plane, g.in_per_group, g.height,
                                   g.width, window_, weight_.data() + grp * g.out_per_group * g.depth, g.out_per_group,
                                   bias == nullptr ? nullptr : bias + grp * g.out_per_group,
                                   out.data() + (n * out_ + grp * g.out_per_group) * g.positions, scratch_.data());
        return;
      case Path::gemm:
        break;
    }
    for (std::size_t n = 0; n < g.batch; ++n)
      for (std::size_t grp = 0; grp < groups_; ++grp) {
        T* y = out.data() + (n * out_ + grp * g.out_per_group) * g.positions;
        for (std::size_t o = 0; o < g.out_per_group; ++o)
          std::fill_n(y + o * g.positions, g.positions, bias_on_ ? bias_[grp * g.out_per_group + o] : T(0));
        const T* cols = columns(in.data() + (n * in_ + grp * g.in_per_group) * g.plane, g);
        gemm_.ab_accumulate(weight_.data() + grp * g.out_per_group * g.depth, cols, y, idx(g.out_per_group),
                            idx(g.positions), idx(g.depth));
      }
  }

  void backward_impl(TensorView<const T> in, TensorView<const T>, TensorView<const T> grad_out,
                     TensorView<T> grad_in) override {
    if (weight_grad_.shape() != weight_.shape()) zero_grad();
    const Geometry g = geometry(in.shape());
    if (grad_in.data() != nullptr) std::fill_n(grad_in.data(), grad_in.size(), T(0));
    for (std::size_t n = 0; n < g.batch; ++n)
      for (std::size_t grp = 0; grp < groups_; ++grp) {
        const std::size_t in_offset = (n * in_ + grp * g.in_per_group) * g.plane;
        const T* dy = grad_out.data() + (n * out_ + grp * g.out_per_group) * g.positions;
        const T* w = weight_.data() + grp * g.out_per_group * g.depth;
        // dW_g {out/groups, K} += dY_g {out/groups, P} cols^T (cols: {K, P}, row-major)
        const T* cols = columns(in.data() + in_offset, g);
        gemm_dw_.xwt_accumulate(dy, cols, weight_grad_.data() + grp * g.out_per_group * g.depth, idx(g.out_per_group),
                                idx(g.depth), idx(g.positions));
        if (bias_on_)
          for (std::size_t o = 0; o < g.out_per_group; ++o) {
            T s = 0;
            for (std::size_t p = 0; p < g.positions; ++p) s += dy[o * g.positions + p];
            bias_grad_[grp * g.out_per_group + o] += s;
          }
        if (grad_in.data() == nullptr) continue;
        // dcols {K, P} = W_g^T dY_g, then folded back onto the input planes
        if (g.direct) {
          gemm_dx_.atb_accumulate(w, dy, grad_in.data() + in_offset, idx(g.depth), idx(g.positions),
                                  idx(g.out_per_group));
        } else {
          dcols_.resize(Shape{g.depth, g.positions});
          std::fill_n(dcols_.data(), dcols_.size(), T(0));
          gemm_dx_.atb_accumulate(w, dy, dcols_.data(), idx(g.depth), idx(g.positions), idx(g.out_per_group));
          col2im_accumulate(dcols_.data(), g.in_per_group, g.height, g.width, window_, grad_in.data() + in_offset);
        }
      }
  }

  std::vector<Parameter<T>> parameters_impl() override {
    if (!bias_on_) return {{"weight", weight_.view(), weight_grad_.view()}};
    return {{"weight", weight_.view(), weight_grad_.view()}, {"bias", bias_.view(), bias_grad_.view()}};
  }

 private:
  struct shape_only {};
  Conv2D(std::size_t in_channels, std::size_t out_channels, std::size_t kernel_h, std::size_t kernel_w,
         const Conv2DOptions& options, shape_only)
      : in_(in_channels),
        out_(out_channels),
        groups_(options.groups),
        bias_on_(options.bias),
        window_(options.window(kernel_h, kernel_w)) {
    if (in_ == 0 || out_ == 0) fail(errc::invalid_argument, "Conv2D needs in_channels > 0 and out_channels > 0");
    window_.validate("Conv2D");
    if (groups_ == 0 || in_ % groups_ != 0 || out_ % groups_ != 0)
      fail(errc::invalid_argument, "Conv2D groups = " + std::to_string(groups_) + " must be > 0 and divide both in_channels = " +
                                       std::to_string(in_) + " and out_channels = " + std::to_string(out_));
    weight_.resize(Shape{out_, in_ / groups_, kernel_h, kernel_w});
    if (bias_on_) bias_.resize(Shape{out_});
  }
  void init(Rng& rng) {
    const double limit = std::sqrt(6.0 / static_cast<double>(depth()));
    for (T& w : weight_.span()) w = static_cast<T>(rng.uniform(-limit, limit));
  }
  // The sizes of one forward or backward pass on an input that passed check_input().
  struct Geometry {
    std::size_t batch, height, width, plane;  // plane = H * W
    std::size_t in_per_group, out_per_group;
    std::size_t depth;      // K = in_per_group * kernel_h * kernel_w
    std::size_t positions;  // P = OH * OW
    bool direct;            // 1x1, stride 1, no padding: the input planes are the column matrix
  };
  Geometry geometry(const Shape& in) const {
    Geometry g{};
    g.batch = in[0];
    g.height = in[2];
    g.width = in[3];
    g.plane = g.height * g.width;  // cannot overflow: the input's count did not
    g.in_per_group = in_ / groups_;
    g.out_per_group = out_ / groups_;
    g.depth = depth();
    g.positions = window_.out_h(g.height) * window_.out_w(g.width);  // the output's count did not overflow
    g.direct = window_.kernel_h == 1 && window_.kernel_w == 1 && window_.stride_h == 1 && window_.stride_w == 1 &&
               window_.padding == Padding2D{};
    return g;
  }
  // The column matrix {K, P} of one group's input planes at `x`: the planes themselves when the
  // window is the identity, else unfolded into the kept workspace (grown once, then reused).
  const T* columns(const T* x, const Geometry& g) {
    if (g.direct) return x;
    cols_.resize(Shape{g.depth, g.positions});
    im2col(x, g.in_per_group, g.height, g.width, window_, cols_.data());
    return cols_.data();
  }
  // Which kernel a forward pass runs: the depthwise kernel when each group has one input
  // channel, the implicit-GEMM kernel where conv2d_direct_suits says so, else im2col (or the
  // planes themselves for a plain 1x1) and a GEMM.
  enum class Path { depthwise, direct, gemm };
  Path forward_path(const Geometry& g) const noexcept {
    if (g.in_per_group == 1) return Path::depthwise;
    if (!g.direct && kernels::conv2d_direct_suits(g.in_per_group, g.width, window_)) return Path::direct;
    return Path::gemm;
  }
  std::size_t depth() const noexcept { return weight_.shape().count() / out_; }
  static Eigen::Index idx(std::size_t v) noexcept { return static_cast<Eigen::Index>(v); }

  std::size_t in_, out_, groups_;
  bool bias_on_;
  Window2D window_;
  Tensor<T> weight_, bias_;
  Tensor<T> weight_grad_, bias_grad_;
  Tensor<T> cols_, dcols_;  // im2col of the current (sample, group), and its gradient
  Tensor<T> scratch_;       // the direct kernels' padded input (and packed weights)
  GemmWorkspace<T> gemm_, gemm_dw_, gemm_dx_;  // forward, weight gradient, input gradient
};

}  // namespace edgesplit
