// edgesplit/nn/tensor_ops.hpp - layout and broadcasting layers: what imported models are made of.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "edgesplit/core/kernels.hpp"
#include "edgesplit/nn/dense.hpp"
#include "edgesplit/nn/layer.hpp"
#include "edgesplit/nn/merge.hpp"

// These layers carry the operators of exchanged model formats (ONNX) that the native layers do
// not: a reshape, a transpose, a constant pad, arithmetic against a constant or between two
// tensors with NumPy broadcasting, a softmax along one axis, a matrix product along the last
// axis. Axes count from the batch axis, 0, as in the formats they come from; none of these layers
// may move or resize the batch axis, so a model built from them still runs at any batch.
//
// They run inference. Those whose gradient is a copy or a product with a constant also train
// (Reshape, Transpose, Pad, ConstantOp without broadcasting of the input); the others say so with
// errc::unsupported from backward().

namespace edgesplit {

namespace detail {

using Dims = std::array<std::size_t, Shape::max_rank>;

// "[a, b, c]" of the first n entries.
inline std::string dims_str(std::span<const std::size_t> d) {
  std::string s = "[";
  for (std::size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// "d3" from "d" and 3: a spec key (built with += to keep GCC 12's -Wrestrict quiet).
inline std::string key(const char* prefix, std::size_t i) {
  std::string k = prefix;
  k += std::to_string(i);
  return k;
}

// Element strides of `in` read as a tensor of `out`'s rank (aligned to the right, NumPy's rule),
// 0 along every axis `in` broadcasts. The caller has checked that `in` broadcasts to `out`.
inline Dims broadcast_strides(const Shape& in, const Shape& out) {
  Dims s{};
  std::size_t stride = 1;
  for (std::size_t k = 0; k < in.rank(); ++k) {
    const std::size_t i = in.rank() - 1 - k, o = out.rank() - 1 - k;
    s[o] = in[i] == 1 && out[o] != 1 ? 0 : stride;
    stride *= in[i];
  }
  return s;
}

// NumPy broadcasting of two shapes, aligned to the right; errc::shape_mismatch naming `who`.
inline Shape broadcast_shapes(const Shape& a, const Shape& b, std::string_view who) {
  const std::size_t r = std::max(a.rank(), b.rank());
  Dims d{};
  for (std::size_t k = 0; k < r; ++k) {
    const std::size_t x = k < a.rank() ? a[a.rank() - 1 - k] : 1, y = k < b.rank() ? b[b.rank() - 1 - k] : 1;
    if (x != y && x != 1 && y != 1)
      fail(errc::shape_mismatch, std::string(who) + ": shapes " + a.str() + " and " + b.str() + " do not broadcast");
    d[r - 1 - k] = x == 1 ? y : x;
  }
  return Shape(std::span<const std::size_t>(d.data(), r));
}

// out[i] = f(a[ia], b[ib]) over every index of `out`, a and b read through broadcast strides.
// The last axis is the inner loop; the rest advance as an odometer.
template <class T, class F>
void broadcast_apply(const T* a, const Dims& sa, const T* b, const Dims& sb, T* out, const Shape& os, F f) {
  const std::size_t r = os.rank(), inner = os[r - 1], ia = sa[r - 1], ib = sb[r - 1];
  if (os.count() == 0) return;
  Dims idx{};
  std::size_t pa = 0, pb = 0;
  for (std::size_t done = 0; done < os.count(); done += inner) {
    if (ia == 1 && ib == 1) {
      for (std::size_t j = 0; j < inner; ++j) out[j] = f(a[pa + j], b[pb + j]);
    } else {
      for (std::size_t j = 0; j < inner; ++j) out[j] = f(a[pa + j * ia], b[pb + j * ib]);
    }
    out += inner;
    for (std::size_t k = r - 1; k-- > 0;) {  // odometer over the outer axes
      pa += sa[k], pb += sb[k];
      if (++idx[k] < os[k]) break;
      pa -= sa[k] * os[k], pb -= sb[k] * os[k];
      idx[k] = 0;
    }
  }
}

}  // namespace detail

/// A new shape for each sample, the elements in the same (row-major) order: what ONNX's Reshape,
/// Flatten, Squeeze and Unsqueeze become, and a Transpose that only moves axes of size 1.
/// The batch axis stays; `sample` is the rest, of the same element count as the input's sample.
template <Real T>
class Reshape final : public Layer<T> {
 public:
  /// Reshapes each sample to `sample` (rank 1 to 7).
  explicit Reshape(const Shape& sample) : sample_(sample) {
    if (sample.rank() == 0 || sample.rank() >= Shape::max_rank)
      fail(errc::invalid_argument, "Reshape needs a per-sample shape of rank 1 to " +
                                       std::to_string(Shape::max_rank - 1) + ", got " + sample.str());
  }
  std::string_view name() const noexcept override { return "Reshape"; }
  std::string describe() const override { return "Reshape(" + sample_.str() + ")"; }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<Reshape>(*this); }
  LayerSpec spec() const override {
    LayerSpec s{"Reshape", {{"rank", sample_.rank()}}, {}};
    for (std::size_t i = 0; i < sample_.rank(); ++i) s.integers[detail::key("d", i)] = sample_[i];
    return s;
  }
  const Shape& sample_shape() const noexcept { return sample_; }  ///< the per-sample output shape

 protected:
  void check_input(const Shape& in) const override {
    Layer<T>::check_input(in);
    if (in.features() != sample_.count())
      fail(errc::shape_mismatch, describe() + " needs " + std::to_string(sample_.count()) +
                                     " elements per sample, got input " + in.str());
  }
  Shape output_shape_impl(const Shape& in) const override {
    detail::Dims d{};
    d[0] = in[0];
    for (std::size_t i = 0; i < sample_.rank(); ++i) d[i + 1] = sample_[i];
    return Shape(std::span<const std::size_t>(d.data(), sample_.rank() + 1));
  }
  /// A copy: no arithmetic.
  std::uint64_t flops_impl(const Shape&) const override { return 0; }
  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    std::copy_n(in.data(), in.size(), out.data());
  }
  void backward_impl(TensorView<const T>, TensorView<const T>, TensorView<const T> grad_out,
                     TensorView<T> grad_in) override {
    if (grad_in.data() != nullptr) std::copy_n(grad_out.data(), grad_out.size(), grad_in.data());
  }

