// edgesplit/nn/activations.hpp - activation functions, as element-wise policies and as layers.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
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
/// A policy with settings (LeakyReLU's slope, Clip's bounds) also declares them, so that
/// Activation writes spec() and describe() and make_layer rebuilds it without knowing the policy:
/// - `setting_names`            static array of the LayerSpec keys, in constructor order;
/// - `settings()`               the values, same order (the policy is constructible from them).
///
/// Gradients at kinks follow PyTorch, so that a model trained here and one trained there agree
/// on the measure-zero inputs that land exactly on a kink (ReLU6 of an exact 0, say): ReLU,
/// ReLU6 and HardSigmoid pass no gradient at their kinks (PyTorch's threshold, hardtanh and
/// hardsigmoid backward kernels), Clip passes it at both bounds (torch.clamp's backward), and
/// HardSwish uses its middle piece on the closed [-3, 3] (see act::HardSwish).
/// Element-wise activation policies: one formula for SIMD batches and scalars.
namespace act {

/// Helpers shared by the policies below.
namespace detail {
/// `mask ? a : b` lane-wise: a comparison of scalars gives a bool, of batches a batch_bool.
template <class M, class V>
inline V choose(const M& mask, const V& a, const V& b) {
  if constexpr (std::is_arithmetic_v<V>)
    return mask ? a : b;
  else
    return xsimd::select(mask, a, b);
}
/// `v` as the lane type of `V`, broadcast when `V` is a batch.
template <class V>
inline V splat(double v) {
  return V(static_cast<kernels::scalar_of_t<V>>(v));
}
}  // namespace detail

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
  /// The spec key of the slope.
  static constexpr std::array<const char*, 1> setting_names{"alpha"};
  /// The slope, as stored in the spec.
  std::array<double, 1> settings() const noexcept { return {alpha}; }
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

/// The error function erf(x): ONNX's Erf, of which exported GELUs are built.
struct Erf {
  static constexpr const char* name = "Erf";  ///< kind name, used in files
  static constexpr std::uint64_t flops_per_element = 10;  ///< nominal cost for planning
  /// The function.
  template <class V> V operator()(V x) const { return xsimd::erf(x); }
  /// The gradient: g 2 / sqrt(pi) exp(-x^2).
  template <class V> V grad(V x, V, V g) const {
    using S = kernels::scalar_of_t<V>;
    return g * V(S(2 * std::numbers::inv_sqrtpi)) * xsimd::exp(-x * x);
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

/// min(max(x, 0), 6): the activation of the MobileNets, bounded so that it quantizes well.
/// Its own policy rather than Clip(0, 6) because PyTorch differentiates them differently at
/// the bounds (ReLU6 is hardtanh(0, 6): no gradient at 0 or 6).
struct ReLU6 {
  static constexpr const char* name = "ReLU6";  ///< kind name, used in files
  static constexpr std::uint64_t flops_per_element = 2;  ///< nominal cost for planning
  /// The function.
  template <class V> V operator()(V x) const {
    return xsimd::min(xsimd::max(x, detail::splat<V>(0)), detail::splat<V>(6));
  }
  /// The gradient: g where 0 < x < 6, else 0 (0 at both kinks, as PyTorch's hardtanh).
  template <class V> V grad(V x, V, V g) const {
    return detail::choose((x > detail::splat<V>(0)) && (x < detail::splat<V>(6)), g, detail::splat<V>(0));
  }
};

/// min(max(x, min), max): ONNX Clip and torch.clamp with both bounds, finite, min <= max.
struct Clip {
  static constexpr const char* name = "Clip";  ///< kind name, used in files
  static constexpr std::uint64_t flops_per_element = 2;  ///< nominal cost for planning
  double min = 0;  ///< the lower bound
  double max = 0;  ///< the upper bound
  /// Bounds that are finite with lo <= hi; anything else is errc::invalid_argument (an infinite
  /// bound is a one-sided clip: ReLU for [0, inf), and would not survive a JSON spec). No
  /// default: ONNX's is no clipping at all, which is Identity.
  Clip(double lo, double hi) : min(lo), max(hi) {
    if (!std::isfinite(lo) || !std::isfinite(hi) || !(lo <= hi))
      fail(errc::invalid_argument, "Clip needs finite bounds with min <= max, got [" + std::to_string(lo) + ", " +
                                       std::to_string(hi) + "]");
  }
  /// The spec keys of the bounds.
  static constexpr std::array<const char*, 2> setting_names{"min", "max"};
  /// The bounds, as stored in the spec.
  std::array<double, 2> settings() const noexcept { return {min, max}; }
  /// The function.
  template <class V> V operator()(V x) const {
    return xsimd::min(xsimd::max(x, detail::splat<V>(min)), detail::splat<V>(max));
  }
  /// The gradient: g where min <= x <= max (bounds included, as torch.clamp's backward), else 0.
  template <class V> V grad(V x, V, V g) const {
    return detail::choose((x >= detail::splat<V>(min)) && (x <= detail::splat<V>(max)), g, detail::splat<V>(0));
  }
};

/// max(0, min(1, alpha x + beta)), ONNX HardSigmoid. The defaults are ONNX's (alpha 0.2,
/// beta 0.5); torch.nn.Hardsigmoid is alpha = 1/6, beta = 0.5, whose results differ from
/// PyTorch's (x + 3) / 6 by rounding only.
struct HardSigmoid {
  static constexpr const char* name = "HardSigmoid";  ///< kind name, used in files
  static constexpr std::uint64_t flops_per_element = 4;  ///< nominal cost for planning
  double alpha = 0.2;  ///< the slope
  double beta = 0.5;  ///< the offset
  /// ONNX's slope and offset.
  HardSigmoid() = default;
  /// Any finite slope and offset; anything else is errc::invalid_argument.
  HardSigmoid(double a, double b) : alpha(a), beta(b) {
    if (!std::isfinite(a) || !std::isfinite(b))
      fail(errc::invalid_argument, "HardSigmoid alpha and beta must be finite");
  }
  /// The spec keys of slope and offset.
  static constexpr std::array<const char*, 2> setting_names{"alpha", "beta"};
  /// The slope and offset, as stored in the spec.
  std::array<double, 2> settings() const noexcept { return {alpha, beta}; }
  /// The function.
  template <class V> V operator()(V x) const {
    const V u = x * detail::splat<V>(alpha) + detail::splat<V>(beta);
    return xsimd::max(detail::splat<V>(0), xsimd::min(detail::splat<V>(1), u));
  }
  /// The gradient from the output: alpha g where 0 < y < 1 (that is, 0 < alpha x + beta < 1),
  /// else 0, the kinks excluded as in PyTorch's hardsigmoid backward.
  template <class V> V grad(V, V y, V g) const {
    return detail::choose((y > detail::splat<V>(0)) && (y < detail::splat<V>(1)), g * detail::splat<V>(alpha),
                          detail::splat<V>(0));
  }
};

/// x * relu6(x + 3) / 6, the HardSwish of MobileNetV3 (PyTorch and ONNX), evaluated in
/// PyTorch's order, the division last.
struct HardSwish {
  static constexpr const char* name = "HardSwish";  ///< kind name, used in files
  static constexpr std::uint64_t flops_per_element = 5;  ///< nominal cost for planning
  /// The function.
  template <class V> V operator()(V x) const {
    const V r = xsimd::min(xsimd::max(x + detail::splat<V>(3), detail::splat<V>(0)), detail::splat<V>(6));
    return x * r / detail::splat<V>(6);
  }
  /// The gradient: 0 for x < -3, g (x / 3 + 1/2) on the closed [-3, 3], g for x > 3. This is
  /// PyTorch's scalar and CUDA hardswish backward; its vectorised CPU kernel gives g at exactly
  /// x = 3 instead of 1.5 g (a measure-zero difference).
  template <class V> V grad(V x, V, V g) const {
    const V mid = g * (x / detail::splat<V>(3) + detail::splat<V>(0.5));
    return detail::choose(x < detail::splat<V>(-3), detail::splat<V>(0),
                          detail::choose(x <= detail::splat<V>(3), mid, g));
  }
};

/// x * sigmoid(x), also called Swish (torch.nn.SiLU).
struct SiLU {
  static constexpr const char* name = "SiLU";  ///< kind name, used in files
  static constexpr std::uint64_t flops_per_element = 13;  ///< nominal cost for planning
  /// The function.
  template <class V> V operator()(V x) const { return x / (detail::splat<V>(1) + xsimd::exp(-x)); }
  /// The gradient: g s (1 + x (1 - s)), s = sigmoid(x), as PyTorch's silu backward.
  template <class V> V grad(V x, V, V g) const {
    const V s = detail::splat<V>(1) / (detail::splat<V>(1) + xsimd::exp(-x));
    return g * s * (detail::splat<V>(1) + x * (detail::splat<V>(1) - s));
  }
};

}  // namespace act

/// Whether an activation policy declares settings (see namespace act).
template <class F>
concept ActivationWithSettings = requires(const F& f) {
  F::setting_names;
  f.settings();
};

/// A layer applying the element-wise policy `F`. Shape-preserving; no parameters.
template <Real T, class F>
class Activation final : public Layer<T> {
 public:
  /// The policy's default settings (none for Clip, whose bounds have no sensible default).
  Activation()
    requires std::is_default_constructible_v<F>
  = default;
  /// Wraps a configured policy, e.g. `act::LeakyReLU(0.1)`.
  explicit Activation(F f) : f_(f) {}
  /// Forwards a policy's setting: `LeakyReLU<float>(0.1)`.
  explicit Activation(double setting)
    requires std::is_constructible_v<F, double>
      : f_(setting) {}
  /// Forwards a policy's two settings: `Clip<float>(-1, 1)`, `HardSigmoid<float>(1.0 / 6, 0.5)`.
  Activation(double first, double second)
    requires std::is_constructible_v<F, double, double>
      : f_(first, second) {}

