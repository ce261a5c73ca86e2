// edgesplit/nn/activations.hpp - activation functions, as element-wise policies and as layers.
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <numbers>
#include <string>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "edgesplit/core/kernels.hpp"
#include "edgesplit/nn/layer.hpp"

namespace edgesplit {

/// Element-wise activation policies. Each is one formula over `V` (a scalar or an xsimd batch),
/// so the SIMD body, the scalar tail and the scalar reference all use the same definition:
/// - `operator()(x)`            the function;
/// - `grad(x, y, g)`            dL/dx given the input x, the output y = f(x) and g = dL/dy;
/// - `flops_per_element`        nominal cost for planning (transcendentals count as ~10).
/// Element-wise activation policies: one formula for SIMD batches and scalars.
namespace act {

/// The identity: a stand-in layer that passes its input through.
struct Identity {
  static constexpr const char* name = "Identity";  ///< kind name, used in files
  static constexpr std::uint64_t flops_per_element = 0;  ///< nominal cost for planning
  /// The function.
  template <class V> V operator()(V x) const { return x; }
  /// The gradient: dL/dx = g.
  template <class V> V grad(V, V, V g) const { return g; }
};

/// max(x, 0).
struct ReLU {
  static constexpr const char* name = "ReLU";  ///< kind name, used in files
  static constexpr std::uint64_t flops_per_element = 1;  ///< nominal cost for planning
  /// The function.
  template <class V> V operator()(V x) const { return xsimd::max(x, V(kernels::scalar_of_t<V>(0))); }
  /// The gradient: g where x > 0, else 0.
  template <class V> V grad(V x, V, V g) const {
    return kernels::select_positive(x, g, V(kernels::scalar_of_t<V>(0)));
  }
};

/// max(x, alpha x), the slope alpha in [0, 1) (the max form needs alpha < 1).
struct LeakyReLU {
  static constexpr const char* name = "LeakyReLU";  ///< kind name, used in files
  static constexpr std::uint64_t flops_per_element = 2;  ///< nominal cost for planning
  double alpha = 0.01;  ///< the slope for negative inputs
  LeakyReLU() = default;
  /// A slope in [0, 1); anything else is errc::invalid_argument.
  explicit LeakyReLU(double a) : alpha(a) {
    if (!(a >= 0 && a < 1)) fail(errc::invalid_argument, "LeakyReLU alpha must be in [0, 1)");
  }
  /// The function.
  template <class V> V operator()(V x) const {
    return xsimd::max(x, x * V(kernels::scalar_of_t<V>(alpha)));
  }
  /// The gradient: g where x > 0, else alpha g.
  template <class V> V grad(V x, V, V g) const {
    return kernels::select_positive(x, g, g * V(kernels::scalar_of_t<V>(alpha)));
  }
};

/// The logistic function 1 / (1 + exp(-x)).
struct Sigmoid {
  static constexpr const char* name = "Sigmoid";  ///< kind name, used in files
  static constexpr std::uint64_t flops_per_element = 12;  ///< nominal cost for planning
  /// The function.
  template <class V> V operator()(V x) const {
    using S = kernels::scalar_of_t<V>;
    return V(S(1)) / (V(S(1)) + xsimd::exp(-x));
  }
  /// The gradient from the output: g y (1 - y).
  template <class V> V grad(V, V y, V g) const {
    using S = kernels::scalar_of_t<V>;
    return g * y * (V(S(1)) - y);
  }
};

/// The hyperbolic tangent.
struct Tanh {
  static constexpr const char* name = "Tanh";  ///< kind name, used in files
  static constexpr std::uint64_t flops_per_element = 12;  ///< nominal cost for planning
  /// The function.
  template <class V> V operator()(V x) const { return xsimd::tanh(x); }
  /// The gradient from the output: g (1 - y^2).
  template <class V> V grad(V, V y, V g) const {
    using S = kernels::scalar_of_t<V>;
    return g * (V(S(1)) - y * y);
  }
};

/// GELU, exact form: x * Phi(x) with Phi the standard normal CDF, via erf.
struct GELU {
  static constexpr const char* name = "GELU";  ///< kind name, used in files
  static constexpr std::uint64_t flops_per_element = 14;  ///< nominal cost for planning
  /// The function.
  template <class V> V operator()(V x) const {
    using S = kernels::scalar_of_t<V>;
    return V(S(0.5)) * x * (V(S(1)) + xsimd::erf(x * V(S(std::numbers::sqrt2 / 2))));
  }
  /// The gradient: g (Phi(x) + x phi(x)).
  template <class V> V grad(V x, V, V g) const {
    using S = kernels::scalar_of_t<V>;
    const V cdf = V(S(0.5)) * (V(S(1)) + xsimd::erf(x * V(S(std::numbers::sqrt2 / 2))));
    const V pdf = xsimd::exp(V(S(-0.5)) * x * x) * V(S(0.5 * std::numbers::sqrt2 * std::numbers::inv_sqrtpi));
    return g * (cdf + x * pdf);
  }
};

/// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
struct GELUTanh {
  static constexpr const char* name = "GELUTanh";  ///< kind name, used in files
  static constexpr std::uint64_t flops_per_element = 18;  ///< nominal cost for planning
  /// sqrt(2/pi), the tanh approximation's scale.
  static constexpr double k0 = std::numbers::sqrt2 * std::numbers::inv_sqrtpi;  // sqrt(2/pi)
  static constexpr double k1 = 0.044715;  ///< the cubic coefficient of the approximation
  /// The function.
  template <class V> V operator()(V x) const {
    using S = kernels::scalar_of_t<V>;
    const V u = V(S(k0)) * (x + V(S(k1)) * x * x * x);
    return V(S(0.5)) * x * (V(S(1)) + xsimd::tanh(u));
  }
  /// The gradient of the approximation.
  template <class V> V grad(V x, V, V g) const {
    using S = kernels::scalar_of_t<V>;
    const V t = xsimd::tanh(V(S(k0)) * (x + V(S(k1)) * x * x * x));
    const V du = V(S(k0)) * (V(S(1)) + V(S(3 * k1)) * x * x);
    return g * (V(S(0.5)) * (V(S(1)) + t) + V(S(0.5)) * x * (V(S(1)) - t * t) * du);
  }
};

}  // namespace act

/// A layer applying the element-wise policy `F`. Shape-preserving; no parameters.
template <Real T, class F>
class Activation final : public Layer<T> {
 public:
  Activation() = default;
  /// Wraps a configured policy, e.g. `act::LeakyReLU(0.1)`.
  explicit Activation(F f) : f_(f) {}
  /// Forwards a policy's parameter: `LeakyReLU<float>(0.1)`.
  explicit Activation(double parameter)
    requires std::is_constructible_v<F, double>
      : f_(parameter) {}