 private:
  Shape sample_;
};

/// A permutation of the axes of each sample: out axis i is in axis perm[i]. The batch axis stays
/// first (perm[0] == 0): NHWC <-> NCHW and the like.
template <Real T>
class Transpose final : public Layer<T> {
 public:
  /// `perm` covers every axis of the input, batch included, and keeps perm[0] == 0.
  explicit Transpose(std::vector<std::size_t> perm) : perm_(std::move(perm)) {
    std::vector<char> seen(perm_.size(), 0);
    bool ok = perm_.size() >= 2 && perm_.size() <= Shape::max_rank && perm_[0] == 0;
    for (std::size_t p : perm_) ok = ok && p < perm_.size() && !seen[p] && (seen[p] = 1);
    if (!ok) fail(errc::invalid_argument, "Transpose needs a permutation of 2 to 8 axes with perm[0] == 0 (the batch), got " +
                                               detail::dims_str(perm_));
  }
  std::string_view name() const noexcept override { return "Transpose"; }
  std::string describe() const override { return "Transpose(" + detail::dims_str(perm_) + ")"; }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<Transpose>(*this); }
  LayerSpec spec() const override {
    LayerSpec s{"Transpose", {{"rank", perm_.size()}}, {}};
    for (std::size_t i = 0; i < perm_.size(); ++i) s.integers[detail::key("p", i)] = perm_[i];
    return s;
  }
  const std::vector<std::size_t>& perm() const noexcept { return perm_; }  ///< out axis i = in axis perm[i]