  std::string_view name() const noexcept override { return F::name; }
  /// The kind, with the settings in constructor order: "Clip(-1.000000, 1.000000)".
  std::string describe() const override {
    if constexpr (ActivationWithSettings<F>) {
      std::string s = std::string(F::name) + "(";
      const auto values = f_.settings();
      for (std::size_t i = 0; i < values.size(); ++i) s += (i ? ", " : "") + std::to_string(values[i]);
      return s + ")";
    } else {
      return F::name;
    }
  }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<Activation>(*this); }
  /// The kind, with each setting as a real under its key ("alpha"; "min" and "max"; ...).
  LayerSpec spec() const override {
    LayerSpec s{F::name, {}, {}};
    if constexpr (ActivationWithSettings<F>) {
      const auto values = f_.settings();
      for (std::size_t i = 0; i < values.size(); ++i) s.reals[F::setting_names[i]] = values[i];
    }
    return s;
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

/// The identity as a layer: a placeholder that keeps a model's layer indices (and so its split
/// points and parameter names "<index>.weight") where a layer was removed or has no counterpart,
/// for instance when loading weights trained elsewhere into a model whose layers must line up
/// one to one, or where a folded BatchNorm used to be. Costs a copy and no FLOPs.
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
/// erf(x) as a layer (ONNX's Erf).
template <Real T> using Erf = Activation<T, act::Erf>;
/// Tanh-approximated GELU as a layer.
template <Real T> using GELUTanh = Activation<T, act::GELUTanh>;
/// min(max(x, 0), 6) as a layer.
template <Real T> using ReLU6 = Activation<T, act::ReLU6>;
/// min(max(x, min), max) as a layer: `Clip<float>(-1, 1)`.
template <Real T> using Clip = Activation<T, act::Clip>;
/// max(0, min(1, alpha x + beta)) as a layer: `HardSigmoid<float>{}` is ONNX's (0.2, 0.5),
/// `HardSigmoid<float>(1.0 / 6, 0.5)` PyTorch's.
template <Real T> using HardSigmoid = Activation<T, act::HardSigmoid>;
/// x relu6(x + 3) / 6 as a layer.
template <Real T> using HardSwish = Activation<T, act::HardSwish>;
/// x sigmoid(x) as a layer.
template <Real T> using SiLU = Activation<T, act::SiLU>;

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