  std::string_view name() const noexcept override { return F::name; }
  std::string describe() const override {
    if constexpr (requires { f_.alpha; })
      return std::string(F::name) + "(" + std::to_string(f_.alpha) + ")";
    else
      return F::name;
  }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<Activation>(*this); }
  LayerSpec spec() const override {
    if constexpr (requires { f_.alpha; })
      return {F::name, {}, {{"alpha", f_.alpha}}};
    else
      return {F::name, {}, {}};
  }
  /// The policy, for reading its settings.
  const F& policy() const noexcept { return f_; }

 protected:
  /// Same shape as the input.
  Shape output_shape_impl(const Shape& in) const override { return in; }
  /// The policy's nominal cost per element.
  std::uint64_t flops_impl(const Shape& in) const override { return in.count() * F::flops_per_element; }
  /// Applies the policy element-wise over SIMD batches with a scalar tail.
  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    kernels::map(in.data(), out.data(), in.size(), [this](auto v) { return f_(v); });
  }
  /// Applies the policy's gradient element-wise.
  void backward_impl(TensorView<const T> in, TensorView<const T> out, TensorView<const T> grad_out,
                     TensorView<T> grad_in) override {
    if (grad_in.data() == nullptr) return;
    kernels::map3(in.data(), out.data(), grad_out.data(), grad_in.data(), in.size(),
                  [this](auto x, auto y, auto g) { return f_.grad(x, y, g); });
  }

 private:
  F f_{};
};

/// The identity as a layer.
template <Real T> using Identity = Activation<T, act::Identity>;
/// max(x, 0) as a layer.
template <Real T> using ReLU = Activation<T, act::ReLU>;
/// max(x, alpha x) as a layer: `LeakyReLU<float>(0.1)`.
template <Real T> using LeakyReLU = Activation<T, act::LeakyReLU>;
/// The logistic function as a layer.
template <Real T> using Sigmoid = Activation<T, act::Sigmoid>;
/// tanh as a layer.
template <Real T> using Tanh = Activation<T, act::Tanh>;
/// Exact GELU as a layer.
template <Real T> using GELU = Activation<T, act::GELU>;
/// Tanh-approximated GELU as a layer.
template <Real T> using GELUTanh = Activation<T, act::GELUTanh>;

/// Row-wise softmax over the features of each sample, numerically stable.
template <Real T>
class Softmax final : public Layer<T> {
 public:
  std::string_view name() const noexcept override { return "Softmax"; }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<Softmax>(*this); }

 protected:
  /// Same shape as the input.
  Shape output_shape_impl(const Shape& in) const override { return in; }
  /// Nominal 14 FLOPs per element (the exp counts as about 10).
  std::uint64_t flops_impl(const Shape& in) const override { return in.count() * 14; }
  /// Row-wise stable softmax (the row maximum subtracted first).
  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    kernels::softmax_rows(in.data(), out.data(), in.shape().batch(), in.shape().features());
  }
  /// The softmax Jacobian-vector product, row by row, from the output.
  void backward_impl(TensorView<const T>, TensorView<const T> out, TensorView<const T> grad_out,
                     TensorView<T> grad_in) override {
    if (grad_in.data() == nullptr) return;
    kernels::softmax_rows_backward(out.data(), grad_out.data(), grad_in.data(), out.shape().batch(),
                                   out.shape().features());
  }
};

}  // namespace edgesplit