 protected:
  void check_input(const Shape& in) const override {
    Layer<T>::check_input(in);
    if (in.rank() != perm_.size())
      fail(errc::shape_mismatch, describe() + " needs an input of rank " + std::to_string(perm_.size()) + ", got " + in.str());
  }
  Shape output_shape_impl(const Shape& in) const override {
    detail::Dims d{};
    for (std::size_t i = 0; i < perm_.size(); ++i) d[i] = in[perm_[i]];
    return Shape(std::span<const std::size_t>(d.data(), perm_.size()));
  }
  std::uint64_t flops_impl(const Shape&) const override { return 0; }
  void forward_impl(TensorView<const T> in, TensorView<T> out) override { move(in, out, false); }
  void backward_impl(TensorView<const T>, TensorView<const T>, TensorView<const T> grad_out,
                     TensorView<T> grad_in) override {
    if (grad_in.data() != nullptr) move(grad_out, grad_in, true);
  }

 private:
  // Walks the output (or, backwards, the gradient of the output) in order, reading the input at
  // the permuted strides; `inverse` scatters instead of gathers.
  void move(TensorView<const T> from, TensorView<T> to, bool inverse) const {
    const Shape& os = inverse ? from.shape() : to.shape();
    const Shape& is = inverse ? to.shape() : from.shape();
    const std::size_t r = os.rank();
    detail::Dims in_stride{}, s{};
    std::size_t st = 1;
    for (std::size_t k = r; k-- > 0;) in_stride[k] = st, st *= is[k];
    for (std::size_t i = 0; i < r; ++i) s[i] = in_stride[perm_[i]];
    detail::Dims idx{};
    std::size_t p = 0;
    for (std::size_t o = 0; o < os.count(); ++o) {
      if (inverse) to.data()[p] = from.data()[o];
      else to.data()[o] = from.data()[p];
      for (std::size_t k = r; k-- > 0;) {
        p += s[k];
        if (++idx[k] < os[k]) break;
        p -= s[k] * os[k];
        idx[k] = 0;
      }
    }
  }

  std::vector<std::size_t> perm_;
};

/// Pads each sample with a constant: `begin[i]` and `end[i]` values before and after axis i (the
/// batch axis, 0, takes none). ONNX's Pad in constant mode.
template <Real T>
class Pad final : public Layer<T> {
 public:
  /// `begin` and `end` have one entry per axis of the input, batch included (0 there).
  Pad(std::vector<std::size_t> begin, std::vector<std::size_t> end, double value = 0)
      : begin_(std::move(begin)), end_(std::move(end)), value_(value) {
    if (begin_.size() != end_.size() || begin_.size() < 2 || begin_.size() > Shape::max_rank || begin_[0] != 0 ||
        end_[0] != 0)
      fail(errc::invalid_argument, "Pad needs begin and end of one rank (2 to 8), none on the batch axis, got " +
                                       detail::dims_str(begin_) + " and " + detail::dims_str(end_));
    if (!std::isfinite(value)) fail(errc::invalid_argument, "Pad needs a finite value");
  }
  std::string_view name() const noexcept override { return "Pad"; }
  std::string describe() const override {
    return "Pad(" + detail::dims_str(begin_) + ", " + detail::dims_str(end_) + ", " + std::to_string(value_) + ")";
  }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<Pad>(*this); }
  LayerSpec spec() const override {
    LayerSpec s{"Pad", {{"rank", begin_.size()}}, {{"value", value_}}};
    for (std::size_t i = 0; i < begin_.size(); ++i) {
      s.integers[detail::key("b", i)] = begin_[i];
      s.integers[detail::key("e", i)] = end_[i];
    }
    return s;
  }
  const std::vector<std::size_t>& begin() const noexcept { return begin_; }  ///< values before each axis
  const std::vector<std::size_t>& end() const noexcept { return end_; }  ///< values after each axis
  double value() const noexcept { return value_; }  ///< the fill value

 protected:
  void check_input(const Shape& in) const override {
    Layer<T>::check_input(in);
    if (in.rank() != begin_.size())
      fail(errc::shape_mismatch, describe() + " needs an input of rank " + std::to_string(begin_.size()) + ", got " + in.str());
  }
  Shape output_shape_impl(const Shape& in) const override {
    detail::Dims d{};
    for (std::size_t i = 0; i < in.rank(); ++i) d[i] = in[i] + begin_[i] + end_[i];
    return Shape(std::span<const std::size_t>(d.data(), in.rank()));
  }
  std::uint64_t flops_impl(const Shape&) const override { return 0; }
  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    std::fill_n(out.data(), out.size(), static_cast<T>(value_));
    walk(in.shape(), out.shape(), [&](std::size_t i, std::size_t o, std::size_t n) {
      std::copy_n(in.data() + i, n, out.data() + o);
    });
  }
  void backward_impl(TensorView<const T> in, TensorView<const T>, TensorView<const T> grad_out,
                     TensorView<T> grad_in) override {
    if (grad_in.data() == nullptr) return;
    walk(in.shape(), grad_out.shape(), [&](std::size_t i, std::size_t o, std::size_t n) {
      std::copy_n(grad_out.data() + o, n, grad_in.data() + i);
    });
  }

 private:
  // Calls f(input offset, output offset, count) for each row (last axis) of the input.
  template <class F>
  void walk(const Shape& is, const Shape& os, F f) const {
    const std::size_t r = is.rank(), row = is[r - 1];
    if (is.count() == 0) return;
    detail::Dims ostride{}, idx{};
    std::size_t st = 1;
    for (std::size_t k = r; k-- > 0;) ostride[k] = st, st *= os[k];
    for (std::size_t i = 0; i < is.count(); i += row) {
      std::size_t o = begin_[r - 1];
      for (std::size_t k = 0; k + 1 < r; ++k) o += (idx[k] + begin_[k]) * ostride[k];
      f(i, o, row);
      for (std::size_t k = r - 1; k-- > 0;) {
        if (++idx[k] < is[k]) break;
        idx[k] = 0;
      }
    }
  }

  std::vector<std::size_t> begin_, end_;
  double value_;
};

