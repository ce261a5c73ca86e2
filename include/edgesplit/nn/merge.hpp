// edgesplit/nn/merge.hpp - nodes where branches of a graph meet: Add (residual) and Concat.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "edgesplit/core/kernels.hpp"
#include "edgesplit/nn/layer.hpp"

namespace edgesplit {

/// A graph node with several inputs and one output. Like Layer, the public functions check
/// shapes once and call the protected virtual implementations, which may trust their arguments.
///
/// Contract: every input has rank >= 2 and the same batch >= 1; `forward` requires
/// `out.shape() == output_shape(input shapes)` and allocates nothing; `backward` writes the
/// gradient of each input whose view is not empty. Merges have no parameters.
template <Real T>
class Merge {
 public:
  /// The most inputs one merge takes: enough for any concatenation in published vision models,
  /// and lets the shape checks run on the stack (no allocation on the hot path).
  static constexpr std::size_t max_inputs = 64;

  virtual ~Merge() = default;
  /// Short kind name ("Add", "Concat"), stable: file formats use it.
  virtual std::string_view name() const noexcept = 0;
  /// Human-readable description with the configuration.
  virtual std::string describe() const { return std::string(name()); }
  /// A deep copy.
  virtual std::unique_ptr<Merge> clone() const = 0;
  /// Kind and configuration, enough for `make_merge` to build an equal merge.
  virtual LayerSpec spec() const { return {std::string(name()), {}, {}}; }

  /// Output shape for inputs of shapes `in`; errc::shape_mismatch when they do not fit together.
  Shape output_shape(std::span<const Shape> in) const {
    check_inputs(in);
    return output_shape_impl(in);
  }
  /// FLOPs of a forward pass (an addition counts one per element; copies count zero).
  std::uint64_t flops(std::span<const Shape> in) const {
    check_inputs(in);
    return flops_impl(in);
  }
  /// Computes `out` from the inputs after checking every shape.
  void forward(std::span<const TensorView<const T>> in, TensorView<T> out) {
    const Shape want = output_shape(shapes_of(in));
    if (!(out.shape() == want))
      fail(errc::shape_mismatch, describe() + " output has shape " + out.shape().str() + ", expected " + want.str());
    forward_impl(in, out);
  }
  /// Writes the gradient of every input whose view in `grad_in` is not empty, after checking
  /// every shape. `in` are the inputs of the latest forward pass.
  void backward(std::span<const TensorView<const T>> in, TensorView<const T> grad_out,
                std::span<const TensorView<T>> grad_in) {
    const Shape want = output_shape(shapes_of(in));
    if (!(grad_out.shape() == want))
      fail(errc::shape_mismatch, describe() + " output gradient has shape " + grad_out.shape().str() +
                                     ", expected " + want.str());
    if (grad_in.size() != in.size())
      fail(errc::invalid_argument, describe() + " backward needs one input gradient per input");
    for (std::size_t i = 0; i < in.size(); ++i)
      if (grad_in[i].data() != nullptr && !(grad_in[i].shape() == in[i].shape()))
        fail(errc::shape_mismatch, describe() + " input gradient " + std::to_string(i) + " has shape " +
                                       grad_in[i].shape().str() + ", expected " + in[i].shape().str());
    backward_impl(in, grad_out, grad_in);
  }

 protected:
  Merge() = default;
  /// Copyable only by the derived classes, whose clone() uses it.
  Merge(const Merge&) = default;
  /// Copyable only by the derived classes.
  Merge& operator=(const Merge&) = default;