/// The arithmetic a ConstantOp or an Elementwise merge applies.
enum class BinaryOp : std::uint8_t {
  add,    ///< a + b
  sub,    ///< a - b
  mul,    ///< a * b
  div,    ///< a / b
  prelu,  ///< a < 0 ? a * b : a (PRelu, b the slope)
  max,    ///< max(a, b)
  min,    ///< min(a, b)
};

/// The operator's name, as in describe() and files: "add", "sub", ...
constexpr std::string_view to_string(BinaryOp op) noexcept {
  switch (op) {
    case BinaryOp::add: return "add";
    case BinaryOp::sub: return "sub";
    case BinaryOp::mul: return "mul";
    case BinaryOp::div: return "div";
    case BinaryOp::prelu: return "prelu";
    case BinaryOp::max: return "max";
    case BinaryOp::min: return "min";
  }
  return "?";
}

namespace detail {
template <class T>
T apply(BinaryOp op, T a, T b) noexcept {
  switch (op) {
    case BinaryOp::add: return a + b;
    case BinaryOp::sub: return a - b;
    case BinaryOp::mul: return a * b;
    case BinaryOp::div: return a / b;
    case BinaryOp::prelu: return a < T(0) ? a * b : a;
    case BinaryOp::max: return std::max(a, b);
    case BinaryOp::min: return std::min(a, b);
  }
  return a;
}
// Runs `op` with the switch outside the loop: one broadcast_apply per operator.
template <class T>
void broadcast_binary(BinaryOp op, const T* a, const Dims& sa, const T* b, const Dims& sb, T* out, const Shape& os) {
  switch (op) {
    case BinaryOp::add: return broadcast_apply(a, sa, b, sb, out, os, [](T x, T y) { return x + y; });
    case BinaryOp::sub: return broadcast_apply(a, sa, b, sb, out, os, [](T x, T y) { return x - y; });
    case BinaryOp::mul: return broadcast_apply(a, sa, b, sb, out, os, [](T x, T y) { return x * y; });
    case BinaryOp::div: return broadcast_apply(a, sa, b, sb, out, os, [](T x, T y) { return x / y; });
    case BinaryOp::prelu: return broadcast_apply(a, sa, b, sb, out, os, [](T x, T y) { return x < T(0) ? x * y : x; });
    case BinaryOp::max: return broadcast_apply(a, sa, b, sb, out, os, [](T x, T y) { return std::max(x, y); });
    case BinaryOp::min: return broadcast_apply(a, sa, b, sb, out, os, [](T x, T y) { return std::min(x, y); });
  }
}
inline BinaryOp binary_op_from(std::uint64_t v) {
  if (v > static_cast<std::uint64_t>(BinaryOp::min)) fail(errc::invalid_argument, "unknown binary operator " + std::to_string(v));
  return static_cast<BinaryOp>(v);
}
}  // namespace detail

/// Arithmetic between each sample and a constant tensor with NumPy broadcasting: x + c, c - x,
/// x * c, PRelu's slope... The constant is stored at the output's rank with a batch axis of 1,
/// so it never depends on the batch: a bias [C, 1, 1] against [N, C, H, W] is kept as
/// [1, C, 1, 1]. `constant_first` puts it on the left (c - x, c / x).
template <Real T>
class ConstantOp final : public Layer<T> {
 public:
  /// x op c (or c op x when `constant_first`), `c` of any shape that broadcasts against the
  /// sample shape once aligned to the right, batch axis excluded (its own leading 1s dropped).
  ConstantOp(BinaryOp op, Tensor<T> c, bool constant_first = false)
      : op_(op), c_(std::move(c)), first_(constant_first) {
    if (c_.shape().rank() == 0) fail(errc::invalid_argument, "ConstantOp needs a constant of rank >= 1");
  }
  std::string_view name() const noexcept override { return "ConstantOp"; }
  std::string describe() const override {
    return "ConstantOp(" + std::string(first_ ? "c " : "x ") + std::string(to_string(op_)) + (first_ ? " x" : " c") +
           ", c " + c_.shape().str() + ")";
  }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<ConstantOp>(*this); }
  /// The operator and the constant's shape; the constant's values are its buffer "constant".
  LayerSpec spec() const override {
    LayerSpec s{"ConstantOp", {{"op", static_cast<std::uint64_t>(op_)}, {"first", first_}, {"rank", c_.shape().rank()}}, {}};
    for (std::size_t i = 0; i < c_.shape().rank(); ++i) s.integers[detail::key("d", i)] = c_.shape()[i];
    return s;
  }
  BinaryOp op() const noexcept { return op_; }  ///< the arithmetic
  bool constant_first() const noexcept { return first_; }  ///< true for c op x
  const Tensor<T>& constant() const noexcept { return c_; }  ///< the constant, as given

 protected:
  void check_input(const Shape& in) const override {
    Layer<T>::check_input(in);
    if (c_.shape().rank() > in.rank())
      fail(errc::shape_mismatch, describe() + ": the constant has more axes than the input " + in.str());
    if (c_.shape().rank() == in.rank() && c_.shape()[0] != 1)
      fail(errc::shape_mismatch, describe() + ": a constant of the input's rank needs 1 on the batch axis, input " + in.str());
    detail::broadcast_shapes(in, c_.shape(), describe());
  }
  Shape output_shape_impl(const Shape& in) const override { return detail::broadcast_shapes(in, c_.shape(), describe()); }
  std::uint64_t flops_impl(const Shape& in) const override { return output_shape_impl(in).count(); }
  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    const Shape& os = out.shape();
    const detail::Dims sx = detail::broadcast_strides(in.shape(), os), sc = detail::broadcast_strides(c_.shape(), os);
    if (first_) detail::broadcast_binary(op_, c_.data(), sc, in.data(), sx, out.data(), os);
    else detail::broadcast_binary(op_, in.data(), sx, c_.data(), sc, out.data(), os);
  }
  /// The input gradient when the output has the input's shape (the constant does not widen it).
  void backward_impl(TensorView<const T> in, TensorView<const T> out, TensorView<const T> grad_out,
                     TensorView<T> grad_in) override {
    if (grad_in.data() == nullptr) return;
    if (!(out.shape() == in.shape()) || op_ == BinaryOp::max || op_ == BinaryOp::min)
      fail(errc::unsupported, describe() + ": backward through a widening broadcast or max/min is not implemented");
    const Shape& os = out.shape();
    const detail::Dims sx = detail::broadcast_strides(in.shape(), os), sc = detail::broadcast_strides(c_.shape(), os);
    const T* x = in.data();
    const T* c = c_.data();
    std::size_t k = 0;
    const BinaryOp op = op_;
    const bool first = first_;
    // d(out)/dx at each element, from x and c, times the incoming gradient.
    detail::broadcast_apply(x, sx, c, sc, grad_in.data(), os, [&](T xv, T cv) {
      const T g = grad_out.data()[k++];
      switch (op) {
        case BinaryOp::add: return g;
        case BinaryOp::sub: return first ? -g : g;
        case BinaryOp::mul: return g * cv;
        case BinaryOp::div: return first ? -g * cv / (xv * xv) : g / cv;
        case BinaryOp::prelu: return first ? (cv < T(0) ? g * cv : T(0)) : (xv < T(0) ? g * cv : g);
        default: return T(0);
      }
    });
  }
  std::vector<Parameter<T>> buffers_impl() override { return {{"constant", c_.view(), {}}}; }

 private:
  BinaryOp op_;
  Tensor<T> c_;
  bool first_;
};