  /// Rejects inputs that do not fit. The default: 2..max_inputs inputs, each of rank >= 2, one batch >= 1.
  virtual void check_inputs(std::span<const Shape> in) const {
    if (in.size() < 2 || in.size() > max_inputs)
      fail(errc::invalid_argument, describe() + " takes 2 to " + std::to_string(max_inputs) + " inputs, got " +
                                       std::to_string(in.size()));
    for (const Shape& s : in) {
      if (s.rank() < 2) fail(errc::shape_mismatch, describe() + " needs batch-first inputs of rank >= 2, got " + s.str());
      if (s.batch() != in[0].batch())
        fail(errc::shape_mismatch, describe() + " inputs differ in batch: " + in[0].str() + " and " + s.str());
    }
    if (in[0].batch() == 0) fail(errc::invalid_argument, describe() + " got an empty batch");
  }
  /// The output shape for inputs that passed check_inputs().
  virtual Shape output_shape_impl(std::span<const Shape> in) const = 0;
  /// The FLOPs for inputs that passed check_inputs().
  virtual std::uint64_t flops_impl(std::span<const Shape> in) const = 0;
  /// The forward pass on checked shapes.
  virtual void forward_impl(std::span<const TensorView<const T>> in, TensorView<T> out) = 0;
  /// The backward pass on checked shapes.
  virtual void backward_impl(std::span<const TensorView<const T>> in, TensorView<const T> grad_out,
                             std::span<const TensorView<T>> grad_in) = 0;

 private:
  // The shapes of the views, on the stack.
  struct Shapes {
    std::array<Shape, max_inputs> s;
    std::size_t n = 0;
    operator std::span<const Shape>() const noexcept { return {s.data(), n}; }
  };
  Shapes shapes_of(std::span<const TensorView<const T>> in) const {
    if (in.size() > max_inputs)
      fail(errc::invalid_argument, describe() + " takes at most " + std::to_string(max_inputs) + " inputs");
    Shapes r;
    for (const auto& v : in) r.s[r.n++] = v.shape();
    return r;
  }
};

/// Element-wise sum of inputs of one shape: the join of a residual block (y = f(x) + x).
/// No broadcasting: a shape rule that differs between inputs is almost always a wiring mistake.
template <Real T>
class Add final : public Merge<T> {
 public:
  std::string_view name() const noexcept override { return "Add"; }
  std::unique_ptr<Merge<T>> clone() const override { return std::make_unique<Add>(*this); }

 protected:
  void check_inputs(std::span<const Shape> in) const override {
    Merge<T>::check_inputs(in);
    for (const Shape& s : in)
      if (!(s == in[0])) fail(errc::shape_mismatch, "Add needs inputs of one shape, got " + in[0].str() + " and " + s.str());
  }
  Shape output_shape_impl(std::span<const Shape> in) const override { return in[0]; }
  std::uint64_t flops_impl(std::span<const Shape> in) const override {
    return static_cast<std::uint64_t>(in[0].count()) * (in.size() - 1);
  }
  void forward_impl(std::span<const TensorView<const T>> in, TensorView<T> out) override {
    const std::size_t n = out.size();
    kernels::map2(in[0].data(), in[1].data(), out.data(), n, [](auto a, auto b) { return a + b; });
    for (std::size_t k = 2; k < in.size(); ++k)
      kernels::map2(out.data(), in[k].data(), out.data(), n, [](auto a, auto b) { return a + b; });
  }
  void backward_impl(std::span<const TensorView<const T>>, TensorView<const T> grad_out,
                     std::span<const TensorView<T>> grad_in) override {
    for (const auto& g : grad_in)
      if (g.data() != nullptr) copy(grad_out, g);
  }
};

/// Concatenation along one axis, the channel axis (1) by default: the join of Inception and
/// DenseNet blocks (axis 1 of NCHW, the feature axis of {N, F}). Inputs agree in every dimension
/// but that axis. Other axes (>= 1: the batch axis stays) serve imported models.
template <Real T>
class Concat final : public Merge<T> {
 public:
  /// Joins along `axis` (1 to 7).
  explicit Concat(std::size_t axis = 1) : axis_(axis) {
    if (axis == 0 || axis >= Shape::max_rank)
      fail(errc::invalid_argument, "Concat needs an axis from 1 to 7 (0 is the batch), got " + std::to_string(axis));
  }
  std::string_view name() const noexcept override { return "Concat"; }
  std::string describe() const override { return axis_ == 1 ? "Concat" : "Concat(axis " + std::to_string(axis_) + ")"; }
  std::unique_ptr<Merge<T>> clone() const override { return std::make_unique<Concat>(*this); }
  /// No settings at the channel axis (so files and architecture hashes of channel joins are
  /// those of a Concat without axis); {"axis": a} otherwise.
  LayerSpec spec() const override {
    LayerSpec s{"Concat", {}, {}};
    if (axis_ != 1) s.integers["axis"] = axis_;
    return s;
  }
  std::size_t axis() const noexcept { return axis_; }  ///< the joined axis