/// Arithmetic between two tensors of one rank and one batch with NumPy broadcasting over the
/// other axes: ONNX's Add, Sub, Mul, Div, Max, Min and PRelu of two computed tensors. (Add of equal
/// shapes, the residual join, is the Add merge.)
template <Real T>
class Elementwise final : public Merge<T> {
 public:
  /// a op b.
  explicit Elementwise(BinaryOp op) : op_(op) {}
  std::string_view name() const noexcept override { return "Elementwise"; }
  std::string describe() const override { return "Elementwise(" + std::string(to_string(op_)) + ")"; }
  std::unique_ptr<Merge<T>> clone() const override { return std::make_unique<Elementwise>(*this); }
  LayerSpec spec() const override { return {"Elementwise", {{"op", static_cast<std::uint64_t>(op_)}}, {}}; }
  BinaryOp op() const noexcept { return op_; }  ///< the arithmetic

 protected:
  void check_inputs(std::span<const Shape> in) const override {
    Merge<T>::check_inputs(in);
    if (in.size() != 2 || in[0].rank() != in[1].rank())
      fail(errc::shape_mismatch, describe() + " needs two inputs of one rank");
    detail::broadcast_shapes(in[0], in[1], describe());
  }
  Shape output_shape_impl(std::span<const Shape> in) const override {
    return detail::broadcast_shapes(in[0], in[1], describe());
  }
  std::uint64_t flops_impl(std::span<const Shape> in) const override { return output_shape_impl(in).count(); }
  void forward_impl(std::span<const TensorView<const T>> in, TensorView<T> out) override {
    const Shape& os = out.shape();
    detail::broadcast_binary(op_, in[0].data(), detail::broadcast_strides(in[0].shape(), os), in[1].data(),
                             detail::broadcast_strides(in[1].shape(), os), out.data(), os);
  }
  void backward_impl(std::span<const TensorView<const T>>, TensorView<const T>, std::span<const TensorView<T>>) override {
    fail(errc::unsupported, describe() + ": backward is not implemented (inference only)");
  }

 private:
  BinaryOp op_;
};

/// Softmax (or log-softmax) along one axis of each sample: ONNX's Softmax and LogSoftmax. With
/// `flatten_tail` the axis and every later one are one row, as ONNX before opset 13 defines it.
template <Real T>
class AxisSoftmax final : public Layer<T> {
 public:
  /// Along `axis` (>= 1; the batch axis is 0), log-softmax when `log`.
  AxisSoftmax(std::size_t axis, bool log, bool flatten_tail = false) : axis_(axis), log_(log), flatten_(flatten_tail) {
    if (axis == 0 || axis >= Shape::max_rank)
      fail(errc::invalid_argument, "AxisSoftmax needs an axis from 1 to 7, got " + std::to_string(axis));
  }
  std::string_view name() const noexcept override { return "AxisSoftmax"; }
  std::string describe() const override {
    return std::string(log_ ? "LogSoftmax" : "Softmax") + "(axis " + std::to_string(axis_) + (flatten_ ? "..." : "") + ")";
  }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<AxisSoftmax>(*this); }
  LayerSpec spec() const override {
    return {"AxisSoftmax", {{"axis", axis_}, {"log", log_}, {"flatten_tail", flatten_}}, {}};
  }

 protected:
  void check_input(const Shape& in) const override {
    Layer<T>::check_input(in);
    if (axis_ >= in.rank())
      fail(errc::shape_mismatch, describe() + " needs an input of rank > " + std::to_string(axis_) + ", got " + in.str());
  }
  Shape output_shape_impl(const Shape& in) const override { return in; }
  /// Nominal 14 FLOPs per element (the exp counts as about 10), as Softmax.
  std::uint64_t flops_impl(const Shape& in) const override { return in.count() * 14; }
  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    const Shape& s = in.shape();
    std::size_t outer = 1, len = 1, inner = 1;
    for (std::size_t i = 0; i < s.rank(); ++i) (i < axis_ ? outer : (i == axis_ || flatten_) ? len : inner) *= s[i];
    if (!log_ && inner == 1) return kernels::softmax_rows(in.data(), out.data(), outer, len);
    for (std::size_t o = 0; o < outer; ++o)
      for (std::size_t j = 0; j < inner; ++j) {
        const T* x = in.data() + o * len * inner + j;
        T* y = out.data() + o * len * inner + j;
        T m = x[0];
        for (std::size_t k = 1; k < len; ++k) m = std::max(m, x[k * inner]);
        double sum = 0;
        for (std::size_t k = 0; k < len; ++k) sum += std::exp(static_cast<double>(x[k * inner] - m));
        if (log_) {
          const double ls = std::log(sum);
          for (std::size_t k = 0; k < len; ++k) y[k * inner] = static_cast<T>(static_cast<double>(x[k * inner] - m) - ls);
        } else {
          for (std::size_t k = 0; k < len; ++k) y[k * inner] = static_cast<T>(std::exp(static_cast<double>(x[k * inner] - m)) / sum);
        }
      }
  }
  void backward_impl(TensorView<const T>, TensorView<const T>, TensorView<const T>, TensorView<T>) override {
    fail(errc::unsupported, describe() + ": backward is not implemented (inference only; Softmax trains)");
  }

 private:
  std::size_t axis_;
  bool log_, flatten_;
};

/// A matrix product along the last axis with a constant matrix: x [N, ..., K] times B [K, P]
/// gives [N, ..., P] (ONNX's MatMul with a constant right operand). Runs as a Dense without bias
/// over the rows, so it shares the Dense GEMM and allocates nothing once the shape is seen.
template <Real T>
class MatMulConst final : public Layer<T> {
 public:
  /// `b` is [K, P], row-major (ONNX's layout).
  explicit MatMulConst(const Tensor<T>& b) : dense_(check(b)[0], b.shape()[1]) {
    const std::size_t k = b.shape()[0], p = b.shape()[1];
    for (std::size_t i = 0; i < k; ++i)
      for (std::size_t j = 0; j < p; ++j) dense_.weight()[j * k + i] = b[i * p + j];
    std::fill_n(dense_.bias().data(), p, T(0));
  }
  std::string_view name() const noexcept override { return "MatMulConst"; }
  std::string describe() const override {
    return "MatMulConst(" + std::to_string(dense_.in_features()) + " -> " + std::to_string(dense_.out_features()) + ")";
  }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<MatMulConst>(*this); }
  LayerSpec spec() const override {
    return {"MatMulConst", {{"in", dense_.in_features()}, {"out", dense_.out_features()}}, {}};
  }
  void set_weight_packing(WeightPacking mode) override { dense_.set_weight_packing(mode); }
  /// The product's weights as a Dense's {P, K} (B transposed).
  const Dense<T>& dense() const noexcept { return dense_; }

 protected:
  void check_input(const Shape& in) const override {
    Layer<T>::check_input(in);
    if (in[in.rank() - 1] != dense_.in_features())
      fail(errc::shape_mismatch, describe() + " needs a last axis of " + std::to_string(dense_.in_features()) + ", got " + in.str());
  }
  Shape output_shape_impl(const Shape& in) const override {
    detail::Dims d{};
    for (std::size_t i = 0; i < in.rank(); ++i) d[i] = in[i];
    d[in.rank() - 1] = dense_.out_features();
    return Shape(std::span<const std::size_t>(d.data(), in.rank()));
  }
  std::uint64_t flops_impl(const Shape& in) const override { return 2ull * in.count() * dense_.out_features(); }
  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    const std::size_t rows = in.size() / dense_.in_features();
    dense_.forward(in.reshaped(Shape{rows, dense_.in_features()}), out.reshaped(Shape{rows, dense_.out_features()}));
  }
  void backward_impl(TensorView<const T>, TensorView<const T>, TensorView<const T>, TensorView<T>) override {
    fail(errc::unsupported, describe() + ": backward is not implemented (inference only)");
  }
  std::vector<Parameter<T>> buffers_impl() override { return dense_.parameters(); }

 private:
  static const Shape& check(const Tensor<T>& b) {
    if (b.shape().rank() != 2 || b.size() == 0)
      fail(errc::invalid_argument, "MatMulConst needs a non-empty matrix [K, P], got " + b.shape().str());
    return b.shape();
  }
  Dense<T> dense_;
};