 protected:
  void check_inputs(std::span<const Shape> in) const override {
    Merge<T>::check_inputs(in);
    for (const Shape& s : in) {
      bool fits = s.rank() == in[0].rank() && axis_ < s.rank();
      for (std::size_t d = 1; fits && d < s.rank(); ++d) fits = d == axis_ || s[d] == in[0][d];
      if (!fits)
        fail(errc::shape_mismatch, describe() + " needs inputs that differ only in axis " + std::to_string(axis_) +
                                       ", got " + in[0].str() + " and " + s.str());
    }
  }
  Shape output_shape_impl(std::span<const Shape> in) const override {
    std::array<std::size_t, 8> d{};
    std::size_t total = 0;
    for (const Shape& s : in) {
      if (s[axis_] > std::numeric_limits<std::size_t>::max() - total) fail(errc::too_large, "Concat: axis size overflows");
      total += s[axis_];
    }
    for (std::size_t i = 0; i < in[0].rank(); ++i) d[i] = in[0][i];
    d[axis_] = total;
    return Shape(std::span<const std::size_t>(d.data(), in[0].rank()));
  }
  std::uint64_t flops_impl(std::span<const Shape>) const override { return 0; }
  void forward_impl(std::span<const TensorView<const T>> in, TensorView<T> out) override {
    const std::size_t outer = outer_count(out.shape()), row = out.size() / outer;
    std::size_t offset = 0;
    for (const auto& x : in) {
      const std::size_t part = x.size() / outer;
      for (std::size_t n = 0; n < outer; ++n)
        std::memcpy(out.data() + n * row + offset, x.data() + n * part, part * sizeof(T));
      offset += part;
    }
  }
  void backward_impl(std::span<const TensorView<const T>> in, TensorView<const T> grad_out,
                     std::span<const TensorView<T>> grad_in) override {
    const std::size_t outer = outer_count(grad_out.shape()), row = grad_out.size() / outer;
    std::size_t offset = 0;
    for (std::size_t k = 0; k < in.size(); ++k) {
      const std::size_t part = in[k].size() / outer;
      if (grad_in[k].data() != nullptr)
        for (std::size_t n = 0; n < outer; ++n)
          std::memcpy(grad_in[k].data() + n * part, grad_out.data() + n * row + offset, part * sizeof(T));
      offset += part;
    }
  }

 private:
  // The product of the axes before the joined one: how many blocks each input contributes.
  std::size_t outer_count(const Shape& s) const noexcept {
    std::size_t n = 1;
    for (std::size_t i = 0; i < axis_; ++i) n *= s[i];
    return n;
  }

  std::size_t axis_;
};

/// A new merge of `spec.type` ("Add" or "Concat"); errc::unsupported for any other type.
template <Real T>
std::unique_ptr<Merge<T>> make_merge(const LayerSpec& spec) {
  if (spec.type == "Concat" && spec.reals.empty() && spec.integers.size() == 1 && spec.integers.count("axis"))
    return std::make_unique<Concat<T>>(static_cast<std::size_t>(std::min<std::uint64_t>(spec.integers.at("axis"), 64)));
  if (!spec.integers.empty() || !spec.reals.empty())
    fail(errc::invalid_argument, spec.type + " takes no settings");
  if (spec.type == "Add") return std::make_unique<Add<T>>();
  if (spec.type == "Concat") return std::make_unique<Concat<T>>();
  fail(errc::unsupported, "unknown merge type '" + spec.type + "'");
}

/// Whether `type` names a merge (a node of several inputs) rather than a layer.
inline bool is_merge_type(std::string_view type) noexcept { return type == "Add" || type == "Concat"; }

}  // namespace edgesplit