/// A matrix product of two computed tensors of one rank (>= 3) and one batch: a [N, ..., M, K]
/// times b [N, ..., K, P] gives [N, ..., M, P], the leading axes equal (ONNX's MatMul of two
/// computed tensors, as attention uses it).
template <Real T>
class MatMul final : public Merge<T> {
 public:
  std::string_view name() const noexcept override { return "MatMul"; }
  std::unique_ptr<Merge<T>> clone() const override { return std::make_unique<MatMul>(*this); }

 protected:
  void check_inputs(std::span<const Shape> in) const override {
    Merge<T>::check_inputs(in);
    bool ok = in.size() == 2 && in[0].rank() == in[1].rank() && in[0].rank() >= 3;
    const std::size_t r = in[0].rank();
    for (std::size_t i = 0; ok && i + 2 < r; ++i) ok = in[0][i] == in[1][i];
    if (!ok || in[0][r - 1] != in[1][r - 2])
      fail(errc::shape_mismatch, "MatMul needs [N, ..., M, K] and [N, ..., K, P] of one rank >= 3, got " + in[0].str() +
                                     " and " + in[1].str());
  }
  Shape output_shape_impl(std::span<const Shape> in) const override {
    detail::Dims d{};
    const std::size_t r = in[0].rank();
    for (std::size_t i = 0; i < r; ++i) d[i] = in[0][i];
    d[r - 1] = in[1][r - 1];
    return Shape(std::span<const std::size_t>(d.data(), r));
  }
  std::uint64_t flops_impl(std::span<const Shape> in) const override {
    const std::size_t r = in[0].rank();
    return 2ull * in[0].count() * in[1][r - 1];
  }
  void forward_impl(std::span<const TensorView<const T>> in, TensorView<T> out) override {
    const std::size_t r = out.shape().rank(), m = in[0].shape()[r - 2], k = in[0].shape()[r - 1], p = in[1].shape()[r - 1];
    const std::size_t mats = out.size() / (m * p);
    for (std::size_t b = 0; b < mats; ++b) {
      const T* a = in[0].data() + b * m * k;
      const T* bb = in[1].data() + b * k * p;
      T* y = out.data() + b * m * p;
      for (std::size_t i = 0; i < m; ++i) {
        std::fill_n(y + i * p, p, T(0));
        for (std::size_t q = 0; q < k; ++q) {
          const T av = a[i * k + q];
          const T* brow = bb + q * p;
          for (std::size_t j = 0; j < p; ++j) y[i * p + j] += av * brow[j];
        }
      }
    }
  }
  void backward_impl(std::span<const TensorView<const T>>, TensorView<const T>, std::span<const TensorView<T>>) override {
    fail(errc::unsupported, "MatMul: backward is not implemented (inference only)");
  }
};

}  // namespace edgesplit
